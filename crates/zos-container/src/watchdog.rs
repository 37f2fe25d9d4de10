//! A watchdog for libcontainer's cloned helpers.
//!
//! libcontainer creates its intermediate and init processes with a raw `clone3` from our
//! multi-threaded process, then runs Rust code in them. A lock another thread held at that
//! instant stays locked forever in the single-threaded child. We saw it: the intermediate,
//! its job done, hangs in `std::process::exit` on std's thread-info mutex because a thread
//! was starting or exiting elsewhere in the process, and `build()` waits for it forever.
//!
//! A single-threaded process sleeping in `futex` on a private lock can never be woken: no
//! other thread exists to unlock it. So while a create is in flight this thread looks at our
//! children named `youki:[...]` and SIGKILLs any seen in `futex` on two scans in a row.
//! A stuck intermediate has already handed over the init, so the create then succeeds
//! (libcontainer only logs how the intermediate ended); a stuck init makes the create fail
//! cleanly instead of hanging, and the engine retries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

static ACTIVE: AtomicUsize = AtomicUsize::new(0);
static KILLS: AtomicU64 = AtomicU64::new(0);
static STARTED: Once = Once::new();
/// When the last watched call ended, in ms since `epoch()`: the init still runs libcontainer
/// code for a moment after `start` returns, so keep looking for a while.
static LAST_END_MS: AtomicU64 = AtomicU64::new(0);
const GRACE: Duration = Duration::from_secs(5);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

const SCAN_EVERY: Duration = Duration::from_millis(250);

/// Held for the duration of one libcontainer `build()` or `start()`.
pub(crate) struct Watch(());

impl Watch {
    /// Start watching (the thread is spawned once, before any clone, and never exits:
    /// thread churn is exactly what causes the deadlocks).
    pub(crate) fn begin() -> Watch {
        let _ = epoch();
        STARTED.call_once(|| {
            let spawned = std::thread::Builder::new()
                .name("zos-clone-watchdog".into())
                .stack_size(128 * 1024)
                .spawn(run);
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the container clone watchdog");
            }
        });
        ACTIVE.fetch_add(1, Ordering::SeqCst);
        Watch(())
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        LAST_END_MS.store(now_ms(), Ordering::SeqCst);
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How many deadlocked helpers were killed so far (a create that saw one retries).
pub(crate) fn kills() -> u64 {
    KILLS.load(Ordering::SeqCst)
}

fn run() {
    let mut seen: HashMap<i32, u32> = HashMap::new();
    loop {
        std::thread::sleep(SCAN_EVERY);
        let recent =
            now_ms().saturating_sub(LAST_END_MS.load(Ordering::SeqCst)) < GRACE.as_millis() as u64;
        if ACTIVE.load(Ordering::SeqCst) == 0 && !recent {
            seen.clear();
            continue;
        }
        let stuck = stuck_children();
        seen.retain(|pid, _| stuck.contains(pid));
        for pid in stuck {
            let n = seen.entry(pid).or_insert(0);
            *n += 1;
            if *n >= 2 {
                tracing::warn!(
                    pid,
                    "libcontainer helper deadlocked in futex after clone; killing it"
                );
                // Counted before the kill: the failing create looks at it right after.
                KILLS.fetch_add(1, Ordering::SeqCst);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                seen.remove(&pid);
            }
        }
    }
}

/// Our children still named `youki:[...]` (libcontainer helpers before their exec).
fn helper_children() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(children) = std::fs::read_to_string(t.path().join("children")) else {
            continue;
        };
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.starts_with("youki:[") {
                out.push(pid);
            }
        }
    }
    out
}

/// Reap helper zombies a failed libcontainer create left (it returns before its
/// `waitpid`). Inits owned by an exit watcher are left to it.
pub(crate) fn reap_helper_zombies() {
    for pid in helper_children() {
        if crate::exit::is_watched(pid) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state is the first field after the parenthesised comm.
        let zombie = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            == Some("Z");
        if zombie {
            let flags = nix::sys::wait::WaitPidFlag::WNOHANG | nix::sys::wait::WaitPidFlag::__WALL;
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), Some(flags));
        }
    }
}

/// Our helper children that sit in the futex syscall.
fn stuck_children() -> Vec<i32> {
    helper_children()
        .into_iter()
        .filter(|pid| {
            // First field of /proc/<pid>/syscall: the number of the syscall it blocks in.
            let sc = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
            sc.split_whitespace()
                .next()
                .and_then(|n| n.parse::<libc::c_long>().ok())
                == Some(libc::SYS_futex)
        })
        .collect()
}
