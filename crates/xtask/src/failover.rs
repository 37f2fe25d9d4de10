//! `cargo xtask farm N --failover` (issue #15's booted test, docs/grid.md): N nodes
//! booted from the image under QEMU, a private etcd as the notary, the orchestrator
//! `zos bot run` on the host. A placement contract's two replicas land on two nodes;
//! one of those nodes loses power (QEMU killed: no shutdown, no goodbye), and its replica
//! runs on another booted node at a higher epoch, `after_s` and a few seconds later.
//!
//! The nodes share a work directory at the same path over virtio-9p: the sample flist's
//! local store is read there, as in the demo's booted node.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::flists::{self, path, run as zos};
use crate::node::{self as qemu, BootFrom, Machine, Net, NodeSpec, Share};
use crate::status::poll_until;
use crate::{cargo, target_dir};

const FARM: &str = "farm-failover";
const ID: &str = "failover-hello";
/// The contract's `failover.after_s` (its floor).
pub const AFTER_S: u64 = 10;
/// TCG boots of several nodes on two busy cores.
const BOOT: Duration = Duration::from_secs(600);
/// From publication to both replicas running, and from the power cut to the move:
/// `after_s`, the flist unpacked on a TCG node, a loaded host.
const PLACE: Duration = Duration::from_secs(300);

/// What a run measured.
pub struct Figures {
    /// Per node, from QEMU's start to serving contracts.
    pub serving: Vec<Duration>,
    /// From the contract's publication to both replicas `running`.
    pub placed: Duration,
    /// From the power cut to the replica `running` on another node.
    pub moved: Duration,
    /// The epochs of the moved replica: before, after.
    pub epochs: (u64, u64),
}

/// The orchestrator's process; killed on drop.
pub struct Bot(Child);

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots `n` nodes (at least 3) of `agent`'s image and runs the scenario (see the module
/// docs), printing each step; the nodes, the bot and the notary stop at the end.
pub fn run(n: usize, rebuild: bool) -> anyhow::Result<Figures> {
    if n < 3 {
        bail!("--failover needs 3 nodes or more: two replicas and one to move to");
    }
    let files = qemu::boot_files(rebuild)?;
    cargo(&["build", "--quiet", "-p", "zos-cli"])?;
    let zos_bin = target_dir().join("debug/zos");
    // Its own etcd and farmer (not `cargo xtask node`'s): the e2e tests run both at once.
    let nodes_dir = target_dir().join("nodes");
    let notary = qemu::private_notary(
        &nodes_dir.join("failover-notary"),
        &nodes_dir.join("failover-farmer.key"),
        FARM,
    )?;
    let url = notary.host_url.clone().context("a private notary")?;

    // The work directory: keys, the flist and its store, the contract. Shared with the
    // nodes at the same path.
    let work = nodes_dir.join("failover");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    // No network: a network across replicas is the mesh scenario's (crate::mesh), and
    // these nodes, each behind its own QEMU user network, cannot reach each other.
    let blueprint = sample_blueprint(&zos_bin, &work, "worker")?;

    let accel = qemu::accel(&files.vmlinux);
    let cmdline = format!("zos.farm={FARM} zos.notary={}", notary.guest_url);
    let mut nodes = Vec::new();
    for i in 0..n {
        let spec = node_spec("failover", &cmdline, &work, i, Net::User);
        nodes.push(qemu::boot(&files, &spec, accel)?);
    }
    println!("{n} nodes booting under QEMU ({accel}, microvm)");
    let milestones = qemu::wait_serving(&mut nodes, BOOT)?;
    let keys = nodes
        .iter()
        .map(|node| qemu::node_key(&node.console_text()))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let key = |name: &str| -> anyhow::Result<String> {
        zos(&zos_bin, &["key", "new", "--out", path(&work.join(name))?])
    };
    let bot_key = key("bot.key")?;
    let owner = key("owner.key")?;
    let bot = start_bot(&zos_bin, &work, &url)?;

    let contract = work.join("contract.json");
    let args = placement_contract(
        path(&blueprint)?,
        3,
        &owner,
        FARM,
        &bot_key,
        ID,
        path(&contract)?,
    );
    zos(
        &zos_bin,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    )?;
    let owner_key = work.join("owner.key");
    zos(
        &zos_bin,
        &[
            "contract",
            "sign",
            path(&contract)?,
            "--key",
            path(&owner_key)?,
        ],
    )?;
    println!("\n$ zos contract publish (a placement contract: farm {FARM}, 2 replicas, failover move after {AFTER_S} s)");
    let published = Instant::now();
    zos(
        &zos_bin,
        &[
            "contract",
            "publish",
            path(&contract)?,
            "--key",
            path(&owner_key)?,
            "--notary",
            &url,
        ],
    )?;
    let status = |pred: &dyn Fn(&Value) -> bool, what: &str| {
        wait_placement(&zos_bin, &url, FARM, ID, PLACE, what, pred)
    };
    let placed = status(
        &|r| {
            let list = replicas(r);
            list.len() == 2 && list.iter().all(|x| x.state == "running")
        },
        "both replicas running",
    )?;
    let placed_after = published.elapsed();
    println!(
        "both replicas running {:.1} s after publishing",
        placed_after.as_secs_f64()
    );
    show_status(&zos_bin, &url)?;

    // Replica 0's node loses power.
    let before = replicas(&placed)[0].clone();
    let victim = keys
        .iter()
        .position(|k| *k == before.node)
        .context("replica 0 is on none of the booted nodes")?;
    nodes[victim].kill();
    let cut = Instant::now();
    println!(
        "\n{}: QEMU killed (a power cut: replica 0 at epoch {} ran there)",
        nodes[victim].name, before.epoch
    );
    let moved = status(
        &|r| {
            replicas(r).first().is_some_and(|x| {
                x.node != before.node && x.epoch > before.epoch && x.state == "running"
            })
        },
        "replica 0 running on another node",
    )?;
    let moved_after = cut.elapsed();
    let after = replicas(&moved)[0].clone();
    let to = keys
        .iter()
        .position(|k| *k == after.node)
        .map_or("a node not booted here", |i| nodes[i].name.as_str());
    println!(
        "replica 0 running on {to} at epoch {} {:.1} s after the power cut (after_s = {AFTER_S}; liveness TTL 2 s)",
        after.epoch,
        moved_after.as_secs_f64()
    );
    show_status(&zos_bin, &url)?;
    drop(bot);
    drop(nodes);
    Ok(Figures {
        serving: milestones
            .iter()
            .map(|m| m.serving.unwrap_or_default())
            .collect(),
        placed: placed_after,
        moved: moved_after,
        epochs: (before.epoch, after.epoch),
    })
}

/// One line of figures.
pub fn print(f: &Figures) {
    let serving: Vec<String> = f
        .serving
        .iter()
        .map(|d| format!("{:.1}", d.as_secs_f64()))
        .collect();
    println!(
        "figures: nodes serving after {} s; both replicas running {:.1} s after publishing; \
         moved (epoch {} -> {}) {:.1} s after the power cut (after_s {AFTER_S})",
        serving.join(", "),
        f.placed.as_secs_f64(),
        f.epochs.0,
        f.epochs.1,
        f.moved.as_secs_f64()
    );
}

/// The sample flist built into `work`, and `docs/examples/<name>.blueprint.toml` pinned
/// to it and signed by an expert key made there; returns the signed blueprint's path
/// (`<work>/<name>.blueprint.json`).
pub fn sample_blueprint(zos_bin: &Path, work: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let flist = flists::build(&work.join("flist"), zos_bin)?;
    let text = flists::pinned_blueprint(&format!("{name}.blueprint.toml"), "hello.fl", &flist)?;
    let toml = work.join(format!("{name}.blueprint.toml"));
    std::fs::write(&toml, text)?;
    let expert = work.join("expert.key");
    zos(zos_bin, &["key", "new", "--out", path(&expert)?])?;
    sign_blueprint(zos_bin, &toml, &expert)
}

/// `zos blueprint sign TOML --key KEY`, written beside it as `<name>.json` (the `.toml`
/// replaced); returns that path.
pub fn sign_blueprint(zos_bin: &Path, toml: &Path, key: &Path) -> anyhow::Result<PathBuf> {
    let signed = toml.with_extension("json");
    zos(
        zos_bin,
        &[
            "blueprint",
            "sign",
            path(toml)?,
            "--key",
            path(key)?,
            "-o",
            path(&signed)?,
        ],
    )?;
    Ok(signed)
}

/// Node `i` of a scenario (named `<prefix><i>`): a fresh microvm with two disks, `work`
/// shared at the same path, on `net`.
pub fn node_spec(prefix: &str, cmdline: &str, work: &Path, i: usize, net: Net) -> NodeSpec {
    NodeSpec {
        name: format!("{prefix}{i}"),
        disks: 2,
        disk_gib: 8,
        memory_mib: 1536,
        cpus: 1,
        machine: Machine::Microvm,
        cmdline: cmdline.to_string(),
        fresh: true,
        index: i as u8,
        from: BootFrom::Kernel,
        shares: vec![Share {
            tag: "work".into(),
            path: work.to_path_buf(),
        }],
        net,
    }
}

/// `zos contract new`'s arguments for a contract of the sample blueprint (`users`
/// users) placed in `farm` by orchestrator `bot`: two replicas, failover `move` after
/// [`AFTER_S`], expiring in a day, written to `out`.
pub fn placement_contract(
    blueprint: &str,
    users: u32,
    owner: &str,
    farm: &str,
    bot: &str,
    id: &str,
    out: &str,
) -> Vec<String> {
    let args = [
        "contract",
        "new",
        "--blueprint",
        blueprint,
        "--param",
        &format!("users={users}"),
        "--owner",
        owner,
        "--farm",
        farm,
        "--replicas",
        "2",
        "--orchestrator",
        bot,
        "--failover",
        "move",
        "--after-s",
        &AFTER_S.to_string(),
        "--expires",
        "1d",
        "--id",
        id,
        "-o",
        out,
    ];
    args.iter().map(|a| a.to_string()).collect()
}

/// `zos bot run` in `dir` (its key `bot.key` there, its output in `bot.log` and
/// `bot.err.log`), killed when dropped.
pub fn start_bot(zos_bin: &Path, work: &Path, url: &str) -> anyhow::Result<Bot> {
    println!("\n$ zos bot run --key bot.key --notary {url}");
    let child = Command::new(zos_bin)
        .args(["bot", "run", "--key", "bot.key", "--notary", url])
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(work.join("bot.log"))?)
        .stderr(std::fs::File::create(work.join("bot.err.log"))?)
        .spawn()
        .context("starting zos bot run")?;
    Ok(Bot(child))
}

fn show_status(zos_bin: &Path, url: &str) -> anyhow::Result<()> {
    println!("$ zos contract status {ID} --farm {FARM}");
    let out = zos(
        zos_bin,
        &["contract", "status", ID, "--farm", FARM, "--notary", url],
    )?;
    for line in out.lines() {
        println!("  {line}");
    }
    Ok(())
}

/// One replica of a placement record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    /// The node's key (hex), empty when unplaced.
    pub node: String,
    /// Its epoch.
    pub epoch: u64,
    /// `assigned`, `running`, `lost`...
    pub state: String,
}

/// The replicas of a placement record (`zos contract status --farm --json`), in order.
pub fn replicas(record: &Value) -> Vec<Replica> {
    record["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| Replica {
            node: r["node"].as_str().unwrap_or("").to_string(),
            epoch: r["epoch"].as_u64().unwrap_or(0),
            state: r["state"].as_str().unwrap_or("").to_string(),
        })
        .collect()
}

/// Polls contract `id`'s placement record in `farm` until `pred` holds, for at most
/// `timeout`.
pub fn wait_placement(
    zos_bin: &Path,
    notary: &str,
    farm: &str,
    id: &str,
    timeout: Duration,
    what: &str,
    pred: &dyn Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let read = || {
        let out = Command::new(zos_bin)
            .args([
                "contract", "status", id, "--farm", farm, "--notary", notary, "--json",
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    };
    poll_until(timeout, Duration::from_millis(200), read, |r| {
        !r.is_null() && pred(r)
    })
    .or_else(|last| bail!("{what}: not within {timeout:?}; last placement record: {last}"))
}
