//! The reconcile engine: desired state (the verified contracts the notary holds for
//! this node) against actual state (the journal and what exists on the machine).
//!
//! - [`engine::Engine`]: the loop. It gathers the inputs of the [`controllers`]
//!   (admission: verification with zos-contract and the node's [`capacity`];
//!   provisioning through the [`provision::Provisioner`] port in dependency order, on
//!   per-contract jobs off the loop; supervision with [`restart`] backoff; expiry;
//!   orphans; reporting: a signed status record ([`status`]) on every change), calls
//!   their pure plans and executes their actions, journal first.
//! - [`plan`]: names, addresses and the plans a deployment turns into.
//! - [`journal`]: what the node owns and has accepted, written through atomically, so
//!   a restart re-adopts instead of starting twice and a reboot cannot re-open replays.
//!
//! The engine does not touch the kernel itself: zosd gives it a provisioner built on
//! zos-storage, zos-network, zos-flist and zos-container.

#![forbid(unsafe_code)]

pub mod capacity;
pub mod controllers;
pub mod engine;
pub mod journal;
pub mod kernel_names;
pub mod names;
pub mod plan;
pub mod provision;
pub mod restart;
pub mod runtime;
pub mod stats;
pub mod status;

pub use capacity::{Capacity, OverCapacity};
pub use engine::{Engine, EngineConfig, EngineError, Liveness, MAX_TOMBSTONES, VOLUME_GRACE};
pub use journal::{FileJournal, Held, Journal, JournalStore, Owned, Phase, Retired};
pub use kernel_names::{KernelNames, KernelNamesError};
pub use provision::{
    Inventory, MeshPeerPlan, MeshPeerState, MeshPlan, MeshState, NetworkPlan, ProvisionError,
    Provisioner, Retry, WireguardMissing, WorkloadPlan, WorkloadState, WorkloadStatus,
};
pub use runtime::{KernelIds, Kind, Nic, NicStyle, Placement, Runtimes, WorkloadRuntime};
pub use status::{
    ContractSummary, MeshPeerReport, MeshReport, RefusedUpdate, State, StatusReport,
    WorkloadSummary,
};
