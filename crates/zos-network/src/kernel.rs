//! The seam between [`Network`](crate::Network) and the kernel: every namespace,
//! netlink and nftables call that `ensure`, `attach`, `detach`, `remove` and `list`
//! make goes through [`Kernel`] (namespaces) and [`Session`] (what is done inside one
//! namespace). [`RealKernel`] is the kernel (bind-mounted namespace files, rtnetlink,
//! the `nft` binary, TUNSETIFF); [`crate::fake::FakeKernel`] records the calls and
//! keeps a model of the objects, so the convergence logic is unit-tested without root.

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::mesh::{MeshPeer, WgDevice};
use crate::netns;
use crate::nft;
use crate::nl::Nl;
use crate::subnet::Ipv4Subnet;
use crate::tap;
use crate::wg::{self, Genl};

pub use crate::nl::Link;

/// A network namespace, as opened through a [`Kernel`]: a label (its file name, or
/// `current` for the calling thread's), and for the real kernel the open nsfs file
/// that keeps it reachable.
#[derive(Debug)]
pub struct Ns {
    label: String,
    file: Option<File>,
}

impl Ns {
    /// A namespace known by its label only (what a fake kernel hands out).
    pub fn labelled(label: impl Into<String>) -> Ns {
        Ns {
            label: label.into(),
            file: None,
        }
    }

    /// The namespace's name: the file name of its path, or `current`.
    pub fn label(&self) -> &str {
        &self.label
    }

    fn file(&self) -> Result<&File> {
        self.file.as_ref().ok_or_else(|| {
            Error::io(
                format!("namespace {} has no open file", self.label),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            )
        })
    }
}

/// The label of a namespace path (its file name).
pub(crate) fn label_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Namespaces: create, remove, list, open, and enter one.
pub trait Kernel: Send + Sync {
    /// Open the namespace at `path`, or the calling thread's own when `None`.
    fn open_ns(&self, path: Option<&Path>) -> Result<Ns>;
    /// Create the namespace `run_dir/name` unless it exists; true if created. With an
    /// `owner`, the new namespace belongs to the user namespace at that path.
    fn create_ns(&self, run_dir: &Path, name: &str, owner: Option<&Path>) -> Result<bool>;
    /// Whether the namespace at `path` belongs to the user namespace at `owner`.
    fn ns_owned_by(&self, path: &Path, owner: &Path) -> Result<bool>;
    /// Remove the namespace `run_dir/name`; true if something existed.
    fn remove_ns(&self, run_dir: &Path, name: &str) -> Result<bool>;
    /// Names of the namespaces under `run_dir` starting with `prefix`, sorted.
    fn list_ns(&self, run_dir: &Path, prefix: &str) -> Result<Vec<String>>;
    /// Whether `path` is a live namespace.
    fn ns_exists(&self, path: &Path) -> bool;
    /// Run `f` once with a session inside `ns`.
    fn enter(&self, ns: &Ns, f: &mut (dyn FnMut(&dyn Session) -> Result<()> + Send)) -> Result<()>;
}

/// What is done inside one namespace: links, addresses, routes, sysctls, nft.
pub trait Session {
    /// The link called `name`, `None` if there is none.
    fn link(&self, name: &str) -> Result<Option<Link>>;
    /// Every link of the namespace.
    fn links(&self) -> Result<Vec<Link>>;
    /// A bridge `name` (not yet up).
    fn add_bridge(&self, name: &str) -> Result<()>;
    /// A veth pair `name` here, `peer` created directly inside `ns`.
    fn add_veth_into(&self, name: &str, peer: &str, ns: &Ns) -> Result<()>;
    /// A persistent tap device `name` (no packet-info header).
    fn add_tap(&self, name: &str) -> Result<()>;
    /// Bring the link `index` administratively up.
    fn set_up(&self, index: u32) -> Result<()>;
    /// Make link `index` a port of the bridge whose index is `bridge`.
    fn set_controller(&self, index: u32, bridge: u32) -> Result<()>;
    /// Delete a link; one already gone is not an error.
    fn del_link(&self, index: u32) -> Result<()>;
    /// IPv4 addresses `(link index, address, prefix length)`, of one link or all.
    fn addrs(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Addr, u8)>>;
    /// Make `ip/prefix` the only IPv4 address of the link.
    fn ensure_only_addr(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()>;
    /// `ip route replace default via gw dev index`.
    fn default_route(&self, gw: Ipv4Addr, index: u32) -> Result<()>;
    /// Write a sysctl of this namespace (`net.ipv4.ip_forward`).
    fn sysctl(&self, key: &str, value: &str) -> Result<()>;
    /// Apply an nft script (one transaction).
    fn nft_apply(&self, op: &str, script: &str) -> Result<()>;
    /// `(family, name)` of every nft table.
    fn nft_tables(&self) -> Result<Vec<(String, String)>>;
    /// Deletes nft table `family table`; false when there was none.
    fn nft_delete_table(&self, op: &str, family: &str, table: &str) -> Result<bool>;
    /// `(table, proto, public port)` of every DNAT rule of the `ip` tables.
    fn nft_forwarded_ports(&self) -> Result<Vec<(String, String, u16)>>;
    /// The ports in set `set` of table `family table`, sorted; `None` if the table or
    /// the set does not exist.
    fn nft_set_ports(&self, family: &str, table: &str, set: &str) -> Result<Option<Vec<u16>>>;
    /// Whether the generic netlink family "wireguard" resolves in this namespace.
    fn wireguard_family(&self) -> Result<bool>;
    /// A WireGuard link `name`, requested from this namespace (which keeps its UDP
    /// socket) and born inside `ns`. [`Error::WireguardMissing`] if the kernel does
    /// not know the link kind.
    fn add_wireguard_into(&self, name: &str, ns: &Ns) -> Result<()>;
    /// `WG_CMD_GET_DEVICE` on WireGuard link `index`.
    fn wg_get(&self, index: u32) -> Result<WgDevice>;
    /// `WG_CMD_SET_DEVICE` on WireGuard link `index`, one request: this private key,
    /// the peers `remove` removed, `peers` added or updated (each with exactly its
    /// allowed IPs, endpoint and keepalive). Peers in neither keep their sessions.
    fn wg_set(
        &self,
        index: u32,
        private_key: &[u8; 32],
        peers: &[MeshPeer],
        remove: &[[u8; 32]],
    ) -> Result<()>;
    /// Destinations of the main table's IPv4 routes out of link `index`.
    fn routes(&self, index: u32) -> Result<Vec<Ipv4Subnet>>;
    /// `ip route replace dst dev index`.
    fn route_replace(&self, dst: Ipv4Subnet, index: u32) -> Result<()>;
    /// `ip route del dst dev index`; one already gone is not an error.
    fn route_del(&self, dst: Ipv4Subnet, index: u32) -> Result<()>;
}

/// Run `f` with a session inside `ns` and return what it returns.
pub fn within<R: Send>(
    kernel: &dyn Kernel,
    ns: &Ns,
    f: impl FnOnce(&dyn Session) -> Result<R> + Send,
) -> Result<R> {
    let mut f = Some(f);
    let mut out = None;
    kernel.enter(ns, &mut |s| {
        if let Some(f) = f.take() {
            out = Some(f(s)?);
        }
        Ok(())
    })?;
    out.ok_or_else(|| {
        Error::io(
            format!("namespace {} was not entered", ns.label()),
            std::io::Error::from(std::io::ErrorKind::Other),
        )
    })
}

/// The kernel: namespace files under the run dir, a fresh thread per entered
/// namespace (see [`netns::run_in`]), rtnetlink, `nft`, TUNSETIFF.
#[derive(Clone, Copy, Debug, Default)]
pub struct RealKernel;

impl Kernel for RealKernel {
    fn open_ns(&self, path: Option<&Path>) -> Result<Ns> {
        let (file, label) = match path {
            Some(p) => (netns::open(p)?, label_of(p)),
            None => (netns::current()?, "current".to_string()),
        };
        Ok(Ns {
            label,
            file: Some(file),
        })
    }

    fn create_ns(&self, run_dir: &Path, name: &str, owner: Option<&Path>) -> Result<bool> {
        match owner {
            Some(owner) => netns::create_owned(run_dir, name, owner),
            None => netns::create(run_dir, name),
        }
    }

    fn ns_owned_by(&self, path: &Path, owner: &Path) -> Result<bool> {
        netns::owned_by(path, owner)
    }

    fn remove_ns(&self, run_dir: &Path, name: &str) -> Result<bool> {
        netns::remove(run_dir, name)
    }

    fn list_ns(&self, run_dir: &Path, prefix: &str) -> Result<Vec<String>> {
        netns::list(run_dir, prefix)
    }

    fn ns_exists(&self, path: &Path) -> bool {
        netns::is_mounted(path)
    }

    fn enter(&self, ns: &Ns, f: &mut (dyn FnMut(&dyn Session) -> Result<()> + Send)) -> Result<()> {
        let asked = std::time::Instant::now();
        netns::run_in(ns.file()?, || {
            let s = RealSession { nl: Nl::new()? };
            let ready = asked.elapsed();
            let r = f(&s);
            tracing::trace!(
                ns = ns.label(),
                setup_ms = ready.as_secs_f64() * 1e3,
                total_ms = asked.elapsed().as_secs_f64() * 1e3,
                "namespace session"
            );
            r
        })
    }
}

/// A session of the real kernel: a netlink connection opened on the thread that
/// entered the namespace (it belongs to that namespace for life).
struct RealSession {
    nl: Nl,
}

impl Session for RealSession {
    fn link(&self, name: &str) -> Result<Option<Link>> {
        self.nl.link(name)
    }
    fn links(&self) -> Result<Vec<Link>> {
        self.nl.links()
    }
    fn add_bridge(&self, name: &str) -> Result<()> {
        self.nl.add_bridge(name)
    }
    fn add_veth_into(&self, name: &str, peer: &str, ns: &Ns) -> Result<()> {
        self.nl.add_veth_into(name, peer, ns.file()?.as_fd())
    }
    fn add_tap(&self, name: &str) -> Result<()> {
        // The tap is born in the namespace of the thread that opens /dev/net/tun:
        // this one.
        tap::create(name)
    }
    fn set_up(&self, index: u32) -> Result<()> {
        self.nl.set_up(index)
    }
    fn set_controller(&self, index: u32, bridge: u32) -> Result<()> {
        self.nl.set_controller(index, bridge)
    }
    fn del_link(&self, index: u32) -> Result<()> {
        self.nl.del_link(index)
    }
    fn addrs(&self, index: Option<u32>) -> Result<Vec<(u32, Ipv4Addr, u8)>> {
        self.nl.addrs(index)
    }
    fn ensure_only_addr(&self, index: u32, ip: Ipv4Addr, prefix: u8) -> Result<()> {
        self.nl.ensure_only_addr(index, ip, prefix)
    }
    fn default_route(&self, gw: Ipv4Addr, index: u32) -> Result<()> {
        self.nl.default_route(gw, index)
    }
    fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        netns::sysctl(key, value)
    }
    fn nft_apply(&self, op: &str, script: &str) -> Result<()> {
        nft::apply(op, script)
    }
    fn nft_tables(&self) -> Result<Vec<(String, String)>> {
        nft::tables()
    }
    fn nft_delete_table(&self, op: &str, family: &str, table: &str) -> Result<bool> {
        nft::delete_table(op, family, table)
    }
    fn nft_forwarded_ports(&self) -> Result<Vec<(String, String, u16)>> {
        nft::forwarded_ports()
    }
    fn nft_set_ports(&self, family: &str, table: &str, set: &str) -> Result<Option<Vec<u16>>> {
        nft::set_ports(family, table, set)
    }
    fn wireguard_family(&self) -> Result<bool> {
        Ok(Genl::new()?.family_id(wg::FAMILY)?.is_some())
    }
    fn add_wireguard_into(&self, name: &str, ns: &Ns) -> Result<()> {
        self.nl.add_wireguard_into(name, ns.file()?.as_fd())
    }
    fn wg_get(&self, index: u32) -> Result<WgDevice> {
        Genl::new()?.get_device(index)
    }
    fn wg_set(
        &self,
        index: u32,
        private_key: &[u8; 32],
        peers: &[MeshPeer],
        remove: &[[u8; 32]],
    ) -> Result<()> {
        Genl::new()?.set_device(index, private_key, peers, remove)
    }
    fn routes(&self, index: u32) -> Result<Vec<Ipv4Subnet>> {
        self.nl.routes(index)
    }
    fn route_replace(&self, dst: Ipv4Subnet, index: u32) -> Result<()> {
        self.nl.route_replace(dst, index)
    }
    fn route_del(&self, dst: Ipv4Subnet, index: u32) -> Result<()> {
        self.nl.route_del(dst, index)
    }
}

/// `run_dir/name`.
pub fn ns_path(run_dir: &Path, name: &str) -> PathBuf {
    netns::path(run_dir, name)
}
