//! Block stores: `dir:///path` and `http(s)://base`, and the router that spreads blocks
//! over several of them by the first byte of the block id.
//!
//! Stores hold ciphertext only and are untrusted: what they return is checked by
//! [`crate::fetch::Fetcher`], never here.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

use crate::block::MAX_CIPHERTEXT;
use crate::error::StoreError;

/// A `route` row: blocks whose id starts with a byte in `start..=end` live at `url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Lowest first byte of the block ids this route serves.
    pub start: u8,
    /// Highest first byte served, inclusive.
    pub end: u8,
    /// The store URL (`dir://` or `http://`).
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

    /// True when a block whose id starts with `first` lives at this route.
    pub fn covers(&self, first: u8) -> bool {
        (self.start..=self.end).contains(&first)
    }
}

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A local directory (`dir:///path`): the absolute path.
    Dir(PathBuf),
    /// An HTTP base URL, without a trailing `/`.
    Http(String),
}

impl StoreUrl {
    /// Parses `dir:///path` or `http://host/path`; `https://` is refused as unavailable
    /// (no TLS stack is built in), anything else as a bad URL.
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

/// Which local directories `dir://` URLs may name. A `dir://` URL in a contract names a
/// path on the node: left open, it reads any file (or blocks on a device) as a blob.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DirAccess {
    /// No `dir://` URL at all (the default: a node without configured store roots).
    #[default]
    None,
    /// Only absolute paths under one of these directories, reached from it without
    /// `..` or any symlink (the node's configured store roots).
    Under(Vec<PathBuf>),
    /// Any path: for paths an operator names (the CLI, packing, tests), never for
    /// contract input. Blobs are still opened without following a symlink below the
    /// store directory, and only regular files are read.
    Any,
}

impl DirAccess {
    /// `Under` these roots.
    pub fn under<P: Into<PathBuf>>(roots: impl IntoIterator<Item = P>) -> DirAccess {
        DirAccess::Under(roots.into_iter().map(Into::into).collect())
    }

    /// Where `path` (of `url`) is opened from: an anchor directory opened as it is, and
    /// a path below it resolved with no symlink and no `..`.
    fn place(&self, url: &str, path: &Path) -> Result<(PathBuf, PathBuf), StoreError> {
        let refuse = |roots: String| StoreError::NotUnderRoot {
            url: url.to_string(),
            roots,
        };
        match self {
            DirAccess::Any => Ok((path.to_path_buf(), PathBuf::new())),
            DirAccess::None => Err(refuse("none are configured".into())),
            DirAccess::Under(roots) => {
                let shown = || {
                    roots
                        .iter()
                        .map(|r| r.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
                    return Err(refuse(shown()));
                }
                for root in roots {
                    if !root.is_absolute() || root.components().any(|c| c == Component::ParentDir) {
                        continue;
                    }
                    if let Ok(rel) = path.strip_prefix(root) {
                        return Ok((root.clone(), rel.to_path_buf()));
                    }
                }
                Err(refuse(shown()))
            }
        }
    }
}

/// `open_how` for anything read from a `dir://` place: read-only, never blocking (a FIFO
/// or a device opens at once and is refused by its type), no controlling terminal, and
/// resolved below the anchor with no symlink (nor magic link) and no escape.
fn how() -> OpenHow {
    OpenHow::new()
        .flags(
            OFlag::O_RDONLY
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
        )
        .resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        )
}

fn file_type(mode: u32) -> &'static str {
    match SFlag::from_bits_truncate(mode & SFlag::S_IFMT.bits()) {
        SFlag::S_IFDIR => "a directory",
        SFlag::S_IFCHR => "a character device",
        SFlag::S_IFBLK => "a block device",
        SFlag::S_IFIFO => "a FIFO",
        SFlag::S_IFSOCK => "a socket",
        SFlag::S_IFLNK => "a symlink",
        _ => "not a regular file",
    }
}

/// Opens `rel` below `anchor` as a regular file (see [`how`]); `None` if it does not
/// exist. `shown` names the file in errors.
fn open_below(
    url: &str,
    anchor: &Path,
    rel: &Path,
    shown: &Path,
) -> Result<Option<File>, StoreError> {
    let io = |e: Errno| StoreError::Io {
        url: url.to_string(),
        path: shown.to_path_buf(),
        error: std::io::Error::from(e),
    };
    let dir = match nix::fcntl::open(
        anchor,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    let fd = match openat2(dir.as_raw_fd(), rel, how()) {
        // SAFETY: `openat2` just returned this descriptor and nothing else owns it.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(Errno::ENOENT) => return Ok(None),
        // RESOLVE_NO_SYMLINKS and O_NOFOLLOW both answer ELOOP for a link on the way.
        Err(Errno::ELOOP) => {
            return Err(StoreError::Symlink {
                url: url.to_string(),
                path: shown.to_path_buf(),
            })
        }
        Err(Errno::EXDEV) => {
            return Err(StoreError::NotUnderRoot {
                url: url.to_string(),
                roots: anchor.display().to_string(),
            })
        }
        Err(e) => return Err(io(e)),
    };
    let st = fstat(fd.as_raw_fd()).map_err(io)?;
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
        return Err(StoreError::NotRegular {
            url: url.to_string(),
            path: shown.to_path_buf(),
            kind: file_type(st.st_mode),
        });
    }
    Ok(Some(File::from(fd)))
}

/// Reads the file a `dir://` URL names (a `.fl` or its `.sig`), at most `max` bytes,
/// under `access`: opened non-blocking, as a regular file, without following a symlink
/// (with [`DirAccess::Any`], the last component; under roots, any component below the
/// root). `dir:///dev/console` is refused at once instead of blocking the caller.
pub fn read_dir_url(url: &str, access: &DirAccess, max: u64) -> Result<Vec<u8>, StoreError> {
    let path = match StoreUrl::parse(url)? {
        StoreUrl::Dir(p) => p,
        StoreUrl::Http(_) => return Err(StoreError::BadUrl(url.to_string())),
    };
    let (anchor, rel) = match access {
        DirAccess::Any => {
            let name = path
                .file_name()
                .ok_or_else(|| StoreError::BadUrl(url.to_string()))?;
            let parent = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            (parent, PathBuf::from(name))
        }
        _ => access.place(url, &path)?,
    };
    if rel.as_os_str().is_empty() {
        return Err(StoreError::NotRegular {
            url: url.to_string(),
            path,
            kind: "a directory",
        });
    }
    let file = open_below(url, &anchor, &rel, &path)?.ok_or_else(|| StoreError::Io {
        url: url.to_string(),
        path: path.clone(),
        error: std::io::Error::from(std::io::ErrorKind::NotFound),
    })?;
    let mut buf = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| StoreError::Io {
            url: url.to_string(),
            path: path.clone(),
            error: e,
        })?;
    if buf.len() as u64 > max {
        return Err(StoreError::TooLarge {
            url: url.to_string(),
            limit: max,
        });
    }
    Ok(buf)
}

/// One opened store.
#[derive(Debug, Clone)]
pub enum Store {
    /// Blobs in a local directory.
    Dir {
        /// The URL as given.
        url: String,
        /// The store directory (blobs at `<root>/<hex[0:2]>/<hex>`).
        root: PathBuf,
        /// Opened as it is: the allowed root (or the store directory itself).
        anchor: PathBuf,
        /// From `anchor` to `root`, resolved with no symlink and no `..`.
        below: PathBuf,
    },
    /// Blobs served over HTTP (read only).
    Http {
        /// The URL as given.
        url: String,
        /// The URL without a trailing `/`; blobs are asked for below it.
        base: String,
        /// The HTTP client, with connect and transfer timeouts.
        client: reqwest::blocking::Client,
    },
}

impl Store {
    /// Opens a store an operator named: any `dir://` directory ([`DirAccess::Any`]).
    /// Contract input goes through [`Store::open_in`] with the node's store roots.
    pub fn open(url: &str) -> Result<Store, StoreError> {
        Store::open_in(url, &DirAccess::Any)
    }

    /// Opens a store; a `dir://` one only where `access` allows it. A directory that
    /// exists is checked now (a directory, reached without a symlink under a root); one
    /// that does not exist yet is allowed (its blobs are then not found).
    pub fn open_in(url: &str, access: &DirAccess) -> Result<Store, StoreError> {
        Ok(match StoreUrl::parse(url)? {
            StoreUrl::Dir(root) => {
                let (anchor, below) = access.place(url, &root)?;
                check_store_dir(url, &anchor, &below)?;
                Store::Dir {
                    url: url.to_string(),
                    root,
                    anchor,
                    below,
                }
            }
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

    /// The URL the store was opened with.
    pub fn url(&self) -> &str {
        match self {
            Store::Dir { url, .. } | Store::Http { url, .. } => url,
        }
    }

    /// Fetches the ciphertext stored under `id`.
    pub fn get(&self, id: &[u8; 32]) -> Result<Vec<u8>, StoreError> {
        let hex = hex::encode(id);
        match self {
            Store::Dir {
                url,
                root,
                anchor,
                below,
            } => {
                for rel in [Path::new(&hex[..2]).join(&hex), PathBuf::from(&hex)] {
                    let path = root.join(&rel);
                    if let Some(f) = open_below(url, anchor, &below.join(&rel), &path)? {
                        return read_capped(f, url, &path);
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
            Store::Dir { url, root, .. } => {
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

/// A store directory that exists must be a directory, reached from its anchor without a
/// symlink (`dir:///dev/console` is refused here, not at the first block).
fn check_store_dir(url: &str, anchor: &Path, below: &Path) -> Result<(), StoreError> {
    let shown = anchor.join(below);
    let io = |e: Errno| StoreError::Io {
        url: url.to_string(),
        path: shown.clone(),
        error: std::io::Error::from(e),
    };
    let dir = match nix::fcntl::open(anchor, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()) {
        // SAFETY: `open` just returned this descriptor and nothing else owns it.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(io(e)),
    };
    let fd = if below.as_os_str().is_empty() {
        dir
    } else {
        let how = OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        match openat2(dir.as_raw_fd(), below, how) {
            // SAFETY: `openat2` just returned this descriptor and nothing else owns it.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::ELOOP) => {
                return Err(StoreError::Symlink {
                    url: url.to_string(),
                    path: shown,
                })
            }
            Err(e) => return Err(io(e)),
        }
    };
    let st = fstat(fd.as_raw_fd()).map_err(io)?;
    // O_PATH | O_NOFOLLOW opens a last-component link itself instead of failing.
    if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits() {
        return Err(StoreError::Symlink {
            url: url.to_string(),
            path: shown,
        });
    }
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFDIR.bits() {
        return Err(StoreError::NotRegular {
            url: url.to_string(),
            path: shown,
            kind: file_type(st.st_mode),
        });
    }
    Ok(())
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
    /// A router over stores an operator named ([`DirAccess::Any`]).
    pub fn new(routes: &[Route]) -> Result<Router, StoreError> {
        Router::new_in(routes, &DirAccess::Any)
    }

    /// A router whose `dir://` stores must be where `access` allows (contract input:
    /// the node's store roots). Refused at once, before any block is read.
    pub fn new_in(routes: &[Route], access: &DirAccess) -> Result<Router, StoreError> {
        let routes = routes
            .iter()
            .map(|r| Ok((r.clone(), Store::open_in(&r.url, access)?)))
            .collect::<Result<_, StoreError>>()?;
        Ok(Router { routes })
    }

    /// A router from `URL` / `xx-yy=URL` specs an operator named ([`DirAccess::Any`]).
    pub fn parse(specs: &[String]) -> Result<Router, StoreError> {
        Router::parse_in(specs, &DirAccess::Any)
    }

    /// A router from `URL` / `xx-yy=URL` specs, `dir://` ones only where `access`
    /// allows (see [`Router::new_in`]).
    pub fn parse_in(specs: &[String], access: &DirAccess) -> Result<Router, StoreError> {
        let routes = specs
            .iter()
            .map(|s| Route::parse(s))
            .collect::<Result<Vec<_>, _>>()?;
        Router::new_in(&routes, access)
    }

    /// The routes, in the order they are tried.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().map(|(r, _)| r)
    }

    /// The stores that may hold `id`, in order.
    pub(crate) fn candidates(&self, id: &[u8; 32]) -> impl Iterator<Item = &Store> + '_ {
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
