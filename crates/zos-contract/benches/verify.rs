//! Contract verifications per second on one core, with the cost of its cryptography
//! alone measured side by side as the reference.
//!
//! A verification here is the whole node-side check of a contract with 3 signatures
//! (owner + 2 stakeholders) and an embedded signed blueprint: parse with limits,
//! canonicalize, 4 ed25519 verifications, parameter bounds, template expansion.
//! The reference does only the irreducible part: sha256 of the same canonical bytes
//! and the same 4 signature verifications.

use std::time::{Duration, Instant};

use zos_contract::spec_example::Example;
use zos_contract::{canonical, verify_bytes, Stakeholder, VerifyContext};

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
    let (full, n_full) = rate(
        || {
            let v = verify_bytes(std::hint::black_box(&bytes), &ctx);
            assert!(v.reasons.is_empty());
        },
        min_time,
    );

    // Reference: sha256 over the contract's and the blueprint's canonical bytes, and
    // the 4 signature verifications.
    let body = &doc.to_value()["contract"];
    let bp_body = &ex.blueprint.to_value()["blueprint"];
    let c_bytes = canonical::to_vec(body).unwrap();
    let bp_bytes = canonical::to_vec(bp_body).unwrap();
    let sigs: Vec<_> = doc
        .signatures
        .iter()
        .map(|s| (s.signer, s.signature))
        .collect();
    let (reference, n_ref) = rate(
        || {
            let d = zos_contract::Digest::of(std::hint::black_box(&c_bytes));
            for (k, s) in &sigs {
                k.verify(&d, s).unwrap();
            }
            let bd = zos_contract::Digest::of(std::hint::black_box(&bp_bytes));
            ex.blueprint
                .author
                .verify(&bd, &ex.blueprint.signature)
                .unwrap();
        },
        min_time,
    );

    println!(
        "contract verification, one core, {} byte document, 3 signatures + blueprint signature",
        bytes.len()
    );
    println!("{:<44} {:>12} {:>10}", "", "per second", "runs");
    println!(
        "{:<44} {:>12.0} {:>10}",
        "zos-contract verify_bytes (full check)", full, n_full
    );
    println!(
        "{:<44} {:>12.0} {:>10}",
        "reference: sha256 + 4 ed25519 verifies", reference, n_ref
    );
    println!(
        "{:<44} {:>12.2}",
        "ratio full / reference (1.0 = crypto-bound)",
        full / reference
    );
    println!(
        "target: at least 20000 verifications/s -> {}",
        if full >= 20_000.0 { "met" } else { "NOT met" }
    );
}
