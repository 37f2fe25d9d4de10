//! Attacks on a node's upgrade path, against real records and a real packed, signed
//! flist in a real dir:// store: each is refused with its code, and nothing is written
//! into the slots directory (no slot, no partial tree).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zos_contract::deployment::FlistRef;
use zos_contract::{Digest, PublicKey, SecretKey};
use zos_flist::{pack, DirAccess, Flist, PackOptions, Router, BLOCK_SIZE};
use zos_release::{check_slot, install_release, Parts, Release, SignedRelease, Version};

/// At most this many bytes per part in these tests.
const MAX_BYTES: u64 = 64 << 20;

/// A release store: the agent packed and signed by its publisher, and the release key.
struct Store {
    dir: tempfile::TempDir,
    agent: Vec<u8>,
    part: FlistRef,
    release_key: SecretKey,
}

impl Store {
    fn new(what: &str) -> Store {
        let dir = zos_testkit::tempdir(&format!("release-{what}"));
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        // Three and a half blocks that do not compress to nothing.
        let mut agent = Vec::with_capacity(3 * BLOCK_SIZE + BLOCK_SIZE / 2);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while agent.len() < 3 * BLOCK_SIZE + BLOCK_SIZE / 2 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            agent.extend_from_slice(&x.to_le_bytes());
        }
        let bin = src.join("zosd");
        std::fs::write(&bin, &agent).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let store = format!("dir://{}", dir.path().join("store").display());
        let fl = dir.path().join("zosd.fl");
        pack(
            &src,
            &fl,
            &Router::parse(std::slice::from_ref(&store)).unwrap(),
            &PackOptions::default(),
        )
        .unwrap();
        let publisher = SecretKey::from_seed([11; 32]);
        zos_flist::sign_file(&fl, &publisher).unwrap();
        let part = FlistRef {
            url: format!("dir://{}", fl.display()),
            sha256: Digest::of(&std::fs::read(&fl).unwrap()),
            stores: vec![store],
            publishers: vec![publisher.public()],
        };
        Store {
            dir,
            agent,
            part,
            release_key: SecretKey::from_seed([22; 32]),
        }
    }

    fn release(&self, version: &str, key: &SecretKey) -> Release {
        Release {
            version: version.parse().unwrap(),
            parts: Parts {
                zosd: self.part.clone(),
                qemu: None,
            },
            rollback: false,
            signed_at: 1_780_000_000,
            key: key.public(),
        }
    }

    fn pinned(&self) -> BTreeSet<PublicKey> {
        [self.release_key.public()].into()
    }

    fn slots(&self) -> PathBuf {
        self.dir.path().join("slots")
    }

    /// The node's path: the record's bytes, verified, its parts fetched into a slot.
    fn install(&self, record: &SignedRelease, running: Version) -> Result<PathBuf, String> {
        let bytes = serde_json::to_vec(&record.to_value()).unwrap();
        install_release(
            &bytes,
            &self.pinned(),
            &running,
            &DirAccess::under([self.dir.path()]),
            &self.slots(),
            MAX_BYTES,
        )
        .map(|i| i.slot)
        .map_err(|e| {
            eprintln!("refused: {} ({e})", e.code());
            e.code().to_string()
        })
    }

    /// The agent's path: [`zos_release::agent::upgrade`] (install, then the switch
    /// request to PID 1).
    fn upgrade(&self, record: &SignedRelease, running: Version) -> Result<Version, String> {
        let bytes = serde_json::to_vec(&record.to_value()).unwrap();
        zos_release::agent::upgrade(
            &bytes,
            &self.pinned(),
            &running,
            &DirAccess::under([self.dir.path()]),
            &self.slots(),
            MAX_BYTES,
        )
        .map_err(|e| {
            eprintln!("refused: {} ({e})", e.code());
            e.code().to_string()
        })
    }

    /// The blob file of block `index` of `/zosd` in the store.
    fn agent_blob(&self, index: usize) -> PathBuf {
        let fl = Flist::open(Path::new(self.part.url.strip_prefix("dir://").unwrap())).unwrap();
        let entry = &fl.entries[fl.lookup("/zosd").unwrap()];
        let hex = entry.blocks[index].id_hex();
        self.dir.path().join("store").join(&hex[..2]).join(hex)
    }

    /// Nothing at all in the slots directory (it may not exist).
    fn assert_nothing_written(&self) {
        let left: Vec<_> = std::fs::read_dir(self.slots())
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "written into the slots: {left:?}");
    }
}

const V1: Version = Version::new(0, 1, 0);

#[test]
fn a_signed_release_installs_its_agent_into_a_slot() {
    let s = Store::new("good");
    let signed = SignedRelease::sign(s.release("0.2.0", &s.release_key), &s.release_key);
    let slot = s.install(&signed, V1).unwrap();
    assert_eq!(slot, s.slots().join("0.2.0"));
    let agent = slot.join("zosd/zosd");
    assert_eq!(std::fs::read(&agent).unwrap(), s.agent);
    let mode = std::fs::metadata(&agent).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let names: Vec<_> = std::fs::read_dir(s.slots())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["0.2.0"], "no partial directory left");
    // A slot is written once.
    assert_eq!(s.install(&signed, V1).unwrap_err(), "slot_exists");
}

#[test]
fn an_unsigned_release_is_refused_and_nothing_is_written() {
    let s = Store::new("unsigned");
    let mut signed = SignedRelease::sign(s.release("0.2.0", &s.release_key), &s.release_key);
    signed.signature = None;
    assert_eq!(s.install(&signed, V1).unwrap_err(), "unsigned");
    s.assert_nothing_written();
}

#[test]
fn a_release_signed_by_an_unknown_key_is_refused_and_nothing_is_written() {
    let s = Store::new("unknown-key");
    let stranger = SecretKey::from_seed([33; 32]);
    let signed = SignedRelease::sign(s.release("0.2.0", &stranger), &stranger);
    assert_eq!(s.install(&signed, V1).unwrap_err(), "unknown_key");
    s.assert_nothing_written();
    // Naming the pinned key does not help a stranger: the signature is not its.
    let forged = SignedRelease::sign(s.release("0.2.0", &s.release_key), &stranger);
    assert_eq!(s.install(&forged, V1).unwrap_err(), "bad_signature");
    s.assert_nothing_written();
}

#[test]
fn a_downgrade_without_the_rollback_flag_is_refused_and_nothing_is_written() {
    let s = Store::new("downgrade");
    let running = Version::new(0, 3, 0);
    let old = SignedRelease::sign(s.release("0.2.0", &s.release_key), &s.release_key);
    assert_eq!(s.install(&old, running).unwrap_err(), "downgrade");
    s.assert_nothing_written();
    // The flag added by someone other than the key breaks the signature.
    let mut flagged = old.clone();
    flagged.release.rollback = true;
    assert_eq!(s.install(&flagged, running).unwrap_err(), "bad_signature");
    s.assert_nothing_written();
    // Signed as a rollback by the key, it installs.
    let mut rollback = s.release("0.2.0", &s.release_key);
    rollback.rollback = true;
    let rollback = SignedRelease::sign(rollback, &s.release_key);
    assert!(s.install(&rollback, running).is_ok());
}

#[test]
fn a_tampered_agent_block_is_refused_and_nothing_is_written() {
    let s = Store::new("tampered-block");
    let signed = SignedRelease::sign(s.release("0.2.0", &s.release_key), &s.release_key);
    let blob = s.agent_blob(2);
    let mut data = std::fs::read(&blob).unwrap();
    data[10] ^= 0x40;
    std::fs::write(&blob, data).unwrap();
    assert_eq!(s.install(&signed, V1).unwrap_err(), "tampered_part");
    s.assert_nothing_written();
}

#[test]
fn a_tampered_agent_flist_is_refused_and_nothing_is_written() {
    let s = Store::new("tampered-fl");
    let signed = SignedRelease::sign(s.release("0.2.0", &s.release_key), &s.release_key);
    let fl = PathBuf::from(s.part.url.strip_prefix("dir://").unwrap());
    let mut bytes = std::fs::read(&fl).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&fl, bytes).unwrap();
    assert_eq!(s.install(&signed, V1).unwrap_err(), "tampered_part");
    s.assert_nothing_written();
}

#[test]
fn a_tampered_second_part_leaves_not_even_the_good_first_one() {
    let s = Store::new("tampered-qemu");
    let mut release = s.release("0.2.0", &s.release_key);
    // The hypervisor part names the agent's flist under a pin it does not have.
    let mut qemu = s.part.clone();
    qemu.sha256 = Digest::of(b"another bundle");
    release.parts.qemu = Some(qemu);
    let signed = SignedRelease::sign(release, &s.release_key);
    let bytes = serde_json::to_vec(&signed.to_value()).unwrap();
    let e = install_release(
        &bytes,
        &s.pinned(),
        &V1,
        &DirAccess::under([s.dir.path()]),
        &s.slots(),
        MAX_BYTES,
    )
    .unwrap_err();
    assert_eq!(e.code(), "tampered_part", "{e}");
    assert!(e.to_string().contains("part qemu is tampered"), "{e}");
    s.assert_nothing_written();
}

#[test]
fn an_installed_slot_checks_out_at_boot_until_its_agent_or_record_changes() {
    let s = Store::new("boot-check");
    let signed = SignedRelease::sign(s.release("0.2.0", &s.release_key), &s.release_key);
    let slot = s.install(&signed, V1).unwrap();
    let agent = check_slot(&s.slots(), "0.2.0", &s.pinned()).unwrap();
    assert_eq!(agent, slot.join("zosd/zosd"));
    assert_eq!(std::fs::read(&agent).unwrap(), s.agent);

    // Pinned keys changed (a new image): the slot's record is by an unknown key.
    let other: BTreeSet<PublicKey> = [SecretKey::from_seed([99; 32]).public()].into();
    let e = check_slot(&s.slots(), "0.2.0", &other).unwrap_err();
    assert_eq!(e.code(), "unknown_key", "{e}");

    // No such slot.
    let e = check_slot(&s.slots(), "0.9.0", &s.pinned()).unwrap_err();
    assert_eq!(e.code(), "no_slot", "{e}");

    // A slot renamed to pose as another version.
    std::fs::rename(&slot, s.slots().join("0.3.0")).unwrap();
    let e = check_slot(&s.slots(), "0.3.0", &s.pinned()).unwrap_err();
    assert_eq!(e.code(), "version_mismatch", "{e}");
    std::fs::rename(s.slots().join("0.3.0"), &slot).unwrap();

    // A version raised in the stored record: its signature no longer verifies.
    let record = slot.join("release.json");
    let text = std::fs::read_to_string(&record).unwrap();
    std::fs::write(&record, text.replace("\"0.2.0\"", "\"0.2.1\"")).unwrap();
    let e = check_slot(&s.slots(), "0.2.0", &s.pinned()).unwrap_err();
    assert_eq!(e.code(), "bad_signature", "{e}");
    std::fs::write(&record, text).unwrap();
    check_slot(&s.slots(), "0.2.0", &s.pinned()).unwrap();

    // One byte of the agent changed on the disk.
    let mut bytes = std::fs::read(&agent).unwrap();
    bytes[1000] ^= 1;
    std::fs::write(&agent, &bytes).unwrap();
    let e = check_slot(&s.slots(), "0.2.0", &s.pinned()).unwrap_err();
    assert_eq!(e.code(), "agent_changed", "{e}");
}

// The agent's upgrade path (`agent::upgrade`): the same refusals, and on a refusal no
// switch is asked of PID 1 either (the slots directory stays empty: no slot, no
// partial tree, no `switch` request).

#[test]
fn the_agent_installs_a_signed_release_and_asks_pid1_for_the_switch() {
    let s = Store::new("agent-good");
    let signed = SignedRelease::sign(s.release("0.2.0", &s.release_key), &s.release_key);
    assert_eq!(s.upgrade(&signed, V1).unwrap(), Version::new(0, 2, 0));
    assert_eq!(
        std::fs::read_to_string(s.slots().join(zos_release::agent::SWITCH_REQUEST)).unwrap(),
        "0.2.0"
    );
    let agent = check_slot(&s.slots(), "0.2.0", &s.pinned()).unwrap();
    assert_eq!(std::fs::read(agent).unwrap(), s.agent);
}

#[test]
fn the_agent_refuses_each_bad_release_and_asks_for_no_switch() {
    let s = Store::new("agent-refusals");
    let good = s.release("0.2.0", &s.release_key);

    let mut unsigned = SignedRelease::sign(good.clone(), &s.release_key);
    unsigned.signature = None;
    assert_eq!(s.upgrade(&unsigned, V1).unwrap_err(), "unsigned");
    s.assert_nothing_written();

    let stranger = SecretKey::from_seed([33; 32]);
    let unknown = SignedRelease::sign(s.release("0.2.0", &stranger), &stranger);
    assert_eq!(s.upgrade(&unknown, V1).unwrap_err(), "unknown_key");
    s.assert_nothing_written();

    let signed = SignedRelease::sign(good, &s.release_key);
    assert_eq!(
        s.upgrade(&signed, Version::new(0, 3, 0)).unwrap_err(),
        "downgrade"
    );
    s.assert_nothing_written();

    let blob = s.agent_blob(1);
    let mut data = std::fs::read(&blob).unwrap();
    data[7] ^= 0x01;
    std::fs::write(&blob, data).unwrap();
    assert_eq!(s.upgrade(&signed, V1).unwrap_err(), "tampered_part");
    s.assert_nothing_written();
}
