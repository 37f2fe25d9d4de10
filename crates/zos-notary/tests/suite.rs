//! One suite, two backends: every case below runs against a `dir://` notary and against
//! a real etcd server. Each test gets its own store (a `zt-` temp dir, or an etcd
//! server of its own), so the tests are parallel-safe.

mod common;

use std::time::Duration;

use serde_json::json;
use zos_contract::{PublicKey, SecretKey};
use zos_notary::{
    EventWatch, Expect, KeyError, KeyPrefix, Notary, NotaryError, NotaryKey, Record, RecordError,
    WatchEvent, MAX_RECORD_BYTES,
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

async fn next_event(watch: &mut EventWatch) -> WatchEvent {
    tokio::time::timeout(DELIVERY, watch.recv())
        .await
        .expect("no event delivered within the bound")
        .expect("the watch ended")
}

/// Waits for the deletion of `key`, past any puts of it still queued.
async fn deleted(watch: &mut EventWatch, key: &NotaryKey, bound: Duration) {
    let wait = async {
        loop {
            match watch.recv().await.expect("the watch ended") {
                WatchEvent::Deleted(k) if &k == key => return,
                WatchEvent::Put(r) if r.key == key.as_str() => continue,
                other => panic!("unexpected event {other:?} while waiting for {key}'s deletion"),
            }
        }
    };
    tokio::time::timeout(bound, wait)
        .await
        .unwrap_or_else(|_| panic!("{key}: no deletion event within {bound:?}"));
}

/// The TTL the lease cases grant: etcd's minimum is about 2 s (1.5 election timeouts).
const TTL: Duration = Duration::from_secs(2);

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
        // A node's liveness kept by someone else: a dead node made to look alive.
        let alive = NotaryKey::alive(&node(1));
        let forged = Record::sign_at(&alive, json!({"ttl_ms": 2000}), &sk(10), 1).unwrap();
        let lease = n.grant_lease(TTL).await.unwrap();
        let err = n
            .put_leased(&forged, &lease, &Expect::Any)
            .await
            .unwrap_err();
        assert!(
            matches!(err, NotaryError::Record(RecordError::WrongAuthor { .. })),
            "{err}"
        );
        n.revoke(&lease).await.unwrap();
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

    /// Many rounds of writers racing to create one key, each through its own handle on
    /// its own task: exactly one wins, the others get `Conflict`, and the stored record is
    /// the winner's.
    pub async fn racing_creators_have_exactly_one_winner(b: &impl Backend) {
        const WRITERS: u8 = 4;
        let me = node(1);
        let handles: Vec<_> = (0..WRITERS).map(|_| b.reopen()).collect();
        for round in 0..40u64 {
            let id = format!("leader-{round}");
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(WRITERS as usize));
            let racers: Vec<_> = handles
                .iter()
                .enumerate()
                .map(|(w, n)| {
                    let n = n.clone();
                    let barrier = barrier.clone();
                    let record = contract_record(&me, &id, round, &sk(20 + w as u8));
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let result = n.put_if(&record, &Expect::Absent).await;
                        (record, result)
                    })
                })
                .collect();
            let mut winners = Vec::new();
            for racer in racers {
                let (record, result) = racer.await.unwrap();
                match result {
                    Ok(()) => winners.push(record),
                    Err(NotaryError::Conflict { key }) => {
                        assert_eq!(key, record.key, "the conflict names the key")
                    }
                    Err(e) => panic!("round {round}: a racer failed otherwise: {e}"),
                }
            }
            assert_eq!(winners.len(), 1, "round {round}: {} winners", winners.len());
            let stored = b
                .notary()
                .get(&NotaryKey::contract(&me, &id).unwrap())
                .await
                .unwrap();
            assert_eq!(stored.as_ref(), Some(&winners[0]), "round {round}");
        }
    }

    /// A writer that read v1 and was overtaken by another (v2) is refused: the stored
    /// record stays v2, and a watcher sees v2 only.
    pub async fn a_stale_compare_and_swap_is_refused(b: &impl Backend) {
        let n = b.notary();
        let me = node(1);
        let key = NotaryKey::contract(&me, "assignment").unwrap();
        let v1 = contract_record(&me, "assignment", 1, &sk(10));
        n.put_if(&v1, &Expect::Absent).await.unwrap();
        let read = n.get(&key).await.unwrap().unwrap();
        // Creating it again is refused, the record unchanged.
        let again = contract_record(&me, "assignment", 9, &sk(10));
        let err = n.put_if(&again, &Expect::Absent).await.unwrap_err();
        assert!(
            matches!(&err, NotaryError::Conflict { key: k } if k == key.as_str()),
            "{err}"
        );
        assert_eq!(n.get(&key).await.unwrap().as_ref(), Some(&v1));

        let mut events = n
            .watch_events(&KeyPrefix::node_contracts(&me))
            .await
            .unwrap();
        let v2 = contract_record(&me, "assignment", 2, &sk(10));
        b.reopen()
            .put_if(&v2, &Expect::Current(read.clone()))
            .await
            .unwrap();
        let stale = contract_record(&me, "assignment", 3, &sk(11));
        let err = n.put_if(&stale, &Expect::Current(read)).await.unwrap_err();
        assert!(
            matches!(&err, NotaryError::Conflict { key: k } if k == key.as_str()),
            "{err}"
        );
        assert_eq!(n.get(&key).await.unwrap().as_ref(), Some(&v2));
        // Expecting a record where there is none is refused too, and writes nothing.
        let ghost = contract_record(&me, "ghost", 1, &sk(10));
        let err = n
            .put_if(&ghost, &Expect::Current(v2.clone()))
            .await
            .unwrap_err();
        assert!(matches!(err, NotaryError::Conflict { .. }), "{err}");
        assert_eq!(n.get(&ghost.notary_key().unwrap()).await.unwrap(), None);
        // A forged record is refused before any comparison.
        let mut forged = contract_record(&me, "assignment", 4, &sk(10));
        forged.body = json!({"version": 99});
        let err = n
            .put_if(&forged, &Expect::Current(v2.clone()))
            .await
            .unwrap_err();
        assert!(
            matches!(err, NotaryError::Record(RecordError::BadSignature { .. })),
            "{err}"
        );
        assert_eq!(next_event(&mut events).await, WatchEvent::Put(v2.clone()));
        // The current expectation wins.
        let v3 = contract_record(&me, "assignment", 3, &sk(10));
        n.put_if(&v3, &Expect::Current(v2)).await.unwrap();
        assert_eq!(next_event(&mut events).await, WatchEvent::Put(v3.clone()));
        assert_eq!(n.get(&key).await.unwrap(), Some(v3));
        assert!(events.try_recv().is_none(), "nothing else was written");
    }

    /// A corrupt value at the key is present and never the expected record: both
    /// conditions conflict (nothing written); an unconditional leased put replaces it.
    pub async fn compare_and_swap_over_a_corrupt_value(b: &impl Backend) {
        let n = b.notary();
        let me = node(1);
        let good = contract_record(&me, "junk", 1, &sk(10));
        let key = good.notary_key().unwrap();
        b.raw_put(key.as_str(), b"{\"not\": \"a record\"");
        for expect in [Expect::Absent, Expect::Current(good.clone())] {
            let err = n.put_if(&good, &expect).await.unwrap_err();
            assert!(
                matches!(err, NotaryError::Conflict { .. }),
                "{expect:?}: {err}"
            );
            assert!(
                matches!(n.get(&key).await, Err(NotaryError::Record(_))),
                "the junk is still there, unchanged"
            );
        }
        let lease = n.grant_lease(TTL).await.unwrap();
        n.put_leased(&good, &lease, &Expect::Any).await.unwrap();
        assert_eq!(n.get(&key).await.unwrap(), Some(good));
        n.revoke(&lease).await.unwrap();
        assert_eq!(n.get(&key).await.unwrap(), None);
    }

    /// A key put with a lease that nobody keeps alive disappears: a deletion event
    /// arrives, `get` and `list` no longer return it, the lease can no longer be kept
    /// alive or carry a key, and the key can be created afresh.
    pub async fn a_leased_key_expires_without_keep_alive(b: &impl Backend) {
        let n = b.notary();
        let me = node(1);
        let mut events = n.watch_events(&KeyPrefix::node(&me)).await.unwrap();
        let lease = n.grant_lease(TTL).await.unwrap();
        assert!(lease.ttl() >= TTL, "granted {:?}", lease.ttl());
        let hb = Record::sign_at(&NotaryKey::heartbeat(&me), json!({"up": 1}), &sk(1), 1).unwrap();
        let key = hb.notary_key().unwrap();
        n.put_leased(&hb, &lease, &Expect::Absent).await.unwrap();
        assert_eq!(next_event(&mut events).await, WatchEvent::Put(hb.clone()));
        assert_eq!(n.get(&key).await.unwrap().as_ref(), Some(&hb));

        // The event, not a sleep: etcd deletes the key when the lease runs out; a dir://
        // watcher judges the file's age on its own clock.
        deleted(&mut events, &key, lease.ttl() + DELIVERY).await;
        assert_eq!(n.get(&key).await.unwrap(), None);
        assert!(n.list(&KeyPrefix::node(&me)).await.unwrap().is_empty());
        assert_eq!(b.reopen().get(&key).await.unwrap(), None);
        let err = n.keep_alive(&lease).await.unwrap_err();
        assert!(
            matches!(err, NotaryError::LeaseExpired { lease: id } if id == lease.id()),
            "{err}"
        );
        let err = n.put_leased(&hb, &lease, &Expect::Any).await.unwrap_err();
        assert!(matches!(err, NotaryError::LeaseExpired { .. }), "{err}");
        assert_eq!(n.get(&key).await.unwrap(), None, "nothing written");

        // Gone means absent: a new holder can take the key.
        let lease2 = n.grant_lease(TTL).await.unwrap();
        let hb2 = Record::sign_at(&key, json!({"up": 2}), &sk(1), 2).unwrap();
        n.put_leased(&hb2, &lease2, &Expect::Absent).await.unwrap();
        assert_eq!(n.get(&key).await.unwrap(), Some(hb2));
        n.revoke(&lease2).await.unwrap();
    }

    /// Kept alive, a leased key outlives its TTL several times over: it stays readable
    /// and no deletion is reported. Revoked, it is gone and its deletion reported.
    pub async fn a_kept_alive_key_stays_until_revoked(b: &impl Backend) {
        let n = b.notary();
        let me = node(1);
        let mut events = n.watch_events(&KeyPrefix::node(&me)).await.unwrap();
        let lease = n.grant_lease(TTL).await.unwrap();
        let hb = Record::sign_at(&NotaryKey::heartbeat(&me), json!({"up": 1}), &sk(1), 1).unwrap();
        let key = hb.notary_key().unwrap();
        n.put_leased(&hb, &lease, &Expect::Any).await.unwrap();
        assert_eq!(next_event(&mut events).await, WatchEvent::Put(hb.clone()));

        // The positive signal: keep-alives acknowledged until three TTLs have passed
        // since the put, each renewal within a third of the TTL.
        let start = std::time::Instant::now();
        let mut acks = 0;
        while start.elapsed() < 3 * lease.ttl() || acks < 6 {
            tokio::time::sleep(lease.ttl() / 3).await;
            let ttl = n.keep_alive(&lease).await.unwrap();
            assert!(ttl > Duration::ZERO);
            acks += 1;
            assert_eq!(
                n.get(&key).await.unwrap().as_ref(),
                Some(&hb),
                "after {acks} keep-alives"
            );
        }
        assert_eq!(
            n.list(&KeyPrefix::node(&me)).await.unwrap(),
            vec![hb.clone()]
        );
        assert_eq!(events.try_recv(), None, "no deletion while kept alive");

        n.revoke(&lease).await.unwrap();
        deleted(&mut events, &key, DELIVERY).await;
        assert_eq!(n.get(&key).await.unwrap(), None);
        let err = n.keep_alive(&lease).await.unwrap_err();
        assert!(matches!(err, NotaryError::LeaseExpired { .. }), "{err}");
        // Revoking again is not an error.
        n.revoke(&lease).await.unwrap();
    }

    /// `delete` removes the key and a `Deleted` event arrives; the older `watch` keeps
    /// its element type (records) and goes on delivering puts after the deletion.
    pub async fn delete_is_reported_as_an_event(b: &impl Backend) {
        let n = b.notary();
        let me = node(1);
        let prefix = KeyPrefix::node_contracts(&me);
        let mut events = n.watch_events(&prefix).await.unwrap();
        let mut records = n.watch(&prefix).await.unwrap();
        let r = contract_record(&me, "gone", 1, &sk(10));
        let key = r.notary_key().unwrap();
        n.put(&r).await.unwrap();
        assert_eq!(next_event(&mut events).await, WatchEvent::Put(r.clone()));
        b.reopen().delete(&key).await.unwrap();
        assert_eq!(
            next_event(&mut events).await,
            WatchEvent::Deleted(key.clone())
        );
        assert_eq!(n.get(&key).await.unwrap(), None);
        assert!(n.list(&prefix).await.unwrap().is_empty());
        // Deleting what is not there is fine, and reports nothing.
        n.delete(&key).await.unwrap();
        n.delete(&NotaryKey::contract(&node(9), "never").unwrap())
            .await
            .unwrap();
        let after = contract_record(&me, "after", 1, &sk(10));
        n.put(&after).await.unwrap();
        assert_eq!(
            next_event(&mut events).await,
            WatchEvent::Put(after.clone())
        );
        assert_eq!(next(&mut records).await, r);
        assert_eq!(next(&mut records).await, after);
        nothing_more(&mut records).await;
    }

    /// `subscribe_events`: the snapshot, then puts and deletions after it.
    pub async fn subscribe_events_gives_snapshot_then_changes(b: &impl Backend) {
        let n = b.notary();
        let me = node(1);
        let first = contract_record(&me, "a", 1, &sk(10));
        n.put(&first).await.unwrap();
        let (existing, mut events) = n
            .subscribe_events(&KeyPrefix::node_contracts(&me))
            .await
            .unwrap();
        assert_eq!(existing, vec![first.clone()]);
        let second = contract_record(&me, "b", 1, &sk(10));
        n.put(&second).await.unwrap();
        n.delete(&first.notary_key().unwrap()).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < 2 {
            match next_event(&mut events).await {
                // The snapshot's record may be delivered again (dir://: watch, then list).
                WatchEvent::Put(r) if r == first => {}
                e => seen.push(e),
            }
        }
        assert_eq!(
            seen,
            vec![
                WatchEvent::Put(second),
                WatchEvent::Deleted(first.notary_key().unwrap())
            ]
        );
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
    racing_creators_have_exactly_one_winner,
    a_stale_compare_and_swap_is_refused,
    compare_and_swap_over_a_corrupt_value,
    a_leased_key_expires_without_keep_alive,
    a_kept_alive_key_stays_until_revoked,
    delete_is_reported_as_an_event,
    subscribe_events_gives_snapshot_then_changes,
);
