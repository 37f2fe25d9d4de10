//! The agent's side of an upgrade (docs/upgrade.md, "On the node"): whether the farm's
//! rollout lets this node go now ([`plan`]), the release installed into a slot and the
//! switch asked of PID 1 ([`upgrade`]), the health mark a new agent writes once it
//! proved itself ([`mark_healthy`]), and the outcome the node publishes
//! ([`UpgradeReport`], at `nodes/<node>/upgrade`).
//!
//! The protocol with PID 1 (zos-init's `slots`) is three files in the slots directory
//! and one exit code: the agent writes the version to [`SWITCH_REQUEST`] and exits with
//! [`SWITCH_EXIT_CODE`]; the new agent writes its version to [`HEALTH_MARK`]; PID 1
//! keeps its decision in `state.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use serde::Serialize;
use zos_contract::PublicKey;
use zos_flist::DirAccess;

use crate::rollout::{may_upgrade, wave_of, Health, Rollout};
use crate::slot::{install_release, InstallError};
use crate::version::Version;

/// The exit code by which the agent asks PID 1 for the switch written in
/// [`SWITCH_REQUEST`]: outside the codes std, clap and shells use (0, 1, 2, 101,
/// 126-165).
pub const SWITCH_EXIT_CODE: i32 = 90;
/// `<slots>/switch`: the version the agent asks PID 1 to switch to.
pub const SWITCH_REQUEST: &str = "switch";
/// `<slots>/health`: the version of an agent that is registered, serving and has sent
/// its first heartbeat.
pub const HEALTH_MARK: &str = "health";

/// What the rollout means for this node now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// The node runs the rollout's version (or a later one): nothing to do.
    UpToDate,
    /// Its wave may go: fetch, verify and install this version.
    Upgrade(Version),
    /// Its wave waits for these nodes of the previous wave to report the version
    /// healthy.
    Wait {
        /// This node's wave (0-based).
        wave: usize,
        /// The previous wave's nodes not yet upgraded and healthy.
        waiting_for: Vec<PublicKey>,
    },
}

/// What one of the farm's nodes reports in its heartbeat: its version (`None`: no
/// heartbeat or an unreadable version) and whether it is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    /// The version it runs.
    pub version: Option<Version>,
    /// Healthy.
    pub healthy: bool,
}

/// This node's plan under `rollout` (verified by the caller: `SignedRollout::verify`),
/// running `running`, among the farm's nodes and what each reports (`farm`, this node
/// included). A rollout to the running version is nothing to do. A rollout to a lower
/// one is planned like any other: the release decides, refused `downgrade` unless the
/// release key signed it as a rollback, and the refusal is published where the farmer
/// sees it.
pub fn plan(
    rollout: &Rollout,
    me: &PublicKey,
    running: &Version,
    farm: &BTreeMap<PublicKey, Reported>,
) -> Plan {
    if rollout.version == *running {
        return Plan::UpToDate;
    }
    let mut nodes: Vec<PublicKey> = farm.keys().copied().collect();
    if !farm.contains_key(me) {
        nodes.push(*me);
        nodes.sort();
    }
    let wave = wave_of(me, &nodes, &rollout.waves);
    if wave == 0 {
        return Plan::Upgrade(rollout.version);
    }
    let previous: Vec<(PublicKey, Health)> = nodes
        .iter()
        .filter(|n| wave_of(n, &nodes, &rollout.waves) == wave - 1)
        .map(|n| {
            let r = farm.get(n);
            let health = Health::of(
                r.and_then(|r| r.version.as_ref()),
                r.is_some_and(|r| r.healthy),
                &rollout.version,
            );
            (*n, health)
        })
        .collect();
    let health: Vec<Health> = previous.iter().map(|(_, h)| *h).collect();
    if may_upgrade(wave, &health) {
        Plan::Upgrade(rollout.version)
    } else {
        Plan::Wait {
            wave,
            waiting_for: previous
                .into_iter()
                .filter(|(_, h)| *h != Health::Upgraded)
                .map(|(n, _)| n)
                .collect(),
        }
    }
}

/// What the node publishes about an upgrade attempt (`nodes/<node>/upgrade`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum UpgradeReport {
    /// The release was refused (or a part could not be fetched): nothing changed.
    Refused {
        /// The version the record claims (as written; may be unreadable).
        version: String,
        /// The stable code (`unsigned`, `unknown_key`, `bad_signature`, `downgrade`,
        /// `same_version`, `malformed`, `tampered_part`, …).
        code: String,
        /// The message.
        message: String,
    },
    /// Installed in its slot; PID 1 was asked to switch.
    Switching {
        /// The version.
        version: String,
    },
}

/// Why [`upgrade`] did not end in a switch request.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The release or a part was refused: nothing was written.
    #[error(transparent)]
    Install(#[from] InstallError),
    /// The slot is installed but the request could not be written.
    #[error("writing the switch request {path}: {source}")]
    Request {
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl UpgradeError {
    /// The stable code: the install's, or `switch_request`.
    pub fn code(&self) -> &'static str {
        match self {
            UpgradeError::Install(e) => e.code(),
            UpgradeError::Request { .. } => "switch_request",
        }
    }
}

/// The release record `record` verified and installed into `slots/<version>`
/// (zos-release's `install_release`, with all its refusals), then the switch asked of
/// PID 1: the version written to `slots/switch`. A refusal writes nothing: no slot, no
/// request. The caller then exits with [`SWITCH_EXIT_CODE`] (under PID 1), or reports
/// that no switch is available (agent mode).
pub fn upgrade(
    record: &[u8],
    pinned_keys: &BTreeSet<PublicKey>,
    running: &Version,
    access: &DirAccess,
    slots: &Path,
    max_bytes: u64,
) -> Result<Version, UpgradeError> {
    let installed = install_release(record, pinned_keys, running, access, slots, max_bytes)?;
    let version = installed.release.version;
    request_switch(slots, &version.to_string())?;
    Ok(version)
}

/// Writes `version` to `slots/switch` (temporary file, fsync, rename).
pub fn request_switch(slots: &Path, version: &str) -> Result<(), UpgradeError> {
    write_atomic(slots, SWITCH_REQUEST, version).map_err(|source| UpgradeError::Request {
        path: slots.join(SWITCH_REQUEST),
        source,
    })
}

/// Writes `version` to `slots/health`: the agent running from slot `version` is
/// registered, serving and has sent its first heartbeat.
pub fn mark_healthy(slots: &Path, version: &str) -> std::io::Result<()> {
    write_atomic(slots, HEALTH_MARK, version)
}

fn write_atomic(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::Wave;
    use zos_contract::SecretKey;

    fn farm(n: u8) -> Vec<PublicKey> {
        let mut v: Vec<PublicKey> = (0..n)
            .map(|i| SecretKey::from_seed([i + 1; 32]).public())
            .collect();
        v.sort();
        v
    }

    fn rollout(version: &str, waves: Vec<Wave>) -> Rollout {
        Rollout {
            farm: "f1".into(),
            version: version.parse().unwrap(),
            waves,
            issued_at: 1,
            farmer: SecretKey::from_seed([9; 32]).public(),
        }
    }

    fn reports(
        nodes: &[PublicKey],
        version: &str,
        healthy: &[bool],
    ) -> BTreeMap<PublicKey, Reported> {
        nodes
            .iter()
            .zip(healthy)
            .map(|(n, h)| {
                (
                    *n,
                    Reported {
                        version: Some(version.parse().unwrap()),
                        healthy: *h,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn wave_two_waits_for_wave_one_to_report_the_version_healthy() {
        let nodes = farm(3);
        let r = rollout(
            "0.2.0",
            vec![Wave::Percent(10), Wave::Percent(50), Wave::Percent(100)],
        );
        let v1: Version = "0.1.0".parse().unwrap();
        let old = reports(&nodes, "0.1.0", &[true, true, true]);
        assert_eq!(
            plan(&r, &nodes[0], &v1, &old),
            Plan::Upgrade("0.2.0".parse().unwrap())
        );
        assert_eq!(
            plan(&r, &nodes[1], &v1, &old),
            Plan::Wait {
                wave: 1,
                waiting_for: vec![nodes[0]]
            }
        );
        // Node 0 upgraded but unhealthy (e.g. rolled back and reporting it): still waits.
        let mut now = old.clone();
        now.insert(
            nodes[0],
            Reported {
                version: Some("0.2.0".parse().unwrap()),
                healthy: false,
            },
        );
        assert!(matches!(plan(&r, &nodes[1], &v1, &now), Plan::Wait { .. }));
        now.get_mut(&nodes[0]).unwrap().healthy = true;
        assert_eq!(
            plan(&r, &nodes[1], &v1, &now),
            Plan::Upgrade("0.2.0".parse().unwrap())
        );
        assert_eq!(
            plan(&r, &nodes[2], &v1, &now),
            Plan::Wait {
                wave: 2,
                waiting_for: vec![nodes[1]]
            }
        );
    }

    #[test]
    fn a_rollout_to_the_running_version_is_nothing_and_below_it_goes_to_the_release() {
        let nodes = farm(2);
        let all = reports(&nodes, "0.2.0", &[true, true]);
        let r = rollout("0.2.0", vec![Wave::Percent(100)]);
        assert_eq!(
            plan(&r, &nodes[0], &"0.2.0".parse().unwrap(), &all),
            Plan::UpToDate
        );
        // The release refuses it (`downgrade`) unless it is signed as a rollback.
        assert_eq!(
            plan(&r, &nodes[0], &"0.3.0".parse().unwrap(), &all),
            Plan::Upgrade("0.2.0".parse().unwrap())
        );
    }

    #[test]
    fn a_node_without_a_heartbeat_holds_the_next_wave() {
        let nodes = farm(2);
        let r = rollout("0.2.0", vec![Wave::Nodes(vec![nodes[1]])]);
        // nodes[0] is in the implicit last wave; nodes[1] never reported.
        let only_me = reports(&nodes[..1], "0.1.0", &[true]);
        assert_eq!(
            plan(&r, &nodes[0], &"0.1.0".parse().unwrap(), &only_me),
            Plan::Upgrade("0.2.0".parse().unwrap()),
            "nodes[1] is not in the farm's list: its wave is empty"
        );
        let mut both = only_me.clone();
        both.insert(
            nodes[1],
            Reported {
                version: None,
                healthy: false,
            },
        );
        assert_eq!(
            plan(&r, &nodes[0], &"0.1.0".parse().unwrap(), &both),
            Plan::Wait {
                wave: 1,
                waiting_for: vec![nodes[1]]
            }
        );
    }

    #[test]
    fn the_report_is_tagged_by_outcome() {
        let r = UpgradeReport::Refused {
            version: "0.2.0".into(),
            code: "unknown_key".into(),
            message: "m".into(),
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"outcome": "refused", "version": "0.2.0", "code": "unknown_key", "message": "m"})
        );
    }
}
