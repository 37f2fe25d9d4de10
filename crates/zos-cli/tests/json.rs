//! `--json` on the read commands: one JSON document on stdout, parsed here per command
//! family (key, blueprint, contract status, flist ls and verify). The others are parsed
//! where their flows are tested: contract verify and list (tests/flow.rs), farm show and
//! node list (tests/farm.rs), status (tests/status.rs).

mod common;

use std::path::Path;

use serde_json::Value;

use common::stdout as run;

/// Runs a read command with --json: stdout must be exactly one JSON document.
fn json(dir: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let stdout = run(dir, &args);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("zos {args:?} --json is not one document ({e}):\n{stdout}"))
}

#[test]
fn key_and_blueprint_show_as_json() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let public = run(dir, &["key", "new", "--out", "expert.key"]);
    let shown = json(dir, &["key", "show", "expert.key"]);
    assert_eq!(shown["public"], public.trim(), "{shown}");
    assert_eq!(shown["key"], "expert.key", "{shown}");

    let source =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples/crm.blueprint.toml");
    run(
        dir,
        &[
            "blueprint",
            "sign",
            source.to_str().unwrap(),
            "--key",
            "expert.key",
            "-o",
            "crm.json",
        ],
    );
    let shown = json(dir, &["blueprint", "show", "crm.json"]);
    assert_eq!(shown["author"], public.trim(), "{shown}");
    assert_eq!(shown["digest"].as_str().unwrap().len(), 64, "{shown}");
    assert!(shown["name"].is_string(), "{shown}");
    assert!(shown["params"].is_object(), "{shown}");
}

#[test]
fn contract_status_as_json() {
    let tmp = zos_testkit::tempdir("cli-json");
    let dir = tmp.path();
    let notary = format!("dir://{}", dir.join("notary").display());
    let node = run(dir, &["key", "new", "--out", "node.key"]);
    let node = node.trim();
    let key = zos_contract::SecretKey::load(&dir.join("node.key")).unwrap();
    let body = serde_json::json!({"contract": "c1", "version": 3, "state": "ok",
        "message": "running", "workloads": {"app": {"state": "running"}}});
    let nkey = zos_notary::NotaryKey::status(&key.public(), "c1").unwrap();
    let record = zos_notary::Record::sign(&nkey, body, &key).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use zos_notary::Notary;
            zos_notary::open(&notary).unwrap().put(&record).await
        })
        .unwrap();
    let status = json(
        dir,
        &[
            "contract", "status", "c1", "--node", node, "--notary", &notary,
        ],
    );
    assert_eq!(status["contract"], "c1", "{status}");
    assert_eq!(status["version"], 3, "{status}");
    assert_eq!(status["workloads"]["app"]["state"], "running", "{status}");
    assert_eq!(status["signed_at"], record.signed_at, "{status}");
}

#[test]
fn contract_logs_show_the_published_tails() {
    let tmp = zos_testkit::tempdir("cli-json");
    let dir = tmp.path();
    let notary = format!("dir://{}", dir.join("notary").display());
    let node = run(dir, &["key", "new", "--out", "node.key"]);
    let node = node.trim();
    let key = zos_contract::SecretKey::load(&dir.join("node.key")).unwrap();
    let body = serde_json::json!({"contract": "c1", "version": 1, "state": "ok",
        "message": "running", "workloads": {
            "app": {"state": "running", "log_tail": ["one", "two"]},
            "db": {"state": "running"}}});
    let nkey = zos_notary::NotaryKey::status(&key.public(), "c1").unwrap();
    let record = zos_notary::Record::sign(&nkey, body, &key).unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use zos_notary::Notary;
            zos_notary::open(&notary).unwrap().put(&record).await
        })
        .unwrap();
    let args = [
        "contract", "logs", "c1", "--node", node, "--notary", &notary,
    ];
    let logs = json(dir, &args);
    assert_eq!(
        logs["workloads"]["app"],
        serde_json::json!(["one", "two"]),
        "{logs}"
    );
    assert_eq!(logs["workloads"]["db"], serde_json::json!([]), "{logs}");
    // No contract record to read a destination from.
    assert!(logs["destination"].is_null(), "{logs}");
    assert_eq!(run(dir, &args), "app | one\napp | two\n");
}

#[test]
fn flist_ls_and_verify_as_json() {
    let tmp = zos_testkit::tempdir("cli-json");
    let dir = tmp.path();
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/motd"), b"hello\n").unwrap();
    std::os::unix::fs::symlink("etc/motd", tree.join("motd")).unwrap();
    let publisher = run(dir, &["key", "new", "--out", "pub.key"]);
    let store = format!("dir://{}", dir.join("store").display());
    run(
        dir,
        &[
            "flist", "pack", "tree", "--store", &store, "-o", "t.fl", "--sign", "pub.key",
        ],
    );

    let all = json(dir, &["flist", "ls", "t.fl", "-R"]);
    let entries = all.as_array().unwrap();
    let by_path = |p: &str| {
        entries
            .iter()
            .find(|e| e["path"] == p)
            .unwrap_or_else(|| panic!("no {p} in {all}"))
    };
    assert_eq!(by_path("/etc")["kind"], "dir");
    assert_eq!(by_path("/etc/motd")["kind"], "file");
    assert_eq!(by_path("/etc/motd")["size"], 6);
    assert_eq!(by_path("/motd")["kind"], "symlink");
    assert_eq!(by_path("/motd")["target"], "etc/motd");
    // One entry: an array of one.
    let one = json(dir, &["flist", "ls", "t.fl", "/etc/motd"]);
    assert_eq!(one.as_array().unwrap().len(), 1, "{one}");

    let verified = json(
        dir,
        &[
            "flist",
            "verify",
            "t.fl",
            "--store",
            &store,
            "--trust",
            publisher.trim(),
        ],
    );
    assert_eq!(verified["files"], 1, "{verified}");
    assert_eq!(verified["bytes"], 6, "{verified}");
    assert_eq!(verified["sha256"].as_str().unwrap().len(), 64, "{verified}");
}

/// The read commands: each takes --json. A new read command belongs here (and gets
/// --json); a command that writes keeps text.
const READ_COMMANDS: &[&[&str]] = &[
    &["key", "show"],
    &["blueprint", "show"],
    &["contract", "verify"],
    &["contract", "list"],
    &["contract", "status"],
    &["contract", "logs"],
    &["flist", "verify"],
    &["flist", "ls"],
    &["farm", "show"],
    &["node", "list"],
    &["node", "logs"],
    &["support", "fetch"],
    &["probe"],
    &["status"],
    // With --once: the round's result.
    &["bot", "run"],
];

#[test]
fn every_read_command_takes_json_and_only_they_do() {
    fn walk(cmd: &clap::Command, path: &mut Vec<String>, found: &mut Vec<Vec<String>>) {
        if cmd.get_arguments().any(|a| a.get_long() == Some("json")) {
            found.push(path.clone());
        }
        for sub in cmd.get_subcommands() {
            path.push(sub.get_name().to_string());
            walk(sub, path, found);
            path.pop();
        }
    }
    let mut found = Vec::new();
    walk(&zos_cli::command(), &mut Vec::new(), &mut found);
    let mut expected: Vec<Vec<String>> = READ_COMMANDS
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected);
}
