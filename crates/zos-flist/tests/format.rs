//! What we write is what rfs reads: the same tables, declared column types, storage
//! classes and root conventions.

mod common;

use common::*;

fn columns(conn: &rusqlite::Connection, table: &str) -> Vec<(String, String)> {
    let mut stmt = conn
        .prepare(&format!("PRAGMA table_info({table})"))
        .unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn tables_columns_and_storage_classes_match_rfs() {
    let p = Packed::new("format", build_tree);
    let conn = rusqlite::Connection::open(&p.fl).unwrap();
    assert_eq!(
        columns(&conn, "inode"),
        pairs(&[
            ("ino", "INTEGER"),
            ("parent", "INTEGER"),
            ("name", "VARCHAR(255)"),
            ("size", "INTEGER"),
            ("uid", "INTEGER"),
            ("gid", "INTEGER"),
            ("mode", "INTEGER"),
            ("rdev", "INTEGER"),
            ("ctime", "INTEGER"),
            ("mtime", "INTEGER"),
        ])
    );
    assert_eq!(
        columns(&conn, "extra"),
        pairs(&[("ino", "INTEGER"), ("data", "VARCHAR(4096)")])
    );
    assert_eq!(
        columns(&conn, "block"),
        pairs(&[
            ("ino", "INTEGER"),
            ("id", "VARCHAR(32)"),
            ("key", "VARCHAR(32)")
        ])
    );
    assert_eq!(
        columns(&conn, "tag"),
        pairs(&[("key", "VARCHAR(10)"), ("value", "VARCHAR(255)")])
    );
    assert_eq!(
        columns(&conn, "route"),
        pairs(&[
            ("start", "INTEGER"),
            ("end", "INTEGER"),
            ("url", "VARCHAR(2048)")
        ])
    );
    let q = |sql: &str| -> Vec<String> {
        let mut s = conn.prepare(sql).unwrap();
        s.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    // rfs decodes name/url as String (TEXT), symlink data and block fields as bytes.
    assert_eq!(q("SELECT DISTINCT typeof(name) FROM inode"), ["text"]);
    assert_eq!(q("SELECT DISTINCT typeof(data) FROM extra"), ["blob"]);
    assert_eq!(
        q("SELECT DISTINCT typeof(id) || typeof(key) || length(id) || length(key) FROM block"),
        ["blobblob3232"]
    );
    assert_eq!(q("SELECT DISTINCT typeof(url) FROM route"), ["text"]);
    for col in [
        "ino", "parent", "size", "uid", "gid", "mode", "rdev", "ctime", "mtime",
    ] {
        assert_eq!(
            q(&format!("SELECT DISTINCT typeof({col}) FROM inode")),
            ["integer"],
            "{col}"
        );
    }
    // Root: ino 1, parent 0, named "/"; inodes numbered 1.. without gaps.
    assert_eq!(q("SELECT name FROM inode WHERE parent = 0"), ["/"]);
    assert_eq!(
        q("SELECT CAST(ino AS TEXT) FROM inode WHERE parent = 0"),
        ["1"]
    );
    let n: i64 = conn
        .query_row("SELECT count(*) FROM inode", [], |r| r.get(0))
        .unwrap();
    let max: i64 = conn
        .query_row("SELECT max(ino) FROM inode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, max);
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "delete");
}
