//! zosd: the Zero-OS node daemon. Wiring only: the crates under crates/ implement.
//!
//! `zosd run --config node.toml` runs the node agent: it pulls the contracts addressed
//! to this node from the notary, verifies them, and keeps their volumes, networks and
//! workloads as the contracts say. It opens no TCP or UDP listening socket; its only
//! listener is a root-only unix socket serving read-only status (docs/status.md).

mod config;
mod diag;
mod hypervisor;
mod logs;
mod metrics;
mod node;
mod pid1;
mod provisioner;
mod quiet;
mod registration;
mod status;
mod upgrade;

/// The version this binary was built as.
const BUILT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The version the node runs and reports (registration, heartbeat, status, the rollout):
/// the signed release's when PID 1 started this agent from a slot (`ZOSD_SLOT`), else
/// the one it was built as. A version is what a release key signed for this binary
/// (its sha256 is the slot's pin, which PID 1 checked before starting it), not a string
/// compiled in: the same bits may be released again under a higher version.
pub fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        std::env::var(zos_init::slots::SLOT_ENV)
            .ok()
            .filter(|v| v.parse::<zos_release::Version>().is_ok())
            .unwrap_or_else(|| BUILT_VERSION.to_owned())
    })
}

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// zosd: a Zero-OS node. It runs signed IT contracts from a notary and has no login.
#[derive(Debug, Parser)]
#[command(name = "zosd", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the node agent (as root): pools, identity, networks, the reconcile loop.
    ///
    /// Prints the node's public key, then serves the contracts the notary holds for it
    /// until SIGTERM or SIGINT. Workloads keep running when zosd stops; the next start
    /// re-adopts them.
    ///
    /// Example: zosd run --config /etc/zos/node.toml
    Run {
        /// The node configuration (TOML; see docs/zosd.md).
        #[arg(long, short)]
        config: PathBuf,
        /// Log format, overriding the configuration: pretty or json.
        #[arg(long)]
        log_format: Option<String>,
    },
    /// Be the node's init: what the boot image's `/init` does (docs/pid1.md).
    ///
    /// Mounts proc, sys, dev, run and cgroup2, loads the image's kernel modules, reads
    /// zos.farm=, zos.notary=, zos.runmode= and zos.debug from /proc/cmdline, writes
    /// /run/zos/node.toml, then runs `zosd run` as a supervised child, restarting it if
    /// it dies, reaping every orphan, and powering off in order on SIGTERM (reboot on
    /// SIGINT, i.e. ctrl-alt-del). Refused unless this is the machine's PID 1; started
    /// as PID 1 without a subcommand, zosd does this by itself.
    Init,
    /// (internal) Create and start one container from the spec on stdin, in a process
    /// of its own; zosd runs this itself.
    #[command(hide = true)]
    RuntimeCreate {
        #[arg(long)]
        root: PathBuf,
    },
}

/// The agent's logs: on stderr, and into the node's log shipper (which sends them to
/// the farm's destination once the farm record names one; until then they queue, up to
/// its bounds). Needs the tokio runtime entered.
fn init_logs(format: config::LogFormat) -> anyhow::Result<logs::NodeLogs> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    // netlink-packet-route warns about every attribute a newer kernel adds: noise.
    let filter = || {
        EnvFilter::try_from_env("ZOSD_LOG")
            .unwrap_or_else(|_| EnvFilter::new("info,netlink_packet_route=error"))
    };
    // Colours only for a person at a terminal: NO_COLOR (https://no-color.org) turns
    // them off, as PID 1 does for the agent (a serial console ends up in files).
    use std::io::IsTerminal;
    let ansi = std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal();
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let stderr = match format {
        config::LogFormat::Json => stderr.json().boxed(),
        config::LogFormat::Pretty => stderr.compact().boxed(),
    };
    // HOSTNAME is the node id, set once the pools are open (node::serve).
    let (shipper, sink) =
        zos_logship::Shipper::node_unbound(zos_logship::ShipperConfig::new("zosd"))?;
    let ship = zos_logship::ShipLayer::new(sink.clone(), "zosd");
    tracing_subscriber::registry()
        .with(stderr.with_filter(filter()))
        .with(ship.with_filter(filter()))
        .init();
    Ok(logs::NodeLogs::new(shipper, sink))
}

/// Logs of the runtime child: warnings and errors on stderr, no colours.
fn init_runtime_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,libcgroups=error"))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .compact()
        .init();
}

/// The most threads blocking work (kernel calls, the container runtime, flist unpacks)
/// runs on. tokio's default is 512, and its pool never shrinks back under a node's
/// steady load: an idle thread goes after 10 s unwoken, but each new blocking call wakes
/// the idle thread that waited longest, so a status poll every few seconds keeps all of
/// them: a burst of 500 contracts left about 220 threads for good. A node's few cores
/// gain nothing from more at once: past it, calls wait their turn. Workload starts, the
/// long calls, take at most a quarter of them (`provisioner::WORKLOAD_STARTS`).
const BLOCKING_THREADS: usize = 64;

fn main() -> std::process::ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // The kernel starts /init without a subcommand (perhaps with arguments meant for
        // init): as PID 1 that means init mode.
        Err(_) if pid1::is_pid1() => pid1::boot(),
        Err(e) => e.exit(),
    };
    let result = match cli.command {
        Command::Run { config, log_format } => (|| {
            let mut cfg = config::NodeConfig::load(&config)?;
            if let Some(f) = log_format {
                cfg.log_format = match f.as_str() {
                    "json" => config::LogFormat::Json,
                    "pretty" => config::LogFormat::Pretty,
                    other => anyhow::bail!("--log-format {other:?}: use pretty or json"),
                };
            }
            zos_init::cap_malloc_arenas();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .max_blocking_threads(BLOCKING_THREADS)
                .build()?;
            let _entered = rt.enter();
            let logs = init_logs(cfg.log_format)?;
            rt.block_on(node::run(cfg, logs))
        })(),
        Command::Init => pid1::run().map(|never| match never {}),
        Command::RuntimeCreate { root } => {
            // Errors only, on stderr: zosd reads the last line into the status.
            init_runtime_logs();
            zos_container::runtime_create(&root).map_err(Into::into)
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("zosd: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
