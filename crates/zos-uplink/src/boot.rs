//! The uplink of a booting node (docs/uplink.md, "At boot"): a DHCPv4 lease applied to
//! the interface and kept for as long as the node runs, then the clock from the
//! lease's NTP servers under the clock policy ([`crate::clock`]), kept too. Best
//! effort: without either the node still starts, and says what fails (an unreachable
//! notary, expired signatures).
//!
//! Both keepers run on threads of their own ([`dhcp::keep`] sleeps until T1; the clock
//! thread wakes every [`FLOOR_EVERY`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::{clock, dhcp, sntp};

/// How often the clock is synchronised again.
pub const RESYNC: Duration = Duration::from_secs(3600);
/// How often the floor is carried forward to now and persisted.
pub const FLOOR_EVERY: Duration = Duration::from_secs(600);
/// The clock floor's file name, in the state directory.
pub const CLOCK_FLOOR: &str = "clock-floor";
/// How long one SNTP server has to answer.
const SNTP_TIMEOUT: Duration = Duration::from_secs(2);

/// The uplink: the first network interface backed by a device (not lo, not virtual)
/// under `class_net` (`/sys/class/net`), by name; `eth0` if there is none yet (no
/// udev: kernel names).
pub fn uplink_iface(class_net: &Path) -> String {
    let mut names: Vec<String> = std::fs::read_dir(class_net)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("device").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next().unwrap_or_else(|| "eth0".into())
}

/// Gets a lease for `iface` and applies it, keeps it, and sets and keeps the clock
/// (its floor file in `state_dir`). Without a lease the interface stays unconfigured,
/// a keeper asks again in the background, and the clock only comes up to its floor.
pub fn bring_up(iface: &str, state_dir: &Path) -> Option<dhcp::Lease> {
    // Three tries per stage (4 + 8 + 16 s): a node without DHCP starts its agent
    // within half a minute anyway (and keeps asking in the background).
    let cfg = dhcp::DhcpConfig {
        attempts: 3,
        ..dhcp::DhcpConfig::default()
    };
    let floor_file = state_dir.join(CLOCK_FLOOR);
    let lease = match dhcp::acquire(iface, &cfg).and_then(|l| dhcp::apply(iface, &l).map(|()| l)) {
        Ok(lease) => lease,
        Err(error) => {
            tracing::error!(%iface, %error, "no DHCP lease: the uplink stays unconfigured; asking again every 30 s");
            keep_lease(iface, None, cfg);
            // No servers: the clock only comes up to its floor.
            keep_clock(Vec::new(), floor_file);
            return None;
        }
    };
    keep_lease(iface, Some(lease.clone()), cfg);
    let servers = lease.ntp_servers();
    if servers.is_empty() {
        tracing::warn!(%iface, "the DHCP lease names no NTP server: the clock stays the RTC's (never below its floor)");
    }
    keep_clock(servers, floor_file);
    Some(lease)
}

/// Renews, rebinds and re-acquires the lease for as long as the node runs (or keeps
/// asking for one when the boot got none), on a thread of its own.
fn keep_lease(iface: &str, lease: Option<dhcp::Lease>, cfg: dhcp::DhcpConfig) {
    let iface = iface.to_owned();
    let spawned =
        std::thread::Builder::new()
            .name("dhcp-lease".into())
            .spawn(move || match lease {
                Some(lease) => dhcp::keep(&iface, lease, &cfg, |_| {}),
                None => dhcp::acquire_and_keep(&iface, &cfg, |_| {}),
            });
    if let Err(error) = spawned {
        tracing::error!(%error, "no thread to keep the DHCP lease: it will expire");
    }
}

/// What the clock keeper does in its `round`-th wake-up (from 1, one every
/// [`FLOOR_EVERY`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockRound {
    /// Synchronise again (every [`RESYNC`]); an accepted time moves the floor.
    Sync,
    /// Carry the floor forward to now and persist it.
    PersistFloor,
}

impl ClockRound {
    /// The round numbered `round` (from 1): every `RESYNC / FLOOR_EVERY`-th is a sync.
    pub fn of(round: u64) -> ClockRound {
        let per_sync = (RESYNC.as_secs() / FLOOR_EVERY.as_secs()).max(1);
        if round % per_sync == 0 {
            ClockRound::Sync
        } else {
            ClockRound::PersistFloor
        }
    }
}

/// The clock under the clock policy (docs/uplink.md, "Clock"): synchronised now,
/// before anything verifies an expiry, then every [`RESYNC`] on a thread of its own,
/// which also persists the floor every [`FLOOR_EVERY`]. Never below the floor in
/// `floor_file`; never more than a day forward on one server's word. Without servers
/// the clock only comes up to the floor.
pub fn keep_clock(servers: Vec<SocketAddr>, floor_file: PathBuf) {
    let mut floor = clock::Floor::new(clock::FloorFile::new(floor_file));
    sync_clock(&servers, &mut floor);
    let spawned = std::thread::Builder::new()
        .name("clock".into())
        .spawn(move || {
            for round in 1u64.. {
                std::thread::sleep(FLOOR_EVERY);
                match ClockRound::of(round) {
                    ClockRound::Sync => sync_clock(&servers, &mut floor),
                    ClockRound::PersistFloor => {
                        if let Err(error) = floor.advance() {
                            tracing::warn!(%error, "clock floor not persisted");
                        }
                    }
                }
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "no thread to keep the clock: it is not re-synchronised");
    }
}

fn sync_clock(servers: &[SocketAddr], floor: &mut clock::Floor) {
    if servers.is_empty() {
        if let Some(t) = clock::floor_step(SystemTime::now(), floor.current()) {
            match sntp::set_clock(t) {
                Ok(()) => tracing::warn!("clock was below its floor: stepped up to it"),
                Err(error) => tracing::error!(%error, "clock below its floor, not stepped"),
            }
        }
        return;
    }
    // Logged by clock::sync (the refusal names the server and the rule).
    let _ = clock::sync(servers, floor, SNTP_TIMEOUT);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_keeper_syncs_hourly_and_persists_the_floor_between() {
        let rounds: Vec<ClockRound> = (1..=13).map(ClockRound::of).collect();
        let syncs: Vec<u64> = (1..=13u64)
            .filter(|&r| ClockRound::of(r) == ClockRound::Sync)
            .collect();
        // Every 10 minutes a wake-up; the 6th, 12th... (each hour) synchronises.
        assert_eq!(syncs, [6, 12]);
        assert_eq!(rounds[0], ClockRound::PersistFloor);
    }

    /// A `zt-` directory under the temporary directory, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!("zt-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn the_uplink_is_the_first_interface_with_a_device_by_name() {
        let dir = TempDir::new("class-net");
        assert_eq!(
            uplink_iface(&dir.0),
            "eth0",
            "none yet: the kernel's first name"
        );
        for (name, device) in [
            ("lo", false),
            ("veth0", false),
            ("enp1s0", true),
            ("eth1", true),
        ] {
            std::fs::create_dir(dir.0.join(name)).unwrap();
            if device {
                std::fs::create_dir(dir.0.join(name).join("device")).unwrap();
            }
        }
        assert_eq!(uplink_iface(&dir.0), "enp1s0");
    }
}
