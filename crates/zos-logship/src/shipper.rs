//! The shipper: one tokio task per (destination, source), a bounded in-memory queue in
//! front of it, reconnection with backoff, exact drop accounting.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::destination::{Destination, Transport};
use crate::line::{encode, Line, Severity, Stamp};

/// The queue's bounds. When a line would exceed either, it is dropped (the NEWEST line is
/// dropped: the queue keeps the oldest, so the first boot lines survive an uplink that
/// takes long to come up) and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Lines held at most.
    pub max_lines: usize,
    /// Bytes held at most (an estimate of the lines' memory; see `Line`).
    pub max_bytes: usize,
    /// A message longer than this (bytes) is cut on a character boundary when sent.
    pub max_message: usize,
}

impl Default for Limits {
    /// 10 000 lines, 4 MiB, 8 KiB per message (rsyslog's default maximum message size).
    fn default() -> Limits {
        Limits {
            max_lines: 10_000,
            max_bytes: 4 << 20,
            max_message: 8 << 10,
        }
    }
}

/// Reconnection delays: `initial`, doubled after each failed attempt up to `max`; reset
/// after a connection succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    /// 250 ms doubling to 30 s.
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

/// A shipper's settings.
#[derive(Debug, Clone)]
pub struct ShipperConfig {
    /// HOSTNAME of every line: the node id.
    pub hostname: String,
    /// Queue bounds.
    pub limits: Limits,
    /// Reconnection delays.
    pub backoff: Backoff,
    /// Bound on a TCP connect plus TLS handshake.
    pub connect_timeout: Duration,
    /// Bound on one batch's write: a receiver that stops reading is reconnected.
    pub write_timeout: Duration,
}

impl ShipperConfig {
    /// Defaults for this node id: [`Limits::default`], [`Backoff::default`], 10 s
    /// connect, 30 s write.
    pub fn new(hostname: impl Into<String>) -> ShipperConfig {
        ShipperConfig {
            hostname: hostname.into(),
            limits: Limits::default(),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Why delivery is not happening right now (the last one, in [`Stats::last_error`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// The TCP connection could not be made (refused, unreachable, timed out).
    #[error("connecting to {dest}: {error}")]
    Connect {
        /// The destination.
        dest: String,
        /// What the socket said.
        error: String,
    },
    /// The server's certificate does not chain to the pinned CA, or does not name the
    /// host: nothing is sent to it.
    #[error("{dest}: server certificate refused: {reason}")]
    CertificateRejected {
        /// The destination.
        dest: String,
        /// rustls's reason (e.g. unknown issuer).
        reason: String,
    },
    /// Any other TLS handshake failure.
    #[error("TLS handshake with {dest}: {error}")]
    Tls {
        /// The destination.
        dest: String,
        /// What rustls said.
        error: String,
    },
    /// Writing failed, or the receiver closed the connection.
    #[error("sending to {dest}: {error}")]
    Send {
        /// The destination.
        dest: String,
        /// What the socket said.
        error: String,
    },
}

/// Why a shipper could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// Shippers are tokio tasks: start them inside a runtime.
    #[error("a shipper must be started inside a tokio runtime")]
    NoRuntime,
}

/// A shipper's counters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Stats {
    /// Lines written to the destination (queued lines; the "N lines dropped" notices are
    /// not counted).
    pub sent: u64,
    /// Lines waiting in the queue.
    pub queued: usize,
    /// Lines dropped because the queue was full, since the start.
    pub dropped: u64,
    /// Whether a connection is up now.
    pub connected: bool,
    /// The last delivery failure (kept after a reconnection).
    pub last_error: Option<DeliveryError>,
}

enum Entry {
    Line(Line),
    /// This many lines were dropped here (after the line before it).
    Dropped(u64),
}

struct State {
    queue: VecDeque<Entry>,
    lines: usize,
    bytes: usize,
    stats: Stats,
    closing: bool,
}

struct Shared {
    state: Mutex<State>,
    limits: Limits,
    /// A line was queued, or closing began.
    wake: Notify,
    /// Bumped on every change of `state` (for `wait_until`).
    changed: watch::Sender<u64>,
    /// HOSTNAME once the node knows its id ([`Shipper::set_hostname`]); until then the
    /// config's.
    hostname: Mutex<Option<String>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the queue consistent (no partial updates
        // span an unwind point), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    fn push(&self, line: Line) {
        {
            let mut s = self.lock();
            let w = line.weight();
            if s.lines + 1 > self.limits.max_lines || s.bytes + w > self.limits.max_bytes {
                s.stats.dropped += 1;
                match s.queue.back_mut() {
                    Some(Entry::Dropped(n)) => *n += 1,
                    _ => s.queue.push_back(Entry::Dropped(1)),
                }
            } else {
                s.lines += 1;
                s.bytes += w;
                s.stats.queued = s.lines;
                s.queue.push_back(Entry::Line(line));
            }
        }
        self.wake.notify_one();
        self.bump();
    }

    fn closed_and_empty(&self) -> bool {
        let s = self.lock();
        s.closing && s.queue.is_empty()
    }

    fn update(&self, f: impl FnOnce(&mut Stats)) {
        f(&mut self.lock().stats);
        self.bump();
    }
}

/// The node's own lines (zosd, PID 1, the kernel) into the node's shipper. Cheap to clone;
/// never blocks (a full queue drops the line and counts it).
#[derive(Clone)]
pub struct NodeSink {
    shared: Arc<Shared>,
}

impl NodeSink {
    /// Queues one line.
    pub fn send(&self, line: Line) {
        self.shared.push(line);
    }
}

/// One contract's workload lines into that contract's shipper. It is bound to its
/// contract when the shipper is made: a line sent here carries this contract id and goes
/// to this contract's destination only; there is no way to name another.
#[derive(Clone)]
pub struct TenantSink {
    shared: Arc<Shared>,
    contract: Arc<str>,
}

impl TenantSink {
    /// The contract this sink is bound to.
    pub fn contract(&self) -> &str {
        &self.contract
    }

    /// Queues one line of `workload`: its `workload` parameter is set to it (any
    /// `contract` parameter is overridden by the bound contract when sent).
    pub fn send(&self, workload: &str, mut line: Line) {
        line.params
            .retain(|(k, _)| k != "workload" && k != "contract");
        line.params
            .insert(0, ("workload".to_string(), workload.to_string()));
        self.shared.push(line);
    }
}

/// One destination's delivery task. Dropping it stops the task (queued lines are lost:
/// call [`Shipper::shutdown`] to drain first).
pub struct Shipper {
    shared: Arc<Shared>,
    dest: watch::Sender<Option<Destination>>,
    task: Option<JoinHandle<()>>,
}

impl Shipper {
    /// Starts the node's shipper to `dest`. Lines are accepted at once; they are queued
    /// until a connection is up.
    pub fn node(
        dest: Destination,
        config: ShipperConfig,
    ) -> Result<(Shipper, NodeSink), StartError> {
        let stamp = Stamp {
            hostname: config.hostname.clone(),
            contract: None,
        };
        let shipper = Shipper::start(Some(dest), config, stamp)?;
        let sink = NodeSink {
            shared: shipper.shared.clone(),
        };
        Ok((shipper, sink))
    }

    /// Starts the node's shipper before its destination is known (at boot, before the
    /// farm record is read): lines are accepted and queued (up to the bounds) until
    /// [`Shipper::set_destination`].
    pub fn node_unbound(config: ShipperConfig) -> Result<(Shipper, NodeSink), StartError> {
        let stamp = Stamp {
            hostname: config.hostname.clone(),
            contract: None,
        };
        let shipper = Shipper::start(None, config, stamp)?;
        let sink = NodeSink {
            shared: shipper.shared.clone(),
        };
        Ok((shipper, sink))
    }

    /// Starts the shipper of one contract's workload lines to the contract's `dest`.
    pub fn tenant(
        dest: Destination,
        contract: &str,
        config: ShipperConfig,
    ) -> Result<(Shipper, TenantSink), StartError> {
        let stamp = Stamp {
            hostname: config.hostname.clone(),
            contract: Some(contract.into()),
        };
        let shipper = Shipper::start(Some(dest), config, stamp)?;
        let sink = TenantSink {
            shared: shipper.shared.clone(),
            contract: contract.into(),
        };
        Ok((shipper, sink))
    }

    fn start(
        dest: Option<Destination>,
        config: ShipperConfig,
        stamp: Stamp,
    ) -> Result<Shipper, StartError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                lines: 0,
                bytes: 0,
                stats: Stats::default(),
                closing: false,
            }),
            limits: config.limits,
            wake: Notify::new(),
            changed: watch::channel(0).0,
            hostname: Mutex::new(None),
        });
        let (dest, dest_rx) = watch::channel(dest);
        let task = handle.spawn(run(shared.clone(), dest_rx, config, stamp));
        Ok(Shipper {
            shared,
            dest,
            task: Some(task),
        })
    }

    /// The destination (`None`: not known yet).
    pub fn destination(&self) -> Option<Destination> {
        self.dest.borrow().clone()
    }

    /// Sends to `dest` from now on: what is queued goes there (the connection to a
    /// previous destination is closed first). Nothing happens if it is the same.
    pub fn set_destination(&self, dest: Destination) {
        self.dest.send_if_modified(|d| {
            if d.as_ref() == Some(&dest) {
                return false;
            }
            *d = Some(dest);
            true
        });
    }

    /// HOSTNAME of the lines sent from now on, queued ones included: a node's shipper
    /// starts before the node has read its id from its pools. Set it before the
    /// destination, so that no line leaves with the placeholder.
    pub fn set_hostname(&self, hostname: impl Into<String>) {
        *self
            .shared
            .hostname
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(hostname.into());
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// Waits until `pred` holds for the counters, at most `timeout`: `Ok` with the
    /// counters that satisfied it, or `Err` with the last ones seen.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&Stats) -> bool,
    ) -> Result<Stats, Stats> {
        let mut rx = self.shared.changed.subscribe();
        let wait = async {
            loop {
                rx.borrow_and_update();
                let s = self.stats();
                if pred(&s) {
                    return s;
                }
                if rx.changed().await.is_err() {
                    return s;
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(s) if pred(&s) => Ok(s),
            Ok(s) => Err(s),
            Err(_) => Err(self.stats()),
        }
    }

    /// Sends what is queued (at most `timeout`), then stops. Returns the final counters.
    pub async fn shutdown(mut self, timeout: Duration) -> Stats {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(timeout, task).await.is_err() {
                abort.abort();
            }
        }
        self.stats()
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Writes to a connection (TCP or TLS).
trait Conn: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Conn for T {}

/// Lines taken per write.
const BATCH_LINES: usize = 256;
const BATCH_BYTES: usize = 256 << 10;

/// How a connection ended.
enum End {
    /// Closing, and nothing left to send.
    Done,
    /// The destination changed.
    Redirected,
    /// Writing failed or the receiver closed it.
    Failed(String),
}

async fn run(
    shared: Arc<Shared>,
    mut dest_rx: watch::Receiver<Option<Destination>>,
    config: ShipperConfig,
    stamp: Stamp,
) {
    let mut delay = config.backoff.initial;
    loop {
        if shared.closed_and_empty() {
            return;
        }
        let Some(dest) = dest_rx.borrow_and_update().clone() else {
            // No destination yet: lines wait in the queue.
            if shared.lock().closing {
                return;
            }
            tokio::select! {
                r = dest_rx.changed() => if r.is_err() { return },
                _ = shared.wake.notified() => {}
            }
            continue;
        };
        let name = dest.to_string();
        let conn = match tokio::time::timeout(config.connect_timeout, connect(&dest, &name)).await {
            Ok(Ok(c)) => c,
            other => {
                let error = match other {
                    Ok(Err(e)) => e,
                    _ => DeliveryError::Connect {
                        dest: name.clone(),
                        error: "timed out".into(),
                    },
                };
                tracing::debug!(dest = %name, %error, delay_ms = delay.as_millis() as u64, "log destination unreachable");
                shared.update(|s| {
                    s.connected = false;
                    s.last_error = Some(error);
                });
                if shared.lock().closing {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => delay = (delay * 2).min(config.backoff.max),
                    // A new destination is tried at once.
                    r = dest_rx.changed() => {
                        if r.is_err() {
                            return;
                        }
                        delay = config.backoff.initial;
                    }
                }
                continue;
            }
        };
        delay = config.backoff.initial;
        shared.update(|s| s.connected = true);
        tracing::debug!(dest = %name, "log destination connected");
        let mut stamp = stamp.clone();
        if let Some(h) = shared
            .hostname
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            stamp.hostname = h;
        }
        let end = deliver(&shared, conn, &config, &stamp, &dest, &mut dest_rx).await;
        shared.update(|s| {
            s.connected = false;
            if let End::Failed(error) = &end {
                s.last_error = Some(DeliveryError::Send {
                    dest: name.clone(),
                    error: error.clone(),
                });
            }
        });
        if let End::Done = end {
            return;
        }
    }
}

/// Sends until closing with nothing left, the destination changes, or the connection
/// fails.
async fn deliver(
    shared: &Shared,
    conn: Box<dyn Conn>,
    config: &ShipperConfig,
    stamp: &Stamp,
    dest: &Destination,
    dest_rx: &mut watch::Receiver<Option<Destination>>,
) -> End {
    let (mut rd, mut wr) = tokio::io::split(conn);
    let mut scratch = [0u8; 512];
    let closed = |r: std::io::Result<usize>| match r {
        Ok(0) => Some(End::Failed("closed by the receiver".into())),
        Ok(_) => None,
        Err(e) => Some(End::Failed(e.to_string())),
    };
    loop {
        if dest_rx.has_changed().unwrap_or(true) {
            let _ = tokio::time::timeout(config.write_timeout, wr.shutdown()).await;
            return End::Redirected;
        }
        // The receiver never sends: a readable connection is a closed one. Checked before
        // every write so lines are not written into a connection already closed.
        tokio::select! {
            biased;
            r = rd.read(&mut scratch) => if let Some(end) = closed(r) { return end },
            _ = std::future::ready(()) => {}
        }
        let (frames, taken, lines) = take_batch(shared, config, stamp, dest);
        if taken == 0 {
            if shared.lock().closing {
                let _ = tokio::time::timeout(config.write_timeout, wr.shutdown()).await;
                return End::Done;
            }
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = dest_rx.changed() => {
                    let _ = tokio::time::timeout(config.write_timeout, wr.shutdown()).await;
                    return End::Redirected;
                }
                r = rd.read(&mut scratch) => if let Some(end) = closed(r) { return end },
            }
            continue;
        }
        let write = async {
            wr.write_all(&frames).await?;
            wr.flush().await
        };
        match tokio::time::timeout(config.write_timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return End::Failed(e.to_string()),
            Err(_) => return End::Failed("write timed out".into()),
        }
        {
            let mut s = shared.lock();
            for _ in 0..taken {
                if let Some(Entry::Line(l)) = s.queue.pop_front() {
                    s.lines -= 1;
                    s.bytes -= l.weight();
                }
            }
            s.stats.sent += lines;
            s.stats.queued = s.lines;
        }
        shared.bump();
    }
}

/// Encodes the queue's head (without removing it): the frames, how many entries, how
/// many of them are lines.
fn take_batch(
    shared: &Shared,
    config: &ShipperConfig,
    stamp: &Stamp,
    dest: &Destination,
) -> (Vec<u8>, usize, u64) {
    let s = shared.lock();
    let mut out = Vec::new();
    let (mut taken, mut lines) = (0, 0);
    for e in s.queue.iter().take(BATCH_LINES) {
        match e {
            Entry::Line(l) => {
                out.extend(encode(l, stamp, dest.format, config.limits.max_message));
                lines += 1;
            }
            Entry::Dropped(n) => {
                let notice = dropped_notice(*n);
                out.extend(encode(
                    &notice,
                    stamp,
                    dest.format,
                    config.limits.max_message,
                ));
            }
        }
        taken += 1;
        if out.len() >= BATCH_BYTES {
            break;
        }
    }
    (out, taken, lines)
}

/// The line sent where lines were dropped: `N lines dropped`, MSGID `DROPPED`, the
/// count also as the `dropped` parameter.
pub fn dropped_notice(n: u64) -> Line {
    Line::new("zosd", Severity::Warning, format!("{n} lines dropped"))
        .msgid("DROPPED")
        .param("dropped", n.to_string())
}

async fn connect(dest: &Destination, name: &str) -> Result<Box<dyn Conn>, DeliveryError> {
    let tcp = TcpStream::connect((dest.host.as_str(), dest.port))
        .await
        .map_err(|e| DeliveryError::Connect {
            dest: name.to_string(),
            error: e.to_string(),
        })?;
    let _ = tcp.set_nodelay(true);
    match &dest.transport {
        Transport::Tcp => Ok(Box::new(tcp)),
        Transport::Tls(ca) => {
            let tls_err = |error: String| DeliveryError::Tls {
                dest: name.to_string(),
                error,
            };
            // ring, not aws-lc (a C/cmake build the workspace stays without): ring has no
            // post-quantum key exchange, which rustls 0.23.48 flags by deprecating this.
            #[allow(deprecated)]
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| tls_err(e.to_string()))?
                .with_root_certificates(ca.roots())
                .with_no_client_auth();
            let server = rustls::pki_types::ServerName::try_from(dest.host.clone())
                .map_err(|e| tls_err(e.to_string()))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(server, tcp)
                .await
                .map_err(
                    |e| match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                        Some(rustls::Error::InvalidCertificate(c)) => {
                            DeliveryError::CertificateRejected {
                                dest: name.to_string(),
                                reason: format!("{c:?}"),
                            }
                        }
                        _ => tls_err(e.to_string()),
                    },
                )?;
            Ok(Box::new(stream))
        }
    }
}

/// The contracts' shippers: one per contract, to the destination its contract names.
/// A contract's lines enter only through its own [`TenantSink`].
pub struct TenantShippers {
    config: ShipperConfig,
    shippers: HashMap<String, (Shipper, TenantSink)>,
}

impl TenantShippers {
    /// No contracts yet; each shipper gets `config`.
    pub fn new(config: ShipperConfig) -> TenantShippers {
        TenantShippers {
            config,
            shippers: HashMap::new(),
        }
    }

    /// Sets where `contract`'s lines go: a new destination replaces the shipper (lines
    /// still queued for the old one are dropped with it); `None` stops it.
    pub fn set(&mut self, contract: &str, dest: Option<Destination>) -> Result<(), StartError> {
        match dest {
            None => {
                self.shippers.remove(contract);
            }
            Some(d) => {
                if self
                    .shippers
                    .get(contract)
                    .is_some_and(|(s, _)| s.destination().as_ref() == Some(&d))
                {
                    return Ok(());
                }
                let pair = Shipper::tenant(d, contract, self.config.clone())?;
                self.shippers.insert(contract.to_string(), pair);
            }
        }
        Ok(())
    }

    /// The sink of `contract`, if it has a destination.
    pub fn sink(&self, contract: &str) -> Option<TenantSink> {
        self.shippers.get(contract).map(|(_, sink)| sink.clone())
    }

    /// The shipper of `contract`, if it has a destination.
    pub fn shipper(&self, contract: &str) -> Option<&Shipper> {
        self.shippers.get(contract).map(|(s, _)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(max_lines: usize) -> Shared {
        Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                lines: 0,
                bytes: 0,
                stats: Stats::default(),
                closing: false,
            }),
            limits: Limits {
                max_lines,
                max_bytes: usize::MAX,
                max_message: 100,
            },
            wake: Notify::new(),
            changed: watch::channel(0).0,
            hostname: Mutex::new(None),
        }
    }

    #[test]
    fn overflow_drops_the_newest_and_marks_the_gap_once() {
        let s = shared(3);
        for i in 0..7 {
            s.push(Line::new("zosd", Severity::Informational, format!("{i}")));
        }
        let st = s.lock();
        assert_eq!((st.lines, st.stats.queued, st.stats.dropped), (3, 3, 4));
        let kinds: Vec<String> = st
            .queue
            .iter()
            .map(|e| match e {
                Entry::Line(l) => l.message.clone(),
                Entry::Dropped(n) => format!("-{n}"),
            })
            .collect();
        assert_eq!(kinds, ["0", "1", "2", "-4"]);
    }

    #[test]
    fn the_byte_bound_drops_too() {
        let mut s = shared(100);
        s.limits.max_bytes = 200;
        s.push(Line::new("a", Severity::Debug, "x".repeat(100)));
        s.push(Line::new("a", Severity::Debug, "y".repeat(100)));
        let st = s.lock();
        assert_eq!((st.lines, st.stats.dropped), (1, 1));
    }

    #[test]
    fn a_tenant_sink_stamps_its_workload_and_cannot_name_a_contract() {
        let s = Arc::new(shared(10));
        let sink = TenantSink {
            shared: s.clone(),
            contract: "c-a".into(),
        };
        sink.send(
            "web",
            Line::new("x", Severity::Notice, "m").param("contract", "c-b"),
        );
        let st = s.lock();
        let Some(Entry::Line(l)) = st.queue.front() else {
            panic!("no line")
        };
        assert_eq!(l.params, [("workload".to_string(), "web".to_string())]);
    }
}
