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
    Format {
        /// The `.fl` file that was read.
        path: PathBuf,
        /// What in it was refused.
        reason: FormatError,
    },
    /// A block of a file could not be fetched from any route, or none verified.
    #[error("{file}: block {index} ({id}): {reason}")]
    Block {
        /// Path of the file inside the flist.
        file: String,
        /// Position of the block in the file, from 0.
        index: usize,
        /// Block id, hex.
        id: String,
        /// Why the block was refused or not found.
        reason: BlockError,
    },
    /// A block store could not be opened, read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The flist's signature is missing, malformed or not by a trusted publisher.
    #[error(transparent)]
    Sign(#[from] SignError),
    /// A flist's `.fl` or `.sig` could not be read from its URL ([`crate::pinned`]).
    #[error("fetching {url}: {reason}")]
    Fetch {
        /// The URL of the `.fl` or `.sig` that was asked for.
        url: String,
        /// Why it could not be read.
        reason: FetchError,
    },
    /// The `.fl` read is not the one its reference pins ([`crate::pinned`]).
    #[error("{url} has sha256 {actual}, the contract pins {pinned}")]
    Pin {
        /// Where the `.fl` was read from.
        url: String,
        /// SHA-256 of the bytes read, hex.
        actual: String,
        /// SHA-256 the reference pins, hex.
        pinned: String,
    },
    /// Extraction refused to go on (the destination is not ours to fill, or an entry
    /// would land outside it).
    #[error("unpack {path}: {reason}")]
    Unpack {
        /// The destination directory or the entry inside it.
        path: PathBuf,
        /// What was refused, for the operator.
        reason: String,
    },
    /// The flist expands to more bytes than the caller's bound (a repeated block costs
    /// one stored block and a full block on disk each time it is listed).
    #[error(
        "unpack {path}: the flist expands to {declared} bytes, more than the bound of {limit}"
    )]
    TooLarge {
        /// The destination directory.
        path: PathBuf,
        /// Bytes the flist expands to: the sum of its files' sizes, or, when the bound
        /// was crossed while writing, the bytes written by then.
        declared: u64,
        /// The caller's bound, in bytes.
        limit: u64,
    },
    /// Mount or overlay failure.
    #[error("mount {path}: {reason}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// What failed, for the operator.
        reason: String,
    },
    // The cause is part of the message (not a `source`) so it is printed once.
    /// A local file operation failed.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory operated on.
        path: PathBuf,
        /// The operating system's error.
        error: io::Error,
    },
    /// SQLite failed on a `.fl` database (opening, querying or writing it).
    #[error("{path}: sqlite: {error}")]
    Sql {
        /// The `.fl` database.
        path: PathBuf,
        /// SQLite's error.
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
    /// The file does not start with the SQLite header.
    #[error("not an SQLite database (bad header)")]
    NotSqlite,
    /// The file is shorter than the SQLite header, or than the pages the header declares.
    #[error("truncated: the header declares {expected} bytes, the file has {actual}")]
    Truncated {
        /// Bytes the file needs to hold (the header, or all its declared pages).
        expected: u64,
        /// Bytes the file has.
        actual: u64,
    },
    /// SQLite could not read the database (the text is SQLite's or ours).
    #[error("the database is corrupt or unreadable: {0}")]
    Corrupt(String),
    /// A table or column the flist format needs is absent (names which).
    #[error("missing table or column: {0}")]
    Schema(String),
    /// No inode has parent 0, so there is no root directory.
    #[error("no root inode (parent = 0)")]
    NoRoot,
    /// More than one inode claims to be the root.
    #[error("{count} root inodes (parent = 0); exactly one is allowed")]
    MultipleRoots {
        /// How many inodes have parent 0.
        count: usize,
    },
    /// The root is a file, link or device instead of a directory.
    #[error("the root inode {ino} is not a directory")]
    RootNotDir {
        /// The root inode.
        ino: u64,
    },
    /// A name that is not UTF-8 or could escape or confuse a path (`..`, `/`, NUL, ...).
    #[error("inode {ino}: name {name:?} is not allowed: {reason}")]
    BadName {
        /// The inode carrying the name.
        ino: u64,
        /// The refused name, as stored.
        name: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// Two entries of one directory have the same name.
    #[error("inode {ino}: a sibling already has the name {name:?} in directory {parent}")]
    DuplicateName {
        /// The second inode with the name.
        ino: u64,
        /// The directory both are in.
        parent: u64,
        /// The name they share.
        name: String,
    },
    /// An inode's parent is not in the flist.
    #[error("inode {ino}: parent {parent} does not exist")]
    MissingParent {
        /// The orphaned inode.
        ino: u64,
        /// The parent number it names.
        parent: u64,
    },
    /// An inode's parent is not a directory.
    #[error("inode {ino}: parent {parent} is not a directory")]
    ParentNotDir {
        /// The child inode.
        ino: u64,
        /// The parent that is not a directory.
        parent: u64,
    },
    /// Following parents from the inode never reaches the root.
    #[error("inode {ino} is not reachable from the root (parent cycle)")]
    Cycle {
        /// An inode on the cycle or below it.
        ino: u64,
    },
    /// The tree is deeper than the depth the library walks.
    #[error("inode {ino} is nested deeper than {limit} directories")]
    TooDeep {
        /// The first inode found too deep.
        ino: u64,
        /// The most nested directories allowed.
        limit: usize,
    },
    /// Two rows have the same inode number.
    #[error("inode {ino}: duplicate inode number")]
    DuplicateIno {
        /// The repeated number.
        ino: u64,
    },
    /// A numeric column does not fit its type (negative, too large, or not an integer:
    /// then `value` is -1).
    #[error("inode {ino}: column {column} has an out-of-range value {value}")]
    BadValue {
        /// The inode whose row has the value.
        ino: u64,
        /// The column's name (`mode`, `uid`, `size`, `mtime`, ...).
        column: &'static str,
        /// The value as stored.
        value: i64,
    },
    /// A file declares a size beyond what the library accepts for one file.
    #[error("inode {ino}: size {size} is absurd (limit {limit})")]
    AbsurdSize {
        /// The file's inode.
        ino: u64,
        /// Its declared size, in bytes.
        size: u64,
        /// The largest file size accepted, in bytes.
        limit: u64,
    },
    /// A file's block list does not have the length its size needs (one block per
    /// [`crate::BLOCK_SIZE`] bytes, rounded up).
    #[error("inode {ino}: size {size} needs {expected} blocks, the flist lists {actual}")]
    BlockCountMismatch {
        /// The file's inode.
        ino: u64,
        /// Its declared size, in bytes.
        size: u64,
        /// Blocks that size needs.
        expected: u64,
        /// Blocks the flist lists (so far, when too many are found while reading).
        actual: u64,
    },
    /// A directory, link or device has blocks.
    #[error("inode {ino}: blocks listed for an entry that is not a regular file")]
    BlocksOnNonFile {
        /// The entry with blocks.
        ino: u64,
    },
    /// Blocks name an inode that is not in the flist.
    #[error("blocks listed for inode {ino}, which does not exist")]
    OrphanBlocks {
        /// The inode number the blocks name.
        ino: u64,
    },
    /// A block's id or key is not 32 bytes.
    #[error("inode {ino}: block {index}: {column} is {len} bytes, expected 32")]
    BadBlockField {
        /// The file's inode.
        ino: u64,
        /// Position of the block in the file, from 0.
        index: usize,
        /// `id` or `key`.
        column: &'static str,
        /// Its length, in bytes.
        len: usize,
    },
    /// The mode's file-type bits name no kind of entry the library knows.
    #[error("inode {ino}: unknown file type in mode {mode:o}")]
    UnknownFileType {
        /// The entry's inode.
        ino: u64,
        /// Its full mode, type and permission bits.
        mode: u32,
    },
    /// A symlink has no target row.
    #[error("inode {ino}: symlink without a target (extra.data)")]
    MissingLinkTarget {
        /// The symlink's inode.
        ino: u64,
    },
    /// A symlink target is empty, longer than a path may be, or contains NUL.
    #[error("inode {ino}: symlink target is empty, too long or contains NUL")]
    BadLinkTarget {
        /// The symlink's inode.
        ino: u64,
    },
    /// The flist is larger than the library reads (bytes of the file, inodes, ...).
    #[error("too many {what}: {count} (limit {limit})")]
    TooMany {
        /// What was counted (`bytes`, `inodes`, ...).
        what: &'static str,
        /// How many were found (at least; counting may stop at the limit).
        count: u64,
        /// How many are accepted.
        limit: u64,
    },
    /// A route's first-byte range is not a sub-range of 0..=255.
    #[error("route {url:?}: range {start}..={end} is not within 0..=255")]
    BadRoute {
        /// First byte of block ids the route serves, as stored.
        start: i64,
        /// Last byte of block ids the route serves, as stored.
        end: i64,
        /// The store the route points to.
        url: String,
    },
    /// A lookup asked for a path the flist does not contain.
    #[error("path {0:?} is not in the flist")]
    NoSuchPath(String),
}

/// Why one fetched block was refused. A refused block is never cached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The blob's BLAKE2b-256 is not the id it was fetched by.
    #[error("ciphertext hash {actual} does not match the block id")]
    IdMismatch {
        /// BLAKE2b-256 of the blob received, hex.
        actual: String,
    },
    /// AES-256-GCM refused the blob under the block's key.
    #[error("AES-256-GCM authentication failed (wrong key or altered data)")]
    Decrypt,
    /// The decrypted data is not valid raw Snappy (the text is Snappy's error).
    #[error("snappy decompression failed: {0}")]
    Decompress(String),
    /// The plaintext's BLAKE2b-256 is not the block's key.
    #[error("plaintext hash {actual} does not match the block key")]
    KeyMismatch {
        /// BLAKE2b-256 of the plaintext obtained, hex.
        actual: String,
    },
    /// The plaintext is not as long as the block's place in its file.
    #[error("plaintext is {actual} bytes, its place in the file needs {expected}")]
    WrongLength {
        /// Bytes the file's size leaves for this block.
        expected: usize,
        /// Bytes the block decoded to.
        actual: usize,
    },
    /// The blob is longer than [`crate::block::MAX_CIPHERTEXT`]; refused before hashing.
    #[error("blob is {len} bytes, larger than any valid block")]
    TooLarge {
        /// Its length, in bytes.
        len: u64,
    },
    /// No route of the flist covers the block id's first byte.
    #[error("no route covers the block (first byte {first:02x})")]
    NoRoute {
        /// First byte of the block id.
        first: u8,
    },
    /// Every route was tried; one line per route saying why it did not serve.
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
    /// The URL's scheme is neither `dir://` nor `http://`.
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
    /// The file is larger than a `.fl` or `.sig` may be.
    #[error("larger than {limit} bytes")]
    TooLarge {
        /// The largest size accepted, in bytes.
        limit: u64,
    },
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
    /// The store URL does not parse or has an unsupported scheme.
    #[error("unsupported store url {0:?} (expected dir:///path, http://host/path or https://)")]
    BadUrl(String),
    /// The store answered that it does not have the block.
    #[error("{url}: block {id} not found")]
    NotFound {
        /// The store's URL.
        url: String,
        /// The block id, hex.
        id: String,
    },
    /// The store could not be reached or did not answer usefully (may pass later).
    #[error("{url}: {reason}")]
    Unavailable {
        /// The store's URL.
        url: String,
        /// What went wrong, for the operator.
        reason: String,
    },
    /// A write (pack's upload) to a store that only reads, such as `http://`.
    #[error("{url}: writing is not supported by this store")]
    ReadOnly {
        /// The store's URL.
        url: String,
    },
    /// A file operation in a `dir://` store failed.
    #[error("{url}: {path}: {error}")]
    Io {
        /// The store's URL.
        url: String,
        /// The file or directory operated on.
        path: PathBuf,
        /// The operating system's error.
        error: io::Error,
    },
    /// A `dir://` URL outside the directories the caller allows.
    #[error("{url}: dir:// paths are allowed only under the store roots ({roots})")]
    NotUnderRoot {
        /// The refused URL.
        url: String,
        /// The allowed roots, for the message.
        roots: String,
    },
    /// A `dir://` path that is not the kind of file it must be (a device, a FIFO...).
    #[error("{url}: {path} is {kind}, refused")]
    NotRegular {
        /// The URL asked for.
        url: String,
        /// The path found to be of the wrong kind.
        path: PathBuf,
        /// What it is instead (`a directory`, `a FIFO`, ...).
        kind: &'static str,
    },
    /// A symlink on the way to a `dir://` file: never followed.
    #[error("{url}: {path}: a symlink on the way, refused (links are not followed)")]
    Symlink {
        /// The URL asked for.
        url: String,
        /// The symlink met.
        path: PathBuf,
    },
    /// A `dir://` file larger than the caller reads.
    #[error("{url}: larger than {limit} bytes")]
    TooLarge {
        /// The URL asked for.
        url: String,
        /// The largest size accepted, in bytes.
        limit: u64,
    },
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
