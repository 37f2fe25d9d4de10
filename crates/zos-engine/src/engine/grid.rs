//! The engine's grid part (docs/grid.md, "The node"): the assignments naming this
//! node, its farm's placement contracts and placement records, moves, and fencing by
//! the liveness lease. The decisions are [`crate::controllers::placement`]'s and
//! admission's; this file gathers their inputs and carries them out, as `engine.rs`
//! does for the rest.

use std::time::{Duration, Instant};

use serde_json::Value;
use zos_contract::{PublicKey, SignedAssignment};
use zos_notary::{EventWatch, KeyKind, KeyPrefix, Notary, NotaryKey, Record, WatchEvent};

use super::{Engine, EngineError};
use crate::controllers::admission::{self, RecordInput};
use crate::controllers::placement::{self, Fence, PlacementView, Release, Verdict};
use crate::journal::{JournalStore, Owned, Phase};
use crate::plan::Resource;
use crate::provision::Provisioner;
use crate::status::{State, StatusReport};

/// How often a fenced replica's placement record is read while the liveness is back.
const FENCED_RECHECK: Duration = Duration::from_secs(1);

/// A replica this node fenced.
pub(super) struct Fenced {
    /// When its placement record was last read.
    checked: Option<Instant>,
    /// What [`placement::release`] keeps between checks.
    fence: Fence,
    /// Its status, published again until the notary has it.
    report: StatusReport,
}

impl<P: Provisioner + 'static, N: Notary, S: JournalStore> Engine<P, N, S> {
    /// This node's assignments and its farm's placement contracts and records: the
    /// current ones and watches of what follows (deletions included).
    pub(super) async fn subscribe_grid(
        &self,
        farm: &str,
    ) -> Result<(Vec<Record>, Vec<Record>, EventWatch, EventWatch), EngineError> {
        let farm_prefix = KeyPrefix::parse(&format!("grid/{farm}"))
            .map_err(|e| zos_notary::NotaryError::from(zos_notary::RecordError::from(e)))?;
        let (assignments, assignment_watch) = self
            .notary
            .subscribe_events(&KeyPrefix::node_assignments(&self.node()))
            .await?;
        let (farm_records, farm_watch) = self.notary.subscribe_events(&farm_prefix).await?;
        Ok((assignments, farm_records, assignment_watch, farm_watch))
    }

    /// Start-up of the grid part: the assignments first (a farm contract is judged
    /// with them), then the farm's records.
    pub(super) async fn begin_grid(
        &mut self,
        assignments: Vec<Record>,
        farm_records: Vec<Record>,
    ) -> Result<(), EngineError> {
        for record in &assignments {
            self.remember_assignment(record);
        }
        for record in &farm_records {
            self.handle(record).await?;
        }
        Ok(())
    }

    /// A change from one of the grid watches.
    pub(super) async fn handle_event(&mut self, event: WatchEvent) -> Result<(), EngineError> {
        match event {
            WatchEvent::Put(record) => self.handle(&record).await,
            WatchEvent::Deleted(key) => self.on_deleted(&key).await,
        }
    }

    /// Keeps an assignment record naming this node; returns its contract id.
    fn remember_assignment(&mut self, record: &Record) -> Option<String> {
        let Ok(KeyKind::Assignment {
            node,
            contract_id,
            replica,
        }) = record.notary_key().map(|k| k.kind())
        else {
            return None;
        };
        if node != self.node() {
            return None;
        }
        let bytes = serde_json::to_vec(&record.body).unwrap_or_default();
        match SignedAssignment::from_bytes(&bytes, &self.cfg.limits) {
            Ok(a) if a.assignment.replica == replica && a.assignment.contract == contract_id => {
                self.assigned
                    .entry(contract_id.clone())
                    .or_default()
                    .insert(replica, a);
                Some(contract_id)
            }
            Ok(_) => {
                tracing::warn!(key = %record.key, "assignment for another contract or replica than its key; ignored");
                None
            }
            Err(e) => {
                tracing::warn!(key = %record.key, error = %e, "assignment unreadable; ignored");
                None
            }
        }
    }

    /// An assignment naming this node: judge the farm's contract with it.
    pub(super) async fn on_assignment(
        &mut self,
        record: &Record,
        id: String,
        replica: u64,
    ) -> Result<(), EngineError> {
        if self.remember_assignment(record).is_none() {
            return Ok(());
        }
        tracing::info!(contract = %id, replica, "assignment received");
        self.mesh_due.insert(id.clone());
        let Some(farm) = self.cfg.farm.clone() else {
            tracing::warn!(contract = %id, "assignment for a node in no farm; ignored");
            return Ok(());
        };
        let key = match NotaryKey::placement_contract(&farm, &id) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(contract = %id, error = %e, "no placement contract key for this id");
                return Ok(());
            }
        };
        match self.notary.get(&key).await {
            Ok(Some(contract)) => self.on_farm_contract(&contract, &id).await,
            // It comes through the farm watch.
            Ok(None) => Ok(()),
            // The notary may be away: the next delivery of either record judges again.
            Err(e) => {
                tracing::warn!(contract = %id, error = %e, "placement contract not read");
                Ok(())
            }
        }
    }

    /// A record at `grid/<farm>/contracts/<id>`: admitted when an assignment names this
    /// node or the node runs it (an update, a cancellation); else not this node's.
    pub(super) async fn on_farm_contract(
        &mut self,
        record: &Record,
        id: &str,
    ) -> Result<(), EngineError> {
        let Some(farm) = self.cfg.farm.as_deref() else {
            return Ok(());
        };
        let held = self.journal.owned(id).is_some_and(|o| o.held.is_some());
        if !held && !self.assigned.contains_key(id) {
            return Ok(());
        }
        let Some(input) = admission::read_farm(record, farm, &self.cfg.limits) else {
            return Ok(());
        };
        self.stats.record_received();
        let actions = match input {
            RecordInput::Contract(doc) => self.plan_contract(&doc, true).await,
            RecordInput::Cancellation { id, cancel } => {
                admission::plan_cancellation(self.journal.data(), &id, &cancel)
            }
            RecordInput::Malformed {
                id,
                version,
                reasons,
            } => vec![admission::Action::Refuse {
                id,
                version,
                reasons,
            }],
        };
        for action in actions {
            self.admit(action).await?;
        }
        Ok(())
    }

    /// The orchestrator's placement record of contract `id`: a move of the replica
    /// this node holds removes its copy.
    pub(super) async fn on_placement(
        &mut self,
        record: &Record,
        id: &str,
    ) -> Result<(), EngineError> {
        let Some(owned) = self.journal.owned(id).cloned() else {
            return Ok(());
        };
        let Some(held) = owned.held.clone() else {
            return Ok(());
        };
        let Some(view) = placement::read_placement(record, id, &held) else {
            return Ok(());
        };
        // Who holds the other replicas may have changed: the peers follow at once.
        self.mesh_due.insert(id.to_string());
        if let Verdict::Moved { to, epoch } = placement::judge(&view, &held, &self.node()) {
            self.moved(&owned, to, epoch).await?;
        }
        Ok(())
    }

    /// A key deleted under this node's assignments: the orchestrator moved that
    /// replica (or someone removed the record). The copy goes only on the
    /// orchestrator's signed word: its placement record.
    async fn on_deleted(&mut self, key: &NotaryKey) -> Result<(), EngineError> {
        let KeyKind::Assignment {
            node,
            contract_id,
            replica,
        } = key.kind()
        else {
            return Ok(());
        };
        if node != self.node() {
            return Ok(());
        }
        self.mesh_due.insert(contract_id.clone());
        if let Some(by_replica) = self.assigned.get_mut(&contract_id) {
            by_replica.remove(&replica);
            if by_replica.is_empty() {
                self.assigned.remove(&contract_id);
            }
        }
        let held_here = self
            .journal
            .owned(&contract_id)
            .and_then(|o| o.held.as_ref())
            .is_some_and(|h| h.replica == replica);
        if !held_here {
            return Ok(());
        }
        let verdict = self
            .placement_record(&contract_id)
            .await
            .and_then(|(owned, view, _)| {
                let held = owned.held.as_ref()?;
                Some((placement::judge(&view, held, &self.node()), owned))
            });
        match verdict {
            Some((Verdict::Moved { to, epoch }, owned)) => self.moved(&owned, to, epoch).await,
            _ => {
                tracing::warn!(contract = %contract_id, replica, "assignment deleted, but the orchestrator's placement record shows no move: the replica keeps running");
                Ok(())
            }
        }
    }

    /// The placement record of held contract `id`, read now and signed by its
    /// orchestrator: its view and its body (`None`: none, unreadable, or not held).
    pub(super) async fn placement_record(&self, id: &str) -> Option<(Owned, PlacementView, Value)> {
        let owned = self.journal.owned(id).cloned()?;
        let held = owned.held.as_ref()?;
        let key = NotaryKey::placement(self.cfg.farm.as_deref()?, id).ok()?;
        let record = match self.notary.get(&key).await {
            Ok(record) => record?,
            Err(e) => {
                tracing::warn!(contract = %id, error = %e, "placement record not read");
                return None;
            }
        };
        let view = placement::read_placement(&record, id, held)?;
        Some((owned, view, record.body))
    }

    /// The replica of `owned` runs at a higher `epoch` on node `to`: remove this copy
    /// and its volumes (a moved replica starts with fresh volumes there), and refuse
    /// that epoch and any below it from now on.
    async fn moved(&mut self, owned: &Owned, to: PublicKey, epoch: u64) -> Result<(), EngineError> {
        let Some(held) = owned.held.clone() else {
            return Ok(());
        };
        let id = owned.id.clone();
        tracing::warn!(contract = %id, replica = held.replica, from_epoch = held.epoch, epoch, node = %to, "replica moved to another node; removing this copy");
        self.journal.update(|j| {
            j.owned.remove(&id);
            j.members.remove(&id);
            j.see_epoch(&id, held.replica, epoch);
            j.doomed.extend(crate::plan::resource_names(
                &id,
                &owned.deployment,
                Resource::Volume,
            ));
        })?;
        self.jobs.abort(&id);
        self.pending_since.remove(&id);
        self.fenced.remove(&id);
        self.refused_updates.remove(&id);
        self.teardown(owned, true).await?;
        self.mesh_forget(owned, true).await;
        self.publish(
            StatusReport::new(
                &id,
                Some(owned.version),
                State::Moved,
                format!(
                    "replica {} moved to node {to} at epoch {epoch}; everything it had here is removed",
                    held.replica
                ),
            )
            .holding(Some(&held)),
        )
        .await
    }

    /// Whether `owned` is a `move` replica whose node's liveness has lapsed.
    pub(super) fn must_fence(&self, owned: &Owned) -> bool {
        let Some(held) = owned.held.as_ref().filter(|h| h.fences()) else {
            return false;
        };
        match &self.liveness {
            Some(l) => placement::fence_due(held, *l.renewed.borrow(), (l.now)()),
            None => true,
        }
    }

    /// Stops `owned`'s workloads and networks (its volumes are kept) and marks it
    /// fenced: it runs again only after [`Engine::fencing_pass`] finds the liveness
    /// renewed and the placement record still naming this node.
    /// `lapse_from`: when the last renewal before the lapse was sent (`None`: unknown,
    /// as when zosd starts).
    pub(super) async fn fence(
        &mut self,
        owned: &Owned,
        why: &str,
        lapse_from: Option<Duration>,
    ) -> Result<(), EngineError> {
        let id = owned.id.clone();
        let after_s = owned
            .held
            .as_ref()
            .map_or(0, |h| h.placement.failover.after_s);
        tracing::warn!(contract = %id, why, "fencing: stopping this replica until the liveness is renewed and the orchestrator still names this node");
        self.jobs.abort(&id);
        self.pending_since.remove(&id);
        self.teardown(owned, false).await?;
        // Its network is gone with it; the key stays (it runs again with it).
        self.mesh_forget(owned, false).await;
        let report = fenced(owned, why, after_s);
        self.fenced.insert(
            id.clone(),
            Fenced {
                checked: None,
                fence: Fence {
                    lapse_from,
                    baseline: None,
                },
                report: report.clone(),
            },
        );
        self.publish(report).await
    }

    /// Fences the `move` replicas whose liveness lapsed; for fenced ones whose liveness
    /// is back, reads the placement record (at most every [`FENCED_RECHECK`]): still
    /// this node's at its epoch, it starts again; moved, its copy goes.
    pub(super) async fn fencing_pass(&mut self, now: Instant) -> Result<(), EngineError> {
        let held: Vec<Owned> = self
            .journal
            .data()
            .owned
            .values()
            .filter(|o| o.held.as_ref().is_some_and(|h| h.fences()))
            // A failed replica runs nothing to fence, and runs again only on a new
            // version.
            .filter(|o| !matches!(o.phase, Phase::Failed { .. }))
            .cloned()
            .collect();
        let (renewed, boot_now) = match &self.liveness {
            Some(l) => (*l.renewed.borrow(), (l.now)()),
            None => (None, Duration::ZERO),
        };
        for o in held {
            let lapsed = self.must_fence(&o);
            let due = match self.fenced.get(&o.id) {
                None if lapsed => {
                    self.fence(&o, "the liveness lapsed", renewed).await?;
                    continue;
                }
                None => continue,
                Some(f) => f
                    .checked
                    .is_none_or(|t| now.saturating_duration_since(t) >= FENCED_RECHECK),
            };
            if lapsed || !due {
                continue;
            }
            let record = self.placement_record(&o.id).await;
            let me = self.node();
            let Some(f) = self.fenced.get_mut(&o.id) else {
                continue;
            };
            f.checked = Some(now);
            // Said once the notary is reachable again (publish retries).
            let report = f.report.clone();
            let Some(held) = o.held.as_ref() else {
                continue;
            };
            let decision = placement::release(
                &mut f.fence,
                held,
                record.as_ref().map(|(_, view, body)| (view, body)),
                renewed,
                boot_now,
                &me,
            );
            self.publish(report).await?;
            match decision {
                Release::Moved { to, epoch } => self.moved(&o, to, epoch).await?,
                Release::Start => {
                    tracing::info!(contract = %o.id, "liveness renewed and the placement record names this node: starting the replica again");
                    self.fenced.remove(&o.id);
                    self.pending_since.insert(o.id.clone(), now);
                    self.spawn_provision(&o, None);
                }
                Release::Wait => {}
            }
        }
        Ok(())
    }
}

/// The next event of `watch`; never, when there is none (a node in no farm).
pub(super) async fn next_event(watch: Option<&mut EventWatch>) -> Option<WatchEvent> {
    match watch {
        Some(w) => w.recv().await,
        None => std::future::pending().await,
    }
}

/// The status of a `move` replica the node fenced.
fn fenced(owned: &Owned, why: &str, after_s: u64) -> StatusReport {
    StatusReport::new(
        &owned.id,
        Some(owned.version),
        State::Fenced,
        format!(
            "fenced ({why}): stopped here after {} s without a renewed liveness, volumes kept; it runs again only where the orchestrator's placement record names it",
            after_s / 2
        ),
    )
    .holding(owned.held.as_ref())
}
