//! The grid on booted nodes (issue #15, test 9; docs/grid.md): `cargo xtask farm 3
//! --failover`'s scenario ([`xtask::failover`]). Three nodes boot from the image under
//! QEMU on a private etcd, `zos bot run` on the host places a contract's two replicas
//! on two of them, replica 0's node loses power (QEMU killed), and the replica runs on
//! the third node at a higher epoch: the placement record says `running` there only once that
//! node's own signed status reports the contract `ok` at that replica and epoch.
//!
//! Without QEMU or etcd it prints a counted `SKIP:` line.

use e2e::{missing, skip};

#[test]
fn a_replica_moves_off_a_booted_node_that_loses_power() {
    const NAME: &str = "a_replica_moves_off_a_booted_node_that_loses_power";
    if let Some(p) = missing(&["qemu-system-x86_64", "etcd"]) {
        return skip(NAME, &format!("{p} is not installed"));
    }
    let figures = xtask::failover::run(3, true).unwrap_or_else(|e| panic!("{e:#}"));
    xtask::failover::print(&figures);
    // Epoch 1 unless a starved TCG node lapsed and the replica moved before the cut.
    let (before, after) = figures.epochs;
    assert!(
        after > before && before >= 1,
        "the moved replica's epochs, before and after the power cut: {before} -> {after}"
    );
}
