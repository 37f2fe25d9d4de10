//! rfs-compatible `.fl` flists: pack, verify, fetch, cache, unpack, mount, signatures,
//! and a contract's pinned flist fetched, checked and unpacked ([`pinned`]).
//!
//! A flist is an SQLite file describing a directory tree (see `docs/flist-format.md`);
//! file contents live in a content-addressed block store. Everything read from a flist or
//! a store is untrusted: the metadata is validated as a whole when it is opened
//! ([`Flist::open`]), and every block is checked against both of its hashes before it is
//! used or cached ([`block::decode`]).

pub mod block;
pub mod cache;
pub mod error;
pub mod fetch;
pub mod meta;
pub mod mount;
pub mod overlay;
pub mod pack;
pub mod pinned;
pub mod sign;
pub mod store;
pub mod unpack;

pub use cache::BlockCache;
pub use error::{BlockError, Error, FetchError, FormatError, StoreError};
pub use fetch::{verify_blocks, Fetcher, VerifyReport};
pub use meta::{Entry, EntryKind, Flist};
pub use mount::{mount, mount_foreground, MountOptions, MountedFlist};
pub use overlay::Overlay;
pub use pack::{pack, PackOptions, PackReport};
pub use pinned::{fetch_url, fetch_verified, PinnedTrees};
pub use sign::{open_trusted, sign_file, FlistSignature, SignError, Trust};
pub use store::{read_dir_url, DirAccess, Route, Router, StoreUrl};
pub use unpack::{
    unpack, unpack_bounded, Owners, UnpackOptions, UnpackReport, DEFAULT_MAX_EXPANDED,
};

/// Files are cut in blocks of this many bytes (the last one may be shorter).
pub const BLOCK_SIZE: usize = 512 * 1024;

/// A byte progress callback: `(done, total)`, called after each block is stored
/// ([`pack`]), verified ([`verify_blocks`]) or written ([`unpack`]). Calls come one at a
/// time, `done` increasing; it ends at `total` when every block was handled and the
/// files did not change size meanwhile (pack reads what is there, not what was listed).
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// Counts bytes done for an optional [`Progress`]: with `None` nothing is counted and
/// nothing locked, so a caller without a bar pays nothing per block.
pub(crate) struct Meter<'a> {
    progress: Option<Progress<'a>>,
    total: u64,
    done: std::sync::Mutex<u64>,
}

impl<'a> Meter<'a> {
    pub(crate) fn new(progress: Option<Progress<'a>>, total: u64) -> Self {
        Meter {
            progress,
            total,
            done: std::sync::Mutex::new(0),
        }
    }

    /// `n` more bytes done. The callback runs under the lock: workers finishing blocks
    /// at once report in order, never a smaller `done` after a larger one.
    pub(crate) fn add(&self, n: u64) {
        if let Some(p) = self.progress {
            let mut done = self.done.lock().expect("not poisoned");
            *done = done.saturating_add(n);
            p(*done, self.total);
        }
    }
}
