//! Disk discovery from sysfs and the policy that decides which disks may hold a pool.
//!
//! Discovery only reads: sysfs attributes and the first MiB of each device (to find a
//! partition table or filesystem signature). Nothing here writes to a disk.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How much of the start of a device is read to look for signatures.
pub const PROBE_BYTES: usize = 1 << 20;

/// Btrfs primary superblock offset and field offsets inside it.
const BTRFS_SB: usize = 0x10000;
const BTRFS_MAGIC: &[u8; 8] = b"_BHRfS_M";

/// What the start of a device holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signature {
    /// The probed range is all zeroes.
    Empty,
    /// A btrfs filesystem (ours when its label has our prefix).
    Btrfs {
        /// The filesystem label.
        label: String,
        /// The filesystem UUID.
        fsid: String,
    },
    /// An ext2/3/4 filesystem.
    Ext {
        /// The filesystem label.
        label: String,
    },
    /// An XFS filesystem.
    Xfs,
    /// A GPT partition table.
    Gpt,
    /// A DOS partition table or boot sector (0x55AA at byte 510).
    Mbr,
    /// A Linux swap area.
    Swap,
    /// An LVM physical volume.
    Lvm,
    /// Non-zero bytes that match no known signature.
    Unknown,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signature::Empty => write!(f, "empty"),
            Signature::Btrfs { label, .. } => write!(f, "btrfs filesystem (label {label:?})"),
            Signature::Ext { label } => write!(f, "ext2/3/4 filesystem (label {label:?})"),
            Signature::Xfs => write!(f, "xfs filesystem"),
            Signature::Gpt => write!(f, "GPT partition table"),
            Signature::Mbr => write!(f, "DOS partition table or boot sector"),
            Signature::Swap => write!(f, "swap signature"),
            Signature::Lvm => write!(f, "LVM physical volume"),
            Signature::Unknown => write!(f, "unrecognised data in the first MiB"),
        }
    }
}

fn cstr_field(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn uuid_string(b: &[u8]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Classify the first bytes of a device (pure: unit-testable with byte buffers).
pub fn probe_bytes(buf: &[u8]) -> Signature {
    if buf.len() >= BTRFS_SB + 0x12b + 256 && &buf[BTRFS_SB + 0x40..BTRFS_SB + 0x48] == BTRFS_MAGIC
    {
        let sb = &buf[BTRFS_SB..];
        return Signature::Btrfs {
            label: cstr_field(&sb[0x12b..0x12b + 256]),
            fsid: uuid_string(&sb[0x20..0x30]),
        };
    }
    if buf.len() >= 1024 + 0x88 && buf[1024 + 0x38..1024 + 0x3a] == [0x53, 0xEF] {
        return Signature::Ext {
            label: cstr_field(&buf[1024 + 0x78..1024 + 0x88]),
        };
    }
    if buf.len() >= 4 && &buf[0..4] == b"XFSB" {
        return Signature::Xfs;
    }
    if buf.len() >= 520 && &buf[512..520] == b"EFI PART" {
        return Signature::Gpt;
    }
    if buf.len() >= 520 && &buf[512..520] == b"LABELONE" {
        return Signature::Lvm;
    }
    if buf.len() >= 4096 && &buf[4086..4096] == b"SWAPSPACE2" {
        return Signature::Swap;
    }
    if buf.len() >= 512 && buf[510] == 0x55 && buf[511] == 0xAA {
        return Signature::Mbr;
    }
    if buf.iter().all(|&b| b == 0) {
        Signature::Empty
    } else {
        Signature::Unknown
    }
}

/// Read the first [`PROBE_BYTES`] of a device (or file) and classify them.
pub fn probe_device(path: &Path) -> Result<Signature> {
    let mut f = fs::File::open(path).map_err(|e| Error::io("open for probe", path, e))?;
    let mut buf = Vec::with_capacity(PROBE_BYTES);
    f.by_ref()
        .take(PROBE_BYTES as u64)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io("read for probe", path, e))?;
    Ok(probe_bytes(&buf))
}

/// One block device as sysfs and its first sectors describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Kernel name (`vda`, `sdb`, `loop3`).
    pub name: String,
    /// Device node.
    pub path: PathBuf,
    /// Size in bytes.
    pub size_bytes: u64,
    /// sysfs `queue/rotational`: a spinning disk.
    pub rotational: bool,
    /// sysfs `removable` (USB sticks, card readers).
    pub removable: bool,
    /// sysfs `ro`.
    pub read_only: bool,
    /// sysfs `device/model`, when there is one.
    pub model: Option<String>,
    /// sysfs `device/serial` (else `serial`), when there is one.
    pub serial: Option<String>,
    /// loop, ram, zram, nbd, dm, md, sr devices.
    pub virtual_dev: bool,
    /// What its first sectors hold.
    pub signature: Signature,
    /// Why the disk is busy: a mount of it or of one of its partitions, or a holder.
    pub in_use: Option<String>,
}

/// What the policy decided for one disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// Blank (or wipe explicitly requested): a new pool may be created on it.
    NewPool {
        /// Its existing content is destroyed first (the operator asked for it).
        wipe: bool,
    },
    /// Carries one of our pools already.
    ExistingPool {
        /// The pool's btrfs label.
        label: String,
    },
    /// Must not be touched; the reason is for humans and logs.
    Refused {
        /// Why not.
        reason: String,
    },
}

/// A one-line description of a considered disk, carried in refusals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSummary {
    /// Kernel name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// What the policy decided for it.
    pub verdict: Verdict,
}

impl fmt::Display for DiskSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} bytes): ", self.name, self.size_bytes)?;
        match &self.verdict {
            Verdict::NewPool { wipe: false } => write!(f, "new pool"),
            Verdict::NewPool { wipe: true } => write!(f, "new pool (wipe requested)"),
            Verdict::ExistingPool { label } => write!(f, "pool {label}"),
            Verdict::Refused { reason } => write!(f, "refused, {reason}"),
        }
    }
}

/// Which disks to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSelection {
    /// Every disk under `<sysfs>/block`, virtual ones excluded.
    Auto,
    /// Exactly these device nodes (loop devices allowed: they are configured explicitly).
    Explicit(Vec<PathBuf>),
}

/// Where discovery reads from and what the policy allows.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// `/sys` normally; a fake tree in unit tests.
    pub sysfs_root: PathBuf,
    /// `/dev` normally.
    pub dev_root: PathBuf,
    /// `/proc/self/mountinfo` normally.
    pub mountinfo: PathBuf,
    /// Which disks to look at.
    pub selection: DiskSelection,
    /// Btrfs labels starting with this are ours.
    pub label_prefix: String,
    /// Kernel names of disks whose existing content may be destroyed.
    pub wipe: Vec<String>,
    /// Kernel names of boot media (from the boot loader / command line), never touched.
    pub boot_devices: Vec<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            sysfs_root: "/sys".into(),
            dev_root: "/dev".into(),
            mountinfo: "/proc/self/mountinfo".into(),
            selection: DiskSelection::Auto,
            label_prefix: "zos-".into(),
            wipe: Vec::new(),
            boot_devices: Vec::new(),
        }
    }
}

fn read_attr(path: &Path) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

fn is_virtual(name: &str) -> bool {
    ["loop", "ram", "zram", "nbd", "dm-", "md", "sr", "fd"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Devices (as `major:minor` and as kernel names) that are mounted somewhere.
#[derive(Debug, Default)]
struct Mounted {
    devs: Vec<(String, String)>,  // (major:minor, mountpoint)
    names: Vec<(String, String)>, // (basename of source, mountpoint)
}

fn read_mountinfo(path: &Path) -> Mounted {
    let mut m = Mounted::default();
    let Ok(text) = fs::read_to_string(path) else {
        return m;
    };
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.len() < 10 {
            continue;
        }
        let mp = fields[4].to_string();
        m.devs.push((fields[2].to_string(), mp.clone()));
        if let Some(dash) = fields.iter().position(|f| *f == "-") {
            if let Some(src) = fields.get(dash + 2) {
                if let Some(base) = src.strip_prefix("/dev/") {
                    let base = base.rsplit('/').next().unwrap_or(base);
                    m.names.push((base.to_string(), mp));
                }
            }
        }
    }
    m
}

fn in_use(sys_dev: &Path, name: &str, mounted: &Mounted) -> Option<String> {
    // The disk itself and each partition (subdirectories with a `partition` file).
    let mut nodes = vec![(name.to_string(), sys_dev.to_path_buf())];
    if let Ok(rd) = fs::read_dir(sys_dev) {
        for e in rd.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                nodes.push((e.file_name().to_string_lossy().into_owned(), p));
            }
        }
    }
    for (n, p) in &nodes {
        let dev = read_attr(&p.join("dev"));
        for (mm, mp) in &mounted.devs {
            if dev.as_deref() == Some(mm.as_str()) {
                return Some(format!("{n} is mounted at {mp}"));
            }
        }
        for (src, mp) in &mounted.names {
            if src == n {
                return Some(format!("{n} is mounted at {mp}"));
            }
        }
        if let Ok(rd) = fs::read_dir(p.join("holders")) {
            let holders: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !holders.is_empty() {
                return Some(format!("{n} is held by {}", holders.join(",")));
            }
        }
    }
    None
}

fn read_disk(cfg: &DiscoveryConfig, name: &str, path: PathBuf, mounted: &Mounted) -> Disk {
    let sys = cfg.sysfs_root.join("block").join(name);
    let num = |attr: &str| read_attr(&sys.join(attr)).and_then(|s| s.parse::<u64>().ok());
    let size_bytes = num("size").unwrap_or(0) * 512;
    let signature = if size_bytes == 0 {
        Signature::Empty
    } else {
        match probe_device(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(disk = name, error = %e, "cannot probe disk; treating as unknown");
                Signature::Unknown
            }
        }
    };
    Disk {
        name: name.to_string(),
        size_bytes,
        rotational: num("queue/rotational").unwrap_or(1) == 1,
        removable: num("removable").unwrap_or(0) == 1,
        read_only: num("ro").unwrap_or(0) == 1,
        model: read_attr(&sys.join("device/model")).filter(|s| !s.is_empty()),
        serial: read_attr(&sys.join("device/serial"))
            .or_else(|| read_attr(&sys.join("serial")))
            .filter(|s| !s.is_empty()),
        virtual_dev: is_virtual(name),
        signature,
        in_use: in_use(&sys, name, mounted),
        path,
    }
}

/// List the disks of the selection with their sysfs attributes and signatures.
pub fn discover(cfg: &DiscoveryConfig) -> Result<Vec<Disk>> {
    let mounted = read_mountinfo(&cfg.mountinfo);
    let mut disks = Vec::new();
    match &cfg.selection {
        DiskSelection::Auto => {
            let dir = cfg.sysfs_root.join("block");
            let mut names: Vec<String> = fs::read_dir(&dir)
                .map_err(|e| Error::io("list", &dir, e))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for n in names {
                let path = cfg.dev_root.join(&n);
                disks.push(read_disk(cfg, &n, path, &mounted));
            }
        }
        DiskSelection::Explicit(paths) => {
            let mut seen = BTreeSet::new();
            for p in paths {
                let real = fs::canonicalize(p).map_err(|e| Error::io("resolve", p, e))?;
                let name = real
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if seen.insert(name.clone()) {
                    disks.push(read_disk(cfg, &name, real, &mounted));
                }
            }
        }
    }
    Ok(disks)
}

/// The policy: which disks may hold pools. Pure function of the disk facts.
pub fn verdict(cfg: &DiscoveryConfig, d: &Disk) -> Verdict {
    let refuse = |reason: String| Verdict::Refused { reason };
    let explicit = matches!(cfg.selection, DiskSelection::Explicit(_));
    if d.size_bytes == 0 {
        return refuse("no medium (size 0)".into());
    }
    if cfg.boot_devices.iter().any(|b| b == &d.name) {
        return refuse("boot medium".into());
    }
    if d.virtual_dev && !explicit {
        return refuse("virtual device (loop/ram/zram/...) not explicitly configured".into());
    }
    if d.removable {
        return refuse("removable device".into());
    }
    if d.read_only {
        return refuse("read-only device".into());
    }
    if let Signature::Btrfs { label, .. } = &d.signature {
        if label.starts_with(&cfg.label_prefix) {
            return Verdict::ExistingPool {
                label: label.clone(),
            };
        }
    }
    if let Some(why) = &d.in_use {
        return refuse(format!("in use, boot medium or system disk ({why})"));
    }
    if d.signature == Signature::Empty {
        return Verdict::NewPool { wipe: false };
    }
    if cfg.wipe.iter().any(|w| w == &d.name) {
        return Verdict::NewPool { wipe: true };
    }
    refuse(format!(
        "foreign content: {} (wipe not requested)",
        d.signature
    ))
}

/// Discovery plus the policy, disk by disk.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every disk looked at, with the policy's verdict.
    pub disks: Vec<(Disk, Verdict)>,
}

impl Plan {
    /// One line per disk, for refusals and logs.
    pub fn summaries(&self) -> Vec<DiskSummary> {
        self.disks
            .iter()
            .map(|(d, v)| DiskSummary {
                name: d.name.clone(),
                size_bytes: d.size_bytes,
                verdict: v.clone(),
            })
            .collect()
    }
}

/// Discover the disks and apply the policy. With an explicit selection, any refused disk is
/// an error (the operator asked for it); in auto mode refusals are logged and skipped, and it
/// is an error only when no disk can hold a pool.
pub fn plan(cfg: &DiscoveryConfig) -> Result<Plan> {
    let disks = discover(cfg)?;
    let plan = Plan {
        disks: disks
            .into_iter()
            .map(|d| {
                let v = verdict(cfg, &d);
                (d, v)
            })
            .collect(),
    };
    for (d, v) in &plan.disks {
        tracing::info!(disk = %d.name, size = d.size_bytes, rotational = d.rotational,
            signature = %d.signature, verdict = ?v, "disk considered");
    }
    let explicit = matches!(cfg.selection, DiskSelection::Explicit(_));
    if explicit {
        if let Some((d, Verdict::Refused { reason })) = plan
            .disks
            .iter()
            .find(|(_, v)| matches!(v, Verdict::Refused { .. }))
        {
            return Err(Error::DiskRefused {
                disk: d.name.clone(),
                reason: reason.clone(),
                considered: plan.summaries(),
            });
        }
    }
    if !plan
        .disks
        .iter()
        .any(|(_, v)| !matches!(v, Verdict::Refused { .. }))
    {
        return Err(Error::NoUsableDisk {
            considered: plan.summaries(),
        });
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn btrfs_image(label: &str) -> Vec<u8> {
        let mut b = vec![0u8; PROBE_BYTES];
        b[BTRFS_SB + 0x40..BTRFS_SB + 0x48].copy_from_slice(BTRFS_MAGIC);
        b[BTRFS_SB + 0x20..BTRFS_SB + 0x30].copy_from_slice(&[0xab; 16]);
        b[BTRFS_SB + 0x12b..BTRFS_SB + 0x12b + label.len()].copy_from_slice(label.as_bytes());
        b
    }

    #[test]
    fn probe_signatures() {
        assert_eq!(probe_bytes(&vec![0; PROBE_BYTES]), Signature::Empty);
        match probe_bytes(&btrfs_image("zos-x")) {
            Signature::Btrfs { label, fsid } => {
                assert_eq!(label, "zos-x");
                assert_eq!(fsid, "abababab-abab-abab-abab-abababababab");
            }
            s => panic!("{s:?}"),
        }
        let mut ext = vec![0u8; 8192];
        ext[1024 + 0x38] = 0x53;
        ext[1024 + 0x39] = 0xEF;
        ext[1024 + 0x78..1024 + 0x7b].copy_from_slice(b"abc");
        assert_eq!(
            probe_bytes(&ext),
            Signature::Ext {
                label: "abc".into()
            }
        );
        let mut gpt = vec![0u8; 8192];
        gpt[510] = 0x55;
        gpt[511] = 0xAA;
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(probe_bytes(&gpt), Signature::Gpt);
        gpt[512..520].copy_from_slice(&[0; 8]);
        assert_eq!(probe_bytes(&gpt), Signature::Mbr);
        let mut xfs = vec![0u8; 8192];
        xfs[0..4].copy_from_slice(b"XFSB");
        assert_eq!(probe_bytes(&xfs), Signature::Xfs);
        let mut junk = vec![0u8; 8192];
        junk[7000] = 1;
        assert_eq!(probe_bytes(&junk), Signature::Unknown);
    }

    struct FakeSys {
        dir: tempfile::TempDir,
    }

    impl FakeSys {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir_all(dir.path().join("sys/block")).unwrap();
            fs::create_dir_all(dir.path().join("dev")).unwrap();
            fs::write(dir.path().join("mountinfo"), "").unwrap();
            FakeSys { dir }
        }
        fn disk(&self, name: &str, dev: &str, content: &[u8], rot: u8, removable: u8) {
            let s = self.dir.path().join("sys/block").join(name);
            fs::create_dir_all(s.join("queue")).unwrap();
            fs::create_dir_all(s.join("device")).unwrap();
            fs::create_dir_all(s.join("holders")).unwrap();
            fs::write(s.join("size"), format!("{}\n", 1u64 << 31)).unwrap(); // 1 TiB in sectors
            fs::write(s.join("queue/rotational"), format!("{rot}\n")).unwrap();
            fs::write(s.join("removable"), format!("{removable}\n")).unwrap();
            fs::write(s.join("ro"), "0\n").unwrap();
            fs::write(s.join("dev"), format!("{dev}\n")).unwrap();
            fs::write(s.join("device/model"), "FAKE DISK  \n").unwrap();
            fs::write(s.join("device/serial"), format!("SN-{name}\n")).unwrap();
            fs::write(self.dir.path().join("dev").join(name), content).unwrap();
        }
        fn partition(&self, disk: &str, part: &str, dev: &str) {
            let s = self.dir.path().join("sys/block").join(disk).join(part);
            fs::create_dir_all(&s).unwrap();
            fs::write(s.join("partition"), "1\n").unwrap();
            fs::write(s.join("dev"), format!("{dev}\n")).unwrap();
        }
        fn cfg(&self) -> DiscoveryConfig {
            DiscoveryConfig {
                sysfs_root: self.dir.path().join("sys"),
                dev_root: self.dir.path().join("dev"),
                mountinfo: self.dir.path().join("mountinfo"),
                ..DiscoveryConfig::default()
            }
        }
    }

    fn verdict_of(plan: &Plan, name: &str) -> Verdict {
        plan.disks
            .iter()
            .find(|(d, _)| d.name == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    }

    #[test]
    fn policy_on_fake_sysfs() {
        let f = FakeSys::new();
        let zero = vec![0u8; 4096];
        let mut gpt = vec![0u8; 4096];
        gpt[512..520].copy_from_slice(b"EFI PART");
        let mut ext = vec![0u8; 4096];
        ext[1024 + 0x38] = 0x53;
        ext[1024 + 0x39] = 0xEF;
        f.disk("sda", "8:0", &gpt, 0, 0); // system disk, root on sda1
        f.partition("sda", "sda1", "8:1");
        f.disk("sdb", "8:16", &zero, 0, 0); // blank SSD
        f.disk("sdc", "8:32", &zero, 1, 0); // blank HDD
        f.disk("sdd", "8:48", &zero, 0, 1); // USB stick
        f.disk("sde", "8:64", &ext, 1, 0); // foreign ext4
        f.disk("sdf", "8:80", &btrfs_image("zos-abc"), 0, 0); // our pool
        f.disk("sdg", "8:96", &btrfs_image("other"), 0, 0); // foreign btrfs
        f.disk("loop0", "7:0", &zero, 1, 0);
        f.disk("zram0", "253:0", &zero, 0, 0);
        fs::write(
            f.dir.path().join("mountinfo"),
            "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/root rw\n",
        )
        .unwrap();
        let cfg = f.cfg();
        let plan = plan(&cfg).unwrap();
        let refused = |n: &str, needle: &str| match verdict_of(&plan, n) {
            Verdict::Refused { reason } => assert!(reason.contains(needle), "{n}: {reason}"),
            v => panic!("{n}: {v:?}"),
        };
        refused("sda", "sda1 is mounted at /");
        assert_eq!(verdict_of(&plan, "sdb"), Verdict::NewPool { wipe: false });
        assert_eq!(verdict_of(&plan, "sdc"), Verdict::NewPool { wipe: false });
        refused("sdd", "removable");
        refused("sde", "ext2/3/4");
        assert_eq!(
            verdict_of(&plan, "sdf"),
            Verdict::ExistingPool {
                label: "zos-abc".into()
            }
        );
        refused("sdg", "foreign content: btrfs");
        refused("loop0", "virtual");
        refused("zram0", "virtual");
        let sdb = &plan.disks.iter().find(|(d, _)| d.name == "sdb").unwrap().0;
        assert!(!sdb.rotational);
        assert_eq!(sdb.model.as_deref(), Some("FAKE DISK"));
        assert_eq!(sdb.serial.as_deref(), Some("SN-sdb"));
        assert_eq!(sdb.size_bytes, 1 << 40);

        // Wipe on request only; boot medium never, even with wipe.
        let mut cfg2 = cfg.clone();
        cfg2.wipe = vec!["sde".into(), "sdb".into()];
        cfg2.boot_devices = vec!["sdb".into()];
        let plan2 = plan_ok(&cfg2);
        assert_eq!(verdict_of(&plan2, "sde"), Verdict::NewPool { wipe: true });
        assert!(matches!(verdict_of(&plan2, "sdb"), Verdict::Refused { .. }));

        // Explicit selection: loop allowed; a refused disk is an error naming it.
        let mut cfg3 = cfg.clone();
        cfg3.selection = DiskSelection::Explicit(vec![cfg.dev_root.join("loop0")]);
        assert_eq!(
            verdict_of(&plan_ok(&cfg3), "loop0"),
            Verdict::NewPool { wipe: false }
        );
        cfg3.selection =
            DiskSelection::Explicit(vec![cfg.dev_root.join("loop0"), cfg.dev_root.join("sde")]);
        match super::plan(&cfg3) {
            Err(Error::DiskRefused {
                disk, considered, ..
            }) => {
                assert_eq!(disk, "sde");
                assert_eq!(considered.len(), 2);
            }
            r => panic!("{r:?}"),
        }
    }

    fn plan_ok(cfg: &DiscoveryConfig) -> Plan {
        plan(cfg).unwrap()
    }

    #[test]
    fn no_usable_disk_lists_considered() {
        let f = FakeSys::new();
        f.disk("sdd", "8:48", &[0u8; 4096], 0, 1);
        let err = plan(&f.cfg()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::NoUsableDisk { .. }));
        assert!(msg.contains("sdd") && msg.contains("removable"), "{msg}");
    }
}
