//! `cargo xtask farm 3 --upgrade` (issue #17's booted tests 1-4; docs/upgrade.md): three
//! nodes booted under QEMU on one LAN ([`crate::lan`]) from the image with this run's
//! release key pinned, a container on the first, and releases published in the LAN's
//! etcd notary. The releases' files are under the scenario's directory, which every node
//! mounts at the same path (`dir://` parts).
//!
//! 1. Release 0.2.0, a rollout in two waves (the first node, then the rest): wave 2
//!    says it waits for wave 1, then follows once wave 1 reports 0.2.0 and beats. The
//!    container's pid is the same before and after (its status names it), and the
//!    nodes report 0.2.0.
//! 2. A broken 0.3.0, whose agent exits at start: the first node goes back to 0.2.0 by
//!    itself, publishes its signed rollback with the agent's last lines and exit
//!    status, the rollout halts (`zos farm show` says why), and wave 2 never switches.
//! 3. Refused by every node, published, nothing changed: a release without signature
//!    (written straight into the notary, as a hostile writer could), one signed by a
//!    key the image does not pin, one whose agent has a flipped byte in a stored block,
//!    and a downgrade.
//! 4. The first node is hard reset (QEMU killed and started again on its disks): it
//!    comes back on 0.2.0, the committed slot.
//! 5. A VM contract on the second node: its image holds no QEMU, so it fetches and
//!    verifies the hypervisor part of the release it runs (0.2.0 carries one), and the
//!    guest's console line appears in the contract's status. The guest runs under TCG
//!    inside a TCG guest: minutes.
//!
//! Every step waits for what it asserts and fails with what it last saw. Times are the
//! host's (a TCG guest's clock is not).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::Value;

use crate::failover::{node_spec, sample_blueprint, sign_blueprint};
use crate::flists::{path, run as zos};
use crate::lan::{Lan, BRIDGE};
use crate::node::{self as qemu, NodeSpec};
use crate::status::poll_until;
use crate::{cargo, target_dir};

const FARM: &str = "farm-upgrade";
/// The container the live upgrade must leave alone.
const APP: &str = "upgrade-app";
/// The VM contract of step 5.
const VM: &str = "upgrade-vm";
/// From the VM contract's publication to its guest's console line: TCG inside TCG.
const VM_BOOT: Duration = Duration::from_secs(1200);
/// The good release, the broken one.
const V2: &str = "0.2.0";
const V3: &str = "0.3.0";
/// The refused releases: `(version, code the nodes publish, what it is)`. The downgrade
/// is below 0.2.0, which the nodes then run, and above the image's own version.
const REFUSED: [(&str, &str, &str); 4] = [
    ("0.4.0", "unsigned", "a release without signature"),
    (
        "0.5.0",
        "unknown_key",
        "a release signed by a key the image does not pin",
    ),
    (
        "0.6.0",
        "tampered_part",
        "a release whose agent has a flipped byte in a block",
    ),
    ("0.1.5", "downgrade", "a release below the running version"),
];
/// TCG boots of three nodes on two busy cores.
const BOOT: Duration = Duration::from_secs(600);
/// From a rollout to the nodes reporting its version (fetch, switch, registration,
/// heartbeat, and wave 2's re-look), or to a rollback (the health gate is 120 s).
const UPGRADE: Duration = Duration::from_secs(420);
/// From a refused release's rollout to every node's published refusal.
const REFUSE: Duration = Duration::from_secs(180);

/// What a run measured.
#[derive(Debug)]
pub struct Figures {
    /// Per node, from QEMU's start to serving contracts.
    pub serving: Vec<Duration>,
    /// From the rollout of 0.2.0 to the first node reporting it and beating.
    pub first_upgraded: Duration,
    /// From the rollout of 0.2.0 to every node reporting it.
    pub all_upgraded: Duration,
    /// The container's pid before and after the live upgrade and the rollback.
    pub pids: (String, String, String),
    /// From the rollout of the broken 0.3.0 to its signed rollback record.
    pub rolled_back: Duration,
    /// The rollback record's body.
    pub rollback: Value,
    /// Why `zos farm show` says the rollout halted.
    pub halted: Vec<String>,
    /// Each refused release: its code, and from its rollout to all three refusals.
    pub refused: Vec<(String, Duration)>,
    /// From the hard reset to the node reporting 0.2.0 again.
    pub after_reset: Duration,
    /// From the VM contract's publication to its guest's console line in the status
    /// (the hypervisor's fetch included), and that line.
    pub vm: (Duration, String),
}

/// Everything made before entering the LAN (builds need the host's network).
struct Prepared {
    files: qemu::BootFiles,
    zos_bin: PathBuf,
    work: PathBuf,
    blueprint: PathBuf,
    vm_blueprint: PathBuf,
    releases: PathBuf,
}

fn prepare(rebuild: bool) -> anyhow::Result<Prepared> {
    let mut files = qemu::boot_files(rebuild)?;
    cargo(&["build", "--quiet", "-p", "zos-cli"])?;
    let zos_bin = target_dir().join("debug/zos");
    let work = target_dir().join("nodes/upgrade");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let blueprint = sample_blueprint(&zos_bin, &work, "worker")?;
    let vm_blueprint = vm_blueprint(&zos_bin, &work)?;

    // The release key, pinned in this run's image: the shared image plus a layer.
    let release_key = work.join("release.key");
    let public = key(&zos_bin, &release_key)?;
    let initrd = work.join("initramfs-with-release-key");
    crate::initramfs::with_release_keys(&files.initrd, &format!("{public}\n"), &initrd)?;
    files.initrd = initrd;

    // The releases. The agent is the image's own `/init` (as built, whatever changed
    // in the tree since): a slot's agent reports the version its signed record names.
    let image_agent = target_dir().join("image/init");
    let releases = work.join("releases");
    let release = |version: &str, key: &Path, extra: &[&str]| -> anyhow::Result<PathBuf> {
        let out = releases.join(version);
        let mut args = vec![
            version.to_string(),
            "--key".into(),
            path(key)?.into(),
            "--out".into(),
            path(&out)?.into(),
        ];
        if extra.is_empty() {
            args.extend(["--agent".into(), path(&image_agent)?.into()]);
        }
        // The hypervisor in the release the nodes run; the others need none.
        if version != V2 {
            args.push("--no-qemu".into());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        crate::release::run(&args)?;
        Ok(out)
    };
    release(V2, &release_key, &[])?;
    let broken = broken_agent(&work)?;
    release(V3, &release_key, &["--agent", path(&broken)?])?;
    for (version, code, _) in REFUSED {
        let signer = if code == "unknown_key" {
            work.join("other-release.key")
        } else {
            release_key.clone()
        };
        let dir = release(version, &signer, &[])?;
        match code {
            "unsigned" => {
                let record = dir.join("release.json");
                let mut v: Value = serde_json::from_slice(&std::fs::read(&record)?)?;
                v.as_object_mut()
                    .context("a release record is an object")?
                    .remove("signature");
                std::fs::write(&record, serde_json::to_vec_pretty(&v)?)?;
            }
            "tampered_part" => flip_a_block(&dir.join("store"))?,
            _ => {}
        }
    }
    Ok(Prepared {
        files,
        zos_bin,
        work,
        blueprint,
        vm_blueprint,
        releases,
    })
}

/// The sample VM's flist built into `work`, and `docs/examples/echo-vm.blueprint.toml`
/// pinned to it, signed by the expert key `sample_blueprint` made there.
fn vm_blueprint(zos_bin: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    let flist = crate::flists::build_vm(&work.join("vmflist"), zos_bin)?;
    let text = crate::flists::pinned_blueprint("echo-vm.blueprint.toml", "vm.fl", &flist)?;
    let toml = work.join("echo-vm.blueprint.toml");
    std::fs::write(&toml, text)?;
    sign_blueprint(zos_bin, &toml, &work.join("expert.key"))
}

/// A new key at `at`; returns its public half.
fn key(zos_bin: &Path, at: &Path) -> anyhow::Result<String> {
    let out = zos(zos_bin, &["key", "new", "--out", path(at)?])?;
    Ok(out
        .split_whitespace()
        .last()
        .unwrap_or_default()
        .to_string())
}

/// A static agent that prints two lines and exits 3 at once: a broken build, signed as
/// a proper release.
fn broken_agent(work: &Path) -> anyhow::Result<PathBuf> {
    let src = work.join("broken-agent.rs");
    std::fs::write(
        &src,
        "fn main() {\n    eprintln!(\"zosd 0.3.0 (broken build): starting\");\n    \
         eprintln!(\"error: this agent cannot start\");\n    std::process::exit(3);\n}\n",
    )?;
    let out = work.join("broken-agent");
    let status = std::process::Command::new("rustc")
        .args([
            "--edition",
            "2021",
            "-O",
            "-C",
            "target-feature=+crt-static",
            "-o",
        ])
        .arg(&out)
        .arg(&src)
        .status()
        .context("running rustc")?;
    ensure!(status.success(), "rustc {}: {status}", src.display());
    Ok(out)
}

/// Flips one byte in the first block file (in path order) under `store`.
fn flip_a_block(store: &Path) -> anyhow::Result<()> {
    let mut dirs = vec![store.to_path_buf()];
    let mut files = Vec::new();
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let p = e?.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let block = files.first().context("no block in the release's store")?;
    let mut bytes = std::fs::read(block)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(block, bytes)?;
    Ok(())
}

/// Runs the scenario (module docs).
pub fn run(rebuild: bool) -> anyhow::Result<Figures> {
    let p = prepare(rebuild)?;
    let lan = Lan::start("upgrade", 3, &p.work.join("lan"))?;
    println!(
        "LAN: namespace {}, bridge {BRIDGE} {}/24, notary {}",
        lan.netns,
        Lan::gateway(),
        lan.notary_url()
    );
    let url = lan.notary_url();
    let net: Vec<qemu::Net> = (0..3).map(|i| lan.net(i)).collect();
    lan.run(|| Scenario { p: &p, url, net }.run())?
}

/// One run's state inside the LAN.
struct Scenario<'a> {
    p: &'a Prepared,
    url: String,
    net: Vec<qemu::Net>,
}

impl Scenario<'_> {
    fn zos(&self, args: &[&str]) -> anyhow::Result<String> {
        zos(&self.p.zos_bin, args)
    }

    fn spec(&self, cmdline: &str, i: usize) -> NodeSpec {
        node_spec("upgrade", cmdline, &self.p.work, i, self.net[i].clone())
    }

    /// `zos farm show FARM --json`'s rollout, `Null` while there is none.
    fn rollout(&self) -> Value {
        self.zos(&["farm", "show", FARM, "--notary", &self.url, "--json"])
            .ok()
            .and_then(|out| serde_json::from_str::<Value>(&out).ok())
            .map(|v| v["rollout"].clone())
            .unwrap_or(Value::Null)
    }

    /// The rollout's row of `node`.
    fn row<'v>(view: &'v Value, node: &str) -> &'v Value {
        view["nodes"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["node"] == node))
            .unwrap_or(&Value::Null)
    }

    /// The container's pid, from a status showing it running with a heartbeat count
    /// above `beyond` (a count only the agent that runs now can have published).
    fn app_pid(&self, node: &str, beyond: u64) -> anyhow::Result<(String, u64)> {
        let read = || {
            let s = self.status(APP, node);
            let w = &s["workloads"]["app"];
            let pid = w["runtime"].as_str().map(str::to_owned);
            let beats = crate::status::log_tail(&s, "app")
                .iter()
                .filter_map(|l| {
                    l.strip_prefix("still here (")?
                        .strip_suffix(')')?
                        .parse::<u64>()
                        .ok()
                })
                .max()
                .unwrap_or(0);
            (w["state"].as_str() == Some("running"), pid, beats)
        };
        match poll_until(
            UPGRADE,
            Duration::from_millis(500),
            read,
            |(running, pid, beats)| *running && pid.is_some() && *beats > beyond,
        ) {
            Ok((_, Some(pid), beats)) => Ok((pid, beats)),
            Ok(_) | Err(_) => bail!(
                "{APP} on {}: no running status with a pid and a heartbeat count above \
                 {beyond} within {UPGRADE:?}; last: {}",
                short(node),
                self.status(APP, node)
            ),
        }
    }

    fn rollout_to(&self, version: &str, waves: &str) -> anyhow::Result<Instant> {
        let farmer = self.p.work.join("farmer.key");
        println!(
            "$ zos farm rollout {FARM} {version} --waves {}",
            short_waves(waves)
        );
        let at = Instant::now();
        self.zos(&[
            "farm",
            "rollout",
            FARM,
            version,
            "--waves",
            waves,
            "--key",
            path(&farmer)?,
            "--notary",
            &self.url,
        ])?;
        Ok(at)
    }

    fn publish_release(&self, version: &str) -> anyhow::Result<()> {
        let record = self.p.releases.join(version).join("release.json");
        println!("$ zos release publish releases/{version}/release.json");
        self.zos(&["release", "publish", path(&record)?, "--notary", &self.url])?;
        Ok(())
    }

    /// What the zos tool refuses to publish, written straight into the notary as any
    /// of its writers could: the record stored under a one-time key.
    fn put_raw_release(&self, version: &str) -> anyhow::Result<()> {
        let record = self.p.releases.join(version).join("release.json");
        let body: Value = serde_json::from_slice(&std::fs::read(&record)?)?;
        let key = zos_notary::NotaryKey::release(version)?;
        let writer = zos_contract::SecretKey::generate()?;
        let rec = zos_notary::Record::sign(&key, body, &writer)?;
        let notary = zos_notary::open(&self.url)?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(zos_notary::Notary::put(&notary, &rec))?;
        println!("(written straight into the notary) releases/{version}: no signature");
        Ok(())
    }

    /// Contract `id` of `blueprint` on `node`, signed by a new owner key, published.
    fn publish_contract(&self, id: &str, blueprint: &Path, node: &str) -> anyhow::Result<Instant> {
        let work = &self.p.work;
        let owner = work.join(format!("{id}-owner.key"));
        let owner_pub = key(&self.p.zos_bin, &owner)?;
        let contract = work.join(format!("{id}.json"));
        self.zos(&[
            "contract",
            "new",
            "--blueprint",
            path(blueprint)?,
            "--owner",
            &owner_pub,
            "--expires",
            "1d",
            "--id",
            id,
            "--node",
            node,
            "-o",
            path(&contract)?,
        ])?;
        self.zos(&["contract", "sign", path(&contract)?, "--key", path(&owner)?])?;
        println!("$ zos contract publish {id} (on node {})", short(node));
        let at = Instant::now();
        self.zos(&[
            "contract",
            "publish",
            path(&contract)?,
            "--key",
            path(&owner)?,
            "--notary",
            &self.url,
        ])?;
        Ok(at)
    }

    /// Contract `id`'s status on `node`, `Null` until there is one.
    fn status(&self, id: &str, node: &str) -> Value {
        self.zos(&[
            "contract", "status", id, "--node", node, "--notary", &self.url, "--json",
        ])
        .ok()
        .and_then(|out| serde_json::from_str::<Value>(&out).ok())
        .unwrap_or(Value::Null)
    }

    /// Prints the lines of `zos farm show` about the rollout.
    fn show_farm(&self) -> anyhow::Result<()> {
        println!("$ zos farm show {FARM}");
        let out = self.zos(&["farm", "show", FARM, "--notary", &self.url])?;
        for line in out.lines() {
            println!("  {line}");
        }
        Ok(())
    }

    fn run(&self) -> anyhow::Result<Figures> {
        let work = &self.p.work;
        let farmer = work.join("farmer.key");
        key(&self.p.zos_bin, &farmer)?;
        self.zos(&[
            "farm",
            "create",
            FARM,
            "--name",
            "xtask upgrade farm",
            "--key",
            path(&farmer)?,
            "--notary",
            &self.url,
        ])?;
        let accel = qemu::accel(&self.p.files.vmlinux);
        let cmdline = format!("zos.farm={FARM} zos.notary={}", self.url);
        let mut nodes = Vec::new();
        for i in 0..3 {
            nodes.push(qemu::boot(&self.p.files, &self.spec(&cmdline, i), accel)?);
        }
        println!("3 nodes booting under QEMU ({accel}, microvm), release key pinned");
        let milestones = qemu::wait_serving(&mut nodes, BOOT)?;
        let keys = nodes
            .iter()
            .map(|n| qemu::node_key(&n.console_text()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for n in &nodes {
            ensure!(
                following(&n.console_text(), "release_keys=1"),
                "{}: the agent does not follow the rollout with the pinned key; console:\n{}",
                n.name,
                n.console_text()
            );
        }
        let first = keys[0].clone();

        // A container on the first node.
        self.publish_contract(APP, &self.p.blueprint, &first)?;
        let (pid_before, beats) = self.app_pid(&first, 0)?;
        println!("{APP} runs on node 0: {pid_before}");

        // 1. 0.2.0 in two waves: the first node, then the rest.
        self.publish_release(V2)?;
        let consoles_before: Vec<usize> = nodes.iter().map(|n| n.console_text().len()).collect();
        let published = self.rollout_to(V2, &format!("{first},100%"))?;
        let mut first_upgraded = None;
        let view = poll_until(
            UPGRADE,
            Duration::from_millis(500),
            || {
                let v = self.rollout();
                if first_upgraded.is_none() && Self::row(&v, &first)["upgraded"] == true {
                    first_upgraded = Some(published.elapsed());
                }
                // Wave 2 never moves before wave 1 reports the version and beats.
                for k in &keys[1..] {
                    let row = Self::row(&v, k);
                    if row["upgrade"]["version"] == V2 || row["upgraded"] == true {
                        assert!(
                            first_upgraded.is_some(),
                            "node {} took {V2} before the first wave reported it: {v}",
                            short(k)
                        );
                    }
                }
                v
            },
            |v| keys.iter().all(|k| Self::row(v, k)["upgraded"] == true),
        )
        .or_else(|last| bail!("not every node on {V2} within {UPGRADE:?}; last: {last}"))?;
        let all_upgraded = published.elapsed();
        let first_upgraded = first_upgraded.context("the first node's upgrade")?;
        for (i, n) in nodes.iter().enumerate().skip(1) {
            let since = &n.console_text()[consoles_before[i]..];
            ensure!(
                since.contains("this node's wave waits for the previous one")
                    && since.contains(&first),
                "{}: no line saying its wave waited for the first node:\n{since}",
                n.name
            );
        }
        println!(
            "{V2}: node 0 upgraded {:.1} s after the rollout, all three {:.1} s; nodes 1 and 2 \
             said they waited for node 0",
            first_upgraded.as_secs_f64(),
            all_upgraded.as_secs_f64()
        );
        ensure!(
            view["halted"].as_array().is_none_or(|h| h.is_empty()),
            "halted: {view}"
        );
        let (pid_after, beats) = self.app_pid(&first, beats)?;
        ensure!(
            pid_after == pid_before,
            "the container was restarted by the upgrade: {pid_before} before, {pid_after} after"
        );
        println!("{APP}: still {pid_after} after the live upgrade");
        println!("$ zos node list --farm {FARM}");
        let list = self.zos(&["node", "list", "--farm", FARM, "--notary", &self.url])?;
        for line in list.lines() {
            println!("  {line}");
        }

        // 2. The broken 0.3.0: back to 0.2.0 by itself, the rollout halts.
        self.publish_release(V3)?;
        let consoles_before: Vec<usize> = nodes.iter().map(|n| n.console_text().len()).collect();
        let published = self.rollout_to(V3, &format!("{first},100%"))?;
        let view = poll_until(
            UPGRADE,
            Duration::from_millis(500),
            || self.rollout(),
            |v| {
                Self::row(v, &first)["rollback"]["rollback"]["version"] == V3
                    && Self::row(v, &first)["upgraded"] == false
                    && Self::row(v, &first)["version"] == V2
            },
        )
        .or_else(|last| bail!("no rollback from {V3} within {UPGRADE:?}; last: {last}"))?;
        let rolled_back = published.elapsed();
        let rollback = Self::row(&view, &first)["rollback"]["rollback"].clone();
        let tail = rollback["log_tail"].to_string();
        ensure!(
            tail.contains("this agent cannot start")
                && rollback["cause"] == "exited"
                && rollback["detail"] == "exit code 3"
                && rollback["running"] == V2,
            "the rollback record does not say the agent exited with code 3 with its last \
             lines, {V2} running again: {rollback}"
        );
        let halted: Vec<String> = view["halted"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h.as_str().map(str::to_owned))
            .collect();
        ensure!(
            halted.iter().any(|h| h.contains("rolled back from 0.3.0")),
            "zos farm show does not say the rollout halted: {view}"
        );
        // Every node says the rollout halted, the one that rolled back included (it does
        // not try the version again); then none of them moved toward it.
        for (i, n) in nodes.iter().enumerate() {
            poll_until(
                UPGRADE,
                Duration::from_millis(500),
                || n.console_text()[consoles_before[i]..].to_string(),
                |since| since.contains("the farm's rollout is halted"),
            )
            .or_else(|since| bail!("{}: no line saying the rollout halted:\n{since}", n.name))?;
        }
        let view = self.rollout();
        for (i, k) in keys.iter().enumerate() {
            let row = Self::row(&view, k);
            let u = &row["upgrade"];
            // Node 0's last attempt stays its one switch to 0.3.0; the others never
            // made one.
            let moved = if i == 0 {
                !(u["outcome"] == "switching" && u["version"] == V3)
            } else {
                u["version"] == V3
            };
            ensure!(
                row["version"] == V2 && !moved,
                "node {i} moved toward {V3} again after the rollback: {row}"
            );
        }
        println!(
            "{V3} (broken): node 0 rolled back to {V2} by itself {:.1} s after the rollout; \
             rollback record: {rollback}",
            rolled_back.as_secs_f64()
        );
        self.show_farm()?;
        let (pid_after_rollback, beats) = self.app_pid(&first, beats)?;
        ensure!(
            pid_after_rollback == pid_before,
            "the container was restarted by the rollback: {pid_before} before, \
             {pid_after_rollback} after"
        );

        // 3. Refusals: published by every node, nothing changes.
        let mut refused = Vec::new();
        for (version, code, what) in REFUSED {
            println!("-- {what}");
            if code == "unsigned" {
                self.put_raw_release(version)?;
            } else {
                self.publish_release(version)?;
            }
            let published = self.rollout_to(version, "100%")?;
            poll_until(
                REFUSE,
                Duration::from_millis(500),
                || self.rollout(),
                |v| {
                    keys.iter().all(|k| {
                        let u = &Self::row(v, k)["upgrade"];
                        u["outcome"] == "refused" && u["version"] == version && u["code"] == code
                    })
                },
            )
            .map_err(|last| {
                anyhow::anyhow!(
                    "{what}: not refused `{code}` by all three within {REFUSE:?}; last: {last}"
                )
            })?;
            refused.push((code.to_string(), published.elapsed()));
            println!(
                "{version}: refused `{code}` by all three nodes, published, {:.1} s after the rollout",
                published.elapsed().as_secs_f64()
            );
        }
        let view = self.rollout();
        for k in &keys {
            ensure!(
                Self::row(&view, k)["version"] == V2,
                "a node left {V2} after the refusals: {view}"
            );
        }
        let (pid_after_refusals, _) = self.app_pid(&first, beats)?;
        ensure!(
            pid_after_refusals == pid_before,
            "the container changed: {pid_after_refusals}"
        );

        // 4. A hard reset of the first node: it comes back on the committed 0.2.0.
        println!("node 0: hard reset (QEMU killed, started again on its disks)");
        nodes[0].kill();
        let reset = Instant::now();
        let mut spec = self.spec(&cmdline, 0);
        spec.fresh = false;
        nodes[0] = qemu::boot(&self.p.files, &spec, accel)?;
        qemu::wait_serving(&mut nodes[..1], BOOT)?;
        // The registration the agent makes at this boot: its heartbeat then follows it.
        let console = poll_until(
            UPGRADE,
            Duration::from_millis(500),
            || nodes[0].console_text(),
            |c| following(c, &format!("running={V2}")),
        )
        .or_else(|last| bail!("node 0 did not come back on {V2}; console:\n{last}"))?;
        let after_reset = reset.elapsed();
        ensure!(console.contains("serving contracts"), "{console}");
        println!(
            "node 0 runs {V2} again {:.1} s after the hard reset",
            after_reset.as_secs_f64()
        );

        // 5. A VM on the second node, from the hypervisor of the release it runs.
        let second = keys[1].clone();
        let published = self.publish_contract(VM, &self.p.vm_blueprint, &second)?;
        let status = poll_until(
            VM_BOOT,
            Duration::from_secs(2),
            || self.status(VM, &second),
            |s| {
                crate::status::log_tail(s, "vm")
                    .iter()
                    .any(|l| l.contains("vm-echo: "))
            },
        )
        .or_else(|last| {
            bail!(
                "{VM} on node 1: no guest console line within {VM_BOOT:?}; last status: {last}; \
                 console:\n{}",
                nodes[1].console_text()
            )
        })?;
        let vm_time = published.elapsed();
        let line = crate::status::log_tail(&status, "vm")
            .into_iter()
            .find(|l| l.contains("vm-echo: "))
            .unwrap_or_default();
        ensure!(
            status["workloads"]["vm"]["runtime"] == "qemu/tcg",
            "{VM}: not run by QEMU under TCG: {status}"
        );
        ensure!(
            nodes[1]
                .console_text()
                .contains("fetching the hypervisor bundle"),
            "node 1 did not fetch the hypervisor bundle; console:\n{}",
            nodes[1].console_text()
        );
        println!(
            "{VM} on node 1: the guest's line in the status {:.1} s after publishing \
             (hypervisor fetched and verified): {line}",
            vm_time.as_secs_f64()
        );

        Ok(Figures {
            vm: (vm_time, line),
            serving: milestones
                .iter()
                .map(|m| m.serving.unwrap_or_default())
                .collect(),
            first_upgraded,
            all_upgraded,
            pids: (pid_before, pid_after, pid_after_rollback),
            rolled_back,
            rollback,
            halted,
            refused,
            after_reset,
        })
    }
}

/// Whether a console line says the agent follows the farm's rollout, with `field`.
fn following(console: &str, field: &str) -> bool {
    console
        .lines()
        .any(|l| l.contains("following the farm's rollout") && l.contains(field))
}

fn short(key: &str) -> &str {
    key.get(..8).unwrap_or(key)
}

fn short_waves(waves: &str) -> String {
    waves
        .split(',')
        .map(|w| if w.ends_with('%') { w } else { short(w) })
        .collect::<Vec<_>>()
        .join(",")
}

/// Prints the run's figures.
pub fn print(f: &Figures) {
    println!("\nupgrade figures (TCG, host times):");
    let serving: Vec<String> = f
        .serving
        .iter()
        .map(|d| format!("{:.1} s", d.as_secs_f64()))
        .collect();
    println!("  nodes serving after QEMU start   {}", serving.join(", "));
    println!(
        "  rollout of {V2} to node 0 upgraded  {:.1} s (all three: {:.1} s)",
        f.first_upgraded.as_secs_f64(),
        f.all_upgraded.as_secs_f64()
    );
    println!(
        "  container                        {} before, {} after the upgrade, {} after the rollback",
        f.pids.0, f.pids.1, f.pids.2
    );
    println!(
        "  broken {V3} to rolled back       {:.1} s",
        f.rolled_back.as_secs_f64()
    );
    for (code, d) in &f.refused {
        println!(
            "  refused `{code}` by all three     {:.1} s",
            d.as_secs_f64()
        );
    }
    println!(
        "  hard reset to running {V2}      {:.1} s",
        f.after_reset.as_secs_f64()
    );
    println!(
        "  VM contract to guest line       {:.1} s (TCG inside TCG, hypervisor fetch included)",
        f.vm.0.as_secs_f64()
    );
}
