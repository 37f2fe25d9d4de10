//! The workspace's test kit (dev-only, never published): what more than one crate's
//! tests, benches, `cargo xtask demo` and the end-to-end tests share.
//!
//! - [`Needs`]: a test's preconditions, checked in one call that either lets the test
//!   run, fails it loudly, or (with `ZOS_SKIP_PRIVILEGED=1`) prints the counted
//!   `SKIP: <test>: <reason>` line that `cargo xtask test` sums up.
//! - [`tempdir`] and [`tag`]: `zt-` names for everything a test creates.
//! - [`etcd::Etcd`]: a throwaway etcd server on free loopback ports.
//! - [`netns::World`]: the node and internet namespaces, wired by a veth.
//! - [`prometheus::Prometheus`]: a throwaway Prometheus receiving remote-write.
//! - [`rsyslog::Rsyslog`]: a throwaway rsyslogd receiving syslog, records read back.
//! - [`contract`]: blueprint, contract and cancellation builders, signed.

pub mod bench;
pub mod contract;
pub mod etcd;
mod needs;
pub mod netns;
pub mod prometheus;
pub mod rsyslog;

pub use needs::{skip_line, skip_or_fail, Needs};

/// The kit's failures where a caller wants to report rather than panic (the demo, the
/// end-to-end tests): a process that did not start, a namespace that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A system call or child process failed.
    #[error("{what}: {source}")]
    Io {
        /// What the kit was doing, e.g. `starting etcd` or `entering netns zt-…`.
        what: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// Something the kit waited for or checked did not hold; the text says what.
    #[error("{0}")]
    Failed(String),
}

impl KitError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> KitError {
        KitError::Io {
            what: what.into(),
            source,
        }
    }
}

/// A temp dir named `zt-<what>-XXXXXX`, removed on drop.
pub fn tempdir(what: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("zt-{what}-"))
        .tempdir()
        .expect("creating a zt- temp dir")
}

/// `zt-` and `bytes` random bytes in hex: a name no other test run holds.
pub fn tag(bytes: usize) -> String {
    format!("zt-{}", random_hex(bytes))
}

/// `bytes` random bytes from the OS, in hex.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("getrandom");
    hex::encode(b)
}

/// The mount points under `root` in this process's mount namespace, deepest first.
pub fn mounts_under(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let root = root.to_string_lossy().into_owned();
    let mut v: Vec<std::path::PathBuf> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with(&root))
        .map(std::path::PathBuf::from)
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

/// Files named `name` anywhere under `dir` (no links followed): where a test looks for
/// what a workload left, wherever the product put it.
pub fn files_named(dir: &std::path::Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(e.path());
            } else if e.file_name() == name {
                found.push(e.path());
            }
        }
    }
    found
}

/// Removes the (empty) cgroup `name` a test made, from every cgroup v1 controller
/// hierarchy and from the v2 root; what does not exist is skipped.
pub fn remove_cgroup(name: &str) {
    let root = std::path::Path::new("/sys/fs/cgroup");
    for ctrl in [
        "memory",
        "cpu,cpuacct",
        "pids",
        "cpu",
        "cpuacct",
        "devices",
        "blkio",
        "cpuset",
        "freezer",
    ] {
        let _ = std::fs::remove_dir(root.join(ctrl).join(name));
    }
    let _ = std::fs::remove_dir(root.join(name));
}
