//! Micro-VM boot on a real node (root, QEMU; TCG here): `cargo xtask bench vm`.
//!
//! - **publish to the guest's first console line**: from the notary `put` of a VM
//!   contract (the sample VM flist, cached after the first round, on a tenant network
//!   with a root disk) to the guest's `vm-echo:` line in the console file zosd keeps.
//! - the reference, interleaved round by round: the same kernel, initrd and command
//!   line booted by a bare `qemu-system-x86_64` command line (microvm, the same
//!   accelerator, memory, disk and a virtio NIC on user networking), from spawn to
//!   the same line on its stdout.
//!
//! `ZOS_BENCH_N` rounds (default 5).

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use zos_flist::{PackOptions, Router};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn sample_vm() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/flists/vm/rootfs")
}

/// The first `vm-echo:` line in any VM console of the node, if there is one yet.
fn first_console_line(node: &Node) -> Option<String> {
    let vms = std::fs::read_dir(node.state().join("vms")).ok()?;
    vms.flatten().find_map(|e| {
        let text = std::fs::read_to_string(e.path().join("console.log")).ok()?;
        text.lines()
            .find(|l| l.starts_with("vm-echo:"))
            .map(str::to_owned)
    })
}

/// Boots the sample kernel with a bare QEMU command line; the time to its line.
fn bare_qemu(dir: &std::path::Path) -> Duration {
    let boot = sample_vm().join("boot");
    let disk = dir.join("bare.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let t = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm,acpi=on", "-accel", "tcg,tb-size=64"])
        .args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(["-m", "128", "-smp", "1", "-serial", "stdio"])
        .arg("-kernel")
        .arg(boot.join("vmlinux"))
        .arg("-initrd")
        .arg(boot.join("initrd.img"))
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1 zos.name=vm zos.ip=10.99.0.2/24 zos.gw=10.99.0.1 ECHO_PORT=7 tsc_early_khz=2000000",
        ])
        .arg("-drive")
        .arg(format!("id=disk0,file={},format=raw,if=none", disk.display()))
        .args(["-device", "virtio-blk-device,drive=disk0"])
        .args(["-netdev", "user,id=net0", "-device", "virtio-net-device,netdev=net0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64 runs");
    let out = child.stdout.take().unwrap();
    let line = BufReader::new(out)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("vm-echo:"));
    let took = t.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.is_some(), "the bare guest printed no line");
    took
}

fn main() {
    if !privileged("zosd VM benchmark") {
        return;
    }
    if !sample_vm().join("boot/vmlinux").is_file() {
        panic!("the sample VM is missing: run cargo xtask flist vm (cargo xtask bench vm does)");
    }
    let rounds: usize = std::env::var("ZOS_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let dir = node.dir.path().join("vmfl");
    let store = format!("dir://{}", dir.join("store").display());
    let fl = dir.join("vm.fl");
    let router = Router::parse(std::slice::from_ref(&store)).unwrap();
    zos_flist::pack(&sample_vm(), &fl, &router, &PackOptions::default()).unwrap();
    zos_flist::sign_file(&fl, &p.publisher).unwrap();
    let sha = zos_contract::Digest::of(&std::fs::read(&fl).unwrap()).to_hex();

    let (mut node_times, mut bare_times, mut running_times) = (vec![], vec![], vec![]);
    for round in 0..rounds {
        let id = node.id(&format!("vm{round}"));
        let vm = json!({
            "name": "vm",
            "kind": "vm",
            "flist": {
                "url": format!("dir://{}", fl.display()),
                "sha256": sha,
                "stores": [store],
                "publishers": [p.publisher.public()]
            },
            "env": {"ECHO_PORT": "7"},
            "cpu": 1,
            "memory_mib": 128,
            "disk_mib": 32,
            "network": "net"
        });
        let doc = signed_contract(&p, key, &id, 1, "10.99.0.0/24", vec![vm]);
        let t = Instant::now();
        node.publish(&record(&p, key, &doc));
        node.wait_status(&id, "ok", |s| s["state"] == "ok");
        let running = t.elapsed();
        let deadline = Instant::now() + WAIT;
        while first_console_line(&node).is_none() {
            assert!(Instant::now() < deadline, "no console line from the guest");
            std::thread::sleep(Duration::from_millis(5));
        }
        let took = t.elapsed();
        node.publish(&cancel_record(&p, key, &id, 2));
        node.wait_status(&id, "cancelled", |s| s["state"] == "cancelled");
        let bare = bare_qemu(node.dir.path());
        println!(
            "round {round}: zosd publish -> running {:.0} ms, -> first console line {:.0} ms; bare qemu {:.0} ms{}",
            ms(running),
            ms(took),
            ms(bare),
            if round == 0 { " (first round: flist fetched, verified, unpacked)" } else { "" }
        );
        if round > 0 || rounds == 1 {
            node_times.push(took);
            bare_times.push(bare);
            running_times.push(running);
        }
    }
    let (n, b, r) = (
        median(&mut node_times),
        median(&mut bare_times),
        median(&mut running_times),
    );
    println!(
        "VM boot, flist cached, median of {}: publish -> first console line {:.0} ms (running at {:.0} ms); bare qemu {:.0} ms; ratio {:.2}x (target <= 1.2x)",
        node_times.len(),
        ms(n),
        ms(r),
        ms(b),
        n.as_secs_f64() / b.as_secs_f64()
    );
}
