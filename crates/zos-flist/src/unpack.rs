//! Verified extraction that never writes outside the destination.
//!
//! The destination must be empty (or absent). Every entry is created relative to a
//! directory file descriptor that we created ourselves, with `O_NOFOLLOW`/`O_EXCL`, so a
//! symlink in the flist (absolute or `../..`) is created as a link and never followed.
//! Names were already validated by [`crate::Flist::open`] (no `/`, `..`, NUL, empty).

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, futimens, mkdirat, mknodat, utimensat, FchmodatFlags, Mode, SFlag,
    UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, symlinkat, Gid, Uid};

use crate::error::Error;
use crate::fetch::Fetcher;
use crate::meta::{EntryKind, Flist};
use crate::{Meter, Progress, BLOCK_SIZE};

/// The bound [`unpack`] uses: total bytes of regular files. Callers that know better
/// (the contract's declared disk size) pass theirs to [`unpack_bounded`].
pub const DEFAULT_MAX_EXPANDED: u64 = 8 << 30;

/// How to unpack.
#[derive(Clone, Default)]
pub struct UnpackOptions<'a> {
    /// Parallel file fetchers (0: four per core; fetching is mostly waiting).
    pub threads: usize,
    /// Called after each block is written, with the bytes written so far of the flist's
    /// file bytes; `None`: no progress reported.
    pub progress: Option<Progress<'a>>,
    /// The owners written (as root; otherwise every file is the caller's).
    pub owners: Owners,
}

/// The owners an unpack writes: the flist's own (the default), or moved into a range of
/// host ids for a tree that a user namespace will see (its id `i` is host id
/// `base + i % size`). Writing them while unpacking costs nothing more, where moving
/// them afterwards is a second walk with a chown per entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Owners {
    base: u32,
    /// 0: the recorded ids.
    size: u32,
}

impl Owners {
    /// Container id `i` is written as host id `base + i % size`; `size` 0 keeps the
    /// recorded ids.
    pub fn shifted(base: u32, size: u32) -> Owners {
        Owners { base, size }
    }

    fn id(self, id: u32) -> u32 {
        match self.size {
            0 => id,
            size => self.base.saturating_add(id % size),
        }
    }

    fn uid(self, id: u32) -> Option<Uid> {
        Some(Uid::from_raw(self.id(id)))
    }

    fn gid(self, id: u32) -> Option<Gid> {
        Some(Gid::from_raw(self.id(id)))
    }
}

impl std::fmt::Debug for UnpackOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnpackOptions")
            .field("threads", &self.threads)
            .field("progress", &self.progress.map(|_| "callback"))
            .field("owners", &self.owners)
            .finish()
    }
}

/// What [`unpack`] wrote.
#[derive(Debug, Clone, Default)]
pub struct UnpackReport {
    /// Entries of the flist laid out: directories, files, links and devices.
    pub entries: u64,
    /// Regular files among them.
    pub files: u64,
    /// Bytes written to those files.
    pub bytes: u64,
}

fn errno(path: &Path, e: nix::Error) -> Error {
    Error::io(path, std::io::Error::from(e))
}

fn refuse(path: &Path, reason: impl Into<String>) -> Error {
    Error::Unpack {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// A file waiting to be filled: its fd (created empty, mode 0600) and entry index.
struct OpenFile {
    file: File,
    idx: usize,
    path: PathBuf,
    /// Blocks not yet written; whoever writes the last one finishes the file.
    remaining: AtomicUsize,
}

/// One block of one file: big files are fetched by several workers at once.
struct Job {
    file: Arc<OpenFile>,
    block: usize,
}

/// Extracts `flist` into `dest`, fetching and verifying every block, at most
/// [`DEFAULT_MAX_EXPANDED`] bytes of files (see [`unpack_bounded`]).
pub fn unpack(
    flist: &Flist,
    fetcher: &Fetcher,
    dest: &Path,
    opts: &UnpackOptions<'_>,
) -> Result<UnpackReport, Error> {
    unpack_bounded(flist, fetcher, dest, opts, DEFAULT_MAX_EXPANDED)
}

/// Extracts `flist` into `dest`, fetching and verifying every block, refusing with
/// [`Error::TooLarge`] a flist whose files add up to more than `max_bytes`: checked
/// before anything is created, and again before each block is written (a block that
/// would cross the bound is not written).
pub fn unpack_bounded(
    flist: &Flist,
    fetcher: &Fetcher,
    dest: &Path,
    opts: &UnpackOptions<'_>,
    max_bytes: u64,
) -> Result<UnpackReport, Error> {
    let declared = flist
        .entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .fold(0u64, |sum, e| sum.saturating_add(e.size));
    if declared > max_bytes {
        tracing::warn!(flist = %flist.path.display(), declared, limit = max_bytes,
            "flist refused: it expands beyond the bound");
        return Err(Error::TooLarge {
            path: dest.to_path_buf(),
            declared,
            limit: max_bytes,
        });
    }
    let budget = Budget {
        used: AtomicU64::new(0),
        limit: max_bytes,
        dest,
    };
    prepare_dest(dest)?;
    let root = open_dir(None, dest, dest)?;
    let threads = if opts.threads == 0 {
        4 * std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.threads
    };
    // Only root can give files away.
    let owners = nix::unistd::geteuid().is_root().then_some(opts.owners);
    let failed = AtomicBool::new(false);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let bytes = AtomicU64::new(0);
    let meter = Meter::new(opts.progress, declared);
    let fail = |e: Error| {
        failed.store(true, Ordering::Relaxed);
        first_err.lock().expect("not poisoned").get_or_insert(e);
    };

    // Bounded: the tree walk waits for the fetchers instead of opening every file.
    let (tx, rx) = mpsc::sync_channel::<Job>(threads * 2);
    let rx = Mutex::new(rx);
    std::thread::scope(|s| {
        let rx = &rx;
        let (failed, fail, bytes, budget, meter) = (&failed, &fail, &bytes, &budget, &meter);
        for _ in 0..threads {
            s.spawn(move || loop {
                let job = match rx.lock().expect("not poisoned").recv() {
                    Ok(j) => j,
                    Err(_) => return,
                };
                if failed.load(Ordering::Relaxed) {
                    continue; // drain: drop the fd
                }
                match fill(flist, fetcher, &job, owners, budget) {
                    Ok(n) => {
                        bytes.fetch_add(n, Ordering::Relaxed);
                        meter.add(n);
                    }
                    Err(e) => fail(e),
                }
            });
        }
        if let Err(e) = create_tree(flist, &root, dest, 0, &tx, failed, owners, 0) {
            fail(e);
        }
        drop(tx);
    });
    if let Some(e) = first_err.into_inner().expect("not poisoned") {
        return Err(e);
    }
    Ok(UnpackReport {
        entries: flist.entries.len() as u64,
        files: flist
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .count() as u64,
        bytes: bytes.into_inner(),
    })
}

/// The destination: created if absent; if present, an empty real directory.
fn prepare_dest(dest: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {
            let mut it = std::fs::read_dir(dest).map_err(|e| Error::io(dest, e))?;
            if it.next().is_some() {
                return Err(refuse(dest, "the destination is not empty"));
            }
            Ok(())
        }
        Ok(_) => Err(refuse(
            dest,
            "the destination exists and is not a directory",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir(dest).map_err(|e| Error::io(dest, e))
        }
        Err(e) => Err(Error::io(dest, e)),
    }
}

fn open_dir(at: Option<RawFd>, name: &Path, shown: &Path) -> Result<OwnedFd, Error> {
    let fd = openat(
        at,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| errno(shown, e))?;
    // SAFETY: `openat` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ts(secs: i64) -> TimeSpec {
    TimeSpec::new(secs, 0)
}

/// Depth-first: directories and special entries here, regular files to the fetchers;
/// a directory's own mode, owner and mtime are set after its children exist.
#[allow(clippy::too_many_arguments)]
fn create_tree(
    flist: &Flist,
    dirfd: &OwnedFd,
    dir_path: &Path,
    idx: usize,
    tx: &mpsc::SyncSender<Job>,
    failed: &AtomicBool,
    owners: Option<Owners>,
    depth: usize,
) -> Result<(), Error> {
    // Validation already refuses deeper trees (FormatError::TooDeep); this keeps the
    // recursion bounded even for a Flist built by hand.
    if depth > crate::meta::MAX_DEPTH {
        return Err(refuse(dir_path, "directory tree too deep"));
    }
    let fd = dirfd.as_raw_fd();
    for &c in &flist.entries[idx].children {
        if failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let e = &flist.entries[c];
        let name = Path::new(&e.name);
        let path = dir_path.join(name);
        let perm = Mode::from_bits_truncate(e.perm() as libc::mode_t);
        match e.kind {
            EntryKind::Dir => {
                mkdirat(Some(fd), name, Mode::S_IRWXU).map_err(|er| errno(&path, er))?;
                let sub = open_dir(Some(fd), name, &path)?;
                create_tree(flist, &sub, &path, c, tx, failed, owners, depth + 1)?;
                finish_fd(sub.as_fd(), e, owners, &path)?;
            }
            EntryKind::File => {
                let f = openat(
                    Some(fd),
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::S_IRUSR | Mode::S_IWUSR,
                )
                .map_err(|er| errno(&path, er))?;
                // SAFETY: `openat` just returned this descriptor and nothing else owns it.
                let file = File::from(unsafe { OwnedFd::from_raw_fd(f) });
                if e.blocks.is_empty() {
                    finish_fd(file.as_fd(), e, owners, &path)?;
                    continue;
                }
                let file = Arc::new(OpenFile {
                    file,
                    idx: c,
                    path,
                    remaining: AtomicUsize::new(e.blocks.len()),
                });
                for block in 0..e.blocks.len() {
                    let job = Job {
                        file: file.clone(),
                        block,
                    };
                    if tx.send(job).is_err() {
                        return Ok(());
                    }
                }
            }
            EntryKind::Symlink => {
                let target = OsStr::from_bytes(e.target.as_deref().unwrap_or(b""));
                symlinkat(target, Some(fd), name).map_err(|er| errno(&path, er))?;
                if let Some(o) = owners {
                    fchownat(
                        Some(fd),
                        name,
                        o.uid(e.uid),
                        o.gid(e.gid),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|er| errno(&path, er))?;
                }
                utimensat(
                    Some(fd),
                    name,
                    &ts(e.mtime),
                    &ts(e.mtime),
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|er| errno(&path, er))?;
            }
            EntryKind::Fifo
            | EntryKind::CharDevice
            | EntryKind::BlockDevice
            | EntryKind::Socket => {
                let kind = match e.kind {
                    EntryKind::Fifo => SFlag::S_IFIFO,
                    EntryKind::CharDevice => SFlag::S_IFCHR,
                    EntryKind::BlockDevice => SFlag::S_IFBLK,
                    _ => SFlag::S_IFSOCK,
                };
                mknodat(Some(fd), name, kind, Mode::S_IRUSR | Mode::S_IWUSR, e.rdev)
                    .map_err(|er| errno(&path, er))?;
                if let Some(o) = owners {
                    fchownat(
                        Some(fd),
                        name,
                        o.uid(e.uid),
                        o.gid(e.gid),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|er| errno(&path, er))?;
                }
                // The node was just created by us in a directory we created (and nobody
                // else writes), so following is not a concern; Linux has no lchmod.
                fchmodat(Some(fd), name, perm, FchmodatFlags::FollowSymlink)
                    .map_err(|er| errno(&path, er))?;
                utimensat(
                    Some(fd),
                    name,
                    &ts(e.mtime),
                    &ts(e.mtime),
                    UtimensatFlags::NoFollowSymlink,
                )
                .map_err(|er| errno(&path, er))?;
            }
        }
    }
    if idx == 0 {
        finish_fd(dirfd.as_fd(), &flist.entries[0], owners, dir_path)?;
    }
    Ok(())
}

/// Owner first (chown clears setuid bits), then mode, then mtime.
fn finish_fd(
    fd: BorrowedFd<'_>,
    e: &crate::meta::Entry,
    owners: Option<Owners>,
    path: &Path,
) -> Result<(), Error> {
    let raw = fd.as_raw_fd();
    if let Some(o) = owners {
        fchown(raw, o.uid(e.uid), o.gid(e.gid)).map_err(|er| errno(path, er))?;
    }
    fchmod(raw, Mode::from_bits_truncate(e.perm() as libc::mode_t))
        .map_err(|er| errno(path, er))?;
    futimens(raw, &ts(e.mtime), &ts(e.mtime)).map_err(|er| errno(path, er))
}

/// Bytes written so far against the bound.
struct Budget<'a> {
    used: AtomicU64,
    limit: u64,
    dest: &'a Path,
}

impl Budget<'_> {
    /// Takes `n` bytes, or refuses if that would cross the bound.
    fn take(&self, n: u64) -> Result<(), Error> {
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > self.limit {
            return Err(Error::TooLarge {
                path: self.dest.to_path_buf(),
                declared: before.saturating_add(n),
                limit: self.limit,
            });
        }
        Ok(())
    }
}

/// Fetches, verifies and writes one block, returning its length; the worker that writes
/// a file's last outstanding block finishes the file (owner, mode, mtime).
fn fill(
    flist: &Flist,
    fetcher: &Fetcher,
    job: &Job,
    owners: Option<Owners>,
    budget: &Budget<'_>,
) -> Result<u64, Error> {
    let f = &job.file;
    let e = &flist.entries[f.idx];
    let i = job.block;
    budget.take(e.block_len(i) as u64)?;
    let plain = fetcher.block(&flist.path_of(f.idx), i, &e.blocks[i], e.block_len(i))?;
    f.file
        .write_all_at(&plain, i as u64 * BLOCK_SIZE as u64)
        .map_err(|er| Error::io(&f.path, er))?;
    if f.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        finish_fd(f.file.as_fd(), e, owners, &f.path)?;
    }
    Ok(plain.len() as u64)
}
