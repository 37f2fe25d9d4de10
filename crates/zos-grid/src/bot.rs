//! The orchestrator (`zos bot run`): reads the grid from the notary, plans each of its
//! placement contracts ([`crate::plan`]) and writes what the plan says (docs/grid.md).
//!
//! One [`Bot::round`] is list, plan, write:
//! 1. the placement contracts under `grid/` that name this bot's key as orchestrator,
//!    each verified in full (for no node in particular) with its blueprint;
//! 2. the farm's nodes: registrations (farm, capacity), liveness records
//!    (`nodes/<n>/alive`), heartbeats (what is reserved), statuses (ok or refused);
//! 3. per contract, the plan; then the placement record by compare-and-swap (a
//!    conflict means another writer, a stale or a new leader, wrote since the read: the
//!    contract is planned again next round from what is then there), and only after it
//!    the signed assignments, and the deletion of the assignment a move replaced.
//!
//! **Liveness is the node's leased record, measured on the bot's own clock**: a node is
//! present while its `nodes/<n>/alive` record is (the node keeps its lease alive; etcd,
//! or on `dir://` the reader's clock, expires it), and lost once the record has been
//! absent for more than `after_s` on the bot's clock, counted from the first round that
//! saw it absent. Nothing the node writes in a record (a time, a TTL) is used for timing.
//! A bot that starts counts every absent node as seen absent at its start, which can
//! delay a move by one `after_s`, never hasten it. Heartbeats only tell what a node has
//! reserved.
//!
//! **Drains** (docs/grid.md, "Drain"): a node whose farmer signed
//! `grid/<farm>/drains/<node>` with `{"drained": true}` gets nothing new, and its
//! replicas are handed over make-before-break ([`crate::plan`]). The notary stores a
//! drain whoever signed it, so the bot reads the farm record `farms/<farm>` and accepts
//! a drain only from its farmer: the first farmer it saw for the farm, read when it first
//! sees a contract or a drain there (a farm record replaced later by another key's is
//! not believed, as nodes pin their farmer), and per drain
//! key never an older record than one it accepted (a replayed drain after an undrain).
//! Any other drain is ignored, logged and listed in [`Round::ignored_drains`].
//!
//! [`Bot::run`] leads through a leased record at `orchestrators/<key>/leader` (created
//! only if absent: one leader; an etcd lease, or on `dir://` the lease mark judged on
//! the one kernel's clock), renews it, and runs a round on every change in the notary
//! (a put or a deletion: an alive record's expiry wakes it) and at least every
//! [`ROUND_EVERY`]. A bot that cannot create the record follows, trying again every
//! lease period.

use futures_util::StreamExt as _;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use zos_contract::assignment::{Assignment, SignedAssignment};
use zos_contract::{
    ContractRecord, Digest, Limits, PublicKey, SecretKey, SignedContract, VerifyContext,
};
use zos_engine::{Capacity, State, StatusReport};
use zos_notary::{Expect, KeyKind, KeyPrefix, Notary, NotaryError, NotaryKey, Record};
use zos_registry::{Heartbeat, NodeResources, Registration};

use zos_registry::Farm;

use crate::plan::{self, ContractView, NodeView, ReplicaView, Report, Step};
use crate::record::{Drain, Handover, Move, PlacementRecord, Refusal, ReplicaState};

/// The longest a bot waits between rounds when nothing changes: nodes fall silent
/// without any write to wake it.
pub const ROUND_EVERY: Duration = Duration::from_secs(1);
/// The leader record's lease.
pub const LEADER_TTL: Duration = Duration::from_secs(5);

const MIB: u64 = 1 << 20;

/// Why a round or the bot stopped.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// The notary failed (not a conflict: those are part of a round).
    #[error("notary: {0}")]
    Notary(#[from] NotaryError),
    /// A record could not be signed.
    #[error("signing {key}: {error}")]
    Sign {
        /// The key.
        key: String,
        /// Why.
        error: String,
    },
}

/// What one round did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Round {
    /// Placement contracts of this bot seen.
    pub contracts: usize,
    /// Assignments written: (contract, replica, node, epoch).
    pub assigned: Vec<(String, u64, PublicKey, u64)>,
    /// Placement records this round did not write because another writer had.
    pub conflicts: usize,
    /// Contracts skipped, with why (not verified, no blueprint).
    pub skipped: Vec<(String, String)>,
    /// Handovers completed: (contract, replica, from, to, epoch).
    pub handed: Vec<(String, u64, PublicKey, PublicKey, u64)>,
    /// The nodes drained, as this round believed the drain records.
    pub drained: Vec<PublicKey>,
    /// Drain records not believed, with why (not signed by the farm's farmer, no farm
    /// record, older than one accepted).
    pub ignored_drains: Vec<(String, String)>,
}

/// How many contracts' writes a round has in flight at once.
const WRITERS: usize = 16;

/// What one contract's plan writes: the placement record (compared and swapped), then
/// the assignments, then the removal of the assignments it replaced.
struct Write {
    contract: String,
    record: Record,
    expect: Expect,
    /// Signed assignment records, with (replica, node, epoch).
    assignments: Vec<(Record, u64, PublicKey, u64)>,
    /// (replica, old node, its assignment key).
    replaced: Vec<(u64, PublicKey, NotaryKey)>,
}

/// How a [`Write`] went.
enum Written {
    /// The record was swapped; these assignments were written.
    Done(Vec<(String, u64, PublicKey, u64)>),
    /// Another writer changed the record since it was read: nothing was written.
    Conflict,
}

/// One placement contract as read, verified.
struct Placed {
    farm: String,
    doc: SignedContract,
    needs: NodeResources,
    prev: Option<(Record, PlacementRecord)>,
}

/// The orchestrator.
pub struct Bot<N> {
    key: SecretKey,
    notary: N,
    limits: Limits,
    started: Instant,
    /// Nodes whose alive record is absent, with the bot second of the first round that
    /// saw it absent.
    absent_since: HashMap<PublicKey, u64>,
    /// Per farm, the farmer of the first valid farm record seen: drains are believed
    /// from that key only.
    farmers: HashMap<String, PublicKey>,
    /// Per drain key, the newest drain accepted: its `signed_at` and whether it drains.
    drains: HashMap<String, (u64, bool)>,
    /// Per drain key, why it was last ignored (logged once per change).
    ignored: HashMap<String, String>,
    /// Contracts that verified, by the digest of the whole signed document (body and
    /// signatures), with their deployment: a round verifies only what changed (and
    /// what did not verify before). Entries not seen in a round are dropped.
    verified: HashMap<Digest, zos_contract::Deployment>,
}

impl<N: Notary> Bot<N> {
    /// The bot of orchestrator key `key` over `notary`.
    pub fn new(key: SecretKey, notary: N) -> Bot<N> {
        Bot {
            key,
            notary,
            limits: Limits::default(),
            started: Instant::now(),
            absent_since: HashMap::new(),
            farmers: HashMap::new(),
            drains: HashMap::new(),
            ignored: HashMap::new(),
            verified: HashMap::new(),
        }
    }

    /// Seconds on the bot's monotonic clock; starts at 1 so that 0 means "never".
    fn clock(&self) -> u64 {
        self.started.elapsed().as_secs() + 1
    }

    /// One pass of list, plan, write (see the module docs).
    pub async fn round(&mut self) -> Result<Round, BotError> {
        let me = self.key.public();
        let grid = self.notary.list(&KeyPrefix::grid()).await?;
        let nodes = self.notary.list(&KeyPrefix::nodes()).await?;
        let now = self.clock();
        let wall = unix_now();

        let mut farms: BTreeMap<String, Vec<(PublicKey, NodeResources)>> = BTreeMap::new();
        let mut reserved: HashMap<PublicKey, NodeResources> = HashMap::new();
        let mut alive: HashSet<PublicKey> = HashSet::new();
        let mut statuses: HashMap<(PublicKey, String), StatusReport> = HashMap::new();
        for r in &nodes {
            match r.notary_key().map(|k| k.kind()) {
                Ok(KeyKind::Registration { .. }) => {
                    if let Ok((node, reg)) = Registration::from_record(r) {
                        farms
                            .entry(reg.farm.clone())
                            .or_default()
                            .push((node, reg.placeable()));
                    }
                }
                Ok(KeyKind::Heartbeat { .. }) => {
                    if let Ok((node, hb)) = Heartbeat::from_record(r) {
                        reserved.insert(node, hb.reserved);
                    }
                }
                // Listed, so verified: signed by the node itself. Its body is not read.
                Ok(KeyKind::Alive { node }) if r.author == node => {
                    alive.insert(node);
                }
                Ok(KeyKind::Status { node, contract_id }) => {
                    if let Ok(s) = serde_json::from_value::<StatusReport>(r.body.clone()) {
                        statuses.insert((node, contract_id), s);
                    }
                }
                _ => {}
            }
        }

        let mut round = Round::default();
        let placed = self.read_contracts(&grid, &me, &mut round).await;
        // Pin each farm's farmer at the bot's first sight of a contract there, before
        // any drain: one read per farm in the bot's lifetime.
        for farm in placed
            .iter()
            .map(|p| p.farm.clone())
            .collect::<BTreeSet<_>>()
        {
            if !self.farmers.contains_key(&farm) {
                let _ = self.farm(&farm).await?;
            }
        }
        let drained = self.read_drains(&grid, &mut round).await?;
        round.contracts = placed.len();

        // What each node has free: its capacity less what it reports reserved, less
        // what is assigned to it and not reported running yet (its heartbeat lags).
        let mut views: BTreeMap<String, Vec<NodeView>> = BTreeMap::new();
        for (farm, members) in &farms {
            let list = members
                .iter()
                .map(|(key, capacity)| {
                    let present = alive.contains(key);
                    let mut v = NodeView {
                        key: *key,
                        last_seen: self.seen(key, present, now),
                        alive: present,
                        free: *capacity,
                        drained: drained.contains(&(farm.clone(), *key)),
                    };
                    if let Some(r) = reserved.get(key) {
                        v.reserve(r);
                    }
                    v
                })
                .collect();
            views.insert(farm.clone(), list);
        }
        for p in &placed {
            let Some((_, rec)) = &p.prev else { continue };
            let taken = rec.replicas.iter().flat_map(|r| {
                let handover = r.handover.map(|h| h.node);
                r.node.into_iter().chain(handover)
            });
            for node in taken {
                let running = statuses
                    .get(&(node, rec.contract.clone()))
                    .is_some_and(|s| s.version == Some(p.doc.contract.version));
                if !running {
                    if let Some(v) = views
                        .get_mut(&p.farm)
                        .and_then(|l| l.iter_mut().find(|n| n.key == node))
                    {
                        v.reserve(&p.needs);
                    }
                }
            }
        }

        // Planning is sequential (it reserves the nodes' room as it goes); the writes of
        // different contracts are independent (each one's compare-and-swap guards it),
        // so they go out concurrently: each waits for etcd's fsync.
        let mut writes = Vec::new();
        for p in placed {
            let farm_nodes = views.entry(p.farm.clone()).or_default();
            writes.extend(self.place(p, farm_nodes, &statuses, now, wall, &mut round)?);
        }
        let written: Vec<Result<Written, BotError>> =
            futures_util::stream::iter(writes.into_iter().map(|w| self.write(w)))
                .buffered(WRITERS)
                .collect()
                .await;
        for w in written {
            match w? {
                Written::Done(assigned) => round.assigned.extend(assigned),
                Written::Conflict => round.conflicts += 1,
            }
        }
        Ok(round)
    }

    /// The drained nodes, (farm, node), from the drain records in `grid` that are the
    /// farmer's word (see the module docs); the others are logged and listed in
    /// `round.ignored_drains`.
    async fn read_drains(
        &mut self,
        grid: &[Record],
        round: &mut Round,
    ) -> Result<HashSet<(String, PublicKey)>, BotError> {
        let mut drained = HashSet::new();
        let mut farms: HashMap<String, Result<Farm, String>> = HashMap::new();
        for r in grid {
            let Ok(KeyKind::Drain { farm_id, node }) = r.notary_key().map(|k| k.kind()) else {
                continue;
            };
            if !farms.contains_key(&farm_id) {
                let farm = self.farm(&farm_id).await?;
                farms.insert(farm_id.clone(), farm);
            }
            let verdict = match &farms[&farm_id] {
                Err(why) => Err(why.clone()),
                Ok(farm) => match Drain::from_record(r, farm) {
                    Err(e) => Err(e.to_string()),
                    Ok((_, d)) => match self.drains.get(&r.key) {
                        Some((at, _)) if r.signed_at < *at => Err(format!(
                            "signed at {} , before the drain record accepted for it (signed at {at}): a replay",
                            r.signed_at
                        )),
                        _ => Ok(d.drained),
                    },
                },
            };
            match verdict {
                Ok(d) => {
                    self.drains.insert(r.key.clone(), (r.signed_at, d));
                    if self.ignored.remove(&r.key).is_some() || d {
                        tracing::debug!(key = %r.key, drained = d, "drain record accepted");
                    }
                }
                Err(why) => {
                    if self.ignored.get(&r.key) != Some(&why) {
                        tracing::warn!(key = %r.key, author = %r.author, %why, "drain record ignored");
                        self.ignored.insert(r.key.clone(), why.clone());
                    }
                    round.ignored_drains.push((r.key.clone(), why));
                }
            }
            // An ignored record leaves the drain accepted before it, if any, in force.
            if self.drains.get(&r.key).is_some_and(|(_, d)| *d) {
                drained.insert((farm_id, node));
                round.drained.push(node);
            }
        }
        Ok(drained)
    }

    /// Farm `id`'s record, with the farmer pinned at its first sight; or why drains of
    /// it are not believed.
    async fn farm(&mut self, id: &str) -> Result<Result<Farm, String>, BotError> {
        let key = NotaryKey::farm(id).map_err(NotaryError::from)?;
        let Some(record) = self.notary.get(&key).await? else {
            return Ok(Err(format!("no farm record {key}")));
        };
        let farm = match Farm::from_record(&record) {
            Ok(f) => f,
            Err(e) => return Ok(Err(format!("the farm record {key} is not valid: {e}"))),
        };
        let pinned = *self.farmers.entry(id.to_string()).or_insert(farm.farmer);
        if pinned != farm.farmer {
            return Ok(Err(format!(
                "the farm record {key} now names farmer {}, not {pinned} seen first: not believed",
                farm.farmer
            )));
        }
        Ok(Ok(farm))
    }

    /// Up to when `node` counts as seen ([`NodeView::last_seen`]): now while its alive
    /// record is present; else since the first round that saw it absent.
    fn seen(&mut self, node: &PublicKey, present: bool, now: u64) -> u64 {
        if present {
            self.absent_since.remove(node);
            now
        } else {
            *self.absent_since.entry(*node).or_insert(now)
        }
    }

    /// The placement contracts naming this bot, verified, with their placement records.
    async fn read_contracts(
        &mut self,
        grid: &[Record],
        me: &PublicKey,
        round: &mut Round,
    ) -> Vec<Placed> {
        let mut records: HashMap<(String, String), (Record, PlacementRecord)> = HashMap::new();
        for r in grid {
            if let Ok(KeyKind::Placement {
                farm_id,
                contract_id,
            }) = r.notary_key().map(|k| k.kind())
            {
                // Only our own records count; anyone may write at the key, and the
                // compare-and-swap below compares whatever is there.
                if r.author == *me {
                    if let Ok(p) = serde_json::from_value::<PlacementRecord>(r.body.clone()) {
                        records.insert((farm_id, contract_id), (r.clone(), p));
                    }
                }
            }
        }
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for r in grid {
            let Ok(KeyKind::PlacementContract {
                farm_id,
                contract_id,
            }) = r.notary_key().map(|k| k.kind())
            else {
                continue;
            };
            let doc = match ContractRecord::from_value(&r.body, &self.limits) {
                Ok(ContractRecord::Contract(doc)) => *doc,
                // A cancellation: the nodes stop it; nothing more is placed.
                _ => continue,
            };
            let Some(placement) = &doc.placement else {
                continue;
            };
            if placement.orchestrator != *me {
                continue;
            }
            if placement.farm != farm_id || doc.contract.id != contract_id {
                round.skipped.push((
                    contract_id,
                    format!("filed under farm {farm_id:?}, not where its placement says"),
                ));
                continue;
            }
            let now = unix_now();
            let whole = Digest::of(doc.to_value().to_string().as_bytes());
            seen.insert(whole);
            // A cached result holds until the contract expires (verification reads the
            // clock only for that).
            let fresh = doc.contract.expires.is_none_or(|e| e > now);
            let verified = match self.verified.get(&whole).filter(|_| fresh) {
                Some(d) => Ok(d.clone()),
                None => {
                    let v = self.verify(&doc, now).await;
                    // A refusal may depend on the notary (a blueprint not there yet):
                    // only what verified is kept.
                    if let Ok(d) = &v {
                        self.verified.insert(whole, d.clone());
                    }
                    v
                }
            };
            let deployment = match verified {
                Ok(d) => d,
                Err(why) => {
                    round
                        .skipped
                        .push((contract_id, format!("does not verify: {why}")));
                    continue;
                }
            };
            let c = Capacity::of(&deployment);
            let needs = NodeResources {
                cpus: c.cpu,
                memory_bytes: c.memory_mib.saturating_mul(MIB),
                ssd_bytes: c.ssd_mib.saturating_mul(MIB),
                hdd_bytes: c.hdd_mib.saturating_mul(MIB),
            };
            let prev = records.remove(&(farm_id.clone(), contract_id));
            out.push(Placed {
                farm: farm_id,
                doc,
                needs,
                prev,
            });
        }
        self.verified.retain(|d, _| seen.contains(d));
        out
    }

    /// `doc` verified for no node in particular, as of `now`: its deployment, or why not.
    async fn verify(
        &self,
        doc: &SignedContract,
        now: u64,
    ) -> Result<zos_contract::Deployment, String> {
        let blueprint = match &doc.contract.blueprint {
            zos_contract::BlueprintRef::Sha256(d) => {
                zos_notary::blueprint(&self.notary, d, &self.limits).await
            }
            zos_contract::BlueprintRef::Embedded(_) => None,
        };
        let resolver = move |d: &Digest| blueprint.clone().filter(|b| b.digest == *d);
        let ctx = VerifyContext {
            now,
            node: None,
            accepted: None,
            resolve_blueprint: &resolver,
            trusted_authors: None,
            limits: self.limits,
        };
        let verification = zos_contract::verify(doc, &ctx);
        match (verification.deployment, verification.reasons.is_empty()) {
            (Some(d), true) => Ok(d),
            _ => Err(verification
                .reasons
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("; ")),
        }
    }

    /// Plans one contract and writes the result.
    fn place(
        &self,
        p: Placed,
        farm_nodes: &mut [NodeView],
        statuses: &HashMap<(PublicKey, String), StatusReport>,
        now: u64,
        wall: u64,
        round: &mut Round,
    ) -> Result<Option<Write>, BotError> {
        let c = &p.doc.contract;
        let placement = p.doc.placement.as_ref().expect("a placement contract");
        let mut rec = match &p.prev {
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
        let expect = match &p.prev {
            Some((r, _)) => Expect::Current(r.clone()),
            None => Expect::Absent,
        };
        let mut write = Write {
            contract: c.id.clone(),
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

    /// Carries out one contract's [`Write`]: the placement record's compare-and-swap,
    /// then (only if it won) the assignments, then the removal of replaced ones.
    async fn write(&self, w: Write) -> Result<Written, BotError> {
        match self.notary.put_if(&w.record, &w.expect).await {
            Ok(()) => {}
            Err(NotaryError::Conflict { .. }) => {
                tracing::info!(contract = %w.contract, "placement record changed since it was read; planned again next round");
                return Ok(Written::Conflict);
            }
            Err(e) => return Err(e.into()),
        }
        let mut assigned = Vec::new();
        for (record, replica, node, epoch) in w.assignments {
            self.notary.put(&record).await?;
            tracing::info!(contract = %w.contract, replica, %node, epoch, "assigned");
            assigned.push((w.contract.clone(), replica, node, epoch));
        }
        for (replica, old, key) in w.replaced {
            // The old node stops on the newer epoch elsewhere anyway (or has fenced);
            // this only tidies its directory.
            if let Err(e) = self.notary.delete(&key).await {
                tracing::warn!(contract = %w.contract, replica, node = %old, error = %e, "removing a replaced assignment");
            }
        }
        Ok(Written::Done(assigned))
    }

    fn sign(&self, key: &NotaryKey, body: serde_json::Value) -> Result<Record, BotError> {
        Record::sign(key, body, &self.key).map_err(|e| BotError::Sign {
            key: key.to_string(),
            error: e.to_string(),
        })
    }

    /// Leads (or follows until it can lead) and runs rounds until `stop` resolves.
    pub async fn run(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), BotError> {
        let leader = NotaryKey::leader(&self.key.public());
        tokio::pin!(stop);
        loop {
            let lease = self.notary.grant_lease(LEADER_TTL).await?;
            // The lease names the term: two instances of one key never share it.
            let instance = format!("{}-{}", std::process::id(), lease.id());
            let body = serde_json::json!({"instance": instance, "since": unix_now()});
            let record = self.sign(&leader, body)?;
            match self
                .notary
                .put_leased(&record, &lease, &Expect::Absent)
                .await
            {
                Ok(()) => tracing::info!(%instance, "leading"),
                Err(NotaryError::Conflict { .. }) => {
                    tracing::info!("another instance leads; following");
                    let _ = self.notary.revoke(&lease).await;
                    tokio::select! {
                        _ = &mut stop => return Ok(()),
                        _ = tokio::time::sleep(lease.ttl() / 2) => continue,
                    }
                }
                Err(e) => return Err(e.into()),
            }
            // Deletions too: an alive record's expiry is a change worth a round.
            let mut watch = self.notary.watch_events(&KeyPrefix::all()).await?;
            let mut renewed = Instant::now();
            loop {
                if renewed.elapsed() >= lease.ttl() / 3 {
                    match self.notary.keep_alive(&lease).await {
                        Ok(_) => renewed = Instant::now(),
                        Err(NotaryError::LeaseExpired { .. }) => {
                            tracing::warn!("leadership lost (the lease expired); trying again");
                            break;
                        }
                        Err(e) => tracing::warn!(error = %e, "renewing the leader lease"),
                    }
                }
                match self.round().await {
                    Ok(r) if !r.assigned.is_empty() || r.conflicts > 0 => {
                        tracing::info!(
                            contracts = r.contracts,
                            assigned = r.assigned.len(),
                            conflicts = r.conflicts,
                            "round"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "round failed; trying again"),
                }
                tokio::select! {
                    _ = &mut stop => {
                        let _ = self.notary.revoke(&lease).await;
                        return Ok(());
                    }
                    // A watch that ended disables this branch: rounds then run every
                    // ROUND_EVERY instead of spinning.
                    Some(_) = watch.recv() => {
                        // One round answers every change already waiting (its own
                        // writes among them): a round reads everything anew.
                        while watch.try_recv().is_some() {}
                    }
                    _ = tokio::time::sleep(ROUND_EVERY) => {}
                }
            }
        }
    }
}

fn set(r: &mut crate::record::ReplicaRecord, state: ReplicaState, detail: &str) {
    r.state = state;
    r.detail = detail.to_string();
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
