//! The uplink against real servers: dnsmasq (DHCP and DNS) and chronyd (NTP), each
//! test in a namespace pair of its own. No mocks.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Pair, CHRONYD, CLIENT_IP, DNSMASQ, SERVER_IP, UPLINK};
use zos_uplink::dhcp::{self, DhcpConfig, DhcpError};
use zos_uplink::dns::{DnsError, Resolver};
use zos_uplink::sntp::{self, SntpError};
use zos_uplink::LinkError;

/// Quick retransmission: the servers are one veth away.
fn fast() -> DhcpConfig {
    DhcpConfig {
        attempts: 4,
        initial_timeout: Duration::from_millis(500),
        max_timeout: Duration::from_secs(2),
        hostname: Some("zt-node".into()),
    }
}

#[test]
fn dhcp_lease_from_dnsmasq_is_applied_renewed_and_serves_time_and_names() {
    if !common::can_run("dhcp_lease_from_dnsmasq", &[DNSMASQ, CHRONYD]) {
        return;
    }
    let mut p = Pair::new();
    p.dnsmasq(true);
    // The NTP server the lease names, for the boot sequence's clock step.
    p.chronyd();
    // The client link starts down and without an address: acquire brings it up.
    assert!(!p.client_ip(&["-o", "link", "show", UPLINK]).contains(",UP"));

    let started = Instant::now();
    let lease = p
        .in_client(|| dhcp::acquire(UPLINK, &fast()))
        .unwrap_or_else(|e| panic!("acquire: {e}\n{}", p.log("dnsmasq")));
    let took = started.elapsed();
    // A fresh veth drops frames until the kernel's linkwatch (at most once a
    // second) activates its queues: the first OFFERs may be lost, retransmission
    // recovers. Printed as a figure, not asserted.
    println!("lease {lease:?} in {took:?} (link brought up by acquire)");

    // Every field as dnsmasq was configured.
    let a = u32::from(lease.address);
    assert!(
        (u32::from(Ipv4Addr::new(10, 77, 0, 50))..=u32::from(Ipv4Addr::new(10, 77, 0, 60)))
            .contains(&a),
        "{lease:?}"
    );
    assert_eq!(lease.prefix_len, 24);
    assert_eq!(lease.router, Some(SERVER_IP));
    assert_eq!(lease.dns, vec![SERVER_IP]);
    assert_eq!(lease.ntp, vec![SERVER_IP]);
    assert_eq!(lease.domain.as_deref(), Some("zt.test"));
    assert_eq!(lease.lease_secs, 3600);
    assert_eq!((lease.renew_secs, lease.rebind_secs), (1800, 3150));
    assert_eq!(lease.server, SERVER_IP);

    // Applied in the client namespace: address, link up, default route.
    p.in_client(|| dhcp::apply(UPLINK, &lease)).expect("apply");
    let addrs = p.client_ip(&["-4", "-o", "addr", "show", "dev", UPLINK]);
    assert!(
        addrs.contains(&format!("inet {}/24", lease.address)),
        "{addrs}"
    );
    assert!(p.client_ip(&["-o", "link", "show", UPLINK]).contains(",UP"));
    let routes = p.client_ip(&["-4", "route", "show", "default"]);
    assert!(
        routes.contains(&format!("default via {SERVER_IP} dev {UPLINK}")),
        "{routes}"
    );
    // Applying again (after a renewal) changes nothing and does not fail.
    p.in_client(|| dhcp::apply(UPLINK, &lease))
        .expect("apply again");
    assert_eq!(
        p.client_ip(&["-4", "-o", "addr", "show", "dev", UPLINK]),
        addrs
    );

    // dnsmasq recorded the lease under our MAC and hostname.
    let leases = std::fs::read_to_string(p.dir.join("leases")).expect("lease file");
    assert!(
        leases.contains(&lease.address.to_string()) && leases.contains("zt-node"),
        "{leases}"
    );

    // Renewal at T1: unicast to the server from the configured address.
    let renewed = p
        .in_client(|| dhcp::renew(UPLINK, &lease, &fast()))
        .unwrap_or_else(|e| panic!("renew: {e}\n{}", p.log("dnsmasq")));
    assert_eq!(renewed.address, lease.address);
    assert_eq!(renewed.server, SERVER_IP);
    assert_eq!(renewed.lease_secs, 3600);

    // Renewing an address dnsmasq never granted (outside its range): a NAK,
    // reported as such.
    let foreign = dhcp::Lease {
        address: Ipv4Addr::new(10, 77, 0, 200),
        ..lease.clone()
    };
    let err = p
        .in_client(|| dhcp::renew(UPLINK, &foreign, &fast()))
        .unwrap_err();
    assert!(
        matches!(err, DhcpError::Nak { server: Some(s), .. } if s == SERVER_IP),
        "{err}\n{}",
        p.log("dnsmasq")
    );

    // Acquiring again on a settled link: the protocol's own time, same address
    // (dnsmasq keys the lease on our client identifier).
    let started = Instant::now();
    let again = p
        .in_client(|| dhcp::acquire(UPLINK, &fast()))
        .unwrap_or_else(|e| panic!("acquire again: {e}\n{}", p.log("dnsmasq")));
    println!("DHCP again on a settled link in {:?}", started.elapsed());
    assert_eq!(again.address, lease.address);

    // The lease's NTP server answers (what zosd does next, before verifying
    // any expiry).
    let t = p
        .in_client(|| sntp::query_first(&lease.ntp_servers(), Duration::from_secs(2)))
        .unwrap_or_else(|e| panic!("SNTP through the lease: {e}\n{}", p.log("chronyd")));
    assert!(t.offset().abs() < 0.05, "offset {} s", t.offset());

    // The lease's DNS server answers for the name dnsmasq serves.
    let addrs = p
        .in_client(|| lease.resolver().lookup_ipv4("node.zt.test"))
        .expect("lookup through the lease's DNS");
    assert_eq!(addrs, vec![Ipv4Addr::new(10, 77, 0, 99)]);
}

/// `dhcp::keep` against dnsmasq: a lease whose T1 is one second (dnsmasq's shortest
/// lease is two minutes, so the test shortens T1 on the lease it got) is renewed with
/// the server and applied again, over and over, each renewal handed to the caller.
#[test]
fn the_lease_keeper_renews_with_dnsmasq() {
    if !common::can_run("the_lease_keeper_renews_with_dnsmasq", &[DNSMASQ]) {
        return;
    }
    let mut p = Pair::new();
    p.dnsmasq(true);
    let mut lease = p
        .in_client(|| dhcp::acquire(UPLINK, &fast()))
        .unwrap_or_else(|e| panic!("acquire: {e}\n{}", p.log("dnsmasq")));
    p.in_client(|| dhcp::apply(UPLINK, &lease)).expect("apply");
    lease.renew_secs = 1;
    let (tx, rx) = std::sync::mpsc::channel();
    let ns = std::fs::File::open(std::path::Path::new("/run/netns").join(&p.client)).unwrap();
    // keep() never returns: its thread is left sleeping until the test process ends
    // (it only holds the namespace, which Pair's cleanup unnames).
    std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        dhcp::keep(UPLINK, lease, &fast(), |l| {
            let _ = tx.send(l.clone());
        })
    });
    let renewed = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("no renewal: {e}\n{}", p.log("dnsmasq")));
    assert_eq!(renewed.server, SERVER_IP);
    assert_eq!(renewed.lease_secs, 3600);
    // The server's own T1 again (dnsmasq counts it from the lease's first grant), not
    // the shortened one: the keeper sleeps until then.
    assert!(renewed.renew_secs > 60, "{renewed:?}");
    assert!(renewed.renew_secs <= renewed.rebind_secs, "{renewed:?}");
    assert!(p.log("dnsmasq").contains("DHCPACK"), "{}", p.log("dnsmasq"));
    let addrs = p.client_ip(&["-4", "-o", "addr", "show", "dev", UPLINK]);
    assert!(
        addrs.contains(&format!("inet {}/24", renewed.address)),
        "{addrs}"
    );
}

#[test]
fn dhcp_without_a_server_times_out() {
    if !common::can_run("dhcp_without_a_server_times_out", &[]) {
        return;
    }
    let p = Pair::new();
    let cfg = DhcpConfig {
        attempts: 2,
        initial_timeout: Duration::from_millis(200),
        ..fast()
    };
    let started = Instant::now();
    let err = p.in_client(|| dhcp::acquire(UPLINK, &cfg)).unwrap_err();
    assert!(
        matches!(
            err,
            DhcpError::Timeout {
                waiting_for: "OFFER",
                attempts: 2,
                ..
            }
        ),
        "{err}"
    );
    // 200 ms + 400 ms, each with at most a quarter of jitter.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(2),
        "{took:?}"
    );
    // Nothing was configured.
    assert!(p
        .client_ip(&["-4", "-o", "addr", "show", "dev", UPLINK])
        .is_empty());
}

#[test]
fn dhcp_on_a_missing_interface_is_a_typed_error() {
    if !common::can_run("dhcp_on_a_missing_interface", &[]) {
        return;
    }
    let p = Pair::new();
    let err = p
        .in_client(|| dhcp::acquire("nosuch0", &fast()))
        .unwrap_err();
    assert!(
        matches!(err, DhcpError::Link(LinkError::NoSuchInterface(ref n)) if n == "nosuch0"),
        "{err}"
    );
    // lo has no hardware address to put in chaddr.
    let err = p.in_client(|| dhcp::acquire("lo", &fast())).unwrap_err();
    assert!(
        matches!(err, DhcpError::Link(LinkError::NoHardwareAddress { .. })),
        "{err}"
    );
}

#[test]
fn dns_against_dnsmasq() {
    if !common::can_run("dns_against_dnsmasq", &[DNSMASQ]) {
        return;
    }
    let mut p = Pair::new();
    p.static_client();
    p.dnsmasq(false);
    let r = Resolver::new([SERVER_IP]).timeout(Duration::from_millis(500));
    p.in_client(|| {
        let started = Instant::now();
        assert_eq!(
            r.lookup_ipv4("node.zt.test").unwrap(),
            vec![Ipv4Addr::new(10, 77, 0, 99)]
        );
        println!("A lookup in {:?}", started.elapsed());
        // Case does not matter, a trailing dot neither.
        assert_eq!(
            r.lookup_ipv4("NODE.zt.test.").unwrap(),
            vec![Ipv4Addr::new(10, 77, 0, 99)]
        );
        // Through the CNAME dnsmasq answers with.
        assert_eq!(
            r.resolve("www.zt.test").unwrap(),
            vec![Ipv4Addr::new(10, 77, 0, 99)]
        );
        assert!(matches!(
            r.lookup_ipv4("nothere.zt.test"),
            Err(DnsError::NoSuchName { .. })
        ));
        // Literals need no query.
        assert_eq!(
            r.resolve("192.0.2.1").unwrap(),
            vec![Ipv4Addr::new(192, 0, 2, 1)]
        );

        // A first server that refuses (our own address, nothing on port 53) is
        // skipped.
        let r2 = Resolver::new([CLIENT_IP, SERVER_IP]).timeout(Duration::from_millis(500));
        assert_eq!(
            r2.lookup_ipv4("node.zt.test").unwrap(),
            vec![Ipv4Addr::new(10, 77, 0, 99)]
        );

        // Only a silent server (an address nobody has): a bounded failure.
        let silent = Resolver::new([Ipv4Addr::new(10, 77, 0, 200)])
            .timeout(Duration::from_millis(200))
            .attempts(2);
        let started = Instant::now();
        let err = silent.lookup_ipv4("node.zt.test").unwrap_err();
        assert!(
            matches!(err, DnsError::Failed { tries: 2, ref last, .. } if matches!(**last, DnsError::Timeout { .. })),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    });
}

#[test]
fn sntp_against_chronyd() {
    if !common::can_run("sntp_against_chronyd", &[CHRONYD]) {
        return;
    }
    let mut p = Pair::new();
    p.static_client();
    p.chronyd();
    let server = SocketAddr::from((SERVER_IP, 123));
    let t = p
        .in_client(|| sntp::query(server, Duration::from_secs(2)))
        .unwrap_or_else(|e| panic!("query: {e}\n{}", p.log("chronyd")));
    println!(
        "SNTP: stratum {} offset {:.3} ms roundtrip {:?}",
        t.stratum,
        t.offset() * 1e3,
        t.roundtrip
    );
    assert_eq!(t.stratum, 1);
    // Same kernel clock on both ends: the offset is measurement noise only.
    assert!(t.offset().abs() < 0.05, "offset {} s", t.offset());
    assert!(
        t.roundtrip < Duration::from_millis(200),
        "{:?}",
        t.roundtrip
    );
    let skew = t
        .corrected_now()
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_millis(100), "{skew:?}");

    // No server on that port: refused at once, typed; query_first moves on.
    let nobody = SocketAddr::from((SERVER_IP, 124));
    let err = p
        .in_client(|| sntp::query(nobody, Duration::from_millis(500)))
        .unwrap_err();
    assert!(matches!(err, SntpError::Io { .. }), "{err}");
    let t2 = p
        .in_client(|| sntp::query_first(&[nobody, server], Duration::from_secs(1)))
        .expect("second server");
    assert_eq!(t2.server, server);
}

#[test]
fn fixtures_are_cleaned_up_after_a_failure() {
    if !common::can_run("fixtures_are_cleaned_up_after_a_failure", &[DNSMASQ]) {
        return;
    }
    let mut seen = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut p = Pair::new();
        p.dnsmasq(false);
        seen = Some((p.client.clone(), p.server.clone(), p.dir.clone(), p.pids()));
        panic!("a failing test");
    }));
    assert!(r.is_err());
    let (client, server, dir, pids) = seen.expect("fixture was built");
    for ns in [client, server] {
        assert!(
            !std::path::Path::new("/run/netns").join(&ns).exists(),
            "{ns} left behind"
        );
    }
    assert!(!dir.exists(), "{} left behind", dir.display());
    for pid in pids {
        // Killed and reaped: the pid no longer exists (or was reused by another
        // program, which is not dnsmasq started for this test).
        let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(!cmdline.contains("zt.test"), "dnsmasq {pid} left running");
    }
}
