//! A recording fake of the [`Kernel`] seam, for unit tests without root.
//!
//! It keeps a small model of what the kernel would hold (namespaces, links with their
//! index, state, bridge and veth peer, IPv4 addresses, default routes, sysctls, nft
//! tables as the scripts that made them) so that `Network`'s convergence logic runs
//! against it as against the kernel: a second `ensure` finds what the first made.
//! Every call that would change the kernel is recorded, in order, as one line
//! `<namespace> <what>` ([`FakeKernel::calls`]); reads are not recorded. It checks
//! nothing the kernel would refuse beyond duplicate names: the real kernel's answers
//! are the kernel tests' business (tests/kernel.rs, tests/egress.rs).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::kernel::{label_of, Kernel, Link, Ns, Session};
use crate::mesh::{MeshPeer, WgDevice, WgPeer};
use crate::subnet::Ipv4Subnet;

/// The label of the calling thread's namespace (`open_ns(None)`).
pub const CURRENT: &str = "current";

#[derive(Clone, Debug)]
struct FakeLink {
    link: Link,
    /// The other end of a veth: (namespace label, link name).
    peer: Option<(String, String)>,
}

#[derive(Debug, Default)]
struct FakeNs {
    links: Vec<FakeLink>,
    addrs: Vec<(u32, Ipv4Addr, u8)>,
    default_route: Option<(Ipv4Addr, u32)>,
    sysctls: BTreeMap<String, String>,
    /// `(family, name)` -> the table's body as applied.
    tables: BTreeMap<(String, String), String>,
    /// `(family, table, set)` -> its port elements, sorted.
    sets: BTreeMap<(String, String, String), Vec<u16>>,
    /// WireGuard devices by link index.
    wg: BTreeMap<u32, WgDevice>,
    /// `(destination, link index)` of the routes other than the default one.
    routes: Vec<(Ipv4Subnet, u32)>,
}

#[derive(Debug, Default)]
struct State {
    /// Namespace label -> its objects. `current` always exists.
    namespaces: BTreeMap<String, FakeNs>,
    /// Namespace files (run dir + name) that exist.
    files: BTreeSet<PathBuf>,
    /// Namespace label -> the user namespace file that owns it (when not the node's).
    owners: BTreeMap<String, PathBuf>,
    next_index: u32,
    calls: Vec<String>,
    /// Whether the "kernel" has WireGuard.
    wireguard: bool,
    /// The next listen port a WireGuard link gets when it first goes up.
    next_port: u16,
}

impl State {
    fn ns(&mut self, label: &str) -> Result<&mut FakeNs> {
        self.namespaces.get_mut(label).ok_or_else(|| {
            Error::io(
                format!("fake: namespace {label} does not exist"),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
    }

    fn add_link(&mut self, ns: &str, name: &str, kind: Option<&str>) -> Result<u32> {
        self.next_index += 1;
        let index = self.next_index;
        let n = self.ns(ns)?;
        if n.links.iter().any(|l| l.link.name == name) {
            return Err(Error::io(
                format!("fake: link {name} exists in {ns}"),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        n.links.push(FakeLink {
            link: Link {
                index,
                name: name.into(),
                kind: kind.map(str::to_owned),
                controller: None,
                up: false,
            },
            peer: None,
        });
        Ok(index)
    }

    fn link_mut(&mut self, ns: &str, index: u32) -> Result<&mut FakeLink> {
        self.ns(ns)?
            .links
            .iter_mut()
            .find(|l| l.link.index == index)
            .ok_or_else(|| {
                Error::io(
                    format!("fake: no link {index} in {ns}"),
                    std::io::Error::from(std::io::ErrorKind::NotFound),
                )
            })
    }

    fn name_of(&self, ns: &str, index: u32) -> String {
        self.namespaces
            .get(ns)
            .and_then(|n| n.links.iter().find(|l| l.link.index == index))
            .map(|l| l.link.name.clone())
            .unwrap_or_else(|| format!("#{index}"))
    }

    /// Remove link `name` of `ns` with its addresses (and, for a veth, its peer).
    fn drop_link(&mut self, ns: &str, name: &str) {
        let Some(n) = self.namespaces.get_mut(ns) else {
            return;
        };
        let Some(pos) = n.links.iter().position(|l| l.link.name == name) else {
            return;
        };
        let gone = n.links.remove(pos);
        n.addrs.retain(|(i, _, _)| *i != gone.link.index);
        n.wg.remove(&gone.link.index);
        n.routes.retain(|(_, i)| *i != gone.link.index);
        if n.default_route.is_some_and(|(_, i)| i == gone.link.index) {
            n.default_route = None;
        }
        if let Some((pns, pname)) = gone.peer {
            self.drop_link(&pns, &pname);
        }
    }
}

/// The recording fake. Share it (`Arc`) between the `Network` under test and the test.
#[derive(Debug, Default)]
pub struct FakeKernel {
    state: Mutex<State>,
}

impl FakeKernel {
    /// A kernel with only the calling thread's namespace (`current`), empty.
    pub fn new() -> FakeKernel {
        let k = FakeKernel::default();
        k.lock()
            .namespaces
            .insert(CURRENT.into(), FakeNs::default());
        k
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Set-up, not recorded: whether this kernel has WireGuard (not by default, as
    /// on the host that runs the tests).
    pub fn set_wireguard(&self, available: bool) {
        let mut s = self.lock();
        s.wireguard = available;
        if s.next_port == 0 {
            s.next_port = 51820;
        }
    }

    /// The fake's public key of a private key (not X25519: every byte inverted).
    pub fn public_key(private_key: &[u8; 32]) -> [u8; 32] {
        private_key.map(|b| !b)
    }

    /// The WireGuard device of link `name` in namespace `ns`.
    pub fn wg_device(&self, ns: &str, name: &str) -> Option<WgDevice> {
        let s = self.lock();
        let n = s.namespaces.get(ns)?;
        let l = n.links.iter().find(|l| l.link.name == name)?;
        n.wg.get(&l.link.index).cloned()
    }

    /// Test action, not recorded: traffic with peer `public_key` of link `name` in
    /// `ns` (a handshake now, bytes both ways), as the kernel would count it.
    pub fn wg_traffic(&self, ns: &str, name: &str, public_key: &[u8; 32], rx: u64, tx: u64) {
        let mut s = self.lock();
        let Some(n) = s.namespaces.get_mut(ns) else {
            return;
        };
        let Some(index) = n
            .links
            .iter()
            .find(|l| l.link.name == name)
            .map(|l| l.link.index)
        else {
            return;
        };
        if let Some(p) =
            n.wg.get_mut(&index)
                .and_then(|d| d.peers.iter_mut().find(|p| p.public_key == *public_key))
        {
            p.last_handshake = Some(std::time::SystemTime::now());
            p.rx_bytes += rx;
            p.tx_bytes += tx;
        }
    }

    /// `(destination, link name)` of the non-default routes of namespace `ns`.
    pub fn routes(&self, ns: &str) -> Vec<(String, String)> {
        let s = self.lock();
        let Some(n) = s.namespaces.get(ns) else {
            return Vec::new();
        };
        n.routes
            .iter()
            .map(|(d, i)| (d.to_string(), s.name_of(ns, *i)))
            .collect()
    }

    /// The elements of set `family table set` in namespace `ns`, if it exists.
    pub fn set(&self, ns: &str, family: &str, table: &str, set: &str) -> Option<Vec<u16>> {
        self.lock()
            .namespaces
            .get(ns)?
            .sets
            .get(&(family.into(), table.into(), set.into()))
            .cloned()
    }

    /// Set-up, not recorded: a namespace file at `path` (e.g. the node's).
    pub fn add_namespace(&self, path: &Path) {
        let mut s = self.lock();
        s.files.insert(path.to_path_buf());
        s.namespaces.entry(label_of(path)).or_default();
    }

    /// Set-up, not recorded: an up link `name` (an uplink) in namespace `ns`.
    pub fn add_uplink(&self, ns: &str, name: &str) {
        let mut s = self.lock();
        let index = s.add_link(ns, name, None).expect("fake: set-up link");
        s.link_mut(ns, index).expect("just added").link.up = true;
    }

    /// The changing calls made so far, in order, as `<namespace> <what>` lines.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// The recorded calls, emptying the record.
    pub fn take_calls(&self) -> Vec<String> {
        std::mem::take(&mut self.lock().calls)
    }

    /// Labels of the namespaces that exist (`current` included).
    pub fn namespaces(&self) -> Vec<String> {
        self.lock().namespaces.keys().cloned().collect()
    }

    /// The links of namespace `ns`.
    pub fn links(&self, ns: &str) -> Vec<Link> {
        self.lock()
            .namespaces
            .get(ns)
            .map(|n| n.links.iter().map(|l| l.link.clone()).collect())
            .unwrap_or_default()
    }

    /// `name/prefix` of every IPv4 address of namespace `ns`, by link name.
    pub fn addrs(&self, ns: &str) -> Vec<(String, String)> {
        let s = self.lock();
        let Some(n) = s.namespaces.get(ns) else {
            return Vec::new();
        };
        n.addrs
            .iter()
            .map(|(i, ip, p)| (s.name_of(ns, *i), format!("{ip}/{p}")))
            .collect()
    }

    /// The body of nft table `family name` in namespace `ns`, as applied.
    pub fn table(&self, ns: &str, family: &str, name: &str) -> Option<String> {
        self.lock()
            .namespaces
            .get(ns)?
            .tables
            .get(&(family.to_string(), name.to_string()))
            .cloned()
    }
}

impl Kernel for FakeKernel {
    fn open_ns(&self, path: Option<&Path>) -> Result<Ns> {
        let label = match path {
            None => CURRENT.to_string(),
            Some(p) => {
                if !self.lock().files.contains(p) {
                    return Err(Error::Netns {
                        path: p.to_path_buf(),
                        op: "open",
                        source: std::io::Error::from(std::io::ErrorKind::NotFound),
                    });
                }
                label_of(p)
            }
        };
        Ok(Ns::labelled(label))
    }

    fn create_ns(&self, run_dir: &Path, name: &str, owner: Option<&Path>) -> Result<bool> {
        let path = run_dir.join(name);
        let mut s = self.lock();
        if s.files.contains(&path) {
            return Ok(false);
        }
        s.files.insert(path);
        if let Some(owner) = owner {
            s.owners.insert(name.into(), owner.to_path_buf());
        }
        s.namespaces.insert(name.into(), FakeNs::default());
        // A new namespace has its loopback, down.
        s.add_link(name, "lo", None)?;
        s.calls.push(format!("{name} netns create"));
        Ok(true)
    }

    fn remove_ns(&self, run_dir: &Path, name: &str) -> Result<bool> {
        let path = run_dir.join(name);
        let mut s = self.lock();
        if !s.files.remove(&path) {
            return Ok(false);
        }
        // The kernel destroys the namespace's virtual links, and with a veth its peer.
        let names: Vec<String> = s.namespaces[name]
            .links
            .iter()
            .map(|l| l.link.name.clone())
            .collect();
        for n in names {
            s.drop_link(name, &n);
        }
        s.namespaces.remove(name);
        s.owners.remove(name);
        s.calls.push(format!("{name} netns remove"));
        Ok(true)
    }

    fn list_ns(&self, run_dir: &Path, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .lock()
            .files
            .iter()
            .filter(|p| p.parent() == Some(run_dir))
            .map(|p| label_of(p))
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    fn ns_exists(&self, path: &Path) -> bool {
        self.lock().files.contains(path)
    }

    fn ns_owned_by(&self, path: &Path, owner: &Path) -> Result<bool> {
        Ok(self
            .lock()
            .owners
            .get(&label_of(path))
            .map(PathBuf::as_path)
            == Some(owner))
    }

    fn enter(&self, ns: &Ns, f: &mut (dyn FnMut(&dyn Session) -> Result<()> + Send)) -> Result<()> {
        self.lock().ns(ns.label())?;
        f(&FakeSession {
            kernel: self,
            ns: ns.label().to_string(),
        })
    }
}

/// The first two bytes of a key in hex (how recorded calls name keys).
fn hex4(k: &[u8; 32]) -> String {
    format!("{:02x}{:02x}", k[0], k[1])
}

struct FakeSession<'a> {
    kernel: &'a FakeKernel,
    ns: String,
}

impl FakeSession<'_> {
    fn record(&self, s: &mut State, what: String) {
        s.calls.push(format!("{} {what}", self.ns));
    }
}

impl Session for FakeSession<'_> {
    fn link(&self, name: &str) -> Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    fn links(&self) -> Result<Vec<Link>> {
        let mut s = self.kernel.lock();
        Ok(s.ns(&self.ns)?
            .links
            .iter()
            .map(|l| l.link.clone())
            .collect())
    }

    fn add_bridge(&self, name: &str) -> Result<()> {
        let mut s = self.kernel.lock();
        s.add_link(&self.ns, name, Some("bridge"))?;
        self.record(&mut s, format!("link add {name} type bridge"));
        Ok(())
    }

    fn add_veth_into(&self, name: &str, peer: &str, ns: &Ns) -> Result<()> {
        let mut s = self.kernel.lock();
        s.ns(ns.label())?;
        let a = s.add_link(&self.ns, name, Some("veth"))?;
        let b = s.add_link(ns.label(), peer, Some("veth"))?;
        s.link_mut(&self.ns, a)?.peer = Some((ns.label().into(), peer.into()));
        s.link_mut(ns.label(), b)?.peer = Some((self.ns.clone(), name.into()));
        self.record(
            &mut s,
            format!("link add {name} type veth peer {peer} netns {}", ns.label()),
        );
        Ok(())
    }

    fn add_tap(&self, name: &str) -> Result<()> {
        let mut s = self.kernel.lock();
        s.add_link(&self.ns, name, Some("tun"))?;
        self.record(&mut s, format!("tuntap add {name} mode tap"));
        Ok(())
    }

    fn set_up(&self, index: u32) -> Result<()> {
        let mut s = self.kernel.lock();
        let l = s.link_mut(&self.ns, index)?;
        l.link.up = true;
        let name = l.link.name.clone();
        // A WireGuard link binds its port when it first goes up.
        let port = s.next_port;
        if let Some(d) = s.ns(&self.ns)?.wg.get_mut(&index) {
            if d.listen_port == 0 {
                d.listen_port = port;
                s.next_port += 1;
            }
        }
        self.record(&mut s, format!("link set {name} up"));
        Ok(())
    }

    fn set_controller(&self, index: u32, bridge: u32) -> Result<()> {
        let mut s = self.kernel.lock();
        let br = s.name_of(&self.ns, bridge);
        let l = s.link_mut(&self.ns, index)?;
        l.link.controller = Some(bridge);
        let name = l.link.name.clone();
        self.record(&mut s, format!("link set {name} master {br}"));
        Ok(())
    }

    fn del_link(&self, index: u32) -> Result<()> {
        let mut s = self.kernel.lock();
        let name = s.name_of(&self.ns, index);
        let ns = self.ns.clone();
        s.drop_link(&ns, &name);
        self.record(&mut s, format!("link del {name}"));
        Ok(())
    }

    fn addrs(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        let mut s = self.kernel.lock();
        Ok(s.ns(&self.ns)?
            .addrs
            .iter()
            .filter(|(i, _, _)| index.is_none_or(|x| x == *i))
            .copied()
            .collect())
    }

    fn ensure_only_addr(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        let mut s = self.kernel.lock();
        let name = s.name_of(&self.ns, index);
        let n = s.ns(&self.ns)?;
        let stale: Vec<(u32, Ipv4Addr, u8)> = n
            .addrs
            .iter()
            .filter(|a| a.0 == index && (a.1, a.2) != (ip, prefix))
            .copied()
            .collect();
        let present = n.addrs.contains(&(index, ip, prefix));
        n.addrs.retain(|a| !stale.contains(a));
        if !present {
            n.addrs.push((index, ip, prefix));
        }
        for (_, a, p) in stale {
            self.record(&mut s, format!("addr del {a}/{p} dev {name}"));
        }
        if !present {
            self.record(&mut s, format!("addr add {ip}/{prefix} dev {name}"));
        }
        Ok(())
    }

    fn default_route(&self, gw: Ipv4Addr, index: u32) -> Result<()> {
        let mut s = self.kernel.lock();
        let name = s.name_of(&self.ns, index);
        s.ns(&self.ns)?.default_route = Some((gw, index));
        self.record(&mut s, format!("route replace default via {gw} dev {name}"));
        Ok(())
    }

    fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let mut s = self.kernel.lock();
        s.ns(&self.ns)?.sysctls.insert(key.into(), value.into());
        self.record(&mut s, format!("sysctl {key}={value}"));
        Ok(())
    }

    /// Understands the scripts of [`crate::nft`], line by line as nft does: `delete
    /// table F N` lines drop a table, a `table F N {` block (not `{}`) becomes its new
    /// body once it closes, with its sets new and empty.
    fn nft_apply(&self, op: &str, script: &str) -> Result<()> {
        let mut s = self.kernel.lock();
        let n = s.ns(&self.ns)?;
        let mut body: Option<((String, String), String)> = None;
        let mut depth = 0usize;
        for line in script.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["create", "table", f, t]
                    if n.tables.contains_key(&(f.to_string(), t.to_string())) =>
                {
                    // The kernel refuses the whole transaction.
                    return Err(Error::Nft {
                        op: op.into(),
                        detail: format!("fake: table {f} {t} exists (File exists)"),
                    });
                }
                ["delete", "table", f, t] => {
                    n.tables.remove(&(f.to_string(), t.to_string()));
                    n.sets
                        .retain(|(sf, st, _), _| (sf.as_str(), st.as_str()) != (*f, *t));
                }
                ["flush", "set", f, t, set] => {
                    let key = (f.to_string(), t.to_string(), set.to_string());
                    match n.sets.get_mut(&key) {
                        Some(v) => v.clear(),
                        None => {
                            return Err(Error::Nft {
                                op: op.into(),
                                detail: format!("fake: no set {f} {t} {set}"),
                            })
                        }
                    }
                }
                ["add", "element", f, t, set, rest @ ..] => {
                    let key = (f.to_string(), t.to_string(), set.to_string());
                    let ports: Vec<u16> = rest
                        .iter()
                        .filter_map(|w| w.trim_end_matches(',').parse().ok())
                        .collect();
                    let v = n.sets.get_mut(&key).ok_or_else(|| Error::Nft {
                        op: op.into(),
                        detail: format!("fake: no set {f} {t} {set}"),
                    })?;
                    v.extend(ports);
                    v.sort_unstable();
                    v.dedup();
                }
                ["table", f, t, "{"] if body.is_none() => {
                    body = Some(((f.to_string(), t.to_string()), String::new()));
                }
                _ => {}
            }
            if let Some((_, b)) = &mut body {
                b.push_str(line);
                b.push('\n');
                depth += line.matches('{').count();
                depth = depth.saturating_sub(line.matches('}').count());
                if depth == 0 {
                    let (key, b) = body.take().expect("a body");
                    // Its `set NAME {` blocks: new, empty sets.
                    for line in b.lines() {
                        if let ["set", set, "{"] =
                            line.split_whitespace().collect::<Vec<_>>().as_slice()
                        {
                            n.sets.insert(
                                (key.0.clone(), key.1.clone(), set.to_string()),
                                Vec::new(),
                            );
                        }
                    }
                    n.tables.insert(key, b);
                }
            }
        }
        self.record(&mut s, format!("nft {op}"));
        Ok(())
    }

    fn nft_tables(&self) -> Result<Vec<(String, String)>> {
        let mut s = self.kernel.lock();
        Ok(s.ns(&self.ns)?.tables.keys().cloned().collect())
    }

    fn nft_delete_table(&self, op: &str, family: &str, table: &str) -> Result<bool> {
        let mut s = self.kernel.lock();
        let n = s.ns(&self.ns)?;
        let existed = n
            .tables
            .remove(&(family.to_string(), table.to_string()))
            .is_some();
        n.sets
            .retain(|(f, t, _), _| (f.as_str(), t.as_str()) != (family, table));
        self.record(&mut s, format!("nft {op}"));
        Ok(existed)
    }

    fn nft_set_ports(&self, family: &str, table: &str, set: &str) -> Result<Option<Vec<u16>>> {
        let mut s = self.kernel.lock();
        Ok(s.ns(&self.ns)?
            .sets
            .get(&(family.into(), table.into(), set.into()))
            .cloned())
    }

    fn wireguard_family(&self) -> Result<bool> {
        Ok(self.kernel.lock().wireguard)
    }

    fn add_wireguard_into(&self, name: &str, ns: &Ns) -> Result<()> {
        let mut s = self.kernel.lock();
        if !s.wireguard {
            return Err(Error::WireguardMissing);
        }
        let index = s.add_link(ns.label(), name, Some("wireguard"))?;
        s.ns(ns.label())?.wg.insert(index, WgDevice::default());
        self.record(
            &mut s,
            format!("link add {name} type wireguard netns {}", ns.label()),
        );
        Ok(())
    }

    fn wg_get(&self, index: u32) -> Result<WgDevice> {
        let mut s = self.kernel.lock();
        if !s.wireguard {
            return Err(Error::WireguardMissing);
        }
        let ns = self.ns.clone();
        s.ns(&ns)?
            .wg
            .get(&index)
            .cloned()
            .ok_or_else(|| Error::Wireguard {
                op: format!("get device {index}"),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            })
    }

    /// Removes the `remove` peers, adds or updates `peers` (allowed IPs replaced); a
    /// peer updated keeps its counters and handshake, as in the kernel.
    fn wg_set(
        &self,
        index: u32,
        private_key: &[u8; 32],
        peers: &[MeshPeer],
        remove: &[[u8; 32]],
    ) -> Result<()> {
        let mut s = self.kernel.lock();
        if !s.wireguard {
            return Err(Error::WireguardMissing);
        }
        let name = s.name_of(&self.ns, index);
        let ns = self.ns.clone();
        let d = s
            .ns(&ns)?
            .wg
            .get_mut(&index)
            .ok_or_else(|| Error::Wireguard {
                op: format!("set device {index}"),
                source: std::io::Error::from_raw_os_error(libc::ENODEV),
            })?;
        d.private_key = Some(*private_key);
        d.public_key = Some(FakeKernel::public_key(private_key));
        d.peers.retain(|p| !remove.contains(&p.public_key));
        for p in peers {
            let pos = match d.peers.iter().position(|o| o.public_key == p.public_key) {
                Some(i) => i,
                None => {
                    d.peers.push(WgPeer {
                        public_key: p.public_key,
                        ..WgPeer::default()
                    });
                    d.peers.len() - 1
                }
            };
            let have = &mut d.peers[pos];
            if p.endpoint.is_some() {
                have.endpoint = p.endpoint;
            }
            have.allowed = vec![p.allowed];
            have.keepalive_s = p.keepalive_s.unwrap_or(0);
        }
        self.record(
            &mut s,
            format!(
                "wg set {name} key {} peers {} remove {}",
                hex4(&FakeKernel::public_key(private_key)),
                peers
                    .iter()
                    .map(|p| hex4(&p.public_key))
                    .collect::<Vec<_>>()
                    .join(","),
                remove.iter().map(hex4).collect::<Vec<_>>().join(",")
            ),
        );
        Ok(())
    }

    fn routes(&self, index: u32) -> Result<Vec<Ipv4Subnet>> {
        let mut s = self.kernel.lock();
        Ok(s.ns(&self.ns)?
            .routes
            .iter()
            .filter(|(_, i)| *i == index)
            .map(|(d, _)| *d)
            .collect())
    }

    fn route_replace(&self, dst: Ipv4Subnet, index: u32) -> Result<()> {
        let mut s = self.kernel.lock();
        let name = s.name_of(&self.ns, index);
        let n = s.ns(&self.ns)?;
        n.routes.retain(|(d, _)| *d != dst);
        n.routes.push((dst, index));
        self.record(&mut s, format!("route replace {dst} dev {name}"));
        Ok(())
    }

    fn route_del(&self, dst: Ipv4Subnet, index: u32) -> Result<()> {
        let mut s = self.kernel.lock();
        let name = s.name_of(&self.ns, index);
        s.ns(&self.ns)?.routes.retain(|r| *r != (dst, index));
        self.record(&mut s, format!("route del {dst} dev {name}"));
        Ok(())
    }

    /// `<proto> dport <port> dnat` in the `ip` tables' bodies.
    fn nft_forwarded_ports(&self) -> Result<Vec<(String, String, u16)>> {
        let mut s = self.kernel.lock();
        let mut found = Vec::new();
        for ((family, table), body) in &s.ns(&self.ns)?.tables {
            if family != "ip" {
                continue;
            }
            for line in body.lines().filter(|l| l.contains(" dnat ")) {
                let words: Vec<&str> = line.split_whitespace().collect();
                if let Some(i) = words.iter().position(|w| *w == "dport") {
                    if let (Some(proto), Some(Ok(port))) = (
                        i.checked_sub(1).map(|p| words[p]),
                        words.get(i + 1).map(|p| p.parse::<u16>()),
                    ) {
                        found.push((table.clone(), proto.to_string(), port));
                    }
                }
            }
        }
        Ok(found)
    }
}
