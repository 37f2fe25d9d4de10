//! `cargo xtask fuzz [TARGET] [--seconds N]`: coverage-guided fuzzing of the parsers of
//! untrusted input (fuzz/, its own workspace; docs/fuzzing.md).
//!
//! Installs what it needs (a C++ compiler for libFuzzer, cargo-fuzz), builds the
//! targets on the stable toolchain (`--sanitizer none`: no `-Zsanitizer`, so no
//! nightly), then runs each target (or the one named) for N seconds, one at a time and
//! niced, from its committed seeds (`fuzz/corpus/<target>/`) plus a working corpus under
//! `fuzz/target/corpus/<target>/` that grows between runs. Prints executions and
//! findings per target; a finding (a crash, a leak, a timeout, an out-of-memory) is
//! left in `fuzz/artifacts/<target>/` and makes the task fail. libFuzzer stops at the
//! first crash; `--keep-going` runs it in fork mode past crashes (a known, unfixed
//! crash then does not keep the rest of the target unfuzzed).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::{packages, root};

/// libfuzzer-sys compiles libFuzzer (C++) with the system's compiler.
pub const FUZZ_PACKAGES: &[&str] = &["g++"];

/// Seconds per target when `--seconds` is not given.
const DEFAULT_SECONDS: u64 = 60;

/// The flags every build and run uses: release with debug assertions and overflow
/// checks (a wrapped length is a finding), no sanitizer (stable Rust has none).
const BUILD_FLAGS: [&str; 4] = ["--sanitizer", "none", "--release", "--debug-assertions"];

fn fuzz_dir() -> PathBuf {
    root().join("fuzz")
}

/// The targets: one `fuzz/fuzz_targets/<name>.rs` each, sorted.
pub fn targets() -> anyhow::Result<Vec<String>> {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".rs").map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// What one run of a target did.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Inputs libFuzzer ran; `None` when its output did not say.
    pub executions: Option<u64>,
    /// New files in `fuzz/artifacts/<target>/`: each a crashing (or hanging) input.
    pub findings: Vec<PathBuf>,
}

/// What the command line asked for.
#[derive(Debug, PartialEq)]
struct Args {
    target: Option<String>,
    seconds: u64,
    keep_going: bool,
}

/// `cargo xtask fuzz [TARGET] [--seconds N]` (see the module docs).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let Args {
        target,
        seconds,
        keep_going,
    } = parse_args(args)?;
    let all = targets()?;
    let chosen: Vec<String> = match target {
        Some(t) if all.contains(&t) => vec![t],
        Some(t) => bail!("no fuzz target {t:?}; the targets: {}", all.join(", ")),
        None => all,
    };
    packages::ensure(FUZZ_PACKAGES)?;
    ensure_cargo_fuzz()?;
    build(&chosen)?;
    let mut results = Vec::new();
    for t in &chosen {
        let outcome = run_target(t, seconds, keep_going)?;
        results.push((t.clone(), outcome));
    }
    eprintln!("\ncargo xtask fuzz: {seconds} s per target");
    let mut findings = 0;
    for (t, o) in &results {
        let execs = o
            .executions
            .map_or_else(|| "? executions".to_string(), |n| format!("{n} executions"));
        eprintln!("  {t:<14} {execs}, {} findings", o.findings.len());
        for f in &o.findings {
            eprintln!("    {}", f.display());
        }
        findings += o.findings.len();
    }
    if findings > 0 {
        bail!(
            "{findings} findings: reproduce one with `fuzz/target/x86_64-unknown-linux-gnu/release/<target> <file>`, \
             then copy it to fuzz/regressions/<target>/ (docs/fuzzing.md)"
        );
    }
    Ok(())
}

fn parse_args(args: &[String]) -> anyhow::Result<Args> {
    let mut target = None;
    let mut seconds = DEFAULT_SECONDS;
    let mut keep_going = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                let v = it.next().context("--seconds needs a number")?;
                seconds = v
                    .parse()
                    .with_context(|| format!("--seconds {v:?}: not a number"))?;
                if seconds == 0 {
                    bail!("--seconds must be at least 1");
                }
            }
            "--keep-going" => keep_going = true,
            s if s.starts_with('-') => bail!("cargo xtask fuzz: unknown option {s}"),
            s if target.is_none() => target = Some(s.to_string()),
            s => bail!("cargo xtask fuzz: one target at most (got {s:?} too)"),
        }
    }
    Ok(Args {
        target,
        seconds,
        keep_going,
    })
}

fn cargo_cmd() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

fn ensure_cargo_fuzz() -> anyhow::Result<()> {
    let have = cargo_cmd()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if have {
        return Ok(());
    }
    eprintln!("+ cargo install --locked cargo-fuzz");
    let status = cargo_cmd()
        .args(["install", "--locked", "cargo-fuzz"])
        .status()
        .context("running cargo install")?;
    if !status.success() {
        bail!("cargo install --locked cargo-fuzz failed ({status})");
    }
    Ok(())
}

fn build(targets: &[String]) -> anyhow::Result<()> {
    let mut args = vec!["fuzz", "build"];
    args.extend(BUILD_FLAGS);
    // All targets in one cargo build, or the one named.
    if let [one] = targets {
        args.push(one);
    }
    eprintln!("+ (cd fuzz && cargo {})", args.join(" "));
    let status = cargo_cmd()
        .args(&args)
        .current_dir(fuzz_dir())
        .status()
        .context("running cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    Ok(())
}

fn artifacts(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs one target for `seconds` (niced: the machine is shared), streaming libFuzzer's
/// output through.
fn run_target(target: &str, seconds: u64, keep_going: bool) -> anyhow::Result<Outcome> {
    let dir = fuzz_dir();
    let work = dir.join("target/corpus").join(target);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let seeds = dir.join("corpus").join(target);
    let found_dir = dir.join("artifacts").join(target);
    let before = artifacts(&found_dir);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut args: Vec<String> = vec!["-n".into(), "10".into(), cargo, "fuzz".into(), "run".into()];
    args.extend(BUILD_FLAGS.iter().map(|s| s.to_string()));
    args.push(target.into());
    // New inputs go to the first directory (the working corpus), never to the seeds.
    args.push(work.display().to_string());
    args.push(seeds.display().to_string());
    args.push("--".into());
    args.extend([
        format!("-max_total_time={seconds}"),
        "-timeout=10".into(),
        "-rss_limit_mb=2048".into(),
        "-print_final_stats=1".into(),
    ]);
    if keep_going {
        // One child process at a time (the machine is shared), restarted after a crash.
        args.extend(["-fork=1".into(), "-ignore_crashes=1".into()]);
    }
    eprintln!("+ (cd fuzz && nice {})", args.join(" "));
    let mut child = Command::new("nice")
        .args(&args)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running cargo fuzz run")?;
    let mut executions = None;
    let stderr = child.stderr.take().expect("piped");
    let mut out = std::io::stderr();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading libFuzzer's output")?;
        let _ = writeln!(out, "{line}");
        if let Some(n) = executions_in(&line) {
            executions = Some(n);
        }
    }
    let status = child.wait().context("waiting for cargo fuzz run")?;
    let findings: Vec<PathBuf> = artifacts(&found_dir)
        .into_iter()
        .filter(|p| !before.contains(p))
        .collect();
    if !status.success() && findings.is_empty() {
        bail!("cargo fuzz run {target} failed ({status}) without leaving an input");
    }
    Ok(Outcome {
        executions,
        findings,
    })
}

/// The execution count in a libFuzzer line: `stat::number_of_executed_units: N` (the
/// final stats), the `#N` of a progress line (`#524288 pulse ...`, `#12 DONE ...`) or
/// of a fork-mode line (`#8192: cov: ...`).
fn executions_in(line: &str) -> Option<u64> {
    if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
        return n.trim().parse().ok();
    }
    let rest = line.strip_prefix('#')?;
    let (n, what) = rest.split_once(|c: char| c.is_whitespace())?;
    let known = matches!(
        what.split_whitespace().next(),
        Some("DONE" | "pulse" | "NEW" | "REDUCE" | "INITED" | "cov:")
    );
    known
        .then(|| n.trim_end_matches(':').parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_args(&s(&[])).unwrap(),
            Args {
                target: None,
                seconds: 60,
                keep_going: false
            }
        );
        assert_eq!(
            parse_args(&s(&["dns", "--seconds", "5", "--keep-going"])).unwrap(),
            Args {
                target: Some("dns".into()),
                seconds: 5,
                keep_going: true
            }
        );
        assert!(parse_args(&s(&["--seconds", "0"])).is_err());
        assert!(parse_args(&s(&["--seconds"])).is_err());
        assert!(parse_args(&s(&["a", "b"])).is_err());
        assert!(parse_args(&s(&["--minutes", "1"])).is_err());
    }

    #[test]
    fn executions_from_libfuzzer_lines() {
        assert_eq!(
            executions_in("stat::number_of_executed_units: 633826"),
            Some(633826)
        );
        assert_eq!(
            executions_in("#524288\tpulse  cov: 3402 ft: 9279 corp: 1637/889Kb"),
            Some(524288)
        );
        assert_eq!(
            executions_in("#1284078\tREDUCE cov: 3402 ft: 9279"),
            Some(1284078)
        );
        assert_eq!(
            executions_in("#8192: cov: 677 ft: 1201 corp: 40 exec/s 4096 oom/timeout/crash: 0/0/2"),
            Some(8192)
        );
        assert_eq!(executions_in("INFO: Seed: 1234"), None);
        assert_eq!(executions_in("#comment"), None);
    }

    #[test]
    fn every_target_has_seeds() {
        let all = targets().unwrap();
        assert!(all.len() >= 7, "{all:?}");
        for t in all {
            let seeds = fuzz_dir().join("corpus").join(&t);
            assert!(
                std::fs::read_dir(&seeds).is_ok_and(|d| d.count() >= 3),
                "{} holds fewer than 3 seeds",
                seeds.display()
            );
        }
    }
}
