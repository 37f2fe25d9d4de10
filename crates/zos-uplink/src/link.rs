//! The few netlink operations the uplink needs, over the workspace's rtnetlink.
//!
//! A `Link` is opened on the calling thread: its netlink socket belongs to that
//! thread's network namespace for life (which is what lets tests run the client in
//! a namespace of their own). It owns a current-thread tokio runtime that drives the
//! connection only while a request is awaited, so nothing runs in the background
//! and the caller needs no runtime: the DHCP client itself is blocking.

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// A netlink failure, with what we were doing.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Opening the netlink connection (or its runtime) failed.
    #[error("{op}: {source}")]
    Io {
        /// What was being opened.
        op: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The kernel refused a netlink request.
    #[error("{op}: {source}")]
    Netlink {
        /// The request, naming the interface or address.
        op: String,
        /// rtnetlink's error (the kernel's errno inside).
        source: rtnetlink::Error,
    },
    /// No interface of that name in the calling thread's network namespace.
    #[error("no interface named {0:?} in this network namespace")]
    NoSuchInterface(String),
    /// The interface has no hardware address DHCP can carry: none, all zeros, or over
    /// 16 bytes.
    #[error("interface {iface:?} has no usable hardware address ({len} bytes)")]
    NoHardwareAddress {
        /// The interface.
        iface: String,
        /// The hardware address's length, in bytes (0: none).
        len: usize,
    },
}

fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(m) => Some(m.raw_code().abs()),
        _ => None,
    }
}

/// What the DHCP client needs to know about its interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub up: bool,
}

pub struct Link {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

impl Link {
    /// A netlink connection in the calling thread's network namespace.
    pub fn open() -> Result<Link, LinkError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| LinkError::Io {
                op: "tokio runtime for netlink",
                source,
            })?;
        let handle = rt.block_on(async {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|source| LinkError::Io {
                    op: "netlink socket",
                    source,
                })?;
            tokio::spawn(conn);
            Ok::<_, LinkError>(handle)
        })?;
        Ok(Link { rt, handle })
    }

    /// The interface called `name` (index, MAC, state).
    pub fn iface(&self, name: &str) -> Result<Iface, LinkError> {
        self.rt.block_on(async {
            let mut s = self.handle.link().get().match_name(name.into()).execute();
            let m = match s.try_next().await {
                Ok(Some(m)) => m,
                Ok(None) => return Err(LinkError::NoSuchInterface(name.into())),
                Err(e) if errno(&e) == Some(libc::ENODEV) => {
                    return Err(LinkError::NoSuchInterface(name.into()))
                }
                Err(source) => {
                    return Err(LinkError::Netlink {
                        op: format!("get link {name}"),
                        source,
                    })
                }
            };
            let mac = m
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::Address(a) => Some(a.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            // DHCP's chaddr holds at most 16 bytes; an all-zero or empty address
            // (a tun device, lo) cannot identify a client.
            if mac.is_empty() || mac.len() > 16 || mac.iter().all(|b| *b == 0) {
                return Err(LinkError::NoHardwareAddress {
                    iface: name.into(),
                    len: mac.len(),
                });
            }
            Ok(Iface {
                index: m.header.index,
                name: name.into(),
                mac,
                up: m.header.flags.contains(LinkFlags::Up),
            })
        })
    }

    pub fn set_up(&self, index: u32) -> Result<(), LinkError> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(|source| LinkError::Netlink {
                op: format!("set link {index} up"),
                source,
            })
    }

    /// `ip addr replace ip/prefix dev index`: idempotent, so a renewal that hands
    /// out the same address is a no-op.
    pub fn replace_addr(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<(), LinkError> {
        self.rt
            .block_on(
                self.handle
                    .address()
                    .add(index, IpAddr::V4(ip), prefix)
                    .replace()
                    .execute(),
            )
            .map_err(|source| LinkError::Netlink {
                op: format!("add {ip}/{prefix} on link {index}"),
                source,
            })
    }

    /// `ip route replace default via gw dev index`.
    pub fn replace_default_route(&self, gw: Ipv4Addr, index: u32) -> Result<(), LinkError> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build();
        self.rt
            .block_on(self.handle.route().add(msg).replace().execute())
            .map_err(|source| LinkError::Netlink {
                op: format!("default route via {gw} on link {index}"),
                source,
            })
    }
}
