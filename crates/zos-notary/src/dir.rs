//! `dir://` backend: one file per record, `<root>/<key>.json`.
//!
//! Writes are atomic and durable: the record goes to a temporary file in the target
//! directory (`.<name>.<pid>.<n>.tmp`, created exclusively), which is fsynced, renamed
//! over the target and the directory fsynced. Several writers (threads or processes)
//! may write at once: each has its own temporary file and `rename` is atomic, so a
//! reader sees one whole record or another, never a mix. Newly created directories are
//! fsynced into their parent.
//!
//! Compare-and-swap puts, deletes and lease operations on a key serialise on `flock` of
//! the hidden `.<name>.lock` beside its record; a create-only put commits with
//! `renameat2(RENAME_NOREPLACE)`. A leased record has the hidden mark `.<name>.lease`
//! (lease id, TTL) beside it and has expired, for a reader, when the file's modification
//! time plus the TTL is past the reader's clock (see "Leases and compare-and-swap" below
//! and docs/notary.md).
//!
//! Every path below the root is opened relative to the root's descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, one directory at a time when
//! writing: a symlink anywhere in the tree (a directory such as
//! `nodes/<key>/contracts -> /etc`, or a record file) is never followed, so nothing
//! outside the tree is read or written ([`NotaryError::Symlink`]). Record files are
//! opened `O_NONBLOCK` and must be regular files (a FIFO is refused, not blocked on).
//!
//! Watching uses inotify on a dedicated thread: the directories leading to the prefix
//! (to notice when the next one appears) and every directory under it, adding watches
//! as directories appear. A directory that appears after the watch started is scanned
//! once, so a record renamed into it before its watch was added is still delivered.
//! On inotify queue overflow the whole prefix is rescanned and re-delivered.
//!
//! inotify sees only what this kernel writes. When the tree lives on a filesystem other
//! machines write to (virtio-9p from a hypervisor's host, NFS, FUSE, SMB: a QEMU node
//! reading its host's notary directory), the watch also walks the tree every
//! [`REMOTE_POLL`] and delivers the files whose inode, size or modification time changed.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use nix::errno::Errno;
use nix::fcntl::{
    openat2, renameat, renameat2, AtFlags, Flock, FlockArg, OFlag, OpenHow, RenameFlags,
    ResolveFlag,
};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::stat::{fstatat, futimens, mkdirat, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{linkat, unlinkat, UnlinkatFlags};
use tokio::sync::{mpsc, oneshot};

use crate::{
    warn_skipped, EventStream, EventWatch, Expect, KeyPrefix, Lease, Notary, NotaryError,
    NotaryKey, Record, RecordError, Watch, WatchEvent, MAX_RECORD_BYTES, WATCH_CHANNEL,
};

const BACKEND: &str = "dir";
const SUFFIX: &str = ".json";

/// A notary in a local directory tree. Cheap to clone.
#[derive(Debug, Clone)]
pub struct DirNotary {
    root: Arc<PathBuf>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> NotaryError + '_ {
    move |source| NotaryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DirNotary {
    /// Opens (creating it if needed) the notary rooted at the absolute `root`.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, NotaryError> {
        let root = root.as_ref();
        if !root.is_absolute() {
            return Err(NotaryError::BadUrl {
                url: root.display().to_string(),
                reason: "the dir:// notary path must be absolute (dir:///srv/notary)".into(),
            });
        }
        fs::create_dir_all(root).map_err(io_err(root))?;
        Ok(DirNotary {
            root: Arc::new(root.to_path_buf()),
        })
    }

    /// The directory the records live under (`<root>/<key>.json`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file holding `key`: `<root>/<key>.json`.
    pub fn path_of(&self, key: &NotaryKey) -> PathBuf {
        self.root.join(format!("{key}{SUFFIX}"))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Path) -> Result<T, NotaryError> + Send + 'static,
    ) -> Result<T, NotaryError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || f(&root))
            .await
            .map_err(|e| NotaryError::Io {
                path: self.root.to_path_buf(),
                source: io::Error::other(e),
            })?
    }
}

impl Notary for DirNotary {
    async fn put(&self, record: &Record) -> Result<(), NotaryError> {
        let (key, bytes) = record.to_storable()?;
        let rel = format!("{key}{SUFFIX}");
        self.blocking(move |root| write_atomic(root, &rel, &bytes))
            .await?;
        tracing::debug!(backend = BACKEND, key = %key, "record stored");
        Ok(())
    }

    async fn get(&self, key: &NotaryKey) -> Result<Option<Record>, NotaryError> {
        let key = key.clone();
        self.blocking(
            move |root| match read_limited(root, &format!("{key}{SUFFIX}")) {
                Ok((_, mtime)) if expired_at(root, &format!("{key}{SUFFIX}"), mtime) => Ok(None),
                Ok((bytes, _)) => Ok(Some(Record::from_bytes_verified(&bytes, key.as_str())?)),
                Err(ReadError::Missing) => Ok(None),
                Err(ReadError::Record(e)) => Err(e.into()),
                Err(ReadError::Symlink(path)) => Err(NotaryError::Symlink { path }),
                Err(ReadError::Io(path, source)) => Err(NotaryError::Io { path, source }),
            },
        )
        .await
    }

    async fn list(&self, prefix: &KeyPrefix) -> Result<Vec<Record>, NotaryError> {
        let prefix = prefix.clone();
        self.blocking(move |root| {
            let mut out = Vec::new();
            scan_prefix(root, &prefix, &mut |r| out.push(r))?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn watch(&self, prefix: &KeyPrefix) -> Result<Watch, NotaryError> {
        Ok(Watch::new(self.watch_stream(prefix).await?))
    }

    async fn put_if(&self, record: &Record, expect: &Expect) -> Result<(), NotaryError> {
        self.put_with(record, None, expect).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, NotaryError> {
        // Whole milliseconds (the mark's unit), at least one.
        let ttl = Duration::from_millis(
            u64::try_from(ttl.as_nanos().div_ceil(1_000_000))
                .unwrap_or(u64::MAX)
                .max(1),
        );
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let mixed = nanos
            ^ (u64::from(std::process::id()) << 40)
            ^ LEASE_COUNTER
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let id = (mixed & (i64::MAX as u64)).max(1) as i64;
        tracing::debug!(
            backend = BACKEND,
            lease = id,
            ttl_ms = ttl.as_millis() as u64,
            "lease granted"
        );
        Ok(Lease::new(id, ttl))
    }

    async fn put_leased(
        &self,
        record: &Record,
        lease: &Lease,
        expect: &Expect,
    ) -> Result<(), NotaryError> {
        check_lease_alive(lease)?;
        self.put_with(record, Some(lease), expect).await?;
        let key = record.notary_key()?;
        let revoked = {
            let mut local = lease.local.lock().expect("lease lock");
            local.keys.insert(key.clone());
            local.revoked
        };
        if revoked {
            // Revoked while this put was in flight: what it wrote goes with the lease.
            let (rel, id) = (format!("{key}{SUFFIX}"), lease.id());
            self.blocking(move |root| remove_record(root, &rel, Some(id)))
                .await?;
            return Err(NotaryError::LeaseExpired { lease: id });
        }
        Ok(())
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<Duration, NotaryError> {
        check_lease_alive(lease)?;
        let mut keys = std::mem::take(&mut lease.local.lock().expect("lease lock").keys);
        let (id, ttl) = (lease.id(), lease.ttl());
        let (alive, keys) = self
            .blocking(move |root| {
                let alive = touch_leased(root, id, &mut keys)?;
                Ok((alive, keys))
            })
            .await?;
        let mut local = lease.local.lock().expect("lease lock");
        local.keys.extend(keys);
        if !alive {
            return Err(NotaryError::LeaseExpired { lease: id });
        }
        local.renewed = SystemTime::now();
        tracing::trace!(backend = BACKEND, lease = id, "lease kept alive");
        Ok(ttl)
    }

    async fn revoke(&self, lease: &Lease) -> Result<(), NotaryError> {
        let keys = {
            let mut local = lease.local.lock().expect("lease lock");
            local.revoked = true;
            std::mem::take(&mut local.keys)
        };
        let id = lease.id();
        self.blocking(move |root| {
            for key in keys {
                remove_record(root, &format!("{key}{SUFFIX}"), Some(id))?;
            }
            Ok(())
        })
        .await?;
        tracing::debug!(backend = BACKEND, lease = id, "lease revoked");
        Ok(())
    }

    async fn delete(&self, key: &NotaryKey) -> Result<(), NotaryError> {
        let rel = format!("{key}{SUFFIX}");
        self.blocking(move |root| remove_record(root, &rel, None))
            .await?;
        tracing::debug!(backend = BACKEND, key = %key, "record deleted");
        Ok(())
    }

    async fn watch_events(&self, prefix: &KeyPrefix) -> Result<EventWatch, NotaryError> {
        Ok(EventWatch::new(self.watch_stream(prefix).await?))
    }
}

static LEASE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A `dir://` lease is gone once revoked, or once a TTL passed since its last renewal
/// (this process's view; readers judge each record by its file's age).
fn check_lease_alive(lease: &Lease) -> Result<(), NotaryError> {
    let local = lease.local.lock().expect("lease lock");
    let lapsed = local
        .renewed
        .checked_add(lease.ttl())
        .is_some_and(|end| end < SystemTime::now());
    if local.revoked || lapsed {
        return Err(NotaryError::LeaseExpired { lease: lease.id() });
    }
    Ok(())
}

impl DirNotary {
    async fn put_with(
        &self,
        record: &Record,
        lease: Option<&Lease>,
        expect: &Expect,
    ) -> Result<(), NotaryError> {
        let (key, bytes) = record.to_storable()?;
        let mark = lease.map(|l| Mark {
            lease: l.id(),
            ttl: l.ttl(),
        });
        let expect = expect.clone();
        let k = key.clone();
        self.blocking(move |root| put_checked(root, &k, &bytes, mark, &expect))
            .await
            .inspect_err(|e| {
                if matches!(e, NotaryError::Conflict { .. }) {
                    tracing::debug!(backend = BACKEND, key = %key, "compare-and-swap lost");
                }
            })?;
        tracing::debug!(backend = BACKEND, key = %key, lease = lease.map(Lease::id), "record stored");
        Ok(())
    }

    async fn watch_stream(&self, prefix: &KeyPrefix) -> Result<EventStream, NotaryError> {
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let (ready_tx, ready_rx) = oneshot::channel();
        let root = self.root.to_path_buf();
        let prefix = prefix.clone();
        std::thread::Builder::new()
            .name("notary-dir-watch".into())
            .spawn(move || watch_thread(root, prefix, tx, ready_tx))
            .map_err(io_err(&self.root))?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(EventStream::new(rx, None)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(NotaryError::Io {
                path: self.root.to_path_buf(),
                source: io::Error::other("watch thread ended during setup"),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------
// Paths beneath the root
//
// Every path inside the tree is opened relative to a descriptor of the root with
// openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS): a symlink anywhere below the root (a
// directory such as `nodes/<key>/contracts -> /etc`, or the record file itself) makes
// the open fail with ELOOP instead of being followed, and nothing can resolve to a place
// outside the root. The root itself is the operator's choice and may be a symlink.

/// Why a path in the tree could not be opened.
enum OpenError {
    Missing,
    /// A symlink (or a path escaping the root) at or above this path.
    Symlink(PathBuf),
    Io(PathBuf, io::Error),
}

impl OpenError {
    fn into_notary(self) -> Option<NotaryError> {
        match self {
            OpenError::Missing => None,
            OpenError::Symlink(path) => Some(NotaryError::Symlink { path }),
            OpenError::Io(path, source) => Some(NotaryError::Io { path, source }),
        }
    }
}

/// Opens `rel` (relative, `/`-separated, no `..`: a [`NotaryKey`] path) below the
/// directory `dir`, never following a symlink. `rel` may be "" (the directory again).
#[allow(unsafe_code)]
fn openat_beneath(
    dir: BorrowedFd<'_>,
    dir_path: &Path,
    rel: &str,
    flags: OFlag,
    mode: Mode,
) -> Result<OwnedFd, OpenError> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    let path = if rel.is_empty() { "." } else { rel };
    match openat2(dir.as_raw_fd(), path, how) {
        // SAFETY: openat2 returned a fresh descriptor that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(Errno::ENOENT) => Err(OpenError::Missing),
        Err(Errno::ELOOP) | Err(Errno::EXDEV) => Err(OpenError::Symlink(dir_path.join(rel))),
        Err(e) => Err(OpenError::Io(dir_path.join(rel), e.into())),
    }
}

/// The root directory, opened (following a symlink there: the root is configuration).
fn open_root(root: &Path) -> Result<OwnedFd, OpenError> {
    File::open(root)
        .map(OwnedFd::from)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => OpenError::Missing,
            _ => OpenError::Io(root.to_path_buf(), e),
        })
}

/// Opens `rel` below `root` without following any symlink under the root.
fn open_beneath(root: &Path, rel: &str, flags: OFlag) -> Result<OwnedFd, OpenError> {
    let root_fd = open_root(root)?;
    openat_beneath(root_fd.as_fd(), root, rel, flags, Mode::empty())
}

/// The directory `rel` below `root`, opened without following symlinks.
fn open_dir(root: &Path, rel: &str) -> Result<OwnedFd, OpenError> {
    open_beneath(root, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY).map_err(|e| match e {
        OpenError::Io(_, ref err) if err.raw_os_error() == Some(nix::libc::ENOTDIR) => {
            OpenError::Missing
        }
        other => other,
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

/// The visible entries (not hidden, UTF-8 names) of directory `rel` below `root`, with
/// their types as they are (symlinks not followed).
fn list_dir(root: &Path, rel: &str) -> Result<Vec<(String, Kind)>, OpenError> {
    let fd = open_dir(root, rel)?;
    let dir_path = root.join(rel);
    let io = |e: Errno| OpenError::Io(dir_path.clone(), e.into());
    let raw = fd.as_raw_fd();
    // Dir owns (and closes) its own duplicate; `fd` stays ours for fstatat below.
    let dup = nix::unistd::dup(raw).map_err(io)?;
    let mut dir = nix::dir::Dir::from_fd(dup).map_err(io)?;
    let mut out = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(io)?;
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let kind = match entry.file_type() {
            Some(t) => kind_of(t),
            // DT_UNKNOWN (some filesystems): ask without following.
            None => match fstatat(Some(raw), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
                    SFlag::S_IFDIR => Kind::Dir,
                    SFlag::S_IFREG => Kind::File,
                    SFlag::S_IFLNK => Kind::Symlink,
                    _ => Kind::Other,
                },
                Err(_) => continue,
            },
        };
        out.push((name.to_owned(), kind));
    }
    Ok(out)
}

fn kind_of(t: nix::dir::Type) -> Kind {
    match t {
        nix::dir::Type::Directory => Kind::Dir,
        nix::dir::Type::File => Kind::File,
        nix::dir::Type::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// `rel` joined with `name` ("" is the root).
fn join_rel(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

fn warn_symlink(path: &Path) {
    tracing::warn!(backend = BACKEND, path = %path.display(), "symlink in the notary tree; not followed");
}

// ---------------------------------------------------------------------------------
// Files

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Opens (creating the missing ones, each fsynced into its parent) the directories of
/// `rel` below `root`, one component at a time, never following a symlink. Concurrent
/// creators are fine (EEXIST is success).
fn create_dirs(root: &Path, rel: &str) -> Result<OwnedFd, NotaryError> {
    let to_err = |e: OpenError| {
        e.into_notary().unwrap_or_else(|| NotaryError::Io {
            path: root.to_path_buf(),
            source: io::ErrorKind::NotFound.into(),
        })
    };
    let mut fd = open_root(root).map_err(to_err)?;
    let mut path = root.to_path_buf();
    for comp in rel.split('/').filter(|c| !c.is_empty()) {
        match mkdirat(Some(fd.as_raw_fd()), comp, Mode::from_bits_truncate(0o755)) {
            Ok(()) => nix::unistd::fsync(fd.as_raw_fd()).map_err(|e| NotaryError::Io {
                path: path.clone(),
                source: e.into(),
            })?,
            Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(NotaryError::Io {
                    path: path.join(comp),
                    source: e.into(),
                })
            }
        }
        let next = openat_beneath(
            fd.as_fd(),
            &path,
            comp,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .map_err(to_err)?;
        path.push(comp);
        fd = next;
    }
    Ok(fd)
}

/// How a written temporary file takes the record's name.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Commit {
    /// `renameat`: replaces whatever is there.
    Replace,
    /// `renameat2(RENAME_NOREPLACE)` (or, where the filesystem lacks it, `linkat`):
    /// fails when the name exists, so of racing creators exactly one wins.
    Exclusive,
}

/// What [`write_in`] did.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    Done,
    /// [`Commit::Exclusive`] found the name taken; nothing was written.
    Exists,
}

/// Writes `bytes` to the file `rel` below `root` atomically and durably, replacing it,
/// and drops a lease mark the file had (a plain put is not leased).
fn write_atomic(root: &Path, rel: &str, bytes: &[u8]) -> Result<(), NotaryError> {
    let (dir_rel, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let dir = create_dirs(root, dir_rel)?;
    let dir_path = root.join(dir_rel);
    write_in(&dir, &dir_path, name, bytes, Commit::Replace)?;
    remove_at(&dir, &dir_path, &mark_name(name))?;
    Ok(())
}

/// Writes `bytes` to `name` in the open directory `dir` (a fresh temporary file,
/// fsynced, then renamed or linked to `name` as `commit` says; the directory fsynced).
fn write_in(
    dir: &OwnedFd,
    dir_path: &Path,
    name: &str,
    bytes: &[u8],
    commit: Commit,
) -> Result<Written, NotaryError> {
    let tmp = format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let at = |name: &str| dir_path.join(name);
    let nix_err = |path: PathBuf| {
        move |e: Errno| NotaryError::Io {
            path,
            source: e.into(),
        }
    };
    let raw = dir.as_raw_fd();
    let result = (|| {
        let fd = openat_beneath(
            dir.as_fd(),
            dir_path,
            &tmp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| {
            e.into_notary().unwrap_or_else(|| NotaryError::Io {
                path: at(&tmp),
                source: io::ErrorKind::NotFound.into(),
            })
        })?;
        let mut f = File::from(fd);
        f.write_all(bytes).map_err(io_err(&at(&tmp)))?;
        f.sync_all().map_err(io_err(&at(&tmp)))?;
        drop(f);
        let written = match commit {
            Commit::Replace => {
                renameat(Some(raw), tmp.as_str(), Some(raw), name).map_err(nix_err(at(name)))?;
                Written::Done
            }
            Commit::Exclusive => match renameat2(
                Some(raw),
                tmp.as_str(),
                Some(raw),
                name,
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Ok(()) => Written::Done,
                Err(Errno::EEXIST) => Written::Exists,
                // A filesystem without RENAME_NOREPLACE (9p, NFS): a hard link is just
                // as exclusive. The temporary name goes in both cases below.
                Err(Errno::EINVAL) => {
                    match linkat(Some(raw), tmp.as_str(), Some(raw), name, AtFlags::empty()) {
                        Ok(()) => Written::Done,
                        Err(Errno::EEXIST) => Written::Exists,
                        Err(e) => return Err(nix_err(at(name))(e)),
                    }
                }
                Err(e) => return Err(nix_err(at(name))(e)),
            },
        };
        nix::unistd::fsync(raw).map_err(nix_err(dir_path.to_path_buf()))?;
        Ok(written)
    })();
    if !matches!(result, Ok(Written::Done)) || commit == Commit::Exclusive {
        // Left over after a failure, an exclusive commit that lost, or a link.
        let _ = unlinkat(Some(raw), tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// Removes `name` from the open directory `dir`; a name already gone is fine. Returns
/// whether something was removed.
fn remove_at(dir: &OwnedFd, dir_path: &Path, name: &str) -> Result<bool, NotaryError> {
    match unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(NotaryError::Io {
            path: dir_path.join(name),
            source: e.into(),
        }),
    }
}

// ---------------------------------------------------------------------------------
// Leases and compare-and-swap
//
// A leased record `<name>` (`<stem>.json`) has a mark beside it, the hidden file
// `.<name>.lease`, holding `<lease id> <ttl in ms>`: it was written before the record
// (so a crash leaves no leased record without its mark). The record has expired when
// its modification time plus the TTL is before the reader's clock; keep-alive moves the
// modification time to now. A plain put removes the mark. Conditional writes, deletes,
// keep-alives and revocations of one key serialise on `flock` of the hidden file
// `.<name>.lock` beside it (held only for the operation).

/// The lease mark of record file `name`.
fn mark_name(name: &str) -> String {
    format!(".{name}{LEASE_FILE_SUFFIX}")
}

/// Suffix of the hidden file beside a leased record (`.<name>.json.lease`) naming its
/// lease and TTL.
const LEASE_FILE_SUFFIX: &str = ".lease";
/// Suffix of the hidden file beside a record (`.<name>.json.lock`) that conditional
/// writers of that key lock.
const LOCK_FILE_SUFFIX: &str = ".lock";

/// A lease mark: which lease, and the TTL its writer declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    lease: i64,
    ttl: Duration,
}

impl Mark {
    fn to_bytes(self) -> Vec<u8> {
        format!("{} {}\n", self.lease, self.ttl.as_millis()).into_bytes()
    }

    fn parse(bytes: &[u8]) -> Option<Mark> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (id, ttl) = text.trim_end().split_once(' ')?;
        Some(Mark {
            lease: id.parse().ok()?,
            ttl: Duration::from_millis(ttl.parse().ok()?),
        })
    }

    /// Whether a record last modified at `mtime` has expired by `now`.
    fn expired(self, mtime: SystemTime, now: SystemTime) -> bool {
        mtime.checked_add(self.ttl).is_some_and(|end| end < now)
    }
}

/// The lease mark of `name` in the open directory `dir`, if it has a readable one.
fn read_mark(dir: &OwnedFd, dir_path: &Path, name: &str) -> Option<Mark> {
    let fd = openat_beneath(
        dir.as_fd(),
        dir_path,
        &mark_name(name),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .ok()?;
    let mut buf = Vec::new();
    File::from(fd).take(64).read_to_end(&mut buf).ok()?;
    Mark::parse(&buf)
}

/// Whether the record file `rel` below `root`, modified at `mtime`, is leased and has
/// expired on this machine's clock.
fn expired_at(root: &Path, rel: &str, mtime: SystemTime) -> bool {
    let (dir_rel, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let Ok(dir) = open_dir(root, dir_rel) else {
        return false;
    };
    read_mark(&dir, &root.join(dir_rel), name).is_some_and(|m| m.expired(mtime, SystemTime::now()))
}

/// What a key holds, seen under its lock.
enum Held {
    None,
    /// A record that is there and not expired: its bytes.
    Live(Vec<u8>),
    /// A leased record whose lease has expired (on this clock).
    Expired,
    /// A file that is no record (corrupt, oversized, not a regular file): present, and
    /// never what a writer expects.
    Junk,
}

/// Reads what `name` in `dir` holds right now.
fn held(dir: &OwnedFd, dir_path: &Path, name: &str) -> Result<Held, NotaryError> {
    let fd = match openat_beneath(
        dir.as_fd(),
        dir_path,
        name,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(OpenError::Missing) => return Ok(Held::None),
        Err(e) => return Err(e.into_notary().expect("not Missing")),
    };
    let (bytes, mtime) = match read_file(File::from(fd), dir_path.join(name)) {
        Ok(read) => read,
        Err(ReadError::Missing) => return Ok(Held::None),
        Err(ReadError::Record(_)) => return Ok(Held::Junk),
        Err(e) => return Err(e.into_notary()),
    };
    let mark = read_mark(dir, dir_path, name);
    if mark.is_some_and(|m| m.expired(mtime, SystemTime::now())) {
        return Ok(Held::Expired);
    }
    Ok(Held::Live(bytes))
}

/// Runs `f` on the directory of `rel` (below `root`) and the record's file name while
/// holding the key's lock. With `create`, missing directories are made; without, a
/// missing directory means there is nothing to do (`Ok(None)`).
fn with_key_lock<T>(
    root: &Path,
    rel: &str,
    create: bool,
    f: impl FnOnce(&OwnedFd, &Path, &str) -> Result<T, NotaryError>,
) -> Result<Option<T>, NotaryError> {
    let (dir_rel, name) = rel.rsplit_once('/').unwrap_or(("", rel));
    let dir_path = root.join(dir_rel);
    let dir = if create {
        create_dirs(root, dir_rel)?
    } else {
        match open_dir(root, dir_rel) {
            Ok(fd) => fd,
            Err(OpenError::Missing) => return Ok(None),
            Err(e) => return Err(e.into_notary().expect("not Missing")),
        }
    };
    let lock_name = format!(".{name}{LOCK_FILE_SUFFIX}");
    let lock_fd = openat_beneath(
        dir.as_fd(),
        &dir_path,
        &lock_name,
        OFlag::O_RDWR | OFlag::O_CREAT,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| {
        e.into_notary().unwrap_or_else(|| NotaryError::Io {
            path: dir_path.join(&lock_name),
            source: io::ErrorKind::NotFound.into(),
        })
    })?;
    let _lock =
        Flock::lock(lock_fd, FlockArg::LockExclusive).map_err(|(_, e)| NotaryError::Io {
            path: dir_path.join(&lock_name),
            source: e.into(),
        })?;
    f(&dir, &dir_path, name).map(Some)
}

/// A conditional (and possibly leased) put of `bytes` at `rel`, under the key's lock.
fn put_checked(
    root: &Path,
    key: &NotaryKey,
    bytes: &[u8],
    mark: Option<Mark>,
    expect: &Expect,
) -> Result<(), NotaryError> {
    let rel = format!("{key}{SUFFIX}");
    let expected = match expect {
        Expect::Current(r) => Some(r.to_storable()?.1),
        _ => None,
    };
    let conflict = || NotaryError::Conflict {
        key: key.to_string(),
    };
    with_key_lock(root, &rel, true, |dir, dir_path, name| {
        let held = match expect {
            Expect::Any => Held::None,
            _ => held(dir, dir_path, name)?,
        };
        let commit = match (expect, held) {
            (Expect::Any, _) => Commit::Replace,
            (Expect::Absent, Held::None) => Commit::Exclusive,
            // Gone for every reader already (and reported deleted by watchers): replaced
            // in one rename, so no second deletion is seen. Conditional writers hold the
            // lock; a plain put racing with this is unconditional anyway.
            (Expect::Absent, Held::Expired) => Commit::Replace,
            (Expect::Current(_), Held::Live(current)) if Some(&current) == expected.as_ref() => {
                Commit::Replace
            }
            _ => return Err(conflict()),
        };
        match mark {
            Some(m) => {
                write_in(
                    dir,
                    dir_path,
                    &mark_name(name),
                    &m.to_bytes(),
                    Commit::Replace,
                )?;
            }
            None => {
                remove_at(dir, dir_path, &mark_name(name))?;
            }
        }
        match write_in(dir, dir_path, name, bytes, commit)? {
            Written::Done => Ok(()),
            Written::Exists => {
                // A plain put (which takes no lock) got there first: the mark is not
                // for its record.
                if mark.is_some() {
                    remove_at(dir, dir_path, &mark_name(name))?;
                }
                Err(conflict())
            }
        }
    })
    .map(|done| done.expect("created"))
}

/// Renews the lease's records: each record still marked with `lease` gets its
/// modification time set to now. Returns false when one of them had already expired.
/// Keys no longer marked with it (replaced, deleted) are dropped from `keys`.
fn touch_leased(
    root: &Path,
    lease: i64,
    keys: &mut std::collections::BTreeSet<NotaryKey>,
) -> Result<bool, NotaryError> {
    let mut alive = true;
    let mut gone = Vec::new();
    for key in keys.iter() {
        let rel = format!("{key}{SUFFIX}");
        let still = with_key_lock(root, &rel, false, |dir, dir_path, name| {
            if read_mark(dir, dir_path, name).map(|m| m.lease) != Some(lease) {
                return Ok(false);
            }
            match held(dir, dir_path, name)? {
                Held::None | Held::Junk => Ok(false),
                Held::Expired => {
                    alive = false;
                    Ok(true)
                }
                Held::Live(_) => {
                    let fd = openat_beneath(
                        dir.as_fd(),
                        dir_path,
                        name,
                        OFlag::O_RDONLY | OFlag::O_NONBLOCK,
                        Mode::empty(),
                    )
                    .map_err(|e| {
                        e.into_notary().unwrap_or_else(|| NotaryError::Io {
                            path: dir_path.join(name),
                            source: io::ErrorKind::NotFound.into(),
                        })
                    })?;
                    futimens(fd.as_raw_fd(), &TimeSpec::UTIME_NOW, &TimeSpec::UTIME_NOW).map_err(
                        |e| NotaryError::Io {
                            path: dir_path.join(name),
                            source: e.into(),
                        },
                    )?;
                    Ok(true)
                }
            }
        })?;
        if still != Some(true) {
            gone.push(key.clone());
        }
    }
    for key in gone {
        keys.remove(&key);
    }
    Ok(alive)
}

/// Removes the record at `rel` (and its mark) when `only_lease` is `None` or names the
/// lease it is marked with.
fn remove_record(root: &Path, rel: &str, only_lease: Option<i64>) -> Result<(), NotaryError> {
    with_key_lock(root, rel, false, |dir, dir_path, name| {
        if let Some(lease) = only_lease {
            if read_mark(dir, dir_path, name).map(|m| m.lease) != Some(lease) {
                return Ok(());
            }
        }
        let removed = remove_at(dir, dir_path, name)?;
        remove_at(dir, dir_path, &mark_name(name))?;
        if removed {
            nix::unistd::fsync(dir.as_raw_fd()).map_err(|e| NotaryError::Io {
                path: dir_path.to_path_buf(),
                source: e.into(),
            })?;
        }
        Ok(())
    })
    .map(|_| ())
}

enum ReadError {
    Missing,
    Record(RecordError),
    Symlink(PathBuf),
    Io(PathBuf, io::Error),
}

impl ReadError {
    fn into_notary(self) -> NotaryError {
        match self {
            ReadError::Missing => NotaryError::Io {
                path: PathBuf::new(),
                source: io::ErrorKind::NotFound.into(),
            },
            ReadError::Record(e) => e.into(),
            ReadError::Symlink(path) => NotaryError::Symlink { path },
            ReadError::Io(path, source) => NotaryError::Io { path, source },
        }
    }
}

/// Reads the regular file `rel` below `root`, of at most [`MAX_RECORD_BYTES`], never
/// following a symlink (anywhere below the root) or blocking on a FIFO. Returns its
/// bytes and modification time.
fn read_limited(root: &Path, rel: &str) -> Result<(Vec<u8>, SystemTime), ReadError> {
    let fd = open_beneath(root, rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK).map_err(|e| match e {
        OpenError::Missing => ReadError::Missing,
        OpenError::Symlink(p) => ReadError::Symlink(p),
        OpenError::Io(p, e) => ReadError::Io(p, e),
    })?;
    read_file(File::from(fd), root.join(rel))
}

/// Reads an open record file (see [`read_limited`]).
fn read_file(file: File, path: PathBuf) -> Result<(Vec<u8>, SystemTime), ReadError> {
    let meta = file
        .metadata()
        .map_err(|e| ReadError::Io(path.clone(), e))?;
    if !meta.is_file() {
        return Err(ReadError::Record(RecordError::Malformed(format!(
            "record file is not a regular file (mode {:o})",
            meta.permissions().mode()
        ))));
    }
    if meta.len() > MAX_RECORD_BYTES as u64 {
        return Err(ReadError::Record(RecordError::Oversized {
            size: meta.len().try_into().unwrap_or(usize::MAX),
            max: MAX_RECORD_BYTES,
        }));
    }
    let mtime = meta
        .modified()
        .map_err(|e| ReadError::Io(path.clone(), e))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_RECORD_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Io(path, e))?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(ReadError::Record(RecordError::Oversized {
            size: bytes.len(),
            max: MAX_RECORD_BYTES,
        }));
    }
    Ok((bytes, mtime))
}

/// The logical key of a file `name` in directory `rel` (relative to the root), if the
/// file is a record file (not hidden, `.json`).
fn key_of(rel: &str, name: &str) -> Option<String> {
    if name.starts_with('.') {
        return None;
    }
    let stem = name.strip_suffix(SUFFIX)?;
    Some(join_rel(rel, stem))
}

/// Reads and verifies the record file `rel` (below `root`) of logical key `key`; on
/// failure logs and returns `None`.
fn load_verified(root: &Path, rel: &str, key: &str) -> Option<Record> {
    if let Err(e) = NotaryKey::parse(key) {
        warn_skipped(BACKEND, key, &e);
        return None;
    }
    match read_limited(root, rel) {
        // Leased and expired (on this clock): gone for readers.
        Ok((_, mtime)) if expired_at(root, rel, mtime) => None,
        Ok((bytes, _)) => match Record::from_bytes_verified(&bytes, key) {
            Ok(r) => Some(r),
            Err(e) => {
                warn_skipped(BACKEND, key, &e);
                None
            }
        },
        // Replaced or removed between the listing and the read: not an error.
        Err(ReadError::Missing) => None,
        Err(ReadError::Record(e)) => {
            warn_skipped(BACKEND, key, &e);
            None
        }
        Err(ReadError::Symlink(path)) => {
            warn_skipped(BACKEND, key, &NotaryError::Symlink { path });
            None
        }
        Err(ReadError::Io(path, source)) => {
            warn_skipped(BACKEND, key, &NotaryError::Io { path, source });
            None
        }
    }
}

/// Emits every verified record under `prefix`: the file `<prefix>.json` (when the
/// prefix is itself a key) and everything below the directory `<prefix>/`. A symlink
/// on the way to the prefix's directory is an error; one below it is skipped (logged).
fn scan_prefix(
    root: &Path,
    prefix: &KeyPrefix,
    emit: &mut dyn FnMut(Record),
) -> Result<(), NotaryError> {
    let p = prefix.as_str();
    // The prefix is a record itself only when it is a key (`nodes/<key>/heartbeat`);
    // a directory of keys (`nodes/<key>/contracts`) is not, and is no warning.
    if !p.is_empty() && NotaryKey::parse(p).is_ok() {
        if let Some(r) = load_verified(root, &format!("{p}{SUFFIX}"), p) {
            emit(r);
        }
    }
    scan_tree(root, p, true, emit)
}

/// Emits every verified record in directory `rel` and below. A missing directory is
/// empty. A symlink at `rel` (or above) is an error when `top`, else skipped (logged).
fn scan_tree(
    root: &Path,
    rel: &str,
    top: bool,
    emit: &mut dyn FnMut(Record),
) -> Result<(), NotaryError> {
    let entries = match list_dir(root, rel) {
        Ok(e) => e,
        Err(OpenError::Missing) => return Ok(()),
        Err(OpenError::Symlink(path)) if !top => {
            warn_symlink(&path);
            return Ok(());
        }
        Err(e) => return Err(e.into_notary().expect("not Missing")),
    };
    for (name, kind) in entries {
        let child = join_rel(rel, &name);
        match kind {
            Kind::Dir => scan_tree(root, &child, false, emit)?,
            Kind::Symlink => warn_symlink(&root.join(&child)),
            _ => {
                if let Some(key) = key_of(rel, &name) {
                    if let Some(r) = load_verified(root, &child, &key) {
                        emit(r);
                    }
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Watch

/// How often the watch thread checks whether its receiver was dropped.
const POLL_MS: u16 = 100;
/// How often a tree on a remote filesystem is walked for changes inotify cannot see.
pub const REMOTE_POLL: std::time::Duration = std::time::Duration::from_secs(1);

struct Watcher {
    ino: Inotify,
    root: PathBuf,
    prefix: KeyPrefix,
    dirs: HashMap<WatchDescriptor, String>,
    tx: mpsc::Sender<WatchEvent>,
    /// Set when `root` is on a filesystem written from elsewhere.
    remote: Option<RemoteTree>,
    /// Leased records seen under the prefix, by key: (directory, file name). Each
    /// turn of the loop checks them, and reports one that expired as deleted: no
    /// filesystem event marks an expiry.
    leased: HashMap<String, (String, String)>,
    /// When `leased` was last checked (at most every [`POLL_MS`]).
    expiry_checked: std::time::Instant,
}

/// What a walk of a remote tree saw: (directory, file) -> (inode, size, mtime in ns).
struct RemoteTree {
    seen: HashMap<(String, String), (u64, u64, i128)>,
    walked: std::time::Instant,
}

/// Whether `path` is on a filesystem that other machines write to, whose changes no
/// local inotify event announces. Read from the type of its mount in
/// /proc/self/mountinfo, not from statfs: 9P2000.L passes the host's statfs through,
/// magic number included (QEMU's share of an ext4 directory says ext4).
fn is_remote_fs(path: &Path) -> bool {
    let (Ok(path), Ok(mountinfo)) = (
        fs::canonicalize(path),
        fs::read_to_string("/proc/self/mountinfo"),
    ) else {
        return false;
    };
    mount_fstype(&mountinfo, &path).is_some_and(|t| {
        ["9p", "nfs", "nfs4", "cifs", "smb3", "ceph", "fuse"].contains(&t) || t.starts_with("fuse.")
    })
}

/// The filesystem type of the mount holding `path` (the longest mount point that
/// contains it; the last one mounted wins), from mountinfo text.
fn mount_fstype<'a>(mountinfo: &'a str, path: &Path) -> Option<&'a str> {
    let mut best: Option<(usize, &str)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let (Some(point), Some(fstype)) = (left.split(' ').nth(4), right.split(' ').next()) else {
            continue;
        };
        // Spaces and friends are octal escapes (\040) in mountinfo.
        let point = point
            .replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\134", "\\");
        let depth = Path::new(&point).components().count();
        if path.starts_with(&point) && best.is_none_or(|(d, _)| depth >= d) {
            best = Some((depth, fstype));
        }
    }
    best.map(|(_, t)| t)
}

/// Every (directory, file) of the tree at `root/rel` that matters for `prefix`.
fn list_files(root: &Path, rel: &str, prefix: &str, out: &mut Vec<(String, String)>) {
    if !dir_relevant(prefix, rel) {
        return;
    }
    let Ok(entries) = list_dir(root, rel) else {
        return;
    };
    for (name, kind) in entries {
        match kind {
            Kind::Dir => list_files(root, &join_rel(rel, &name), prefix, out),
            Kind::File => out.push((rel.to_owned(), name)),
            _ => {}
        }
    }
}

/// True when directory `rel` leads to or lies under `prefix`.
fn dir_relevant(prefix: &str, rel: &str) -> bool {
    if rel.is_empty() || prefix.is_empty() {
        return true;
    }
    let ancestor =
        prefix.len() > rel.len() && prefix.starts_with(rel) && prefix.as_bytes()[rel.len()] == b'/';
    let inside = rel.starts_with(prefix)
        && (rel.len() == prefix.len() || rel.as_bytes()[prefix.len()] == b'/');
    ancestor || inside
}

impl Watcher {
    fn mask() -> AddWatchFlags {
        AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_ONLYDIR
            | AddWatchFlags::IN_DONT_FOLLOW
    }

    /// Watches `rel` and the relevant directories below it. With `emit`, also delivers
    /// the records found there (a directory that appeared after the watch started holds
    /// only new records). Returns false when the receiver is gone.
    fn add_tree(&mut self, rel: &str, emit: bool) -> Result<bool, NotaryError> {
        if !dir_relevant(self.prefix.as_str(), rel) {
            return Ok(true);
        }
        // Opened beneath the root first: a directory that is a symlink (or lies below
        // one) is neither watched nor read. The watch goes on that very directory
        // (through its descriptor) and comes before the listing: an entry made between
        // the two is then seen by both (delivered twice, which is harmless) instead of
        // by neither. Listing first lost a `contracts/` directory made in that gap, and
        // every record later written into it.
        let fd = match open_dir(&self.root, rel) {
            Ok(fd) => fd,
            Err(OpenError::Symlink(path)) => {
                warn_symlink(&path);
                return Ok(true);
            }
            // Vanished or unreadable: nothing to watch.
            Err(_) => return Ok(true),
        };
        let by_fd = format!("/proc/self/fd/{}", fd.as_raw_fd());
        match self
            .ino
            .add_watch(by_fd.as_str(), Self::mask() - AddWatchFlags::IN_DONT_FOLLOW)
        {
            Ok(wd) => {
                self.dirs.insert(wd, rel.to_owned());
            }
            Err(nix::Error::ENOENT) | Err(nix::Error::ENOTDIR) => return Ok(true),
            Err(e) => return Err(NotaryError::Inotify(e)),
        }
        drop(fd);
        let entries = match list_dir(&self.root, rel) {
            Ok(e) => e,
            Err(OpenError::Symlink(path)) => {
                warn_symlink(&path);
                return Ok(true);
            }
            Err(_) => return Ok(true),
        };
        for (name, kind) in entries {
            let child = join_rel(rel, &name);
            let open = match kind {
                Kind::Dir => self.add_tree(&child, emit)?,
                Kind::File if emit => self.deliver_file(rel, &name),
                Kind::File => {
                    self.track_lease(rel, &name);
                    true
                }
                Kind::Symlink => {
                    warn_symlink(&self.root.join(&child));
                    true
                }
                _ => true,
            };
            if !open {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Delivers the record in file `name` of directory `rel` if it is under the prefix
    /// and verifies. Returns false when the receiver is gone.
    fn deliver_file(&mut self, rel: &str, name: &str) -> bool {
        let Some(key) = key_of(rel, name) else {
            return true;
        };
        if !self.prefix.matches(&key) {
            return true;
        }
        match load_verified(&self.root, &join_rel(rel, name), &key) {
            Some(r) => {
                self.track_lease(rel, name);
                self.tx.blocking_send(WatchEvent::Put(r)).is_ok()
            }
            None => true,
        }
    }

    /// Reports the deletion of file `name` of directory `rel` if it is a record under
    /// the prefix. Returns false when the receiver is gone.
    fn deliver_deleted(&mut self, rel: &str, name: &str) -> bool {
        let Some(key) = key_of(rel, name) else {
            return true;
        };
        self.leased.remove(&key);
        match NotaryKey::parse(&key) {
            Ok(k) if self.prefix.matches(&key) => {
                self.tx.blocking_send(WatchEvent::Deleted(k)).is_ok()
            }
            _ => true,
        }
    }

    /// Remembers file `name` of directory `rel` when it is a leased record under the
    /// prefix, so that its expiry is reported.
    fn track_lease(&mut self, rel: &str, name: &str) {
        let Some(key) = key_of(rel, name) else {
            return;
        };
        if !self.prefix.matches(&key) {
            return;
        }
        let Ok(dir) = open_dir(&self.root, rel) else {
            return;
        };
        if read_mark(&dir, &self.root.join(rel), name).is_some() {
            self.leased.insert(key, (rel.to_owned(), name.to_owned()));
        }
    }

    /// Reports the leased records that expired (on this clock) as deleted, once each;
    /// forgets the ones no longer leased or gone (inotify reports those). Returns false
    /// when the receiver is gone.
    fn expire_leases(&mut self) -> bool {
        if self.leased.is_empty()
            || self.expiry_checked.elapsed() < Duration::from_millis(POLL_MS.into())
        {
            return true;
        }
        self.expiry_checked = std::time::Instant::now();
        let now = SystemTime::now();
        let mut expired = Vec::new();
        let mut forget = Vec::new();
        for (key, (rel, name)) in &self.leased {
            let state = open_dir(&self.root, rel).ok().and_then(|dir| {
                let mark = read_mark(&dir, &self.root.join(rel), name)?;
                let st = fstatat(
                    Some(dir.as_raw_fd()),
                    name.as_str(),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .ok()?;
                let mtime = SystemTime::UNIX_EPOCH
                    + Duration::new(
                        st.st_mtime.max(0) as u64,
                        st.st_mtime_nsec.clamp(0, 999_999_999) as u32,
                    );
                Some(mark.expired(mtime, now))
            });
            match state {
                Some(false) => {}
                Some(true) => expired.push(key.clone()),
                None => forget.push(key.clone()),
            }
        }
        for key in forget {
            self.leased.remove(&key);
        }
        for key in expired {
            self.leased.remove(&key);
            let Ok(k) = NotaryKey::parse(&key) else {
                continue;
            };
            tracing::debug!(backend = BACKEND, key = %key, "leased record expired");
            if self.tx.blocking_send(WatchEvent::Deleted(k)).is_err() {
                return false;
            }
        }
        true
    }

    /// Walks a remote tree (at most every [`REMOTE_POLL`]): delivers the files that are
    /// new or changed since the last walk. The first walk only records what is there,
    /// as a watch delivers changes after it starts. Returns false when the receiver is
    /// gone.
    fn walk_remote(&mut self, first: bool) -> bool {
        let Some(remote) = self.remote.as_mut() else {
            return true;
        };
        if !first && remote.walked.elapsed() < REMOTE_POLL {
            return true;
        }
        remote.walked = std::time::Instant::now();
        let mut files = Vec::new();
        list_files(&self.root, "", self.prefix.as_str(), &mut files);
        let mut changed = Vec::new();
        let mut seen = HashMap::with_capacity(files.len());
        for (rel, name) in files {
            use std::os::unix::fs::MetadataExt;
            let Ok(m) = fs::symlink_metadata(self.root.join(&rel).join(&name)) else {
                continue;
            };
            let stamp = (
                m.ino(),
                m.size(),
                i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            );
            let key = (rel, name);
            if remote.seen.get(&key) != Some(&stamp) {
                changed.push(key.clone());
            }
            seen.insert(key, stamp);
        }
        let vanished: Vec<(String, String)> = remote
            .seen
            .keys()
            .filter(|k| !seen.contains_key(*k))
            .cloned()
            .collect();
        remote.seen = seen;
        if first {
            return true;
        }
        changed
            .iter()
            .all(|(rel, name)| self.deliver_file(rel, name))
            && vanished
                .iter()
                .all(|(rel, name)| self.deliver_deleted(rel, name))
    }

    /// After a queue overflow: watch everything again and re-deliver every record.
    fn rescan(&mut self) -> Result<bool, NotaryError> {
        tracing::warn!(backend = BACKEND, prefix = %self.prefix, "inotify queue overflow; rescanning");
        for wd in std::mem::take(&mut self.dirs).into_keys() {
            let _ = self.ino.rm_watch(wd);
        }
        if !self.add_tree("", false)? {
            return Ok(false);
        }
        let mut open = true;
        let tx = self.tx.clone();
        scan_prefix(&self.root, &self.prefix, &mut |r| {
            if open {
                open = tx.blocking_send(WatchEvent::Put(r)).is_ok();
            }
        })?;
        Ok(open)
    }

    /// Handles events until the receiver is dropped. Returns Ok on a clean stop.
    fn run(&mut self) -> Result<(), NotaryError> {
        loop {
            if self.tx.is_closed() || !self.walk_remote(false) || !self.expire_leases() {
                return Ok(());
            }
            let mut fds = [PollFd::new(self.ino.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(POLL_MS)) {
                Ok(0) | Err(nix::Error::EINTR) => continue,
                Ok(_) => {}
                Err(e) => return Err(NotaryError::Inotify(e)),
            }
            let events = match self.ino.read_events() {
                Ok(ev) => ev,
                Err(nix::Error::EAGAIN) | Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(NotaryError::Inotify(e)),
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    if !self.rescan()? {
                        return Ok(());
                    }
                    continue;
                }
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    self.dirs.remove(&ev.wd);
                    continue;
                }
                let (Some(rel), Some(name)) = (self.dirs.get(&ev.wd).cloned(), ev.name) else {
                    continue;
                };
                let Some(name) = name.to_str().map(str::to_owned) else {
                    continue;
                };
                if name.starts_with('.') {
                    continue;
                }
                let open = if ev.mask.contains(AddWatchFlags::IN_ISDIR) {
                    if ev
                        .mask
                        .intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO)
                    {
                        let child = if rel.is_empty() {
                            name
                        } else {
                            format!("{rel}/{name}")
                        };
                        self.add_tree(&child, true)?
                    } else {
                        true
                    }
                } else if ev
                    .mask
                    .intersects(AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE)
                {
                    self.deliver_file(&rel, &name)
                } else if ev
                    .mask
                    .intersects(AddWatchFlags::IN_DELETE | AddWatchFlags::IN_MOVED_FROM)
                {
                    self.deliver_deleted(&rel, &name)
                } else {
                    true
                };
                if !open {
                    return Ok(());
                }
            }
        }
    }
}

fn watch_thread(
    root: PathBuf,
    prefix: KeyPrefix,
    tx: mpsc::Sender<WatchEvent>,
    ready: oneshot::Sender<Result<(), NotaryError>>,
) {
    let setup = (|| {
        let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(NotaryError::Inotify)?;
        let remote = is_remote_fs(&root).then(|| RemoteTree {
            seen: HashMap::new(),
            walked: std::time::Instant::now(),
        });
        let mut w = Watcher {
            ino,
            root,
            prefix,
            dirs: HashMap::new(),
            tx,
            remote,
            leased: HashMap::new(),
            expiry_checked: std::time::Instant::now(),
        };
        w.add_tree("", false)?;
        w.walk_remote(true);
        Ok(w)
    })();
    let mut w = match setup {
        Ok(w) => {
            let _ = ready.send(Ok(()));
            w
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    tracing::debug!(backend = BACKEND, prefix = %w.prefix, dirs = w.dirs.len(), remote = w.remote.is_some(), "watch started");
    if let Err(e) = w.run() {
        // Dropping the sender ends the consumer's stream: it sees `None`.
        tracing::error!(backend = BACKEND, prefix = %w.prefix, error = %e, "watch failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relevance_follows_the_prefix() {
        assert!(dir_relevant("nodes/a/contracts", ""));
        assert!(dir_relevant("nodes/a/contracts", "nodes"));
        assert!(dir_relevant("nodes/a/contracts", "nodes/a"));
        assert!(dir_relevant("nodes/a/contracts", "nodes/a/contracts"));
        assert!(!dir_relevant("nodes/a/contracts", "nodes/a/status"));
        assert!(!dir_relevant("nodes/a/contracts", "nodes/ab"));
        assert!(!dir_relevant("nodes/a/contracts", "farms"));
        assert!(dir_relevant("", "farms"));
        assert!(dir_relevant("nodes", "nodes/x/status"));
    }

    /// A notary tree on 9p or NFS changes without inotify events: the walk finds what
    /// changed (a new record, a replaced one), delivers only that, and nothing twice.
    /// (The real 9p case runs in `cargo xtask demo`, a QEMU node on the host's tree.)
    #[test]
    fn a_remote_tree_is_walked_for_what_changed() {
        use crate::Notary;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let notary = DirNotary::open(tmp.path()).unwrap();
        let author = zos_contract::SecretKey::from_seed([7; 32]);
        let node = zos_contract::SecretKey::from_seed([8; 32]).public();
        let record = |id: &str, v: u64| {
            let key = NotaryKey::contract(&node, id).unwrap();
            let body =
                serde_json::json!({ "contract": { "owner": author.public(), "version": v } });
            Record::sign_at(&key, body, &author, 1).unwrap()
        };
        rt.block_on(notary.put(&record("old", 1))).unwrap();

        let (tx, mut rx) = mpsc::channel(16);
        let mut w = Watcher {
            ino: Inotify::init(InitFlags::IN_CLOEXEC).unwrap(),
            root: tmp.path().to_path_buf(),
            prefix: KeyPrefix::node_contracts(&node),
            dirs: HashMap::new(),
            tx,
            remote: Some(RemoteTree {
                seen: HashMap::new(),
                walked: std::time::Instant::now(),
            }),
            leased: HashMap::new(),
            expiry_checked: std::time::Instant::now(),
        };
        assert!(w.walk_remote(true));
        assert!(rx.try_recv().is_err(), "what was there before the watch");

        rt.block_on(notary.put(&record("new", 1))).unwrap();
        rt.block_on(notary.put(&record("old", 2))).unwrap();
        assert!(w.walk_remote(false));
        assert!(rx.try_recv().is_err(), "walked again before REMOTE_POLL");

        w.remote.as_mut().unwrap().walked -= REMOTE_POLL;
        assert!(w.walk_remote(false));
        let mut got: Vec<String> = std::iter::from_fn(|| match rx.try_recv().ok()? {
            WatchEvent::Put(r) => Some(r),
            WatchEvent::Deleted(k) => panic!("nothing was deleted, yet {k} reported"),
        })
        .map(|r| format!("{} v{}", r.key, r.body["contract"]["version"]))
        .collect();
        got.sort();
        assert_eq!(
            got,
            vec![
                format!("nodes/{node}/contracts/new v1"),
                format!("nodes/{node}/contracts/old v2"),
            ]
        );
        w.remote.as_mut().unwrap().walked -= REMOTE_POLL;
        assert!(w.walk_remote(false));
        assert!(
            rx.try_recv().is_err(),
            "unchanged files are not delivered again"
        );
        assert!(!is_remote_fs(tmp.path()), "a local temp dir is not remote");
    }

    #[test]
    fn the_mount_type_of_a_path() {
        let mountinfo = "\
22 1 0:21 / / rw,relatime - tmpfs rootfs rw
25 22 0:5 / /proc rw - proc proc rw
40 22 0:35 / /tmp/zos-demo-1 rw - 9p demo rw,trans=virtio
41 40 0:36 / /tmp/zos-demo-1/local rw - tmpfs tmpfs rw
42 22 0:37 / /srv/my\\040notary rw - nfs4 srv:/n rw
";
        let t = |p: &str| mount_fstype(mountinfo, Path::new(p));
        assert_eq!(t("/tmp/zos-demo-1/notary"), Some("9p"));
        assert_eq!(t("/tmp/zos-demo-1"), Some("9p"));
        assert_eq!(t("/tmp/zos-demo-1/local/x"), Some("tmpfs"));
        assert_eq!(
            t("/tmp/zos-demo-10"),
            Some("tmpfs"),
            "a prefix of the name is not a parent"
        );
        assert_eq!(t("/srv/my notary/nodes"), Some("nfs4"));
        assert_eq!(t("/var/lib/zos"), Some("tmpfs"));
    }

    #[test]
    fn key_of_skips_hidden_and_foreign_files() {
        assert_eq!(key_of("farms", "1.json").as_deref(), Some("farms/1"));
        assert_eq!(key_of("farms", ".1.json.3.4.tmp"), None);
        assert_eq!(key_of("farms", "1.txt"), None);
        // The lease mark and the key lock beside a record are no records.
        assert_eq!(key_of("farms", &mark_name("1.json")), None);
        assert_eq!(key_of("farms", &format!(".1.json{LOCK_FILE_SUFFIX}")), None);
    }

    #[test]
    fn lease_marks_round_trip_and_judge_age() {
        let m = Mark {
            lease: 42,
            ttl: Duration::from_millis(2500),
        };
        assert_eq!(Mark::parse(&m.to_bytes()), Some(m));
        for bad in [&b""[..], b"42", b"x 1", b"1 -5", b"1 2 3", b"\xff 1"] {
            assert_eq!(Mark::parse(bad), None, "{bad:?}");
        }
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert!(!m.expired(t0, t0 + Duration::from_millis(2500)));
        assert!(m.expired(t0, t0 + Duration::from_millis(2501)));
        // A file from the future (another clock ahead of ours) has not expired.
        assert!(!m.expired(t0 + Duration::from_secs(60), t0));
    }

    /// A remote tree has no inotify: a record that vanished between two walks is
    /// reported deleted.
    #[test]
    fn a_remote_walk_reports_deleted_files() {
        use crate::Notary;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let notary = DirNotary::open(tmp.path()).unwrap();
        let author = zos_contract::SecretKey::from_seed([7; 32]);
        let node = zos_contract::SecretKey::from_seed([8; 32]).public();
        let key = NotaryKey::contract(&node, "c").unwrap();
        let body = serde_json::json!({ "contract": { "owner": author.public(), "version": 1 } });
        let record = Record::sign_at(&key, body, &author, 1).unwrap();
        rt.block_on(notary.put(&record)).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let mut w = Watcher {
            ino: Inotify::init(InitFlags::IN_CLOEXEC).unwrap(),
            root: tmp.path().to_path_buf(),
            prefix: KeyPrefix::node_contracts(&node),
            dirs: HashMap::new(),
            tx,
            remote: Some(RemoteTree {
                seen: HashMap::new(),
                walked: std::time::Instant::now(),
            }),
            leased: HashMap::new(),
            expiry_checked: std::time::Instant::now(),
        };
        assert!(w.walk_remote(true));
        rt.block_on(notary.delete(&key)).unwrap();
        w.remote.as_mut().unwrap().walked -= REMOTE_POLL;
        assert!(w.walk_remote(false));
        assert_eq!(rx.try_recv().ok(), Some(WatchEvent::Deleted(key)));
        assert!(rx.try_recv().is_err());
    }
}
