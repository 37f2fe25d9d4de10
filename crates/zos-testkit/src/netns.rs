//! Network namespaces for tests and the demo: a thread that runs a closure inside a
//! named namespace, and the [`World`] a node lives in: two namespaces (the node, the
//! internet) wired by a veth, so the host's root namespace, its interfaces and its nft
//! rules are never touched. `Drop` removes every namespace that carries the world's
//! random tag (the world's own and whatever the code under test made with its prefix),
//! on success and on failure.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::KitError;

/// Where `ip netns` keeps its namespace files.
pub const RUN_DIR: &str = "/run/netns";
/// The node's uplink address (in the node namespace) and the internet's, on one /24.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// The internet side's address (in the internet namespace), the node's gateway.
pub const INET_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The node's uplink interface.
pub const UPLINK: &str = "up0";

/// Runs `f` on a thread that entered the network namespace `ip netns` calls `netns`
/// (the caller's threads stay where they are; sockets made there keep that namespace)
/// and returns what it returned. A panic in `f` goes on unwinding in the caller.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T, KitError> {
    in_netns_at(&Path::new(RUN_DIR).join(netns), f)
}

/// [`in_netns`] for the namespace file at `path`.
pub fn in_netns_at<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, KitError> {
    let ns = std::fs::File::open(path)
        .map_err(|e| KitError::io(format!("opening {}", path.display()), e))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            // Only this short-lived thread changes namespace.
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| KitError::io("setns", e.into()))?;
            Ok(f())
        })
        .join()
        // A panic in `f` (a failed assertion) is the caller's: it goes on unwinding.
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Runs a command to completion; panics with its stderr unless it succeeds.
pub fn run(args: &[&str]) {
    if let Err(e) = try_run(args) {
        panic!("{e}");
    }
}

fn try_run(args: &[&str]) -> Result<(), KitError> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| KitError::io(format!("running {}", args[0]), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(KitError::Failed(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Names of the namespaces under [`RUN_DIR`] that start with `prefix`, sorted.
pub fn list(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(RUN_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// The node and internet namespaces, wired by a veth: node [`UPLINK`] `198.51.100.2/24`
/// (default route via the internet), internet `eth0` `198.51.100.1/24`.
pub struct World {
    /// Every namespace of this world starts with it (`zt-<4 hex>`).
    pub tag: String,
    /// The prefix to give the code under test (`<tag>-`): what it makes carries the
    /// tag, and goes with the world.
    pub prefix: String,
    /// `<tag>x-node`: never under [`World::prefix`], which the node may clean up.
    pub node: String,
    /// `<tag>x-inet`.
    pub inet: String,
}

impl World {
    /// A world tagged `zt-<4 hex>`; panics if it cannot be made.
    pub fn new() -> World {
        World::create("zt-").unwrap_or_else(|e| panic!("creating the namespaces: {e}"))
    }

    /// A world tagged `<tag_prefix><4 hex>` (a tag no namespace here carries yet).
    pub fn create(tag_prefix: &str) -> Result<World, KitError> {
        let tag = loop {
            let tag = format!("{tag_prefix}{}", crate::random_hex(2));
            // Another test (or a crashed run) holding this tag: pick another.
            if list(&tag).is_empty() {
                break tag;
            }
        };
        let w = World {
            prefix: format!("{tag}-"),
            node: format!("{tag}x-node"),
            inet: format!("{tag}x-inet"),
            tag,
        };
        // From here on, Drop removes what was made if a step fails.
        let (n, i) = (w.node.as_str(), w.inet.as_str());
        let node_ip = format!("{NODE_IP}/24");
        let inet_ip = format!("{INET_IP}/24");
        let via = INET_IP.to_string();
        let steps: [&[&str]; 10] = [
            &["ip", "netns", "add", n],
            &["ip", "netns", "add", i],
            &[
                "ip", "-n", n, "link", "add", UPLINK, "type", "veth", "peer", "name", "eth0",
                "netns", i,
            ],
            &["ip", "-n", n, "addr", "add", &node_ip, "dev", UPLINK],
            &["ip", "-n", n, "link", "set", UPLINK, "up"],
            &["ip", "-n", n, "link", "set", "lo", "up"],
            &["ip", "-n", n, "route", "add", "default", "via", &via],
            &["ip", "-n", i, "addr", "add", &inet_ip, "dev", "eth0"],
            &["ip", "-n", i, "link", "set", "eth0", "up"],
            &["ip", "-n", i, "link", "set", "lo", "up"],
        ];
        for step in steps {
            try_run(step)?;
        }
        Ok(w)
    }

    /// The namespace file of `ns`.
    pub fn path(&self, ns: &str) -> PathBuf {
        Path::new(RUN_DIR).join(ns)
    }

    /// Our namespaces that still exist.
    pub fn namespaces(&self) -> Vec<String> {
        list(&self.tag)
    }

    /// Runs `f` inside namespace `ns`.
    pub fn run_in<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> T {
        in_netns_at(&self.path(ns), f).unwrap_or_else(|e| panic!("in {ns}: {e}"))
    }

    /// `ping -c1 -W1` from namespace `ns`.
    pub fn ping(&self, ns: &str, ip: Ipv4Addr) -> bool {
        self.pings(ns, &["-c1", "-W1", "-q", &ip.to_string()])
    }

    /// `ping -c1 -W1 -I src` from namespace `ns` (a chosen, possibly forged, source).
    pub fn ping_from(&self, ns: &str, src: Ipv4Addr, ip: Ipv4Addr) -> bool {
        self.pings(
            ns,
            &["-c1", "-W1", "-q", "-I", &src.to_string(), &ip.to_string()],
        )
    }

    fn pings(&self, ns: &str, args: &[&str]) -> bool {
        self.run_in(ns, || {
            Command::new("ping")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })
    }

    /// Count echo requests arriving in `ns` (a counter rule in a table of ours there).
    pub fn count_echo_requests(&self, ns: &str) {
        self.output(ns, &["nft", "add", "table", "ip", "spy"]);
        self.output(
            ns,
            &[
                "nft",
                "add",
                "chain",
                "ip",
                "spy",
                "input",
                "{ type filter hook input priority 0 ; }",
            ],
        );
        self.output(
            ns,
            &[
                "nft",
                "add",
                "rule",
                "ip",
                "spy",
                "input",
                "icmp",
                "type",
                "echo-request",
                "counter",
            ],
        );
    }

    /// Echo requests counted so far by [`World::count_echo_requests`].
    pub fn echo_requests(&self, ns: &str) -> u64 {
        let text = self.output(ns, &["nft", "list", "table", "ip", "spy"]);
        let words: Vec<&str> = text.split_whitespace().collect();
        let i = words.iter().position(|w| *w == "packets").expect("counter");
        words[i + 1].parse().expect("packet count")
    }

    /// For positive checks: up to 3 bounded pings. A link that was just set up may
    /// drop packets until the kernel's linkwatch (which runs at most once a second)
    /// activates its queue and bridge port; a negative check must come after a
    /// positive one over the same links.
    pub fn ping_ok(&self, ns: &str, ip: Ipv4Addr) -> bool {
        (0..3).any(|_| self.ping(ns, ip))
    }

    /// For positive checks: up to 3 connects of at most 1 s each.
    pub fn connect_ok(&self, ns: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
        let mut last = self.connect(ns, to);
        for _ in 0..2 {
            if last.is_ok() {
                break;
            }
            last = self.connect(ns, to);
        }
        last
    }

    /// A non-blocking listener bound inside `ns` (the socket keeps that namespace).
    pub fn listen(&self, ns: &str, port: u16) -> TcpListener {
        let l = self.run_in(ns, || TcpListener::bind(("0.0.0.0", port)).expect("bind"));
        l.set_nonblocking(true).unwrap();
        l
    }

    /// Connect from inside `ns`, at most 1 s.
    pub fn connect(&self, ns: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
        self.run_in(ns, || {
            TcpStream::connect_timeout(&to, Duration::from_secs(1))
        })
    }

    /// Output of a command run inside `ns` (a snapshot of its state); panics unless
    /// it succeeds.
    pub fn output(&self, ns: &str, args: &[&str]) -> String {
        self.run_in(ns, || {
            let out = Command::new(args[0])
                .args(&args[1..])
                .stdin(Stdio::null())
                .output()
                .expect("spawn");
            assert!(out.status.success(), "{args:?} in {ns}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    }

    /// Links, addresses, routes and the nft ruleset of a namespace (rule counters
    /// left out: they count traffic, not configuration).
    pub fn snapshot(&self, ns: &str) -> String {
        [
            self.output(ns, &["ip", "-o", "link", "show"]),
            self.output(ns, &["ip", "-o", "addr", "show"]),
            self.output(ns, &["ip", "route", "show"]),
            without_counts(&self.output(ns, &["nft", "list", "ruleset"])),
        ]
        .join("\n")
    }
}

impl Default for World {
    fn default() -> World {
        World::new()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        // Every namespace with our tag (the world's and the ones the code under test
        // made); links inside die with them.
        for ns in self.namespaces() {
            if let Err(e) = try_run(&["ip", "netns", "delete", &ns]) {
                eprintln!("cleanup: namespace {ns}: {e}");
            }
        }
        // The cgroup scope of a zosd given our prefix: `zos/<tag>` and `zos-vm/<tag>`
        // in every hierarchy (docs/container.md), leaves first. Its processes are gone
        // by now (whoever ran zosd killed them first); a busy cgroup stays and says so.
        for ctrl in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            for parent in ["zos", "zos-vm"] {
                let scope = ctrl.path().join(parent).join(&self.tag);
                for leaf in std::fs::read_dir(&scope).into_iter().flatten().flatten() {
                    if leaf.path().is_dir() {
                        if let Err(e) = std::fs::remove_dir(leaf.path()) {
                            eprintln!("cleanup: cgroup {}: {e}", leaf.path().display());
                        }
                    }
                }
                let _ = std::fs::remove_dir(&scope);
            }
        }
    }
}

/// `counter packets N bytes M` becomes `counter`.
pub fn without_counts(ruleset: &str) -> String {
    ruleset
        .lines()
        .map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            match words.iter().position(|w| *w == "packets") {
                Some(i) if i > 0 && words[i - 1] == "counter" && words.len() >= i + 4 => {
                    let mut kept = words[..i].to_vec();
                    kept.extend(&words[i + 4..]);
                    kept.join(" ")
                }
                _ => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Accept one connection that a successful `connect` has queued (bounded wait) and
/// return the peer address the listener saw.
pub fn accept_peer(l: &TcpListener) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match l.accept() {
            Ok((mut s, peer)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_millis(10)));
                let _ = s.read(&mut [0u8; 1]);
                return peer;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "connection never reached the listener"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}
