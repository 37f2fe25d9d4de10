//! The node's local status (zos-status): zosd fills it from what it knows, paints
//! it on the console when configured, and serves it read-only over D-Bus on a
//! root-only unix socket (docs/status.md). Wiring only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use zos_engine::{Capacity, ContractSummary, State};
use zos_status::{ContractStatus, NodeStatus, PoolStatus, Resources, StatusSender, WorkloadStatus};
use zos_storage::{PoolKind, Storage};

use crate::config::NodeConfig;

/// How often uptime, addresses and pool usage are read again.
const REFRESH: Duration = Duration::from_secs(5);

/// The status, its server and its painters; stops them all when dropped (the
/// socket is removed).
pub struct LocalStatus {
    tx: StatusSender,
    console: Option<PathBuf>,
    _server: Option<zos_status::server::StatusServer>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for LocalStatus {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn now() -> u64 {
    zos_registry::now()
}

impl LocalStatus {
    /// Serves the status socket and starts the console painter (if configured). A
    /// socket that cannot be bound is logged, not fatal: the node serves contracts
    /// without it.
    pub fn start(cfg: &NodeConfig) -> LocalStatus {
        let (tx, rx) = zos_status::channel(NodeStatus {
            farm: cfg.farm.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            state: "starting".into(),
            uptime_secs: zos_registry::detect::uptime().unwrap_or(0),
            ..NodeStatus::default()
        });
        let server = match zos_status::server::serve(&cfg.status_socket, rx.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(socket = %cfg.status_socket.display(), error = %e, "no local status interface");
                None
            }
        };
        let mut tasks = Vec::new();
        if let Some(console) = &cfg.console {
            tracing::info!(console = %console.display(), every_secs = cfg.console_every_secs, "status screen");
            tasks.push(tokio::spawn(zos_status::console::run(
                console.clone(),
                rx,
                Duration::from_secs(cfg.console_every_secs),
            )));
        }
        LocalStatus {
            tx,
            console: cfg.console.clone(),
            _server: server,
            tasks,
        }
    }

    pub fn set(&self, f: impl FnOnce(&mut NodeStatus)) {
        self.tx.send_modify(f);
    }

    pub fn state(&self, state: &str) {
        self.set(|s| s.state = state.to_string());
    }

    pub fn error(&self, source: &str, message: &str) {
        self.set(|s| s.push_error(now(), source, message));
    }

    /// Reads uptime, addresses and pools now and every [`REFRESH`]; `offered` is
    /// what contracts may reserve.
    pub fn refresh(&mut self, storage: Arc<Storage>, netns: Option<PathBuf>, offered: Capacity) {
        self.set(|s| s.offered = resources(offered));
        let tx = self.tx.clone();
        self.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (storage, netns) = (storage.clone(), netns.clone());
                let read = tokio::task::spawn_blocking(move || machine(&storage, netns.as_deref()));
                if let Ok((uptime, addresses, pools)) = read.await {
                    tx.send_if_modified(|s| {
                        let before = (s.uptime_secs, s.addresses.clone(), s.pools.clone());
                        s.uptime_secs = uptime;
                        s.addresses = addresses;
                        s.pools = pools;
                        before != (s.uptime_secs, s.addresses.clone(), s.pools.clone())
                    });
                }
            }
        }));
    }

    /// Follows the engine's per-contract summaries: contracts, workloads, what they
    /// reserve, and their errors.
    pub fn follow(&mut self, mut summaries: tokio::sync::watch::Receiver<Vec<ContractSummary>>) {
        let tx = self.tx.clone();
        self.tasks.push(tokio::spawn(async move {
            loop {
                let list = summaries.borrow_and_update().clone();
                tx.send_modify(|s| apply(s, &list, now()));
                if summaries.changed().await.is_err() {
                    return;
                }
            }
        }));
    }

    /// The agent is done (`result`): the last word on the console, painted before
    /// zosd exits, since the painter stops with it.
    pub fn finish(&self, result: &anyhow::Result<()>) {
        match result {
            Ok(()) => self.state("stopped"),
            Err(e) => {
                self.state("failed (the agent restarts)");
                self.error("agent", &format!("{e:#}"));
            }
        }
        if let Some(console) = &self.console {
            let frame = zos_status::render(&self.tx.borrow());
            if let Err(e) = zos_status::console::paint(console, &frame) {
                tracing::warn!(console = %console.display(), error = %e, "last status screen not painted");
            }
        }
    }
}

fn resources(c: Capacity) -> Resources {
    Resources {
        cpu: c.cpu,
        memory_bytes: c.memory_mib << 20,
        ssd_bytes: c.ssd_mib << 20,
        hdd_bytes: c.hdd_mib << 20,
    }
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Provisioning => "provisioning",
        State::Ok => "ok",
        State::Error => "error",
        State::Refused => "refused",
        State::Cancelled => "cancelled",
        State::Expired => "expired",
    }
}

/// Folds the engine's summaries into the status; a contract that newly turns to
/// error or refused also lands in the last errors.
fn apply(s: &mut NodeStatus, list: &[ContractSummary], now: u64) {
    let mut reserved = Capacity::default();
    let mut contracts = Vec::new();
    let mut workloads = Vec::new();
    for c in list {
        reserved.cpu += c.reserved.cpu;
        reserved.memory_mib += c.reserved.memory_mib;
        reserved.ssd_mib += c.reserved.ssd_mib;
        reserved.hdd_mib += c.reserved.hdd_mib;
        let state = state_name(c.state).to_string();
        let was = s.contracts.iter().find(|p| p.id == c.contract);
        let failing = matches!(c.state, State::Error | State::Refused);
        if failing && was.is_none_or(|p| p.state != state || p.message != c.message) {
            s.push_error(now, &format!("contract {}", c.contract), &c.message);
        }
        contracts.push(ContractStatus {
            id: c.contract.clone(),
            version: c.version,
            state,
            message: c.message.clone(),
        });
        workloads.extend(c.workloads.iter().map(|w| {
            WorkloadStatus {
                contract: c.contract.clone(),
                name: w.name.clone(),
                kind: w
                    .kind
                    .map(|k| format!("{k:?}").to_lowercase())
                    .unwrap_or_else(|| "-".into()),
                state: w.state.clone(),
                restarts: w.restarts,
                address: w.address.map(|a| a.to_string()),
                runtime: w.runtime.clone(),
                output: w.output.clone(),
            }
        }));
    }
    s.reserved = resources(reserved);
    s.contracts = contracts;
    s.workloads = workloads;
}

/// Uptime, the node's addresses and its pools (blocking: statvfs, netlink-free
/// getifaddrs in the node's namespace).
fn machine(storage: &Storage, netns: Option<&Path>) -> (u64, Vec<String>, Vec<PoolStatus>) {
    let uptime = zos_registry::detect::uptime().unwrap_or(0);
    let addresses = match netns {
        None => addresses(),
        Some(ns) => zos_network::netns::run_at(ns, || Ok(addresses())).unwrap_or_else(|e| {
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
    (uptime, addresses, pools)
}

/// The calling thread's namespace's addresses, loopback aside: `<if> <ip>/<len>`.
fn addresses() -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for a in addrs {
        if a.interface_name == "lo" {
            continue;
        }
        let (Some(addr), Some(mask)) = (a.address, a.netmask) else {
            continue;
        };
        let text = if let (Some(ip), Some(m)) = (addr.as_sockaddr_in(), mask.as_sockaddr_in()) {
            format!("{}/{}", ip.ip(), u32::from(m.ip()).count_ones())
        } else if let (Some(ip), Some(m)) = (addr.as_sockaddr_in6(), mask.as_sockaddr_in6()) {
            format!("{}/{}", ip.ip(), u128::from(m.ip()).count_ones())
        } else {
            continue;
        };
        out.push(format!("{} {text}", a.interface_name));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_engine::WorkloadSummary;

    fn summary(id: &str, state: State, message: &str) -> ContractSummary {
        ContractSummary {
            contract: id.into(),
            version: Some(1),
            state,
            message: message.into(),
            reserved: Capacity {
                cpu: 1,
                memory_mib: 64,
                ssd_mib: 0,
                hdd_mib: 0,
            },
            workloads: vec![WorkloadSummary {
                name: "app".into(),
                kind: Some(zos_contract::deployment::WorkloadKind::Vm),
                state: "running".into(),
                restarts: 2,
                address: Some("10.0.0.2".parse().unwrap()),
                runtime: Some("qemu/tcg".into()),
                output: Some("vm-echo: up".into()),
            }],
        }
    }

    #[test]
    fn summaries_become_contracts_workloads_reserved_and_errors() {
        let mut s = NodeStatus::default();
        apply(
            &mut s,
            &[
                summary("a", State::Ok, "fine"),
                summary("b", State::Error, "boom"),
            ],
            10,
        );
        assert_eq!(s.reserved.cpu, 2);
        assert_eq!(s.reserved.memory_bytes, 128 << 20);
        assert_eq!(s.contracts.len(), 2);
        assert_eq!(s.workloads[0].kind, "vm");
        assert_eq!(s.workloads[0].address.as_deref(), Some("10.0.0.2"));
        assert_eq!(s.workloads[0].output.as_deref(), Some("vm-echo: up"));
        assert_eq!(s.errors.len(), 1);
        assert_eq!(s.errors[0].source, "contract b");
        // The same error again is not a new one.
        apply(&mut s, &[summary("b", State::Error, "boom")], 20);
        assert_eq!(s.errors.len(), 1);
        assert_eq!(s.errors[0].time, 10);
    }
}
