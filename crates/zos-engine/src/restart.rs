//! Restart backoff for workloads that die: the first restart after `min`, each next
//! one after twice the previous delay up to `max`; a workload that stayed up for the
//! reset period starts again from `min`. Pure logic over caller-supplied instants, so
//! it is tested without sleeping.

use std::time::{Duration, Instant};

/// The restart delay of one workload (see the module docs).
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    /// The delay the next failure waits.
    delay: Duration,
    /// No restart before this instant.
    not_before: Option<Instant>,
    /// When the workload was last seen running after a restart.
    up_since: Option<Instant>,
}

impl Backoff {
    /// A workload not restarted yet: its first restart waits `min`, at most `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            delay: min,
            not_before: None,
            up_since: None,
        }
    }

    /// True when a restart may happen at `now`. The first failure is due after `min`
    /// from when it is noticed.
    pub fn due(&mut self, now: Instant) -> bool {
        match self.not_before {
            Some(t) => now >= t,
            None => {
                self.not_before = Some(now + self.delay);
                false
            }
        }
    }

    /// Records a restart at `now`: the next one waits twice as long (capped).
    pub fn failed(&mut self, now: Instant) {
        self.up_since = None;
        self.delay = (self.delay * 2).min(self.max);
        self.not_before = Some(now + self.delay);
    }

    /// Records that the workload runs at `now`; after `reset` of running the delay
    /// starts from `min` again.
    pub fn running(&mut self, now: Instant, reset: Duration) {
        let since = *self.up_since.get_or_insert(now);
        if now.duration_since(since) >= reset {
            self.delay = self.min;
        }
        // A later failure is noticed fresh: due after the current delay.
        self.not_before = None;
    }

    /// The delay the next failure will wait.
    pub fn delay(&self) -> Duration {
        self.delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset_after_a_stable_run() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut b = Backoff::new(ms(200), ms(1000));
        // First failure noticed at t0: due 200 ms later.
        assert!(!b.due(t0));
        assert!(!b.due(t0 + ms(199)));
        assert!(b.due(t0 + ms(200)));
        b.failed(t0 + ms(200));
        assert_eq!(b.delay(), ms(400));
        assert!(!b.due(t0 + ms(599)));
        assert!(b.due(t0 + ms(600)));
        b.failed(t0 + ms(600));
        b.failed(t0 + ms(1400));
        b.failed(t0 + ms(2400));
        assert_eq!(b.delay(), ms(1000), "capped");
        // Up for the reset period: back to the minimum.
        b.running(t0 + ms(3000), ms(500));
        b.running(t0 + ms(3600), ms(500));
        assert_eq!(b.delay(), ms(200));
    }
}
