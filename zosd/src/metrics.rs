//! The node's metrics are pushed (zos-metrics, Prometheus remote-write; the node never
//! listens, so nothing scrapes it): CPU, memory, network and pool usage, labelled with
//! the node id, to the target the farm record names (docs/observability.md).

use std::sync::Arc;
use std::time::Duration;

use zos_contract::PublicKey;
use zos_metrics::collect::{NodeCpu, NodeMemory, NodeNetwork, Pools};
use zos_metrics::{PushConfig, Pusher, Registry, Target};
use zos_registry::Farm;
use zos_storage::{PoolStatus, Storage};

/// Starts pushing the node's metrics to the farm's target every `every`; `None` when
/// the farm names none, or names one the node cannot use (said in the log).
pub fn start(
    node: &PublicKey,
    farm: Option<&Farm>,
    storage: Arc<Storage>,
    every: Duration,
) -> Option<Pusher> {
    let Some(named) = farm.and_then(|f| f.metrics.as_ref()) else {
        tracing::info!("the farm names no metrics target: none are pushed");
        return None;
    };
    let target = match reqwest::Url::parse(&named.url) {
        Ok(url) => Target {
            ca_pem: named.ca_pem.as_ref().map(|p| p.as_bytes().to_vec()),
            ..Target::new(url)
        },
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
