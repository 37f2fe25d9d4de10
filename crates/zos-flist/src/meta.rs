//! The `.fl` metadata: an SQLite database in the rfs v2 layout.
//!
//! Reading loads and validates the whole tree at once, from the very bytes whose sha256 the
//! signature covers (the file is read into memory once and SQLite opens that copy), so
//! nothing can change between the check and the use. Writing produces the same tables,
//! column types and root conventions as upstream rfs (root inode 1, parent 0, name "/").

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::Connection;
use sha2::{Digest as _, Sha256};

use crate::block::BlockRef;
use crate::error::{Error, FormatError};
use crate::store::Route;
use crate::BLOCK_SIZE;

/// Refuse `.fl` files larger than this: metadata of a huge rootfs is tens of MiB.
pub const MAX_FLIST_BYTES: u64 = 1 << 30;
/// Refuse flists with more entries than this.
pub const MAX_ENTRIES: u64 = 8_000_000;
/// Refuse regular files larger than this (1 TiB).
pub const MAX_FILE_SIZE: u64 = 1 << 40;
/// Linux PATH_MAX minus the NUL.
pub const MAX_LINK_TARGET: usize = 4095;
/// Linux NAME_MAX.
pub const MAX_NAME: usize = 255;
/// Refuse trees nested deeper than this (extraction recurses per level).
pub const MAX_DEPTH: usize = 1024;

/// The DDL, column for column what rfs creates (types matter: rfs decodes by them).
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS inode (
    ino INTEGER PRIMARY KEY AUTOINCREMENT,
    parent INTEGER,
    name VARCHAR(255),
    size INTEGER,
    uid INTEGER,
    gid INTEGER,
    mode INTEGER,
    rdev INTEGER,
    ctime INTEGER,
    mtime INTEGER
);
CREATE INDEX IF NOT EXISTS parents ON inode (parent);
CREATE INDEX IF NOT EXISTS names ON inode (name);
CREATE TABLE IF NOT EXISTS extra (
    ino INTEGER PRIMARY KEY,
    data VARCHAR(4096)
);
CREATE TABLE IF NOT EXISTS block (
    ino INTEGER,
    id VARCHAR(32),
    key VARCHAR(32)
);
CREATE INDEX IF NOT EXISTS block_ino ON block (ino);
CREATE TABLE IF NOT EXISTS tag (
    key VARCHAR(10) PRIMARY KEY,
    value VARCHAR(255)
);
CREATE TABLE IF NOT EXISTS route (
    start integer,
    end integer,
    url VARCHAR(2048)
);
";

/// The type of an entry, from the `S_IFMT` bits of its mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file, its content in blocks.
    File,
    /// A directory.
    Dir,
    /// A symbolic link, its target in `extra`.
    Symlink,
    /// A named pipe.
    Fifo,
    /// A character device (`rdev` says which).
    CharDevice,
    /// A block device (`rdev` says which).
    BlockDevice,
    /// A unix socket.
    Socket,
}

impl EntryKind {
    /// The kind the `S_IFMT` bits of `mode` name; `None` for bits that name none.
    pub fn from_mode(mode: u32) -> Option<Self> {
        Some(match mode & libc::S_IFMT {
            libc::S_IFREG => EntryKind::File,
            libc::S_IFDIR => EntryKind::Dir,
            libc::S_IFLNK => EntryKind::Symlink,
            libc::S_IFIFO => EntryKind::Fifo,
            libc::S_IFCHR => EntryKind::CharDevice,
            libc::S_IFBLK => EntryKind::BlockDevice,
            libc::S_IFSOCK => EntryKind::Socket,
            _ => return None,
        })
    }

    /// The `ls -l` type letter.
    pub fn letter(self) -> char {
        match self {
            EntryKind::File => '-',
            EntryKind::Dir => 'd',
            EntryKind::Symlink => 'l',
            EntryKind::Fifo => 'p',
            EntryKind::CharDevice => 'c',
            EntryKind::BlockDevice => 'b',
            EntryKind::Socket => 's',
        }
    }
}

/// One validated entry. Indices (`parent`, `children`) point into [`Flist::entries`];
/// the root is index 0 and its own parent.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The flist's inode number.
    pub ino: u64,
    /// Index of the parent directory (the root's is 0, itself).
    pub parent: usize,
    /// The name in its directory (the root's is not checked: `/` as rfs writes it).
    pub name: String,
    /// What it is, from the mode.
    pub kind: EntryKind,
    /// Full mode: type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Bytes of a regular file.
    pub size: u64,
    /// Device number of a device node.
    pub rdev: u64,
    /// Change time, seconds since the epoch.
    pub ctime: i64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Symlink target.
    pub target: Option<Vec<u8>>,
    /// Blocks of a regular file, in file order.
    pub blocks: Vec<BlockRef>,
    /// Child indices, sorted by name (directories only).
    pub children: Vec<usize>,
}

impl Entry {
    /// Permission bits (including setuid, setgid, sticky).
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }

    /// Length of block `index` of this file: full blocks, then the remainder.
    pub fn block_len(&self, index: usize) -> usize {
        let start = index as u64 * BLOCK_SIZE as u64;
        (self.size.saturating_sub(start)).min(BLOCK_SIZE as u64) as usize
    }
}

/// A parsed, validated flist.
#[derive(Debug, Clone)]
pub struct Flist {
    /// Where it was read from (for messages).
    pub path: PathBuf,
    /// sha256 of the exact bytes parsed.
    pub sha256: [u8; 32],
    /// Every entry, the root first (see [`Entry`]).
    pub entries: Vec<Entry>,
    /// Where its blocks are stored, by id range (the `route` table; may be empty).
    pub routes: Vec<Route>,
    /// The `tag` table's key/value pairs, by key.
    pub tags: Vec<(String, String)>,
}

impl Flist {
    /// Reads and validates a `.fl` file.
    pub fn open(path: &Path) -> Result<Flist, Error> {
        let bytes = read_limited(path)?;
        Self::from_bytes(path, &bytes)
    }

    /// Parses and validates `.fl` bytes; `path` is only used in messages.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Flist, Error> {
        let fmt = |reason| Error::Format {
            path: path.to_path_buf(),
            reason,
        };
        check_header(bytes).map_err(fmt)?;
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        let mut conn = Connection::open_in_memory().map_err(|e| Error::Sql {
            path: path.to_path_buf(),
            error: e,
        })?;
        conn.deserialize_read_exact(rusqlite::MAIN_DB, bytes, bytes.len(), true)
            .map_err(|e| fmt(FormatError::Corrupt(e.to_string())))?;
        let (entries, routes, tags) = load(&conn).map_err(fmt)?;
        Ok(Flist {
            path: path.to_path_buf(),
            sha256,
            entries,
            routes,
            tags,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Entry {
        &self.entries[0]
    }

    /// The path of an entry inside the flist, `/` for the root.
    pub fn path_of(&self, mut idx: usize) -> String {
        let mut parts = Vec::new();
        while idx != 0 {
            parts.push(self.entries[idx].name.as_str());
            idx = self.entries[idx].parent;
        }
        if parts.is_empty() {
            return "/".to_string();
        }
        parts.reverse();
        format!("/{}", parts.join("/"))
    }

    /// The child of directory `dir` called `name`.
    pub fn child(&self, dir: usize, name: &str) -> Option<usize> {
        let children = &self.entries[dir].children;
        children
            .binary_search_by(|&c| self.entries[c].name.as_str().cmp(name))
            .ok()
            .map(|i| children[i])
    }

    /// Resolves a path inside the flist (no symlinks followed; `.` and empty parts skipped).
    pub fn lookup(&self, path: &str) -> Result<usize, Error> {
        let mut idx = 0;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            idx = self.child(idx, part).ok_or_else(|| Error::Format {
                path: self.path.clone(),
                reason: FormatError::NoSuchPath(path.to_string()),
            })?;
        }
        Ok(idx)
    }

    /// Total bytes of regular files and number of blocks.
    pub fn totals(&self) -> (u64, u64) {
        self.entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .fold((0, 0), |(b, n), e| (b + e.size, n + e.blocks.len() as u64))
    }
}

fn read_limited(path: &Path) -> Result<Vec<u8>, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    file.take(MAX_FLIST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_FLIST_BYTES {
        return Err(Error::Format {
            path: path.to_path_buf(),
            reason: FormatError::TooMany {
                what: "bytes",
                count: bytes.len() as u64,
                limit: MAX_FLIST_BYTES,
            },
        });
    }
    Ok(bytes)
}

/// The SQLite header: magic, page size (offset 16), page count (offset 28). Checked by hand
/// so that garbage and truncation get their own errors instead of "malformed".
fn check_header(bytes: &[u8]) -> Result<(), FormatError> {
    const MAGIC: &[u8; 16] = b"SQLite format 3\0";
    if bytes.len() < 16 || &bytes[..16] != MAGIC {
        // A file cut inside the magic is still "not SQLite": nothing identifies it.
        return Err(FormatError::NotSqlite);
    }
    if bytes.len() < 100 {
        return Err(FormatError::Truncated {
            expected: 100,
            actual: bytes.len() as u64,
        });
    }
    let raw = u16::from_be_bytes([bytes[16], bytes[17]]) as u64;
    let page_size = if raw == 1 { 65536 } else { raw };
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(FormatError::Corrupt(format!("page size {raw}")));
    }
    let pages = u32::from_be_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]) as u64;
    let expected = pages * page_size;
    if (bytes.len() as u64) < expected || bytes.len() as u64 % page_size != 0 {
        return Err(FormatError::Truncated {
            expected: expected.max(page_size),
            actual: bytes.len() as u64,
        });
    }
    Ok(())
}

type Loaded = (Vec<Entry>, Vec<Route>, Vec<(String, String)>);

fn sql(e: rusqlite::Error) -> FormatError {
    let text = e.to_string();
    if text.contains("no such table") || text.contains("no such column") {
        FormatError::Schema(text)
    } else {
        FormatError::Corrupt(text)
    }
}

fn int(v: ValueRef<'_>, ino: u64, column: &'static str) -> Result<i64, FormatError> {
    match v {
        ValueRef::Integer(i) => Ok(i),
        // Older writers leave some columns NULL; treat as 0 like rfs's decoder would not,
        // but harmlessly: they are metadata, not addresses.
        ValueRef::Null => Ok(0),
        _ => Err(FormatError::BadValue {
            ino,
            column,
            value: -1,
        }),
    }
}

fn ranged<T: TryFrom<i64>>(v: i64, ino: u64, column: &'static str) -> Result<T, FormatError> {
    T::try_from(v).map_err(|_| FormatError::BadValue {
        ino,
        column,
        value: v,
    })
}

fn bytes_of(v: ValueRef<'_>) -> Option<&[u8]> {
    match v {
        ValueRef::Text(b) | ValueRef::Blob(b) => Some(b),
        _ => None,
    }
}

/// Why a name is refused, if it is.
pub fn bad_name(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty")
    } else if name == "." || name == ".." {
        Some("a dot entry")
    } else if name.contains('/') {
        Some("contains '/'")
    } else if name.contains('\0') {
        Some("contains NUL")
    } else if name.len() > MAX_NAME {
        Some("longer than 255 bytes")
    } else {
        None
    }
}

/// Loads and validates the whole tree, in named steps; each step only sees rows the steps
/// before it accepted, so the order of the steps is the order of the checks.
fn load(conn: &Connection) -> Result<Loaded, FormatError> {
    check_schema(conn)?;
    let (mut entries, mut parents) = read_inodes(conn)?;
    place_root(&mut entries, &mut parents)?;
    let by_ino = index_by_ino(&entries)?;
    link_parents(&mut entries, &parents, &by_ino)?;
    check_reachable(&entries)?;
    sort_children(&mut entries);
    load_link_targets(conn, &mut entries, &by_ino)?;
    load_blocks(conn, &mut entries, &by_ino)?;
    let routes = load_routes(conn)?;
    let tags = load_tags(conn)?;
    Ok((entries, routes, tags))
}

/// The schema is untrusted too: no functions with side effects from it, the tables we read
/// must be tables (a hostile file could make `inode` an expensive view), and the inode
/// count the b-tree claims must be within [`MAX_ENTRIES`].
fn check_schema(conn: &Connection) -> Result<(), FormatError> {
    conn.execute_batch("PRAGMA trusted_schema = OFF")
        .map_err(sql)?;
    for t in ["inode", "extra", "block"] {
        if !table_exists(conn, t)? {
            return Err(FormatError::Schema(format!("no table {t}")));
        }
    }
    let count: i64 = conn
        .query_row("SELECT count(*) FROM inode", [], |r| r.get(0))
        .map_err(sql)?;
    if count as u64 > MAX_ENTRIES {
        return Err(FormatError::TooMany {
            what: "inodes",
            count: count as u64,
            limit: MAX_ENTRIES,
        });
    }
    Ok(())
}

/// Pass 1: the inode rows, each checked on its own, with their parents' inode numbers (not
/// yet resolved: `Entry::parent` is 0 until [`link_parents`]). Memory grows with the rows
/// actually read: `count(*)` adds up what the b-tree pages claim, which a hostile file
/// inflates.
fn read_inodes(conn: &Connection) -> Result<(Vec<Entry>, Vec<u64>), FormatError> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut parents: Vec<u64> = Vec::new();
    let mut stmt = conn
        .prepare(
            "SELECT ino, parent, name, size, uid, gid, mode, rdev, ctime, mtime \
             FROM inode ORDER BY ino",
        )
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        if entries.len() as u64 >= MAX_ENTRIES {
            return Err(FormatError::TooMany {
                what: "inodes",
                count: entries.len() as u64 + 1,
                limit: MAX_ENTRIES,
            });
        }
        let (entry, parent) = inode_row(row)?;
        parents.push(parent);
        entries.push(entry);
    }
    Ok((entries, parents))
}

/// One inode row: its entry (parent unresolved) and its parent's inode number.
fn inode_row(row: &rusqlite::Row<'_>) -> Result<(Entry, u64), FormatError> {
    let g = |i: usize| row.get_ref(i).map_err(sql);
    let ino_raw = int(g(0)?, 0, "ino")?;
    let ino: u64 = ranged(ino_raw, 0, "ino")?;
    let parent: u64 = ranged(int(g(1)?, ino, "parent")?, ino, "parent")?;
    let name = match bytes_of(g(2)?) {
        Some(b) => String::from_utf8(b.to_vec()).map_err(|_| FormatError::BadName {
            ino,
            name: String::from_utf8_lossy(b).into_owned(),
            reason: "not UTF-8",
        })?,
        None => String::new(),
    };
    let size_raw = int(g(3)?, ino, "size")?;
    let size: u64 = ranged(size_raw, ino, "size")?;
    let uid: u32 = ranged(int(g(4)?, ino, "uid")?, ino, "uid")?;
    let gid: u32 = ranged(int(g(5)?, ino, "gid")?, ino, "gid")?;
    let mode: u32 = ranged(int(g(6)?, ino, "mode")?, ino, "mode")?;
    let rdev: u64 = ranged(int(g(7)?, ino, "rdev")?, ino, "rdev")?;
    let ctime = int(g(8)?, ino, "ctime")?;
    let mtime = int(g(9)?, ino, "mtime")?;
    let kind = EntryKind::from_mode(mode).ok_or(FormatError::UnknownFileType { ino, mode })?;
    if kind == EntryKind::File && size > MAX_FILE_SIZE {
        return Err(FormatError::AbsurdSize {
            ino,
            size,
            limit: MAX_FILE_SIZE,
        });
    }
    let entry = Entry {
        ino,
        parent: 0,
        name,
        kind,
        mode,
        uid,
        gid,
        size,
        rdev,
        ctime,
        mtime,
        target: None,
        blocks: Vec::new(),
        children: Vec::new(),
    };
    Ok((entry, parent))
}

/// The root: exactly one entry with parent 0, a directory. It goes to index 0 (`parents`
/// moves with it).
fn place_root(entries: &mut [Entry], parents: &mut [u64]) -> Result<(), FormatError> {
    let roots: Vec<usize> = (0..entries.len()).filter(|&i| parents[i] == 0).collect();
    match roots.len() {
        0 => return Err(FormatError::NoRoot),
        1 => {}
        count => return Err(FormatError::MultipleRoots { count }),
    }
    entries.swap(0, roots[0]);
    parents.swap(0, roots[0]);
    if entries[0].kind != EntryKind::Dir {
        return Err(FormatError::RootNotDir {
            ino: entries[0].ino,
        });
    }
    Ok(())
}

/// Inode number → index, refusing a number used twice.
fn index_by_ino(entries: &[Entry]) -> Result<HashMap<u64, usize>, FormatError> {
    let mut by_ino: HashMap<u64, usize> = HashMap::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        if by_ino.insert(e.ino, i).is_some() {
            return Err(FormatError::DuplicateIno { ino: e.ino });
        }
    }
    Ok(by_ino)
}

/// Pass 2: names and parents. Every non-root entry gets a valid name, an existing directory
/// as its parent and no sibling of the same name; then the parent and children indices are
/// filled in.
fn link_parents(
    entries: &mut [Entry],
    parents: &[u64],
    by_ino: &HashMap<u64, usize>,
) -> Result<(), FormatError> {
    let mut seen: HashSet<(usize, &str)> = HashSet::with_capacity(entries.len());
    let mut links: Vec<usize> = vec![0; entries.len()];
    for i in 1..entries.len() {
        let e = &entries[i];
        if let Some(reason) = bad_name(&e.name) {
            return Err(FormatError::BadName {
                ino: e.ino,
                name: e.name.clone(),
                reason,
            });
        }
        let p = *by_ino.get(&parents[i]).ok_or(FormatError::MissingParent {
            ino: e.ino,
            parent: parents[i],
        })?;
        if entries[p].kind != EntryKind::Dir {
            return Err(FormatError::ParentNotDir {
                ino: e.ino,
                parent: parents[i],
            });
        }
        if !seen.insert((p, e.name.as_str())) {
            return Err(FormatError::DuplicateName {
                ino: e.ino,
                parent: parents[i],
                name: e.name.clone(),
            });
        }
        links[i] = p;
    }
    drop(seen);
    for (i, &p) in links.iter().enumerate().skip(1) {
        entries[i].parent = p;
        entries[p].children.push(i);
    }
    Ok(())
}

/// Pass 3: everything must hang from the root, at most [`MAX_DEPTH`] levels down; what does
/// not is in a parent cycle.
fn check_reachable(entries: &[Entry]) -> Result<(), FormatError> {
    let mut reached = vec![false; entries.len()];
    reached[0] = true;
    let mut queue = VecDeque::from([(0usize, 0usize)]);
    while let Some((d, depth)) = queue.pop_front() {
        if depth > MAX_DEPTH {
            return Err(FormatError::TooDeep {
                ino: entries[d].ino,
                limit: MAX_DEPTH,
            });
        }
        for &c in &entries[d].children {
            if !reached[c] {
                reached[c] = true;
                queue.push_back((c, depth + 1));
            }
        }
    }
    if let Some(i) = (0..entries.len()).find(|&i| !reached[i]) {
        return Err(FormatError::Cycle {
            ino: entries[i].ino,
        });
    }
    Ok(())
}

/// Children sorted by name, for [`Flist::child`]'s binary search.
fn sort_children(entries: &mut [Entry]) {
    for i in 0..entries.len() {
        let mut c = std::mem::take(&mut entries[i].children);
        c.sort_by(|&a, &b| entries[a].name.cmp(&entries[b].name));
        entries[i].children = c;
    }
}

/// Symlink targets, from `extra`: every symlink has one, non-empty, without NUL and at most
/// [`MAX_LINK_TARGET`] bytes. Rows for other inodes are ignored.
fn load_link_targets(
    conn: &Connection,
    entries: &mut [Entry],
    by_ino: &HashMap<u64, usize>,
) -> Result<(), FormatError> {
    let mut stmt = conn.prepare("SELECT ino, data FROM extra").map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        let ino: u64 = ranged(int(row.get_ref(0).map_err(sql)?, 0, "extra.ino")?, 0, "ino")?;
        let Some(&i) = by_ino.get(&ino) else { continue };
        if entries[i].kind != EntryKind::Symlink {
            continue;
        }
        let data = bytes_of(row.get_ref(1).map_err(sql)?).map(<[u8]>::to_vec);
        match data {
            Some(t) if !t.is_empty() && t.len() <= MAX_LINK_TARGET && !t.contains(&0) => {
                entries[i].target = Some(t)
            }
            _ => return Err(FormatError::BadLinkTarget { ino }),
        }
    }
    if let Some(e) = entries
        .iter()
        .find(|e| e.kind == EntryKind::Symlink && e.target.is_none())
    {
        return Err(FormatError::MissingLinkTarget { ino: e.ino });
    }
    Ok(())
}

/// Blocks, in rowid order: that order is the order in the file. Each belongs to a regular
/// file, and each file has exactly `ceil(size / BLOCK_SIZE)` of them; a hostile flist
/// listing millions of blocks for a small file is refused at the first block too many.
fn load_blocks(
    conn: &Connection,
    entries: &mut [Entry],
    by_ino: &HashMap<u64, usize>,
) -> Result<(), FormatError> {
    let mut stmt = conn
        .prepare("SELECT ino, id, key FROM block ORDER BY rowid")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    while let Some(row) = rows.next().map_err(sql)? {
        let ino: u64 = ranged(int(row.get_ref(0).map_err(sql)?, 0, "block.ino")?, 0, "ino")?;
        let i = *by_ino.get(&ino).ok_or(FormatError::OrphanBlocks { ino })?;
        if entries[i].kind != EntryKind::File {
            return Err(FormatError::BlocksOnNonFile { ino });
        }
        let index = entries[i].blocks.len();
        let field = |col: usize, column: &'static str| -> Result<[u8; 32], FormatError> {
            let b = bytes_of(row.get_ref(col).map_err(sql)?).unwrap_or(&[]);
            b.try_into().map_err(|_| FormatError::BadBlockField {
                ino,
                index,
                column,
                len: b.len(),
            })
        };
        let block = BlockRef {
            id: field(1, "id")?,
            key: field(2, "key")?,
        };
        let expected = entries[i].size.div_ceil(BLOCK_SIZE as u64);
        if index as u64 >= expected {
            return Err(FormatError::BlockCountMismatch {
                ino,
                size: entries[i].size,
                expected,
                actual: index as u64 + 1,
            });
        }
        entries[i].blocks.push(block);
    }
    for e in entries.iter().filter(|e| e.kind == EntryKind::File) {
        let expected = e.size.div_ceil(BLOCK_SIZE as u64);
        if e.blocks.len() as u64 != expected {
            return Err(FormatError::BlockCountMismatch {
                ino: e.ino,
                size: e.size,
                expected,
                actual: e.blocks.len() as u64,
            });
        }
    }
    Ok(())
}

fn table_exists(conn: &Connection, name: &str) -> Result<bool, FormatError> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(sql)
}

fn load_routes(conn: &Connection) -> Result<Vec<Route>, FormatError> {
    if !table_exists(conn, "route")? {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare("SELECT start, end, url FROM route ORDER BY rowid")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let mut routes = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        let start = int(row.get_ref(0).map_err(sql)?, 0, "route.start")?;
        let end = int(row.get_ref(1).map_err(sql)?, 0, "route.end")?;
        let url = bytes_of(row.get_ref(2).map_err(sql)?)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let (Ok(s), Ok(e)) = (u8::try_from(start), u8::try_from(end)) else {
            return Err(FormatError::BadRoute { start, end, url });
        };
        routes.push(Route {
            start: s,
            end: e,
            url,
        });
    }
    Ok(routes)
}

fn load_tags(conn: &Connection) -> Result<Vec<(String, String)>, FormatError> {
    if !table_exists(conn, "tag")? {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare("SELECT key, value FROM tag ORDER BY key")
        .map_err(sql)?;
    let mut rows = stmt.query([]).map_err(sql)?;
    let mut tags = Vec::new();
    while let Some(row) = rows.next().map_err(sql)? {
        let k = bytes_of(row.get_ref(0).map_err(sql)?).unwrap_or(&[]);
        let v = bytes_of(row.get_ref(1).map_err(sql)?).unwrap_or(&[]);
        tags.push((
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ));
    }
    Ok(tags)
}

/// An inode to write. `parent` is the flist inode number (0 for the root).
#[derive(Debug, Clone)]
pub struct NewInode {
    /// The parent's inode number (0 for the root).
    pub parent: u64,
    /// The name in its directory (`/` for the root).
    pub name: String,
    /// Bytes of a regular file.
    pub size: u64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Full mode: type and permission bits.
    pub mode: u32,
    /// Device number of a device node.
    pub rdev: u64,
    /// Change time, seconds since the epoch.
    pub ctime: i64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// A symlink's target (written to `extra`).
    pub target: Option<Vec<u8>>,
}

/// Writes a new `.fl`: to a temp file next to the destination, renamed into place by
/// [`Writer::finish`], so a reader never sees half a flist.
pub struct Writer {
    conn: Connection,
    tmp: PathBuf,
    dest: PathBuf,
    done: bool,
}

impl Writer {
    /// Starts a flist that [`Writer::finish`] will put at `dest`, with rfs's schema, in
    /// one transaction.
    pub fn create(dest: &Path) -> Result<Writer, Error> {
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "flist".into());
        let tmp = dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let sqlerr = |e| Error::Sql {
            path: dest.to_path_buf(),
            error: e,
        };
        let conn = Connection::open(&tmp).map_err(sqlerr)?;
        // One transaction for the whole flist: per-row commits would fsync per inode.
        conn.execute_batch(SCHEMA).map_err(sqlerr)?;
        conn.execute_batch("BEGIN").map_err(sqlerr)?;
        Ok(Writer {
            conn,
            tmp,
            dest: dest.to_path_buf(),
            done: false,
        })
    }

    fn sqlerr(&self, e: rusqlite::Error) -> Error {
        Error::Sql {
            path: self.dest.clone(),
            error: e,
        }
    }

    /// Inserts an inode with an explicit number (the writer numbers from 1, in order, as
    /// rfs's autoincrement would).
    pub fn inode(&self, ino: u64, n: &NewInode) -> Result<(), Error> {
        self.conn
            .prepare_cached(
                "INSERT INTO inode (ino, parent, name, size, uid, gid, mode, rdev, ctime, mtime) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(rusqlite::params![
                    ino as i64,
                    n.parent as i64,
                    n.name,
                    n.size as i64,
                    n.uid,
                    n.gid,
                    n.mode,
                    n.rdev as i64,
                    n.ctime,
                    n.mtime
                ])
            })
            .map_err(|e| self.sqlerr(e))?;
        if let Some(t) = &n.target {
            self.conn
                .prepare_cached("INSERT INTO extra (ino, data) VALUES (?1, ?2)")
                .and_then(|mut s| s.execute(rusqlite::params![ino as i64, t]))
                .map_err(|e| self.sqlerr(e))?;
        }
        Ok(())
    }

    /// Appends a block to file `ino`: call in file order (rowid order is block order).
    pub fn block(&self, ino: u64, b: &BlockRef) -> Result<(), Error> {
        self.conn
            .prepare_cached("INSERT INTO block (ino, id, key) VALUES (?1, ?2, ?3)")
            .and_then(|mut s| s.execute(rusqlite::params![ino as i64, &b.id[..], &b.key[..]]))
            .map_err(|e| self.sqlerr(e))?;
        Ok(())
    }

    /// Adds a route: where blocks in its id range are stored.
    pub fn route(&self, r: &Route) -> Result<(), Error> {
        self.conn
            .execute(
                "INSERT INTO route (start, end, url) VALUES (?1, ?2, ?3)",
                rusqlite::params![r.start, r.end, r.url],
            )
            .map_err(|e| self.sqlerr(e))?;
        Ok(())
    }

    /// Sets tag `key` (a later value replaces an earlier one).
    pub fn tag(&self, key: &str, value: &str) -> Result<(), Error> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO tag (key, value) VALUES (?1, ?2)",
                rusqlite::params![key, value],
            )
            .map_err(|e| self.sqlerr(e))?;
        Ok(())
    }

    /// Commits, syncs and renames the flist into place.
    pub fn finish(mut self) -> Result<(), Error> {
        self.conn
            .execute_batch("COMMIT")
            .map_err(|e| self.sqlerr(e))?;
        let placeholder = Connection::open_in_memory().map_err(|e| self.sqlerr(e))?;
        let conn = std::mem::replace(&mut self.conn, placeholder);
        conn.close().map_err(|(_, e)| self.sqlerr(e))?;
        let f = std::fs::File::open(&self.tmp).map_err(|e| Error::io(&self.tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        std::fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
