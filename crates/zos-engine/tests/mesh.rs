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

    // The link gone under the engine (its network made again): made again at once.
    a.fake.state().meshes.clear();
    ea.mesh_refresh_all().await.unwrap();
    assert_eq!(applied(&a), before + 1);
    assert_eq!(a.fake.state().meshes["web.net"].peers.len(), 1);

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

// ---- a placement across nodes: slots are replicas, a move changes only the node ----

const FARM: &str = "zt-farm";

fn orchestrator() -> SecretKey {
    SecretKey::from_seed([7; 32])
}

/// A `stay` placement contract of two replicas on the farm.
fn placed(keys: &Keys, id: &str) -> SignedContract {
    let mut c = common::contract(keys, id, 1, 10, "/app", false).contract;
    c.nodes.clear();
    let placement = zos_contract::Placement {
        farm: FARM.into(),
        replicas: 2,
        orchestrator: orchestrator().public(),
        failover: zos_contract::Failover {
            mode: zos_contract::FailoverMode::Stay,
            after_s: 10,
        },
        constraints: None,
    };
    let mut doc = SignedContract::placed(c, placement).unwrap();
    doc.sign(&keys.owner).unwrap();
    doc.sign(&keys.legal).unwrap();
    doc
}

fn assignment(doc: &SignedContract, replica: u64, node: PublicKey, epoch: u64) -> Record {
    let a = zos_contract::Assignment {
        contract: doc.contract.id.clone(),
        version: doc.contract.version,
        digest: doc.digest,
        replica,
        node,
        epoch,
        issued_at: 0,
        orchestrator: orchestrator().public(),
    };
    let signed = zos_contract::SignedAssignment::sign(a, &orchestrator()).unwrap();
    let key = NotaryKey::assignment(&node, &doc.contract.id, replica).unwrap();
    Record::sign(&key, signed.to_value(), &orchestrator()).unwrap()
}

/// The orchestrator's placement record: replica `k` on `on[k]` at its epoch.
fn placement_record(doc: &SignedContract, on: &[(PublicKey, u64)]) -> Record {
    let replicas: Vec<serde_json::Value> = on
        .iter()
        .enumerate()
        .map(|(k, (node, epoch))| json!({"replica": k, "node": node, "epoch": epoch, "state": "assigned"}))
        .collect();
    let body = json!({
        "contract": doc.contract.id, "version": doc.contract.version, "digest": doc.digest,
        "replicas": replicas, "moves": [],
    });
    let key = NotaryKey::placement(FARM, &doc.contract.id).unwrap();
    Record::sign(&key, body, &orchestrator()).unwrap()
}

impl Side {
    fn farm_engine(
        &self,
        notary: &AnyNotary,
        endpoint: [u8; 4],
    ) -> Engine<Fake, AnyNotary, FileJournal> {
        let journal =
            Journal::open(FileJournal::new(self.dir.path().join("journal.json"))).unwrap();
        let config = EngineConfig {
            farm: Some(FARM.into()),
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

    fn wg_public(&self, id: &str) -> [u8; 32] {
        zos_mesh::WgSecretKey::load(&self.key_file(id))
            .unwrap()
            .public()
            .0
    }
}

#[tokio::test]
async fn a_moved_replica_keeps_its_slot_and_the_peers_follow_the_move() {
    let w = World::new();
    let (keys, notary) = (&w.keys, &w.notary);
    let (a, b, c) = (
        Side::new(keys.node.clone()),
        Side::new(node_b()),
        Side::new(SecretKey::from_seed([10; 32])),
    );
    let (na, nb, nc) = (a.key.public(), b.key.public(), c.key.public());
    let doc = placed(keys, "web");
    let contract_key = NotaryKey::placement_contract(FARM, "web").unwrap();
    notary
        .put(&Record::sign(&contract_key, doc.to_value(), &keys.owner).unwrap())
        .await
        .unwrap();
    notary
        .put(&placement_record(&doc, &[(na, 1), (nb, 1)]))
        .await
        .unwrap();
    let mut ea = a.farm_engine(notary, [192, 0, 2, 1]);
    let mut eb = b.farm_engine(notary, [192, 0, 2, 2]);
    let mut ec = c.farm_engine(notary, [192, 0, 2, 3]);
    for e in [&mut ea, &mut eb, &mut ec] {
        e.start(vec![]).await.unwrap();
    }

    // Replica 0 on A, replica 1 on B: each its replica's slot, each the other's peer.
    ea.on_record(&assignment(&doc, 0, na, 1)).await.unwrap();
    eb.on_record(&assignment(&doc, 1, nb, 1)).await.unwrap();
    ea.mesh_refresh_all().await.unwrap();
    assert_eq!(
        b.fake.state().network_plans["web.net"].gateway,
        Ipv4Addr::new(10, 20, 0, 17)
    );
    let peers_of_a = a.fake.state().mesh_plans["web.net"].peers.clone();
    assert_eq!(peers_of_a.len(), 1);
    assert_eq!(peers_of_a[0].public_key, b.wg_public("web"));
    assert_eq!(peers_of_a[0].allowed, (Ipv4Addr::new(10, 20, 0, 16), 28));
    let s = a.status(notary, "web").await;
    assert_eq!((s.replica, s.mesh[0].slot), (Some(0), 0));
    assert_eq!(s.mesh[0].peers[0].state, "peer", "{s:?}");

    // The orchestrator moves replica 1 to C at epoch 2. A reads the new placement
    // record: it refreshes at once; B's record is stale now, C has none yet.
    let moved = placement_record(&doc, &[(na, 1), (nc, 2)]);
    notary.put(&moved).await.unwrap();
    ea.on_record(&moved).await.unwrap();
    assert!(a.fake.state().mesh_plans["web.net"].peers.is_empty());
    let s = a.status(notary, "web").await;
    let slot1 = &s.mesh[0].peers[0];
    assert_eq!(
        (slot1.node.clone(), slot1.state.as_str()),
        (Some(nc.to_string()), "no_record")
    );

    // C runs replica 1 at epoch 2, in the same slot (same subnet, same addresses), and
    // takes A as its peer; A's next refresh takes C.
    ec.on_record(&assignment(&doc, 1, nc, 2)).await.unwrap();
    assert_eq!(
        c.fake.state().network_plans["web.net"].gateway,
        Ipv4Addr::new(10, 20, 0, 17)
    );
    assert_eq!(
        c.fake.state().mesh_plans["web.net"].peers[0].public_key,
        a.wg_public("web")
    );
    ea.mesh_refresh_all().await.unwrap();
    let peers_of_a = a.fake.state().mesh_plans["web.net"].peers.clone();
    assert_eq!(peers_of_a.len(), 1);
    assert_eq!(peers_of_a[0].public_key, c.wg_public("web"));
    assert_eq!(peers_of_a[0].allowed, (Ipv4Addr::new(10, 20, 0, 16), 28));
    assert_eq!(
        peers_of_a[0].endpoint,
        Some(SocketAddr::from(([192, 0, 2, 3], 51820)))
    );

    // B learns of the move: its copy, its link, its record and its key go.
    eb.on_record(&moved).await.unwrap();
    assert_eq!(b.status(notary, "web").await.state, State::Moved);
    assert!(b.fake.state().meshes.is_empty());
    assert!(!b.key_file("web").exists());
    assert!(notary
        .get(&NotaryKey::mesh(&nb, "web", "net").unwrap())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_new_endpoint_address_is_published_at_the_next_refresh() {
    let w = World::new();
    let a = Side::new(w.keys.node.clone());
    let nodes = [a.key.public(), node_b().public()];
    let doc = contract(&w.keys, "web", 1, &nodes);
    // No address yet (a lease that comes after zosd started).
    let (tx, rx) = tokio::sync::watch::channel(None);
    let mut ea = a.engine(&w.notary, [192, 0, 2, 1]).with_mesh_endpoint(rx);
    ea.start(vec![]).await.unwrap();
    ea.on_record(&record_for(&w.keys, &nodes[0], &doc))
        .await
        .unwrap();
    let key = NotaryKey::mesh(&nodes[0], "web", "net").unwrap();
    let read = || async {
        let r = w.notary.get(&key).await.unwrap().expect("A's record");
        zos_mesh::verify_record(&r, "web", "net").unwrap()
    };
    assert_eq!(read().await.endpoint, None);
    tx.send(Some(Ipv4Addr::new(198, 51, 100, 4).into()))
        .unwrap();
    ea.mesh_refresh_all().await.unwrap();
    assert_eq!(
        read().await.endpoint,
        Some(SocketAddr::from(([198, 51, 100, 4], 51820)))
    );
}
