//! Tenant network namespaces, bridges, veth, tap, NAT and isolation.
//!
//! A tenant network is a namespace `<prefix><id>` with a bridge `br0` carrying the
//! gateway address, a veth pair `pub0` <-> `<prefix><id>` to the node namespace on
//! a private transit /30, and nftables rules for NAT and isolation in both. Workloads
//! join with a veth pair (their own namespace) or a tap (VMs). A network that spans
//! nodes (issue #16) also has a WireGuard link `wg0` in its namespace, whose UDP
//! socket lives in the node namespace ([`Network::ensure_mesh`], module `mesh`;
//! configured over WireGuard's generic netlink family, module `wg`). See
//! docs/network.md.
//!
//! Every namespace, netlink and nft call goes through the [`kernel::Kernel`] seam:
//! [`kernel::RealKernel`] in production, [`fake::FakeKernel`] (which records the calls)
//! in unit tests.
//!
//! The API is synchronous (the engine calls it from `spawn_blocking`); every kernel
//! operation runs on a short-lived thread inside the namespace it concerns.

mod error;
pub mod fake;
pub mod kernel;
mod laps;
mod mesh;
mod model;
mod names;
pub mod netns;
mod network;
pub mod nft;
mod nl;
mod subnet;
mod tap;
mod wg;

pub use error::{Error, Result};
pub use mesh::{MeshConfig, MeshPeer, MeshPeerState, MeshState, WgDevice, WgPeer};
pub use model::{
    EgressPolicy, NetworkConfig, PortForward, Proto, TenantNetwork, TenantPort, WorkloadAttachment,
};
pub use names::IFNAME_MAX;
pub use network::{Network, NetworkInventory};
pub use subnet::{IpNet, Ipv4Subnet, DEFAULT_EGRESS_DENY};
