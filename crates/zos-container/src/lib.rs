//! Containers for zosd: a typed [`ContainerSpec`] becomes an OCI runtime spec (built with
//! `oci-spec`) in a bundle, run by youki's `libcontainer`.
//!
//! - [`spec`]: the workload and its mapping, with the security defaults.
//! - [`seccomp`]: the default seccomp allow-list.
//! - [`runtime`]: the [`Runtime`] trait (create/start/kill/delete/state/adopt) and its real
//!   implementation, [`Libcontainer`].
//! - [`logs`]: size-bounded stdout/stderr logs and [`log_tail`].
//! - [`exit`]: exit and crash detection ([`ExitWatch`], async and blocking).
//! - [`restart`]: exponential backoff with a cap, counting restarts.
//! - [`rootfs`]: a container's root: its pinned flist unpacked on a quota'd pool
//!   subvolume, under an overlay whose upper layer is its own.
//! - [`containers`]: the node's containers from the engine's plans, created in a child
//!   process ([`runtime_create`]) and re-adopted after a restart.
//! - [`userns`]: user namespaces: a contract's host id range, a workload's namespace
//!   file, and the shift of its trees into the range.
//! - [`workload`]: [`ContainerRuntime`], the container kind behind the engine's
//!   `WorkloadRuntime` seam.
//!
//! See docs/container.md for the design and the figures.

pub mod containers;
mod epoll_thread;
pub mod error;
pub mod exit;
pub mod logs;
mod pump;
pub mod restart;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod spec;
pub mod userns;
mod watchdog;
pub mod workload;

pub use containers::{runtime_create, ContainerPlan, Containers};
pub use error::Error;
pub use exit::{exit_channel, Exit, ExitNotifier, ExitWatch};
pub use logs::{log_tail, LineTap, Stream, Tap, DEFAULT_LOG_CAP};
pub use nix::sys::signal::Signal;
pub use restart::{Clock, Decision, RestartMode, RestartPolicy, Restarts, SystemClock};
pub use rootfs::Rootfs;
pub use runtime::{Adopted, ContainerState, Created, Libcontainer, Runtime, RuntimeConfig, Status};
pub use spec::{BindMount, ContainerSpec, Cpu};
pub use workload::ContainerRuntime;
