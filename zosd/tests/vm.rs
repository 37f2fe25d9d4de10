//! Micro-VM contracts on a real node (zosd on a loop-file pool in `zt-` namespaces of
//! its own) with real QEMU (TCG here): the sample VM (`cargo xtask flist vm`: the
//! Debian kernel and the vm-echo init) goes from published to running, answers TCP echo
//! to a container of its tenant and not to another tenant, is found again (not started
//! twice) by a zosd killed and started again, is restarted after kill -9 of its QEMU,
//! and leaves nothing behind when cancelled; a VM flist whose kernel was
//! tampered is refused before QEMU starts.
//!
//! Attacks (each refused with its error, nothing of the host reached):
//! - a VM flist whose `/boot/vmlinux` is a symlink to a host file;
//! - a `vm-disk.raw` that a container of the contract planted in its volume as a
//!   symlink to a host file, before a VM mounting that volume is added;
//! - and QEMU itself: not root, under its seccomp filter, in a device cgroup that
//!   denies block devices, in a mount view without the host's `/root` or the state dir.

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
    privileged(test)
        && zos_testkit::Needs::none()
            .file(
                sample_vm().join("boot/vmlinux"),
                "the sample VM (cargo xtask flist vm)",
            )
            .bin_from("qemu-system-x86_64", "qemu-system-x86")
            .check(test)
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
        "flist": flist_ref(p, flist),
        "env": {"ECHO_PORT": "7"},
        "cpu": 1,
        "memory_mib": 128,
        "disk_mib": 32,
        "network": "net",
        "mounts": [{"volume": "data", "path": "/data"}]
    })
}

/// Publishes contract `<tag>-name` (version 1): one VM from `flist` on `subnet`.
/// Returns the contract id.
fn publish_vm(
    node: &Node,
    p: &People,
    key: zos_contract::PublicKey,
    name: &str,
    subnet: &str,
    flist: &(String, String, String),
) -> String {
    let id = node.id(name);
    let doc = signed_contract(p, key, &id, 1, subnet, vec![vm_workload(p, flist)]);
    node.publish(&record(p, key, &doc));
    id
}

fn client_workload(p: &People, flist: &(String, String, String)) -> Value {
    json!({
        "name": "client",
        "kind": "container",
        "flist": flist_ref(p, flist),
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

/// The first line of zosd's log after byte `from` that satisfies `pred`.
fn wait_log(node: &Node, from: usize, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = node.log();
        if let Some(line) = log
            .get(from..)
            .and_then(|new| new.lines().find(|l| pred(l)))
        {
            return line.to_string();
        }
        assert!(Instant::now() < deadline, "no {what} in zosd's log:\n{log}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the console of the node's VM (its `console.log` in the run directory;
/// status records in the notary carry no log tail) has a line with `needle`.
fn wait_console(node: &Node, needle: &str) {
    let vms = node.state().join("vms");
    let deadline = Instant::now() + WAIT;
    loop {
        let text: String = std::fs::read_dir(&vms)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("console.log")).ok())
            .collect();
        if text.lines().any(|l| l.contains(needle)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} on the VM's console:\n{text}\nzosd log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    let s = node.wait_status(&a, "ok", |s| s["state"] == "ok");
    wait_console(&node, "vm-echo: vm eth0 10.84.0.2/24 up");
    assert_eq!(s["workloads"]["vm"]["address"], "10.84.0.2", "{s:#}");
    assert_eq!(s["workloads"]["vm"]["runtime"], "qemu/tcg", "{s:#}");
    wait_console(&node, "disk vda 32 MiB");
    wait_console(&node, "disk vdb");
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

    // kill -9 of zosd, start again: the same QEMU is found, not started twice. The
    // new zosd says so itself: its re-adoption logs "VM running" with that pid.
    let first = qemu_pid(&node).expect("a QEMU pidfile");
    node.kill9();
    let before = node.log().len();
    node.start();
    node.wait_status(&a, "ok after zosd restarted", |s| s["state"] == "ok");
    let adopted = wait_log(&node, before, "the restarted zosd's VM line", |l| {
        l.contains("VM running")
    });
    assert!(
        adopted.contains(&format!("\"pid\":{first}")),
        "QEMU started twice: {adopted}"
    );
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

    let id = publish_vm(&node, &p, key, "bad", "10.86.0.0/24", &flist);
    let s = node.wait_status(&id, "error", |s| s["state"] == "error");
    let message = s["message"].as_str().unwrap_or_default();
    assert!(message.contains("block"), "{s:#}");
    assert_eq!(vm_dirs(&node), 0, "QEMU was started for a tampered kernel");
    assert_eq!(qemu_pid(&node), None);
}

/// A host file's bytes and mtime, to show it was not touched.
fn fingerprint(path: &Path) -> (Vec<u8>, std::time::SystemTime) {
    let bytes = std::fs::read(path).unwrap();
    let mtime = std::fs::metadata(path).unwrap().modified().unwrap();
    (bytes, mtime)
}

/// Attack: a VM flist whose `/boot/vmlinux` is a symlink to a file of the host (here a
/// bootable kernel, so that a host file loaded as the guest's kernel would show as a
/// running VM). Refused with an error naming the link; no QEMU, no run directory.
#[test]
fn attack_a_vm_flist_kernel_linked_to_a_host_file_is_refused() {
    let test = "attack_a_vm_flist_kernel_linked_to_a_host_file_is_refused";
    if !vm_ready(test) {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let secret = node.dir.path().join("zt-host-secret-vmlinux");
    std::fs::copy(sample_vm().join("boot/vmlinux"), &secret).unwrap();
    let before = fingerprint(&secret);
    let root = node.dir.path().join("linkvm/root");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    std::os::unix::fs::symlink(&secret, root.join("boot/vmlinux")).unwrap();
    std::fs::copy(
        sample_vm().join("boot/initrd.img"),
        root.join("boot/initrd.img"),
    )
    .unwrap();
    let flist = pack(&node.dir.path().join("linkvm"), &root, &p.publisher);

    let id = publish_vm(&node, &p, key, "link", "10.87.0.0/24", &flist);
    let s = node.wait_status(&id, "refused", |s| s["state"] != "provisioning");
    let message = s["message"].as_str().unwrap_or_default();
    eprintln!("{test}: {message}");
    assert!(
        s["state"] == "error"
            && message.contains("boot/vmlinux")
            && message.contains("symbolic link"),
        "{s:#}"
    );
    assert_eq!(vm_dirs(&node), 0, "a VM run directory was made: {s:#}");
    assert_eq!(qemu_pid(&node), None, "QEMU started on a host file");
    assert_eq!(fingerprint(&secret), before, "the host file changed");
}

/// Attack: a container of the contract plants `vm-disk.raw -> <host file>` in its
/// volume; then an update adds a VM mounting that volume. Refused with an error
/// naming the file; no QEMU; the host file keeps its bytes and mtime.
#[test]
fn attack_a_volume_disk_planted_as_a_link_is_refused() {
    let test = "attack_a_volume_disk_planted_as_a_link_is_refused";
    if !vm_ready(test) {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let host = node.dir.path().join("zt-host-file.raw");
    std::fs::write(&host, vec![0x5a; 4 << 20]).unwrap();
    let before = fingerprint(&host);
    let busybox = busybox_flist(node.dir.path(), &p.publisher);
    let vm_flist = pack(&node.dir.path().join("vmfl"), &sample_vm(), &p.publisher);
    let planter = json!({
        "name": "planter",
        "kind": "container",
        "flist": {
            "url": busybox.0,
            "sha256": busybox.1,
            "stores": [busybox.2],
            "publishers": [p.publisher.public()]
        },
        "entrypoint": ["/bin/sh", "-c", format!(
            "/bin/busybox ln -s {} /data/vm-disk.raw; echo planted; exec sleep 3600",
            host.display()
        )],
        "cpu": 1,
        "memory_mib": 32,
        "network": "net",
        "mounts": [{"volume": "data", "path": "/data"}]
    });
    let id = node.id("plant");
    let v1 = signed_contract(&p, key, &id, 1, "10.88.0.0/24", vec![planter.clone()]);
    node.publish(&record(&p, key, &v1));
    node.wait_status(&id, "ok", |s| s["state"] == "ok");
    let volume = format!("{id}.data");
    let planted = || {
        std::fs::read_dir(node.dir.path().join("pools"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|pool| {
                pool.path()
                    .join("volumes")
                    .join(&volume)
                    .join("vm-disk.raw")
            })
            .find(|p| {
                p.symlink_metadata()
                    .is_ok_and(|m| m.file_type().is_symlink())
            })
    };
    let deadline = Instant::now() + WAIT;
    let link = loop {
        if let Some(link) = planted() {
            break link;
        }
        assert!(Instant::now() < deadline, "the container planted no link");
        std::thread::sleep(Duration::from_millis(20));
    };

    let v2 = signed_contract(
        &p,
        key,
        &id,
        2,
        "10.88.0.0/24",
        vec![planter, vm_workload(&p, &vm_flist)],
    );
    node.publish(&record(&p, key, &v2));
    let s = node.wait_status(&id, "refused", |s| {
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("vm-disk.raw"))
            || s["workloads"]["vm"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("vm-disk.raw"))
    });
    let text = s.to_string();
    eprintln!("{test}: {}", s["message"]);
    assert!(text.contains("symbolic link"), "{s:#}");
    assert_eq!(vm_dirs(&node), 0, "a VM run directory was made: {s:#}");
    assert_eq!(qemu_pid(&node), None, "QEMU started on a host file");
    assert_eq!(fingerprint(&host), before, "the host file changed");
    assert!(
        link.symlink_metadata().unwrap().file_type().is_symlink(),
        "the planted link was replaced"
    );
}

/// The devices cgroup (v1) of a process, as a directory.
fn devices_cgroup(pid: i32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctrls
            .split(',')
            .any(|c| c == "devices")
            .then(|| path.to_string())
    })?;
    Some(Path::new("/sys/fs/cgroup/devices").join(rel.trim_start_matches('/')))
}

/// Opens `dev` from a thread moved into the devices cgroup `cgroup` (v1 moves single
/// threads), then moves the thread back to where it came from.
fn open_from_cgroup(cgroup: &Path, dev: &Path) -> std::io::Result<()> {
    let (cgroup, dev) = (cgroup.to_path_buf(), dev.to_path_buf());
    std::thread::spawn(move || {
        let tid = nix::unistd::gettid().to_string();
        let home = devices_cgroup(std::process::id() as i32).unwrap();
        std::fs::write(cgroup.join("tasks"), &tid).unwrap();
        let opened = std::fs::File::open(&dev).map(|_| ());
        std::fs::write(home.join("tasks"), &tid).unwrap();
        opened
    })
    .join()
    .unwrap()
}

/// Attack surface of QEMU itself: it runs as a uid that is not 0, with seccomp mode 2
/// and no_new_privs; a thread in its devices cgroup cannot open the node's pool (a
/// block device); its mount view shows neither the host's /root nor the state dir.
#[test]
fn attack_qemu_is_confined() {
    let test = "attack_qemu_is_confined";
    if !vm_ready(test) {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let vm_flist = pack(&node.dir.path().join("vmfl"), &sample_vm(), &p.publisher);
    let id = publish_vm(&node, &p, key, "conf", "10.89.0.0/24", &vm_flist);
    node.wait_status(&id, "ok", |s| s["state"] == "ok");
    wait_console(&node, "vm-echo: vm eth0 10.89.0.2/24 up");
    let pid = qemu_pid(&node).expect("a QEMU pidfile");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let mut failures = Vec::new();
    if field("Uid:").contains(&"0") || field("Gid:").contains(&"0") {
        failures.push(format!(
            "QEMU runs as root: Uid {:?} Gid {:?}",
            field("Uid:"),
            field("Gid:")
        ));
    }
    if field("Seccomp:") != ["2"] {
        failures.push(format!("QEMU's seccomp mode is {:?}", field("Seccomp:")));
    }
    if field("NoNewPrivs:") != ["1"] {
        failures.push(format!("QEMU's NoNewPrivs is {:?}", field("NoNewPrivs:")));
    }
    if field("CapEff:") != ["0000000000000000"] {
        failures.push(format!(
            "QEMU's effective capabilities {:?}",
            field("CapEff:")
        ));
    }

    // The pool's loop device, opened from QEMU's devices cgroup.
    let pool = zos_storage::loopdev::find(&node.dir.path().join("zt-disk0.img"))
        .unwrap()
        .expect("the pool's loop device");
    let cgroup = devices_cgroup(pid).expect("QEMU's devices cgroup");
    match open_from_cgroup(&cgroup, &pool) {
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EPERM as i32) => {}
        other => failures.push(format!(
            "{} from QEMU's devices cgroup {}: {other:?}",
            pool.display(),
            cgroup.display()
        )),
    }

    // Its mount view.
    let view = PathBuf::from(format!("/proc/{pid}/root"));
    if view.join("root").exists() {
        failures.push("the host's /root is in QEMU's mount view".into());
    }
    let state = view.join(node.state().strip_prefix("/").unwrap());
    let seen: Vec<String> = std::fs::read_dir(&state)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if seen.iter().any(|n| n != "vms") {
        failures.push(format!("QEMU sees the state dir: {seen:?}"));
    }
    if view
        .join(node.dir.path().strip_prefix("/").unwrap())
        .join("zosd.log")
        .exists()
    {
        failures.push("QEMU sees zosd's log".into());
    }
    assert!(
        failures.is_empty(),
        "QEMU is not confined:\n{}",
        failures.join("\n")
    );
    eprintln!(
        "{test}: QEMU {pid}: Uid {:?}, Seccomp {:?}, NoNewPrivs {:?}; {} from its devices cgroup: EPERM; its view of the state dir: {seen:?}",
        field("Uid:"),
        field("Seccomp:"),
        field("NoNewPrivs:"),
        pool.display()
    );
}

/// The VM trees on the node's pools: `(subvolume path, its quota)` of every
/// `vmtree-*` volume, read through zos-storage from the pools zosd mounted.
fn vm_trees(node: &Node) -> Vec<(PathBuf, u64)> {
    let root = node.dir.path().join("pools");
    let pools = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|p| zos_storage::Pool {
            label: p.file_name().to_string_lossy().into_owned(),
            kind: zos_storage::PoolKind::Ssd,
            disk: None,
            device: None,
            mountpoint: p.path(),
            status: zos_storage::PoolStatus::Online,
        })
        .collect();
    let storage = zos_storage::Storage::with_pools(zos_storage::Kernel, root, pools);
    storage
        .volumes()
        .unwrap()
        .into_iter()
        .filter(|v| v.name.starts_with("vmtree-"))
        .map(|v| (v.path, v.size))
        .collect()
}

/// #13 item 5: a VM's kernel tree (the unpacked flist it boots from) is on a pool, in
/// a subvolume of its own with a quota (`vmtree-<id>`, 256 MiB for a VM of 32 MiB of
/// disk), not under the state dir (tmpfs on a booted node); the cancel removes it.
#[test]
fn a_vm_kernel_tree_lives_on_the_pool_in_a_quota_subvolume() {
    let test = "a_vm_kernel_tree_lives_on_the_pool_in_a_quota_subvolume";
    if !vm_ready(test) {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let vm_flist = pack(&node.dir.path().join("vmfl"), &sample_vm(), &p.publisher);
    let id = publish_vm(&node, &p, key, "tree", "10.90.0.0/24", &vm_flist);
    node.wait_status(&id, "ok", |s| s["state"] == "ok");
    wait_console(&node, "vm-echo: vm eth0 10.90.0.2/24 up");

    let in_state = zos_testkit::files_named(&node.state(), "vmlinux");
    let trees = vm_trees(&node);
    eprintln!(
        "{test}: vmlinux under the state dir: {in_state:?}; VM trees on the pools: {trees:?}"
    );
    assert_eq!(
        in_state,
        Vec::<PathBuf>::new(),
        "a VM tree under the state dir"
    );
    assert_eq!(trees.len(), 1, "one VM tree subvolume: {trees:?}");
    let (tree, quota) = &trees[0];
    assert_eq!(*quota, 256 << 20, "the VM tree's quota");
    let kernels = zos_testkit::files_named(tree, "vmlinux");
    assert_eq!(
        kernels.len(),
        1,
        "the kernel in the VM's subvolume: {kernels:?}"
    );

    node.publish(&cancel_record(&p, key, &id, 2));
    node.wait_status(&id, "cancelled", |s| s["state"] == "cancelled");
    assert_eq!(
        vm_trees(&node),
        Vec::new(),
        "the VM tree survived the cancel"
    );
    assert_eq!(vdisks(&node), 0, "vdisks left");
}

/// Attack (#13 item 5): a VM flist whose tree is larger than the VM's tree quota (the
/// sample kernel plus a 300 MiB file; a VM of 32 MiB of disk gets 256 MiB). Refused
/// with the flist bound's error before anything is written; no QEMU, no tree on the
/// pool or under the state dir, no vdisk.
#[test]
fn attack_a_vm_tree_beyond_its_quota_is_refused_and_leaves_nothing() {
    let test = "attack_a_vm_tree_beyond_its_quota_is_refused_and_leaves_nothing";
    if !vm_ready(test) {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let root = node.dir.path().join("bigvm/root");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    for f in ["boot/vmlinux", "boot/initrd.img"] {
        std::fs::copy(sample_vm().join(f), root.join(f)).unwrap();
    }
    // Sparse: its blocks are all the same zero block in the store.
    std::fs::File::create(root.join("zt-ballast"))
        .unwrap()
        .set_len(300 << 20)
        .unwrap();
    let flist = pack(&node.dir.path().join("bigvm"), &root, &p.publisher);

    let id = publish_vm(&node, &p, key, "big", "10.91.0.0/24", &flist);
    let s = node.wait_status(&id, "refused", |s| s["state"] != "provisioning");
    let message = s["message"].as_str().unwrap_or_default();
    eprintln!("{test}: state {} message {message}", s["state"]);
    let ballast: Vec<PathBuf> = [node.state(), node.dir.path().join("pools")]
        .iter()
        .flat_map(|d| zos_testkit::files_named(d, "zt-ballast"))
        .collect();
    eprintln!(
        "{test}: ballast on the node: {ballast:?}; VM trees: {:?}",
        vm_trees(&node)
    );
    assert!(
        s["state"] == "error" && message.contains("more than the bound of 268435456"),
        "{s:#}"
    );
    assert_eq!(
        ballast,
        Vec::<PathBuf>::new(),
        "the oversized tree was written"
    );
    assert_eq!(vm_trees(&node), Vec::new(), "a VM tree subvolume is left");
    assert_eq!(vm_dirs(&node), 0, "a VM run directory was made");
    assert_eq!(qemu_pid(&node), None, "QEMU started");
    assert_eq!(vdisks(&node), 0, "a vdisk was made");
}
