//! `zosd run` on the real kernel: pools on loop files, a tenant network inside test
//! namespaces (a "node" namespace with an uplink to an "internet" one), containers from
//! a signed flist through youki's libcontainer, and a `dir://` notary.
//!
//! One contract's life: published -> running (status ok, address, the volume written)
//! -> its process killed -9 -> restarted and counted -> zosd killed -9 and started again
//! -> the container re-adopted, not started twice -> cancelled -> everything gone. And
//! refusals: a tampered flist and an over-capacity contract create nothing.
//!
//! The workload is Debian's busybox-static (a test tool; never part of the image).

#[path = "../../crates/zos-network/tests/common/mod.rs"]
mod netfix;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zos_contract::{
    Blueprint, BlueprintRef, Cancellation, Contract, Limits, PublicKey, SecretKey,
    SignedCancellation, SignedContract,
};
use zos_flist::{PackOptions, Router};
use zos_notary::{AnyNotary, Notary, NotaryKey, Record};

const BUSYBOX: &str = "/bin/busybox";
const WAIT: Duration = Duration::from_secs(60);

fn privileged(test: &str) -> bool {
    if !netfix::privileged(test) {
        return false;
    }
    if !Path::new(BUSYBOX).exists() {
        let reason = format!("{test} needs {BUSYBOX} (apt-get install -y busybox-static)");
        if std::env::var("ZOS_SKIP_PRIVILEGED").as_deref() == Ok("1") {
            println!("SKIP: {reason}");
            return false;
        }
        panic!("{reason}");
    }
    true
}

/// A node: its config, its zosd process, its notary; everything under one `zt-` dir.
/// Drop kills zosd and removes what the node made: containers, mounts, pools, loops.
struct Node {
    dir: tempfile::TempDir,
    world: netfix::World,
    config: PathBuf,
    zosd: Option<Child>,
    key: Option<PublicKey>,
    notary: AnyNotary,
}

impl Node {
    fn new(memory_reserve_mib: u64) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("zt-zosd-")
            .tempdir()
            .unwrap();
        let world = netfix::World::new();
        let label_prefix = format!("{}-", world.tag);
        let root = dir.path();
        let config = root.join("node.toml");
        let notary_url = format!("dir://{}", root.join("notary").display());
        std::fs::write(
            &config,
            format!(
                r#"notary = "{notary_url}"
state_dir = "{state}"
log_format = "json"

[storage]
pools_root = "{pools}"
loop_files = [{{ path = "{root}/zt-disk0.img", size_gib = 2 }}]
label_prefix = "{label_prefix}"

[network]
uplink = "{uplink}"
prefix = "{prefix}"
node_netns = "{node_ns}"

[capacity]
reserve_memory_mib = {memory_reserve_mib}
"#,
                state = root.join("state").display(),
                pools = root.join("pools").display(),
                root = root.display(),
                uplink = netfix::UPLINK,
                prefix = world.prefix,
                node_ns = world.path(&world.node).display(),
            ),
        )
        .unwrap();
        Node {
            notary: zos_notary::open(&notary_url).unwrap(),
            dir,
            world,
            config,
            zosd: None,
            key: None,
        }
    }

    /// A contract id unique to this test run.
    fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.world.tag)
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Starts zosd and waits for its "serving" line; returns the node key.
    fn start(&mut self) -> PublicKey {
        let mut child = Command::new(env!("CARGO_BIN_EXE_zosd"))
            .args(["run", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join("zosd.log"))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        self.zosd = Some(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("zosd: node ") {
                    let _ = tx.send(rest.split(' ').next().unwrap_or_default().to_string());
                }
            }
        });
        let key: String = rx
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("zosd did not come up; its log:\n{}", self.log()));
        let key: PublicKey = serde_json::from_value(json!(key)).unwrap();
        if let Some(before) = self.key {
            assert_eq!(before, key, "the node keeps its identity across restarts");
        }
        self.key = Some(key);
        key
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.zosd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("zosd.log")).unwrap_or_default()
    }

    fn publish(&self, record: &Record) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(self.notary.put(record)).unwrap();
    }

    fn status(&self, id: &str) -> Option<Value> {
        let key = NotaryKey::status(&self.key.unwrap(), id).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(self.notary.get(&key)).unwrap().map(|r| {
            assert_eq!(Some(r.author), self.key, "status signed by the node");
            r.body
        })
    }

    /// Waits until the status of `id` satisfies `pred`; panics with the log if not.
    fn wait_status(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.status(id) {
                if pred(&s) {
                    return s;
                }
                if Instant::now() > deadline {
                    panic!(
                        "{id}: not {what}; last status {s:#}\nzosd log:\n{}",
                        self.log()
                    );
                }
            } else if Instant::now() > deadline {
                panic!("{id}: no status; zosd log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The pid of container `name` from libcontainer's state file.
    fn container_pid(&self, name: &str) -> Option<i32> {
        let path = self
            .state()
            .join("containers/state")
            .join(name)
            .join("state.json");
        let state: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        state["pid"].as_i64().map(|p| p as i32)
    }

    /// Mount points under this node's dir.
    fn mounts(&self) -> Vec<String> {
        let root = self.dir.path().to_string_lossy().into_owned();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
            .filter(|m| m.starts_with(&root))
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
        // Containers: kill and delete whatever zosd left (by their state dirs).
        let states = self.state().join("containers/state");
        for entry in std::fs::read_dir(&states).into_iter().flatten().flatten() {
            if let Ok(text) = std::fs::read(entry.path().join("state.json")) {
                if let Ok(v) = serde_json::from_slice::<Value>(&text) {
                    if let Some(pid) = v["pid"].as_i64() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
        // Cgroups of our containers (`/zos/<id>` in each v1 hierarchy on this host);
        // our contract ids start with the world's tag.
        for ctrl in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            for entry in std::fs::read_dir(ctrl.path().join("zos"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if entry
                    .file_name()
                    .to_string_lossy()
                    .starts_with(&self.world.tag)
                {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
        // Mounts under our dir, deepest first.
        let mut mounts = self.mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
        // Loop devices backed by our image files.
        for img in ["zt-disk0.img"] {
            if let Ok(Some(dev)) = zos_storage::loopdev::find(&self.dir.path().join(img)) {
                let _ = Command::new("losetup").arg("-d").arg(dev).status();
            }
        }
        // The world's namespaces go with `world`.
    }
}

/// Keys of the scenario.
struct People {
    owner: SecretKey,
    expert: SecretKey,
    publisher: SecretKey,
}

fn people() -> People {
    People {
        owner: SecretKey::from_seed([2; 32]),
        expert: SecretKey::from_seed([1; 32]),
        publisher: SecretKey::from_seed([7; 32]),
    }
}

/// A busybox root filesystem packed into a signed flist; returns (url, sha256, store).
fn busybox_flist(dir: &Path, publisher: &SecretKey) -> (String, String, String) {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "data", "tmp", "proc", "sys", "dev", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "echo", "sleep", "cat", "nc", "ip"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let store = dir.join("store");
    let store_url = format!("dir://{}", store.display());
    let fl = dir.join("busybox.fl");
    let router = Router::parse(std::slice::from_ref(&store_url)).unwrap();
    zos_flist::pack(&rootfs, &fl, &router, &PackOptions::default()).unwrap();
    zos_flist::sign_file(&fl, publisher).unwrap();
    let bytes = std::fs::read(&fl).unwrap();
    let sha = zos_contract::Digest::of(&bytes).to_hex();
    (format!("dir://{}", fl.display()), sha, store_url)
}

fn contract(
    p: &People,
    node: PublicKey,
    id: &str,
    version: u64,
    flist: &(String, String, String),
    memory_mib: u64,
) -> SignedContract {
    let app = json!({
        "name": "app",
        "kind": "container",
        "flist": {
            "url": flist.0,
            "sha256": flist.1,
            "stores": [flist.2],
            "publishers": [p.publisher.public()]
        },
        "entrypoint": ["/bin/sh", "-c",
            "echo hello from the container; echo written > /data/out; exec sleep 3600"],
        "cpu": 1,
        "memory_mib": memory_mib,
        "network": "net",
        "mounts": [{"volume": "data", "path": "/data"}]
    });
    signed_contract(p, node, id, version, "10.70.0.0/24", vec![app])
}

/// Two web servers (busybox httpd on port 80) on one tenant network.
fn web_contract(
    p: &People,
    node: PublicKey,
    id: &str,
    subnet: &str,
    flist: &(String, String, String),
) -> SignedContract {
    let web = |name: &str| {
        json!({
            "name": name,
            "kind": "container",
            "flist": {
                "url": flist.0,
                "sha256": flist.1,
                "stores": [flist.2],
                "publishers": [p.publisher.public()]
            },
            "entrypoint": ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/etc"],
            "cpu": 1,
            "memory_mib": 32,
            "network": "net"
        })
    };
    signed_contract(p, node, id, 1, subnet, vec![web("web"), web("peer")])
}

fn signed_contract(
    p: &People,
    node: PublicKey,
    id: &str,
    version: u64,
    subnet: &str,
    workloads: Vec<Value>,
) -> SignedContract {
    let bp: Blueprint = serde_json::from_value(json!({
        "name": "busy",
        "version": "1.0.0",
        "params": {},
        "body": {
            "networks": [{"name": "net", "subnet": subnet}],
            "volumes": [{"name": "data", "size_mib": 64}],
            "workloads": workloads
        }
    }))
    .unwrap();
    let bp = bp.sign(&p.expert, &Limits::default()).unwrap();
    let c = Contract {
        id: id.into(),
        version,
        owner: p.owner.public(),
        nodes: vec![node],
        blueprint: BlueprintRef::Embedded(bp.to_value()),
        params: BTreeMap::new(),
        stakeholders: vec![],
        threshold: 0,
        not_before: None,
        expires: Some(4_000_000_000),
    };
    let mut doc = SignedContract::new(c).unwrap();
    doc.sign(&p.owner).unwrap();
    doc
}

fn record(p: &People, node: PublicKey, doc: &SignedContract) -> Record {
    let key = NotaryKey::contract(&node, &doc.contract.id).unwrap();
    Record::sign(&key, doc.to_value(), &p.owner).unwrap()
}

fn cancel_record(p: &People, node: PublicKey, id: &str, version: u64) -> Record {
    let c = SignedCancellation::sign(
        Cancellation {
            id: id.into(),
            version,
            owner: p.owner.public(),
        },
        &p.owner,
    )
    .unwrap();
    let key = NotaryKey::contract(&node, id).unwrap();
    Record::sign(&key, serde_json::to_value(&c).unwrap(), &p.owner).unwrap()
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The file a volume holds, wherever placement put it.
fn volume_file(node: &Node, volume: &str, file: &str) -> Option<String> {
    let pools = node.dir.path().join("pools");
    for pool in std::fs::read_dir(pools).ok()?.flatten() {
        let p = pool.path().join("volumes").join(volume).join(file);
        if let Ok(s) = std::fs::read_to_string(p) {
            return Some(s);
        }
    }
    None
}

#[test]
fn a_contract_runs_restarts_survives_zosd_and_is_cancelled_cleanly() {
    if !privileged("a_contract_runs_restarts_survives_zosd_and_is_cancelled_cleanly") {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let id = node.id("busy");
    let (app, data) = (format!("{id}.app"), format!("{id}.data"));
    let doc = contract(&p, key, &id, 1, &flist, 64);
    node.publish(&record(&p, key, &doc));

    // Published -> running.
    let s = node.wait_status(&id, "ok", |s| s["state"] == "ok");
    assert_eq!(s["workloads"]["app"]["address"], "10.70.0.2", "{s:#}");
    let deadline = Instant::now() + WAIT;
    while volume_file(&node, &data, "out").is_none() {
        assert!(
            Instant::now() < deadline,
            "the workload did not write its volume"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(volume_file(&node, &data, "out").unwrap(), "written\n");

    // kill -9 of the workload: restarted, counted.
    let pid = node.container_pid(&app).expect("a container pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let s = node.wait_status(&id, "restarted", |s| {
        s["state"] == "ok" && s["workloads"]["app"]["restarts"] == 1
    });
    let pid2 = node.container_pid(&app).unwrap();
    assert_ne!(pid, pid2, "{s:#}");

    // kill -9 of zosd, start again: re-adopted, not started twice.
    node.kill9();
    node.start();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node.container_pid(&app), Some(pid2), "not started twice");
    assert!(alive(pid2), "the adopted container still runs");
    let s = node.status(&id).unwrap();
    assert_eq!(s["state"], "ok", "{s:#}");

    // Cancel: container, network, volume and mounts gone.
    node.publish(&cancel_record(&p, key, &id, 2));
    node.wait_status(&id, "cancelled", |s| s["state"] == "cancelled");
    // Killed: gone, or a zombie until whoever is its parent now reaps it.
    let deadline = Instant::now() + WAIT;
    while alive(pid2) {
        assert!(Instant::now() < deadline, "process {pid2} still runs");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(node.container_pid(&app).is_none(), "container state gone");
    assert!(volume_file(&node, &data, "out").is_none(), "volume gone");
    let overlays: Vec<String> = node
        .mounts()
        .into_iter()
        .filter(|m| m.contains("/workloads/"))
        .collect();
    assert!(overlays.is_empty(), "{overlays:?}");
    let namespaces = node.world.namespaces();
    assert_eq!(
        namespaces.len(),
        2,
        "only the test's node and internet namespaces remain: {namespaces:?}"
    );
}

#[test]
fn a_tampered_flist_and_an_oversized_contract_create_nothing() {
    if !privileged("a_tampered_flist_and_an_oversized_contract_create_nothing") {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let flist = busybox_flist(node.dir.path(), &p.publisher);

    // Flip a byte in every stored block: the unpack refuses them all.
    let store = PathBuf::from(flist.2.trim_start_matches("dir://"));
    for shard in std::fs::read_dir(&store).unwrap().flatten() {
        for block in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let mut bytes = std::fs::read(block.path()).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            std::fs::write(block.path(), bytes).unwrap();
        }
    }
    let (tampered, huge) = (node.id("tampered"), node.id("huge"));
    node.publish(&record(
        &p,
        key,
        &contract(&p, key, &tampered, 1, &flist, 64),
    ));
    let s = node.wait_status(&tampered, "error", |s| s["state"] == "error");
    let msg = s["message"].as_str().unwrap();
    assert!(msg.contains("block"), "{msg}");

    // More memory than the node has.
    node.publish(&record(
        &p,
        key,
        &contract(&p, key, &huge, 1, &flist, 64 * 1024 * 1024),
    ));
    let s = node.wait_status(&huge, "refused", |s| s["state"] == "refused");
    assert_eq!(s["reasons"][0]["code"], "over_capacity", "{s:#}");

    // Nothing was created for either: no container, no volume, no tenant namespace.
    assert!(node.container_pid(&format!("{tampered}.app")).is_none());
    let pools = node.dir.path().join("pools");
    for pool in std::fs::read_dir(pools).unwrap().flatten() {
        let vols: Vec<_> = std::fs::read_dir(pool.path().join("volumes"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(vols.is_empty(), "{vols:?}");
    }
    assert_eq!(node.world.namespaces().len(), 2);
}

/// Connects from the network namespace of process `pid` (a container) to `addr`.
fn connect_from(pid: i32, addr: &str) -> std::io::Result<()> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    std::thread::spawn(move || {
        // Only this short-lived thread enters the container's namespace.
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).map(|_| ())
    })
    .join()
    .unwrap()
}

#[test]
fn two_tenants_containers_cannot_reach_each_other() {
    if !privileged("two_tenants_containers_cannot_reach_each_other") {
        return;
    }
    let p = people();
    let mut node = Node::new(512);
    let key = node.start();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let (a, b) = (node.id("a"), node.id("b"));
    node.publish(&record(
        &p,
        key,
        &web_contract(&p, key, &a, "10.80.0.0/24", &flist),
    ));
    node.publish(&record(
        &p,
        key,
        &web_contract(&p, key, &b, "10.81.0.0/24", &flist),
    ));
    for id in [&a, &b] {
        node.wait_status(id, "ok", |s| s["state"] == "ok");
    }
    let a_web = node.container_pid(&format!("{a}.web")).unwrap();
    // Within tenant A: web reaches its peer (10.80.0.3). A fresh link can drop the
    // first packets: retry, bounded.
    let deadline = Instant::now() + WAIT;
    while let Err(e) = connect_from(a_web, "10.80.0.3:80") {
        assert!(
            Instant::now() < deadline,
            "A's web cannot reach A's peer: {e}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Across tenants: A's web cannot reach B's containers, nor B's gateway.
    for target in ["10.81.0.2:80", "10.81.0.3:80", "10.81.0.1:80"] {
        assert!(
            connect_from(a_web, target).is_err(),
            "tenant A reached tenant B at {target}"
        );
    }
    let b_web = node.container_pid(&format!("{b}.web")).unwrap();
    assert!(connect_from(b_web, "10.80.0.2:80").is_err());
    assert!(connect_from(b_web, "10.81.0.3:80").is_ok());
}
