//! The node's local status (zos-status's `live`; docs/status.md), wired to the node:
//! its configuration, its pools and its namespace.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zos_engine::Capacity;
use zos_status::live::{LiveStatus, Machine};
use zos_status::{NodeStatus, PoolStatus};
use zos_storage::{PoolKind, Storage};

use crate::config::NodeConfig;

/// Serves the status socket and starts the console painter (if configured).
pub fn start(cfg: &NodeConfig) -> LiveStatus {
    let initial = NodeStatus {
        farm: cfg.farm.clone(),
        version: crate::version().to_string(),
        state: "starting".into(),
        uptime_secs: zos_registry::detect::uptime().unwrap_or(0),
        ..NodeStatus::default()
    };
    let every = Duration::from_secs(cfg.console_every_secs);
    LiveStatus::start(initial, &cfg.status_socket, cfg.console.clone(), every)
}

/// Keeps uptime, addresses (in `netns`) and pools current; `offered` is what contracts
/// may reserve.
pub fn refresh(
    s: &mut LiveStatus,
    storage: Arc<Storage>,
    netns: Option<PathBuf>,
    offered: Capacity,
) {
    s.refresh(offered, move || machine(&storage, netns.as_deref()));
}

/// The agent is done: its last word on the console.
pub fn finish(s: &LiveStatus, result: &anyhow::Result<()>) {
    s.finish(result.as_ref().err().map(|e| format!("{e:#}")).as_deref());
}

/// Uptime, the node's addresses and its pools (blocking: statvfs, getifaddrs in the
/// node's namespace).
fn machine(storage: &Storage, netns: Option<&Path>) -> Machine {
    let addresses = match netns {
        None => zos_status::live::addresses(),
        Some(ns) => zos_network::netns::run_at(ns, || Ok(zos_status::live::addresses()))
            .unwrap_or_else(|e| {
                tracing::debug!(error = %e, "no addresses from the node namespace");
                Vec::new()
            }),
    };
    let pools = match storage.pool_infos() {
        Ok(infos) => infos
            .into_iter()
            .map(|i| PoolStatus {
                label: i.pool.label.clone(),
                kind: match i.pool.kind {
                    PoolKind::Ssd => "ssd".into(),
                    PoolKind::Hdd => "hdd".into(),
                },
                state: match &i.pool.status {
                    zos_storage::PoolStatus::Online => "online".into(),
                    zos_storage::PoolStatus::Missing => "missing".into(),
                    zos_storage::PoolStatus::Broken { .. } => "broken".into(),
                },
                size_bytes: i.capacity,
                used_bytes: i.used,
            })
            .collect(),
        Err(e) => {
            tracing::debug!(error = %e, "no pool usage");
            Vec::new()
        }
    };
    Machine {
        uptime_secs: zos_registry::detect::uptime().unwrap_or(0),
        addresses,
        pools,
    }
}
