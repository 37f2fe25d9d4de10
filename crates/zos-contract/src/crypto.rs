//! Keys, digests and signatures: ed25519 over the sha256 of canonical bytes.
//!
//! Public keys, digests and signatures travel as lowercase hex. A secret key file holds
//! the 32-byte ed25519 seed as 64 hex characters and a newline; it is created mode 0600
//! and refused when its mode lets the group or others read it.

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ed25519_dalek::Signer;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A sha256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The sha256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Digest(Sha256::digest(bytes).into())
    }

    /// 64 lowercase hex characters, as digests travel.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// An ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// 64 lowercase hex characters, as keys travel.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Checks `signature` over `digest`. Strict verification: no malleable signatures,
    /// no small-order keys.
    pub fn verify(&self, digest: &Digest, signature: &Signature) -> Result<(), KeyError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.0)
            .map_err(|_| KeyError::BadPublicKey(self.to_hex()))?;
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        key.verify_strict(&digest.0, &sig)
            .map_err(|_| KeyError::BadSignature)
    }
}

/// An ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// 128 lowercase hex characters, as signatures travel.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// The (digest, signer, signature) triples that verified before, so that a re-delivery
/// of an unchanged document skips only the ed25519 arithmetic.
///
/// Only triples that passed [`PublicKey::verify`] (strict) are kept, byte for byte: a
/// triple differing in any byte is a miss and is verified afresh, so the cache never
/// changes what is accepted. It is bounded: past its capacity the oldest triple goes.
/// The caller owns it (one per node, say) and passes it to [`crate::verify_cached`].
#[derive(Debug, Clone)]
pub struct VerifiedTriples {
    capacity: usize,
    known: BTreeSet<Triple>,
    // Insertion order, oldest first, for eviction.
    order: VecDeque<Triple>,
}

type Triple = (Digest, PublicKey, [u8; 64]);

impl VerifiedTriples {
    /// What [`VerifiedTriples::new`] holds: a node's contracts and blueprints, many
    /// times over.
    pub const DEFAULT_CAPACITY: usize = 4096;

    /// An empty cache of [`VerifiedTriples::DEFAULT_CAPACITY`] triples (`const`, so a
    /// `static` can hold one).
    pub const fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// An empty cache of at most `capacity` triples (0 caches nothing).
    pub const fn with_capacity(capacity: usize) -> Self {
        VerifiedTriples {
            capacity,
            known: BTreeSet::new(),
            order: VecDeque::new(),
        }
    }

    /// How many triples it holds.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// [`PublicKey::verify`], skipped for a triple that verified before; a triple that
    /// verifies now is remembered.
    pub fn verify(
        &mut self,
        key: &PublicKey,
        digest: &Digest,
        signature: &Signature,
    ) -> Result<(), KeyError> {
        let triple = (*digest, *key, signature.0);
        if self.known.contains(&triple) {
            return Ok(());
        }
        key.verify(digest, signature)?;
        self.remember(triple);
        Ok(())
    }

    fn remember(&mut self, triple: Triple) {
        if self.capacity == 0 || !self.known.insert(triple) {
            return;
        }
        self.order.push_back(triple);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.known.remove(&oldest);
            }
        }
    }
}

impl Default for VerifiedTriples {
    fn default() -> Self {
        Self::new()
    }
}

/// Checks a signature through `cache` when there is one, else afresh.
pub(crate) fn check(
    cache: Option<&mut VerifiedTriples>,
    key: &PublicKey,
    digest: &Digest,
    signature: &Signature,
) -> Result<(), KeyError> {
    match cache {
        Some(cache) => cache.verify(key, digest, signature),
        None => key.verify(digest, signature),
    }
}

/// An ed25519 signing key. Its `Debug` never prints the secret.
#[derive(Clone)]
pub struct SecretKey(ed25519_dalek::SigningKey);

impl SecretKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }

    /// The key whose 32-byte ed25519 seed is `seed` (fixed seeds make reproducible tests
    /// and examples).
    pub fn from_seed(seed: [u8; 32]) -> Self {
        SecretKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    /// The public half, which identifies the signer.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// Signs the 32 digest bytes (the digest, not the document, is what is signed).
    pub fn sign(&self, digest: &Digest) -> Signature {
        Signature(self.0.sign(&digest.0).to_bytes())
    }

    /// Reads a key file, refusing one that the group or others can read.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let io = |e: std::io::Error| KeyError::Io(path.to_path_buf(), e.to_string());
        let meta = fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::InsecureMode(path.to_path_buf(), mode));
        }
        let text = fs::read_to_string(path).map_err(io)?;
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| KeyError::BadKeyFile(path.to_path_buf()))?;
        Ok(Self::from_seed(seed))
    }

    /// Writes the key to a new file created mode 0600; an existing file is not replaced.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        let io = |e: std::io::Error| KeyError::Io(path.to_path_buf(), e.to_string());
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        writeln!(file, "{}", hex::encode(self.0.to_bytes())).map_err(io)?;
        file.sync_all().map_err(io)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public().to_hex())
    }
}

/// Why a key, a key file or a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed: the path and the OS error.
    #[error("{0}: {1}")]
    Io(PathBuf, String),
    /// The key file's mode (second field) lets the group or others read it.
    #[error("{0}: mode {1:04o} lets others read the secret key; run chmod 600 on it")]
    InsecureMode(PathBuf, u32),
    /// The key file does not hold 64 hex characters.
    #[error("{0}: not a zos secret key (expected 64 hex characters)")]
    BadKeyFile(PathBuf),
    /// A key, digest or signature is not lowercase hex of its exact length.
    #[error("invalid hex {what}: {value:?}")]
    BadHex {
        /// What was being read: `sha256 digest`, `ed25519 public key`, `ed25519 signature`.
        what: &'static str,
        /// The text that is not lowercase hex of the right length.
        value: String,
    },
    /// The public key (hex) is not a valid ed25519 point.
    #[error("public key {0} is not a valid ed25519 point")]
    BadPublicKey(String),
    /// The signature does not verify (or is malleable) for this key and digest.
    #[error("signature does not verify")]
    BadSignature,
    /// The operating system's random source failed.
    #[error("no random source: {0}")]
    Random(String),
}

/// Hex digits as text (they are ASCII).
fn hex_str(chars: &[u8]) -> &str {
    std::str::from_utf8(chars).expect("hex digits are ASCII")
}

/// Reads a hex type from a string without copying it first; refuses what
/// `String::deserialize` refuses, with the same messages.
struct HexVisitor<T>(std::marker::PhantomData<T>);

impl<T> serde::de::Visitor<'_> for HexVisitor<T>
where
    T: FromStr<Err = KeyError>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<T, E> {
        s.parse().map_err(E::custom)
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<T, E> {
        match std::str::from_utf8(bytes) {
            Ok(s) => self.visit_str(s),
            Err(_) => Err(E::invalid_value(serde::de::Unexpected::Bytes(bytes), &self)),
        }
    }
}

/// Each byte's value as a lowercase hex digit, or 0xFF: not one.
const LOWER_HEX: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < 16 {
        table[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Reads `out.len()` bytes from `2 * out.len()` lowercase hex digits; false if one is
/// not a lowercase hex digit (`out` then holds nothing meaningful).
fn decode_lower_hex(hex: &[u8], out: &mut [u8]) -> bool {
    debug_assert_eq!(hex.len(), 2 * out.len());
    // A digit's value is below 16, 0xFF is not: one test for the whole string.
    let mut seen = 0u8;
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let (high, low) = (LOWER_HEX[pair[0] as usize], LOWER_HEX[pair[1] as usize]);
        seen |= high | low;
        *byte = (high << 4) | (low & 0x0F);
    }
    seen < 16
}

macro_rules! hex_type {
    ($ty:ident, $len:expr, $what:expr) => {
        impl FromStr for $ty {
            type Err = KeyError;
            fn from_str(s: &str) -> Result<Self, KeyError> {
                let bad = || KeyError::BadHex {
                    what: $what,
                    value: s.chars().take(140).collect(),
                };
                // Lowercase only: one value, one spelling, so signed text cannot vary.
                let mut bytes = [0; $len];
                if s.len() != $len * 2 || !decode_lower_hex(s.as_bytes(), &mut bytes) {
                    return Err(bad());
                }
                Ok($ty(bytes))
            }
        }
        impl $ty {
            /// The lowercase hex, on the stack: documents write and read many of these,
            /// and each would otherwise be a string allocated and dropped.
            fn hex_chars(&self) -> [u8; $len * 2] {
                let mut chars = [0; $len * 2];
                hex::encode_to_slice(self.0, &mut chars).expect("the buffer fits the hex");
                chars
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(hex_str(&self.hex_chars()))
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($ty), hex::encode(self.0))
            }
        }
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(hex_str(&self.hex_chars()))
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(HexVisitor(std::marker::PhantomData))
            }
        }
    };
}

hex_type!(Digest, 32, "sha256 digest");
hex_type!(PublicKey, 32, "ed25519 public key");
hex_type!(Signature, 64, "ed25519 signature");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify_roundtrip() {
        let key = SecretKey::from_seed([7; 32]);
        let d = Digest::of(b"hello");
        let sig = key.sign(&d);
        key.public().verify(&d, &sig).unwrap();
        let other = Digest::of(b"hellp");
        assert_eq!(
            key.public().verify(&other, &sig),
            Err(KeyError::BadSignature)
        );
    }

    #[test]
    fn hex_is_lowercase_and_exact_length() {
        let pk = SecretKey::from_seed([1; 32]).public();
        let hex = pk.to_hex();
        assert_eq!(hex.parse::<PublicKey>().unwrap(), pk);
        assert!(hex.to_uppercase().parse::<PublicKey>().is_err());
        assert!(hex[..62].parse::<PublicKey>().is_err());
    }

    #[test]
    fn hex_types_are_refused_as_strings_are() {
        // The messages a `String` read gives, then the hex check's.
        let pk = SecretKey::from_seed([1; 32]).public().to_hex();
        for v in [
            serde_json::json!(5),
            serde_json::json!(null),
            serde_json::json!(true),
            serde_json::json!([pk]),
            serde_json::json!({"k": pk}),
            serde_json::json!(pk[..62]),
            serde_json::json!(pk.to_uppercase()),
        ] {
            let expected = match String::deserialize(&v) {
                Err(e) => e.to_string(),
                Ok(s) => s.parse::<PublicKey>().unwrap_err().to_string(),
            };
            let got = PublicKey::deserialize(&v).unwrap_err().to_string();
            assert_eq!(got, expected, "{v}");
            let text = serde_json::from_str::<PublicKey>(&v.to_string()).unwrap_err();
            assert!(text.to_string().starts_with(&expected), "{v}: {text}");
        }
        let sig = Signature([9; 64]);
        let json = serde_json::to_string(&sig).unwrap();
        assert_eq!(json, format!("\"{}\"", hex::encode([9; 64])));
        assert_eq!(serde_json::from_str::<Signature>(&json).unwrap(), sig);
        assert_eq!(sig.to_string(), hex::encode([9; 64]));
    }

    #[test]
    fn key_file_is_0600_and_refused_when_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.key");
        let key = SecretKey::generate().unwrap();
        key.save_new(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(SecretKey::load(&path).unwrap().public(), key.public());
        assert!(matches!(key.save_new(&path), Err(KeyError::Io(..))));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            SecretKey::load(&path).unwrap_err(),
            KeyError::InsecureMode(path.clone(), 0o644)
        );
    }

    #[test]
    fn lowercase_hex_is_read_as_the_hex_crate_reads_it() {
        let mut samples: Vec<String> = vec![
            hex::encode([0u8; 4]),
            hex::encode([0xFFu8; 4]),
            hex::encode([0x01, 0x23, 0x45, 0x67]),
            hex::encode([0x89, 0xab, 0xcd, 0xef]),
            "0123456A".into(),
            "0123456g".into(),
            "0123456/".into(),
            "0123456:".into(),
            "0123456`".into(),
            "012345 6".into(),
            "0123é6".into(),
        ];
        for b in 0..=255u8 {
            samples.push(
                format!("00{}0", b as char)
                    .chars()
                    .take(4)
                    .collect::<String>()
                    + "0000",
            );
        }
        for text in samples {
            let mut ours = [0u8; 4];
            let ok = text.len() == 8 && decode_lower_hex(text.as_bytes(), &mut ours);
            let mut theirs = [0u8; 4];
            let expected = text.len() == 8
                && !text.bytes().any(|b| b.is_ascii_uppercase())
                && hex::decode_to_slice(&text, &mut theirs).is_ok();
            assert_eq!(ok, expected, "{text:?}");
            if ok {
                assert_eq!(ours, theirs, "{text:?}");
            }
        }
    }
}
