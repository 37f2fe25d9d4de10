//! Farms, node registrations and heartbeats: the record bodies, their checks, and the
//! detection of what a node reports.
//!
//! Three kinds of notary records (docs/registration.md has the formats):
//!
//! - `farms/<farm_id>`: a [`Farm`], signed by the farmer key it names. The notary's
//!   node-owned rule does not apply to farms, so this crate adds the farm's own rule: the
//!   author is the `farmer` of the body, and an update keeps the farmer
//!   ([`Farm::check_update`]).
//! - `nodes/<node>/registration`: a [`Registration`] (farm, zosd version, capacity,
//!   NICs, DMI), signed by the node key (the notary's node-owned rule).
//! - `nodes/<node>/heartbeat`: a [`Heartbeat`] (uptime, reserved and used capacity,
//!   contract and workload counts, the node's listening sockets), signed by the node.
//!
//! Every `from_record` verifies the envelope again (whatever handed it over), then reads
//! the body strictly (no unknown fields) and checks its bounds. [`detect`] reads what a
//! node reports from /proc and /sys; its parsers take text, so they are tested on
//! fixtures, and its readers are thin.
//!
//! [`membership`] is a node's part over time: it waits for its farm (with backoff, a
//! pure state machine), pins the farmer, publishes its registration, then heartbeats.
//! [`liveness`] keeps the node's `nodes/<node>/alive` record alive under a lease (the
//! grid's liveness, docs/grid.md) and tells when it last renewed, on `CLOCK_BOOTTIME`.

#![forbid(unsafe_code)]

pub mod detect;
pub mod farm;
pub mod heartbeat;
pub mod liveness;
pub mod membership;
pub mod registration;

pub use farm::Farm;
pub use heartbeat::{
    label_wireguard, ContractCounts, Heartbeat, Proto, Socket, SocketLabel, Usage, MAX_SOCKETS,
};
pub use registration::{Dmi, Nic, NodeResources, Registration};
/// A farm's telemetry destinations are the contract format's.
pub use zos_contract::deployment::{Telemetry, TelemetryKind};

use zos_contract::PublicKey;
use zos_notary::{KeyError, RecordError};

/// Largest integer a record may carry: canonical JSON numbers are IEEE doubles.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Why a farm, registration or heartbeat record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The envelope does not verify (signature, author, key rule), per the notary.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The record's key is not a valid notary key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The key is not of the kind asked for (a heartbeat read as a registration, ...).
    #[error("record {key} is not a {expected} record")]
    WrongKind {
        /// The record's notary key.
        key: String,
        /// The kind asked for (`farm`, `registration`, `heartbeat`).
        expected: &'static str,
    },
    /// The body is not the expected JSON object (unknown, missing or mistyped fields).
    #[error("record {key}: malformed body: {reason}")]
    Body {
        /// The record's notary key.
        key: String,
        /// What the strict reader refused.
        reason: String,
    },
    /// A field is out of its bounds (empty, too long, control characters, beyond 2^53-1).
    #[error("record {key}: {field} {reason}")]
    Invalid {
        /// The record's notary key.
        key: String,
        /// The body field, by its JSON name.
        field: &'static str,
        /// Which bound it breaks.
        reason: String,
    },
    /// A farm body whose `id` is not the farm id of its key.
    #[error("record {key} names farm {body_id:?}")]
    FarmIdMismatch {
        /// The record's notary key (`farms/<id>`).
        key: String,
        /// The id in the body.
        body_id: String,
    },
    /// A farm record not signed by the farmer it names.
    #[error("farm {farm} names farmer {farmer} but is signed by {author}: a farm record must be signed by its farmer")]
    FarmerNotAuthor {
        /// The farm id.
        farm: String,
        /// The farmer the body names.
        farmer: PublicKey,
        /// The key that signed the record.
        author: PublicKey,
    },
    /// An update of a farm that names another farmer than the current one.
    #[error("farm {farm} belongs to farmer {owner}; {new} cannot take it over")]
    FarmerChanged {
        /// The farm id.
        farm: String,
        /// The farmer of the current record.
        owner: PublicKey,
        /// The farmer the update names.
        new: PublicKey,
    },
}

/// Checks a free text field: 1 to `max` characters, no control characters (they could
/// rewrite a terminal that prints them).
pub(crate) fn check_text(
    key: &str,
    field: &'static str,
    value: &str,
    max: usize,
) -> Result<(), RegistryError> {
    let invalid = |reason: String| RegistryError::Invalid {
        key: key.to_owned(),
        field,
        reason,
    };
    let len = value.chars().count();
    if len == 0 {
        return Err(invalid("is empty".into()));
    }
    if len > max {
        return Err(invalid(format!("is {len} characters; the limit is {max}")));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid("contains a control character".into()));
    }
    Ok(())
}

/// Checks an integer fits canonical JSON (signing would fail later, less clearly).
pub(crate) fn check_int(key: &str, field: &'static str, value: u64) -> Result<(), RegistryError> {
    if value > MAX_SAFE_INTEGER {
        return Err(RegistryError::Invalid {
            key: key.to_owned(),
            field,
            reason: format!("{value} is beyond 2^53-1"),
        });
    }
    Ok(())
}

/// Reads a body strictly, with the signed documents' rules (docs/contract-format.md
/// section 2.1): unknown or missing fields, an object spelled as an array, and `null`
/// members are refused.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned + serde::Serialize>(
    key: &str,
    body: &serde_json::Value,
) -> Result<T, RegistryError> {
    zos_contract::document::typed(body, "$.body").map_err(|e| RegistryError::Body {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// Unix seconds now (0 if the clock is before 1970).
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
