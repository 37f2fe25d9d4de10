//! Admission control: a contract is accepted only if what it asks for fits in what the
//! node has left. No overcommit: CPUs, memory and disk are counted as reserved by every
//! contract the node owns, whether its workloads use them right now or not.

use serde::{Deserialize, Serialize};
use zos_contract::deployment::DiskKind;
use zos_contract::Deployment;

/// What the node offers to contracts (its total minus what zosd keeps for itself).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Virtual CPUs (whole cores).
    pub cpu: u64,
    /// Memory, in MiB.
    pub memory_mib: u64,
    /// SSD space, in MiB.
    pub ssd_mib: u64,
    /// HDD space, in MiB.
    pub hdd_mib: u64,
}

impl Capacity {
    /// What `deployment` reserves: workload CPUs and memory; volumes on their disk
    /// kind; workload disks (container roots, at least their default, and VM root
    /// disks) on SSD.
    pub fn of(deployment: &Deployment) -> Capacity {
        let mut c = Capacity::default();
        for w in &deployment.workloads {
            c.cpu = c.cpu.saturating_add(w.cpu.into());
            c.memory_mib = c.memory_mib.saturating_add(w.memory_mib);
            c.ssd_mib = c.ssd_mib.saturating_add(w.disk_reserved_mib());
        }
        for v in &deployment.volumes {
            match v.disk {
                DiskKind::Ssd => c.ssd_mib = c.ssd_mib.saturating_add(v.size_mib),
                DiskKind::Hdd => c.hdd_mib = c.hdd_mib.saturating_add(v.size_mib),
            }
        }
        c
    }

    fn plus(self, o: Capacity) -> Capacity {
        Capacity {
            cpu: self.cpu.saturating_add(o.cpu),
            memory_mib: self.memory_mib.saturating_add(o.memory_mib),
            ssd_mib: self.ssd_mib.saturating_add(o.ssd_mib),
            hdd_mib: self.hdd_mib.saturating_add(o.hdd_mib),
        }
    }
}

/// Why a contract does not fit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("over capacity: {resource} needs {requested}{unit}, {available}{unit} of {total}{unit} are free")]
pub struct OverCapacity {
    /// The first resource that does not fit: `cpu`, `memory`, `ssd` or `hdd`.
    pub resource: &'static str,
    /// The unit of the three numbers as printed after them (`" cpu"`, `" MiB"`).
    pub unit: &'static str,
    /// What the contract asks for.
    pub requested: u64,
    /// What is left next to the other contracts the node owns.
    pub available: u64,
    /// What the node offers in all.
    pub total: u64,
}

/// Checks that `wanted` fits in `total` next to `used` (what the other contracts the
/// node owns reserve). Names the first resource that does not fit.
pub fn admit(total: Capacity, used: Capacity, wanted: Capacity) -> Result<(), OverCapacity> {
    let checks = [
        ("cpu", " cpu", total.cpu, used.cpu, wanted.cpu),
        (
            "memory",
            " MiB",
            total.memory_mib,
            used.memory_mib,
            wanted.memory_mib,
        ),
        ("ssd", " MiB", total.ssd_mib, used.ssd_mib, wanted.ssd_mib),
        ("hdd", " MiB", total.hdd_mib, used.hdd_mib, wanted.hdd_mib),
    ];
    for (resource, unit, total, used, requested) in checks {
        let available = total.saturating_sub(used);
        if requested > available {
            return Err(OverCapacity {
                resource,
                unit,
                requested,
                available,
                total,
            });
        }
    }
    Ok(())
}

/// The sum of what `deployments` reserve.
pub fn used<'a>(deployments: impl IntoIterator<Item = &'a Deployment>) -> Capacity {
    deployments
        .into_iter()
        .fold(Capacity::default(), |acc, d| acc.plus(Capacity::of(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_root_without_disk_mib_reserves_its_default_quota() {
        let d: Deployment = serde_json::from_value(serde_json::json!({
            "volumes": [{"name": "data", "size_mib": 10}],
            "workloads": [
                {"name": "a", "kind": "container", "cpu": 1, "memory_mib": 8,
                 "flist": {"url": "dir:///f.fl", "sha256": "00".repeat(32), "stores": []}},
                {"name": "b", "kind": "container", "cpu": 1, "memory_mib": 8, "disk_mib": 40,
                 "flist": {"url": "dir:///f.fl", "sha256": "00".repeat(32), "stores": []}},
            ]
        }))
        .unwrap();
        let c = Capacity::of(&d);
        let default = zos_contract::deployment::DEFAULT_CONTAINER_DISK_MIB;
        assert_eq!(c.ssd_mib, 10 + default + 40);
    }

    #[test]
    fn the_first_resource_that_does_not_fit_is_named() {
        let total = Capacity {
            cpu: 4,
            memory_mib: 1024,
            ssd_mib: 10_000,
            hdd_mib: 0,
        };
        let used = Capacity {
            cpu: 2,
            memory_mib: 900,
            ..Default::default()
        };
        let wanted = Capacity {
            cpu: 1,
            memory_mib: 200,
            ..Default::default()
        };
        let err = admit(total, used, wanted).unwrap_err();
        assert_eq!(err.resource, "memory");
        assert_eq!((err.requested, err.available, err.total), (200, 124, 1024));
        assert_eq!(
            err.to_string(),
            "over capacity: memory needs 200 MiB, 124 MiB of 1024 MiB are free"
        );
        admit(
            total,
            used,
            Capacity {
                cpu: 2,
                memory_mib: 124,
                ..Default::default()
            },
        )
        .unwrap();
        let hdd = Capacity {
            hdd_mib: 1,
            ..Default::default()
        };
        assert_eq!(admit(total, used, hdd).unwrap_err().resource, "hdd");
    }
}
