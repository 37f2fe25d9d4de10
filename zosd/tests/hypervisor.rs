//! Which QEMU a node runs (zosd/src/hypervisor.rs, docs/vm.md "Which QEMU a node
//! runs"), on real `zosd run` nodes (tests/common) with real QEMU (TCG here): a node
//! whose configured QEMU does not exist, started from a release slot (`ZOSD_SLOT`, as
//! PID 1 starts it) whose signed release names a `qemu` part (the host's QEMU collected
//! by `zos_release::hypervisor::collect`, packed into a `dir://` store under the node's
//! store root, signed by a publisher), runs the sample VM from that bundle, fetched and
//! verified at the first VM start into `<state>/hypervisor/<sha256>`.
//!
//! Attacks and refusals (each: the error in the contract's status, nothing of the VM
//! started):
//! - a block of the `qemu` part swapped in the store: `tampered_part`, no bundle
//!   directory, no QEMU;
//! - no system QEMU and no release part: the typed "this node has no hypervisor"
//!   refusal, permanent; no tree, no disk, no QEMU.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use common::*;
use serde_json::{json, Value};
use zos_contract::deployment::FlistRef;
use zos_contract::{Digest, SecretKey};
use zos_flist::{PackOptions, Router};
use zos_init::slots;
use zos_release::{Parts, Release, SignedRelease};

/// zosd inherits the test process's environment: a test that sets `ZOSD_SLOT` for its
/// node holds this while it starts it, and every test holds it while starting its node.
static ENV: Mutex<()> = Mutex::new(());

/// The release the slot holds.
const VERSION: &str = "99.1.0";
/// A configured QEMU that does not exist: the node's image holds none.
const NO_QEMU: &str = "/nonexistent/zt-qemu-system-x86_64";

/// The sample VM's boot files, built by `cargo xtask flist vm`.
fn sample_vm() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/flists/vm/rootfs")
}

fn host_qemu() -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file())
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

/// The host's QEMU collected as a hypervisor bundle, once per test binary (in the
/// target's scratch directory: it is 49 MiB).
fn bundle() -> &'static Path {
    static BUNDLE: OnceLock<PathBuf> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("zt-hypervisor-bundle");
        let _ = std::fs::remove_dir_all(&out);
        let qemu = host_qemu().expect("vm_ready found it");
        zos_release::hypervisor::collect(&qemu, &out)
            .expect("the host's QEMU collected")
            .dir
    })
}

/// Packs `tree` as a flist `<dir>/<name>.fl` into the `dir://` store `<dir>/store`,
/// signed by `publisher`.
fn part(dir: &Path, name: &str, tree: &Path, publisher: &SecretKey) -> FlistRef {
    let store = format!("dir://{}", dir.join("store").display());
    let fl = dir.join(format!("{name}.fl"));
    zos_flist::pack(
        tree,
        &fl,
        &Router::parse(std::slice::from_ref(&store)).unwrap(),
        &PackOptions::default(),
    )
    .unwrap();
    zos_flist::sign_file(&fl, publisher).unwrap();
    FlistRef {
        url: format!("dir://{}", fl.display()),
        sha256: Digest::of(&std::fs::read(&fl).unwrap()),
        stores: vec![store],
        publishers: vec![publisher.public()],
    }
}

/// The release key the node pins.
fn release_key() -> SecretKey {
    SecretKey::from_seed([44; 32])
}

/// A node pinning [`release_key`] whose configured QEMU does not exist.
fn node_without_qemu() -> Node {
    Node::with_lines(
        512,
        &format!(
            "[vm]\nqemu = \"{NO_QEMU}\"\n[release]\nkeys = [\"{}\"]\n",
            release_key().public()
        ),
    )
}

/// The slot `<state>/slots/<VERSION>` as `install_release` leaves it (what PID 1's
/// `check_slot` reads before it starts the slot's agent with `ZOSD_SLOT`): the signed
/// release record (an agent part and, if given, `qemu`), the agent's binary and its
/// sha256. Returns the `qemu` part's `.fl` and store directory.
fn install_slot(node: &Node, qemu: Option<&Path>) -> Option<(PathBuf, PathBuf)> {
    let publisher = SecretKey::from_seed([45; 32]);
    let release_dir = node.dir.path().join("release");
    let agent_src = release_dir.join("agent-src");
    std::fs::create_dir_all(&agent_src).unwrap();
    let agent: Vec<u8> = b"#!/bin/false\nzt agent of the test release\n".to_vec();
    std::fs::write(agent_src.join("zosd"), &agent).unwrap();
    let zosd = part(&release_dir, "zosd", &agent_src, &publisher);
    let qemu_part = qemu.map(|tree| part(&release_dir, "qemu", tree, &publisher));
    let key = release_key();
    let release = Release {
        version: VERSION.parse().unwrap(),
        parts: Parts {
            zosd,
            qemu: qemu_part,
        },
        rollback: false,
        signed_at: 1_780_000_000,
        key: key.public(),
    };
    let signed = SignedRelease::sign(release, &key);
    let slot = node.state().join("slots").join(VERSION);
    std::fs::create_dir_all(slot.join("zosd")).unwrap();
    std::fs::write(
        slot.join(zos_release::slot::RECORD),
        serde_json::to_vec(&signed.to_value()).unwrap(),
    )
    .unwrap();
    std::fs::write(slot.join(zos_release::slot::AGENT), &agent).unwrap();
    std::fs::write(
        slot.join(zos_release::slot::AGENT_SHA256),
        format!("{}\n", Digest::of(&agent)),
    )
    .unwrap();
    let pinned = [key.public()].into_iter().collect();
    zos_release::check_slot(&node.state().join("slots"), VERSION, &pinned)
        .expect("the slot verifies as PID 1 checks it");
    qemu.map(|_| (release_dir.join("qemu.fl"), release_dir.join("store")))
}

/// Starts `node` as PID 1 starts a slot's agent: with `ZOSD_SLOT=<VERSION>`.
fn start_from_slot(node: &mut Node) -> zos_contract::PublicKey {
    let env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var(slots::SLOT_ENV, VERSION);
    let key = node.start();
    std::env::remove_var(slots::SLOT_ENV);
    drop(env);
    key
}

/// Starts `node` as the image's agent (no `ZOSD_SLOT`).
fn start_from_image(node: &mut Node) -> zos_contract::PublicKey {
    let env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    assert!(std::env::var_os(slots::SLOT_ENV).is_none());
    let key = node.start();
    drop(env);
    key
}

/// Packs the sample VM into a signed flist under the node's dir.
fn vm_flist(node: &Node, p: &People) -> (String, String, String) {
    let dir = node.dir.path().join("vmfl");
    let store_url = format!("dir://{}", dir.join("store").display());
    let fl = dir.join("vm.fl");
    let router = Router::parse(std::slice::from_ref(&store_url)).unwrap();
    zos_flist::pack(&sample_vm(), &fl, &router, &PackOptions::default()).unwrap();
    zos_flist::sign_file(&fl, &p.publisher).unwrap();
    let sha = Digest::of(&std::fs::read(&fl).unwrap()).to_hex();
    (format!("dir://{}", fl.display()), sha, store_url)
}

/// Publishes contract `<tag>-name`: the sample VM on `subnet`. Returns its id.
fn publish_vm(
    node: &Node,
    p: &People,
    key: zos_contract::PublicKey,
    name: &str,
    subnet: &str,
) -> String {
    let flist = vm_flist(node, p);
    let vm: Value = json!({
        "name": "vm",
        "kind": "vm",
        "flist": flist_ref(p, &flist),
        "env": {"ECHO_PORT": "7"},
        "cpu": 1,
        "memory_mib": 128,
        "disk_mib": 32,
        "network": "net"
    });
    let id = node.id(name);
    let doc = signed_contract(p, key, &id, 1, subnet, vec![vm]);
    node.publish(&record(p, key, &doc));
    id
}

/// The VM run directories of the node (one per VM QEMU was prepared for).
fn vm_dirs(node: &Node) -> usize {
    std::fs::read_dir(node.state().join("vms"))
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0)
}

/// The pid of the node's only VM's QEMU, from its run directory.
fn qemu_pid(node: &Node) -> Option<i32> {
    std::fs::read_dir(node.state().join("vms"))
        .ok()?
        .flatten()
        .find_map(|e| {
            std::fs::read_to_string(e.path().join("qemu.pid"))
                .ok()?
                .trim()
                .parse()
                .ok()
        })
}

/// Processes whose executable or command line names a file under `dir`.
fn processes_under(dir: &Path) -> Vec<i32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            exe.is_some_and(|e| e.starts_with(dir))
                || cmd.windows(needle.len()).any(|w| w == needle)
        })
        .collect()
}

/// What is in the node's bundle directory (`<state>/hypervisor`).
fn bundles(node: &Node) -> Vec<String> {
    std::fs::read_dir(node.state().join("hypervisor"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until a console line of the node's VM contains `needle`.
fn wait_console(node: &Node, needle: &str) {
    node.wait_for(&format!("{needle:?} on the VM's console"), || {
        std::fs::read_dir(node.state().join("vms"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path().join("console.log")).ok())
            .any(|text| text.lines().any(|l| l.contains(needle)))
            .then_some(())
    });
}

/// The node's log line saying which QEMU it uses.
fn qemu_line(node: &Node) -> String {
    node.wait_for("the line saying which QEMU the node runs", || {
        node.log()
            .lines()
            .find(|l| l.contains("the node's QEMU"))
            .map(str::to_owned)
    })
}

#[test]
fn a_node_without_qemu_runs_a_vm_from_its_releases_hypervisor_part() {
    let test = "a_node_without_qemu_runs_a_vm_from_its_releases_hypervisor_part";
    if !vm_ready(test) {
        return;
    }
    let p = people();
    let mut node = node_without_qemu();
    let (fl, _) = install_slot(&node, Some(bundle())).unwrap();
    let sha = Digest::of(&std::fs::read(&fl).unwrap()).to_hex();
    let key = start_from_slot(&mut node);

    let started = Instant::now();
    let id = publish_vm(&node, &p, key, "hv", "10.92.0.0/24");
    let s = node.wait_status(&id, "ok", |s| s["state"] != "provisioning");
    assert_eq!(s["state"], "ok", "{s:#}\nzosd log:\n{}", node.log());
    wait_console(&node, "vm-echo: vm eth0 10.92.0.2/24 up");
    eprintln!(
        "{test}: published to the guest's console line in {:.1} s (the bundle fetched and verified first)",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(bundles(&node), vec![sha.clone()], "the bundle's directory");
    let dir = node.state().join("hypervisor").join(&sha);
    let pid = qemu_pid(&node).expect("a QEMU pidfile");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    eprintln!("{test}: QEMU {pid} runs {}", exe.display());
    // Confined QEMU sees the bundle at its own path: the loader is the bundle's.
    assert!(
        exe.starts_with(dir.canonicalize().unwrap()),
        "QEMU is not the bundle's: {}",
        exe.display()
    );
    assert!(
        node.log().contains("fetching the hypervisor bundle"),
        "{}",
        node.log()
    );
    let line = qemu_line(&node);
    eprintln!("{test}: {line}");
    assert!(line.contains("release") && line.contains(VERSION), "{line}");
}

/// Attack: one block of the release's `qemu` part (libc's first) replaced in the store
/// by another block of the same store. The VM is refused `tampered_part`, in the
/// contract's status; no bundle directory is left and no QEMU ran.
#[test]
fn attack_a_tampered_hypervisor_part_is_refused_and_starts_nothing() {
    let test = "attack_a_tampered_hypervisor_part_is_refused_and_starts_nothing";
    if !vm_ready(test) {
        return;
    }
    let p = people();
    let mut node = node_without_qemu();
    let (fl, store) = install_slot(&node, Some(bundle())).unwrap();
    let block = |path: &str| {
        let flist = zos_flist::Flist::open(&fl).unwrap();
        let id = flist.entries[flist.lookup(path).unwrap()].blocks[0].id_hex();
        store.join(&id[..2]).join(&id)
    };
    std::fs::write(
        block("lib/libc.so.6"),
        std::fs::read(block("lib/libz.so.1")).unwrap(),
    )
    .unwrap();
    let key = start_from_slot(&mut node);

    let id = publish_vm(&node, &p, key, "tamper", "10.93.0.0/24");
    let s = node.wait_status(&id, "refused tampered_part", |s| {
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("tampered_part"))
    });
    let message = s["message"].as_str().unwrap_or_default();
    eprintln!("{test}: state {} message {message}", s["state"]);
    assert_eq!(s["state"], "error", "{s:#}");
    assert!(message.contains("libc.so.6"), "{s:#}");
    assert_eq!(
        bundles(&node),
        Vec::<String>::new(),
        "left in the bundle dir"
    );
    assert_eq!(vm_dirs(&node), 0, "a VM run directory was made");
    assert_eq!(qemu_pid(&node), None, "QEMU started");
    assert_eq!(
        processes_under(&node.state().join("hypervisor")),
        Vec::<i32>::new(),
        "a process runs from the bundle directory"
    );
    eprintln!("{test}: {}", qemu_line(&node));
}

/// No system QEMU and a node that runs no release (the image's agent): a VM contract is
/// refused for good with the typed error, saying what is missing; nothing of the VM is
/// made. A container contract on the same node still runs.
#[test]
fn without_any_qemu_a_vm_is_refused_and_containers_still_run() {
    let test = "without_any_qemu_a_vm_is_refused_and_containers_still_run";
    if !vm_ready(test) {
        return;
    }
    let p = people();
    let mut node = node_without_qemu();
    let key = start_from_image(&mut node);

    let id = publish_vm(&node, &p, key, "nohv", "10.94.0.0/24");
    let s = node.wait_status(&id, "refused", |s| s["state"] != "provisioning");
    let message = s["message"].as_str().unwrap_or_default();
    eprintln!("{test}: state {} message {message}", s["state"]);
    assert_eq!(s["state"], "error", "{s:#}");
    assert!(
        message.contains("this node has no hypervisor") && message.contains(NO_QEMU),
        "{s:#}"
    );
    assert!(message.contains("no release"), "{s:#}");
    assert!(
        node.log().contains("\"permanent\":true"),
        "not refused for good: {}",
        node.log()
    );
    assert_eq!(vm_dirs(&node), 0, "a VM run directory was made");
    assert_eq!(qemu_pid(&node), None, "QEMU started");
    let trees: Vec<PathBuf> = std::fs::read_dir(node.dir.path().join("pools"))
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|pool| {
            std::fs::read_dir(pool.path().join("volumes"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|v| v.path())
        .filter(|v| {
            v.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmtree-"))
        })
        .collect();
    assert_eq!(trees, Vec::<PathBuf>::new(), "a VM tree was made");

    // Containers still run.
    let busybox = busybox_flist(node.dir.path(), &p.publisher);
    let c = node.id("c");
    node.publish(&record(&p, key, &contract(&p, key, &c, 1, &busybox, 32)));
    node.wait_status(&c, "ok", |s| s["state"] == "ok");
    let line = qemu_line(&node);
    eprintln!("{test}: {line}");
    assert!(line.contains("none") && line.contains(NO_QEMU), "{line}");
}
