//! A contract's placement: the farm it runs in, how many replicas, and the orchestrator
//! key the signers let choose the nodes (docs/contract-format.md, docs/grid.md).
//!
//! A contract carries either `nodes` (the owner names the nodes) or `placement` (the
//! orchestrator names them, by signed [`crate::assignment::Assignment`]s, only within
//! `farm`). Every signer signs the placement with the rest of the body.

use serde::{Deserialize, Serialize};

use crate::crypto::PublicKey;

/// The most replicas a placement may ask for.
pub const MAX_REPLICAS: u64 = 64;

/// The shortest `failover.after_s`: a node fences itself after `after_s / 2` without
/// renewing its liveness, and below 5 s an ordinary notary hiccup (an etcd leader
/// election, a slow disk) would stop healthy replicas.
pub const MIN_AFTER_S: u64 = 10;

/// The longest `failover.after_s`: one day. A replica that may stay lost longer than
/// that is what `mode: "stay"` says.
pub const MAX_AFTER_S: u64 = 86_400;

/// The longest farm id: a notary key segment (docs/notary.md).
pub const MAX_FARM_ID: usize = 128;

/// Where and how a contract runs when the orchestrator chooses its nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// The farm id (`farms/<farm>` in the notary): replicas run only on its nodes.
    pub farm: String,
    /// How many replicas, each on a distinct node: 1 to [`MAX_REPLICAS`].
    pub replicas: u64,
    /// The key whose signed assignments choose the nodes.
    pub orchestrator: PublicKey,
    /// What happens when a node running a replica is lost.
    pub failover: Failover,
    /// What a node needs to be given a replica; absent: nothing beyond the farm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constraints: Option<Constraints>,
}

/// What the orchestrator does when a replica's node is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    /// Move the replica to another node, or only report the loss.
    pub mode: FailoverMode,
    /// Seconds without liveness before the node counts as lost: [`MIN_AFTER_S`] to
    /// [`MAX_AFTER_S`]. The node itself stops `move` replicas at half of it.
    pub after_s: u64,
}

/// `move` or `stay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailoverMode {
    /// The replica is assigned to another node (at the next epoch), with fresh volumes.
    Move,
    /// Nothing moves; the loss is reported in the placement status.
    Stay,
}

impl FailoverMode {
    /// `"move"` or `"stay"`, as the document spells it.
    pub fn as_str(&self) -> &'static str {
        match self {
            FailoverMode::Move => "move",
            FailoverMode::Stay => "stay",
        }
    }
}

impl std::str::FromStr for FailoverMode {
    type Err = PlacementError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "move" => Ok(FailoverMode::Move),
            "stay" => Ok(FailoverMode::Stay),
            other => Err(PlacementError::Mode(other.to_string())),
        }
    }
}

/// Minimums a node must have free for a replica (from its heartbeat); each absent
/// member asks nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Constraints {
    /// Free SSD, GiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ssd_gib: Option<u64>,
    /// Free memory, MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_memory_mib: Option<u64>,
}

/// A placement rule broken; [`PlacementError::path`] names where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// The farm id is not a notary key segment.
    #[error("{0:?} is not a farm id (1-128 of [A-Za-z0-9._-], not starting with '.')")]
    Farm(String),
    /// `replicas` is 0 or above [`MAX_REPLICAS`].
    #[error("{0} replicas: a placement runs 1 to {MAX_REPLICAS}")]
    Replicas(u64),
    /// `failover.after_s` is outside [`MIN_AFTER_S`]..=[`MAX_AFTER_S`].
    #[error("{0} s: failover after {MIN_AFTER_S} to {MAX_AFTER_S} s")]
    AfterS(u64),
    /// A failover mode other than `move` and `stay` (from text; a document with one
    /// does not parse, at the same path).
    #[error("{0:?} is not a failover mode (move or stay)")]
    Mode(String),
}

impl PlacementError {
    /// The JSON path of the member at fault, in a contract document.
    pub fn path(&self) -> &'static str {
        match self {
            PlacementError::Farm(_) => "$.contract.placement.farm",
            PlacementError::Replicas(_) => "$.contract.placement.replicas",
            PlacementError::AfterS(_) => "$.contract.placement.failover.after_s",
            PlacementError::Mode(_) => "$.contract.placement.failover.mode",
        }
    }
}

/// Whether `farm` is a farm id (a notary key segment that is not hidden).
pub fn is_farm_id(farm: &str) -> bool {
    (1..=MAX_FARM_ID).contains(&farm.len())
        && !farm.starts_with('.')
        && farm
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Placement {
    /// Every rule serde cannot express, in document order.
    pub fn check(&self) -> Vec<PlacementError> {
        let mut out = Vec::new();
        if !is_farm_id(&self.farm) {
            out.push(PlacementError::Farm(self.farm.clone()));
        }
        if !(1..=MAX_REPLICAS).contains(&self.replicas) {
            out.push(PlacementError::Replicas(self.replicas));
        }
        if !(MIN_AFTER_S..=MAX_AFTER_S).contains(&self.failover.after_s) {
            out.push(PlacementError::AfterS(self.failover.after_s));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::SecretKey;

    fn placement() -> Placement {
        Placement {
            farm: "7".into(),
            replicas: 2,
            orchestrator: SecretKey::from_seed([6; 32]).public(),
            failover: Failover {
                mode: FailoverMode::Move,
                after_s: 60,
            },
            constraints: None,
        }
    }

    #[test]
    fn a_sane_placement_passes() {
        assert_eq!(placement().check(), vec![]);
        let mut p = placement();
        p.replicas = MAX_REPLICAS;
        p.failover.after_s = MIN_AFTER_S;
        assert_eq!(p.check(), vec![]);
        p.failover.after_s = MAX_AFTER_S;
        assert_eq!(p.check(), vec![]);
    }

    #[test]
    fn each_rule_refuses_with_its_path() {
        for (edit, want) in [
            (
                (|p: &mut Placement| p.replicas = 0) as fn(&mut Placement),
                PlacementError::Replicas(0),
            ),
            (|p| p.replicas = 65, PlacementError::Replicas(65)),
            (|p| p.failover.after_s = 9, PlacementError::AfterS(9)),
            (
                |p| p.failover.after_s = 86_401,
                PlacementError::AfterS(86_401),
            ),
            (
                |p| p.farm = String::new(),
                PlacementError::Farm(String::new()),
            ),
            (|p| p.farm = "..".into(), PlacementError::Farm("..".into())),
            (
                |p| p.farm = "a/b".into(),
                PlacementError::Farm("a/b".into()),
            ),
        ] {
            let mut p = placement();
            edit(&mut p);
            assert_eq!(p.check(), vec![want.clone()]);
        }
        assert_eq!(
            PlacementError::Replicas(0).path(),
            "$.contract.placement.replicas"
        );
        assert_eq!(
            PlacementError::AfterS(0).path(),
            "$.contract.placement.failover.after_s"
        );
    }

    #[test]
    fn modes_are_move_and_stay_only() {
        assert_eq!("move".parse::<FailoverMode>(), Ok(FailoverMode::Move));
        assert_eq!("stay".parse::<FailoverMode>(), Ok(FailoverMode::Stay));
        assert_eq!(
            "Move".parse::<FailoverMode>(),
            Err(PlacementError::Mode("Move".into()))
        );
    }

    #[test]
    fn absent_constraints_are_left_out() {
        let v = serde_json::to_value(placement()).unwrap();
        assert!(v.get("constraints").is_none(), "{v}");
        let mut p = placement();
        p.constraints = Some(Constraints {
            min_ssd_gib: Some(20),
            min_memory_mib: None,
        });
        let v = serde_json::to_value(p).unwrap();
        assert_eq!(v["constraints"], serde_json::json!({"min_ssd_gib": 20}));
    }
}
