//! The worked example of docs/contract-format.md, built from fixed seeds so that the
//! document, this code and independent implementations can be checked against each
//! other (`cargo run -p zos-contract --example spec_example` prints it).

use std::collections::BTreeMap;

use serde_json::json;

use crate::{
    canonical, Blueprint, BlueprintRef, Contract, Limits, SecretKey, SignedBlueprint,
    SignedContract, Stakeholder,
};

/// The example's keys, documents and intermediate values.
pub struct Example {
    /// The IT expert who signs the blueprint (seed `[1; 32]`).
    pub expert: SecretKey,
    /// The contract's owner (seed `[2; 32]`).
    pub owner: SecretKey,
    /// The required stakeholder, weight 1 (seed `[3; 32]`).
    pub legal: SecretKey,
    /// The node the contract names (seed `[5; 32]`).
    pub node: SecretKey,
    /// The `hello` blueprint, signed by `expert`.
    pub blueprint: SignedBlueprint,
    /// The `hello-1` contract embedding it, signed by `owner` then `legal`.
    pub contract: SignedContract,
}

impl Example {
    /// Builds the example; deterministic, so every run gives the same bytes.
    pub fn build() -> Example {
        let expert = SecretKey::from_seed([1; 32]);
        let owner = SecretKey::from_seed([2; 32]);
        let legal = SecretKey::from_seed([3; 32]);
        let node = SecretKey::from_seed([5; 32]);
        let blueprint: Blueprint = serde_json::from_value(json!({
            "name": "hello",
            "version": "1.0.0",
            "params": {"users": {"type": "int", "min": 1, "max": 100}},
            "body": {"workloads": [{
                "name": "app",
                "kind": "container",
                "flist": {
                    "url": "dir:///srv/flists/hello.fl",
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "stores": ["dir:///srv/store"]
                },
                "entrypoint": ["/hello", "--users", "{{users}}"],
                "cpu": 1,
                "memory_mib": "{{ 32 + users }}"
            }]}
        }))
        .expect("the example blueprint parses");
        let blueprint = blueprint
            .sign(&expert, &Limits::default())
            .expect("the example blueprint signs");
        let contract = Contract {
            id: "hello-1".into(),
            version: 1,
            owner: owner.public(),
            nodes: vec![node.public()],
            blueprint: BlueprintRef::Embedded(blueprint.to_value()),
            params: BTreeMap::from([("users".into(), json!(7))]),
            stakeholders: vec![Stakeholder {
                key: legal.public(),
                weight: 1,
                required: true,
            }],
            threshold: 1,
            not_before: None,
            expires: Some(2_000_000_000),
        };
        let mut contract = SignedContract::new(contract).expect("the example contract builds");
        contract.sign(&owner).expect("the owner signs");
        contract.sign(&legal).expect("the stakeholder signs");
        Example {
            expert,
            owner,
            legal,
            node,
            blueprint,
            contract,
        }
    }

    /// The named values, in the order the document shows them.
    pub fn blocks(&self) -> Vec<(&'static str, String)> {
        let bp_body = &self.blueprint.to_value()["blueprint"];
        let c_body = &self.contract.to_value()["contract"];
        let text = |v: &serde_json::Value| {
            String::from_utf8(canonical::to_vec(v).expect("canonical")).expect("utf-8")
        };
        vec![
            ("expert-public", self.expert.public().to_hex()),
            ("owner-public", self.owner.public().to_hex()),
            ("legal-public", self.legal.public().to_hex()),
            ("node-public", self.node.public().to_hex()),
            ("blueprint-canonical", text(bp_body)),
            ("blueprint-digest", self.blueprint.digest.to_hex()),
            ("blueprint-signature", self.blueprint.signature.to_hex()),
            ("contract-canonical", text(c_body)),
            ("contract-digest", self.contract.digest.to_hex()),
            (
                "owner-signature",
                self.contract.signatures[0].signature.to_hex(),
            ),
            (
                "legal-signature",
                self.contract.signatures[1].signature.to_hex(),
            ),
            ("contract-document", self.contract.to_pretty()),
        ]
    }
}
