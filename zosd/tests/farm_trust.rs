//! M8 (docs/security.md): a farm record that names its trusted blueprint authors makes
//! its nodes refuse every other author's blueprint. Before, a node booted into a farm
//! (PID 1 writes its node.toml with no `[trust]`) ran any well-signed blueprint: the farmer
//! had no way to say which IT experts their nodes serve.
//!
//! The attack: a contract whose blueprint is signed by an expert the farm does not name.
//! It is refused `blueprint_author_untrusted` and nothing is created; once the farmer
//! names that expert (and the agent restarts, reading the farm again), the same contract
//! runs: the refusal came from the farm's list and nothing else.

mod common;

use std::time::{Duration, Instant};

use common::*;
use zos_contract::{PublicKey, SecretKey};
use zos_notary::Record;
use zos_registry::Farm;

const FARM: &str = "zt-farm-trust";

fn farm_record(farmer: &SecretKey, authors: &[PublicKey]) -> Record {
    let now = zos_registry::now();
    Farm::create_or_update(None, FARM, "trusting farm", farmer.public(), now)
        .unwrap()
        .with_blueprint_authors(authors.iter().copied())
        .unwrap()
        .sign(farmer, now)
        .unwrap()
}

/// Volumes under the node's pools (none: nothing was provisioned).
fn volumes(node: &Node) -> Vec<std::ffi::OsString> {
    let pools = node.dir.path().join("pools");
    std::fs::read_dir(pools)
        .map(|d| {
            d.flatten()
                .flat_map(|pool| {
                    std::fs::read_dir(pool.path().join("volumes"))
                        .map(|v| v.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_farm_that_names_its_blueprint_authors_refuses_any_other() {
    let test = "a_farm_that_names_its_blueprint_authors_refuses_any_other";
    if !privileged(test) {
        return;
    }
    let p = people();
    let farmer = SecretKey::from_seed([31; 32]);
    let other_expert = SecretKey::from_seed([32; 32]).public();
    let mut node = Node::in_farm(512, FARM, 60);
    node.publish(&farm_record(&farmer, &[other_expert]));
    let key = node.start();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let id = node.id("trust");
    node.publish(&record(&p, key, &contract(&p, key, &id, 1, &flist, 64)));

    let s = node.wait_status(&id, "refused", |s| s["state"] == "refused");
    let codes: Vec<&str> = s["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["code"].as_str())
        .collect();
    assert_eq!(codes, ["blueprint_author_untrusted"], "{s:#}");
    assert!(node.container_pid(&format!("{id}.app")).is_none());
    assert!(volumes(&node).is_empty(), "{:?}", volumes(&node));

    // The farmer names the contract's expert; the agent reads the farm at its next start
    // and the very same contract runs.
    node.publish(&farm_record(&farmer, &[other_expert, p.expert.public()]));
    node.kill9();
    node.start();
    node.wait_status(&id, "ok", |s| s["state"] == "ok");
    let deadline = Instant::now() + WAIT;
    while node.container_pid(&format!("{id}.app")).is_none() {
        assert!(Instant::now() < deadline, "no container: {}", node.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}
