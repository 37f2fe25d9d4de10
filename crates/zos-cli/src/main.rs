//! `zos`: the command-line tool for IT experts, consumers, stakeholders and farmers.

mod flist;

use clap::{Parser, Subcommand};

/// zos: sign blueprints and contracts, publish them to a notary, and work with flists.
#[derive(Debug, Parser)]
#[command(name = "zos", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Work with rfs-compatible flists: pack, verify, ls, unpack, mount.
    #[command(subcommand)]
    Flist(flist::FlistCmd),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Flist(cmd) => flist::run(cmd),
    }
}
