//! The node's status while its agent runs: one [`LiveStatus`] holds the channel, serves
//! it on the socket, paints it on the console, and keeps it current from the machine
//! ([`LiveStatus::refresh`]) and from the engine's per-contract summaries
//! ([`LiveStatus::follow`], folded in by [`apply`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use zos_engine::{Capacity, ContractSummary, State};

use crate::{ContractStatus, NodeStatus, PoolStatus, Resources, StatusSender, WorkloadLine};

/// How often uptime, addresses and pool usage are read again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// What is read from the machine every [`REFRESH`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Machine {
    /// Seconds since boot.
    pub uptime_secs: u64,
    /// The node's addresses, `<interface> <address>/<prefix>` (see [`addresses`]).
    pub addresses: Vec<String>,
    /// The storage pools, with their current use.
    pub pools: Vec<PoolStatus>,
}

/// The status, its server and its painters; stops them all when dropped (the socket is
/// removed).
pub struct LiveStatus {
    tx: StatusSender,
    console: Option<PathBuf>,
    _server: Option<crate::server::StatusServer>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for LiveStatus {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl LiveStatus {
    /// Serves `initial` on `socket` and paints it on `console` (if any) every `every`.
    /// A socket that cannot be bound is logged, not fatal: the node serves contracts
    /// without it.
    pub fn start(
        initial: NodeStatus,
        socket: &Path,
        console: Option<PathBuf>,
        every: Duration,
    ) -> LiveStatus {
        let (tx, rx) = crate::channel(initial);
        let server = match crate::server::serve(socket, rx.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(socket = %socket.display(), error = %e, "no local status interface");
                None
            }
        };
        let mut tasks = Vec::new();
        if let Some(console) = &console {
            tracing::info!(console = %console.display(), every_secs = every.as_secs(), "status screen");
            tasks.push(tokio::spawn(crate::console::run(
                console.clone(),
                rx,
                every,
            )));
        }
        LiveStatus {
            tx,
            console,
            _server: server,
            tasks,
        }
    }

    /// Changes the status in place; every reader sees the change.
    pub fn set(&self, f: impl FnOnce(&mut NodeStatus)) {
        self.tx.send_modify(f);
    }

    /// Sets where the agent is ("starting", "registering", "serving", ...).
    pub fn state(&self, state: &str) {
        self.set(|s| s.state = state.to_string());
    }

    /// Records an error now (see [`NodeStatus::push_error`]).
    pub fn error(&self, source: &str, message: &str) {
        self.set(|s| s.push_error(now(), source, message));
    }

    /// Sets what contracts may reserve, then reads the machine (`read`, on a blocking
    /// thread) now and every [`REFRESH`].
    pub fn refresh(
        &mut self,
        offered: Capacity,
        read: impl Fn() -> Machine + Send + Sync + 'static,
    ) {
        self.set(|s| s.offered = resources(offered));
        let tx = self.tx.clone();
        let read = std::sync::Arc::new(read);
        self.tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let read = read.clone();
                if let Ok(m) = tokio::task::spawn_blocking(move || read()).await {
                    tx.send_if_modified(|s| {
                        let before = (s.uptime_secs, s.addresses.clone(), s.pools.clone());
                        s.uptime_secs = m.uptime_secs;
                        s.addresses = m.addresses;
                        s.pools = m.pools;
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

    /// The agent is done (`error`: why it failed): the last word on the console,
    /// painted at once, since the painter stops with the agent.
    pub fn finish(&self, error: Option<&str>) {
        match error {
            None => self.state("stopped"),
            Some(e) => {
                self.state("failed (the agent restarts)");
                self.error("agent", e);
            }
        }
        if let Some(console) = &self.console {
            let frame = crate::render(&self.tx.borrow());
            if let Err(e) = crate::console::paint(console, &frame) {
                tracing::warn!(console = %console.display(), error = %e, "last status screen not painted");
            }
        }
    }
}

/// The engine's capacity (MiB) as the status shows it (bytes).
pub fn resources(c: Capacity) -> Resources {
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
        State::Fenced => "fenced",
        State::Moved => "moved",
    }
}

/// Folds the engine's summaries into the status; a contract that newly turns to error
/// or refused also lands in the last errors.
pub fn apply(s: &mut NodeStatus, list: &[ContractSummary], now: u64) {
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
            WorkloadLine {
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

/// The calling thread's namespace's addresses, loopback aside: `<if> <ip>/<len>`.
pub fn addresses() -> Vec<String> {
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

    #[test]
    fn a_changed_error_message_is_a_new_error_and_a_recovery_is_none() {
        let mut s = NodeStatus::default();
        apply(&mut s, &[summary("b", State::Error, "boom")], 10);
        apply(&mut s, &[summary("b", State::Error, "bang")], 20);
        assert_eq!(s.errors.len(), 2);
        assert_eq!(s.errors[1].message, "bang");
        apply(&mut s, &[summary("b", State::Ok, "fine")], 30);
        assert_eq!(s.errors.len(), 2);
        assert_eq!(s.contracts[0].state, "ok");
    }

    #[test]
    fn loopback_is_not_an_address_of_the_node() {
        assert!(addresses().iter().all(|a| !a.starts_with("lo ")));
    }
}
