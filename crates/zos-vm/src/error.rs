use std::path::PathBuf;

/// Why a VM operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec cannot describe a VM (a retry cannot help).
    #[error("invalid VM spec: {0}")]
    InvalidSpec(String),
    /// A file operation on the node failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What we were doing (`opening`, `creating`, ...).
        what: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
    /// QEMU refused to start; `message` is the last line it printed.
    #[error("qemu did not start ({status}): {message}")]
    Start {
        /// QEMU's exit status, or `not run` / `exited` when it never ran or vanished.
        status: String,
        /// QEMU's last stderr line, or what went wrong around it.
        message: String,
    },
    /// The process would not go away.
    #[error("QEMU {pid} survived SIGKILL for {seconds} s")]
    Stuck {
        /// QEMU's process id.
        pid: i32,
        /// How long we waited after SIGKILL, in seconds.
        seconds: u64,
    },
    /// QEMU's control socket could not be reached or answered with an error.
    #[error("QMP {command}: {message}")]
    Qmp {
        /// The QMP command (`qmp_capabilities`, `system_powerdown`, ...).
        command: String,
        /// QEMU's error description, or the socket error.
        message: String,
    },
    /// A file the VM would get is not a plain regular file inside its tree (a link, a
    /// device, a FIFO, a path out of the tree): a retry cannot help.
    #[error("refusing {} for a VM: {reason}", path.display())]
    Refused {
        /// The file as the node sees it (never opened by this path).
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// The hypervisor bundle could not be fetched from the release: the node's
    /// problem (its release, its store), not the contract's. The display carries the
    /// part error's stable code (`[tampered_part] ...`): it is what a contract's status
    /// shows.
    #[error("fetching the hypervisor bundle: [{code}] {0}", code = .0.code())]
    Hypervisor(Box<zos_release::PartError>),
    /// The node has no QEMU at all: none on the system and no release part to fetch
    /// one from (what is missing is the message). No VM can start on this node until
    /// it gets one (a new configuration or release), so a VM is refused for good.
    #[error("this node has no hypervisor: {0}")]
    NoHypervisor(String),
    /// The VM's confinement (mount view, user, namespaces) could not be set up.
    #[error("confining QEMU: {0}")]
    Confine(String),
    /// Creating, limiting or removing the QEMU process's cgroup failed.
    #[error("cgroup for {name}: {message}")]
    Cgroup {
        /// The VM name (the cgroup leaf).
        name: String,
        /// libcgroups' error.
        message: String,
    },
}

impl Error {
    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }

    /// True when starting again cannot help: the contract's VM is wrong, or this node
    /// has no QEMU at all ([`Error::NoHypervisor`]).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Error::InvalidSpec(_) | Error::Refused { .. } | Error::NoHypervisor(_)
        )
    }
}

impl Error {
    /// True for an [`Error::Io`] whose cause is a missing file.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The result of every fallible VM operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;
