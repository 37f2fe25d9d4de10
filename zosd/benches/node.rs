//! A node under load, on the real kernel (root): `cargo xtask bench container`.
//!
//! - **publish to running**, flist cached: from the notary `put` of a new contract (one
//!   container on a tenant network) to the node's signed status saying `ok`; the
//!   reference, measured in the same run on the same machine, is a bare container
//!   create + start through zos-container's libcontainer runtime on the same root
//!   filesystem (what the node cannot avoid doing).
//! - **zosd RSS** at idle and with 20 running containers (`ZOS_BENCH_CONTAINERS`; 50 do not fit the fixture's 7.6 GiB SSD).
//!
//! `ZOS_BENCH_N` rounds of latency (default 20).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use zos_container::{ContainerSpec, Libcontainer, Runtime, RuntimeConfig};
use zos_testkit::bench::{env_or, ms, pct};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn main() {
    if !privileged("zosd node benchmark") {
        return;
    }
    let rounds = env_or("ZOS_BENCH_N", 20);
    let containers = env_or("ZOS_BENCH_CONTAINERS", 20);
    let p = people();
    // Room for 50 one-CPU containers on 2 cores: CPU is compressible.
    let mut node = Node::new_with(512, 64);
    let key = node.start();
    let zosd_pid = node.zosd.as_ref().unwrap().id();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let sleeper = |id: &str| {
        let app = serde_json::json!({
            "name": "app",
            "kind": "container",
            "flist": {"url": flist.0, "sha256": flist.1, "stores": [flist.2],
                      "publishers": [p.publisher.public()]},
            "entrypoint": ["/bin/sleep", "3600"],
            "cpu": 1,
            "memory_mib": 16,
            "network": "net"
        });
        signed_contract(&p, key, id, 1, "10.90.0.0/24", vec![app])
    };

    // Warm up: the first contract fetches, verifies and unpacks the flist.
    let warm = node.id("warm");
    let t = Instant::now();
    node.publish(&record(&p, key, &sleeper(&warm)));
    node.wait_status(&warm, "ok", |s| s["state"] == "ok");
    let cold = t.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = rss_kib(zosd_pid);

    // Publish to running, flist cached; each contract is cancelled after.
    let mut ours = Vec::new();
    for i in 0..rounds {
        let id = node.id(&format!("lat{i}"));
        let doc = sleeper(&id);
        let rec = record(&p, key, &doc);
        let t = Instant::now();
        node.publish(&rec);
        node.wait_status(&id, "ok", |s| s["state"] == "ok");
        ours.push(t.elapsed());
        node.publish(&cancel_record(&p, key, &id, 2));
        node.wait_status(&id, "cancelled", |s| s["state"] == "cancelled");
    }

    // Reference: create + start of the same root filesystem through libcontainer
    // directly, interleaved count, same machine state.
    // The same flist unpacked here (the node keeps its trees in each workload's own
    // subvolume, gone with the workload).
    let rootfs = node.dir.path().join("bare-tree");
    let fl =
        zos_flist::Flist::open(std::path::Path::new(flist.0.trim_start_matches("dir://"))).unwrap();
    let router = zos_flist::Router::parse(std::slice::from_ref(&flist.2)).unwrap();
    zos_flist::unpack(
        &fl,
        &zos_flist::Fetcher::new(router, None),
        &rootfs,
        &zos_flist::UnpackOptions::default(),
    )
    .unwrap();
    let rt_root = node.dir.path().join("bare");
    let rt = Libcontainer::new(RuntimeConfig::under(&rt_root)).unwrap();
    let mut bare = Vec::new();
    for i in 0..rounds {
        let id = format!("{}-bare{i}", node.world.tag);
        let mut spec =
            ContainerSpec::new(&id, &rootfs, rt_root.join("logs").join(&id), "/bin/sleep");
        spec.args = vec!["3600".into()];
        spec.readonly_rootfs = true;
        let t = Instant::now();
        rt.create(&spec).unwrap();
        rt.start(&id).unwrap();
        bare.push(t.elapsed());
        rt.delete(&id).unwrap();
    }

    // RSS with many running containers.
    let ids: Vec<String> = (0..containers)
        .map(|i| node.id(&format!("many{i}")))
        .collect();
    for id in &ids {
        node.publish(&record(&p, key, &sleeper(id)));
    }
    let t = Instant::now();
    for id in &ids {
        node.wait_status(id, "ok", |s| s["state"] == "ok");
    }
    let all_up = t.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let busy_rss = rss_kib(zosd_pid);

    if let Ok(path) = std::env::var("ZOS_BENCH_LOG") {
        // zosd's own log, for a look at where the time goes.
        let _ = std::fs::write(&path, node.log());
    }
    let (o50, o95) = (pct(&mut ours, 0.5), pct(&mut ours, 0.95));
    let (b50, b95) = (pct(&mut bare, 0.5), pct(&mut bare, 0.95));
    println!("zosd node benchmark ({rounds} rounds; times in ms)");
    println!("{:<58} {:>9} {:>9}", "", "p50", "p95");
    println!(
        "{:<58} {:>9.1} {:>9.1}",
        "publish -> status ok, flist cached (one container + net)",
        ms(o50),
        ms(o95)
    );
    println!(
        "{:<58} {:>9.1} {:>9.1}",
        "reference: bare libcontainer create + start, same rootfs",
        ms(b50),
        ms(b95)
    );
    println!("{:<58} {:>9.2}", "ratio (p50)", ms(o50) / ms(b50));
    println!(
        "{:<58} {:>9.1}",
        "first contract, flist fetched + verified + unpacked",
        ms(cold)
    );
    println!(
        "{:<58} {:>9.1}",
        format!("{containers} contracts published at once -> all ok"),
        ms(all_up)
    );
    println!(
        "zosd RSS idle: {} KiB; with {containers} running containers: {} KiB",
        idle_rss, busy_rss
    );
    println!(
        "target: publish -> running under 200 ms -> {}",
        if o50 < Duration::from_millis(200) {
            "met"
        } else {
            "NOT met"
        }
    );
}
