//! Tenant network timings in a `zt-*` world of namespaces (root, iproute2, nftables).
//! `cargo bench -p zos-network --bench network` (rounds with ZOS_BENCH_N, default 10).
//!
//! One round = create a tenant network and attach 10 workloads by veth (each in its
//! own namespace), then remove it all. The reference builds the same objects with
//! plain `ip` commands and the same nft scripts through `ip netns exec ... nft -f -`,
//! interleaved with ours in the same run.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{privileged, run, World};
use zos_network::{nft, TenantNetwork, TenantPort, WorkloadAttachment};

const WORKLOADS: u8 = 10;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct Stats {
    mean: Duration,
    p50: Duration,
    p95: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let n = v.len();
    Stats {
        mean: v.iter().sum::<Duration>() / n as u32,
        p50: v[n / 2],
        p95: v[((n as f64 * 0.95) as usize).min(n - 1)],
    }
}

fn nft_in(ns: &str, script: &str) {
    let mut c = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(c.wait().unwrap().success(), "nft in {ns}");
}

/// The same objects as `ensure` + 10 `attach`, with `ip` commands.
fn reference_create(w: &World, t: &TenantNetwork, tag: &str) {
    let ns = format!("{}{tag}", w.prefix);
    let node = w.node.as_str();
    run(&["ip", "netns", "add", &ns]);
    run(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    run(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    run(&["ip", "-n", &ns, "link", "add", "br0", "type", "bridge"]);
    let gw = format!("{}/{}", t.gateway, t.subnet.prefix());
    run(&["ip", "-n", &ns, "addr", "add", &gw, "dev", "br0"]);
    run(&["ip", "-n", &ns, "link", "set", "br0", "up"]);
    run(&[
        "ip", "-n", &ns, "link", "add", "pub0", "type", "veth", "peer", "name", &ns, "netns", node,
    ]);
    run(&[
        "ip",
        "-n",
        &ns,
        "addr",
        "add",
        "100.126.0.2/30",
        "dev",
        "pub0",
    ]);
    run(&["ip", "-n", &ns, "link", "set", "pub0", "up"]);
    run(&[
        "ip",
        "-n",
        node,
        "addr",
        "add",
        "100.126.0.1/30",
        "dev",
        &ns,
    ]);
    run(&["ip", "-n", node, "link", "set", &ns, "up"]);
    run(&[
        "ip",
        "-n",
        &ns,
        "route",
        "add",
        "default",
        "via",
        "100.126.0.1",
    ]);
    let table = ns.replace('-', "_");
    let deny = zos_network::DEFAULT_EGRESS_DENY;
    let body = nft::node_tenant_table(
        &table,
        common::UPLINK,
        &ns,
        "100.126.0.2".parse().unwrap(),
        &[],
        &deny,
        &[],
    );
    nft_in(node, &nft::replace_script("ip", &table, &body));
    let body = nft::tenant_table("zos", t.subnet, &[], &deny, &[]);
    nft_in(&ns, &nft::replace_script("inet", "zos", &body));
    for i in 0..WORKLOADS {
        let wns = format!("{ns}-w{i}");
        let port = format!("w-w{i}");
        run(&["ip", "netns", "add", &wns]);
        run(&[
            "ip", "-n", &ns, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            &wns,
        ]);
        run(&["ip", "-n", &ns, "link", "set", &port, "master", "br0", "up"]);
        let addr = format!(
            "{}/{}",
            Ipv4Addr::from(u32::from(t.gateway) + 1 + i as u32),
            t.subnet.prefix()
        );
        run(&["ip", "-n", &wns, "link", "set", "lo", "up"]);
        run(&["ip", "-n", &wns, "addr", "add", &addr, "dev", "eth0"]);
        run(&["ip", "-n", &wns, "link", "set", "eth0", "up"]);
        run(&[
            "ip",
            "-n",
            &wns,
            "route",
            "add",
            "default",
            "via",
            &t.gateway.to_string(),
        ]);
    }
}

fn reference_remove(w: &World, tag: &str) {
    let ns = format!("{}{tag}", w.prefix);
    run(&["ip", "-n", &w.node, "link", "del", &ns]);
    run(&[
        "ip",
        "netns",
        "exec",
        &w.node,
        "nft",
        "delete",
        "table",
        "ip",
        &ns.replace('-', "_"),
    ]);
    for i in 0..WORKLOADS {
        run(&["ip", "netns", "del", &format!("{ns}-w{i}")]);
    }
    run(&["ip", "netns", "del", &ns]);
}

fn main() {
    if !privileged("network bench") {
        return;
    }
    let n: usize = std::env::var("ZOS_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let w = World::new();
    let net = w.network();
    net.ensure_node().unwrap();
    let t = TenantNetwork {
        id: "b".into(),
        subnet: "10.9.0.0/24".parse().unwrap(),
        gateway: "10.9.0.1".parse().unwrap(),
        ports: vec![],
    };
    let wls: Vec<TenantPort> = (0..WORKLOADS)
        .map(|i| TenantPort {
            id: format!("w{i}"),
            attachment: WorkloadAttachment::Veth {
                netns: net.workload_netns("b", &format!("w{i}")),
                ip: Ipv4Addr::new(10, 9, 0, 2 + i),
                owner: None,
            },
        })
        .collect();

    let (mut create, mut remove, mut ref_create, mut ref_remove) = (vec![], vec![], vec![], vec![]);
    let (mut ensure_alone, mut attach_alone) = (vec![], vec![]);
    let mut again = vec![];
    for _ in 0..n {
        let s = Instant::now();
        net.ensure(&t).unwrap();
        ensure_alone.push(s.elapsed());
        for wl in &wls {
            let a = Instant::now();
            net.attach(&t, wl).unwrap();
            attach_alone.push(a.elapsed());
        }
        create.push(s.elapsed());

        let s = Instant::now();
        net.ensure(&t).unwrap();
        for wl in &wls {
            net.attach(&t, wl).unwrap();
        }
        again.push(s.elapsed());

        let s = Instant::now();
        assert!(net.remove("b").unwrap());
        remove.push(s.elapsed());

        let s = Instant::now();
        reference_create(&w, &t, "r");
        ref_create.push(s.elapsed());
        let s = Instant::now();
        reference_remove(&w, "r");
        ref_remove.push(s.elapsed());
    }
    net.remove_node().unwrap();

    println!(
        "tenant network + {WORKLOADS} veth workloads, {n} rounds (ours and the reference interleaved)"
    );
    println!(
        "{:<52} {:>9} {:>9} {:>9} {:>9}",
        "operation", "mean ms", "p50 ms", "p95 ms", "ratio"
    );
    let rows = [
        (
            "create: zos-network ensure + 10 attach",
            stats(create),
            Some(1),
        ),
        (
            "create: reference (ip + nft commands)",
            stats(ref_create),
            None,
        ),
        (
            "  of which: ensure of a new network",
            stats(ensure_alone),
            None,
        ),
        ("  of which: one attach (veth)", stats(attach_alone), None),
        ("ensure + 10 attach again (no-op)", stats(again), Some(1)),
        ("remove: zos-network remove", stats(remove), Some(6)),
        (
            "remove: reference (ip link del, ip netns del)",
            stats(ref_remove),
            None,
        ),
    ];
    for (name, s, refidx) in &rows {
        let ratio = refidx
            .map(|r| format!("{:.2}", ms(s.mean) / ms(rows[r].1.mean)))
            .unwrap_or_default();
        println!(
            "{name:<52} {:>9.2} {:>9.2} {:>9.2} {:>9}",
            ms(s.mean),
            ms(s.p50),
            ms(s.p95),
            ratio
        );
    }
    println!(
        "ratio = our mean / the reference's mean (the no-op row against the reference create)"
    );
}
