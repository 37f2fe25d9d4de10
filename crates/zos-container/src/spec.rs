//! The typed workload the engine hands over, and its mapping to an OCI runtime spec.
//!
//! Everything security-relevant is decided here, not by the caller: no new privileges,
//! a reduced capability set (no `CAP_MKNOD`), a device allow-list, the allow-list seccomp
//! profile, masked and read-only /proc paths, new PID/IPC/UTS/mount/cgroup namespaces, and
//! the network namespace given (or a new, empty one).

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxDeviceCgroup,
    LinuxDeviceCgroupBuilder, LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount, MountBuilder,
    PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec, SpecBuilder,
    UserBuilder,
};

use crate::error::Error;
use crate::seccomp;

/// Annotation carrying the workload's log directory, so that re-adoption after a zosd
/// restart can find the FIFOs the running container writes to.
pub const LOG_DIR_ANNOTATION: &str = "zos.log-dir";

/// The CFS period used to turn millicores into a quota (100 ms, the kernel default).
pub const CFS_PERIOD_US: u64 = 100_000;

/// The cgroup parent of a runtime that is not told another ([`crate::RuntimeConfig`]):
/// containers in `/zos/<id>`. Several nodes on one host each need their own
/// (`zos/<node>`), or one node's teardown of a container kills another's of the same id.
pub const DEFAULT_CGROUP_PARENT: &str = "zos";

/// Default PATH when the workload does not set one.
const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A volume (or any host directory) bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindMount {
    /// Host directory (absolute).
    pub source: PathBuf,
    /// Path inside the container (absolute, no `..`).
    pub target: PathBuf,
    /// Mounted read-only inside the container.
    pub readonly: bool,
}

/// CPU allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Cpu {
    /// A hard cap in thousandths of a CPU (1000 = one core), enforced with a CFS quota;
    /// shares are set proportionally so contention is fair too.
    Millicores(u64),
    /// Relative weight only (cgroup v1 `cpu.shares`, 2..=262144), no hard cap.
    Shares(u64),
}

/// The expanded container workload.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerSpec {
    /// Container id: also the libcontainer state dir name and the cgroup leaf.
    pub id: String,
    /// The root filesystem (absolute; e.g. the overlay over the verified flist).
    pub rootfs: PathBuf,
    /// Make the root filesystem read-only (volumes stay as mounted).
    pub readonly_rootfs: bool,
    /// `argv[0]` (resolved inside the container through PATH if not absolute).
    pub entrypoint: String,
    /// `argv[1..]`.
    pub args: Vec<String>,
    /// Environment, in order; `PATH` is added when missing.
    pub env: Vec<(String, String)>,
    /// Working directory inside the container (absolute).
    pub cwd: PathBuf,
    /// The entrypoint's user id.
    pub uid: u32,
    /// The entrypoint's group id.
    pub gid: u32,
    /// The hostname in its own UTS namespace; `None`: none set in the OCI spec.
    pub hostname: Option<String>,
    /// CPU cap or weight; `None`: no limit.
    pub cpu: Option<Cpu>,
    /// Hard memory limit in bytes.
    pub memory_limit: Option<u64>,
    /// Maximum number of tasks.
    pub pids_limit: Option<u64>,
    /// A network namespace to join (e.g. `/run/netns/n-x`); `None` means a new, empty one.
    pub netns: Option<PathBuf>,
    /// A user namespace to join (a bind-mounted nsfs file, see [`crate::userns`]),
    /// which must own `netns`; `None`: the node's (container root is host root).
    #[serde(default)]
    pub userns: Option<PathBuf>,
    /// Bind mounts (volumes), in mount order.
    pub mounts: Vec<BindMount>,
    /// Paths inside the container made read-only (in addition to the /proc defaults).
    pub readonly_paths: Vec<PathBuf>,
    /// Where stdout/stderr logs (and their FIFOs) live on the host.
    pub log_dir: PathBuf,
}

impl ContainerSpec {
    /// A spec with safe defaults: root in `/`, no limits, a new network namespace.
    pub fn new(
        id: impl Into<String>,
        rootfs: impl Into<PathBuf>,
        log_dir: impl Into<PathBuf>,
        entrypoint: impl Into<String>,
    ) -> ContainerSpec {
        ContainerSpec {
            id: id.into(),
            rootfs: rootfs.into(),
            readonly_rootfs: false,
            entrypoint: entrypoint.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: PathBuf::from("/"),
            uid: 0,
            gid: 0,
            hostname: None,
            cpu: None,
            memory_limit: None,
            pids_limit: None,
            netns: None,
            userns: None,
            mounts: Vec::new(),
            readonly_paths: Vec::new(),
            log_dir: log_dir.into(),
        }
    }

    /// Refuse what libcontainer would misinterpret or what could escape the container.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::InvalidSpec(m));
        validate_id(&self.id)?;
        if !self.rootfs.is_absolute() {
            return bad(format!("rootfs {} is not absolute", self.rootfs.display()));
        }
        if !self.log_dir.is_absolute() {
            return bad(format!(
                "log dir {} is not absolute",
                self.log_dir.display()
            ));
        }
        if self.entrypoint.is_empty() || self.entrypoint.contains('\0') {
            return bad("entrypoint is empty or contains NUL".into());
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            return bad("an argument contains NUL".into());
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return bad(format!("bad environment variable name {k:?}"));
            }
        }
        container_path("cwd", &self.cwd)?;
        if let Some(h) = &self.hostname {
            let ok = !h.is_empty()
                && h.len() <= 64
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
            if !ok {
                return bad(format!("bad hostname {h:?}"));
            }
        }
        match self.cpu {
            Some(Cpu::Millicores(0)) => return bad("cpu millicores must be > 0".into()),
            Some(Cpu::Shares(s)) if !(2..=262_144).contains(&s) => {
                return bad(format!("cpu shares {s} outside 2..=262144"))
            }
            _ => {}
        }
        if let Some(m) = self.memory_limit {
            // Below a few MiB the kernel OOM-kills the init before it execs.
            if m < 4 << 20 || m > i64::MAX as u64 {
                return bad(format!(
                    "memory limit {m} bytes is below 4 MiB or too large"
                ));
            }
        }
        if let Some(p) = self.pids_limit {
            if p == 0 || p > i64::MAX as u64 {
                return bad(format!("pids limit {p} out of range"));
            }
        }
        if let Some(ns) = &self.userns {
            if !ns.is_absolute() {
                return bad(format!("userns path {} is not absolute", ns.display()));
            }
        }
        if let Some(ns) = &self.netns {
            if !ns.is_absolute() {
                return bad(format!("netns path {} is not absolute", ns.display()));
            }
        }
        for m in &self.mounts {
            if !m.source.is_absolute() {
                return bad(format!(
                    "mount source {} is not absolute",
                    m.source.display()
                ));
            }
            container_path("mount target", &m.target)?;
            if m.target == Path::new("/") {
                return bad("a volume cannot be mounted on /".into());
            }
        }
        for p in &self.readonly_paths {
            container_path("read-only path", p)?;
        }
        Ok(())
    }

    /// The OCI runtime spec for this workload (`root.path` is the absolute rootfs), its
    /// cgroup under `cgroup_parent` ([`cgroup_path`]): validated, then built in named
    /// steps, one per part of the spec.
    pub fn to_oci(&self, cgroup_parent: &str) -> Result<Spec, Error> {
        self.validate()?;
        validate_cgroup_parent(cgroup_parent)?;
        let mut spec = SpecBuilder::default()
            .version("1.0.2")
            .root(self.oci_root()?)
            .process(self.oci_process()?)
            .mounts(self.oci_mounts()?)
            .linux(self.oci_linux(cgroup_parent)?)
            .annotations(self.oci_annotations())
            .build()?;
        if let Some(h) = &self.hostname {
            spec.set_hostname(Some(h.clone()));
        }
        Ok(spec)
    }

    /// The root filesystem, read-only if asked.
    fn oci_root(&self) -> Result<oci_spec::runtime::Root, Error> {
        Ok(RootBuilder::default()
            .path(self.rootfs.clone())
            .readonly(self.readonly_rootfs)
            .build()?)
    }

    /// The init process: its command, environment (a default `PATH` unless it sets
    /// one), user, capabilities, no new privileges, and its open-files limit.
    fn oci_process(&self) -> Result<oci_spec::runtime::Process, Error> {
        let mut env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !self.env.iter().any(|(k, _)| k == "PATH") {
            env.insert(0, DEFAULT_PATH.to_string());
        }
        let mut args = vec![self.entrypoint.clone()];
        args.extend(self.args.iter().cloned());

        let caps: oci_spec::runtime::Capabilities = default_capabilities().into_iter().collect();
        Ok(ProcessBuilder::default()
            .terminal(false)
            .user(UserBuilder::default().uid(self.uid).gid(self.gid).build()?)
            .args(args)
            .env(env)
            .cwd(self.cwd.clone())
            .no_new_privileges(true)
            // Inheritable and ambient stay empty: an exec'd non-root program gets nothing.
            .capabilities(
                LinuxCapabilitiesBuilder::default()
                    .bounding(caps.clone())
                    .effective(caps.clone())
                    .permitted(caps)
                    .inheritable(oci_spec::runtime::Capabilities::new())
                    .ambient(oci_spec::runtime::Capabilities::new())
                    .build()?,
            )
            .rlimits(vec![PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .hard(1024u64)
                .soft(1024u64)
                .build()?])
            .build()?)
    }

    /// The default mounts, then the workload's volumes (bind mounts, never a device
    /// or a setuid program).
    fn oci_mounts(&self) -> Result<Vec<oci_spec::runtime::Mount>, Error> {
        let mut mounts = default_mounts()?;
        for m in &self.mounts {
            let mode = if m.readonly { "ro" } else { "rw" };
            mounts.push(
                MountBuilder::default()
                    .destination(m.target.clone())
                    .typ("bind")
                    .source(m.source.clone())
                    .options(vec![
                        "rbind".to_string(),
                        mode.to_string(),
                        "nosuid".to_string(),
                        "nodev".to_string(),
                    ])
                    .build()?,
            );
        }
        Ok(mounts)
    }

    /// New pid, ipc, uts, mount and cgroup namespaces; the user namespace at `userns`
    /// when given; the network namespace is the one at `netns` when given (the
    /// workload's own), else a new empty one.
    fn oci_namespaces(&self) -> Result<Vec<oci_spec::runtime::LinuxNamespace>, Error> {
        let mut namespaces = Vec::new();
        for typ in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Cgroup,
        ] {
            namespaces.push(LinuxNamespaceBuilder::default().typ(typ).build()?);
        }
        if let Some(path) = &self.userns {
            namespaces.push(
                LinuxNamespaceBuilder::default()
                    .typ(LinuxNamespaceType::User)
                    .path(path.clone())
                    .build()?,
            );
        }
        let mut net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
        if let Some(path) = &self.netns {
            net = net.path(path.clone());
        }
        namespaces.push(net.build()?);
        Ok(namespaces)
    }

    /// The cgroup's limits: the device allow-list, memory, CPU (quota and shares from
    /// millicores, or shares alone) and tasks.
    fn oci_resources(&self) -> Result<oci_spec::runtime::LinuxResources, Error> {
        let mut resources = LinuxResourcesBuilder::default().devices(device_rules()?);
        if let Some(limit) = self.memory_limit {
            resources =
                resources.memory(LinuxMemoryBuilder::default().limit(limit as i64).build()?);
        }
        match self.cpu {
            Some(Cpu::Millicores(m)) => {
                let quota = (m * CFS_PERIOD_US / 1000).max(1000);
                let shares = (m * 1024 / 1000).clamp(2, 262_144);
                resources = resources.cpu(
                    LinuxCpuBuilder::default()
                        .quota(quota as i64)
                        .period(CFS_PERIOD_US)
                        .shares(shares)
                        .build()?,
                );
            }
            Some(Cpu::Shares(s)) => {
                resources = resources.cpu(LinuxCpuBuilder::default().shares(s).build()?);
            }
            None => {}
        }
        if let Some(p) = self.pids_limit {
            resources = resources.pids(LinuxPidsBuilder::default().limit(p as i64).build()?);
        }
        Ok(resources.build()?)
    }

    /// The Linux part: namespaces, resources, the cgroup named after the id, masked
    /// and read-only paths, the seccomp profile.
    fn oci_linux(&self, cgroup_parent: &str) -> Result<oci_spec::runtime::Linux, Error> {
        let mut readonly: Vec<String> = DEFAULT_READONLY_PATHS
            .iter()
            .map(|s| s.to_string())
            .collect();
        readonly.extend(self.readonly_paths.iter().map(|p| p.display().to_string()));

        Ok(LinuxBuilder::default()
            .namespaces(self.oci_namespaces()?)
            .resources(self.oci_resources()?)
            // An explicit path, so the cgroup is ours by name:
            // /sys/fs/cgroup/<ctrl>/<parent>/<id> on v1, /sys/fs/cgroup/<parent>/<id> on v2.
            .cgroups_path(cgroup_path(cgroup_parent, &self.id))
            .masked_paths(
                DEFAULT_MASKED_PATHS
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            )
            .readonly_paths(readonly)
            .seccomp(seccomp::default_profile()?)
            .build()?)
    }

    /// Where the runtime writes the logs (read by the log pump).
    fn oci_annotations(&self) -> std::collections::HashMap<String, String> {
        let mut annotations = std::collections::HashMap::new();
        annotations.insert(
            LOG_DIR_ANNOTATION.to_string(),
            self.log_dir.display().to_string(),
        );
        annotations
    }
}

/// The cgroup path (relative to each hierarchy's root) of container `id` of a runtime
/// whose cgroup parent is `parent`: `/<parent>/<id>`.
pub fn cgroup_path(parent: &str, id: &str) -> PathBuf {
    PathBuf::from(format!("/{parent}/{id}"))
}

/// A cgroup parent is a relative path of 1-8 boring components (`zos`, `zos/n`): never
/// absolute, empty, `.` or `..`, so a container's cgroup stays below the hierarchy's
/// root and inside the parent named.
pub fn validate_cgroup_parent(parent: &str) -> Result<(), Error> {
    let parts: Vec<&str> = parent.split('/').collect();
    let ok = parent.len() <= 128
        && parts.len() <= 8
        && parts.iter().all(|p| {
            !p.is_empty()
                && *p != "."
                && *p != ".."
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "cgroup parent {parent:?}: want 1-8 '/'-separated components of [A-Za-z0-9_.-], \
             none empty, '.' or '..'"
        )))
    }
}

/// Ids become directory names and cgroup leaves: keep them boring.
pub(crate) fn validate_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidSpec(format!(
            "container id {id:?}: want 1-128 of [A-Za-z0-9_.-], starting alphanumeric"
        )))
    }
}

fn container_path(what: &str, p: &Path) -> Result<(), Error> {
    if !p.is_absolute() || p.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Error::InvalidSpec(format!(
            "{what} {} must be absolute without '..'",
            p.display()
        )));
    }
    Ok(())
}

/// Docker's default capability set minus `CAP_NET_RAW` (no raw sockets: no ARP/ICMP
/// spoofing on the tenant bridge), `CAP_MKNOD` (no device nodes: the pool's block device
/// was one `mknod` away) and `CAP_AUDIT_WRITE` (the audit log is the node's, not the
/// tenant's; nothing in a workload logs in).
pub fn default_capabilities() -> Vec<Capability> {
    vec![
        Capability::Chown,
        Capability::DacOverride,
        Capability::Fsetid,
        Capability::Fowner,
        Capability::Setgid,
        Capability::Setuid,
        Capability::Setfcap,
        Capability::Setpcap,
        Capability::NetBindService,
        Capability::SysChroot,
        Capability::Kill,
    ]
}

/// The character devices a container may read and write (`major`, `minor` or `None` for
/// any minor, name): runc's default set without `/dev/console` (containers have no
/// terminal) and without `/dev/net/tun`. Everything else, every block device in
/// particular, is refused by the device cgroup (v1 `devices.deny`, v2 an eBPF program),
/// even when a node for it exists (an flist can carry one).
pub const ALLOWED_CHAR_DEVICES: &[(i64, Option<i64>, &str)] = &[
    (1, Some(3), "null"),
    (1, Some(5), "zero"),
    (1, Some(7), "full"),
    (1, Some(8), "random"),
    (1, Some(9), "urandom"),
    (5, Some(0), "tty"),
    (5, Some(2), "ptmx"),
    (136, None, "pts/*"),
];

/// `linux.resources.devices`: deny everything, then read/write (no `mknod`) on
/// [`ALLOWED_CHAR_DEVICES`].
///
/// libcgroups 0.7 appends its own defaults after these rules, which we cannot switch off:
/// `rwm` on the same character devices, `rwm` on `/dev/console` (5:1) and `/dev/net/tun`
/// (10:200), and `m` (mknod) on every device. None of them opens a block device; mknod
/// needs `CAP_MKNOD`, which no workload has, and a tun device does nothing without
/// `CAP_NET_ADMIN`, which no workload has either.
pub fn device_rules() -> Result<Vec<LinuxDeviceCgroup>, Error> {
    let mut rules = vec![LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .typ(LinuxDeviceType::A)
        .access("rwm")
        .build()?];
    for &(major, minor, _) in ALLOWED_CHAR_DEVICES {
        let mut rule = LinuxDeviceCgroupBuilder::default()
            .allow(true)
            .typ(LinuxDeviceType::C)
            .major(major)
            .access("rw");
        if let Some(minor) = minor {
            rule = rule.minor(minor);
        }
        rules.push(rule.build()?);
    }
    Ok(rules)
}

/// runc's default masked paths (bind-mounted over with /dev/null or an empty tmpfs).
pub const DEFAULT_MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// runc's default read-only paths.
pub const DEFAULT_READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn opts(o: &[&str]) -> Vec<String> {
    o.iter().map(|s| s.to_string()).collect()
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, Error> {
    Ok(MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(opts(options))
        .build()?)
}

/// runc's default mounts: /proc, a private /dev, devpts, shm, mqueue, a read-only /sys and
/// the read-only cgroup view.
fn default_mounts() -> Result<Vec<Mount>, Error> {
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        )?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        let mut s = ContainerSpec::new("zt-1", "/tmp/rootfs", "/tmp/logs", "/hello");
        s.args = vec!["--users".into(), "7".into()];
        s.env = vec![("A".into(), "1".into())];
        s.hostname = Some("h1".into());
        s.cpu = Some(Cpu::Millicores(500));
        s.memory_limit = Some(64 << 20);
        s.pids_limit = Some(32);
        s.netns = Some("/run/netns/n-x".into());
        s.mounts.push(BindMount {
            source: "/srv/vol".into(),
            target: "/data".into(),
            readonly: false,
        });
        s.readonly_paths.push("/etc".into());
        s
    }

    #[test]
    fn maps_every_field() {
        let oci = spec().to_oci(DEFAULT_CGROUP_PARENT).unwrap();
        let json = serde_json::to_value(&oci).unwrap();
        let p = &json["process"];
        assert_eq!(p["args"], serde_json::json!(["/hello", "--users", "7"]));
        assert_eq!(p["env"][1], "A=1");
        assert!(p["env"][0].as_str().unwrap().starts_with("PATH="));
        assert_eq!(p["noNewPrivileges"], true);
        let caps = p["capabilities"]["bounding"].as_array().unwrap();
        assert!(!caps.iter().any(|c| c == "CAP_NET_RAW"));
        assert!(!caps.iter().any(|c| c == "CAP_SYS_ADMIN"));
        assert_eq!(json["hostname"], "h1");
        let l = &json["linux"];
        assert_eq!(l["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(l["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(l["resources"]["cpu"]["period"], 100_000);
        assert_eq!(l["resources"]["pids"]["limit"], 32);
        assert_eq!(l["cgroupsPath"], "/zos/zt-1");
        let ns = l["namespaces"].as_array().unwrap();
        assert!(ns
            .iter()
            .any(|n| n["type"] == "network" && n["path"] == "/run/netns/n-x"));
        assert!(ns.iter().any(|n| n["type"] == "pid"));
        assert!(l["readonlyPaths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/etc"));
        assert!(l["maskedPaths"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "/proc/kcore"));
        assert!(!caps.iter().any(|c| c == "CAP_MKNOD"));
        assert!(!caps.iter().any(|c| c == "CAP_AUDIT_WRITE"));
        assert_eq!(l["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let devices = l["resources"]["devices"].as_array().unwrap();
        assert_eq!(
            devices[0],
            serde_json::json!({"allow": false, "type": "a", "access": "rwm"})
        );
        assert!(devices[1..]
            .iter()
            .all(|d| d["allow"] == true && d["type"] == "c" && d["access"] == "rw"));
        assert!(devices
            .iter()
            .any(|d| d["major"] == 1 && d["minor"] == 3 && d["allow"] == true));
        let m = json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["destination"] == "/data")
            .unwrap();
        assert_eq!(m["source"], "/srv/vol");
        assert!(m["options"].as_array().unwrap().iter().any(|o| o == "rw"));
        assert_eq!(json["annotations"][LOG_DIR_ANNOTATION], "/tmp/logs");
    }

    #[test]
    fn new_netns_when_none_given() {
        let mut s = spec();
        s.netns = None;
        let json = serde_json::to_value(s.to_oci(DEFAULT_CGROUP_PARENT).unwrap()).unwrap();
        let ns = json["linux"]["namespaces"].as_array().unwrap();
        let net = ns.iter().find(|n| n["type"] == "network").unwrap();
        assert!(net.get("path").is_none() || net["path"].is_null());
    }

    #[test]
    fn refuses_bad_input() {
        type Mutation = Box<dyn Fn(&mut ContainerSpec)>;
        let cases: Vec<Mutation> = vec![
            Box::new(|s| s.id = "../x".into()),
            Box::new(|s| s.id = "".into()),
            Box::new(|s| s.rootfs = "rel".into()),
            Box::new(|s| s.cwd = "/a/../..".into()),
            Box::new(|s| s.mounts[0].target = "/x/../../etc".into()),
            Box::new(|s| s.mounts[0].target = "/".into()),
            Box::new(|s| s.mounts[0].source = "vol".into()),
            Box::new(|s| s.env.push(("A=B".into(), "x".into()))),
            Box::new(|s| s.hostname = Some("a b".into())),
            Box::new(|s| s.memory_limit = Some(1024)),
            Box::new(|s| s.pids_limit = Some(0)),
            Box::new(|s| s.cpu = Some(Cpu::Millicores(0))),
            Box::new(|s| s.cpu = Some(Cpu::Shares(1))),
            Box::new(|s| s.netns = Some("netns".into())),
            Box::new(|s| s.entrypoint = String::new()),
        ];
        for (i, f) in cases.iter().enumerate() {
            let mut s = spec();
            f(&mut s);
            assert!(
                matches!(s.to_oci(DEFAULT_CGROUP_PARENT), Err(Error::InvalidSpec(_))),
                "case {i} accepted"
            );
        }
    }

    #[test]
    fn the_cgroup_is_under_the_runtimes_parent() {
        let json = serde_json::to_value(spec().to_oci("zos/n1").unwrap()).unwrap();
        assert_eq!(json["linux"]["cgroupsPath"], "/zos/n1/zt-1");
        assert_eq!(cgroup_path("zos/n1", "c.web"), Path::new("/zos/n1/c.web"));
        for parent in ["zos", "zos/n", "zos-vm/zt-ab1_2"] {
            validate_cgroup_parent(parent).unwrap();
        }
        for bad in [
            "",
            "/zos",
            "zos/",
            "zos//n",
            "..",
            "zos/../x",
            "zos/.",
            "a b",
            "1/2/3/4/5/6/7/8/9",
        ] {
            assert!(
                matches!(validate_cgroup_parent(bad), Err(Error::InvalidConfig(_))),
                "{bad:?} accepted"
            );
            assert!(
                matches!(spec().to_oci(bad), Err(Error::InvalidConfig(_))),
                "{bad:?} accepted by to_oci"
            );
        }
    }
}
