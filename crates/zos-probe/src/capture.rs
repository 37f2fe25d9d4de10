//! A capture of packet headers on every link of the namespace: one line per packet
//! (time, interface, direction, protocol, addresses, ports, length, TCP flags).
//!
//! The socket is AF_PACKET in cooked mode (SOCK_DGRAM, every protocol): the kernel
//! strips the link header and names the L3 protocol, so Ethernet, loopback and tun
//! links read alike. At most [`SNAP`] bytes of a packet are read, and a line is
//! built only from header fields parsed out of them: no payload byte is ever put in
//! a line.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::time::Instant;

use nix::sys::socket::{self, sockopt, AddressFamily, LinkAddr, SockFlag, SockProtocol, SockType};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::{left, Outcome, ProbeError};

/// Bytes read of each packet: an IPv6 header and a TCP header with options fit.
const SNAP: usize = 128;

pub(crate) fn capture(packets: u16, until: Instant) -> Outcome {
    let mut lines = vec![];
    let r = (|| {
        let fd = socket::socket(
            AddressFamily::Packet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .map_err(ProbeError::nix("packet socket"))?;
        let start = Instant::now();
        let mut names: HashMap<usize, String> = HashMap::new();
        let mut buf = [0u8; SNAP];
        while lines.len() < usize::from(packets) {
            let Some(t) = left(until) else { break };
            let tv = TimeVal::microseconds(t.as_micros().min(i64::MAX as u128) as i64);
            socket::setsockopt(&fd, sockopt::ReceiveTimeout, &tv)
                .map_err(ProbeError::nix("receive timeout"))?;
            let (n, from) = match socket::recvfrom::<LinkAddr>(fd.as_raw_fd(), &mut buf) {
                Ok(r) => r,
                Err(nix::Error::EAGAIN | nix::Error::EINTR) => continue,
                Err(e) => return Err(ProbeError::nix("receive")(e)),
            };
            let at = start.elapsed();
            let Some(from) = from else { continue };
            let ifname = names
                .entry(from.ifindex())
                .or_insert_with(|| {
                    nix::net::if_::if_indextoname(from.ifindex() as u32)
                        .map(|c| c.to_string_lossy().into_owned())
                        .unwrap_or_else(|_| format!("if{}", from.ifindex()))
                })
                .clone();
            let dir = if from.pkttype() == libc::PACKET_OUTGOING {
                "out"
            } else {
                "in"
            };
            let head = describe(u16::from_be(from.protocol()), &buf[..n]);
            lines.push(format!("+{:.6}s {ifname} {dir} {head}", at.as_secs_f64()));
        }
        Ok(())
    })();
    match r {
        Ok(()) if !lines.is_empty() => Outcome {
            ok: true,
            lines,
            error: None,
        },
        Ok(()) => Outcome::failed(
            lines,
            ProbeError::io("capture")(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no packet seen",
            )),
        ),
        Err(e) => Outcome::failed(lines, e),
    }
}

/// The header line of one packet whose L3 protocol is `ethertype`.
pub(crate) fn describe(ethertype: u16, b: &[u8]) -> String {
    match ethertype {
        0x0800 => ipv4(b).unwrap_or_else(|| format!("IPv4 truncated, {} bytes", b.len())),
        0x86dd => ipv6(b).unwrap_or_else(|| format!("IPv6 truncated, {} bytes", b.len())),
        0x0806 => arp(b).unwrap_or_else(|| "ARP truncated".to_string()),
        t => format!("ethertype {t:#06x}"),
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn ipv4(b: &[u8]) -> Option<String> {
    let first = *b.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || b.len() < ihl {
        return None;
    }
    let len = be16(b, 2)?;
    let src = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
    let dst = Ipv4Addr::new(b[16], b[17], b[18], b[19]);
    // A later fragment has no L4 header.
    let frag_off = be16(b, 6)? & 0x1fff;
    let l4 = if frag_off == 0 { b.get(ihl..) } else { None };
    Some(l4_line(
        "IPv4",
        b[9],
        &src.to_string(),
        &dst.to_string(),
        l4,
        len.into(),
    ))
}

fn ipv6(b: &[u8]) -> Option<String> {
    if b.len() < 40 || b[0] >> 4 != 6 {
        return None;
    }
    let len = usize::from(be16(b, 4)?) + 40;
    let addr = |at: usize| {
        let mut o = [0u8; 16];
        o.copy_from_slice(&b[at..at + 16]);
        Ipv6Addr::from(o)
    };
    let (src, dst) = (format!("[{}]", addr(8)), format!("[{}]", addr(24)));
    // Skip the extension headers that may precede the L4 header (a few at most).
    let (mut next, mut at) = (b[6], 40usize);
    for _ in 0..4 {
        match next {
            0 | 43 | 60 => {
                let h = b.get(at..at + 2)?;
                next = h[0];
                at += (usize::from(h[1]) + 1) * 8;
            }
            44 => {
                let h = b.get(at..at + 4)?;
                if be16(h, 2)? & 0xfff8 != 0 {
                    // A later fragment has no L4 header.
                    return Some(l4_line("IPv6", h[0], &src, &dst, None, len));
                }
                next = h[0];
                at += 8;
            }
            _ => break,
        }
    }
    Some(l4_line("IPv6", next, &src, &dst, b.get(at..), len))
}

fn l4_line(l3: &str, proto: u8, src: &str, dst: &str, l4: Option<&[u8]>, len: usize) -> String {
    let l4 = l4.unwrap_or(&[]);
    match (proto, be16(l4, 0), be16(l4, 2)) {
        (6, Some(sp), Some(dp)) => {
            let flags = l4
                .get(13)
                .map(|f| tcp_flags(*f))
                .unwrap_or_else(|| "?".into());
            format!("{l3} TCP {src}:{sp} > {dst}:{dp} len {len} flags {flags}")
        }
        (17, Some(sp), Some(dp)) => format!("{l3} UDP {src}:{sp} > {dst}:{dp} len {len}"),
        (1 | 58, _, _) if l4.len() >= 2 => {
            let name = if proto == 1 { "ICMP" } else { "ICMPv6" };
            format!(
                "{l3} {name} {src} > {dst} type {} code {} len {len}",
                l4[0], l4[1]
            )
        }
        _ => format!("{l3} proto {proto} {src} > {dst} len {len}"),
    }
}

fn tcp_flags(f: u8) -> String {
    let names = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x20, "URG"),
    ];
    let set: Vec<&str> = names
        .iter()
        .filter(|(bit, _)| f & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    if set.is_empty() {
        "none".into()
    } else {
        set.join(",")
    }
}

fn arp(b: &[u8]) -> Option<String> {
    // Ethernet/IPv4 ARP only: hardware length 6, protocol length 4.
    if b.len() < 28 || b[4] != 6 || b[5] != 4 {
        return None;
    }
    let sender = Ipv4Addr::new(b[14], b[15], b[16], b[17]);
    let target = Ipv4Addr::new(b[24], b[25], b[26], b[27]);
    Some(match be16(b, 6)? {
        1 => format!("ARP who-has {target} tell {sender}"),
        2 => format!("ARP reply {sender} is-at (to {target})"),
        op => format!("ARP op {op}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_udp_header_is_described_and_its_payload_is_not() {
        let mut p = vec![
            0x45, 0, 0, 40, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p.extend_from_slice(&[0x1f, 0x90, 0x00, 0x35, 0, 20, 0, 0]);
        p.extend_from_slice(b"SECRETPAYLOAD");
        let l = describe(0x0800, &p);
        assert_eq!(l, "IPv4 UDP 10.0.0.1:8080 > 10.0.0.2:53 len 40");
    }

    #[test]
    fn an_ipv6_hop_by_hop_header_is_skipped_to_icmpv6() {
        let mut p = vec![0x60, 0, 0, 0, 0, 16, 0, 1];
        p.extend_from_slice(&[0; 16]);
        p.extend_from_slice(&[0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16]);
        p.extend_from_slice(&[58, 0, 5, 2, 0, 0, 1, 0]);
        p.extend_from_slice(&[143, 0, 0, 0, 0, 0, 0, 0]);
        let l = describe(0x86dd, &p);
        assert_eq!(l, "IPv6 ICMPv6 [::] > [ff02::16] type 143 code 0 len 56");
    }

    #[test]
    fn short_or_garbled_packets_never_panic() {
        for n in 0..60 {
            let b: Vec<u8> = (0..n).map(|i| (i * 37 + 0x45) as u8).collect();
            for t in [0x0800, 0x86dd, 0x0806, 0x1234] {
                let _ = describe(t, &b);
            }
        }
    }
}
