//! Contract verifications per second on one core, each figure beside a reference
//! measured in the same run.
//!
//! A verification here is the whole node-side check of a contract with 3 signatures
//! (owner + 2 stakeholders) and an embedded signed blueprint: parse with limits,
//! canonicalize, 4 ed25519 verifications, parameter bounds, template expansion.
//!
//! - fresh: `verify_bytes`, against the ceiling: sha256 of the same canonical bytes and
//!   the same 4 signature verifications alone, one by one (strict, as nodes verify).
//! - batch: ed25519-dalek's `verify_batch` over the same 4 signatures, against the same
//!   4 one by one. Measured only: nodes do not batch (docs/contract-format.md section
//!   4.2 says why).
//! - cached: `verify_bytes_cached` on a re-delivery of the same bytes, whose 4 triples
//!   verified before: not a fresh verification, every check but the ed25519 math runs.
//!
//! Then where a fresh verification's time goes, in microseconds per contract: the
//! parse, the typed read of the document, the rest of the checks with the expansion,
//! and the ceiling's signature arithmetic.

use std::time::{Duration, Instant};

use zos_contract::spec_example::Example;
use zos_contract::{
    canonical, verify_bytes, verify_bytes_cached, Digest, PublicKey, Signature, Stakeholder,
    VerifiedTriples, VerifyContext,
};

fn rate(mut f: impl FnMut(), min_time: Duration) -> (f64, u64) {
    // Warm up, then count iterations for at least `min_time`.
    for _ in 0..200 {
        f();
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < min_time {
        for _ in 0..100 {
            f();
        }
        n += 100;
    }
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

/// A measured rate beside its reference, measured in the same run.
struct Row {
    what: &'static str,
    rate: f64,
    reference: &'static str,
    reference_rate: f64,
}

fn main() {
    let ex = Example::build();
    // Three signatures: the owner and two stakeholders.
    let budget = zos_contract::SecretKey::from_seed([4; 32]);
    let mut contract = ex.contract.contract.clone();
    contract.stakeholders.push(Stakeholder {
        key: budget.public(),
        weight: 1,
        required: false,
    });
    contract.threshold = 2;
    let mut doc = zos_contract::SignedContract::new(contract).unwrap();
    for k in [&ex.owner, &ex.legal, &budget] {
        doc.sign(k).unwrap();
    }
    let bytes = serde_json::to_vec(&doc.to_value()).unwrap();
    let mut ctx = VerifyContext::offline(1_900_000_000);
    ctx.node = Some(ex.node.public());
    assert!(
        verify_bytes(&bytes, &ctx).is_ok(),
        "the bench contract verifies"
    );

    let min_time = Duration::from_secs(3);
    let (fresh, _) = rate(
        || {
            let v = verify_bytes(std::hint::black_box(&bytes), &ctx);
            assert!(v.reasons.is_empty());
        },
        min_time,
    );

    // The ceiling: sha256 over the contract's and the blueprint's canonical bytes, and
    // the 4 signature verifications.
    let body = &doc.to_value()["contract"];
    let bp_body = &ex.blueprint.to_value()["blueprint"];
    let c_bytes = canonical::to_vec(body).unwrap();
    let bp_bytes = canonical::to_vec(bp_body).unwrap();
    let (ceiling, _) = rate(
        || {
            let d = Digest::of(std::hint::black_box(&c_bytes));
            for s in &doc.signatures {
                s.signer.verify(&d, &s.signature).unwrap();
            }
            let bd = Digest::of(std::hint::black_box(&bp_bytes));
            ex.blueprint
                .author
                .verify(&bd, &ex.blueprint.signature)
                .unwrap();
        },
        min_time,
    );

    // The same 4 (key, digest, signature) triples, one by one and as one batch; both
    // parse the keys, as a node would.
    let mut triples: Vec<(PublicKey, Digest, Signature)> = doc
        .signatures
        .iter()
        .map(|s| (s.signer, doc.digest, s.signature))
        .collect();
    triples.push((
        ex.blueprint.author,
        ex.blueprint.digest,
        ex.blueprint.signature,
    ));
    let (one_by_one, _) = rate(
        || {
            for (k, d, s) in std::hint::black_box(&triples) {
                k.verify(d, s).unwrap();
            }
        },
        min_time,
    );
    let (batch, _) = rate(|| verify_batch(std::hint::black_box(&triples)), min_time);

    let mut cache = VerifiedTriples::new();
    assert!(verify_bytes_cached(&bytes, &ctx, &mut cache).is_ok());
    let (cached, _) = rate(
        || {
            let v = verify_bytes_cached(std::hint::black_box(&bytes), &ctx, &mut cache);
            assert!(v.reasons.is_empty());
        },
        min_time,
    );

    // The stages of a fresh verification, each alone.
    let limits = ctx.limits;
    let (parse, _) = rate(
        || {
            zos_contract::document::parse_value(std::hint::black_box(&bytes), &limits).unwrap();
        },
        min_time,
    );
    let value = zos_contract::document::parse_value(&bytes, &limits).unwrap();
    let (read, _) = rate(
        || {
            zos_contract::SignedContract::from_value(std::hint::black_box(&value), &limits)
                .unwrap();
        },
        min_time,
    );
    let parsed = zos_contract::SignedContract::from_value(&value, &limits).unwrap();
    let (checks, _) = rate(
        || {
            let v = zos_contract::verify_cached(std::hint::black_box(&parsed), &ctx, &mut cache);
            assert!(v.reasons.is_empty());
        },
        min_time,
    );

    println!(
        "contract verification, one core, {} byte document, 3 signatures + blueprint signature",
        bytes.len()
    );
    print_table(&[
        Row {
            what: "fresh: verify_bytes (full check)",
            rate: fresh,
            reference: "ceiling: sha256 + 4 ed25519 one by one",
            reference_rate: ceiling,
        },
        Row {
            what: "batch: the 4 signatures, verify_batch",
            rate: batch,
            reference: "the 4 signatures one by one (strict)",
            reference_rate: one_by_one,
        },
        Row {
            what: "cached (not fresh): verify_bytes_cached",
            rate: cached,
            reference: "fresh: verify_bytes (full check)",
            reference_rate: fresh,
        },
    ]);
    let us = |rate: f64| 1e6 / rate;
    println!(
        "a fresh verification, {:.1} us: parse to JSON with the limits {:.1} us, typed read \
         of the document {:.1} us, blueprint read + checks + expansion {:.1} us (signatures \
         cached), the ceiling's sha256 + ed25519 {:.1} us",
        us(fresh),
        us(parse),
        us(read),
        us(checks),
        us(ceiling)
    );
}

fn verify_batch(triples: &[(PublicKey, Digest, Signature)]) {
    let keys: Vec<_> = triples
        .iter()
        .map(|(k, _, _)| ed25519_dalek::VerifyingKey::from_bytes(&k.0).unwrap())
        .collect();
    let messages: Vec<&[u8]> = triples.iter().map(|(_, d, _)| &d.0[..]).collect();
    let signatures: Vec<_> = triples
        .iter()
        .map(|(_, _, s)| ed25519_dalek::Signature::from_bytes(&s.0))
        .collect();
    ed25519_dalek::verify_batch(&messages, &signatures, &keys).unwrap();
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<42} {:>10}   {:<40} {:>10} {:>7}",
        "measured", "per second", "reference (same run)", "per second", "ratio"
    );
    for r in rows {
        println!(
            "{:<42} {:>10.0}   {:<40} {:>10.0} {:>7.2}",
            r.what,
            r.rate,
            r.reference,
            r.reference_rate,
            r.rate / r.reference_rate
        );
    }
}
