use std::path::PathBuf;

/// Why a VM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot describe a VM (a retry cannot help).
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// QEMU refused to start; `message` is the last line it printed.
    #[error("qemu did not start ({status}): {message}")]
    Start { status: String, message: String },
    /// The process would not go away.
    #[error("QEMU {pid} survived SIGKILL for {seconds} s")]
    Stuck { pid: i32, seconds: u64 },
    #[error("QMP {command}: {message}")]
    Qmp { command: String, message: String },
    /// A file the VM would get is not a plain regular file inside its tree (a link, a
    /// device, a FIFO, a path out of the tree): a retry cannot help.
    #[error("refusing {} for a VM: {reason}", path.display())]
    Refused { path: PathBuf, reason: String },
    /// The VM's confinement (mount view, user, namespaces) could not be set up.
    #[error("confining QEMU: {0}")]
    Confine(String),
    #[error("cgroup for {name}: {message}")]
    Cgroup { name: String, message: String },
}

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }

    /// True when starting again cannot help: the contract's VM is wrong, not the node.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::InvalidSpec(_) | Error::Refused { .. })
    }
}

impl Error {
    /// True for an [`Error::Io`] whose cause is a missing file.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
