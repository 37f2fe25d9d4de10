//! One tenant network across the nodes that run a contract (issue #16): the pure part.
//!
//! - [`addr`]: the network's address range (the deployment's `networks[].subnet`) split
//!   into one subnet per node, deterministically: the slot of a node is its replica
//!   number (placement contracts) or its position in the contract's `nodes` (node
//!   lists), so every node computes the same layout alone, and a node that joins or
//!   leaves changes only its own slot.
//! - [`key`]: the WireGuard key pair a node makes per (contract, network), X25519, kept
//!   in a mode-0600 file in the state home.
//! - [`record`]: the peer record a node signs per (contract, network) at
//!   `nodes/<node>/mesh/<contract>/<network>`: its WireGuard public key, endpoint,
//!   subnet, the contract version and, for a placement, the replica and epoch it holds.
//! - [`peers`]: the peer set a node configures, built from the records it read: only
//!   nodes of the contract (or holders of a replica's current assignment) that signed
//!   their record, with typed refusals for everything else.
//!
//! Nothing here touches the kernel: the WireGuard interface (netlink), its routes and
//! the notary reads are the callers'. See docs/network.md, "Mesh (issue #16)".

pub mod addr;
pub mod key;
pub mod peers;
pub mod record;

pub use addr::{
    check_ranges, layout, renumbered, AddressError, BadNet, Ipv4Net, Layout, Members, Routes, Slot,
};
pub use key::{BadWgKey, KeyFileError, WgPublicKey, WgSecretKey};
pub use peers::{
    peers, Local, Peer, PeerSet, Refused, SlotReport, SlotState, PERSISTENT_KEEPALIVE_S,
};
pub use record::{
    mesh_key, sign_record, verify_record, HeldReplica, PeerRecord, Refusal, RefusalCode,
};
