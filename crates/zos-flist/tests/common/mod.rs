//! Test fixtures: `zt-` temp dirs, a source tree with every entry type, tree comparison,
//! a real HTTP store server, and mount guards. Everything is cleaned up by `Drop`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use zos_flist::{pack, Fetcher, Flist, PackOptions, Router, BLOCK_SIZE};

pub fn tempdir(what: &str) -> tempfile::TempDir {
    zos_testkit::tempdir(&format!("flist-{what}"))
}

/// Fail loudly unless we can use FUSE/overlayfs; with `ZOS_SKIP_PRIVILEGED=1` print a
/// SKIP line and return false.
pub fn privileged(test: &str) -> bool {
    zos_testkit::Needs::root().dev("/dev/fuse").check(test)
}

pub fn random(n: usize) -> Vec<u8> {
    // Cheap, incompressible-enough bytes: xorshift seeded from the OS.
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).unwrap();
    let mut x = u64::from_le_bytes(seed) | 1;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

fn set_mtime(path: &Path, secs: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        None,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// A tree with every entry type, odd names, several modes and block-boundary sizes.
pub fn build_tree(root: &Path) {
    let w = |p: &str, data: &[u8], mode: u32| {
        let path = root.join(p);
        std::fs::write(&path, data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    std::fs::create_dir_all(root.join("dir with spaces/ünïcødé ✓")).unwrap();
    std::fs::create_dir_all(root.join("private")).unwrap();
    w("empty", b"", 0o644);
    w("exact-512k", &random(BLOCK_SIZE), 0o600);
    w("512k-plus-1", &random(BLOCK_SIZE + 1), 0o755);
    w("multi-mib", &random(3 * BLOCK_SIZE + 12345), 0o644);
    w("dir with spaces/hello world.txt", b"hello, world\n", 0o644);
    w(
        "dir with spaces/ünïcødé ✓/日本語.txt",
        "こんにちは".as_bytes(),
        0o600,
    );
    w("private/secret", b"zeros\0\0\0", 0o600);
    std::fs::set_permissions(root.join("private"), std::fs::Permissions::from_mode(0o700)).unwrap();
    w("compressible", &vec![b'a'; 2 * BLOCK_SIZE + 7], 0o644);
    std::os::unix::fs::symlink("dir with spaces/hello world.txt", root.join("rel-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("abs-link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling")).unwrap();
    nix::unistd::mkfifo(
        &root.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o640),
    )
    .unwrap();
    // A socket file: the listener goes, the inode stays.
    drop(std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap());
    std::fs::set_permissions(root.join("sock"), std::fs::Permissions::from_mode(0o755)).unwrap();
    if nix::unistd::geteuid().is_root() {
        nix::sys::stat::mknod(
            &root.join("null-dev"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
    }
    // Fixed, distinct mtimes (deepest first: creating entries changes a dir's mtime).
    let mut all = Vec::new();
    walk(root, root, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(&root.join(p), 1_600_000_000 + i as i64 * 61);
    }
    set_mtime(root, 1_500_000_000);
}

/// Relative paths of everything under `dir`.
pub fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        out.push(p.strip_prefix(root).unwrap().to_path_buf());
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            walk(root, &p, out);
        }
    }
}

/// Asserts that two trees match: names, types, modes, owners, mtimes, bytes, targets.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    walk(a, a, &mut x);
    walk(b, b, &mut y);
    assert_eq!(x, y, "entry lists differ");
    x.insert(0, PathBuf::new());
    for p in &x {
        let (pa, pb) = (a.join(p), b.join(p));
        let (ma, mb) = (
            std::fs::symlink_metadata(&pa).unwrap(),
            std::fs::symlink_metadata(&pb).unwrap(),
        );
        assert_eq!(ma.mode(), mb.mode(), "mode of {p:?}");
        assert_eq!(ma.uid(), mb.uid(), "uid of {p:?}");
        assert_eq!(ma.gid(), mb.gid(), "gid of {p:?}");
        assert_eq!(ma.mtime(), mb.mtime(), "mtime of {p:?}");
        let ft = ma.file_type();
        if ft.is_file() {
            assert_eq!(ma.len(), mb.len(), "size of {p:?}");
            assert!(
                std::fs::read(&pa).unwrap() == std::fs::read(&pb).unwrap(),
                "bytes of {p:?}"
            );
        } else if ft.is_symlink() {
            assert_eq!(
                std::fs::read_link(&pa).unwrap(),
                std::fs::read_link(&pb).unwrap(),
                "target of {p:?}"
            );
        } else if !ft.is_dir() {
            assert_eq!(ma.rdev(), mb.rdev(), "rdev of {p:?}");
        }
    }
}

/// A packed fixture: source tree, store, flist.
pub struct Packed {
    pub dir: tempfile::TempDir,
    pub src: PathBuf,
    pub store: PathBuf,
    pub fl: PathBuf,
}

impl Packed {
    pub fn new(what: &str, build: impl FnOnce(&Path)) -> Packed {
        let dir = tempdir(what);
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        build(&src);
        let store = dir.path().join("store");
        let fl = dir.path().join("app.fl");
        let router = Router::parse(&[format!("dir://{}", store.display())]).unwrap();
        pack(&src, &fl, &router, &PackOptions::default()).unwrap();
        Packed {
            dir,
            src,
            store,
            fl,
        }
    }

    pub fn store_url(&self) -> String {
        format!("dir://{}", self.store.display())
    }

    pub fn flist(&self) -> Flist {
        Flist::open(&self.fl).unwrap()
    }

    pub fn fetcher(&self) -> Fetcher {
        Fetcher::new(Router::parse(&[self.store_url()]).unwrap(), None)
    }

    /// Every blob file in the store.
    pub fn blobs(&self) -> Vec<PathBuf> {
        let mut v = Vec::new();
        for d in std::fs::read_dir(&self.store).unwrap() {
            for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
                v.push(f.unwrap().path());
            }
        }
        v.sort();
        v
    }

    /// The blob holding block `index` of the entry at `path`.
    pub fn blob_of(&self, path: &str, index: usize) -> PathBuf {
        let fl = self.flist();
        let e = &fl.entries[fl.lookup(path).unwrap()];
        let hex = e.blocks[index].id_hex();
        self.store.join(&hex[..2]).join(hex)
    }
}

/// `python3 -m http.server` on a free loopback port, serving `dir`; killed on drop.
pub struct HttpServer {
    child: Child,
    pub url: String,
}

impl HttpServer {
    pub fn serve(dir: &Path) -> HttpServer {
        let mut child = Command::new("python3")
            .args([
                "-u",
                "-m",
                "http.server",
                "0",
                "--bind",
                "127.0.0.1",
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 is needed to serve a test store (apt-get install -y python3)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port: u16 = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected http.server banner {line:?}"));
        HttpServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lists `dir` recursively: used to prove that nothing appeared outside a destination.
pub fn snapshot(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v
}
