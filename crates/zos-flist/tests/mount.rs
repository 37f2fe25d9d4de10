//! The lazy FUSE mount and the overlay helper, on the real kernel (root, /dev/fuse).

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use common::*;
use zos_flist::{mount, BlockCache, Fetcher, MountOptions, Overlay, Router, BLOCK_SIZE};

fn is_mounted(p: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.to_string_lossy();
    text.lines().any(|l| l.split(' ').nth(4) == Some(&*p))
}

#[test]
fn mount_shows_every_entry_type_and_reads_lazily() {
    if !privileged("mount_shows_every_entry_type_and_reads_lazily") {
        return;
    }
    let p = Packed::new("mount", build_tree);
    let mp = p.dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let cache_dir = p.dir.path().join("cache");
    let fetcher = Arc::new(Fetcher::new(
        Router::parse(&[p.store_url()]).unwrap(),
        Some(BlockCache::new(&cache_dir)),
    ));
    let m = mount(
        Arc::new(p.flist()),
        fetcher.clone(),
        &mp,
        &MountOptions::default(),
    )
    .unwrap();
    assert!(is_mounted(&mp));

    // Metadata alone fetches nothing.
    let md = std::fs::symlink_metadata(mp.join("multi-mib")).unwrap();
    assert_eq!(md.len(), 3 * BLOCK_SIZE as u64 + 12345);
    assert!(std::fs::symlink_metadata(mp.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        fetcher.fetched.load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    // Reading one byte in the middle fetches one block.
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(mp.join("multi-mib")).unwrap();
    let mut one = [0u8; 1];
    f.read_exact_at(&mut one, 2 * BLOCK_SIZE as u64 + 5)
        .unwrap();
    let src = std::fs::read(p.src.join("multi-mib")).unwrap();
    assert_eq!(one[0], src[2 * BLOCK_SIZE + 5]);
    assert_eq!(
        fetcher.fetched.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(BlockCache::new(&cache_dir).entries().len(), 1);
    drop(f);

    // The whole tree matches: bytes, modes, owners, mtimes, targets, devices.
    assert_same_tree(&p.src, &mp);
    assert_eq!(
        std::fs::symlink_metadata(&mp).unwrap().ino(),
        1,
        "root is FUSE inode 1"
    );

    m.unmount().unwrap();
    assert!(!is_mounted(&mp));
}

#[test]
fn mount_read_of_a_bad_block_is_eio_and_not_cached() {
    if !privileged("mount_read_of_a_bad_block_is_eio_and_not_cached") {
        return;
    }
    let p = Packed::new("mount-bad", build_tree);
    let blob = p.blob_of("/512k-plus-1", 1);
    std::fs::write(&blob, b"not the block").unwrap();
    let mp = p.dir.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let cache_dir = p.dir.path().join("cache");
    let fetcher = Arc::new(Fetcher::new(
        Router::parse(&[p.store_url()]).unwrap(),
        Some(BlockCache::new(&cache_dir)),
    ));
    let m = mount(Arc::new(p.flist()), fetcher, &mp, &MountOptions::default()).unwrap();
    let err = std::fs::read(mp.join("512k-plus-1")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    // Block 0 was good and is cached; block 1 was bad and is not.
    let fl = p.flist();
    let e = &fl.entries[fl.lookup("/512k-plus-1").unwrap()];
    let cache = BlockCache::new(&cache_dir);
    assert!(cache.get(&e.blocks[0]).is_some());
    assert!(!cache.path(&e.blocks[1]).exists());
    drop(m); // Drop unmounts too.
    assert!(!is_mounted(&mp));
}

#[test]
fn overlay_on_a_flist_mount_is_writable_and_torn_down_on_drop() {
    if !privileged("overlay_on_a_flist_mount_is_writable_and_torn_down_on_drop") {
        return;
    }
    let p = Packed::new("overlay", build_tree);
    let mp = p.dir.path().join("lower");
    std::fs::create_dir(&mp).unwrap();
    let lower = mount(
        Arc::new(p.flist()),
        Arc::new(p.fetcher()),
        &mp,
        &MountOptions::default(),
    )
    .unwrap();
    let state = p.dir.path().join("state");
    let ov = Overlay::mount(lower, &state).unwrap();
    let merged = ov.merged().to_path_buf();
    assert!(is_mounted(&merged));
    assert_eq!(
        std::fs::read(merged.join("dir with spaces/hello world.txt")).unwrap(),
        b"hello, world\n"
    );
    std::fs::write(merged.join("dir with spaces/hello world.txt"), b"changed").unwrap();
    std::fs::write(merged.join("new-file"), b"new").unwrap();
    std::fs::remove_file(merged.join("empty")).unwrap();
    // Writes land in upper; the flist is untouched.
    assert_eq!(
        std::fs::read(state.join("upper/dir with spaces/hello world.txt")).unwrap(),
        b"changed"
    );
    assert!(state
        .join("upper/empty")
        .symlink_metadata()
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(
        std::fs::read(mp.join("dir with spaces/hello world.txt")).unwrap(),
        b"hello, world\n"
    );
    drop(ov);
    assert!(!is_mounted(&merged));
    assert!(!is_mounted(&mp));
}
