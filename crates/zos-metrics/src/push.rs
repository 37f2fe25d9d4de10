//! Remote-write: a [`Client`] POSTs one batch to one target; a [`Pusher`] is the tokio
//! task that, every interval, runs its registry's collectors, snapshots it and sends
//! it, queueing what a target that is down could not take.
//!
//! One pusher per (target, tenant): the node's registry goes to the farm's target, a
//! contract's registry (constant label `contract=<id>`) to that contract's target.
//! A pusher sends exactly one registry, so nothing routes a sample by its labels.
//!
//! Failures: a 4xx is permanent for that batch (it is dropped and counted); a 5xx or a
//! connection error keeps the batch queued and retries after a backoff that doubles up
//! to a bound. The queue is bounded in samples: when full, the oldest batch is dropped
//! and counted. The counts are series of the pushed registry itself
//! (`zos_metrics_dropped_samples_total`, `zos_metrics_push_failures_total`,
//! `zos_metrics_queued_samples`), so the target learns what it missed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::proto::{self, TimeSeries};
use crate::registry::{Counter, Gauge, Registry, RegistryError};

/// Why a batch did not reach the target.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The target's configuration is unusable (a bad pinned CA, a URL that is not http(s)).
    #[error("remote-write target: {0}")]
    Config(String),
    /// The target refused the batch (4xx): sending it again cannot help.
    #[error("remote-write target refused the batch: HTTP {status}: {body}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The start of its answer.
        body: String,
    },
    /// The target failed (5xx): retried.
    #[error("remote-write target failed: HTTP {status}: {body}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The start of its answer.
        body: String,
    },
    /// No answer (connection refused, timeout, TLS): retried.
    #[error("remote-write target unreachable: {0}")]
    Transport(#[source] reqwest::Error),
    /// The pusher task is gone.
    #[error("the pusher has stopped")]
    Stopped,
}

impl PushError {
    /// True when retrying the same batch cannot succeed.
    pub fn is_permanent(&self) -> bool {
        matches!(self, PushError::Rejected { .. } | PushError::Config(_))
    }
}

/// Where a registry goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// The receiver's URL, e.g. `http://10.1.2.3:9090/api/v1/write`.
    pub url: reqwest::Url,
    /// PEM of the CA an `https` target's certificate must chain to (the only root
    /// trusted); `None` for `http`.
    pub ca_pem: Option<Vec<u8>>,
    /// How long one POST may take.
    pub timeout: Duration,
}

impl Target {
    /// A plain `http`/`https` target with a 10 s timeout and no pinned CA.
    pub fn new(url: reqwest::Url) -> Target {
        Target {
            url,
            ca_pem: None,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Sends batches to one [`Target`].
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    url: reqwest::Url,
}

impl Client {
    /// A client for `target`.
    pub fn new(target: &Target) -> Result<Client, PushError> {
        if !matches!(target.url.scheme(), "http" | "https") {
            return Err(PushError::Config(format!(
                "{} is not an http(s) URL",
                target.url
            )));
        }
        let mut b = reqwest::Client::builder().timeout(target.timeout);
        if let Some(pem) = &target.ca_pem {
            // A pin that holds no certificate would trust nothing, silently.
            let cas = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| PushError::Config(format!("pinned CA: {e}")))?;
            if cas.is_empty() {
                return Err(PushError::Config(
                    "pinned CA: no certificate in the PEM".into(),
                ));
            }
            for ca in cas {
                b = b.add_root_certificate(ca);
            }
        }
        let http = b
            .build()
            .map_err(|e| PushError::Config(format!("HTTP client: {e}")))?;
        Ok(Client {
            http,
            url: target.url.clone(),
        })
    }

    /// POSTs `series` as one remote-write 1.0 request.
    pub async fn push(&self, series: &[TimeSeries]) -> Result<(), PushError> {
        let body = proto::compress(&proto::encode(series));
        let resp = self
            .http
            .post(self.url.clone())
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("User-Agent", "zosd")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(body)
            .send()
            .await
            .map_err(PushError::Transport)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let mut body = resp.text().await.unwrap_or_default();
        body.truncate(body.floor_char_boundary_compat(512));
        let status = status.as_u16();
        if (400..500).contains(&status) {
            Err(PushError::Rejected { status, body })
        } else {
            Err(PushError::Server { status, body })
        }
    }
}

/// `str::floor_char_boundary` is not stable on Rust 1.85.
trait FloorCharBoundary {
    fn floor_char_boundary_compat(&self, at: usize) -> usize;
}

impl FloorCharBoundary for String {
    fn floor_char_boundary_compat(&self, at: usize) -> usize {
        if at >= self.len() {
            return self.len();
        }
        (0..=at)
            .rev()
            .find(|i| self.is_char_boundary(*i))
            .unwrap_or(0)
    }
}

/// How a [`Pusher`] paces itself.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Between two snapshots.
    pub interval: Duration,
    /// The queue's bound, in samples, across batches not yet accepted.
    pub max_queued_samples: usize,
    /// The first wait after a retryable failure; doubled per failure in a row.
    pub backoff_min: Duration,
    /// The longest wait between retries.
    pub backoff_max: Duration,
}

impl Default for PushConfig {
    fn default() -> PushConfig {
        PushConfig {
            interval: Duration::from_secs(15),
            max_queued_samples: 100_000,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// What a pusher has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushStats {
    /// Batches the target accepted.
    pub pushed_batches: u64,
    /// Samples dropped: refused by the target (4xx) or pushed out of a full queue.
    pub dropped_samples: u64,
    /// Failed attempts (any error; a retried batch counts once per attempt).
    pub failures: u64,
    /// Samples waiting in the queue.
    pub queued_samples: u64,
}

#[derive(Debug, Default)]
struct Stats {
    pushed: AtomicU64,
    dropped: AtomicU64,
    failures: AtomicU64,
    queued: AtomicU64,
}

enum Command {
    /// Collect, snapshot and try to send everything queued now; answer with the
    /// outcome of the last send.
    PushNow(oneshot::Sender<Result<(), PushError>>),
}

/// The task pushing one registry to one target; stops when dropped (or [`Pusher::stop`]).
#[derive(Debug)]
pub struct Pusher {
    tx: mpsc::Sender<Command>,
    stats: Arc<Stats>,
    task: tokio::task::JoinHandle<()>,
}

/// The pusher's own series, in the registry it pushes.
struct SelfMetrics {
    dropped: Counter,
    failures: Counter,
    queued: Gauge,
}

impl SelfMetrics {
    fn new(r: &Registry) -> Result<SelfMetrics, RegistryError> {
        Ok(SelfMetrics {
            dropped: r.counter("zos_metrics_dropped_samples_total", &[])?,
            failures: r.counter("zos_metrics_push_failures_total", &[])?,
            queued: r.gauge("zos_metrics_queued_samples", &[])?,
        })
    }
}

impl Pusher {
    /// Starts pushing `registry` to `target` (on the current tokio runtime), running
    /// its collectors ([`Registry::set_collector`]) before each snapshot. The first
    /// push is one interval away (or at [`Pusher::push_now`]).
    pub fn spawn(
        target: &Target,
        registry: Registry,
        config: PushConfig,
    ) -> Result<Pusher, PushError> {
        let client = Client::new(target)?;
        let own = SelfMetrics::new(&registry).map_err(|e| PushError::Config(e.to_string()))?;
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::channel(8);
        let task = tokio::spawn(
            Worker {
                client,
                registry,
                config,
                stats: stats.clone(),
                own,
                queue: VecDeque::new(),
                queued: 0,
                backoff: None,
                last_ms: 0,
                url: target.url.to_string(),
            }
            .run(rx),
        );
        Ok(Pusher { tx, stats, task })
    }

    /// Collects and sends now (and whatever is queued before it); the outcome of the
    /// last send attempt. A retryable failure leaves the batch queued.
    pub async fn push_now(&self) -> Result<(), PushError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::PushNow(tx))
            .await
            .map_err(|_| PushError::Stopped)?;
        rx.await.map_err(|_| PushError::Stopped)?
    }

    /// What it has done so far.
    pub fn stats(&self) -> PushStats {
        PushStats {
            pushed_batches: self.stats.pushed.load(Ordering::Relaxed),
            dropped_samples: self.stats.dropped.load(Ordering::Relaxed),
            failures: self.stats.failures.load(Ordering::Relaxed),
            queued_samples: self.stats.queued.load(Ordering::Relaxed),
        }
    }

    /// Stops it; what is still queued is lost (and was counted as queued).
    pub async fn stop(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for Pusher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Worker {
    client: Client,
    registry: Registry,
    config: PushConfig,
    stats: Arc<Stats>,
    own: SelfMetrics,
    queue: VecDeque<Vec<TimeSeries>>,
    /// Samples in `queue`.
    queued: usize,
    /// After a retryable failure: when to try again and the wait that led there.
    backoff: Option<(Instant, Duration)>,
    /// The last snapshot's timestamp.
    last_ms: i64,
    url: String,
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut tick =
            tokio::time::interval_at(Instant::now() + self.config.interval, self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let retry_at = self.backoff.map(|(at, _)| at);
            tokio::select! {
                _ = tick.tick() => {
                    self.enqueue_snapshot();
                    if self.backoff.is_none() {
                        let _ = self.drain().await;
                    }
                }
                _ = sleep_until_opt(retry_at) => {
                    let _ = self.drain().await;
                }
                cmd = rx.recv() => match cmd {
                    Some(Command::PushNow(reply)) => {
                        self.enqueue_snapshot();
                        let r = self.drain().await;
                        let _ = reply.send(r);
                    }
                    None => return,
                },
            }
        }
    }

    fn enqueue_snapshot(&mut self) {
        for (collector, e) in self.registry.collect() {
            tracing::warn!(target_url = %self.url, collector, error = %e, "metrics collector failed");
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        // Strictly increasing: two snapshots in one millisecond, or a clock stepped
        // back, would otherwise be refused by the target as duplicates or out of order.
        let now = now.max(self.last_ms + 1);
        self.last_ms = now;
        let batch = self.registry.snapshot(now);
        let n = samples(&batch);
        self.queue.push_back(batch);
        self.queued += n;
        while self.queued > self.config.max_queued_samples && self.queue.len() > 1 {
            let old = self.queue.pop_front().expect("len > 1");
            let lost = samples(&old);
            self.queued -= lost;
            self.count_dropped(lost);
            tracing::warn!(target_url = %self.url, samples = lost, "metrics queue full: oldest batch dropped");
        }
        self.update_queued();
    }

    /// Sends the queue, oldest first (remote-write wants each series in time order),
    /// until it is empty or a send fails retryably.
    async fn drain(&mut self) -> Result<(), PushError> {
        let mut last = Ok(());
        while let Some(batch) = self.queue.front() {
            let n = samples(batch);
            match self.client.push(batch).await {
                Ok(()) => {
                    self.stats.pushed.fetch_add(1, Ordering::Relaxed);
                    self.backoff = None;
                    self.queue.pop_front();
                    self.queued -= n;
                    last = Ok(());
                }
                Err(e) if e.is_permanent() => {
                    self.failed();
                    self.queue.pop_front();
                    self.queued -= n;
                    self.count_dropped(n);
                    tracing::warn!(target_url = %self.url, samples = n, error = %e, "metrics batch refused: dropped");
                    last = Err(e);
                }
                Err(e) => {
                    self.failed();
                    let wait = match self.backoff {
                        None => self.config.backoff_min,
                        Some((_, w)) => (w * 2).min(self.config.backoff_max),
                    };
                    self.backoff = Some((Instant::now() + wait, wait));
                    tracing::warn!(target_url = %self.url, queued = self.queued, retry_in_ms = wait.as_millis() as u64, error = %e, "metrics push failed: will retry");
                    self.update_queued();
                    return Err(e);
                }
            }
        }
        self.update_queued();
        last
    }

    fn failed(&self) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.own.failures.inc();
    }

    fn count_dropped(&self, n: usize) {
        self.stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
        self.own.dropped.inc_by(n as f64);
    }

    fn update_queued(&self) {
        self.stats
            .queued
            .store(self.queued as u64, Ordering::Relaxed);
        self.own.queued.set(self.queued as f64);
    }
}

fn samples(batch: &[TimeSeries]) -> usize {
    batch.iter().map(|s| s.samples.len()).sum()
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_and_configuration_are_permanent() {
        assert!(PushError::Rejected {
            status: 400,
            body: String::new()
        }
        .is_permanent());
        assert!(!PushError::Server {
            status: 503,
            body: String::new()
        }
        .is_permanent());
        assert!(!PushError::Stopped.is_permanent());
    }

    #[test]
    fn a_target_that_is_not_http_is_refused() {
        let t = Target::new("file:///etc/passwd".parse().unwrap());
        assert!(matches!(Client::new(&t), Err(PushError::Config(_))));
        let mut t = Target::new("https://127.0.0.1:1/".parse().unwrap());
        t.ca_pem = Some(b"not a certificate".to_vec());
        assert!(matches!(Client::new(&t), Err(PushError::Config(_))));
    }

    #[test]
    fn truncation_keeps_char_boundaries() {
        let s = "aé".to_string(); // 'é' is bytes 1..3
        assert_eq!(s.floor_char_boundary_compat(2), 1);
        assert_eq!(s.floor_char_boundary_compat(9), 3);
    }

    /// A fake receiver (in addition to the real Prometheus of tests/remote_write.rs,
    /// which never answers 5xx on demand): answers each request with the next status of
    /// `statuses`, and hands over each request's headers and body.
    async fn fake_receiver(
        statuses: Vec<u16>,
    ) -> (reqwest::Url, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/api/v1/write", l.local_addr().unwrap())
            .parse()
            .unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut statuses = statuses.into_iter();
            loop {
                let (conn, _) = l.accept().await.unwrap();
                let mut conn = BufReader::new(conn);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
                            break;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        head.push_str(&line);
                    }
                    if head.is_empty() {
                        break; // the client closed the connection
                    }
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    let mut body = vec![0; len];
                    conn.read_exact(&mut body).await.unwrap();
                    let status = statuses.next().unwrap_or(204);
                    let _ = tx.send((head, body));
                    let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 4\r\n\r\nbusy");
                    conn.get_mut().write_all(answer.as_bytes()).await.unwrap();
                }
            }
        });
        (url, rx)
    }

    #[tokio::test]
    async fn a_5xx_keeps_the_batch_and_the_backoff_retries_it_with_the_remote_write_headers() {
        let (url, mut requests) = fake_receiver(vec![503, 500]).await;
        let r = Registry::new();
        r.gauge("g", &[("a", "b")]).unwrap().set(7.0);
        let config = PushConfig {
            interval: Duration::from_secs(3600),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(20),
            ..PushConfig::default()
        };
        let p = Pusher::spawn(&Target::new(url), r, config).unwrap();
        let err = p.push_now().await.unwrap_err();
        assert!(
            matches!(err, PushError::Server { status: 503, .. }),
            "{err}"
        );
        assert_eq!(p.stats().queued_samples, 4);
        // The same batch, three times: 503, 500 (retried by the backoff), then 204.
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let (head, body) = requests.recv().await.unwrap();
            let head = head.to_ascii_lowercase();
            assert!(head.starts_with("post /api/v1/write "), "{head}");
            for h in [
                "content-encoding: snappy",
                "content-type: application/x-protobuf",
                "x-prometheus-remote-write-version: 0.1.0",
            ] {
                assert!(head.contains(h), "{h} missing: {head}");
            }
            bodies.push(body);
        }
        assert!(bodies.iter().all(|b| *b == bodies[0]));
        let body = snap::raw::Decoder::new()
            .decompress_vec(&bodies[0])
            .unwrap();
        // The gauge's label a="b" (a Label message of 6 bytes) and its value.
        let label = [0x0a, 0x06, 0x0a, 0x01, b'a', 0x12, 0x01, b'b'];
        assert!(body.windows(label.len()).any(|w| w == label));
        let value = [&[0x09][..], &7.0f64.to_le_bytes()].concat();
        assert!(body.windows(value.len()).any(|w| w == value));
        // The worker records the success once the 204 is read: wait for it, bounded.
        tokio::time::timeout(Duration::from_secs(30), async {
            while p.stats().pushed_batches == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the third attempt is recorded as pushed");
        let s = p.stats();
        assert_eq!(s.pushed_batches, 1);
        assert_eq!(s.failures, 2);
        assert_eq!(s.queued_samples, 0);
        assert_eq!(s.dropped_samples, 0);
    }
}
