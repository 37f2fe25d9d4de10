//! Record envelopes read strictly, and contract records written only by the parties
//! (issue #13 items 10 and M3), against a real `dir://` notary in a `zt-notary-*` dir.

mod common;

use common::{Backend, DirBackend};
use serde_json::{json, Value};
use zos_contract::canonical;
use zos_contract::{
    BlueprintRef, Cancellation, Contract, Digest, SecretKey, SignedCancellation, SignedContract,
    Stakeholder,
};
use zos_notary::{KeyPrefix, Notary, NotaryError, NotaryKey, Record};

fn sk(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}
fn owner() -> SecretKey {
    sk(2)
}
fn legal() -> SecretKey {
    sk(3)
}
fn stranger() -> SecretKey {
    sk(9)
}
fn node() -> SecretKey {
    sk(5)
}

/// An owner-signed contract for `node()` with `legal()` as stakeholder. The blueprint
/// is named by digest: the envelope check does not need it.
fn contract_body() -> Value {
    let mut doc = SignedContract::new(Contract {
        id: "crm-acme".into(),
        version: 1,
        owner: owner().public(),
        nodes: vec![node().public()],
        blueprint: BlueprintRef::Sha256(Digest::of(b"a blueprint")),
        params: Default::default(),
        stakeholders: vec![Stakeholder {
            key: legal().public(),
            weight: 1,
            required: true,
        }],
        threshold: 1,
        not_before: None,
        expires: None,
    })
    .unwrap();
    doc.sign(&owner()).unwrap();
    doc.sign(&legal()).unwrap();
    doc.to_value()
}

fn key() -> NotaryKey {
    NotaryKey::contract(&node().public(), "crm-acme").unwrap()
}

fn is(err: &NotaryError, variant: &str) -> bool {
    format!("{err:?}").starts_with(&format!("Record({variant}"))
}

#[tokio::test]
async fn a_contract_record_by_a_stranger_is_refused_and_not_stored() {
    let b = DirBackend::new().await;
    let n = b.notary();
    // The stranger carries a valid, fully signed contract, but is not one of its parties.
    let forged = Record::sign(&key(), contract_body(), &stranger()).unwrap();
    let err = n.put(&forged).await.unwrap_err();
    assert!(is(&err, "NotAParty"), "{err:?}");
    assert!(n.get(&key()).await.unwrap().is_none(), "stored");
    // Written straight into the tree: refused by get, skipped by list.
    b.raw_put(key().as_str(), &forged.to_bytes().unwrap());
    let err = n.get(&key()).await.unwrap_err();
    assert!(is(&err, "NotAParty"), "{err:?}");
    let listed = n
        .list(&KeyPrefix::node_contracts(&node().public()))
        .await
        .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    // A cancellation by a stakeholder: only the owner may write one.
    let cancel = SignedCancellation::sign(
        Cancellation {
            id: "crm-acme".into(),
            version: 2,
            owner: owner().public(),
        },
        &owner(),
    )
    .unwrap();
    let body = serde_json::to_value(&cancel).unwrap();
    let err = n
        .put(&Record::sign(&key(), body.clone(), &legal()).unwrap())
        .await
        .unwrap_err();
    assert!(is(&err, "NotAParty"), "{err:?}");
    // A body that names no owner names no party.
    let err = n
        .put(&Record::sign(&key(), json!({"version": 1}), &stranger()).unwrap())
        .await
        .unwrap_err();
    assert!(is(&err, "NotAParty"), "{err:?}");
    assert!(
        n.get(&key()).await.is_err(),
        "the raw file is still refused"
    );

    // The parties may: the owner and a stakeholder for a contract, the owner for a
    // cancellation.
    for author in [owner(), legal()] {
        let r = Record::sign(&key(), contract_body(), &author).unwrap();
        n.put(&r).await.unwrap();
        assert_eq!(n.get(&key()).await.unwrap(), Some(r));
    }
    let r = Record::sign(&key(), body, &owner()).unwrap();
    n.put(&r).await.unwrap();
    assert_eq!(n.get(&key()).await.unwrap(), Some(r));
}

/// The envelope without `signature`, as canonical text: what the author signs.
fn signing_text(author: &SecretKey, body: &str, signed_at: &str) -> String {
    format!(
        r#"{{"author":"{}","body":{body},"key":"{}","signed_at":{signed_at}}}"#,
        author.public(),
        key()
    )
}

#[tokio::test]
async fn a_record_as_an_array_is_malformed() {
    let b = DirBackend::new().await;
    let n = b.notary();
    let r = Record::sign(&key(), contract_body(), &owner()).unwrap();
    let v = serde_json::to_value(&r).unwrap();
    let array = json!([
        v["key"],
        v["author"],
        v["signed_at"],
        v["body"],
        v["signature"]
    ]);
    b.raw_put(key().as_str(), array.to_string().as_bytes());
    let err = n.get(&key()).await.unwrap_err();
    assert!(is(&err, "Malformed"), "{err:?}");
    assert!(err.to_string().contains("expected an object"), "{err}");
    // The same record as an object is fine: the attack is the spelling, nothing else.
    b.raw_put(key().as_str(), &r.to_bytes().unwrap());
    assert_eq!(n.get(&key()).await.unwrap(), Some(r));
}

#[tokio::test]
async fn integers_beyond_2_pow_53_minus_1_in_a_record_are_refused() {
    let b = DirBackend::new().await;
    let n = b.notary();
    let body = String::from_utf8(canonical::to_vec(&contract_body()).unwrap()).unwrap();
    for (body, signed_at) in [
        (
            body.replace("\"version\":1", "\"version\":1152921504606847000"),
            "1",
        ),
        (body.clone(), "9007199254740992"),
    ] {
        assert!(body.len() > 100);
        let text = signing_text(&owner(), &body, signed_at);
        let signature = owner().sign(&Digest::of(text.as_bytes()));
        let stored = format!(
            "{},\"signature\":\"{signature}\"}}",
            text.strip_suffix('}').unwrap()
        );
        b.raw_put(key().as_str(), stored.as_bytes());
        let err = n.get(&key()).await.unwrap_err();
        assert!(is(&err, "Canonical(UnsafeInteger"), "{err:?}");
    }
}
