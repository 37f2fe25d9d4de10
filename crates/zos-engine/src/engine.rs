//! The reconcile loop.
//!
//! Inputs: the contract records the notary holds for this node (a subscription: a
//! snapshot, then every change), the journal, what the provisioner finds on the
//! machine, and the clock. Outputs: kernel objects (through the [`Provisioner`]),
//! journal entries, and signed status records. Each step is idempotent, so the engine
//! can be killed at any point and started again: it re-adopts what runs, finishes what
//! was half made, and removes what nobody owns.
//!
//! Order: volumes, networks, then workloads (whose flists are fetched and verified by
//! the provisioner) on the way up; the reverse on the way down.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::net::Ipv4Addr;

use zos_contract::deployment::{parse_private_subnet, Workload};
use zos_contract::verify::verify_cancellation;
use zos_contract::{
    BlueprintRef, ContractRecord, Deployment, Digest, Limits, PublicKey, SecretKey,
    SignedBlueprint, SignedCancellation, SignedContract, VerifyContext,
};
use zos_notary::{KeyKind, KeyPrefix, Notary, NotaryKey, Record};

use crate::capacity::{self, Capacity, OverCapacity};
use crate::journal::{Journal, JournalStore, Owned, Phase};
use crate::names;
use crate::provision::{NetworkPlan, ProvisionError, Provisioner, WorkloadPlan, WorkloadState};
use crate::restart::Backoff;
use crate::status::{
    ContractSummary, ReasonReport, State, StatusReport, WorkloadReport, WorkloadSummary,
};

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
    pub restart_max: Duration,
    pub restart_reset: Duration,
    /// How often a running contract's status is published again when only its
    /// workloads' log tails changed (a VM's console comes seconds after "running").
    pub log_refresh: Duration,
    pub limits: Limits,
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
            limits: Limits::default(),
        }
    }
}

/// Why the engine itself (not one contract) cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
    #[error(transparent)]
    Notary(#[from] zos_notary::NotaryError),
    #[error("the notary watch ended")]
    WatchEnded,
}

/// The node's reconcile loop. See the module docs.
pub struct Engine<P, N, S: JournalStore> {
    node: SecretKey,
    cfg: EngineConfig,
    provisioner: P,
    notary: N,
    journal: Journal<S>,
    /// Per workload (node-wide name): restart backoff.
    backoff: HashMap<String, Backoff>,
    /// The last report published per contract: publish on change.
    published: HashMap<String, StatusReport>,
    /// When log tails were last looked at for a refresh.
    logs_refreshed: Option<Instant>,
    /// Unix seconds; a function so tests can move time.
    clock: fn() -> u64,
    /// The last report of every contract the node runs or refused, for the node's
    /// local status; updated on every report, published or not (the notary may be
    /// away, the console must still tell).
    summaries: tokio::sync::watch::Sender<Vec<ContractSummary>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl<P: Provisioner, N: Notary, S: JournalStore> Engine<P, N, S> {
    pub fn new(
        node: SecretKey,
        cfg: EngineConfig,
        provisioner: P,
        notary: N,
        journal: Journal<S>,
    ) -> Self {
        Engine {
            node,
            cfg,
            provisioner,
            notary,
            journal,
            backoff: HashMap::new(),
            published: HashMap::new(),
            logs_refreshed: None,
            clock: unix_now,
            summaries: tokio::sync::watch::channel(Vec::new()).0,
        }
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

    pub fn node(&self) -> PublicKey {
        self.node.public()
    }

    pub fn journal(&self) -> &Journal<S> {
        &self.journal
    }

    pub fn provisioner(&self) -> &P {
        &self.provisioner
    }

    /// Runs until `shutdown` resolves: subscribes to this node's contracts, starts up
    /// (re-adopt, clean orphans, catch up), then handles every change and supervises
    /// workloads. Workloads keep running after a shutdown: the next start re-adopts
    /// them.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<Self, EngineError> {
        let prefix = KeyPrefix::node_contracts(&self.node());
        let (existing, mut watch) = self.notary.subscribe(&prefix).await?;
        self.start(existing).await?;
        let mut tick = tokio::time::interval(self.cfg.supervise_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return Ok(self),
                record = watch.recv() => match record {
                    Some(record) => self.on_record(&record).await?,
                    None => return Err(EngineError::WatchEnded),
                },
                _ = tick.tick() => self.supervise(Instant::now()).await?,
            }
        }
    }

    /// Start-up: remove orphans, bring every owned contract back (re-adopting what
    /// runs), then handle the notary's snapshot.
    pub async fn start(&mut self, existing: Vec<Record>) -> Result<(), EngineError> {
        self.collect_orphans().await;
        let ids: Vec<String> = self.journal.data().owned.keys().cloned().collect();
        for id in ids {
            if let Some(owned) = self.journal.owned(&id).cloned() {
                if !matches!(owned.phase, Phase::Failed { .. }) {
                    tracing::info!(contract = %id, version = owned.version, "re-adopting");
                    self.provision(&owned, None).await?;
                }
            }
        }
        for record in &existing {
            self.on_record(record).await?;
        }
        Ok(())
    }

    /// Removes what exists on the machine but belongs to no owned contract, or is not
    /// part of its owner's deployment any more.
    async fn collect_orphans(&mut self) {
        let inventory = match self.provisioner.inventory().await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list what exists; orphans stay for now");
                return;
            }
        };
        let wanted = |kind: Kind, name: &str| -> bool {
            let Some(id) = names::owner(name) else {
                return false;
            };
            let Some(owned) = self.journal.owned(id) else {
                return false;
            };
            resource_names(&owned.id, &owned.deployment, kind).contains(name)
        };
        let orphans: Vec<(Kind, String)> = inventory
            .workloads
            .iter()
            .map(|n| (Kind::Workload, n))
            .chain(inventory.networks.iter().map(|n| (Kind::Network, n)))
            .chain(inventory.volumes.iter().map(|n| (Kind::Volume, n)))
            .filter(|(k, n)| !wanted(*k, n))
            .map(|(k, n)| (k, n.clone()))
            .collect();
        for (kind, name) in orphans {
            tracing::info!(resource = %name, kind = ?kind, "removing orphan");
            if let Err(e) = self.remove(kind, &name).await {
                tracing::warn!(resource = %name, error = %e, "orphan not removed");
            }
        }
    }

    async fn remove(&self, kind: Kind, name: &str) -> Result<(), ProvisionError> {
        match kind {
            Kind::Workload => self.provisioner.remove_workload(name).await,
            Kind::Network => self.provisioner.remove_network(name).await,
            Kind::Volume => self.provisioner.remove_volume(name).await,
        }
    }

    /// Handles one record from the notary (a contract or a cancellation).
    pub async fn on_record(&mut self, record: &Record) -> Result<(), EngineError> {
        let Ok(KeyKind::Contract { node, contract_id }) = record.notary_key().map(|k| k.kind())
        else {
            return Ok(());
        };
        if node != self.node() {
            return Ok(());
        }
        let parsed = ContractRecord::from_value(&record.body, &self.cfg.limits);
        match parsed {
            Ok(ContractRecord::Contract(doc)) => {
                if doc.contract.id != contract_id {
                    let report = refused_report(
                        &contract_id,
                        Some(doc.contract.version),
                        vec![ReasonReport {
                            code: "malformed".into(),
                            message: format!(
                                "record key names contract {contract_id}, the document {}",
                                doc.contract.id
                            ),
                        }],
                    );
                    return self.publish(report).await;
                }
                self.on_contract(&doc).await
            }
            Ok(ContractRecord::Cancellation(c)) => self.on_cancellation(&contract_id, &c).await,
            Err(e) => {
                let reason = zos_contract::Reason::from(e);
                self.publish(refused_report(&contract_id, None, vec![(&reason).into()]))
                    .await
            }
        }
    }

    async fn on_contract(&mut self, doc: &SignedContract) -> Result<(), EngineError> {
        let c = &doc.contract;
        let id = c.id.clone();
        // Re-deliveries and co-signatures of what runs already change nothing.
        if let Some(owned) = self.journal.owned(&id) {
            if owned.version == c.version && owned.digest == doc.digest {
                return Ok(());
            }
        }
        let blueprint = match &c.blueprint {
            BlueprintRef::Sha256(d) => self.blueprint(d).await,
            BlueprintRef::Embedded(_) => None,
        };
        // The context borrows a non-Sync resolver: it lives in this block only, never
        // across an await.
        let verdict = {
            let resolver = move |d: &Digest| blueprint.clone().filter(|b| b.digest == *d);
            let ctx = VerifyContext {
                now: (self.clock)(),
                node: Some(self.node()),
                accepted: self.journal.data().accepted.get(&id).copied(),
                resolve_blueprint: &resolver,
                trusted_authors: self.cfg.trusted_authors.as_ref(),
                limits: self.cfg.limits,
            };
            zos_contract::verify(doc, &ctx).into_result()
        };
        let accepted = match verdict {
            Ok(a) => a,
            Err(refusal) => {
                let replay_of_running = self.journal.owned(&id).is_some()
                    && refusal
                        .reasons
                        .iter()
                        .any(|r| matches!(r, zos_contract::Reason::Replay { .. }));
                tracing::warn!(contract = %id, version = c.version, %refusal, "contract refused");
                if replay_of_running {
                    // The running version's status stays; the replay is only logged.
                    return Ok(());
                }
                let reasons = refusal.reasons.iter().map(ReasonReport::from).collect();
                return self
                    .publish(refused_report(&id, Some(c.version), reasons))
                    .await;
            }
        };
        // Admission: what the other contracts reserve, plus this one.
        let used = capacity::used(
            self.journal
                .data()
                .owned
                .values()
                .filter(|o| o.id != id)
                .map(|o| &o.deployment),
        );
        if let Err(over) =
            capacity::admit(self.cfg.capacity, used, Capacity::of(&accepted.deployment))
        {
            tracing::warn!(contract = %id, %over, "contract refused");
            return self
                .publish(refused_report(
                    &id,
                    Some(c.version),
                    vec![over_reason(&over)],
                ))
                .await;
        }
        let previous = self.journal.owned(&id).cloned();
        let owned = Owned {
            id: id.clone(),
            version: accepted.version,
            digest: accepted.digest,
            owner: c.owner,
            expires: c.expires,
            deployment: accepted.deployment.clone(),
            phase: Phase::Provisioning,
            restarts: previous
                .as_ref()
                .map(|p| p.restarts.clone())
                .unwrap_or_default(),
        };
        self.journal.update(|j| {
            j.accepted
                .insert(id.clone(), (accepted.version, accepted.digest));
            j.owned.insert(id.clone(), owned.clone());
        })?;
        tracing::info!(contract = %id, version = owned.version, "contract accepted");
        self.publish(StatusReport::new(
            &id,
            Some(owned.version),
            State::Provisioning,
            "verified and admitted; provisioning",
        ))
        .await?;
        self.provision(&owned, previous.as_ref()).await
    }

    async fn blueprint(&self, digest: &Digest) -> Option<SignedBlueprint> {
        let record = self
            .notary
            .get(&NotaryKey::blueprint(digest))
            .await
            .ok()??;
        SignedBlueprint::from_value(&record.body, &self.cfg.limits).ok()
    }

    async fn on_cancellation(
        &mut self,
        contract_id: &str,
        cancel: &SignedCancellation,
    ) -> Result<(), EngineError> {
        let Some(owned) = self.journal.owned(contract_id).cloned() else {
            // Nothing runs here for it; a cancellation cannot be checked against a
            // contract this node never accepted, so it is only logged.
            tracing::info!(contract = %contract_id, "cancellation of a contract this node does not run");
            return Ok(());
        };
        if let Err(e) = verify_cancellation(cancel, &owned.id, &owned.owner, owned.version) {
            tracing::warn!(contract = %contract_id, error = %e, "cancellation refused");
            return Ok(());
        }
        tracing::info!(contract = %contract_id, "cancelled by its owner; tearing down");
        self.teardown(&owned).await;
        let marker = Digest::of(
            serde_json::to_string(&cancel.cancellation)
                .unwrap_or_default()
                .as_bytes(),
        );
        self.journal.update(|j| {
            j.owned.remove(contract_id);
            j.accepted.insert(
                contract_id.to_string(),
                (cancel.cancellation.version, marker),
            );
        })?;
        self.publish(StatusReport::new(
            contract_id,
            Some(cancel.cancellation.version),
            State::Cancelled,
            "cancelled by its owner; everything it had is removed",
        ))
        .await
    }

    /// Brings `owned` to its deployment: removes what `previous` (the version it
    /// replaces) had that the new one does not, then ensures volumes, networks and
    /// workloads in that order. Publishes the outcome.
    async fn provision(
        &mut self,
        owned: &Owned,
        previous: Option<&Owned>,
    ) -> Result<(), EngineError> {
        if let Some(prev) = previous {
            self.remove_replaced(prev, owned).await;
        }
        match self.ensure_all(owned).await {
            Ok(()) => {
                self.set_phase(&owned.id, Phase::Running)?;
                self.report(&owned.id).await
            }
            Err(e) => {
                tracing::warn!(contract = %owned.id, error = %e, permanent = e.permanent, "provisioning failed");
                if e.permanent {
                    // Nothing half-made stays behind a contract that cannot run.
                    self.teardown(owned).await;
                    self.set_phase(
                        &owned.id,
                        Phase::Failed {
                            message: e.to_string(),
                        },
                    )?;
                }
                let mut report =
                    StatusReport::new(&owned.id, Some(owned.version), State::Error, e.to_string());
                report.workloads = self.workload_reports(owned).await;
                self.publish(report).await
            }
        }
    }

    async fn ensure_all(&mut self, owned: &Owned) -> Result<(), ProvisionError> {
        let d = &owned.deployment;
        let mut paths = BTreeMap::new();
        for v in &d.volumes {
            let name = names::of(&owned.id, &v.name);
            let path = self.provisioner.ensure_volume(&name, v).await?;
            paths.insert(v.name.clone(), path);
        }
        for n in &d.networks {
            let plan = network_plan(&owned.id, d, &n.name)?;
            self.provisioner.ensure_network(&plan).await?;
        }
        for w in &d.workloads {
            let plan = plan_for(&owned.id, d, w, &paths)?;
            self.provisioner.ensure_workload(&plan).await?;
        }
        Ok(())
    }

    /// Removes, in reverse order, what `prev` has and `next` does not, and workloads
    /// whose spec changed (they are recreated by the ensure that follows). Volumes of
    /// the same name are kept: their data outlives a version change.
    async fn remove_replaced(&mut self, prev: &Owned, next: &Owned) {
        let same_workload = |w: &Workload| next.deployment.workloads.iter().any(|n| n == w);
        let changed_network = |name: &str| {
            let old = prev.deployment.networks.iter().find(|n| n.name == name);
            let new = next.deployment.networks.iter().find(|n| n.name == name);
            old != new
        };
        for w in &prev.deployment.workloads {
            let net_changed = w.network.as_deref().is_some_and(changed_network);
            if !same_workload(w) || net_changed {
                self.remove_logged(Kind::Workload, &names::of(&prev.id, &w.name))
                    .await;
            }
        }
        for n in &prev.deployment.networks {
            if changed_network(&n.name) {
                self.remove_logged(Kind::Network, &names::of(&prev.id, &n.name))
                    .await;
            }
        }
        for v in &prev.deployment.volumes {
            if !next.deployment.volumes.iter().any(|n| n.name == v.name) {
                self.remove_logged(Kind::Volume, &names::of(&prev.id, &v.name))
                    .await;
            }
        }
    }

    /// Removes everything `owned` has, workloads first.
    async fn teardown(&mut self, owned: &Owned) {
        for kind in [Kind::Workload, Kind::Network, Kind::Volume] {
            for name in resource_names(&owned.id, &owned.deployment, kind) {
                self.remove_logged(kind, &name).await;
                self.backoff.remove(&name);
            }
        }
    }

    async fn remove_logged(&self, kind: Kind, name: &str) {
        if let Err(e) = self.remove(kind, name).await {
            // Left for the orphan collector of the next start.
            tracing::warn!(resource = %name, kind = ?kind, error = %e, "not removed");
        }
    }

    fn set_phase(&mut self, id: &str, phase: Phase) -> Result<(), EngineError> {
        self.journal.update(|j| {
            if let Some(o) = j.owned.get_mut(id) {
                o.phase = phase;
            }
        })?;
        Ok(())
    }

    /// One supervision pass: expiries, retries of transient failures, and restarts of
    /// workloads that died (with backoff).
    pub async fn supervise(&mut self, now: Instant) -> Result<(), EngineError> {
        let wall = (self.clock)();
        let owned: Vec<Owned> = self.journal.data().owned.values().cloned().collect();
        for o in owned {
            if o.expires.is_some_and(|e| wall >= e) {
                tracing::info!(contract = %o.id, "expired; tearing down");
                self.teardown(&o).await;
                self.journal.update(|j| {
                    j.owned.remove(&o.id);
                })?;
                self.publish(StatusReport::new(
                    &o.id,
                    Some(o.version),
                    State::Expired,
                    "expired; everything it had is removed",
                ))
                .await?;
                continue;
            }
            match o.phase {
                Phase::Failed { .. } => continue,
                Phase::Provisioning => {
                    // A transient failure: try again, at the pace of the contract's
                    // own backoff.
                    let key = format!("{}#provision", o.id);
                    let due = self
                        .backoff
                        .entry(key.clone())
                        .or_insert_with(|| Backoff::new(self.cfg.restart_min, self.cfg.restart_max))
                        .due(now);
                    if due {
                        self.backoff.get_mut(&key).expect("inserted").failed(now);
                        self.provision(&o, None).await?;
                    }
                    continue;
                }
                Phase::Running => {}
            }
            let mut changed = false;
            for w in &o.deployment.workloads {
                let name = names::of(&o.id, &w.name);
                let state = match self.provisioner.workload_state(&name).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(workload = %name, error = %e, "status unavailable");
                        continue;
                    }
                };
                let backoff = self
                    .backoff
                    .entry(name.clone())
                    .or_insert_with(|| Backoff::new(self.cfg.restart_min, self.cfg.restart_max));
                match state {
                    Some(WorkloadState::Running) => {
                        backoff.running(now, self.cfg.restart_reset);
                    }
                    exited => {
                        if !backoff.due(now) {
                            continue;
                        }
                        backoff.failed(now);
                        tracing::warn!(workload = %name, state = ?exited, "workload not running; restarting");
                        let paths = self.volume_paths(&o).await;
                        let result = match plan_for(&o.id, &o.deployment, w, &paths) {
                            Ok(plan) if exited.is_some() => {
                                self.provisioner.restart_workload(&plan).await
                            }
                            Ok(plan) => self.provisioner.ensure_workload(&plan).await,
                            Err(e) => Err(e),
                        };
                        if let Err(e) = result {
                            tracing::warn!(workload = %name, error = %e, "restart failed");
                        }
                        let w_name = w.name.clone();
                        self.journal.update(|j| {
                            if let Some(owned) = j.owned.get_mut(&o.id) {
                                *owned.restarts.entry(w_name).or_insert(0) += 1;
                            }
                        })?;
                        changed = true;
                    }
                }
            }
            if changed {
                self.report(&o.id).await?;
            }
        }
        if self
            .logs_refreshed
            .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.log_refresh)
        {
            self.logs_refreshed = Some(now);
            let running: Vec<String> = self
                .journal
                .data()
                .owned
                .values()
                .filter(|o| matches!(o.phase, Phase::Running))
                .map(|o| o.id.clone())
                .collect();
            for id in running {
                self.report_as(&id, Compare::WithLogs).await?;
            }
        }
        Ok(())
    }

    /// The volume paths of `owned` (from the idempotent ensure).
    async fn volume_paths(&self, owned: &Owned) -> BTreeMap<String, std::path::PathBuf> {
        let mut paths = BTreeMap::new();
        for v in &owned.deployment.volumes {
            if let Ok(p) = self
                .provisioner
                .ensure_volume(&names::of(&owned.id, &v.name), v)
                .await
            {
                paths.insert(v.name.clone(), p);
            }
        }
        paths
    }

    async fn workload_reports(&self, owned: &Owned) -> BTreeMap<String, WorkloadReport> {
        let mut out = BTreeMap::new();
        for w in &owned.deployment.workloads {
            let name = names::of(&owned.id, &w.name);
            let restarts = owned.restarts.get(&w.name).copied().unwrap_or(0);
            // The engine assigned the address; a provisioner may know better (a VM).
            let assigned = w
                .network
                .as_deref()
                .and_then(|net| addresses(&owned.deployment, net).ok())
                .and_then(|(_, ips)| ips.get(&w.name).copied());
            let report = match self.provisioner.workload_status(&name).await {
                Ok(Some(s)) => WorkloadReport {
                    state: match s.state {
                        WorkloadState::Running => "running".into(),
                        WorkloadState::Exited { .. } => "exited".into(),
                    },
                    address: s.address.or(assigned),
                    restarts,
                    runtime: s.runtime,
                    log_tail: s.log_tail,
                },
                Ok(None) => WorkloadReport {
                    state: "absent".into(),
                    restarts,
                    ..Default::default()
                },
                Err(e) => WorkloadReport {
                    state: format!("unknown: {e}"),
                    restarts,
                    ..Default::default()
                },
            };
            out.insert(w.name.clone(), report);
        }
        out
    }

    /// Publishes the current status of an owned contract if it changed.
    async fn report(&mut self, id: &str) -> Result<(), EngineError> {
        self.report_as(id, Compare::WithoutLogs).await
    }

    async fn report_as(&mut self, id: &str, compare: Compare) -> Result<(), EngineError> {
        let Some(owned) = self.journal.owned(id).cloned() else {
            return Ok(());
        };
        let workloads = self.workload_reports(&owned).await;
        let all_running = workloads.values().all(|w| w.state == "running");
        let (state, message) = match (&owned.phase, all_running) {
            (Phase::Failed { message }, _) => (State::Error, message.clone()),
            (Phase::Provisioning, _) => (State::Provisioning, "provisioning".to_string()),
            (Phase::Running, true) => (State::Ok, "every workload runs".to_string()),
            (Phase::Running, false) => (
                State::Error,
                "a workload is not running; restarting it with backoff".to_string(),
            ),
        };
        let mut report = StatusReport::new(id, Some(owned.version), state, message);
        report.workloads = workloads;
        self.publish_as(report, compare).await
    }

    async fn publish(&mut self, report: StatusReport) -> Result<(), EngineError> {
        self.publish_as(report, Compare::WithoutLogs).await
    }

    /// Signs and publishes `report` unless it says what the last one said. Log tails
    /// change all the time: they ride along with real changes, and count only on the
    /// periodic refresh ([`EngineConfig::log_refresh`]).
    async fn publish_as(
        &mut self,
        report: StatusReport,
        compare: Compare,
    ) -> Result<(), EngineError> {
        self.summarize(&report);
        let without_logs = |r: &StatusReport| {
            let mut r = r.clone();
            r.workloads.values_mut().for_each(|w| w.log_tail.clear());
            r
        };
        let same = self
            .published
            .get(&report.contract)
            .is_some_and(|last| match compare {
                Compare::WithLogs => *last == report,
                Compare::WithoutLogs => without_logs(last) == without_logs(&report),
            });
        if same {
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

impl<P, N, S: JournalStore> Engine<P, N, S> {
    /// Folds `report` into the summaries (see [`Engine::summaries`]).
    fn summarize(&self, report: &StatusReport) {
        let owned = self.journal.owned(&report.contract);
        let summary = ContractSummary {
            contract: report.contract.clone(),
            version: report.version,
            state: report.state,
            message: report.message.clone(),
            reserved: owned
                .map(|o| Capacity::of(&o.deployment))
                .unwrap_or_default(),
            workloads: report
                .workloads
                .iter()
                .map(|(name, w)| WorkloadSummary {
                    name: name.clone(),
                    kind: owned.and_then(|o| {
                        o.deployment
                            .workloads
                            .iter()
                            .find(|d| d.name == *name)
                            .map(|d| d.kind)
                    }),
                    state: w.state.clone(),
                    restarts: w.restarts,
                    address: w.address,
                    runtime: w.runtime.clone(),
                    output: w.log_tail.last().cloned(),
                })
                .collect(),
        };
        let gone = matches!(summary.state, State::Cancelled | State::Expired);
        self.summaries.send_if_modified(|list| {
            match list.binary_search_by(|s| s.contract.cmp(&summary.contract)) {
                Ok(i) if gone => {
                    list.remove(i);
                    true
                }
                Ok(i) if list[i] == summary => false,
                Ok(i) => {
                    list[i] = summary;
                    true
                }
                Err(_) if gone => false,
                Err(i) => {
                    list.insert(i, summary);
                    true
                }
            }
        });
    }
}

/// Whether a report whose log tails alone changed is a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    WithLogs,
    WithoutLogs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Volume,
    Network,
    Workload,
}

fn resource_names(id: &str, d: &Deployment, kind: Kind) -> BTreeSet<String> {
    let names: Vec<&str> = match kind {
        Kind::Volume => d.volumes.iter().map(|v| v.name.as_str()).collect(),
        Kind::Network => d.networks.iter().map(|n| n.name.as_str()).collect(),
        Kind::Workload => d.workloads.iter().map(|w| w.name.as_str()).collect(),
    };
    names.into_iter().map(|n| names::of(id, n)).collect()
}

/// The addresses on network `net`: the gateway is the subnet's first host, then the
/// workloads on it in deployment order (`.2`, `.3`, ...).
fn addresses(
    d: &Deployment,
    net: &str,
) -> Result<(NetworkPlan, BTreeMap<String, Ipv4Addr>), String> {
    let spec = d
        .networks
        .iter()
        .find(|n| n.name == net)
        .ok_or_else(|| format!("no network {net:?}"))?;
    let (base, len) = parse_private_subnet(&spec.subnet)?;
    let base = u32::from(base);
    // Hosts are base+1 ..= broadcast-1.
    let hosts = (1u64 << (32 - u32::from(len))) - 2;
    let on_net: Vec<&Workload> = d
        .workloads
        .iter()
        .filter(|w| w.network.as_deref() == Some(net))
        .collect();
    if on_net.len() as u64 + 1 > hosts {
        return Err(format!(
            "{} workloads and a gateway do not fit in {} ({hosts} hosts)",
            on_net.len(),
            spec.subnet
        ));
    }
    let mut by_workload = BTreeMap::new();
    let mut forwards = Vec::new();
    for (i, w) in on_net.iter().enumerate() {
        let ip = Ipv4Addr::from(base + 2 + i as u32);
        by_workload.insert(w.name.clone(), ip);
        forwards.extend(w.ports.iter().map(|p| (ip, p.clone())));
    }
    let plan = NetworkPlan {
        name: String::new(),
        subnet: Ipv4Addr::from(base),
        prefix_len: len,
        gateway: Ipv4Addr::from(base + 1),
        forwards,
    };
    Ok((plan, by_workload))
}

fn network_plan(id: &str, d: &Deployment, net: &str) -> Result<NetworkPlan, ProvisionError> {
    let name = names::of(id, net);
    let (mut plan, _) =
        addresses(d, net).map_err(|e| ProvisionError::new("network", &name, e).permanent())?;
    plan.name = name;
    Ok(plan)
}

fn plan_for(
    id: &str,
    d: &Deployment,
    w: &Workload,
    volume_paths: &BTreeMap<String, std::path::PathBuf>,
) -> Result<WorkloadPlan, ProvisionError> {
    let name = names::of(id, &w.name);
    let network = match w.network.as_deref() {
        Some(net) => {
            let (mut plan, ips) = addresses(d, net)
                .map_err(|e| ProvisionError::new("network", &names::of(id, net), e).permanent())?;
            plan.name = names::of(id, net);
            Some((plan, ips[&w.name]))
        }
        None => None,
    };
    Ok(WorkloadPlan {
        name,
        workload: w.clone(),
        network,
        mounts: w
            .mounts
            .iter()
            .filter_map(|m| {
                volume_paths
                    .get(&m.volume)
                    .map(|p| (p.clone(), m.path.clone(), m.read_only))
            })
            .collect(),
    })
}

fn refused_report(id: &str, version: Option<u64>, reasons: Vec<ReasonReport>) -> StatusReport {
    let message = reasons
        .iter()
        .map(|r| format!("[{}] {}", r.code, r.message))
        .collect::<Vec<_>>()
        .join("; ");
    let mut report = StatusReport::new(id, version, State::Refused, message);
    report.reasons = reasons;
    report
}

fn over_reason(over: &OverCapacity) -> ReasonReport {
    ReasonReport {
        code: "over_capacity".into(),
        message: over.to_string(),
    }
}
