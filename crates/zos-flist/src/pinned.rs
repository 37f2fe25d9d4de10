//! A flist by its reference in a contract ([`FlistRef`]): its `.fl` fetched by URL,
//! checked against the pinned sha256 and, when the reference names publishers,
//! against a detached signature by one of them; then unpacked, every block verified,
//! into a tree that is complete or absent.
//!
//! This is flist policy, so it lives here: the container runtime (overlay roots) and
//! the VM runtime (kernel trees) only say where the files go ([`PinnedTrees`]) and how
//! much they may take.
//!
//! Every error is an [`Error`] whose [`Error::is_permanent`] tells a refused flist (a
//! wrong pin, a bad signature, bad blocks, a URL not allowed, too large) from one that
//! may come later (a store or server that is down).

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use zos_contract::deployment::FlistRef;
use zos_contract::Digest;

use crate::error::FetchError;
use crate::meta::MAX_FLIST_BYTES;
use crate::{BlockCache, DirAccess, Error, Fetcher, Flist, FlistSignature, Router, UnpackOptions};

/// The file at `url`: `dir:///path` (only where `access` allows, a regular file
/// reached without a link, never blocking) or `http://host/path`; at most
/// [`MAX_FLIST_BYTES`].
pub fn fetch_url(url: &str, access: &DirAccess) -> Result<Vec<u8>, Error> {
    let fail = |reason| Error::Fetch {
        url: url.to_string(),
        reason,
    };
    if url.starts_with("dir://") {
        return crate::read_dir_url(url, access, MAX_FLIST_BYTES)
            .map_err(|e| fail(FetchError::Dir(e)));
    }
    if !url.starts_with("http://") {
        return Err(fail(FetchError::Unsupported));
    }
    let resp =
        reqwest::blocking::get(url).map_err(|e| fail(FetchError::Transport(e.to_string())))?;
    if !resp.status().is_success() {
        return Err(fail(FetchError::Status(resp.status().as_u16())));
    }
    let mut bytes = Vec::new();
    resp.take(MAX_FLIST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(FetchError::Transport(e.to_string())))?;
    if bytes.len() as u64 > MAX_FLIST_BYTES {
        return Err(fail(FetchError::TooLarge {
            limit: MAX_FLIST_BYTES,
        }));
    }
    Ok(bytes)
}

/// The `.fl` bytes of `flist`, checked against its pin and, when it names
/// publishers, against the detached signature at `<url>.sig` by one of them.
pub fn fetch_verified(flist: &FlistRef, access: &DirAccess) -> Result<Vec<u8>, Error> {
    let bytes = fetch_url(&flist.url, access)?;
    let actual = Digest::of(&bytes);
    if actual != flist.sha256 {
        return Err(Error::Pin {
            url: flist.url.clone(),
            actual: actual.to_hex(),
            pinned: flist.sha256.to_hex(),
        });
    }
    if !flist.publishers.is_empty() {
        let sig_url = format!("{}.sig", flist.url);
        let text = fetch_url(&sig_url, access)?;
        let sig = FlistSignature::parse(Path::new(&sig_url), &text)?;
        sig.check(&actual.0, &flist.publishers)?;
    }
    Ok(bytes)
}

/// Where verified flists and their unpacked trees are kept: `flists/<sha256>.fl` and
/// `trees/<sha256>/`, with an optional block cache for flists that share blocks.
#[derive(Debug, Clone)]
pub struct PinnedTrees {
    flists: PathBuf,
    trees: PathBuf,
    cache: Option<PathBuf>,
    owners: crate::Owners,
}

impl PinnedTrees {
    /// `.fl` files in `flists`, trees in `trees`, and no block cache (a tree on a
    /// quota'd volume would count its blocks twice).
    pub fn new(flists: impl Into<PathBuf>, trees: impl Into<PathBuf>) -> Self {
        PinnedTrees {
            flists: flists.into(),
            trees: trees.into(),
            cache: None,
            owners: crate::Owners::default(),
        }
    }

    /// New trees are unpacked with `owners` (a tree that exists keeps its owners).
    pub fn with_owners(mut self, owners: crate::Owners) -> Self {
        self.owners = owners;
        self
    }

    /// Verified blocks kept in `dir` and reused by the next unpack.
    pub fn with_cache(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cache = Some(dir.into());
        self
    }

    /// The directory the trees are in.
    pub fn trees(&self) -> &Path {
        &self.trees
    }

    /// Where the tree of `flist` is (or would be).
    pub fn tree_path(&self, flist: &FlistRef) -> PathBuf {
        self.trees.join(flist.sha256.to_hex())
    }

    /// The tree of `flist`, made if missing: the `.fl` fetched and verified
    /// ([`fetch_verified`]) into `flists/`, the stores reached only where `access`
    /// allows, every block verified, at most `max_bytes` of files. A tree that exists
    /// is complete (it is renamed into place only when it is, after a sync of its
    /// filesystem), so it is returned as it is: no store is needed after a reboot.
    pub fn ensure(
        &self,
        flist: &FlistRef,
        access: &DirAccess,
        max_bytes: u64,
    ) -> Result<PathBuf, Error> {
        let sha = flist.sha256.to_hex();
        let tree = self.trees.join(&sha);
        if tree.is_dir() {
            return Ok(tree);
        }
        let bytes = fetch_verified(flist, access)?;
        let fl_path = self.flists.join(format!("{sha}.fl"));
        write_atomic(&fl_path, &bytes).map_err(|e| Error::io(&fl_path, e))?;
        let parsed = Flist::from_bytes(&fl_path, &bytes)?;
        let router = Router::parse_in(&flist.stores, access)?;
        let fetcher = Fetcher::new(router, self.cache.clone().map(BlockCache::new));
        // Unpack beside the final place, then rename: a crash never leaves a half tree
        // that looks complete.
        let partial = self.trees.join(format!(".{sha}.partial"));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial).map_err(|e| Error::io(&partial, e))?;
        let opts = UnpackOptions {
            owners: self.owners,
            ..Default::default()
        };
        if let Err(e) = crate::unpack_bounded(&parsed, &fetcher, &partial, &opts, max_bytes) {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
        // Every file of the tree on the disk before the rename that says it is
        // complete: a power cut after an fsync of `trees` alone left `trees/<sha>` in
        // place with files missing (found by tests/e2e powercut: `/hello` ENOENT after
        // re-adoption). One syncfs of the filesystem, not an fsync per file.
        let trees_dir = fs::File::open(&self.trees).map_err(|e| Error::io(&self.trees, e))?;
        nix::unistd::syncfs(trees_dir.as_raw_fd())
            .map_err(|e| Error::io(&self.trees, std::io::Error::from(e)))?;
        fs::rename(&partial, &tree).map_err(|e| Error::io(&tree, e))?;
        trees_dir
            .sync_all()
            .map_err(|e| Error::io(&self.trees, e))?;
        Ok(tree)
    }

    /// Removes every tree but `keep` (trees of earlier versions of a flist).
    pub fn prune_except(&self, keep: &Path) {
        let keep = keep.file_name();
        for old in fs::read_dir(&self.trees).into_iter().flatten().flatten() {
            if Some(old.file_name().as_os_str()) != keep {
                let _ = fs::remove_dir_all(old.path());
            }
        }
    }
}

/// Replaces `path` with `bytes`: temp file, fsync, rename, fsync of the directory, so
/// a crash leaves the old content or the new, never a mix, and a completed call is on
/// the disk (the rename included).
fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(url: &str, sha256: Digest) -> FlistRef {
        FlistRef {
            url: url.to_string(),
            sha256,
            stores: Vec::new(),
            publishers: Vec::new(),
        }
    }

    #[test]
    fn an_unsupported_scheme_is_refused_for_good() {
        let e = fetch_url("ftp://example.org/x.fl", &DirAccess::Any).unwrap_err();
        assert!(matches!(
            e,
            Error::Fetch {
                reason: FetchError::Unsupported,
                ..
            }
        ));
        assert!(e.is_permanent());
        assert!(e.to_string().contains("only dir:// and http://"), "{e}");
    }

    #[test]
    fn a_dir_url_outside_the_roots_is_refused_for_good() {
        let roots = tempfile::tempdir().unwrap();
        let access = DirAccess::under([roots.path()]);
        let e = fetch_url("dir:///etc/hostname", &access).unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert!(e.to_string().contains("only under the store roots"), "{e}");
    }

    #[test]
    fn a_missing_file_may_come_later() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("dir://{}/absent.fl", dir.path().display());
        let e = fetch_url(&url, &DirAccess::Any).unwrap_err();
        assert!(!e.is_permanent(), "{e}");
    }

    #[test]
    fn bytes_that_are_not_the_pinned_ones_are_refused_and_nothing_is_unpacked() {
        let dir = tempfile::tempdir().unwrap();
        let fl = dir.path().join("x.fl");
        fs::write(&fl, b"not the pinned bytes").unwrap();
        let url = format!("dir://{}", fl.display());
        let pinned = Digest::of(b"the pinned bytes");
        let trees = PinnedTrees::new(dir.path().join("flists"), dir.path().join("trees"));
        let e = trees
            .ensure(&reference(&url, pinned), &DirAccess::Any, 1 << 20)
            .unwrap_err();
        assert!(matches!(e, Error::Pin { .. }), "{e}");
        assert!(e.is_permanent());
        assert!(e.to_string().contains("the contract pins"), "{e}");
        assert!(!dir.path().join("flists").exists());
        assert!(!dir.path().join("trees").exists());
    }

    #[test]
    fn write_atomic_replaces_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/f");
        write_atomic(&p, b"first, longer").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["f"], "no temp file left");
    }
}
