//! Real-kernel tests of the mesh part (issue #16): the WireGuard link of a tenant
//! network, its firewall rules. Root, iproute2, nftables, in a `zt-<random>` world.
//!
//! This host's kernel has no WireGuard: there `ensure_mesh` must refuse with
//! `Error::WireguardMissing` and leave nothing behind. On a kernel with WireGuard the
//! same test runs the positive path instead (two tenant networks of one range on this
//! node as two slots, peers of each other over the node's address). Which branch ran
//! is printed; the branch that cannot run prints a SKIP line.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use common::{privileged, without_counts, World, INET_IP, NODE_IP};
use zos_network::kernel::{within, Kernel, RealKernel};
use zos_network::nft::{set_ports_script, WIREGUARD_SET};
use zos_network::{
    Error, MeshConfig, MeshPeer, Network, TenantNetwork, TenantPort, WorkloadAttachment,
};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// Slot `k` (a /22) of 10.20.0.0/16 as tenant network `id`.
fn slot(id: &str, k: u8) -> TenantNetwork {
    TenantNetwork {
        id: id.into(),
        subnet: format!("10.20.{}.0/22", k * 4).parse().unwrap(),
        gateway: ip(&format!("10.20.{}.1", k * 4)),
        ports: vec![],
    }
}

fn mesh(private: u8, peers: Vec<MeshPeer>) -> MeshConfig {
    MeshConfig {
        range: "10.20.0.0/16".parse().unwrap(),
        private_key: [private; 32],
        peers,
    }
}

/// What configuration a namespace holds: link names, IPv4 addresses, routes, the nft
/// ruleset (no carrier states, IPv6 link-locals or counters: the kernel settles
/// those on its own after a link comes up).
fn config(w: &World, ns: &str) -> String {
    let links: Vec<String> = w
        .output(ns, &["ip", "-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|n| n.trim().to_string()))
        .collect();
    [
        links.join(" "),
        w.output(ns, &["ip", "-4", "-o", "addr", "show"]),
        w.output(ns, &["ip", "route", "show"]),
        without_counts(&w.output(ns, &["nft", "list", "ruleset"])),
    ]
    .join("\n")
}

/// The host table's name in the node namespace.
fn host_table(w: &World) -> String {
    format!("{}host", w.prefix).replace('-', "_")
}

/// The ports of the host table's `wireguard` set, through the real session.
fn set_ports(w: &World) -> Option<Vec<u16>> {
    let node = RealKernel.open_ns(Some(&w.path(&w.node))).unwrap();
    let table = host_table(w);
    within(&RealKernel, &node, |s| {
        s.nft_set_ports("inet", &table, WIREGUARD_SET)
    })
    .unwrap()
}

#[test]
fn ensure_mesh_on_this_kernel() {
    if !privileged("ensure_mesh_on_this_kernel") {
        return;
    }
    let w = World::new();
    let net = w.network();
    net.ensure_node().unwrap();
    let a = slot("a", 0);
    net.ensure(&a).unwrap();
    if net.wireguard_available() {
        eprintln!("ensure_mesh_on_this_kernel: the kernel has WireGuard: positive path");
        eprintln!("SKIP: ensure_mesh_on_this_kernel: refusal branch (this kernel has WireGuard)");
        positive(&w, &net, &a);
    } else {
        eprintln!("ensure_mesh_on_this_kernel: the kernel has no WireGuard: refusal branch");
        eprintln!(
            "SKIP: ensure_mesh_on_this_kernel: positive branch (no WireGuard in this kernel)"
        );
        refusal(&w, &net, &a);
    }
}

/// No WireGuard: refused, typed, and nothing made anywhere.
fn refusal(w: &World, net: &Network, a: &TenantNetwork) {
    let tenant = net.tenant_netns("a");
    let before = [config(w, &w.node), config(w, &tenant)];
    let m = mesh(
        1,
        vec![MeshPeer {
            public_key: [9; 32],
            endpoint: Some(SocketAddr::new(INET_IP.into(), 51820)),
            allowed: "10.20.4.0/22".parse().unwrap(),
            keepalive_s: None,
        }],
    );
    let err = net.ensure_mesh(a, &m).unwrap_err();
    assert!(matches!(err, Error::WireguardMissing), "{err}");
    // The question is answered (no family), not failed.
    let node = RealKernel.open_ns(Some(&w.path(&w.node))).unwrap();
    assert!(!within(&RealKernel, &node, |s| s.wireguard_family()).unwrap());
    // The link kind itself is refused the same way (EOPNOTSUPP from rtnetlink).
    let tns = RealKernel.open_ns(Some(&net.netns_path(&tenant))).unwrap();
    let err = within(&RealKernel, &node, |s| s.add_wireguard_into("wg0", &tns)).unwrap_err();
    assert!(matches!(err, Error::WireguardMissing), "{err}");

    let after = [config(w, &w.node), config(w, &tenant)];
    assert_eq!(before, after, "a refused ensure_mesh changed a namespace");
    let links = after[1].lines().next().unwrap_or_default();
    assert!(
        !links.split(' ').any(|l| l.starts_with("wg0")),
        "no WireGuard link: {links}"
    );
    assert_eq!(set_ports(w), Some(vec![]), "no port opened");
    assert_eq!(net.mesh_state("a").unwrap(), None);
    assert_eq!(net.mesh_ports().unwrap(), Vec::<u16>::new());
    assert!(net.remove("a").unwrap());
    assert_eq!(set_ports(w), Some(vec![]));
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

/// With WireGuard: two slots of one range on this node, peers of each other over
/// the node's address; converged twice; a workload of one reaches one of the other
/// by its private address; the stats count it; remove closes the ports.
fn positive(w: &World, net: &Network, a: &TenantNetwork) {
    let b = slot("b", 1);
    net.ensure(&b).unwrap();
    // Keys first (the kernel derives the public keys), then the peers.
    let sa = net.ensure_mesh(a, &mesh(1, vec![])).unwrap();
    let sb = net.ensure_mesh(&b, &mesh(2, vec![])).unwrap();
    assert_ne!(sa.listen_port, 0);
    assert_ne!(sb.listen_port, 0);
    let peer = |public_key, port, allowed: &TenantNetwork| MeshPeer {
        public_key,
        endpoint: Some(SocketAddr::new(NODE_IP.into(), port)),
        allowed: allowed.subnet,
        keepalive_s: None,
    };
    let ma = mesh(1, vec![peer(sb.public_key, sb.listen_port, &b)]);
    let mb = mesh(2, vec![peer(sa.public_key, sa.listen_port, a)]);
    net.ensure_mesh(a, &ma).unwrap();
    net.ensure_mesh(&b, &mb).unwrap();
    let mut ports = vec![sa.listen_port, sb.listen_port];
    ports.sort_unstable();
    assert_eq!(set_ports(w), Some(ports.clone()));
    assert_eq!(net.mesh_ports().unwrap(), ports);
    // The host table made again (as at every start) keeps them open: the new table
    // and its filled set are one transaction.
    net.ensure_node().unwrap();
    assert_eq!(set_ports(w), Some(ports.clone()));

    // Again: nothing changes in any namespace, the port stays.
    let watched = [w.node.clone(), net.tenant_netns("a"), net.tenant_netns("b")];
    let before: Vec<String> = watched.iter().map(|n| config(w, n)).collect();
    let again = net.ensure_mesh(a, &ma).unwrap();
    assert_eq!(again.listen_port, sa.listen_port);
    let after: Vec<String> = watched.iter().map(|n| config(w, n)).collect();
    assert_eq!(before, after, "ensure_mesh twice changed a namespace");

    // Traffic across the two slots, by private address.
    let (wa, wb) = (
        veth(net, "a", "w1", "10.20.0.2"),
        veth(net, "b", "w1", "10.20.4.2"),
    );
    net.attach(a, &wa).unwrap();
    net.attach(&b, &wb).unwrap();
    let nsa = net.workload_netns("a", "w1");
    assert!(w.ping_ok(&nsa, ip("10.20.4.2")), "a -> b over WireGuard");
    let st = net.mesh_state("a").unwrap().unwrap();
    assert_eq!(st.peers.len(), 1);
    assert!(st.peers[0].last_handshake.is_some(), "{st:?}");
    assert!(
        st.peers[0].rx_bytes > 0 && st.peers[0].tx_bytes > 0,
        "{st:?}"
    );

    // Remove: the link and its port go.
    assert!(net.remove("a").unwrap());
    assert_eq!(set_ports(w), Some(vec![sb.listen_port]));
    assert!(net.remove("b").unwrap());
    assert_eq!(set_ports(w), Some(vec![]));
    assert_eq!(net.mesh_ports().unwrap(), Vec::<u16>::new());
}

/// The nft part, for real: the host table's set and its input rule, the tenant
/// table's wg0 rules parse; UDP to a port in the set is let in, the same port out
/// of the set is not, the set follows `set_ports_script`.
#[test]
fn wireguard_firewall_rules_parse_and_open_only_the_set() {
    if !privileged("wireguard_firewall_rules_parse_and_open_only_the_set") {
        return;
    }
    let w = World::new();
    let net = w.network();
    net.ensure_node().unwrap();
    let a = slot("a", 0);
    net.ensure(&a).unwrap();
    let table = host_table(&w);
    let input = w.output(&w.node, &["nft", "list", "chain", "inet", &table, "input"]);
    assert!(input.contains("udp dport @wireguard accept"), "{input}");
    assert_eq!(set_ports(&w), Some(vec![]));
    let forward = w.output(
        &net.tenant_netns("a"),
        &["nft", "list", "chain", "inet", "zos", "forward"],
    );
    assert!(
        forward.contains("iifname \"br0\" oifname \"wg0\" ip saddr 10.20.0.0/22 accept"),
        "{forward}"
    );
    assert!(
        forward.contains("iifname \"wg0\" oifname \"br0\" accept"),
        "{forward}"
    );
    let post = w.output(
        &net.tenant_netns("a"),
        &["nft", "list", "chain", "inet", "zos", "postrouting"],
    );
    assert!(!post.contains("wg0"), "no masquerade into wg0: {post}");

    // A UDP socket in the node namespace, on a port the kernel picks.
    let sock = w.run_in(&w.node, || UdpSocket::bind((NODE_IP, 0)).unwrap());
    sock.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let port = sock.local_addr().unwrap().port();
    let to = SocketAddr::new(NODE_IP.into(), port);
    let send = |msg: &[u8]| {
        w.run_in(&w.inet, || {
            UdpSocket::bind((INET_IP, 0))
                .unwrap()
                .send_to(msg, to)
                .unwrap()
        });
    };
    let received = |want: &[u8]| {
        let mut buf = [0u8; 64];
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => &buf[..n] == want,
            Err(_) => false,
        }
    };
    let node = RealKernel.open_ns(Some(&w.path(&w.node))).unwrap();
    let apply = |ports: &[u16]| {
        within(&RealKernel, &node, |s| {
            s.nft_apply(
                "test wireguard ports",
                &set_ports_script("inet", &table, WIREGUARD_SET, ports),
            )
        })
        .unwrap()
    };
    // In the set: let in (bounded retries, as the other positive checks).
    apply(&[port, 51820]);
    let mut want = vec![port, 51820];
    want.sort_unstable();
    assert_eq!(set_ports(&w), Some(want));
    let mut ok = false;
    for _ in 0..3 {
        send(b"in-set");
        if received(b"in-set") {
            ok = true;
            break;
        }
    }
    assert!(ok, "UDP to a port in the set must be let in");
    // Out of the set (after the positive check over the same path): dropped.
    apply(&[51820]);
    assert_eq!(set_ports(&w), Some(vec![51820]));
    send(b"not-in-set");
    assert!(
        !received(b"not-in-set"),
        "UDP to a port not in the set got in"
    );
    // ensure_node makes the table again: the set holds the links' ports (none here).
    net.ensure_node().unwrap();
    assert_eq!(set_ports(&w), Some(vec![]));
    assert!(net.remove("a").unwrap());
}

/// The range route's calls on a real link (the bridge stands in for wg0, which this
/// host cannot make): replace, read back, replace again (no duplicate), delete, delete
/// again (not an error).
#[test]
fn range_route_on_a_real_link() {
    if !privileged("range_route_on_a_real_link") {
        return;
    }
    let w = World::new();
    let net = w.network();
    net.ensure_node().unwrap();
    net.ensure(&slot("a", 0)).unwrap();
    let tns = RealKernel
        .open_ns(Some(&net.netns_path(&net.tenant_netns("a"))))
        .unwrap();
    let range: zos_network::Ipv4Subnet = "10.20.0.0/16".parse().unwrap();
    let slot_net: zos_network::Ipv4Subnet = "10.20.0.0/22".parse().unwrap();
    let routes = within(&RealKernel, &tns, |s| {
        let br = s.link("br0")?.expect("br0");
        s.route_replace(range, br.index)?;
        s.route_replace(range, br.index)?;
        let with = s.routes(br.index)?;
        s.route_del(range, br.index)?;
        s.route_del(range, br.index)?;
        Ok((with, s.routes(br.index)?))
    })
    .unwrap();
    assert_eq!(routes.0, [slot_net, range], "{routes:?}");
    assert_eq!(routes.1, [slot_net], "{routes:?}");
    let shown = w.output(&net.tenant_netns("a"), &["ip", "route", "show"]);
    assert!(!shown.contains("10.20.0.0/16"), "{shown}");
    assert!(net.remove("a").unwrap());
}
