//! `cargo xtask bench grid`: the orchestrator at scale, against a real etcd
//! (docs/benchmarks.md, "Grid"; issue #15, "Scale").
//!
//! - **The grid**: `GRID_NODES` simulated nodes (1,000; 100 with `BENCH_QUICK=1`) in one
//!   farm, each a tokio task with the real notary client: a signed registration, a
//!   heartbeat with its capacity, its liveness record kept alive by zosd's own
//!   `zos_registry::liveness` (TTL 2 s), and a watch of its `nodes/<n>/assignments/`
//!   that answers every assignment at once with a signed `ok` status carrying the
//!   replica and epoch (a provisioner that answers at once). `GRID_NODES_PER_CLIENT`
//!   nodes share one notary client (default 1: a client per node).
//! - **The contracts**: `GRID_CONTRACTS` placement contracts (5,000; 500 quick), each
//!   `replicas = 1`, `failover = move` after 10 s, signed by one owner, with the
//!   blueprint embedded.
//! - **The bot**: `zos_grid::Bot` in-process on a thread and a current-thread runtime
//!   of its own (so `/proc/thread-self` gives its CPU), with a client of its own wrapped
//!   in a timing [`Notary`] (which is how a round's time is split into its notary calls
//!   without touching the bot). Its loop is `Bot::run`'s: one subscription (a feed
//!   whose view is kept from the notary's events), then a round ([`Bot::step`]: the
//!   events queued applied, plan, write), then the next change applied or
//!   [`zos_grid::bot::ROUND_EVERY`], whichever comes first; leadership is left out
//!   (one bot).
//!
//! Measured:
//! 1. placements per second: from the bot's start until every replica is assigned
//!    (and until every one is `ok`). Reference, in the same run and the same etcd: the
//!    rate of `put_if(Absent)` of records of a placement record's size from one client
//!    (pre-signed), under a prefix the bot does not read;
//! 2. per round: its time and how it splits into the listings (a subscription's
//!    snapshot, when it takes one), the writes and the rest (the bot's own CPU work:
//!    applying events, verifying contracts, planning, signing);
//! 3. the bot's CPU (its thread) and the process's RSS (the nodes' too: the rise
//!    when the bot started is given beside it); etcd's CPU and RSS (`/proc/<pid>`) and
//!    database size (its `/metrics`);
//! 4. after 10 % of the nodes stop (their liveness and watch tasks dropped, nothing
//!    revoked), the time until every one of their replicas is `ok` on another node at
//!    a higher epoch (goal: `after_s` + 5 s = 15 s), and when the bot's view saw
//!    their alive records go;
//! 5. watch lag: from just before the bot's `put` of an assignment to its delivery at
//!    the node's watch, p50 / p99 over every assignment (same process, same clock);
//!    reference: the `put` alone.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use zos_contract::{
    BlueprintRef, Contract, Failover, FailoverMode, Placement, PublicKey, SecretKey,
    SignedAssignment, SignedContract,
};
use zos_engine::{State, StatusReport};
use zos_grid::{Bot, Move, PlacementRecord, Reason};
use zos_notary::{
    AnyNotary, EventWatch, Expect, KeyPrefix, Lease, Notary, NotaryError, NotaryKey, Record, Watch,
    WatchEvent,
};
use zos_registry::liveness::{self, Liveness};
use zos_registry::{ContractCounts, Dmi, Heartbeat, NodeResources, Registration, Usage};
use zos_testkit::bench::{env_or, ms};
use zos_testkit::etcd::Etcd;

const FARM: &str = "zt-bench-farm";
const GIB: u64 = 1 << 30;
const AFTER_S: u64 = 10;
/// zosd's liveness TTL.
const TTL: Duration = Duration::from_secs(2);
/// Concurrent writers when the bench itself fills the store.
const FILLERS: usize = 16;

fn seed_key(tag: u8, i: u32) -> SecretKey {
    let mut seed = [tag; 32];
    seed[..4].copy_from_slice(&i.to_le_bytes());
    SecretKey::from_seed(seed)
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------------
// The bot's heap: what the bot's thread allocates and frees (the process's RSS holds
// the simulated nodes too).

struct Counting;

thread_local! {
    static ON_BOT: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}
static BOT_LIVE: AtomicI64 = AtomicI64::new(0);
static BOT_PEAK: AtomicI64 = AtomicI64::new(0);

fn on_bot() -> bool {
    ON_BOT.try_with(|b| b.get()).unwrap_or(false)
}

fn bot_grew(by: i64) {
    let now = BOT_LIVE.fetch_add(by, Ordering::Relaxed) + by;
    BOT_PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged; the counters only
// read the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if on_bot() {
            bot_grew(layout.size() as i64);
        }
        // SAFETY: the caller's contract for `alloc`, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if on_bot() {
            BOT_LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `dealloc`, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if on_bot() {
            bot_grew(new_size as i64 - layout.size() as i64);
        }
        // SAFETY: the caller's contract for `realloc`, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

// ---------------------------------------------------------------------------------
// The bot's notary, timed per call kind.

#[derive(Default, Clone, Copy)]
struct Op {
    calls: u64,
    time: Duration,
    records: u64,
}

impl Op {
    fn add(&mut self, t: Duration, records: u64) {
        self.calls += 1;
        self.time += t;
        self.records += records;
    }
    fn minus(&self, o: &Op) -> Op {
        Op {
            calls: self.calls - o.calls,
            time: self.time - o.time,
            records: self.records - o.records,
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Ops {
    subscribe: Op,
    list_grid: Op,
    list_nodes: Op,
    put_if: Op,
    put: Op,
    delete: Op,
    other: Op,
}

impl Ops {
    fn minus(&self, o: &Ops) -> Ops {
        Ops {
            subscribe: self.subscribe.minus(&o.subscribe),
            list_grid: self.list_grid.minus(&o.list_grid),
            list_nodes: self.list_nodes.minus(&o.list_nodes),
            put_if: self.put_if.minus(&o.put_if),
            put: self.put.minus(&o.put),
            delete: self.delete.minus(&o.delete),
            other: self.other.minus(&o.other),
        }
    }
    fn notary_time(&self) -> Duration {
        self.subscribe.time
            + self.list_grid.time
            + self.list_nodes.time
            + self.put_if.time
            + self.put.time
            + self.delete.time
            + self.other.time
    }
}

/// What the bot's notary saw: times per call kind, and when each assignment's `put`
/// started and ended (for the watch lag).
#[derive(Default)]
struct Seen {
    ops: Ops,
    assignment_puts: HashMap<String, (Instant, Duration)>,
}

#[derive(Clone)]
struct Timed {
    inner: AnyNotary,
    seen: Arc<Mutex<Seen>>,
}

impl Timed {
    fn note(&self, f: impl FnOnce(&mut Ops) -> &mut Op, t: Duration, records: u64) {
        f(&mut self.seen.lock().unwrap().ops).add(t, records);
    }
}

impl Notary for Timed {
    async fn put(&self, record: &Record) -> Result<(), NotaryError> {
        let t = Instant::now();
        let r = self.inner.put(record).await;
        let took = t.elapsed();
        let mut s = self.seen.lock().unwrap();
        s.ops.put.add(took, 1);
        if record.key.contains("/assignments/") {
            s.assignment_puts.insert(record.key.clone(), (t, took));
        }
        r
    }
    async fn get(&self, key: &NotaryKey) -> Result<Option<Record>, NotaryError> {
        let t = Instant::now();
        let r = self.inner.get(key).await;
        self.note(|o| &mut o.other, t.elapsed(), 1);
        r
    }
    async fn list(&self, prefix: &KeyPrefix) -> Result<Vec<Record>, NotaryError> {
        let t = Instant::now();
        let r = self.inner.list(prefix).await;
        let n = r.as_ref().map_or(0, |v| v.len() as u64);
        if *prefix == KeyPrefix::grid() {
            self.note(|o| &mut o.list_grid, t.elapsed(), n);
        } else if *prefix == KeyPrefix::nodes() {
            self.note(|o| &mut o.list_nodes, t.elapsed(), n);
        } else {
            self.note(|o| &mut o.other, t.elapsed(), n);
        }
        r
    }
    async fn watch(&self, prefix: &KeyPrefix) -> Result<Watch, NotaryError> {
        self.inner.watch(prefix).await
    }
    async fn put_if(&self, record: &Record, expect: &Expect) -> Result<(), NotaryError> {
        let t = Instant::now();
        let r = self.inner.put_if(record, expect).await;
        self.note(|o| &mut o.put_if, t.elapsed(), 1);
        r
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<Lease, NotaryError> {
        self.inner.grant_lease(ttl).await
    }
    async fn put_leased(
        &self,
        record: &Record,
        lease: &Lease,
        expect: &Expect,
    ) -> Result<(), NotaryError> {
        self.inner.put_leased(record, lease, expect).await
    }
    async fn keep_alive(&self, lease: &Lease) -> Result<Duration, NotaryError> {
        self.inner.keep_alive(lease).await
    }
    async fn revoke(&self, lease: &Lease) -> Result<(), NotaryError> {
        self.inner.revoke(lease).await
    }
    async fn delete(&self, key: &NotaryKey) -> Result<(), NotaryError> {
        let t = Instant::now();
        let r = self.inner.delete(key).await;
        self.note(|o| &mut o.delete, t.elapsed(), 1);
        r
    }
    async fn watch_events(&self, prefix: &KeyPrefix) -> Result<EventWatch, NotaryError> {
        self.inner.watch_events(prefix).await
    }
    async fn subscribe_events(
        &self,
        prefix: &KeyPrefix,
    ) -> Result<(Vec<Record>, EventWatch), NotaryError> {
        let t = Instant::now();
        let r = self.inner.subscribe_events(prefix).await;
        let n = r.as_ref().map_or(0, |(v, _)| v.len() as u64);
        self.note(|o| &mut o.subscribe, t.elapsed(), n);
        r
    }
}

// ---------------------------------------------------------------------------------
// /proc and etcd's metrics.

/// utime + stime of a `/proc/.../stat` file, in seconds (USER_HZ = 100 on Linux).
fn cpu_s(stat: &str) -> f64 {
    let Ok(s) = std::fs::read_to_string(stat) else {
        return 0.0;
    };
    // The command (field 2) may hold spaces: count from the closing parenthesis.
    let rest = &s[s.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Fields 14 and 15 of the whole line are 12 and 13 after the state (field 3).
    (tick(11) + tick(12)) as f64 / 100.0
}

/// `VmRSS` (or another `Vm*` line) of a `/proc/.../status` file, in MiB.
fn vm_mib(status: &str, field: &str) -> f64 {
    std::fs::read_to_string(status)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The pid of the etcd serving from `data_dir`.
fn etcd_pid(data_dir: &Path) -> Option<u32> {
    let want = format!("--data-dir={}", data_dir.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmd = String::from_utf8_lossy(&cmd);
        (cmd.split('\0').any(|a| a == want) && cmd.starts_with("etcd")).then_some(pid)
    })
}

/// A gauge from etcd's `/metrics`.
fn etcd_metric(etcd: &Etcd, name: &str) -> Option<f64> {
    let mut s = TcpStream::connect_timeout(&etcd.client, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        etcd.client
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

fn dir_bytes(p: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(p) else {
        return 0;
    };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

struct EtcdProc<'a> {
    etcd: &'a Etcd,
    pid: Option<u32>,
    data_dir: std::path::PathBuf,
}

impl EtcdProc<'_> {
    fn cpu(&self) -> f64 {
        self.pid.map_or(0.0, |p| cpu_s(&format!("/proc/{p}/stat")))
    }
    fn rss(&self) -> f64 {
        self.pid
            .map_or(0.0, |p| vm_mib(&format!("/proc/{p}/status"), "VmRSS:"))
    }
    fn db_mib(&self) -> (f64, f64) {
        let m = etcd_metric(self.etcd, "etcd_mvcc_db_total_size_in_bytes").unwrap_or(0.0);
        (m / 1048576.0, dir_bytes(&self.data_dir) as f64 / 1048576.0)
    }
}

// ---------------------------------------------------------------------------------
// The grid.

fn contract(i: usize, owner: &SecretKey, expert: &SecretKey, bot: &PublicKey) -> SignedContract {
    let blueprint = zos_testkit::contract::signed_blueprint(
        expert,
        json!({
            "name": "web", "version": "1.0.0", "params": {},
            "body": {"workloads": [{
                "name": "app", "kind": "container",
                "flist": {"url": "dir:///srv/web.fl",
                          "sha256": "0000000000000000000000000000000000000000000000000000000000000000",
                          "stores": ["dir:///srv/store"],
                          "publishers": [expert.public().to_hex()]},
                "entrypoint": ["/bin/web"], "cpu": 1, "memory_mib": 256
            }]}
        }),
    );
    let c = Contract {
        id: format!("c{i:06}"),
        version: 1,
        owner: owner.public(),
        nodes: vec![],
        blueprint: BlueprintRef::Embedded(blueprint),
        params: BTreeMap::new(),
        stakeholders: vec![],
        threshold: 0,
        not_before: None,
        expires: Some(zos_testkit::contract::EXPIRES),
    };
    let placement = Placement {
        farm: FARM.into(),
        replicas: 1,
        orchestrator: *bot,
        failover: Failover {
            mode: FailoverMode::Move,
            after_s: AFTER_S,
        },
        constraints: None,
    };
    let mut doc = SignedContract::placed(c, placement).unwrap();
    doc.sign(owner).unwrap();
    doc
}

/// What the simulated nodes report to the bench.
#[derive(Default)]
struct NodesSeen {
    /// Assignment key -> when the node's watch delivered it.
    received: HashMap<String, Instant>,
    /// Contract -> (node, epoch, when its `ok` status was written), the latest.
    ok: HashMap<String, (PublicKey, u64, Instant)>,
    /// Status writes that failed.
    failures: u64,
}

struct SimNode {
    task: tokio::task::JoinHandle<()>,
    _live: Liveness,
}

/// A node's provisioner that answers at once: every assignment delivered gets an `ok`
/// status for its replica and epoch.
async fn node_main(
    notary: AnyNotary,
    key: SecretKey,
    mut watch: EventWatch,
    seen: Arc<Mutex<NodesSeen>>,
) {
    let me = key.public();
    while let Some(ev) = watch.recv().await {
        let WatchEvent::Put(r) = ev else { continue };
        seen.lock()
            .unwrap()
            .received
            .insert(r.key.clone(), Instant::now());
        let Ok(a) = SignedAssignment::from_value(&r.body) else {
            continue;
        };
        let a = a.assignment;
        if a.node != me {
            continue;
        }
        let mut s = StatusReport::new(&a.contract, Some(a.version), State::Ok, "running");
        s.replica = Some(a.replica);
        s.epoch = Some(a.epoch);
        let skey = NotaryKey::status(&me, &a.contract).unwrap();
        let rec = Record::sign(&skey, serde_json::to_value(&s).unwrap(), &key).unwrap();
        let done = notary.put(&rec).await;
        let mut seen = seen.lock().unwrap();
        match done {
            Ok(()) => {
                seen.ok
                    .insert(a.contract.clone(), (me, a.epoch, Instant::now()));
            }
            Err(e) => {
                seen.failures += 1;
                eprintln!("node {me}: status of {}: {e}", a.contract);
            }
        }
    }
}

/// Puts `records` with [`FILLERS`] writers (one client each); returns the time taken.
async fn fill(url: &str, records: Vec<Record>) -> Duration {
    let t = Instant::now();
    let chunk = records.len().div_ceil(FILLERS).max(1);
    let mut set = tokio::task::JoinSet::new();
    for part in records.chunks(chunk) {
        let part = part.to_vec();
        let n = zos_notary::open(url).unwrap();
        set.spawn(async move {
            for r in &part {
                n.put(r).await.unwrap();
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    t.elapsed()
}

fn pct(v: &mut [Duration], q: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    zos_testkit::bench::pct(v, q)
}

/// The killed nodes, and when the bot's view first saw each one's alive record gone.
type Gone = (Vec<PublicKey>, HashMap<PublicKey, Instant>);

/// One round of the bot as measured.
struct RoundLog {
    at: Duration,
    took: Duration,
    cpu_s: f64,
    ops: Ops,
    contracts: usize,
    assigned: usize,
    conflicts: usize,
}

fn print_round(r: &RoundLog) {
    let o = &r.ops;
    let rest = r.took.saturating_sub(o.notary_time());
    println!(
        "  round at {:>7.1} s: {:>8.0} ms (bot cpu {:>6.0} ms) | subscribe {:>5.0} ms ({} rec) | list grid/ {:>6.0} ms ({} rec) | list nodes/ {:>6.0} ms ({} rec) | put_if {:>6.0} ms ({}) | put {:>6.0} ms ({}) | delete {:>5.0} ms ({}) | other {:>4.0} ms | rest {:>6.0} ms | contracts {} assigned {} conflicts {}",
        r.at.as_secs_f64(),
        ms(r.took),
        r.cpu_s * 1e3,
        ms(o.subscribe.time),
        o.subscribe.records,
        ms(o.list_grid.time),
        o.list_grid.records,
        ms(o.list_nodes.time),
        o.list_nodes.records,
        ms(o.put_if.time),
        o.put_if.calls,
        ms(o.put.time),
        o.put.calls,
        ms(o.delete.time),
        o.delete.calls,
        ms(o.other.time),
        ms(rest),
        r.contracts,
        r.assigned,
        r.conflicts,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let n_nodes: usize = env_or("GRID_NODES", if quick { 100 } else { 1000 });
    let n_contracts: usize = env_or("GRID_CONTRACTS", if quick { 500 } else { 5000 });
    let per_client: usize = env_or("GRID_NODES_PER_CLIENT", 1usize).max(1);
    let limit = Duration::from_secs(env_or("GRID_TIMEOUT_S", 900u64));
    println!(
        "grid bench: {n_nodes} nodes ({per_client} per notary client), {n_contracts} contracts (replicas = 1, move after {AFTER_S} s), liveness TTL {} s",
        TTL.as_secs()
    );

    let dir = zos_testkit::tempdir("grid-bench");
    let etcd = Etcd::start(dir.path()).expect("etcd (apt-get install etcd-server)");
    let data_dir = dir.path().join("etcd-data");
    let ep = EtcdProc {
        etcd: &etcd,
        pid: etcd_pid(&data_dir),
        data_dir: data_dir.clone(),
    };
    if ep.pid.is_none() {
        eprintln!("etcd's pid not found: its CPU and RSS read as 0");
    }
    let url = etcd.url("zos");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let owner = seed_key(1, 0);
    let expert = seed_key(3, 0);
    let bot_key = seed_key(2, 0);
    let node_keys: Vec<SecretKey> = (0..n_nodes as u32).map(|i| seed_key(7, i)).collect();

    // 1. Registrations and heartbeats.
    let t = Instant::now();
    let mut records = Vec::new();
    for n in &node_keys {
        let capacity = NodeResources {
            cpus: 64,
            memory_bytes: 256 * GIB,
            ssd_bytes: 1024 * GIB,
            hdd_bytes: 0,
        };
        let reg = Registration {
            farm: FARM.into(),
            version: "bench".into(),
            capacity,
            offered: None,
            nics: vec![],
            dmi: Dmi::default(),
            registered_at: unix_now(),
        };
        records.push(reg.sign(n, unix_now()).unwrap());
        let hb = Heartbeat {
            uptime_secs: 1,
            reserved: NodeResources {
                cpus: 0,
                memory_bytes: 0,
                ssd_bytes: 0,
                hdd_bytes: 0,
            },
            used: Usage::default(),
            contracts: ContractCounts::default(),
            workloads: 0,
            listening: vec![],
            listening_total: 0,
            time: 1,
        };
        records.push(hb.sign(n, unix_now()).unwrap());
    }
    let took = rt.block_on(fill(&url, records));
    println!(
        "setup: {n_nodes} registrations + heartbeats put in {:.1} s",
        took.as_secs_f64()
    );

    // 2. The nodes: a watch of their assignments, then their liveness.
    let seen = Arc::new(Mutex::new(NodesSeen::default()));
    let mut clients: Vec<AnyNotary> = Vec::new();
    let mut nodes: Vec<Option<SimNode>> = Vec::new();
    for (i, k) in node_keys.iter().enumerate() {
        if i % per_client == 0 {
            clients.push(zos_notary::open(&url).unwrap());
        }
        let client = clients.last().unwrap().clone();
        let watch = rt
            .block_on(client.watch_events(&KeyPrefix::node_assignments(&k.public())))
            .expect("the node's watch");
        let _g = rt.enter();
        let live = liveness::start(client.clone(), k.clone(), TTL);
        let task = rt.spawn(node_main(client, k.clone(), watch, seen.clone()));
        nodes.push(Some(SimNode { task, _live: live }));
        assert!(
            t.elapsed() < limit,
            "only {} of {n_nodes} nodes watching after {} s",
            i + 1,
            limit.as_secs()
        );
        if (i + 1) % 1000 == 0 && i + 1 < n_nodes {
            println!(
                "  ... {} nodes watching after {:.1} s; etcd RSS {:.0} MiB, this process {:.0} MiB",
                i + 1,
                t.elapsed().as_secs_f64(),
                ep.rss(),
                vm_mib("/proc/self/status", "VmRSS:")
            );
        }
    }
    // Every node's alive record put (its liveness task's first success), with progress
    // (a grid too large for this machine stops here).
    let renewed: Vec<_> = nodes
        .iter()
        .map(|n| n.as_ref().unwrap()._live.renewed())
        .collect();
    let lapsed = || {
        let now = liveness::boottime();
        renewed
            .iter()
            .filter(|r| r.borrow().is_none_or(|at| now.saturating_sub(at) > TTL))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut said = Instant::now();
    loop {
        let missing = lapsed();
        if missing == 0 {
            break;
        }
        if said.elapsed() > Duration::from_secs(5) {
            said = Instant::now();
            println!(
                "  ... {} of {n_nodes} nodes renewing; etcd RSS {:.0} MiB, this process {:.0} MiB",
                n_nodes - missing,
                ep.rss(),
                vm_mib("/proc/self/status", "VmRSS:")
            );
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {n_nodes} nodes not renewing their liveness after 120 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "setup: {n_nodes} nodes watching and alive after {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // 3. The contracts.
    let t = Instant::now();
    let docs: Vec<SignedContract> = (0..n_contracts)
        .map(|i| contract(i, &owner, &expert, &bot_key.public()))
        .collect();
    let contract_bytes = serde_json::to_vec(&docs[0].to_value()).unwrap().len();
    let records: Vec<Record> = docs
        .iter()
        .map(|d| {
            let key = NotaryKey::placement_contract(FARM, &d.contract.id).unwrap();
            Record::sign(&key, d.to_value(), &owner).unwrap()
        })
        .collect();
    let took = rt.block_on(fill(&url, records));
    println!(
        "setup: {n_contracts} placement contracts ({contract_bytes} bytes each) signed and put in {:.1} s (put {:.0}/s with {FILLERS} writers)",
        t.elapsed().as_secs_f64(),
        n_contracts as f64 / took.as_secs_f64()
    );

    // The grid at rest, before the bot: the nodes' keep-alives alone.
    let (e0, p0, t0) = (ep.cpu(), cpu_s("/proc/self/stat"), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let idle_s = t0.elapsed().as_secs_f64();
    println!(
        "the nodes alone (keep-alives every {} ms), no bot: etcd {:.0} % of a core, the nodes' process {:.0} %",
        (TTL / 3).as_millis(),
        100.0 * (ep.cpu() - e0) / idle_s,
        100.0 * (cpu_s("/proc/self/stat") - p0) / idle_s
    );

    // 4. The reference: put_if(Absent) of records of a placement record's size, one
    // client, pre-signed, under a prefix the bot does not read.
    let n_ref = n_contracts.min(2000);
    let sample = {
        let mut p = PlacementRecord::new("c000000", 1, docs[0].digest, 1);
        let r = p.replica_mut(0);
        r.node = Some(node_keys[0].public());
        r.epoch = 1;
        p.push_move(Move {
            replica: 0,
            from: None,
            to: node_keys[0].public(),
            epoch: 1,
            reason: Reason::Initial,
            at: unix_now(),
        });
        p
    };
    let ref_records: Vec<Record> = (0..n_ref)
        .map(|i| {
            let mut p = sample.clone();
            p.contract = format!("r{i:06}");
            let key = NotaryKey::placement(FARM, &p.contract).unwrap();
            Record::sign(&key, serde_json::to_value(&p).unwrap(), &bot_key).unwrap()
        })
        .collect();
    let record_bytes = ref_records[0].to_bytes().unwrap().len();
    let ref_notary = zos_notary::open(&etcd.url("reference")).unwrap();
    let ref_took = rt.block_on(async {
        let t = Instant::now();
        for r in &ref_records {
            ref_notary.put_if(r, &Expect::Absent).await.unwrap();
        }
        t.elapsed()
    });
    let ref_rate = n_ref as f64 / ref_took.as_secs_f64();
    println!(
        "reference: put_if(Absent) of {n_ref} records of {record_bytes} bytes, one client: {ref_rate:.0}/s"
    );
    // What the bot's CPU work costs per item (one core, this build).
    let per_verify = {
        let ctx_now = unix_now();
        let none = |_: &zos_contract::Digest| None;
        let t = Instant::now();
        let reps = 200;
        for d in docs.iter().cycle().take(reps) {
            let ctx = zos_contract::VerifyContext {
                now: ctx_now,
                node: None,
                accepted: None,
                resolve_blueprint: &none,
                trusted_authors: None,
                limits: zos_contract::Limits::default(),
            };
            assert!(zos_contract::verify(d, &ctx).reasons.is_empty());
        }
        t.elapsed() / reps as u32
    };
    let per_record = {
        let bytes = ref_records[0].to_bytes().unwrap();
        let reps = 500;
        let t = Instant::now();
        for _ in 0..reps {
            Record::from_bytes_verified(&bytes, &ref_records[0].key).unwrap();
        }
        t.elapsed() / reps as u32
    };
    println!(
        "cost on one core: a placement contract verified (zos_contract::verify) {:.0} µs; a record's signature checked on reading {:.0} µs",
        per_verify.as_secs_f64() * 1e6,
        per_record.as_secs_f64() * 1e6
    );

    // 5. The bot.
    let rss_before = vm_mib("/proc/self/status", "VmRSS:");
    let etcd_cpu0 = ep.cpu();
    let bot_seen = Arc::new(Mutex::new(Seen::default()));
    let rounds: Arc<Mutex<Vec<RoundLog>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // The killed nodes (set at the kill), and when the bot's view first saw each one's
    // alive record gone (read after every round).
    let gone: Arc<Mutex<Gone>> = Arc::default();
    let bot_tid = Arc::new(AtomicU32::new(0));
    let origin = Instant::now();
    let bot_thread = {
        let timed = Timed {
            inner: zos_notary::open(&url).unwrap(),
            seen: bot_seen.clone(),
        };
        let (rounds, stop, bot_key, tid, seen, gone) = (
            rounds.clone(),
            stop.clone(),
            bot_key.clone(),
            bot_tid.clone(),
            bot_seen.clone(),
            gone.clone(),
        );
        std::thread::Builder::new()
            .name("bot".into())
            .spawn(move || {
                let brt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let mut bot = Bot::new(bot_key, timed.clone());
                let mut feed = brt.block_on(bot.subscribe()).expect("the bot's feed");
                // "<pid>/task/<tid>": the bench reads this thread's CPU from outside.
                let me = std::fs::read_link("/proc/thread-self").unwrap();
                let me = me.file_name().unwrap().to_str().unwrap().parse().unwrap();
                tid.store(me, Ordering::Relaxed);
                ON_BOT.with(|b| b.set(true));
                while !stop.load(Ordering::Relaxed) {
                    let before = seen.lock().unwrap().ops;
                    let c0 = cpu_s("/proc/thread-self/stat");
                    let t = Instant::now();
                    let r = brt.block_on(bot.step(&mut feed));
                    let took = t.elapsed();
                    {
                        let mut g = gone.lock().unwrap();
                        let (killed, seen_gone) = &mut *g;
                        for k in killed.iter() {
                            if let Some(at) = feed.view().absent_since(k) {
                                seen_gone.entry(*k).or_insert(at);
                            }
                        }
                    }
                    let ops = seen.lock().unwrap().ops.minus(&before);
                    let c1 = cpu_s("/proc/thread-self/stat");
                    match r {
                        Ok(r) => rounds.lock().unwrap().push(RoundLog {
                            at: t - origin,
                            took,
                            cpu_s: c1 - c0,
                            ops,
                            contracts: r.contracts,
                            assigned: r.assigned.len(),
                            conflicts: r.conflicts,
                        }),
                        Err(e) => eprintln!("bot round failed: {e}"),
                    }
                    // As Bot::run: the next change applied (the next round applies
                    // every other one queued), or ROUND_EVERY, or sooner when a
                    // node will have been absent for after_s.
                    let wake = bot.next_round_at(Instant::now());
                    brt.block_on(async {
                        tokio::select! {
                            true = feed.changed() => {}
                            _ = tokio::time::sleep_until(wake.into()) => {}
                        }
                    });
                }
            })
            .unwrap()
    };

    let bot_cpu = || {
        let tid = bot_tid.load(Ordering::Relaxed);
        cpu_s(&format!("/proc/self/task/{tid}/stat"))
    };
    while bot_tid.load(Ordering::Relaxed) == 0 {
        std::thread::sleep(Duration::from_millis(1));
    }
    let bot_cpu0 = bot_cpu();

    // 6. Until every replica is assigned, then ok.
    let wait_until = |what: &str, cond: &dyn Fn() -> bool| -> Duration {
        let deadline = origin + limit;
        loop {
            if cond() {
                return origin.elapsed();
            }
            if Instant::now() > deadline {
                stop.store(true, Ordering::Relaxed);
                panic!("{what}: not reached within {} s", limit.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let assigned_at = wait_until("every replica assigned", &|| {
        bot_seen.lock().unwrap().assignment_puts.len() >= n_contracts
    });
    let ok_at = wait_until("every replica ok", &|| {
        seen.lock().unwrap().ok.len() >= n_contracts
    });
    let etcd_cpu_placing = ep.cpu() - etcd_cpu0;
    let lapsed_placing = lapsed();
    let bot_cpu_placing = bot_cpu() - bot_cpu0;
    let rate = n_contracts as f64 / assigned_at.as_secs_f64();
    let (etcd_cpu_ok, bot_cpu_ok, ok_instant) = (ep.cpu(), bot_cpu(), Instant::now());
    // Let the grid settle: two rounds in a row that write nothing.
    let quiet = |r: &RoundLog| r.ops.put_if.calls + r.ops.put.calls + r.ops.delete.calls == 0;
    wait_until("two quiet rounds", &|| {
        let rounds = rounds.lock().unwrap();
        rounds.len() >= 2 && rounds.iter().rev().take(2).all(quiet)
    });
    let settle_s = ok_instant.elapsed().as_secs_f64();
    let etcd_rest = 100.0 * (ep.cpu() - etcd_cpu_ok) / settle_s;
    let bot_rest = 100.0 * (bot_cpu() - bot_cpu_ok) / settle_s;
    // Then a window at rest: nothing to write, the bot's rounds every ROUND_EVERY.
    let (etcd_q0, bot_q0, q0) = (ep.cpu(), bot_cpu(), Instant::now());
    std::thread::sleep(Duration::from_secs(5));
    let quiet_s = q0.elapsed().as_secs_f64();
    let etcd_quiet = 100.0 * (ep.cpu() - etcd_q0) / quiet_s;
    let bot_quiet = 100.0 * (bot_cpu() - bot_q0) / quiet_s;
    let bot_heap_peak = BOT_PEAK.load(Ordering::Relaxed) as f64 / 1048576.0;
    let rss_bot = vm_mib("/proc/self/status", "VmRSS:");
    let hwm = vm_mib("/proc/self/status", "VmHWM:");
    let (db_metric, db_dir) = ep.db_mib();
    let etcd_rss = ep.rss();

    // Steady state: rounds with nothing to do.
    let steady: Vec<(Duration, f64, Ops)> = rounds
        .lock()
        .unwrap()
        .iter()
        .rev()
        .take(2)
        .map(|r| (r.took, r.cpu_s, r.ops))
        .collect();

    // Watch lag.
    let (mut lag, mut put_alone) = (Vec::new(), Vec::new());
    {
        let b = bot_seen.lock().unwrap();
        let s = seen.lock().unwrap();
        for (k, (start, took)) in &b.assignment_puts {
            if let Some(got) = s.received.get(k) {
                lag.push(got.saturating_duration_since(*start));
                put_alone.push(*took);
            }
        }
    }
    let lag_n = lag.len();
    let (lag50, lag99) = (pct(&mut lag, 0.5), pct(&mut lag, 0.99));
    let (put50, put99) = (pct(&mut put_alone, 0.5), pct(&mut put_alone, 0.99));

    // 7. 10 % of the nodes stop.
    let killed: HashSet<PublicKey> = node_keys.iter().step_by(10).map(|k| k.public()).collect();
    let affected: HashMap<String, u64> = seen
        .lock()
        .unwrap()
        .ok
        .iter()
        .filter(|(_, (n, ..))| killed.contains(n))
        .map(|(c, (_, e, _))| (c.clone(), *e))
        .collect();
    let rounds_before_kill = rounds.lock().unwrap().len();
    gone.lock().unwrap().0 = killed.iter().copied().collect();
    let kill_at = Instant::now();
    for (i, slot) in nodes.iter_mut().enumerate() {
        if i % 10 == 0 {
            if let Some(n) = slot.take() {
                n.task.abort();
            }
        }
    }
    let moved_ok = |all: bool| {
        let s = seen.lock().unwrap();
        let done = affected
            .iter()
            .filter(|(c, e)| {
                s.ok.get(*c)
                    .is_some_and(|(n, epoch, _)| !killed.contains(n) && epoch > e)
            })
            .count();
        if all {
            done == affected.len()
        } else {
            done > 0
        }
    };
    let first_moved =
        wait_until("a first replica ok elsewhere", &|| moved_ok(false)) - (kill_at - origin);
    let all_moved =
        wait_until("every lost replica ok elsewhere", &|| moved_ok(true)) - (kill_at - origin);

    // The round under way ends first: every round is logged.
    stop.store(true, Ordering::Relaxed);
    bot_thread.join().unwrap();
    let kill_offset = kill_at - origin;
    let etcd_cpu_total = ep.cpu() - etcd_cpu0;
    let failures = seen.lock().unwrap().failures;
    drop(nodes);

    // Report.
    let rounds = rounds.lock().unwrap();
    println!("\nrounds while placing (and settling):");
    for r in rounds.iter().take(rounds_before_kill) {
        print_round(r);
    }
    println!(
        "rounds after the kill (at {:.1} s):",
        kill_offset.as_secs_f64()
    );
    for r in rounds.iter().skip(rounds_before_kill) {
        print_round(r);
    }
    println!("\n== grid: {n_nodes} nodes, {n_contracts} contracts (replicas = 1) ==");
    println!(
        "placements: {n_contracts} assigned in {:.1} s: {rate:.0}/s (goal >= 500/s); every one ok after {:.1} s",
        assigned_at.as_secs_f64(),
        ok_at.as_secs_f64()
    );
    println!(
        "  reference put_if(Absent), one client, {record_bytes}-byte records: {ref_rate:.0}/s; ratio {:.3}",
        rate / ref_rate
    );
    println!(
        "bot: cpu {bot_cpu_placing:.1} s while placing ({:.0} % of a core); its thread's heap at most {bot_heap_peak:.0} MiB; process RSS {rss_bot:.0} MiB (peak {hwm:.0}; {rss_before:.0} MiB before the bot started: +{:.0} MiB)",
        100.0 * bot_cpu_placing / assigned_at.as_secs_f64(),
        rss_bot - rss_before
    );
    for (took, cpu, ops) in &steady {
        let records = ops.list_grid.records + ops.list_nodes.records;
        println!(
            "  a quiet round: {:.0} ms (bot thread cpu {:.0} ms): listing {:.0} ms ({} + {} records, their signatures ~{:.0} ms of it), the rest {:.0} ms (verifying {n_contracts} contracts ~{:.0} ms)",
            ms(*took),
            cpu * 1e3,
            ms(ops.list_grid.time + ops.list_nodes.time),
            ops.list_grid.records,
            ops.list_nodes.records,
            ms(per_record * records as u32),
            ms(took.saturating_sub(ops.notary_time())),
            ms(per_verify * n_contracts as u32),
        );
    }
    println!(
        "settling ({settle_s:.1} s after every replica was ok, until two rounds wrote nothing): etcd {etcd_rest:.0} % of a core, the bot's thread {bot_rest:.0} %"
    );
    println!(
        "at rest (the {quiet_s:.1} s after): etcd {etcd_quiet:.0} % of a core, the bot's thread {bot_quiet:.1} %"
    );
    println!(
        "etcd: cpu {etcd_cpu_placing:.1} s while placing ({:.0} % of a core), {etcd_cpu_total:.1} s in all; RSS {etcd_rss:.0} MiB; db {db_metric:.1} MiB (metrics), data dir {db_dir:.1} MiB",
        100.0 * etcd_cpu_placing / assigned_at.as_secs_f64()
    );
    println!(
        "failover: {} nodes stopped holding {} replicas: first ok elsewhere after {:.1} s, all after {:.1} s (goal {} s)",
        killed.len(),
        affected.len(),
        first_moved.as_secs_f64(),
        all_moved.as_secs_f64(),
        AFTER_S + 5
    );
    {
        let g = gone.lock().unwrap();
        let mut after: Vec<f64> =
            g.1.values()
                .map(|at| at.saturating_duration_since(kill_at).as_secs_f64())
                .collect();
        after.sort_by(f64::total_cmp);
        println!(
            "  the bot's view saw {} of the {} alive records go, from {:.2} s to {:.2} s after the kill (TTL {} s)",
            after.len(),
            killed.len(),
            after.first().copied().unwrap_or(f64::NAN),
            after.last().copied().unwrap_or(f64::NAN),
            TTL.as_secs()
        );
    }
    for r in rounds.iter().skip(rounds_before_kill) {
        println!(
            "  a round starting {:.1} s after the kill ({:.1} s long, its writes from {:.1} s) moved {}",
            r.at.as_secs_f64() - kill_offset.as_secs_f64(),
            r.took.as_secs_f64(),
            (r.at + r.ops.list_grid.time + r.ops.list_nodes.time).as_secs_f64()
                - kill_offset.as_secs_f64(),
            r.assigned
        );
    }
    println!(
        "watch lag (bot put start -> node delivery), {lag_n} assignments: p50 {:.1} ms, p99 {:.1} ms; the put alone p50 {:.1} ms, p99 {:.1} ms",
        ms(lag50),
        ms(lag99),
        ms(put50),
        ms(put99)
    );
    println!(
        "liveness: {lapsed_placing} of {n_nodes} nodes without a renewal in the last {} s when every replica was ok",
        TTL.as_secs()
    );
    if failures > 0 {
        println!("status writes failed: {failures}");
    }
}
