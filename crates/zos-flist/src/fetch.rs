//! Fetching with verification: cache first, then each route in turn. A block that fails
//! any check is logged, never cached, and the next route is tried.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::block::{decode, BlockRef};
use crate::cache::BlockCache;
use crate::error::{BlockError, Error};
use crate::store::Router;

/// Fetches and verifies blocks.
#[derive(Debug)]
pub struct Fetcher {
    /// The stores blocks are fetched from, by the first byte of their id.
    pub router: Router,
    /// Verified plaintexts kept on disk; `None`: every block comes from a store.
    pub cache: Option<BlockCache>,
    /// Blocks fetched from stores (not the cache), for reports and tests.
    pub fetched: std::sync::atomic::AtomicU64,
    /// A few recent plaintexts kept in memory: FUSE reads 128 KiB at a time, a block is
    /// 512 KiB, so without this a sequential read fetches each block four times.
    recent: Mutex<HashMap<[u8; 32], std::sync::Arc<Vec<u8>>>>,
    /// One lock per block being fetched: concurrent reads of one block (kernel readahead
    /// splits it in several requests) fetch it once.
    inflight: Mutex<HashMap<[u8; 32], std::sync::Arc<Mutex<()>>>>,
}

const RECENT: usize = 16;

impl Fetcher {
    /// A fetcher over `router`, reading and filling `cache` when there is one.
    pub fn new(router: Router, cache: Option<BlockCache>) -> Self {
        Fetcher {
            router,
            cache,
            fetched: Default::default(),
            recent: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
        }
    }

    /// Block `index` of `file`, verified, of exactly `len` bytes.
    pub fn block(
        &self,
        file: &str,
        index: usize,
        b: &BlockRef,
        len: usize,
    ) -> Result<Vec<u8>, Error> {
        self.block_inner(b, len).map_err(|source| {
            tracing::warn!(file, index, id = %b.id_hex(), error = %source, "block refused");
            Error::Block {
                file: file.to_string(),
                index,
                id: b.id_hex(),
                reason: source,
            }
        })
    }

    /// Like [`Fetcher::block`], keeping the plaintext in a small memory cache.
    pub(crate) fn block_shared(
        &self,
        file: &str,
        index: usize,
        b: &BlockRef,
        len: usize,
    ) -> Result<std::sync::Arc<Vec<u8>>, Error> {
        let cached = || {
            self.recent
                .lock()
                .expect("not poisoned")
                .get(&b.id)
                .filter(|p| p.len() == len)
                .cloned()
        };
        if let Some(p) = cached() {
            return Ok(p);
        }
        let gate = self
            .inflight
            .lock()
            .expect("not poisoned")
            .entry(b.id)
            .or_default()
            .clone();
        let result = {
            let _held = gate.lock().expect("not poisoned");
            // Whoever held the gate before us may have fetched it already.
            match cached() {
                Some(p) => Ok(p),
                None => self.block(file, index, b, len).map(|plain| {
                    let p = std::sync::Arc::new(plain);
                    let mut recent = self.recent.lock().expect("not poisoned");
                    if recent.len() >= RECENT {
                        recent.clear();
                    }
                    recent.insert(b.id, p.clone());
                    p
                }),
            }
        };
        self.inflight.lock().expect("not poisoned").remove(&b.id);
        result
    }

    fn block_inner(&self, b: &BlockRef, len: usize) -> Result<Vec<u8>, BlockError> {
        if let Some(cache) = &self.cache {
            if let Some(plain) = cache.get(b) {
                if plain.len() == len {
                    return Ok(plain);
                }
            }
        }
        let mut refused: Option<BlockError> = None;
        let mut reasons = Vec::new();
        let mut tried = false;
        for store in self.router.candidates(&b.id) {
            tried = true;
            let blob = match store.get(&b.id) {
                Ok(blob) => blob,
                Err(e) => {
                    tracing::debug!(store = store.url(), error = %e, "store miss");
                    reasons.push(e.to_string());
                    continue;
                }
            };
            self.fetched
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let checked = decode(b, &blob).and_then(|plain| {
                if plain.len() == len {
                    Ok(plain)
                } else {
                    Err(BlockError::WrongLength {
                        expected: len,
                        actual: plain.len(),
                    })
                }
            });
            match checked {
                Ok(plain) => {
                    if let Some(cache) = &self.cache {
                        if let Err(e) = cache.put(b, &plain) {
                            tracing::warn!(error = %e, "cannot write the block cache");
                        }
                    }
                    return Ok(plain);
                }
                Err(e) => {
                    tracing::warn!(store = store.url(), id = %b.id_hex(), error = %e,
                        "store served a bad block; trying the next route");
                    reasons.push(format!("{}: {e}", store.url()));
                    refused.get_or_insert(e);
                }
            }
        }
        if !tried {
            return Err(BlockError::NoRoute { first: b.id[0] });
        }
        // A store serving bad data is the reason that matters most; report it as such.
        Err(refused.unwrap_or(BlockError::AllRoutesFailed(reasons)))
    }
}

/// What [`verify_blocks`] checked.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Regular files in the flist.
    pub files: u64,
    /// Blocks fetched (or read from the cache) and verified.
    pub blocks: u64,
    /// Plaintext bytes those blocks hold.
    pub bytes: u64,
}

/// Fetches every block of every file and checks both hashes and the length; nothing is
/// written anywhere but the fetcher's cache (if it has one). `progress`, if any, hears
/// the plaintext bytes verified so far of the flist's file bytes (a block from the cache
/// counts like one from a store).
pub fn verify_blocks(
    flist: &crate::Flist,
    fetcher: &Fetcher,
    threads: usize,
    progress: Option<crate::Progress<'_>>,
) -> Result<VerifyReport, Error> {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let work: Vec<(usize, usize)> = flist
        .entries
        .iter()
        .enumerate()
        .flat_map(|(i, e)| (0..e.blocks.len()).map(move |b| (i, b)))
        .collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first: Mutex<Option<Error>> = Mutex::new(None);
    let (bytes, blocks) = flist.totals();
    let meter = crate::Meter::new(progress, bytes);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let Some(&(i, b)) = work.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        return;
                    };
                    let e = &flist.entries[i];
                    let len = e.block_len(b);
                    match fetcher.block(&flist.path_of(i), b, &e.blocks[b], len) {
                        Ok(_) => meter.add(len as u64),
                        Err(err) => {
                            failed.store(true, Ordering::Relaxed);
                            first.lock().expect("not poisoned").get_or_insert(err);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first.into_inner().expect("not poisoned") {
        return Err(e);
    }
    Ok(VerifyReport {
        files: flist
            .entries
            .iter()
            .filter(|e| e.kind == crate::EntryKind::File)
            .count() as u64,
        blocks,
        bytes,
    })
}
