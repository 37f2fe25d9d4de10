//! The real thing: zos-init's loop running as PID 1 of a new PID namespace (as root), and
//! as a child subreaper (anyone), with real processes, real zombies and real signals.
//! Only the unmounts and the final power-off go to a recording fake.
//!
//! No libtest harness (`harness = false`): signals are process-wide, and libtest's
//! threads would take the SIGCHLD/SIGTERM meant for the init loop. This binary plays
//! every part, chosen by `ZOS_INIT_TEST_ROLE`: the driver (no role), the init, the agent
//! it supervises, an orphan maker, orphans. No shell anywhere.
//!
//! A scenario that cannot run prints `SKIP: <name>: <reason>` and is counted.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;
use zos_init::sys::MountSpec;
use zos_init::{Init, Linux, PowerAction, RespawnBackoff, ShutdownPlan, Sys};

const ROLE: &str = "ZOS_INIT_TEST_ROLE";
const DIR: &str = "ZOS_INIT_TEST_DIR";
const MODE: &str = "ZOS_INIT_TEST_MODE";
/// Orphans the agent leaves behind that exit at once (zombies to reap).
const ZOMBIES: usize = 5;

fn main() -> ExitCode {
    match std::env::var(ROLE).as_deref() {
        Ok("nsparent") => role_nsparent(),
        Ok("init") => role_init(),
        Ok("agent") => role_agent(),
        Ok("orphans") => role_orphans(),
        Ok("exit") => ExitCode::SUCCESS,
        Ok("sleeper") => role_sleeper(),
        Ok("plain") => role_plain(),
        _ => driver(),
    }
}

fn dir() -> PathBuf {
    PathBuf::from(std::env::var_os(DIR).expect("ZOS_INIT_TEST_DIR"))
}

fn me(role: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("current_exe"));
    c.env(ROLE, role);
    c
}

fn append(path: &Path, line: &str) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open log");
    writeln!(f, "{line}").expect("write log");
}

fn millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

// ---------------------------------------------------------------------------------
// The driver: one scenario per mode.

/// One `SKIP: <test>: <reason>` line on the real stderr, which `cargo xtask test`
/// counts (the kit's: crates/zos-testkit).
use zos_testkit::skip_line;

fn driver() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let names = ["pid1_in_a_pid_namespace", "pid1_as_child_subreaper"];
    if args.iter().any(|a| a == "--list") {
        for n in names {
            println!("{n}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let (mut passed, mut skipped, mut failed) = (0, 0, 0);
    for name in names {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let mode = if name.contains("namespace") {
            "ns"
        } else {
            "subreaper"
        };
        if mode == "ns" && !nix::unistd::geteuid().is_root() {
            skip_line(name, "needs root for unshare(CLONE_NEWPID)");
            skipped += 1;
            continue;
        }
        print!("test {name} ... ");
        let _ = std::io::stdout().flush();
        match std::panic::catch_unwind(|| scenario(mode)) {
            Ok(Ok(())) => {
                println!("ok");
                passed += 1;
            }
            Ok(Err(skip)) => {
                println!("skipped");
                skip_line(name, &skip);
                skipped += 1;
            }
            Err(_) => {
                println!("FAILED");
                failed += 1;
            }
        }
    }
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed; {skipped} skipped",
        if failed == 0 { "ok" } else { "FAILED" }
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Kills what a scenario started if it fails half-way.
struct Cleanup(Vec<Pid>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in &self.0 {
            for p in descendants(*pid) {
                let _ = kill(p, Signal::SIGKILL);
            }
            let _ = kill(*pid, Signal::SIGKILL);
        }
    }
}

/// (pid, ppid, state) of every process, from /proc.
fn processes() -> Vec<(Pid, Pid, char)> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
            continue;
        };
        let mut f = after.split(' ');
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let ppid = f.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push((Pid::from_raw(pid), Pid::from_raw(ppid), state));
    }
    out
}

fn descendants(root: Pid) -> Vec<Pid> {
    let all = processes();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(all.iter().filter(|(_, pp, _)| *pp == p).map(|(c, _, _)| *c));
        i += 1;
    }
    found.remove(0);
    found
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scenario(mode: &str) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!(
        "zos-init-pid1-{mode}-{}-{}",
        std::process::id(),
        millis()
    ));
    fs::create_dir_all(&dir).unwrap();
    let err = fs::File::create(dir.join("init.err")).unwrap();
    let role = if mode == "ns" { "nsparent" } else { "init" };
    let mut top = me(role)
        .env(DIR, &dir)
        .env(MODE, mode)
        .stdin(Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    let mut cleanup = Cleanup(vec![Pid::from_raw(top.id() as i32)]);
    let show_logs = || {
        for f in ["init.err", "calls.log", "agent.log"] {
            eprintln!(
                "--- {f}:\n{}",
                fs::read_to_string(dir.join(f)).unwrap_or_default()
            );
        }
    };
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> Result<(), String> {
            // The init's pid as this (the host's) /proc sees it.
            let init = if mode == "ns" {
                let hostpid = dir.join("init.hostpid");
                let end = Instant::now() + Duration::from_secs(10);
                loop {
                    if let Ok(t) = fs::read_to_string(&hostpid) {
                        break Pid::from_raw(t.trim().parse().unwrap());
                    }
                    if let Ok(Some(status)) = top.try_wait() {
                        let why = fs::read_to_string(dir.join("skip")).unwrap_or_default();
                        if !why.is_empty() {
                            return Err(why);
                        }
                        panic!("the namespace parent exited early: {status}");
                    }
                    assert!(Instant::now() < end, "no init.hostpid");
                    std::thread::sleep(Duration::from_millis(20));
                }
            } else {
                Pid::from_raw(top.id() as i32)
            };
            cleanup.0.push(init);

            // The agent crashes twice (a panic, then SIGABRT) and is restarted with backoff;
            // its third run leaves orphans behind and says it is ready.
            wait_for("the third agent", Duration::from_secs(20), || {
                dir.join("ready").exists()
            });
            let starts: Vec<u128> = fs::read_to_string(dir.join("agent.starts"))
                .unwrap()
                .lines()
                .map(|l| l.parse().unwrap())
                .collect();
            assert_eq!(starts.len(), 3, "agent starts: {starts:?}");
            assert!(
                starts[1] - starts[0] >= 100,
                "first restart after 100 ms: {starts:?}"
            );
            assert!(
                starts[2] - starts[1] >= 200,
                "second restart after 200 ms (doubled): {starts:?}"
            );

            // The orphans were reparented to our init and the zombies among them reaped.
            let sleeper: Pid = Pid::from_raw(
                fs::read_to_string(dir.join("sleeper.hostpid"))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap(),
            );
            wait_for(
                "the sleeper to be reparented to init",
                Duration::from_secs(5),
                || {
                    processes()
                        .iter()
                        .any(|(p, pp, _)| *p == sleeper && *pp == init)
                },
            );
            let zombies: Vec<Pid> = fs::read_to_string(dir.join("zombies.hostpids"))
                .unwrap()
                .lines()
                .map(|l| Pid::from_raw(l.parse().unwrap()))
                .collect();
            assert_eq!(zombies.len(), ZOMBIES);
            wait_for("no zombie left under init", Duration::from_secs(5), || {
                let procs = processes();
                let left = procs
                    .iter()
                    .filter(|(_, pp, st)| *pp == init && *st == 'Z')
                    .count();
                let orphans_alive = procs.iter().filter(|(p, _, _)| zombies.contains(p)).count();
                left == 0 && orphans_alive == 0
            });

            // SIGTERM: the orderly shutdown, down to the (recorded) power-off.
            kill(init, Signal::SIGTERM).unwrap();
            let end = Instant::now() + Duration::from_secs(30);
            let status = loop {
                if let Some(s) = top.try_wait().unwrap() {
                    break s;
                }
                assert!(Instant::now() < end, "init did not finish its shutdown");
                std::thread::sleep(Duration::from_millis(20));
            };
            assert!(status.success(), "init exited with {status}");

            let calls = fs::read_to_string(dir.join("calls.log")).unwrap();
            let calls: Vec<&str> = calls.lines().collect();
            let agent_pid = fs::read_to_string(dir.join("agent.pid")).unwrap();
            let pos = |c: &str| {
                calls
                    .iter()
                    .position(|l| l.starts_with(c))
                    .unwrap_or_else(|| panic!("no {c:?} in {calls:#?}"))
            };
            let term_agent = pos(&format!("kill {} SIGTERM", agent_pid.trim()));
            let term_all = pos("kill_all SIGTERM");
            // The sleeper ignores SIGTERM: only SIGKILL gets rid of it.
            let kill_all = pos("kill_all SIGKILL");
            // The plain orphan ends with the first, polite round.
            let plain = fs::read_to_string(dir.join("plain.pid")).unwrap();
            let plain_reaped = pos(&format!("reaped {} SIGTERM", plain.trim()));
            assert!(
                term_all < plain_reaped && plain_reaped < kill_all,
                "{calls:#?}"
            );
            let first_sync = pos("sync");
            let first_unmount = pos("unmount ");
            let reboot = pos("reboot PowerOff");
            assert!(
                term_agent < term_all && term_all < kill_all && kill_all < first_sync,
                "{calls:#?}"
            );
            assert!(
                first_sync < first_unmount && first_unmount < reboot,
                "{calls:#?}"
            );
            assert!(
                calls.contains(&"report agent_exit=Some(Code(0)) survivors=false"),
                "{calls:#?}"
            );
            let agent_log = fs::read_to_string(dir.join("agent.log")).unwrap();
            assert!(agent_log.contains("agent got SIGTERM"), "{agent_log}");
            // Nothing of the scenario is left running.
            assert!(
                !processes().iter().any(|(p, _, _)| *p == sleeper),
                "the sleeper survived"
            );
            Ok(())
        }));
    match result {
        Ok(r) => {
            // All exited and reaped: their pids may be reused, never signal them again.
            cleanup.0.clear();
            if r.is_ok() && std::env::var_os("ZOS_INIT_TEST_KEEP").is_none() {
                let _ = fs::remove_dir_all(&dir);
            }
            r
        }
        Err(e) => {
            show_logs();
            std::panic::resume_unwind(e)
        }
    }
}

// ---------------------------------------------------------------------------------
// The parts.

/// Unshares a PID namespace and starts the init in it: that child is its PID 1.
fn role_nsparent() -> ExitCode {
    if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWPID) {
        fs::write(dir().join("skip"), format!("unshare(CLONE_NEWPID): {e}")).unwrap();
        return ExitCode::SUCCESS;
    }
    let mut child = me("init").spawn().expect("spawning the namespace init");
    fs::write(dir().join("init.hostpid"), child.id().to_string()).unwrap();
    let status = child.wait().unwrap();
    if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The code under test. Real system calls, except: the unmounts and the power-off are
/// only recorded; outside a PID namespace `kill(-1)` would hit the whole machine, so
/// there it signals this process's descendants instead.
struct TestSys {
    real: Linux,
    log: PathBuf,
    pid_namespace: bool,
}

impl Sys for TestSys {
    fn now(&self) -> Instant {
        self.real.now()
    }
    fn wait_signal(&self, timeout: Option<Duration>) -> Option<Signal> {
        self.real.wait_signal(timeout)
    }
    fn reap_one(&self) -> Result<Option<WaitStatus>, Errno> {
        let r = self.real.reap_one();
        match r {
            Ok(Some(WaitStatus::Exited(pid, code))) => {
                append(&self.log, &format!("reaped {pid} exit {code}"))
            }
            Ok(Some(WaitStatus::Signaled(pid, sig, _))) => {
                append(&self.log, &format!("reaped {pid} {sig}"))
            }
            _ => {}
        }
        r
    }
    fn spawn(&self, cmd: &mut Command) -> std::io::Result<Pid> {
        let pid = self.real.spawn(cmd)?;
        append(&self.log, &format!("spawn {pid}"));
        Ok(pid)
    }
    fn kill(&self, pid: Pid, sig: Signal) -> Result<(), Errno> {
        append(&self.log, &format!("kill {pid} {sig}"));
        self.real.kill(pid, sig)
    }
    fn kill_all(&self, sig: Signal) -> Result<(), Errno> {
        append(&self.log, &format!("kill_all {sig}"));
        if self.pid_namespace {
            // As PID 1 of its own namespace, kill(-1) reaches that namespace only.
            assert_eq!(nix::unistd::getpid().as_raw(), 1);
            return self.real.kill_all(sig);
        }
        for p in descendants(nix::unistd::getpid()) {
            let _ = kill(p, sig);
        }
        Ok(())
    }
    fn read_file(&self, path: &Path) -> std::io::Result<String> {
        self.real.read_file(path)
    }
    fn write_file(&self, path: &Path, _: &str) -> std::io::Result<()> {
        panic!("the test init writes no system file ({})", path.display())
    }
    fn mkdir_all(&self, path: &Path) -> std::io::Result<()> {
        panic!("the test init makes no mount point ({})", path.display())
    }
    fn mount(&self, spec: &MountSpec) -> Result<(), Errno> {
        panic!("the test init mounts nothing ({})", spec.target)
    }
    fn unmount(&self, target: &Path) -> Result<(), Errno> {
        append(&self.log, &format!("unmount {}", target.display()));
        Ok(())
    }
    fn sync(&self) {
        append(&self.log, "sync");
        self.real.sync();
    }
    fn finit_module(&self, path: &Path, _: bool) -> Result<(), Errno> {
        panic!("the test init loads no module ({})", path.display())
    }
    fn disable_ctrl_alt_del(&self) -> Result<(), Errno> {
        append(&self.log, "disable_ctrl_alt_del");
        Ok(())
    }
    fn reboot(&self, action: PowerAction) -> Result<(), Errno> {
        append(&self.log, &format!("reboot {action:?}"));
        Ok(())
    }
}

fn role_init() -> ExitCode {
    // Before anything else, as zosd's PID 1 does: no thread exists yet.
    zos_init::block_init_signals().unwrap();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("debug")
        .with_ansi(false)
        .init();
    let pid_namespace = std::env::var(MODE).as_deref() == Ok("ns");
    if pid_namespace {
        assert_eq!(
            nix::unistd::getpid().as_raw(),
            1,
            "not PID 1 of the new namespace"
        );
    } else {
        zos_init::set_child_subreaper().unwrap();
    }
    let dir = dir();
    let sys = TestSys {
        real: Linux,
        log: dir.join("calls.log"),
        pid_namespace,
    };
    let agent = Box::new(|| {
        let mut c = me("agent");
        c.stdin(Stdio::null());
        c
    });
    let backoff = RespawnBackoff::new(
        Duration::from_millis(100),
        Duration::from_millis(400),
        Duration::from_secs(60),
    );
    let plan = ShutdownPlan {
        agent_grace: Duration::from_secs(5),
        others_grace: Duration::from_millis(500),
        kill_grace: Duration::from_secs(5),
    };
    let mut init = Init::new(sys, agent, backoff, plan);
    let report = init.run();
    append(
        &dir.join("calls.log"),
        &format!(
            "report agent_exit={:?} survivors={}",
            report.agent_exit, report.survivors
        ),
    );
    ExitCode::SUCCESS
}

/// Crashes on its first two runs; then leaves orphans and waits for SIGTERM.
fn role_agent() -> ExitCode {
    let dir = dir();
    // The init blocks its signals; its children must not inherit that mask (std's
    // Command empties it), or an agent would never see its own SIGTERM.
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let blocked = status.lines().find(|l| l.starts_with("SigBlk:")).unwrap();
    assert_eq!(
        u64::from_str_radix(blocked[7..].trim(), 16).unwrap(),
        0,
        "{blocked}"
    );
    append(&dir.join("agent.starts"), &millis().to_string());
    let runs = fs::read_to_string(dir.join("agent.starts"))
        .unwrap()
        .lines()
        .count();
    match runs {
        1 => panic!("agent: a provisioning bug (on purpose)"),
        2 => std::process::abort(),
        _ => {}
    }
    // Leave the orphans behind first: they must not inherit a blocked SIGTERM. Then
    // block it, before saying ready, so the driver's shutdown cannot be missed.
    fs::write(dir.join("agent.pid"), nix::unistd::getpid().to_string()).unwrap();
    let status = me("orphans").status().unwrap();
    assert!(status.success());
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    term.thread_block().unwrap();
    fs::write(dir.join("ready"), "").unwrap();
    let sig = term.wait().unwrap();
    append(&dir.join("agent.log"), &format!("agent got {sig}"));
    ExitCode::SUCCESS
}

/// Starts children and exits without waiting for them: they become orphans.
#[allow(clippy::zombie_processes)] // Zombies for the init to reap are the point.
fn role_orphans() -> ExitCode {
    let dir = dir();
    let mut hostpids = String::new();
    let mut quick = Vec::new();
    for _ in 0..ZOMBIES {
        let c = me("exit").spawn().unwrap();
        // The pid as the test's (host) /proc sees it: in the namespace, c.id() is not.
        let pid = host_pid(c.id());
        hostpids.push_str(&format!("{pid}\n"));
        quick.push(pid);
    }
    fs::write(dir.join("zombies.hostpids"), hostpids).unwrap();
    let s = me("sleeper").spawn().unwrap();
    let p = me("plain").spawn().unwrap();
    wait_for("the sleepers", Duration::from_secs(5), || {
        dir.join("sleeper.hostpid").exists() && dir.join("plain.pid").exists()
    });
    drop((s, p));
    // The quick ones are zombies under us before we go (their state is Z): the init
    // inherits zombies, not processes that might still be running.
    wait_for("the quick children to exit", Duration::from_secs(5), || {
        quick.iter().all(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rfind(')')
                    .is_some_and(|i| stat[i + 2..].starts_with('Z'))
            })
        })
    });
    ExitCode::SUCCESS
}

/// A child's pid in the initial namespace: /proc/<pid>/status's NSpid lists it first
/// when /proc is the host's, as here (the namespace has no /proc of its own).
fn host_pid(pid_here: u32) -> i32 {
    // Our /proc is the host's, so find the process whose innermost NSpid is ours and
    // whose parent is us.
    let me_host = fs::read_link("/proc/self").unwrap();
    let me_host: i32 = me_host.to_string_lossy().parse().unwrap();
    for (p, pp, _) in processes() {
        if pp.as_raw() != me_host {
            continue;
        }
        let status = fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        let nspid = status
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .unwrap_or("");
        if nspid.split_whitespace().last() == Some(&pid_here.to_string()) {
            return p.as_raw();
        }
    }
    panic!("no host pid for {pid_here}")
}

/// Sleeps with every signal as the kernel's default: SIGTERM ends it, if it gets there
/// (it would not if the init's blocked mask had leaked into its children).
fn role_plain() -> ExitCode {
    // Its pid as the init sees it (both are in the same namespace).
    let tmp = dir().join("plain.pid.tmp");
    fs::write(&tmp, nix::unistd::getpid().to_string()).unwrap();
    fs::rename(tmp, dir().join("plain.pid")).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Ignores SIGTERM and sleeps: only the shutdown's SIGKILL ends it.
fn role_sleeper() -> ExitCode {
    // SAFETY: SIG_IGN installs no handler code; nothing else runs in this process yet.
    unsafe { nix::sys::signal::signal(Signal::SIGTERM, nix::sys::signal::SigHandler::SigIgn) }
        .unwrap();
    let me_host = fs::read_link("/proc/self").unwrap();
    // Whole or not at all: the driver polls for this file.
    let tmp = dir().join("sleeper.hostpid.tmp");
    fs::write(&tmp, me_host.to_string_lossy().as_bytes()).unwrap();
    fs::rename(tmp, dir().join("sleeper.hostpid")).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
