//! `cargo xtask test`: everything CI runs.
//!
//! A test that cannot run here (no QEMU, no kernel, not root...) passes and writes one
//! line `SKIP: <test>: <reason>` to its real stderr. The test runs are streamed
//! through as they come (CI reads them live) while those lines are counted, and the
//! summary at the end lists every one: a green run with skips says so.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use zos_testkit::Needs;

use crate::{cargo, flists, packages, root, target_dir};

/// `cargo xtask test` (see the module docs).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    if !args.is_empty() {
        bail!("cargo xtask test takes no arguments");
    }
    require_root()?;
    let mut tiers = Tiers::default();
    tiers.time("packages", || {
        packages::ensure(packages::TEST_PACKAGES)?;
        packages::ensure_python_module("cryptography", "cryptography")
    })?;
    tiers.time("fmt", || cargo(&["fmt", "--all", "--check"]))?;
    tiers.time("the sample VM (zos, its flist)", sample_vm)?;
    tiers.time("clippy", || {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
    })?;
    let mut skips = Vec::new();
    tiers.time("tests: build", || {
        cargo(&["test", "--workspace", "--no-run", "--quiet"])
    })?;
    let workspace = tiers.time("tests: run (e2e, privileged, unit)", || {
        workspace_tests(&mut skips)
    })?;
    let replay = tiers.time("fuzz replay (build and run)", || fuzz_replay(&mut skips))?;
    eprintln!("{tiers}");
    verdict(workspace, replay, &skips)
}

/// How long each tier of the run took (docs/benchmarks.md keeps a table of them).
#[derive(Default)]
struct Tiers(Vec<(&'static str, std::time::Duration)>);

impl Tiers {
    fn time<T>(
        &mut self,
        name: &'static str,
        f: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        let start = std::time::Instant::now();
        let out = f();
        self.0.push((name, start.elapsed()));
        out
    }
}

impl std::fmt::Display for Tiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "cargo xtask test: time per tier")?;
        for (name, d) in &self.0 {
            writeln!(f, "  {name:<36} {:>7.1} s", d.as_secs_f64())?;
        }
        let total: std::time::Duration = self.0.iter().map(|(_, d)| *d).sum();
        write!(f, "  {:<36} {:>7.1} s", "total", total.as_secs_f64())
    }
}

/// The effective uid must be 0: asked through the test kit's [`Needs::root`] (nix's
/// `geteuid`), the same check the privileged tests make.
fn require_root() -> anyhow::Result<()> {
    if !Needs::root().missing().is_empty() {
        bail!("cargo xtask test runs privileged tests (loop devices, namespaces, FUSE, containers): run it as root");
    }
    Ok(())
}

/// The sample micro-VM (the Debian kernel and the vm-echo init): zos-vm's and zosd's VM
/// tests boot it, zos-init's boot test boots its kernel.
fn sample_vm() -> anyhow::Result<()> {
    cargo(&["build", "--quiet", "-p", "zos-cli"])?;
    let vm = flists::build_vm(
        &target_dir().join("flists/vm"),
        &target_dir().join("debug/zos"),
    )?;
    eprintln!("sample VM flist: {}", vm.fl.display());
    Ok(())
}

/// One run over the workspace: unit tests, integration tests and the privileged tests
/// that drive the real kernel, etcd and libcontainer.
fn workspace_tests(skips: &mut Vec<String>) -> anyhow::Result<bool> {
    counted_cargo(&["test", "--workspace", "--no-fail-fast"], skips)
}

/// The fuzz harness's replay of every committed corpus and regression input (its own
/// workspace, without libFuzzer; the main target directory shares the dependencies
/// already built). docs/fuzzing.md.
fn fuzz_replay(skips: &mut Vec<String>) -> anyhow::Result<bool> {
    let manifest = root().join("fuzz/Cargo.toml");
    let manifest = manifest.to_str().context("the fuzz manifest path")?;
    counted_cargo(
        &[
            "test",
            "--manifest-path",
            manifest,
            "--no-default-features",
            "--target-dir",
            target_dir().to_str().context("the target directory path")?,
        ],
        skips,
    )
}

/// Green only when both runs passed; either way the skips are listed.
fn verdict(workspace: bool, replay: bool, skips: &[String]) -> anyhow::Result<()> {
    let skipped = summary(skips);
    match (workspace, replay) {
        (true, true) => {
            eprintln!("cargo xtask test: all tiers passed; {skipped}");
            Ok(())
        }
        (w, _) => bail!(
            "{} failed; {skipped}",
            if w {
                "the fuzz replay (cargo test --manifest-path fuzz/Cargo.toml)"
            } else {
                "cargo test --workspace"
            }
        ),
    }
}

/// `0 SKIP`, or the count and every SKIP line, one per line.
fn summary(skips: &[String]) -> String {
    let mut s = format!("{} SKIP", skips.len());
    for l in skips {
        s.push_str("\n  ");
        s.push_str(l);
    }
    s
}

/// Runs `cargo args` in the workspace root with its stdout and stderr passed through
/// as they come, and adds every line either of them starts with `SKIP:` to `skips`.
/// `Ok(false)` when cargo ran and failed (the caller reports the skips first).
fn counted_cargo(args: &[&str], skips: &mut Vec<String>) -> anyhow::Result<bool> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("+ cargo {}", args.join(" "));
    let mut child = Command::new(cargo)
        .args(args)
        .current_dir(root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running cargo")?;
    let found = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let (f1, f2) = (found.clone(), found.clone());
    let t1 = std::thread::spawn(move || tee(out, std::io::stdout(), &f1));
    let t2 = std::thread::spawn(move || tee(err, std::io::stderr(), &f2));
    let status = child.wait().context("waiting for cargo")?;
    t1.join().expect("stdout tee")?;
    t2.join().expect("stderr tee")?;
    skips.append(&mut found.lock().expect("not poisoned"));
    Ok(status.success())
}

/// Copies `from` to `to` chunk by chunk as it arrives (a test's `test x ... ` shows
/// before its `ok`), and collects the complete lines that start with `SKIP:`.
fn tee(mut from: impl Read, mut to: impl Write, skips: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut counter = SkipCounter::default();
    let mut buf = [0u8; 8192];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        // Our own stdout or stderr gone (a closed pipe) must not stop the count.
        let _ = to.write_all(&buf[..n]).and_then(|()| to.flush());
        for line in counter.feed(&buf[..n]) {
            skips.lock().expect("not poisoned").push(line);
        }
    }
    if let Some(line) = counter.finish() {
        skips.lock().expect("not poisoned").push(line);
    }
    Ok(())
}

/// Splits a byte stream into lines and keeps those starting with `SKIP:`.
#[derive(Default)]
struct SkipCounter {
    partial: Vec<u8>,
}

impl SkipCounter {
    fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                lines.extend(Self::skip_line(&std::mem::take(&mut self.partial)));
            } else {
                self.partial.push(b);
            }
        }
        lines
    }

    fn finish(&mut self) -> Option<String> {
        Self::skip_line(&std::mem::take(&mut self.partial))
    }

    fn skip_line(line: &[u8]) -> Option<String> {
        let line = String::from_utf8_lossy(line);
        let line = line.trim_end_matches('\r');
        line.starts_with("SKIP:").then(|| line.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lines_are_counted_across_chunks_and_streamed_unchanged() {
        let input = b"running 2 tests\nSKIP: a: no qemu\ntest a ... ok\nnot a SKIP: line\nSK";
        let rest = b"IP: b: not root\ntest result: ok. 2 passed; 0 failed";
        let found = Mutex::new(Vec::new());
        let mut out = Vec::new();
        let stream = [&input[..], &rest[..]].concat();
        // A reader that hands out 7 bytes at a time: lines cross chunk boundaries.
        struct Chunks<'a>(&'a [u8]);
        impl Read for Chunks<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(7).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        tee(Chunks(&stream), &mut out, &found).unwrap();
        assert_eq!(out, stream, "the output passes through unchanged");
        assert_eq!(
            found.into_inner().unwrap(),
            vec!["SKIP: a: no qemu", "SKIP: b: not root"]
        );
        assert_eq!(summary(&[]), "0 SKIP");
        assert_eq!(summary(&["SKIP: a: x".into()]), "1 SKIP\n  SKIP: a: x");
    }
}
