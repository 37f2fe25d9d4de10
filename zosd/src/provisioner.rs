//! The engine's [`Provisioner`] on a real node: volumes from zos-storage, tenant
//! networks from zos-network, root filesystems from zos-flist ([`crate::rootfs`]),
//! containers from zos-container ([`crate::workloads`]) and micro-VMs from zos-vm
//! ([`crate::vms`]). Wiring only: each call maps
//! names ([`crate::kernel_names`]) and hands over to the crate that owns the concern,
//! on a blocking thread (those APIs are synchronous).

use std::path::PathBuf;
use std::sync::Arc;

use zos_contract::deployment::{DiskKind, Protocol, Volume, WorkloadKind};
use zos_engine::{
    Inventory, NetworkPlan, ProvisionError, Provisioner, WorkloadPlan, WorkloadState,
    WorkloadStatus,
};
use zos_network::{
    EgressPolicy, IpNet, Ipv4Subnet, Network, PortForward, Proto, TenantNetwork,
    Workload as NetWorkload, WorkloadAttachment,
};
use zos_storage::{PoolKind, Storage};

use crate::kernel_names::KernelNames;
use crate::rootfs::Rootfs;
use crate::vms::{VmPlan, Vms};
use crate::workloads::{ContainerPlan, Workloads};

pub struct NodeProvisioner {
    inner: Arc<Inner>,
}

struct Inner {
    storage: Arc<Storage>,
    network: Network,
    rootfs: Rootfs,
    workloads: Workloads,
    vms: Vms,
    names: KernelNames,
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
    move |e| ProvisionError::new(step, name, e.to_string())
}

impl NodeProvisioner {
    pub fn new(
        storage: Arc<Storage>,
        network: Network,
        rootfs: Rootfs,
        workloads: Workloads,
        vms: Vms,
        names: KernelNames,
    ) -> Self {
        NodeProvisioner {
            inner: Arc::new(Inner {
                storage,
                network,
                rootfs,
                workloads,
                vms,
                names,
            }),
        }
    }
}

/// The tap of a VM workload (its kernel name, prefixed).
fn tap_name(wl_id: &str) -> String {
    format!("t-{wl_id}")
}

impl Inner {
    /// The VM with this node-wide name, by its kernel name, if one exists.
    fn vm_id(&self, name: &str) -> Option<String> {
        let id = self.names.resolve("wl", name).ok()?;
        self.vms.ids().contains(&id).then_some(id)
    }

    /// Starts a VM workload: its verified flist, its network tap, its disks.
    fn start_vm(&self, plan: &WorkloadPlan) -> Result<WorkloadStatus, ProvisionError> {
        let id = self
            .names
            .kernel("wl", &plan.name)
            .map_err(io_err("workload", &plan.name))?;
        // A tampered kernel block fails here, before QEMU ever starts.
        let tree = self.rootfs.unpacked(&plan.name, &plan.workload.flist)?;
        let nic = match self.attachment(plan)? {
            Some((net_plan, wl)) => {
                let net = self.tenant(&net_plan)?;
                self.network
                    .attach(&net, &wl)
                    .map_err(|e| ProvisionError::new("network", &plan.name, e.to_string()))?;
                let WorkloadAttachment::Tap { name } = wl.attachment else {
                    unreachable!("a VM is attached by a tap");
                };
                Some((
                    name,
                    self.network.netns_path(&self.network.tenant_netns(&net.id)),
                ))
            }
            None => None,
        };
        self.vms.start(&VmPlan {
            plan,
            tree,
            id,
            nic,
        })
    }

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

    /// The workload's network and its attachment (a veth into its own namespace, or
    /// a tap for a VM).
    fn attachment(
        &self,
        plan: &WorkloadPlan,
    ) -> Result<Option<(NetworkPlan, NetWorkload)>, ProvisionError> {
        let Some((net, ip)) = &plan.network else {
            return Ok(None);
        };
        let net_id = self
            .names
            .kernel("net", &net.name)
            .map_err(io_err("network", &net.name))?;
        let wl_id = self
            .names
            .kernel("wl", &plan.name)
            .map_err(io_err("workload", &plan.name))?;
        let attachment = match plan.workload.kind {
            WorkloadKind::Container => WorkloadAttachment::Veth {
                netns: self.network.workload_netns(&net_id, &wl_id),
                ip: *ip,
            },
            WorkloadKind::Vm => WorkloadAttachment::Tap {
                name: tap_name(&wl_id),
            },
        };
        Ok(Some((
            net.clone(),
            NetWorkload {
                id: wl_id,
                attachment,
            },
        )))
    }
}

impl Provisioner for NodeProvisioner {
    async fn ensure_volume(&self, name: &str, spec: &Volume) -> Result<PathBuf, ProvisionError> {
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
        let inner = self.inner.clone();
        let plan = plan.clone();
        blocking("workload", &plan.name.clone(), move || {
            if plan.workload.kind == WorkloadKind::Vm {
                // zos-vm finds a running VM by its pidfile and never starts it twice.
                return inner.start_vm(&plan);
            }
            if let Some(status) = inner.workloads.running(&plan.name) {
                // Re-adoption: it runs already; never start it twice.
                return Ok(status);
            }
            let wl_id = inner
                .names
                .kernel("wl", &plan.name)
                .map_err(io_err("workload", &plan.name))?;
            let rootfs = inner.rootfs.ensure(
                &plan.name,
                &wl_id,
                &plan.workload.flist,
                plan.workload.disk_mib,
            )?;
            let netns = match inner.attachment(&plan)? {
                Some((net_plan, wl)) => {
                    let net = inner.tenant(&net_plan)?;
                    inner
                        .network
                        .attach(&net, &wl)
                        .map_err(|e| ProvisionError::new("network", &plan.name, e.to_string()))?;
                    match &wl.attachment {
                        WorkloadAttachment::Veth { netns, .. } => {
                            Some(inner.network.netns_path(netns))
                        }
                        WorkloadAttachment::Tap { .. } => None,
                    }
                }
                None => None,
            };
            inner.workloads.start(&ContainerPlan {
                plan: &plan,
                rootfs,
                netns,
            })
        })
        .await
    }

    async fn restart_workload(
        &self,
        plan: &WorkloadPlan,
    ) -> Result<WorkloadStatus, ProvisionError> {
        // The root filesystem and the network attachment persist: ensure_workload finds
        // them in place and only starts the process again.
        self.ensure_workload(plan).await
    }

    async fn remove_workload(&self, name: &str) -> Result<(), ProvisionError> {
        let inner = self.inner.clone();
        let name = name.to_string();
        blocking("workload", &name.clone(), move || {
            inner.workloads.remove(&name)?;
            let wl_id = inner.names.resolve("wl", &name).ok();
            inner.rootfs.remove(&name, wl_id.as_deref())?;
            let Some(wl_id) = wl_id else {
                return Ok(());
            };
            inner.vms.remove(&name, &wl_id)?;
            // Its network attachment: the namespace and bridge port (a container) or
            // the tap (a VM) named after it.
            if let Ok(inventory) = inner.network.list() {
                for net_id in inventory.networks() {
                    let veth = WorkloadAttachment::Veth {
                        netns: inner.network.workload_netns(&net_id, &wl_id),
                        ip: std::net::Ipv4Addr::UNSPECIFIED,
                    };
                    let tap = WorkloadAttachment::Tap {
                        name: tap_name(&wl_id),
                    };
                    for attachment in [veth, tap] {
                        let wl = NetWorkload {
                            id: wl_id.clone(),
                            attachment,
                        };
                        let _ = inner.network.detach(&net_id, &wl);
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn workload_status(&self, name: &str) -> Result<Option<WorkloadStatus>, ProvisionError> {
        let inner = self.inner.clone();
        let name = name.to_string();
        blocking("workload", &name.clone(), move || {
            Ok(match inner.vm_id(&name) {
                Some(id) => inner.vms.status(&id),
                None => inner.workloads.status(&name),
            })
        })
        .await
    }

    async fn workload_state(&self, name: &str) -> Result<Option<WorkloadState>, ProvisionError> {
        let inner = self.inner.clone();
        let name = name.to_string();
        blocking("workload", &name.clone(), move || {
            Ok(match inner.vm_id(&name) {
                Some(id) => inner.vms.state(&id),
                None => inner.workloads.state(&name),
            })
        })
        .await
    }

    async fn inventory(&self) -> Result<Inventory, ProvisionError> {
        let inner = self.inner.clone();
        blocking("inventory", "node", move || {
            let mut inv = Inventory::default();
            let volumes = inner
                .storage
                .volumes()
                .map_err(|e| ProvisionError::new("volume", "*", e.to_string()))?;
            // A container's root filesystem is a volume of the workload, not of its
            // contract: reported as that workload.
            let (roots, volumes): (Vec<_>, Vec<_>) = volumes
                .iter()
                .partition(|v| v.name.starts_with(crate::rootfs::VOLUME_PREFIX));
            inv.volumes = volumes
                .iter()
                .map(|v| inner.names.node_wide("vol", &v.name))
                .collect();
            let roots: Vec<String> = roots
                .iter()
                .map(|v| {
                    let id = &v.name[crate::rootfs::VOLUME_PREFIX.len()..];
                    inner.names.node_wide("wl", id)
                })
                .collect();
            let nets = inner
                .network
                .list()
                .map_err(|e| ProvisionError::new("network", "*", e.to_string()))?;
            inv.networks = nets
                .networks()
                .iter()
                .map(|id| inner.names.node_wide("net", id))
                .collect();
            inv.workloads = inner
                .workloads
                .names()
                .into_iter()
                .chain(inner.rootfs.workloads())
                .chain(roots)
                .chain(
                    inner
                        .vms
                        .ids()
                        .iter()
                        .map(|id| inner.names.node_wide("wl", id)),
                )
                .collect();
            Ok(inv)
        })
        .await
    }
}
