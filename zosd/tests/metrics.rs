//! The node's metrics are pushed (docs/observability.md): the farm record names a
//! Prometheus remote-write target, and a real Prometheus (Debian's, receiver on) holds
//! the node's series afterwards, labelled with the node id: CPU, memory, network and
//! its pools' usage.

mod common;

use common::*;
use zos_contract::SecretKey;
use zos_registry::{Farm, Telemetry};
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
}
