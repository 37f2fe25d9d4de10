//! The QEMU hypervisor against real QEMU (TCG here), booting the sample VM flist's
//! kernel and initrd (`cargo xtask flist vm` builds them; `cargo xtask test` does so
//! before the tests). Each test works in a `zt-` network namespace and cgroup of its
//! own, removed by a guard on success and failure.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use zos_vm::{
    Accel, AccelChoice, Boot, Disk, Hypervisor, Nic, Qemu, QemuConfig, TreeFile, VmSpec, VmState,
};

const BOOT_WAIT: Duration = Duration::from_secs(90);

fn sample_boot() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/flists/vm/rootfs/boot")
}

/// Fail loudly unless this can run; with `ZOS_SKIP_PRIVILEGED=1` print a SKIP line.
fn runnable(test: &str) -> bool {
    zos_testkit::Needs::root()
        .bin_from("qemu-system-x86_64", "qemu-system-x86")
        .file(
            sample_boot().join("vmlinux"),
            "the sample VM (cargo xtask flist vm)",
        )
        .check(test)
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A namespace with a tap (host side 10.77.0.1/24), a run dir and a cgroup parent, all
/// named `zt-vm<pid><tag>`; Drop removes VMs, cgroup parent and namespace.
struct Fixture {
    name: String,
    /// The cgroup parent, two levels as zosd's (`zos-vm/<node scope>`): `<name>/node`.
    parent: String,
    dir: tempfile::TempDir,
    qemu: Qemu,
}

impl Fixture {
    fn new(tag: &str) -> Fixture {
        let name = format!("zt-vm{}{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).status();
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        ip(&["-n", &name, "tuntap", "add", "dev", "t0", "mode", "tap"]);
        ip(&["-n", &name, "addr", "add", "10.77.0.1/24", "dev", "t0"]);
        ip(&["-n", &name, "link", "set", "t0", "up"]);
        let dir = zos_testkit::tempdir("vm");
        let mut cfg = QemuConfig::under(dir.path().join("vms"));
        cfg.accel = AccelChoice::Tcg;
        let parent = format!("{name}/node");
        cfg.cgroup_parent = parent.clone();
        cfg.stop_grace = Duration::from_millis(200);
        Fixture {
            qemu: Qemu::new(cfg).unwrap(),
            name,
            parent,
            dir,
        }
    }

    fn spec(&self, vm: &str) -> VmSpec {
        let boot = sample_boot();
        let disk = self.dir.path().join(format!("{vm}.raw"));
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        VmSpec {
            name: vm.into(),
            boot: Boot::Kernel {
                kernel: TreeFile::new(&boot, "vmlinux"),
                initrd: Some(TreeFile::new(&boot, "initrd.img")),
                cmdline: format!(
                    "console=ttyS0 quiet panic=-1 zos.name={vm} zos.ip=10.77.0.2/24 zos.gw=10.77.0.1 ECHO_PORT=7"
                ),
            },
            vcpus: 1,
            memory_mib: 128,
            disks: vec![Disk {
                file: TreeFile::of(&disk).unwrap(),
                read_only: false,
            }],
            nic: Some(Nic {
                tap: "t0".into(),
                mac: Nic::mac_for(vm),
            }),
            netns: Some(PathBuf::from(format!("/run/netns/{}", self.name))),
        }
    }

    fn wait_console(&self, vm: &str, needle: &str) -> Vec<String> {
        let start = Instant::now();
        loop {
            let lines = self.qemu.console_tail(vm, 50);
            if lines.iter().any(|l| l.contains(needle)) {
                return lines;
            }
            assert!(
                start.elapsed() < BOOT_WAIT,
                "no {needle:?} on the console: {lines:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// TCP echo through the tap, from inside the namespace.
    fn echo(&self, payload: &[u8]) -> std::io::Result<Vec<u8>> {
        let ns = std::fs::File::open(format!("/run/netns/{}", self.name))?;
        let payload = payload.to_vec();
        std::thread::spawn(move || {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            let addr: SocketAddr = "10.77.0.2:7".parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(&payload)?;
            let mut back = vec![0u8; payload.len()];
            s.read_exact(&mut back)?;
            Ok(back)
        })
        .join()
        .unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for vm in self.qemu.names() {
            let _ = self.qemu.remove(&vm);
        }
        zos_testkit::remove_cgroup(&self.parent);
        zos_testkit::remove_cgroup(&self.name);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// True if `pid` runs (a zombie waiting for whoever inherited it does not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_string())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

fn memory_limit(parent: &str, vm: &str) -> Option<u64> {
    for file in [
        format!("/sys/fs/cgroup/memory/{parent}/{vm}/memory.limit_in_bytes"),
        format!("/sys/fs/cgroup/{parent}/{vm}/memory.max"),
    ] {
        if let Ok(v) = std::fs::read_to_string(file) {
            return v.trim().parse().ok();
        }
    }
    None
}

#[test]
fn boots_answers_echo_survives_adoption_and_is_removed() {
    if !runnable("boots_answers_echo_survives_adoption_and_is_removed") {
        return;
    }
    let f = Fixture::new("a");
    let spec = f.spec("c1.vm");
    let started = f.qemu.start(&spec).unwrap();
    assert_eq!(started.accel, Accel::Tcg);
    f.wait_console("c1.vm", "vm-echo: c1.vm eth0 10.77.0.2/24 up");
    f.wait_console("c1.vm", "vm-echo: disk vda 16 MiB");
    assert_eq!(f.qemu.qmp_status("c1.vm").unwrap(), "running");
    assert_eq!(
        f.echo(b"ping through the tap").unwrap(),
        b"ping through the tap"
    );
    // Its cgroup holds guest memory plus QEMU's overhead.
    assert_eq!(memory_limit(&f.parent, "c1.vm"), Some((128 + 256) << 20));
    // Where the hypervisor says it is (what zosd's metrics read).
    assert_eq!(
        f.qemu.cgroup_path("c1.vm"),
        Some(PathBuf::from(format!("/{}/c1.vm", f.parent)))
    );

    // A second start (a zosd that restarted) finds it: same process, not two.
    let again = Qemu::new(f.qemu.config().clone()).unwrap();
    assert_eq!(again.start(&spec).unwrap().pid, started.pid);
    assert_eq!(
        again.state("c1.vm").unwrap(),
        Some(VmState::Running { pid: started.pid })
    );

    f.qemu.remove("c1.vm").unwrap();
    assert_eq!(f.qemu.state("c1.vm").unwrap(), None);
    assert!(!alive(started.pid), "QEMU {} still runs", started.pid);
    assert_eq!(memory_limit(&f.parent, "c1.vm"), None, "cgroup removed");
}

#[test]
fn a_killed_qemu_is_stopped_and_starts_again() {
    if !runnable("a_killed_qemu_is_stopped_and_starts_again") {
        return;
    }
    let f = Fixture::new("k");
    let spec = f.spec("k1.vm");
    let first = f.qemu.start(&spec).unwrap();
    f.wait_console("k1.vm", "echo on port 7");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first.pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let start = Instant::now();
    while f.qemu.state("k1.vm").unwrap() != Some(VmState::Stopped) {
        assert!(start.elapsed() < Duration::from_secs(10), "still running");
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = f.qemu.start(&spec).unwrap();
    assert_ne!(second.pid, first.pid);
    // The console keeps the first boot's lines and gets the second's.
    let start = Instant::now();
    loop {
        let lines = f.qemu.console_tail("k1.vm", 100);
        let boots = lines
            .iter()
            .filter(|l| l.contains("echo on port 7"))
            .count();
        if boots == 2 {
            break;
        }
        assert!(
            start.elapsed() < BOOT_WAIT,
            "second boot not seen: {lines:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(f.echo(b"again").unwrap(), b"again");
}

#[test]
fn refusals_start_nothing() {
    if !runnable("refusals_start_nothing") {
        return;
    }
    let f = Fixture::new("r");
    let mut spec = f.spec("r1.vm");
    spec.memory_mib = 4;
    let e = f.qemu.start(&spec).unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("memory"), "{e}");
    assert!(
        f.qemu.names().is_empty(),
        "nothing written for a refused spec"
    );

    // A kernel QEMU cannot load: its own message, and no process left.
    let mut spec = f.spec("r2.vm");
    let bogus = f.dir.path().join("not-a-kernel");
    std::fs::write(&bogus, b"garbage").unwrap();
    spec.boot = Boot::Kernel {
        kernel: TreeFile::of(&bogus).unwrap(),
        initrd: None,
        cmdline: "console=ttyS0".into(),
    };
    let e = f.qemu.start(&spec).unwrap_err();
    assert!(matches!(e, zos_vm::Error::Start { .. }), "{e}");
    assert_eq!(f.qemu.state("r2.vm").unwrap(), Some(VmState::Stopped));

    // A kernel or a disk that is a link to a host file: refused, nothing written.
    let secret = f.dir.path().join("zt-secret");
    std::fs::write(&secret, b"host secret").unwrap();
    let linked = f.dir.path().join("linked");
    std::os::unix::fs::symlink(&secret, &linked).unwrap();
    let mut spec = f.spec("r3.vm");
    spec.boot = Boot::Kernel {
        kernel: TreeFile::of(&linked).unwrap(),
        initrd: None,
        cmdline: "console=ttyS0".into(),
    };
    let e = f.qemu.start(&spec).unwrap_err();
    assert!(
        e.is_permanent() && e.to_string().contains("symbolic link"),
        "{e}"
    );
    let mut spec = f.spec("r4.vm");
    spec.disks[0].file = TreeFile::of(&linked).unwrap();
    let e = f.qemu.start(&spec).unwrap_err();
    assert!(
        e.is_permanent() && e.to_string().contains("symbolic link"),
        "{e}"
    );
    assert_eq!(f.qemu.state("r3.vm").unwrap(), None, "nothing of r3.vm");
    assert_eq!(f.qemu.state("r4.vm").unwrap(), None, "nothing of r4.vm");
    assert_eq!(std::fs::read(&secret).unwrap(), b"host secret");
}

/// The accelerator probe boots a real kernel under KVM: on this project's development
/// machines /dev/kvm is a PVM flavour and the answer is TCG, with the reason; on a
/// host with working KVM, a VM started under the probe's answer boots.
#[test]
fn the_kvm_probe_answers_with_a_reason() {
    if !runnable("the_kvm_probe_answers_with_a_reason") {
        return;
    }
    let probe = zos_vm::accel::probe(
        Path::new("qemu-system-x86_64"),
        &sample_boot().join("vmlinux"),
        Duration::from_secs(10),
    );
    println!("probe: {} ({})", probe.accel, probe.reason);
    assert!(!probe.reason.is_empty());
    if probe.accel == Accel::Kvm {
        assert!(probe.reason.contains("booted under KVM"));
    } else {
        assert!(
            probe.reason.contains("/dev/kvm")
                || probe.reason.contains("did not finish starting")
                || probe.reason.contains("before its kernel finished starting"),
            "{}",
            probe.reason
        );
    }
}

/// A KVM that shows the kernel's banner and then stops (this machine's PVM flavour
/// did exactly that, after up to 10 s) is not a KVM that runs VMs: the probe waits
/// for the kernel to finish starting. Two stand-in QEMUs print a console: one stops
/// after the banner, the other goes on to the no-root panic.
#[test]
fn the_kvm_probe_wants_a_finished_start_not_a_banner() {
    let test = "the_kvm_probe_wants_a_finished_start_not_a_banner";
    if !zos_testkit::Needs::root().dev("/dev/kvm").check(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fake = |name: &str, console: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("#!/bin/sh\nprintf '{console}'\nexec sleep 30\n"),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        path
    };
    let banner = "[    0.000000] Linux version 6.1.0 (fake)\\n";
    let stalls = fake("stalls", banner);
    let finishes = fake(
        "finishes",
        &format!("{banner}[    0.9] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\\n"),
    );
    let kernel = dir.path().join("vmlinux");
    std::fs::write(&kernel, b"").unwrap();

    let stalled = zos_vm::accel::probe(&stalls, &kernel, Duration::from_secs(2));
    assert_eq!(stalled.accel, Accel::Tcg, "{}", stalled.reason);
    assert!(
        stalled
            .reason
            .contains("did not finish starting its kernel under KVM within 2s"),
        "{}",
        stalled.reason
    );
    let finished = zos_vm::accel::probe(&finishes, &kernel, Duration::from_secs(10));
    assert_eq!(finished.accel, Accel::Kvm, "{}", finished.reason);
    assert!(
        finished.reason.contains("booted under KVM"),
        "{}",
        finished.reason
    );
}

/// With `accel = auto` the probe boots the VM's own kernel under KVM in a QEMU confined
/// as the VM's (its uid, mount view, seccomp): it reaches KVM (here a PVM flavour that
/// aborts, or a real KVM that boots), not a confinement error; the VM then runs.
#[test]
fn the_confined_probe_reaches_kvm_and_the_vm_runs() {
    if !runnable("the_confined_probe_reaches_kvm_and_the_vm_runs") {
        return;
    }
    let f = Fixture::new("p");
    let mut cfg = f.qemu.config().clone();
    cfg.accel = AccelChoice::Auto;
    cfg.root = f.dir.path().join("auto");
    let qemu = Qemu::new(cfg).unwrap();
    let spec = f.spec("p1.vm");
    let started = qemu.start(&spec);
    let probe = qemu.probe().expect("a probe ran");
    println!("probe: {} ({})", probe.accel, probe.reason);
    let _ = qemu.remove("p1.vm");
    let started = started.unwrap();
    assert_eq!(started.accel, probe.accel);
    assert!(
        probe.reason.contains("booted under KVM")
            || probe.reason.contains("finish")
            || probe.reason.starts_with("/dev/kvm"),
        "{}",
        probe.reason
    );
}

/// The hypervisor bundle (the release part `qemu`), collected from this host's QEMU,
/// runs the sample VM: QEMU is the bundle's loader running the bundle's binary, every
/// shared object it maps is the bundle's (none of the host's), and the guest answers.
/// With `accel = auto`, the probe runs through the bundle too, confined.
#[test]
fn the_sample_vm_boots_from_a_hypervisor_bundle_with_none_of_the_hosts_libraries() {
    let test = "the_sample_vm_boots_from_a_hypervisor_bundle_with_none_of_the_hosts_libraries";
    if !runnable(test) {
        return;
    }
    let mut f = Fixture::new("b");
    let host_qemu = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .expect("runnable found it");
    let bundle = zos_release::hypervisor::collect(&host_qemu, &f.dir.path().join("qemu")).unwrap();
    println!(
        "bundle: {} files, {} bytes",
        bundle.files.len(),
        bundle.bytes()
    );
    let dir = bundle.dir.canonicalize().unwrap();
    let mut cfg = f.qemu.config().clone();
    cfg.accel = AccelChoice::Auto;
    cfg.binary = PathBuf::from("/nonexistent/qemu-system-x86_64");
    cfg.bundle = Some(dir.clone());
    f.qemu = Qemu::new(cfg).unwrap();

    let spec = f.spec("b1.vm");
    let begun = Instant::now();
    let started = f.qemu.start(&spec).unwrap();
    let probe = f.qemu.probe().expect("a probe ran");
    println!("probe: {} ({})", probe.accel, probe.reason);
    assert!(
        probe.reason.contains("booted under KVM")
            || probe.reason.contains("finish")
            || probe.reason.starts_with("/dev/kvm"),
        "the probe did not reach KVM through the bundle: {}",
        probe.reason
    );
    f.wait_console("b1.vm", "vm-echo: b1.vm eth0 10.77.0.2/24 up");
    println!(
        "{test}: the guest's line after {:.1} s",
        begun.elapsed().as_secs_f64()
    );
    assert_eq!(
        f.echo(b"through the bundle").unwrap(),
        b"through the bundle"
    );

    // The process is the bundle's loader, running the bundle's QEMU with its firmware.
    let pid = started.pid;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, dir.join("lib/ld-linux-x86-64.so.2"));
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let qemu = dir.join("bin/qemu-system-x86_64").display().to_string();
    let firmware = dir.join("share/qemu").display().to_string();
    // The kernel keeps the command line as exec'd: the loader, its options, QEMU.
    let loader = dir.join("lib/ld-linux-x86-64.so.2").display().to_string();
    let lib = dir.join("lib").display().to_string();
    assert_eq!(args[0], loader, "{args:?}");
    assert_eq!(args[1..3], ["--library-path", &lib], "{args:?}");
    assert!(args.contains(&qemu), "{args:?}");
    assert!(
        args.windows(2).any(|w| w[0] == "-L" && w[1] == firmware),
        "{args:?}"
    );
    // Every shared object mapped (libraries, the loader, the TCG module) is the bundle's.
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let objects: std::collections::BTreeSet<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains(".so"))
        .collect();
    assert!(objects.len() > 40, "{objects:#?}");
    let outside: Vec<_> = objects
        .iter()
        .filter(|p| !Path::new(p).starts_with(&dir))
        .collect();
    assert!(outside.is_empty(), "host objects mapped: {outside:#?}");
    assert!(
        objects
            .iter()
            .any(|p| p.ends_with("lib/qemu/accel-tcg-x86_64.so")),
        "{objects:#?}"
    );

    f.qemu.remove("b1.vm").unwrap();
    assert_eq!(f.qemu.state("b1.vm").unwrap(), None);
    assert!(!alive(pid), "QEMU {pid} still runs");
}

/// A booted node (no system QEMU: `binary` does not exist) with the release's `qemu`
/// part as `bundle_from`. ATTACK first: a library block of the part swapped in the
/// store; the VM's start is refused `tampered_part` and nothing is written (no bundle
/// slot, no run directory, no QEMU). Then, the store repaired, the first start fetches
/// and verifies the bundle into `<dir>/<sha256>` and the guest boots from it.
#[test]
fn the_first_vm_fetches_the_hypervisor_bundle_and_a_tampered_one_starts_nothing() {
    let test = "the_first_vm_fetches_the_hypervisor_bundle_and_a_tampered_one_starts_nothing";
    if !runnable(test) {
        return;
    }
    let mut f = Fixture::new("f");
    let host_qemu = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
        .expect("runnable found it");
    let root = f.dir.path().canonicalize().unwrap();
    let publish = root.join("release");
    let bundle = zos_release::hypervisor::collect(&host_qemu, &publish.join("tree")).unwrap();
    let fl = publish.join("qemu.fl");
    let store = format!("dir://{}", publish.join("store").display());
    zos_flist::pack(
        &bundle.dir,
        &fl,
        &zos_flist::Router::parse(std::slice::from_ref(&store)).unwrap(),
        &zos_flist::PackOptions::default(),
    )
    .unwrap();
    let key = zos_contract::SecretKey::generate().unwrap();
    zos_flist::sign_file(&fl, &key).unwrap();
    let part = zos_contract::deployment::FlistRef {
        url: format!("dir://{}", fl.display()),
        sha256: zos_contract::Digest::of(&std::fs::read(&fl).unwrap()),
        stores: vec![store],
        publishers: vec![key.public()],
    };
    let hv = root.join("hypervisor");
    let mut cfg = f.qemu.config().clone();
    cfg.binary = PathBuf::from("/nonexistent/qemu-system-x86_64");
    cfg.bundle_from = Some(zos_vm::BundleSource {
        part: part.clone(),
        access: zos_flist::DirAccess::under([&publish]),
        dir: hv.clone(),
        max_bytes: 1 << 30,
    });
    f.qemu = Qemu::new(cfg).unwrap();

    // The attack: libc's first block replaced by libz's in the store.
    let block = |path: &str| {
        let flist = zos_flist::Flist::open(&fl).unwrap();
        let id = flist.entries[flist.lookup(path).unwrap()].blocks[0].id_hex();
        publish.join("store").join(&id[..2]).join(&id)
    };
    let libc = block("lib/libc.so.6");
    let good = std::fs::read(&libc).unwrap();
    std::fs::write(&libc, std::fs::read(block("lib/libz.so.1")).unwrap()).unwrap();
    let spec = f.spec("f1.vm");
    let e = f.qemu.start(&spec).unwrap_err();
    eprintln!("{test}: {e}");
    match &e {
        zos_vm::Error::Hypervisor(p) => assert_eq!(p.code(), "tampered_part", "{e}"),
        other => panic!("not a hypervisor refusal: {other}"),
    }
    assert!(e.to_string().contains("libc.so.6"), "{e}");
    assert!(
        !e.is_permanent(),
        "the node's problem, not the contract's: {e}"
    );
    let left: Vec<_> = std::fs::read_dir(&hv)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the bundle dir: {left:?}");
    assert!(f.qemu.names().is_empty(), "a run directory was made");
    assert_eq!(f.qemu.state("f1.vm").unwrap(), None);

    // Repaired: the first start fetches the bundle, and the guest boots from it.
    std::fs::write(&libc, good).unwrap();
    let begun = Instant::now();
    let started = f.qemu.start(&spec).unwrap();
    f.wait_console("f1.vm", "vm-echo: f1.vm eth0 10.77.0.2/24 up");
    println!(
        "{test}: fetched, verified and booted in {:.1} s",
        begun.elapsed().as_secs_f64()
    );
    let slot = hv.join(part.sha256.to_hex());
    let exe = std::fs::read_link(format!("/proc/{}/exe", started.pid)).unwrap();
    assert_eq!(exe, slot.join("lib/ld-linux-x86-64.so.2"));
    assert_eq!(
        std::fs::read(slot.join("lib/libc.so.6")).unwrap(),
        std::fs::read(bundle.dir.join("lib/libc.so.6")).unwrap()
    );
    f.qemu.remove("f1.vm").unwrap();
    assert!(!alive(started.pid), "QEMU {} still runs", started.pid);
}
