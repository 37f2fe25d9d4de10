//! Publisher signatures: `NAME.fl.sig` next to `NAME.fl`.
//!
//! The file is one JSON object (see docs/flist-format.md, "Signatures"):
//! `{"format":"zos-flist-sig/1","publisher":HEX32,"sha256":HEX32,"signature":HEX64}`.
//! The signature is ed25519 over the 32-byte sha256 of the `.fl` bytes, exactly as
//! zos-contract signs digests, so the same keys and key files serve both.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zos_contract::{Digest, KeyError, PublicKey, SecretKey, Signature};

use crate::error::Error;
use crate::meta::{Flist, MAX_FLIST_BYTES};

/// The `format` value of a signature file.
pub const SIG_FORMAT: &str = "zos-flist-sig/1";

/// Why a flist's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// No `.fl.sig` next to the flist (names the path looked at).
    #[error(
        "{0}: no signature file (the flist is unsigned); pass --insecure-unsigned to use it anyway"
    )]
    Missing(PathBuf),
    #[error("{path}: not a flist signature: {reason}")]
    /// The signature file is not a `zos-flist-sig/1` JSON object.
    Malformed {
        /// The signature file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    #[error("the signature covers sha256 {signed}, the flist is {actual}: the .fl was changed")]
    /// The signature is for other `.fl` bytes.
    DigestMismatch {
        /// The sha256 the signature file names, hex.
        signed: String,
        /// The sha256 of the `.fl` read, hex.
        actual: String,
    },
    /// The ed25519 signature does not verify under the publisher key it names (hex).
    #[error("the signature by {0} does not verify")]
    BadSignature(String),
    /// A valid signature by a key (hex) that is not among the trusted publishers.
    #[error("signed by {0}, which is not a trusted publisher")]
    UntrustedSigner(String),
    /// Signatures are required but no publisher key is trusted.
    #[error("no trusted publisher key given (use --trust, or --insecure-unsigned)")]
    NoTrust,
    /// A publisher key or key file could not be read or parsed.
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// The contents of a `.fl.sig` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlistSignature {
    /// Always [`SIG_FORMAT`]; anything else is refused.
    pub format: String,
    /// The ed25519 key that signed.
    pub publisher: PublicKey,
    /// SHA-256 of the `.fl` bytes the signature covers.
    pub sha256: Digest,
    /// ed25519 over `sha256`.
    pub signature: Signature,
}

impl FlistSignature {
    /// Signs the sha256 of a flist's bytes.
    pub fn sign(sha256: [u8; 32], key: &SecretKey) -> Self {
        let digest = Digest(sha256);
        FlistSignature {
            format: SIG_FORMAT.to_string(),
            publisher: key.public(),
            sha256: digest,
            signature: key.sign(&digest),
        }
    }

    /// The signature file's text (pretty JSON).
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("plain strings serialise")
    }

    /// Parses a signature file's text, refusing unknown fields and formats; `path` is
    /// only for the error. Does not verify anything.
    pub fn parse(path: &Path, text: &[u8]) -> Result<Self, SignError> {
        let sig: FlistSignature =
            serde_json::from_slice(text).map_err(|e| SignError::Malformed {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        if sig.format != SIG_FORMAT {
            return Err(SignError::Malformed {
                path: path.to_path_buf(),
                reason: format!("format {:?}, expected {SIG_FORMAT:?}", sig.format),
            });
        }
        Ok(sig)
    }

    /// Checks this signature against the flist's digest and the trusted keys.
    pub fn check(&self, sha256: &[u8; 32], trusted: &[PublicKey]) -> Result<(), SignError> {
        if &self.sha256.0 != sha256 {
            return Err(SignError::DigestMismatch {
                signed: self.sha256.to_hex(),
                actual: hex::encode(sha256),
            });
        }
        self.publisher
            .verify(&self.sha256, &self.signature)
            .map_err(|_| SignError::BadSignature(self.publisher.to_hex()))?;
        // Trust last: a valid signature by a stranger is still refused, and the message
        // says who signed.
        if !trusted.contains(&self.publisher) {
            return Err(SignError::UntrustedSigner(self.publisher.to_hex()));
        }
        Ok(())
    }
}

/// `app.fl` -> `app.fl.sig`.
pub fn sig_path(flist: &Path) -> PathBuf {
    let mut s = flist.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

/// Writes `NAME.fl.sig` for the flist at `flist` (temp + fsync + rename).
pub fn sign_file(flist: &Path, key: &SecretKey) -> Result<FlistSignature, Error> {
    let bytes = std::fs::read(flist).map_err(|e| Error::io(flist, e))?;
    let sha: [u8; 32] = Digest::of(&bytes).0;
    let sig = FlistSignature::sign(sha, key);
    let path = sig_path(flist);
    let tmp = sig_path(&path); // NAME.fl.sig.sig: a temp name no reader looks for
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(sig.to_json().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| Error::io(&path, e))?;
    Ok(sig)
}

/// What the caller trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Only flists signed by one of these publishers.
    Publishers(Vec<PublicKey>),
    /// Anything, signed or not (hub flists today; a contract pins them by sha256).
    InsecureUnsigned,
}

/// Reads a flist once, checks its signature over exactly those bytes, then parses them.
/// Returns the flist and the publisher that signed it (None when unchecked).
pub fn open_trusted(path: &Path, trust: &Trust) -> Result<(Flist, Option<PublicKey>), Error> {
    let bytes = read_capped(path)?;
    let sha: [u8; 32] = Digest::of(&bytes).0;
    let publisher = match trust {
        Trust::InsecureUnsigned => {
            tracing::warn!(flist = %path.display(), sha256 = %hex::encode(sha),
                "using a flist without checking its signature (--insecure-unsigned)");
            None
        }
        Trust::Publishers(keys) => {
            if keys.is_empty() {
                return Err(SignError::NoTrust.into());
            }
            let spath = sig_path(path);
            let text = match std::fs::read(&spath) {
                Ok(t) if t.len() <= 64 * 1024 => t,
                Ok(_) => {
                    return Err(SignError::Malformed {
                        path: spath,
                        reason: "larger than 64 KiB".into(),
                    }
                    .into())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(SignError::Missing(spath).into())
                }
                Err(e) => return Err(Error::io(&spath, e)),
            };
            let sig = FlistSignature::parse(&spath, &text)?;
            sig.check(&sha, keys)?;
            tracing::info!(flist = %path.display(), publisher = %sig.publisher, "flist signature verified");
            Some(sig.publisher)
        }
    };
    // Parse only after the signature passed: the SQLite parser sees trusted bytes only.
    let flist = Flist::from_bytes(path, &bytes)?;
    Ok((flist, publisher))
}

fn read_capped(path: &Path) -> Result<Vec<u8>, Error> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    f.take(MAX_FLIST_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(path, e))?;
    if bytes.len() as u64 > MAX_FLIST_BYTES {
        return Err(Error::Format {
            path: path.to_path_buf(),
            reason: crate::error::FormatError::TooMany {
                what: "bytes",
                count: bytes.len() as u64,
                limit: MAX_FLIST_BYTES,
            },
        });
    }
    Ok(bytes)
}
