//! The clock floor the node's agent keeps in its state home (docs/security.md, H3): the
//! time never goes back below what this node has already seen, across reboots too.
//!
//! PID 1 syncs the clock under a floor file on its tmpfs root ([`crate::boot`]), so
//! after a power cut only the image's built-in floor would hold. The agent, which owns
//! the state home on the pools, carries the floor there: at start it steps a clock that
//! is below the persisted floor up to it (a dead RTC, a rogue time source before the
//! reboot cannot take the node back to expire nothing or everything early) and hands
//! the floor to PID 1's file ([`restore`]); then it persists the time every
//! [`PERSIST_EVERY`] ([`keep`]). Where the state home is, is the caller's: a
//! [`FloorStore`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::clock::{floor_step, FloorFile};

/// How often the floor follows the clock.
pub const PERSIST_EVERY: Duration = Duration::from_secs(600);

/// One record of the node's state home: the persisted floor (Unix seconds, decimal).
pub trait FloorStore: Send + Sync + 'static {
    /// The record's bytes; `None` when there is none yet.
    fn load(&self) -> std::io::Result<Option<Vec<u8>>>;
    /// Replaces the record with `bytes`, durably.
    fn save(&self, bytes: &[u8]) -> std::io::Result<()>;
}

/// The floor a record holds; `None` for an unreadable one.
pub fn parse(data: &[u8]) -> Option<SystemTime> {
    let secs: u64 = std::str::from_utf8(data).ok()?.trim().parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Steps the clock up to the persisted floor if it is below it, and gives PID 1's
/// floor file (`pid1_file`) that floor. Errors are logged: a node with a wrong clock
/// still serves.
pub fn restore(store: &impl FloorStore, pid1_file: &Path) {
    let floor = match store.load() {
        Ok(Some(data)) => parse(&data),
        Ok(None) => None,
        Err(error) => {
            tracing::error!(%error, "clock floor in the state home unreadable");
            None
        }
    };
    let Some(floor) = floor else {
        return;
    };
    if let Some(to) = floor_step(SystemTime::now(), floor) {
        match crate::sntp::set_clock(to) {
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
    if let Err(error) = FloorFile::new(pid1_file).advance(floor) {
        tracing::warn!(%error, "PID 1's clock floor file not updated");
    }
}

/// Persists the clock as the floor now and every [`PERSIST_EVERY`], never moving it
/// back; stopped when the handle is aborted.
pub fn keep<S: FloorStore>(store: Arc<S>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERSIST_EVERY);
        loop {
            tick.tick().await;
            let store = store.clone();
            let _ = tokio::task::spawn_blocking(move || persist(&*store, SystemTime::now())).await;
        }
    })
}

/// Persists `now` as the floor unless the stored floor is already at or past it (a
/// clock found below the stored floor leaves it as it is).
pub fn persist(store: &impl FloorStore, now: SystemTime) {
    let stored = store.load().ok().flatten().and_then(|d| parse(&d));
    if stored.is_some_and(|s| s >= now) {
        return;
    }
    if let Err(error) = store.save(secs(now).to_string().as_bytes()) {
        tracing::warn!(%error, "clock floor not persisted in the state home");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

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

    /// A state home record in memory (the real one is zos-storage's, in zosd's tests).
    #[derive(Default)]
    struct Memory(Mutex<Option<Vec<u8>>>);

    impl FloorStore for Memory {
        fn load(&self) -> std::io::Result<Option<Vec<u8>>> {
            Ok(self.0.lock().unwrap().clone())
        }
        fn save(&self, bytes: &[u8]) -> std::io::Result<()> {
            *self.0.lock().unwrap() = Some(bytes.to_vec());
            Ok(())
        }
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_persisted_floor_only_moves_forward() {
        let store = Memory::default();
        persist(&store, at(2_000_000_000));
        assert_eq!(store.load().unwrap().as_deref(), Some(&b"2000000000"[..]));
        // A clock found behind the floor (a rogue source, a dead RTC) leaves it.
        persist(&store, at(1_900_000_000));
        assert_eq!(store.load().unwrap().as_deref(), Some(&b"2000000000"[..]));
        persist(&store, at(2_000_000_600));
        assert_eq!(store.load().unwrap().as_deref(), Some(&b"2000000600"[..]));
    }

    #[test]
    fn restore_hands_the_state_home_floor_to_pid_1s_file() {
        let dir = std::env::temp_dir().join(format!("zt-home-floor-{}", std::process::id()));
        struct Cleanup(std::path::PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _cleanup = Cleanup(dir.clone());
        let file = dir.join("clock-floor");
        // A floor in the past: the clock is not stepped (it is later already).
        let store = Memory(Mutex::new(Some(b"1764547300".to_vec())));
        restore(&store, &file);
        assert_eq!(
            FloorFile::new(&file).read().unwrap(),
            Some(at(1_764_547_300))
        );
        // No floor in the state home: PID 1's file is left alone.
        let _ = std::fs::remove_file(&file);
        restore(&Memory::default(), &file);
        assert_eq!(FloorFile::new(&file).read().unwrap(), None);
    }
}
