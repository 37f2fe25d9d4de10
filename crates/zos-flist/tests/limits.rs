//! Bounds on what a signed flist and its stores can make a node do: expand a repeated
//! block to a TiB, size allocations by a count the file declares, or open a node path
//! (a device, a FIFO, a symlink) as a blob.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use zos_flist::block::encode;
use zos_flist::meta::{NewInode, Writer};
use zos_flist::store::Store;
use zos_flist::{
    read_dir_url, unpack, unpack_bounded, DirAccess, Error, Fetcher, Flist, Router, StoreError,
    UnpackOptions, BLOCK_SIZE,
};
use zos_testkit::Needs;

const DIR: u32 = libc::S_IFDIR | 0o755;
const REG: u32 = libc::S_IFREG | 0o644;

fn inode(parent: u64, name: &str, mode: u32, size: u64) -> NewInode {
    NewInode {
        parent,
        name: name.into(),
        size,
        uid: 0,
        gid: 0,
        mode,
        rdev: 0,
        ctime: 0,
        mtime: 1_600_000_000,
        target: None,
    }
}

/// A flist with one file `/bomb` of `blocks` full blocks, every one the same block
/// (stored once in `store`): a few bytes per row in the `.fl`, 512 KiB each unpacked.
fn bomb(dir: &Path, store: &Path, blocks: u64) -> PathBuf {
    let (b, ct) = encode(&vec![0u8; BLOCK_SIZE]);
    let router = Router::parse(&[format!("dir://{}", store.display())]).unwrap();
    router.set(&b.id, &ct).unwrap();
    let fl = dir.join("bomb.fl");
    let w = Writer::create(&fl).unwrap();
    w.inode(1, &inode(0, "/", DIR, 0)).unwrap();
    w.inode(2, &inode(1, "bomb", REG, blocks * BLOCK_SIZE as u64))
        .unwrap();
    w.block(2, &b).unwrap();
    w.finish().unwrap();
    // The other rows by SQL: millions of Writer calls would take minutes.
    let conn = rusqlite::Connection::open(&fl).unwrap();
    conn.execute(
        "INSERT INTO block (ino, id, key) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         SELECT 2, ?2, ?3 FROM n",
        rusqlite::params![(blocks - 1) as i64, &b.id[..], &b.key[..]],
    )
    .unwrap();
    drop(conn);
    fl
}

/// A tmpfs of `mib` MiB mounted on a `zt-` directory, unmounted on drop: an unpack
/// that ignores its bound fills this, not the host's disk.
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn new(what: &str, mib: u64) -> SmallFs {
        let dir = tempdir(what);
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={mib}m").as_str()),
        )
        .expect("mounting a tmpfs (run as root)");
        SmallFs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes in use on the tmpfs.
    fn used(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(self.dir.path()).unwrap();
        (s.blocks() - s.blocks_free()) * s.fragment_size()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Runs `f` on a thread and waits for its result at most `secs`: a store read that
/// blocks (a FIFO, a terminal) must fail the test, not hang it.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok()
}

/// H6: a 1 TiB file made of one repeated block (a 2 Mi-row `.fl`, one stored block).
#[test]
fn repeated_block_tib_file_is_refused_before_writing() {
    if !Needs::root().check("repeated_block_tib_file_is_refused_before_writing") {
        return;
    }
    let d = tempdir("bomb");
    let store = d.path().join("store");
    let fl = bomb(d.path(), &store, 1 << 21);
    let flist = Flist::open(&fl).unwrap();
    assert_eq!(flist.totals().0, 1 << 40, "the flist declares 1 TiB");
    let fs = SmallFs::new("bomb-dest", 64);
    let before = fs.used();
    let fetcher = Fetcher::new(
        Router::parse(&[format!("dir://{}", store.display())]).unwrap(),
        None,
    );
    let res = unpack(
        &flist,
        &fetcher,
        &fs.path().join("dest"),
        &UnpackOptions {
            threads: 2,
            ..Default::default()
        },
    );
    let used = fs.used() - before;
    eprintln!(
        "unpack of the 1 TiB bomb: {:?}; {used} bytes written",
        res.as_ref().map(|r| r.bytes)
    );
    match res {
        Err(Error::TooLarge {
            declared, limit, ..
        }) => {
            assert_eq!(declared, 1 << 40);
            assert_eq!(limit, zos_flist::unpack::DEFAULT_MAX_EXPANDED);
        }
        Err(other) => panic!("expected TooLarge, got: {other}"),
        Ok(r) => panic!("the bomb was unpacked: {} bytes", r.bytes),
    }
    assert!(
        used < 1 << 20,
        "{used} bytes were written for a refused flist"
    );
    assert!(
        !fs.path().join("dest").join("bomb").exists(),
        "no file of the bomb"
    );
}

fn blob_path(store: &Path, id: &[u8; 32]) -> PathBuf {
    let hex = hex::encode(id);
    store.join(&hex[..2]).join(hex)
}

/// A blob that is a FIFO: opening it for reading blocks until a writer comes.
#[test]
fn fifo_blob_is_refused_at_once() {
    let d = tempdir("fifo");
    let store = d.path().join("store");
    let (b, _) = encode(b"anything");
    let p = blob_path(&store, &b.id);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    nix::unistd::mkfifo(
        &p,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap();
    let url = format!("dir://{}", store.display());
    let s = Store::open(&url).unwrap();
    let res = within(10, move || s.get(&b.id).map(|v| v.len()));
    // Unblock a reader left behind by the old code, so the test process can exit.
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags_nonblock()
        .open(&p);
    let res = res.expect("store get did not return within 10 s: it blocked on the FIFO");
    match res {
        Err(StoreError::NotRegular { .. }) => {}
        other => panic!("expected NotRegular, got {other:?}"),
    }
}

/// A blob that is a symlink to a file elsewhere on the node.
#[test]
fn symlinked_blob_is_refused() {
    let d = tempdir("symlink");
    let store = d.path().join("store");
    let elsewhere = d.path().join("elsewhere");
    let (b, ct) = encode(b"a real block somewhere else on the node");
    std::fs::write(&elsewhere, &ct).unwrap();
    let p = blob_path(&store, &b.id);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    symlink(&elsewhere, &p).unwrap();
    let s = Store::open(&format!("dir://{}", store.display())).unwrap();
    match s.get(&b.id) {
        Err(StoreError::Symlink { .. }) => {}
        Ok(v) => panic!(
            "the link was followed: {} bytes read from {}",
            v.len(),
            elsewhere.display()
        ),
        Err(other) => panic!("expected Symlink, got {other}"),
    }
}

/// `dir:///dev/console` as a store and as a flist URL: refused at once, never opened
/// for reading (reading the console blocks).
#[test]
fn console_store_and_url_are_refused_at_once() {
    let console = "dir:///dev/console";
    // Contract input with no store roots configured: no dir:// at all.
    match Store::open_in(console, &DirAccess::default()) {
        Err(StoreError::NotUnderRoot { .. }) => {}
        other => panic!("expected NotUnderRoot, got {other:?}"),
    }
    match Store::open_in(console, &DirAccess::under(["/var/lib/zt-stores"])) {
        Err(StoreError::NotUnderRoot { .. }) => {}
        other => panic!("expected NotUnderRoot, got {other:?}"),
    }
    // An operator's path: still not a directory of blobs.
    match Store::open(console) {
        Err(StoreError::NotRegular { kind, .. }) => assert_eq!(kind, "a character device"),
        other => panic!("expected NotRegular, got {other:?}"),
    }
    // The flist URL itself (what the node fetches first).
    let got = within(10, || {
        read_dir_url(console, &DirAccess::Any, 1 << 20).map(|b| b.len())
    })
    .expect("reading dir:///dev/console did not return within 10 s: it blocked");
    match got {
        Err(StoreError::NotRegular { kind, .. }) => assert_eq!(kind, "a character device"),
        other => panic!("expected NotRegular, got {other:?}"),
    }
    match read_dir_url(console, &DirAccess::default(), 1 << 20) {
        Err(StoreError::NotUnderRoot { .. }) => {}
        other => panic!("expected NotUnderRoot, got {other:?}"),
    }
}

/// Stores (and flist URLs) outside the configured roots, or reached through `..` or a
/// symlink under a root: refused when the router is made, before any block is read.
#[test]
fn stores_outside_the_roots_are_refused() {
    let p = Packed::new("roots", |src| {
        std::fs::write(src.join("hello"), random(3 * BLOCK_SIZE / 2)).unwrap()
    });
    let roots = tempdir("roots");
    let allowed = DirAccess::under([roots.path()]);
    let url = |p: &Path| format!("dir://{}", p.display());
    // The packed store lives outside the root.
    match Router::parse_in(&[p.store_url()], &allowed) {
        Err(StoreError::NotUnderRoot { .. }) => {}
        other => panic!("expected NotUnderRoot, got {other:?}"),
    }
    // `..` out of the root.
    let dotdot = roots
        .path()
        .join("..")
        .join(p.store.strip_prefix("/tmp").unwrap_or(&p.store));
    match Router::parse_in(&[url(&dotdot)], &allowed) {
        Err(StoreError::NotUnderRoot { .. }) => {}
        other => panic!(
            "expected NotUnderRoot for {}, got {other:?}",
            dotdot.display()
        ),
    }
    // A symlink under the root pointing at the store.
    let link = roots.path().join("link");
    symlink(&p.store, &link).unwrap();
    match Router::parse_in(&[url(&link)], &allowed) {
        Err(StoreError::Symlink { .. }) => {}
        other => panic!("expected Symlink, got {other:?}"),
    }
    // A relative path.
    match Router::parse_in(&["dir://store".to_string()], &allowed) {
        Err(StoreError::NotUnderRoot { .. }) => {}
        other => panic!("expected NotUnderRoot, got {other:?}"),
    }
    // The flist file through the link: refused too.
    let fl_link = roots.path().join("app.fl");
    symlink(&p.fl, &fl_link).unwrap();
    match read_dir_url(&url(&fl_link), &allowed, 1 << 30) {
        Err(StoreError::Symlink { .. }) => {}
        other => panic!("expected Symlink, got {other:?}"),
    }
    // Control: the same store copied under the root is used, and unpacks.
    let inside = roots.path().join("stores").join("app");
    std::fs::create_dir_all(&inside).unwrap();
    for b in p.blobs() {
        let rel = b.strip_prefix(&p.store).unwrap();
        std::fs::create_dir_all(inside.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&b, inside.join(rel)).unwrap();
    }
    let router = Router::parse_in(&[url(&inside)], &allowed).unwrap();
    let out = tempdir("roots-out");
    let dest = out.path().join("dest");
    unpack(
        &p.flist(),
        &Fetcher::new(router, None),
        &dest,
        &UnpackOptions::default(),
    )
    .unwrap();
    assert_same_tree(&p.src, &dest);
    let bytes = std::fs::read(p.fl.clone()).unwrap();
    std::fs::copy(&p.fl, roots.path().join("real.fl")).unwrap();
    let read = read_dir_url(&url(&roots.path().join("real.fl")), &allowed, 1 << 30).unwrap();
    assert_eq!(read, bytes);
}

/// The caller's bound (the contract's disk size): a flist of 3 MiB of files with a
/// 2 MiB bound is refused before the destination is even created.
#[test]
fn callers_bound_is_enforced_before_writing() {
    let p = Packed::new("bound", |src| {
        for n in ["a", "b", "c"] {
            std::fs::write(src.join(n), random(1 << 20)).unwrap();
        }
    });
    let out = tempdir("bound-out");
    let dest = out.path().join("dest");
    match unpack_bounded(
        &p.flist(),
        &p.fetcher(),
        &dest,
        &UnpackOptions::default(),
        2 << 20,
    ) {
        Err(Error::TooLarge {
            declared, limit, ..
        }) => {
            assert_eq!((declared, limit), (3 << 20, 2 << 20));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(snapshot(out.path()).is_empty(), "nothing was created");
    // At the bound exactly: unpacked.
    unpack_bounded(
        &p.flist(),
        &p.fetcher(),
        &dest,
        &UnpackOptions::default(),
        3 << 20,
    )
    .unwrap();
    assert_same_tree(&p.src, &dest);
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_NONBLOCK)
    }
}

/// Largest single allocation made on a thread while it is `tracking`.
mod alloc_probe {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};

    pub struct Probe;
    pub static LARGEST: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        pub static TRACKING: Cell<bool> = const { Cell::new(false) };
    }

    // SAFETY: every call is forwarded to the system allocator unchanged; the probe only
    // reads the requested size.
    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            // SAFETY: the caller's contract for `alloc` is passed through.
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` came from `System` with this layout (see `alloc`).
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            // SAFETY: the caller's contract for `realloc` is passed through.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    fn note(size: usize) {
        if TRACKING.try_with(Cell::get).unwrap_or(false) {
            LARGEST.fetch_max(size, Ordering::Relaxed);
        }
    }

    /// Runs `f` and returns its result with the largest allocation it made.
    pub fn largest<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.store(0, Ordering::Relaxed);
        TRACKING.with(|t| t.set(true));
        let r = f();
        TRACKING.with(|t| t.set(false));
        (r, LARGEST.load(Ordering::Relaxed))
    }
}

#[global_allocator]
static PROBE: alloc_probe::Probe = alloc_probe::Probe;

/// A flist whose `inode` b-tree claims millions of rows that are not there: the root
/// interior page lists one leaf `fanout` times, and that leaf claims `cells` cells.
/// SQLite's `count(*)` adds up those claims; the file is 64 KiB pages, a few hundred KiB.
fn inflated(dir: &Path, fanout: u16, cells: u16) -> PathBuf {
    let path = dir.join("inflated.fl");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA page_size = 65536").unwrap();
        conn.execute_batch(zos_flist_schema()).unwrap();
        conn.execute_batch(
            "INSERT INTO inode (ino, parent, name, size, uid, gid, mode, rdev, ctime, mtime) \
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 4000) \
             SELECT i, i - 1, 'entry-' || i, 0, 0, 0, 16877, 0, 0, 0 FROM n",
        )
        .unwrap();
    }
    let root: u32 = rusqlite::Connection::open(&path)
        .unwrap()
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'inode'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    const PAGE: usize = 65536;
    let at = (root as usize - 1) * PAGE;
    assert_eq!(bytes[at], 0x05, "the inode root is an interior table page");
    let cell0 = u16::from_be_bytes([bytes[at + 12], bytes[at + 13]]);
    let c = at + cell0 as usize;
    let leaf = u32::from_be_bytes(bytes[c..c + 4].try_into().unwrap());
    // The root: `fanout` cells all pointing at cell 0 (child: `leaf`), right child `leaf`.
    bytes[at + 3..at + 5].copy_from_slice(&fanout.to_be_bytes());
    bytes[at + 8..at + 12].copy_from_slice(&leaf.to_be_bytes());
    for i in 0..fanout as usize {
        let p = at + 12 + 2 * i;
        bytes[p..p + 2].copy_from_slice(&cell0.to_be_bytes());
    }
    assert!(
        12 + 2 * fanout as usize <= cell0 as usize,
        "pointers fit before the cells"
    );
    let l = (leaf as usize - 1) * PAGE;
    assert_eq!(bytes[l], 0x0d, "a leaf table page");
    bytes[l + 3..l + 5].copy_from_slice(&cells.to_be_bytes());
    std::fs::write(&path, &bytes).unwrap();
    path
}

fn zos_flist_schema() -> &'static str {
    "CREATE TABLE inode (ino INTEGER PRIMARY KEY AUTOINCREMENT, parent INTEGER, \
     name VARCHAR(255), size INTEGER, uid INTEGER, gid INTEGER, mode INTEGER, rdev INTEGER, \
     ctime INTEGER, mtime INTEGER); \
     CREATE TABLE extra (ino INTEGER PRIMARY KEY, data VARCHAR(4096)); \
     CREATE TABLE block (ino INTEGER, id VARCHAR(32), key VARCHAR(32));"
}

/// H6 (allocation): a `.fl` of a few hundred KiB whose `count(*)` says 7.9 M rows.
#[test]
fn declared_row_count_does_not_size_allocations() {
    let d = tempdir("inflated");
    let fl = inflated(d.path(), 789, 10_000);
    let len = std::fs::metadata(&fl).unwrap().len();
    let declared: i64 = rusqlite::Connection::open(&fl)
        .unwrap()
        .query_row("SELECT count(*) FROM inode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(declared, 7_900_000, "count(*) adds up the claimed cells");
    let (res, largest) = alloc_probe::largest(|| Flist::open(&fl).map(|f| f.entries.len()));
    let per_row = std::mem::size_of::<zos_flist::Entry>();
    eprintln!(
        "{len}-byte flist, count(*) {declared}: {res:?}; largest allocation {largest} bytes \
         ({per_row} bytes per Entry)"
    );
    match res {
        // Whatever the first garbage row is, it is refused as a format error.
        Err(Error::Format { .. }) => {}
        other => panic!("expected a format refusal, got {other:?}"),
    }
    // The file itself is read into memory once (its length); nothing beyond that scale.
    assert!(
        largest <= (len as usize).max(1 << 20) * 2,
        "largest allocation {largest} bytes for a {len}-byte flist"
    );
}
