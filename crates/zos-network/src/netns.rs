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

/// The file `run_dir/name` to bind a new namespace onto, made if missing; `None` when
/// a namespace is mounted there already. A stale file (a crash between create and
/// mount) is simply mounted over.
fn mount_point(run_dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    let path = run_dir.join(name);
    if is_mounted(&path) {
        return Ok(None);
    }
    std::fs::create_dir_all(run_dir).map_err(|e| nserr(run_dir, "create run dir", e))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| nserr(&path, "create file", e))?;
    Ok(Some(path))
}

/// Create the namespace `run_dir/name` unless it exists. Returns true if created.
pub fn create(run_dir: &Path, name: &str) -> Result<bool> {
    let Some(path) = mount_point(run_dir, name)? else {
        return Ok(false);
    };
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

/// Create the namespace `run_dir/name` owned by the user namespace at `owner` (a
/// workload's: see zos-container's `userns`), unless it exists. Returns true if
/// created.
///
/// Why a child process: joining a user namespace is refused to a threaded process,
/// and the network namespace takes its owner from the user namespace of its creator.
/// The child joins `owner`, unshares a network namespace and waits to be killed; this
/// process bind-mounts the child's namespace onto the file.
pub fn create_owned(run_dir: &Path, name: &str, owner: &Path) -> Result<bool> {
    let Some(path) = mount_point(run_dir, name)? else {
        return Ok(false);
    };
    let userns = File::open(owner).map_err(|e| nserr(owner, "open user namespace", e))?;
    let (ready_r, ready_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| nserr(&path, "pipe", e))?;
    let (userns_fd, ready_fd) = (userns.as_raw_fd(), ready_w.as_raw_fd());
    // SAFETY: the child runs only raw system calls (setns, unshare, write, pause) on
    // descriptors opened before the fork: nothing that allocates or takes a lock, as
    // required after forking a threaded process.
    let forked = unsafe { nix::unistd::fork() }.map_err(|e| nserr(&path, "fork", e))?;
    let child = match forked {
        // SAFETY: as above: raw system calls on open descriptors; `status` lives on
        // this stack for the `write`.
        nix::unistd::ForkResult::Child => unsafe {
            let mut status: u8 = 0;
            if libc::setns(userns_fd, libc::CLONE_NEWUSER) != 0 {
                status = 1;
            } else if libc::unshare(libc::CLONE_NEWNET) != 0 {
                status = 2;
            }
            libc::write(ready_fd, std::ptr::addr_of!(status).cast(), 1);
            if status != 0 {
                libc::_exit(1);
            }
            loop {
                libc::pause();
            }
        },
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(ready_w);
    let made = (|| {
        let mut fds = [nix::poll::PollFd::new(
            ready_r.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let n = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16))
            .map_err(|e| nserr(&path, "poll", e))?;
        let mut status = [0xffu8];
        if n == 0 || nix::unistd::read(ready_r.as_raw_fd(), &mut status) != Ok(1) {
            return Err(nserr(
                &path,
                "child did not answer",
                std::io::Error::other("timeout"),
            ));
        }
        match status[0] {
            0 => {}
            1 => {
                return Err(nserr(
                    owner,
                    "setns(user)",
                    std::io::Error::other("refused"),
                ))
            }
            _ => {
                return Err(nserr(
                    &path,
                    "unshare(net) in user namespace",
                    std::io::Error::other("refused"),
                ))
            }
        }
        mount(
            Some(format!("/proc/{child}/ns/net").as_str()),
            &path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| nserr(&path, "bind mount", e))
    })();
    let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(child, None);
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    tracing::debug!(netns = %path.display(), owner = %owner.display(), "namespace created in a user namespace");
    Ok(true)
}

/// True when the network namespace at `path` is owned by the user namespace at
/// `owner` (same nsfs inode as `NS_GET_USERNS` answers).
pub fn owned_by(path: &Path, owner: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    /// `_IO(0xb7, 0x1)`: the user namespace that owns a namespace.
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    let ns = open(path)?;
    // SAFETY: NS_GET_USERNS takes no argument and returns a new descriptor or -1.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return Err(nserr(
            path,
            "NS_GET_USERNS",
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `fd` was just returned to us by the kernel and is owned by nobody else.
    let userns = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let have = userns
        .metadata()
        .map_err(|e| nserr(path, "stat owner", e))?;
    let want = std::fs::metadata(owner).map_err(|e| nserr(owner, "stat", e))?;
    Ok((have.dev(), have.ino()) == (want.dev(), want.ino()))
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
