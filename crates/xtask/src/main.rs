//! `cargo xtask <task>`: the project's tasks, in Rust so they run the same everywhere.
//!
//! - `demo`: the main job, end to end, on a fresh directory notary.
//! - `test`: everything CI runs (installs the Debian packages it needs first).
//! - `bench [contracts|flist|storage|network|container|all]`: benchmarks.

mod bench;
mod cpio;
mod demo;
mod etcd;
mod flists;
mod kernel;
mod packages;
mod test;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  demo [--etcd] [--keep]
                run the flow end to end on a fresh directory notary (or, with --etcd,
                on a private etcd server): keys, blueprint, contract, signatures,
                verification, publish, list, cancel, and one refused contract for
                every refusal reason; --keep keeps the demo directory
  test          install missing Debian packages, then fmt, clippy and every test tier
                (unit, integration, privileged against the real kernel and real etcd)
  flist [hello|vm] [DIR]
                build a sample workload and pack and sign it into a flist with a local
                store (default DIR: target/flists/<name>): hello is the container app
                (flists/hello), vm the micro-VM (the Debian kernel as a PVH vmlinux and
                an initrd with flists/vm-echo as its init)
  bench [NAME]  benchmarks: contracts, flist, storage, network, container, or all
";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run(&args[1..]),
        Some("test") => test::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("flist") => flists::run_task(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown task {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cargo xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("xtask lives at crates/xtask")
        .to_path_buf()
}

/// Runs `cargo` with `args` in the workspace root, failing on a non-zero exit.
pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    cargo_env(args, &[])
}

/// [`cargo`] with extra environment variables.
pub fn cargo_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("+ cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Where cargo puts binaries of the dev profile.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}
