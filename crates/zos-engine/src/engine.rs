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
    check_update, BlueprintRef, ContractRecord, Deployment, Digest, Limits, PublicKey, SecretKey,
    SignedBlueprint, SignedCancellation, SignedContract, Signers, VerifyContext,
};
use zos_notary::{KeyKind, KeyPrefix, Notary, NotaryKey, Record};

use crate::capacity::{self, Capacity, OverCapacity};
use crate::journal::{Journal, JournalStore, Owned, Phase, Retired};
use crate::names;
use crate::provision::{NetworkPlan, ProvisionError, Provisioner, WorkloadPlan, WorkloadState};
use crate::restart::Backoff;
use crate::status::{
    ContractSummary, ReasonReport, RefusedUpdate, State, StatusReport, WorkloadReport,
    WorkloadSummary,
};

/// How long an expired contract's volumes are kept for its owner (who may publish a
/// new version that adopts them, or cancel to delete them at once): 7 days.
pub const VOLUME_GRACE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How many owner-signed cancellations of a contract this node does not run are kept
/// per contract id (the highest versions).
pub const MAX_TOMBSTONES: usize = 8;

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
    /// How long an expired contract's volumes are kept ([`VOLUME_GRACE`]).
    pub volume_grace: Duration,
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
            volume_grace: VOLUME_GRACE,
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
            refused_updates: HashMap::new(),
            restart_errors: HashMap::new(),
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
        self.collect_orphans().await?;
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

    /// Deals with what exists on the machine but belongs to no journalled contract (or
    /// is not part of its owner's deployment any more). Workloads and networks hold no
    /// data: they are removed. A volume is removed only when its deletion was
    /// authorised before (see [`JournalData::doomed`]); any other is quarantined: kept,
    /// reported (a warning and the journal's `quarantined`), never handed to a contract.
    ///
    /// [`JournalData::doomed`]: crate::journal::JournalData::doomed
    async fn collect_orphans(&mut self) -> Result<(), EngineError> {
        let inventory = match self.provisioner.inventory().await {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list what exists; orphans stay for now");
                return Ok(());
            }
        };
        let data = self.journal.data();
        let wanted = |kind: Kind, name: &str| -> bool {
            let Some(id) = names::owner(name) else {
                return false;
            };
            if let Some(owned) = data.owned.get(id) {
                return resource_names(&owned.id, &owned.deployment, kind).contains(name);
            }
            kind == Kind::Volume
                && data.retired.get(id).is_some_and(|r| {
                    resource_names(&r.owned.id, &r.owned.deployment, kind).contains(name)
                })
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
        let doomed = data.doomed.clone();
        let mut quarantine = BTreeSet::new();
        let mut deleted = BTreeSet::new();
        for (kind, name) in orphans {
            if kind == Kind::Volume && !doomed.contains(&name) {
                tracing::warn!(
                    volume = %name,
                    contract = names::owner(&name).unwrap_or(""),
                    "unknown volume quarantined: kept, never deleted on sight nor handed to a contract"
                );
                quarantine.insert(name);
                continue;
            }
            tracing::info!(resource = %name, kind = ?kind, "removing orphan");
            match self.remove(kind, &name).await {
                Ok(()) if kind == Kind::Volume => {
                    deleted.insert(name);
                }
                Ok(()) => {}
                Err(e) => tracing::warn!(resource = %name, error = %e, "orphan not removed"),
            }
        }
        self.journal.update(|j| {
            j.quarantined.extend(quarantine);
            j.quarantined.retain(|q| inventory.volumes.contains(q));
            j.doomed
                .retain(|d| inventory.volumes.contains(d) && !deleted.contains(d));
        })?;
        Ok(())
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
                    let reasons = vec![ReasonReport {
                        code: "malformed".into(),
                        message: format!(
                            "record key names contract {contract_id}, the document {}",
                            doc.contract.id
                        ),
                    }];
                    return self
                        .refuse(&contract_id, Some(doc.contract.version), reasons)
                        .await;
                }
                self.on_contract(&doc).await
            }
            Ok(ContractRecord::Cancellation(c)) => self.on_cancellation(&contract_id, &c).await,
            Err(e) => {
                let reason = zos_contract::Reason::from(e);
                self.refuse(&contract_id, None, vec![(&reason).into()])
                    .await
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
        let report = refused_report(id, version, reasons);
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

    async fn on_contract(&mut self, doc: &SignedContract) -> Result<(), EngineError> {
        let c = &doc.contract;
        let id = c.id.clone();
        // Re-deliveries and co-signatures of what runs already change nothing.
        if let Some(owned) = self.journal.owned(&id) {
            if owned.version == c.version && owned.digest == doc.digest {
                return Ok(());
            }
        }
        // Who governs this id now: the contract that runs, or an expired one whose
        // volumes wait out their grace period. A new version must be its update.
        let governing: Option<Owned> = self.journal.owned(&id).cloned().or_else(|| {
            self.journal
                .data()
                .retired
                .get(&id)
                .map(|r| r.owned.clone())
        });
        // Signatures of governing stakeholders the new document drops count for the
        // update rule only; verification judges the document on its own terms.
        let checked = match governing.as_ref().and_then(|g| g.signers.as_ref()) {
            Some(signers) => zos_contract::update::for_verification(signers, doc),
            None => doc.clone(),
        };
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
            let verification = zos_contract::verify(&checked, &ctx);
            for warning in &verification.warnings {
                // Signature entries that did not count (docs/contract-format.md §4):
                // anyone can add one, so they refuse nothing while the rules are met.
                tracing::warn!(contract = %id, version = c.version, %warning, "signature entry not counted");
            }
            verification.into_result()
        };
        let mut reasons: Vec<ReasonReport> = Vec::new();
        let accepted = match verdict {
            Ok(a) => Some(a),
            Err(refusal) => {
                let replay_of_running = self.journal.owned(&id).is_some()
                    && refusal
                        .reasons
                        .iter()
                        .any(|r| matches!(r, zos_contract::Reason::Replay { .. }));
                if replay_of_running {
                    // The running version's status stays; the replay is only logged.
                    tracing::warn!(contract = %id, version = c.version, %refusal, "replay refused");
                    return Ok(());
                }
                reasons.extend(refusal.reasons.iter().map(ReasonReport::from));
                None
            }
        };
        if let Some(g) = &governing {
            match &g.signers {
                Some(signers) => {
                    if let Err(refusal) = check_update(signers, doc) {
                        reasons.extend(refusal.reasons.iter().map(ReasonReport::from));
                    }
                }
                None => reasons.push(ReasonReport {
                    code: "update_signers_unknown".into(),
                    message: format!(
                        "version {} was journalled without its stakeholders: it takes no update; its owner cancels it and publishes again",
                        g.version
                    ),
                }),
            }
        }
        let tombstone = self.journal.data().tombstones.get(&id).and_then(|ts| {
            ts.iter()
                .find(|t| t.cancellation.owner == c.owner && t.cancellation.version >= c.version)
        });
        if let Some(t) = tombstone {
            reasons.push(ReasonReport {
                code: "cancelled".into(),
                message: format!(
                    "its owner cancelled it at version {}; version {} is not above that",
                    t.cancellation.version, c.version
                ),
            });
        }
        if let Some(a) = &accepted {
            for v in &a.deployment.volumes {
                let name = names::of(&id, &v.name);
                if self.journal.data().quarantined.contains(&name) {
                    reasons.push(ReasonReport {
                        code: "volume_quarantined".into(),
                        message: format!(
                            "volume {name} exists and holds data of an unknown owner: it is quarantined, never handed to a contract"
                        ),
                    });
                }
            }
        }
        let accepted = match accepted {
            Some(a) if reasons.is_empty() => a,
            _ => return self.refuse(&id, Some(c.version), reasons).await,
        };
        // Admission: what the other contracts reserve (and the volumes of expired
        // ones in their grace period), plus this one.
        let data = self.journal.data();
        let kept: Vec<Deployment> = data
            .retired
            .values()
            .filter(|r| r.owned.id != id)
            .map(|r| Deployment {
                networks: Vec::new(),
                volumes: r.owned.deployment.volumes.clone(),
                workloads: Vec::new(),
                publish_logs: false,
            })
            .collect();
        let used = capacity::used(
            data.owned
                .values()
                .filter(|o| o.id != id)
                .map(|o| &o.deployment)
                .chain(kept.iter()),
        );
        if let Err(over) =
            capacity::admit(self.cfg.capacity, used, Capacity::of(&accepted.deployment))
        {
            return self
                .refuse(&id, Some(c.version), vec![over_reason(&over)])
                .await;
        }
        let owned = Owned {
            id: id.clone(),
            version: accepted.version,
            digest: accepted.digest,
            owner: c.owner,
            expires: c.expires,
            deployment: accepted.deployment.clone(),
            phase: Phase::Provisioning,
            restarts: governing
                .as_ref()
                .map(|p| p.restarts.clone())
                .unwrap_or_default(),
            signers: Some(Signers::from(c)),
        };
        self.journal.update(|j| {
            j.accepted
                .insert(id.clone(), (accepted.version, accepted.digest));
            j.owned.insert(id.clone(), owned.clone());
            j.retired.remove(&id);
            if let Some(ts) = j.tombstones.get_mut(&id) {
                ts.retain(|t| t.cancellation.version > accepted.version);
                if ts.is_empty() {
                    j.tombstones.remove(&id);
                }
            }
        })?;
        self.refused_updates.remove(&id);
        tracing::info!(contract = %id, version = owned.version, "contract accepted");
        self.publish(StatusReport::new(
            &id,
            Some(owned.version),
            State::Provisioning,
            "verified and admitted; provisioning",
        ))
        .await?;
        self.provision(&owned, governing.as_ref()).await
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
        let version = cancel.cancellation.version;
        // The running contract, or an expired one whose volumes wait: its owner's
        // cancellation removes everything it still has, volumes included.
        let (target, running) = match (
            self.journal.owned(contract_id),
            self.journal.data().retired.get(contract_id),
        ) {
            (Some(o), _) => (o.clone(), true),
            (None, Some(r)) => (r.owned.clone(), false),
            (None, None) => return self.keep_tombstone(contract_id, cancel),
        };
        if let Err(e) = verify_cancellation(cancel, &target.id, &target.owner, target.version) {
            tracing::warn!(contract = %contract_id, version, error = %e, "cancellation refused");
            return Ok(());
        }
        tracing::info!(contract = %contract_id, version, running, "cancelled by its owner; tearing down");
        self.teardown(&target, true).await?;
        let marker = Digest::of(
            serde_json::to_string(&cancel.cancellation)
                .unwrap_or_default()
                .as_bytes(),
        );
        self.journal.update(|j| {
            j.owned.remove(contract_id);
            j.retired.remove(contract_id);
            j.accepted
                .insert(contract_id.to_string(), (version, marker));
        })?;
        self.refused_updates.remove(contract_id);
        self.publish(StatusReport::new(
            contract_id,
            Some(version),
            State::Cancelled,
            "cancelled by its owner; everything it had is removed",
        ))
        .await
    }

    /// A cancellation of a contract this node does not run: if its owner's signature
    /// verifies, it is journalled as a tombstone, so that this owner's contract at a
    /// version not above it is refused when it comes (see [`Self::on_contract`]).
    fn keep_tombstone(
        &mut self,
        contract_id: &str,
        cancel: &SignedCancellation,
    ) -> Result<(), EngineError> {
        let c = &cancel.cancellation;
        if c.id != contract_id || cancel.check_signature().is_err() {
            tracing::warn!(contract = %contract_id, version = c.version, "cancellation refused: not for this id, or its signature does not verify");
            return Ok(());
        }
        if self
            .journal
            .data()
            .accepted
            .get(contract_id)
            .is_some_and(|(v, _)| *v >= c.version)
        {
            tracing::info!(contract = %contract_id, version = c.version, "cancellation not above what this node accepted; ignored");
            return Ok(());
        }
        tracing::info!(contract = %contract_id, version = c.version, owner = %c.owner, "cancellation of a contract this node does not run: kept as a tombstone");
        self.journal.update(|j| {
            let ts = j.tombstones.entry(contract_id.to_string()).or_default();
            match ts.iter_mut().find(|t| t.cancellation.owner == c.owner) {
                Some(t) if t.cancellation.version >= c.version => {}
                Some(t) => *t = cancel.clone(),
                None => ts.push(cancel.clone()),
            }
            // Bounded: anyone may sign a cancellation of any id with a key of theirs.
            // The lowest versions go first.
            ts.sort_by_key(|t| std::cmp::Reverse(t.cancellation.version));
            ts.truncate(MAX_TOMBSTONES);
        })?;
        Ok(())
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
            self.remove_replaced(prev, owned).await?;
        }
        match self.ensure_all(owned).await {
            Ok(()) => {
                self.set_phase(&owned.id, Phase::Running)?;
                self.report(&owned.id).await
            }
            Err(e) => {
                tracing::warn!(contract = %owned.id, error = %e, permanent = e.permanent, "provisioning failed");
                if e.permanent {
                    // Nothing that runs stays behind a contract that cannot run; its
                    // volumes stay (they may hold the tenant's data): they go only on
                    // its owner's cancellation or after its expiry's grace period.
                    self.teardown(owned, false).await?;
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
                report.refused_update = self.refused_updates.get(&owned.id).cloned();
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
    /// the same name are kept: their data outlives a version change. A volume the new
    /// version drops goes: the update is signed by the owner and the running version's
    /// stakeholders ([`check_update`]).
    async fn remove_replaced(&mut self, prev: &Owned, next: &Owned) -> Result<(), EngineError> {
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
                self.remove_volume_authorised(&names::of(&prev.id, &v.name))
                    .await?;
            }
        }
        Ok(())
    }

    /// Removes what `owned` has, workloads first; its volumes only with `volumes`
    /// (an owner's cancellation, the end of an expiry's grace period).
    async fn teardown(&mut self, owned: &Owned, volumes: bool) -> Result<(), EngineError> {
        for kind in [Kind::Workload, Kind::Network] {
            for name in resource_names(&owned.id, &owned.deployment, kind) {
                self.remove_logged(kind, &name).await;
                self.backoff.remove(&name);
            }
        }
        if volumes {
            for name in resource_names(&owned.id, &owned.deployment, Kind::Volume) {
                self.remove_volume_authorised(&name).await?;
            }
        }
        Ok(())
    }

    async fn remove_logged(&self, kind: Kind, name: &str) {
        if let Err(e) = self.remove(kind, name).await {
            // Left for the orphan collector of the next start.
            tracing::warn!(resource = %name, kind = ?kind, error = %e, "not removed");
        }
    }

    /// Removes a volume whose deletion its owner authorised; when that fails, the
    /// journal says so and the next start's orphan collection removes it (instead of
    /// quarantining it as unknown).
    async fn remove_volume_authorised(&mut self, name: &str) -> Result<(), EngineError> {
        if let Err(e) = self.provisioner.remove_volume(name).await {
            tracing::warn!(volume = %name, error = %e, "volume not removed; removed at the next start");
            self.journal.update(|j| {
                j.doomed.insert(name.to_string());
            })?;
        }
        Ok(())
    }

    fn set_phase(&mut self, id: &str, phase: Phase) -> Result<(), EngineError> {
        self.journal.update(|j| {
            if let Some(o) = j.owned.get_mut(id) {
                o.phase = phase;
            }
        })?;
        Ok(())
    }

    /// One supervision pass: expiries, the end of their grace periods, retries of
    /// transient failures, and restarts of workloads that died (with backoff).
    pub async fn supervise(&mut self, now: Instant) -> Result<(), EngineError> {
        let wall = (self.clock)();
        let over: Vec<Retired> = self
            .journal
            .data()
            .retired
            .values()
            .filter(|r| wall >= r.volumes_until)
            .cloned()
            .collect();
        for r in over {
            tracing::info!(contract = %r.owned.id, "grace period after expiry over; deleting its volumes");
            self.teardown(&r.owned, true).await?;
            self.journal.update(|j| {
                j.retired.remove(&r.owned.id);
            })?;
        }
        let owned: Vec<Owned> = self.journal.data().owned.values().cloned().collect();
        for o in owned {
            if let Some(expires) = o.expires.filter(|e| wall >= *e) {
                let until = wall
                    .max(expires)
                    .saturating_add(self.cfg.volume_grace.as_secs());
                tracing::info!(contract = %o.id, volumes_until = until, "expired; stopping its workloads, keeping its volumes");
                self.teardown(&o, false).await?;
                self.journal.update(|j| {
                    j.owned.remove(&o.id);
                    j.retired.insert(
                        o.id.clone(),
                        Retired {
                            owned: o.clone(),
                            volumes_until: until,
                        },
                    );
                })?;
                self.refused_updates.remove(&o.id);
                self.publish(StatusReport::new(
                    &o.id,
                    Some(o.version),
                    State::Expired,
                    format!(
                        "expired; its workloads are stopped; its volumes are kept until {until} (unix seconds) unless its owner cancels it"
                    ),
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
                        match result {
                            Ok(_) => {
                                self.restart_errors.remove(&name);
                            }
                            Err(e) => {
                                tracing::warn!(workload = %name, error = %e, "restart failed");
                                self.restart_errors.insert(name.clone(), e.to_string());
                            }
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
                self.report(&id).await?;
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

    /// Publishes the current status of an owned contract if it changed (the local
    /// summaries follow every call, log lines included).
    async fn report(&mut self, id: &str) -> Result<(), EngineError> {
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
                match owned
                    .deployment
                    .workloads
                    .iter()
                    .find_map(|w| self.restart_errors.get(&names::of(id, &w.name)))
                {
                    Some(e) => format!(
                        "a workload is not running; restarting it with backoff (last restart: {e})"
                    ),
                    None => "a workload is not running; restarting it with backoff".to_string(),
                },
            ),
        };
        let mut report = StatusReport::new(id, Some(owned.version), state, message);
        report.workloads = workloads;
        report.refused_update = self.refused_updates.get(id).cloned();
        self.publish(report).await
    }

    /// Signs and publishes `report` unless it says what the last one said. The local
    /// summaries get it whole; the notary gets log tails only for a contract whose
    /// signed deployment sets `publish_logs`: a workload's output is its tenant's, and
    /// the notary is shared (docs/engine.md).
    async fn publish(&mut self, mut report: StatusReport) -> Result<(), EngineError> {
        self.summarize(&report);
        let publish_logs = self
            .journal
            .data()
            .owned
            .get(&report.contract)
            .is_some_and(|o| o.version == report.version.unwrap_or(0) && o.deployment.publish_logs);
        if !publish_logs {
            report
                .workloads
                .values_mut()
                .for_each(|w| w.log_tail.clear());
        }
        let same = self
            .published
            .get(&report.contract)
            .is_some_and(|last| *last == report);
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
        egress_allow: spec
            .egress_allow
            .iter()
            .map(|c| zos_contract::deployment::parse_cidr(c))
            .collect::<Result<_, _>>()?,
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
