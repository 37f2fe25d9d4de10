//! Release records: a version and the signed flists of its parts, signed by a release
//! key; and the node's verdict on one ([`verify_release`]).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use zos_contract::deployment::FlistRef;
use zos_contract::document::{self, DocError};
use zos_contract::{canonical, Digest, Limits, PublicKey, SecretKey, Signature};

use crate::version::Version;

/// The parts of a release: each a signed flist pinned by the sha256 of its `.fl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parts {
    /// The agent: a tree with the static `zosd` binary at `/zosd`.
    pub zosd: FlistRef,
    /// The hypervisor bundle (QEMU, its libraries and firmware). Absent: the release
    /// does not ship one (a node keeps the one it has, if any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu: Option<FlistRef>,
}

impl Parts {
    /// Each part with its name (`zosd`, `qemu`), in that order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &FlistRef)> {
        std::iter::once(("zosd", &self.zosd)).chain(self.qemu.as_ref().map(|q| ("qemu", q)))
    }
}

/// A release of the node's software, as the release key signs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// The version released.
    pub version: Version,
    /// Its parts.
    pub parts: Parts,
    /// Present (and then `true`) only on a release the key signs as a rollback: a node
    /// accepts it below the version it runs. Never written as `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback: bool,
    /// Unix seconds, the signer's clock: for humans and status, never for order.
    pub signed_at: u64,
    /// The release key that signs: must be one the node's image pins.
    pub key: PublicKey,
}

/// A release with its key's signature over `sha256(jcs(release))`. `signature` absent:
/// an unsigned release, which every node refuses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRelease {
    /// The signed body.
    pub release: Release,
    /// `release.key`'s signature over `sha256(jcs(release))`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

impl SignedRelease {
    /// Signs `release` with `key` (whether `key` is the one the body names, and pinned,
    /// is [`verify_release`]'s business).
    pub fn sign(release: Release, key: &SecretKey) -> Self {
        let digest = Self::digest_of(&release);
        SignedRelease {
            signature: Some(key.sign(&digest)),
            release,
        }
    }

    /// `sha256(jcs(release))`: what the signature signs.
    pub fn digest_of(release: &Release) -> Digest {
        let value = serde_json::to_value(release).expect("a release serializes");
        // Every member is a string, an integer within 2^53 (checked when read) or a
        // boolean: canonical bytes always exist.
        Digest::of(&canonical::to_vec(&value).expect("a release has canonical bytes"))
    }

    /// Reads a release record from untrusted bytes, within `limits`. The signature and
    /// the key are not checked here: see [`verify_release`].
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Self, DocError> {
        let value = document::parse_value(bytes, limits)?;
        Self::from_value(&value)
    }

    /// Reads a release record (`{"release": …, "signature": …}`): strictly (no unknown
    /// member, no `null`, `rollback` only as `true`, `signed_at` within 2^53-1, every
    /// part naming at least one publisher).
    pub fn from_value(value: &Value) -> Result<Self, DocError> {
        document::object(value, "$")?;
        let signed: SignedRelease = document::typed(value, "$")?;
        if value.pointer("/release/rollback") == Some(&Value::Bool(false)) {
            return Err(DocError::Malformed {
                path: "$.release.rollback".into(),
                message: "present only as true: leave the member out".into(),
            });
        }
        if let Some(reason) = signed.release.malformed() {
            return Err(DocError::Malformed {
                path: "$.release".into(),
                message: reason,
            });
        }
        Ok(signed)
    }

    /// The record as [`SignedRelease::from_value`] reads it.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a release serializes")
    }
}

impl Release {
    /// Why this body is not a release a node can act on, if it is not.
    fn malformed(&self) -> Option<String> {
        if self.signed_at > MAX_SAFE_INTEGER {
            return Some(format!("signed_at {} is above 2^53-1", self.signed_at));
        }
        for (name, part) in self.parts.iter() {
            if part.publishers.is_empty() {
                return Some(format!(
                    "part {name} names no publisher: a release's parts are signed flists"
                ));
            }
            if part.stores.is_empty() {
                return Some(format!("part {name} names no block store"));
            }
        }
        None
    }
}

/// The largest integer every JSON reader holds exactly.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A release a node may install: signed by a pinned release key, above the version it
/// runs (or a signed rollback below it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRelease {
    /// The version.
    pub version: Version,
    /// Its parts, to fetch with [`crate::fetch_part`].
    pub parts: Parts,
    /// A signed rollback (below the running version).
    pub rollback: bool,
    /// The release key that signed it.
    pub key: PublicKey,
    /// `sha256(jcs(release))`: names this release in logs and records.
    pub digest: Digest,
}

/// Why a node refuses a release. `code()` is stable: it is what the node publishes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum ReleaseRefusal {
    /// The record carries no signature.
    #[error("release {version} is unsigned")]
    Unsigned {
        /// The version it claims.
        version: String,
    },
    /// The key the release names is not one the node's image pins.
    #[error("release {version} names key {key}, which this node does not pin")]
    UnknownKey {
        /// The version it claims.
        version: String,
        /// The key it names.
        key: PublicKey,
    },
    /// The signature does not verify under the (pinned) key the release names.
    #[error("release {version}: the signature does not verify under {key}")]
    BadSignature {
        /// The version it claims.
        version: String,
        /// The key it names.
        key: PublicKey,
    },
    /// Below the running version, and not signed as a rollback.
    #[error("release {version} is below the running {running} and is not a signed rollback")]
    Downgrade {
        /// The release's version.
        version: String,
        /// The version the node runs.
        running: String,
    },
    /// The version the node runs already.
    #[error("release {version} is the version this node runs")]
    SameVersion {
        /// The version.
        version: String,
    },
    /// Not a release record (unreadable, an unknown member, a part without publisher…).
    #[error("malformed release: {reason}")]
    Malformed {
        /// What is wrong, with its JSON path.
        reason: String,
    },
}

impl ReleaseRefusal {
    /// A stable snake_case code (the `code` field of the JSON form): `unsigned`,
    /// `unknown_key`, `bad_signature`, `downgrade`, `same_version`, `malformed`.
    pub fn code(&self) -> &'static str {
        match self {
            ReleaseRefusal::Unsigned { .. } => "unsigned",
            ReleaseRefusal::UnknownKey { .. } => "unknown_key",
            ReleaseRefusal::BadSignature { .. } => "bad_signature",
            ReleaseRefusal::Downgrade { .. } => "downgrade",
            ReleaseRefusal::SameVersion { .. } => "same_version",
            ReleaseRefusal::Malformed { .. } => "malformed",
        }
    }
}

/// Whether a node running `running` that pins the release keys `pinned_keys` may
/// install `signed`. Pure: it reads no clock, no file, no network. The checks, in
/// order: signed at all, by a pinned key, validly; then the version: not the running
/// one, and not below it unless the release is a signed rollback.
pub fn verify_release(
    signed: &SignedRelease,
    pinned_keys: &BTreeSet<PublicKey>,
    running: &Version,
) -> Result<VerifiedRelease, ReleaseRefusal> {
    let r = &signed.release;
    let version = r.version.to_string();
    let digest = verify_signed(signed, pinned_keys)?;
    if r.version == *running {
        return Err(ReleaseRefusal::SameVersion { version });
    }
    if r.version < *running && !r.rollback {
        return Err(ReleaseRefusal::Downgrade {
            version,
            running: running.to_string(),
        });
    }
    Ok(VerifiedRelease {
        version: r.version,
        parts: r.parts.clone(),
        rollback: r.rollback,
        key: r.key,
        digest,
    })
}

/// The first half of [`verify_release`]: well formed, signed, by a pinned key, validly.
/// No version check: what a node asks of a release it installed already (at boot, of
/// the slot it runs). Returns the release's digest.
pub fn verify_signed(
    signed: &SignedRelease,
    pinned_keys: &BTreeSet<PublicKey>,
) -> Result<Digest, ReleaseRefusal> {
    let r = &signed.release;
    let version = r.version.to_string();
    if let Some(reason) = r.malformed() {
        return Err(ReleaseRefusal::Malformed { reason });
    }
    let Some(signature) = &signed.signature else {
        return Err(ReleaseRefusal::Unsigned { version });
    };
    if !pinned_keys.contains(&r.key) {
        return Err(ReleaseRefusal::UnknownKey {
            version,
            key: r.key,
        });
    }
    let digest = SignedRelease::digest_of(r);
    if r.key.verify(&digest, signature).is_err() {
        return Err(ReleaseRefusal::BadSignature {
            version,
            key: r.key,
        });
    }
    Ok(digest)
}

/// [`verify_release`] of a record's bytes: bytes that are not a release record are
/// refused as `malformed`.
pub fn verify_release_bytes(
    bytes: &[u8],
    pinned_keys: &BTreeSet<PublicKey>,
    running: &Version,
) -> Result<VerifiedRelease, ReleaseRefusal> {
    let signed = SignedRelease::from_bytes(bytes, &Limits::default()).map_err(|e| {
        ReleaseRefusal::Malformed {
            reason: e.to_string(),
        }
    })?;
    verify_release(&signed, pinned_keys, running)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(tag: u8, publisher: PublicKey) -> FlistRef {
        FlistRef {
            url: format!("http://hub.example/zosd-{tag}.fl"),
            sha256: Digest::of(&[tag]),
            stores: vec!["http://hub.example/store".into()],
            publishers: vec![publisher],
        }
    }

    fn release(version: &str, key: &SecretKey) -> Release {
        Release {
            version: version.parse().unwrap(),
            parts: Parts {
                zosd: part(1, key.public()),
                qemu: None,
            },
            rollback: false,
            signed_at: 1_700_000_000,
            key: key.public(),
        }
    }

    fn pinned(key: &SecretKey) -> BTreeSet<PublicKey> {
        [key.public()].into()
    }

    #[test]
    fn a_higher_version_signed_by_a_pinned_key_is_accepted() {
        let key = SecretKey::from_seed([1; 32]);
        let signed = SignedRelease::sign(release("0.2.0", &key), &key);
        let ok = verify_release(&signed, &pinned(&key), &Version::new(0, 1, 0)).unwrap();
        assert_eq!(ok.version, Version::new(0, 2, 0));
        assert!(!ok.rollback);
        assert_eq!(ok.digest, SignedRelease::digest_of(&signed.release));
    }

    #[test]
    fn the_record_round_trips_and_rollback_false_is_not_written() {
        let key = SecretKey::from_seed([1; 32]);
        let signed = SignedRelease::sign(release("0.2.0", &key), &key);
        let value = signed.to_value();
        assert!(value["release"].get("rollback").is_none(), "{value}");
        let bytes = serde_json::to_vec(&value).unwrap();
        assert_eq!(
            SignedRelease::from_bytes(&bytes, &Limits::default()).unwrap(),
            signed
        );
    }

    #[test]
    fn each_refusal_has_its_code() {
        let key = SecretKey::from_seed([1; 32]);
        let other = SecretKey::from_seed([2; 32]);
        let running = Version::new(0, 2, 0);
        let code = |s: &SignedRelease| verify_release(s, &pinned(&key), &running).unwrap_err();

        let mut unsigned = SignedRelease::sign(release("0.3.0", &key), &key);
        unsigned.signature = None;
        assert_eq!(code(&unsigned).code(), "unsigned");

        let stranger = SignedRelease::sign(release("0.3.0", &other), &other);
        assert_eq!(code(&stranger).code(), "unknown_key");

        // Signed by another key but naming the pinned one.
        let forged = SignedRelease::sign(release("0.3.0", &key), &other);
        assert_eq!(code(&forged).code(), "bad_signature");

        // A valid signature, then the body changed (the version raised).
        let mut changed = SignedRelease::sign(release("0.3.0", &key), &key);
        changed.release.version = Version::new(0, 4, 0);
        assert_eq!(code(&changed).code(), "bad_signature");

        let old = SignedRelease::sign(release("0.1.9", &key), &key);
        let e = code(&old);
        assert_eq!(e.code(), "downgrade");
        assert!(e.to_string().contains("below the running 0.2.0"), "{e}");

        let same = SignedRelease::sign(release("0.2.0", &key), &key);
        assert_eq!(code(&same).code(), "same_version");

        let mut no_publisher = release("0.3.0", &key);
        no_publisher.parts.zosd.publishers.clear();
        let e = code(&SignedRelease::sign(no_publisher, &key));
        assert_eq!(e.code(), "malformed");
        assert_eq!(
            serde_json::to_value(&e).unwrap()["code"],
            serde_json::json!("malformed")
        );
    }

    #[test]
    fn a_signed_rollback_may_go_below_but_not_to_the_same_version() {
        let key = SecretKey::from_seed([1; 32]);
        let running = Version::new(0, 3, 0);
        let mut r = release("0.2.0", &key);
        r.rollback = true;
        let ok = verify_release(
            &SignedRelease::sign(r.clone(), &key),
            &pinned(&key),
            &running,
        )
        .unwrap();
        assert!(ok.rollback);
        // The flag is signed: set on a release signed without it, it breaks the signature.
        let mut unflagged = SignedRelease::sign(release("0.2.0", &key), &key);
        unflagged.release.rollback = true;
        assert_eq!(
            verify_release(&unflagged, &pinned(&key), &running)
                .unwrap_err()
                .code(),
            "bad_signature"
        );
        r.version = running;
        assert_eq!(
            verify_release(&SignedRelease::sign(r, &key), &pinned(&key), &running)
                .unwrap_err()
                .code(),
            "same_version"
        );
    }

    #[test]
    fn unreadable_records_are_malformed() {
        let key = SecretKey::from_seed([1; 32]);
        let running = Version::new(0, 1, 0);
        let good = SignedRelease::sign(release("0.2.0", &key), &key).to_value();
        let mut cases: Vec<Value> = Vec::new();
        let mut v = good.clone();
        v["release"]["rollback"] = Value::Bool(false);
        cases.push(v);
        let mut v = good.clone();
        v["release"]["version"] = Value::String("0.2.0-rc1".into());
        cases.push(v);
        let mut v = good.clone();
        v["release"]["extra"] = Value::Bool(true);
        cases.push(v);
        let mut v = good.clone();
        v["signature"] = Value::Null;
        cases.push(v);
        let mut v = good.clone();
        v["release"]["parts"]["qemu"] = Value::Null;
        cases.push(v);
        let mut v = good;
        v["release"]["signed_at"] = serde_json::json!(1u64 << 60);
        cases.push(v);
        cases.push(Value::Array(vec![]));
        for case in cases {
            let bytes = serde_json::to_vec(&case).unwrap();
            let e = verify_release_bytes(&bytes, &pinned(&key), &running).unwrap_err();
            assert_eq!(e.code(), "malformed", "{case}: {e}");
        }
        let e = verify_release_bytes(b"{not json", &pinned(&key), &running).unwrap_err();
        assert_eq!(e.code(), "malformed");
    }
}
