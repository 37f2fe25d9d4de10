//! User namespaces of containers: container root is an unprivileged host id.
//!
//! Each contract gets one host id range of [`RANGE_SIZE`] ids (its workloads share
//! volumes, so they share owners), aligned on [`RANGE_SIZE`]: container id `i` is host
//! id `base + i`. A range is allocated once per contract in a small persistent table
//! ([`IdRanges`]), so two contracts never share one.
//!
//! A workload's user namespace is made here, before anything else of the workload
//! exists ([`ensure`]), and kept alive by a bind mount of its nsfs file, like a
//! network namespace. The workload's network namespace is then made *inside* it (see
//! zos-network's `netns::create_owned`), and the container joins both by path. Why not
//! let the runtime unshare the user namespace: libcontainer 0.7 unshares it before it
//! joins the other namespaces, and joining a network namespace needs `CAP_SYS_ADMIN` in
//! the user namespace that owns it, which a namespace the node's root owns refuses.
//! Owned by the workload's user namespace, its network namespace also lets it mount
//! its own sysfs.
//!
//! Files the container sees keep their owners: its root tree is unpacked with owners in
//! the range ([`IdRange::owners`]), and a tree that exists already and its volumes are
//! shifted into the range ([`shift_tree`]) rather than idmapped (kernel 6.18 refuses to
//! idmap a merged overlay). A shift is keyed on the range, so it is
//! idempotent, resumes after a crash, and moves a tree from one range to another.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{lchown, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;

use crate::Error;

/// Ids per contract: a container sees ids `0..RANGE_SIZE`.
pub const RANGE_SIZE: u32 = 1 << 16;
/// The first slot handed out: ids below `FIRST_SLOT * RANGE_SIZE` stay the host's.
const FIRST_SLOT: u32 = 2;
/// The last slot handed out (the top slot holds `u32::MAX`, "no id").
const LAST_SLOT: u32 = (u32::MAX / RANGE_SIZE) - 1;

/// A contract's host id range: container id `i` is host id `base + i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    base: u32,
}

impl IdRange {
    /// The range of slot `slot` (`FIRST_SLOT..=LAST_SLOT`).
    fn of_slot(slot: u32) -> IdRange {
        IdRange {
            base: slot * RANGE_SIZE,
        }
    }

    /// Host id of container id 0.
    pub fn base(self) -> u32 {
        self.base
    }

    /// The host id of container id `inner` (ids past the range fold into it).
    pub fn host_id(self, inner: u32) -> u32 {
        self.base + (inner % RANGE_SIZE)
    }

    /// The host id `id` moved into this range, or `None` when it is in it already
    /// (every range is aligned, so an id's range is its high bits).
    fn shifted(self, id: u32) -> Option<u32> {
        let inner = id % RANGE_SIZE;
        (id - inner != self.base).then_some(self.base + inner)
    }

    /// How an unpack writes a tree this range's user namespace will see (what
    /// [`shift_tree`] would make of it, without the second walk).
    pub fn owners(self) -> zos_flist::Owners {
        zos_flist::Owners::shifted(self.base, RANGE_SIZE)
    }

    /// The line of `/proc/<pid>/uid_map` and `gid_map`.
    fn map_line(self) -> String {
        format!("0 {} {}\n", self.base, RANGE_SIZE)
    }
}

/// The node's table of contract id ranges: `owners/<owner>` holds a slot number,
/// `slots/<n>` (created exclusively) the owner that holds it.
pub struct IdRanges {
    dir: PathBuf,
}

impl IdRanges {
    /// The table under `dir` (created when first needed).
    pub fn new(dir: impl Into<PathBuf>) -> IdRanges {
        IdRanges { dir: dir.into() }
    }

    /// The range of `owner` (a contract id), allocated on first use: the first free
    /// slot from one derived from the owner, so allocations rarely probe.
    pub fn of(&self, owner: &str) -> Result<IdRange, Error> {
        let io = |what: &str, p: &Path, e: std::io::Error| {
            Error::UserNamespace(format!("id ranges: {what} {}: {e}", p.display()))
        };
        if owner.is_empty() || owner.contains('/') || owner.starts_with('.') {
            return Err(Error::UserNamespace(format!(
                "bad id range owner {owner:?}"
            )));
        }
        let owners = self.dir.join("owners");
        let slots = self.dir.join("slots");
        for d in [&owners, &slots] {
            fs::create_dir_all(d).map_err(|e| io("creating", d, e))?;
        }
        let owned = owners.join(owner);
        if let Ok(text) = fs::read_to_string(&owned) {
            if let Ok(slot) = text.trim().parse::<u32>() {
                if (FIRST_SLOT..=LAST_SLOT).contains(&slot)
                    && fs::read_to_string(slots.join(slot.to_string()))
                        .ok()
                        .as_deref()
                        == Some(owner)
                {
                    return Ok(IdRange::of_slot(slot));
                }
            }
        }
        let count = LAST_SLOT - FIRST_SLOT + 1;
        let start = fnv1a(owner.as_bytes()) % count;
        for probe in 0..count {
            let slot = FIRST_SLOT + (start + probe) % count;
            let path = slots.join(slot.to_string());
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(owner.as_bytes())
                        .and_then(|_| f.sync_all())
                        .map_err(|e| io("writing", &path, e))?;
                    write_atomic(&owned, slot.to_string().as_bytes())
                        .map_err(|e| io("writing", &owned, e))?;
                    tracing::info!(owner, base = slot * RANGE_SIZE, "id range allocated");
                    return Ok(IdRange::of_slot(slot));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // Ours already (a crash before the owner file was written)?
                    if fs::read_to_string(&path).ok().as_deref() == Some(owner) {
                        write_atomic(&owned, slot.to_string().as_bytes())
                            .map_err(|e| io("writing", &owned, e))?;
                        return Ok(IdRange::of_slot(slot));
                    }
                }
                Err(e) => return Err(io("creating", &path, e)),
            }
        }
        Err(Error::UserNamespace("every id range is taken".into()))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

/// FNV-1a: a stable spread of owners over the slots (not a security property: the
/// table, not the hash, keeps ranges apart).
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// True when `path` is a mounted namespace file (nsfs).
pub fn is_mounted(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Makes the user namespace file `path` unless it is mounted already: a new user
/// namespace mapping container ids `0..RANGE_SIZE` to `range`. Returns true if made.
pub fn ensure(path: &Path, range: IdRange) -> Result<bool, Error> {
    if is_mounted(path) {
        return Ok(false);
    }
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::UserNamespace(format!("{}: {what}: {e}", path.display()))
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| fail("creating its directory", &e))?;
    }
    // A stale file (a crash between create and mount, a reboot) is mounted over.
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| fail("creating", &e))?;
    let mut stack = vec![0u8; 64 * 1024];
    let child = Box::new(|| {
        // The child only waits to be killed: a raw syscall, nothing that allocates or
        // locks (it is a copy of a threaded process).
        loop {
            // SAFETY: pause(2) takes no arguments and touches no memory.
            unsafe { libc::pause() };
        }
    });
    // SAFETY: without CLONE_VM the child runs on its own copy of the address space
    // and only calls pause(2) (above); the stack outlives the call, which returns once
    // the child exists.
    let pid = unsafe {
        nix::sched::clone(
            child,
            &mut stack,
            CloneFlags::CLONE_NEWUSER,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| fail("clone(CLONE_NEWUSER)", &e))?;
    let made = (|| {
        for map in ["uid_map", "gid_map"] {
            fs::write(format!("/proc/{pid}/{map}"), range.map_line())
                .map_err(|e| fail(&format!("writing {map}"), &e))?;
        }
        mount(
            Some(format!("/proc/{pid}/ns/user").as_str()),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| fail("bind mount", &e))
    })();
    let _ = kill(pid, Signal::SIGKILL);
    let _ = waitpid(pid, None);
    if let Err(e) = made {
        let _ = fs::remove_file(path);
        return Err(e);
    }
    tracing::debug!(userns = %path.display(), base = range.base(), "user namespace made");
    Ok(true)
}

/// Removes the user namespace file `path`. Returns true if there was one.
pub fn remove(path: &Path) -> Result<bool, Error> {
    let mut existed = false;
    if is_mounted(path) {
        umount2(path, MntFlags::MNT_DETACH)
            .map_err(|e| Error::UserNamespace(format!("umount {}: {e}", path.display())))?;
        existed = true;
    }
    match fs::remove_file(path) {
        Ok(()) => existed = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::UserNamespace(format!(
                "unlink {}: {e}",
                path.display()
            )))
        }
    }
    Ok(existed)
}

/// Moves every owner under `root` (not following symlinks, not crossing into other
/// mounts) into `range`, the root itself last: once the root is in the range, so is
/// everything under it, and a shift cut short by a crash resumes. Set-id bits that a
/// chown clears are put back. Returns how many entries changed.
pub fn shift_tree(root: &Path, range: IdRange) -> Result<u64, Error> {
    let meta = fs::symlink_metadata(root)
        .map_err(|e| Error::UserNamespace(format!("{}: {e}", root.display())))?;
    if range.shifted(meta.uid()).is_none() && range.shifted(meta.gid()).is_none() {
        return Ok(0);
    }
    let mut changed = 0;
    shift_below(root, meta.dev(), range, &mut changed)?;
    shift_one(root, &meta, range, &mut changed)?;
    tracing::info!(root = %root.display(), base = range.base(), changed, "tree shifted into its id range");
    Ok(changed)
}

fn shift_below(dir: &Path, dev: u64, range: IdRange, changed: &mut u64) -> Result<(), Error> {
    let err = |p: &Path, e: std::io::Error| Error::UserNamespace(format!("{}: {e}", p.display()));
    for entry in fs::read_dir(dir).map_err(|e| err(dir, e))? {
        let entry = entry.map_err(|e| err(dir, e))?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(|e| err(&path, e))?;
        if meta.is_dir() && meta.dev() == dev {
            shift_below(&path, dev, range, changed)?;
        }
        if meta.dev() == dev {
            shift_one(&path, &meta, range, changed)?;
        }
    }
    Ok(())
}

fn shift_one(
    path: &Path,
    meta: &fs::Metadata,
    range: IdRange,
    changed: &mut u64,
) -> Result<(), Error> {
    let (uid, gid) = (range.shifted(meta.uid()), range.shifted(meta.gid()));
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    let err = |e: std::io::Error| Error::UserNamespace(format!("{}: {e}", path.display()));
    lchown(path, uid, gid).map_err(err)?;
    let mode = meta.mode() & 0o7777;
    if meta.is_file() && mode & 0o6000 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    *changed += 1;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_aligned_and_shift_by_their_high_bits() {
        let r = IdRange::of_slot(3);
        assert_eq!(r.base(), 3 << 16);
        assert_eq!(r.host_id(0), 3 << 16);
        assert_eq!(r.host_id(65534), (3 << 16) + 65534);
        assert_eq!(r.shifted(0), Some(3 << 16));
        assert_eq!(r.shifted(1000), Some((3 << 16) + 1000));
        // In the range already: untouched (idempotent).
        assert_eq!(r.shifted((3 << 16) + 5), None);
        // From another range: moved, keeping the container id.
        assert_eq!(r.shifted((7 << 16) + 5), Some((3 << 16) + 5));
        assert_eq!(r.map_line(), format!("0 {} 65536\n", 3 << 16));
    }

    #[test]
    fn owners_keep_their_range_and_never_share_one() {
        let dir = tempfile::tempdir().unwrap();
        let t = IdRanges::new(dir.path());
        let a = t.of("contract-a").unwrap();
        let b = t.of("contract-b").unwrap();
        assert_ne!(a, b);
        assert_eq!(t.of("contract-a").unwrap(), a);
        assert!(a.base() >= FIRST_SLOT * RANGE_SIZE && b.base() >= FIRST_SLOT * RANGE_SIZE);
        // Another table over the same directory (a restart) finds the same ranges.
        assert_eq!(IdRanges::new(dir.path()).of("contract-b").unwrap(), b);
        // A slot taken by another owner under the hash start is probed past.
        let c_start = FIRST_SLOT + fnv1a(b"contract-c") % (LAST_SLOT - FIRST_SLOT + 1);
        fs::write(
            dir.path().join("slots").join(c_start.to_string()),
            "squatter",
        )
        .unwrap();
        let c = t.of("contract-c").unwrap();
        assert_ne!(c.base(), c_start * RANGE_SIZE);
        assert!(matches!(t.of("../x"), Err(Error::UserNamespace(_))));
    }

    #[test]
    fn a_tree_moves_into_its_range_keeping_set_id_bits() {
        // chown needs root: a counted SKIP line with ZOS_SKIP_PRIVILEGED=1, else a failure.
        if !zos_testkit::Needs::root().check("a_tree_moves_into_its_range_keeping_set_id_bits") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), "root:x:0:0").unwrap();
        fs::write(root.join("su"), "").unwrap();
        fs::set_permissions(root.join("su"), fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", root.join("link")).unwrap();
        lchown(root.join("etc/passwd"), Some(0), Some(42)).unwrap();
        let r = IdRange::of_slot(5);
        assert_eq!(shift_tree(&root, r).unwrap(), 5);
        let m = |p: &str| fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!(
            (m("etc/passwd").uid(), m("etc/passwd").gid()),
            (r.base(), r.base() + 42)
        );
        assert_eq!(m("su").mode() & 0o7777, 0o4755);
        assert_eq!(m("link").uid(), r.base());
        // The link's target was not followed.
        assert_eq!(fs::metadata("/etc/shadow").unwrap().uid(), 0);
        assert_eq!(m("").uid(), r.base());
        // Idempotent; and a move to another range keeps the container ids.
        assert_eq!(shift_tree(&root, r).unwrap(), 0);
        let r2 = IdRange::of_slot(9);
        assert_eq!(shift_tree(&root, r2).unwrap(), 5);
        assert_eq!(m("etc/passwd").gid(), r2.base() + 42);
    }
}
