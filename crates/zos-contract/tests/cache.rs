//! The cache of verified (digest, signer, signature) triples: a re-delivery of an
//! unchanged contract skips only the ed25519 arithmetic, and anything that differs in a
//! byte is verified afresh and refused exactly as without the cache.

mod common;

use common::*;
use zos_contract::*;

/// The document as bytes, with one byte of `signer`'s signature flipped.
fn with_tampered_signature(doc: &SignedContract, signer: &PublicKey) -> Vec<u8> {
    let mut tampered = doc.clone();
    let entry = tampered
        .signatures
        .iter_mut()
        .find(|e| e.signer == *signer)
        .unwrap();
    entry.signature.0[10] ^= 0x01;
    serde_json::to_vec(&tampered.to_value()).unwrap()
}

fn bytes(doc: &SignedContract) -> Vec<u8> {
    serde_json::to_vec(&doc.to_value()).unwrap()
}

#[test]
fn a_redelivery_is_accepted_from_the_cache_as_it_was_fresh() {
    let doc = fully_signed();
    let mut cache = VerifiedTriples::new();
    let fresh = verify_bytes(&bytes(&doc), &ctx());
    let first = verify_bytes_cached(&bytes(&doc), &ctx(), &mut cache);
    // Three contract signatures and the embedded blueprint's.
    assert_eq!(cache.len(), 4);
    let again = verify_bytes_cached(&bytes(&doc), &ctx(), &mut cache);
    assert_eq!(cache.len(), 4);
    for v in [&first, &again] {
        assert_eq!(v.reasons, fresh.reasons);
        assert_eq!(v.signers, fresh.signers);
        assert_eq!(v.deployment, fresh.deployment);
        assert!(v.is_ok());
    }
}

#[test]
fn a_tampered_signature_after_a_good_verification_is_refused_as_uncached() {
    let doc = fully_signed();
    let mut cache = VerifiedTriples::new();
    assert!(verify_bytes_cached(&bytes(&doc), &ctx(), &mut cache).is_ok());
    for signer in [owner().public(), legal().public(), budget().public()] {
        let tampered = with_tampered_signature(&doc, &signer);
        let uncached = verify_bytes(&tampered, &ctx());
        let cached = verify_bytes_cached(&tampered, &ctx(), &mut cache);
        assert!(!uncached.is_ok() || !uncached.warnings.is_empty());
        assert!(uncached
            .reasons
            .iter()
            .chain(&uncached.warnings)
            .any(|r| *r == Reason::BadSignature { signer }));
        assert_eq!(cached.reasons, uncached.reasons, "{signer}");
        assert_eq!(cached.warnings, uncached.warnings, "{signer}");
        assert_eq!(cached.signers, uncached.signers, "{signer}");
    }
    // A bad signature is never remembered.
    assert_eq!(cache.len(), 4);
}

#[test]
fn a_cached_signature_over_another_digest_is_refused_as_uncached() {
    let doc = fully_signed();
    let mut cache = VerifiedTriples::new();
    assert!(verify_bytes_cached(&bytes(&doc), &ctx(), &mut cache).is_ok());
    // Version 2 carrying version 1's (cached) signatures: same signer and signature
    // bytes, another digest.
    let mut c = contract();
    c.version = 2;
    let mut moved = SignedContract::new(c).unwrap();
    moved.signatures = doc.signatures.clone();
    let uncached = verify(&moved, &ctx());
    let cached = verify_cached(&moved, &ctx(), &mut cache);
    assert!(!uncached.is_ok());
    assert!(uncached.reasons.contains(&Reason::OwnerSignatureMissing {
        owner: owner().public()
    }));
    assert!(uncached.reasons.contains(&Reason::BadSignature {
        signer: owner().public()
    }));
    assert_eq!(cached.reasons, uncached.reasons);
}

#[test]
fn every_other_check_still_runs_on_a_redelivery() {
    let doc = fully_signed();
    let mut cache = VerifiedTriples::new();
    assert!(verify_cached(&doc, &ctx(), &mut cache).is_ok());
    // The same document, later: the cached signatures do not make it valid forever.
    let mut later = ctx();
    later.now = NOW + 7200;
    let v = verify_cached(&doc, &later, &mut cache);
    assert_eq!(v.reasons, verify(&doc, &later).reasons);
    assert!(matches!(v.reasons.as_slice(), [Reason::Expired { .. }]));
    // Elsewhere: addressed to another node.
    let mut elsewhere = ctx();
    elsewhere.node = Some(stranger().public());
    let v = verify_cached(&doc, &elsewhere, &mut cache);
    assert_eq!(v.reasons, verify(&doc, &elsewhere).reasons);
    assert!(!v.reasons.is_empty());
}

#[test]
fn the_cache_is_bounded_and_forgets_the_oldest() {
    let key = owner();
    let mut cache = VerifiedTriples::with_capacity(2);
    let digests: Vec<Digest> = (0u8..3).map(|i| Digest::of(&[i])).collect();
    for d in &digests {
        cache.verify(&key.public(), d, &key.sign(d)).unwrap();
    }
    assert_eq!(cache.len(), 2);
    // A forgotten triple still verifies (afresh); a bad one never does.
    cache
        .verify(&key.public(), &digests[0], &key.sign(&digests[0]))
        .unwrap();
    assert_eq!(
        cache.verify(&key.public(), &digests[1], &key.sign(&digests[0])),
        Err(KeyError::BadSignature)
    );
    let mut nothing = VerifiedTriples::with_capacity(0);
    nothing
        .verify(&key.public(), &digests[0], &key.sign(&digests[0]))
        .unwrap();
    assert!(nothing.is_empty());
}
