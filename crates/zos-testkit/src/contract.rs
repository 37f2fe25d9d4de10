//! Contract documents for tests: a blueprint signed by its expert, a contract for a
//! node, signed by whom the test says (owner, stakeholders, an attacker), and
//! cancellations. Wrapping them in notary records stays with the callers (the kit does
//! not depend on zos-notary, whose own tests use the kit's etcd).

use std::collections::BTreeMap;

use serde_json::Value;
use zos_contract::{
    Blueprint, BlueprintRef, Cancellation, Contract, Limits, PublicKey, SecretKey, SignatureEntry,
    SignedCancellation, SignedContract,
};

/// When the kit's contracts expire: far after any test run.
pub const EXPIRES: u64 = 4_000_000_000;

/// `body` (a blueprint's JSON: name, version, params, body) signed by `expert` under
/// the default limits, as the embedded value a contract carries.
pub fn signed_blueprint(expert: &SecretKey, body: Value) -> Value {
    let bp: Blueprint = serde_json::from_value(body).expect("a blueprint");
    bp.sign(expert, &Limits::default())
        .expect("signing the blueprint")
        .to_value()
}

/// A contract `id` at `version` of `owner` for `node`, embedding `blueprint`: no
/// parameters, no stakeholders, expiring at [`EXPIRES`]. Tests set the rest.
pub fn contract(
    owner: PublicKey,
    node: PublicKey,
    id: &str,
    version: u64,
    blueprint: Value,
) -> Contract {
    Contract {
        id: id.into(),
        version,
        owner,
        nodes: vec![node],
        blueprint: BlueprintRef::Embedded(blueprint),
        params: BTreeMap::new(),
        stakeholders: vec![],
        threshold: 0,
        not_before: None,
        expires: Some(EXPIRES),
    }
}

/// `c` as a document signed by `signers`, in order.
pub fn signed(c: Contract, signers: &[&SecretKey]) -> SignedContract {
    let mut doc = SignedContract::new(c).expect("a contract document");
    for k in signers {
        doc.sign(k).expect("a signer the document names");
    }
    doc
}

/// `doc`'s contract changed by `edit`, signed again by `signers`.
pub fn resign(
    doc: &SignedContract,
    edit: impl FnOnce(&mut Contract),
    signers: &[&SecretKey],
) -> SignedContract {
    let mut c = doc.contract.clone();
    edit(&mut c);
    signed(c, signers)
}

/// Adds `key`'s signature over `doc`'s digest whether or not the document names `key`
/// (a stakeholder of the running version consenting to a document that drops it).
pub fn cosign_anyway(doc: &mut SignedContract, key: &SecretKey) {
    doc.signatures.retain(|s| s.signer != key.public());
    doc.signatures.push(SignatureEntry {
        signer: key.public(),
        signature: key.sign(&doc.digest),
    });
}

/// `owner`'s signed cancellation of contract `id` at `version`, as JSON.
pub fn cancellation(owner: &SecretKey, id: &str, version: u64) -> Value {
    let c = SignedCancellation::sign(
        Cancellation {
            id: id.into(),
            version,
            owner: owner.public(),
        },
        owner,
    )
    .expect("signing the cancellation");
    serde_json::to_value(&c).expect("a cancellation as JSON")
}
