//! The D-Bus server and the client against each other, over a real socket in a
//! temporary directory.

use std::os::unix::fs::PermissionsExt;

use zos_status::client::StatusClient;
use zos_status::{ContractStatus, NodeStatus, PoolStatus, Resources, WorkloadLine};

fn sample() -> NodeStatus {
    let mut s = NodeStatus {
        node: "ab".repeat(32),
        farm: Some("farm-1".into()),
        version: "0.1.0".into(),
        state: "serving".into(),
        uptime_secs: 42,
        addresses: vec!["eth0 10.0.2.15/24".into()],
        pools: vec![PoolStatus {
            label: "zos-0".into(),
            kind: "ssd".into(),
            state: "online".into(),
            size_bytes: 1 << 30,
            used_bytes: 1 << 20,
        }],
        offered: Resources {
            cpu: 4,
            memory_bytes: 1 << 30,
            ssd_bytes: 1 << 30,
            hdd_bytes: 0,
        },
        reserved: Resources::default(),
        contracts: vec![ContractStatus {
            id: "c1".into(),
            version: Some(1),
            state: "ok".into(),
            message: "every workload runs".into(),
        }],
        workloads: vec![WorkloadLine {
            contract: "c1".into(),
            name: "app".into(),
            kind: "container".into(),
            state: "running".into(),
            restarts: 0,
            address: Some("10.70.0.2".into()),
            runtime: None,
            output: Some("hello".into()),
        }],
        errors: Vec::new(),
    };
    s.push_error(7, "farm", "missing");
    s
}

#[tokio::test]
async fn client_reads_what_the_server_holds_and_sees_changes() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("run/zos/status.sock");
    let (tx, rx) = zos_status::channel(sample());
    let server = zos_status::server::serve(&sock, rx).unwrap();

    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    let dir_mode = std::fs::metadata(sock.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "created dir mode {dir_mode:o}");

    assert_eq!(zos_status::client::read(&sock).await.unwrap(), sample());

    let c = StatusClient::connect(&sock).await.unwrap();
    assert_eq!(c.string("NodeKey").await.unwrap(), "ab".repeat(32));
    assert_eq!(c.string("Farm").await.unwrap(), "farm-1");
    let uptime: u64 = c.property("UptimeSecs").await.unwrap().try_into().unwrap();
    assert_eq!(uptime, 42);
    let pools: Vec<(String, String, String, u64, u64)> =
        c.property("Pools").await.unwrap().try_into().unwrap();
    assert_eq!(pools[0].0, "zos-0");
    let workloads: Vec<(String, String, String, String, u32, String, String)> =
        c.property("Workloads").await.unwrap().try_into().unwrap();
    assert_eq!(workloads[0].3, "running");

    tx.send_modify(|s| s.state = "stopping".into());
    assert_eq!(c.string("State").await.unwrap(), "stopping");
    assert_eq!(c.status().await.unwrap().state, "stopping");

    drop(c);
    drop(server);
    assert!(!sock.exists(), "the socket goes with the server");
}

#[tokio::test]
async fn the_interface_has_no_method_and_nothing_can_be_set() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("status.sock");
    let (_tx, rx) = zos_status::channel(sample());
    let _server = zos_status::server::serve(&sock, rx).unwrap();
    let c = StatusClient::connect(&sock).await.unwrap();
    let xml = c.introspect().await.unwrap();

    let start = xml
        .find("<interface name=\"org.zos.Node1\">")
        .unwrap_or_else(|| panic!("no org.zos.Node1 in\n{xml}"));
    let body = &xml[start..start + xml[start..].find("</interface>").unwrap()];
    assert!(
        !body.contains("<method"),
        "a method on org.zos.Node1:\n{body}"
    );
    assert!(
        !body.contains("<signal"),
        "a signal on org.zos.Node1:\n{body}"
    );
    let properties = body.matches("<property ").count();
    assert!(properties >= 12, "{body}");
    assert_eq!(
        body.matches("access=\"read\"").count(),
        properties,
        "every property is read-only:\n{body}"
    );
    for p in [
        "NodeKey",
        "Farm",
        "Version",
        "UptimeSecs",
        "Addresses",
        "Pools",
        "Offered",
        "Reserved",
        "Workloads",
        "Contracts",
        "LastErrors",
        "StatusJson",
    ] {
        assert!(body.contains(&format!("name=\"{p}\"")), "no {p}:\n{body}");
    }

    // The standard Properties.Set exists on every object; on ours it is refused.
    let set = c
        .connection()
        .call_method(
            None::<&str>,
            zos_status::OBJECT_PATH,
            Some("org.freedesktop.DBus.Properties"),
            "Set",
            &(
                zos_status::INTERFACE,
                "Farm",
                zbus::zvariant::Value::from("stolen"),
            ),
        )
        .await;
    assert!(set.is_err(), "Set was accepted");
    assert_eq!(c.string("Farm").await.unwrap(), "farm-1");
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_missing_one_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("status.sock");
    let err = zos_status::client::read(&sock).await.unwrap_err();
    assert!(err.to_string().contains("connect"), "{err}");

    // A previous zosd died and left its socket behind.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let (_tx, rx) = zos_status::channel(sample());
    let _server = zos_status::server::serve(&sock, rx).unwrap();
    assert_eq!(
        zos_status::client::read(&sock).await.unwrap().node,
        "ab".repeat(32)
    );
}
