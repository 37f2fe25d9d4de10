//! The clock floor in the node's state home (docs/security.md, H3): the time never goes
//! back below what this node has already seen, across reboots too.
//!
//! PID 1 syncs the clock under a floor file on its tmpfs root (zos-uplink's clock
//! policy), so after a power cut only the image's built-in floor would hold. The agent,
//! which owns the state home on the pools, carries the floor there: at start it steps a
//! clock that is below the persisted floor up to it (a dead RTC, a rogue time source
//! before the reboot cannot take the node back to expire nothing or everything early)
//! and hands the floor to PID 1's file; then it persists the time every
//! [`PERSIST_EVERY`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zos_storage::Storage;
use zos_uplink::clock::FloorFile;

/// State home key of the floor (Unix seconds, decimal).
const KEY: &str = "clock-floor";
/// PID 1's floor file, under the state dir.
const PID1_FILE: &str = "clock-floor";
/// How often the floor follows the clock.
pub const PERSIST_EVERY: Duration = Duration::from_secs(600);

/// The floor a state home record holds; `None` for an unreadable one.
fn parse(data: &[u8]) -> Option<SystemTime> {
    let secs: u64 = std::str::from_utf8(data).ok()?.trim().parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Steps the clock up to the persisted floor if it is below it, and gives PID 1's file
/// that floor. Errors are logged: a node with a wrong clock still serves.
pub fn restore(storage: &Storage, state_dir: &Path) {
    let floor = match storage.state().read(KEY) {
        Ok(Some(read)) => parse(&read.data),
        Ok(None) => None,
        Err(error) => {
            tracing::error!(%error, "clock floor in the state home unreadable");
            None
        }
    };
    let Some(floor) = floor else {
        return;
    };
    if let Some(to) = zos_uplink::clock::floor_step(SystemTime::now(), floor) {
        match zos_uplink::sntp::set_clock(to) {
            Ok(()) => {
                tracing::warn!(
                    floor = secs(floor),
                    "clock was below the state home's floor: stepped up to it"
                )
            }
            Err(error) => {
                tracing::error!(%error, floor = secs(floor), "clock below the state home's floor, not stepped")
            }
        }
    }
    if let Err(error) = FloorFile::new(state_dir.join(PID1_FILE)).advance(floor) {
        tracing::warn!(%error, "PID 1's clock floor file not updated");
    }
}

/// Persists the clock as the floor now and every [`PERSIST_EVERY`], never moving it
/// back (a clock found below the stored floor leaves it as it is).
pub fn keep(storage: Arc<Storage>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERSIST_EVERY);
        loop {
            tick.tick().await;
            let storage = storage.clone();
            let _ = tokio::task::spawn_blocking(move || persist(&storage, SystemTime::now())).await;
        }
    })
}

fn persist(storage: &Storage, now: SystemTime) {
    let stored = storage
        .state()
        .read(KEY)
        .ok()
        .flatten()
        .and_then(|r| parse(&r.data));
    if stored.is_some_and(|s| s >= now) {
        return;
    }
    if let Err(error) = storage.state().write(KEY, secs(now).to_string().as_bytes()) {
        tracing::warn!(%error, "clock floor not persisted in the state home");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_is_read_as_unix_seconds_only() {
        assert_eq!(
            parse(b"1764547200\n"),
            Some(UNIX_EPOCH + Duration::from_secs(1_764_547_200))
        );
        for bad in [&b""[..], b"-1", b"1e9", b"\xff", b"12 34"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
