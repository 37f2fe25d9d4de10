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
    #[error("host name {0:?} is not a valid DNS name")]
    BadName(String),
    #[error("truncated DNS message")]
    Truncated,
    #[error("oversized DNS reply: {len} bytes, at most {max} over UDP")]
    Oversized { len: usize, max: usize },
    #[error("DNS reply id {got:#06x}, expected {want:#06x}")]
    WrongId { got: u16, want: u16 },
    #[error("DNS message is a query, not a response")]
    NotAResponse,
    #[error("DNS reply has opcode {0}")]
    UnexpectedOpcode(u8),
    #[error("DNS reply is truncated (TC): the answer needs TCP, which is not supported")]
    TruncatedFlag,
    #[error("DNS reply does not echo our question")]
    QuestionMismatch,
    #[error("DNS server error, rcode {0}")]
    ServerError(u8),
    #[error("bad name compression in DNS reply: {0}")]
    BadCompression(&'static str),
    #[error("malformed {0} record in DNS reply")]
    BadRecord(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("no DNS server configured")]
    NoServers,
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("{op} ({server}): {source}")]
    Io {
        op: &'static str,
        server: SocketAddr,
        source: std::io::Error,
    },
    #[error("no DNS reply from {server} within {timeout:?}")]
    Timeout {
        server: SocketAddr,
        timeout: Duration,
    },
    #[error("{host}: no such name (NXDOMAIN)")]
    NoSuchName { host: String },
    #[error("{host}: the name has no A record")]
    NoAddress { host: String },
    #[error("{host}: no usable answer after {tries} queries; last: {last}")]
    Failed {
        host: String,
        tries: u32,
        #[source]
        last: Box<DnsError>,
    },
}

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
