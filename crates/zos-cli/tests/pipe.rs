//! `zos ... | head`: a reader that stops early closes the pipe; `zos` must stop quietly
//! (exit 0, nothing on stderr about it), not panic with "failed printing to stdout".
//!
//! Each command here prints well over a pipe's buffer (64 KiB), and the test closes the
//! read end after the first byte, so the tool is certain to write into a closed pipe.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};

/// More than a pipe buffer holds: the writer must meet the closed end.
const PIPE_BUFFER: usize = 64 * 1024;

fn zos(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zos"));
    cmd.current_dir(dir).env_remove("ZOS_NOTARY");
    cmd
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = zos(dir).args(args).output().unwrap();
    assert!(out.status.success(), "zos {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `zos args` like `zos args | head -c1`: reads one byte, closes the pipe, and
/// asserts the tool then stopped quietly. Also checks (by a full run) that the command
/// prints more than a pipe buffer, so the closed pipe was really met.
fn like_head(dir: &Path, args: &[&str]) {
    let full = zos(dir).args(args).output().unwrap();
    assert!(full.status.success(), "zos {args:?}: {full:?}");
    assert!(
        full.stdout.len() > PIPE_BUFFER,
        "zos {args:?} prints only {} bytes: not enough to fill a pipe",
        full.stdout.len()
    );

    let mut child = zos(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked"),
        "zos {args:?} | head -c1 panicked: {stderr}"
    );
    assert!(
        !stderr.contains("Broken pipe"),
        "zos {args:?} | head -c1 complained: {stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "zos {args:?} | head -c1: {:?}, stderr: {stderr}",
        out.status
    );
}

#[test]
fn contract_status_into_a_closed_pipe_stops_quietly() {
    let tmp = zos_testkit::tempdir("cli-pipe");
    let dir = tmp.path();
    let notary = format!("dir://{}", dir.join("notary").display());
    let node_pub = ok(dir, &["key", "new", "--out", "node.key"]);
    let node_pub = node_pub.trim();
    let node_key = zos_contract::SecretKey::load(&dir.join("node.key")).unwrap();
    // A status record with many workloads and log lines: the text and the JSON are both
    // far longer than a pipe buffer.
    let workloads: serde_json::Map<String, serde_json::Value> = (0..200)
        .map(|i| {
            let tail: Vec<String> = (0..10)
                .map(|l| format!("workload {i} log line {l}: {}", "x".repeat(40)))
                .collect();
            (
                format!("w{i}"),
                serde_json::json!({"state": "running", "address": "10.1.0.2",
                    "restarts": 0, "log_tail": tail}),
            )
        })
        .collect();
    let body = serde_json::json!({"contract": "big", "version": 1, "state": "ok",
        "message": "", "workloads": workloads});
    let key = zos_notary::NotaryKey::status(&node_key.public(), "big").unwrap();
    let record = zos_notary::Record::sign(&key, body, &node_key).unwrap();
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
        "contract", "status", "big", "--node", node_pub, "--notary", &notary,
    ];
    like_head(dir, &args);
    let mut json = args.to_vec();
    json.push("--json");
    like_head(dir, &json);
}

#[test]
fn flist_ls_into_a_closed_pipe_stops_quietly() {
    let tmp = zos_testkit::tempdir("cli-pipe");
    let dir = tmp.path();
    let tree = dir.join("tree");
    std::fs::create_dir(&tree).unwrap();
    for i in 0..1500 {
        std::fs::write(tree.join(format!("file-with-a-longish-name-{i:05}")), b"").unwrap();
    }
    let store = format!("dir://{}", dir.join("store").display());
    ok(
        dir,
        &["flist", "pack", "tree", "--store", &store, "-o", "tree.fl"],
    );
    like_head(dir, &["flist", "ls", "tree.fl", "-R"]);
}
