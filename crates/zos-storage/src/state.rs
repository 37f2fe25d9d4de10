//! The node state home: small durable blobs (identity seed, engine journal, registries)
//! replicated on every online pool.
//!
//! Each copy is one file `<pool>/zos-state/<key>`, mode 0600:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "ZOSST001" (checksummed) or "ZOSST002" (authenticated)
//! 8       8     generation, u64 little-endian (1 for the first write, +1 per write)
//! 16      8     payload length, u64 little-endian
//! 24      32    ZOSST001: sha256(bytes 0..24 || payload)
//!               ZOSST002: HMAC-SHA256(mac_key, key name || 0x00 || bytes 0..24 || payload)
//! 56      len   payload
//! ```
//!
//! The identity seed (key [`IDENTITY_KEY`]) is always ZOSST001 and write-once: copies
//! holding different seeds are a conflict, never resolved by generation. Once a MAC key
//! is set ([`StateHome::set_mac_key`], derived from the seed by [`mac_key_of`]), every
//! other key is written as ZOSST002 and a copy that is not authenticated by that key
//! (a planted disk, a forged journal) is [`CopyState::Forged`]: never read, whatever its
//! generation.
//!
//! Writes go to every copy atomically (temp file 0600, fsync, rename, fsync directory)
//! with the next generation, and succeed only when every copy was written. Reads take
//! the newest valid copy and rewrite every copy that is missing, older, corrupt or
//! forged; a copy readable by group or others is set back to 0600.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"ZOSST001";
const MAGIC_MAC: &[u8; 8] = b"ZOSST002";
const HEADER: usize = 56;
/// Refuse state blobs larger than this (the state home is for small things).
pub const MAX_STATE_BYTES: usize = 64 << 20;

/// The state directory inside a pool.
pub const STATE_DIR: &str = "zos-state";

/// State key of the node's identity seed: write-once, never authenticated by itself.
pub const IDENTITY_KEY: &str = "identity";

/// State key of the marker that the state home is authenticated: once a valid copy of
/// it exists, a checksummed copy of any other key is forged. Before it (a node whose
/// state predates authentication), checksummed copies are read once and rewritten
/// authenticated ([`StateHome::upgrade`]).
pub const AUTHENTICATED_KEY: &str = "authenticated";

/// HMAC-SHA256 (RFC 2104) of the concatenated `parts`; `key` at most one block.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for p in parts {
        inner.update(p);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The key that authenticates the state home of the node whose identity seed is `seed`.
pub fn mac_key_of(seed: &[u8]) -> [u8; 32] {
    hmac_sha256(seed, &[b"zos-state-mac-v1"])
}

/// Constant-time equality of two 32-byte tags.
fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn header(magic: &[u8; 8], generation: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + len);
    out.extend_from_slice(magic);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(len as u64).to_le_bytes());
    out
}

fn encode(key: &str, mac: Option<&[u8; 32]>, generation: u64, payload: &[u8]) -> Vec<u8> {
    let mut out;
    match mac {
        Some(k) => {
            out = header(MAGIC_MAC, generation, payload.len());
            let tag = hmac_sha256(k, &[key.as_bytes(), &[0], &out, payload]);
            out.extend_from_slice(&tag);
        }
        None => {
            out = header(MAGIC, generation, payload.len());
            let mut h = Sha256::new();
            h.update(&out);
            h.update(payload);
            out.extend_from_slice(&h.finalize());
        }
    }
    out.extend_from_slice(payload);
    out
}

/// Why a copy was not accepted.
enum Rejected {
    Corrupt(String),
    Forged(String),
}

/// A copy's generation and payload. `mac`: the key every copy of `key` must be
/// authenticated by (`None`: checksummed copies).
fn decode<'a>(
    key: &str,
    mac: Option<&[u8; 32]>,
    legacy: bool,
    bytes: &'a [u8],
) -> std::result::Result<(u64, &'a [u8]), Rejected> {
    if bytes.len() < HEADER {
        return Err(Rejected::Corrupt(format!(
            "short file ({} bytes)",
            bytes.len()
        )));
    }
    let magic = &bytes[0..8];
    if magic != MAGIC && magic != MAGIC_MAC {
        return Err(Rejected::Corrupt("bad magic".into()));
    }
    let generation = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if len != (bytes.len() - HEADER) as u64 {
        return Err(Rejected::Corrupt(format!(
            "length {len} does not match file ({} payload bytes)",
            bytes.len() - HEADER
        )));
    }
    let payload = &bytes[HEADER..];
    let mac = if legacy && magic == MAGIC { None } else { mac };
    match (mac, magic == MAGIC_MAC) {
        (Some(k), true) => {
            let tag = hmac_sha256(k, &[key.as_bytes(), &[0], &bytes[0..24], payload]);
            if !tags_equal(&tag, &bytes[24..56]) {
                return Err(Rejected::Forged(
                    "not authenticated by this node's key".into(),
                ));
            }
        }
        (Some(_), false) => {
            return Err(Rejected::Forged(
                "a checksummed copy where this node's key must authenticate it".into(),
            ))
        }
        (None, true) => {
            return Err(Rejected::Forged(
                "an authenticated copy, but no node key to check it".into(),
            ))
        }
        (None, false) => {
            let mut h = Sha256::new();
            h.update(&bytes[0..24]);
            h.update(payload);
            if h.finalize().as_slice() != &bytes[24..56] {
                return Err(Rejected::Corrupt("checksum mismatch".into()));
            }
        }
    }
    Ok((generation, payload))
}

/// Write `bytes` to `dir/name` atomically and durably, mode 0600.
pub(crate) fn atomic_write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| Error::io("create dir", dir, e))?;
    let mut rnd = [0u8; 6];
    getrandom::fill(&mut rnd)
        .map_err(|e| Error::io("getrandom", dir, std::io::Error::other(e.to_string())))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", hex::encode(rnd)));
    let res = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        // The umask may only take bits away; make sure of exactly 0600.
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io("chmod", &tmp, e))?;
        f.write_all(bytes)
            .map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &tmp, e))?;
        let dst = dir.join(name);
        fs::rename(&tmp, &dst).map_err(|e| Error::io("rename", &dst, e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync dir", dir, e))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// What one copy holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyState {
    /// No copy on this pool.
    Missing,
    /// The copy does not decode; why.
    Corrupt(String),
    /// Well-formed, but not authenticated by this node's key: never read.
    Forged(String),
    /// Well-formed and, once the home has a node key, authenticated by it.
    Valid {
        /// Its generation (the newest valid copy wins).
        generation: u64,
    },
    /// The pool directory could not be read at all.
    Unreadable(String),
}

/// Result of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRead {
    /// The value of the newest valid copy.
    pub data: Vec<u8>,
    /// Its generation.
    pub generation: u64,
    /// Copies that were missing, stale, corrupt, forged or readable by others and have
    /// been rewritten (or set back to 0600).
    pub repaired: Vec<PathBuf>,
    /// Copies that needed repair but could not be rewritten.
    pub repair_failed: Vec<(PathBuf, String)>,
}

/// Result of a write: every copy was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    /// The generation written (one more than the newest copy's).
    pub generation: u64,
    /// The copies written, one per online pool.
    pub written: Vec<PathBuf>,
}

/// Replicated small-blob store over a set of directories (one per online pool).
#[derive(Debug)]
pub struct StateHome {
    dirs: Vec<PathBuf>,
    lock: Mutex<()>,
    mac: OnceLock<[u8; 32]>,
    /// Checksummed copies are still read (only during [`StateHome::upgrade`]).
    legacy: AtomicBool,
}

fn check_key(key: &str) -> Result<()> {
    crate::check_name(key)
}

/// True when group or others may read or write `path`.
fn too_open(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

impl StateHome {
    /// A state home over these directories (created on first write). Copies are
    /// checksummed until [`StateHome::set_mac_key`].
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        StateHome {
            dirs,
            lock: Mutex::new(()),
            mac: OnceLock::new(),
            legacy: AtomicBool::new(false),
        }
    }

    /// From now on every key but the identity is authenticated by `key` (see
    /// [`mac_key_of`]). Set once; a second call with another key is refused.
    pub fn set_mac_key(&self, key: [u8; 32]) -> Result<()> {
        let set = self.mac.get_or_init(|| key);
        if !tags_equal(set, &key) {
            return Err(Error::Corrupt {
                what: "state home".into(),
                why: "it is already authenticated by another key".into(),
            });
        }
        Ok(())
    }

    /// Whether copies are authenticated by a node key.
    pub fn authenticated(&self) -> bool {
        self.mac.get().is_some()
    }

    /// The directories holding the copies, one per online pool.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    fn mac_for(&self, key: &str) -> Option<&[u8; 32]> {
        if key == IDENTITY_KEY {
            None
        } else {
            self.mac.get()
        }
    }

    fn read_copy(&self, dir: &Path, key: &str) -> (CopyState, Option<Vec<u8>>) {
        let legacy = self.legacy.load(Ordering::SeqCst);
        read_copy_with(dir, key, self.mac_for(key), legacy)
    }

    /// After [`StateHome::set_mac_key`]: if the state home was never authenticated
    /// (no valid [`AUTHENTICATED_KEY`] copy), every key's checksummed copies are read
    /// one last time and rewritten authenticated, then the marker is written. Returns
    /// the keys upgraded. A marker whose copies are all forged is an error.
    pub fn upgrade(&self) -> Result<Vec<String>> {
        if self.mac.get().is_none() || self.read(AUTHENTICATED_KEY)?.is_some() {
            return Ok(Vec::new());
        }
        let mut keys: Vec<String> = Vec::new();
        for d in &self.dirs {
            let Ok(rd) = fs::read_dir(d) else { continue };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with('.') && name != IDENTITY_KEY && !keys.contains(&name) {
                    keys.push(name);
                }
            }
        }
        keys.sort();
        self.legacy.store(true, Ordering::SeqCst);
        let res = (|| {
            let mut done = Vec::new();
            for k in &keys {
                if check_key(k).is_err() {
                    continue;
                }
                if let Some(r) = self.read(k)? {
                    self.write(k, &r.data)?;
                    done.push(k.clone());
                }
            }
            Ok(done)
        })();
        self.legacy.store(false, Ordering::SeqCst);
        let done = res?;
        self.write(AUTHENTICATED_KEY, b"1")?;
        tracing::info!(keys = ?done, "state home now authenticated by the node key");
        Ok(done)
    }

    /// The state of every copy of `key`, without repairing.
    pub fn inspect(&self, key: &str) -> Result<Vec<(PathBuf, CopyState)>> {
        check_key(key)?;
        Ok(self
            .dirs
            .iter()
            .map(|d| (d.join(key), self.read_copy(d, key).0))
            .collect())
    }

    /// Write a new generation of `key` to every copy. Done only when every copy was
    /// written ([`Error::StateIncomplete`] otherwise; the next read repairs the rest).
    /// The identity is write-once: another value than the one stored is refused.
    pub fn write(&self, key: &str, data: &[u8]) -> Result<StateWrite> {
        check_key(key)?;
        check_record_size(key, data)?;
        if self.dirs.is_empty() {
            return Err(Error::NoStateCopy);
        }
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let copies: Vec<_> = self.dirs.iter().map(|d| self.read_copy(d, key)).collect();
        if key == IDENTITY_KEY {
            self.identity_unchanged(data, &copies)?;
        }
        let newest = copies
            .iter()
            .filter_map(|(s, _)| match s {
                CopyState::Valid { generation } => Some(*generation),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let generation = newest + 1;
        let bytes = encode(key, self.mac_for(key), generation, data);
        let written = self.write_every_copy(key, generation, &bytes)?;
        tracing::debug!(key, generation, copies = written.len(), "state written");
        Ok(StateWrite {
            generation,
            written,
        })
    }

    /// The identity is write-once: a copy holding another value than `data` is a conflict.
    fn identity_unchanged(
        &self,
        data: &[u8],
        copies: &[(CopyState, Option<Vec<u8>>)],
    ) -> Result<()> {
        let differing: Vec<PathBuf> = self
            .dirs
            .iter()
            .zip(copies)
            .filter(|(_, (_, p))| p.as_ref().is_some_and(|p| p != data))
            .map(|(d, _)| d.join(IDENTITY_KEY))
            .collect();
        if !differing.is_empty() {
            return Err(Error::StateConflict {
                key: IDENTITY_KEY.into(),
                copies: differing,
            });
        }
        Ok(())
    }

    /// `bytes` to every copy; [`Error::StateIncomplete`] unless all were written.
    fn write_every_copy(&self, key: &str, generation: u64, bytes: &[u8]) -> Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        let mut failed = Vec::new();
        for d in &self.dirs {
            match atomic_write(d, key, bytes) {
                Ok(()) => written.push(d.join(key)),
                Err(e) => {
                    tracing::error!(key, copy = %d.display(), error = %e, "state copy not written");
                    failed.push((d.join(key), e.to_string()));
                }
            }
        }
        if !failed.is_empty() {
            return Err(Error::StateIncomplete {
                key: key.into(),
                generation,
                written: written.len(),
                failed,
            });
        }
        Ok(written)
    }

    /// Read the newest valid copy of `key` and repair the others. `Ok(None)` when no copy
    /// exists at all; an error when copies exist but none is valid ([`Error::StateForged`]
    /// when some are well-formed but not authenticated by this node's key), and for the
    /// identity when valid copies disagree ([`Error::StateConflict`], nothing rewritten).
    pub fn read(&self, key: &str) -> Result<Option<StateRead>> {
        check_key(key)?;
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let copies: Vec<Copy<'_>> = self
            .dirs
            .iter()
            .map(|d| {
                let (s, p) = self.read_copy(d, key);
                (d, s, p)
            })
            .collect();
        if key == IDENTITY_KEY {
            identity_agrees(&copies)?;
        }
        for (d, s, _) in &copies {
            if let CopyState::Forged(why) = s {
                tracing::error!(key, copy = %d.display(), why = %why, "forged state copy ignored");
            }
        }
        let best = copies
            .iter()
            .filter_map(|(_, s, p)| match s {
                CopyState::Valid { generation } => Some((*generation, p.as_ref().expect("valid"))),
                _ => None,
            })
            .max_by_key(|(g, _)| *g);
        let Some((generation, data)) = best else {
            return no_valid_copy(key, &copies).map(|()| None);
        };
        Ok(Some(self.repair(key, generation, data.clone(), &copies)))
    }

    /// Brings every copy that is not the chosen one (`generation`, `data`) up to date and
    /// sets a good copy readable by others back to 0600, saying which were repaired.
    fn repair(&self, key: &str, generation: u64, data: Vec<u8>, copies: &[Copy<'_>]) -> StateRead {
        let bytes = encode(key, self.mac_for(key), generation, &data);
        let mut out = StateRead {
            data,
            generation,
            repaired: Vec::new(),
            repair_failed: Vec::new(),
        };
        for (d, s, p) in copies {
            let path = d.join(key);
            let good = matches!(s, CopyState::Valid { generation: g } if *g == generation)
                && p.as_deref() == Some(&out.data[..]);
            if good {
                if too_open(&path) {
                    tracing::error!(key, copy = %path.display(), "state copy readable by others: set to 0600");
                    match fs::set_permissions(&path, fs::Permissions::from_mode(0o600)) {
                        Ok(()) => out.repaired.push(path),
                        Err(e) => out.repair_failed.push((path, e.to_string())),
                    }
                }
                continue;
            }
            tracing::warn!(key, copy = %d.display(), state = ?s, generation, "repairing state copy");
            match atomic_write(d, key, &bytes) {
                Ok(()) => out.repaired.push(path),
                Err(e) => out.repair_failed.push((path, e.to_string())),
            }
        }
        out
    }

    /// Remove every copy of `key` (idempotent).
    pub fn remove(&self, key: &str) -> Result<()> {
        check_key(key)?;
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        for d in &self.dirs {
            let p = d.join(key);
            match fs::remove_file(&p) {
                Ok(()) => {
                    let _ = File::open(d).and_then(|f| f.sync_all());
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", p, e)),
            }
        }
        Ok(())
    }
}

/// One copy as read: its pool directory, its state, its payload when it decoded.
type Copy<'a> = (&'a PathBuf, CopyState, Option<Vec<u8>>);

/// A state record larger than [`MAX_STATE_BYTES`] is refused before anything is read.
fn check_record_size(key: &str, data: &[u8]) -> Result<()> {
    if data.len() > MAX_STATE_BYTES {
        return Err(Error::InvalidSize {
            what: format!("state {key}"),
            size: data.len() as u64,
            why: "larger than the state home accepts",
        });
    }
    Ok(())
}

/// The identity's copies that decoded must all hold the same seed: otherwise this is a
/// foreign state home, and nothing is chosen.
fn identity_agrees(copies: &[Copy<'_>]) -> Result<()> {
    let mut values = copies.iter().filter_map(|(_, _, p)| p.as_ref());
    if let Some(first) = values.next() {
        if values.any(|v| v != first) {
            return Err(Error::StateConflict {
                key: IDENTITY_KEY.into(),
                copies: copies
                    .iter()
                    .filter(|(_, _, p)| p.is_some())
                    .map(|(d, _, _)| d.join(IDENTITY_KEY))
                    .collect(),
            });
        }
    }
    Ok(())
}

/// No copy is valid: forged copies are [`Error::StateForged`], corrupt ones
/// [`Error::StateUnreadable`]; `Ok` when there simply is none.
fn no_valid_copy(key: &str, copies: &[Copy<'_>]) -> Result<()> {
    let forged: Vec<PathBuf> = copies
        .iter()
        .filter(|(_, s, _)| matches!(s, CopyState::Forged(_)))
        .map(|(d, _, _)| d.join(key))
        .collect();
    if !forged.is_empty() {
        return Err(Error::StateForged {
            key: key.to_string(),
            copies: forged,
        });
    }
    if copies
        .iter()
        .any(|(_, s, _)| matches!(s, CopyState::Corrupt(_)))
    {
        return Err(Error::StateUnreadable {
            key: key.to_string(),
            copies: copies.len(),
        });
    }
    Ok(())
}

/// One copy of `key` in `dir`, checked against `mac` (`None`: checksummed).
pub(crate) fn read_copy(
    dir: &Path,
    key: &str,
    mac: Option<&[u8; 32]>,
) -> (CopyState, Option<Vec<u8>>) {
    read_copy_with(dir, key, mac, false)
}

/// [`read_copy`]; `legacy`: a checksummed copy is valid even with a `mac`.
fn read_copy_with(
    dir: &Path,
    key: &str,
    mac: Option<&[u8; 32]>,
    legacy: bool,
) -> (CopyState, Option<Vec<u8>>) {
    let p = dir.join(key);
    match fs::read(&p) {
        Ok(b) => match decode(key, mac, legacy, &b) {
            Ok((generation, payload)) => (CopyState::Valid { generation }, Some(payload.to_vec())),
            Err(Rejected::Corrupt(why)) => (CopyState::Corrupt(why), None),
            Err(Rejected::Forged(why)) => (CopyState::Forged(why), None),
        },
        Err(e) if e.kind() == ErrorKind::NotFound => (CopyState::Missing, None),
        Err(e) => (CopyState::Unreadable(e.to_string()), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home(n: usize) -> (tempfile::TempDir, StateHome) {
        let t = tempfile::tempdir().unwrap();
        let dirs = (0..n).map(|i| t.path().join(format!("p{i}"))).collect();
        (t, StateHome::new(dirs))
    }

    #[test]
    fn write_read_generations() {
        let (_t, h) = home(3);
        assert_eq!(h.read("journal").unwrap(), None);
        assert_eq!(h.write("journal", b"one").unwrap().generation, 1);
        let w = h.write("journal", b"two").unwrap();
        assert_eq!((w.generation, w.written.len()), (2, 3));
        let r = h.read("journal").unwrap().unwrap();
        assert_eq!((r.data.as_slice(), r.generation), (&b"two"[..], 2));
        assert!(r.repaired.is_empty());
    }

    #[test]
    fn repairs_stale_corrupt_and_missing() {
        let (_t, h) = home(3);
        h.write("journal", b"v1").unwrap();
        let stale = fs::read(h.dirs[0].join("journal")).unwrap();
        h.write("journal", b"v2").unwrap();
        fs::write(h.dirs[0].join("journal"), &stale).unwrap(); // stale (gen 1)
        let mut bad = fs::read(h.dirs[1].join("journal")).unwrap();
        *bad.last_mut().unwrap() ^= 0xff; // bit flip in payload
        fs::write(h.dirs[1].join("journal"), &bad).unwrap();
        fs::remove_file(h.dirs[2].join("journal")).unwrap(); // missing
                                                             // Stale, corrupt and missing: the stale copy is the newest valid one left.
        let r = h.read("journal").unwrap().unwrap();
        assert_eq!((r.data.as_slice(), r.generation), (&b"v1"[..], 1));
        assert_eq!(r.repaired.len(), 2);
        // A newer write (generation 2 again: the lost one is gone) then a corrupt copy.
        h.write("journal", b"v3").unwrap();
        fs::write(h.dirs[2].join("journal"), b"garbage").unwrap();
        let r = h.read("journal").unwrap().unwrap();
        assert_eq!((r.data.as_slice(), r.generation), (&b"v3"[..], 2));
        assert_eq!(r.repaired, vec![h.dirs[2].join("journal")]);
        for (_, s) in h.inspect("journal").unwrap() {
            assert_eq!(s, CopyState::Valid { generation: 2 });
        }
    }

    #[test]
    fn all_corrupt_is_an_error() {
        let (_t, h) = home(2);
        h.write("k", b"x").unwrap();
        for d in &h.dirs {
            fs::write(d.join("k"), b"ZOSST001 nope").unwrap();
        }
        assert!(matches!(
            h.read("k"),
            Err(Error::StateUnreadable { copies: 2, .. })
        ));
        assert!(matches!(h.write("../k", b""), Err(Error::InvalidName(_))));
    }

    #[test]
    fn survives_a_missing_directory() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("a");
        let h = StateHome::new(vec![a.clone(), t.path().join("b")]);
        h.write("identity", b"key").unwrap();
        // Pool b disappears: a state home over the remaining pool still reads it.
        let h2 = StateHome::new(vec![a]);
        assert_eq!(h2.read("identity").unwrap().unwrap().data, b"key");
    }

    #[test]
    fn hmac_matches_rfc4231() {
        // RFC 4231 test case 2.
        let tag = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(tag),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than a block is hashed first.
        let tag = hmac_sha256(
            &[0xaa; 131],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(
            hex::encode(tag),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn authenticated_home_ignores_forged_copies() {
        let (_t, h) = home(2);
        h.write(IDENTITY_KEY, &[1; 32]).unwrap();
        h.set_mac_key(mac_key_of(&[1; 32])).unwrap();
        h.write("journal", b"ours").unwrap();
        // A checksummed copy and one authenticated by another key, both newer.
        fs::write(
            h.dirs[0].join("journal"),
            encode("journal", None, 50, b"forged"),
        )
        .unwrap();
        let other = mac_key_of(&[2; 32]);
        let forged = encode("journal", Some(&other), 60, b"forged");
        fs::write(h.dirs[1].join("journal"), &forged).unwrap();
        assert!(matches!(
            h.read("journal"),
            Err(Error::StateForged { copies, .. }) if copies.len() == 2
        ));
        // A write replaces forged copies; its generation follows the authentic ones.
        // With one authentic copy left, it is read and the forged one rewritten.
        let w = h.write("journal", b"ours again").unwrap();
        assert_eq!(w.generation, 1);
        fs::write(h.dirs[1].join("journal"), &forged).unwrap();
        let r = h.read("journal").unwrap().unwrap();
        assert_eq!((r.data.as_slice(), r.generation), (&b"ours again"[..], 1));
        assert_eq!(r.repaired, vec![h.dirs[1].join("journal")]);
        // A copy of one key is not accepted as another key.
        fs::copy(h.dirs[0].join("journal"), h.dirs[0].join("names")).unwrap();
        assert!(matches!(
            h.inspect("names").unwrap()[0].1,
            CopyState::Forged(_)
        ));
        assert!(h.set_mac_key(other).is_err());
    }

    #[test]
    fn identity_is_write_once_and_0600() {
        let (_t, h) = home(2);
        h.write(IDENTITY_KEY, &[1; 32]).unwrap();
        h.write(IDENTITY_KEY, &[1; 32]).unwrap();
        assert!(matches!(
            h.write(IDENTITY_KEY, &[2; 32]),
            Err(Error::StateConflict { .. })
        ));
        // Another seed planted with a higher generation: a conflict, nothing rewritten.
        let ours = fs::read(h.dirs[0].join(IDENTITY_KEY)).unwrap();
        fs::write(
            h.dirs[1].join(IDENTITY_KEY),
            encode(IDENTITY_KEY, None, 9, &[2; 32]),
        )
        .unwrap();
        assert!(matches!(
            h.read(IDENTITY_KEY),
            Err(Error::StateConflict { copies, .. }) if copies.len() == 2
        ));
        assert_eq!(fs::read(h.dirs[0].join(IDENTITY_KEY)).unwrap(), ours);
        // A copy readable by others is set back to 0600.
        fs::write(h.dirs[1].join(IDENTITY_KEY), &ours).unwrap();
        let p = h.dirs[1].join(IDENTITY_KEY);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let r = h.read(IDENTITY_KEY).unwrap().unwrap();
        assert_eq!(r.repaired, vec![p.clone()]);
        for d in &h.dirs {
            let mode = fs::metadata(d.join(IDENTITY_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_checksummed_home_is_upgraded_once() {
        let (_t, h) = home(2);
        h.write(IDENTITY_KEY, &[1; 32]).unwrap();
        h.write("journal", b"from before").unwrap();
        let h = StateHome::new(h.dirs.clone());
        h.set_mac_key(mac_key_of(&[1; 32])).unwrap();
        assert!(matches!(h.read("journal"), Err(Error::StateForged { .. })));
        assert_eq!(h.upgrade().unwrap(), vec!["journal".to_string()]);
        let r = h.read("journal").unwrap().unwrap();
        assert_eq!(r.data, b"from before");
        assert!(fs::read(h.dirs[0].join("journal"))
            .unwrap()
            .starts_with(MAGIC_MAC));
        // Once upgraded, a checksummed copy is forged again, and upgrade does nothing.
        fs::write(h.dirs[1].join("journal"), encode("journal", None, 9, b"x")).unwrap();
        assert!(h.upgrade().unwrap().is_empty());
        assert_eq!(h.read("journal").unwrap().unwrap().data, b"from before");
    }
}
