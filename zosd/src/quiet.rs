//! Memory back to the kernel once the node goes quiet after provisioning work.
//!
//! A burst (500 contracts started, or cancelled, at once) leaves most of what it
//! allocated free again but scattered through malloc's heap, where it stays resident:
//! `free` gives back only the top of a heap. So each piece of provisioning work holds a
//! [`Busy`] while it runs, and when the last one ends and no new one starts for
//! [`QUIET_AFTER`], the release runs once, on a blocking thread
//! ([`zos_init::release_free_memory`] on a node). Work that keeps coming never waits
//! for it, and a quiet node does not pay for it again.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the node must be quiet after provisioning work before memory is released.
pub const QUIET_AFTER: Duration = Duration::from_secs(1);

/// Counts provisioning work in flight; see the module docs.
pub struct Quiet(Arc<Shared>);

struct Shared {
    in_flight: AtomicUsize,
    /// Bumped by every start of work: a quiet period that saw one is not quiet.
    starts: AtomicU64,
    after: Duration,
    release: fn(),
}

impl Shared {
    fn begin(&self) {
        self.starts.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// The end of one piece of work: when it was the last in flight, the quiet period
    /// it begins (the count of starts so far).
    fn end(&self) -> Option<u64> {
        (self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1)
            .then(|| self.starts.load(Ordering::Acquire))
    }

    /// No work started since `period` began (work that did ends with a period of its
    /// own).
    fn still_quiet(&self, period: u64) -> bool {
        self.starts.load(Ordering::Acquire) == period
    }
}

/// One piece of work in flight; its drop may begin the quiet period.
pub struct Busy(Arc<Shared>);

impl Quiet {
    /// Runs `release` once the work is `after` quiet.
    pub fn new(after: Duration, release: fn()) -> Self {
        Quiet(Arc::new(Shared {
            in_flight: AtomicUsize::new(0),
            starts: AtomicU64::new(0),
            after,
            release,
        }))
    }

    /// Work begins; it ends when the returned guard drops.
    pub fn busy(&self) -> Busy {
        self.0.begin();
        Busy(self.0.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let Some(period) = self.0.end() else {
            return;
        };
        // Outside a runtime (a plain drop in a test) there is no period to wait out.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = self.0.clone();
        runtime.spawn(async move {
            tokio::time::sleep(shared.after).await;
            if shared.still_quiet(period) {
                let began = std::time::Instant::now();
                let _ = tokio::task::spawn_blocking(shared.release).await;
                tracing::debug!(took = ?began.elapsed(), "free memory given back after provisioning work");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nothing() {}

    #[test]
    fn only_the_last_end_of_a_burst_begins_a_period_and_new_work_ends_it() {
        let quiet = Quiet::new(QUIET_AFTER, nothing);
        let s = &quiet.0;
        s.begin();
        s.begin();
        s.begin();
        assert_eq!(s.end(), None);
        assert_eq!(s.end(), None);
        let period = s.end().expect("the last end begins a period");
        assert!(s.still_quiet(period));

        // Work inside the period: that period is over, the work's end begins the next.
        s.begin();
        assert!(!s.still_quiet(period));
        let next = s.end().expect("its end begins the next");
        assert!(!s.still_quiet(period));
        assert!(s.still_quiet(next));
    }

    static RELEASED: AtomicUsize = AtomicUsize::new(0);

    fn count() {
        RELEASED.fetch_add(1, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn a_burst_is_released_once_it_is_quiet() {
        let quiet = Quiet::new(Duration::from_millis(20), count);
        let burst: Vec<Busy> = (0..3).map(|_| quiet.busy()).collect();
        drop(burst);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while RELEASED.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "never released");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
