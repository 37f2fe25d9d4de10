//! Placement contracts on one node (docs/grid.md, "The node"), against a fake
//! provisioner, a real `dir://` notary and a real file journal: a replica runs on its
//! orchestrator's assignment only; a forged, misplaced, stale or missing assignment
//! deploys nothing; the orchestrator's placement record moving the replica elsewhere
//! removes the copy and makes its epoch a replay; a `move` replica is fenced when the
//! node's liveness lapses and runs again only where the placement record still names
//! this node, also after zosd restarts.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{contract, Keys, World};
use serde_json::json;
use zos_contract::{
    Assignment, Failover, FailoverMode, Placement, PublicKey, SecretKey, SignedAssignment,
    SignedContract,
};
use zos_engine::{Engine, EngineConfig, FileJournal, Liveness, State};
use zos_notary::{AnyNotary, Notary, NotaryKey, Record, WatchEvent};

const FARM: &str = "zt-farm";
const AFTER_S: u64 = 10;

fn orchestrator() -> SecretKey {
    SecretKey::from_seed([7; 32])
}

fn elsewhere() -> PublicKey {
    SecretKey::from_seed([8; 32]).public()
}

/// The node's `CLOCK_BOOTTIME`, as the fencing test moves it (milliseconds).
static BOOT_MS: AtomicU64 = AtomicU64::new(1_000_000);

fn boot_now() -> Duration {
    Duration::from_millis(BOOT_MS.load(Ordering::SeqCst))
}

/// A placement contract of `farm` (owner and required stakeholder signed).
fn placed(keys: &Keys, id: &str, version: u64, farm: &str, mode: FailoverMode) -> SignedContract {
    let mut c = contract(keys, id, version, 10, "/app", false).contract;
    c.nodes.clear();
    let placement = Placement {
        farm: farm.into(),
        replicas: 2,
        orchestrator: orchestrator().public(),
        failover: Failover {
            mode,
            after_s: AFTER_S,
        },
        constraints: None,
    };
    let mut doc = SignedContract::placed(c, placement).unwrap();
    doc.sign(&keys.owner).unwrap();
    doc.sign(&keys.legal).unwrap();
    doc
}

/// The contract at the farm's key, put by its owner.
fn farm_record(keys: &Keys, doc: &SignedContract) -> Record {
    let key = NotaryKey::placement_contract(FARM, &doc.contract.id).unwrap();
    Record::sign(&key, doc.to_value(), &keys.owner).unwrap()
}

/// `by`'s assignment of `replica` of `doc` to `node` at `epoch` (`by` names itself as
/// the orchestrator, as the notary's author rule wants).
fn assignment(
    by: &SecretKey,
    doc: &SignedContract,
    replica: u64,
    node: PublicKey,
    epoch: u64,
) -> Record {
    let a = Assignment {
        contract: doc.contract.id.clone(),
        version: doc.contract.version,
        digest: doc.digest,
        replica,
        node,
        epoch,
        issued_at: 0,
        orchestrator: by.public(),
    };
    let signed = SignedAssignment::sign(a, by).unwrap();
    let key = NotaryKey::assignment(&node, &doc.contract.id, replica).unwrap();
    Record::sign(&key, signed.to_value(), by).unwrap()
}

/// The orchestrator's placement record naming `node` for replica 0 at `epoch`.
fn placement_record(doc: &SignedContract, node: PublicKey, epoch: u64) -> Record {
    let body = json!({
        "contract": doc.contract.id, "version": doc.contract.version, "digest": doc.digest,
        "replicas": [{"replica": 0, "node": node, "epoch": epoch, "state": "assigned"}],
        "moves": [],
    });
    let key = NotaryKey::placement(FARM, &doc.contract.id).unwrap();
    Record::sign(&key, body, &orchestrator()).unwrap()
}

fn config() -> EngineConfig {
    EngineConfig {
        farm: Some(FARM.into()),
        ..World::config()
    }
}

/// An engine of the farm whose liveness was renewed just now (`renewed`: the sender).
fn engine(
    w: &World,
) -> (
    Engine<common::Fake, AnyNotary, FileJournal>,
    tokio::sync::watch::Sender<Option<Duration>>,
) {
    let (tx, renewed) = tokio::sync::watch::channel(Some(boot_now()));
    let liveness = Liveness {
        renewed,
        now: boot_now,
    };
    (w.engine_with(config()).with_liveness(liveness), tx)
}

async fn put(w: &World, record: &Record) {
    w.notary.put(record).await.unwrap();
}

#[tokio::test]
async fn a_replica_runs_on_its_assignment_and_leaves_on_a_move_for_good() {
    let w = World::new();
    let (mut e, _renewed) = engine(&w);
    e.start(vec![]).await.unwrap();
    let node = w.keys.node.public();
    let doc = placed(&w.keys, "web", 1, FARM, FailoverMode::Stay);
    put(&w, &farm_record(&w.keys, &doc)).await;
    // The farm's contract alone, with no assignment: not this node's.
    e.on_record(&farm_record(&w.keys, &doc)).await.unwrap();
    assert!(w.fake.is_empty());
    w.no_status("web").await;

    let first = assignment(&orchestrator(), &doc, 0, node, 1);
    e.on_record(&first).await.unwrap();
    let status = w.status_json("web").await;
    assert_eq!(status["state"], "ok", "{status}");
    assert_eq!(
        (status["replica"].clone(), status["epoch"].clone()),
        (json!(0), json!(1))
    );
    assert!(w.fake.state().workloads.contains_key("web.app"));
    assert_eq!(w.journal_json()["epochs"]["web"]["0"], 1);

    // Someone with write access to the notary deletes the assignment: without the
    // orchestrator's signed record of a move, nothing is removed.
    let mark = w.mark();
    let key = NotaryKey::assignment(&node, "web", 0).unwrap();
    e.on_event(WatchEvent::Deleted(key)).await.unwrap();
    assert!(w.calls_since(mark).is_empty(), "{:?}", w.calls_since(mark));
    assert_eq!(w.status("web").await.state, State::Ok);
    // Nor does a placement record signed by another key that says it moved.
    let mut forged = placement_record(&doc, elsewhere(), 2);
    forged = Record::sign(&forged.notary_key().unwrap(), forged.body, &w.keys.thief).unwrap();
    e.on_record(&forged).await.unwrap();
    assert!(w.calls_since(mark).is_empty(), "{:?}", w.calls_since(mark));
    assert!(w.fake.state().workloads.contains_key("web.app"));

    // The orchestrator moved it: its signed placement record says epoch 2 elsewhere.
    e.on_record(&placement_record(&doc, elsewhere(), 2))
        .await
        .unwrap();
    let status = w.status_json("web").await;
    assert_eq!(status["state"], "moved", "{status}");
    assert!(
        status["message"].as_str().unwrap().contains("epoch 2"),
        "{status}"
    );
    assert!(w.fake.is_empty(), "the copy and its volumes are gone");
    assert_eq!(w.journal_json()["epochs"]["web"]["0"], 2);

    // The old assignment again (a replay, or a notary serving it back): refused.
    let mark = w.mark();
    e.on_record(&first).await.unwrap();
    let status = w.status("web").await;
    assert_eq!(status.state, State::Refused, "{status:?}");
    assert_eq!(status.reasons[0].code, "stale_epoch", "{status:?}");
    assert!(w.calls_since(mark).is_empty(), "{:?}", w.calls_since(mark));
    assert!(w.fake.is_empty());
}

#[tokio::test]
async fn forged_misplaced_and_mismatched_assignments_deploy_nothing() {
    let w = World::new();
    let (mut e, _renewed) = engine(&w);
    e.start(vec![]).await.unwrap();
    let node = w.keys.node.public();
    let thief = w.keys.thief.clone();

    // Signed by a key that is not the contract's orchestrator.
    let doc = placed(&w.keys, "forged", 1, FARM, FailoverMode::Move);
    put(&w, &farm_record(&w.keys, &doc)).await;
    e.on_record(&assignment(&thief, &doc, 0, node, 1))
        .await
        .unwrap();
    // A contract placed in another farm, copied under this farm's key.
    let other = placed(&w.keys, "elsewhere", 1, "zt-other-farm", FailoverMode::Move);
    put(&w, &farm_record(&w.keys, &other)).await;
    e.on_record(&assignment(&orchestrator(), &other, 0, node, 1))
        .await
        .unwrap();
    // An assignment of version 1 while the farm holds version 2.
    let v1 = placed(&w.keys, "old", 1, FARM, FailoverMode::Move);
    let v2 = placed(&w.keys, "old", 2, FARM, FailoverMode::Move);
    put(&w, &farm_record(&w.keys, &v2)).await;
    e.on_record(&assignment(&orchestrator(), &v1, 0, node, 1))
        .await
        .unwrap();
    // An assignment to another node, put at this node's key.
    let mine = placed(&w.keys, "theirs", 1, FARM, FailoverMode::Move);
    put(&w, &farm_record(&w.keys, &mine)).await;
    let body = assignment(&orchestrator(), &mine, 0, elsewhere(), 1).body;
    let at_mine = NotaryKey::assignment(&node, "theirs", 0).unwrap();
    let to_other = Record::sign(&at_mine, body, &orchestrator()).unwrap();
    e.on_record(&to_other).await.unwrap();

    for (id, code) in [
        ("forged", "not_orchestrator"),
        ("elsewhere", "outside_farm"),
        ("old", "wrong_contract"),
        ("theirs", "wrong_node"),
    ] {
        let status = w.status(id).await;
        assert_eq!(status.state, State::Refused, "{id}: {status:?}");
        assert_eq!(status.reasons[0].code, code, "{id}: {status:?}");
    }
    assert!(w.fake.is_empty(), "{:?}", w.fake.state().calls);
    assert!(e.journal().data().owned.is_empty());
}

#[tokio::test]
async fn a_move_replica_is_fenced_when_the_liveness_lapses_and_runs_again_only_where_placed() {
    let w = World::new();
    let (mut e, renewed) = engine(&w);
    e.start(vec![]).await.unwrap();
    let node = w.keys.node.public();
    let doc = placed(&w.keys, "db", 1, FARM, FailoverMode::Move);
    put(&w, &farm_record(&w.keys, &doc)).await;
    put(&w, &placement_record(&doc, node, 1)).await;
    e.on_record(&assignment(&orchestrator(), &doc, 0, node, 1))
        .await
        .unwrap();
    assert_eq!(w.status("db").await.state, State::Ok);

    // Half of after_s since the last renewal was sent: the node stops it by itself.
    let last = boot_now();
    BOOT_MS.store(
        (last + Duration::from_secs(AFTER_S / 2)).as_millis() as u64,
        Ordering::SeqCst,
    );
    e.supervise(Instant::now()).await.unwrap();
    let status = w.status("db").await;
    assert_eq!(status.state, State::Fenced, "{status:?}");
    assert!(!w.fake.state().workloads.contains_key("db.app"));
    assert!(
        w.fake.state().volumes.contains_key("db.data"),
        "volumes are kept"
    );
    // Still fenced while the liveness stays lapsed.
    let mark = w.mark();
    e.supervise(Instant::now()).await.unwrap();
    assert!(w.calls_since(mark).is_empty(), "{:?}", w.calls_since(mark));

    // Renewed, and the placement record still names this node at epoch 1: it runs.
    renewed.send(Some(boot_now())).unwrap();
    e.supervise(Instant::now()).await.unwrap();
    assert_eq!(w.status("db").await.state, State::Ok);
    assert!(w.fake.state().workloads.contains_key("db.app"));

    // zosd restarts: the replica waits for a renewed liveness and the record again.
    drop(e);
    let (tx, renewed) = tokio::sync::watch::channel(None);
    let liveness = Liveness {
        renewed,
        now: boot_now,
    };
    let mut e = w.engine_with(config()).with_liveness(liveness);
    e.start(vec![]).await.unwrap();
    assert_eq!(w.status("db").await.state, State::Fenced);
    assert!(!w.fake.state().workloads.contains_key("db.app"));
    // Meanwhile the orchestrator moved it (epoch 2 elsewhere): it never starts here.
    put(&w, &placement_record(&doc, elsewhere(), 2)).await;
    tx.send(Some(boot_now())).unwrap();
    e.supervise(Instant::now()).await.unwrap();
    let status = w.status("db").await;
    assert_eq!(status.state, State::Moved, "{status:?}");
    assert!(w.fake.is_empty(), "{:?}", w.fake.state().calls);
}
