//! One suite, two backends: every case below runs against a `dir://` notary and against
//! a real etcd server. Each test gets its own store (a `zt-` temp dir, or an etcd
//! server of its own), so the tests are parallel-safe.

mod common;

use std::time::Duration;

use serde_json::json;
use zos_contract::{PublicKey, SecretKey};
use zos_notary::{
    KeyError, KeyPrefix, Notary, NotaryError, NotaryKey, Record, RecordError, MAX_RECORD_BYTES,
};

use common::Backend;

/// A bound on waits for watch deliveries: generous, since this checks correctness, not
/// speed (the latency is measured by `cargo xtask bench contracts`).
const DELIVERY: Duration = Duration::from_secs(10);
/// How long to wait to conclude that nothing more is delivered.
const QUIET: Duration = Duration::from_millis(300);

fn sk(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

fn node(n: u8) -> PublicKey {
    sk(n).public()
}

fn contract_record(node_key: &PublicKey, id: &str, version: u64, author: &SecretKey) -> Record {
    let key = NotaryKey::contract(node_key, id).unwrap();
    // The envelope's author must be a party the body names (docs/notary.md).
    let body = json!({ "contract": { "owner": author.public(), "version": version } });
    Record::sign_at(&key, body, author, 1_700_000_000).unwrap()
}

async fn next(watch: &mut zos_notary::Watch) -> Record {
    tokio::time::timeout(DELIVERY, watch.recv())
        .await
        .expect("no record delivered within the bound")
        .expect("the watch ended")
}

async fn nothing_more(watch: &mut zos_notary::Watch) {
    if let Ok(Some(r)) = tokio::time::timeout(QUIET, watch.recv()).await {
        panic!("unexpected delivery of {}", r.key);
    }
}

/// The cases, each generic over the backend.
mod cases {
    use super::*;

    pub async fn put_get_roundtrip(b: &impl Backend) {
        let n = b.notary();
        let r = contract_record(&node(1), "web-1", 1, &sk(10));
        let key = r.notary_key().unwrap();
        assert_eq!(n.get(&key).await.unwrap(), None);
        n.put(&r).await.unwrap();
        assert_eq!(n.get(&key).await.unwrap(), Some(r.clone()));
        // Replacing: the latest put wins.
        let r2 = contract_record(&node(1), "web-1", 2, &sk(10));
        n.put(&r2).await.unwrap();
        assert_eq!(n.get(&key).await.unwrap(), Some(r2.clone()));
        // Another handle (another process) sees the same.
        assert_eq!(b.reopen().get(&key).await.unwrap(), Some(r2));
    }

    pub async fn put_refuses_what_readers_would_refuse(b: &impl Backend) {
        let n = b.notary();
        let mut forged = contract_record(&node(1), "c", 1, &sk(10));
        forged.body = json!({"version": 99});
        let err = n.put(&forged).await.unwrap_err();
        assert!(
            matches!(err, NotaryError::Record(RecordError::BadSignature { .. })),
            "{err}"
        );
        // A node's status written by someone else.
        let status = NotaryKey::status(&node(1), "c").unwrap();
        let wrong = Record::sign_at(&status, json!({}), &sk(10), 1).unwrap();
        let err = n.put(&wrong).await.unwrap_err();
        assert!(
            matches!(err, NotaryError::Record(RecordError::WrongAuthor { .. })),
            "{err}"
        );
        // Nothing was stored.
        assert!(n.list(&KeyPrefix::all()).await.unwrap().is_empty());
    }

    pub async fn list_is_sorted_and_bounded_by_the_prefix(b: &impl Backend) {
        let n = b.notary();
        let (a, z) = (node(1), node(2));
        for id in ["c", "a", "b"] {
            n.put(&contract_record(&a, id, 1, &sk(10))).await.unwrap();
        }
        n.put(&contract_record(&z, "a", 1, &sk(10))).await.unwrap();
        n.put(&Record::sign_at(&NotaryKey::farm("1").unwrap(), json!({}), &sk(9), 1).unwrap())
            .await
            .unwrap();
        n.put(&Record::sign_at(&NotaryKey::farm("10").unwrap(), json!({}), &sk(9), 1).unwrap())
            .await
            .unwrap();
        n.put(&Record::sign_at(&NotaryKey::heartbeat(&a), json!({}), &sk(1), 1).unwrap())
            .await
            .unwrap();

        let keys = |rs: Vec<Record>| rs.into_iter().map(|r| r.key).collect::<Vec<_>>();
        let mine = keys(n.list(&KeyPrefix::node_contracts(&a)).await.unwrap());
        assert_eq!(
            mine,
            ["a", "b", "c"]
                .iter()
                .map(|id| format!("nodes/{a}/contracts/{id}"))
                .collect::<Vec<_>>()
        );
        // `farms/1` covers farms/1 itself, never farms/10.
        let farm1 = keys(n.list(&KeyPrefix::parse("farms/1").unwrap()).await.unwrap());
        assert_eq!(farm1, vec!["farms/1".to_string()]);
        assert_eq!(n.list(&KeyPrefix::farms()).await.unwrap().len(), 2);
        assert_eq!(n.list(&KeyPrefix::node(&a)).await.unwrap().len(), 4);
        assert_eq!(n.list(&KeyPrefix::all()).await.unwrap().len(), 7);
        assert!(n
            .list(&KeyPrefix::node_status(&a))
            .await
            .unwrap()
            .is_empty());
    }

    pub async fn forged_records_are_refused_by_get_and_skipped_by_list(b: &impl Backend) {
        let n = b.notary();
        let good = contract_record(&node(1), "good", 1, &sk(10));
        n.put(&good).await.unwrap();

        // Bad signature, written straight into the store.
        let mut forged = contract_record(&node(1), "forged", 1, &sk(10));
        forged.body = json!({"version": 2});
        b.raw_put(&forged.key, &forged.to_bytes().unwrap());
        // A valid record replayed under another key.
        let moved = contract_record(&node(1), "elsewhere", 1, &sk(10));
        let moved_to = NotaryKey::contract(&node(1), "moved").unwrap();
        b.raw_put(moved_to.as_str(), &moved.to_bytes().unwrap());
        // Garbage and an oversized value.
        let garbage = NotaryKey::contract(&node(1), "garbage").unwrap();
        b.raw_put(garbage.as_str(), b"{\"not\": \"a record\"");
        let huge = NotaryKey::contract(&node(1), "huge").unwrap();
        b.raw_put(huge.as_str(), &vec![b' '; MAX_RECORD_BYTES + 1]);

        let err = n.get(&forged.notary_key().unwrap()).await.unwrap_err();
        assert!(
            matches!(err, NotaryError::Record(RecordError::BadSignature { .. })),
            "{err}"
        );
        let err = n.get(&moved_to).await.unwrap_err();
        assert!(
            matches!(err, NotaryError::Record(RecordError::KeyMismatch { .. })),
            "{err}"
        );
        let err = n.get(&garbage).await.unwrap_err();
        assert!(matches!(err, NotaryError::Record(_)), "{err}");
        let err = n.get(&huge).await.unwrap_err();
        assert!(
            matches!(err, NotaryError::Record(RecordError::Oversized { .. })),
            "{err}"
        );

        let listed = n.list(&KeyPrefix::node_contracts(&node(1))).await.unwrap();
        assert_eq!(listed, vec![good]);
    }

    pub async fn watch_delivers_new_records_only(b: &impl Backend) {
        let n = b.notary();
        let me = node(1);
        n.put(&contract_record(&me, "old", 1, &sk(10)))
            .await
            .unwrap();
        let mut watch = n.watch(&KeyPrefix::node_contracts(&me)).await.unwrap();
        // Elsewhere: not delivered.
        n.put(&contract_record(&node(2), "other", 1, &sk(10)))
            .await
            .unwrap();
        let fresh = contract_record(&me, "new", 1, &sk(10));
        n.put(&fresh).await.unwrap();
        assert_eq!(next(&mut watch).await, fresh);
        // An update of the same key is delivered again.
        let update = contract_record(&me, "new", 2, &sk(10));
        n.put(&update).await.unwrap();
        assert_eq!(next(&mut watch).await, update);
        nothing_more(&mut watch).await;
    }

    pub async fn watch_skips_forged_records(b: &impl Backend) {
        let n = b.notary();
        let me = node(1);
        let mut watch = n.watch(&KeyPrefix::node_contracts(&me)).await.unwrap();
        let mut forged = contract_record(&me, "forged", 1, &sk(10));
        forged.body = json!({"version": 7});
        b.raw_put(&forged.key, &forged.to_bytes().unwrap());
        let good = contract_record(&me, "good", 1, &sk(10));
        n.put(&good).await.unwrap();
        assert_eq!(next(&mut watch).await, good);
        nothing_more(&mut watch).await;
    }

    pub async fn watch_sees_writes_from_another_handle(b: &impl Backend) {
        let me = node(3);
        let mut watch = b
            .notary()
            .watch(&KeyPrefix::node_contracts(&me))
            .await
            .unwrap();
        let writer = b.reopen();
        let r = contract_record(&me, "x", 1, &sk(10));
        writer.put(&r).await.unwrap();
        assert_eq!(next(&mut watch).await, r);
    }

    pub async fn subscribe_gives_snapshot_then_changes(b: &impl Backend) {
        let n = b.notary();
        let me = node(1);
        let first = contract_record(&me, "a", 1, &sk(10));
        n.put(&first).await.unwrap();
        let (existing, mut watch) = n.subscribe(&KeyPrefix::node_contracts(&me)).await.unwrap();
        assert_eq!(existing, vec![first]);
        let second = contract_record(&me, "b", 1, &sk(10));
        n.put(&second).await.unwrap();
        assert_eq!(next(&mut watch).await, second);
    }

    pub async fn concurrent_writers_never_expose_a_partial_record(b: &impl Backend) {
        let me = node(1);
        let writers: Vec<_> = (0..4u8)
            .map(|w| {
                let n = b.reopen();
                tokio::spawn(async move {
                    for v in 0..10u64 {
                        // Everyone writes the shared key and a key of its own.
                        let author = sk(20 + w);
                        n.put(&contract_record(&me, "shared", v, &author))
                            .await
                            .unwrap();
                        n.put(&contract_record(&me, &format!("w{w}"), v, &author))
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        let reader = b.reopen();
        let shared = NotaryKey::contract(&me, "shared").unwrap();
        // Read while they write: always nothing or a whole, verified record.
        for _ in 0..50 {
            let _ = reader.get(&shared).await.unwrap();
        }
        for w in writers {
            w.await.unwrap();
        }
        let all = b
            .notary()
            .list(&KeyPrefix::node_contracts(&me))
            .await
            .unwrap();
        assert_eq!(all.len(), 5, "shared + one per writer");
        for r in all.iter().filter(|r| r.key.ends_with("/w0")) {
            assert_eq!(r.body["contract"]["version"], json!(9));
        }
    }

    pub async fn keys_outside_the_layout_are_refused(b: &impl Backend) {
        let n = b.notary();
        for bad in [
            "../etc/passwd",
            "/abs",
            "farms/..",
            "nodes/xyz/registration",
        ] {
            assert!(NotaryKey::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            NotaryKey::parse("farms/../x"),
            Err(KeyError::PathTraversal(_))
        ));
        // A record signed for a traversal key is refused before it reaches the store.
        let mut r = Record::sign_at(&NotaryKey::farm("1").unwrap(), json!({}), &sk(1), 1).unwrap();
        r.key = "farms/../../x".into();
        let err = n.put(&r).await.unwrap_err();
        assert!(
            matches!(
                err,
                NotaryError::Record(RecordError::Key(KeyError::PathTraversal(_)))
            ),
            "{err}"
        );
        assert!(n.list(&KeyPrefix::all()).await.unwrap().is_empty());
    }
}

/// Instantiates every case for one backend.
macro_rules! suite {
    ($backend:ident, $fixture:expr; $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let backend = $fixture.await;
                    super::cases::$case(&backend).await;
                }
            )*
        }
    };
}

macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        suite!(dir, crate::common::DirBackend::new(); $($case),*);
        suite!(etcd, crate::common::EtcdBackend::new(); $($case),*);
    };
}

both_backends!(
    put_get_roundtrip,
    put_refuses_what_readers_would_refuse,
    list_is_sorted_and_bounded_by_the_prefix,
    forged_records_are_refused_by_get_and_skipped_by_list,
    watch_delivers_new_records_only,
    watch_skips_forged_records,
    watch_sees_writes_from_another_handle,
    subscribe_gives_snapshot_then_changes,
    concurrent_writers_never_expose_a_partial_record,
    keys_outside_the_layout_are_refused,
);
