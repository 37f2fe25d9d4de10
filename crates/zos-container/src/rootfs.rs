//! Root filesystems of containers: the pinned flist, fetched, verified and unpacked
//! into a read-only tree (zos-flist's [`PinnedTrees`]), and an overlayfs per container
//! whose upper layer is the container's own.
//!
//! A container's tree, its flist and its upper layer live on a pool, in a subvolume of
//! its own (`rootfs-<kernel id>`, a zos-storage volume) whose quota is the workload's
//! `disk_mib` (`zos_contract::deployment::DEFAULT_CONTAINER_DISK_MIB` when it declares
//! none, which admission reserves too): they count against its contract, a write past
//! them fails with EDQUOT, and they survive a reboot, so the workload comes back
//! without its flist store. Blocks are not cached beside the tree (they would count
//! twice); only the merged mount point is under the state dir.
//!
//! Why unpack rather than the lazy FUSE mount: a FUSE filesystem lives in the process
//! that serves it, and zosd may be killed and restarted while workloads keep running;
//! their root filesystems must not depend on zosd being alive. The unpack verifies every
//! block exactly like the mount would.
//!
//! Layout of a container's subvolume:
//! - `flists/<sha256>.fl`: the verified flist bytes;
//! - `trees/<sha256>/`: the unpacked tree (renamed into place when complete);
//! - `upper/`, `work/`: the overlay's upper layer and work dir;
//!
//! and `<state>/workloads/<name>/rootfs`: the merged mount point.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use zos_contract::deployment::FlistRef;
use zos_engine::ProvisionError;
use zos_flist::{DirAccess, PinnedTrees};
use zos_storage::{PoolKind, Storage};

use crate::userns::{shift_tree, IdRange};

/// Prefix of the subvolume (zos-storage volume) of a container's root filesystem. The
/// contracts' volumes are `<contract>.<name>` or `h-<hash>`: never this.
pub const VOLUME_PREFIX: &str = "rootfs-";

/// The quota of a container root declaring `disk_mib` (0: the default, which admission
/// reserves too).
fn rootfs_mib(disk_mib: u64) -> u64 {
    if disk_mib == 0 {
        zos_contract::deployment::DEFAULT_CONTAINER_DISK_MIB
    } else {
        disk_mib
    }
}

/// The volume name of the root filesystem of the workload with kernel id `id`.
pub(crate) fn volume_name(id: &str) -> String {
    format!("{VOLUME_PREFIX}{id}")
}

/// The kernel id of a root filesystem volume, if `volume` is one.
pub(crate) fn volume_id(volume: &str) -> Option<&str> {
    volume.strip_prefix(VOLUME_PREFIX)
}

/// The overlay roots of the containers of a node. See the module docs.
pub struct Rootfs {
    state: PathBuf,
    storage: Arc<Storage>,
    /// Where `dir://` flist URLs and stores may point (the node's store roots).
    access: DirAccess,
}

fn err(name: &str, e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::new("flist", name, e.to_string())
}

/// This crate's error as the source, permanent when it says so.
fn typed(name: &str, e: crate::Error) -> ProvisionError {
    let permanent = e.is_permanent();
    ProvisionError::from_source("flist", name, e).permanent_if(permanent)
}

impl Rootfs {
    /// Mount points under `<state>/workloads`, subvolumes on `storage`'s pools, flists
    /// read only where `access` allows.
    pub fn new(state: &Path, storage: Arc<Storage>, access: DirAccess) -> Rootfs {
        Rootfs {
            state: state.to_path_buf(),
            storage,
            access,
        }
    }

    /// The workload's subvolume on a pool, created (or resized) to `disk_mib`.
    fn home(&self, name: &str, id: &str, disk_mib: u64) -> Result<PathBuf, ProvisionError> {
        self.storage
            .volume_ensure(&volume_name(id), rootfs_mib(disk_mib) << 20, PoolKind::Ssd)
            .map(|v| v.path)
            .map_err(|e| typed(name, crate::Error::RootVolume(e)))
    }

    fn workload_dir(&self, name: &str) -> PathBuf {
        self.state.join("workloads").join(name)
    }

    /// Where the root of container `name` is mounted.
    pub fn merged(&self, name: &str) -> PathBuf {
        self.workload_dir(name).join("rootfs")
    }

    /// True when the root of container `name` is mounted.
    pub fn is_mounted(&self, name: &str) -> bool {
        is_mountpoint(&self.merged(name))
    }

    /// The merged root of container `name` (kernel id `id`), creating what is missing:
    /// its subvolume of `disk_mib`, the verified flist unpacked there (unless it already
    /// is: no store needed after a reboot), its tree and upper layer owned in `ids` (the
    /// contract's host id range, when the container has a user namespace), the overlay.
    /// Idempotent.
    pub fn ensure(
        &self,
        name: &str,
        id: &str,
        flist: &FlistRef,
        disk_mib: u64,
        ids: Option<IdRange>,
    ) -> Result<PathBuf, ProvisionError> {
        let merged = self.merged(name);
        if is_mountpoint(&merged) {
            return Ok(merged);
        }
        let home = self.home(name, id, disk_mib)?;
        // The tree lives in the workload's subvolume: its quota bounds it anyway, and the
        // unpack refuses a flist that declares more before writing anything.
        // Owners in the range as the tree is written: shifting them afterwards was a
        // second walk of the tree, about a fifth of a publish to running.
        let trees = PinnedTrees::new(home.join("flists"), home.join("trees"))
            .with_owners(ids.map(IdRange::owners).unwrap_or_default());
        let lower = trees
            .ensure(flist, &self.access, rootfs_mib(disk_mib) << 20)
            // A refused flist (pin, signature, bad blocks, too large) fails again: that
            // is for good (zos-flist says so). An unreachable store may come back.
            .map_err(|e| {
                let permanent = e.is_permanent();
                ProvisionError::from_source("flist", name, e).permanent_if(permanent)
            })?;
        // Trees of earlier versions of the flist: not mounted (this one is not yet).
        trees.prune_except(&lower);
        let (upper, work) = (home.join("upper"), home.join("work"));
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d).map_err(|e| err(name, format!("{}: {e}", d.display())))?;
        }
        if let Some(ids) = ids {
            // Container root writes its own files: the tree it sees and the layer it
            // writes are owned in its range (the work dir stays the node's: overlay
            // uses it with the mounter's credentials). A tree unpacked just now is in
            // it already (one stat); one from before, or from another range, moves.
            for tree in [&lower, &upper] {
                shift_tree(tree, ids).map_err(|e| typed(name, e))?;
            }
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            MsFlags::MS_NODEV,
            Some(data.as_str()),
        )
        .map_err(|e| err(name, format!("overlay on {}: {e}", merged.display())))?;
        Ok(merged)
    }

    /// Unmounts and deletes the workload's overlay, and its subvolume (tree and upper
    /// layer) when its kernel id `id` is known.
    pub fn remove(&self, name: &str, id: Option<&str>) -> Result<(), ProvisionError> {
        let dir = self.workload_dir(name);
        let merged = dir.join("rootfs");
        if is_mountpoint(&merged) {
            umount2(&merged, MntFlags::MNT_DETACH)
                .map_err(|e| err(name, format!("umount {}: {e}", merged.display())))?;
        }
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(name, format!("removing {}: {e}", dir.display()))),
        }
        if let Some(id) = id {
            self.storage
                .volume_remove(&volume_name(id))
                .map_err(|e| err(name, format!("root filesystem: {e}")))?;
        }
        Ok(())
    }

    /// Names of the workloads that have a directory here.
    pub fn workloads(&self) -> Vec<String> {
        fs::read_dir(self.state.join("workloads"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kernel ids of the root filesystem subvolumes on the pools (with or without a
    /// container: a crash, a reboot).
    pub(crate) fn volume_ids(&self) -> Result<Vec<String>, zos_storage::Error> {
        Ok(self
            .storage
            .volumes()?
            .iter()
            .filter_map(|v| volume_id(&v.name).map(str::to_owned))
            .collect())
    }
}

/// True when `path` is a mount point (per /proc/self/mountinfo).
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mountinfo_has(&info, path)
}

/// True when the mountinfo text `info` lists `path` as a mount point.
fn mountinfo_has(info: &str, path: &Path) -> bool {
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_without_disk_mib_gets_the_default_quota() {
        assert_eq!(
            rootfs_mib(0),
            zos_contract::deployment::DEFAULT_CONTAINER_DISK_MIB
        );
        assert_eq!(rootfs_mib(512), 512);
    }

    #[test]
    fn volume_names_round_trip_and_tenant_volumes_are_not_roots() {
        assert_eq!(volume_name("0123abcd"), "rootfs-0123abcd");
        assert_eq!(volume_id(&volume_name("0123abcd")), Some("0123abcd"));
        assert_eq!(volume_id("c1.data"), None);
        assert_eq!(volume_id("h-0123456789"), None);
    }

    #[test]
    fn mountinfo_paths_are_unescaped_and_matched_whole() {
        let info = "36 35 98:0 / /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 98:0 / /mnt/plain rw - tmpfs tmpfs rw\n";
        assert!(mountinfo_has(info, Path::new("/mnt/a b")));
        assert!(mountinfo_has(info, Path::new("/mnt/plain")));
        assert!(!mountinfo_has(info, Path::new("/mnt/a\\040b")));
        assert!(!mountinfo_has(info, Path::new("/mnt")));
        assert_eq!(unescape_mountinfo("a\\011b\\012c\\134d"), "a\tb\nc\\d");
    }
}
