//! The probes against real kernel objects: a zt- namespace world (node, internet
//! router, a far host behind it), a real dnsmasq, real traffic; and validate()'s
//! refusals, each its own assertion.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use zos_probe::{run, ProbeResult, ProbeSpec, LIMIT_MARGIN};
use zos_testkit::netns::{World, INET_IP, NODE_IP};
use zos_testkit::Needs;

/// The far host, behind the internet namespace (which routes): two hops from the node.
const FAR_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const ROUTER_FAR_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// On the node's link, but nobody has it: no reply, ever.
const NOBODY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 77);
const LIMIT: Duration = Duration::from_secs(3);

/// The node and internet namespaces of the kit's World, plus `<tag>-far` behind the
/// internet one, which forwards. Everything carries the world's tag: its Drop removes
/// the far namespace too.
struct Net {
    w: World,
    far: String,
}

impl Net {
    fn new() -> Net {
        let w = World::new();
        let far = format!("{}far", w.prefix);
        let (i, f) = (w.inet.as_str(), far.as_str());
        let steps: [&[&str]; 9] = [
            &["ip", "netns", "add", f],
            &[
                "ip", "-n", i, "link", "add", "eth1", "type", "veth", "peer", "name", "eth0",
                "netns", f,
            ],
            &["ip", "-n", i, "addr", "add", "10.77.0.1/24", "dev", "eth1"],
            &["ip", "-n", i, "link", "set", "eth1", "up"],
            &["ip", "-n", f, "addr", "add", "10.77.0.2/24", "dev", "eth0"],
            &["ip", "-n", f, "link", "set", "eth0", "up"],
            &["ip", "-n", f, "link", "set", "lo", "up"],
            &["ip", "-n", f, "route", "add", "default", "via", "10.77.0.1"],
            &[
                "ip",
                "netns",
                "exec",
                i,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        ];
        for s in steps {
            zos_testkit::netns::run(s);
        }
        Net { w, far }
    }

    fn node(&self) -> PathBuf {
        self.w.path(&self.w.node)
    }

    /// A positive check first (see World::ping_ok: fresh links may drop until active).
    fn ready(&self, ip: Ipv4Addr) {
        assert!(
            self.w.ping_ok(&self.w.node, ip),
            "{ip} not reachable from the node"
        );
    }
}

fn needs(test: &str) -> bool {
    Needs::root().networking().check(test)
}

fn has(r: &ProbeResult, needle: &str) -> bool {
    r.lines.iter().any(|l| l.contains(needle))
}

/// `run` answers by its limit plus the margin (and a little for the answer itself).
fn within_limit(r: &ProbeResult, limit: Duration) {
    let bound = (limit + LIMIT_MARGIN + Duration::from_millis(500)).as_millis() as u64;
    assert!(
        r.elapsed_ms <= bound,
        "took {} ms, limit {limit:?}: {r:?}",
        r.elapsed_ms
    );
}

#[test]
fn ping_answers_and_a_host_nobody_has_times_out_within_the_limit() {
    if !needs("ping_answers_and_a_host_nobody_has_times_out_within_the_limit") {
        return;
    }
    let n = Net::new();
    n.ready(INET_IP);
    let spec = ProbeSpec::Ping {
        target: IpAddr::V4(INET_IP),
        count: 3,
    };
    let r = run(&spec, Some(&n.node()), LIMIT);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.probe, "ping");
    assert!(has(&r, "reply from 198.51.100.1: seq=1"), "{r:?}");
    assert!(has(&r, "3 sent, 3 received"), "{r:?}");
    assert_eq!(r.error, None);

    let limit = Duration::from_millis(1500);
    let spec = ProbeSpec::Ping {
        target: IpAddr::V4(NOBODY),
        count: 3,
    };
    let r = run(&spec, Some(&n.node()), limit);
    assert!(!r.ok, "{r:?}");
    assert!(!has(&r, "reply from"), "{r:?}");
    assert!(
        r.error.as_deref().unwrap_or("").contains("time limit"),
        "{r:?}"
    );
    within_limit(&r, limit);
}

#[test]
fn tcp_connect_reports_connected_and_refused() {
    if !needs("tcp_connect_reports_connected_and_refused") {
        return;
    }
    let n = Net::new();
    n.ready(INET_IP);
    let l = n.w.listen(&n.w.inet, 7701);
    let spec = ProbeSpec::TcpConnect {
        addr: SocketAddr::from((INET_IP, 7701)),
    };
    let r = run(&spec, Some(&n.node()), LIMIT);
    assert!(r.ok, "{r:?}");
    assert!(has(&r, "connected to 198.51.100.1:7701"), "{r:?}");
    // The connection really reached the listener, from the node's address.
    assert_eq!(
        zos_testkit::netns::accept_peer(&l).ip(),
        IpAddr::V4(NODE_IP)
    );

    let spec = ProbeSpec::TcpConnect {
        addr: SocketAddr::from((INET_IP, 7702)),
    };
    let r = run(&spec, Some(&n.node()), LIMIT);
    assert!(!r.ok, "{r:?}");
    assert!(has(&r, "198.51.100.1:7702: refused"), "{r:?}");
    assert!(
        r.error.as_deref().unwrap_or("").contains("refused"),
        "{r:?}"
    );
}

/// dnsmasq in the internet namespace; killed on drop.
struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// True once a UDP socket is bound to `port` in the calling thread's namespace.
fn udp_bound(port: u16) -> bool {
    let want = format!(":{port:04X} ");
    std::fs::read_to_string("/proc/thread-self/net/udp")
        .map(|t| {
            t.lines().skip(1).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| format!("{a} ").ends_with(&want))
            })
        })
        .unwrap_or(false)
}

#[test]
fn dns_resolves_against_dnsmasq_and_needs_a_server() {
    let test = "dns_resolves_against_dnsmasq_and_needs_a_server";
    if !Needs::root()
        .networking()
        .bin_from("dnsmasq", "dnsmasq-base")
        .check(test)
    {
        return;
    }
    let n = Net::new();
    n.ready(INET_IP);
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &n.w.inet,
            "dnsmasq",
            "--no-daemon",
            "--port=5353",
            "--conf-file=/dev/null",
        ])
        .args([
            "--user=root",
            "--pid-file=",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
        ])
        .args([
            "--listen-address=198.51.100.1",
            "--address=/zt.test/10.9.9.9",
            "--address=/zt.test/2001:db8::9",
            "--local=/nx.test/",
            "--log-facility=-",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dnsmasq");
    let mut d = Dnsmasq(child);
    // Wait for the event: dnsmasq's socket bound in that namespace (bounded).
    let until = Instant::now() + Duration::from_secs(10);
    while !n.w.run_in(&n.w.inet, || udp_bound(5353)) {
        assert!(d.0.try_wait().expect("wait").is_none(), "dnsmasq exited");
        assert!(Instant::now() < until, "dnsmasq never bound port 5353");
        std::thread::sleep(Duration::from_millis(20));
    }
    let server = Some(SocketAddr::from((INET_IP, 5353)));
    let spec = ProbeSpec::Dns {
        name: "www.zt.test".into(),
        server,
    };
    let r = run(&spec, Some(&n.node()), LIMIT);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.lines.len(), 2, "{r:?}");
    assert!(
        r.lines[0].starts_with("www.zt.test A 10.9.9.9 (from 198.51.100.1:5353"),
        "{r:?}"
    );
    assert!(
        r.lines[1].starts_with("www.zt.test AAAA 2001:db8::9 (from 198.51.100.1:5353"),
        "{r:?}"
    );

    // A name that does not exist: NXDOMAIN, said as such.
    let spec = ProbeSpec::Dns {
        name: "gone.nx.test".into(),
        server,
    };
    let r = run(&spec, Some(&n.node()), LIMIT);
    assert!(!r.ok, "{r:?}");
    assert!(has(&r, "gone.nx.test: no such name (NXDOMAIN)"), "{r:?}");

    // No server named: refused before anything is sent.
    let spec = ProbeSpec::Dns {
        name: "www.zt.test".into(),
        server: None,
    };
    let r = run(&spec, Some(&n.node()), LIMIT);
    assert!(!r.ok);
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("no DNS server known"),
        "{r:?}"
    );

    // A server where nobody listens: a failure with a line, within the limit.
    let spec = ProbeSpec::Dns {
        name: "www.zt.test".into(),
        server: Some(SocketAddr::from((INET_IP, 5354))),
    };
    let r = run(&spec, Some(&n.node()), LIMIT);
    assert!(!r.ok, "{r:?}");
    assert!(has(&r, "no answer from 198.51.100.1:5354"), "{r:?}");
    within_limit(&r, LIMIT);
    drop(d);
}

#[test]
fn trace_lists_the_router_then_the_target() {
    if !needs("trace_lists_the_router_then_the_target") {
        return;
    }
    let n = Net::new();
    n.ready(FAR_IP);
    let spec = ProbeSpec::Trace {
        target: IpAddr::V4(FAR_IP),
        max_hops: 5,
    };
    let r = run(&spec, Some(&n.node()), LIMIT);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.lines.len(), 2, "{r:?}");
    assert!(r.lines[0].starts_with(" 1  198.51.100.1  "), "{r:?}");
    assert!(r.lines[1].starts_with(" 2  10.77.0.2  "), "{r:?}");
    // The far side's own address of the router is not a hop seen from the node.
    assert!(!has(&r, &ROUTER_FAR_IP.to_string()), "{r:?}");
    let _ = &n.far;
}

const MARKER: &str = "ZT-PAYLOAD-MARKER-7f3a";

#[test]
fn capture_reports_headers_and_never_payload() {
    if !needs("capture_reports_headers_and_never_payload") {
        return;
    }
    let n = Net::new();
    n.ready(INET_IP);
    // Receivers in the internet namespace, so the traffic is answered, not refused.
    let sink = n.w.run_in(&n.w.inet, || {
        UdpSocket::bind((INET_IP, 9999)).expect("udp bind")
    });
    let l: TcpListener = n.w.listen(&n.w.inet, 7703);
    let stop = AtomicBool::new(false);
    let packets = 20;
    let r = std::thread::scope(|s| {
        // Traffic with the marker in every payload, until the capture has returned.
        s.spawn(|| {
            n.w.run_in(&n.w.node, || {
                let u = UdpSocket::bind((NODE_IP, 0)).expect("udp");
                while !stop.load(Ordering::Relaxed) {
                    let _ = u.send_to(MARKER.as_bytes(), (INET_IP, 9999));
                    if let Ok(mut t) = std::net::TcpStream::connect_timeout(
                        &SocketAddr::from((INET_IP, 7703)),
                        Duration::from_secs(1),
                    ) {
                        let _ = t.write_all(MARKER.as_bytes());
                    }
                    while l.accept().is_ok() {}
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        });
        let spec = ProbeSpec::Capture {
            packets,
            seconds: 5,
        };
        let r = run(&spec, Some(&n.w.path(&n.w.inet)), Duration::from_secs(6));
        stop.store(true, Ordering::Relaxed);
        r
    });
    drop(sink);
    assert!(r.ok, "{r:?}");
    assert_eq!(r.lines.len(), usize::from(packets), "{r:?}");
    assert!(has(&r, "eth0 in IPv4 UDP 198.51.100.2:"), "{r:?}");
    assert!(has(&r, "> 198.51.100.1:9999 len "), "{r:?}");
    assert!(has(&r, "IPv4 TCP 198.51.100.2:"), "{r:?}");
    assert!(has(&r, "flags SYN"), "{r:?}");
    // Not a byte of payload: neither the marker nor its hex, anywhere in the result.
    let json = serde_json::to_string(&r).unwrap();
    let hex: String = MARKER.bytes().map(|b| format!("{b:02x}")).collect();
    assert!(!json.contains(MARKER), "payload leaked: {json}");
    assert!(
        !json.to_lowercase().contains(&hex[..16]),
        "payload leaked as hex: {json}"
    );
    assert!(!json.contains("PAYLOAD"), "payload leaked: {json}");
}

#[test]
fn a_probe_in_a_namespace_that_does_not_exist_is_an_error_not_the_callers_namespace() {
    let r = run(
        &ProbeSpec::TcpConnect {
            addr: "127.0.0.1:1".parse().unwrap(),
        },
        Some(std::path::Path::new("/run/netns/zt-no-such-namespace")),
        LIMIT,
    );
    assert!(!r.ok);
    assert!(r.lines.is_empty());
    assert!(
        r.error
            .as_deref()
            .unwrap_or("")
            .contains("zt-no-such-namespace: open"),
        "{r:?}"
    );
}

#[test]
fn a_capture_in_a_silent_namespace_ends_by_the_limit() {
    if !needs("a_capture_in_a_silent_namespace_ends_by_the_limit") {
        return;
    }
    let n = Net::new();
    // A namespace of the world's with no link up: nothing is ever sent there.
    let quiet = format!("{}quiet", n.w.prefix);
    zos_testkit::netns::run(&["ip", "netns", "add", &quiet]);
    let limit = Duration::from_millis(400);
    let r = run(
        &ProbeSpec::Capture {
            packets: 5,
            seconds: 10,
        },
        Some(&n.w.path(&quiet)),
        limit,
    );
    assert!(!r.ok, "{r:?}");
    assert!(
        r.error.as_deref().unwrap_or("").contains("no packet seen"),
        "{r:?}"
    );
    within_limit(&r, limit);
    // A limit too large to add to a clock (a caller's mistake): no panic, the probe
    // runs under the crate's own ceiling. The loopback is down there: refused at once.
    let r = run(
        &ProbeSpec::TcpConnect {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 1)),
        },
        Some(&n.w.path(&quiet)),
        Duration::MAX,
    );
    assert!(!r.ok, "{r:?}");
    assert!(has(&r, "127.0.0.1:1: "), "{r:?}");
}

#[test]
fn ping_and_trace_over_ipv6() {
    if !needs("ping_and_trace_over_ipv6") {
        return;
    }
    let n = Net::new();
    let (node, inet, far) = (n.w.node.as_str(), n.w.inet.as_str(), n.far.as_str());
    let steps: [&[&str]; 7] = [
        &[
            "ip",
            "netns",
            "exec",
            inet,
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.forwarding=1",
        ],
        &[
            "ip",
            "-n",
            node,
            "addr",
            "add",
            "2001:db8:1::2/64",
            "dev",
            "up0",
            "nodad",
        ],
        &[
            "ip",
            "-n",
            node,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:1::1",
        ],
        &[
            "ip",
            "-n",
            inet,
            "addr",
            "add",
            "2001:db8:1::1/64",
            "dev",
            "eth0",
            "nodad",
        ],
        &[
            "ip",
            "-n",
            inet,
            "addr",
            "add",
            "2001:db8:2::1/64",
            "dev",
            "eth1",
            "nodad",
        ],
        &[
            "ip",
            "-n",
            far,
            "addr",
            "add",
            "2001:db8:2::2/64",
            "dev",
            "eth0",
            "nodad",
        ],
        &[
            "ip",
            "-n",
            far,
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:2::1",
        ],
    ];
    for s in steps {
        zos_testkit::netns::run(s);
    }
    // Both links carry IPv4 first: they are active (see Net::ready).
    n.ready(FAR_IP);
    let inet6: IpAddr = "2001:db8:1::1".parse().unwrap();
    let far6: IpAddr = "2001:db8:2::2".parse().unwrap();
    let r = run(
        &ProbeSpec::Ping {
            target: inet6,
            count: 2,
        },
        Some(&n.node()),
        LIMIT,
    );
    assert!(r.ok, "{r:?}");
    assert!(has(&r, "reply from 2001:db8:1::1: seq=1"), "{r:?}");
    assert!(has(&r, "2 sent, 2 received"), "{r:?}");

    // The far host over IPv6, a positive check first: neighbour discovery on the two
    // new IPv6 links may take the first echo (bounded: 5 tries).
    let far_ok = (0..5).any(|_| {
        run(
            &ProbeSpec::Ping {
                target: far6,
                count: 1,
            },
            Some(&n.node()),
            LIMIT,
        )
        .ok
    });
    assert!(far_ok, "{far6} never answered");
    let r = run(
        &ProbeSpec::Trace {
            target: far6,
            max_hops: 5,
        },
        Some(&n.node()),
        LIMIT,
    );
    assert!(r.ok, "{r:?}");
    assert_eq!(r.lines.len(), 2, "{r:?}");
    assert!(r.lines[0].starts_with(" 1  2001:db8:1::1  "), "{r:?}");
    assert!(r.lines[1].starts_with(" 2  2001:db8:2::2  "), "{r:?}");
}
