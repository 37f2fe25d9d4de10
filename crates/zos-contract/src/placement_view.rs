//! The part of the orchestrator's placement record (`grid/<farm>/placements/<id>`,
//! written by `zos_grid::record::PlacementRecord`) that nodes read: where each replica
//! runs and at which epoch. Pure data, shared by the engine (moves, fences) and the
//! mesh (which node holds which slot).

use serde::Deserialize;

use crate::PublicKey;

/// The part of the orchestrator's placement record a node reads (the record is
/// written by `zos_grid::record::PlacementRecord`; the node reads only where each
/// replica runs and at which epoch, and ignores the rest).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PlacementView {
    /// The contract id.
    pub contract: String,
    /// Where each replica is assigned.
    pub replicas: Vec<ReplicaView>,
}

/// One replica of a [`PlacementView`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReplicaView {
    /// The replica number.
    pub replica: u64,
    /// The node assigned; `None`: not placed.
    #[serde(default)]
    pub node: Option<PublicKey>,
    /// The epoch of that assignment.
    pub epoch: u64,
    /// A drain's make-before-break handover in progress: the node that takes the
    /// replica over and its epoch there (the entry above stays authoritative until it
    /// reports ok).
    #[serde(default)]
    pub handover: Option<HandoverView>,
}

/// The handover of a [`ReplicaView`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct HandoverView {
    /// The node taking the replica over.
    pub node: PublicKey,
    /// Its epoch there.
    pub epoch: u64,
}
