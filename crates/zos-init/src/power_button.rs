//! The machine's power button, as an orderly power-off.
//!
//! A farmer presses the power button, or a hypervisor sends its ACPI power-button event
//! (QEMU's `system_powerdown`): the kernel's `button` driver reports `KEY_POWER` on an
//! evdev input device, and nobody else is there to act on it (no logind, no acpid). A
//! thread per such device reads its events and, on a press, signals PID 1 with SIGPWR,
//! which the loop turns into the same orderly power-off as SIGTERM ([`crate::shutdown`]).
//! Nothing else is read from input devices: keyboards stay ignored.

use std::io::Read;
use std::path::{Path, PathBuf};

/// `KEY_POWER` in linux/input-event-codes.h.
const KEY_POWER: u16 = 116;
/// `EV_KEY`.
const EV_KEY: u16 = 1;
/// `struct input_event` on 64-bit Linux: a `timeval` (16 bytes), type, code, value.
const EVENT_SIZE: usize = 24;

/// Whether a `capabilities/key` bitmap from sysfs has `code` set. The kernel prints it
/// as hexadecimal `long` words separated by spaces, most significant word first, with
/// leading zero words left out.
pub fn has_key(bitmap: &str, code: u16) -> bool {
    let bits = usize::BITS as usize;
    let words: Vec<&str> = bitmap.split_whitespace().collect();
    let index = usize::from(code) / bits;
    let Some(word) = words.len().checked_sub(1 + index).map(|i| words[i]) else {
        return false;
    };
    u64::from_str_radix(word, 16).is_ok_and(|w| w & (1 << (usize::from(code) % bits)) != 0)
}

/// Whether one `struct input_event` is a press (not a release or repeat) of the power key.
pub fn is_power_press(event: &[u8; EVENT_SIZE]) -> bool {
    let kind = u16::from_ne_bytes([event[16], event[17]]);
    let code = u16::from_ne_bytes([event[18], event[19]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

/// The `/dev/input/eventN` devices that report a power key, per
/// `<sysfs>/class/input/eventN/device/capabilities/key`.
pub fn power_buttons(sysfs: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(sysfs.join("class/input"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("device/capabilities/key"))
                .is_ok_and(|bitmap| has_key(&bitmap, KEY_POWER))
        })
        .map(|e| Path::new("/dev/input").join(e.file_name()))
        .collect();
    found.sort();
    found
}

/// Starts one thread per power button; each calls `pressed` on every press. Returns the
/// devices watched (none when the machine has no power button, or `button`/`evdev` are
/// not loaded).
pub fn watch(pressed: fn()) -> Vec<PathBuf> {
    let devices = power_buttons(Path::new("/sys"));
    for device in &devices {
        let device = device.clone();
        let spawned = std::thread::Builder::new()
            .name("power-button".into())
            .spawn(move || read_presses(&device, pressed));
        if let Err(error) = spawned {
            tracing::warn!(%error, "power button thread");
        }
    }
    devices
}

fn read_presses(device: &Path, pressed: fn()) {
    let mut file = match std::fs::File::open(device) {
        Ok(f) => f,
        Err(error) => {
            tracing::warn!(device = %device.display(), %error, "opening the power button");
            return;
        }
    };
    let mut event = [0u8; EVENT_SIZE];
    // Reads return whole events; an error ends the watch (the device went away).
    while file.read_exact(&mut event).is_ok() {
        if is_power_press(&event) {
            tracing::info!(device = %device.display(), "power button pressed");
            pressed();
        }
    }
    tracing::warn!(device = %device.display(), "power button no longer readable");
}

/// What [`watch`] calls in PID 1: SIGPWR to itself, taken by the loop like any other
/// shutdown signal (it is blocked in every thread, so it waits for `sigtimedwait`).
pub fn signal_power_off() {
    let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGPWR);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_power_key_bit_in_a_sysfs_bitmap() {
        // An ACPI power button (button driver): only KEY_POWER (116 = word 1, bit 52).
        assert!(has_key("10000000000000 0", KEY_POWER));
        // A keyboard's bitmap, KEY_POWER included, several words.
        assert!(has_key(
            "402000000 3803078f800d001 feffffdfffefffff fffffffffffffffe",
            KEY_POWER
        ));
        // A mouse: buttons only, no power key; a single-word bitmap; nonsense.
        assert!(!has_key("1f0000 0 0 0 0", KEY_POWER));
        assert!(!has_key("0", KEY_POWER));
        assert!(!has_key("", KEY_POWER));
        assert!(!has_key("zz 0", KEY_POWER));
    }

    fn event(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut e = [0u8; EVENT_SIZE];
        e[16..18].copy_from_slice(&kind.to_ne_bytes());
        e[18..20].copy_from_slice(&code.to_ne_bytes());
        e[20..24].copy_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn only_a_press_of_the_power_key_counts() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)), "release");
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 2)), "repeat");
        assert!(!is_power_press(&event(EV_KEY, 30, 1)), "KEY_A");
        assert!(!is_power_press(&event(0, 0, 0)), "EV_SYN");
    }

    #[test]
    fn power_buttons_are_found_by_capability() {
        let sys = tempfile::tempdir().unwrap();
        for (name, bitmap) in [
            ("event0", "10000000000000 0\n"),
            ("event1", "1f0000 0 0 0 0\n"),
            ("event2", "10000000000000 0\n"),
        ] {
            let caps = sys
                .path()
                .join("class/input")
                .join(name)
                .join("device/capabilities");
            std::fs::create_dir_all(&caps).unwrap();
            std::fs::write(caps.join("key"), bitmap).unwrap();
        }
        std::fs::create_dir_all(sys.path().join("class/input/input0")).unwrap();
        assert_eq!(
            power_buttons(sys.path()),
            vec![
                PathBuf::from("/dev/input/event0"),
                PathBuf::from("/dev/input/event2")
            ]
        );
        assert!(power_buttons(&sys.path().join("none")).is_empty());
    }
}
