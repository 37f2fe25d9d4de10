//! Every system call PID 1 makes that changes the machine goes through [`Sys`], so the
//! logic around them can be unit-tested with a fake, and so a test can never unmount the
//! host's filesystems or power it off. [`Linux`] is the real thing.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// What happens at the end of an orderly shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    /// `reboot(RB_POWER_OFF)`: the machine switches off.
    PowerOff,
    /// `reboot(RB_AUTOBOOT)`: the machine restarts at once.
    Reboot,
}

/// One filesystem to mount (see [`crate::mounts::BOOT_MOUNTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    /// `mount(2)`'s source (for these pseudo-filesystems, only a name in mountinfo).
    pub source: &'static str,
    /// The mount point, created if missing.
    pub target: &'static str,
    /// The filesystem type, e.g. `proc`, `devtmpfs`, `cgroup2`.
    pub fstype: &'static str,
    /// Mount flags (`MS_NOSUID`, `MS_NODEV`, ...).
    pub flags: MsFlags,
    /// Filesystem-specific options (`mode=0755`); `None`: none.
    pub data: Option<&'static str>,
}

/// The system calls of PID 1. Methods take `&self`: fakes record through interior
/// mutability.
pub trait Sys {
    /// The clock the supervisor's backoff and the shutdown's grace periods read.
    fn now(&self) -> Instant;
    /// Waits for one of the signals PID 1 blocked (see [`block_init_signals`]); `None`
    /// on timeout. `None` as timeout waits forever.
    fn wait_signal(&self, timeout: Option<Duration>) -> Option<Signal>;
    /// One `waitpid(-1, WNOHANG)`: `Ok(None)` when children exist but none has exited,
    /// `Err(ECHILD)` when there are no children at all.
    fn reap_one(&self) -> Result<Option<WaitStatus>, Errno>;
    /// Starts `cmd` with an empty signal mask, without keeping a handle: the child is
    /// reaped through [`Sys::reap_one`] like every other.
    fn spawn(&self, cmd: &mut Command) -> io::Result<Pid>;
    /// Sends `sig` to the process `pid`.
    fn kill(&self, pid: Pid, sig: Signal) -> Result<(), Errno>;
    /// `kill(-1, sig)`: every process but the caller (and, as PID 1, every process).
    fn kill_all(&self, sig: Signal) -> Result<(), Errno>;

    /// The whole file as UTF-8 text (`/proc/self/mountinfo`, modules.dep, ...).
    fn read_file(&self, path: &Path) -> io::Result<String>;
    /// Creates or truncates the file at `path` and writes `data`.
    fn write_file(&self, path: &Path, data: &str) -> io::Result<()>;
    /// Creates `path` and its missing parents.
    fn mkdir_all(&self, path: &Path) -> io::Result<()>;
    /// Mounts `spec` (its mount point must exist).
    fn mount(&self, spec: &MountSpec) -> Result<(), Errno>;
    /// Unmounts `target`; if it is busy, remounts it read-only so its data is safe.
    fn unmount(&self, target: &Path) -> Result<(), Errno>;
    /// Flushes every filesystem's dirty data to disk (`sync(2)`).
    fn sync(&self);

    /// `finit_module` on the file at `path`; `compressed` asks the kernel to decompress.
    fn finit_module(&self, path: &Path, compressed: bool) -> Result<(), Errno>;
    /// Makes ctrl-alt-del send SIGINT to PID 1 instead of rebooting at once.
    fn disable_ctrl_alt_del(&self) -> Result<(), Errno>;
    /// The real one never returns `Ok`: the machine is gone. A fake returns `Ok(())`.
    fn reboot(&self, action: PowerAction) -> Result<(), Errno>;
}

/// The signals PID 1 acts on; they are blocked and taken with `sigtimedwait`, so there
/// are no signal handlers and no async-signal-safety puzzles.
pub const INIT_SIGNALS: [Signal; 8] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGPWR,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// [`INIT_SIGNALS`] as a set, for blocking and for `sigtimedwait`.
pub(crate) fn init_sigset() -> SigSet {
    let mut set = SigSet::empty();
    for s in INIT_SIGNALS {
        set.add(s);
    }
    set
}

/// Blocks [`INIT_SIGNALS`] in the calling thread. Call it first thing in `main`, before
/// any thread exists: threads inherit the mask, and a thread that does not block a
/// process signal may take it instead of the init loop. Children inherit it through
/// fork and exec too (std's `Command` does not reset it): [`Linux::spawn`] empties it
/// between fork and exec, or the agent would never see its SIGTERM.
pub fn block_init_signals() -> Result<(), Errno> {
    init_sigset().thread_block()
}

/// Makes the calling process a child subreaper: orphans among its descendants are
/// reparented to it instead of PID 1. The agent calls this so the container init
/// processes it starts stay its children when their parents exit; the setting survives
/// `execve`, so PID 1 also sets it for the agent between fork and exec.
pub fn set_child_subreaper() -> Result<(), Errno> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// Caps glibc's malloc arenas at two. glibc gives threads that allocate at once arenas
/// of their own, up to eight per core, and what one arena frees the others do not
/// reuse. The agent's blocking pool runs up to 64 threads in a burst of work
/// (`zosd/src/main.rs`), so its resident memory grew with the arenas rather than with
/// what it holds (`zosd/benches/scale.rs`: 182 MiB with 500 containers, when each
/// container still had threads of its own). It is not allocation-bound. Call it before
/// any thread starts; without glibc it does nothing.
pub fn cap_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt sets one of the allocator's tunables and touches no memory of
    // ours; called before other threads exist, nothing allocates concurrently.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Gives the kernel back the free pages glibc's malloc keeps, in every arena, not only
/// at the top of the heap as `free` does by itself. After a burst of work (500
/// contracts started or cancelled at once) most of what the burst allocated is free
/// again, but scattered through the heap, and stays resident until then. It takes
/// each arena's lock in turn while it walks the free lists, so call it when the
/// agent is quiet. Without glibc it does nothing.
pub fn release_free_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim is thread-safe (it locks each arena as it goes) and only
    // returns free pages to the kernel; no memory in use is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `MODULE_INIT_COMPRESSED_FILE` from linux/module.h (Linux 6.4+); libc lacks it.
pub const MODULE_INIT_COMPRESSED_FILE: libc::c_uint = 4;

/// The real system.
#[derive(Debug, Default, Clone, Copy)]
pub struct Linux;

impl Sys for Linux {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wait_signal(&self, timeout: Option<Duration>) -> Option<Signal> {
        let set = init_sigset();
        let ts = timeout.map(|t| libc::timespec {
            tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: t.subsec_nanos() as libc::c_long,
        });
        let ts_ptr = ts
            .as_ref()
            .map_or(std::ptr::null(), |t| t as *const libc::timespec);
        // SAFETY: `set` is a valid, initialised sigset_t; `ts_ptr` is null or points to
        // `ts`, alive for the call; a null siginfo pointer is allowed.
        let n = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), ts_ptr) };
        if n < 0 {
            // EAGAIN: timeout; EINTR: a signal outside the set (e.g. SIGSTOP/CONT).
            return None;
        }
        Signal::try_from(n).ok()
    }

    fn reap_one(&self) -> Result<Option<WaitStatus>, Errno> {
        match nix::sys::wait::waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG))? {
            WaitStatus::StillAlive => Ok(None),
            s => Ok(Some(s)),
        }
    }

    fn spawn(&self, cmd: &mut Command) -> io::Result<Pid> {
        // SAFETY: between fork and exec only async-signal-safe calls are allowed:
        // sigemptyset fills a stack value and sigprocmask is a plain system call.
        unsafe {
            cmd.pre_exec(|| {
                let mut empty = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
                libc::sigemptyset(empty.as_mut_ptr());
                if libc::sigprocmask(libc::SIG_SETMASK, empty.as_ptr(), std::ptr::null_mut()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        // The Child handle is dropped: PID 1 reaps with waitpid(-1), not Child::wait.
        let child = cmd.spawn()?;
        Ok(Pid::from_raw(child.id() as i32))
    }

    fn kill(&self, pid: Pid, sig: Signal) -> Result<(), Errno> {
        nix::sys::signal::kill(pid, sig)
    }

    fn kill_all(&self, sig: Signal) -> Result<(), Errno> {
        nix::sys::signal::kill(Pid::from_raw(-1), sig)
    }

    fn read_file(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn write_file(&self, path: &Path, data: &str) -> io::Result<()> {
        std::fs::write(path, data)
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn mount(&self, spec: &MountSpec) -> Result<(), Errno> {
        nix::mount::mount(
            Some(spec.source),
            spec.target,
            Some(spec.fstype),
            spec.flags,
            spec.data,
        )
    }

    fn unmount(&self, target: &Path) -> Result<(), Errno> {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Err(Errno::EBUSY) => {
                // Something still holds it open: at least make it read-only so what was
                // written is on disk, then detach it.
                let ro = MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                let remount =
                    nix::mount::mount(None::<&str>, target, None::<&str>, ro, None::<&str>);
                let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
                remount.and(Err(Errno::EBUSY))
            }
            r => r,
        }
    }

    fn sync(&self) {
        nix::unistd::sync();
    }

    fn finit_module(&self, path: &Path, compressed: bool) -> Result<(), Errno> {
        let file = File::open(path).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
        let params = CString::default();
        let flags = if compressed {
            MODULE_INIT_COMPRESSED_FILE
        } else {
            0
        };
        // SAFETY: finit_module(2) reads only its arguments: an open fd that lives until
        // the end of this function, a NUL-terminated (empty) parameter string, and flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_finit_module,
                file.as_raw_fd(),
                params.as_ptr(),
                flags,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(Errno::last())
        }
    }

    fn disable_ctrl_alt_del(&self) -> Result<(), Errno> {
        nix::sys::reboot::set_cad_enabled(false)
    }

    fn reboot(&self, action: PowerAction) -> Result<(), Errno> {
        let how = match action {
            PowerAction::PowerOff => nix::sys::reboot::RebootMode::RB_POWER_OFF,
            PowerAction::Reboot => nix::sys::reboot::RebootMode::RB_AUTOBOOT,
        };
        match nix::sys::reboot::reboot(how) {
            Ok(never) => match never {},
            Err(e) => Err(e),
        }
    }
}
