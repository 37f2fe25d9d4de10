//! The node's local, read-only status (docs/status.md).
//!
//! - [`NodeStatus`]: what zosd knows about the node right now (identity, farm, pools,
//!   capacity, contracts and workloads, the last errors). zosd fills it and shares it
//!   through a `tokio::sync::watch` channel ([`channel`]); readers never change it.
//! - [`render`](mod@render): the plain-text screen zosd paints on the console ([`console`]).
//! - [`server`]: a D-Bus interface (`org.zos.Node1` at `/org/zos/node`) served
//!   peer-to-peer on a root-only unix socket, no bus daemon. It has properties only,
//!   all read-only: nothing on it changes the node.
//! - [`client`]: what `zos status` uses to read it.
//! - [`mesh`]: a contract's tenant networks across nodes as one node sees them (the
//!   status record's `mesh` section), for `zos contract status`.
//! - [`live`]: the status while the agent runs: served, painted, and kept current from
//!   the machine and the engine's summaries.
//!
//! A unix socket is not a network listener: nothing here opens a TCP or UDP socket.

#![forbid(unsafe_code)]

pub mod client;
pub mod console;
mod error;
pub mod live;
pub mod mesh;
pub mod model;
pub mod render;
pub mod server;

pub use error::StatusError;
pub use model::{
    ContractStatus, LastError, NodeStatus, PoolStatus, Resources, WorkloadLine, MAX_ERRORS,
};
pub use render::render;

/// The D-Bus interface name.
pub const INTERFACE: &str = "org.zos.Node1";
/// The object path of the node.
pub const OBJECT_PATH: &str = "/org/zos/node";
/// Where zosd serves the interface unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/zos/status.sock";

/// A status channel: zosd keeps the sender, the console and the D-Bus server read.
pub fn channel(initial: NodeStatus) -> (StatusSender, StatusReceiver) {
    tokio::sync::watch::channel(initial)
}

/// The writing end of the status channel (zosd's, one per node).
pub type StatusSender = tokio::sync::watch::Sender<NodeStatus>;
/// A reading end of the status channel: always sees the latest [`NodeStatus`].
pub type StatusReceiver = tokio::sync::watch::Receiver<NodeStatus>;
