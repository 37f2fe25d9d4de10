//! Exit and crash detection.
//!
//! libcontainer clones the container's init process with `CLONE_PARENT`, so it is *our*
//! child, but with no exit signal: `waitid` finds it only with `__WALL`. One thread, the
//! reaper, holds a pidfd of every container init in an epoll set; when one becomes
//! readable it reaps that init (`waitid(P_PIDFD, __WALL)`) and publishes how it ended. A
//! re-adopted container (started by an earlier zosd) is not our child: the reaper learns
//! that it ended, and the status is unknown.
//!
//! The result is readable both ways: `ExitWatch::wait` for the tokio engine, and
//! `ExitWatch::wait_blocking` for threads and tests.

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::epoll_thread::EpollThread;

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

/// A process the reaper waits for.
struct Waited {
    pidfd: OwnedFd,
    pid: Pid,
    container: String,
    /// Our child (reaped here, its status known) or a re-adopted one (not ours to reap).
    ours: bool,
    notifier: ExitNotifier,
}

impl Waited {
    /// How it ended, once its pidfd is readable: our child is reaped (`__WALL`: it has
    /// no exit signal); another's status is its parent's, unless it happens to be ours.
    fn ended(&self) -> Exit {
        let mut flags = WaitPidFlag::WEXITED | WaitPidFlag::__WALL;
        if !self.ours {
            flags |= WaitPidFlag::WNOHANG;
        }
        loop {
            match waitid(Id::PIDFd(self.pidfd.as_fd()), flags) {
                Ok(WaitStatus::Exited(_, code)) => return Exit::Code(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => return Exit::Signal(sig as i32),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) if self.ours => {
                    // ECHILD: someone else reaped it.
                    tracing::warn!(container = %self.container, pid = %self.pid, error = %e, "waitid on container init failed");
                    return Exit::Unknown;
                }
                _ => return Exit::Unknown,
            }
        }
    }
}

/// One thread waits for every container init: an epoll set of their pidfds, each
/// readable once its process has ended. A thread per container sat in `waitpid` with a
/// stack of its own; 500 containers made 500 of them.
struct Reaper {
    epoll: Epoll,
    waiting: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    by_token: std::collections::HashMap<u64, Waited>,
    next_token: u64,
}

impl Reaper {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn run(&self) {
        let mut events = [EpollEvent::empty(); 32];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    // Not expected on a valid epoll fd; do not spin if it happens.
                    tracing::error!(error = %e, "waiting on container inits failed");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            for event in &events[..n] {
                let Some(waited) = self.waiting().by_token.remove(&event.data()) else {
                    continue;
                };
                if let Err(e) = self.epoll.delete(&waited.pidfd) {
                    tracing::warn!(container = %waited.container, error = %e, "removing a pidfd from the reaper");
                }
                let exit = waited.ended();
                if waited.ours {
                    watched()
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&waited.pid.as_raw());
                    tracing::info!(container = %waited.container, pid = %waited.pid, ?exit, "container init ended");
                } else {
                    tracing::info!(container = %waited.container, pid = %waited.pid, ?exit, "adopted container init ended");
                }
                waited.notifier.notify(exit);
            }
        }
    }

    /// Waits for `waited`'s pidfd from now on.
    fn add(&self, waited: Waited) -> std::io::Result<()> {
        let mut waiting = self.waiting();
        let token = waiting.next_token;
        waiting.next_token += 1;
        self.epoll
            .add(&waited.pidfd, EpollEvent::new(EpollFlags::EPOLLIN, token))?;
        waiting.by_token.insert(token, waited);
        Ok(())
    }
}

/// The reaper, started on first use.
fn reaper() -> std::io::Result<Arc<Reaper>> {
    static REAPER: EpollThread<Reaper> = EpollThread::new();
    // It only sits in epoll_wait and waitid.
    REAPER.get(
        "zos-reaper",
        64 * 1024,
        |epoll| Reaper {
            epoll,
            waiting: Mutex::default(),
        },
        Reaper::run,
    )
}

/// A pidfd for `pid` (`None`: no such process any more).
fn pidfd_open(pid: Pid) -> std::io::Result<Option<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ESRCH) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: the syscall just returned this fd to us and nothing else owns it.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
}

/// Reap our child `pid` (on the reaper thread) and report how it ended.
pub(crate) fn watch_child(id: &str, pid: Pid) -> std::io::Result<ExitWatch> {
    let (notifier, watch) = exit_channel();
    let unwatch = || {
        watched()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&pid.as_raw());
    };
    watched()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(pid.as_raw());
    // Our unreaped child has a pid until we reap it, ended or not: ESRCH cannot be.
    let pidfd = match pidfd_open(pid) {
        Ok(Some(fd)) => fd,
        Ok(None) => {
            unwatch();
            notifier.notify(Exit::Unknown);
            return Ok(watch);
        }
        Err(e) => {
            unwatch();
            return Err(e);
        }
    };
    let waited = Waited {
        pidfd,
        pid,
        container: id.to_string(),
        ours: true,
        notifier,
    };
    if let Err(e) = reaper().and_then(|r| r.add(waited)) {
        unwatch();
        return Err(e);
    }
    Ok(watch)
}

/// Watch a process that is not our child (re-adoption): its pidfd becomes readable
/// when it exits; the exit status is not ours to read.
pub(crate) fn watch_foreign(id: &str, pid: Pid) -> std::io::Result<ExitWatch> {
    let (notifier, watch) = exit_channel();
    let Some(pidfd) = pidfd_open(pid)? else {
        notifier.notify(Exit::Unknown);
        return Ok(watch);
    };
    reaper()?.add(Waited {
        pidfd,
        pid,
        container: id.to_string(),
        ours: false,
        notifier,
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
