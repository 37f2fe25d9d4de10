//! The placement record at `grid/<farm>/placements/<id>`: the orchestrator's state of one
//! placement contract, written only by compare-and-swap (docs/grid.md, "Writing a
//! placement or a move"). Where each replica runs and at which epoch, what the bot last
//! saw of it, the nodes that refused it, and the last moves. `zos contract status`
//! shows it; the node reads it to learn of a newer epoch elsewhere.

use serde::{Deserialize, Serialize};
use zos_contract::{Digest, PublicKey};

use crate::plan::Reason;

/// Moves kept in the record: the newest ones.
pub const MAX_MOVES: usize = 64;

/// The orchestrator's state of one placement contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementRecord {
    /// The contract id.
    pub contract: String,
    /// The contract version placed.
    pub version: u64,
    /// That version's digest.
    pub digest: Digest,
    /// One entry per replica, in order.
    pub replicas: Vec<ReplicaRecord>,
    /// The newest [`MAX_MOVES`] assignments, oldest first.
    pub moves: Vec<Move>,
}

/// What the orchestrator says about one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaRecord {
    /// 0 to `replicas - 1`.
    pub replica: u64,
    /// The node assigned; `None`: never placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<PublicKey>,
    /// The assignment's epoch; 0: never placed.
    pub epoch: u64,
    /// Where it stands.
    pub state: ReplicaState,
    /// For people: why it is in that state (a refusal, why it cannot be placed).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The nodes that refused it, with their reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused_on: Vec<Refusal>,
}

impl ReplicaRecord {
    /// Replica `replica`, never placed.
    fn unplaced(replica: u64) -> ReplicaRecord {
        ReplicaRecord {
            replica,
            node: None,
            epoch: 0,
            state: ReplicaState::Unplaceable,
            detail: "not placed yet".into(),
            refused_on: Vec::new(),
        }
    }
}

/// A replica's state, as the orchestrator sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Assigned; its node has not reported it running yet.
    Assigned,
    /// Its node reports it `ok`.
    Running,
    /// Its node is lost and the contract says `stay`.
    Lost,
    /// No node can take it now.
    Unplaceable,
    /// Refused on too many nodes: no more attempts until a new version.
    GivenUp,
}

/// A node's refusal of a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refusal {
    /// The node.
    pub node: PublicKey,
    /// Its reason.
    pub reason: String,
}

/// One assignment of a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Move {
    /// The replica.
    pub replica: u64,
    /// The node it left; `None` for a first placement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PublicKey>,
    /// The node it went to.
    pub to: PublicKey,
    /// The new epoch.
    pub epoch: u64,
    /// Why.
    pub reason: Reason,
    /// Unix seconds, the orchestrator's clock (for people).
    pub at: u64,
}

impl PlacementRecord {
    /// A record of a contract version with every replica never placed.
    pub fn new(contract: &str, version: u64, digest: Digest, replicas: u64) -> PlacementRecord {
        PlacementRecord {
            contract: contract.to_string(),
            version,
            digest,
            replicas: (0..replicas).map(ReplicaRecord::unplaced).collect(),
            moves: Vec::new(),
        }
    }

    /// The record of replica `replica`, created (never placed) if the record has fewer.
    pub fn replica_mut(&mut self, replica: u64) -> &mut ReplicaRecord {
        let i = match self.replicas.binary_search_by_key(&replica, |r| r.replica) {
            Ok(i) => i,
            Err(i) => {
                self.replicas.insert(i, ReplicaRecord::unplaced(replica));
                i
            }
        };
        &mut self.replicas[i]
    }

    /// Records a move, keeping the newest [`MAX_MOVES`].
    pub fn push_move(&mut self, m: Move) {
        self.moves.push(m);
        if self.moves.len() > MAX_MOVES {
            let extra = self.moves.len() - MAX_MOVES;
            self.moves.drain(..extra);
        }
    }
}
