//! The agent's side of PID 1's slots on the real kernel (the `zosd run` node of
//! tests/common): an agent started from a slot (`ZOSD_SLOT`, as PID 1 starts a trial)
//! writes the health mark once it is registered, serving and its first heartbeat is in
//! the notary; an agent that finds PID 1's state saying `rolled_back` publishes the
//! node's signed rollback record with the reason.

mod common;

use std::time::{Duration, Instant};

use common::*;
use zos_contract::SecretKey;
use zos_init::slots::{self, RollbackReason, SlotState};
use zos_notary::{Notary, NotaryKey, Record};
use zos_registry::Farm;

const FARM: &str = "zt-farm-upgrade";

fn farm_record(farmer: &SecretKey) -> Record {
    let now = zos_registry::now();
    Farm::create_or_update(None, FARM, "test farm", farmer.public(), now)
        .unwrap()
        .sign(farmer, now)
        .unwrap()
}

fn get(node: &Node, key: &NotaryKey) -> Option<Record> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(node.notary.get(key)).unwrap()
}

fn wait_for<T>(node: &Node, what: &str, f: impl Fn() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no {what}; zosd log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
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
    // The only test in this binary: the environment is the agent's (PID 1 sets it).
    std::env::set_var(slots::SLOT_ENV, "0.2.0");
    let key = node.start();

    let rollback = wait_for(&node, "rollback record", || {
        get(&node, &NotaryKey::rollback(&key))
    });
    assert_eq!(rollback.author, key, "signed by the node");
    assert_eq!(rollback.body["rollback"]["version"], "0.3.0");
    assert_eq!(rollback.body["rollback"]["cause"], "exited");
    assert_eq!(rollback.body["rollback"]["detail"], "exit code 3");
    assert_eq!(
        rollback.body["rollback"]["log_tail"][0],
        "fatal: cannot register"
    );
    assert_eq!(rollback.body["rollback"]["running"], "0.2.0");

    let mark = wait_for(&node, "health mark", || {
        std::fs::read_to_string(dir.join(slots::HEALTH_MARK)).ok()
    });
    assert_eq!(mark, "0.2.0");
    // The mark came after the first heartbeat was in the notary.
    let beat = get(&node, &NotaryKey::heartbeat(&key)).expect("a heartbeat");
    assert_eq!(beat.author, key);
    assert!(
        node.log().contains("the health mark is written"),
        "{}",
        node.log()
    );
}
