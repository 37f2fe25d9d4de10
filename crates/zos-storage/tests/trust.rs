//! Attacks on the node state home and on volumes, against real btrfs pools on loop
//! devices (root, btrfs-progs, losetup). Each test carries out the attack and asserts the
//! specific refusal and that nothing was written, deleted or recreated.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{privileged, Fixture, MIB};
use zos_storage::state::CopyState;
use zos_storage::{
    Backend, Error, PoolKind, PoolStatus, Storage, StorageConfig, IDENTITY_KEY, VOLUMES_DIR,
};

const SSD: [PoolKind; 3] = [PoolKind::Ssd; 3];

/// The storage of a node: the state home belongs to its identity.
fn node_config(fx: &Fixture, idx: &[usize]) -> StorageConfig {
    let mut cfg = fx.config(idx, &SSD);
    cfg.node_identity = true;
    cfg
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// sha256 of every file under `dir` (path -> digest): "nothing written there".
fn tree_digest(dir: &Path) -> BTreeMap<PathBuf, String> {
    use sha2::Digest;
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.insert(p, hex::encode(sha2::Sha256::digest(&bytes)));
            }
        }
    }
    out
}

/// Item 7: the identity seed is a secret: its copies are 0600, and a copy found
/// readable by others is set back to 0600.
#[test]
fn identity_seed_copies_are_0600() {
    if !privileged("identity_seed_copies_are_0600") {
        return;
    }
    let fx = Fixture::new(2, 256 * MIB);
    let s = Storage::open(node_config(&fx, &[0, 1])).unwrap();
    let copies: Vec<PathBuf> = s
        .state()
        .dirs()
        .iter()
        .map(|d| d.join(IDENTITY_KEY))
        .collect();
    assert_eq!(copies.len(), 2);
    for c in &copies {
        assert_eq!(mode(c), 0o600, "{}", c.display());
        assert_eq!(
            std::fs::metadata(c).unwrap().len(),
            56 + 32,
            "a 32-byte seed"
        );
    }
    let seed = s.state().read(IDENTITY_KEY).unwrap().unwrap().data;
    std::fs::set_permissions(&copies[1], std::fs::Permissions::from_mode(0o644)).unwrap();
    s.close().unwrap();
    // The next open repairs the mode; the seed is the same.
    let s = Storage::open(node_config(&fx, &[0, 1])).unwrap();
    for c in &copies {
        assert_eq!(mode(c), 0o600, "{}", c.display());
    }
    assert_eq!(s.state().read(IDENTITY_KEY).unwrap().unwrap().data, seed);
    s.close().unwrap();
}

/// M9: a planted disk labelled like ours, with a higher generation of another identity
/// and a forged journal, must not take over the node.
#[test]
fn planted_disk_with_higher_generation_is_refused() {
    if !privileged("planted_disk_with_higher_generation_is_refused") {
        return;
    }
    let fx = Fixture::new(3, 256 * MIB);
    let s = Storage::open(node_config(&fx, &[0, 1])).unwrap();
    let ours = s.state().read(IDENTITY_KEY).unwrap().unwrap().data;
    s.state().write("journal", b"our journal").unwrap();
    let our_dirs = s.state().dirs().to_vec();
    s.close().unwrap();

    // 1. The attacker's disk: a pool with our label prefix, a checksummed identity and
    //    journal written many times (higher generations than ours).
    let evil = Storage::open(fx.config(&[2], &SSD)).unwrap();
    let evil_pool = evil.pools()[0].clone();
    for _ in 0..9 {
        evil.state().write("journal", b"forged journal").unwrap();
    }
    evil.state().write(IDENTITY_KEY, &[0xee; 32]).unwrap();
    evil.close().unwrap();

    let s = Storage::open(node_config(&fx, &[0, 1, 2])).unwrap();
    let planted = s
        .pools()
        .into_iter()
        .find(|p| p.label == evil_pool.label)
        .unwrap();
    match &planted.status {
        PoolStatus::Broken { reason } => assert!(reason.contains("foreign state home"), "{reason}"),
        st => panic!("the planted pool was taken in: {st:?}"),
    }
    assert_eq!(
        s.state().dirs(),
        &our_dirs[..],
        "no state copy on the planted pool"
    );
    assert_eq!(s.state().read(IDENTITY_KEY).unwrap().unwrap().data, ours);
    assert_eq!(
        s.state().read("journal").unwrap().unwrap().data,
        b"our journal"
    );
    // Nothing placed on it either.
    let v = s.volume_create("v", 16 * MIB, PoolKind::Ssd).unwrap();
    assert_ne!(v.pool, evil_pool.label);
    s.volume_remove("v").unwrap();
    let ours_before: Vec<_> = our_dirs.iter().map(|d| tree_digest(d)).collect();
    let our_devices: Vec<(PathBuf, PathBuf)> = s
        .pools()
        .into_iter()
        .filter(|p| p.status == PoolStatus::Online)
        .map(|p| (p.mountpoint, p.device.unwrap()))
        .collect();
    s.close().unwrap();

    // 2. The attacker's disk with a complete, self-consistent state home of another
    //    identity (its registry authenticated by its own seed): the node cannot tell
    //    which is its own and refuses to open; nothing of ours is rewritten.
    let fx2 = Fixture::new(1, 256 * MIB);
    let mut evil_cfg = node_config(&fx2, &[0]);
    evil_cfg.discovery.label_prefix = fx.prefix.clone();
    let evil = Storage::open(evil_cfg).unwrap();
    for _ in 0..9 {
        evil.state().write("journal", b"forged journal").unwrap();
    }
    evil.close().unwrap();
    let mut cfg = node_config(&fx, &[0, 1]);
    if let zos_storage::DiskSelection::Explicit(disks) = &mut cfg.discovery.selection {
        disks.push(fx2.loop_(0).dev.clone());
    }
    match Storage::open(cfg) {
        Err(Error::StateConflict { key, copies }) => {
            assert_eq!((key.as_str(), copies.len()), (IDENTITY_KEY, 3))
        }
        r => panic!("expected StateConflict, got {r:?}"),
    }
    // Refused: nothing of it stays mounted.
    assert!(fx.our_mounts().is_empty() && fx2.our_mounts().is_empty());
    // Our disks, looked at read-only: not one state byte changed.
    for (mnt, dev) in &our_devices {
        nix::mount::mount(
            Some(dev.as_path()),
            mnt.as_path(),
            Some("btrfs"),
            nix::mount::MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .unwrap();
    }
    let after: Vec<_> = our_dirs.iter().map(|d| tree_digest(d)).collect();
    for (mnt, _) in &our_devices {
        nix::mount::umount2(mnt.as_path(), nix::mount::MntFlags::empty()).unwrap();
    }
    assert_eq!(after, ours_before, "our state copies were rewritten");
    // Without the planted disk the node is itself again.
    let s = Storage::open(node_config(&fx, &[0, 1])).unwrap();
    assert_eq!(s.state().read(IDENTITY_KEY).unwrap().unwrap().data, ours);
    assert_eq!(
        s.state().read("journal").unwrap().unwrap().data,
        b"our journal"
    );
    s.close().unwrap();
}

/// M9: a forged journal on one of the node's own pools (a higher generation, only
/// checksummed) is never read; the authentic copy wins and replaces it.
#[test]
fn forged_journal_copy_is_never_read() {
    if !privileged("forged_journal_copy_is_never_read") {
        return;
    }
    let fx = Fixture::new(2, 256 * MIB);
    let s = Storage::open(node_config(&fx, &[0, 1])).unwrap();
    s.state().write("journal", b"our journal").unwrap();
    let dirs = s.state().dirs().to_vec();
    // Forge generation 1000 of the journal with the (public) checksum format.
    let mut forged = Vec::new();
    forged.extend_from_slice(b"ZOSST001");
    forged.extend_from_slice(&1000u64.to_le_bytes());
    forged.extend_from_slice(&14u64.to_le_bytes());
    let mut h = <sha2::Sha256 as sha2::Digest>::new();
    sha2::Digest::update(&mut h, &forged);
    sha2::Digest::update(&mut h, b"forged journal");
    forged.extend_from_slice(&sha2::Digest::finalize(h));
    forged.extend_from_slice(b"forged journal");
    std::fs::write(dirs[1].join("journal"), &forged).unwrap();
    s.close().unwrap();
    let s = Storage::open(node_config(&fx, &[0, 1])).unwrap();
    let states = s.state().inspect("journal").unwrap();
    assert!(matches!(states[1].1, CopyState::Forged(_)), "{states:?}");
    let r = s.state().read("journal").unwrap().unwrap();
    assert_eq!(r.data, b"our journal");
    assert_eq!(r.repaired, vec![dirs[1].join("journal")]);
    // Both copies forged: an error, not a forged journal and not "no journal".
    std::fs::write(dirs[0].join("journal"), &forged).unwrap();
    std::fs::write(dirs[1].join("journal"), &forged).unwrap();
    assert!(matches!(
        s.state().read("journal"),
        Err(Error::StateForged { copies, .. }) if copies.len() == 2
    ));
    assert_eq!(std::fs::read(dirs[0].join("journal")).unwrap(), forged);
    s.close().unwrap();
}

/// Item 7: a state write is done only when every online pool holds it.
#[test]
fn state_write_needs_every_online_pool() {
    if !privileged("state_write_needs_every_online_pool") {
        return;
    }
    let fx = Fixture::new(2, 256 * MIB);
    let s = Storage::open(node_config(&fx, &[0, 1])).unwrap();
    s.state().write("journal", b"v1").unwrap();
    // One pool's state directory refuses writes (immutable).
    let blocked = s.state().dirs()[1].clone();
    let unblock = Immutable::set(&blocked);
    match s.state().write("journal", b"v2") {
        Err(Error::StateIncomplete {
            key,
            written,
            failed,
            ..
        }) => {
            assert_eq!((key.as_str(), written), ("journal", 1));
            assert_eq!(failed.len(), 1);
            assert_eq!(failed[0].0, blocked.join("journal"));
        }
        r => panic!("a write that reached one copy of two counted as done: {r:?}"),
    }
    drop(unblock);
    // The next read brings the lagging copy up to date.
    let r = s.state().read("journal").unwrap().unwrap();
    assert_eq!((r.data.as_slice(), r.repaired.len()), (&b"v2"[..], 1));
    s.close().unwrap();
}

/// Issue #13: a volume the node created, whose subvolume is gone, is not recreated empty.
#[test]
fn deleted_volume_is_lost_not_recreated() {
    if !privileged("deleted_volume_is_lost_not_recreated") {
        return;
    }
    let fx = Fixture::new(1, 256 * MIB);
    let s = Storage::open(node_config(&fx, &[0])).unwrap();
    let v = s.volume_ensure("c1.data", 16 * MIB, PoolKind::Ssd).unwrap();
    std::fs::write(v.path.join("precious"), b"data").unwrap();
    s.close().unwrap();
    // While the node is down, the subvolume is deleted.
    let s = Storage::open(node_config(&fx, &[0])).unwrap();
    s.backend().subvol_delete(&v.path).unwrap();
    let volumes_dir = s.pools()[0].mountpoint.join(VOLUMES_DIR);
    let left = || -> Vec<_> {
        std::fs::read_dir(&volumes_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect()
    };
    for r in [
        s.volume_ensure("c1.data", 16 * MIB, PoolKind::Ssd),
        s.volume_create("c1.data", 16 * MIB, PoolKind::Ssd),
        s.volume_resize("c1.data", 32 * MIB),
    ] {
        match r {
            Err(e @ Error::VolumeLost { .. }) => {
                assert!(e.to_string().starts_with("volume lost"), "{e}")
            }
            r => panic!("a lost volume came back: {r:?}, volumes now {:?}", left()),
        }
    }
    assert!(left().is_empty(), "{:?}", left());
    assert!(s.volume("c1.data").unwrap().is_none());
    // A signed cancellation removes it for good; a new contract then gets a new one.
    assert!(!s.volume_remove("c1.data").unwrap());
    let v = s.volume_ensure("c1.data", 16 * MIB, PoolKind::Ssd).unwrap();
    assert!(!v.path.join("precious").exists());
    s.close().unwrap();
}

/// `chattr +i` on a directory for the life of the guard.
struct Immutable(std::path::PathBuf);

impl Immutable {
    fn set(dir: &std::path::Path) -> Immutable {
        let st = std::process::Command::new("chattr")
            .arg("+i")
            .arg(dir)
            .status()
            .expect("chattr (apt-get install -y e2fsprogs)");
        assert!(st.success(), "chattr +i {}", dir.display());
        Immutable(dir.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// Issue #13, for VM disks: a vdisk the node created, whose file is gone, is not
/// recreated empty (a VM would boot a blank disk, or a fresh copy of its image).
#[test]
fn deleted_vdisk_is_lost_not_recreated() {
    if !privileged("deleted_vdisk_is_lost_not_recreated") {
        return;
    }
    let fx = Fixture::new(1, 256 * MIB);
    let s = Storage::open(node_config(&fx, &[0])).unwrap();
    let v = s.vdisk_ensure("vm1-root", 16 * MIB, PoolKind::Ssd).unwrap();
    s.close().unwrap();
    let s = Storage::open(node_config(&fx, &[0])).unwrap();
    std::fs::remove_file(&v.path).unwrap();
    for r in [
        s.vdisk_ensure("vm1-root", 16 * MIB, PoolKind::Ssd),
        s.vdisk_create("vm1-root", 16 * MIB, PoolKind::Ssd),
        s.vdisk_resize("vm1-root", 32 * MIB),
    ] {
        match r {
            Err(e @ Error::VdiskLost { .. }) => {
                assert!(e.to_string().starts_with("vdisk lost"), "{e}")
            }
            r => panic!(
                "a lost vdisk came back: {r:?}, exists now: {}",
                v.path.exists()
            ),
        }
    }
    assert!(!v.path.exists());
    assert!(!s.vdisk_remove("vm1-root").unwrap());
    let v = s.vdisk_ensure("vm1-root", 16 * MIB, PoolKind::Ssd).unwrap();
    assert_eq!(v.size, 16 * MIB);
    s.close().unwrap();
}
