//! Diagnostics by signed request against a real node (docs/diagnostics.md): one zosd in a
//! farm, on a `dir://` notary, with the owner's two busybox web servers and another
//! tenant's container. The farmer's support bundle verifies, unpacks and holds no
//! encoding of the node's identity seed; the farmer's uplink ping and the owner's TCP
//! connect from their own workload answer. Refused, each with its code in the node's
//! signed answer and nothing run (no probe result, no bundle, no "accepted" line): the
//! owner probing another tenant's workload, the owner asking for the uplink, an expired
//! request, a stranger's request, a request for another node, an unknown probe kind.
//! A replayed id runs nothing and keeps its first answer.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use zos_contract::{PublicKey, SecretKey};
use zos_notary::record::{DiagAnswer, DiagOutcome, RefusalCode};
use zos_notary::{Notary, NotaryKey, Record};
use zos_probe::ProbeResult;
use zos_registry::Farm;

const FARM: &str = "zt-diag-farm";

type Answer = DiagAnswer<ProbeResult>;

fn now() -> u64 {
    zos_registry::now()
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A request body for `node` valid for ten minutes.
fn body(id: &str, node: PublicKey, scope: Value, action: Value) -> Value {
    let t = now();
    json!({"id": id, "node": node, "scope": scope, "action": action,
           "issued_at": t, "expires_at": t + 600})
}

/// Publishes `body` at `nodes/<node>/requests/<id>`, signed by `author`.
fn ask(node: &Node, author: &SecretKey, id: &str, body: Value) {
    let key = NotaryKey::request(&node.key.unwrap(), id).unwrap();
    node.publish(&Record::sign(&key, body, author).unwrap());
}

/// Waits for the node's answer to `id`: signed by the node, for that very request.
fn answer(node: &Node, id: &str) -> Answer {
    let me = node.key.unwrap();
    let key = NotaryKey::answer(&me, id).unwrap();
    let req = block_on(node.notary.get(&NotaryKey::request(&me, id).unwrap()))
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(r) = block_on(node.notary.get(&key)).unwrap() {
            assert_eq!(r.author, me, "the answer is signed by the node");
            let a: Answer = serde_json::from_value(r.body).unwrap();
            assert_eq!(a.id, id);
            assert_eq!(
                a.request,
                req.signing_digest().unwrap(),
                "answers this request"
            );
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "no answer to {id}; zosd log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The answer to `id` is the refusal `code`, and nothing ran for it.
fn refused(node: &Node, id: &str, code: RefusalCode) {
    let a = answer(node, id);
    match a.outcome() {
        Some(DiagOutcome::Refused(c, reason)) => assert_eq!(c, code, "{id}: {reason}"),
        other => panic!("{id}: expected the refusal {code}, got {other:?}"),
    }
    assert!(a.probe.is_none() && a.bundle.is_none(), "{id}: {a:?}");
    assert!(
        !node
            .log()
            .lines()
            .any(|l| l.contains("diagnostic request accepted") && l.contains(id)),
        "{id} was run"
    );
}

fn probe_result(node: &Node, id: &str) -> ProbeResult {
    let a = answer(node, id);
    match a.outcome() {
        Some(DiagOutcome::Probe(r)) => r.clone(),
        other => panic!("{id}: expected a probe result, got {other:?}"),
    }
}

/// The node's identity seed, read from a pool's state home (docs of zos-storage's
/// state.rs: a 56-byte header, then the payload).
fn identity_seed(node: &Node) -> Vec<u8> {
    for pool in std::fs::read_dir(node.dir.path().join("pools"))
        .unwrap()
        .flatten()
    {
        if let Ok(bytes) = std::fs::read(pool.path().join("zos-state/identity")) {
            return bytes[56..88].to_vec();
        }
    }
    panic!("no identity in the node's pools");
}

#[test]
fn signed_support_and_probe_requests_are_answered_or_refused() {
    if !privileged("signed_support_and_probe_requests_are_answered_or_refused") {
        return;
    }
    let p = people();
    let farmer = SecretKey::from_seed([9; 32]);
    let other = SecretKey::from_seed([11; 32]);
    let stranger = SecretKey::from_seed([12; 32]);
    let mut node = Node::in_farm(512, FARM, 60);
    let t = zos_registry::now();
    node.publish(
        &Farm::create_or_update(None, FARM, "diag farm", farmer.public(), t)
            .unwrap()
            .sign(&farmer, t)
            .unwrap(),
    );
    let key = node.start();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let mine = node.id("mine");
    node.publish(&record(
        &p,
        key,
        &web_contract(&p, key, &mine, "10.71.0.0/24", &flist),
    ));
    let theirs = node.id("theirs");
    let app = shell_workload("app", &flist, &p, "exec sleep 3600");
    let doc = signed_contract_by(&p, &other, key, &theirs, 1, "10.72.0.0/24", vec![app]);
    node.publish(&record_by(&other, key, &doc));
    node.wait_status(&mine, "ok", |s| s["state"] == "ok");
    node.wait_status(&theirs, "ok", |s| s["state"] == "ok");

    // The farmer's support bundle: verifies, unpacks, holds the node's parts and the
    // kernel log, and no encoding of the identity seed (planted in the kernel log).
    let seed = identity_seed(&node);
    let marker = format!("{}-seed", node.world.tag);
    let planted = format!("{marker} {}\n", hex(&seed));
    std::fs::write("/dev/kmsg", planted.as_bytes()).unwrap();
    ask(
        &node,
        &farmer,
        "bundle-1",
        body("bundle-1", key, json!("node"), json!("support_bundle")),
    );
    let a = answer(&node, "bundle-1");
    let Some(DiagOutcome::Bundle(b)) = a.outcome() else {
        panic!("no bundle: {a:?}");
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&b.data)
        .unwrap();
    assert_eq!(zos_contract::Digest::of(&bytes), b.sha256);
    assert_eq!(bytes.len() as u64, b.size);
    assert!(bytes.len() <= zos_notary::record::MAX_INLINE_BUNDLE);
    let out = zos_testkit::tempdir("diag-bundle");
    let manifest = zos_support::unpack(&bytes, out.path()).unwrap();
    let names: Vec<&str> = manifest.parts.iter().map(|p| p.name.as_str()).collect();
    for part in ["zosd-state.txt", "zosd-journal.txt", "zosd-heartbeat.json"] {
        assert!(names.contains(&part), "{part} missing: {names:?}");
    }
    let mut files = Vec::new();
    let mut kernel_log_has_marker = false;
    for e in walk(out.path()) {
        let data = std::fs::read(&e).unwrap();
        let text = String::from_utf8_lossy(&data).to_string();
        kernel_log_has_marker |= text.contains(&marker);
        files.push((e, data));
    }
    assert!(
        kernel_log_has_marker,
        "the planted kernel line is in the bundle"
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(&seed);
    let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&seed);
    for (path, data) in &files {
        for (what, needle) in [
            ("raw", seed.clone()),
            ("hex", hex(&seed).into_bytes()),
            ("HEX", hex(&seed).to_uppercase().into_bytes()),
            ("base64", b64.trim_end_matches('=').as_bytes().to_vec()),
            ("base64url", b64url.as_bytes().to_vec()),
        ] {
            assert!(
                !data.windows(needle.len()).any(|w| w == needle.as_slice()),
                "{}: the identity seed ({what})",
                path.display()
            );
        }
    }

    // The farmer's uplink ping: from the node's namespace to the internet side.
    ask(
        &node,
        &farmer,
        "ping-1",
        body(
            "ping-1",
            key,
            json!("uplink"),
            json!({"probe": {"probe": "ping", "target": netfix::INET_IP.to_string(), "count": 1}}),
        ),
    );
    let r = probe_result(&node, "ping-1");
    assert!(r.ok, "{r:?}");

    // The owner's TCP connect from their web server to its peer.
    let scope = json!({"workload": {"contract": mine, "workload": "web"}});
    ask(
        &node,
        &p.owner,
        "tcp-1",
        body(
            "tcp-1",
            key,
            scope.clone(),
            json!({"probe": {"probe": "tcp_connect", "addr": "10.71.0.3:80"}}),
        ),
    );
    let r = probe_result(&node, "tcp-1");
    assert!(r.ok, "{r:?}");

    // A replay: another body under the answered id (a ping of the other tenant). The
    // node runs nothing and keeps its first answer; the positive event is its log line.
    let first = answer(&node, "tcp-1");
    ask(
        &node,
        &p.owner,
        "tcp-1",
        body(
            "tcp-1",
            key,
            scope.clone(),
            json!({"probe": {"probe": "ping", "target": "10.72.0.2", "count": 1}}),
        ),
    );
    let deadline = Instant::now() + WAIT;
    while !node
        .log()
        .lines()
        .any(|l| l.contains("already answered") && l.contains("tcp-1"))
    {
        assert!(
            Instant::now() < deadline,
            "no replay line; log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let me = node.key.unwrap();
    let kept = block_on(node.notary.get(&NotaryKey::answer(&me, "tcp-1").unwrap()))
        .unwrap()
        .unwrap();
    let kept: Answer = serde_json::from_value(kept.body).unwrap();
    assert_eq!(kept, first, "the first answer stands");

    // Refused. The owner probing another tenant's workload.
    let ping = json!({"probe": {"probe": "ping", "target": "10.72.0.1", "count": 1}});
    let theirs_scope = json!({"workload": {"contract": theirs, "workload": "app"}});
    ask(
        &node,
        &p.owner,
        "r-theirs",
        body("r-theirs", key, theirs_scope, ping.clone()),
    );
    refused(&node, "r-theirs", RefusalCode::NotOwner);
    // The owner asking for the uplink.
    ask(
        &node,
        &p.owner,
        "r-uplink",
        body("r-uplink", key, json!("uplink"), ping.clone()),
    );
    refused(&node, "r-uplink", RefusalCode::FarmerOnly);
    // An expired request (the farmer's, otherwise fine).
    let mut old = body("r-old", key, json!("uplink"), ping.clone());
    old["issued_at"] = json!(now() - 7200);
    old["expires_at"] = json!(now() - 3600);
    ask(&node, &farmer, "r-old", old);
    refused(&node, "r-old", RefusalCode::Expired);
    // A stranger asking for the node's support bundle.
    ask(
        &node,
        &stranger,
        "r-stranger",
        body("r-stranger", key, json!("node"), json!("support_bundle")),
    );
    refused(&node, "r-stranger", RefusalCode::FarmerOnly);
    // A request for another node, put under this node's key (the farmer's).
    let elsewhere = SecretKey::from_seed([13; 32]).public();
    ask(
        &node,
        &farmer,
        "r-node",
        body("r-node", elsewhere, json!("uplink"), ping.clone()),
    );
    refused(&node, "r-node", RefusalCode::WrongNode);
    // A probe outside the built-in set (the owner's own workload).
    ask(
        &node,
        &p.owner,
        "r-shell",
        body(
            "r-shell",
            key,
            scope,
            json!({"probe": {"probe": "shell", "command": "id"}}),
        ),
    );
    refused(&node, "r-shell", RefusalCode::Malformed);

    // A stranger's flood: the strangers' shared bucket (a burst of 4, one used above by
    // r-stranger) bounds what the node signs and writes; the rest go unanswered. The
    // farmer's request after the flood is answered (its own bucket), and once it is, the
    // watcher has passed every request of the flood.
    const FLOOD: usize = 24;
    for i in 0..FLOOD {
        let id = format!("r-flood-{i}");
        ask(
            &node,
            &stranger,
            &id,
            body(&id, key, json!("node"), json!("support_bundle")),
        );
    }
    let mut late = body("r-after-flood", key, json!("uplink"), ping.clone());
    late["issued_at"] = json!(now() - 7200);
    late["expires_at"] = json!(now() - 3600);
    ask(&node, &farmer, "r-after-flood", late);
    refused(&node, "r-after-flood", RefusalCode::Expired);
    let answered: Vec<String> = (0..FLOOD)
        .map(|i| format!("r-flood-{i}"))
        .filter(|id| {
            let k = NotaryKey::answer(&key, id).unwrap();
            block_on(node.notary.get(&k)).unwrap().is_some()
        })
        .collect();
    assert!(
        answered.len() <= 3,
        "the node answered {} of a stranger's {FLOOD} requests: {answered:?}",
        answered.len()
    );
    assert!(
        node.log()
            .contains("diagnostic requests over the rate limit dropped, unanswered"),
        "the drops are logged; zosd log:\n{}",
        node.log()
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
