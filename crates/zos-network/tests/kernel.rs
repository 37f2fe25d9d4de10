//! Real-kernel tests (root, iproute2, nftables, iputils-ping): whole worlds of
//! `zt-<random>` namespaces; the host's root namespace is never touched.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::{accept_peer, privileged, World, INET_IP, NODE_IP, UPLINK};
use zos_network::{
    Error, Network, PortForward, Proto, TenantNetwork, TenantPort, WorkloadAttachment,
};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn tenant(id: &str, subnet: &str, gw: &str, ports: Vec<PortForward>) -> TenantNetwork {
    TenantNetwork {
        id: id.into(),
        subnet: subnet.parse().unwrap(),
        gateway: ip(gw),
        ports,
    }
}

fn veth(net: &Network, netid: &str, id: &str, addr: &str) -> TenantPort {
    TenantPort {
        id: id.into(),
        attachment: WorkloadAttachment::Veth {
            netns: net.workload_netns(netid, id),
            ip: ip(addr),
            owner: None,
        },
    }
}

fn wns(w: &TenantPort) -> String {
    match &w.attachment {
        WorkloadAttachment::Veth { netns, .. } => netns.clone(),
        WorkloadAttachment::Tap { .. } => panic!("not a veth"),
    }
}

/// What the node namespace holds of ours: links and nft tables with the prefix.
fn node_leftovers(w: &World) -> Vec<String> {
    let links = w.output(&w.node, &["ip", "-o", "link", "show"]);
    let tables = w.output(&w.node, &["nft", "list", "tables"]);
    let table_prefix = w.prefix.replace('-', "_");
    links
        .lines()
        .filter(|l| l.contains(&w.prefix))
        .map(String::from)
        .chain(
            tables
                .lines()
                .filter(|l| l.contains(&table_prefix) && !l.ends_with("_host"))
                .map(String::from),
        )
        .collect()
}

#[test]
fn two_tenants_isolation_nat_ports_remove() {
    if !privileged("two_tenants_isolation_nat_ports_remove") {
        return;
    }
    let w = World::new();
    let net = w.network();
    net.ensure_node().unwrap();

    let a = tenant(
        "a",
        "10.1.0.0/24",
        "10.1.0.1",
        vec![PortForward {
            proto: Proto::Tcp,
            public_port: 8080,
            workload_ip: ip("10.1.0.2"),
            port: 80,
        }],
    );
    let b = tenant("b", "10.2.0.0/24", "10.2.0.1", vec![]);
    net.ensure(&a).unwrap();
    net.ensure(&b).unwrap();
    let (a1, a2) = (
        veth(&net, "a", "a1", "10.1.0.2"),
        veth(&net, "a", "a2", "10.1.0.3"),
    );
    let (b1, b2) = (
        veth(&net, "b", "b1", "10.2.0.2"),
        veth(&net, "b", "b2", "10.2.0.3"),
    );
    for wl in [&a1, &a2] {
        net.attach(&a, wl).unwrap();
    }
    for wl in [&b1, &b2] {
        net.attach(&b, wl).unwrap();
    }
    let (na1, na2, nb1, nb2) = (wns(&a1), wns(&a2), wns(&b1), wns(&b2));

    // Within a tenant.
    assert!(w.ping_ok(&na1, ip("10.1.0.3")), "a1 -> a2");
    assert!(w.ping_ok(&nb2, ip("10.2.0.2")), "b2 -> b1");
    assert!(w.ping_ok(&na1, ip("10.1.0.1")), "a1 -> its gateway");
    // Egress works (which also proves every link on the way is up before the
    // negative checks below).
    for ns in [&na1, &na2, &nb1, &nb2] {
        assert!(w.ping_ok(ns, INET_IP), "{ns} -> internet");
    }

    // Across tenants, to the node, to transit addresses: nothing.
    assert!(!w.ping(&na1, ip("10.2.0.2")), "a1 -> b1 must fail");
    assert!(!w.ping(&nb1, ip("10.1.0.3")), "b1 -> a2 must fail");
    assert!(
        !w.ping(&na1, NODE_IP),
        "a1 -> node uplink address must fail"
    );
    assert!(
        !w.ping(&na1, ip("100.127.0.1")),
        "a1 -> node end of its transit"
    );
    assert!(
        !w.ping(&na1, ip("100.127.0.6")),
        "a1 -> b's transit address"
    );
    assert!(
        !w.ping(&na1, ip("100.127.0.5")),
        "a1 -> node end of b's transit"
    );
    let node_listener = w.listen(&w.node, 2222);
    assert!(w.connect(&na2, SocketAddr::from((NODE_IP, 2222))).is_err());
    assert!(w
        .connect(&na2, SocketAddr::from((ip("100.127.0.1"), 2222)))
        .is_err());
    let b1_listener = w.listen(&nb1, 7000);
    assert!(w
        .connect(&na1, SocketAddr::from((ip("10.2.0.2"), 7000)))
        .is_err());

    // Egress NAT: the internet sees the node's address.
    let inet_listener = w.listen(&w.inet, 9000);
    w.connect_ok(&na2, SocketAddr::from((INET_IP, 9000)))
        .expect("a2 -> internet:9000");
    assert_eq!(accept_peer(&inet_listener).ip(), NODE_IP);
    w.connect_ok(&nb1, SocketAddr::from((INET_IP, 9000)))
        .expect("b1 -> internet:9000");
    assert_eq!(accept_peer(&inet_listener).ip(), NODE_IP);

    // The opened port reaches a1 (the source address is preserved); others do not.
    let a1_80 = w.listen(&na1, 80);
    let a1_81 = w.listen(&na1, 81);
    let _b1_80 = w.listen(&nb1, 80);
    w.connect_ok(&w.inet, SocketAddr::from((NODE_IP, 8080)))
        .expect("internet -> node:8080 -> a1:80");
    assert_eq!(accept_peer(&a1_80).ip(), INET_IP);
    assert!(
        w.connect(&w.inet, SocketAddr::from((NODE_IP, 8081)))
            .is_err(),
        "closed port"
    );
    assert!(
        w.connect(&w.inet, SocketAddr::from((NODE_IP, 80))).is_err(),
        "closed port"
    );
    assert!(
        w.connect(&w.inet, SocketAddr::from((NODE_IP, 2222)))
            .is_err(),
        "node input"
    );
    assert!(!w.ping(&w.inet, NODE_IP), "the node answers nothing");
    // Someone on the uplink routing straight at tenant addresses gets nowhere.
    common::run(&[
        "ip",
        "-n",
        &w.inet,
        "route",
        "add",
        "10.0.0.0/8",
        "via",
        "198.51.100.2",
    ]);
    common::run(&[
        "ip",
        "-n",
        &w.inet,
        "route",
        "add",
        "100.64.0.0/10",
        "via",
        "198.51.100.2",
    ]);
    assert!(w
        .connect(&w.inet, SocketAddr::from((ip("10.1.0.2"), 81)))
        .is_err());
    assert!(w
        .connect(&w.inet, SocketAddr::from((ip("100.127.0.2"), 8080)))
        .is_err());
    assert!(w
        .connect(&w.inet, SocketAddr::from((ip("100.127.0.6"), 7000)))
        .is_err());
    drop((node_listener, b1_listener, a1_81));

    // Forged sources never leave: a workload's foreign source is dropped in its
    // tenant, a tenant forging another tenant's transit address is dropped at the
    // node (reverse path check). Controls: the legitimate sources get through.
    let tns_a = net.tenant_netns("a");
    w.count_echo_requests(&w.inet);
    assert!(w.ping_ok(&na1, INET_IP));
    let seen = w.echo_requests(&w.inet);
    assert!(seen >= 1, "the counter works");
    assert!(
        w.ping_ok(&tns_a, INET_IP),
        "the tenant namespace itself reaches out"
    );
    let seen = w.echo_requests(&w.inet);
    common::run(&[
        "ip",
        "-n",
        &na1,
        "addr",
        "add",
        "10.99.0.5/32",
        "dev",
        "eth0",
    ]);
    common::run(&[
        "ip",
        "-n",
        &tns_a,
        "addr",
        "add",
        "100.127.0.6/32",
        "dev",
        "lo",
    ]);
    assert!(!w.ping_from(&na1, ip("10.99.0.5"), INET_IP));
    assert!(!w.ping_from(&tns_a, ip("100.127.0.6"), INET_IP));
    assert_eq!(
        w.echo_requests(&w.inet),
        seen,
        "a forged source reached the internet"
    );
    common::run(&[
        "ip",
        "-n",
        &na1,
        "addr",
        "del",
        "10.99.0.5/32",
        "dev",
        "eth0",
    ]);
    common::run(&[
        "ip",
        "-n",
        &tns_a,
        "addr",
        "del",
        "100.127.0.6/32",
        "dev",
        "lo",
    ]);

    // ensure / attach again: nothing changes in any namespace.
    let watched = [w.node.clone(), net.tenant_netns("a"), na1.clone()];
    let before: Vec<String> = watched.iter().map(|n| w.snapshot(n)).collect();
    net.ensure_node().unwrap();
    net.ensure(&a).unwrap();
    net.ensure(&b).unwrap();
    net.attach(&a, &a1).unwrap();
    let after: Vec<String> = watched.iter().map(|n| w.snapshot(n)).collect();
    for (i, n) in watched.iter().enumerate() {
        assert_eq!(before[i], after[i], "ensure twice changed namespace {n}");
    }

    // b may not take a's public port.
    let mut b_steals = b.clone();
    b_steals.ports.push(PortForward {
        proto: Proto::Tcp,
        public_port: 8080,
        workload_ip: ip("10.2.0.2"),
        port: 80,
    });
    let err = net.ensure(&b_steals).unwrap_err();
    assert!(
        matches!(err, Error::PortInUse { port: 8080, ref other, .. } if other == "a"),
        "{err}"
    );
    assert_eq!(
        before[0],
        w.snapshot(&w.node),
        "a refused ensure changed the node"
    );

    let inv = net.list().unwrap();
    assert_eq!(inv.networks().into_iter().collect::<Vec<_>>(), ["a", "b"]);
    assert_eq!(inv.ports["a"], ["w-a1", "w-a2"]);
    assert!(inv.host_table);

    // Remove: no link, namespace or nft table of the tenants is left.
    assert!(net.remove("a").unwrap());
    assert!(net.remove("b").unwrap());
    assert!(!net.remove("a").unwrap(), "remove twice is a no-op");
    assert_eq!(node_leftovers(&w), Vec::<String>::new());
    assert_eq!(
        w.namespaces(),
        [w.inet.clone(), w.node.clone()],
        "only the world's namespaces remain"
    );
    let inv = net.list().unwrap();
    assert!(
        inv.networks().is_empty() && inv.workload_namespaces.is_empty(),
        "{inv:?}"
    );
    net.remove_node().unwrap();
    assert!(net.list().unwrap().is_empty());
    let tables = w.output(&w.node, &["nft", "list", "tables"]);
    assert!(
        tables.trim().is_empty(),
        "nft tables left in the node: {tables}"
    );
    // Egress is gone with the network.
    assert!(w
        .connect(&w.inet, SocketAddr::from((NODE_IP, 8080)))
        .is_err());
}

#[test]
fn list_finds_orphans_and_taps() {
    if !privileged("list_finds_orphans_and_taps") {
        return;
    }
    let w = World::new();
    let net = w.network();
    net.ensure_node().unwrap();
    let c = tenant("c", "10.3.0.0/24", "10.3.0.1", vec![]);
    let d = tenant("d", "10.4.0.0/16", "10.4.255.254", vec![]);
    net.ensure(&c).unwrap();
    net.ensure(&d).unwrap();
    let c1 = veth(&net, "c", "c1", "10.3.0.2");
    net.attach(&c, &c1).unwrap();
    let tap = TenantPort {
        id: "c2".into(),
        attachment: WorkloadAttachment::Tap {
            name: "tap-c2".into(),
        },
    };
    net.attach(&c, &tap).unwrap();
    net.attach(&c, &tap).unwrap();
    let tap_link = w.output(
        &net.tenant_netns("c"),
        &["ip", "-d", "-o", "link", "show", "tap-c2"],
    );
    assert!(
        tap_link.contains("tun type tap") && tap_link.contains("master br0"),
        "{tap_link}"
    );

    // "After a restart": a fresh handle finds everything from the kernel alone.
    let restarted = w.network();
    let inv = restarted.list().unwrap();
    assert_eq!(inv.tenant_namespaces.iter().collect::<Vec<_>>(), ["c", "d"]);
    assert_eq!(inv.node_links.iter().collect::<Vec<_>>(), ["c", "d"]);
    assert_eq!(inv.node_tables.iter().collect::<Vec<_>>(), ["c", "d"]);
    assert_eq!(inv.ports["c"], ["tap-c2", "w-c1"]);
    assert!(inv.ports["d"].is_empty());
    assert_eq!(
        inv.workload_namespaces.iter().collect::<Vec<_>>(),
        [&net.workload_netns("c", "c1")]
    );
    // The engine wants only d: c is the orphan.
    assert_eq!(inv.orphans(["d"]), ["c"]);

    // A tenant namespace whose node side vanished is still listed (and removable).
    assert!(restarted.detach("c", &tap).unwrap());
    assert!(!restarted.detach("c", &tap).unwrap());
    assert!(restarted.detach("c", &c1).unwrap());
    assert!(restarted.list().unwrap().ports["c"].is_empty());
    for id in inv.orphans(["d"]) {
        assert!(restarted.remove(&id).unwrap());
    }
    let inv = restarted.list().unwrap();
    assert_eq!(inv.networks().into_iter().collect::<Vec<_>>(), ["d"]);
    // A partial leftover (only the node nft table) is found and removed too.
    restarted.remove("d").unwrap();
    w.output(
        &w.node,
        &[
            "nft",
            "add",
            "table",
            "ip",
            &format!("{}e", w.prefix.replace('-', "_")),
        ],
    );
    assert_eq!(restarted.list().unwrap().orphans([]), ["e"]);
    assert!(restarted.remove("e").unwrap());
    restarted.remove_node().unwrap();
    assert!(restarted.list().unwrap().is_empty());
    assert_eq!(node_leftovers(&w), Vec::<String>::new());
}

#[test]
fn converges_after_partial_state() {
    if !privileged("converges_after_partial_state") {
        return;
    }
    let w = World::new();
    let net = w.network();
    net.ensure_node().unwrap();
    let f = tenant("f", "10.6.0.0/24", "10.6.0.1", vec![]);
    // A stale namespace file (crash between creating the file and mounting it).
    std::fs::write(w.path(&net.tenant_netns("f")), b"").unwrap();
    net.ensure(&f).unwrap();
    let f1 = veth(&net, "f", "f1", "10.6.0.2");
    net.attach(&f, &f1).unwrap();
    let nf1 = wns(&f1);
    assert!(w.ping_ok(&nf1, INET_IP));

    // Break it: the node end of the transit veth, the gateway address and the
    // workload's interface disappear.
    let tns = net.tenant_netns("f");
    common::run(&[
        "ip",
        "-n",
        &w.node,
        "link",
        "del",
        &format!("{}f", w.prefix),
    ]);
    common::run(&["ip", "-n", &tns, "addr", "flush", "dev", "br0"]);
    common::run(&["ip", "-n", &nf1, "link", "del", "eth0"]);
    assert!(!w.ping(&nf1, INET_IP));
    net.ensure(&f).unwrap();
    net.attach(&f, &f1).unwrap();
    assert!(w.ping_ok(&nf1, INET_IP), "ensure repaired the network");
    assert!(w.ping_ok(&nf1, ip("10.6.0.1")));

    // A changed contract (new subnet) converges, the old address is gone.
    let f_new = tenant("f", "10.7.0.0/24", "10.7.0.1", vec![]);
    net.ensure(&f_new).unwrap();
    let f1_new = veth(&net, "f", "f1", "10.7.0.9");
    net.attach(&f_new, &f1_new).unwrap();
    let addrs = w.output(&nf1, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
    assert!(
        addrs.contains("10.7.0.9/24") && !addrs.contains("10.6.0.2"),
        "{addrs}"
    );
    assert!(w.ping_ok(&nf1, INET_IP));
    assert!(w.ping_ok(&nf1, ip("10.7.0.1")));

    assert!(net.remove("f").unwrap());
    net.remove_node().unwrap();
    assert!(net.list().unwrap().is_empty());
}

#[test]
fn refusals_create_nothing() {
    if !privileged("refusals_create_nothing") {
        return;
    }
    let w = World::new();
    let net = w.network();
    let g = tenant("g", "10.8.0.0/24", "10.8.0.1", vec![]);

    let err = net
        .attach(&g, &veth(&net, "g", "g1", "10.8.0.2"))
        .unwrap_err();
    assert!(
        matches!(err, Error::NoSuchNetwork(ref n) if n == "g"),
        "{err}"
    );

    let long = tenant("abcdefgh", "10.8.0.0/24", "10.8.0.1", vec![]);
    let err = net.ensure(&long).unwrap_err();
    assert!(matches!(err, Error::NameTooLong { len: 16, .. }), "{err}");

    let bad_gw = tenant("g", "10.8.0.0/24", "10.9.0.1", vec![]);
    assert!(matches!(
        net.ensure(&bad_gw),
        Err(Error::AddressOutOfSubnet { .. })
    ));

    let port = |public_port, wip: &str| PortForward {
        proto: Proto::Udp,
        public_port,
        workload_ip: ip(wip),
        port: 53,
    };
    let dup = tenant(
        "g",
        "10.8.0.0/24",
        "10.8.0.1",
        vec![port(53, "10.8.0.2"), port(53, "10.8.0.3")],
    );
    assert!(matches!(
        net.ensure(&dup),
        Err(Error::DuplicatePort { port: 53, .. })
    ));
    let outside = tenant("g", "10.8.0.0/24", "10.8.0.1", vec![port(53, "10.9.0.2")]);
    assert!(matches!(
        net.ensure(&outside),
        Err(Error::AddressOutOfSubnet { .. })
    ));

    let mut cfg = w.config();
    cfg.uplink = "nope0".into();
    let err = Network::new(cfg).unwrap().ensure_node().unwrap_err();
    assert!(
        matches!(err, Error::NoUplink(ref u) if u == "nope0"),
        "{err}"
    );
    assert!(net.list().unwrap().is_empty(), "refusals created something");

    net.ensure(&g).unwrap();
    let err = net
        .attach(&g, &veth(&net, "g", "g1", "10.8.0.1"))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::AddressReserved {
                what: "gateway",
                ..
            }
        ),
        "{err}"
    );
    let err = net
        .attach(&g, &veth(&net, "g", "g1", "10.8.0.255"))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::AddressReserved {
                what: "broadcast address",
                ..
            }
        ),
        "{err}"
    );
    let err = net
        .attach(&g, &veth(&net, "g", "g1", "10.9.0.5"))
        .unwrap_err();
    assert!(matches!(err, Error::AddressOutOfSubnet { .. }), "{err}");
    let foreign = TenantPort {
        id: "g1".into(),
        attachment: WorkloadAttachment::Veth {
            netns: "someone-elses".into(),
            ip: ip("10.8.0.2"),
            owner: None,
        },
    };
    assert!(matches!(
        net.attach(&g, &foreign),
        Err(Error::ForeignName { .. })
    ));
    let long_wl = veth(&net, "g", "abcdefghijklmn", "10.8.0.2");
    assert!(matches!(
        net.attach(&g, &long_wl),
        Err(Error::NameTooLong { .. })
    ));
    let bad_tap = TenantPort {
        id: "g2".into(),
        attachment: WorkloadAttachment::Tap { name: "br0".into() },
    };
    assert!(matches!(
        net.attach(&g, &bad_tap),
        Err(Error::InvalidName { .. })
    ));
    let taken: Vec<Ipv4Addr> = (2..=254).map(|i| Ipv4Addr::new(10, 8, 0, i)).collect();
    assert!(matches!(
        g.allocate(&taken),
        Err(Error::ExhaustedSubnet { .. })
    ));
    assert_eq!(g.allocate(&taken[1..]).unwrap(), ip("10.8.0.2"));
    let inv = net.list().unwrap();
    assert!(
        inv.workload_namespaces.is_empty() && inv.ports["g"].is_empty(),
        "{inv:?}"
    );
    assert!(net.remove("g").unwrap());
    assert!(net.list().unwrap().is_empty());

    // A transit range with room for 4 tenant networks refuses the fifth.
    let mut cfg = w.config();
    cfg.transit = "100.126.0.0/28".parse().unwrap();
    let small = Network::new(cfg).unwrap();
    for (i, id) in ["h", "i", "j", "k"].iter().enumerate() {
        let t = tenant(
            id,
            &format!("10.8.{i}.0/24"),
            &format!("10.8.{i}.1"),
            vec![],
        );
        small.ensure(&t).unwrap();
    }
    let before = small.list().unwrap();
    let err = small
        .ensure(&tenant("l", "10.8.9.0/24", "10.8.9.1", vec![]))
        .unwrap_err();
    assert!(matches!(err, Error::ExhaustedTransit { .. }), "{err}");
    assert_eq!(
        small.list().unwrap(),
        before,
        "the refusal created something"
    );
    for id in ["h", "i", "j", "k"] {
        assert!(small.remove(id).unwrap());
    }
    assert!(small.list().unwrap().is_empty());
    let _ = UPLINK;
}

#[test]
fn overlapping_subnets_stay_apart() {
    if !privileged("overlapping_subnets_stay_apart") {
        return;
    }
    let w = World::new();
    let net = w.network();
    net.ensure_node().unwrap();
    let fwd = |public_port| PortForward {
        proto: Proto::Tcp,
        public_port,
        workload_ip: ip("10.5.0.2"),
        port: 80,
    };
    // Same subnet, same workload address, each with its own opened port.
    let o = tenant("o", "10.5.0.0/24", "10.5.0.1", vec![fwd(8081)]);
    let p = tenant("p", "10.5.0.0/24", "10.5.0.1", vec![fwd(8082)]);
    net.ensure(&o).unwrap();
    net.ensure(&p).unwrap();
    let (o1, o2) = (
        veth(&net, "o", "o1", "10.5.0.2"),
        veth(&net, "o", "o2", "10.5.0.3"),
    );
    let p1 = veth(&net, "p", "p1", "10.5.0.2");
    for (t, wl) in [(&o, &o1), (&o, &o2), (&p, &p1)] {
        net.attach(t, wl).unwrap();
    }
    let (no1, no2, np1) = (wns(&o1), wns(&o2), wns(&p1));
    assert!(w.ping_ok(&no1, ip("10.5.0.3")), "o1 -> o2");
    assert!(w.ping_ok(&np1, INET_IP), "p1 -> internet");
    assert!(w.ping_ok(&no2, INET_IP), "o2 -> internet");
    assert!(!w.ping(&np1, ip("10.5.0.3")), "p1 must not reach o2");

    let inet_listener = w.listen(&w.inet, 9000);
    w.connect_ok(&np1, SocketAddr::from((INET_IP, 9000)))
        .expect("p1 -> internet:9000");
    assert_eq!(accept_peer(&inet_listener).ip(), NODE_IP);

    let (lo, lp) = (w.listen(&no1, 80), w.listen(&np1, 80));
    w.connect_ok(&w.inet, SocketAddr::from((NODE_IP, 8081)))
        .expect("internet -> node:8081 -> o1");
    assert_eq!(accept_peer(&lo).ip(), INET_IP);
    w.connect_ok(&w.inet, SocketAddr::from((NODE_IP, 8082)))
        .expect("internet -> node:8082 -> p1");
    assert_eq!(accept_peer(&lp).ip(), INET_IP);
    assert!(
        lo.accept().is_err() && lp.accept().is_err(),
        "one connection each"
    );

    assert!(net.remove("o").unwrap());
    assert!(net.remove("p").unwrap());
    net.remove_node().unwrap();
    assert!(net.list().unwrap().is_empty());
    assert_eq!(node_leftovers(&w), Vec::<String>::new());
}
