//! The reconcile loop: it gathers the inputs of the [controllers](crate::controllers),
//! calls their plans and executes their actions.
//!
//! Inputs: the contract records the notary holds for this node (a subscription: a
//! snapshot, then every change), the journal, what the provisioner finds on the
//! machine, and the clock. Outputs: kernel objects (through the [`Provisioner`]),
//! journal entries, and signed status records. Each step is idempotent, so the engine
//! can be killed at any point and started again: it re-adopts what runs, finishes what
//! was half made, and removes what nobody owns.
//!
//! With a farm, the loop also follows the grid (this node's assignments, the farm's
//! placement contracts and records) and fences `move` replicas by the node's liveness:
//! that part is `engine/grid.rs`.
//!
//! Provisioning and restarts run on jobs, one at a time per contract, off the loop: a
//! slow flist fetch for one contract holds up neither another contract nor a
//! cancellation. The loop alone writes the journal, journal first: a cancellation, an
//! expiry or a newer version journals its change, cuts the contract's job short, then
//! acts; a job's outcome for a version that is no longer the one journalled is dropped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::task::{AbortHandle, JoinSet};
use zos_contract::deployment::Workload;
use zos_contract::{
    BlueprintRef, Digest, Limits, PublicKey, SecretKey, SignedAssignment, SignedBlueprint,
    SignedContract,
};
use zos_notary::{KeyKind, KeyPrefix, Notary, NotaryKey, Record, WatchEvent};

use crate::capacity::Capacity;
use crate::controllers::admission::{self, GridInput, RecordInput};
use crate::controllers::provisioning;
use crate::controllers::supervision::{self, Supervisor};
use crate::controllers::{expiry, orphans, reporting};
use crate::journal::{Journal, JournalStore, Owned, Phase};
use crate::names;
use crate::plan::Resource;
use crate::provision::Provisioner;
use crate::stats::{ContractView, EngineStats, Outcome, WorkloadView};
use crate::status::{ContractSummary, ReasonReport, RefusedUpdate, State, StatusReport};

mod grid;
mod mesh;

pub use crate::controllers::admission::MAX_TOMBSTONES;
use grid::{next_event, Fenced};
pub use mesh::key_path as mesh_key_path;

/// How long an expired contract's volumes are kept for its owner (who may publish a
/// new version that adopts them, or cancel to delete them at once): 7 days.
pub const VOLUME_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Tunables of the engine; the defaults are production values.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// What contracts may reserve in total.
    pub capacity: Capacity,
    /// Blueprint authors this node accepts; `None` accepts any valid signature.
    pub trusted_authors: Option<BTreeSet<PublicKey>>,
    /// How often workloads are checked (restarts, expiry, retries).
    pub supervise_every: Duration,
    /// First restart delay of a workload that died; doubled per restart up to
    /// `restart_max`, reset after `restart_reset` of running.
    pub restart_min: Duration,
    /// The longest restart delay (see `restart_min`).
    pub restart_max: Duration,
    /// How long a restarted workload must run for its delay to start from
    /// `restart_min` again.
    pub restart_reset: Duration,
    /// How often a running contract's status is published again when only its
    /// workloads' log tails changed (a VM's console comes seconds after "running").
    pub log_refresh: Duration,
    /// How long an expired contract's volumes are kept ([`VOLUME_GRACE`]).
    pub volume_grace: Duration,
    /// How often orphans are collected while the engine runs (besides at start-up): a
    /// provisioner call that a cancellation cut short may still finish on its blocking
    /// thread and make something no contract owns.
    pub orphan_sweep_every: Duration,
    /// Bounds on one contract document: what records are parsed and verified under.
    pub limits: Limits,
    /// The farm this node is registered in: it follows the farm's placement contracts
    /// and its own assignments (docs/grid.md). `None`: no placement contract runs here.
    pub farm: Option<String>,
    /// Where the WireGuard keys of networks across nodes are kept
    /// (`<dir>/<contract>/<network>.key`, mode 0600; docs/engine.md, "Mesh"). `None`:
    /// such networks are not set up (logged).
    pub mesh_keys: Option<std::path::PathBuf>,
    /// The address this node's peer records publish as their endpoint, with the
    /// link's port (zosd's `[mesh] endpoint`). `None`: not reachable (behind NAT).
    /// [`Engine::with_mesh_endpoint`] replaces it with one that follows the uplink.
    pub mesh_endpoint: Option<std::net::IpAddr>,
}

/// The node's liveness lease, which decides when `move` replicas are fenced
/// (docs/grid.md, "Timing"). Without one, a `move` replica never runs.
#[derive(Debug, Clone)]
pub struct Liveness {
    /// `CLOCK_BOOTTIME` read just before the last renewal that succeeded was sent;
    /// `None` before the first.
    pub renewed: tokio::sync::watch::Receiver<Option<Duration>>,
    /// `CLOCK_BOOTTIME` now (a function, so tests can move it).
    pub now: fn() -> Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            capacity: Capacity::default(),
            trusted_authors: None,
            supervise_every: Duration::from_millis(250),
            restart_min: Duration::from_millis(200),
            restart_max: Duration::from_secs(30),
            restart_reset: Duration::from_secs(60),
            log_refresh: Duration::from_secs(5),
            volume_grace: VOLUME_GRACE,
            orphan_sweep_every: Duration::from_secs(60),
            limits: Limits::default(),
            farm: None,
            mesh_keys: None,
            mesh_endpoint: None,
        }
    }
}

/// Why the engine itself (not one contract) cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The journal could not be read or written: the engine stops rather than act
    /// on what it could not record.
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    /// The notary could not be read or written.
    #[error(transparent)]
    Notary(#[from] zos_notary::NotaryError),
    /// A notary watch the engine follows (this node's contracts, its assignments, its
    /// farm's placement contracts) closed.
    #[error("the notary watch ended")]
    WatchEnded,
}

/// What a job reports back to the loop.
enum Done {
    Provisioned(provisioning::Outcome),
    Restarted(supervision::Restarted),
}

/// The jobs in flight: at most one per contract.
#[derive(Default)]
struct Jobs {
    set: JoinSet<Done>,
    /// Contract id -> (job number, handle).
    running: HashMap<String, (u64, AbortHandle)>,
    /// Task id -> (contract id, job number).
    tasks: HashMap<tokio::task::Id, (String, u64)>,
    next: u64,
}

impl Jobs {
    fn busy(&self, id: &str) -> bool {
        self.running.contains_key(id)
    }

    /// Cuts the job of contract `id` short, if it has one: its outcome is dropped.
    fn abort(&mut self, id: &str) {
        if let Some((_, handle)) = self.running.remove(id) {
            tracing::info!(contract = %id, "job cut short");
            handle.abort();
        }
    }
}

/// The node's reconcile loop. See the module docs.
pub struct Engine<P, N, S: JournalStore> {
    node: SecretKey,
    cfg: EngineConfig,
    provisioner: Arc<P>,
    notary: N,
    journal: Journal<S>,
    supervisor: Supervisor,
    jobs: Jobs,
    /// The last report published per contract: publish on change.
    published: HashMap<String, StatusReport>,
    /// The last record refused at the key of a contract that runs, per contract: it
    /// rides along with that contract's reports.
    refused_updates: HashMap<String, RefusedUpdate>,
    /// Why the last restart of a workload (by node-wide name) failed, until one works:
    /// the status says it instead of a bare "restarting".
    restart_errors: HashMap<String, String>,
    /// When log tails were last looked at for a refresh.
    logs_refreshed: Option<Instant>,
    /// Unix seconds; a function so tests can move time.
    clock: fn() -> u64,
    /// The last report of every contract the node runs or refused, for the node's
    /// local status; updated on every report, published or not (the notary may be
    /// away, the console must still tell).
    summaries: tokio::sync::watch::Sender<Vec<ContractSummary>>,
    /// What the engine counts, for the node's metrics ([`Engine::stats`]).
    stats: Arc<EngineStats>,
    /// When the record being handled was received.
    received: Instant,
    /// Per contract, when the record whose work is not done yet was received: its
    /// converge observes the latency.
    pending_since: HashMap<String, Instant>,
    /// The assignments naming this node, per placement contract and replica, as the
    /// notary holds them (verified envelopes; `admit()` judges them).
    assigned: HashMap<String, BTreeMap<u64, SignedAssignment>>,
    /// The liveness lease, when the node keeps one.
    liveness: Option<Liveness>,
    /// Placement replicas this node stopped by itself (fenced): their workloads are
    /// gone, their volumes kept.
    fenced: BTreeMap<String, Fenced>,
    /// The networks across nodes of the contracts that run here, by (contract,
    /// network): their keys, peers, records and status sections.
    mesh: BTreeMap<(String, String), mesh::Link>,
    /// Contracts whose networks across nodes are refreshed at once (a change).
    mesh_due: BTreeSet<String>,
    /// The endpoint address as it changes (the uplink's lease), when zosd follows it.
    mesh_endpoint: Option<tokio::sync::watch::Receiver<Option<std::net::IpAddr>>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl<P: Provisioner + 'static, N: Notary, S: JournalStore> Engine<P, N, S> {
    /// An engine for the node whose key is `node`; nothing runs before [`Engine::run`].
    pub fn new(
        node: SecretKey,
        cfg: EngineConfig,
        provisioner: P,
        notary: N,
        journal: Journal<S>,
    ) -> Self {
        Engine {
            node,
            supervisor: Supervisor::new(cfg.restart_min, cfg.restart_max, cfg.restart_reset),
            cfg,
            provisioner: Arc::new(provisioner),
            notary,
            journal,
            jobs: Jobs::default(),
            published: HashMap::new(),
            refused_updates: HashMap::new(),
            restart_errors: HashMap::new(),
            logs_refreshed: None,
            clock: unix_now,
            summaries: tokio::sync::watch::channel(Vec::new()).0,
            stats: Arc::default(),
            received: Instant::now(),
            pending_since: HashMap::new(),
            assigned: HashMap::new(),
            liveness: None,
            fenced: BTreeMap::new(),
            mesh: BTreeMap::new(),
            mesh_due: BTreeSet::new(),
            mesh_endpoint: None,
        }
    }

    /// The endpoint address of this node's peer records as it changes (instead of
    /// `EngineConfig::mesh_endpoint`): a new address is published at the next refresh.
    pub fn with_mesh_endpoint(
        mut self,
        endpoint: tokio::sync::watch::Receiver<Option<std::net::IpAddr>>,
    ) -> Self {
        self.mesh_endpoint = Some(endpoint);
        self
    }

    /// Fences `move` replicas by `liveness` (docs/grid.md); without it they never run.
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = Some(liveness);
        self
    }

    /// The engine's counters (queue, converges, latencies, restarts, the contracts it
    /// runs and where their metrics go), updated as it runs. Read-only for the holder.
    pub fn stats(&self) -> Arc<EngineStats> {
        self.stats.clone()
    }

    /// What the engine last reported per contract, sorted by id, updated on every
    /// report; cancelled and expired contracts leave it. Read-only: a receiver.
    pub fn summaries(&self) -> tokio::sync::watch::Receiver<Vec<ContractSummary>> {
        self.summaries.subscribe()
    }

    /// Replaces the wall clock (tests).
    pub fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
    }

    /// This node's public key (the one contracts name).
    pub fn node(&self) -> PublicKey {
        self.node.public()
    }

    /// The journal of what the node owns (read it; the engine writes it).
    pub fn journal(&self) -> &Journal<S> {
        &self.journal
    }

    /// The provisioner the engine's jobs call.
    pub fn provisioner(&self) -> &P {
        &self.provisioner
    }

    /// Runs until `shutdown` resolves: subscribes to this node's contracts, starts up
    /// (re-adopt, clean orphans, catch up), then handles every change, every job's
    /// outcome and supervises workloads. Workloads keep running after a shutdown (jobs
    /// in flight are cut short): the next start re-adopts them.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<Self, EngineError> {
        let prefix = KeyPrefix::node_contracts(&self.node());
        let (existing, mut watch) = self.notary.subscribe(&prefix).await?;
        let (mut assignment_watch, mut farm_watch) = (None, None);
        let mut grid_existing = None;
        if let Some(farm) = self.cfg.farm.clone() {
            let (assignments, farm_records, a, f) = self.subscribe_grid(&farm).await?;
            (assignment_watch, farm_watch) = (Some(a), Some(f));
            grid_existing = Some((assignments, farm_records));
        }
        self.begin(existing).await?;
        if let Some((assignments, farm_records)) = grid_existing {
            self.begin_grid(assignments, farm_records).await?;
        }
        self.refresh_stats();
        let mut tick = tokio::time::interval(self.cfg.supervise_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first collection was begin()'s; the next after a full period.
        let every = self.cfg.orphan_sweep_every;
        let mut sweep = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut mesh_tick = tokio::time::interval(crate::controllers::mesh::MESH_REFRESH);
        mesh_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => {
                    self.jobs.set.abort_all();
                    return Ok(self);
                }
                record = watch.recv() => match record {
                    Some(record) => self.handle(&record).await?,
                    None => return Err(EngineError::WatchEnded),
                },
                event = next_event(assignment_watch.as_mut()) => match event {
                    Some(event) => self.handle_event(event).await?,
                    None => return Err(EngineError::WatchEnded),
                },
                event = next_event(farm_watch.as_mut()) => match event {
                    Some(event) => self.handle_event(event).await?,
                    None => return Err(EngineError::WatchEnded),
                },
                Some(done) = self.jobs.set.join_next_with_id() => self.on_done(done).await?,
                _ = tick.tick() => self.supervision_pass(Instant::now()).await?,
                _ = sweep.tick() => self.collect_orphans().await?,
                _ = mesh_tick.tick() => self.mesh_pass(true).await?,
            }
            if !self.mesh_due.is_empty() {
                self.mesh_pass(false).await?;
            }
            self.refresh_stats();
        }
    }

    /// Start-up: remove orphans, bring every owned contract back (re-adopting what
    /// runs), then handle the notary's snapshot; returns when every job it started
    /// is done.
    pub async fn start(&mut self, existing: Vec<Record>) -> Result<(), EngineError> {
        self.begin(existing).await?;
        self.settle().await
    }

    async fn begin(&mut self, existing: Vec<Record>) -> Result<(), EngineError> {
        self.collect_orphans().await?;
        let owned: Vec<Owned> = self.journal.data().owned.values().cloned().collect();
        for o in owned {
            let failed = matches!(o.phase, Phase::Failed { .. });
            if !failed && o.held.as_ref().is_some_and(|h| h.fences()) {
                // What ran before this start may have been moved meanwhile: it runs
                // again only on a renewed liveness and a placement record that still
                // names this node (docs/grid.md).
                self.fence(&o, "zosd started", None).await?;
            } else if !failed {
                tracing::info!(contract = %o.id, version = o.version, "re-adopting");
                self.spawn_provision(&o, None);
            }
        }
        for record in &existing {
            self.handle(record).await?;
        }
        Ok(())
    }

    /// Handles one record from the notary (a contract or a cancellation); returns
    /// when the jobs it started are done.
    pub async fn on_record(&mut self, record: &Record) -> Result<(), EngineError> {
        self.handle(record).await?;
        self.settle().await?;
        self.mesh_pass(false).await
    }

    /// Handles one change from a grid watch (a record put, or a key deleted under this
    /// node's assignments); returns when the jobs it started are done.
    pub async fn on_event(&mut self, event: WatchEvent) -> Result<(), EngineError> {
        self.handle_event(event).await?;
        self.settle().await?;
        self.mesh_pass(false).await
    }

    /// One refresh of every running network across nodes (what the loop does every
    /// [`crate::controllers::mesh::MESH_REFRESH`]): keys, peers' records, the peers
    /// applied, this node's record, the status's mesh section.
    pub async fn mesh_refresh_all(&mut self) -> Result<(), EngineError> {
        self.mesh_pass(true).await
    }

    /// One supervision pass: expiries, retries, restarts, the log refresh; returns
    /// when the jobs it started are done.
    pub async fn supervise(&mut self, now: Instant) -> Result<(), EngineError> {
        self.supervision_pass(now).await?;
        self.settle().await?;
        self.mesh_pass(false).await
    }

    /// Waits for every job in flight and applies its outcome.
    async fn settle(&mut self) -> Result<(), EngineError> {
        self.refresh_stats();
        while let Some(done) = self.jobs.set.join_next_with_id().await {
            self.on_done(done).await?;
        }
        self.refresh_stats();
        Ok(())
    }

    /// The queue and the contracts' view in [`EngineStats`], from the jobs and the
    /// journal (failed contracts have nothing running to measure).
    fn refresh_stats(&self) {
        self.stats.set_queue_depth(self.jobs.running.len());
        let contracts = self
            .journal
            .data()
            .owned
            .values()
            .filter(|o| !matches!(o.phase, Phase::Failed { .. }))
            .map(|o| {
                let workloads = o
                    .deployment
                    .workloads
                    .iter()
                    .map(|w| WorkloadView {
                        workload: w.name.clone(),
                        name: names::of(&o.id, &w.name),
                        kind: w.kind,
                        restarts: o.restarts.get(&w.name).copied().unwrap_or(0).into(),
                    })
                    .collect();
                let view = ContractView {
                    metrics: o.deployment.metrics.clone(),
                    workloads,
                };
                (o.id.clone(), view)
            })
            .collect();
        self.stats.set_contracts(contracts);
    }

    // ---- admission ----

    async fn handle(&mut self, record: &Record) -> Result<(), EngineError> {
        self.received = Instant::now();
        match record.notary_key().map(|k| k.kind()) {
            Ok(KeyKind::Assignment {
                node,
                contract_id,
                replica,
            }) if node == self.node() => {
                return self.on_assignment(record, contract_id, replica).await
            }
            Ok(KeyKind::PlacementContract { contract_id, .. }) => {
                return self.on_farm_contract(record, &contract_id).await
            }
            Ok(KeyKind::Placement {
                farm_id,
                contract_id,
            }) if self.cfg.farm.as_deref() == Some(farm_id.as_str()) => {
                return self.on_placement(record, &contract_id).await
            }
            _ => {}
        }
        let input = admission::read(record, &self.node(), &self.cfg.limits);
        if input.is_some() {
            self.stats.record_received();
        }
        let actions = match input {
            None => return Ok(()),
            Some(RecordInput::Malformed {
                id,
                version,
                reasons,
            }) => vec![admission::Action::Refuse {
                id,
                version,
                reasons,
            }],
            Some(RecordInput::Contract(doc)) => self.plan_contract(&doc, false).await,
            Some(RecordInput::Cancellation { id, cancel }) => {
                admission::plan_cancellation(self.journal.data(), &id, &cancel)
            }
        };
        for action in actions {
            self.admit(action).await?;
        }
        Ok(())
    }

    /// Admission's plan for `doc`; `from_farm`: it is the farm's placement contract
    /// record, judged with this node's assignment for it.
    async fn plan_contract(&self, doc: &SignedContract, from_farm: bool) -> Vec<admission::Action> {
        let blueprint = match &doc.contract.blueprint {
            BlueprintRef::Sha256(d) => self.blueprint(d).await,
            BlueprintRef::Embedded(_) => None,
        };
        let assignment = self
            .assigned
            .get(&doc.contract.id)
            .and_then(|by_replica| by_replica.values().next());
        let grid = match (from_farm, self.cfg.farm.as_deref()) {
            (true, Some(farm)) => Some(GridInput { assignment, farm }),
            _ => None,
        };
        // Asked of the kernel only for a contract that needs it.
        let spans = crate::plan::spans_nodes(&doc.contract.nodes, doc.placement.as_ref());
        let wireguard = !spans || self.provisioner.wireguard_available().await;
        let inputs = admission::Inputs {
            wireguard,
            journal: self.journal.data(),
            blueprint,
            now: (self.clock)(),
            node: self.node(),
            trusted_authors: self.cfg.trusted_authors.as_ref(),
            limits: self.cfg.limits,
            capacity: self.cfg.capacity,
            grid,
        };
        admission::plan_contract(doc, inputs)
    }

    async fn admit(&mut self, action: admission::Action) -> Result<(), EngineError> {
        match action {
            admission::Action::Refuse {
                id,
                version,
                reasons,
            } => self.refuse(&id, version, reasons).await,
            admission::Action::Accept {
                owned,
                previous,
                nodes,
            } => {
                let id = owned.id.clone();
                self.jobs.abort(&id);
                let me = self.node();
                let previous =
                    previous.map(|p| (crate::plan::span(self.journal.data(), &p, &me), p));
                self.journal
                    .update(|j| admission::journal_accept(j, &owned, &nodes))?;
                // Its networks may be made again: the links are set up anew once it runs.
                self.mesh_forget(&owned, false).await;
                self.refused_updates.remove(&id);
                self.fenced.remove(&id);
                tracing::info!(contract = %id, version = owned.version, held = ?owned.held.as_ref().map(|h| (h.replica, h.epoch)), "contract accepted");
                if self.must_fence(&owned) {
                    // Admitted, but the node's liveness has lapsed: it starts once the
                    // liveness is back and the placement record still names this node.
                    let renewed = self.liveness.as_ref().and_then(|l| *l.renewed.borrow());
                    return self
                        .fence(&owned, "admitted while the liveness lapsed", renewed)
                        .await;
                }
                self.pending_since.insert(id.clone(), self.received);
                self.publish(
                    StatusReport::new(
                        &id,
                        Some(owned.version),
                        State::Provisioning,
                        "verified and admitted; provisioning",
                    )
                    .holding(owned.held.as_ref()),
                )
                .await?;
                self.spawn_provision(&owned, previous.as_ref().map(|(span, p)| (&**p, *span)));
                Ok(())
            }
            admission::Action::Cancel {
                target,
                running,
                version,
                marker,
            } => {
                let id = target.id.clone();
                tracing::info!(contract = %id, version, running, "cancelled by its owner; tearing down");
                self.journal
                    .update(|j| admission::journal_cancel(j, &target, version, marker))?;
                self.jobs.abort(&id);
                self.pending_since.remove(&id);
                self.fenced.remove(&id);
                self.teardown(&target, true).await?;
                self.mesh_forget(&target, true).await;
                self.refused_updates.remove(&id);
                self.publish(cancelled(&id, version)).await
            }
            admission::Action::Cancelled { id, version } => {
                self.publish(cancelled(&id, version)).await
            }
            admission::Action::Tombstone { id, cancel } => {
                let c = &cancel.cancellation;
                tracing::info!(contract = %id, version = c.version, owner = %c.owner, "cancellation of a contract this node does not run: kept as a tombstone");
                self.journal
                    .update(|j| admission::journal_tombstone(j, &id, &cancel))?;
                Ok(())
            }
        }
    }

    /// Reports a refused record at contract key `id`. When the node runs a contract
    /// of that id, what runs keeps running and keeps its status: the refusal rides
    /// along with it ([`RefusedUpdate`]) instead of replacing it.
    async fn refuse(
        &mut self,
        id: &str,
        version: Option<u64>,
        reasons: Vec<ReasonReport>,
    ) -> Result<(), EngineError> {
        let report = reporting::refused(id, version, reasons);
        let codes: Vec<&str> = report.reasons.iter().map(|r| r.code.as_str()).collect();
        tracing::warn!(contract = %id, version, reasons = ?codes, message = %report.message, "record refused");
        if self.journal.owned(id).is_some() {
            self.refused_updates.insert(
                id.to_string(),
                RefusedUpdate {
                    version,
                    message: report.message,
                    reasons: report.reasons,
                },
            );
            return self.report(id).await;
        }
        self.publish(report).await
    }

    async fn blueprint(&self, digest: &Digest) -> Option<SignedBlueprint> {
        zos_notary::blueprint(&self.notary, digest, &self.cfg.limits).await
    }

    // ---- provisioning and restarts: jobs ----

    /// Provisions `owned` on a job, replacing `previous` (with its span then).
    fn spawn_provision(
        &mut self,
        owned: &Owned,
        previous: Option<(&Owned, Option<crate::plan::Span>)>,
    ) {
        let span = crate::plan::span(self.journal.data(), owned, &self.node());
        let steps = provisioning::plan(owned, span, previous);
        let (p, owned) = (self.provisioner.clone(), owned.clone());
        let id = owned.id.clone();
        self.spawn(id, async move {
            Done::Provisioned(provisioning::execute(&*p, &owned, span, steps).await)
        });
    }

    fn spawn(&mut self, id: String, job: impl std::future::Future<Output = Done> + Send + 'static) {
        self.jobs.abort(&id);
        let n = self.jobs.next;
        self.jobs.next += 1;
        let handle = self.jobs.set.spawn(job);
        self.jobs.tasks.insert(handle.id(), (id.clone(), n));
        self.jobs.running.insert(id, (n, handle));
    }

    /// Applies a job's outcome, unless the job was cut short or superseded.
    async fn on_done(
        &mut self,
        done: Result<(tokio::task::Id, Done), tokio::task::JoinError>,
    ) -> Result<(), EngineError> {
        let task = match &done {
            Ok((task, _)) => *task,
            Err(e) => e.id(),
        };
        let Some((id, n)) = self.jobs.tasks.remove(&task) else {
            return Ok(());
        };
        if self.jobs.running.get(&id).is_none_or(|(m, _)| *m != n) {
            return Ok(());
        }
        self.jobs.running.remove(&id);
        match done {
            Ok((_, Done::Provisioned(outcome))) => self.provisioned(outcome).await,
            Ok((_, Done::Restarted(restarted))) => self.restarted(restarted).await,
            Err(e) => {
                // A panicking provisioner: supervision retries a contract left in
                // `provisioning`.
                tracing::error!(contract = %id, error = %e, "job failed");
                Ok(())
            }
        }
    }

    async fn provisioned(&mut self, out: provisioning::Outcome) -> Result<(), EngineError> {
        self.journal.update(|j| {
            j.doomed.extend(out.doomed.iter().cloned());
        })?;
        let Some(owned) = self
            .journal
            .owned(&out.id)
            .filter(|o| o.version == out.version)
            .cloned()
        else {
            return Ok(());
        };
        let outcome = match &out.result {
            Ok(()) => Outcome::Ok,
            Err(e) if e.is_permanent() => Outcome::Failed,
            Err(_) => Outcome::Retry,
        };
        // A retry is not the end of the record's work: its latency runs on.
        let latency = match outcome {
            Outcome::Retry => None,
            _ => self.pending_since.remove(&owned.id).map(|t| t.elapsed()),
        };
        self.stats.converged(outcome, latency);
        match out.result {
            Ok(()) => {
                if self.set_phase(&owned.id, Phase::Running)? {
                    self.mesh_due.insert(owned.id.clone());
                    self.report(&owned.id).await?;
                }
                Ok(())
            }
            Err(e) => {
                if e.is_permanent() {
                    for name in crate::plan::resource_names(
                        &owned.id,
                        &owned.deployment,
                        Resource::Workload,
                    ) {
                        self.supervisor.forget(&name);
                    }
                    let failed = Phase::Failed {
                        message: e.to_string(),
                    };
                    if !self.set_phase(&owned.id, failed)? {
                        return Ok(());
                    }
                }
                let workloads = self.workload_reports(&owned).await;
                let refused = self.refused_updates.get(&owned.id).cloned();
                let report = reporting::failed(&owned, &e.to_string(), workloads, refused);
                self.publish(report).await
            }
        }
    }

    /// Moves contract `id` to `phase` through the journal's transition table; a change
    /// the table forbids is refused and logged (false), the contract left as it is.
    fn set_phase(&mut self, id: &str, phase: Phase) -> Result<bool, EngineError> {
        match self.journal.set_phase(id, phase) {
            Ok(()) => Ok(true),
            Err(e @ crate::journal::JournalError::IllegalTransition { .. }) => {
                tracing::error!(contract = %id, error = %e, "outcome dropped");
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn restarted(&mut self, r: supervision::Restarted) -> Result<(), EngineError> {
        if self
            .journal
            .owned(&r.id)
            .is_none_or(|o| o.version != r.version)
        {
            return Ok(());
        }
        for (workload, error) in &r.results {
            self.stats.restarted(error.is_none());
            let name = names::of(&r.id, workload);
            match error {
                None => self.restart_errors.remove(&name),
                Some(e) => self.restart_errors.insert(name, e.clone()),
            };
            self.journal.update(|j| {
                if let Some(owned) = j.owned.get_mut(&r.id) {
                    *owned.restarts.entry(workload.clone()).or_insert(0) += 1;
                }
            })?;
        }
        self.report(&r.id).await
    }

    /// Removes what `owned` has (see [`provisioning::teardown`]), on the loop: removals
    /// do not wait for a store.
    async fn teardown(&mut self, owned: &Owned, volumes: bool) -> Result<(), EngineError> {
        for name in crate::plan::resource_names(&owned.id, &owned.deployment, Resource::Workload) {
            self.supervisor.forget(&name);
        }
        let steps = provisioning::teardown(owned, volumes);
        let span = crate::plan::span(self.journal.data(), owned, &self.node());
        let out = provisioning::execute(&*self.provisioner, owned, span, steps).await;
        self.journal.update(|j| {
            j.doomed.extend(out.doomed);
            for v in &out.removed_volumes {
                j.doomed.remove(v);
            }
        })?;
        Ok(())
    }

    // ---- supervision and expiry ----

    /// Expiries, the end of their grace periods, retries of transient failures, and
    /// restarts of workloads that died (with backoff); then, every `log_refresh`, the
    /// running contracts' statuses.
    async fn supervision_pass(&mut self, now: Instant) -> Result<(), EngineError> {
        let wall = (self.clock)();
        for action in expiry::plan(self.journal.data(), wall, self.cfg.volume_grace) {
            self.expire(action).await?;
        }
        self.fencing_pass(now).await?;
        let owned: Vec<Owned> = self
            .journal
            .data()
            .owned
            .values()
            .filter(|o| !self.jobs.busy(&o.id) && !self.fenced.contains_key(&o.id))
            .cloned()
            .collect();
        let mut states = BTreeMap::new();
        for o in owned.iter().filter(|o| o.phase == Phase::Running) {
            for w in &o.deployment.workloads {
                let name = names::of(&o.id, &w.name);
                match self.provisioner.workload_state(&name).await {
                    Ok(s) => {
                        states.insert(name, s);
                    }
                    Err(e) => tracing::warn!(workload = %name, error = %e, "status unavailable"),
                }
            }
        }
        let inputs = supervision::Inputs {
            owned: &owned,
            states: &states,
            now,
        };
        for action in self.supervisor.plan(inputs) {
            let (id, workloads) = match action {
                supervision::Action::Provision(id) => (id, None),
                supervision::Action::Restart { id, workloads } => (id, Some(workloads)),
            };
            let Some(o) = owned.iter().find(|o| o.id == id) else {
                continue;
            };
            match workloads {
                None => self.spawn_provision(o, None),
                Some(workloads) => {
                    let (p, o) = (self.provisioner.clone(), o.clone());
                    let span = crate::plan::span(self.journal.data(), &o, &self.node());
                    self.spawn(id, async move {
                        Done::Restarted(supervision::restart(&*p, &o, workloads, span).await)
                    });
                }
            }
        }
        if self
            .logs_refreshed
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.log_refresh)
        {
            self.logs_refreshed = Some(now);
            let running: Vec<String> = owned
                .iter()
                .filter(|o| o.phase == Phase::Running && !self.jobs.busy(&o.id))
                .map(|o| o.id.clone())
                .collect();
            for id in running {
                self.report(&id).await?;
            }
        }
        Ok(())
    }

    async fn expire(&mut self, action: expiry::Action) -> Result<(), EngineError> {
        match action {
            expiry::Action::DeleteVolumes(r) => {
                tracing::info!(contract = %r.owned.id, "grace period after expiry over; deleting its volumes");
                self.journal.update(|j| {
                    j.retired.remove(&r.owned.id);
                    j.doomed.extend(crate::plan::resource_names(
                        &r.owned.id,
                        &r.owned.deployment,
                        Resource::Volume,
                    ));
                })?;
                self.teardown(&r.owned, true).await
            }
            expiry::Action::Expire {
                owned,
                volumes_until,
            } => {
                let id = owned.id.clone();
                tracing::info!(contract = %id, volumes_until, "expired; stopping its workloads, keeping its volumes");
                self.journal
                    .update(|j| expiry::journal_expire(j, &owned, volumes_until))?;
                self.jobs.abort(&id);
                self.pending_since.remove(&id);
                self.teardown(&owned, false).await?;
                self.mesh_forget(&owned, true).await;
                self.refused_updates.remove(&id);
                self.publish(StatusReport::new(
                    &id,
                    Some(owned.version),
                    State::Expired,
                    format!(
                        "expired; its workloads are stopped; its volumes are kept until {volumes_until} (unix seconds) unless its owner cancels it"
                    ),
                ))
                .await
            }
        }
    }

    // ---- orphans ----

    /// Removes what exists on the machine but belongs to no journalled contract, and
    /// quarantines unknown volumes ([`orphans`]).
    async fn collect_orphans(&mut self) -> Result<(), EngineError> {
        let inventory = match self.provisioner.inventory().await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list what exists; orphans stay for now");
                return Ok(());
            }
        };
        let mut quarantine = BTreeSet::new();
        let mut deleted = BTreeSet::new();
        for action in orphans::plan(&inventory, self.journal.data()) {
            match action {
                orphans::Action::Quarantine(name) => {
                    if self.journal.data().quarantined.contains(&name) {
                        // Said at the first collection that found it.
                        continue;
                    }
                    tracing::warn!(
                        volume = %name,
                        contract = names::owner(&name).unwrap_or(""),
                        "unknown volume quarantined: kept, never deleted on sight nor handed to a contract"
                    );
                    quarantine.insert(name);
                }
                orphans::Action::Remove(kind, name) => {
                    tracing::info!(resource = %name, kind = ?kind, "removing orphan");
                    let p = &self.provisioner;
                    let result = match kind {
                        Resource::Workload => p.remove_workload(&name).await,
                        Resource::Network => p.remove_network(&name).await,
                        Resource::Volume => p.remove_volume(&name).await,
                    };
                    match result {
                        Ok(()) if kind == Resource::Volume => {
                            deleted.insert(name);
                        }
                        Ok(()) => {}
                        Err(e) => {
                            tracing::warn!(resource = %name, error = %e, "orphan not removed")
                        }
                    }
                }
            }
        }
        self.journal
            .update(|j| orphans::journal_collected(j, &inventory, quarantine, &deleted))?;
        Ok(())
    }

    // ---- reporting ----

    async fn workload_reports(
        &self,
        owned: &Owned,
    ) -> BTreeMap<String, crate::status::WorkloadReport> {
        let mut out = BTreeMap::new();
        let span = crate::plan::span(self.journal.data(), owned, &self.node());
        for w in &owned.deployment.workloads {
            let status = self
                .provisioner
                .workload_status(&names::of(&owned.id, &w.name))
                .await;
            out.insert(
                w.name.clone(),
                reporting::workload_report(owned, &w.name, status, span),
            );
        }
        out
    }

    /// Publishes the current status of an owned contract if it changed (the local
    /// summaries follow every call, log lines included).
    async fn report(&mut self, id: &str) -> Result<(), EngineError> {
        let Some(owned) = self.journal.owned(id).cloned() else {
            return Ok(());
        };
        let workloads = self.workload_reports(&owned).await;
        let restart_error = owned
            .deployment
            .workloads
            .iter()
            .find_map(|w: &Workload| self.restart_errors.get(&names::of(id, &w.name)))
            .map(String::as_str);
        let mut report = reporting::status(
            &owned,
            workloads,
            restart_error,
            self.refused_updates.get(id).cloned(),
        );
        report.mesh = self.mesh_reports(id);
        self.publish(report).await
    }

    /// Signs and publishes `report` unless it says what the last one said. The local
    /// summaries get it whole; the notary gets what [`reporting::for_notary`] keeps.
    async fn publish(&mut self, report: StatusReport) -> Result<(), EngineError> {
        let owned = self.journal.owned(&report.contract);
        let summary = reporting::summary(&report, owned);
        self.summaries
            .send_if_modified(|list| reporting::fold(list, summary));
        let report = reporting::for_notary(report, owned);
        // A mesh section's counters alone are no change (they ride along when
        // something else changes).
        let settled = |r: &StatusReport| {
            let mut r = r.clone();
            r.mesh = r
                .mesh
                .iter()
                .map(crate::controllers::mesh::settled)
                .collect();
            r
        };
        if self.published.get(&report.contract).map(settled) == Some(settled(&report)) {
            return Ok(());
        }
        let key = match NotaryKey::status(&self.node(), &report.contract) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(contract = %report.contract, error = %e, "no status key for this id");
                return Ok(());
            }
        };
        let body = serde_json::to_value(&report).expect("a status report serializes");
        let record = Record::sign(&key, body, &self.node).map_err(zos_notary::NotaryError::from)?;
        if let Err(e) = self.notary.put(&record).await {
            // The notary may be away; the next change publishes again.
            tracing::warn!(contract = %report.contract, error = %e, "status not published");
            return Ok(());
        }
        tracing::info!(contract = %report.contract, state = ?report.state, message = %report.message, "status");
        self.published.insert(report.contract.clone(), report);
        Ok(())
    }
}

/// The status of a contract its owner cancelled, once everything it had is gone.
fn cancelled(id: &str, version: u64) -> StatusReport {
    StatusReport::new(
        id,
        Some(version),
        State::Cancelled,
        "cancelled by its owner; everything it had is removed",
    )
}
