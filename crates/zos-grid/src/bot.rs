//! The orchestrator (`zos bot run`): keeps a view of the grid from the notary's events,
//! plans each of its placement contracts ([`crate::plan`]) and writes what the plan says
//! (docs/grid.md).
//!
//! One round ([`Bot::step`]) is apply, plan, write:
//! 1. every event already queued on the bot's [`Feed`] is applied to its
//!    [`GridView`] (never waiting for one; a feed whose watch ended subscribes again:
//!    a fresh snapshot). The view holds every record under `grid/` and `nodes/`;
//! 2. from the view: the placement contracts under `grid/` that name this bot's key as
//!    orchestrator, each verified in full (for no node in particular) with its
//!    blueprint (a contract verified before is known by its whole document's digest);
//!    the farm's nodes: registrations (farm, capacity), liveness records
//!    (`nodes/<n>/alive`), heartbeats (what is reserved), statuses (ok or refused);
//! 3. per contract, the plan; then the placement record by compare-and-swap (a
//!    conflict means another writer, a stale or a new leader, wrote since the read: the
//!    record is read again into the view and the contract planned again next round),
//!    and only after it the signed assignments; contracts with assignments to write go
//!    first, 32 at a time (`bot/write.rs`). Once every contract's writes are done, the
//!    assignments that moves replaced are deleted. What the bot wrote goes into the
//!    view at once: the next round compares against it, not waiting for its echo.
//!
//! [`Bot::round`] is the same planning and writing from a fresh listing of `grid/` and
//! `nodes/` (`zos bot run --once`, tests): its view is kept between its calls and
//! resynchronised from each listing.
//!
//! **Liveness is the node's leased record, measured on the bot's own clock**: a node is
//! present while its `nodes/<n>/alive` record is (the node keeps its lease alive; etcd,
//! or on `dir://` the reader's clock, expires it), and lost once the record has been
//! absent for more than `after_s` on the bot's clock, counted from the instant the view
//! applied the event that took it away (with [`Bot::round`]: the first listing that saw
//! it absent). Nothing the node writes in a record (a time, a TTL) is used for timing.
//! A bot that starts (or a view that subscribes again) counts every absent node as seen
//! absent at its snapshot, which can delay a move by one `after_s`, never hasten it.
//! The plan counts whole seconds ([`NodeView::last_seen`]); the bot gives it an absence
//! rounded **up** to the next second, so that "more than `after_s` seconds" holds
//! exactly on its monotonic clock, not up to a second late. Heartbeats only tell what a
//! node has reserved.
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
//! the one kernel's clock), renews it, subscribes once per term, and runs a round on
//! every change in the notary (a put or a deletion: an alive record's expiry wakes it),
//! at least every [`ROUND_EVERY`], and when a replica's node will have been absent for
//! its contract's `after_s` ([`Bot::next_round_at`]). A bot that cannot create the record follows,
//! trying again every lease period.
//!
//! Files: planning one contract is `bot/place.rs`, a round's writes `bot/write.rs`,
//! the view [`crate::view`].

mod place;
mod write;

use futures_util::StreamExt as _;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use zos_contract::{Digest, Limits, PublicKey, SecretKey, SignedContract, VerifyContext};
use zos_engine::{Capacity, StatusReport};
use zos_notary::{Expect, KeyKind, KeyPrefix, Notary, NotaryError, NotaryKey, Record};
use zos_registry::{Farm, NodeResources};

use crate::plan::NodeView;
use crate::record::{Drain, PlacementRecord};
use crate::view::{Feed, GridView, Parsed};
use write::{Written, WRITERS};

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

/// One placement contract as the view holds it, verified.
struct Placed<'a> {
    farm: String,
    doc: &'a SignedContract,
    needs: NodeResources,
    prev: Option<(&'a Record, &'a PlacementRecord)>,
}

/// The orchestrator.
pub struct Bot<N> {
    key: SecretKey,
    notary: N,
    limits: Limits,
    started: Instant,
    /// The view of [`Bot::round`]'s listings, kept between its calls (absent nodes
    /// keep the instant of the first listing that saw them absent).
    listed: Option<GridView>,
    /// When the next replica's node will have been absent for its contract's
    /// `after_s` (as of the last round): a round is due then, sooner than
    /// [`ROUND_EVERY`] may come.
    due: Option<Instant>,
    /// Per farm, the farmer of the first valid farm record seen: drains are believed
    /// from that key only.
    farmers: HashMap<String, PublicKey>,
    /// Per drain key, the newest drain accepted: its `signed_at` and whether it drains.
    drains: HashMap<String, (u64, bool)>,
    /// Per drain key, why it was last ignored (logged once per change).
    ignored: HashMap<String, String>,
    /// Contracts that verified, by the digest of the whole signed document (body and
    /// signatures), with what a replica of their deployment reserves on a node: a
    /// round verifies only what changed (and what did not verify before). Entries not
    /// seen in a round are dropped.
    verified: HashMap<Digest, NodeResources>,
}

impl<N: Notary> Bot<N> {
    /// The bot of orchestrator key `key` over `notary`.
    pub fn new(key: SecretKey, notary: N) -> Bot<N> {
        Bot {
            key,
            notary,
            limits: Limits::default(),
            started: Instant::now(),
            listed: None,
            due: None,
            farmers: HashMap::new(),
            drains: HashMap::new(),
            ignored: HashMap::new(),
            verified: HashMap::new(),
        }
    }

    /// Whole seconds on the bot's monotonic clock at `at`; starts at 1 so that 0 means
    /// "never".
    fn clock(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started).as_secs() + 1
    }

    /// When the next round should run at the latest, as of `now`: after
    /// [`ROUND_EVERY`], or sooner when a replica's node will then have been absent for
    /// its contract's `after_s` (so that the move is not up to a period late).
    pub fn next_round_at(&self, now: Instant) -> Instant {
        let every = now + ROUND_EVERY;
        self.due
            .filter(|d| *d > now)
            .map_or(every, |d| d.min(every))
    }

    /// One round from a fresh listing of `grid/` and `nodes/` (see the module docs).
    pub async fn round(&mut self) -> Result<Round, BotError> {
        let grid = self.notary.list(&KeyPrefix::grid()).await?;
        let nodes = self.notary.list(&KeyPrefix::nodes()).await?;
        let at = Instant::now();
        let records = grid.into_iter().chain(nodes);
        let mut view = match self.listed.take() {
            Some(mut v) => {
                v.resync(records, at);
                v
            }
            None => GridView::new(records, at),
        };
        let round = self.plan_and_write(&mut view).await;
        self.listed = Some(view);
        round
    }

    /// A feed of the grid for [`Bot::step`]: a snapshot of `grid/` and `nodes/` and the
    /// watches that keep it.
    pub async fn subscribe(&self) -> Result<Feed, BotError> {
        Ok(Feed::subscribe(&self.notary).await?)
    }

    /// One round from `feed` (see the module docs): every event already queued is
    /// applied (a feed whose watch ended subscribes again first), then the round plans
    /// and writes. Never waits for an event; [`Feed::changed`] does.
    pub async fn step(&mut self, feed: &mut Feed) -> Result<Round, BotError> {
        if feed.ended() {
            *feed = self.subscribe().await?;
            tracing::info!(records = feed.view().len(), "grid view subscribed again");
        }
        feed.drain();
        self.plan_and_write(feed.view_mut()).await
    }

    /// Plans every contract of this bot from `view` and writes the results; what was
    /// written goes into `view` (see the module docs).
    async fn plan_and_write(&mut self, view: &mut GridView) -> Result<Round, BotError> {
        let me = self.key.public();
        let at = Instant::now();
        let now = self.clock(at);
        let wall = unix_now();

        let mut farms: BTreeMap<&str, Vec<(PublicKey, NodeResources)>> = BTreeMap::new();
        let mut reserved: HashMap<PublicKey, NodeResources> = HashMap::new();
        let mut statuses: HashMap<(PublicKey, String), &StatusReport> = HashMap::new();
        for e in view.nodes() {
            match &e.parsed {
                Parsed::Registration {
                    node,
                    farm,
                    offered,
                } => farms.entry(farm).or_default().push((*node, *offered)),
                Parsed::Heartbeat { node, reserved: r } => {
                    reserved.insert(*node, *r);
                }
                Parsed::Status {
                    node,
                    contract,
                    report,
                } => {
                    statuses.insert((*node, contract.clone()), report);
                }
                _ => {}
            }
        }

        let mut round = Round::default();
        let placed = self.read_contracts(view, &me, &mut round).await;
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
        let drain_records: Vec<&Record> = view
            .grid()
            .filter(|e| matches!(e.parsed, Parsed::Drain))
            .map(|e| &e.record)
            .collect();
        let drained = self.read_drains(&drain_records, &mut round).await?;
        round.contracts = placed.len();
        self.due = placed
            .iter()
            .filter_map(|p| {
                let (_, rec) = p.prev?;
                let after = Duration::from_secs(p.doc.placement.as_ref()?.failover.after_s);
                rec.replicas
                    .iter()
                    .filter_map(|r| view.absent_since(&r.node?))
                    // Lost once absent for more than after_s.
                    .map(|since| since + after + Duration::from_millis(1))
                    .filter(|due| *due > at)
                    .min()
            })
            .min();

        // What each node has free: its capacity less what it reports reserved, less
        // what is assigned to it and not reported running yet (its heartbeat lags).
        let mut views: BTreeMap<String, Vec<NodeView>> = BTreeMap::new();
        for (farm, members) in &farms {
            let list = members
                .iter()
                .map(|(key, capacity)| {
                    let present = view.alive(key);
                    let mut v = NodeView {
                        key: *key,
                        last_seen: self.last_seen(view, key, at, now),
                        alive: present,
                        free: *capacity,
                        drained: drained.contains(&(farm.to_string(), *key)),
                    };
                    if let Some(r) = reserved.get(key) {
                        v.reserve(r);
                    }
                    v
                })
                .collect();
            views.insert(farm.to_string(), list);
        }
        for p in &placed {
            let Some((_, rec)) = p.prev else { continue };
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
        drop(statuses);
        // Assignments first (a move's new node waits for its), then the records that
        // only change their replicas' states.
        writes.sort_by_key(|w| w.assignments.is_empty() && w.replaced.is_empty());
        let written: Vec<Result<Written, BotError>> =
            futures_util::stream::iter(writes.into_iter().map(|w| self.write(w)))
                .buffered(WRITERS)
                .collect()
                .await;
        let mut failed = None;
        let mut replaced = Vec::new();
        for w in written {
            match w {
                Ok(Written::Done {
                    assigned,
                    records,
                    replaced: r,
                }) => {
                    round.assigned.extend(assigned);
                    let at = Instant::now();
                    for r in records {
                        view.wrote(r, at);
                    }
                    replaced.extend(r);
                }
                Ok(Written::Conflict(key)) => {
                    round.conflicts += 1;
                    // The view missed a write: read the record again.
                    match self.notary.get(&key).await {
                        Ok(r) => view.refresh(&key, r, Instant::now()),
                        Err(e) => {
                            tracing::warn!(%key, error = %e, "reading a placement record again")
                        }
                    }
                }
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        // Then the replaced assignments go, behind every new one.
        let removed: Vec<Option<NotaryKey>> =
            futures_util::stream::iter(replaced.into_iter().map(|r| self.remove(r)))
                .buffer_unordered(WRITERS)
                .collect()
                .await;
        let at = Instant::now();
        for key in removed.iter().flatten() {
            view.removed(key, at);
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(round),
        }
    }

    /// Up to when `node` counts as seen ([`NodeView::last_seen`], whole seconds of
    /// [`Bot::clock`]) at `at` (`now` on that clock): `now` while its alive record is
    /// present; else `now` less its absence in seconds rounded up, so that the plan's
    /// "absent more than `after_s`" holds exactly when the absence, measured on the
    /// monotonic clock from when the view saw the node go, is more than `after_s`
    /// (never below 1: a node is never "never seen" for the plan, which only delays).
    fn last_seen(&self, view: &GridView, node: &PublicKey, at: Instant, now: u64) -> u64 {
        if view.alive(node) {
            return now;
        }
        let Some(since) = view.absent_since(node) else {
            return now;
        };
        let gone = at.saturating_duration_since(since);
        let up = gone.as_secs() + u64::from(gone.subsec_nanos() > 0);
        now.saturating_sub(up).max(1)
    }

    /// The drained nodes, (farm, node), from the drain records in `grid` that are the
    /// farmer's word (see the module docs); the others are logged and listed in
    /// `round.ignored_drains`.
    async fn read_drains(
        &mut self,
        grid: &[&Record],
        round: &mut Round,
    ) -> Result<HashSet<(String, PublicKey)>, BotError> {
        let mut drained = HashSet::new();
        let mut farms: HashMap<String, Result<Farm, String>> = HashMap::new();
        for &r in grid {
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

    /// The placement contracts naming this bot in `view`, verified, with their
    /// placement records.
    async fn read_contracts<'a>(
        &mut self,
        view: &'a GridView,
        me: &PublicKey,
        round: &mut Round,
    ) -> Vec<Placed<'a>> {
        let mut records: HashMap<(&str, &str), (&Record, &PlacementRecord)> = HashMap::new();
        for e in view.grid() {
            // Only our own records count; anyone may write at the key, and the
            // compare-and-swap below compares whatever is there.
            if let Parsed::Placement { farm, id, record } = &e.parsed {
                if e.record.author == *me {
                    records.insert((farm, id), (&e.record, record));
                }
            }
        }
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        for e in view.grid() {
            let Parsed::Contract { farm, id, doc } = &e.parsed else {
                continue;
            };
            // A cancellation: the nodes stop it; nothing more is placed.
            let Some((doc, whole)) = doc else {
                continue;
            };
            let Some(placement) = &doc.placement else {
                continue;
            };
            if placement.orchestrator != *me {
                continue;
            }
            if placement.farm != *farm || doc.contract.id != *id {
                round.skipped.push((
                    id.clone(),
                    format!("filed under farm {farm:?}, not where its placement says"),
                ));
                continue;
            }
            let now = unix_now();
            seen.insert(*whole);
            // A cached result holds until the contract expires (verification reads the
            // clock only for that).
            let fresh = doc.contract.expires.is_none_or(|e| e > now);
            let verified = match self.verified.get(whole).filter(|_| fresh) {
                Some(needs) => Ok(*needs),
                None => {
                    let v = self.verify(doc, now).await.map(|d| {
                        let c = Capacity::of(&d);
                        NodeResources {
                            cpus: c.cpu,
                            memory_bytes: c.memory_mib.saturating_mul(MIB),
                            ssd_bytes: c.ssd_mib.saturating_mul(MIB),
                            hdd_bytes: c.hdd_mib.saturating_mul(MIB),
                        }
                    });
                    // A refusal may depend on the notary (a blueprint not there yet):
                    // only what verified is kept.
                    if let Ok(needs) = &v {
                        self.verified.insert(*whole, *needs);
                    }
                    v
                }
            };
            let needs = match verified {
                Ok(n) => n,
                Err(why) => {
                    round
                        .skipped
                        .push((id.clone(), format!("does not verify: {why}")));
                    continue;
                }
            };
            let prev = records.remove(&(farm.as_str(), id.as_str()));
            out.push(Placed {
                farm: farm.clone(),
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
            // One feed per term: its view is kept from the notary's events (deletions
            // too: an alive record's expiry is a change worth a round).
            let mut feed = match self.subscribe().await {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(error = %e, "subscribing to the grid; trying again");
                    None
                }
            };
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
                if feed.is_none() {
                    match self.subscribe().await {
                        Ok(f) => feed = Some(f),
                        Err(e) => {
                            tracing::warn!(error = %e, "subscribing to the grid; trying again")
                        }
                    }
                }
                if let Some(f) = &mut feed {
                    match self.step(f).await {
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
                }
                let wake = self.next_round_at(Instant::now());
                let changed = async {
                    match &mut feed {
                        Some(f) => f.changed().await,
                        None => false,
                    }
                };
                tokio::select! {
                    _ = &mut stop => {
                        let _ = self.notary.revoke(&lease).await;
                        return Ok(());
                    }
                    // A change applied to the view: the round answers it, and every
                    // other change already queued. A watch that ended (or no feed)
                    // disables this branch: the next round, after ROUND_EVERY,
                    // subscribes again instead of spinning.
                    true = changed => {}
                    _ = tokio::time::sleep_until(wake.into()) => {}
                }
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
