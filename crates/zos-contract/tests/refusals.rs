//! Every refusal reason, each asserted exactly, and the happy path.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::json;
use zos_contract::verify::{verify_cancellation, CancelRefusal};
use zos_contract::*;

fn reasons(doc: &SignedContract, ctx: &VerifyContext) -> Vec<Reason> {
    let v = verify(doc, ctx);
    assert!(v.deployment.is_none() || !v.reasons.is_empty() || v.is_ok());
    v.reasons
}

#[test]
fn fully_signed_contract_is_accepted_and_expanded() {
    let v = verify(&fully_signed(), &ctx());
    assert_eq!(v.reasons, vec![]);
    assert_eq!((v.weight, v.threshold), (3, 3));
    let accepted = v.into_result().unwrap();
    let w = &accepted.deployment.workloads[0];
    assert_eq!(
        w.entrypoint,
        ["/bin/crm", "--users", "100", "--region", "ch"]
    );
    assert_eq!(w.memory_mib, 164);
    assert_eq!(accepted.deployment.volumes[0].size_mib, 1100);
    assert_eq!(accepted.blueprint, signed_blueprint().digest);
}

#[test]
fn absent_optional_signer_is_not_counted_and_not_an_error() {
    let mut c = contract();
    c.threshold = 2;
    let doc = signed(c, &[owner(), legal()]);
    let v = verify(&doc, &ctx());
    assert_eq!(v.reasons, vec![]);
    assert_eq!(v.weight, 2);
}

#[test]
fn threshold_not_met() {
    let mut c = contract();
    c.stakeholders[0].required = false;
    let doc = signed(c, &[owner(), budget()]);
    assert_eq!(
        reasons(&doc, &ctx()),
        vec![Reason::ThresholdNotMet { have: 1, need: 3 }]
    );
}

#[test]
fn required_signer_missing() {
    let doc = signed(contract(), &[owner(), budget()]);
    assert_eq!(
        reasons(&doc, &ctx()),
        vec![
            Reason::RequiredSignerMissing {
                signer: legal().public()
            },
            Reason::ThresholdNotMet { have: 1, need: 3 }
        ]
    );
}

#[test]
fn owner_signature_missing() {
    let doc = signed(contract(), &[legal(), budget()]);
    assert_eq!(
        reasons(&doc, &ctx()),
        vec![Reason::OwnerSignatureMissing {
            owner: owner().public()
        }]
    );
}

#[test]
fn bad_signature() {
    let mut doc = fully_signed();
    doc.signatures[1].signature.0[0] ^= 1;
    assert_eq!(
        reasons(&doc, &ctx()),
        vec![
            Reason::BadSignature {
                signer: legal().public()
            },
            Reason::RequiredSignerMissing {
                signer: legal().public()
            },
            Reason::ThresholdNotMet { have: 1, need: 3 }
        ]
    );
}

#[test]
fn unknown_and_duplicate_signers() {
    let mut doc = fully_signed();
    let forged = stranger().sign(&doc.digest);
    doc.signatures.push(SignatureEntry {
        signer: stranger().public(),
        signature: forged,
    });
    doc.signatures.push(doc.signatures[0].clone());
    // The counted signatures meet the rules: the others are warnings, not a veto.
    let v = verify(&doc, &ctx());
    assert_eq!(v.reasons, vec![]);
    assert_eq!(
        v.warnings,
        vec![
            Reason::UnknownSigner {
                signer: stranger().public()
            },
            Reason::DuplicateSignature {
                signer: owner().public()
            }
        ]
    );
    // When the rules are not met, they are reasons with the unmet rule.
    doc.signatures.remove(0);
    doc.signatures.retain(|s| s.signer != legal().public());
    assert_eq!(
        reasons(&doc, &ctx()),
        vec![
            Reason::UnknownSigner {
                signer: stranger().public()
            },
            Reason::RequiredSignerMissing {
                signer: legal().public()
            },
            Reason::ThresholdNotMet { have: 1, need: 3 }
        ]
    );
    // Signing through the API is refused outright.
    let mut doc = fully_signed();
    assert_eq!(
        doc.sign(&stranger()),
        Err(ContractError::NotASigner(stranger().public()))
    );
}

#[test]
fn parameter_out_of_bounds_unknown_and_wrong_type() {
    let mut c = contract();
    c.params.insert("users".into(), json!(5000));
    c.params.insert("region".into(), json!("us"));
    c.params.insert("colour".into(), json!("red"));
    let doc = signed(c, &[owner(), legal(), budget()]);
    let details: Vec<String> = reasons(&doc, &ctx())
        .into_iter()
        .map(|r| match r {
            Reason::ParamOutOfBounds { detail } => detail,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        details,
        [
            "parameter \"colour\" is not declared by the blueprint",
            "parameter \"region\": \"us\" is not one of [\"ch\", \"be\"]",
            "parameter \"users\": 5000 is not in 1..=1000",
        ]
    );
}

#[test]
fn blueprint_signature_invalid() {
    let mut c = contract();
    let mut bp = signed_blueprint().to_value();
    bp["blueprint"]["body"]["workloads"][0]["cpu"] = json!(64);
    c.blueprint = BlueprintRef::Embedded(bp);
    let doc = signed(c, &[owner(), legal(), budget()]);
    assert_eq!(
        reasons(&doc, &ctx()),
        vec![Reason::BlueprintSignatureInvalid {
            detail: format!("signature by {} does not verify", expert().public())
        }]
    );
}

#[test]
fn blueprint_by_digest_resolves_or_is_refused() {
    let bp = signed_blueprint();
    let mut c = contract();
    c.blueprint = BlueprintRef::Sha256(bp.digest);
    let doc = signed(c, &[owner(), legal(), budget()]);
    assert_eq!(
        reasons(&doc, &ctx()),
        vec![Reason::BlueprintUnresolved { digest: bp.digest }]
    );
    let resolver = move |d: &Digest| (*d == bp.digest).then(|| bp.clone());
    let mut ctx = ctx();
    ctx.resolve_blueprint = &resolver;
    assert_eq!(reasons(&doc, &ctx), vec![]);
}

#[test]
fn untrusted_blueprint_author() {
    let trusted = BTreeSet::from([stranger().public()]);
    let mut ctx = ctx();
    ctx.trusted_authors = Some(&trusted);
    assert_eq!(
        reasons(&fully_signed(), &ctx),
        vec![Reason::BlueprintAuthorUntrusted {
            author: expert().public()
        }]
    );
}

#[test]
fn replay_of_older_or_equal_version() {
    let doc = fully_signed();
    let mut ctx = ctx();
    ctx.accepted = Some((1, Digest::of(b"another document")));
    assert_eq!(
        reasons(&doc, &ctx),
        vec![Reason::Replay {
            version: 1,
            accepted: 1
        }]
    );
    ctx.accepted = Some((7, doc.digest));
    assert_eq!(
        reasons(&doc, &ctx),
        vec![Reason::Replay {
            version: 1,
            accepted: 7
        }]
    );
    // The very document already accepted is not a replay: a node re-verifies on restart.
    ctx.accepted = Some((1, doc.digest));
    assert_eq!(reasons(&doc, &ctx), vec![]);
}

#[test]
fn not_yet_valid_and_expired() {
    let doc = fully_signed();
    let mut early = ctx();
    early.now = NOW - 7200;
    assert_eq!(
        reasons(&doc, &early),
        vec![Reason::NotYetValid {
            not_before: NOW - 3600,
            now: NOW - 7200
        }]
    );
    let mut late = ctx();
    late.now = NOW + 3600;
    assert_eq!(
        reasons(&doc, &late),
        vec![Reason::Expired {
            expires: NOW + 3600,
            now: NOW + 3600
        }]
    );
}

#[test]
fn wrong_node() {
    let mut ctx = ctx();
    ctx.node = Some(stranger().public());
    assert_eq!(
        reasons(&fully_signed(), &ctx),
        vec![Reason::WrongNode {
            node: stranger().public()
        }]
    );
}

#[test]
fn malformed_documents_name_their_json_path() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "$"),
        (
            br#"{"contract": {}, "signatures": [], "extra": 1}"#.to_vec(),
            "$.extra",
        ),
        (br#"{"contract": {"id": "x", "id": "y"}}"#.to_vec(), "$"),
    ];
    for (bytes, path) in cases {
        match verify_bytes(&bytes, &ctx()).reasons.as_slice() {
            [Reason::Malformed { path: p, .. }] => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
    }
    let mut v = fully_signed().to_value();
    v["contract"]["stakeholders"][1]["weight"] = json!("heavy");
    match verify_bytes(v.to_string().as_bytes(), &ctx())
        .reasons
        .as_slice()
    {
        [Reason::Malformed { path, message }] => {
            assert_eq!(path, "$.contract.stakeholders[1].weight");
            assert!(message.contains("invalid type"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let mut v = fully_signed().to_value();
    v["contract"]["workloads"] = json!([]);
    match verify_bytes(v.to_string().as_bytes(), &ctx())
        .reasons
        .as_slice()
    {
        [Reason::Malformed { path, message }] => {
            assert_eq!(path, "$.contract.workloads");
            assert!(message.contains("unknown field `workloads`"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_contract_rules() {
    let mut c = contract();
    c.id = "Bad Id".into();
    c.version = 0;
    c.threshold = 9;
    c.stakeholders[1].key = owner().public();
    let doc = signed(c, &[owner(), legal()]);
    let paths: Vec<String> = reasons(&doc, &ctx())
        .into_iter()
        .filter_map(|r| match r {
            Reason::Malformed { path, .. } => Some(path),
            _ => None,
        })
        .collect();
    assert_eq!(
        paths,
        [
            "$.contract.id",
            "$.contract.version",
            "$.contract.stakeholders[1].key",
            "$.contract.threshold"
        ]
    );
}

#[test]
fn oversized_document_string_and_list() {
    let limits = Limits::default();
    let big = vec![b' '; limits.document_bytes + 1];
    assert_eq!(
        verify_bytes(&big, &ctx()).reasons,
        vec![Reason::Oversized {
            what: "document size".into(),
            limit: limits.document_bytes,
            actual: limits.document_bytes + 1,
            path: "$".into()
        }]
    );
    let mut v = fully_signed().to_value();
    v["contract"]["id"] = json!("x".repeat(limits.string_chars + 1));
    assert_eq!(
        verify_bytes(v.to_string().as_bytes(), &ctx()).reasons,
        vec![Reason::Oversized {
            what: "string length".into(),
            limit: limits.string_chars,
            actual: limits.string_chars + 1,
            path: "$.contract.id".into()
        }]
    );
    let mut v = fully_signed().to_value();
    v["signatures"] = json!(vec![0; limits.collection_items + 1]);
    assert!(matches!(
        verify_bytes(v.to_string().as_bytes(), &ctx()).reasons.as_slice(),
        [Reason::Oversized { path, .. }] if path == "$.signatures"
    ));
}

#[test]
fn an_embedded_blueprint_is_within_the_limits_of_the_verification() {
    // Read within bigger limits, or built in code: verify checks the embedded blueprint
    // against its own limits (verify_bytes skips that only for the document it parsed).
    let limits = Limits::default();
    let mut bp = signed_blueprint().to_value();
    bp["blueprint"]["description"] = json!("x".repeat(limits.string_chars + 1));
    let mut c = contract();
    c.blueprint = BlueprintRef::Embedded(bp);
    let oversized = vec![Reason::Oversized {
        what: "string length".into(),
        limit: limits.string_chars,
        actual: limits.string_chars + 1,
        path: "$.contract.blueprint.embedded.blueprint.description".into(),
    }];
    let built = signed(c, &[owner(), legal(), budget()]);
    assert_eq!(reasons(&built, &ctx()), oversized);
    let bigger = Limits {
        string_chars: 2 * limits.string_chars,
        ..limits
    };
    let read = SignedContract::from_value(&built.to_value(), &bigger).unwrap();
    assert_eq!(reasons(&read, &ctx()), oversized);
    let bytes = built.to_value().to_string();
    assert_eq!(verify_bytes(bytes.as_bytes(), &ctx()).reasons, oversized);
}

#[test]
fn too_many_workloads_after_expansion() {
    let mut bp = blueprint_json();
    let w = bp["body"]["workloads"][0].clone();
    let many: Vec<_> = (0..65)
        .map(|i| {
            let mut w = w.clone();
            w["name"] = json!(format!("w{i}"));
            w["ports"] = json!([]);
            w
        })
        .collect();
    bp["body"]["workloads"] = json!(many);
    let bp: Blueprint = serde_json::from_value(bp).unwrap();
    // Counted in the template, before it is expanded (section 7: `oversized`).
    assert_eq!(
        bp.sign(&expert(), &Limits::default()),
        Err(BlueprintError::Document(document::DocError::Oversized {
            what: "workload count",
            limit: 64,
            actual: 65,
            path: "$.body.workloads".into()
        }))
    );
}

#[test]
fn invalid_deployment_is_refused_at_sign_time_and_at_verify_time() {
    // A blueprint whose body breaks for some parameter values: signed (the example
    // values work) but refused for a contract whose values break it.
    let mut bp = blueprint_json();
    bp["body"]["workloads"][0]["memory_mib"] = json!("{{ 1010 - users }}");
    let signed_bp = serde_json::from_value::<Blueprint>(bp)
        .unwrap()
        .sign(&expert(), &Limits::default())
        .unwrap();
    let mut c = contract();
    c.blueprint = BlueprintRef::Embedded(signed_bp.to_value());
    c.params.insert("users".into(), json!(1000));
    let doc = signed(c, &[owner(), legal(), budget()]);
    assert_eq!(
        reasons(&doc, &ctx()),
        vec![Reason::InvalidDeployment {
            detail: "$.body.workloads[0].memory_mib: must be at least 16".into()
        }]
    );
}

#[test]
fn every_reason_has_a_stable_code() {
    assert_eq!(
        Reason::ThresholdNotMet { have: 1, need: 2 }.code(),
        "threshold_not_met"
    );
    assert_eq!(
        Reason::Replay {
            version: 1,
            accepted: 1
        }
        .code(),
        "replay"
    );
}

#[test]
fn cancellation_rules() {
    let cancel = |version, key: &SecretKey| {
        SignedCancellation::sign(
            Cancellation {
                id: "crm-acme".into(),
                version,
                owner: key.public(),
            },
            key,
        )
        .unwrap()
    };
    let o = owner().public();
    assert_eq!(
        verify_cancellation(&cancel(2, &owner()), "crm-acme", &o, 1),
        Ok(())
    );
    assert_eq!(
        verify_cancellation(&cancel(1, &owner()), "crm-acme", &o, 1),
        Err(CancelRefusal::Replay {
            version: 1,
            running: 1
        })
    );
    assert_eq!(
        verify_cancellation(&cancel(2, &stranger()), "crm-acme", &o, 1),
        Err(CancelRefusal::NotOwner {
            got: stranger().public(),
            want: o
        })
    );
    assert!(matches!(
        verify_cancellation(&cancel(2, &owner()), "other", &o, 1),
        Err(CancelRefusal::WrongContract { .. })
    ));
    let mut forged = cancel(2, &owner());
    forged.cancellation.version = 3;
    assert_eq!(
        verify_cancellation(&forged, "crm-acme", &o, 1),
        Err(CancelRefusal::BadSignature)
    );
}
