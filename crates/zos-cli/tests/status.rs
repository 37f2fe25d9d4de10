//! `zos status` against a real status server (zos-status) on a socket in a temporary
//! directory: the same bytes zosd serves.

use std::process::Command;

use zos_status::{NodeStatus, WorkloadLine};

fn zos(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .env_remove("ZOS_STATUS_SOCKET")
        .output()
        .unwrap()
}

fn sample() -> NodeStatus {
    NodeStatus {
        node: "cd".repeat(32),
        farm: Some("farm-9".into()),
        version: "0.1.0".into(),
        state: "serving".into(),
        workloads: vec![WorkloadLine {
            contract: "c1".into(),
            name: "app".into(),
            kind: "container".into(),
            state: "running".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn zos_status_prints_what_the_node_serves() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("status.sock");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (_tx, rx) = zos_status::channel(sample());
    let _server = rt
        .block_on(async { zos_status::server::serve(&sock, rx) })
        .unwrap();
    let sock_arg = sock.to_str().unwrap();

    let out = zos(&["status", "--socket", sock_arg, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let got: NodeStatus = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got, sample());

    let out = zos(&["status", "--socket", sock_arg]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, zos_status::render(&sample()));
    assert!(text.contains(&"cd".repeat(32)));
    assert!(text.contains("c1/app  container  running"), "{text}");
}

#[test]
fn zos_status_without_a_node_says_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let out = zos(&["status", "--socket", sock.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("is zosd running"), "{err}");
}
