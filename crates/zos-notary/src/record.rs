//! The signed record envelope: every value in the notary is one.
//!
//! ```json
//! {"author":"<hex>","body":{...},"key":"nodes/<hex>/contracts/c1","signed_at":1700000000,
//!  "signature":"<hex>"}
//! ```
//!
//! `signature = ed25519(author, sha256(jcs({"author","body","key","signed_at"})))`: the
//! envelope without `signature`, RFC 8785 canonical. The key is signed, so a record
//! cannot be replayed under another key. See docs/notary.md.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zos_contract::canonical::{self, CanonError};
use zos_contract::document::{self, DocError};
use zos_contract::{ContractRecord, Digest, PublicKey, SecretKey, Signature};

use crate::key::{KeyError, KeyKind, NotaryKey};

/// Largest encoded record accepted anywhere (read, write, sign): 1 MiB.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Largest `signed_at` that is exactly representable in canonical JSON (2^53 - 1).
const MAX_SIGNED_AT: u64 = (1 << 53) - 1;

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The encoded record is larger than [`MAX_RECORD_BYTES`].
    #[error("record is {size} bytes; the limit is {max}")]
    Oversized {
        /// Its size, in bytes.
        size: usize,
        /// [`MAX_RECORD_BYTES`].
        max: usize,
    },
    /// Not strict JSON, or not the envelope's shape: what is wrong.
    #[error("malformed record: {0}")]
    Malformed(String),
    /// The envelope has no canonical form (e.g. an integer outside ±(2^53-1)), so it
    /// cannot be signed or verified.
    #[error("record has no canonical form: {0}")]
    Canonical(#[from] CanonError),
    /// The record's key is not in the notary's key layout.
    #[error("record key: {0}")]
    Key(#[from] KeyError),
    /// The author's signature does not verify over the envelope.
    #[error("signature of record {key} by {author} does not verify")]
    BadSignature {
        /// The key the record claims.
        key: String,
        /// The author the record claims.
        author: PublicKey,
    },
    /// The record was found under another key than the one it is signed for (replayed or
    /// moved).
    #[error("record signed for key {signed} found under key {found}")]
    KeyMismatch {
        /// The key in the signed envelope.
        signed: String,
        /// Where the backend holds it.
        found: String,
    },
    /// A key owned by one key (a node's registration, status, heartbeat, alive, answers; an
    /// orchestrator's leader record) written by someone else.
    #[error("record {key} is authored by {author}; only node {owner} may write it")]
    WrongAuthor {
        /// The record's key.
        key: String,
        /// Who signed it.
        author: PublicKey,
        /// The node the key belongs to.
        owner: PublicKey,
    },
    /// `signed_at` is above 2^53-1, which canonical JSON cannot hold exactly.
    #[error("signed_at {0} is beyond 2^53-1")]
    SignedAtOutOfRange(u64),
    /// A contract record written by someone who is not a party to the contract its body
    /// names (its owner or a stakeholder; a cancellation's owner).
    #[error(
        "contract record {key} is authored by {author}, who is neither the owner nor a \
         stakeholder of the contract its body names"
    )]
    NotAParty {
        /// The record's key.
        key: String,
        /// Who signed it.
        author: PublicKey,
    },
    /// An assignment record written by someone other than the orchestrator its body
    /// names.
    #[error(
        "assignment record {key} is authored by {author}, not by the orchestrator its body \
         names"
    )]
    NotTheOrchestrator {
        /// The record's key.
        key: String,
        /// Who signed it.
        author: PublicKey,
    },
}

/// A signed notary record. Construct with [`Record::sign`] or [`Record::from_bytes`];
/// fields are public for reading, and [`Record::verify`] checks them as they are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The notary key it is signed for, in path form (validated by [`Record::verify`]).
    pub key: String,
    /// Who signed it.
    pub author: PublicKey,
    /// Unix seconds, chosen by the author.
    pub signed_at: u64,
    /// The payload: a contract, a status report, a registration, ... as its key says.
    pub body: Value,
    /// `author`'s signature over [`Record::signing_digest`].
    pub signature: Signature,
}

impl Record {
    /// Signs `body` for `key` now.
    pub fn sign(key: &NotaryKey, body: Value, secret: &SecretKey) -> Result<Self, RecordError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self::sign_at(key, body, secret, now)
    }

    /// Signs `body` for `key` with an explicit timestamp.
    pub fn sign_at(
        key: &NotaryKey,
        body: Value,
        secret: &SecretKey,
        signed_at: u64,
    ) -> Result<Self, RecordError> {
        let mut record = Record {
            key: key.as_str().to_owned(),
            author: secret.public(),
            signed_at,
            body,
            // Placeholder, replaced below; never leaves this function.
            signature: Signature([0; 64]),
        };
        let digest = record.signing_digest()?;
        record.signature = secret.sign(&digest);
        let size = record.to_bytes()?.len();
        if size > MAX_RECORD_BYTES {
            return Err(RecordError::Oversized {
                size,
                max: MAX_RECORD_BYTES,
            });
        }
        Ok(record)
    }

    /// The exact bytes whose sha256 the author signs: the canonical form of the envelope
    /// without `signature`.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, RecordError> {
        if self.signed_at > MAX_SIGNED_AT {
            return Err(RecordError::SignedAtOutOfRange(self.signed_at));
        }
        let unsigned = json!({
            "author": self.author,
            "body": self.body,
            "key": self.key,
            "signed_at": self.signed_at,
        });
        Ok(canonical::to_vec(&unsigned)?)
    }

    /// `sha256(signing_bytes)`.
    pub fn signing_digest(&self) -> Result<Digest, RecordError> {
        Ok(Digest::of(&self.signing_bytes()?))
    }

    /// The validated key the record was signed for.
    pub fn notary_key(&self) -> Result<NotaryKey, RecordError> {
        Ok(NotaryKey::parse(&self.key)?)
    }

    /// Checks the key is a valid layout key, the author may write it (node-owned keys:
    /// registration, status, heartbeat and alive must be signed by that node; a contract key by
    /// the contract's owner or a stakeholder, a cancellation by its owner) and the
    /// signature. Farm records and drains (`grid/<farm>/drains/<node>`) are written by
    /// the farmer, whom the notary cannot know: their readers check that author against
    /// the farm record (zos-registry's `Farm`, zos-grid's `Drain`).
    pub fn verify(&self) -> Result<(), RecordError> {
        let key = self.notary_key()?;
        if let Some(owner) = key.node_owner() {
            if owner != self.author {
                return Err(RecordError::WrongAuthor {
                    key: self.key.clone(),
                    author: self.author,
                    owner,
                });
            }
        }
        let digest = self.signing_digest()?;
        self.author
            .verify(&digest, &self.signature)
            .map_err(|_| RecordError::BadSignature {
                key: self.key.clone(),
                author: self.author,
            })?;
        // Authentic, then authorised: a contract key (a node's or a farm's) is written by
        // a party the body names, an assignment by the orchestrator it names.
        match key.kind() {
            KeyKind::Contract { .. } | KeyKind::PlacementContract { .. }
                if !ContractRecord::parties(&self.body).contains(&self.author) =>
            {
                Err(RecordError::NotAParty {
                    key: self.key.clone(),
                    author: self.author,
                })
            }
            KeyKind::Assignment { .. }
                if self.body["assignment"]["orchestrator"].as_str()
                    != Some(self.author.to_string().as_str()) =>
            {
                Err(RecordError::NotTheOrchestrator {
                    key: self.key.clone(),
                    author: self.author,
                })
            }
            _ => Ok(()),
        }
    }

    /// [`verify`](Self::verify), and that the record was found where it was signed for.
    pub fn verify_at(&self, found: &str) -> Result<(), RecordError> {
        self.verify()?;
        if self.key != found {
            return Err(RecordError::KeyMismatch {
                signed: self.key.clone(),
                found: found.to_owned(),
            });
        }
        Ok(())
    }

    /// What a backend stores for `put`: the record verified, its key, and its stored
    /// form within [`MAX_RECORD_BYTES`]. A notary never stores what its readers refuse.
    pub(crate) fn to_storable(&self) -> Result<(NotaryKey, Vec<u8>), RecordError> {
        self.verify()?;
        let key = self.notary_key()?;
        let bytes = self.to_bytes()?;
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::Oversized {
                size: bytes.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        Ok((key, bytes))
    }

    /// The stored form: the canonical JSON of the whole envelope.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RecordError> {
        let value =
            serde_json::to_value(self).map_err(|e| RecordError::Malformed(e.to_string()))?;
        Ok(canonical::to_vec(&value)?)
    }

    /// Reads a stored record: size limit, strict JSON (no duplicate keys, no trailing
    /// bytes, integers within ±(2^53-1)), an object with no unknown, missing or `null`
    /// fields (never a positional array). Does **not** verify; call
    /// [`verify`](Self::verify) or [`verify_at`](Self::verify_at).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RecordError> {
        if bytes.len() > MAX_RECORD_BYTES {
            return Err(RecordError::Oversized {
                size: bytes.len(),
                max: MAX_RECORD_BYTES,
            });
        }
        let value = canonical::parse_strict(bytes)?;
        let malformed = |e: DocError| RecordError::Malformed(e.to_string());
        document::object(&value, "$").map_err(malformed)?;
        document::typed(&value, "$").map_err(malformed)
    }

    /// [`from_bytes`](Self::from_bytes) then [`verify_at`](Self::verify_at)`(found)`.
    pub fn from_bytes_verified(bytes: &[u8], found: &str) -> Result<Self, RecordError> {
        let record = Self::from_bytes(bytes)?;
        record.verify_at(found)?;
        Ok(record)
    }
}

/// Longest validity of a diagnostic request: `expires_at - issued_at` at most one hour.
pub const MAX_REQUEST_WINDOW: u64 = 3600;

/// Largest support bundle (compressed bytes) a node puts inline in its answer: its
/// base64 form (4/3 of it) plus the manifest and the envelope stay under
/// [`MAX_RECORD_BYTES`].
pub const MAX_INLINE_BUNDLE: usize = 640 * 1024;

/// The body of a diagnostic request at `nodes/<node>/requests/<id>`, authored by the
/// one who asks (the farmer, or a contract's owner). Strict: unknown fields, an unknown
/// scope or action (and, through `P`, a probe outside the built-in set) are refused.
/// `P` is the probe specification (zos-probe's `ProbeSpec`); the notary does not need
/// to know the probes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiagRequest<P> {
    /// The request id: the last segment of its key.
    pub id: String,
    /// The node asked: the node segment of its key.
    pub node: PublicKey,
    /// What it is about.
    pub scope: DiagScope,
    /// What to do.
    pub action: DiagAction<P>,
    /// Unix seconds, when it was made.
    pub issued_at: u64,
    /// Unix seconds after which the node refuses it; at most [`MAX_REQUEST_WINDOW`]
    /// after `issued_at`.
    pub expires_at: u64,
}

/// What a diagnostic request is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DiagScope {
    /// The node as a whole (the farmer only).
    Node,
    /// The node's own network namespace, its uplink (the farmer only).
    Uplink,
    /// One contract on the node: its status, its workloads' logs (its owner or the
    /// farmer).
    Contract(String),
    /// One workload of a contract on the node, and so its network namespace (its
    /// contract's owner or the farmer).
    Workload {
        /// The contract id.
        contract: String,
        /// The workload's name in the contract.
        workload: String,
    },
}

/// What a diagnostic request asks for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DiagAction<P> {
    /// A support bundle of the scope.
    SupportBundle,
    /// One built-in probe, run in the scope's network namespace.
    Probe(P),
}

impl<P> DiagRequest<P> {
    /// Checks the body against the key it was found at (id and node) and the validity
    /// window; `now` is the reader's clock (unix seconds).
    pub fn check(&self, key: &NotaryKey, now: u64) -> Result<(), DiagRefusal> {
        let KeyKind::Request { node, request_id } = key.kind() else {
            return Err(DiagRefusal::new(
                RefusalCode::Malformed,
                format!("{key} is not a request key"),
            ));
        };
        if node != self.node {
            return Err(DiagRefusal::new(
                RefusalCode::WrongNode,
                format!("the request names node {}, not {node}", self.node),
            ));
        }
        if request_id != self.id {
            return Err(DiagRefusal::new(
                RefusalCode::Malformed,
                format!(
                    "the request's id {:?} is not its key's {request_id:?}",
                    self.id
                ),
            ));
        }
        if self.expires_at <= self.issued_at
            || self.expires_at - self.issued_at > MAX_REQUEST_WINDOW
        {
            return Err(DiagRefusal::new(
                RefusalCode::BadWindow,
                format!(
                    "issued at {} and expiring at {}: the window must be 1 to {MAX_REQUEST_WINDOW} s",
                    self.issued_at, self.expires_at
                ),
            ));
        }
        if now >= self.expires_at {
            return Err(DiagRefusal::new(
                RefusalCode::Expired,
                format!("expired at {} (now {now})", self.expires_at),
            ));
        }
        Ok(())
    }
}

/// Why a node refused a diagnostic request: the code in its signed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalCode {
    /// The body does not parse (unknown field, scope, action or probe kind) or does
    /// not match its key.
    Malformed,
    /// The probe is a built-in one with arguments out of range.
    InvalidProbe,
    /// The request names another node.
    WrongNode,
    /// `expires_at` is not after `issued_at`, or more than an hour after it.
    BadWindow,
    /// The request has expired.
    Expired,
    /// The node or its uplink: only the farmer may ask.
    FarmerOnly,
    /// A contract or workload its author does not own (or that is not on this node,
    /// which a stranger is not told apart).
    NotOwner,
    /// The farmer asked about a contract or workload this node does not run.
    UnknownWorkload,
    /// A scope and action this node cannot serve (e.g. a probe inside a micro-VM's
    /// network).
    Unsupported,
    /// The node's diagnostic queue is full: ask again later.
    Busy,
}

impl RefusalCode {
    /// The code as it appears in an answer.
    pub fn as_str(&self) -> &'static str {
        match self {
            RefusalCode::Malformed => "malformed",
            RefusalCode::InvalidProbe => "invalid_probe",
            RefusalCode::WrongNode => "wrong_node",
            RefusalCode::BadWindow => "bad_window",
            RefusalCode::Expired => "expired",
            RefusalCode::FarmerOnly => "farmer_only",
            RefusalCode::NotOwner => "not_owner",
            RefusalCode::UnknownWorkload => "unknown_workload",
            RefusalCode::Unsupported => "unsupported",
            RefusalCode::Busy => "busy",
        }
    }
}

impl std::fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: its code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("refused ({refused}): {reason}")]
pub struct DiagRefusal {
    /// The code.
    pub refused: RefusalCode,
    /// Why, for people.
    pub reason: String,
}

impl DiagRefusal {
    /// A refusal with `code` and `reason`.
    pub fn new(code: RefusalCode, reason: impl Into<String>) -> Self {
        DiagRefusal {
            refused: code,
            reason: reason.into(),
        }
    }
}

/// A support bundle carried in an answer: `tar.zst`, base64 (standard, padded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InlineBundle {
    /// sha256 of the bundle bytes (before base64).
    pub sha256: Digest,
    /// Their length, at most [`MAX_INLINE_BUNDLE`].
    pub size: u64,
    /// The bundle's manifest (zos-support's `Manifest`, as JSON).
    pub manifest: Value,
    /// The bundle bytes, base64.
    pub data: String,
}

/// The body of a node's answer at `nodes/<node>/answers/<id>`, signed by the node.
/// Exactly one of `refused`, `probe`, `bundle` is set ([`DiagAnswer::outcome`]).
/// `R` is the probe result (zos-probe's `ProbeResult`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiagAnswer<R> {
    /// The request id.
    pub id: String,
    /// The signing digest of the request record answered: a request rewritten under the
    /// same id does not match it.
    pub request: Digest,
    /// Unix seconds, when the node answered.
    pub answered_at: u64,
    /// The refusal code, when refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<RefusalCode>,
    /// Why refused, when refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A probe's result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probe: Option<R>,
    /// A support bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bundle: Option<InlineBundle>,
}

/// What an answer says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DiagOutcome<'a, R> {
    /// Refused, with its code and reason.
    Refused(RefusalCode, &'a str),
    /// A probe's result.
    Probe(&'a R),
    /// A support bundle.
    Bundle(&'a InlineBundle),
}

impl<R> DiagAnswer<R> {
    /// A refusal of request `id`.
    pub fn refusal(id: &str, request: Digest, answered_at: u64, refusal: DiagRefusal) -> Self {
        DiagAnswer {
            id: id.to_owned(),
            request,
            answered_at,
            refused: Some(refusal.refused),
            reason: Some(refusal.reason),
            probe: None,
            bundle: None,
        }
    }

    /// What the answer says; `None` when it does not say exactly one thing.
    pub fn outcome(&self) -> Option<DiagOutcome<'_, R>> {
        match (&self.refused, &self.reason, &self.probe, &self.bundle) {
            (Some(code), Some(reason), None, None) => Some(DiagOutcome::Refused(*code, reason)),
            (None, None, Some(r), None) => Some(DiagOutcome::Probe(r)),
            (None, None, None, Some(b)) => Some(DiagOutcome::Bundle(b)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sk(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    #[test]
    fn sign_verify_roundtrip() {
        let owner = sk(1);
        let node = sk(2).public();
        let key = NotaryKey::contract(&node, "c1").unwrap();
        let r = Record::sign_at(
            &key,
            json!({"contract": {"owner": owner.public(), "v": 1, "a": [true, null]}}),
            &owner,
            1_700_000_000,
        )
        .unwrap();
        r.verify().unwrap();
        r.verify_at(key.as_str()).unwrap();
        let bytes = r.to_bytes().unwrap();
        let back = Record::from_bytes(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.to_bytes().unwrap(), bytes);
        // Canonical: members sorted, no whitespace.
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.starts_with(r#"{"author":""#), "{text}");
        assert!(text.contains(&format!(
            r#""body":{{"contract":{{"a":[true,null],"owner":"{}","v":1}}}},"key":"nodes/"#,
            owner.public()
        )));
    }

    #[test]
    fn signing_bytes_are_the_envelope_without_signature() {
        let key = NotaryKey::farm("9").unwrap();
        let s = sk(4);
        let r = Record::sign_at(&key, json!({"name": "x"}), &s, 5).unwrap();
        let want = format!(
            r#"{{"author":"{}","body":{{"name":"x"}},"key":"farms/9","signed_at":5}}"#,
            s.public()
        );
        assert_eq!(String::from_utf8(r.signing_bytes().unwrap()).unwrap(), want);
        s.public()
            .verify(&Digest::of(want.as_bytes()), &r.signature)
            .unwrap();
    }

    #[test]
    fn tampering_any_field_breaks_the_signature() {
        let key = NotaryKey::farm("1").unwrap();
        let r = Record::sign_at(&key, json!({"a": 1}), &sk(1), 10).unwrap();
        let mut t = r.clone();
        t.body = json!({"a": 2});
        assert!(matches!(t.verify(), Err(RecordError::BadSignature { .. })));
        let mut t = r.clone();
        t.signed_at = 11;
        assert!(matches!(t.verify(), Err(RecordError::BadSignature { .. })));
        let mut t = r.clone();
        t.key = "farms/2".into();
        assert!(matches!(t.verify(), Err(RecordError::BadSignature { .. })));
        let mut t = r.clone();
        t.author = sk(2).public();
        assert!(matches!(t.verify(), Err(RecordError::BadSignature { .. })));
    }

    #[test]
    fn record_found_under_another_key_is_refused() {
        let a = sk(10).public();
        let b = sk(11).public();
        let body = json!({"contract": {"owner": sk(1).public()}});
        let r = Record::sign_at(&NotaryKey::contract(&a, "c").unwrap(), body, &sk(1), 1).unwrap();
        let other = NotaryKey::contract(&b, "c").unwrap();
        assert!(matches!(
            r.verify_at(other.as_str()),
            Err(RecordError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn an_assignment_record_is_authored_by_the_orchestrator_it_names() {
        use zos_contract::assignment::{Assignment, SignedAssignment};
        let (orchestrator, node) = (sk(20), sk(21));
        let body = SignedAssignment::sign(
            Assignment {
                contract: "web".into(),
                version: 1,
                digest: Digest::of(b"c"),
                replica: 0,
                node: node.public(),
                epoch: 1,
                issued_at: 1,
                orchestrator: orchestrator.public(),
            },
            &orchestrator,
        )
        .unwrap()
        .to_value();
        let key = NotaryKey::assignment(&node.public(), "web", 0).unwrap();
        Record::sign_at(&key, body.clone(), &orchestrator, 1)
            .unwrap()
            .verify()
            .unwrap();
        // Anyone else, the node itself included, is refused.
        for other in [sk(22), node] {
            let err = Record::sign_at(&key, body.clone(), &other, 1)
                .unwrap()
                .verify()
                .unwrap_err();
            assert!(
                matches!(err, RecordError::NotTheOrchestrator { .. }),
                "{err}"
            );
        }
    }

    #[test]
    fn node_owned_keys_need_the_node_as_author() {
        let node = sk(5);
        // A stranger's mesh record would make it a WireGuard peer of the node's tenant.
        for key in [
            NotaryKey::heartbeat(&node.public()),
            NotaryKey::mesh(&node.public(), "web", "net").unwrap(),
        ] {
            Record::sign_at(&key, json!({}), &node, 1)
                .unwrap()
                .verify()
                .unwrap();
            let forged = Record::sign_at(&key, json!({}), &sk(6), 1).unwrap();
            assert!(matches!(
                forged.verify(),
                Err(RecordError::WrongAuthor { .. })
            ));
        }
    }

    #[test]
    fn a_drain_record_verifies_for_any_author_its_readers_check_the_farmer() {
        // The notary does not know farms' farmers: a drain is stored whoever signed it,
        // and the orchestrator ignores one not signed by the farm record's farmer
        // (crates/zos-grid/tests/bot.rs). The signature and the key still bind it.
        let node = sk(7).public();
        let key = NotaryKey::drain("f1", &node).unwrap();
        for author in [sk(8), sk(9)] {
            let r = Record::sign_at(&key, json!({"drained": true}), &author, 1).unwrap();
            r.verify().unwrap();
            let mut moved = r.clone();
            moved.key = NotaryKey::drain("f2", &node).unwrap().to_string();
            assert!(matches!(
                moved.verify(),
                Err(RecordError::BadSignature { .. })
            ));
        }
    }

    #[test]
    fn an_alive_record_is_authored_by_its_node_only() {
        // The attack: a stranger (or another node) keeps a dead node looking alive.
        let node = sk(7);
        let key = NotaryKey::alive(&node.public());
        let body = json!({"ttl_ms": 2000});
        Record::sign_at(&key, body.clone(), &node, 1)
            .unwrap()
            .verify()
            .unwrap();
        for other in [sk(8), sk(9)] {
            let err = Record::sign_at(&key, body.clone(), &other, 1)
                .unwrap()
                .verify()
                .unwrap_err();
            assert!(
                matches!(&err, RecordError::WrongAuthor { owner, .. } if *owner == node.public()),
                "{err}"
            );
        }
    }

    #[test]
    fn contract_keys_need_a_party_as_author() {
        let (owner, legal, stranger) = (sk(1), sk(2), sk(3));
        let key = NotaryKey::contract(&sk(5).public(), "c").unwrap();
        let contract = json!({"contract": {
            "owner": owner.public(),
            "stakeholders": [{"key": legal.public(), "weight": 1}, ["not", "an", "object"]]
        }});
        let cancellation = json!({"cancellation": {"owner": owner.public()}});
        for (body, author, ok) in [
            (&contract, &owner, true),
            (&contract, &legal, true),
            (&contract, &stranger, false),
            (&cancellation, &owner, true),
            (&cancellation, &legal, false),
            (&json!({}), &owner, false),
            (&json!({"contract": {"owner": "not a key"}}), &owner, false),
        ] {
            let r = Record::sign_at(&key, body.clone(), author, 1).unwrap();
            match r.verify() {
                Ok(()) => assert!(ok, "{body} by {}", author.public()),
                Err(RecordError::NotAParty { .. }) => assert!(!ok, "{body}"),
                Err(e) => panic!("{e}"),
            }
        }
        // Other keys are not about contracts: no such rule.
        let farm = NotaryKey::farm("1").unwrap();
        Record::sign_at(&farm, json!({}), &stranger, 1)
            .unwrap()
            .verify()
            .unwrap();
    }

    #[test]
    fn strict_reading() {
        let key = NotaryKey::farm("1").unwrap();
        let r = Record::sign_at(&key, json!({}), &sk(1), 1).unwrap();
        let mut v = serde_json::to_value(&r).unwrap();
        v["extra"] = json!(1);
        assert!(matches!(
            Record::from_bytes(v.to_string().as_bytes()),
            Err(RecordError::Malformed(_))
        ));
        let text = String::from_utf8(r.to_bytes().unwrap()).unwrap();
        let dup = text.replacen('{', r#"{"key":"farms/2","#, 1);
        assert!(matches!(
            Record::from_bytes(dup.as_bytes()),
            Err(RecordError::Canonical(CanonError::DuplicateKey(_)))
        ));
        let mut v = serde_json::to_value(&r).unwrap();
        v.as_object_mut().unwrap().remove("signature");
        assert!(matches!(
            Record::from_bytes(v.to_string().as_bytes()),
            Err(RecordError::Malformed(_))
        ));
        assert!(matches!(
            Record::from_bytes(b"not json"),
            Err(RecordError::Canonical(_))
        ));
        // A key outside the layout parses but does not verify.
        let mut t = r.clone();
        t.key = "../x".into();
        assert!(matches!(
            t.verify(),
            Err(RecordError::Key(KeyError::PathTraversal(_)))
        ));
    }

    #[test]
    fn oversized_is_refused_when_signing_and_reading() {
        let key = NotaryKey::farm("1").unwrap();
        let big = "x".repeat(MAX_RECORD_BYTES);
        assert!(matches!(
            Record::sign_at(&key, json!({ "blob": big }), &sk(1), 1),
            Err(RecordError::Oversized { .. })
        ));
        let bytes = vec![b' '; MAX_RECORD_BYTES + 1];
        assert!(matches!(
            Record::from_bytes(&bytes),
            Err(RecordError::Oversized { .. })
        ));
    }

    #[test]
    fn signed_at_beyond_2_pow_53_is_refused() {
        let key = NotaryKey::farm("1").unwrap();
        assert!(matches!(
            Record::sign_at(&key, json!({}), &sk(1), 1 << 53),
            Err(RecordError::SignedAtOutOfRange(_))
        ));
    }
}
