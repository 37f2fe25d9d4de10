//! Typed errors of this crate.

use std::path::PathBuf;

/// Everything that can go wrong creating, running or inspecting a container.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec would be misread by libcontainer or could escape the container
    /// (permanent: a retry cannot help).
    #[error("invalid container spec: {0}")]
    InvalidSpec(String),
    /// The runtime's own configuration is unusable (a cgroup parent that is not a
    /// relative path of plain names); permanent.
    #[error("invalid runtime configuration: {0}")]
    InvalidConfig(String),
    /// The OCI runtime spec could not be built from a valid container spec.
    #[error("building the OCI runtime spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
    /// `create` with an id that libcontainer already has state for.
    #[error("container {0} already exists")]
    Exists(String),
    /// No container of that id in the runtime's state directory.
    #[error("container {0} not found")]
    NotFound(String),
    /// libcontainer failed an operation on a container.
    #[error("container {id}: {op}: {source}")]
    Runtime {
        /// The container id.
        id: String,
        /// The operation (`create`, `start`, `kill`, ...).
        op: &'static str,
        /// libcontainer's error.
        #[source]
        source: Box<libcontainer::error::LibcontainerError>,
    },
    /// A file operation on the node failed (bundle, state or log directory, FIFO).
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// The pool subvolume of a container's root could not be made or found.
    #[error("root filesystem: {0}")]
    RootVolume(#[source] zos_storage::Error),
    /// A container's user namespace, its id range, or the shift of a tree into that
    /// range failed.
    #[error("user namespace: {0}")]
    UserNamespace(String),
    /// A system call on a container's process failed, or the process was missing.
    #[error("container {id}: {op}: {source}")]
    Sys {
        /// The container id.
        id: String,
        /// The operation.
        op: &'static str,
        /// The errno.
        #[source]
        source: nix::errno::Errno,
    },
}

impl Error {
    /// True when trying again cannot help: a spec this crate refuses, or a root volume
    /// zos-storage says is lost. False for what may pass (the runtime, the kernel, I/O).
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::InvalidSpec(_) | Error::InvalidConfig(_) => true,
            Error::RootVolume(e) => e.is_permanent(),
            _ => false,
        }
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}
