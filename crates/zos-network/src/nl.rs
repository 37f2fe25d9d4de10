//! A small synchronous facade over rtnetlink for one namespace.
//!
//! An `Nl` is created on a thread inside the target namespace (see `netns::run_in`):
//! its netlink socket belongs to that namespace for life. It owns a current-thread
//! tokio runtime that drives the connection only while a request is awaited, so no
//! background task outlives the call and nothing runs on the caller's runtime.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, BorrowedFd};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkWireguard, RouteMessageBuilder};

use crate::error::{errno, Error, Result};
use crate::subnet::Ipv4Subnet;

/// The main routing table's id.
const RT_TABLE_MAIN: u32 = 254;

/// What we need to know about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// The kernel's interface index, unique within the namespace.
    pub index: u32,
    /// The interface name (at most 15 bytes).
    pub name: String,
    /// `veth`, `bridge`, `tun`, ... (`None` for physical or kind-less links).
    pub kind: Option<String>,
    /// Index of the bridge this link is a port of.
    pub controller: Option<u32>,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
}

pub struct Nl {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

fn kind_name(k: &InfoKind) -> String {
    match k {
        InfoKind::Veth => "veth".into(),
        InfoKind::Bridge => "bridge".into(),
        InfoKind::Tun => "tun".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn to_link(m: LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        controller: None,
        up: m.header.flags.contains(LinkFlags::Up),
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::Controller(c) => l.controller = Some(c),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        l.kind = Some(kind_name(&k));
                    }
                }
            }
            _ => {}
        }
    }
    l
}

impl Nl {
    /// Open a netlink connection in the calling thread's network namespace.
    pub fn new() -> Result<Nl> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| Error::io("tokio runtime for netlink", e))?;
        let handle = rt.block_on(async {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| Error::io("netlink socket", e))?;
            tokio::spawn(conn);
            Ok::<_, Error>(handle)
        })?;
        Ok(Nl { rt, handle })
    }

    pub fn links(&self) -> Result<Vec<Link>> {
        self.rt.block_on(async {
            let mut s = self.handle.link().get().execute();
            let mut v = Vec::new();
            while let Some(m) = s
                .try_next()
                .await
                .map_err(|e| Error::netlink("dump links", e))?
            {
                v.push(to_link(m));
            }
            Ok(v)
        })
    }

    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        self.rt.block_on(async {
            let mut s = self.handle.link().get().match_name(name.into()).execute();
            match s.try_next().await {
                Ok(m) => Ok(m.map(to_link)),
                Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
                Err(e) => Err(Error::netlink(format!("get link {name}"), e)),
            }
        })
    }

    pub fn add_bridge(&self, name: &str) -> Result<()> {
        let msg = LinkBridge::new(name).build();
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(|e| Error::netlink(format!("add bridge {name}"), e))
    }

    /// A veth pair whose `peer` end is created directly inside the namespace `ns`:
    /// one atomic request, no temporary name, and no move (moving a link between
    /// namespaces waits for an RCU grace period, the slowest step by far).
    pub fn add_veth_into(&self, name: &str, peer: &str, ns: BorrowedFd<'_>) -> Result<()> {
        let peer_msg = LinkUnspec::new_with_name(peer)
            .setns_by_fd(ns.as_raw_fd())
            .build();
        let msg = LinkVeth::new(name, peer)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg)))
            .build();
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(|e| Error::netlink(format!("add veth {name}/{peer}"), e))
    }

    /// A WireGuard link `name` born inside the namespace `ns`, requested from this
    /// one: WireGuard binds its UDP socket in the namespace of the request (the
    /// device's creating namespace), not the one the link lives in. A kernel without
    /// the link kind answers EOPNOTSUPP: [`Error::WireguardMissing`].
    pub fn add_wireguard_into(&self, name: &str, ns: BorrowedFd<'_>) -> Result<()> {
        let msg = LinkWireguard::new(name).setns_by_fd(ns.as_raw_fd()).build();
        match self.rt.block_on(self.handle.link().add(msg).execute()) {
            Ok(()) => Ok(()),
            Err(e) if matches!(errno(&e), Some(libc::EOPNOTSUPP | libc::ENODEV)) => {
                Err(Error::WireguardMissing)
            }
            Err(e) => Err(Error::netlink(format!("add wireguard {name}"), e)),
        }
    }

    /// Destinations of the main table's IPv4 routes out of link `index`.
    pub fn routes(&self, index: u32) -> Result<Vec<Ipv4Subnet>> {
        self.rt.block_on(async {
            let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
            let mut s = self.handle.route().get(filter).execute();
            let mut v = Vec::new();
            while let Some(m) = s
                .try_next()
                .await
                .map_err(|e| Error::netlink("dump routes", e))?
            {
                let mut table = u32::from(m.header.table);
                let mut oif = None;
                let mut dst = Ipv4Addr::UNSPECIFIED;
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Table(t) => table = *t,
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                        _ => {}
                    }
                }
                if table == RT_TABLE_MAIN && oif == Some(index) {
                    if let Ok(net) = Ipv4Subnet::new(dst, m.header.destination_prefix_length) {
                        v.push(net);
                    }
                }
            }
            Ok(v)
        })
    }

    /// `ip route replace dst dev index`.
    pub fn route_replace(&self, dst: Ipv4Subnet, index: u32) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr(), dst.prefix())
            .output_interface(index)
            .build();
        self.rt
            .block_on(self.handle.route().add(msg).replace().execute())
            .map_err(|e| Error::netlink(format!("route {dst} dev {index}"), e))
    }

    /// `ip route del dst dev index`; a route already gone is not an error.
    pub fn route_del(&self, dst: Ipv4Subnet, index: u32) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr(), dst.prefix())
            .output_interface(index)
            .build();
        match self.rt.block_on(self.handle.route().del(msg).execute()) {
            Err(e) if errno(&e) != Some(libc::ESRCH) => {
                Err(Error::netlink(format!("delete route {dst} dev {index}"), e))
            }
            _ => Ok(()),
        }
    }

    pub fn set_up(&self, index: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).up().build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(|e| Error::netlink(format!("set link {index} up"), e))
    }

    pub fn set_controller(&self, index: u32, bridge: u32) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).controller(bridge).build();
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(|e| Error::netlink(format!("set link {index} master {bridge}"), e))
    }

    /// Delete a link; deleting one that is already gone is not an error.
    pub fn del_link(&self, index: u32) -> Result<()> {
        match self.rt.block_on(self.handle.link().del(index).execute()) {
            Err(e) if errno(&e) != Some(libc::ENODEV) => {
                Err(Error::netlink(format!("delete link {index}"), e))
            }
            _ => Ok(()),
        }
    }

    /// IPv4 addresses `(link index, address, prefix length)`, of one link or all.
    pub fn addrs(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        self.rt.block_on(async {
            let mut req = self.handle.address().get();
            if let Some(i) = index {
                req = req.set_link_index_filter(i);
            }
            let mut s = req.execute();
            let mut v = Vec::new();
            while let Some(m) = s
                .try_next()
                .await
                .map_err(|e| Error::netlink("dump addresses", e))?
            {
                for a in &m.attributes {
                    if let AddressAttribute::Address(IpAddr::V4(ip)) = a {
                        v.push((m.header.index, *ip, m.header.prefix_len));
                    }
                }
            }
            Ok(v)
        })
    }

    /// Make `ip/prefix` the only IPv4 address on the link (converges after a
    /// contract changed the subnet).
    pub fn ensure_only_addr(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        self.rt.block_on(async {
            let mut present = false;
            let mut s = self
                .handle
                .address()
                .get()
                .set_link_index_filter(index)
                .execute();
            let mut stale = Vec::new();
            while let Some(m) = s
                .try_next()
                .await
                .map_err(|e| Error::netlink("dump addresses", e))?
            {
                let mine = m
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(a)) if *a == ip))
                    && m.header.prefix_len == prefix;
                let v4 = m
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(_))));
                if mine {
                    present = true;
                } else if v4 {
                    stale.push(m);
                }
            }
            for m in stale {
                self.handle
                    .address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(|e| Error::netlink(format!("delete stale address on {index}"), e))?;
            }
            if !present {
                self.handle
                    .address()
                    .add(index, IpAddr::V4(ip), prefix)
                    .execute()
                    .await
                    .map_err(|e| Error::netlink(format!("add {ip}/{prefix} on {index}"), e))?;
            }
            Ok(())
        })
    }

    /// `ip route replace default via gw dev index`.
    pub fn default_route(&self, gw: Ipv4Addr, index: u32) -> Result<()> {
        let msg = RouteMessageBuilder::<Ipv4Addr>::new()
            .gateway(gw)
            .output_interface(index)
            .build();
        self.rt
            .block_on(self.handle.route().add(msg).replace().execute())
            .map_err(|e| Error::netlink(format!("default route via {gw}"), e))
    }
}
