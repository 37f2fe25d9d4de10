//! Micro-VM workloads on zos-vm's hypervisor: the engine's plan and the verified,
//! unpacked VM flist become a [`VmSpec`]. Like containers, a running VM is found again
//! after zosd restarts (by its pidfile) and never started twice.
//!
//! What the guest gets (docs/vm.md):
//! - its kernel (`/boot/vmlinux` or `/boot/vmlinuz`, with `/boot/initrd.img` if the
//!   flist has one) on `-M microvm`, and on its kernel command line its name, address
//!   and gateway (`zos.name= zos.ip=A.B.C.D/N zos.gw=E.F.G.H`), the contract's `env`
//!   as `KEY=VALUE` words (the kernel hands those to init as its environment), where
//!   each extra disk should be mounted (`zos.disk.vdb=/data`), and the contract's
//!   `entrypoint` after `--` (init's arguments);
//! - or, for a flist with `/image.raw`, that image copied (reflinked where the pool
//!   allows) onto its root disk and booted by firmware on `-M q35`, the same words in
//!   SMBIOS OEM strings;
//! - a root disk of `disk_mib` (a zos-storage vdisk, `vda`), then one disk per mounted
//!   volume (a NOCOW file inside the volume, so it lives and dies with the volume).
//!
//! Every one of those files is opened beneath its tree without following a link
//! (zos-vm's `beneath`): a flist whose `/boot/vmlinux` is a symlink to a host file, or
//! a `vm-disk.raw` a container planted as a link in its volume, is refused (a
//! permanent error naming the file) and QEMU never sees the host file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zos_engine::{ProvisionError, WorkloadPlan, WorkloadState, WorkloadStatus};
use zos_storage::{Backend, PoolKind, Storage};
use zos_vm::{Access, Boot, Disk, Hypervisor, Nic, TreeFile, VmSpec, VmState};

/// Lines of console shown in a status record.
const LOG_TAIL_LINES: usize = 20;
/// The file inside a volume that a VM sees as a disk.
const VOLUME_DISK: &str = "vm-disk.raw";

fn err(name: &str, e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::new("workload", name, e.to_string())
}

/// What the provisioner prepared for one VM.
pub struct VmPlan<'a> {
    pub plan: &'a WorkloadPlan,
    /// The verified, unpacked flist (read only, shared by the VMs of that flist).
    pub tree: PathBuf,
    /// Its kernel name: the hypervisor's name for it (run directory, cgroup leaf) and
    /// the name of its root vdisk. Short, where the node-wide name may be long.
    pub id: String,
    /// Its tap and the tenant namespace the tap lives in.
    pub nic: Option<(String, PathBuf)>,
}

pub struct Vms {
    hv: Arc<dyn Hypervisor>,
    storage: Arc<Storage>,
}

impl Vms {
    pub fn new(hv: Arc<dyn Hypervisor>, storage: Arc<Storage>) -> Vms {
        Vms { hv, storage }
    }

    /// Starts the VM (its disks first), or finds it running.
    pub fn start(&self, p: &VmPlan<'_>) -> Result<WorkloadStatus, ProvisionError> {
        let name = &p.plan.name;
        let spec = self.spec(p)?;
        let started = self.hv.start(&spec).map_err(|e| {
            let pe = err(name, e.to_string());
            if e.is_permanent() {
                pe.permanent()
            } else {
                pe
            }
        })?;
        tracing::info!(workload = %name, pid = started.pid, accel = %started.accel, "VM running");
        Ok(WorkloadStatus {
            state: WorkloadState::Running,
            address: p.plan.network.as_ref().map(|(_, ip)| *ip),
            log_tail: self.tail(&p.id),
            runtime: Some(format!("qemu/{}", started.accel)),
        })
    }

    fn spec(&self, p: &VmPlan<'_>) -> Result<VmSpec, ProvisionError> {
        let w = &p.plan.workload;
        let name = &p.plan.name;
        let mut words = vec![format!("zos.name={}", w.name)];
        if let Some((net, ip)) = &p.plan.network {
            words.push(format!("zos.ip={ip}/{}", net.prefix_len));
            words.push(format!("zos.gw={}", net.gateway));
        }
        for (i, (_, target, _)) in p.plan.mounts.iter().enumerate() {
            // vda is the root disk; volumes follow in mount order.
            let dev = format!("vd{}", (b'b' + i as u8) as char);
            words.push(format!("zos.disk.{dev}={target}"));
        }
        for (k, v) in &w.env {
            words.push(format!("{k}={v}"));
        }
        if let Some(bad) = words.iter().find(|w| !cmdline_safe(w)) {
            return Err(err(
                name,
                format!("{bad:?} cannot go on a kernel command line (spaces, quotes or control characters)"),
            )
            .permanent());
        }

        let root_size = w.disk_mib << 20;
        let mut disks = Vec::new();
        let boot = if let Some(kernel) = self.kernel(p)? {
            let initrd = self.tree_file(p, "boot/initrd.img")?.map(|(f, _)| f);
            let mut cmdline = format!("console=ttyS0 quiet panic=-1 {}", words.join(" "));
            if !w.entrypoint.is_empty() {
                if let Some(bad) = w.entrypoint.iter().find(|a| !cmdline_safe(a)) {
                    return Err(err(
                        name,
                        format!("entrypoint argument {bad:?} cannot go on a kernel command line"),
                    )
                    .permanent());
                }
                cmdline.push_str(" -- ");
                cmdline.push_str(&w.entrypoint.join(" "));
            }
            if root_size > 0 {
                disks.push(self.root_disk(name, &p.id, root_size, None)?);
            }
            Boot::Kernel {
                kernel,
                initrd,
                cmdline,
            }
        } else if let Some((_, image)) = self.tree_file(p, "image.raw")? {
            disks.push(self.root_disk(name, &p.id, root_size, Some(image))?);
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
        for (source, _, read_only) in &p.plan.mounts {
            disks.push(Disk {
                file: self.volume_disk(name, source)?,
                read_only: *read_only,
            });
        }
        Ok(VmSpec {
            name: p.id.clone(),
            boot,
            vcpus: w.cpu,
            memory_mib: w.memory_mib,
            disks,
            nic: p.nic.as_ref().map(|(tap, _)| Nic {
                tap: tap.clone(),
                mac: Nic::mac_for(&p.id),
            }),
            netns: p.nic.as_ref().map(|(_, ns)| ns.clone()),
        })
    }

    /// `file` of the flist's tree, opened beneath it (no links, a regular file):
    /// `None` when the flist has no such file; a permanent error when it is a link, a
    /// device, a FIFO or a directory.
    fn tree_file(
        &self,
        p: &VmPlan<'_>,
        file: &str,
    ) -> Result<Option<(TreeFile, std::fs::File)>, ProvisionError> {
        let f = TreeFile::new(&p.tree, file);
        match zos_vm::beneath::open(&f, Access::Read) {
            Ok(opened) => Ok(Some((f, opened))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) if e.is_permanent() => Err(err(&p.plan.name, e).permanent()),
            Err(e) => Err(err(&p.plan.name, e)),
        }
    }

    /// The kernel: `/boot/vmlinux` (PVH) if the flist has one, else `/boot/vmlinuz`.
    /// A `/boot/vmlinux` that is not a regular file is refused, not skipped.
    fn kernel(&self, p: &VmPlan<'_>) -> Result<Option<TreeFile>, ProvisionError> {
        for k in ["boot/vmlinux", "boot/vmlinuz"] {
            if let Some((f, _)) = self.tree_file(p, k)? {
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
            // A lost vdisk stays lost: never a blank disk in its place.
            .map_err(|e| err(name, &e).permanent_if(e.is_permanent()))?;
        let file = TreeFile::of(&disk.path)
            .ok_or_else(|| err(name, format!("vdisk path {}", disk.path.display())))?;
        if fresh {
            if let Some(image) = image {
                let to =
                    zos_vm::beneath::open(&file, Access::ReadWrite).map_err(|e| err(name, e))?;
                zos_vm::copy_image(&image, &to)
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
        let (file, created) = zos_vm::beneath::open_or_create(&tree).map_err(|e| {
            if e.is_permanent() {
                err(name, e).permanent()
            } else {
                err(name, e)
            }
        })?;
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

    /// `None` when no VM with that kernel name exists.
    pub fn state(&self, id: &str) -> Option<WorkloadState> {
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

    pub fn status(&self, id: &str) -> Option<WorkloadStatus> {
        self.state(id).map(|state| WorkloadStatus {
            state,
            address: None,
            log_tail: self.tail(id),
            runtime: self.hv.accel_of(id).map(|a| format!("qemu/{a}")),
        })
    }

    /// Stops the VM and removes its run files and its root vdisk (volumes stay).
    /// Nothing of that name is fine.
    pub fn remove(&self, name: &str, id: &str) -> Result<(), ProvisionError> {
        if self.hv.names().iter().any(|n| n == id) {
            self.hv.remove(id).map_err(|e| err(name, e))?;
        }
        self.storage.vdisk_remove(id).map_err(|e| err(name, e))?;
        Ok(())
    }

    /// Kernel names of every VM the hypervisor has files for.
    pub fn ids(&self) -> Vec<String> {
        self.hv.names()
    }
}

/// A word the kernel's command-line parser keeps whole: no whitespace, quotes or
/// control characters.
fn cmdline_safe(word: &str) -> bool {
    !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '\'')
}

#[cfg(test)]
mod tests {
    use super::cmdline_safe;

    #[test]
    fn command_line_words_stay_whole() {
        assert!(cmdline_safe("ECHO_PORT=7"));
        assert!(cmdline_safe("zos.disk.vdb=/data"));
        for bad in ["", "a b", "x=\"y\"", "tab\there", "new\nline", "é"] {
            assert!(!cmdline_safe(bad), "{bad:?}");
        }
    }
}
