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
    /// A node-owned key (registration, status, heartbeat) written by someone else.
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
    /// registration, status and heartbeat must be signed by that node; a contract key by
    /// the contract's owner or a stakeholder, a cancellation by its owner) and the
    /// signature.
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
        // Authentic, then authorised: a contract key is written by a party the body names.
        if matches!(key.kind(), KeyKind::Contract { .. })
            && !ContractRecord::parties(&self.body).contains(&self.author)
        {
            return Err(RecordError::NotAParty {
                key: self.key.clone(),
                author: self.author,
            });
        }
        Ok(())
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
    fn node_owned_keys_need_the_node_as_author() {
        let node = sk(5);
        let key = NotaryKey::heartbeat(&node.public());
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
