//! Which QEMU this node runs, decided once at start (docs/vm.md "Which QEMU a node
//! runs"):
//!
//! 1. the configured system QEMU (`[vm] qemu`) when it resolves (a path that exists, a
//!    name found in `PATH`): as on every agent-mode node, nothing else changes;
//! 2. else the `qemu` part of the release this agent runs: PID 1 started it from a slot
//!    (`ZOSD_SLOT=<version>`), the slot's record is checked again
//!    (`zos_release::check_slot` against the pinned `[release] keys`), and its
//!    `parts.qemu` is fetched and verified at the first VM start
//!    ([`zos_vm::BundleSource`]) into [`bundle_dir`];
//! 3. else no VM can run here: each is refused for good with
//!    [`zos_vm::Error::NoHypervisor`] naming what is missing; containers still run.
//!
//! One line at start says which and why.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zos_contract::PublicKey;
use zos_flist::DirAccess;
use zos_vm::{BundleSource, Hypervisor, Qemu, QemuConfig};

use crate::config::NodeConfig;

/// At most this many bytes of files in the hypervisor bundle (it is 49 MiB).
pub const BUNDLE_MAX_BYTES: u64 = 256 << 20;
/// The bundles' directory beside the slots on a pool (`<pool>/zos-slots`).
const POOL_DIR: &str = "zos-hypervisor";
/// The bundles' directory in a state dir that holds the slots itself.
const STATE_DIR: &str = "hypervisor";

/// Where this node's QEMU comes from.
#[derive(Debug)]
pub enum Source {
    /// The configured system QEMU, found.
    System(PathBuf),
    /// The running release's `qemu` part, fetched at the first VM start.
    Release {
        /// The release's version (the slot).
        version: String,
        /// The part, where it may be read from and where it is kept.
        bundle: BundleSource,
    },
    /// None: why (what is missing).
    None(String),
}

/// The bundles' directory, where the slots are kept: `<pool>/zos-hypervisor` when the
/// slots are linked onto a pool (`<state>/slots -> <pool>/zos-slots`, a booted node,
/// `upgrade::place_slots`), else `<state>/hypervisor`.
pub fn bundle_dir(cfg: &NodeConfig) -> PathBuf {
    bundle_dir_beside(&crate::upgrade::slots_dir(cfg), &cfg.state_dir)
}

/// [`bundle_dir`] for the slots' directory `slots` in the state dir `state`.
fn bundle_dir_beside(slots: &Path, state: &Path) -> PathBuf {
    match std::fs::read_link(slots) {
        Ok(target) if target.is_absolute() => match target.parent() {
            Some(pool) => pool.join(POOL_DIR),
            None => state.join(STATE_DIR),
        },
        _ => state.join(STATE_DIR),
    }
}

/// The configured QEMU, resolved as exec would: a path containing `/` that is a file,
/// or a name found in `PATH`.
fn system_qemu(qemu: &Path) -> Option<PathBuf> {
    if qemu.as_os_str().as_encoded_bytes().contains(&b'/') {
        return qemu.is_file().then(|| qemu.to_path_buf());
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(qemu))
        .find(|p| p.is_file())
}

/// Decides the source (module docs). `slot`: `ZOSD_SLOT`, the release this agent runs,
/// if PID 1 started it from one.
pub fn decide(
    qemu: &Path,
    slot: Option<&str>,
    slots: &Path,
    pinned: &BTreeSet<PublicKey>,
    access: &DirAccess,
    dir: &Path,
) -> Source {
    if let Some(found) = system_qemu(qemu) {
        return Source::System(found);
    }
    let no_system = format!("no QEMU at {} (its image holds none)", qemu.display());
    let Some(version) = slot else {
        return Source::None(format!(
            "{no_system} and it runs no release (the image's agent, not a slot) to take a `qemu` part from"
        ));
    };
    let release = match release_of(slots, version, pinned) {
        Ok(r) => r,
        Err(why) => {
            return Source::None(format!(
                "{no_system} and the release it runs ({version}) cannot be used: {why}"
            ))
        }
    };
    match release.release.parts.qemu {
        Some(part) => Source::Release {
            version: version.to_owned(),
            bundle: BundleSource {
                part,
                access: access.clone(),
                dir: dir.to_path_buf(),
                max_bytes: BUNDLE_MAX_BYTES,
            },
        },
        None => Source::None(format!(
            "{no_system} and the release it runs ({version}) names no `qemu` part"
        )),
    }
}

/// The release record of slot `version`, checked as PID 1 checks it before starting
/// its agent (`check_slot`: signed by a pinned key, naming the slot, the agent as
/// installed), and then the very bytes read verified again.
fn release_of(
    slots: &Path,
    version: &str,
    pinned: &BTreeSet<PublicKey>,
) -> Result<zos_release::SignedRelease, String> {
    zos_release::check_slot(slots, version, pinned).map_err(|e| format!("[{}] {e}", e.code()))?;
    let path = slots.join(version).join(zos_release::slot::RECORD);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let signed = zos_release::SignedRelease::from_bytes(&bytes, &zos_contract::Limits::default())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    zos_release::release::verify_signed(&signed, pinned)
        .map_err(|e| format!("[{}] {e}", e.code()))?;
    if signed.release.version.to_string() != version {
        return Err(format!(
            "{} holds the release of {}",
            path.display(),
            signed.release.version
        ));
    }
    Ok(signed)
}

/// The hypervisor for `q` (zosd's QEMU settings, `binary` = `[vm] qemu`) on this node:
/// decided (module docs), logged in one line.
pub fn build(
    mut q: QemuConfig,
    cfg: &NodeConfig,
    access: &DirAccess,
) -> anyhow::Result<Arc<dyn Hypervisor>> {
    let slot = std::env::var(zos_init::slots::SLOT_ENV).ok();
    let pinned: BTreeSet<PublicKey> = cfg.release.keys.iter().copied().collect();
    let source = decide(
        &cfg.vm.qemu,
        slot.as_deref(),
        &crate::upgrade::slots_dir(cfg),
        &pinned,
        access,
        &bundle_dir(cfg),
    );
    let refused = match source {
        Source::System(found) => {
            tracing::info!(qemu = %found.display(), configured = %cfg.vm.qemu.display(), "the node's QEMU: the system's ([vm] qemu)");
            None
        }
        Source::Release { version, bundle } => {
            tracing::info!(
                release = %version,
                part = %bundle.part.url,
                sha256 = %bundle.part.sha256,
                kept_in = %bundle.dir.display(),
                configured = %cfg.vm.qemu.display(),
                "the node's QEMU: the release's hypervisor part, fetched and verified at the first VM start (no system QEMU)"
            );
            q.bundle_from = Some(bundle);
            None
        }
        Source::None(why) => {
            tracing::warn!(reason = %why, "the node's QEMU: none, VM contracts are refused (containers run)");
            Some(why)
        }
    };
    let qemu = Qemu::new(q)?;
    Ok(match refused {
        None => Arc::new(qemu),
        Some(reason) => Arc::new(NoHypervisor { qemu, reason }),
    })
}

/// A node without QEMU: a VM never starts ([`zos_vm::Error::NoHypervisor`]); what is
/// left of VMs from an earlier start (their run files) is still seen and removed.
struct NoHypervisor {
    qemu: Qemu,
    reason: String,
}

impl Hypervisor for NoHypervisor {
    fn available(&self) -> zos_vm::Result<()> {
        Err(zos_vm::Error::NoHypervisor(self.reason.clone()))
    }
    fn start(&self, _spec: &zos_vm::VmSpec) -> zos_vm::Result<zos_vm::Started> {
        Err(zos_vm::Error::NoHypervisor(self.reason.clone()))
    }
    fn state(&self, name: &str) -> zos_vm::Result<Option<zos_vm::VmState>> {
        self.qemu.state(name)
    }
    fn stop(&self, name: &str) -> zos_vm::Result<()> {
        self.qemu.stop(name)
    }
    fn remove(&self, name: &str) -> zos_vm::Result<()> {
        self.qemu.remove(name)
    }
    fn names(&self) -> Vec<String> {
        self.qemu.names()
    }
    fn console_tail(&self, name: &str, lines: usize) -> Vec<String> {
        self.qemu.console_tail(name, lines)
    }
    fn accel_of(&self, name: &str) -> Option<zos_vm::Accel> {
        self.qemu.accel_of(name)
    }
    fn qmp_status(&self, name: &str) -> zos_vm::Result<String> {
        self.qemu.qmp_status(name)
    }
    fn cgroup_path(&self, name: &str) -> Option<PathBuf> {
        self.qemu.cgroup_path(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_contract::deployment::FlistRef;
    use zos_contract::{Digest, SecretKey};
    use zos_release::{Parts, Release, SignedRelease};

    fn flist(tag: &str, publisher: PublicKey) -> FlistRef {
        FlistRef {
            url: format!("dir:///zt-nowhere/{tag}.fl"),
            sha256: Digest::of(tag.as_bytes()),
            stores: vec!["dir:///zt-nowhere/store".into()],
            publishers: vec![publisher],
        }
    }

    /// A slot `<slots>/<version>` as `install_release` writes it, signed by `key`.
    fn slot(slots: &Path, version: &str, key: &SecretKey, qemu: bool) {
        let p = SecretKey::from_seed([3; 32]).public();
        let release = Release {
            version: version.parse().unwrap(),
            parts: Parts {
                zosd: flist("zosd", p),
                qemu: qemu.then(|| flist("qemu", p)),
            },
            rollback: false,
            signed_at: 1_780_000_000,
            key: key.public(),
        };
        let signed = SignedRelease::sign(release, key);
        let dir = slots.join(version);
        std::fs::create_dir_all(dir.join("zosd")).unwrap();
        std::fs::write(
            dir.join(zos_release::slot::RECORD),
            serde_json::to_vec(&signed.to_value()).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.join(zos_release::slot::AGENT), b"agent").unwrap();
        std::fs::write(
            dir.join(zos_release::slot::AGENT_SHA256),
            format!("{}\n", Digest::of(b"agent")),
        )
        .unwrap();
    }

    #[test]
    fn the_bundles_are_kept_beside_the_slots() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        // The slots in the state dir itself (a persistent state dir, agent mode).
        assert_eq!(
            bundle_dir_beside(&state.join("slots"), &state),
            state.join("hypervisor")
        );
        // Linked onto a pool (a booted node: place_slots): beside them on that pool.
        let pool = tmp.path().join("pool");
        std::fs::create_dir_all(pool.join("zos-slots")).unwrap();
        std::os::unix::fs::symlink(pool.join("zos-slots"), state.join("slots")).unwrap();
        assert_eq!(
            bundle_dir_beside(&state.join("slots"), &state),
            pool.join("zos-hypervisor")
        );
    }

    #[test]
    fn the_system_qemu_first_then_the_release_part_then_none() {
        let tmp = tempfile::tempdir().unwrap();
        let slots = tmp.path().join("slots");
        let bundles = tmp.path().join("hypervisor");
        let key = SecretKey::from_seed([4; 32]);
        let pinned: BTreeSet<PublicKey> = [key.public()].into_iter().collect();
        let access = DirAccess::None;
        slot(&slots, "2.0.0", &key, true);
        slot(&slots, "3.0.0", &key, false);
        let missing = Path::new("/nonexistent/zt-qemu");
        let decide = |qemu: &Path, slot: Option<&str>, pinned: &BTreeSet<PublicKey>| {
            decide(qemu, slot, &slots, pinned, &access, &bundles)
        };

        // A system QEMU that resolves wins, whatever the release says: a path that is a
        // file (this test's own binary stands in), or a name found in PATH (`ls`, there
        // on every system). Nothing runs either.
        let exe = std::env::current_exe().unwrap();
        assert!(matches!(decide(&exe, Some("2.0.0"), &pinned), Source::System(p) if p == exe));
        assert!(matches!(
            decide(Path::new("ls"), None, &pinned),
            Source::System(_)
        ));

        // None found: the slot's release part, kept in the bundles' directory.
        match decide(missing, Some("2.0.0"), &pinned) {
            Source::Release { version, bundle } => {
                assert_eq!(version, "2.0.0");
                assert_eq!(bundle.part.url, "dir:///zt-nowhere/qemu.fl");
                assert_eq!(bundle.dir, bundles);
                assert_eq!(bundle.max_bytes, 256 << 20);
            }
            other => panic!("{other:?}"),
        }
        let none = |s: Source| match s {
            Source::None(why) => why,
            other => panic!("{other:?}"),
        };
        let why = none(decide(missing, Some("3.0.0"), &pinned));
        assert!(
            why.contains("/nonexistent/zt-qemu") && why.contains("names no `qemu` part"),
            "{why}"
        );
        let why = none(decide(missing, None, &pinned));
        assert!(why.contains("runs no release"), "{why}");
        // A slot whose record no longer verifies against the pinned keys.
        let other: BTreeSet<PublicKey> = [SecretKey::from_seed([5; 32]).public()].into();
        let why = none(decide(missing, Some("2.0.0"), &other));
        assert!(why.contains("[unknown_key]"), "{why}");
        let why = none(decide(missing, Some("9.9.9"), &pinned));
        assert!(why.contains("[no_slot]"), "{why}");
    }
}
