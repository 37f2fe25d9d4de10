//! Many contracts on one node (issue #19 item 4), on the real kernel (root):
//! `cargo bench -p zosd --bench scale`, part of `cargo xtask bench container`.
//!
//! One node in agent mode gets `ZOS_BENCH_SCALE` (default 500) small contracts at once,
//! each its own contract with one busybox `sleep` container (1 CPU, 16 MiB, a 16 MiB
//! root quota, no volume) on a tenant network of its own (`ZOS_BENCH_SCALE_NETWORKS=0`:
//! none). Measured:
//!
//! - **time to all `ok`**, from the first notary `put` to the last `ok` status seen,
//!   and the contracts per second it makes; the reference is the same figure for
//!   `ZOS_BENCH_SCALE_REF` (default 50) contracts, measured first in the same run;
//! - **zosd's RSS** (VmRSS and its peak VmHWM) idle, with the reference batch, with
//!   all of them running (the moment the last is `ok`, and again after the probes and
//!   3 s of quiet, when zosd has given back what the burst freed), and after cancelling;
//!   zosd's threads and open files;
//! - **event latency**: the engine counts receipt-to-running in a histogram
//!   (`zos_engine_converge_seconds`) but only pushes it by remote write to a farm's
//!   target, so the bench measures a probe instead: one more contract published while
//!   they all run, from `put` to `ok`, `ZOS_BENCH_N` times (default 20); the reference
//!   is the same probe on the idle node, measured first;
//! - **cancel all**, then what is left of them: runtime state, namespaces, links and
//!   nft tables in the node namespace, mounts, cgroups and pool entries, each against
//!   what was there before the first batch.
//!
//! Status records are followed by a watch of the node's status prefix (no polling):
//! each state is timed when its record lands.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use zos_contract::{PublicKey, SignedContract};
use zos_notary::{AnyNotary, KeyPrefix, Notary, Record};
use zos_testkit::bench::{env_or, ms, pct};
use zos_testkit::contract as kit;

/// Each container's root quota: busybox unpacked is about 2 MiB.
const DISK_MIB: u64 = 16;
/// How long a batch may go without one more contract reaching the state it waits for.
const STALL: Duration = Duration::from_secs(180);

fn main() {
    if !privileged("zosd scale benchmark") {
        return;
    }
    let count: usize = env_or("ZOS_BENCH_SCALE", 500);
    let reference: usize = env_or("ZOS_BENCH_SCALE_REF", 50);
    let probes: usize = env_or("ZOS_BENCH_N", 20);
    let networked = env_or("ZOS_BENCH_SCALE_NETWORKS", 1) != 0;
    let p = people();
    // Every contract reserves 1 CPU and 16 MiB of SSD: CPU is compressible, the loop
    // image is sparse (what is reserved is not written).
    let most = count.max(reference) as u64 + 2;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let disk_gib = (most * DISK_MIB * 2).div_ceil(1024).max(8);
    let mut node = Node::sized(512, most.div_ceil(cores), disk_gib);
    let key = node.start();
    let zosd = node.zosd.as_ref().map(|c| c.id()).unwrap_or_default();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let board = Board::watch(node.notary.clone(), key);
    let bench = Bench {
        node: &node,
        key,
        p: &p,
        flist: &flist,
        networked,
        board: &board,
        rt: runtime(),
    };

    // Warm up: the first contract fetches, verifies and unpacks the flist.
    let warm = node.id("warm");
    let cold = bench.round_trip(&warm);
    let before = Residue::of(&node);
    let idle_rss = Memory::of(zosd);

    let idle_probe = bench.probes("idle", probes);
    let small = (reference > 0).then(|| bench.batch("ref", reference, zosd));
    let big = bench.batch_up("many", count, zosd);
    let loaded_probe = bench.probes("busy", probes);
    let settled_rss = settled(zosd);
    let cancelled = bench.cancel(&big.ids);
    let (left, cleared) = Residue::wait_gone(&node, &before);
    let after_rss = settled(zosd);

    if let Ok(path) = std::env::var("ZOS_BENCH_LOG") {
        let _ = std::fs::write(&path, node.log());
    }
    Report {
        count,
        networked,
        cold,
        idle_rss,
        idle_probe,
        small,
        big,
        loaded_probe,
        settled_rss,
        cancelled,
        left,
        cleared,
        after_rss,
    }
    .print();
}

/// zosd's memory once it has been quiet for longer than its quiet period (1 s,
/// zosd/src/quiet.rs), after which it gives the kernel back the pages a burst freed:
/// what a node with that many running holds, not the burst's high tide.
fn settled(zosd: u32) -> Memory {
    std::thread::sleep(Duration::from_secs(3));
    Memory::of(zosd)
}

/// A current-thread runtime for the notary calls of the bench's own thread.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// What the bench publishes with and waits on.
struct Bench<'a> {
    node: &'a Node,
    key: PublicKey,
    p: &'a People,
    flist: &'a (String, String, String),
    networked: bool,
    board: &'a Board,
    rt: tokio::runtime::Runtime,
}

/// A batch of contracts brought up (and, for the reference, cancelled again).
struct Batch {
    ids: Vec<String>,
    up: Duration,
    down: Option<Duration>,
    memory: Memory,
    objects: BTreeMap<&'static str, usize>,
    load: String,
}

impl Bench<'_> {
    fn put(&self, record: &Record) {
        self.rt
            .block_on(self.node.notary.put(record))
            .unwrap_or_else(|e| panic!("put {}: {e}", record.key));
    }

    /// A contract of one `sleep` container, on a network of its own when networked.
    fn sleeper(&self, id: &str) -> SignedContract {
        let mut app = json!({
            "name": "app",
            "kind": "container",
            "flist": flist_ref(self.p, self.flist),
            "entrypoint": ["/bin/sleep", "3600"],
            "cpu": 1,
            "memory_mib": 16,
            "disk_mib": DISK_MIB
        });
        let mut body = json!({ "workloads": [] });
        if self.networked {
            app["network"] = json!("net");
            // Every tenant may use the same subnet: each lives in its own namespace.
            body["networks"] = json!([{"name": "net", "subnet": "10.90.0.0/24"}]);
        }
        body["workloads"] = json!([app]);
        let bp = kit::signed_blueprint(
            &self.p.expert,
            json!({"name": "sleeper", "version": "1.0.0", "params": {}, "body": body}),
        );
        kit::signed(
            kit::contract(self.p.owner.public(), self.key, id, 1, bp),
            &[&self.p.owner],
        )
    }

    /// Publishes contract `id`, waits for `ok`, cancels it and waits for `cancelled`;
    /// returns put-to-ok.
    fn round_trip(&self, id: &str) -> Duration {
        let rec = record(self.p, self.key, &self.sleeper(id));
        let t = Instant::now();
        self.put(&rec);
        let ok = self
            .board
            .wait_all(std::slice::from_ref(&id.to_string()), "ok", self.node);
        self.put(&cancel_record(self.p, self.key, id, 2));
        self.board
            .wait_all(&[id.to_string()], "cancelled", self.node);
        ok - t
    }

    /// `n` round trips of probe contracts named `<name><i>`.
    fn probes(&self, name: &str, n: usize) -> Vec<Duration> {
        (0..n)
            .map(|i| self.round_trip(&self.node.id(&format!("{name}{i}"))))
            .collect()
    }

    /// `n` contracts published at once, until all are `ok`; left running.
    fn batch_up(&self, name: &str, n: usize, zosd: u32) -> Batch {
        let ids: Vec<String> = (0..n)
            .map(|i| self.node.id(&format!("{name}{i}")))
            .collect();
        // Signed before the clock starts: the owner's work, not the node's.
        let records: Vec<Record> = ids
            .iter()
            .map(|id| record(self.p, self.key, &self.sleeper(id)))
            .collect();
        let t = Instant::now();
        for r in &records {
            self.put(r);
        }
        let up = self.board.wait_all(&ids, "ok", self.node) - t;
        Batch {
            memory: Memory::of(zosd),
            objects: Residue::of(self.node).counts(),
            load: load(),
            ids,
            up,
            down: None,
        }
    }

    /// [`Bench::batch_up`], then all cancelled again.
    fn batch(&self, name: &str, n: usize, zosd: u32) -> Batch {
        let mut b = self.batch_up(name, n, zosd);
        b.down = Some(self.cancel(&b.ids));
        b
    }

    /// Cancels every contract of `ids` at once; the time to all `cancelled`.
    fn cancel(&self, ids: &[String]) -> Duration {
        let records: Vec<Record> = ids
            .iter()
            .map(|id| cancel_record(self.p, self.key, id, 2))
            .collect();
        let t = Instant::now();
        for r in &records {
            self.put(r);
        }
        self.board.wait_all(ids, "cancelled", self.node) - t
    }
}

/// The node's status records as they land, by contract: the latest state and when.
struct Board {
    seen: Arc<(Mutex<HashMap<String, Seen>>, Condvar)>,
}

struct Seen {
    state: String,
    at: Instant,
    body: Value,
}

impl Board {
    /// Starts watching `node`'s status prefix on a thread of its own; returns once the
    /// watch is established (nothing put after is missed).
    fn watch(notary: AnyNotary, node: PublicKey) -> Board {
        let seen = Arc::new((Mutex::new(HashMap::new()), Condvar::new()));
        let shared = Arc::clone(&seen);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let prefix = KeyPrefix::node_status(&node);
                let mut watch = notary.watch(&prefix).await.expect("watching statuses");
                let _ = ready_tx.send(());
                while let Some(r) = watch.recv().await {
                    if r.author != node {
                        continue;
                    }
                    let id = r.key.rsplit('/').next().unwrap_or_default().to_string();
                    let state = r.body["state"].as_str().unwrap_or_default().to_string();
                    let (map, changed) = &*shared;
                    let at = Instant::now();
                    map.lock().expect("board lock").insert(
                        id,
                        Seen {
                            state,
                            at,
                            body: r.body,
                        },
                    );
                    changed.notify_all();
                }
            });
        });
        ready_rx.recv().expect("the status watch started");
        Board { seen }
    }

    /// Waits until every contract of `ids` is in `state`; returns when the last of
    /// them got there. Panics when one fails, or none gets there for [`STALL`].
    fn wait_all(&self, ids: &[String], state: &str, node: &Node) -> Instant {
        let (map, changed) = &*self.seen;
        let mut seen = map.lock().expect("board lock");
        let mut done = 0;
        let mut deadline = Instant::now() + STALL;
        loop {
            let (now_done, last) = Board::progress(&seen, ids, state, node);
            if now_done == ids.len() {
                return last.unwrap_or_else(Instant::now);
            }
            if now_done > done {
                done = now_done;
                deadline = Instant::now() + STALL;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{done} of {} contracts {state} and no more for {STALL:?}; zosd log's end:\n{}",
                ids.len(),
                tail(&node.log(), 80)
            );
            seen = changed.wait_timeout(seen, left).expect("board lock").0;
        }
    }

    /// How many of `ids` are in `state`, and when the latest of those got there;
    /// panics on a failed one.
    fn progress(
        seen: &HashMap<String, Seen>,
        ids: &[String],
        state: &str,
        node: &Node,
    ) -> (usize, Option<Instant>) {
        let mut done = 0;
        let mut last = None;
        for id in ids {
            let Some(s) = seen.get(id) else { continue };
            if s.state == state {
                done += 1;
                last = last.max(Some(s.at));
            } else if s.state == "failed" {
                panic!(
                    "{id} failed: {:#}\nzosd log's end:\n{}",
                    s.body,
                    tail(&node.log(), 80)
                );
            }
        }
        (done, last)
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// zosd's memory and what it holds, from /proc.
#[derive(Clone, Copy, Default)]
struct Memory {
    rss_kib: u64,
    hwm_kib: u64,
    threads: u64,
    fds: usize,
}

impl Memory {
    fn of(pid: u32) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        Memory {
            rss_kib: field("VmRSS:"),
            hwm_kib: field("VmHWM:"),
            threads: field("Threads:"),
            fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
        }
    }
}

/// The host's load: tasks in all, and memory available (/proc).
fn load() -> String {
    let tasks = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        .unwrap_or_default();
    let available = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("MemAvailable:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    format!("tasks running/all {tasks}, MemAvailable {available}")
}

/// What the node's contracts leave in the kernel and on disk, by kind.
struct Residue(BTreeMap<&'static str, BTreeSet<String>>);

impl Residue {
    fn of(node: &Node) -> Residue {
        let mut r = BTreeMap::new();
        r.insert(
            "runtime containers",
            entries(&node.state().join("containers/state")),
        );
        r.insert("namespaces", node.world.namespaces().into_iter().collect());
        r.insert("node-namespace links", node_links(node));
        r.insert("node-namespace nft tables", node_tables(node));
        r.insert("mounts", node.mounts().into_iter().collect());
        let scope = node.world.prefix.trim_end_matches('-');
        r.insert(
            "container cgroups",
            entries(&std::path::Path::new("/sys/fs/cgroup/zos").join(scope))
                .into_iter()
                .filter(|e| !e.starts_with("cgroup.") && !e.contains('.'))
                .collect(),
        );
        r.insert("pool entries", pool_entries(node));
        Residue(r)
    }

    fn counts(&self) -> BTreeMap<&'static str, usize> {
        self.0.iter().map(|(k, v)| (*k, v.len())).collect()
    }

    /// What is here and was not in `before`, by kind (kinds with nothing left omitted).
    fn beyond(&self, before: &Residue) -> BTreeMap<&'static str, Vec<String>> {
        self.0
            .iter()
            .map(|(k, v)| {
                let old = before.0.get(k);
                let new: Vec<String> = v
                    .iter()
                    .filter(|e| old.is_none_or(|o| !o.contains(*e)))
                    .cloned()
                    .collect();
                (*k, new)
            })
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    /// What is left beyond `before` once every status says `cancelled`, and how long
    /// it took to go if it was not gone at once (`None`: gone at once, or never).
    /// Teardown runs before the status is put, so anything left is reported; it is
    /// looked at again (the kernel's asynchronous cleanups: a namespace's last link)
    /// for up to a minute.
    fn wait_gone(
        node: &Node,
        before: &Residue,
    ) -> (BTreeMap<&'static str, Vec<String>>, Option<Duration>) {
        let t = Instant::now();
        let first = Residue::of(node).beyond(before);
        if first.is_empty() {
            return (first, None);
        }
        loop {
            let now = Residue::of(node).beyond(before);
            if now.is_empty() {
                return (first, Some(t.elapsed()));
            }
            if t.elapsed() > Duration::from_secs(60) {
                return (now, None);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn entries(dir: &std::path::Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// `<pool>/<dir>/<entry>` under the node's pools (volumes, workload trees).
fn pool_entries(node: &Node) -> BTreeSet<String> {
    let pools = node.dir.path().join("pools");
    let mut all = BTreeSet::new();
    for pool in entries(&pools) {
        for kind in entries(&pools.join(&pool)) {
            let inner = entries(&pools.join(&pool).join(&kind));
            if inner.is_empty() {
                all.insert(format!("{pool}/{kind}"));
            }
            for e in inner {
                all.insert(format!("{pool}/{kind}/{e}"));
            }
        }
    }
    all
}

fn in_node_ns(node: &Node, args: &[&str]) -> String {
    Command::new("ip")
        .args(["netns", "exec", &node.world.node])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn node_links(node: &Node) -> BTreeSet<String> {
    in_node_ns(node, &["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

fn node_tables(node: &Node) -> BTreeSet<String> {
    in_node_ns(node, &["nft", "list", "tables"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Everything measured, printed as one table.
struct Report {
    count: usize,
    networked: bool,
    cold: Duration,
    idle_rss: Memory,
    idle_probe: Vec<Duration>,
    small: Option<Batch>,
    big: Batch,
    loaded_probe: Vec<Duration>,
    settled_rss: Memory,
    cancelled: Duration,
    left: BTreeMap<&'static str, Vec<String>>,
    cleared: Option<Duration>,
    after_rss: Memory,
}

impl Report {
    fn print(mut self) {
        let n = self.count;
        let net = if self.networked {
            "each on its own tenant network"
        } else {
            "no tenant network"
        };
        println!("zosd scale benchmark: {n} contracts, one sleep container each, {net}");
        println!("{:<62} {:>12} {:>12}", "", "figure", "per contract");
        let row = |what: &str, total: Duration, per: usize| {
            println!(
                "{what:<62} {:>10.1} s {:>9.1} ms",
                total.as_secs_f64(),
                ms(total) / per.max(1) as f64
            );
        };
        row(&format!("{n} published at once -> all ok"), self.big.up, n);
        if let Some(s) = &self.small {
            let k = s.ids.len();
            row(
                &format!("reference: {k} published at once -> all ok"),
                s.up,
                k,
            );
            if let Some(d) = s.down {
                row(
                    &format!("reference: {k} cancelled at once -> all cancelled"),
                    d,
                    k,
                );
            }
        }
        row(
            &format!("{n} cancelled at once -> all cancelled"),
            self.cancelled,
            n,
        );
        println!(
            "{:<62} {:>10.1} /s",
            format!("throughput to ok, {n}"),
            n as f64 / self.big.up.as_secs_f64()
        );
        if let Some(s) = &self.small {
            println!(
                "{:<62} {:>10.1} /s",
                format!("throughput to ok, reference {}", s.ids.len()),
                s.ids.len() as f64 / s.up.as_secs_f64()
            );
        }
        println!(
            "{:<62} {:>10.1} ms",
            "first contract (flist fetched + unpacked)",
            ms(self.cold)
        );

        let k = self.idle_probe.len();
        println!();
        println!("probe: one more contract put -> ok ({k} rounds; p99 of {k} is the max)");
        println!(
            "{:<62} {:>9} {:>9} {:>9}",
            "", "p50 ms", "p99 ms", "ratio p50"
        );
        let (i50, i99) = (
            pct(&mut self.idle_probe, 0.5),
            pct(&mut self.idle_probe, 0.99),
        );
        let (l50, l99) = (
            pct(&mut self.loaded_probe, 0.5),
            pct(&mut self.loaded_probe, 0.99),
        );
        println!(
            "{:<62} {:>9.1} {:>9.1}",
            "reference: idle node",
            ms(i50),
            ms(i99)
        );
        println!(
            "{:<62} {:>9.1} {:>9.1} {:>9.2}",
            format!("with {n} running"),
            ms(l50),
            ms(l99),
            ms(l50) / ms(i50)
        );

        println!();
        println!("zosd memory          VmRSS KiB  VmHWM KiB  threads  fds");
        let mem = |what: &str, m: &Memory| {
            println!(
                "{what:<20} {:>9} {:>10} {:>8} {:>4}",
                m.rss_kib, m.hwm_kib, m.threads, m.fds
            );
        };
        mem("idle (reference)", &self.idle_rss);
        if let Some(s) = &self.small {
            mem(&format!("{} running", s.ids.len()), &s.memory);
        }
        mem(&format!("{n} running, at ok"), &self.big.memory);
        mem(&format!("{n}, 3 s quiet"), &self.settled_rss);
        mem("cancelled, 3 s quiet", &self.after_rss);
        let goal = 48 * 1024;
        println!(
            "goal: VmRSS under {goal} KiB with {n} running, quiet -> {}",
            if self.settled_rss.rss_kib < goal {
                "met"
            } else {
                "NOT met"
            }
        );

        println!();
        println!(
            "kernel objects and entries with {n} running ({})",
            self.big.load
        );
        for (kind, c) in &self.big.objects {
            println!("  {kind:<30} {c:>6}");
        }
        println!();
        if self.left.is_empty() {
            println!(
                "after cancelling all: nothing left behind (each kind as before the first batch)"
            );
        } else {
            let when = self.cleared.map_or_else(
                || "still there after a minute".to_string(),
                |d| format!("gone {:.1} s after the last status", d.as_secs_f64()),
            );
            println!("after cancelling all, left beyond the start ({when}):");
            for (kind, v) in &self.left {
                let shown: Vec<&String> = v.iter().take(5).collect();
                println!("  {kind:<30} {:>6}  e.g. {shown:?}", v.len());
            }
        }
    }
}
