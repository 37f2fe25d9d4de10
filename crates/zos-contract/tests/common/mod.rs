//! Fixtures shared by the contract tests: fixed keys, a sample blueprint, a contract.
#![allow(dead_code)]

use std::collections::BTreeMap;

use serde_json::{json, Value};
use zos_contract::*;

pub const NOW: u64 = 1_800_000_000;

pub fn key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}
pub fn expert() -> SecretKey {
    key(1)
}
pub fn owner() -> SecretKey {
    key(2)
}
pub fn legal() -> SecretKey {
    key(3)
}
pub fn budget() -> SecretKey {
    key(4)
}
pub fn node() -> SecretKey {
    key(5)
}
pub fn stranger() -> SecretKey {
    key(9)
}

pub fn blueprint_json() -> Value {
    json!({
        "name": "crm",
        "version": "1.0.0",
        "description": "A CRM for {{users}} users",
        "params": {
            "users": {"type": "int", "min": 1, "max": 1000, "default": 10},
            "region": {"type": "enum", "values": ["ch", "be"], "default": "ch"}
        },
        "body": {
            "networks": [{"name": "net", "subnet": "10.20.0.0/24"}],
            "volumes": [{"name": "data", "size_mib": "{{ users * 10 + 100 }}"}],
            "workloads": [{
                "name": "app",
                "kind": "container",
                "flist": {
                    "url": "dir:///srv/flists/crm.fl",
                    "sha256": "0000000000000000000000000000000000000000000000000000000000000000",
                    "stores": ["dir:///srv/store"],
                    "publishers": [expert().public().to_hex()]
                },
                "entrypoint": ["/bin/crm", "--users", "{{users}}", "--region", "{{region}}"],
                "env": {"REGION": "{{region}}"},
                "cpu": 1,
                "memory_mib": "{{ 64 + users }}",
                "network": "net",
                "mounts": [{"volume": "data", "path": "/data"}],
                "ports": [{"port": 8080, "public": 18080}]
            }]
        }
    })
}

pub fn signed_blueprint() -> SignedBlueprint {
    let bp: Blueprint = serde_json::from_value(blueprint_json()).unwrap();
    bp.sign(&expert(), &Limits::default()).unwrap()
}

pub fn contract() -> Contract {
    Contract {
        id: "crm-acme".into(),
        version: 1,
        owner: owner().public(),
        nodes: vec![node().public()],
        blueprint: BlueprintRef::Embedded(signed_blueprint().to_value()),
        params: BTreeMap::from([("users".to_string(), json!(100))]),
        stakeholders: vec![
            Stakeholder {
                key: legal().public(),
                weight: 2,
                required: true,
            },
            Stakeholder {
                key: budget().public(),
                weight: 1,
                required: false,
            },
        ],
        threshold: 3,
        not_before: Some(NOW - 3600),
        expires: Some(NOW + 3600),
    }
}

pub fn signed(c: Contract, signers: &[SecretKey]) -> SignedContract {
    let mut doc = SignedContract::new(c).unwrap();
    for k in signers {
        doc.sign(k).unwrap();
    }
    doc
}

pub fn fully_signed() -> SignedContract {
    signed(contract(), &[owner(), legal(), budget()])
}

pub fn ctx() -> VerifyContext<'static> {
    let mut c = VerifyContext::offline(NOW);
    c.node = Some(node().public());
    c
}

pub fn orchestrator() -> SecretKey {
    key(6)
}

/// Farm "7", two replicas moved after 60 s, chosen by [`orchestrator`].
pub fn placement() -> Placement {
    Placement {
        farm: "7".into(),
        replicas: 2,
        orchestrator: orchestrator().public(),
        failover: Failover {
            mode: FailoverMode::Move,
            after_s: 60,
        },
        constraints: None,
    }
}

/// [`contract`] with [`placement`] instead of nodes, signed by `signers`.
pub fn placed(signers: &[SecretKey]) -> SignedContract {
    let mut c = contract();
    c.nodes.clear();
    let mut doc = SignedContract::placed(c, placement()).unwrap();
    for k in signers {
        doc.sign(k).unwrap();
    }
    doc
}
