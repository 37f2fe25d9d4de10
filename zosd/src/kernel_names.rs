//! Kernel names for the engine's node-wide names (`<contract>.<resource>`).
//!
//! The engine's names are up to 97 bytes; an interface name has 15 and a storage name
//! 64. Kernel names are derived by hashing (deterministic: a restarted zosd derives
//! the same ones) and the reverse mapping is kept in `<state>/names.json`, so the
//! inventory can be reported in the engine's names. A kernel object of ours missing
//! from the map (a crash between creating it and recording it) is reported as
//! `?.<kernel name>`, which no contract owns, so the engine removes it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest as _, Sha256};

/// A node-wide name for an unmapped kernel object.
pub const UNKNOWN: &str = "?";

pub struct KernelNames {
    path: PathBuf,
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

impl KernelNames {
    /// `net_prefix`: the prefix zos-network puts before a network id in an interface
    /// name.
    pub fn open(state: &Path, net_prefix: &str) -> KernelNames {
        let path = state.join("names.json");
        let map = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        KernelNames {
            path,
            net_len: 15usize.saturating_sub(net_prefix.len()).clamp(4, HASH_LEN),
            map: Mutex::new(map),
        }
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
        if map.get(&format!("{kind}/{k}")).map(String::as_str) != Some(name) {
            map.insert(format!("{kind}/{k}"), name.to_string());
            let bytes = serde_json::to_vec(&*map).expect("strings serialize");
            crate::rootfs::write_atomic(&self.path, &bytes)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_stable_and_mapped_back() {
        let dir = tempfile::tempdir().unwrap();
        let names = KernelNames::open(dir.path(), "n-");
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
        let again = KernelNames::open(dir.path(), "n-");
        assert_eq!(again.node_wide("net", &net), "crm-acme.net");
        assert_eq!(again.node_wide("vol", &k), long);
        assert_eq!(again.node_wide("net", "deadbeef00"), "?.deadbeef00");
        assert_eq!(again.resolve("net", "?.deadbeef00").unwrap(), "deadbeef00");
        // A longer prefix (tests) gets shorter ids that still fit in 15 bytes.
        let tests = KernelNames::open(dir.path(), "zt-abcd-");
        assert_eq!(tests.kernel("net", "x.net").unwrap().len(), 7);
    }
}
