//! The agent's configuration, written by PID 1 at every boot from the boot parameters
//! and what it found (the uplink, the disks): `/run/zos/node.toml` (docs/zosd.md),
//! which the agent it supervises reads.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use zos_contract::PublicKey;

use crate::BootParams;

/// Where the agent's configuration is written.
pub const NODE_CONFIG: &str = "/run/zos/node.toml";
/// The node's state directory (its pools are mounted under it).
pub const STATE_DIR: &str = "/var/lib/zos";

/// Why the configuration could not be written.
#[derive(Debug, thiserror::Error)]
pub enum AgentConfigError {
    /// Creating the directory, or writing or renaming the file, failed.
    #[error("{action} {path}")]
    Io {
        /// What was being done, e.g. `writing`.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration path has no parent to create (e.g. `/`).
    #[error("config path {0} has no parent directory")]
    NoParent(PathBuf),
}

/// The agent's node.toml from the boot parameters, the uplink and the disks found at
/// boot; the agent refuses a configuration without any disk, and is restarted with
/// backoff. No notary on the command line leaves `notary` out: the agent says so.
pub fn node_config(params: &BootParams, uplink: &str, disks: &[PathBuf]) -> String {
    node_config_with_keys(params, uplink, disks, &BTreeSet::new())
}

/// [`node_config`] with the release keys the image pins (`/etc/zos/release-keys`,
/// [`crate::slots::pinned_keys`]) as `[release] keys`: the agent then follows its farm's
/// rollout (docs/upgrade.md). No keys: no `[release]` section.
pub fn node_config_with_keys(
    params: &BootParams,
    uplink: &str,
    disks: &[PathBuf],
    release_keys: &BTreeSet<PublicKey>,
) -> String {
    use toml::{Table, Value};
    let mut t = Table::new();
    if let Some(n) = &params.notary {
        t.insert("notary".into(), Value::String(n.clone()));
    }
    if let Some(f) = &params.farm {
        t.insert("farm".into(), Value::String(f.clone()));
    }
    t.insert("state_dir".into(), Value::String(STATE_DIR.into()));
    t.insert("log_format".into(), Value::String("pretty".into()));
    // The status screen (docs/status.md).
    t.insert("console".into(), Value::String("/dev/console".into()));
    // The kernel log (PID 1's lines are in it) goes with the agent's to the farm's log
    // destination (docs/observability.md).
    t.insert("ship_kernel_log".into(), Value::Boolean(true));
    // dir:// flists and stores only from the hypervisor's shares (zos.share=): nothing
    // else of the node is a store.
    let roots = params
        .shares
        .iter()
        .map(|s| Value::String(s.path.clone()))
        .collect();
    t.insert("store_roots".into(), Value::Array(roots));
    let mut storage = Table::new();
    storage.insert(
        "pools_root".into(),
        Value::String(format!("{STATE_DIR}/pools")),
    );
    let disks = disks
        .iter()
        .map(|d| Value::String(d.to_string_lossy().into_owned()))
        .collect();
    storage.insert("disks".into(), Value::Array(disks));
    t.insert("storage".into(), Value::Table(storage));
    let mut network = Table::new();
    network.insert("uplink".into(), Value::String(uplink.into()));
    t.insert("network".into(), Value::Table(network));
    if !release_keys.is_empty() {
        let keys = release_keys
            .iter()
            .map(|k| Value::String(k.to_string()))
            .collect();
        let mut release = Table::new();
        release.insert("keys".into(), Value::Array(keys));
        t.insert("release".into(), Value::Table(release));
    }
    format!(
        "# Written by zosd (PID 1) from the kernel command line at boot (runmode {}); \
         edits are lost at the next boot.\n{}",
        params.runmode,
        toml::to_string(&t).expect("a TOML table serialises")
    )
}

/// Writes [`node_config_with_keys`] to `path` with the image's pinned release keys (none
/// when the image carries no `/etc/zos/release-keys`), whole or not at all (a temporary
/// file renamed).
pub fn write_node_config(
    path: &Path,
    params: &BootParams,
    uplink: &str,
    disks: &[PathBuf],
) -> Result<(), AgentConfigError> {
    if params.notary.is_none() {
        tracing::error!("no zos.notary= on the kernel command line: the agent cannot start");
    }
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| AgentConfigError::Io {
            action,
            path,
            source,
        }
    };
    let dir = path
        .parent()
        .ok_or_else(|| AgentConfigError::NoParent(path.to_path_buf()))?;
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    // /run is a fresh tmpfs: no one to race with, but never leave half a file.
    let tmp = path.with_extension("toml.tmp");
    let pinned = Path::new(crate::slots::RELEASE_KEYS);
    let keys = if pinned.exists() {
        crate::slots::pinned_keys(pinned)
    } else {
        BTreeSet::new()
    };
    let text = node_config_with_keys(params, uplink, disks, &keys);
    std::fs::write(&tmp, text).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming to", path))?;
    tracing::info!(path = %path.display(), %uplink, "agent configuration written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_says_what_the_boot_found() {
        let (params, _) = BootParams::parse(
            "zos.farm=f1 zos.notary=dir:///mnt/notary zos.share=notary:/mnt/notary",
        );
        let text = node_config(&params, "enp1s0", &[PathBuf::from("/dev/vda")]);
        assert!(text.starts_with("# Written by zosd (PID 1)"), "{text}");
        let t: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(t["notary"].as_str(), Some("dir:///mnt/notary"));
        assert_eq!(t["farm"].as_str(), Some("f1"));
        assert_eq!(t["store_roots"].as_array().unwrap().len(), 1);
        assert_eq!(t["store_roots"][0].as_str(), Some("/mnt/notary"));
        assert_eq!(t["network"]["uplink"].as_str(), Some("enp1s0"));
        assert_eq!(t["storage"]["disks"][0].as_str(), Some("/dev/vda"));
    }

    #[test]
    fn the_pinned_release_keys_are_the_agents_release_keys() {
        let (params, _) = BootParams::parse("zos.farm=f1 zos.notary=dir:///mnt/notary");
        let key = zos_contract::SecretKey::from_seed([5; 32]).public();
        let text = node_config_with_keys(&params, "eth0", &[], &[key].into());
        let t: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(
            t["release"]["keys"][0].as_str(),
            Some(key.to_string().as_str())
        );
        assert_eq!(t["release"]["keys"].as_array().unwrap().len(), 1);
        // No keys: no section (the agent follows no rollout).
        let t: toml::Table = toml::from_str(&node_config(&params, "eth0", &[])).unwrap();
        assert!(!t.contains_key("release"));
    }

    #[test]
    fn the_config_is_written_whole_where_asked() {
        let dir = std::env::temp_dir().join(format!("zt-agent-config-{}", std::process::id()));
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _cleanup = Cleanup(dir.clone());
        let path = dir.join("zos/node.toml");
        write_node_config(&path, &BootParams::default(), "eth0", &[]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, node_config(&BootParams::default(), "eth0", &[]));
        assert!(!path.with_extension("toml.tmp").exists());
    }
}
