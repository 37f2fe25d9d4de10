//! Reporting: what the node says about each contract.
//!
//! - Inputs: the journalled contract, its workloads' statuses (from the provisioner),
//!   the last restart error of each workload, the last refused update at its key.
//! - Outputs: a [`StatusReport`] (signed and published by the engine when it changed;
//!   log tails only when the deployment sets `publish_logs`) and a [`ContractSummary`]
//!   for the node's local status.

use std::collections::BTreeMap;

use crate::capacity::Capacity;
use crate::journal::{Owned, Phase};
use crate::plan::addresses;
use crate::provision::{ProvisionError, WorkloadState, WorkloadStatus};
use crate::status::{
    ContractSummary, ReasonReport, RefusedUpdate, State, StatusReport, WorkloadReport,
    WorkloadSummary,
};

/// The report of workload `name` of `owned` from what the provisioner said of it
/// (`span`: the contract's slot on this node, when it runs on several).
pub fn workload_report(
    owned: &Owned,
    name: &str,
    status: Result<Option<WorkloadStatus>, ProvisionError>,
    span: Option<crate::plan::Span>,
) -> WorkloadReport {
    let restarts = owned.restarts.get(name).copied().unwrap_or(0);
    // The engine assigned the address; a provisioner may know better (a VM).
    let assigned = owned
        .deployment
        .workloads
        .iter()
        .find(|w| w.name == name)
        .and_then(|w| w.network.as_deref())
        .and_then(|net| addresses(&owned.deployment, net, span).ok())
        .and_then(|(_, ips)| ips.get(name).copied());
    match status {
        Ok(Some(s)) => WorkloadReport {
            state: match s.state {
                WorkloadState::Running => "running".into(),
                WorkloadState::Exited { .. } => "exited".into(),
            },
            address: s.address.or(assigned),
            restarts,
            runtime: s.runtime,
            log_tail: s.log_tail,
        },
        Ok(None) => WorkloadReport {
            state: "absent".into(),
            restarts,
            ..Default::default()
        },
        Err(e) => WorkloadReport {
            state: format!("unknown: {e}"),
            restarts,
            ..Default::default()
        },
    }
}

/// The status of `owned` with these workload reports; `restart_error` is why the last
/// restart of one of its workloads failed.
pub fn status(
    owned: &Owned,
    workloads: BTreeMap<String, WorkloadReport>,
    restart_error: Option<&str>,
    refused_update: Option<RefusedUpdate>,
) -> StatusReport {
    let all_running = workloads.values().all(|w| w.state == "running");
    let (state, message) = match (&owned.phase, all_running) {
        (Phase::Failed { message }, _) => (State::Error, message.clone()),
        (Phase::Provisioning, _) => (State::Provisioning, "provisioning".to_string()),
        (Phase::Running, true) => (State::Ok, "every workload runs".to_string()),
        (Phase::Running, false) => (
            State::Error,
            match restart_error {
                Some(e) => format!(
                    "a workload is not running; restarting it with backoff (last restart: {e})"
                ),
                None => "a workload is not running; restarting it with backoff".to_string(),
            },
        ),
    };
    let mut report = StatusReport::new(&owned.id, Some(owned.version), state, message)
        .holding(owned.held.as_ref());
    report.workloads = workloads;
    report.refused_update = refused_update;
    report
}

/// The status of a provisioning of `owned` that failed with `error`.
pub fn failed(
    owned: &Owned,
    error: &str,
    workloads: BTreeMap<String, WorkloadReport>,
    refused_update: Option<RefusedUpdate>,
) -> StatusReport {
    let mut report = StatusReport::new(&owned.id, Some(owned.version), State::Error, error)
        .holding(owned.held.as_ref());
    report.workloads = workloads;
    report.refused_update = refused_update;
    report
}

/// The status of a refused record at key `id`.
pub fn refused(id: &str, version: Option<u64>, reasons: Vec<ReasonReport>) -> StatusReport {
    let message = reasons
        .iter()
        .map(|r| format!("[{}] {}", r.code, r.message))
        .collect::<Vec<_>>()
        .join("; ");
    let mut report = StatusReport::new(id, version, State::Refused, message);
    report.reasons = reasons;
    report
}

/// What the notary gets of `report`: log tails only for a contract whose signed
/// deployment (`owned`, at the report's version) sets `publish_logs`: a workload's
/// output is its tenant's, and the notary is shared.
pub fn for_notary(mut report: StatusReport, owned: Option<&Owned>) -> StatusReport {
    let publish_logs = owned
        .is_some_and(|o| o.version == report.version.unwrap_or(0) && o.deployment.publish_logs);
    if !publish_logs {
        report
            .workloads
            .values_mut()
            .for_each(|w| w.log_tail.clear());
    }
    report
}

/// The local summary of `report` (`owned`: the contract, if the node owns it).
pub fn summary(report: &StatusReport, owned: Option<&Owned>) -> ContractSummary {
    ContractSummary {
        contract: report.contract.clone(),
        version: report.version,
        state: report.state,
        message: report.message.clone(),
        reserved: owned
            .map(|o| Capacity::of(&o.deployment))
            .unwrap_or_default(),
        workloads: report
            .workloads
            .iter()
            .map(|(name, w)| WorkloadSummary {
                name: name.clone(),
                kind: owned.and_then(|o| {
                    o.deployment
                        .workloads
                        .iter()
                        .find(|d| d.name == *name)
                        .map(|d| d.kind)
                }),
                state: w.state.clone(),
                restarts: w.restarts,
                address: w.address,
                runtime: w.runtime.clone(),
                output: w.log_tail.last().cloned(),
            })
            .collect(),
    }
}

/// Folds `summary` into `list` (sorted by id; cancelled and expired contracts leave
/// it). True when the list changed.
pub fn fold(list: &mut Vec<ContractSummary>, summary: ContractSummary) -> bool {
    let gone = matches!(
        summary.state,
        State::Cancelled | State::Expired | State::Moved
    );
    match list.binary_search_by(|s| s.contract.cmp(&summary.contract)) {
        Ok(i) if gone => {
            list.remove(i);
            true
        }
        Ok(i) if list[i] == summary => false,
        Ok(i) => {
            list[i] = summary;
            true
        }
        Err(_) if gone => false,
        Err(i) => {
            list.insert(i, summary);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_contract_leaves_the_summaries_and_a_same_one_changes_nothing() {
        let mut list = Vec::new();
        let ok = StatusReport::new("b", Some(1), State::Ok, "every workload runs");
        assert!(fold(&mut list, summary(&ok, None)));
        assert!(!fold(&mut list, summary(&ok, None)));
        let refused = refused("a", None, vec![]);
        assert!(fold(&mut list, summary(&refused, None)));
        let ids: Vec<&str> = list.iter().map(|s| s.contract.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let gone = StatusReport::new("b", Some(2), State::Cancelled, "cancelled");
        assert!(fold(&mut list, summary(&gone, None)));
        assert_eq!(list.len(), 1);
    }
}
