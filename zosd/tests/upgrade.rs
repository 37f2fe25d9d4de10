//! The agent's side of PID 1's slots on the real kernel (the `zosd run` node of
//! tests/common): an agent started from a slot (`ZOSD_SLOT`, as PID 1 starts a trial)
//! writes the health mark once it is registered, serving and its first heartbeat is in
//! the notary; an agent that finds PID 1's state saying `rolled_back` publishes the
//! node's signed rollback record with the reason.
//!
//! The farm's rollout, followed by a node with a pinned release key (`[release] keys`):
//! a rollout naming a signed release of a newer version installs its slot and, in agent
//! mode (no PID 1 of ours), logs that the switch is not available; a release signed by
//! an unknown key is refused, published at `nodes/<node>/upgrade`, and nothing is
//! installed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;

use common::*;
use zos_contract::deployment::FlistRef;
use zos_contract::{Digest, SecretKey};
use zos_flist::{pack, PackOptions, Router};
use zos_init::slots::{self, RollbackReason, SlotState};
use zos_notary::{NotaryKey, Record};
use zos_registry::Farm;
use zos_release::{Parts, Release, Rollout, SignedRelease, SignedRollout, Wave};

/// zosd inherits the test process's environment: a test that sets `ZOSD_SLOT` for its
/// node holds this while it starts it, and every test holds it while starting its node.
static ENV: Mutex<()> = Mutex::new(());

const FARM: &str = "zt-farm-upgrade";

fn farm_record(farmer: &SecretKey) -> Record {
    let now = zos_registry::now();
    Farm::create_or_update(None, FARM, "test farm", farmer.public(), now)
        .unwrap()
        .sign(farmer, now)
        .unwrap()
}

#[test]
fn an_agent_from_a_slot_marks_itself_healthy_and_publishes_the_rollback() {
    const NAME: &str = "an_agent_from_a_slot_marks_itself_healthy_and_publishes_the_rollback";
    if !privileged(NAME) {
        return;
    }
    let mut node = Node::in_farm(256, FARM, 1);
    let farmer = SecretKey::from_seed([9; 32]);
    node.publish(&farm_record(&farmer));
    // PID 1 went back from 0.3.0 to 0.2.0, and starts 0.2.0's agent.
    let dir = node.state().join("slots");
    let state = SlotState::RolledBack {
        version: "0.3.0".into(),
        reason: RollbackReason {
            cause: "exited".into(),
            detail: Some("exit code 3".into()),
            log_tail: vec!["fatal: cannot register".into()],
        },
        running: Some("0.2.0".into()),
    };
    slots::store(&dir, &state).unwrap();
    // The environment is the agent's (PID 1 sets it), for this node only.
    let env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    std::env::set_var(slots::SLOT_ENV, "0.2.0");
    let key = node.start();
    std::env::remove_var(slots::SLOT_ENV);
    drop(env);

    let rollback = node.wait_for("rollback record", || node.get(&NotaryKey::rollback(&key)));
    assert_eq!(rollback.author, key, "signed by the node");
    assert_eq!(rollback.body["rollback"]["version"], "0.3.0");
    assert_eq!(rollback.body["rollback"]["cause"], "exited");
    assert_eq!(rollback.body["rollback"]["detail"], "exit code 3");
    assert_eq!(
        rollback.body["rollback"]["log_tail"][0],
        "fatal: cannot register"
    );
    assert_eq!(rollback.body["rollback"]["running"], "0.2.0");

    let mark = node.wait_for("health mark", || {
        std::fs::read_to_string(dir.join(slots::HEALTH_MARK)).ok()
    });
    assert_eq!(mark, "0.2.0");
    // The mark came after the first heartbeat was in the notary.
    let beat = node.get(&NotaryKey::heartbeat(&key)).expect("a heartbeat");
    assert_eq!(beat.author, key);
    assert!(
        node.log().contains("the health mark is written"),
        "{}",
        node.log()
    );
}

/// A version above any zosd these tests build.
const NEWER: &str = "99.0.0";

/// A node of `FARM` beating every second, pinning `release_key`, with the farm in its
/// notary; started.
fn follower(release_key: &SecretKey, farmer: &SecretKey) -> (Node, zos_contract::PublicKey) {
    let mut node = Node::with_lines(
        256,
        &format!(
            "farm = \"{FARM}\"\nheartbeat_secs = 1\n[release]\nkeys = [\"{}\"]\n",
            release_key.public()
        ),
    );
    node.publish(&farm_record(farmer));
    let env = ENV.lock().unwrap_or_else(|e| e.into_inner());
    assert!(std::env::var_os(slots::SLOT_ENV).is_none());
    let key = node.start();
    drop(env);
    (node, key)
}

/// A real agent part: a file packed as a flist into a `dir://` store under the node's
/// store root, the `.fl` signed by a publisher.
fn agent_part(node: &Node) -> FlistRef {
    let root = node.dir.path().join("release");
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let bin = src.join("zosd");
    let mut agent = b"#!/bin/false\n".to_vec();
    agent.extend((0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    std::fs::write(&bin, &agent).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let store = format!("dir://{}", root.join("store").display());
    let fl = root.join("zosd.fl");
    pack(
        &src,
        &fl,
        &Router::parse(std::slice::from_ref(&store)).unwrap(),
        &PackOptions::default(),
    )
    .unwrap();
    let publisher = SecretKey::from_seed([11; 32]);
    zos_flist::sign_file(&fl, &publisher).unwrap();
    FlistRef {
        url: format!("dir://{}", fl.display()),
        sha256: Digest::of(&std::fs::read(&fl).unwrap()),
        stores: vec![store],
        publishers: vec![publisher.public()],
    }
}

/// `releases/<NEWER>`: the agent part signed by `signer`; then the farmer's rollout to
/// it, one wave of every node.
fn publish_release_and_rollout(node: &Node, signer: &SecretKey, farmer: &SecretKey) {
    let release = Release {
        version: NEWER.parse().unwrap(),
        parts: Parts {
            zosd: agent_part(node),
            qemu: None,
        },
        rollback: false,
        signed_at: 1_780_000_000,
        key: signer.public(),
    };
    let signed = SignedRelease::sign(release, signer);
    node.publish(
        &Record::sign(
            &NotaryKey::release(NEWER).unwrap(),
            signed.to_value(),
            signer,
        )
        .unwrap(),
    );
    let rollout = Rollout {
        farm: FARM.into(),
        version: NEWER.parse().unwrap(),
        waves: vec![Wave::Percent(100)],
        issued_at: 1_780_000_000,
        farmer: farmer.public(),
    };
    let signed = SignedRollout::sign(rollout, farmer);
    node.publish(
        &Record::sign(
            &NotaryKey::rollout(FARM).unwrap(),
            signed.to_value(),
            farmer,
        )
        .unwrap(),
    );
}

/// What is in the node's slots directory (none: empty).
fn slots_entries(node: &Node) -> Vec<String> {
    std::fs::read_dir(node.state().join("slots"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_rollout_to_a_signed_newer_release_installs_its_slot_and_says_the_switch_needs_pid1() {
    const NAME: &str =
        "a_rollout_to_a_signed_newer_release_installs_its_slot_and_says_the_switch_needs_pid1";
    if !privileged(NAME) {
        return;
    }
    let release_key = SecretKey::from_seed([22; 32]);
    let farmer = SecretKey::from_seed([9; 32]);
    let (node, key) = follower(&release_key, &farmer);
    publish_release_and_rollout(&node, &release_key, &farmer);

    let report = node.wait_for("upgrade record", || node.get(&NotaryKey::upgrade(&key)));
    assert_eq!(report.author, key, "signed by the node");
    assert_eq!(report.body["outcome"], "switching", "{}", report.body);
    assert_eq!(report.body["version"], NEWER);
    let installed = node.state().join("slots").join(NEWER).join("zosd/zosd");
    assert!(installed.exists(), "slot: {:?}", slots_entries(&node));
    node.wait_for("the switch refused in agent mode", || {
        node.log()
            .contains("the switch is not available in agent mode")
            .then_some(())
    });
    // The agent keeps running.
    let (mut node, key) = (node, key);
    assert!(
        node.zosd.as_mut().unwrap().try_wait().unwrap().is_none(),
        "zosd exited; log:\n{}",
        node.log()
    );
    assert!(node.get(&NotaryKey::heartbeat(&key)).is_some());
}

#[test]
fn a_release_signed_by_an_unknown_key_is_refused_published_and_nothing_installed() {
    const NAME: &str =
        "a_release_signed_by_an_unknown_key_is_refused_published_and_nothing_installed";
    if !privileged(NAME) {
        return;
    }
    let release_key = SecretKey::from_seed([22; 32]);
    let stranger = SecretKey::from_seed([33; 32]);
    let farmer = SecretKey::from_seed([9; 32]);
    let (node, key) = follower(&release_key, &farmer);
    publish_release_and_rollout(&node, &stranger, &farmer);

    let report = node.wait_for("upgrade record", || node.get(&NotaryKey::upgrade(&key)));
    assert_eq!(report.author, key, "signed by the node");
    assert_eq!(report.body["outcome"], "refused", "{}", report.body);
    assert_eq!(report.body["code"], "unknown_key", "{}", report.body);
    let left = slots_entries(&node);
    assert!(
        !left
            .iter()
            .any(|e| e.contains(NEWER) || e == slots::SWITCH_REQUEST),
        "installed or asked: {left:?}"
    );
    assert!(
        !node.log().contains("the switch is not available"),
        "{}",
        node.log()
    );
}
