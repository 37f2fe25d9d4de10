//! A `.fl` is untrusted data: every hostile shape gets its own typed refusal, and
//! extraction never writes outside the destination.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use zos_flist::block::BlockRef;
use zos_flist::meta::{NewInode, Writer};
use zos_flist::sign::{open_trusted, Trust};
use zos_flist::{unpack, Error, Flist, FormatError, UnpackOptions, BLOCK_SIZE};

const DIR: u32 = libc::S_IFDIR | 0o755;
const REG: u32 = libc::S_IFREG | 0o644;
const LNK: u32 = libc::S_IFLNK | 0o777;

fn node(parent: u64, name: &str, mode: u32) -> NewInode {
    NewInode {
        parent,
        name: name.into(),
        size: 0,
        uid: 0,
        gid: 0,
        mode,
        rdev: 0,
        ctime: 0,
        mtime: 1_600_000_000,
        target: None,
    }
}

/// Writes a flist from (ino, inode) rows, then applies raw SQL edits.
fn write_fl(dir: &Path, rows: &[(u64, NewInode)], sql: &str) -> PathBuf {
    let path = dir.join("hostile.fl");
    let w = Writer::create(&path).unwrap();
    for (ino, n) in rows {
        w.inode(*ino, n).unwrap();
    }
    w.finish().unwrap();
    if !sql.is_empty() {
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
    }
    path
}

fn base() -> Vec<(u64, NewInode)> {
    vec![
        (1, node(0, "/", DIR)),
        (2, node(1, "etc", DIR)),
        (3, node(2, "hosts", REG)),
    ]
}

/// The whole `unpack` path (read, check, parse, extract) into `sandbox/dest`: returns the
/// format refusal and proves nothing was written, inside or outside the destination.
fn refusal(path: &Path) -> FormatError {
    let sandbox = tempdir("sandbox");
    std::fs::write(sandbox.path().join("canary"), b"untouched").unwrap();
    let res = open_trusted(path, &Trust::InsecureUnsigned).and_then(|(fl, _)| {
        let fetcher = zos_flist::Fetcher::new(zos_flist::Router::default(), None);
        unpack(
            &fl,
            &fetcher,
            &sandbox.path().join("dest"),
            &Default::default(),
        )
    });
    assert_eq!(snapshot(sandbox.path()), vec![PathBuf::from("canary")]);
    match res {
        Err(Error::Format { reason, .. }) => reason,
        Err(other) => panic!("expected a format refusal, got {other}"),
        Ok(_) => panic!("hostile flist was accepted"),
    }
}

fn sql_refusal(sql: &str) -> FormatError {
    let d = tempdir("hostile");
    refusal(&write_fl(d.path(), &base(), sql))
}

#[test]
fn names_with_slash_dotdot_nul_or_empty_are_refused() {
    for (name, reason) in [
        ("a/b", "contains '/'"),
        ("..", "a dot entry"),
        (".", "a dot entry"),
        ("", "empty"),
    ] {
        let sql = format!("UPDATE inode SET name = '{name}' WHERE ino = 3");
        assert_eq!(
            sql_refusal(&sql),
            FormatError::BadName {
                ino: 3,
                name: name.into(),
                reason
            }
        );
    }
    // NUL inside a TEXT value (SQL char(0) keeps it).
    assert!(matches!(
        sql_refusal("UPDATE inode SET name = 'a' || char(0) || 'b' WHERE ino = 3"),
        FormatError::BadName {
            ino: 3,
            reason: "contains NUL",
            ..
        }
    ));
    assert!(matches!(
        sql_refusal("UPDATE inode SET name = NULL WHERE ino = 3"),
        FormatError::BadName {
            ino: 3,
            reason: "empty",
            ..
        }
    ));
    assert!(matches!(
        sql_refusal(&format!(
            "UPDATE inode SET name = '{}' WHERE ino = 3",
            "x".repeat(256)
        )),
        FormatError::BadName { ino: 3, .. }
    ));
}

#[test]
fn parent_cycles_are_refused() {
    // 2 -> 4 -> 2: both directories, neither reachable from the root.
    let d = tempdir("hostile");
    let mut rows = base();
    rows.push((4, node(2, "loop", DIR)));
    let fl = write_fl(d.path(), &rows, "UPDATE inode SET parent = 4 WHERE ino = 2");
    assert_eq!(refusal(&fl), FormatError::Cycle { ino: 2 });
    // A directory that is its own parent.
    assert_eq!(
        sql_refusal("UPDATE inode SET parent = 2 WHERE ino = 2"),
        FormatError::Cycle { ino: 2 }
    );
}

#[test]
fn absurdly_deep_trees_are_refused() {
    let d = tempdir("hostile");
    let mut rows = vec![(1, node(0, "/", DIR))];
    for i in 2..=1100u64 {
        rows.push((i, node(i - 1, "d", DIR)));
    }
    assert!(matches!(
        refusal(&write_fl(d.path(), &rows, "")),
        FormatError::TooDeep { limit: 1024, .. }
    ));
}

#[test]
fn duplicate_names_are_refused() {
    let d = tempdir("hostile");
    let mut rows = base();
    rows.push((4, node(2, "hosts", LNK)));
    let fl = write_fl(
        d.path(),
        &rows,
        "INSERT INTO extra VALUES (4, '/etc/shadow')",
    );
    assert_eq!(
        refusal(&fl),
        FormatError::DuplicateName {
            ino: 4,
            parent: 2,
            name: "hosts".into()
        }
    );
}

#[test]
fn structural_refusals() {
    assert_eq!(
        sql_refusal("UPDATE inode SET parent = 99 WHERE ino = 3"),
        FormatError::MissingParent { ino: 3, parent: 99 }
    );
    assert_eq!(
        sql_refusal("UPDATE inode SET parent = 3 WHERE ino = 3"),
        FormatError::ParentNotDir { ino: 3, parent: 3 }
    );
    assert_eq!(
        sql_refusal("DELETE FROM inode WHERE ino = 1"),
        FormatError::NoRoot
    );
    assert_eq!(
        sql_refusal("UPDATE inode SET parent = 0 WHERE ino = 2"),
        FormatError::MultipleRoots { count: 2 }
    );
    assert_eq!(
        sql_refusal("UPDATE inode SET mode = 4095 WHERE ino = 3"),
        FormatError::UnknownFileType { ino: 3, mode: 4095 }
    );
    assert_eq!(
        sql_refusal("UPDATE inode SET mode = 41471 WHERE ino = 3"),
        FormatError::MissingLinkTarget { ino: 3 }
    );
    assert_eq!(
        sql_refusal("UPDATE inode SET uid = -1 WHERE ino = 3"),
        FormatError::BadValue {
            ino: 3,
            column: "uid",
            value: -1
        }
    );
    assert!(matches!(
        sql_refusal("DROP TABLE block"),
        FormatError::Schema(_)
    ));
    // `inode` as a view (could be an arbitrarily expensive query): refused as schema.
    assert!(matches!(
        sql_refusal(
            "ALTER TABLE inode RENAME TO real_inode; \
             CREATE VIEW inode AS SELECT * FROM real_inode"
        ),
        FormatError::Schema(_)
    ));
}

#[test]
fn absurd_sizes_and_block_lists_not_matching_size_are_refused() {
    assert_eq!(
        sql_refusal("UPDATE inode SET size = 1 << 50 WHERE ino = 3"),
        FormatError::AbsurdSize {
            ino: 3,
            size: 1 << 50,
            limit: 1 << 40
        }
    );
    assert_eq!(
        sql_refusal("UPDATE inode SET size = -5 WHERE ino = 3"),
        FormatError::BadValue {
            ino: 3,
            column: "size",
            value: -5
        }
    );
    // Size says two blocks, none listed.
    assert_eq!(
        sql_refusal(&format!(
            "UPDATE inode SET size = {} WHERE ino = 3",
            BLOCK_SIZE + 1
        )),
        FormatError::BlockCountMismatch {
            ino: 3,
            size: BLOCK_SIZE as u64 + 1,
            expected: 2,
            actual: 0
        }
    );
    // An empty file with a block.
    let b = "INSERT INTO block VALUES (3, zeroblob(32), zeroblob(32))";
    assert_eq!(
        sql_refusal(b),
        FormatError::BlockCountMismatch {
            ino: 3,
            size: 0,
            expected: 0,
            actual: 1
        }
    );
    assert_eq!(
        sql_refusal("INSERT INTO block VALUES (2, zeroblob(32), zeroblob(32))"),
        FormatError::BlocksOnNonFile { ino: 2 }
    );
    assert_eq!(
        sql_refusal("INSERT INTO block VALUES (77, zeroblob(32), zeroblob(32))"),
        FormatError::OrphanBlocks { ino: 77 }
    );
    assert_eq!(
        sql_refusal("UPDATE inode SET size = 1 WHERE ino = 3; INSERT INTO block VALUES (3, zeroblob(31), zeroblob(32))"),
        FormatError::BadBlockField {
            ino: 3,
            index: 0,
            column: "id",
            len: 31
        }
    );
}

#[test]
fn non_sqlite_and_truncated_files_are_refused() {
    let d = tempdir("hostile");
    let p = d.path().join("junk.fl");
    std::fs::write(
        &p,
        b"this is not a database at all, just some bytes\n".repeat(100),
    )
    .unwrap();
    assert_eq!(refusal(&p), FormatError::NotSqlite);
    std::fs::write(&p, b"").unwrap();
    assert_eq!(refusal(&p), FormatError::NotSqlite);

    let good = write_fl(d.path(), &base(), "");
    let bytes = std::fs::read(&good).unwrap();
    assert!(bytes.len() > 4096);
    for cut in [50, 4096, bytes.len() - 1] {
        std::fs::write(&p, &bytes[..cut]).unwrap();
        assert!(
            matches!(refusal(&p), FormatError::Truncated { .. }),
            "cut at {cut}"
        );
    }
    // A page overwritten with garbage: SQLite's own checks answer.
    let mut bad = bytes.clone();
    for b in &mut bad[4096..8192.min(bytes.len())] {
        *b = 0xa5;
    }
    std::fs::write(&p, &bad).unwrap();
    assert!(matches!(
        refusal(&p),
        FormatError::Corrupt(_) | FormatError::Schema(_)
    ));
}

/// Unpacks a hostile-but-valid flist into `sandbox/dest` and proves that the sandbox
/// holds nothing but what is under `dest`.
fn unpack_in_sandbox(fl: &Flist) -> (tempfile::TempDir, Result<(), Error>) {
    let sandbox = tempdir("sandbox");
    std::fs::write(sandbox.path().join("canary"), b"untouched").unwrap();
    let store = tempdir("store");
    let fetcher = zos_flist::Fetcher::new(
        zos_flist::Router::parse(&[format!("dir://{}", store.path().display())]).unwrap(),
        None,
    );
    let dest = sandbox.path().join("dest");
    let res = unpack(fl, &fetcher, &dest, &UnpackOptions::default()).map(|_| ());
    for p in snapshot(sandbox.path()) {
        assert!(
            p == Path::new("canary") || p.starts_with("dest"),
            "unpack wrote outside its destination: {p:?}"
        );
    }
    assert_eq!(
        std::fs::read(sandbox.path().join("canary")).unwrap(),
        b"untouched"
    );
    (sandbox, res)
}

#[test]
fn escaping_and_absolute_symlinks_are_created_never_followed() {
    let d = tempdir("hostile");
    let outside = tempdir("outside");
    let mut rows = base();
    let mut up = node(1, "up", LNK);
    up.target = Some(b"../../../../../../../..".to_vec());
    let mut abs = node(1, "abs", LNK);
    abs.target = Some(outside.path().as_os_str().as_encoded_bytes().to_vec());
    let mut passwd = node(2, "passwd", LNK);
    passwd.target = Some(b"/etc/passwd".to_vec());
    rows.extend([(4, up), (5, abs), (6, passwd)]);
    rows.push((7, node(1, "zz-after-links", DIR)));
    rows.push((8, node(7, "file", REG)));
    let fl = Flist::open(&write_fl(d.path(), &rows, "")).unwrap();
    let (sandbox, res) = unpack_in_sandbox(&fl);
    res.unwrap();
    let dest = sandbox.path().join("dest");
    assert_eq!(
        std::fs::read_link(dest.join("abs")).unwrap(),
        outside.path()
    );
    assert_eq!(
        std::fs::read_link(dest.join("etc/passwd")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert!(
        snapshot(outside.path()).is_empty(),
        "nothing written through a link"
    );
    assert_eq!(
        std::fs::read(dest.join("zz-after-links/file")).unwrap(),
        b""
    );
}

#[test]
fn a_non_empty_or_symlinked_destination_is_refused() {
    let d = tempdir("hostile");
    let fl = Flist::open(&write_fl(d.path(), &base(), "")).unwrap();
    let store = tempdir("store");
    let fetcher = zos_flist::Fetcher::new(
        zos_flist::Router::parse(&[format!("dir://{}", store.path().display())]).unwrap(),
        None,
    );
    let full = d.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), b"").unwrap();
    assert!(matches!(
        unpack(&fl, &fetcher, &full, &Default::default()),
        Err(Error::Unpack { .. })
    ));
    let outside = tempdir("outside");
    let link = d.path().join("link");
    std::os::unix::fs::symlink(outside.path(), &link).unwrap();
    assert!(matches!(
        unpack(&fl, &fetcher, &link, &Default::default()),
        Err(Error::Unpack { .. })
    ));
    assert!(snapshot(outside.path()).is_empty());
}

#[test]
fn a_block_fetch_failure_names_file_and_block_and_stays_inside() {
    let d = tempdir("hostile");
    let mut rows = base();
    rows[2].1.size = 10;
    let fl_path = write_fl(d.path(), &rows, "");
    let w = rusqlite::Connection::open(&fl_path).unwrap();
    let b = BlockRef {
        id: [0xab; 32],
        key: [1; 32],
    };
    w.execute(
        "INSERT INTO block VALUES (3, ?1, ?2)",
        rusqlite::params![&b.id[..], &b.key[..]],
    )
    .unwrap();
    drop(w);
    let fl = Flist::open(&fl_path).unwrap();
    let (_sandbox, res) = unpack_in_sandbox(&fl);
    match res.unwrap_err() {
        Error::Block {
            file, index, id, ..
        } => {
            assert_eq!((file.as_str(), index), ("/etc/hosts", 0));
            assert_eq!(id, hex::encode([0xab; 32]));
        }
        other => panic!("expected a block error, got {other}"),
    }
}
