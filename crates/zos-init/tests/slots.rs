//! The live switch for real: zos-init's loop ([`Init::with_slots`]) supervising real
//! child processes (this binary in the agent's role) through a switch that passes the
//! health gate, a trial agent that exits at start, one that never writes the health
//! mark, and a switch to a slot that does not verify. Only the machine-wide calls
//! (unmount, kill(-1), reboot) go to a recording fake; spawn, kill, waitpid and
//! sigtimedwait are the real ones.
//!
//! No libtest harness (`harness = false`): the loop takes its signals with
//! `sigtimedwait`, and libtest's threads would take them.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use zos_init::slots::{
    self, SlotState, Slots, HEALTH_MARK, SLOT_ENV, SWITCH_EXIT_CODE, SWITCH_REQUEST,
};
use zos_init::sys::MountSpec;
use zos_init::{Init, Linux, PowerAction, RespawnBackoff, ShutdownPlan, Sys};

const ROLE: &str = "ZOS_SLOTS_TEST_ROLE";
const DIR: &str = "ZOS_SLOTS_TEST_DIR";

fn main() -> ExitCode {
    match std::env::var(ROLE).as_deref() {
        Ok("agent") => agent(),
        _ => driver(),
    }
}

// ---------------------------------------------------------------------------------
// The agent: what it does depends on the slot it runs from.

fn agent() -> ExitCode {
    let dir = PathBuf::from(std::env::var_os(DIR).expect(DIR));
    let slot = std::env::var(SLOT_ENV).ok();
    let name = slot.clone().unwrap_or_else(|| "image".into());
    append(
        &dir.join("starts"),
        &format!("start {name} {}", std::process::id()),
    );
    match slot.as_deref() {
        Some("0.3.0") => {
            eprintln!("fatal: cannot register: notary unreachable");
            return ExitCode::from(3);
        }
        Some("0.4.0") => {
            println!("silent agent up");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Some(v) => {
            println!("agent {v} registered, serving, heartbeat sent");
            fs::write(dir.join("slots").join(HEALTH_MARK), v).unwrap();
        }
        None => {}
    }
    // Waits for the test to ask for a switch, as the real agent does after installing.
    let ask = dir.join("switch-to");
    loop {
        if let Ok(v) = fs::read_to_string(&ask) {
            fs::remove_file(&ask).unwrap();
            // The agent makes the slots directory (on a booted node: on a pool).
            fs::create_dir_all(dir.join("slots")).unwrap();
            fs::write(dir.join("slots").join(SWITCH_REQUEST), v).unwrap();
            std::process::exit(SWITCH_EXIT_CODE);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn append(path: &Path, line: &str) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

// ---------------------------------------------------------------------------------
// The machine: real processes and signals, recorded machine-wide calls.

#[derive(Clone, Copy)]
struct TestSys;

impl Sys for TestSys {
    fn now(&self) -> Instant {
        Linux.now()
    }
    fn wait_signal(&self, timeout: Option<Duration>) -> Option<Signal> {
        Linux.wait_signal(timeout)
    }
    fn reap_one(&self) -> Result<Option<WaitStatus>, Errno> {
        Linux.reap_one()
    }
    fn spawn(&self, cmd: &mut Command) -> std::io::Result<Pid> {
        Linux.spawn(cmd)
    }
    fn kill(&self, pid: Pid, sig: Signal) -> Result<(), Errno> {
        Linux.kill(pid, sig)
    }
    fn kill_all(&self, _sig: Signal) -> Result<(), Errno> {
        Ok(())
    }
    fn read_file(&self, _path: &Path) -> std::io::Result<String> {
        // No mounts to unmount at the end.
        Ok(String::new())
    }
    fn write_file(&self, _path: &Path, _data: &str) -> std::io::Result<()> {
        Ok(())
    }
    fn mkdir_all(&self, _path: &Path) -> std::io::Result<()> {
        Ok(())
    }
    fn mount(&self, _spec: &MountSpec) -> Result<(), Errno> {
        Ok(())
    }
    fn unmount(&self, _target: &Path) -> Result<(), Errno> {
        Ok(())
    }
    fn sync(&self) {}
    fn finit_module(&self, _path: &Path, _compressed: bool) -> Result<(), Errno> {
        Ok(())
    }
    fn disable_ctrl_alt_del(&self) -> Result<(), Errno> {
        Ok(())
    }
    fn reboot(&self, _action: PowerAction) -> Result<(), Errno> {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------
// The driver.

/// Removes the test's directory, and kills what the loop left, on every exit.
struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Ok(starts) = fs::read_to_string(self.0.join("starts")) {
            for pid in starts
                .lines()
                .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn driver() -> ExitCode {
    let name = "a_live_switch_passes_the_gate_and_failed_trials_roll_back";
    if std::env::args().any(|a| a == "--list") {
        println!("{name}: test");
        return ExitCode::SUCCESS;
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
        println!("\ntest result: ok. 0 passed; 0 failed; 1 filtered out");
        return ExitCode::SUCCESS;
    }
    // First, before any thread: the loop's signals are taken with sigtimedwait.
    zos_init::block_init_signals().expect("blocking signals");
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("info")
        .try_init();
    let tmp = zos_testkit::tempdir("slots");
    let dir = tmp.path().to_path_buf();
    let _cleanup = Cleanup(dir.clone());
    print!("test {name} ... ");
    let _ = std::io::stdout().flush();

    let slots_dir = dir.join("slots");
    let exe = std::env::current_exe().unwrap();
    let check_exe = exe.clone();
    let check: slots::CheckSlot = Box::new(move |v: &str| match v {
        "0.2.0" | "0.3.0" | "0.4.0" => Ok(check_exe.clone()),
        other => Err(format!("slot {other}: no release installed")),
    });
    let agent_dir = dir.clone();
    let build: slots::BuildAgent = Box::new(move |bin: &Path| {
        let mut c = Command::new(bin);
        c.env(ROLE, "agent").env(DIR, &agent_dir);
        c
    });
    let shared = Slots::at_boot(&slots_dir, &exe, check, build, Duration::from_secs(3)).shared();
    assert_eq!(shared.state(), SlotState::Image);
    let mut init = Init::with_slots(
        TestSys,
        shared,
        RespawnBackoff::new(
            Duration::from_millis(100),
            Duration::from_millis(400),
            Duration::from_secs(60),
        ),
        ShutdownPlan::default(),
    );

    // The scenario runs beside the loop; it ends the loop with SIGTERM either way.
    let (done_tx, done_rx) = mpsc::channel();
    let scenario_dir = dir.clone();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(|| scenario(&scenario_dir));
        let _ = done_tx.send(r.is_ok());
        let _ = kill(nix::unistd::getpid(), Signal::SIGTERM);
    });
    let report = init.run();
    let ok = done_rx
        .recv_timeout(Duration::from_secs(5))
        .unwrap_or(false);
    assert!(report.agent_exit.is_some(), "the last agent was stopped");
    if ok {
        println!("ok\n\ntest result: ok. 1 passed; 0 failed");
        ExitCode::SUCCESS
    } else {
        println!("FAILED\n\ntest result: FAILED. 0 passed; 1 failed");
        ExitCode::FAILURE
    }
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn starts(dir: &Path, slot: &str) -> Vec<u32> {
    fs::read_to_string(dir.join("starts"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split(' ').skip(1);
            (w.next()? == slot).then(|| w.next()?.parse().ok())?
        })
        .collect()
}

fn state(dir: &Path) -> SlotState {
    slots::load(&dir.join("slots")).unwrap()
}

fn scenario(dir: &Path) {
    let ask = |v: &str| fs::write(dir.join("switch-to"), v).unwrap();
    wait_for("the image's agent", || {
        starts(dir, "image").first().copied()
    });

    // 1. A switch to 0.2.0, which writes its health mark: committed.
    ask("0.2.0");
    wait_for("0.2.0 committed", || {
        (state(dir)
            == SlotState::Committed {
                version: "0.2.0".into(),
            })
        .then_some(())
    });
    assert_eq!(starts(dir, "0.2.0").len(), 1);
    eprintln!(
        "step 1: the switch to 0.2.0 passed the gate: {:?}",
        state(dir)
    );

    // 2. 0.3.0 exits at start: back to 0.2.0, the reason with its status and last line.
    ask("0.3.0");
    let s = wait_for("0.3.0 rolled back", || match state(dir) {
        s @ SlotState::RolledBack { .. } => Some(s),
        _ => None,
    });
    let SlotState::RolledBack {
        version,
        reason,
        running,
    } = &s
    else {
        unreachable!()
    };
    assert_eq!(version, "0.3.0");
    assert_eq!(reason.cause, "exited", "{s:?}");
    assert_eq!(reason.detail.as_deref(), Some("exit code 3"), "{s:?}");
    assert!(
        reason
            .log_tail
            .iter()
            .any(|l| l == "fatal: cannot register: notary unreachable"),
        "{s:?}"
    );
    assert_eq!(running.as_deref(), Some("0.2.0"));
    assert_eq!(starts(dir, "0.3.0").len(), 1);
    wait_for("0.2.0 again", || {
        (starts(dir, "0.2.0").len() == 2).then_some(())
    });
    eprintln!("step 2: 0.3.0 exited and was rolled back: {s:?}");

    // 3. 0.4.0 never writes the mark: stopped after the window, back to 0.2.0.
    ask("0.4.0");
    let s = wait_for("0.4.0 rolled back", || match state(dir) {
        s @ SlotState::RolledBack { .. } if matches!(&s, SlotState::RolledBack { version, .. } if version == "0.4.0") => {
            Some(s)
        }
        _ => None,
    });
    let SlotState::RolledBack {
        reason, running, ..
    } = &s
    else {
        unreachable!()
    };
    assert_eq!(reason.cause, "no_health_mark", "{s:?}");
    assert!(
        reason.log_tail.iter().any(|l| l == "silent agent up"),
        "{s:?}"
    );
    assert_eq!(running.as_deref(), Some("0.2.0"));
    let trial = starts(dir, "0.4.0")[0];
    wait_for("0.2.0 a third time", || {
        (starts(dir, "0.2.0").len() == 3).then_some(())
    });
    assert!(
        !Path::new(&format!("/proc/{trial}")).exists()
            || fs::read_to_string(format!("/proc/{trial}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true),
        "the trial agent {trial} was stopped"
    );
    eprintln!("step 3: 0.4.0 gave no health mark and was rolled back: {s:?}");

    // 4. A slot that does not verify: refused, 0.2.0 starts again, the state unchanged.
    ask("9.9.9");
    wait_for("0.2.0 a fourth time", || {
        (starts(dir, "0.2.0").len() == 4).then_some(())
    });
    assert!(starts(dir, "9.9.9").is_empty());
    assert_eq!(state(dir), s, "a refused switch changes no state");
    eprintln!("step 4: 9.9.9 refused");
}
