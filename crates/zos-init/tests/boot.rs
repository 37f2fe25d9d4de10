//! A real boot: this test binary is `/init` of an initramfs booted by the Debian kernel
//! under QEMU (TCG), so zos-init's code runs as the machine's PID 1 with nothing faked:
//! real mounts, real `finit_module`s from the kernel package's modules.dep, cgroup2
//! controllers, ctrl-alt-del disabled, a supervised agent that crashes and is
//! restarted, orphans reaped, then SIGTERM to PID 1, the orderly shutdown with real
//! unmounts, and `reboot(RB_POWER_OFF)`, which ends QEMU.
//!
//! Needs `qemu-system-x86_64` and the Debian kernel that `cargo xtask` caches under
//! `target/kernel/` (e.g. by `cargo xtask flist vm`); without them it prints a counted
//! `SKIP:` line. The binary is dynamically linked: its loader and libraries go into the
//! initramfs beside it (found with `ld.so --list`, no shell).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use zos_init::modules::{self, ModulesDep, Wanted};
use zos_init::{mounts, BootParams, Init, Linux, RespawnBackoff, ShutdownPlan, Sys};

const NAME: &str = "boots_as_pid1_under_qemu";
const ROLE: &str = "ZOS_BOOT_TEST_ROLE";
/// What a node's image carries (dependencies come from modules.dep).
const MODULES: [&str; 8] = [
    "virtio_mmio",
    "virtio_net",
    "virtio_blk",
    "btrfs",
    "overlay",
    "fuse",
    "9p",
    "9pnet_virtio",
];
const TIMEOUT: Duration = Duration::from_secs(240);

fn main() -> ExitCode {
    if nix::unistd::getpid().as_raw() == 1 {
        guest_init()
    }
    match std::env::var(ROLE).as_deref() {
        Ok("agent") => guest_agent(),
        Ok("orphans") => guest_orphans(),
        Ok("exit") => ExitCode::SUCCESS,
        _ => host(),
    }
}

/// One line on the console, for the host to find.
macro_rules! say {
    ($($t:tt)*) => {{
        println!("ZOSBOOT {}", format!($($t)*));
        let _ = std::io::stdout().flush();
    }};
}

// ---------------------------------------------------------------------------------
// In the guest.

fn guest_init() -> ! {
    zos_init::block_init_signals().unwrap();
    let sys = Linux;
    let mounted = mounts::mount_all(&sys);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("debug")
        .with_ansi(false)
        .init();
    match mounted {
        Ok(m) => say!("mounts {m:?}"),
        Err(e) => say!("mounts failed: {e}"),
    }
    let (p, w) = BootParams::parse(&sys.read_file(Path::new("/proc/cmdline")).unwrap());
    say!(
        "params farm={:?} notary={:?} runmode={} debug={} warnings={}",
        p.farm,
        p.notary,
        p.runmode,
        p.debug,
        w.len()
    );
    say!("ctrl-alt-del {:?}", sys.disable_ctrl_alt_del());
    let (enabled, refused) = mounts::enable_cgroup_controllers(&sys);
    say!(
        "cgroup controllers {} refused {}",
        enabled.join(","),
        refused.len()
    );
    match modules::load(
        &sys,
        &modules::kernel_modules_dir(),
        Wanted::Names(&MODULES),
    ) {
        Ok(r) => {
            say!(
                "modules loaded {} present {} failed {}",
                r.loaded.len(),
                r.present.len(),
                r.failed.len()
            );
            for e in &r.failed {
                say!("module error {e}");
            }
            say!("modules not applicable {:?}", r.not_applicable);
        }
        Err(e) => say!("modules failed: {e}"),
    }
    for m in MODULES {
        if Path::new("/sys/module").join(m).exists() {
            say!("module {m} live");
        }
    }
    let agent = Box::new(|| {
        let mut c = Command::new("/init");
        c.env(ROLE, "agent");
        c
    });
    let backoff = RespawnBackoff::new(
        Duration::from_millis(200),
        Duration::from_secs(1),
        Duration::from_secs(60),
    );
    let plan = ShutdownPlan {
        agent_grace: Duration::from_secs(10),
        others_grace: Duration::from_secs(2),
        kill_grace: Duration::from_secs(2),
    };
    let mut init = Init::new(sys, agent, backoff, plan);
    let report = init.run();
    // Only if the power-off call failed.
    say!("reboot failed: {:?}", report.reboot_error);
    init.halt()
}

fn guest_agent() -> ExitCode {
    let starts = Path::new("/run/agent.starts");
    let n = fs::read_to_string(starts).map(|s| s.len()).unwrap_or(0) + 1;
    fs::write(starts, "x".repeat(n)).unwrap();
    let blocked = fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("SigBlk:"))
        .map(|l| l[7..].trim().to_string())
        .unwrap_or_default();
    say!("agent start {n} sigblk {blocked}");
    if n == 1 {
        // A crash: PID 1 starts it again.
        std::process::exit(3);
    }
    assert!(Command::new("/init")
        .env(ROLE, "orphans")
        .status()
        .unwrap()
        .success());
    // The positive event: every orphan's /proc entry is gone, which happens only when
    // its parent (PID 1, once the orphans' parent exited) has reaped it. Bounded: a
    // PID 1 that does not reap leaves them as zombies and the host sees fewer reaped.
    let pids: Vec<String> = fs::read_to_string("/run/orphans.pids")
        .unwrap()
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let alive = || {
        pids.iter()
            .filter(|p| Path::new("/proc").join(p).exists())
            .count()
    };
    while alive() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    say!("orphans reaped {} of {}", pids.len() - alive(), pids.len());
    let zombies = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            stat.rfind(')')
                .is_some_and(|i| stat[i + 2..].starts_with('Z'))
        })
        .count();
    say!("zombies {zombies}");
    // The operator's power-off: PID 1 takes it from here and ends this agent too.
    kill(Pid::from_raw(1), Signal::SIGTERM).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

#[allow(clippy::zombie_processes)] // Orphans for PID 1 to reap are the point.
fn guest_orphans() -> ExitCode {
    let pids: Vec<String> = (0..5)
        .map(|_| {
            let child = Command::new("/init").env(ROLE, "exit").spawn().unwrap();
            child.id().to_string()
        })
        .collect();
    // Written before this process exits (its children then become PID 1's).
    fs::write("/run/orphans.pids.tmp", pids.join(" ")).unwrap();
    fs::rename("/run/orphans.pids.tmp", "/run/orphans.pids").unwrap();
    ExitCode::SUCCESS
}

// ---------------------------------------------------------------------------------
// On the host.

fn host() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        println!("{NAME}: test");
        return ExitCode::SUCCESS;
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        println!("\ntest result: ok. 0 passed; 0 failed; 0 skipped (filtered out)");
        return ExitCode::SUCCESS;
    }
    let (kernel, release) = match find_kernel() {
        Ok(k) => k,
        Err(why) => {
            // On the real stderr, one line: `cargo xtask test` counts it.
            zos_testkit::skip_line(NAME, &why.to_string());
            println!("\ntest result: ok. 0 passed; 0 failed; 1 skipped");
            return ExitCode::SUCCESS;
        }
    };
    print!("test {NAME} ... ");
    let _ = std::io::stdout().flush();
    let ok = std::panic::catch_unwind(|| boot(&kernel, &release)).is_ok();
    println!("{}", if ok { "ok" } else { "FAILED" });
    println!(
        "\ntest result: {}. {} passed; {} failed; 0 skipped",
        if ok { "ok" } else { "FAILED" },
        ok as u8,
        !ok as u8
    );
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `target/kernel/<package>/` as `cargo xtask` leaves it: (that dir, `uname -r`).
fn find_kernel() -> Result<(PathBuf, String), String> {
    if !Path::new("/usr/bin/qemu-system-x86_64").exists() {
        return Err("no /usr/bin/qemu-system-x86_64 (apt-get install qemu-system-x86)".into());
    }
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("../kernel");
    let dir = fs::read_dir(&root)
        .map_err(|_| {
            format!(
                "no Debian kernel under {} (run `cargo xtask flist vm` once)",
                root.display()
            )
        })?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("ready").exists() && p.join("vmlinux").exists())
        .ok_or_else(|| format!("no prepared kernel under {}", root.display()))?;
    let release = fs::read_to_string(dir.join("ready"))
        .unwrap()
        .trim()
        .to_string();
    Ok((dir, release))
}

fn boot(kernel: &Path, release: &str) {
    let work = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("zos-init-boot-{}", std::process::id()));
    fs::create_dir_all(&work).unwrap();
    let initrd = work.join("initrd.cpio");
    let console = work.join("console.log");
    make_initrd(&initrd, kernel, release);

    let mut qemu = Command::new("/usr/bin/qemu-system-x86_64")
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args([
            "-M",
            "microvm,acpi=on",
            "-accel",
            "tcg,tb-size=64",
            "-m",
            "512",
            "-smp",
            "1",
        ])
        .arg("-kernel")
        .arg(kernel.join("vmlinux"))
        .arg("-initrd")
        .arg(&initrd)
        .args([
            "-append",
            "console=ttyS0 tsc_early_khz=2000000 panic=-1 zos.farm=7 zos.runmode=test zos.debug",
        ])
        .args([
            "-chardev",
            &format!("file,id=console,path={}", console.display()),
        ])
        .args(["-serial", "chardev:console"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let qemu_pid = Pid::from_raw(qemu.id() as i32);
    let started = Instant::now();
    // The kernel's last words on a power-off; QEMU exits then (ACPI on microvm).
    let exited = loop {
        if let Some(status) = qemu.try_wait().unwrap() {
            break Some(status);
        }
        let text = fs::read_to_string(&console).unwrap_or_default();
        if text.contains("reboot: Power down") {
            // QEMU exits by itself after the power-off: wait for that exit, bounded.
            let grace = Instant::now() + Duration::from_secs(30);
            break loop {
                if let Some(status) = qemu.try_wait().unwrap() {
                    break Some(status);
                }
                if Instant::now() > grace {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
        }
        if started.elapsed() > TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if exited.is_none() {
        let _ = kill(qemu_pid, Signal::SIGKILL);
        let _ = qemu.wait();
    }
    let text = fs::read_to_string(&console).unwrap_or_default();
    let check = |what: &str| {
        assert!(text.contains(what), "no {what:?} on the console:\n{text}");
    };
    check("ZOSBOOT mounts [Mounted(\"/proc\"), Mounted(\"/sys\"), Mounted(\"/dev\"), Mounted(\"/dev/pts\"), Mounted(\"/dev/shm\"), Mounted(\"/run\"), Mounted(\"/sys/fs/cgroup\")]");
    check("ZOSBOOT params farm=Some(\"7\") notary=None runmode=test debug=true warnings=0");
    check("ZOSBOOT ctrl-alt-del Ok(())");
    assert!(
        text.lines()
            .any(|l| l.starts_with("ZOSBOOT cgroup controllers")
                && l.contains("memory")
                && l.contains("pids")),
        "cgroup controllers:\n{text}"
    );
    check("failed 0");
    for m in MODULES {
        // virtio_blk and friends may be built in on other kernels; this one has modules.
        check(&format!("ZOSBOOT module {m} live"));
    }
    check("ZOSBOOT agent start 1 sigblk 0000000000000000");
    check("ZOSBOOT agent start 2 sigblk 0000000000000000");
    check("ZOSBOOT orphans reaped 5 of 5");
    check("ZOSBOOT zombies 0");
    check("orderly shutdown");
    check("reboot: Power down");
    assert!(!text.contains("Kernel panic"), "{text}");
    assert!(!text.contains("ZOSBOOT reboot failed"), "{text}");
    let status = exited.unwrap_or_else(|| panic!("QEMU did not exit after the power-off:\n{text}"));
    assert!(status.success(), "QEMU: {status}\n{text}");
    eprintln!(
        "(booted, ran and powered off in {:.1} s under TCG)",
        started.elapsed().as_secs_f64()
    );
    if std::env::var_os("ZOS_INIT_TEST_KEEP").is_none() {
        let _ = fs::remove_dir_all(&work);
    }
}

/// The initramfs: this binary as /init, its loader and libraries, /dev/console, and the
/// modules MODULES need with modules.dep and modules.builtin.
fn make_initrd(out: &Path, kernel: &Path, release: &str) {
    let mut cpio = Cpio::default();
    for d in ["dev", "proc", "sys", "run"] {
        cpio.dir(d);
    }
    // The kernel opens it as init's stdin, stdout and stderr.
    cpio.node("dev/console", libc::S_IFCHR | 0o600, (5, 1));
    let exe = std::env::current_exe().unwrap();
    cpio.file("init", 0o755, &fs::read(&exe).unwrap());
    let list = Command::new("/lib64/ld-linux-x86-64.so.2")
        .arg("--list")
        .arg(&exe)
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&list.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux... (0x...)"
        let path = line
            .split("=>")
            .last()
            .unwrap()
            .trim()
            .split(' ')
            .next()
            .unwrap();
        if path.starts_with('/') {
            cpio.file_at(path, 0o755, &fs::read(path).unwrap());
        }
    }
    let mods = kernel.join("tree/lib/modules").join(release);
    let dep = fs::read_to_string(mods.join("modules.dep")).unwrap();
    let builtin = fs::read_to_string(mods.join("modules.builtin")).unwrap_or_default();
    let softdep = fs::read_to_string(mods.join("modules.softdep")).unwrap_or_default();
    let alias = fs::read_to_string(mods.join("modules.alias")).unwrap_or_default();
    let mut parsed = ModulesDep::parse(&dep, &builtin).unwrap();
    parsed.add_softdeps(&softdep, &alias);
    let (order, errors) = parsed.load_order(Wanted::Names(&MODULES));
    assert!(errors.is_empty(), "{errors:?}");
    let base = format!("lib/modules/{release}");
    cpio.file_at(&format!("{base}/modules.dep"), 0o644, dep.as_bytes());
    cpio.file_at(
        &format!("{base}/modules.builtin"),
        0o644,
        builtin.as_bytes(),
    );
    cpio.file_at(
        &format!("{base}/modules.softdep"),
        0o644,
        softdep.as_bytes(),
    );
    cpio.file_at(&format!("{base}/modules.alias"), 0o644, alias.as_bytes());
    for m in order {
        cpio.file_at(
            &format!("{base}/{}", m.path.display()),
            0o644,
            &fs::read(mods.join(&m.path)).unwrap(),
        );
    }
    fs::write(out, cpio.finish()).unwrap();
}

/// A minimal `newc` cpio writer (what the kernel unpacks an initramfs from).
#[derive(Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
    dirs: Vec<String>,
}

impl Cpio {
    fn dir(&mut self, name: &str) {
        if !self.dirs.iter().any(|d| d == name) {
            self.dirs.push(name.to_string());
            self.entry(name, libc::S_IFDIR | 0o755, (0, 0), &[]);
        }
    }
    /// A file, with every parent directory first (the kernel does not create them).
    fn file_at(&mut self, path: &str, mode: u32, data: &[u8]) {
        let path = path.trim_start_matches('/');
        let mut parent = String::new();
        for part in path.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.dir(&parent.clone());
        }
        self.file(path, mode, data);
    }
    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, libc::S_IFREG | mode, (0, 0), data);
    }
    fn node(&mut self, name: &str, mode: u32, rdev: (u32, u32)) {
        self.entry(name, mode, rdev, &[]);
    }
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.out
    }
}
