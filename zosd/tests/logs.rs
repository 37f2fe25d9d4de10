//! Logs leave the node (docs/observability.md), on one node:
//! - the farm record names a destination, and zosd's lines arrive there, those it
//!   logged before it had read the farm record too (they waited in its queue), each
//!   stamped with the node id;
//! - two contracts name a destination each: each workload's output lines reach its own
//!   contract's receiver, stamped with its contract and workload, and never the other's.
//!
//! The farm's receiver is a plain TCP listener reading JSON lines (`jsonl+tcp`); the two
//! contracts' are real rsyslogd servers (Debian's, zos_testkit::rsyslog) taking RFC 5424
//! over TCP (`syslog+tcp`).

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use zos_contract::{PublicKey, SecretKey, SignedContract};
use zos_registry::{Farm, Telemetry};
use zos_testkit::contract as kit;
use zos_testkit::rsyslog::Rsyslog;

const FARM: &str = "zt-farm-logs";

/// A TCP listener on 127.0.0.1 whose JSON lines arrive on a channel.
struct Receiver {
    port: u16,
    lines: mpsc::Receiver<Value>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, lines) = mpsc::channel::<Value>();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(conn).lines().map_while(Result::ok) {
                        let v = serde_json::from_str(&line).expect("one JSON object per line");
                        if tx.send(v).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Receiver { port, lines }
    }

    fn url(&self) -> String {
        format!("jsonl+tcp://127.0.0.1:{}", self.port)
    }

    /// Every line up to and including the first that `last` accepts.
    fn until(&self, what: &str, last: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let v = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("no {what} ({e}); got {seen:#?}"));
            let done = last(&v);
            seen.push(v);
            if done {
                return seen;
            }
        }
    }
}

/// A contract whose one workload prints `marker` lines, sending them to `logs`.
fn logging_contract(
    p: &People,
    node: PublicKey,
    flist: &(String, String, String),
    (id, subnet): (&str, &str),
    logs: &str,
    marker: &str,
) -> SignedContract {
    let bp = kit::signed_blueprint(
        &p.expert,
        json!({
            "name": "talker", "version": "1.0.0", "params": {},
            "body": {
                "networks": [{"name": "net", "subnet": subnet}],
                "workloads": [{
                    "name": "talker", "kind": "container", "flist": flist_ref(p, flist),
                    "entrypoint": ["/bin/sh", "-c", format!(
                        "echo {marker}-out; echo {marker}-err >&2; exec sleep 3600")],
                    "cpu": 1, "memory_mib": 32, "network": "net"
                }],
                "logs": {"url": logs}
            }
        }),
    );
    kit::signed(
        kit::contract(p.owner.public(), node, id, 1, bp),
        &[&p.owner],
    )
}

#[test]
fn node_and_workload_lines_reach_their_own_destinations() {
    let test = "node_and_workload_lines_reach_their_own_destinations";
    if !privileged(test) {
        return;
    }
    let farm_rx = Receiver::start();
    let farmer = SecretKey::from_seed([41; 32]);
    let now = zos_registry::now();
    let farm = Farm::create_or_update(None, FARM, "logging farm", farmer.public(), now)
        .unwrap()
        .with_telemetry(
            Some(Telemetry {
                url: farm_rx.url(),
                ca_pem: None,
            }),
            None,
        )
        .unwrap();
    let mut node = Node::in_farm(512, FARM, 60);
    node.publish(&farm.sign(&farmer, now).unwrap());
    let key = node.start();

    // The line logged once serving, and everything before it.
    let seen = farm_rx.until("'node agent ready' line", |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("node agent ready"))
    });
    // Every line carries the node id and zosd's name, queued ones included: the
    // capacity line is logged before the farm record is read.
    for v in &seen {
        assert_eq!(v["host"], key.to_string(), "{v:#}");
        assert_eq!(v["app"], "zosd", "{v:#}");
    }
    assert!(
        seen.iter().any(|v| v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("capacity offered to contracts"))),
        "the lines logged before the farm was read did not arrive: {seen:#?}"
    );

    // Two tenants, a real rsyslogd each.
    let p = people();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let rsyslog = |what: &str| {
        Rsyslog::loopback().unwrap_or_else(|e| {
            panic!("starting rsyslogd for {what}: {e} (cargo xtask test installs rsyslog)")
        })
    };
    let (rx_a, rx_b) = (rsyslog("tenant a"), rsyslog("tenant b"));
    let (a, b) = (node.id("la"), node.id("lb"));
    node.publish(&record(
        &p,
        key,
        &logging_contract(
            &p,
            key,
            &flist,
            (&a, "10.91.0.0/24"),
            &rx_a.url("syslog+tcp"),
            "zt-mark-a",
        ),
    ));
    node.publish(&record(
        &p,
        key,
        &logging_contract(
            &p,
            key,
            &flist,
            (&b, "10.92.0.0/24"),
            &rx_b.url("syslog+tcp"),
            "zt-mark-b",
        ),
    ));
    for (rx, id, mark, other) in [
        (&rx_a, &a, "zt-mark-a", "zt-mark-b"),
        (&rx_b, &b, "zt-mark-b", "zt-mark-a"),
    ] {
        let (out, err) = (format!("{mark}-out"), format!("{mark}-err"));
        let lines = rx
            .wait_for(&format!("{out} and {err}"), Duration::from_secs(60), |r| {
                [&out, &err]
                    .iter()
                    .all(|m| r.iter().any(|v| v["msg"] == m.as_str()))
            })
            .unwrap_or_else(|e| panic!("{e}"));
        for v in &lines {
            let stream = if v["severity"] == "3" {
                "stderr"
            } else {
                "stdout"
            };
            assert_eq!(
                v["sd"],
                format!("[zos contract=\"{id}\" workload=\"talker\" stream=\"{stream}\"]"),
                "{v:#}"
            );
            assert_eq!(v["hostname"], key.to_string(), "{v:#}");
            assert_eq!(v["app"], "talker", "{v:#}");
            assert!(
                !v["msg"].as_str().unwrap_or("").contains(other),
                "{id} got {v:#}"
            );
        }
        let err = lines.iter().find(|v| v["msg"] == err.as_str()).unwrap();
        assert_eq!(err["severity"], "3", "stderr is err: {err:#}");
    }
    // The node's receiver got no tenant line.
    while let Ok(v) = farm_rx.lines.try_recv() {
        assert!(
            v.get("contract").is_none(),
            "a tenant line at the farm's receiver: {v:#}"
        );
    }
}
