//! Placement contracts (docs/contract-format.md, docs/grid.md): the `placement` member
//! is read, checked and signed like the rest of the body; a contract has `nodes` or a
//! placement; a node runs a placement contract only on an assignment [`admit`] accepts.
//! Each attack below is a forged, replayed or misplaced assignment object.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{json, Value};
use zos_contract::*;

fn no_node() -> VerifyContext<'static> {
    VerifyContext::offline(NOW)
}

fn malformed(doc: &Value, ctx: &VerifyContext) -> Vec<(String, String)> {
    verify_bytes(doc.to_string().as_bytes(), ctx)
        .reasons
        .into_iter()
        .map(|r| match r {
            Reason::Malformed { path, message } => (path, message),
            other => panic!("not malformed: {other:?}"),
        })
        .collect()
}

/// `body` as a document signed by every signer (so only the rule under test fails).
fn signed_body(body: &Value) -> Value {
    let digest = Digest::of(&canonical::to_vec(body).unwrap());
    let sigs: Vec<Value> = [owner(), legal(), budget()]
        .iter()
        .map(|k| json!({"signer": k.public(), "signature": k.sign(&digest)}))
        .collect();
    json!({"contract": body, "signatures": sigs})
}

fn placed_body() -> Value {
    placed(&[]).to_value()["contract"].clone()
}

#[test]
fn a_placement_contract_verifies_for_no_node_and_is_unassigned_on_a_node() {
    let doc = placed(&[owner(), legal(), budget()]);
    let body = &doc.to_value()["contract"];
    assert!(body.get("nodes").is_none(), "{body}");
    assert_eq!(
        body["placement"]["orchestrator"],
        json!(orchestrator().public())
    );
    let v = verify(&doc, &no_node());
    assert_eq!(v.reasons, vec![]);
    assert!(v.is_ok());
    // Read back from bytes: the same placement, the same digest.
    let back = SignedContract::from_bytes(doc.to_pretty().as_bytes(), &Limits::default()).unwrap();
    assert_eq!(back.placement, Some(placement()));
    assert_eq!(back.digest, doc.digest);
    assert!(verify(&back, &no_node()).is_ok());
    // On a node, verification alone never admits it: the assignment does.
    assert_eq!(
        verify(&doc, &ctx()).reasons,
        vec![Reason::Unassigned {
            node: node().public()
        }]
    );
}

#[test]
fn every_signer_signs_the_placement() {
    let doc = placed(&[owner(), legal(), budget()]);
    // An orchestrator swapped in after signing: every signature fails.
    let mut v = doc.to_value();
    v["contract"]["placement"]["orchestrator"] = json!(stranger().public());
    let got = verify_bytes(v.to_string().as_bytes(), &no_node());
    let codes: Vec<String> = got.reasons.iter().map(Reason::code).collect();
    assert!(
        codes.contains(&"owner_signature_missing".to_string()),
        "{codes:?}"
    );
    assert!(
        codes.contains(&"required_signer_missing".to_string()),
        "{codes:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| *c == "bad_signature").count(),
        3,
        "{codes:?}"
    );
    // Another farm, the same.
    let mut v = doc.to_value();
    v["contract"]["placement"]["farm"] = json!("8");
    assert!(!verify_bytes(v.to_string().as_bytes(), &no_node()).is_ok());
}

#[test]
fn node_contracts_keep_their_bytes_and_signatures() {
    // The worked example's document, signed before placements existed, as published.
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/contract-format.md"),
    )
    .unwrap();
    let start = doc.find("```text contract-document\n").unwrap() + 26;
    let text = &doc[start..start + doc[start..].find("\n```").unwrap()];
    let read = SignedContract::from_bytes(text.as_bytes(), &Limits::default()).unwrap();
    assert_eq!(read.placement, None);
    let digest_block = doc.find("```text contract-digest\n").unwrap() + 24;
    assert_eq!(read.digest.to_hex(), doc[digest_block..digest_block + 64]);
    let node: PublicKey = read.contract.nodes[0];
    let mut ctx = VerifyContext::offline(1_900_000_000);
    ctx.node = Some(node);
    assert_eq!(verify(&read, &ctx).reasons, vec![]);
    // Built again from its typed form, a node contract writes the same bytes.
    let again = SignedContract::new(read.contract.clone()).unwrap();
    assert_eq!(again.digest, read.digest);
    assert_eq!(again.to_value()["contract"], read.to_value()["contract"]);
}

#[test]
fn both_nodes_and_placement_is_refused() {
    let mut body = placed_body();
    body["nodes"] = json!([node().public()]);
    assert_eq!(
        malformed(&signed_body(&body), &no_node()),
        vec![(
            "$.contract".to_string(),
            "has both nodes and a placement: the owner names the nodes, or the placement's \
             orchestrator does"
                .to_string()
        )]
    );
    // Even an empty `nodes` beside a placement.
    body["nodes"] = json!([]);
    assert_eq!(
        malformed(&signed_body(&body), &no_node())[0].0,
        "$.contract"
    );
}

#[test]
fn neither_nodes_nor_placement_is_refused() {
    let mut body = placed_body();
    body.as_object_mut().unwrap().remove("placement");
    assert_eq!(
        malformed(&signed_body(&body), &no_node()),
        vec![(
            "$.contract".to_string(),
            "has neither nodes nor a placement".to_string()
        )]
    );
}

#[test]
fn placement_rules_refuse_with_their_paths() {
    let cases: [(&str, Value, &str); 7] = [
        ("/replicas", json!(0), "$.contract.placement.replicas"),
        ("/replicas", json!(65), "$.contract.placement.replicas"),
        (
            "/failover/after_s",
            json!(9),
            "$.contract.placement.failover.after_s",
        ),
        (
            "/failover/after_s",
            json!(86_401),
            "$.contract.placement.failover.after_s",
        ),
        ("/farm", json!("../9"), "$.contract.placement.farm"),
        (
            "/failover/mode",
            json!("teleport"),
            "$.contract.placement.failover.mode",
        ),
        ("/replicas", json!(-1), "$.contract.placement.replicas"),
    ];
    for (pointer, value, path) in cases {
        let mut body = placed_body();
        *body.pointer_mut(&format!("/placement{pointer}")).unwrap() = value.clone();
        let got = malformed(&signed_body(&body), &no_node());
        assert_eq!(got.len(), 1, "{pointer}={value}: {got:?}");
        assert_eq!(got[0].0, path, "{pointer}={value}: {got:?}");
    }
    // Unknown members, nulls and a missing failover are refused where they are.
    let mut body = placed_body();
    body["placement"]["zone"] = json!("eu");
    assert_eq!(
        malformed(&signed_body(&body), &no_node())[0].0,
        "$.contract.placement.zone"
    );
    let mut body = placed_body();
    body["placement"]["constraints"] = json!({"min_ssd_gib": null});
    assert_eq!(
        malformed(&signed_body(&body), &no_node())[0].0,
        "$.contract.placement.constraints.min_ssd_gib"
    );
    let mut body = placed_body();
    body["placement"]
        .as_object_mut()
        .unwrap()
        .remove("failover");
    assert_eq!(
        malformed(&signed_body(&body), &no_node())[0].0,
        "$.contract.placement"
    );
}

// ---------------------------------------------------------------------------------
// Assignments: each attack is carried out with a real signed object against `admit`.

fn farm() -> BTreeSet<PublicKey> {
    BTreeSet::from([node().public(), key(7).public()])
}

fn assignment(doc: &SignedContract, replica: u64, node: PublicKey, epoch: u64) -> Assignment {
    Assignment {
        contract: doc.contract.id.clone(),
        version: doc.contract.version,
        digest: doc.digest,
        replica,
        node,
        epoch,
        issued_at: NOW,
        orchestrator: orchestrator().public(),
    }
}

fn signed_by(a: Assignment, k: &SecretKey) -> SignedAssignment {
    SignedAssignment::sign(a, k).unwrap()
}

fn verified_placed() -> SignedContract {
    let doc = placed(&[owner(), legal(), budget()]);
    assert!(verify(&doc, &no_node()).is_ok());
    doc
}

#[test]
fn the_orchestrators_assignment_is_admitted() {
    let doc = verified_placed();
    let a = signed_by(assignment(&doc, 1, node().public(), 3), &orchestrator());
    // Through its record bytes, as a node reads it.
    let read =
        SignedAssignment::from_bytes(a.to_value().to_string().as_bytes(), &Limits::default())
            .unwrap();
    assert_eq!(read, a);
    let got = admit(Some(&read), &doc, &node().public(), &farm(), 3).unwrap();
    assert_eq!(
        got,
        Admitted {
            contract: "crm-acme".into(),
            version: 1,
            digest: doc.digest,
            replica: 1,
            epoch: 3,
        }
    );
    // A newer epoch than seen is admitted too (the replica moved here).
    assert!(admit(Some(&read), &doc, &node().public(), &farm(), 2).is_ok());
}

#[test]
fn attack_assignment_signed_by_another_key() {
    let doc = verified_placed();
    // The attacker names itself as orchestrator and signs validly.
    let mut a = assignment(&doc, 0, node().public(), 1);
    a.orchestrator = stranger().public();
    let forged = signed_by(a, &stranger());
    assert_eq!(
        admit(Some(&forged), &doc, &node().public(), &farm(), 0),
        Err(AssignmentRefusal::NotOrchestrator {
            signer: stranger().public(),
            orchestrator: orchestrator().public(),
        })
    );
    // It names the real orchestrator but signs with its own key.
    let forged = signed_by(assignment(&doc, 0, node().public(), 1), &stranger());
    let refusal = admit(Some(&forged), &doc, &node().public(), &farm(), 0).unwrap_err();
    assert_eq!(
        refusal,
        AssignmentRefusal::BadSignature {
            orchestrator: orchestrator().public()
        }
    );
    assert_eq!(refusal.code(), "bad_signature");
    // A genuine assignment for another node, re-addressed to this one after signing.
    let mut moved = signed_by(assignment(&doc, 0, key(7).public(), 1), &orchestrator());
    moved.assignment.node = node().public();
    assert!(matches!(
        admit(Some(&moved), &doc, &node().public(), &farm(), 0),
        Err(AssignmentRefusal::BadSignature { .. })
    ));
}

#[test]
fn attack_replayed_old_epoch() {
    let doc = verified_placed();
    // Epoch 1 put the replica here; it moved away at epoch 2 and the node saw that.
    let old = signed_by(assignment(&doc, 0, node().public(), 1), &orchestrator());
    assert!(admit(Some(&old), &doc, &node().public(), &farm(), 1).is_ok());
    assert_eq!(
        admit(Some(&old), &doc, &node().public(), &farm(), 2),
        Err(AssignmentRefusal::StaleEpoch {
            replica: 0,
            epoch: 1,
            seen: 2
        })
    );
    // Epoch 0 is never an assignment.
    let zero = signed_by(assignment(&doc, 0, node().public(), 0), &orchestrator());
    assert_eq!(
        admit(Some(&zero), &doc, &node().public(), &farm(), 0).map_err(|e| e.code()),
        Err("stale_epoch".to_string())
    );
}

#[test]
fn attack_node_outside_the_farm() {
    let doc = verified_placed();
    // The orchestrator (or its stolen key) assigns a node of another farm.
    let outsider = key(8);
    let a = signed_by(assignment(&doc, 0, outsider.public(), 1), &orchestrator());
    assert_eq!(
        admit(Some(&a), &doc, &outsider.public(), &farm(), 0),
        Err(AssignmentRefusal::OutsideFarm {
            node: outsider.public(),
            farm: "7".into()
        })
    );
    // An assignment for another node is not this node's.
    let a = signed_by(assignment(&doc, 0, key(7).public(), 1), &orchestrator());
    assert_eq!(
        admit(Some(&a), &doc, &node().public(), &farm(), 0),
        Err(AssignmentRefusal::WrongNode {
            assigned: key(7).public(),
            node: node().public()
        })
    );
}

#[test]
fn attack_assignment_for_another_version_or_replica() {
    let doc = verified_placed();
    // An assignment of version 1 held back and shown with version 2.
    let v1 = signed_by(assignment(&doc, 0, node().public(), 1), &orchestrator());
    let mut c2 = doc.contract.clone();
    c2.version = 2;
    let mut doc2 = SignedContract::placed(c2, placement()).unwrap();
    for k in [owner(), legal(), budget()] {
        doc2.sign(&k).unwrap();
    }
    assert!(matches!(
        admit(Some(&v1), &doc2, &node().public(), &farm(), 0),
        Err(AssignmentRefusal::WrongContract {
            got_version: 1,
            want_version: 2,
            ..
        })
    ));
    // The same version number with another body (digest).
    let mut a = assignment(&doc, 0, node().public(), 1);
    a.digest = Digest::of(b"another body");
    let a = signed_by(a, &orchestrator());
    assert_eq!(
        admit(Some(&a), &doc, &node().public(), &farm(), 0).map_err(|e| e.code()),
        Err("wrong_contract".to_string())
    );
    // A third replica of a two-replica placement.
    let a = signed_by(assignment(&doc, 2, node().public(), 1), &orchestrator());
    assert_eq!(
        admit(Some(&a), &doc, &node().public(), &farm(), 0),
        Err(AssignmentRefusal::ReplicaOutOfRange {
            replica: 2,
            replicas: 2
        })
    );
}

#[test]
fn attack_placement_contract_without_assignment() {
    let doc = verified_placed();
    assert_eq!(
        admit(None, &doc, &node().public(), &farm(), 0),
        Err(AssignmentRefusal::Unassigned {
            contract: "crm-acme".into()
        })
    );
    // A node contract takes no assignment, however well signed.
    let nodes = fully_signed();
    let a = signed_by(assignment(&nodes, 0, node().public(), 1), &orchestrator());
    assert_eq!(
        admit(Some(&a), &nodes, &node().public(), &farm(), 0),
        Err(AssignmentRefusal::NotPlacement {
            contract: "crm-acme".into()
        })
    );
}

#[test]
fn assignment_records_are_read_strictly() {
    let doc = verified_placed();
    let a = signed_by(assignment(&doc, 0, node().public(), 1), &orchestrator());
    let mut v = a.to_value();
    v["assignment"]["extra"] = json!(1);
    assert!(matches!(
        SignedAssignment::from_value(&v),
        Err(document::DocError::Malformed { path, .. }) if path == "$.assignment.extra"
    ));
    let mut v = a.to_value();
    v["assignment"]["epoch"] = json!(9_007_199_254_740_992u64);
    assert!(SignedAssignment::from_bytes(v.to_string().as_bytes(), &Limits::default()).is_err());
    let text = a.to_value().to_string();
    let dup = text.replacen("{\"assignment\":{", "{\"assignment\":{\"epoch\":9,", 1);
    assert!(SignedAssignment::from_bytes(dup.as_bytes(), &Limits::default()).is_err());
}
