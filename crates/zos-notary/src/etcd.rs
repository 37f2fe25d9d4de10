//! `etcd://` backend: etcd v3 (3.4 or later) through its HTTP JSON gateway.
//!
//! URL: `etcd://host:port` (keys under `zos/`) or `etcd://host:port/prefix` (keys under
//! `prefix/`): plain HTTP. `etcds://host:port[/prefix]?ca=/ca.pem[&cert=/c.pem&key=/c.key]`:
//! HTTPS (rustls on ring, TLS 1.2+), the server's certificate checked against the pinned
//! CA `ca` only (no built-in roots) and the host name, and the client certificate
//! `cert`/`key` (PEM) presented when given. A record for logical key `K` is stored at
//! etcd key `<prefix>/K`, its value the record's canonical bytes.
//!
//! Every response body is bounded while it streams in ([`MAX_RESPONSE`] per unary
//! response, [`MAX_WATCH_MESSAGE`] per watch message, not per stream): a server that
//! sends more is cut off with [`NotaryError::ResponseTooLarge`]. A listing reads pages
//! of 128 values at one revision; so that one oversized value cannot make a whole
//! listing fail, a page too large is read again as its keys and then each value on its
//! own, at the listing's revision, and a value too large is skipped and logged like any
//! other bad record.
//!
//! Gateway calls (etcd 3.4 serves them at `/v3/...`; keys and values are base64, 64-bit
//! integers are JSON strings):
//!
//! - `POST /v3/kv/put {"key","value"}`;
//! - `POST /v3/kv/range {"key","range_end","limit","revision","keys_only"}`, paginated
//!   at one revision (a page too large: its keys, then one range per key at that
//!   revision), so a listing is a consistent snapshot;
//! - `POST /v3/watch {"create_request":{"key","range_end","start_revision"}}`: a
//!   streaming response of newline-separated JSON messages (PUT and DELETE events);
//! - `POST /v3/kv/txn`: compare-and-swap puts ([`crate::Expect::Absent`] compares the
//!   key's `create_revision` with 0, [`crate::Expect::Current`] its value with the
//!   expected record's canonical bytes; `succeeded: false` is
//!   [`NotaryError::Conflict`]);
//! - `POST /v3/lease/grant {"TTL"}`, `/v3/lease/keepalive {"ID"}` (one request, one
//!   answer), `/v3/lease/revoke {"ID"}`, and `"lease"` on a put: real etcd leases, the
//!   keys deleted by the server when the lease expires;
//! - `POST /v3/kv/deleterange {"key"}`.
//!
//! The watch task resumes after a dropped stream from the last seen revision + 1, with
//! a capped exponential backoff. If that revision was compacted meanwhile, it re-reads
//! the prefix and delivers every record modified since, then watches from there.

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::key::KeyPrefix;
use crate::{
    warn_skipped, EventStream, EventWatch, Expect, Lease, Notary, NotaryError, NotaryKey, Record,
    RecordError, Watch, WatchEvent, MAX_RECORD_BYTES, WATCH_CHANNEL,
};

const BACKEND: &str = "etcd";
const DEFAULT_PREFIX: &str = "zos";
const PAGE: u64 = 128;
const TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Largest unary response body accepted: one record of [`MAX_RECORD_BYTES`] in base64
/// plus the gateway's JSON around it (a page of keys is far smaller).
pub const MAX_RESPONSE: usize = MAX_RECORD_BYTES / 3 * 4 + 64 * 1024;
/// Largest single watch message accepted (the stream itself is unbounded): two records'
/// worth. A bigger one (a transaction of many values) is skipped by catching up from a
/// listing, which reads values one by one.
pub const MAX_WATCH_MESSAGE: usize = 2 * MAX_RECORD_BYTES + 64 * 1024;
/// Largest CA/certificate/key file read for `etcds://`.
const MAX_PEM: u64 = 1024 * 1024;

/// A notary in etcd. Cheap to clone (one shared HTTP connection pool).
#[derive(Debug, Clone)]
pub struct EtcdNotary {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: reqwest::Client,
    /// `http://host:port` or `https://host:port`
    endpoint: String,
    /// etcd key prefix, ending in `/`.
    base: String,
}

/// One key-value from the gateway.
#[derive(Debug, Deserialize)]
struct Kv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default, deserialize_with = "int64")]
    mod_revision: i64,
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default, deserialize_with = "int64")]
    revision: i64,
}

#[derive(Debug, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<Kv>,
    #[serde(default)]
    more: bool,
}

#[derive(Debug, Deserialize)]
struct TxnResponse {
    /// Absent (the proto default) when the comparison failed.
    #[serde(default)]
    succeeded: bool,
}

/// `/v3/lease/grant`'s and `/v3/lease/keepalive`'s result (`ID`, `TTL` in seconds; a
/// TTL of 0 or less, or none, means the lease is gone).
#[derive(Debug, Deserialize)]
struct LeaseAnswer {
    #[serde(default, rename = "ID", deserialize_with = "int64")]
    id: i64,
    #[serde(default, rename = "TTL", deserialize_with = "int64")]
    ttl: i64,
    #[serde(default)]
    error: String,
}

#[derive(Debug, Deserialize)]
struct KeepAliveMessage {
    result: Option<LeaseAnswer>,
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct WatchMessage {
    result: Option<WatchResult>,
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct WatchResult {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "int64")]
    compact_revision: i64,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Debug, Deserialize)]
struct Event {
    /// Absent for PUT (the proto default), "DELETE" for deletions.
    #[serde(default, rename = "type")]
    kind: String,
    kv: Option<Kv>,
}

/// grpc-gateway writes int64 as a JSON string; accept a number too.
fn int64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom("not an int64")),
        Value::Null => Ok(0),
        other => Err(serde::de::Error::custom(format!("not an int64: {other}"))),
    }
}

/// The smallest key greater than every key starting with `prefix` (etcd `range_end`).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff: every key from `prefix` on.
    vec![0]
}

/// The `etcds://` parameters: absolute paths of PEM files.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsFiles {
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

impl TlsFiles {
    fn parse(query: &str) -> Result<TlsFiles, String> {
        let (mut ca, mut cert, mut key) = (None, None, None);
        for pair in query.split('&') {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("parameter {pair:?} is not name=value"))?;
            let slot = match name {
                "ca" => &mut ca,
                "cert" => &mut cert,
                "key" => &mut key,
                other => return Err(format!("unknown parameter {other:?} (ca, cert, key)")),
            };
            if slot.is_some() {
                return Err(format!("parameter {name:?} given twice"));
            }
            let path = PathBuf::from(value);
            if !path.is_absolute() {
                return Err(format!("{name}={value:?}: an absolute path is needed"));
            }
            *slot = Some(path);
        }
        let ca = ca.ok_or("etcds:// needs ca=<path of the CA's PEM>")?;
        if cert.is_some() != key.is_some() {
            return Err("cert= and key= go together".into());
        }
        Ok(TlsFiles { ca, cert, key })
    }

    /// Pins the CA (and nothing else) and adds the client identity.
    fn configure(
        &self,
        builder: reqwest::ClientBuilder,
        url: &str,
    ) -> Result<reqwest::ClientBuilder, NotaryError> {
        let tls = |path: &Path, reason: String| NotaryError::TlsConfig {
            url: url.to_owned(),
            path: path.to_path_buf(),
            reason,
        };
        let read = |path: &Path| -> Result<Vec<u8>, NotaryError> {
            let f = std::fs::File::open(path).map_err(|e| tls(path, e.to_string()))?;
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_PEM + 1), &mut buf)
                .map_err(|e| tls(path, e.to_string()))?;
            if buf.len() as u64 > MAX_PEM {
                return Err(tls(path, format!("larger than {MAX_PEM} bytes")));
            }
            Ok(buf)
        };
        let ca_pem = read(&self.ca)?;
        let cas = reqwest::Certificate::from_pem_bundle(&ca_pem)
            .map_err(|e| tls(&self.ca, format!("not a PEM certificate: {e}")))?;
        if cas.is_empty() {
            return Err(tls(&self.ca, "no certificate in the file".into()));
        }
        let mut builder = builder
            .https_only(true)
            .min_tls_version(reqwest::tls::Version::TLS_1_2);
        for ca in cas {
            builder = builder.add_root_certificate(ca);
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            let mut pem = read(cert)?;
            pem.push(b'\n');
            pem.extend_from_slice(&read(key)?);
            let identity = reqwest::Identity::from_pem(&pem)
                .map_err(|e| tls(cert, format!("client certificate and key: {e}")))?;
            builder = builder.identity(identity);
        }
        Ok(builder)
    }
}

impl EtcdNotary {
    /// Parses `etcd://host:port[/prefix]` or
    /// `etcds://host:port[/prefix]?ca=<pem>[&cert=<pem>&key=<pem>]` (absolute paths) and
    /// reads the TLS files. Does not connect: the first operation does.
    pub fn open(url: &str) -> Result<Self, NotaryError> {
        let bad = |reason: &str| NotaryError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        const SHAPE: &str = "expected etcd://host:port[/prefix] or \
             etcds://host:port[/prefix]?ca=/ca.pem[&cert=/client.pem&key=/client.key]";
        let (tls, rest) = if let Some(rest) = url.strip_prefix("etcds://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("etcd://") {
            (false, rest)
        } else {
            return Err(bad(SHAPE));
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty()
            || authority.contains(['@', '?', '#', ','])
            || !authority.contains(':')
        {
            return Err(bad(SHAPE));
        }
        let prefix = if path.is_empty() {
            DEFAULT_PREFIX.to_owned()
        } else {
            KeyPrefix::parse(path)
                .map_err(|e| bad(&format!("key prefix: {e}")))?
                .as_str()
                .to_owned()
        };
        let endpoint = format!("{}://{authority}", if tls { "https" } else { "http" });
        reqwest::Url::parse(&endpoint).map_err(|e| bad(&e.to_string()))?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            .use_rustls_tls()
            .tls_built_in_root_certs(false);
        match (tls, query) {
            (false, None) => {}
            (false, Some(_)) => {
                return Err(bad(
                    "etcd:// takes no parameters; TLS files go with etcds://",
                ))
            }
            (true, None) => return Err(bad("etcds:// needs ca=<path of the CA's PEM>")),
            (true, Some(q)) => {
                let files = TlsFiles::parse(q).map_err(|r| bad(&r))?;
                builder = files.configure(builder, url)?;
            }
        }
        let client = builder.build().map_err(|source| NotaryError::Http {
            endpoint: endpoint.clone(),
            source,
        })?;
        Ok(EtcdNotary {
            inner: Arc::new(Inner {
                client,
                endpoint,
                base: format!("{prefix}/"),
            }),
        })
    }

    /// `http://host:port` or `https://host:port`.
    pub fn endpoint(&self) -> &str {
        &self.inner.endpoint
    }

    /// The etcd key prefix every logical key is stored under (ends with `/`).
    pub fn key_prefix(&self) -> &str {
        &self.inner.base
    }

    /// The etcd key holding logical key `key`.
    pub fn etcd_key(&self, key: &NotaryKey) -> String {
        format!("{}{key}", self.inner.base)
    }

    /// A snapshot of the records under `prefix` and the revision it was taken at.
    pub(crate) async fn list_at(
        &self,
        prefix: &KeyPrefix,
    ) -> Result<(Vec<Record>, i64), NotaryError> {
        self.inner.list_verified(prefix, 0).await
    }

    /// A watch delivering the events at `start_revision` or later.
    pub(crate) async fn watch_from(
        &self,
        prefix: &KeyPrefix,
        start_revision: i64,
    ) -> Result<EventStream, NotaryError> {
        let (stream, created_rev) = self.inner.open_watch(prefix, start_revision).await?;
        let next = if start_revision > 0 {
            start_revision
        } else {
            created_rev + 1
        };
        let (tx, rx) = mpsc::channel(WATCH_CHANNEL);
        let inner = self.inner.clone();
        let prefix = prefix.clone();
        let task = tokio::spawn(async move {
            watch_loop(inner, prefix, stream, next, tx).await;
        });
        Ok(EventStream::new(rx, Some(task)))
    }

    /// Stores `record` (with `lease` when given) if `expect` holds: a plain put for
    /// [`Expect::Any`], else one transaction comparing the key first.
    async fn put_with(
        &self,
        record: &Record,
        lease: Option<&Lease>,
        expect: &Expect,
    ) -> Result<(), NotaryError> {
        let (key, bytes) = record.to_storable()?;
        let etcd_key = B64.encode(self.etcd_key(&key));
        let mut put = json!({ "key": etcd_key, "value": B64.encode(&bytes) });
        if let Some(lease) = lease {
            put["lease"] = json!(lease.id().to_string());
        }
        let compare = match expect {
            Expect::Any => None,
            Expect::Absent => Some(json!({
                "key": etcd_key,
                "target": "CREATE",
                "result": "EQUAL",
                "create_revision": "0",
            })),
            Expect::Current(expected) => {
                let (_, expected) = expected.to_storable()?;
                Some(json!({
                    "key": etcd_key,
                    "target": "VALUE",
                    "result": "EQUAL",
                    "value": B64.encode(&expected),
                }))
            }
        };
        let lease_gone = |e: NotaryError| match (&e, lease) {
            (NotaryError::Etcd { reason, .. }, Some(lease))
                if reason.contains("requested lease not found") =>
            {
                NotaryError::LeaseExpired { lease: lease.id() }
            }
            _ => e,
        };
        match compare {
            None => {
                let _: Value = self
                    .inner
                    .call("/v3/kv/put", &put)
                    .await
                    .map_err(lease_gone)?;
            }
            Some(compare) => {
                let req = json!({ "compare": [compare], "success": [{ "request_put": put }] });
                let resp: TxnResponse = self
                    .inner
                    .call("/v3/kv/txn", &req)
                    .await
                    .map_err(lease_gone)?;
                if !resp.succeeded {
                    tracing::debug!(backend = BACKEND, key = %key, "compare-and-swap lost");
                    return Err(NotaryError::Conflict {
                        key: key.to_string(),
                    });
                }
            }
        }
        tracing::debug!(backend = BACKEND, key = %key, lease = lease.map(Lease::id), "record stored");
        Ok(())
    }
}

impl Inner {
    fn http(&self, source: reqwest::Error) -> NotaryError {
        classify(&self.endpoint, source)
    }

    fn too_large(&self, what: &str, max: usize) -> NotaryError {
        NotaryError::ResponseTooLarge {
            endpoint: self.endpoint.clone(),
            what: what.to_owned(),
            max,
        }
    }

    /// The body of `resp`, refused as soon as more than `max` bytes arrived (or were
    /// announced), so a hostile server cannot make us buffer without end.
    async fn read_bounded(
        &self,
        mut resp: reqwest::Response,
        what: &str,
        max: usize,
    ) -> Result<Vec<u8>, NotaryError> {
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(self.too_large(what, max));
        }
        let mut buf = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.http(e))? {
            if buf.len() + chunk.len() > max {
                return Err(self.too_large(what, max));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }

    fn etcd(&self, reason: impl Into<String>) -> NotaryError {
        NotaryError::Etcd {
            endpoint: self.endpoint.clone(),
            reason: reason.into(),
        }
    }

    /// One unary gateway call.
    async fn call<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, NotaryError> {
        let resp = self
            .client
            .post(format!("{}{path}", self.endpoint))
            .timeout(TIMEOUT)
            .json(body)
            .send()
            .await
            .map_err(|e| self.http(e))?;
        let status = resp.status();
        let bytes = self.read_bounded(resp, path, MAX_RESPONSE).await?;
        if !status.is_success() {
            return Err(self.etcd(format!(
                "{path}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
            )));
        }
        serde_json::from_slice(&bytes).map_err(|e| self.etcd(format!("{path}: bad response: {e}")))
    }

    /// The etcd key range covering `prefix`: its key and everything after `/`. (The range
    /// also covers `farms/10` for prefix `farms/1`; callers filter with
    /// [`KeyPrefix::matches`].)
    fn range_of(&self, prefix: &KeyPrefix) -> (Vec<u8>, Vec<u8>) {
        let start = format!("{}{}", self.base, prefix.as_str()).into_bytes();
        let end = prefix_end(&start);
        (start, end)
    }

    /// One page of the range `[start, end)` at `revision` (0: now): at most [`PAGE`]
    /// keys, with their values unless `keys_only`.
    async fn range_page(
        &self,
        start: &[u8],
        end: &[u8],
        revision: i64,
        keys_only: bool,
    ) -> Result<RangeResponse, NotaryError> {
        let mut req = json!({
            "key": B64.encode(start),
            "range_end": B64.encode(end),
            "limit": PAGE.to_string(),
        });
        if keys_only {
            req["keys_only"] = json!(true);
        }
        if revision > 0 {
            req["revision"] = json!(revision.to_string());
        }
        self.call("/v3/kv/range", &req).await
    }

    /// The value of the etcd key `key` (base64, as the gateway gives it) at `revision`.
    async fn fetch(&self, key: &str, revision: i64) -> Result<Option<Kv>, NotaryError> {
        let req = json!({ "key": key, "revision": revision.to_string() });
        let resp: RangeResponse = self.call("/v3/kv/range", &req).await?;
        Ok(resp.kvs.into_iter().next())
    }

    /// The verified records under `prefix` modified at `from` or later, sorted by key,
    /// and the revision of the snapshot. Pages of [`PAGE`] values at one revision; a
    /// page whose response would be too large (a value near the record limit) is read
    /// again key by key, and a value too large alone is skipped and logged, the rest
    /// listed.
    async fn list_verified(
        &self,
        prefix: &KeyPrefix,
        from: i64,
    ) -> Result<(Vec<Record>, i64), NotaryError> {
        let (mut start, end) = self.range_of(prefix);
        let mut revision = 0i64;
        let mut out = Vec::new();
        loop {
            let (kvs, last, more) = match self.range_page(&start, &end, revision, false).await {
                Ok(page) => {
                    if revision == 0 {
                        revision = page.header.revision;
                    }
                    let last = page.kvs.last().map(|kv| kv.key.clone());
                    (page.kvs, last, page.more)
                }
                Err(NotaryError::ResponseTooLarge { .. }) => {
                    let keys = self.range_page(&start, &end, revision, true).await?;
                    if revision == 0 {
                        revision = keys.header.revision;
                    }
                    let mut kvs = Vec::new();
                    for k in &keys.kvs {
                        match self.fetch(&k.key, revision).await {
                            Ok(Some(kv)) => kvs.push(kv),
                            Ok(None) => {}
                            Err(e @ NotaryError::ResponseTooLarge { .. }) => {
                                let logical = self.logical_key(&k.key, prefix);
                                warn_skipped(BACKEND, logical.as_deref().unwrap_or(&k.key), &e)
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    (kvs, keys.kvs.last().map(|kv| kv.key.clone()), keys.more)
                }
                Err(e) => return Err(e),
            };
            out.extend(
                kvs.iter()
                    .filter(|kv| kv.mod_revision >= from)
                    .filter_map(|kv| self.decode(kv, prefix)),
            );
            match (more, last) {
                (true, Some(last)) => {
                    start = B64
                        .decode(last)
                        .map_err(|e| self.etcd(format!("bad key encoding: {e}")))?;
                    start.push(0);
                }
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((out, revision))
    }

    /// The logical key of etcd key `raw` (base64) when it is under `prefix`.
    fn logical_key(&self, raw: &str, prefix: &KeyPrefix) -> Option<String> {
        let raw_key = match B64.decode(raw).map(String::from_utf8) {
            Ok(Ok(k)) => k,
            _ => {
                warn_skipped(BACKEND, raw, &"etcd key is not base64 UTF-8");
                return None;
            }
        };
        let logical = raw_key.strip_prefix(&self.base)?;
        prefix.matches(logical).then(|| logical.to_owned())
    }

    /// Decodes, verifies and filters one key-value; logs and drops what fails.
    fn decode(&self, kv: &Kv, prefix: &KeyPrefix) -> Option<Record> {
        let logical = self.logical_key(&kv.key, prefix)?;
        let logical = logical.as_str();
        let checked = (|| {
            NotaryKey::parse(logical).map_err(RecordError::Key)?;
            let bytes = B64
                .decode(&kv.value)
                .map_err(|e| RecordError::Malformed(format!("value is not base64: {e}")))?;
            Record::from_bytes_verified(&bytes, logical)
        })();
        match checked {
            Ok(r) => Some(r),
            Err(e) => {
                warn_skipped(BACKEND, logical, &e);
                None
            }
        }
    }

    /// Opens a watch stream and reads up to its `created` message. Returns the stream
    /// and the revision the watch was created at.
    async fn open_watch(
        &self,
        prefix: &KeyPrefix,
        start_revision: i64,
    ) -> Result<(WatchStream, i64), NotaryError> {
        let (start, end) = self.range_of(prefix);
        let mut create = json!({
            "key": B64.encode(&start),
            "range_end": B64.encode(&end),
        });
        if start_revision > 0 {
            create["start_revision"] = json!(start_revision.to_string());
        }
        let resp = self
            .client
            .post(format!("{}/v3/watch", self.endpoint))
            .json(&json!({ "create_request": create }))
            .send()
            .await
            .map_err(|e| self.http(e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = self.read_bounded(resp, "/v3/watch", MAX_RESPONSE).await?;
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            return Err(self.etcd(format!("/v3/watch: HTTP {status}: {text}")));
        }
        let mut stream = WatchStream {
            resp,
            buf: Vec::new(),
            pending: std::collections::VecDeque::new(),
        };
        let first = tokio::time::timeout(TIMEOUT, stream.next(self))
            .await
            .map_err(|_| self.etcd("/v3/watch: no `created` message within 30 s"))??;
        match first {
            Some(WatchResult {
                created: true,
                header,
                ..
            }) => Ok((stream, header.revision)),
            // Start revision already compacted: let the watch loop catch up.
            Some(other) if other.compact_revision > 0 => {
                let rev = other.header.revision;
                stream.pending.push_front(other);
                Ok((stream, rev))
            }
            Some(other) => Err(self.etcd(format!(
                "/v3/watch: expected `created`, got canceled={} compact_revision={} {}",
                other.canceled, other.compact_revision, other.cancel_reason
            ))),
            None => Err(self.etcd("/v3/watch: stream ended before `created`")),
        }
    }
}

/// A streaming watch response, split into messages.
struct WatchStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    pending: std::collections::VecDeque<WatchResult>,
}

impl WatchStream {
    /// The next watch result; `None` when the stream ended.
    async fn next(&mut self, inner: &Inner) -> Result<Option<WatchResult>, NotaryError> {
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Ok(Some(r));
            }
            let Some(chunk) = self.resp.chunk().await.map_err(|e| inner.http(e))? else {
                return Ok(None);
            };
            self.buf.extend_from_slice(&chunk);
            // Parse every complete JSON value; keep a partial one for the next chunk.
            let mut consumed = 0;
            let mut iter =
                serde_json::Deserializer::from_slice(&self.buf).into_iter::<WatchMessage>();
            loop {
                match iter.next() {
                    Some(Ok(msg)) => {
                        consumed = iter.byte_offset();
                        if let Some(err) = msg.error {
                            return Err(inner.etcd(format!("/v3/watch: {err}")));
                        }
                        if let Some(r) = msg.result {
                            self.pending.push_back(r);
                        }
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => return Err(inner.etcd(format!("/v3/watch: bad message: {e}"))),
                    None => {
                        consumed = iter.byte_offset();
                        break;
                    }
                }
            }
            self.buf.drain(..consumed);
            // A watch event carries one record (base64, at most 4/3 of the limit) plus
            // metadata: one message (not the stream) is bounded.
            if self.buf.len() > MAX_WATCH_MESSAGE {
                return Err(inner.too_large("/v3/watch message", MAX_WATCH_MESSAGE));
            }
        }
    }
}

/// Delivers watch events, reconnecting from `next` (the next revision wanted) whenever
/// the stream ends, until the receiver goes away.
async fn watch_loop(
    inner: Arc<Inner>,
    prefix: KeyPrefix,
    stream: WatchStream,
    mut next: i64,
    tx: mpsc::Sender<WatchEvent>,
) {
    let mut stream = Some(stream);
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut s = match stream.take() {
            Some(s) => s,
            None => {
                if tx.is_closed() {
                    return;
                }
                match inner.open_watch(&prefix, next).await {
                    Ok((s, _)) => {
                        tracing::info!(backend = BACKEND, prefix = %prefix, revision = next, "watch resumed");
                        backoff = BACKOFF_MIN;
                        s
                    }
                    Err(e) => {
                        tracing::warn!(backend = BACKEND, prefix = %prefix, revision = next, error = %e, "watch reconnect failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
        };
        loop {
            let msg = tokio::select! {
                m = s.next(&inner) => m,
                _ = tx.closed() => return,
            };
            match msg {
                Ok(Some(result)) => {
                    if result.compact_revision > 0 {
                        tracing::warn!(backend = BACKEND, prefix = %prefix, revision = next, compacted = result.compact_revision, "watch revision compacted; catching up from a listing");
                        match catch_up(&inner, &prefix, next, &tx).await {
                            Some(rev) => next = rev + 1,
                            None => return,
                        }
                        break;
                    }
                    if result.canceled {
                        tracing::warn!(backend = BACKEND, prefix = %prefix, reason = %result.cancel_reason, "watch canceled by etcd; reconnecting");
                        break;
                    }
                    for ev in result.events {
                        let Some(kv) = ev.kv else { continue };
                        next = next.max(kv.mod_revision + 1);
                        let event = if ev.kind == "DELETE" {
                            inner
                                .logical_key(&kv.key, &prefix)
                                .and_then(|k| NotaryKey::parse(&k).ok())
                                .map(WatchEvent::Deleted)
                        } else {
                            inner.decode(&kv, &prefix).map(WatchEvent::Put)
                        };
                        if let Some(event) = event {
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Ok(None) => {
                    tracing::warn!(backend = BACKEND, prefix = %prefix, revision = next, "watch stream ended; reconnecting");
                    break;
                }
                Err(e @ NotaryError::ResponseTooLarge { .. }) => {
                    // Resuming at `next` would meet the same message again: read what
                    // changed from a listing (values one by one) and go on after it.
                    tracing::warn!(backend = BACKEND, prefix = %prefix, revision = next, error = %e, "watch message too large; catching up from a listing");
                    match catch_up(&inner, &prefix, next, &tx).await {
                        Some(rev) => next = rev + 1,
                        None => return,
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(backend = BACKEND, prefix = %prefix, revision = next, error = %e, "watch stream failed; reconnecting");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    break;
                }
            }
        }
    }
}

/// After compaction: delivers every record under `prefix` modified at `from` or later,
/// returning the listing's revision (`None` when the receiver is gone).
async fn catch_up(
    inner: &Inner,
    prefix: &KeyPrefix,
    from: i64,
    tx: &mpsc::Sender<WatchEvent>,
) -> Option<i64> {
    let mut backoff = BACKOFF_MIN;
    loop {
        match inner.list_verified(prefix, from).await {
            Ok((records, rev)) => {
                for r in records {
                    tx.send(WatchEvent::Put(r)).await.ok()?;
                }
                return Some(rev);
            }
            Err(e) => {
                if tx.is_closed() {
                    return None;
                }
                tracing::warn!(backend = BACKEND, prefix = %prefix, error = %e, "catch-up listing failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// A transport error, named when it is a TLS refusal: the server's certificate is not
/// from the pinned CA (or not for this host), or the server refused ours.
fn classify(endpoint: &str, source: reqwest::Error) -> NotaryError {
    match source.source().and_then(find_rustls) {
        Some(rustls::Error::InvalidCertificate(why)) => NotaryError::TlsUntrustedServer {
            endpoint: endpoint.to_owned(),
            reason: format!("{why:?}"),
        },
        Some(rustls::Error::AlertReceived(alert)) => NotaryError::TlsRejectedByServer {
            endpoint: endpoint.to_owned(),
            reason: format!("{alert:?}"),
        },
        _ => NotaryError::Http {
            endpoint: endpoint.to_owned(),
            source,
        },
    }
}

/// The rustls error in a chain of causes. `io::Error`s wrap one another (their
/// `source()` skips the wrapped error itself), so each is opened with `get_ref`.
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(tls) = e.downcast_ref::<rustls::Error>() {
        return Some(tls);
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        if let Some(tls) = find_rustls(inner) {
            return Some(tls);
        }
    }
    e.source().and_then(find_rustls)
}

impl Notary for EtcdNotary {
    async fn put(&self, record: &Record) -> Result<(), NotaryError> {
        self.put_with(record, None, &Expect::Any).await
    }

    async fn get(&self, key: &NotaryKey) -> Result<Option<Record>, NotaryError> {
        let req = json!({ "key": B64.encode(self.etcd_key(key)) });
        let resp: RangeResponse = self.inner.call("/v3/kv/range", &req).await?;
        let Some(kv) = resp.kvs.first() else {
            return Ok(None);
        };
        let bytes = B64
            .decode(&kv.value)
            .map_err(|e| RecordError::Malformed(format!("value is not base64: {e}")))?;
        Ok(Some(Record::from_bytes_verified(&bytes, key.as_str())?))
    }

    async fn list(&self, prefix: &KeyPrefix) -> Result<Vec<Record>, NotaryError> {
        Ok(self.list_at(prefix).await?.0)
    }

    async fn watch(&self, prefix: &KeyPrefix) -> Result<Watch, NotaryError> {
        Ok(Watch::new(self.watch_from(prefix, 0).await?))
    }

    /// Native: a listing at revision R, then a watch from R + 1. No duplicates, no gap.
    async fn subscribe(&self, prefix: &KeyPrefix) -> Result<(Vec<Record>, Watch), NotaryError> {
        let (records, rev) = self.list_at(prefix).await?;
        let watch = Watch::new(self.watch_from(prefix, rev + 1).await?);
        Ok((records, watch))
    }

    async fn put_if(&self, record: &Record, expect: &Expect) -> Result<(), NotaryError> {
        self.put_with(record, None, expect).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, NotaryError> {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let req = json!({ "TTL": secs.max(1).to_string() });
        let answer: LeaseAnswer = self.inner.call("/v3/lease/grant", &req).await?;
        if !answer.error.is_empty() || answer.id == 0 || answer.ttl <= 0 {
            return Err(self.inner.etcd(format!(
                "/v3/lease/grant: no lease granted: {}",
                answer.error
            )));
        }
        let granted = Duration::from_secs(answer.ttl as u64);
        tracing::debug!(
            backend = BACKEND,
            lease = answer.id,
            ttl_s = answer.ttl,
            "lease granted"
        );
        Ok(Lease::new(answer.id, granted))
    }

    async fn put_leased(
        &self,
        record: &Record,
        lease: &Lease,
        expect: &Expect,
    ) -> Result<(), NotaryError> {
        self.put_with(record, Some(lease), expect).await
    }

    async fn keep_alive(&self, lease: &Lease) -> Result<Duration, NotaryError> {
        // The gateway maps the bidirectional stream to one request and its answer(s),
        // newline-separated like a watch: the first answer is ours.
        let req = json!({ "ID": lease.id().to_string() });
        let msg: KeepAliveMessage = {
            let resp = self
                .inner
                .client
                .post(format!("{}/v3/lease/keepalive", self.inner.endpoint))
                .timeout(TIMEOUT)
                .json(&req)
                .send()
                .await
                .map_err(|e| self.inner.http(e))?;
            let status = resp.status();
            let bytes = self
                .inner
                .read_bounded(resp, "/v3/lease/keepalive", MAX_RESPONSE)
                .await?;
            if !status.is_success() {
                return Err(self.inner.etcd(format!(
                    "/v3/lease/keepalive: HTTP {status}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(512)])
                )));
            }
            serde_json::Deserializer::from_slice(&bytes)
                .into_iter::<KeepAliveMessage>()
                .next()
                .ok_or_else(|| self.inner.etcd("/v3/lease/keepalive: empty answer"))?
                .map_err(|e| {
                    self.inner
                        .etcd(format!("/v3/lease/keepalive: bad answer: {e}"))
                })?
        };
        if let Some(err) = msg.error {
            return Err(self.inner.etcd(format!("/v3/lease/keepalive: {err}")));
        }
        match msg.result {
            Some(a) if a.ttl > 0 => {
                tracing::trace!(
                    backend = BACKEND,
                    lease = lease.id(),
                    ttl_s = a.ttl,
                    "lease kept alive"
                );
                Ok(Duration::from_secs(a.ttl as u64))
            }
            _ => Err(NotaryError::LeaseExpired { lease: lease.id() }),
        }
    }

    async fn revoke(&self, lease: &Lease) -> Result<(), NotaryError> {
        let req = json!({ "ID": lease.id().to_string() });
        match self.inner.call::<Value>("/v3/lease/revoke", &req).await {
            Ok(_) => {}
            Err(NotaryError::Etcd { reason, .. })
                if reason.contains("requested lease not found") => {}
            Err(e) => return Err(e),
        }
        tracing::debug!(backend = BACKEND, lease = lease.id(), "lease revoked");
        Ok(())
    }

    async fn delete(&self, key: &NotaryKey) -> Result<(), NotaryError> {
        let req = json!({ "key": B64.encode(self.etcd_key(key)) });
        let _: Value = self.inner.call("/v3/kv/deleterange", &req).await?;
        tracing::debug!(backend = BACKEND, key = %key, "record deleted");
        Ok(())
    }

    async fn watch_events(&self, prefix: &KeyPrefix) -> Result<EventWatch, NotaryError> {
        Ok(EventWatch::new(self.watch_from(prefix, 0).await?))
    }

    /// Native, as `subscribe`: a listing at revision R, then events from R + 1.
    async fn subscribe_events(
        &self,
        prefix: &KeyPrefix,
    ) -> Result<(Vec<Record>, EventWatch), NotaryError> {
        let (records, rev) = self.list_at(prefix).await?;
        let watch = EventWatch::new(self.watch_from(prefix, rev + 1).await?);
        Ok((records, watch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let n = EtcdNotary::open("etcd://127.0.0.1:2379").unwrap();
        assert_eq!(n.endpoint(), "http://127.0.0.1:2379");
        assert_eq!(n.key_prefix(), "zos/");
        let n = EtcdNotary::open("etcd://localhost:1/a/b").unwrap();
        assert_eq!(n.key_prefix(), "a/b/");
        assert!(EtcdNotary::open("etcd://127.0.0.1").is_err());
        assert!(EtcdNotary::open("etcd://u@h:1").is_err());
        assert!(EtcdNotary::open("etcd://h:1/../x").is_err());
        assert!(EtcdNotary::open("http://h:1").is_err());
        assert!(EtcdNotary::open("etcd://h:1?ca=/x").is_err());
        assert!(EtcdNotary::open("etcds://h:1").is_err());
    }

    #[test]
    fn tls_parameters() {
        let p = TlsFiles::parse("ca=/a/ca.pem&cert=/c.pem&key=/c.key").unwrap();
        assert_eq!(p.ca, Path::new("/a/ca.pem"));
        assert_eq!(p.cert.as_deref(), Some(Path::new("/c.pem")));
        assert_eq!(p.key.as_deref(), Some(Path::new("/c.key")));
        assert!(TlsFiles::parse("ca=/a").unwrap().cert.is_none());
        for bad in [
            "",
            "cert=/c&key=/k",
            "ca=relative.pem",
            "ca=/a&ca=/b",
            "ca=/a&cert=/c",
            "ca=/a&key=/k",
            "ca=/a&verify=no",
            "ca",
        ] {
            assert!(TlsFiles::parse(bad).is_err(), "{bad}");
        }
        // A missing CA file is a TLS configuration error naming the file.
        let err = EtcdNotary::open("etcds://127.0.0.1:1/p?ca=/nonexistent/zt-ca.pem").unwrap_err();
        assert!(
            matches!(&err, NotaryError::TlsConfig { path, .. } if path == Path::new("/nonexistent/zt-ca.pem")),
            "{err}"
        );
    }

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"zos/"), b"zos0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
