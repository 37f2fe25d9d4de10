use std::path::PathBuf;

/// Why the status could not be served or read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("D-Bus: {0}")]
    Dbus(#[from] zbus::Error),
    #[error("D-Bus property {property}: {message}")]
    Property {
        property: &'static str,
        message: String,
    },
    #[error("the status document: {0}")]
    Json(#[from] serde_json::Error),
    #[error("no answer from {path} within {secs} s")]
    Timeout { path: PathBuf, secs: u64 },
}

impl StatusError {
    pub(crate) fn io(op: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        StatusError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}
