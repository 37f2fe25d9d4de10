//! Typed errors. Every refusal names what was refused and why, so that an operator (or a
//! node reporting to the notary) can tell a bad publisher from a bad store from a bug.

use std::io;
use std::path::PathBuf;

pub use crate::sign::SignError;

/// Everything the library can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The `.fl` metadata is malformed or hostile.
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: FormatError },
    /// A block of a file could not be fetched from any route, or none verified.
    #[error("{file}: block {index} ({id}): {reason}")]
    Block {
        /// Path of the file inside the flist.
        file: String,
        /// Position of the block in the file, from 0.
        index: usize,
        /// Block id, hex.
        id: String,
        reason: BlockError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sign(#[from] SignError),
    /// A flist's `.fl` or `.sig` could not be read from its URL ([`crate::pinned`]).
    #[error("fetching {url}: {reason}")]
    Fetch { url: String, reason: FetchError },
    /// The `.fl` read is not the one its reference pins ([`crate::pinned`]).
    #[error("{url} has sha256 {actual}, the contract pins {pinned}")]
    Pin {
        url: String,
        actual: String,
        pinned: String,
    },
    /// Extraction refused to go on (the destination is not ours to fill, or an entry
    /// would land outside it).
    #[error("unpack {path}: {reason}")]
    Unpack { path: PathBuf, reason: String },
    /// The flist expands to more bytes than the caller's bound (a repeated block costs
    /// one stored block and a full block on disk each time it is listed).
    #[error(
        "unpack {path}: the flist expands to {declared} bytes, more than the bound of {limit}"
    )]
    TooLarge {
        path: PathBuf,
        declared: u64,
        limit: u64,
    },
    /// Mount or overlay failure.
    #[error("mount {path}: {reason}")]
    Mount { path: PathBuf, reason: String },
    // The cause is part of the message (not a `source`) so it is printed once.
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}: sqlite: {error}")]
    Sql {
        path: PathBuf,
        error: rusqlite::Error,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            error: source,
        }
    }

    /// The block-level reason, when this is a block failure.
    pub fn block_error(&self) -> Option<&BlockError> {
        match self {
            Error::Block { reason, .. } => Some(reason),
            _ => None,
        }
    }

    /// True when trying again cannot help: the flist, its signature or its size is
    /// refused, a store served bad data, or a store URL is not allowed. False for what
    /// may pass later (an unreachable store, a full disk).
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Format { .. } | Error::Sign(_) | Error::TooLarge { .. } | Error::Pin { .. } => {
                true
            }
            Error::Block { reason, .. } => reason.is_bad_data(),
            Error::Store(e) => e.is_permanent(),
            Error::Fetch { reason, .. } => reason.is_permanent(),
            _ => false,
        }
    }

    /// The metadata-level reason, when this is a format refusal.
    pub fn format_error(&self) -> Option<&FormatError> {
        match self {
            Error::Format { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// Why the metadata of a flist was refused. `ino` values are the flist's own numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("not an SQLite database (bad header)")]
    NotSqlite,
    #[error("truncated: the header declares {expected} bytes, the file has {actual}")]
    Truncated { expected: u64, actual: u64 },
    #[error("the database is corrupt or unreadable: {0}")]
    Corrupt(String),
    #[error("missing table or column: {0}")]
    Schema(String),
    #[error("no root inode (parent = 0)")]
    NoRoot,
    #[error("{count} root inodes (parent = 0); exactly one is allowed")]
    MultipleRoots { count: usize },
    #[error("the root inode {ino} is not a directory")]
    RootNotDir { ino: u64 },
    #[error("inode {ino}: name {name:?} is not allowed: {reason}")]
    BadName {
        ino: u64,
        name: String,
        reason: &'static str,
    },
    #[error("inode {ino}: a sibling already has the name {name:?} in directory {parent}")]
    DuplicateName { ino: u64, parent: u64, name: String },
    #[error("inode {ino}: parent {parent} does not exist")]
    MissingParent { ino: u64, parent: u64 },
    #[error("inode {ino}: parent {parent} is not a directory")]
    ParentNotDir { ino: u64, parent: u64 },
    #[error("inode {ino} is not reachable from the root (parent cycle)")]
    Cycle { ino: u64 },
    #[error("inode {ino} is nested deeper than {limit} directories")]
    TooDeep { ino: u64, limit: usize },
    #[error("inode {ino}: duplicate inode number")]
    DuplicateIno { ino: u64 },
    #[error("inode {ino}: column {column} has an out-of-range value {value}")]
    BadValue {
        ino: u64,
        column: &'static str,
        value: i64,
    },
    #[error("inode {ino}: size {size} is absurd (limit {limit})")]
    AbsurdSize { ino: u64, size: u64, limit: u64 },
    #[error("inode {ino}: size {size} needs {expected} blocks, the flist lists {actual}")]
    BlockCountMismatch {
        ino: u64,
        size: u64,
        expected: u64,
        actual: u64,
    },
    #[error("inode {ino}: blocks listed for an entry that is not a regular file")]
    BlocksOnNonFile { ino: u64 },
    #[error("blocks listed for inode {ino}, which does not exist")]
    OrphanBlocks { ino: u64 },
    #[error("inode {ino}: block {index}: {column} is {len} bytes, expected 32")]
    BadBlockField {
        ino: u64,
        index: usize,
        column: &'static str,
        len: usize,
    },
    #[error("inode {ino}: unknown file type in mode {mode:o}")]
    UnknownFileType { ino: u64, mode: u32 },
    #[error("inode {ino}: symlink without a target (extra.data)")]
    MissingLinkTarget { ino: u64 },
    #[error("inode {ino}: symlink target is empty, too long or contains NUL")]
    BadLinkTarget { ino: u64 },
    #[error("too many {what}: {count} (limit {limit})")]
    TooMany {
        what: &'static str,
        count: u64,
        limit: u64,
    },
    #[error("route {url:?}: range {start}..={end} is not within 0..=255")]
    BadRoute { start: i64, end: i64, url: String },
    #[error("path {0:?} is not in the flist")]
    NoSuchPath(String),
}

/// Why one fetched block was refused. A refused block is never cached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("ciphertext hash {actual} does not match the block id")]
    IdMismatch { actual: String },
    #[error("AES-256-GCM authentication failed (wrong key or altered data)")]
    Decrypt,
    #[error("snappy decompression failed: {0}")]
    Decompress(String),
    #[error("plaintext hash {actual} does not match the block key")]
    KeyMismatch { actual: String },
    #[error("plaintext is {actual} bytes, its place in the file needs {expected}")]
    WrongLength { expected: usize, actual: usize },
    #[error("blob is {len} bytes, larger than any valid block")]
    TooLarge { len: u64 },
    #[error("no route covers the block (first byte {first:02x})")]
    NoRoute { first: u8 },
    #[error("no route could serve a valid block: {}", .0.join("; "))]
    AllRoutesFailed(Vec<String>),
}

impl BlockError {
    /// True when a store served data that failed verification (it will fail again from
    /// that store); false when the block was merely unreachable (may succeed later).
    pub fn is_bad_data(&self) -> bool {
        !matches!(
            self,
            BlockError::NoRoute { .. } | BlockError::AllRoutesFailed(_)
        )
    }
}

/// Why a flist's own file (`.fl`, `.sig`) could not be read from its URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("only dir:// and http:// flist URLs are supported")]
    Unsupported,
    /// A `dir://` URL refused or unreadable.
    #[error(transparent)]
    Dir(StoreError),
    /// The server answered, but not with the file.
    #[error("HTTP {0}")]
    Status(u16),
    /// The server could not be reached or the transfer broke.
    #[error("{0}")]
    Transport(String),
    #[error("larger than {limit} bytes")]
    TooLarge { limit: u64 },
}

impl FetchError {
    /// True when asking again cannot help: a URL that is not allowed or not
    /// supported, a file too large. False for a server that is down or does not have
    /// the file yet.
    pub fn is_permanent(&self) -> bool {
        match self {
            FetchError::Unsupported | FetchError::TooLarge { .. } => true,
            FetchError::Dir(e) => e.is_permanent(),
            FetchError::Status(_) | FetchError::Transport(_) => false,
        }
    }
}

/// A store could not be opened, read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported store url {0:?} (expected dir:///path, http://host/path or https://)")]
    BadUrl(String),
    #[error("{url}: block {id} not found")]
    NotFound { url: String, id: String },
    #[error("{url}: {reason}")]
    Unavailable { url: String, reason: String },
    #[error("{url}: writing is not supported by this store")]
    ReadOnly { url: String },
    #[error("{url}: {path}: {error}")]
    Io {
        url: String,
        path: PathBuf,
        error: io::Error,
    },
    /// A `dir://` URL outside the directories the caller allows.
    #[error("{url}: dir:// paths are allowed only under the store roots ({roots})")]
    NotUnderRoot { url: String, roots: String },
    /// A `dir://` path that is not the kind of file it must be (a device, a FIFO...).
    #[error("{url}: {path} is {kind}, refused")]
    NotRegular {
        url: String,
        path: PathBuf,
        kind: &'static str,
    },
    /// A symlink on the way to a `dir://` file: never followed.
    #[error("{url}: {path}: a symlink on the way, refused (links are not followed)")]
    Symlink { url: String, path: PathBuf },
    #[error("{url}: larger than {limit} bytes")]
    TooLarge { url: String, limit: u64 },
}

impl StoreError {
    /// True when trying again cannot help: a URL that is malformed or not allowed, a
    /// file that is not a regular file or too large. False for what may pass later.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            StoreError::BadUrl(_)
                | StoreError::NotUnderRoot { .. }
                | StoreError::NotRegular { .. }
                | StoreError::Symlink { .. }
                | StoreError::TooLarge { .. }
        )
    }
}
