//! Watch latency, publish to delivery, on both backends (a real etcd server on
//! loopback, started by the bench). `cargo xtask bench contracts`; N with ZOS_BENCH_N
//! (default 200).
//!
//! For each round a writer puts a fresh signed contract record and a node's watch
//! receives it; the latency is from just before `put` to `recv` returning (signature
//! verified). The reference, measured in the same run on the same store, is the `put`
//! alone: the difference is what delivering costs on top of writing.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Backend;
use serde_json::json;
use zos_contract::SecretKey;
use zos_notary::{KeyPrefix, Notary, NotaryKey, Record};

struct Stats {
    p50: Duration,
    p95: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let p = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    Stats {
        p50: p(0.5),
        p95: p(0.95),
        max: v[v.len() - 1],
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn measure(name: &str, b: &impl Backend, n: usize) {
    let owner = SecretKey::from_seed([1; 32]);
    let node = SecretKey::from_seed([2; 32]).public();
    let writer = b.reopen();
    let mut watch = b
        .notary()
        .watch(&KeyPrefix::node_contracts(&node))
        .await
        .unwrap();
    let (mut delivery, mut put) = (Vec::new(), Vec::new());
    for i in 0..n + 10 {
        let key = NotaryKey::contract(&node, &format!("c{i}")).unwrap();
        // A contract record is written by a party its body names (the owner here).
        let body = json!({ "contract": { "owner": owner.public(), "version": i } });
        let record = Record::sign(&key, body, &owner).unwrap();
        let t = Instant::now();
        writer.put(&record).await.unwrap();
        let put_done = t.elapsed();
        let got = tokio::time::timeout(Duration::from_secs(10), watch.recv())
            .await
            .expect("delivered within 10 s")
            .expect("watch alive");
        let total = t.elapsed();
        assert_eq!(got.key, record.key);
        // The first rounds warm connections and caches up.
        if i >= 10 {
            delivery.push(total);
            put.push(put_done);
        }
    }
    let (d, p) = (stats(delivery), stats(put));
    println!(
        "{name:<8} {:>10.3} {:>10.3} {:>10.3} {:>12.3} {:>12.3} {:>8.2}",
        ms(d.p50),
        ms(d.p95),
        ms(d.max),
        ms(p.p50),
        ms(d.p50.saturating_sub(p.p50)),
        ms(d.p50) / ms(p.p50)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("ZOS_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    println!("watch latency, publish to delivery, {n} rounds per backend (ms)");
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>12} {:>12} {:>8}",
        "backend", "p50", "p95", "max", "put p50 ref", "delivery p50", "ratio"
    );
    let dir = common::DirBackend::new().await;
    measure("dir", &dir, n).await;
    let etcd = common::EtcdBackend::new().await;
    measure("etcd", &etcd, n).await;
    println!("ratio = publish-to-delivery p50 / put p50 (the reference: the write alone)");
    println!("target: delivery well under a second on both backends");
}
