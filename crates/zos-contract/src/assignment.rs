//! Signed assignments: the orchestrator's word that one replica of a placement contract
//! runs on one node, at an epoch (docs/grid.md).
//!
//! The orchestrator writes `nodes/<node>/assignments/<id>/<replica>`; a node runs a
//! placement contract only with an assignment that [`admit`] accepts. [`admit`] is pure:
//! the caller brings what it knows (the contract, verified in full, its own key, the
//! farm's nodes and the highest epoch it has seen for the replica) and gets a typed
//! refusal for every forged, misplaced or replayed assignment.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::contract::SignedContract;
use crate::crypto::{Digest, PublicKey, SecretKey, Signature};
use crate::document::{self, DocError};
use crate::limits::Limits;

/// One replica of one contract version on one node, at an epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// The contract id.
    pub contract: String,
    /// The contract version assigned.
    pub version: u64,
    /// The digest of that version's body (`sha256(jcs(contract))`).
    pub digest: Digest,
    /// Which replica: 0 to the placement's `replicas - 1`.
    pub replica: u64,
    /// The node that runs it.
    pub node: PublicKey,
    /// Starts at 1; each move of the replica to another node is the next epoch. A node
    /// never runs an epoch below one it has seen for the replica.
    pub epoch: u64,
    /// Unix seconds, the orchestrator's clock: for status and humans, never for order.
    pub issued_at: u64,
    /// The key that signs: must be the contract's `placement.orchestrator`.
    pub orchestrator: PublicKey,
}

/// An assignment with the orchestrator's signature over `sha256(jcs(assignment))`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedAssignment {
    /// The signed body.
    pub assignment: Assignment,
    /// `assignment.orchestrator`'s signature over `sha256(jcs(assignment))`.
    pub signature: Signature,
}

impl SignedAssignment {
    /// Signs `assignment` with `key` (whether `key` is the orchestrator the body names
    /// is checked by [`admit`], not here).
    pub fn sign(assignment: Assignment, key: &SecretKey) -> Result<Self, DocError> {
        let digest = Self::digest_of(&assignment)?;
        Ok(SignedAssignment {
            signature: key.sign(&digest),
            assignment,
        })
    }

    /// `sha256(jcs(assignment))`: what the signature signs.
    pub fn digest_of(assignment: &Assignment) -> Result<Digest, DocError> {
        document::digest(&serde_json::to_value(assignment).expect("an assignment serializes"))
    }

    /// Reads an assignment record's body from untrusted bytes, within `limits`. The
    /// signature is not checked here: see [`admit`].
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Self, DocError> {
        let value = document::parse_value(bytes, limits)?;
        Self::from_value(&value)
    }

    /// Reads an assignment record's body (`{"assignment": …, "signature": …}`).
    pub fn from_value(value: &Value) -> Result<Self, DocError> {
        document::object(value, "$")?;
        document::typed(value, "$")
    }

    /// The record body, as [`SignedAssignment::from_value`] reads it.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("an assignment serializes")
    }
}

/// An assignment a node may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admitted {
    /// The contract id.
    pub contract: String,
    /// The contract version.
    pub version: u64,
    /// The contract's digest.
    pub digest: Digest,
    /// The replica this node runs.
    pub replica: u64,
    /// The epoch: the node records it as the highest seen for the replica.
    pub epoch: u64,
}

/// Why a node does not run a placement contract on an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum AssignmentRefusal {
    /// The contract has `nodes`, not a placement: assignments do not apply.
    #[error("contract {contract:?} names its nodes: it takes no assignment")]
    NotPlacement {
        /// The contract id.
        contract: String,
    },
    /// A placement contract and no assignment for this node.
    #[error("no assignment names this node for placement contract {contract:?}")]
    Unassigned {
        /// The contract id.
        contract: String,
    },
    /// The signature does not verify under the key the assignment names.
    #[error("the assignment's signature does not verify under {orchestrator}")]
    BadSignature {
        /// The key the assignment names.
        orchestrator: PublicKey,
    },
    /// Signed (validly) by a key that is not the contract's orchestrator.
    #[error("signed by {signer}, but the contract's orchestrator is {orchestrator}")]
    NotOrchestrator {
        /// The key that signed.
        signer: PublicKey,
        /// The contract's `placement.orchestrator`.
        orchestrator: PublicKey,
    },
    /// The assignment is for another contract, version or body than the one verified.
    #[error(
        "the assignment is for {got_id:?} v{got_version} ({got_digest}), \
         not this contract's v{want_version} ({want_digest})"
    )]
    WrongContract {
        /// What the assignment names.
        got_id: String,
        /// What the assignment names.
        got_version: u64,
        /// What the assignment names.
        got_digest: Digest,
        /// The verified contract's version.
        want_version: u64,
        /// The verified contract's digest.
        want_digest: Digest,
    },
    /// The replica number is not below the placement's `replicas`.
    #[error("replica {replica} of a placement with {replicas} replicas")]
    ReplicaOutOfRange {
        /// The assignment's replica.
        replica: u64,
        /// The placement's `replicas`.
        replicas: u64,
    },
    /// The assignment names another node.
    #[error("the assignment names {assigned}, not this node {node}")]
    WrongNode {
        /// The node it names.
        assigned: PublicKey,
        /// This node.
        node: PublicKey,
    },
    /// The node is not (registered) in the placement's farm.
    #[error("{node} is not a node of farm {farm:?}")]
    OutsideFarm {
        /// The node assigned.
        node: PublicKey,
        /// The placement's farm.
        farm: String,
    },
    /// An epoch below one already seen for this replica (a replay), or epoch 0.
    #[error("epoch {epoch} of replica {replica} is below the highest seen, {seen}")]
    StaleEpoch {
        /// The replica.
        replica: u64,
        /// The assignment's epoch.
        epoch: u64,
        /// The highest epoch the node has seen for the replica (epochs start at 1).
        seen: u64,
    },
}

impl AssignmentRefusal {
    /// A stable snake_case code (the `code` field of the JSON form).
    pub fn code(&self) -> String {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m["code"].as_str().unwrap_or("unknown").to_string(),
            _ => "unknown".to_string(),
        }
    }
}

/// Whether `node` may run `contract` on `assignment`.
///
/// `contract` must be verified in full already ([`crate::verify()`] for no node in
/// particular); `farm_nodes` are the nodes registered in the placement's farm, as the
/// caller read them; `highest_seen` is the highest epoch this node has seen for the
/// replica (at any node, itself included; 0 when none). An assignment at exactly
/// `highest_seen` is the one the node already follows, read again.
pub fn admit(
    assignment: Option<&SignedAssignment>,
    contract: &SignedContract,
    node: &PublicKey,
    farm_nodes: &BTreeSet<PublicKey>,
    highest_seen: u64,
) -> Result<Admitted, AssignmentRefusal> {
    let c = &contract.contract;
    let Some(placement) = &contract.placement else {
        return Err(AssignmentRefusal::NotPlacement {
            contract: c.id.clone(),
        });
    };
    let Some(signed) = assignment else {
        return Err(AssignmentRefusal::Unassigned {
            contract: c.id.clone(),
        });
    };
    let a = &signed.assignment;
    let verifies = SignedAssignment::digest_of(a)
        .ok()
        .is_some_and(|d| a.orchestrator.verify(&d, &signed.signature).is_ok());
    if !verifies {
        return Err(AssignmentRefusal::BadSignature {
            orchestrator: a.orchestrator,
        });
    }
    if a.orchestrator != placement.orchestrator {
        return Err(AssignmentRefusal::NotOrchestrator {
            signer: a.orchestrator,
            orchestrator: placement.orchestrator,
        });
    }
    if a.contract != c.id || a.version != c.version || a.digest != contract.digest {
        return Err(AssignmentRefusal::WrongContract {
            got_id: a.contract.clone(),
            got_version: a.version,
            got_digest: a.digest,
            want_version: c.version,
            want_digest: contract.digest,
        });
    }
    if a.replica >= placement.replicas {
        return Err(AssignmentRefusal::ReplicaOutOfRange {
            replica: a.replica,
            replicas: placement.replicas,
        });
    }
    if a.node != *node {
        return Err(AssignmentRefusal::WrongNode {
            assigned: a.node,
            node: *node,
        });
    }
    if !farm_nodes.contains(node) {
        return Err(AssignmentRefusal::OutsideFarm {
            node: *node,
            farm: placement.farm.clone(),
        });
    }
    if a.epoch == 0 || a.epoch < highest_seen {
        return Err(AssignmentRefusal::StaleEpoch {
            replica: a.replica,
            epoch: a.epoch,
            seen: highest_seen,
        });
    }
    Ok(Admitted {
        contract: a.contract.clone(),
        version: a.version,
        digest: a.digest,
        replica: a.replica,
        epoch: a.epoch,
    })
}
