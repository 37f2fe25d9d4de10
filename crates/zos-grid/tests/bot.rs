//! The orchestrator against real notaries (a real etcd, a `dir://` tree), with
//! simulated nodes: the test writes each node's signed registration, heartbeats and
//! status reports, as zosd would, keeps each node's liveness record alive with zosd's
//! own `zos_registry::liveness` (on a runtime and a notary client of their own, as
//! separate nodes would), and reads the bot's signed assignments and placement record
//! back.
//!
//! - `placement_failover_refusals_and_a_stale_writer_on_*`: `replicas = 2` lands on two
//!   distinct nodes with room (never the one without); each assignment is signed by the
//!   orchestrator and `admit()`s on its node; a node that stops renewing its liveness
//!   record (killed: its `Liveness` dropped, nothing revoked) loses its replica to
//!   another node at the next epoch once the record has been absent for `after_s` on the
//!   bot's clock, and the old assignment is removed; a refusal moves the replica and is
//!   recorded; a write from a writer holding an older read of the placement record is
//!   refused by the notary and changes nothing.
//! - `drain_hands_over_make_before_break_and_undrain_on_*`: a drain signed by a
//!   tenant (the contract's owner) is stored by the notary but ignored by the bot, which
//!   says why, and nothing moves, also once the tenant has replaced the farm record with
//!   one naming itself (the bot keeps the farmer it saw first); the farmer's drain starts a handover (the replica stays
//!   on the drained node, the new node gets the next epoch), the old assignment stays
//!   until the new node reports `ok` at that epoch, then the record moves the replica
//!   (reason `drain`) and the old assignment goes; the drained node gets no new replica
//!   until the farmer undrains it; an old drain replayed after the undrain is ignored.
//! - `two_bots_one_leader_and_a_takeover`: two instances of one key on etcd: one leads;
//!   when it stops, the other takes over and goes on placing.
//! - `the_view_sees_an_expiry_without_relisting_and_moves_after_s_after_it`: the bot's
//!   watch-fed view (`Bot::subscribe`, `Bot::step`, as `Bot::run` loops them) on etcd:
//!   places, sees the statuses, sees a killed node's alive record expire, and moves
//!   its replica only once `after_s` has passed since the view saw the record go, with
//!   one subscription and no listing at all.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use zos_contract::{
    admit, BlueprintRef, Contract, Failover, FailoverMode, Placement, PublicKey, SecretKey,
    SignedAssignment, SignedContract,
};
use zos_engine::{State, StatusReport};
use zos_grid::bot::ROUND_EVERY;
use zos_grid::{Bot, Drain, Handover, PlacementRecord, Reason, ReplicaState};
use zos_notary::{
    AnyNotary, EventWatch, Expect, KeyPrefix, Lease, Notary, NotaryError, NotaryKey, Record, Watch,
};
use zos_registry::liveness::{self, Liveness};
use zos_registry::{ContractCounts, Dmi, Farm, Heartbeat, NodeResources, Registration, Usage};
use zos_testkit::etcd::Etcd;

const FARM: &str = "zt-grid-farm";
const ID: &str = "web";
const GIB: u64 = 1 << 30;
/// The floor of `failover.after_s`.
const AFTER_S: u64 = 10;
const WAIT: Duration = Duration::from_secs(60);
/// The simulated nodes' liveness TTL (zosd's).
const TTL: Duration = Duration::from_secs(2);

fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn owner() -> SecretKey {
    key(1)
}
fn orchestrator() -> SecretKey {
    key(2)
}
fn farmer() -> SecretKey {
    key(4)
}
/// Nodes 11, 12, 14 have room; 13 has 512 MiB of memory.
fn nodes() -> Vec<SecretKey> {
    vec![key(11), key(12), key(13), key(14)]
}

fn capacity(n: &SecretKey) -> NodeResources {
    NodeResources {
        cpus: 4,
        memory_bytes: if n.public() == key(13).public() {
            GIB / 2
        } else {
            8 * GIB
        },
        ssd_bytes: 100 * GIB,
        hdd_bytes: 0,
    }
}

fn contract_doc() -> SignedContract {
    let expert = key(3);
    let blueprint = zos_testkit::contract::signed_blueprint(
        &expert,
        json!({
            "name": "web", "version": "1.0.0", "params": {},
            "body": {"workloads": [{
                "name": "app", "kind": "container",
                "flist": {"url": "dir:///srv/web.fl",
                          "sha256": "0000000000000000000000000000000000000000000000000000000000000000",
                          "stores": ["dir:///srv/store"],
                          "publishers": [expert.public().to_hex()]},
                "entrypoint": ["/bin/web"], "cpu": 1, "memory_mib": 1024
            }]}
        }),
    );
    let c = Contract {
        id: ID.into(),
        version: 1,
        owner: owner().public(),
        nodes: vec![],
        blueprint: BlueprintRef::Embedded(blueprint),
        params: BTreeMap::new(),
        stakeholders: vec![],
        threshold: 0,
        not_before: None,
        expires: Some(zos_testkit::contract::EXPIRES),
    };
    let placement = Placement {
        farm: FARM.into(),
        replicas: 2,
        orchestrator: orchestrator().public(),
        failover: Failover {
            mode: FailoverMode::Move,
            after_s: AFTER_S,
        },
        constraints: None,
    };
    let mut doc = SignedContract::placed(c, placement).unwrap();
    doc.sign(&owner()).unwrap();
    doc
}

struct Grid {
    notary: AnyNotary,
    rt: tokio::runtime::Runtime,
    beats: u64,
    /// The nodes' liveness tasks run here, with their own client: they renew while the
    /// test's runtime is idle.
    nodes_rt: tokio::runtime::Runtime,
    nodes_notary: AnyNotary,
    alive: HashMap<PublicKey, Liveness>,
}

impl Grid {
    fn new(url: &str) -> Grid {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let nodes_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let g = Grid {
            notary: zos_notary::open(url).unwrap(),
            rt,
            beats: 0,
            nodes_rt,
            nodes_notary: zos_notary::open(url).unwrap(),
            alive: HashMap::new(),
        };
        for n in nodes() {
            let reg = Registration {
                farm: FARM.into(),
                version: "test".into(),
                capacity: capacity(&n),
                offered: None,
                nics: vec![],
                dmi: Dmi::default(),
                registered_at: unix_now(),
            };
            g.put(&reg.sign(&n, unix_now()).unwrap());
        }
        let farm = Farm::new(FARM, "test farm", farmer().public(), unix_now()).unwrap();
        g.put(&farm.sign(&farmer(), unix_now()).unwrap());
        let doc = contract_doc();
        let key = NotaryKey::placement_contract(FARM, ID).unwrap();
        g.put(&Record::sign(&key, doc.to_value(), &owner()).unwrap());
        g
    }

    fn put(&self, r: &Record) {
        self.rt.block_on(self.notary.put(r)).unwrap();
    }

    /// Starts keeping `n`'s liveness record alive, and waits until it is in the notary.
    fn live(&mut self, n: &SecretKey) {
        let live = {
            let _rt = self.nodes_rt.enter();
            liveness::start(self.nodes_notary.clone(), n.clone(), TTL)
        };
        let mut renewed = live.renewed();
        self.nodes_rt
            .block_on(async {
                tokio::time::timeout(WAIT, renewed.wait_for(|r| r.is_some()))
                    .await
                    .map(|r| r.is_ok())
            })
            .expect("the alive record is put");
        assert!(self.get(&NotaryKey::alive(&n.public())).is_some());
        self.alive.insert(n.public(), live);
    }

    /// `n` dies: it stops renewing (nothing is revoked); its record expires.
    fn kill(&mut self, n: &PublicKey) {
        self.alive.remove(n).expect("a live node");
    }

    fn get(&self, k: &NotaryKey) -> Option<Record> {
        self.rt.block_on(self.notary.get(k)).unwrap()
    }

    /// A new heartbeat from each of `alive` (its `time` changes every call).
    fn beat(&mut self, alive: &[&SecretKey]) {
        self.beats += 1;
        for n in alive {
            let hb = Heartbeat {
                uptime_secs: self.beats,
                reserved: NodeResources {
                    cpus: 0,
                    memory_bytes: 0,
                    ssd_bytes: 0,
                    hdd_bytes: 0,
                },
                used: Usage::default(),
                contracts: ContractCounts::default(),
                workloads: 0,
                listening: vec![],
                listening_total: 0,
                time: self.beats,
            };
            self.put(&hb.sign(n, unix_now()).unwrap());
        }
    }

    fn status(&self, node: &SecretKey, state: State, message: &str) {
        let s = StatusReport::new(ID, Some(1), state, message);
        let key = NotaryKey::status(&node.public(), ID).unwrap();
        self.put(&Record::sign(&key, serde_json::to_value(&s).unwrap(), node).unwrap());
    }

    /// A status as zosd publishes it for a placement contract: with the replica and
    /// its epoch.
    fn status_at(&self, node: &SecretKey, state: State, replica: u64, epoch: u64) {
        let mut s = StatusReport::new(ID, Some(1), state, "as the node says");
        s.replica = Some(replica);
        s.epoch = Some(epoch);
        let key = NotaryKey::status(&node.public(), ID).unwrap();
        self.put(&Record::sign(&key, serde_json::to_value(&s).unwrap(), node).unwrap());
    }

    fn placement(&self) -> (Record, PlacementRecord) {
        let r = self
            .get(&NotaryKey::placement(FARM, ID).unwrap())
            .expect("a placement record");
        assert_eq!(
            r.author,
            orchestrator().public(),
            "written by the orchestrator"
        );
        let p = serde_json::from_value(r.body.clone()).unwrap();
        (r, p)
    }

    /// The assignment of `replica` on `node`, checked as the node would.
    fn assignment(&self, node: &PublicKey, replica: u64) -> Option<SignedAssignment> {
        let r = self.get(&NotaryKey::assignment(node, ID, replica).unwrap())?;
        assert_eq!(r.author, orchestrator().public());
        Some(SignedAssignment::from_value(&r.body).unwrap())
    }
}

fn where_runs(p: &PlacementRecord) -> Vec<(PublicKey, u64)> {
    p.replicas
        .iter()
        .map(|r| (r.node.expect("placed"), r.epoch))
        .collect()
}

fn scenario(url: &str) {
    let mut g = Grid::new(url);
    let all = nodes();
    let refs: Vec<&SecretKey> = all.iter().collect();
    g.beat(&refs);
    for n in &all {
        g.live(n);
    }
    let mut bot = Bot::new(orchestrator(), g.notary.clone());
    let round = g.rt.block_on(bot.round()).unwrap();
    assert_eq!(round.contracts, 1, "{round:?}");
    assert_eq!(round.assigned.len(), 2, "{round:?}");

    // 1. Two distinct nodes with room; never node 13.
    let (_, p) = g.placement();
    let placed = where_runs(&p);
    assert_ne!(placed[0].0, placed[1].0, "distinct nodes");
    assert!(
        placed
            .iter()
            .all(|(n, e)| *n != key(13).public() && *e == 1),
        "{placed:?}"
    );
    let farm: BTreeSet<PublicKey> = all.iter().map(|n| n.public()).collect();
    let doc = contract_doc();
    for (replica, (node, _)) in placed.iter().enumerate() {
        let a = g
            .assignment(node, replica as u64)
            .expect("the assignment is written");
        let admitted = admit(Some(&a), &doc, node, &farm, 0).expect("the node admits it");
        assert_eq!((admitted.replica, admitted.epoch), (replica as u64, 1));
    }
    for n in &all {
        if placed.iter().any(|(k, _)| *k == n.public()) {
            g.status(n, State::Ok, "running");
        }
    }

    // 2. Replica 0's node dies (its liveness record is no longer renewed): moved at
    // epoch 2 once the record has been absent for after_s on the bot's clock, while the
    // others stay alive.
    let lost = placed[0].0;
    g.kill(&lost);
    let alive: Vec<&SecretKey> = all.iter().filter(|n| n.public() != lost).collect();
    let deadline = Instant::now() + WAIT;
    let moved = loop {
        // Its heartbeats go on (a zosd whose liveness died): they are not liveness.
        g.beat(&refs);
        g.rt.block_on(bot.round()).unwrap();
        let (_, p) = g.placement();
        if p.replicas[0].epoch == 2 {
            break p;
        }
        assert!(Instant::now() < deadline, "not moved: {p:?}");
        // A round period: time must pass for the node to be lost.
        std::thread::sleep(Duration::from_millis(500));
    };
    let new = moved.replicas[0].node.unwrap();
    assert!(
        new != lost && new != placed[1].0 && new != key(13).public(),
        "{moved:?}"
    );
    let last = moved.moves.last().unwrap();
    assert!(
        matches!(&last.reason, Reason::NodeLost { node, silent_s } if *node == lost && *silent_s > AFTER_S),
        "{last:?}"
    );
    assert!(
        g.assignment(&lost, 0).is_none(),
        "the replaced assignment is removed"
    );
    let a = g.assignment(&new, 0).unwrap();
    assert_eq!(admit(Some(&a), &doc, &new, &farm, 1).unwrap().epoch, 2);

    // 3. The new node refuses it: it moves on, and the refusal is recorded. Only node 13
    // (no room) and the lost node remain: nothing can take it, and the status says why.
    let new_key = all.iter().find(|n| n.public() == new).unwrap();
    g.status(new_key, State::Refused, "over capacity");
    g.beat(&alive);
    g.rt.block_on(bot.round()).unwrap();
    let (before, p) = g.placement();
    let r0 = &p.replicas[0];
    assert_eq!(r0.refused_on.len(), 1, "{r0:?}");
    assert_eq!(r0.refused_on[0].node, new);
    assert_eq!(r0.state, ReplicaState::Unplaceable, "{r0:?}");
    assert!(r0.detail.contains("without room"), "{r0:?}");

    // 4. A writer holding an older read of the placement record (a stale leader) is
    // refused by the notary, and nothing changes.
    let mut stale = p.clone();
    stale.replicas[0].node = Some(key(13).public());
    stale.replicas[0].epoch = 99;
    g.beat(&alive);
    let lost_node = all.iter().find(|n| n.public() == lost).unwrap();
    g.beat(&[lost_node]);
    // The lost node comes back: it can take the replica again.
    g.live(lost_node);
    g.rt.block_on(bot.round()).unwrap();
    let (now, _) = g.placement();
    assert_ne!(now, before, "the bot wrote since the stale read");
    let forged = Record::sign(
        &NotaryKey::placement(FARM, ID).unwrap(),
        serde_json::to_value(&stale).unwrap(),
        &orchestrator(),
    )
    .unwrap();
    let err =
        g.rt.block_on(g.notary.put_if(&forged, &Expect::Current(before)))
            .unwrap_err();
    assert!(matches!(err, NotaryError::Conflict { .. }), "{err}");
    assert_eq!(g.placement().0, now, "nothing changed");
}

#[test]
fn placement_failover_refusals_and_a_stale_writer_on_etcd() {
    let etcd = Etcd::temp();
    scenario(&etcd.url("zos"));
}

#[test]
fn placement_failover_refusals_and_a_stale_writer_on_a_directory() {
    let dir = zos_testkit::tempdir("grid");
    scenario(&format!("dir://{}", dir.path().display()));
}

fn drain_scenario(url: &str) {
    let mut g = Grid::new(url);
    let all = nodes();
    let refs: Vec<&SecretKey> = all.iter().collect();
    g.beat(&refs);
    for n in &all {
        g.live(n);
    }
    let secret = |k: &PublicKey| all.iter().find(|n| n.public() == *k).unwrap().clone();
    let mut bot = Bot::new(orchestrator(), g.notary.clone());
    g.rt.block_on(bot.round()).unwrap();
    let (_, p) = g.placement();
    let placed = where_runs(&p);
    let (a, b) = (placed[0].0, placed[1].0);
    // The one node left with room: 11, 12 or 14, neither of the two.
    let c = [key(11), key(12), key(14)]
        .iter()
        .map(|k| k.public())
        .find(|k| *k != a && *k != b)
        .unwrap();
    g.status_at(&secret(&a), State::Ok, 0, 1);
    g.status_at(&secret(&b), State::Ok, 1, 1);
    g.rt.block_on(bot.round()).unwrap();
    let (_, running) = g.placement();
    assert_eq!(running.replicas[0].state, ReplicaState::Running);

    // 1. The attack: a tenant (the contract's owner) drains node a to pull the replica
    // off it. The notary stores it (it cannot know the farmer); the bot ignores it,
    // says why, and nothing moves.
    let drain_key = NotaryKey::drain(FARM, &a).unwrap();
    let forged = Record::sign(&drain_key, json!({"drained": true}), &owner()).unwrap();
    g.put(&forged);
    assert_eq!(g.get(&drain_key), Some(forged));
    let round = g.rt.block_on(bot.round()).unwrap();
    assert!(round.drained.is_empty(), "{round:?}");
    assert!(
        round
            .ignored_drains
            .iter()
            .any(|(k, why)| *k == drain_key.to_string()
                && why.contains("not by the farmer")
                && why.contains(&owner().public().to_string())),
        "{round:?}"
    );
    assert!(round.assigned.is_empty(), "{round:?}");
    let (_, p) = g.placement();
    assert_eq!(p, running, "nothing moved");
    assert!(g.assignment(&c, 0).is_none(), "no handover written");
    assert!(g.assignment(&a, 0).is_some());
    // The tenant also replaces the farm record with one naming itself as the farmer
    // (the notary stores any well-signed farm record): the bot keeps the farmer it saw
    // first, so the tenant's drain is still not believed.
    let farm_key = NotaryKey::farm(FARM).unwrap();
    let farmers_farm = g.get(&farm_key).unwrap();
    let taken = Farm::new(FARM, "mine now", owner().public(), unix_now()).unwrap();
    g.put(&taken.sign(&owner(), unix_now()).unwrap());
    let round = g.rt.block_on(bot.round()).unwrap();
    assert!(round.drained.is_empty(), "{round:?}");
    assert!(
        round
            .ignored_drains
            .iter()
            .any(|(k, why)| *k == drain_key.to_string() && why.contains("not believed")),
        "{round:?}"
    );
    assert!(round.assigned.is_empty(), "{round:?}");
    assert_eq!(g.placement().1, running, "nothing moved");
    g.put(&farmers_farm);

    // 2. The farmer drains a: a handover to c at epoch 2, the replica staying on a.
    let farm = Farm::new(FARM, "test farm", farmer().public(), 0).unwrap();
    let drain = Drain { drained: true }.sign(&farm, &a, &farmer()).unwrap();
    g.put(&drain);
    let round = g.rt.block_on(bot.round()).unwrap();
    assert_eq!(round.drained, vec![a], "{round:?}");
    assert_eq!(round.assigned, vec![(ID.to_string(), 0, c, 2)], "{round:?}");
    let (_, p) = g.placement();
    let r0 = &p.replicas[0];
    assert_eq!((r0.node, r0.epoch), (Some(a), 1), "still a's: {r0:?}");
    assert_eq!(r0.handover, Some(Handover { node: c, epoch: 2 }));
    assert!(r0.handover_text().unwrap().contains(&c.to_string()));
    let farm_nodes: BTreeSet<PublicKey> = all.iter().map(|n| n.public()).collect();
    let doc = contract_doc();
    let on_c = g.assignment(&c, 0).expect("c's assignment");
    assert_eq!(
        admit(Some(&on_c), &doc, &c, &farm_nodes, 0).unwrap().epoch,
        2,
        "c admits it at epoch 2"
    );
    assert!(g.assignment(&a, 0).is_some(), "a keeps its assignment");

    // 3. c has not reported yet (or only provisioning): nothing changes; a stays.
    g.status_at(&secret(&c), State::Provisioning, 0, 2);
    let round = g.rt.block_on(bot.round()).unwrap();
    assert!(
        round.handed.is_empty() && round.assigned.is_empty(),
        "{round:?}"
    );
    assert_eq!(g.placement().1.replicas[0].handover, r0.handover);
    assert!(g.assignment(&a, 0).is_some(), "a keeps its assignment");

    // 3b. c fences it (its liveness lapsed): it would wait for a record naming it,
    // which a handover does not write before its ok, so it counts as a refusal and
    // another node is sought; none has room here, so the replica stays on a and says so.
    g.status_at(&secret(&c), State::Fenced, 0, 2);
    g.rt.block_on(bot.round()).unwrap();
    let (_, p) = g.placement();
    let r0 = &p.replicas[0];
    assert_eq!((r0.node, r0.epoch), (Some(a), 1), "{r0:?}");
    assert!(
        r0.refused_on
            .iter()
            .any(|x| x.node == c && x.reason.contains("fenced")),
        "{r0:?}"
    );
    assert!(r0.detail.contains("drained; no handover"), "{r0:?}");
    assert!(g.assignment(&a, 0).is_some(), "a keeps its assignment");

    // 4. c reports ok at epoch 2: the replica moves there (reason drain), a's
    // assignment goes; a, reading the record, sees epoch 2 elsewhere and stops.
    g.status_at(&secret(&c), State::Ok, 0, 2);
    let round = g.rt.block_on(bot.round()).unwrap();
    assert_eq!(
        round.handed,
        vec![(ID.to_string(), 0, a, c, 2)],
        "{round:?}"
    );
    let (_, p) = g.placement();
    let r0 = &p.replicas[0];
    assert_eq!((r0.node, r0.epoch, r0.handover), (Some(c), 2, None));
    assert_eq!(r0.state, ReplicaState::Running);
    let last = p.moves.last().unwrap();
    assert_eq!((last.from, last.to, last.epoch), (Some(a), c, 2));
    assert_eq!(last.reason, Reason::Drain { node: a });
    assert!(g.assignment(&a, 0).is_none(), "a's assignment is removed");
    assert!(g.assignment(&c, 0).is_some());

    // 5. The drained node gets nothing new: b refuses replica 1, and the only node with
    // room is a (13 has none, c runs replica 0).
    g.status_at(&secret(&b), State::Refused, 1, 1);
    let round = g.rt.block_on(bot.round()).unwrap();
    assert!(round.assigned.is_empty(), "{round:?}");
    let (_, p) = g.placement();
    let r1 = &p.replicas[1];
    assert_eq!(r1.state, ReplicaState::Unplaceable, "{r1:?}");
    assert!(r1.detail.contains("1 drained"), "{r1:?}");
    assert!(g.assignment(&a, 1).is_none());

    // 6. The farmer undrains a: it gets replica 1 (replica 0 does not move back).
    let undrain = Record::sign_at(
        &drain_key,
        json!({"drained": false}),
        &farmer(),
        drain.signed_at + 1,
    )
    .unwrap();
    g.put(&undrain);
    let round = g.rt.block_on(bot.round()).unwrap();
    assert!(round.drained.is_empty(), "{round:?}");
    assert_eq!(round.assigned, vec![(ID.to_string(), 1, a, 2)], "{round:?}");
    let (_, undrained) = g.placement();
    assert_eq!(where_runs(&undrained), vec![(c, 2), (a, 2)]);

    // 7. The attack again: the farmer's old drain, replayed at its key by anyone with
    // write access, is older than the undrain the bot accepted: ignored, nothing moves.
    g.put(&drain);
    let round = g.rt.block_on(bot.round()).unwrap();
    assert!(round.drained.is_empty(), "{round:?}");
    assert!(
        round
            .ignored_drains
            .iter()
            .any(|(k, why)| *k == drain_key.to_string() && why.contains("replay")),
        "{round:?}"
    );
    assert!(round.assigned.is_empty(), "{round:?}");
    let (_, p) = g.placement();
    assert_eq!(where_runs(&p), vec![(c, 2), (a, 2)]);
    assert!(p.replicas[1].handover.is_none(), "{p:?}");
    // a's status still speaks of replica 0 at epoch 1, which it ran before: not taken
    // for replica 1 at epoch 2 running.
    assert_eq!(p.replicas[1].state, ReplicaState::Assigned, "{p:?}");
}

#[test]
fn drain_hands_over_make_before_break_and_undrain_on_etcd() {
    let etcd = Etcd::temp();
    drain_scenario(&etcd.url("zos"));
}

#[test]
fn drain_hands_over_make_before_break_and_undrain_on_a_directory() {
    let dir = zos_testkit::tempdir("grid-drain");
    drain_scenario(&format!("dir://{}", dir.path().display()));
}

#[test]
fn two_bots_one_leader_and_a_takeover() {
    let etcd = Etcd::temp();
    let mut g = Grid::new(&etcd.url("zos"));
    let all = nodes();
    let refs: Vec<&SecretKey> = all.iter().collect();
    g.beat(&refs);
    for n in &all {
        g.live(n);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop_a, a_stopped) = tokio::sync::oneshot::channel::<()>();
    let (_stop_b, b_stopped) = tokio::sync::oneshot::channel::<()>();
    // Each bot its own client: a client's pooled connections are driven by the runtime
    // that made them, and the test's own reads run on another one.
    let url = etcd.url("zos");
    let own = || zos_notary::open(&url).unwrap();
    let a = rt.spawn(Bot::new(orchestrator(), own()).run(async {
        let _ = a_stopped.await;
    }));
    let leader_key = NotaryKey::leader(&orchestrator().public());
    let deadline = Instant::now() + WAIT;
    let first = loop {
        if let Some(r) = g.get(&leader_key) {
            break r.body["instance"].clone();
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(50));
    };
    let b = rt.spawn(Bot::new(orchestrator(), own()).run(async {
        let _ = b_stopped.await;
    }));
    // The first leads and places.
    let deadline = Instant::now() + WAIT;
    while g.get(&NotaryKey::placement(FARM, ID).unwrap()).is_none() {
        assert!(Instant::now() < deadline, "the leader placed nothing");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(g.get(&leader_key).unwrap().body["instance"], first);
    // The leader stops (its lease revoked): the other takes over.
    stop_a.send(()).unwrap();
    rt.block_on(a).unwrap().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(r) = g.get(&leader_key) {
            if r.body["instance"] != first {
                break;
            }
        }
        assert!(Instant::now() < deadline, "nobody took over");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!b.is_finished());
}

/// A notary that counts the bot's listings and subscriptions (and otherwise is the real
/// one it wraps).
#[derive(Clone)]
struct Counted {
    inner: AnyNotary,
    lists: Arc<AtomicUsize>,
    subscriptions: Arc<AtomicUsize>,
}

impl Notary for Counted {
    async fn put(&self, record: &Record) -> Result<(), NotaryError> {
        self.inner.put(record).await
    }
    async fn get(&self, key: &NotaryKey) -> Result<Option<Record>, NotaryError> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &KeyPrefix) -> Result<Vec<Record>, NotaryError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        self.inner.list(prefix).await
    }
    async fn watch(&self, prefix: &KeyPrefix) -> Result<Watch, NotaryError> {
        self.inner.watch(prefix).await
    }
    async fn put_if(&self, record: &Record, expect: &Expect) -> Result<(), NotaryError> {
        self.inner.put_if(record, expect).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, NotaryError> {
        self.inner.grant_lease(ttl).await
    }
    async fn put_leased(
        &self,
        record: &Record,
        lease: &Lease,
        expect: &Expect,
    ) -> Result<(), NotaryError> {
        self.inner.put_leased(record, lease, expect).await
    }
    async fn keep_alive(&self, lease: &Lease) -> Result<Duration, NotaryError> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke(&self, lease: &Lease) -> Result<(), NotaryError> {
        self.inner.revoke(lease).await
    }
    async fn delete(&self, key: &NotaryKey) -> Result<(), NotaryError> {
        self.inner.delete(key).await
    }
    async fn watch_events(&self, prefix: &KeyPrefix) -> Result<EventWatch, NotaryError> {
        self.inner.watch_events(prefix).await
    }
    async fn subscribe_events(
        &self,
        prefix: &KeyPrefix,
    ) -> Result<(Vec<Record>, EventWatch), NotaryError> {
        self.subscriptions.fetch_add(1, Ordering::SeqCst);
        self.inner.subscribe_events(prefix).await
    }
}

/// As `Bot::run` loops: the next change applied to the view or the next round due
/// (`ROUND_EVERY`, or a node absent for `after_s`), then a round; with the instants it
/// started and ended.
fn next(
    rt: &tokio::runtime::Runtime,
    bot: &mut Bot<Counted>,
    feed: &mut zos_grid::Feed,
) -> (Instant, zos_grid::Round, Instant) {
    let wake = bot.next_round_at(Instant::now());
    assert!(wake <= Instant::now() + ROUND_EVERY);
    rt.block_on(async {
        tokio::select! {
            true = feed.changed() => {}
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    });
    let started = Instant::now();
    let round = rt.block_on(bot.step(feed)).unwrap();
    (started, round, Instant::now())
}

#[test]
fn the_view_sees_an_expiry_without_relisting_and_moves_after_s_after_it() {
    let etcd = Etcd::temp();
    let mut g = Grid::new(&etcd.url("zos"));
    let all = nodes();
    let refs: Vec<&SecretKey> = all.iter().collect();
    g.beat(&refs);
    for n in &all {
        g.live(n);
    }
    let counted = Counted {
        inner: g.notary.clone(),
        lists: Arc::default(),
        subscriptions: Arc::default(),
    };
    let (lists, subscriptions) = (counted.lists.clone(), counted.subscriptions.clone());
    let mut bot = Bot::new(orchestrator(), counted);
    let mut feed = g.rt.block_on(bot.subscribe()).unwrap();
    assert_eq!(subscriptions.load(Ordering::SeqCst), 2, "grid/ and nodes/");
    // Placed from the snapshot.
    let round = g.rt.block_on(bot.step(&mut feed)).unwrap();
    assert_eq!(round.assigned.len(), 2, "{round:?}");
    let (record, p) = g.placement();
    let placed = where_runs(&p);
    // What the bot wrote is in its view already: no event has been applied since the
    // round (the echoes wait in the feed).
    let key = NotaryKey::placement(FARM, ID).unwrap();
    assert_eq!(
        feed.view().get(&key),
        Some(&record),
        "its own write, before the echo"
    );
    for (replica, (node, _)) in placed.iter().enumerate() {
        let k = NotaryKey::assignment(node, ID, replica as u64).unwrap();
        assert_eq!(feed.view().get(&k), g.get(&k).as_ref());
    }
    for (replica, (node, epoch)) in placed.iter().enumerate() {
        let n = all.iter().find(|n| n.public() == *node).unwrap();
        g.status_at(n, State::Ok, replica as u64, *epoch);
    }
    // The statuses arrive as events: the bot writes both replicas running.
    let deadline = Instant::now() + WAIT;
    loop {
        next(&g.rt, &mut bot, &mut feed);
        if g.placement()
            .1
            .replicas
            .iter()
            .all(|r| r.state == ReplicaState::Running)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never running: {:?}",
            g.placement()
        );
    }

    // Replica 0's node dies: its alive record expires in etcd, and the view sees the
    // deletion as an event.
    let lost = placed[0].0;
    g.kill(&lost);
    let deadline = Instant::now() + WAIT;
    let gone = loop {
        let (_, round, _) = next(&g.rt, &mut bot, &mut feed);
        assert!(round.assigned.is_empty(), "nothing moves yet: {round:?}");
        if let Some(at) = feed.view().absent_since(&lost) {
            break at;
        }
        assert!(
            Instant::now() < deadline,
            "the view never saw the record go"
        );
    };
    assert!(!feed.view().alive(&lost));
    assert!(
        g.get(&NotaryKey::alive(&lost)).is_none(),
        "etcd expired it too"
    );

    // Moved at epoch 2 once after_s has passed on the bot's clock since then, not before.
    let deadline = Instant::now() + WAIT;
    let (started, ended) = loop {
        let (started, round, ended) = next(&g.rt, &mut bot, &mut feed);
        if round.assigned.iter().any(|(_, r, _, e)| *r == 0 && *e == 2) {
            break (started, ended);
        }
        assert!(round.assigned.is_empty(), "{round:?}");
        assert!(Instant::now() < deadline, "never moved");
    };
    assert!(
        ended.duration_since(gone) > Duration::from_secs(AFTER_S),
        "moved {:?} after the view saw the node go",
        ended.duration_since(gone)
    );
    let (_, moved) = g.placement();
    assert_eq!(moved.replicas[0].epoch, 2);
    let new = moved.replicas[0].node.unwrap();
    assert!(new != lost && new != placed[1].0, "{moved:?}");
    let last = moved.moves.last().unwrap();
    assert!(
        matches!(&last.reason, Reason::NodeLost { node, silent_s } if *node == lost && *silent_s > AFTER_S),
        "{last:?}"
    );
    assert!(
        g.assignment(&lost, 0).is_none(),
        "the old assignment removed"
    );
    assert_eq!(g.assignment(&new, 0).unwrap().assignment.epoch, 2);
    // All of it from the one subscription: no listing, no second snapshot.
    assert_eq!(lists.load(Ordering::SeqCst), 0, "no listing");
    assert_eq!(
        subscriptions.load(Ordering::SeqCst),
        2,
        "no second snapshot"
    );
    eprintln!(
        "the view saw the node go; the round that moved it ran {:.2}-{:.2} s after that (after_s {AFTER_S})",
        started.duration_since(gone).as_secs_f64(),
        ended.duration_since(gone).as_secs_f64()
    );
}
