//! Exit and crash detection.
//!
//! libcontainer clones the container's init process with `CLONE_PARENT`, so it is *our*
//! child, but with no exit signal: `waitpid` finds it only with `__WALL`. One small thread
//! per container blocks in `waitpid(pid, __WALL)`, reaps the init and publishes how it
//! ended. A re-adopted container (started by an earlier zosd) is not our child: its thread
//! waits on a pidfd instead and the status is unknown.
//!
//! The result is readable both ways: `ExitWatch::wait` for the tokio engine, and
//! `ExitWatch::wait_blocking` for threads and tests.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a container's init process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal (SIGKILL from the OOM killer, a crash, an operator...).
    Signal(i32),
    /// Ended, but we could not learn how (re-adopted container, or reaped by someone else).
    Unknown,
}

impl Exit {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        matches!(self, Exit::Code(0))
    }

    /// Not a clean exit: a signal, a non-zero code, or unknown.
    pub fn crashed(&self) -> bool {
        !self.success()
    }
}

struct Shared {
    value: Mutex<Option<Exit>>,
    cv: Condvar,
    tx: tokio::sync::watch::Sender<Option<Exit>>,
}

/// The sending half: set once when the process has ended (fakes use it directly).
#[derive(Clone)]
pub struct ExitNotifier(Arc<Shared>);

impl ExitNotifier {
    /// Publishes `exit` to every [`ExitWatch`]; only the first call counts.
    pub fn notify(&self, exit: Exit) {
        let mut v = self.0.value.lock().unwrap_or_else(|e| e.into_inner());
        if v.is_none() {
            *v = Some(exit);
            self.0.cv.notify_all();
            self.0.tx.send_replace(Some(exit));
        }
    }
}

/// The receiving half: cheap to clone, every clone sees the exit.
#[derive(Clone)]
pub struct ExitWatch {
    shared: Arc<Shared>,
    rx: tokio::sync::watch::Receiver<Option<Exit>>,
}

impl std::fmt::Debug for ExitWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExitWatch")
            .field("exit", &self.get())
            .finish()
    }
}

/// A connected notifier/watch pair.
pub fn exit_channel() -> (ExitNotifier, ExitWatch) {
    let (tx, rx) = tokio::sync::watch::channel(None);
    let shared = Arc::new(Shared {
        value: Mutex::new(None),
        cv: Condvar::new(),
        tx,
    });
    (ExitNotifier(shared.clone()), ExitWatch { shared, rx })
}

impl ExitWatch {
    /// The exit, if it happened already.
    pub fn get(&self) -> Option<Exit> {
        *self.shared.value.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait (async) until the process ended.
    pub async fn wait(&mut self) -> Exit {
        let seen = match self.rx.wait_for(Option::is_some).await {
            Ok(v) => *v,
            // The sender lives in `shared`, which we hold: it cannot be dropped.
            Err(_) => None,
        };
        seen.or_else(|| self.get()).unwrap_or(Exit::Unknown)
    }

    /// Wait (blocking) at most `timeout`.
    pub fn wait_blocking(&self, timeout: Duration) -> Option<Exit> {
        let deadline = Instant::now() + timeout;
        let mut v = self.shared.value.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(e) = *v {
                return Some(e);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            v = self
                .shared
                .cv
                .wait_timeout(v, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Container inits a waiter thread owns: nobody else may reap them.
fn watched() -> &'static Mutex<std::collections::HashSet<i32>> {
    static W: std::sync::OnceLock<Mutex<std::collections::HashSet<i32>>> =
        std::sync::OnceLock::new();
    W.get_or_init(Default::default)
}

pub(crate) fn is_watched(pid: i32) -> bool {
    watched()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(&pid)
}

/// Reap our child `pid` on a thread and report how it ended.
pub(crate) fn watch_child(id: &str, pid: Pid) -> std::io::Result<ExitWatch> {
    let (notifier, watch) = exit_channel();
    watched()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid.as_raw());
    let id = id.to_string();
    let spawned = std::thread::Builder::new()
        .name(format!("zos-wait-{pid}"))
        // It only sits in waitpid: a small stack is plenty.
        .stack_size(64 * 1024)
        .spawn(move || {
            let exit = loop {
                match waitpid(pid, Some(WaitPidFlag::__WALL)) {
                    Ok(WaitStatus::Exited(_, code)) => break Exit::Code(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => break Exit::Signal(sig as i32),
                    // Stops/continues are not ends (we do not ask for them, but be exact).
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        // ECHILD: someone else reaped it (e.g. a PID 1 reaper with waitpid(-1)).
                        tracing::warn!(container = %id, %pid, error = %e, "waitpid on container init failed");
                        break Exit::Unknown;
                    }
                }
            };
            watched()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&pid.as_raw());
            tracing::info!(container = %id, %pid, ?exit, "container init ended");
            notifier.notify(exit);
        });
    if let Err(e) = spawned {
        watched()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid.as_raw());
        return Err(e);
    }
    Ok(watch)
}

/// Watch a process that is not our child (re-adoption): a pidfd becomes readable when it
/// exits; the exit status is not ours to read.
pub(crate) fn watch_foreign(id: &str, pid: Pid) -> std::io::Result<ExitWatch> {
    let (notifier, watch) = exit_channel();
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            notifier.notify(Exit::Unknown);
            return Ok(watch);
        }
        return Err(e);
    }
    // SAFETY: the syscall just returned this fd to us and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let id = id.to_string();
    std::thread::Builder::new()
        .name(format!("zos-pidfd-{pid}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            loop {
                let mut fds = [nix::poll::PollFd::new(
                    fd.as_fd(),
                    nix::poll::PollFlags::POLLIN,
                )];
                match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
                    Ok(n) if n > 0 => break,
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::warn!(container = %id, %pid, error = %e, "poll on pidfd failed");
                        break;
                    }
                }
            }
            // If it happens to be our child (adopted by the process that created it), reap
            // it and learn how it ended; otherwise the status belongs to its real parent.
            let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::__WALL;
            let exit = match nix::sys::wait::waitid(nix::sys::wait::Id::PIDFd(fd.as_fd()), flags) {
                Ok(WaitStatus::Exited(_, code)) => Exit::Code(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => Exit::Signal(sig as i32),
                _ => Exit::Unknown,
            };
            tracing::info!(container = %id, %pid, ?exit, "adopted container init ended");
            notifier.notify(exit);
        })?;
    Ok(watch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_once_and_wait_both_ways() {
        let (n, w) = exit_channel();
        assert_eq!(w.get(), None);
        assert_eq!(w.wait_blocking(Duration::from_millis(1)), None);
        let mut w2 = w.clone();
        n.notify(Exit::Signal(9));
        n.notify(Exit::Code(0));
        assert_eq!(
            w.wait_blocking(Duration::from_secs(5)),
            Some(Exit::Signal(9))
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(w2.wait()), Exit::Signal(9));
        assert!(Exit::Signal(9).crashed());
        assert!(Exit::Code(1).crashed());
        assert!(!Exit::Code(0).crashed());
    }
}
