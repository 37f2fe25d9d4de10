//! Validated notary keys and key prefixes.
//!
//! The layout is fixed (design.md section 3, docs/grid.md); only these kinds are keys:
//!
//! ```text
//! farms/<farm_id>
//! nodes/<node_key>/registration
//! nodes/<node_key>/contracts/<contract_id>
//! nodes/<node_key>/status/<contract_id>
//! nodes/<node_key>/heartbeat
//! nodes/<node_key>/alive
//! nodes/<node_key>/requests/<request_id>
//! nodes/<node_key>/answers/<request_id>
//! nodes/<node_key>/assignments/<contract_id>/<replica>
//! grid/<farm_id>/contracts/<contract_id>
//! grid/<farm_id>/placements/<contract_id>
//! grid/<farm_id>/drains/<node_key>
//! orchestrators/<key>/leader
//! blueprints/<sha256>
//! releases/<version>
//! rollouts/<farm_id>
//! nodes/<node_key>/upgrade
//! nodes/<node_key>/rollback
//! ```
//!
//! `<version>` is a release version, `MAJOR.MINOR.PATCH` (docs/upgrade.md; the segment
//! rules here, the version's own rules where the release is read).
//!
//! `<node_key>` and `<key>` are ed25519 public keys and `<sha256>` a digest, all as 64
//! lowercase hex characters; `<replica>` is a decimal number below 64 without leading
//! zeros. `<farm_id>`, `<contract_id>` and `<request_id>` are free segments: 1 to
//! [`MAX_SEGMENT_LEN`] characters of `[A-Za-z0-9._-]`, not starting with `.` (so never `.`
//! or `..`, and never a hidden or temporary file of the dir backend). Backends map keys
//! to file paths, so everything else is refused, path traversal attempts with their own
//! error ([`KeyError::PathTraversal`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zos_contract::{Digest, PublicKey};

/// Longest accepted segment (farm id, contract id).
pub const MAX_SEGMENT_LEN: usize = 128;
/// Longest accepted key or prefix, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// Why a string is not a notary key or prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// An absolute path, or a `.` or `..` segment.
    #[error("key {0:?} tries to leave the notary tree (absolute path, `.` or `..` segment)")]
    PathTraversal(String),
    /// Longer than [`MAX_KEY_LEN`] bytes.
    #[error("key {key:?} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// The key (or prefix) as given.
        key: String,
        /// Its length, in bytes.
        len: usize,
        /// [`MAX_KEY_LEN`].
        max: usize,
    },
    /// Two `/` in a row, or a leading or trailing one.
    #[error("key {0:?} has an empty segment")]
    EmptySegment(String),
    /// A segment longer than [`MAX_SEGMENT_LEN`] characters.
    #[error("key {key:?}: segment {segment:?} is longer than {max} characters")]
    SegmentTooLong {
        /// The key (or prefix) as given.
        key: String,
        /// The segment.
        segment: String,
        /// [`MAX_SEGMENT_LEN`].
        max: usize,
    },
    /// A character outside `[A-Za-z0-9._-]` (besides the `/` separators).
    #[error("key {key:?}: character {ch:?} is not allowed (only A-Z a-z 0-9 . _ -)")]
    BadChar {
        /// The key (or prefix) as given.
        key: String,
        /// The first character not allowed.
        ch: char,
    },
    /// A segment starting with `.` (hidden or temporary files of the dir backend).
    #[error("key {0:?}: a segment may not start with `.`")]
    HiddenSegment(String),
    /// A node key or digest segment that is not 64 lowercase hex characters.
    #[error("key {key:?}: {what} must be 64 lowercase hex characters")]
    BadHex {
        /// The key (or prefix) as given.
        key: String,
        /// Which segment: `node key` or `blueprint sha256`.
        what: &'static str,
    },
    /// Valid segments, but not one of the key kinds.
    #[error(
        "key {0:?} is not in the notary layout (farms/, nodes/<key>/..., grid/, orchestrators/, blueprints/)"
    )]
    UnknownLayout(String),
}

/// What a key names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// `farms/<farm_id>`: a farm's record.
    Farm {
        /// The farm's id (a free segment).
        farm_id: String,
    },
    /// `nodes/<node_key>/registration`: a node's registration.
    Registration {
        /// The node.
        node: PublicKey,
    },
    /// `nodes/<node_key>/contracts/<contract_id>`: a contract (or its cancellation) for
    /// a node.
    Contract {
        /// The node the contract is addressed to.
        node: PublicKey,
        /// The contract's id.
        contract_id: String,
    },
    /// `nodes/<node_key>/status/<contract_id>`: a node's status report on a contract.
    Status {
        /// The reporting node.
        node: PublicKey,
        /// The contract reported on.
        contract_id: String,
    },
    /// `nodes/<node_key>/heartbeat`: a node's liveness record.
    Heartbeat {
        /// The node.
        node: PublicKey,
    },
    /// `nodes/<node_key>/alive`: the node's liveness, a leased record it keeps alive
    /// (docs/grid.md): present while the node renews its lease, gone when the lease
    /// expires. Its body says nothing a reader may use for timing.
    Alive {
        /// The node.
        node: PublicKey,
    },
    /// `nodes/<node_key>/requests/<request_id>`: a diagnostic request to a node (a
    /// support bundle or a probe), authored by whoever asks: the node decides whether
    /// the author may (docs/diagnostics.md).
    Request {
        /// The node asked.
        node: PublicKey,
        /// The request's id (a free segment chosen by the requester).
        request_id: String,
    },
    /// `nodes/<node_key>/answers/<request_id>`: the node's signed answer to a request.
    Answer {
        /// The answering node.
        node: PublicKey,
        /// The id of the request answered.
        request_id: String,
    },
    /// `nodes/<node_key>/assignments/<contract_id>/<replica>`: the orchestrator's signed
    /// assignment of one replica of a placement contract to the node; authored by the
    /// orchestrator the assignment names (docs/grid.md).
    Assignment {
        /// The node assigned.
        node: PublicKey,
        /// The placement contract.
        contract_id: String,
        /// The replica.
        replica: u64,
    },
    /// `grid/<farm_id>/contracts/<contract_id>`: a placement contract (or its
    /// cancellation) for a farm; written by a party the body names, like a node's.
    PlacementContract {
        /// The farm the placement names.
        farm_id: String,
        /// The contract's id.
        contract_id: String,
    },
    /// `grid/<farm_id>/placements/<contract_id>`: the orchestrator's placement record of
    /// a contract (where each replica runs, at which epoch, its moves); readers check the
    /// author against the contract's orchestrator.
    Placement {
        /// The farm.
        farm_id: String,
        /// The contract's id.
        contract_id: String,
    },
    /// `grid/<farm_id>/drains/<node_key>`: the farmer's drain (or undrain) of a node of
    /// the farm. The notary cannot know the farmer, so it checks no author here: readers
    /// (the orchestrator, `zos node drain`) accept it only when signed by the farmer of
    /// the farm record `farms/<farm_id>` (docs/grid.md, "Drain").
    Drain {
        /// The farm.
        farm_id: String,
        /// The node drained.
        node: PublicKey,
    },
    /// `nodes/<node_key>/mesh/<contract_id>/<network>`: the node's WireGuard peer
    /// record for one network of a contract (its public key and endpoint; docs/network.md,
    /// "Mesh"); authored by that node.
    Mesh {
        /// The node.
        node: PublicKey,
        /// The contract.
        contract_id: String,
        /// The network's name in the deployment.
        network: String,
    },
    /// `orchestrators/<key>/leader`: which instance of orchestrator `key` leads (a
    /// leased record); authored by that key.
    Leader {
        /// The orchestrator key.
        orchestrator: PublicKey,
    },
    /// `blueprints/<sha256>`: a signed blueprint, by its digest.
    Blueprint {
        /// The blueprint's digest.
        digest: Digest,
    },
    /// `releases/<version>`: a release record (docs/upgrade.md), stored by whoever
    /// publishes it. The notary checks no author: a node accepts a release only when a
    /// release key pinned in its image signed the record inside (zos-release).
    Release {
        /// The release's version as written in the key.
        version: String,
    },
    /// `rollouts/<farm_id>`: the farm's rollout (a version and its waves), written by
    /// the farmer, whom the notary cannot know: readers accept it only when signed by
    /// the farmer of `farms/<farm_id>` (zos-release's `SignedRollout::verify`).
    Rollout {
        /// The farm.
        farm_id: String,
    },
    /// `nodes/<node_key>/upgrade`: the node's last upgrade outcome (a release refused
    /// with its code, or installed and switched to); authored by that node.
    Upgrade {
        /// The node.
        node: PublicKey,
    },
    /// `nodes/<node_key>/rollback`: the node's signed rollback: the version PID 1 went
    /// back from, the new agent's exit status and last log lines; authored by that node.
    Rollback {
        /// The node.
        node: PublicKey,
    },
}

/// A validated key of the notary layout. Displays (and serializes) as its path form,
/// e.g. `nodes/<hex>/contracts/web-1`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NotaryKey(String);

impl NotaryKey {
    /// `farms/<farm_id>`; refused when `farm_id` is not a valid segment.
    pub fn farm(farm_id: &str) -> Result<Self, KeyError> {
        Self::parse(&format!("farms/{farm_id}"))
    }
    /// `nodes/<node>/registration`.
    pub fn registration(node: &PublicKey) -> Self {
        NotaryKey(format!("nodes/{node}/registration"))
    }
    /// `nodes/<node>/contracts/<contract_id>`; refused when `contract_id` is not a valid
    /// segment.
    pub fn contract(node: &PublicKey, contract_id: &str) -> Result<Self, KeyError> {
        Self::parse(&format!("nodes/{node}/contracts/{contract_id}"))
    }
    /// `nodes/<node>/status/<contract_id>`; refused when `contract_id` is not a valid
    /// segment.
    pub fn status(node: &PublicKey, contract_id: &str) -> Result<Self, KeyError> {
        Self::parse(&format!("nodes/{node}/status/{contract_id}"))
    }
    /// `nodes/<node>/heartbeat`.
    pub fn heartbeat(node: &PublicKey) -> Self {
        NotaryKey(format!("nodes/{node}/heartbeat"))
    }
    /// `nodes/<node>/alive`.
    pub fn alive(node: &PublicKey) -> Self {
        NotaryKey(format!("nodes/{node}/alive"))
    }
    /// `nodes/<node>/requests/<request_id>`; refused when `request_id` is not a valid
    /// segment.
    pub fn request(node: &PublicKey, request_id: &str) -> Result<Self, KeyError> {
        Self::parse(&format!("nodes/{node}/requests/{request_id}"))
    }
    /// `nodes/<node>/answers/<request_id>`; refused when `request_id` is not a valid
    /// segment.
    pub fn answer(node: &PublicKey, request_id: &str) -> Result<Self, KeyError> {
        Self::parse(&format!("nodes/{node}/answers/{request_id}"))
    }
    /// `blueprints/<digest>`.
    pub fn blueprint(digest: &Digest) -> Self {
        NotaryKey(format!("blueprints/{digest}"))
    }
    /// `nodes/<node>/assignments/<contract_id>/<replica>`; refused when `contract_id` is
    /// not a valid segment or `replica` is 64 or more.
    pub fn assignment(node: &PublicKey, contract_id: &str, replica: u64) -> Result<Self, KeyError> {
        Self::parse(&format!("nodes/{node}/assignments/{contract_id}/{replica}"))
    }
    /// `grid/<farm_id>/contracts/<contract_id>`.
    pub fn placement_contract(farm_id: &str, contract_id: &str) -> Result<Self, KeyError> {
        Self::parse(&format!("grid/{farm_id}/contracts/{contract_id}"))
    }
    /// `grid/<farm_id>/placements/<contract_id>`.
    pub fn placement(farm_id: &str, contract_id: &str) -> Result<Self, KeyError> {
        Self::parse(&format!("grid/{farm_id}/placements/{contract_id}"))
    }
    /// `grid/<farm_id>/drains/<node>`; refused when `farm_id` is not a valid segment.
    pub fn drain(farm_id: &str, node: &PublicKey) -> Result<Self, KeyError> {
        Self::parse(&format!("grid/{farm_id}/drains/{node}"))
    }
    /// `nodes/<node>/mesh/<contract_id>/<network>`.
    pub fn mesh(node: &PublicKey, contract_id: &str, network: &str) -> Result<Self, KeyError> {
        Self::parse(&format!("nodes/{node}/mesh/{contract_id}/{network}"))
    }
    /// `orchestrators/<key>/leader`.
    pub fn leader(orchestrator: &PublicKey) -> Self {
        NotaryKey(format!("orchestrators/{orchestrator}/leader"))
    }
    /// `releases/<version>`; refused when `version` is not a valid segment.
    pub fn release(version: &str) -> Result<Self, KeyError> {
        Self::parse(&format!("releases/{version}"))
    }
    /// `rollouts/<farm_id>`; refused when `farm_id` is not a valid segment.
    pub fn rollout(farm_id: &str) -> Result<Self, KeyError> {
        Self::parse(&format!("rollouts/{farm_id}"))
    }
    /// `nodes/<node>/upgrade`.
    pub fn upgrade(node: &PublicKey) -> Self {
        NotaryKey(format!("nodes/{node}/upgrade"))
    }
    /// `nodes/<node>/rollback`.
    pub fn rollback(node: &PublicKey) -> Self {
        NotaryKey(format!("nodes/{node}/rollback"))
    }

    /// Parses and validates the path form of a key.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let segs = segments(s)?;
        classify(s, &segs)?;
        Ok(NotaryKey(s.to_owned()))
    }

    /// The path form, e.g. `nodes/<hex>/contracts/web-1`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the key names.
    pub fn kind(&self) -> KeyKind {
        let segs: Vec<&str> = self.0.split('/').collect();
        classify(&self.0, &segs).expect("a NotaryKey is validated at construction")
    }

    /// The node whose own reports live under this key (registration, status, heartbeat,
    /// alive, answers): only that node may author them. `None` for farms, contracts, requests
    /// and blueprints.
    pub fn node_owner(&self) -> Option<PublicKey> {
        match self.kind() {
            KeyKind::Registration { node }
            | KeyKind::Status { node, .. }
            | KeyKind::Heartbeat { node }
            | KeyKind::Alive { node }
            | KeyKind::Mesh { node, .. }
            | KeyKind::Upgrade { node }
            | KeyKind::Rollback { node }
            | KeyKind::Answer { node, .. } => Some(node),
            KeyKind::Leader { orchestrator } => Some(orchestrator),
            _ => None,
        }
    }

    /// True when this key lies under `prefix` (see [`KeyPrefix`]).
    pub fn has_prefix(&self, prefix: &KeyPrefix) -> bool {
        prefix.matches(&self.0)
    }
}

/// Splits and checks the generic segment rules shared by keys and prefixes.
fn segments(s: &str) -> Result<Vec<&str>, KeyError> {
    if s.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong {
            key: s.chars().take(MAX_KEY_LEN).collect(),
            len: s.len(),
            max: MAX_KEY_LEN,
        });
    }
    let segs: Vec<&str> = s.split('/').collect();
    // Traversal first: it is the attack worth naming, whatever else is wrong.
    if s.starts_with('/') || segs.iter().any(|g| *g == "." || *g == "..") {
        return Err(KeyError::PathTraversal(s.to_owned()));
    }
    for seg in &segs {
        if seg.is_empty() {
            return Err(KeyError::EmptySegment(s.to_owned()));
        }
        if let Some(ch) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(KeyError::BadChar {
                key: s.to_owned(),
                ch,
            });
        }
        if seg.starts_with('.') {
            return Err(KeyError::HiddenSegment(s.to_owned()));
        }
        if seg.len() > MAX_SEGMENT_LEN {
            return Err(KeyError::SegmentTooLong {
                key: s.to_owned(),
                segment: seg.to_string(),
                max: MAX_SEGMENT_LEN,
            });
        }
    }
    Ok(segs)
}

fn hex32<T: FromStr>(key: &str, seg: &str, what: &'static str) -> Result<T, KeyError> {
    seg.parse().map_err(|_| KeyError::BadHex {
        key: key.to_owned(),
        what,
    })
}

/// A replica segment: `0` to `63`, decimal, no leading zero (one spelling per replica).
fn replica(key: &str, seg: &str) -> Result<u64, KeyError> {
    let bad = || KeyError::UnknownLayout(key.to_owned());
    if seg.len() > 1 && seg.starts_with('0') {
        return Err(bad());
    }
    match seg.parse::<u64>() {
        Ok(r) if r < 64 && seg.bytes().all(|b| b.is_ascii_digit()) => Ok(r),
        _ => Err(bad()),
    }
}

fn classify(s: &str, segs: &[&str]) -> Result<KeyKind, KeyError> {
    let node = |seg: &str| hex32::<PublicKey>(s, seg, "node key");
    Ok(match segs {
        ["farms", id] => KeyKind::Farm {
            farm_id: id.to_string(),
        },
        ["blueprints", d] => KeyKind::Blueprint {
            digest: hex32(s, d, "blueprint sha256")?,
        },
        ["nodes", n, "registration"] => KeyKind::Registration { node: node(n)? },
        ["nodes", n, "heartbeat"] => KeyKind::Heartbeat { node: node(n)? },
        ["nodes", n, "alive"] => KeyKind::Alive { node: node(n)? },
        ["nodes", n, "upgrade"] => KeyKind::Upgrade { node: node(n)? },
        ["nodes", n, "rollback"] => KeyKind::Rollback { node: node(n)? },
        ["releases", v] => KeyKind::Release {
            version: v.to_string(),
        },
        ["rollouts", id] => KeyKind::Rollout {
            farm_id: id.to_string(),
        },
        ["nodes", n, "contracts", id] => KeyKind::Contract {
            node: node(n)?,
            contract_id: id.to_string(),
        },
        ["nodes", n, "status", id] => KeyKind::Status {
            node: node(n)?,
            contract_id: id.to_string(),
        },
        ["nodes", n, "requests", id] => KeyKind::Request {
            node: node(n)?,
            request_id: id.to_string(),
        },
        ["nodes", n, "answers", id] => KeyKind::Answer {
            node: node(n)?,
            request_id: id.to_string(),
        },
        ["nodes", n, "assignments", id, r] => KeyKind::Assignment {
            node: node(n)?,
            contract_id: id.to_string(),
            replica: replica(s, r)?,
        },
        ["nodes", n, "mesh", id, net] => KeyKind::Mesh {
            node: node(n)?,
            contract_id: id.to_string(),
            network: net.to_string(),
        },
        ["grid", farm, "contracts", id] => KeyKind::PlacementContract {
            farm_id: farm.to_string(),
            contract_id: id.to_string(),
        },
        ["grid", farm, "placements", id] => KeyKind::Placement {
            farm_id: farm.to_string(),
            contract_id: id.to_string(),
        },
        ["grid", farm, "drains", n] => KeyKind::Drain {
            farm_id: farm.to_string(),
            node: node(n)?,
        },
        ["orchestrators", k, "leader"] => KeyKind::Leader {
            orchestrator: hex32(s, k, "orchestrator key")?,
        },
        _ => return Err(KeyError::UnknownLayout(s.to_owned())),
    })
}

impl FromStr for NotaryKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::parse(s)
    }
}

impl fmt::Display for NotaryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NotaryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NotaryKey({})", self.0)
    }
}

impl AsRef<str> for NotaryKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for NotaryKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for NotaryKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A validated key prefix: zero or more whole segments. A key is under a prefix when it
/// equals it or continues it with `/`: `nodes/<k>/contracts` covers
/// `nodes/<k>/contracts/a` but `farms/1` does not cover `farms/10`. The empty prefix
/// covers every key.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// Every key.
    pub fn all() -> Self {
        KeyPrefix(String::new())
    }

    /// Parses a prefix; one trailing `/` is accepted and dropped.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let s = s.strip_suffix('/').unwrap_or(s);
        if s.is_empty() {
            return Ok(Self::all());
        }
        segments(s)?;
        Ok(KeyPrefix(s.to_owned()))
    }

    /// Every farm record.
    pub fn farms() -> Self {
        KeyPrefix("farms".into())
    }
    /// Every blueprint.
    pub fn blueprints() -> Self {
        KeyPrefix("blueprints".into())
    }
    /// Everything a node has: registration, contracts, status, heartbeat, alive.
    pub fn node(node: &PublicKey) -> Self {
        KeyPrefix(format!("nodes/{node}"))
    }
    /// The contracts addressed to `node`.
    pub fn node_contracts(node: &PublicKey) -> Self {
        KeyPrefix(format!("nodes/{node}/contracts"))
    }
    /// The status reports of `node`.
    pub fn node_status(node: &PublicKey) -> Self {
        KeyPrefix(format!("nodes/{node}/status"))
    }
    /// The diagnostic requests addressed to `node`.
    pub fn node_requests(node: &PublicKey) -> Self {
        KeyPrefix(format!("nodes/{node}/requests"))
    }
    /// The answers of `node` to diagnostic requests.
    pub fn node_answers(node: &PublicKey) -> Self {
        KeyPrefix(format!("nodes/{node}/answers"))
    }
    /// The assignments naming `node`.
    pub fn node_assignments(node: &PublicKey) -> Self {
        KeyPrefix(format!("nodes/{node}/assignments"))
    }
    /// Everything of the grid: placement contracts, placement records and drains of
    /// every farm.
    pub fn grid() -> Self {
        KeyPrefix("grid".into())
    }
    /// Every node: registrations, heartbeats, alive records, statuses, assignments.
    pub fn nodes() -> Self {
        KeyPrefix("nodes".into())
    }
    /// Every release record.
    pub fn releases() -> Self {
        KeyPrefix("releases".into())
    }
    /// Every farm's rollout.
    pub fn rollouts() -> Self {
        KeyPrefix("rollouts".into())
    }

    /// The path form without a trailing `/`; empty for [`KeyPrefix::all`].
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// True when `key` (a key's path form) lies under this prefix.
    pub fn matches(&self, key: &str) -> bool {
        self.0.is_empty()
            || (key.starts_with(&self.0)
                && (key.len() == self.0.len() || key.as_bytes()[self.0.len()] == b'/'))
    }
}

impl From<&NotaryKey> for KeyPrefix {
    fn from(key: &NotaryKey) -> Self {
        KeyPrefix(key.0.clone())
    }
}

impl FromStr for KeyPrefix {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, KeyError> {
        Self::parse(s)
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPrefix({:?})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_contract::SecretKey;

    fn node() -> PublicKey {
        SecretKey::from_seed([3; 32]).public()
    }

    #[test]
    fn constructors_produce_the_layout() {
        let n = node();
        let h = n.to_hex();
        assert_eq!(NotaryKey::farm("7").unwrap().as_str(), "farms/7");
        assert_eq!(
            NotaryKey::registration(&n).as_str(),
            format!("nodes/{h}/registration")
        );
        assert_eq!(
            NotaryKey::contract(&n, "web-1").unwrap().as_str(),
            format!("nodes/{h}/contracts/web-1")
        );
        assert_eq!(
            NotaryKey::status(&n, "web_1.v2").unwrap().as_str(),
            format!("nodes/{h}/status/web_1.v2")
        );
        assert_eq!(
            NotaryKey::heartbeat(&n).as_str(),
            format!("nodes/{h}/heartbeat")
        );
        assert_eq!(NotaryKey::alive(&n).as_str(), format!("nodes/{h}/alive"));
        assert_eq!(NotaryKey::alive(&n).kind(), KeyKind::Alive { node: n });
        assert_eq!(
            NotaryKey::alive(&n).node_owner(),
            Some(n),
            "only the node keeps itself alive"
        );
        assert!(NotaryKey::alive(&n).has_prefix(&KeyPrefix::node(&n)));
        assert!(matches!(
            NotaryKey::parse("nodes/abc/alive"),
            Err(KeyError::BadHex { .. })
        ));
        let d = Digest::of(b"x");
        assert_eq!(NotaryKey::blueprint(&d).as_str(), format!("blueprints/{d}"));
        for k in [
            NotaryKey::farm("7").unwrap(),
            NotaryKey::registration(&n),
            NotaryKey::contract(&n, "c").unwrap(),
            NotaryKey::heartbeat(&n),
            NotaryKey::alive(&n),
            NotaryKey::blueprint(&d),
        ] {
            assert_eq!(NotaryKey::parse(k.as_str()).unwrap(), k);
        }
        assert_eq!(
            NotaryKey::contract(&n, "c").unwrap().kind(),
            KeyKind::Contract {
                node: n,
                contract_id: "c".into()
            }
        );
        assert_eq!(NotaryKey::heartbeat(&n).node_owner(), Some(n));
        assert_eq!(NotaryKey::contract(&n, "c").unwrap().node_owner(), None);
        let req = NotaryKey::request(&n, "r-1").unwrap();
        assert_eq!(req.as_str(), format!("nodes/{h}/requests/r-1"));
        assert_eq!(
            req.kind(),
            KeyKind::Request {
                node: n,
                request_id: "r-1".into()
            }
        );
        assert_eq!(req.node_owner(), None, "anyone may ask; the node decides");
        let ans = NotaryKey::answer(&n, "r-1").unwrap();
        assert_eq!(ans.as_str(), format!("nodes/{h}/answers/r-1"));
        assert_eq!(ans.node_owner(), Some(n), "only the node answers");
        assert!(req.has_prefix(&KeyPrefix::node_requests(&n)));
        assert!(ans.has_prefix(&KeyPrefix::node_answers(&n)));
        assert!(!ans.has_prefix(&KeyPrefix::node_requests(&n)));
        assert!(matches!(
            NotaryKey::request(&n, ".."),
            Err(KeyError::PathTraversal(_))
        ));
        assert!(matches!(
            NotaryKey::answer(&n, "a/b"),
            Err(KeyError::UnknownLayout(_))
        ));
    }

    #[test]
    fn path_traversal_is_refused_with_its_own_error() {
        let h = node().to_hex();
        for bad in [
            "../etc/passwd".to_string(),
            "/etc/passwd".to_string(),
            "farms/..".to_string(),
            "farms/.".to_string(),
            format!("nodes/{h}/contracts/.."),
            format!("nodes/{h}/../../../../etc/shadow"),
            "./farms/1".to_string(),
        ] {
            assert!(
                matches!(NotaryKey::parse(&bad), Err(KeyError::PathTraversal(_))),
                "{bad}: {:?}",
                NotaryKey::parse(&bad)
            );
            assert!(matches!(
                KeyPrefix::parse(&bad),
                Err(KeyError::PathTraversal(_))
            ));
        }
        assert!(matches!(
            NotaryKey::contract(&node(), ".."),
            Err(KeyError::PathTraversal(_))
        ));
    }

    #[test]
    fn other_bad_keys_have_specific_errors() {
        let h = node().to_hex();
        assert!(matches!(
            NotaryKey::parse("farms/a b"),
            Err(KeyError::BadChar { ch: ' ', .. })
        ));
        assert!(matches!(
            NotaryKey::parse("farms/a\\b"),
            Err(KeyError::BadChar { ch: '\\', .. })
        ));
        assert!(matches!(
            NotaryKey::parse("farms/é"),
            Err(KeyError::BadChar { .. })
        ));
        assert!(matches!(
            NotaryKey::parse("farms//1"),
            Err(KeyError::EmptySegment(_))
        ));
        assert!(matches!(
            NotaryKey::parse("farms/"),
            Err(KeyError::EmptySegment(_))
        ));
        assert!(matches!(
            NotaryKey::parse("farms/.hidden"),
            Err(KeyError::HiddenSegment(_))
        ));
        assert!(matches!(
            NotaryKey::parse(&format!("farms/{}", "a".repeat(129))),
            Err(KeyError::SegmentTooLong { .. })
        ));
        assert!(matches!(
            NotaryKey::parse(&"a/".repeat(200)),
            Err(KeyError::TooLong { .. })
        ));
        assert!(matches!(
            NotaryKey::parse("nodes/abc/heartbeat"),
            Err(KeyError::BadHex { .. })
        ));
        assert!(matches!(
            NotaryKey::parse(&format!("nodes/{}/heartbeat", h.to_uppercase())),
            Err(KeyError::BadHex { .. })
        ));
        assert!(matches!(
            NotaryKey::parse(&format!("nodes/{h}/other")),
            Err(KeyError::UnknownLayout(_))
        ));
        assert!(matches!(
            NotaryKey::parse("farms"),
            Err(KeyError::UnknownLayout(_))
        ));
        assert!(matches!(
            NotaryKey::parse("farms/1/x"),
            Err(KeyError::UnknownLayout(_))
        ));
    }

    #[test]
    fn the_grid_keys_parse_and_only_their_spelling() {
        let n = node();
        let h = n.to_hex();
        let a = NotaryKey::assignment(&n, "web", 3).unwrap();
        assert_eq!(a.as_str(), format!("nodes/{h}/assignments/web/3"));
        assert_eq!(
            a.kind(),
            KeyKind::Assignment {
                node: n,
                contract_id: "web".into(),
                replica: 3
            }
        );
        assert_eq!(
            a.node_owner(),
            None,
            "the orchestrator writes it, not the node"
        );
        assert!(a.has_prefix(&KeyPrefix::node_assignments(&n)));
        for bad in ["03", "64", "-1", "1x", "99999999999999999999"] {
            assert!(
                matches!(
                    NotaryKey::parse(&format!("nodes/{h}/assignments/web/{bad}")),
                    Err(KeyError::UnknownLayout(_))
                ),
                "{bad}"
            );
        }
        assert!(NotaryKey::assignment(&n, "web", 64).is_err());
        assert_eq!(
            NotaryKey::placement_contract("f1", "web").unwrap().kind(),
            KeyKind::PlacementContract {
                farm_id: "f1".into(),
                contract_id: "web".into()
            }
        );
        assert_eq!(
            NotaryKey::placement("f1", "web").unwrap().as_str(),
            "grid/f1/placements/web"
        );
        assert!(NotaryKey::placement("..", "web").is_err());
        let l = NotaryKey::leader(&n);
        assert_eq!(l.as_str(), format!("orchestrators/{h}/leader"));
        assert_eq!(
            l.node_owner(),
            Some(n),
            "only the orchestrator key writes it"
        );
        assert!(NotaryKey::parse("orchestrators/abc/leader").is_err());
        assert!(NotaryKey::parse("grid/f1/other/web").is_err());
    }

    #[test]
    fn a_mesh_key_is_its_nodes_own() {
        let n = SecretKey::from_seed([3; 32]).public();
        let k = NotaryKey::mesh(&n, "web", "net").unwrap();
        assert_eq!(k.as_str(), format!("nodes/{n}/mesh/web/net"));
        assert_eq!(
            k.kind(),
            KeyKind::Mesh {
                node: n,
                contract_id: "web".into(),
                network: "net".into(),
            }
        );
        assert_eq!(k.node_owner(), Some(n));
        assert!(NotaryKey::mesh(&n, "web", "..").is_err());
        assert!(k.has_prefix(&KeyPrefix::node(&n)));
    }

    #[test]
    fn a_drain_key_names_a_farm_and_a_node_and_no_author() {
        let n = node();
        let h = n.to_hex();
        let d = NotaryKey::drain("f1", &n).unwrap();
        assert_eq!(d.as_str(), format!("grid/f1/drains/{h}"));
        assert_eq!(
            d.kind(),
            KeyKind::Drain {
                farm_id: "f1".into(),
                node: n
            }
        );
        assert_eq!(NotaryKey::parse(d.as_str()).unwrap(), d);
        assert_eq!(
            d.node_owner(),
            None,
            "the farmer writes it; the notary cannot know the farmer, readers check"
        );
        assert!(d.has_prefix(&KeyPrefix::grid()));
        assert!(!d.has_prefix(&KeyPrefix::node(&n)));
        assert!(matches!(
            NotaryKey::parse("grid/f1/drains/abc"),
            Err(KeyError::BadHex { .. })
        ));
        assert!(matches!(
            NotaryKey::parse(&format!("grid/f1/drains/{h}/x")),
            Err(KeyError::UnknownLayout(_))
        ));
        assert!(matches!(
            NotaryKey::drain("..", &n),
            Err(KeyError::PathTraversal(_))
        ));
    }

    #[test]
    fn the_upgrade_keys_parse_and_only_the_node_writes_its_own() {
        let n = node();
        let h = n.to_hex();
        let r = NotaryKey::release("0.2.0").unwrap();
        assert_eq!(r.as_str(), "releases/0.2.0");
        assert_eq!(
            r.kind(),
            KeyKind::Release {
                version: "0.2.0".into()
            }
        );
        assert_eq!(
            r.node_owner(),
            None,
            "the release key inside is what counts"
        );
        assert!(r.has_prefix(&KeyPrefix::releases()));
        let o = NotaryKey::rollout("f1").unwrap();
        assert_eq!(o.as_str(), "rollouts/f1");
        assert_eq!(
            o.kind(),
            KeyKind::Rollout {
                farm_id: "f1".into()
            }
        );
        assert_eq!(o.node_owner(), None, "the farmer writes it; readers check");
        assert!(o.has_prefix(&KeyPrefix::rollouts()));
        assert!(!o.has_prefix(&KeyPrefix::farms()));
        let u = NotaryKey::upgrade(&n);
        assert_eq!(u.as_str(), format!("nodes/{h}/upgrade"));
        assert_eq!(u.kind(), KeyKind::Upgrade { node: n });
        assert_eq!(u.node_owner(), Some(n));
        let b = NotaryKey::rollback(&n);
        assert_eq!(b.as_str(), format!("nodes/{h}/rollback"));
        assert_eq!(b.kind(), KeyKind::Rollback { node: n });
        assert_eq!(b.node_owner(), Some(n));
        assert!(b.has_prefix(&KeyPrefix::node(&n)));
        for k in [&r, &o, &u, &b] {
            assert_eq!(&NotaryKey::parse(k.as_str()).unwrap(), k);
        }
        assert!(matches!(
            NotaryKey::release(".."),
            Err(KeyError::PathTraversal(_))
        ));
        assert!(matches!(
            NotaryKey::parse("releases/0.2.0/x"),
            Err(KeyError::UnknownLayout(_))
        ));
        assert!(matches!(
            NotaryKey::parse("nodes/abc/rollback"),
            Err(KeyError::BadHex { .. })
        ));
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let p = KeyPrefix::parse("farms/1").unwrap();
        assert!(p.matches("farms/1"));
        assert!(!p.matches("farms/10"));
        assert!(KeyPrefix::parse("farms/").unwrap().matches("farms/10"));
        assert!(KeyPrefix::all().matches("blueprints/x"));
        assert_eq!(KeyPrefix::parse("").unwrap(), KeyPrefix::all());
        let n = node();
        let k = NotaryKey::contract(&n, "c").unwrap();
        assert!(k.has_prefix(&KeyPrefix::node_contracts(&n)));
        assert!(k.has_prefix(&KeyPrefix::node(&n)));
        assert!(!k.has_prefix(&KeyPrefix::node_status(&n)));
        assert!(k.has_prefix(&KeyPrefix::from(&k)));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_accepts_a_path_that_escapes(s in "[a-z./]{0,40}") {
            if let Ok(k) = NotaryKey::parse(&s) {
                proptest::prop_assert!(!k.as_str().starts_with('/'));
                proptest::prop_assert!(k.as_str().split('/').all(|g| !g.is_empty() && !g.starts_with('.')));
            }
        }
    }
}
