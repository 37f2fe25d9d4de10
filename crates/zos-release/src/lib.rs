//! The node's own software, signed end to end (docs/upgrade.md).
//!
//! - A [`Release`] names a [`Version`] and the signed flists of its parts (the agent
//!   `zosd`, the hypervisor bundle `qemu`), each a [`FlistRef`] pinned by sha256 and
//!   signed by a publisher. The release key signs `sha256(jcs(release))`
//!   ([`SignedRelease`]); a node accepts it only through [`verify_release`], against the
//!   release keys pinned in its image and the version it runs.
//! - [`fetch_part`] fetches one part into a slot directory with zos-flist's
//!   verification (the pin, the publisher's signature, every block): a tampered part is
//!   refused as [`PartError::Tampered`] and the slot is not written.
//!   [`install_release`] is the two together: a record's bytes verified, then every
//!   part into `slots/<version>/`, which exists only once all of them are complete.
//! - A [`Rollout`] is the farmer's signed plan for a farm: a version and waves. Which
//!   wave a node is in ([`wave_of`]) and whether it may upgrade now ([`may_upgrade`])
//!   are pure functions.
//!
//! - [`agent`]: the agent's side of an upgrade: whether its wave may go
//!   ([`agent::plan`]), the release installed and the switch asked of PID 1
//!   ([`agent::upgrade`]), the health mark, the published outcome.
//!
//! [`FlistRef`]: zos_contract::deployment::FlistRef

#![forbid(unsafe_code)]

pub mod agent;
pub mod follow;
pub mod hypervisor;
pub mod release;
pub mod rollout;
pub mod slot;
pub mod version;

pub use release::{
    verify_release, verify_release_bytes, verify_signed, Parts, Release, ReleaseRefusal,
    SignedRelease, VerifiedRelease,
};
pub use rollout::{may_upgrade, wave_of, Health, Rollout, RolloutRefusal, SignedRollout, Wave};
pub use slot::{
    check_slot, fetch_part, install_release, InstallError, Installed, PartError, SlotCheckError,
};
pub use version::{Version, VersionError};
