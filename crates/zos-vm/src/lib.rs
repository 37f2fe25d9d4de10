//! Micro-VMs for zosd: a [`Hypervisor`] runs a [`VmSpec`] (a kernel or a disk image,
//! vCPUs, memory, virtio disks, a tap NIC) and finds it again after zosd restarts.
//!
//! [`Qemu`] is the implementation: `qemu-system-x86_64`, `-M microvm` for kernel boots
//! and `-M q35` with firmware for disk images, KVM when a probe VM boots under it and
//! TCG otherwise ([`accel`]), controlled over QMP on a private unix socket ([`qmp`]),
//! never through a shell, its serial console in a size-bounded file ([`console`]) and
//! the QEMU process in a cgroup of its own ([`cgroup`]).
//!
//! [`VmRuntime`] runs the engine's VM workloads on a hypervisor
//! ([`zos_engine::WorkloadRuntime`]): the guest protocol ([`guest`]), the VM's tree on
//! a quota'd pool subvolume, its root disk and volume disks ([`runtime`]).

pub mod accel;
pub mod beneath;
pub mod cgroup;
mod confine;
pub mod console;
mod disk;
mod error;
pub mod guest;
mod program;
pub mod qemu;
pub mod qmp;
pub mod runtime;
mod spec;

pub use accel::{Accel, AccelChoice};
pub use beneath::{Access, TreeFile};
pub use disk::copy_image;
pub use error::{Error, Result};
pub use program::BundleSource;
pub use qemu::{Qemu, QemuConfig};
pub use runtime::{tree_quota_mib, tree_volume, VmRuntime, TREE_VOLUME_PREFIX, VM_TREE_MIB};
pub use spec::{valid_name, Boot, Disk, Nic, VmSpec, CMDLINE_MAX};

/// A VM that was started (or found running).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    /// The QEMU process id.
    pub pid: i32,
    /// The accelerator it runs with.
    pub accel: Accel,
}

/// Whether a VM's hypervisor process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    /// Its QEMU process is alive.
    Running {
        /// The QEMU process id.
        pid: i32,
    },
    /// Its hypervisor process is gone (the guest powered off, rebooted, panicked, or
    /// the process was killed); its files remain until [`Hypervisor::remove`].
    Stopped,
}

/// What zosd needs of a hypervisor. Every call is synchronous and idempotent.
pub trait Hypervisor: Send + Sync {
    /// Whether a VM can start on it at all: `Err` (permanent, e.g.
    /// [`Error::NoHypervisor`]) when none can, checked before anything of a new VM is
    /// made. The default: it can.
    fn available(&self) -> Result<()> {
        Ok(())
    }
    /// Starts the VM, or returns the running one of that name (never two).
    fn start(&self, spec: &VmSpec) -> Result<Started>;
    /// `None` when no VM of that name exists (running or stopped).
    fn state(&self, name: &str) -> Result<Option<VmState>>;
    /// Stops it: power button, then quit, then kill. A stopped VM is fine.
    fn stop(&self, name: &str) -> Result<()>;
    /// Stops it and removes everything of it but its disks (the caller owns those).
    fn remove(&self, name: &str) -> Result<()>;
    /// Every VM this hypervisor has files for.
    fn names(&self) -> Vec<String>;
    /// The last lines of its serial console.
    fn console_tail(&self, name: &str, lines: usize) -> Vec<String>;
    /// The accelerator it was started with.
    fn accel_of(&self, name: &str) -> Option<Accel>;
    /// The run state as the hypervisor reports it ("running", "paused", ...).
    fn qmp_status(&self, name: &str) -> Result<String>;
    /// The cgroup VM `name` runs in (relative to each hierarchy's root), where its
    /// metrics are read; `None` for a hypervisor that makes none.
    fn cgroup_path(&self, name: &str) -> Option<std::path::PathBuf>;
}
