//! Typed errors: every refusal names what was refused and why.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use crate::subnet::Ipv4Subnet;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// Interface names are at most 15 bytes (IFNAMSIZ = 16 with the NUL).
    #[error("interface name {name:?} is {len} bytes; the kernel allows at most 15 (IFNAMSIZ)")]
    NameTooLong { name: String, len: usize },

    #[error(
        "namespace {name:?} does not start with our prefix {prefix:?} (or is not a workload name)"
    )]
    ForeignName { name: String, prefix: String },

    #[error("invalid subnet {subnet:?}: {reason}")]
    InvalidSubnet {
        subnet: String,
        reason: &'static str,
    },

    #[error("address {addr} is outside the subnet {subnet}")]
    AddressOutOfSubnet { addr: Ipv4Addr, subnet: Ipv4Subnet },

    #[error("address {addr} is reserved in {subnet} ({what})")]
    AddressReserved {
        addr: Ipv4Addr,
        subnet: Ipv4Subnet,
        what: &'static str,
    },

    #[error("subnet {subnet} has no free host address left ({in_use} in use)")]
    ExhaustedSubnet { subnet: Ipv4Subnet, in_use: usize },

    #[error("transit range {range} has no free /30 left for another tenant network")]
    ExhaustedTransit { range: Ipv4Subnet },

    #[error("public port {proto}/{port} is forwarded twice in network {network}")]
    DuplicatePort {
        network: String,
        proto: &'static str,
        port: u16,
    },

    #[error("public port {proto}/{port} is already forwarded by network {other}")]
    PortInUse {
        proto: &'static str,
        port: u16,
        other: String,
    },

    #[error("network {0:?} does not exist (ensure it first)")]
    NoSuchNetwork(String),

    #[error("uplink {0:?} not found in the node namespace")]
    NoUplink(String),

    #[error("netlink {op}: {source}")]
    Netlink {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },

    #[error("nft {op}: {detail}")]
    Nft { op: String, detail: String },

    #[error("network namespace {path}: {op}: {source}")]
    Netns {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("tap {name}: {op}: {source}")]
    Tap {
        name: String,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },

    #[error("{op}: {source}")]
    Io {
        op: String,
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
