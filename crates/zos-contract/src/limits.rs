//! Size limits for untrusted documents.
//!
//! Every document a node reads comes from the network, so every length is bounded
//! before anything else is done with it. The numbers are generous for real blueprints
//! and small enough that verifying a hostile document costs microseconds.

/// Bounds on one document. [`Limits::default`] is what nodes enforce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of a whole signed contract or blueprint document.
    pub document_bytes: usize,
    /// Characters in any one string (names, values, entrypoint arguments, ...).
    pub string_chars: usize,
    /// Items in any one list or map (workloads, env, signatures, params, ...).
    pub collection_items: usize,
    /// Workloads in one expanded deployment.
    pub workloads: usize,
    /// Nesting depth of any JSON value.
    pub depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            document_bytes: 256 * 1024,
            string_chars: 4096,
            collection_items: 256,
            workloads: 64,
            depth: 32,
        }
    }
}

/// The first limit a JSON value breaks, as `(what, limit, actual, json path)`.
pub(crate) fn check_value(
    v: &serde_json::Value,
    limits: &Limits,
) -> Result<(), (&'static str, usize, usize, String)> {
    fn walk(
        v: &serde_json::Value,
        limits: &Limits,
        depth: usize,
        path: &mut String,
    ) -> Result<(), (&'static str, usize, usize, String)> {
        use serde_json::Value::*;
        if depth > limits.depth {
            return Err(("nesting depth", limits.depth, depth, path.clone()));
        }
        match v {
            // A string no longer in bytes than the limit is within it in characters.
            String(s) if s.len() <= limits.string_chars => {}
            String(s) => {
                let n = s.chars().count();
                if n > limits.string_chars {
                    return Err(("string length", limits.string_chars, n, path.clone()));
                }
            }
            Array(items) => {
                if items.len() > limits.collection_items {
                    let n = items.len();
                    return Err(("list length", limits.collection_items, n, path.clone()));
                }
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    push_index(path, i);
                    walk(item, limits, depth + 1, path)?;
                    path.truncate(len);
                }
            }
            Object(map) => {
                if map.len() > limits.collection_items {
                    let n = map.len();
                    return Err(("object size", limits.collection_items, n, path.clone()));
                }
                for (k, item) in map {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    if k.len() > limits.string_chars {
                        // Counted only when the bytes could break the limit.
                        let n = k.chars().count();
                        if n > limits.string_chars {
                            return Err(("key length", limits.string_chars, n, path.clone()));
                        }
                    }
                    walk(item, limits, depth + 1, path)?;
                    path.truncate(len);
                }
            }
            Null | Bool(_) | Number(_) => {}
        }
        Ok(())
    }
    let mut path = String::from("$");
    walk(v, limits, 1, &mut path)
}

/// Appends `[i]` to a JSON path without a temporary string.
pub(crate) fn push_index(path: &mut String, i: usize) {
    use std::fmt::Write as _;
    // Writing to a String cannot fail.
    let _ = write!(path, "[{i}]");
}
