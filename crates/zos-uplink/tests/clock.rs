//! The clock policy against real SNTP exchanges: tiny SNTP responders on loopback
//! addresses of their own (127.0.0.x, one per "server"), one of them a rogue that
//! claims a time far from the truth. `clock::plan` queries them as PID 1 does and says
//! what it would step the clock to; these tests never step the host's clock.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zos_uplink::clock::{self, ClockError, FloorFile};

const YEAR: i64 = 365 * 24 * 3600;
const NTP_UNIX_DELTA: u64 = 2_208_988_800;

/// An SNTP server on `127.0.0.<host>` whose clock is ours plus `skew_secs`. Stops when
/// dropped.
struct Responder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

fn ntp_timestamp(t: SystemTime) -> u64 {
    let d = t.duration_since(UNIX_EPOCH).unwrap();
    let secs = (d.as_secs() + NTP_UNIX_DELTA) % (1 << 32);
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    secs << 32 | frac
}

impl Responder {
    fn start(host: u8, skew_secs: i64) -> Responder {
        let sock = UdpSocket::bind(("127.0.0.".to_owned() + &host.to_string(), 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let addr = sock.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if n < 48 {
                    continue;
                }
                let skew = Duration::from_secs(skew_secs.unsigned_abs());
                let now = if skew_secs >= 0 {
                    SystemTime::now() + skew
                } else {
                    SystemTime::now() - skew
                };
                let ts = ntp_timestamp(now).to_be_bytes();
                let mut reply = [0u8; 48];
                reply[0] = 4 << 3 | 4;
                reply[1] = 2;
                reply[12..16].copy_from_slice(b"ZT\0\0");
                reply[24..32].copy_from_slice(&buf[40..48]);
                reply[32..40].copy_from_slice(&ts);
                reply[40..48].copy_from_slice(&ts);
                let _ = sock.send_to(&reply, peer);
            }
        });
        Responder { addr, stop }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A `zt-clock-*` scratch directory (the node's state directory), removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("zt-clock-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn floor_file(&self) -> FloorFile {
        FloorFile::new(self.0.join("clock-floor"))
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

const TIMEOUT: Duration = Duration::from_secs(2);

#[test]
fn a_rogue_server_ten_years_ahead_does_not_move_the_clock() {
    let state = Scratch::new("rogue");
    let floor_file = state.floor_file();
    floor_file
        .advance(SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    let before = std::fs::read(floor_file.path()).unwrap();
    let rogue = Responder::start(2, 10 * YEAR);

    let floor = clock::effective_floor(floor_file.read().unwrap());
    let plan = clock::plan(&[rogue.addr], floor, TIMEOUT);
    assert!(
        matches!(
            &plan.outcome,
            Err(ClockError::TooFarAhead { server, agreeing: 1, needed: 2, ahead_secs, .. })
                if *server == rogue.addr && *ahead_secs > 9 * YEAR
        ),
        "{:?}",
        plan.outcome
    );
    assert_eq!(plan.step_to, None, "the clock is not stepped");
    assert_eq!(std::fs::read(floor_file.path()).unwrap(), before);
    assert!(state.path().join("clock-floor").exists());
}

#[test]
fn a_rogue_is_outvoted_by_two_honest_servers() {
    let rogue = Responder::start(3, 10 * YEAR);
    let honest = [Responder::start(4, 0), Responder::start(5, 0)];
    let floor = clock::effective_floor(None);
    let plan = clock::plan(
        &[rogue.addr, honest[0].addr, honest[1].addr],
        floor,
        TIMEOUT,
    );
    let accepted = plan.outcome.as_ref().unwrap();
    assert!(!accepted.agreeing.contains(&rogue.addr), "{accepted:?}");
    assert_eq!(accepted.agreeing.len(), 2);
    assert!(accepted.offset_nanos.abs() < 1_000_000_000, "{accepted:?}");
    let to = plan.step_to.unwrap();
    let off = to
        .duration_since(SystemTime::now())
        .unwrap_or_else(|e| e.duration());
    assert!(off < Duration::from_secs(60), "stepped to {to:?}");
}

#[test]
fn a_server_below_the_floor_is_refused() {
    let state = Scratch::new("floor");
    let floor_file = state.floor_file();
    floor_file.advance(SystemTime::now()).unwrap();
    // A year back: the floor (now) refuses it, even from two servers.
    let past = [Responder::start(6, -YEAR), Responder::start(7, -YEAR)];
    let floor = clock::effective_floor(floor_file.read().unwrap());
    let plan = clock::plan(&[past[0].addr, past[1].addr], floor, TIMEOUT);
    assert!(
        matches!(&plan.outcome, Err(ClockError::BelowFloor { proposed, floor: f, .. }) if f - proposed > YEAR - 120),
        "{:?}",
        plan.outcome
    );
    assert_eq!(plan.step_to, None, "the clock is not stepped");
}
