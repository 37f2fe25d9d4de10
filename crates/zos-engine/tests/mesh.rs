//! A tenant network across nodes (docs/engine.md, "Mesh") with two engines: two node
//! keys, two fake machines (with fake WireGuard links that record their calls), two
//! journals and one real `dir://` notary, where each engine publishes its peer record
//! and reads the other's.

mod common;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;

use common::{blueprint, Fake, Keys, World};
use serde_json::json;
use zos_contract::{PublicKey, SecretKey, SignedContract};
use zos_engine::{Engine, EngineConfig, FileJournal, Journal, State, StatusReport};
use zos_notary::{AnyNotary, Notary, NotaryKey, Record};
use zos_testkit::contract as kit;

fn node_b() -> SecretKey {
    SecretKey::from_seed([6; 32])
}

/// Contract `id` naming `nodes` in order; the blueprint's network is 10.20.0.0/24
/// (16 slots of /28).
fn contract(keys: &Keys, id: &str, version: u64, nodes: &[PublicKey]) -> SignedContract {
    let mut c = kit::contract(
        keys.owner.public(),
        nodes[0],
        id,
        version,
        blueprint(keys, "/app"),
    );
    c.nodes = nodes.to_vec();
    c.params = BTreeMap::from([("users".into(), json!(10))]);
    kit::signed(c, &[&keys.owner])
}

fn record_for(keys: &Keys, node: &PublicKey, doc: &SignedContract) -> Record {
    let key = NotaryKey::contract(node, &doc.contract.id).unwrap();
    Record::sign(&key, doc.to_value(), &keys.owner).unwrap()
}

/// One node of the pair: its key, fake machine, journal and key directory.
struct Side {
    key: SecretKey,
    fake: Fake,
    dir: tempfile::TempDir,
}

impl Side {
    fn new(key: SecretKey) -> Side {
        Side {
            key,
            fake: Fake::default(),
            dir: zos_testkit::tempdir("mesh"),
        }
    }

    fn engine(
        &self,
        notary: &AnyNotary,
        endpoint: [u8; 4],
    ) -> Engine<Fake, AnyNotary, FileJournal> {
        let journal =
            Journal::open(FileJournal::new(self.dir.path().join("journal.json"))).unwrap();
        let config = EngineConfig {
            mesh_keys: Some(self.dir.path().join("mesh")),
            mesh_endpoint: Some(Ipv4Addr::from(endpoint).into()),
            ..World::config()
        };
        Engine::new(
            self.key.clone(),
            config,
            self.fake.clone(),
            notary.clone(),
            journal,
        )
    }

    async fn status(&self, notary: &AnyNotary, id: &str) -> StatusReport {
        let key = NotaryKey::status(&self.key.public(), id).unwrap();
        let r = notary.get(&key).await.unwrap().expect("a status record");
        serde_json::from_value(r.body).unwrap()
    }

    fn key_file(&self, id: &str) -> std::path::PathBuf {
        zos_engine::engine::mesh_key_path(&self.dir.path().join("mesh"), id, "net")
    }
}

#[tokio::test]
async fn two_nodes_of_a_contract_become_each_others_peers_and_part_cleanly() {
    let w = World::new();
    let keys = &w.keys;
    let notary = &w.notary;
    let (a, b) = (Side::new(keys.node.clone()), Side::new(node_b()));
    let nodes = [a.key.public(), b.key.public()];
    let doc = contract(keys, "web", 1, &nodes);
    let mut ea = a.engine(notary, [192, 0, 2, 1]);
    let mut eb = b.engine(notary, [192, 0, 2, 2]);
    ea.start(vec![]).await.unwrap();
    eb.start(vec![]).await.unwrap();

    // A first: its slot (0: 10.20.0.0/28) on its bridge, its link made to learn its
    // port, its record published; B has none yet.
    ea.on_record(&record_for(keys, &nodes[0], &doc))
        .await
        .unwrap();
    let net_a = a.fake.state().network_plans["web.net"].clone();
    assert_eq!(
        (net_a.subnet, net_a.prefix_len),
        (Ipv4Addr::new(10, 20, 0, 0), 28)
    );
    assert_eq!(net_a.gateway, Ipv4Addr::new(10, 20, 0, 1));
    assert_eq!(net_a.forwards[0].0, Ipv4Addr::new(10, 20, 0, 2));
    let s = a.status(notary, "web").await;
    assert_eq!(s.state, State::Ok, "{s:?}");
    assert_eq!(
        s.workloads["app"].address,
        Some(Ipv4Addr::new(10, 20, 0, 2))
    );
    assert_eq!(s.mesh.len(), 1, "{s:?}");
    let m = &s.mesh[0];
    assert_eq!(
        (m.slot, m.subnet.as_str(), m.range.as_str()),
        (0, "10.20.0.0/28", "10.20.0.0/24")
    );
    assert_eq!(m.listen_port, Some(51820));
    assert_eq!(m.peers.len(), 1);
    assert_eq!(m.peers[0].state, "no_record");
    assert_eq!(m.peers[0].node, Some(nodes[1].to_string()));
    assert!(m.peers[0]
        .cause
        .as_deref()
        .unwrap()
        .contains("published no record"));
    // The key: a 0600 file, and the status's public key is its.
    let mode = std::fs::metadata(a.key_file("web"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let ka = zos_mesh::WgSecretKey::load(&a.key_file("web"))
        .unwrap()
        .public();
    assert_eq!(m.public_key.as_deref(), Some(ka.to_base64().as_str()));
    let rec_a = notary
        .get(&NotaryKey::mesh(&nodes[0], "web", "net").unwrap())
        .await
        .unwrap()
        .expect("A's peer record");
    let body = zos_mesh::verify_record(&rec_a, "web", "net").unwrap();
    assert_eq!(
        body.endpoint,
        Some(SocketAddr::from(([192, 0, 2, 1], 51820)))
    );
    assert_eq!(body.subnet.to_string(), "10.20.0.0/28");
    assert_eq!(body.public_key, ka);

    // B: slot 1 (10.20.0.16/28), A's record read: A is its peer at once.
    eb.on_record(&record_for(keys, &nodes[1], &doc))
        .await
        .unwrap();
    let net_b = b.fake.state().network_plans["web.net"].clone();
    assert_eq!(
        (net_b.subnet, net_b.gateway),
        (Ipv4Addr::new(10, 20, 0, 16), Ipv4Addr::new(10, 20, 0, 17))
    );
    assert_eq!(
        b.fake.state().workload_plans["web.app"]
            .network
            .as_ref()
            .unwrap()
            .1,
        Ipv4Addr::new(10, 20, 0, 18)
    );
    let plan_b = b.fake.state().mesh_plans["web.net"].clone();
    assert_eq!(plan_b.range, (Ipv4Addr::new(10, 20, 0, 0), 24));
    assert_eq!(plan_b.peers.len(), 1);
    assert_eq!(plan_b.peers[0].public_key, ka.0);
    assert_eq!(plan_b.peers[0].allowed, (Ipv4Addr::new(10, 20, 0, 0), 28));
    assert_eq!(
        plan_b.peers[0].endpoint,
        Some(SocketAddr::from(([192, 0, 2, 1], 51820)))
    );
    assert_eq!(plan_b.peers[0].keepalive_s, None);
    let s = b.status(notary, "web").await;
    assert_eq!(s.mesh[0].slot, 1);
    assert_eq!(s.mesh[0].peers[0].state, "peer", "{s:?}");
    assert_eq!(
        s.mesh[0].peers[0].endpoint.as_deref(),
        Some("192.0.2.1:51820")
    );

    // A's next refresh reads B's record: B is its peer; applied once, then only read.
    ea.mesh_refresh_all().await.unwrap();
    let plan_a = a.fake.state().mesh_plans["web.net"].clone();
    assert_eq!(plan_a.peers.len(), 1);
    assert_eq!(plan_a.peers[0].allowed, (Ipv4Addr::new(10, 20, 0, 16), 28));
    let s = a.status(notary, "web").await;
    assert_eq!(s.mesh[0].peers[0].state, "peer", "{s:?}");
    let applied = |side: &Side| {
        side.fake
            .state()
            .mesh_calls
            .iter()
            .filter(|c| c.starts_with("ensure_mesh"))
            .count()
    };
    let before = applied(&a);
    ea.mesh_refresh_all().await.unwrap();
    assert_eq!(applied(&a), before, "the same peers are not applied again");
    assert_eq!(
        a.fake.state().mesh_calls.last().unwrap(),
        "mesh_state web.net"
    );

    // B's owner cancels on B: its network (and link) goes, its record and key file
    // too; A's next refresh has no peer and says B published no record.
    let cancel = Record::sign(
        &NotaryKey::contract(&nodes[1], "web").unwrap(),
        kit::cancellation(&keys.owner, "web", 2),
        &keys.owner,
    )
    .unwrap();
    eb.on_record(&cancel).await.unwrap();
    assert!(b.fake.state().meshes.is_empty());
    assert!(!b.key_file("web").exists());
    assert!(notary
        .get(&NotaryKey::mesh(&nodes[1], "web", "net").unwrap())
        .await
        .unwrap()
        .is_none());
    ea.mesh_refresh_all().await.unwrap();
    assert!(a.fake.state().mesh_plans["web.net"].peers.is_empty());
    let s = a.status(notary, "web").await;
    assert_eq!(s.mesh[0].peers[0].state, "no_record", "{s:?}");
}

#[tokio::test]
async fn a_contract_across_nodes_is_refused_without_wireguard_and_nothing_is_made() {
    let w = World::new();
    w.fake.state().no_wireguard = true;
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    let doc = contract(
        &w.keys,
        "web",
        1,
        &[w.keys.node.public(), node_b().public()],
    );
    engine
        .on_record(&record_for(&w.keys, &w.keys.node.public(), &doc))
        .await
        .unwrap();
    let s = w.status("web").await;
    assert_eq!(s.state, State::Refused, "{s:?}");
    assert_eq!(s.reasons[0].code, "wireguard_missing");
    assert_eq!(
        s.reasons[0].message,
        "this node's kernel has no WireGuard: a network across nodes needs it"
    );
    assert!(
        w.fake.state().calls.is_empty(),
        "{:?}",
        w.fake.state().calls
    );
    assert!(w.fake.state().mesh_calls.is_empty());
    assert!(w.fake.is_empty());
    assert!(engine.journal().data().owned.is_empty());
}

#[tokio::test]
async fn more_nodes_than_slots_are_refused_before_anything_is_made() {
    let w = World::new();
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    // 17 nodes in a /24 (16 slots of /28).
    let mut nodes = vec![w.keys.node.public()];
    nodes.extend((100..116).map(|i| SecretKey::from_seed([i; 32]).public()));
    let doc = contract(&w.keys, "web", 1, &nodes);
    engine
        .on_record(&record_for(&w.keys, &w.keys.node.public(), &doc))
        .await
        .unwrap();
    let s = w.status("web").await;
    assert_eq!(s.state, State::Refused, "{s:?}");
    assert_eq!(s.reasons[0].code, "range_too_small", "{s:?}");
    assert!(w.fake.state().calls.is_empty());
}

#[tokio::test]
async fn a_contract_on_one_node_has_no_mesh() {
    let w = World::new();
    let mut engine = w.engine();
    engine.start(vec![]).await.unwrap();
    let doc = contract(&w.keys, "web", 1, &[w.keys.node.public()]);
    engine
        .on_record(&record_for(&w.keys, &w.keys.node.public(), &doc))
        .await
        .unwrap();
    engine.mesh_refresh_all().await.unwrap();
    let s = w.status("web").await;
    assert_eq!(s.state, State::Ok);
    assert!(s.mesh.is_empty());
    assert!(w.fake.state().mesh_calls.is_empty());
    let net = w.fake.state().network_plans["web.net"].clone();
    assert_eq!(
        (net.subnet, net.prefix_len),
        (Ipv4Addr::new(10, 20, 0, 0), 24)
    );
}
