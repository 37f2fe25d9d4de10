//! Nothing lost, nothing emptied: `zosd run` on the real kernel (pools on loop files,
//! containers through youki's libcontainer, a `dir://` notary), attacked where the
//! node keeps its state.
//!
//! - M7: a corrupt kernel-name map is an error: zosd refuses to serve, and the volume
//!   whose long name only the map knows is not collected as an orphan.

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
