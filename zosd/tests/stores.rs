//! H6 (docs/security.md): a contract's `dir://` URLs reach only the node's store roots.
//! Before, a signed contract could name any node path as its flist or store:
//! `dir:///dev/console` blocked the engine on a read that never returns, and a flist
//! anywhere on the node (another tenant's, the state dir) was read.
//!
//! The attacks, on a real node whose `store_roots` is its test directory: a flist URL of
//! `/dev/console`, and a valid signed flist packed outside the roots. Each is refused at
//! once with the specific error, and nothing runs, no volume is made.

mod common;

use common::*;

#[test]
fn dir_urls_outside_the_store_roots_are_refused_at_once() {
    let test = "dir_urls_outside_the_store_roots_are_refused_at_once";
    if !privileged(test) {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();

    // The console as a flist: refused, not read (a read would block forever).
    let console = node.id("console");
    let flist = (
        "dir:///dev/console".to_string(),
        "0".repeat(64),
        format!("dir://{}/store", node.dir.path().display()),
    );
    node.publish(&record(
        &p,
        key,
        &contract(&p, key, &console, 1, &flist, 64),
    ));
    let s = node.wait_status(&console, "error", |s| s["state"] == "error");
    let msg = s["message"].as_str().unwrap_or_default();
    assert!(msg.contains("only under the store roots"), "{s:#}");

    // A valid signed flist, but packed outside the node's store roots.
    let outside = tempfile::Builder::new()
        .prefix("zt-outside-")
        .tempdir()
        .unwrap();
    let foreign = busybox_flist(outside.path(), &p.publisher);
    let id = node.id("outside");
    node.publish(&record(&p, key, &contract(&p, key, &id, 1, &foreign, 64)));
    let s = node.wait_status(&id, "error", |s| s["state"] == "error");
    let msg = s["message"].as_str().unwrap_or_default();
    assert!(msg.contains("only under the store roots"), "{s:#}");

    for name in [&console, &id] {
        assert!(node.container_pid(&format!("{name}.app")).is_none());
    }
    // The same flist inside the roots runs: the refusals came from where they point.
    let inside = busybox_flist(node.dir.path(), &p.publisher);
    let good = node.id("inside");
    node.publish(&record(&p, key, &contract(&p, key, &good, 1, &inside, 64)));
    node.wait_status(&good, "ok", |s| s["state"] == "ok");
}
