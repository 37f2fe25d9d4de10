use std::path::PathBuf;

/// Why the status could not be served or read.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// A socket operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`connect`, `bind`, ...).
        op: &'static str,
        /// The status socket.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The D-Bus connection or a call on it failed.
    #[error("D-Bus: {0}")]
    Dbus(#[from] zbus::Error),
    /// A property's value is not of the type the client expects.
    #[error("D-Bus property {property}: {message}")]
    Property {
        /// The property's D-Bus name.
        property: &'static str,
        /// Why its value was not of the expected type.
        message: String,
    },
    /// The status JSON could not be written or read.
    #[error("the status document: {0}")]
    Json(#[from] serde_json::Error),
    /// The whole read did not finish in time.
    #[error("no answer from {path} within {secs} s")]
    Timeout {
        /// The status socket.
        path: PathBuf,
        /// The time allowed, in seconds.
        secs: u64,
    },
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
