//! Attack documents for "one spelling, one meaning" (issue #13 items 10): each is fed to
//! `verify_bytes` as a node would, and must be refused with its specific code and
//! nothing to deploy.

mod common;

use common::*;
use serde_json::{json, Value};
use zos_contract::canonical;
use zos_contract::*;

/// Signs `body` (any JSON, as written) with `keys`: the signatures an attacker with
/// those keys can produce over a body of their choosing.
fn sign_raw(body: &Value, keys: &[SecretKey]) -> Vec<Value> {
    let digest = Digest::of(&canonical::to_vec(body).unwrap());
    keys.iter()
        .map(|k| json!({"signer": k.public(), "signature": k.sign(&digest)}))
        .collect()
}

/// `verify_bytes` on `doc`; asserts nothing is deployable and returns the codes.
fn refused(doc: &[u8]) -> Vec<(String, String)> {
    let v = verify_bytes(doc, &ctx());
    assert!(!v.is_ok(), "accepted: {:?}", v.deployment);
    assert!(v.deployment.is_none(), "a deployment was built");
    assert!(v.clone().into_result().is_err());
    v.reasons
        .iter()
        .map(|r| {
            let path = match r {
                Reason::Malformed { path, .. } | Reason::Oversized { path, .. } => path.clone(),
                _ => String::new(),
            };
            (r.code(), path)
        })
        .collect()
}

fn malformed_at(path: &str) -> Vec<(String, String)> {
    vec![("malformed".to_string(), path.to_string())]
}

fn all_signers() -> [SecretKey; 3] {
    [owner(), legal(), budget()]
}

/// The contract body as a positional array: what serde's struct-from-sequence accepts.
fn contract_as_array(c: &Value) -> Value {
    json!([
        c["id"],
        c["version"],
        c["owner"],
        c["nodes"],
        c["blueprint"],
        c["params"],
        c["stakeholders"],
        c["threshold"],
        c["not_before"],
        c["expires"]
    ])
}

#[test]
fn document_as_array_is_malformed() {
    let v = fully_signed().to_value();
    let doc = json!([v["contract"], v["signatures"]]);
    assert_eq!(refused(doc.to_string().as_bytes()), malformed_at("$"));
}

#[test]
fn contract_body_as_array_is_malformed() {
    let v = fully_signed().to_value();
    let body = contract_as_array(&v["contract"]);
    let doc = json!({"contract": body, "signatures": sign_raw(&body, &all_signers())});
    assert_eq!(
        refused(doc.to_string().as_bytes()),
        malformed_at("$.contract")
    );
}

#[test]
fn stakeholder_as_array_is_malformed() {
    let mut body = fully_signed().to_value()["contract"].clone();
    body["stakeholders"][1] = json!([budget().public(), 1, false]);
    let doc = json!({"contract": body, "signatures": sign_raw(&body, &all_signers())});
    assert_eq!(
        refused(doc.to_string().as_bytes()),
        malformed_at("$.contract.stakeholders[1]")
    );
}

#[test]
fn signature_entry_as_array_is_malformed() {
    let mut v = fully_signed().to_value();
    let entry = v["signatures"][2].clone();
    v["signatures"][2] = json!([entry["signer"], entry["signature"]]);
    assert_eq!(
        refused(v.to_string().as_bytes()),
        malformed_at("$.signatures[2]")
    );
}

/// A blueprint document written by `edit` and signed by the expert as written.
fn blueprint_doc(edit: impl Fn(&mut Value)) -> Value {
    let mut body = blueprint_json();
    edit(&mut body);
    let digest = Digest::of(&canonical::to_vec(&body).unwrap());
    json!({"blueprint": body, "author": expert().public(), "signature": expert().sign(&digest)})
}

fn contract_with_blueprint(bp: Value) -> Vec<u8> {
    let mut body = fully_signed().to_value()["contract"].clone();
    body["blueprint"] = json!({ "embedded": bp });
    let doc = json!({"contract": body, "signatures": sign_raw(&body, &all_signers())});
    doc.to_string().into_bytes()
}

#[test]
fn blueprint_levels_as_arrays_are_malformed() {
    let e = "$.contract.blueprint.embedded";
    // The signed blueprint envelope.
    let bp = signed_blueprint().to_value();
    let arr = json!([bp["blueprint"], bp["author"], bp["signature"]]);
    assert_eq!(refused(&contract_with_blueprint(arr)), malformed_at(e));
    // A parameter declaration (an internally tagged enum).
    let bp = blueprint_doc(|b| b["params"]["users"] = json!(["int", 1, 1000, 10]));
    assert_eq!(
        refused(&contract_with_blueprint(bp)),
        malformed_at(&format!("{e}.blueprint.params.users"))
    );
}

#[test]
fn deployment_levels_as_arrays_are_invalid() {
    // Inside the template, a workload's flist and a mount as positional arrays. The
    // deployment is read from the expansion: `invalid_deployment` names the path.
    for (edit, path) in [
        (
            (|b: &mut Value| {
                let f = b["body"]["workloads"][0]["flist"].clone();
                b["body"]["workloads"][0]["flist"] =
                    json!([f["url"], f["sha256"], f["stores"], f["publishers"]]);
            }) as fn(&mut Value),
            "$.body.workloads[0].flist",
        ),
        (
            |b: &mut Value| b["body"]["workloads"][0]["mounts"][0] = json!(["data", "/data"]),
            "$.body.workloads[0].mounts[0]",
        ),
    ] {
        let bp = blueprint_doc(edit);
        let v = verify_bytes(&contract_with_blueprint(bp), &ctx());
        assert!(v.deployment.is_none() && !v.is_ok());
        match v.reasons.as_slice() {
            [Reason::InvalidDeployment { detail }] => {
                assert!(
                    detail.starts_with(&format!("malformed at {path}:")),
                    "{detail}"
                )
            }
            other => panic!("{path}: {other:?}"),
        }
    }
}

#[test]
fn cancellation_as_array_is_malformed() {
    let c = Cancellation {
        id: "crm-acme".into(),
        version: 2,
        owner: owner().public(),
    };
    let signed = SignedCancellation::sign(c, &owner()).unwrap();
    let good = serde_json::to_value(&signed).unwrap();
    assert!(ContractRecord::from_value(&good, &Limits::default()).is_ok());
    let body = json!(["crm-acme", 2, owner().public()]);
    let digest = Digest::of(&canonical::to_vec(&body).unwrap());
    let attack = json!({"cancellation": body, "signature": owner().sign(&digest)});
    match ContractRecord::from_value(&attack, &Limits::default()) {
        Err(document::DocError::Malformed { path, .. }) => assert_eq!(path, "$.cancellation"),
        other => panic!("{other:?}"),
    }
    let attack = json!([good["cancellation"], good["signature"]]);
    match ContractRecord::from_value(&attack, &Limits::default()) {
        Err(document::DocError::Malformed { path, .. }) => assert_eq!(path, "$"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn null_is_not_a_value_of_a_member() {
    let mut body = fully_signed().to_value()["contract"].clone();
    body["not_before"] = Value::Null;
    let doc = json!({"contract": body, "signatures": sign_raw(&body, &all_signers())});
    assert_eq!(
        refused(doc.to_string().as_bytes()),
        malformed_at("$.contract.not_before")
    );
}

#[test]
fn deep_nesting_is_oversized_before_parsing() {
    for depth in [10_000usize, 1_000_000, 33] {
        let mut doc = String::from(r#"{"contract":{"params":{"x":"#);
        doc.push_str(&"[".repeat(depth));
        doc.push_str(&"]".repeat(depth));
        doc.push_str("}}}");
        let bytes = doc.into_bytes();
        if bytes.len() > Limits::default().document_bytes {
            // Over the byte limit too: still oversized, whichever limit names it.
            assert_eq!(refused(&bytes)[0].0, "oversized");
            continue;
        }
        assert_eq!(
            refused(&bytes),
            vec![("oversized".to_string(), "$".to_string())],
            "depth {depth}"
        );
    }
    // A million levels inside the byte limit (an unclosed one): no stack overflow.
    let bytes = "[".repeat(200_000).into_bytes();
    assert_eq!(
        refused(&bytes),
        vec![("oversized".to_string(), "$".to_string())]
    );
}

#[test]
fn too_many_workloads_are_oversized() {
    let bp = blueprint_doc(|b| {
        let w = b["body"]["workloads"][0].clone();
        b["body"]["workloads"] = json!((0..65)
            .map(|i| {
                let mut w = w.clone();
                w["name"] = json!(format!("w{i}"));
                w["ports"] = json!([]);
                w
            })
            .collect::<Vec<_>>());
    });
    assert_eq!(
        refused(&contract_with_blueprint(bp)),
        vec![(
            "oversized".to_string(),
            "$.contract.blueprint.embedded.blueprint.body.workloads".to_string()
        )]
    );
}

/// A contract document whose body is `edit`ed in its canonical text, signed as edited.
fn signed_text(edit: impl Fn(&str) -> String) -> Vec<u8> {
    let body = fully_signed().to_value()["contract"].clone();
    let canon = edit(&String::from_utf8(canonical::to_vec(&body).unwrap()).unwrap());
    let digest = Digest::of(canon.as_bytes());
    let sigs: Vec<Value> = all_signers()
        .iter()
        .map(|k| json!({"signer": k.public(), "signature": k.sign(&digest)}))
        .collect();
    format!(
        r#"{{"contract":{canon},"signatures":{}}}"#,
        Value::from(sigs)
    )
    .into_bytes()
}

#[test]
fn integers_beyond_2_pow_53_minus_1_are_malformed() {
    for n in [
        "9007199254740992",    // 2^53: a double, but not a safe integer
        "1152921504606846976", // 2^60, exactly a double
        "1152921504606847000", // the shortest text of 2^60: not the integer written
        "-9007199254740992",
        "100000000000000000000000000000", // beyond u64: not a float either
    ] {
        let doc = signed_text(|c| {
            assert!(c.contains("\"expires\":1800003600"));
            c.replace("\"expires\":1800003600", &format!("\"expires\":{n}"))
        });
        assert_eq!(refused(&doc), malformed_at("$"), "{n}");
    }
    // The largest safe integer is fine where the type allows it.
    let mut c = contract();
    c.expires = Some((1 << 53) - 1);
    let v = verify(&signed(c, &all_signers()), &ctx());
    assert_eq!(v.reasons, vec![]);
}

#[test]
fn a_fraction_is_not_an_integer() {
    let doc = signed_text(|c| {
        assert!(c.ends_with(",\"version\":1}"));
        c.replace(",\"version\":1}", ",\"version\":1.0}")
    });
    assert_eq!(refused(&doc), malformed_at("$.contract.version"));
}

/// The contract, with only `legal` (weight 2, required) needed: budget is optional.
fn threshold_two() -> SignedContract {
    let mut c = contract();
    c.threshold = 2;
    signed(c, &[owner(), legal()])
}

#[test]
fn a_bad_optional_signature_does_not_veto() {
    let mut doc = threshold_two();
    let forged = stranger().sign(&doc.digest);
    doc.signatures.push(SignatureEntry {
        signer: budget().public(),
        signature: forged,
    });
    let v = verify(&doc, &ctx());
    assert_eq!(v.reasons, vec![]);
    assert!(v.is_ok());
    assert_eq!(v.weight, 2);
    assert_eq!(
        v.warnings,
        vec![Reason::BadSignature {
            signer: budget().public()
        }]
    );
}

#[test]
fn an_unknown_or_duplicate_entry_does_not_veto() {
    let mut doc = threshold_two();
    doc.signatures.push(SignatureEntry {
        signer: stranger().public(),
        signature: stranger().sign(&doc.digest),
    });
    let mut garbage = doc.signatures[0].clone();
    garbage.signature.0[0] ^= 1;
    doc.signatures.push(garbage);
    let v = verify(&doc, &ctx());
    assert_eq!(v.reasons, vec![]);
    assert!(v.is_ok());
    let owner = owner().public();
    assert_eq!(
        v.warnings,
        vec![
            Reason::UnknownSigner {
                signer: stranger().public()
            },
            Reason::DuplicateSignature { signer: owner },
            Reason::BadSignature { signer: owner }
        ]
    );
}

#[test]
fn a_bad_owner_or_required_signature_refuses_when_the_rules_are_unmet() {
    let mut doc = threshold_two();
    doc.signatures[0].signature.0[0] ^= 1;
    let v = verify(&doc, &ctx());
    assert_eq!(
        v.reasons,
        vec![
            Reason::BadSignature {
                signer: owner().public()
            },
            Reason::OwnerSignatureMissing {
                owner: owner().public()
            }
        ]
    );
    assert!(v.deployment.is_none() || !v.is_ok());
}

/// Every attack above (and a few plain cases), as bytes.
fn documents() -> Vec<(String, Vec<u8>)> {
    let mut docs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>| docs.push((name.to_string(), bytes));
    let full = fully_signed().to_value();
    let raw = |body: &Value| {
        json!({"contract": body, "signatures": sign_raw(body, &all_signers())})
            .to_string()
            .into_bytes()
    };
    add("accepted", fully_signed().to_pretty().into_bytes());
    add(
        "document-as-array",
        json!([full["contract"], full["signatures"]])
            .to_string()
            .into_bytes(),
    );
    add(
        "contract-as-array",
        raw(&contract_as_array(&full["contract"])),
    );
    let mut body = full["contract"].clone();
    body["stakeholders"][1] = json!([budget().public(), 1, false]);
    add("stakeholder-as-array", raw(&body));
    let mut v = full.clone();
    let e = v["signatures"][2].clone();
    v["signatures"][2] = json!([e["signer"], e["signature"]]);
    add("signature-entry-as-array", v.to_string().into_bytes());
    let bp = signed_blueprint().to_value();
    add(
        "blueprint-envelope-as-array",
        contract_with_blueprint(json!([bp["blueprint"], bp["author"], bp["signature"]])),
    );
    add(
        "declaration-as-array",
        contract_with_blueprint(blueprint_doc(|b| {
            b["params"]["users"] = json!(["int", 1, 1000, 10])
        })),
    );
    add(
        "flist-as-array",
        contract_with_blueprint(blueprint_doc(|b| {
            let f = b["body"]["workloads"][0]["flist"].clone();
            b["body"]["workloads"][0]["flist"] = json!([f["url"], f["sha256"], f["stores"]]);
        })),
    );
    add(
        "mount-as-array",
        contract_with_blueprint(blueprint_doc(|b| {
            b["body"]["workloads"][0]["mounts"][0] = json!(["data", "/data"])
        })),
    );
    let mut body = full["contract"].clone();
    body["not_before"] = Value::Null;
    add("null-member", raw(&body));
    for depth in [33usize, 10_000] {
        let mut doc = String::from(r#"{"contract":{"params":{"x":"#);
        doc.push_str(&"[".repeat(depth));
        doc.push_str(&"]".repeat(depth));
        doc.push_str("}}}");
        add(&format!("nesting-{depth}"), doc.into_bytes());
    }
    add("unclosed-200000", "[".repeat(200_000).into_bytes());
    add(
        "workloads-65",
        contract_with_blueprint(blueprint_doc(|b| {
            let w = b["body"]["workloads"][0].clone();
            b["body"]["workloads"] = json!((0..65)
                .map(|i| {
                    let mut w = w.clone();
                    w["name"] = json!(format!("w{i}"));
                    w["ports"] = json!([]);
                    w
                })
                .collect::<Vec<_>>());
        })),
    );
    for n in [
        "9007199254740991",
        "9007199254740992",
        "1152921504606846976",
        "1152921504606847000",
        "100000000000000000000000000000",
    ] {
        add(
            &format!("expires-{n}"),
            signed_text(|c| c.replace("\"expires\":1800003600", &format!("\"expires\":{n}"))),
        );
    }
    add(
        "fraction",
        signed_text(|c| c.replace(",\"version\":1}", ",\"version\":1.0}")),
    );
    add(
        "infinite",
        signed_text(|c| c.replace(",\"version\":1}", ",\"version\":1e400}")),
    );
    let mut doc = threshold_two();
    doc.signatures.push(SignatureEntry {
        signer: budget().public(),
        signature: stranger().sign(&doc.digest),
    });
    add("bad-optional-signature", doc.to_pretty().into_bytes());
    let mut doc = threshold_two();
    doc.signatures.push(SignatureEntry {
        signer: stranger().public(),
        signature: stranger().sign(&doc.digest),
    });
    let mut garbage = doc.signatures[0].clone();
    garbage.signature.0[0] ^= 1;
    doc.signatures.push(garbage);
    add("unknown-and-duplicate", doc.to_pretty().into_bytes());
    let mut doc = threshold_two();
    doc.signatures[0].signature.0[0] ^= 1;
    add("bad-owner-signature", doc.to_pretty().into_bytes());
    let mut doc = fully_signed();
    doc.signatures[1].signature.0[0] ^= 1;
    add("bad-required-signature", doc.to_pretty().into_bytes());
    add(
        "owner-missing",
        signed(contract(), &[legal(), budget()])
            .to_pretty()
            .into_bytes(),
    );
    let mut c = contract();
    c.params.insert("users".into(), json!(5000));
    c.params.insert("colour".into(), json!("red"));
    add(
        "params-out-of-bounds",
        signed(c, &all_signers()).to_pretty().into_bytes(),
    );
    let text = full.to_string();
    add(
        "duplicate-key",
        text.replacen("{\"contract\":{", "{\"contract\":{\"id\":\"x\",", 1)
            .into_bytes(),
    );
    add("trailing-bytes", format!("{text} {{}}").into_bytes());
    add(
        "lone-surrogate",
        text.replacen("\"crm-acme\"", "\"\\ud800\"", 1).into_bytes(),
    );
    let mut body = full["contract"].clone();
    body["params"]["colour"] = json!("x".repeat(4097));
    add("long-string", raw(&body));
    let mut body = full["contract"].clone();
    body["nodes"] = json!(vec![node().public(); 257]);
    add("too-many-items", raw(&body));
    // Placement contracts (a node verifying one without an assignment: `unassigned`).
    let placed = placed(&all_signers());
    add("placement-on-a-node", placed.to_pretty().into_bytes());
    let pbody = placed.to_value()["contract"].clone();
    let mut body = pbody.clone();
    body["placement"]["constraints"] = json!({"min_ssd_gib": 10, "min_memory_mib": 512});
    add("placement-constraints", raw(&body));
    let mut body = pbody.clone();
    body["nodes"] = json!([node().public()]);
    add("placement-and-nodes", raw(&body));
    let mut body = pbody.clone();
    body.as_object_mut().unwrap().remove("placement");
    add("neither-nodes-nor-placement", raw(&body));
    for (name, pointer, value) in [
        ("placement-replicas-0", "/placement/replicas", json!(0)),
        ("placement-replicas-65", "/placement/replicas", json!(65)),
        (
            "placement-after-s-9",
            "/placement/failover/after_s",
            json!(9),
        ),
        (
            "placement-after-s-86401",
            "/placement/failover/after_s",
            json!(86_401),
        ),
        ("placement-farm-hidden", "/placement/farm", json!(".x")),
        (
            "placement-mode-unknown",
            "/placement/failover/mode",
            json!("teleport"),
        ),
        (
            "placement-constraint-null",
            "/placement/constraints",
            json!({"min_ssd_gib": null}),
        ),
        ("placement-as-array", "/placement", json!(["7", 2])),
    ] {
        let mut body = pbody.clone();
        match body.pointer_mut(pointer) {
            Some(v) => *v = value,
            None => body["placement"]["constraints"] = value,
        }
        add(name, raw(&body));
    }
    docs
}

/// crosscheck.py, written from docs/contract-format.md alone, reads every document
/// above with the same reason and warning codes as `verify_bytes`.
#[test]
fn the_python_reader_refuses_the_same_documents_for_the_same_reasons() {
    let dir = tempfile::Builder::new()
        .prefix("zt-crosscheck-")
        .tempdir()
        .unwrap();
    let codes = |rs: &[Reason]| {
        let set: std::collections::BTreeSet<String> = rs.iter().map(Reason::code).collect();
        set.into_iter().collect::<Vec<_>>()
    };
    let mut want = serde_json::Map::new();
    let mut paths = serde_json::Map::new();
    for (name, bytes) in documents() {
        let v = verify_bytes(&bytes, &ctx());
        want.insert(
            name.clone(),
            json!({"reasons": codes(&v.reasons), "warnings": codes(&v.warnings)}),
        );
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, &bytes).unwrap();
        paths.insert(name, json!(path));
    }
    let manifest = dir.path().join("manifest.json");
    std::fs::write(
        &manifest,
        json!({"now": NOW, "node": node().public(), "documents": paths}).to_string(),
    )
    .unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crosscheck.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .arg("--verify")
        .arg(&manifest)
        .output()
        .expect("python3 runs (cargo xtask test installs it)");
    assert!(
        out.status.success(),
        "crosscheck.py --verify failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut disagree = Vec::new();
    for (name, w) in &want {
        if got[name] != *w {
            disagree.push(format!("{name}: rust {w}, python {}", got[name]));
        }
    }
    assert!(disagree.is_empty(), "{}", disagree.join("\n"));
    // The cases mean what they say (not just that both readers agree).
    assert_eq!(want["accepted"], json!({"reasons": [], "warnings": []}));
    assert_eq!(want["contract-as-array"]["reasons"], json!(["malformed"]));
    assert_eq!(want["nesting-10000"]["reasons"], json!(["oversized"]));
    assert_eq!(want["workloads-65"]["reasons"], json!(["oversized"]));
    assert_eq!(
        want["bad-optional-signature"],
        json!({"reasons": [], "warnings": ["bad_signature"]})
    );
    assert_eq!(
        want["placement-on-a-node"],
        json!({"reasons": ["unassigned"], "warnings": []})
    );
    assert_eq!(
        want["placement-constraints"]["reasons"],
        json!(["unassigned"])
    );
    for name in [
        "placement-and-nodes",
        "neither-nodes-nor-placement",
        "placement-replicas-0",
        "placement-replicas-65",
        "placement-after-s-9",
        "placement-after-s-86401",
        "placement-farm-hidden",
        "placement-mode-unknown",
        "placement-constraint-null",
        "placement-as-array",
    ] {
        let reasons = want[name]["reasons"].as_array().unwrap();
        assert!(reasons.contains(&json!("malformed")), "{name}: {reasons:?}");
    }
}
