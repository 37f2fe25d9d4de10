//! The node's metrics are pushed (docs/observability.md): the farm record names a
//! Prometheus remote-write target, and a real Prometheus (Debian's, receiver on) holds
//! the node's series afterwards, labelled with the node id: CPU, memory, network, its
//! pools' usage and the engine's series. A contract's deployment names its own target:
//! its workloads' series (cgroup CPU and memory, restarts) reach that one and no other,
//! and a contract that names none sends nothing anywhere.

mod common;

use common::*;
use serde_json::{json, Value};
use zos_contract::{PublicKey, SecretKey, SignedContract};
use zos_registry::{Farm, Telemetry};
use zos_testkit::contract as kit;
use zos_testkit::prometheus::Prometheus;

const FARM: &str = "zt-farm-metrics";

#[test]
fn the_nodes_metrics_reach_the_farms_prometheus() {
    let test = "the_nodes_metrics_reach_the_farms_prometheus";
    if !privileged(test) {
        return;
    }
    let prom = Prometheus::start().unwrap_or_else(|e| panic!("{test}: {e}"));
    let farmer = SecretKey::from_seed([42; 32]);
    let now = zos_registry::now();
    let farm = Farm::create_or_update(None, FARM, "measured farm", farmer.public(), now)
        .unwrap()
        .with_telemetry(
            None,
            Some(Telemetry {
                url: prom.write_url(),
                ca_pem: None,
            }),
        )
        .unwrap();
    let mut node = Node::with_lines(
        512,
        &format!("farm = \"{FARM}\"\nheartbeat_secs = 60\nmetrics_every_secs = 1\n"),
    );
    node.publish(&farm.sign(&farmer, now).unwrap());
    let key = node.start();
    let id = key.to_string();
    for series in [
        "node_cpu_seconds_total",
        "node_memory_MemTotal_bytes",
        "node_network_receive_bytes_total",
        "zos_pool_size_bytes",
    ] {
        let found = prom
            .wait_for(&format!("{series}{{node=\"{id}\"}}"))
            .unwrap_or_else(|e| panic!("{e}\nzosd: {}", node.log()));
        // Some series of it is positive (a counter of an idle interface may be 0).
        let positive = found.iter().any(|s| {
            s["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|v| v > 0.0)
        });
        assert!(positive, "{series}: {found:?}");
    }

    // Three tenants: C names no metrics target and is running before the others are
    // published, so every contract binding after it had it in view; A names its own
    // Prometheus; B names the farm's (another target than A's).
    let own = Prometheus::start().unwrap_or_else(|e| panic!("{test}: {e}"));
    let p = people();
    let flist = busybox_flist(node.dir.path(), &p.publisher);
    let (a, b, c) = (node.id("ma"), node.id("mb"), node.id("mc"));
    let publish = |id: &str, subnet: &str, metrics: Option<String>| {
        let doc = measured_contract(&p, key, &flist, (id, subnet), metrics);
        node.publish(&record(&p, key, &doc));
        node.wait_status(id, "ok", |s| s["state"] == "ok");
    };
    publish(&c, "10.93.0.0/24", None);
    publish(&a, "10.94.0.0/24", Some(own.write_url()));
    publish(&b, "10.95.0.0/24", Some(prom.write_url()));
    let log = || node.log();

    // A's workload series reach A's target, with its contract, workload and node.
    let sel =
        |contract: &str| format!("{{contract=\"{contract}\",workload=\"burner\",node=\"{id}\"}}");
    for series in [
        "zos_workload_cpu_seconds_total",
        "zos_workload_memory_bytes",
    ] {
        let found = own
            .wait_for(&format!("{series}{} > 0", sel(&a)))
            .unwrap_or_else(|e| panic!("{e}\nzosd: {}", log()));
        assert_eq!(found.len(), 1, "{series}: {found:?}");
    }
    own.wait_for(&format!("zos_workload_restarts_total{}", sel(&a)))
        .unwrap_or_else(|e| panic!("{e}\nzosd: {}", log()));
    // Its veth's bytes as its own namespace counts them: it sent to its gateway.
    let found = own
        .wait_for(&format!(
            "zos_workload_network_transmit_bytes_total{} > 0",
            sel(&a)
        ))
        .unwrap_or_else(|e| panic!("{e}\nzosd: {}", log()));
    assert!(
        found.iter().all(|s| s["metric"]["device"] != "lo"),
        "{found:?}"
    );
    // B's reach the farm's target.
    let b_first = sample_ms(
        &prom
            .wait_for(&format!(
                "timestamp(zos_workload_cpu_seconds_total{})",
                sel(&b)
            ))
            .unwrap_or_else(|e| panic!("{e}\nzosd: {}", log())),
    );
    // The positive marker: a sample of A's pushed after B's were being pushed.
    own.wait_for(&format!(
        "timestamp(zos_workload_cpu_seconds_total{}) * 1000 > {b_first}",
        sel(&a)
    ))
    .unwrap_or_else(|e| panic!("{e}\nzosd: {}", log()));
    // A's target holds A's series only: not B's, not C's, not the node's.
    let stray = own
        .query(&format!(
            "{{__name__=~\"(zos|node)_.+\",contract!=\"{a}\"}}"
        ))
        .unwrap();
    assert!(
        stray.is_empty(),
        "A's target got others' series: {stray:#?}"
    );
    // The farm's target holds no workload series but B's: not A's, not C's.
    let stray = prom
        .query(&format!(
            "{{__name__=~\"zos_workload_.+\",contract!=\"{b}\"}}"
        ))
        .unwrap();
    assert!(
        stray.is_empty(),
        "the farm's target got others' workload series: {stray:#?}"
    );
    // C, which names no target, reached neither.
    for target in [&own, &prom] {
        let c_series = target.query(&format!("{{contract=\"{c}\"}}")).unwrap();
        assert!(c_series.is_empty(), "C's series were pushed: {c_series:#?}");
    }

    // The engine's series, in the farm's target with the node's id: three contracts
    // converged, and their receipt-to-converge latencies observed.
    for promql in [
        format!("zos_engine_converges_total{{node=\"{id}\",outcome=\"ok\"}} >= 3"),
        format!("zos_engine_converge_seconds_count{{node=\"{id}\"}} >= 3"),
        format!("zos_engine_converge_seconds_bucket{{node=\"{id}\",le=\"+Inf\"}} >= 3"),
        format!("zos_engine_records_total{{node=\"{id}\"}} >= 3"),
        format!("zos_engine_queue_depth{{node=\"{id}\"}}"),
        format!("zos_engine_restarts_total{{node=\"{id}\",outcome=\"ok\"}}"),
    ] {
        prom.wait_for(&promql)
            .unwrap_or_else(|e| panic!("{e}\nzosd: {}", log()));
    }
}

/// A contract whose one workload burns a little CPU then sleeps, its metrics sent to
/// `metrics` (none when `None`).
fn measured_contract(
    p: &People,
    node: PublicKey,
    flist: &(String, String, String),
    (id, subnet): (&str, &str),
    metrics: Option<String>,
) -> SignedContract {
    // The subnet's first host.
    let gateway = subnet.replace(".0/24", ".1");
    let mut body = json!({
        "networks": [{"name": "net", "subnet": subnet}],
        "workloads": [{
            "name": "burner", "kind": "container", "flist": flist_ref(p, flist),
            "entrypoint": ["/bin/sh", "-c", format!(
                "nc -w 1 {gateway} 9 </dev/null 2>/dev/null; \
                 i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; exec sleep 3600")],
            "cpu": 1, "memory_mib": 32, "network": "net"
        }]
    });
    if let Some(url) = metrics {
        body["metrics"] = json!({ "url": url });
    }
    let bp = kit::signed_blueprint(
        &p.expert,
        json!({"name": "burner", "version": "1.0.0", "params": {}, "body": body}),
    );
    kit::signed(
        kit::contract(p.owner.public(), node, id, 1, bp),
        &[&p.owner],
    )
}

/// The sample time (ms) of the one series a `timestamp(...)` query returned.
fn sample_ms(found: &[Value]) -> u64 {
    let s = found[0]["value"][1].as_str().expect("a value");
    (s.parse::<f64>().expect("a number") * 1000.0) as u64
}
