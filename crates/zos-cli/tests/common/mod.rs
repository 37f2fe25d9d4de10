//! The real `zos` binary, run the way a person would from a directory, for the CLI's
//! integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Runs `zos args…` in `dir` (without `ZOS_NOTARY` from the caller's environment):
/// whether it succeeded, and its stdout then stderr.
pub fn zos(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = output(dir, args);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// [`zos`], which must succeed; its output.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let (success, out) = zos(dir, args);
    assert!(success, "zos {args:?} failed:\n{out}");
    out
}

/// [`zos`], which must fail; its output.
pub fn refused(dir: &Path, args: &[&str]) -> String {
    let (success, out) = zos(dir, args);
    assert!(!success, "zos {args:?} should have failed:\n{out}");
    out
}

/// [`zos`], which must succeed; its stdout alone (what `--json` parses).
pub fn stdout(dir: &Path, args: &[&str]) -> String {
    let out = output(dir, args);
    assert!(out.status.success(), "zos {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

fn output(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(args)
        .current_dir(dir)
        .env_remove("ZOS_NOTARY")
        .output()
        .unwrap()
}
