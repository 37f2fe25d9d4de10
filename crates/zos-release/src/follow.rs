//! One look at the farm's rollout, as the agent takes it (docs/upgrade.md): the
//! rollout (`rollouts/<farm>`, signed by the farm's farmer), this node's wave and the
//! previous wave's health, then the release (`releases/<version>`) verified, installed
//! and the switch asked of PID 1 ([`crate::agent::upgrade`]). Every attempt's outcome is
//! published, signed by the node, at `nodes/<node>/upgrade`; a refusal changes nothing
//! else.
//!
//! A node of the previous wave counts as upgraded when its registration names the
//! rollout's version, its heartbeat is in the notary, and its rollback record (if any)
//! is not about that version. A rollback from the rollout's version anywhere in the
//! farm halts it for every node that does not run that version yet, the one that rolled
//! back included: it does not try that version again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use zos_contract::{PublicKey, SecretKey};
use zos_flist::DirAccess;
use zos_notary::{KeyPrefix, Notary, NotaryError, NotaryKey, Record};
use zos_registry::{Farm, Registration};

use crate::agent::{plan, upgrade, Plan, Reported, UpgradeReport};
use crate::rollout::SignedRollout;
use crate::version::Version;

/// What one look decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The farm has no rollout.
    NoRollout,
    /// The rollout is refused (its code: `unsigned`, `not_farmer`, `bad_signature`,
    /// `malformed`): ignored.
    RolloutRefused(String),
    /// Nothing to do: the node runs the rollout's version or a later one.
    UpToDate,
    /// This node's wave waits for the previous wave.
    Wait {
        /// This node's wave.
        wave: usize,
        /// The previous wave's nodes not yet upgraded and healthy.
        waiting_for: Vec<PublicKey>,
    },
    /// These nodes rolled back from the rollout's version: nobody goes to it (a new
    /// rollout, of another version, moves on). Nothing is written.
    Halted {
        /// The nodes whose rollback record is about the rollout's version.
        rolled_back: Vec<PublicKey>,
    },
    /// The release was refused (published at `nodes/<node>/upgrade`): nothing changed.
    Refused(UpgradeReport),
    /// Installed; the switch is asked of PID 1 (`slots/switch` written): the agent exits
    /// with `SWITCH_EXIT_CODE` under PID 1.
    Switch(Version),
}

/// What the look needs.
pub struct Follow<'a> {
    /// The farm.
    pub farm: &'a str,
    /// The node's key (signs its upgrade record).
    pub node: &'a SecretKey,
    /// The version it runs.
    pub running: Version,
    /// The release keys its image pins.
    pub pinned: &'a BTreeSet<PublicKey>,
    /// Where a part's `dir://` URLs may read.
    pub access: &'a DirAccess,
    /// The slots directory.
    pub slots: &'a Path,
    /// At most this many bytes per part.
    pub max_bytes: u64,
}

impl Follow<'_> {
    /// One look. Errors are the notary's (unreachable, a corrupt record): try later.
    pub async fn step<N: Notary>(&self, notary: &N) -> Result<Step, NotaryError> {
        let Some(farm) = notary.get(&key(NotaryKey::farm(self.farm))?).await? else {
            return Ok(Step::NoRollout);
        };
        let Ok(farm) = Farm::from_record(&farm) else {
            return Ok(Step::NoRollout);
        };
        let Some(record) = notary.get(&key(NotaryKey::rollout(self.farm))?).await? else {
            return Ok(Step::NoRollout);
        };
        let bytes = serde_json::to_vec(&record.body).expect("a JSON value serializes");
        let rollout = match SignedRollout::from_bytes(&bytes, &zos_contract::Limits::default()) {
            Ok(r) => r,
            Err(_) => return Ok(Step::RolloutRefused("malformed".into())),
        };
        let rollout = match rollout.verify(self.farm, &farm.farmer) {
            Ok(r) => r.clone(),
            Err(e) => return Ok(Step::RolloutRefused(e.code().into())),
        };
        let me = self.node.public();
        let (reported, rolled_back) = self.farm_nodes(notary, &rollout.version).await?;
        match plan(&rollout, &me, &self.running, &reported) {
            Plan::UpToDate => return Ok(Step::UpToDate),
            _ if !rolled_back.is_empty() => return Ok(Step::Halted { rolled_back }),
            Plan::Wait { wave, waiting_for } => return Ok(Step::Wait { wave, waiting_for }),
            Plan::Upgrade(_) => {}
        }
        let version = rollout.version.to_string();
        let report = match notary.get(&key(NotaryKey::release(&version))?).await? {
            None => UpgradeReport::Refused {
                version: version.clone(),
                code: "no_release".into(),
                message: format!("releases/{version} is not in the notary"),
            },
            Some(release) => self.install(&release, &rollout.version),
        };
        self.publish(notary, &report).await?;
        Ok(match report {
            UpgradeReport::Switching { .. } => Step::Switch(rollout.version),
            refused => Step::Refused(refused),
        })
    }

    fn install(&self, release: &Record, target: &Version) -> UpgradeReport {
        let claimed = release.body["release"]["version"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        if claimed != target.to_string() {
            return UpgradeReport::Refused {
                version: claimed.clone(),
                code: "version_mismatch".into(),
                message: format!("releases/{target} holds the release of {claimed}"),
            };
        }
        let bytes = serde_json::to_vec(&release.body).expect("a JSON value serializes");
        match upgrade(
            &bytes,
            self.pinned,
            &self.running,
            self.access,
            self.slots,
            self.max_bytes,
        ) {
            Ok(v) => UpgradeReport::Switching {
                version: v.to_string(),
            },
            Err(e) => UpgradeReport::Refused {
                version: claimed,
                code: e.code().into(),
                message: e.to_string(),
            },
        }
    }

    async fn publish<N: Notary>(
        &self,
        notary: &N,
        report: &UpgradeReport,
    ) -> Result<(), NotaryError> {
        let body = serde_json::to_value(report).expect("a report serializes");
        match Record::sign(&NotaryKey::upgrade(&self.node.public()), body, self.node) {
            Ok(r) => notary.put(&r).await,
            Err(error) => {
                tracing::error!(%error, "signing the upgrade record");
                Ok(())
            }
        }
    }

    /// The farm's registered nodes and what they report for `target`, and those that
    /// rolled back from it.
    async fn farm_nodes<N: Notary>(
        &self,
        notary: &N,
        target: &Version,
    ) -> Result<(BTreeMap<PublicKey, Reported>, Vec<PublicKey>), NotaryError> {
        let mut out = BTreeMap::new();
        let mut halted_by = Vec::new();
        for r in notary.list(&KeyPrefix::nodes()).await? {
            let Ok((node, reg)) = Registration::from_record(&r) else {
                continue;
            };
            if reg.farm != self.farm {
                continue;
            }
            let version: Option<Version> = reg.version.parse().ok();
            let beating = notary
                .get(&NotaryKey::heartbeat(&node))
                .await?
                .is_some_and(|h| h.author == node);
            let rolled_back = notary
                .get(&NotaryKey::rollback(&node))
                .await?
                .is_some_and(|b| {
                    b.author == node
                        && b.body["rollback"]["version"].as_str() == Some(&target.to_string())
                });
            if rolled_back {
                halted_by.push(node);
            }
            out.insert(
                node,
                Reported {
                    version,
                    healthy: beating && !rolled_back,
                },
            );
        }
        Ok((out, halted_by))
    }
}

fn key(k: Result<NotaryKey, zos_notary::KeyError>) -> Result<NotaryKey, NotaryError> {
    k.map_err(NotaryError::from)
}
