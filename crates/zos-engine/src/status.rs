//! The body of the status record a node publishes under
//! `nodes/<node>/status/<contract id>`, signed by the node key, on every change.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Where a contract stands on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Accepted; its volumes, networks, flists and workloads are being created.
    Provisioning,
    /// Every workload runs.
    Ok,
    /// Accepted but failing: a provisioning step failed, or a workload keeps dying.
    Error,
    /// Refused: nothing was created. `reasons` says why.
    Refused,
    /// Cancelled by its owner; everything it had is gone.
    Cancelled,
    /// Past its expiry; everything it had is gone.
    Expired,
    /// A `move` replica of a placement contract that this node stopped by itself: its
    /// liveness lapsed for half the contract's `after_s` (docs/grid.md). Its volumes are
    /// kept; it starts again only when the orchestrator's placement record still names
    /// this node at its epoch.
    Fenced,
    /// A replica of a placement contract that the orchestrator moved to another node
    /// (a higher epoch there); everything it had here is gone, and that epoch and any
    /// below it are refused from now on.
    Moved,
}

/// One refusal reason: its stable code and its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReasonReport {
    /// Stable and machine-readable (e.g. `malformed`, `over_capacity`): what clients
    /// match on.
    pub code: String,
    /// For people; its wording may change.
    pub message: String,
}

impl From<&zos_contract::UpdateReason> for ReasonReport {
    fn from(r: &zos_contract::UpdateReason) -> Self {
        ReasonReport {
            code: r.code().to_string(),
            message: r.to_string(),
        }
    }
}

/// A record at a running contract's key that the node refused (another owner's
/// version, an update without the running version's signers, junk). It rides along
/// with the running version's report, which it does not replace: what runs keeps
/// running and keeps its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefusedUpdate {
    /// The refused document's version (absent when it had none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Why it was refused, in one line.
    pub message: String,
    /// Every reason it was refused for.
    pub reasons: Vec<ReasonReport>,
}

impl From<&zos_contract::Reason> for ReasonReport {
    fn from(r: &zos_contract::Reason) -> Self {
        ReasonReport {
            code: r.code(),
            message: r.to_string(),
        }
    }
}

/// One workload's part of the report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadReport {
    /// "running", "restarting", "exited", "failed".
    pub state: String,
    /// Its address on its tenant network; `None` when it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// How often supervision restarted it (kept across updates of the contract).
    pub restarts: u32,
    /// What runs it, when the provisioner says (a VM: `qemu/kvm` or `qemu/tcg`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// Its last lines of output, oldest first (stdout and stderr, or a VM's console).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}

/// The status record body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusReport {
    /// The contract id.
    pub contract: String,
    /// The version this report is about (absent when a refused document had none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Where the contract stands.
    pub state: State,
    /// The state in a sentence (the error, when it failed).
    pub message: String,
    /// For a placement contract: the replica this node runs (or ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<u64>,
    /// For a placement contract: the epoch of that replica's assignment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Why it was refused; empty unless `state` is [`State::Refused`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<ReasonReport>,
    /// Per workload, by its name in the deployment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub workloads: BTreeMap<String, WorkloadReport>,
    /// The last record at this contract's key that was refused while this version
    /// runs (see [`RefusedUpdate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_update: Option<RefusedUpdate>,
    /// Per tenant network that spans nodes (docs/network.md, "Mesh"): this node's side
    /// of it and every other slot as this node sees it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mesh: Vec<MeshReport>,
}

/// One tenant network across nodes, as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshReport {
    /// The network's name in the deployment.
    pub network: String,
    /// The whole network's range (the deployment's `subnet`).
    pub range: String,
    /// This node's slot and its subnet (its workloads' addresses).
    pub slot: u64,
    /// This node's slot's subnet.
    pub subnet: String,
    /// The UDP port of this node's WireGuard link (absent before it exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_port: Option<u16>,
    /// This node's WireGuard public key (base64; absent before it exists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// Every other slot of the network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<MeshPeerReport>,
}

/// Another slot of a [`MeshReport`]: the node there and how its link stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshPeerReport {
    /// The slot number (a replica number, or a position in `nodes`).
    pub slot: u64,
    /// The slot's subnet.
    pub subnet: String,
    /// The node there (absent: a replica not placed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `peer`, `not_placed`, `no_record` or `refused`.
    pub state: String,
    /// The refusal's code (`zos_mesh::RefusalCode`) when `state` is `refused`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// The peer's WireGuard endpoint as configured (absent: behind NAT, it comes to us).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Unix seconds of the last completed handshake (absent: none yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handshake: Option<u64>,
    /// Bytes received from this peer.
    #[serde(default)]
    pub rx_bytes: u64,
    /// Bytes sent to this peer.
    #[serde(default)]
    pub tx_bytes: u64,
    /// For a slot that is not a working peer, the likely cause in a sentence (no
    /// record, refused and why, no handshake and what to check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

impl StatusReport {
    /// A report without reasons, workloads or refused update (set them after).
    pub fn new(
        contract: &str,
        version: Option<u64>,
        state: State,
        message: impl Into<String>,
    ) -> Self {
        StatusReport {
            contract: contract.to_string(),
            version,
            state,
            message: message.into(),
            replica: None,
            epoch: None,
            reasons: Vec::new(),
            workloads: BTreeMap::new(),
            refused_update: None,
            mesh: Vec::new(),
        }
    }

    /// The same report naming `held`'s replica and epoch (a placement contract).
    pub fn holding(mut self, held: Option<&crate::journal::Held>) -> Self {
        if let Some(h) = held {
            self.replica = Some(h.replica);
            self.epoch = Some(h.epoch);
        }
        self
    }
}

/// What the engine last said about one contract, for the node's local status (the
/// console screen, `zos status`): the report without log tails, with what the node
/// knows besides (workload kinds, the capacity the contract reserves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractSummary {
    /// The contract id.
    pub contract: String,
    /// As in [`StatusReport::version`].
    pub version: Option<u64>,
    /// Where the contract stands.
    pub state: State,
    /// As in [`StatusReport::message`].
    pub message: String,
    /// What it reserves; zero when the node does not own it (refused).
    pub reserved: crate::Capacity,
    /// Its workloads, in the order of the report (by name).
    pub workloads: Vec<WorkloadSummary>,
}

/// One workload of a [`ContractSummary`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadSummary {
    /// Its name in the deployment.
    pub name: String,
    /// Absent when the deployment does not name it (a report of a refused contract).
    pub kind: Option<zos_contract::deployment::WorkloadKind>,
    /// As in [`WorkloadReport::state`].
    pub state: String,
    /// How often supervision restarted it.
    pub restarts: u32,
    /// Its address on its tenant network; `None` when it has none.
    pub address: Option<Ipv4Addr>,
    /// As in [`WorkloadReport::runtime`].
    pub runtime: Option<String>,
    /// The newest line of its log tail (what the console shows under it).
    pub output: Option<String>,
}
