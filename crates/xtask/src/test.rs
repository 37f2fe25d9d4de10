//! `cargo xtask test`: everything CI runs.
//!
//! A test that cannot run here (no QEMU, no kernel, not root...) passes and writes one
//! line `SKIP: <test>: <reason>` to its real stderr. The test runs are streamed
//! through as they come (CI reads them live) while those lines are counted, and the
//! summary at the end lists every one: a green run with skips says so.

use std::io::{Read, Write};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use zos_testkit::Needs;

use crate::{cargo, flists, packages, target_dir};

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
    // Built as they run (below): cargo unifies features over the packages it selects,
    // so `--workspace` would build artifacts that neither side of the run uses.
    tiers.time("tests: build", || {
        cargo(&[
            "test",
            "--workspace",
            "--exclude",
            "e2e",
            "--no-run",
            "--quiet",
        ])?;
        cargo(&["test", "-p", "e2e", "--no-run", "--quiet"])
    })?;
    // The fuzz harness's replay of every committed input (crates/zos-fuzz) is one of
    // the workspace's tests: built with the rest, no second workspace to compile.
    let passed = tiers.time("tests: run (e2e beside the rest)", || run_tests(&mut skips))?;
    eprintln!("{tiers}");
    verdict(passed, &skips)
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
            writeln!(f, "  {name:<48} {:>7.1} s", d.as_secs_f64())?;
        }
        let total: std::time::Duration = self.0.iter().map(|(_, d)| *d).sum();
        write!(f, "  {:<48} {:>7.1} s", "total", total.as_secs_f64())
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

/// The booted end-to-end tests (tests/e2e: QEMU under TCG, mostly waiting on guests)
/// run beside the rest of the workspace's tests (unit, integration, and the privileged
/// tests that drive the real kernel, etcd and libcontainer) instead of after them:
/// `cargo test` runs its test binaries one at a time, and the e2e binary alone is most
/// of the run. Each side's lines are relayed whole, after the seconds since the start
/// and, for the e2e's, `e2e`: the two do not cut into each other, and CI's log shows
/// when each test ended. `Ok(false)` when either failed.
fn run_tests(skips: &mut Vec<String>) -> anyhow::Result<bool> {
    let start = std::time::Instant::now();
    let stamp = move |side: &str| format!("[{side}{:>5} s] ", start.elapsed().as_secs());
    let (rest, e2e) = std::thread::scope(|s| {
        let e2e = s.spawn(|| {
            let mut found = Vec::new();
            let ok = counted_cargo(
                &["test", "-p", "e2e", "--no-fail-fast"],
                move || stamp("e2e "),
                &mut found,
            );
            (ok, found)
        });
        let mut found = Vec::new();
        let ok = counted_cargo(
            &["test", "--workspace", "--exclude", "e2e", "--no-fail-fast"],
            move || stamp(""),
            &mut found,
        );
        ((ok, found), e2e.join().expect("the e2e runner"))
    });
    let mut passed = true;
    for (ok, mut found) in [rest, e2e] {
        skips.append(&mut found);
        passed &= ok?;
    }
    Ok(passed)
}

/// Green only when the run passed; either way the skips are listed.
fn verdict(passed: bool, skips: &[String]) -> anyhow::Result<()> {
    let skipped = summary(skips);
    if !passed {
        bail!("the tests failed (see `test result: FAILED` above); {skipped}");
    }
    eprintln!("cargo xtask test: all tiers passed; {skipped}");
    Ok(())
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

/// Runs `cargo args` in the workspace root with its stdout and stderr relayed as they
/// come, and adds every line either of them starts with `SKIP:` to `skips`.
/// `Ok(false)` when cargo ran and failed (the caller reports the skips first).
fn counted_cargo(
    args: &[&str],
    prefix: impl Fn() -> String + Clone + Send + 'static,
    skips: &mut Vec<String>,
) -> anyhow::Result<bool> {
    eprintln!("+ cargo {}", args.join(" "));
    let mut child = crate::cargo_command()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running cargo")?;
    let found = Arc::new(Mutex::new(Vec::new()));
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let (f1, f2) = (found.clone(), found.clone());
    let p1 = prefix.clone();
    let t1 = std::thread::spawn(move || tee(out, std::io::stdout(), p1, &f1));
    let t2 = std::thread::spawn(move || tee(err, std::io::stderr(), prefix, &f2));
    let status = child.wait().context("waiting for cargo")?;
    t1.join().expect("stdout tee")?;
    t2.join().expect("stderr tee")?;
    skips.append(&mut found.lock().expect("not poisoned"));
    Ok(status.success())
}

/// Relays `from` to `to` line by line as the lines complete, each after `prefix()` (two
/// children relayed side by side do not cut into each other's lines), and collects the
/// lines that start with `SKIP:`.
fn tee(
    mut from: impl Read,
    mut to: impl Write,
    prefix: impl Fn() -> String,
    skips: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut lines = LineBuf::default();
    let mut buf = [0u8; 8192];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let complete = lines.feed(&buf[..n]);
        // Our own stdout or stderr gone (a closed pipe) must not stop the count.
        let _ = write_lines(&mut to, &prefix(), &complete).and_then(|()| to.flush());
        count_skips(&complete, skips);
    }
    if let Some(last) = lines.finish() {
        let _ = write_lines(&mut to, &prefix(), std::slice::from_ref(&last));
        count_skips(std::slice::from_ref(&last), skips);
    }
    Ok(())
}

/// Each line after `prefix`, with its newline, in one write.
fn write_lines(to: &mut impl Write, prefix: &str, lines: &[Vec<u8>]) -> std::io::Result<()> {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    to.write_all(&out)
}

fn count_skips(lines: &[Vec<u8>], skips: &Mutex<Vec<String>>) {
    for l in lines {
        let line = String::from_utf8_lossy(l);
        let line = line.trim_end_matches('\r');
        if line.starts_with("SKIP:") {
            skips.lock().expect("not poisoned").push(line.to_string());
        }
    }
}

/// Splits a byte stream into lines (without their `\n`).
#[derive(Default)]
struct LineBuf {
    partial: Vec<u8>,
}

impl LineBuf {
    /// The lines `bytes` completes.
    fn feed(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                lines.push(std::mem::take(&mut self.partial));
            } else {
                self.partial.push(b);
            }
        }
        lines
    }

    /// The last line, when the stream did not end with a newline.
    fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.partial.is_empty()).then(|| std::mem::take(&mut self.partial))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_lines_are_counted_across_chunks_and_relayed_line_by_line() {
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
        tee(Chunks(&stream), &mut out, String::new, &found).unwrap();
        let mut whole = stream.clone();
        whole.push(b'\n');
        assert_eq!(
            out, whole,
            "the lines pass through unchanged, the last one ended"
        );
        assert_eq!(
            found.into_inner().unwrap(),
            vec!["SKIP: a: no qemu", "SKIP: b: not root"]
        );
        // With a prefix: the same lines, each after it, the same count.
        let found = Mutex::new(Vec::new());
        let mut out = Vec::new();
        tee(Chunks(&stream), &mut out, || "[e2e] ".to_string(), &found).unwrap();
        let expected: String = String::from_utf8_lossy(&stream)
            .lines()
            .map(|l| format!("[e2e] {l}\n"))
            .collect();
        assert_eq!(String::from_utf8(out).unwrap(), expected);
        assert_eq!(found.into_inner().unwrap().len(), 2);
        assert_eq!(summary(&[]), "0 SKIP");
        assert_eq!(summary(&["SKIP: a: x".into()]), "1 SKIP\n  SKIP: a: x");
    }
}
