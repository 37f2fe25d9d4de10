//! Micro-VM workloads: the code is zos-vm's [`VmRuntime`] (the guest protocol, the
//! disks, the VM's tree on the pool). This adapter keeps the provisioner's calls until
//! it wires `VmRuntime` as the VM kind's `WorkloadRuntime` (then this file goes): it
//! starts a VM from a tree the provisioner unpacked, by kernel id.

use std::path::PathBuf;
use std::sync::Arc;

use zos_engine::{Placement, ProvisionError, WorkloadPlan, WorkloadState, WorkloadStatus};
use zos_storage::Storage;
use zos_vm::{Hypervisor, KernelIds, VmRuntime};

/// What the provisioner prepared for one VM.
pub struct VmPlan<'a> {
    pub plan: &'a WorkloadPlan,
    /// The verified, unpacked flist.
    pub tree: PathBuf,
    /// Its kernel name.
    pub id: String,
    /// Its tap and the tenant namespace the tap lives in.
    pub nic: Option<(String, PathBuf)>,
}

/// No name map: this adapter is called by kernel id only.
struct ByIdOnly;

impl KernelIds for ByIdOnly {
    fn id_of(&self, _: &str) -> Option<String> {
        None
    }
    fn name_of(&self, id: &str) -> String {
        format!("?.{id}")
    }
}

pub struct Vms(VmRuntime);

impl Vms {
    pub fn new(hv: Arc<dyn Hypervisor>, storage: Arc<Storage>) -> Vms {
        let none: [PathBuf; 0] = [];
        let access = zos_flist::DirAccess::under(none);
        Vms(VmRuntime::new(hv, storage, access, Arc::new(ByIdOnly)))
    }

    pub fn start(&self, p: &VmPlan<'_>) -> Result<WorkloadStatus, ProvisionError> {
        let placement = Placement {
            kernel_id: p.id.clone(),
            nic: p.nic.as_ref().map(|(tap, netns)| zos_engine::Nic {
                netns: netns.clone(),
                tap: Some(tap.clone()),
            }),
        };
        self.0.start(p.plan, &placement, &p.tree)
    }

    pub fn state(&self, id: &str) -> Option<WorkloadState> {
        self.0.state_of(id)
    }

    pub fn status(&self, id: &str) -> Option<WorkloadStatus> {
        self.0.status_of(id)
    }

    pub fn remove(&self, name: &str, id: &str) -> Result<(), ProvisionError> {
        self.0.remove_id(name, id)
    }

    pub fn ids(&self) -> Vec<String> {
        self.0.ids().into_iter().collect()
    }
}
