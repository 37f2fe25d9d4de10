//! `zos`: the command-line tool for IT experts, consumers, stakeholders and farmers.

#![forbid(unsafe_code)]

mod blueprint;
mod contract;
mod farm;
mod flist;
mod key;
mod notary;
mod output;
mod status;

use clap::{Parser, Subcommand};

/// zos: sign blueprints and contracts, publish them to a notary, work with flists, and
/// create farms and list their nodes.
///
/// The flow: an IT expert signs a blueprint; a consumer instantiates it into a contract
/// for a node and signs it as owner; stakeholders co-sign; the contract is published to
/// a notary (dir:///path or etcd://host:port), where the node picks it up.
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
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Key(cmd) => key::run(cmd),
        Command::Blueprint(cmd) => blueprint::run(cmd),
        Command::Contract(cmd) => contract::run(cmd),
        Command::Flist(cmd) => flist::run(cmd),
        Command::Farm(cmd) => farm::run_farm(cmd),
        Command::Node(cmd) => farm::run_node(cmd),
        Command::Status(cmd) => status::run(cmd),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain of causes on one line, and no backtrace: this is a
            // message for a person, not a crash report.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
