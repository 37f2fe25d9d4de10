//! `etcd://` backend: etcd v3 (3.4 or later) through its HTTP JSON gateway.
//!
//! URL: `etcd://host:port` (keys under `zos/`) or `etcd://host:port/prefix` (keys under
//! `prefix/`). A record for logical key `K` is stored at etcd key `<prefix>/K`, its value
//! the record's canonical bytes.
//!
//! Gateway calls (etcd 3.4 serves them at `/v3/...`; keys and values are base64, 64-bit
//! integers are JSON strings):
//!
//! - `POST /v3/kv/put {"key","value"}`;
//! - `POST /v3/kv/range {"key","range_end","limit","revision"}`, paginated at one
//!   revision, so a listing is a consistent snapshot;
//! - `POST /v3/watch {"create_request":{"key","range_end","start_revision"}}`: a
//!   streaming response of newline-separated JSON messages.
//!
//! The watch task resumes after a dropped stream from the last seen revision + 1, with
//! a capped exponential backoff. If that revision was compacted meanwhile, it re-reads
//! the prefix and delivers every record modified since, then watches from there.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::key::KeyPrefix;
use crate::{
    warn_skipped, Notary, NotaryError, NotaryKey, Record, RecordError, Watch, MAX_RECORD_BYTES,
    WATCH_CHANNEL,
};

const BACKEND: &str = "etcd";
const DEFAULT_PREFIX: &str = "zos";
const PAGE: u64 = 128;
const TIMEOUT: Duration = Duration::from_secs(30);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// A notary in etcd. Cheap to clone (one shared HTTP connection pool).
#[derive(Debug, Clone)]
pub struct EtcdNotary {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: reqwest::Client,
    /// `http://host:port`
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

impl EtcdNotary {
    /// Parses `etcd://host:port[/prefix]`. Does not connect: the first operation does.
    pub fn open(url: &str) -> Result<Self, NotaryError> {
        let bad = |reason: &str| NotaryError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| bad("expected etcd://host:port[/prefix]"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty()
            || authority.contains(['@', '?', '#', ','])
            || !authority.contains(':')
        {
            return Err(bad(
                "expected etcd://host:port[/prefix] with one host and a port",
            ));
        }
        let prefix = if path.is_empty() {
            DEFAULT_PREFIX.to_owned()
        } else {
            KeyPrefix::parse(path)
                .map_err(|e| bad(&format!("key prefix: {e}")))?
                .as_str()
                .to_owned()
        };
        let endpoint = format!("http://{authority}");
        reqwest::Url::parse(&endpoint).map_err(|e| bad(&e.to_string()))?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_keepalive(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .map_err(|source| NotaryError::Http {
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

    /// `http://host:port`.
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
    pub async fn list_at(&self, prefix: &KeyPrefix) -> Result<(Vec<Record>, i64), NotaryError> {
        let (kvs, rev) = self.inner.range_prefix(prefix).await?;
        let mut out: Vec<Record> = kvs
            .iter()
            .filter_map(|kv| self.inner.decode(kv, prefix))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((out, rev))
    }

    /// A watch delivering records modified at `start_revision` or later.
    pub async fn watch_from(
        &self,
        prefix: &KeyPrefix,
        start_revision: i64,
    ) -> Result<Watch, NotaryError> {
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
        Ok(Watch::new(rx, Some(task)))
    }
}

impl Inner {
    fn http(&self, source: reqwest::Error) -> NotaryError {
        NotaryError::Http {
            endpoint: self.endpoint.clone(),
            source,
        }
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
        let bytes = resp.bytes().await.map_err(|e| self.http(e))?;
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

    async fn range_prefix(&self, prefix: &KeyPrefix) -> Result<(Vec<Kv>, i64), NotaryError> {
        let (mut start, end) = self.range_of(prefix);
        let mut revision = 0i64;
        let mut out = Vec::new();
        loop {
            let mut req = json!({
                "key": B64.encode(&start),
                "range_end": B64.encode(&end),
                "limit": PAGE.to_string(),
            });
            if revision > 0 {
                req["revision"] = json!(revision.to_string());
            }
            let resp: RangeResponse = self.call("/v3/kv/range", &req).await?;
            if revision == 0 {
                revision = resp.header.revision;
            }
            let last = resp.kvs.last().map(|kv| kv.key.clone());
            out.extend(resp.kvs);
            match (resp.more, last) {
                (true, Some(last)) => {
                    start = B64
                        .decode(last)
                        .map_err(|e| self.etcd(format!("bad key encoding: {e}")))?;
                    start.push(0);
                }
                _ => return Ok((out, revision)),
            }
        }
    }

    /// Decodes, verifies and filters one key-value; logs and drops what fails.
    fn decode(&self, kv: &Kv, prefix: &KeyPrefix) -> Option<Record> {
        let raw_key = match B64.decode(&kv.key).map(String::from_utf8) {
            Ok(Ok(k)) => k,
            _ => {
                warn_skipped(BACKEND, &kv.key, &"etcd key is not base64 UTF-8");
                return None;
            }
        };
        let logical = raw_key.strip_prefix(&self.base)?;
        if !prefix.matches(logical) {
            return None;
        }
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
            let text = resp.text().await.unwrap_or_default();
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
            // metadata; anything much larger is not a gateway message we understand.
            if self.buf.len() > 2 * MAX_RECORD_BYTES + 64 * 1024 {
                return Err(inner.etcd("/v3/watch: message too large"));
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
    tx: mpsc::Sender<Record>,
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
                        if ev.kind == "DELETE" {
                            continue;
                        }
                        if let Some(record) = inner.decode(&kv, &prefix) {
                            if tx.send(record).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                Ok(None) => {
                    tracing::warn!(backend = BACKEND, prefix = %prefix, revision = next, "watch stream ended; reconnecting");
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
    tx: &mpsc::Sender<Record>,
) -> Option<i64> {
    let mut backoff = BACKOFF_MIN;
    loop {
        match inner.range_prefix(prefix).await {
            Ok((kvs, rev)) => {
                for kv in kvs.iter().filter(|kv| kv.mod_revision >= from) {
                    if let Some(r) = inner.decode(kv, prefix) {
                        tx.send(r).await.ok()?;
                    }
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

impl Notary for EtcdNotary {
    async fn put(&self, record: &Record) -> Result<(), NotaryError> {
        let (key, bytes) = record.to_storable()?;
        let req = json!({
            "key": B64.encode(self.etcd_key(&key)),
            "value": B64.encode(&bytes),
        });
        let _: Value = self.inner.call("/v3/kv/put", &req).await?;
        tracing::debug!(backend = BACKEND, key = %key, "record stored");
        Ok(())
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
        self.watch_from(prefix, 0).await
    }

    /// Native: a listing at revision R, then a watch from R + 1. No duplicates, no gap.
    async fn subscribe(&self, prefix: &KeyPrefix) -> Result<(Vec<Record>, Watch), NotaryError> {
        let (records, rev) = self.list_at(prefix).await?;
        let watch = self.watch_from(prefix, rev + 1).await?;
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
    }

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"zos/"), b"zos0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff"), vec![0]);
    }
}
