//! `zosd run` on the real kernel: pools on loop files, a tenant network inside test
//! namespaces (a "node" namespace with an uplink to an "internet" one), containers from
//! a signed flist through youki's libcontainer, and a `dir://` notary.
//!
//! One contract's life: published -> running (status ok, address, the volume written)
//! -> its process killed -9 -> restarted and counted -> zosd killed -9 and started again
//! -> the container re-adopted, not started twice -> cancelled -> everything gone. And
//! refusals: a tampered flist and an over-capacity contract create nothing.
//!
//! The workload is Debian's busybox-static (a test tool; never part of the image).

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_contract_runs_restarts_survives_zosd_and_is_cancelled_cleanly() {
    if !privileged("a_contract_runs_restarts_survives_zosd_and_is_cancelled_cleanly") {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let id = node.id("busy");
    let (app, data) = (format!("{id}.app"), format!("{id}.data"));
    let doc = contract(&p, key, &id, 1, &flist, 64);
    node.publish(&record(&p, key, &doc));

    // Published -> running.
    let s = node.wait_status(&id, "ok", |s| s["state"] == "ok");
    assert_eq!(s["workloads"]["app"]["address"], "10.70.0.2", "{s:#}");
    let deadline = Instant::now() + WAIT;
    while volume_file(&node, &data, "out").is_none() {
        assert!(
            Instant::now() < deadline,
            "the workload did not write its volume"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(volume_file(&node, &data, "out").unwrap(), "written\n");
    // Its output reaches the status record (no line lost between the runtime process
    // that created it and zosd, which pumps its logs).
    node.wait_status(&id, "showing the output", |s| {
        s["workloads"]["app"]["log_tail"]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x == "hello from the container"))
    });

    // Container root is an unprivileged host id of the contract's own range: its
    // process, and the file it wrote into its volume.
    let pid = node.container_pid(&app).expect("a container pid");
    let uid = host_uid(pid);
    assert!(uid >= 1 << 17, "container root runs as host uid {uid}");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/uid_map"))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["0", &uid.to_string(), "65536"]
    );
    assert_eq!(volume_owner(&node, &data, "out"), Some(uid));

    // kill -9 of the workload: restarted, counted.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = node.wait_status(&id, "restarted", |s| {
        s["state"] == "ok" && s["workloads"]["app"]["restarts"] == 1
    });
    let pid2 = node.container_pid(&app).unwrap();
    assert_ne!(pid, pid2, "{s:#}");

    // kill -9 of zosd, start again: re-adopted, not started twice. The positive event:
    // the new zosd logs that it took over the running container (a line it writes
    // only after it looked at the container, never for one it starts itself).
    let adoptions = |node: &Node| {
        node.log()
            .lines()
            .filter(|l| l.contains("re-adopted a running container") && l.contains(&app))
            .count()
    };
    let before = adoptions(&node);
    node.kill9();
    node.start();
    let deadline = Instant::now() + WAIT;
    while adoptions(&node) <= before {
        assert!(
            Instant::now() < deadline,
            "the restarted zosd did not re-adopt {app}; log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(node.container_pid(&app), Some(pid2), "not started twice");
    assert!(alive(pid2), "the adopted container still runs");
    let s = node.status(&id).unwrap();
    assert_eq!(s["state"], "ok", "{s:#}");

    // Cancel: container, network, volume and mounts gone.
    node.publish(&cancel_record(&p, key, &id, 2));
    node.wait_status(&id, "cancelled", |s| s["state"] == "cancelled");
    // Killed: gone, or a zombie until whoever is its parent now reaps it.
    let deadline = Instant::now() + WAIT;
    while alive(pid2) {
        assert!(Instant::now() < deadline, "process {pid2} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(node.container_pid(&app).is_none(), "container state gone");
    assert!(volume_file(&node, &data, "out").is_none(), "volume gone");
    let overlays: Vec<String> = node
        .mounts()
        .into_iter()
        .filter(|m| m.contains("/workloads/"))
        .collect();
    assert!(overlays.is_empty(), "{overlays:?}");
    let namespaces = node.world.namespaces();
    assert_eq!(
        namespaces.len(),
        2,
        "only the test's node and internet namespaces remain: {namespaces:?}"
    );
}

#[test]
fn a_tampered_flist_and_an_oversized_contract_run_nothing() {
    if !privileged("a_tampered_flist_and_an_oversized_contract_run_nothing") {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let flist = busybox_flist(node.dir.path(), &p.publisher);

    // Flip a byte in every stored block: the unpack refuses them all.
    let store = PathBuf::from(flist.2.trim_start_matches("dir://"));
    for shard in std::fs::read_dir(&store).unwrap().flatten() {
        for block in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let mut bytes = std::fs::read(block.path()).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(block.path(), bytes).unwrap();
        }
    }
    let (tampered, huge) = (node.id("tampered"), node.id("huge"));
    node.publish(&record(
        &p,
        key,
        &contract(&p, key, &tampered, 1, &flist, 64),
    ));
    let s = node.wait_status(&tampered, "error", |s| s["state"] == "error");
    let msg = s["message"].as_str().unwrap();
    assert!(msg.contains("block"), "{msg}");

    // More memory than the node has.
    node.publish(&record(
        &p,
        key,
        &contract(&p, key, &huge, 1, &flist, 64 * 1024 * 1024),
    ));
    let s = node.wait_status(&huge, "refused", |s| s["state"] == "refused");
    assert_eq!(s["reasons"][0]["code"], "over_capacity", "{s:#}");

    // Nothing runs for either and no tenant namespace is left. The refused one made
    // nothing at all; the tampered one keeps only its (empty) data volume: a failure
    // never deletes a volume, only its owner's cancellation does (docs/engine.md).
    assert!(node.container_pid(&format!("{tampered}.app")).is_none());
    let volumes = || -> Vec<String> {
        let pools = node.dir.path().join("pools");
        let mut all: Vec<String> = std::fs::read_dir(pools)
            .unwrap()
            .flatten()
            .flat_map(|pool| {
                std::fs::read_dir(pool.path().join("volumes"))
                    .map(|d| {
                        d.flatten()
                            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            })
            .collect();
        all.sort();
        all
    };
    assert_eq!(volumes(), [format!("{tampered}.data")]);
    assert_eq!(node.world.namespaces().len(), 2);
    node.publish(&cancel_record(&p, key, &tampered, 2));
    node.wait_status(&tampered, "cancelled", |s| s["state"] == "cancelled");
    assert!(volumes().is_empty(), "{:?}", volumes());
}

#[test]
fn two_tenants_containers_cannot_reach_each_other() {
    if !privileged("two_tenants_containers_cannot_reach_each_other") {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let (a, b) = (node.id("a"), node.id("b"));
    node.publish(&record(
        &p,
        key,
        &web_contract(&p, key, &a, "10.80.0.0/24", &flist),
    ));
    node.publish(&record(
        &p,
        key,
        &web_contract(&p, key, &b, "10.81.0.0/24", &flist),
    ));
    for id in [&a, &b] {
        node.wait_status(id, "ok", |s| s["state"] == "ok");
    }
    let a_web = node.container_pid(&format!("{a}.web")).unwrap();
    // Within tenant A: web reaches its peer (10.80.0.3). A fresh link can drop the
    // first packets: retry, bounded.
    let deadline = Instant::now() + WAIT;
    while let Err(e) = connect_from(a_web, "10.80.0.3:80") {
        assert!(
            Instant::now() < deadline,
            "A's web cannot reach A's peer: {e}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Across tenants: A's web cannot reach B's containers, nor B's gateway.
    for target in ["10.81.0.2:80", "10.81.0.3:80", "10.81.0.1:80"] {
        assert!(
            connect_from(a_web, target).is_err(),
            "tenant A reached tenant B at {target}"
        );
    }
    let b_web = node.container_pid(&format!("{b}.web")).unwrap();
    // Two contracts, two host id ranges: neither's root is the other's.
    let (ua, ub) = (host_uid(a_web), host_uid(b_web));
    assert!(ua >= 1 << 17 && ub >= 1 << 17, "host uids {ua}, {ub}");
    assert_ne!(ua >> 16, ub >> 16, "tenants share an id range");
    assert!(connect_from(b_web, "10.80.0.2:80").is_err());
    assert!(connect_from(b_web, "10.81.0.3:80").is_ok());
}

/// The host uid process `pid` runs as (its real uid, from /proc).
fn host_uid(pid: i32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The host owner of `file` in volume `volume` on any of the node's pools.
fn volume_owner(node: &Node, volume: &str, file: &str) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let pools = node.dir.path().join("pools");
    std::fs::read_dir(pools).ok()?.flatten().find_map(|pool| {
        let p = pool.path().join("volumes").join(volume).join(file);
        std::fs::metadata(p).ok().map(|m| m.uid())
    })
}
