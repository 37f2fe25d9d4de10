//! The engine's logic against a fake provisioner, a real `dir://` notary and a real
//! file journal: acceptance, refusals (nothing created), admission control, restarts
//! with backoff, re-adoption after a restart, orphans, updates, cancellation, expiry.

mod common;

use std::time::{Duration, Instant};

use common::{cancellation_record, contract, contract_record, Keys, World};
use zos_engine::{Capacity, Phase, ProvisionError, State, WorkloadState};
use zos_notary::{Notary, NotaryKey};

#[tokio::test]
async fn a_verified_contract_is_provisioned_in_dependency_order() {
    let w = World::new();
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    let doc = contract(&w.keys, "web", 1, 10, "/app", true);
    engine
        .on_record(&contract_record(&w.keys, &doc))
        .await
        .unwrap();

    let calls = w.fake.state().calls.clone();
    assert_eq!(
        calls,
        [
            "ensure_volume web.data",
            "ensure_network web.net",
            "ensure_workload web.app"
        ]
    );
    assert_eq!(w.fake.state().volumes["web.data"], 100);
    // Addresses: the gateway is the first host, the workload the next one, and its
    // port is forwarded there.
    let net = w.fake.state().network_plans["web.net"].clone();
    assert_eq!(
        net.gateway,
        "10.20.0.1".parse::<std::net::Ipv4Addr>().unwrap()
    );
    assert_eq!(net.forwards.len(), 1);
    assert_eq!(
        net.forwards[0].0,
        "10.20.0.2".parse::<std::net::Ipv4Addr>().unwrap()
    );
    assert_eq!(
        (net.forwards[0].1.port, net.forwards[0].1.public),
        (8080, 18080)
    );
    let plan = w.fake.state().workload_plans["web.app"].clone();
    let (net_plan, ip) = plan.network.clone().unwrap();
    assert_eq!(net_plan, net);
    assert_eq!(ip, "10.20.0.2".parse::<std::net::Ipv4Addr>().unwrap());
    assert_eq!(
        plan.mounts,
        vec![("/pools/web.data".into(), "/data".to_string(), false)]
    );
    let status = w.status("web").await;
    assert_eq!(status.state, State::Ok, "{status:?}");
    assert_eq!(status.version, Some(1));
    let app = &status.workloads["app"];
    assert_eq!(app.state, "running");
    assert_eq!(app.address, Some("10.20.0.2".parse().unwrap()));
    assert_eq!(engine.journal().owned("web").unwrap().phase, Phase::Running);
}

#[tokio::test]
async fn a_refused_contract_creates_nothing_and_says_why() {
    let w = World::new();
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    // The required stakeholder has not signed.
    let doc = contract(&w.keys, "web", 1, 10, "/app", false);
    engine
        .on_record(&contract_record(&w.keys, &doc))
        .await
        .unwrap();
    assert!(w.fake.is_empty());
    assert!(w.fake.state().calls.is_empty());
    let status = w.status("web").await;
    assert_eq!(status.state, State::Refused);
    let codes: Vec<&str> = status.reasons.iter().map(|r| r.code.as_str()).collect();
    assert_eq!(codes, ["required_signer_missing", "threshold_not_met"]);
    assert!(engine.journal().data().accepted.is_empty());

    // Once co-signed in the notary, the same contract is accepted.
    let doc = contract(&w.keys, "web", 1, 10, "/app", true);
    engine
        .on_record(&contract_record(&w.keys, &doc))
        .await
        .unwrap();
    assert_eq!(w.status("web").await.state, State::Ok);
}

#[tokio::test]
async fn a_contract_over_capacity_is_refused_with_the_sizes() {
    let w = World::new();
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    // 32 + 5000 MiB of memory on a node offering 4096.
    let doc = contract(&w.keys, "big", 1, 5000, "/app", true);
    engine
        .on_record(&contract_record(&w.keys, &doc))
        .await
        .unwrap();
    assert!(w.fake.is_empty());
    let status = w.status("big").await;
    assert_eq!(status.state, State::Refused);
    assert_eq!(status.reasons[0].code, "over_capacity");
    assert_eq!(
        status.reasons[0].message,
        "over capacity: memory needs 5032 MiB, 4096 MiB of 4096 MiB are free"
    );
    // Two that fit alone do not fit together.
    let a = contract(&w.keys, "a", 1, 2100, "/app", true);
    let b = contract(&w.keys, "b", 1, 2100, "/app", true);
    engine
        .on_record(&contract_record(&w.keys, &a))
        .await
        .unwrap();
    engine
        .on_record(&contract_record(&w.keys, &b))
        .await
        .unwrap();
    assert_eq!(w.status("a").await.state, State::Ok);
    assert_eq!(w.status("b").await.reasons[0].code, "over_capacity");
    assert!(!w.fake.state().workloads.contains_key("b.app"));
}

#[tokio::test]
async fn a_dead_workload_is_restarted_with_backoff_and_counted() {
    let w = World::new();
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    let doc = contract(&w.keys, "web", 1, 10, "/app", true);
    engine
        .on_record(&contract_record(&w.keys, &doc))
        .await
        .unwrap();

    let t0 = Instant::now();
    engine.supervise(t0).await.unwrap();
    w.fake.kill("web.app");
    // Noticed, but the first restart waits for the minimum delay.
    engine
        .supervise(t0 + Duration::from_millis(10))
        .await
        .unwrap();
    assert_ne!(
        w.fake.state().workloads["web.app"].0,
        WorkloadState::Running
    );
    engine
        .supervise(t0 + Duration::from_millis(250))
        .await
        .unwrap();
    assert_eq!(
        w.fake.state().workloads["web.app"],
        (WorkloadState::Running, 2)
    );
    let status = w.status("web").await;
    assert_eq!(status.workloads["app"].restarts, 1);

    // Dies again right away: the next restart waits twice as long.
    w.fake.kill("web.app");
    engine
        .supervise(t0 + Duration::from_millis(300))
        .await
        .unwrap();
    engine
        .supervise(t0 + Duration::from_millis(600))
        .await
        .unwrap();
    assert_ne!(
        w.fake.state().workloads["web.app"].0,
        WorkloadState::Running
    );
    engine
        .supervise(t0 + Duration::from_millis(1100))
        .await
        .unwrap();
    assert_eq!(
        w.fake.state().workloads["web.app"],
        (WorkloadState::Running, 3)
    );
    assert_eq!(w.status("web").await.workloads["app"].restarts, 2);
}

#[tokio::test]
async fn a_restarted_engine_adopts_what_runs_and_removes_orphans_but_no_volume() {
    let w = World::new();
    let doc = contract(&w.keys, "web", 1, 10, "/app", true);
    let record = contract_record(&w.keys, &doc);
    {
        let mut engine = w.engine();
        engine.start(vec![]).await.unwrap();
        engine.on_record(&record).await.unwrap();
    }
    // While zosd was down: a leftover of some crash appeared.
    w.fake.state().volumes.insert("gone.data".into(), 5);
    w.fake
        .state()
        .workloads
        .insert("gone.app".into(), (WorkloadState::Running, 1));

    let mut engine = w.engine();
    engine.start(vec![record.clone()]).await.unwrap();
    let s = w.fake.state();
    assert_eq!(
        s.workloads["web.app"],
        (WorkloadState::Running, 1),
        "not started twice"
    );
    assert!(!s.workloads.contains_key("gone.app"));
    // An unknown volume is quarantined, not deleted (tests/trust.rs).
    assert!(s.volumes.contains_key("gone.data"));
    assert!(s.volumes.contains_key("web.data"));
}

#[tokio::test]
async fn a_workload_missing_after_a_reboot_is_recreated() {
    let w = World::new();
    let doc = contract(&w.keys, "web", 1, 10, "/app", true);
    let record = contract_record(&w.keys, &doc);
    {
        let mut engine = w.engine();
        engine.start(vec![]).await.unwrap();
        engine.on_record(&record).await.unwrap();
    }
    // A power cut: workloads and networks are gone, volumes persist on disk.
    w.fake.state().workloads.clear();
    w.fake.state().networks.clear();
    let mut engine = w.engine();
    engine.start(vec![record]).await.unwrap();
    assert_eq!(
        w.fake.state().workloads["web.app"].0,
        WorkloadState::Running
    );
    assert!(w.fake.state().networks.contains_key("web.net"));
    assert_eq!(w.status("web").await.state, State::Ok);
}

#[tokio::test]
async fn cancel_removes_everything_and_the_old_version_cannot_come_back() {
    let w = World::new();
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    let doc = contract(&w.keys, "web", 1, 10, "/app", true);
    engine
        .on_record(&contract_record(&w.keys, &doc))
        .await
        .unwrap();
    engine
        .on_record(&cancellation_record(&w.keys, "web", 2))
        .await
        .unwrap();
    assert!(w.fake.is_empty(), "{:?}", w.fake.state());
    assert_eq!(w.status("web").await.state, State::Cancelled);
    assert!(engine.journal().owned("web").is_none());

    // Replaying the cancelled version (also after a restart) is refused.
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    engine
        .on_record(&contract_record(&w.keys, &doc))
        .await
        .unwrap();
    assert!(w.fake.is_empty());
    let status = w.status("web").await;
    assert_eq!(status.state, State::Refused);
    assert_eq!(status.reasons[0].code, "replay");
}

#[tokio::test]
async fn a_cancellation_not_above_the_running_version_is_ignored() {
    let w = World::new();
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    let doc = contract(&w.keys, "web", 3, 10, "/app", true);
    engine
        .on_record(&contract_record(&w.keys, &doc))
        .await
        .unwrap();
    engine
        .on_record(&cancellation_record(&w.keys, "web", 2))
        .await
        .unwrap();
    assert!(w.fake.state().workloads.contains_key("web.app"));
    assert_eq!(w.status("web").await.state, State::Ok);
}

#[tokio::test]
async fn a_new_version_updates_in_place_and_keeps_the_data() {
    let w = World::new();
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    let v1 = contract(&w.keys, "web", 1, 10, "/app", true);
    engine
        .on_record(&contract_record(&w.keys, &v1))
        .await
        .unwrap();
    w.fake.state().calls.clear();

    let v2 = contract(&w.keys, "web", 2, 20, "/app-v2", true);
    engine
        .on_record(&contract_record(&w.keys, &v2))
        .await
        .unwrap();
    let calls = w.fake.state().calls.clone();
    assert_eq!(
        calls,
        [
            "remove_workload web.app",
            "ensure_volume web.data",
            "ensure_network web.net",
            "ensure_workload web.app"
        ],
        "the changed workload is recreated; the volume is kept (and grown), not removed"
    );
    assert_eq!(w.fake.state().volumes["web.data"], 200);
    assert_eq!(w.status("web").await.version, Some(2));

    // The older version now is a replay; the running version's status stays.
    engine
        .on_record(&contract_record(&w.keys, &v1))
        .await
        .unwrap();
    let status = w.status("web").await;
    assert_eq!((status.state, status.version), (State::Ok, Some(2)));
}

#[tokio::test]
async fn a_permanent_failure_leaves_nothing_running_and_keeps_the_volume() {
    let w = World::new();
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    w.fake.state().fail_workload = Some(
        ProvisionError::new("flist", "web.app", "block 3 of /bin/app: id mismatch").permanent(),
    );
    let doc = contract(&w.keys, "web", 1, 10, "/app", true);
    engine
        .on_record(&contract_record(&w.keys, &doc))
        .await
        .unwrap();
    let nothing_runs = |w: &World| {
        let s = w.fake.state();
        s.workloads.is_empty() && s.networks.is_empty() && s.volumes.contains_key("web.data")
    };
    assert!(nothing_runs(&w), "{:?}", w.fake.state());
    let status = w.status("web").await;
    assert_eq!(status.state, State::Error);
    assert!(status.message.contains("id mismatch"), "{}", status.message);
    // Not retried by supervision.
    engine
        .supervise(Instant::now() + Duration::from_secs(60))
        .await
        .unwrap();
    assert!(nothing_runs(&w), "{:?}", w.fake.state());
}

#[tokio::test]
async fn a_transient_failure_is_retried() {
    let w = World::new();
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    w.fake.state().fail_workload =
        Some(ProvisionError::new("flist", "web.app", "store unreachable"));
    let doc = contract(&w.keys, "web", 1, 10, "/app", true);
    engine
        .on_record(&contract_record(&w.keys, &doc))
        .await
        .unwrap();
    assert_eq!(w.status("web").await.state, State::Error);
    let t0 = Instant::now();
    engine.supervise(t0).await.unwrap();
    engine.supervise(t0 + Duration::from_secs(1)).await.unwrap();
    assert_eq!(
        w.fake.state().workloads["web.app"].0,
        WorkloadState::Running
    );
    assert_eq!(w.status("web").await.state, State::Ok);
}

#[tokio::test]
async fn an_expired_contract_stops_and_keeps_its_volume() {
    let w = World::new();
    let mut engine = w.engine().with_clock(|| 4_000_000_000);
    engine.start(vec![]).await.unwrap();
    // Accepted earlier, on a node whose clock was before the expiry.
    let mut early = w.engine().with_clock(|| 1_800_000_000);
    let doc = contract(&w.keys, "web", 1, 10, "/app", true);
    early
        .on_record(&contract_record(&w.keys, &doc))
        .await
        .unwrap();
    drop(early);
    let mut engine = {
        drop(engine);
        w.engine().with_clock(|| 4_000_000_000)
    };
    engine.supervise(Instant::now()).await.unwrap();
    {
        let s = w.fake.state();
        assert!(s.workloads.is_empty() && s.networks.is_empty(), "{s:?}");
        // Kept for the grace period (tests/trust.rs).
        assert!(s.volumes.contains_key("web.data"), "{s:?}");
    }
    assert_eq!(w.status("web").await.state, State::Expired);
}

#[tokio::test]
async fn records_for_other_nodes_or_of_another_id_are_not_deployed() {
    let w = World::new();
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    // The document says "web" but sits under the key of "other".
    let doc = contract(&w.keys, "web", 1, 10, "/app", true);
    let key = NotaryKey::contract(&w.keys.node.public(), "other").unwrap();
    let misplaced = zos_notary::Record::sign(&key, doc.to_value(), &w.keys.owner).unwrap();
    engine.on_record(&misplaced).await.unwrap();
    assert!(w.fake.is_empty());
    assert_eq!(w.status("other").await.reasons[0].code, "malformed");
    w.no_status("web").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_runs_a_contract_published_while_it_watches() {
    let w = World::new();
    let engine = w.engine();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(engine.run(async {
        let _ = stop_rx.await;
    }));
    // Let the subscription establish before publishing; then the watch delivers it.
    let doc = contract(&w.keys, "web", 1, 10, "/app", true);
    let deadline = Instant::now() + Duration::from_secs(10);
    let key = NotaryKey::status(&w.keys.node.public(), "web").unwrap();
    w.notary.put(&contract_record(&w.keys, &doc)).await.unwrap();
    loop {
        if w.notary
            .get(&key)
            .await
            .unwrap()
            .is_some_and(|r| r.body["state"] == "ok")
        {
            break;
        }
        assert!(Instant::now() < deadline, "not running within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send(()).unwrap();
    let engine = task.await.unwrap().unwrap();
    assert_eq!(engine.journal().owned("web").unwrap().version, 1);
}

/// A variant of a valid contract: `edit` applied to its JSON with the signatures
/// cleared, then signed by `signers` (when it still parses).
fn variant(
    keys: &Keys,
    edit: impl Fn(&mut serde_json::Value),
    signers: &[&zos_contract::SecretKey],
) -> zos_notary::Record {
    let mut v = contract(keys, "web", 1, 10, "/app", true).to_value();
    v["signatures"] = serde_json::json!([]);
    edit(&mut v);
    if let Ok(mut doc) =
        zos_contract::SignedContract::from_value(&v, &zos_contract::Limits::default())
    {
        for k in signers {
            doc.sign(k).unwrap();
        }
        v = doc.to_value();
    }
    let key = NotaryKey::contract(&keys.node.public(), "web").unwrap();
    zos_notary::Record::sign(&key, v, &keys.owner).unwrap()
}

#[tokio::test]
async fn every_verification_refusal_is_reported_and_creates_nothing() {
    let keys = Keys::new();
    let stranger = zos_contract::SecretKey::from_seed([9; 32]);
    let both = [&keys.owner, &keys.legal];
    let cases: Vec<(&str, zos_notary::Record)> = vec![
        ("bad_signature", {
            let mut v = contract(&keys, "web", 1, 10, "/app", true).to_value();
            let sig = v["signatures"][0]["signature"]
                .as_str()
                .unwrap()
                .to_string();
            let flipped = format!(
                "{}{}",
                if sig.starts_with('0') { "1" } else { "0" },
                &sig[1..]
            );
            v["signatures"][0]["signature"] = serde_json::json!(flipped);
            let key = NotaryKey::contract(&keys.node.public(), "web").unwrap();
            zos_notary::Record::sign(&key, v, &keys.owner).unwrap()
        }),
        ("unknown_signer", {
            // A stranger's signature cannot veto (zos-contract verify): it is reported
            // when the counted signatures fall short, here the required one.
            let doc = contract(&keys, "web", 1, 10, "/app", false);
            let mut v = doc.to_value();
            v["signatures"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "signer": stranger.public(),
                    "signature": stranger.sign(&doc.digest),
                }));
            let key = NotaryKey::contract(&keys.node.public(), "web").unwrap();
            zos_notary::Record::sign(&key, v, &keys.owner).unwrap()
        }),
        (
            "owner_signature_missing",
            variant(&keys, |_| {}, &[&keys.legal]),
        ),
        (
            "required_signer_missing",
            variant(&keys, |_| {}, &[&keys.owner]),
        ),
        (
            "param_out_of_bounds",
            variant(
                &keys,
                |v| v["contract"]["params"]["users"] = serde_json::json!(999_999),
                &both,
            ),
        ),
        (
            "blueprint_signature_invalid",
            variant(
                &keys,
                |v| {
                    v["contract"]["blueprint"]["embedded"]["blueprint"]["body"]["workloads"][0]
                        ["cpu"] = serde_json::json!(64)
                },
                &both,
            ),
        ),
        (
            "not_yet_valid",
            variant(
                &keys,
                |v| v["contract"]["not_before"] = serde_json::json!(3_900_000_000u64),
                &both,
            ),
        ),
        (
            "expired",
            variant(
                &keys,
                |v| v["contract"]["expires"] = serde_json::json!(1_000_000_000u64),
                &both,
            ),
        ),
        (
            "wrong_node",
            variant(
                &keys,
                |v| v["contract"]["nodes"] = serde_json::json!([stranger.public()]),
                &both,
            ),
        ),
        (
            // A placement contract (docs/grid.md), fully signed, placed at this node's
            // contract key: without its orchestrator's assignment it runs nowhere.
            "unassigned",
            variant(
                &keys,
                |v| {
                    let c = v["contract"].as_object_mut().unwrap();
                    c.remove("nodes");
                    c.insert(
                        "placement".into(),
                        serde_json::json!({"farm": "1", "replicas": 1,
                            "orchestrator": stranger.public(),
                            "failover": {"mode": "move", "after_s": 60}}),
                    );
                },
                &both,
            ),
        ),
        (
            "malformed",
            variant(
                &keys,
                |v| v["contract"]["workloads"] = serde_json::json!([{"name": "miner"}]),
                &both,
            ),
        ),
        (
            "oversized",
            variant(
                &keys,
                |v| v["contract"]["params"]["pad"] = serde_json::json!("x".repeat(300_000)),
                &both,
            ),
        ),
    ];
    for (code, record) in cases {
        let w = World::new();
        let mut engine = w.engine();
        engine.start(vec![]).await.unwrap();
        engine.on_record(&record).await.unwrap();
        assert!(
            w.fake.state().calls.is_empty(),
            "{code}: the provisioner was called"
        );
        let status = w.status("web").await;
        assert_eq!(status.state, State::Refused, "{code}: {status:?}");
        let codes: Vec<&str> = status.reasons.iter().map(|r| r.code.as_str()).collect();
        assert!(codes.contains(&code), "{code}: got {codes:?}");
        assert!(
            engine.journal().data().accepted.is_empty(),
            "{code}: journalled"
        );
    }
}

#[tokio::test]
async fn the_summaries_follow_every_report_for_the_local_status() {
    let w = World::new();
    let mut engine = w.engine();
    let summaries = engine.summaries();
    engine.start(vec![]).await.unwrap();
    assert!(summaries.borrow().is_empty());

    let doc = contract(&w.keys, "web", 1, 10, "/app", true);
    engine
        .on_record(&contract_record(&w.keys, &doc))
        .await
        .unwrap();
    // Refused (a required signer is missing): listed, reserving nothing.
    let bad = contract(&w.keys, "bad", 1, 10, "/app", false);
    engine
        .on_record(&contract_record(&w.keys, &bad))
        .await
        .unwrap();
    {
        let list = summaries.borrow();
        let ids: Vec<&str> = list.iter().map(|s| s.contract.as_str()).collect();
        assert_eq!(ids, ["bad", "web"], "sorted by id");
        let (bad, web) = (&list[0], &list[1]);
        assert_eq!(bad.state, State::Refused);
        assert_eq!(bad.reserved, Capacity::default());
        assert_eq!(web.state, State::Ok, "{web:?}");
        assert_eq!(web.version, Some(1));
        assert!(
            web.reserved.cpu > 0 && web.reserved.memory_mib > 0,
            "{web:?}"
        );
        let app = &web.workloads[0];
        assert_eq!(app.name, "app");
        assert_eq!(
            app.kind,
            Some(zos_contract::deployment::WorkloadKind::Container)
        );
        assert_eq!(app.state, "running");
        assert_eq!(app.address, Some("10.20.0.2".parse().unwrap()));
    }

    // Cancelled: it leaves the list.
    engine
        .on_record(&cancellation_record(&w.keys, "web", 2))
        .await
        .unwrap();
    let ids: Vec<String> = summaries
        .borrow()
        .iter()
        .map(|s| s.contract.clone())
        .collect();
    assert_eq!(ids, ["bad"]);
}
