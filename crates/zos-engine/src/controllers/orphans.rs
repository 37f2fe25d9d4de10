//! Orphans: what exists on the machine but belongs to no journalled contract (or is
//! not part of its owner's deployment any more).
//!
//! - Inputs: the provisioner's [`Inventory`] and the journal.
//! - Actions ([`Action`]): remove a workload or a network (they hold no data); remove a
//!   volume whose deletion was authorised before (the journal's `doomed`); quarantine
//!   any other volume: kept, reported, never handed to a contract.

use std::collections::BTreeSet;

use crate::journal::JournalData;
use crate::names;
use crate::plan::{resource_names, Resource};
use crate::provision::Inventory;

/// What orphan collection decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Remove the resource of this kind and node-wide name: no contract owns it (a
    /// volume only when it is `doomed`: its deletion was authorised).
    Remove(Resource, String),
    /// Keep this volume, owned by no contract, untouched: journal it as quarantined
    /// instead of deleting data nobody authorised to delete.
    Quarantine(String),
}

/// The orphans in `inventory`, workloads first.
pub fn plan(inventory: &Inventory, j: &JournalData) -> Vec<Action> {
    let wanted = |kind: Resource, name: &str| -> bool {
        let Some(id) = names::owner(name) else {
            return false;
        };
        if let Some(owned) = j.owned.get(id) {
            return resource_names(&owned.id, &owned.deployment, kind).contains(name);
        }
        kind == Resource::Volume
            && j.retired.get(id).is_some_and(|r| {
                resource_names(&r.owned.id, &r.owned.deployment, kind).contains(name)
            })
    };
    inventory
        .workloads
        .iter()
        .map(|n| (Resource::Workload, n))
        .chain(inventory.networks.iter().map(|n| (Resource::Network, n)))
        .chain(inventory.volumes.iter().map(|n| (Resource::Volume, n)))
        .filter(|(k, n)| !wanted(*k, n))
        .map(|(kind, name)| {
            if kind == Resource::Volume && !j.doomed.contains(name) {
                Action::Quarantine(name.clone())
            } else {
                Action::Remove(kind, name.clone())
            }
        })
        .collect()
}

/// The journal change after a collection: quarantined volumes added, and both lists
/// kept to volumes that still exist (`deleted` are gone).
pub fn journal_collected(
    j: &mut JournalData,
    inventory: &Inventory,
    quarantine: BTreeSet<String>,
    deleted: &BTreeSet<String>,
) {
    j.quarantined.extend(quarantine);
    j.quarantined.retain(|q| inventory.volumes.contains(q));
    j.doomed
        .retain(|d| inventory.volumes.contains(d) && !deleted.contains(d));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_workloads_go_unknown_volumes_are_quarantined_doomed_ones_go() {
        let inventory = Inventory {
            volumes: ["gone.data".into(), "old.data".into()].into(),
            networks: ["gone.net".into()].into(),
            workloads: ["gone.app".into()].into(),
        };
        let mut j = JournalData::default();
        j.doomed.insert("old.data".into());
        assert_eq!(
            plan(&inventory, &j),
            [
                Action::Remove(Resource::Workload, "gone.app".into()),
                Action::Remove(Resource::Network, "gone.net".into()),
                Action::Quarantine("gone.data".into()),
                Action::Remove(Resource::Volume, "old.data".into()),
            ]
        );
    }
}
