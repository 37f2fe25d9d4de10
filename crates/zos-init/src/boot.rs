//! The machine's part of a boot, in order: the boot filesystems, the console, the boot
//! parameters (then the logs, which they configure), ctrl-alt-del, the cgroup
//! controllers, the kernel modules, the hypervisor's shares. Every step is best effort
//! and logged: a node with a missing piece still boots and says why.

use std::path::Path;
use std::time::Instant;

use crate::cmdline::ModulesMode;
use crate::modules::{self, LoadWave, Wanted};
use crate::rootfs::RootfsError;
use crate::{mounts, BootParams, Sys};

/// Where the devices are, for coldplug.
const SYS_DEVICES: &str = "/sys/devices";

/// Loads the kernel modules as `mode` says, and logs what and how long (the boot
/// benchmark reads the `ms` of this line).
fn load_modules<S: Sys + LoadWave>(sys: &S, modules_dir: &Path, devices: &Path, mode: ModulesMode) {
    let started = Instant::now();
    match mode {
        ModulesMode::All => match modules::load(sys, modules_dir, Wanted::All) {
            Ok(r) => tracing::info!(
                mode = "all",
                ms = started.elapsed().as_millis() as u64,
                loaded = r.loaded.len(),
                present = r.present.len(),
                not_applicable = ?r.not_applicable,
                failed = r.failed.len(),
                "kernel modules"
            ),
            Err(error) => tracing::warn!(%error, "no kernel modules loaded"),
        },
        ModulesMode::Devices => match modules::coldplug(sys, sys, modules_dir, devices) {
            Ok(r) => tracing::info!(
                mode = "devices",
                ms = started.elapsed().as_millis() as u64,
                rounds = r.rounds,
                modaliases = r.modaliases,
                loaded = r.load.loaded.len(),
                present = r.load.present.len(),
                not_applicable = ?r.load.not_applicable,
                failed = r.load.failed.len(),
                "kernel modules"
            ),
            Err(error) => tracing::warn!(%error, "no kernel modules loaded"),
        },
    }
}

/// Prepares the machine; `switched` is how the move off the initramfs went (to log
/// it), `modules_dir` where the image's modules are, `init_logs` starts the logs once
/// the boot parameters (`zos.debug`) are known.
pub fn prepare_machine<S: Sys + LoadWave>(
    sys: &S,
    switched: Option<Result<u64, RootfsError>>,
    modules_dir: &Path,
    init_logs: impl FnOnce(&BootParams),
) -> BootParams {
    prepare_machine_with(
        sys,
        switched,
        modules_dir,
        Path::new(SYS_DEVICES),
        init_logs,
    )
}

/// [`prepare_machine`] with the devices' sysfs tree at `devices` (tests give a made one).
pub fn prepare_machine_with<S: Sys + LoadWave>(
    sys: &S,
    switched: Option<Result<u64, RootfsError>>,
    modules_dir: &Path,
    devices: &Path,
    init_logs: impl FnOnce(&BootParams),
) -> BootParams {
    // Before the logs: the log level comes from /proc/cmdline, which needs /proc.
    let mounted = mounts::mount_all(sys);
    crate::console::ensure_console();
    let cmdline = sys
        .read_file(Path::new("/proc/cmdline"))
        .unwrap_or_default();
    let (params, warnings) = BootParams::parse(&cmdline);
    init_logs(&params);

    tracing::info!(version = env!("CARGO_PKG_VERSION"), "zosd: PID 1");
    match switched {
        Some(Ok(bytes)) => tracing::info!(
            mib = bytes >> 20,
            "root moved from the initramfs to a tmpfs (containers need a root pivot_root can leave)"
        ),
        Some(Err(error)) => {
            tracing::error!(%error, "moving the root to a tmpfs: containers cannot start")
        }
        None => {}
    }
    match mounted {
        Ok(outcomes) => tracing::debug!(?outcomes, "filesystems"),
        Err(error) => tracing::error!(%error, "mounting the boot filesystems"),
    }
    for w in &warnings {
        tracing::warn!(warning = %w, "kernel command line");
    }
    tracing::info!(
        farm = ?params.farm,
        notary = ?params.notary,
        runmode = %params.runmode,
        debug = params.debug,
        "boot parameters"
    );
    if let Err(errno) = sys.disable_ctrl_alt_del() {
        tracing::warn!(%errno, "ctrl-alt-del stays a hard reboot");
    }
    let (_, refused) = mounts::enable_cgroup_controllers(sys);
    for (controller, error) in refused {
        tracing::warn!(%controller, %error, "cgroup2 controller not enabled");
    }
    load_modules(sys, modules_dir, devices, params.modules);
    // 9pnet_virtio is loaded by now.
    mounts::mount_shares(&params.shares);
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeSys;

    /// An empty `/sys/devices`.
    fn no_devices() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn the_machine_is_prepared_in_order_and_the_logs_start_with_the_parameters() {
        let sys = FakeSys::default();
        sys.set_file(
            "/proc/cmdline",
            "console=ttyS0 zos.farm=f1 zos.debug zos.modules=all",
        );
        sys.set_file("/sys/fs/cgroup/cgroup.controllers", "cpu memory\n");
        sys.set_file("/zt-modules/modules.dep", "kernel/a.ko:\n");
        let mut logs_at = None;
        let devices = no_devices();
        let params =
            prepare_machine_with(&sys, None, Path::new("/zt-modules"), devices.path(), |p| {
                logs_at = Some((sys.calls().len(), p.debug));
            });
        assert_eq!(params.farm.as_deref(), Some("f1"));
        let calls = sys.calls();
        let pos = |prefix: &str| calls.iter().position(|c| c.starts_with(prefix)).unwrap();
        // The logs start after the boot filesystems, with zos.debug, before the rest.
        let (logs_at, debug) = logs_at.expect("the logs were started");
        assert!(debug);
        assert!(pos("mount cgroup2") < logs_at, "{calls:?}");
        assert!(logs_at <= pos("disable_ctrl_alt_del"), "{calls:?}");
        assert!(pos("disable_ctrl_alt_del") < pos("write /sys/fs/cgroup/cgroup.subtree_control"));
        assert!(pos("write /sys/fs/cgroup/cgroup.subtree_control") < pos("finit_module"));
        // zos.modules=all: every module, though no device asks for `a`.
        assert_eq!(
            sys.calls_with("finit_module"),
            ["finit_module /zt-modules/kernel/a.ko"]
        );
    }

    #[test]
    fn with_devices_only_the_features_and_what_devices_ask_for_load() {
        let sys = FakeSys::default();
        sys.set_file(
            "/proc/cmdline",
            "console=ttyS0 zos.farm=f1 zos.modules=devices",
        );
        sys.set_file(
            "/zt-modules/modules.dep",
            "kernel/a.ko:\nkernel/fs/overlay.ko:\nkernel/net.ko:\n",
        );
        sys.set_file(
            "/zt-modules/modules.alias",
            "alias virtio:d00000001v* net\n",
        );
        let devices = no_devices();
        let dev = devices.path().join("virtio0");
        std::fs::create_dir(&dev).unwrap();
        std::fs::write(dev.join("modalias"), "virtio:d00000001v00001AF4\n").unwrap();
        prepare_machine_with(&sys, None, Path::new("/zt-modules"), devices.path(), |_| {});
        let mut loaded = sys.calls_with("finit_module");
        loaded.sort();
        assert_eq!(
            loaded,
            [
                "finit_module /zt-modules/kernel/fs/overlay.ko",
                "finit_module /zt-modules/kernel/net.ko"
            ]
        );
    }
}
