//! The node's local status on a running node: `zos status --json` (and the client
//! library it uses) answer over the read-only D-Bus socket with the node key and a
//! running contract; the console screen (a file here) shows the same; a stopped
//! zosd leaves no socket behind. See docs/status.md.

mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use zos_status::NodeStatus;

fn read_status(sock: &Path) -> NodeStatus {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(zos_status::client::read(sock)).unwrap()
}

/// Polls the socket until `pred` holds; panics with the last status and the log.
fn wait_local(node: &Node, what: &str, pred: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = read_status(&node.status_socket());
        if pred(&s) {
            return s;
        }
        if Instant::now() > deadline {
            panic!("local status not {what}: {s:#?}\nzosd log:\n{}", node.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `SKIP: <test>: <reason>` line on the real stderr, counted by `cargo xtask test`.
use zos_testkit::skip_line as skip;

/// The `zos` binary built beside zosd, if it is there and knows `status`.
fn zos_binary(test: &str) -> Option<PathBuf> {
    let zos = Path::new(env!("CARGO_BIN_EXE_zosd")).with_file_name("zos");
    let knows = Command::new(&zos)
        .args(["status", "--help"])
        .output()
        .is_ok_and(|o| o.status.success());
    if knows {
        Some(zos)
    } else {
        skip(
            test,
            &format!(
                "the zos binary {} is missing or older than `zos status` (cargo build -p zos-cli); the client library is checked instead",
                zos.display()
            ),
        );
        None
    }
}

#[test]
fn a_running_node_answers_zos_status_with_its_key_and_a_running_contract() {
    if !privileged("a_running_node_answers_zos_status_with_its_key_and_a_running_contract") {
        return;
    }
    let screens = tempfile::tempdir().unwrap();
    let console = screens.path().join("console");
    let p = people();
    let mut node = Node::with_lines(
        512,
        &format!(
            "console = \"{}\"\nconsole_every_secs = 1\n",
            console.display()
        ),
    );
    let key = node.start();
    let sock = node.status_socket();
    let meta = std::fs::metadata(&sock).expect("the status socket");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "root-only socket");

    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let id = node.id("busy");
    let doc = contract(&p, key, &id, 1, &flist, 64);
    node.publish(&record(&p, key, &doc));
    node.wait_status(&id, "ok", |s| s["state"] == "ok");

    let s = wait_local(&node, "showing the running contract", |s| {
        s.workloads
            .iter()
            .any(|w| w.contract == id && w.state == "running")
    });
    assert_eq!(s.node, key.to_string());
    assert_eq!(s.state, "serving");
    assert_eq!(s.version, env!("CARGO_PKG_VERSION"));
    let c = s.contracts.iter().find(|c| c.id == id).unwrap();
    assert_eq!((c.state.as_str(), c.version), ("ok", Some(1)));
    let w = s.workloads.iter().find(|w| w.contract == id).unwrap();
    assert_eq!(
        (w.name.as_str(), w.kind.as_str(), w.address.as_deref()),
        ("app", "container", Some("10.70.0.2"))
    );
    assert_eq!(s.reserved.memory_bytes, 64 << 20);
    assert!(s.offered.cpu > 0 && s.offered.memory_bytes > 0, "{s:#?}");
    assert!(!s.pools.is_empty() && s.pools.iter().all(|p| p.state == "online"));
    assert!(s.uptime_secs > 0);

    if let Some(zos) =
        zos_binary("a_running_node_answers_zos_status_with_its_key_and_a_running_contract")
    {
        let out = Command::new(zos)
            .args(["status", "--json", "--socket"])
            .arg(&sock)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let got: NodeStatus = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(got.node, key.to_string());
        assert!(got
            .workloads
            .iter()
            .any(|w| w.contract == id && w.state == "running"));
    }

    // The console screen says the same.
    let deadline = Instant::now() + WAIT;
    loop {
        let screen = std::fs::read_to_string(&console).unwrap_or_default();
        if screen.contains(&format!("{id}/app  container  running")) {
            assert!(screen.starts_with("\x1b[H\x1b[2J"), "clear + home first");
            assert!(screen.contains(&format!("node      {key}")), "{screen}");
            break;
        }
        assert!(Instant::now() < deadline, "console screen:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A clean stop: the socket goes, the screen's last word is "stopped".
    let pid = node.zosd.as_ref().unwrap().id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + WAIT;
    while node.zosd.as_mut().unwrap().try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "zosd did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!sock.exists(), "the socket outlived zosd");
    let screen = std::fs::read_to_string(&console).unwrap();
    assert!(screen.contains("state     stopped"), "{screen}");
}
