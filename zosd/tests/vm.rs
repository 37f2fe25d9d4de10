//! Micro-VM contracts on a real node (zosd on a loop-file pool in `zt-` namespaces of
//! its own) with real QEMU (TCG here): the sample VM (`cargo xtask flist vm`: the
//! Debian kernel and the vm-echo init) goes from published to running, answers TCP echo
//! to a container of its tenant and not to another tenant, is found again (not started
//! twice) by a zosd killed and started again, is restarted after kill -9 of its QEMU,
//! and leaves nothing behind when cancelled; a VM flist whose kernel was
//! tampered is refused before QEMU starts.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use zos_contract::SecretKey;
use zos_flist::{PackOptions, Router};

/// The sample VM's boot files, built by `cargo xtask flist vm`.
fn sample_vm() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/flists/vm/rootfs")
}

fn vm_ready(test: &str) -> bool {
    if !privileged(test) {
        return false;
    }
    let mut missing = Vec::new();
    if !sample_vm().join("boot/vmlinux").is_file() {
        missing.push("the sample VM (cargo xtask flist vm)");
    }
    if std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        missing.push("qemu-system-x86_64 (apt-get install -y qemu-system-x86)");
    }
    if missing.is_empty() {
        return true;
    }
    let reason = format!("{test} needs {}", missing.join(", "));
    if std::env::var("ZOS_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        println!("SKIP: {reason}");
        return false;
    }
    panic!("{reason}");
}

/// Packs `rootfs` into a signed flist in `dir`; returns (url, sha256, store url).
fn pack(dir: &Path, rootfs: &Path, publisher: &SecretKey) -> (String, String, String) {
    let store_url = format!("dir://{}", dir.join("store").display());
    let fl = dir.join("vm.fl");
    let router = Router::parse(std::slice::from_ref(&store_url)).unwrap();
    zos_flist::pack(rootfs, &fl, &router, &PackOptions::default()).unwrap();
    zos_flist::sign_file(&fl, publisher).unwrap();
    let sha = zos_contract::Digest::of(&std::fs::read(&fl).unwrap()).to_hex();
    (format!("dir://{}", fl.display()), sha, store_url)
}

fn vm_workload(p: &People, flist: &(String, String, String)) -> Value {
    json!({
        "name": "vm",
        "kind": "vm",
        "flist": {
            "url": flist.0,
            "sha256": flist.1,
            "stores": [flist.2],
            "publishers": [p.publisher.public()]
        },
        "env": {"ECHO_PORT": "7"},
        "cpu": 1,
        "memory_mib": 128,
        "disk_mib": 32,
        "network": "net",
        "mounts": [{"volume": "data", "path": "/data"}]
    })
}

fn client_workload(p: &People, flist: &(String, String, String)) -> Value {
    json!({
        "name": "client",
        "kind": "container",
        "flist": {
            "url": flist.0,
            "sha256": flist.1,
            "stores": [flist.2],
            "publishers": [p.publisher.public()]
        },
        "entrypoint": ["/bin/sleep", "3600"],
        "cpu": 1,
        "memory_mib": 32,
        "network": "net"
    })
}

/// A TCP echo round trip from the network namespace of process `pid`.
fn echo_from(pid: i32, addr: &str, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let payload = payload.to_vec();
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(&payload)?;
        let mut back = vec![0u8; payload.len()];
        s.read_exact(&mut back)?;
        Ok(back)
    })
    .join()
    .unwrap()
}

/// The pid of the node's only VM's QEMU, from its run directory.
fn qemu_pid(node: &Node) -> Option<i32> {
    let vms = node.state().join("vms");
    std::fs::read_dir(vms).ok()?.flatten().find_map(|e| {
        std::fs::read_to_string(e.path().join("qemu.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    })
}

fn vm_dirs(node: &Node) -> usize {
    std::fs::read_dir(node.state().join("vms"))
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0)
}

fn vdisks(node: &Node) -> usize {
    let pools = node.dir.path().join("pools");
    std::fs::read_dir(pools)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|pool| std::fs::read_dir(pool.path().join("vdisks")).ok())
        .map(|d| d.count())
        .sum()
}

fn console_shows(s: &Value, needle: &str) -> bool {
    s["workloads"]["vm"]["log_tail"]
        .as_array()
        .is_some_and(|lines| {
            lines
                .iter()
                .any(|l| l.as_str().unwrap_or("").contains(needle))
        })
}

#[test]
fn a_vm_contract_runs_answers_its_tenant_only_restarts_and_is_cancelled_cleanly() {
    let test = "a_vm_contract_runs_answers_its_tenant_only_restarts_and_is_cancelled_cleanly";
    if !vm_ready(test) {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let vm_flist = pack(&node.dir.path().join("vmfl"), &sample_vm(), &p.publisher);
    let busybox = busybox_flist(node.dir.path(), &p.publisher);
    let (a, b) = (node.id("vm"), node.id("other"));
    let doc = signed_contract(
        &p,
        key,
        &a,
        1,
        "10.84.0.0/24",
        vec![vm_workload(&p, &vm_flist), client_workload(&p, &busybox)],
    );
    node.publish(&record(&p, key, &doc));
    let other = signed_contract(
        &p,
        key,
        &b,
        1,
        "10.85.0.0/24",
        vec![client_workload(&p, &busybox)],
    );
    node.publish(&record(&p, key, &other));

    // Published -> running; the guest's console line reaches the status record.
    let s = node.wait_status(&a, "the guest's console line", |s| {
        s["state"] == "ok" && console_shows(s, "vm-echo: vm eth0 10.84.0.2/24 up")
    });
    assert_eq!(s["workloads"]["vm"]["address"], "10.84.0.2", "{s:#}");
    assert_eq!(s["workloads"]["vm"]["runtime"], "qemu/tcg", "{s:#}");
    node.wait_status(&a, "the guest's disks", |s| {
        console_shows(s, "disk vda 32 MiB") && console_shows(s, "disk vdb")
    });
    node.wait_status(&b, "ok", |s| s["state"] == "ok");

    // Its tenant's container reaches the guest's echo port; the other tenant's cannot.
    let client = node.container_pid(&format!("{a}.client")).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        match echo_from(client, "10.84.0.2:7", b"hello VM") {
            Ok(back) => {
                assert_eq!(back, b"hello VM");
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "no echo from the VM: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let stranger = node.container_pid(&format!("{b}.client")).unwrap();
    assert!(
        echo_from(stranger, "10.84.0.2:7", b"x").is_err(),
        "another tenant reached the VM"
    );

    // kill -9 of zosd, start again: the same QEMU is found, not started twice.
    let first = qemu_pid(&node).expect("a QEMU pidfile");
    node.kill9();
    node.start();
    node.wait_status(&a, "ok after zosd restarted", |s| s["state"] == "ok");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(qemu_pid(&node), Some(first), "QEMU started twice");
    assert!(alive(first));

    // kill -9 of QEMU: restarted with backoff, counted, the guest boots again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    node.wait_status(&a, "restarted", |s| {
        s["workloads"]["vm"]["restarts"].as_u64() >= Some(1)
            && s["workloads"]["vm"]["state"] == "running"
    });
    let second = qemu_pid(&node).unwrap();
    assert_ne!(first, second);
    assert!(alive(second));

    // Cancel: QEMU gone, its run directory, tap and root vdisk too.
    node.publish(&cancel_record(&p, key, &a, 2));
    node.wait_status(&a, "cancelled", |s| s["state"] == "cancelled");
    assert!(!alive(second), "QEMU survived the cancel");
    assert_eq!(vm_dirs(&node), 0, "VM run directories left");
    assert_eq!(vdisks(&node), 0, "vdisks left");
    let taps = std::process::Command::new("ip")
        .args(["-o", "link", "show", "type", "tun"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&taps.stdout).contains(&node.world.prefix),
        "a tap of ours is left"
    );
}

#[test]
fn a_tampered_vm_kernel_is_refused_before_qemu_starts() {
    let test = "a_tampered_vm_kernel_is_refused_before_qemu_starts";
    if !vm_ready(test) {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let dir = node.dir.path().join("vmfl");
    let flist = pack(&dir, &sample_vm(), &p.publisher);

    // The kernel's blocks: pack the kernel alone into a scratch store (blocks are
    // content-addressed, so the ids are the same), then flip a byte in one of them.
    let scratch = node.dir.path().join("kernel-only");
    std::fs::create_dir_all(scratch.join("root/boot")).unwrap();
    std::fs::copy(
        sample_vm().join("boot/vmlinux"),
        scratch.join("root/boot/vmlinux"),
    )
    .unwrap();
    pack(&scratch, &scratch.join("root"), &p.publisher);
    let shard = std::fs::read_dir(scratch.join("store"))
        .unwrap()
        .flatten()
        .next()
        .unwrap();
    let block = std::fs::read_dir(shard.path())
        .unwrap()
        .flatten()
        .next()
        .unwrap();
    let victim = dir
        .join("store")
        .join(shard.file_name())
        .join(block.file_name());
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();

    let id = node.id("bad");
    let doc = signed_contract(
        &p,
        key,
        &id,
        1,
        "10.86.0.0/24",
        vec![vm_workload(&p, &flist)],
    );
    node.publish(&record(&p, key, &doc));
    let s = node.wait_status(&id, "error", |s| s["state"] == "error");
    let message = s["message"].as_str().unwrap_or_default();
    assert!(message.contains("block"), "{s:#}");
    assert_eq!(vm_dirs(&node), 0, "QEMU was started for a tampered kernel");
    assert_eq!(qemu_pid(&node), None);
}
