//! Pack, then unpack from dir and http stores: every byte, mode, owner, target and mtime
//! comes back; routes spread and fall back.

mod common;

use common::*;
use zos_flist::{
    unpack, BlockCache, EntryKind, Fetcher, Owners, Router, UnpackOptions, BLOCK_SIZE,
};

#[test]
fn pack_then_unpack_from_dir_store_matches_source() {
    let p = Packed::new("rt-dir", build_tree);
    let fl = p.flist();
    // Structure as packed: root conventions of rfs, block counts by size.
    assert_eq!(fl.root().ino, 1);
    assert_eq!(fl.root().name, "/");
    let e = &fl.entries[fl.lookup("/exact-512k").unwrap()];
    assert_eq!(e.blocks.len(), 1);
    let e = &fl.entries[fl.lookup("/512k-plus-1").unwrap()];
    assert_eq!(e.blocks.len(), 2);
    assert_eq!(e.block_len(1), 1);
    let e = &fl.entries[fl.lookup("/empty").unwrap()];
    assert!(e.blocks.is_empty());
    assert_eq!(
        fl.entries[fl.lookup("/fifo").unwrap()].kind,
        EntryKind::Fifo
    );
    assert_eq!(
        fl.entries[fl.lookup("/abs-link").unwrap()]
            .target
            .as_deref(),
        Some(&b"/etc/passwd"[..])
    );
    assert_eq!(fl.routes.len(), 1);
    assert_eq!(fl.routes[0].url, p.store_url());

    let out = p.dir.path().join("out");
    let report = unpack(&fl, &p.fetcher(), &out, &UnpackOptions::default()).unwrap();
    assert_eq!(report.bytes, fl.totals().0);
    assert_same_tree(&p.src, &out);
}

/// A tree for a user namespace is written with its owners in the namespace's range:
/// every entry's ids moved (files, directories, links, devices, the root), the mode
/// kept whole (chown clears setuid bits: the owner is set first).
#[test]
fn unpack_with_shifted_owners_writes_every_owner_in_the_range_and_keeps_setuid() {
    if !privileged("unpack_with_shifted_owners") {
        return;
    }
    use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
    let p = Packed::new("rt-owners", |root| {
        build_tree(root);
        lchown(root.join("512k-plus-1"), Some(1000), Some(1001)).unwrap();
        std::fs::set_permissions(
            root.join("512k-plus-1"),
            std::fs::Permissions::from_mode(0o6755),
        )
        .unwrap();
        lchown(root.join("rel-link"), Some(7), Some(8)).unwrap();
        lchown(root.join("private"), Some(70_000), Some(70_001)).unwrap();
    });
    let (base, size) = (5 << 16, 1 << 16);
    let out = p.dir.path().join("out");
    let opts = UnpackOptions {
        owners: Owners::shifted(base, size),
        ..Default::default()
    };
    unpack(&p.flist(), &p.fetcher(), &out, &opts).unwrap();
    let mut entries = vec![std::path::PathBuf::new()];
    walk(&p.src, &p.src, &mut entries);
    for rel in &entries {
        let (src, got) = (
            std::fs::symlink_metadata(p.src.join(rel)).unwrap(),
            std::fs::symlink_metadata(out.join(rel)).unwrap(),
        );
        assert_eq!(got.uid(), base + src.uid() % size, "uid of {rel:?}");
        assert_eq!(got.gid(), base + src.gid() % size, "gid of {rel:?}");
        assert_eq!(got.mode(), src.mode(), "mode of {rel:?}");
    }
    let suid = std::fs::metadata(out.join("512k-plus-1")).unwrap();
    assert_eq!((suid.uid(), suid.mode() & 0o7777), (base + 1000, 0o6755));
}

#[test]
fn unpack_from_http_store_with_legacy_flat_layout_fallback() {
    let p = Packed::new("rt-http", build_tree);
    // Move one blob to the flat legacy layout (base/<hex>): the client must fall back.
    let blob = p.blob_of("/multi-mib", 2);
    std::fs::rename(&blob, p.store.join(blob.file_name().unwrap())).unwrap();
    let server = HttpServer::serve(&p.store);
    let fetcher = Fetcher::new(
        Router::parse(std::slice::from_ref(&server.url)).unwrap(),
        None,
    );
    let out = p.dir.path().join("out");
    unpack(
        &p.flist(),
        &fetcher,
        &out,
        &UnpackOptions {
            threads: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_same_tree(&p.src, &out);
}

#[test]
fn writes_go_to_every_matching_route_and_reads_fall_back() {
    let dir = tempdir("rt-routes");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // Block ids are random: with 24 blocks both id ranges get some (a miss is 2^-23).
    std::fs::write(src.join("f"), random(24 * BLOCK_SIZE)).unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let specs = vec![
        format!("00-7f=dir://{}", a.display()),
        format!("80-ff=dir://{}", b.display()),
        format!("dir://{}", c.display()),
    ];
    let fl_path = dir.path().join("x.fl");
    zos_flist::pack(
        &src,
        &fl_path,
        &Router::parse(&specs).unwrap(),
        &Default::default(),
    )
    .unwrap();
    let fl = zos_flist::Flist::open(&fl_path).unwrap();
    assert_eq!(fl.routes.len(), 3);
    assert_eq!((fl.routes[0].start, fl.routes[0].end), (0x00, 0x7f));
    assert_eq!((fl.routes[1].start, fl.routes[1].end), (0x80, 0xff));
    let e = &fl.entries[fl.lookup("/f").unwrap()];
    for blk in &e.blocks {
        let hex = blk.id_hex();
        let rel = std::path::Path::new(&hex[..2]).join(&hex);
        let (yes, no) = if blk.id[0] < 0x80 { (&a, &b) } else { (&b, &a) };
        assert!(yes.join(&rel).exists(), "block in its range store");
        assert!(!no.join(&rel).exists(), "block not in the other range");
        assert!(c.join(&rel).exists(), "block in the catch-all store");
    }

    // Break the range stores: one loses its blobs, the other serves garbage. Reads fall
    // back to the catch-all route (the flist's own routes, in order).
    std::fs::remove_dir_all(&a).unwrap();
    for d in std::fs::read_dir(&b).expect("some block ids fall in 80-ff") {
        for f in std::fs::read_dir(d.unwrap().path()).unwrap() {
            std::fs::write(f.unwrap().path(), b"garbage").unwrap();
        }
    }
    let cache_dir = dir.path().join("cache");
    let fetcher = Fetcher::new(
        Router::new(&fl.routes).unwrap(),
        Some(BlockCache::new(&cache_dir)),
    );
    let out = dir.path().join("out");
    unpack(&fl, &fetcher, &out, &Default::default()).unwrap();
    assert_eq!(
        std::fs::read(out.join("f")).unwrap(),
        std::fs::read(src.join("f")).unwrap()
    );
    // The cache holds exactly the verified plaintext blocks.
    let cache = BlockCache::new(&cache_dir);
    assert_eq!(cache.entries().len(), e.blocks.len());
    for blk in &e.blocks {
        assert!(cache.get(blk).is_some());
    }
}

#[test]
fn http_route_serving_bad_blocks_or_down_falls_back_to_the_next() {
    let p = Packed::new("rt-http-fallback", build_tree);
    // A copy of the store where every blob is corrupted, served over HTTP.
    let bad = p.dir.path().join("bad-store");
    for blob in p.blobs() {
        let rel = blob.strip_prefix(&p.store).unwrap();
        std::fs::create_dir_all(bad.join(rel.parent().unwrap())).unwrap();
        let mut data = std::fs::read(&blob).unwrap();
        data[0] ^= 0xff;
        std::fs::write(bad.join(rel), data).unwrap();
    }
    let server = HttpServer::serve(&bad);
    // A port nobody listens on: bind, note the port, close.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let cache_dir = p.dir.path().join("cache");
    let fetcher = Fetcher::new(
        Router::parse(&[down, server.url.clone(), p.store_url()]).unwrap(),
        Some(BlockCache::new(&cache_dir)),
    );
    let out = p.dir.path().join("out");
    unpack(&p.flist(), &fetcher, &out, &UnpackOptions::default()).unwrap();
    assert_same_tree(&p.src, &out);
    // Every cached block is one that verified.
    let fl = p.flist();
    let cache = BlockCache::new(&cache_dir);
    for e in &fl.entries {
        for b in &e.blocks {
            let plain = std::fs::read(cache.path(b)).unwrap();
            zos_flist::block::check_plain(b, &plain).unwrap();
        }
    }
    // With only the bad and the down route, the bad block is what is reported.
    let fetcher = Fetcher::new(
        Router::parse(std::slice::from_ref(&server.url)).unwrap(),
        None,
    );
    let err = unpack(
        &fl,
        &fetcher,
        &p.dir.path().join("out2"),
        &UnpackOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(
            err.block_error(),
            Some(zos_flist::BlockError::IdMismatch { .. })
        ),
        "{err}"
    );
}

/// What a progress callback heard: every `(done, total)` in the order it came.
#[derive(Default)]
struct Heard(std::sync::Mutex<Vec<(u64, u64)>>);

impl Heard {
    fn callback(&self) -> impl Fn(u64, u64) + Sync + '_ {
        |done, total| self.0.lock().unwrap().push((done, total))
    }

    /// One call per block, `done` strictly increasing, every call with the same total,
    /// the last at exactly that total.
    fn assert_climbs_to(&self, step: &str, total: u64, blocks: u64) {
        let heard = self.0.lock().unwrap();
        assert_eq!(heard.len() as u64, blocks, "{step}: one call per block");
        assert!(
            heard.iter().all(|&(_, t)| t == total),
            "{step}: total is {total}: {heard:?}"
        );
        assert!(
            heard.windows(2).all(|w| w[0].0 < w[1].0),
            "{step}: done goes down or stalls: {heard:?}"
        );
        assert_eq!(heard.last().map(|h| h.0), Some(total), "{step}: {heard:?}");
    }
}

#[test]
fn pack_verify_and_unpack_report_bytes_climbing_to_the_total() {
    let dir = tempdir("rt-progress");
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    build_tree(&src);
    let store = format!("dir://{}", dir.path().join("store").display());
    let fl_path = dir.path().join("p.fl");
    // Several workers each time: the calls must come in order even when blocks finish
    // at once on different threads.
    let packed = Heard::default();
    let cb = packed.callback();
    let report = zos_flist::pack(
        &src,
        &fl_path,
        &Router::parse(std::slice::from_ref(&store)).unwrap(),
        &zos_flist::PackOptions {
            threads: 4,
            progress: Some(&cb),
        },
    )
    .unwrap();
    let fl = zos_flist::Flist::open(&fl_path).unwrap();
    let (bytes, blocks) = fl.totals();
    assert!(blocks >= 6, "the tree spans several blocks: {blocks}");
    assert_eq!(report.bytes, bytes);
    packed.assert_climbs_to("pack", bytes, blocks);

    let verified = Heard::default();
    let cb = verified.callback();
    let fetcher = Fetcher::new(Router::parse(&[store]).unwrap(), None);
    let r = zos_flist::verify_blocks(&fl, &fetcher, 4, Some(&cb)).unwrap();
    assert_eq!((r.bytes, r.blocks), (bytes, blocks));
    verified.assert_climbs_to("verify", bytes, blocks);

    let unpacked = Heard::default();
    let cb = unpacked.callback();
    let out = dir.path().join("out");
    let opts = UnpackOptions {
        threads: 4,
        progress: Some(&cb),
        ..Default::default()
    };
    let r = unpack(&fl, &fetcher, &out, &opts).unwrap();
    assert_eq!(r.bytes, bytes);
    unpacked.assert_climbs_to("unpack", bytes, blocks);
    assert_same_tree(&src, &out);
}
