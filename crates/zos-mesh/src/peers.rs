//! The peer set: which of the records a node read become WireGuard peers.
//!
//! A record becomes a peer only when
//!
//! 1. it verifies as a peer record of this contract and network ([`verify_record`]:
//!    signed by its author, for the author's own mesh key, well-formed);
//! 2. its author runs the contract: one of its `nodes` (node list), or the node the
//!    orchestrator's placement record names for the replica the record claims, **at
//!    that replica's current epoch** (placement);
//! 3. the subnet it claims is the one the layout gives its slot (a node cannot take
//!    another's addresses: the peer's allowed IPs are computed here, never read);
//! 4. its WireGuard key is its own (no other node's, not this node's), and one side
//!    of the pair has an endpoint.
//!
//! Everything else is a [`Refused`] with a stable code, logged, and never a peer.
//! The answer depends on the records and the view only, not on their order.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use zos_contract::deployment::Network;
use zos_contract::PublicKey;
use zos_notary::Record;

use crate::addr::{layout, AddressError, Ipv4Net, Layout, Members, Routes};
use crate::key::WgPublicKey;
use crate::record::{verify_record, HeldReplica, PeerRecord, Refusal, RefusalCode};

/// The keepalive a node behind NAT (no endpoint of its own) asks of every peer, in
/// seconds: it keeps the NAT's mapping open, so the reachable side can answer.
pub const PERSISTENT_KEEPALIVE_S: u16 = 25;

/// This node, as it computes its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Local {
    /// Its node key.
    pub node: PublicKey,
    /// Its WireGuard public key for this network.
    pub public_key: WgPublicKey,
    /// Its endpoint, if it can be reached.
    pub endpoint: Option<SocketAddr>,
}

/// A WireGuard peer to configure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's node key.
    pub node: PublicKey,
    /// Its slot (replica number or position in `nodes`).
    pub slot: u64,
    /// Its WireGuard public key.
    pub public_key: WgPublicKey,
    /// Where to send to it; `None`: it reaches us.
    pub endpoint: Option<SocketAddr>,
    /// The addresses it may send from and is routed to: its slot's subnet.
    pub allowed_ips: Vec<Ipv4Net>,
    /// Set when this node has no endpoint (behind NAT).
    pub persistent_keepalive: Option<u16>,
    /// The contract version its record names.
    pub version: u64,
    /// The replica and epoch it holds (placement).
    pub placement: Option<HeldReplica>,
}

/// A record that is not a peer, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The record's author (as it claims: a record with a bad signature names anyone).
    pub node: PublicKey,
    /// Why.
    pub code: RefusalCode,
    /// For people.
    pub detail: String,
}

/// The peers of one network on one node, and everything refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSet {
    /// The network's layout across the contract's nodes.
    pub layout: Layout,
    /// This node's bridge subnet, gateway and mesh routes.
    pub routes: Routes,
    /// The peers, by slot.
    pub peers: Vec<Peer>,
    /// The records refused, by author then code.
    pub refused: Vec<Refused>,
}

/// What one slot of the network is, seen from this node: the status's per-node line, so
/// a network that does not come up says why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// This node.
    Local,
    /// A replica the orchestrator has not placed.
    NotPlaced,
    /// A configured peer.
    Peer,
    /// The node there has published no record this node read: it does not run the
    /// contract (yet), refused it (a kernel without WireGuard), or cannot reach the
    /// notary.
    NoRecord,
    /// The node's record was refused, for this reason.
    Refused(RefusalCode),
}

/// One slot of [`PeerSet::report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotReport {
    /// The slot number.
    pub slot: u64,
    /// The node there, if placed.
    pub node: Option<PublicKey>,
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// What it is from here.
    pub state: SlotState,
}

impl PeerSet {
    /// Every slot of the network, and what it is from here (records refused from keys
    /// outside the contract are in [`PeerSet::refused`] only).
    pub fn report(&self, me: &PublicKey) -> Vec<SlotReport> {
        self.layout
            .slots
            .iter()
            .map(|s| {
                let state = match s.node {
                    None => SlotState::NotPlaced,
                    Some(n) if n == *me => SlotState::Local,
                    Some(n) if self.peer(&n).is_some() => SlotState::Peer,
                    Some(n) => match self.refusals_of(&n).first() {
                        Some(code) => SlotState::Refused(*code),
                        None => SlotState::NoRecord,
                    },
                };
                SlotReport {
                    slot: s.index,
                    node: s.node,
                    subnet: s.subnet,
                    state,
                }
            })
            .collect()
    }

    /// The peer of `node`, if accepted.
    pub fn peer(&self, node: &PublicKey) -> Option<&Peer> {
        self.peers.iter().find(|p| p.node == *node)
    }

    /// The refusal codes of `node`'s records.
    pub fn refusals_of(&self, node: &PublicKey) -> Vec<RefusalCode> {
        self.refused
            .iter()
            .filter(|r| r.node == *node)
            .map(|r| r.code)
            .collect()
    }
}

/// The peer set of `network` of contract `contract` on node `me`, from the records it
/// read (`nodes/*/mesh/<contract>/<network>`). Fails as a whole only when the network
/// cannot be laid out or `me` does not run the contract; a bad record is refused alone.
pub fn peers(
    me: &Local,
    contract: &str,
    network: &Network,
    members: &Members<'_>,
    records: &[Record],
) -> Result<PeerSet, AddressError> {
    let layout = layout(network, members)?;
    let routes = layout.routes(&me.node)?;
    let mut refused = Vec::new();
    let mut candidates: BTreeMap<PublicKey, Vec<Peer>> = BTreeMap::new();
    for record in records {
        if record.author == me.node {
            continue;
        }
        let refuse = |r: Refusal| Refused {
            node: record.author,
            code: r.code,
            detail: r.detail,
        };
        match candidate(me, contract, network, members, &layout, record) {
            Ok(peer) => candidates.entry(record.author).or_default().push(peer),
            Err(r) => refused.push(refuse(r)),
        }
    }
    // Duplicates: two records of one author, or one WireGuard key on two nodes. Both
    // are refused, whatever the order they came in.
    let mut by_key: BTreeMap<WgPublicKey, usize> = BTreeMap::new();
    for list in candidates.values() {
        for p in list {
            *by_key.entry(p.public_key).or_default() += 1;
        }
    }
    let mut peers = Vec::new();
    for (node, list) in candidates {
        if list.len() > 1 {
            refused.push(Refused {
                node,
                code: RefusalCode::DuplicateRecord,
                detail: format!("{} records", list.len()),
            });
            continue;
        }
        let p = list.into_iter().next().expect("one candidate");
        if by_key[&p.public_key] > 1 {
            refused.push(Refused {
                node,
                code: RefusalCode::DuplicatePublicKey,
                detail: format!("WireGuard key {} is another node's too", p.public_key),
            });
            continue;
        }
        peers.push(p);
    }
    peers.sort_by_key(|p| p.slot);
    refused.sort_by(|a, b| (a.node, a.code, &a.detail).cmp(&(b.node, b.code, &b.detail)));
    for r in &refused {
        tracing::warn!(contract, network = %network.name, node = %r.node, code = r.code.as_str(), detail = %r.detail, "mesh peer record refused");
    }
    Ok(PeerSet {
        layout,
        routes,
        peers,
        refused,
    })
}

/// One record judged alone.
fn candidate(
    me: &Local,
    contract: &str,
    network: &Network,
    members: &Members<'_>,
    layout: &Layout,
    record: &Record,
) -> Result<Peer, Refusal> {
    let body: PeerRecord = verify_record(record, contract, &network.name)?;
    let author = record.author;
    let slot = match (members, body.placement) {
        (Members::Nodes(_), Some(_)) => {
            return Err(Refusal::new(
                RefusalCode::Malformed,
                "a replica claimed for a contract that names its nodes",
            ));
        }
        (Members::Placement { .. }, None) => {
            return Err(Refusal::new(
                RefusalCode::Malformed,
                "no replica claimed for a placement contract",
            ));
        }
        (Members::Nodes(_), None) => layout.slot_of(&author).ok_or_else(|| {
            Refusal::new(
                RefusalCode::NotANodeOfTheContract,
                format!("{author} is not in the contract's nodes"),
            )
        })?,
        (Members::Placement { .. }, Some(held)) => {
            let slots = &layout.slots;
            let Some(s) = slots.iter().find(|s| s.index == held.replica) else {
                return Err(Refusal::new(
                    RefusalCode::NotANodeOfTheContract,
                    format!(
                        "replica {} is not one of the placement's {}",
                        held.replica,
                        slots.len()
                    ),
                ));
            };
            let current = s.epoch.unwrap_or(0);
            if held.epoch < current {
                return Err(Refusal::new(
                    RefusalCode::StaleEpoch,
                    format!(
                        "replica {} at epoch {}, current epoch {current}",
                        held.replica, held.epoch
                    ),
                ));
            }
            match s.node {
                Some(node) if node == author && held.epoch == current => s,
                Some(node) if node != author && held.epoch == current => {
                    return Err(Refusal::new(
                        RefusalCode::NotANodeOfTheContract,
                        format!(
                            "replica {} at epoch {current} is assigned to {node}",
                            held.replica
                        ),
                    ));
                }
                None if held.epoch == current => {
                    return Err(Refusal::new(
                        RefusalCode::NotANodeOfTheContract,
                        format!("replica {} is not placed", held.replica),
                    ));
                }
                _ => {
                    return Err(Refusal::new(
                        RefusalCode::EpochNotPlaced,
                        format!(
                            "replica {} at epoch {}; the placement record shows epoch {current}",
                            held.replica, held.epoch
                        ),
                    ));
                }
            }
        }
    };
    if body.subnet != slot.subnet {
        let other = layout
            .slots
            .iter()
            .find(|s| s.index != slot.index && s.subnet.overlaps(&body.subnet));
        return Err(match other {
            Some(o) => Refusal::new(
                RefusalCode::OverlappingRange,
                format!(
                    "claims {}, which overlaps slot {}'s {}; its own is {}",
                    body.subnet, o.index, o.subnet, slot.subnet
                ),
            ),
            None => Refusal::new(
                RefusalCode::SubnetMismatch,
                format!("claims {}; its subnet is {}", body.subnet, slot.subnet),
            ),
        });
    }
    if body.public_key == me.public_key {
        return Err(Refusal::new(
            RefusalCode::DuplicatePublicKey,
            "this node's own WireGuard key",
        ));
    }
    if body.endpoint.is_none() && me.endpoint.is_none() {
        return Err(Refusal::new(
            RefusalCode::NoEndpointEitherSide,
            "neither node has an endpoint: one side of each pair must be reachable",
        ));
    }
    Ok(Peer {
        node: author,
        slot: slot.index,
        public_key: body.public_key,
        endpoint: body.endpoint,
        allowed_ips: vec![slot.subnet],
        persistent_keepalive: me.endpoint.is_none().then_some(PERSISTENT_KEEPALIVE_S),
        version: body.version,
        placement: body.placement,
    })
}
