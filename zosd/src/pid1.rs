//! zosd as the node's PID 1 (`/init` in the boot image; docs/pid1.md).
//!
//! Mounts, kernel modules, boot parameters, the agent's configuration, the agent's slot
//! (the image's own agent or a verified installed release: zos-init's `slots`), then the
//! zos-init loop: it supervises `zosd run --config /run/zos/node.toml` as a child,
//! restarting it whenever it exits, reaps every orphan, and turns SIGTERM, SIGINT
//! (ctrl-alt-del) and friends into an orderly power-off or reboot. It never exits.
//!
//! Everything here is wiring; the duties themselves live in crates/zos-init.

use std::os::unix::process::CommandExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;

use zos_init::agent_config::{write_node_config, NODE_CONFIG, STATE_DIR};
pub use zos_init::is_pid1;
use zos_init::{slots, BootParams, Init, Linux, RespawnBackoff, ShutdownPlan};

/// The kernel starts init with `HOME=/` and `TERM=linux` only: the agent needs a PATH
/// for the few helpers the image carries (mkfs.btrfs, btrfs, nft).
const PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Entered when the kernel started us as /init: runs [`run`]; exits only if it refused
/// before touching anything (not the machine's PID 1).
pub fn boot() -> ! {
    match run() {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("zosd: error: {e:#}");
            std::process::exit(1)
        }
    }
}

/// `zosd init`. Errors only before it starts, when this process is not the machine's
/// PID 1: everything after would unmount the host's filesystems and power it off.
pub fn run() -> anyhow::Result<std::convert::Infallible> {
    // Nothing before this: as anything but the machine's PID 1 it would unmount the
    // host's filesystems and power it off.
    zos_init::check_machine_init().map_err(|e| match e {
        zos_init::NotMachineInit::NotPid1 => anyhow::anyhow!("zosd init {e}; use `zosd run` here"),
        other => anyhow::Error::new(other),
    })?;
    // First, before any thread exists: every thread inherits the blocked mask.
    let blocked = zos_init::block_init_signals();
    // Before anything is mounted: off the kernel's rootfs, which pivot_root (and so
    // every container start) refuses to leave.
    let switched = zos_init::rootfs::root_is_initramfs().then(zos_init::rootfs::switch_to_tmpfs);

    let sys = Linux;
    let prepared = catch_unwind(AssertUnwindSafe(|| prepare(&sys, switched)));
    let params = match prepared {
        Ok(p) => p,
        Err(_) => {
            // The panic message is on the console already; supervise anyway.
            tracing::error!("boot preparation panicked: supervising the agent with defaults");
            BootParams::default()
        }
    };
    if let Err(errno) = blocked {
        tracing::error!(%errno, "blocking signals: shutdown signals may be missed");
    }

    // After the switch to tmpfs our executable's first copy is deleted ("/init
    // (deleted)"): the agent runs the one on the new root.
    let exe = std::env::current_exe()
        .ok()
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("/init"));
    let debug = params.debug;
    // Which agent: the image's own, or a release installed in a slot of the state home
    // that still verifies against the release keys the image pins (docs/upgrade.md).
    let slots_dir = Path::new(STATE_DIR).join("slots");
    let keys = slots::pinned_keys(Path::new(slots::RELEASE_KEYS));
    let slots = slots::Slots::at_boot(
        &slots_dir,
        &exe,
        slots::release_check(slots_dir.clone(), keys),
        Box::new(move |bin: &Path| agent_command(bin, debug)),
        slots::DEFAULT_HEALTH_WINDOW,
    );
    Init::with_slots(
        sys,
        slots.shared(),
        RespawnBackoff::default(),
        ShutdownPlan::default(),
    )
    .run_forever()
}

/// The machine (zos-init: mounts, logs, ctrl-alt-del, cgroups, modules, shares), the
/// power button, the uplink and clock (zos-uplink), the agent's configuration
/// (`switched`: how the move off the initramfs went, to log it). Every step is best
/// effort: a node with a missing piece still boots and says why.
fn prepare(
    sys: &Linux,
    switched: Option<Result<u64, zos_init::rootfs::RootfsError>>,
) -> BootParams {
    let modules = zos_init::modules::kernel_modules_dir();
    let params =
        zos_init::boot::prepare_machine(sys, switched, &modules, |p| init_console_logs(p.debug));
    let buttons = zos_init::power_button::watch(zos_init::power_button::signal_power_off);
    tracing::info!(?buttons, "power button: a press powers the node off");

    // The address and the clock before the agent verifies any signature's expiry.
    let uplink = zos_uplink::boot::uplink_iface(Path::new("/sys/class/net"));
    zos_uplink::boot::bring_up(&uplink, Path::new(STATE_DIR));

    let disks = boot_disks();
    if let Err(error) = write_node_config(Path::new(NODE_CONFIG), &params, &uplink, &disks) {
        tracing::error!(%error, path = NODE_CONFIG, "writing the agent's configuration");
    }
    params
}

/// Logs on the console: no colours (serial consoles end up in files), `zos.debug` for
/// more.
fn init_console_logs(debug: bool) {
    let filter = if debug {
        "debug,netlink_packet_route=error"
    } else {
        "info,netlink_packet_route=error"
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let console = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .compact();
    // The same lines into the kernel log: the agent ships it to the farm's destination
    // from its start (docs/observability.md), so PID 1's boot lines leave the node too.
    // The kernel keeps only 10 records per 5 s of a /dev/kmsg writer while
    // printk_devkmsg is "ratelimit" (its default) and drops the rest without a count:
    // PID 1 is the kernel log's only writer besides the kernel, so it is turned off.
    let devkmsg = std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n");
    let kmsg = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .ok()
        .map(|f| {
            tracing_subscriber::fmt::layer()
                .with_writer(KernelLog(std::sync::Arc::new(f)))
                .with_ansi(false)
                .without_time()
                .with_target(false)
                .compact()
        });
    let _ = tracing_subscriber::registry()
        .with(console.with_filter(tracing_subscriber::EnvFilter::new(filter)))
        .with(kmsg.with_filter(tracing_subscriber::EnvFilter::new(filter)))
        .try_init();
    if let Err(error) = devkmsg {
        tracing::warn!(%error, "printk_devkmsg: PID 1's copies in the kernel log are rate-limited (10 per 5 s)");
    }
}

/// `/dev/kmsg` as a log writer: one record per event, tagged `zos-init`, its level in
/// the text. Every record is written at the debug level: the kernel echoes records
/// below the console's level (7 by default) to the console, where PID 1's line is
/// already (from stderr); at debug it is kept in the ring only, for the agent to ship.
struct KernelLog(std::sync::Arc<std::fs::File>);

/// One event's record: buffered, written whole when dropped (one `write` is one record).
struct KernelRecord {
    file: std::sync::Arc<std::fs::File>,
    buf: Vec<u8>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for KernelLog {
    type Writer = KernelRecord;

    fn make_writer(&'a self) -> KernelRecord {
        self.record("<7>")
    }
}

impl KernelLog {
    fn record(&self, priority: &str) -> KernelRecord {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(priority.as_bytes());
        buf.extend_from_slice(b"zos-init: ");
        KernelRecord {
            file: self.0.clone(),
            buf,
        }
    }
}

impl std::io::Write for KernelRecord {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for KernelRecord {
    fn drop(&mut self) {
        while self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        // The kernel cuts a record at about 1 KiB; a failed write loses one line of a
        // copy (the console has it).
        let _ = std::io::Write::write(&mut &*self.file, &self.buf);
    }
}

/// `zosd run --config /run/zos/node.toml`, a child subreaper from its first instruction.
fn agent_command(exe: &Path, debug: bool) -> Command {
    let mut c = Command::new(exe);
    c.args(["run", "--config", NODE_CONFIG]);
    if std::env::var_os("PATH").is_none() {
        c.env("PATH", PATH);
    }
    // The console is a terminal, but serial consoles end up in files: no colours.
    c.env("NO_COLOR", "1");
    if debug {
        c.env("ZOSD_LOG", "debug,netlink_packet_route=error");
    }
    // Container init processes the agent starts must stay its children when their
    // parents exit, so it can wait for them: PR_SET_CHILD_SUBREAPER survives execve,
    // so set it here rather than trusting every agent start-up path to.
    // SAFETY: between fork and exec only async-signal-safe calls are allowed:
    // set_child_subreaper is one prctl system call; it neither allocates nor locks.
    unsafe {
        c.pre_exec(|| zos_init::set_child_subreaper().map_err(std::io::Error::from));
    }
    c
}

/// The disks that may hold pools: every disk of the machine that zos-storage's policy
/// accepts (blank, or carrying one of our pools; not removable, virtual, read-only,
/// in use or foreign). Refused ones are logged with the reason.
fn boot_disks() -> Vec<PathBuf> {
    let cfg = zos_storage::DiscoveryConfig::default();
    let plan = match zos_storage::disk::plan(&cfg) {
        Ok(plan) => plan,
        Err(error) => {
            tracing::error!(%error, "listing the disks");
            return Vec::new();
        }
    };
    let mut disks = Vec::new();
    for (disk, verdict) in plan.disks {
        match verdict {
            zos_storage::Verdict::Refused { reason } => {
                tracing::debug!(disk = %disk.name, %reason, "disk not used")
            }
            _ => disks.push(disk.path),
        }
    }
    tracing::info!(?disks, "disks for the pools");
    disks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use zos_init::agent_config::node_config;
    use zos_init::RunMode;

    #[test]
    fn the_generated_config_is_what_the_agent_reads() {
        let (params, w) = BootParams::parse(
            r#"console=ttyS0 zos.farm=farm-1 zos.notary="etcd://10.0.2.2:2379" zos.runmode=dev"#,
        );
        assert!(w.is_empty());
        assert_eq!(params.runmode, RunMode::Dev);
        let text = node_config(&params, "eth0", &[PathBuf::from("/dev/vda")]);
        let cfg: NodeConfig = toml::from_str(&text).unwrap();
        assert_eq!(cfg.notary, "etcd://10.0.2.2:2379");
        assert_eq!(cfg.farm.as_deref(), Some("farm-1"));
        assert_eq!(cfg.network.uplink, "eth0");
        assert_eq!(cfg.storage.disks, vec![PathBuf::from("/dev/vda")]);
        assert_eq!(cfg.storage.pools_root, Path::new("/var/lib/zos/pools"));
    }

    #[test]
    fn a_notary_with_quotes_stays_one_string() {
        let params = BootParams {
            notary: Some(r#"dir:///a "b"\c"#.into()),
            ..BootParams::default()
        };
        let cfg: NodeConfig = toml::from_str(&node_config(&params, "eth0", &[])).unwrap();
        assert_eq!(cfg.notary, r#"dir:///a "b"\c"#);
    }

    #[test]
    fn no_notary_means_no_notary_key() {
        let text = node_config(&BootParams::default(), "eth0", &[]);
        assert!(!text.contains("notary ="), "{text}");
        let err = toml::from_str::<NodeConfig>(&text).unwrap_err();
        assert!(err.to_string().contains("notary"), "{err}");
    }

    #[test]
    fn the_agent_command_runs_the_generated_config() {
        let c = agent_command(Path::new("/init"), true);
        let args: Vec<_> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args, vec!["run", "--config", NODE_CONFIG]);
        assert!(c
            .get_envs()
            .any(|(k, v)| k == "ZOSD_LOG"
                && v.is_some_and(|v| v.to_string_lossy().starts_with("debug"))));
    }

    #[test]
    fn zosd_init_refuses_outside_pid_1() {
        assert!(!is_pid1());
        let err = run().unwrap_err();
        assert!(err.to_string().contains("PID 1"), "{err}");
    }
}
