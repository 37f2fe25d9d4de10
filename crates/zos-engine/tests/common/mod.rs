//! A fake provisioner (in memory, with failure injection) and contract builders. The
//! engine's real-kernel tests live with zosd, which wires the real provisioner.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use zos_contract::deployment::Volume;
use zos_contract::{
    Blueprint, BlueprintRef, Cancellation, Contract, Limits, SecretKey, SignedCancellation,
    SignedContract, Stakeholder,
};
use zos_engine::{
    Inventory, NetworkPlan, ProvisionError, Provisioner, WorkloadPlan, WorkloadState,
    WorkloadStatus,
};
use zos_notary::{NotaryKey, Record};

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
}

impl Provisioner for Fake {
    async fn ensure_volume(&self, name: &str, spec: &Volume) -> Result<PathBuf, ProvisionError> {
        self.log(format!("ensure_volume {name}"));
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
        self.state().networks.remove(name);
        Ok(())
    }

    async fn ensure_workload(&self, plan: &WorkloadPlan) -> Result<WorkloadStatus, ProvisionError> {
        self.log(format!("ensure_workload {}", plan.name));
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
}

impl Keys {
    pub fn new() -> Keys {
        Keys {
            expert: SecretKey::from_seed([1; 32]),
            owner: SecretKey::from_seed([2; 32]),
            legal: SecretKey::from_seed([3; 32]),
            node: SecretKey::from_seed([5; 32]),
        }
    }
}

/// A blueprint with a volume, a network and one container sized by `users`; `image`
/// changes the workload's entrypoint (a new version of the app).
pub fn blueprint(keys: &Keys, image: &str) -> Value {
    let bp: Blueprint = serde_json::from_value(json!({
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
    bp.sign(&keys.expert, &Limits::default())
        .unwrap()
        .to_value()
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
    let c = Contract {
        id: id.into(),
        version,
        owner: keys.owner.public(),
        nodes: vec![keys.node.public()],
        blueprint: BlueprintRef::Embedded(blueprint(keys, image)),
        params: BTreeMap::from([("users".into(), json!(users))]),
        stakeholders: vec![Stakeholder {
            key: keys.legal.public(),
            weight: 1,
            required: true,
        }],
        threshold: 1,
        not_before: None,
        expires: Some(4_000_000_000),
    };
    let mut doc = SignedContract::new(c).unwrap();
    doc.sign(&keys.owner).unwrap();
    if cosigned {
        doc.sign(&keys.legal).unwrap();
    }
    doc
}

/// The notary record carrying `doc` for the node, put by the owner.
pub fn contract_record(keys: &Keys, doc: &SignedContract) -> Record {
    let key = NotaryKey::contract(&keys.node.public(), &doc.contract.id).unwrap();
    Record::sign(&key, doc.to_value(), &keys.owner).unwrap()
}

pub fn cancellation_record(keys: &Keys, id: &str, version: u64) -> Record {
    let c = SignedCancellation::sign(
        Cancellation {
            id: id.into(),
            version,
            owner: keys.owner.public(),
        },
        &keys.owner,
    )
    .unwrap();
    let key = NotaryKey::contract(&keys.node.public(), id).unwrap();
    Record::sign(&key, serde_json::to_value(&c).unwrap(), &keys.owner).unwrap()
}
