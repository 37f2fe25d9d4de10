//! `dir://` backend: one file per record, `<root>/<key>.json`.
//!
//! Writes are atomic and durable: the record goes to a temporary file in the target
//! directory (`.<name>.<pid>.<n>.tmp`, created exclusively), which is fsynced, renamed
//! over the target and the directory fsynced. Several writers (threads or processes)
//! may write at once: each has its own temporary file and `rename` is atomic, so a
//! reader sees one whole record or another, never a mix. Newly created directories are
//! fsynced into their parent.
//!
//! Files are opened with `O_NOFOLLOW | O_NONBLOCK` and must be regular files: a symlink
//! or a FIFO planted in the tree is refused, not followed or blocked on.
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
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::sync::{mpsc, oneshot};

use crate::{
    warn_skipped, KeyPrefix, Notary, NotaryError, NotaryKey, Record, RecordError, Watch,
    MAX_RECORD_BYTES, WATCH_CHANNEL,
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
        let path = self.path_of(&key);
        self.blocking(move |root| write_atomic(root, &path, &bytes))
            .await?;
        tracing::debug!(backend = BACKEND, key = %key, "record stored");
        Ok(())
    }

    async fn get(&self, key: &NotaryKey) -> Result<Option<Record>, NotaryError> {
        let path = self.path_of(key);
        let key = key.clone();
        self.blocking(move |_| match read_limited(&path) {
            Ok(bytes) => Ok(Some(Record::from_bytes_verified(&bytes, key.as_str())?)),
            Err(ReadError::Missing) => Ok(None),
            Err(ReadError::Record(e)) => Err(e.into()),
            Err(ReadError::Io(e)) => Err(NotaryError::Io { path, source: e }),
        })
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
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let (ready_tx, ready_rx) = oneshot::channel();
        let root = self.root.to_path_buf();
        let prefix = prefix.clone();
        std::thread::Builder::new()
            .name("notary-dir-watch".into())
            .spawn(move || watch_thread(root, prefix, tx, ready_tx))
            .map_err(io_err(&self.root))?;
        match ready_rx.await {
            Ok(Ok(())) => Ok(Watch::new(rx, None)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(NotaryError::Io {
                path: self.root.to_path_buf(),
                source: io::Error::other("watch thread ended during setup"),
            }),
        }
    }
}

// ---------------------------------------------------------------------------------
// Files

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Creates the directories between `root` and `dir`, fsyncing each new one into its
/// parent. Concurrent creators are fine (EEXIST is success).
fn create_dirs(root: &Path, dir: &Path) -> Result<(), NotaryError> {
    let rel = dir.strip_prefix(root).unwrap_or(Path::new(""));
    let mut cur = root.to_path_buf();
    for comp in rel.components() {
        let parent = cur.clone();
        cur.push(comp);
        match fs::create_dir(&cur) {
            Ok(()) => fsync_dir(&parent)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&cur)(e)),
        }
    }
    Ok(())
}

fn fsync_dir(dir: &Path) -> Result<(), NotaryError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

fn write_atomic(root: &Path, path: &Path, bytes: &[u8]) -> Result<(), NotaryError> {
    let dir = path.parent().unwrap_or(root);
    create_dirs(root, dir)?;
    let name = path.file_name().and_then(OsStr::to_str).unwrap_or("record");
    let tmp = dir.join(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        drop(f);
        fs::rename(&tmp, path).map_err(io_err(path))?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

enum ReadError {
    Missing,
    Record(RecordError),
    Io(io::Error),
}

/// Reads a regular file of at most [`MAX_RECORD_BYTES`], never following a symlink or
/// blocking on a FIFO.
fn read_limited(path: &Path) -> Result<Vec<u8>, ReadError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => ReadError::Missing,
            _ if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                ReadError::Record(RecordError::Malformed("record file is a symlink".into()))
            }
            _ => ReadError::Io(e),
        })?;
    let meta = file.metadata().map_err(ReadError::Io)?;
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
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_RECORD_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(ReadError::Record(RecordError::Oversized {
            size: bytes.len(),
            max: MAX_RECORD_BYTES,
        }));
    }
    Ok(bytes)
}

/// The logical key of a file `name` in directory `rel` (relative to the root), if the
/// file is a record file (not hidden, `.json`).
fn key_of(rel: &str, name: &str) -> Option<String> {
    if name.starts_with('.') {
        return None;
    }
    let stem = name.strip_suffix(SUFFIX)?;
    Some(if rel.is_empty() {
        stem.to_owned()
    } else {
        format!("{rel}/{stem}")
    })
}

/// Reads and verifies one record file; on failure logs and returns `None`.
fn load_verified(path: &Path, key: &str) -> Option<Record> {
    if let Err(e) = NotaryKey::parse(key) {
        warn_skipped(BACKEND, key, &e);
        return None;
    }
    match read_limited(path) {
        Ok(bytes) => match Record::from_bytes_verified(&bytes, key) {
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
        Err(ReadError::Io(e)) => {
            warn_skipped(BACKEND, key, &e);
            None
        }
    }
}

/// Emits every verified record under `prefix`: the file `<prefix>.json` (when the
/// prefix is itself a key) and everything below the directory `<prefix>/`.
fn scan_prefix(
    root: &Path,
    prefix: &KeyPrefix,
    emit: &mut dyn FnMut(Record),
) -> Result<(), NotaryError> {
    let p = prefix.as_str();
    if let Some((parent, name)) = p.rsplit_once('/').or(Some(("", p))) {
        if !name.is_empty() {
            let file = root.join(format!("{p}{SUFFIX}"));
            if let Some(key) = key_of(parent, &format!("{name}{SUFFIX}")) {
                if file.exists() {
                    if let Some(r) = load_verified(&file, &key) {
                        emit(r);
                    }
                }
            }
        }
    }
    scan_tree(root, p, emit)
}

/// Emits every verified record in directory `rel` and below. A missing directory is
/// empty.
fn scan_tree(root: &Path, rel: &str, emit: &mut dyn FnMut(Record)) -> Result<(), NotaryError> {
    let dir = root.join(rel);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::ENOTDIR) => return Ok(()),
        Err(e) => return Err(io_err(&dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(&dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        let ft = entry.file_type().map_err(io_err(&entry.path()))?;
        let child = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if ft.is_dir() {
            scan_tree(root, &child, emit)?;
        } else if let Some(key) = key_of(rel, &name) {
            if let Some(r) = load_verified(&entry.path(), &key) {
                emit(r);
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
    tx: mpsc::Sender<Record>,
    /// Set when `root` is on a filesystem written from elsewhere.
    remote: Option<RemoteTree>,
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
    let Ok(entries) = fs::read_dir(root.join(rel)) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        match entry.file_type() {
            Ok(ft) if ft.is_dir() => {
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                list_files(root, &child, prefix, out);
            }
            Ok(ft) if ft.is_file() => out.push((rel.to_owned(), name)),
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
        let dir = self.root.join(rel);
        match self.ino.add_watch(&dir, Self::mask()) {
            Ok(wd) => {
                self.dirs.insert(wd, rel.to_owned());
            }
            // Vanished or not a directory: nothing to watch.
            Err(nix::Error::ENOENT) | Err(nix::Error::ENOTDIR) => return Ok(true),
            Err(e) => return Err(NotaryError::Inotify(e)),
        }
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(_) => return Ok(true),
        };
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let child = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let open = match entry.file_type() {
                Ok(ft) if ft.is_dir() => self.add_tree(&child, emit)?,
                Ok(ft) if ft.is_file() && emit => self.deliver_file(rel, &name),
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
    fn deliver_file(&self, rel: &str, name: &str) -> bool {
        let Some(key) = key_of(rel, name) else {
            return true;
        };
        if !self.prefix.matches(&key) {
            return true;
        }
        match load_verified(&self.root.join(rel).join(name), &key) {
            Some(r) => self.tx.blocking_send(r).is_ok(),
            None => true,
        }
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
        remote.seen = seen;
        if first {
            return true;
        }
        changed
            .iter()
            .all(|(rel, name)| self.deliver_file(rel, name))
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
                open = tx.blocking_send(r).is_ok();
            }
        })?;
        Ok(open)
    }

    /// Handles events until the receiver is dropped. Returns Ok on a clean stop.
    fn run(&mut self) -> Result<(), NotaryError> {
        loop {
            if self.tx.is_closed() || !self.walk_remote(false) {
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
    tx: mpsc::Sender<Record>,
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
            Record::sign_at(&key, serde_json::json!({ "version": v }), &author, 1).unwrap()
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
        };
        assert!(w.walk_remote(true));
        assert!(rx.try_recv().is_err(), "what was there before the watch");

        rt.block_on(notary.put(&record("new", 1))).unwrap();
        rt.block_on(notary.put(&record("old", 2))).unwrap();
        assert!(w.walk_remote(false));
        assert!(rx.try_recv().is_err(), "walked again before REMOTE_POLL");

        w.remote.as_mut().unwrap().walked -= REMOTE_POLL;
        assert!(w.walk_remote(false));
        let mut got: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|r| format!("{} v{}", r.key, r.body["version"]))
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
    }
}
