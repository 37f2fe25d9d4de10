//! Addressing: one address range per tenant network, one subnet ("slot") per node.
//!
//! The range is the deployment's `networks[].subnet` (RFC 1918, /16 to /29). It is cut
//! into `2^SLOT_BITS` slots of equal size, whatever the number of nodes: the slot size
//! depends on the range alone (`node_prefix`), so a node joining never shrinks the
//! others' subnets. A node's slot is
//!
//! - its **replica number** for a placement contract (replica `k` uses slot `k`
//!   wherever it runs: a move changes the node behind slot `k`, never an address), and
//! - its **position in the signed `nodes` list** for a node-addressed contract (a node
//!   appended takes the next slot; the last node leaving frees its own; a node removed
//!   from the middle shifts the ones after it, which [`renumbered`] names so the caller
//!   can say so).
//!
//! Each node's bridge holds its slot's subnet with the slot's first host as gateway; the
//! other slots are routed into the WireGuard interface, and each peer's allowed IPs are
//! its slot's subnet.

use std::collections::BTreeSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zos_contract::deployment::Network;
use zos_contract::placement_view::PlacementView;
use zos_contract::PublicKey;

/// How many bits of the range name a slot: 64 slots, as many as a placement's
/// [`zos_contract::placement::MAX_REPLICAS`].
pub const SLOT_BITS: u8 = 6;

/// The longest prefix a node's subnet gets when the range allows several slots: a /28
/// (14 hosts: the gateway and 13 workloads).
pub const MAX_NODE_PREFIX: u8 = 28;

/// Why text or an address and prefix is not an [`Ipv4Net`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadNet(pub String);

/// An IPv4 network: an address with zero host bits and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Net {
    addr: Ipv4Addr,
    len: u8,
}

impl Ipv4Net {
    /// `addr/len`, refused when `len > 32` or host bits are set.
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Self, BadNet> {
        if len > 32 {
            return Err(BadNet(format!("{addr}/{len}: prefix length above 32")));
        }
        if u32::from(addr) & !mask(len) != 0 {
            return Err(BadNet(format!("{addr}/{len} has host bits set")));
        }
        Ok(Ipv4Net { addr, len })
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The lowest address, as a number.
    fn first(&self) -> u32 {
        u32::from(self.addr)
    }

    /// The highest address, as a number.
    fn last(&self) -> u32 {
        self.first() | !mask(self.len)
    }

    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == self.first()
    }

    /// Whether the two networks share an address.
    pub fn overlaps(&self, other: &Ipv4Net) -> bool {
        self.first() <= other.last() && other.first() <= self.last()
    }

    /// The first host (network address + 1): the bridge's gateway on a node.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.first().wrapping_add(1))
    }
}

fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0)
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Net {
    type Err = BadNet;

    fn from_str(s: &str) -> Result<Self, BadNet> {
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| BadNet(format!("{s:?} is not a.b.c.d/len")))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| BadNet(format!("{s:?}: bad address")))?;
        // Digits only: `parse::<u8>` would take "+8".
        if len.is_empty() || len.len() > 2 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadNet(format!("{s:?}: bad prefix length")));
        }
        let len: u8 = len
            .parse()
            .map_err(|_| BadNet(format!("{s:?}: bad prefix length")))?;
        let net = Ipv4Net::new(addr, len)?;
        // One spelling per network: "10.0.0.0/08" is refused.
        if net.to_string() != s {
            return Err(BadNet(format!("{s:?} is not in canonical form ({net})")));
        }
        Ok(net)
    }
}

impl Serialize for Ipv4Net {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ipv4Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The prefix length of every node's subnet in a range of prefix `range_len`:
/// `range_len + SLOT_BITS`, at most [`MAX_NODE_PREFIX`] (a range too small for that is
/// one slot, the range itself).
pub fn node_prefix(range_len: u8) -> u8 {
    if range_len >= MAX_NODE_PREFIX {
        range_len
    } else {
        (range_len + SLOT_BITS).min(MAX_NODE_PREFIX)
    }
}

/// How many slots `range` has.
pub fn slot_count(range: &Ipv4Net) -> u64 {
    1 << (node_prefix(range.len) - range.len)
}

/// The subnet of slot `slot` in `range`, `None` when the range has fewer slots.
pub fn slot_subnet(range: &Ipv4Net, slot: u64) -> Option<Ipv4Net> {
    if slot >= slot_count(range) {
        return None;
    }
    let prefix = node_prefix(range.len);
    let size = 1u64 << (32 - prefix);
    let first = u64::from(range.first()) + slot * size;
    Ipv4Net::new(Ipv4Addr::from(first as u32), prefix).ok()
}

/// Who runs the contract, as the node knows it.
#[derive(Debug, Clone, Copy)]
pub enum Members<'a> {
    /// A node-addressed contract: its signed `nodes`, in order.
    Nodes(&'a [PublicKey]),
    /// A placement contract: its `replicas` and the orchestrator's placement record, as
    /// the engine reads it (`zos_engine::controllers::placement::read_placement`, which
    /// checks that the contract's orchestrator signed it).
    Placement {
        /// The placement's number of replicas.
        replicas: u64,
        /// The contract id, which the view must name.
        contract: &'a str,
        /// Where each replica is assigned, at which epoch.
        view: &'a PlacementView,
    },
}

/// Why a network cannot be laid out across the contract's nodes. The same for every
/// node: the contract is refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The network's `subnet` is not a valid private range.
    #[error("network {network}: bad range: {reason}")]
    BadRange {
        /// The network's name.
        network: String,
        /// What is wrong.
        reason: String,
    },
    /// The range has fewer slots than the contract has nodes (or replicas).
    #[error(
        "network {network}: range {range} has {slots} node subnets (/{prefix} each); \
         the contract needs {needed}"
    )]
    RangeTooSmall {
        /// The network's name.
        network: String,
        /// Its range.
        range: Ipv4Net,
        /// How many slots the range has.
        slots: u64,
        /// The prefix of each node's subnet.
        prefix: u8,
        /// How many the contract needs.
        needed: u64,
    },
    /// Two networks of the same contract share addresses: a workload on both, or a
    /// route for one, would be ambiguous.
    #[error("networks {a} ({a_range}) and {b} ({b_range}) of the contract overlap")]
    OverlappingRange {
        /// One network's name.
        a: String,
        /// Its range.
        a_range: Ipv4Net,
        /// The other's name.
        b: String,
        /// Its range.
        b_range: Ipv4Net,
    },
    /// A node named twice in the contract's `nodes`.
    #[error("node {0} is named twice in the contract's nodes")]
    DuplicateNode(PublicKey),
    /// The node computing its routes does not run the contract.
    #[error("node {0} is not a node of the contract")]
    NotAMember(PublicKey),
    /// The placement view names another contract.
    #[error("placement record of contract {found}, not {expected}")]
    WrongView {
        /// The contract asked about.
        expected: String,
        /// The contract the view names.
        found: String,
    },
}

impl AddressError {
    /// The stable code of the refusal (statuses, logs, tests).
    pub fn code(&self) -> &'static str {
        match self {
            AddressError::BadRange { .. } => "bad_range",
            AddressError::RangeTooSmall { .. } => "range_too_small",
            AddressError::OverlappingRange { .. } => "overlapping_range",
            AddressError::DuplicateNode(_) => "duplicate_node",
            AddressError::NotAMember(_) => "not_a_node_of_the_contract",
            AddressError::WrongView { .. } => "wrong_contract",
        }
    }
}

/// The range of `network`, checked as the contract format does (private, /16 to /29).
pub fn range_of(network: &Network) -> Result<Ipv4Net, AddressError> {
    let bad = |reason: String| AddressError::BadRange {
        network: network.name.clone(),
        reason,
    };
    let (addr, len) =
        zos_contract::deployment::parse_private_subnet(&network.subnet).map_err(bad)?;
    Ipv4Net::new(addr, len).map_err(|e| bad(e.0))
}

/// The ranges of all of a deployment's networks, refused when any is invalid or two
/// overlap (`overlapping_range`).
pub fn check_ranges(networks: &[Network]) -> Result<Vec<(String, Ipv4Net)>, AddressError> {
    let mut out: Vec<(String, Ipv4Net)> = Vec::with_capacity(networks.len());
    for n in networks {
        let range = range_of(n)?;
        if let Some((a, a_range)) = out.iter().find(|(_, r)| r.overlaps(&range)) {
            return Err(AddressError::OverlappingRange {
                a: a.clone(),
                a_range: *a_range,
                b: n.name.clone(),
                b_range: range,
            });
        }
        out.push((n.name.clone(), range));
    }
    Ok(out)
}

/// One node's place in a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The slot number: replica number or position in `nodes`.
    pub index: u64,
    /// The node there; `None` for a replica not placed.
    pub node: Option<PublicKey>,
    /// For a placement: the epoch of the replica's current assignment.
    pub epoch: Option<u64>,
    /// The node's subnet.
    pub subnet: Ipv4Net,
    /// The bridge's address on that node: the subnet's first host.
    pub gateway: Ipv4Addr,
}

/// A network laid out across the contract's nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The network's name.
    pub network: String,
    /// Its range.
    pub range: Ipv4Net,
    /// The prefix of every node's subnet.
    pub node_prefix: u8,
    /// One per node (node list) or per replica (placement), by slot number.
    pub slots: Vec<Slot>,
}

/// What one node configures for a network: its bridge's subnet and gateway, and the
/// other slots, routed into the WireGuard interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes {
    /// This node's subnet (on its bridge).
    pub local: Ipv4Net,
    /// The bridge's address, the workloads' default gateway.
    pub gateway: Ipv4Addr,
    /// Every other slot's subnet, routed into the WireGuard interface (placed or not:
    /// a replica moving, or a node appended to the list, changes no route).
    pub mesh: Vec<Ipv4Net>,
}

/// Lays `network` out across `members`: every node computes the same answer alone.
pub fn layout(network: &Network, members: &Members<'_>) -> Result<Layout, AddressError> {
    let range = range_of(network)?;
    let slots_in_range = slot_count(&range);
    let needed = match members {
        Members::Nodes(nodes) => nodes.len() as u64,
        Members::Placement { replicas, .. } => *replicas,
    };
    if needed > slots_in_range {
        return Err(AddressError::RangeTooSmall {
            network: network.name.clone(),
            range,
            slots: slots_in_range,
            prefix: node_prefix(range.len),
            needed,
        });
    }
    let slot = |index: u64, node: Option<PublicKey>, epoch: Option<u64>| {
        // In range: index < needed <= slots_in_range.
        let subnet = slot_subnet(&range, index).expect("slot index below the slot count");
        Slot {
            index,
            node,
            epoch,
            subnet,
            gateway: subnet.gateway(),
        }
    };
    let slots = match members {
        Members::Nodes(nodes) => {
            let mut seen = BTreeSet::new();
            let mut slots = Vec::with_capacity(nodes.len());
            for (i, n) in nodes.iter().enumerate() {
                if !seen.insert(*n) {
                    return Err(AddressError::DuplicateNode(*n));
                }
                slots.push(slot(i as u64, Some(*n), None));
            }
            slots
        }
        Members::Placement {
            replicas,
            contract,
            view,
        } => {
            if view.contract != *contract {
                return Err(AddressError::WrongView {
                    expected: (*contract).to_owned(),
                    found: view.contract.clone(),
                });
            }
            (0..*replicas)
                .map(|k| match view.replicas.iter().find(|r| r.replica == k) {
                    Some(r) => slot(k, r.node, Some(r.epoch)),
                    None => slot(k, None, None),
                })
                .collect()
        }
    };
    Ok(Layout {
        network: network.name.clone(),
        range,
        node_prefix: node_prefix(range.len),
        slots,
    })
}

impl Layout {
    /// The slot `node` holds, if any.
    pub fn slot_of(&self, node: &PublicKey) -> Option<&Slot> {
        self.slots.iter().find(|s| s.node.as_ref() == Some(node))
    }

    /// What `me` configures: refused when `me` holds no slot.
    pub fn routes(&self, me: &PublicKey) -> Result<Routes, AddressError> {
        let mine = self.slot_of(me).ok_or(AddressError::NotAMember(*me))?;
        Ok(Routes {
            local: mine.subnet,
            gateway: mine.gateway,
            mesh: self
                .slots
                .iter()
                .filter(|s| s.index != mine.index)
                .map(|s| s.subnet)
                .collect(),
        })
    }
}

/// The nodes of both lists whose position (so whose subnet) differs between the old
/// and the new `nodes` of a contract: empty when nodes were only appended, or only the
/// last ones removed.
pub fn renumbered(old: &[PublicKey], new: &[PublicKey]) -> Vec<PublicKey> {
    new.iter()
        .enumerate()
        .filter(|(i, n)| old.iter().position(|o| o == *n).is_some_and(|j| j != *i))
        .map(|(_, n)| *n)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_contract::placement_view::ReplicaView;

    fn net(name: &str, subnet: &str) -> Network {
        Network {
            name: name.into(),
            subnet: subnet.into(),
            egress_allow: vec![],
        }
    }

    fn key(i: u8) -> PublicKey {
        PublicKey([i; 32])
    }

    #[test]
    fn ipv4net_parses_one_spelling_and_compares() {
        let n: Ipv4Net = "10.20.0.0/16".parse().unwrap();
        assert_eq!(n.to_string(), "10.20.0.0/16");
        assert!(n.contains("10.20.255.1".parse().unwrap()));
        assert!(!n.contains("10.21.0.1".parse().unwrap()));
        for bad in [
            "10.20.0.1/16",
            "10.20.0.0/33",
            "10.20.0.0/+8",
            "10.20.0.0/016",
            "10.20.0.0",
            "x/8",
        ] {
            assert!(bad.parse::<Ipv4Net>().is_err(), "{bad}");
        }
        let a: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        let b: Ipv4Net = "10.0.0.128/25".parse().unwrap();
        let c: Ipv4Net = "10.0.1.0/24".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&a));
        assert_eq!(a.gateway(), Ipv4Addr::new(10, 0, 0, 1));
    }

    #[test]
    fn node_subnets_depend_on_the_range_only() {
        // /16: 64 slots of /22.
        let r: Ipv4Net = "10.20.0.0/16".parse().unwrap();
        assert_eq!(node_prefix(16), 22);
        assert_eq!(slot_count(&r), 64);
        assert_eq!(slot_subnet(&r, 0).unwrap().to_string(), "10.20.0.0/22");
        assert_eq!(slot_subnet(&r, 1).unwrap().to_string(), "10.20.4.0/22");
        assert_eq!(slot_subnet(&r, 63).unwrap().to_string(), "10.20.252.0/22");
        assert_eq!(slot_subnet(&r, 64), None);
        // /24: 16 slots of /28; /27: 2; /28 and /29: the range itself.
        assert_eq!(
            (node_prefix(24), slot_count(&"10.0.0.0/24".parse().unwrap())),
            (28, 16)
        );
        assert_eq!(slot_count(&"10.0.0.0/27".parse().unwrap()), 2);
        assert_eq!(slot_count(&"10.0.0.0/28".parse().unwrap()), 1);
        let tiny: Ipv4Net = "10.0.0.8/29".parse().unwrap();
        assert_eq!(slot_subnet(&tiny, 0), Some(tiny));
        // Every slot of every range is inside it and disjoint from the others.
        for len in 16..=29u8 {
            let r = Ipv4Net::new(Ipv4Addr::new(10, 0, 0, 0), len).unwrap();
            let subnets: Vec<_> = (0..slot_count(&r))
                .map(|k| slot_subnet(&r, k).unwrap())
                .collect();
            for (i, a) in subnets.iter().enumerate() {
                assert!(r.contains(a.addr()) && r.contains(Ipv4Addr::from(a.last())));
                for b in &subnets[i + 1..] {
                    assert!(!a.overlaps(b), "{a} {b}");
                }
            }
        }
    }

    #[test]
    fn node_list_slots_are_positions_and_appending_moves_nobody() {
        let n = net("n", "10.20.0.0/16");
        let two = [key(9), key(1)];
        let l2 = layout(&n, &Members::Nodes(&two)).unwrap();
        assert_eq!(l2.node_prefix, 22);
        assert_eq!(
            l2.slot_of(&key(9)).unwrap().subnet.to_string(),
            "10.20.0.0/22"
        );
        assert_eq!(
            l2.slot_of(&key(1)).unwrap().subnet.to_string(),
            "10.20.4.0/22"
        );
        assert_eq!(
            l2.slot_of(&key(1)).unwrap().gateway,
            Ipv4Addr::new(10, 20, 4, 1)
        );
        // Deterministic: computed again (another node), the same.
        assert_eq!(layout(&n, &Members::Nodes(&two)).unwrap(), l2);
        // A node appended: the others keep their subnets; the last one leaving, too.
        let three = [key(9), key(1), key(5)];
        let l3 = layout(&n, &Members::Nodes(&three)).unwrap();
        assert_eq!(&l3.slots[..2], &l2.slots[..]);
        assert!(renumbered(&two, &three).is_empty());
        assert!(renumbered(&three, &two).is_empty());
        // Removed from the middle: the ones after it are named.
        assert_eq!(renumbered(&three, &[key(9), key(5)]), vec![key(5)]);
        // Routes: own subnet on the bridge, every other slot into the mesh.
        let r = l3.routes(&key(1)).unwrap();
        assert_eq!(r.local.to_string(), "10.20.4.0/22");
        assert_eq!(r.gateway, Ipv4Addr::new(10, 20, 4, 1));
        let mesh: Vec<_> = r.mesh.iter().map(|s| s.to_string()).collect();
        assert_eq!(mesh, ["10.20.0.0/22", "10.20.8.0/22"]);
        assert_eq!(
            l3.routes(&key(7)).unwrap_err().code(),
            "not_a_node_of_the_contract"
        );
    }

    #[test]
    fn placement_slots_are_replica_numbers_and_a_move_changes_no_subnet() {
        let n = net("n", "192.168.0.0/24");
        let view = |node1: u8, epoch1: u64| PlacementView {
            contract: "web".into(),
            replicas: vec![
                ReplicaView {
                    replica: 0,
                    node: Some(key(3)),
                    epoch: 1,
                    handover: None,
                },
                ReplicaView {
                    replica: 1,
                    node: Some(key(node1)),
                    epoch: epoch1,
                    handover: None,
                },
            ],
        };
        let before = view(4, 1);
        let members = Members::Placement {
            replicas: 3,
            contract: "web",
            view: &before,
        };
        let l = layout(&n, &members).unwrap();
        assert_eq!(l.node_prefix, 28);
        assert_eq!(l.slots.len(), 3);
        assert_eq!(l.slots[1].subnet.to_string(), "192.168.0.16/28");
        assert_eq!(l.slots[1].node, Some(key(4)));
        assert_eq!(l.slots[2].node, None, "replica 2 not placed");
        // Replica 1 moves to node 5 at epoch 2: same subnets, same routes for node 3.
        let after = view(5, 2);
        let moved = layout(
            &n,
            &Members::Placement {
                replicas: 3,
                contract: "web",
                view: &after,
            },
        )
        .unwrap();
        for (a, b) in l.slots.iter().zip(&moved.slots) {
            assert_eq!(a.subnet, b.subnet);
        }
        assert_eq!(moved.slots[1].node, Some(key(5)));
        assert_eq!(moved.slots[1].epoch, Some(2));
        assert_eq!(l.routes(&key(3)).unwrap(), moved.routes(&key(3)).unwrap());
        // A view of another contract is refused.
        let err = layout(
            &n,
            &Members::Placement {
                replicas: 3,
                contract: "db",
                view: &after,
            },
        )
        .unwrap_err();
        assert_eq!(err.code(), "wrong_contract");
    }

    #[test]
    fn refusals_have_codes() {
        // 17 nodes in a /24 (16 slots of /28).
        let nodes: Vec<_> = (0..17).map(key).collect();
        let err = layout(&net("n", "10.0.0.0/24"), &Members::Nodes(&nodes)).unwrap_err();
        assert_eq!(err.code(), "range_too_small");
        assert!(
            err.to_string()
                .contains("16 node subnets (/28 each); the contract needs 17"),
            "{err}"
        );
        assert!(layout(&net("n", "10.0.0.0/24"), &Members::Nodes(&nodes[..16])).is_ok());
        // Two nodes in a /28: one slot.
        let err = layout(&net("n", "10.0.0.0/28"), &Members::Nodes(&nodes[..2])).unwrap_err();
        assert_eq!(err.code(), "range_too_small");
        // A placement of 64 replicas fits any /22 or larger.
        let empty = PlacementView {
            contract: "c".into(),
            replicas: vec![],
        };
        let p = |replicas, subnet| {
            layout(
                &net("n", subnet),
                &Members::Placement {
                    replicas,
                    contract: "c",
                    view: &empty,
                },
            )
        };
        assert!(p(64, "10.0.0.0/22").is_ok());
        assert_eq!(p(33, "10.0.0.0/23").unwrap_err().code(), "range_too_small");
        // Duplicates, public and malformed ranges.
        let err = layout(&net("n", "10.0.0.0/24"), &Members::Nodes(&[key(1), key(1)])).unwrap_err();
        assert_eq!(err.code(), "duplicate_node");
        for bad in ["8.8.0.0/16", "10.0.0.1/24", "10.0.0.0/8", "10.0.0.0/30"] {
            let err = layout(&net("n", bad), &Members::Nodes(&nodes[..1])).unwrap_err();
            assert_eq!(err.code(), "bad_range", "{bad}");
        }
    }

    #[test]
    fn overlapping_ranges_of_one_contract_are_refused() {
        let ok = check_ranges(&[net("a", "10.1.0.0/16"), net("b", "10.2.0.0/16")]).unwrap();
        assert_eq!(ok.len(), 2);
        let err = check_ranges(&[
            net("a", "10.1.0.0/16"),
            net("b", "172.16.0.0/24"),
            net("c", "10.1.128.0/24"),
        ])
        .unwrap_err();
        assert_eq!(err.code(), "overlapping_range");
        assert_eq!(
            err,
            AddressError::OverlappingRange {
                a: "a".into(),
                a_range: "10.1.0.0/16".parse().unwrap(),
                b: "c".into(),
                b_range: "10.1.128.0/24".parse().unwrap(),
            }
        );
    }
}
