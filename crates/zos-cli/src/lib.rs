//! The `zos` tool as a library: [`main`] is the whole tool (src/main.rs only calls it),
//! and [`command`] is its clap `Command`, from which the shell completions
//! (`zos completions SHELL`) and the man pages ([`man::write_pages`], `cargo xtask man`)
//! are generated, so they never drift from what the tool parses.

#![forbid(unsafe_code)]

mod blueprint;
mod bot;
mod contract;
mod farm;
mod flist;
mod key;
pub mod man;
mod notary;
mod output;
mod probe;
mod progress;
mod release;
mod status;
mod support;
mod top;

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// Publish the node's own software releases (a farm's rollout: `zos farm rollout`).
    #[command(subcommand)]
    Release(release::ReleaseCmd),
    /// List the nodes registered in a notary.
    #[command(subcommand)]
    Node(farm::NodeCmd),
    Status(status::StatusCmd),
    /// Support bundles of a node or a contract, by signed request.
    #[command(subcommand)]
    Support(support::SupportCmd),
    /// Run a built-in probe (ping, tcp, dns, trace, capture) on a node, by signed request.
    Probe(probe::ProbeCmd),
    /// The orchestrator of placement contracts ("the 3bot"): places replicas, moves them.
    #[command(subcommand)]
    Bot(bot::BotCmd),
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
}

/// The tool's clap `Command`: every subcommand, argument and help text people use (the
/// completions and the man pages are made from it).
pub fn command() -> clap::Command {
    Cli::command()
}

/// [`command`] and the hidden `zos man DIR` that `cargo xtask man` runs. Kept out of
/// [`command`] so that no completion offers it and no man page describes it.
fn command_and_man() -> clap::Command {
    command().subcommand(
        clap::Command::new("man")
            .hide(true)
            .about("Write the man pages (one per command) into DIR")
            .arg(
                clap::Arg::new("dir")
                    .value_name("DIR")
                    .value_parser(clap::value_parser!(PathBuf))
                    .required(true),
            ),
    )
}

/// Runs the tool on the process's arguments. Errors are printed for a person on one line;
/// a closed stdout (`zos ... | head`) ends it quietly with success.
pub fn main() -> std::process::ExitCode {
    let matches = command_and_man().get_matches();
    if let Some(("man", args)) = matches.subcommand() {
        let dir = args
            .get_one::<PathBuf>("dir")
            .expect("clap requires DIR")
            .clone();
        return exit(man::write_pages(&dir).map(|pages| {
            note!("wrote {} man pages into {}", pages.len(), dir.display());
        }));
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    exit(match cli.command {
        Command::Key(cmd) => key::run(cmd),
        Command::Blueprint(cmd) => blueprint::run(cmd),
        Command::Contract(cmd) => contract::run(cmd),
        Command::Flist(cmd) => flist::run(cmd),
        Command::Farm(cmd) => farm::run_farm(cmd),
        Command::Release(cmd) => release::run(cmd),
        Command::Node(cmd) => farm::run_node(cmd),
        Command::Status(cmd) => status::run(cmd),
        Command::Support(cmd) => support::run(cmd),
        Command::Probe(cmd) => probe::run(cmd),
        Command::Bot(cmd) => bot::run(cmd),
        Command::Completions { shell } => completions(shell),
    })
}

/// The exit status for `result`, its error printed for a person.
fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
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
