//! What a node deploys: the blueprint's body after parameter substitution.
//!
//! This is the only description of workloads a node acts on. A contract cannot add to
//! it: the consumer chooses parameter values, the expert's signed blueprint decides
//! what they turn into.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::crypto::{Digest, PublicKey};
use crate::limits::Limits;

/// Networks, volumes and workloads for one contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    /// The contract's private networks; names unique within the deployment.
    #[serde(default)]
    pub networks: Vec<Network>,
    /// The contract's persistent volumes; names unique within the deployment.
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// What runs: at least one, at most [`Limits::workloads`].
    pub workloads: Vec<Workload>,
    /// Publish the workloads' newest output lines (their log tails) in the node's status
    /// records. Off unless the signed deployment says so: the notary is shared, and a
    /// workload's output belongs to its tenant. Written only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub publish_logs: bool,
    /// Where the workloads' output lines go: the owner's log receiver (`syslog+tcp://`,
    /// `syslog+tls://` with `ca_pem`, `jsonl+tcp://`). Absent: they stay on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<Telemetry>,
    /// Where the workloads' metrics go, by Prometheus remote-write: the owner's
    /// receiver (`http://`, or `https://` with `ca_pem`). Absent: nothing of this
    /// contract leaves the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Telemetry>,
}

/// A telemetry destination its signers name (a deployment's for its workloads, a farm
/// record's for its nodes), and for TLS the CA that signs its certificate (pinned: no
/// system roots are trusted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// The receiver's URL.
    pub url: String,
    /// The CA certificate (PEM), required for a TLS scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

/// What a [`Telemetry`] destination receives: which schemes it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TelemetryKind {
    /// Log lines: `syslog+tcp://HOST:PORT`, `syslog+tls://HOST:PORT`, `jsonl+tcp://HOST:PORT`.
    Logs,
    /// Metrics by Prometheus remote-write: `http://...`, `https://...`.
    Metrics,
}

/// Longest telemetry URL, in characters.
pub const MAX_TELEMETRY_URL: usize = 512;
/// Largest pinned CA (PEM), in bytes.
pub const MAX_TELEMETRY_CA: usize = 16 * 1024;

impl Telemetry {
    /// `(path, problem)` pairs of a destination of `kind` at `path`: one of its
    /// schemes (for logs `HOST:PORT` after it, no path), a CA with TLS and only then, a
    /// PEM certificate there. The receiver's own checks are the shipper's, at connect
    /// time.
    pub fn check(&self, kind: TelemetryKind, path: &str) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let url = &self.url;
        let at = |field: &str| format!("{path}.{field}");
        if url.is_empty()
            || url.chars().count() > MAX_TELEMETRY_URL
            || url.chars().any(char::is_control)
        {
            problems.push((
                at("url"),
                format!("1 to {MAX_TELEMETRY_URL} characters, no control characters"),
            ));
        }
        let schemes: &[(&str, bool)] = match kind {
            TelemetryKind::Logs => &[
                ("syslog+tcp", false),
                ("syslog+tls", true),
                ("jsonl+tcp", false),
            ],
            TelemetryKind::Metrics => &[("http", false), ("https", true)],
        };
        let (scheme, rest) = url.split_once("://").unwrap_or(("", ""));
        let Some(&(_, tls)) = schemes.iter().find(|(s, _)| *s == scheme) else {
            let known: Vec<&str> = schemes.iter().map(|(s, _)| *s).collect();
            problems.push((
                at("url"),
                format!("{url:?}: the scheme must be one of {}", known.join(", ")),
            ));
            return problems;
        };
        let where_ok = match kind {
            TelemetryKind::Logs => {
                !rest.contains('/')
                    && rest.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                    })
            }
            TelemetryKind::Metrics => !rest.is_empty() && !rest.starts_with('/'),
        };
        if !where_ok {
            let expected = match kind {
                TelemetryKind::Logs => "HOST:PORT",
                TelemetryKind::Metrics => "HOST[:PORT]/PATH",
            };
            problems.push((
                at("url"),
                format!("{url:?}: expected {scheme}://{expected}"),
            ));
        }
        match &self.ca_pem {
            None if tls => problems.push((
                at("ca_pem"),
                format!("{scheme} needs ca_pem (the pinned CA)"),
            )),
            Some(_) if !tls => {
                problems.push((at("ca_pem"), format!("only with TLS, not {scheme}")))
            }
            Some(pem) if pem.len() > MAX_TELEMETRY_CA => problems.push((
                at("ca_pem"),
                format!("{} bytes; the limit is {MAX_TELEMETRY_CA}", pem.len()),
            )),
            Some(pem) if !pem.contains("-----BEGIN CERTIFICATE-----") => {
                problems.push((at("ca_pem"), "holds no PEM certificate".into()))
            }
            _ => {}
        }
        problems
    }
}

/// A private IPv4 network for the contract's workloads, with NAT egress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// `[a-z0-9-]`, 1-32 characters, starting with a letter; workloads join it by name.
    pub name: String,
    /// CIDR, e.g. `10.20.0.0/24`; private ranges only, prefix 16..=29.
    pub subnet: String,
    /// Destinations outside the internet that this network's workloads may reach
    /// (`a.b.c.d/len`, IPv4): a LAN service, a private range. By default a tenant
    /// reaches the public internet only; the node's LAN, link-local, the other private
    /// ranges and the node itself are closed unless listed here, signed like the rest.
    /// Written only when not empty, so documents without it keep their digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress_allow: Vec<String>,
}

/// Persistent storage on the node's pools.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// `[a-z0-9-]`, 1-32 characters, starting with a letter; mounts name it.
    pub name: String,
    /// Quota in MiB; at least 1.
    pub size_mib: u64,
    /// Which kind of pool it is placed on; SSD unless said.
    #[serde(default)]
    pub disk: DiskKind,
}

/// The kind of disk a storage pool sits on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskKind {
    /// Solid-state: fast, the default.
    #[default]
    Ssd,
    /// Spinning disk: bulk capacity.
    Hdd,
}

/// How a workload runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// A container (libcontainer) on the node's kernel.
    Container,
    /// A micro-VM (QEMU) with its own kernel from the flist.
    Vm,
}

/// Where a workload's root filesystem comes from, and how it is trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlistRef {
    /// Where the `.fl` file is fetched from (`dir:///…`, `http(s)://…`).
    pub url: String,
    /// The sha256 of the `.fl` bytes: the flist is pinned, whoever serves it.
    pub sha256: Digest,
    /// Block stores, tried in turn.
    pub stores: Vec<String>,
    /// Publishers whose detached signature on the flist is accepted. Empty: the pin
    /// alone is trusted (hub flists are unsigned).
    #[serde(default)]
    pub publishers: Vec<PublicKey>,
}

/// A volume mounted into a workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// The name of one of the deployment's volumes.
    pub volume: String,
    /// Where it appears inside the workload: absolute, no `.` or `..` components.
    pub path: String,
    /// Mounted read-only when true.
    #[serde(default)]
    pub read_only: bool,
}

/// A port opened from the node's public side to the workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    /// The port the workload listens on (not 0).
    pub port: u16,
    /// The node's public port forwarded to it (not 0; unique per protocol within the
    /// deployment).
    pub public: u16,
    /// TCP unless said.
    #[serde(default)]
    pub protocol: Protocol,
}

/// The transport protocol of a forwarded port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP, the default.
    #[default]
    Tcp,
    /// UDP.
    Udp,
}

/// A container or a micro-VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// `[a-z0-9-]`, 1-32 characters, starting with a letter; unique in the deployment.
    pub name: String,
    /// Container or VM.
    pub kind: WorkloadKind,
    /// The pinned root filesystem image.
    pub flist: FlistRef,
    /// The command and its arguments: a container needs one (the first word is the
    /// program); a VM's guest gets it after `--` on the kernel command line (empty: none).
    /// Integers and booleans are accepted as their text; no NUL.
    #[serde(default, deserialize_with = "scalars::vec")]
    pub entrypoint: Vec<String>,
    /// Environment variables (`[A-Za-z_][A-Za-z0-9_]*` names); values as `entrypoint`.
    #[serde(default, deserialize_with = "scalars::map")]
    pub env: BTreeMap<String, String>,
    /// A container's working directory, absolute; `None`: `/`. VMs ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Logical CPUs (a container's quota; a VM's vCPUs).
    pub cpu: u32,
    /// Memory limit in MiB; at least 16.
    pub memory_mib: u64,
    /// Writable layer (container) or root disk (VM) size, in MiB; 0: undeclared (see
    /// [`Workload::disk_reserved_mib`]).
    #[serde(default)]
    pub disk_mib: u64,
    /// The name of the deployment network it joins; `None`: no tenant network (and
    /// then no ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// Volumes mounted into it.
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Public ports forwarded to it; need `network`.
    #[serde(default)]
    pub ports: Vec<Port>,
}

/// The root filesystem quota of a container that declares no `disk_mib`: its unpacked
/// flist and writable layer live in a subvolume of this size on an SSD pool.
pub const DEFAULT_CONTAINER_DISK_MIB: u64 = 256;

/// The least quota of a VM's unpacked flist tree on the pool: room for a kernel and its
/// initrd whatever the VM's `disk_mib`.
pub const VM_TREE_MIB: u64 = 256;

impl Workload {
    /// The disk it takes on an SSD pool, counted at admission: a container's root
    /// subvolume (its `disk_mib`, or [`DEFAULT_CONTAINER_DISK_MIB`] when it declares
    /// none); a VM's root disk (`disk_mib`) plus the subvolume its flist tree is
    /// unpacked into (`disk_mib`, at least [`VM_TREE_MIB`]).
    pub fn disk_reserved_mib(&self) -> u64 {
        match (self.kind, self.disk_mib) {
            (WorkloadKind::Container, 0) => DEFAULT_CONTAINER_DISK_MIB,
            (WorkloadKind::Container, mib) => mib,
            (WorkloadKind::Vm, mib) => mib.saturating_add(mib.max(VM_TREE_MIB)),
        }
    }
}

impl Deployment {
    /// Semantic checks serde cannot express. Returns `(json path, problem)` pairs.
    pub fn check(&self, limits: &Limits) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        let mut bad = |path: String, what: String| problems.push((path, what));
        if self.workloads.is_empty() {
            bad(
                "$.workloads".into(),
                "at least one workload is required".into(),
            );
        }
        if self.workloads.len() > limits.workloads {
            bad(
                "$.workloads".into(),
                format!(
                    "{} workloads, at most {}",
                    self.workloads.len(),
                    limits.workloads
                ),
            );
        }
        if let Some(logs) = &self.logs {
            for (path, what) in logs.check(TelemetryKind::Logs, "$.logs") {
                bad(path, what);
            }
        }
        if let Some(metrics) = &self.metrics {
            for (path, what) in metrics.check(TelemetryKind::Metrics, "$.metrics") {
                bad(path, what);
            }
        }
        let mut names = BTreeSet::new();
        for (i, n) in self.networks.iter().enumerate() {
            let p = format!("$.networks[{i}]");
            check_name(&n.name, &format!("{p}.name"), &mut names, &mut bad);
            if let Err(e) = parse_private_subnet(&n.subnet) {
                bad(format!("{p}.subnet"), e);
            }
            if n.egress_allow.len() > MAX_EGRESS_ALLOW {
                bad(
                    format!("{p}.egress_allow"),
                    format!(
                        "{} ranges, at most {MAX_EGRESS_ALLOW}",
                        n.egress_allow.len()
                    ),
                );
            }
            for (j, cidr) in n.egress_allow.iter().enumerate() {
                if let Err(e) = parse_cidr(cidr) {
                    bad(format!("{p}.egress_allow[{j}]"), e);
                }
            }
        }
        let networks: BTreeSet<&str> = self.networks.iter().map(|n| n.name.as_str()).collect();
        let mut names = BTreeSet::new();
        for (i, v) in self.volumes.iter().enumerate() {
            let p = format!("$.volumes[{i}]");
            check_name(&v.name, &format!("{p}.name"), &mut names, &mut bad);
            if v.size_mib == 0 {
                bad(format!("{p}.size_mib"), "must be at least 1".into());
            }
        }
        let volumes: BTreeSet<&str> = self.volumes.iter().map(|v| v.name.as_str()).collect();
        let mut names = BTreeSet::new();
        let mut public_ports = BTreeSet::new();
        for (i, w) in self.workloads.iter().enumerate() {
            let p = format!("$.workloads[{i}]");
            check_name(&w.name, &format!("{p}.name"), &mut names, &mut bad);
            if w.cpu == 0 {
                bad(format!("{p}.cpu"), "must be at least 1".into());
            }
            if w.memory_mib < 16 {
                bad(format!("{p}.memory_mib"), "must be at least 16".into());
            }
            if w.flist.stores.is_empty() {
                bad(
                    format!("{p}.flist.stores"),
                    "at least one store is required".into(),
                );
            }
            if let Some(cwd) = &w.cwd {
                if let Err(e) = check_abs_path(cwd) {
                    bad(format!("{p}.cwd"), e);
                }
            }
            for key in w.env.keys() {
                let valid = !key.is_empty()
                    && !key.starts_with(|c: char| c.is_ascii_digit())
                    && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
                if !valid {
                    bad(format!("{p}.env.{key}"), "not a valid variable name".into());
                }
            }
            for (k, value) in w
                .entrypoint
                .iter()
                .enumerate()
                .map(|(k, s)| (k, s.as_str()))
                .chain(w.env.values().enumerate().map(|(k, s)| (k, s.as_str())))
            {
                if value.contains('\0') {
                    bad(format!("{p}.entrypoint[{k}]"), "contains NUL".into());
                }
            }
            match &w.network {
                Some(n) if !networks.contains(n.as_str()) => {
                    bad(format!("{p}.network"), format!("no network named {n:?}"))
                }
                None if !w.ports.is_empty() => {
                    bad(format!("{p}.ports"), "ports need a network".into())
                }
                _ => {}
            }
            for (j, m) in w.mounts.iter().enumerate() {
                if !volumes.contains(m.volume.as_str()) {
                    bad(
                        format!("{p}.mounts[{j}].volume"),
                        format!("no volume named {:?}", m.volume),
                    );
                }
                if let Err(e) = check_abs_path(&m.path) {
                    bad(format!("{p}.mounts[{j}].path"), e);
                }
            }
            for (j, port) in w.ports.iter().enumerate() {
                if port.port == 0 || port.public == 0 {
                    bad(format!("{p}.ports[{j}]"), "port 0 is not a port".into());
                }
                if !public_ports.insert((port.public, port.protocol)) {
                    bad(
                        format!("{p}.ports[{j}].public"),
                        format!("public port {} used twice", port.public),
                    );
                }
            }
        }
        problems
    }
}

fn check_name(
    name: &str,
    path: &str,
    seen: &mut BTreeSet<String>,
    bad: &mut impl FnMut(String, String),
) {
    let valid = (1..=32).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bad(
            path.into(),
            format!("{name:?} is not a name: 1-32 of [a-z0-9-], starting with a letter"),
        );
    } else if !seen.insert(name.to_string()) {
        bad(path.into(), format!("{name:?} is used twice"));
    }
}

fn check_abs_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not absolute"));
    }
    if path.split('/').any(|c| c == ".." || c == ".") || path.contains('\0') {
        return Err(format!("{path:?} has '.', '..' or NUL components"));
    }
    Ok(())
}

/// At most this many `egress_allow` ranges per network (each is an nft set element).
pub const MAX_EGRESS_ALLOW: usize = 32;

/// Parses an `egress_allow` range `a.b.c.d/len` (any IPv4 range, prefix 0..=32, no host
/// bits: one spelling per range).
pub fn parse_cidr(cidr: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not a.b.c.d/len"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{cidr:?}: bad address"))?;
    // Digits only, no leading zero, at most 32: one spelling per length.
    let canonical = !len.is_empty()
        && len.bytes().all(|b| b.is_ascii_digit())
        && (len == "0" || !len.starts_with('0'));
    let len: u8 = match len.parse() {
        Ok(l) if canonical && l <= 32 => l,
        _ => return Err(format!("{cidr:?}: bad prefix length")),
    };
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    if u32::from(addr) & !mask != 0 {
        return Err(format!("{cidr:?} has host bits set"));
    }
    Ok((addr, len))
}

/// Parses `a.b.c.d/len` into its network address and prefix length, refusing public
/// ranges and host bits.
pub fn parse_private_subnet(cidr: &str) -> Result<(Ipv4Addr, u8), String> {
    let (addr, len) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not a.b.c.d/len"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{cidr:?}: bad address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{cidr:?}: bad prefix length"))?;
    if !(16..=29).contains(&len) {
        return Err(format!("{cidr:?}: prefix length must be 16..=29"));
    }
    if !addr.is_private() {
        return Err(format!("{cidr:?} is not a private (RFC 1918) range"));
    }
    let mask = u32::MAX << (32 - len);
    if u32::from(addr) & !mask != 0 {
        return Err(format!("{cidr:?} has host bits set"));
    }
    Ok((addr, len))
}

/// Argument and environment strings also accept integers and booleans, as their text:
/// a template's `"{{ users }}"` expands to the number 100, and as an argument it is "100".
mod scalars {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Text(String),
        Int(i64),
        Bool(bool),
    }

    impl From<Scalar> for String {
        fn from(s: Scalar) -> String {
            match s {
                Scalar::Text(t) => t,
                Scalar::Int(i) => i.to_string(),
                Scalar::Bool(b) => b.to_string(),
            }
        }
    }

    pub fn vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(Vec::<Scalar>::deserialize(d)?
            .into_iter()
            .map(String::from)
            .collect())
    }

    pub fn map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
        Ok(BTreeMap::<String, Scalar>::deserialize(d)?
            .into_iter()
            .map(|(k, v)| (k, String::from(v)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn egress_ranges_have_one_spelling() {
        assert_eq!(
            parse_cidr("192.168.1.0/24"),
            Ok(([192, 168, 1, 0].into(), 24))
        );
        assert_eq!(parse_cidr("10.0.0.7/32"), Ok(([10, 0, 0, 7].into(), 32)));
        assert_eq!(parse_cidr("0.0.0.0/0"), Ok(([0, 0, 0, 0].into(), 0)));
        for bad in [
            "192.168.1.1/24", // host bits
            "192.168.1.0/33",
            "192.168.1.0/+24",
            "192.168.1.0/024",
            "192.168.1.0/",
            "192.168.1.0",
            "192.168.01.0/24",
            "fd00::/8",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_network_without_egress_allow_keeps_its_spelling() {
        let n: Network =
            serde_json::from_value(serde_json::json!({"name": "n", "subnet": "10.1.0.0/24"}))
                .unwrap();
        assert!(n.egress_allow.is_empty());
        assert_eq!(
            serde_json::to_value(&n).unwrap(),
            serde_json::json!({"name": "n", "subnet": "10.1.0.0/24"})
        );
    }
}

#[cfg(test)]
mod telemetry_tests {
    use super::*;

    fn problems(logs: serde_json::Value) -> Vec<(String, String)> {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "workloads": [{"name": "w", "kind": "container", "cpu": 1, "memory_mib": 64,
                "flist": {"url": "dir:///x.fl", "sha256": "0".repeat(64), "stores": []}}],
            "logs": logs,
        }))
        .unwrap();
        // The workload's own problems (none of this test's business) left out.
        d.check(&Limits::default())
            .into_iter()
            .filter(|(p, _)| p.starts_with("$.logs"))
            .collect()
    }

    #[test]
    fn a_log_destination_is_checked_where_it_is_written() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        assert!(problems(serde_json::json!({"url": "jsonl+tcp://logs.example:5140"})).is_empty());
        assert!(
            problems(serde_json::json!({"url": "syslog+tls://10.0.0.1:6514", "ca_pem": pem}))
                .is_empty()
        );
        let path = |v| problems(v).into_iter().map(|(p, _)| p).collect::<Vec<_>>();
        assert_eq!(
            path(serde_json::json!({"url": "http://x:1"})),
            ["$.logs.url"]
        );
        assert_eq!(
            path(serde_json::json!({"url": "syslog+tcp://x"})),
            ["$.logs.url"]
        );
        assert_eq!(
            path(serde_json::json!({"url": "syslog+tcp://x:0"})),
            ["$.logs.url"]
        );
        assert_eq!(
            path(serde_json::json!({"url": "syslog+tcp://x:1/p"})),
            ["$.logs.url"]
        );
        assert_eq!(
            path(serde_json::json!({"url": "syslog+tls://x:1"})),
            ["$.logs.ca_pem"]
        );
        assert_eq!(
            path(serde_json::json!({"url": "syslog+tcp://x:1", "ca_pem": pem})),
            ["$.logs.ca_pem"]
        );
        assert_eq!(
            path(serde_json::json!({"url": "syslog+tls://x:1", "ca_pem": "junk"})),
            ["$.logs.ca_pem"]
        );
        // Written only when present: a deployment without it keeps its digest.
        let d: Deployment = serde_json::from_value(serde_json::json!({"workloads": []})).unwrap();
        assert!(serde_json::to_value(&d).unwrap().get("logs").is_none());
    }

    fn metrics_problems(metrics: serde_json::Value) -> Vec<String> {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "workloads": [{"name": "w", "kind": "container", "cpu": 1, "memory_mib": 64,
                "flist": {"url": "dir:///x.fl", "sha256": "0".repeat(64), "stores": []}}],
            "metrics": metrics,
        }))
        .unwrap();
        d.check(&Limits::default())
            .into_iter()
            .filter(|(p, _)| p.starts_with("$.metrics"))
            .map(|(p, _)| p)
            .collect()
    }

    #[test]
    fn a_metrics_target_is_checked_where_it_is_written() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let none: [&str; 0] = [];
        assert_eq!(
            metrics_problems(serde_json::json!({"url": "http://10.0.0.1:9090/api/v1/write"})),
            none
        );
        assert_eq!(
            metrics_problems(
                serde_json::json!({"url": "https://m.example/api/v1/write", "ca_pem": pem})
            ),
            none
        );
        // A log scheme is not a remote-write target, nor is a URL without a host.
        assert_eq!(
            metrics_problems(serde_json::json!({"url": "syslog+tcp://x:1"})),
            ["$.metrics.url"]
        );
        assert_eq!(
            metrics_problems(serde_json::json!({"url": "http:///api/v1/write"})),
            ["$.metrics.url"]
        );
        // An empty URL is both too short and of no scheme.
        assert_eq!(
            metrics_problems(serde_json::json!({"url": ""})),
            ["$.metrics.url", "$.metrics.url"]
        );
        // TLS needs its pinned CA; plain HTTP takes none; a CA must be a certificate.
        assert_eq!(
            metrics_problems(serde_json::json!({"url": "https://m.example/w"})),
            ["$.metrics.ca_pem"]
        );
        assert_eq!(
            metrics_problems(serde_json::json!({"url": "http://m.example/w", "ca_pem": pem})),
            ["$.metrics.ca_pem"]
        );
        assert_eq!(
            metrics_problems(serde_json::json!({"url": "https://m.example/w", "ca_pem": "junk"})),
            ["$.metrics.ca_pem"]
        );
        // An unknown field inside it is refused by the parser.
        let unknown: Result<Deployment, _> = serde_json::from_value(serde_json::json!({
            "workloads": [], "metrics": {"url": "http://m/w", "token": "x"}}));
        assert!(unknown.is_err());
        // Written only when present: a deployment without it keeps its digest.
        let d: Deployment = serde_json::from_value(serde_json::json!({"workloads": []})).unwrap();
        assert!(serde_json::to_value(&d).unwrap().get("metrics").is_none());
    }
}

#[cfg(test)]
mod reservation_tests {
    use super::*;

    fn workload(kind: &str, disk_mib: u64) -> Workload {
        serde_json::from_value(serde_json::json!({
            "name": "w", "kind": kind, "cpu": 1, "memory_mib": 64, "disk_mib": disk_mib,
            "flist": {"url": "dir:///x.fl", "sha256": "0".repeat(64), "stores": []},
        }))
        .unwrap()
    }

    /// A VM takes its root disk and the subvolume of its unpacked tree.
    #[test]
    fn a_vms_tree_is_counted_beside_its_disk() {
        assert_eq!(workload("vm", 0).disk_reserved_mib(), VM_TREE_MIB);
        assert_eq!(workload("vm", 100).disk_reserved_mib(), 100 + VM_TREE_MIB);
        assert_eq!(workload("vm", 1024).disk_reserved_mib(), 2048);
        assert_eq!(
            workload("container", 0).disk_reserved_mib(),
            DEFAULT_CONTAINER_DISK_MIB
        );
        assert_eq!(workload("container", 100).disk_reserved_mib(), 100);
    }
}
