//! DHCPv4 messages (RFC 2131/2132) through `dhcproto`: the requests this client
//! sends, and the checks a reply must pass before anything in it is used.

use std::net::Ipv4Addr;

use dhcproto::v4::{
    DhcpOption, Flags, Message, MessageType, Opcode, OptionCode, CLIENT_PORT, MAGIC,
};
use dhcproto::{Decodable, Decoder, Encodable};

use super::{Lease, PacketError};

pub const SERVER_PORT: u16 = dhcproto::v4::SERVER_PORT;
pub const CLIENT: u16 = CLIENT_PORT;

/// Fixed BOOTP header (236 bytes) plus the 4-byte magic cookie.
pub const MIN_LEN: usize = 240;
/// Largest reply accepted: what we advertise in option 57 (an Ethernet MTU).
pub const MAX_LEN: usize = 1500;

/// Options asked for in every DISCOVER and REQUEST (option 55).
const WANTED: [OptionCode; 8] = [
    OptionCode::SubnetMask,
    OptionCode::Router,
    OptionCode::DomainNameServer,
    OptionCode::DomainName,
    OptionCode::NtpServers,
    OptionCode::AddressLeaseTime,
    OptionCode::Renewal,
    OptionCode::Rebinding,
];

/// Who we are on the wire, the same in every message of one client.
#[derive(Clone, Debug)]
pub struct Client {
    pub mac: Vec<u8>,
    pub hostname: Option<String>,
}

impl Client {
    fn base(&self, xid: u32, secs: u16, kind: MessageType, ciaddr: Ipv4Addr) -> Message {
        let mut m = Message::new_with_id(
            xid,
            ciaddr,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &self.mac,
        );
        m.set_secs(secs);
        // Until the address is configured the kernel cannot accept a unicast reply
        // to it: ask servers to broadcast (a renewal, from a configured address,
        // does not).
        if ciaddr.is_unspecified() {
            m.set_flags(Flags::default().set_broadcast());
        }
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        // RFC 2132 9.14: type 1 (Ethernet) + MAC, so servers keep our lease across
        // requests.
        let mut cid = vec![1u8];
        cid.extend_from_slice(&self.mac);
        o.insert(DhcpOption::ClientIdentifier(cid));
        o.insert(DhcpOption::MaxMessageSize(MAX_LEN as u16));
        o.insert(DhcpOption::ParameterRequestList(WANTED.to_vec()));
        if let Some(h) = &self.hostname {
            o.insert(DhcpOption::Hostname(h.clone()));
        }
        m
    }

    pub fn discover(&self, xid: u32, secs: u16) -> Vec<u8> {
        encode(&self.base(xid, secs, MessageType::Discover, Ipv4Addr::UNSPECIFIED))
    }

    /// REQUEST in the SELECTING state: names the offer it takes (RFC 2131 4.3.2).
    pub fn request_offer(&self, xid: u32, secs: u16, offer: &Offer) -> Vec<u8> {
        let mut m = self.base(xid, secs, MessageType::Request, Ipv4Addr::UNSPECIFIED);
        m.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(offer.address));
        m.opts_mut()
            .insert(DhcpOption::ServerIdentifier(offer.server));
        encode(&m)
    }

    /// REQUEST in the RENEWING state: ciaddr filled, no server id nor requested
    /// address, unicast to the server that granted the lease.
    pub fn request_renew(&self, xid: u32, secs: u16, address: Ipv4Addr) -> Vec<u8> {
        encode(&self.base(xid, secs, MessageType::Request, address))
    }
}

fn encode(m: &Message) -> Vec<u8> {
    // Encoding our own, bounded messages into a Vec cannot fail: every field we set
    // fits its wire size.
    m.to_vec().expect("encoding a DHCP request into a Vec")
}

/// An OFFER worth requesting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    pub address: Ipv4Addr,
    pub server: Ipv4Addr,
}

/// A reply to one of our requests, checked.
#[derive(Debug)]
pub enum Reply {
    Offer(Offer),
    Ack(Lease),
    Nak {
        server: Option<Ipv4Addr>,
        message: Option<String>,
    },
}

/// Decode and check a datagram that arrived on the client port. `Err` means it is
/// not for us or not usable; the caller discards it and keeps waiting (RFC 2131
/// 4.1: replies that do not match are silently ignored).
pub fn parse_reply(buf: &[u8], xid: u32, mac: &[u8]) -> Result<Reply, PacketError> {
    if buf.len() < MIN_LEN {
        return Err(PacketError::Truncated { len: buf.len() });
    }
    if buf.len() > MAX_LEN {
        return Err(PacketError::Oversized {
            len: buf.len(),
            max: MAX_LEN,
        });
    }
    if buf[236..240] != MAGIC {
        return Err(PacketError::BadMagic);
    }
    // dhcproto slices chaddr by hlen: more than its 16 bytes panics (found by
    // `cargo xtask fuzz dhcp`; anyone on the LAN who read our xid could send it).
    if buf[2] > 16 {
        return Err(PacketError::BadHardwareLength(buf[2]));
    }
    let codes = option_codes(&buf[MIN_LEN..])?;
    let m = Message::decode(&mut Decoder::new(buf)).map_err(PacketError::Decode)?;
    // dhcproto stops decoding options at the first one it cannot parse and keeps
    // the rest silently: a reply that lost an option that way is refused, rather
    // than acted upon with half its options.
    if let Some(code) = codes
        .iter()
        .find(|c| !m.opts().contains(OptionCode::from(**c)))
    {
        return Err(PacketError::BadOption(*code));
    }
    if m.opcode() != Opcode::BootReply {
        return Err(PacketError::NotAReply);
    }
    if m.xid() != xid {
        return Err(PacketError::OtherTransaction { xid: m.xid() });
    }
    if m.chaddr() != mac {
        return Err(PacketError::OtherClient);
    }
    let server = match m.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => Some(*s),
        _ => None,
    };
    match m.opts().msg_type() {
        Some(MessageType::Offer) => {
            let server = server.ok_or(PacketError::MissingOption("server identifier"))?;
            let address = usable_address(m.yiaddr())?;
            Ok(Reply::Offer(Offer { address, server }))
        }
        Some(MessageType::Ack) => Ok(Reply::Ack(lease(&m, server)?)),
        Some(MessageType::Nak) => {
            let message = match m.opts().get(OptionCode::Message) {
                Some(DhcpOption::Message(s)) => Some(s.clone()),
                _ => None,
            };
            Ok(Reply::Nak { server, message })
        }
        Some(other) => Err(PacketError::UnexpectedType(format!("{other:?}"))),
        None => Err(PacketError::MissingOption("message type")),
    }
}

/// The distinct option codes of the options area, checking that every option
/// lies within the datagram and that the list is closed by End (RFC 2132 3).
fn option_codes(mut area: &[u8]) -> Result<Vec<u8>, PacketError> {
    let mut codes = Vec::new();
    loop {
        match area {
            [] => return Err(PacketError::OptionsOverrun("no End option")),
            [255, ..] => return Ok(codes),
            [0, rest @ ..] => area = rest,
            [code, len, rest @ ..] if rest.len() >= usize::from(*len) => {
                if !length_fits(*code, *len) {
                    return Err(PacketError::BadOption(*code));
                }
                if !codes.contains(code) {
                    codes.push(*code);
                }
                area = &rest[usize::from(*len)..];
            }
            _ => return Err(PacketError::OptionsOverrun("an option runs past the end")),
        }
    }
}

/// Options whose length dhcproto only `debug_assert!`s (a panic in a debug build, a
/// misread in a release one): their lengths are checked here first.
fn length_fits(code: u8, len: u8) -> bool {
    match code {
        80 => len == 0,        // rapid commit
        81 => len >= 3,        // client FQDN: flags, two rcodes, name
        94 => len == 3,        // client network interface
        152..=155 => len == 4, // bulk lease query times
        _ => true,
    }
}

fn usable_address(a: Ipv4Addr) -> Result<Ipv4Addr, PacketError> {
    if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
        return Err(PacketError::BadAddress(a));
    }
    Ok(a)
}

/// Prefix length of a contiguous netmask; a mask with holes is refused.
pub fn prefix_len(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    (m.checked_shl(ones).unwrap_or(0) == 0).then_some(ones as u8)
}

fn addrs(m: &Message, code: OptionCode) -> Vec<Ipv4Addr> {
    match m.opts().get(code) {
        Some(
            DhcpOption::Router(v) | DhcpOption::DomainNameServer(v) | DhcpOption::NtpServers(v),
        ) => v
            .iter()
            .copied()
            .filter(|a| !a.is_unspecified() && !a.is_broadcast())
            .collect(),
        _ => Vec::new(),
    }
}

fn u32_opt(m: &Message, code: OptionCode) -> Option<u32> {
    match m.opts().get(code) {
        Some(
            DhcpOption::AddressLeaseTime(t) | DhcpOption::Renewal(t) | DhcpOption::Rebinding(t),
        ) => Some(*t),
        _ => None,
    }
}

/// The lease an ACK grants, refusing what the node could not safely configure.
fn lease(m: &Message, server: Option<Ipv4Addr>) -> Result<Lease, PacketError> {
    let server = server.ok_or(PacketError::MissingOption("server identifier"))?;
    let address = usable_address(m.yiaddr())?;
    let mask = match m.opts().get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(mask)) => *mask,
        _ => return Err(PacketError::MissingOption("subnet mask")),
    };
    let prefix_len = match prefix_len(mask) {
        Some(p) if (1..=32).contains(&p) => p,
        _ => return Err(PacketError::BadNetmask(mask)),
    };
    let lease_secs =
        u32_opt(m, OptionCode::AddressLeaseTime).ok_or(PacketError::MissingOption("lease time"))?;
    if lease_secs == 0 {
        return Err(PacketError::ZeroLease);
    }
    // RFC 2131 4.4.5 defaults: T1 = 0.5 * lease, T2 = 0.875 * lease; a server
    // value that is not below the lease time is not a renewal time.
    let rebind_secs = u32_opt(m, OptionCode::Rebinding)
        .filter(|t| *t < lease_secs)
        .unwrap_or((u64::from(lease_secs) * 7 / 8) as u32);
    let renew_secs = u32_opt(m, OptionCode::Renewal)
        .filter(|t| *t <= rebind_secs)
        .unwrap_or(lease_secs / 2)
        .min(rebind_secs);
    let domain = match m.opts().get(OptionCode::DomainName) {
        // Some servers count a trailing NUL in the option length.
        Some(DhcpOption::DomainName(d)) => {
            let d = d.trim_end_matches('\0').trim_end_matches('.');
            (!d.is_empty() && d.len() <= 253 && d.is_ascii()).then(|| d.to_string())
        }
        _ => None,
    };
    Ok(Lease {
        address,
        prefix_len,
        router: addrs(m, OptionCode::Router).into_iter().next(),
        dns: addrs(m, OptionCode::DomainNameServer),
        ntp: addrs(m, OptionCode::NtpServers),
        domain,
        lease_secs,
        renew_secs,
        rebind_secs,
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x42];
    const XID: u32 = 0x1234_5678;

    fn reply(kind: MessageType, edit: impl FnOnce(&mut Message)) -> Vec<u8> {
        let mut m = Message::new_with_id(
            XID,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::new(10, 0, 0, 50),
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &MAC,
        );
        m.set_opcode(Opcode::BootReply);
        let o = m.opts_mut();
        o.insert(DhcpOption::MessageType(kind));
        o.insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 1)));
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)));
        o.insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 0, 1)]));
        o.insert(DhcpOption::DomainNameServer(vec![
            Ipv4Addr::new(10, 0, 0, 2),
            Ipv4Addr::new(10, 0, 0, 3),
        ]));
        o.insert(DhcpOption::NtpServers(vec![Ipv4Addr::new(10, 0, 0, 4)]));
        o.insert(DhcpOption::DomainName("zt.test\0".into()));
        o.insert(DhcpOption::AddressLeaseTime(3600));
        edit(&mut m);
        m.to_vec().unwrap()
    }

    #[test]
    fn ack_becomes_a_lease() {
        let r = parse_reply(&reply(MessageType::Ack, |_| {}), XID, &MAC).unwrap();
        let Reply::Ack(l) = r else { panic!("{r:?}") };
        assert_eq!(l.address, Ipv4Addr::new(10, 0, 0, 50));
        assert_eq!(l.prefix_len, 24);
        assert_eq!(l.router, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(l.dns.len(), 2);
        assert_eq!(l.ntp, vec![Ipv4Addr::new(10, 0, 0, 4)]);
        assert_eq!(l.domain.as_deref(), Some("zt.test"));
        assert_eq!(
            (l.lease_secs, l.renew_secs, l.rebind_secs),
            (3600, 1800, 3150)
        );
        assert_eq!(l.server, Ipv4Addr::new(10, 0, 0, 1));
    }

    #[test]
    fn offer_and_nak() {
        let r = parse_reply(&reply(MessageType::Offer, |_| {}), XID, &MAC).unwrap();
        assert!(
            matches!(r, Reply::Offer(Offer { address, .. }) if address == Ipv4Addr::new(10, 0, 0, 50))
        );
        let nak = reply(MessageType::Nak, |m| {
            m.opts_mut()
                .insert(DhcpOption::Message("wrong network".into()));
        });
        let r = parse_reply(&nak, XID, &MAC).unwrap();
        assert!(matches!(r, Reply::Nak { message: Some(ref s), .. } if s == "wrong network"));
    }

    #[test]
    fn requests_decode_as_what_we_meant() {
        let c = Client {
            mac: MAC.to_vec(),
            hostname: Some("node1".into()),
        };
        let d = Message::from_bytes(&c.discover(XID, 3)).unwrap();
        assert_eq!(d.opts().msg_type(), Some(MessageType::Discover));
        assert!(d.flags().broadcast());
        assert_eq!((d.xid(), d.secs(), d.chaddr()), (XID, 3, &MAC[..]));
        let offer = Offer {
            address: Ipv4Addr::new(10, 0, 0, 50),
            server: Ipv4Addr::new(10, 0, 0, 1),
        };
        let r = Message::from_bytes(&c.request_offer(XID, 4, &offer)).unwrap();
        assert_eq!(r.opts().msg_type(), Some(MessageType::Request));
        assert!(matches!(
            r.opts().get(OptionCode::RequestedIpAddress),
            Some(DhcpOption::RequestedIpAddress(a)) if *a == offer.address
        ));
        let n = Message::from_bytes(&c.request_renew(XID, 0, offer.address)).unwrap();
        assert_eq!(n.ciaddr(), offer.address);
        assert!(!n.flags().broadcast());
        assert!(n.opts().get(OptionCode::ServerIdentifier).is_none());
    }

    #[test]
    fn foreign_and_malformed_replies_are_refused() {
        let ok = reply(MessageType::Ack, |_| {});
        assert!(matches!(
            parse_reply(&ok, XID + 1, &MAC),
            Err(PacketError::OtherTransaction { .. })
        ));
        assert!(matches!(
            parse_reply(&ok, XID, &[2, 0, 0, 0, 0, 0x43]),
            Err(PacketError::OtherClient)
        ));
        assert!(matches!(
            parse_reply(&ok[..200], XID, &MAC),
            Err(PacketError::Truncated { len: 200 })
        ));
        let mut big = ok.clone();
        big.resize(MAX_LEN + 1, 0);
        assert!(matches!(
            parse_reply(&big, XID, &MAC),
            Err(PacketError::Oversized { .. })
        ));
        let mut magic = ok.clone();
        magic[236] ^= 0xff;
        assert!(matches!(
            parse_reply(&magic, XID, &MAC),
            Err(PacketError::BadMagic)
        ));
        // An option whose length runs past the end of the datagram.
        let mut cut = ok[..MIN_LEN].to_vec();
        cut.extend_from_slice(&[53, 1, 5, 6, 200, 10]);
        assert!(matches!(
            parse_reply(&cut, XID, &MAC),
            Err(PacketError::OptionsOverrun(_))
        ));
        // No End option.
        let mut open = ok[..MIN_LEN].to_vec();
        open.extend_from_slice(&[53, 1, 5]);
        assert!(matches!(
            parse_reply(&open, XID, &MAC),
            Err(PacketError::OptionsOverrun("no End option"))
        ));
        // A well-framed subnet mask of 3 bytes, which dhcproto would drop
        // silently together with every option after it.
        let mut bad = ok[..MIN_LEN].to_vec();
        bad.extend_from_slice(&[53, 1, 5, 1, 3, 255, 255, 255, 3, 4, 10, 0, 0, 1, 255]);
        assert!(matches!(
            parse_reply(&bad, XID, &MAC),
            Err(PacketError::BadOption(1))
        ));
        let mut request = ok.clone();
        request[0] = 1;
        assert!(matches!(
            parse_reply(&request, XID, &MAC),
            Err(PacketError::NotAReply)
        ));
    }

    #[test]
    fn unusable_leases_are_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                reply(MessageType::Ack, |m| {
                    m.opts_mut().remove(OptionCode::SubnetMask);
                }),
                "missing subnet mask",
            ),
            (
                reply(MessageType::Ack, |m| {
                    m.opts_mut()
                        .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 0, 255, 0)));
                }),
                "bad netmask",
            ),
            (
                reply(MessageType::Ack, |m| {
                    m.opts_mut().insert(DhcpOption::AddressLeaseTime(0));
                }),
                "zero lease",
            ),
            (
                reply(MessageType::Ack, |m| {
                    m.opts_mut().remove(OptionCode::AddressLeaseTime);
                }),
                "missing lease time",
            ),
            (
                reply(MessageType::Ack, |m| {
                    m.opts_mut().remove(OptionCode::ServerIdentifier);
                }),
                "missing server identifier",
            ),
            (
                reply(MessageType::Ack, |m| {
                    m.set_yiaddr(Ipv4Addr::BROADCAST);
                }),
                "bad address",
            ),
        ];
        for (buf, what) in cases {
            let e = parse_reply(&buf, XID, &MAC).unwrap_err();
            let ok = match what {
                "missing subnet mask" => matches!(e, PacketError::MissingOption("subnet mask")),
                "bad netmask" => matches!(e, PacketError::BadNetmask(_)),
                "zero lease" => matches!(e, PacketError::ZeroLease),
                "missing lease time" => matches!(e, PacketError::MissingOption("lease time")),
                "missing server identifier" => {
                    matches!(e, PacketError::MissingOption("server identifier"))
                }
                "bad address" => matches!(e, PacketError::BadAddress(_)),
                _ => unreachable!(),
            };
            assert!(ok, "{what}: got {e:?}");
        }
    }

    #[test]
    fn server_renewal_times_are_bounded_by_the_lease() {
        let buf = reply(MessageType::Ack, |m| {
            m.opts_mut().insert(DhcpOption::Renewal(100));
            m.opts_mut().insert(DhcpOption::Rebinding(7200));
        });
        let Reply::Ack(l) = parse_reply(&buf, XID, &MAC).unwrap() else {
            panic!()
        };
        // T2 beyond the lease is ignored (default 7/8), T1 kept.
        assert_eq!((l.renew_secs, l.rebind_secs), (100, 3150));
    }

    #[test]
    fn netmask_prefix() {
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(prefix_len(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(prefix_len(Ipv4Addr::new(255, 255, 0, 255)), None);
    }

    #[test]
    fn the_fuzzers_crashing_replies_are_refused_not_panicked_on() {
        // Found from the crate's directory up (the fuzz harness compiles this file too).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .ancestors()
            .map(|d| d.join("fuzz/regressions/dhcp"))
            .find(|d| d.is_dir())
            .expect("fuzz/regressions/dhcp above the crate");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("the fuzz regressions") {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("bin") {
                continue;
            }
            let buf = std::fs::read(&path).unwrap();
            // Our xid and address as the input carries them (a LAN attacker reads both
            // off our broadcast): the parse must return an error, not panic.
            let xid = u32::from_be_bytes(buf[4..8].try_into().unwrap());
            let r = parse_reply(&buf, xid, &buf[28..34]);
            assert!(r.is_err(), "{}: {r:?}", path.display());
            seen += 1;
        }
        assert!(seen >= 4, "{seen} inputs in {}", dir.display());
    }
}
