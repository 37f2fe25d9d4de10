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
pub use unpack::{unpack, unpack_bounded, UnpackOptions, UnpackReport, DEFAULT_MAX_EXPANDED};

/// Files are cut in blocks of this many bytes (the last one may be shorter).
pub const BLOCK_SIZE: usize = 512 * 1024;
