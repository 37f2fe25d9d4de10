//! Moved to zos-container (`containers`, `workload::ContainerRuntime`). Interim shim
//! until provisioner.rs takes `ContainerRuntime`; main.rs then calls
//! `zos_container::runtime_create` itself and this file goes.
pub use zos_container::{ContainerPlan, Containers as Workloads};

/// `zosd runtime-create`: [`zos_container::runtime_create`].
pub fn runtime_create(root: &std::path::Path) -> anyhow::Result<()> {
    Ok(zos_container::runtime_create(root)?)
}
