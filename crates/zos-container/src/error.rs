//! Typed errors of this crate.

use std::path::PathBuf;

/// Everything that can go wrong creating, running or inspecting a container.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid container spec: {0}")]
    InvalidSpec(String),
    #[error("building the OCI runtime spec: {0}")]
    Oci(#[from] oci_spec::OciSpecError),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("container {id}: {op}: {source}")]
    Runtime {
        id: String,
        op: &'static str,
        #[source]
        source: Box<libcontainer::error::LibcontainerError>,
    },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The pool subvolume of a container's root could not be made or found.
    #[error("root filesystem: {0}")]
    RootVolume(#[source] zos_storage::Error),
    #[error("container {id}: {op}: {source}")]
    Sys {
        id: String,
        op: &'static str,
        #[source]
        source: nix::errno::Errno,
    },
}

impl Error {
    /// True when trying again cannot help: a spec this crate refuses, or a root volume
    /// zos-storage says is lost. False for what may pass (the runtime, the kernel, I/O).
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::InvalidSpec(_) => true,
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
