//! Nothing lost, nothing emptied: `zosd run` on the real kernel (pools on loop files,
//! containers through youki's libcontainer, a `dir://` notary), attacked where the
//! node keeps its state.
//!
//! - M7: a corrupt kernel-name map is an error: zosd refuses to serve, and the volume
//!   whose long name only the map knows is not collected as an orphan.
//! - H6: a container's root filesystem (tree and upper layer) is on its pool under a
//!   quota of its `disk_mib`: writing past it fails with EDQUOT, nothing else fills.
//! - H3: after a (simulated) reboot with the flist store gone, the workload comes back
//!   from its pool copy.
//! - Issue #13: a volume whose subvolume was deleted while the node was down is
//!   "volume lost", a permanent error; no empty volume is made in its place.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Every copy of the name map zosd may keep: the state home's copies on the pools and
/// a `names.json` under the state dir.
fn name_map_copies(node: &Node) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let legacy = node.state().join("names.json");
    if legacy.exists() {
        out.push(legacy);
    }
    let pools = node.dir.path().join("pools");
    for pool in std::fs::read_dir(pools).into_iter().flatten().flatten() {
        let copy = pool.path().join("zos-state/names");
        if copy.exists() {
            out.push(copy);
        }
    }
    out
}

/// Waits until `done` holds, at most [`WAIT`]; false if it never did.
fn wait_for(mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A contract id of 64 bytes: its volume's node-wide name (`<id>.data`) is longer than
/// a storage name, so the volume's kernel name is a hash only the name map resolves.
fn long_id(node: &Node) -> String {
    let id = node.id("long-");
    format!("{id}{}", "x".repeat(64 - id.len()))
}

/// zosd started by hand: it may refuse to come up, which `Node::start` does not allow.
fn spawn_zosd(node: &mut Node) {
    let child = Command::new(env!("CARGO_BIN_EXE_zosd"))
        .args(["run", "--config"])
        .arg(&node.config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(node.dir.path().join("zosd.log"))
                .unwrap(),
        )
        .spawn()
        .unwrap();
    node.zosd = Some(child);
}

/// The kernel name of the volume holding `file`.
fn volume_holding(node: &Node, file: &str) -> Option<String> {
    let pools = node.dir.path().join("pools");
    std::fs::read_dir(pools)
        .ok()?
        .flatten()
        .flat_map(|pool| {
            std::fs::read_dir(pool.path().join("volumes"))
                .into_iter()
                .flatten()
        })
        .flatten()
        .find(|v| v.path().join(file).is_file())
        .map(|v| v.file_name().to_string_lossy().into_owned())
}

fn volume_dir(node: &Node, volume: &str) -> Option<PathBuf> {
    let pools = node.dir.path().join("pools");
    std::fs::read_dir(pools)
        .ok()?
        .flatten()
        .map(|p| p.path().join("volumes").join(volume))
        .find(|p| p.is_dir())
}

fn has_file(dir: &Option<PathBuf>, file: &str) -> bool {
    dir.as_deref()
        .is_some_and(|d: &Path| d.join(file).is_file())
}

/// M7: a corrupt name map after a restart is an error; no volume is deleted.
#[test]
fn corrupt_name_map_is_an_error_and_no_volume_is_deleted() {
    if !privileged("corrupt_name_map_is_an_error_and_no_volume_is_deleted") {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let id = long_id(&node);
    let doc = contract(&p, key, &id, 1, &flist, 64);
    node.publish(&record(&p, key, &doc));
    node.wait_status(&id, "ok", |s| s["state"] == "ok");
    let mut volume = None;
    assert!(
        wait_for(|| {
            volume = volume_holding(&node, "out");
            volume.is_some()
        }),
        "the workload did not write its volume"
    );
    let volume = volume.unwrap();
    assert!(volume.starts_with("h-"), "a hashed volume name: {volume}");
    node.kill9();

    // The map is corrupted while the node is down.
    let copies = name_map_copies(&node);
    assert!(!copies.is_empty(), "no name map found");
    for c in &copies {
        std::fs::write(c, b"{ not a name map").unwrap();
    }
    let log_before = node.log().len();
    spawn_zosd(&mut node);
    // Either zosd refuses (it exits), or it serves with the map read as empty: wait for
    // whichever comes first (its exit, or its "ready" line).
    let dir = volume_dir(&node, &volume);
    let mut exit = None;
    let settled = wait_for(|| {
        exit = node.zosd.as_mut().unwrap().try_wait().unwrap();
        exit.is_some() || node.log()[log_before..].contains("node agent ready")
    });
    assert!(settled, "zosd neither refused nor came up");
    let log = node.log()[log_before..].to_string();
    assert!(
        exit.is_some(),
        "zosd serves with a corrupt name map (read as empty); quarantined as unknown: {}; \
         the volume is still there: {}",
        log.contains("unknown volume quarantined"),
        has_file(&dir, "out")
    );
    assert!(has_file(&dir, "out"), "the volume {volume} was deleted");
    let exit = exit.expect("zosd exited");
    assert!(!exit.success(), "{exit:?}");
    assert!(
        log.contains("name map"),
        "zosd's refusal names the map:\n{log}"
    );
}

/// The contract of [`rootfs_quota_is_the_workloads_disk_mib`]: `fill` writes 96 MiB into
/// its own root (disk_mib 48) and reports how that ended in the shared volume; `peer`
/// then writes 1 MiB into its root.
fn fill_contract(
    p: &People,
    key: zos_contract::PublicKey,
    id: &str,
    flist: &(String, String, String),
) -> zos_contract::SignedContract {
    let mut fill = shell_workload(
        "fill",
        flist,
        p,
        "if dd if=/dev/zero of=/big bs=1048576 count=96 2>/data/fill.err; \
         then echo wrote-all > /data/fill; else echo refused > /data/fill; fi; \
         exec sleep 3600",
    );
    fill["disk_mib"] = serde_json::json!(48);
    let mut peer = shell_workload(
        "peer",
        flist,
        p,
        "while [ ! -f /data/fill ]; do sleep 0.05; done; \
         dd if=/dev/zero of=/small bs=1048576 count=1 2>/dev/null && echo ok > /data/peer; \
         exec sleep 3600",
    );
    peer["disk_mib"] = serde_json::json!(48);
    signed_contract(p, key, id, 1, "10.71.0.0/24", vec![fill, peer])
}

/// H6: a workload's root filesystem counts against its disk_mib, enforced by quota.
#[test]
fn rootfs_quota_is_the_workloads_disk_mib() {
    if !privileged("rootfs_quota_is_the_workloads_disk_mib") {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let id = node.id("fill");
    node.publish(&record(&p, key, &fill_contract(&p, key, &id, &flist)));
    node.wait_status(&id, "ok", |s| s["state"] == "ok");
    let data = format!("{id}.data");
    let mut fill = None;
    assert!(
        wait_for(|| {
            fill = volume_file(&node, &data, "fill");
            fill.is_some() && volume_file(&node, &data, "peer").is_some()
        }),
        "the workloads did not report; log:\n{}",
        node.log()
    );
    let err = volume_file(&node, &data, "fill.err").unwrap_or_default();
    assert_eq!(
        fill.as_deref(),
        Some("refused\n"),
        "96 MiB written into a root of disk_mib 48 (on the node's RAM or host disk); dd said: {err}"
    );
    assert!(err.contains("quota"), "EDQUOT: {err}");
    // The other workload (its own quota) and the volume still take writes.
    assert_eq!(volume_file(&node, &data, "peer").as_deref(), Some("ok\n"));
    // The 96 MiB went nowhere else: not into the node's state dir.
    let du = Command::new("du")
        .args(["-s", "-m", "-x"])
        .arg(node.state())
        .output()
        .unwrap();
    let mib: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(mib < 32, "{mib} MiB under the state dir");
}

/// H3: a reboot loses the node's RAM (its state dir) and the flist store is gone: the
/// workload comes back from what its pool holds.
#[test]
fn workload_comes_back_from_its_pool_without_the_store() {
    if !privileged("workload_comes_back_from_its_pool_without_the_store") {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let id = node.id("boot");
    let app = format!("{id}.app");
    node.publish(&record(&p, key, &contract(&p, key, &id, 1, &flist, 64)));
    node.wait_status(&id, "ok", |s| s["state"] == "ok");
    let pid = node.container_pid(&app).expect("a container pid");

    // "Reboot": zosd and the container die, the RAM's trees and mounts are gone.
    node.kill9();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_for(|| !alive(pid)), "the container did not die");
    let state = node.state();
    for m in node.mounts().iter().rev() {
        if Path::new(m).starts_with(&state) {
            nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH).unwrap();
        }
    }
    for d in ["rootfs", "flists", "blocks", "workloads"] {
        let _ = std::fs::remove_dir_all(state.join(d));
    }
    // The store and the flist are unreachable.
    let fl = PathBuf::from(flist.0.strip_prefix("dir://").unwrap());
    let store = PathBuf::from(flist.2.strip_prefix("dir://").unwrap());
    std::fs::rename(&fl, fl.with_extension("gone")).unwrap();
    std::fs::rename(&store, store.with_extension("gone")).unwrap();

    let log_before = node.log().len();
    node.start();
    let s = node.wait_status(&id, "running again", |s| {
        s["state"] == "ok" || s["state"] == "error"
    });
    let mut pid2 = None;
    let back = wait_for(|| {
        pid2 = node.container_pid(&app).filter(|p| *p != pid && alive(*p));
        pid2.is_some()
    });
    assert!(
        back,
        "the workload did not come back; status {s:#}\nlog:\n{}",
        &node.log()[log_before..]
    );
    let log = node.log()[log_before..].to_string();
    assert!(!log.contains("fetching"), "the store was asked:\n{log}");
    // Its writes to its own root survived the reboot too (the upper layer is on the
    // pool): the new container's root is the same subvolume.
    let roots: Vec<_> = std::fs::read_dir(node.dir.path().join("pools"))
        .unwrap()
        .flatten()
        .flat_map(|p| {
            std::fs::read_dir(p.path().join("volumes"))
                .unwrap()
                .flatten()
        })
        .filter(|v| v.file_name().to_string_lossy().starts_with("rootfs-"))
        .collect();
    assert_eq!(roots.len(), 1, "one root subvolume");
}

/// A volume deleted behind the node's back is lost, not recreated empty.
#[test]
fn a_deleted_volume_is_lost_not_recreated_empty() {
    if !privileged("a_deleted_volume_is_lost_not_recreated_empty") {
        return;
    }
    use zos_storage::Backend as _;
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let id = node.id("lost");
    let (app, data) = (format!("{id}.app"), format!("{id}.data"));
    node.publish(&record(&p, key, &contract(&p, key, &id, 1, &flist, 64)));
    node.wait_status(&id, "ok", |s| s["state"] == "ok");
    assert!(
        wait_for(|| volume_file(&node, &data, "out").is_some()),
        "the workload did not write its volume"
    );
    let pid = node.container_pid(&app).expect("a container pid");
    // The node goes down with its workload; its volume is deleted meanwhile.
    node.kill9();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(wait_for(|| !alive(pid)), "the container did not die");
    let vol = volume_dir(&node, &data).expect("the volume");
    zos_storage::Kernel.subvol_delete(&vol).unwrap();

    node.start();
    let s = node.wait_status(&id, "volume lost", |s| {
        s["state"] == "error"
            && s["message"]
                .as_str()
                .is_some_and(|m| m.contains("volume lost"))
    });
    assert!(
        volume_dir(&node, &data).is_none(),
        "an empty volume was made: {s:#}"
    );
    let started = node.container_pid(&app).filter(|p| *p != pid && alive(*p));
    assert!(
        started.is_none(),
        "the workload started without its data: {s:#}"
    );
}
