//! Signed IT contracts for zosd.
//!
//! An IT expert signs a [`Blueprint`]: typed parameters with bounds and a deployment
//! template. A consumer instantiates it with parameter values into a [`Contract`] for
//! one or more nodes and signs it as owner; stakeholders co-sign. A node deploys the
//! contract only when [`verify()`] finds no [`Reason`] to refuse it, and what it deploys
//! is the blueprint's expansion ([`Deployment`]), never free-form input.
//!
//! A contract may carry a [`Placement`] instead of nodes: its orchestrator then names
//! the nodes by [`SignedAssignment`]s, which a node checks with [`admit`].
//!
//! Everything signed is signed as `ed25519(sha256(jcs(unsigned body)))`: see
//! [`canonical`] and [`crypto`], and docs/contract-format.md for the byte-level spec.

#![forbid(unsafe_code)]

pub mod assignment;
pub mod blueprint;
pub mod canonical;
pub mod contract;
pub mod crypto;
pub mod deployment;
pub mod document;
pub mod limits;
pub mod params;
pub mod placement;
pub mod placement_view;
mod shape;
pub mod spec_example;
pub mod update;
pub mod verify;

pub use assignment::{admit, Admitted, Assignment, AssignmentRefusal, SignedAssignment};
pub use blueprint::{Blueprint, BlueprintError, SignedBlueprint};
pub use contract::{
    BlueprintRef, Cancellation, Contract, ContractError, ContractRecord, SignatureEntry,
    SignedCancellation, SignedContract, Stakeholder,
};
pub use crypto::{Digest, KeyError, PublicKey, SecretKey, Signature, VerifiedTriples};
pub use deployment::Deployment;
pub use limits::Limits;
pub use placement::{Constraints, Failover, FailoverMode, Placement, PlacementError};
pub use placement_view::{HandoverView, PlacementView, ReplicaView};
pub use update::{check_update, Signers, UpdateReason, UpdateRefusal};
pub use verify::{
    verify, verify_bytes, verify_bytes_cached, verify_cached, Accepted, Reason, Refusal,
    Verification, VerifyContext,
};
