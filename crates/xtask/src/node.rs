//! `cargo xtask node` and `cargo xtask farm N`: nodes booted under QEMU from the image
//! of `cargo xtask initramfs` (qemu/README.md).
//!
//! Each node is a QEMU process (`-M microvm` with the PVH vmlinux by default: no
//! firmware, no PCI scan, the kernel's own entry point; `--machine q35` boots the
//! bzImage with virtio-pci instead), with its disks as sparse raw files and its serial
//! console in `target/nodes/<name>/`, and user networking: the guest gets its address
//! from QEMU's DHCP server and reaches the host's loopback at 10.0.2.2. Without
//! `--notary`, a private etcd on the host loopback is the notary and the farm is
//! created in it, signed by a farmer key kept in `target/nodes/`. TCG here; KVM only
//! when a probe kernel really boots under it (as zos-vm decides).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::etcd::Etcd;
use crate::flists::{path, run as zos_cli};
use crate::secureboot::{self, Signer};
use crate::{cargo, initramfs, target_dir};

/// What one node is booted with.
#[derive(Clone)]
pub struct NodeSpec {
    /// The node's directory under `target/nodes/` and its label in the output.
    pub name: String,
    /// How many data disks it has (sparse raw files).
    pub disks: usize,
    /// The size of each data disk, in GiB.
    pub disk_gib: u64,
    /// Guest memory, in MiB.
    pub memory_mib: u64,
    /// Guest virtual CPUs.
    pub cpus: u32,
    /// The QEMU machine type.
    pub machine: Machine,
    /// Extra kernel command-line words (`zos.farm=... zos.notary=...`).
    pub cmdline: String,
    /// Wipe the node's disks first (a first boot).
    pub fresh: bool,
    /// The last byte of the NIC's MAC address.
    pub index: u8,
    /// What the machine boots from.
    pub from: BootFrom,
    /// Host directories the node mounts at the same path (virtio-9p, `zos.share=`):
    /// a directory notary or a local flist store.
    pub shares: Vec<Share>,
    /// How the NIC reaches the world.
    pub net: Net,
}

/// A host directory shared with a node: `mount_tag` and the path on both sides.
#[derive(Clone, Debug)]
pub struct Share {
    /// The 9p mount tag the guest mounts by.
    pub tag: String,
    /// The directory: the same absolute path on the host and in the node.
    pub path: PathBuf,
}

/// How a node's NIC is connected.
#[derive(Clone, Debug, Default)]
pub enum Net {
    /// QEMU user networking: DHCP from QEMU, the host's loopback at 10.0.2.2, nothing
    /// reaches the node from outside.
    #[default]
    User,
    /// A tap device QEMU creates in an existing network namespace (the caller's DHCP
    /// server and notary live there; the node's address is reachable from it).
    Tap {
        /// The network namespace (its name under `/run/netns`) the tap is made in.
        netns: String,
        /// The tap device's name.
        ifname: String,
    },
}

/// What a node boots from.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum BootFrom {
    /// QEMU loads the kernel and the initramfs itself.
    #[default]
    Kernel,
    /// The ISO of `cargo xtask image` as a USB stick, with this firmware (q35 only).
    Usb(Firmware),
    /// The network: SeaBIOS runs the NIC's iPXE option ROM (Debian's ipxe-qemu), which
    /// gets its address and the boot file's name from QEMU's DHCP server and fetches the
    /// PXE set of `cargo xtask image` (script, kernel, initramfs) over QEMU's TFTP server
    /// (q35 only, QEMU user networking).
    Pxe,
    /// A unified kernel image (kernel, initramfs, this node's command line) signed by
    /// this signer, on an EFI system partition as a USB stick, under OVMF with Secure
    /// Boot enforced and the farm's keys enrolled ([`crate::secureboot`]; q35 only).
    SecureBoot(Signer),
}

/// The firmware a node boots its USB stick with.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Firmware {
    /// SeaBIOS (QEMU's default).
    Bios,
    /// OVMF (Debian package ovmf), without secure boot.
    Uefi,
}

/// OVMF's code and the template of its variable store.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The QEMU machine type a node boots as.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    /// `-M microvm` with the PVH vmlinux: no firmware, no PCI, virtio-mmio devices.
    Microvm,
    /// `-M q35` with the bzImage and virtio-pci devices (needed to boot from USB).
    Q35,
}

/// A running node; QEMU is killed when it is dropped.
pub struct Booted {
    /// As in [`NodeSpec::name`].
    pub name: String,
    /// The file QEMU writes the node's serial console to.
    pub console: PathBuf,
    /// When QEMU was started: milestones are measured from here.
    pub started: Instant,
    /// The accelerator QEMU runs with: `kvm` or `tcg` (see [`accel`]).
    pub accel: &'static str,
    /// QEMU's monitor (QMP), for the power button.
    pub qmp: PathBuf,
    child: Child,
}

/// Console lines that mark the boot's milestones: zosd's first line as PID 1.
pub const PID1_LINE: &str = "zosd: PID 1";
/// The node's engine serves contracts (the last milestone).
pub const SERVING_LINE: &str = "serving contracts";
/// What zosd's progress lines about the node contain (registration, serving).
pub const WAITING_LINE: &str = "zosd: node ";

impl Booted {
    /// The serial console so far (lossily UTF-8; empty when the file is not there yet).
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console).unwrap_or_default()).into_owned()
    }

    /// Whether QEMU is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for QEMU to exit by itself.
    pub fn wait(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        Ok(self.child.wait()?)
    }

    /// Presses the node's power button (ACPI, QMP `system_powerdown`): an orderly
    /// power-off inside, after which QEMU exits.
    pub fn power_button(&self) -> anyhow::Result<()> {
        let mut qmp = zos_vm::qmp::Qmp::connect(&self.qmp, Duration::from_secs(5))
            .with_context(|| format!("{}: QMP at {}", self.name, self.qmp.display()))?;
        qmp.execute("system_powerdown", None)
            .with_context(|| format!("{}: system_powerdown", self.name))?;
        Ok(())
    }

    /// Waits up to `timeout` for QEMU to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Hard power-off (no shutdown inside): kills QEMU.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The boot files: the kernel (PVH vmlinux for microvm, bzImage for q35) and the
/// initramfs.
pub struct BootFiles {
    /// The PVH ELF kernel, booted by `-M microvm`.
    pub vmlinux: PathBuf,
    /// The bzImage, booted by q35.
    pub vmlinuz: PathBuf,
    /// The initramfs with the static zosd.
    pub initrd: PathBuf,
}

/// Builds the image (the static zosd, the archive) and returns the boot files.
pub fn boot_files(rebuild: bool) -> anyhow::Result<BootFiles> {
    let kernel = crate::kernel::debian()?;
    let dir = target_dir().join("image");
    let existing = ["zst", "gz"]
        .iter()
        .map(|e| dir.join(format!("initramfs.cpio.{e}")))
        .find(|p| p.exists());
    let initrd = match existing {
        Some(p) if !rebuild => p,
        _ => {
            let b = initramfs::build()?;
            initramfs::report(&b);
            b.path
        }
    };
    Ok(BootFiles {
        vmlinuz: kernel.vmlinuz(),
        vmlinux: kernel.vmlinux,
        initrd,
    })
}

/// KVM if a probe kernel boots under it, else TCG: zos-vm's probe, whose answer is
/// remembered for the host's boot.
pub fn accel(kernel: &Path) -> &'static str {
    use zos_vm::accel::{probe, remember, remembered, Accel};
    let memo = target_dir().join("nodes/accel");
    let accel = remembered(&memo).unwrap_or_else(|| {
        let p = probe(
            Path::new("qemu-system-x86_64"),
            kernel,
            Duration::from_secs(10),
        );
        eprintln!("accelerator: {} ({})", p.accel, p.reason);
        if let Some(parent) = memo.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        remember(&memo, p.accel);
        p.accel
    });
    match accel {
        Accel::Kvm => "kvm",
        Accel::Tcg => "tcg",
    }
}

/// The QEMU device names of a machine type.
struct Devices {
    blk: &'static str,
    scsi: &'static str,
    net: &'static str,
    rng: &'static str,
    virtio_9p: &'static str,
}

impl Machine {
    fn devices(self) -> Devices {
        match self {
            Machine::Microvm => Devices {
                blk: "virtio-blk-device",
                scsi: "virtio-scsi-device",
                net: "virtio-net-device",
                rng: "virtio-rng-device",
                virtio_9p: "virtio-9p-device",
            },
            Machine::Q35 => Devices {
                blk: "virtio-blk-pci",
                scsi: "virtio-scsi-pci",
                net: "virtio-net-pci",
                rng: "virtio-rng-pci",
                virtio_9p: "virtio-9p-pci",
            },
        }
    }
}

/// Starts QEMU for `spec` (its files under `target/nodes/<name>/`).
pub fn boot(files: &BootFiles, spec: &NodeSpec, accel: &'static str) -> anyhow::Result<Booted> {
    let dir = target_dir().join("nodes").join(&spec.name);
    if spec.fresh {
        let _ = std::fs::remove_dir_all(&dir);
    }
    std::fs::create_dir_all(&dir)?;
    let console = dir.join("console.log");
    let _ = std::fs::remove_file(&console);

    let devices = spec.machine.devices();
    let mut cmd = qemu_command(spec, accel);
    let words = node_words(spec)?;
    match spec.from {
        BootFrom::Usb(firmware) => usb_stick(&mut cmd, files, spec, firmware, &words, &dir)?,
        BootFrom::Pxe => pxe_set(files, spec, &words, &dir)?,
        BootFrom::SecureBoot(signer) => secure_boot(&mut cmd, files, spec, signer, &words, &dir)?,
        BootFrom::Kernel => direct_kernel(&mut cmd, files, spec, &words),
    }
    cmd.args([
        "-chardev",
        &format!("file,id=console,path={}", console.display()),
        "-serial",
        "chardev:console",
    ]);
    disks(&mut cmd, spec, &devices, &dir)?;
    shares(&mut cmd, spec, &devices);
    nic(&mut cmd, spec, &devices, &dir);
    let qmp = dir.join("qmp.sock");
    let _ = std::fs::remove_file(&qmp);
    cmd.args([
        "-qmp",
        &format!("unix:{},server=on,wait=off", qmp.display()),
    ]);
    cmd.args(["-device", devices.rng]);
    cmd.arg("-no-reboot");
    let log = std::fs::File::create(dir.join("qemu.log"))?;
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting qemu-system-x86_64 (Debian package qemu-system-x86)")?;
    std::fs::write(dir.join("qemu.args"), format!("{cmd:?}\n"))?;
    Ok(Booted {
        name: spec.name.clone(),
        console,
        started,
        accel,
        qmp,
        child,
    })
}

/// QEMU (in the tap's namespace if it has one) with no default devices, the machine,
/// the accelerator, memory and CPUs.
fn qemu_command(spec: &NodeSpec, accel: &str) -> Command {
    let mut cmd = match &spec.net {
        Net::User => Command::new("qemu-system-x86_64"),
        Net::Tap { netns, .. } => {
            // `ip netns exec` execs QEMU in the namespace: the child is QEMU itself.
            let mut c = Command::new("ip");
            c.args(["netns", "exec", netns, "qemu-system-x86_64"]);
            c
        }
    };
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none"]);
    cmd.args(["-name", &spec.name]);
    match spec.machine {
        // ACPI: the node's power-off ends QEMU; the RTC gives the clock without NTP.
        Machine::Microvm => cmd.args(["-M", "microvm,acpi=on,rtc=on"]),
        Machine::Q35 => cmd.args(["-M", "q35"]),
    };
    if accel == "kvm" {
        cmd.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        // One TCG thread for all vCPUs: with one thread per vCPU, the guest kernel's
        // live code patching (text_poke with int3, e.g. when the first cgroup BPF
        // device program is attached) could leave a vCPU looping in its int3 handler
        // on a loaded host, and the node stalled for good (seen in the e2e run).
        cmd.args(["-accel", "tcg,thread=single,tb-size=256", "-cpu", "max"]);
    }
    cmd.args(["-m", &spec.memory_mib.to_string()]);
    cmd.args(["-smp", &spec.cpus.to_string()]);
    cmd
}

/// The node's words: the caller's, and one zos.share= per shared directory.
fn node_words(spec: &NodeSpec) -> anyhow::Result<String> {
    let mut words = spec.cmdline.clone();
    for share in &spec.shares {
        let p = share.path.to_string_lossy();
        if p.contains(|c: char| c.is_whitespace() || c == '"' || c == ',') {
            bail!("{p:?}: a shared path goes on the kernel command line and in -fsdev: no spaces, quotes or commas");
        }
        words.push_str(&format!(" zos.share={}:{p}", share.tag));
    }
    Ok(words.trim().to_string())
}

/// Boots from the medium a farmer writes to a stick (the ISO, with this node's command
/// line) on USB, under `firmware`.
fn usb_stick(
    cmd: &mut Command,
    files: &BootFiles,
    spec: &NodeSpec,
    firmware: Firmware,
    words: &str,
    dir: &Path,
) -> anyhow::Result<()> {
    if spec.machine != Machine::Q35 {
        bail!("booting from a USB stick needs --machine q35");
    }
    let iso = dir.join("zos.iso");
    crate::image::make_iso(&files.vmlinuz, &files.initrd, words, &iso)?;
    if firmware == Firmware::Uefi {
        crate::packages::ensure(&["ovmf"])?;
        let vars = dir.join("OVMF_VARS.fd");
        if !vars.exists() {
            std::fs::copy(OVMF_VARS, &vars).context("copying OVMF's variable store")?;
        }
        cmd.args([
            "-drive",
            &format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        ]);
    }
    usb_stick_of(cmd, &iso);
    Ok(())
}

/// `image` as a USB stick, the first boot device.
fn usb_stick_of(cmd: &mut Command, image: &Path) {
    cmd.args([
        "-device",
        "qemu-xhci,id=xhci",
        "-drive",
        &format!(
            "if=none,id=stick,format=raw,readonly=on,file={}",
            image.display()
        ),
        "-device",
        "usb-storage,bus=xhci.0,drive=stick,removable=on,bootindex=0",
    ]);
}

/// The signed unified kernel image with this node's words on an EFI system partition
/// (a USB stick), OVMF's Secure Boot build (SMM on, its flash writable only from SMM)
/// and a variable store with the farm's keys enrolled, all in `dir`.
fn secure_boot(
    cmd: &mut Command,
    files: &BootFiles,
    spec: &NodeSpec,
    signer: Signer,
    words: &str,
    dir: &Path,
) -> anyhow::Result<()> {
    if spec.machine != Machine::Q35 {
        bail!("Secure Boot needs --machine q35");
    }
    let keys = secureboot::Keys::ensure()?;
    let unsigned = dir.join("zos.efi");
    let cmdline = format!("console=tty0 console=ttyS0,115200 {words}");
    secureboot::unified_image(&files.vmlinuz, &files.initrd, cmdline.trim(), &unsigned)?;
    let signed = dir.join("zos.signed.efi");
    keys.sign(&unsigned, signer, &signed)?;
    let esp = dir.join("esp.img");
    secureboot::system_partition(&signed, &esp)?;
    let vars = dir.join("OVMF_VARS.secboot.fd");
    keys.enrolled_vars(&vars)?;
    // q35's SMM is on under TCG and KVM alike (its default, "auto").
    cmd.args([
        "-global",
        "driver=cfi.pflash01,property=secure,value=on",
        "-drive",
        &format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            secureboot::OVMF_SECBOOT_CODE
        ),
        "-drive",
        &format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
    ]);
    usb_stick_of(cmd, &esp);
    Ok(())
}

/// The PXE set, with this node's words, in `<dir>/pxe/`: what [`nic`] serves over
/// TFTP.
fn pxe_set(files: &BootFiles, spec: &NodeSpec, words: &str, dir: &Path) -> anyhow::Result<()> {
    if spec.machine != Machine::Q35 || !matches!(spec.net, Net::User) {
        bail!("a network boot needs --machine q35 and QEMU user networking");
    }
    crate::packages::ensure(&["ipxe-qemu"])?;
    crate::image::make_pxe(&dir.join("pxe"), &files.vmlinuz, &files.initrd, words)?;
    Ok(())
}

/// QEMU loads the kernel (PVH vmlinux for microvm, bzImage for q35) and the initramfs
/// itself, with the node's words on the kernel command line.
fn direct_kernel(cmd: &mut Command, files: &BootFiles, spec: &NodeSpec, words: &str) {
    let kernel = match spec.machine {
        Machine::Microvm => &files.vmlinux,
        Machine::Q35 => &files.vmlinuz,
    };
    cmd.arg("-kernel").arg(kernel);
    cmd.arg("-initrd").arg(&files.initrd);
    let mut append = String::from("console=ttyS0 panic=-1");
    if spec.machine == Machine::Microvm {
        // No calibration against a PIT that microvm does not have.
        append.push_str(" tsc_early_khz=2000000");
    }
    if !words.is_empty() {
        append.push(' ');
        append.push_str(words);
    }
    cmd.args(["-append", &append]);
}

/// The node's disks, sparse raw files in `dir` (made on first use). The first disk is an
/// SSD, the others HDDs, as on a typical 3Node: virtio-blk always reads as rotational, so
/// the SSD is a SCSI disk on virtio-scsi with rotation_rate=1 (what an SSD reports).
fn disks(cmd: &mut Command, spec: &NodeSpec, devices: &Devices, dir: &Path) -> anyhow::Result<()> {
    if spec.disks > 0 {
        cmd.args(["-device", &format!("{},id=scsi0", devices.scsi)]);
    }
    for i in 0..spec.disks {
        let disk = dir.join(format!("disk{i}.raw"));
        if !disk.exists() {
            // Sparse: a fresh, empty disk costs no host space until written.
            let f = std::fs::File::create(&disk)?;
            f.set_len(spec.disk_gib << 30)?;
        }
        cmd.args([
            "-drive",
            &format!(
                "id=d{i},file={},format=raw,if=none,cache=writeback,discard=unmap",
                disk.display()
            ),
            "-device",
            &if i == 0 {
                format!(
                    "scsi-hd,bus=scsi0.0,drive=d{i},rotation_rate=1,serial=zos-{}-{i}",
                    spec.name
                )
            } else {
                format!("{},drive=d{i},serial=zos-{}-{i}", devices.blk, spec.name)
            },
        ]);
    }
    Ok(())
}

/// One virtio-9p device per shared directory.
fn shares(cmd: &mut Command, spec: &NodeSpec, devices: &Devices) {
    for (i, share) in spec.shares.iter().enumerate() {
        // security_model=none: files are the host's, written as QEMU's user (root).
        cmd.args([
            "-fsdev",
            &format!(
                "local,id=fs{i},path={},security_model=none",
                share.path.display()
            ),
            "-device",
            &format!("{},fsdev=fs{i},mount_tag={}", devices.virtio_9p, share.tag),
        ]);
    }
}

/// The NIC, its MAC's last byte the node's index. On a network boot it is the first
/// boot device, and QEMU's DHCP and TFTP servers hand out `<dir>/pxe/`.
fn nic(cmd: &mut Command, spec: &NodeSpec, devices: &Devices, dir: &Path) {
    let mut netdev = match &spec.net {
        Net::User => "user,id=n0".to_string(),
        Net::Tap { ifname, .. } => format!("tap,id=n0,ifname={ifname},script=no,downscript=no"),
    };
    let mut device = format!(
        "{},netdev=n0,mac=52:54:00:5a:05:{:02x}",
        devices.net, spec.index
    );
    if spec.from == BootFrom::Pxe {
        netdev.push_str(&format!(
            ",tftp={},bootfile={}",
            dir.join("pxe").display(),
            crate::image::PXE_SCRIPT
        ));
        device.push_str(",bootindex=0");
    }
    cmd.args(["-netdev", &netdev, "-device", &device]);
}

/// The notary the nodes use: a private etcd on the host loopback (the farm created in
/// it), or one the user names.
pub struct Notary {
    _etcd: Option<Etcd>,
    /// How the host reaches it.
    pub host_url: Option<String>,
    /// How a node reaches it (QEMU user networking: the host is 10.0.2.2).
    pub guest_url: String,
}

/// Starts a private etcd in `dir` (emptied first) and creates `farm` in it, signed by
/// the farmer key in file `farmer` (made if missing: a node pins its farmer, so nodes
/// booted again on their disks need the same one).
pub fn private_notary(dir: &Path, farmer: &Path, farm: &str) -> anyhow::Result<Notary> {
    crate::packages::ensure(&["etcd-server"])?;
    cargo(&["build", "--quiet", "-p", "zos-cli"])?;
    let zos = target_dir().join("debug/zos");
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let etcd = Etcd::start(dir)?;
    let port = etcd.client.port();
    let host_url = format!("etcd://127.0.0.1:{port}/zos");
    let guest_url = format!("etcd://10.0.2.2:{port}/zos");
    if !farmer.exists() {
        zos_cli(&zos, &["key", "new", "--out", path(farmer)?])?;
    }
    zos_cli(
        &zos,
        &[
            "farm",
            "create",
            farm,
            "--name",
            "xtask QEMU farm",
            "--key",
            path(farmer)?,
            "--notary",
            &host_url,
        ],
    )?;
    println!("notary    {host_url} (nodes: {guest_url}); farm {farm} created");
    Ok(Notary {
        _etcd: Some(etcd),
        host_url: Some(host_url),
        guest_url,
    })
}

/// The node's key, from its console line `zosd: node <key> ...`.
pub fn node_key(console: &str) -> anyhow::Result<String> {
    Ok(console
        .lines()
        .find_map(|l| l.split(WAITING_LINE).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .context("no node key on the console")?
        .to_string())
}

/// When each node reached a milestone (time since its QEMU started).
#[derive(Default, Clone, Debug)]
pub struct Milestones {
    /// zosd's first console line ([`PID1_LINE`]); `None`: not seen.
    pub pid1: Option<Duration>,
    /// The node registered in its farm; `None`: not seen.
    pub registered: Option<Duration>,
    /// The engine serves contracts ([`SERVING_LINE`]); `None`: not seen.
    pub serving: Option<Duration>,
}

/// Polls every node's console (every 100 ms) until all serve contracts, printing
/// zosd's first line, the registration and waiting lines, and "serving" as they come.
pub fn wait_serving(nodes: &mut [Booted], timeout: Duration) -> anyhow::Result<Vec<Milestones>> {
    let deadline = Instant::now() + timeout;
    let mut seen = vec![Milestones::default(); nodes.len()];
    let mut shown = vec![0usize; nodes.len()];
    loop {
        for (i, node) in nodes.iter_mut().enumerate() {
            if seen[i].serving.is_some() {
                continue;
            }
            let t = node.started.elapsed();
            let console = node.console_text();
            let text = whole_lines(&console);
            if seen[i].pid1.is_none() && text.contains(PID1_LINE) {
                seen[i].pid1 = Some(t);
                println!(
                    "{}: {:5.1} s: zosd's first console line (PID 1)",
                    node.name,
                    t.as_secs_f64()
                );
            }
            let lines: Vec<&str> = text.lines().filter(|l| l.contains(WAITING_LINE)).collect();
            for line in &lines[shown[i].min(lines.len())..] {
                println!("{}: {:5.1} s: {}", node.name, t.as_secs_f64(), line.trim());
                if line.contains(" registered in farm ") {
                    seen[i].registered.get_or_insert(t);
                }
                if line.contains(SERVING_LINE) {
                    seen[i].serving = Some(t);
                }
            }
            shown[i] = lines.len();
            let running = node.running();
            if seen[i].serving.is_none() && (!running || Instant::now() > deadline) {
                bail!(
                    "{}: not serving after {:.0} s (QEMU {}); see {}",
                    node.name,
                    t.as_secs_f64(),
                    if running { "running" } else { "exited" },
                    node.console.display()
                );
            }
        }
        if seen.iter().all(|m| m.serving.is_some()) {
            return Ok(seen);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `text` up to its last newline. QEMU may be writing a console's last line as it is
/// read; a line read half written was counted as shown and its rest never looked at
/// again (in a CI run a node served, but its "serving contracts" line had been read cut
/// at the node key, and it was waited for in vain for 600 s).
fn whole_lines(text: &str) -> &str {
    &text[..text.rfind('\n').map_or(0, |at| at + 1)]
}

/// Options of `node` and `farm`.
struct Options {
    notary: Option<String>,
    farm: String,
    disks: usize,
    disk_gib: u64,
    memory_mib: u64,
    cpus: u32,
    machine: Machine,
    name: Option<String>,
    timeout: Duration,
    /// Stop the nodes once they serve (for scripts and tests).
    check: bool,
    rebuild: bool,
    fresh: bool,
    debug: bool,
    from: BootFrom,
    shares: Vec<Share>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            notary: None,
            farm: "farm-1".into(),
            disks: 2,
            disk_gib: 8,
            memory_mib: 2048,
            cpus: 1,
            machine: Machine::Microvm,
            name: None,
            timeout: Duration::from_secs(600),
            check: false,
            rebuild: true,
            fresh: false,
            debug: false,
            from: BootFrom::Kernel,
            shares: Vec::new(),
        }
    }
}

/// The options of `node` and `farm`, and the arguments that are not options.
fn parse(args: &[String]) -> anyhow::Result<(Options, Vec<String>)> {
    let mut o = Options::default();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--notary" => o.notary = Some(value()?),
            "--farm" => o.farm = value()?,
            "--disks" => o.disks = value()?.parse().context("--disks N")?,
            "--disk-gib" => o.disk_gib = value()?.parse().context("--disk-gib N")?,
            "--memory" => o.memory_mib = value()?.parse().context("--memory MIB")?,
            "--cpus" => o.cpus = value()?.parse().context("--cpus N")?,
            "--machine" => o.machine = parse_machine(&value()?)?,
            "--name" => o.name = Some(value()?),
            "--timeout" => {
                o.timeout = Duration::from_secs(value()?.parse().context("--timeout SECS")?)
            }
            "--check" => o.check = true,
            "--no-build" => o.rebuild = false,
            "--fresh" => o.fresh = true,
            "--debug" => o.debug = true,
            "--share" => {
                let path = std::fs::canonicalize(value()?).context("--share DIR")?;
                o.shares.push(Share {
                    tag: format!("share{}", o.shares.len()),
                    path,
                });
            }
            "--usb" => {
                o.from = BootFrom::Usb(parse_firmware(&value()?)?);
                o.machine = Machine::Q35;
            }
            "--secure-boot" => {
                o.from = BootFrom::SecureBoot(match value()?.as_str() {
                    "farm" => Signer::Farm,
                    "other" => Signer::Other,
                    v => bail!("--secure-boot {v:?}: farm or other"),
                });
                o.machine = Machine::Q35;
            }
            "--pxe" => {
                o.from = BootFrom::Pxe;
                o.machine = Machine::Q35;
            }
            _ => rest.push(a.clone()),
        }
    }
    for v in [&o.farm].into_iter().chain(o.notary.as_ref()) {
        if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == '"') {
            bail!("{v:?}: no spaces or quotes on the kernel command line");
        }
    }
    Ok((o, rest))
}

fn parse_machine(m: &str) -> anyhow::Result<Machine> {
    Ok(match m {
        "microvm" => Machine::Microvm,
        "q35" => Machine::Q35,
        m => bail!("--machine {m:?}: microvm or q35"),
    })
}

fn parse_firmware(f: &str) -> anyhow::Result<Firmware> {
    Ok(match f {
        "bios" => Firmware::Bios,
        "uefi" => Firmware::Uefi,
        f => bail!("--usb {f:?}: bios or uefi"),
    })
}

/// `cargo xtask node [options]`.
pub fn run_node(args: &[String]) -> anyhow::Result<()> {
    let (o, rest) = parse(args)?;
    if let Some(a) = rest.first() {
        bail!("cargo xtask node: unknown option {a:?} (see cargo xtask help)");
    }
    run_nodes(&o, 1)
}

/// `cargo xtask farm N [options]`, or `cargo xtask farm N --failover`.
pub fn run_farm(args: &[String]) -> anyhow::Result<()> {
    let (o, mut rest) = parse(args)?;
    let mut flag = |name: &str| match rest.iter().position(|a| a == name) {
        Some(at) => {
            rest.remove(at);
            true
        }
        None => false,
    };
    let failover = flag("--failover");
    let mesh = flag("--mesh");
    let upgrade = flag("--upgrade");
    let n: usize = match rest.as_slice() {
        [n] => n.parse().context("cargo xtask farm N: N is a number")?,
        _ => bail!(
            "usage: cargo xtask farm N [--failover | --mesh | --upgrade] [--notary URL] [--farm ID] [--disks N] ..."
        ),
    };
    if n == 0 || n > 32 {
        bail!("cargo xtask farm N: 1 to 32 nodes");
    }
    if (failover || mesh || upgrade) && o.notary.is_some() {
        bail!("--failover, --mesh and --upgrade run their own etcd: no --notary");
    }
    if upgrade {
        if n != 3 {
            bail!("--upgrade is a scenario of 3 nodes (cargo xtask farm 3 --upgrade)");
        }
        let figures = crate::upgrade::run(o.rebuild)?;
        crate::upgrade::print(&figures);
        return Ok(());
    }
    if mesh {
        if n != 3 {
            bail!("--mesh is a scenario of 3 nodes (cargo xtask farm 3 --mesh)");
        }
        let figures = crate::mesh::run(o.rebuild, false)?;
        crate::mesh::print(&figures);
        return Ok(());
    }
    if failover {
        let figures = crate::failover::run(n, o.rebuild)?;
        crate::failover::print(&figures);
        return Ok(());
    }
    run_nodes(&o, n)
}

fn run_nodes(o: &Options, n: usize) -> anyhow::Result<()> {
    let tag = o.name.as_deref().unwrap_or("node");
    let files = boot_files(o.rebuild)?;
    let notary = match &o.notary {
        Some(url) => Notary {
            _etcd: None,
            host_url: None,
            guest_url: url.clone(),
        },
        None => private_notary(
            // One per --name: runs with different names (the e2e tests) may overlap.
            &target_dir().join(format!("nodes/notary-{tag}")),
            &target_dir().join(format!("nodes/farmer-{tag}.key")),
            &o.farm,
        )?,
    };
    let accel = accel(&files.vmlinux);
    let mut cmdline = format!("zos.farm={} zos.notary={}", o.farm, notary.guest_url);
    if o.debug {
        cmdline.push_str(" zos.debug");
    }
    let mut nodes = Vec::new();
    for i in 0..n {
        let spec = node_spec(o, &cmdline, i, n);
        let node = boot(&files, &spec, accel)?;
        println!(
            "{}: booting under QEMU ({}), console {}",
            spec.name,
            describe(o, node.accel),
            node.console.display()
        );
        nodes.push(node);
    }
    wait_serving(&mut nodes, o.timeout)?;
    if let Some(url) = &notary.host_url {
        let zos = target_dir().join("debug/zos");
        let list = zos_cli(&zos, &["node", "list", "--farm", &o.farm, "--notary", url])?;
        println!(
            "\n$ zos node list --farm {} --notary {url}\n{list}\n",
            o.farm
        );
    }
    if o.check {
        for node in &mut nodes {
            node.kill();
        }
        println!("all {} node(s) served; stopped (--check)", nodes.len());
        return Ok(());
    }
    println!("running; Ctrl-C stops the node(s) and the notary");
    for node in &mut nodes {
        let status = node.wait()?;
        println!("{}: QEMU exited ({status})", node.name);
    }
    Ok(())
}

/// Node `i` of `n`: named `--name` (suffixed `-i` when there are several) or `node<i>`.
fn node_spec(o: &Options, cmdline: &str, i: usize, n: usize) -> NodeSpec {
    let name = match (&o.name, n) {
        (Some(name), 1) => name.clone(),
        (Some(name), _) => format!("{name}-{i}"),
        (None, _) => format!("node{i}"),
    };
    NodeSpec {
        name,
        disks: o.disks,
        disk_gib: o.disk_gib,
        memory_mib: o.memory_mib,
        cpus: o.cpus,
        machine: o.machine,
        cmdline: cmdline.to_string(),
        fresh: o.fresh,
        index: i as u8,
        from: o.from,
        shares: o.shares.clone(),
        net: Net::User,
    }
}

/// `microvm, tcg` or `q35, USB stick, UEFI, kvm`: how the nodes boot.
fn describe(o: &Options, accel: &str) -> String {
    format!(
        "{}{}, {accel}",
        if o.machine == Machine::Microvm {
            "microvm"
        } else {
            "q35"
        },
        match o.from {
            BootFrom::Usb(Firmware::Bios) => ", USB stick, BIOS",
            BootFrom::Usb(Firmware::Uefi) => ", USB stick, UEFI",
            BootFrom::Pxe => ", network boot (iPXE, TFTP)",
            BootFrom::SecureBoot(Signer::Farm) => ", Secure Boot, signed by the farm's key",
            BootFrom::SecureBoot(Signer::Other) => ", Secure Boot, signed by another key",
            BootFrom::Kernel => "",
        },
    )
}

#[cfg(test)]
mod tests {
    use super::whole_lines;

    #[test]
    fn a_console_line_being_written_is_not_read_yet() {
        let cut = "zosd: node 3536e922b1345e";
        let console = format!("boot\n{cut}");
        assert_eq!(whole_lines(&console), "boot\n");
        assert_eq!(whole_lines(cut), "");
        let done = format!("{console}65c5 serving contracts from etcd://x\n");
        assert_eq!(whole_lines(&done), done);
    }
}
