//! C1 (issue #13) on a real node: another owner cannot take over a running contract.
//!
//! Owner A runs a contract whose container writes a secret into its volume. Owner B
//! publishes the same contract id at version 2, signed by B alone, with a workload that
//! would copy the volume's content. The node refuses the update (`owner_changed`),
//! publishes the refusal next to the running version's status, and changes nothing: A's
//! container keeps running (same pid, same restart count), B's never starts, nothing is
//! copied. A's signed cancellation still stops A's contract afterwards.

mod common;

use std::time::Instant;

use common::*;
use zos_contract::SecretKey;

#[test]
fn another_owner_cannot_take_over_a_running_contract() {
    if !privileged("another_owner_cannot_take_over_a_running_contract") {
        return;
    }
    let p = people();
    let thief = SecretKey::from_seed([66; 32]);
    let mut node = Node::new(512);
    let key = node.start();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let id = node.id("victim");
    let (app, stealer, data) = (
        format!("{id}.app"),
        format!("{id}.thief"),
        format!("{id}.data"),
    );
    let subnet = "10.72.0.0/24";

    // A's contract: its container writes a secret into its volume.
    let a_v1 = signed_contract(
        &p,
        key,
        &id,
        1,
        subnet,
        vec![shell_workload(
            "app",
            &flist,
            &p,
            "echo secret-of-a > /data/secret; exec sleep 3600",
        )],
    );
    node.publish(&record(&p, key, &a_v1));
    let before = node.wait_status(&id, "ok", |s| s["state"] == "ok");
    let deadline = Instant::now() + WAIT;
    while volume_file(&node, &data, "secret").is_none() {
        assert!(Instant::now() < deadline, "A's workload wrote no secret");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = node.container_pid(&app).expect("A's container runs");
    let restarts = before["workloads"]["app"]["restarts"].clone();

    // B publishes version 2 of the same id, signed by B only: its workload would copy
    // A's secret out of A's volume.
    let b_v2 = signed_contract_by(
        &p,
        &thief,
        key,
        &id,
        2,
        subnet,
        vec![shell_workload(
            "thief",
            &flist,
            &p,
            "cat /data/secret > /data/stolen; exec sleep 3600",
        )],
    );
    node.publish(&record_by(&thief, key, &b_v2));
    let s = node.wait_status(&id, "answering version 2", |s| {
        s["version"] == 2 || !s["refused_update"].is_null()
    });
    assert_eq!(
        (&s["state"], &s["version"]),
        (&serde_json::json!("ok"), &serde_json::json!(1)),
        "A's version 1 still runs and its status stays: {s:#}"
    );
    assert_eq!(s["refused_update"]["version"], 2, "{s:#}");
    let codes: Vec<&str> = s["refused_update"]["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["code"].as_str())
        .collect();
    assert!(codes.contains(&"owner_changed"), "{s:#}");
    assert_eq!(s["workloads"]["app"]["restarts"], restarts, "{s:#}");

    // Nothing changed on the machine: A's container is the same process, B's never ran,
    // nothing was copied, the secret is intact.
    assert_eq!(
        node.container_pid(&app),
        Some(pid),
        "A's container replaced"
    );
    assert!(alive(pid), "A's container was stopped");
    assert!(node.container_pid(&stealer).is_none(), "B's workload ran");
    assert!(
        volume_file(&node, &data, "stolen").is_none(),
        "A's data copied"
    );
    assert_eq!(
        volume_file(&node, &data, "secret").as_deref(),
        Some("secret-of-a\n")
    );

    // A's own cancellation still works.
    node.publish(&cancel_record(&p, key, &id, 3));
    node.wait_status(&id, "cancelled", |s| s["state"] == "cancelled");
    let deadline = Instant::now() + WAIT;
    while alive(pid) {
        assert!(Instant::now() < deadline, "process {pid} still runs");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(node.container_pid(&app).is_none(), "container state gone");
    assert!(volume_file(&node, &data, "secret").is_none(), "volume gone");
}
