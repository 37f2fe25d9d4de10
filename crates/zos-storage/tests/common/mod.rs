//! Real-kernel fixtures: loop devices on sparse `zt-*` files, cleaned up by `Drop`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use zos_storage::{DiscoveryConfig, DiskSelection, PoolKind, StorageConfig};

pub const MIB: u64 = 1 << 20;

/// Fail loudly unless the machine can run privileged storage tests; with
/// `ZOS_SKIP_PRIVILEGED=1` print a counted SKIP line instead and return false.
pub fn privileged(test: &str) -> bool {
    let mut needs = zos_testkit::Needs::root();
    for bin in ["mkfs.btrfs", "losetup", "mkfs.ext4"] {
        needs = needs.bin_from(bin, "btrfs-progs e2fsprogs mount");
    }
    needs.check(test)
}

/// A loop device we attached; detached by the path `losetup` gave back.
pub struct Loop {
    pub dev: PathBuf,
    pub name: String,
}

impl Loop {
    pub fn attach(file: &Path) -> Loop {
        let mut last = String::new();
        for attempt in 0..10 {
            let out = Command::new("losetup")
                .args(["--find", "--show"])
                .arg(file)
                .output()
                .expect("run losetup");
            if out.status.success() {
                let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                let name = dev.file_name().unwrap().to_string_lossy().into_owned();
                return Loop { dev, name };
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(std::time::Duration::from_millis(20 * (attempt + 1)));
        }
        panic!("losetup --find --show {}: {last}", file.display());
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// A temp dir holding `zt-*` image files and the pools root, plus the loop devices.
/// Drop unmounts everything mounted under the temp dir, then detaches the loops.
pub struct Fixture {
    pub loops: Vec<Option<Loop>>,
    pub prefix: String,
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new(n: usize, size: u64) -> Fixture {
        let dir = zos_testkit::tempdir("storage");
        let prefix = format!("{}-", zos_testkit::tag(4));
        let mut f = Fixture {
            loops: Vec::new(),
            prefix,
            dir,
        };
        for i in 0..n {
            let img = f.dir.path().join(format!("zt-disk{i}.img"));
            std::fs::File::create(&img).unwrap().set_len(size).unwrap();
            f.loops.push(Some(Loop::attach(&img)));
        }
        f
    }

    pub fn pools_root(&self) -> PathBuf {
        self.dir.path().join("pools")
    }

    pub fn loop_(&self, i: usize) -> &Loop {
        self.loops[i].as_ref().expect("attached")
    }

    /// Storage config over the given loop indices (kinds: first SSD, others as listed).
    pub fn config(&self, idx: &[usize], kinds: &[PoolKind]) -> StorageConfig {
        let mut cfg = StorageConfig::new(self.pools_root());
        cfg.discovery = DiscoveryConfig {
            selection: DiskSelection::Explicit(
                idx.iter().map(|&i| self.loop_(i).dev.clone()).collect(),
            ),
            label_prefix: self.prefix.clone(),
            ..DiscoveryConfig::default()
        };
        for (&i, &k) in idx.iter().zip(kinds) {
            cfg.kind_override.insert(self.loop_(i).name.clone(), k);
        }
        cfg
    }

    /// Mountpoints under our temp dir (ours by construction), deepest first.
    pub fn our_mounts(&self) -> Vec<PathBuf> {
        zos_testkit::mounts_under(self.dir.path())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for mp in self.our_mounts() {
            if nix::mount::umount2(&mp, nix::mount::MntFlags::empty()).is_ok() {
                continue;
            }
            if let Err(e) = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("cleanup: umount {}: {e}", mp.display());
            }
        }
        // Then `loops` detach, then the temp dir goes.
    }
}

/// sha256 of the first `n` bytes of a device.
pub fn head_digest(dev: &Path, n: usize) -> String {
    use sha2::Digest;
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open(dev)
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    hex::encode(sha2::Sha256::digest(&buf))
}
