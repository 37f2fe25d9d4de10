//! DNS messages (RFC 1035), only what an A-record stub needs: one question out,
//! the A records (through CNAMEs) of one answer in. Every length and pointer of a
//! reply is bounds-checked; compression pointers must point backwards, so a reply
//! cannot make the decoder loop.

use std::net::Ipv4Addr;

use super::WireError;

pub const HEADER_LEN: usize = 12;
/// Plain DNS over UDP without EDNS0 (which we do not send): RFC 1035 4.2.1.
pub const MAX_UDP_LEN: usize = 512;
pub const TYPE_A: u16 = 1;
pub const TYPE_CNAME: u16 = 5;
pub const CLASS_IN: u16 = 1;
/// Longest name in presentation form without the trailing dot.
const MAX_NAME_LEN: usize = 253;
/// Compression pointers followed within one name.
const MAX_JUMPS: usize = 32;
/// More CNAME hops than any sane zone has.
const MAX_CNAME_HOPS: usize = 8;

/// Lower-case labels of a host name, validated for a query.
pub fn labels(host: &str) -> Result<Vec<String>, WireError> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(WireError::BadName(host.into()));
    }
    name.split('.')
        .map(|l| {
            let ok = !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if ok {
                Ok(l.to_ascii_lowercase())
            } else {
                Err(WireError::BadName(host.into()))
            }
        })
        .collect()
}

/// A recursive query for the A records of `labels`, with `id`.
pub fn query(id: u16, labels: &[String]) -> Vec<u8> {
    let mut q = Vec::with_capacity(HEADER_LEN + MAX_NAME_LEN + 6);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD: the server recurses for us.
    q.extend_from_slice(&1u16.to_be_bytes()); // QDCOUNT
    q.extend_from_slice(&[0; 6]); // AN, NS, AR counts
    for l in labels {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&TYPE_A.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    q
}

/// What a checked reply said.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// The A records (possibly none: the name exists without an A record).
    Addrs(Vec<Ipv4Addr>),
    /// NXDOMAIN: the name does not exist.
    NoSuchName,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.buf.get(self.pos..end).ok_or(WireError::Truncated)?;
        self.pos = end;
        Ok(s)
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A possibly compressed name, as lower-case labels; the reader ends up after
    /// the name's in-place part.
    fn name(&mut self) -> Result<Vec<String>, WireError> {
        let mut labels = Vec::new();
        let mut total = 0usize;
        let mut at = self.pos;
        let mut resume = None;
        let mut jumps = 0;
        loop {
            let len = *self.buf.get(at).ok_or(WireError::Truncated)? as usize;
            match len & 0xc0 {
                0x00 if len == 0 => {
                    at += 1;
                    break;
                }
                0x00 => {
                    let l = self
                        .buf
                        .get(at + 1..at + 1 + len)
                        .ok_or(WireError::Truncated)?;
                    total += len + 1;
                    if total > MAX_NAME_LEN + 1 {
                        return Err(WireError::BadCompression("name too long"));
                    }
                    labels.push(String::from_utf8_lossy(l).to_ascii_lowercase());
                    at += 1 + len;
                }
                0xc0 => {
                    let lo = *self.buf.get(at + 1).ok_or(WireError::Truncated)? as usize;
                    let target = (len & 0x3f) << 8 | lo;
                    // Strictly backwards, to something before this pointer: every
                    // jump moves towards the start, so the walk ends.
                    if target >= at {
                        return Err(WireError::BadCompression("forward pointer"));
                    }
                    // Backward jumps alone do not end a walk (labels read
                    // after a jump can lead to the same pointer again); the name
                    // length bound does, and this cap says so sooner.
                    jumps += 1;
                    if jumps > MAX_JUMPS {
                        return Err(WireError::BadCompression("too many pointers"));
                    }
                    if resume.is_none() {
                        resume = Some(at + 2);
                    }
                    at = target;
                }
                _ => return Err(WireError::BadCompression("reserved label type")),
            }
        }
        self.pos = resume.unwrap_or(at);
        Ok(labels)
    }
}

/// Check a reply to `query(id, labels)` and extract its answer.
pub fn parse_reply(buf: &[u8], id: u16, qname: &[String]) -> Result<Answer, WireError> {
    if buf.len() > MAX_UDP_LEN {
        return Err(WireError::Oversized {
            len: buf.len(),
            max: MAX_UDP_LEN,
        });
    }
    if buf.len() < HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let mut r = Reader { buf, pos: 0 };
    let rid = r.u16()?;
    let flags = r.u16()?;
    let (qd, an) = (r.u16()?, r.u16()?);
    r.take(4)?; // NS and AR counts: authority and additional sections are not used.
    if rid != id {
        return Err(WireError::WrongId { got: rid, want: id });
    }
    if flags & 0x8000 == 0 {
        return Err(WireError::NotAResponse);
    }
    if (flags >> 11) & 0xf != 0 {
        return Err(WireError::UnexpectedOpcode(((flags >> 11) & 0xf) as u8));
    }
    if flags & 0x0200 != 0 {
        // The full answer needs TCP, which this stub does not speak.
        return Err(WireError::TruncatedFlag);
    }
    // The question must be echoed, so a reply to some other query (or a forgery
    // that guessed the id) is not taken for ours.
    if qd != 1 {
        return Err(WireError::QuestionMismatch);
    }
    let name = r.name()?;
    let (qt, qc) = (r.u16()?, r.u16()?);
    if name != qname || qt != TYPE_A || qc != CLASS_IN {
        return Err(WireError::QuestionMismatch);
    }
    match flags & 0xf {
        0 => {}
        3 => return Ok(Answer::NoSuchName),
        rcode => return Err(WireError::ServerError(rcode as u8)),
    }
    let mut records = Vec::with_capacity(usize::from(an));
    for _ in 0..an {
        let owner = r.name()?;
        let (ty, class, _ttl, len) = (r.u16()?, r.u16()?, r.u32()?, r.u16()?);
        let start = r.pos;
        let data = r.take(usize::from(len))?;
        let rd = match (ty, class) {
            (TYPE_A, CLASS_IN) => {
                let b: [u8; 4] = data.try_into().map_err(|_| WireError::BadRecord("A"))?;
                Rdata::A(Ipv4Addr::from(b))
            }
            (TYPE_CNAME, CLASS_IN) => {
                let mut sub = Reader { buf, pos: start };
                let target = sub.name()?;
                if sub.pos != start + usize::from(len) {
                    return Err(WireError::BadRecord("CNAME"));
                }
                Rdata::Cname(target)
            }
            _ => continue,
        };
        records.push((owner, rd));
    }
    Ok(Answer::Addrs(follow(qname, &records)))
}

enum Rdata {
    A(Ipv4Addr),
    Cname(Vec<String>),
}

/// The A records of `qname`, following CNAMEs within the answer (a bounded number
/// of hops, whatever order the server listed them in).
fn follow(qname: &[String], records: &[(Vec<String>, Rdata)]) -> Vec<Ipv4Addr> {
    let mut name = qname.to_vec();
    for _ in 0..=MAX_CNAME_HOPS {
        let addrs: Vec<Ipv4Addr> = records
            .iter()
            .filter_map(|(o, rd)| match rd {
                Rdata::A(a) if *o == name => Some(*a),
                _ => None,
            })
            .collect();
        if !addrs.is_empty() {
            return addrs;
        }
        match records.iter().find_map(|(o, rd)| match rd {
            Rdata::Cname(t) if *o == name => Some(t.clone()),
            _ => None,
        }) {
            Some(t) => name = t,
            None => break,
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(s: &str) -> Vec<String> {
        labels(s).unwrap()
    }

    /// A reply to `query(id, qname)` with the given answer records (already encoded).
    fn reply(id: u16, qname: &str, rcode: u16, answers: &[Vec<u8>]) -> Vec<u8> {
        let mut r = query(id, &l(qname));
        r[2..4].copy_from_slice(&(0x8180u16 | rcode).to_be_bytes());
        r[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        for a in answers {
            r.extend_from_slice(a);
        }
        r
    }

    /// An answer record: owner as a pointer to the question name (offset 12).
    fn rr(owner: &[u8], ty: u16, data: &[u8]) -> Vec<u8> {
        let mut v = owner.to_vec();
        v.extend_from_slice(&ty.to_be_bytes());
        v.extend_from_slice(&CLASS_IN.to_be_bytes());
        v.extend_from_slice(&300u32.to_be_bytes());
        v.extend_from_slice(&(data.len() as u16).to_be_bytes());
        v.extend_from_slice(data);
        v
    }

    const AT_QNAME: [u8; 2] = [0xc0, 12];

    #[test]
    fn query_encoding() {
        let q = query(0xbeef, &l("Node.ZT.test."));
        assert_eq!(&q[..4], &[0xbe, 0xef, 0x01, 0x00]);
        assert_eq!(&q[4..12], &[0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&q[12..], b"\x04node\x02zt\x04test\x00\x00\x01\x00\x01");
    }

    #[test]
    fn names_are_validated() {
        for bad in ["", ".", "a..b", "a b", &"x".repeat(64), &"a.".repeat(128)] {
            assert!(labels(bad).is_err(), "{bad:?}");
        }
        assert_eq!(l("a-b.c_d"), vec!["a-b", "c_d"]);
    }

    #[test]
    fn a_records_and_cname_chains() {
        let r = reply(
            7,
            "www.zt.test",
            0,
            &[
                rr(&AT_QNAME, TYPE_A, &[10, 0, 0, 1]),
                rr(&AT_QNAME, TYPE_A, &[10, 0, 0, 2]),
            ],
        );
        assert_eq!(
            parse_reply(&r, 7, &l("www.zt.test")).unwrap(),
            Answer::Addrs(vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)])
        );
        // www -> host.zt.test (target "host" + pointer to "zt.test" at 12+4),
        // listed after the A record it leads to.
        // Header 12, question 13 + 4, the CNAME's fixed part 12: its data at 41.
        let host_at = 12 + 17 + 12;
        let mut target = b"\x04host".to_vec();
        target.extend_from_slice(&[0xc0, 16]);
        let r = reply(
            8,
            "www.zt.test",
            0,
            &[
                rr(&AT_QNAME, TYPE_CNAME, &target),
                rr(&[0xc0, host_at as u8], TYPE_A, &[10, 0, 0, 9]),
            ],
        );
        assert_eq!(
            parse_reply(&r, 8, &l("www.zt.test")).unwrap(),
            Answer::Addrs(vec![Ipv4Addr::new(10, 0, 0, 9)])
        );
    }

    #[test]
    fn nxdomain_and_server_errors() {
        let r = reply(9, "no.zt.test", 3, &[]);
        assert_eq!(
            parse_reply(&r, 9, &l("no.zt.test")).unwrap(),
            Answer::NoSuchName
        );
        let r = reply(9, "no.zt.test", 2, &[]);
        assert!(matches!(
            parse_reply(&r, 9, &l("no.zt.test")),
            Err(WireError::ServerError(2))
        ));
    }

    #[test]
    fn foreign_and_malformed_replies_are_refused() {
        let ok = reply(1, "a.zt.test", 0, &[rr(&AT_QNAME, TYPE_A, &[1, 2, 3, 4])]);
        let q = l("a.zt.test");
        assert!(matches!(
            parse_reply(&ok, 2, &q),
            Err(WireError::WrongId { got: 1, want: 2 })
        ));
        assert!(matches!(
            parse_reply(&ok, 1, &l("b.zt.test")),
            Err(WireError::QuestionMismatch)
        ));
        for cut in [0, 5, 11, 20, ok.len() - 1] {
            assert!(
                matches!(parse_reply(&ok[..cut], 1, &q), Err(WireError::Truncated)),
                "cut at {cut}"
            );
        }
        let mut big = ok.clone();
        big.resize(MAX_UDP_LEN + 1, 0);
        assert!(matches!(
            parse_reply(&big, 1, &q),
            Err(WireError::Oversized { .. })
        ));
        let mut tc = ok.clone();
        tc[2] |= 0x02;
        assert!(matches!(
            parse_reply(&tc, 1, &q),
            Err(WireError::TruncatedFlag)
        ));
        let mut not_resp = ok.clone();
        not_resp[2] &= 0x7f;
        assert!(matches!(
            parse_reply(&not_resp, 1, &q),
            Err(WireError::NotAResponse)
        ));
        // An A record with 5 bytes of data.
        let bad_a = reply(
            1,
            "a.zt.test",
            0,
            &[rr(&AT_QNAME, TYPE_A, &[1, 2, 3, 4, 5])],
        );
        assert!(matches!(
            parse_reply(&bad_a, 1, &q),
            Err(WireError::BadRecord("A"))
        ));
        // A pointer to itself, and one pointing forward.
        let mut self_ptr = reply(1, "a.zt.test", 0, &[rr(&[0, 0], TYPE_A, &[1, 2, 3, 4])]);
        let at = self_ptr.len() - 16;
        self_ptr[at..at + 2].copy_from_slice(&(0xc000 | at as u16).to_be_bytes());
        assert!(matches!(
            parse_reply(&self_ptr, 1, &q),
            Err(WireError::BadCompression(_))
        ));
        let fwd = reply(
            1,
            "a.zt.test",
            0,
            &[rr(&[0xc1, 0xff], TYPE_A, &[1, 2, 3, 4])],
        );
        assert!(matches!(
            parse_reply(&fwd, 1, &q),
            Err(WireError::BadCompression(_))
        ));
    }

    #[test]
    fn pointer_loops_through_labels_end() {
        // The answer's owner: label "a" then a pointer back to that label, so
        // every jump reads "a" again and returns to the same pointer.
        let mut r = reply(4, "a.zt.test", 0, &[]);
        r[6..8].copy_from_slice(&1u16.to_be_bytes());
        let at = r.len() as u16;
        r.extend_from_slice(b"\x01a");
        r.extend_from_slice(&(0xc000 | at).to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(
            parse_reply(&r, 4, &l("a.zt.test")),
            Err(WireError::BadCompression(_))
        ));
    }

    #[test]
    fn cname_loops_end() {
        // a -> a (pointer to the question name).
        let r = reply(3, "a.zt.test", 0, &[rr(&AT_QNAME, TYPE_CNAME, &AT_QNAME)]);
        assert_eq!(
            parse_reply(&r, 3, &l("a.zt.test")).unwrap(),
            Answer::Addrs(vec![])
        );
    }
}
