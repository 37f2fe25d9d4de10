//! Real-kernel fixtures: a world of `zt-<random>` network namespaces (one playing
//! the node, one playing the internet) so the host's root namespace, its interfaces
//! and its nft rules are never touched. `Drop` removes every namespace with the
//! world's random tag, on success and on failure.
#![allow(dead_code)]

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zos_network::{netns, Ipv4Subnet, Network, NetworkConfig};

pub const RUN_DIR: &str = "/run/netns";
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const INET_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const UPLINK: &str = "up0";

/// Fail loudly unless the machine can run privileged network tests; with
/// `ZOS_SKIP_PRIVILEGED=1` print a SKIP line instead and return false.
pub fn privileged(test: &str) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_string());
    }
    for (bin, arg, pkg) in [
        ("ip", "-V", "iproute2"),
        ("nft", "--version", "nftables"),
        ("ping", "-V", "iputils-ping"),
    ] {
        let ok = Command::new(bin)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            missing.push(format!("{bin} (apt-get install -y {pkg})"));
        }
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun".into());
    }
    if missing.is_empty() {
        return true;
    }
    let reason = format!("{test} needs {}", missing.join(", "));
    if std::env::var("ZOS_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        // The real stderr: libtest captures print!/eprint! of a passing test.
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            format!("SKIP: {reason}\n").as_bytes(),
        );
        false
    } else {
        panic!("{reason} (set ZOS_SKIP_PRIVILEGED=1 to skip)");
    }
}

pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The node and internet namespaces, wired by a veth: node `up0` 198.51.100.2/24
/// (default route via the internet), internet `eth0` 198.51.100.1/24.
pub struct World {
    /// `zt-<tag>`: every namespace of this world starts with it.
    pub tag: String,
    /// Prefix given to zos-network: `zt-<tag>-`.
    pub prefix: String,
    pub node: String,
    pub inet: String,
}

impl World {
    pub fn new() -> World {
        let tag = loop {
            let mut rnd = [0u8; 2];
            getrandom::fill(&mut rnd).unwrap();
            let tag = format!("zt-{}", hex::encode(rnd));
            // Another test (or a crashed run) holding this tag: pick another.
            if netns::list(Path::new(RUN_DIR), &tag).unwrap().is_empty() {
                break tag;
            }
        };
        let w = World {
            prefix: format!("{tag}-"),
            node: format!("{tag}x-node"),
            inet: format!("{tag}x-inet"),
            tag,
        };
        run(&["ip", "netns", "add", &w.node]);
        run(&["ip", "netns", "add", &w.inet]);
        let (n, i) = (w.node.as_str(), w.inet.as_str());
        run(&[
            "ip", "-n", n, "link", "add", UPLINK, "type", "veth", "peer", "name", "eth0", "netns",
            i,
        ]);
        run(&[
            "ip",
            "-n",
            n,
            "addr",
            "add",
            "198.51.100.2/24",
            "dev",
            UPLINK,
        ]);
        run(&["ip", "-n", n, "link", "set", UPLINK, "up"]);
        run(&["ip", "-n", n, "link", "set", "lo", "up"]);
        run(&[
            "ip",
            "-n",
            n,
            "route",
            "add",
            "default",
            "via",
            "198.51.100.1",
        ]);
        run(&[
            "ip",
            "-n",
            i,
            "addr",
            "add",
            "198.51.100.1/24",
            "dev",
            "eth0",
        ]);
        run(&["ip", "-n", i, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", i, "link", "set", "lo", "up"]);
        w
    }

    pub fn config(&self) -> NetworkConfig {
        let mut c = NetworkConfig::new(UPLINK);
        c.prefix = self.prefix.clone();
        c.run_dir = PathBuf::from(RUN_DIR);
        c.node_netns = Some(self.path(&self.node));
        c.transit = "100.127.0.0/16".parse::<Ipv4Subnet>().unwrap();
        c
    }

    pub fn network(&self) -> Network {
        Network::new(self.config()).unwrap()
    }

    pub fn path(&self, ns: &str) -> PathBuf {
        Path::new(RUN_DIR).join(ns)
    }

    /// Our namespaces that still exist.
    pub fn namespaces(&self) -> Vec<String> {
        netns::list(Path::new(RUN_DIR), &self.tag).unwrap()
    }

    /// `ping -c1 -W1` from namespace `ns`.
    pub fn ping(&self, ns: &str, ip: Ipv4Addr) -> bool {
        netns::run_at(&self.path(ns), || {
            Ok(Command::new("ping")
                .args(["-c1", "-W1", "-q", &ip.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false))
        })
        .unwrap()
    }

    /// `ping -c1 -W1 -I src` from namespace `ns` (a chosen, possibly forged, source).
    pub fn ping_from(&self, ns: &str, src: Ipv4Addr, ip: Ipv4Addr) -> bool {
        netns::run_at(&self.path(ns), || {
            Ok(Command::new("ping")
                .args(["-c1", "-W1", "-q", "-I", &src.to_string(), &ip.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false))
        })
        .unwrap()
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

    /// Echo requests counted so far by [`count_echo_requests`].
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

    /// A listener bound inside `ns` (the socket keeps that namespace).
    pub fn listen(&self, ns: &str, port: u16) -> TcpListener {
        let l = netns::run_at(&self.path(ns), || {
            Ok(TcpListener::bind(("0.0.0.0", port)).expect("bind"))
        })
        .unwrap();
        l.set_nonblocking(true).unwrap();
        l
    }

    /// Connect from inside `ns`, at most 1 s.
    pub fn connect(&self, ns: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
        netns::run_at(&self.path(ns), || {
            Ok(TcpStream::connect_timeout(&to, Duration::from_secs(1)))
        })
        .unwrap()
    }

    /// Output of a command run inside `ns` (a snapshot of its state).
    pub fn output(&self, ns: &str, args: &[&str]) -> String {
        netns::run_at(&self.path(ns), || {
            let out = Command::new(args[0])
                .args(&args[1..])
                .stdin(Stdio::null())
                .output()
                .expect("spawn");
            assert!(out.status.success(), "{args:?} in {ns}");
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        })
        .unwrap()
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

impl Drop for World {
    fn drop(&mut self) {
        // Every namespace with our tag (the world's and the ones zos-network made);
        // links inside die with them.
        for ns in self.namespaces() {
            if let Err(e) = netns::remove(Path::new(RUN_DIR), &ns) {
                eprintln!("cleanup: namespace {ns}: {e}");
            }
        }
    }
}
