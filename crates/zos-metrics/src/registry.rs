//! A small registry of labelled counters, gauges and histograms.
//!
//! Asking for a series takes a lock once and returns a handle; updating through the
//! handle is a few atomic operations, cheap enough for hot paths (the engine's queue,
//! every provisioning step). A registry may carry constant labels (the node's id, a
//! contract's id): every series it snapshots has them, and no series may set them
//! itself, so a tenant's registry cannot speak for another tenant.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::collect::{CollectError, Collector};
use crate::proto::{Sample, TimeSeries};

/// Latency buckets in seconds, for operations that take from milliseconds (a state
/// poll) to minutes (an image fetch, a VM boot).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Why a series cannot be registered.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Not `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    #[error("invalid metric name {0:?}")]
    MetricName(String),
    /// Not `[a-zA-Z_][a-zA-Z0-9_]*`, or reserved (`__` prefix, or `le` on a histogram).
    #[error("invalid label name {0:?}")]
    LabelName(String),
    /// The same label twice in one series.
    #[error("label {0:?} given twice")]
    DuplicateLabel(String),
    /// The label is one of the registry's constant labels, which series cannot set.
    #[error("label {0:?} is the registry's own (constant) label")]
    ConstantLabel(String),
    /// The series exists as another kind (a counter asked for as a gauge).
    #[error("{name} is registered as a {existing}, not a {asked}")]
    Kind {
        /// The metric name.
        name: String,
        /// What it is.
        existing: &'static str,
        /// What was asked for.
        asked: &'static str,
    },
    /// Histogram buckets must be finite and strictly increasing, and at least one.
    #[error("histogram buckets must be finite, strictly increasing and not empty")]
    Buckets,
}

/// An f64 in an atomic.
#[derive(Debug, Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
    fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    fn add(&self, d: f64) {
        let mut cur = self.0.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(cur) + d).to_bits();
            match self
                .0
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => cur = now,
            }
        }
    }
}

/// A value that only goes up (`_total` by convention).
#[derive(Debug, Clone)]
pub struct Counter(Arc<AtomicF64>);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.0.add(1.0);
    }
    /// Adds `by`; a negative or NaN `by` is ignored (a counter does not go down).
    pub fn inc_by(&self, by: f64) {
        if by > 0.0 {
            self.0.add(by);
        }
    }
    /// Sets the total, for a counter someone else keeps (the kernel's CPU time, a
    /// link's bytes): the collectors mirror it.
    pub fn set_total(&self, total: f64) {
        self.0.set(total);
    }
    /// The current total.
    pub fn get(&self) -> f64 {
        self.0.get()
    }
}

/// A value that goes up and down.
#[derive(Debug, Clone)]
pub struct Gauge(Arc<AtomicF64>);

impl Gauge {
    /// Sets it.
    pub fn set(&self, v: f64) {
        self.0.set(v);
    }
    /// Adds `d` (negative to subtract).
    pub fn add(&self, d: f64) {
        self.0.add(d);
    }
    /// Adds one.
    pub fn inc(&self) {
        self.0.add(1.0);
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.add(-1.0);
    }
    /// The current value.
    pub fn get(&self) -> f64 {
        self.0.get()
    }
}

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds, increasing; `+Inf` is implied.
    bounds: Vec<f64>,
    /// Per bucket (not cumulative), one more than `bounds` (the `+Inf` one).
    counts: Vec<AtomicU64>,
    sum: AtomicF64,
}

/// Observations counted into buckets, with their sum and count: latencies.
#[derive(Debug, Clone)]
pub struct Histogram(Arc<HistogramInner>);

impl Histogram {
    /// Counts one observation (seconds, for a latency); NaN is ignored (it would make
    /// the sum NaN for good).
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let i = self.0.bounds.partition_point(|b| *b < v);
        self.0.counts[i].fetch_add(1, Ordering::Relaxed);
        self.0.sum.add(v);
    }
    /// Counts one duration, in seconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }
    /// A guard that observes the time from now until it is dropped (or
    /// [`HistogramTimer::stop`]): the latency of a scope, early returns included.
    pub fn start_timer(&self) -> HistogramTimer {
        HistogramTimer {
            histogram: self.clone(),
            start: std::time::Instant::now(),
            done: false,
        }
    }
    /// Replaces the counts and the sum with ones kept elsewhere (e.g. the engine's own
    /// atomics): `counts` per bucket, not cumulative, one more than the bounds (the
    /// `+Inf` one). False, and nothing changed, when the lengths do not match.
    pub fn set_counts(&self, counts: &[u64], sum: f64) -> bool {
        if counts.len() != self.0.counts.len() || sum.is_nan() {
            return false;
        }
        for (c, v) in self.0.counts.iter().zip(counts) {
            c.store(*v, Ordering::Relaxed);
        }
        self.0.sum.set(sum);
        true
    }
    /// The upper bounds it was made with (`+Inf` implied).
    pub fn bounds(&self) -> &[f64] {
        &self.0.bounds
    }
    /// How many observations so far.
    pub fn count(&self) -> u64 {
        self.0
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
    /// Their sum.
    pub fn sum(&self) -> f64 {
        self.0.sum.get()
    }
}

/// Observes the time since [`Histogram::start_timer`] when dropped.
#[derive(Debug)]
#[must_use = "dropping it at once observes nothing useful"]
pub struct HistogramTimer {
    histogram: Histogram,
    start: std::time::Instant,
    done: bool,
}

impl HistogramTimer {
    /// Observes now; the duration observed.
    pub fn stop(mut self) -> Duration {
        self.done = true;
        let d = self.start.elapsed();
        self.histogram.observe_duration(d);
        d
    }
}

impl Drop for HistogramTimer {
    fn drop(&mut self) {
        if !self.done {
            self.histogram.observe_duration(self.start.elapsed());
        }
    }
}

#[derive(Debug, Clone)]
enum Entry {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

impl Entry {
    fn kind(&self) -> &'static str {
        match self {
            Entry::Counter(_) => "counter",
            Entry::Gauge(_) => "gauge",
            Entry::Histogram(_) => "histogram",
        }
    }
}

/// A series' identity: its name and its labels, sorted by name.
type Key = (String, Vec<(String, String)>);

#[derive(Default)]
struct Inner {
    constant: Vec<(String, String)>,
    series: Mutex<BTreeMap<Key, Entry>>,
    /// Run by [`Registry::collect`], by key (e.g. a workload's name).
    collectors: Mutex<BTreeMap<String, Box<dyn Collector>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("constant", &self.constant)
            .finish_non_exhaustive()
    }
}

/// The series one pusher sends. Cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct Registry(Arc<Inner>);

impl Registry {
    /// An empty registry without constant labels.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// An empty registry whose every series carries `labels` (e.g. `[("node", id)]`,
    /// or `[("contract", id)]` for a tenant's).
    pub fn with_labels(labels: &[(&str, &str)]) -> Result<Registry, RegistryError> {
        let constant = check_labels(labels, &[])?;
        Ok(Registry(Arc::new(Inner {
            constant,
            ..Inner::default()
        })))
    }

    /// Runs `collector` before every snapshot a pusher takes, under `key` (replacing
    /// the one there): a workload's cgroup under its name, the node's CPU under
    /// `node-cpu`. A collector must not add or remove collectors.
    pub fn set_collector(&self, key: &str, collector: Box<dyn Collector>) {
        self.collectors().insert(key.to_string(), collector);
    }

    /// Stops running the collector `key`; true if there was one. Its series stay until
    /// removed ([`Registry::remove_labelled`]).
    pub fn remove_collector(&self, key: &str) -> bool {
        self.collectors().remove(key).is_some()
    }

    /// Runs every collector; the ones that failed, by key (their series keep their
    /// last values).
    pub fn collect(&self) -> Vec<(String, CollectError)> {
        let collectors = self.collectors();
        collectors
            .iter()
            .filter_map(|(k, c)| c.collect(self).err().map(|e| (k.clone(), e)))
            .collect()
    }

    fn collectors(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Box<dyn Collector>>> {
        self.0.collectors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The registry's constant labels, sorted by name.
    pub fn constant_labels(&self) -> &[(String, String)] {
        &self.0.constant
    }

    /// The counter `name{labels}`, made at zero the first time.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Result<Counter, RegistryError> {
        match self.entry(name, labels, "counter", || {
            Ok(Entry::Counter(Counter(Arc::default())))
        })? {
            Entry::Counter(c) => Ok(c),
            _ => unreachable!("entry checked the kind"),
        }
    }

    /// The gauge `name{labels}`, made at zero the first time.
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Result<Gauge, RegistryError> {
        match self.entry(name, labels, "gauge", || {
            Ok(Entry::Gauge(Gauge(Arc::default())))
        })? {
            Entry::Gauge(g) => Ok(g),
            _ => unreachable!("entry checked the kind"),
        }
    }

    /// The histogram `name{labels}` with upper bounds `buckets` (e.g.
    /// [`LATENCY_BUCKETS`]); an existing one keeps the buckets it was made with.
    pub fn histogram(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        buckets: &[f64],
    ) -> Result<Histogram, RegistryError> {
        if labels.iter().any(|(n, _)| *n == "le") {
            return Err(RegistryError::LabelName("le".into()));
        }
        let make = || {
            let ok = !buckets.is_empty()
                && buckets.iter().all(|b| b.is_finite())
                && buckets.windows(2).all(|w| w[0] < w[1]);
            if !ok {
                return Err(RegistryError::Buckets);
            }
            Ok(Entry::Histogram(Histogram(Arc::new(HistogramInner {
                bounds: buckets.to_vec(),
                counts: (0..=buckets.len()).map(|_| AtomicU64::new(0)).collect(),
                sum: AtomicF64::default(),
            }))))
        };
        match self.entry(name, labels, "histogram", make)? {
            Entry::Histogram(h) => Ok(h),
            _ => unreachable!("entry checked the kind"),
        }
    }

    /// Forgets the series `name{labels}` (a workload that is gone); true if it was there.
    pub fn remove(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        let Ok(labels) = check_labels(labels, &self.0.constant) else {
            return false;
        };
        self.lock().remove(&(name.to_string(), labels)).is_some()
    }

    /// Forgets every series with the label `name="value"` (all of one workload's).
    pub fn remove_labelled(&self, name: &str, value: &str) -> usize {
        let mut map = self.lock();
        let before = map.len();
        map.retain(|(_, labels), _| !labels.iter().any(|(n, v)| n == name && v == value));
        before - map.len()
    }

    /// How many series are registered (a histogram counts once).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nothing is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every series' current value at `timestamp_ms`, constant labels added; a
    /// histogram gives its cumulative `_bucket{le=...}` series, `_sum` and `_count`.
    pub fn snapshot(&self, timestamp_ms: i64) -> Vec<TimeSeries> {
        let entries: Vec<(Key, Entry)> = self
            .lock()
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        let mut out = Vec::with_capacity(entries.len());
        for ((name, labels), entry) in entries {
            let all: Vec<(&str, &str)> = self
                .0
                .constant
                .iter()
                .chain(labels.iter())
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let at = |value: f64| Sample {
                value,
                timestamp_ms,
            };
            match entry {
                Entry::Counter(c) => out.push(TimeSeries::new(&name, all, at(c.get()))),
                Entry::Gauge(g) => out.push(TimeSeries::new(&name, all, at(g.get()))),
                Entry::Histogram(h) => {
                    let bucket = format!("{name}_bucket");
                    let mut cumulative = 0u64;
                    for (i, count) in h.0.counts.iter().enumerate() {
                        cumulative += count.load(Ordering::Relaxed);
                        let le = match h.0.bounds.get(i) {
                            Some(b) => b.to_string(),
                            None => "+Inf".to_string(),
                        };
                        let with_le = all.iter().copied().chain([("le", le.as_str())]);
                        out.push(TimeSeries::new(&bucket, with_le, at(cumulative as f64)));
                    }
                    let sum = format!("{name}_sum");
                    out.push(TimeSeries::new(&sum, all.iter().copied(), at(h.sum())));
                    let count = format!("{name}_count");
                    out.push(TimeSeries::new(&count, all, at(cumulative as f64)));
                }
            }
        }
        out
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Entry>> {
        // A panic while holding the lock leaves a map that is still whole.
        self.0.series.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        asked: &'static str,
        make: impl FnOnce() -> Result<Entry, RegistryError>,
    ) -> Result<Entry, RegistryError> {
        if !valid_metric_name(name) {
            return Err(RegistryError::MetricName(name.to_string()));
        }
        let labels = check_labels(labels, &self.0.constant)?;
        let mut map = self.lock();
        let key = (name.to_string(), labels);
        if let Some(e) = map.get(&key) {
            return if e.kind() == asked {
                Ok(e.clone())
            } else {
                Err(RegistryError::Kind {
                    name: name.to_string(),
                    existing: e.kind(),
                    asked,
                })
            };
        }
        // Another kind under the same name with other labels is as wrong.
        if let Some((_, e)) = map
            .range((name.to_string(), Vec::new())..)
            .take_while(|((n, _), _)| n == name)
            .find(|(_, e)| e.kind() != asked)
        {
            return Err(RegistryError::Kind {
                name: name.to_string(),
                existing: e.kind(),
                asked,
            });
        }
        let e = make()?;
        map.insert(key, e.clone());
        Ok(e)
    }
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    !name.starts_with("__")
        && matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `labels` checked and sorted by name; none may be one of `constant`.
fn check_labels(
    labels: &[(&str, &str)],
    constant: &[(String, String)],
) -> Result<Vec<(String, String)>, RegistryError> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(labels.len());
    for (n, v) in labels {
        if !valid_label_name(n) {
            return Err(RegistryError::LabelName(n.to_string()));
        }
        if constant.iter().any(|(c, _)| c == n) {
            return Err(RegistryError::ConstantLabel(n.to_string()));
        }
        out.push((n.to_string(), v.to_string()));
    }
    out.sort();
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(RegistryError::DuplicateLabel(w[0].0.clone()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(series: &[TimeSeries], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        series
            .iter()
            .find(|s| {
                s.label("__name__") == Some(name)
                    && labels.iter().all(|(n, v)| s.label(n) == Some(v))
            })
            .map(|s| s.samples[0].value)
    }

    #[test]
    fn handles_share_one_series_and_updates_show_in_the_snapshot() {
        let r = Registry::new();
        let a = r.counter("jobs_total", &[("kind", "vm")]).unwrap();
        let b = r.counter("jobs_total", &[("kind", "vm")]).unwrap();
        a.inc();
        b.inc_by(2.5);
        b.inc_by(-7.0);
        let q = r.gauge("queue", &[]).unwrap();
        q.set(4.0);
        q.dec();
        let snap = r.snapshot(42);
        assert_eq!(value(&snap, "jobs_total", &[("kind", "vm")]), Some(3.5));
        assert_eq!(value(&snap, "queue", &[]), Some(3.0));
        assert!(snap.iter().all(|s| s.samples[0].timestamp_ms == 42));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let r = Registry::new();
        let h = r
            .histogram("op_seconds", &[("op", "deploy")], &[0.125, 1.0])
            .unwrap();
        // Binary fractions: the sum is exact.
        h.observe(0.0625);
        h.observe(0.125); // on the bound: counted in le="0.125"
        h.observe(0.5);
        h.observe_duration(Duration::from_secs(3));
        h.observe(f64::NAN);
        let snap = r.snapshot(0);
        let b = |le| value(&snap, "op_seconds_bucket", &[("op", "deploy"), ("le", le)]);
        assert_eq!(b("0.125"), Some(2.0));
        assert_eq!(b("1"), Some(3.0));
        assert_eq!(b("+Inf"), Some(4.0));
        assert_eq!(value(&snap, "op_seconds_count", &[]), Some(4.0));
        assert_eq!(value(&snap, "op_seconds_sum", &[]), Some(3.6875));
        assert_eq!(h.count(), 4);
        // A timer observes once, whether stopped or dropped.
        let d = h.start_timer().stop();
        assert_eq!(h.count(), 5);
        assert!(h.sum() >= 3.6875 + d.as_secs_f64());
        drop(h.start_timer());
        assert_eq!(h.count(), 6);
        // Counts kept elsewhere replace its own, when they fit its buckets.
        assert!(!h.set_counts(&[1, 2], 1.0));
        assert_eq!(h.count(), 6);
        assert!(h.set_counts(&[1, 0, 2], 7.5));
        assert_eq!(h.bounds(), [0.125, 1.0]);
        let snap = r.snapshot(0);
        let b = |le| value(&snap, "op_seconds_bucket", &[("op", "deploy"), ("le", le)]);
        assert_eq!(b("0.125"), Some(1.0));
        assert_eq!(b("1"), Some(1.0));
        assert_eq!(b("+Inf"), Some(3.0));
        assert_eq!(value(&snap, "op_seconds_sum", &[]), Some(7.5));
    }

    #[test]
    fn constant_labels_are_on_every_series_and_cannot_be_set_by_one() {
        let r = Registry::with_labels(&[("contract", "c1")]).unwrap();
        r.gauge("g", &[("w", "a")]).unwrap().set(1.0);
        let err = r.gauge("g", &[("contract", "c2")]).unwrap_err();
        assert!(matches!(err, RegistryError::ConstantLabel(ref l) if l == "contract"));
        let snap = r.snapshot(0);
        assert_eq!(snap.len(), 1);
        assert_eq!(snap[0].label("contract"), Some("c1"));
        assert_eq!(snap[0].label("w"), Some("a"));
    }

    #[test]
    fn bad_names_labels_kinds_and_buckets_are_refused() {
        let r = Registry::new();
        assert!(matches!(
            r.counter("1x", &[]),
            Err(RegistryError::MetricName(_))
        ));
        assert!(matches!(
            r.counter("x", &[("__name__", "y")]),
            Err(RegistryError::LabelName(_))
        ));
        assert!(matches!(
            r.counter("x", &[("a-b", "y")]),
            Err(RegistryError::LabelName(_))
        ));
        assert!(matches!(
            r.counter("x", &[("a", "1"), ("a", "2")]),
            Err(RegistryError::DuplicateLabel(_))
        ));
        assert!(matches!(
            r.histogram("h", &[("le", "1")], &[1.0]),
            Err(RegistryError::LabelName(_))
        ));
        assert!(matches!(
            r.histogram("h", &[], &[2.0, 1.0]),
            Err(RegistryError::Buckets)
        ));
        assert!(matches!(
            r.histogram("h", &[], &[]),
            Err(RegistryError::Buckets)
        ));
        r.counter("x", &[("a", "1")]).unwrap();
        assert!(matches!(
            r.gauge("x", &[("a", "1")]),
            Err(RegistryError::Kind { .. })
        ));
        assert!(matches!(
            r.gauge("x", &[("a", "2")]),
            Err(RegistryError::Kind { .. })
        ));
        assert!(matches!(
            Registry::with_labels(&[("__x", "1")]),
            Err(RegistryError::LabelName(_))
        ));
    }

    #[test]
    fn a_gone_workload_s_series_are_removed() {
        let r = Registry::new();
        r.gauge("mem", &[("workload", "a")]).unwrap();
        r.counter("cpu", &[("workload", "a")]).unwrap();
        r.gauge("mem", &[("workload", "b")]).unwrap();
        assert!(r.remove("mem", &[("workload", "b")]));
        assert!(!r.remove("mem", &[("workload", "b")]));
        assert_eq!(r.remove_labelled("workload", "a"), 2);
        assert!(r.is_empty());
    }

    #[test]
    fn collectors_run_by_key_and_a_failing_one_is_named() {
        let r = Registry::new();
        r.set_collector(
            "one",
            Box::new(|r: &Registry| -> Result<(), CollectError> {
                r.gauge("g", &[])
                    .map(|g| g.inc())
                    .map_err(CollectError::from)
            }),
        );
        r.set_collector(
            "bad",
            Box::new(|r: &Registry| -> Result<(), CollectError> {
                r.gauge("1bad", &[]).map(|_| ()).map_err(CollectError::from)
            }),
        );
        let failed = r.collect();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "bad");
        assert!(r.remove_collector("bad"));
        assert!(!r.remove_collector("bad"));
        assert!(r.collect().is_empty());
        assert_eq!(r.gauge("g", &[]).unwrap().get(), 2.0);
    }

    #[test]
    fn concurrent_increments_are_not_lost() {
        let r = Registry::new();
        let c = r.counter("n_total", &[]).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                let c = c.clone();
                s.spawn(move || (0..10_000).for_each(|_| c.inc()));
            }
        });
        assert_eq!(c.get(), 40_000.0);
    }
}
