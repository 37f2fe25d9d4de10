//! Registration on the real kernel (the `zosd run` node of tests/common): a node booted
//! with a farm the notary does not hold says so and takes no contracts; once the farmer
//! creates the farm it registers (signed by the node key, with its capacity), runs the
//! contract published meanwhile, and beats: the heartbeat verifies, counts the contract
//! and lists no listening socket. Restarted after someone else signed the farm over,
//! it refuses that farm until the farmer it registered under signs it again. SIGTERM
//! stops a node that waits for its farm.
//!
//! The farm record is made as `zos farm create` makes it (zos-registry's `Farm`): the
//! `zos` binary belongs to another package, which `cargo test -p zosd` does not build.

mod common;

use std::time::{Duration, Instant};

use common::*;
use zos_contract::SecretKey;
use zos_notary::{NotaryKey, Record};
use zos_registry::{Farm, Heartbeat, Registration};

const FARM: &str = "zt-farm-1";

/// Lines of zosd's log (one `tracing` event per farm attempt) that contain `needle`.
fn count_lines(node: &Node, needle: &str) -> usize {
    node.log().lines().filter(|l| l.contains(needle)).count()
}

/// Waits until the log holds more than `seen` attempt lines containing `needle`: the
/// node completed one more farm attempt after the caller counted `seen`.
fn wait_for_another_attempt(node: &Node, needle: &str, seen: usize) {
    node.wait_for(
        &format!("farm attempt after {seen} saying {needle:?}"),
        || (count_lines(node, needle) > seen).then_some(()),
    );
}

fn farm_record(farmer: &SecretKey) -> Record {
    let now = zos_registry::now();
    Farm::create_or_update(None, FARM, "test farm", farmer.public(), now)
        .unwrap()
        .sign(farmer, now)
        .unwrap()
}

#[test]
fn a_node_waits_for_its_farm_then_registers_beats_and_serves() {
    if !privileged("a_node_waits_for_its_farm_then_registers_beats_and_serves") {
        return;
    }
    let p = people();
    let mut node = Node::in_farm(512, FARM, 1);
    // zosd prints its key on the console while it waits for the farm.
    let key = node.start();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let id = node.id("reg");
    node.publish(&record(&p, key, &contract(&p, key, &id, 1, &flist, 64)));

    // No farm: the console says so; no registration, no heartbeat, no contract taken.
    // The positive event: the node looks for its farm again after the contract was
    // published (a new attempt in its log), and it still has done none of these.
    let missing = format!("farm {FARM} is not in the notary: retrying");
    wait_for_another_attempt(&node, &missing, count_lines(&node, &missing));
    assert!(node.get(&NotaryKey::registration(&key)).is_none());
    assert!(node.get(&NotaryKey::heartbeat(&key)).is_none());
    assert!(
        node.status(&id).is_none(),
        "a contract was taken without a farm"
    );
    assert!(node.container_pid(&format!("{id}.app")).is_none());

    // The farmer creates the farm: the node registers, signed by its key.
    let farmer = SecretKey::from_seed([9; 32]);
    node.publish(&farm_record(&farmer));
    let reg = node.wait_for("registration", || node.get(&NotaryKey::registration(&key)));
    let (who, reg) = Registration::from_record(&reg).unwrap();
    assert_eq!(who, key);
    assert_eq!(reg.farm, FARM);
    assert_eq!(reg.version, env!("CARGO_PKG_VERSION"));
    assert!(
        reg.capacity.cpus >= 1 && reg.capacity.memory_bytes > 0,
        "{reg:?}"
    );
    // The 8 GiB loop pool is an SSD pool.
    assert!(reg.capacity.ssd_bytes > 4 << 30, "{reg:?}");
    assert_eq!(reg.capacity.hdd_bytes, 0);

    // It takes the contract published while it waited.
    node.wait_status(&id, "ok", |s| s["state"] == "ok");

    // Heartbeats: verified, signed by the node, counting the contract, no listener.
    let beat = || {
        node.get(&NotaryKey::heartbeat(&key)).map(|r| {
            let (who, hb) = Heartbeat::from_record(&r).unwrap();
            assert_eq!(who, key);
            hb
        })
    };
    let hb = node.wait_for("heartbeat counting the contract", || {
        beat().filter(|hb| hb.contracts.running == 1)
    });
    assert_eq!(hb.listening, vec![], "the node listens: {hb:?}");
    assert_eq!(hb.listening_total, 0);
    assert_eq!(hb.workloads, 1);
    assert_eq!(hb.reserved.memory_bytes, 64 << 20);
    assert_eq!(hb.reserved.cpus, 1);
    assert!(hb.uptime_secs > 0 && hb.used.memory_bytes > 0, "{hb:?}");
    // Every second (heartbeat_secs = 1), a newer one.
    node.wait_for("a newer heartbeat", || {
        beat().filter(|next| next.time > hb.time)
    });

    // Someone with write access signs the farm over to another farmer; zosd restarts:
    // it refuses the farm (it pinned the first farmer) and takes no new contract.
    node.kill9();
    node.publish(&farm_record(&SecretKey::from_seed([10; 32])));
    node.start();
    let second = node.id("reg2");
    node.publish(&record(&p, key, &contract(&p, key, &second, 1, &flist, 64)));
    // The positive event: an attempt that started after the contract was published
    // refused the farm again; the contract was not taken.
    wait_for_another_attempt(&node, "not by", count_lines(&node, "not by"));
    assert!(node.status(&second).is_none(), "served a taken-over farm");

    // The farmer signs the farm again: the node comes back and serves.
    node.publish(&farm_record(&farmer));
    node.wait_status(&second, "ok", |s| s["state"] == "ok");
    node.wait_status(&id, "ok", |s| s["state"] == "ok");
}

#[test]
fn a_node_waiting_for_its_farm_stops_on_sigterm() {
    if !privileged("a_node_waiting_for_its_farm_stops_on_sigterm") {
        return;
    }
    let mut node = Node::in_farm(512, FARM, 60);
    node.start();
    let pid = node.zosd.as_ref().unwrap().id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = node.zosd.as_mut().unwrap().try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "zosd did not stop; log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}\n{}", node.log());
}
