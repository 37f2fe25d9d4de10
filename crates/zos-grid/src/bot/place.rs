//! One contract's plan: from what the view says of it and of its farm's nodes, the
//! [`crate::plan`] steps, the placement record after them, and the signed records to
//! write ([`Write`]).

use std::collections::HashMap;

use zos_contract::assignment::{Assignment, SignedAssignment};
use zos_contract::PublicKey;
use zos_engine::{State, StatusReport};
use zos_notary::{Expect, Notary, NotaryError, NotaryKey};

use super::write::Write;
use super::{Bot, BotError, Placed, Round};
use crate::plan::{self, ContractView, NodeView, ReplicaView, Report, Step};
use crate::record::{Handover, Move, PlacementRecord, Refusal, ReplicaState};

impl<N: Notary> Bot<N> {
    /// Plans one contract: what to write for it, `None` when nothing changes.
    pub(super) fn place(
        &self,
        p: Placed<'_>,
        farm_nodes: &mut [NodeView],
        statuses: &HashMap<(PublicKey, String), &StatusReport>,
        now: u64,
        wall: u64,
        round: &mut Round,
    ) -> Result<Option<Write>, BotError> {
        let c = &p.doc.contract;
        let placement = p.doc.placement.as_ref().expect("a placement contract");
        let mut rec = match p.prev {
            Some((_, r)) if r.version == c.version && r.digest == p.doc.digest => r.clone(),
            // A new version keeps where its replicas run; their assignments are written
            // again for it, at the same epochs.
            Some((_, r)) => PlacementRecord {
                version: c.version,
                digest: p.doc.digest,
                ..r.clone()
            },
            None => PlacementRecord::new(&c.id, c.version, p.doc.digest, placement.replicas),
        };
        let reissue = p
            .prev
            .as_ref()
            .is_some_and(|(_, r)| r.version != c.version || r.digest != p.doc.digest);

        // A node's report counts for the replica at the epoch it holds there (a report
        // naming none, as a refusal at admission may, counts too): the node may have
        // run another replica, or this one at an older epoch, before.
        let report = |node: &PublicKey, replica: u64, epoch: u64| -> Report {
            match statuses.get(&(*node, c.id.clone())) {
                Some(s)
                    if s.version == Some(c.version)
                        && s.replica.is_none_or(|r| r == replica)
                        && s.epoch.is_none_or(|e| e == epoch) =>
                {
                    match s.state {
                        State::Ok => Report::Ok,
                        State::Refused => Report::Refused(s.message.clone()),
                        _ => Report::Pending,
                    }
                }
                _ => Report::Pending,
            }
        };
        // A handover node's `ok` must name its epoch: only then has the new copy run.
        // One that fenced it (its liveness lapsed, or it restarted) would wait for a
        // placement record naming it, which a handover never writes before its `ok`:
        // counted as a refusal, so that another node takes the handover over.
        let handover_report = |node: &PublicKey, replica: u64, epoch: u64| -> Report {
            match statuses.get(&(*node, c.id.clone())) {
                Some(s) if s.state == State::Ok && s.epoch != Some(epoch) => Report::Pending,
                Some(s)
                    if s.state == State::Fenced
                        && s.version == Some(c.version)
                        && s.epoch == Some(epoch) =>
                {
                    Report::Refused(format!("fenced during the handover: {}", s.message))
                }
                _ => report(node, replica, epoch),
            }
        };
        let replicas: Vec<ReplicaView> = (0..placement.replicas)
            .map(|k| {
                let r = rec.replica_mut(k).clone();
                let assigned = r.node.map(|n| (n, r.epoch));
                ReplicaView {
                    replica: k,
                    assigned,
                    report: r.node.map_or(Report::Pending, |n| report(&n, k, r.epoch)),
                    refused_on: r
                        .refused_on
                        .iter()
                        .map(|x| (x.node, x.reason.clone()))
                        .collect(),
                    handover: r.handover.map(|h| (h.node, h.epoch)),
                    handover_report: r
                        .handover
                        .map_or(Report::Pending, |h| handover_report(&h.node, k, h.epoch)),
                }
            })
            .collect();
        let view = ContractView {
            id: &c.id,
            placement,
            needs: p.needs,
            replicas: replicas.clone(),
        };
        let steps = plan::plan(&view, farm_nodes, now);

        // The record after the steps, and the reports of replicas that stay.
        let before = rec.clone();
        // Assignments to write, (replica, node, epoch), and to delete, (replica, node).
        let mut assignments: Vec<(u64, PublicKey, u64)> = Vec::new();
        let mut replaced: Vec<(u64, PublicKey)> = Vec::new();
        for v in &replicas {
            let r = rec.replica_mut(v.replica);
            if let (Some(h), Report::Refused(why)) = (r.handover, &v.handover_report) {
                if !r.refused_on.iter().any(|x| x.node == h.node) {
                    r.refused_on.push(Refusal {
                        node: h.node,
                        reason: why.clone(),
                    });
                }
            }
            if let Some(node) = r.node {
                match &v.report {
                    Report::Ok => set(r, ReplicaState::Running, ""),
                    Report::Pending => set(r, ReplicaState::Assigned, ""),
                    Report::Refused(why) => {
                        if !r.refused_on.iter().any(|x| x.node == node) {
                            r.refused_on.push(Refusal {
                                node,
                                reason: why.clone(),
                            });
                        }
                    }
                }
            }
        }
        for step in &steps {
            match step {
                Step::Assign {
                    replica,
                    node,
                    epoch,
                    reason,
                } => {
                    let r = rec.replica_mut(*replica);
                    let from = r.node;
                    r.node = Some(*node);
                    r.epoch = *epoch;
                    // A handover that did not complete: its node stops on this higher
                    // epoch elsewhere.
                    if let Some(h) = r.handover.take() {
                        if h.node != *node {
                            replaced.push((*replica, h.node));
                        }
                    }
                    set(r, ReplicaState::Assigned, "");
                    rec.push_move(Move {
                        replica: *replica,
                        from,
                        to: *node,
                        epoch: *epoch,
                        reason: reason.clone(),
                        at: wall,
                    });
                    if let Some(v) = farm_nodes.iter_mut().find(|n| n.key == *node) {
                        v.reserve(&p.needs);
                    }
                    assignments.push((*replica, *node, *epoch));
                    if let Some(old) = from.filter(|f| f != node) {
                        replaced.push((*replica, old));
                    }
                }
                Step::Handover {
                    replica,
                    node,
                    epoch,
                } => {
                    let r = rec.replica_mut(*replica);
                    let previous = r.handover.replace(Handover {
                        node: *node,
                        epoch: *epoch,
                    });
                    if let Some(h) = previous.filter(|h| h.node != *node) {
                        replaced.push((*replica, h.node));
                    }
                    if let Some(v) = farm_nodes.iter_mut().find(|n| n.key == *node) {
                        v.reserve(&p.needs);
                    }
                    assignments.push((*replica, *node, *epoch));
                    tracing::info!(contract = %c.id, replica, %node, epoch, "handover started (its node is drained)");
                }
                Step::Handed {
                    replica,
                    from,
                    to,
                    epoch,
                    reason,
                } => {
                    let running = replicas
                        .iter()
                        .any(|v| v.replica == *replica && v.handover_report == Report::Ok);
                    let r = rec.replica_mut(*replica);
                    r.node = Some(*to);
                    r.epoch = *epoch;
                    r.handover = None;
                    if running {
                        set(r, ReplicaState::Running, "");
                    } else {
                        set(r, ReplicaState::Assigned, "");
                    }
                    rec.push_move(Move {
                        replica: *replica,
                        from: Some(*from),
                        to: *to,
                        epoch: *epoch,
                        reason: reason.clone(),
                        at: wall,
                    });
                    // Its assignment is written already; only the old one goes.
                    replaced.push((*replica, *from));
                    round
                        .handed
                        .push((c.id.clone(), *replica, *from, *to, *epoch));
                }
                Step::DrainBlocked { replica, why } => {
                    rec.replica_mut(*replica).detail = why.clone();
                }
                Step::Lost {
                    replica, silent_s, ..
                } => {
                    let r = rec.replica_mut(*replica);
                    set(
                        r,
                        ReplicaState::Lost,
                        &format!("no liveness record for {silent_s} s; failover is stay"),
                    );
                }
                Step::Unplaceable { replica, why } => {
                    set(rec.replica_mut(*replica), ReplicaState::Unplaceable, why);
                }
                Step::GivenUp { replica, reason } => {
                    set(rec.replica_mut(*replica), ReplicaState::GivenUp, reason);
                }
            }
        }
        if reissue {
            for r in &rec.replicas {
                let handover = r.handover.map(|h| (h.node, h.epoch));
                for (node, epoch) in r.node.map(|n| (n, r.epoch)).into_iter().chain(handover) {
                    if !assignments
                        .iter()
                        .any(|(k, n, _)| *k == r.replica && *n == node)
                    {
                        assignments.push((r.replica, node, epoch));
                    }
                }
            }
        }
        if rec == before && p.prev.is_some() && !reissue {
            return Ok(None);
        }

        // The one serialisation point: the placement record, compared and swapped.
        let key = NotaryKey::placement(&p.farm, &c.id).map_err(NotaryError::from)?;
        let body = serde_json::to_value(&rec).expect("a placement record serializes");
        let record = self.sign(&key, body)?;
        let expect = match p.prev {
            Some((r, _)) => Expect::Current(r.clone()),
            None => Expect::Absent,
        };
        let mut write = Write {
            contract: c.id.clone(),
            key,
            record,
            expect,
            assignments: Vec::new(),
            replaced: Vec::new(),
        };
        for (replica, node, epoch) in assignments {
            let assignment = Assignment {
                contract: c.id.clone(),
                version: c.version,
                digest: p.doc.digest,
                replica,
                node,
                epoch,
                issued_at: wall,
                orchestrator: self.key.public(),
            };
            let signed =
                SignedAssignment::sign(assignment, &self.key).map_err(|e| BotError::Sign {
                    key: c.id.clone(),
                    error: e.to_string(),
                })?;
            let key = NotaryKey::assignment(&node, &c.id, replica).map_err(NotaryError::from)?;
            let record = self.sign(&key, signed.to_value())?;
            write.assignments.push((record, replica, node, epoch));
        }
        for (replica, old) in replaced {
            let key = NotaryKey::assignment(&old, &c.id, replica).map_err(NotaryError::from)?;
            write.replaced.push((replica, old, key));
        }
        Ok(Some(write))
    }
}

fn set(r: &mut crate::record::ReplicaRecord, state: ReplicaState, detail: &str) {
    r.state = state;
    r.detail = detail.to_string();
}
