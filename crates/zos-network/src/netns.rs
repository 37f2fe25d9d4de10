//! Network namespaces as bind-mounted files (the `ip netns` convention), and
//! running code inside one.
//!
//! Why entering a namespace on a dedicated thread is thread-safe: a network
//! namespace is a per-thread attribute (`setns(CLONE_NEWNET)` and
//! `unshare(CLONE_NEWNET)` replace only the calling thread's nsproxy; unlike the
//! user or mount namespace they are allowed in a multi-threaded process). `run_in`
//! spawns a fresh thread for every call, switches it, runs the closure and lets the
//! thread exit, so no other code (a tokio worker, the caller) ever runs in a
//! namespace it did not ask for, and nothing has to be switched back. What is
//! created on that thread stays bound to the namespace it was created in: netlink
//! and TCP sockets keep their namespace for life, and a child process spawned from
//! that thread inherits the thread's namespace (so `nft` and `ping` run there).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};

use crate::error::{Error, Result};

fn nserr(path: &Path, op: &'static str, e: impl Into<std::io::Error>) -> Error {
    Error::Netns {
        path: path.to_path_buf(),
        op,
        source: e.into(),
    }
}

/// Open a namespace file (a bind mount under the run dir, or a `/proc/.../ns/net`).
pub fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| nserr(path, "open", e))
}

/// The calling thread's own network namespace (what `node_netns: None` means).
pub fn current() -> Result<File> {
    open(Path::new("/proc/thread-self/ns/net"))
}

/// Run `f` on a new thread that is inside `ns` (or in the caller's namespace, given
/// as an open file, when `ns` is a `File` from [`current`]).
pub fn run_in<R: Send>(ns: &File, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            setns(ns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                // Name the namespace as the kernel does (`net:[inode]`).
                let fd = format!("/proc/self/fd/{}", ns.as_raw_fd());
                nserr(
                    &std::fs::read_link(&fd).unwrap_or_else(|_| fd.into()),
                    "setns",
                    e,
                )
            })?;
            f()
        });
        match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Run `f` inside the namespace at `path`.
pub fn run_at<R: Send>(path: &Path, f: impl FnOnce() -> Result<R> + Send) -> Result<R> {
    run_in(&open(path)?, f)
}

/// True when `path` is a mounted namespace file (nsfs), not a stale plain file.
pub fn is_mounted(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::NSFS_MAGIC)
        .unwrap_or(false)
}

/// Create the namespace `run_dir/name` unless it exists. Returns true if created.
pub fn create(run_dir: &Path, name: &str) -> Result<bool> {
    let path = run_dir.join(name);
    if is_mounted(&path) {
        return Ok(false);
    }
    std::fs::create_dir_all(run_dir).map_err(|e| nserr(run_dir, "create run dir", e))?;
    // A stale file (a crash between create and mount) is simply mounted over.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| nserr(&path, "create file", e))?;
    let mounted = std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            // A fresh thread gets the new namespace; the bind mount keeps it alive
            // after the thread exits.
            unshare(CloneFlags::CLONE_NEWNET).map_err(|e| nserr(&path, "unshare", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| nserr(&path, "bind mount", e))
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    if let Err(e) = mounted {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    tracing::debug!(netns = %path.display(), "namespace created");
    Ok(true)
}

/// Remove the namespace file `run_dir/name`: detach the bind mount and unlink it.
/// The kernel destroys the namespace (and every virtual link in it) once nothing
/// else holds it. Returns true if there was something to remove.
pub fn remove(run_dir: &Path, name: &str) -> Result<bool> {
    let path = run_dir.join(name);
    let mut existed = false;
    if is_mounted(&path) {
        umount2(&path, MntFlags::MNT_DETACH).map_err(|e| nserr(&path, "umount", e))?;
        existed = true;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => existed = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(nserr(&path, "unlink", e)),
    }
    if existed {
        tracing::debug!(netns = %path.display(), "namespace removed");
    }
    Ok(existed)
}

/// Names of the namespace files under `run_dir` that start with `prefix`.
pub fn list(run_dir: &Path, prefix: &str) -> Result<Vec<String>> {
    let rd = match std::fs::read_dir(run_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(nserr(run_dir, "read dir", e)),
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    Ok(v)
}

/// Path of a namespace file.
pub fn path(run_dir: &Path, name: &str) -> PathBuf {
    run_dir.join(name)
}

/// Write a sysctl of the calling thread's network namespace (`/proc/sys/net/...`
/// resolves against the namespace of the thread that opens it).
pub fn sysctl(key: &str, value: &str) -> Result<()> {
    let p = format!("/proc/sys/{}", key.replace('.', "/"));
    std::fs::write(&p, value).map_err(|e| Error::io(format!("write {p}"), e))
}
