//! WireGuard key pairs: X25519, one per (contract, network) on each node.
//!
//! The private key never leaves the node: it lives in a file of the state home created
//! mode 0600 (a file the group or others can read is refused, not used), and is wiped
//! from memory when dropped. Only the public key travels, in the node's signed peer
//! record. Both are written in base64, as WireGuard's own tools print them.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use curve25519_dalek::montgomery::MontgomeryPoint;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

/// A WireGuard (X25519) public key: 32 bytes, base64 in text (44 characters).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WgPublicKey(pub [u8; 32]);

impl WgPublicKey {
    /// The key in base64.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Display for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgPublicKey({})", self.to_base64())
    }
}

fn decode32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 44 {
        return None;
    }
    let bytes = STANDARD.decode(s).ok()?;
    let key: [u8; 32] = bytes.try_into().ok()?;
    // One spelling per key: base64 decoders accept non-zero padding bits.
    (STANDARD.encode(key) == s).then_some(key)
}

/// Text that is not a WireGuard public key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a 32-byte key in base64")]
pub struct BadWgKey(pub String);

impl FromStr for WgPublicKey {
    type Err = BadWgKey;

    fn from_str(s: &str) -> Result<Self, BadWgKey> {
        decode32(s)
            .map(WgPublicKey)
            .ok_or_else(|| BadWgKey(s.to_owned()))
    }
}

impl Serialize for WgPublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WgPublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A WireGuard (X25519) private key. Its `Debug` shows the public key only; it is wiped
/// when dropped.
pub struct WgSecretKey([u8; 32]);

/// Why a WireGuard key could not be made, read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// The operating system's random source failed.
    #[error("random source: {0}")]
    Random(String),
    /// Reading or writing the key file failed.
    #[error("{0}: {1}")]
    Io(PathBuf, String),
    /// The key file can be read by the group or others: it is not used.
    #[error("{0}: mode {1:o}: a WireGuard private key must be readable by its owner only (0600)")]
    InsecureMode(PathBuf, u32),
    /// The key file does not hold one base64 key.
    #[error("{0}: not a WireGuard private key (one 32-byte key in base64)")]
    BadKeyFile(PathBuf),
}

impl WgSecretKey {
    /// A fresh key from the operating system's random source, clamped as X25519 keys
    /// are (as `wg genkey` writes them).
    pub fn generate() -> Result<Self, KeyFileError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| KeyFileError::Random(e.to_string()))?;
        Ok(Self::from_bytes(bytes))
    }

    /// The key of these 32 bytes, clamped.
    pub fn from_bytes(mut bytes: [u8; 32]) -> Self {
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        WgSecretKey(bytes)
    }

    /// The public key: the X25519 base point times the clamped private key.
    pub fn public(&self) -> WgPublicKey {
        WgPublicKey(MontgomeryPoint::mul_base_clamped(self.0).to_bytes())
    }

    /// The X25519 shared secret with `peer` (what WireGuard's handshake computes; used
    /// here to check that two nodes' keys agree).
    pub fn diffie_hellman(&self, peer: &WgPublicKey) -> [u8; 32] {
        MontgomeryPoint(peer.0).mul_clamped(self.0).to_bytes()
    }

    /// The private key's bytes, for the kernel's netlink request only.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0
    }

    /// The private key in base64, for the kernel's netlink request only.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Reads the key at `path`, refusing a file the group or others can read.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let io = |e: std::io::Error| KeyFileError::Io(path.to_path_buf(), e.to_string());
        let meta = fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::InsecureMode(path.to_path_buf(), mode));
        }
        let mut text = fs::read_to_string(path).map_err(io)?;
        let key = decode32(text.trim()).map(WgSecretKey);
        text.zeroize();
        key.ok_or_else(|| KeyFileError::BadKeyFile(path.to_path_buf()))
    }

    /// The key at `path`, made there first (a new file, mode 0600, synced) when there is
    /// none. A file that exists is never replaced: a key once published stays the
    /// node's.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyFileError> {
        let io = |e: std::io::Error| KeyFileError::Io(path.to_path_buf(), e.to_string());
        match fs::symlink_metadata(path) {
            Ok(_) => return Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let key = Self::generate()?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let mut text = format!("{}\n", key.to_base64());
        let written = file
            .write_all(text.as_bytes())
            .and_then(|()| file.sync_all());
        text.zeroize();
        written.map_err(io)?;
        tracing::info!(path = %path.display(), public = %key.public(), "WireGuard key made");
        Ok(key)
    }
}

impl Drop for WgSecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for WgSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgSecretKey(public {})", self.public())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        let v: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    #[test]
    fn public_key_is_x25519_of_rfc_7748() {
        // RFC 7748, section 6.1: Alice's and Bob's keys and their shared secret.
        let alice = WgSecretKey::from_bytes(hex32(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        let bob = WgSecretKey::from_bytes(hex32(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ));
        assert_eq!(
            alice.public().0,
            hex32("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            bob.public().0,
            hex32("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let shared = hex32("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(alice.diffie_hellman(&bob.public()), shared);
        assert_eq!(bob.diffie_hellman(&alice.public()), shared);
    }

    #[test]
    fn public_key_text_has_one_spelling() {
        let k = WgSecretKey::generate().unwrap().public();
        let text = k.to_string();
        assert_eq!(text.len(), 44);
        assert_eq!(text.parse::<WgPublicKey>().unwrap(), k);
        assert_eq!(serde_json::to_value(k).unwrap(), serde_json::json!(text));
        // Too short, not base64, and non-zero padding bits (another spelling of a key).
        assert!(text[..43].parse::<WgPublicKey>().is_err());
        assert!("!".repeat(44).parse::<WgPublicKey>().is_err());
        let zero = WgPublicKey([0; 32]).to_string();
        assert_eq!(zero, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        assert!("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB="
            .parse::<WgPublicKey>()
            .is_err());
    }

    #[test]
    fn key_file_is_made_0600_kept_and_refused_when_readable_by_others() {
        let dir = tempfile::Builder::new()
            .prefix("zt-mesh-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("wg.key");
        let made = WgSecretKey::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Loaded again, the same key: never replaced.
        assert_eq!(
            WgSecretKey::load_or_create(&path).unwrap().public(),
            made.public()
        );
        assert!(
            !format!("{made:?}").contains(&made.to_base64()),
            "Debug prints no secret"
        );
        // Made readable by others: refused, not used, not replaced.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            WgSecretKey::load_or_create(&path).unwrap_err(),
            KeyFileError::InsecureMode(path.clone(), 0o644)
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(WgSecretKey::load(&path).unwrap().public(), made.public());
        // Not a key.
        let junk = dir.path().join("junk.key");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&junk)
            .unwrap();
        fs::write(&junk, "not a key\n").unwrap();
        assert_eq!(
            WgSecretKey::load(&junk).unwrap_err(),
            KeyFileError::BadKeyFile(junk)
        );
    }
}
