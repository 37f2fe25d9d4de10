//! The node state home: small durable blobs (identity key, engine journal) replicated on
//! every online pool.
//!
//! Each copy is one file `<pool>/zos-state/<key>`:
//!
//! ```text
//! offset  size  field
//! 0       8     magic "ZOSST001"
//! 8       8     generation, u64 little-endian (1 for the first write, +1 per write)
//! 16      8     payload length, u64 little-endian
//! 24      32    sha256(magic || generation || length || payload)
//! 56      len   payload
//! ```
//!
//! Writes go to every copy atomically (temp file, fsync, rename, fsync directory) with the
//! next generation. Reads take the newest valid copy and rewrite every copy that is missing,
//! older, or corrupt.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"ZOSST001";
const HEADER: usize = 56;
/// Refuse state blobs larger than this (the state home is for small things).
pub const MAX_STATE_BYTES: usize = 64 << 20;

/// The state directory inside a pool.
pub const STATE_DIR: &str = "zos-state";

fn encode(generation: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut h = Sha256::new();
    h.update(&out);
    h.update(payload);
    out.extend_from_slice(&h.finalize());
    out.extend_from_slice(payload);
    out
}

fn decode(bytes: &[u8]) -> std::result::Result<(u64, &[u8]), String> {
    if bytes.len() < HEADER {
        return Err(format!("short file ({} bytes)", bytes.len()));
    }
    if &bytes[0..8] != MAGIC {
        return Err("bad magic".into());
    }
    let generation = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if len != (bytes.len() - HEADER) as u64 {
        return Err(format!(
            "length {len} does not match file ({} payload bytes)",
            bytes.len() - HEADER
        ));
    }
    let mut h = Sha256::new();
    h.update(&bytes[0..24]);
    h.update(&bytes[HEADER..]);
    if h.finalize().as_slice() != &bytes[24..56] {
        return Err("checksum mismatch".into());
    }
    Ok((generation, &bytes[HEADER..]))
}

/// Write `bytes` to `dir/name` atomically and durably.
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
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
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
    Missing,
    Corrupt(String),
    Valid {
        generation: u64,
    },
    /// The pool directory could not be read at all.
    Unreadable(String),
}

/// Result of a read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRead {
    pub data: Vec<u8>,
    pub generation: u64,
    /// Copies that were missing, stale or corrupt and have been rewritten.
    pub repaired: Vec<PathBuf>,
    /// Copies that needed repair but could not be rewritten.
    pub repair_failed: Vec<(PathBuf, String)>,
}

/// Result of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    pub generation: u64,
    pub written: Vec<PathBuf>,
    pub failed: Vec<(PathBuf, String)>,
}

/// Replicated small-blob store over a set of directories (one per online pool).
#[derive(Debug)]
pub struct StateHome {
    dirs: Vec<PathBuf>,
    lock: Mutex<()>,
}

fn check_key(key: &str) -> Result<()> {
    crate::check_name(key)
}

impl StateHome {
    /// A state home over these directories (created on first write).
    pub fn new(dirs: Vec<PathBuf>) -> Self {
        StateHome {
            dirs,
            lock: Mutex::new(()),
        }
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.dirs
    }

    fn read_copy(&self, dir: &Path, key: &str) -> (CopyState, Option<Vec<u8>>) {
        let p = dir.join(key);
        match fs::read(&p) {
            Ok(b) => match decode(&b) {
                Ok((generation, payload)) => {
                    (CopyState::Valid { generation }, Some(payload.to_vec()))
                }
                Err(why) => (CopyState::Corrupt(why), None),
            },
            Err(e) if e.kind() == ErrorKind::NotFound => (CopyState::Missing, None),
            Err(e) => (CopyState::Unreadable(e.to_string()), None),
        }
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

    /// Write a new generation of `key` to every copy. Succeeds if at least one copy was
    /// written; the others are repaired by the next read.
    pub fn write(&self, key: &str, data: &[u8]) -> Result<StateWrite> {
        check_key(key)?;
        if data.len() > MAX_STATE_BYTES {
            return Err(Error::InvalidSize {
                what: format!("state {key}"),
                size: data.len() as u64,
                why: "larger than the state home accepts",
            });
        }
        if self.dirs.is_empty() {
            return Err(Error::NoStateCopy);
        }
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let newest = self
            .dirs
            .iter()
            .filter_map(|d| match self.read_copy(d, key).0 {
                CopyState::Valid { generation } => Some(generation),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        let generation = newest + 1;
        let bytes = encode(generation, data);
        let mut out = StateWrite {
            generation,
            written: Vec::new(),
            failed: Vec::new(),
        };
        let mut first_err = None;
        for d in &self.dirs {
            match atomic_write(d, key, &bytes) {
                Ok(()) => out.written.push(d.join(key)),
                Err(e) => {
                    tracing::warn!(key, copy = %d.display(), error = %e, "state copy not written");
                    out.failed.push((d.join(key), e.to_string()));
                    first_err.get_or_insert(e);
                }
            }
        }
        if out.written.is_empty() {
            return Err(first_err.unwrap_or(Error::NoStateCopy));
        }
        tracing::debug!(key, generation, copies = out.written.len(), "state written");
        Ok(out)
    }

    /// Read the newest valid copy of `key` and repair the others. `Ok(None)` when no copy
    /// exists at all; an error when copies exist but none is valid.
    pub fn read(&self, key: &str) -> Result<Option<StateRead>> {
        check_key(key)?;
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let copies: Vec<(&PathBuf, CopyState, Option<Vec<u8>>)> = self
            .dirs
            .iter()
            .map(|d| {
                let (s, p) = self.read_copy(d, key);
                (d, s, p)
            })
            .collect();
        let best = copies
            .iter()
            .filter_map(|(_, s, p)| match s {
                CopyState::Valid { generation } => Some((*generation, p.as_ref().expect("valid"))),
                _ => None,
            })
            .max_by_key(|(g, _)| *g);
        let Some((generation, data)) = best else {
            if copies
                .iter()
                .any(|(_, s, _)| matches!(s, CopyState::Corrupt(_)))
            {
                return Err(Error::StateUnreadable {
                    key: key.to_string(),
                    copies: copies.len(),
                });
            }
            return Ok(None);
        };
        let data = data.clone();
        let bytes = encode(generation, &data);
        let mut out = StateRead {
            data,
            generation,
            repaired: Vec::new(),
            repair_failed: Vec::new(),
        };
        for (d, s, p) in &copies {
            let good = matches!(s, CopyState::Valid { generation: g } if *g == generation)
                && p.as_deref() == Some(&out.data[..]);
            if good {
                continue;
            }
            tracing::warn!(key, copy = %d.display(), state = ?s, generation, "repairing state copy");
            match atomic_write(d, key, &bytes) {
                Ok(()) => out.repaired.push(d.join(key)),
                Err(e) => out.repair_failed.push((d.join(key), e.to_string())),
            }
        }
        Ok(Some(out))
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
        assert_eq!(h.read("identity").unwrap(), None);
        assert_eq!(h.write("identity", b"one").unwrap().generation, 1);
        let w = h.write("identity", b"two").unwrap();
        assert_eq!((w.generation, w.written.len()), (2, 3));
        let r = h.read("identity").unwrap().unwrap();
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
}
