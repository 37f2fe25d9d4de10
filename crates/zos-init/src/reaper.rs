//! Reaping: PID 1 inherits every orphan on the machine and must `wait` for each, or
//! the process table fills with zombies.
//!
//! The agent makes itself a child subreaper ([`crate::set_child_subreaper`]) so the
//! container init processes it starts stay its own children, which it waits for itself;
//! PID 1 reaps everything else, the agent included.

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::sys::Sys;

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// It exited with this status code.
    Code(i32),
    /// A signal killed it.
    Signal {
        /// The signal.
        signal: Signal,
        /// Whether it left a core dump.
        core_dumped: bool,
    },
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by {signal}")?;
                if *core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// A child waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reaped {
    /// Its process id (free for reuse from now on).
    pub pid: Pid,
    /// How it ended.
    pub exit: Exit,
}

/// What one sweep found.
#[derive(Debug, Default)]
pub struct Sweep {
    /// The children reaped, in the order they were waited for.
    pub reaped: Vec<Reaped>,
    /// No child at all is left (ECHILD).
    pub no_children: bool,
}

/// Reaps every child that has exited, without blocking. Call it on every wakeup, not
/// only on SIGCHLD: pending SIGCHLDs coalesce into one, whatever the number of exits.
pub fn reap_all(sys: &dyn Sys) -> Sweep {
    let mut sweep = Sweep::default();
    loop {
        match sys.reap_one() {
            Ok(Some(WaitStatus::Exited(pid, code))) => sweep.reaped.push(Reaped {
                pid,
                exit: Exit::Code(code),
            }),
            Ok(Some(WaitStatus::Signaled(pid, signal, core_dumped))) => sweep.reaped.push(Reaped {
                pid,
                exit: Exit::Signal {
                    signal,
                    core_dumped,
                },
            }),
            // Stops and continues are not asked for (no WUNTRACED/WCONTINUED).
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(Errno::ECHILD) => {
                sweep.no_children = true;
                break;
            }
            Err(Errno::EINTR) => continue,
            Err(errno) => {
                tracing::error!(%errno, "waitpid");
                break;
            }
        }
    }
    sweep
}
