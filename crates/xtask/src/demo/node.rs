//! The demo's second half: a real node. `zosd run` on a loop-file pool, inside a pair of
//! network namespaces of its own (one plays the node with its uplink, one the
//! internet), so the machine's own network and firewall are never touched. The sample
//! flist is built and signed, the blueprint points at it, the contract is published,
//! and the demo shows the workload's output, reaches its opened port from "the
//! internet", kills its process and shows the restart, cancels and shows the cleanup.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use zos_testkit::netns::{in_netns_at, World, INET_IP, NODE_IP, UPLINK};

use super::{section, Demo};
use crate::{cargo, flists, target_dir};

const WAIT: Duration = Duration::from_secs(60);
/// The public port the sample blueprint opens.
const PUBLIC_PORT: u16 = 18080;

/// Everything the node part made; Drop stops zosd and removes it all. The two
/// namespaces are the test kit's world (`<tag>x-node`, `<tag>x-inet`, never under
/// zosd's prefix `<tag>-`, which zosd cleans up): they go, with whatever zosd made
/// under the prefix, when `world` drops after the rest.
pub(super) struct Node {
    pub(super) dir: PathBuf,
    pub(super) world: World,
    pub(super) zosd: Option<Child>,
}

impl Node {
    pub(super) fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut z) = self.zosd.take() {
            // SIGTERM: zosd stops its loop; workloads would survive it, but by now the
            // contract is cancelled and nothing runs.
            let _ = Command::new("kill").arg(z.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = z.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = z.kill();
            let _ = z.wait();
        }
        let root = self.dir.to_string_lossy().into_owned();
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        let img = self.dir.join("disk0.img");
        if let Ok(out) = Command::new("losetup").args(["-j"]).arg(&img).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(dev) = line.split(':').next() {
                    let _ = Command::new("losetup").args(["-d", dev]).status();
                }
            }
        }
        // Then `world` drops: our namespaces, our cgroup scope and whatever zosd made
        // with our prefix.
    }
}

pub fn run(d: &Demo) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the node part of the demo creates pools, namespaces and containers: run it as root");
    }
    section("8. a node: zosd run on a loop-file pool, in namespaces of its own");
    cargo(&["build", "--quiet", "-p", "zosd"])?;
    let (node, node_key) = start(d, "node", "zd", "")?;
    let i = node.world.inet.clone();

    section("9. the sample flist: built, packed, signed; the blueprint pins it");
    sample_blueprint(d)?;

    section("10. a contract for this node: signed, published, running");
    let id = "hello-acme";
    hello_contract(d, &node_key, id, 100, "hello.json")?;
    let t = Instant::now();
    d.step(&[
        "contract",
        "publish",
        "hello.json",
        "--key",
        "owner.key",
        "--notary",
        &d.notary,
    ])?;
    wait_status(d, &node_key, id, |s| s["state"] == "ok")?;
    println!(
        "  running {} ms after publishing (flist fetched, verified and unpacked the first time)",
        t.elapsed().as_millis()
    );
    // Its first lines, as the node reports them.
    wait_status(d, &node_key, id, |s| {
        crate::status::log_tail(s, "app")
            .iter()
            .any(|l| l.contains("hello from"))
    })?;
    d.step(&[
        "contract", "status", id, "--node", &node_key, "--notary", &d.notary,
    ])?;

    section("11. from the internet, the opened port answers (node address, public port)");
    let reply = connect_from(
        &format!("/run/netns/{i}"),
        &format!("{NODE_IP}:{PUBLIC_PORT}"),
        b"",
    )?;
    println!("  {INET_IP} -> {NODE_IP}:{PUBLIC_PORT}: {}", reply.trim());

    section("12. kill -9 the workload: the node restarts it");
    let name = format!("{id}.app");
    let pid = container_pid(&node, &name).context("no container pid")?;
    Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()?;
    println!("  $ kill -9 {pid}");
    let t = Instant::now();
    wait_status(d, &node_key, id, |s| {
        s["state"] == "ok" && s["workloads"]["app"]["restarts"].as_u64() >= Some(1)
    })?;
    println!(
        "  restarted in {} ms as pid {}",
        t.elapsed().as_millis(),
        container_pid(&node, &name).unwrap_or(0)
    );
    d.step(&[
        "contract", "status", id, "--node", &node_key, "--notary", &d.notary,
    ])?;

    observe_step(d, &node_key, id)?;

    vm_step(d, &node, &node_key, &i)?;

    section("14. the owner cancels: everything the contract had is removed");
    d.step(&[
        "contract",
        "cancel",
        id,
        "--key",
        "owner.key",
        "--notary",
        &d.notary,
    ])?;
    wait_status(d, &node_key, id, |s| s["state"] == "cancelled")?;
    d.step(&[
        "contract", "status", id, "--node", &node_key, "--notary", &d.notary,
    ])?;
    let containers = std::fs::read_dir(node.state().join("containers/state"))
        .map(|e| e.count())
        .unwrap_or(0);
    let volumes: usize = std::fs::read_dir(node.dir.join("pools"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|p| {
            std::fs::read_dir(p.path().join("volumes"))
                .map(|e| e.count())
                .unwrap_or(0)
        })
        .sum();
    let netns =
        String::from_utf8_lossy(&Command::new("ip").args(["netns", "list"]).output()?.stdout)
            .lines()
            .filter(|l| l.starts_with(&node.world.tag))
            .count();
    println!("  left on the node: {containers} containers, {volumes} volumes, {netns} namespaces (the demo's own two)");
    if containers != 0 || volumes != 0 || netns != 2 {
        bail!("the cancelled contract left something behind");
    }
    drop(node);
    println!("  zosd stopped; pool unmounted, loop device detached, namespaces removed");
    Ok(())
}

/// Starts `zosd run` for a node named `name` (its directory under the demo's), in
/// namespaces of the test kit's `tag`, with `extra` lines at the end of its
/// configuration's top-level keys (`farm = "…"`); returns it and its key.
pub(super) fn start(
    d: &Demo,
    name: &str,
    tag: &str,
    extra: &str,
) -> anyhow::Result<(Node, String)> {
    let mut node = Node {
        dir: d.dir.join(name),
        world: World::create(tag).context("making the node's namespaces")?,
        zosd: None,
    };
    std::fs::create_dir_all(&node.dir)?;
    let (n, i) = (node.world.node.clone(), node.world.inet.clone());
    println!(
        "  namespaces {n} (the node, uplink {UPLINK} {NODE_IP}) and {i} (the internet, {INET_IP})"
    );

    let config = node.dir.join("node.toml");
    std::fs::write(
        &config,
        format!(
            r#"notary = "{notary}"
state_dir = "{state}"
store_roots = ["{demo}"]
{extra}
[storage]
pools_root = "{dir}/pools"
loop_files = [{{ path = "{dir}/disk0.img", size_gib = 4 }}]
label_prefix = "{prefix}"

[network]
uplink = "{UPLINK}"
prefix = "{prefix}"
node_netns = "{node_netns}"
"#,
            notary = d.notary,
            demo = d.dir.display(),
            state = node.state().display(),
            dir = node.dir.display(),
            prefix = node.world.prefix,
            node_netns = node.world.path(&n).display(),
        ),
    )?;
    println!("  $ zosd run --config {}", config.display());
    let mut child = Command::new(target_dir().join("debug/zosd"))
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(node.dir.join("zosd.log"))?)
        .spawn()
        .context("starting zosd")?;
    let stdout = child.stdout.take().expect("piped");
    node.zosd = Some(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // Its lines until the one that names it (a node in a farm says first that it
    // registers).
    let key = loop {
        let line = rx.recv_timeout(WAIT).with_context(|| {
            format!(
                "zosd did not start; see {}",
                node.dir.join("zosd.log").display()
            )
        })?;
        println!("  {line}");
        if let Some(rest) = line.strip_prefix("zosd: node ") {
            break rest.split(' ').next().unwrap_or_default().to_string();
        }
    };
    Ok((node, key))
}

/// The sample flist built, packed and signed under `flist/`, and the blueprints pinning
/// it, signed by the expert: `hello.blueprint.json` (the CRM, with a network) and
/// `worker.blueprint.json` (no network: what the grid step places on these nodes,
/// which have no WireGuard for a network across replicas).
pub(super) fn sample_blueprint(d: &Demo) -> anyhow::Result<()> {
    let flist = flists::build(&d.dir.join("flist"), &d.zos)?;
    println!("  flist {} sha256 {}", flist.fl.display(), flist.sha256);
    println!("  publisher {}", flist.publisher);
    for (source, name) in [("crm", "hello"), ("worker", "worker")] {
        let blueprint =
            flists::pinned_blueprint(&format!("{source}.blueprint.toml"), "hello.fl", &flist)?;
        let toml = format!("{name}.blueprint.toml");
        std::fs::write(d.path(&toml), blueprint)?;
        d.step(&[
            "blueprint",
            "sign",
            &toml,
            "--key",
            "expert.key",
            "-o",
            &format!("{name}.blueprint.json"),
        ])?;
    }
    Ok(())
}

/// A contract of the sample blueprint for `node` (`users` users), made by the owner
/// with the legal stakeholder required, signed by both, written to `out`.
pub(super) fn hello_contract(
    d: &Demo,
    node: &str,
    id: &str,
    users: u32,
    out: &str,
) -> anyhow::Result<()> {
    let owner = d.step(&["key", "show", "owner.key"])?;
    let legal = d.step(&["key", "show", "legal.key"])?;
    d.step(&[
        "contract",
        "new",
        "--blueprint",
        "hello.blueprint.json",
        "--param",
        &format!("users={users}"),
        "--owner",
        &owner,
        "--node",
        node,
        "--stakeholder",
        &format!("{legal}:1:required"),
        "--threshold",
        "1",
        "--expires",
        "1d",
        "--id",
        id,
        "-o",
        out,
    ])?;
    for who in ["owner", "legal"] {
        d.step(&["contract", "sign", out, "--key", &format!("{who}.key")])?;
    }
    Ok(())
}

/// Step 12b: what a user without a shell has, each by the owner's signed request: the
/// lines the node publishes, a probe run inside the workload's network, and a support
/// bundle of the contract (verified, unpacked, no secret in it).
fn observe_step(d: &Demo, node_key: &str, id: &str) -> anyhow::Result<()> {
    section("12b. no shell, still no guesswork: logs, a probe, a support bundle (signed requests)");
    d.step(&[
        "contract", "logs", id, "--node", node_key, "--notary", &d.notary,
    ])?;
    let status = status_now(d, node_key, id)?;
    let addr = status["workloads"]["app"]["address"]
        .as_str()
        .context("the app has no address")?
        .to_string();
    d.step(&[
        "probe",
        node_key,
        "--key",
        "owner.key",
        "--notary",
        &d.notary,
        "--workload",
        &format!("{id}/app"),
        "tcp",
        &format!("{addr}:8080"),
    ])?;
    let request = d.step(&[
        "support",
        "request",
        node_key,
        "--key",
        "owner.key",
        "--contract",
        id,
        "--notary",
        &d.notary,
    ])?;
    let bundle = d.dir.join("bundle");
    d.step(&[
        "support",
        "fetch",
        node_key,
        "--id",
        request.trim(),
        "--unpack",
        &bundle.display().to_string(),
        "--notary",
        &d.notary,
    ])?;
    let mut files: Vec<String> = std::fs::read_dir(&bundle)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    println!("  bundle: {}", files.join(", "));
    Ok(())
}

/// Step 13: a micro-VM contract from the sample VM flist, its console line in the
/// status record, its echo port answering from the internet, then cancelled.
fn vm_step(d: &Demo, node: &Node, node_key: &str, inet: &str) -> anyhow::Result<()> {
    section("13. a micro-VM: the Debian kernel and a tiny init, under QEMU, on its tenant network");
    let flist = flists::build_vm(&d.dir.join("vmflist"), &d.zos)?;
    println!("  flist {} sha256 {}", flist.fl.display(), flist.sha256);
    let blueprint = flists::pinned_blueprint("echo-vm.blueprint.toml", "vm.fl", &flist)?;
    std::fs::write(d.path("echo-vm.blueprint.toml"), blueprint)?;
    d.step(&[
        "blueprint",
        "sign",
        "echo-vm.blueprint.toml",
        "--key",
        "expert.key",
        "-o",
        "echo-vm.blueprint.json",
    ])?;
    let owner = d.step(&["key", "show", "owner.key"])?;
    let id = "echo-vm";
    d.step(&[
        "contract",
        "new",
        "--blueprint",
        "echo-vm.blueprint.json",
        "--param",
        "memory=128",
        "--owner",
        &owner,
        "--node",
        node_key,
        "--expires",
        "1d",
        "--id",
        id,
        "-o",
        "echo-vm.json",
    ])?;
    d.step(&["contract", "sign", "echo-vm.json", "--key", "owner.key"])?;
    let t = Instant::now();
    d.step(&[
        "contract",
        "publish",
        "echo-vm.json",
        "--key",
        "owner.key",
        "--notary",
        &d.notary,
    ])?;
    wait_status(d, node_key, id, |s| s["state"] == "ok")?;
    println!(
        "  QEMU running {} ms after publishing",
        t.elapsed().as_millis()
    );
    // The guest's line, from the console the node keeps (the status record carries
    // it too, refreshed every few seconds).
    let console = std::fs::read_dir(node.state().join("vms"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .context("no VM run directory")?
        .join("console.log");
    let deadline = Instant::now() + WAIT;
    let line = loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.starts_with("vm-echo:")) {
            break l.to_string();
        }
        if Instant::now() > deadline {
            bail!("the guest printed nothing; see {}", console.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "  guest console, {} ms after publishing: {line}",
        t.elapsed().as_millis()
    );
    let reply = connect_from(
        &format!("/run/netns/{inet}"),
        &format!("{NODE_IP}:17007"),
        b"hello, VM\n",
    )?;
    println!(
        "  {INET_IP} -> {NODE_IP}:17007 (the guest's echo): {}",
        reply.trim()
    );
    wait_status(d, node_key, id, |s| {
        s["workloads"]["vm"]["log_tail"]
            .as_array()
            .is_some_and(|l| {
                l.iter()
                    .any(|l| l.as_str().unwrap_or("").starts_with("vm-echo:"))
            })
    })?;
    d.step(&[
        "contract", "status", id, "--node", node_key, "--notary", &d.notary,
    ])?;
    d.step(&[
        "contract",
        "cancel",
        id,
        "--key",
        "owner.key",
        "--notary",
        &d.notary,
    ])?;
    wait_status(d, node_key, id, |s| s["state"] == "cancelled")?;
    let vms = std::fs::read_dir(node.state().join("vms"))
        .map(|e| e.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0);
    println!("  cancelled: {vms} VMs left, QEMU stopped, tap and root vdisk removed");
    if vms != 0 {
        bail!("the cancelled VM left something behind");
    }
    Ok(())
}

fn status_now(d: &Demo, node: &str, id: &str) -> anyhow::Result<Value> {
    let out = Command::new(&d.zos)
        .args([
            "contract", "status", id, "--node", node, "--notary", &d.notary, "--json",
        ])
        .output()?;
    if !out.status.success() {
        return Ok(Value::Null);
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
}

/// Polls the node's status record until `pred` holds (bounded by [`WAIT`]).
fn wait_status(
    d: &Demo,
    node: &str,
    id: &str,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    wait_status_for(d, node, id, WAIT, pred)
}

/// Polls the node's status record until `pred` holds, for at most `timeout`.
pub(super) fn wait_status_for(
    d: &Demo,
    node: &str,
    id: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    crate::status::poll_until(
        timeout,
        Duration::from_millis(20),
        || status_now(d, node, id).unwrap_or(Value::Null),
        pred,
    )
    .or_else(|s| bail!("{id}: the node did not get there; last status: {s}"))
}

pub(super) fn container_pid(node: &Node, name: &str) -> Option<i32> {
    let path = node
        .state()
        .join("containers/state")
        .join(name)
        .join("state.json");
    let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    v["pid"].as_i64().map(|p| p as i32)
}

/// Connects to `addr` from the network namespace at `netns` and reads one line; the
/// connect runs on a thread that entered the namespace, so the demo's own stays put.
/// Connects from inside `netns` to `addr`, sends `send` and reads one line back.
fn connect_from(netns: &str, addr: &str, send: &[u8]) -> anyhow::Result<String> {
    use std::io::Write;
    let addr: std::net::SocketAddr = addr.parse()?;
    in_netns_at(Path::new(netns), || -> anyhow::Result<String> {
        // The first packets over a fresh link can be lost: retry, bounded.
        let mut last = None;
        for _ in 0..20 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(5)))?;
                    s.write_all(send)?;
                    let mut line = String::new();
                    BufReader::new(&mut s).read_line(&mut line)?;
                    return Ok(line);
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "connect {addr}: {}",
            last.map(|e| e.to_string()).unwrap_or_default()
        )
    })?
}
