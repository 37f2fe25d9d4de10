//! Typed errors of the storage layer.

use std::path::PathBuf;

use crate::disk::DiskSummary;
use crate::PoolKind;

/// Everything the storage layer can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A disk the caller asked for may not be used; `considered` lists every disk looked at.
    #[error("disk {disk} refused: {reason} (disks considered: {})", summaries(.considered))]
    DiskRefused {
        /// The disk as the caller named it.
        disk: String,
        /// Why it may not be used.
        reason: String,
        /// Every disk discovery looked at.
        considered: Vec<DiskSummary>,
    },
    /// Discovery found no disk that could hold a pool.
    #[error("no usable disk for a pool (disks considered: {})", summaries(.considered))]
    NoUsableDisk {
        /// Every disk discovery looked at.
        considered: Vec<DiskSummary>,
    },
    /// No pool of the requested kind has room: nothing was created.
    #[error(
        "no capacity for {requested} bytes on a {kind} pool: the largest free space is {largest_free} bytes \
         (pool {largest_pool}); {pools} online {kind} pool(s)"
    )]
    NoCapacity {
        /// Bytes asked for.
        requested: u64,
        /// The most any pool of that kind could still hand out.
        largest_free: u64,
        /// The pool with that space.
        largest_pool: String,
        /// The kind asked for.
        kind: PoolKind,
        /// How many pools of that kind are online.
        pools: usize,
    },
    /// Growing an existing volume/vdisk would overcommit its pool.
    #[error(
        "cannot resize {name} to {requested} bytes on pool {pool}: only {available} bytes can be added"
    )]
    ResizeNoCapacity {
        /// The volume or vdisk.
        name: String,
        /// The pool it is on.
        pool: String,
        /// The new size asked for.
        requested: u64,
        /// The most it could grow by.
        available: u64,
    },
    #[error("invalid name {0:?}: use 1-64 of [A-Za-z0-9._-], not starting with '.'")]
    /// A volume, vdisk or state key name outside the allowed alphabet.
    InvalidName(String),
    #[error("invalid size {size} for {what}: {why}")]
    /// A size that cannot be honoured (not a positive multiple of 4096, a vdisk shrunk, a
    /// state record too large).
    InvalidSize {
        /// What was sized.
        what: String,
        /// The size asked for.
        size: u64,
        /// Why it is refused.
        why: &'static str,
    },
    #[error("{kind} {name:?} not found")]
    /// No volume or vdisk of that name.
    NotFound {
        /// `volume` or `vdisk`.
        kind: &'static str,
        /// The name looked for.
        name: String,
    },
    #[error("{kind} {name:?} already exists on pool {pool}")]
    /// A volume or vdisk of that name exists already.
    Exists {
        /// `volume` or `vdisk`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The pool it is on.
        pool: String,
    },
    #[error("pool {0} is not online")]
    /// The pool (by label) is known but not online.
    PoolOffline(String),
    #[error("no pool is online to hold the node state")]
    /// No online pool to hold the node state.
    NoStateCopy,
    #[error("state key {key:?}: no valid copy among {copies} (corrupt or missing)")]
    /// No copy of a state record is valid.
    StateUnreadable {
        /// The record.
        key: String,
        /// How many copies were looked at.
        copies: usize,
    },
    /// Copies exist but none is authenticated by this node's key (a planted disk, a
    /// forged record): none is used.
    #[error("state key {key:?}: copies not authenticated by this node's key: {}", paths(.copies))]
    StateForged {
        /// The record.
        key: String,
        /// The copies refused.
        copies: Vec<PathBuf>,
    },
    /// Write-once state (the identity) holds different values on different pools: a
    /// foreign state home. Nothing is chosen and nothing is rewritten.
    #[error("state key {key:?}: copies disagree (a foreign state home?): {}", paths(.copies))]
    StateConflict {
        /// The record.
        key: String,
        /// The disagreeing copies.
        copies: Vec<PathBuf>,
    },
    /// A state write reached only some of the online pools: it does not count as done.
    #[error(
        "state key {key:?} generation {generation}: written to {written} pool(s) but not to: {}",
        failures(.failed)
    )]
    StateIncomplete {
        /// The record.
        key: String,
        /// The generation being written.
        generation: u64,
        /// How many copies were written.
        written: usize,
        /// The copies not written, and why.
        failed: Vec<(PathBuf, String)>,
    },
    /// The node created this volume and it is gone: its data is lost. Never recreated
    /// empty (a permanent error).
    #[error("volume lost: {name:?} was created on pool {pool} and {gone}")]
    VolumeLost {
        /// The volume.
        name: String,
        /// The pool it was created on.
        pool: String,
        /// What is gone: its subvolume (the pool is there), or the pool itself.
        gone: &'static str,
    },
    /// The node created this vdisk (a VM's disk) and its file is gone. Never recreated
    /// empty.
    #[error("vdisk lost: {name:?} was created on pool {pool} and {gone}")]
    VdiskLost {
        /// The vdisk.
        name: String,
        /// The pool it was created on.
        pool: String,
        /// What is gone: its file (the pool is there), or the pool itself.
        gone: &'static str,
    },
    #[error("{what} {path}: {source}")]
    /// A file system call failed.
    Io {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    /// A helper program (mkfs.btrfs, btrfs, losetup...) failed.
    Command {
        /// The program.
        program: String,
        /// How it exited.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    #[error("{op} on {path}: {source}")]
    /// A system call (mount, an ioctl) failed.
    Sys {
        /// The call.
        op: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: nix::Error,
    },
    #[error(
        "{path} stayed busy for {waited_ms} ms after unmounting was asked: held by {}",
        holders_text(holders)
    )]
    /// A pool could not be unmounted: something kept it busy for the whole bounded wait.
    /// `holders` are the processes found with a descriptor, working directory or root
    /// inside it when the wait ended (empty when none was found: a kernel reference).
    Busy {
        /// The mountpoint.
        path: PathBuf,
        /// How long unmounting was retried.
        waited_ms: u64,
        /// Who held it at the end.
        holders: Vec<Holder>,
    },
    #[error("corrupt {what}: {why}")]
    /// Something read is malformed (a registry, the identity seed, a kernel counter).
    Corrupt {
        /// What.
        what: String,
        /// How it is malformed.
        why: String,
    },
}

impl Error {
    /// Whether trying again cannot help: what the node made is gone (a lost volume or
    /// vdisk is never recreated empty; its owner decides).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::VolumeLost { .. } | Error::VdiskLost { .. })
    }

    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }
    pub(crate) fn sys(op: &'static str, path: impl Into<PathBuf>, source: nix::Error) -> Self {
        Error::Sys {
            op,
            path: path.into(),
            source,
        }
    }
}

/// A process found holding something inside a mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its pid.
    pub pid: i32,
    /// Its command name (`/proc/<pid>/comm`).
    pub command: String,
    /// What it holds: `cwd`, `root` or `fd <n>`, and the path.
    pub holds: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({}): {}", self.pid, self.command, self.holds)
    }
}

fn holders_text(v: &[Holder]) -> String {
    if v.is_empty() {
        return "no process found (a kernel reference)".into();
    }
    v.iter()
        .map(|h| h.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn summaries(v: &[DiskSummary]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

fn paths(v: &[PathBuf]) -> String {
    v.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn failures(v: &[(PathBuf, String)]) -> String {
    v.iter()
        .map(|(p, e)| format!("{} ({e})", p.display()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The storage layer's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
