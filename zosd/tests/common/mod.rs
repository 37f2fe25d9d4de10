//! A whole node for tests and benchmarks: `zosd run` on a loop file, inside a pair of
//! `zt-` namespaces (the node and the internet), with a `dir://` notary; contract and
//! flist builders; everything removed in `Drop`.
#![allow(dead_code)]

/// The node and internet namespaces (crates/zos-testkit).
pub use zos_testkit::netns as netfix;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use zos_contract::{PublicKey, SecretKey, SignedContract};
use zos_flist::{PackOptions, Router};
use zos_notary::{AnyNotary, Notary, NotaryKey, Record};
use zos_testkit::contract as kit;

pub const BUSYBOX: &str = "/bin/busybox";
pub const WAIT: Duration = Duration::from_secs(60);

/// Fail loudly unless a node can run here; with `ZOS_SKIP_PRIVILEGED=1` print a SKIP
/// line instead and return false.
pub fn privileged(test: &str) -> bool {
    zos_testkit::Needs::root()
        .networking()
        .file(BUSYBOX, "/bin/busybox (apt-get install -y busybox-static)")
        .check(test)
}

/// A node: its config, its zosd process, its notary; everything under one `zt-` dir.
/// Drop kills zosd and removes what the node made: containers, mounts, pools, loops.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub world: netfix::World,
    pub config: PathBuf,
    pub zosd: Option<Child>,
    pub key: Option<PublicKey>,
    pub notary: AnyNotary,
}

impl Node {
    /// The record at `key` in this node's notary, read on a runtime of its own.
    #[allow(dead_code)] // not every test binary reads records
    pub fn get(&self, key: &NotaryKey) -> Option<Record> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(self.notary.get(key)).unwrap()
    }

    /// Polls `f` until it returns `Some`; panics with zosd's log after [`WAIT`].
    #[allow(dead_code)] // not every test binary waits this way
    pub fn wait_for<T>(&self, what: &str, f: impl Fn() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no {what}; zosd log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn new(memory_reserve_mib: u64) -> Node {
        Node::new_with(memory_reserve_mib, 4)
    }

    /// A node reserving `memory_reserve_mib` and admitting `cpu_overcommit` workload
    /// CPUs per logical CPU.
    pub fn new_with(memory_reserve_mib: u64, cpu_overcommit: u64) -> Node {
        Node::build(memory_reserve_mib, cpu_overcommit, "")
    }

    /// [`Node::new_with`] on a loop disk of `disk_gib`: the image is sparse, so only
    /// what the workloads write takes room on the host. For many contracts at once
    /// (zosd/benches/scale.rs), whose reserved disk the default 8 GiB would refuse.
    pub fn sized(memory_reserve_mib: u64, cpu_overcommit: u64, disk_gib: u64) -> Node {
        Node::build_on(memory_reserve_mib, cpu_overcommit, "", None, disk_gib, None)
    }

    /// A node that registers in `farm` and beats every `heartbeat_secs`.
    pub fn in_farm(memory_reserve_mib: u64, farm: &str, heartbeat_secs: u64) -> Node {
        Node::build(
            memory_reserve_mib,
            4,
            &format!("farm = \"{farm}\"\nheartbeat_secs = {heartbeat_secs}\n"),
        )
    }

    /// A node with more top-level configuration lines (`console = ...`).
    pub fn with_lines(memory_reserve_mib: u64, top_level: &str) -> Node {
        Node::build(memory_reserve_mib, 4, top_level)
    }

    /// A node of `farm` on a notary shared with others (`etcd://…`, `dir://…`), beating
    /// every `heartbeat_secs`. Its `notary` handle is a client of that notary.
    pub fn joined(
        memory_reserve_mib: u64,
        notary_url: &str,
        farm: &str,
        heartbeat_secs: u64,
    ) -> Node {
        Node::joined_with(
            memory_reserve_mib,
            notary_url,
            farm,
            heartbeat_secs,
            8,
            None,
        )
    }

    /// [`Node::joined`] with a loop disk of `disk_gib` (its one SSD pool) and, if given,
    /// `store_root` as a second store root (a flist shared by several nodes).
    pub fn joined_with(
        memory_reserve_mib: u64,
        notary_url: &str,
        farm: &str,
        heartbeat_secs: u64,
        disk_gib: u64,
        store_root: Option<&Path>,
    ) -> Node {
        Node::build_on(
            memory_reserve_mib,
            4,
            &format!("farm = \"{farm}\"\nheartbeat_secs = {heartbeat_secs}\n"),
            Some(notary_url),
            disk_gib,
            store_root,
        )
    }

    /// `top_level`: more top-level configuration lines.
    fn build(memory_reserve_mib: u64, cpu_overcommit: u64, top_level: &str) -> Node {
        Node::build_on(memory_reserve_mib, cpu_overcommit, top_level, None, 8, None)
    }

    /// [`Node::build`] on the notary at `notary_url` (`None`: a `dir://` notary of the
    /// node's own under its dir), with a loop disk of `disk_gib` and `store_root` as a
    /// store root besides the node's dir.
    fn build_on(
        memory_reserve_mib: u64,
        cpu_overcommit: u64,
        top_level: &str,
        notary_url: Option<&str>,
        disk_gib: u64,
        store_root: Option<&Path>,
    ) -> Node {
        let dir = zos_testkit::tempdir("zosd");
        let world = netfix::World::new();
        let label_prefix = format!("{}-", world.tag);
        let root = dir.path();
        let config = root.join("node.toml");
        let notary_url = notary_url.map_or_else(
            || format!("dir://{}", root.join("notary").display()),
            str::to_string,
        );
        std::fs::write(
            &config,
            format!(
                r#"notary = "{notary_url}"
state_dir = "{state}"
log_format = "json"
status_socket = "{root}/status.sock"
store_roots = ["{root}"{more_roots}]
{top_level}
[storage]
pools_root = "{pools}"
loop_files = [{{ path = "{root}/zt-disk0.img", size_gib = {disk_gib} }}]
label_prefix = "{label_prefix}"

[network]
uplink = "{uplink}"
prefix = "{prefix}"
node_netns = "{node_ns}"

[capacity]
reserve_memory_mib = {memory_reserve_mib}
cpu_overcommit = {cpu_overcommit}
"#,
                state = root.join("state").display(),
                pools = root.join("pools").display(),
                root = root.display(),
                more_roots =
                    store_root.map_or_else(String::new, |r| format!(", \"{}\"", r.display())),
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
    pub fn id(&self, name: &str) -> String {
        format!("{}-{name}", self.world.tag)
    }

    /// The node's read-only status socket (docs/status.md).
    pub fn status_socket(&self) -> PathBuf {
        self.dir.path().join("status.sock")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Starts zosd and waits for its "serving" line; returns the node key.
    pub fn start(&mut self) -> PublicKey {
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

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.zosd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("zosd.log")).unwrap_or_default()
    }

    pub fn publish(&self, record: &Record) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(self.notary.put(record)).unwrap();
    }

    pub fn status(&self, id: &str) -> Option<Value> {
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
    pub fn wait_status(&self, id: &str, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
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
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The pid of container `name` from libcontainer's state file.
    pub fn container_pid(&self, name: &str) -> Option<i32> {
        let path = self
            .state()
            .join("containers/state")
            .join(name)
            .join("state.json");
        let state: Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        state["pid"].as_i64().map(|p| p as i32)
    }

    /// Mount points under this node's dir.
    pub fn mounts(&self) -> Vec<String> {
        zos_testkit::mounts_under(self.dir.path())
            .into_iter()
            .map(|m| m.to_string_lossy().into_owned())
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
        // VMs: QEMU runs daemonized and outlives zosd; kill the ones whose command line
        // names a pidfile of this node's (their cgroups go below).
        let vms = self.state().join("vms");
        for entry in std::fs::read_dir(&vms).into_iter().flatten().flatten() {
            let pidfile = entry.path().join("qemu.pid");
            let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            else {
                continue;
            };
            let ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.split(|&b| b == 0)
                    .any(|a| a == pidfile.as_os_str().as_encoded_bytes())
            });
            if ours {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
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
pub struct People {
    pub owner: SecretKey,
    pub expert: SecretKey,
    pub publisher: SecretKey,
}

pub fn people() -> People {
    People {
        owner: SecretKey::from_seed([2; 32]),
        expert: SecretKey::from_seed([1; 32]),
        publisher: SecretKey::from_seed([7; 32]),
    }
}

/// A busybox root filesystem packed into a signed flist; returns (url, sha256, store).
pub fn busybox_flist(dir: &Path, publisher: &SecretKey) -> (String, String, String) {
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

/// The deployment's reference to `flist` (url, sha256, store), published by the
/// scenario's publisher.
pub fn flist_ref(p: &People, flist: &(String, String, String)) -> Value {
    json!({
        "url": flist.0,
        "sha256": flist.1,
        "stores": [flist.2],
        "publishers": [p.publisher.public()]
    })
}

pub fn contract(
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
        "flist": flist_ref(p, flist),
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
pub fn web_contract(
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
            "flist": flist_ref(p, flist),
            "entrypoint": ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/etc"],
            "cpu": 1,
            "memory_mib": 32,
            "network": "net"
        })
    };
    signed_contract(p, node, id, 1, subnet, vec![web("web"), web("peer")])
}

pub fn signed_contract(
    p: &People,
    node: PublicKey,
    id: &str,
    version: u64,
    subnet: &str,
    workloads: Vec<Value>,
) -> SignedContract {
    signed_contract_by(p, &p.owner, node, id, version, subnet, workloads)
}

/// [`signed_contract`] owned and signed by `owner` (another tenant, an attacker).
pub fn signed_contract_by(
    p: &People,
    owner: &SecretKey,
    node: PublicKey,
    id: &str,
    version: u64,
    subnet: &str,
    workloads: Vec<Value>,
) -> SignedContract {
    let bp = kit::signed_blueprint(
        &p.expert,
        json!({
            "name": "busy",
            "version": "1.0.0",
            "params": {},
            "body": {
                "networks": [{"name": "net", "subnet": subnet}],
                "volumes": [{"name": "data", "size_mib": 64}],
                "workloads": workloads,
                // The tests read the workloads' output from the node's status records.
                "publish_logs": true
            }
        }),
    );
    kit::signed(
        kit::contract(owner.public(), node, id, version, bp),
        &[owner],
    )
}

/// A busybox container workload named `name` on network `net` with volume `data` at
/// `/data`, running `script` under `/bin/sh -c`.
pub fn shell_workload(
    name: &str,
    flist: &(String, String, String),
    p: &People,
    script: &str,
) -> Value {
    json!({
        "name": name,
        "kind": "container",
        "flist": flist_ref(p, flist),
        "entrypoint": ["/bin/sh", "-c", script],
        "cpu": 1,
        "memory_mib": 64,
        "network": "net",
        "mounts": [{"volume": "data", "path": "/data"}]
    })
}

/// The notary record carrying `doc`, put by `author` (anyone may write a contract key).
pub fn record_by(author: &SecretKey, node: PublicKey, doc: &SignedContract) -> Record {
    let key = NotaryKey::contract(&node, &doc.contract.id).unwrap();
    Record::sign(&key, doc.to_value(), author).unwrap()
}

pub fn record(p: &People, node: PublicKey, doc: &SignedContract) -> Record {
    let key = NotaryKey::contract(&node, &doc.contract.id).unwrap();
    Record::sign(&key, doc.to_value(), &p.owner).unwrap()
}

pub fn cancel_record(p: &People, node: PublicKey, id: &str, version: u64) -> Record {
    let key = NotaryKey::contract(&node, id).unwrap();
    Record::sign(&key, kit::cancellation(&p.owner, id, version), &p.owner).unwrap()
}

/// True while `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The file a volume holds, wherever placement put it.
pub fn volume_file(node: &Node, volume: &str, file: &str) -> Option<String> {
    let pools = node.dir.path().join("pools");
    for pool in std::fs::read_dir(pools).ok()?.flatten() {
        let p = pool.path().join("volumes").join(volume).join(file);
        if let Ok(s) = std::fs::read_to_string(p) {
            return Some(s);
        }
    }
    None
}

/// Connects from the network namespace of process `pid` (a container) to `addr`.
pub fn connect_from(pid: i32, addr: &str) -> std::io::Result<()> {
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
