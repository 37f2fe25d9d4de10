//! WireGuard's generic netlink family (`include/uapi/linux/wireguard.h`) over a plain
//! synchronous netlink socket: resolve the family id by name (the ctrl family), then
//! `WG_CMD_SET_DEVICE` (one request, acknowledged) and `WG_CMD_GET_DEVICE` (a dump,
//! possibly split over several messages when a device has many peers).
//!
//! Like [`crate::nl::Nl`], a [`Genl`] is opened on the thread that entered the
//! namespace it concerns: WireGuard's genetlink looks the device up by index in the
//! socket's namespace.

use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_generic::ctrl::nlas::GenlCtrlAttrs;
use netlink_packet_generic::ctrl::{GenlCtrl, GenlCtrlCmd};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use netlink_sys::protocols::NETLINK_GENERIC;
use netlink_sys::{Socket, SocketAddr as NlAddr};

use crate::error::{Error, Result};
use crate::mesh::{MeshPeer, WgDevice, WgPeer};
use crate::subnet::Ipv4Subnet;

/// The family's name, as the WireGuard module registers it.
pub const FAMILY: &str = "wireguard";

/// A generic netlink socket in the calling thread's namespace.
pub struct Genl {
    sock: Socket,
    seq: u32,
}

fn wg_err(op: impl Into<String>, source: std::io::Error) -> Error {
    Error::Wireguard {
        op: op.into(),
        source,
    }
}

impl Genl {
    /// Open a generic netlink socket in the calling thread's network namespace.
    pub fn new() -> Result<Genl> {
        let mut sock = Socket::new(NETLINK_GENERIC).map_err(|e| wg_err("genetlink socket", e))?;
        sock.bind_auto()
            .map_err(|e| wg_err("bind genetlink socket", e))?;
        sock.connect(&NlAddr::new(0, 0))
            .map_err(|e| wg_err("connect genetlink socket", e))?;
        Ok(Genl { sock, seq: 0 })
    }

    /// Send one request and collect the answers up to the ACK (or the end of a dump).
    /// A NACK is the errno it carries.
    fn request<I>(&mut self, op: &str, msg: I, flags: u16) -> Result<Vec<I>>
    where
        I: NetlinkSerializable + NetlinkDeserializable + std::fmt::Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let mut nl =
            NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::InnerMessage(msg));
        nl.header.flags = flags;
        nl.header.sequence_number = self.seq;
        nl.finalize();
        let mut buf = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut buf);
        self.sock
            .send(&buf, 0)
            .map_err(|e| wg_err(format!("{op}: send"), e))?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self
                .sock
                .recv_from_full()
                .map_err(|e| wg_err(format!("{op}: receive"), e))?;
            let mut offset = 0;
            while offset < data.len() {
                let m = NetlinkMessage::<I>::deserialize(&data[offset..]).map_err(|e| {
                    wg_err(
                        format!("{op}: decode"),
                        std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
                    )
                })?;
                let len = m.header.length as usize;
                if m.header.sequence_number == self.seq {
                    match m.payload {
                        NetlinkPayload::Done(_) => return Ok(out),
                        NetlinkPayload::Error(e) if e.code.is_none() => return Ok(out),
                        NetlinkPayload::Error(e) => return Err(wg_err(op, e.to_io())),
                        NetlinkPayload::InnerMessage(i) => {
                            out.push(i);
                            if flags & NLM_F_DUMP != NLM_F_DUMP && flags & NLM_F_ACK == 0 {
                                return Ok(out);
                            }
                        }
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                offset += len;
            }
        }
    }

    /// The id of generic netlink family `name`; `None` when it is not registered
    /// (for "wireguard": the module is not loaded and not built in).
    pub fn family_id(&mut self, name: &str) -> Result<Option<u16>> {
        let mut msg = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![GenlCtrlAttrs::FamilyName(name.into())],
        });
        msg.finalize();
        match self.request(
            &format!("resolve family {name}"),
            msg,
            NLM_F_REQUEST | NLM_F_ACK,
        ) {
            Ok(answers) => Ok(answers.iter().find_map(|m| {
                m.payload.nlas.iter().find_map(|a| match a {
                    GenlCtrlAttrs::FamilyId(id) => Some(*id),
                    _ => None,
                })
            })),
            Err(Error::Wireguard { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn wireguard_id(&mut self) -> Result<u16> {
        self.family_id(FAMILY)?.ok_or(Error::WireguardMissing)
    }

    fn wg_request(
        &mut self,
        op: &str,
        cmd: WireguardCmd,
        attributes: Vec<WireguardAttribute>,
        flags: u16,
    ) -> Result<Vec<WireguardMessage>> {
        let id = self.wireguard_id()?;
        let mut msg = GenlMessage::from_payload(WireguardMessage { cmd, attributes });
        msg.finalize();
        msg.set_resolved_family_id(id);
        Ok(self
            .request(op, msg, flags)?
            .into_iter()
            .map(|m| m.payload)
            .collect())
    }

    /// `WG_CMD_SET_DEVICE` on link `index`: this private key; the peers `remove`
    /// removed (`WGPEER_F_REMOVE_ME`); `peers` added or updated, each with exactly its
    /// allowed IPs (`WGPEER_F_REPLACE_ALLOWEDIPS`), endpoint and keepalive. One
    /// request, so one atomic change. The listen port is never
    /// set: the kernel picks a free one when the link first goes up and keeps it.
    pub fn set_device(
        &mut self,
        index: u32,
        private_key: &[u8; 32],
        peers: &[MeshPeer],
        remove: &[[u8; 32]],
    ) -> Result<()> {
        let mut all: Vec<WireguardPeer> = remove
            .iter()
            .map(|k| {
                WireguardPeer(vec![
                    WireguardPeerAttribute::PublicKey(*k),
                    WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
                ])
            })
            .collect();
        all.extend(peers.iter().map(peer_attrs));
        let mut attrs = vec![
            WireguardAttribute::IfIndex(index),
            WireguardAttribute::PrivateKey(*private_key),
        ];
        if !all.is_empty() {
            attrs.push(WireguardAttribute::Peers(all));
        }
        self.wg_request(
            &format!("set device {index}"),
            WireguardCmd::SetDevice,
            attrs,
            NLM_F_REQUEST | NLM_F_ACK,
        )
        .map(|_| ())
    }

    /// `WG_CMD_GET_DEVICE` on link `index` (a dump): the device and its peers, merged
    /// from every message of the dump.
    pub fn get_device(&mut self, index: u32) -> Result<WgDevice> {
        let msgs = self.wg_request(
            &format!("get device {index}"),
            WireguardCmd::GetDevice,
            vec![WireguardAttribute::IfIndex(index)],
            NLM_F_REQUEST | NLM_F_DUMP,
        )?;
        Ok(merge(msgs))
    }
}

fn peer_attrs(p: &MeshPeer) -> WireguardPeer {
    let mut attrs = vec![
        WireguardPeerAttribute::PublicKey(p.public_key),
        WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
        WireguardPeerAttribute::PersistentKeepalive(p.keepalive_s.unwrap_or(0)),
        WireguardPeerAttribute::AllowedIps(vec![WireguardAllowedIp(vec![
            WireguardAllowedIpAttr::Family(WireguardAddressFamily::Ipv4),
            WireguardAllowedIpAttr::IpAddr(IpAddr::V4(p.allowed.addr())),
            WireguardAllowedIpAttr::Cidr(p.allowed.prefix()),
        ])]),
    ];
    if let Some(e) = p.endpoint {
        attrs.push(WireguardPeerAttribute::Endpoint(e));
    }
    WireguardPeer(attrs)
}

fn allowed_of(a: &WireguardAllowedIp) -> Option<Ipv4Subnet> {
    let mut ip = None;
    let mut cidr = None;
    for attr in &a.0 {
        match attr {
            WireguardAllowedIpAttr::IpAddr(IpAddr::V4(v4)) => ip = Some(*v4),
            WireguardAllowedIpAttr::Cidr(c) => cidr = Some(*c),
            _ => {}
        }
    }
    Ipv4Subnet::new(ip?, cidr?).ok()
}

fn peer_of(p: &WireguardPeer) -> WgPeer {
    let mut out = WgPeer::default();
    for a in &p.0 {
        match a {
            WireguardPeerAttribute::PublicKey(k) => out.public_key = *k,
            WireguardPeerAttribute::Endpoint(e) => out.endpoint = Some(*e),
            WireguardPeerAttribute::PersistentKeepalive(k) => out.keepalive_s = *k,
            // Zero: never.
            WireguardPeerAttribute::LastHandshake(t) if t.seconds > 0 || t.nano_seconds > 0 => {
                out.last_handshake = Some(
                    UNIX_EPOCH
                        + Duration::new(
                            u64::try_from(t.seconds).unwrap_or(0),
                            u32::try_from(t.nano_seconds).unwrap_or(0),
                        ),
                );
            }
            WireguardPeerAttribute::RxBytes(b) => out.rx_bytes = *b,
            WireguardPeerAttribute::TxBytes(b) => out.tx_bytes = *b,
            WireguardPeerAttribute::AllowedIps(ips) => {
                out.allowed.extend(ips.iter().filter_map(allowed_of))
            }
            _ => {}
        }
    }
    out
}

/// One device from the messages of a dump: the device attributes repeat in each, the
/// peers continue (a peer whose allowed IPs did not fit goes on in the next message
/// under the same public key).
fn merge(msgs: Vec<WireguardMessage>) -> WgDevice {
    let mut dev = WgDevice::default();
    for m in msgs {
        for a in m.attributes {
            match a {
                WireguardAttribute::ListenPort(p) => dev.listen_port = p,
                WireguardAttribute::PrivateKey(k) => dev.private_key = Some(k),
                WireguardAttribute::PublicKey(k) => dev.public_key = Some(k),
                WireguardAttribute::Peers(peers) => {
                    for p in peers.iter().map(peer_of) {
                        match dev.peers.last_mut() {
                            Some(last) if last.public_key == p.public_key => {
                                last.allowed.extend(p.allowed)
                            }
                            _ => dev.peers.push(p),
                        }
                    }
                }
                _ => {}
            }
        }
    }
    dev
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;
    use netlink_packet_core::ParseableParametrized;
    use netlink_packet_generic::GenlHeader;

    fn peer(k: u8, allowed: &str, endpoint: Option<&str>) -> MeshPeer {
        MeshPeer {
            public_key: [k; 32],
            endpoint: endpoint.map(|e| e.parse().unwrap()),
            allowed: allowed.parse().unwrap(),
            keepalive_s: Some(25),
        }
    }

    /// What set_device sends parses back (through the crate's own parser) to the
    /// peers it was made from: keys, endpoints, allowed IPs, keepalive.
    #[test]
    fn set_device_attributes_round_trip() {
        let peers = [
            peer(1, "10.20.4.0/22", Some("203.0.113.7:51820")),
            peer(2, "10.20.8.0/22", None),
        ];
        let msg = WireguardMessage {
            cmd: WireguardCmd::SetDevice,
            attributes: vec![
                WireguardAttribute::IfIndex(7),
                WireguardAttribute::Peers(peers.iter().map(peer_attrs).collect()),
            ],
        };
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.emit(&mut buf);
        let back =
            WireguardMessage::parse_with_param(&buf, GenlHeader { cmd: 1, version: 1 }).unwrap();
        let dev = merge(vec![back]);
        assert_eq!(dev.peers.len(), 2);
        assert_eq!(dev.peers[0].public_key, [1; 32]);
        assert_eq!(dev.peers[0].endpoint, peers[0].endpoint);
        assert_eq!(dev.peers[0].allowed, [peers[0].allowed]);
        assert_eq!(dev.peers[0].keepalive_s, 25);
        assert_eq!(dev.peers[1].endpoint, None);
        assert_eq!(dev.peers[1].allowed, [peers[1].allowed]);
    }

    /// The family lookup on the real kernel (unprivileged): the controller itself
    /// resolves (id 16, GENL_ID_CTRL), a family nobody registered is `None`, not an
    /// error (what a kernel without WireGuard answers for "wireguard").
    #[test]
    fn family_lookup_on_this_kernel() {
        let mut g = Genl::new().unwrap();
        assert_eq!(g.family_id("nlctrl").unwrap(), Some(16));
        assert_eq!(g.family_id("zosnofamily").unwrap(), None);
        // The socket stays usable after a NACK.
        assert_eq!(g.family_id("nlctrl").unwrap(), Some(16));
        // A dump (what WG_CMD_GET_DEVICE is): several datagrams up to NLMSG_DONE.
        let mut all = GenlMessage::from_payload(GenlCtrl {
            cmd: GenlCtrlCmd::GetFamily,
            nlas: vec![],
        });
        all.finalize();
        let families = g
            .request("dump families", all, NLM_F_REQUEST | NLM_F_DUMP)
            .unwrap();
        let names: Vec<String> = families
            .iter()
            .flat_map(|m| m.payload.nlas.iter())
            .filter_map(|a| match a {
                GenlCtrlAttrs::FamilyName(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        assert!(names.len() > 1, "{names:?}");
        assert!(names.iter().any(|n| n == "nlctrl"), "{names:?}");
        assert_eq!(
            g.family_id("nlctrl").unwrap(),
            Some(16),
            "usable after a dump"
        );
    }

    #[test]
    fn a_peer_split_over_two_messages_is_one_peer() {
        let part = |allowed: &str| WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![
                WireguardAttribute::ListenPort(40000),
                WireguardAttribute::Peers(vec![peer_attrs(&peer(3, allowed, None))]),
            ],
        };
        let dev = merge(vec![part("10.0.0.0/28"), part("10.0.0.16/28")]);
        assert_eq!(dev.listen_port, 40000);
        assert_eq!(dev.peers.len(), 1);
        assert_eq!(dev.peers[0].allowed.len(), 2);
    }
}
