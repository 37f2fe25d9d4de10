//! Reading untrusted signed documents: size limits first, then strict JSON, then the
//! typed form with the JSON path of the first problem.
//!
//! One spelling, one meaning: [`typed`] accepts a value only if reading it into its
//! type and writing that back gives the same shape. So an object the spec defines is
//! never read from a positional array (serde's struct-from-sequence), and `null` is
//! never a member's value, for every type read through it, present or future.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::canonical;
use crate::crypto::Digest;
use crate::limits::{self, Limits};
use crate::shape;

/// Why a document could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    /// A [`Limits`] bound is broken.
    #[error("oversized: {what} is {actual}, the limit is {limit} (at {path})")]
    Oversized {
        /// Which bound: `document size`, `string length`, `nesting depth`, ...
        what: &'static str,
        /// The bound, in the unit of `what` (bytes, characters, items, levels).
        limit: usize,
        /// What the document has, in the same unit.
        actual: usize,
        /// The JSON path (`$.a.b[2]`) where the bound is broken.
        path: String,
    },
    /// Not valid JSON, or not the shape the spec defines.
    #[error("malformed at {path}: {message}")]
    Malformed {
        /// The JSON path of the first problem.
        path: String,
        /// What is wrong there.
        message: String,
    },
}

/// Parses bytes into a JSON value within `limits`, refusing duplicate keys.
pub fn parse_value(bytes: &[u8], limits: &Limits) -> Result<Value, DocError> {
    if bytes.len() > limits.document_bytes {
        return Err(DocError::Oversized {
            what: "document size",
            limit: limits.document_bytes,
            actual: bytes.len(),
            path: "$".into(),
        });
    }
    let watch = canonical::Watch::new(limits.string_chars, limits.collection_items, limits.depth);
    let value =
        canonical::parse_watched(bytes, limits.depth, Some(&watch)).map_err(|e| match e {
            canonical::CanonError::TooDeep(limit) => DocError::Oversized {
                what: "nesting depth",
                limit,
                actual: limit + 1,
                path: "$".into(),
            },
            e => DocError::Malformed {
                path: "$".into(),
                message: e.to_string(),
            },
        })?;
    // The parse watched the bounds the walk checks: only a document that breaks one is
    // walked, to find the first break and its path.
    if watch.broken() {
        check_limits(&value, limits)?;
    }
    Ok(value)
}

pub(crate) fn check_limits(value: &Value, limits: &Limits) -> Result<(), DocError> {
    limits::check_value(value, limits).map_err(|(what, limit, actual, path)| DocError::Oversized {
        what,
        limit,
        actual,
        path,
    })
}

/// A member read only for its presence, in an envelope whose member value the caller
/// then takes from the document itself: reading it copies nothing, and it writes back
/// as `null`, so [`typed`] leaves its shape to the caller's own [`typed`] of that
/// value (a `Value` member would be copied twice and walked for nothing: a `Value`
/// writes back exactly as given).
pub(crate) struct Opaque;

impl<'de> serde::Deserialize<'de> for Opaque {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| Opaque)
    }
}

impl Serialize for Opaque {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

/// Refuses a value that is not a JSON object where the spec defines one.
pub fn object<'a>(
    value: &'a Value,
    path: &str,
) -> Result<&'a serde_json::Map<String, Value>, DocError> {
    value.as_object().ok_or_else(|| DocError::Malformed {
        path: path.to_string(),
        message: format!("expected an object, found {}", kind(value)),
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The value under `keys`, one object member after another: `Value::pointer` for a path
/// of plain names, without splitting it and unescaping each name into a new string.
pub(crate) fn member<'a>(value: &'a Value, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().try_fold(value, |v, k| v.get(*k))
}

/// Refuses more than `limits.workloads` items in a template's or a deployment's
/// `workloads` (`None`: the document has none there), before it is read any further.
pub(crate) fn check_workloads(
    workloads: Option<&Value>,
    path: &str,
    limits: &Limits,
) -> Result<(), DocError> {
    match workloads {
        Some(Value::Array(items)) if items.len() > limits.workloads => Err(DocError::Oversized {
            what: "workload count",
            limit: limits.workloads,
            actual: items.len(),
            path: path.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Converts a value into `T`, naming the JSON path (under `root`) of the first problem.
///
/// The value must have the shape `T` writes: an object where `T` writes an object, an
/// array where it writes an array, and no member whose value is `null` (members `T`
/// leaves out when absent are left out, never written as `null`).
pub fn typed<T: DeserializeOwned + Serialize>(value: &Value, root: &str) -> Result<T, DocError> {
    // Read it plainly first: tracking the path costs a sixth of a contract's whole
    // verification, and only a refusal needs it. The two reads see the same value in
    // the same order, so the second finds the same first problem.
    let read = match T::deserialize(value) {
        Ok(read) => read,
        Err(plain) => return Err(located::<T>(value, root, plain)),
    };
    // Nearly every document has the shape: check it without writing `read` back. Only
    // "it may not" writes it back, to find the refusal and its path.
    if shape::matches(value, &read) {
        return Ok(read);
    }
    let written = serde_json::to_value(&read).map_err(|e| DocError::Malformed {
        path: root.to_string(),
        message: e.to_string(),
    })?;
    let mut path = root.to_string();
    same_shape(value, &written, &mut path)?;
    Ok(read)
}

/// Why `value` is not a `T`, at the JSON path (under `root`) of the first problem:
/// `plain` is what the untracked read said.
fn located<T: DeserializeOwned>(value: &Value, root: &str, plain: serde_json::Error) -> DocError {
    let (path, message) = match serde_path_to_error::deserialize::<_, T>(value) {
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." || inner.is_empty() {
                root.to_string()
            } else {
                format!("{root}.{inner}")
            };
            (path, e.into_inner().to_string())
        }
        // Not expected: the same read, tracked. Still a refusal, at the root.
        Ok(_) => (root.to_string(), plain.to_string()),
    };
    DocError::Malformed { path, message }
}

/// Walks what was given against what its type writes back.
pub(crate) fn same_shape(
    given: &Value,
    written: &Value,
    path: &mut String,
) -> Result<(), DocError> {
    let malformed = |path: &str, message: String| DocError::Malformed {
        path: path.to_string(),
        message,
    };
    match (given, written) {
        (Value::Object(g), Value::Object(w)) => {
            for (k, gv) in g {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                match w.get(k) {
                    Some(wv) => same_shape(gv, wv, path)?,
                    None if gv.is_null() => {
                        return Err(malformed(
                            path,
                            "null is not a value: leave the member out".into(),
                        ))
                    }
                    None => {}
                }
                path.truncate(len);
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                let len = path.len();
                limits::push_index(path, i);
                same_shape(gv, wv, path)?;
                path.truncate(len);
            }
        }
        (g, Value::Object(_)) => {
            return Err(malformed(
                path,
                format!("expected an object, found {}", kind(g)),
            ))
        }
        (g, Value::Array(_)) => {
            return Err(malformed(
                path,
                format!("expected an array, found {}", kind(g)),
            ))
        }
        _ => {}
    }
    Ok(())
}

/// The sha256 of a value's canonical bytes.
pub(crate) fn digest(value: &Value) -> Result<Digest, DocError> {
    canonical::to_vec(value)
        .map(|bytes| Digest::of(&bytes))
        .map_err(|e| DocError::Malformed {
            path: "$".into(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_member_is_what_its_pointer_names() {
        // Names only: a pointer's number indexes an array, a member's does not.
        let v = json!({"a": {"b": [1, {"c": 2}], "d": null}, "e": "x"});
        for keys in [
            &["a"][..],
            &["a", "b"],
            &["a", "d"],
            &["a", "b", "c"],
            &["e", "x"],
            &["z"],
            &[],
        ] {
            let pointer: String = keys.iter().map(|k| format!("/{k}")).collect();
            assert_eq!(super::member(&v, keys), v.pointer(&pointer), "{pointer}");
        }
    }
}
