//! Reading untrusted signed documents: size limits first, then strict JSON, then the
//! typed form with the JSON path of the first problem.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::canonical;
use crate::crypto::Digest;
use crate::limits::{self, Limits};

/// Why a document could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    #[error("oversized: {what} is {actual}, the limit is {limit} (at {path})")]
    Oversized {
        what: &'static str,
        limit: usize,
        actual: usize,
        path: String,
    },
    #[error("malformed at {path}: {message}")]
    Malformed { path: String, message: String },
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
    let value = canonical::parse_strict(bytes).map_err(|e| DocError::Malformed {
        path: "$".into(),
        message: e.to_string(),
    })?;
    check_limits(&value, limits)?;
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

/// Converts a value into `T`, naming the JSON path (under `root`) of the first problem.
pub fn typed<T: DeserializeOwned>(value: &Value, root: &str) -> Result<T, DocError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = if inner == "." || inner.is_empty() {
            root.to_string()
        } else {
            format!("{root}.{inner}")
        };
        DocError::Malformed {
            path,
            message: e.into_inner().to_string(),
        }
    })
}

/// The sha256 of a value's canonical bytes.
pub fn digest(value: &Value) -> Result<Digest, DocError> {
    canonical::to_vec(value)
        .map(|bytes| Digest::of(&bytes))
        .map_err(|e| DocError::Malformed {
            path: "$".into(),
            message: e.to_string(),
        })
}
