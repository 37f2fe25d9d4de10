//! Moved: container roots to zos-container (`rootfs`), fetching, verifying and
//! unpacking a pinned flist to zos-flist (`pinned`). Interim shim until provisioner.rs
//! takes `zos_container::ContainerRuntime` (and zos-vm's runtime its VM trees); then
//! this file goes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zos_contract::deployment::FlistRef;
use zos_engine::ProvisionError;
use zos_flist::{DirAccess, PinnedTrees};
use zos_storage::Storage;

pub use zos_container::rootfs::VOLUME_PREFIX;

pub struct Rootfs {
    roots: zos_container::Rootfs,
    state: PathBuf,
    access: DirAccess,
}

impl Rootfs {
    pub fn new(state: &Path, storage: Arc<Storage>, access: DirAccess) -> Rootfs {
        Rootfs {
            roots: zos_container::Rootfs::new(state, storage, access.clone()),
            state: state.to_path_buf(),
            access,
        }
    }

    pub fn ensure(
        &self,
        name: &str,
        id: &str,
        flist: &FlistRef,
        disk_mib: u64,
    ) -> Result<PathBuf, ProvisionError> {
        self.roots.ensure(name, id, flist, disk_mib)
    }

    pub fn remove(&self, name: &str, id: Option<&str>) -> Result<(), ProvisionError> {
        self.roots.remove(name, id)
    }

    pub fn workloads(&self) -> Vec<String> {
        self.roots.workloads()
    }

    /// A VM's kernel tree, still under the state dir until zos-vm's runtime unpacks it.
    pub fn unpacked(&self, name: &str, flist: &FlistRef) -> Result<PathBuf, ProvisionError> {
        PinnedTrees::new(self.state.join("flists"), self.state.join("rootfs"))
            .with_cache(self.state.join("blocks"))
            .ensure(flist, &self.access, zos_flist::DEFAULT_MAX_EXPANDED)
            .map_err(|e| {
                let permanent = e.is_permanent();
                ProvisionError::from_source("flist", name, e).permanent_if(permanent)
            })
    }
}
