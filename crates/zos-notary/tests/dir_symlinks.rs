//! Attack: a `dir://` tree whose directories are symlinks to elsewhere (someone with
//! write access to the notary directory plants `nodes/<key>/contracts -> /etc`, or a
//! `nodes` link to a directory of their choosing). The notary must refuse to read or
//! write through such a link, with [`NotaryError::Symlink`], and nothing outside the
//! tree may be read (no record from there is returned) or written (no file appears
//! there).

mod signed;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use signed::{contract, node, sk};
use zos_notary::{KeyPrefix, Notary, NotaryError, NotaryKey, Record};

fn tmp(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(prefix).tempdir().unwrap()
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn is_symlink_error(e: &NotaryError) -> bool {
    matches!(e, NotaryError::Symlink { .. })
}

/// `nodes/<key>/contracts -> <outside>`, where `<outside>` holds a valid record: get,
/// list and put through the link are refused, nothing is read or written there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contracts_dir_symlinked_outside_is_refused() {
    let root = tmp("zt-notary-");
    let outside = tmp("zt-outside-");
    // A valid record outside the tree, at the name the link would expose.
    let planted = contract("c1");
    std::fs::write(outside.path().join("c1.json"), planted.to_bytes().unwrap()).unwrap();
    let node_dir = root.path().join(format!("nodes/{}", node()));
    std::fs::create_dir_all(&node_dir).unwrap();
    std::os::unix::fs::symlink(outside.path(), node_dir.join("contracts")).unwrap();
    let before = names(outside.path());

    let n = zos_notary::open(&format!("dir://{}", root.path().display())).unwrap();

    let got = n.get(&planted.notary_key().unwrap()).await;
    assert!(
        matches!(&got, Err(e) if is_symlink_error(e)),
        "get through the link: {got:?}"
    );
    let listed = n.list(&KeyPrefix::node_contracts(&node())).await;
    assert!(
        matches!(&listed, Err(e) if is_symlink_error(e)),
        "list of the linked prefix: {listed:?}"
    );
    // A listing from above skips the link (logged), it does not descend into it.
    let all = n.list(&KeyPrefix::all()).await.unwrap();
    assert!(all.is_empty(), "read from outside the tree: {all:?}");

    let fresh = contract("c2");
    let put = n.put(&fresh).await;
    assert!(
        matches!(&put, Err(e) if is_symlink_error(e)),
        "put through the link: {put:?}"
    );
    assert_eq!(names(outside.path()), before, "written outside the tree");

    // A watch on the node does not descend into the link either: a record the
    // attacker writes there is not delivered; the node's own next record is.
    let mut watch = n.watch(&KeyPrefix::node(&node())).await.unwrap();
    std::fs::write(
        outside.path().join("c3.json"),
        contract("c3").to_bytes().unwrap(),
    )
    .unwrap();
    let hb = Record::sign_at(&NotaryKey::heartbeat(&node()), json!({}), &sk(1), 1).unwrap();
    n.put(&hb).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.recv())
        .await
        .expect("the heartbeat is delivered")
        .unwrap();
    assert_eq!(first, hb, "only the node's heartbeat, nothing from outside");
    assert!(watch.try_recv().is_none());
}

/// `nodes -> <outside>` one level up, and a record file that is itself a link: refused
/// by get with the same error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlinked_nodes_dir_and_a_symlinked_record_are_refused() {
    let root = tmp("zt-notary-");
    let outside = tmp("zt-outside-");
    let planted = contract("c1");
    let there = outside.path().join(format!("{}/contracts", node()));
    std::fs::create_dir_all(&there).unwrap();
    std::fs::write(there.join("c1.json"), planted.to_bytes().unwrap()).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("nodes")).unwrap();

    let n = zos_notary::open(&format!("dir://{}", root.path().display())).unwrap();
    let got = n.get(&planted.notary_key().unwrap()).await;
    assert!(
        matches!(&got, Err(e) if is_symlink_error(e)),
        "get through `nodes`: {got:?}"
    );
    let listed = n.list(&KeyPrefix::node(&node())).await;
    assert!(
        matches!(&listed, Err(e) if is_symlink_error(e)),
        "list through `nodes`: {listed:?}"
    );
    let put = n.put(&contract("c2")).await;
    assert!(
        matches!(&put, Err(e) if is_symlink_error(e)),
        "put through `nodes`: {put:?}"
    );
    assert!(!there.join("c2.json").exists(), "written outside the tree");

    // A record file linked to a file outside.
    std::fs::remove_file(root.path().join("nodes")).unwrap();
    let dir = root.path().join(format!("nodes/{}/contracts", node()));
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(there.join("c1.json"), dir.join("c1.json")).unwrap();
    let got = n.get(&planted.notary_key().unwrap()).await;
    assert!(
        matches!(&got, Err(e) if is_symlink_error(e)),
        "get of a linked record file: {got:?}"
    );
    assert!(n
        .list(&KeyPrefix::node_contracts(&node()))
        .await
        .unwrap()
        .is_empty());
}
