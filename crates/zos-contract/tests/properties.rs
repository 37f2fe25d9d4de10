//! Property tests: canonical encoding and tamper evidence.

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::{Map, Number, Value};
use zos_contract::canonical::{parse_strict, to_vec};
use zos_contract::*;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        (-(1i64 << 53) + 1..(1i64 << 53)).prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_filter(
                "not printed as an unsafe integer",
                |f| !unsafe_integer_text(*f)
            )
            .prop_map(|f| Value::Number(Number::from_f64(f).unwrap())),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..8)
                .prop_map(|m| Value::Object(Map::from_iter(m))),
        ]
    })
}

/// A double ECMAScript prints as an integer (no fraction, below 1e21) beyond 2^53-1:
/// documents cannot hold it (docs/contract-format.md section 2).
fn unsafe_integer_text(f: f64) -> bool {
    f.fract() == 0.0 && f.abs() > 9007199254740991.0 && f.abs() < 1e21
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Canonical bytes are a fixed point: parse them and canonicalize again, same bytes.
    #[test]
    fn canonical_is_idempotent(v in json_value()) {
        let once = to_vec(&v).unwrap();
        let again = to_vec(&parse_strict(&once).unwrap()).unwrap();
        prop_assert_eq!(&once, &again);
    }

    /// Key order in the input never changes the canonical bytes.
    #[test]
    fn key_order_does_not_matter(entries in prop::collection::btree_map(any::<String>(), any::<i32>(), 0..12)) {
        let forward: Vec<String> = entries.iter().map(|(k, v)| format!("{}:{v}", Value::from(k.clone()))).collect();
        let backward: Vec<String> = forward.iter().rev().cloned().collect();
        let a = parse_strict(format!("{{{}}}", forward.join(",")).as_bytes()).unwrap();
        let b = parse_strict(format!("{{{}}}", backward.join(",")).as_bytes()).unwrap();
        prop_assert_eq!(to_vec(&a).unwrap(), to_vec(&b).unwrap());
    }

    /// Numbers: integers print as integers; floats round-trip through their canonical text.
    #[test]
    fn numbers_round_trip(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
        let value = Value::Number(Number::from_f64(f).unwrap());
        if unsafe_integer_text(f) {
            prop_assert!(matches!(to_vec(&value), Err(canonical::CanonError::UnsafeInteger(_))));
            return Ok(());
        }
        let text = String::from_utf8(to_vec(&Value::Number(Number::from_f64(f).unwrap())).unwrap()).unwrap();
        let back: f64 = text.parse().unwrap();
        prop_assert!(back == f || (f == 0.0 && back == 0.0), "{} -> {} -> {}", f, text, back);
        prop_assert!(!text.contains('+') || text.contains("e+"));
    }

    /// Unicode strings survive canonicalization exactly, whatever they contain.
    #[test]
    fn strings_round_trip(s in any::<String>()) {
        let bytes = to_vec(&Value::String(s.clone())).unwrap();
        prop_assert_eq!(parse_strict(&bytes).unwrap(), Value::String(s));
    }
}

/// Any single-byte change to a signed contract document makes verification fail (or
/// leaves the document's meaning unchanged, e.g. whitespace or an escape spelled
/// differently, in which case the signed content is identical).
#[test]
fn any_single_byte_change_fails_verification() {
    let doc = fully_signed();
    let bytes = serde_json::to_vec(&doc.to_value()).unwrap();
    let ctx = ctx();
    assert!(verify_bytes(&bytes, &ctx).is_ok());
    let original = doc.to_value();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(2000));
    runner
        .run(&(0..bytes.len(), 1u8..=255), |(pos, delta)| {
            let mut tampered = bytes.clone();
            tampered[pos] = tampered[pos].wrapping_add(delta);
            let v = verify_bytes(&tampered, &ctx);
            if v.is_ok() {
                // Accepted only if the change did not change what was signed.
                let same = parse_strict(&tampered)
                    .map(|t| to_vec(&t).ok() == to_vec(&original).ok())
                    .unwrap_or(false);
                prop_assert!(same, "byte {} changed by {} was accepted", pos, delta);
            }
            Ok(())
        })
        .unwrap();
}
