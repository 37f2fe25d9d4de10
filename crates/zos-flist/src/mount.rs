//! A lazy, read-only FUSE view of a flist: metadata answers from memory, file data is
//! fetched block by block on first read, verified, and shared through the block cache.
//!
//! Inode numbers seen by the kernel are entry index + 1, so the root is FUSE's inode 1
//! whatever number the flist gave it.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackgroundSession, FileAttr, FileType, Filesystem, MountOption, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEntry, Request,
};

use crate::error::Error;
use crate::fetch::Fetcher;
use crate::meta::{Entry, EntryKind, Flist};
use crate::BLOCK_SIZE;

/// The tree never changes while mounted, so the kernel may cache names and attributes.
const TTL: Duration = Duration::from_secs(300);

/// Mount settings.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let other users (and containers running as other uids) read the mount.
    pub allow_other: bool,
    /// Honour setuid bits and device nodes (off by default: a flist is data).
    pub suid_dev: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            allow_other: true,
            suid_dev: false,
        }
    }
}

/// Reads that need a fetch run on this many threads, so one slow block (an HTTP store)
/// does not stall lookups and reads of cached data, and readahead overlaps.
const READ_THREADS: usize = 4;

struct ReadJob {
    idx: usize,
    offset: u64,
    size: u32,
    reply: ReplyData,
}

struct FlistFs {
    flist: Arc<Flist>,
    nlinks: Vec<u32>,
    /// Dropped with the filesystem when the session ends; the readers then exit.
    reads: mpsc::Sender<ReadJob>,
}

fn time(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fn file_type(k: EntryKind) -> FileType {
    match k {
        EntryKind::File => FileType::RegularFile,
        EntryKind::Dir => FileType::Directory,
        EntryKind::Symlink => FileType::Symlink,
        EntryKind::Fifo => FileType::NamedPipe,
        EntryKind::CharDevice => FileType::CharDevice,
        EntryKind::BlockDevice => FileType::BlockDevice,
        EntryKind::Socket => FileType::Socket,
    }
}

impl FlistFs {
    fn new(flist: Arc<Flist>, fetcher: Arc<Fetcher>) -> Self {
        let (tx, rx) = mpsc::channel::<ReadJob>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..READ_THREADS {
            let (rx, flist, fetcher) = (rx.clone(), flist.clone(), fetcher.clone());
            std::thread::spawn(move || loop {
                let job = match rx.lock().expect("not poisoned").recv() {
                    Ok(j) => j,
                    Err(_) => return,
                };
                match read_range(&flist, &fetcher, job.idx, job.offset, job.size) {
                    Ok(data) => job.reply.data(&data),
                    Err(err) => {
                        // The error names the file and the block; the reader sees EIO.
                        tracing::error!(%err, "read refused");
                        job.reply.error(libc::EIO)
                    }
                }
            });
        }
        // A directory's link count: itself, its "." and each subdirectory's "..".
        let nlinks = flist
            .entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::Dir => {
                    2 + e
                        .children
                        .iter()
                        .filter(|&&c| flist.entries[c].kind == EntryKind::Dir)
                        .count() as u32
                }
                _ => 1,
            })
            .collect();
        FlistFs {
            flist,
            nlinks,
            reads: tx,
        }
    }

    fn entry(&self, ino: u64) -> Option<(usize, &Entry)> {
        let idx = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.flist.entries.get(idx).map(|e| (idx, e))
    }

    fn attr(&self, idx: usize) -> FileAttr {
        let e = &self.flist.entries[idx];
        let size = match e.kind {
            EntryKind::Symlink => e.target.as_ref().map_or(0, |t| t.len() as u64),
            _ => e.size,
        };
        FileAttr {
            ino: idx as u64 + 1,
            size,
            blocks: size.div_ceil(512),
            atime: time(e.mtime),
            mtime: time(e.mtime),
            ctime: time(e.ctime),
            crtime: time(e.mtime),
            kind: file_type(e.kind),
            perm: e.perm() as u16,
            nlink: self.nlinks[idx],
            uid: e.uid,
            gid: e.gid,
            rdev: e.rdev as u32,
            blksize: BLOCK_SIZE as u32,
            flags: 0,
        }
    }
}

/// Bytes `offset..offset + size` of file `idx`, fetching and verifying the blocks spanned.
fn read_range(
    flist: &Flist,
    fetcher: &Fetcher,
    idx: usize,
    offset: u64,
    size: u32,
) -> Result<Vec<u8>, Error> {
    let e = &flist.entries[idx];
    if offset >= e.size {
        return Ok(Vec::new());
    }
    let end = e.size.min(offset + size as u64);
    let mut out = Vec::with_capacity((end - offset) as usize);
    let bs = BLOCK_SIZE as u64;
    let path = flist.path_of(idx);
    for i in (offset / bs)..=((end - 1) / bs) {
        let i = i as usize;
        let plain = fetcher.block_shared(&path, i, &e.blocks[i], e.block_len(i))?;
        let start = i as u64 * bs;
        let from = offset.max(start) - start;
        let to = end.min(start + plain.len() as u64) - start;
        out.extend_from_slice(&plain[from as usize..to as usize]);
    }
    Ok(out)
}

impl Filesystem for FlistFs {
    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let Some((pidx, p)) = self.entry(parent) else {
            return reply.error(libc::ENOENT);
        };
        if p.kind != EntryKind::Dir {
            return reply.error(libc::ENOTDIR);
        }
        let Some(name) = name.to_str() else {
            return reply.error(libc::ENOENT);
        };
        match self.flist.child(pidx, name) {
            Some(c) => reply.entry(&TTL, &self.attr(c), 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.entry(ino) {
            Some((idx, _)) => reply.attr(&TTL, &self.attr(idx)),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.entry(ino) {
            Some((_, e)) if e.kind == EntryKind::Symlink => {
                reply.data(e.target.as_deref().unwrap_or(b""))
            }
            Some(_) => reply.error(libc::EINVAL),
            None => reply.error(libc::ENOENT),
        }
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let Some((idx, e)) = self.entry(ino) else {
            return reply.error(libc::ENOENT);
        };
        if e.kind != EntryKind::File {
            return reply.error(libc::EISDIR);
        }
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(libc::EINVAL);
        };
        let job = ReadJob {
            idx,
            offset,
            size,
            reply,
        };
        if let Err(mpsc::SendError(job)) = self.reads.send(job) {
            job.reply.error(libc::EIO);
        }
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some((idx, e)) = self.entry(ino) else {
            return reply.error(libc::ENOENT);
        };
        if e.kind != EntryKind::Dir {
            return reply.error(libc::ENOTDIR);
        }
        let parent_ino = e.parent as u64 + 1;
        let dots = [
            (idx as u64 + 1, FileType::Directory, "."),
            (parent_ino, FileType::Directory, ".."),
        ];
        let children = e.children.iter().map(|&c| {
            let ce = &self.flist.entries[c];
            (c as u64 + 1, file_type(ce.kind), ce.name.as_str())
        });
        for (i, (ino, kind, name)) in dots
            .into_iter()
            .chain(children)
            .enumerate()
            .skip(offset.max(0) as usize)
        {
            // The offset handed back is where the next call resumes.
            if reply.add(ino, i as i64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A mounted flist; unmounted on [`MountedFlist::unmount`] or drop.
pub struct MountedFlist {
    mountpoint: PathBuf,
    session: Option<BackgroundSession>,
}

impl std::fmt::Debug for MountedFlist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MountedFlist({})", self.mountpoint.display())
    }
}

/// Mounts `flist` read-only at `mountpoint` (an existing directory).
pub fn mount(
    flist: Arc<Flist>,
    fetcher: Arc<Fetcher>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<MountedFlist, Error> {
    let mut options = vec![
        MountOption::RO,
        MountOption::FSName("zos-flist".into()),
        MountOption::Subtype("zos-flist".into()),
        // The kernel checks modes itself: the filesystem has no notion of callers.
        MountOption::DefaultPermissions,
    ];
    if opts.allow_other {
        options.push(MountOption::AllowOther);
    }
    if opts.suid_dev {
        options.extend([MountOption::Suid, MountOption::Dev]);
    } else {
        options.extend([MountOption::NoSuid, MountOption::NoDev]);
    }
    let fs = FlistFs::new(flist, fetcher);
    let session = fuser::spawn_mount2(fs, mountpoint, &options).map_err(|e| Error::Mount {
        path: mountpoint.to_path_buf(),
        reason: e.to_string(),
    })?;
    tracing::info!(mountpoint = %mountpoint.display(), "flist mounted");
    Ok(MountedFlist {
        mountpoint: mountpoint.to_path_buf(),
        session: Some(session),
    })
}

impl MountedFlist {
    /// The mount point, where the flist's tree is seen.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Blocks until the mount is gone (e.g. someone ran umount), for `zos flist mount`.
    pub fn wait(mut self) {
        if let Some(s) = self.session.take() {
            let guard = s.guard;
            let _ = guard.join();
        }
    }

    /// Unmounts and waits for the session thread to end.
    pub fn unmount(mut self) -> Result<(), Error> {
        self.do_unmount()
    }

    fn do_unmount(&mut self) -> Result<(), Error> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let mut res = Ok(());
        if let Err(e) = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::empty()) {
            // Busy (a reader still has it open): detach so it goes away when they close.
            tracing::warn!(mountpoint = %self.mountpoint.display(), error = %e, "umount failed; detaching");
            if let Err(e) = nix::mount::umount2(&self.mountpoint, nix::mount::MntFlags::MNT_DETACH)
            {
                res = Err(Error::Mount {
                    path: self.mountpoint.clone(),
                    reason: format!("umount: {e}"),
                });
            }
        }
        // With the mount gone the session loop sees ENODEV and returns; join it so the
        // filesystem (and its fetcher) is dropped before we return.
        let guard = session.guard;
        if res.is_ok() {
            let _ = guard.join();
        }
        res
    }
}

impl Drop for MountedFlist {
    fn drop(&mut self) {
        if let Err(e) = self.do_unmount() {
            tracing::error!(error = %e, "unmount on drop failed");
        }
    }
}

/// For a foreground `mount` command: serves until the mount is unmounted from outside or
/// the process gets SIGINT, SIGTERM or SIGHUP, then unmounts cleanly (a killed FUSE
/// server would leave a dead mount behind).
pub fn mount_foreground(
    flist: Arc<Flist>,
    fetcher: Arc<Fetcher>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<(), Error> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    // Blocked before the session thread exists, so it inherits the mask and only our
    // waiter receives these signals.
    set.thread_block().map_err(|e| Error::Mount {
        path: mountpoint.to_path_buf(),
        reason: format!("sigprocmask: {e}"),
    })?;
    let mounted = mount(flist, fetcher, mountpoint, opts)?;
    let mp = mountpoint.to_path_buf();
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            tracing::info!(?sig, "unmounting on signal");
            let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
        }
    });
    mounted.wait();
    Ok(())
}
