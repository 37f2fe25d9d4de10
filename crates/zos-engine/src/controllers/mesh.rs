//! A tenant network across the nodes of a contract (docs/network.md, "Mesh"; the
//! engine's part in docs/engine.md, "Mesh"): the pure decisions of one refresh.
//!
//! - Inputs: this node's [`Span`](crate::plan::Span) and members (the contract's
//!   `nodes`, or the orchestrator's placement record), the peer records read
//!   (`nodes/<node>/mesh/<contract>/<network>`), the WireGuard link read back
//!   ([`MeshState`]), the wall clock.
//! - Decisions: which placement view the layout uses ([`view_with_me`]), the peers to
//!   configure ([`peer_plans`]), this node's record ([`own_record`]; published when it
//!   differs from the last one published), the status's mesh section ([`report`]) and
//!   whether it changed in more than its counters ([`settled`]).
//!
//! The engine carries them out every [`MESH_REFRESH`] while the contract runs, and at
//! once when the contract, its placement record or an assignment changes
//! (`engine/mesh.rs`).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zos_contract::placement_view::{PlacementView, ReplicaView};
use zos_contract::PublicKey;
use zos_mesh::{
    HeldReplica, Ipv4Net, Layout, PeerRecord, PeerSet, RefusalCode, SlotState, WgPublicKey,
    PERSISTENT_KEEPALIVE_S,
};

use crate::journal::Held;
use crate::provision::{MeshPeerPlan, MeshState};
use crate::status::{MeshPeerReport, MeshReport};

/// How often a running mesh contract's peers are refreshed: every member's record read
/// again (one notary get per member per network), the peers applied when they changed,
/// the link's counters read. So peers follow a change (a move, a join, a leave, a new
/// key) within `MESH_REFRESH` plus one notary read; a change of the contract, its
/// placement record or an assignment is followed at once.
pub const MESH_REFRESH: Duration = Duration::from_secs(2);

/// How long a configured peer may go without a handshake before its status line says
/// what to check (WireGuard retries a handshake every 5 s).
pub const HANDSHAKE_GRACE: Duration = Duration::from_secs(15);

/// The placement view the layout uses on this node: the orchestrator's record when the
/// engine read one, with this node's own replica at the epoch it holds when the record
/// shows it at no higher epoch (a record written before this node's assignment; a
/// higher epoch elsewhere is a move, which the grid part carries out). Without a
/// record: this node's replica alone (the others are not placed, as far as it knows).
pub fn view_with_me(
    contract: &str,
    view: Option<PlacementView>,
    held: &Held,
    me: &PublicKey,
) -> PlacementView {
    let mut view = view.unwrap_or_else(|| PlacementView {
        contract: contract.to_string(),
        replicas: Vec::new(),
    });
    let mine = ReplicaView {
        replica: held.replica,
        node: Some(*me),
        epoch: held.epoch,
        handover: None,
    };
    match view.replicas.iter_mut().find(|r| r.replica == held.replica) {
        Some(r) if r.epoch <= held.epoch => *r = mine,
        Some(_) => {}
        None => view.replicas.push(mine),
    }
    view
}

/// The peers of `set` as the provisioner configures them.
pub fn peer_plans(set: &PeerSet) -> Vec<MeshPeerPlan> {
    set.peers
        .iter()
        .map(|p| MeshPeerPlan {
            public_key: p.public_key.0,
            endpoint: p.endpoint,
            allowed: p
                .allowed_ips
                .first()
                .map_or((std::net::Ipv4Addr::UNSPECIFIED, 32), |n| {
                    (n.addr(), n.prefix_len())
                }),
            // Either side without an endpoint keeps the NAT mapping open.
            keepalive_s: (p.persistent_keepalive.is_some() || p.endpoint.is_none())
                .then_some(PERSISTENT_KEEPALIVE_S),
        })
        .collect()
}

/// This node's peer record for `network` of contract `contract` at `version`: what it
/// publishes (again whenever it differs from the last one published: a new endpoint,
/// port, key, version, replica or epoch).
pub fn own_record(
    contract: &str,
    network: &str,
    version: u64,
    public_key: WgPublicKey,
    endpoint: Option<std::net::SocketAddr>,
    subnet: Ipv4Net,
    held: Option<&Held>,
) -> PeerRecord {
    PeerRecord {
        contract: contract.to_string(),
        network: network.to_string(),
        version,
        public_key,
        endpoint,
        subnet,
        placement: held.map(|h| HeldReplica {
            replica: h.replica,
            epoch: h.epoch,
        }),
    }
}

/// Whether the record to publish differs from the last one published.
pub fn must_publish(published: Option<&PeerRecord>, wanted: &PeerRecord) -> bool {
    published != Some(wanted)
}

/// What one refusal code means, for a status line.
pub fn refusal_meaning(code: RefusalCode) -> &'static str {
    match code {
        RefusalCode::NotANodeOfTheContract => {
            "its author does not run the contract (not in its nodes, or not the replica's node at its current epoch)"
        }
        RefusalCode::StaleEpoch => {
            "it claims a replica at an epoch below the current one (the node it moved from, or a replay)"
        }
        RefusalCode::EpochNotPlaced => {
            "it claims an epoch the placement record does not show yet (a move under way)"
        }
        RefusalCode::BadSignature => "its signature does not verify (forged or altered)",
        RefusalCode::WrongKey => "it is signed for another key (another node's, contract's or network's record)",
        RefusalCode::WrongContract => "its body names another contract or network",
        RefusalCode::Malformed => "it is not a peer record of this contract's shape",
        RefusalCode::OverlappingRange => "it claims a subnet overlapping another node's",
        RefusalCode::SubnetMismatch => "it claims a subnet other than its slot's",
        RefusalCode::BadPublicKey => "its WireGuard key is all zeros",
        RefusalCode::BadEndpoint => "its endpoint is no address a peer can send to",
        RefusalCode::DuplicatePublicKey => "its WireGuard key is another node's too, or this node's",
        RefusalCode::DuplicateRecord => "two records of that node were read",
        RefusalCode::NoEndpointEitherSide => {
            "neither side has an endpoint: both behind NAT, neither can start the handshake"
        }
    }
}

/// Unix seconds of `t` (0 before the epoch).
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// What the report of one network is built from.
pub struct ReportInput<'a> {
    /// The network's name.
    pub network: &'a str,
    /// Its layout across the contract's nodes.
    pub layout: &'a Layout,
    /// The peer set this refresh computed.
    pub set: &'a PeerSet,
    /// This node.
    pub me: &'a PublicKey,
    /// This node's WireGuard public key.
    pub public_key: WgPublicKey,
    /// The link read back (`None`: not made yet).
    pub state: Option<&'a MeshState>,
    /// When each configured peer key was first configured (unix seconds).
    pub since: &'a BTreeMap<[u8; 32], u64>,
    /// Unix seconds now.
    pub now: u64,
}

/// The status's mesh section for one network: this node's slot, subnet, port and key,
/// and every other slot with its state and, when it does not work, why.
pub fn report(input: &ReportInput<'_>) -> MeshReport {
    let mine = input.layout.slot_of(input.me);
    let port = input.state.map(|s| s.listen_port);
    let peers = input
        .set
        .report(input.me)
        .into_iter()
        .filter(|s| s.state != SlotState::Local)
        .map(|s| {
            let node = s.node.map(|n| n.to_string());
            let who = node.clone().unwrap_or_else(|| "the node".into());
            let mut line = MeshPeerReport {
                slot: s.slot,
                subnet: s.subnet.to_string(),
                node,
                state: String::new(),
                refusal: None,
                endpoint: None,
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
                cause: None,
            };
            match s.state {
                SlotState::Local => {}
                SlotState::NotPlaced => line.state = "not_placed".into(),
                SlotState::NoRecord => {
                    line.state = "no_record".into();
                    line.cause = Some(format!(
                        "{who} published no record: it does not run the contract yet, refused it (no WireGuard?), or cannot reach the notary"
                    ));
                }
                SlotState::Refused(code) => {
                    line.state = "refused".into();
                    line.refusal = Some(code.as_str().into());
                    line.cause = Some(format!(
                        "the record of {who} was refused ({code}): {}",
                        refusal_meaning(code)
                    ));
                }
                SlotState::Peer => {
                    line.state = "peer".into();
                    let peer = s.node.and_then(|n| input.set.peer(&n));
                    let key = peer.map(|p| p.public_key.0);
                    let kernel = key.and_then(|k| {
                        input
                            .state
                            .and_then(|st| st.peers.iter().find(|p| p.public_key == k))
                    });
                    let endpoint = kernel
                        .and_then(|k| k.endpoint)
                        .or(peer.and_then(|p| p.endpoint));
                    line.endpoint = endpoint.map(|e| e.to_string());
                    line.last_handshake = kernel.and_then(|k| k.last_handshake).map(unix);
                    line.rx_bytes = kernel.map_or(0, |k| k.rx_bytes);
                    line.tx_bytes = kernel.map_or(0, |k| k.tx_bytes);
                    let waited = key
                        .and_then(|k| input.since.get(&k))
                        .is_some_and(|t| input.now.saturating_sub(*t) >= HANDSHAKE_GRACE.as_secs());
                    if line.last_handshake.is_none() && waited {
                        let to = line
                            .endpoint
                            .clone()
                            .unwrap_or_else(|| format!("{who} (no endpoint: it must come to us)"));
                        // The port to reach: the peer's, or ours when it comes to us.
                        let port = endpoint
                            .map(|e| e.port())
                            .or(port)
                            .map_or("its".into(), |p| p.to_string());
                        line.cause = Some(format!(
                            "no handshake with {to} yet: is UDP {port} reachable from here? both behind NAT?"
                        ));
                    }
                }
            }
            line
        })
        .collect();
    MeshReport {
        network: input.network.to_string(),
        range: input.layout.range.to_string(),
        slot: mine.map_or(0, |s| s.index),
        subnet: mine.map_or_else(String::new, |s| s.subnet.to_string()),
        listen_port: port,
        public_key: Some(input.public_key.to_base64()),
        peers,
    }
}

/// `report` without what changes on its own while the link works (byte counters, the
/// time of the last handshake, only whether there was one): a status is published
/// again when this changes, not for every counter.
pub fn settled(report: &MeshReport) -> MeshReport {
    let mut r = report.clone();
    for p in &mut r.peers {
        p.rx_bytes = 0;
        p.tx_bytes = 0;
        p.last_handshake = p.last_handshake.map(|_| 0);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use zos_contract::deployment::Network;
    use zos_contract::{Failover, FailoverMode, Placement, SecretKey};
    use zos_mesh::{layout, peers, sign_record, Local, Members, WgSecretKey};

    use crate::provision::MeshPeerState;

    fn key(seed: u8) -> SecretKey {
        SecretKey::from_seed([seed; 32])
    }

    fn wg(seed: u8) -> WgSecretKey {
        WgSecretKey::from_bytes([seed; 32])
    }

    fn net() -> Network {
        serde_json::from_value(serde_json::json!({"name": "net", "subnet": "10.20.0.0/16"}))
            .unwrap()
    }

    fn held(replica: u64, epoch: u64) -> Held {
        Held {
            replica,
            epoch,
            placement: Placement {
                farm: "f".into(),
                replicas: 3,
                orchestrator: key(9).public(),
                failover: Failover {
                    mode: FailoverMode::Move,
                    after_s: 10,
                },
                constraints: None,
            },
        }
    }

    fn endpoint(port: u16) -> Option<SocketAddr> {
        Some(SocketAddr::from(([192, 0, 2, 1], port)))
    }

    #[test]
    fn a_nodes_slot_is_its_position_in_nodes_or_its_replica() {
        let (a, b, c) = (key(1).public(), key(2).public(), key(3).public());
        let l = layout(&net(), &Members::Nodes(&[a, b, c])).unwrap();
        assert_eq!(l.slot_of(&b).unwrap().index, 1);
        assert_eq!(l.slot_of(&b).unwrap().subnet.to_string(), "10.20.4.0/22");
        // Placement: no record read yet, this node still has its own replica's slot.
        let view = view_with_me("web", None, &held(2, 4), &a);
        let members = Members::Placement {
            replicas: 3,
            contract: "web",
            view: &view,
        };
        let l = layout(&net(), &members).unwrap();
        assert_eq!(l.slot_of(&a).unwrap().index, 2);
        assert_eq!(l.slot_of(&a).unwrap().subnet.to_string(), "10.20.8.0/22");
        assert_eq!(l.slots[0].node, None);
        // A record written before this node's assignment names the old node at a
        // lower epoch: this node's word for its own replica stands; a higher epoch
        // elsewhere (a move) is left as the record says.
        let old = PlacementView {
            contract: "web".into(),
            replicas: vec![ReplicaView {
                replica: 2,
                node: Some(b),
                epoch: 3,
                handover: None,
            }],
        };
        let v = view_with_me("web", Some(old.clone()), &held(2, 4), &a);
        assert_eq!(v.replicas[0].node, Some(a));
        let mut moved = old;
        moved.replicas[0].epoch = 5;
        let v = view_with_me("web", Some(moved), &held(2, 4), &a);
        assert_eq!(v.replicas[0].node, Some(b));
        // And the plan's slot is the same as the layout's.
        let span = crate::plan::Span { slot: 2, slots: 3 };
        assert_eq!(
            crate::plan::slot_subnet(&net(), span).unwrap().to_string(),
            "10.20.8.0/22"
        );
    }

    #[test]
    fn the_record_is_published_again_only_when_its_content_changes() {
        let subnet: Ipv4Net = "10.20.4.0/22".parse().unwrap();
        let r = |version, port, epoch| {
            own_record(
                "web",
                "net",
                version,
                wg(1).public(),
                endpoint(port),
                subnet,
                Some(&held(1, epoch)),
            )
        };
        let first = r(1, 51820, 1);
        assert!(must_publish(None, &first));
        assert!(!must_publish(Some(&first), &r(1, 51820, 1)));
        assert!(must_publish(Some(&first), &r(2, 51820, 1)), "version");
        assert!(must_publish(Some(&first), &r(1, 51821, 1)), "port");
        assert!(must_publish(Some(&first), &r(1, 51820, 2)), "epoch");
        let mut other_key = first.clone();
        other_key.public_key = wg(2).public();
        assert!(must_publish(Some(&first), &other_key), "key");
    }

    /// Node a (this one) and b, c of a node list: b published a record, c did not; a
    /// record of d (no member) was refused.
    fn three() -> (Layout, PeerSet, PublicKey, PublicKey, PublicKey) {
        let (a, b, c) = (key(1), key(2), key(3));
        let nodes = [a.public(), b.public(), c.public()];
        let members = Members::Nodes(&nodes);
        let l = layout(&net(), &members).unwrap();
        let rec = |who: &SecretKey, seed: u8, slot: usize| {
            let body = own_record(
                "web",
                "net",
                1,
                wg(seed).public(),
                endpoint(51820),
                l.slots[slot].subnet,
                None,
            );
            sign_record(&body, who, 1).unwrap()
        };
        let me = Local {
            node: a.public(),
            public_key: wg(1).public(),
            endpoint: endpoint(51820),
        };
        let records = [rec(&b, 2, 1), rec(&key(4), 4, 2)];
        let set = peers(&me, "web", &net(), &members, &records).unwrap();
        (l, set, a.public(), b.public(), c.public())
    }

    #[test]
    fn each_other_slot_says_what_it_is_and_why_it_does_not_work() {
        let (l, set, a, b, c) = three();
        assert_eq!(peer_plans(&set).len(), 1);
        assert_eq!(peer_plans(&set)[0].allowed.1, 22);
        assert_eq!(peer_plans(&set)[0].keepalive_s, None);
        let since = BTreeMap::from([(wg(2).public().0, 1000)]);
        let state = MeshState {
            listen_port: 51820,
            public_key: wg(1).public().0,
            peers: vec![MeshPeerState {
                public_key: wg(2).public().0,
                // As the kernel learnt it (the peer's packets came from another port).
                endpoint: endpoint(51821),
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 92,
            }],
        };
        let input = |now, state: &MeshState| {
            report(&ReportInput {
                network: "net",
                layout: &l,
                set: &set,
                me: &a,
                public_key: wg(1).public(),
                state: Some(state),
                since: &since,
                now,
            })
        };
        let r = input(1005, &state);
        assert_eq!((r.slot, r.subnet.as_str()), (0, "10.20.0.0/22"));
        assert_eq!(r.listen_port, Some(51820));
        assert_eq!(r.public_key, Some(wg(1).public().to_base64()));
        assert_eq!(r.peers.len(), 2);
        let pb = &r.peers[0];
        assert_eq!(pb.node, Some(b.to_string()));
        assert_eq!((pb.state.as_str(), pb.tx_bytes), ("peer", 92));
        assert_eq!(pb.endpoint.as_deref(), Some("192.0.2.1:51821"));
        assert_eq!(pb.cause, None, "within the handshake grace");
        let pc = &r.peers[1];
        assert_eq!((pc.slot, pc.state.as_str()), (2, "no_record"));
        assert_eq!(
            pc.cause.as_deref(),
            Some(format!("{c} published no record: it does not run the contract yet, refused it (no WireGuard?), or cannot reach the notary").as_str())
        );
        // No handshake after the grace: what to check.
        let late = input(1000 + HANDSHAKE_GRACE.as_secs(), &state);
        assert_eq!(
            late.peers[0].cause.as_deref(),
            Some("no handshake with 192.0.2.1:51821 yet: is UDP 51821 reachable from here? both behind NAT?")
        );
        assert_ne!(settled(&late), settled(&r), "a cause is a change");
        // A handshake: no cause; counters alone are no change, the first handshake is.
        let mut shaken = state.clone();
        shaken.peers[0].last_handshake = Some(UNIX_EPOCH + Duration::from_secs(1010));
        shaken.peers[0].rx_bytes = 148;
        let ok = input(1020, &shaken);
        assert_eq!(ok.peers[0].last_handshake, Some(1010));
        assert_eq!(ok.peers[0].cause, None);
        assert_ne!(settled(&ok), settled(&r));
        let mut busier = shaken.clone();
        busier.peers[0].last_handshake = Some(UNIX_EPOCH + Duration::from_secs(1130));
        busier.peers[0].rx_bytes = 1 << 20;
        busier.peers[0].tx_bytes = 1 << 21;
        let later = input(1140, &busier);
        assert_ne!(later, ok);
        assert_eq!(settled(&later), settled(&ok));
    }

    #[test]
    fn a_refused_record_names_its_code_and_its_meaning() {
        let (l, _, a, b, _) = three();
        let nodes: Vec<PublicKey> = l.slots.iter().filter_map(|s| s.node).collect();
        // b's record forged by another key: bad signature.
        let mut forged = sign_record(
            &own_record(
                "web",
                "net",
                1,
                wg(2).public(),
                endpoint(1),
                l.slots[1].subnet,
                None,
            ),
            &key(2),
            1,
        )
        .unwrap();
        forged.body["version"] = serde_json::json!(2);
        let me = Local {
            node: a,
            public_key: wg(1).public(),
            endpoint: endpoint(51820),
        };
        let set = peers(&me, "web", &net(), &Members::Nodes(&nodes), &[forged]).unwrap();
        let r = report(&ReportInput {
            network: "net",
            layout: &l,
            set: &set,
            me: &a,
            public_key: wg(1).public(),
            state: None,
            since: &BTreeMap::new(),
            now: 0,
        });
        let pb = &r.peers[0];
        assert_eq!(pb.node, Some(b.to_string()));
        assert_eq!(
            (pb.state.as_str(), pb.refusal.as_deref()),
            ("refused", Some("bad_signature"))
        );
        assert_eq!(
            pb.cause.as_deref(),
            Some(format!("the record of {b} was refused (bad_signature): its signature does not verify (forged or altered)").as_str())
        );
        assert_eq!(r.listen_port, None);
        assert!(peer_plans(&set).is_empty());
    }

    #[test]
    fn a_node_behind_nat_asks_every_peer_for_a_keepalive() {
        let (a, b) = (key(1), key(2));
        let nodes = [a.public(), b.public()];
        let members = Members::Nodes(&nodes);
        let l = layout(&net(), &members).unwrap();
        let rec = sign_record(
            &own_record(
                "web",
                "net",
                1,
                wg(2).public(),
                endpoint(51820),
                l.slots[1].subnet,
                None,
            ),
            &b,
            1,
        )
        .unwrap();
        let me = Local {
            node: a.public(),
            public_key: wg(1).public(),
            endpoint: None,
        };
        let set = peers(&me, "web", &net(), &members, &[rec]).unwrap();
        assert_eq!(
            peer_plans(&set)[0].keepalive_s,
            Some(PERSISTENT_KEEPALIVE_S)
        );
    }
}
