//! The grid (issue #15, docs/grid.md) on real nodes: `zosd run` processes (tests/common's
//! `Node`, each in its own `zt-` namespaces) registered in one farm of a shared notary,
//! and the orchestrator (`zos_grid::Bot`) in-process. `after_s` is 10 s, the floor.
//!
//! `the_grid_on_etcd`: one real etcd, a farm of three nodes (A and B with an 8 GiB disk,
//! C with 1 GiB) and a fourth node D registered in another farm, one bot. Each node
//! reaches etcd at a loopback address of its own. In order:
//! 1. placement: `replicas = 2` with a 2 GiB volume lands on two distinct nodes with
//!    room and runs there (status `ok` with its replica at epoch 1, the container's
//!    process alive); C never gets an assignment. 1b: the owner's cancellation at the
//!    farm's key removes both copies.
//! 2. failover: a node N holding a replica of a `move` contract and one of a `stay`
//!    contract is killed (zosd and its containers). The `move` replica runs on another
//!    node at epoch 2 (the time it took is printed, not asserted). N starts again: its
//!    copy is `moved`, its container never starts again, and the placement record shows
//!    the move with its reason (`node_lost`).
//! 3. attacks, each refused on the node with its code and nothing run there: an
//!    assignment signed by another key (`not_orchestrator`), the epoch-1 assignment
//!    replayed after the move (`stale_epoch`), an assignment to D, outside the farm
//!    (`outside_farm`), a placement contract at a node's own contract key (`unassigned`).
//! 4. stay: N's replica of the `stay` contract is reported `lost`, and nothing moves.
//! 6. partition (the test 3): nft drops the traffic between one node and its
//!    etcd address; the node stops its copy (fence at `after_s / 2`), the bot moves it at
//!    `after_s`; an observer polling every node's workloads every 100 ms never sees two
//!    copies; healed, the node reports `moved` and runs nothing.
//! 7. two bots (the test 6): a second instance of the orchestrator's key starts,
//!    the leader's task is aborted (its lease expires), and the second places a new
//!    contract (the stale leader's refused write is tested in crates/zos-grid).
//! 8. drain (the test 5): the farmer drains the node of a replica; the bot hands
//!    it over make-before-break (the new copy runs at the next epoch while the old one
//!    still runs), then moves it with reason `drain` and the old node removes its copy;
//!    a new contract's replicas avoid the drained node; undrained, it takes one again.
//!
//! `the_grid_on_a_directory`: 5. the same placement and failover (one replica, kill,
//! moved) on a `dir://` notary with one bot.
//!
//! Every scenario of a test runs even when an earlier one failed (unless it needs what
//! that one set up); the test prints one PASS / FAIL / BLOCKED line per scenario and
//! fails if any did not pass.
//!
//! Several nodes share this host: each node's cgroups are under its own scope (its
//! network prefix's), so a node removing its copy of a replica never touches another
//! node's copy, and the tests assert that.

mod common;

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use zos_contract::{
    assignment::Assignment, BlueprintRef, Failover, FailoverMode, Placement, PublicKey, SecretKey,
    SignedAssignment, SignedContract,
};
use zos_grid::{Bot, PlacementRecord, Reason, ReplicaState};
use zos_notary::{AnyNotary, KeyPrefix, Notary, NotaryKey, Record};
use zos_registry::{Farm, Registration};
use zos_testkit::contract as kit;

const FARM: &str = "zt-grid";
const OTHER_FARM: &str = "zt-grid-other";
/// The floor of `failover.after_s`.
const AFTER_S: u64 = 10;
/// The nodes' heartbeat period (a quarter of `after_s` at most: docs/grid.md).
const BEAT_S: u64 = 1;
/// The volume of a replica of the placement scenario: more than node C's disk holds.
const BIG_VOLUME_MIB: u64 = 2048;
/// Node C's disk (its one SSD pool), GiB; the others have 8.
const SMALL_DISK_GIB: u64 = 1;

fn orchestrator() -> SecretKey {
    SecretKey::from_seed([40; 32])
}
/// An orchestrator no bot runs: contracts naming it are placed only by the test's
/// own assignments.
fn idle_orchestrator() -> SecretKey {
    SecretKey::from_seed([41; 32])
}
fn farmer() -> SecretKey {
    SecretKey::from_seed([42; 32])
}

/// A running bot: what stops it, and its task.
type BotTask = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), zos_grid::BotError>>,
);

/// The shared parts of one grid: the test's notary client (on a runtime of its own),
/// the bot, the nodes, the flist.
struct Grid {
    rt: tokio::runtime::Runtime,
    url: String,
    notary: AnyNotary,
    bot: Option<BotTask>,
    p: People,
    flist: (String, String, String),
    nodes: Vec<Node>,
    flist_dir: tempfile::TempDir,
}

impl Grid {
    fn new(url: &str) -> Grid {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let p = people();
        let dir = zos_testkit::tempdir("grid-flist");
        let flist = busybox_flist(dir.path(), &p.publisher);
        let notary = {
            let _in = rt.enter();
            zos_notary::open(url).unwrap()
        };
        Grid {
            rt,
            url: url.to_string(),
            notary,
            bot: None,
            p,
            flist,
            nodes: Vec::new(),
            flist_dir: dir,
        }
    }

    fn put(&self, r: &Record) {
        self.rt.block_on(self.notary.put(r)).unwrap();
    }

    fn get(&self, k: &NotaryKey) -> Option<Record> {
        self.rt.block_on(self.notary.get(k)).unwrap()
    }

    fn list(&self, prefix: &KeyPrefix) -> Vec<Record> {
        self.rt.block_on(self.notary.list(prefix)).unwrap()
    }

    fn create_farm(&self, farm: &str) {
        let now = zos_registry::now();
        let f = Farm::create_or_update(None, farm, "grid test farm", farmer().public(), now)
            .unwrap()
            .sign(&farmer(), now)
            .unwrap();
        self.put(&f);
    }

    /// Boots a node of `farm` with a loop disk of `disk_gib`; waits until it is
    /// registered there. Returns its index.
    fn boot(&mut self, disk_gib: u64, farm: &str) -> usize {
        let url = self.url.clone();
        self.boot_at(&url, disk_gib, farm)
    }

    /// [`Grid::boot`] for a node that reaches the notary at `url`.
    fn boot_at(&mut self, url: &str, disk_gib: u64, farm: &str) -> usize {
        let store = Some(self.flist_dir.path());
        let mut node = Node::joined_with(512, url, farm, BEAT_S, disk_gib, store);
        let key = node.start();
        self.nodes.push(node);
        let i = self.nodes.len() - 1;
        self.wait(i, "its registration", || {
            self.get(&NotaryKey::registration(&key)).filter(|r| {
                Registration::from_record(r).is_ok_and(|(who, reg)| who == key && reg.farm == farm)
            })
        });
        i
    }

    fn key(&self, i: usize) -> PublicKey {
        self.nodes[i].key.unwrap()
    }

    fn index(&self, key: &PublicKey) -> usize {
        self.nodes
            .iter()
            .position(|n| n.key.as_ref() == Some(key))
            .unwrap_or_else(|| panic!("{key} is none of the test's nodes"))
    }

    fn start_bot(&mut self) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        // The bot's own client, made on the runtime that drives it.
        let notary = {
            let _in = self.rt.enter();
            zos_notary::open(&self.url).unwrap()
        };
        let run = self.rt.spawn(Bot::new(orchestrator(), notary).run(async {
            let _ = stopped.await;
        }));
        self.bot = Some((stop, run));
    }

    /// Polls `f` every 50 ms until it returns `Some`; panics after `within` with node
    /// `i`'s log.
    fn wait_within<T>(
        &self,
        i: usize,
        within: Duration,
        what: &str,
        f: impl Fn() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = f() {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "no {what} within {within:?}; log of node {i}:\n{}",
                    tail(&self.nodes[i].log())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait<T>(&self, i: usize, what: &str, f: impl Fn() -> Option<T>) -> T {
        self.wait_within(i, WAIT, what, f)
    }

    /// Node `i`'s status of `id`, checked to be signed by it.
    fn status(&self, i: usize, id: &str) -> Option<Value> {
        let key = self.key(i);
        self.get(&NotaryKey::status(&key, id).unwrap()).map(|r| {
            assert_eq!(r.author, key, "status signed by the node");
            r.body
        })
    }

    /// Waits until node `i` reports `id` running (`ok`) as `replica` at `epoch`, with
    /// a live container process; returns its pid.
    fn wait_running(&self, i: usize, id: &str, replica: u64, epoch: u64) -> i32 {
        self.wait(
            i,
            &format!("{id} replica {replica} running at epoch {epoch} on node {i}"),
            || {
                let s = self.status(i, id)?;
                (s["state"] == "ok" && s["replica"] == replica && s["epoch"] == epoch)
                    .then_some(())?;
                running(&self.nodes[i], id).first().map(|(_, pid)| *pid)
            },
        )
    }

    /// Waits until node `i` refuses `id` with `code`; then nothing of `id` runs there.
    fn wait_refused(&self, i: usize, id: &str, code: &str) -> Value {
        let s = self.wait(i, &format!("refusal {code} of {id} on node {i}"), || {
            self.status(i, id)
                .filter(|s| s["state"] == "refused" && codes(s).iter().any(|c| c == code))
        });
        assert!(
            containers(&self.nodes[i], id).is_empty(),
            "{id} refused ({code}) yet a container exists on node {i}: {:?}",
            containers(&self.nodes[i], id)
        );
        s
    }

    /// The placement record of `id` in `farm`, checked to be the orchestrator's.
    fn placement(&self, farm: &str, id: &str) -> Option<PlacementRecord> {
        let r = self.get(&NotaryKey::placement(farm, id).unwrap())?;
        assert_eq!(
            r.author,
            orchestrator().public(),
            "written by the orchestrator"
        );
        Some(serde_json::from_value(r.body).unwrap())
    }

    /// Waits (up to `within`) until `id`'s placement record in `farm` satisfies `pred`;
    /// panics with the last record and node `i`'s log.
    fn wait_placement(
        &self,
        i: usize,
        within: Duration,
        farm: &str,
        id: &str,
        what: &str,
        pred: impl Fn(&PlacementRecord) -> bool,
    ) -> PlacementRecord {
        let deadline = Instant::now() + within;
        loop {
            let rec = self.placement(farm, id);
            if let Some(r) = rec.as_ref().filter(|r| pred(r)) {
                return r.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "{id}: no {what} within {within:?}; last placement record {rec:#?}\n\
                     log of node {i}:\n{}",
                    tail(&self.nodes[i].log())
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The (replica, epoch) pairs of `id` assigned to node `i`, as read in the notary.
    fn assignments(&self, i: usize, id: &str) -> Vec<(u64, u64)> {
        self.list(&KeyPrefix::node_assignments(&self.key(i)))
            .iter()
            .filter_map(|r| SignedAssignment::from_value(&r.body).ok())
            .filter(|a| a.assignment.contract == id)
            .map(|a| (a.assignment.replica, a.assignment.epoch))
            .collect()
    }

    /// A placement contract `id` of the owner on `farm`, `replicas` of one container
    /// with a volume of `volume_mib`, in subnet `10.81.<net>.0/24`.
    #[allow(clippy::too_many_arguments)]
    fn contract(
        &self,
        id: &str,
        farm: &str,
        replicas: u64,
        mode: FailoverMode,
        orchestrator: PublicKey,
        volume_mib: u64,
    ) -> SignedContract {
        let p = &self.p;
        let bp = kit::signed_blueprint(
            &p.expert,
            json!({
                "name": "replica",
                "version": "1.0.0",
                "params": {},
                "body": {
                    "volumes": [{"name": "data", "size_mib": volume_mib}],
                    "workloads": [{
                        "name": "app",
                        "kind": "container",
                        "flist": flist_ref(p, &self.flist),
                        "entrypoint": ["/bin/sh", "-c", "echo up > /data/up; exec sleep 3600"],
                        "cpu": 1,
                        "memory_mib": 64,
                        "mounts": [{"volume": "data", "path": "/data"}]
                    }]
                }
            }),
        );
        let mut c = kit::contract(p.owner.public(), p.owner.public(), id, 1, bp);
        c.nodes = vec![];
        assert!(matches!(c.blueprint, BlueprintRef::Embedded(_)));
        let placement = Placement {
            farm: farm.into(),
            replicas,
            orchestrator,
            failover: Failover {
                mode,
                after_s: AFTER_S,
            },
            constraints: None,
        };
        let mut doc = SignedContract::placed(c, placement).unwrap();
        doc.sign(&p.owner).unwrap();
        doc
    }

    /// Publishes `doc` at `grid/<farm>/contracts/<id>`, signed by the owner.
    fn publish(&self, farm: &str, doc: &SignedContract) {
        let key = NotaryKey::placement_contract(farm, &doc.contract.id).unwrap();
        self.put(&Record::sign(&key, doc.to_value(), &self.p.owner).unwrap());
    }

    /// The owner cancels `id` (version 1) at the farm's key; waits until no node of
    /// `nodes` runs or reports it running.
    fn cancel(&self, farm: &str, id: &str, nodes: &[usize]) {
        let key = NotaryKey::placement_contract(farm, id).unwrap();
        self.put(
            &Record::sign(&key, kit::cancellation(&self.p.owner, id, 2), &self.p.owner).unwrap(),
        );
        for &i in nodes {
            self.wait(i, &format!("{id} gone from node {i}"), || {
                let done = self.status(i, id).is_none_or(|s| {
                    ["cancelled", "moved", "refused"].contains(&s["state"].as_str().unwrap_or(""))
                });
                (done && running(&self.nodes[i], id).is_empty()).then_some(())
            });
        }
    }

    /// The farmer drains (`true`) or undrains node `i`.
    fn drain(&self, farm: &str, i: usize, drained: bool) {
        let key = NotaryKey::drain(farm, &self.key(i)).unwrap();
        self.put(&Record::sign(&key, json!({ "drained": drained }), &farmer()).unwrap());
    }

    /// Kills node `i` as a power cut would: zosd and every workload process it ran.
    fn kill(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.kill9();
        for (_, pid) in running(node, "") {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let deadline = Instant::now() + WAIT;
        while !running(node, "").is_empty() {
            assert!(
                Instant::now() < deadline,
                "node {i}'s workloads did not die"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Grid {
    fn drop(&mut self) {
        if let Some((stop, run)) = self.bot.take() {
            let _ = stop.send(());
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), run).await });
        }
        // Each node kills what it ran and removes its own cgroup scope.
        self.nodes.clear();
    }
}

/// A real etcd serving clients on 127.0.0.1 (the test, the bot) and on 127.0.0.2 to
/// 127.0.0.5, one address per node, so that nft can drop one node's traffic to it.
struct Etcd {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Etcd {
    fn start() -> Etcd {
        let mut last = String::new();
        for _ in 0..3 {
            let dir = zos_testkit::tempdir("grid-etcd");
            let port = zos_testkit::etcd::free_port().unwrap();
            let peer = zos_testkit::etcd::free_port().unwrap();
            let clients: Vec<String> = (1..=5)
                .map(|h| format!("http://127.0.0.{h}:{port}"))
                .collect();
            let log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
            let mut child = zos_testkit::etcd::command(
                None,
                &dir.path().join("data"),
                &clients.join(","),
                &format!("http://127.0.0.1:{peer}"),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd (apt-get install -y etcd-server)");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && child.try_wait().unwrap().is_none() {
                if healthy(port) {
                    return Etcd {
                        child,
                        port,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            last = std::fs::read_to_string(dir.path().join("etcd.log")).unwrap_or_default();
        }
        panic!("etcd did not start; its log:\n{last}");
    }

    /// The notary URL at 127.0.0.`host`.
    fn url(&self, host: u8) -> String {
        format!("etcd://127.0.0.{host}:{}/zos", self.port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut reply = String::new();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_ok()
        && s.read_to_string(&mut reply).is_ok()
        && reply.contains("\"health\":\"true\"")
}

/// An nft table of the test's own dropping every packet to and from one etcd address
/// (a partition of the node using it); removed on drop.
struct Cut {
    table: String,
}

impl Cut {
    fn new(tag: &str, host: u8, port: u16) -> Cut {
        let table = format!("{}_cut", tag.replace('-', "_"));
        let script = format!(
            "table inet {table} {{\n\
               chain out {{\n\
                 type filter hook output priority -10; policy accept;\n\
                 ip daddr 127.0.0.{host} tcp dport {port} drop\n\
                 ip saddr 127.0.0.{host} tcp sport {port} drop\n\
               }}\n\
             }}\n"
        );
        let mut nft = std::process::Command::new("nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft");
        use std::io::Write;
        nft.stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success(), "nft refused:\n{script}");
        Cut { table }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// The refusal codes of a status.
fn codes(s: &Value) -> Vec<String> {
    s["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["code"].as_str().map(str::to_string))
        .collect()
}

/// Containers of contract `id` (names `<id>.<workload>`; every one when `id` is
/// empty) that libcontainer holds state for on `node`.
fn containers(node: &Node, id: &str) -> Vec<String> {
    containers_in(&node.state(), id)
}

/// [`containers`] of the node whose state dir is `state`.
fn containers_in(state: &Path, id: &str) -> Vec<String> {
    std::fs::read_dir(state.join("containers/state"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| id.is_empty() || n.starts_with(&format!("{id}.")))
        .collect()
}

/// The containers of `id` on `node` whose process is alive, with its pid.
fn running(node: &Node, id: &str) -> Vec<(String, i32)> {
    running_in(&node.state(), id)
}

/// [`running`] on the node whose state dir is `state` (libcontainer's state files).
fn running_in(state: &Path, id: &str) -> Vec<(String, i32)> {
    containers_in(state, id)
        .into_iter()
        .filter_map(|n| {
            let path = state.join("containers/state").join(&n).join("state.json");
            let v: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
            let pid = v["pid"].as_i64()? as i32;
            alive(pid).then_some((n, pid))
        })
        .collect()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Runs the scenarios in order, each caught so that the next runs; prints one line per
/// scenario; panics at the end if any did not pass.
struct Scenarios {
    results: Vec<(String, Result<(), String>)>,
}

impl Scenarios {
    fn new() -> Scenarios {
        Scenarios {
            results: Vec::new(),
        }
    }

    /// Runs `f` as scenario `name` unless one of `needs` did not pass.
    fn run(&mut self, name: &str, needs: &[&str], f: impl FnOnce()) -> bool {
        let blocked: Vec<&str> = needs
            .iter()
            .copied()
            .filter(|n| !self.results.iter().any(|(r, ok)| r == n && ok.is_ok()))
            .collect();
        let result = if blocked.is_empty() {
            let started = Instant::now();
            let r = std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into())
            });
            eprintln!(
                "grid: {name}: {} ({:.1} s)",
                if r.is_ok() { "PASS" } else { "FAIL" },
                started.elapsed().as_secs_f64()
            );
            r
        } else {
            eprintln!("grid: {name}: BLOCKED on {blocked:?}");
            Err(format!("blocked on {blocked:?}"))
        };
        let ok = result.is_ok();
        self.results.push((name.to_string(), result));
        ok
    }

    fn finish(self) {
        let failed: Vec<String> = self
            .results
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
            .collect();
        assert!(failed.is_empty(), "{}", failed.join("\n\n"));
    }
}

#[test]
fn the_grid_on_etcd() {
    if !privileged("the_grid_on_etcd") {
        return;
    }
    let etcd = Etcd::start();
    let mut g = Grid::new(&etcd.url(1));
    g.create_farm(FARM);
    g.create_farm(OTHER_FARM);
    // Node i reaches etcd at 127.0.0.<i + 2>: nft can cut one node off (scenario 6).
    let a = g.boot_at(&etcd.url(2), 8, FARM);
    let b = g.boot_at(&etcd.url(3), 8, FARM);
    let c = g.boot_at(&etcd.url(4), SMALL_DISK_GIB, FARM);
    let d = g.boot_at(&etcd.url(5), 8, OTHER_FARM);
    let tag = g.nodes[0].world.tag.clone();
    let id = |name: &str| format!("{tag}-{name}");
    let (big, moving, staying) = (id("big"), id("moving"), id("staying"));
    let (forged, outside, unassigned) = (id("forged"), id("outside"), id("unassigned"));
    g.start_bot();

    // Everything is published at once; the scenarios then wait for their part.
    let me = orchestrator().public();
    let idle = idle_orchestrator();
    g.publish(
        FARM,
        &g.contract(&big, FARM, 2, FailoverMode::Move, me, BIG_VOLUME_MIB),
    );
    g.publish(
        FARM,
        &g.contract(&moving, FARM, 2, FailoverMode::Move, me, 64),
    );
    g.publish(
        FARM,
        &g.contract(&staying, FARM, 2, FailoverMode::Stay, me, 64),
    );

    // Attack contracts: their orchestrator is a key no bot runs.
    // not_orchestrator: another key signs an assignment of `forged` to A, naming itself
    // in the body and as the envelope's author (the notary's author rule holds).
    let forged_doc = g.contract(&forged, FARM, 1, FailoverMode::Move, idle.public(), 64);
    g.publish(FARM, &forged_doc);
    let thief = SecretKey::from_seed([66; 32]);
    let assign = |doc: &SignedContract, node: PublicKey, epoch: u64, by: &SecretKey| {
        let a = Assignment {
            contract: doc.contract.id.clone(),
            version: doc.contract.version,
            digest: doc.digest,
            replica: 0,
            node,
            epoch,
            issued_at: zos_registry::now(),
            orchestrator: by.public(),
        };
        let signed = SignedAssignment::sign(a, by).unwrap();
        let key = NotaryKey::assignment(&node, &doc.contract.id, 0).unwrap();
        Record::sign(&key, signed.to_value(), by).unwrap()
    };
    g.put(&assign(&forged_doc, g.key(a), 1, &thief));
    // outside_farm: the contract's orchestrator assigns it to D, a node of another farm.
    // Filed under both farms: D follows its own farm's contracts.
    let outside_doc = g.contract(&outside, FARM, 1, FailoverMode::Move, idle.public(), 64);
    g.publish(FARM, &outside_doc);
    g.publish(OTHER_FARM, &outside_doc);
    g.put(&assign(&outside_doc, g.key(d), 1, &idle));
    // unassigned: a placement contract at A's own contract key, with no assignment.
    let unassigned_doc = g.contract(&unassigned, FARM, 1, FailoverMode::Move, idle.public(), 64);
    g.put(
        &Record::sign(
            &NotaryKey::contract(&g.key(a), &unassigned).unwrap(),
            unassigned_doc.to_value(),
            &g.p.owner,
        )
        .unwrap(),
    );

    let mut s = Scenarios::new();
    let mut big_on: Vec<usize> = Vec::new();
    s.run(
        "1 placement: replicas = 2 on two nodes with room",
        &[],
        || {
            let rec = g.wait(a, "placement record of the big contract", || {
                g.placement(FARM, &big)
                    .filter(|r| r.replicas.iter().all(|k| k.node.is_some()))
            });
            let on: Vec<PublicKey> = rec.replicas.iter().map(|k| k.node.unwrap()).collect();
            assert_ne!(on[0], on[1], "distinct nodes: {rec:?}");
            assert!(
                !on.contains(&g.key(c)),
                "placed on the node without room: {rec:?}"
            );
            for (k, node) in on.iter().enumerate() {
                let i = g.index(node);
                let pid = g.wait_running(i, &big, k as u64, 1);
                eprintln!("grid: {big} replica {k} runs on node {i} (pid {pid})");
            }
            let rec = g.wait(a, "both replicas running in the placement record", || {
                g.placement(FARM, &big)
                    .filter(|r| r.replicas.iter().all(|k| k.state == ReplicaState::Running))
            });
            assert!(rec.replicas.iter().all(|k| k.epoch == 1), "{rec:?}");
            // The positive event was both running; C has no assignment and no status.
            assert_eq!(
                g.assignments(c, &big),
                vec![],
                "C was assigned the big contract"
            );
            assert!(g.status(c, &big).is_none(), "C took the big contract");
            assert!(containers(&g.nodes[c], &big).is_empty());
            big_on = on.iter().map(|k| g.index(k)).collect();
        },
    );
    // The owner cancels the big one at the farm's key: its volumes (2 GiB on each of
    // two 8 GiB disks) would otherwise stay in the nodes' offers.
    s.run(
        "1b the owner cancels a placement contract: both copies go",
        &["1 placement: replicas = 2 on two nodes with room"],
        || {
            let key = NotaryKey::placement_contract(FARM, &big).unwrap();
            g.put(&Record::sign(&key, kit::cancellation(&g.p.owner, &big, 2), &g.p.owner).unwrap());
            for &i in &big_on {
                g.wait(i, &format!("{big} cancelled on node {i}"), || {
                    g.status(i, &big).filter(|s| s["state"] == "cancelled")
                });
                assert_eq!(containers(&g.nodes[i], &big), Vec::<String>::new());
            }
        },
    );

    s.run(
        "3a attack: assignment signed by another key (not_orchestrator)",
        &[],
        || {
            g.wait_refused(a, &forged, "not_orchestrator");
        },
    );
    s.run(
        "3c attack: assignment to a node of another farm (outside_farm)",
        &[],
        || {
            g.wait_refused(d, &outside, "outside_farm");
        },
    );
    s.run(
        "3d attack: placement contract at the node's contract key (unassigned)",
        &[],
        || {
            g.wait_refused(a, &unassigned, "unassigned");
        },
    );

    // The move and stay contracts each run on two of the three nodes: at least one node
    // holds a replica of both. That node is killed.
    let mut victim = None;
    let mut old_assignment = None;
    s.run("2a move and stay contracts running", &[], || {
        let recs: Vec<PlacementRecord> = [&moving, &staying]
            .iter()
            .map(|id| {
                g.wait(a, &format!("{id} placed"), || {
                    g.placement(FARM, id)
                        .filter(|r| r.replicas.iter().all(|k| k.node.is_some()))
                })
            })
            .collect();
        for (id, rec) in [&moving, &staying].iter().zip(&recs) {
            for k in &rec.replicas {
                g.wait_running(g.index(&k.node.unwrap()), id, k.replica, 1);
            }
        }
        let both = recs[0]
            .replicas
            .iter()
            .find(|m| recs[1].replicas.iter().any(|s| s.node == m.node))
            .expect("a node with both");
        let n = g.index(&both.node.unwrap());
        let rec = g
            .get(&NotaryKey::assignment(&g.key(n), &moving, both.replica).unwrap())
            .expect("the victim's assignment");
        victim = Some((n, both.replica));
        old_assignment = Some(rec);
    });
    let (n, replica) = victim.unwrap_or((usize::MAX, 0));

    let mut moved_to = None;
    s.run(
        "2b kill a node: its move replica runs elsewhere at epoch 2",
        &["2a move and stay contracts running"],
        || {
            let others: Vec<PublicKey> = g
                .placement(FARM, &moving)
                .unwrap()
                .replicas
                .iter()
                .filter(|k| k.replica != replica)
                .filter_map(|k| k.node)
                .collect();
            g.kill(n);
            let killed = Instant::now();
            let rec = g.wait_placement(
                n,
                Duration::from_secs(AFTER_S) + WAIT,
                FARM,
                &moving,
                "move at epoch 2",
                |r| r.replicas[replica as usize].epoch == 2,
            );
            let to = rec.replicas[replica as usize].node.unwrap();
            assert_ne!(to, g.key(n), "{rec:?}");
            assert!(!others.contains(&to), "two replicas on one node: {rec:?}");
            let m = g.index(&to);
            let pid = g.wait_running(m, &moving, replica, 2);
            eprintln!(
                "grid: node {n} killed; replica {replica} of {moving} running on node {m} at \
                 epoch 2 (pid {pid}) after {:.1} s (after_s = {AFTER_S}; expected within \
                 after_s + the alive record's TTL + a bot round + the deployment, about 5 s)",
                killed.elapsed().as_secs_f64()
            );
            let last = rec.moves.last().unwrap();
            assert!(
                matches!(&last.reason, Reason::NodeLost { node, .. } if *node == g.key(n)),
                "{last:?}"
            );
            assert_eq!(
                (last.replica, last.from, last.to, last.epoch),
                (replica, Some(g.key(n)), to, 2)
            );
            moved_to = Some(m);
        },
    );

    s.run(
        "4 stay: the killed node's replica is lost, nothing moves",
        &["2a move and stay contracts running"],
        || {
            let before = g.placement(FARM, &staying).unwrap();
            let rec = g.wait_placement(
                n,
                Duration::from_secs(AFTER_S) + WAIT,
                FARM,
                &staying,
                "stay replica reported lost",
                |r| {
                    r.replicas
                        .iter()
                        .any(|k| k.node == Some(g.key(n)) && k.state == ReplicaState::Lost)
                },
            );
            eprintln!("grid: {staying} on node {n}: {:?}", rec.replicas);
            for (k, was) in rec.replicas.iter().zip(&before.replicas) {
                assert_eq!(
                    (k.node, k.epoch),
                    (was.node, was.epoch),
                    "a stay replica moved: {rec:?}"
                );
            }
            let third = (0..3)
                .find(|i| rec.replicas.iter().all(|k| k.node != Some(g.key(*i))))
                .expect("a node without the stay contract");
            assert_eq!(g.assignments(third, &staying), vec![], "assigned elsewhere");
            assert!(g.status(third, &staying).is_none());
        },
    );

    s.run(
        "2c the killed node comes back: its copy is moved, never restarted",
        &["2b kill a node: its move replica runs elsewhere at epoch 2"],
        || {
            let log_before = g.nodes[n].log().len();
            g.nodes[n].start();
            let st = g.wait(n, "status moved on the node that came back", || {
                g.status(n, &moving).filter(|s| s["state"] == "moved")
            });
            eprintln!("grid: node {n} after its restart: {st}");
            assert_eq!(
                running(&g.nodes[n], &moving),
                vec![],
                "the moved replica runs again on the node that came back:\n{}",
                &g.nodes[n].log()[log_before..]
            );
            assert_eq!(containers(&g.nodes[n], &moving), Vec::<String>::new());
            let m = moved_to.unwrap();
            // The new copy on node m is untouched by node n's removal of its own (each
            // node's cgroups are under its own scope).
            assert!(
                !running(&g.nodes[m], &moving).is_empty(),
                "the copy on node {m} died when node {n} removed its own"
            );
            let rec = g.placement(FARM, &moving).unwrap();
            assert_eq!(rec.replicas[replica as usize].node, Some(g.key(m)));
            assert!(rec.moves.iter().any(|mv| mv.replica == replica
                && mv.epoch == 2
                && matches!(&mv.reason, Reason::NodeLost { node, .. } if *node == g.key(n))));
        },
    );

    s.run(
        "3b attack: the epoch-1 assignment replayed after the move (stale_epoch)",
        &["2c the killed node comes back: its copy is moved, never restarted"],
        || {
            g.put(old_assignment.as_ref().unwrap());
            g.wait_refused(n, &moving, "stale_epoch");
        },
    );

    let part = id("part");
    s.run(
        "6 partition: the node fences at after_s / 2, the bot moves at after_s, no overlap",
        &[],
        || {
            let farm = [a, b, c];
            for &i in &farm {
                if g.nodes[i].zosd.is_none() {
                    g.nodes[i].start();
                }
            }
            // A clean slate: the owner cancels the move and stay contracts, and no copy
            // of them runs anywhere.
            for id in [&moving, &staying] {
                let key = NotaryKey::placement_contract(FARM, id).unwrap();
                g.put(
                    &Record::sign(&key, kit::cancellation(&g.p.owner, id, 2), &g.p.owner).unwrap(),
                );
            }
            for &i in &farm {
                for id in [&moving, &staying] {
                    g.wait(i, &format!("{id} gone from node {i}"), || {
                        let done = g.status(i, id).is_none_or(|s| {
                            ["cancelled", "moved", "refused"]
                                .contains(&s["state"].as_str().unwrap_or(""))
                        });
                        (done && running(&g.nodes[i], id).is_empty()).then_some(())
                    });
                }
            }
            g.publish(
                FARM,
                &g.contract(&part, FARM, 1, FailoverMode::Move, me, 64),
            );
            let rec = g.wait_placement(a, WAIT, FARM, &part, "placement", |r| {
                r.replicas[0].node.is_some()
            });
            let p = g.index(&rec.replicas[0].node.unwrap());
            g.wait_running(p, &part, 0, 1);

            // The observer: every 100 ms, on which nodes a process of the replica lives.
            let states: Vec<(usize, PathBuf)> =
                farm.iter().map(|&i| (i, g.nodes[i].state())).collect();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let t0 = Instant::now();
            let observer = {
                let (stop, part) = (stop.clone(), part.clone());
                std::thread::spawn(move || {
                    let (mut polls, mut overlaps) = (0u64, 0u64);
                    let (mut p_gone, mut other_first) = (None, None);
                    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                        let on: Vec<usize> = states
                            .iter()
                            .filter(|(_, st)| !running_in(st, &part).is_empty())
                            .map(|(i, _)| *i)
                            .collect();
                        polls += 1;
                        if on.len() > 1 {
                            overlaps += 1;
                        }
                        if !on.contains(&p) && p_gone.is_none() {
                            p_gone = Some(t0.elapsed());
                        }
                        if on.iter().any(|i| *i != p) && other_first.is_none() {
                            other_first = Some(t0.elapsed());
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    (polls, overlaps, p_gone, other_first)
                })
            };
            let port = g
                .url
                .rsplit(':')
                .next()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let cut = Cut::new(&tag, p as u8 + 2, port);
            let rec = g.wait_placement(
                p,
                Duration::from_secs(AFTER_S) + WAIT,
                FARM,
                &part,
                "move at epoch 2",
                |r| r.replicas[0].epoch == 2,
            );
            let m = g.index(&rec.replicas[0].node.unwrap());
            assert_ne!(m, p);
            g.wait_running(m, &part, 0, 2);
            let moved_at = t0.elapsed();
            // The partition heals: the node learns of the move and removes its copy.
            drop(cut);
            g.wait(p, "status moved on the partitioned node", || {
                g.status(p, &part).filter(|s| s["state"] == "moved")
            });
            assert_eq!(running(&g.nodes[p], &part), vec![]);
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            let (polls, overlaps, p_gone, other_first) = observer.join().unwrap();
            eprintln!(
                "grid: partition of node {p}: its copy gone after {p_gone:?} (fence at \
                 after_s / 2 = {} s after the last renewal), the copy on node {m} first \
                 seen after {other_first:?}, running there at epoch 2 after {moved_at:?}; \
                 {polls} polls every 100 ms, {overlaps} with two copies",
                AFTER_S / 2
            );
            let fenced = g.nodes[p]
                .log()
                .lines()
                .any(|l| l.contains("fencing") && l.contains(&format!("\"contract\":\"{part}\"")));
            assert!(
                fenced,
                "no fencing event in node {p}'s log:\n{}",
                tail(&g.nodes[p].log())
            );
            let (gone, first) = (p_gone.expect("the copy died"), other_first.expect("seen"));
            assert!(
                gone < first,
                "the new copy started before the old one stopped"
            );
            assert_eq!(overlaps, 0, "two copies ran at once");
        },
    );

    s.run(
        "7 two bots: the leader dies, the other takes over and places",
        &[],
        || {
            // A second instance of the orchestrator's key, with its own client.
            let notary = {
                let _in = g.rt.enter();
                zos_notary::open(&g.url).unwrap()
            };
            let (stop2, stopped2) = tokio::sync::oneshot::channel::<()>();
            let second = g.rt.spawn(Bot::new(orchestrator(), notary).run(async {
                let _ = stopped2.await;
            }));
            // The leader dies without a word: its task is aborted, its lease expires.
            let (_, first) = g.bot.take().expect("the first bot");
            first.abort();
            let t = Instant::now();
            let id = id("takeover");
            g.publish(FARM, &g.contract(&id, FARM, 1, FailoverMode::Move, me, 64));
            let rec = g.wait_placement(a, WAIT, FARM, &id, "placement by the second bot", |r| {
                r.replicas[0].node.is_some()
            });
            let i = g.index(&rec.replicas[0].node.unwrap());
            g.wait_running(i, &id, 0, 1);
            eprintln!(
                "grid: the first bot aborted; the second placed {id} on node {i}, running {:.1} s later",
                t.elapsed().as_secs_f64()
            );
            g.cancel(FARM, &id, &[a, b, c]);
            g.bot = Some((stop2, second));
        },
    );

    s.run(
        "8 drain: make-before-break, nothing new on the drained node, undrain",
        &[],
        || {
            let farm = [a, b, c];
            for &i in &farm {
                if g.nodes[i].zosd.is_none() {
                    g.nodes[i].start();
                }
            }
            // Room on every node in the bot's view: the earlier contracts go.
            g.cancel(FARM, &part, &farm);
            let drained = id("drained");
            g.publish(
                FARM,
                &g.contract(&drained, FARM, 1, FailoverMode::Move, me, 64),
            );
            let rec = g.wait_placement(a, WAIT, FARM, &drained, "placement", |r| {
                r.replicas[0].node.is_some()
            });
            let p = g.index(&rec.replicas[0].node.unwrap());
            let old_pid = g.wait_running(p, &drained, 0, 1);

            g.drain(FARM, p, true);
            // The handover: the new node starts its copy while the old one still runs.
            let rec = g.wait_placement(p, WAIT, FARM, &drained, "a handover", |r| {
                r.replicas[0].handover.is_some()
            });
            let h = rec.replicas[0].handover.unwrap();
            assert_eq!(rec.replicas[0].node, Some(g.key(p)), "{rec:?}");
            let q = g.index(&h.node);
            assert_ne!(q, p);
            g.wait_running(q, &drained, 0, h.epoch);
            // Make before break: the old copy was still there when the new one ran.
            // (The record names p until q's ok reaches the bot.)
            let still = g.placement(FARM, &drained).unwrap();
            if still.replicas[0].node == Some(g.key(p)) {
                assert!(
                    running(&g.nodes[p], &drained)
                        .iter()
                        .any(|(_, pid)| *pid == old_pid),
                    "the old copy stopped before the record moved the replica"
                );
            }
            // Then the move, reason drain; the old node removes its copy.
            let rec = g.wait_placement(
                p,
                WAIT,
                FARM,
                &drained,
                "the move after the handover",
                |r| r.replicas[0].node == Some(g.key(q)) && r.replicas[0].handover.is_none(),
            );
            let last = rec.moves.last().unwrap();
            assert!(
                matches!(&last.reason, Reason::Drain { node } if *node == g.key(p)),
                "{last:?}"
            );
            g.wait(p, "status moved on the drained node", || {
                g.status(p, &drained).filter(|s| s["state"] == "moved")
            });
            assert_eq!(running(&g.nodes[p], &drained), vec![]);
            assert!(
                !running(&g.nodes[q], &drained).is_empty(),
                "the new copy runs"
            );

            // Nothing new on the drained node.
            let after = id("after-drain");
            g.publish(
                FARM,
                &g.contract(&after, FARM, 2, FailoverMode::Move, me, 64),
            );
            let rec = g.wait_placement(a, WAIT, FARM, &after, "placement on the other two", |r| {
                r.replicas.iter().all(|k| k.node.is_some())
            });
            assert!(
                rec.replicas.iter().all(|k| k.node != Some(g.key(p))),
                "a new replica on the drained node: {rec:?}"
            );
            g.cancel(FARM, &drained, &farm);
            g.cancel(FARM, &after, &farm);

            // Undrained, it takes replicas again: three replicas need all three nodes.
            g.drain(FARM, p, false);
            let back = id("undrained");
            g.publish(
                FARM,
                &g.contract(&back, FARM, 3, FailoverMode::Move, me, 64),
            );
            let rec = g.wait_placement(a, WAIT, FARM, &back, "three replicas placed", |r| {
                r.replicas.iter().all(|k| k.node.is_some())
            });
            assert!(
                rec.replicas.iter().any(|k| k.node == Some(g.key(p))),
                "{rec:?}"
            );
            g.cancel(FARM, &back, &farm);
        },
    );

    s.finish();
}

#[test]
fn the_grid_on_a_directory() {
    if !privileged("the_grid_on_a_directory") {
        return;
    }
    let dir = zos_testkit::tempdir("grid-notary");
    let mut g = Grid::new(&format!("dir://{}", dir.path().display()));
    g.create_farm(FARM);
    g.boot(8, FARM);
    g.boot(8, FARM);
    let one = format!("{}-one", g.nodes[0].world.tag);
    g.start_bot();
    let me = orchestrator().public();
    g.publish(FARM, &g.contract(&one, FARM, 1, FailoverMode::Move, me, 64));

    let mut s = Scenarios::new();
    let mut on = usize::MAX;
    s.run("5a dir:// placement", &[], || {
        let rec = g.wait(0, "the placement record", || {
            g.placement(FARM, &one)
                .filter(|r| r.replicas[0].node.is_some())
        });
        on = g.index(&rec.replicas[0].node.unwrap());
        g.wait_running(on, &one, 0, 1);
    });
    s.run(
        "5b dir:// failover and the node's return",
        &["5a dir:// placement"],
        || {
            let other = 1 - on;
            g.kill(on);
            let killed = Instant::now();
            g.wait_placement(
                on,
                Duration::from_secs(AFTER_S) + WAIT,
                FARM,
                &one,
                "move at epoch 2",
                |r| r.replicas[0].epoch == 2 && r.replicas[0].node == Some(g.key(other)),
            );
            g.wait_running(other, &one, 0, 2);
            eprintln!(
                "grid: dir:// node {on} killed; the replica runs on node {other} at epoch 2 \
             after {:.1} s (after_s = {AFTER_S})",
                killed.elapsed().as_secs_f64()
            );
            g.nodes[on].start();
            g.wait(on, "status moved", || {
                g.status(on, &one).filter(|s| s["state"] == "moved")
            });
            assert_eq!(running(&g.nodes[on], &one), vec![]);
            assert_eq!(containers(&g.nodes[on], &one), Vec::<String>::new());
        },
    );
    s.finish();
}
