//! Kernel names for the engine's node-wide names (`<contract>.<resource>`).
//!
//! The engine's names are up to 97 bytes; an interface name has 15 and a storage name
//! 64. Kernel names are derived by hashing (deterministic: a restarted zosd derives
//! the same ones) and the reverse mapping is kept in the node state home (key
//! [`NAMES_KEY`]: replicated on every pool, authenticated by the node key), so the
//! inventory can be reported in the engine's names after a reboot. A map that cannot
//! be read (corrupt, forged) is an error, never an empty map: an empty map would make
//! every hashed volume look unknown. A kernel object of ours missing from the map (a
//! crash between creating it and recording it) is reported as `?.<kernel name>`, which
//! no contract owns.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use sha2::{Digest as _, Sha256};
use zos_storage::Storage;

/// A node-wide name for an unmapped kernel object.
pub const UNKNOWN: &str = "?";

/// State home key of the name map.
pub const NAMES_KEY: &str = "names";

pub struct KernelNames {
    storage: Arc<Storage>,
    /// Hex characters of a network id: what `<prefix><id>` leaves of 15 bytes.
    net_len: usize,
    map: Mutex<BTreeMap<String, String>>,
}

/// Hex characters of a hashed name, at most.
const HASH_LEN: usize = 10;

/// `len` lowercase hex characters of sha256(`kind` + name): 10 (40 bits) with the
/// production prefix `n-`, fewer with the longer prefixes of tests.
fn short(kind: &str, name: &str, len: usize) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(name.as_bytes());
    let mut hex = hex::encode(&h.finalize()[..HASH_LEN.div_ceil(2)]);
    hex.truncate(len);
    hex
}

fn parse(what: &str, bytes: &[u8]) -> anyhow::Result<BTreeMap<String, String>> {
    serde_json::from_slice(bytes)
        .with_context(|| format!("the kernel name map ({what}) is corrupt"))
}

impl KernelNames {
    /// The map from the state home. `state_dir`: where zosd kept it before
    /// (`names.json`), imported once when the state home has none. `net_prefix`: the
    /// prefix zos-network puts before a network id in an interface name.
    pub fn open(
        storage: Arc<Storage>,
        state_dir: &Path,
        net_prefix: &str,
    ) -> anyhow::Result<KernelNames> {
        let stored = storage
            .state()
            .read(NAMES_KEY)
            .context("reading the kernel name map")?;
        let map = match stored {
            Some(r) => parse("state home", &r.data)?,
            None => {
                let legacy = state_dir.join("names.json");
                match std::fs::read(&legacy) {
                    Ok(bytes) => {
                        let map = parse(&legacy.display().to_string(), &bytes)?;
                        storage
                            .state()
                            .write(NAMES_KEY, &bytes)
                            .context("moving the kernel name map to the state home")?;
                        tracing::info!(names = map.len(), from = %legacy.display(), "kernel name map moved to the state home");
                        map
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
                    Err(e) => {
                        return Err(e).with_context(|| format!("reading {}", legacy.display()))
                    }
                }
            }
        };
        Ok(KernelNames {
            storage,
            net_len: 15usize.saturating_sub(net_prefix.len()).clamp(4, HASH_LEN),
            map: Mutex::new(map),
        })
    }

    /// The kernel name of node-wide `name` of `kind` ("net", "wl", "vol"), recorded.
    pub fn kernel(&self, kind: &str, name: &str) -> std::io::Result<String> {
        let k = match kind {
            // Storage takes `[A-Za-z0-9._-]` up to 64: most names fit as they are.
            "vol" if name.len() <= 64 => name.to_string(),
            "vol" => format!("h-{}", short(kind, name, HASH_LEN)),
            "net" => short(kind, name, self.net_len),
            _ => short(kind, name, HASH_LEN),
        };
        let mut map = self.map.lock().expect("not poisoned");
        let key = format!("{kind}/{k}");
        if map.get(&key).map(String::as_str) != Some(name) {
            let mut next = map.clone();
            next.insert(key, name.to_string());
            let bytes = serde_json::to_vec(&next).expect("strings serialize");
            // Recorded on every pool before the name is used.
            self.storage
                .state()
                .write(NAMES_KEY, &bytes)
                .map_err(std::io::Error::other)?;
            *map = next;
        }
        Ok(k)
    }

    /// The node-wide name of kernel object `k` of `kind`, or `?.<k>`.
    pub fn node_wide(&self, kind: &str, k: &str) -> String {
        let map = self.map.lock().expect("not poisoned");
        match map.get(&format!("{kind}/{k}")) {
            Some(n) => n.clone(),
            None if kind == "vol" && !k.starts_with("h-") => k.to_string(),
            None => format!("{UNKNOWN}.{k}"),
        }
    }

    /// The kernel name for a node-wide name that may be `?.<k>`.
    pub fn resolve(&self, kind: &str, name: &str) -> std::io::Result<String> {
        match name.strip_prefix("?.") {
            Some(k) => Ok(k.to_string()),
            None => self.kernel(kind, name),
        }
    }
}

/// The workloads' side of the map, as the runtimes ask for it.
impl zos_engine::KernelIds for KernelNames {
    fn kernel_id(&self, name: &str) -> Option<String> {
        self.resolve("wl", name).ok()
    }

    fn workload_name(&self, id: &str) -> String {
        self.node_wide("wl", id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_storage::{Kernel, Pool, PoolKind, PoolStatus};

    /// A storage whose one "pool" is a plain directory: only its state home is used.
    fn storage(dir: &Path) -> Arc<Storage> {
        let pool = Pool {
            label: "p".into(),
            kind: PoolKind::Ssd,
            disk: None,
            device: None,
            mountpoint: dir.join("p"),
            status: PoolStatus::Online,
        };
        Arc::new(Storage::with_pools(Kernel, dir.to_path_buf(), vec![pool]))
    }

    #[test]
    fn names_are_short_stable_and_mapped_back() {
        let dir = tempfile::tempdir().unwrap();
        let names = KernelNames::open(storage(dir.path()), dir.path(), "n-").unwrap();
        let net = names.kernel("net", "crm-acme.net").unwrap();
        assert_eq!(net.len(), 10);
        assert!(net.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(names.kernel("net", "crm-acme.net").unwrap(), net);
        assert_eq!(
            names.kernel("vol", "crm-acme.data").unwrap(),
            "crm-acme.data"
        );
        let long = format!("{}.data", "x".repeat(64));
        let k = names.kernel("vol", &long).unwrap();
        assert!(k.starts_with("h-") && k.len() <= 64);
        // A restarted zosd reads the map back.
        let again = KernelNames::open(storage(dir.path()), dir.path(), "n-").unwrap();
        assert_eq!(again.node_wide("net", &net), "crm-acme.net");
        assert_eq!(again.node_wide("vol", &k), long);
        assert_eq!(again.node_wide("net", "deadbeef00"), "?.deadbeef00");
        assert_eq!(again.resolve("net", "?.deadbeef00").unwrap(), "deadbeef00");
        // A longer prefix (tests) gets shorter ids that still fit in 15 bytes.
        let tests = KernelNames::open(storage(dir.path()), dir.path(), "zt-abcd-").unwrap();
        assert_eq!(tests.kernel("net", "x.net").unwrap().len(), 7);
    }

    #[test]
    fn a_corrupt_map_is_an_error_and_the_old_file_is_imported() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}.data", "y".repeat(64));
        let old = BTreeMap::from([(format!("vol/h-{}", short("vol", &long, 10)), long)]);
        std::fs::write(
            dir.path().join("names.json"),
            serde_json::to_vec(&old).unwrap(),
        )
        .unwrap();
        let names = KernelNames::open(storage(dir.path()), dir.path(), "n-").unwrap();
        let k = format!(
            "h-{}",
            short("vol", &format!("{}.data", "y".repeat(64)), 10)
        );
        assert!(names.node_wide("vol", &k).starts_with("yyy"));
        // The state home's copy is corrupted: an error, not an empty map.
        let copy = dir.path().join("p/zos-state").join(NAMES_KEY);
        std::fs::write(&copy, b"garbage").unwrap();
        let e = KernelNames::open(storage(dir.path()), dir.path(), "n-")
            .err()
            .expect("a corrupt map is refused");
        assert!(format!("{e:#}").contains("name map"), "{e:#}");
    }
}
