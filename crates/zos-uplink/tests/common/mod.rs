//! Real-server fixtures: a pair of network namespaces of our own (`zt-up<pid>n<k>c`,
//! the node, and `...s`, the servers) joined by a veth, real dnsmasq and chronyd
//! in the server namespace, the code under test on a thread inside the client
//! namespace. `Drop` kills the daemons we started (by their pid) and removes the
//! two namespaces and the scratch directory we created, on success and failure;
//! nothing else on the host is touched.
#![allow(dead_code)]

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The client's static address, for tests that do not use DHCP.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The client's interface (inside its own namespace, so a fixed name is safe).
pub const UPLINK: &str = "up0";
pub const DNSMASQ: &str = "/usr/sbin/dnsmasq";
pub const CHRONYD: &str = "/usr/sbin/chronyd";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Print a `SKIP:` line on the real stderr (visible even when output is captured) and return
/// false when the test cannot run here; true when it can.
pub fn can_run(test: &str, daemons: &[&str]) -> bool {
    let mut needs = zos_testkit::Needs::root().bin_from("ip", "iproute2");
    for d in daemons {
        let pkg = if *d == DNSMASQ {
            "dnsmasq-base"
        } else {
            "chrony"
        };
        needs = needs.file(d, &format!("{d} (apt-get install {pkg})"));
    }
    needs.or_skip(test)
}

fn run(args: &[&str]) {
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

/// Client and server namespaces, a veth between them, the server end up with
/// `SERVER_IP/24`; the client end is left down and unaddressed (DHCP's job),
/// unless [`Pair::static_client`] is called.
pub struct Pair {
    pub client: String,
    pub server: String,
    pub dir: PathBuf,
    daemons: Vec<(String, Child)>,
    created: Vec<String>,
}

impl Pair {
    pub fn new() -> Pair {
        let base = format!(
            "zt-up{}n{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let mut p = Pair {
            client: format!("{base}c"),
            server: format!("{base}s"),
            dir: std::env::temp_dir().join(&base),
            daemons: Vec::new(),
            created: Vec::new(),
        };
        for ns in [p.client.clone(), p.server.clone()] {
            // Only a namespace we created goes into `created`, so Drop never
            // removes one that was there before (a name clash fails loudly here).
            run(&["ip", "netns", "add", &ns]);
            p.created.push(ns);
        }
        std::fs::create_dir(&p.dir).expect("scratch dir");
        let (c, s) = (p.client.clone(), p.server.clone());
        run(&[
            "ip", "-n", &c, "link", "add", UPLINK, "type", "veth", "peer", "name", "eth0", "netns",
            &s,
        ]);
        let sip = format!("{SERVER_IP}/24");
        run(&["ip", "-n", &s, "addr", "add", &sip, "dev", "eth0"]);
        run(&["ip", "-n", &s, "link", "set", "eth0", "up"]);
        run(&["ip", "-n", &s, "link", "set", "lo", "up"]);
        run(&["ip", "-n", &c, "link", "set", "lo", "up"]);
        p
    }

    /// Give the client `CLIENT_IP/24` and bring its link up.
    pub fn static_client(&self) {
        let cip = format!("{CLIENT_IP}/24");
        run(&["ip", "-n", &self.client, "addr", "add", &cip, "dev", UPLINK]);
        run(&["ip", "-n", &self.client, "link", "set", UPLINK, "up"]);
    }

    /// Start `args` inside the server namespace (killed by Drop), and wait until
    /// it has bound every UDP port in `ports` there.
    pub fn daemon(&mut self, name: &str, args: &[&str], ports: &[u16]) {
        let log = File::create(self.dir.join(format!("{name}.log"))).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.server])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        self.daemons.push((name.to_string(), child));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let bound = in_ns(&self.server, || udp_ports_bound(ports));
            if bound {
                return;
            }
            let (_, child) = self.daemons.last_mut().expect("just pushed");
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited ({status}): {}", self.log(name));
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not bind {ports:?}: {}",
                self.log(name)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pids of the daemons started so far.
    pub fn pids(&self) -> Vec<u32> {
        self.daemons.iter().map(|(_, c)| c.id()).collect()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Output of `ip -n <client> <args>`.
    pub fn client_ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.client])
            .args(args)
            .output()
            .expect("ip");
        assert!(out.status.success(), "ip {args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `f` on a thread inside the client namespace.
    pub fn in_client<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        in_ns(&self.client, f)
    }

    /// dnsmasq serving DHCP (when `dhcp`) and DNS for `zt.test` in the server
    /// namespace: `node.zt.test` is 10.77.0.99, `www.zt.test` a CNAME to it.
    pub fn dnsmasq(&mut self, dhcp: bool) {
        let dir = self.dir.display().to_string();
        let mut args: Vec<String> = [
            DNSMASQ,
            "--keep-in-foreground",
            "--log-facility=-",
            "--conf-file=/dev/null",
            "--user=root",
            "--interface=eth0",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            "--domain=zt.test",
            "--local=/zt.test/",
            "--host-record=node.zt.test,10.77.0.99",
            "--cname=www.zt.test,node.zt.test",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--pid-file={dir}/dnsmasq.pid"));
        let mut ports = vec![53];
        if dhcp {
            args.extend(
                [
                    "--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,1h",
                    "--dhcp-option=option:router,10.77.0.1",
                    "--dhcp-option=option:dns-server,10.77.0.1",
                    "--dhcp-option=option:ntp-server,10.77.0.1",
                    "--dhcp-authoritative",
                    "--log-dhcp",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            args.push(format!("--dhcp-leasefile={dir}/leases"));
            ports.push(67);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.daemon("dnsmasq", &args, &ports);
    }

    /// chronyd as a stratum-1 server on its local clock, never touching the clock.
    pub fn chronyd(&mut self) {
        let dir = self.dir.display();
        let conf = self.dir.join("chrony.conf");
        std::fs::write(
            &conf,
            format!(
                "local stratum 1\nallow\nport 123\nbindaddress {SERVER_IP}\ncmdport 0\n\
                 pidfile {dir}/chronyd.pid\ndriftfile {dir}/chrony.drift\n"
            ),
        )
        .expect("chrony.conf");
        let conf = conf.display().to_string();
        self.daemon(
            "chronyd",
            &[CHRONYD, "-d", "-x", "-u", "root", "-f", &conf],
            &[123],
        );
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Daemons first, so nothing keeps a namespace alive once it is unlinked.
        for (name, child) in &mut self.daemons {
            if let Err(e) = child.kill() {
                eprintln!("cleanup: kill {name} ({}): {e}", child.id());
            }
            let _ = child.wait();
        }
        for ns in self.created.drain(..).rev() {
            let out = Command::new("ip").args(["netns", "del", &ns]).output();
            if !matches!(&out, Ok(o) if o.status.success()) {
                eprintln!("cleanup: namespace {ns}: {out:?}");
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cleanup: {}: {e}", self.dir.display());
        }
    }
}

/// Run `f` on a fresh thread switched into the namespace `/run/netns/<ns>`: a
/// network namespace is per thread, so nothing else (the test harness, other
/// tests) ever runs in it, and the thread simply ends afterwards. Sockets made
/// on it stay in that namespace.
pub fn in_ns<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> R {
    zos_testkit::netns::in_netns(ns, f).unwrap_or_else(|e| panic!("{e}"))
}

/// True when every port of `ports` has a bound UDP socket in this thread's
/// namespace (`/proc/thread-self/net` follows the thread, `/proc/net` does not).
fn udp_ports_bound(ports: &[u16]) -> bool {
    let text = std::fs::read_to_string("/proc/thread-self/net/udp").unwrap_or_default();
    let bound: Vec<u16> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|local| local.split(':').nth(1))
        .filter_map(|p| u16::from_str_radix(p, 16).ok())
        .collect();
    ports.iter().all(|p| bound.contains(p))
}
