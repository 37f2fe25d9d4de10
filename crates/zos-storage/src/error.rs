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
        disk: String,
        reason: String,
        considered: Vec<DiskSummary>,
    },
    /// Discovery found no disk that could hold a pool.
    #[error("no usable disk for a pool (disks considered: {})", summaries(.considered))]
    NoUsableDisk { considered: Vec<DiskSummary> },
    /// No pool of the requested kind has room: nothing was created.
    #[error(
        "no capacity for {requested} bytes on a {kind} pool: the largest free space is {largest_free} bytes \
         (pool {largest_pool}); {pools} online {kind} pool(s)"
    )]
    NoCapacity {
        requested: u64,
        largest_free: u64,
        largest_pool: String,
        kind: PoolKind,
        pools: usize,
    },
    /// Growing an existing volume/vdisk would overcommit its pool.
    #[error(
        "cannot resize {name} to {requested} bytes on pool {pool}: only {available} bytes can be added"
    )]
    ResizeNoCapacity {
        name: String,
        pool: String,
        requested: u64,
        available: u64,
    },
    #[error("invalid name {0:?}: use 1-64 of [A-Za-z0-9._-], not starting with '.'")]
    InvalidName(String),
    #[error("invalid size {size} for {what}: {why}")]
    InvalidSize {
        what: String,
        size: u64,
        why: &'static str,
    },
    #[error("{kind} {name:?} not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{kind} {name:?} already exists on pool {pool}")]
    Exists {
        kind: &'static str,
        name: String,
        pool: String,
    },
    #[error("pool {0} is not online")]
    PoolOffline(String),
    #[error("no pool is online to hold the node state")]
    NoStateCopy,
    #[error("state key {key:?}: no valid copy among {copies} (corrupt or missing)")]
    StateUnreadable { key: String, copies: usize },
    /// Copies exist but none is authenticated by this node's key (a planted disk, a
    /// forged record): none is used.
    #[error("state key {key:?}: copies not authenticated by this node's key: {}", paths(.copies))]
    StateForged { key: String, copies: Vec<PathBuf> },
    /// Write-once state (the identity) holds different values on different pools: a
    /// foreign state home. Nothing is chosen and nothing is rewritten.
    #[error("state key {key:?}: copies disagree (a foreign state home?): {}", paths(.copies))]
    StateConflict { key: String, copies: Vec<PathBuf> },
    /// A state write reached only some of the online pools: it does not count as done.
    #[error(
        "state key {key:?} generation {generation}: written to {written} pool(s) but not to: {}",
        failures(.failed)
    )]
    StateIncomplete {
        key: String,
        generation: u64,
        written: usize,
        failed: Vec<(PathBuf, String)>,
    },
    /// The node created this volume and it is gone: its data is lost. Never recreated
    /// empty (a permanent error).
    #[error("volume lost: {name:?} was created on pool {pool} and {gone}")]
    VolumeLost {
        name: String,
        pool: String,
        /// What is gone: its subvolume (the pool is there), or the pool itself.
        gone: &'static str,
    },
    /// The node created this vdisk (a VM's disk) and its file is gone. Never recreated
    /// empty.
    #[error("vdisk lost: {name:?} was created on pool {pool} and {gone}")]
    VdiskLost {
        name: String,
        pool: String,
        /// What is gone: its file (the pool is there), or the pool itself.
        gone: &'static str,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("{op} on {path}: {source}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("corrupt {what}: {why}")]
    Corrupt { what: String, why: String },
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
