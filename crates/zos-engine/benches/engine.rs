//! The engine alone, its loop (`Engine::run`) over a real `dir://` notary and a real
//! file journal, the machine a fake whose every ensure takes `ZOS_BENCH_LATENCY_MS`
//! (default 5): `cargo xtask bench engine`.
//!
//! - **publish to ok**: from the notary `put` of a contract to the engine's summary
//!   saying `ok`, p50 / p95 of `ZOS_BENCH_N` rounds (default 20), each cancelled after.
//! - **N at once**: `ZOS_BENCH_CONTRACTS` (default 50) contracts published together,
//!   until all are `ok`.
//! - **a hanging store beside a healthy contract**: contract A's flist store hangs
//!   (released after `HANG_LIMIT`), then B is published: the time until B is `ok`, and
//!   until B's cancellation is done, while A still hangs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{cancellation_record, contract, contract_record, World};
use zos_engine::{ContractSummary, State};
use zos_notary::Notary;
use zos_testkit::bench::{env_or, ms, pct};

/// How long the hanging store of the third case hangs at most.
const HANG_LIMIT: Duration = Duration::from_secs(3);

/// Waits until every contract of `ids` is in `state` in the summaries (or, for
/// `Cancelled`, gone from them).
async fn wait_for(
    rx: &mut tokio::sync::watch::Receiver<Vec<ContractSummary>>,
    ids: &[String],
    state: State,
) {
    let done = |list: &Vec<ContractSummary>| {
        ids.iter().all(|id| {
            let s = list.iter().find(|s| s.contract == *id);
            match state {
                State::Cancelled => s.is_none(),
                _ => s.is_some_and(|s| s.state == state),
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(120), rx.wait_for(done))
        .await
        .expect("within 120 s")
        .expect("the engine runs");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rounds = env_or("ZOS_BENCH_N", 20);
    let many = env_or("ZOS_BENCH_CONTRACTS", 50);
    let latency = Duration::from_millis(env_or("ZOS_BENCH_LATENCY_MS", 5));
    let w = World::new();
    w.fake.state().latency = latency;
    let mut cfg = World::config();
    cfg.capacity = zos_engine::Capacity {
        cpu: 10_000,
        memory_mib: 10_000_000,
        ssd_mib: 100_000_000,
        hdd_mib: 0,
    };
    let journal = zos_engine::Journal::open(zos_engine::FileJournal::new(
        w.dir.path().join("journal.json"),
    ))
    .unwrap();
    let engine = zos_engine::Engine::new(
        common::Keys::new().node,
        cfg,
        w.fake.clone(),
        w.notary.clone(),
        journal,
    );
    let mut rx = engine.summaries();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(engine.run(async {
        let _ = stop_rx.await;
    }));
    let put = |id: &str, version: u64| {
        let doc = contract(&w.keys, id, version, 1, "/app", true);
        contract_record(&w.keys, &doc)
    };
    // Warm up: the watch is established.
    w.notary.put(&put("warm", 1)).await.unwrap();
    wait_for(&mut rx, &["warm".into()], State::Ok).await;

    let mut ours = Vec::new();
    for i in 0..rounds {
        let id = format!("lat{i}");
        let t = Instant::now();
        w.notary.put(&put(&id, 1)).await.unwrap();
        wait_for(&mut rx, std::slice::from_ref(&id), State::Ok).await;
        ours.push(t.elapsed());
        w.notary
            .put(&cancellation_record(&w.keys, &id, 2))
            .await
            .unwrap();
        wait_for(&mut rx, &[id], State::Cancelled).await;
    }

    let ids: Vec<String> = (0..many).map(|i| format!("many{i}")).collect();
    let t = Instant::now();
    for id in &ids {
        w.notary.put(&put(id, 1)).await.unwrap();
    }
    wait_for(&mut rx, &ids, State::Ok).await;
    let all_up = t.elapsed();

    // A hanging store beside a healthy contract.
    w.fake.hang("hang.app");
    let released = {
        let fake = w.fake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(HANG_LIMIT).await;
            fake.release("hang.app");
        })
    };
    let t0 = Instant::now();
    w.notary.put(&put("hang", 1)).await.unwrap();
    wait_for(&mut rx, &["hang".into()], State::Provisioning).await;
    let t = Instant::now();
    w.notary.put(&put("healthy", 1)).await.unwrap();
    wait_for(&mut rx, &["healthy".into()], State::Ok).await;
    let healthy = t.elapsed();
    let t = Instant::now();
    w.notary
        .put(&cancellation_record(&w.keys, "healthy", 2))
        .await
        .unwrap();
    wait_for(&mut rx, &["healthy".into()], State::Cancelled).await;
    let cancel = t.elapsed();
    let hung = t0.elapsed() < HANG_LIMIT;
    released.await.unwrap();
    wait_for(&mut rx, &["hang".into()], State::Ok).await;

    stop_tx.send(()).unwrap();
    task.await.unwrap().unwrap();
    let (o50, o95) = (pct(&mut ours, 0.5), pct(&mut ours, 0.95));
    println!(
        "zos-engine loop benchmark ({rounds} rounds; fake machine, {} ms per ensure; times in ms)",
        latency.as_millis()
    );
    println!("{:<62} {:>9} {:>9}", "", "p50", "p95");
    println!(
        "{:<62} {:>9.1} {:>9.1}",
        "publish -> ok (volume + network + workload)",
        ms(o50),
        ms(o95)
    );
    println!(
        "{:<62} {:>9.1}",
        format!("{many} contracts published at once -> all ok"),
        ms(all_up)
    );
    println!(
        "{:<62} {:>9.1}",
        format!(
            "healthy contract -> ok beside a hanging store (hang ≤ {} ms)",
            HANG_LIMIT.as_millis()
        ),
        ms(healthy)
    );
    println!(
        "{:<62} {:>9.1}",
        "its cancellation -> done, the store still hanging",
        ms(cancel)
    );
    println!(
        "the store still hung when both were done: {}",
        if hung {
            "yes"
        } else {
            "no (they waited for it)"
        }
    );
}
