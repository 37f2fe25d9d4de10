//! `zos status`: the local node's status, read from zosd's read-only D-Bus interface
//! (peer-to-peer on a root-only unix socket; docs/status.md). On the node itself, as
//! root: there is no remote access and no login.

use std::path::PathBuf;

use anyhow::Context;

use crate::output::{out, Format};

/// Show this node's status: key, farm, version, addresses, pools, capacity,
/// workloads and their states, last errors.
///
/// Reads zosd's read-only status interface (D-Bus, peer-to-peer, on a root-only unix
/// socket); it cannot change anything. Run it on the node, as root.
///
/// Example: zos status --socket /run/zos/status.sock --json
#[derive(Debug, clap::Args)]
pub struct StatusCmd {
    /// zosd's status socket (`status_socket` in node.toml).
    #[arg(long, env = "ZOS_STATUS_SOCKET", default_value = zos_status::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    #[command(flatten)]
    pub format: Format,
}

pub fn run(cmd: StatusCmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = rt
        .block_on(zos_status::client::read(&cmd.socket))
        .with_context(|| {
            format!(
                "reading the node status from {} (is zosd running, and are you root?)",
                cmd.socket.display()
            )
        })?;
    if cmd.format.json {
        crate::output::json(&status)?;
    } else {
        out!("{}", zos_status::render(&status))?;
    }
    Ok(())
}
