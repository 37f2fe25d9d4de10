//! A tenant network across nodes: its WireGuard link (issue #16).
//!
//! Per tenant network, a WireGuard link `wg0` lives in the tenant namespace. It is
//! created by a netlink request made FROM THE NODE NAMESPACE that names the tenant
//! namespace as the new link's home (`IFLA_NET_NS_FD`): WireGuard binds its UDP socket
//! in the namespace of the request (the link's "creating" namespace), so the encrypted
//! UDP goes out of the node's uplink while the clear traffic exists only inside the
//! tenant namespace. One request: no temporary name in the node namespace, nothing
//! half made to clean up after a crash, no move.
//!
//! In the tenant namespace: the link up (no address: it is a point-to-multipoint pipe
//! the bridge's gateway routes into), the route `range dev wg0` (this node's slot is
//! on the bridge: more specific), and the tenant table's two `wg0` rules
//! ([`crate::nft::tenant_table`]). In the node namespace: the link's UDP port in the
//! host table's `wireguard` set (input accepts `udp dport @wireguard`, nothing else).
//!
//! The configuration (private key, exact peers) goes over WireGuard's generic netlink
//! family ([`crate::wg`]); the listen port is never set: the kernel picks a free one
//! when the link first goes up and keeps it for the link's life.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::kernel::Session;
use crate::model::TenantNetwork;
use crate::names::{self, WG_IF};
use crate::network::Network;
use crate::nft;
use crate::subnet::Ipv4Subnet;

/// What `ensure_mesh` makes of a tenant network's WireGuard link.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshConfig {
    /// The whole network range; routed into the WireGuard link in the tenant
    /// namespace (this node's own slot is on the bridge: more specific).
    pub range: Ipv4Subnet,
    /// This node's WireGuard private key (X25519, 32 bytes).
    pub private_key: [u8; 32],
    /// The wanted peers: exactly these after ensure_mesh (others removed).
    pub peers: Vec<MeshPeer>,
}

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConfig")
            .field("range", &self.range)
            .field("private_key", &"<secret>")
            .field("peers", &self.peers)
            .finish()
    }
}

/// One wanted peer of a WireGuard link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshPeer {
    /// The peer's public key.
    pub public_key: [u8; 32],
    /// Where to send to it; `None` for a peer that cannot be reached (it sends first).
    pub endpoint: Option<SocketAddr>,
    /// Exactly the peer's slot subnet.
    pub allowed: Ipv4Subnet,
    /// Some(25) when either side has no endpoint (zos_mesh::PERSISTENT_KEEPALIVE_S).
    pub keepalive_s: Option<u16>,
}

/// A WireGuard link as read back from the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshState {
    /// The UDP port in the node namespace (what the peer record publishes).
    pub listen_port: u16,
    /// This node's public key for the network.
    pub public_key: [u8; 32],
    /// Every peer the link has.
    pub peers: Vec<MeshPeerState>,
}

/// One peer as the kernel sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshPeerState {
    /// The peer's public key.
    pub public_key: [u8; 32],
    /// The configured endpoint, or the one the peer was last heard from.
    pub endpoint: Option<SocketAddr>,
    /// The last completed handshake; `None`: never.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer (decrypted traffic and handshakes).
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

/// A WireGuard device as `WG_CMD_GET_DEVICE` reports it (the seam's read type).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct WgDevice {
    /// The UDP port (0 until the link first went up).
    pub listen_port: u16,
    /// The private key, if one is set (the kernel reports it to CAP_NET_ADMIN).
    pub private_key: Option<[u8; 32]>,
    /// The public key of the private key.
    pub public_key: Option<[u8; 32]>,
    /// The peers, in the kernel's order.
    pub peers: Vec<WgPeer>,
}

impl std::fmt::Debug for WgDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgDevice")
            .field("listen_port", &self.listen_port)
            .field("private_key", &self.private_key.map(|_| "<secret>"))
            .field("public_key", &self.public_key)
            .field("peers", &self.peers)
            .finish()
    }
}

/// One peer of a [`WgDevice`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WgPeer {
    /// Its public key.
    pub public_key: [u8; 32],
    /// Its endpoint (configured or learned).
    pub endpoint: Option<SocketAddr>,
    /// Its allowed IPs (IPv4 ones; we set no others).
    pub allowed: Vec<Ipv4Subnet>,
    /// Persistent keepalive interval, 0 = off.
    pub keepalive_s: u16,
    /// Last completed handshake.
    pub last_handshake: Option<SystemTime>,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// Whether peer `have` already is what `want` asks (see [`WgDevice::matches`]).
fn peer_matches(have: &WgPeer, want: &MeshPeer) -> bool {
    have.public_key == want.public_key
        && have.allowed == [want.allowed]
        && have.keepalive_s == want.keepalive_s.unwrap_or(0)
        && (want.endpoint.is_none() || have.endpoint == want.endpoint)
}

impl WgDevice {
    /// Whether the device already is what `mesh` asks: the same private key and
    /// exactly the wanted peers with their allowed IPs and keepalive. A wanted
    /// endpoint must be the one set; a peer wanted without one may have any (the one
    /// it roamed from).
    pub fn matches(&self, mesh: &MeshConfig) -> bool {
        if self.private_key != Some(mesh.private_key) || self.peers.len() != mesh.peers.len() {
            return false;
        }
        mesh.peers
            .iter()
            .all(|want| self.peers.iter().any(|have| peer_matches(have, want)))
    }

    fn state(&self) -> MeshState {
        MeshState {
            listen_port: self.listen_port,
            public_key: self.public_key.unwrap_or_default(),
            peers: self
                .peers
                .iter()
                .map(|p| MeshPeerState {
                    public_key: p.public_key,
                    endpoint: p.endpoint,
                    last_handshake: p.last_handshake,
                    rx_bytes: p.rx_bytes,
                    tx_bytes: p.tx_bytes,
                })
                .collect(),
        }
    }
}

/// Refuse a configuration that would route or accept addresses outside the network:
/// the slot subnet and every peer's allowed IPs inside the range, no peer on our slot,
/// no two peers overlapping, no public key twice.
fn check(net: &TenantNetwork, mesh: &MeshConfig) -> Result<()> {
    let inside = |s: Ipv4Subnet| s.prefix() >= mesh.range.prefix() && mesh.range.contains(s.addr());
    let overlap = |a: Ipv4Subnet, b: Ipv4Subnet| a.contains(b.addr()) || b.contains(a.addr());
    if !inside(net.subnet) {
        return Err(Error::InvalidSubnet {
            subnet: net.subnet.to_string(),
            reason: "this node's slot subnet is not inside the mesh range",
        });
    }
    let mut keys = BTreeSet::new();
    for (i, p) in mesh.peers.iter().enumerate() {
        let bad = |reason| {
            Err(Error::InvalidSubnet {
                subnet: p.allowed.to_string(),
                reason,
            })
        };
        if !inside(p.allowed) {
            return bad("a peer's allowed IPs are not inside the mesh range");
        }
        if overlap(p.allowed, net.subnet) {
            return bad("a peer's allowed IPs overlap this node's slot");
        }
        if mesh.peers[..i]
            .iter()
            .any(|q| overlap(q.allowed, p.allowed))
        {
            return bad("two peers' allowed IPs overlap");
        }
        if !keys.insert(p.public_key) {
            return bad("two peers have the same public key");
        }
    }
    Ok(())
}

/// The listen port of the tenant namespace's `wg0`, if it has one.
fn wg_port(nl: &dyn Session) -> Result<Option<u16>> {
    match nl.link(WG_IF)? {
        Some(l) => Ok(Some(nl.wg_get(l.index)?.listen_port)),
        None => Ok(None),
    }
}

impl Network {
    /// Whether the node namespace's kernel has WireGuard (the genetlink family
    /// "wireguard" resolves). False on a kernel without the module, and when the
    /// question itself fails (logged).
    pub fn wireguard_available(&self) -> bool {
        let answer = self
            .node_ns()
            .and_then(|node| self.within(&node, |nl| nl.wireguard_family()));
        match answer {
            Ok(yes) => yes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the kernel for WireGuard");
                false
            }
        }
    }

    /// Converge tenant network `net`'s WireGuard link (after ensure/ensure_with of the
    /// same net, whose subnet is this node's SLOT subnet). Idempotent: a second run
    /// writes nothing (it reads the link, its route and the firewall set). Returns the
    /// state read back (its listen port is what the peer record publishes).
    /// [`Error::WireguardMissing`] when the kernel has no WireGuard: nothing is made.
    pub fn ensure_mesh(&self, net: &TenantNetwork, mesh: &MeshConfig) -> Result<MeshState> {
        net.validate(&self.cfg.prefix)?;
        check(net, mesh)?;
        let _g = self.guard();
        let node = self.node_ns()?;
        if !self.within(&node, |nl| nl.wireguard_family())? {
            return Err(Error::WireguardMissing);
        }
        let tenant_path = self.netns_path(&self.tenant_netns(&net.id));
        if !self.kernel.ns_exists(&tenant_path) {
            return Err(Error::NoSuchNetwork(net.id.clone()));
        }
        let tenant = self.kernel.open_ns(Some(&tenant_path))?;
        let created = if self.within(&tenant, |nl| nl.link(WG_IF))?.is_none() {
            // From the node namespace, born in the tenant's: its socket stays here.
            self.within(&node, |nl| nl.add_wireguard_into(WG_IF, &tenant))?;
            true
        } else {
            false
        };
        let (state, rewritten) = self.within(&tenant, |nl| {
            let l = nl.link(WG_IF)?.ok_or_else(|| gone(WG_IF))?;
            let dev = nl.wg_get(l.index)?;
            let rewrite = !dev.matches(mesh);
            if rewrite {
                // Exactly the wanted peers after one request: the others removed,
                // the wanted ones added or updated in place (their sessions live on).
                let stale: Vec<[u8; 32]> = dev
                    .peers
                    .iter()
                    .map(|p| p.public_key)
                    .filter(|k| !mesh.peers.iter().any(|w| w.public_key == *k))
                    .collect();
                let changed: Vec<MeshPeer> = mesh
                    .peers
                    .iter()
                    .filter(|w| !dev.peers.iter().any(|have| peer_matches(have, w)))
                    .cloned()
                    .collect();
                nl.wg_set(l.index, &mesh.private_key, &changed, &stale)?;
            }
            if !l.up {
                // The first up binds the UDP socket on a port the kernel picks.
                nl.set_up(l.index)?;
            }
            // Exactly the range into the link (another, from a range that was
            // changed, goes).
            let routes = nl.routes(l.index)?;
            for stale in routes.iter().filter(|r| **r != mesh.range) {
                nl.route_del(*stale, l.index)?;
            }
            if !routes.contains(&mesh.range) {
                nl.route_replace(mesh.range, l.index)?;
            }
            Ok((nl.wg_get(l.index)?.state(), rewrite))
        })?;
        self.sync_wireguard_ports(&node)?;
        tracing::info!(
            net = %net.id, range = %mesh.range, port = state.listen_port,
            peers = mesh.peers.len(), created, rewritten, "mesh link ensured"
        );
        Ok(state)
    }

    /// The state of tenant network `id`'s WireGuard link, `None` if it has none (or
    /// the network does not exist).
    pub fn mesh_state(&self, id: &str) -> Result<Option<MeshState>> {
        names::check_net_id(id)?;
        let path = self.netns_path(&self.tenant_netns(id));
        if !self.kernel.ns_exists(&path) {
            return Ok(None);
        }
        let tenant = self.kernel.open_ns(Some(&path))?;
        self.within(&tenant, |nl| match nl.link(WG_IF)? {
            Some(l) => Ok(Some(nl.wg_get(l.index)?.state())),
            None => Ok(None),
        })
    }

    /// The listen ports of every tenant network's WireGuard link on this node (the
    /// heartbeat labels these UDP sockets `wireguard`), sorted, without repeats.
    pub fn mesh_ports(&self) -> Result<Vec<u16>> {
        let p = &self.cfg.prefix;
        let mut ports = BTreeSet::new();
        for ns in self.kernel.list_ns(&self.cfg.run_dir, p)? {
            if ns[p.len()..].contains('-') {
                continue; // a workload namespace
            }
            let tenant = self.kernel.open_ns(Some(&self.netns_path(&ns)))?;
            if let Some(port) = self.within(&tenant, wg_port)? {
                if port != 0 {
                    ports.insert(port);
                }
            }
        }
        Ok(ports.into_iter().collect())
    }

    /// Make the host table's `wireguard` set exactly the ports of our WireGuard links
    /// (read first: written only when it differs). Without the host table (no
    /// `ensure_node` yet) there is no input policy of ours to open: nothing to do.
    pub(crate) fn sync_wireguard_ports(&self, node: &crate::kernel::Ns) -> Result<()> {
        let want = self.mesh_ports()?;
        let table = self.host_table();
        self.within(node, |nl| {
            let Some(have) = nl.nft_set_ports("inet", &table, nft::WIREGUARD_SET)? else {
                return Ok(());
            };
            if have != want {
                nl.nft_apply(
                    "wireguard ports",
                    &nft::set_ports_script("inet", &table, nft::WIREGUARD_SET, &want),
                )?;
            }
            Ok(())
        })
    }

    /// Delete tenant network `id`'s WireGuard link now (synchronously: namespace
    /// teardown is asynchronous, and the UDP socket must close with `remove`).
    /// True if there was one.
    pub(crate) fn remove_mesh_link(&self, id: &str) -> Result<bool> {
        let path = self.netns_path(&self.tenant_netns(id));
        if !self.kernel.ns_exists(&path) {
            return Ok(false);
        }
        let tenant = self.kernel.open_ns(Some(&path))?;
        self.within(&tenant, |nl| match nl.link(WG_IF)? {
            Some(l) => nl.del_link(l.index).map(|_| true),
            None => Ok(false),
        })
    }
}

fn gone(name: &str) -> Error {
    Error::io(
        format!("link {name} vanished while being configured"),
        std::io::Error::from(std::io::ErrorKind::NotFound),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeKernel;
    use crate::model::NetworkConfig;
    use std::path::Path;
    use std::sync::Arc;

    const NODE: &str = "/run/fake-node/node";

    fn fake_network(wireguard: bool) -> (Arc<FakeKernel>, Network) {
        let k = Arc::new(FakeKernel::new());
        k.add_namespace(Path::new(NODE));
        k.add_uplink("node", "up0");
        k.set_wireguard(wireguard);
        let mut c = NetworkConfig::new("up0");
        c.prefix = "zt-".into();
        c.run_dir = "/run/fake".into();
        c.node_netns = Some(NODE.into());
        let net = Network::with_kernel(c, k.clone()).unwrap();
        (k, net)
    }

    /// Slot 1 of 10.20.0.0/16 (slots are /22).
    fn slot() -> TenantNetwork {
        TenantNetwork {
            id: "a".into(),
            subnet: "10.20.4.0/22".parse().unwrap(),
            gateway: "10.20.4.1".parse().unwrap(),
            ports: vec![],
        }
    }

    fn peer(k: u8, allowed: &str, endpoint: Option<&str>) -> MeshPeer {
        MeshPeer {
            public_key: [k; 32],
            endpoint: endpoint.map(|e| e.parse().unwrap()),
            allowed: allowed.parse().unwrap(),
            keepalive_s: if endpoint.is_none() { Some(25) } else { None },
        }
    }

    fn mesh(peers: Vec<MeshPeer>) -> MeshConfig {
        MeshConfig {
            range: "10.20.0.0/16".parse().unwrap(),
            private_key: [0x11; 32],
            peers,
        }
    }

    fn up(wireguard: bool) -> (Arc<FakeKernel>, Network) {
        let (k, net) = fake_network(wireguard);
        net.ensure_node().unwrap();
        net.ensure(&slot()).unwrap();
        k.take_calls();
        (k, net)
    }

    #[test]
    fn without_wireguard_ensure_mesh_refuses_and_makes_nothing() {
        let (k, net) = up(false);
        assert!(!net.wireguard_available());
        let m = mesh(vec![peer(2, "10.20.0.0/22", Some("192.0.2.2:51820"))]);
        assert!(matches!(
            net.ensure_mesh(&slot(), &m),
            Err(Error::WireguardMissing)
        ));
        assert_eq!(k.calls(), Vec::<String>::new(), "nothing written");
        assert!(k.links("zt-a").iter().all(|l| l.name != WG_IF));
        assert_eq!(net.mesh_state("a").unwrap(), None);
        assert_eq!(net.mesh_ports().unwrap(), Vec::<u16>::new());
        assert_eq!(k.set("node", "inet", "zt_host", "wireguard"), Some(vec![]));
        // remove of a network without a link does what it always did.
        assert!(net.remove("a").unwrap());
        assert_eq!(
            k.take_calls(),
            [
                "node link del zt-a",
                "node nft delete node tenant table",
                "zt-a netns remove"
            ]
        );
    }

    #[test]
    fn ensure_mesh_creates_then_a_second_run_writes_nothing() {
        let (k, net) = up(true);
        assert!(net.wireguard_available());
        let m = mesh(vec![
            peer(2, "10.20.0.0/22", Some("192.0.2.2:51820")),
            peer(3, "10.20.8.0/22", None),
        ]);
        let state = net.ensure_mesh(&slot(), &m).unwrap();
        assert_eq!(
            k.take_calls(),
            [
                "node link add wg0 type wireguard netns zt-a",
                "zt-a wg set wg0 key eeee peers 0202,0303 remove ",
                "zt-a link set wg0 up",
                "zt-a route replace 10.20.0.0/16 dev wg0",
                "node nft wireguard ports",
            ]
        );
        assert_eq!(state.listen_port, 51820);
        assert_eq!(state.public_key, FakeKernel::public_key(&[0x11; 32]));
        let keys: Vec<[u8; 32]> = state.peers.iter().map(|p| p.public_key).collect();
        assert_eq!(keys, [[2; 32], [3; 32]]);
        assert!(state.peers.iter().all(|p| p.last_handshake.is_none()));
        assert_eq!(
            k.set("node", "inet", "zt_host", "wireguard"),
            Some(vec![51820])
        );
        assert_eq!(
            k.routes("zt-a"),
            [("10.20.0.0/16".to_string(), "wg0".to_string())]
        );
        let dev = k.wg_device("zt-a", WG_IF).unwrap();
        assert_eq!(dev.peers[1].keepalive_s, 25);
        assert_eq!(dev.peers[0].endpoint, m.peers[0].endpoint);

        // Again: only reads (the stats come back).
        k.wg_traffic("zt-a", WG_IF, &[2; 32], 100, 200);
        let again = net.ensure_mesh(&slot(), &m).unwrap();
        assert_eq!(k.take_calls(), Vec::<String>::new());
        assert_eq!(again.listen_port, 51820, "the port never changes");
        assert_eq!(
            (again.peers[0].rx_bytes, again.peers[0].tx_bytes),
            (100, 200)
        );
        assert!(again.peers[0].last_handshake.is_some());
        assert_eq!(net.mesh_state("a").unwrap(), Some(again));
        assert_eq!(net.mesh_ports().unwrap(), [51820]);

        // A roamed endpoint of a peer wanted without one is not a change.
        k.wg_traffic("zt-a", WG_IF, &[3; 32], 1, 1);
        net.ensure_mesh(&slot(), &m).unwrap();
        assert_eq!(k.take_calls(), Vec::<String>::new());
    }

    #[test]
    fn the_peers_become_exactly_the_wanted_ones_and_unchanged_ones_keep_their_session() {
        let (k, net) = up(true);
        let m = mesh(vec![
            peer(2, "10.20.0.0/22", Some("192.0.2.2:51820")),
            peer(3, "10.20.8.0/22", None),
        ]);
        net.ensure_mesh(&slot(), &m).unwrap();
        k.wg_traffic("zt-a", WG_IF, &[2; 32], 10, 20);
        k.take_calls();
        // Peer 3 leaves; peer 4 joins on its slot; nothing changes for peer 2.
        let m2 = mesh(vec![
            peer(2, "10.20.0.0/22", Some("192.0.2.2:51820")),
            peer(4, "10.20.8.0/22", Some("192.0.2.4:40000")),
        ]);
        let s = net.ensure_mesh(&slot(), &m2).unwrap();
        assert_eq!(
            k.take_calls(),
            ["zt-a wg set wg0 key eeee peers 0404 remove 0303"]
        );
        let keys: Vec<[u8; 32]> = s.peers.iter().map(|p| p.public_key).collect();
        assert_eq!(keys, [[2; 32], [4; 32]]);
        assert_eq!(s.peers[0].rx_bytes, 10, "peer 2 was not touched");
        // Peer 2 moves (a replica moved: new endpoint, same slot).
        let m3 = mesh(vec![
            peer(2, "10.20.0.0/22", Some("192.0.2.9:51820")),
            peer(4, "10.20.8.0/22", Some("192.0.2.4:40000")),
        ]);
        let s = net.ensure_mesh(&slot(), &m3).unwrap();
        assert_eq!(
            k.take_calls(),
            ["zt-a wg set wg0 key eeee peers 0202 remove "]
        );
        assert_eq!(s.peers[0].endpoint, m3.peers[0].endpoint);
        let dev = k.wg_device("zt-a", WG_IF).unwrap();
        assert_eq!(dev.peers[0].allowed, [m3.peers[0].allowed]);
        // No peers at all.
        let s = net.ensure_mesh(&slot(), &mesh(vec![])).unwrap();
        assert!(s.peers.is_empty());
        assert_eq!(
            k.take_calls(),
            ["zt-a wg set wg0 key eeee peers  remove 0202,0404"]
        );
    }

    #[test]
    fn a_new_key_or_range_is_applied_and_nothing_else() {
        let (k, net) = up(true);
        let m = mesh(vec![peer(2, "10.20.0.0/22", Some("192.0.2.2:51820"))]);
        net.ensure_mesh(&slot(), &m).unwrap();
        k.take_calls();
        let mut rotated = m.clone();
        rotated.private_key = [0x22; 32];
        let s = net.ensure_mesh(&slot(), &rotated).unwrap();
        assert_eq!(k.take_calls(), ["zt-a wg set wg0 key dddd peers  remove "]);
        assert_eq!(s.public_key, FakeKernel::public_key(&[0x22; 32]));
        assert_eq!(s.listen_port, 51820, "the port stays");
        // The range route follows the range (a /15 still holds the slots).
        let mut wider = rotated.clone();
        wider.range = "10.20.0.0/15".parse().unwrap();
        net.ensure_mesh(&slot(), &wider).unwrap();
        assert_eq!(
            k.take_calls(),
            [
                "zt-a route del 10.20.0.0/16 dev wg0",
                "zt-a route replace 10.20.0.0/15 dev wg0"
            ]
        );
        assert_eq!(
            k.routes("zt-a"),
            [("10.20.0.0/15".to_string(), "wg0".to_string())]
        );
    }

    #[test]
    fn remove_takes_the_link_and_its_port_and_ensure_node_keeps_the_port_open() {
        let (k, net) = up(true);
        let m = mesh(vec![peer(2, "10.20.0.0/22", Some("192.0.2.2:51820"))]);
        net.ensure_mesh(&slot(), &m).unwrap();
        k.take_calls();
        // ensure_node makes the host table again with its set filled, in one run.
        net.ensure_node().unwrap();
        assert_eq!(
            k.take_calls(),
            ["node sysctl net.ipv4.ip_forward=1", "node nft host table"]
        );
        assert_eq!(
            k.set("node", "inet", "zt_host", "wireguard"),
            Some(vec![51820])
        );
        assert!(net.remove("a").unwrap());
        assert_eq!(
            k.take_calls(),
            [
                "zt-a link del wg0",
                "node link del zt-a",
                "node nft delete node tenant table",
                "zt-a netns remove",
                "node nft wireguard ports"
            ]
        );
        assert_eq!(k.set("node", "inet", "zt_host", "wireguard"), Some(vec![]));
        assert_eq!(net.mesh_ports().unwrap(), Vec::<u16>::new());
        assert_eq!(net.mesh_state("a").unwrap(), None);
        assert!(!net.remove("a").unwrap());
    }

    #[test]
    fn refusals_make_no_call() {
        let (k, net) = up(true);
        let refused = |m: MeshConfig| {
            let e = net.ensure_mesh(&slot(), &m).unwrap_err();
            assert!(matches!(e, Error::InvalidSubnet { .. }), "{e}");
        };
        // A peer outside the range, on our slot, two peers overlapping, a key twice.
        refused(mesh(vec![peer(2, "10.21.0.0/22", None)]));
        refused(mesh(vec![peer(2, "10.20.4.0/24", None)]));
        refused(mesh(vec![
            peer(2, "10.20.8.0/22", None),
            peer(3, "10.20.8.0/24", None),
        ]));
        refused(mesh(vec![
            peer(2, "10.20.8.0/22", None),
            peer(2, "10.20.12.0/22", None),
        ]));
        // Our slot outside the range.
        let mut m = mesh(vec![]);
        m.range = "10.30.0.0/16".parse().unwrap();
        refused(m);
        // A network that was never ensured.
        let mut b = slot();
        b.id = "b".into();
        assert!(matches!(
            net.ensure_mesh(&b, &mesh(vec![])),
            Err(Error::NoSuchNetwork(_))
        ));
        assert_eq!(k.calls(), Vec::<String>::new());
    }

    #[test]
    fn the_private_key_is_not_printed() {
        let m = mesh(vec![]);
        assert!(!format!("{m:?}").contains("17"), "{m:?}");
        let d = WgDevice {
            private_key: Some([0x11; 32]),
            ..WgDevice::default()
        };
        assert!(format!("{d:?}").contains("<secret>"));
        assert!(!format!("{d:?}").contains("17"));
    }
}
