//! The engine's [`Provisioner`] on a real node: volumes from zos-storage, tenant
//! networks from zos-network, and workloads from the runtime of their kind
//! ([`Runtimes`]: zos-container's for containers, zos-vm's for micro-VMs). Wiring
//! only: each call maps names ([`KernelNames`]), attaches a workload to its
//! network in the style its runtime asks for, and hands over to the crate that owns
//! the concern, on a blocking thread (those APIs are synchronous).

use std::path::PathBuf;
use std::sync::Arc;

use zos_container::ContainerRuntime;
use zos_contract::deployment::{DiskKind, Protocol, Volume, WorkloadKind};
use zos_engine::{
    Inventory, KernelNames, MeshPeerState, MeshPlan, MeshState, NetworkPlan, Nic, NicStyle,
    Placement, ProvisionError, Provisioner, Runtimes, WireguardMissing, WorkloadPlan,
    WorkloadRuntime, WorkloadState, WorkloadStatus,
};
use zos_network::{
    EgressPolicy, IpNet, Ipv4Subnet, MeshConfig, MeshPeer, Network, PortForward, Proto,
    TenantNetwork, TenantPort, WorkloadAttachment,
};
use zos_storage::{PoolKind, Storage};
use zos_vm::VmRuntime;

use crate::logs::TenantLogs;
use crate::quiet::{Quiet, QUIET_AFTER};

pub struct NodeProvisioner {
    inner: Arc<Inner>,
    /// Permits to start a workload: see [`WORKLOAD_STARTS`].
    starts: Arc<tokio::sync::Semaphore>,
    /// Held by every call that makes or removes something: memory goes back to the
    /// kernel once they have all ended (a burst's garbage, see [`crate::quiet`]).
    quiet: Quiet,
}

/// How many workloads start (or restart) at once. A start is the long blocking call (a
/// flist fetched and unpacked, a runtime process, a VM's first boot): at most a
/// quarter of the blocking threads (`BLOCKING_THREADS`, main.rs), so the short calls
/// (status reads, the notary directory's writes) always find one free.
pub const WORKLOAD_STARTS: usize = 16;

struct Inner {
    storage: Arc<Storage>,
    network: Network,
    runtimes: Runtimes,
    names: Arc<KernelNames>,
    /// Where each contract's workload lines go.
    tenant_logs: Arc<TenantLogs>,
    /// The runtimes again, by their own types: where they put a workload's cgroup.
    containers: Arc<ContainerRuntime>,
    vms: Arc<VmRuntime>,
}

/// Runs `f` on a blocking thread; a panic there is a provisioning error, not a crash.
async fn blocking<T: Send + 'static>(
    step: &'static str,
    name: &str,
    f: impl FnOnce() -> Result<T, ProvisionError> + Send + 'static,
) -> Result<T, ProvisionError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(ProvisionError::new(step, name, format!("panicked: {e}"))))
}

fn io_err<'a>(
    step: &'static str,
    name: &'a str,
) -> impl FnOnce(std::io::Error) -> ProvisionError + 'a {
    move |e| ProvisionError::from_source(step, name, e)
}

impl NodeProvisioner {
    /// Waits (without a thread) for a workload start's turn; held until it is done.
    async fn start_turn(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.starts
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    pub fn new(
        storage: Arc<Storage>,
        network: Network,
        names: Arc<KernelNames>,
        containers: ContainerRuntime,
        vms: VmRuntime,
        tenant_logs: Arc<TenantLogs>,
    ) -> Self {
        let containers = Arc::new(containers);
        let vms = Arc::new(vms);
        let (c, v): (Arc<dyn WorkloadRuntime>, Arc<dyn WorkloadRuntime>) =
            (containers.clone(), vms.clone());
        // The one match on the kind: a new kind is a runtime and an arm here.
        let runtimes = Runtimes::new(move |kind| match kind {
            WorkloadKind::Container => c.clone(),
            WorkloadKind::Vm => v.clone(),
        });
        NodeProvisioner {
            starts: Arc::new(tokio::sync::Semaphore::new(WORKLOAD_STARTS)),
            quiet: Quiet::new(QUIET_AFTER, zos_init::release_free_memory),
            inner: Arc::new(Inner {
                storage,
                network,
                runtimes,
                names,
                tenant_logs,
                containers,
                vms,
            }),
        }
    }
}

impl NodeProvisioner {
    /// Where the workloads' cgroups are, for their metrics (a handle that outlives the
    /// provisioner's move into the engine).
    pub fn cgroups(&self) -> WorkloadCgroups {
        WorkloadCgroups {
            names: self.inner.names.clone(),
            containers: self.inner.containers.clone(),
            vms: self.inner.vms.clone(),
        }
    }
}

/// The cgroup parents of one node's workloads: every cgroup the node makes is under
/// one of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupParents {
    /// zos-container's `RuntimeConfig::cgroup_parent`: `zos/<scope>`.
    pub containers: String,
    /// zos-vm's `QemuConfig::cgroup_parent`: `zos-vm/<scope>`.
    pub vms: String,
}

impl CgroupParents {
    /// The parents of the node whose `[network] prefix` is `prefix`, its scope being
    /// the prefix without its trailing '-' (production's `n-`: `zos/n`, `zos-vm/n`).
    ///
    /// Why the network prefix: it is what keeps one node's kernel objects apart from
    /// another's on one host already (namespaces, links), so nodes sharing a host (the
    /// grid tests, the demo) have different ones, while a workload's cgroup leaf is
    /// the same on every node running it (a container's node-wide name, a VM's kernel
    /// id, a hash of that name). Under one parent for all, one node's teardown of its
    /// copy (SIGKILL to the cgroup, its removal) would kill another node's copy of the
    /// same replica. Network prefixes end with '-', so stripping one is one-to-one.
    pub fn of_network_prefix(prefix: &str) -> anyhow::Result<CgroupParents> {
        use anyhow::Context as _;
        let scope = prefix.strip_suffix('-').unwrap_or(prefix);
        // One name: a scope with a '/' would nest in another node's.
        anyhow::ensure!(
            !scope.contains('/'),
            "network prefix {prefix:?}: a '/' in a cgroup scope"
        );
        let parents = CgroupParents {
            containers: format!("zos/{scope}"),
            vms: format!("zos-vm/{scope}"),
        };
        zos_container::spec::validate_cgroup_parent(&parents.containers)
            .with_context(|| format!("the cgroup scope of network prefix {prefix:?}"))?;
        Ok(parents)
    }
}

/// Finds a workload's cgroup from its node-wide name, the way its runtime makes it:
/// each runtime says where it puts one (a container's under the container runtime's
/// parent by its node-wide name, a VM's QEMU under the hypervisor's parent by its
/// kernel id), so the metrics read what the runtimes made.
#[derive(Clone)]
pub struct WorkloadCgroups {
    names: Arc<KernelNames>,
    containers: Arc<ContainerRuntime>,
    vms: Arc<VmRuntime>,
}

impl WorkloadCgroups {
    /// The cgroup path of workload `name` of `kind`, relative to each hierarchy's root.
    pub fn path(&self, name: &str, kind: WorkloadKind) -> Option<PathBuf> {
        use zos_engine::KernelIds as _;
        match kind {
            WorkloadKind::Container => Some(self.containers.cgroup_path(name)),
            WorkloadKind::Vm => self.vms.cgroup_path(&self.names.kernel_id(name)?),
        }
    }
}

/// zos-network's error for network `name`: a kernel without WireGuard is permanent,
/// with its typed source (the status's code `wireguard_missing`).
fn net_err(name: &str, e: zos_network::Error) -> ProvisionError {
    match e {
        zos_network::Error::WireguardMissing => {
            ProvisionError::from_source("network", name, WireguardMissing).permanent()
        }
        e => ProvisionError::from_source("network", name, e),
    }
}

/// A link read back by zos-network, in the engine's types.
fn mesh_state(s: zos_network::MeshState) -> MeshState {
    MeshState {
        listen_port: s.listen_port,
        public_key: s.public_key,
        peers: s
            .peers
            .into_iter()
            .map(|p| MeshPeerState {
                public_key: p.public_key,
                endpoint: p.endpoint,
                last_handshake: p.last_handshake,
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
            })
            .collect(),
    }
}

/// The tap of a VM workload (its kernel name, prefixed).
fn tap_name(wl_id: &str) -> String {
    format!("t-{wl_id}")
}

impl Inner {
    fn tenant(&self, plan: &NetworkPlan) -> Result<TenantNetwork, ProvisionError> {
        let id = self
            .names
            .kernel("net", &plan.name)
            .map_err(io_err("network", &plan.name))?;
        let subnet = Ipv4Subnet::new(plan.subnet, plan.prefix_len)
            .map_err(|e| ProvisionError::new("network", &plan.name, e.to_string()).permanent())?;
        let ports = plan
            .forwards
            .iter()
            .map(|(ip, p)| PortForward {
                proto: match p.protocol {
                    Protocol::Tcp => Proto::Tcp,
                    Protocol::Udp => Proto::Udp,
                },
                public_port: p.public,
                workload_ip: *ip,
                port: p.port,
            })
            .collect();
        Ok(TenantNetwork {
            id,
            subnet,
            gateway: plan.gateway,
            ports,
        })
    }

    /// What the workload's runtime is handed: its kernel id and, when it is on a
    /// tenant network, its attachment there, made in the style its runtime asks for
    /// (a veth into its own namespace, or a tap on the tenant's bridge).
    fn placement(&self, plan: &WorkloadPlan) -> Result<Placement, ProvisionError> {
        let kernel_id = self
            .names
            .kernel("wl", &plan.name)
            .map_err(io_err("workload", &plan.name))?;
        let runtime = self.runtimes.of(plan.workload.kind);
        // First its user namespace: its own network namespace is made inside it.
        let userns = runtime.user_namespace(plan, &kernel_id)?;
        let Some((net_plan, ip)) = &plan.network else {
            return Ok(Placement {
                kernel_id,
                nic: None,
                userns,
            });
        };
        let net = self.tenant(net_plan)?;
        let (attachment, nic) = match runtime.nic_style() {
            NicStyle::Veth => {
                let netns = self.network.workload_netns(&net.id, &kernel_id);
                let nic = Nic {
                    netns: self.network.netns_path(&netns),
                    tap: None,
                };
                let owner = userns.clone();
                (
                    WorkloadAttachment::Veth {
                        netns,
                        ip: *ip,
                        owner,
                    },
                    nic,
                )
            }
            NicStyle::Tap => {
                let name = tap_name(&kernel_id);
                let nic = Nic {
                    netns: self.network.netns_path(&self.network.tenant_netns(&net.id)),
                    tap: Some(name.clone()),
                };
                (WorkloadAttachment::Tap { name }, nic)
            }
        };
        let port = TenantPort {
            id: kernel_id.clone(),
            attachment,
        };
        self.network
            .attach(&net, &port)
            .map_err(|e| ProvisionError::from_source("network", &plan.name, e))?;
        Ok(Placement {
            kernel_id,
            nic: Some(nic),
            userns,
        })
    }

    /// Removes every network attachment named after workload `wl_id`: its veth
    /// namespaces, found by name in one read of the namespace directory, and unless
    /// it is known to join by veth (`nic`), a tap of its name on any tenant network.
    /// Nothing here walks every network's links and tables ([`Network::list`]): with
    /// N networks on a node, that made each removal O(N) netlink sessions and an `nft`
    /// listing, and cancelling N contracts O(N^2) (docs/benchmarks.md, "500 contracts").
    fn detach_everywhere(&self, wl_id: &str, nic: Option<NicStyle>) {
        let Ok(names) = self.network.namespaces() else {
            return;
        };
        for net_id in self.network.veth_networks_of(&names, wl_id) {
            let port = TenantPort {
                id: wl_id.to_string(),
                attachment: WorkloadAttachment::Veth {
                    netns: self.network.workload_netns(&net_id, wl_id),
                    ip: std::net::Ipv4Addr::UNSPECIFIED,
                    owner: None,
                },
            };
            let _ = self.network.detach(&net_id, &port);
        }
        if nic == Some(NicStyle::Veth) {
            return;
        }
        for net_id in &names.tenant_namespaces {
            let port = TenantPort {
                id: wl_id.to_string(),
                attachment: WorkloadAttachment::Tap {
                    name: tap_name(wl_id),
                },
            };
            let _ = self.network.detach(net_id, &port);
        }
    }
}

impl Provisioner for NodeProvisioner {
    async fn ensure_volume(&self, name: &str, spec: &Volume) -> Result<PathBuf, ProvisionError> {
        let _busy = self.quiet.busy();
        let inner = self.inner.clone();
        let (name, spec) = (name.to_string(), spec.clone());
        blocking("volume", &name.clone(), move || {
            let k = inner
                .names
                .kernel("vol", &name)
                .map_err(io_err("volume", &name))?;
            let kind = match spec.disk {
                DiskKind::Ssd => PoolKind::Ssd,
                DiskKind::Hdd => PoolKind::Hdd,
            };
            inner
                .storage
                .volume_ensure(&k, spec.size_mib << 20, kind)
                .map(|v| v.path)
                // A lost volume's data is gone: retrying would only make an empty one.
                .map_err(|e| {
                    ProvisionError::new("volume", &name, e.to_string())
                        .permanent_if(e.is_permanent())
                })
        })
        .await
    }

    async fn remove_volume(&self, name: &str) -> Result<(), ProvisionError> {
        let _busy = self.quiet.busy();
        let inner = self.inner.clone();
        let name = name.to_string();
        blocking("volume", &name.clone(), move || {
            let k = inner
                .names
                .resolve("vol", &name)
                .map_err(io_err("volume", &name))?;
            inner
                .storage
                .volume_remove(&k)
                .map(|_| ())
                .map_err(|e| ProvisionError::new("volume", &name, e.to_string()))
        })
        .await
    }

    async fn ensure_network(&self, plan: &NetworkPlan) -> Result<(), ProvisionError> {
        let _busy = self.quiet.busy();
        let inner = self.inner.clone();
        let plan = plan.clone();
        blocking("network", &plan.name.clone(), move || {
            let tenant = inner.tenant(&plan)?;
            // What the signed deployment opens beyond the internet; checked by
            // zos-contract, so a refusal here is permanent.
            let allow = plan
                .egress_allow
                .iter()
                .map(|&(addr, len)| IpNet::new(addr.into(), len))
                .collect::<Result<_, _>>()
                .map_err(|e| {
                    ProvisionError::new("network", &plan.name, e.to_string()).permanent()
                })?;
            inner
                .network
                .ensure_with(&tenant, &EgressPolicy { allow })
                .map_err(|e| ProvisionError::new("network", &plan.name, e.to_string()))
        })
        .await
    }

    async fn remove_network(&self, name: &str) -> Result<(), ProvisionError> {
        let _busy = self.quiet.busy();
        let inner = self.inner.clone();
        let name = name.to_string();
        blocking("network", &name.clone(), move || {
            let id = inner
                .names
                .resolve("net", &name)
                .map_err(io_err("network", &name))?;
            inner
                .network
                .remove(&id)
                .map(|_| ())
                .map_err(|e| ProvisionError::new("network", &name, e.to_string()))
        })
        .await
    }

    async fn ensure_workload(&self, plan: &WorkloadPlan) -> Result<WorkloadStatus, ProvisionError> {
        let _busy = self.quiet.busy();
        let inner = self.inner.clone();
        let plan = plan.clone();
        let _turn = self.start_turn().await;
        blocking("workload", &plan.name.clone(), move || {
            // The attachment converges (a no-op when in place); the runtime finds a
            // running workload and never starts it twice (re-adoption).
            inner.tenant_logs.bind(&plan.name, plan.logs.as_ref());
            let placement = inner.placement(&plan)?;
            inner.runtimes.ensure(plan.workload.kind, &plan, &placement)
        })
        .await
    }

    async fn restart_workload(
        &self,
        plan: &WorkloadPlan,
    ) -> Result<WorkloadStatus, ProvisionError> {
        let _busy = self.quiet.busy();
        let inner = self.inner.clone();
        let plan = plan.clone();
        let _turn = self.start_turn().await;
        blocking("workload", &plan.name.clone(), move || {
            // The attachment persists; placement finds it in place.
            inner.tenant_logs.bind(&plan.name, plan.logs.as_ref());
            let placement = inner.placement(&plan)?;
            inner
                .runtimes
                .restart(plan.workload.kind, &plan, &placement)
        })
        .await
    }

    async fn remove_workload(&self, name: &str) -> Result<(), ProvisionError> {
        let _busy = self.quiet.busy();
        let inner = self.inner.clone();
        let name = name.to_string();
        blocking("workload", &name.clone(), move || {
            // Asked before the removal, which forgets it.
            let nic = inner.runtimes.holding(&name).map(|(_, r)| r.nic_style());
            inner.runtimes.remove(&name)?;
            if let Ok(wl_id) = inner.names.resolve("wl", &name) {
                inner.detach_everywhere(&wl_id, nic);
            }
            Ok(())
        })
        .await
    }

    async fn workload_status(&self, name: &str) -> Result<Option<WorkloadStatus>, ProvisionError> {
        let inner = self.inner.clone();
        let name = name.to_string();
        blocking("workload", &name.clone(), move || {
            Ok(inner.runtimes.status(&name))
        })
        .await
    }

    async fn workload_state(&self, name: &str) -> Result<Option<WorkloadState>, ProvisionError> {
        let inner = self.inner.clone();
        let name = name.to_string();
        blocking("workload", &name.clone(), move || {
            Ok(inner.runtimes.state(&name))
        })
        .await
    }

    async fn inventory(&self) -> Result<Inventory, ProvisionError> {
        let inner = self.inner.clone();
        blocking("inventory", "node", move || {
            let volumes = inner
                .storage
                .volumes()
                .map_err(|e| ProvisionError::from_source("volume", "*", e))?;
            let nets = inner
                .network
                .list()
                .map_err(|e| ProvisionError::from_source("network", "*", e))?;
            Ok(Inventory {
                // A container's root and a VM's tree are subvolumes of the workload,
                // not volumes of its contract: their runtimes report them as the
                // workload (in `names`).
                volumes: volumes
                    .iter()
                    .filter(|v| {
                        !v.name.starts_with(zos_container::rootfs::VOLUME_PREFIX)
                            && !v.name.starts_with(zos_vm::TREE_VOLUME_PREFIX)
                    })
                    .map(|v| inner.names.node_wide("vol", &v.name))
                    .collect(),
                networks: nets
                    .networks()
                    .iter()
                    .map(|id| inner.names.node_wide("net", id))
                    .collect(),
                workloads: inner.runtimes.names(),
            })
        })
        .await
    }

    async fn wireguard_available(&self) -> bool {
        let inner = self.inner.clone();
        blocking("network", "wireguard", move || {
            Ok(inner.network.wireguard_available())
        })
        .await
        .unwrap_or(false)
    }

    async fn ensure_mesh(
        &self,
        plan: &NetworkPlan,
        mesh: &MeshPlan,
    ) -> Result<MeshState, ProvisionError> {
        let _busy = self.quiet.busy();
        let inner = self.inner.clone();
        let (plan, mesh) = (plan.clone(), mesh.clone());
        blocking("network", &plan.name.clone(), move || {
            let name = plan.name.as_str();
            let tenant = inner.tenant(&plan)?;
            let subnet = |(addr, len): (std::net::Ipv4Addr, u8)| {
                Ipv4Subnet::new(addr, len)
                    .map_err(|e| ProvisionError::new("network", name, e.to_string()).permanent())
            };
            let config = MeshConfig {
                range: subnet(mesh.range)?,
                private_key: mesh.private_key,
                peers: mesh
                    .peers
                    .iter()
                    .map(|p| {
                        Ok(MeshPeer {
                            public_key: p.public_key,
                            endpoint: p.endpoint,
                            allowed: subnet(p.allowed)?,
                            keepalive_s: p.keepalive_s,
                        })
                    })
                    .collect::<Result<_, ProvisionError>>()?,
            };
            inner
                .network
                .ensure_mesh(&tenant, &config)
                .map(mesh_state)
                .map_err(|e| net_err(name, e))
        })
        .await
    }

    async fn mesh_state(&self, name: &str) -> Result<Option<MeshState>, ProvisionError> {
        let inner = self.inner.clone();
        let name = name.to_string();
        blocking("network", &name.clone(), move || {
            // A network the name map does not know has no link.
            let Ok(id) = inner.names.resolve("net", &name) else {
                return Ok(None);
            };
            inner
                .network
                .mesh_state(&id)
                .map(|s| s.map(mesh_state))
                .map_err(|e| net_err(&name, e))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::CgroupParents;

    #[test]
    fn a_kernel_without_wireguard_is_a_permanent_typed_error() {
        let e = super::net_err("web.net", zos_network::Error::WireguardMissing);
        assert!(e.is_permanent());
        assert!(e
            .source
            .downcast_ref::<zos_engine::WireguardMissing>()
            .is_some());
        assert_eq!(
            e.to_string(),
            "network web.net: this node's kernel has no WireGuard: a network across nodes needs it"
        );
        let other = super::net_err("web.net", zos_network::Error::NoUplink("up0".into()));
        assert!(!other.is_permanent());
    }

    #[test]
    fn each_network_prefix_is_its_own_cgroup_scope() {
        let n = CgroupParents::of_network_prefix("n-").unwrap();
        assert_eq!(n.containers, "zos/n");
        assert_eq!(n.vms, "zos-vm/n");
        // Two nodes of one host (the tests' prefixes): never one parent.
        let a = CgroupParents::of_network_prefix("zt-a1b2-").unwrap();
        let b = CgroupParents::of_network_prefix("zt-a1b3-").unwrap();
        assert_eq!(a.containers, "zos/zt-a1b2");
        assert_ne!(a.containers, b.containers);
        assert_ne!(a.vms, b.vms);
        // One '-' only is stripped: "n-" and "n--" stay apart.
        let nn = CgroupParents::of_network_prefix("n--").unwrap();
        assert_ne!(nn, n);
        // A prefix that leaves no plain name is refused, not turned into "zos/".
        for bad in ["-", "..-", "a/b-"] {
            assert!(CgroupParents::of_network_prefix(bad).is_err(), "{bad:?}");
        }
    }
}
