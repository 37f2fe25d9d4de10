//! `zos contract status` of a contract whose tenant network spans nodes: the node's
//! signed status record carries a `mesh` section (zos_engine::MeshReport), put in a real
//! `dir://` notary and read back by the real `zos` binary, as text and as JSON. A record
//! without one prints exactly as before. (The `--farm` view of each replica's mesh is in
//! tests/placement.rs, where a placement exists.)

mod common;

use serde_json::Value;

use common::{ok, stdout};
use zos_status::mesh::{MeshPeerReport, MeshReport};

/// A two-slot network seen from slot 0: slot 1 is a peer that shook hands 12 s before
/// the record was made, slot 2 has published no record.
fn mesh(node_b: &str, handshake: u64) -> Vec<MeshReport> {
    vec![MeshReport {
        network: "backend".into(),
        range: "10.20.0.0/16".into(),
        slot: 0,
        subnet: "10.20.0.0/24".into(),
        listen_port: Some(51820),
        public_key: Some("mVv7PDQc2oMWCUmnuOPF39wAw1yHU0wUy6hTyJS4VHw=".into()),
        peers: vec![
            MeshPeerReport {
                slot: 1,
                subnet: "10.20.1.0/24".into(),
                node: Some(node_b.into()),
                state: "peer".into(),
                refusal: None,
                endpoint: Some("192.0.2.2:51820".into()),
                last_handshake: Some(handshake),
                rx_bytes: 3 << 20,
                tx_bytes: 1536,
                cause: None,
            },
            MeshPeerReport {
                slot: 2,
                subnet: "10.20.2.0/24".into(),
                node: Some(node_b.into()),
                state: "no_record".into(),
                refusal: None,
                endpoint: None,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                cause: Some("node has published no peer record for backend yet".into()),
            },
        ],
    }]
}

/// Signs `body` as node `key`'s status record of contract `id` into the notary at `url`.
fn publish(url: &str, key: &zos_contract::SecretKey, id: &str, body: Value) -> u64 {
    let nkey = zos_notary::NotaryKey::status(&key.public(), id).unwrap();
    let record = zos_notary::Record::sign(&nkey, body, key).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use zos_notary::Notary;
            zos_notary::open(url).unwrap().put(&record).await
        })
        .unwrap();
    record.signed_at
}

#[test]
fn contract_status_shows_each_mesh_peer() {
    let tmp = zos_testkit::tempdir("cli-mesh");
    let dir = tmp.path();
    let url = format!("dir://{}", dir.join("notary").display());
    let node = ok(dir, &["key", "new", "--out", "node.key"]);
    let node = node.trim();
    let key = zos_contract::SecretKey::load(&dir.join("node.key")).unwrap();
    let node_b = zos_contract::SecretKey::from_seed([9; 32])
        .public()
        .to_hex();
    let handshake = zos_registry::now() - 12;
    let mut body = serde_json::json!({"contract": "c1", "version": 3, "state": "ok",
        "message": "running", "workloads": {"app": {"state": "running",
        "address": "10.20.0.2", "restarts": 0}}});
    let plain = body.clone();
    body["mesh"] = serde_json::to_value(mesh(&node_b, handshake)).unwrap();
    publish(&url, &key, "c1", body);

    let args = ["contract", "status", "c1", "--node", node, "--notary", &url];
    let text = stdout(dir, &args);
    let short = &node_b[..8];
    for want in [
        "mesh      backend  range 10.20.0.0/16\n",
        "  this node  slot 0  10.20.0.0/24  port 51820\n",
        "  this node  key mVv7PDQc2oMWCUmnuOPF39wAw1yHU0wUy6hTyJS4VHw=\n",
        &format!(
            "  slot 1  10.20.1.0/24  node {short}...  peer  endpoint 192.0.2.2:51820  handshake "
        ),
        "  rx 3.0 MiB  tx 1.5 KiB\n",
        &format!("  slot 2  10.20.2.0/24  node {short}...  no_record\n"),
        "    cause: node has published no peer record for backend yet\n",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    // "12 s ago" when the test runs at once; a slow machine may make it a little more.
    let seen = text
        .lines()
        .find(|l| l.starts_with("  slot 1"))
        .and_then(|l| l.split("handshake ").nth(1))
        .unwrap();
    let secs: u64 = seen.split(" s ago").next().unwrap().parse().unwrap();
    assert!(secs >= 12, "{seen}");
    // The mesh comes after the workloads: the contract's lines read as before it.
    let workload = text.find("workload  app: running").unwrap();
    assert!(workload < text.find("mesh ").unwrap(), "{text}");

    // As JSON: the section as the node signed it.
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let status: Value = serde_json::from_str(&stdout(dir, &json_args)).unwrap();
    let back: Vec<MeshReport> = serde_json::from_value(status["mesh"].clone()).unwrap();
    assert_eq!(back, mesh(&node_b, handshake));

    // A report without a mesh section prints as it always did: no mesh line.
    publish(&url, &key, "c2", {
        let mut p = plain;
        p["contract"] = "c2".into();
        p
    });
    let args = ["contract", "status", "c2", "--node", node, "--notary", &url];
    let text = stdout(dir, &args);
    assert!(!text.contains("mesh"), "{text}");
    assert!(
        text.starts_with("contract  c2\nversion   3\nstate     ok\n"),
        "{text}"
    );
    assert!(
        text.ends_with("workload  app: running, address 10.20.0.2, restarts 0\n"),
        "{text}"
    );
}

/// `zos node list` of a node whose heartbeat lists its WireGuard link's socket (labelled
/// by the node) and a TCP listener (not): the first is named for what it is, the second
/// is the alarm it always was.
#[test]
fn node_list_names_the_wireguard_socket_and_flags_the_rest() {
    use zos_registry::{Heartbeat, Proto, Socket, SocketLabel};
    let tmp = zos_testkit::tempdir("cli-mesh");
    let dir = tmp.path();
    let url = format!("dir://{}", dir.join("notary").display());
    let node = zos_contract::SecretKey::from_seed([21; 32]);
    let reg = zos_registry::Registration {
        farm: "farm-1".into(),
        version: "test".into(),
        capacity: zos_registry::NodeResources {
            cpus: 2,
            memory_bytes: 4 << 30,
            ssd_bytes: 0,
            hdd_bytes: 0,
        },
        offered: None,
        nics: vec![],
        dmi: Default::default(),
        registered_at: 1,
    };
    let now = zos_registry::now();
    let mut hb = Heartbeat {
        uptime_secs: 1,
        reserved: zos_registry::NodeResources {
            cpus: 0,
            memory_bytes: 0,
            ssd_bytes: 0,
            hdd_bytes: 0,
        },
        used: Default::default(),
        contracts: Default::default(),
        workloads: 0,
        listening: vec![],
        listening_total: 0,
        time: now,
    };
    hb.set_listening(vec![
        Socket {
            proto: Proto::Udp,
            address: "0.0.0.0".parse().unwrap(),
            port: 51820,
            uid: 0,
            inode: 4566190,
            label: Some(SocketLabel::Wireguard),
        },
        Socket {
            proto: Proto::Tcp,
            address: "0.0.0.0".parse().unwrap(),
            port: 22,
            uid: 0,
            inode: 1234,
            label: None,
        },
    ]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let notary = zos_notary::open(&url).unwrap();
    for record in [reg.sign(&node, now).unwrap(), hb.sign(&node, now).unwrap()] {
        rt.block_on(zos_notary::Notary::put(&notary, &record))
            .unwrap();
    }

    let text = stdout(dir, &["node", "list", "--notary", &url]);
    for want in [
        "2 listening socket(s) (1 wireguard)",
        "  wireguard udp 0.0.0.0:51820 (a tenant network's link: answers only its peers)\n",
        "  LISTENING tcp 0.0.0.0:22 uid 0\n",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    assert!(!text.contains("LISTENING udp"), "{text}");
    let rows: Value =
        serde_json::from_str(&stdout(dir, &["node", "list", "--notary", &url, "--json"])).unwrap();
    let listening = &rows[0]["heartbeat"]["listening"];
    let udp = listening
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["proto"] == "udp")
        .unwrap();
    assert_eq!(udp["label"], "wireguard", "{rows}");
    assert_eq!(udp["port"], 51820, "{rows}");
}
