//! `zosd run --config node.toml`: the node's configuration in agent mode.
//!
//! ```toml
//! notary = "dir:///var/lib/zos/notary"   # or etcd://127.0.0.1:2379
//! state_dir = "/var/lib/zos"             # flist and block caches, workload dirs
//! log_format = "pretty"                  # or "json"
//! farm = "farm-1"        # register in this farm (must be in the notary); absent: no registration
//! heartbeat_secs = 60    # heartbeat period once registered
//! status_socket = "/run/zos/status.sock"  # read-only D-Bus status (root-only unix socket)
//! console = "/dev/console"   # paint the status screen there; absent: no screen
//! console_every_secs = 5     # repaint period (and on every change)
//! store_roots = ["/srv/zos"]  # dir:// flists and stores only under these; absent: none
//!
//! [storage]
//! pools_root = "/var/lib/zos/pools"
//! # Disks for pools: device paths, or image files attached as loop devices.
//! disks = ["/dev/vdb"]
//! loop_files = [{ path = "/var/lib/zos/disk0.img", size_gib = 8 }]
//! label_prefix = "zos-"
//!
//! [network]
//! uplink = "eth0"
//! prefix = "n-"
//! egress_deny = ["203.0.113.0/24"]   # also closed to tenants (a LAN on public addresses)
//!
//! [capacity]
//! reserve_memory_mib = 512   # kept for zosd and the kernel
//! reserve_cpu = 0
//! cpu_overcommit = 4         # workload CPUs admitted per logical CPU (memory: never)
//!
//! [vm]
//! qemu = "qemu-system-x86_64"
//! accel = "auto"             # kvm only if a probe VM boots under it; or "kvm", "tcg"
//! console_limit_kib = 1024   # each VM's serial console log is kept under this
//! stop_grace_secs = 3        # after the ACPI power button, before QEMU quits
//!
//! [trust]
//! blueprint_authors = []     # hex public keys; empty accepts any valid signature
//!
//! [mesh]
//! # The address peer records publish for this node's WireGuard links (networks
//! # across nodes, docs/network.md "Mesh"): "auto" (the uplink's first global IPv4
//! # address, else its first global IPv6 address), "none" (not reachable: behind NAT,
//! # peers must reach it), or an address.
//! endpoint = "auto"
//!
//! [release]
//! # Release keys (hex) whose signed releases this node installs when its farm's
//! # rollout names them (docs/upgrade.md). Absent or empty: the node does not follow
//! # any rollout.
//! keys = []
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Deserialize;
use zos_contract::PublicKey;
use zos_storage::PoolKind;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub notary: String,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub log_format: LogFormat,
    /// The farm to register in (docs/registration.md). Absent: the node neither
    /// registers nor beats, and takes contracts at once (development nodes).
    #[serde(default)]
    pub farm: Option<String>,
    /// Seconds between heartbeats once registered.
    #[serde(default = "default_heartbeat_secs")]
    pub heartbeat_secs: u64,
    pub storage: StorageSection,
    pub network: NetworkSection,
    #[serde(default)]
    pub capacity: CapacitySection,
    #[serde(default)]
    pub trust: TrustSection,
    #[serde(default)]
    pub vm: VmSection,
    /// The read-only status interface: D-Bus peer-to-peer on this unix socket, mode
    /// 0600 (docs/status.md).
    #[serde(default = "default_status_socket")]
    pub status_socket: PathBuf,
    /// Where the status screen is painted (`/dev/console`); absent: nowhere.
    #[serde(default)]
    pub console: Option<PathBuf>,
    #[serde(default = "default_console_every_secs")]
    pub console_every_secs: u64,
    /// The only directories a contract's `dir://` flist URLs and stores may name
    /// (reached from a root without `..` or a symlink, opened as regular files). Empty
    /// (the default): no `dir://` at all, only `http(s)://` stores.
    #[serde(default)]
    pub store_roots: Vec<PathBuf>,
    /// Send the kernel log (from the start of its ring) with the node's own lines to the
    /// farm's log destination: PID 1 sets it on a booted node; a development node on a
    /// shared host leaves it off (the host's kernel log is not the node's).
    #[serde(default)]
    pub ship_kernel_log: bool,
    /// Seconds between two pushes of the node's metrics to the farm's target.
    #[serde(default = "default_metrics_every_secs")]
    pub metrics_every_secs: u64,
    /// Tenant networks across nodes (WireGuard).
    #[serde(default)]
    pub mesh: MeshSection,
    /// The node's own software: the release keys it accepts (docs/upgrade.md).
    #[serde(default)]
    pub release: ReleaseSection,
}

/// `[release]`: the release keys whose signed releases the node installs under its
/// farm's rollout. Empty (the default): no rollout is followed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseSection {
    #[serde(default)]
    pub keys: Vec<PublicKey>,
}

/// `[mesh]`: tenant networks across nodes (docs/network.md, "Mesh").
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSection {
    /// The endpoint address this node's peer records publish.
    #[serde(default)]
    pub endpoint: MeshEndpoint,
}

/// `[mesh] endpoint`: where peers send to this node's WireGuard links.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MeshEndpoint {
    /// The uplink's first global IPv4 address, or without one its first global IPv6
    /// address, looked at while zosd runs.
    #[default]
    Auto,
    /// None: the node is not reachable (behind NAT); its peers must have endpoints.
    None,
    /// This address.
    Addr(std::net::IpAddr),
}

impl<'de> Deserialize<'de> for MeshEndpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        match text.as_str() {
            "auto" => Ok(MeshEndpoint::Auto),
            "none" => Ok(MeshEndpoint::None),
            other => other.parse().map(MeshEndpoint::Addr).map_err(|_| {
                serde::de::Error::custom(format!(
                    "[mesh] endpoint: {other:?} is neither \"auto\", \"none\" nor an IP address"
                ))
            }),
        }
    }
}

impl MeshEndpoint {
    /// The address, given the node's interface addresses (`<if> <ip>/<len>`, as
    /// `zos_status::live::addresses` lists them) and its uplink's name: `Auto` takes
    /// the uplink's first global IPv4 address (not loopback, link-local, unspecified,
    /// multicast or broadcast), else its first global IPv6 address (not loopback,
    /// unspecified, multicast or link-local `fe80::/10`): a node with IPv6 only
    /// publishes an IPv6 endpoint.
    pub fn resolve(&self, uplink: &str, addresses: &[String]) -> Option<std::net::IpAddr> {
        use std::net::IpAddr;
        match self {
            MeshEndpoint::None => None,
            MeshEndpoint::Addr(ip) => Some(*ip),
            MeshEndpoint::Auto => {
                let on_uplink = addresses.iter().filter_map(|line| {
                    let (iface, cidr) = line.split_once(' ')?;
                    let ip: IpAddr = cidr.split('/').next()?.parse().ok()?;
                    (iface == uplink).then_some(ip)
                });
                let global = |ip: &IpAddr| match ip {
                    IpAddr::V4(v4) => {
                        !(v4.is_loopback()
                            || v4.is_link_local()
                            || v4.is_unspecified()
                            || v4.is_multicast()
                            || v4.is_broadcast())
                    }
                    IpAddr::V6(v6) => {
                        !(v6.is_loopback()
                            || v6.is_unspecified()
                            || v6.is_multicast()
                            || (v6.segments()[0] & 0xffc0) == 0xfe80)
                    }
                };
                let mut usable: Vec<IpAddr> = on_uplink.filter(global).collect();
                // IPv4 first, then the order the kernel lists them in (a stable sort).
                usable.sort_by_key(|ip| ip.is_ipv6());
                usable.first().copied()
            }
        }
    }
}

fn default_metrics_every_secs() -> u64 {
    15
}

fn default_status_socket() -> PathBuf {
    PathBuf::from(zos_status::DEFAULT_SOCKET)
}

fn default_console_every_secs() -> u64 {
    5
}

/// Micro-VMs (docs/vm.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSection {
    #[serde(default = "default_qemu")]
    pub qemu: PathBuf,
    #[serde(default)]
    pub accel: zos_vm::AccelChoice,
    #[serde(default = "default_console_limit_kib")]
    pub console_limit_kib: u64,
    #[serde(default = "default_stop_grace_secs")]
    pub stop_grace_secs: u64,
}

impl Default for VmSection {
    fn default() -> Self {
        VmSection {
            qemu: default_qemu(),
            accel: zos_vm::AccelChoice::default(),
            console_limit_kib: default_console_limit_kib(),
            stop_grace_secs: default_stop_grace_secs(),
        }
    }
}

fn default_qemu() -> PathBuf {
    PathBuf::from("qemu-system-x86_64")
}

fn default_console_limit_kib() -> u64 {
    1024
}

fn default_stop_grace_secs() -> u64 {
    3
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSection {
    pub pools_root: PathBuf,
    #[serde(default)]
    pub disks: Vec<PathBuf>,
    #[serde(default)]
    pub loop_files: Vec<LoopFile>,
    #[serde(default = "default_label_prefix")]
    pub label_prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopFile {
    pub path: PathBuf,
    pub size_gib: u64,
    /// Loop devices claim to be rotational whatever backs them: say what the file
    /// really sits on (default ssd).
    #[serde(default = "default_loop_kind")]
    pub kind: PoolKind,
}

fn default_loop_kind() -> PoolKind {
    PoolKind::Ssd
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    pub uplink: String,
    #[serde(default = "default_net_prefix")]
    pub prefix: String,
    /// Where network namespaces are bind-mounted.
    #[serde(default = "default_netns_dir")]
    pub netns_dir: PathBuf,
    /// The namespace that plays the node (tests and demos run a whole node inside
    /// one); absent: zosd's own namespace.
    #[serde(default)]
    pub node_netns: Option<PathBuf>,
    /// Ranges tenants may not reach, added to the built-in list (every private, shared,
    /// link-local, loopback, multicast and reserved range): a farm LAN on public
    /// addresses. Only a contract's signed `egress_allow` opens a closed range.
    #[serde(default)]
    pub egress_deny: Vec<String>,
}

impl NetworkSection {
    /// `egress_deny`, parsed.
    pub fn egress_deny(&self) -> anyhow::Result<Vec<zos_network::IpNet>> {
        self.egress_deny
            .iter()
            .map(|r| {
                r.parse()
                    .with_context(|| format!("[network] egress_deny: {r:?}"))
            })
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacitySection {
    #[serde(default = "default_reserve_memory")]
    pub reserve_memory_mib: u64,
    #[serde(default)]
    pub reserve_cpu: u64,
    /// Workload CPUs admitted per logical CPU. CPU is compressible: each workload's
    /// CPUs are a hard cap (a CFS quota), so oversubscribed CPUs are shared fairly;
    /// memory and disk, which are not, are never overcommitted.
    #[serde(default = "default_cpu_overcommit")]
    pub cpu_overcommit: u64,
}

impl Default for CapacitySection {
    fn default() -> Self {
        CapacitySection {
            reserve_memory_mib: default_reserve_memory(),
            reserve_cpu: 0,
            cpu_overcommit: default_cpu_overcommit(),
        }
    }
}

fn default_cpu_overcommit() -> u64 {
    4
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSection {
    #[serde(default)]
    pub blueprint_authors: Vec<PublicKey>,
}

fn default_heartbeat_secs() -> u64 {
    60
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/zos")
}
fn default_label_prefix() -> String {
    "zos-".into()
}
fn default_net_prefix() -> String {
    "n-".into()
}
fn default_netns_dir() -> PathBuf {
    PathBuf::from("/run/netns")
}
fn default_reserve_memory() -> u64 {
    512
}

impl NodeConfig {
    pub fn load(path: &Path) -> anyhow::Result<NodeConfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: NodeConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.storage.disks.is_empty() && self.storage.loop_files.is_empty() {
            bail!("[storage] names no disks and no loop_files: a node needs at least one pool");
        }
        if !self.state_dir.is_absolute() || !self.storage.pools_root.is_absolute() {
            bail!("state_dir and storage.pools_root must be absolute paths");
        }
        if let Some(farm) = &self.farm {
            zos_notary::NotaryKey::farm(farm).with_context(|| format!("farm {farm:?}"))?;
        }
        if self.heartbeat_secs == 0 {
            bail!("heartbeat_secs must be at least 1");
        }
        if self.console_every_secs == 0 {
            bail!("console_every_secs must be at least 1");
        }
        if let Some(root) = self.store_roots.iter().find(|r| !r.is_absolute()) {
            bail!("store_roots: {} is not an absolute path", root.display());
        }
        self.network.egress_deny()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("config.rs");
        let example: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!").trim_start_matches(' '))
            .collect::<Vec<_>>()
            .join("\n");
        let cfg: NodeConfig = toml::from_str(&example).unwrap();
        cfg.check().unwrap();
        assert_eq!(cfg.storage.loop_files[0].size_gib, 8);
        assert_eq!(cfg.log_format, LogFormat::Pretty);
        assert_eq!(cfg.farm.as_deref(), Some("farm-1"));
        assert_eq!(cfg.heartbeat_secs, 60);
        assert_eq!(cfg.console.as_deref(), Some(Path::new("/dev/console")));
        assert_eq!(
            cfg.network.egress_deny().unwrap(),
            ["203.0.113.0/24".parse::<zos_network::IpNet>().unwrap()]
        );
        assert_eq!(cfg.mesh.endpoint, MeshEndpoint::Auto);
    }

    #[test]
    fn the_mesh_endpoint_is_the_uplinks_first_global_ipv4_unless_told() {
        let base = "notary = \"dir:///x\"\nstorage = { pools_root = \"/p\", disks = [\"/dev/vdb\"] }\nnetwork = { uplink = \"e\" }\n";
        let cfg: NodeConfig = toml::from_str(base).unwrap();
        assert_eq!(cfg.mesh.endpoint, MeshEndpoint::Auto);
        let addrs: Vec<String> = [
            "br0 10.9.0.1/24",
            "e fe80::1/64",
            "e 169.254.3.4/16",
            "e 192.0.2.7/24",
            "e 192.0.2.8/24",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            MeshEndpoint::Auto.resolve("e", &addrs),
            Some("192.0.2.7".parse().unwrap())
        );
        assert_eq!(MeshEndpoint::Auto.resolve("e", &addrs[..3]), None);
        // IPv6 only: its global address, never the link-local one.
        let v6: Vec<String> = ["e fe80::1/64", "e 2001:db8::7/64", "e 2001:db8::8/64"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            MeshEndpoint::Auto.resolve("e", &v6),
            Some("2001:db8::7".parse().unwrap())
        );
        // Both: IPv4 first, wherever it is listed.
        let both: Vec<String> = ["e 2001:db8::7/64", "e 192.0.2.7/24"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            MeshEndpoint::Auto.resolve("e", &both),
            Some("192.0.2.7".parse().unwrap())
        );
        let none: NodeConfig =
            toml::from_str(&format!("{base}[mesh]\nendpoint = \"none\"\n")).unwrap();
        assert_eq!(none.mesh.endpoint.resolve("e", &addrs), None);
        let fixed: NodeConfig =
            toml::from_str(&format!("{base}[mesh]\nendpoint = \"203.0.113.9\"\n")).unwrap();
        assert_eq!(
            fixed.mesh.endpoint.resolve("e", &addrs),
            Some("203.0.113.9".parse().unwrap())
        );
        let bad = toml::from_str::<NodeConfig>(&format!("{base}[mesh]\nendpoint = \"eth0\"\n"))
            .unwrap_err();
        assert!(bad.to_string().contains("[mesh] endpoint"), "{bad}");
    }

    #[test]
    fn a_bad_egress_deny_range_is_refused() {
        let base =
            "notary = \"dir:///x\"\nstorage = { pools_root = \"/p\", disks = [\"/dev/vdb\"] }\n";
        for bad in ["203.0.113.1/24", "lan", "10.0.0.0/33"] {
            let cfg: NodeConfig = toml::from_str(&format!(
                "{base}network = {{ uplink = \"e\", egress_deny = [\"{bad}\"] }}\n"
            ))
            .unwrap();
            let e = cfg.check().unwrap_err();
            assert!(format!("{e:#}").contains("egress_deny"), "{bad}: {e:#}");
        }
    }

    #[test]
    fn the_status_socket_is_on_and_the_console_off_by_default() {
        let base = "notary = \"dir:///x\"\nstorage = { pools_root = \"/p\", disks = [\"/dev/vdb\"] }\nnetwork = { uplink = \"e\" }\n";
        let cfg: NodeConfig = toml::from_str(base).unwrap();
        assert_eq!(cfg.status_socket, Path::new("/run/zos/status.sock"));
        assert_eq!((cfg.console, cfg.console_every_secs), (None, 5));
    }

    #[test]
    fn farm_and_heartbeat_are_optional_and_checked() {
        let base = "notary = \"dir:///x\"\nstorage = { pools_root = \"/p\", disks = [\"/dev/vdb\"] }\nnetwork = { uplink = \"e\" }\n";
        let cfg: NodeConfig = toml::from_str(base).unwrap();
        cfg.check().unwrap();
        assert_eq!((cfg.farm, cfg.heartbeat_secs), (None, 60));
        let bad: NodeConfig = toml::from_str(&format!("farm = \"../x\"\n{base}")).unwrap();
        assert!(bad.check().is_err());
        let zero: NodeConfig = toml::from_str(&format!("heartbeat_secs = 0\n{base}")).unwrap();
        assert!(zero.check().is_err());
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<NodeConfig>(
            "notary = \"dir:///x\"\nstorage = { pools_root = \"/p\" }\nnetwork = { uplink = \"e\" }\nssh = true\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("ssh"), "{err}");
    }

    #[test]
    fn the_release_section_pins_keys_and_is_empty_by_default() {
        let base = "notary = \"dir:///x\"\nstorage = { pools_root = \"/p\" }\nnetwork = { uplink = \"e\" }\n";
        let none: NodeConfig = toml::from_str(base).unwrap();
        assert!(none.release.keys.is_empty());
        let key = zos_contract::SecretKey::from_seed([5; 32]).public();
        let cfg: NodeConfig =
            toml::from_str(&format!("{base}[release]\nkeys = [\"{key}\"]\n")).unwrap();
        assert_eq!(cfg.release.keys, vec![key]);
        let bad = toml::from_str::<NodeConfig>(&format!("{base}[release]\nkeys = [\"xyz\"]\n"));
        assert!(bad.is_err());
        let unknown = toml::from_str::<NodeConfig>(&format!("{base}[release]\nkey = []\n"));
        assert!(unknown.is_err());
    }
}
