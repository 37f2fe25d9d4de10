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
    eprintln!("+ cargo {}", args.join(" "));
    let status = cargo_command()
        .args(args)
        .envs(env.iter().copied())
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// What a parent cargo sets for the one package it runs (besides `CARGO_PKG_*` and
/// `CARGO_BIN_EXE_*`).
const PARENT_PACKAGE_VARS: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

/// `cargo` (`$CARGO`, the one running us) in the workspace root, without what a parent
/// cargo set for the package it ran (`CARGO_MANIFEST_DIR`, `CARGO_PKG_*`...). A build
/// script that watches one of them (ring's watches `CARGO_MANIFEST_DIR`) would see it
/// change between a build started by `cargo xtask` and the same build started by a
/// test, and everything above it would be compiled again: CI compiled the static
/// zosd twice in one run that way (`target/static/why-rebuilt.log` showed it).
pub fn cargo_command() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    for (key, _) in std::env::vars_os() {
        let parents = key.to_str().is_some_and(|k| {
            PARENT_PACKAGE_VARS.contains(&k)
                || k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_EXE_")
        });
        if parents {
            command.env_remove(&key);
        }
    }
    command.current_dir(root());
    command
}

/// Where cargo puts binaries of the dev profile.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    #[test]
    fn nested_cargo_does_not_inherit_the_package_its_parent_ran() {
        // cargo test sets these for this test binary, as it does for a booted test that
        // starts `cargo run -p xtask`.
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        assert!(std::env::var_os("CARGO_PKG_NAME").is_some());
        let command = super::cargo_command();
        let removed: Vec<&OsStr> = command
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k)
            .collect();
        for key in ["CARGO_MANIFEST_DIR", "CARGO_PKG_NAME", "CARGO_PKG_VERSION"] {
            assert!(removed.contains(&OsStr::new(key)), "{key} is passed on");
        }
        assert!(
            !removed.contains(&OsStr::new("CARGO_HOME")) && !removed.contains(&OsStr::new("PATH")),
            "only the parent package's variables are dropped"
        );
    }
}
