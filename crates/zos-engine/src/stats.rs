//! What the engine counts while it runs, for the node's metrics (docs/observability.md):
//! plain atomics the loop updates and anyone holding the handle reads. The engine does
//! not depend on a metrics crate; zosd turns these into series.
//!
//! - the queue: contracts with a provisioning or restart job in flight;
//! - records received from the notary;
//! - converges by outcome, and the latency from a record's receipt to its contract
//!   running (or failing for good), in fixed buckets;
//! - restarts by outcome;
//! - per contract the node runs: where its metrics go (its deployment's `metrics`) and
//!   its workloads with their restart counts (from the journal).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use zos_contract::deployment::{Telemetry, WorkloadKind};

/// Upper bounds of the latency buckets, in seconds (`+Inf` implied): 5 ms to 5 min.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// How a converge (a provisioning job's outcome) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// The contract runs as its deployment says.
    Ok,
    /// A transient failure: supervision retries it.
    Retry,
    /// A permanent failure: the contract is failed.
    Failed,
}

impl Outcome {
    /// Every outcome, in order.
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Retry, Outcome::Failed];

    /// The label value: `ok`, `retry`, `failed`.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Retry => "retry",
            Outcome::Failed => "failed",
        }
    }
}

/// One workload of a running contract, as the metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadView {
    /// Its name in the deployment.
    pub workload: String,
    /// Its node-wide name (`<contract>.<workload>`, see [`crate::names`]).
    pub name: String,
    /// Container or VM: which runtime holds its cgroup.
    pub kind: WorkloadKind,
    /// Restarts so far (the journal's count: it survives the agent's restarts).
    pub restarts: u64,
}

/// One contract the node runs, as the metrics see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractView {
    /// Where its workloads' metrics go: its signed deployment's `metrics`.
    pub metrics: Option<Telemetry>,
    /// Its workloads.
    pub workloads: Vec<WorkloadView>,
}

/// The latency buckets as read: per bucket (not cumulative), one more than
/// [`LATENCY_BOUNDS`] (the `+Inf` one), and the sum of the observations in seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct LatencySnapshot {
    /// Observations per bucket.
    pub counts: Vec<u64>,
    /// Their sum, seconds.
    pub sum_seconds: f64,
}

/// The engine's counters. Shared: [`crate::Engine::stats`] hands out the handle.
#[derive(Debug)]
pub struct EngineStats {
    queue_depth: AtomicU64,
    records: AtomicU64,
    converges: [AtomicU64; 3],
    restarts: [AtomicU64; 2],
    latency: Vec<AtomicU64>,
    latency_sum_us: AtomicU64,
    contracts: Mutex<BTreeMap<String, ContractView>>,
}

impl Default for EngineStats {
    fn default() -> Self {
        EngineStats {
            queue_depth: AtomicU64::new(0),
            records: AtomicU64::new(0),
            converges: Default::default(),
            restarts: Default::default(),
            latency: (0..=LATENCY_BOUNDS.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency_sum_us: AtomicU64::new(0),
            contracts: Mutex::default(),
        }
    }
}

impl EngineStats {
    /// Contracts with a job in flight (provisioning or restarting), now.
    pub fn queue_depth(&self) -> u64 {
        self.queue_depth.load(Ordering::Relaxed)
    }

    /// Contract and cancellation records received from the notary so far.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Converges so far by outcome, in [`Outcome::ALL`]'s order.
    pub fn converges(&self) -> [(Outcome, u64); 3] {
        Outcome::ALL.map(|o| (o, self.converges[o as usize].load(Ordering::Relaxed)))
    }

    /// Workload restarts so far: `(succeeded, failed)`.
    pub fn restarts(&self) -> (u64, u64) {
        (
            self.restarts[0].load(Ordering::Relaxed),
            self.restarts[1].load(Ordering::Relaxed),
        )
    }

    /// The receipt-to-converge latencies observed so far.
    pub fn latency(&self) -> LatencySnapshot {
        LatencySnapshot {
            counts: self
                .latency
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_seconds: self.latency_sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    /// The contracts the node runs (running or being provisioned), by id.
    pub fn contracts(&self) -> BTreeMap<String, ContractView> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ContractView>> {
        self.contracts.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.store(depth as u64, Ordering::Relaxed);
    }

    pub(crate) fn record_received(&self) {
        self.records.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a converge; `latency`: since the receipt of the record that asked for it,
    /// when this converge ends that record's work (running, or failed for good).
    pub(crate) fn converged(&self, outcome: Outcome, latency: Option<Duration>) {
        self.converges[outcome as usize].fetch_add(1, Ordering::Relaxed);
        if let Some(d) = latency {
            let s = d.as_secs_f64();
            let i = LATENCY_BOUNDS.partition_point(|b| *b < s);
            self.latency[i].fetch_add(1, Ordering::Relaxed);
            let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
            self.latency_sum_us.fetch_add(us, Ordering::Relaxed);
        }
    }

    pub(crate) fn restarted(&self, ok: bool) {
        self.restarts[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_contracts(&self, contracts: BTreeMap<String, ContractView>) {
        let mut cur = self.lock();
        if *cur != contracts {
            *cur = contracts;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_their_buckets_and_sum_up() {
        let s = EngineStats::default();
        s.converged(Outcome::Ok, Some(Duration::from_millis(3)));
        s.converged(Outcome::Ok, Some(Duration::from_millis(5)));
        s.converged(Outcome::Failed, Some(Duration::from_secs(400)));
        s.converged(Outcome::Retry, None);
        let l = s.latency();
        assert_eq!(l.counts.len(), LATENCY_BOUNDS.len() + 1);
        // 3 ms and exactly 5 ms are in the first bucket (le 0.005), 400 s past the last.
        assert_eq!(l.counts[0], 2);
        assert_eq!(l.counts[LATENCY_BOUNDS.len()], 1);
        assert_eq!(l.counts.iter().sum::<u64>(), 3);
        assert!((l.sum_seconds - 400.008).abs() < 1e-6, "{}", l.sum_seconds);
        assert_eq!(
            s.converges(),
            [(Outcome::Ok, 2), (Outcome::Retry, 1), (Outcome::Failed, 1)]
        );
        s.restarted(true);
        s.restarted(false);
        s.restarted(false);
        assert_eq!(s.restarts(), (1, 2));
    }
}
