//! Restart policy: exponential backoff with a cap, counting restarts.
//!
//! Pure logic over a [`Clock`], so it is tested with a fake clock and no sleeping. The engine
//! asks [`Restarts::on_exit`] what to do after each exit and sleeps until the returned
//! instant itself.

use std::time::{Duration, Instant};

use crate::exit::Exit;

/// Source of "now" (the real one is `Instant::now`).
pub trait Clock {
    /// The current instant.
    fn now(&self) -> Instant;
}

/// The monotonic system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// When to restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RestartMode {
    /// Whatever the exit (services).
    Always,
    /// Only after a crash: a signal or a non-zero code (jobs).
    OnFailure,
    /// Never: the workload runs once.
    Never,
}

/// Backoff parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestartPolicy {
    /// After which exits to restart at all.
    pub mode: RestartMode,
    /// Delay before the first restart.
    pub initial: Duration,
    /// The delay doubles per consecutive failure up to this cap.
    pub max: Duration,
    /// A run at least this long counts as healthy: the next delay starts from `initial`.
    pub reset_after: Duration,
    /// Give up after this many consecutive restarts (`None`: never give up).
    pub max_consecutive: Option<u32>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            mode: RestartMode::Always,
            // Fast first restart: the acceptance target is "restarted within 2 s".
            initial: Duration::from_millis(100),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(30),
            max_consecutive: None,
        }
    }
}

/// What the engine should do after an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Start it again at (not before) this instant.
    RestartAt(Instant),
    /// Leave it stopped (policy says so, or too many consecutive failures).
    Stop,
}

/// Restart book-keeping for one workload.
#[derive(Debug)]
pub struct Restarts<C: Clock = SystemClock> {
    policy: RestartPolicy,
    clock: C,
    /// Restarts decided over the workload's life (reported in status records).
    total: u64,
    /// Restarts since the last healthy run (drives the backoff).
    consecutive: u32,
    started_at: Option<Instant>,
}

impl<C: Clock> Restarts<C> {
    /// Fresh book-keeping: no restarts yet, not started.
    pub fn new(policy: RestartPolicy, clock: C) -> Self {
        Restarts {
            policy,
            clock,
            total: 0,
            consecutive: 0,
            started_at: None,
        }
    }

    /// Record that the container (re)started now.
    pub fn on_start(&mut self) {
        self.started_at = Some(self.clock.now());
    }

    /// Total restarts so far.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Restarts since the last healthy run (one lasting [`RestartPolicy::reset_after`]).
    pub fn consecutive(&self) -> u32 {
        self.consecutive
    }

    /// Decide after an exit; counts the restart when one is decided.
    pub fn on_exit(&mut self, exit: Exit) -> Decision {
        let now = self.clock.now();
        let want = match self.policy.mode {
            RestartMode::Always => true,
            RestartMode::OnFailure => exit.crashed(),
            RestartMode::Never => false,
        };
        if !want {
            return Decision::Stop;
        }
        let healthy = self
            .started_at
            .is_some_and(|t| now.saturating_duration_since(t) >= self.policy.reset_after);
        if healthy {
            self.consecutive = 0;
        }
        if let Some(max) = self.policy.max_consecutive {
            if self.consecutive >= max {
                return Decision::Stop;
            }
        }
        let delay = self.delay(self.consecutive);
        self.consecutive = self.consecutive.saturating_add(1);
        self.total += 1;
        self.started_at = None;
        Decision::RestartAt(now + delay)
    }

    /// initial * 2^n, capped.
    fn delay(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.policy
            .initial
            .checked_mul(factor)
            .unwrap_or(self.policy.max)
            .min(self.policy.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Clone)]
    struct FakeClock(Rc<Cell<Instant>>);

    impl FakeClock {
        fn advance(&self, d: Duration) {
            self.0.set(self.0.get() + d);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.0.get()
        }
    }

    fn setup(policy: RestartPolicy) -> (FakeClock, Restarts<FakeClock>) {
        let clock = FakeClock(Rc::new(Cell::new(Instant::now())));
        (clock.clone(), Restarts::new(policy, clock))
    }

    fn delay_of(d: Decision, now: Instant) -> Duration {
        match d {
            Decision::RestartAt(t) => t - now,
            Decision::Stop => panic!("stopped"),
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_counts() {
        let policy = RestartPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
            ..RestartPolicy::default()
        };
        let (clock, mut r) = setup(policy);
        let mut delays = Vec::new();
        for _ in 0..7 {
            r.on_start();
            clock.advance(Duration::from_millis(10));
            let d = r.on_exit(Exit::Signal(9));
            delays.push(delay_of(d, clock.now()).as_millis());
        }
        assert_eq!(delays, vec![100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(r.count(), 7);
    }

    #[test]
    fn healthy_run_resets_backoff_but_not_the_count() {
        let (clock, mut r) = setup(RestartPolicy::default());
        for _ in 0..3 {
            r.on_start();
            r.on_exit(Exit::Code(1));
        }
        assert_eq!(r.consecutive(), 3);
        r.on_start();
        clock.advance(Duration::from_secs(31));
        let d = r.on_exit(Exit::Code(1));
        assert_eq!(delay_of(d, clock.now()), Duration::from_millis(100));
        assert_eq!(r.count(), 4);
        assert_eq!(r.consecutive(), 1);
    }

    #[test]
    fn modes_and_give_up() {
        let (_, mut r) = setup(RestartPolicy {
            mode: RestartMode::OnFailure,
            ..RestartPolicy::default()
        });
        assert_eq!(r.on_exit(Exit::Code(0)), Decision::Stop);
        assert!(matches!(r.on_exit(Exit::Signal(9)), Decision::RestartAt(_)));

        let (_, mut r) = setup(RestartPolicy {
            mode: RestartMode::Never,
            ..RestartPolicy::default()
        });
        assert_eq!(r.on_exit(Exit::Signal(9)), Decision::Stop);

        let (_, mut r) = setup(RestartPolicy {
            max_consecutive: Some(2),
            ..RestartPolicy::default()
        });
        assert!(matches!(r.on_exit(Exit::Code(1)), Decision::RestartAt(_)));
        assert!(matches!(r.on_exit(Exit::Code(1)), Decision::RestartAt(_)));
        assert_eq!(r.on_exit(Exit::Code(1)), Decision::Stop);
        assert_eq!(r.count(), 2);
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let (clock, mut r) = setup(RestartPolicy::default());
        for _ in 0..100 {
            r.on_exit(Exit::Unknown);
        }
        let d = r.on_exit(Exit::Unknown);
        assert_eq!(delay_of(d, clock.now()), Duration::from_secs(60));
    }
}
