//! Real-kernel tests: btrfs pools on loop devices. Root and btrfs-progs/e2fsprogs needed.

mod common;

use std::fs::OpenOptions;
use std::io::Write;
use std::process::Command;

use common::{head_digest, privileged, Fixture, MIB};
use zos_storage::backend::{file_flags, FS_NOCOW_FL};
use zos_storage::disk::{self, probe_device};
use zos_storage::{
    DiscoveryConfig, Error, PoolKind, PoolStatus, Signature, Storage, Verdict, VOLUMES_DIR,
};

/// Write `total` bytes into `path` in 1 MiB chunks; returns the error of the first failing
/// write (or fsync), if any, and how much was written.
fn fill(path: &std::path::Path, total: u64) -> (u64, Option<std::io::Error>) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let chunk = vec![0x5au8; MIB as usize];
    let mut done = 0;
    while done < total {
        if let Err(e) = f.write_all(&chunk) {
            return (done, Some(e));
        }
        done += MIB;
    }
    match f.sync_all() {
        Ok(()) => (done, None),
        Err(e) => (done, Some(e)),
    }
}

#[test]
fn pools_volumes_quota_vdisks_and_rediscovery() {
    if !privileged("pools_volumes_quota_vdisks_and_rediscovery") {
        return;
    }
    let fx = Fixture::new(3, 512 * MIB);
    let cfg = fx.config(&[0, 1, 2], &[PoolKind::Ssd, PoolKind::Ssd, PoolKind::Hdd]);
    let s = Storage::open(cfg.clone()).unwrap();
    let pools = s.pools();
    assert_eq!(pools.len(), 3);
    assert!(pools
        .iter()
        .all(|p| p.status == PoolStatus::Online && p.label.starts_with(&fx.prefix)));
    for info in s.pool_infos().unwrap() {
        assert!(
            info.total >= 500 * MIB && info.capacity > 300 * MIB,
            "{info:?}"
        );
        assert!(info.free <= info.total && info.used > 0, "{info:?}");
    }
    // The label is on the disk: discovery reads it back from the superblock.
    match probe_device(&fx.loop_(0).dev).unwrap() {
        Signature::Btrfs { label, .. } => assert!(pools.iter().any(|p| p.label == label)),
        s => panic!("{s:?}"),
    }

    // A volume hits its quota with EDQUOT.
    let v = s.volume_create("vol1", 64 * MIB, PoolKind::Ssd).unwrap();
    assert_eq!(v.size, 64 * MIB);
    let data = v.path.join("data");
    let (written, err) = fill(&data, 100 * MIB);
    let err = err.expect("writing 100 MiB into a 64 MiB volume must fail");
    assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
    assert!((60 * MIB..=64 * MIB).contains(&written), "{written}");
    let used = s.volume("vol1").unwrap().unwrap().used;
    assert!(used > 50 * MIB && used <= 64 * MIB, "{used}");

    // Resize: the write now goes through.
    assert_eq!(s.volume_resize("vol1", 160 * MIB).unwrap().size, 160 * MIB);
    let (_, err) = fill(&data, 40 * MIB);
    assert!(err.is_none(), "{err:?}");
    let v = s.volume("vol1").unwrap().unwrap();
    assert!(v.used > 64 * MIB, "{v:?}");

    // HDD when asked.
    let h = s.volume_create("cold", 32 * MIB, PoolKind::Hdd).unwrap();
    let hdd = pools.iter().find(|p| p.kind == PoolKind::Hdd).unwrap();
    assert_eq!(h.pool, hdd.label);

    // A vdisk: sparse and NOCOW.
    let vd = s.vdisk_create("disk1", 128 * MIB, PoolKind::Ssd).unwrap();
    assert_eq!(vd.size, 128 * MIB);
    assert!(vd.allocated < MIB, "sparse: {vd:?}");
    assert_ne!(file_flags(&vd.path).unwrap() & FS_NOCOW_FL, 0, "NOCOW set");
    let vd = s.vdisk_resize("disk1", 192 * MIB).unwrap();
    assert_eq!(vd.size, 192 * MIB);

    s.state().write("identity", b"ed25519-secret").unwrap();
    let before: Vec<_> = s.pools().into_iter().map(|p| p.label).collect();
    s.close().unwrap();
    assert!(fx.our_mounts().is_empty(), "all unmounted");

    // "Reboot": the same disks are found again by label, with their content.
    let s = Storage::open(cfg).unwrap();
    let mut after: Vec<_> = s.pools().into_iter().map(|p| p.label).collect();
    let mut b = before.clone();
    b.sort();
    after.sort();
    assert_eq!(b, after);
    assert!(s.pools().iter().all(|p| p.status == PoolStatus::Online));
    let names: Vec<_> = s.volumes().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(s.volume("vol1").unwrap().unwrap().size, 160 * MIB);
    assert_eq!(s.vdisks().unwrap()[0].size, 192 * MIB);
    assert_eq!(
        s.state().read("identity").unwrap().unwrap().data,
        b"ed25519-secret"
    );

    // Delete everything; idempotent.
    assert!(s.volume_remove("vol1").unwrap());
    assert!(!s.volume_remove("vol1").unwrap());
    assert!(s.volume_remove("cold").unwrap());
    assert!(s.vdisk_remove("disk1").unwrap());
    assert!(s.volumes().unwrap().is_empty() && s.vdisks().unwrap().is_empty());
    s.close().unwrap();
}

#[test]
fn missing_disk_keeps_identity_and_corrupt_copy_is_repaired() {
    if !privileged("missing_disk_keeps_identity_and_corrupt_copy_is_repaired") {
        return;
    }
    let mut fx = Fixture::new(3, 384 * MIB);
    let kinds = [PoolKind::Ssd; 3];
    let s = Storage::open(fx.config(&[0, 1, 2], &kinds)).unwrap();
    let w = s.state().write("identity", b"node-key-v1").unwrap();
    assert_eq!(w.written.len(), 3);
    let lost = s
        .pools()
        .into_iter()
        .find(|p| p.disk.as_deref() == Some(&fx.loop_(1).name))
        .unwrap()
        .label;
    s.close().unwrap();

    // The disk dies: detach its loop device; boot with what is left.
    drop(fx.loops[1].take());
    let s = Storage::open(fx.config(&[0, 2], &kinds)).unwrap();
    let pools = s.pools();
    assert_eq!(pools.len(), 3, "{pools:?}");
    let missing = pools.iter().find(|p| p.label == lost).unwrap();
    assert_eq!(missing.status, PoolStatus::Missing);
    assert_eq!(
        pools
            .iter()
            .filter(|p| p.status == PoolStatus::Online)
            .count(),
        2
    );
    let r = s.state().read("identity").unwrap().unwrap();
    assert_eq!(r.data, b"node-key-v1");
    assert!(r.repaired.is_empty());
    // Placement only uses the online pools.
    let v = s.volume_create("v", 16 * MIB, PoolKind::Ssd).unwrap();
    assert_ne!(v.pool, lost);

    // Corrupt one copy: the next read returns the good data and rewrites that copy.
    let copy = s.state().dirs()[0].join("identity");
    let mut bytes = std::fs::read(&copy).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0x01;
    std::fs::write(&copy, &bytes).unwrap();
    let r = s.state().read("identity").unwrap().unwrap();
    assert_eq!(r.data, b"node-key-v1");
    assert_eq!(r.repaired, vec![copy.clone()]);
    for (_, st) in s.state().inspect("identity").unwrap() {
        assert_eq!(
            st,
            zos_storage::state::CopyState::Valid {
                generation: r.generation
            }
        );
    }
    // A new generation after the repair lands on both remaining copies.
    let w = s.state().write("identity", b"node-key-v1").unwrap();
    assert_eq!((w.written.len(), w.generation), (2, r.generation + 1));
    s.close().unwrap();
}

#[test]
fn foreign_ext4_disk_is_refused_and_untouched() {
    if !privileged("foreign_ext4_disk_is_refused_and_untouched") {
        return;
    }
    let fx = Fixture::new(2, 256 * MIB);
    let label = format!("{}ext4", fx.prefix);
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", &label])
        .arg(&fx.loop_(0).dev)
        .status()
        .unwrap();
    assert!(st.success());
    let before = head_digest(&fx.loop_(0).dev, 4 * MIB as usize);
    let cfg = fx.config(&[1, 0], &[PoolKind::Ssd, PoolKind::Ssd]);
    match Storage::open(cfg.clone()) {
        Err(Error::DiskRefused {
            disk,
            reason,
            considered,
        }) => {
            assert_eq!(disk, fx.loop_(0).name);
            assert!(
                reason.contains("ext2/3/4") && reason.contains("wipe not requested"),
                "{reason}"
            );
            assert_eq!(considered.len(), 2);
            let msg = Error::DiskRefused {
                disk,
                reason,
                considered,
            }
            .to_string();
            assert!(msg.contains(&fx.loop_(1).name), "{msg}");
        }
        r => panic!("expected DiskRefused, got {r:?}"),
    }
    // Nothing written, nothing mounted: not even the blank disk next to it.
    assert_eq!(head_digest(&fx.loop_(0).dev, 4 * MIB as usize), before);
    assert_eq!(probe_device(&fx.loop_(1).dev).unwrap(), Signature::Empty);
    assert!(fx.our_mounts().is_empty());

    // With an explicit wipe request the disk becomes a pool.
    let mut cfg = cfg;
    cfg.discovery.wipe = vec![fx.loop_(0).name.clone()];
    let s = Storage::open(cfg).unwrap();
    assert_eq!(s.pools().len(), 2);
    assert!(matches!(
        probe_device(&fx.loop_(0).dev).unwrap(),
        Signature::Btrfs { .. }
    ));
    s.close().unwrap();
}

#[test]
fn placement_refusal_creates_nothing() {
    if !privileged("placement_refusal_creates_nothing") {
        return;
    }
    let fx = Fixture::new(2, 256 * MIB);
    let s = Storage::open(fx.config(&[0, 1], &[PoolKind::Ssd, PoolKind::Ssd])).unwrap();
    let largest = s
        .pool_infos()
        .unwrap()
        .iter()
        .map(|i| i.capacity)
        .max()
        .unwrap();
    let ask = 4096 * (largest / 4096 + 1);
    match s.volume_create("big", ask, PoolKind::Ssd) {
        Err(Error::NoCapacity {
            requested,
            largest_free,
            ..
        }) => assert_eq!((requested, largest_free), (ask, largest)),
        r => panic!("{r:?}"),
    }
    assert!(matches!(
        s.vdisk_create("big", ask, PoolKind::Ssd),
        Err(Error::NoCapacity { .. })
    ));
    // Fill one pool exactly, then a second volume of the same size must go elsewhere, and
    // a third one fits nowhere.
    let caps: Vec<u64> = s.pool_infos().unwrap().iter().map(|i| i.capacity).collect();
    let each = 4096 * (caps.iter().min().unwrap() / 4096);
    let a = s.volume_create("a", each, PoolKind::Ssd).unwrap();
    let b = s.volume_create("b", each, PoolKind::Ssd).unwrap();
    assert_ne!(a.pool, b.pool);
    assert!(matches!(
        s.volume_create("c", each, PoolKind::Ssd),
        Err(Error::NoCapacity { .. })
    ));
    // No HDD pool: refused.
    assert!(matches!(
        s.volume_create("h", 4096, PoolKind::Hdd),
        Err(Error::NoCapacity { pools: 0, .. })
    ));
    for p in s.pools() {
        let mut left: Vec<_> = std::fs::read_dir(p.mountpoint.join(VOLUMES_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.retain(|n| n != "a" && n != "b");
        assert!(left.is_empty(), "{left:?}");
    }
    s.close().unwrap();
}

#[test]
fn host_discovery_is_read_only_and_spares_the_system_disk() {
    if !privileged("host_discovery_is_read_only_and_spares_the_system_disk") {
        return;
    }
    // Auto discovery over the real /sys only reads. Nothing is created from it here.
    let cfg = DiscoveryConfig::default();
    let disks = disk::discover(&cfg).unwrap();
    assert!(!disks.is_empty());
    for d in &disks {
        let v = disk::verdict(&cfg, d);
        if d.in_use.is_some() && !matches!(v, Verdict::ExistingPool { .. }) {
            assert!(matches!(v, Verdict::Refused { .. }), "{}: {v:?}", d.name);
        }
        if d.virtual_dev {
            assert!(matches!(v, Verdict::Refused { .. }), "{}: {v:?}", d.name);
        }
    }
    // The disk holding / is refused.
    let root_dev = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/"))
        .and_then(|l| l.split(' ').nth(2).map(str::to_string))
        .unwrap();
    let sys_disk = disks.iter().find(|d| {
        std::fs::read_to_string(format!("/sys/block/{}/dev", d.name))
            .map(|s| s.trim() == root_dev)
            .unwrap_or(false)
    });
    if let Some(d) = sys_disk {
        match disk::verdict(&cfg, d) {
            Verdict::Refused { reason } => assert!(reason.contains("mounted at /"), "{reason}"),
            v => panic!("{}: {v:?}", d.name),
        }
    } else {
        zos_testkit::skip_line(
            "host_discovery_is_read_only_and_spares_the_system_disk",
            &format!("the system-disk check: the root filesystem is not on a whole disk listed in /sys/block ({root_dev})"),
        );
    }
}

#[test]
fn loop_attach_is_idempotent_per_backing_file() {
    if !common::privileged("loop_attach_is_idempotent_per_backing_file") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("zt-loop-")
        .tempdir()
        .unwrap();
    let img = dir.path().join("zt-disk.img");
    let dev = zos_storage::loopdev::ensure(&img, 64 * common::MIB).unwrap();
    // Detached by the guard whatever happens below.
    let _guard = common::Loop {
        dev: dev.clone(),
        name: dev.file_name().unwrap().to_string_lossy().into_owned(),
    };
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 * common::MIB);
    assert_eq!(zos_storage::loopdev::find(&img).unwrap(), Some(dev.clone()));
    // A second ensure (a restarted zosd) returns the same device.
    assert_eq!(
        zos_storage::loopdev::ensure(&img, 64 * common::MIB).unwrap(),
        dev
    );
}
