//! `cargo xtask bench flist`: pack and unpack throughput (without and with a block cache)
//! against `tar -c | sha256sum` and `cp -a` of the same tree measured in the same run, for
//! a tree of mixed files and one of small files; and first-byte latency of a lazy mount
//! against a full unpack of a 256 MiB file and against one block's fetch and decrypt.
//!
//! When upstream rfs is there (`$RFS_BIN`, else `rfs` on `PATH`), `rfs unpack` of the
//! same `.fl` from the same dir store is timed beside our unpacks, interleaved, medians
//! of 5, and the first round checks that rfs unpacks our flist to the source's files.
//! Without it, one line says the comparison is skipped.
//!
//! ZOS_BENCH_MIB sets the first tree's size (default 1024), ZOS_BENCH_SMALL the number of
//! small files (default 20,000). Everything lives in a `zt-flist-bench-`
//! temp dir removed at the end. The mount part needs root and /dev/fuse; without them it
//! prints SKIP.

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use zos_flist::{
    mount, pack, unpack, BlockCache, Fetcher, Flist, MountOptions, Router, UnpackOptions,
};

const MIB: u64 = 1 << 20;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// A tree of about `total` bytes: many small files, some medium, a few large; half the
/// files random (incompressible), half text-like (compressible).
fn make_tree(root: &Path, total: u64) -> (u64, u64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut bytes, mut files) = (0u64, 0u64);
    let mut buf = Vec::new();
    let mut i = 0u64;
    while bytes < total {
        let class = rng.next() % 100;
        let size = match class {
            0..=69 => 1024 + rng.next() % (64 * 1024), // small
            70..=94 => MIB + rng.next() % (4 * MIB),   // medium
            _ => 16 * MIB + rng.next() % (32 * MIB),   // large
        }
        .min(total - bytes)
        .max(1);
        buf.resize(size as usize, 0);
        if i % 2 == 0 {
            rng.fill(&mut buf);
        } else {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = b"the quick brown fox jumps over the lazy dog 0123456789\n"[k % 55];
            }
            let mut r = vec![0u8; 64];
            rng.fill(&mut r);
            let at = (rng.next() % size) as usize;
            let n = r.len().min(buf.len() - at);
            buf[at..at + n].copy_from_slice(&r[..n]);
        }
        let dir = root.join(format!("d{:02}/s{:02}", i % 16, (i / 16) % 8));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i:06}")), &buf).unwrap();
        bytes += size;
        files += 1;
        i += 1;
    }
    (bytes, files)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn mibs(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / secs(d)
}

fn sync() {
    // Flush dirty pages so one phase's writeback does not land in the next's timing.
    let _ = Command::new("sync").status();
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let mib: u64 = std::env::var("ZOS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let small: u64 = std::env::var("ZOS_BENCH_SMALL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let tmp = zos_testkit::tempdir("flist-bench");
    let dir = tmp.path();
    println!(
        "flist benchmark, {} cores; references measured on the same tree in the same run: \
         tar -c | sha256sum (read and hash every byte), cp -a (a plain copy)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    match rfs_bin() {
        Some(rfs) => println!(
            "rfs: {} - unpacks compared side by side on the same .fl and store",
            rfs.display()
        ),
        None => println!("rfs: not on PATH (set RFS_BIN) - the upstream comparison is skipped"),
    }

    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    let (bytes, files) = make_tree(&src, mib * MIB);
    tree(
        dir,
        &src,
        &format!("{} MiB in {files} files", bytes / MIB),
        bytes,
    );

    let src = dir.join("small");
    std::fs::create_dir(&src).unwrap();
    let bytes = make_small_tree(&src, small);
    tree(
        dir,
        &src,
        &format!("{small} small files, {} MiB", bytes / MIB),
        bytes,
    );

    first_byte(dir);
}

/// `small` files of 1-8 KiB, half random, half text, in 100 directories; their bytes.
fn make_small_tree(root: &Path, small: u64) -> u64 {
    let mut rng = Rng(0x51ed_2701_f00d_cafe);
    let mut bytes = 0;
    for i in 0..small {
        let size = 1024 + rng.next() % (7 * 1024);
        let mut buf = vec![0u8; size as usize];
        if i % 2 == 0 {
            rng.fill(&mut buf);
        } else {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = b"small files: a config, a script, a page 0123456789\n"[k % 50];
            }
        }
        let dir = root.join(format!("d{:02}", i % 100));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i:06}")), &buf).unwrap();
        bytes += size;
    }
    sync();
    bytes
}

/// Times `f`, then flushes dirty pages so one phase's writeback does not land in the
/// next's timing (inside the measured time: a copy is only done once on disk).
fn timed(f: impl FnOnce()) -> Duration {
    let t = Instant::now();
    f();
    sync();
    t.elapsed()
}

/// Unpacks timed per round: ours without and with a (cold) block cache, and upstream
/// rfs's when it is there, interleaved so that drift on a shared machine hits all alike.
const ROUNDS: usize = 5;

/// The upstream rfs binary to compare with: `$RFS_BIN`, else `rfs` on `PATH`.
fn rfs_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RFS_BIN") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join("rfs"))
        .find(|p| p.is_file())
}

/// `rfs unpack` of `fl` into `out` with its block cache at `cache`; rfs reads the store
/// from the flist's route table, as ours does.
fn rfs_unpack(rfs: &Path, fl: &Path, cache: &Path, out: &Path) {
    let res = Command::new(rfs)
        .arg("unpack")
        .arg("-m")
        .arg(fl)
        .arg("-c")
        .arg(cache)
        .arg(out)
        .output()
        .unwrap();
    assert!(
        res.status.success(),
        "rfs unpack failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
}

/// SHA-256 over a tree's relative paths, kinds, regular files' permission bits and
/// contents, and symlink targets, in name order: two trees with the same files give the
/// same hash. Directory modes, owners and times are left out (rfs does not restore a
/// directory's mode).
fn tree_hash(root: &Path) -> String {
    let mut h = Sha256::new();
    hash_dir(root, Path::new(""), &mut h);
    hex::encode(h.finalize())
}

fn hash_dir(dir: &Path, rel: &Path, h: &mut Sha256) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let (path, rel) = (dir.join(&name), rel.join(&name));
        let meta = std::fs::symlink_metadata(&path).unwrap();
        h.update(rel.as_os_str().as_bytes());
        h.update([0]);
        if meta.is_dir() {
            h.update(b"d");
            hash_dir(&path, &rel, h);
        } else if meta.file_type().is_symlink() {
            h.update(b"l");
            h.update(std::fs::read_link(&path).unwrap().as_os_str().as_bytes());
        } else {
            h.update(b"f");
            h.update((meta.permissions().mode() & 0o7777).to_le_bytes());
            h.update(meta.len().to_le_bytes());
            h.update(std::fs::read(&path).unwrap());
        }
        h.update([0]);
    }
}

/// `speedup` (their time over ours) in words: "2.1x faster" or "1.3x slower".
fn faster(speedup: f64) -> String {
    if speedup >= 1.0 {
        format!("{speedup:.1}x faster")
    } else {
        format!("{:.1}x slower", 1.0 / speedup)
    }
}

/// The median of `runs` (an odd count).
fn median(mut runs: Vec<Duration>) -> Duration {
    runs.sort();
    runs[runs.len() / 2]
}

/// Removes what one unpack made, then flushes, so the removal's writeback does not land
/// in the next run's timing.
fn clean(paths: &[&Path]) {
    for p in paths {
        if p.exists() {
            std::fs::remove_dir_all(p).unwrap();
        }
    }
    sync();
}

/// Median unpack times over [`ROUNDS`] interleaved rounds; `rfs` is `None` without rfs.
struct Unpacks {
    plain: Duration,
    cached: Duration,
    rfs: Option<Duration>,
}

/// Times the unpacks of `fl_path`, round by round: ours without a cache, ours with a
/// cold cache, rfs (with its cache, which it always has, cold). In the first round,
/// checks that rfs unpacked our flist to the files of `src`, and prints the result.
fn unpacks(dir: &Path, src: &Path, fl_path: &Path, router: &Router) -> Unpacks {
    let fl = Flist::open(fl_path).unwrap();
    let (out, cache) = (dir.join("out"), dir.join("cache"));
    let rfs = rfs_bin();
    let src_hash = rfs.as_ref().map(|_| tree_hash(src));
    let (mut plain, mut cached, mut upstream) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        plain.push(timed(|| {
            let fetcher = Fetcher::new(router.clone(), None);
            unpack(&fl, &fetcher, &out, &UnpackOptions::default()).unwrap();
        }));
        clean(&[&out]);
        cached.push(timed(|| {
            let fetcher = Fetcher::new(router.clone(), Some(BlockCache::new(&cache)));
            unpack(&fl, &fetcher, &out, &UnpackOptions::default()).unwrap();
        }));
        clean(&[&out, &cache]);
        let Some(rfs) = &rfs else { continue };
        upstream.push(timed(|| rfs_unpack(rfs, fl_path, &cache, &out)));
        if round == 0 {
            let got = tree_hash(&out);
            let want = src_hash.as_deref().unwrap_or_default();
            if got == want {
                println!("interop: rfs unpacks our .fl to the same files (tree sha256 {got:.16})");
            } else {
                println!("interop: FAILED: rfs unpacked our .fl to tree sha256 {got:.16}, the source is {want:.16}");
            }
        }
        clean(&[&out, &cache]);
    }
    Unpacks {
        plain: median(plain),
        cached: median(cached),
        rfs: (!upstream.is_empty()).then(|| median(upstream)),
    }
}

/// The tree at `src` (`bytes` of file data): the references, pack, and unpack without
/// and with a block cache, and rfs's unpack when it is there; one table. Removes `src`
/// and what it made.
fn tree(dir: &Path, src: &Path, label: &str, bytes: u64) {
    println!();
    println!("tree: {label}");
    sync();
    // Reference: tar -c | sha256sum. The pipe is wired here, not by a shell: nothing
    // in this project runs one.
    let tar = timed(|| {
        let mut tar_proc = Command::new("tar")
            .args(["-cf", "-", "-C"])
            .arg(src)
            .arg(".")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let hashed = Command::new("sha256sum")
            .stdin(tar_proc.stdout.take().unwrap())
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(tar_proc.wait().unwrap().success() && hashed.success());
    });
    // Reference: a plain copy of the tree.
    let copy = dir.join("copy");
    let cp = timed(|| {
        let ok = Command::new("cp")
            .arg("-a")
            .arg(src)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(ok.success(), "cp -a failed");
    });
    clean(&[&copy]);

    let store = dir.join("store");
    let router = Router::parse(&[format!("dir://{}", store.display())]).unwrap();
    let fl_path = dir.join("bench.fl");
    let mut report = None;
    let packt = timed(|| report = Some(pack(src, &fl_path, &router, &Default::default()).unwrap()));
    let u = unpacks(dir, src, &fl_path, &router);

    let to_rfs = |d: Duration| {
        u.rfs
            .map_or("-".to_string(), |r| format!("{:.2}", secs(d) / secs(r)))
    };
    println!("| operation                                   | time (s) | MiB/s   | ratio to tar|sha256sum | ratio to cp -a | time / rfs unpack |");
    println!("|---------------------------------------------|----------|---------|------------------------|----------------|-------------------|");
    let mut rows = vec![
        ("tar -c | sha256sum (reference)", tar, "-".to_string()),
        ("cp -a (reference)", cp, "-".to_string()),
        ("pack (dir store)", packt, "-".to_string()),
        (
            "unpack (dir store, verify), median",
            u.plain,
            to_rfs(u.plain),
        ),
        (
            "unpack, cold block cache, median",
            u.cached,
            to_rfs(u.cached),
        ),
    ];
    if let Some(r) = u.rfs {
        rows.push((
            "rfs unpack (upstream, cold cache), median",
            r,
            "1.00".to_string(),
        ));
    }
    for (name, d, vs_rfs) in rows {
        println!(
            "| {name:<43} | {:8.2} | {:7.1} | {:<22.2} | {:<14.2} | {vs_rfs:<17} |",
            secs(d),
            mibs(bytes, d),
            mibs(bytes, d) / mibs(bytes, tar),
            mibs(bytes, d) / mibs(bytes, cp)
        );
    }
    println!(
        "({} blocks; medians of {ROUNDS} interleaved rounds; ratios to the references are \
         throughput over theirs: above 1 is faster)",
        report.map_or(0, |r| r.blocks)
    );
    if let Some(r) = u.rfs {
        println!(
            "against rfs unpack on the same .fl and store: {} without a cache, {} with a \
             cold block cache",
            faster(secs(r) / secs(u.plain)),
            faster(secs(r) / secs(u.cached))
        );
    }
    std::fs::remove_dir_all(src).unwrap();
    std::fs::remove_dir_all(&store).unwrap();
    std::fs::remove_file(&fl_path).unwrap();
}

/// A 256 MiB file: time to its first byte through a lazy mount vs after a full unpack.
fn first_byte(dir: &Path) {
    println!();
    // The rest of the benchmark has run: this part is skipped, never failed.
    if !zos_testkit::Needs::root()
        .dev("/dev/fuse")
        .or_skip("flist benchmark: first-byte latency")
    {
        return;
    }
    let src = dir.join("big-src");
    std::fs::create_dir(&src).unwrap();
    let mut buf = vec![0u8; 256 * MIB as usize];
    Rng(12345).fill(&mut buf);
    std::fs::write(src.join("big"), &buf).unwrap();
    drop(buf);
    let store = dir.join("big-store");
    let router = Router::parse(&[format!("dir://{}", store.display())]).unwrap();
    let fl_path = dir.join("big.fl");
    pack(&src, &fl_path, &router, &Default::default()).unwrap();
    sync();

    // Reference: open the flist and fetch, verify and decrypt its file's first block,
    // the least a lazy read of the first byte must do.
    let t = Instant::now();
    let fl = Flist::open(&fl_path).unwrap();
    let first = &fl.entries[fl.lookup("/big").unwrap()].blocks[0];
    let block = Fetcher::new(router.clone(), None)
        .block("/big", 0, first, zos_flist::BLOCK_SIZE)
        .unwrap();
    let one_block = t.elapsed();
    assert_eq!(block.len(), zos_flist::BLOCK_SIZE);

    // Lazy mount: open the flist, mount, read one byte.
    let mp = dir.join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let t = Instant::now();
    let fl = Arc::new(Flist::open(&fl_path).unwrap());
    let m = mount(
        fl,
        Arc::new(Fetcher::new(router.clone(), None)),
        &mp,
        &MountOptions::default(),
    )
    .unwrap();
    let mut one = [0u8; 1];
    std::fs::File::open(mp.join("big"))
        .unwrap()
        .read_exact(&mut one)
        .unwrap();
    let lazy = t.elapsed();
    m.unmount().unwrap();

    // Full unpack, then read one byte.
    let out = dir.join("big-out");
    let t = Instant::now();
    let fl = Flist::open(&fl_path).unwrap();
    unpack(&fl, &Fetcher::new(router, None), &out, &Default::default()).unwrap();
    std::fs::File::open(out.join("big"))
        .unwrap()
        .read_exact(&mut one)
        .unwrap();
    let full = t.elapsed();

    println!("| first byte of a 256 MiB file | time (ms) |");
    println!("|------------------------------|-----------|");
    println!(
        "| one block fetched, decrypted (reference) | {:9.1} |",
        one_block.as_secs_f64() * 1e3
    );
    println!(
        "| lazy FUSE mount              | {:9.1} |",
        lazy.as_secs_f64() * 1e3
    );
    println!(
        "| full unpack                  | {:9.1} |",
        full.as_secs_f64() * 1e3
    );
    println!(
        "(lazy mount is {:.0}x faster to the first byte than a full unpack, and takes {:.1}x \
         the one-block reference)",
        full.as_secs_f64() / lazy.as_secs_f64(),
        lazy.as_secs_f64() / one_block.as_secs_f64()
    );
}
