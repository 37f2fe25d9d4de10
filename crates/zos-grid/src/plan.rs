//! The placement plan of one contract: from what the orchestrator reads (the contract's
//! placement, its replicas' assignments and reports, the farm's nodes), the steps that
//! bring it to where it should be. Pure and deterministic: the same inputs give the same
//! steps, so two orchestrators (a leader and one taking over) agree, and a step that the
//! notary refuses (a compare-and-swap lost to a newer write) is planned again from what
//! is then read.
//!
//! The rules (docs/grid.md):
//! - A node is **present** while its liveness record (`nodes/<n>/alive`) is; it is
//!   **lost** once that record has been absent for more than `failover.after_s`, counted
//!   on the orchestrator's clock from the round that first saw it absent. A node absent
//!   for less keeps its replicas, but gets no new one.
//! - A replica with no assignment goes to a present, undrained node of the farm that has
//!   room for it, meets the constraints, runs no other replica of the contract and has
//!   not refused this one; the one with the most free memory, then SSD, then the lowest
//!   key (so that replicas spread and ties break the same way everywhere).
//! - A replica whose node is lost moves (the next epoch) with `move`, and is reported
//!   lost with `stay`.
//! - A replica refused by its node moves to another node (the next epoch); refused by
//!   [`MAX_REFUSALS`] nodes for the same reason, it is given up: a fault that follows
//!   the contract (a bad flist) must not bounce around the farm forever, while nodes
//!   refusing for reasons of their own (full, a failed disk) are only avoided.
//! - A replica that cannot be placed now keeps its assignment, if any, and is reported.
//! - A replica on a **drained** node is handed over, make-before-break: it stays where
//!   it is while another node (chosen as above) starts it at the next epoch; once that
//!   node reports it `ok`, the replica is moved there (reason `drain`) and the drained
//!   node stops its copy. A handover node that refuses it, or is lost, is replaced by
//!   another at a still higher epoch (the refusals bounded as above); a drained node that
//!   is lost meanwhile fails over as any, to the handover node if that one is live. A
//!   handover is never dropped otherwise (not even by an undrain: it completes), so
//!   every node that was ever given the replica sees a higher epoch elsewhere in the end.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use zos_contract::placement::{FailoverMode, Placement};
use zos_contract::PublicKey;
use zos_registry::NodeResources;

/// Nodes that may refuse one replica for the same reason before the orchestrator gives
/// it up.
pub const MAX_REFUSALS: usize = 3;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

/// One node of the contract's farm, as the orchestrator last read it.
#[derive(Debug, Clone)]
pub struct NodeView {
    /// The node's key.
    pub key: PublicKey,
    /// Seconds on the orchestrator's clock up to which the node counts as seen: the
    /// current round while its liveness record is present; once absent, the round that
    /// first saw it absent (for an orchestrator that starts, its start); 0: never.
    pub last_seen: u64,
    /// Its liveness record is present now: only such a node gets a new replica.
    pub alive: bool,
    /// What is free on it: its registered capacity less what its contracts reserve.
    pub free: NodeResources,
    /// Drained by the farmer: it gets nothing new.
    pub drained: bool,
}

/// What a replica's node says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// Nothing yet, or still provisioning.
    Pending,
    /// Running.
    Ok,
    /// Refused or failed for good on that node, with the reason it published.
    Refused(String),
}

/// One replica of the contract.
#[derive(Debug, Clone)]
pub struct ReplicaView {
    /// 0 to `replicas - 1`.
    pub replica: u64,
    /// The current assignment: the node and the epoch; `None`: never placed.
    pub assigned: Option<(PublicKey, u64)>,
    /// The assigned node's report for this contract.
    pub report: Report,
    /// The nodes that refused this replica before, with their reasons (from the
    /// orchestrator's status record).
    pub refused_on: Vec<(PublicKey, String)>,
    /// A handover in progress (its node is drained): the node taking it over and the
    /// epoch of its assignment there.
    pub handover: Option<(PublicKey, u64)>,
    /// The handover node's report of the replica at that epoch.
    pub handover_report: Report,
}

/// A placement contract as the orchestrator sees it.
#[derive(Debug, Clone)]
pub struct ContractView<'a> {
    /// The contract id.
    pub id: &'a str,
    /// Its placement.
    pub placement: &'a Placement,
    /// What one replica reserves on its node.
    pub needs: NodeResources,
    /// One entry per replica `0..placement.replicas`; a replica missing here is treated
    /// as never placed.
    pub replicas: Vec<ReplicaView>,
}

/// Why a replica is (re)assigned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum Reason {
    /// Its first placement.
    Initial,
    /// Its node's liveness record was absent for `silent_s` seconds (over `after_s`).
    NodeLost {
        /// The lost node.
        node: PublicKey,
        /// Seconds its liveness record has been absent, on the orchestrator's clock.
        silent_s: u64,
    },
    /// Its node refused it.
    Refused {
        /// The node that refused.
        node: PublicKey,
        /// The reason it published.
        reason: String,
    },
    /// Its node was drained by the farmer: handed over, make-before-break.
    Drain {
        /// The drained node.
        node: PublicKey,
    },
}

/// One thing to do, or to report, for one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// Write this assignment (compare-and-swap against the one read).
    Assign {
        /// The replica.
        replica: u64,
        /// The node that runs it from now on.
        node: PublicKey,
        /// Its epoch: 1, or one more than the assignment it replaces.
        epoch: u64,
        /// Why.
        reason: Reason,
    },
    /// The node is lost and the contract says `stay`: nothing moves, the loss is reported.
    Lost {
        /// The replica.
        replica: u64,
        /// The lost node, which keeps the assignment.
        node: PublicKey,
        /// Seconds its liveness record has been absent, on the orchestrator's clock.
        silent_s: u64,
    },
    /// No node can take the replica now; tried again at the next change.
    Unplaceable {
        /// The replica.
        replica: u64,
        /// Why no node can take it: the farm's nodes counted by what rules each out.
        why: String,
    },
    /// Its node is drained: start it on `node` at `epoch` while it keeps running where
    /// it is (the placement record keeps its node and epoch and gains the handover).
    Handover {
        /// The replica.
        replica: u64,
        /// The node taking it over.
        node: PublicKey,
        /// The epoch of its assignment there.
        epoch: u64,
    },
    /// The handover node reports it `ok` (or the drained node is lost while the
    /// handover node is live): the replica now runs there, at the handover's epoch; the
    /// old node's assignment goes (its node stops on the higher epoch elsewhere).
    Handed {
        /// The replica.
        replica: u64,
        /// The node it leaves.
        from: PublicKey,
        /// The handover node.
        to: PublicKey,
        /// The handover's epoch.
        epoch: u64,
        /// `drain`, or `node_lost` when the drained node was lost meanwhile.
        reason: Reason,
    },
    /// Its node is drained, but no node can take it over now (or refusals gave it up):
    /// it keeps running where it is; tried again next round.
    DrainBlocked {
        /// The replica.
        replica: u64,
        /// Why.
        why: String,
    },
    /// Refused by [`MAX_REFUSALS`] nodes for the same reason: no more attempts.
    GivenUp {
        /// The replica.
        replica: u64,
        /// How many nodes refused it, and the last reason.
        reason: String,
    },
}

/// The steps for `contract` at `now` (seconds on the orchestrator's clock, as
/// [`NodeView::last_seen`]) over the farm's `nodes`.
pub fn plan(contract: &ContractView<'_>, nodes: &[NodeView], now: u64) -> Vec<Step> {
    let p = contract.placement;
    let after = p.failover.after_s;
    let live = |n: &NodeView| n.last_seen > 0 && now.saturating_sub(n.last_seen) <= after;
    let is_live = |key: &PublicKey| nodes.iter().any(|n| n.key == *key && live(n));
    let drained = |key: &PublicKey| nodes.iter().any(|n| n.key == *key && n.drained);
    let silent = |key: &PublicKey| {
        nodes
            .iter()
            .find(|n| n.key == *key)
            .map_or(now, |n| now.saturating_sub(n.last_seen))
    };
    // Nodes running a replica that stays where it is, or taking one over: no second
    // replica goes there.
    let mut hosting: BTreeSet<PublicKey> = BTreeSet::new();
    for r in &contract.replicas {
        if let Some((node, _)) = r.assigned {
            let lost = !is_live(&node);
            let moving = matches!(r.report, Report::Refused(_))
                || (lost && p.failover.mode == FailoverMode::Move);
            if !moving {
                hosting.insert(node);
            }
        }
        if let Some((node, _)) = r.handover {
            hosting.insert(node);
        }
    }

    let mut steps = Vec::new();
    for replica in 0..p.replicas {
        let view = contract.replicas.iter().find(|r| r.replica == replica);
        let mut refusals: Vec<(PublicKey, String)> =
            view.map(|v| v.refused_on.clone()).unwrap_or_default();
        let mut excluded: BTreeSet<PublicKey> = refusals.iter().map(|(k, _)| *k).collect();
        let mut refuse = |node: PublicKey, why: &String, refusals: &mut Vec<_>| {
            if !excluded.contains(&node) {
                refusals.push((node, why.clone()));
            }
            excluded.insert(node);
        };
        let mut handover_to = None;
        let (epoch, reason) = match view.and_then(|v| v.assigned.map(|a| (v, a))) {
            None => (1, Reason::Initial),
            Some((v, (node, epoch))) => {
                // Any new assignment is above every epoch given out for the replica.
                let next = epoch.max(v.handover.map_or(0, |(_, e)| e)) + 1;
                // The handover node's state: running it, refused it, lost, or on its way.
                let handover = v.handover.map(|(to, at)| {
                    let usable = is_live(&to) && !matches!(v.handover_report, Report::Refused(_));
                    (to, at, usable)
                });
                if let Some((to, _, _)) = handover {
                    if let Report::Refused(why) = &v.handover_report {
                        refuse(to, why, &mut refusals);
                    }
                }
                let node_live = is_live(&node);
                match (&v.report, handover) {
                    // The new copy runs: the replica moves there.
                    (_, Some((to, at, true)))
                        if v.handover_report == Report::Ok
                            || (!node_live && p.failover.mode == FailoverMode::Move) =>
                    {
                        let reason = if node_live {
                            Reason::Drain { node }
                        } else {
                            Reason::NodeLost {
                                node,
                                silent_s: silent(&node),
                            }
                        };
                        steps.push(Step::Handed {
                            replica,
                            from: node,
                            to,
                            epoch: at,
                            reason,
                        });
                        continue;
                    }
                    (Report::Refused(why), _) => {
                        refuse(node, why, &mut refusals);
                        let reason = Reason::Refused {
                            node,
                            reason: why.clone(),
                        };
                        (next, reason)
                    }
                    // A handover on its way: wait for it.
                    (_, Some((_, _, true))) if node_live => continue,
                    (_, handover) if node_live => {
                        // Not drained (any more): it stays, with a handover that
                        // failed, if any, kept as it is (its epoch stays counted).
                        if !drained(&node) {
                            continue;
                        }
                        if let Some((to, _, _)) = handover {
                            excluded.insert(to);
                        }
                        excluded.insert(node);
                        handover_to = Some(node);
                        (next, Reason::Drain { node })
                    }
                    _ if p.failover.mode == FailoverMode::Stay => {
                        steps.push(Step::Lost {
                            replica,
                            node,
                            silent_s: silent(&node),
                        });
                        continue;
                    }
                    (_, handover) => {
                        if let Some((to, _, _)) = handover {
                            excluded.insert(to);
                        }
                        excluded.insert(node);
                        let reason = Reason::NodeLost {
                            node,
                            silent_s: silent(&node),
                        };
                        (next, reason)
                    }
                }
            }
        };
        // The same reason from several nodes is a fault of the contract's; different
        // ones (a full node, then a bad disk) are the nodes' and only exclude them.
        if let Some((reason, n)) = most_common(&refusals) {
            if n >= MAX_REFUSALS {
                let reason = format!("refused on {n} nodes for the same reason: {reason}");
                steps.push(match handover_to {
                    Some(_) => Step::DrainBlocked {
                        replica,
                        why: format!("drained; no handover: {reason}"),
                    },
                    None => Step::GivenUp { replica, reason },
                });
                continue;
            }
        }
        match (
            choose(contract, nodes, &hosting, &excluded, &live),
            handover_to,
        ) {
            (Ok(i), None) => {
                let node = nodes[i].key;
                hosting.insert(node);
                steps.push(Step::Assign {
                    replica,
                    node,
                    epoch,
                    reason,
                });
            }
            (Ok(i), Some(_)) => {
                let node = nodes[i].key;
                hosting.insert(node);
                steps.push(Step::Handover {
                    replica,
                    node,
                    epoch,
                });
            }
            (Err(why), None) => steps.push(Step::Unplaceable { replica, why }),
            (Err(why), Some(_)) => steps.push(Step::DrainBlocked {
                replica,
                why: format!("drained; no handover: {why}"),
            }),
        }
    }
    steps
}

/// The reason most nodes gave, and how many gave it.
fn most_common(refusals: &[(PublicKey, String)]) -> Option<(&str, usize)> {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for (_, why) in refusals {
        *counts.entry(why.as_str()).or_default() += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n)
}

/// The index of the node that gets a replica, or why none can.
fn choose(
    contract: &ContractView<'_>,
    nodes: &[NodeView],
    hosting: &BTreeSet<PublicKey>,
    excluded: &BTreeSet<PublicKey>,
    live: &impl Fn(&NodeView) -> bool,
) -> Result<usize, String> {
    let (mut lost, mut absent, mut drained, mut taken, mut refused, mut full) = (0, 0, 0, 0, 0, 0);
    let mut best: Option<usize> = None;
    for (i, n) in nodes.iter().enumerate() {
        if excluded.contains(&n.key) {
            refused += 1;
        } else if !live(n) {
            lost += 1;
        } else if !n.alive {
            absent += 1;
        } else if n.drained {
            drained += 1;
        } else if hosting.contains(&n.key) {
            taken += 1;
        } else if !fits(contract, &n.free) {
            full += 1;
        } else if best.is_none_or(|b| better(n, &nodes[b])) {
            best = Some(i);
        }
    }
    best.ok_or_else(|| {
        format!(
            "no node of farm {:?} can take it: {} nodes, {lost} lost, {absent} not alive now, {drained} drained, \
             {taken} already run a replica, {refused} refused it or lost it, {full} without room",
            contract.placement.farm,
            nodes.len()
        )
    })
}

/// Room for one replica, and the placement's constraints.
fn fits(contract: &ContractView<'_>, free: &NodeResources) -> bool {
    let needs = &contract.needs;
    let constraints = contract.placement.constraints.clone().unwrap_or_default();
    free.cpus >= needs.cpus
        && free.memory_bytes >= needs.memory_bytes
        && free.ssd_bytes >= needs.ssd_bytes
        && free.hdd_bytes >= needs.hdd_bytes
        && constraints
            .min_ssd_gib
            .is_none_or(|g| free.ssd_bytes >= g.saturating_mul(GIB))
        && constraints
            .min_memory_mib
            .is_none_or(|m| free.memory_bytes >= m.saturating_mul(MIB))
}

/// More free memory, then more free SSD, then the lower key.
fn better(a: &NodeView, b: &NodeView) -> bool {
    (
        a.free.memory_bytes,
        a.free.ssd_bytes,
        std::cmp::Reverse(a.key),
    ) > (
        b.free.memory_bytes,
        b.free.ssd_bytes,
        std::cmp::Reverse(b.key),
    )
}

impl NodeView {
    /// Counts one replica of `needs` as taken on this node: the orchestrator plans
    /// contracts one after another, and the next one sees the room this one took.
    pub fn reserve(&mut self, needs: &NodeResources) {
        let f = &mut self.free;
        f.cpus = f.cpus.saturating_sub(needs.cpus);
        f.memory_bytes = f.memory_bytes.saturating_sub(needs.memory_bytes);
        f.ssd_bytes = f.ssd_bytes.saturating_sub(needs.ssd_bytes);
        f.hdd_bytes = f.hdd_bytes.saturating_sub(needs.hdd_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_contract::placement::{Constraints, Failover};
    use zos_contract::SecretKey;

    const NOW: u64 = 1_000_000;

    fn key(n: u8) -> PublicKey {
        SecretKey::from_seed([n; 32]).public()
    }

    fn placement(replicas: u64, mode: FailoverMode) -> Placement {
        Placement {
            farm: "f".into(),
            replicas,
            orchestrator: key(99),
            failover: Failover { mode, after_s: 60 },
            constraints: None,
        }
    }

    fn res(memory_gib: u64, ssd_gib: u64) -> NodeResources {
        NodeResources {
            cpus: 4,
            memory_bytes: memory_gib * GIB,
            ssd_bytes: ssd_gib * GIB,
            hdd_bytes: 0,
        }
    }

    fn node(n: u8, memory_gib: u64, seen_ago: u64) -> NodeView {
        NodeView {
            key: key(n),
            last_seen: NOW - seen_ago,
            alive: true,
            free: res(memory_gib, 100),
            drained: false,
        }
    }

    fn view<'a>(p: &'a Placement, replicas: Vec<ReplicaView>) -> ContractView<'a> {
        ContractView {
            id: "c",
            placement: p,
            needs: res(1, 10),
            replicas,
        }
    }

    fn at(replica: u64, n: u8, epoch: u64, report: Report) -> ReplicaView {
        ReplicaView {
            replica,
            assigned: Some((key(n), epoch)),
            report,
            refused_on: Vec::new(),
            handover: None,
            handover_report: Report::Pending,
        }
    }

    fn assigned(steps: &[Step]) -> Vec<(u64, PublicKey, u64)> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Assign {
                    replica,
                    node,
                    epoch,
                    ..
                } => Some((*replica, *node, *epoch)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn replicas_land_on_distinct_live_nodes_with_room_most_free_first() {
        let p = placement(2, FailoverMode::Move);
        // 1: most memory; 2: next; 3: no room; 4: lost.
        let mut full = node(3, 64, 0);
        full.free.ssd_bytes = GIB;
        let nodes = [node(2, 8, 5), node(1, 16, 5), full, node(4, 64, 600)];
        let steps = plan(&view(&p, Vec::new()), &nodes, NOW);
        assert_eq!(assigned(&steps), vec![(0, key(1), 1), (1, key(2), 1)]);
        assert!(steps.iter().all(|s| matches!(
            s,
            Step::Assign {
                reason: Reason::Initial,
                ..
            }
        )));
    }

    #[test]
    fn the_plan_is_the_same_whatever_the_order_of_the_nodes() {
        let p = placement(3, FailoverMode::Move);
        let mut nodes: Vec<NodeView> = (1..=6).map(|n| node(n, 8, 1)).collect();
        let a = plan(&view(&p, Vec::new()), &nodes, NOW);
        nodes.reverse();
        let b = plan(&view(&p, Vec::new()), &nodes, NOW);
        assert_eq!(a, b);
        // Equal nodes: the lowest keys, one replica each.
        let mut keys: Vec<PublicKey> = (1..=6).map(key).collect();
        keys.sort();
        assert_eq!(
            assigned(&a).iter().map(|(_, k, _)| *k).collect::<Vec<_>>(),
            keys[..3].to_vec()
        );
    }

    #[test]
    fn a_node_without_room_or_drained_never_gets_a_replica() {
        let mut p = placement(1, FailoverMode::Move);
        p.constraints = Some(Constraints {
            min_ssd_gib: Some(50),
            min_memory_mib: None,
        });
        let mut small = node(1, 64, 0);
        small.free.ssd_bytes = 40 * GIB;
        let mut drained = node(2, 64, 0);
        drained.drained = true;
        let steps = plan(&view(&p, Vec::new()), &[small, drained], NOW);
        match &steps[..] {
            [Step::Unplaceable { replica: 0, why }] => {
                assert!(
                    why.contains("1 drained") && why.contains("1 without room"),
                    "{why}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_live_replica_stays_where_it_is() {
        let p = placement(2, FailoverMode::Move);
        let nodes = [node(1, 8, 10), node(2, 8, 10), node(3, 64, 0)];
        let replicas = vec![at(0, 1, 3, Report::Ok), at(1, 2, 1, Report::Pending)];
        assert!(plan(&view(&p, replicas), &nodes, NOW).is_empty());
    }

    #[test]
    fn a_lost_node_s_replica_moves_at_the_next_epoch_after_after_s() {
        let p = placement(2, FailoverMode::Move);
        let replicas = vec![at(0, 1, 4, Report::Ok), at(1, 2, 1, Report::Ok)];
        // Node 1 silent for exactly after_s: still live.
        let nodes = [node(1, 8, 60), node(2, 8, 1), node(3, 8, 1)];
        assert!(plan(&view(&p, replicas.clone()), &nodes, NOW).is_empty());
        // One second more: lost; the replica goes to 3 (2 runs the other one).
        let nodes = [node(1, 8, 61), node(2, 8, 1), node(3, 8, 1)];
        let steps = plan(&view(&p, replicas), &nodes, NOW);
        assert_eq!(
            steps,
            vec![Step::Assign {
                replica: 0,
                node: key(3),
                epoch: 5,
                reason: Reason::NodeLost {
                    node: key(1),
                    silent_s: 61
                },
            }]
        );
    }

    #[test]
    fn a_node_without_its_liveness_record_keeps_its_replica_but_gets_no_new_one() {
        let p = placement(2, FailoverMode::Move);
        // Node 1 (the most memory) has no alive record now, absent for 30 s: not lost.
        let mut absent = node(1, 64, 30);
        absent.alive = false;
        let nodes = [absent.clone(), node(2, 8, 0), node(3, 4, 0)];
        // Its replica stays; the unplaced one goes to a present node, never to 1.
        let replicas = vec![at(0, 1, 1, Report::Ok)];
        let steps = plan(&view(&p, replicas), &nodes, NOW);
        assert_eq!(
            steps,
            vec![Step::Assign {
                replica: 1,
                node: key(2),
                epoch: 1,
                reason: Reason::Initial
            }]
        );
        // Alone, it gets nothing, and the report says why.
        let steps = plan(&view(&p, vec![]), &[absent], NOW);
        assert!(
            matches!(&steps[0], Step::Unplaceable { why, .. } if why.contains("1 not alive now")),
            "{steps:?}"
        );
    }

    #[test]
    fn with_stay_a_lost_node_is_reported_and_nothing_moves() {
        let p = placement(1, FailoverMode::Stay);
        let nodes = [node(1, 8, 3600), node(2, 64, 1)];
        let steps = plan(&view(&p, vec![at(0, 1, 2, Report::Ok)]), &nodes, NOW);
        assert_eq!(
            steps,
            vec![Step::Lost {
                replica: 0,
                node: key(1),
                silent_s: 3600
            }]
        );
    }

    #[test]
    fn a_refused_replica_moves_and_is_given_up_after_max_refusals() {
        let p = placement(1, FailoverMode::Move);
        let nodes: Vec<NodeView> = (1..=5).map(|n| node(n, 8, 1)).collect();
        let mut r = at(0, 1, 1, Report::Refused("bad flist".into()));
        let steps = plan(&view(&p, vec![r.clone()]), &nodes, NOW);
        let [Step::Assign {
            node: second,
            epoch: 2,
            reason: Reason::Refused { .. },
            ..
        }] = steps[..]
        else {
            panic!("{steps:?}")
        };
        assert_ne!(second, key(1));
        // The second node refuses too: a third, neither of the two.
        r.refused_on = vec![(key(1), "bad flist".into())];
        r.assigned = Some((second, 2));
        let steps = plan(&view(&p, vec![r.clone()]), &nodes, NOW);
        let [Step::Assign {
            node: third,
            epoch: 3,
            ..
        }] = steps[..]
        else {
            panic!("{steps:?}")
        };
        assert!(third != key(1) && third != second);
        // The third refuses: given up, nothing assigned.
        r.refused_on.push((second, "bad flist".into()));
        r.assigned = Some((third, 3));
        let steps = plan(&view(&p, vec![r]), &nodes, NOW);
        match &steps[..] {
            [Step::GivenUp { replica: 0, reason }] => {
                assert!(
                    reason.contains("3 nodes") && reason.contains("bad flist"),
                    "{reason}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nodes_refusing_for_reasons_of_their_own_are_avoided_not_counted_against_it() {
        let p = placement(1, FailoverMode::Move);
        let nodes: Vec<NodeView> = (1..=5).map(|n| node(n, 8, 1)).collect();
        let mut r = at(0, 3, 3, Report::Refused("a disk failed".into()));
        r.refused_on = vec![
            (key(1), "over capacity".into()),
            (key(2), "bad flist".into()),
        ];
        let steps = plan(&view(&p, vec![r]), &nodes, NOW);
        let [Step::Assign { node, epoch: 4, .. }] = steps[..] else {
            panic!("{steps:?}")
        };
        assert!(
            node == key(4) || node == key(5),
            "a node that has not refused"
        );
    }

    #[test]
    fn more_replicas_than_nodes_leaves_the_rest_unplaceable_and_room_is_reserved() {
        let p = placement(3, FailoverMode::Move);
        let mut nodes = [node(1, 1, 1), node(2, 1, 1)];
        let steps = plan(&view(&p, Vec::new()), &nodes, NOW);
        assert_eq!(assigned(&steps).len(), 2);
        assert!(
            matches!(steps[2], Step::Unplaceable { replica: 2, .. }),
            "{steps:?}"
        );
        // Once the bot reserves what the first contract took, the next finds no room.
        for n in &mut nodes {
            n.reserve(&res(1, 10));
        }
        let q = placement(1, FailoverMode::Move);
        let steps = plan(&view(&q, Vec::new()), &nodes, NOW);
        match &steps[..] {
            [Step::Unplaceable { why, .. }] => assert!(why.contains("2 without room"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    fn handing(r: ReplicaView, to: u8, epoch: u64, report: Report) -> ReplicaView {
        ReplicaView {
            handover: Some((key(to), epoch)),
            handover_report: report,
            ..r
        }
    }

    #[test]
    fn a_drained_node_s_replica_is_handed_over_make_before_break() {
        let p = placement(2, FailoverMode::Move);
        let mut a = node(1, 64, 0);
        a.drained = true;
        // 2 runs the other replica; 3 has the most room of the rest.
        let nodes = [a, node(2, 8, 0), node(3, 16, 0), node(4, 8, 0)];
        let r0 = at(0, 1, 4, Report::Ok);
        let r1 = at(1, 2, 1, Report::Ok);
        // 1. The handover starts: the replica stays, 3 gets epoch 5.
        let steps = plan(&view(&p, vec![r0.clone(), r1.clone()]), &nodes, NOW);
        assert_eq!(
            steps,
            vec![Step::Handover {
                replica: 0,
                node: key(3),
                epoch: 5
            }]
        );
        // 2. On its way: nothing to do; nothing else goes to 3 either.
        let waiting = handing(r0.clone(), 3, 5, Report::Pending);
        let steps = plan(&view(&p, vec![waiting.clone(), r1.clone()]), &nodes, NOW);
        assert!(steps.is_empty(), "{steps:?}");
        // 3. 3 reports it ok at epoch 5: moved, reason drain.
        let ok = handing(r0.clone(), 3, 5, Report::Ok);
        let steps = plan(&view(&p, vec![ok, r1.clone()]), &nodes, NOW);
        assert_eq!(
            steps,
            vec![Step::Handed {
                replica: 0,
                from: key(1),
                to: key(3),
                epoch: 5,
                reason: Reason::Drain { node: key(1) }
            }]
        );
        // 4. 3 refuses it: 4 at epoch 6 (above every epoch given out), never 1 or 3.
        let refused = handing(r0.clone(), 3, 5, Report::Refused("over capacity".into()));
        let steps = plan(&view(&p, vec![refused, r1.clone()]), &nodes, NOW);
        assert_eq!(
            steps,
            vec![Step::Handover {
                replica: 0,
                node: key(4),
                epoch: 6
            }]
        );
        // 5. Nobody left to take it: it stays, and says why.
        let mut r = handing(r0.clone(), 4, 6, Report::Refused("over capacity".into()));
        r.refused_on = vec![(key(3), "over capacity".into())];
        let steps = plan(&view(&p, vec![r, r1.clone()]), &nodes, NOW);
        assert!(
            matches!(&steps[..], [Step::DrainBlocked { replica: 0, why }] if why.contains("drained") && why.contains("refused")),
            "{steps:?}"
        );
        // 6. Three nodes refusing for the same reason give the handover up; it stays.
        let mut r = handing(r0.clone(), 4, 6, Report::Refused("bad flist".into()));
        r.refused_on = vec![(key(3), "bad flist".into()), (key(5), "bad flist".into())];
        let steps = plan(&view(&p, vec![r, r1.clone()]), &nodes, NOW);
        assert!(
            matches!(&steps[..], [Step::DrainBlocked { why, .. }] if why.contains("3 nodes")),
            "{steps:?}"
        );
    }

    #[test]
    fn an_undrain_completes_a_handover_and_a_lost_drained_node_fails_over_to_it() {
        let p = placement(1, FailoverMode::Move);
        let nodes = [node(1, 64, 0), node(3, 16, 0)];
        // Undrained (1 is not drained here) with a handover on its way: it waits, then
        // completes; an undrained node's replica without one stays.
        let r0 = at(0, 1, 4, Report::Ok);
        let waiting = handing(r0.clone(), 3, 5, Report::Pending);
        assert!(plan(&view(&p, vec![waiting.clone()]), &nodes, NOW).is_empty());
        assert!(plan(&view(&p, vec![r0.clone()]), &nodes, NOW).is_empty());
        let ok = handing(r0.clone(), 3, 5, Report::Ok);
        assert!(matches!(
            plan(&view(&p, vec![ok]), &nodes, NOW)[..],
            [Step::Handed { epoch: 5, .. }]
        ));
        // A failed handover on an undrained node stays as it is (its epoch counted).
        let failed = handing(r0.clone(), 3, 5, Report::Refused("full".into()));
        assert!(plan(&view(&p, vec![failed]), &nodes, NOW).is_empty());
        // The drained node is lost before the new copy reports: failover, to the
        // handover node, at its epoch.
        let mut a = node(1, 64, 61);
        a.drained = true;
        let nodes = [a, node(3, 16, 0), node(4, 64, 0)];
        let steps = plan(&view(&p, vec![waiting]), &nodes, NOW);
        assert_eq!(
            steps,
            vec![Step::Handed {
                replica: 0,
                from: key(1),
                to: key(3),
                epoch: 5,
                reason: Reason::NodeLost {
                    node: key(1),
                    silent_s: 61
                }
            }]
        );
        // And the handover node lost too: a new node above both epochs.
        let nodes = [node(1, 64, 61), node(3, 16, 61), node(4, 8, 0)];
        let steps = plan(
            &view(&p, vec![handing(r0, 3, 5, Report::Pending)]),
            &nodes,
            NOW,
        );
        assert!(
            matches!(&steps[..], [Step::Assign { node, epoch: 6, .. }] if *node == key(4)),
            "{steps:?}"
        );
    }
}
