//! A fake provisioner (in memory, with failure injection) and contract builders. The
//! engine's real-kernel tests live with zosd, which wires the real provisioner.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use std::time::Duration;
use zos_contract::deployment::Volume;
use zos_contract::{SecretKey, SignedContract, Stakeholder};
use zos_engine::{
    Inventory, MeshPeerState, MeshPlan, MeshState, NetworkPlan, ProvisionError, Provisioner,
    WireguardMissing, WorkloadPlan, WorkloadState, WorkloadStatus,
};

use zos_engine::{Capacity, Engine, EngineConfig, FileJournal, Journal, StatusReport};
use zos_notary::{AnyNotary, Notary, NotaryKey, Record};
use zos_testkit::contract as kit;

#[derive(Debug, Default)]
pub struct FakeState {
    pub volumes: BTreeMap<String, u64>,
    pub networks: BTreeMap<String, String>,
    /// name -> (state, times started)
    pub workloads: BTreeMap<String, (WorkloadState, u32)>,
    /// Every call, in order: "ensure_volume c.data", ...
    pub calls: Vec<String>,
    /// The last plans the engine handed over, by node-wide name.
    pub network_plans: BTreeMap<String, NetworkPlan>,
    pub workload_plans: BTreeMap<String, WorkloadPlan>,
    /// The next ensure_workload fails with this error.
    pub fail_workload: Option<ProvisionError>,
    /// Workloads (node-wide names) whose flist store hangs: their ensure_workload waits
    /// until they leave this set ([`Fake::release`]).
    pub hanging: BTreeSet<String>,
    /// Wakes the hanging calls when `hanging` shrinks.
    pub gate: Arc<tokio::sync::Notify>,
    /// How long each ensure_* takes (benchmarks; zero in tests).
    pub latency: Duration,
    /// Hanging calls given up by their caller (the future dropped while it waited).
    pub abandoned: Vec<String>,
    /// Like zosd's blocking calls, an abandoned ensure_workload still finishes once its
    /// store answers, and starts the workload then.
    pub finish_abandoned: bool,
    /// The kernel has no WireGuard (like this host's): `ensure_mesh` fails, and a
    /// contract with a network across nodes is refused.
    pub no_wireguard: bool,
    /// The fake WireGuard links, by network (node-wide name).
    pub meshes: BTreeMap<String, MeshState>,
    /// The last mesh plan applied per network.
    pub mesh_plans: BTreeMap<String, MeshPlan>,
    /// Every mesh call, in order: "ensure_mesh web.net 2 peers", "mesh_state web.net".
    pub mesh_calls: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Fake(pub Arc<Mutex<FakeState>>);

impl Fake {
    pub fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().unwrap()
    }

    pub fn kill(&self, name: &str) {
        let mut s = self.state();
        s.workloads.get_mut(name).expect("workload exists").0 = WorkloadState::Exited {
            code: None,
            signal: Some(9),
        };
    }

    pub fn is_empty(&self) -> bool {
        let s = self.state();
        s.volumes.is_empty() && s.networks.is_empty() && s.workloads.is_empty()
    }

    fn log(&self, call: String) {
        self.state().calls.push(call);
    }

    /// The store of workload `name` hangs from now on.
    pub fn hang(&self, name: &str) {
        self.state().hanging.insert(name.to_string());
    }

    /// The store of workload `name` answers again.
    pub fn release(&self, name: &str) {
        let gate = {
            let mut s = self.state();
            s.hanging.remove(name);
            s.gate.clone()
        };
        gate.notify_waiters();
    }

    /// Waits while the store of `name` hangs; a caller that gives up is counted in
    /// `abandoned`.
    async fn store(&self, name: &str) {
        struct Waiting<'a>(&'a Fake, &'a str, bool);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if !self.2 {
                    self.0.state().abandoned.push(self.1.to_string());
                    self.0.finish_late(self.1);
                }
            }
        }
        let mut waiting = Waiting(self, name, false);
        self.wait_store(name).await;
        waiting.2 = true;
    }

    /// What a blocking call given up by its caller does when its store answers at last
    /// ([`FakeState::finish_abandoned`]): it starts the workload anyway.
    fn finish_late(&self, name: &str) {
        if !self.state().finish_abandoned {
            return;
        }
        let fake = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            fake.wait_store(&name).await;
            let mut s = fake.state();
            s.workloads
                .insert(name.clone(), (WorkloadState::Running, 1));
            s.calls.push(format!("late start {name}"));
        });
    }

    async fn wait_store(&self, name: &str) {
        loop {
            let gate = self.state().gate.clone();
            let notified = gate.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.state().hanging.contains(name) {
                return;
            }
            notified.await;
        }
    }

    async fn work(&self) {
        let latency = self.state().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
    }
}

impl Provisioner for Fake {
    async fn ensure_volume(&self, name: &str, spec: &Volume) -> Result<PathBuf, ProvisionError> {
        self.log(format!("ensure_volume {name}"));
        self.work().await;
        let mut s = self.state();
        let size = s.volumes.entry(name.to_string()).or_insert(spec.size_mib);
        *size = (*size).max(spec.size_mib);
        Ok(PathBuf::from(format!("/pools/{name}")))
    }

    async fn remove_volume(&self, name: &str) -> Result<(), ProvisionError> {
        self.log(format!("remove_volume {name}"));
        self.state().volumes.remove(name);
        Ok(())
    }

    async fn ensure_network(&self, plan: &NetworkPlan) -> Result<(), ProvisionError> {
        self.log(format!("ensure_network {}", plan.name));
        self.work().await;
        self.state()
            .network_plans
            .insert(plan.name.clone(), plan.clone());
        self.state().networks.insert(
            plan.name.clone(),
            format!("{}/{}", plan.subnet, plan.prefix_len),
        );
        Ok(())
    }

    async fn remove_network(&self, name: &str) -> Result<(), ProvisionError> {
        self.log(format!("remove_network {name}"));
        let mut s = self.state();
        s.networks.remove(name);
        // The network's WireGuard link goes with it.
        s.meshes.remove(name);
        s.mesh_plans.remove(name);
        Ok(())
    }

    async fn ensure_workload(&self, plan: &WorkloadPlan) -> Result<WorkloadStatus, ProvisionError> {
        self.log(format!("ensure_workload {}", plan.name));
        self.store(&plan.name).await;
        self.work().await;
        let mut s = self.state();
        s.workload_plans.insert(plan.name.clone(), plan.clone());
        if let Some(e) = s.fail_workload.take() {
            return Err(e);
        }
        let entry = s
            .workloads
            .entry(plan.name.clone())
            .or_insert((WorkloadState::Running, 1));
        // Running already: adopted, not started twice.
        if entry.0 != WorkloadState::Running {
            entry.0 = WorkloadState::Running;
            entry.1 += 1;
        }
        Ok(WorkloadStatus {
            address: plan.network.as_ref().map(|(_, ip)| *ip),
            ..running()
        })
    }

    async fn restart_workload(
        &self,
        plan: &WorkloadPlan,
    ) -> Result<WorkloadStatus, ProvisionError> {
        self.log(format!("restart_workload {}", plan.name));
        let mut s = self.state();
        if let Some(e) = s.fail_workload.take() {
            return Err(e);
        }
        let entry = s
            .workloads
            .get_mut(&plan.name)
            .expect("restart of a known workload");
        entry.0 = WorkloadState::Running;
        entry.1 += 1;
        Ok(running())
    }

    async fn remove_workload(&self, name: &str) -> Result<(), ProvisionError> {
        self.log(format!("remove_workload {name}"));
        self.state().workloads.remove(name);
        Ok(())
    }

    async fn workload_status(&self, name: &str) -> Result<Option<WorkloadStatus>, ProvisionError> {
        Ok(self
            .state()
            .workloads
            .get(name)
            .map(|(state, _)| WorkloadStatus {
                state: state.clone(),
                address: Some("10.20.0.2".parse().unwrap()),
                log_tail: vec!["hello".into()],
                runtime: None,
            }))
    }

    async fn inventory(&self) -> Result<Inventory, ProvisionError> {
        let s = self.state();
        Ok(Inventory {
            volumes: s.volumes.keys().cloned().collect(),
            networks: s.networks.keys().cloned().collect(),
            workloads: s.workloads.keys().cloned().collect::<BTreeSet<_>>(),
        })
    }

    async fn wireguard_available(&self) -> bool {
        !self.state().no_wireguard
    }

    async fn ensure_mesh(
        &self,
        net: &NetworkPlan,
        mesh: &MeshPlan,
    ) -> Result<MeshState, ProvisionError> {
        let mut s = self.state();
        s.mesh_calls.push(format!(
            "ensure_mesh {} {} peers",
            net.name,
            mesh.peers.len()
        ));
        if s.no_wireguard {
            return Err(
                ProvisionError::from_source("network", &net.name, WireguardMissing).permanent(),
            );
        }
        assert!(
            s.networks.contains_key(&net.name),
            "ensure_mesh of {} before its network",
            net.name
        );
        let port = s
            .meshes
            .get(&net.name)
            .map_or(51820 + s.meshes.len() as u16, |m| m.listen_port);
        let old = s.meshes.get(&net.name).cloned();
        let peers = mesh
            .peers
            .iter()
            .map(|p| {
                old.as_ref()
                    .and_then(|o| o.peers.iter().find(|q| q.public_key == p.public_key))
                    .cloned()
                    .unwrap_or(MeshPeerState {
                        public_key: p.public_key,
                        endpoint: p.endpoint,
                        last_handshake: None,
                        rx_bytes: 0,
                        tx_bytes: 0,
                    })
            })
            .collect();
        let state = MeshState {
            listen_port: port,
            public_key: zos_mesh::WgSecretKey::from_bytes(mesh.private_key)
                .public()
                .0,
            peers,
        };
        s.meshes.insert(net.name.clone(), state.clone());
        s.mesh_plans.insert(net.name.clone(), mesh.clone());
        Ok(state)
    }

    async fn mesh_state(&self, name: &str) -> Result<Option<MeshState>, ProvisionError> {
        let mut s = self.state();
        s.mesh_calls.push(format!("mesh_state {name}"));
        Ok(s.meshes.get(name).cloned())
    }
}

fn running() -> WorkloadStatus {
    WorkloadStatus {
        state: WorkloadState::Running,
        address: Some("10.20.0.2".parse().unwrap()),
        log_tail: vec![],
        runtime: None,
    }
}

/// The keys of one scenario.
pub struct Keys {
    pub expert: SecretKey,
    pub owner: SecretKey,
    pub legal: SecretKey,
    pub node: SecretKey,
    /// Another tenant (an attacker in the trust tests).
    pub thief: SecretKey,
    /// A second, optional stakeholder.
    pub budget: SecretKey,
}

impl Keys {
    pub fn new() -> Keys {
        Keys {
            expert: SecretKey::from_seed([1; 32]),
            owner: SecretKey::from_seed([2; 32]),
            legal: SecretKey::from_seed([3; 32]),
            node: SecretKey::from_seed([5; 32]),
            thief: SecretKey::from_seed([9; 32]),
            budget: SecretKey::from_seed([4; 32]),
        }
    }
}

/// A blueprint with a volume, a network and one container sized by `users`; `image`
/// changes the workload's entrypoint (a new version of the app).
pub fn blueprint(keys: &Keys, image: &str) -> Value {
    blueprint_with(keys, image, false)
}

/// [`blueprint`], whose deployment publishes its log tails when `publish_logs`.
pub fn blueprint_with(keys: &Keys, image: &str, publish_logs: bool) -> Value {
    let mut body: Value = serde_json::from_value(json!({
        "name": "app",
        "version": "1.0.0",
        "params": {"users": {"type": "int", "min": 1, "max": 100000}},
        "body": {
            "networks": [{"name": "net", "subnet": "10.20.0.0/24"}],
            "volumes": [{"name": "data", "size_mib": "{{ 10 * users }}"}],
            "workloads": [{
                "name": "app",
                "kind": "container",
                "flist": {
                    "url": "dir:///srv/flists/app.fl",
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "stores": ["dir:///srv/store"]
                },
                "entrypoint": [image],
                "cpu": 1,
                "memory_mib": "{{ 32 + users }}",
                "network": "net",
                "mounts": [{"volume": "data", "path": "/data"}],
                "ports": [{"port": 8080, "public": 18080}]
            }]
        }
    }))
    .unwrap();
    if publish_logs {
        body["body"]["publish_logs"] = json!(true);
    }
    kit::signed_blueprint(&keys.expert, body)
}

/// A contract for the node, signed by the owner and (if `cosigned`) the required
/// stakeholder.
pub fn contract(
    keys: &Keys,
    id: &str,
    version: u64,
    users: u64,
    image: &str,
    cosigned: bool,
) -> SignedContract {
    let mut c = kit::contract(
        keys.owner.public(),
        keys.node.public(),
        id,
        version,
        blueprint(keys, image),
    );
    c.params = BTreeMap::from([("users".into(), json!(users))]);
    c.stakeholders = vec![Stakeholder {
        key: keys.legal.public(),
        weight: 1,
        required: true,
    }];
    c.threshold = 1;
    if cosigned {
        kit::signed(c, &[&keys.owner, &keys.legal])
    } else {
        kit::signed(c, &[&keys.owner])
    }
}

/// A contract for the node owned by `owner` with these stakeholders and threshold,
/// signed by `signers` (each must be the owner or a stakeholder of this document).
#[allow(clippy::too_many_arguments)]
pub fn contract_by(
    keys: &Keys,
    owner: &SecretKey,
    id: &str,
    version: u64,
    image: &str,
    stakeholders: Vec<Stakeholder>,
    threshold: u64,
    signers: &[&SecretKey],
) -> SignedContract {
    let mut c = kit::contract(
        owner.public(),
        keys.node.public(),
        id,
        version,
        blueprint(keys, image),
    );
    c.params = BTreeMap::from([("users".into(), json!(10))]);
    c.stakeholders = stakeholders;
    c.threshold = threshold;
    kit::signed(c, signers)
}

// Not every test binary re-signs.
#[allow(unused_imports)]
pub use zos_testkit::contract::{cosign_anyway, resign};

/// The notary record of `body` at contract `id` of the node, put by `author` (anyone
/// may write a contract key).
pub fn raw_record(keys: &Keys, author: &SecretKey, id: &str, body: Value) -> Record {
    let key = NotaryKey::contract(&keys.node.public(), id).unwrap();
    Record::sign(&key, body, author).unwrap()
}

/// `owner`'s signed cancellation of `id` at `version`, put by `owner`.
pub fn cancellation_by(keys: &Keys, owner: &SecretKey, id: &str, version: u64) -> Record {
    raw_record(keys, owner, id, kit::cancellation(owner, id, version))
}

/// The notary record carrying `doc` for the node, put by the owner.
pub fn contract_record(keys: &Keys, doc: &SignedContract) -> Record {
    let key = NotaryKey::contract(&keys.node.public(), &doc.contract.id).unwrap();
    Record::sign(&key, doc.to_value(), &keys.owner).unwrap()
}

pub fn cancellation_record(keys: &Keys, id: &str, version: u64) -> Record {
    cancellation_by(keys, &keys.owner, id, version)
}

/// A node's world: the fake machine, a real `dir://` notary and a real file journal.
pub struct World {
    pub keys: Keys,
    pub fake: Fake,
    pub notary: AnyNotary,
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
        let dir = zos_testkit::tempdir("engine");
        let notary =
            zos_notary::open(&format!("dir://{}", dir.path().join("notary").display())).unwrap();
        World {
            keys: Keys::new(),
            fake: Fake::default(),
            notary,
            dir,
        }
    }

    pub fn config() -> EngineConfig {
        EngineConfig {
            capacity: Capacity {
                cpu: 8,
                memory_mib: 4096,
                ssd_mib: 100_000,
                hdd_mib: 0,
            },
            restart_min: Duration::from_millis(200),
            restart_max: Duration::from_secs(2),
            ..EngineConfig::default()
        }
    }

    /// An engine over this world's journal: a fresh one stands for zosd restarting.
    pub fn engine(&self) -> Engine<Fake, AnyNotary, FileJournal> {
        self.engine_with(Self::config())
    }

    /// [`World::engine`] with its own configuration.
    pub fn engine_with(&self, config: EngineConfig) -> Engine<Fake, AnyNotary, FileJournal> {
        let journal =
            Journal::open(FileJournal::new(self.dir.path().join("journal.json"))).unwrap();
        Engine::new(
            Keys::new().node,
            config,
            self.fake.clone(),
            self.notary.clone(),
            journal,
        )
    }

    pub async fn status(&self, id: &str) -> StatusReport {
        serde_json::from_value(self.status_json(id).await).unwrap()
    }

    /// The status record's body as JSON (fields a typed read would not know of).
    pub async fn status_json(&self, id: &str) -> Value {
        let key = NotaryKey::status(&self.keys.node.public(), id).unwrap();
        let record = self
            .notary
            .get(&key)
            .await
            .unwrap()
            .expect("a status record");
        assert_eq!(record.author, self.keys.node.public(), "signed by the node");
        record.body
    }

    /// The journal file as JSON.
    pub fn journal_json(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.path().join("journal.json")).unwrap())
            .unwrap()
    }

    /// The calls the fake saw from index `mark` on.
    pub fn calls_since(&self, mark: usize) -> Vec<String> {
        self.fake.state().calls[mark..].to_vec()
    }

    pub fn mark(&self) -> usize {
        self.fake.state().calls.len()
    }

    pub async fn no_status(&self, id: &str) {
        let key = NotaryKey::status(&self.keys.node.public(), id).unwrap();
        assert!(self.notary.get(&key).await.unwrap().is_none());
    }
}
