//! Cross-check with an independent Python implementation written from the spec
//! (tests/flist_check.py): it verifies a flist we wrote, and writes one we must read.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use sha2::Digest;
use zos_flist::{unpack, EntryKind, Fetcher, Flist, Router};

fn script() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/flist_check.py")
}

/// python3 with `cryptography`; installed with pip when missing, else a loud failure.
fn python() -> &'static str {
    let has = || {
        Command::new("python3")
            .args(["-c", "import cryptography.hazmat.primitives.ciphers.aead"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !has() {
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "cryptography"])
            .status();
    }
    assert!(
        has(),
        "the cross-check needs python3 with the cryptography package \
         (apt-get install -y python3 python3-cryptography, or pip install cryptography)"
    );
    "python3"
}

fn run(args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(script())
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "flist_check.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn python_reads_and_verifies_a_flist_we_wrote() {
    let p = Packed::new("py-read", build_tree);
    let v = run(&["read".as_ref(), p.fl.as_os_str(), p.store.as_os_str()]);
    let entries = v["entries"].as_object().unwrap();
    let fl = p.flist();
    assert_eq!(entries.len(), fl.entries.len());
    for (i, e) in fl.entries.iter().enumerate() {
        let info = &entries[&fl.path_of(i)];
        assert_eq!(info["mode"], e.mode, "{}", fl.path_of(i));
        assert_eq!(info["mtime"], e.mtime);
        if e.kind == EntryKind::File {
            let src = p.src.join(fl.path_of(i).trim_start_matches('/'));
            let want = hex::encode(sha2::Sha256::digest(std::fs::read(src).unwrap()));
            assert_eq!(info["sha256"], want.as_str(), "{}", fl.path_of(i));
        }
        if let Some(t) = &e.target {
            assert_eq!(info["target"], String::from_utf8_lossy(t).as_ref());
        }
    }
    assert_eq!(v["routes"][0][2], p.store_url().as_str());
}

#[test]
fn we_read_a_flist_python_wrote_by_hand() {
    let d = tempdir("py-write");
    let fl_path = d.path().join("py.fl");
    let store = d.path().join("store");
    let expect = run(&["write".as_ref(), fl_path.as_os_str(), store.as_os_str()]);
    let fl = Flist::open(&fl_path).unwrap();
    assert_eq!(fl.tags, vec![("version".to_string(), "v2".to_string())]);
    assert_eq!(fl.routes[0].url, format!("dir://{}", store.display()));
    let fifo = &fl.entries[fl.lookup("/pipe").unwrap()];
    assert_eq!(fifo.kind, EntryKind::Fifo);
    let link = &fl.entries[fl.lookup("/link").unwrap()];
    assert_eq!(
        link.target.as_deref(),
        Some("python dir é/big.bin".as_bytes())
    );

    let out = d.path().join("out");
    let fetcher = Fetcher::new(Router::new(&fl.routes).unwrap(), None);
    unpack(&fl, &fetcher, &out, &Default::default()).unwrap();
    for (path, sha) in expect.as_object().unwrap() {
        let got = std::fs::read(out.join(path.trim_start_matches('/'))).unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&got)),
            sha.as_str().unwrap(),
            "{path}"
        );
    }
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(out.join("python dir é")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o700);
}
