//! DHCPv4 client: DISCOVER, OFFER, REQUEST, ACK on the uplink, then the lease is
//! applied with netlink (address, link up, default route). No external program:
//! the node image has no dhclient and no shell to run one.
//!
//! Blocking and single-threaded on purpose: it runs once at boot, before anything
//! else needs the network, and again at T1 to renew. The sockets and the netlink
//! connection are created on the calling thread, so they live in that thread's
//! network namespace.

mod keep;
mod packet;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

pub use keep::{acquire_and_keep, keep, phase, retry_after, Phase};
pub use packet::prefix_len;
use packet::{Client, Offer, Reply};

use crate::link::{Iface, Link, LinkError};

/// What a DHCP server granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The node's address (`yiaddr`), a usable host address.
    pub address: Ipv4Addr,
    /// The subnet mask (option 1) as a prefix length, 1..=32.
    pub prefix_len: u8,
    /// The default gateway (the first of option 3); `None`: no default route is set.
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6), in the server's order; may be empty.
    pub dns: Vec<Ipv4Addr>,
    /// NTP servers (option 42), in the server's order; may be empty.
    pub ntp: Vec<Ipv4Addr>,
    /// The domain name (option 15) without a trailing dot; `None` if absent or not a
    /// plausible ASCII name.
    pub domain: Option<String>,
    /// How long the lease lasts from the ACK, in seconds (option 51, never 0).
    pub lease_secs: u32,
    /// T1: when to renew with the granting server (option 58, default half the lease).
    pub renew_secs: u32,
    /// T2: when to rebind with any server (option 59, default 7/8 of the lease).
    pub rebind_secs: u32,
    /// The granting server (option 54), where renewals are sent.
    pub server: Ipv4Addr,
}

impl Lease {
    /// The lease's NTP servers on port 123, for [`crate::sntp::query_first`].
    pub fn ntp_servers(&self) -> Vec<SocketAddr> {
        self.ntp
            .iter()
            .map(|a| SocketAddr::from((*a, 123)))
            .collect()
    }

    /// A resolver over the lease's DNS servers.
    pub fn resolver(&self) -> crate::dns::Resolver {
        crate::dns::Resolver::new(self.dns.iter().copied())
    }
}

/// Retransmission and identity.
#[derive(Clone, Debug)]
pub struct DhcpConfig {
    /// Transmissions of each request before giving up on that stage.
    pub attempts: u32,
    /// Wait after the first transmission; doubled after each (RFC 2131 4.1).
    pub initial_timeout: Duration,
    /// Cap of the doubling (RFC 2131: 64 s).
    pub max_timeout: Duration,
    /// Option 12, so the farmer can tell nodes apart in the DHCP server's leases.
    pub hostname: Option<String>,
}

impl Default for DhcpConfig {
    fn default() -> Self {
        DhcpConfig {
            attempts: 5,
            initial_timeout: Duration::from_secs(4),
            max_timeout: Duration::from_secs(64),
            hostname: None,
        }
    }
}

/// Why a reply was discarded.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// Shorter than the fixed header and magic cookie.
    #[error("truncated DHCP message: {len} bytes, the fixed header alone is 240")]
    Truncated {
        /// The datagram's length, in bytes.
        len: usize,
    },
    /// Longer than the client accepts.
    #[error("oversized DHCP message: {len} bytes, at most {max} accepted")]
    Oversized {
        /// The datagram's length, in bytes.
        len: usize,
        /// The most the client accepts, in bytes.
        max: usize,
    },
    /// The four bytes after the header are not the DHCP magic cookie (a BOOTP reply).
    #[error("not a DHCP message: bad magic cookie")]
    BadMagic,
    /// The decoder refused the message.
    #[error("malformed DHCP message: {0}")]
    Decode(dhcproto::error::DecodeError),
    /// The options area is not closed by End or an option runs past the datagram;
    /// the text says which.
    #[error("malformed DHCP options: {0}")]
    OptionsOverrun(&'static str),
    /// The option with this code has a length its type cannot have, or could not be
    /// decoded (the reply is refused rather than used with that option missing).
    #[error("malformed DHCP option {0}")]
    BadOption(u8),
    /// `hlen` (the hardware address length) is over 16.
    #[error("hardware address length {0}: at most 16 bytes fit in chaddr")]
    BadHardwareLength(u8),
    /// The op code says BOOTREQUEST: another client's message, not a server's reply.
    #[error("a BOOTREQUEST, not a reply")]
    NotAReply,
    /// The reply's transaction id is not the one this exchange sent.
    #[error("reply to another transaction ({xid:#010x})")]
    OtherTransaction {
        /// The reply's transaction id.
        xid: u32,
    },
    /// The reply is for another client's hardware address (`chaddr`).
    #[error("reply to another client hardware address")]
    OtherClient,
    /// A message type a client never receives (e.g. DISCOVER), by its name.
    #[error("unexpected DHCP message type {0}")]
    UnexpectedType(String),
    /// An option the reply must carry (message type, server identifier, subnet mask,
    /// lease time) is absent; the text names it.
    #[error("DHCP reply lacks the {0} option")]
    MissingOption(&'static str),
    /// The offered address is unspecified, broadcast, multicast or loopback: not one a
    /// host may take.
    #[error("offered address {0} cannot be a host address")]
    BadAddress(Ipv4Addr),
    /// The subnet mask has holes, or is `0.0.0.0`.
    #[error("netmask {0} is not contiguous")]
    BadNetmask(Ipv4Addr),
    /// The lease time (option 51) is 0 seconds.
    #[error("zero lease time")]
    ZeroLease,
}

/// Why no lease was obtained, renewed or applied.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// Netlink failed (looking up, setting up or configuring the interface).
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A socket operation on the interface failed.
    #[error("{op} on {iface}: {source}")]
    Socket {
        /// The operation, e.g. `send` or `bind UDP port 68`.
        op: &'static str,
        /// The interface the socket is bound to.
        iface: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// No acceptable reply within every retransmission of a stage.
    #[error("no DHCP {waiting_for} on {iface} after {attempts} transmissions ({elapsed:?}); last discarded reply: {last_discarded:?}")]
    Timeout {
        /// The interface asked on.
        iface: String,
        /// The reply the stage waited for (`OFFER`, `ACK`, `ACK to a renewal`).
        waiting_for: &'static str,
        /// How many times the request was sent.
        attempts: u32,
        /// Time spent in the stage.
        elapsed: Duration,
        /// Why the last reply that came was thrown away ([`PacketError`]'s text);
        /// `None`: nothing came at all.
        last_discarded: Option<String>,
    },
    /// The server answered the REQUEST with a NAK.
    #[error("DHCP server {server:?} refused the request (NAK): {message:?}")]
    Nak {
        /// The NAK's server identifier; `None` if it carried none.
        server: Option<Ipv4Addr>,
        /// The server's explanation (option 56), if any.
        message: Option<String>,
    },
}

fn sockerr(op: &'static str, iface: &str) -> impl FnOnce(std::io::Error) -> DhcpError {
    let iface = iface.to_string();
    move |source| DhcpError::Socket { op, iface, source }
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // Without entropy the xid is only less unpredictable; replies are still
    // matched on chaddr too. Boot must not fail for it.
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        return t.subsec_nanos() ^ std::process::id();
    }
    u32::from_ne_bytes(b)
}

/// One request/response stage: transmit, wait with exponential backoff, retransmit.
struct Exchange<'a> {
    iface: &'a str,
    sock: &'a UdpSocket,
    cfg: &'a DhcpConfig,
    client: &'a Client,
    xid: u32,
    started: Instant,
}

impl Exchange<'_> {
    fn secs(&self) -> u16 {
        self.started.elapsed().as_secs().min(u64::from(u16::MAX)) as u16
    }

    /// Send what `build(secs)` makes to `to` until `accept` takes a reply.
    fn run<T>(
        &self,
        waiting_for: &'static str,
        to: SocketAddrV4,
        build: impl Fn(u16) -> Vec<u8>,
        mut accept: impl FnMut(Reply) -> Option<Result<T, DhcpError>>,
    ) -> Result<T, DhcpError> {
        let mut last_discarded = None;
        let mut buf = [0u8; packet::MAX_LEN + 1];
        for attempt in 0..self.cfg.attempts.max(1) {
            let msg = build(self.secs());
            self.sock
                .send_to(&msg, to)
                .map_err(sockerr("send", self.iface))?;
            let wait = backoff(self.cfg, attempt);
            tracing::debug!(iface = self.iface, xid = self.xid, attempt, ?wait, %to, waiting_for, "DHCP request sent");
            let deadline = Instant::now() + wait;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                self.sock
                    .set_read_timeout(Some(left))
                    .map_err(sockerr("set timeout", self.iface))?;
                let (n, from) = match self.sock.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        break
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(sockerr("receive", self.iface)(e)),
                };
                match packet::parse_reply(&buf[..n], self.xid, &self.client.mac) {
                    Ok(reply) => {
                        if let Some(r) = accept(reply) {
                            return r;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(iface = self.iface, %from, len = n, error = %e, "DHCP reply discarded");
                        last_discarded = Some(e.to_string());
                    }
                }
            }
        }
        Err(DhcpError::Timeout {
            iface: self.iface.to_string(),
            waiting_for,
            attempts: self.cfg.attempts.max(1),
            elapsed: self.started.elapsed(),
            last_discarded,
        })
    }
}

/// RFC 2131 4.1: 4 s, 8 s, ... up to 64 s, randomised by up to a quarter so that
/// nodes powered on together do not retransmit in lockstep.
fn backoff(cfg: &DhcpConfig, attempt: u32) -> Duration {
    let base = cfg
        .initial_timeout
        .saturating_mul(1u32 << attempt.min(16))
        .min(cfg.max_timeout);
    let jitter_ms = (base.as_millis() as u64 / 4).max(1);
    base + Duration::from_millis(u64::from(random_u32()) % jitter_ms)
}

fn open(iface: &str, cfg: &DhcpConfig) -> Result<(Link, Iface, UdpSocket, Client), DhcpError> {
    let link = Link::open()?;
    let ifc = link.iface(iface)?;
    if !ifc.up {
        // Nothing can be sent on a down link; up is also part of the lease applied.
        link.set_up(ifc.index)?;
    }
    let sock = crate::sock::udp_on_device(
        iface,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, packet::CLIENT),
    )
    .map_err(|e| sockerr("bind UDP port 68", iface)(e.into()))?;
    let client = Client {
        mac: ifc.mac.clone(),
        hostname: cfg.hostname.clone(),
    };
    Ok((link, ifc, sock, client))
}

/// Obtain a lease on `iface` (in the calling thread's network namespace): the
/// link is set up if it is down; nothing else is configured (see [`apply`]).
pub fn acquire(iface: &str, cfg: &DhcpConfig) -> Result<Lease, DhcpError> {
    let (_link, _ifc, sock, client) = open(iface, cfg)?;
    let ex = Exchange {
        iface,
        sock: &sock,
        cfg,
        client: &client,
        xid: random_u32(),
        started: Instant::now(),
    };
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, packet::SERVER_PORT);
    // The first usable offer wins (RFC 2131 allows any choice).
    let offer: Offer = ex.run(
        "OFFER",
        bcast,
        |secs| client.discover(ex.xid, secs),
        |r| match r {
            Reply::Offer(o) => Some(Ok(o)),
            _ => None,
        },
    )?;
    tracing::info!(iface, address = %offer.address, server = %offer.server, "DHCP offer");
    let lease = ex.run(
        "ACK",
        bcast,
        |secs| client.request_offer(ex.xid, secs, &offer),
        |r| match r {
            Reply::Ack(l) if l.server == offer.server => Some(Ok(l)),
            Reply::Nak { server, message } if server.is_none_or(|s| s == offer.server) => {
                Some(Err(DhcpError::Nak { server, message }))
            }
            // Another server's late OFFER or ACK: not ours to take now.
            _ => None,
        },
    )?;
    log_lease(iface, "DHCP lease acquired", &lease, ex.started);
    Ok(lease)
}

/// Renew `lease` with the server that granted it (the RENEWING state, at T1):
/// unicast from the configured address. Returns the extended lease, which the
/// caller applies again (the address may change only if the server says so).
pub fn renew(iface: &str, lease: &Lease, cfg: &DhcpConfig) -> Result<Lease, DhcpError> {
    let (_link, _ifc, sock, client) = open(iface, cfg)?;
    let ex = Exchange {
        iface,
        sock: &sock,
        cfg,
        client: &client,
        xid: random_u32(),
        started: Instant::now(),
    };
    let to = SocketAddrV4::new(lease.server, packet::SERVER_PORT);
    let renewed = ex.run(
        "ACK to a renewal",
        to,
        |secs| client.request_renew(ex.xid, secs, lease.address),
        |r| match r {
            Reply::Ack(l) => Some(Ok(l)),
            Reply::Nak { server, message } => Some(Err(DhcpError::Nak { server, message })),
            Reply::Offer(_) => None,
        },
    )?;
    log_lease(iface, "DHCP lease renewed", &renewed, ex.started);
    Ok(renewed)
}

fn log_lease(iface: &str, what: &'static str, l: &Lease, started: Instant) {
    tracing::info!(
        iface,
        address = %l.address,
        prefix_len = l.prefix_len,
        router = ?l.router,
        dns = ?l.dns,
        ntp = ?l.ntp,
        domain = ?l.domain,
        lease_secs = l.lease_secs,
        server = %l.server,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "{what}"
    );
}

/// Configure `lease` on `iface`: link up, `address/prefix_len` (replacing the same
/// address, so re-applying after a renewal is harmless), default route via the
/// router if the lease names one. Other addresses and routes are left alone.
pub fn apply(iface: &str, lease: &Lease) -> Result<(), DhcpError> {
    let link = Link::open()?;
    let ifc = link.iface(iface)?;
    link.set_up(ifc.index)?;
    link.replace_addr(ifc.index, lease.address, lease.prefix_len)?;
    if let Some(gw) = lease.router {
        link.replace_default_route(gw, ifc.index)?;
    }
    tracing::info!(iface, address = %lease.address, prefix_len = lease.prefix_len, router = ?lease.router, "DHCP lease applied");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_helpers() {
        let l = Lease {
            address: Ipv4Addr::new(10, 0, 0, 5),
            prefix_len: 24,
            router: None,
            dns: vec![Ipv4Addr::new(10, 0, 0, 2)],
            ntp: vec![Ipv4Addr::new(10, 0, 0, 3)],
            domain: None,
            lease_secs: 60,
            renew_secs: 30,
            rebind_secs: 52,
            server: Ipv4Addr::new(10, 0, 0, 1),
        };
        assert_eq!(l.ntp_servers(), vec!["10.0.0.3:123".parse().unwrap()]);
        assert_eq!(l.resolver().servers(), &["10.0.0.2:53".parse().unwrap()]);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let cfg = DhcpConfig::default();
        for (attempt, base) in [(0, 4), (1, 8), (2, 16), (3, 32), (4, 64), (9, 64), (40, 64)] {
            let b = backoff(&cfg, attempt);
            let base = Duration::from_secs(base);
            assert!(b >= base && b < base + base / 4, "{attempt}: {b:?}");
        }
    }
}
