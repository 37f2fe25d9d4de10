//! docs/contract-format.md's worked example matches the implementation, byte for byte,
//! and an independent Python implementation written from that document agrees.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use zos_contract::spec_example::Example;
use zos_contract::{verify, VerifyContext};

fn doc_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/contract-format.md")
}

/// The ```text NAME blocks of the document.
fn doc_blocks() -> BTreeMap<String, String> {
    let doc = std::fs::read_to_string(doc_path()).expect("docs/contract-format.md exists");
    let mut blocks = BTreeMap::new();
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("```text ") {
        let after = &rest[start + 8..];
        let (name, body) = after.split_once('\n').expect("a block has a body");
        let end = body.find("\n```").expect("a block ends");
        blocks.insert(name.trim().to_string(), body[..end].to_string());
        rest = &body[end + 4..];
    }
    blocks
}

#[test]
fn document_matches_the_implementation() {
    let blocks = doc_blocks();
    let ex = Example::build();
    for (name, value) in ex.blocks() {
        assert_eq!(
            blocks.get(name).map(String::as_str),
            Some(value.as_str()),
            "block {name} of docs/contract-format.md is stale: regenerate with \
             `cargo run -p zos-contract --example spec_example`"
        );
    }
    let mut ctx = VerifyContext::offline(1_900_000_000);
    ctx.node = Some(ex.node.public());
    let v = verify(&ex.contract, &ctx);
    assert_eq!(v.reasons, vec![]);
    let w = &v.deployment.unwrap().workloads[0];
    assert_eq!(w.entrypoint, ["/hello", "--users", "7"]);
    assert_eq!(w.memory_mib, 39);
}

#[test]
fn independent_python_implementation_agrees() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/crosscheck.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(doc_path())
        .output()
        .expect("python3 runs (cargo xtask test installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "crosscheck.py failed (it needs python3 with the `cryptography` package):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("crosscheck: all values agree"), "{stdout}");
}

/// Section 9.1's placement contract and assignment, built from the worked example.
fn placement_blocks() -> Vec<(&'static str, String)> {
    use zos_contract::{
        admit, canonical, Assignment, Constraints, Failover, FailoverMode, Placement, SecretKey,
        SignedAssignment, SignedContract,
    };
    let ex = Example::build();
    let orchestrator = SecretKey::from_seed([6; 32]);
    let mut c = ex.contract.contract.clone();
    c.id = "hello-2".into();
    c.nodes.clear();
    let placement = Placement {
        farm: "7".into(),
        replicas: 2,
        orchestrator: orchestrator.public(),
        failover: Failover {
            mode: FailoverMode::Move,
            after_s: 60,
        },
        constraints: Some(Constraints {
            min_ssd_gib: Some(10),
            min_memory_mib: None,
        }),
    };
    let mut doc = SignedContract::placed(c, placement).unwrap();
    doc.sign(&ex.owner).unwrap();
    doc.sign(&ex.legal).unwrap();
    let v = verify(&doc, &VerifyContext::offline(1_900_000_000));
    assert_eq!(v.reasons, vec![]);
    let assignment = Assignment {
        contract: "hello-2".into(),
        version: 1,
        digest: doc.digest,
        replica: 0,
        node: ex.node.public(),
        epoch: 1,
        issued_at: 1_900_000_000,
        orchestrator: orchestrator.public(),
    };
    let signed = SignedAssignment::sign(assignment.clone(), &orchestrator).unwrap();
    let farm = std::collections::BTreeSet::from([ex.node.public()]);
    assert!(admit(Some(&signed), &doc, &ex.node.public(), &farm, 0).is_ok());
    let text = |v: &serde_json::Value| String::from_utf8(canonical::to_vec(v).unwrap()).unwrap();
    let body = &doc.to_value()["contract"];
    vec![
        ("orchestrator-public", orchestrator.public().to_hex()),
        ("placement-contract-canonical", text(body)),
        ("placement-contract-digest", doc.digest.to_hex()),
        (
            "placement-owner-signature",
            doc.signatures[0].signature.to_hex(),
        ),
        (
            "placement-legal-signature",
            doc.signatures[1].signature.to_hex(),
        ),
        (
            "assignment-canonical",
            text(&serde_json::to_value(&assignment).unwrap()),
        ),
        (
            "assignment-digest",
            SignedAssignment::digest_of(&assignment).unwrap().to_hex(),
        ),
        ("assignment-signature", signed.signature.to_hex()),
    ]
}

#[test]
fn placement_example_matches_the_document() {
    let blocks = doc_blocks();
    let mut stale = String::new();
    for (name, value) in placement_blocks() {
        if blocks.get(name) != Some(&value) {
            stale.push_str(&format!("```text {name}\n{value}\n```\n\n"));
        }
    }
    assert!(
        stale.is_empty(),
        "docs/contract-format.md section 9.1 is stale; the blocks are:\n\n{stale}"
    );
}
