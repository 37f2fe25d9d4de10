//! The peer set from real signed records (ed25519 envelopes as the notary stores them,
//! X25519 WireGuard keys): who becomes a peer, and the attacks of issue #16 (a record
//! signed by a key that is not the contract's node, a stale epoch, an overlapping
//! range), each asserting its refusal code and that the peer set does not hold it.

use zos_contract::deployment::Network;
use zos_contract::placement_view::{PlacementView, ReplicaView};
use zos_contract::{PublicKey, SecretKey};
use zos_mesh::{
    layout, peers, sign_record, HeldReplica, Ipv4Net, Local, Members, PeerRecord, PeerSet,
    RefusalCode, SlotState, WgSecretKey, PERSISTENT_KEEPALIVE_S,
};
use zos_notary::Record;

const CONTRACT: &str = "web";

/// A node of the test: its node key and its WireGuard key for the network.
struct Node {
    key: SecretKey,
    wg: WgSecretKey,
    endpoint: Option<std::net::SocketAddr>,
}

impl Node {
    fn new(seed: u8) -> Node {
        Node {
            key: SecretKey::from_seed([seed; 32]),
            wg: WgSecretKey::from_bytes([seed.wrapping_add(100); 32]),
            endpoint: Some(format!("192.0.2.{seed}:51820").parse().unwrap()),
        }
    }

    fn id(&self) -> PublicKey {
        self.key.public()
    }

    fn local(&self) -> Local {
        Local {
            node: self.id(),
            public_key: self.wg.public(),
            endpoint: self.endpoint,
        }
    }

    /// The record this node publishes for `subnet`, holding `placement`.
    fn body(&self, subnet: &str, placement: Option<HeldReplica>) -> PeerRecord {
        PeerRecord {
            contract: CONTRACT.into(),
            network: "net".into(),
            version: 1,
            public_key: self.wg.public(),
            endpoint: self.endpoint,
            subnet: subnet.parse().unwrap(),
            placement,
        }
    }

    fn sign(&self, body: &PeerRecord) -> Record {
        sign_record(body, &self.key, 1_700_000_000).unwrap()
    }

    fn record(&self, subnet: &str, placement: Option<HeldReplica>) -> Record {
        self.sign(&self.body(subnet, placement))
    }
}

fn net() -> Network {
    Network {
        name: "net".into(),
        subnet: "10.20.0.0/16".into(),
        egress_allow: vec![],
    }
}

fn held(replica: u64, epoch: u64) -> Option<HeldReplica> {
    Some(HeldReplica { replica, epoch })
}

fn nets(list: &[&str]) -> Vec<Ipv4Net> {
    list.iter().map(|s| s.parse().unwrap()).collect()
}

/// Every peer's node and allowed IPs: what the WireGuard interface would be given.
fn configured(set: &PeerSet) -> Vec<(PublicKey, Vec<Ipv4Net>)> {
    set.peers
        .iter()
        .map(|p| (p.node, p.allowed_ips.clone()))
        .collect()
}

#[test]
fn node_list_every_other_node_is_a_peer_with_its_own_subnet() {
    let (a, b, c) = (Node::new(1), Node::new(2), Node::new(3));
    let nodes = [a.id(), b.id(), c.id()];
    let records = vec![
        a.record("10.20.0.0/22", None),
        b.record("10.20.4.0/22", None),
        c.record("10.20.8.0/22", None),
    ];
    let set = peers(
        &a.local(),
        CONTRACT,
        &net(),
        &Members::Nodes(&nodes),
        &records,
    )
    .unwrap();
    assert!(set.refused.is_empty(), "{:?}", set.refused);
    assert_eq!(
        configured(&set),
        vec![
            (b.id(), nets(&["10.20.4.0/22"])),
            (c.id(), nets(&["10.20.8.0/22"]))
        ]
    );
    let pb = set.peer(&b.id()).unwrap();
    assert_eq!(pb.public_key, b.wg.public());
    assert_eq!(pb.endpoint, b.endpoint);
    assert_eq!(pb.persistent_keepalive, None);
    assert_eq!(set.routes.local.to_string(), "10.20.0.0/22");
    assert_eq!(set.routes.gateway.to_string(), "10.20.0.1");
    assert_eq!(set.routes.mesh, nets(&["10.20.4.0/22", "10.20.8.0/22"]));
    // The keys agree: what A computes with B's public key, B computes with A's.
    assert_eq!(
        a.wg.diffie_hellman(&pb.public_key),
        b.wg.diffie_hellman(&a.wg.public())
    );

    // Every node computes its own side alone, and the order of the records is no input.
    let mut reversed = records.clone();
    reversed.reverse();
    let again = peers(
        &a.local(),
        CONTRACT,
        &net(),
        &Members::Nodes(&nodes),
        &reversed,
    )
    .unwrap();
    assert_eq!(again, set);
    let from_c = peers(
        &c.local(),
        CONTRACT,
        &net(),
        &Members::Nodes(&nodes),
        &records,
    )
    .unwrap();
    assert_eq!(
        configured(&from_c),
        vec![
            (a.id(), nets(&["10.20.0.0/22"])),
            (b.id(), nets(&["10.20.4.0/22"]))
        ]
    );
}

#[test]
fn a_node_joining_changes_nobody_elses_peer() {
    let (a, b, c) = (Node::new(1), Node::new(2), Node::new(3));
    let two = [a.id(), b.id()];
    let three = [a.id(), b.id(), c.id()];
    let records = vec![
        b.record("10.20.4.0/22", None),
        c.record("10.20.8.0/22", None),
    ];
    let before = peers(
        &a.local(),
        CONTRACT,
        &net(),
        &Members::Nodes(&two),
        &records,
    )
    .unwrap();
    // C's record is there already, but C is not a node of the contract yet.
    assert_eq!(
        before.refusals_of(&c.id()),
        [RefusalCode::NotANodeOfTheContract]
    );
    let after = peers(
        &a.local(),
        CONTRACT,
        &net(),
        &Members::Nodes(&three),
        &records,
    )
    .unwrap();
    assert_eq!(after.peer(&b.id()), before.peer(&b.id()));
    assert_eq!(after.routes.local, before.routes.local);
    assert_eq!(after.peers.len(), 2);
}

/// Attack: a key that is not one of the contract's nodes publishes a record (its own,
/// validly signed) to join the tenant's network; another forges a contract node's
/// record with its own key.
#[test]
fn attack_record_signed_by_a_key_that_is_not_the_contracts_node() {
    let (a, b, x) = (Node::new(1), Node::new(2), Node::new(66));
    let nodes = [a.id(), b.id()];
    // X's own record, claiming a free slot's subnet.
    let own = x.record("10.20.8.0/22", None);
    // X's record under B's name: B's key and endpoint replaced, signed by X.
    let mut forged = b.record("10.20.4.0/22", None);
    forged.body = serde_json::to_value(x.body("10.20.4.0/22", None)).unwrap();
    forged.signature = x.key.sign(&forged.signing_digest().unwrap());
    let records = vec![own, forged, b.record("10.20.4.0/22", None)];
    let set = peers(
        &a.local(),
        CONTRACT,
        &net(),
        &Members::Nodes(&nodes),
        &records,
    )
    .unwrap();
    assert_eq!(
        set.refusals_of(&x.id()),
        [RefusalCode::NotANodeOfTheContract]
    );
    assert_eq!(set.refusals_of(&b.id()), [RefusalCode::BadSignature]);
    assert!(set.peer(&x.id()).is_none());
    assert!(
        set.peers.iter().all(|p| p.public_key != x.wg.public()),
        "X's key is no peer"
    );
    // B's real record still is.
    assert_eq!(configured(&set), vec![(b.id(), nets(&["10.20.4.0/22"]))]);
    assert_eq!(set.peer(&b.id()).unwrap().public_key, b.wg.public());
}

/// A placement contract: replica 0 on A, replica 1 moved from B (epoch 1) to C
/// (epoch 2) in the orchestrator's record.
fn moved_view(a: &Node, c: &Node) -> PlacementView {
    PlacementView {
        contract: CONTRACT.into(),
        replicas: vec![
            ReplicaView {
                replica: 0,
                node: Some(a.id()),
                epoch: 1,
                handover: None,
            },
            ReplicaView {
                replica: 1,
                node: Some(c.id()),
                epoch: 2,
                handover: None,
            },
        ],
    }
}

/// Attack: the node a replica moved away from keeps publishing (or someone replays)
/// its record at the old epoch, to stay in the tenant's network.
#[test]
fn attack_stale_epoch_after_a_move() {
    let (a, b, c) = (Node::new(1), Node::new(2), Node::new(3));
    let view = moved_view(&a, &c);
    let members = Members::Placement {
        replicas: 2,
        contract: CONTRACT,
        view: &view,
    };
    let records = vec![
        b.record("10.20.4.0/22", held(1, 1)),
        c.record("10.20.4.0/22", held(1, 2)),
    ];
    let set = peers(&a.local(), CONTRACT, &net(), &members, &records).unwrap();
    assert_eq!(set.refusals_of(&b.id()), [RefusalCode::StaleEpoch]);
    assert!(set.peer(&b.id()).is_none());
    assert!(set.peers.iter().all(|p| p.public_key != b.wg.public()));
    // The replica's current holder is the peer, with the replica's slot: the move
    // changed the node behind slot 1, not its subnet.
    assert_eq!(configured(&set), vec![(c.id(), nets(&["10.20.4.0/22"]))]);
    assert_eq!(set.peer(&c.id()).unwrap().placement, held(1, 2));
    let states: Vec<_> = set
        .report(&a.id())
        .iter()
        .map(|r| (r.slot, r.node, r.state))
        .collect();
    assert_eq!(
        states,
        [
            (0, Some(a.id()), SlotState::Local),
            (1, Some(c.id()), SlotState::Peer)
        ]
    );

    // B claiming the current epoch it was never given: not the replica's node.
    let claimed = peers(
        &a.local(),
        CONTRACT,
        &net(),
        &members,
        &[b.record("10.20.4.0/22", held(1, 2))],
    )
    .unwrap();
    assert_eq!(
        claimed.refusals_of(&b.id()),
        [RefusalCode::NotANodeOfTheContract]
    );
    assert!(claimed.peers.is_empty());
    // C ahead of the record A read (its assignment newer than A's view): not yet.
    let ahead = peers(
        &a.local(),
        CONTRACT,
        &net(),
        &members,
        &[c.record("10.20.4.0/22", held(1, 3))],
    )
    .unwrap();
    assert_eq!(ahead.refusals_of(&c.id()), [RefusalCode::EpochNotPlaced]);
    assert!(ahead.peers.is_empty());
    // A replica the placement does not have, and a record without a replica.
    let beyond = peers(
        &a.local(),
        CONTRACT,
        &net(),
        &members,
        &[c.record("10.20.8.0/22", held(2, 2))],
    )
    .unwrap();
    assert_eq!(
        beyond.refusals_of(&c.id()),
        [RefusalCode::NotANodeOfTheContract]
    );
    let none = peers(
        &a.local(),
        CONTRACT,
        &net(),
        &members,
        &[c.record("10.20.4.0/22", None)],
    )
    .unwrap();
    assert_eq!(none.refusals_of(&c.id()), [RefusalCode::Malformed]);
    assert!(beyond.peers.is_empty() && none.peers.is_empty());
}

/// Attack: a node of the contract claims addresses that are not its own (another
/// node's subnet, or the whole range), to receive traffic meant for others.
#[test]
fn attack_overlapping_range() {
    let (a, b, c) = (Node::new(1), Node::new(2), Node::new(3));
    let nodes = [a.id(), b.id(), c.id()];
    for claim in ["10.20.0.0/22", "10.20.0.0/16", "10.20.8.0/23"] {
        let records = vec![b.record(claim, None), c.record("10.20.8.0/22", None)];
        let set = peers(
            &a.local(),
            CONTRACT,
            &net(),
            &Members::Nodes(&nodes),
            &records,
        )
        .unwrap();
        assert_eq!(
            set.refusals_of(&b.id()),
            [RefusalCode::OverlappingRange],
            "{claim}"
        );
        assert!(set.peer(&b.id()).is_none(), "{claim}");
        // Nobody is given addresses outside its own slot.
        assert_eq!(
            configured(&set),
            vec![(c.id(), nets(&["10.20.8.0/22"]))],
            "{claim}"
        );
    }
    // A subnet outside the range, overlapping no slot: refused too, as a mismatch.
    let set = peers(
        &a.local(),
        CONTRACT,
        &net(),
        &Members::Nodes(&nodes),
        &[b.record("10.99.0.0/22", None)],
    )
    .unwrap();
    assert_eq!(set.refusals_of(&b.id()), [RefusalCode::SubnetMismatch]);
    assert!(set.peers.is_empty());
    // Two networks of one contract over the same addresses: the layout is refused.
    let err = zos_mesh::check_ranges(&[
        net(),
        Network {
            name: "db".into(),
            subnet: "10.20.128.0/24".into(),
            egress_allow: vec![],
        },
    ])
    .unwrap_err();
    assert_eq!(err.code(), "overlapping_range");
}

#[test]
fn keys_endpoints_and_duplicates() {
    let (a, b, c) = (Node::new(1), Node::new(2), Node::new(3));
    let nodes = [a.id(), b.id(), c.id()];
    let members = Members::Nodes(&nodes);

    // C publishes B's WireGuard key: both refused, whatever the order.
    let mut copy = c.body("10.20.8.0/22", None);
    copy.public_key = b.wg.public();
    for records in [
        vec![b.record("10.20.4.0/22", None), c.sign(&copy)],
        vec![c.sign(&copy), b.record("10.20.4.0/22", None)],
    ] {
        let set = peers(&a.local(), CONTRACT, &net(), &members, &records).unwrap();
        assert_eq!(set.refusals_of(&b.id()), [RefusalCode::DuplicatePublicKey]);
        assert_eq!(set.refusals_of(&c.id()), [RefusalCode::DuplicatePublicKey]);
        assert!(set.peers.is_empty());
    }
    // This node's own WireGuard key in another's record.
    let mut mine = b.body("10.20.4.0/22", None);
    mine.public_key = a.wg.public();
    let set = peers(&a.local(), CONTRACT, &net(), &members, &[b.sign(&mine)]).unwrap();
    assert_eq!(set.refusals_of(&b.id()), [RefusalCode::DuplicatePublicKey]);
    // Two records of one author.
    let mut later = b.body("10.20.4.0/22", None);
    later.version = 2;
    let set = peers(
        &a.local(),
        CONTRACT,
        &net(),
        &members,
        &[b.record("10.20.4.0/22", None), b.sign(&later)],
    )
    .unwrap();
    assert_eq!(set.refusals_of(&b.id()), [RefusalCode::DuplicateRecord]);
    assert!(set.peers.is_empty());
    // A replica claimed on a node-list contract.
    let set = peers(
        &a.local(),
        CONTRACT,
        &net(),
        &members,
        &[b.record("10.20.4.0/22", held(1, 1))],
    )
    .unwrap();
    assert_eq!(set.refusals_of(&b.id()), [RefusalCode::Malformed]);

    // Behind NAT: A has no endpoint. B (reachable) is a peer with keepalive; C, also
    // without an endpoint, cannot be reached by either side.
    let mut natted = Node::new(1);
    natted.endpoint = None;
    let mut c_natted = Node::new(3);
    c_natted.endpoint = None;
    let records = vec![
        b.record("10.20.4.0/22", None),
        c_natted.record("10.20.8.0/22", None),
    ];
    let set = peers(&natted.local(), CONTRACT, &net(), &members, &records).unwrap();
    assert_eq!(
        set.peer(&b.id()).unwrap().persistent_keepalive,
        Some(PERSISTENT_KEEPALIVE_S)
    );
    assert_eq!(
        set.refusals_of(&c.id()),
        [RefusalCode::NoEndpointEitherSide]
    );
    // From a reachable node, the natted one is a peer without endpoint: it calls in.
    let set = peers(&a.local(), CONTRACT, &net(), &members, &records).unwrap();
    assert_eq!(set.peer(&c.id()).unwrap().endpoint, None);
    assert_eq!(set.peer(&c.id()).unwrap().persistent_keepalive, None);
}

#[test]
fn whole_set_refusals() {
    let (a, b, x) = (Node::new(1), Node::new(2), Node::new(66));
    let nodes = [a.id(), b.id()];
    // A node that does not run the contract computes no peers.
    let err = peers(&x.local(), CONTRACT, &net(), &Members::Nodes(&nodes), &[]).unwrap_err();
    assert_eq!(err.code(), "not_a_node_of_the_contract");
    // A range too small for the nodes: refused for everyone, the same way.
    let tiny = Network {
        name: "net".into(),
        subnet: "10.20.0.0/28".into(),
        egress_allow: vec![],
    };
    let err = peers(&a.local(), CONTRACT, &tiny, &Members::Nodes(&nodes), &[]).unwrap_err();
    assert_eq!(err.code(), "range_too_small");
    assert_eq!(
        layout(&tiny, &Members::Nodes(&nodes)).unwrap_err(),
        peers(&b.local(), CONTRACT, &tiny, &Members::Nodes(&nodes), &[]).unwrap_err()
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn range(len: u8) -> Network {
        Network {
            name: "net".into(),
            subnet: format!("10.0.0.0/{len}"),
            egress_allow: vec![],
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Appending nodes to a list, or removing the last ones, changes no other
        /// node's subnet; and the subnets of a placement are its replicas', wherever
        /// they run.
        #[test]
        fn joins_and_moves_change_only_their_own_slot(
            len in 16u8..=24,
            seeds in proptest::collection::btree_set(1u8..=250, 1..12),
            extra in 0usize..4,
            placed in proptest::collection::vec((proptest::option::of(1u8..=250), 1u64..5), 1..12),
        ) {
            let keys: Vec<PublicKey> = seeds.iter().map(|s| PublicKey([*s; 32])).collect();
            let n = keys.len().saturating_sub(extra).max(1);
            let small = layout(&range(len), &Members::Nodes(&keys[..n])).unwrap();
            let big = layout(&range(len), &Members::Nodes(&keys)).unwrap();
            prop_assert_eq!(&big.slots[..n], &small.slots[..]);

            let replicas = placed.len() as u64;
            let view = PlacementView {
                contract: CONTRACT.into(),
                replicas: placed.iter().enumerate().map(|(k, (node, epoch))| ReplicaView {
                    replica: k as u64,
                    node: node.map(|s| PublicKey([s; 32])),
                    epoch: *epoch,
                    handover: None,
                }).collect(),
            };
            let empty = PlacementView { contract: CONTRACT.into(), replicas: vec![] };
            let with = layout(&range(len), &Members::Placement { replicas, contract: CONTRACT, view: &view }).unwrap();
            let without = layout(&range(len), &Members::Placement { replicas, contract: CONTRACT, view: &empty }).unwrap();
            for (a, b) in with.slots.iter().zip(&without.slots) {
                prop_assert_eq!(a.subnet, b.subnet);
            }
        }

        /// When every node of a list publishes its honest record, each node's peers are
        /// all the others, each with exactly the subnet that node puts on its bridge.
        #[test]
        fn honest_nodes_see_each_other_symmetrically(
            len in 16u8..=24,
            seeds in proptest::collection::btree_set(1u8..=120, 2..8),
        ) {
            let nodes: Vec<Node> = seeds.iter().map(|s| Node::new(*s)).collect();
            let keys: Vec<PublicKey> = nodes.iter().map(Node::id).collect();
            let members = Members::Nodes(&keys);
            let l = layout(&range(len), &members).unwrap();
            let records: Vec<Record> = nodes
                .iter()
                .map(|n| {
                    n.record(&l.slot_of(&n.id()).unwrap().subnet.to_string(), None)
                })
                .collect();
            let sets: Vec<PeerSet> = nodes
                .iter()
                .map(|n| peers(&n.local(), CONTRACT, &range(len), &members, &records).unwrap())
                .collect();
            for (i, set) in sets.iter().enumerate() {
                prop_assert!(set.refused.is_empty(), "{:?}", set.refused);
                prop_assert_eq!(set.peers.len(), nodes.len() - 1);
                for p in &set.peers {
                    let j = keys.iter().position(|k| *k == p.node).unwrap();
                    prop_assert_ne!(i, j);
                    prop_assert_eq!(&p.allowed_ips, &vec![sets[j].routes.local]);
                    prop_assert_eq!(p.public_key, nodes[j].wg.public());
                }
            }
        }
    }
}
