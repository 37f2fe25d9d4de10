//! Kernel names for the engine's node-wide names (`<contract>.<resource>`).
//!
//! The engine's names are up to 97 bytes; an interface name has 15 and a storage name
//! 64. Kernel names are derived by hashing (deterministic: a restarted zosd derives
//! the same ones) and the reverse mapping is kept in a record of the node state home (zosd keeps it
//! under [`NAMES_KEY`], replicated on every pool, authenticated by the node key), so the
//! inventory can be reported in the engine's names after a reboot. A map that cannot
//! be read (corrupt, forged) is an error, never an empty map: an empty map would make
//! every hashed volume look unknown. A kernel object of ours missing from the map (a
//! crash between creating it and recording it) is reported as `?.<kernel name>`, which
//! no contract owns.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest as _, Sha256};

use crate::journal::JournalStore;
use crate::runtime::KernelIds;

/// A node-wide name for an unmapped kernel object.
pub const UNKNOWN: &str = "?";

/// State home key of the name map.
pub const NAMES_KEY: &str = "names";

/// Why the name map could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum KernelNamesError {
    /// The map's bytes do not parse: refused, never read as empty (docs above).
    #[error("the kernel name map ({what}) is corrupt: {source}")]
    Corrupt {
        /// Where the map was read from.
        what: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// Reading or writing the map failed.
    #[error("the kernel name map: {0}")]
    Io(#[from] std::io::Error),
}

/// The node's map between node-wide names and kernel names. See the module docs.
pub struct KernelNames {
    store: Arc<dyn JournalStore>,
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

fn parse(what: &str, bytes: &[u8]) -> Result<BTreeMap<String, String>, KernelNamesError> {
    serde_json::from_slice(bytes).map_err(|source| KernelNamesError::Corrupt {
        what: what.to_string(),
        source,
    })
}

impl KernelNames {
    /// The map from `store`. `legacy`: a file where an older zosd kept it
    /// (`names.json`), imported once when the store has none. `net_prefix`: the prefix
    /// zos-network puts before a network id in an interface name.
    pub fn open(
        store: Arc<dyn JournalStore>,
        legacy: &Path,
        net_prefix: &str,
    ) -> Result<KernelNames, KernelNamesError> {
        let map = match store.load()? {
            Some(bytes) => parse("state home", &bytes)?,
            None => match std::fs::read(legacy) {
                Ok(bytes) => {
                    let map = parse(&legacy.display().to_string(), &bytes)?;
                    store.save(&bytes)?;
                    tracing::info!(names = map.len(), from = %legacy.display(), "kernel name map moved to the state home");
                    map
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
                Err(e) => return Err(e.into()),
            },
        };
        Ok(KernelNames {
            store,
            net_len: 15usize.saturating_sub(net_prefix.len()).clamp(4, HASH_LEN),
            map: Mutex::new(map),
        })
    }
    /// The kernel name of node-wide `name` of `kind` ("net", "wl", "vol"), recorded.
    pub fn kernel(&self, kind: &str, name: &str) -> std::io::Result<String> {
        let k = self.derive(kind, name);
        let mut map = self.map.lock().expect("not poisoned");
        let key = format!("{kind}/{k}");
        if map.get(&key).map(String::as_str) != Some(name) {
            let mut next = map.clone();
            next.insert(key, name.to_string());
            let bytes = serde_json::to_vec(&next).expect("strings serialize");
            // Recorded on every pool before the name is used.
            self.store.save(&bytes)?;
            *map = next;
        }
        Ok(k)
    }

    /// The kernel name of node-wide `name` of `kind`, derived (the same every time),
    /// not recorded.
    fn derive(&self, kind: &str, name: &str) -> String {
        match kind {
            // Storage takes `[A-Za-z0-9._-]` up to 64: most names fit as they are.
            "vol" if name.len() <= 64 => name.to_string(),
            "vol" => format!("h-{}", short(kind, name, HASH_LEN)),
            "net" => short(kind, name, self.net_len),
            _ => short(kind, name, HASH_LEN),
        }
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
impl KernelIds for KernelNames {
    /// A lookup (the runtimes ask it on every state poll): derived, never written to
    /// the state home. Only making a kernel object records its name ([`Self::kernel`]).
    fn kernel_id(&self, name: &str) -> Option<String> {
        Some(match name.strip_prefix("?.") {
            Some(k) => k.to_string(),
            None => self.derive("wl", name),
        })
    }

    fn workload_name(&self, id: &str) -> String {
        self.node_wide("wl", id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state home record in memory.
    #[derive(Default)]
    struct Memory(Mutex<Option<Vec<u8>>>);

    impl JournalStore for Memory {
        fn load(&self) -> std::io::Result<Option<Vec<u8>>> {
            Ok(self.0.lock().unwrap().clone())
        }
        fn save(&self, bytes: &[u8]) -> std::io::Result<()> {
            *self.0.lock().unwrap() = Some(bytes.to_vec());
            Ok(())
        }
    }

    #[test]
    fn names_are_short_stable_and_mapped_back() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("names.json");
        let store = Arc::new(Memory::default());
        let names = KernelNames::open(store.clone(), &legacy, "n-").unwrap();
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
        let again = KernelNames::open(store.clone(), &legacy, "n-").unwrap();
        assert_eq!(again.node_wide("net", &net), "crm-acme.net");
        assert_eq!(again.node_wide("vol", &k), long);
        assert_eq!(again.node_wide("net", "deadbeef00"), "?.deadbeef00");
        assert_eq!(again.resolve("net", "?.deadbeef00").unwrap(), "deadbeef00");
        assert_eq!(again.kernel_id("?.abc").as_deref(), Some("abc"));
        // Asking is not recording: the state home is not written for a lookup.
        let written = store.load().unwrap();
        let id = again.kernel_id("never.made").unwrap();
        assert_eq!(store.load().unwrap(), written);
        assert_eq!(again.kernel("wl", "never.made").unwrap(), id);
        // A longer prefix (tests) gets shorter ids that still fit in 15 bytes.
        let tests = KernelNames::open(store, &legacy, "zt-abcd-").unwrap();
        assert_eq!(tests.kernel("net", "x.net").unwrap().len(), 7);
    }

    #[test]
    fn a_corrupt_map_is_an_error_and_the_old_file_is_imported() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("names.json");
        let long = format!("{}.data", "y".repeat(64));
        let k = format!("h-{}", short("vol", &long, 10));
        let old = BTreeMap::from([(format!("vol/{k}"), long)]);
        std::fs::write(&legacy, serde_json::to_vec(&old).unwrap()).unwrap();
        let store = Arc::new(Memory::default());
        let names = KernelNames::open(store.clone(), &legacy, "n-").unwrap();
        assert!(names.node_wide("vol", &k).starts_with("yyy"));
        assert!(store.load().unwrap().is_some(), "imported into the store");
        // The state home's copy is corrupted: an error, not an empty map.
        store.save(b"garbage").unwrap();
        let e = KernelNames::open(store, &legacy, "n-")
            .err()
            .expect("a corrupt map is refused");
        assert!(matches!(e, KernelNamesError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains("name map"), "{e}");
    }
}
