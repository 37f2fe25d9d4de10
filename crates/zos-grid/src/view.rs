//! The bot's view of the grid: every record under `grid/` and `nodes/`, kept from the
//! notary's events instead of relisted every round (docs/grid.md, "The bot's view").
//!
//! A [`Feed`] is one subscription ([`Notary::subscribe_events`] of `grid/` and of
//! `nodes/`): a snapshot, then every put and deletion after it, applied to its
//! [`GridView`]. Applying is idempotent (a put replaces what the key held, a deletion
//! removes it), and each record is read once, when it arrives: its kind, and the body
//! the bot plans with (a registration's offer, a heartbeat's reservations, a status, a
//! contract, a placement record).
//!
//! **Absence, on the bot's clock.** A node is present while the view holds its alive
//! record `nodes/<n>/alive` signed by the node. The view keeps, for every node it knows
//! of that is not present, the [`Instant`] it first saw it so: when it applied the
//! event that took the record away (a deletion: the lease expired or was revoked; or a
//! put of something else there), or, for a node already absent in the snapshot, the
//! snapshot's instant (a bot that starts, or subscribes again, counts absent nodes from
//! then: that delays a move, never hastens it). A put of the record makes the node
//! present again and forgets the instant. A view made from a listing
//! ([`GridView::resync`], the listing rounds of [`crate::Bot::round`]) keeps the instant
//! of a node absent in two listings in a row, as those rounds always did.
//!
//! **Own writes.** The bot puts what it wrote into the view at once ([`GridView::wrote`],
//! [`GridView::removed`]): the next round compares against it without waiting for the
//! echo. Until the echo of that write arrives, other events for the key are older than
//! it (the notary delivers in order, and the write was a compare-and-swap against what
//! the view held) and are not applied. A compare-and-swap that still fails re-reads the
//! key ([`GridView::refresh`]).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use zos_contract::{ContractRecord, Digest, Limits, PublicKey, SignedContract};
use zos_engine::StatusReport;
use zos_notary::{
    EventWatch, KeyKind, KeyPrefix, Notary, NotaryError, NotaryKey, Record, WatchEvent,
};
use zos_registry::{Heartbeat, NodeResources, Registration};

use crate::record::PlacementRecord;

/// What a record in the view says, read once when it arrived.
#[derive(Debug, Clone)]
pub(crate) enum Parsed {
    /// `nodes/<n>/registration`: the node's farm and what it offers to contracts.
    Registration {
        node: PublicKey,
        farm: String,
        offered: NodeResources,
    },
    /// `nodes/<n>/heartbeat`: what the node has reserved.
    Heartbeat {
        node: PublicKey,
        reserved: NodeResources,
    },
    /// `nodes/<n>/alive`, signed by the node itself (its body is not read).
    Alive,
    /// `nodes/<n>/status/<id>`.
    Status {
        node: PublicKey,
        contract: String,
        report: Box<StatusReport>,
    },
    /// `grid/<farm>/contracts/<id>`: the signed contract (`None` for a cancellation or
    /// a document that does not parse), and the digest of the whole document (body and
    /// signatures) by which the bot caches its verification.
    Contract {
        farm: String,
        id: String,
        doc: Option<(Box<SignedContract>, Digest)>,
    },
    /// `grid/<farm>/placements/<id>` (whoever wrote it: the bot compares the author).
    Placement {
        farm: String,
        id: String,
        record: Box<PlacementRecord>,
    },
    /// `grid/<farm>/drains/<node>` (believed or not by the bot, from the raw record).
    Drain,
    /// Anything else (assignments, requests, answers, ...).
    Other,
}

impl Parsed {
    fn of(r: &Record, limits: &Limits) -> Parsed {
        let Ok(kind) = r.notary_key().map(|k| k.kind()) else {
            return Parsed::Other;
        };
        match kind {
            KeyKind::Registration { .. } => match Registration::from_record(r) {
                Ok((node, reg)) => Parsed::Registration {
                    node,
                    offered: reg.placeable(),
                    farm: reg.farm,
                },
                Err(_) => Parsed::Other,
            },
            KeyKind::Heartbeat { .. } => match Heartbeat::from_record(r) {
                Ok((node, hb)) => Parsed::Heartbeat {
                    node,
                    reserved: hb.reserved,
                },
                Err(_) => Parsed::Other,
            },
            // Verified (the notary delivers only that), so signed by its author: only
            // the node's own record is its liveness.
            KeyKind::Alive { node } if r.author == node => Parsed::Alive,
            KeyKind::Status { node, contract_id } => {
                match serde_json::from_value::<StatusReport>(r.body.clone()) {
                    Ok(report) => Parsed::Status {
                        node,
                        contract: contract_id,
                        report: Box::new(report),
                    },
                    Err(_) => Parsed::Other,
                }
            }
            KeyKind::PlacementContract {
                farm_id,
                contract_id,
            } => {
                let doc = match ContractRecord::from_value(&r.body, limits) {
                    Ok(ContractRecord::Contract(doc)) => {
                        let whole = Digest::of(doc.to_value().to_string().as_bytes());
                        Some((doc, whole))
                    }
                    // A cancellation: the nodes stop it; nothing more is placed.
                    _ => None,
                };
                Parsed::Contract {
                    farm: farm_id,
                    id: contract_id,
                    doc,
                }
            }
            KeyKind::Placement {
                farm_id,
                contract_id,
            } => match serde_json::from_value::<PlacementRecord>(r.body.clone()) {
                Ok(p) => Parsed::Placement {
                    farm: farm_id,
                    id: contract_id,
                    record: Box::new(p),
                },
                Err(_) => Parsed::Other,
            },
            KeyKind::Drain { .. } => Parsed::Drain,
            _ => Parsed::Other,
        }
    }
}

/// One record of the view and what it says.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) record: Record,
    pub(crate) parsed: Parsed,
}

/// The records under `grid/` and `nodes/` by key, and when each absent node was first
/// seen absent (see the module docs).
#[derive(Debug, Clone)]
pub struct GridView {
    limits: Limits,
    grid: BTreeMap<String, Entry>,
    nodes: BTreeMap<String, Entry>,
    /// Nodes known to the view (a record under `nodes/<n>/`, or an alive record that
    /// went away) whose alive record is absent, with when the view first saw that.
    absent: HashMap<PublicKey, Instant>,
    /// The bot's own writes whose echo has not arrived: the record, or `None` for a
    /// deletion.
    pending: HashMap<String, Option<Record>>,
}

impl GridView {
    /// A view of `records` (a snapshot of `grid/` and `nodes/`) taken at `at`: every
    /// node absent in it counts as absent since `at`.
    pub fn new(records: impl IntoIterator<Item = Record>, at: Instant) -> GridView {
        let mut view = GridView {
            limits: Limits::default(),
            grid: BTreeMap::new(),
            nodes: BTreeMap::new(),
            absent: HashMap::new(),
            pending: HashMap::new(),
        };
        view.resync(records, at);
        view
    }

    /// Replaces the records with a fresh listing taken at `at`. A node absent in it that
    /// the view already counted absent keeps its instant; another absent one counts
    /// from `at`; a present one is forgotten. Own writes not echoed are dropped (the
    /// listing is newer).
    pub fn resync(&mut self, records: impl IntoIterator<Item = Record>, at: Instant) {
        self.grid.clear();
        self.nodes.clear();
        self.pending.clear();
        for r in records {
            self.insert(r);
        }
        let mut known: Vec<PublicKey> = self
            .nodes
            .keys()
            .filter_map(|k| NotaryKey::parse(k).ok()?.node_owner())
            .collect();
        known.dedup();
        let before = std::mem::take(&mut self.absent);
        for node in known {
            if !self.alive(&node) {
                let since = before.get(&node).copied().unwrap_or(at);
                self.absent.insert(node, since);
            }
        }
    }

    /// Applies one event of the feed, seen at `at` (see the module docs).
    pub fn apply(&mut self, event: WatchEvent, at: Instant) {
        let key = match &event {
            WatchEvent::Put(r) => r.key.clone(),
            WatchEvent::Deleted(k) => k.as_str().to_string(),
        };
        if let Some(own) = self.pending.get(&key) {
            let echo = match (&event, own) {
                (WatchEvent::Put(r), Some(mine)) => r == mine,
                (WatchEvent::Deleted(_), None) => true,
                _ => false,
            };
            if echo {
                self.pending.remove(&key);
            }
            // The echo changes nothing; anything else is older than the own write.
            return;
        }
        match event {
            WatchEvent::Put(r) => self.insert(r),
            WatchEvent::Deleted(k) => {
                self.remove(k.as_str());
            }
        }
        self.touched(&key, at);
    }

    /// The bot wrote `record` (a compare-and-swap it won, or a put): the view holds it
    /// from now on, and ignores older events for its key until its echo.
    pub fn wrote(&mut self, record: Record, at: Instant) {
        let key = record.key.clone();
        self.pending.insert(key.clone(), Some(record.clone()));
        self.insert(record);
        self.touched(&key, at);
    }

    /// The bot deleted `key`.
    pub fn removed(&mut self, key: &NotaryKey, at: Instant) {
        self.pending.insert(key.as_str().to_string(), None);
        self.remove(key.as_str());
        self.touched(key.as_str(), at);
    }

    /// What the notary holds under `key` now, read again (after a compare-and-swap that
    /// failed on it): replaces the view's record, whatever was pending for it.
    pub fn refresh(&mut self, key: &NotaryKey, record: Option<Record>, at: Instant) {
        self.pending.remove(key.as_str());
        match record {
            Some(r) => self.insert(r),
            None => self.remove(key.as_str()),
        }
        self.touched(key.as_str(), at);
    }

    /// The record the view holds under `key`.
    pub fn get(&self, key: &NotaryKey) -> Option<&Record> {
        self.map(key.as_str())
            .and_then(|m| m.get(key.as_str()))
            .map(|e| &e.record)
    }

    /// How many records the view holds.
    pub fn len(&self) -> usize {
        self.grid.len() + self.nodes.len()
    }

    /// Whether the view holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `node`'s own alive record is in the view.
    pub fn alive(&self, node: &PublicKey) -> bool {
        let key = NotaryKey::alive(node);
        self.nodes
            .get(key.as_str())
            .is_some_and(|e| matches!(e.parsed, Parsed::Alive))
    }

    /// Since when the view has seen `node` absent; `None` while it is present (or the
    /// view knows nothing of it).
    pub fn absent_since(&self, node: &PublicKey) -> Option<Instant> {
        self.absent.get(node).copied()
    }

    /// The records under `grid/`, in key order.
    pub(crate) fn grid(&self) -> impl Iterator<Item = &Entry> {
        self.grid.values()
    }

    /// The records under `nodes/`, in key order.
    pub(crate) fn nodes(&self) -> impl Iterator<Item = &Entry> {
        self.nodes.values()
    }

    fn map(&self, key: &str) -> Option<&BTreeMap<String, Entry>> {
        if KeyPrefix::grid().matches(key) {
            Some(&self.grid)
        } else if KeyPrefix::nodes().matches(key) {
            Some(&self.nodes)
        } else {
            None
        }
    }

    fn insert(&mut self, record: Record) {
        let key = record.key.clone();
        let map = if KeyPrefix::grid().matches(&key) {
            &mut self.grid
        } else if KeyPrefix::nodes().matches(&key) {
            &mut self.nodes
        } else {
            return;
        };
        let parsed = Parsed::of(&record, &self.limits);
        map.insert(key, Entry { record, parsed });
    }

    fn remove(&mut self, key: &str) {
        self.grid.remove(key);
        self.nodes.remove(key);
    }

    /// After a change at `key`: if it is under `nodes/<n>/`, whether `n` is present
    /// now, and if not, since when it is absent.
    fn touched(&mut self, key: &str, at: Instant) {
        let Some(node) = NotaryKey::parse(key).ok().and_then(|k| k.node_owner()) else {
            return;
        };
        if self.alive(&node) {
            self.absent.remove(&node);
        } else {
            self.absent.entry(node).or_insert(at);
        }
    }
}

/// One subscription of the bot: its view, and the watches that keep it.
#[derive(Debug)]
pub struct Feed {
    view: GridView,
    /// `grid/` and `nodes/`; `None` once it ended (the feed then subscribes again).
    watches: [Option<EventWatch>; 2],
}

impl Feed {
    /// Subscribes to `grid/` and `nodes/` of `notary`: their snapshot in a new view,
    /// and the watches of everything after it.
    pub async fn subscribe(notary: &impl Notary) -> Result<Feed, NotaryError> {
        let (grid, grid_watch) = notary.subscribe_events(&KeyPrefix::grid()).await?;
        let (nodes, nodes_watch) = notary.subscribe_events(&KeyPrefix::nodes()).await?;
        let view = GridView::new(grid.into_iter().chain(nodes), Instant::now());
        tracing::debug!(records = view.len(), "grid view subscribed");
        Ok(Feed {
            view,
            watches: [Some(grid_watch), Some(nodes_watch)],
        })
    }

    /// The view.
    pub fn view(&self) -> &GridView {
        &self.view
    }

    /// The view, to record the bot's own writes.
    pub fn view_mut(&mut self) -> &mut GridView {
        &mut self.view
    }

    /// Whether a watch ended (the feed must subscribe again).
    pub fn ended(&self) -> bool {
        self.watches.iter().any(Option::is_none)
    }

    /// Applies every event already waiting, without blocking; returns how many.
    pub fn drain(&mut self) -> usize {
        let mut n = 0;
        for slot in &mut self.watches {
            let Some(w) = slot else { continue };
            while let Some(ev) = w.try_recv() {
                self.view.apply(ev, Instant::now());
                n += 1;
            }
        }
        n
    }

    /// Waits for the next event and applies it (cancel-safe: an event is applied
    /// once it is received). Returns `false` at once if a watch ended (then it does not
    /// wait).
    pub async fn changed(&mut self) -> bool {
        let [Some(grid), Some(nodes)] = &mut self.watches else {
            return false;
        };
        let (which, ev) = tokio::select! {
            ev = grid.recv() => (0, ev),
            ev = nodes.recv() => (1, ev),
        };
        match ev {
            Some(ev) => {
                self.view.apply(ev, Instant::now());
                true
            }
            None => {
                tracing::warn!(
                    prefix = if which == 0 { "grid/" } else { "nodes/" },
                    "the grid view's watch ended; subscribing again"
                );
                self.watches[which] = None;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;
    use zos_contract::SecretKey;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    fn alive(n: &SecretKey) -> Record {
        let k = NotaryKey::alive(&n.public());
        Record::sign(&k, json!({"ttl_ms": 2000}), n).unwrap()
    }

    fn status(n: &SecretKey, message: &str) -> Record {
        let s = StatusReport::new("web", Some(1), zos_engine::State::Ok, message);
        let k = NotaryKey::status(&n.public(), "web").unwrap();
        Record::sign(&k, serde_json::to_value(&s).unwrap(), n).unwrap()
    }

    fn placement(bot: &SecretKey, epoch: u64) -> Record {
        let mut p = PlacementRecord::new("web", 1, Digest::of(b"web"), 1);
        p.replicas[0].epoch = epoch;
        let k = NotaryKey::placement("f", "web").unwrap();
        Record::sign(&k, serde_json::to_value(&p).unwrap(), bot).unwrap()
    }

    fn message(view: &GridView, n: &SecretKey) -> Option<String> {
        let k = NotaryKey::status(&n.public(), "web").unwrap();
        view.nodes().find(|e| e.record.key == k.as_str()).map(|e| {
            let Parsed::Status { report, .. } = &e.parsed else {
                panic!("not read as a status: {:?}", e.parsed)
            };
            report.message.clone()
        })
    }

    #[test]
    fn events_apply_idempotently_a_put_replaces_and_a_deletion_removes() {
        let (a, t0) = (key(1), Instant::now());
        let mut view = GridView::new([status(&a, "one")], t0);
        assert_eq!(message(&view, &a).as_deref(), Some("one"));
        let two = status(&a, "two");
        view.apply(WatchEvent::Put(two.clone()), t0);
        view.apply(WatchEvent::Put(two), t0);
        assert_eq!(message(&view, &a).as_deref(), Some("two"), "replaced, once");
        assert_eq!(view.len(), 1);
        let k = NotaryKey::status(&a.public(), "web").unwrap();
        view.apply(WatchEvent::Deleted(k.clone()), t0);
        view.apply(WatchEvent::Deleted(k.clone()), t0);
        assert!(view.get(&k).is_none() && view.is_empty(), "removed");
        // Records outside grid/ and nodes/ are not the view's.
        let farm = Record::sign(&NotaryKey::farm("f").unwrap(), json!({}), &a).unwrap();
        view.apply(WatchEvent::Put(farm), t0);
        assert!(view.is_empty());
    }

    #[test]
    fn a_node_is_absent_from_when_the_view_saw_its_alive_record_go() {
        let (a, b, c) = (key(1), key(2), key(3));
        let t0 = Instant::now();
        let (t1, t2, t3) = (
            t0 + Duration::from_millis(1500),
            t0 + Duration::from_millis(2700),
            t0 + Duration::from_secs(4),
        );
        // a and b alive; c known (a status) but absent in the snapshot: since t0.
        let mut view = GridView::new([alive(&a), alive(&b), status(&c, "x")], t0);
        assert!(view.alive(&a.public()) && view.absent_since(&a.public()).is_none());
        assert!(!view.alive(&c.public()));
        assert_eq!(view.absent_since(&c.public()), Some(t0));
        // a's lease expires: absent from the instant the deletion is applied.
        view.apply(WatchEvent::Deleted(NotaryKey::alive(&a.public())), t1);
        assert!(!view.alive(&a.public()));
        assert_eq!(view.absent_since(&a.public()), Some(t1));
        // The same deletion again (a duplicate delivery) does not move the instant.
        view.apply(WatchEvent::Deleted(NotaryKey::alive(&a.public())), t2);
        assert_eq!(view.absent_since(&a.public()), Some(t1));
        // Other records of a change nothing about its absence.
        view.apply(WatchEvent::Put(status(&a, "still reporting")), t2);
        assert_eq!(view.absent_since(&a.public()), Some(t1));
        // Back (a new lease and a put): present, the instant forgotten; gone again:
        // counted afresh.
        view.apply(WatchEvent::Put(alive(&a)), t2);
        assert!(view.alive(&a.public()) && view.absent_since(&a.public()).is_none());
        view.apply(WatchEvent::Deleted(NotaryKey::alive(&a.public())), t3);
        assert_eq!(view.absent_since(&a.public()), Some(t3));
        // An alive record at b's key signed by someone else is not b's liveness: b is
        // absent from the put that replaced its own record.
        let forged = Record::sign(&NotaryKey::alive(&b.public()), json!({}), &c).unwrap();
        view.apply(WatchEvent::Put(forged), t2);
        assert!(!view.alive(&b.public()));
        assert_eq!(view.absent_since(&b.public()), Some(t2));
    }

    #[test]
    fn a_listing_keeps_the_instant_of_a_node_absent_in_both_and_counts_others_from_it() {
        let (a, b) = (key(1), key(2));
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_secs(1);
        let mut view = GridView::new([status(&a, "x"), alive(&b)], t0);
        assert_eq!(view.absent_since(&a.public()), Some(t0));
        view.resync([status(&a, "x"), status(&b, "x")], t1);
        assert_eq!(view.absent_since(&a.public()), Some(t0), "absent in both");
        assert_eq!(
            view.absent_since(&b.public()),
            Some(t1),
            "seen absent at t1"
        );
        view.resync([alive(&a), status(&b, "x")], t1);
        assert!(view.absent_since(&a.public()).is_none(), "present again");
    }

    #[test]
    fn own_writes_are_visible_before_their_echo_and_older_events_do_not_undo_them() {
        let bot = key(9);
        let t0 = Instant::now();
        let k = NotaryKey::placement("f", "web").unwrap();
        let (one, two, three) = (placement(&bot, 1), placement(&bot, 2), placement(&bot, 3));
        let mut view = GridView::new([one.clone()], t0);
        // The bot's compare-and-swap of `two` won: the view holds it at once.
        view.wrote(two.clone(), t0);
        assert_eq!(view.get(&k), Some(&two));
        // A delayed echo of the older record does not undo it...
        view.apply(WatchEvent::Put(one.clone()), t0);
        assert_eq!(view.get(&k), Some(&two), "an older event ignored");
        // ...nor does a deletion queued before it.
        view.apply(WatchEvent::Deleted(k.clone()), t0);
        assert_eq!(view.get(&k), Some(&two));
        // The echo arrives: from then on every event applies.
        view.apply(WatchEvent::Put(two.clone()), t0);
        assert_eq!(view.get(&k), Some(&two));
        view.apply(WatchEvent::Put(three.clone()), t0);
        assert_eq!(view.get(&k), Some(&three), "another writer's later record");
        // An own deletion likewise.
        view.removed(&k, t0);
        assert!(view.get(&k).is_none());
        view.apply(WatchEvent::Put(three.clone()), t0);
        assert!(view.get(&k).is_none(), "an older put ignored");
        view.apply(WatchEvent::Deleted(k.clone()), t0);
        view.apply(WatchEvent::Put(one.clone()), t0);
        assert_eq!(view.get(&k), Some(&one));
        // A compare-and-swap that failed re-reads the key: whatever was pending.
        view.wrote(two.clone(), t0);
        view.refresh(&k, Some(three.clone()), t0);
        assert_eq!(view.get(&k), Some(&three));
        view.apply(WatchEvent::Put(one.clone()), t0);
        assert_eq!(view.get(&k), Some(&one), "nothing pending any more");
    }

    #[test]
    fn a_feed_whose_watch_ended_subscribes_again_to_a_fresh_snapshot() {
        let dir = zos_testkit::tempdir("grid-view");
        let notary = zos_notary::open(&format!("dir://{}", dir.path().display())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (a, b) = (key(1), key(2));
        rt.block_on(notary.put(&status(&a, "before"))).unwrap();
        let mut bot = crate::Bot::new(key(9), notary.clone());
        let mut feed = rt.block_on(bot.subscribe()).unwrap();
        assert_eq!(message(feed.view(), &a).as_deref(), Some("before"));
        // A put after the snapshot arrives as an event.
        rt.block_on(notary.put(&status(&a, "after"))).unwrap();
        let got = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), feed.changed()).await
        });
        assert_eq!(got, Ok(true));
        assert_eq!(message(feed.view(), &a).as_deref(), Some("after"));
        // The nodes/ watch ends (as a backend that gave up does): the feed says so at
        // once, without waiting.
        feed.watches[1] = None;
        assert!(feed.ended());
        assert!(!rt.block_on(feed.changed()));
        // What is put meanwhile reaches no watch; the next round subscribes again and
        // sees it in the fresh snapshot.
        rt.block_on(notary.put(&status(&b, "while ended"))).unwrap();
        rt.block_on(bot.step(&mut feed)).unwrap();
        assert!(!feed.ended(), "subscribed again");
        assert_eq!(message(feed.view(), &b).as_deref(), Some("while ended"));
        // And the new watches deliver.
        rt.block_on(notary.put(&status(&b, "later"))).unwrap();
        let got = rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), feed.changed()).await
        });
        assert_eq!(got, Ok(true));
        assert_eq!(message(feed.view(), &b).as_deref(), Some("later"));
    }
}
