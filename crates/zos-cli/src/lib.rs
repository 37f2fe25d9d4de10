//! The `zos` tool as a library: [`main`] is the whole tool (src/main.rs only calls it),
//! and [`command`] is its clap `Command`, from which the shell completions
//! (`zos completions SHELL`) and the man pages ([`man::write_pages`], `cargo xtask man`)
//! are generated, so they never drift from what the tool parses.

#![forbid(unsafe_code)]

mod blueprint;
mod contract;
mod farm;
mod flist;
mod key;
pub mod man;
mod notary;
mod output;
mod progress;
mod status;

use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use crate::output::note;

/// Sign blueprints and contracts, publish them to a notary, work with flists, and
/// create farms and list their nodes.
///
/// The flow: an IT expert signs a blueprint; a consumer instantiates it into a contract
/// for a node and signs it as owner; stakeholders co-sign; the contract is published to
/// a notary (dir:///path or etcd://host:port), where the node picks it up.
///
/// Every read command takes --json: one JSON document on stdout.
#[derive(Debug, Parser)]
#[command(name = "zos", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make and inspect ed25519 keys.
    #[command(subcommand)]
    Key(key::KeyCmd),
    /// Sign, inspect and publish blueprints (IT experts).
    #[command(subcommand)]
    Blueprint(blueprint::BlueprintCmd),
    /// Instantiate, sign, verify, publish, list and cancel contracts.
    #[command(subcommand)]
    Contract(contract::ContractCmd),
    /// Work with rfs-compatible flists: pack, verify, ls, unpack, mount.
    #[command(subcommand)]
    Flist(flist::FlistCmd),
    /// Create and show farms (farmers).
    #[command(subcommand)]
    Farm(farm::FarmCmd),
    /// List the nodes registered in a notary.
    #[command(subcommand)]
    Node(farm::NodeCmd),
    Status(status::StatusCmd),
    /// Print a shell completion script for zos.
    ///
    /// Example: zos completions bash > /etc/bash_completion.d/zos
    ///          zos completions zsh > "${fpath[1]}/_zos"
    ///          zos completions fish > ~/.config/fish/completions/zos.fish
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (one per command) into DIR; `cargo xtask man` runs this.
    #[command(hide = true)]
    Man {
        /// The directory to write zos.1, zos-contract.1, ... into (created if missing).
        dir: PathBuf,
    },
}

/// The tool's clap `Command`: every subcommand, argument and help text.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Runs the tool on the process's arguments. Errors are printed for a person on one line;
/// a closed stdout (`zos ... | head`) ends it quietly with success.
pub fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Key(cmd) => key::run(cmd),
        Command::Blueprint(cmd) => blueprint::run(cmd),
        Command::Contract(cmd) => contract::run(cmd),
        Command::Flist(cmd) => flist::run(cmd),
        Command::Farm(cmd) => farm::run_farm(cmd),
        Command::Node(cmd) => farm::run_node(cmd),
        Command::Status(cmd) => status::run(cmd),
        Command::Completions { shell } => completions(shell),
        Command::Man { dir } => man::write_pages(&dir).map(|pages| {
            note!("wrote {} man pages into {}", pages.len(), dir.display());
        }),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader stopped early (`| head`): it has what it wanted.
        Err(e) if output::is_stdout_closed(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain of causes on one line, and no backtrace: this is a
            // message for a person, not a crash report.
            note!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `zos completions SHELL`: the script, generated into memory first (clap_complete
/// panics on a failed write) and then written like any other output.
fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "zos", &mut script);
    output::out!("{}", String::from_utf8_lossy(&script))
}
