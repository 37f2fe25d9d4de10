//! `zos bot run`: the orchestrator of placement contracts, "the 3bot" (docs/grid.md).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde_json::json;
use zos_contract::SecretKey;
use zos_grid::Bot;

use crate::output::{json as print_json, outln};

#[derive(Debug, Subcommand)]
pub enum BotCmd {
    /// Place the replicas of every placement contract that names this key as its
    /// orchestrator, and move them off lost nodes (docs/grid.md).
    ///
    /// Reads the contracts under grid/<farm>/contracts/, the farm's registrations,
    /// heartbeats and status reports; writes the placement record of each contract
    /// (compare-and-swap) and the signed assignments under nodes/<node>/assignments/.
    /// Several instances with one key may run: one leads (a leased record at
    /// orchestrators/<key>/leader), the others take over when it stops. Runs until
    /// interrupted; logs go to stderr (RUST_LOG=info by default).
    ///
    /// Examples: zos bot run --key bot.key --notary etcd://10.0.0.5:2379/zos
    ///           zos bot run --key bot.key --notary dir:///srv/notary --once --json
    Run {
        /// The orchestrator's key: the one the contracts' placement names.
        #[arg(long)]
        key: PathBuf,
        /// dir:///path or etcd://host:port[/prefix].
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
        /// One round without leading (list, plan, write), print what it did and exit.
        #[arg(long)]
        once: bool,
        /// With --once: one machine-readable JSON document instead of text.
        #[arg(long, requires = "once")]
        json: bool,
    },
}

pub fn run(cmd: BotCmd) -> anyhow::Result<()> {
    let BotCmd::Run {
        key,
        notary,
        once,
        json,
    } = cmd;
    let key = SecretKey::load(&key)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let client = zos_notary::open(&notary).with_context(|| format!("opening notary {notary}"))?;
    let mut bot = Bot::new(key.clone(), client);
    if once {
        let round = rt.block_on(bot.round())?;
        if json {
            let assigned: Vec<_> = round
                .assigned
                .iter()
                .map(|(c, r, n, e)| json!({"contract": c, "replica": r, "node": n, "epoch": e}))
                .collect();
            let skipped: Vec<_> = round
                .skipped
                .iter()
                .map(|(c, why)| json!({"contract": c, "why": why}))
                .collect();
            return print_json(&json!({
                "orchestrator": key.public(),
                "contracts": round.contracts,
                "assigned": assigned,
                "conflicts": round.conflicts,
                "skipped": skipped,
            }));
        }
        outln!(
            "orchestrator {}: {} placement contracts",
            key.public(),
            round.contracts
        )?;
        for (c, r, n, e) in &round.assigned {
            outln!("  assigned {c} replica {r} to node {n} at epoch {e}")?;
        }
        for (c, why) in &round.skipped {
            outln!("  skipped {c}: {why}")?;
        }
        if round.conflicts > 0 {
            outln!(
                "  {} placement records changed since they were read (another orchestrator): planned again next round",
                round.conflicts
            )?;
        }
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    tracing::info!(orchestrator = %key.public(), notary = %notary, "zos bot starting");
    rt.block_on(bot.run(async {
        let _ = tokio::signal::ctrl_c().await;
    }))?;
    Ok(())
}
