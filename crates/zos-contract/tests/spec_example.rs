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
