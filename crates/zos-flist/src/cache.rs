//! The verified block cache: plaintext blocks, named by block id, written only after both
//! hashes checked, and re-checked against the key when read back (a disk can rot).

use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::block::{check_plain, BlockRef};
use crate::BLOCK_SIZE;

/// A directory of verified plaintext blocks: `<root>/<hex[0:2]>/<hex of id>`.
#[derive(Debug, Clone)]
pub struct BlockCache {
    root: PathBuf,
}

/// Temp-name counter shared by every cache in the process (with the pid in the name, two
/// writers never share a temp file, even through two `BlockCache`s on one directory).
static SEQ: AtomicU64 = AtomicU64::new(0);

impl BlockCache {
    /// A cache rooted at `root`; nothing is created until a block is stored.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        BlockCache { root: root.into() }
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the plaintext of `b` is (or would be) cached.
    pub fn path(&self, b: &BlockRef) -> PathBuf {
        let hex = b.id_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    /// A cached plaintext, if present and still matching its key. A rotten entry is
    /// removed so that it is fetched again.
    pub fn get(&self, b: &BlockRef) -> Option<Vec<u8>> {
        let path = self.path(b);
        let mut buf = Vec::new();
        match std::fs::File::open(&path) {
            Ok(f) => {
                if let Err(e) = f.take(BLOCK_SIZE as u64 + 1).read_to_end(&mut buf) {
                    tracing::warn!(path = %path.display(), error = %e, "cache read failed");
                    return None;
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cache open failed");
                return None;
            }
        }
        if buf.len() > BLOCK_SIZE || check_plain(b, &buf).is_err() {
            tracing::warn!(path = %path.display(), "cached block does not match its key; dropping it");
            let _ = std::fs::remove_file(&path);
            return None;
        }
        Some(buf)
    }

    /// Stores a plaintext that the caller has verified: temp file, rename, so a reader
    /// never sees half a block. No fsync: a power cut may leave an entry empty or torn
    /// under its name, and [`BlockCache::get`] verifies every entry against its key on
    /// each read, drops a bad one and reports a miss, so the block is fetched again. An
    /// fsync per block doubled the time of unpacking small files (docs/benchmarks.md).
    pub fn put(&self, b: &BlockRef, plain: &[u8]) -> std::io::Result<()> {
        let path = self.path(b);
        let dir = path.parent().expect("cache path has a parent");
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(plain)?;
            std::fs::rename(&tmp, &path)
        })();
        if res.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        res
    }

    /// Every file in the cache (for tests and `verify`): (path, bytes).
    pub fn entries(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.root) else {
            return out;
        };
        for d in dirs.flatten() {
            if let Ok(files) = std::fs::read_dir(d.path()) {
                out.extend(files.flatten().map(|f| f.path()));
            }
        }
        out
    }
}
