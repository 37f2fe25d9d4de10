//! A stub resolver for A records over UDP: zosd is a static glibc binary, whose
//! `getaddrinfo` cannot load NSS modules, so notary and flist hub names are
//! resolved here, against the servers of the DHCP lease.
//!
//! Each query uses a fresh connected socket (a kernel-chosen source port, and the
//! kernel drops datagrams from anyone but the server) and a random 16-bit id; a
//! reply must echo the id and the question. Servers are tried in order, each
//! attempt round over all of them. No cache, no TCP, no EDNS0, no search list:
//! names are taken as fully qualified.

mod wire;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

pub use wire::Answer;

/// Why a reply was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The name to look up is not a valid DNS name (empty, an empty label, a label over
    /// 63 bytes or with a byte other than letters, digits, `-`, `_`, too long in all);
    /// nothing was sent.
    #[error("host name {0:?} is not a valid DNS name")]
    BadName(String),
    /// The reply ends inside its header, a name or a record.
    #[error("truncated DNS message")]
    Truncated,
    /// The reply is longer than a DNS message over UDP may be.
    #[error("oversized DNS reply: {len} bytes, at most {max} over UDP")]
    Oversized {
        /// The datagram's length, in bytes.
        len: usize,
        /// The most accepted, in bytes.
        max: usize,
    },
    /// The reply's id is not the query's: not an answer to it (discarded, the
    /// resolver keeps waiting).
    #[error("DNS reply id {got:#06x}, expected {want:#06x}")]
    WrongId {
        /// The reply's id.
        got: u16,
        /// The query's id.
        want: u16,
    },
    /// The QR bit is clear: a query, not a reply.
    #[error("DNS message is a query, not a response")]
    NotAResponse,
    /// The reply's opcode is not QUERY (0).
    #[error("DNS reply has opcode {0}")]
    UnexpectedOpcode(u8),
    /// The server set TC: the full answer needs TCP, which this resolver does not do.
    #[error("DNS reply is truncated (TC): the answer needs TCP, which is not supported")]
    TruncatedFlag,
    /// The reply's question section is not the query's (discarded, the resolver keeps
    /// waiting).
    #[error("DNS reply does not echo our question")]
    QuestionMismatch,
    /// An rcode other than success and NXDOMAIN (e.g. 2, SERVFAIL).
    #[error("DNS server error, rcode {0}")]
    ServerError(u8),
    /// A compressed name loops, points forward, grows too long or uses a reserved
    /// label type; the text says which.
    #[error("bad name compression in DNS reply: {0}")]
    BadCompression(&'static str),
    /// A record of this type (`A`, `CNAME`) has data of the wrong shape.
    #[error("malformed {0} record in DNS reply")]
    BadRecord(&'static str),
}

/// Why a name was not resolved.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The resolver has no server to ask (the lease named none).
    #[error("no DNS server configured")]
    NoServers,
    /// The name is invalid, or a server's reply was refused.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// A socket operation towards a server failed (ECONNREFUSED on `receive`:
    /// nothing serves DNS there).
    #[error("{op} ({server}): {source}")]
    Io {
        /// `connect`, `send`, `set timeout` or `receive`.
        op: &'static str,
        /// The server asked.
        server: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The server did not answer in time.
    #[error("no DNS reply from {server} within {timeout:?}")]
    Timeout {
        /// The server asked.
        server: SocketAddr,
        /// The wait per query ([`Resolver::timeout`]).
        timeout: Duration,
    },
    /// NXDOMAIN: a server said the name does not exist (final, no other server asked).
    #[error("{host}: no such name (NXDOMAIN)")]
    NoSuchName {
        /// The name looked up.
        host: String,
    },
    /// The name exists but has no A record (final, no other server asked).
    #[error("{host}: the name has no A record")]
    NoAddress {
        /// The name looked up.
        host: String,
    },
    /// Every server, in every round, failed.
    #[error("{host}: no usable answer after {tries} queries; last: {last}")]
    Failed {
        /// The name looked up.
        host: String,
        /// Queries sent in all (servers times rounds).
        tries: u32,
        /// The last query's failure.
        #[source]
        last: Box<DnsError>,
    },
}

/// A stub resolver over a fixed list of servers, tried in order; cheap to clone.
#[derive(Clone, Debug)]
pub struct Resolver {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    attempts: u32,
}

fn random_id() -> u16 {
    let mut b = [0u8; 2];
    if getrandom::fill(&mut b).is_err() {
        // Without entropy: still varies per query, only guessable.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return (t.subsec_nanos() >> 7) as u16;
    }
    u16::from_ne_bytes(b)
}

impl Resolver {
    /// Servers on port 53 (what a DHCP lease gives), 2 s per query, 2 rounds.
    pub fn new(servers: impl IntoIterator<Item = Ipv4Addr>) -> Resolver {
        Resolver::with_addrs(
            servers
                .into_iter()
                .map(|s| SocketAddr::from((s, 53)))
                .collect(),
        )
    }

    /// Servers at these socket addresses (any port, e.g. a test's), with the same
    /// defaults as [`Resolver::new`].
    pub fn with_addrs(servers: Vec<SocketAddr>) -> Resolver {
        Resolver {
            servers,
            timeout: Duration::from_secs(2),
            attempts: 2,
        }
    }

    /// How long to wait for each reply.
    pub fn timeout(mut self, t: Duration) -> Resolver {
        self.timeout = t;
        self
    }

    /// Rounds over all servers before giving up.
    pub fn attempts(mut self, n: u32) -> Resolver {
        self.attempts = n.max(1);
        self
    }

    /// The servers asked, in the order they are tried.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// `host` as addresses: an IPv4 literal is returned as is, anything else is
    /// looked up.
    pub fn resolve(&self, host: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(vec![ip]);
        }
        self.lookup_ipv4(host)
    }

    /// The A records of `host` (CNAMEs followed). NXDOMAIN and "no A record" are
    /// answers, returned at once; a server that fails, times out or sends a bad
    /// reply makes the resolver try the next one.
    pub fn lookup_ipv4(&self, host: &str) -> Result<Vec<Ipv4Addr>, DnsError> {
        let qname = wire::labels(host)?;
        if self.servers.is_empty() {
            return Err(DnsError::NoServers);
        }
        let mut tries = 0;
        let mut last = None;
        for round in 0..self.attempts {
            for &server in &self.servers {
                tries += 1;
                let started = Instant::now();
                match self.ask(server, &qname) {
                    Ok(Answer::Addrs(addrs)) if addrs.is_empty() => {
                        return Err(DnsError::NoAddress { host: host.into() })
                    }
                    Ok(Answer::Addrs(addrs)) => {
                        tracing::debug!(host, %server, ?addrs, elapsed_us = started.elapsed().as_micros() as u64, "DNS answer");
                        return Ok(addrs);
                    }
                    Ok(Answer::NoSuchName) => {
                        return Err(DnsError::NoSuchName { host: host.into() })
                    }
                    Err(e) => {
                        tracing::warn!(host, %server, round, error = %e, "DNS query failed");
                        last = Some(e);
                    }
                }
            }
        }
        Err(DnsError::Failed {
            host: host.into(),
            tries,
            last: Box::new(last.unwrap_or(DnsError::NoServers)),
        })
    }

    /// One query to one server.
    fn ask(&self, server: SocketAddr, qname: &[String]) -> Result<Answer, DnsError> {
        let ioerr = |op| move |source| DnsError::Io { op, server, source };
        let sock = crate::sock::connected_udp(server).map_err(ioerr("connect"))?;
        let id = random_id();
        sock.send(&wire::query(id, qname)).map_err(ioerr("send"))?;
        let deadline = Instant::now() + self.timeout;
        // One byte more than allowed, so an oversized reply is seen as such.
        let mut buf = [0u8; wire::MAX_UDP_LEN + 1];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DnsError::Timeout {
                    server,
                    timeout: self.timeout,
                });
            }
            sock.set_read_timeout(Some(left))
                .map_err(ioerr("set timeout"))?;
            let n = match sock.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // ECONNREFUSED: an ICMP port unreachable, nobody serves DNS there.
                Err(e) => return Err(ioerr("receive")(e)),
            };
            match wire::parse_reply(&buf[..n], id, qname) {
                // Not an answer to this query (a guess at our port, or a late
                // reply): keep waiting for the real one.
                Err(e @ (WireError::WrongId { .. } | WireError::QuestionMismatch)) => {
                    tracing::debug!(%server, len = n, error = %e, "DNS reply discarded");
                }
                r => return Ok(r?),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_need_no_server() {
        let r = Resolver::new([]);
        assert_eq!(
            r.resolve("192.0.2.7").unwrap(),
            vec![Ipv4Addr::new(192, 0, 2, 7)]
        );
        assert!(matches!(r.resolve("a.test"), Err(DnsError::NoServers)));
        assert!(matches!(
            r.resolve("a..test"),
            Err(DnsError::Wire(WireError::BadName(_)))
        ));
    }
}
