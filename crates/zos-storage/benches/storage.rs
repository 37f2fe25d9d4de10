//! Storage timings on a real btrfs pool on a loop device (root, btrfs-progs).
//! `cargo bench -p zos-storage --bench storage` (N with ZOS_BENCH_N, default 50).

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{privileged, Fixture, MIB};
use zos_storage::{PoolKind, Storage};

fn stats(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let n = v.len();
    let mean = v.iter().sum::<Duration>() / n as u32;
    let p = |q: f64| v[((n as f64 * q) as usize).min(n - 1)];
    println!(
        "{name:<52} {n:>4} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
        ms(mean),
        ms(p(0.5)),
        ms(p(0.95)),
        ms(v[n - 1])
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {:?}", out);
}

fn main() {
    if !privileged("storage bench") {
        return;
    }
    let n: usize = std::env::var("ZOS_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let fx = Fixture::new(1, 2048 * MIB);
    let t = Instant::now();
    let s = Storage::open(fx.config(&[0], &[PoolKind::Ssd])).unwrap();
    let open = t.elapsed();
    let mnt = s.pools()[0].mountpoint.clone();
    let ref_dir = mnt.join("bench-ref");
    std::fs::create_dir(&ref_dir).unwrap();

    let (mut ours, mut reference, mut vdisk, mut vol_rm) = (vec![], vec![], vec![], vec![]);
    // Interleave ours and the reference so both see the same filesystem state.
    for i in 0..n {
        let t = Instant::now();
        s.volume_create(&format!("v{i}"), 8 * MIB, PoolKind::Ssd)
            .unwrap();
        ours.push(t.elapsed());

        let p = ref_dir.join(format!("r{i}"));
        let ps = p.to_str().unwrap();
        let t = Instant::now();
        run(&["btrfs", "-q", "subvolume", "create", ps]);
        run(&["btrfs", "qgroup", "limit", "8M", ps]);
        reference.push(t.elapsed());

        let t = Instant::now();
        s.vdisk_create(&format!("d{i}"), 16 * MIB, PoolKind::Ssd)
            .unwrap();
        vdisk.push(t.elapsed());
    }
    for i in 0..n {
        let t = Instant::now();
        s.volume_remove(&format!("v{i}")).unwrap();
        vol_rm.push(t.elapsed());
    }
    println!(
        "pool: 2 GiB btrfs on {}, open (mkfs + mount + quota) {:.1} ms",
        fx.loop_(0).dev.display(),
        ms(open)
    );
    println!(
        "{:<52} {:>4} {:>9} {:>9} {:>9} {:>9}",
        "operation", "N", "mean ms", "p50 ms", "p95 ms", "max ms"
    );
    stats("volume create (zos-storage: ioctl subvol + qgroup)", ours);
    stats(
        "reference: btrfs subvolume create + qgroup limit",
        reference,
    );
    stats("vdisk create 16 MiB (sparse, NOCOW, fsync)", vdisk);
    stats("volume remove (zos-storage)", vol_rm);
    s.close().unwrap();
}
