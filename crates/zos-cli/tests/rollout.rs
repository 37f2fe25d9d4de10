//! The farmer's side of an upgrade with the real `zos` binary on a real `dir://` notary:
//! `zos release publish` stores a signed release at `releases/<version>` and refuses an
//! unsigned or altered one with nothing written; `zos farm rollout` signs the rollout
//! as the farmer (another key, or malformed waves: refused, nothing written); `zos farm
//! show` prints the rollout, each node's wave and reported version, and why it halted
//! (a node's rollback of the version, a node's refusal of the release).

mod common;

use common::{ok, refused, stdout};

use serde_json::{json, Value};
use zos_contract::deployment::FlistRef;
use zos_contract::{Digest, SecretKey};
use zos_notary::{Notary, NotaryKey, Record};
use zos_registry::{ContractCounts, Heartbeat, NodeResources, Registration, Usage};
use zos_release::{Parts, Release, SignedRelease, SignedRollout};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

fn put(url: &str, record: &Record) {
    block_on(zos_notary::open(url).unwrap().put(record)).unwrap();
}

fn get(url: &str, key: &NotaryKey) -> Option<Record> {
    block_on(zos_notary::open(url).unwrap().get(key)).unwrap()
}

fn registration(version: &str) -> Registration {
    Registration {
        farm: "farm-1".into(),
        version: version.into(),
        capacity: NodeResources::default(),
        offered: None,
        nics: vec![],
        dmi: Default::default(),
        registered_at: zos_registry::now(),
    }
}

fn beat(url: &str, node: &SecretKey) {
    let now = zos_registry::now();
    let mut hb = Heartbeat {
        uptime_secs: 1,
        reserved: NodeResources::default(),
        used: Usage::default(),
        contracts: ContractCounts::default(),
        workloads: 0,
        listening: vec![],
        listening_total: 0,
        time: now,
    };
    hb.set_listening(vec![]);
    put(url, &hb.sign(node, now).unwrap());
}

fn release(version: &str, key: &SecretKey) -> Release {
    Release {
        version: version.parse().unwrap(),
        parts: Parts {
            zosd: FlistRef {
                url: "https://hub.example/releases/zosd.fl".into(),
                sha256: Digest::of(b"zosd.fl"),
                stores: vec!["https://hub.example/store".into()],
                publishers: vec![key.public()],
            },
            qemu: None,
        },
        rollback: false,
        signed_at: 1_780_000_000,
        key: key.public(),
    }
}

#[test]
fn a_farmer_publishes_a_release_rolls_it_out_in_waves_and_sees_why_it_halted() {
    let tmp = zos_testkit::tempdir("cli-rollout");
    let dir = tmp.path();
    let url = format!("dir://{}", dir.join("notary").display());
    let url = url.as_str();
    ok(dir, &["key", "new", "--out", "farmer.key"]);
    ok(dir, &["key", "new", "--out", "other.key"]);
    ok(
        dir,
        &[
            "farm",
            "create",
            "farm-1",
            "--name",
            "rack",
            "--key",
            "farmer.key",
            "--notary",
            url,
        ],
    );
    let farmer = SecretKey::load(&dir.join("farmer.key")).unwrap();
    let release_key = SecretKey::from_seed([22; 32]);
    let at = NotaryKey::release("0.2.0").unwrap();

    // Releases: unsigned, and altered after signing, are refused with nothing written.
    let unsigned = SignedRelease {
        release: release("0.2.0", &release_key),
        signature: None,
    };
    std::fs::write(dir.join("unsigned.json"), unsigned.to_value().to_string()).unwrap();
    let out = refused(
        dir,
        &["release", "publish", "unsigned.json", "--notary", url],
    );
    assert!(out.contains("unsigned"), "{out}");
    let mut altered = SignedRelease::sign(release("0.2.0", &release_key), &release_key);
    altered.release.version = "0.3.0".parse().unwrap();
    std::fs::write(dir.join("altered.json"), altered.to_value().to_string()).unwrap();
    let out = refused(
        dir,
        &["release", "publish", "altered.json", "--notary", url],
    );
    assert!(out.contains("does not verify"), "{out}");
    assert!(get(url, &at).is_none());
    assert!(get(url, &NotaryKey::release("0.3.0").unwrap()).is_none());
    // A signed one is stored as it is.
    let signed = SignedRelease::sign(release("0.2.0", &release_key), &release_key);
    std::fs::write(dir.join("release.json"), signed.to_value().to_string()).unwrap();
    let out = ok(
        dir,
        &["release", "publish", "release.json", "--notary", url],
    );
    assert!(out.contains("published release 0.2.0"), "{out}");
    assert_eq!(get(url, &at).unwrap().body, signed.to_value());

    // Three nodes: a runs 0.2.0 and beats, b rolled back from 0.2.0, c refused it.
    let nodes: Vec<SecretKey> = (41..44).map(|s| SecretKey::from_seed([s; 32])).collect();
    let now = zos_registry::now();
    for (n, v) in nodes.iter().zip(["0.2.0", "0.1.0", "0.1.0"]) {
        put(url, &registration(v).sign(n, now).unwrap());
        beat(url, n);
    }
    let mut sorted: Vec<_> = nodes.iter().map(|n| n.public()).collect();
    sorted.sort();

    // A rollout by a key that is not the farmer's, or with malformed waves: refused,
    // nothing written.
    let rollout_at = NotaryKey::rollout("farm-1").unwrap();
    let args = |waves: &'static str, key: &'static str| {
        vec![
            "farm", "rollout", "farm-1", "0.2.0", "--waves", waves, "--key", key, "--notary", url,
        ]
    };
    let out = refused(dir, &args("10%,50%,100%", "other.key"));
    assert!(out.contains("is not the farmer of farm-1"), "{out}");
    let out = refused(dir, &args("50%,10%", "farmer.key"));
    assert!(out.contains("refused"), "{out}");
    let out = refused(dir, &args("10%,x", "farmer.key"));
    assert!(out.contains("not a node key"), "{out}");
    assert!(get(url, &rollout_at).is_none());

    // The farmer's rollout: the first node by key alone, then 50 %, then the rest.
    let first = sorted[0].to_string();
    let waves = format!("{first},50%,100%");
    let out = ok(
        dir,
        &[
            "farm",
            "rollout",
            "farm-1",
            "0.2.0",
            "--waves",
            &waves,
            "--key",
            "farmer.key",
            "--notary",
            url,
        ],
    );
    assert!(out.contains("published at rollouts/farm-1"), "{out}");
    let record = get(url, &rollout_at).expect("the rollout");
    let rollout =
        SignedRollout::from_bytes(record.body.to_string().as_bytes(), &Default::default()).unwrap();
    let r = rollout.verify("farm-1", &farmer.public()).unwrap();
    assert_eq!(r.version.to_string(), "0.2.0");
    assert_eq!(r.waves.len(), 3);

    // b rolls back from 0.2.0; c refuses the release (both signed by the node).
    let (b, c) = (&nodes[1], &nodes[2]);
    put(
        url,
        &Record::sign(
            &NotaryKey::rollback(&b.public()),
            json!({"rollback": {"version": "0.2.0", "cause": "exited", "detail": "exit code 3",
                "log_tail": ["fatal"], "running": "0.1.0"}}),
            b,
        )
        .unwrap(),
    );
    put(
        url,
        &Record::sign(
            &NotaryKey::upgrade(&c.public()),
            json!({"outcome": "refused", "version": "0.2.0", "code": "unknown_key",
                "message": "not a pinned key"}),
            c,
        )
        .unwrap(),
    );

    let shown: Value = serde_json::from_str(&stdout(
        dir,
        &["farm", "show", "farm-1", "--notary", url, "--json"],
    ))
    .unwrap();
    let ro = &shown["rollout"];
    assert_eq!(ro["rollout"]["version"], "0.2.0");
    assert_eq!(ro["refused"], Value::Null);
    let wave_of = |k: &str| {
        ro["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == k)
            .unwrap()
            .clone()
    };
    assert_eq!(wave_of(&first)["wave"], 0);
    assert_eq!(wave_of(&sorted[1].to_string())["wave"], 1);
    assert_eq!(wave_of(&sorted[2].to_string())["wave"], 2);
    let a = wave_of(&nodes[0].public().to_string());
    assert_eq!(a["version"], "0.2.0");
    assert_eq!(a["upgraded"], true);
    assert_eq!(wave_of(&b.public().to_string())["upgraded"], false);
    let halted: Vec<String> = serde_json::from_value(ro["halted"].clone()).unwrap();
    assert_eq!(halted.len(), 2, "{halted:?}");
    assert!(halted.iter().any(|h| h.contains(&format!(
        "node {} rolled back from 0.2.0: exited (exit code 3)",
        b.public()
    ))));
    assert!(halted.iter().any(|h| h.contains(&format!(
        "node {} refused release 0.2.0: unknown_key",
        c.public()
    ))));

    let text = ok(dir, &["farm", "show", "farm-1", "--notary", url]);
    assert!(
        text.contains(&format!("rollout   0.2.0 in waves {first},50%,100%")),
        "{text}"
    );
    assert!(text.contains(&format!("wave 0  {first}  runs")), "{text}");
    // Each node's state about this rollout's version.
    assert!(
        text.contains(&format!("{}  runs 0.2.0  upgraded", nodes[0].public())),
        "{text}"
    );
    assert!(
        text.contains(&format!("{}  runs 0.1.0  rolled back", b.public())),
        "{text}"
    );
    assert!(text.contains("  refused (unknown_key)"), "{text}");
    assert!(
        text.contains(&format!(
            "halted: node {} rolled back from 0.2.0",
            b.public()
        )),
        "{text}"
    );

    // A rollback record in a node's name by another key is not stored: it halts nothing.
    let forged = SecretKey::from_seed([77; 32]);
    let forged_rec = Record::sign(
        &NotaryKey::rollback(&nodes[0].public()),
        json!({"rollback": {"version": "0.2.0", "cause": "forged"}}),
        &forged,
    )
    .unwrap();
    // The notary itself refuses node-owned keys by another author.
    assert!(block_on(zos_notary::open(url).unwrap().put(&forged_rec)).is_err());
    let again: Value = serde_json::from_str(&stdout(
        dir,
        &["farm", "show", "farm-1", "--notary", url, "--json"],
    ))
    .unwrap();
    assert_eq!(again["rollout"]["halted"].as_array().unwrap().len(), 2);
}
