//! Collectors: read the kernel and set series in a [`Registry`] before each push.
//!
//! - [`NodeCpu`]: `/proc/stat`, as `node_cpu_seconds_total{cpu,mode}`.
//! - [`NodeMemory`]: `/proc/meminfo`, as `node_memory_<Field>_bytes`.
//! - [`NodeNetwork`]: `/sys/class/net/*/statistics`, as
//!   `node_network_{receive,transmit}_{bytes,packets,errs,drop}_total{device}`;
//!   [`Links`]: the same series for links the caller lists (another namespace's).
//! - [`Cgroup`]: one workload's cgroup (v1 or v2), as `zos_workload_cpu_seconds_total`,
//!   `zos_workload_memory_bytes` and `zos_workload_memory_limit_bytes`.
//! - [`CgroupNetwork`]: a workload's own network namespace, through a process of its
//!   cgroup (`/proc/<pid>/net/dev`), as `zos_workload_network_{receive,transmit}_bytes_total{device}`.
//! - [`Pools`]: `statvfs` of each pool's mount, as `zos_pool_{size,used,available}_bytes{pool}`;
//!   the caller's function names the pools, so the storage crate is not a dependency.
//!
//! Any `Fn(&Registry) -> Result<(), CollectError>` is a collector too (restarts and the
//! engine's queue are set through the registry's handles directly, no collector needed).

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::registry::{Registry, RegistryError};

/// Why a collector could not read what it reads.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A file or directory could not be read.
    #[error("reading {path}: {source}")]
    Io {
        /// What was read.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A file's content was not what the kernel writes.
    #[error("parsing {path}: {what}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        what: String,
    },
    /// The series could not be registered.
    #[error(transparent)]
    Registry(#[from] RegistryError),
}

/// Something that sets series in a registry from the world, before each push.
pub trait Collector: Send + Sync {
    /// Reads and sets; an error leaves the series it did not reach at their last value.
    fn collect(&self, into: &Registry) -> Result<(), CollectError>;
}

impl<F> Collector for F
where
    F: Fn(&Registry) -> Result<(), CollectError> + Send + Sync,
{
    fn collect(&self, into: &Registry) -> Result<(), CollectError> {
        self(into)
    }
}

fn read(path: &Path) -> Result<String, CollectError> {
    std::fs::read_to_string(path).map_err(|source| CollectError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_err(path: &Path, what: impl Into<String>) -> CollectError {
    CollectError::Parse {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// The node's CPU time per CPU and mode, from `/proc/stat`.
#[derive(Debug, Clone)]
pub struct NodeCpu {
    stat: PathBuf,
    ticks_per_second: f64,
}

impl Default for NodeCpu {
    fn default() -> NodeCpu {
        NodeCpu::at("/proc/stat")
    }
}

impl NodeCpu {
    /// Reads `stat` (a `/proc/stat`) instead of the node's.
    pub fn at(stat: impl Into<PathBuf>) -> NodeCpu {
        // USER_HZ, the unit of /proc/stat; 100 where sysconf cannot say.
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|v| *v > 0)
            .unwrap_or(100);
        NodeCpu {
            stat: stat.into(),
            ticks_per_second: hz as f64,
        }
    }
}

/// `/proc/stat`'s per-CPU columns, in order (`guest` and `guest_nice` are already
/// counted in `user` and `nice`).
const CPU_MODES: [&str; 8] = [
    "user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal",
];

impl Collector for NodeCpu {
    fn collect(&self, into: &Registry) -> Result<(), CollectError> {
        let text = read(&self.stat)?;
        let mut cpus = 0;
        for line in text.lines() {
            let mut fields = line.split_ascii_whitespace();
            let Some(cpu) = fields.next().and_then(|f| f.strip_prefix("cpu")) else {
                continue;
            };
            if cpu.is_empty() {
                continue; // the sum over all CPUs
            }
            cpus += 1;
            for (mode, field) in CPU_MODES.iter().zip(fields) {
                let ticks: u64 = field
                    .parse()
                    .map_err(|_| parse_err(&self.stat, format!("cpu{cpu} {mode}: {field:?}")))?;
                into.counter("node_cpu_seconds_total", &[("cpu", cpu), ("mode", mode)])?
                    .set_total(ticks as f64 / self.ticks_per_second);
            }
        }
        if cpus == 0 {
            return Err(parse_err(&self.stat, "no cpuN line"));
        }
        Ok(())
    }
}

/// The node's memory, from `/proc/meminfo`: every field, in bytes where it has a unit.
#[derive(Debug, Clone)]
pub struct NodeMemory {
    meminfo: PathBuf,
}

impl Default for NodeMemory {
    fn default() -> NodeMemory {
        NodeMemory::at("/proc/meminfo")
    }
}

impl NodeMemory {
    /// Reads `meminfo` (a `/proc/meminfo`) instead of the node's.
    pub fn at(meminfo: impl Into<PathBuf>) -> NodeMemory {
        NodeMemory {
            meminfo: meminfo.into(),
        }
    }
}

impl Collector for NodeMemory {
    fn collect(&self, into: &Registry) -> Result<(), CollectError> {
        let text = read(&self.meminfo)?;
        for line in text.lines() {
            let Some((field, rest)) = line.split_once(':') else {
                continue;
            };
            let mut parts = rest.split_ascii_whitespace();
            let value: f64 = parts
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| parse_err(&self.meminfo, format!("{field}: {rest:?}")))?
                as f64;
            // `Active(anon)` -> `Active_anon`, as node_exporter names it.
            let field: String = field
                .chars()
                .filter(|c| *c != ')')
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            let (name, value) = match parts.next() {
                Some("kB") => (format!("node_memory_{field}_bytes"), value * 1024.0),
                _ => (format!("node_memory_{field}"), value),
            };
            into.gauge(&name, &[])?.set(value);
        }
        Ok(())
    }
}

/// Bytes, packets, errors and drops per network interface, from
/// `/sys/class/net/<dev>/statistics` (the network namespace sysfs was mounted in).
/// An interface that disappears has its series removed.
#[derive(Debug)]
pub struct NodeNetwork {
    class_net: PathBuf,
    seen: Mutex<BTreeSet<String>>,
}

impl Default for NodeNetwork {
    fn default() -> NodeNetwork {
        NodeNetwork::at("/sys/class/net")
    }
}

/// (statistics file, series name).
const NET_STATS: [(&str, &str); 8] = [
    ("rx_bytes", "node_network_receive_bytes_total"),
    ("tx_bytes", "node_network_transmit_bytes_total"),
    ("rx_packets", "node_network_receive_packets_total"),
    ("tx_packets", "node_network_transmit_packets_total"),
    ("rx_errors", "node_network_receive_errs_total"),
    ("tx_errors", "node_network_transmit_errs_total"),
    ("rx_dropped", "node_network_receive_drop_total"),
    ("tx_dropped", "node_network_transmit_drop_total"),
];

impl NodeNetwork {
    /// Reads `class_net` (a `/sys/class/net`) instead of the node's.
    pub fn at(class_net: impl Into<PathBuf>) -> NodeNetwork {
        NodeNetwork {
            class_net: class_net.into(),
            seen: Mutex::default(),
        }
    }
}

impl Collector for NodeNetwork {
    fn collect(&self, into: &Registry) -> Result<(), CollectError> {
        let dir = std::fs::read_dir(&self.class_net).map_err(|source| CollectError::Io {
            path: self.class_net.clone(),
            source,
        })?;
        let mut links = Vec::new();
        for entry in dir.flatten() {
            let dev = entry.file_name().to_string_lossy().into_owned();
            let stats = entry.path().join("statistics");
            let mut values = [0u64; 8];
            let mut gone = false;
            for ((file, _), v) in NET_STATS.iter().zip(values.iter_mut()) {
                let path = stats.join(file);
                // An interface going away between the listing and the read.
                let Ok(text) = std::fs::read_to_string(&path) else {
                    gone = true;
                    break;
                };
                *v = text
                    .trim()
                    .parse()
                    .map_err(|_| parse_err(&path, format!("{text:?}")))?;
            }
            if !gone {
                links.push((dev, LinkCounters::from_array(values)));
            }
        }
        set_links(into, &[], &self.seen, links)
    }
}

/// One link's counters as the kernel keeps them (sysfs `statistics/`, or netlink's
/// `IFLA_STATS64` for a link in another network namespace).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Packets dropped on receive.
    pub rx_dropped: u64,
    /// Packets dropped on send.
    pub tx_dropped: u64,
}

impl LinkCounters {
    /// In [`NET_STATS`]' order.
    fn to_array(self) -> [u64; 8] {
        [
            self.rx_bytes,
            self.tx_bytes,
            self.rx_packets,
            self.tx_packets,
            self.rx_errors,
            self.tx_errors,
            self.rx_dropped,
            self.tx_dropped,
        ]
    }

    fn from_array(v: [u64; 8]) -> LinkCounters {
        LinkCounters {
            rx_bytes: v[0],
            tx_bytes: v[1],
            rx_packets: v[2],
            tx_packets: v[3],
            rx_errors: v[4],
            tx_errors: v[5],
            rx_dropped: v[6],
            tx_dropped: v[7],
        }
    }
}

fn borrowed(l: &[(String, String)]) -> Vec<(&str, &str)> {
    l.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
}

/// Sets the `node_network_*` series of `links` (with `labels` besides `device`) and
/// removes those of the links in `seen` that are not there any more.
fn set_links(
    into: &Registry,
    labels: &[(String, String)],
    seen: &Mutex<BTreeSet<String>>,
    links: Vec<(String, LinkCounters)>,
) -> Result<(), CollectError> {
    let with = |dev: &str| -> Vec<(String, String)> {
        let mut l = labels.to_vec();
        l.push(("device".to_string(), dev.to_string()));
        l
    };
    let mut now = BTreeSet::new();
    for (dev, counters) in links {
        let l = with(&dev);
        for ((_, name), v) in NET_STATS.iter().zip(counters.to_array()) {
            into.counter(name, &borrowed(&l))?.set_total(v as f64);
        }
        now.insert(dev);
    }
    let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
    for gone in seen.difference(&now) {
        let l = with(gone);
        for (_, name) in NET_STATS {
            into.remove(name, &borrowed(&l));
        }
    }
    *seen = now;
    Ok(())
}

/// The links a caller lists (e.g. zos-network, reading another network namespace's
/// links by netlink), as the `node_network_*` series with `labels` besides `device`
/// (e.g. `[("netns", "ndmz")]`). A link that is not listed any more loses its series.
pub struct Links<F> {
    labels: Vec<(String, String)>,
    list: F,
    seen: Mutex<BTreeSet<String>>,
}

impl<F> Links<F>
where
    F: Fn() -> Result<Vec<(String, LinkCounters)>, CollectError> + Send + Sync,
{
    /// Lists the links through `list` before each push.
    pub fn new(labels: &[(&str, &str)], list: F) -> Links<F> {
        Links {
            labels: labels
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            list,
            seen: Mutex::default(),
        }
    }
}

impl<F> std::fmt::Debug for Links<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

impl<F> Collector for Links<F>
where
    F: Fn() -> Result<Vec<(String, LinkCounters)>, CollectError> + Send + Sync,
{
    fn collect(&self, into: &Registry) -> Result<(), CollectError> {
        let links = (self.list)()?;
        set_links(into, &self.labels, &self.seen, links)
    }
}

/// Which cgroup hierarchy the node has, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// One hierarchy per controller under `root` (`<root>/cpuacct` or
    /// `<root>/cpu,cpuacct`, `<root>/memory`).
    V1 {
        /// Usually `/sys/fs/cgroup`.
        root: PathBuf,
    },
    /// The unified hierarchy mounted at `root`.
    V2 {
        /// Usually `/sys/fs/cgroup` (`/sys/fs/cgroup/unified` on a hybrid host).
        root: PathBuf,
    },
}

impl CgroupLayout {
    /// The node's: v2 when `/sys/fs/cgroup` is a cgroup2 mount (it has
    /// `cgroup.controllers`), else v1 (a hybrid host's workloads live in v1).
    pub fn detect() -> CgroupLayout {
        let root = PathBuf::from("/sys/fs/cgroup");
        if root.join("cgroup.controllers").exists() {
            CgroupLayout::V2 { root }
        } else {
            CgroupLayout::V1 { root }
        }
    }
}

/// One workload's CPU time and memory, from its cgroup. The series carry the labels
/// given (e.g. `[("workload", name)]`); in a tenant's registry, its contract's too.
#[derive(Debug, Clone)]
pub struct Cgroup {
    layout: CgroupLayout,
    path: PathBuf,
    labels: Vec<(String, String)>,
}

impl Cgroup {
    /// The cgroup `path` (relative to the hierarchy's root, e.g. `zos/<id>`; a leading
    /// `/` is ignored) in `layout`, reported with `labels`.
    pub fn new(layout: CgroupLayout, path: impl AsRef<Path>, labels: &[(&str, &str)]) -> Cgroup {
        let path = path.as_ref();
        let path = path.strip_prefix("/").unwrap_or(path).to_path_buf();
        Cgroup {
            layout,
            path,
            labels: labels
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// (total CPU seconds, memory in use, memory limit) as the kernel says now; memory
    /// is `None` where the memory controller is not there (a hybrid host's v2).
    pub fn read(&self) -> Result<CgroupUsage, CollectError> {
        match &self.layout {
            CgroupLayout::V2 { root } => {
                let dir = root.join(&self.path);
                let stat_path = dir.join("cpu.stat");
                let stat = read(&stat_path)?;
                let usec = stat
                    .lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| parse_err(&stat_path, "no usage_usec"))?;
                Ok(CgroupUsage {
                    cpu_seconds: usec as f64 / 1e6,
                    memory_bytes: read_number(&dir.join("memory.current"))?,
                    memory_limit_bytes: read_number(&dir.join("memory.max"))?,
                })
            }
            CgroupLayout::V1 { root } => {
                let usage = ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
                    .iter()
                    .map(|h| root.join(h).join(&self.path).join("cpuacct.usage"))
                    .find(|p| p.exists())
                    .ok_or_else(|| CollectError::Io {
                        path: root.join("cpuacct").join(&self.path),
                        source: io::Error::from(io::ErrorKind::NotFound),
                    })?;
                let ns = read_number(&usage)?.ok_or_else(|| parse_err(&usage, "empty"))?;
                let mem = root.join("memory").join(&self.path);
                // The kernel's "no limit" is a page-rounded i64::MAX.
                let limit = read_number(&mem.join("memory.limit_in_bytes"))?
                    .filter(|l| *l < (1u64 << 62) as f64);
                Ok(CgroupUsage {
                    cpu_seconds: ns / 1e9,
                    memory_bytes: read_number(&mem.join("memory.usage_in_bytes"))?,
                    memory_limit_bytes: limit,
                })
            }
        }
    }
}

impl Cgroup {
    /// The processes in it now (its `cgroup.procs`: of the cpuacct hierarchy on v1).
    pub fn procs(&self) -> Result<Vec<i32>, CollectError> {
        let file = match &self.layout {
            CgroupLayout::V2 { root } => root.join(&self.path).join("cgroup.procs"),
            CgroupLayout::V1 { root } => ["cpuacct", "cpu,cpuacct", "cpuacct,cpu"]
                .iter()
                .map(|h| root.join(h).join(&self.path).join("cgroup.procs"))
                .find(|p| p.exists())
                .unwrap_or_else(|| root.join("cpuacct").join(&self.path).join("cgroup.procs")),
        };
        let text = read(&file)?;
        text.lines()
            .map(|l| {
                l.trim()
                    .parse::<i32>()
                    .map_err(|_| parse_err(&file, format!("{l:?}")))
            })
            .collect()
    }
}

/// A workload's network bytes as its own network namespace counts them: the
/// `/proc/<pid>/net/dev` of a process in its cgroup (a container's processes are in
/// its namespace), loopback left out, as
/// `zos_workload_network_{receive,transmit}_bytes_total{device}` with the cgroup's
/// labels. A cgroup with no process has nothing to read: an error (`NotFound`).
#[derive(Debug, Clone)]
pub struct CgroupNetwork {
    cgroup: Cgroup,
    proc_root: PathBuf,
}

impl CgroupNetwork {
    /// The namespace of `cgroup`'s processes, read through the node's `/proc`.
    pub fn new(cgroup: Cgroup) -> CgroupNetwork {
        CgroupNetwork {
            cgroup,
            proc_root: PathBuf::from("/proc"),
        }
    }
}

/// `(device, received bytes, sent bytes)` of a `/proc/net/dev`, loopback left out.
pub fn parse_net_dev(path: &Path, text: &str) -> Result<Vec<(String, u64, u64)>, CollectError> {
    let mut out = Vec::new();
    // Two header lines, then `dev: rx_bytes rx_packets ... (8 rx) tx_bytes ...`.
    for line in text.lines().skip(2) {
        let Some((dev, rest)) = line.split_once(':') else {
            return Err(parse_err(path, format!("{line:?}")));
        };
        let dev = dev.trim();
        let fields: Vec<u64> = rest
            .split_ascii_whitespace()
            .map(|f| f.parse::<u64>())
            .collect::<Result<_, _>>()
            .map_err(|_| parse_err(path, format!("{line:?}")))?;
        if fields.len() < 16 {
            return Err(parse_err(path, format!("{line:?}")));
        }
        if dev != "lo" {
            out.push((dev.to_string(), fields[0], fields[8]));
        }
    }
    Ok(out)
}

impl Collector for CgroupNetwork {
    fn collect(&self, into: &Registry) -> Result<(), CollectError> {
        let procs = self.cgroup.procs()?;
        let Some(pid) = procs.first() else {
            return Err(CollectError::Io {
                path: self.cgroup.path.clone(),
                source: io::Error::new(io::ErrorKind::NotFound, "no process in the cgroup"),
            });
        };
        let path = self.proc_root.join(pid.to_string()).join("net/dev");
        let text = read(&path)?;
        for (dev, rx, tx) in parse_net_dev(&path, &text)? {
            let mut labels: Vec<(&str, &str)> = self
                .cgroup
                .labels
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            labels.push(("device", &dev));
            into.counter("zos_workload_network_receive_bytes_total", &labels)?
                .set_total(rx as f64);
            into.counter("zos_workload_network_transmit_bytes_total", &labels)?
                .set_total(tx as f64);
        }
        Ok(())
    }
}

/// What [`Cgroup::read`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CgroupUsage {
    /// CPU time used, user and system, in seconds.
    pub cpu_seconds: f64,
    /// Memory charged to it, in bytes (page cache included).
    pub memory_bytes: Option<f64>,
    /// Its memory limit, if it has one.
    pub memory_limit_bytes: Option<f64>,
}

/// A file holding one number: `None` if the file is not there or says `max`.
fn read_number(path: &Path) -> Result<Option<f64>, CollectError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CollectError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    t.parse::<u64>()
        .map(|v| Some(v as f64))
        .map_err(|_| parse_err(path, format!("{t:?}")))
}

impl Collector for Cgroup {
    fn collect(&self, into: &Registry) -> Result<(), CollectError> {
        let u = self.read()?;
        let labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        into.counter("zos_workload_cpu_seconds_total", &labels)?
            .set_total(u.cpu_seconds);
        if let Some(m) = u.memory_bytes {
            into.gauge("zos_workload_memory_bytes", &labels)?.set(m);
        }
        if let Some(l) = u.memory_limit_bytes {
            into.gauge("zos_workload_memory_limit_bytes", &labels)?
                .set(l);
        }
        Ok(())
    }
}

/// Size, use and room of each storage pool, by `statvfs` of its mount. `pools` names
/// them each time (pools come and go): `(name, mount path)`.
pub struct Pools<F>(pub F);

impl<F> std::fmt::Debug for Pools<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pools(..)")
    }
}

impl<F> Collector for Pools<F>
where
    F: Fn() -> Vec<(String, PathBuf)> + Send + Sync,
{
    fn collect(&self, into: &Registry) -> Result<(), CollectError> {
        let mut first_error = None;
        for (name, path) in (self.0)() {
            match pool_usage(into, &name, &path) {
                Ok(()) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Sets `zos_pool_size_bytes`, `zos_pool_used_bytes` and `zos_pool_available_bytes`
/// for the pool `name` mounted at `path`.
pub fn pool_usage(into: &Registry, name: &str, path: &Path) -> Result<(), CollectError> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| CollectError::Io {
        path: path.to_path_buf(),
        source: io::Error::from(e),
    })?;
    let frag = st.fragment_size() as f64;
    let size = st.blocks() as f64 * frag;
    let free = st.blocks_free() as f64 * frag;
    let avail = st.blocks_available() as f64 * frag;
    let labels = [("pool", name)];
    into.gauge("zos_pool_size_bytes", &labels)?.set(size);
    into.gauge("zos_pool_used_bytes", &labels)?.set(size - free);
    into.gauge("zos_pool_available_bytes", &labels)?.set(avail);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(r: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        r.snapshot(0)
            .into_iter()
            .find(|s| {
                s.label("__name__") == Some(name)
                    && labels.iter().all(|(n, v)| s.label(n) == Some(v))
            })
            .map(|s| s.samples[0].value)
    }

    #[test]
    fn proc_stat_lines_become_seconds_per_cpu_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let stat = dir.path().join("stat");
        std::fs::write(
            &stat,
            "cpu  300 0 100 900 0 0 0 0 0 0\ncpu0 200 1 50 400 2 3 4 5 0 0\ncpu1 100 0 50 500 0 0 0 0 0 0\nintr 1 2\n",
        )
        .unwrap();
        let c = NodeCpu {
            stat,
            ticks_per_second: 100.0,
        };
        let r = Registry::new();
        c.collect(&r).unwrap();
        let v = |cpu, mode| {
            get(
                &r,
                "node_cpu_seconds_total",
                &[("cpu", cpu), ("mode", mode)],
            )
        };
        assert_eq!(v("0", "user"), Some(2.0));
        assert_eq!(v("0", "steal"), Some(0.05));
        assert_eq!(v("1", "idle"), Some(5.0));
        // 2 CPUs x 8 modes; the all-CPU line is not a series.
        assert_eq!(r.len(), 16);
    }

    #[test]
    fn meminfo_fields_become_bytes_with_node_exporter_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("meminfo");
        std::fs::write(
            &p,
            "MemTotal:       1000 kB\nActive(anon):      2 kB\nHugePages_Total:       3\n",
        )
        .unwrap();
        let r = Registry::new();
        NodeMemory::at(&p).collect(&r).unwrap();
        assert_eq!(
            get(&r, "node_memory_MemTotal_bytes", &[]),
            Some(1_024_000.0)
        );
        assert_eq!(get(&r, "node_memory_Active_anon_bytes", &[]), Some(2048.0));
        assert_eq!(get(&r, "node_memory_HugePages_Total", &[]), Some(3.0));
    }

    #[test]
    fn an_interface_that_is_gone_loses_its_series() {
        let dir = tempfile::tempdir().unwrap();
        let stats = |dev: &str| dir.path().join(dev).join("statistics");
        for dev in ["a0", "b0"] {
            std::fs::create_dir_all(stats(dev)).unwrap();
            for (f, _) in NET_STATS {
                std::fs::write(stats(dev).join(f), "7\n").unwrap();
            }
        }
        let n = NodeNetwork::at(dir.path());
        let r = Registry::new();
        n.collect(&r).unwrap();
        assert_eq!(r.len(), 16);
        assert_eq!(
            get(&r, "node_network_receive_bytes_total", &[("device", "b0")]),
            Some(7.0)
        );
        std::fs::remove_dir_all(dir.path().join("b0")).unwrap();
        n.collect(&r).unwrap();
        assert_eq!(r.len(), 8);
        assert_eq!(
            get(&r, "node_network_receive_bytes_total", &[("device", "b0")]),
            None
        );
    }

    #[test]
    fn listed_links_carry_their_labels_and_an_unlisted_one_loses_its_series() {
        let round = std::sync::atomic::AtomicUsize::new(0);
        let links = Links::new(&[("netns", "ndmz")], move || {
            let first = round.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0;
            let mut v = vec![(
                "eth0".to_string(),
                LinkCounters {
                    rx_bytes: 10,
                    tx_dropped: 3,
                    ..LinkCounters::default()
                },
            )];
            if first {
                v.push(("veth1".to_string(), LinkCounters::default()));
            }
            Ok(v)
        });
        let r = Registry::new();
        links.collect(&r).unwrap();
        assert_eq!(r.len(), 16);
        let eth0 = [("netns", "ndmz"), ("device", "eth0")];
        assert_eq!(
            get(&r, "node_network_receive_bytes_total", &eth0),
            Some(10.0)
        );
        assert_eq!(
            get(&r, "node_network_transmit_drop_total", &eth0),
            Some(3.0)
        );
        links.collect(&r).unwrap();
        assert_eq!(r.len(), 8);
        assert_eq!(
            get(
                &r,
                "node_network_receive_bytes_total",
                &[("device", "veth1")]
            ),
            None
        );
    }

    #[test]
    fn cgroup_files_are_read_per_version_max_and_absent_are_none() {
        let dir = tempfile::tempdir().unwrap();
        let v2 = dir.path().join("v2/zos/w");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("cpu.stat"), "usage_usec 2500000\nuser_usec 1\n").unwrap();
        std::fs::write(v2.join("memory.current"), "4096\n").unwrap();
        std::fs::write(v2.join("memory.max"), "max\n").unwrap();
        let root = dir.path().join("v2");
        let u = Cgroup::new(CgroupLayout::V2 { root }, "/zos/w", &[])
            .read()
            .unwrap();
        assert_eq!(u.cpu_seconds, 2.5);
        assert_eq!(u.memory_bytes, Some(4096.0));
        assert_eq!(u.memory_limit_bytes, None);

        let v1 = dir.path().join("v1");
        std::fs::create_dir_all(v1.join("cpu,cpuacct/zos/w")).unwrap();
        std::fs::create_dir_all(v1.join("memory/zos/w")).unwrap();
        std::fs::write(v1.join("cpu,cpuacct/zos/w/cpuacct.usage"), "1500000000\n").unwrap();
        std::fs::write(v1.join("memory/zos/w/memory.usage_in_bytes"), "8192\n").unwrap();
        std::fs::write(
            v1.join("memory/zos/w/memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        let c = Cgroup::new(
            CgroupLayout::V1 { root: v1.clone() },
            "zos/w",
            &[("workload", "w")],
        );
        let r = Registry::new();
        c.collect(&r).unwrap();
        let w = [("workload", "w")];
        assert_eq!(get(&r, "zos_workload_cpu_seconds_total", &w), Some(1.5));
        assert_eq!(get(&r, "zos_workload_memory_bytes", &w), Some(8192.0));
        assert_eq!(get(&r, "zos_workload_memory_limit_bytes", &w), None);

        let gone = Cgroup::new(CgroupLayout::V1 { root: v1 }, "zos/nope", &[]);
        assert!(matches!(gone.read(), Err(CollectError::Io { .. })));
    }

    #[test]
    fn net_dev_gives_bytes_per_device_without_loopback() {
        // The kernel's own file first: it parses, and loopback is left out.
        let own = Path::new("/proc/self/net/dev");
        let devs = parse_net_dev(own, &read(own).unwrap()).unwrap();
        assert!(devs.iter().all(|(d, _, _)| d != "lo"), "{devs:?}");
        let text = "Inter-|   Receive                                                |  Transmit\n \
             face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
             lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
             eth0:    1500      10    0    0    0     0          0         0      700       5    0    0    0     0       0          0\n";
        assert_eq!(
            parse_net_dev(own, text).unwrap(),
            [("eth0".to_string(), 1500, 700)]
        );
        assert!(parse_net_dev(own, "h\nh\neth0: 1 2\n").is_err());
        // Through a cgroup's process: a cgroup with none is NotFound.
        let dir = tempfile::tempdir().unwrap();
        let cg = dir.path().join("cpuacct/zos/w");
        std::fs::create_dir_all(&cg).unwrap();
        std::fs::write(cg.join("cgroup.procs"), "").unwrap();
        let layout = CgroupLayout::V1 {
            root: dir.path().to_path_buf(),
        };
        let net = CgroupNetwork::new(Cgroup::new(layout.clone(), "/zos/w", &[("workload", "w")]));
        let r = Registry::new();
        match net.collect(&r) {
            Err(CollectError::Io { source, .. }) => {
                assert_eq!(source.kind(), io::ErrorKind::NotFound)
            }
            other => panic!("{other:?}"),
        }
        // With this process in it: this namespace's devices, labelled.
        std::fs::write(cg.join("cgroup.procs"), format!("{}\n", std::process::id())).unwrap();
        net.collect(&r).unwrap();
        for (dev, rx, _) in devs {
            let got = get(
                &r,
                "zos_workload_network_receive_bytes_total",
                &[("workload", "w"), ("device", &dev)],
            );
            // A counter read later is at least what was read before.
            assert!(got.is_some_and(|v| v >= rx as f64), "{dev}: {got:?}");
        }
    }

    #[test]
    fn pool_usage_is_statvfs_of_the_path_and_a_missing_path_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let r = Registry::new();
        let path = dir.path().to_path_buf();
        let pools = Pools(move || {
            vec![
                ("ssd0".to_string(), path.clone()),
                ("gone".to_string(), path.join("zt-missing")),
            ]
        });
        assert!(matches!(pools.collect(&r), Err(CollectError::Io { .. })));
        let size = get(&r, "zos_pool_size_bytes", &[("pool", "ssd0")]).unwrap();
        let used = get(&r, "zos_pool_used_bytes", &[("pool", "ssd0")]).unwrap();
        let avail = get(&r, "zos_pool_available_bytes", &[("pool", "ssd0")]).unwrap();
        assert!(size > 0.0 && used >= 0.0 && used <= size && avail <= size - used);
        assert_eq!(get(&r, "zos_pool_size_bytes", &[("pool", "gone")]), None);
    }
}
