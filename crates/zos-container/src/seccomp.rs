//! The default seccomp profile: allow by default, deny a short list with `EPERM`.
//!
//! A deny-list rather than Docker's ~300-entry allow-list: workloads are arbitrary flists,
//! and the capability set, the namespaces and no-new-privileges already remove most of the
//! kernel surface. The list below removes what a container never needs and what has a
//! history of container escapes or host-wide effects. `EPERM` (not a kill) so programs that
//! probe (e.g. `mount` at start-up) fail politely. Names unknown to the running kernel are
//! skipped by libcontainer.
//!
//! On x86_64 the filter also covers the 32-bit (`x86`) and `x32` syscall ABIs, so the same
//! calls cannot be reached through `int 0x80`.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompBuilder, LinuxSyscallBuilder,
};

use crate::error::Error;

/// Syscalls refused with `EPERM` inside every container.
pub const DENIED_SYSCALLS: &[&str] = &[
    // Mount table and root changes: the runtime does these before the filter is loaded.
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fsconfig",
    "fspick",
    // Kernel code and the machine itself.
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    // Tracing and in-kernel programs.
    "bpf",
    "ptrace",
    "perf_event_open",
    // File handles bypass the mount namespace ("shocker").
    "open_by_handle_at",
    // The kernel keyring is not namespaced.
    "keyctl",
    "add_key",
    "request_key",
    // Host clock.
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
];

fn extra_arches() -> Vec<Arch> {
    if cfg!(target_arch = "x86_64") {
        vec![Arch::ScmpArchX86, Arch::ScmpArchX32]
    } else if cfg!(target_arch = "aarch64") {
        vec![Arch::ScmpArchArm]
    } else {
        Vec::new()
    }
}

/// The profile in OCI form (the native architecture is always included by libseccomp).
pub fn default_profile() -> Result<LinuxSeccomp, Error> {
    let deny = LinuxSyscallBuilder::default()
        .names(
            DENIED_SYSCALLS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .action(LinuxSeccompAction::ScmpActErrno)
        .errno_ret(libc::EPERM as u32)
        .build()?;
    Ok(LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(extra_arches())
        .syscalls(vec![deny])
        .build()?)
}
