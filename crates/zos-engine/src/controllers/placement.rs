//! Placement replicas on this node after admission (docs/grid.md, "The node"): when a
//! replica moved away, when the node fences it, and when it may run again.
//!
//! - Inputs: the replica the journal holds ([`Held`]), the orchestrator's placement
//!   record (`grid/<farm>/placements/<id>`, read with [`read_placement`]), and the
//!   liveness lease's last renewal on `CLOCK_BOOTTIME`.
//! - Decisions: [`judge`] (moved elsewhere, still here, or not known) and
//!   [`fence_due`]. The engine carries them out: a move removes the copy and its
//!   volumes and remembers the epoch; a fence stops the workloads and keeps the volumes;
//!   a fenced replica starts again only on a placement record that still names this
//!   node at its epoch.

use std::time::Duration;

use serde_json::Value;
use zos_contract::PublicKey;
use zos_notary::Record;

use crate::journal::Held;

/// The placement record as a node reads it (moved to `zos_contract::placement_view`,
/// which zos-mesh shares without depending on the engine).
pub use zos_contract::placement_view::{HandoverView, PlacementView, ReplicaView};

/// `record` read as the placement record of contract `id`, if the contract's
/// orchestrator (in `held`) signed it; anything else is `None` (logged): the record
/// is only evidence when it is the orchestrator's word.
pub fn read_placement(record: &Record, id: &str, held: &Held) -> Option<PlacementView> {
    if record.author != held.placement.orchestrator {
        tracing::warn!(contract = %id, author = %record.author, "placement record not signed by the contract's orchestrator; ignored");
        return None;
    }
    match serde_json::from_value::<PlacementView>(record.body.clone()) {
        Ok(view) if view.contract == id => Some(view),
        Ok(view) => {
            tracing::warn!(contract = %id, names = %view.contract, "placement record of another contract; ignored");
            None
        }
        Err(e) => {
            tracing::warn!(contract = %id, error = %e, "placement record unreadable; ignored");
            None
        }
    }
}

/// What the orchestrator's record says of the replica this node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Assigned to another node at a higher epoch: this copy must go.
    Moved {
        /// The node it moved to.
        to: PublicKey,
        /// Its epoch there.
        epoch: u64,
    },
    /// Still this node's, at the epoch it holds.
    Here,
    /// Neither (not placed, a higher epoch on this node whose assignment has not
    /// arrived, an older record): nothing to conclude yet.
    Unknown,
}

/// [`Verdict`] of `view` for `held` on node `me`.
pub fn judge(view: &PlacementView, held: &Held, me: &PublicKey) -> Verdict {
    let Some(r) = view.replicas.iter().find(|r| r.replica == held.replica) else {
        return Verdict::Unknown;
    };
    match r.node {
        Some(node) if node != *me && r.epoch > held.epoch => Verdict::Moved {
            to: node,
            epoch: r.epoch,
        },
        Some(node) if node == *me && r.epoch == held.epoch => Verdict::Here,
        _ => Verdict::Unknown,
    }
}

/// Whether `held` must be fenced now: a `move` replica whose node has not renewed its
/// liveness (a renewal counts from when it was sent, `renewed`, on `CLOCK_BOOTTIME`)
/// for half the contract's `after_s`. Never renewed counts as lapsed.
pub fn fence_due(held: &Held, renewed: Option<Duration>, now: Duration) -> bool {
    let half = Duration::from_millis(held.placement.failover.after_s * 500);
    held.fences() && renewed.is_none_or(|r| now.saturating_sub(r) >= half)
}

/// What the node knows of one fenced replica.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Fence {
    /// When the last renewal before the lapse was sent (`CLOCK_BOOTTIME`); `None`:
    /// unknown (fenced when zosd started).
    pub lapse_from: Option<Duration>,
    /// When a check first found the liveness renewed after the fence, and the placement
    /// record body it read then; set only after a long lapse (see [`release`]).
    pub baseline: Option<(Duration, Value)>,
}

/// What [`release`] decides for a fenced replica.
#[derive(Debug, Clone, PartialEq)]
pub enum Release {
    /// Stay fenced for now.
    Wait,
    /// Run it again.
    Start,
    /// It runs elsewhere at a higher epoch: remove this copy.
    Moved {
        /// The node it moved to.
        to: PublicKey,
        /// Its epoch there.
        epoch: u64,
    },
}

/// Whether a fenced replica (`held`, on node `me`) may run again, given the liveness's
/// last renewal `renewed`, the boottime `now` and the placement record just read
/// (`record`: its view and body; `None`: none or unreadable).
///
/// It needs a renewal after the fence and a record naming this node at its epoch. That
/// record is enough after a **short** lapse (less than 99 % of `after_s` from the last
/// renewal before it to now): the orchestrator moves only after `after_s` of absence,
/// so no move can be under way. After a **long** lapse (or an unknown one, after a
/// restart), an orchestrator round that saw the node absent may be about to move the
/// replica: the node then waits for a record written after its renewal (one that
/// differs from the one it read first after it; the orchestrator rewrites the record
/// when it sees the replica's status change, and its compare-and-swap orders that
/// after any move decided earlier), or, if none comes, for `2 * after_s` (a bound on
/// one orchestrator round).
pub fn release(
    fence: &mut Fence,
    held: &Held,
    record: Option<(&PlacementView, &Value)>,
    renewed: Option<Duration>,
    now: Duration,
    me: &PublicKey,
) -> Release {
    let renewed_since = match (renewed, fence.lapse_from) {
        (Some(r), Some(from)) => r > from,
        (Some(_), None) => true,
        (None, _) => false,
    };
    let Some((view, body)) = record.filter(|_| renewed_since) else {
        return Release::Wait;
    };
    match judge(view, held, me) {
        Verdict::Moved { to, epoch } => return Release::Moved { to, epoch },
        Verdict::Unknown => return Release::Wait,
        Verdict::Here => {}
    }
    let after = Duration::from_secs(held.placement.failover.after_s);
    let short = fence
        .lapse_from
        .is_some_and(|from| now.saturating_sub(from) < after * 99 / 100);
    if short {
        return Release::Start;
    }
    match &fence.baseline {
        None => {
            fence.baseline = Some((now, body.clone()));
            Release::Wait
        }
        Some((_, first)) if first != body => Release::Start,
        Some((at, _)) if now.saturating_sub(*at) >= after * 2 => Release::Start,
        Some(_) => Release::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use zos_contract::{Failover, FailoverMode, Placement, SecretKey};
    use zos_notary::NotaryKey;

    fn held(mode: FailoverMode, epoch: u64) -> Held {
        Held {
            replica: 1,
            epoch,
            placement: Placement {
                farm: "f".into(),
                replicas: 2,
                orchestrator: SecretKey::from_seed([2; 32]).public(),
                failover: Failover { mode, after_s: 10 },
                constraints: None,
            },
        }
    }

    fn view(node: PublicKey, epoch: u64) -> PlacementView {
        PlacementView {
            contract: "web".into(),
            replicas: vec![
                ReplicaView {
                    replica: 0,
                    node: Some(SecretKey::from_seed([9; 32]).public()),
                    epoch: 7,
                    handover: None,
                },
                ReplicaView {
                    replica: 1,
                    node: Some(node),
                    epoch,
                    handover: None,
                },
            ],
        }
    }

    #[test]
    fn a_higher_epoch_elsewhere_is_a_move_and_nothing_else_is() {
        let me = SecretKey::from_seed([3; 32]).public();
        let other = SecretKey::from_seed([4; 32]).public();
        let h = held(FailoverMode::Move, 2);
        assert_eq!(
            judge(&view(other, 3), &h, &me),
            Verdict::Moved {
                to: other,
                epoch: 3
            }
        );
        assert_eq!(judge(&view(me, 2), &h, &me), Verdict::Here);
        // Another replica's higher epoch says nothing about this one.
        assert_eq!(judge(&view(other, 2), &h, &me), Verdict::Unknown);
        assert_eq!(judge(&view(other, 1), &h, &me), Verdict::Unknown);
        assert_eq!(judge(&view(me, 3), &h, &me), Verdict::Unknown);
    }

    #[test]
    fn only_the_orchestrators_record_of_this_contract_is_read() {
        let h = held(FailoverMode::Move, 1);
        let body = json!({"contract": "web", "version": 1, "replicas": [], "moves": []});
        let key = NotaryKey::placement("f", "web").unwrap();
        let by = |seed: u8| Record::sign(&key, body.clone(), &SecretKey::from_seed([seed; 32]));
        assert!(read_placement(&by(2).unwrap(), "web", &h).is_some());
        assert!(read_placement(&by(5).unwrap(), "web", &h).is_none());
        assert!(read_placement(&by(2).unwrap(), "db", &h).is_none());
    }

    #[test]
    fn a_fenced_replica_runs_again_at_once_after_a_short_lapse_and_on_a_newer_record_after_a_long_one(
    ) {
        let s = Duration::from_secs;
        let me = SecretKey::from_seed([3; 32]).public();
        let other = SecretKey::from_seed([4; 32]).public();
        let h = held(FailoverMode::Move, 2);
        let here = view(me, 2);
        let (a, b) = (json!({"n": 1}), json!({"n": 2}));
        // No renewal since the fence, or no record: wait.
        let mut f = Fence {
            lapse_from: Some(s(100)),
            baseline: None,
        };
        assert_eq!(
            release(&mut f, &h, Some((&here, &a)), Some(s(100)), s(106), &me),
            Release::Wait
        );
        assert_eq!(
            release(&mut f, &h, None, Some(s(106)), s(106), &me),
            Release::Wait
        );
        // Short lapse (6 s of after_s = 10): the record naming this node is enough.
        assert_eq!(
            release(&mut f, &h, Some((&here, &a)), Some(s(106)), s(106), &me),
            Release::Start
        );
        // Moved: whatever the lapse.
        let moved = view(other, 3);
        assert_eq!(
            release(&mut f, &h, Some((&moved, &a)), Some(s(106)), s(106), &me),
            Release::Moved {
                to: other,
                epoch: 3
            }
        );
        // Long lapse (12 s): the first record is only a baseline; a newer one, or
        // 2 * after_s without one, releases it.
        let mut f = Fence {
            lapse_from: Some(s(100)),
            baseline: None,
        };
        assert_eq!(
            release(&mut f, &h, Some((&here, &a)), Some(s(112)), s(112), &me),
            Release::Wait
        );
        assert_eq!(
            release(&mut f, &h, Some((&here, &a)), Some(s(113)), s(113), &me),
            Release::Wait
        );
        assert_eq!(
            release(&mut f, &h, Some((&here, &b)), Some(s(114)), s(114), &me),
            Release::Start
        );
        let mut f = Fence::default();
        assert_eq!(
            release(&mut f, &h, Some((&here, &a)), Some(s(5)), s(5), &me),
            Release::Wait
        );
        assert_eq!(
            release(&mut f, &h, Some((&here, &a)), Some(s(24)), s(24), &me),
            Release::Wait
        );
        assert_eq!(
            release(&mut f, &h, Some((&here, &a)), Some(s(25)), s(25), &me),
            Release::Start
        );
    }

    #[test]
    fn a_move_replica_fences_at_half_after_s_since_the_last_renewal_sent() {
        let s = Duration::from_secs;
        let h = held(FailoverMode::Move, 1);
        assert!(!fence_due(&h, Some(s(100)), s(104)));
        assert!(fence_due(&h, Some(s(100)), s(105)));
        assert!(fence_due(&h, None, s(1)));
        assert!(!fence_due(&held(FailoverMode::Stay, 1), None, s(1000)));
    }
}
