//! `cargo xtask bench NAME`: runs the named benchmark harnesses (each a
//! `harness = false` bench that measures against a reference in the same run).

use anyhow::bail;

use crate::{cargo, packages};

/// name -> (package, bench target) pairs.
const BENCHES: &[(&str, &[(&str, &str)])] = &[
    (
        "contracts",
        &[("zos-contract", "verify"), ("zos-notary", "watch")],
    ),
    // The engine's loop on a fake machine: publish to ok, 50 at once, and a hanging
    // flist store beside a healthy contract (crates/zos-engine/benches/engine.rs).
    ("engine", &[("zos-engine", "engine")]),
    ("flist", &[("zos-flist", "flist")]),
    // The orchestrator at scale: simulated nodes on a real etcd, placements per second,
    // failover, watch lag (crates/zos-grid/benches/grid.rs; BENCH_QUICK=1 for 100/500).
    ("grid", &[("zos-grid", "grid")]),
    ("storage", &[("zos-storage", "storage")]),
    ("network", &[("zos-network", "network")]),
    // The runtime against bare libcontainer; a node's publish to running against a bare
    // create + start, and its RSS (zosd/benches/node.rs); 500 contracts on one node
    // (zosd/benches/scale.rs, ZOS_BENCH_SCALE).
    (
        "container",
        &[
            ("zos-container", "container"),
            ("zosd", "node"),
            ("zosd", "scale"),
        ],
    ),
    ("vm", &[("zosd", "vm")]),
    // Booted nodes on one LAN (crates/xtask/src/mesh.rs): a tenant network across two
    // nodes against their plain LAN path, and publish to the first packet across.
    ("mesh", &[]),
    // A booted node from zosd's first line to registered, loading the modules its
    // devices ask for against every module, interleaved (crates/xtask/src/bootbench.rs;
    // `--rounds N`, 3 by default).
    ("boot", &[]),
];

/// `cargo xtask bench [NAME]`: runs the benchmarks named `NAME` (all without one).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let name = args.first().map(String::as_str).unwrap_or("all");
    // `--no-build`: the booted benchmarks (mesh, boot) boot the image as they are.
    let rebuild = !args.iter().any(|a| a == "--no-build");
    let selected: Vec<_> = BENCHES
        .iter()
        .filter(|(n, _)| name == "all" || *n == name)
        .collect();
    if selected.is_empty() {
        let names: Vec<_> = BENCHES.iter().map(|(n, _)| *n).collect();
        bail!(
            "unknown benchmark {name:?}; choose one of {} or all",
            names.join(", ")
        );
    }
    packages::ensure(packages::TEST_PACKAGES)?;
    if selected.iter().any(|(n, _)| *n == "vm") {
        // The sample VM the benchmark boots.
        cargo(&["build", "--quiet", "-p", "zos-cli"])?;
        crate::flists::build_vm(
            &crate::target_dir().join("flists/vm"),
            &crate::target_dir().join("debug/zos"),
        )?;
    }
    for (name, targets) in selected {
        if *name == "mesh" {
            let figures = crate::mesh::run(rebuild, true)?;
            crate::mesh::print(&figures);
        }
        if *name == "boot" {
            let figures = crate::bootbench::run(args, rebuild)?;
            crate::bootbench::print(&figures);
        }
        for (package, bench) in *targets {
            cargo(&["bench", "-p", package, "--bench", bench])?;
        }
    }
    Ok(())
}
