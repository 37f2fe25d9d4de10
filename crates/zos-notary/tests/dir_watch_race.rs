//! A watch that starts on an empty tree must see the first record put into it, however
//! the put's `mkdir -p nodes/<key>/contracts` interleaves with the watcher adding the
//! new directories. (CI saw a node that never saw its first contract: the watcher
//! listed `nodes/<key>` before watching it, and `contracts/` was made in between.)
//!
//! The gap is a few microseconds wide, so the race is run many times; each round
//! waits for the record to arrive (an event), with a generous bound only so that a lost
//! record fails the test instead of hanging it.

mod signed;

use std::time::Duration;

use signed::{contract, node};
use zos_notary::{KeyPrefix, Notary};

const ROUNDS: usize = 300;
const LOST_AFTER: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_record_in_a_fresh_tree_is_always_seen() {
    let record = contract("c1");
    let prefix = KeyPrefix::node_contracts(&node());
    for round in 0..ROUNDS {
        let root = tempfile::Builder::new()
            .prefix("zt-notary-race-")
            .tempdir()
            .unwrap();
        let notary = zos_notary::open(&format!("dir://{}", root.path().display())).unwrap();
        let (existing, mut watch) = notary.subscribe(&prefix).await.unwrap();
        assert!(existing.is_empty());
        notary.put(&record).await.unwrap();
        let got = tokio::time::timeout(LOST_AFTER, watch.recv())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the record was never delivered"))
            .expect("the watch ended");
        assert_eq!(got.key, record.key, "round {round}");
    }
}
