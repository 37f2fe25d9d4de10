//! The node's metrics are pushed (zos-metrics, Prometheus remote-write; the node never
//! listens, so nothing scrapes it): CPU, memory, network and pool usage and the
//! engine's series, labelled with the node id, to the target the farm record names;
//! each contract's workload series to the target its deployment names, and only there
//! (docs/observability.md).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use zos_contract::deployment::{Telemetry, WorkloadKind};
use zos_contract::PublicKey;
use zos_engine::stats::{EngineStats, LATENCY_BOUNDS};
use zos_metrics::collect::{Cgroup, CgroupNetwork, NodeCpu, NodeMemory, NodeNetwork, Pools};
use zos_metrics::{
    CgroupLayout, CollectError, Collector, PushConfig, Pusher, Registry, Target, Tenants,
};
use zos_registry::Farm;
use zos_storage::{PoolStatus, Storage};

use crate::provisioner::WorkloadCgroups;

/// Starts pushing the node's metrics to the farm's target every `every`; `None` when
/// the farm names none, or names one the node cannot use (said in the log).
pub fn start(
    node: &PublicKey,
    farm: Option<&Farm>,
    storage: Arc<Storage>,
    engine: Arc<EngineStats>,
    every: Duration,
) -> Option<Pusher> {
    let Some(named) = farm.and_then(|f| f.metrics.as_ref()) else {
        tracing::info!("the farm names no metrics target: none are pushed");
        return None;
    };
    let target = match target(named) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(url = %named.url, error = %e, "the farm's metrics target is unusable");
            return None;
        }
    };
    let registry = match Registry::with_labels(&[("node", &node.to_string())]) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "no metrics registry");
            return None;
        }
    };
    registry.set_collector("cpu", Box::new(NodeCpu::at("/proc/stat")));
    registry.set_collector("memory", Box::new(NodeMemory::at("/proc/meminfo")));
    registry.set_collector("network", Box::new(NodeNetwork::at("/sys/class/net")));
    registry.set_collector(
        "pools",
        Box::new(Pools(move || {
            storage
                .pools()
                .into_iter()
                .filter(|p| p.status == PoolStatus::Online)
                .map(|p| (p.label, p.mountpoint))
                .collect()
        })),
    );
    registry.set_collector("engine", Box::new(EngineSeries(engine)));
    let config = PushConfig {
        interval: every,
        ..PushConfig::default()
    };
    match Pusher::spawn(&target, registry, config) {
        Ok(p) => {
            tracing::info!(url = %named.url, every_s = every.as_secs(), "node metrics pushed to the farm's target");
            Some(p)
        }
        Err(e) => {
            tracing::warn!(url = %named.url, error = %e, "the farm's metrics target is unusable");
            None
        }
    }
}

/// The remote-write target a signed record names.
fn target(named: &Telemetry) -> Result<Target, String> {
    let url = reqwest::Url::parse(&named.url).map_err(|e| e.to_string())?;
    Ok(Target {
        ca_pem: named.ca_pem.as_ref().map(|p| p.as_bytes().to_vec()),
        ..Target::new(url)
    })
}

/// The engine's series, read from its atomics before each push.
struct EngineSeries(Arc<EngineStats>);

impl Collector for EngineSeries {
    fn collect(&self, into: &Registry) -> Result<(), CollectError> {
        let s = &self.0;
        into.gauge("zos_engine_queue_depth", &[])?
            .set(s.queue_depth() as f64);
        into.counter("zos_engine_records_total", &[])?
            .set_total(s.records() as f64);
        for (outcome, n) in s.converges() {
            into.counter("zos_engine_converges_total", &[("outcome", outcome.name())])?
                .set_total(n as f64);
        }
        let latency = s.latency();
        into.histogram("zos_engine_converge_seconds", &[], LATENCY_BOUNDS)?
            .set_counts(&latency.counts, latency.sum_seconds);
        let (ok, failed) = s.restarts();
        into.counter("zos_engine_restarts_total", &[("outcome", "ok")])?
            .set_total(ok as f64);
        into.counter("zos_engine_restarts_total", &[("outcome", "failed")])?
            .set_total(failed as f64);
        Ok(())
    }
}

/// A workload's cgroup (and for a container, its network namespace through it); one
/// that is not there (the workload is between a death and its restart, or not made
/// yet) is skipped, not an error on every push.
struct WorkloadCgroup<C>(C);

impl<C: Collector> Collector for WorkloadCgroup<C> {
    fn collect(&self, into: &Registry) -> Result<(), CollectError> {
        match self.0.collect(into) {
            Err(CollectError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

/// The contracts' workload metrics: each contract whose deployment names `metrics` has
/// its own registry (`contract`, `node` on every series) and pusher, bound to that
/// target only; its workloads' cgroups and restart counts are collected into it. A
/// contract without `metrics` has no registry: nothing of it leaves the node. Follows
/// the engine's view of the contracts it runs every `every`; stops when dropped.
pub struct TenantMetrics {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TenantMetrics {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts following the engine's contracts (see [`TenantMetrics`]). Call it inside
/// the runtime: the pushers are its tasks.
pub fn start_tenants(
    node: &PublicKey,
    engine: Arc<EngineStats>,
    cgroups: WorkloadCgroups,
    every: Duration,
) -> TenantMetrics {
    let config = PushConfig {
        interval: every,
        ..PushConfig::default()
    };
    let mut sync = TenantSync {
        tenants: Tenants::with_labels(config, &[("node", &node.to_string())]),
        layout: CgroupLayout::detect(),
        cgroups,
        bound: BTreeMap::new(),
        unusable: BTreeSet::new(),
    };
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sync.sync(&engine.contracts());
        }
    });
    TenantMetrics { task }
}

struct TenantSync {
    tenants: Tenants,
    layout: CgroupLayout,
    cgroups: WorkloadCgroups,
    /// Per contract with a target: the target's URL, and its workloads collected.
    bound: BTreeMap<String, (String, BTreeSet<String>)>,
    /// Targets said to be unusable, by contract and URL (said once).
    unusable: BTreeSet<(String, String)>,
}

impl TenantSync {
    fn sync(&mut self, contracts: &BTreeMap<String, zos_engine::stats::ContractView>) {
        let mut wanted = BTreeSet::new();
        for (id, view) in contracts {
            let Some(named) = &view.metrics else {
                continue;
            };
            let target = match target(named) {
                Ok(t) => t,
                Err(e) => {
                    if self.unusable.insert((id.clone(), named.url.clone())) {
                        tracing::warn!(contract = %id, url = %named.url, error = %e, "the contract's metrics target is unusable");
                    }
                    continue;
                }
            };
            if let Err(e) = self.tenants.set_target(id, Some(&target)) {
                if self.unusable.insert((id.clone(), named.url.clone())) {
                    tracing::warn!(contract = %id, url = %named.url, error = %e, "the contract's metrics target is unusable");
                }
                continue;
            }
            let registry = match self.tenants.registry(id) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(contract = %id, error = %e, "no metrics registry for the contract");
                    continue;
                }
            };
            wanted.insert(id.clone());
            let entry = self
                .bound
                .entry(id.clone())
                .or_insert_with(|| (named.url.clone(), BTreeSet::new()));
            entry.0.clone_from(&named.url);
            let now: BTreeSet<String> = view.workloads.iter().map(|w| w.workload.clone()).collect();
            for gone in entry.1.difference(&now) {
                registry.remove_collector(&format!("cgroup/{gone}"));
                registry.remove_collector(&format!("net/{gone}"));
                registry.remove_labelled("workload", gone);
            }
            for w in &view.workloads {
                let labels = [("workload", w.workload.as_str())];
                if !entry.1.contains(&w.workload) {
                    if let Some(path) = self.cgroups.path(&w.name, w.kind) {
                        let cgroup = Cgroup::new(self.layout.clone(), path, &labels);
                        // A container's processes are in its network namespace; a VM's
                        // QEMU is not in the guest's (its tap is on the tenant bridge).
                        if w.kind == WorkloadKind::Container {
                            registry.set_collector(
                                &format!("net/{}", w.workload),
                                Box::new(WorkloadCgroup(CgroupNetwork::new(cgroup.clone()))),
                            );
                        }
                        registry.set_collector(
                            &format!("cgroup/{}", w.workload),
                            Box::new(WorkloadCgroup(cgroup)),
                        );
                    }
                }
                match registry.counter("zos_workload_restarts_total", &labels) {
                    Ok(c) => c.set_total(w.restarts as f64),
                    Err(e) => tracing::warn!(contract = %id, error = %e, "restart count not kept"),
                }
            }
            entry.1 = now;
        }
        // Gone, or no target any more: its pusher stops, nothing more leaves for it.
        for id in self.tenants.contracts() {
            if !wanted.contains(&id) {
                self.tenants.remove(&id);
                self.bound.remove(&id);
                tracing::info!(contract = %id, "contract metrics no longer pushed");
            }
        }
    }
}
