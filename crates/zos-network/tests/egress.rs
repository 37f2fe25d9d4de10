//! M5: a tenant reaches the internet only. The farm LAN (a `zt-` namespace behind the
//! uplink's router, on private addresses), the node itself and every other private,
//! link-local, loopback or multicast range are dropped unless the contract opens them.
//! Real kernel (root, iproute2, nftables): the world's namespaces only.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

use common::{accept_peer, privileged, run, World, INET_IP, NODE_IP};
use zos_network::nft::{self, EGRESS_DENY_COMMENT};
use zos_network::{
    netns, EgressPolicy, IpNet, Network, TenantNetwork, TenantPort, WorkloadAttachment,
};

const LAN_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// A second LAN address: the notary, the DHCP server...
const LAN_SERVICE: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PORT: u16 = 7100;
const UDP_PORT: u16 = 6767;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn tenant(id: &str, subnet: &str, gw: &str) -> TenantNetwork {
    TenantNetwork {
        id: id.into(),
        subnet: subnet.parse().unwrap(),
        gateway: ip(gw),
        ports: vec![],
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

/// The farm LAN: namespace `<tag>x-lan` behind the internet namespace (which routes for
/// the node, as a farm's router does): 192.168.77.1/24 and 10.77.0.1/24 on its `eth0`.
fn add_lan(w: &World) -> String {
    let lan = format!("{}x-lan", w.tag);
    run(&["ip", "netns", "add", &lan]);
    run(&[
        "ip", "-n", &w.inet, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0",
        "netns", &lan,
    ]);
    for (ns, args) in [
        (
            &w.inet,
            vec!["addr", "add", "192.168.77.254/24", "dev", "lan0"],
        ),
        (&w.inet, vec!["link", "set", "lan0", "up"]),
        (
            &w.inet,
            vec!["route", "add", "10.77.0.0/24", "via", "192.168.77.1"],
        ),
        (&lan, vec!["addr", "add", "192.168.77.1/24", "dev", "eth0"]),
        (&lan, vec!["addr", "add", "10.77.0.1/24", "dev", "eth0"]),
        (&lan, vec!["link", "set", "eth0", "up"]),
        (&lan, vec!["link", "set", "lo", "up"]),
        (
            &lan,
            vec!["route", "add", "default", "via", "192.168.77.254"],
        ),
    ] {
        let mut a = vec!["ip", "-n", ns.as_str()];
        a.extend(args);
        run(&a);
    }
    netns::run_at(&w.path(&w.inet), || {
        netns::sysctl("net.ipv4.ip_forward", "1")
    })
    .unwrap();
    // Count what arrives in the LAN: TCP SYNs to PORT, datagrams to UDP_PORT.
    for rule in [
        "add table ip spy",
        "add chain ip spy input { type filter hook input priority 0 ; }",
        "add rule ip spy input tcp dport 7100 tcp flags & (syn | ack) == syn counter",
        "add rule ip spy input udp dport 6767 counter",
    ] {
        let mut a = vec!["nft"];
        a.extend(rule.split(' '));
        w.output(&lan, &a);
    }
    lan
}

/// (TCP SYNs, UDP datagrams) that reached the LAN so far.
fn lan_seen(w: &World, lan: &str) -> (u64, u64) {
    let text = w.output(lan, &["nft", "list", "table", "ip", "spy"]);
    let counts: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words.iter().position(|w| *w == "packets")?;
            words[i + 1].parse().ok()
        })
        .collect();
    assert_eq!(counts.len(), 2, "two spy counters in {text}");
    (counts[0], counts[1])
}

/// Packets counted by the egress deny rule of an nft table in `ns`.
fn denied(w: &World, ns: &str, family: &str, table: &str) -> u64 {
    let text = w.output(ns, &["nft", "list", "table", family, table]);
    let line = text
        .lines()
        .find(|l| l.contains(EGRESS_DENY_COMMENT))
        .unwrap_or_else(|| panic!("no egress deny rule in {table}: {text}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == "packets").expect("counter");
    words[i + 1].parse().expect("packet count")
}

/// Sends one datagram from `ns` to `to`.
fn send_udp(w: &World, ns: &str, to: SocketAddr) {
    netns::run_at(&w.path(ns), || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        // Unreachable destinations may answer with an error; either way it was sent.
        let _ = s.send_to(b"probe", to);
        Ok(())
    })
    .unwrap();
}

#[test]
fn tenant_reaches_the_internet_but_not_the_lan() {
    if !privileged("tenant_reaches_the_internet_but_not_the_lan") {
        return;
    }
    let w = World::new();
    let lan = add_lan(&w);
    let net = w.network();
    net.ensure_node().unwrap();
    let a = tenant("a", "10.1.0.0/24", "10.1.0.1");
    net.ensure(&a).unwrap();
    let a1 = veth(&net, "a", "a1", "10.1.0.2");
    net.attach(&a, &a1).unwrap();
    let na1 = net.workload_netns("a", "a1");

    let inet_l = w.listen(&w.inet, PORT);
    let lan_l = w.listen(&lan, PORT);
    let node_l = w.listen(&w.node, PORT);

    // Controls: the LAN is up and reachable from its router, and the tenant reaches
    // the internet.
    w.connect_ok(&w.inet, SocketAddr::from((LAN_IP, PORT)))
        .expect("the router reaches the LAN");
    accept_peer(&lan_l);
    send_udp(&w, &w.inet, SocketAddr::from((LAN_SERVICE, UDP_PORT)));
    let control = lan_seen(&w, &lan);
    assert_eq!(
        control,
        (1, 1),
        "the spy counts the router's SYN and datagram"
    );
    w.connect_ok(&na1, SocketAddr::from((INET_IP, PORT)))
        .expect("the tenant reaches the internet");
    let peer = accept_peer(&inet_l);
    assert_eq!(peer.ip(), std::net::IpAddr::V4(NODE_IP), "masqueraded");

    // The attack: the farm LAN, a LAN service (TCP and UDP), the node's own uplink
    // address and its transit address. Every leak is collected, then reported.
    let mut leaks = Vec::new();
    for to in [LAN_IP, LAN_SERVICE, NODE_IP, ip("100.127.0.1")] {
        if w.connect(&na1, SocketAddr::from((to, PORT))).is_ok() {
            leaks.push(format!("a1 connected to {to}:{PORT}"));
        }
    }
    send_udp(&w, &na1, SocketAddr::from((LAN_SERVICE, UDP_PORT)));
    if w.ping(&na1, LAN_IP) {
        leaks.push(format!("a1 pinged {LAN_IP}"));
    }
    let seen = lan_seen(&w, &lan);
    if seen != control {
        leaks.push(format!(
            "{} SYNs and {} datagrams of the tenant arrived in the LAN",
            seen.0 - control.0,
            seen.1 - control.1
        ));
    }
    assert!(leaks.is_empty(), "egress leaks: {leaks:#?}");
    assert!(
        lan_l.accept().is_err() && node_l.accept().is_err(),
        "a connection is queued"
    );
    let tns_a = net.tenant_netns("a");
    let in_tenant = denied(&w, &tns_a, "inet", "zos");
    assert!(
        in_tenant >= 4,
        "the tenant's deny rule counted {in_tenant} packets"
    );

    // A contract that opens its LAN: network b reaches 192.168.77.0/24, not 10.77/24.
    let b = tenant("b", "10.2.0.0/24", "10.2.0.1");
    let open_lan = EgressPolicy {
        allow: vec!["192.168.77.0/24".parse::<IpNet>().unwrap()],
    };
    net.ensure_with(&b, &open_lan).unwrap();
    let b1 = veth(&net, "b", "b1", "10.2.0.2");
    net.attach(&b, &b1).unwrap();
    let nb1 = net.workload_netns("b", "b1");
    w.connect_ok(&nb1, SocketAddr::from((LAN_IP, PORT)))
        .expect("an opened LAN range is reached");
    assert_eq!(accept_peer(&lan_l).ip(), std::net::IpAddr::V4(NODE_IP));
    assert!(
        w.connect(&nb1, SocketAddr::from((LAN_SERVICE, PORT)))
            .is_err(),
        "b1 reached {LAN_SERVICE}, which its contract did not open"
    );
    // Converging a again with the default policy keeps it closed; b's opening is b's.
    net.ensure(&a).unwrap();
    assert!(w.connect(&na1, SocketAddr::from((LAN_IP, PORT))).is_err());

    // The second wall: with the tenant namespace's egress rules gone (a tenant table
    // replaced by hand), the node's per-tenant table still drops and counts.
    let node_table = format!("{}a", w.prefix.replace('-', "_"));
    let node_before = denied(&w, &w.node, "ip", &node_table);
    let bare = nft::tenant_table("zos", a.subnet, &[], &[], &[]);
    netns::run_at(&w.path(&tns_a), || {
        nft::apply(
            "bare tenant table",
            &nft::replace_script("inet", "zos", &bare),
        )
    })
    .unwrap();
    assert!(
        w.connect(&na1, SocketAddr::from((LAN_IP, PORT))).is_err(),
        "a1 reached the LAN past the node's wall"
    );
    let node_after = denied(&w, &w.node, "ip", &node_table);
    eprintln!("deny counters: tenant namespace {in_tenant}, node {node_before} -> {node_after}");
    assert!(
        node_after > node_before,
        "the node's deny rule counted nothing"
    );
    assert!(
        lan_l.accept().is_err(),
        "a connection of a1 is queued in the LAN"
    );

    drop((inet_l, lan_l, node_l));
    net.remove("a").unwrap();
    net.remove("b").unwrap();
    net.remove_node().unwrap();
}
