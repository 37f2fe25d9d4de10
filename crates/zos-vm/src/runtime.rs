//! [`VmRuntime`]: micro-VM workloads as the engine runs them
//! ([`zos_engine::WorkloadRuntime`]). The engine's plan and the VM flist's verified tree
//! become a [`VmSpec`] for the [`Hypervisor`]; a running VM is found again after zosd
//! restarts (by its pidfile) and never started twice.
//!
//! What the guest gets ([`crate::guest`] for the words; docs/vm.md):
//! - its kernel (`/boot/vmlinux` or `/boot/vmlinuz`, with `/boot/initrd.img` if the
//!   flist has one) on `-M microvm`, its configuration on the kernel command line;
//! - or, for a flist with `/image.raw`, that image copied (reflinked where the pool
//!   allows) onto its root disk and booted by firmware on `-M q35`, its configuration
//!   in SMBIOS OEM strings;
//! - a root disk of `disk_mib` (a zos-storage vdisk named after its kernel id, `vda`),
//!   then one disk per mounted volume (a NOCOW file inside the volume, so it lives and
//!   dies with the volume).
//!
//! Where its tree lives: the flist a VM boots from is unpacked on a pool, in a
//! subvolume of its own ([`tree_volume`]: `vmtree-<kernel id>`, a zos-storage volume)
//! whose quota is [`tree_quota_mib`] of its `disk_mib`; the unpack is refused before
//! anything is written when the flist declares more, and a write past the quota fails
//! (EDQUOT). A tree that cannot be made leaves no subvolume behind. The subvolume is
//! removed with the VM.
//!
//! Every file QEMU gets is opened beneath its tree without following a link
//! ([`crate::beneath`]): a flist whose `/boot/vmlinux` is a symlink to a host file, or
//! a `vm-disk.raw` a container planted as a link in its volume, is refused (a
//! permanent error naming the file) and QEMU never sees the host file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zos_engine::{
    KernelIds, NicStyle, Placement, ProvisionError, WorkloadPlan, WorkloadRuntime, WorkloadState,
    WorkloadStatus,
};
use zos_flist::{DirAccess, PinnedTrees};
use zos_storage::{Backend, PoolKind, Storage};

use crate::beneath::{self, Access, TreeFile};
use crate::{guest, Boot, Disk, Hypervisor, Nic, VmSpec, VmState};

/// Lines of console shown in a status record.
pub const LOG_TAIL_LINES: usize = 20;
/// The file inside a volume that a VM sees as a disk.
pub const VOLUME_DISK: &str = "vm-disk.raw";
/// Prefix of the subvolume (zos-storage volume) holding a VM's unpacked flist. The
/// contracts' volumes are `<contract>.<name>` or `h-<hash>`: never this.
pub const TREE_VOLUME_PREFIX: &str = "vmtree-";
/// The least quota of a VM's tree (the sample VM's kernel and initrd are 65 MiB):
/// zos-contract's, which admission counts.
pub use zos_contract::deployment::VM_TREE_MIB;

/// The volume name of the tree of the VM with kernel id `id`.
pub fn tree_volume(id: &str) -> String {
    format!("{TREE_VOLUME_PREFIX}{id}")
}

/// The quota (MiB) of the tree of a VM declaring `disk_mib`: its `disk_mib` (a
/// disk-image flist's `/image.raw` fits its root disk) and at least [`VM_TREE_MIB`]
/// (a kernel flist). It is on the pool next to the root disk: what the VM takes on
/// SSD is `disk_mib + tree_quota_mib(disk_mib)`.
pub fn tree_quota_mib(disk_mib: u64) -> u64 {
    disk_mib.max(VM_TREE_MIB)
}

fn err(name: &str, e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::new("workload", name, e.to_string())
}

/// A zos-vm error as the provisioning error's typed source, permanent when it is.
fn vm_err(name: &str, e: crate::Error) -> ProvisionError {
    let permanent = e.is_permanent();
    ProvisionError::from_source("workload", name, e).permanent_if(permanent)
}

/// What the guest cannot be told: the contract's VM is wrong, for good.
fn guest_err(name: &str, e: guest::GuestError) -> ProvisionError {
    ProvisionError::from_source("workload", name, e).permanent()
}

/// A zos-storage error as the typed source, permanent when it is (a lost vdisk or
/// volume stays lost: never a blank one in its place).
fn storage_err(name: &str, e: zos_storage::Error) -> ProvisionError {
    let permanent = e.is_permanent();
    ProvisionError::from_source("workload", name, e).permanent_if(permanent)
}

/// The micro-VM [`WorkloadRuntime`]; see the module docs.
pub struct VmRuntime {
    hv: Arc<dyn Hypervisor>,
    storage: Arc<Storage>,
    /// Where `dir://` flist URLs and stores may point (the node's store roots).
    access: DirAccess,
    ids: Arc<dyn KernelIds>,
}

impl VmRuntime {
    /// VMs on `hv`, their disks and trees on `storage`'s pools, their flists fetched
    /// where `access` allows (`dir://` URLs and stores under the node's store roots),
    /// named by `ids`.
    pub fn new(
        hv: Arc<dyn Hypervisor>,
        storage: Arc<Storage>,
        access: DirAccess,
        ids: Arc<dyn KernelIds>,
    ) -> VmRuntime {
        VmRuntime {
            hv,
            storage,
            access,
            ids,
        }
    }

    /// The cgroup of the VM of kernel id `id` (relative to each hierarchy's root), as
    /// its hypervisor makes it.
    pub fn cgroup_path(&self, id: &str) -> Option<PathBuf> {
        self.hv.cgroup_path(id)
    }

    /// The verified tree of the VM's flist on its subvolume, made if missing. A tree
    /// that cannot be made (too large, tampered, a store down) leaves no subvolume
    /// behind unless the VM exists already.
    pub fn tree(&self, plan: &WorkloadPlan, id: &str) -> Result<PathBuf, ProvisionError> {
        let name = &plan.name;
        let quota = tree_quota_mib(plan.workload.disk_mib) << 20;
        let volume = tree_volume(id);
        let home = self
            .storage
            .volume_ensure(&volume, quota, PoolKind::Ssd)
            .map(|v| v.path)
            .map_err(|e| storage_err(name, e))?;
        let trees = PinnedTrees::new(home.join("flists"), home.join("trees"));
        match trees.ensure(&plan.workload.flist, &self.access, quota) {
            Ok(tree) => {
                // Trees of earlier versions of the flist: QEMU has read its kernel.
                trees.prune_except(&tree);
                Ok(tree)
            }
            Err(e) => {
                let permanent = e.is_permanent();
                if !self.hv.names().iter().any(|n| n == id) {
                    if let Err(rm) = self.storage.volume_remove(&volume) {
                        tracing::warn!(workload = %name, volume, error = %rm, "removing a VM tree that failed");
                    }
                }
                Err(ProvisionError::from_source("flist", name, e).permanent_if(permanent))
            }
        }
    }

    /// The spec of the VM: its boot, disks and NIC. Its root disk and volume disks are
    /// made here.
    pub fn spec(
        &self,
        plan: &WorkloadPlan,
        placement: &Placement,
        tree: &Path,
    ) -> Result<VmSpec, ProvisionError> {
        let w = &plan.workload;
        let name = &plan.name;
        let id = &placement.kernel_id;
        let words = guest::words(plan).map_err(|e| guest_err(name, e))?;
        let root_size = w.disk_mib << 20;
        let mut disks = Vec::new();
        let boot = if let Some(kernel) = self.kernel(name, tree)? {
            let initrd = self
                .tree_file(name, tree, "boot/initrd.img")?
                .map(|(f, _)| f);
            let cmdline = guest::kernel_cmdline(plan, &words).map_err(|e| guest_err(name, e))?;
            if root_size > 0 {
                disks.push(self.root_disk(name, id, root_size, None)?);
            }
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            }
        } else if let Some((_, image)) = self.tree_file(name, tree, "image.raw")? {
            disks.push(self.root_disk(name, id, root_size, Some(image))?);
            Boot::Disk {
                config: words.join(" "),
            }
        } else {
            return Err(err(
                name,
                "the VM flist has neither /boot/vmlinux, /boot/vmlinuz nor /image.raw",
            )
            .permanent());
        };
        for (source, _, read_only) in &plan.mounts {
            disks.push(Disk {
                file: self.volume_disk(name, source)?,
                read_only: *read_only,
            });
        }
        let nic = placement.nic.as_ref();
        Ok(VmSpec {
            name: id.clone(),
            boot,
            vcpus: w.cpu,
            memory_mib: w.memory_mib,
            disks,
            nic: nic.and_then(|n| n.tap.clone()).map(|tap| Nic {
                tap,
                mac: Nic::mac_for(id),
            }),
            netns: nic.map(|n| n.netns.clone()),
        })
    }

    /// `file` of the flist's tree, opened beneath it (no links, a regular file):
    /// `None` when the flist has no such file; a permanent error when it is a link, a
    /// device, a FIFO or a directory.
    fn tree_file(
        &self,
        name: &str,
        tree: &Path,
        file: &str,
    ) -> Result<Option<(TreeFile, std::fs::File)>, ProvisionError> {
        let f = TreeFile::new(tree, file);
        match beneath::open(&f, Access::Read) {
            Ok(opened) => Ok(Some((f, opened))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(vm_err(name, e)),
        }
    }

    /// The kernel: `/boot/vmlinux` (PVH) if the flist has one, else `/boot/vmlinuz`.
    /// A `/boot/vmlinux` that is not a regular file is refused, not skipped.
    fn kernel(&self, name: &str, tree: &Path) -> Result<Option<TreeFile>, ProvisionError> {
        for k in ["boot/vmlinux", "boot/vmlinuz"] {
            if let Some((f, _)) = self.tree_file(name, tree, k)? {
                return Ok(Some(f));
            }
        }
        Ok(None)
    }

    /// The root vdisk, created on first start; from `image` (copied, reflinked when
    /// the pool can) when the flist boots from a disk image.
    fn root_disk(
        &self,
        name: &str,
        vdisk: &str,
        size: u64,
        image: Option<std::fs::File>,
    ) -> Result<Disk, ProvisionError> {
        let fresh = self
            .storage
            .vdisks()
            .map_err(|e| err(name, e))?
            .iter()
            .all(|v| v.name != vdisk);
        let mut size = size;
        if let Some(image) = &image {
            let len = image.metadata().map_err(|e| err(name, e))?.len();
            if size < len {
                size = len;
            }
        }
        if size == 0 {
            return Err(err(name, "a disk-image VM needs disk_mib").permanent());
        }
        let disk = self
            .storage
            .vdisk_ensure(vdisk, size, PoolKind::Ssd)
            .map_err(|e| storage_err(name, e))?;
        let file = TreeFile::of(&disk.path)
            .ok_or_else(|| err(name, format!("vdisk path {}", disk.path.display())))?;
        if fresh {
            if let Some(image) = image {
                let to = beneath::open(&file, Access::ReadWrite).map_err(|e| vm_err(name, e))?;
                crate::copy_image(&image, &to)
                    .map_err(|e| err(name, format!("copying /image.raw: {e}")))?;
            }
        }
        Ok(Disk {
            file,
            read_only: false,
        })
    }

    /// The disk file inside a volume (see the module docs), sized a little under the
    /// volume's quota so the guest can fill it without hitting the quota mid-write.
    /// The file is opened beneath the volume, never through a link: a container of
    /// the contract can write into its volume, so `vm-disk.raw` may be anything it
    /// planted there (a symlink to `/dev/loop0` or to another tenant's file, a FIFO, a
    /// hard link): only a regular file with one link is used, else a permanent error.
    fn volume_disk(&self, name: &str, volume_dir: &Path) -> Result<TreeFile, ProvisionError> {
        let volume = self
            .storage
            .volumes()
            .map_err(|e| err(name, e))?
            .into_iter()
            .find(|v| v.path == volume_dir)
            .ok_or_else(|| err(name, format!("no volume at {}", volume_dir.display())))?;
        let tree = TreeFile::new(volume_dir, VOLUME_DISK);
        let path = tree.display_path();
        let (file, created) = beneath::open_or_create(&tree).map_err(|e| vm_err(name, e))?;
        if created {
            let size = (volume.size - volume.size / 32).saturating_sub(1 << 20) & !((1 << 20) - 1);
            // NOCOW before the first byte, as zos-storage makes its vdisks: a disk
            // image rewritten in place must not fragment into copy-on-write extents.
            self.storage
                .backend()
                .set_nocow(&file, &path)
                .map_err(|e| err(name, e))?;
            file.set_len(size)
                .and_then(|()| file.sync_all())
                .map_err(|e| err(name, e))?;
        }
        Ok(tree)
    }

    fn tail(&self, id: &str) -> Vec<String> {
        self.hv.console_tail(id, LOG_TAIL_LINES)
    }

    /// The state of the VM with kernel id `id`; `None` when none exists.
    pub(crate) fn state_of(&self, id: &str) -> Option<WorkloadState> {
        match self.hv.state(id) {
            Ok(Some(VmState::Running { .. })) => Some(WorkloadState::Running),
            // The exit status of a daemonized QEMU is not ours to collect.
            Ok(Some(VmState::Stopped)) => Some(WorkloadState::Exited {
                code: None,
                signal: None,
            }),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(vm = id, error = %e, "VM state");
                None
            }
        }
    }

    /// Kernel ids of the VMs this runtime has anything of: a hypervisor's run files,
    /// a tree subvolume, a root vdisk.
    pub fn ids(&self) -> BTreeSet<String> {
        let mut ids: BTreeSet<String> = self.hv.names().into_iter().collect();
        match self.storage.volumes() {
            Ok(volumes) => ids.extend(
                volumes
                    .iter()
                    .filter_map(|v| v.name.strip_prefix(TREE_VOLUME_PREFIX))
                    .map(str::to_owned),
            ),
            Err(e) => tracing::warn!(error = %e, "listing VM trees"),
        }
        match self.storage.vdisks() {
            Ok(vdisks) => ids.extend(vdisks.into_iter().map(|v| v.name)),
            Err(e) => tracing::warn!(error = %e, "listing VM disks"),
        }
        ids
    }
}

impl WorkloadRuntime for VmRuntime {
    fn nic_style(&self) -> NicStyle {
        NicStyle::Tap
    }

    /// The tree (fetched, verified and unpacked on its subvolume if missing), the
    /// disks, then QEMU; a running VM is found, not started twice.
    fn ensure(
        &self,
        plan: &WorkloadPlan,
        placement: &Placement,
    ) -> Result<WorkloadStatus, ProvisionError> {
        // A node that can start no VM refuses a new one before its tree is fetched
        // (a running one is left alone: it is found below, not started again).
        if self.state_of(&placement.kernel_id) != Some(WorkloadState::Running) {
            self.hv.available().map_err(|e| vm_err(&plan.name, e))?;
        }
        // A tampered kernel block fails here, before QEMU ever starts.
        let tree = self.tree(plan, &placement.kernel_id)?;
        self.start(plan, placement, &tree)
    }

    /// As [`WorkloadRuntime::ensure`]: its tree is on the pool already (returned as it
    /// is, nothing fetched) and its root disk is kept.
    fn restart(
        &self,
        plan: &WorkloadPlan,
        placement: &Placement,
    ) -> Result<WorkloadStatus, ProvisionError> {
        self.ensure(plan, placement)
    }

    /// QEMU and its run files, its root vdisk and its tree subvolume (volumes stay).
    fn remove(&self, name: &str) -> Result<(), ProvisionError> {
        match self.ids.kernel_id(name) {
            Some(id) => self.remove_id(name, &id),
            None => Ok(()),
        }
    }

    fn state(&self, name: &str) -> Option<WorkloadState> {
        self.state_of(&self.ids.kernel_id(name)?)
    }

    fn status(&self, name: &str) -> Option<WorkloadStatus> {
        self.status_of(&self.ids.kernel_id(name)?)
    }

    fn names(&self) -> BTreeSet<String> {
        self.ids()
            .iter()
            .map(|id| self.ids.workload_name(id))
            .collect()
    }
}

impl VmRuntime {
    /// Starts the VM from its verified `tree` (its disks first), or finds it running.
    pub fn start(
        &self,
        plan: &WorkloadPlan,
        placement: &Placement,
        tree: &Path,
    ) -> Result<WorkloadStatus, ProvisionError> {
        let name = &plan.name;
        let spec = self.spec(plan, placement, tree)?;
        let started = self.hv.start(&spec).map_err(|e| vm_err(name, e))?;
        tracing::info!(workload = %name, pid = started.pid, accel = %started.accel, "VM running");
        Ok(WorkloadStatus {
            state: WorkloadState::Running,
            address: plan.network.as_ref().map(|(_, ip)| *ip),
            log_tail: self.tail(&placement.kernel_id),
            runtime: Some(format!("qemu/{}", started.accel)),
        })
    }

    /// Stops the VM with kernel id `id` (workload `name`, for errors) and removes its
    /// run files, its root vdisk and its tree subvolume (volumes stay). Nothing of that
    /// id is fine.
    pub(crate) fn remove_id(&self, name: &str, id: &str) -> Result<(), ProvisionError> {
        if self.hv.names().iter().any(|n| n == id) {
            self.hv.remove(id).map_err(|e| vm_err(name, e))?;
        }
        self.storage
            .vdisk_remove(id)
            .map_err(|e| storage_err(name, e))?;
        self.storage
            .volume_remove(&tree_volume(id))
            .map_err(|e| storage_err(name, e))?;
        Ok(())
    }

    /// The state of the VM with kernel id `id` and its console's last lines; `None`
    /// when none exists.
    pub fn status_of(&self, id: &str) -> Option<WorkloadStatus> {
        self.state_of(id).map(|state| WorkloadStatus {
            state,
            address: None,
            log_tail: self.tail(id),
            runtime: self.hv.accel_of(id).map(|a| format!("qemu/{a}")),
        })
    }
}
