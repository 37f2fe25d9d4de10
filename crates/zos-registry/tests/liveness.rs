//! The node's liveness record (`zos_registry::liveness`) against a real etcd and a real
//! `dir://` tree, with a TTL of 2 s:
//!
//! - `on_etcd_the_key_lives_with_the_renewals_and_expires_when_etcd_is_unreachable`: the
//!   node reaches etcd through a TCP relay the test can cut (a partition: etcd keeps
//!   running and judges the lease). Cut from the start, nothing is renewed (`None`);
//!   relayed, the key appears, signed by the node, and `renewed` advances; cut again,
//!   etcd expires the lease and the key is deleted (the deletion event), and no renewal
//!   sent after the cut is recorded; relayed again, the key comes back and `renewed`
//!   advances past the cut.
//! - `on_a_directory_the_key_expires_when_the_node_stops_renewing`: the same on `dir://`,
//!   where the node stops renewing by dropping its `Liveness` (what a dead node does);
//!   the record expires on the reader's clock, and a new `Liveness` puts it back.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use zos_contract::SecretKey;
use zos_notary::{AnyNotary, EventWatch, KeyPrefix, Notary, NotaryKey, Record, WatchEvent};
use zos_registry::liveness::{self, boottime};
use zos_testkit::etcd::Etcd;

const TTL: Duration = Duration::from_secs(2);
/// Bound on every wait for an event (each is expected within a few TTLs).
const WAIT: Duration = Duration::from_secs(30);

fn node() -> SecretKey {
    SecretKey::from_seed([41; 32])
}

/// A TCP relay to `target` that the test can cut: cut, it closes the connections it
/// relays and every new one at once, and counts those it refused.
struct Relay {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    refused: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr, open: bool) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (open_tx, open_rx) = watch::channel(open);
        let (refused_tx, refused) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                if !*open_rx.borrow() {
                    drop(inbound);
                    refused_tx.send_modify(|n| *n += 1);
                    continue;
                }
                let mut open = open_rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = open.wait_for(|open| !*open) => {}
                    }
                });
            }
        });
        Relay {
            addr,
            open: open_tx,
            refused,
            task,
        }
    }

    fn set(&self, open: bool) {
        self.open.send_replace(open);
    }

    /// Waits until the relay has refused a connection since `since` refusals.
    async fn refused_after(&mut self, since: u64) {
        within(self.refused.wait_for(|n| *n > since))
            .await
            .expect("the relay's counter");
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("nothing within {WAIT:?}"))
}

/// The next put of `key` (checked: the node's own record).
async fn put(events: &mut EventWatch, key: &NotaryKey) -> Record {
    within(async {
        loop {
            match events.recv().await.expect("the watch ended") {
                WatchEvent::Put(r) if r.key == key.as_str() => return r,
                _ => continue,
            }
        }
    })
    .await
}

/// Waits for the deletion of `key` (its lease expired).
async fn deleted(events: &mut EventWatch, key: &NotaryKey) {
    within(async {
        loop {
            match events.recv().await.expect("the watch ended") {
                WatchEvent::Deleted(k) if k == *key => return,
                _ => continue,
            }
        }
    })
    .await
}

/// Waits for a renewal recorded after `after` (any, for `None`); returns it.
async fn renewed_after(
    renewed: &mut watch::Receiver<Option<Duration>>,
    after: Option<Duration>,
) -> Duration {
    let seen = within(renewed.wait_for(|r| r.is_some() && *r > after))
        .await
        .expect("the liveness task is running");
    seen.expect("some")
}

fn check_alive_record(r: &Record, node: &SecretKey) {
    r.verify().unwrap();
    assert_eq!(r.author, node.public(), "signed by the node");
    assert_eq!(r.body["ttl_ms"], 2000, "{}", r.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_etcd_the_key_lives_with_the_renewals_and_expires_when_etcd_is_unreachable() {
    let etcd = tokio::task::spawn_blocking(Etcd::temp).await.unwrap();
    let observer = zos_notary::open(&etcd.url("zos")).unwrap();
    let mut relay = Relay::start(etcd.client, false).await;
    let through_relay: AnyNotary = zos_notary::open(&format!("etcd://{}/zos", relay.addr)).unwrap();
    let n = node();
    let key = NotaryKey::alive(&n.public());
    let mut events = observer.watch_events(&KeyPrefix::from(&key)).await.unwrap();

    // Unreachable from the start: tried, nothing renewed, nothing written.
    let live = liveness::start(through_relay, n.clone(), TTL);
    let mut renewed = live.renewed();
    relay.refused_after(0).await;
    assert_eq!(*renewed.borrow(), None, "no renewal succeeded");
    assert!(observer.get(&key).await.unwrap().is_none());

    // Reachable: the key appears, and the renewals go on.
    relay.set(true);
    check_alive_record(&put(&mut events, &key).await, &n);
    let first = renewed_after(&mut renewed, None).await;
    let second = renewed_after(&mut renewed, Some(first)).await;
    assert!(second > first);
    assert!(observer.get(&key).await.unwrap().is_some());

    // Cut (etcd runs on): etcd expires the lease and deletes the key.
    let cut_at = boottime();
    let refused = *relay.refused.borrow();
    relay.set(false);
    relay.refused_after(refused).await;
    deleted(&mut events, &key).await;
    assert!(observer.get(&key).await.unwrap().is_none());
    let last = renewed.borrow().expect("renewed before the cut");
    assert!(
        last < cut_at,
        "a renewal sent after the cut was recorded: {last:?} >= {cut_at:?}"
    );

    // Reachable again: the key is back, under a new lease, and the renewals go on.
    relay.set(true);
    check_alive_record(&put(&mut events, &key).await, &n);
    let back = renewed_after(&mut renewed, Some(cut_at)).await;
    assert!(back > cut_at);
    renewed_after(&mut renewed, Some(back)).await;
    drop(live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_directory_the_key_expires_when_the_node_stops_renewing() {
    let dir = zos_testkit::tempdir("liveness");
    let url = format!("dir://{}", dir.path().display());
    let observer = zos_notary::open(&url).unwrap();
    let n = node();
    let key = NotaryKey::alive(&n.public());
    let mut events = observer.watch_events(&KeyPrefix::from(&key)).await.unwrap();

    let live = liveness::start(zos_notary::open(&url).unwrap(), n.clone(), TTL);
    let mut renewed = live.renewed();
    check_alive_record(&put(&mut events, &key).await, &n);
    let first = renewed_after(&mut renewed, None).await;
    let second = renewed_after(&mut renewed, Some(first)).await;
    assert!(second > first);
    // Kept alive past its TTL: two TTLs after the first put, still there.
    let third = renewed_after(&mut renewed, Some(first + 2 * TTL)).await;
    assert!(observer.get(&key).await.unwrap().is_some());

    // The node stops renewing (as a dead node does: nothing revoked): the record
    // expires on the reader's clock.
    drop(live);
    // The task is gone (its sender dropped), the last renewal stays what it was.
    within(async { while renewed.changed().await.is_ok() {} }).await;
    assert!(renewed.borrow().is_some_and(|r| r >= third));
    deleted(&mut events, &key).await;
    assert!(observer.get(&key).await.unwrap().is_none());
    assert!(observer
        .list(&KeyPrefix::node(&n.public()))
        .await
        .unwrap()
        .is_empty());

    // It starts again: the record is back.
    let live = liveness::start(zos_notary::open(&url).unwrap(), n.clone(), TTL);
    check_alive_record(&put(&mut events, &key).await, &n);
    let mut renewed = live.renewed();
    renewed_after(&mut renewed, None).await;
    assert!(observer.get(&key).await.unwrap().is_some());
}
