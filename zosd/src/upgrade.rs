//! The agent's side of the slots PID 1 keeps (docs/upgrade.md, zos-init's `slots`):
//!
//! - an agent started from a slot (`ZOSD_SLOT=<version>`) proves itself: once it is
//!   registered, serving and its first heartbeat is in the notary, it writes the health
//!   mark `<state>/slots/health`; PID 1 commits the slot on it;
//! - after a rollback (`state.json` says `rolled_back`), the agent that runs publishes
//!   the node's signed rollback record `nodes/<node>/rollback`: the version PID 1 went
//!   back from, why, the exit status and the last lines of the failed agent;
//! - on a booted node, where `<state>` is on the tmpfs root, the slots live on a pool
//!   (`<pool>/zos-slots`, linked from `<state>/slots`), and the image's agent asks PID 1
//!   once per boot to look again when the state there says a slot runs.
//!
//! - with release keys in `[release] keys` and a farm, the agent follows the farm's
//!   rollout ([`follow_rollout`]): one look (`zos_release::follow::Follow::step`) at
//!   start and on every change under `rollouts/` and `releases/` (and every
//!   [`RELOOK`] while its wave waits); a release it installs is switched to by exiting
//!   with [`slots::SWITCH_EXIT_CODE`] under PID 1; in agent mode (no PID 1 of ours) the
//!   slot stays installed and the switch is logged as not available.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use zos_contract::{PublicKey, SecretKey};
use zos_flist::DirAccess;
use zos_init::slots::{self, SlotState};
use zos_notary::{AnyNotary, KeyPrefix, Notary, NotaryKey, Record};
use zos_release::follow::{Follow, Step};
use zos_release::Version;

use crate::config::NodeConfig;

/// `<state>/slots`: where the slots, the state PID 1 keeps and the protocol's files
/// live.
pub fn slots_dir(cfg: &NodeConfig) -> PathBuf {
    cfg.state_dir.join("slots")
}

/// The slots' directory at the top of a pool on a booted node.
const POOL_SLOTS: &str = "zos-slots";
/// Asked once per boot (`/run` is a fresh tmpfs at every boot).
const ADOPTION_ASKED: &str = "/run/zos/slots-adoption-asked";

/// Where the slots live: `<state>/slots`. On a booted node `<state>` is on the tmpfs
/// root, so the first time it is made a link to `zos-slots` on the first online pool,
/// where the slots and PID 1's state survive a reboot. Failures are logged: the slots
/// then stay on the tmpfs (an upgrade then lasts until the next boot).
pub fn place_slots(cfg: &NodeConfig, storage: &zos_storage::Storage) -> PathBuf {
    let dir = slots_dir(cfg);
    if dir.symlink_metadata().is_ok() || !on_tmpfs(&cfg.state_dir) {
        return dir;
    }
    let Some(pool) = storage
        .pools()
        .into_iter()
        .find(|p| p.status == zos_storage::PoolStatus::Online)
    else {
        return dir;
    };
    let target = pool.mountpoint.join(POOL_SLOTS);
    let linked = std::fs::create_dir_all(&target)
        .and_then(|()| std::fs::create_dir_all(&cfg.state_dir))
        .and_then(|()| std::os::unix::fs::symlink(&target, &dir));
    match linked {
        Ok(()) => {
            tracing::info!(slots = %dir.display(), pool = %pool.label, "the slots live on a pool")
        }
        Err(error) => {
            tracing::error!(%error, slots = %dir.display(), "the slots stay on the tmpfs")
        }
    }
    dir
}

/// Whether `path` is on a tmpfs: the filesystem of the longest mount point in
/// `/proc/self/mounts` that contains it.
fn on_tmpfs(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return false;
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_, at, fstype) = (f.next()?, f.next()?, f.next()?);
            // Spaces in mount points are written as \040.
            let at = PathBuf::from(at.replace("\\040", " "));
            path.starts_with(&at)
                .then(|| (at.as_os_str().len(), fstype == "tmpfs"))
        })
        .max_by_key(|(len, _)| *len)
        .is_some_and(|(_, tmpfs)| tmpfs)
}

/// The image's agent under PID 1, finding a state that says a slot runs (PID 1 looked
/// before the pool holding it was mounted): writes that version to `slots/switch`, once
/// per boot, and returns true; the caller then exits with
/// [`slots::SWITCH_EXIT_CODE`], and PID 1 makes its boot decision on that state.
pub fn ask_pid1_to_adopt(dir: &Path) -> bool {
    if std::env::var_os(slots::SLOT_ENV).is_some() || std::os::unix::process::parent_id() != 1 {
        return false;
    }
    let Ok(state) = slots::load(dir) else {
        return false;
    };
    let Some(version) = state.running() else {
        return false;
    };
    if Path::new(ADOPTION_ASKED).exists() {
        return false;
    }
    let asked = std::fs::write(ADOPTION_ASKED, version)
        .and_then(|()| write_file(dir, slots::SWITCH_REQUEST, version));
    match asked {
        Ok(()) => {
            tracing::warn!(
                slot = version,
                "a slot runs on this node: asking PID 1 for it"
            );
            true
        }
        Err(error) => {
            tracing::error!(%error, "asking PID 1 for the slot");
            false
        }
    }
}

/// How long the agent waits for its first heartbeat to show in the notary before it
/// gives up on the mark (PID 1's window then decides).
const FIRST_HEARTBEAT: Duration = Duration::from_secs(300);

/// Called once the agent serves: the rollback record if PID 1 rolled back, and for an
/// agent from a slot, the health mark once its first heartbeat is in the notary. Runs
/// in the background; failures are logged.
pub fn on_serving(cfg: &NodeConfig, key: &SecretKey, notary: &AnyNotary) {
    let dir = slots_dir(cfg);
    let key = key.clone();
    let notary = notary.clone();
    let slot = std::env::var(slots::SLOT_ENV).ok();
    tokio::spawn(async move {
        publish_rollback(&dir, &key, &notary).await;
        if let Some(version) = slot {
            mark_when_beating(&dir, &version, &key, &notary).await;
        }
    });
}

/// The rollback record's body for `state`, when it is a rollback.
pub fn rollback_body(state: &SlotState) -> Option<serde_json::Value> {
    let SlotState::RolledBack {
        version,
        reason,
        running,
    } = state
    else {
        return None;
    };
    Some(json!({
        "rollback": {
            "version": version,
            "cause": reason.cause,
            "detail": reason.detail,
            "log_tail": reason.log_tail,
            "running": running.clone().unwrap_or_else(|| "image".into()),
        }
    }))
}

async fn publish_rollback(dir: &Path, key: &SecretKey, notary: &AnyNotary) {
    let state = match slots::load(dir) {
        Ok(s) => s,
        Err(error) => {
            tracing::warn!(%error, "slot state unreadable: no rollback to publish");
            return;
        }
    };
    let Some(body) = rollback_body(&state) else {
        return;
    };
    let record = match Record::sign(&NotaryKey::rollback(&key.public()), body, key) {
        Ok(r) => r,
        Err(error) => {
            tracing::error!(%error, "signing the rollback record");
            return;
        }
    };
    match notary.put(&record).await {
        Ok(()) => tracing::warn!(?state, "rollback published"),
        Err(error) => tracing::error!(%error, "publishing the rollback record"),
    }
}

async fn mark_when_beating(dir: &Path, version: &str, key: &SecretKey, notary: &AnyNotary) {
    let heartbeat = NotaryKey::heartbeat(&key.public());
    let deadline = tokio::time::Instant::now() + FIRST_HEARTBEAT;
    loop {
        match notary.get(&heartbeat).await {
            Ok(Some(r)) if r.author == key.public() => break,
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "reading our heartbeat"),
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::error!(
                slot = version,
                "no heartbeat of ours in the notary: no health mark"
            );
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    match write_file(dir, slots::HEALTH_MARK, version) {
        Ok(()) => tracing::info!(slot = version, "healthy: the health mark is written"),
        Err(error) => tracing::error!(%error, slot = version, "writing the health mark"),
    }
}

/// Between two looks while this node's wave waits for the previous one (its nodes'
/// heartbeats are not watched: they change every few seconds on every node), or after
/// the notary failed. One listing of the farm's registrations per look.
pub const RELOOK: Duration = Duration::from_secs(10);
/// At most this many bytes per release part.
const MAX_PART_BYTES: u64 = 512 << 20;

/// Follows the farm's rollout in the background (module comment). Does nothing at all,
/// but log once why, without a farm or without release keys.
pub fn follow_rollout(cfg: &NodeConfig, key: &SecretKey, notary: &AnyNotary, access: DirAccess) {
    let Some(farm) = cfg.farm.clone() else {
        tracing::info!("no farm: no rollout to follow");
        return;
    };
    if cfg.release.keys.is_empty() {
        tracing::info!(%farm, "no release keys ([release] keys): the farm's rollout is not followed");
        return;
    }
    let running: Version = match crate::version().parse() {
        Ok(v) => v,
        Err(error) => {
            tracing::error!(%error, version = crate::version(), "the agent's own version does not parse: the farm's rollout is not followed");
            return;
        }
    };
    let pinned: std::collections::BTreeSet<PublicKey> = cfg.release.keys.iter().copied().collect();
    let slots = slots_dir(cfg);
    tracing::info!(%farm, release_keys = pinned.len(), %running, "following the farm's rollout");
    let key = key.clone();
    let notary = notary.clone();
    tokio::spawn(async move {
        let follow = Follow {
            farm: &farm,
            node: &key,
            running,
            pinned: &pinned,
            access: &access,
            slots: &slots,
            max_bytes: MAX_PART_BYTES,
        };
        follow_loop(&follow, &notary).await;
    });
}

/// Whether PID 1 (zos-init's slots) started this agent and can switch it.
fn under_pid1() -> bool {
    std::os::unix::process::parent_id() == 1
}

async fn follow_loop(follow: &Follow<'_>, notary: &AnyNotary) {
    // Watches first, then each look: a change racing with a look lands in the next one.
    let mut rollouts = watch(notary, &KeyPrefix::rollouts()).await;
    let mut releases = watch(notary, &KeyPrefix::releases()).await;
    loop {
        let relook = match follow.step(notary).await {
            Ok(Step::Switch(version)) => {
                if under_pid1() {
                    tracing::warn!(%version, "release installed: switching to it (PID 1 starts it)");
                    std::process::exit(slots::SWITCH_EXIT_CODE);
                }
                tracing::warn!(
                    %version,
                    slots = %follow.slots.display(),
                    "release installed, the switch is not available in agent mode (no PID 1 of ours): the slot stays installed, this agent keeps running; no longer following the rollout"
                );
                return;
            }
            Ok(Step::Refused(report)) => {
                tracing::error!(?report, "the rollout's release is refused: published at nodes/<node>/upgrade, nothing installed");
                None
            }
            Ok(Step::Wait { wave, waiting_for }) => {
                let waiting_for: Vec<String> = waiting_for.iter().map(|k| k.to_string()).collect();
                tracing::info!(
                    wave,
                    ?waiting_for,
                    "this node's wave waits for the previous one"
                );
                Some(RELOOK)
            }
            Ok(Step::Halted { rolled_back }) => {
                let rolled_back: Vec<String> = rolled_back.iter().map(|k| k.to_string()).collect();
                tracing::warn!(
                    ?rolled_back,
                    "the farm's rollout is halted: a node rolled back from its version"
                );
                None
            }
            Ok(Step::RolloutRefused(code)) => {
                tracing::warn!(%code, "the farm's rollout is refused: ignored");
                None
            }
            Ok(step) => {
                tracing::debug!(?step, "rollout looked at");
                None
            }
            Err(error) => {
                tracing::warn!(%error, "looking at the farm's rollout");
                Some(RELOOK)
            }
        };
        // The next look: a change under rollouts/ or releases/, or the re-look time.
        let relook = relook.unwrap_or(Duration::MAX);
        let sleep = tokio::time::sleep_until(far(relook));
        tokio::select! {
            e = next(&mut rollouts) => {
                if e.is_none() {
                    rollouts = watch(notary, &KeyPrefix::rollouts()).await;
                }
            }
            e = next(&mut releases) => {
                if e.is_none() {
                    releases = watch(notary, &KeyPrefix::releases()).await;
                }
            }
            () = sleep => {}
        }
    }
}

/// `now + d`, saturating far in the future.
fn far(d: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

async fn watch(notary: &AnyNotary, prefix: &KeyPrefix) -> Option<zos_notary::EventWatch> {
    match notary.watch_events(prefix).await {
        Ok(w) => Some(w),
        Err(error) => {
            tracing::warn!(%error, %prefix, "watching the notary: looking again every 30 s");
            None
        }
    }
}

/// The next event of `w`; `None` when it ended. No watch: after [`RELOOK`].
async fn next(w: &mut Option<zos_notary::EventWatch>) -> Option<()> {
    match w {
        Some(w) => w.recv().await.map(|_| ()),
        None => {
            tokio::time::sleep(RELOOK).await;
            None
        }
    }
}

/// `<slots>/<name>` = `text` (temporary file, fsync, rename).
fn write_file(dir: &Path, name: &str, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_init::slots::RollbackReason;

    #[test]
    fn a_rollback_state_is_a_rollback_record_and_nothing_else_is() {
        let s = SlotState::RolledBack {
            version: "0.3.0".into(),
            reason: RollbackReason {
                cause: "exited".into(),
                detail: Some("exit code 3".into()),
                log_tail: vec!["fatal".into()],
            },
            running: Some("0.2.0".into()),
        };
        let b = rollback_body(&s).unwrap();
        assert_eq!(b["rollback"]["version"], "0.3.0");
        assert_eq!(b["rollback"]["cause"], "exited");
        assert_eq!(b["rollback"]["detail"], "exit code 3");
        assert_eq!(b["rollback"]["log_tail"][0], "fatal");
        assert_eq!(b["rollback"]["running"], "0.2.0");
        assert!(rollback_body(&SlotState::Image).is_none());
        assert!(rollback_body(&SlotState::Committed {
            version: "0.2.0".into()
        })
        .is_none());
    }

    #[test]
    fn only_the_image_agent_under_pid1_asks_for_adoption() {
        // A test process is not PID 1's child: it never asks, whatever the state.
        let tmp = tempfile::tempdir().unwrap();
        slots::store(
            tmp.path(),
            &SlotState::Committed {
                version: "0.2.0".into(),
            },
        )
        .unwrap();
        assert!(!ask_pid1_to_adopt(tmp.path()));
        assert!(!tmp.path().join(slots::SWITCH_REQUEST).exists());
        assert!(on_tmpfs(Path::new("/dev/shm/zt-no-such-dir")));
    }

    #[tokio::test]
    async fn the_rollback_is_published_signed_by_the_node_and_the_mark_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("slots");
        let notary =
            zos_notary::open(&format!("dir://{}", tmp.path().join("notary").display())).unwrap();
        let key = SecretKey::from_seed([7; 32]);
        let state = SlotState::RolledBack {
            version: "0.3.0".into(),
            reason: RollbackReason {
                cause: "no_health_mark".into(),
                detail: None,
                log_tail: vec!["registering".into()],
            },
            running: None,
        };
        slots::store(&dir, &state).unwrap();
        publish_rollback(&dir, &key, &notary).await;
        let r = notary
            .get(&NotaryKey::rollback(&key.public()))
            .await
            .unwrap()
            .expect("the rollback record");
        assert_eq!(r.author, key.public());
        assert_eq!(r.body, rollback_body(&state).unwrap());
        assert_eq!(r.body["rollback"]["running"], "image");

        write_file(&dir, slots::HEALTH_MARK, "0.2.0").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join(slots::HEALTH_MARK)).unwrap(),
            "0.2.0"
        );
    }
}
