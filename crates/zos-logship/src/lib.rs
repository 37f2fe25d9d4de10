//! Logs leave the node.
//!
//! - [`Destination`]: where lines go (`syslog+tcp://`, `syslog+tls://` with a pinned CA,
//!   `jsonl+tcp://`), parsed from what the farm record or a contract carries.
//! - [`Shipper`]: one tokio task per (destination, source) with a bounded queue in front
//!   of it; it reconnects with backoff and counts dropped lines exactly.
//! - [`NodeSink`] (zosd, PID 1, the kernel) and [`TenantSink`] (one contract's workloads):
//!   the only ways in. A tenant sink is bound to its contract, so a contract's lines can
//!   only reach its own destination.
//! - [`ShipLayer`]: zosd's `tracing` events into the node's shipper; [`kmsg`]: the kernel
//!   log into it.
//!
//! See docs/observability.md, "Logs".

mod destination;
pub mod kmsg;
mod layer;
mod line;
mod shipper;

pub use destination::{Destination, DestinationError, PinnedCa, Transport};
pub use layer::{severity_of, ShipLayer};
pub use line::{rfc3339, Facility, Format, Line, Severity, SD_ID};
pub use shipper::{
    dropped_notice, Backoff, DeliveryError, Limits, NodeSink, Shipper, ShipperConfig, StartError,
    Stats, TenantShippers, TenantSink,
};
