//! `zos contract new` with a placement (--farm, --replicas, --orchestrator, --failover,
//! --after-s, --min-ssd-gib) and `zos contract verify` printing it, with the real `zos`
//! binary; out-of-range placements are refused before anything is written. Published, it
//! is placed by `zos bot run --once` on two distinct nodes of its farm (simulated: their
//! signed registrations, heartbeats and liveness records), and a second round writes
//! nothing. Its owner cancels it at the farm's key; a stranger cannot.

mod common;

use common::{ok, refused, zos};
use std::path::Path;

use serde_json::Value;

#[test]
fn a_placement_contract_is_made_signed_verified_and_printed() {
    let tmp = zos_testkit::tempdir("cli-placement");
    let dir = tmp.path();
    let key = |who: &str| {
        ok(dir, &["key", "new", "--out", &format!("{who}.key")])
            .trim()
            .to_string()
    };
    let (owner, bot, node) = (key("owner"), key("bot"), key("node"));
    key("expert");
    let blueprint =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/crm.blueprint.toml");
    ok(
        dir,
        &[
            "blueprint",
            "sign",
            blueprint.to_str().unwrap(),
            "--key",
            "expert.key",
            "-o",
            "crm.blueprint.json",
        ],
    );
    let new = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "contract",
            "new",
            "--blueprint",
            "crm.blueprint.json",
            "--owner",
            &owner,
            "--id",
            "crm-grid",
            "-o",
            out,
        ];
        args.extend_from_slice(extra);
        zos(dir, &args)
    };
    let placement = [
        "--farm",
        "7",
        "--replicas",
        "2",
        "--orchestrator",
        &bot,
        "--failover",
        "stay",
        "--after-s",
        "120",
        "--min-ssd-gib",
        "10",
    ];
    let (made, out) = new("c.json", &placement);
    assert!(made, "{out}");
    let body: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("c.json")).unwrap()).unwrap();
    assert!(body["contract"].get("nodes").is_none(), "{body}");
    assert_eq!(
        body["contract"]["placement"],
        serde_json::json!({"farm": "7", "replicas": 2, "orchestrator": bot,
            "failover": {"mode": "stay", "after_s": 120},
            "constraints": {"min_ssd_gib": 10}})
    );
    ok(dir, &["contract", "sign", "c.json", "--key", "owner.key"]);

    // Verified for no node: OK, and the placement printed.
    let text = ok(dir, &["contract", "verify", "c.json"]);
    assert!(text.contains("OK"), "{text}");
    assert!(
        text.contains(&format!(
            "placement farm 7, 2 replica(s), orchestrator {bot}"
        )),
        "{text}"
    );
    assert!(
        text.contains("failover  stay after 120 s (a node fences its replicas at 60 s)"),
        "{text}"
    );
    assert!(text.contains("requires  SSD >= 10 GiB free"), "{text}");
    let json: Value =
        serde_json::from_str(&ok(dir, &["contract", "verify", "c.json", "--json"])).unwrap();
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["placement"]["replicas"], 2, "{json}");
    assert_eq!(json["placement"]["failover"]["mode"], "stay", "{json}");

    // Verified as a node would: no assignment, no deployment.
    let refusal = refused(dir, &["contract", "verify", "c.json", "--node", &node]);
    assert!(refusal.contains("[unassigned]"), "{refusal}");

    // Published under its farm, for its orchestrator; never under a node.
    let notary = dir.join("notary");
    std::fs::create_dir(&notary).unwrap();
    let url = format!("dir://{}", notary.display());
    let publish = |file: &str, key: &str| {
        zos(
            dir,
            &["contract", "publish", file, "--key", key, "--notary", &url],
        )
    };
    let (done, published) = publish("c.json", "owner.key");
    assert!(done, "{published}");
    assert!(
        published.contains("published crm-grid version 1 to farm 7"),
        "{published}"
    );
    let written: Vec<String> = walk(&notary)
        .iter()
        .map(|p| p.strip_prefix(&notary).unwrap().display().to_string())
        .filter(|p| !p.starts_with("blueprints/"))
        .collect();
    assert_eq!(written, ["grid/7/contracts/crm-grid.json"], "{written:?}");
    let record = notary.join("grid/7/contracts/crm-grid.json");
    let before = std::fs::read(&record).unwrap();
    // A stranger cannot publish it; nothing is written.
    key("stranger");
    let (done, refusal) = publish("c.json", "stranger.key");
    assert!(!done, "{refusal}");
    assert!(
        refusal.contains("neither the owner nor a stakeholder"),
        "{refusal}"
    );
    assert_eq!(std::fs::read(&record).unwrap(), before);
    // Version 2 supersedes it; version 1 is then a replay, and writes nothing.
    let mut v2: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("c.json")).unwrap()).unwrap();
    v2["contract"]["version"] = 2.into();
    v2["signatures"] = serde_json::json!([]);
    std::fs::write(dir.join("c2.json"), v2.to_string()).unwrap();
    ok(dir, &["contract", "sign", "c2.json", "--key", "owner.key"]);
    let (done, out) = publish("c2.json", "owner.key");
    assert!(done, "{out}");
    let after = std::fs::read(&record).unwrap();
    assert!(String::from_utf8_lossy(&after).contains("\"version\":2"));
    let (done, refusal) = publish("c.json", "owner.key");
    assert!(!done, "{refusal}");
    assert!(
        refusal.contains("replay: farm 7 holds version 2"),
        "{refusal}"
    );
    assert_eq!(std::fs::read(&record).unwrap(), after);

    // The orchestrator places version 2 on two of the farm's nodes: one round with
    // --once, as a script would; a second round finds nothing to do.
    let farm_nodes: Vec<zos_contract::SecretKey> = (40..43)
        .map(|n| zos_contract::SecretKey::from_seed([n; 32]))
        .collect();
    let client = zos_notary::open(&url).unwrap();
    // Multi-threaded: the nodes' liveness tasks renew on their own while the test runs
    // the `zos` binary.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut alive = Vec::new();
    for n in &farm_nodes {
        let capacity = zos_registry::NodeResources {
            cpus: 8,
            memory_bytes: 64 << 30,
            ssd_bytes: 1 << 40,
            hdd_bytes: 0,
        };
        let reg = zos_registry::Registration {
            farm: "7".into(),
            version: "test".into(),
            capacity,
            offered: None,
            nics: vec![],
            dmi: Default::default(),
            registered_at: 1,
        };
        let hb = zos_registry::Heartbeat {
            uptime_secs: 1,
            reserved: zos_registry::NodeResources {
                cpus: 0,
                memory_bytes: 0,
                ssd_bytes: 0,
                hdd_bytes: 0,
            },
            used: Default::default(),
            contracts: Default::default(),
            workloads: 0,
            listening: vec![],
            listening_total: 0,
            time: 1,
        };
        rt.block_on(zos_notary::Notary::put(&client, &reg.sign(n, 1).unwrap()))
            .unwrap();
        rt.block_on(zos_notary::Notary::put(&client, &hb.sign(n, 1).unwrap()))
            .unwrap();
        // The node's liveness record, kept alive as zosd keeps it (docs/grid.md).
        let _in = rt.enter();
        let liveness = zos_registry::liveness::start(
            client.clone(),
            n.clone(),
            std::time::Duration::from_secs(2),
        );
        let mut renewed = liveness.renewed();
        rt.block_on(renewed.wait_for(Option::is_some)).unwrap();
        alive.push(liveness);
    }
    let round: Value = serde_json::from_str(&ok(
        dir,
        &[
            "bot", "run", "--key", "bot.key", "--notary", &url, "--once", "--json",
        ],
    ))
    .unwrap();
    assert_eq!(round["contracts"], 1, "{round}");
    let assigned = round["assigned"].as_array().unwrap();
    assert_eq!(assigned.len(), 2, "{round}");
    assert_ne!(assigned[0]["node"], assigned[1]["node"], "distinct nodes");
    for a in assigned {
        let file = notary.join(format!(
            "nodes/{}/assignments/crm-grid/{}.json",
            a["node"].as_str().unwrap(),
            a["replica"]
        ));
        assert!(file.exists(), "{}", file.display());
    }
    assert!(notary.join("grid/7/placements/crm-grid.json").exists());
    let again = ok(
        dir,
        &["bot", "run", "--key", "bot.key", "--notary", &url, "--once"],
    );
    assert!(again.contains("1 placement contracts"), "{again}");
    let shown = ok(
        dir,
        &[
            "contract", "status", "crm-grid", "--farm", "7", "--notary", &url,
        ],
    );
    assert!(shown.contains(&format!("placed by {bot}")), "{shown}");
    for a in assigned {
        let line = format!(
            "replica {}  assigned  epoch 1  on {}",
            a["replica"],
            a["node"].as_str().unwrap()
        );
        assert!(shown.contains(&line), "{line:?} in:\n{shown}");
    }
    assert!(shown.contains("moves (oldest first)"), "{shown}");
    // Each move with its time in UTC (`2026-12-07 04:37:41Z`), not raw unix seconds.
    assert!(
        shown
            .lines()
            .any(|l| l.contains("Z  replica 0 -> ") && l.trim_start().starts_with("20")),
        "{shown}"
    );
    let status: Value = serde_json::from_str(&ok(
        dir,
        &[
            "contract", "status", "crm-grid", "--farm", "7", "--notary", &url, "--json",
        ],
    ))
    .unwrap();
    assert_eq!(status["version"], 2, "{status}");
    assert_eq!(status["replicas"].as_array().unwrap().len(), 2, "{status}");
    assert!(
        !again.contains("assigned"),
        "a second round assigns nothing:\n{again}"
    );
    // Each replica's node reports its side of the contract's network across nodes (the
    // status record's mesh section): --farm shows it under the replica, from that node's
    // own signed record, and --json puts it in the replica's entry.
    for a in assigned {
        let hex = a["node"].as_str().unwrap();
        let n = farm_nodes
            .iter()
            .find(|n| n.public().to_hex() == hex)
            .unwrap();
        let replica = a["replica"].as_u64().unwrap();
        let body = serde_json::json!({"contract": "crm-grid", "version": 2, "state": "ok",
            "message": "running", "replica": replica, "epoch": 1,
            "mesh": [{"network": "net", "range": "10.30.0.0/16", "slot": replica,
                "subnet": format!("10.30.{replica}.0/24"), "listen_port": 51820 + replica,
                "peers": [{"slot": 1 - replica, "subnet": format!("10.30.{}.0/24", 1 - replica),
                    "state": "peer", "rx_bytes": 2048, "tx_bytes": 0}]}]});
        let key = zos_notary::NotaryKey::status(&n.public(), "crm-grid").unwrap();
        let record = zos_notary::Record::sign(&key, body, n).unwrap();
        rt.block_on(zos_notary::Notary::put(&client, &record))
            .unwrap();
    }
    let shown = ok(
        dir,
        &[
            "contract", "status", "crm-grid", "--farm", "7", "--notary", &url,
        ],
    );
    for replica in 0..2u64 {
        let block = [
            "    mesh      net  range 10.30.0.0/16".to_string(),
            format!(
                "      this node  slot {replica}  10.30.{replica}.0/24  port {}",
                51820 + replica
            ),
            format!(
                "      slot {0}  10.30.{0}.0/24  node -  peer  endpoint -  handshake never  rx 2.0 KiB  tx 0 B",
                1 - replica
            ),
        ]
        .join("\n");
        assert!(shown.contains(&block), "{block:?} in:\n{shown}");
    }
    let with_mesh: Value = serde_json::from_str(&ok(
        dir,
        &[
            "contract", "status", "crm-grid", "--farm", "7", "--notary", &url, "--json",
        ],
    ))
    .unwrap();
    for r in with_mesh["replicas"].as_array().unwrap() {
        assert_eq!(r["mesh"][0]["slot"], r["replica"], "{with_mesh}");
        assert_eq!(r["mesh"][0]["peers"][0]["rx_bytes"], 2048, "{with_mesh}");
    }
    // A placement record written by anyone else (the notary lets anyone write at the
    // key) is refused, not shown as the placement.
    let stranger = zos_contract::SecretKey::load(&dir.join("stranger.key")).unwrap();
    let mut body = status.clone();
    body.as_object_mut()
        .unwrap()
        .retain(|k, _| k != "signed_at" && k != "orchestrator");
    let forged = zos_notary::Record::sign(
        &zos_notary::NotaryKey::placement("7", "crm-grid").unwrap(),
        body,
        &stranger,
    )
    .unwrap();
    rt.block_on(zos_notary::Notary::put(&client, &forged))
        .unwrap();
    let refusal = refused(
        dir,
        &[
            "contract", "status", "crm-grid", "--farm", "7", "--notary", &url,
        ],
    );
    assert!(refusal.contains("not by its orchestrator"), "{refusal}");

    // Cancelled at its farm's key, by its owner only.
    let grid_file = notary.join("grid/7/contracts/crm-grid.json");
    let before = std::fs::read(&grid_file).unwrap();
    let not_owner = refused(
        dir,
        &[
            "contract",
            "cancel",
            "crm-grid",
            "--farm",
            "7",
            "--key",
            "stranger.key",
            "--notary",
            &url,
        ],
    );
    assert!(not_owner.contains("only the owner"), "{not_owner}");
    assert_eq!(
        std::fs::read(&grid_file).unwrap(),
        before,
        "nothing written"
    );
    let done = ok(
        dir,
        &[
            "contract",
            "cancel",
            "crm-grid",
            "--farm",
            "7",
            "--key",
            "owner.key",
            "--notary",
            &url,
        ],
    );
    assert!(
        done.contains("cancelled crm-grid (version 2) on farm 7"),
        "{done}"
    );
    let record: Value = serde_json::from_slice(&std::fs::read(&grid_file).unwrap()).unwrap();
    assert_eq!(record["body"]["cancellation"]["version"], 3, "{record}");

    // Out of range or contradictory: refused, and no file written.
    for (extra, says) in [
        (vec!["--replicas", "65"], "$.contract.placement.replicas"),
        (vec!["--replicas", "0"], "$.contract.placement.replicas"),
        (
            vec!["--after-s", "9"],
            "$.contract.placement.failover.after_s",
        ),
        (vec!["--failover", "teleport"], "not a failover mode"),
        (vec!["--farm", ".hidden"], "$.contract.placement.farm"),
    ] {
        let mut args: Vec<&str> = placement.to_vec();
        for pair in extra.chunks(2) {
            let at = args.iter().position(|a| *a == pair[0]).unwrap();
            args[at + 1] = pair[1];
        }
        let (made, out) = new("bad.json", &args);
        assert!(!made, "{extra:?} accepted:\n{out}");
        assert!(out.contains(says), "{extra:?}: {out}");
        assert!(!dir.join("bad.json").exists(), "{extra:?} wrote a file");
    }
    let (made, out) = new("bad.json", &[&placement[..], &["--node", &node]].concat());
    assert!(!made && out.contains("cannot be used with"), "{out}");
    let (made, out) = new("bad.json", &["--replicas", "2"]);
    assert!(!made, "{out}");
    let (made, out) = new("bad.json", &["--farm", "7"]);
    assert!(!made && out.contains("--replicas"), "{out}");
    assert!(!dir.join("bad.json").exists());
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
