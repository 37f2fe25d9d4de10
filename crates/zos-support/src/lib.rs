//! Support bundles that never fail as a whole (issue #18, section 3).
//!
//! A bundle is a `tar.zst` of parts, one file per [`Source`], plus `manifest.json` (one
//! [`PartReport`] per part) and `errors.txt` (one line per part that failed, timed out,
//! was truncated or was dropped). [`build`] always returns a bundle:
//!
//! - each source runs on its own thread; an error, a panic (caught) or a hang longer than
//!   [`BundleConfig::part_timeout`] (the thread is abandoned) becomes a manifest line;
//! - a part over [`BundleConfig::part_limit`] is truncated (its head, or its tail for a
//!   [`Source::tail`] source such as the kernel log) and says so;
//! - every part, and every error text, goes through the [`Redactor`]: the secrets it holds
//!   are replaced by `[REDACTED]` in every encoding (raw, hex, base64);
//! - the compressed bundle is kept under [`BundleConfig::max_bytes`]: the largest parts
//!   are dropped first, each drop written in the manifest.
//!
//! [`unpack`] is the reader (`zos support fetch`): it refuses, before writing anything,
//! an archive with an entry that is not a plain file name (`..`, an absolute path, a
//! directory) or not a regular file (a symlink, a hard link, a device).

#![forbid(unsafe_code)]

mod archive;
mod redact;
pub mod sources;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use archive::unpack;
pub use redact::{Redactor, REDACTED};

/// One part of the bundle.
pub trait Source: Send + Sync {
    /// The file name inside the bundle, e.g. `kernel.log`: one plain name (no `/`).
    fn name(&self) -> &str;

    /// The part's bytes, ideally at most `limit`. A source may return more (say, a
    /// `limit + 1`-th byte so a truncation shows): [`build`] truncates and notes it.
    fn collect(&self, limit: usize) -> Result<Vec<u8>, String>;

    /// When truncated, keep the end (a log tail) rather than the beginning.
    fn tail(&self) -> bool {
        false
    }
}

/// The bounds of one bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BundleConfig {
    /// The whole bundle, compressed, in bytes.
    pub max_bytes: usize,
    /// One part, uncompressed, in bytes.
    pub part_limit: usize,
    /// How long one source may run; a slower one is abandoned.
    pub part_timeout: Duration,
}

impl Default for BundleConfig {
    /// 8 MiB bundle, 2 MiB parts, 10 s per part.
    fn default() -> Self {
        BundleConfig {
            max_bytes: 8 << 20,
            part_limit: 2 << 20,
            part_timeout: Duration::from_secs(10),
        }
    }
}

/// A built bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The `tar.zst` bytes.
    pub bytes: Vec<u8>,
    /// What is in it (also inside, as `manifest.json`).
    pub manifest: Manifest,
}

/// What a bundle holds, part by part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Manifest {
    /// One report per source, in the order given.
    pub parts: Vec<PartReport>,
    /// The bound the bundle was built under.
    #[serde(default)]
    pub max_bytes: u64,
    /// Unix seconds when it was built.
    #[serde(default)]
    pub created: u64,
}

/// What became of one source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartReport {
    /// The file name in the bundle (the source's name, made safe and unique).
    pub name: String,
    /// Bytes of the part in the bundle (0 when it failed or was dropped).
    pub bytes: u64,
    /// The part is in the bundle.
    pub ok: bool,
    /// Why not, or what happened to it (truncation, drop), redacted.
    pub error: Option<String>,
    /// Cut at the part limit.
    pub truncated: bool,
    /// Left out to keep the bundle under `max_bytes`.
    #[serde(default)]
    pub dropped: bool,
    /// Secret occurrences replaced in this part.
    #[serde(default)]
    pub redacted: u64,
}

impl PartReport {
    /// The `errors.txt` line for this part, if anything went wrong.
    pub fn error_line(&self) -> Option<String> {
        let why = self.error.as_deref()?;
        Some(format!("{}: {}", self.name, why))
    }
}

/// Why [`unpack`] refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not a zstd stream.
    #[error("bundle is not zstd: {0}")]
    Decompress(String),
    /// Decompressed past the bound.
    #[error("bundle decompresses to more than {limit} bytes")]
    TooLarge {
        /// The bound.
        limit: u64,
    },
    /// The tar framing is broken.
    #[error("bundle tar: {0}")]
    Tar(#[source] std::io::Error),
    /// An entry whose path is not one plain file name (`..`, absolute, nested, empty).
    #[error("bundle entry {path:?} is not a plain file name")]
    UnsafePath {
        /// The path as written in the archive.
        path: String,
    },
    /// An entry that is not a regular file (symlink, hard link, directory, device).
    #[error("bundle entry {path:?} is a {kind}, not a regular file")]
    NotAFile {
        /// The path as written in the archive.
        path: String,
        /// What it is.
        kind: String,
    },
    /// The same name twice.
    #[error("bundle entry {path:?} appears twice")]
    Duplicate {
        /// The name.
        path: String,
    },
    /// No `manifest.json`.
    #[error("bundle has no manifest.json")]
    NoManifest,
    /// `manifest.json` does not parse.
    #[error("bundle manifest.json: {0}")]
    Manifest(#[source] serde_json::Error),
    /// Writing into the target directory failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The manifest's file name in the bundle.
pub const MANIFEST: &str = "manifest.json";
/// The errors file's name in the bundle.
pub const ERRORS: &str = "errors.txt";

/// An error text in the manifest is cut to this many bytes.
const ERROR_MAX: usize = 1024;

/// Collect every source (concurrently, each on its own thread, each bounded), redact,
/// and pack under the bounds of `cfg`. Never fails: see the crate docs.
///
/// The sources are taken by value: a source that hangs keeps its thread (abandoned).
pub fn build(sources: Vec<Box<dyn Source>>, cfg: &BundleConfig, redact: &Redactor) -> Bundle {
    let names = unique_names(sources.iter().map(|s| s.name().to_string()).collect());
    let tails: Vec<bool> = sources.iter().map(|s| s.tail()).collect();
    let results = collect_all(sources, &names, cfg);

    let mut reports = Vec::with_capacity(names.len());
    let mut bodies: Vec<Option<Vec<u8>>> = Vec::with_capacity(names.len());
    for ((name, result), tail) in names.into_iter().zip(results).zip(tails) {
        let mut report = PartReport {
            name,
            bytes: 0,
            ok: false,
            error: None,
            truncated: false,
            dropped: false,
            redacted: 0,
        };
        match result {
            Ok(raw) => {
                let (mut data, n) = redact.redact(&raw);
                report.redacted = n as u64;
                if data.len() > cfg.part_limit {
                    let total = data.len();
                    data = if tail {
                        data.split_off(total - cfg.part_limit)
                    } else {
                        data.truncate(cfg.part_limit);
                        data
                    };
                    report.truncated = true;
                    report.error = Some(format!(
                        "truncated to {} bytes of {} or more ({} kept)",
                        cfg.part_limit,
                        total,
                        if tail { "the tail" } else { "the head" }
                    ));
                }
                // A secret cut by a source's own bound or by the truncation above leaves a
                // partial encoding at an edge: cut it too.
                report.redacted += redact.trim_edges(&mut data) as u64;
                report.bytes = data.len() as u64;
                report.ok = true;
                bodies.push(Some(data));
            }
            Err(why) => {
                let (why, _) = redact.redact(why.as_bytes());
                let mut why = String::from_utf8_lossy(&why).into_owned();
                cut_str(&mut why, ERROR_MAX);
                tracing::warn!(part = %report.name, error = %why, "support bundle part failed");
                report.error = Some(why);
                bodies.push(None);
            }
        }
        reports.push(report);
    }

    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut manifest = Manifest {
        parts: reports,
        max_bytes: cfg.max_bytes as u64,
        created,
    };
    let bytes = archive::pack_bounded(&mut manifest, &mut bodies, cfg.max_bytes);
    tracing::info!(
        bytes = bytes.len(),
        parts = manifest.parts.len(),
        failed = manifest.parts.iter().filter(|p| !p.ok).count(),
        "support bundle built"
    );
    Bundle { bytes, manifest }
}

/// Run every source on its own thread; wait for each at most until `part_timeout` after
/// the start (they run together).
fn collect_all(
    sources: Vec<Box<dyn Source>>,
    names: &[String],
    cfg: &BundleConfig,
) -> Vec<Result<Vec<u8>, String>> {
    let n = sources.len();
    let (tx, rx) = mpsc::channel::<(usize, Result<Vec<u8>, String>)>();
    let mut results: Vec<Option<Result<Vec<u8>, String>>> = (0..n).map(|_| None).collect();
    let mut waiting = 0usize;
    // A source may ask for limit + 1 to show a truncation; the slack is cut in build.
    let limit = cfg.part_limit;
    for (i, src) in sources.into_iter().enumerate() {
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("support-{i}"))
            .spawn(move || {
                let r = match catch_unwind(AssertUnwindSafe(|| src.collect(limit))) {
                    Ok(r) => r,
                    Err(payload) => Err(format!("panicked: {}", panic_text(payload.as_ref()))),
                };
                // The receiver is gone when this part was abandoned: nothing to do.
                let _ = tx.send((i, r));
            });
        match spawned {
            Ok(_) => waiting += 1,
            Err(e) => results[i] = Some(Err(format!("could not start its thread: {e}"))),
        }
    }
    drop(tx);
    let deadline = Instant::now() + cfg.part_timeout;
    while waiting > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, r)) => {
                results[i] = Some(r);
                waiting -= 1;
            }
            Err(_) => break,
        }
    }
    results
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| {
                tracing::warn!(part = %names[i], timeout_ms = cfg.part_timeout.as_millis() as u64, "support bundle part abandoned");
                Err(format!(
                    "timed out after {:?}: abandoned",
                    cfg.part_timeout
                ))
            })
        })
        .collect()
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a non-string payload".to_string()
    }
}

/// Cut a string at a char boundary at or below `max` bytes.
fn cut_str(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut at = max;
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
    s.push_str("...");
}

/// Plain, unique file names: a name with `/`, `..`, a control character, or one of the
/// bundle's own names (manifest, errors) becomes `part-<i>`; a repeat gets `.<n>`.
fn unique_names(raw: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    seen.insert(MANIFEST.to_string());
    seen.insert(ERRORS.to_string());
    raw.into_iter()
        .enumerate()
        .map(|(i, name)| {
            let base = if is_plain_name(&name) && name.len() <= 100 && !seen.contains(&name) {
                name
            } else if is_plain_name(&name) && name.len() <= 90 {
                // Taken: number it below.
                name
            } else {
                format!("part-{i}")
            };
            let mut candidate = base.clone();
            let mut k = 1;
            while seen.contains(&candidate) {
                k += 1;
                candidate = format!("{base}.{k}");
            }
            seen.insert(candidate.clone());
            candidate
        })
        .collect()
}

/// One path component, no `.`/`..`, no `/`, no NUL or control characters.
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.chars().any(|c| c.is_control())
}

/// The manifest as it is written into the bundle.
pub fn manifest_json(manifest: &Manifest) -> Vec<u8> {
    serde_json::to_vec_pretty(manifest)
        .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_and_unique() {
        let got = unique_names(vec![
            "a.txt".into(),
            "a.txt".into(),
            "../x".into(),
            "manifest.json".into(),
            "".into(),
            "/etc/passwd".into(),
        ]);
        assert_eq!(
            got,
            vec![
                "a.txt",
                "a.txt.2",
                "part-2",
                "manifest.json.2",
                "part-4",
                "part-5"
            ]
        );
    }

    #[test]
    fn cut_str_keeps_char_boundaries() {
        let mut s = "ééé".to_string();
        cut_str(&mut s, 3);
        assert_eq!(s, "é...");
    }
}
