//! DNS: the A and AAAA records of a name, asked of a named server over UDP.
//!
//! zos-uplink's stub resolver asks for A records only, so the probe has its own
//! minimal wire code (RFC 1035): one question out, the answer section in. Every
//! length and pointer of a reply is bounds-checked, compression pointers must point
//! backwards (a reply cannot make the decoder loop), and a reply counts only when it
//! echoes the query's random id and question, from the server the socket is
//! connected to.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Instant;

use crate::{left, ms, Outcome, ProbeError};

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// Plain DNS over UDP without EDNS0 (which is not sent).
const MAX_UDP_LEN: usize = 512;
/// Compression pointers followed within one name.
const MAX_JUMPS: usize = 32;

/// A host name: 1..=253 bytes, labels of 1..=63 letters, digits, `-` or `_`, an
/// optional trailing dot.
pub(crate) fn check_name(name: &str) -> Result<(), ProbeError> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(ProbeError::BadName(name.to_string()))
    }
}

/// Why a reply was not taken.
#[derive(Debug, PartialEq)]
pub(crate) enum Bad {
    /// Not an answer to this query (another id, a query, another question): ignored.
    NotOurs,
    /// The reply is malformed; the text says where.
    Malformed(&'static str),
    /// TC set: the answer needs TCP.
    Truncated,
    /// An rcode other than success and NXDOMAIN.
    Rcode(u8),
}

/// What a reply said.
#[derive(Debug, PartialEq)]
pub(crate) enum Reply {
    /// The records of the asked type (possibly none), and the CNAMEs on the way.
    Records {
        addrs: Vec<String>,
        cnames: Vec<String>,
    },
    /// NXDOMAIN.
    NoSuchName,
}

pub(crate) fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    // RD set; one question.
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    q
}

fn be16(b: &[u8], at: usize) -> Result<u16, Bad> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_be_bytes([s[0], s[1]])),
        None => Err(Bad::Malformed("truncated")),
    }
}

/// The name at `at` (dotted, lower case) and the position after it in place.
fn read_name(b: &[u8], at: usize) -> Result<(String, usize), Bad> {
    let (mut pos, mut end, mut jumps) = (at, None, 0);
    let mut name = String::new();
    loop {
        let len = *b.get(pos).ok_or(Bad::Malformed("truncated name"))?;
        match len & 0xc0 {
            0x00 if len == 0 => {
                return Ok((name, end.unwrap_or(pos + 1)));
            }
            0x00 => {
                let label = b
                    .get(pos + 1..pos + 1 + usize::from(len))
                    .ok_or(Bad::Malformed("truncated label"))?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.extend(label.iter().map(|c| c.to_ascii_lowercase() as char));
                if name.len() > 253 {
                    return Err(Bad::Malformed("name too long"));
                }
                pos += 1 + usize::from(len);
            }
            0xc0 => {
                let target = usize::from(be16(b, pos)? & 0x3fff);
                // Backwards only: every jump makes progress towards the start.
                if target >= pos || jumps == MAX_JUMPS {
                    return Err(Bad::Malformed("bad compression pointer"));
                }
                jumps += 1;
                end.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return Err(Bad::Malformed("reserved label type")),
        }
    }
}

/// Check `b` as the reply to query `id` for `name` (lower case, no trailing dot) of
/// type `qtype`, and read its answers.
pub(crate) fn parse(b: &[u8], id: u16, name: &str, qtype: u16) -> Result<Reply, Bad> {
    if b.len() < 12 || be16(b, 0)? != id || b[2] & 0x80 == 0 {
        return Err(Bad::NotOurs);
    }
    if (b[2] >> 3) & 0x0f != 0 || be16(b, 4)? != 1 {
        return Err(Bad::NotOurs);
    }
    let (qname, mut pos) = read_name(b, 12)?;
    if qname != name || be16(b, pos)? != qtype || be16(b, pos + 2)? != CLASS_IN {
        return Err(Bad::NotOurs);
    }
    pos += 4;
    if b[2] & 0x02 != 0 {
        return Err(Bad::Truncated);
    }
    match b[3] & 0x0f {
        0 => {}
        3 => return Ok(Reply::NoSuchName),
        r => return Err(Bad::Rcode(r)),
    }
    let (mut addrs, mut cnames) = (vec![], vec![]);
    for _ in 0..be16(b, 6)? {
        let (_, at) = read_name(b, pos)?;
        let (rtype, class, rdlen) = (be16(b, at)?, be16(b, at + 2)?, be16(b, at + 8)?);
        let start = at + 10;
        let rdata = b
            .get(start..start + usize::from(rdlen))
            .ok_or(Bad::Malformed("truncated record"))?;
        pos = start + usize::from(rdlen);
        if class != CLASS_IN {
            continue;
        }
        match (rtype, rdata.len()) {
            (TYPE_A, 4) if qtype == TYPE_A => {
                addrs.push(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]).to_string())
            }
            (TYPE_AAAA, 16) if qtype == TYPE_AAAA => {
                let mut o = [0u8; 16];
                o.copy_from_slice(rdata);
                addrs.push(Ipv6Addr::from(o).to_string());
            }
            (TYPE_A | TYPE_AAAA, _) if rtype == qtype => {
                return Err(Bad::Malformed("address record of the wrong length"))
            }
            (TYPE_CNAME, _) => cnames.push(read_name(b, start)?.0),
            _ => {}
        }
    }
    Ok(Reply::Records { addrs, cnames })
}

fn random_id() -> u16 {
    // Unpredictable enough for a diagnostic: the socket is connected to the server,
    // and a forged reply would only mislead this one probe.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&(t.as_nanos(), std::process::id()), &mut h);
    std::hash::Hasher::finish(&h) as u16
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> ProbeError {
    ProbeError::io(op)
}

/// Ask `server` for `qtype` records of `name` until `until`.
fn ask(sock: &UdpSocket, name: &str, qtype: u16, until: Instant) -> Result<Reply, ProbeError> {
    let id = random_id();
    sock.send(&query(id, name, qtype)).map_err(io("dns send"))?;
    let mut buf = [0u8; MAX_UDP_LEN + 1];
    loop {
        let Some(t) = left(until) else {
            return Err(io("dns")(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no reply within the time limit",
            )));
        };
        sock.set_read_timeout(Some(t)).map_err(io("dns timeout"))?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => return Err(io("dns receive")(e)),
        };
        if n > MAX_UDP_LEN {
            return Err(ProbeError::DnsReply("oversized reply".into()));
        }
        match parse(&buf[..n], id, name, qtype) {
            Ok(r) => return Ok(r),
            Err(Bad::NotOurs) => continue,
            Err(Bad::Truncated) => {
                return Err(ProbeError::DnsReply(
                    "truncated (TC): the answer needs TCP".into(),
                ))
            }
            Err(Bad::Rcode(r)) => {
                return Err(ProbeError::DnsReply(format!("server error, rcode {r}")))
            }
            Err(Bad::Malformed(what)) => {
                return Err(ProbeError::DnsReply(format!("malformed reply: {what}")))
            }
        }
    }
}

pub(crate) fn resolve(name: &str, server: Option<SocketAddr>, deadline: Instant) -> Outcome {
    let Some(server) = server else {
        return Outcome::failed(vec![], ProbeError::NoDnsServer);
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let mut lines = vec![];
    let t = Instant::now();
    let r = (|| {
        let local: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .expect("literal");
        let sock = UdpSocket::bind(local).map_err(io("dns socket"))?;
        sock.connect(server).map_err(io("dns connect"))?;
        let mut found = false;
        for (qtype, tname) in [(TYPE_A, "A"), (TYPE_AAAA, "AAAA")] {
            // A gets half of what is left, AAAA the rest.
            let half = left(deadline).map(|l| l / 2).unwrap_or_default();
            let until = if qtype == TYPE_A {
                Instant::now() + half
            } else {
                deadline
            };
            match ask(&sock, &name, qtype, until)? {
                Reply::NoSuchName => {
                    lines.push(format!(
                        "{name}: no such name (NXDOMAIN) from {server} in {}",
                        ms(t.elapsed())
                    ));
                    return Ok(false);
                }
                Reply::Records { addrs, cnames } => {
                    for c in cnames {
                        lines.push(format!("{name} CNAME {c}"));
                    }
                    if addrs.is_empty() {
                        lines.push(format!("{name}: no {tname} record"));
                    }
                    for a in addrs {
                        found = true;
                        lines.push(format!(
                            "{name} {tname} {a} (from {server} in {})",
                            ms(t.elapsed())
                        ));
                    }
                }
            }
        }
        Ok(found)
    })();
    match r {
        Ok(true) => Outcome {
            ok: true,
            lines,
            error: None,
        },
        Ok(false) => Outcome::failed(
            lines,
            ProbeError::DnsReply(format!("no address for {name}")),
        ),
        Err(e) => {
            lines.push(format!(
                "{name}: no answer from {server} after {}",
                ms(t.elapsed())
            ));
            Outcome::failed(lines, e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_to(q: &[u8], answers: &[u8], count: u16) -> Vec<u8> {
        let mut r = q.to_vec();
        r[2] |= 0x80;
        r[6..8].copy_from_slice(&count.to_be_bytes());
        r.extend_from_slice(answers);
        r
    }

    #[test]
    fn a_compressed_answer_is_read() {
        let q = query(7, "www.zt.test", TYPE_AAAA);
        let mut ans = vec![0xc0, 12, 0, 28, 0, 1, 0, 0, 0, 9, 0, 16];
        ans.extend_from_slice(&"2001:db8::9".parse::<Ipv6Addr>().unwrap().octets());
        let r = parse(&reply_to(&q, &ans, 1), 7, "www.zt.test", TYPE_AAAA);
        assert_eq!(
            r,
            Ok(Reply::Records {
                addrs: vec!["2001:db8::9".into()],
                cnames: vec![]
            })
        );
        // Another id, another question type: not ours.
        assert_eq!(
            parse(&reply_to(&q, &ans, 1), 8, "www.zt.test", TYPE_AAAA),
            Err(Bad::NotOurs)
        );
        assert_eq!(
            parse(&reply_to(&q, &ans, 1), 7, "www.zt.test", TYPE_A),
            Err(Bad::NotOurs)
        );
    }

    #[test]
    fn a_pointer_loop_or_forward_pointer_is_refused() {
        let q = query(7, "a.test", TYPE_A);
        let at = q.len() as u8;
        // A record whose owner name points at itself.
        let ans = [0xc0, at, 0, 1, 0, 1, 0, 0, 0, 9, 0, 4, 1, 2, 3, 4];
        assert_eq!(
            parse(&reply_to(&q, &ans, 1), 7, "a.test", TYPE_A),
            Err(Bad::Malformed("bad compression pointer"))
        );
    }

    #[test]
    fn any_bytes_after_a_valid_question_never_panic() {
        let q = query(7, "a.test", TYPE_A);
        let mut seed = 0x9e37_79b9u32;
        for len in 0..400 {
            let tail: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            let _ = parse(&reply_to(&q, &tail, (len % 7) as u16), 7, "a.test", TYPE_A);
            let _ = parse(&tail, 7, "a.test", TYPE_A);
        }
    }
}
