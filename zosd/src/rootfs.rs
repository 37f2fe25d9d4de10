//! Root filesystems of workloads: the pinned flist, fetched and verified, unpacked into
//! a read-only tree, and an overlayfs per workload whose upper layer is the workload's
//! own.
//!
//! A container's tree, its flist and its upper layer live on a pool, in a subvolume of
//! its own (`rootfs-<workload id>`, a zos-storage volume) whose quota is the workload's
//! `disk_mib` (`zos_contract::deployment::DEFAULT_CONTAINER_DISK_MIB` when it declares
//! none, which admission reserves too): they count against its contract, a write past them fails with EDQUOT, and they survive a reboot, so the
//! workload comes back without its flist store. Blocks are not cached beside the tree
//! (they would count twice); only the merged mount point is under the state dir.
//!
//! Why unpack rather than the lazy FUSE mount: a FUSE filesystem lives in the process
//! that serves it, and zosd may be killed and restarted while workloads keep running;
//! their root filesystems must not depend on zosd being alive. The unpack verifies every
//! block exactly like the mount would, and identical flists share one tree.
//!
//! Layout of a container's subvolume:
//! - `flists/<sha256>.fl`: the verified flist bytes;
//! - `trees/<sha256>/`: the unpacked tree (renamed into place when complete);
//! - `upper/`, `work/`: the overlay's upper layer and work dir;
//!
//! and `<state>/workloads/<name>/rootfs`: the merged mount point.
//!
//! A VM's kernel tree (its root disk is a vdisk) is still unpacked under the state dir,
//! shared per flist: `flists/<sha256>.fl`, `blocks/`, `rootfs/<sha256>/`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use zos_contract::deployment::FlistRef;
use zos_contract::Digest;
use zos_engine::ProvisionError;
use zos_flist::{BlockCache, DirAccess, Fetcher, Flist, FlistSignature, Router, UnpackOptions};
use zos_storage::{PoolKind, Storage};

/// Largest `.fl` accepted (the metadata of a whole OS image is a few MiB).
const MAX_FLIST_BYTES: usize = 256 << 20;

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
pub fn volume_name(id: &str) -> String {
    format!("{VOLUME_PREFIX}{id}")
}

pub struct Rootfs {
    state: PathBuf,
    storage: Arc<Storage>,
    /// Where `dir://` flist URLs and stores may point (the node's store roots).
    access: DirAccess,
}

fn err(name: &str, message: impl Into<String>) -> ProvisionError {
    ProvisionError::new("flist", name, message)
}

impl Rootfs {
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
            .map_err(|e| err(name, format!("root filesystem: {e}")).permanent_if(e.is_permanent()))
    }

    fn workload_dir(&self, name: &str) -> PathBuf {
        self.state.join("workloads").join(name)
    }

    /// The merged root of container `name` (kernel id `id`), creating what is missing:
    /// its subvolume of `disk_mib`, the verified flist unpacked there (unless it already
    /// is: no store needed after a reboot), the overlay. Idempotent.
    pub fn ensure(
        &self,
        name: &str,
        id: &str,
        flist: &FlistRef,
        disk_mib: u64,
    ) -> Result<PathBuf, ProvisionError> {
        let dir = self.workload_dir(name);
        let merged = dir.join("rootfs");
        if is_mountpoint(&merged) {
            return Ok(merged);
        }
        let home = self.home(name, id, disk_mib)?;
        // The tree lives in the workload's subvolume: its quota bounds it anyway, and the
        // unpack refuses a flist that declares more before writing anything.
        let bound = rootfs_mib(disk_mib) << 20;
        let lower = self.unpack_into(
            name,
            flist,
            &home.join("flists"),
            &home.join("trees"),
            None,
            bound,
        )?;
        // Trees of earlier versions of the flist: not mounted (this one is not yet).
        let keep = lower.file_name().map(|n| n.to_owned());
        for old in fs::read_dir(home.join("trees"))
            .into_iter()
            .flatten()
            .flatten()
        {
            if Some(old.file_name()) != keep {
                let _ = fs::remove_dir_all(old.path());
            }
        }
        let (upper, work) = (home.join("upper"), home.join("work"));
        for d in [&upper, &work, &merged] {
            fs::create_dir_all(d).map_err(|e| err(name, format!("{}: {e}", d.display())))?;
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

    /// The unpacked tree of `flist` under the state dir, fetching, verifying and
    /// unpacking it if needed: a VM's kernel is read from here. Shared by every VM of
    /// that flist: read it, never write it.
    pub fn unpacked(&self, name: &str, flist: &FlistRef) -> Result<PathBuf, ProvisionError> {
        self.unpack_into(
            name,
            flist,
            &self.state.join("flists"),
            &self.state.join("rootfs"),
            Some(BlockCache::new(self.state.join("blocks"))),
            zos_flist::DEFAULT_MAX_EXPANDED,
        )
    }

    /// `trees/<sha256>` of `flist`, made if missing: the `.fl` fetched and verified
    /// into `flists/`, every block verified, at most `max_bytes` of files.
    fn unpack_into(
        &self,
        name: &str,
        flist: &FlistRef,
        flists: &Path,
        trees: &Path,
        cache: Option<BlockCache>,
        max_bytes: u64,
    ) -> Result<PathBuf, ProvisionError> {
        let sha = flist.sha256.to_hex();
        let tree = trees.join(&sha);
        if tree.is_dir() {
            return Ok(tree);
        }
        let bytes = fetch_verified(name, flist, &self.access)?;
        let fl_path = flists.join(format!("{sha}.fl"));
        write_atomic(&fl_path, &bytes)
            .map_err(|e| err(name, format!("{}: {e}", fl_path.display())))?;
        let parsed = Flist::from_bytes(&fl_path, &bytes)
            .map_err(|e| err(name, e.to_string()).permanent())?;
        let router = Router::parse_in(&flist.stores, &self.access)
            .map_err(|e| err(name, e.to_string()).permanent())?;
        let fetcher = Fetcher::new(router, cache);
        // Unpack beside the final place, then rename: a crash never leaves a half tree
        // that looks complete.
        let partial = trees.join(format!(".{sha}.partial"));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial)
            .map_err(|e| err(name, format!("{}: {e}", partial.display())))?;
        let opts = UnpackOptions::default();
        if let Err(e) = zos_flist::unpack_bounded(&parsed, &fetcher, &partial, &opts, max_bytes) {
            let _ = fs::remove_dir_all(&partial);
            // A bad block or an oversized tree will fail again: that is for good. An
            // unreachable store may come back: that is retried.
            let permanent = e.is_permanent();
            let e = err(name, e.to_string());
            return Err(if permanent { e.permanent() } else { e });
        }
        // Every file of the tree on the disk before the rename that says it is complete:
        // a power cut after an fsync of `trees` alone left `trees/<sha>` in place with
        // files missing (found by tests/e2e powercut: `/hello` ENOENT after re-adoption).
        // One syncfs of the pool, not an fsync per file.
        let trees_dir =
            fs::File::open(trees).map_err(|e| err(name, format!("{}: {e}", trees.display())))?;
        nix::unistd::syncfs(std::os::fd::AsRawFd::as_raw_fd(&trees_dir))
            .map_err(|e| err(name, format!("syncfs {}: {e}", trees.display())))?;
        fs::rename(&partial, &tree).map_err(|e| err(name, format!("{}: {e}", tree.display())))?;
        trees_dir
            .sync_all()
            .map_err(|e| err(name, format!("{}: {e}", trees.display())))?;
        Ok(tree)
    }
}

/// The `.fl` bytes, checked against the contract's pin and, when it names publishers,
/// against a detached signature by one of them.
fn fetch_verified(
    name: &str,
    flist: &FlistRef,
    access: &DirAccess,
) -> Result<Vec<u8>, ProvisionError> {
    let bytes =
        fetch(&flist.url, access).map_err(|e| err(name, format!("fetching {}: {e}", flist.url)))?;
    let actual = Digest::of(&bytes);
    if actual != flist.sha256 {
        return Err(err(
            name,
            format!(
                "{} has sha256 {actual}, the contract pins {}",
                flist.url, flist.sha256
            ),
        )
        .permanent());
    }
    if !flist.publishers.is_empty() {
        let sig_url = format!("{}.sig", flist.url);
        let text =
            fetch(&sig_url, access).map_err(|e| err(name, format!("fetching {sig_url}: {e}")))?;
        let sig = FlistSignature::parse(Path::new(&sig_url), &text)
            .map_err(|e| err(name, e.to_string()).permanent())?;
        sig.check(&actual.0, &flist.publishers)
            .map_err(|e| err(name, e.to_string()).permanent())?;
    }
    Ok(bytes)
}

/// Reads `dir:///path` (only under the store roots, a regular file reached without a
/// link, never blocking) or `http://host/path`, at most [`MAX_FLIST_BYTES`].
fn fetch(url: &str, access: &DirAccess) -> Result<Vec<u8>, String> {
    use std::io::Read;
    if url.starts_with("dir://") {
        return zos_flist::read_dir_url(url, access, MAX_FLIST_BYTES as u64)
            .map_err(|e| e.to_string());
    }
    let reader: Box<dyn Read> = if url.starts_with("http://") {
        let resp = reqwest::blocking::get(url).map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        Box::new(resp)
    } else {
        return Err("only dir:// and http:// flist URLs are supported".into());
    };
    let mut bytes = Vec::new();
    reader
        .take(MAX_FLIST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() > MAX_FLIST_BYTES {
        return Err(format!("larger than {MAX_FLIST_BYTES} bytes"));
    }
    Ok(bytes)
}

/// Replaces `path` with `bytes`: temp file, fsync, rename, fsync of the directory, so
/// a crash leaves the old content or the new, never a mix, and a completed call is on
/// the disk (the rename included).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("a file under the state dir");
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

/// True when `path` is a mount point (per /proc/self/mountinfo).
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
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
