//! The agent's look at its farm's rollout (`zos_release::follow`), against a real
//! `dir://` notary, a real farm record, a rollout signed by the farmer and a real
//! packed, signed agent flist in a real store: a good release is installed and the
//! switch asked of PID 1; each refusal (unsigned, unknown key, tampered block, a
//! release that is not the rollout's version, a rollout not signed by the farmer, a
//! rollout below the running version) writes nothing into the slots and is published,
//! signed by the node, at `nodes/<node>/upgrade`.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use zos_contract::deployment::FlistRef;
use zos_contract::{Digest, PublicKey, SecretKey};
use zos_flist::{pack, DirAccess, Flist, PackOptions, Router, BLOCK_SIZE};
use zos_notary::{AnyNotary, Notary, NotaryKey, Record};
use zos_registry::Farm;
use zos_release::agent::SWITCH_REQUEST;
use zos_release::follow::{Follow, Step};
use zos_release::{Parts, Release, Rollout, SignedRelease, SignedRollout, Version, Wave};

const FARM: &str = "zt-farm-follow";
const V1: Version = Version::new(0, 1, 0);

struct World {
    dir: tempfile::TempDir,
    notary: AnyNotary,
    part: FlistRef,
    release_key: SecretKey,
    farmer: SecretKey,
    node: SecretKey,
}

impl World {
    fn new(what: &str) -> World {
        let dir = zos_testkit::tempdir(&format!("follow-{what}"));
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let mut agent = Vec::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        while agent.len() < 2 * BLOCK_SIZE + 100 {
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
        let notary =
            zos_notary::open(&format!("dir://{}", dir.path().join("notary").display())).unwrap();
        let w = World {
            dir,
            notary,
            part,
            release_key: SecretKey::from_seed([22; 32]),
            farmer: SecretKey::from_seed([9; 32]),
            node: SecretKey::from_seed([44; 32]),
        };
        let now = zos_registry::now();
        let farm = Farm::create_or_update(None, FARM, "test farm", w.farmer.public(), now)
            .unwrap()
            .sign(&w.farmer, now)
            .unwrap();
        w.put(&farm);
        w
    }

    fn put(&self, r: &Record) {
        block_on(self.notary.put(r)).unwrap();
    }

    fn get(&self, k: &NotaryKey) -> Option<Record> {
        block_on(self.notary.get(k)).unwrap()
    }

    fn pinned(&self) -> BTreeSet<PublicKey> {
        [self.release_key.public()].into()
    }

    fn slots(&self) -> PathBuf {
        self.dir.path().join("slots")
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

    /// `releases/<at>` holding `signed` (stored by whoever publishes: here the release key).
    fn publish_release(&self, at: &str, signed: &SignedRelease) {
        let r = Record::sign(
            &NotaryKey::release(at).unwrap(),
            signed.to_value(),
            &self.release_key,
        )
        .unwrap();
        self.put(&r);
    }

    fn publish_rollout(&self, version: &str, by: &SecretKey) {
        let rollout = Rollout {
            farm: FARM.into(),
            version: version.parse().unwrap(),
            waves: vec![Wave::Percent(100)],
            issued_at: 1_780_000_000,
            farmer: by.public(),
        };
        let signed = SignedRollout::sign(rollout, by);
        let r = Record::sign(&NotaryKey::rollout(FARM).unwrap(), signed.to_value(), by).unwrap();
        self.put(&r);
    }

    fn step(&self, running: Version) -> Step {
        let pinned = self.pinned();
        let access = DirAccess::under([self.dir.path()]);
        let slots = self.slots();
        let f = Follow {
            farm: FARM,
            node: &self.node,
            running,
            pinned: &pinned,
            access: &access,
            slots: &slots,
            max_bytes: 64 << 20,
        };
        let step = block_on(f.step(&self.notary)).unwrap();
        eprintln!("step: {step:?}");
        step
    }

    /// The node's published upgrade record, checked to be signed by the node.
    fn report(&self) -> Value {
        let r = self
            .get(&NotaryKey::upgrade(&self.node.public()))
            .expect("the upgrade record");
        assert_eq!(r.author, self.node.public());
        r.body
    }

    fn assert_nothing_written(&self) {
        let left: Vec<_> = std::fs::read_dir(self.slots())
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "written into the slots: {left:?}");
    }

    fn agent_blob(&self, index: usize) -> PathBuf {
        let fl = Flist::open(Path::new(self.part.url.strip_prefix("dir://").unwrap())).unwrap();
        let entry = &fl.entries[fl.lookup("/zosd").unwrap()];
        let hex = entry.blocks[index].id_hex();
        self.dir.path().join("store").join(&hex[..2]).join(hex)
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_rollout_to_a_signed_release_installs_it_and_asks_pid1_for_the_switch() {
    let w = World::new("good");
    assert_eq!(w.step(V1), Step::NoRollout);
    w.publish_rollout("0.2.0", &w.farmer);
    let signed = SignedRelease::sign(w.release("0.2.0", &w.release_key), &w.release_key);
    w.publish_release("0.2.0", &signed);
    assert_eq!(w.step(V1), Step::Switch(Version::new(0, 2, 0)));
    assert_eq!(
        std::fs::read_to_string(w.slots().join(SWITCH_REQUEST)).unwrap(),
        "0.2.0"
    );
    assert!(w.slots().join("0.2.0/zosd/zosd").exists());
    assert_eq!(w.report()["outcome"], "switching");
    // Once it runs 0.2.0, the same rollout is nothing to do.
    assert_eq!(w.step(Version::new(0, 2, 0)), Step::UpToDate);
}

fn refused(step: Step) -> String {
    match step {
        Step::Refused(zos_release::agent::UpgradeReport::Refused { code, .. }) => code,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn each_bad_release_is_refused_published_and_nothing_is_written() {
    let w = World::new("refusals");
    w.publish_rollout("0.2.0", &w.farmer);
    let good = w.release("0.2.0", &w.release_key);

    let mut unsigned = SignedRelease::sign(good.clone(), &w.release_key);
    unsigned.signature = None;
    w.publish_release("0.2.0", &unsigned);
    assert_eq!(refused(w.step(V1)), "unsigned");
    assert_eq!(w.report()["code"], "unsigned");
    w.assert_nothing_written();

    let stranger = SecretKey::from_seed([33; 32]);
    w.publish_release(
        "0.2.0",
        &SignedRelease::sign(w.release("0.2.0", &stranger), &stranger),
    );
    assert_eq!(refused(w.step(V1)), "unknown_key");
    assert_eq!(w.report()["code"], "unknown_key");
    w.assert_nothing_written();

    // releases/0.2.0 holding a (signed) 0.1.5: not the rollout's version.
    w.publish_release(
        "0.2.0",
        &SignedRelease::sign(w.release("0.1.5", &w.release_key), &w.release_key),
    );
    assert_eq!(refused(w.step(V1)), "version_mismatch");
    w.assert_nothing_written();

    // A downgrade: a node running 0.3.0 under a rollout to 0.2.0 refuses it, published.
    w.publish_release("0.2.0", &SignedRelease::sign(good.clone(), &w.release_key));
    assert_eq!(refused(w.step(Version::new(0, 3, 0))), "downgrade");
    assert_eq!(w.report()["code"], "downgrade");
    w.assert_nothing_written();
    // The same version signed as a rollback by the release key: installed.
    let mut back = good.clone();
    back.rollback = true;
    w.publish_release("0.2.0", &SignedRelease::sign(back, &w.release_key));
    assert_eq!(
        w.step(Version::new(0, 3, 0)),
        Step::Switch(Version::new(0, 2, 0))
    );
    assert!(w.slots().join("0.2.0/zosd/zosd").exists());
    std::fs::remove_dir_all(w.slots()).unwrap();

    let blob = w.agent_blob(1);
    let mut data = std::fs::read(&blob).unwrap();
    data[3] ^= 0x10;
    std::fs::write(&blob, data).unwrap();
    assert_eq!(refused(w.step(V1)), "tampered_part");
    assert_eq!(w.report()["code"], "tampered_part");
    w.assert_nothing_written();
}

#[test]
fn a_rollout_not_signed_by_the_farmer_is_ignored() {
    let w = World::new("not-farmer");
    let signed = SignedRelease::sign(w.release("0.2.0", &w.release_key), &w.release_key);
    w.publish_release("0.2.0", &signed);
    let stranger = SecretKey::from_seed([55; 32]);
    w.publish_rollout("0.2.0", &stranger);
    assert_eq!(w.step(V1), Step::RolloutRefused("not_farmer".into()));
    w.assert_nothing_written();
    assert!(w.get(&NotaryKey::upgrade(&w.node.public())).is_none());
}

fn register(w: &World, node: &SecretKey, version: &str) {
    let reg = zos_registry::Registration {
        farm: FARM.into(),
        version: version.into(),
        capacity: zos_registry::NodeResources {
            cpus: 2,
            memory_bytes: 1 << 30,
            ssd_bytes: 1 << 30,
            hdd_bytes: 0,
        },
        offered: None,
        nics: vec![zos_registry::Nic {
            name: "eth0".into(),
            mac: "52:54:00:12:34:56".into(),
        }],
        dmi: Default::default(),
        registered_at: 1_780_000_000,
    };
    w.put(&reg.sign(node, 1_780_000_000).unwrap());
}

#[test]
fn the_next_wave_waits_for_the_previous_one_and_a_rollback_halts_it() {
    let w = World::new("waves");
    let first = SecretKey::from_seed([66; 32]);
    register(&w, &first, "0.1.0");
    register(&w, &w.node, "0.1.0");
    // Wave 0 is `first`; our node is in the implicit last wave.
    let rollout = Rollout {
        farm: FARM.into(),
        version: Version::new(0, 2, 0),
        waves: vec![Wave::Nodes(vec![first.public()])],
        issued_at: 1_780_000_000,
        farmer: w.farmer.public(),
    };
    let signed = SignedRollout::sign(rollout, &w.farmer);
    w.put(
        &Record::sign(
            &NotaryKey::rollout(FARM).unwrap(),
            signed.to_value(),
            &w.farmer,
        )
        .unwrap(),
    );
    w.publish_release(
        "0.2.0",
        &SignedRelease::sign(w.release("0.2.0", &w.release_key), &w.release_key),
    );
    let waiting = Step::Wait {
        wave: 1,
        waiting_for: vec![first.public()],
    };
    assert_eq!(w.step(V1), waiting);
    w.assert_nothing_written();

    // `first` runs 0.2.0 and beats, but rolled back from it: the rollout halts here.
    register(&w, &first, "0.2.0");
    let beat = Record::sign(
        &NotaryKey::heartbeat(&first.public()),
        serde_json::json!({}),
        &first,
    )
    .unwrap();
    w.put(&beat);
    let rollback = |version: &str| {
        Record::sign(
            &NotaryKey::rollback(&first.public()),
            serde_json::json!({"rollback": {"version": version, "cause": "exited"}}),
            &first,
        )
        .unwrap()
    };
    w.put(&rollback("0.2.0"));
    let halted = Step::Halted {
        rolled_back: vec![first.public()],
    };
    assert_eq!(w.step(V1), halted);
    w.assert_nothing_written();
    assert!(w.get(&NotaryKey::upgrade(&w.node.public())).is_none());

    // Its last rollback is about another version: it counts as upgraded, we go.
    w.put(&rollback("0.1.9"));
    assert_eq!(w.step(V1), Step::Switch(Version::new(0, 2, 0)));
}

/// The node that went back from a version (its own signed rollback) does not try it
/// again while the rollout names it: before, it fetched the release once more and
/// published `slot_exists` over its last outcome.
#[test]
fn a_node_that_rolled_back_from_the_version_does_not_try_it_again() {
    let w = World::new("own-rollback");
    register(&w, &w.node, "0.1.0");
    w.publish_rollout("0.2.0", &w.farmer);
    w.publish_release(
        "0.2.0",
        &SignedRelease::sign(w.release("0.2.0", &w.release_key), &w.release_key),
    );
    let beat = Record::sign(
        &NotaryKey::heartbeat(&w.node.public()),
        serde_json::json!({}),
        &w.node,
    )
    .unwrap();
    w.put(&beat);
    let rollback = Record::sign(
        &NotaryKey::rollback(&w.node.public()),
        serde_json::json!({"rollback": {"version": "0.2.0", "cause": "exited"}}),
        &w.node,
    )
    .unwrap();
    w.put(&rollback);
    assert_eq!(
        w.step(V1),
        Step::Halted {
            rolled_back: vec![w.node.public()]
        }
    );
    w.assert_nothing_written();
    assert!(w.get(&NotaryKey::upgrade(&w.node.public())).is_none());
}
