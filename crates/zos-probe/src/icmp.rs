//! ICMP echo from a raw socket (root): ping, and the hop list (echo requests with
//! increasing TTL, the routers' time-exceeded messages name the hops).
//!
//! A raw ICMP socket sees every ICMP message arriving in the namespace, so a reply
//! counts only when it carries our identifier and sequence number: an echo reply from
//! the target, or an error (time exceeded, unreachable) quoting our request to it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    self, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn,
    SockaddrIn6,
};
use nix::sys::time::{TimeVal, TimeValLike};

use crate::{left, ms, Outcome, ProbeError};

/// The longest wait for one reply.
const PER_REPLY: Duration = Duration::from_secs(1);
/// Echo payload: a fixed pattern (nothing of the node's).
const PAYLOAD: &[u8; 16] = b"zos-probe-echo..";

#[derive(Debug)]
enum Event {
    /// `ttl`: the reply's, when the message shows it (IPv4; an ICMPv6 raw socket gets
    /// no IPv6 header).
    Reply {
        from: IpAddr,
        ttl: Option<u8>,
    },
    TimeExceeded {
        from: IpAddr,
    },
    Unreachable {
        from: IpAddr,
        code: u8,
    },
}

fn ident() -> u16 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (std::process::id() as u16) ^ (t.subsec_nanos() >> 10) as u16
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP (v4: type 8) or ICMPv6 (type 128: the kernel fills in its checksum)
/// echo request.
fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    p.extend_from_slice(&id.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(PAYLOAD);
    if !v6 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// The IPv4 header length of `b`, when `b` holds at least a header of that length.
fn ihl(b: &[u8]) -> Option<usize> {
    let first = *b.first()?;
    let l = usize::from(first & 0x0f) * 4;
    (first >> 4 == 4 && l >= 20 && b.len() >= l).then_some(l)
}

/// What a received datagram (IPv4 header + ICMP) says about our request `id`/`seq` to
/// `target`, if anything.
fn parse(b: &[u8], id: u16, seq: u16, target: Ipv4Addr) -> Option<Event> {
    let h = ihl(b)?;
    let ttl = b[8];
    let from = Ipv4Addr::new(b[12], b[13], b[14], b[15]);
    let icmp = b.get(h..)?;
    let ours = |i: &[u8]| {
        i.get(4..6) == Some(&id.to_be_bytes()[..]) && i.get(6..8) == Some(&seq.to_be_bytes()[..])
    };
    match *icmp.first()? {
        0 if from == target && ours(icmp) => Some(Event::Reply {
            from: from.into(),
            ttl: Some(ttl),
        }),
        t @ (3 | 11) => {
            // The quoted request: its IPv4 header and the first 8 bytes of its ICMP.
            let inner = icmp.get(8..)?;
            let ih = ihl(inner)?;
            let to_target = inner[9] == 1 && inner[16..20] == target.octets();
            let q = inner.get(ih..ih + 8)?;
            if !(to_target && q[0] == 8 && ours(q)) {
                return None;
            }
            let from = from.into();
            Some(if t == 11 {
                Event::TimeExceeded { from }
            } else {
                Event::Unreachable {
                    from,
                    code: icmp[1],
                }
            })
        }
        _ => None,
    }
}

/// What an ICMPv6 message (no IPv6 header: the raw socket strips it) from `from`
/// says about our request `id`/`seq` to `target`, if anything.
fn parse6(icmp: &[u8], from: Ipv6Addr, id: u16, seq: u16, target: Ipv6Addr) -> Option<Event> {
    let ours = |i: &[u8]| {
        i.get(4..6) == Some(&id.to_be_bytes()[..]) && i.get(6..8) == Some(&seq.to_be_bytes()[..])
    };
    match *icmp.first()? {
        129 if from == target && ours(icmp) => Some(Event::Reply {
            from: from.into(),
            ttl: None,
        }),
        t @ (1 | 3) => {
            // The quoted request: its IPv6 header (next header ICMPv6, to the target)
            // and the first 8 bytes of its ICMPv6 (no extension headers: we send none).
            let inner = icmp.get(8..)?;
            let to_target =
                inner.get(6) == Some(&58) && inner.get(24..40) == Some(&target.octets()[..]);
            let q = inner.get(40..48)?;
            if !(to_target && q[0] == 128 && ours(q)) {
                return None;
            }
            let from = from.into();
            Some(if t == 3 {
                Event::TimeExceeded { from }
            } else {
                Event::Unreachable {
                    from,
                    code: icmp[1],
                }
            })
        }
        _ => None,
    }
}

struct Raw {
    fd: OwnedFd,
    id: u16,
    target: IpAddr,
}

impl Raw {
    fn open(target: IpAddr) -> Result<Raw, ProbeError> {
        let (family, proto) = match target {
            IpAddr::V4(_) => (AddressFamily::Inet, SockProtocol::Icmp),
            IpAddr::V6(_) => (AddressFamily::Inet6, SockProtocol::IcmpV6),
        };
        let fd = socket::socket(family, SockType::Raw, SockFlag::SOCK_CLOEXEC, proto)
            .map_err(ProbeError::nix("raw ICMP socket"))?;
        Ok(Raw {
            fd,
            id: ident(),
            target,
        })
    }

    fn send(&self, seq: u16) -> Result<Instant, ProbeError> {
        let fd = self.fd.as_raw_fd();
        let sent = Instant::now();
        match self.target {
            IpAddr::V4(t) => {
                let to = SockaddrIn::from(SocketAddrV4::new(t, 0));
                let req = echo_request(false, self.id, seq);
                socket::sendto(fd, &req, &to, MsgFlags::empty())
            }
            IpAddr::V6(t) => {
                let to = SockaddrIn6::from(SocketAddrV6::new(t, 0, 0, 0));
                let req = echo_request(true, self.id, seq);
                socket::sendto(fd, &req, &to, MsgFlags::empty())
            }
        }
        .map_err(ProbeError::nix("send echo request"))?;
        Ok(sent)
    }

    /// The TTL (IPv4) or hop limit (IPv6) of the next requests.
    fn set_ttl(&self, ttl: u8) -> Result<(), ProbeError> {
        let v = i32::from(ttl);
        match self.target {
            IpAddr::V4(_) => socket::setsockopt(&self.fd, sockopt::Ipv4Ttl, &v),
            IpAddr::V6(_) => socket::setsockopt(&self.fd, sockopt::Ipv6Ttl, &v),
        }
        .map_err(ProbeError::nix("set TTL"))
    }

    /// Wait until `until` for a message about `seq`; `None` when none came.
    fn wait(&self, seq: u16, until: Instant) -> Result<Option<Event>, ProbeError> {
        let mut buf = [0u8; 1500];
        loop {
            let Some(t) = left(until) else {
                return Ok(None);
            };
            let tv = TimeVal::microseconds(t.as_micros().min(i64::MAX as u128) as i64);
            socket::setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv)
                .map_err(ProbeError::nix("receive timeout"))?;
            let got = match self.target {
                IpAddr::V4(t) => socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                    .map(|n| parse(&buf[..n], self.id, seq, t)),
                IpAddr::V6(t) => socket::recvfrom::<SockaddrIn6>(self.fd.as_raw_fd(), &mut buf)
                    .map(|(n, from)| from.and_then(|f| parse6(&buf[..n], f.ip(), self.id, seq, t))),
            };
            match got {
                Ok(Some(e)) => return Ok(Some(e)),
                Ok(None) => {}
                Err(nix::Error::EAGAIN | nix::Error::EINTR) => {}
                Err(e) => return Err(ProbeError::nix("receive")(e)),
            }
        }
    }
}

fn deadline_reached() -> ProbeError {
    ProbeError::io("deadline")(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "the probe's time limit was reached",
    ))
}

pub(crate) fn ping(target: IpAddr, count: u8, deadline: Instant) -> Outcome {
    let mut lines = vec![];
    let r = (|| {
        let raw = Raw::open(target)?;
        let mut received = 0;
        let mut sent = 0;
        for seq in 1..=u16::from(count) {
            if left(deadline).is_none() {
                break;
            }
            let t = raw.send(seq)?;
            sent += 1;
            match raw.wait(seq, deadline.min(t + PER_REPLY))? {
                Some(Event::Reply { from, ttl }) => {
                    received += 1;
                    let ttl = ttl.map(|t| format!(" ttl={t}")).unwrap_or_default();
                    lines.push(format!(
                        "reply from {from}: seq={seq}{ttl} time={}",
                        ms(t.elapsed())
                    ));
                }
                Some(Event::Unreachable { from, code }) => {
                    lines.push(format!(
                        "seq={seq}: destination unreachable (code {code}) from {from}"
                    ));
                }
                Some(Event::TimeExceeded { from }) => {
                    lines.push(format!("seq={seq}: time exceeded from {from}"));
                }
                None => lines.push(format!("seq={seq}: no reply")),
            }
        }
        lines.push(format!("{sent} sent, {received} received"));
        Ok::<_, ProbeError>((sent, received))
    })();
    match r {
        Ok((_, received)) if received > 0 => Outcome {
            ok: true,
            lines,
            error: None,
        },
        Ok((sent, _)) if sent < u16::from(count) => Outcome::failed(lines, deadline_reached()),
        Ok(_) => Outcome::failed(
            lines,
            ProbeError::io("ping")(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no reply from {target}"),
            )),
        ),
        Err(e) => Outcome::failed(lines, e),
    }
}

pub(crate) fn trace(target: IpAddr, max_hops: u8, deadline: Instant) -> Outcome {
    let mut lines = vec![];
    let r = (|| {
        let raw = Raw::open(target)?;
        for ttl in 1..=max_hops {
            if left(deadline).is_none() {
                return Err(deadline_reached());
            }
            raw.set_ttl(ttl)?;
            let seq = u16::from(ttl);
            let t = raw.send(seq)?;
            match raw.wait(seq, deadline.min(t + PER_REPLY))? {
                Some(Event::Reply { from, .. }) => {
                    lines.push(format!("{ttl:>2}  {from}  {}", ms(t.elapsed())));
                    return Ok(true);
                }
                Some(Event::TimeExceeded { from }) => {
                    lines.push(format!("{ttl:>2}  {from}  {}", ms(t.elapsed())))
                }
                Some(Event::Unreachable { from, code }) => {
                    lines.push(format!(
                        "{ttl:>2}  {from}  {}  unreachable (code {code})",
                        ms(t.elapsed())
                    ));
                    return Ok(false);
                }
                None => lines.push(format!("{ttl:>2}  *")),
            }
        }
        Ok(false)
    })();
    match r {
        Ok(true) => Outcome {
            ok: true,
            lines,
            error: None,
        },
        Ok(false) => Outcome::failed(
            lines,
            ProbeError::io("trace")(std::io::Error::other(format!(
                "{target} not reached within {max_hops} hops"
            ))),
        ),
        Err(e) => Outcome::failed(lines, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_request_verifies() {
        let p = echo_request(false, 0x1234, 7);
        assert_eq!(checksum(&p), 0);
    }

    #[test]
    fn parse6_ignores_short_messages_and_foreign_quotes() {
        let t: Ipv6Addr = "2001:db8::2".parse().unwrap();
        let r: Ipv6Addr = "2001:db8::1".parse().unwrap();
        for n in 0..60 {
            let b: Vec<u8> = (0..n).map(|i| if i == 0 { 3 } else { i as u8 }).collect();
            assert!(parse6(&b, r, 1, 1, t).is_none());
        }
        // A time-exceeded quoting our request to the target: a hop.
        let mut b = vec![3, 0, 0, 0, 0, 0, 0, 0];
        let mut ip6 = vec![0x60, 0, 0, 0, 0, 24, 58, 1];
        ip6.extend_from_slice(&r.octets());
        ip6.extend_from_slice(&t.octets());
        b.extend_from_slice(&ip6);
        b.extend_from_slice(&echo_request(true, 1, 1)[..8]);
        assert!(matches!(
            parse6(&b, r, 1, 1, t),
            Some(Event::TimeExceeded { .. })
        ));
        // The same quote with another sequence number: not ours.
        assert!(parse6(&b, r, 1, 2, t).is_none());
    }

    #[test]
    fn parse_ignores_short_and_foreign_messages() {
        let t = Ipv4Addr::new(10, 0, 0, 1);
        assert!(parse(&[], 1, 1, t).is_none());
        assert!(parse(&[0x45; 19], 1, 1, t).is_none());
        // A time-exceeded whose quote is cut short.
        let mut b = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 9,
        ];
        b.extend_from_slice(&[11, 0, 0, 0, 0, 0, 0, 0, 0x45]);
        assert!(parse(&b, 1, 1, t).is_none());
    }
}
