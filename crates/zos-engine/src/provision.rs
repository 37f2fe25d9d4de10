//! The engine's one port to the machine: a [`Provisioner`] creates, inspects and removes
//! the kernel objects a deployment turns into. zosd implements it over zos-storage,
//! zos-network, zos-flist and zos-container; the engine's unit tests use a fake.
//!
//! Every operation is idempotent: `ensure_*` on something that exists with the same
//! spec is a no-op, `remove_*` on something absent is a no-op. Names are chosen by the
//! engine ([`crate::names`]) and are deterministic, so after a crash the engine finds
//! what it made by name alone.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use zos_contract::deployment::{Port, Volume, Workload};

/// Whether trying again may help ([`ProvisionError::retry`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// A store away, a busy device: supervision provisions again with backoff.
    Transient,
    /// Retrying cannot help (a tampered flist, a refused disk): the contract goes to
    /// `error` and is not retried until a new version arrives.
    Permanent,
}

/// A plain message as an error source (what [`ProvisionError::new`] wraps).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Message(pub String);

/// Why a provisioning step failed. Its display (`step name: source`) is reported in the
/// contract's status; the source keeps the resource crate's typed error.
#[derive(Debug, thiserror::Error)]
#[error("{step} {name}: {source}")]
pub struct ProvisionError {
    /// "volume", "network", "flist", "workload".
    pub step: &'static str,
    /// The node-wide name of the resource the step was for.
    pub name: String,
    /// What went wrong, as the resource crate said it.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
    /// Whether supervision tries again.
    pub retry: Retry,
}

impl ProvisionError {
    /// A transient error with a message as its source.
    pub fn new(step: &'static str, name: &str, message: impl Into<String>) -> Self {
        Self::from_source(step, name, Message(message.into()))
    }

    /// A transient error wrapping `source` (typed: callers can downcast it).
    pub fn from_source(
        step: &'static str,
        name: &str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ProvisionError {
            step,
            name: name.to_string(),
            source: Box::new(source),
            retry: Retry::Transient,
        }
    }

    /// The same error, [`Retry::Permanent`].
    pub fn permanent(mut self) -> Self {
        self.retry = Retry::Permanent;
        self
    }

    /// [`ProvisionError::permanent`] when `permanent` (the resource crate's verdict).
    pub fn permanent_if(self, permanent: bool) -> Self {
        if permanent {
            self.permanent()
        } else {
            self
        }
    }

    /// True when retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        self.retry == Retry::Permanent
    }
}

/// A tenant network as the provisioner creates it. Addresses are decided by the engine
/// (see [`crate::engine`]): the gateway is the subnet's first host, and the workloads on
/// the network take the next ones in the order the deployment lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkPlan {
    /// The node-wide name (see [`crate::names`]).
    pub name: String,
    /// The subnet's network address.
    pub subnet: Ipv4Addr,
    /// The subnet's prefix length, in bits.
    pub prefix_len: u8,
    /// The node's address on the network (the subnet's first host): the workloads'
    /// default route.
    pub gateway: Ipv4Addr,
    /// Ports opened from the node's public side: (workload address, port).
    pub forwards: Vec<(Ipv4Addr, Port)>,
    /// Ranges opened beyond the internet (the deployment's `egress_allow`, checked):
    /// (network address, prefix length).
    pub egress_allow: Vec<(Ipv4Addr, u8)>,
}

/// A workload as the provisioner runs it: the contract's workload, plus what the
/// engine resolved for it (resource names, the volume paths, the network).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadPlan {
    /// The node-wide name of the workload (see [`crate::names`]).
    pub name: String,
    /// The workload as the contract declares it.
    pub workload: Workload,
    /// Its tenant network and its address there, if it has one.
    pub network: Option<(NetworkPlan, Ipv4Addr)>,
    /// `(volume path on the node, mount point in the workload, read only)`.
    pub mounts: Vec<(PathBuf, String, bool)>,
    /// Where its output lines go: its contract's log destination, if it names one.
    pub logs: Option<zos_contract::deployment::Telemetry>,
}

/// What the provisioner reports about a running (or dead) workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadStatus {
    /// Whether it runs.
    pub state: WorkloadState,
    /// The workload's address on its tenant network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// The last lines it wrote (stdout and stderr, or the serial console of a VM).
    #[serde(default)]
    pub log_tail: Vec<String>,
    /// What runs it, if worth saying (a VM: the hypervisor and its accelerator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
}

/// Whether a workload that exists runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum WorkloadState {
    /// Its process (a container's init, a VM's hypervisor) is alive.
    Running,
    /// It ended: by itself with `code`, or killed by `signal`.
    Exited {
        /// Its exit status; `None` when it was killed or the status is not known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        /// The signal that killed it; `None` when it exited by itself or it is not known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal: Option<i32>,
    },
}

/// Everything of ours that exists on the node, by node-wide name; the engine removes
/// what no contract owns (orphans of a crash, of a cancelled contract, of a bug).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// The volumes in the storage pool.
    pub volumes: BTreeSet<String>,
    /// The tenant networks.
    pub networks: BTreeSet<String>,
    /// The workloads, running or not.
    pub workloads: BTreeSet<String>,
}

/// The machine, as the engine sees it. See the module docs.
pub trait Provisioner: Send + Sync {
    /// Creates the volume (or checks it exists with at least this size) and returns the
    /// directory a workload mounts.
    fn ensure_volume(
        &self,
        name: &str,
        spec: &Volume,
    ) -> impl Future<Output = Result<PathBuf, ProvisionError>> + Send;

    /// Deletes the volume and its data. The engine calls it only for a volume its owner
    /// cancelled, or whose contract's grace period after expiry is over.
    fn remove_volume(&self, name: &str) -> impl Future<Output = Result<(), ProvisionError>> + Send;

    /// Creates the tenant network with its ports opened towards the workloads.
    fn ensure_network(
        &self,
        plan: &NetworkPlan,
    ) -> impl Future<Output = Result<(), ProvisionError>> + Send;

    /// Removes the tenant network and its port forwards.
    fn remove_network(&self, name: &str)
        -> impl Future<Output = Result<(), ProvisionError>> + Send;

    /// Fetches and verifies the workload's flist, prepares its root filesystem and
    /// starts it. A workload that is running already is left alone (re-adoption).
    fn ensure_workload(
        &self,
        plan: &WorkloadPlan,
    ) -> impl Future<Output = Result<WorkloadStatus, ProvisionError>> + Send;

    /// Starts a workload that exited, without re-preparing its root filesystem.
    fn restart_workload(
        &self,
        plan: &WorkloadPlan,
    ) -> impl Future<Output = Result<WorkloadStatus, ProvisionError>> + Send;

    /// Stops the workload and removes its root filesystem, logs and runtime state.
    fn remove_workload(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<(), ProvisionError>> + Send;

    /// How the workload stands, with its address and log tail; `None` when no such
    /// workload exists.
    fn workload_status(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<WorkloadStatus>, ProvisionError>> + Send;

    /// Only the state of a workload, which supervision polls several times a second; a
    /// provisioner overrides it when [`Provisioner::workload_status`] costs more (it
    /// reads the logs).
    fn workload_state(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<WorkloadState>, ProvisionError>> + Send {
        async move { Ok(self.workload_status(name).await?.map(|s| s.state)) }
    }

    /// Everything of ours on the node (see [`Inventory`]), for orphan collection.
    fn inventory(&self) -> impl Future<Output = Result<Inventory, ProvisionError>> + Send;
}
