//! The project's tasks as a library: `cargo xtask` (src/main.rs) dispatches to these
//! modules, and the end-to-end tests (tests/e2e) boot nodes with [`node`], start etcd
//! with [`etcd`] and build the sample flists with [`flists`], the same code the tasks run.

pub mod bench;
pub mod bootbench;
pub mod capture;
pub mod cpio;
pub mod demo;
pub mod etcd;
pub mod failover;
pub mod flists;
pub mod fuzz;
pub mod image;
pub mod initramfs;
pub mod kernel;
pub mod lan;
pub mod mesh;
pub mod node;
pub mod packages;
pub mod release;
pub mod secureboot;
pub mod status;
pub mod test;
pub mod udpscan;
pub mod upgrade;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

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
