//! The QEMU process's cgroup, through youki's libcgroups (the v1 manager on hosts like
//! this one, v2 in our boot image): guest memory plus QEMU's own overhead, the vCPUs
//! plus half a CPU for QEMU's I/O thread, and a task limit; and its devices: every
//! block device denied, only the character devices QEMU uses allowed (`/dev/kvm` when
//! it runs under KVM; libcgroups adds null, zero, full, random, urandom, tty, tun).
//! On cgroup v2 the device rules need libcgroups' `cgroupsv2_devices` (eBPF), which
//! this build leaves out: there QEMU's private `/dev` and its lack of privilege to make
//! device nodes are the device confinement.

use std::path::PathBuf;

use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
};
use nix::unistd::Pid;
use oci_spec::runtime::{
    LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder,
    LinuxPidsBuilder, LinuxResources, LinuxResourcesBuilder,
};

use crate::error::{Error, Result};

/// CFS period: quotas are in microseconds of CPU time per period.
const PERIOD_US: u64 = 100_000;
/// QEMU threads: vCPUs, the main loop, the I/O workers (up to 64), RCU, TCG helpers.
const PIDS_LIMIT: i64 = 256;

/// The limits of one VM's QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The cgroup memory limit in bytes: guest memory plus QEMU's overhead.
    pub memory_bytes: i64,
    /// The guest's vCPUs; the CPU quota is that plus half a CPU.
    pub vcpus: u32,
    /// `/dev/kvm` is allowed.
    pub kvm: bool,
}

fn err(name: &str) -> impl FnOnce(String) -> Error + '_ {
    move |message| Error::Cgroup {
        name: name.to_string(),
        message,
    }
}

/// The cgroup path of VM `name` under `parent`, relative to each hierarchy's root.
pub(crate) fn path(parent: &str, name: &str) -> PathBuf {
    PathBuf::from(format!("/{parent}/{name}"))
}

fn manager(parent: &str, name: &str) -> Result<AnyCgroupManager> {
    create_cgroup_manager(CgroupConfig {
        cgroup_path: path(parent, name),
        systemd_cgroup: false,
        container_name: name.to_string(),
    })
    .map_err(|e| err(name)(e.to_string()))
}

/// The OCI resources of `limits`: memory, CPU quota, task limit and device rules.
pub(crate) fn resources(limits: Limits) -> Result<LinuxResources, oci_spec::OciSpecError> {
    let quota = (u64::from(limits.vcpus) * 2 + 1) * PERIOD_US / 2;
    LinuxResourcesBuilder::default()
        .memory(
            LinuxMemoryBuilder::default()
                .limit(limits.memory_bytes)
                .build()?,
        )
        .cpu(
            LinuxCpuBuilder::default()
                .quota(quota as i64)
                .period(PERIOD_US)
                .build()?,
        )
        .pids(LinuxPidsBuilder::default().limit(PIDS_LIMIT).build()?)
        .devices(devices(limits.kvm)?)
        .build()
}

/// Deny everything, then allow `/dev/kvm` if used (libcgroups appends its defaults).
fn devices(kvm: bool) -> Result<Vec<oci_spec::runtime::LinuxDeviceCgroup>, oci_spec::OciSpecError> {
    let mut rules = vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()?];
    if kvm {
        rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(LinuxDeviceType::C)
                .major(crate::confine::KVM.0 as i64)
                .minor(crate::confine::KVM.1 as i64)
                .access("rwm")
                .build()?,
        );
    }
    Ok(rules)
}

/// Moves `pid` (all its threads) into `/<parent>/<name>` and applies `limits`.
pub fn place(parent: &str, name: &str, pid: i32, limits: Limits) -> Result<()> {
    let mgr = manager(parent, name)?;
    mgr.add_task(Pid::from_raw(pid))
        .map_err(|e| err(name)(e.to_string()))?;
    let resources = resources(limits).map_err(|e| err(name)(e.to_string()))?;
    mgr.apply(&ControllerOpt {
        resources: &resources,
        disable_oom_killer: false,
        oom_score_adj: None,
        freezer_state: None,
    })
    .map_err(|e| err(name)(e.to_string()))
}

/// Removes the cgroup (empty once QEMU is gone); absent is fine. QEMU's process is
/// gone when this is called, but on a loaded machine its last threads may still be
/// leaving the cgroup (rmdir: EBUSY): tried again for up to two seconds.
pub fn remove(parent: &str, name: &str) -> Result<()> {
    let mgr = manager(parent, name)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match mgr.remove() {
            Ok(()) => return Ok(()),
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => return Err(err(name)(e.to_string())),
        }
    }
}
