//! Where the time of one operation goes: named wall-clock laps, logged as one debug
//! line when the operation ends (`ZOSD_LOG=zos_network=debug`). This is how the
//! breakdown in docs/network.md ("Performance") was measured.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The laps of one operation (`ensure`, `attach`), in the order they ran.
pub(crate) struct Laps {
    start: Instant,
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Laps {
    pub(crate) fn start() -> Laps {
        let now = Instant::now();
        Laps {
            start: now,
            last: now,
            laps: Vec::new(),
        }
    }

    /// Close the lap that ran since the previous one (or the start) as `step`.
    pub(crate) fn lap(&mut self, step: &'static str) {
        let now = Instant::now();
        self.laps.push((step, now - self.last));
        self.last = now;
    }

    /// `step=1.234ms ...`, in order.
    fn render(&self) -> String {
        let mut s = String::new();
        for (step, d) in &self.laps {
            let _ = write!(s, "{step}={:.3}ms ", d.as_secs_f64() * 1e3);
        }
        s.trim_end().to_string()
    }

    /// One debug line: the operation, what it concerned, the total and the laps.
    pub(crate) fn log(&self, op: &'static str, subject: &str) {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let total_ms = self.start.elapsed().as_secs_f64() * 1e3;
            tracing::debug!(op, subject, total_ms, laps = %self.render(), "timings");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn laps_render_in_order() {
        let mut l = Laps::start();
        l.lap("a");
        l.lap("b");
        let r = l.render();
        let (a, b) = (r.find("a=").unwrap(), r.find("b=").unwrap());
        assert!(a < b, "{r}");
        assert!(r.ends_with("ms"), "{r}");
    }
}
