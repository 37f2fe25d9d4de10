//! `Network`: ensure / remove / attach / detach / list, converging the kernel to
//! what a contract says. Every step first looks at what exists, so running an
//! operation twice is a no-op and a half-done operation (a crash) is completed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::kernel::{within, Kernel, Link, Ns, RealKernel, Session};
use crate::laps::Laps;
use crate::model::{EgressPolicy, NetworkConfig, TenantNetwork, TenantPort, WorkloadAttachment};
use crate::names::{self, BRIDGE, TENANT_TABLE, TRANSIT, WORKLOAD_IF};
use crate::netns;
use crate::nft;
use crate::subnet::Ipv4Subnet;

/// What exists in the kernel under our prefix, for garbage collection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkInventory {
    /// Network ids that have a tenant namespace.
    pub tenant_namespaces: BTreeSet<String>,
    /// Workload namespace names (`<prefix><net>-<workload>` and the like).
    pub workload_namespaces: BTreeSet<String>,
    /// Network ids with a transit link in the node namespace.
    pub node_links: BTreeSet<String>,
    /// Network ids with an nft table in the node namespace.
    pub node_tables: BTreeSet<String>,
    /// Whether our host firewall table is installed.
    pub host_table: bool,
    /// Bridge ports (`w-<workload>` veths and taps) per tenant namespace.
    pub ports: BTreeMap<String, Vec<String>>,
}

impl NetworkInventory {
    /// Every network id that has at least one kernel object.
    pub fn networks(&self) -> BTreeSet<String> {
        let mut s = self.tenant_namespaces.clone();
        s.extend(self.node_links.iter().cloned());
        s.extend(self.node_tables.iter().cloned());
        s
    }

    /// Network ids present in the kernel but not in `wanted`: what to `remove`.
    pub fn orphans<'a>(&self, wanted: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let wanted: BTreeSet<&str> = wanted.into_iter().collect();
        self.networks()
            .into_iter()
            .filter(|n| !wanted.contains(n.as_str()))
            .collect()
    }

    /// True when nothing of ours exists.
    pub fn is_empty(&self) -> bool {
        self.networks().is_empty() && self.workload_namespaces.is_empty() && !self.host_table
    }
}

/// The tenant networks of this node: ensures, removes, attaches and detaches them in
/// the kernel, idempotently (the kernel is the state: each step looks at what exists
/// first). Shared between threads; changes are serialised.
pub struct Network {
    pub(crate) cfg: NetworkConfig,
    /// Every namespace, netlink and nft call goes through it (the seam).
    pub(crate) kernel: Arc<dyn Kernel>,
    /// Serialises changes: the transit slot allocation reads then writes the kernel.
    lock: Mutex<()>,
}

/// The two ends of a tenant's transit /30: (node side, tenant side).
fn transit_pair(range: Ipv4Subnet, slot: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(range.addr()) + slot * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

fn slot_of(range: Ipv4Subnet, ip: Ipv4Addr) -> u32 {
    (u32::from(ip) - u32::from(range.addr())) / 4
}

impl Network {
    /// A `Network` on the real kernel; refuses a bad prefix, uplink name or transit
    /// range.
    pub fn new(cfg: NetworkConfig) -> Result<Network> {
        Network::with_kernel(cfg, Arc::new(RealKernel))
    }

    /// A `Network` whose kernel calls go to `kernel` (a [`crate::fake::FakeKernel`]
    /// in unit tests).
    pub fn with_kernel(cfg: NetworkConfig, kernel: Arc<dyn Kernel>) -> Result<Network> {
        let p = &cfg.prefix;
        if p.len() > 12 || !p.ends_with('-') {
            return Err(Error::InvalidName {
                name: p.clone(),
                reason: "the prefix ends with '-' and is at most 12 bytes",
            });
        }
        names::ifname(p)?;
        names::ifname(&cfg.uplink)?;
        if cfg.transit.prefix() > 28 {
            return Err(Error::InvalidSubnet {
                subnet: cfg.transit.to_string(),
                reason: "the transit range must hold several /30s",
            });
        }
        Ok(Network {
            cfg,
            kernel,
            lock: Mutex::new(()),
        })
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    /// The tenant namespace name of network `id`.
    pub fn tenant_netns(&self, id: &str) -> String {
        format!("{}{id}", self.cfg.prefix)
    }

    /// The conventional workload namespace name (removed with its network).
    pub fn workload_netns(&self, net: &str, workload: &str) -> String {
        format!("{}{net}-{workload}", self.cfg.prefix)
    }

    /// Path of a namespace file under the run dir.
    pub fn netns_path(&self, name: &str) -> PathBuf {
        netns::path(&self.cfg.run_dir, name)
    }

    fn node_link(&self, id: &str) -> String {
        format!("{}{id}", self.cfg.prefix)
    }

    pub(crate) fn host_table(&self) -> String {
        names::nft_table(&self.cfg.prefix, "host")
    }

    fn node_table(&self, id: &str) -> String {
        names::nft_table(&self.cfg.prefix, id)
    }

    pub(crate) fn node_ns(&self) -> Result<Ns> {
        self.kernel.open_ns(self.cfg.node_netns.as_deref())
    }

    /// Run `f` inside `ns` through the kernel seam.
    pub(crate) fn within<R: Send>(
        &self,
        ns: &Ns,
        f: impl FnOnce(&dyn Session) -> Result<R> + Send,
    ) -> Result<R> {
        within(self.kernel.as_ref(), ns, f)
    }

    pub(crate) fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves the kernel, not this unit, in some
        // state; the next call re-reads the kernel anyway.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node side: forwarding on, and our host firewall (input dropped except
    /// established/related and UDP to our WireGuard links' ports, forwarding only
    /// tenant -> uplink and opened ports, masquerade of the transit range on the
    /// uplink). Idempotent: the table is made again, and its `wireguard` set filled
    /// again with the ports of the WireGuard links that exist, in the same transaction
    /// (one `nft` run: at boot, under emulation, each one is a good part of a second).
    pub fn ensure_node(&self) -> Result<()> {
        let _g = self.guard();
        let node = self.node_ns()?;
        let table = self.host_table();
        let body = nft::host_table(
            &table,
            &format!("{}*", self.cfg.prefix),
            &self.cfg.uplink,
            self.cfg.transit,
        );
        let ports = self.mesh_ports()?;
        let script = nft::replace_script("inet", &table, &body)
            + &nft::set_ports_script("inet", &table, nft::WIREGUARD_SET, &ports);
        self.within(&node, |nl| {
            if nl.link(&self.cfg.uplink)?.is_none() {
                return Err(Error::NoUplink(self.cfg.uplink.clone()));
            }
            nl.sysctl("net.ipv4.ip_forward", "1")?;
            nl.nft_apply("host table", &script)
        })?;
        tracing::info!(uplink = %self.cfg.uplink, table, "node firewall ensured");
        Ok(())
    }

    /// Remove our host firewall table (forwarding stays as it is).
    pub fn remove_node(&self) -> Result<()> {
        let _g = self.guard();
        let table = self.host_table();
        self.within(&self.node_ns()?, |nl| {
            nl.nft_apply("delete host table", &nft::delete_script("inet", &table))
        })
    }

    /// Pick (or find again) the transit slot of network `id` in the node namespace.
    /// Returns the slot and whether the node end of the transit veth exists.
    fn transit_slot(&self, node: &Ns, id: &str) -> Result<(u32, bool)> {
        let range = self.cfg.transit;
        let link_name = self.node_link(id);
        self.within(node, |nl| {
            let link = nl.link(&link_name)?;
            let addrs = nl.addrs(None)?;
            if let Some(l) = &link {
                if let Some((_, ip, _)) = addrs
                    .iter()
                    .find(|(i, ip, p)| *i == l.index && *p == 30 && range.contains(*ip))
                {
                    return Ok((slot_of(range, *ip), true));
                }
            }
            let used: BTreeSet<u32> = addrs
                .iter()
                .filter(|(_, ip, _)| range.contains(*ip))
                .map(|(_, ip, _)| slot_of(range, *ip))
                .collect();
            let slots = 1u32 << (32 - range.prefix() - 2);
            let free = (0..slots)
                .find(|s| !used.contains(s))
                .ok_or(Error::ExhaustedTransit { range })?;
            Ok((free, link.is_some()))
        })
    }

    /// Refuse a public port that another of our networks already forwards (the
    /// first matching DNAT would win silently: one tenant could take another's port).
    fn check_ports_free(&self, node: &Ns, net: &TenantNetwork) -> Result<()> {
        if net.ports.is_empty() {
            return Ok(());
        }
        let mine = self.node_table(&net.id);
        let prefix = names::nft_table(&self.cfg.prefix, "");
        let taken = self.within(node, |nl| nl.nft_forwarded_ports())?;
        for p in &net.ports {
            let clash = taken.iter().find(|(t, proto, port)| {
                *t != mine
                    && t.starts_with(&prefix)
                    && proto == p.proto.as_str()
                    && *port == p.public_port
            });
            if let Some((t, _, _)) = clash {
                return Err(Error::PortInUse {
                    proto: p.proto.as_str(),
                    port: p.public_port,
                    other: t[prefix.len()..].to_string(),
                });
            }
        }
        Ok(())
    }

    /// Create or converge tenant network `net`, its workloads reaching the internet
    /// only (no egress opened). Running it twice is a no-op.
    pub fn ensure(&self, net: &TenantNetwork) -> Result<()> {
        self.ensure_with(net, &EgressPolicy::default())
    }

    /// Create or converge tenant network `net` with what its contract opens beyond
    /// the internet (`egress.allow`). Running it twice is a no-op; running it with
    /// another policy replaces the rules.
    pub fn ensure_with(&self, net: &TenantNetwork, egress: &EgressPolicy) -> Result<()> {
        net.validate(&self.cfg.prefix)?;
        let _g = self.guard();
        let mut laps = Laps::start();
        let node = self.node_ns()?;
        self.check_ports_free(&node, net)?;
        laps.lap("ports_free");
        // The slot first: a refusal (ExhaustedTransit) must create nothing.
        let (slot, node_link_exists) = self.transit_slot(&node, &net.id)?;
        laps.lap("transit_slot");
        let (node_ip, tenant_ip) = transit_pair(self.cfg.transit, slot);
        let ns_name = self.tenant_netns(&net.id);
        let created = self.kernel.create_ns(&self.cfg.run_dir, &ns_name, None)?;
        let tenant = self.kernel.open_ns(Some(&self.netns_path(&ns_name)))?;
        laps.lap("netns");
        let link_name = self.node_link(&net.id);

        // Tenant side: loopback, forwarding, bridge with the gateway; and, when its
        // node end is missing, the transit pair, in the same session (one thread,
        // one netlink socket).
        let pub0_exists = self.within(&tenant, |nl| {
            if let Some(lo) = nl.link("lo")? {
                if !lo.up {
                    nl.set_up(lo.index)?;
                }
            }
            nl.sysctl("net.ipv4.ip_forward", "1")?;
            let br = ensure_link(nl, BRIDGE, || nl.add_bridge(BRIDGE))?;
            nl.ensure_only_addr(br.index, net.gateway, net.subnet.prefix())?;
            if !br.up {
                nl.set_up(br.index)?;
            }
            let pub0 = nl.link(TRANSIT)?;
            if !node_link_exists {
                make_transit_pair(nl, pub0.as_ref(), &link_name, &node)?;
            }
            Ok(pub0.is_some())
        })?;
        if node_link_exists && !pub0_exists {
            // The tenant end was lost: the node end goes too, and the pair is made
            // again, its node end created directly in the node namespace under our
            // prefixed name.
            self.within(&node, |nl| match nl.link(&link_name)? {
                Some(l) => nl.del_link(l.index),
                None => Ok(()),
            })?;
            self.within(&tenant, |nl| {
                make_transit_pair(nl, nl.link(TRANSIT)?.as_ref(), &link_name, &node)
            })?;
        }
        laps.lap("bridge_and_transit_veth");

        // Node side: the transit address, up, the tenant's port forwards.
        let node_table = self.node_table(&net.id);
        let node_rules = nft::node_tenant_table(
            &node_table,
            &self.cfg.uplink,
            &link_name,
            tenant_ip,
            &net.ports,
            &self.cfg.egress_deny,
            &egress.allow,
        );
        self.within(&node, |nl| {
            let l = nl.link(&link_name)?.ok_or_else(|| gone(&link_name))?;
            nl.ensure_only_addr(l.index, node_ip, 30)?;
            if !l.up {
                nl.set_up(l.index)?;
            }
            // Without its transit link the network is new (or was half removed):
            // its table is most likely absent too.
            apply_table(
                nl,
                "node tenant table",
                ("ip", &node_table),
                &node_rules,
                !node_link_exists,
            )
        })?;
        laps.lap("node_side");

        // Tenant side again: transit address, default route to the node, rules.
        let rules = nft::tenant_table(
            TENANT_TABLE,
            net.subnet,
            &net.ports,
            &self.cfg.egress_deny,
            &egress.allow,
        );
        self.within(&tenant, |nl| {
            let p = nl.link(TRANSIT)?.ok_or_else(|| gone(TRANSIT))?;
            nl.ensure_only_addr(p.index, tenant_ip, 30)?;
            if !p.up {
                nl.set_up(p.index)?;
            }
            nl.default_route(node_ip, p.index)?;
            // A namespace made just now has no table at all.
            apply_table(nl, "tenant table", ("inet", TENANT_TABLE), &rules, created)
        })?;
        laps.lap("tenant_side");
        laps.log("ensure", &net.id);
        tracing::info!(
            net = %net.id, subnet = %net.subnet, gateway = %net.gateway,
            transit = %tenant_ip, ports = net.ports.len(), created,
            egress_allow = ?egress.allow, "tenant network ensured"
        );
        Ok(())
    }

    /// Remove network `id`: its WireGuard link (and the node's input accept of its
    /// port), its node link, node nft table, its workload namespaces
    /// (`<prefix><id>-*`) and its namespace (which takes the bridge, ports, taps and
    /// tenant rules with it). Returns false if nothing existed.
    pub fn remove(&self, id: &str) -> Result<bool> {
        names::check_net_id(id)?;
        let _g = self.guard();
        let link_name = self.node_link(id);
        let table = self.node_table(id);
        let node = self.node_ns()?;
        let wg = self.remove_mesh_link(id)?;
        let mut existed = self.within(&node, |nl| {
            let mut existed = false;
            if let Some(l) = nl.link(&link_name)? {
                // Deleted here, synchronously: namespace teardown is asynchronous.
                nl.del_link(l.index)?;
                existed = true;
            }
            existed |= nl.nft_delete_table("delete node tenant table", "ip", &table)?;
            Ok(existed)
        })?;
        let workload_prefix = format!("{}{id}-", self.cfg.prefix);
        for ns in self.kernel.list_ns(&self.cfg.run_dir, &workload_prefix)? {
            existed |= self.kernel.remove_ns(&self.cfg.run_dir, &ns)?;
        }
        existed |= self
            .kernel
            .remove_ns(&self.cfg.run_dir, &self.tenant_netns(id))?;
        if wg {
            self.sync_wireguard_ports(&node)?;
        }
        existed |= wg;
        tracing::info!(net = id, existed, wireguard = wg, "tenant network removed");
        Ok(existed)
    }

    /// Attach a workload to network `net` (which must have been ensured).
    pub fn attach(&self, net: &TenantNetwork, wl: &TenantPort) -> Result<()> {
        net.validate(&self.cfg.prefix)?;
        names::check_workload_id(&wl.id)?;
        let _g = self.guard();
        let mut laps = Laps::start();
        let tenant_path = self.netns_path(&self.tenant_netns(&net.id));
        if !self.kernel.ns_exists(&tenant_path) {
            return Err(Error::NoSuchNetwork(net.id.clone()));
        }
        let tenant = self.kernel.open_ns(Some(&tenant_path))?;
        match &wl.attachment {
            WorkloadAttachment::Veth {
                netns: wns,
                ip,
                owner,
            } => {
                names::check_workload_netns(&self.cfg.prefix, wns)?;
                net.check_workload_ip(*ip)?;
                let port = names::port(&wl.id);
                let wpath = self.netns_path(wns);
                if let Some(owner) = owner {
                    if self.kernel.ns_exists(&wpath) && !self.kernel.ns_owned_by(&wpath, owner)? {
                        // Made before the workload had a user namespace (an older
                        // agent): its container could not join it. Made again.
                        tracing::warn!(netns = %wns, "workload namespace has another owner; made again");
                        self.within(&tenant, |nl| match nl.link(&port)? {
                            Some(l) => nl.del_link(l.index),
                            None => Ok(()),
                        })?;
                        self.kernel.remove_ns(&self.cfg.run_dir, wns)?;
                    }
                }
                self.kernel
                    .create_ns(&self.cfg.run_dir, wns, owner.as_deref())?;
                let wfd = self.kernel.open_ns(Some(&wpath))?;
                laps.lap("workload_netns");
                self.within(&tenant, |nl| {
                    let br = nl
                        .link(BRIDGE)?
                        .ok_or_else(|| Error::NoSuchNetwork(net.id.clone()))?;
                    if nl.link(&port)?.is_none() {
                        // The workload end is born as eth0 inside the workload
                        // namespace: one request, nothing half made to clean up.
                        nl.add_veth_into(&port, WORKLOAD_IF, &wfd)?;
                    }
                    let p = nl.link(&port)?.ok_or_else(|| gone(&port))?;
                    enslave(nl, &p, br.index)
                })?;
                laps.lap("port_veth");
                self.within(&wfd, |nl| {
                    if let Some(lo) = nl.link("lo")? {
                        if !lo.up {
                            nl.set_up(lo.index)?;
                        }
                    }
                    let e = nl.link(WORKLOAD_IF)?.ok_or_else(|| gone(WORKLOAD_IF))?;
                    nl.ensure_only_addr(e.index, *ip, net.subnet.prefix())?;
                    if !e.up {
                        nl.set_up(e.index)?;
                    }
                    nl.default_route(net.gateway, e.index)
                })?;
                laps.lap("workload_side");
                laps.log("attach", &wl.id);
                tracing::info!(net = %net.id, workload = %wl.id, netns = %wns, %ip, "veth attached");
            }
            WorkloadAttachment::Tap { name } => {
                names::check_tap(name)?;
                self.within(&tenant, |nl| {
                    let br = nl
                        .link(BRIDGE)?
                        .ok_or_else(|| Error::NoSuchNetwork(net.id.clone()))?;
                    let t = ensure_link(nl, name, || nl.add_tap(name))?;
                    enslave(nl, &t, br.index)
                })?;
                tracing::info!(net = %net.id, workload = %wl.id, tap = %name, "tap attached");
            }
        }
        Ok(())
    }

    /// Detach a workload: its bridge port or tap, and (veth) its namespace.
    /// Returns false if nothing existed.
    pub fn detach(&self, net_id: &str, wl: &TenantPort) -> Result<bool> {
        names::check_net_id(net_id)?;
        names::check_workload_id(&wl.id)?;
        let _g = self.guard();
        let tenant_path = self.netns_path(&self.tenant_netns(net_id));
        let name = match &wl.attachment {
            WorkloadAttachment::Veth { netns: wns, .. } => {
                names::check_workload_netns(&self.cfg.prefix, wns)?;
                names::port(&wl.id)
            }
            WorkloadAttachment::Tap { name } => {
                names::check_tap(name)?;
                name.clone()
            }
        };
        let mut existed = false;
        if self.kernel.ns_exists(&tenant_path) {
            let tenant = self.kernel.open_ns(Some(&tenant_path))?;
            existed = self.within(&tenant, |nl| match nl.link(&name)? {
                Some(l) => nl.del_link(l.index).map(|_| true),
                None => Ok(false),
            })?;
        }
        if let WorkloadAttachment::Veth { netns: wns, .. } = &wl.attachment {
            existed |= self.kernel.remove_ns(&self.cfg.run_dir, wns)?;
        }
        tracing::info!(net = net_id, workload = %wl.id, existed, "workload detached");
        Ok(existed)
    }

    /// The namespaces under our prefix, from one read of the namespace directory:
    /// an inventory with only [`NetworkInventory::tenant_namespaces`] and
    /// [`NetworkInventory::workload_namespaces`] filled. What a workload's removal
    /// needs; [`Network::list`] adds what asking each namespace finds.
    pub fn namespaces(&self) -> Result<NetworkInventory> {
        let p = &self.cfg.prefix;
        let mut inv = NetworkInventory::default();
        for ns in self.kernel.list_ns(&self.cfg.run_dir, p)? {
            let rest = &ns[p.len()..];
            if rest.contains('-') {
                inv.workload_namespaces.insert(ns);
            } else {
                inv.tenant_namespaces.insert(rest.to_string());
            }
        }
        Ok(inv)
    }

    /// The networks on which workload `workload` has a namespace of its own
    /// (`<prefix><net>-<workload>`), by name from [`Network::namespaces`].
    pub fn veth_networks_of(&self, names: &NetworkInventory, workload: &str) -> Vec<String> {
        let suffix = format!("-{workload}");
        names
            .workload_namespaces
            .iter()
            .filter_map(|ns| {
                ns.strip_prefix(self.cfg.prefix.as_str())?
                    .strip_suffix(&suffix)
            })
            .filter(|net| !net.is_empty() && !net.contains('-'))
            .map(str::to_string)
            .collect()
    }

    /// What exists in the kernel under our prefix.
    pub fn list(&self) -> Result<NetworkInventory> {
        let p = &self.cfg.prefix;
        let mut inv = self.namespaces()?;
        let table_prefix = names::nft_table(p, "");
        let host = self.host_table();
        self.within(&self.node_ns()?, |nl| {
            for l in nl.links()? {
                if let Some(id) = l.name.strip_prefix(p.as_str()) {
                    if l.kind.as_deref() == Some("veth") {
                        inv.node_links.insert(id.to_string());
                    }
                }
            }
            for (f, n) in nl.nft_tables()? {
                if f == "inet" && n == host {
                    inv.host_table = true;
                } else if f == "ip" {
                    if let Some(id) = n.strip_prefix(&table_prefix) {
                        inv.node_tables.insert(id.to_string());
                    }
                }
            }
            Ok(())
        })?;
        for id in inv.tenant_namespaces.clone() {
            let path = self.netns_path(&self.tenant_netns(&id));
            let ns = self.kernel.open_ns(Some(&path))?;
            let ports = self.within(&ns, |nl| {
                let links = nl.links()?;
                let Some(br) = links.iter().find(|l| l.name == BRIDGE) else {
                    return Ok(Vec::new());
                };
                let mut ports: Vec<String> = links
                    .iter()
                    .filter(|l| l.controller == Some(br.index) && l.name != TRANSIT)
                    .map(|l| l.name.clone())
                    .collect();
                ports.sort();
                Ok(ports)
            })?;
            inv.ports.insert(id, ports);
        }
        Ok(inv)
    }
}

fn gone(name: &str) -> Error {
    Error::io(
        format!("link {name} vanished while being configured"),
        std::io::Error::from(std::io::ErrorKind::NotFound),
    )
}

/// Make table `family name` exactly `body`, in one transaction. When the table is
/// `likely_new`, it is created without the delete that a replacement needs (see
/// [`nft::create_script`]: that delete costs a grace period); if it existed after
/// all, the kernel refused that transaction whole and the table is replaced.
fn apply_table(
    nl: &dyn Session,
    op: &str,
    (family, name): (&str, &str),
    body: &str,
    likely_new: bool,
) -> Result<()> {
    if likely_new {
        match nl.nft_apply(op, &nft::create_script(family, name, body)) {
            Ok(()) => return Ok(()),
            Err(e) => tracing::debug!(table = name, error = %e, "table not new; replaced"),
        }
    }
    nl.nft_apply(op, &nft::replace_script(family, name, body))
}

/// The transit veth pair: `pub0` here (replacing `stale`, a tenant end without its
/// node end), its peer `node_name` born directly inside the node namespace.
fn make_transit_pair(
    nl: &dyn Session,
    stale: Option<&Link>,
    node_name: &str,
    node: &Ns,
) -> Result<()> {
    if let Some(l) = stale {
        nl.del_link(l.index)?;
    }
    nl.add_veth_into(TRANSIT, node_name, node)
}

/// The link `name`, created by `make` if it does not exist yet.
fn ensure_link(nl: &dyn Session, name: &str, make: impl FnOnce() -> Result<()>) -> Result<Link> {
    if let Some(l) = nl.link(name)? {
        return Ok(l);
    }
    make()?;
    nl.link(name)?.ok_or_else(|| gone(name))
}

/// Make `l` an up port of bridge `br`.
fn enslave(nl: &dyn Session, l: &Link, br: u32) -> Result<()> {
    if l.controller != Some(br) {
        nl.set_controller(l.index, br)?;
    }
    if !l.up {
        nl.set_up(l.index)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transit_slots() {
        let r: Ipv4Subnet = "100.127.0.0/16".parse().unwrap();
        assert_eq!(
            transit_pair(r, 0),
            (
                "100.127.0.1".parse().unwrap(),
                "100.127.0.2".parse().unwrap()
            )
        );
        let (a, b) = transit_pair(r, 70);
        assert_eq!(slot_of(r, a), 70);
        assert_eq!(slot_of(r, b), 70);
    }

    use crate::fake::FakeKernel;
    use crate::model::{PortForward, Proto};
    use std::path::Path;

    const NODE: &str = "/run/fake-node/node";

    /// A `Network` over a recording fake: prefix `zt-`, the node namespace `node`
    /// with its uplink `up0`.
    fn fake_network() -> (Arc<FakeKernel>, Network) {
        let k = Arc::new(FakeKernel::new());
        k.add_namespace(Path::new(NODE));
        k.add_uplink("node", "up0");
        let mut c = NetworkConfig::new("up0");
        c.prefix = "zt-".into();
        c.run_dir = "/run/fake".into();
        c.node_netns = Some(NODE.into());
        let net = Network::with_kernel(c, k.clone()).unwrap();
        (k, net)
    }

    fn tenant_a() -> TenantNetwork {
        TenantNetwork {
            id: "a".into(),
            subnet: "10.1.0.0/24".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            ports: vec![PortForward {
                proto: Proto::Tcp,
                public_port: 8080,
                workload_ip: "10.1.0.2".parse().unwrap(),
                port: 80,
            }],
        }
    }

    #[test]
    fn ensure_makes_these_calls_and_the_second_one_only_rewrites() {
        let (k, net) = fake_network();
        net.ensure_node().unwrap();
        assert_eq!(
            k.take_calls(),
            ["node sysctl net.ipv4.ip_forward=1", "node nft host table"]
        );
        let a = tenant_a();
        let lan = EgressPolicy {
            allow: vec!["192.168.77.0/24".parse().unwrap()],
        };
        net.ensure_with(&a, &lan).unwrap();
        assert_eq!(
            k.take_calls(),
            [
                "zt-a netns create",
                "zt-a link set lo up",
                "zt-a sysctl net.ipv4.ip_forward=1",
                "zt-a link add br0 type bridge",
                "zt-a addr add 10.1.0.1/24 dev br0",
                "zt-a link set br0 up",
                "zt-a link add pub0 type veth peer zt-a netns node",
                "node addr add 100.127.0.1/30 dev zt-a",
                "node link set zt-a up",
                "node nft node tenant table",
                "zt-a addr add 100.127.0.2/30 dev pub0",
                "zt-a link set pub0 up",
                "zt-a route replace default via 100.127.0.1 dev pub0",
                "zt-a nft tenant table",
            ]
        );
        let allow = "ip daddr { 192.168.77.0/24 } accept";
        let node_table = k.table("node", "ip", "zt_a").expect("node table");
        let tenant_table = k.table("zt-a", "inet", TENANT_TABLE).expect("tenant table");
        assert!(node_table.contains("tcp dport 8080 dnat to 100.127.0.2"));
        assert!(node_table.contains(allow), "{node_table}");
        assert!(tenant_table.contains(allow), "{tenant_table}");
        assert!(tenant_table.contains(nft::EGRESS_DENY_COMMENT));

        // Again: nothing created, only what is always rewritten.
        net.ensure_with(&a, &lan).unwrap();
        assert_eq!(
            k.take_calls(),
            [
                "zt-a sysctl net.ipv4.ip_forward=1",
                "node nft node tenant table",
                "zt-a route replace default via 100.127.0.1 dev pub0",
                "zt-a nft tenant table",
            ]
        );
        // Without the policy: both walls close the range again.
        net.ensure(&a).unwrap();
        let node_table = k.table("node", "ip", "zt_a").unwrap();
        let tenant_table = k.table("zt-a", "inet", TENANT_TABLE).unwrap();
        assert!(!node_table.contains("192.168.77.0/24"), "{node_table}");
        assert!(!tenant_table.contains("192.168.77.0/24"), "{tenant_table}");
        assert!(node_table.contains(nft::EGRESS_DENY_COMMENT));
    }

    #[test]
    fn a_workloads_veth_networks_are_found_by_name_without_asking_any_namespace() {
        let (k, net) = fake_network();
        let a = tenant_a();
        let b = TenantNetwork {
            id: "b".into(),
            subnet: "10.2.0.0/24".parse().unwrap(),
            gateway: "10.2.0.1".parse().unwrap(),
            ports: vec![],
        };
        for (tenant, wl, ip) in [
            (&a, "w1", "10.1.0.2"),
            (&b, "w1", "10.2.0.2"),
            (&a, "w11", "10.1.0.3"),
        ] {
            net.ensure(tenant).unwrap();
            let port = TenantPort {
                id: wl.into(),
                attachment: WorkloadAttachment::Veth {
                    netns: net.workload_netns(&tenant.id, wl),
                    ip: ip.parse().unwrap(),
                    owner: None,
                },
            };
            net.attach(tenant, &port).unwrap();
        }
        k.take_calls();
        let names = net.namespaces().unwrap();
        assert_eq!(
            k.take_calls(),
            Vec::<String>::new(),
            "one read of the directory"
        );
        assert_eq!(
            names.tenant_namespaces,
            ["a".to_string(), "b".into()].into()
        );
        assert_eq!(net.veth_networks_of(&names, "w1"), ["a", "b"]);
        assert_eq!(net.veth_networks_of(&names, "w11"), ["a"]);
        assert_eq!(net.veth_networks_of(&names, "1"), Vec::<String>::new());
        assert_eq!(net.veth_networks_of(&names, "w"), Vec::<String>::new());
    }

    #[test]
    fn a_lost_transit_end_is_made_again() {
        let (k, net) = fake_network();
        let a = tenant_a();
        net.ensure(&a).unwrap();
        // The node end vanishes (someone deleted it): the pair is made again.
        let node_ns = k.open_ns(Some(Path::new(NODE))).unwrap();
        crate::kernel::within(k.as_ref(), &node_ns, |s| {
            let l = s.link("zt-a")?.unwrap();
            s.del_link(l.index)
        })
        .unwrap();
        k.take_calls();
        net.ensure(&a).unwrap();
        let calls = k.take_calls();
        assert!(
            calls.contains(&"zt-a link add pub0 type veth peer zt-a netns node".to_string()),
            "{calls:#?}"
        );
        assert!(calls.contains(&"node addr add 100.127.0.1/30 dev zt-a".to_string()));
    }

    #[test]
    fn a_workload_namespace_of_another_owner_is_made_again_in_the_workloads() {
        let (k, net) = fake_network();
        net.ensure_node().unwrap();
        let a = tenant_a();
        net.ensure(&a).unwrap();
        let port = |owner: Option<&str>| TenantPort {
            id: "w1".into(),
            attachment: WorkloadAttachment::Veth {
                netns: net.workload_netns("a", "w1"),
                ip: "10.1.0.2".parse().unwrap(),
                owner: owner.map(PathBuf::from),
            },
        };
        // Made by an agent that gave workloads no user namespace.
        net.attach(&a, &port(None)).unwrap();
        k.take_calls();
        net.attach(&a, &port(Some("/run/zos/userns/w1"))).unwrap();
        let calls = k.take_calls();
        assert_eq!(
            calls[..3],
            [
                "zt-a link del w-w1",
                "zt-a-w1 netns remove",
                "zt-a-w1 netns create"
            ],
            "{calls:#?}"
        );
        assert!(calls.contains(&"zt-a-w1 addr add 10.1.0.2/24 dev eth0".to_string()));
        let path = net.netns_path(&net.workload_netns("a", "w1"));
        assert!(k
            .ns_owned_by(&path, Path::new("/run/zos/userns/w1"))
            .unwrap());
        // Owned as asked: attaching again leaves it alone.
        net.attach(&a, &port(Some("/run/zos/userns/w1"))).unwrap();
        assert_eq!(
            k.take_calls(),
            ["zt-a-w1 route replace default via 10.1.0.1 dev eth0"]
        );
    }

    #[test]
    fn attach_detach_and_remove_record_their_calls_and_leave_nothing() {
        let (k, net) = fake_network();
        net.ensure_node().unwrap();
        let a = tenant_a();
        net.ensure(&a).unwrap();
        k.take_calls();
        let veth = TenantPort {
            id: "w1".into(),
            attachment: WorkloadAttachment::Veth {
                netns: net.workload_netns("a", "w1"),
                ip: "10.1.0.2".parse().unwrap(),
                owner: None,
            },
        };
        net.attach(&a, &veth).unwrap();
        assert_eq!(
            k.take_calls(),
            [
                "zt-a-w1 netns create",
                "zt-a link add w-w1 type veth peer eth0 netns zt-a-w1",
                "zt-a link set w-w1 master br0",
                "zt-a link set w-w1 up",
                "zt-a-w1 link set lo up",
                "zt-a-w1 addr add 10.1.0.2/24 dev eth0",
                "zt-a-w1 link set eth0 up",
                "zt-a-w1 route replace default via 10.1.0.1 dev eth0",
            ]
        );
        let tap = TenantPort {
            id: "vm1".into(),
            attachment: WorkloadAttachment::Tap {
                name: "tap-vm1".into(),
            },
        };
        net.attach(&a, &tap).unwrap();
        assert_eq!(
            k.take_calls(),
            [
                "zt-a tuntap add tap-vm1 mode tap",
                "zt-a link set tap-vm1 master br0",
                "zt-a link set tap-vm1 up",
            ]
        );
        // Attaching again changes nothing but the route (always replaced).
        net.attach(&a, &veth).unwrap();
        net.attach(&a, &tap).unwrap();
        assert_eq!(
            k.take_calls(),
            ["zt-a-w1 route replace default via 10.1.0.1 dev eth0"]
        );
        let inv = net.list().unwrap();
        assert_eq!(inv.ports["a"], ["tap-vm1", "w-w1"]);

        assert!(net.detach("a", &tap).unwrap());
        assert!(net.detach("a", &veth).unwrap());
        assert_eq!(
            k.take_calls(),
            [
                "zt-a link del tap-vm1",
                "zt-a link del w-w1",
                "zt-a-w1 netns remove"
            ]
        );
        assert!(!net.detach("a", &veth).unwrap(), "nothing left to detach");

        assert!(net.remove("a").unwrap());
        assert_eq!(
            k.take_calls(),
            [
                "node link del zt-a",
                "node nft delete node tenant table",
                "zt-a netns remove"
            ]
        );
        assert_eq!(k.namespaces(), ["current", "node"]);
        assert_eq!(k.links("node").len(), 1, "only the uplink");
        assert_eq!(net.list().unwrap().networks().len(), 0);
        assert!(!net.remove("a").unwrap());
    }

    #[test]
    fn refusals_make_no_call() {
        let (k, net) = fake_network();
        let a = tenant_a();
        net.ensure(&a).unwrap();
        k.take_calls();
        // Another network forwarding the same public port.
        let mut b = tenant_a();
        b.id = "b".into();
        b.subnet = "10.2.0.0/24".parse().unwrap();
        b.gateway = "10.2.0.1".parse().unwrap();
        b.ports[0].workload_ip = "10.2.0.2".parse().unwrap();
        assert!(matches!(
            net.ensure(&b),
            Err(Error::PortInUse { port: 8080, .. })
        ));
        // A workload on a network that does not exist.
        let wl = TenantPort {
            id: "w1".into(),
            attachment: WorkloadAttachment::Tap {
                name: "tap-w1".into(),
            },
        };
        b.ports.clear();
        assert!(matches!(net.attach(&b, &wl), Err(Error::NoSuchNetwork(_))));
        // No uplink.
        let mut c = net.config().clone();
        c.uplink = "up9".into();
        let other = Network::with_kernel(c, k.clone()).unwrap();
        assert!(matches!(other.ensure_node(), Err(Error::NoUplink(_))));
        assert_eq!(k.calls(), Vec::<String>::new());
    }

    #[test]
    fn config_refusals() {
        let mut c = NetworkConfig::new("eth0");
        c.prefix = "n".into();
        assert!(matches!(
            Network::new(c.clone()),
            Err(Error::InvalidName { .. })
        ));
        c.prefix = "n-".into();
        c.uplink = "a-very-long-uplink".into();
        assert!(matches!(Network::new(c), Err(Error::NameTooLong { .. })));
    }
}
