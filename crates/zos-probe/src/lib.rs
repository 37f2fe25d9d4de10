//! Built-in diagnostic probes: what a farmer or a workload's owner may ask a node to
//! run, by signed request, instead of a shell (issue #18, section 4).
//!
//! The set is closed ([`ProbeSpec`]): ICMP ping, a TCP connect, a DNS lookup, a hop
//! list and a capture of packet headers. Each is read-only and bounded: counts are
//! checked by [`ProbeSpec::validate`], every socket has a timeout and the whole probe a
//! deadline ([`run`] returns by `limit` plus a small margin, whatever the network
//! does). Nothing is executed: the probes are sockets opened from Rust (raw ICMP, TCP,
//! UDP, AF_PACKET) on a fresh thread that entered the network namespace asked for, so
//! no other thread of the caller ever changes namespace. A capture reports headers
//! only: addresses, ports, protocol, length, TCP flags; never a payload byte.

mod capture;
mod dns;
mod icmp;
mod tcp;

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long [`run`] may take beyond its `limit` before it answers anyway (the probe's
/// thread is then left to finish by its own socket timeouts).
pub const LIMIT_MARGIN: Duration = Duration::from_millis(500);

/// The longest a probe may run, whatever `limit` the caller gives [`run`] (the
/// largest capture is 10 s; a trace of 30 silent hops, 30 s).
pub const MAX_LIMIT: Duration = Duration::from_secs(60);

/// One built-in probe and its arguments: the only things a probe request can ask for
/// (an unknown probe or field is a deserialization error).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "probe", rename_all = "snake_case", deny_unknown_fields)]
pub enum ProbeSpec {
    /// ICMP (ICMPv6) echo requests to `target`, `count` of them (1..=10).
    Ping {
        /// Whom to ping.
        target: IpAddr,
        /// Echo requests to send, 1..=10.
        count: u8,
    },
    /// A TCP connect: reports connected, refused or timed out, and the time it took.
    TcpConnect {
        /// Where to connect.
        addr: SocketAddr,
    },
    /// The A and AAAA records of `name`, asked over UDP of `server` (required: a
    /// namespace has no resolver configuration the node could trust).
    Dns {
        /// The name to resolve (taken as fully qualified).
        name: String,
        /// The DNS server to ask.
        server: Option<SocketAddr>,
    },
    /// The hops towards `target`: ICMP (ICMPv6) echo with increasing TTL, up to
    /// `max_hops` (1..=30).
    Trace {
        /// The destination.
        target: IpAddr,
        /// The largest TTL tried, 1..=30.
        max_hops: u8,
    },
    /// One header line for each of the next `packets` (1..=200) packets on the
    /// namespace's links, for at most `seconds` (1..=10).
    Capture {
        /// Packets to report, 1..=200.
        packets: u16,
        /// The longest the capture listens, 1..=10 s.
        seconds: u8,
    },
}

/// Why a probe was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// An argument is outside its range; nothing was sent.
    #[error("{probe}: {field} = {value} is outside {min}..={max}")]
    OutOfRange {
        /// The probe's name.
        probe: &'static str,
        /// The argument.
        field: &'static str,
        /// What was asked.
        value: u64,
        /// The smallest allowed.
        min: u64,
        /// The largest allowed.
        max: u64,
    },
    /// The DNS name is not a valid host name.
    #[error("dns: {0:?} is not a valid DNS name")]
    BadName(String),
    /// A DNS probe without a server: none is known inside a namespace.
    #[error("dns: no DNS server known in this namespace: the request must name one")]
    NoDnsServer,
    /// The DNS server's reply was refused (malformed, truncated, an error rcode) or
    /// named no address.
    #[error("dns: {0}")]
    DnsReply(String),
    /// The namespace file could not be opened or entered.
    #[error("network namespace {path}: {op}: {source}")]
    Netns {
        /// The namespace file.
        path: String,
        /// What failed (`open`, `setns`).
        op: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// A socket operation failed.
    #[error("{op}: {source}")]
    Io {
        /// The operation (`raw ICMP socket`, `send`, ...).
        op: &'static str,
        /// The system's error.
        source: std::io::Error,
    },
    /// The probe did not finish within its limit (plus [`LIMIT_MARGIN`]).
    #[error("probe did not finish within its limit of {0:?}")]
    Overran(Duration),
    /// The probe's thread panicked (a bug; the caller carries on).
    #[error("probe failed internally: {0}")]
    Panicked(String),
}

impl ProbeError {
    pub(crate) fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> ProbeError {
        move |source| ProbeError::Io { op, source }
    }
    pub(crate) fn nix(op: &'static str) -> impl FnOnce(nix::Error) -> ProbeError {
        move |e| ProbeError::Io {
            op,
            source: e.into(),
        }
    }
}

/// What a probe found: a name, whether it succeeded, its lines in order, the error
/// that ended it, and how long it took.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ProbeResult {
    /// The probe's name (`ping`, `tcp_connect`, `dns`, `trace`, `capture`).
    pub probe: String,
    /// True when the probe reached what it asked about (a reply, a connection, an
    /// answer, the target, at least one packet).
    pub ok: bool,
    /// Human-readable lines, one per reply, hop or packet.
    pub lines: Vec<String>,
    /// Why it failed or was refused, when it did.
    pub error: Option<String>,
    /// Wall time of the probe, in milliseconds.
    pub elapsed_ms: u64,
}

fn range(
    probe: &'static str,
    field: &'static str,
    v: u64,
    min: u64,
    max: u64,
) -> Result<(), ProbeError> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err(ProbeError::OutOfRange {
            probe,
            field,
            value: v,
            min,
            max,
        })
    }
}

impl ProbeSpec {
    /// The probe's name, as in its serialized `probe` tag.
    pub fn name(&self) -> &'static str {
        match self {
            ProbeSpec::Ping { .. } => "ping",
            ProbeSpec::TcpConnect { .. } => "tcp_connect",
            ProbeSpec::Dns { .. } => "dns",
            ProbeSpec::Trace { .. } => "trace",
            ProbeSpec::Capture { .. } => "capture",
        }
    }

    /// Refuse arguments out of range: ping count 1..=10, trace max_hops 1..=30,
    /// capture packets 1..=200 and seconds 1..=10; a DNS name that is not a host
    /// name.
    pub fn validate(&self) -> Result<(), ProbeError> {
        let p = self.name();
        match self {
            ProbeSpec::Ping { count, .. } => range(p, "count", (*count).into(), 1, 10),
            ProbeSpec::TcpConnect { .. } => Ok(()),
            ProbeSpec::Dns { name, .. } => dns::check_name(name),
            ProbeSpec::Trace { max_hops, .. } => range(p, "max_hops", (*max_hops).into(), 1, 30),
            ProbeSpec::Capture { packets, seconds } => {
                range(p, "packets", (*packets).into(), 1, 200)?;
                range(p, "seconds", (*seconds).into(), 1, 10)
            }
        }
    }
}

/// What a probe hands back to [`run`]: success, lines, and the error that ended it.
pub(crate) struct Outcome {
    pub ok: bool,
    pub lines: Vec<String>,
    pub error: Option<ProbeError>,
}

impl Outcome {
    pub(crate) fn failed(lines: Vec<String>, e: ProbeError) -> Outcome {
        Outcome {
            ok: false,
            lines,
            error: Some(e),
        }
    }
}

/// Run `spec` inside the network namespace at `netns` (a bind-mounted nsfs file), or
/// in the caller's when `None`, for at most `limit` (plus [`LIMIT_MARGIN`]; `limit`
/// itself at most [`MAX_LIMIT`]). Never panics: a refusal, a failure or an overrun
/// is the result's `error`.
pub fn run(spec: &ProbeSpec, netns: Option<&Path>, limit: Duration) -> ProbeResult {
    let started = Instant::now();
    let limit = limit.min(MAX_LIMIT);
    let name = spec.name();
    let done = |o: Outcome| {
        let r = ProbeResult {
            probe: name.to_string(),
            ok: o.ok,
            lines: o.lines,
            error: o.error.map(|e| e.to_string()),
            elapsed_ms: started.elapsed().as_millis() as u64,
        };
        tracing::info!(probe = name, ok = r.ok, lines = r.lines.len(), error = ?r.error, elapsed_ms = r.elapsed_ms, "probe ran");
        r
    };
    if let Err(e) = spec.validate() {
        return done(Outcome::failed(vec![], e));
    }
    let ns = match netns.map(|p| (p, File::open(p))) {
        None => None,
        Some((_, Ok(f))) => Some(f),
        Some((p, Err(source))) => {
            return done(Outcome::failed(
                vec![],
                ProbeError::Netns {
                    path: p.display().to_string(),
                    op: "open",
                    source,
                },
            ))
        }
    };
    let deadline = started + limit;
    let (tx, rx) = std::sync::mpsc::channel();
    let spec2 = spec.clone();
    let ns_name = netns.map(|p| p.display().to_string()).unwrap_or_default();
    let spawned = std::thread::Builder::new()
        .name(format!("probe-{name}"))
        .spawn(move || {
            let out = std::panic::catch_unwind(move || {
                if let Some(ns) = ns {
                    // Only this thread enters the namespace; it exits when done.
                    if let Err(e) = nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET) {
                        return Outcome::failed(
                            vec![],
                            ProbeError::Netns {
                                path: ns_name,
                                op: "setns",
                                source: e.into(),
                            },
                        );
                    }
                }
                probe(&spec2, deadline)
            })
            .unwrap_or_else(|p| {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Outcome::failed(vec![], ProbeError::Panicked(what))
            });
            let _ = tx.send(out);
        });
    if let Err(e) = spawned {
        return done(Outcome::failed(
            vec![],
            ProbeError::io("spawn probe thread")(e),
        ));
    }
    let wait = (deadline + LIMIT_MARGIN).saturating_duration_since(Instant::now());
    match rx.recv_timeout(wait) {
        Ok(o) => done(o),
        Err(_) => done(Outcome::failed(vec![], ProbeError::Overran(limit))),
    }
}

/// The probe itself, on the thread inside the namespace.
fn probe(spec: &ProbeSpec, deadline: Instant) -> Outcome {
    match spec {
        ProbeSpec::Ping { target, count } => icmp::ping(*target, *count, deadline),
        ProbeSpec::TcpConnect { addr } => tcp::connect(*addr, deadline),
        ProbeSpec::Dns { name, server } => dns::resolve(name, *server, deadline),
        ProbeSpec::Trace { target, max_hops } => icmp::trace(*target, *max_hops, deadline),
        ProbeSpec::Capture { packets, seconds } => {
            let until = deadline.min(Instant::now() + Duration::from_secs((*seconds).into()));
            capture::capture(*packets, until)
        }
    }
}

/// The time left until `deadline`, at least 1 ms (a zero socket timeout means
/// "block forever").
pub(crate) fn left(deadline: Instant) -> Option<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        None
    } else {
        Some(d.max(Duration::from_millis(1)))
    }
}

/// Milliseconds with three decimals, as ping prints them.
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}
