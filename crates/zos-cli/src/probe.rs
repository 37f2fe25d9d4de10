//! `zos probe`: a built-in diagnostic probe by signed request (docs/diagnostics.md).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use serde_json::json;
use zos_contract::{PublicKey, SecretKey};
use zos_notary::record::{DiagOutcome, DiagScope};
use zos_probe::ProbeSpec;

use crate::notary::Client;
use crate::output::{json as print_json, outln};
use crate::support::{probe_action, publish, wait_answer};

/// Run a built-in probe on a node: in a workload's network namespace or on the node's
/// uplink. No shell, no program: ping, tcp, dns, trace, capture (headers only).
///
/// Signed with --key: a workload's contract owner may probe that workload; the farmer of
/// the node's farm may probe any workload and the uplink. Publishes the request, waits
/// for the node's signed answer and prints the result.
///
/// Examples: zos probe <node_pub> --key farmer.key --notary dir:///srv/notary --uplink ping 1.1.1.1
///           zos probe <node_pub> --key owner.key --notary dir:///srv/notary --workload crm-acme/web tcp 10.70.0.3:80
///           zos probe <node_pub> --key owner.key --workload crm-acme/web dns example.com --server 10.70.0.1:53 --json
///           zos probe <node_pub> --key farmer.key --uplink trace 192.0.2.1 --max-hops 10
///           zos probe <node_pub> --key owner.key --workload crm-acme/web capture --packets 20 --seconds 5
#[derive(Debug, Args)]
pub struct ProbeCmd {
    /// The node's public key (hex).
    node: PublicKey,
    /// The requester's key.
    #[arg(long)]
    key: PathBuf,
    /// dir:///path or etcd://host:port[/prefix].
    #[arg(long, env = "ZOS_NOTARY")]
    notary: String,
    /// Probe from the node's own namespace (the farmer only).
    #[arg(
        long,
        conflicts_with = "workload",
        required_unless_present = "workload"
    )]
    uplink: bool,
    /// Probe from inside this workload's network: CONTRACT/NAME.
    #[arg(long, value_name = "CONTRACT/NAME")]
    workload: Option<String>,
    /// Wait up to this many seconds for the answer (before or after the probe's words).
    #[arg(long, default_value_t = 60, global = true)]
    wait: u64,
    /// Print one machine-readable JSON document instead of text (before or after the
    /// probe's words).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    probe: Kind,
}

#[derive(Debug, Subcommand)]
enum Kind {
    /// ICMP echo to an IPv4 address.
    Ping {
        target: IpAddr,
        /// Echo requests, 1 to 10.
        #[arg(long, default_value_t = 3)]
        count: u8,
    },
    /// A TCP connect to ADDR:PORT.
    Tcp { addr: SocketAddr },
    /// Resolve a name's A records with a DNS server.
    Dns {
        name: String,
        /// The server to ask, ADDR:PORT.
        #[arg(long)]
        server: SocketAddr,
    },
    /// The hops towards an IPv4 address.
    Trace {
        target: IpAddr,
        /// The largest TTL tried, 1 to 30.
        #[arg(long, default_value_t = 16)]
        max_hops: u8,
    },
    /// One header line per packet (never payload) on the namespace's links.
    Capture {
        /// Packets, 1 to 200.
        #[arg(long, default_value_t = 20)]
        packets: u16,
        /// The longest it listens, 1 to 10 s.
        #[arg(long, default_value_t = 5)]
        seconds: u8,
    },
}

pub fn run(cmd: ProbeCmd) -> anyhow::Result<()> {
    let spec = match cmd.probe {
        Kind::Ping { target, count } => ProbeSpec::Ping { target, count },
        Kind::Tcp { addr } => ProbeSpec::TcpConnect { addr },
        Kind::Dns { name, server } => ProbeSpec::Dns {
            name,
            server: Some(server),
        },
        Kind::Trace { target, max_hops } => ProbeSpec::Trace { target, max_hops },
        Kind::Capture { packets, seconds } => ProbeSpec::Capture { packets, seconds },
    };
    // The node checks again; this saves a round trip for a typo.
    spec.validate()?;
    let scope = match &cmd.workload {
        Some(w) => {
            let Some((contract, workload)) = w.split_once('/') else {
                bail!("--workload {w:?}: write CONTRACT/NAME");
            };
            DiagScope::Workload {
                contract: contract.into(),
                workload: workload.into(),
            }
        }
        None => DiagScope::Uplink,
    };
    let key = SecretKey::load(&cmd.key)?;
    let client = Client::open(&cmd.notary)?;
    let id = publish(&client, &cmd.node, &key, &scope, probe_action(&spec)?, 600)?;
    let answer = wait_answer(&client, &cmd.node, &id, Duration::from_secs(cmd.wait))?;
    match answer.outcome() {
        Some(DiagOutcome::Probe(r)) => {
            if cmd.json {
                print_json(&json!({"id": id, "node": cmd.node, "result": r}))?;
            } else {
                for line in &r.lines {
                    outln!("{line}")?;
                }
                if let Some(e) = &r.error {
                    outln!("error: {e}")?;
                }
            }
            if !r.ok {
                bail!("{} did not succeed ({} ms)", r.probe, r.elapsed_ms);
            }
            Ok(())
        }
        Some(DiagOutcome::Refused(code, reason)) => {
            if cmd.json {
                print_json(
                    &json!({"id": id, "node": cmd.node, "refused": code, "reason": reason}),
                )?;
            }
            bail!("node {} refused request {id} ({code}): {reason}", cmd.node)
        }
        _ => bail!("the answer to {id} is not a probe result"),
    }
}
