//! A LAN for booted nodes that must reach each other (the mesh scenario, docs/network.md
//! "Mesh"): a `zt-` network namespace holding a bridge, one tap per node on it, dnsmasq
//! handing node `i` the fixed address `.50 + i`, and etcd (the notary) on the bridge's
//! address. QEMU user networking cannot do this: each node would be alone behind its
//! own NAT.
//!
//! Everything is made in the namespace, so the host's own network is not touched; the
//! caller runs its `zos` commands there ([`Lan::run`]). Dropped: dnsmasq and etcd stop,
//! the namespace goes (with the bridge and the taps).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

use crate::etcd::{in_netns, Etcd};
use crate::node::Net;

/// The bridge inside the namespace.
pub const BRIDGE: &str = "br0";
/// The LAN's /24 (its `.1` is the bridge: router, DHCP server and notary).
const NET: [u8; 3] = [10, 216, 0];

/// The LAN; torn down when dropped.
pub struct Lan {
    /// The namespace's name under `/run/netns` (`zt-lan-<tag>-<pid>`).
    pub netns: String,
    nodes: usize,
    dnsmasq: Option<Child>,
    etcd: Option<Etcd>,
}

/// `ip` with these arguments; an error with its stderr unless it succeeds.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (Debian package iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Lan {
    /// The bridge's address.
    pub fn gateway() -> Ipv4Addr {
        Ipv4Addr::new(NET[0], NET[1], NET[2], 1)
    }

    /// Node `i`'s address (what dnsmasq hands its MAC).
    pub fn node_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(NET[0], NET[1], NET[2], 50 + i as u8)
    }

    /// Node `i`'s tap.
    pub fn tap(i: usize) -> String {
        format!("tap{i}")
    }

    /// What node `i`'s [`crate::node::NodeSpec::net`] is (its `index` must be `i`).
    pub fn net(&self, i: usize) -> Net {
        Net::Tap {
            netns: self.netns.clone(),
            ifname: Self::tap(i),
        }
    }

    /// The notary's URL, for the nodes and for commands run in the namespace.
    pub fn notary_url(&self) -> String {
        format!("etcd://{}:2379/zos", Self::gateway())
    }

    /// Makes the namespace `zt-lan-<tag>-<pid>` with a bridge and `nodes` taps, starts
    /// dnsmasq and etcd there; their files go in `dir`.
    pub fn start(tag: &str, nodes: usize, dir: &Path) -> anyhow::Result<Lan> {
        crate::packages::ensure(&["dnsmasq-base", "etcd-server", "iproute2"])?;
        if nodes > 40 {
            bail!("a LAN holds at most 40 nodes");
        }
        std::fs::create_dir_all(dir)?;
        let netns = format!("zt-lan-{tag}-{}", std::process::id());
        // A leftover of a killed run of this process id goes first.
        if Path::new("/run/netns").join(&netns).exists() {
            ip(&["netns", "delete", &netns])?;
        }
        ip(&["netns", "add", &netns])?;
        // From here on, a failure removes the namespace (Drop).
        let mut lan = Lan {
            netns,
            nodes,
            dnsmasq: None,
            etcd: None,
        };
        let ns = lan.netns.clone();
        let gw = format!("{}/24", Self::gateway());
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns, "link", "add", BRIDGE, "type", "bridge"])?;
        ip(&["-n", &ns, "addr", "add", &gw, "dev", BRIDGE])?;
        ip(&["-n", &ns, "link", "set", BRIDGE, "up"])?;
        for i in 0..nodes {
            let tap = Self::tap(i);
            ip(&["-n", &ns, "tuntap", "add", "dev", &tap, "mode", "tap"])?;
            ip(&["-n", &ns, "link", "set", &tap, "master", BRIDGE])?;
            ip(&["-n", &ns, "link", "set", &tap, "up"])?;
        }
        lan.dnsmasq = Some(lan.start_dnsmasq(dir)?);
        let client = SocketAddr::from((Self::gateway(), 2379));
        let peer = SocketAddr::from(([127, 0, 0, 1], 2380));
        lan.etcd = Some(
            Etcd::start_at(dir, client, peer, Some(&lan.netns))
                .map_err(|e| anyhow::anyhow!("starting etcd in {}: {e}", lan.netns))?,
        );
        Ok(lan)
    }

    fn start_dnsmasq(&self, dir: &Path) -> anyhow::Result<Child> {
        let first = Self::node_ip(0);
        let last = Self::node_ip(self.nodes.max(1) - 1);
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.netns,
            "dnsmasq",
            "--keep-in-foreground",
        ])
        .args([
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--port=0",
            "--bind-interfaces",
            &format!("--interface={BRIDGE}"),
            "--dhcp-authoritative",
            &format!("--dhcp-range={first},{last},255.255.255.0,1h"),
            &format!("--dhcp-option=option:router,{}", Self::gateway()),
        ]);
        for i in 0..self.nodes {
            // The MAC crate::node gives node index i.
            cmd.arg(format!(
                "--dhcp-host=52:54:00:5a:05:{i:02x},{}",
                Self::node_ip(i)
            ));
        }
        cmd.arg(format!(
            "--dhcp-leasefile={}",
            dir.join("dnsmasq.leases").display()
        ))
        .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("dnsmasq.err"))?);
        cmd.spawn()
            .context("starting dnsmasq (Debian package dnsmasq-base)")
    }

    /// Runs `f` on a thread inside the namespace: the processes it starts (`zos`, the
    /// bot, tcpdump) are on the LAN.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        in_netns(&self.netns, f).map_err(|e| anyhow::anyhow!("entering {}: {e}", self.netns))
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        drop(self.etcd.take());
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.netns])
            .status();
    }
}
