//! The journal: what this node owns and has accepted, written through on every change.
//!
//! It is the engine's memory across a crash or a power cut: which contract versions
//! were accepted (so an older one is a replay, even after a reboot), what each one's
//! deployment is (so it can be torn down without asking the notary, which may be
//! gone), and how each contract stands. Kernel objects are found again by name
//! ([`crate::names`]); the journal says which of them are still wanted.
//!
//! Storage is behind [`JournalStore`]: zosd keeps it in the node state home (replicated
//! on every pool); [`FileJournal`] is one file, written temp + fsync + rename.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zos_contract::{Deployment, Digest, Placement, PublicKey, SignedCancellation, Signers};

/// Where the journal's bytes live. Writes must be atomic: after a crash, `load`
/// returns either the previous or the new bytes.
pub trait JournalStore: Send + Sync {
    /// The bytes last saved; `None` when nothing was ever saved.
    fn load(&self) -> io::Result<Option<Vec<u8>>>;
    /// Replaces the stored bytes with `bytes`, atomically (see the trait docs).
    fn save(&self, bytes: &[u8]) -> io::Result<()>;
}

/// How a contract the node accepted stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    /// Being created; a crash here means "finish creating it".
    Provisioning,
    /// All its resources were created; supervision keeps its workloads up.
    Running,
    /// Provisioning failed for good (e.g. a tampered flist); retried on a new version.
    Failed {
        /// The error that failed it, as published in its status.
        message: String,
    },
}

impl Phase {
    /// The transition table of a contract's phase (model: zinit's
    /// `State::can_transition_to`). `Provisioning` is where every version starts
    /// (admission writes a new version in it, whatever the previous one's phase);
    /// from there:
    ///
    /// | from → to| Provisioning | Running | Failed |
    /// |---|---|---|---|
    /// | Provisioning | yes (retry)  | yes     | yes    |
    /// | Running      | yes (update) | yes (re-adopted) | yes (re-adoption failed for good) |
    /// | Failed       | yes (a new version) | **no** | **no** |
    ///
    /// A failed contract runs nothing until its owner publishes a new version: a late
    /// outcome of a provisioning that was cut short cannot make it `Running`.
    pub fn can_transition_to(&self, next: &Phase) -> bool {
        match (self, next) {
            (_, Phase::Provisioning) => true,
            (Phase::Provisioning | Phase::Running, Phase::Running | Phase::Failed { .. }) => true,
            (Phase::Failed { .. }, Phase::Running | Phase::Failed { .. }) => false,
        }
    }

    /// The phase's name in the journal.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Provisioning => "provisioning",
            Phase::Running => "running",
            Phase::Failed { .. } => "failed",
        }
    }
}

/// A contract this node accepted and owns resources for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    /// The contract id.
    pub id: String,
    /// The accepted version.
    pub version: u64,
    /// The accepted document's digest: a re-delivery with another digest at the same
    /// version is refused.
    pub digest: Digest,
    /// The contract's owner: who may cancel it.
    pub owner: PublicKey,
    /// Unix seconds from which the contract is expired; `None`: it does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
    /// What the contract deploys: workloads, networks, volumes.
    pub deployment: Deployment,
    /// How it stands.
    #[serde(flatten)]
    pub phase: Phase,
    /// Restarts per workload (resource name), for the status record.
    #[serde(default)]
    pub restarts: BTreeMap<String, u32>,
    /// The owner, stakeholders and threshold of this version: what an update must
    /// satisfy ([`zos_contract::check_update`]). Absent in a journal written before
    /// they were kept: such a contract takes no update (its owner cancels and
    /// publishes again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signers: Option<Signers>,
    /// For a placement contract: the replica this node runs, at which epoch, under
    /// which placement (docs/grid.md); `None` for a contract that names its nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<Held>,
}

/// The replica of a placement contract a node runs, from the assignment it admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Held {
    /// The replica number.
    pub replica: u64,
    /// The assignment's epoch.
    pub epoch: u64,
    /// The contract's placement: its orchestrator (who may say the replica moved) and
    /// its failover rule (whether the node fences it).
    pub placement: Placement,
}

impl Held {
    /// Whether the node stops this replica by itself when its liveness lapses: only
    /// `move` replicas are started elsewhere, so only they could run twice.
    pub fn fences(&self) -> bool {
        self.placement.failover.mode == zos_contract::FailoverMode::Move
    }
}

/// An expired contract whose workloads and networks are gone and whose volumes wait
/// out the grace period ([`crate::EngineConfig::volume_grace`]) for their owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retired {
    /// The contract as it ran (its volumes, its owner and signers).
    pub owned: Owned,
    /// Unix seconds from which its volumes are deleted.
    pub volumes_until: u64,
}

/// The journal's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalData {
    /// Contracts the node owns resources for, by id.
    #[serde(default)]
    pub owned: BTreeMap<String, Owned>,
    /// The highest version accepted or cancelled per contract id, with the digest of
    /// that version: verification refuses anything older (replay), also after the
    /// contract is gone.
    #[serde(default)]
    pub accepted: BTreeMap<String, (u64, Digest)>,
    /// Expired contracts whose volumes are kept for the grace period, by id. Their id
    /// is still theirs: only their owner's next version (or cancellation) touches it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub retired: BTreeMap<String, Retired>,
    /// Owner-signed cancellations of contracts this node did not run (yet), by id, at
    /// most one per owner (the highest version): a version of that owner's contract
    /// that is not above it is refused (`cancelled`), so a notary cannot serve the
    /// cancelled version later and get it deployed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tombstones: BTreeMap<String, Vec<SignedCancellation>>,
    /// Volumes found on the machine that no journalled contract names: never deleted
    /// on sight (they hold someone's data), never handed to a contract.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub quarantined: BTreeSet<String>,
    /// Volumes whose deletion was authorised (an owner's cancellation, the end of a
    /// grace period) but failed: the orphan collection of the next start removes them.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub doomed: BTreeSet<String>,
    /// The highest assignment epoch seen per placement contract and replica (at this
    /// node or, from the orchestrator's placement record, elsewhere): an assignment
    /// below it is a replay (`stale_epoch`), also after a restart.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub epochs: BTreeMap<String, BTreeMap<u64, u64>>,
    /// The signed `nodes` of each owned contract that names more than one, in order: a
    /// node's position there is its slot on the contract's networks (docs/network.md,
    /// "Mesh"), so a restart lays them out as before.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<String, Vec<PublicKey>>,
}

impl JournalData {
    /// The highest epoch seen for replica `replica` of contract `id` (0: none).
    pub fn highest_epoch(&self, id: &str, replica: u64) -> u64 {
        self.epochs
            .get(id)
            .and_then(|e| e.get(&replica))
            .copied()
            .unwrap_or(0)
    }

    /// Records `epoch` as seen for replica `replica` of `id` (the highest is kept).
    pub fn see_epoch(&mut self, id: &str, replica: u64, epoch: u64) {
        let seen = self.epochs.entry(id.to_string()).or_default();
        let e = seen.entry(replica).or_insert(0);
        *e = (*e).max(epoch);
    }
}

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The store could not load or save.
    #[error("journal storage: {0}")]
    Io(#[from] io::Error),
    /// The stored bytes are not a journal.
    #[error("journal is corrupt: {0}")]
    Corrupt(#[from] serde_json::Error),
    /// A phase change the transition table ([`Phase::can_transition_to`]) forbids.
    #[error("contract {contract}: no transition from {from} to {to}")]
    IllegalTransition {
        /// The contract id.
        contract: String,
        /// The phase it is in ([`Phase::name`]).
        from: &'static str,
        /// The phase asked for.
        to: &'static str,
    },
}

/// The journal and its store: every mutation is written before it returns.
pub struct Journal<S: JournalStore> {
    data: JournalData,
    store: S,
}

impl<S: JournalStore> Journal<S> {
    /// Loads the journal, or starts an empty one when the store has none. A corrupt
    /// journal is an error, not an empty journal: forgetting what the node owns would
    /// orphan running workloads and re-open replays.
    pub fn open(store: S) -> Result<Self, JournalError> {
        let data = match store.load()? {
            Some(bytes) => serde_json::from_slice(&bytes)?,
            None => JournalData::default(),
        };
        Ok(Journal { data, store })
    }

    /// Everything the journal holds, as last written.
    pub fn data(&self) -> &JournalData {
        &self.data
    }

    /// The contract `id` the node owns; `None` when it owns none by that id.
    pub fn owned(&self, id: &str) -> Option<&Owned> {
        self.data.owned.get(id)
    }

    /// Applies `change` and writes the result through. On a write error the change is
    /// undone in memory too, so memory never claims what the disk does not hold.
    pub fn update<T>(
        &mut self,
        change: impl FnOnce(&mut JournalData) -> T,
    ) -> Result<T, JournalError> {
        let before = self.data.clone();
        let out = change(&mut self.data);
        if self.data == before {
            return Ok(out);
        }
        let bytes = serde_json::to_vec(&self.data)?;
        if let Err(e) = self.store.save(&bytes) {
            self.data = before;
            return Err(e.into());
        }
        Ok(out)
    }
}

impl<S: JournalStore> Journal<S> {
    /// Moves owned contract `id` to `phase` if the transition table allows it
    /// (unchanged when it already is there; nothing when `id` is not owned).
    pub fn set_phase(&mut self, id: &str, phase: Phase) -> Result<(), JournalError> {
        let Some(from) = self.data.owned.get(id).map(|o| &o.phase) else {
            return Ok(());
        };
        if *from == phase {
            return Ok(());
        }
        if !from.can_transition_to(&phase) {
            return Err(JournalError::IllegalTransition {
                contract: id.to_string(),
                from: from.name(),
                to: phase.name(),
            });
        }
        self.update(|j| {
            if let Some(o) = j.owned.get_mut(id) {
                o.phase = phase;
            }
        })
    }
}

/// A journal in one file, replaced atomically.
#[derive(Debug, Clone)]
pub struct FileJournal {
    path: PathBuf,
}

impl FileJournal {
    /// The journal at `path`; the file need not exist yet (an empty journal).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileJournal { path: path.into() }
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl JournalStore for FileJournal {
    fn load(&self) -> io::Result<Option<Vec<u8>>> {
        match fs::read(&self.path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn save(&self, bytes: &[u8]) -> io::Result<()> {
        let dir = self
            .path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(dir)?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            self.path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "journal".into())
        ));
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &self.path)?;
        File::open(dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_is_undone_in_memory() {
        struct Failing;
        impl JournalStore for Failing {
            fn load(&self) -> io::Result<Option<Vec<u8>>> {
                Ok(None)
            }
            fn save(&self, _: &[u8]) -> io::Result<()> {
                Err(io::Error::other("disk gone"))
            }
        }
        let mut j = Journal::open(Failing).unwrap();
        let err = j.update(|d| {
            d.accepted.insert("c".into(), (1, Digest::of(b"x")));
        });
        assert!(matches!(err, Err(JournalError::Io(_))));
        assert!(j.data().accepted.is_empty());
    }

    #[test]
    fn phase_changes_follow_the_transition_table() {
        let failed = || Phase::Failed {
            message: "tampered".into(),
        };
        let all = [Phase::Provisioning, Phase::Running, failed()];
        let allowed: Vec<(&str, &str)> = all
            .iter()
            .flat_map(|a| all.iter().map(move |b| (a, b)))
            .filter(|(a, b)| a.can_transition_to(b))
            .map(|(a, b)| (a.name(), b.name()))
            .collect();
        assert_eq!(
            allowed,
            [
                ("provisioning", "provisioning"),
                ("provisioning", "running"),
                ("provisioning", "failed"),
                ("running", "provisioning"),
                ("running", "running"),
                ("running", "failed"),
                ("failed", "provisioning"),
            ]
        );

        // Through the journal: an illegal change is a typed error and writes nothing.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.json");
        let mut j = Journal::open(FileJournal::new(&path)).unwrap();
        let owner = zos_contract::SecretKey::from_seed([2; 32]).public();
        j.update(|d| {
            d.owned.insert(
                "c".into(),
                Owned {
                    id: "c".into(),
                    version: 1,
                    digest: Digest::of(b"x"),
                    owner,
                    expires: None,
                    deployment: serde_json::from_value(serde_json::json!({"workloads": []}))
                        .unwrap(),
                    phase: Phase::Provisioning,
                    restarts: BTreeMap::new(),
                    signers: None,
                    held: None,
                },
            );
        })
        .unwrap();
        j.set_phase("c", failed()).unwrap();
        let on_disk = fs::read(&path).unwrap();
        let err = j.set_phase("c", Phase::Running).unwrap_err();
        assert!(
            matches!(
                &err,
                JournalError::IllegalTransition { contract, from: "failed", to: "running" }
                    if contract == "c"
            ),
            "{err:?}"
        );
        assert_eq!(j.owned("c").unwrap().phase, failed());
        assert_eq!(fs::read(&path).unwrap(), on_disk, "nothing written");
        // A new version starts over.
        j.set_phase("c", Phase::Provisioning).unwrap();
    }

    #[test]
    fn a_journal_written_before_the_trust_fields_still_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.json");
        let owner = zos_contract::SecretKey::from_seed([2; 32]).public();
        let old = serde_json::json!({
            "owned": {"c": {
                "id": "c", "version": 1, "digest": Digest::of(b"x"), "owner": owner,
                "deployment": {"workloads": []}, "phase": "running"
            }},
            "accepted": {"c": [1, Digest::of(b"x")]}
        });
        fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        let j = Journal::open(FileJournal::new(&path)).unwrap();
        let c = j.owned("c").unwrap();
        // No signers known: such a contract takes no update (docs/engine.md).
        assert_eq!(c.signers, None);
        let d = j.data();
        assert!(d.retired.is_empty() && d.tombstones.is_empty());
        assert!(d.quarantined.is_empty() && d.doomed.is_empty());
    }

    #[test]
    fn file_journal_round_trips_and_refuses_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.json");
        let mut j = Journal::open(FileJournal::new(&path)).unwrap();
        j.update(|d| {
            d.accepted.insert("c".into(), (3, Digest::of(b"x")));
        })
        .unwrap();
        let again = Journal::open(FileJournal::new(&path)).unwrap();
        assert_eq!(again.data().accepted["c"].0, 3);
        fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            Journal::open(FileJournal::new(&path)),
            Err(JournalError::Corrupt(_))
        ));
    }
}
