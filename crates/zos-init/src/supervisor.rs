//! Supervising the agent: PID 1 runs it as a child and starts it again whenever it
//! exits, crashes or panics, waiting longer after each quick failure so a crash loop
//! does not hog the machine, and never giving up.

use std::process::Command;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::reaper::Reaped;
use crate::sys::Sys;

/// The delay before a restart: `initial`, doubled after each failure up to `max`, and
/// back to `initial` once the agent had run for `stable_after`.
#[derive(Debug, Clone)]
pub struct RespawnBackoff {
    /// The first delay, and the delay after a stable run.
    pub initial: Duration,
    /// The longest delay: the doubling stops here.
    pub max: Duration,
    /// A run at least this long resets the delay to `initial`.
    pub stable_after: Duration,
    next: Duration,
}

impl RespawnBackoff {
    /// A backoff starting at `initial` (see the type's documentation).
    pub fn new(initial: Duration, max: Duration, stable_after: Duration) -> RespawnBackoff {
        RespawnBackoff {
            initial,
            max,
            stable_after,
            next: initial,
        }
    }

    /// The delay before restarting an agent that had run for `ran_for`.
    pub fn after_exit(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.stable_after {
            self.next = self.initial;
        }
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }
}

impl Default for RespawnBackoff {
    /// 1 s doubling to 30 s; a minute of running counts as stable.
    fn default() -> RespawnBackoff {
        RespawnBackoff::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            Duration::from_secs(60),
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not running; start it at this time.
    StartAt(Instant),
    Running {
        pid: Pid,
        since: Instant,
    },
}

/// Builds the agent's command afresh for each start.
pub type MakeCommand = Box<dyn FnMut() -> Command + Send>;

/// The agent's supervisor: whether it runs (and since when) or when it starts next.
/// PID 1's loop drives it with [`Supervisor::tick`] and [`Supervisor::on_reaped`].
pub struct Supervisor {
    make_command: MakeCommand,
    backoff: RespawnBackoff,
    state: State,
    /// Starts so far, the first one included.
    pub starts: u32,
}

impl Supervisor {
    /// A supervisor whose first start is due at once (at the first [`Supervisor::tick`]).
    pub fn new(sys: &dyn Sys, make_command: MakeCommand, backoff: RespawnBackoff) -> Supervisor {
        Supervisor {
            make_command,
            backoff,
            state: State::StartAt(sys.now()),
            starts: 0,
        }
    }

    /// The running agent's pid; `None` while it waits to be (re)started.
    pub fn agent_pid(&self) -> Option<Pid> {
        match self.state {
            State::Running { pid, .. } => Some(pid),
            State::StartAt(_) => None,
        }
    }

    /// Starts the agent if it is due. Returns how long PID 1 may sleep before calling
    /// again (`None`: until something happens).
    pub fn tick(&mut self, sys: &dyn Sys) -> Option<Duration> {
        let State::StartAt(at) = self.state else {
            return None;
        };
        let now = sys.now();
        if now < at {
            return Some(at - now);
        }
        self.starts += 1;
        let mut cmd = (self.make_command)();
        match sys.spawn(&mut cmd) {
            Ok(pid) => {
                tracing::info!(pid = pid.as_raw(), start = self.starts, program = ?cmd.get_program(), "agent started");
                self.state = State::Running { pid, since: now };
                None
            }
            Err(error) => {
                // Counts as a run of zero seconds: back off as for a crash.
                let delay = self.backoff.after_exit(Duration::ZERO);
                tracing::error!(%error, retry_in = ?delay, "agent did not start");
                self.state = State::StartAt(now + delay);
                Some(delay)
            }
        }
    }

    /// Looks at one reaped child; if it was the agent, schedules its restart and returns
    /// true.
    pub fn on_reaped(&mut self, sys: &dyn Sys, reaped: &Reaped) -> bool {
        let State::Running { pid, since } = self.state else {
            return false;
        };
        if reaped.pid != pid {
            return false;
        }
        let now = sys.now();
        let ran_for = now.saturating_duration_since(since);
        let delay = self.backoff.after_exit(ran_for);
        tracing::warn!(
            pid = pid.as_raw(),
            exit = %reaped.exit,
            ran_for = ?ran_for,
            restart_in = ?delay,
            "agent exited; restarting"
        );
        self.state = State::StartAt(now + delay);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_resets_after_a_stable_run() {
        let s = Duration::from_secs;
        let mut b = RespawnBackoff::default();
        let quick = Duration::from_millis(200);
        let delays: Vec<u64> = (0..7).map(|_| b.after_exit(quick).as_secs()).collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
        // Ran for a minute: a fresh start.
        assert_eq!(b.after_exit(s(60)), s(1));
        assert_eq!(b.after_exit(quick), s(2));
        // Just short of stable does not reset.
        assert_eq!(b.after_exit(s(59)), s(4));
    }
}
