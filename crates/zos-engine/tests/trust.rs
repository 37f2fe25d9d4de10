//! Attacks on the engine (issue #13), each carried out against the real engine, a real
//! `dir://` notary and a real file journal, with the fake provisioner recording every
//! call. Each test asserts the specific refusal AND that nothing was torn down or
//! provisioned for the attack, that the victim's workload and volume are intact, and
//! that the victim's own cancellation still works afterwards.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use common::{
    cancellation_by, cancellation_record, contract, contract_by, contract_record, cosign_anyway,
    raw_record, resign, World,
};
use serde_json::{json, Value};
use zos_contract::Stakeholder;
use zos_engine::{ProvisionError, WorkloadState};

/// The reason codes of a status (or of its `refused_update`).
fn codes(v: &Value) -> Vec<String> {
    v["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["code"].as_str().map(str::to_string))
        .collect()
}

/// Runs the owner's `web` v1 (co-signed by the required stakeholder `legal`).
async fn victim_runs(
    w: &World,
    engine: &mut zos_engine::Engine<common::Fake, zos_notary::AnyNotary, zos_engine::FileJournal>,
) {
    engine.start(vec![]).await.unwrap();
    let v1 = contract(&w.keys, "web", 1, 10, "/app", true);
    engine
        .on_record(&contract_record(&w.keys, &v1))
        .await
        .unwrap();
    let s = w.status_json("web").await;
    assert_eq!((&s["state"], &s["version"]), (&json!("ok"), &json!(1)));
}

/// The victim's v1 still runs, untouched: same process (started once), same plan, its
/// volume there, the journal still naming its owner.
fn victim_intact(
    w: &World,
    engine: &zos_engine::Engine<common::Fake, zos_notary::AnyNotary, zos_engine::FileJournal>,
) {
    let s = w.fake.state();
    assert_eq!(s.workloads["web.app"], (WorkloadState::Running, 1));
    assert_eq!(s.workload_plans["web.app"].workload.entrypoint, ["/app"]);
    assert!(s.volumes.contains_key("web.data"));
    assert!(s.networks.contains_key("web.net"));
    let owned = engine.journal().owned("web").expect("still owned");
    assert_eq!(owned.owner, w.keys.owner.public());
    assert_eq!(owned.version, 1);
}

/// The victim's signed cancellation stops it and removes everything.
async fn victim_cancels(
    w: &World,
    engine: &mut zos_engine::Engine<common::Fake, zos_notary::AnyNotary, zos_engine::FileJournal>,
    version: u64,
) {
    engine
        .on_record(&cancellation_record(&w.keys, "web", version))
        .await
        .unwrap();
    let s = w.status_json("web").await;
    assert_eq!(s["state"], "cancelled", "{s:#}");
    assert!(w.fake.is_empty(), "{:?}", w.fake.state());
    assert!(engine.journal().owned("web").is_none());
}

#[tokio::test]
async fn c1_another_owner_cannot_take_over_a_running_contract() {
    let w = World::new();
    let mut engine = w.engine();
    victim_runs(&w, &mut engine).await;
    let mark = w.mark();

    // B publishes version 2 of A's contract id, owned and signed by B alone; its
    // workload would mount A's volume.
    let b = contract_by(
        &w.keys,
        &w.keys.thief,
        "web",
        2,
        "/steal",
        vec![],
        0,
        &[&w.keys.thief],
    );
    engine
        .on_record(&raw_record(&w.keys, &w.keys.thief, "web", b.to_value()))
        .await
        .unwrap();

    assert_eq!(w.calls_since(mark), Vec::<String>::new(), "nothing touched");
    victim_intact(&w, &engine);
    let s = w.status_json("web").await;
    assert_eq!(
        (&s["state"], &s["version"]),
        (&json!("ok"), &json!(1)),
        "{s:#}"
    );
    assert_eq!(s["refused_update"]["version"], 2, "{s:#}");
    assert_eq!(codes(&s["refused_update"]), ["owner_changed"], "{s:#}");
    assert!(
        s["refused_update"]["message"]
            .as_str()
            .unwrap()
            .contains(&w.keys.thief.public().to_string()),
        "{s:#}"
    );

    victim_cancels(&w, &mut engine, 3).await;
}

#[tokio::test]
async fn m1_an_update_cannot_drop_the_running_versions_stakeholders() {
    let w = World::new();
    let mut engine = w.engine();
    victim_runs(&w, &mut engine).await;
    let mark = w.mark();

    // The owner alone publishes v2 without the required stakeholder `legal`.
    let v1 = contract(&w.keys, "web", 1, 10, "/app", true);
    let v2 = resign(
        &v1,
        |c| {
            c.version = 2;
            c.stakeholders.clear();
            c.threshold = 0;
            c.params.insert("users".into(), json!(20));
        },
        &[&w.keys.owner],
    );
    engine
        .on_record(&contract_record(&w.keys, &v2))
        .await
        .unwrap();
    assert_eq!(w.calls_since(mark), Vec::<String>::new(), "nothing touched");
    victim_intact(&w, &engine);
    let s = w.status_json("web").await;
    assert_eq!((&s["state"], &s["version"]), (&json!("ok"), &json!(1)));
    assert_eq!(s["refused_update"]["version"], 2, "{s:#}");
    assert_eq!(
        codes(&s["refused_update"]),
        ["update_required_signer_missing", "update_threshold_not_met"],
        "{s:#}"
    );

    // With the running stakeholder's consent (its signature on the new document's
    // digest), the same change goes through.
    let mut consented = v2.clone();
    cosign_anyway(&mut consented, &w.keys.legal);
    engine
        .on_record(&contract_record(&w.keys, &consented))
        .await
        .unwrap();
    let s = w.status_json("web").await;
    assert_eq!((&s["state"], &s["version"]), (&json!("ok"), &json!(2)));
    assert!(s["refused_update"].is_null(), "{s:#}");
    assert_eq!(w.fake.state().volumes["web.data"], 200);
    victim_cancels(&w, &mut engine, 3).await;
}

#[tokio::test]
async fn m1_an_update_cannot_lower_the_threshold_alone() {
    let w = World::new();
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    let optional = |k: &zos_contract::SecretKey| Stakeholder {
        key: k.public(),
        weight: 1,
        required: false,
    };
    let (owner, legal, budget) = (&w.keys.owner, &w.keys.legal, &w.keys.budget);
    // v1: two optional stakeholders, both must sign (threshold 2).
    let v1 = contract_by(
        &w.keys,
        owner,
        "web",
        1,
        "/app",
        vec![optional(legal), optional(budget)],
        2,
        &[owner, legal, budget],
    );
    engine
        .on_record(&contract_record(&w.keys, &v1))
        .await
        .unwrap();
    assert_eq!(w.status_json("web").await["state"], "ok");
    let mark = w.mark();

    // v2 lowers the threshold to 1 and is signed by the owner and one stakeholder.
    let v2 = resign(
        &v1,
        |c| {
            c.version = 2;
            c.threshold = 1;
            c.params.insert("users".into(), json!(20));
        },
        &[owner, legal],
    );
    engine
        .on_record(&contract_record(&w.keys, &v2))
        .await
        .unwrap();
    assert_eq!(w.calls_since(mark), Vec::<String>::new(), "nothing touched");
    let s = w.status_json("web").await;
    assert_eq!((&s["state"], &s["version"]), (&json!("ok"), &json!(1)));
    assert_eq!(
        codes(&s["refused_update"]),
        ["update_threshold_not_met"],
        "{s:#}"
    );
    assert_eq!(engine.journal().owned("web").unwrap().version, 1);
    assert_eq!(w.fake.state().volumes["web.data"], 100);
    engine
        .on_record(&cancellation_record(&w.keys, "web", 3))
        .await
        .unwrap();
    assert_eq!(w.status_json("web").await["state"], "cancelled");
    assert!(w.fake.is_empty(), "{:?}", w.fake.state());
}

#[tokio::test]
async fn m2_a_cancellation_before_its_contract_keeps_that_version_out() {
    let w = World::new();
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    // The owner cancels "web" (version 2) before this node ever saw it.
    engine
        .on_record(&cancellation_record(&w.keys, "web", 2))
        .await
        .unwrap();
    // The notary then serves the older version 1.
    let v1 = contract(&w.keys, "web", 1, 10, "/app", true);
    engine
        .on_record(&contract_record(&w.keys, &v1))
        .await
        .unwrap();
    assert!(w.fake.state().calls.is_empty(), "{:?}", w.fake.state());
    let s = w.status_json("web").await;
    assert_eq!(s["state"], "refused", "{s:#}");
    assert_eq!(codes(&s), ["cancelled"], "{s:#}");

    // Also after a restart: the tombstone is in the journal.
    drop(engine);
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    engine
        .on_record(&contract_record(&w.keys, &v1))
        .await
        .unwrap();
    assert!(w.fake.state().calls.is_empty(), "{:?}", w.fake.state());
    assert_eq!(codes(&w.status_json("web").await), ["cancelled"]);

    // A stranger's cancellation of an id does not block that id's owner.
    engine
        .on_record(&cancellation_by(&w.keys, &w.keys.thief, "other", 9))
        .await
        .unwrap();
    let other = contract(&w.keys, "other", 1, 10, "/app", true);
    engine
        .on_record(&contract_record(&w.keys, &other))
        .await
        .unwrap();
    assert_eq!(w.status_json("other").await["state"], "ok");

    // A version above the cancellation is the owner publishing again: it runs.
    let v3 = contract(&w.keys, "web", 3, 10, "/app", true);
    engine
        .on_record(&contract_record(&w.keys, &v3))
        .await
        .unwrap();
    let s = w.status_json("web").await;
    assert_eq!((&s["state"], &s["version"]), (&json!("ok"), &json!(3)));
}

#[tokio::test]
async fn junk_at_a_running_contracts_key_changes_nothing() {
    let w = World::new();
    let mut engine = w.engine();
    victim_runs(&w, &mut engine).await;
    let mark = w.mark();

    // A v2 whose owner signature is someone else's.
    let mut forged = contract(&w.keys, "web", 2, 20, "/evil", true);
    let digest = forged.digest;
    forged.signatures[0].signature = w.keys.thief.sign(&digest);
    // A valid contract of another id, put under this key.
    let misplaced = contract(&w.keys, "elsewhere", 5, 10, "/evil", true);
    let junk = [
        json!({"garbage": true}),
        json!("not an object"),
        json!({"contract": {"id": "web"}}),
        forged.to_value(),
        misplaced.to_value(),
        json!({"cancellation": {"id": "web", "version": 9}}),
    ];
    for body in junk {
        engine
            .on_record(&raw_record(&w.keys, &w.keys.thief, "web", body.clone()))
            .await
            .unwrap();
        assert_eq!(w.calls_since(mark), Vec::<String>::new(), "{body}");
        victim_intact(&w, &engine);
        let s = w.status_json("web").await;
        assert_eq!(
            (&s["state"], &s["version"]),
            (&json!("ok"), &json!(1)),
            "{body}: {s:#}"
        );
    }
    victim_cancels(&w, &mut engine, 2).await;
}

#[tokio::test]
async fn h2_a_permanent_failure_never_deletes_a_volume() {
    let w = World::new();
    let mut engine = w.engine();
    victim_runs(&w, &mut engine).await;
    let mark = w.mark();

    // The owner's v2 names an flist whose blocks fail verification.
    w.fake.state().fail_workload = Some(
        ProvisionError::new("flist", "web.app", "block 3 of /bin/app: id mismatch").permanent(),
    );
    let v2 = contract(&w.keys, "web", 2, 10, "/app-v2", true);
    engine
        .on_record(&contract_record(&w.keys, &v2))
        .await
        .unwrap();
    let calls = w.calls_since(mark);
    assert!(
        !calls.iter().any(|c| c.starts_with("remove_volume")),
        "{calls:?}"
    );
    assert!(w.fake.state().volumes.contains_key("web.data"));
    let s = w.status_json("web").await;
    assert_eq!(s["state"], "error", "{s:#}");
    assert!(s["message"].as_str().unwrap().contains("id mismatch"));
    // Not retried by supervision; the volume stays.
    engine
        .supervise(Instant::now() + std::time::Duration::from_secs(60))
        .await
        .unwrap();
    assert!(w.fake.state().volumes.contains_key("web.data"));
    // The owner's cancellation removes it.
    victim_cancels(&w, &mut engine, 3).await;
}

const GRACE: u64 = 7 * 24 * 3600;

static EXPIRY_CLOCK: AtomicU64 = AtomicU64::new(2_000_000_000);

#[tokio::test]
async fn h2_expiry_keeps_volumes_for_the_grace_period_and_from_other_owners() {
    let w = World::new();
    let mut engine = w
        .engine()
        .with_clock(|| EXPIRY_CLOCK.load(Ordering::SeqCst));
    engine.start(vec![]).await.unwrap();
    let base = contract(&w.keys, "web", 1, 10, "/app", true);
    let v1 = resign(
        &base,
        |c| c.expires = Some(3_000_000_000),
        &[&w.keys.owner, &w.keys.legal],
    );
    engine
        .on_record(&contract_record(&w.keys, &v1))
        .await
        .unwrap();
    assert_eq!(w.status_json("web").await["state"], "ok");

    EXPIRY_CLOCK.store(3_000_000_000, Ordering::SeqCst);
    let mark = w.mark();
    engine.supervise(Instant::now()).await.unwrap();
    let s = w.status_json("web").await;
    assert_eq!(s["state"], "expired", "{s:#}");
    {
        let f = w.fake.state();
        assert!(f.workloads.is_empty() && f.networks.is_empty(), "{f:?}");
        assert!(f.volumes.contains_key("web.data"), "volume deleted at once");
    }
    assert!(!w
        .calls_since(mark)
        .iter()
        .any(|c| c.starts_with("remove_volume")));

    // Another owner publishes the id while the volume waits: refused, nothing made.
    let mark = w.mark();
    let b = contract_by(
        &w.keys,
        &w.keys.thief,
        "web",
        2,
        "/steal",
        vec![],
        0,
        &[&w.keys.thief],
    );
    engine
        .on_record(&raw_record(&w.keys, &w.keys.thief, "web", b.to_value()))
        .await
        .unwrap();
    assert_eq!(w.calls_since(mark), Vec::<String>::new());
    let s = w.status_json("web").await;
    assert_eq!(s["state"], "refused", "{s:#}");
    assert_eq!(codes(&s), ["owner_changed"], "{s:#}");

    // Just before the grace period ends the volume is there; at its end it goes.
    EXPIRY_CLOCK.store(3_000_000_000 + GRACE - 1, Ordering::SeqCst);
    engine.supervise(Instant::now()).await.unwrap();
    assert!(w.fake.state().volumes.contains_key("web.data"));
    EXPIRY_CLOCK.store(3_000_000_000 + GRACE, Ordering::SeqCst);
    engine.supervise(Instant::now()).await.unwrap();
    assert!(w.fake.is_empty(), "{:?}", w.fake.state());
}

static CANCEL_CLOCK: AtomicU64 = AtomicU64::new(2_000_000_000);

#[tokio::test]
async fn h2_an_expired_contracts_volume_goes_on_its_owners_cancellation() {
    let w = World::new();
    let mut engine = w
        .engine()
        .with_clock(|| CANCEL_CLOCK.load(Ordering::SeqCst));
    engine.start(vec![]).await.unwrap();
    let base = contract(&w.keys, "web", 1, 10, "/app", true);
    let v1 = resign(
        &base,
        |c| c.expires = Some(3_000_000_000),
        &[&w.keys.owner, &w.keys.legal],
    );
    engine
        .on_record(&contract_record(&w.keys, &v1))
        .await
        .unwrap();
    CANCEL_CLOCK.store(3_000_000_000, Ordering::SeqCst);
    engine.supervise(Instant::now()).await.unwrap();
    assert!(w.fake.state().volumes.contains_key("web.data"));
    // A stranger's cancellation: nothing.
    engine
        .on_record(&cancellation_by(&w.keys, &w.keys.thief, "web", 5))
        .await
        .unwrap();
    assert!(w.fake.state().volumes.contains_key("web.data"));
    // The owner's: the volume goes now.
    engine
        .on_record(&cancellation_record(&w.keys, "web", 2))
        .await
        .unwrap();
    assert!(w.fake.is_empty(), "{:?}", w.fake.state());
    assert_eq!(w.status_json("web").await["state"], "cancelled");
}

#[tokio::test]
async fn h2_unknown_volumes_are_quarantined_not_deleted() {
    let w = World::new();
    let doc = contract(&w.keys, "web", 1, 10, "/app", true);
    let record = contract_record(&w.keys, &doc);
    {
        let mut engine = w.engine();
        engine.start(vec![]).await.unwrap();
        engine.on_record(&record).await.unwrap();
    }
    // While zosd was down, objects appeared that no journalled contract names.
    w.fake.state().volumes.insert("gone.data".into(), 5);
    w.fake
        .state()
        .networks
        .insert("gone.net".into(), "x".into());
    w.fake
        .state()
        .workloads
        .insert("gone.app".into(), (WorkloadState::Running, 1));

    let mut engine = w.engine();
    engine.start(vec![record]).await.unwrap();
    {
        let s = w.fake.state();
        assert!(
            s.volumes.contains_key("gone.data"),
            "an unknown volume deleted"
        );
        assert!(!s.workloads.contains_key("gone.app"));
        assert!(!s.networks.contains_key("gone.net"));
        assert!(!s.calls.iter().any(|c| c == "remove_volume gone.data"));
    }
    let journal = w.journal_json();
    assert!(
        journal["quarantined"]
            .as_array()
            .is_some_and(|q| q.iter().any(|v| v == "gone.data")),
        "{journal:#}"
    );

    // Whoever publishes "gone" next cannot get the quarantined volume mounted.
    let mark = w.mark();
    let b = contract_by(
        &w.keys,
        &w.keys.thief,
        "gone",
        1,
        "/steal",
        vec![],
        0,
        &[&w.keys.thief],
    );
    engine
        .on_record(&raw_record(&w.keys, &w.keys.thief, "gone", b.to_value()))
        .await
        .unwrap();
    assert_eq!(w.calls_since(mark), Vec::<String>::new());
    let s = w.status_json("gone").await;
    assert_eq!(s["state"], "refused", "{s:#}");
    assert_eq!(codes(&s), ["volume_quarantined"], "{s:#}");
    assert_eq!(w.fake.state().volumes["gone.data"], 5);
}

#[tokio::test]
async fn log_tails_are_not_published_by_default() {
    let w = World::new();
    let mut engine = w.engine();
    let summaries = engine.summaries();
    victim_runs(&w, &mut engine).await;
    // The periodic refresh that carries log tails.
    engine.supervise(Instant::now()).await.unwrap();
    let s = w.status_json("web").await;
    assert_eq!(s["workloads"]["app"]["state"], "running", "{s:#}");
    assert!(s["workloads"]["app"]["log_tail"].is_null(), "{s:#}");
    // The node's own console still shows the newest line.
    assert_eq!(
        summaries.borrow()[0].workloads[0].output.as_deref(),
        Some("hello")
    );
}

#[tokio::test]
async fn log_tails_are_published_when_the_signed_deployment_opts_in() {
    let w = World::new();
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    let mut doc = contract(&w.keys, "web", 1, 10, "/app", true);
    doc.contract.blueprint =
        zos_contract::BlueprintRef::Embedded(common::blueprint_with(&w.keys, "/app", true));
    let doc = resign(&doc, |_| {}, &[&w.keys.owner, &w.keys.legal]);
    engine
        .on_record(&contract_record(&w.keys, &doc))
        .await
        .unwrap();
    engine.supervise(Instant::now()).await.unwrap();
    let s = w.status_json("web").await;
    assert_eq!(s["workloads"]["app"]["log_tail"], json!(["hello"]), "{s:#}");
}

#[tokio::test]
async fn a_failed_restart_says_why_in_the_status() {
    let w = World::new();
    let mut engine = w.engine();
    victim_runs(&w, &mut engine).await;
    w.fake.kill("web.app");
    w.fake.state().fail_workload = Some(ProvisionError::new(
        "flist",
        "web.app",
        "root filesystem: volume lost: \"rootfs-x\" was created on pool p1 and that pool's disk is not in this node any more",
    ));
    // The first look arms the restart backoff; past it, the restart is due.
    let now = Instant::now();
    engine.supervise(now).await.unwrap();
    engine
        .supervise(now + std::time::Duration::from_secs(3600))
        .await
        .unwrap();
    let s = w.status_json("web").await;
    assert_eq!(s["state"], "error", "{s:#}");
    let msg = s["message"].as_str().unwrap();
    let calls = w.fake.state().calls.clone();
    assert!(
        msg.contains("last restart:") && msg.contains("volume lost"),
        "{msg} {calls:?}"
    );
}
