//! M5 on a real node (`zosd run`, real kernel, libcontainer, busybox): a tenant
//! reaches the internet only. A host in a private range (here the farm LAN's
//! 192.168.77.1, behind the node's router) is reachable only when the signed contract
//! lists its range in `networks[].egress_allow`; a malformed range refuses the
//! contract before anything is made.
//!
//! The probes are busybox `nc` inside the containers; their output reaches the
//! node's status records (`publish_logs`). Every negative probe follows a positive
//! one over the same links (the internet answers first), so a refusal is the
//! firewall's, not a link still coming up.

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::netfix::INET_IP;
use common::*;
use serde_json::{json, Value};
use zos_contract::{PublicKey, SignedContract};
use zos_network::nft::EGRESS_DENY_COMMENT;
use zos_testkit::contract as kit;

/// The LAN host: an address of the internet namespace (the farm's router), in
/// 192.168.0.0/16, which the node's default `egress_deny` closes.
const LAN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
const LAN_PORT: u16 = 7100;
const INET_PORT: u16 = 7101;

/// A contract whose one network `net` opens `{{lan}}` (the contract's parameter `lan`)
/// when `lan` is given, and nothing otherwise. The range is a parameter so that the
/// expert can sign the blueprint without an example: a malformed range then reaches
/// the node, which must refuse it.
fn lan_contract(
    p: &People,
    node: PublicKey,
    id: &str,
    subnet: &str,
    lan: Option<&str>,
    workload: Value,
) -> SignedContract {
    let mut net = json!({"name": "net", "subnet": subnet});
    let mut params = json!({});
    if lan.is_some() {
        net["egress_allow"] = json!(["{{lan}}"]);
        params = json!({"lan": {"type": "string", "pattern": "[0-9./]*", "max_len": 18}});
    }
    let bp = kit::signed_blueprint(
        &p.expert,
        json!({
            "name": "probe",
            "version": "1.0.0",
            "params": params,
            "body": {
                "networks": [net],
                "volumes": [{"name": "data", "size_mib": 64}],
                "workloads": [workload],
                "publish_logs": true
            }
        }),
    );
    let mut c = kit::contract(p.owner.public(), node, id, 1, bp);
    if let Some(lan) = lan {
        c.params.insert("lan".into(), json!(lan));
    }
    kit::signed(c, &[&p.owner])
}

/// The probe: reach the internet (retried: a fresh link may drop the first packets),
/// then send `payload` to the LAN host once, and say what happened.
fn probe_script(payload: &str) -> String {
    format!(
        "i=0; until echo control | nc -w 2 {INET_IP} {INET_PORT}; do \
           i=$((i+1)); [ $i -ge 20 ] && echo 'probe: no internet' && exec sleep 3600; sleep 1; \
         done; echo 'probe: internet reached'; \
         if echo {payload} | nc -w 3 {LAN_IP} {LAN_PORT}; then echo 'probe: lan reached'; \
         else echo \"probe: lan failed rc=$?\"; fi; exec sleep 3600"
    )
}

/// A listener bound to `addr` inside namespace `ns` (non-blocking).
fn listen(node: &Node, ns: &str, addr: SocketAddr) -> TcpListener {
    let l = node
        .world
        .run_in(ns, || TcpListener::bind(addr).expect("bind"));
    l.set_nonblocking(true).unwrap();
    l
}

/// Every connection queued on `l` so far, with the bytes each sent until it stopped
/// (the probes send one line and wait for us to close).
fn drain(l: &TcpListener) -> Vec<String> {
    let mut got = Vec::new();
    loop {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).unwrap_or(0);
                got.push(String::from_utf8_lossy(&buf[..n]).trim().to_string());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return got,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// The log tail of workload `app` of contract `id` once it holds a line starting with
/// `probe: ` after "probe: internet reached" (the probe's verdict). Serves the
/// internet listener meanwhile, so the control probe completes.
fn verdict(node: &Node, id: &str, inet: &TcpListener) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        drain(inet);
        if let Some(s) = node.status(id) {
            let lines: Vec<String> = s["workloads"]["app"]["log_tail"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|l| l.as_str().map(str::to_owned))
                .collect();
            if let Some(v) = lines
                .iter()
                .find(|l| l.starts_with("probe: lan") || l.as_str() == "probe: no internet")
            {
                return format!("{v} (log: {lines:?})");
            }
        }
        assert!(
            Instant::now() < deadline,
            "{id}: no probe verdict; status {:#}\nzosd log:\n{}",
            node.status(id).unwrap_or_default(),
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Packets counted by the egress deny rules in every namespace of this node's world
/// (the tenant namespaces and the node's tables).
fn denied(node: &Node) -> u64 {
    let mut total = 0;
    for ns in node.world.namespaces() {
        let text = node.world.output(&ns, &["nft", "list", "ruleset"]);
        for line in text.lines().filter(|l| l.contains(EGRESS_DENY_COMMENT)) {
            let words: Vec<&str> = line.split_whitespace().collect();
            let i = words.iter().position(|w| *w == "packets").expect("counter");
            total += words[i + 1].parse::<u64>().expect("packet count");
        }
    }
    total
}

/// Volume directories of contract `id` in any pool.
fn volumes_of(node: &Node, id: &str) -> Vec<String> {
    let pools = node.dir.path().join("pools");
    std::fs::read_dir(pools)
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|pool| {
            std::fs::read_dir(pool.path().join("volumes"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        })
        .filter(|v| v.starts_with(&format!("{id}.")))
        .collect()
}

#[test]
fn a_lan_host_is_reachable_only_through_a_signed_egress_allow() {
    if !privileged("a_lan_host_is_reachable_only_through_a_signed_egress_allow") {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let inet_ns = node.world.inet.clone();
    node.world.output(
        &inet_ns,
        &["ip", "addr", "add", &format!("{LAN_IP}/32"), "dev", "lo"],
    );
    let lan_l = listen(&node, &inet_ns, SocketAddr::from((LAN_IP, LAN_PORT)));
    let inet_l = listen(&node, &inet_ns, SocketAddr::from((INET_IP, INET_PORT)));

    // 1. A malformed range (host bits set) refuses the contract: nothing is made.
    let bad = node.id("bad");
    let app = shell_workload("app", &flist, &p, &probe_script("zt-probe-bad"));
    node.publish(&record(
        &p,
        key,
        &lan_contract(&p, key, &bad, "10.90.0.0/24", Some("192.168.77.1/24"), app),
    ));
    let s = node.wait_status(&bad, "refused", |s| s["state"] == "refused");
    assert_eq!(s["reasons"][0]["code"], "invalid_deployment", "{s:#}");
    let message = s["reasons"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message
            .ends_with("$.body.networks[0].egress_allow[0]: \"192.168.77.1/24\" has host bits set"),
        "{s:#}"
    );
    assert!(node.container_pid(&format!("{bad}.app")).is_none());
    assert!(
        volumes_of(&node, &bad).is_empty(),
        "{:?}",
        volumes_of(&node, &bad)
    );
    assert_eq!(
        node.world.namespaces().len(),
        2,
        "no tenant namespace: {:?}",
        node.world.namespaces()
    );

    // 2. No egress_allow: the internet answers, the LAN host does not (the probe's
    // connect times out, the deny rule counts it, the LAN listener saw nothing).
    let closed = node.id("closed");
    let app = shell_workload("app", &flist, &p, &probe_script("zt-probe-closed"));
    node.publish(&record(
        &p,
        key,
        &lan_contract(&p, key, &closed, "10.91.0.0/24", None, app),
    ));
    let v = verdict(&node, &closed, &inet_l);
    assert!(v.starts_with("probe: lan failed"), "{v}");
    println!("closed tenant: {v}");
    assert_eq!(drain(&lan_l), Vec::<String>::new(), "the LAN saw the probe");
    assert!(denied(&node) > 0, "the egress deny rule counted nothing");

    // 3. The same range opened by the signed contract: the LAN host gets the bytes.
    let open = node.id("open");
    let app = shell_workload("app", &flist, &p, &probe_script("zt-probe-open"));
    node.publish(&record(
        &p,
        key,
        &lan_contract(&p, key, &open, "10.92.0.0/24", Some("192.168.77.0/24"), app),
    ));
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while !seen.iter().any(|b| b == "zt-probe-open") {
        seen.extend(drain(&lan_l));
        drain(&inet_l);
        assert!(
            Instant::now() < deadline,
            "the LAN host never received the allowed probe (saw {seen:?}); status {:#}",
            node.status(&open).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(seen, ["zt-probe-open"], "only the allowed tenant's bytes");
    let v = verdict(&node, &open, &inet_l);
    assert!(v.starts_with("probe: lan reached"), "{v}");
    println!("open tenant: {v}");
    // The closed tenant is still closed: its rules did not change with another's.
    assert!(drain(&lan_l).is_empty());
}
