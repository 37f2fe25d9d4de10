//! Farms and nodes with the real `zos` binary, on a `dir://` notary and on a real etcd
//! server: `zos farm create` (signed by the farmer; a rename by the same farmer; a
//! takeover by another key refused), `zos farm show`, and `zos node list` over
//! registrations and heartbeats signed as a node signs them (zos-registry), with a
//! forged registration skipped.

mod common;

use common::{ok, refused};

use serde_json::Value;
use zos_contract::SecretKey;
use zos_notary::{Notary, NotaryKey, Record};
use zos_registry::{ContractCounts, Dmi, Heartbeat, Nic, NodeResources, Registration, Usage};

fn put(url: &str, record: &Record) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(zos_notary::open(url).unwrap().put(record))
        .unwrap();
}

fn registration(farm: &str) -> Registration {
    Registration {
        farm: farm.into(),
        version: "0.1.0".into(),
        capacity: NodeResources {
            cpus: 4,
            memory_bytes: 8 << 30,
            ssd_bytes: 100 << 30,
            hdd_bytes: 0,
        },
        offered: None,
        nics: vec![Nic {
            name: "eth0".into(),
            mac: "52:54:00:00:00:01".into(),
        }],
        dmi: Dmi::default(),
        registered_at: zos_registry::now(),
    }
}

fn flow(url: &str) {
    let tmp = zos_testkit::tempdir("cli-farm");
    let dir = tmp.path();
    let farmer = ok(dir, &["key", "new", "--out", "farmer.key"]);
    ok(dir, &["key", "new", "--out", "other.key"]);
    let farmer = farmer.trim();

    // No farm yet.
    let missing = refused(dir, &["farm", "show", "farm-1", "--notary", url]);
    assert!(missing.contains("no farm"), "{missing}");

    // Created, signed by the farmer.
    let created = ok(
        dir,
        &[
            "farm",
            "create",
            "farm-1",
            "--name",
            "Ghent rack 3",
            "--key",
            "farmer.key",
            "--notary",
            url,
        ],
    );
    assert!(created.starts_with("created farm farm-1"), "{created}");
    let shown: Value = serde_json::from_str(&ok(
        dir,
        &["farm", "show", "farm-1", "--notary", url, "--json"],
    ))
    .unwrap();
    assert_eq!(shown["farm"]["name"], "Ghent rack 3");
    assert_eq!(shown["farm"]["farmer"], farmer);
    let created_at = shown["farm"]["created"].clone();

    // Renamed by the same farmer (created kept); another key cannot take it over.
    let updated = ok(
        dir,
        &[
            "farm",
            "create",
            "farm-1",
            "--name",
            "Ghent rack 4",
            "--key",
            "farmer.key",
            "--notary",
            url,
        ],
    );
    assert!(updated.starts_with("updated farm farm-1"), "{updated}");
    let takeover = refused(
        dir,
        &[
            "farm",
            "create",
            "farm-1",
            "--name",
            "mine",
            "--key",
            "other.key",
            "--notary",
            url,
        ],
    );
    assert!(takeover.contains("belongs to farmer"), "{takeover}");
    let shown: Value = serde_json::from_str(&ok(
        dir,
        &["farm", "show", "farm-1", "--notary", url, "--json"],
    ))
    .unwrap();
    assert_eq!(shown["farm"]["name"], "Ghent rack 4");
    assert_eq!(shown["farm"]["created"], created_at);
    assert_eq!(shown["nodes"], Value::Array(vec![]));
    let bad_id = refused(
        dir,
        &[
            "farm",
            "create",
            "../x",
            "--name",
            "n",
            "--key",
            "farmer.key",
            "--notary",
            url,
        ],
    );
    assert!(bad_id.contains("farm id"), "{bad_id}");

    // A farm record in the farmer's name signed by another key: the notary stores it
    // (it checks envelopes only), readers refuse it, the farmer replaces it.
    let other = SecretKey::from_seed([33; 32]);
    let forged_farm = Record::sign(
        &NotaryKey::farm("farm-2").unwrap(),
        serde_json::json!({"id": "farm-2", "name": "forged", "farmer": farmer, "created": 1}),
        &other,
    )
    .unwrap();
    put(url, &forged_farm);
    let refused_show = refused(dir, &["farm", "show", "farm-2", "--notary", url]);
    assert!(
        refused_show.contains("must be signed by its farmer"),
        "{refused_show}"
    );
    let replaced = ok(
        dir,
        &[
            "farm",
            "create",
            "farm-2",
            "--name",
            "real",
            "--key",
            "farmer.key",
            "--notary",
            url,
        ],
    );
    assert!(replaced.contains("replacing it"), "{replaced}");
    assert!(ok(dir, &["farm", "show", "farm-2", "--notary", url]).contains("name      real"));

    // Two nodes register (one in a farm the notary does not hold); one beats.
    let (a, b) = (
        SecretKey::from_seed([31; 32]),
        SecretKey::from_seed([32; 32]),
    );
    let now = zos_registry::now();
    put(url, &registration("farm-1").sign(&a, now).unwrap());
    put(url, &registration("farm-9").sign(&b, now).unwrap());
    let mut hb = Heartbeat {
        uptime_secs: 42,
        reserved: NodeResources::default(),
        used: Usage::default(),
        contracts: ContractCounts {
            running: 1,
            ..Default::default()
        },
        workloads: 1,
        listening: vec![],
        listening_total: 0,
        time: now - 5,
    };
    hb.set_listening(vec![]);
    put(url, &hb.sign(&a, now).unwrap());
    // A registration for node a signed by node b: the notary refuses to store it.
    let forged = Record::sign(
        &NotaryKey::registration(&a.public()),
        serde_json::to_value(registration("farm-9")).unwrap(),
        &b,
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(rt
        .block_on(zos_notary::open(url).unwrap().put(&forged))
        .is_err());

    let all: Value =
        serde_json::from_str(&ok(dir, &["node", "list", "--notary", url, "--json"])).unwrap();
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    let row_a = all
        .iter()
        .find(|r| r["node"] == a.public().to_hex())
        .unwrap();
    assert_eq!(row_a["farm"], "farm-1");
    assert_eq!(row_a["farm_known"], true);
    assert_eq!(row_a["registration"]["capacity"]["cpus"], 4);
    assert_eq!(row_a["heartbeat"]["listening_total"], 0);
    assert!(row_a["heartbeat_age_secs"].as_u64().unwrap() >= 5);
    let row_b = all
        .iter()
        .find(|r| r["node"] == b.public().to_hex())
        .unwrap();
    assert_eq!(row_b["farm_known"], false);
    assert_eq!(row_b["heartbeat"], Value::Null);

    let farm1: Value = serde_json::from_str(&ok(
        dir,
        &[
            "node", "list", "--farm", "farm-1", "--notary", url, "--json",
        ],
    ))
    .unwrap();
    assert_eq!(farm1.as_array().unwrap().len(), 1);
    let text = ok(dir, &["node", "list", "--notary", url]);
    assert!(text.contains(&a.public().to_hex()), "{text}");
    assert!(text.contains("farm-9 (not in the notary)"), "{text}");
    assert!(text.contains("0 listening socket(s)"), "{text}");
    assert!(text.contains("4 cpu, 8.0 GiB mem"), "{text}");
    let show = ok(dir, &["farm", "show", "farm-1", "--notary", url]);
    assert!(show.contains("nodes     1"), "{show}");

    // Where a node's logs go: nowhere until the farmer names a destination.
    let a_hex = a.public().to_hex();
    let logs = ok(dir, &["node", "logs", &a_hex, "--notary", url]);
    assert!(logs.contains("names no log destination"), "{logs}");
    let bad = refused(
        dir,
        &[
            "farm",
            "create",
            "farm-1",
            "--name",
            "Ghent rack 4",
            "--key",
            "farmer.key",
            "--logs",
            "syslog+tls://logs.example:6514",
            "--notary",
            url,
        ],
    );
    assert!(bad.contains("needs ca_pem"), "{bad}");
    ok(
        dir,
        &[
            "farm",
            "create",
            "farm-1",
            "--name",
            "Ghent rack 4",
            "--key",
            "farmer.key",
            "--logs",
            "syslog+tcp://logs.example:514",
            "--metrics",
            "http://10.0.0.9:9090/api/v1/write",
            "--notary",
            url,
        ],
    );
    let logs: Value = serde_json::from_str(&ok(
        dir,
        &["node", "logs", &a_hex, "--notary", url, "--json"],
    ))
    .unwrap();
    assert_eq!(
        logs["destination"], "syslog+tcp://logs.example:514",
        "{logs}"
    );
    assert_eq!(logs["farm"], "farm-1", "{logs}");
    // A rename keeps them; --no-telemetry drops them.
    ok(
        dir,
        &[
            "farm",
            "create",
            "farm-1",
            "--name",
            "r5",
            "--key",
            "farmer.key",
            "--notary",
            url,
        ],
    );
    let shown: Value = serde_json::from_str(&ok(
        dir,
        &["farm", "show", "farm-1", "--notary", url, "--json"],
    ))
    .unwrap();
    assert_eq!(
        shown["farm"]["metrics"]["url"],
        "http://10.0.0.9:9090/api/v1/write"
    );
    ok(
        dir,
        &[
            "farm",
            "create",
            "farm-1",
            "--name",
            "r5",
            "--key",
            "farmer.key",
            "--no-telemetry",
            "--notary",
            url,
        ],
    );
    let logs = ok(dir, &["node", "logs", &a_hex, "--notary", url]);
    assert!(logs.contains("names no log destination"), "{logs}");
}

#[test]
fn farms_and_nodes_on_a_directory_notary() {
    let store = zos_testkit::tempdir("notary");
    flow(&format!("dir://{}", store.path().display()));
}

#[test]
fn farms_and_nodes_on_etcd() {
    let server = zos_testkit::etcd::Etcd::temp();
    flow(&server.url("zt-cli-farm"));
}
