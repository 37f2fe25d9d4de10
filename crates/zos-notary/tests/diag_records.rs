//! Diagnostic requests and answers as notary records: who may author them, and the
//! strict request body (docs/diagnostics.md). The node's authorization is zosd's; what
//! the notary itself guarantees is tested here, against a real `dir://` tree.

use serde_json::json;
use zos_contract::SecretKey;
use zos_notary::record::{
    DiagAnswer, DiagRefusal, DiagRequest, DiagScope, RefusalCode, MAX_INLINE_BUNDLE,
    MAX_REQUEST_WINDOW,
};
use zos_notary::{Notary, NotaryError, NotaryKey, Record, RecordError, MAX_RECORD_BYTES};

fn sk(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

/// A probe spec stand-in: the notary is generic over it; zos-probe's is internally
/// tagged and strict the same way.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "probe", rename_all = "snake_case", deny_unknown_fields)]
enum Probe {
    Ping { count: u8 },
}

fn request(node: &SecretKey, id: &str) -> serde_json::Value {
    json!({
        "id": id,
        "node": node.public(),
        "scope": {"workload": {"contract": "c1", "workload": "web"}},
        "action": {"probe": {"probe": "ping", "count": 1}},
        "issued_at": 1000,
        "expires_at": 1600
    })
}

#[tokio::test]
async fn anyone_may_ask_only_the_node_may_answer() {
    let dir = zos_testkit::tempdir("notary-diag");
    let notary = zos_notary::open(&format!("dir://{}", dir.path().display())).unwrap();
    let (node, owner, stranger) = (sk(1), sk(2), sk(3));
    let key = NotaryKey::request(&node.public(), "r1").unwrap();
    let req = Record::sign(&key, request(&node, "r1"), &owner).unwrap();
    notary.put(&req).await.unwrap();
    assert_eq!(notary.get(&key).await.unwrap(), Some(req.clone()));

    // A forged answer: refused by the notary, nothing stored.
    let akey = NotaryKey::answer(&node.public(), "r1").unwrap();
    let body = serde_json::to_value(DiagAnswer::<()>::refusal(
        "r1",
        req.signing_digest().unwrap(),
        1001,
        DiagRefusal::new(RefusalCode::NotOwner, "forged"),
    ))
    .unwrap();
    let forged = Record::sign(&akey, body.clone(), &stranger).unwrap();
    assert!(matches!(
        notary.put(&forged).await,
        Err(NotaryError::Record(RecordError::WrongAuthor { .. }))
    ));
    assert_eq!(notary.get(&akey).await.unwrap(), None, "nothing stored");
    // The node's own answer is stored and reads back.
    let real = Record::sign(&akey, body, &node).unwrap();
    notary.put(&real).await.unwrap();
    let back = notary.get(&akey).await.unwrap().unwrap();
    let answer: DiagAnswer<()> = serde_json::from_value(back.body).unwrap();
    assert_eq!(answer.refused, Some(RefusalCode::NotOwner));
    assert!(answer.outcome().is_some());

    // A request moved to another node's key: the signature binds the key.
    let other = NotaryKey::request(&sk(9).public(), "r1").unwrap();
    let mut moved = req.clone();
    moved.key = other.as_str().into();
    assert!(matches!(
        notary.put(&moved).await,
        Err(NotaryError::Record(RecordError::BadSignature { .. }))
    ));
}

#[test]
fn the_request_body_is_strict_and_checked_against_its_key() {
    let node = sk(1);
    let key = NotaryKey::request(&node.public(), "r1").unwrap();
    let ok: DiagRequest<Probe> = serde_json::from_value(request(&node, "r1")).unwrap();
    ok.check(&key, 1500).unwrap();
    assert_eq!(
        ok.scope,
        DiagScope::Workload {
            contract: "c1".into(),
            workload: "web".into()
        }
    );

    // Unknown field, unknown probe kind, unknown scope, unknown action: serde refuses.
    let mut v = request(&node, "r1");
    v["extra"] = json!(1);
    assert!(serde_json::from_value::<DiagRequest<Probe>>(v).is_err());
    let mut v = request(&node, "r1");
    v["action"] = json!({"probe": {"probe": "shell", "cmd": "id"}});
    let e = serde_json::from_value::<DiagRequest<Probe>>(v).unwrap_err();
    assert!(e.to_string().contains("unknown variant `shell`"), "{e}");
    let mut v = request(&node, "r1");
    v["scope"] = json!("everything");
    assert!(serde_json::from_value::<DiagRequest<Probe>>(v).is_err());
    let mut v = request(&node, "r1");
    v["action"] = json!("exec");
    assert!(serde_json::from_value::<DiagRequest<Probe>>(v).is_err());
    for scope in [json!("node"), json!("uplink"), json!({"contract": "c1"})] {
        let mut v = request(&node, "r1");
        v["scope"] = scope.clone();
        v["action"] = json!("support_bundle");
        serde_json::from_value::<DiagRequest<Probe>>(v).unwrap_or_else(|e| panic!("{scope}: {e}"));
    }

    let code =
        |r: &DiagRequest<Probe>, key: &NotaryKey, now| r.check(key, now).unwrap_err().refused;
    assert_eq!(code(&ok, &key, 1600), RefusalCode::Expired);
    let other = NotaryKey::request(&sk(2).public(), "r1").unwrap();
    assert_eq!(code(&ok, &other, 1500), RefusalCode::WrongNode);
    let renamed = NotaryKey::request(&node.public(), "r2").unwrap();
    assert_eq!(code(&ok, &renamed, 1500), RefusalCode::Malformed);
    let mut long = ok.clone();
    long.expires_at = long.issued_at + MAX_REQUEST_WINDOW + 1;
    assert_eq!(code(&long, &key, 1500), RefusalCode::BadWindow);
    let mut backwards = ok.clone();
    backwards.expires_at = backwards.issued_at;
    assert_eq!(code(&backwards, &key, 999), RefusalCode::BadWindow);
}

#[test]
fn an_answer_with_the_largest_inline_bundle_fits_a_record() {
    use base64::Engine as _;
    let node = sk(1);
    let key = NotaryKey::answer(&node.public(), "r1").unwrap();
    let data = vec![0xa5u8; MAX_INLINE_BUNDLE];
    let body = json!({
        "id": "r1",
        "request": zos_contract::Digest::of(b"r"),
        "answered_at": 1,
        "bundle": {
            "sha256": zos_contract::Digest::of(&data),
            "size": data.len(),
            // A manifest of a few dozen parts.
            "manifest": {"parts": vec![json!({"name": "x".repeat(40), "bytes": 1, "ok": true}); 40]},
            "data": base64::engine::general_purpose::STANDARD.encode(&data),
        }
    });
    let r = Record::sign(&key, body, &node).unwrap();
    assert!(r.to_bytes().unwrap().len() < MAX_RECORD_BYTES);
    let a: DiagAnswer<()> = serde_json::from_value(r.body).unwrap();
    assert!(matches!(
        a.outcome(),
        Some(zos_notary::record::DiagOutcome::Bundle(_))
    ));
}
