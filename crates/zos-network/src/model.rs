//! The typed API: what a contract asks for, and the configuration of the node.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::error::{Error, Result};
use crate::names;
use crate::subnet::{IpNet, Ipv4Subnet, DEFAULT_EGRESS_DENY};

/// How the node is wired: where namespaces live, which names are ours, the uplink.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// Prefix of every kernel object name we create in a shared place (namespace
    /// files, links in the node namespace, nft tables): `n-` in production,
    /// `zt-<random>-` in tests. Everything with the prefix is ours.
    pub prefix: String,
    /// Where namespace files are bind-mounted (`/run/netns`, so `ip netns` sees them).
    pub run_dir: PathBuf,
    /// The namespace that plays the node (uplink, host firewall). `None`: the namespace
    /// of the calling thread, which is the root namespace in production.
    pub node_netns: Option<PathBuf>,
    /// The node's uplink interface inside the node namespace.
    pub uplink: String,
    /// Node-private range cut in /30s, one per tenant network, for the veth pair
    /// between the node and the tenant namespace.
    pub transit: Ipv4Subnet,
    /// Destinations no tenant reaches unless its contract opens them
    /// ([`EgressPolicy::allow`]): the farm LAN, the notary, the DHCP server, the node.
    /// Default [`DEFAULT_EGRESS_DENY`] (every private, shared, link-local, loopback,
    /// multicast and reserved range). A node whose LAN is on public addresses adds
    /// its LAN here; a test world whose "internet" is on a private range removes it.
    pub egress_deny: Vec<IpNet>,
}

impl NetworkConfig {
    /// Production defaults: prefix `n-`, `/run/netns`, the root namespace.
    pub fn new(uplink: &str) -> NetworkConfig {
        NetworkConfig {
            prefix: "n-".into(),
            run_dir: PathBuf::from("/run/netns"),
            node_netns: None,
            uplink: uplink.into(),
            transit: Ipv4Subnet::new(Ipv4Addr::new(100, 127, 0, 0), 16).expect("valid"),
            egress_deny: DEFAULT_EGRESS_DENY.to_vec(),
        }
    }
}

/// The transport protocol of a forwarded port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// `tcp` or `udp`, as nft and error messages spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// An opened port: `public_port` on the node's uplink goes to `workload_ip:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortForward {
    /// TCP or UDP (the same on both sides).
    pub proto: Proto,
    /// The port on the node's uplink address; one network per node holds it.
    pub public_port: u16,
    /// The workload's address in the tenant subnet (not the gateway).
    pub workload_ip: Ipv4Addr,
    /// The port the workload listens on.
    pub port: u16,
}

/// One tenant network of one contract on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantNetwork {
    /// `[a-z0-9]`, short enough that `<prefix><id>` fits in 15 bytes.
    pub id: String,
    /// The tenant's private subnet; workload addresses are hosts of it.
    pub subnet: Ipv4Subnet,
    /// The bridge's address in the tenant namespace; workloads route through it.
    pub gateway: Ipv4Addr,
    /// Public ports of the node forwarded into this network (at most one network
    /// per public port and protocol on the node).
    pub ports: Vec<PortForward>,
}

impl TenantNetwork {
    /// Everything that can be refused without touching the kernel.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        names::check_net_id(&self.id)?;
        names::ifname(&format!("{prefix}{}", self.id))?;
        self.subnet.check_host(self.gateway)?;
        let mut seen = Vec::new();
        for p in &self.ports {
            self.check_workload_ip(p.workload_ip)?;
            if seen.contains(&(p.proto, p.public_port)) {
                return Err(Error::DuplicatePort {
                    network: self.id.clone(),
                    proto: p.proto.as_str(),
                    port: p.public_port,
                });
            }
            seen.push((p.proto, p.public_port));
        }
        Ok(())
    }

    /// A workload address: a host of the subnet that is not the gateway.
    pub fn check_workload_ip(&self, ip: Ipv4Addr) -> Result<()> {
        self.subnet.check_host(ip)?;
        if ip == self.gateway {
            return Err(Error::AddressReserved {
                addr: ip,
                subnet: self.subnet,
                what: "gateway",
            });
        }
        Ok(())
    }

    /// The lowest free workload address, given the ones already handed out.
    pub fn allocate(&self, taken: &[Ipv4Addr]) -> Result<Ipv4Addr> {
        let mut all = taken.to_vec();
        all.push(self.gateway);
        self.subnet.allocate(&all)
    }
}

/// What a contract opens for the new connections of one tenant network beyond the
/// internet. Default: nothing (the internet only). Replies to connections that came
/// in through an opened port are never affected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Destinations reachable although [`NetworkConfig::egress_deny`] lists them (a
    /// LAN service the contract names). IPv4 only: tenant networks forward no IPv6.
    pub allow: Vec<IpNet>,
}

/// How a workload joins a tenant network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkloadAttachment {
    /// A veth pair: `eth0` in the workload's own namespace `netns` (a name under the
    /// run dir, `<prefix><net>-<workload>` by convention, created if missing), with
    /// `ip` from the subnet and a default route via the gateway; the peer on the
    /// tenant bridge.
    Veth {
        /// The workload's namespace name (under [`NetworkConfig::run_dir`]).
        netns: String,
        /// The address of `eth0`, a host of the tenant subnet.
        ip: Ipv4Addr,
        /// The user namespace (a bind-mounted nsfs file) that owns the workload's
        /// namespace, when the workload runs in one of its own; `None`: the node's.
        owner: Option<PathBuf>,
    },
    /// A persistent tap device `name` on the tenant bridge, in the tenant namespace,
    /// for a VM (the guest configures its own address).
    Tap {
        /// The tap device name (at most 15 bytes; never `br0`, `pub0`, `lo` or `w-*`).
        name: String,
    },
}

/// A workload's port on a tenant network: its id and how it joins (veth or tap).
/// (Named apart from the engine's and zosd's `Workload`.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantPort {
    /// `[a-z0-9]`, at most 13 bytes (the bridge port is `w-<id>`).
    pub id: String,
    /// Veth into the workload's namespace, or a tap for a VM.
    pub attachment: WorkloadAttachment,
}
