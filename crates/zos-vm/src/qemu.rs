//! The QEMU implementation of [`Hypervisor`].
//!
//! Each VM has a run directory `<root>/<name>/` holding its QMP socket, pidfile,
//! console log, the spec it was started with and the accelerator it got. QEMU runs
//! daemonized (`-daemonize`): it outlives zosd, and a zosd that starts again finds it by
//! its pidfile, checks that the process is that VM's QEMU (its command line names the
//! pidfile), and never starts it twice. QEMU starts paused (`-S`), is moved into its
//! cgroup, then resumed over QMP, so the guest never runs outside its limits.
//!
//! QEMU is confined (the private `confine` module): it runs as a uid and gid of its own (one per
//! VM, from [`QemuConfig::uid_base`]), under its seccomp filter (`-sandbox`), in a
//! mount view that holds only `/usr`, a few devices and its run directory, and in a
//! device cgroup that denies every block device. It opens none of the VM's files by
//! itself: zosd opens the disks beneath their trees (no links) and passes the
//! descriptors (`-add-fd`, `/dev/fdset/N`), as it does the tap and the QMP listener;
//! the kernel and initrd are copied from their verified descriptors into the run
//! directory, which QEMU can read but not change.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::accel::{self, Accel, AccelChoice};
use crate::beneath::{self, Access};
use crate::cgroup::{self, Limits};
use crate::confine::{self, Confinement};
use crate::console;
use crate::error::{Error, Result};
use crate::program::Invocation;
use crate::qmp::Qmp;
use crate::spec::{valid_name, Boot, VmSpec};
use crate::{Hypervisor, Started, VmState};

/// How long QMP may take to answer one command.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how [`Qemu`] runs VMs; [`QemuConfig::under`] gives the defaults.
#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// Run directories live under it.
    pub root: PathBuf,
    /// The system's `qemu-system-x86_64` (searched in `PATH` when it has no `/`); not
    /// used when [`QemuConfig::bundle`] is set.
    pub binary: PathBuf,
    /// A hypervisor bundle (the release part `qemu`, see `zos_release::hypervisor`):
    /// QEMU runs from it through its own loader, with its own libraries, modules and
    /// firmware, and `binary` is not used. `None`: the system's QEMU.
    pub bundle: Option<PathBuf>,
    /// When `bundle` is `None`: the release part the bundle is fetched from before the
    /// first VM starts (a booted node, whose image holds no QEMU). `None`: `binary`.
    pub bundle_from: Option<crate::program::BundleSource>,
    /// KVM, TCG, or probe once per host boot.
    pub accel: AccelChoice,
    /// How long a KVM probe's kernel may take to finish starting.
    pub probe_timeout: Duration,
    /// The console log is cut back to half when it grows past this many bytes.
    pub console_limit: u64,
    /// Memory QEMU itself may use beyond the guest's, in the cgroup limit.
    pub overhead_mib: u64,
    /// The cgroup parent of every VM's cgroup.
    pub cgroup_parent: String,
    /// How long a guest has to power off after an ACPI power-button press.
    pub stop_grace: Duration,
    /// Each VM's QEMU runs as its own uid (and gid) `uid_base + n`, n below
    /// `uid_count`, kept in its run directory for its life: two QEMUs never share a
    /// uid, so one cannot signal or trace another.
    pub uid_base: u32,
    /// How many uids from `uid_base` VMs may take: the most VMs at once.
    pub uid_count: u32,
}

/// The seccomp filter QEMU installs on itself. `spawn=deny` and
/// `elevateprivileges=deny` would end QEMU 7.2 at `-daemonize` (its fork and setsid
/// come after the filter); QEMU runs unprivileged from exec instead.
pub const SANDBOX: &str = "on,obsolete=deny,resourcecontrol=deny";

impl QemuConfig {
    /// Defaults with run directories under `root`: `qemu-system-x86_64` from PATH,
    /// no bundle, probed accelerator, 1 MiB console log, 256 MiB overhead, cgroup parent
    /// `zos-vm`, 3 s to power off, uids from 400000.
    pub fn under(root: impl Into<PathBuf>) -> QemuConfig {
        QemuConfig {
            root: root.into(),
            binary: PathBuf::from("qemu-system-x86_64"),
            bundle: None,
            bundle_from: None,
            accel: AccelChoice::Auto,
            probe_timeout: Duration::from_secs(10),
            console_limit: 1 << 20,
            overhead_mib: 256,
            cgroup_parent: "zos-vm".into(),
            stop_grace: Duration::from_secs(3),
            uid_base: 400_000,
            uid_count: 65_536,
        }
    }
}

/// The [`Hypervisor`] on QEMU: one confined, daemonized QEMU process per VM, each
/// with a run directory under [`QemuConfig::root`] by which it is found again.
pub struct Qemu {
    cfg: QemuConfig,
    /// The accelerator once decided (probing boots a VM: once per host boot).
    accel: Mutex<Option<Accel>>,
    /// Held while a VM's uid is chosen.
    uids: Mutex<()>,
    /// The probe this process ran, if it ran one.
    probed: Mutex<Option<accel::Probe>>,
    /// Held while the bundle is fetched (two VMs starting fetch it once).
    fetching: Mutex<()>,
}

/// The files of one VM.
struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    fn console(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    fn spec(&self) -> PathBuf {
        self.dir.join("spec.json")
    }
    fn accel(&self) -> PathBuf {
        self.dir.join("accel")
    }
    /// The kernel and initrd, copied from the verified files.
    fn kernel(&self) -> PathBuf {
        self.dir.join("kernel")
    }
    fn initrd(&self) -> PathBuf {
        self.dir.join("initrd")
    }
    /// The VM's uid (a number, written by zosd).
    fn uid(&self) -> PathBuf {
        self.dir.join("uid")
    }
    /// An empty directory: the mount point of QEMU's view, in its namespace only.
    fn view(&self) -> PathBuf {
        self.dir.join("view")
    }
}

/// The descriptors QEMU gets.
struct Fds {
    qmp: RawFd,
    tap: Option<RawFd>,
    disks: Vec<RawFd>,
}

impl Qemu {
    /// Creates the root directory (mode 0700); the accelerator is taken from the
    /// configuration, or from an earlier probe of this host boot, or probed later by
    /// the first kernel-boot VM.
    pub fn new(cfg: QemuConfig) -> Result<Qemu> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cfg.root)
            .map_err(Error::io("creating", &cfg.root))?;
        let accel = match cfg.accel {
            AccelChoice::Kvm => Some(Accel::Kvm),
            AccelChoice::Tcg => Some(Accel::Tcg),
            AccelChoice::Auto => accel::remembered(&cfg.root.join("accel")),
        };
        Ok(Qemu {
            cfg,
            accel: Mutex::new(accel),
            uids: Mutex::new(()),
            probed: Mutex::new(None),
            fetching: Mutex::new(()),
        })
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &QemuConfig {
        &self.cfg
    }

    fn run_dir(&self, name: &str) -> RunDir {
        RunDir {
            dir: self.cfg.root.join(name),
        }
    }

    /// The accelerator for `spec`, probing with its kernel (the verified copy in its
    /// run directory) on first use, in a QEMU confined like the VM's (`uid`).
    fn accel_for(&self, spec: &VmSpec, run: &RunDir, uid: u32, qemu: &Invocation) -> Result<Accel> {
        let mut decided = self.accel.lock().expect("not poisoned");
        if let Some(a) = *decided {
            return Ok(a);
        }
        if !matches!(spec.boot, Boot::Kernel { .. }) {
            // Nothing to probe with: no decision yet, this VM runs under TCG.
            return Ok(Accel::Tcg);
        }
        let mut view = self.view(run, uid, None, qemu)?;
        view.bind(&run.dir, false, false)?;
        view.kvm()?;
        let probe = accel::probe_in(qemu, &run.kernel(), self.cfg.probe_timeout, Some(view));
        tracing::info!(accel = %probe.accel, reason = %probe.reason, "VM accelerator decided");
        accel::remember(&self.cfg.root.join("accel"), probe.accel);
        *decided = Some(probe.accel);
        let accel = probe.accel;
        *self.probed.lock().expect("not poisoned") = Some(probe);
        Ok(accel)
    }

    /// The KVM probe this hypervisor ran (with its reason), if it ran one.
    pub fn probe(&self) -> Option<accel::Probe> {
        self.probed.lock().expect("not poisoned").clone()
    }

    /// How QEMU is run: from the bundle if there is one (fetched first from the
    /// release part when only that is configured), else the system's binary.
    fn invocation(&self) -> Result<Invocation> {
        match (&self.cfg.bundle, &self.cfg.bundle_from) {
            (Some(dir), _) => Invocation::bundle(dir),
            (None, Some(source)) => {
                let _held = self.fetching.lock().expect("not poisoned");
                Invocation::bundle(&source.ensure()?)
            }
            (None, None) => Invocation::system(&self.cfg.binary),
        }
    }

    /// QEMU's mount view and user (see [`crate::confine`]), with `qemu`'s program
    /// (the binary's directory, or the whole bundle) in it, read-only.
    fn view(
        &self,
        run: &RunDir,
        uid: u32,
        netns: Option<&Path>,
        qemu: &Invocation,
    ) -> Result<Confinement> {
        let mut view = Confinement::new(&run.view(), uid, uid, netns)?;
        if let Some(dir) = qemu.visible() {
            view.bind(dir, false, true)?;
        }
        Ok(view)
    }

    /// The pid of `name`'s QEMU if it is alive; reaps it if it is our zombie.
    fn live_pid(&self, run: &RunDir) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(run.pidfile())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let pidfile = run.pidfile();
        let ours = cmdline
            .split(|&b| b == 0)
            .any(|arg| arg == pidfile.as_os_str().as_encoded_bytes());
        if !ours {
            return None;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The state is the first field after the parenthesised command name.
        let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
        if state == "Z" || state == "X" {
            // A subreaper (zosd as PID 1's agent) inherits daemonized QEMUs: reap it.
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
            return None;
        }
        Some(pid)
    }

    fn wait_gone(&self, run: &RunDir, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.live_pid(run).is_none() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn limits(&self, spec: &VmSpec, accel: Accel) -> Limits {
        Limits {
            memory_bytes: ((spec.memory_mib + self.cfg.overhead_mib) << 20) as i64,
            vcpus: spec.vcpus,
            kvm: accel == Accel::Kvm,
        }
    }

    /// The VM's own uid: the one in its run directory, else the lowest free one.
    fn vm_uid(&self, run: &RunDir) -> Result<u32> {
        let _held = self.uids.lock().expect("not poisoned");
        let range = self.cfg.uid_base..self.cfg.uid_base.saturating_add(self.cfg.uid_count);
        let read = |p: &Path| -> Option<u32> {
            std::fs::read_to_string(p)
                .ok()?
                .trim()
                .parse()
                .ok()
                .filter(|u| range.contains(u))
        };
        if let Some(uid) = read(&run.uid()) {
            return Ok(uid);
        }
        let taken: std::collections::BTreeSet<u32> = std::fs::read_dir(&self.cfg.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| read(&e.path().join("uid")))
            .collect();
        let uid = range
            .clone()
            .find(|u| !taken.contains(u))
            .ok_or_else(|| Error::Confine("every VM uid is taken".into()))?;
        std::fs::write(run.uid(), format!("{uid}\n")).map_err(Error::io("writing", run.uid()))?;
        Ok(uid)
    }
}

/// Copies a verified file (opened beneath its tree) to `to` in the run directory:
/// root's, readable by QEMU, never written through a link.
fn copy_verified(from: &std::fs::File, to: &Path) -> Result<()> {
    let file = confine::owned_file(to, false, 0, 0, 0o644)?;
    crate::disk::copy_fd(from, &file).map_err(Error::io("copying to", to))
}

/// QEMU's command line for `spec` (no shell: each element is one argument).
fn args(spec: &VmSpec, accel: Accel, run: &RunDir, fds: &Fds) -> Vec<String> {
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &spec.name]);
    push(&["-nodefaults", "-no-user-config", "-display", "none"]);
    push(&["-sandbox", SANDBOX]);
    // Daemonized, paused until it is in its cgroup; a guest reboot or panic ends
    // QEMU, and the engine restarts the workload with backoff.
    push(&["-daemonize", "-S", "-no-reboot"]);
    push(&["-pidfile", &path(&run.pidfile())]);
    // QMP on the listening socket zosd bound at `qmp.sock` (QEMU cannot write there).
    push(&[
        "-chardev",
        &format!("socket,id=qmp,fd={},server=on,wait=off", fds.qmp),
    ]);
    push(&["-mon", "chardev=qmp,mode=control"]);
    push(&[
        "-chardev",
        &format!("file,id=console,path={},append=on", path(&run.console())),
    ]);
    push(&["-serial", "chardev:console"]);
    push(&["-m", &spec.memory_mib.to_string()]);
    push(&["-smp", &spec.vcpus.to_string()]);
    match accel {
        Accel::Kvm => push(&["-accel", "kvm", "-cpu", "host"]),
        // A bounded translation cache: it counts against the cgroup's memory.
        Accel::Tcg => push(&["-accel", "tcg,tb-size=64"]),
    }
    let bus = match &spec.boot {
        Boot::Kernel {
            initrd, cmdline, ..
        } => {
            push(&["-M", "microvm,acpi=on"]);
            push(&["-kernel", &path(&run.kernel())]);
            if initrd.is_some() {
                push(&["-initrd", &path(&run.initrd())]);
            }
            let mut cmdline = cmdline.clone();
            if accel == Accel::Tcg {
                // Skips TSC calibration, which is slow and unreliable under emulation.
                cmdline.push_str(" tsc_early_khz=2000000");
            }
            push(&["-append", &cmdline]);
            "device"
        }
        Boot::Disk { config } => {
            push(&["-M", "q35"]);
            push(&["-smbios", &format!("type=11,value={config}")]);
            "pci"
        }
    };
    for (i, (d, fd)) in spec.disks.iter().zip(&fds.disks).enumerate() {
        let ro = if d.read_only { ",readonly=on" } else { "" };
        // The opened file, in fd set i+1; auto-read-only=off: QEMU opens it once, with
        // the access mode of the descriptor it has.
        let set = i + 1;
        push(&["-add-fd", &format!("fd={fd},set={set}")]);
        push(&[
            "-drive",
            &format!(
                "id=disk{i},file=/dev/fdset/{set},format=raw,if=none,discard=unmap,auto-read-only=off{ro}"
            ),
        ]);
        let boot = if i == 0 && bus == "pci" {
            ",bootindex=0"
        } else {
            ""
        };
        push(&["-device", &format!("virtio-blk-{bus},drive=disk{i}{boot}")]);
    }
    if let (Some(nic), Some(tap)) = (&spec.nic, fds.tap) {
        push(&["-netdev", &format!("tap,id=net0,fd={tap}")]);
        push(&[
            "-device",
            &format!("virtio-net-{bus},netdev=net0,mac={}", nic.mac_string()),
        ]);
    }
    a
}

impl Hypervisor for Qemu {
    fn start(&self, spec: &VmSpec) -> Result<Started> {
        spec.validate()?;
        let run = self.run_dir(&spec.name);
        // sun_path holds 107 bytes and a NUL: a longer QMP path could not be bound.
        if run.qmp().as_os_str().len() > 107 {
            return Err(Error::InvalidSpec(format!(
                "{}: too long for a unix socket (use a shorter run root or VM name)",
                run.qmp().display()
            )));
        }
        if let Some(pid) = self.live_pid(&run) {
            // Running already (re-adoption): never start a VM twice.
            return Ok(Started {
                pid,
                accel: self.accel_of(&spec.name).unwrap_or(Accel::Tcg),
            });
        }
        // The program first: a bundle still to fetch is fetched and verified now, and
        // one refused leaves nothing of the VM.
        let qemu = self.invocation()?;
        // Every file of the VM, opened beneath its tree before anything is written: a
        // link, a device or a FIFO is refused here and nothing of the VM exists.
        let (kernel, initrd) = match &spec.boot {
            Boot::Kernel { kernel, initrd, .. } => (
                Some(beneath::open(kernel, Access::Read)?),
                initrd
                    .as_ref()
                    .map(|i| beneath::open(i, Access::Read))
                    .transpose()?,
            ),
            Boot::Disk { .. } => (None, None),
        };
        let disks = spec
            .disks
            .iter()
            .map(|d| {
                let access = if d.read_only {
                    Access::Read
                } else {
                    Access::ReadWrite
                };
                beneath::open(&d.file, access)
            })
            .collect::<Result<Vec<_>>>()?;

        // The run directory is root's: QEMU may read it (x for its uid) but not change
        // it; only its console and pidfile are its own.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(&run.dir)
            .map_err(Error::io("creating", &run.dir))?;
        std::fs::set_permissions(&run.dir, std::fs::Permissions::from_mode(0o711))
            .map_err(Error::io("chmod", &run.dir))?;
        for stale in [run.pidfile(), run.qmp()] {
            match std::fs::remove_file(&stale) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io("removing", &stale)(e))
                }
                _ => {}
            }
        }
        let json = serde_json::to_vec_pretty(spec).expect("a spec serializes");
        std::fs::write(run.spec(), json).map_err(Error::io("writing", run.spec()))?;
        if let Some(k) = &kernel {
            copy_verified(k, &run.kernel())?;
        }
        if let Some(i) = &initrd {
            copy_verified(i, &run.initrd())?;
        }
        let uid = self.vm_uid(&run)?;
        confine::owned_file(&run.console(), true, uid, uid, 0o600)?;
        confine::owned_file(&run.pidfile(), false, uid, uid, 0o644)?;
        match std::fs::create_dir(run.view()) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(Error::io("creating", run.view())(e))
            }
            _ => {}
        }
        let qmp = std::os::unix::net::UnixListener::bind(run.qmp())
            .map_err(Error::io("binding", run.qmp()))?;
        let tap = match &spec.nic {
            Some(nic) => Some(confine::open_tap(spec.netns.as_deref(), &nic.tap)?),
            None => None,
        };
        let accel = self.accel_for(spec, &run, uid, &qemu)?;
        std::fs::write(run.accel(), accel.to_string())
            .map_err(Error::io("writing", run.accel()))?;

        let fds = Fds {
            qmp: qmp.as_raw_fd(),
            tap: tap.as_ref().map(|t| t.as_raw_fd()),
            disks: disks.iter().map(|d| d.as_raw_fd()).collect(),
        };
        let mut view = self.view(&run, uid, spec.netns.as_deref(), &qemu)?;
        view.bind(&run.dir, true, false)?;
        if accel == Accel::Kvm {
            view.kvm()?;
        }
        for fd in std::iter::once(fds.qmp)
            .chain(fds.tap)
            .chain(fds.disks.iter().copied())
        {
            view.keep(fd);
        }
        let mut cmd = qemu.command();
        cmd.args(args(spec, accel, &run, &fds))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // SAFETY: `enter` runs in the forked child before exec and makes only
        // async-signal-safe syscalls on memory and descriptors `view` prepared, which
        // the parent keeps alive until `output` returns.
        unsafe {
            cmd.pre_exec(move || view.enter());
        }
        // With -daemonize, the process we spawn exits once QEMU is initialised (or
        // failed to be): its status and stderr are the verdict.
        let out = cmd.output().map_err(|e| Error::Start {
            status: "not run".into(),
            message: format!("{}: {e}", qemu.program().display()),
        })?;
        drop((qmp, tap, disks, kernel, initrd));
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let message = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message")
                .to_string();
            return Err(Error::Start {
                status: out.status.to_string(),
                message,
            });
        }
        let pid = self.live_pid(&run).ok_or_else(|| Error::Start {
            status: "exited".into(),
            message: "QEMU daemonized, then was gone".into(),
        })?;
        let resume = cgroup::place(
            &self.cfg.cgroup_parent,
            &spec.name,
            pid,
            self.limits(spec, accel),
        )
        .and_then(|()| Qmp::connect(&run.qmp(), QMP_TIMEOUT))
        .and_then(|mut qmp| qmp.execute("cont", None).map(|_| ()));
        if let Err(e) = resume {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            self.wait_gone(&run, Duration::from_secs(5));
            return Err(e);
        }
        tracing::info!(vm = %spec.name, pid, %accel, "VM started");
        Ok(Started { pid, accel })
    }

    fn state(&self, name: &str) -> Result<Option<VmState>> {
        let run = self.run_dir(name);
        if !run.dir.is_dir() {
            return Ok(None);
        }
        let _ = console::enforce_limit(&run.console(), self.cfg.console_limit);
        Ok(Some(match self.live_pid(&run) {
            Some(pid) => VmState::Running { pid },
            None => VmState::Stopped,
        }))
    }

    fn stop(&self, name: &str) -> Result<()> {
        let run = self.run_dir(name);
        let Some(pid) = self.live_pid(&run) else {
            return Ok(());
        };
        // Politely: the ACPI power button; then QEMU's own quit; then SIGKILL.
        if let Ok(mut qmp) = Qmp::connect(&run.qmp(), QMP_TIMEOUT) {
            if qmp.execute("system_powerdown", None).is_ok()
                && self.wait_gone(&run, self.cfg.stop_grace)
            {
                return Ok(());
            }
            let _ = qmp.execute("quit", None);
            if self.wait_gone(&run, Duration::from_secs(2)) {
                return Ok(());
            }
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        if self.wait_gone(&run, Duration::from_secs(5)) {
            Ok(())
        } else {
            Err(Error::Stuck { pid, seconds: 5 })
        }
    }

    fn remove(&self, name: &str) -> Result<()> {
        if !valid_name(name) {
            return Err(Error::InvalidSpec(format!("name {name:?}")));
        }
        self.stop(name)?;
        cgroup::remove(&self.cfg.cgroup_parent, name)?;
        let run = self.run_dir(name);
        match std::fs::remove_dir_all(&run.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("removing", &run.dir)(e))
            }
            _ => Ok(()),
        }
    }

    fn names(&self) -> Vec<String> {
        std::fs::read_dir(&self.cfg.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| valid_name(n))
            .collect()
    }

    fn console_tail(&self, name: &str, lines: usize) -> Vec<String> {
        console::tail(&self.run_dir(name).console(), lines)
    }

    fn cgroup_path(&self, name: &str) -> Option<PathBuf> {
        Some(cgroup::path(&self.cfg.cgroup_parent, name))
    }

    fn accel_of(&self, name: &str) -> Option<Accel> {
        match std::fs::read_to_string(self.run_dir(name).accel())
            .ok()?
            .trim()
        {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }

    fn qmp_status(&self, name: &str) -> Result<String> {
        Qmp::connect(&self.run_dir(name).qmp(), QMP_TIMEOUT)?.status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::beneath::TreeFile;
    use crate::spec::{Disk, Nic};

    fn fds() -> Fds {
        Fds {
            qmp: 5,
            tap: Some(6),
            disks: vec![7],
        }
    }

    fn run() -> RunDir {
        RunDir {
            dir: PathBuf::from("/run/vm/c1.vm"),
        }
    }

    fn pairs(args: &[String]) -> Vec<(String, String)> {
        args.windows(2)
            .filter(|w| w[0].starts_with('-'))
            .map(|w| (w[0].clone(), w[1].clone()))
            .collect()
    }

    #[test]
    fn kernel_boot_on_microvm_under_tcg() {
        let spec = VmSpec {
            name: "c1.vm".into(),
            boot: Boot::Kernel {
                kernel: TreeFile::new("/f", "boot/vmlinux"),
                initrd: Some(TreeFile::new("/f", "boot/initrd.img")),
                cmdline: "console=ttyS0 zos.ip=10.1.0.2/24".into(),
            },
            vcpus: 2,
            memory_mib: 256,
            disks: vec![Disk {
                file: TreeFile::new("/pool/vdisks", "c1"),
                read_only: false,
            }],
            nic: Some(Nic {
                tap: "t-abc".into(),
                mac: [2, 1, 2, 3, 4, 5],
            }),
            netns: None,
        };
        let a = args(&spec, Accel::Tcg, &run(), &fds());
        let p = pairs(&a);
        let has = |k: &str, v: &str| p.iter().any(|(a, b)| a == k && b == v);
        assert!(has("-M", "microvm,acpi=on"));
        assert!(has("-accel", "tcg,tb-size=64"));
        // The verified copies in the run directory, never the flist's paths.
        assert!(has("-kernel", "/run/vm/c1.vm/kernel"));
        assert!(has("-initrd", "/run/vm/c1.vm/initrd"));
        assert!(has("-sandbox", SANDBOX));
        assert!(has(
            "-append",
            "console=ttyS0 zos.ip=10.1.0.2/24 tsc_early_khz=2000000"
        ));
        assert!(has("-m", "256") && has("-smp", "2"));
        assert!(has("-pidfile", "/run/vm/c1.vm/qemu.pid"));
        assert!(has("-chardev", "socket,id=qmp,fd=5,server=on,wait=off"));
        assert!(has("-mon", "chardev=qmp,mode=control"));
        assert!(has("-add-fd", "fd=7,set=1"));
        assert!(has(
            "-drive",
            "id=disk0,file=/dev/fdset/1,format=raw,if=none,discard=unmap,auto-read-only=off"
        ));
        assert!(
            !a.iter().any(|x| x.contains("/pool/")),
            "no disk path: {a:?}"
        );
        assert!(has("-device", "virtio-blk-device,drive=disk0"));
        assert!(has("-netdev", "tap,id=net0,fd=6"));
        assert!(has(
            "-device",
            "virtio-net-device,netdev=net0,mac=02:01:02:03:04:05"
        ));
        for flag in ["-daemonize", "-S", "-no-reboot", "-nodefaults"] {
            assert!(a.iter().any(|x| x == flag), "{flag}");
        }
    }

    #[test]
    fn disk_boot_on_q35_gets_its_config_from_smbios() {
        let spec = VmSpec {
            name: "c1.vm".into(),
            boot: Boot::Disk {
                config: "zos.ip=10.1.0.2/24 zos.gw=10.1.0.1".into(),
            },
            vcpus: 1,
            memory_mib: 512,
            disks: vec![Disk {
                file: TreeFile::new("/pool/vdisks", "root"),
                read_only: false,
            }],
            nic: None,
            netns: None,
        };
        let a = args(&spec, Accel::Kvm, &run(), &fds());
        let p = pairs(&a);
        let has = |k: &str, v: &str| p.iter().any(|(a, b)| a == k && b == v);
        assert!(has("-M", "q35"));
        assert!(has("-accel", "kvm") && has("-cpu", "host"));
        assert!(has(
            "-smbios",
            "type=11,value=zos.ip=10.1.0.2/24 zos.gw=10.1.0.1"
        ));
        assert!(has("-device", "virtio-blk-pci,drive=disk0,bootindex=0"));
        assert!(!a.iter().any(|x| x == "-kernel"));
    }
}
