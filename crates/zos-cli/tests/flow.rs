//! Steps 1-4 of the flow with the real `zos` binary, on a `dir://` notary and on a real
//! etcd server: keys, blueprint, contract, three signatures, verify, publish, list,
//! co-sign in the notary, replay refused, cancel.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

struct Zos<'a> {
    dir: &'a Path,
}

impl Zos<'_> {
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_zos"))
            .args(args)
            .current_dir(self.dir)
            .env_remove("ZOS_NOTARY")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs a step that must succeed; returns its stdout, trimmed.
    fn ok(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args);
        assert!(ok, "zos {args:?} failed:\n{stdout}\n{stderr}");
        stdout.trim().to_string()
    }

    /// Runs a step that must fail; returns stdout and stderr together.
    fn refused(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.run(args);
        assert!(!ok, "zos {args:?} should have failed:\n{stdout}");
        format!("{stdout}{stderr}")
    }
}

fn flow(notary: &str) {
    let tmp = zos_testkit::tempdir("cli");
    let zos = Zos { dir: tmp.path() };
    let pub_of = |who: &str| zos.ok(&["key", "new", "--out", &format!("{who}.key")]);
    let (owner, legal, budget, node) = (
        pub_of("owner"),
        pub_of("legal"),
        pub_of("budget"),
        pub_of("node"),
    );
    let expert = pub_of("expert");
    // Secret keys are private.
    let mode = std::fs::metadata(tmp.path().join("owner.key"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    let blueprint =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/crm.blueprint.toml");
    zos.ok(&[
        "blueprint",
        "sign",
        blueprint.to_str().unwrap(),
        "--key",
        "expert.key",
        "-o",
        "crm.blueprint.json",
    ]);
    let new = |out: &str, version: &str| {
        zos.ok(&[
            "contract",
            "new",
            "--blueprint",
            "crm.blueprint.json",
            "--param",
            "users=100",
            "--owner",
            &owner,
            "--node",
            &node,
            "--stakeholder",
            &format!("{legal}:2:required"),
            "--stakeholder",
            &format!("{budget}:1"),
            "--threshold",
            "3",
            "--id",
            "crm-test",
            "--version",
            version,
            "-o",
            out,
        ])
    };
    new("c.json", "1");

    // Only the owner signed: verification names the missing signer and the weight.
    zos.ok(&["contract", "sign", "c.json", "--key", "owner.key"]);
    let refused = zos.refused(&["contract", "verify", "c.json", "--node", &node]);
    assert!(refused.contains("[required_signer_missing]"), "{refused}");
    assert!(refused.contains("weight    0/3"), "{refused}");

    // Publish with only the owner's signature; legal co-signs in the notary.
    zos.ok(&[
        "contract",
        "publish",
        "c.json",
        "--key",
        "owner.key",
        "--notary",
        notary,
    ]);
    zos.ok(&[
        "contract",
        "sign",
        "crm-test",
        "--key",
        "legal.key",
        "--notary",
        notary,
    ]);
    let listed: Value = serde_json::from_str(&zos.ok(&[
        "contract", "list", "--notary", notary, "--node", &node, "--json",
    ]))
    .unwrap();
    let row = &listed.as_array().unwrap()[0];
    assert_eq!(row["id"], "crm-test");
    assert_eq!(row["version"], 1);

    // The budget holder signs the file too; it verifies with full weight.
    zos.ok(&["contract", "sign", "c.json", "--key", "legal.key"]);
    zos.ok(&["contract", "sign", "c.json", "--key", "budget.key"]);
    let verified = zos.ok(&["contract", "verify", "c.json", "--node", &node]);
    assert!(verified.contains("weight    3/3"), "{verified}");
    assert!(verified.ends_with("OK"), "{verified}");
    let json: Value =
        serde_json::from_str(&zos.ok(&["contract", "verify", "c.json", "--node", &node, "--json"]))
            .unwrap();
    assert_eq!(json["ok"], true, "{json}");

    // Version 2 supersedes; version 1 is then a replay.
    new("c2.json", "2");
    for who in ["owner", "legal", "budget"] {
        zos.ok(&[
            "contract",
            "sign",
            "c2.json",
            "--key",
            &format!("{who}.key"),
        ]);
    }
    zos.ok(&[
        "contract",
        "publish",
        "c2.json",
        "--key",
        "owner.key",
        "--notary",
        notary,
    ]);
    // Verification checks replay against the version a node runs: given, or the one
    // the node reports in its signed status record in the notary.
    let replay = zos.refused(&[
        "contract",
        "verify",
        "c.json",
        "--node",
        &node,
        "--running-version",
        "2",
    ]);
    assert!(replay.contains("[replay]"), "{replay}");
    let newer = zos.ok(&[
        "contract",
        "verify",
        "c2.json",
        "--node",
        &node,
        "--running-version",
        "1",
    ]);
    assert!(newer.contains("running   version 1"), "{newer}");
    assert!(newer.ends_with("OK"), "{newer}");
    let node_key = zos_contract::SecretKey::load(&tmp.path().join("node.key")).unwrap();
    let status = zos_notary::NotaryKey::status(&node_key.public(), "crm-test").unwrap();
    let report =
        serde_json::json!({"contract": "crm-test", "version": 2, "state": "ok", "message": ""});
    let record = zos_notary::Record::sign(&status, report, &node_key).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use zos_notary::Notary;
            zos_notary::open(notary).unwrap().put(&record).await
        })
        .unwrap();
    let replay: Value = serde_json::from_str(&zos.refused(&[
        "contract", "verify", "c.json", "--node", &node, "--notary", notary, "--json",
    ]))
    .unwrap();
    assert_eq!(replay["running_version"], 2, "{replay}");
    assert_eq!(replay["reasons"][0]["code"], "replay", "{replay}");

    // A signature entry that does not count is a warning, not a veto.
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("c2.json")).unwrap())
            .unwrap();
    doc["signatures"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"signer": expert, "signature": "00".repeat(64)}));
    std::fs::write(tmp.path().join("c3.json"), doc.to_string()).unwrap();
    let warned = zos.ok(&["contract", "verify", "c3.json", "--node", &node]);
    assert!(warned.contains("warning   [unknown_signer]"), "{warned}");
    assert!(warned.ends_with("OK"), "{warned}");

    let replay = zos.refused(&[
        "contract",
        "publish",
        "c.json",
        "--key",
        "owner.key",
        "--notary",
        notary,
    ]);
    assert!(replay.contains("version"), "{replay}");

    // Only the owner cancels.
    let by_legal = zos.refused(&[
        "contract",
        "cancel",
        "crm-test",
        "--key",
        "legal.key",
        "--notary",
        notary,
    ]);
    assert!(by_legal.contains("only the owner"), "{by_legal}");
    zos.ok(&[
        "contract",
        "cancel",
        "crm-test",
        "--key",
        "owner.key",
        "--notary",
        notary,
    ]);
    let listed: Value = serde_json::from_str(&zos.ok(&[
        "contract", "list", "--notary", notary, "--node", &node, "--json",
    ]))
    .unwrap();
    assert_eq!(listed[0]["state"], "cancelled", "{listed}");
}

#[test]
fn flow_on_a_directory_notary() {
    let store = zos_testkit::tempdir("notary");
    flow(&format!("dir://{}", store.path().display()));
}

#[test]
fn flow_on_etcd() {
    let server = zos_testkit::etcd::Etcd::temp();
    flow(&server.url("zt-cli"));
}

#[test]
fn every_command_explains_itself_with_an_example() {
    let tmp = tempfile::tempdir().unwrap();
    let zos = Zos { dir: tmp.path() };
    for cmd in [
        &["key", "new"][..],
        &["blueprint", "sign"],
        &["contract", "new"],
        &["contract", "sign"],
        &["contract", "verify"],
        &["contract", "publish"],
        &["contract", "list"],
        &["contract", "cancel"],
        &["contract", "status"],
        &["farm", "create"],
        &["farm", "show"],
        &["node", "list"],
        &["status"],
        &["key", "show"],
        &["blueprint", "show"],
        &["flist", "ls"],
        &["flist", "verify"],
        &["completions"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let help = zos.ok(&args);
        assert!(
            help.contains("Example"),
            "zos {cmd:?} --help has no example:\n{help}"
        );
    }
}
