//! Signed IT contracts for zosd.
//!
//! An IT expert signs a [`blueprint`]; a consumer instantiates it with parameters into a
//! [`contract`] for one or more nodes and signs it as owner; stakeholders co-sign. A node
//! accepts the contract only when [`verify`] finds nothing wrong. Everything that is
//! signed is signed as `ed25519(sha256(jcs(unsigned body)))` ([`canonical`], [`crypto`]).

pub mod canonical;
pub mod crypto;

pub use crypto::{Digest, KeyError, PublicKey, SecretKey, Signature};
