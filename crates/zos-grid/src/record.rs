//! The placement record at `grid/<farm>/placements/<id>`: the orchestrator's state of one
//! placement contract, written only by compare-and-swap (docs/grid.md, "Writing a
//! placement or a move"). Where each replica runs and at which epoch, what the bot last
//! saw of it, the nodes that refused it, and the last moves. `zos contract status`
//! shows it; the node reads it to learn of a newer epoch elsewhere.
//!
//! Also the farmer's drain record at `grid/<farm>/drains/<node>` ([`Drain`]), which the
//! notary stores whoever signed it: [`Drain::from_record`] accepts it only from the
//! farm record's farmer.

use serde::{Deserialize, Serialize};
use zos_contract::{Digest, PublicKey, SecretKey};
use zos_notary::{KeyKind, NotaryKey, Record};
use zos_registry::Farm;

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
    /// A make-before-break move in progress (its node is drained): the replica stays
    /// at `node` and `epoch` above, the authoritative entry, while the handover's node
    /// starts it at the handover's epoch; once that node reports it `ok` there, the
    /// entry becomes the handover's node and epoch (a move with reason `drain`).
    /// Nodes read only `node` and `epoch`: the handover's node runs on its assignment,
    /// and the drained node removes its copy when the entry names another node at a
    /// higher epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handover: Option<Handover>,
}

/// A replica's handover to another node (see [`ReplicaRecord::handover`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handover {
    /// The node taking it over.
    pub node: PublicKey,
    /// Its assignment's epoch there: above the replica's epoch and any earlier
    /// handover's.
    pub epoch: u64,
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
            handover: None,
        }
    }

    /// For people (`zos contract status`): the handover in progress, if any, e.g.
    /// `handover to <node> at epoch 3 (make-before-break: the replica stays on <old>
    /// until <node> reports it ok)`.
    pub fn handover_text(&self) -> Option<String> {
        let h = self.handover?;
        let on = self.node.map_or("-".to_string(), |n| n.to_string());
        let refused = self
            .refused_on
            .iter()
            .find(|r| r.node == h.node)
            .map(|r| format!("; refused there: {}", r.reason))
            .unwrap_or_default();
        Some(format!(
            "handover to {} at epoch {} (make-before-break: the replica stays on {on} until {} reports it ok{refused})",
            h.node, h.epoch, h.node
        ))
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

/// The body of `grid/<farm>/drains/<node>`, signed by the farm's farmer: `{"drained":
/// true}` drains the node (the orchestrator moves its replicas away, make-before-break,
/// and places nothing new there), `{"drained": false}` undrains it (eligible again; its
/// old replicas do not move back). Undrain is a signed record rather than a deletion so
/// that it is the farmer's act too, and so that a reader holding a later undrain
/// ignores an older drain replayed at the key (it compares `signed_at`, the farmer's own
/// clock against itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    /// Drained (true) or undrained (false).
    pub drained: bool,
}

/// Why a drain record is not the farmer's word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    /// Not at a `grid/<farm>/drains/<node>` key.
    #[error("{0} is not a drain key")]
    NotADrain(String),
    /// The farm record given is another farm's.
    #[error("drain {key} is for farm {farm:?}, the farm record given is {given:?}")]
    OtherFarm {
        /// The drain key.
        key: String,
        /// Its farm.
        farm: String,
        /// The farm record's id.
        given: String,
    },
    /// Signed by someone other than the farm's farmer (a tenant pulling replicas off a
    /// node, say).
    #[error("drain {key} is signed by {author}, not by the farmer {farmer} of farm {farm:?}")]
    NotTheFarmer {
        /// The drain key.
        key: String,
        /// Who signed it.
        author: PublicKey,
        /// The farm's farmer.
        farmer: PublicKey,
        /// The farm.
        farm: String,
    },
    /// Its body is not `{"drained": true|false}`.
    #[error("drain {key}: {error}")]
    Malformed {
        /// The drain key.
        key: String,
        /// What is wrong.
        error: String,
    },
}

impl Drain {
    /// The farmer's drain (or undrain) of `node` in `farm`, signed by `farmer`; refused
    /// when `farmer` is not the farm's farmer (nobody would accept the record).
    pub fn sign(
        self,
        farm: &Farm,
        node: &PublicKey,
        farmer: &SecretKey,
    ) -> Result<Record, DrainError> {
        let key =
            NotaryKey::drain(&farm.id, node).map_err(|e| DrainError::NotADrain(e.to_string()))?;
        if farmer.public() != farm.farmer {
            return Err(DrainError::NotTheFarmer {
                key: key.to_string(),
                author: farmer.public(),
                farmer: farm.farmer,
                farm: farm.id.clone(),
            });
        }
        let body = serde_json::to_value(self).expect("a drain serializes");
        Record::sign(&key, body, farmer).map_err(|e| DrainError::Malformed {
            key: key.to_string(),
            error: e.to_string(),
        })
    }

    /// `record` (verified by the notary that served it) read as the farmer's drain of a
    /// node of `farm` (a farm record read with [`Farm::from_record`]): the node and the
    /// drain, or why it is not the farmer's word.
    pub fn from_record(record: &Record, farm: &Farm) -> Result<(PublicKey, Drain), DrainError> {
        let kind = record.notary_key().map(|k| k.kind());
        let Ok(KeyKind::Drain { farm_id, node }) = kind else {
            return Err(DrainError::NotADrain(record.key.clone()));
        };
        if farm_id != farm.id {
            return Err(DrainError::OtherFarm {
                key: record.key.clone(),
                farm: farm_id,
                given: farm.id.clone(),
            });
        }
        if record.author != farm.farmer {
            return Err(DrainError::NotTheFarmer {
                key: record.key.clone(),
                author: record.author,
                farmer: farm.farmer,
                farm: farm_id,
            });
        }
        let drain =
            serde_json::from_value(record.body.clone()).map_err(|e| DrainError::Malformed {
                key: record.key.clone(),
                error: e.to_string(),
            })?;
        Ok((node, drain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sk(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    #[test]
    fn a_drain_is_the_farmer_s_word_only() {
        let farmer = sk(1);
        let farm = Farm::new("f1", "rack", farmer.public(), 1).unwrap();
        let node = sk(5).public();
        let r = Drain { drained: true }.sign(&farm, &node, &farmer).unwrap();
        assert_eq!(
            Drain::from_record(&r, &farm).unwrap(),
            (node, Drain { drained: true })
        );
        // A tenant's drain: signed fine, stored by the notary, refused by readers.
        let key = NotaryKey::drain("f1", &node).unwrap();
        let forged = Record::sign(&key, json!({"drained": true}), &sk(9)).unwrap();
        forged.verify().unwrap();
        assert!(matches!(
            Drain::from_record(&forged, &farm),
            Err(DrainError::NotTheFarmer { author, .. }) if author == sk(9).public()
        ));
        // Nor can the tenant sign one through this API.
        assert!(matches!(
            Drain { drained: true }.sign(&farm, &node, &sk(9)),
            Err(DrainError::NotTheFarmer { .. })
        ));
        // Another farm's drain, and a body with more in it.
        let other = Farm::new("f2", "rack", farmer.public(), 1).unwrap();
        assert!(matches!(
            Drain::from_record(&r, &other),
            Err(DrainError::OtherFarm { .. })
        ));
        let odd = Record::sign(&key, json!({"drained": true, "all": true}), &farmer).unwrap();
        assert!(matches!(
            Drain::from_record(&odd, &farm),
            Err(DrainError::Malformed { .. })
        ));
    }

    #[test]
    fn a_record_without_a_handover_reads_as_before_and_one_with_it_shows_it() {
        let a = sk(5).public();
        let b = sk(6).public();
        let old = json!({"replica": 0, "node": a, "epoch": 2, "state": "running"});
        let r: ReplicaRecord = serde_json::from_value(old.clone()).unwrap();
        assert_eq!(r.handover, None);
        assert_eq!(r.handover_text(), None);
        assert_eq!(serde_json::to_value(&r).unwrap(), old, "nothing added");
        let mut r = r;
        r.handover = Some(Handover { node: b, epoch: 3 });
        let text = r.handover_text().unwrap();
        assert!(
            text.contains(&b.to_string()) && text.contains("epoch 3"),
            "{text}"
        );
        let back: ReplicaRecord =
            serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }
}
