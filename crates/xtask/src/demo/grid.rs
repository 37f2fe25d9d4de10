//! The demo's grid step (docs/grid.md): three nodes of one farm, each `zosd run` in
//! namespaces of its own; the orchestrator `zos bot run` places a contract's two
//! replicas on two of them; one node dies (zosd and its workload killed, its namespaces
//! removed) and, `after_s` later, its replica runs on the third node; `zos contract
//! status --farm` shows the move.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use super::node::{self, Node};
use super::{section, Demo};
use crate::failover::{self, replicas, AFTER_S};

const FARM: &str = "demo-grid";
const ID: &str = "grid-hello";

pub fn run(d: &Demo) -> anyhow::Result<()> {
    section(
        "15. the grid: a farm's orchestrator places two replicas; a node dies; its replica moves",
    );
    d.step(&["key", "new", "--out", "grid-farmer.key"])?;
    d.step(&[
        "farm",
        "create",
        FARM,
        "--name",
        "the demo's grid",
        "--key",
        "grid-farmer.key",
        "--notary",
        &d.notary,
    ])?;
    let bot_key = d.step(&["key", "new", "--out", "bot.key"])?;
    let farm_line = format!("farm = \"{FARM}\"");
    let mut nodes: Vec<Option<(Node, String)>> = Vec::new();
    for n in 0..3 {
        let (node, key) = node::start(d, &format!("grid{n}"), &format!("zg{n}"), &farm_line)?;
        nodes.push(Some((node, key)));
    }
    let bot = failover::start_bot(&d.zos, &d.dir, &d.notary)?;

    let owner = d.step(&["key", "show", "owner.key"])?;
    let legal = d.step(&["key", "show", "legal.key"])?;
    // The worker: a network across replicas needs WireGuard, which these nodes (zosd
    // on this host) lack; the booted nodes of step 17 have it.
    let mut args = failover::placement_contract(
        "worker.blueprint.json",
        10,
        &owner,
        FARM,
        &bot_key,
        ID,
        "grid.json",
    );
    args.extend([
        "--stakeholder".to_string(),
        format!("{legal}:1:required"),
        "--threshold".to_string(),
        "1".to_string(),
    ]);
    d.step(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    for who in ["owner", "legal"] {
        d.step(&[
            "contract",
            "sign",
            "grid.json",
            "--key",
            &format!("{who}.key"),
        ])?;
    }
    let t = Instant::now();
    d.step(&[
        "contract",
        "publish",
        "grid.json",
        "--key",
        "owner.key",
        "--notary",
        &d.notary,
    ])?;
    let placed = wait_placement(d, "both replicas running", |r| {
        replicas(r).iter().all(|x| x.state == "running")
    })?;
    println!(
        "  both replicas running {} ms after publishing",
        t.elapsed().as_millis()
    );
    d.step(&[
        "contract", "status", ID, "--farm", FARM, "--notary", &d.notary,
    ])?;

    // The node of replica 0 dies: zosd and its workload killed, its namespaces gone.
    let victim_key = replicas(&placed)[0].node.clone();
    let at = nodes
        .iter()
        .position(|n| n.as_ref().is_some_and(|(_, k)| *k == victim_key))
        .context("replica 0 is on none of the demo's nodes")?;
    let (mut victim, _) = nodes[at].take().expect("present");
    kill(&mut victim)?;
    drop(victim);
    let t = Instant::now();
    println!("  node {victim_key} killed (zosd, its workload, its namespaces)");
    let moved = wait_placement(d, "replica 0 running on another node", |r| {
        let list = replicas(r);
        list[0].node != victim_key && list[0].state == "running"
    })?;
    let elapsed = t.elapsed();
    let to = replicas(&moved)[0].node.clone();
    println!(
        "  replica 0 running on {to} {:.1} s after the kill (after_s = {AFTER_S}; liveness TTL 2 s)",
        elapsed.as_secs_f64()
    );
    d.step(&[
        "contract", "status", ID, "--farm", FARM, "--notary", &d.notary,
    ])?;

    // The owner cancels it at the farm's key: both replicas' nodes remove it.
    d.step(&[
        "contract",
        "cancel",
        ID,
        "--farm",
        FARM,
        "--key",
        "owner.key",
        "--notary",
        &d.notary,
    ])?;
    for (_, key) in nodes.iter().flatten() {
        if replicas(&moved).iter().any(|x| x.node == *key) {
            node::wait_status_for(d, key, ID, Duration::from_secs(60), |s| {
                s["state"] == "cancelled"
            })?;
        }
    }
    println!("  cancelled on both nodes");
    drop(bot);
    drop(nodes);
    Ok(())
}

/// Kills the node's zosd (SIGKILL, no goodbye) and the workload it ran.
fn kill(node: &mut Node) -> anyhow::Result<()> {
    if let Some(mut z) = node.zosd.take() {
        z.kill().context("killing zosd")?;
        z.wait()?;
    }
    if let Some(pid) = node::container_pid(node, &format!("{ID}.app")) {
        Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()?;
    }
    Ok(())
}

/// Polls the placement record until `pred` holds (at most 90 s: `after_s` plus
/// provisioning on a loaded machine).
fn wait_placement(d: &Demo, what: &str, pred: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
    let notary = d.notary.as_str();
    failover::wait_placement(
        &d.zos,
        notary,
        FARM,
        ID,
        Duration::from_secs(90),
        what,
        &pred,
    )
}

/// Step 17: nodes booted from the image on one LAN (`cargo xtask farm 3 --mesh`): two
/// tenants' networks across them over WireGuard, then a power cut and the move
/// (issue #15's test 9 and #16's tests), the image the booted step built.
pub fn run_booted() -> anyhow::Result<()> {
    section("17. booted nodes on one LAN: tenant networks across nodes over WireGuard; one node loses power; its replica moves and is reached again");
    println!("$ cargo xtask farm 3 --mesh --no-build");
    let figures = crate::mesh::run(false, false)?;
    crate::mesh::print(&figures);
    Ok(())
}
