//! Progress bars on stderr: drawn when stderr is a terminal (a real pty, from util-linux
//! `script`), absent when it is a pipe, with the same result lines on stdout either way.

use std::path::Path;
use std::process::Command;

fn zos(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .current_dir(dir)
        .env_remove("ZOS_NOTARY")
        .output()
        .unwrap()
}

/// A tree with one 3 MiB file: several blocks, so pack reports progress more than once.
fn tree(dir: &Path) {
    let tree = dir.join("tree");
    std::fs::create_dir(&tree).unwrap();
    let data: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(tree.join("big"), data).unwrap();
}

#[test]
fn piped_stderr_shows_no_progress() {
    let tmp = zos_testkit::tempdir("cli-progress");
    let dir = tmp.path();
    tree(dir);
    let store = format!("dir://{}", dir.join("store").display());
    let steps: [&[&str]; 3] = [
        &["flist", "pack", "tree", "--store", &store, "-o", "t.fl"],
        &[
            "flist",
            "verify",
            "t.fl",
            "--store",
            &store,
            "--insecure-unsigned",
        ],
        &[
            "flist",
            "unpack",
            "t.fl",
            "out",
            "--store",
            &store,
            "--insecure-unsigned",
        ],
    ];
    for args in steps {
        let out = zos(dir, args);
        assert!(out.status.success(), "zos {args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for mark in ["packing", "verifying", "unpacking", "\r", "\x1b["] {
            assert!(
                !stderr.contains(mark),
                "zos {args:?} drew progress ({mark:?}) on a pipe: {stderr:?}"
            );
        }
    }
    assert_eq!(
        std::fs::read(dir.join("out/big")).unwrap(),
        std::fs::read(dir.join("tree/big")).unwrap()
    );
}

#[test]
fn a_terminal_sees_the_pack_verify_and_unpack_progress_bars() {
    let tmp = zos_testkit::tempdir("cli-progress");
    let dir = tmp.path();
    tree(dir);
    let store = format!("dir://{}", dir.join("store").display());
    let zos = env!("CARGO_BIN_EXE_zos");
    // One pty for the three steps (`script` runs the line with sh -c).
    let line = format!(
        "{zos} flist pack tree --store {store} -o t.fl \
         && {zos} flist verify t.fl --store {store} --insecure-unsigned \
         && {zos} flist unpack t.fl out --store {store} --insecure-unsigned"
    );
    // `script` runs the command on a new pty (stdin, stdout and stderr a terminal) and
    // copies what it wrote to our stdout.
    let out = match Command::new("script")
        .args(["-q", "-e", "-c", &line, "/dev/null"])
        .current_dir(dir)
        .env("TERM", "xterm")
        .env("COLUMNS", "120")
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!(
                "SKIP: a_terminal_sees_the_pack_verify_and_unpack_progress_bars: no `script` (util-linux): {e}"
            );
            return;
        }
    };
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    // Each bar is a byte bar over the tree's 3 MiB: some frame of it (frames are
    // redrawn over each other with \r) shows the total. The verify and unpack bars know
    // it before the first block; a bar never told a total shows "0 B/0 B".
    let frames: Vec<&str> = screen.split(['\r', '\n']).collect();
    for bar in ["packing [", "verifying [", "unpacking ["] {
        assert!(screen.contains(bar), "no {bar:?} bar: {screen:?}");
        assert!(
            frames
                .iter()
                .any(|f| f.contains(bar) && f.contains("/3.00 MiB")),
            "the {bar:?} bar never counts bytes of 3.00 MiB: {screen:?}"
        );
    }
    for result in [
        "t.fl: 2 entries, 1 files, 3145728 bytes",
        "ok: 1 files, 6 blocks, 3145728 bytes verified",
        "out: 2 entries, 1 files, 3145728 bytes",
    ] {
        assert!(
            screen.contains(result),
            "no result line {result:?}: {screen:?}"
        );
    }
    assert_eq!(
        std::fs::read(dir.join("out/big")).unwrap(),
        std::fs::read(dir.join("tree/big")).unwrap()
    );
}
