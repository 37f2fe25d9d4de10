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
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::SystemTime;

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

/// The typed source of the permanent [`ProvisionError`] a provisioner returns from
/// [`Provisioner::ensure_mesh`] on a kernel without WireGuard (code
/// `wireguard_missing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this node's kernel has no WireGuard: a network across nodes needs it")]
pub struct WireguardMissing;

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

/// The WireGuard side of a tenant network across nodes (docs/network.md, "Mesh"), as
/// [`Provisioner::ensure_mesh`] converges it: zos-network's `MeshConfig` in the
/// engine's types.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshPlan {
    /// The whole network's range: routed into the WireGuard link (this node's own
    /// slot, on the bridge, is more specific). (network address, prefix length).
    pub range: (Ipv4Addr, u8),
    /// This node's WireGuard private key for the network (X25519).
    pub private_key: [u8; 32],
    /// The wanted peers: exactly these after `ensure_mesh` (others removed).
    pub peers: Vec<MeshPeerPlan>,
}

impl std::fmt::Debug for MeshPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("MeshPlan")
            .field("range", &self.range)
            .field("peers", &self.peers)
            .finish_non_exhaustive()
    }
}

/// One peer of a [`MeshPlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPeerPlan {
    /// Its WireGuard public key.
    pub public_key: [u8; 32],
    /// Where to send to it; `None`: it comes to us.
    pub endpoint: Option<SocketAddr>,
    /// Exactly its slot's subnet: (network address, prefix length).
    pub allowed: (Ipv4Addr, u8),
    /// Set when either side has no endpoint (`zos_mesh::PERSISTENT_KEEPALIVE_S`).
    pub keepalive_s: Option<u16>,
}

/// A WireGuard link as read back ([`Provisioner::ensure_mesh`], [`Provisioner::mesh_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshState {
    /// The UDP port it listens on (what the node's peer record publishes).
    pub listen_port: u16,
    /// Its public key.
    pub public_key: [u8; 32],
    /// Its peers as the kernel has them.
    pub peers: Vec<MeshPeerState>,
}

/// One peer of a [`MeshState`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshPeerState {
    /// Its WireGuard public key.
    pub public_key: [u8; 32],
    /// Its endpoint (configured, or learnt from its packets).
    pub endpoint: Option<SocketAddr>,
    /// The last completed handshake; `None`: none yet.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from it.
    pub rx_bytes: u64,
    /// Bytes sent to it.
    pub tx_bytes: u64,
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

    /// Whether the node's kernel has WireGuard: without it a contract with a network
    /// across nodes is refused (`wireguard_missing`).
    fn wireguard_available(&self) -> impl Future<Output = bool> + Send;

    /// Converges the WireGuard link of tenant network `net` (ensured before, with this
    /// node's slot as its subnet) to `mesh`; idempotent. Returns the link read back.
    /// A kernel without WireGuard is a permanent error with code `wireguard_missing`.
    /// [`Provisioner::remove_network`] removes the link with the network.
    fn ensure_mesh(
        &self,
        net: &NetworkPlan,
        mesh: &MeshPlan,
    ) -> impl Future<Output = Result<MeshState, ProvisionError>> + Send;

    /// The WireGuard link of tenant network `name` (node-wide name); `None`: it has none.
    fn mesh_state(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<MeshState>, ProvisionError>> + Send;
}
