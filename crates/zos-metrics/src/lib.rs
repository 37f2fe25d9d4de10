//! Metrics leave the node by Prometheus remote-write: the node never listens, so
//! nothing scrapes it (issue #18, section 2).
//!
//! - [`Registry`]: labelled [`Counter`]s, [`Gauge`]s and [`Histogram`]s, updated through
//!   atomics (cheap on hot paths), with constant labels (`node`, `contract`).
//! - [`collect`]: collectors reading the kernel: node CPU, memory and network, a
//!   workload's cgroup (v1 and v2), pools by `statvfs`, links the caller lists.
//! - [`proto`]: the remote-write 1.0 `WriteRequest`, encoded by hand, snappy-compressed.
//! - [`Pusher`]: the tokio task sending one registry to one [`Target`] every interval,
//!   with a bounded queue, bounded backoff and counted drops. One per (target, tenant).
//! - [`Tenants`]: one registry per contract (`contract=<id>` on every series) and its
//!   pusher, bound to the target the contract names.
//!
//! See docs/observability.md (`## Metrics`) for the series and the wiring.

pub mod collect;
pub mod proto;
mod push;
mod registry;
mod tenants;

pub use collect::{CgroupLayout, CollectError, Collector};
pub use push::{Client, PushConfig, PushError, PushStats, Pusher, Target};
pub use registry::{
    Counter, Gauge, Histogram, HistogramTimer, Registry, RegistryError, LATENCY_BUCKETS,
};
pub use tenants::{Tenants, CONTRACT_LABEL};
