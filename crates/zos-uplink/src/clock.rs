//! When the node may step its clock, and to what: a floor it never goes below, and a
//! bound on how far one source may move it forward.
//!
//! Contract expiry (and with it, after a grace period, the deletion of volumes) reads
//! the clock, and the clock comes from SNTP servers named by DHCP: neither is
//! authenticated. Left alone, one rogue server on the LAN claiming a date ten years
//! ahead would expire every contract on the node. So ([`decide`], a pure function):
//!
//! 1. **A floor.** The clock is never set below the floor: the later of
//!    [`BUILD_FLOOR_UNIX`] (no node runs before its software was written) and the
//!    floor persisted in a small file ([`FloorFile`]), which moves forward after each
//!    accepted sync and then with the monotonic clock ([`Floor::advance`]). A server
//!    claiming an earlier time is refused ([`ClockError::BelowFloor`]); a clock found
//!    below the floor is stepped up to it ([`floor_step`]).
//! 2. **A forward bound.** From the later of the current clock and the floor, one
//!    source may move the clock forward by at most [`MAX_FORWARD`] (24 h). Further
//!    needs [`QUORUM`] (2) distinct servers (distinct IP addresses) whose offsets agree
//!    within [`AGREE_WITHIN`] (5 s) ([`ClockError::TooFarAhead`]). 24 h: more than any
//!    drift of a running node between syncs (an hourly re-query; an RTC drifts seconds a
//!    day) and more than a reboot takes, yet less than any contract's grace period, so
//!    a single lying server can at worst bring an expiry forward by a day.
//!
//! Several sources that disagree: the largest group agreeing within [`AGREE_WITHIN`]
//! wins, ties going to the group closest to the current clock; its median offset is
//! used. What this does not stop: a rogue DHCP server names every server, so it can
//! name [`QUORUM`] liars that agree. The floor still holds the clock back from going
//! backwards, and the bound holds it when the DHCP server is honest and one NTP
//! server (or a spoofer on the path) is not.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::sntp::{self, SntpError, SntpTime};

/// The earliest time any node can be at: 2025-12-01T00:00:00Z, before this code was
/// written.
pub const BUILD_FLOOR_UNIX: u64 = 1_764_547_200;
/// How far one source may move the clock forward past the later of the clock and the
/// floor.
pub const MAX_FORWARD: Duration = Duration::from_secs(24 * 3600);
/// How many distinct servers must agree for a larger forward step.
pub const QUORUM: usize = 2;
/// How close two servers' offsets must be to count as agreeing.
pub const AGREE_WITHIN: Duration = Duration::from_secs(5);
/// At most this many servers are asked in one sync.
pub const MAX_SERVERS: usize = 4;
/// The floor file's largest accepted size.
const MAX_FLOOR_FILE: u64 = 64;

/// Why a sync did not set the clock to what the servers said.
#[derive(Debug, thiserror::Error)]
pub enum ClockError {
    /// No server answered (or none was named).
    #[error("no SNTP server answered")]
    NoSample,
    /// The servers' time is below the floor: the clock is never set back past it.
    #[error(
        "{server} says the time is {proposed} (Unix s), below the clock's floor {floor}: refused"
    )]
    BelowFloor {
        /// A server of the winning (largest agreeing) group.
        server: SocketAddr,
        /// The time it proposed, in Unix seconds.
        proposed: i64,
        /// The floor in force, in Unix seconds.
        floor: i64,
    },
    /// The step forward is over [`MAX_FORWARD`] and fewer than [`QUORUM`] distinct
    /// servers agree on it.
    #[error(
        "{server} would move the clock forward by {ahead_secs} s past {reference} (Unix s), \
         more than {max_secs} s; that needs {needed} agreeing servers, {agreeing} agree: refused"
    )]
    TooFarAhead {
        /// A server of the winning (largest agreeing) group.
        server: SocketAddr,
        /// How far past `reference` it would move the clock, in seconds.
        ahead_secs: i64,
        /// The later of the clock and the floor, in Unix seconds.
        reference: i64,
        /// [`MAX_FORWARD`] in seconds.
        max_secs: u64,
        /// Distinct servers in the winning group.
        agreeing: usize,
        /// Distinct servers needed ([`QUORUM`]).
        needed: usize,
    },
    /// The floor file could not be read, parsed or written.
    #[error("clock floor file {path}: {reason}")]
    FloorFile {
        /// The file.
        path: PathBuf,
        /// What went wrong (an I/O error or "not Unix seconds").
        reason: String,
    },
    /// Setting the clock failed ([`SntpError::SetClock`]: no CAP_SYS_TIME, or
    /// [`SntpError::TimeOutOfRange`]).
    #[error(transparent)]
    Sntp(#[from] SntpError),
}

/// One server's answer: its clock minus ours, in nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The server asked; distinct servers are distinct IP addresses.
    pub server: SocketAddr,
    /// Its clock minus ours, in nanoseconds (positive: ours is behind).
    pub offset_nanos: i64,
}

impl From<&SntpTime> for Sample {
    fn from(t: &SntpTime) -> Self {
        Sample {
            server: t.server,
            offset_nanos: t.offset_nanos,
        }
    }
}

/// What [`decide`] accepted: the offset to apply and who agreed on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// To add to the clock, in nanoseconds: the median offset of the agreeing group.
    pub offset_nanos: i64,
    /// The servers of that group, by offset (at least [`QUORUM`] for a step over
    /// [`MAX_FORWARD`]).
    pub agreeing: Vec<SocketAddr>,
}

const NANOS: i128 = 1_000_000_000;

/// Unix nanoseconds of `t` (negative before 1970).
pub(crate) fn unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

fn from_unix_nanos(n: i128) -> SystemTime {
    if n >= 0 {
        UNIX_EPOCH + Duration::from_nanos(n.min(u64::MAX as i128) as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos((-n).min(u64::MAX as i128) as u64)
    }
}

/// The floor in force: the later of [`BUILD_FLOOR_UNIX`] and `persisted`.
pub fn effective_floor(persisted: Option<SystemTime>) -> SystemTime {
    let build = UNIX_EPOCH + Duration::from_secs(BUILD_FLOOR_UNIX);
    persisted.map_or(build, |p| p.max(build))
}

/// The policy. `now` is our clock, `floor` the floor in force, `samples` what the
/// servers said (failed servers left out). Pure: no clock, no file, no network.
pub fn decide(
    now: SystemTime,
    floor: SystemTime,
    samples: &[Sample],
) -> Result<Accepted, ClockError> {
    // One sample per server address (the first); distinct servers are distinct IPs.
    let mut distinct: Vec<Sample> = Vec::new();
    for s in samples {
        if !distinct.iter().any(|d| d.server.ip() == s.server.ip()) {
            distinct.push(*s);
        }
    }
    if distinct.is_empty() {
        return Err(ClockError::NoSample);
    }
    let within = AGREE_WITHIN.as_nanos() as i128;
    // For each sample, the group of samples agreeing with it; the largest group wins,
    // ties to the one nearest our clock.
    let group = |s: &Sample| -> Vec<Sample> {
        distinct
            .iter()
            .filter(|o| (i128::from(o.offset_nanos) - i128::from(s.offset_nanos)).abs() <= within)
            .copied()
            .collect()
    };
    let best = distinct
        .iter()
        .map(|s| (group(s), *s))
        .max_by(|(ga, a), (gb, b)| {
            ga.len().cmp(&gb.len()).then(
                b.offset_nanos
                    .unsigned_abs()
                    .cmp(&a.offset_nanos.unsigned_abs()),
            )
        })
        .expect("not empty");
    let (mut members, lead) = best;
    members.sort_by_key(|s| s.offset_nanos);
    let offset = members[members.len() / 2].offset_nanos;
    let now_n = unix_nanos(now);
    let floor_n = unix_nanos(floor);
    let proposed = now_n + i128::from(offset);
    if proposed < floor_n {
        return Err(ClockError::BelowFloor {
            server: lead.server,
            proposed: (proposed.div_euclid(NANOS)) as i64,
            floor: (floor_n.div_euclid(NANOS)) as i64,
        });
    }
    let reference = now_n.max(floor_n);
    let ahead = proposed - reference;
    if ahead > MAX_FORWARD.as_nanos() as i128 && members.len() < QUORUM {
        return Err(ClockError::TooFarAhead {
            server: lead.server,
            ahead_secs: (ahead / NANOS) as i64,
            reference: (reference.div_euclid(NANOS)) as i64,
            max_secs: MAX_FORWARD.as_secs(),
            agreeing: members.len(),
            needed: QUORUM,
        });
    }
    Ok(Accepted {
        offset_nanos: offset,
        agreeing: members.iter().map(|s| s.server).collect(),
    })
}

/// The time to step to when the clock is below the floor (a dead RTC), else `None`.
pub fn floor_step(now: SystemTime, floor: SystemTime) -> Option<SystemTime> {
    (now < floor).then_some(floor)
}

/// The floor persisted in a small file (Unix seconds, one line), written atomically
/// (temporary file, fsync, rename, fsync of the directory). The caller picks the path
/// (PID 1: in the node's state directory).
#[derive(Clone, Debug)]
pub struct FloorFile {
    path: PathBuf,
}

impl FloorFile {
    /// The floor file at `path` (it need not exist yet; nothing is touched).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FloorFile { path: path.into() }
    }

    /// Where the floor is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, reason: impl std::fmt::Display) -> ClockError {
        ClockError::FloorFile {
            path: self.path.clone(),
            reason: reason.to_string(),
        }
    }

    /// The persisted floor; `None` when there is no file yet.
    pub fn read(&self) -> Result<Option<SystemTime>, ClockError> {
        use std::io::Read;
        let f = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let mut text = String::new();
        f.take(MAX_FLOOR_FILE)
            .read_to_string(&mut text)
            .map_err(|e| self.err(e))?;
        let secs: u64 = text
            .trim()
            .parse()
            .map_err(|e| self.err(format!("not Unix seconds: {e}")))?;
        Ok(Some(UNIX_EPOCH + Duration::from_secs(secs)))
    }

    /// Persists `t` (whole seconds, rounded down) if it is later than what the file
    /// holds; never moves the floor back.
    pub fn advance(&self, t: SystemTime) -> Result<(), ClockError> {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map_err(|e| self.err(e))?
            .as_secs();
        if let Ok(Some(old)) = self.read() {
            if old >= UNIX_EPOCH + Duration::from_secs(secs) {
                return Ok(());
            }
        }
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir).map_err(|e| self.err(e))?;
        let tmp = self
            .path
            .with_extension(format!("tmp.{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{secs}")?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            self.err(e)
        })
    }
}

/// The floor of a running node: the persisted one, then, after an accepted sync, the
/// synced time carried forward by the monotonic clock (never by the wall clock, which
/// is what is in doubt).
#[derive(Debug)]
pub struct Floor {
    file: FloorFile,
    /// The last accepted time and the monotonic instant it was taken at.
    synced: Option<(SystemTime, Instant)>,
}

impl Floor {
    /// The floor kept in `file`, before any sync of this run.
    pub fn new(file: FloorFile) -> Self {
        Floor { file, synced: None }
    }

    /// The floor in force now. An unreadable file counts as no file (logged): the
    /// built-in floor still holds.
    pub fn current(&self) -> SystemTime {
        let persisted = match self.file.read() {
            Ok(p) => p,
            Err(error) => {
                tracing::warn!(%error, "clock floor file unreadable; using the built-in floor");
                None
            }
        };
        let carried = self.synced.map(|(t, at)| t + at.elapsed());
        effective_floor(persisted.max(carried))
    }

    /// Records an accepted time and persists it.
    pub fn accepted(&mut self, t: SystemTime) -> Result<(), ClockError> {
        self.synced = Some((t, Instant::now()));
        self.file.advance(t)
    }

    /// Persists the floor carried forward to now (call periodically and at shutdown).
    pub fn advance(&self) -> Result<(), ClockError> {
        match self.synced {
            Some((t, at)) => self.file.advance(t + at.elapsed()),
            None => Ok(()),
        }
    }
}

/// What one sync concluded: the time to step to (`None`: leave the clock alone).
#[derive(Debug)]
pub struct Plan {
    /// The wall-clock time to set: the accepted time, or the floor when nothing was
    /// accepted and the clock is below it.
    pub step_to: Option<SystemTime>,
    /// The accepted offset and servers, or why nothing was accepted.
    pub outcome: Result<Accepted, ClockError>,
}

/// Asks up to [`MAX_SERVERS`] distinct servers and applies [`decide`] against `floor`
/// and the current clock. Does not touch the clock: see [`sync`].
pub fn plan(servers: &[SocketAddr], floor: SystemTime, timeout: Duration) -> Plan {
    let mut seen: Vec<IpAddr> = Vec::new();
    let mut samples = Vec::new();
    for s in servers {
        if seen.contains(&s.ip()) || seen.len() >= MAX_SERVERS {
            continue;
        }
        seen.push(s.ip());
        match sntp::query(*s, timeout) {
            Ok(t) => samples.push(Sample::from(&t)),
            Err(error) => tracing::warn!(server = %s, %error, "SNTP query failed"),
        }
    }
    let now = SystemTime::now();
    let outcome = decide(now, floor, &samples);
    let step_to = match &outcome {
        Ok(a) => Some(from_unix_nanos(
            unix_nanos(now) + i128::from(a.offset_nanos),
        )),
        Err(_) => floor_step(now, floor),
    };
    Plan { step_to, outcome }
}

/// One sync: [`plan`], then the step (CLOCK_REALTIME, needs CAP_SYS_TIME) and the floor
/// moved to the accepted time. A refusal is logged (an error naming the server) and
/// returned; the clock then moves only up to the floor if it was below it.
pub fn sync(
    servers: &[SocketAddr],
    floor: &mut Floor,
    timeout: Duration,
) -> Result<Accepted, ClockError> {
    let plan = plan(servers, floor.current(), timeout);
    if let Some(t) = plan.step_to {
        let planned_at = Instant::now();
        sntp::set_clock(t)?;
        if plan.outcome.is_ok() {
            if let Err(error) = floor.accepted(t + planned_at.elapsed()) {
                tracing::warn!(%error, "clock floor not persisted");
            }
        }
    }
    match &plan.outcome {
        Ok(a) => {
            tracing::info!(offset_ms = a.offset_nanos / 1_000_000, servers = ?a.agreeing, "clock synchronised")
        }
        Err(error) => {
            tracing::error!(%error, stepped_to_floor = plan.step_to.is_some(), "clock not synchronised")
        }
    }
    plan.outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600 * 1_000_000_000;
    const S: i64 = 1_000_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn sample(ip: u8, offset_nanos: i64) -> Sample {
        Sample {
            server: SocketAddr::from(([10, 0, 0, ip], 123)),
            offset_nanos,
        }
    }

    const NOW: u64 = 1_800_000_000;

    /// A `zt-clock-*` scratch directory, removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let p = std::env::temp_dir().join(format!("zt-clock-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Scratch(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_small_offset_from_one_server_is_accepted() {
        let a = decide(at(NOW), at(NOW - 3600), &[sample(1, 3 * S)]).unwrap();
        assert_eq!(a.offset_nanos, 3 * S);
        // Backwards too, as long as it stays above the floor.
        let a = decide(at(NOW), at(NOW - 3600), &[sample(1, -600 * S)]).unwrap();
        assert_eq!(a.offset_nanos, -600 * S);
    }

    #[test]
    fn below_the_floor_is_refused_whoever_agrees() {
        let floor = at(NOW - 60);
        let err = decide(
            at(NOW),
            floor,
            &[sample(1, -3600 * S), sample(2, -3600 * S)],
        )
        .unwrap_err();
        assert!(
            matches!(err, ClockError::BelowFloor { floor: f, proposed, .. } if f == (NOW - 60) as i64 && proposed == (NOW - 3600) as i64),
            "{err}"
        );
    }

    #[test]
    fn one_server_may_not_jump_more_than_a_day() {
        let ten_years = 3650 * DAY;
        let err = decide(at(NOW), at(NOW - 60), &[sample(1, ten_years)]).unwrap_err();
        assert!(
            matches!(
                err,
                ClockError::TooFarAhead {
                    agreeing: 1,
                    needed: 2,
                    ..
                }
            ),
            "{err}"
        );
        // Just under a day: fine.
        assert!(decide(at(NOW), at(NOW), &[sample(1, DAY - S)]).is_ok());
        // The bound counts from the floor when the clock is below it (dead RTC).
        let a = decide(at(0), at(NOW), &[sample(1, NOW as i64 * S + 3600 * S)]).unwrap();
        assert_eq!(a.offset_nanos, NOW as i64 * S + 3600 * S);
        let err = decide(at(0), at(NOW), &[sample(1, NOW as i64 * S + 2 * DAY)]).unwrap_err();
        assert!(matches!(err, ClockError::TooFarAhead { .. }), "{err}");
    }

    #[test]
    fn two_agreeing_servers_may_jump_further() {
        let far = 400 * DAY;
        let a = decide(at(NOW), at(NOW), &[sample(1, far), sample(2, far + 2 * S)]).unwrap();
        assert_eq!(a.agreeing.len(), 2);
        // The same server twice (other port) is one server.
        let twice = [
            sample(1, far),
            Sample {
                server: SocketAddr::from(([10, 0, 0, 1], 1123)),
                offset_nanos: far,
            },
        ];
        assert!(matches!(
            decide(at(NOW), at(NOW), &twice),
            Err(ClockError::TooFarAhead { agreeing: 1, .. })
        ));
        // Disagreeing by more than AGREE_WITHIN: no quorum.
        assert!(decide(at(NOW), at(NOW), &[sample(1, far), sample(2, far + 10 * S)]).is_err());
    }

    #[test]
    fn the_majority_wins_and_a_rogue_is_outvoted() {
        let rogue = sample(9, 3650 * DAY);
        let a = decide(
            at(NOW),
            at(NOW - 60),
            &[rogue, sample(1, S), sample(2, 2 * S)],
        )
        .unwrap();
        assert!(a.offset_nanos == S || a.offset_nanos == 2 * S);
        assert!(!a.agreeing.contains(&rogue.server));
        // A tie goes to the source nearest our clock.
        let a = decide(
            at(NOW),
            at(NOW - 60),
            &[sample(1, 3600 * S), sample(2, 10 * S)],
        )
        .unwrap();
        assert_eq!(a.offset_nanos, 10 * S);
    }

    #[test]
    fn no_sample_is_an_error_and_a_clock_below_the_floor_steps_up() {
        assert!(matches!(
            decide(at(NOW), at(NOW), &[]),
            Err(ClockError::NoSample)
        ));
        assert_eq!(floor_step(at(5), at(NOW)), Some(at(NOW)));
        assert_eq!(floor_step(at(NOW + 1), at(NOW)), None);
        assert_eq!(effective_floor(None), at(BUILD_FLOOR_UNIX));
        assert_eq!(effective_floor(Some(at(5))), at(BUILD_FLOOR_UNIX));
        assert_eq!(effective_floor(Some(at(NOW))), at(NOW));
    }

    #[test]
    fn the_floor_file_only_moves_forward() {
        let dir = Scratch::new("file");
        let f = FloorFile::new(dir.path().join("state/clock-floor"));
        assert_eq!(f.read().unwrap(), None);
        f.advance(at(NOW)).unwrap();
        assert_eq!(f.read().unwrap(), Some(at(NOW)));
        f.advance(at(NOW - 100)).unwrap();
        assert_eq!(f.read().unwrap(), Some(at(NOW)));
        f.advance(at(NOW + 100)).unwrap();
        assert_eq!(f.read().unwrap(), Some(at(NOW + 100)));
        std::fs::write(f.path(), "junk").unwrap();
        assert!(matches!(f.read(), Err(ClockError::FloorFile { .. })));
        // An unreadable file leaves the built-in floor in force.
        let floor = Floor::new(f.clone());
        assert_eq!(floor.current(), at(BUILD_FLOOR_UNIX));
    }

    #[test]
    fn the_running_floor_follows_the_monotonic_clock_after_a_sync() {
        let dir = Scratch::new("running");
        let file = FloorFile::new(dir.path().join("clock-floor"));
        let mut floor = Floor::new(file.clone());
        assert_eq!(floor.current(), at(BUILD_FLOOR_UNIX));
        floor.accepted(at(NOW)).unwrap();
        assert!(floor.current() >= at(NOW));
        floor.advance().unwrap();
        assert!(file.read().unwrap().unwrap() >= at(NOW));
    }
}
