//! A tenant network across nodes (issue #16, docs/network.md "Mesh") on this host, whose
//! kernel has no WireGuard module: two real `zosd run` nodes (tests/common's `Node`, each
//! in its own `zt-` namespaces with its own `dir://` notary) are handed one contract that
//! names both of them and has a network. Each refuses it for good with the code
//! `wireguard_missing`, and makes nothing: no tenant namespace, no container, no volume,
//! no WireGuard key file, no peer record.
//!
//! The attack it closes: before the engine knew about networks across nodes, each node
//! deployed the contract's network alone (the whole subnet on its own bridge, the same
//! addresses on both nodes, no link between them) and reported `ok`.

mod common;

use common::*;
use serde_json::json;
use zos_contract::{PublicKey, SignedContract};
use zos_notary::{Notary, NotaryKey};
use zos_testkit::contract as kit;

/// The contract `id` naming `nodes` (in that order) with one container on network
/// `net` (10.71.0.0/16) and a volume.
fn two_node_contract(
    p: &People,
    nodes: &[PublicKey],
    id: &str,
    flist: &(String, String, String),
) -> SignedContract {
    let app = shell_workload("app", flist, p, "echo written > /data/out; exec sleep 3600");
    let bp = kit::signed_blueprint(
        &p.expert,
        json!({
            "name": "busy",
            "version": "1.0.0",
            "params": {},
            "body": {
                "networks": [{"name": "net", "subnet": "10.71.0.0/16"}],
                "volumes": [{"name": "data", "size_mib": 64}],
                "workloads": [app]
            }
        }),
    );
    let mut c = kit::contract(p.owner.public(), nodes[0], id, 1, bp);
    c.nodes = nodes.to_vec();
    kit::signed(c, &[&p.owner])
}

/// The tenant namespaces of `node` (its network prefix's, its own two aside).
fn tenant_namespaces(node: &Node) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&node.world.prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// Files under `dir`, recursively (none when it does not exist).
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .flat_map(|e| {
            let path = e.path();
            if path.is_dir() {
                files_under(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

#[test]
fn a_network_across_nodes_is_refused_without_wireguard_and_nothing_is_made() {
    if !privileged("a_network_across_nodes_is_refused_without_wireguard_and_nothing_is_made") {
        return;
    }
    let p = people();
    let mut a = Node::new(512);
    let mut b = Node::new(512);
    let (ka, kb) = (a.start(), b.start());
    let flist = busybox_flist(a.dir.path(), &p.publisher);
    let id = a.id("mesh");
    let doc = two_node_contract(&p, &[ka, kb], &id, &flist);
    a.publish(&record(&p, ka, &doc));
    b.publish(&record(&p, kb, &doc));

    for (node, key) in [(&a, ka), (&b, kb)] {
        let s = node.wait_status(&id, "refused", |s| s["state"] != "provisioning");
        assert_eq!(s["state"], "refused", "{s:#}\nzosd log:\n{}", node.log());
        let reasons = s["reasons"].as_array().expect("reasons");
        assert_eq!(reasons.len(), 1, "{s:#}");
        assert_eq!(reasons[0]["code"], "wireguard_missing", "{s:#}");
        assert_eq!(
            reasons[0]["message"],
            "this node's kernel has no WireGuard: a network across nodes needs it"
        );
        // Nothing made: no tenant namespace, no container, no volume, no key file, no
        // peer record; the refusal is in the log.
        assert_eq!(tenant_namespaces(node), Vec::<String>::new());
        assert_eq!(node.container_pid(&format!("{id}.app")), None);
        assert_eq!(volume_file(node, &format!("{id}.data"), "out"), None);
        assert_eq!(
            files_under(&node.state().join("mesh")),
            Vec::<std::path::PathBuf>::new()
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mesh_key = NotaryKey::mesh(&key, &id, "net").unwrap();
        assert!(rt.block_on(node.notary.get(&mesh_key)).unwrap().is_none());
        assert!(
            node.log()
                .lines()
                .any(|l| l.contains("record refused") && l.contains("wireguard_missing")),
            "no refusal logged:\n{}",
            node.log()
        );
    }
}
