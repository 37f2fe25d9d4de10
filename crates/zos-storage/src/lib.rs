//! Disks, btrfs pools, volumes, vdisks, node state home.
//!
//! The engine opens a [`Storage`] once ([`Storage::open`]), then asks it for volumes
//! ([`Storage::volume_ensure`]) and vdisks ([`Storage::vdisk_ensure`]); placement picks the
//! pool. Durable node state (identity key, journal) goes through [`Storage::state`].
//! The API is synchronous: call it from `spawn_blocking`. See `docs/storage.md`.

#![deny(missing_docs, clippy::undocumented_unsafe_blocks)]

pub mod backend;
pub mod disk;
pub mod error;
pub mod loopdev;
pub mod state;
mod storage;

use serde::{Deserialize, Serialize};

pub use backend::{Backend, FsUsage, Kernel, QgroupUsage};
pub use disk::{DiscoveryConfig, Disk, DiskSelection, DiskSummary, Signature, Verdict};
pub use error::{Error, Holder, Result};
pub use state::{mac_key_of, StateHome, StateRead, StateWrite, IDENTITY_KEY};
pub use storage::{
    place, Pool, PoolCapacity, PoolInfo, PoolStatus, Storage, StorageConfig, Vdisk, Volume,
    POOLS_KEY, VDISKS_DIR, VDISKS_KEY, VOLUMES_DIR, VOLUMES_KEY,
};

/// Solid-state or spinning: placement keeps them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    /// Solid-state: a non-rotational disk (or one overridden as such).
    Ssd,
    /// Spinning: a rotational disk.
    Hdd,
}

impl std::fmt::Display for PoolKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PoolKind::Ssd => "ssd",
            PoolKind::Hdd => "hdd",
        })
    }
}

/// Names of volumes, vdisks and state keys: 1-64 of `[A-Za-z0-9._-]`, not starting with '.'.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName(name.to_string()))
    }
}
