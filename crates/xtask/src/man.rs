//! `cargo xtask man [DIR]`: the `zos` tool's man pages, one per command, generated from
//! its clap definition (zos-cli's hidden `zos man DIR`, clap_mangen) into DIR (default
//! target/man). Read one with `man -l target/man/zos-contract-status.1`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};

/// Builds `zos`, then has it write its pages into `args[0]` (default target/man).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let dir = match args {
        [] => xtask::root().join("target/man"),
        [dir] => PathBuf::from(dir),
        _ => bail!("usage: cargo xtask man [DIR]"),
    };
    xtask::cargo(&["build", "-p", "zos-cli", "--bin", "zos"])?;
    let zos = xtask::target_dir().join("debug/zos");
    let status = Command::new(&zos)
        .arg("man")
        .arg(&dir)
        .status()
        .with_context(|| format!("running {}", zos.display()))?;
    if !status.success() {
        bail!("{} man {} failed ({status})", zos.display(), dir.display());
    }
    Ok(())
}
