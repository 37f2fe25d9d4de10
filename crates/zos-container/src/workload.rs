//! The container kind behind the engine's seam: [`ContainerRuntime`] implements
//! [`zos_engine::WorkloadRuntime`] with the overlay roots ([`Rootfs`]) and the
//! containers ([`Containers`]) of this crate.
//!
//! Kernel objects are named after the workload's short kernel id (its root
//! filesystem's subvolume `rootfs-<id>`), which the caller's name map gives
//! ([`KernelIds`]): [`WorkloadRuntime::remove`] and [`WorkloadRuntime::names`] get only
//! the node-wide name, and a root left on a pool after a reboot has only its id.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use zos_engine::{
    KernelIds, NicStyle, Placement, ProvisionError, WorkloadPlan, WorkloadRuntime, WorkloadState,
    WorkloadStatus,
};
use zos_flist::DirAccess;
use zos_storage::Storage;

use crate::containers::{ContainerPlan, Containers};
use crate::rootfs::Rootfs;
use crate::userns::{self, IdRange, IdRanges};
use crate::Error;

/// Containers as a workload kind. See the module docs.
pub struct ContainerRuntime {
    rootfs: Rootfs,
    containers: Containers,
    ids: Arc<dyn KernelIds>,
    /// Each contract's host id range.
    ranges: IdRanges,
    /// The workloads' user namespace files, `<state>/userns/<kernel id>`.
    userns_dir: PathBuf,
}

impl ContainerRuntime {
    /// Containers under `<state_dir>/containers`, their roots mounted under
    /// `<state_dir>/workloads` from subvolumes on `storage`, flists read only where
    /// `access` allows (the node's store roots).
    pub fn new(
        state_dir: &Path,
        storage: Arc<Storage>,
        access: DirAccess,
        ids: Arc<dyn KernelIds>,
    ) -> Result<ContainerRuntime, Error> {
        ContainerRuntime::with_tap(state_dir, storage, access, ids, None)
    }

    /// As [`ContainerRuntime::new`], with the containers' output lines also handed to
    /// `tap` (by container, i.e. workload, name).
    pub fn with_tap(
        state_dir: &Path,
        storage: Arc<Storage>,
        access: DirAccess,
        ids: Arc<dyn KernelIds>,
        tap: Option<crate::Tap>,
    ) -> Result<ContainerRuntime, Error> {
        let parent = crate::spec::DEFAULT_CGROUP_PARENT;
        ContainerRuntime::with_options(state_dir, storage, access, ids, tap, parent)
    }

    /// As [`ContainerRuntime::with_tap`], every container's cgroup made under
    /// `cgroup_parent` (`/<cgroup_parent>/<name>`): a node's own scope, so that nodes
    /// sharing a host never share a container's cgroup.
    pub fn with_options(
        state_dir: &Path,
        storage: Arc<Storage>,
        access: DirAccess,
        ids: Arc<dyn KernelIds>,
        tap: Option<crate::Tap>,
        cgroup_parent: &str,
    ) -> Result<ContainerRuntime, Error> {
        Ok(ContainerRuntime {
            rootfs: Rootfs::new(state_dir, storage, access),
            containers: Containers::with_options(state_dir, tap, cgroup_parent)?,
            ids,
            ranges: IdRanges::new(state_dir.join("idranges")),
            userns_dir: state_dir.join("userns"),
        })
    }

    /// The cgroup path of workload `name`'s container, relative to each hierarchy's
    /// root: where its metrics are read.
    pub fn cgroup_path(&self, name: &str) -> PathBuf {
        self.containers.cgroup_path(name)
    }

    /// The host id range of the contract that owns workload `name`.
    fn range(&self, name: &str) -> Result<IdRange, ProvisionError> {
        let contract = zos_engine::names::owner(name).unwrap_or(name);
        self.ranges
            .of(contract)
            .map_err(|e| ProvisionError::from_source("userns", name, e))
    }

    /// Starts the container of `plan` on its root `rootfs`, in its own user namespace
    /// (with its volumes owned in its range) and, when it has a NIC, its own network
    /// namespace.
    fn start(
        &self,
        plan: &WorkloadPlan,
        placement: &Placement,
        rootfs: PathBuf,
    ) -> Result<WorkloadStatus, ProvisionError> {
        if placement.userns.is_some() {
            let ids = self.range(&plan.name)?;
            for (volume, _, _) in &plan.mounts {
                userns::shift_tree(volume, ids)
                    .map_err(|e| ProvisionError::from_source("userns", &plan.name, e))?;
            }
        }
        self.containers.start(&ContainerPlan {
            plan,
            rootfs,
            netns: placement.nic.as_ref().map(|n| n.netns.clone()),
            userns: placement.userns.clone(),
        })
    }

    /// Its root, made if missing (an idempotent no-op when mounted).
    fn root(&self, plan: &WorkloadPlan, placement: &Placement) -> Result<PathBuf, ProvisionError> {
        let ids = match placement.userns {
            Some(_) => Some(self.range(&plan.name)?),
            None => None,
        };
        self.rootfs.ensure(
            &plan.name,
            &placement.kernel_id,
            &plan.workload.flist,
            plan.workload.disk_mib,
            ids,
        )
    }
}

impl WorkloadRuntime for ContainerRuntime {
    fn nic_style(&self) -> NicStyle {
        NicStyle::Veth
    }

    /// Its own user namespace, container root mapped to the first id of its
    /// contract's range (see [`crate::userns`]).
    fn user_namespace(
        &self,
        plan: &WorkloadPlan,
        kernel_id: &str,
    ) -> Result<Option<PathBuf>, ProvisionError> {
        let ids = self.range(&plan.name)?;
        let path = self.userns_dir.join(kernel_id);
        userns::ensure(&path, ids)
            .map_err(|e| ProvisionError::from_source("userns", &plan.name, e))?;
        Ok(Some(path))
    }

    fn ensure(
        &self,
        plan: &WorkloadPlan,
        placement: &Placement,
    ) -> Result<WorkloadStatus, ProvisionError> {
        if let Some(status) = self.containers.running(&plan.name) {
            // Re-adoption: it runs already; never start it twice.
            return Ok(status);
        }
        let rootfs = self.root(plan, placement)?;
        self.start(plan, placement, rootfs)
    }

    fn restart(
        &self,
        plan: &WorkloadPlan,
        placement: &Placement,
    ) -> Result<WorkloadStatus, ProvisionError> {
        if let Some(status) = self.containers.running(&plan.name) {
            return Ok(status);
        }
        // Its root stays mounted while it is stopped; only when it is not (the state
        // dir was lost) is it mounted again, from the tree already on the pool.
        let rootfs = if self.rootfs.is_mounted(&plan.name) {
            self.rootfs.merged(&plan.name)
        } else {
            self.root(plan, placement)?
        };
        self.start(plan, placement, rootfs)
    }

    fn remove(&self, name: &str) -> Result<(), ProvisionError> {
        self.containers.remove(name)?;
        let id = self.ids.kernel_id(name);
        if let Some(id) = &id {
            userns::remove(&self.userns_dir.join(id))
                .map_err(|e| ProvisionError::from_source("userns", name, e))?;
        }
        self.rootfs.remove(name, id.as_deref())
    }

    fn state(&self, name: &str) -> Option<WorkloadState> {
        self.containers.state(name)
    }

    fn status(&self, name: &str) -> Option<WorkloadStatus> {
        self.containers.status(name)
    }

    /// Containers, mount directories, and root subvolumes on the pools: a half-made
    /// or half-removed container is listed by what is left of it.
    fn names(&self) -> BTreeSet<String> {
        let mut names = self.containers.names();
        names.extend(self.rootfs.workloads());
        if let Ok(entries) = std::fs::read_dir(&self.userns_dir) {
            names.extend(
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().to_str().map(|id| self.ids.workload_name(id))),
            );
        }
        match self.rootfs.volume_ids() {
            Ok(ids) => names.extend(ids.iter().map(|id| self.ids.workload_name(id))),
            Err(e) => tracing::warn!(error = %e, "cannot list the container roots on the pools"),
        }
        names
    }
}
