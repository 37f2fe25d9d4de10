//! The engine's mesh part (docs/engine.md, "Mesh"; docs/network.md, "Mesh"): for each
//! running contract that spans nodes and each of its networks, the WireGuard key, the
//! link and its peers, this node's peer record, and the status's mesh section. The
//! decisions are [`crate::controllers::mesh`]'s; this file reads their inputs (the key
//! file, the notary, the provisioner) and carries them out.
//!
//! One refresh of (contract, network), every [`MESH_REFRESH`] and at once after a
//! change of the contract, its placement record or an assignment:
//!
//! 1. the key: `<mesh_keys>/<contract>/<network>.key` (made once, mode 0600);
//! 2. the layout: the contract's `nodes`, or the orchestrator's placement record (read
//!    once per contract and refresh), with this node's own replica;
//! 3. this node's endpoint: `mesh_endpoint` and the link's listen port (the link is
//!    made without peers first when it does not exist yet, to learn its port);
//! 4. every other member's record: one notary get per member;
//! 5. the peer set (`zos_mesh::peers`); each refusal logged once while it lasts;
//! 6. the peers applied (`ensure_mesh`) when they differ from the last applied, or the
//!    link read back (`mesh_state`) when not;
//! 7. this node's record published when it differs from the last published;
//! 8. the mesh section; the contract's status published again when it changed in more
//!    than counters ([`mesh::settled`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use zos_contract::deployment::Network;
use zos_contract::PublicKey;
use zos_mesh::{Local, Members, PeerRecord, RefusalCode, WgSecretKey};
use zos_notary::NotaryKey;

use super::{Engine, EngineError};
use crate::controllers::mesh::{self, MESH_REFRESH};
use crate::journal::{JournalStore, Owned, Phase};
use crate::names;
use crate::plan;
use crate::provision::{MeshPeerPlan, MeshPlan, MeshState, Provisioner};
use crate::status::MeshReport;

// The refresh period is documented where it is decided.
const _: std::time::Duration = MESH_REFRESH;

/// One network of a running mesh contract on this node.
pub(super) struct Link {
    /// This node's WireGuard key for it.
    secret: WgSecretKey,
    /// The peers last applied (`None`: not yet, or the link must be made again).
    applied: Option<Vec<MeshPeerPlan>>,
    /// The link's listen port, once known.
    listen_port: Option<u16>,
    /// This node's record as last published.
    published: Option<PeerRecord>,
    /// The refusals logged and still standing: logged again only when they change.
    refusals: BTreeSet<(PublicKey, RefusalCode)>,
    /// When each peer key was first applied (unix seconds).
    since: BTreeMap<[u8; 32], u64>,
    /// The last mesh section.
    report: Option<MeshReport>,
}

impl<P: Provisioner + 'static, N: zos_notary::Notary, S: JournalStore> Engine<P, N, S> {
    /// The mesh section of contract `id`'s status: one per network, by name.
    pub(super) fn mesh_reports(&self, id: &str) -> Vec<MeshReport> {
        self.mesh
            .range((id.to_string(), String::new())..)
            .take_while(|((c, _), _)| c == id)
            .filter_map(|(_, link)| link.report.clone())
            .collect()
    }

    /// The address peer records publish now.
    fn endpoint_ip(&self) -> Option<std::net::IpAddr> {
        match &self.mesh_endpoint {
            Some(rx) => *rx.borrow(),
            None => self.cfg.mesh_endpoint,
        }
    }

    /// Refreshes the contracts due at once (a change), or every running mesh contract
    /// (`all`: the periodic refresh).
    pub(super) async fn mesh_pass(&mut self, all: bool) -> Result<(), EngineError> {
        let ids: Vec<String> = if all {
            self.mesh_due.clear();
            self.journal.data().owned.keys().cloned().collect()
        } else {
            std::mem::take(&mut self.mesh_due).into_iter().collect()
        };
        for id in ids {
            self.mesh_refresh(&id).await?;
        }
        Ok(())
    }

    /// One refresh of contract `id`'s networks (see the module docs); nothing for a
    /// contract that does not run here on several nodes.
    async fn mesh_refresh(&mut self, id: &str) -> Result<(), EngineError> {
        let me = self.node();
        let Some(owned) = self.journal.owned(id).cloned() else {
            return Ok(());
        };
        let runs =
            owned.phase == Phase::Running && !self.jobs.busy(id) && !self.fenced.contains_key(id);
        let span = plan::span(self.journal.data(), &owned, &me);
        if !runs || span.is_none() || owned.deployment.networks.is_empty() {
            return Ok(());
        }
        let Some(dir) = self.cfg.mesh_keys.clone() else {
            tracing::warn!(contract = %id, "no directory for WireGuard keys configured: the network across nodes is not set up");
            return Ok(());
        };
        // The members: the contract's nodes, or the placement record as read now.
        let nodes = self.journal.data().members.get(id).cloned();
        let view = match &owned.held {
            Some(held) => {
                let read = self.placement_record(id).await.map(|(_, view, _)| view);
                Some(mesh::view_with_me(id, read, held, &me))
            }
            None => None,
        };
        let members = match (&owned.held, &view, &nodes) {
            (Some(h), Some(view), _) => Members::Placement {
                replicas: h.placement.replicas,
                contract: id,
                view,
            },
            (None, _, Some(nodes)) => Members::Nodes(nodes),
            _ => return Ok(()),
        };
        let mut changed = false;
        for network in &owned.deployment.networks {
            changed |= self
                .mesh_network(&owned, span, network, &members, &dir)
                .await?;
        }
        if changed {
            self.report(id).await?;
        }
        Ok(())
    }

    /// One network's refresh; true when its mesh section changed in more than counters.
    async fn mesh_network(
        &mut self,
        owned: &Owned,
        span: Option<plan::Span>,
        network: &Network,
        members: &Members<'_>,
        dir: &std::path::Path,
    ) -> Result<bool, EngineError> {
        let (id, net) = (owned.id.as_str(), network.name.as_str());
        let me = self.node();
        let name = names::of(id, net);
        let entry = (id.to_string(), net.to_string());
        if !self.mesh.contains_key(&entry) {
            let path = key_path(dir, id, net);
            // The directories are the owner's only, as the key files are.
            let made = path
                .parent()
                .map(|p| {
                    use std::os::unix::fs::DirBuilderExt as _;
                    std::fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(p)
                        .map_err(|e| e.to_string())
                })
                .unwrap_or(Ok(()))
                .and_then(|()| WgSecretKey::load_or_create(&path).map_err(|e| e.to_string()));
            let secret = match made {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(contract = %id, network = %net, error = %e, "WireGuard key not available");
                    return Ok(false);
                }
            };
            self.mesh.insert(
                entry.clone(),
                Link {
                    secret,
                    applied: None,
                    listen_port: None,
                    published: None,
                    refusals: BTreeSet::new(),
                    since: BTreeMap::new(),
                    report: None,
                },
            );
        }
        let layout = match zos_mesh::layout(network, members) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(contract = %id, network = %net, code = e.code(), error = %e, "network across nodes cannot be laid out");
                return Ok(false);
            }
        };
        let net_plan = match plan::network_plan(id, &owned.deployment, net, span) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(contract = %id, network = %net, error = %e, "network plan");
                return Ok(false);
            }
        };
        let range = match zos_mesh::addr::range_of(network) {
            Ok(r) => (r.addr(), r.prefix_len()),
            Err(e) => {
                tracing::warn!(contract = %id, network = %net, error = %e, "network range");
                return Ok(false);
            }
        };
        let (public_key, private_key) = {
            let link = &self.mesh[&entry];
            (link.secret.public(), link.secret.to_bytes())
        };
        let mesh_plan = |peers: Vec<MeshPeerPlan>| MeshPlan {
            range,
            private_key,
            peers,
        };
        // The listen port: known, read back, or the link made without peers first.
        let mut port = self.mesh[&entry].listen_port;
        if port.is_none() {
            port = match self.provisioner.mesh_state(&name).await {
                Ok(Some(s)) => Some(s.listen_port),
                Ok(None) => match self
                    .provisioner
                    .ensure_mesh(&net_plan, &mesh_plan(Vec::new()))
                    .await
                {
                    Ok(s) => Some(s.listen_port),
                    Err(e) => {
                        tracing::warn!(contract = %id, network = %net, error = %e, "WireGuard link not made");
                        return Ok(false);
                    }
                },
                Err(e) => {
                    tracing::warn!(contract = %id, network = %net, error = %e, "WireGuard link not read");
                    return Ok(false);
                }
            };
        }
        let endpoint = match (self.endpoint_ip(), port) {
            (Some(ip), Some(port)) => Some(SocketAddr::new(ip, port)),
            _ => None,
        };
        // Every other member's record: one get each.
        let mut records = Vec::new();
        for node in layout
            .slots
            .iter()
            .filter_map(|s| s.node)
            .filter(|n| *n != me)
        {
            let key = match NotaryKey::mesh(&node, id, net) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(contract = %id, network = %net, error = %e, "no mesh key");
                    continue;
                }
            };
            match self.notary.get(&key).await {
                Ok(Some(r)) => records.push(r),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(contract = %id, network = %net, node = %node, error = %e, "peer record not read")
                }
            }
        }
        let local = Local {
            node: me,
            public_key,
            endpoint,
        };
        let set = match zos_mesh::peers(&local, id, network, members, &records) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(contract = %id, network = %net, code = e.code(), error = %e, "peer set");
                return Ok(false);
            }
        };
        let wanted = mesh::peer_plans(&set);
        let now = (self.clock)();
        let link = self.mesh.get_mut(&entry).expect("made above");
        let standing: BTreeSet<(PublicKey, RefusalCode)> =
            set.refused.iter().map(|r| (r.node, r.code)).collect();
        for r in &set.refused {
            if !link.refusals.contains(&(r.node, r.code)) {
                tracing::warn!(contract = %id, network = %net, node = %r.node, code = %r.code, detail = %r.detail, "mesh peer record refused");
            }
        }
        link.refusals = standing;
        let mut apply = link.applied.as_ref() != Some(&wanted);
        let mut state: Option<MeshState> = None;
        if !apply {
            match self.provisioner.mesh_state(&name).await {
                Ok(Some(s)) => state = Some(s),
                // Gone (the network was made again): made again now.
                Ok(None) => {
                    tracing::info!(contract = %id, network = %net, "WireGuard link gone; making it again");
                    apply = true;
                }
                Err(e) => {
                    tracing::warn!(contract = %id, network = %net, error = %e, "WireGuard link not read")
                }
            }
        }
        if apply {
            match self
                .provisioner
                .ensure_mesh(&net_plan, &mesh_plan(wanted.clone()))
                .await
            {
                Ok(s) => {
                    tracing::info!(
                        contract = %id,
                        network = %net,
                        listen_port = s.listen_port,
                        peers = wanted.len(),
                        refused = set.refused.len(),
                        "mesh peers applied"
                    );
                    let link = self.mesh.get_mut(&entry).expect("made above");
                    link.since
                        .retain(|k, _| wanted.iter().any(|p| p.public_key == *k));
                    for p in &wanted {
                        link.since.entry(p.public_key).or_insert(now);
                    }
                    link.applied = Some(wanted);
                    state = Some(s);
                }
                Err(e) => {
                    self.mesh.get_mut(&entry).expect("made above").applied = None;
                    tracing::warn!(contract = %id, network = %net, error = %e, "mesh peers not applied");
                }
            }
        }
        if let Some(s) = &state {
            self.mesh.get_mut(&entry).expect("made above").listen_port = Some(s.listen_port);
        }
        // This node's record, when its content changed.
        let port = self.mesh[&entry].listen_port;
        let endpoint = match (self.endpoint_ip(), port) {
            (Some(ip), Some(port)) => Some(SocketAddr::new(ip, port)),
            _ => None,
        };
        let record = mesh::own_record(
            id,
            net,
            owned.version,
            public_key,
            endpoint,
            set.routes.local,
            owned.held.as_ref(),
        );
        if port.is_some() && mesh::must_publish(self.mesh[&entry].published.as_ref(), &record) {
            match zos_mesh::sign_record(&record, &self.node, now) {
                Ok(signed) => match self.notary.put(&signed).await {
                    Ok(()) => {
                        tracing::info!(contract = %id, network = %net, endpoint = ?record.endpoint, public_key = %record.public_key, subnet = %record.subnet, "mesh peer record published");
                        self.mesh.get_mut(&entry).expect("made above").published = Some(record);
                    }
                    Err(e) => {
                        tracing::warn!(contract = %id, network = %net, error = %e, "mesh peer record not published")
                    }
                },
                Err(e) => {
                    tracing::warn!(contract = %id, network = %net, error = %e, "mesh peer record not signed")
                }
            }
        }
        let link = self.mesh.get_mut(&entry).expect("made above");
        let report = mesh::report(&mesh::ReportInput {
            network: net,
            layout: &layout,
            set: &set,
            me: &me,
            public_key,
            state: state.as_ref(),
            since: &link.since,
            now,
        });
        let changed = link.report.as_ref().map(mesh::settled) != Some(mesh::settled(&report));
        link.report = Some(report);
        Ok(changed)
    }

    /// Forgets contract `id`'s links (its networks were removed or are made again);
    /// with `gone` (cancelled, expired, moved away) also deletes this node's peer
    /// records (readers then see `no_record` rather than a stale peer; the notary lets
    /// anyone delete, and a node deletes only its own) and its key files.
    pub(super) async fn mesh_forget(&mut self, owned: &Owned, gone: bool) {
        let id = owned.id.as_str();
        let keys: Vec<(String, String)> =
            self.mesh.keys().filter(|(c, _)| c == id).cloned().collect();
        let had = !keys.is_empty();
        for k in keys {
            self.mesh.remove(&k);
        }
        self.mesh_due.remove(id);
        let keys_dir = self.cfg.mesh_keys.as_ref().map(|d| d.join(id));
        // Only a contract that had a mesh here has records and keys to remove.
        let made = had || keys_dir.as_ref().is_some_and(|d| d.exists());
        if !gone || !made {
            return;
        }
        let me = self.node();
        for n in &owned.deployment.networks {
            let Ok(key) = NotaryKey::mesh(&me, id, &n.name) else {
                continue;
            };
            match self.notary.delete(&key).await {
                Ok(()) => {
                    tracing::info!(contract = %id, network = %n.name, "mesh peer record deleted")
                }
                Err(e) => {
                    tracing::warn!(contract = %id, network = %n.name, error = %e, "mesh peer record not deleted")
                }
            }
        }
        if let Some(d) = keys_dir.filter(|d| d.exists()) {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => tracing::info!(contract = %id, "WireGuard keys deleted"),
                Err(e) => {
                    tracing::warn!(contract = %id, path = %d.display(), error = %e, "WireGuard keys not deleted")
                }
            }
        }
        tracing::info!(contract = %id, "network across nodes left");
    }
}

/// Where this node keeps its WireGuard key of `network` of contract `id`.
pub fn key_path(dir: &std::path::Path, id: &str, network: &str) -> PathBuf {
    dir.join(id).join(format!("{network}.key"))
}
