//! `zos flist`: pack, verify, list, unpack and mount flists.

use clap::Subcommand;

/// Work with rfs-compatible flists.
#[derive(Debug, Subcommand)]
pub enum FlistCmd {}

pub fn run(cmd: FlistCmd) -> anyhow::Result<()> {
    match cmd {}
}
