//! `dir://` leases and compare-and-swap, where they differ from etcd: the expiry of a
//! leased record is judged by each reader from the file's age on its own clock, and the
//! per-key lock and lease mark are hidden files beside the record. The file ages are set
//! directly (as a clock that moved on would see them), so nothing here waits for a TTL.
//!
//! Attack: someone with write access to the tree plants symlinks where the lock or the
//! lease mark go, to make a conditional writer create or write a file elsewhere, or to
//! feed readers a mark from outside the tree. Neither is followed.

mod signed;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::json;
use signed::{contract, node, sk};
use zos_notary::{
    DirNotary, Expect, KeyPrefix, Notary, NotaryError, NotaryKey, Record, WatchEvent,
};

/// A bound on waits for watch events (correctness, not speed).
const DELIVERY: Duration = Duration::from_secs(10);

fn heartbeat(n: u64) -> Record {
    Record::sign_at(&NotaryKey::heartbeat(&node()), json!({ "n": n }), &sk(1), n).unwrap()
}

/// Sets the file's modification time `age` into the past.
fn age(path: &Path, age: Duration) -> SystemTime {
    let when = SystemTime::now() - age;
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(when)
        .unwrap();
    when
}

fn mtime(path: &Path) -> SystemTime {
    std::fs::symlink_metadata(path).unwrap().modified().unwrap()
}

/// The lease mark beside the record file `path`.
fn mark_of(path: &Path) -> PathBuf {
    let name = path.file_name().unwrap().to_str().unwrap();
    path.with_file_name(format!(".{name}.lease"))
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

/// Waits for the deletion of `key` (puts of it may come first).
async fn deleted(events: &mut zos_notary::EventWatch, key: &NotaryKey) {
    let wait = async {
        loop {
            match events.recv().await.expect("the watch ended") {
                WatchEvent::Deleted(k) if &k == key => return,
                WatchEvent::Put(r) if r.key == key.as_str() => continue,
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    tokio::time::timeout(DELIVERY, wait)
        .await
        .expect("no deletion event within the bound");
}

/// A leased record older than its TTL is gone for every reader (get, list, another
/// handle), a watcher reports it deleted, its lease cannot be kept alive, and the key can
/// be created again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aged_leased_record_is_gone_for_every_reader() {
    let root = zos_testkit::tempdir("notary");
    let n = DirNotary::open(root.path()).unwrap();
    let key = NotaryKey::heartbeat(&node());
    let path = n.path_of(&key);
    let mut events = n.watch_events(&KeyPrefix::node(&node())).await.unwrap();
    let lease = n.grant_lease(Duration::from_secs(60)).await.unwrap();
    assert_eq!(lease.ttl(), Duration::from_secs(60));
    n.put_leased(&heartbeat(1), &lease, &Expect::Absent)
        .await
        .unwrap();
    assert_eq!(
        tokio::time::timeout(DELIVERY, events.recv()).await.unwrap(),
        Some(WatchEvent::Put(heartbeat(1)))
    );
    let mark = std::fs::read_to_string(mark_of(&path)).unwrap();
    assert_eq!(
        mark,
        format!("{} 60000\n", lease.id()),
        "lease id and TTL in ms"
    );

    // Still within the TTL on this clock: there.
    age(&path, Duration::from_secs(59));
    assert_eq!(n.get(&key).await.unwrap(), Some(heartbeat(1)));
    // Past it: gone, though the file is still on disk.
    age(&path, Duration::from_secs(61));
    assert!(path.exists());
    assert_eq!(n.get(&key).await.unwrap(), None);
    assert!(n.list(&KeyPrefix::node(&node())).await.unwrap().is_empty());
    let other = DirNotary::open(root.path()).unwrap();
    assert_eq!(other.get(&key).await.unwrap(), None);
    deleted(&mut events, &key).await;

    let err = n.keep_alive(&lease).await.unwrap_err();
    assert!(
        matches!(err, NotaryError::LeaseExpired { lease: id } if id == lease.id()),
        "{err}"
    );
    // Gone means absent: a new holder creates it (the expired file is replaced).
    let lease2 = n.grant_lease(Duration::from_secs(60)).await.unwrap();
    other
        .put_leased(&heartbeat(2), &lease2, &Expect::Absent)
        .await
        .unwrap();
    assert_eq!(n.get(&key).await.unwrap(), Some(heartbeat(2)));
    assert_eq!(
        tokio::time::timeout(DELIVERY, events.recv()).await.unwrap(),
        Some(WatchEvent::Put(heartbeat(2)))
    );
}

/// keep_alive moves the file's age back to zero; a plain put over a leased key makes it
/// unleased (the mark goes), so its age no longer matters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_renews_the_age_and_a_plain_put_drops_the_lease() {
    let root = zos_testkit::tempdir("notary");
    let n = DirNotary::open(root.path()).unwrap();
    let key = NotaryKey::heartbeat(&node());
    let path = n.path_of(&key);
    let lease = n.grant_lease(Duration::from_secs(60)).await.unwrap();
    n.put_leased(&heartbeat(1), &lease, &Expect::Any)
        .await
        .unwrap();
    let aged = age(&path, Duration::from_secs(50));
    assert_eq!(n.keep_alive(&lease).await.unwrap(), Duration::from_secs(60));
    assert!(mtime(&path) > aged, "keep_alive renewed the file's age");
    age(&path, Duration::from_secs(70));
    assert_eq!(n.get(&key).await.unwrap(), None, "past the TTL again");

    n.put(&heartbeat(2)).await.unwrap();
    assert!(!mark_of(&path).exists(), "a plain put is not leased");
    age(&path, Duration::from_secs(3600));
    assert_eq!(n.get(&key).await.unwrap(), Some(heartbeat(2)));
    // The lease no longer holds the key: revoking it leaves the plain record alone.
    n.revoke(&lease).await.unwrap();
    assert_eq!(n.get(&key).await.unwrap(), Some(heartbeat(2)));
    // Only the record is a record: the hidden lock and mark files are never listed.
    assert_eq!(n.list(&KeyPrefix::all()).await.unwrap(), vec![heartbeat(2)]);
}

/// Attack: `.c.json.lock -> <outside>/target` and `.c.json.lease -> <outside>/mark`
/// planted beside a record. The conditional put is refused with `Symlink` and writes
/// nothing; a leased put replaces the planted mark instead of writing through it; a mark
/// outside the tree saying "expired" is not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_planted_at_the_lock_or_mark_are_not_followed() {
    let root = zos_testkit::tempdir("notary");
    let outside = zos_testkit::tempdir("outside");
    let n = DirNotary::open(root.path()).unwrap();
    let record = contract("c");
    let key = record.notary_key().unwrap();
    let path = n.path_of(&key);
    let dir = path.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(outside.path().join("target"), b"outside").unwrap();

    // The lock.
    let lock = dir.join(".c.json.lock");
    std::os::unix::fs::symlink(outside.path().join("target"), &lock).unwrap();
    let err = n.put_if(&record, &Expect::Absent).await.unwrap_err();
    assert!(
        matches!(&err, NotaryError::Symlink { path } if path == &lock),
        "{err}"
    );
    assert_eq!(n.get(&key).await.unwrap(), None, "nothing written");
    assert_eq!(
        std::fs::read(outside.path().join("target")).unwrap(),
        b"outside"
    );
    let err = n.delete(&key).await.unwrap_err();
    assert!(matches!(err, NotaryError::Symlink { .. }), "{err}");
    std::fs::remove_file(&lock).unwrap();

    // The mark, written: replaced, not followed.
    let mark = mark_of(&path);
    std::os::unix::fs::symlink(outside.path().join("mark"), &mark).unwrap();
    let lease = n.grant_lease(Duration::from_secs(60)).await.unwrap();
    n.put_leased(&record, &lease, &Expect::Absent)
        .await
        .unwrap();
    assert!(std::fs::symlink_metadata(&mark).unwrap().is_file());
    assert_eq!(names(outside.path()), vec!["target".to_string()]);

    // The mark, read: a planted link to an "expired" mark outside is ignored.
    std::fs::write(outside.path().join("mark"), b"1 1\n").unwrap();
    n.put(&record).await.unwrap();
    std::os::unix::fs::symlink(outside.path().join("mark"), &mark).unwrap();
    age(&path, Duration::from_secs(10));
    assert_eq!(n.get(&key).await.unwrap(), Some(record.clone()));
    assert_eq!(
        n.list(&KeyPrefix::node_contracts(&node())).await.unwrap(),
        vec![record]
    );
}

/// Rounds and processes of [`racing_processes_have_exactly_one_winner`].
const RACE_ROUNDS: u64 = 100;
const RACERS: u8 = 4;

/// Writers in separate processes (this test binary run again, [`race_child`]) race
/// `put_if(Absent)` for the same keys, one key per round: each key has exactly one
/// winner, whose record is the one stored. (`flock` excludes between processes as
/// between threads; this is the shape of two orchestrators on one machine.)
#[test]
fn racing_processes_have_exactly_one_winner() {
    let root = zos_testkit::tempdir("notary");
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..RACERS)
        .map(|w| {
            std::process::Command::new(&exe)
                .args(["--ignored", "--exact", "race_child", "--nocapture"])
                .env("ZT_RACE_ROOT", root.path())
                .env("ZT_RACE_WRITER", w.to_string())
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Each child waits for the end of its stdin: all start at once.
    let mut children = children;
    for child in &mut children {
        drop(child.stdin.take());
    }
    let mut winners: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
    for (w, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "racer {w} failed");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut rounds = 0;
        for line in text.lines() {
            if let Some(round) = line.strip_prefix("WON ") {
                winners
                    .entry(round.parse().unwrap())
                    .or_default()
                    .push(w as u8);
            }
            rounds += u64::from(line.starts_with("WON ") || line.starts_with("LOST "));
        }
        assert_eq!(rounds, RACE_ROUNDS, "racer {w} reported every round");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = DirNotary::open(root.path()).unwrap();
    for round in 0..RACE_ROUNDS {
        let won = winners.get(&round).cloned().unwrap_or_default();
        assert_eq!(won.len(), 1, "round {round}: winners {won:?}");
        let key = NotaryKey::contract(&node(), &format!("r{round}")).unwrap();
        let stored = rt.block_on(n.get(&key)).unwrap().unwrap();
        assert_eq!(stored.author, sk(20 + won[0]).public(), "round {round}");
    }
    let mut wins = [0u32; RACERS as usize];
    winners.values().for_each(|w| wins[w[0] as usize] += 1);
    eprintln!("racing_processes_have_exactly_one_winner: rounds won per process {wins:?}");
}

/// One racer of [`racing_processes_have_exactly_one_winner`]; run only by it.
#[test]
#[ignore = "a child process of racing_processes_have_exactly_one_winner"]
fn race_child() {
    let (Ok(root), Ok(w)) = (
        std::env::var("ZT_RACE_ROOT"),
        std::env::var("ZT_RACE_WRITER"),
    ) else {
        panic!("race_child runs only as a child of racing_processes_have_exactly_one_winner");
    };
    let w: u8 = w.parse().unwrap();
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = DirNotary::open(&root).unwrap();
    let author = sk(20 + w);
    for round in 0..RACE_ROUNDS {
        let key = NotaryKey::contract(&node(), &format!("r{round}")).unwrap();
        let body =
            json!({ "contract": { "owner": author.public().to_string(), "version": round } });
        let record = Record::sign_at(&key, body, &author, round).unwrap();
        match rt.block_on(n.put_if(&record, &Expect::Absent)) {
            Ok(()) => println!("WON {round}"),
            Err(NotaryError::Conflict { .. }) => println!("LOST {round}"),
            Err(e) => panic!("round {round}: {e}"),
        }
    }
}
