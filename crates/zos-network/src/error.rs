//! Typed errors: every refusal names what was refused and why.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::subnet::Ipv4Subnet;

/// The result of every fallible call of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a tenant network, an attachment or a kernel operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A network id, workload id, namespace, tap or prefix that breaks the naming rules.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name as given.
        name: String,
        /// The rule it breaks.
        reason: &'static str,
    },

    /// Interface names are at most 15 bytes (IFNAMSIZ = 16 with the NUL).
    #[error("interface name {name:?} is {len} bytes; the kernel allows at most 15 (IFNAMSIZ)")]
    NameTooLong {
        /// The name as given.
        name: String,
        /// Its length in bytes.
        len: usize,
    },

    #[error(
        "namespace {name:?} does not start with our prefix {prefix:?} (or is not a workload name)"
    )]
    /// A workload namespace name outside our prefix: refused so that we never touch
    /// a namespace we did not create.
    ForeignName {
        /// The namespace name as given.
        name: String,
        /// Our prefix ([`crate::NetworkConfig::prefix`]).
        prefix: String,
    },

    /// A subnet or prefix that is malformed or out of the accepted range.
    #[error("invalid subnet {subnet:?}: {reason}")]
    InvalidSubnet {
        /// The subnet as written (`addr/prefix`).
        subnet: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A workload or gateway address that is not in the tenant subnet.
    #[error("address {addr} is outside the subnet {subnet}")]
    AddressOutOfSubnet {
        /// The address asked for.
        addr: Ipv4Addr,
        /// The subnet it should be in.
        subnet: Ipv4Subnet,
    },

    /// An address of the subnet that no workload may take.
    #[error("address {addr} is reserved in {subnet} ({what})")]
    AddressReserved {
        /// The address asked for.
        addr: Ipv4Addr,
        /// The subnet it is in.
        subnet: Ipv4Subnet,
        /// What holds it: the network address, the broadcast address or the gateway.
        what: &'static str,
    },

    /// Every host address of the subnet is taken.
    #[error("subnet {subnet} has no free host address left ({in_use} in use)")]
    ExhaustedSubnet {
        /// The full subnet.
        subnet: Ipv4Subnet,
        /// How many of its addresses are taken (gateway included).
        in_use: usize,
    },

    /// Every /30 of the transit range is held by a tenant network.
    #[error("transit range {range} has no free /30 left for another tenant network")]
    ExhaustedTransit {
        /// [`crate::NetworkConfig::transit`].
        range: Ipv4Subnet,
    },

    /// One tenant network forwards the same public port twice.
    #[error("public port {proto}/{port} is forwarded twice in network {network}")]
    DuplicatePort {
        /// The tenant network id.
        network: String,
        /// `tcp` or `udp`.
        proto: &'static str,
        /// The public port on the uplink.
        port: u16,
    },

    /// Another tenant network already forwards this public port of the node.
    #[error("public port {proto}/{port} is already forwarded by network {other}")]
    PortInUse {
        /// `tcp` or `udp`.
        proto: &'static str,
        /// The public port on the uplink.
        port: u16,
        /// The tenant network id that holds it.
        other: String,
    },

    /// A workload attaches to a tenant network id that was never ensured.
    #[error("network {0:?} does not exist (ensure it first)")]
    NoSuchNetwork(String),

    /// [`crate::NetworkConfig::uplink`] is not a link of the node namespace.
    #[error("uplink {0:?} not found in the node namespace")]
    NoUplink(String),

    /// A netlink request failed or was refused by the kernel.
    #[error("netlink {op}: {source}")]
    Netlink {
        /// What we asked for (`add veth x`, ...).
        op: String,
        /// The netlink error (a NACK carries the errno).
        #[source]
        source: rtnetlink::Error,
    },

    #[error("nft {op}: {detail}")]
    /// `nft` failed to run or refused a ruleset.
    Nft {
        /// What the ruleset was for.
        op: String,
        /// nft's stderr, or why it could not run.
        detail: String,
    },

    /// Creating, opening, entering or removing a network namespace failed.
    #[error("network namespace {path}: {op}: {source}")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// The step that failed (`open`, `unshare`, `bind mount`, ...).
        op: &'static str,
        /// The system error.
        #[source]
        source: std::io::Error,
    },

    /// Creating or configuring a tap device failed.
    #[error("tap {name}: {op}: {source}")]
    Tap {
        /// The tap device name.
        name: String,
        /// The step that failed (`open /dev/net/tun`, `TUNSETIFF`, ...).
        op: &'static str,
        /// The system error.
        #[source]
        source: std::io::Error,
    },

    /// This node's kernel has no WireGuard: the generic netlink family "wireguard" does
    /// not resolve, or the link kind "wireguard" is unknown. Permanent for this boot: a
    /// provisioner refuses a mesh contract with code `wireguard_missing`.
    #[error(
        "this node's kernel has no WireGuard (the generic netlink family \"wireguard\" is not registered: the module is neither built in nor loaded)"
    )]
    WireguardMissing,

    /// A request to WireGuard's generic netlink family failed.
    #[error("wireguard {op}: {source}")]
    Wireguard {
        /// What we asked for (`set device 7`, ...).
        op: String,
        /// The errno of the NACK, or the socket error.
        #[source]
        source: std::io::Error,
    },

    /// Any other system call or file operation failed.
    #[error("{op}: {source}")]
    Io {
        /// What we were doing.
        op: String,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn netlink(op: impl Into<String>, source: rtnetlink::Error) -> Error {
        Error::Netlink {
            op: op.into(),
            source,
        }
    }

    pub(crate) fn io(op: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            op: op.into(),
            source,
        }
    }
}

/// The errno of a netlink NACK, if that is what `e` is.
pub(crate) fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}
