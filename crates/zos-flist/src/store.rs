//! Block stores: `dir:///path` and `http(s)://base`, and the router that spreads blocks
//! over several of them by the first byte of the block id.
//!
//! Stores hold ciphertext only and are untrusted: what they return is checked by
//! [`crate::fetch::Fetcher`], never here.

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::block::MAX_CIPHERTEXT;
use crate::error::StoreError;

/// A `route` row: blocks whose id starts with a byte in `start..=end` live at `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub start: u8,
    pub end: u8,
    pub url: String,
}

impl Route {
    /// Parses `URL` (all ids) or `xx-yy=URL` (hex range of the first id byte), as rfs does.
    pub fn parse(spec: &str) -> Result<Route, StoreError> {
        let bad = || StoreError::BadUrl(spec.to_string());
        if let Some((range, url)) = spec.split_once('=') {
            if let Some((a, b)) = range.split_once('-') {
                if a.len() == 2 && b.len() == 2 {
                    let start = u8::from_str_radix(a, 16).map_err(|_| bad())?;
                    let end = u8::from_str_radix(b, 16).map_err(|_| bad())?;
                    if start > end {
                        return Err(bad());
                    }
                    StoreUrl::parse(url)?;
                    return Ok(Route {
                        start,
                        end,
                        url: url.to_string(),
                    });
                }
            }
        }
        StoreUrl::parse(spec)?;
        Ok(Route {
            start: 0,
            end: 255,
            url: spec.to_string(),
        })
    }

    pub fn covers(&self, first: u8) -> bool {
        (self.start..=self.end).contains(&first)
    }
}

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Dir(PathBuf),
    Http(String),
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, StoreError> {
        if let Some(path) = url.strip_prefix("dir://") {
            if path.is_empty() {
                return Err(StoreError::BadUrl(url.to_string()));
            }
            return Ok(StoreUrl::Dir(PathBuf::from(path)));
        }
        if url.starts_with("https://") {
            // Built without a TLS stack to keep the dependency set small; see
            // docs/flist-format.md ("Stores").
            return Err(StoreError::Unavailable {
                url: url.to_string(),
                reason: "https is not built in yet; use http:// or dir://".into(),
            });
        }
        if url.starts_with("http://") && url.len() > "http://".len() {
            return Ok(StoreUrl::Http(url.trim_end_matches('/').to_string()));
        }
        Err(StoreError::BadUrl(url.to_string()))
    }
}

/// One opened store.
#[derive(Debug, Clone)]
pub enum Store {
    Dir {
        url: String,
        root: PathBuf,
    },
    Http {
        url: String,
        base: String,
        client: reqwest::blocking::Client,
    },
}

impl Store {
    pub fn open(url: &str) -> Result<Store, StoreError> {
        Ok(match StoreUrl::parse(url)? {
            StoreUrl::Dir(root) => Store::Dir {
                url: url.to_string(),
                root,
            },
            StoreUrl::Http(base) => {
                let client = reqwest::blocking::Client::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .timeout(Duration::from_secs(120))
                    .build()
                    .map_err(|e| StoreError::Unavailable {
                        url: url.to_string(),
                        reason: e.to_string(),
                    })?;
                Store::Http {
                    url: url.to_string(),
                    base,
                    client,
                }
            }
        })
    }

    pub fn url(&self) -> &str {
        match self {
            Store::Dir { url, .. } | Store::Http { url, .. } => url,
        }
    }

    /// Fetches the ciphertext stored under `id`.
    pub fn get(&self, id: &[u8; 32]) -> Result<Vec<u8>, StoreError> {
        let hex = hex::encode(id);
        match self {
            Store::Dir { url, root } => {
                for path in [root.join(&hex[..2]).join(&hex), root.join(&hex)] {
                    match std::fs::File::open(&path) {
                        Ok(f) => return read_capped(f, url, &path),
                        Err(e) if e.kind() == ErrorKind::NotFound => continue,
                        Err(e) => {
                            return Err(StoreError::Io {
                                url: url.clone(),
                                path,
                                error: e,
                            })
                        }
                    }
                }
                Err(StoreError::NotFound {
                    url: url.clone(),
                    id: hex,
                })
            }
            Store::Http { url, base, client } => {
                let unavailable = |reason: String| StoreError::Unavailable {
                    url: url.clone(),
                    reason,
                };
                for u in [
                    format!("{base}/{}/{hex}", &hex[..2]),
                    format!("{base}/{hex}"),
                ] {
                    let resp = client
                        .get(&u)
                        .send()
                        .map_err(|e| unavailable(e.to_string()))?;
                    if resp.status() == reqwest::StatusCode::NOT_FOUND {
                        continue;
                    }
                    if !resp.status().is_success() {
                        return Err(unavailable(format!("GET {u}: {}", resp.status())));
                    }
                    if resp.content_length().unwrap_or(0) > MAX_CIPHERTEXT as u64 {
                        return Err(unavailable(format!("GET {u}: blob too large")));
                    }
                    return read_capped(resp, url, Path::new(&u));
                }
                Err(StoreError::NotFound {
                    url: url.clone(),
                    id: hex,
                })
            }
        }
    }

    /// Stores a ciphertext under `id`. Content-addressed, so an existing blob is kept.
    pub fn set(&self, id: &[u8; 32], blob: &[u8]) -> Result<(), StoreError> {
        match self {
            Store::Dir { url, root } => {
                let hex = hex::encode(id);
                let dir = root.join(&hex[..2]);
                let path = dir.join(&hex);
                let io = |path: &Path, e| StoreError::Io {
                    url: url.clone(),
                    path: path.to_path_buf(),
                    error: e,
                };
                if path.exists() {
                    return Ok(());
                }
                std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
                // Temp + rename: a concurrent reader never sees half a blob. No fsync:
                // a torn blob after a crash fails its id check and is never used.
                let tmp = dir.join(format!(
                    ".tmp-{hex}-{}-{:?}",
                    std::process::id(),
                    std::thread::current().id()
                ));
                let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
                f.write_all(blob).map_err(|e| io(&tmp, e))?;
                drop(f);
                std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))
            }
            Store::Http { url, .. } => Err(StoreError::ReadOnly { url: url.clone() }),
        }
    }
}

fn read_capped(r: impl Read, url: &str, path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut buf = Vec::new();
    r.take(MAX_CIPHERTEXT as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| StoreError::Io {
            url: url.to_string(),
            path: path.to_path_buf(),
            error: e,
        })?;
    // An oversized blob is passed on and refused by the block check (TooLarge).
    Ok(buf)
}

/// Stores by id range. Reads try matching routes in order; writes go to all of them.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<(Route, Store)>,
}

impl Router {
    pub fn new(routes: &[Route]) -> Result<Router, StoreError> {
        let routes = routes
            .iter()
            .map(|r| Ok((r.clone(), Store::open(&r.url)?)))
            .collect::<Result<_, StoreError>>()?;
        Ok(Router { routes })
    }

    /// A router from `URL` / `xx-yy=URL` specs.
    pub fn parse(specs: &[String]) -> Result<Router, StoreError> {
        let routes = specs
            .iter()
            .map(|s| Route::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        Router::new(&routes)
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().map(|(r, _)| r)
    }

    /// The stores that may hold `id`, in order.
    pub fn candidates(&self, id: &[u8; 32]) -> impl Iterator<Item = &Store> + '_ {
        let first = id[0];
        self.routes
            .iter()
            .filter(move |(r, _)| r.covers(first))
            .map(|(_, s)| s)
    }

    /// Writes a blob to every store whose range covers it.
    pub fn set(&self, id: &[u8; 32], blob: &[u8]) -> Result<(), StoreError> {
        let mut any = false;
        for s in self.candidates(id) {
            any = true;
            s.set(id, blob)?;
        }
        if !any {
            return Err(StoreError::BadUrl(format!(
                "no store route covers block ids starting with {:02x}",
                id[0]
            )));
        }
        Ok(())
    }
}
