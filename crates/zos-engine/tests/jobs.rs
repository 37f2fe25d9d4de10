//! Provisioning runs off the event loop (docs/engine.md, "Jobs"): a contract whose
//! flist store hangs holds up neither another contract's deployment nor a
//! cancellation, its own included; against the engine's real loop (`Engine::run`), a
//! real `dir://` notary and a real file journal, the machine a fake whose store hangs.

mod common;

use std::time::{Duration, Instant};

use common::{cancellation_record, contract, contract_record, World};
use zos_engine::State;
use zos_notary::{Notary, NotaryKey};

/// Waits (bounded) until `cond` holds: each check follows an event of the notary or
/// the fake, so the short poll is only how it is observed.
async fn until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn state(w: &World, id: &str) -> Option<String> {
    let key = NotaryKey::status(&w.keys.node.public(), id).unwrap();
    let record = w.notary.get(&key).await.unwrap()?;
    Some(
        record.body["state"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_store_holds_up_neither_another_contract_nor_a_cancellation() {
    let w = World::new();
    let engine = w.engine();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(engine.run(async {
        let _ = stop_rx.await;
    }));

    // Contract "slow": its flist store never answers.
    w.fake.hang("slow.app");
    let slow = contract(&w.keys, "slow", 1, 10, "/app", true);
    w.notary
        .put(&contract_record(&w.keys, &slow))
        .await
        .unwrap();
    until("slow's workload is being fetched", async || {
        w.fake
            .state()
            .calls
            .contains(&"ensure_workload slow.app".to_string())
    })
    .await;

    // Contract "fast" is deployed while "slow" hangs.
    let fast = contract(&w.keys, "fast", 1, 10, "/app", true);
    w.notary
        .put(&contract_record(&w.keys, &fast))
        .await
        .unwrap();
    until("fast runs", async || {
        state(&w, "fast").await.as_deref() == Some("ok")
    })
    .await;
    assert!(w.fake.state().hanging.contains("slow.app"), "still hanging");
    assert_eq!(state(&w, "slow").await.as_deref(), Some("provisioning"));

    // So is its cancellation.
    w.notary
        .put(&cancellation_record(&w.keys, "fast", 2))
        .await
        .unwrap();
    until("fast is cancelled", async || {
        state(&w, "fast").await.as_deref() == Some("cancelled")
    })
    .await;
    assert!(!w.fake.state().workloads.contains_key("fast.app"));
    assert!(!w.fake.state().volumes.contains_key("fast.data"));

    // And the cancellation of the contract that hangs: its job is cut short, what it
    // made is removed, and the store's late answer can start nothing.
    w.notary
        .put(&cancellation_record(&w.keys, "slow", 2))
        .await
        .unwrap();
    until("slow is cancelled", async || {
        state(&w, "slow").await.as_deref() == Some("cancelled")
    })
    .await;
    until("slow's hanging fetch is given up", async || {
        w.fake.state().abandoned == ["slow.app"]
    })
    .await;
    w.fake.release("slow.app");
    {
        let s = w.fake.state();
        assert!(s.workloads.is_empty(), "{s:?}");
        assert!(s.networks.is_empty(), "{s:?}");
        assert!(s.volumes.is_empty(), "{s:?}");
    }

    stop_tx.send(()).unwrap();
    let engine = task.await.unwrap().unwrap();
    let j = engine.journal().data();
    assert!(j.owned.is_empty(), "{:?}", j.owned);
    assert!(j.doomed.is_empty(), "{:?}", j.doomed);
    assert_eq!(w.status("slow").await.state, State::Cancelled);
}

/// A provisioner call that a cancellation cut short can still finish on its blocking
/// thread (zosd runs each on one) and start the workload after the teardown. The
/// engine's periodic orphan collection removes it; the contract stays cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_started_late_by_a_cut_short_call_is_collected() {
    let w = World::new();
    w.fake.state().finish_abandoned = true;
    let config = zos_engine::EngineConfig {
        orphan_sweep_every: Duration::from_millis(100),
        ..World::config()
    };
    let engine = w.engine_with(config);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(engine.run(async {
        let _ = stop_rx.await;
    }));

    w.fake.hang("late.app");
    let late = contract(&w.keys, "late", 1, 10, "/app", true);
    w.notary
        .put(&contract_record(&w.keys, &late))
        .await
        .unwrap();
    until("late's workload is being fetched", async || {
        w.fake
            .state()
            .calls
            .contains(&"ensure_workload late.app".to_string())
    })
    .await;
    w.notary
        .put(&cancellation_record(&w.keys, "late", 2))
        .await
        .unwrap();
    until("late is cancelled and its call given up", async || {
        state(&w, "late").await.as_deref() == Some("cancelled")
            && w.fake.state().abandoned == ["late.app"]
    })
    .await;

    // The store answers at last: the cut-short call starts the workload anyway.
    w.fake.release("late.app");
    until("the late start", async || {
        w.fake
            .state()
            .calls
            .contains(&"late start late.app".to_string())
    })
    .await;
    until("the late workload is collected", async || {
        let s = w.fake.state();
        let started = s.calls.iter().position(|c| c == "late start late.app");
        let removed = s
            .calls
            .iter()
            .rposition(|c| c == "remove_workload late.app");
        removed > started && !s.workloads.contains_key("late.app")
    })
    .await;

    stop_tx.send(()).unwrap();
    let engine = task.await.unwrap().unwrap();
    assert!(engine.journal().data().owned.is_empty());
    assert_eq!(w.status("late").await.state, State::Cancelled);
}
