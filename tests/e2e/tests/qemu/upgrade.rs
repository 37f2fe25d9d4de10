//! The node's own software upgraded on booted nodes (issue #17's booted tests 1-4;
//! docs/upgrade.md): `cargo xtask farm 3 --upgrade`'s scenario ([`xtask::upgrade`]).
//! Three nodes boot on one LAN from the image with the run's release key pinned.
//!
//! 1. A signed release in two waves: wave 2 waits for wave 1, every node then runs it;
//!    the container on the first node keeps its pid through the live upgrade.
//! 2. A broken release (its agent exits at start): the node goes back by itself,
//!    publishes its signed rollback with the agent's last lines, the rollout halts.
//! 3. An unsigned release, one signed by an unknown key, one with a tampered agent
//!    block, a downgrade: each refused by every node, published, nothing changed.
//! 4. A hard reset: the node comes back on the committed version.
//! 5. A VM contract on a booted node: the hypervisor part of the release it runs is
//!    fetched and verified, the guest's console line appears in the status (TCG inside
//!    TCG: minutes).
//!
//! Each step asserts inside the scenario and fails with what it last saw. Without QEMU,
//! etcd or dnsmasq it prints a counted `SKIP:` line.

use e2e::{missing, skip};

#[test]
fn upgrade_in_waves_rollback_refusals_reset_and_a_vm_on_booted_nodes() {
    const NAME: &str = "upgrade_in_waves_rollback_refusals_reset_and_a_vm_on_booted_nodes";
    // rustc (the broken release's agent) is the toolchain running this test.
    if let Some(p) = missing(&["qemu-system-x86_64", "etcd", "dnsmasq", "ip"]) {
        return skip(NAME, &format!("{p} is not installed"));
    }
    let f = xtask::upgrade::run(true).unwrap_or_else(|e| panic!("{e:#}"));
    xtask::upgrade::print(&f);
    assert_eq!(
        f.pids.0, f.pids.1,
        "the live upgrade restarted the container"
    );
    assert_eq!(f.pids.0, f.pids.2, "the rollback restarted the container");
    assert_eq!(f.rollback["cause"], "exited", "{}", f.rollback);
    assert_eq!(f.rollback["detail"], "exit code 3", "{}", f.rollback);
    assert_eq!(f.rollback["running"], "0.2.0", "{}", f.rollback);
    assert!(
        f.halted
            .iter()
            .any(|h| h.contains("rolled back from 0.3.0")),
        "{:?}",
        f.halted
    );
    let codes: Vec<&str> = f.refused.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        codes,
        ["unsigned", "unknown_key", "tampered_part", "downgrade"]
    );
    assert!(f.vm.1.contains("vm-echo: "), "{}", f.vm.1);
}
