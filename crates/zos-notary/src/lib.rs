//! Notary trait and backends (dir://, etcd://): signed records.
//!
//! The notary is zosd's "blockchain database": an untrusted store of [`Record`]s, each
//! signed by its author and verified by every reader. Keys follow one layout in every
//! backend ([`NotaryKey`]). Backends:
//!
//! - `dir:///srv/notary`: one file per record, `<root>/<key>.json` ([`DirNotary`]);
//! - `etcd://127.0.0.1:2379[/prefix]`: etcd v3 through its JSON gateway ([`EtcdNotary`]).
//!
//! [`open`] picks the backend from a URL and returns an [`AnyNotary`], an enum that
//! implements [`Notary`] by delegation: no boxing, and the trait keeps its `async fn`s.
//!
//! Reads never return an unverified record: [`Notary::get`] fails on a forged or
//! misplaced record, [`Notary::list`] and [`Watch`] skip it with a `tracing` warning.
//! Watching: [`Notary::watch`] returns once the watch is established and then delivers
//! every record put after that; to get "everything, then every change" without a gap,
//! use [`Notary::subscribe`]. See docs/notary.md.
//!
//! Coordination (for the grid's orchestrators and nodes): [`Notary::put_if`] is a
//! compare-and-swap put ([`Expect::Absent`], [`Expect::Current`]; a lost race is
//! [`NotaryError::Conflict`]); [`Notary::grant_lease`] / [`Notary::put_leased`] /
//! [`Notary::keep_alive`] / [`Notary::revoke`] make keys that vanish unless kept alive;
//! [`Notary::delete`] removes a key, and [`Notary::watch_events`] reports deletions
//! (expiry included) as well as puts. The two backends differ in who judges an expiry:
//! etcd's server, or a `dir://` reader's own clock (docs/notary.md).

// One unsafe block, allowed where it is (dir.rs, openat_beneath): nix 0.29 returns
// openat2's descriptor as a raw fd.
#![deny(unsafe_code)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

mod dir;
mod etcd;
pub mod key;
pub mod record;

pub use dir::DirNotary;
pub use etcd::{EtcdNotary, MAX_RESPONSE, MAX_WATCH_MESSAGE};
pub use key::{KeyError, KeyKind, KeyPrefix, NotaryKey};
pub use record::{Record, RecordError, MAX_RECORD_BYTES};

/// Capacity of a watch channel, in records; a slow consumer applies back-pressure to the backend.
pub const WATCH_CHANNEL: usize = 1024;

/// Why a notary operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NotaryError {
    /// A record is malformed or its signature does not verify.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A key or prefix is not in the notary's key layout.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The notary URL cannot be used.
    #[error("notary url {url:?}: {reason}")]
    BadUrl {
        /// The URL (or `dir://` path) as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `dir://` file or directory could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A `dir://` tree holds a symlink where the key's path runs (a directory or the
    /// record file): never followed, so nothing outside the tree is read or written.
    #[error("{path}: a symlink in the notary tree (not followed)")]
    Symlink {
        /// The symlink's path.
        path: std::path::PathBuf,
    },
    /// The `dir://` watch could not set up or read inotify.
    #[error("inotify: {0}")]
    Inotify(nix::Error),
    /// An HTTP request to etcd's JSON gateway failed (connection, timeout, transport).
    #[error("etcd {endpoint}: {source}")]
    Http {
        /// The etcd endpoint (`http(s)://host:port`).
        endpoint: String,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },
    /// etcd answered with an error, or with a body that is not what the API defines.
    #[error("etcd {endpoint}: {reason}")]
    Etcd {
        /// The etcd endpoint (`http(s)://host:port`).
        endpoint: String,
        /// etcd's error or what is wrong with its answer.
        reason: String,
    },
    /// A response (or one watch message) larger than the bound: cut off while it
    /// streamed in, never buffered whole.
    #[error("etcd {endpoint}: {what}: response larger than {max} bytes; refused")]
    ResponseTooLarge {
        /// The etcd endpoint (`http(s)://host:port`).
        endpoint: String,
        /// Which call it answered (its gateway path, e.g. `/v3/kv/range`, `/v3/watch`).
        what: String,
        /// The bound, in bytes.
        max: usize,
    },
    /// An `etcds://` CA, certificate or key file that cannot be used.
    #[error("notary url {url:?}: TLS file {path}: {reason}")]
    TlsConfig {
        /// The notary URL naming the file.
        url: String,
        /// The CA, certificate or key file.
        path: std::path::PathBuf,
        /// Why it cannot be used (unreadable, not PEM, no key, ...).
        reason: String,
    },
    /// The server's certificate is not from the pinned CA, or not for this host.
    #[error("etcd {endpoint}: server certificate refused: {reason}")]
    TlsUntrustedServer {
        /// The etcd endpoint (`http(s)://host:port`).
        endpoint: String,
        /// The TLS library's verdict on the server's certificate.
        reason: String,
    },
    /// A compare-and-swap put lost: the key did not hold what [`Expect`] said (a record
    /// exists for [`Expect::Absent`]; another record, or none, for [`Expect::Current`]).
    /// Nothing was written.
    #[error(
        "{key}: compare-and-swap lost: the stored record is not the one expected; nothing written"
    )]
    Conflict {
        /// The key written to.
        key: String,
    },
    /// The lease is gone (expired, revoked, or unknown to the server): it can neither be
    /// kept alive nor carry a new key. Nothing was written.
    #[error("lease {lease:x} has expired or was revoked")]
    LeaseExpired {
        /// The lease's id.
        lease: i64,
    },
    /// The server refused the TLS handshake (no client certificate, or one it does not
    /// trust).
    #[error("etcd {endpoint}: the server refused our TLS handshake: {reason}")]
    TlsRejectedByServer {
        /// The etcd endpoint (`http(s)://host:port`).
        endpoint: String,
        /// The TLS alert or error the handshake ended with.
        reason: String,
    },
}

/// A notary store. Every method verifies what it reads; see the crate docs.
///
/// The futures are `Send`, so callers can spawn them. Implementations only need `async
/// fn`s in their `impl` blocks.
pub trait Notary: Send + Sync {
    /// Stores `record` under `record.key`, replacing what was there. The record is
    /// verified first: a notary never stores what its readers would refuse.
    fn put(&self, record: &Record) -> impl Future<Output = Result<(), NotaryError>> + Send;

    /// The verified record under `key`, `None` when there is none. A record that is
    /// corrupt, forged or signed for another key is an error, not `None`.
    fn get(
        &self,
        key: &NotaryKey,
    ) -> impl Future<Output = Result<Option<Record>, NotaryError>> + Send;

    /// Every verified record under `prefix`, sorted by key. Records that fail
    /// verification are skipped and logged (`tracing::warn!` with the key).
    fn list(
        &self,
        prefix: &KeyPrefix,
    ) -> impl Future<Output = Result<Vec<Record>, NotaryError>> + Send;

    /// A stream of verified records put under `prefix` after this call returns (the
    /// watch is established before it returns). Existing records are not replayed. The
    /// same record may be delivered more than once (e.g. after a reconnect); consumers
    /// treat deliveries as "this is now the latest value of `record.key`".
    fn watch(&self, prefix: &KeyPrefix) -> impl Future<Output = Result<Watch, NotaryError>> + Send;

    /// The current records under `prefix` and a watch that delivers everything put
    /// after that snapshot: no record put concurrently is missed (it may appear in both).
    fn subscribe(
        &self,
        prefix: &KeyPrefix,
    ) -> impl Future<Output = Result<(Vec<Record>, Watch), NotaryError>> + Send {
        async move {
            // Watch first, then list: a put racing with us lands in one or both.
            let watch = self.watch(prefix).await?;
            let existing = self.list(prefix).await?;
            Ok((existing, watch))
        }
    }

    /// Compare-and-swap: stores `record` only if its key holds what `expect` says, else
    /// fails with [`NotaryError::Conflict`] and writes nothing. Of writers racing with
    /// the same expectation exactly one wins. The record is verified first, as by `put`.
    fn put_if(
        &self,
        record: &Record,
        expect: &Expect,
    ) -> impl Future<Output = Result<(), NotaryError>> + Send;

    /// A new lease of (at least) `ttl`. etcd rounds up to whole seconds and may raise
    /// it to its minimum; [`Lease::ttl`] is what was granted.
    fn grant_lease(&self, ttl: Duration)
        -> impl Future<Output = Result<Lease, NotaryError>> + Send;

    /// Stores `record` attached to `lease` (under the condition `expect`, as
    /// [`Notary::put_if`]): the key disappears when the lease expires or is revoked. A
    /// lease that is gone gives [`NotaryError::LeaseExpired`] and nothing is written.
    fn put_leased(
        &self,
        record: &Record,
        lease: &Lease,
        expect: &Expect,
    ) -> impl Future<Output = Result<(), NotaryError>> + Send;

    /// Renews `lease` for another TTL; returns the TTL granted from now. A lease that
    /// already expired gives [`NotaryError::LeaseExpired`]: its keys are gone (or, on
    /// `dir://`, no longer returned) and must be put again under a new lease.
    fn keep_alive(
        &self,
        lease: &Lease,
    ) -> impl Future<Output = Result<Duration, NotaryError>> + Send;

    /// Ends `lease` now, deleting its keys (a lease already gone is not an error).
    fn revoke(&self, lease: &Lease) -> impl Future<Output = Result<(), NotaryError>> + Send;

    /// Removes the record under `key` (no record there is not an error). Watchers of
    /// [`Notary::watch_events`] see [`WatchEvent::Deleted`].
    fn delete(&self, key: &NotaryKey) -> impl Future<Output = Result<(), NotaryError>> + Send;

    /// Like [`Notary::watch`], but also reports deletions: a stream of
    /// [`WatchEvent::Put`] (verified records, as `watch`) and [`WatchEvent::Deleted`]
    /// (a key removed by `delete`, by a lease's revocation or expiry, or, on `dir://`,
    /// by anyone unlinking or renaming the file away). Established before it returns.
    fn watch_events(
        &self,
        prefix: &KeyPrefix,
    ) -> impl Future<Output = Result<EventWatch, NotaryError>> + Send;

    /// [`Notary::subscribe`] with deletions: the current records under `prefix` and an
    /// [`EventWatch`] of everything after that snapshot, with no gap.
    fn subscribe_events(
        &self,
        prefix: &KeyPrefix,
    ) -> impl Future<Output = Result<(Vec<Record>, EventWatch), NotaryError>> + Send {
        async move {
            // Watch first, then list: a change racing with us lands in one or both.
            let watch = self.watch_events(prefix).await?;
            let existing = self.list(prefix).await?;
            Ok((existing, watch))
        }
    }
}

/// What a compare-and-swap put ([`Notary::put_if`], [`Notary::put_leased`]) expects to
/// find under the record's key.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// Anything: an unconditional put.
    Any,
    /// No record (on `dir://`, an expired leased record counts as none).
    Absent,
    /// Exactly this record: the one the writer read. Compared by the stored canonical
    /// bytes, so a record put again unchanged still matches (the same signed statement);
    /// a writer that must notice any intervening write puts a counter (an epoch) in the
    /// body, as every put changes `signed_at` or the body anyway.
    Current(Record),
}

/// A lease from [`Notary::grant_lease`]: a TTL that keys put with it share. Clones
/// share the same lease.
#[derive(Debug, Clone)]
pub struct Lease {
    id: i64,
    ttl: Duration,
    /// `dir://` only: what this process knows of the lease (the keys it put with it,
    /// the last renewal). etcd keeps all of that on the server.
    pub(crate) local: Arc<Mutex<LocalLease>>,
}

/// The `dir://` side of a lease.
#[derive(Debug)]
pub(crate) struct LocalLease {
    pub(crate) keys: std::collections::BTreeSet<NotaryKey>,
    /// When it was granted or last kept alive (this process's clock).
    pub(crate) renewed: SystemTime,
    pub(crate) revoked: bool,
}

impl Lease {
    pub(crate) fn new(id: i64, ttl: Duration) -> Lease {
        Lease {
            id,
            ttl,
            local: Arc::new(Mutex::new(LocalLease {
                keys: Default::default(),
                renewed: SystemTime::now(),
                revoked: false,
            })),
        }
    }

    /// The lease's id (etcd's lease id; a random id on `dir://`).
    pub fn id(&self) -> i64 {
        self.id
    }

    /// The TTL granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// One change seen by [`Notary::watch_events`].
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// A verified record was put (same as a [`Watch`] delivery).
    Put(Record),
    /// The key was deleted, or its lease expired or was revoked.
    Deleted(NotaryKey),
}

/// The channel and task behind a [`Watch`] or an [`EventWatch`].
#[derive(Debug)]
pub(crate) struct EventStream {
    rx: mpsc::Receiver<WatchEvent>,
    /// The backend's tokio task, aborted on drop. Thread-based backends (dir) stop on
    /// their own once they see the receiver closed.
    task: Option<JoinHandle<()>>,
}

impl EventStream {
    pub(crate) fn new(rx: mpsc::Receiver<WatchEvent>, task: Option<JoinHandle<()>>) -> Self {
        EventStream { rx, task }
    }
}

impl Drop for EventStream {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A live watch: verified records in the order the backend saw them. Dropping it stops
/// the backend task.
#[derive(Debug)]
pub struct Watch {
    inner: EventStream,
}

impl Watch {
    pub(crate) fn new(inner: EventStream) -> Self {
        Watch { inner }
    }

    /// The next record; `None` when the watch ended (the backend gave up for good, which
    /// is logged).
    pub async fn recv(&mut self) -> Option<Record> {
        loop {
            match self.inner.rx.recv().await? {
                WatchEvent::Put(r) => return Some(r),
                WatchEvent::Deleted(_) => continue,
            }
        }
    }

    /// A record if one is already waiting.
    pub fn try_recv(&mut self) -> Option<Record> {
        loop {
            match self.inner.rx.try_recv().ok()? {
                WatchEvent::Put(r) => return Some(r),
                WatchEvent::Deleted(_) => continue,
            }
        }
    }
}

/// A live watch of puts and deletions ([`Notary::watch_events`]). Dropping it stops the
/// backend task.
#[derive(Debug)]
pub struct EventWatch {
    inner: EventStream,
}

impl EventWatch {
    pub(crate) fn new(inner: EventStream) -> Self {
        EventWatch { inner }
    }

    /// The next event; `None` when the watch ended (logged by the backend).
    pub async fn recv(&mut self) -> Option<WatchEvent> {
        self.inner.rx.recv().await
    }

    /// An event if one is already waiting.
    pub fn try_recv(&mut self) -> Option<WatchEvent> {
        self.inner.rx.try_recv().ok()
    }
}

/// A notary chosen at runtime from a URL (see [`open`]).
#[derive(Debug, Clone)]
pub enum AnyNotary {
    /// A `dir://` directory tree.
    Dir(DirNotary),
    /// An `etcd://` or `etcds://` cluster.
    Etcd(EtcdNotary),
}

/// The signed blueprint `blueprints/<digest>` holds, if the notary has a valid one of
/// that digest (read within `limits`); the one reader engine, orchestrator and CLI share.
pub async fn blueprint(
    notary: &impl Notary,
    digest: &zos_contract::Digest,
    limits: &zos_contract::Limits,
) -> Option<zos_contract::SignedBlueprint> {
    let record = notary.get(&NotaryKey::blueprint(digest)).await.ok()??;
    zos_contract::SignedBlueprint::from_value(&record.body, limits)
        .ok()
        .filter(|b| b.digest == *digest)
}

/// Opens a notary from its URL:
///
/// - `dir:///absolute/path`: a directory tree (created when missing);
/// - `etcd://host:port` (keys under `zos/`) or `etcd://host:port/prefix` (keys under
///   `prefix/`): etcd v3 over its HTTP JSON gateway;
/// - `etcds://host:port[/prefix]?ca=/ca.pem[&cert=/client.pem&key=/client.key]`: the
///   same over HTTPS, the server checked against the pinned CA only, with a client
///   certificate when given.
pub fn open(url: &str) -> Result<AnyNotary, NotaryError> {
    if let Some(path) = url.strip_prefix("dir://") {
        Ok(AnyNotary::Dir(DirNotary::open(path).map_err(
            |e| match e {
                NotaryError::BadUrl { reason, .. } => NotaryError::BadUrl {
                    url: url.to_owned(),
                    reason,
                },
                other => other,
            },
        )?))
    } else if url.starts_with("etcd://") || url.starts_with("etcds://") {
        Ok(AnyNotary::Etcd(EtcdNotary::open(url)?))
    } else {
        Err(NotaryError::BadUrl {
            url: url.to_owned(),
            reason: "expected dir:///path, etcd://host:port[/prefix] or \
                     etcds://host:port[/prefix]?ca=<pem>[&cert=<pem>&key=<pem>]"
                .into(),
        })
    }
}

impl Notary for AnyNotary {
    async fn put(&self, record: &Record) -> Result<(), NotaryError> {
        match self {
            AnyNotary::Dir(n) => n.put(record).await,
            AnyNotary::Etcd(n) => n.put(record).await,
        }
    }
    async fn get(&self, key: &NotaryKey) -> Result<Option<Record>, NotaryError> {
        match self {
            AnyNotary::Dir(n) => n.get(key).await,
            AnyNotary::Etcd(n) => n.get(key).await,
        }
    }
    async fn list(&self, prefix: &KeyPrefix) -> Result<Vec<Record>, NotaryError> {
        match self {
            AnyNotary::Dir(n) => n.list(prefix).await,
            AnyNotary::Etcd(n) => n.list(prefix).await,
        }
    }
    async fn watch(&self, prefix: &KeyPrefix) -> Result<Watch, NotaryError> {
        match self {
            AnyNotary::Dir(n) => n.watch(prefix).await,
            AnyNotary::Etcd(n) => n.watch(prefix).await,
        }
    }
    async fn subscribe(&self, prefix: &KeyPrefix) -> Result<(Vec<Record>, Watch), NotaryError> {
        match self {
            AnyNotary::Dir(n) => n.subscribe(prefix).await,
            AnyNotary::Etcd(n) => n.subscribe(prefix).await,
        }
    }
    async fn put_if(&self, record: &Record, expect: &Expect) -> Result<(), NotaryError> {
        match self {
            AnyNotary::Dir(n) => n.put_if(record, expect).await,
            AnyNotary::Etcd(n) => n.put_if(record, expect).await,
        }
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, NotaryError> {
        match self {
            AnyNotary::Dir(n) => n.grant_lease(ttl).await,
            AnyNotary::Etcd(n) => n.grant_lease(ttl).await,
        }
    }
    async fn put_leased(
        &self,
        record: &Record,
        lease: &Lease,
        expect: &Expect,
    ) -> Result<(), NotaryError> {
        match self {
            AnyNotary::Dir(n) => n.put_leased(record, lease, expect).await,
            AnyNotary::Etcd(n) => n.put_leased(record, lease, expect).await,
        }
    }
    async fn keep_alive(&self, lease: &Lease) -> Result<Duration, NotaryError> {
        match self {
            AnyNotary::Dir(n) => n.keep_alive(lease).await,
            AnyNotary::Etcd(n) => n.keep_alive(lease).await,
        }
    }
    async fn revoke(&self, lease: &Lease) -> Result<(), NotaryError> {
        match self {
            AnyNotary::Dir(n) => n.revoke(lease).await,
            AnyNotary::Etcd(n) => n.revoke(lease).await,
        }
    }
    async fn delete(&self, key: &NotaryKey) -> Result<(), NotaryError> {
        match self {
            AnyNotary::Dir(n) => n.delete(key).await,
            AnyNotary::Etcd(n) => n.delete(key).await,
        }
    }
    async fn watch_events(&self, prefix: &KeyPrefix) -> Result<EventWatch, NotaryError> {
        match self {
            AnyNotary::Dir(n) => n.watch_events(prefix).await,
            AnyNotary::Etcd(n) => n.watch_events(prefix).await,
        }
    }
    async fn subscribe_events(
        &self,
        prefix: &KeyPrefix,
    ) -> Result<(Vec<Record>, EventWatch), NotaryError> {
        match self {
            AnyNotary::Dir(n) => n.subscribe_events(prefix).await,
            AnyNotary::Etcd(n) => n.subscribe_events(prefix).await,
        }
    }
}

/// Logs a record that failed verification and is being skipped.
pub(crate) fn warn_skipped(backend: &'static str, key: &str, error: &dyn std::fmt::Display) {
    tracing::warn!(backend, key, %error, "notary record failed verification; skipped");
}
