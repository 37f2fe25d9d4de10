//! Provisioning: bringing an accepted contract to its deployment, and taking one down.
//!
//! - Inputs: the journalled contract ([`Owned`]) and the version it replaces.
//! - Actions: provisioner [`Step`]s, in order: what the replaced version had and the new
//!   one does not is removed (workloads, networks, then volumes); then volumes,
//!   networks and workloads are ensured. [`teardown`] is the reverse.
//!
//! The engine runs [`execute`] on a job of its own per contract (a slow flist fetch
//! holds up only its contract); every step is idempotent, so a job cut short (a
//! cancellation, a newer version) is safe to run again or to tear down.

use std::collections::BTreeMap;
use std::path::PathBuf;

use zos_contract::deployment::{Volume, Workload};

use crate::journal::Owned;
use crate::names;
use crate::plan::{self, resource_names, Resource};
use crate::provision::{NetworkPlan, ProvisionError, Provisioner};

/// One provisioner call.
#[derive(Debug)]
pub enum Step {
    /// Remove the workload of this node-wide name (nothing when it is gone).
    RemoveWorkload(String),
    /// Remove the network of this node-wide name (nothing when it is gone).
    RemoveNetwork(String),
    /// A volume whose deletion its owner authorised (see [`Outcome::doomed`]).
    RemoveVolume(String),
    /// Create the volume of this node-wide name as the deployment declares it, or
    /// keep it when it exists.
    EnsureVolume(String, Volume),
    /// Create the network, or keep it when it exists.
    EnsureNetwork(NetworkPlan),
    /// Planned with the paths of the volumes ensured before it.
    EnsureWorkload(Box<Workload>),
    /// The deployment cannot be planned past this point (its addresses do not work
    /// out): the steps stop here with this error.
    Fail(ProvisionError),
}

/// The steps that bring `owned` to its deployment, replacing `previous`; `span` (and the
/// previous version's) is the contract's slot on this node when it runs on several
/// ([`plan::span`]).
pub fn plan(
    owned: &Owned,
    span: Option<plan::Span>,
    previous: Option<(&Owned, Option<plan::Span>)>,
) -> Vec<Step> {
    let mut steps = previous
        .map(|(prev, prev_span)| {
            replaced(
                prev,
                owned,
                prev_span.map(|s| s.slot) != span.map(|s| s.slot),
            )
        })
        .unwrap_or_default();
    let d = &owned.deployment;
    for v in &d.volumes {
        steps.push(Step::EnsureVolume(names::of(&owned.id, &v.name), v.clone()));
    }
    for n in &d.networks {
        match plan::network_plan(&owned.id, d, &n.name, span) {
            Ok(p) => steps.push(Step::EnsureNetwork(p)),
            Err(e) => {
                steps.push(Step::Fail(e));
                return steps;
            }
        }
    }
    steps.extend(
        d.workloads
            .iter()
            .map(|w| Step::EnsureWorkload(Box::new(w.clone()))),
    );
    steps
}

/// What `prev` has and `next` does not, in reverse order, and workloads whose spec
/// changed (recreated by the ensure that follows). Volumes of the same name are kept:
/// their data outlives a version change. A volume the new version drops goes: the
/// update is signed by the owner and the running version's stakeholders. `moved_slot`:
/// this node's slot on the contract's networks changed (every network is made again).
fn replaced(prev: &Owned, next: &Owned, moved_slot: bool) -> Vec<Step> {
    let same_workload = |w: &Workload| next.deployment.workloads.iter().any(|n| n == w);
    let changed_network = |name: &str| {
        let old = prev.deployment.networks.iter().find(|n| n.name == name);
        let new = next.deployment.networks.iter().find(|n| n.name == name);
        old != new || moved_slot
    };
    let mut steps = Vec::new();
    for w in &prev.deployment.workloads {
        let net_changed = w.network.as_deref().is_some_and(changed_network);
        if !same_workload(w) || net_changed {
            steps.push(Step::RemoveWorkload(names::of(&prev.id, &w.name)));
        }
    }
    for n in &prev.deployment.networks {
        if changed_network(&n.name) {
            steps.push(Step::RemoveNetwork(names::of(&prev.id, &n.name)));
        }
    }
    for v in &prev.deployment.volumes {
        if !next.deployment.volumes.iter().any(|n| n.name == v.name) {
            steps.push(Step::RemoveVolume(names::of(&prev.id, &v.name)));
        }
    }
    steps
}

/// Everything `owned` has, workloads first; its volumes only with `volumes` (an
/// owner's cancellation, the end of an expiry's grace period).
pub fn teardown(owned: &Owned, volumes: bool) -> Vec<Step> {
    let names = |kind| resource_names(&owned.id, &owned.deployment, kind).into_iter();
    let mut steps: Vec<Step> = names(Resource::Workload)
        .map(Step::RemoveWorkload)
        .chain(names(Resource::Network).map(Step::RemoveNetwork))
        .collect();
    if volumes {
        steps.extend(names(Resource::Volume).map(Step::RemoveVolume));
    }
    steps
}

/// What a provisioning job reports back to the loop.
#[derive(Debug)]
pub struct Outcome {
    /// The contract id.
    pub id: String,
    /// The contract version provisioned (the journal may have moved on meanwhile).
    pub version: u64,
    /// The first step that failed, if one did (the steps stop there).
    pub result: Result<(), ProvisionError>,
    /// Authorised volume removals that failed: the journal's `doomed`.
    pub doomed: Vec<String>,
    /// Volumes removed: no longer `doomed`.
    pub removed_volumes: Vec<String>,
}

/// Runs `steps` for `owned`. A permanent failure tears down what runs (nothing that
/// runs stays behind a contract that cannot run); its volumes stay (they may hold the
/// tenant's data).
pub async fn execute<P: Provisioner>(
    p: &P,
    owned: &Owned,
    span: Option<plan::Span>,
    steps: Vec<Step>,
) -> Outcome {
    let mut out = Outcome {
        id: owned.id.clone(),
        version: owned.version,
        result: Ok(()),
        doomed: Vec::new(),
        removed_volumes: Vec::new(),
    };
    out.result = run(p, owned, span, steps, &mut out).await;
    if let Err(e) = &out.result {
        tracing::warn!(contract = %owned.id, error = %e, permanent = e.is_permanent(), "provisioning failed");
        if e.is_permanent() {
            let steps = teardown(owned, false);
            let _ = run(p, owned, span, steps, &mut out).await;
        }
    }
    out
}

async fn run<P: Provisioner>(
    p: &P,
    owned: &Owned,
    span: Option<plan::Span>,
    steps: Vec<Step>,
    out: &mut Outcome,
) -> Result<(), ProvisionError> {
    let mut paths: BTreeMap<String, PathBuf> = BTreeMap::new();
    for step in steps {
        match step {
            Step::RemoveWorkload(name) => logged(&name, p.remove_workload(&name).await),
            Step::RemoveNetwork(name) => logged(&name, p.remove_network(&name).await),
            Step::RemoveVolume(name) => match p.remove_volume(&name).await {
                Ok(()) => out.removed_volumes.push(name),
                Err(e) => {
                    tracing::warn!(volume = %name, error = %e, "volume not removed; removed at the next start");
                    out.doomed.push(name);
                }
            },
            Step::EnsureVolume(name, spec) => {
                let path = p.ensure_volume(&name, &spec).await?;
                paths.insert(spec.name, path);
            }
            Step::EnsureNetwork(plan) => p.ensure_network(&plan).await?,
            Step::EnsureWorkload(w) => {
                let plan = plan::workload_plan(&owned.id, &owned.deployment, &w, &paths, span)?;
                p.ensure_workload(&plan).await?;
            }
            Step::Fail(e) => return Err(e),
        }
    }
    Ok(())
}

fn logged(name: &str, result: Result<(), ProvisionError>) {
    if let Err(e) = result {
        // Left for the orphan collector of the next start.
        tracing::warn!(resource = %name, error = %e, "not removed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Phase;

    fn owned(version: u64, deployment: serde_json::Value) -> Owned {
        Owned {
            id: "web".into(),
            version,
            digest: zos_contract::Digest::of(b"x"),
            owner: zos_contract::SecretKey::from_seed([2; 32]).public(),
            expires: None,
            deployment: serde_json::from_value(deployment).unwrap(),
            phase: Phase::Provisioning,
            restarts: BTreeMap::new(),
            signers: None,
            held: None,
        }
    }

    fn app(entry: &str) -> serde_json::Value {
        serde_json::json!({
            "networks": [{"name": "net", "subnet": "10.20.0.0/24"}],
            "volumes": [{"name": "data", "size_mib": 10}],
            "workloads": [{"name": "app", "kind": "container",
                "flist": {"url": "dir:///f.fl", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "stores": ["dir:///s"]},
                "entrypoint": [entry], "cpu": 1, "memory_mib": 16, "network": "net",
                "mounts": [{"volume": "data", "path": "/data"}]}]
        })
    }

    fn names(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::RemoveWorkload(n) => format!("remove_workload {n}"),
                Step::RemoveNetwork(n) => format!("remove_network {n}"),
                Step::RemoveVolume(n) => format!("remove_volume {n}"),
                Step::EnsureVolume(n, _) => format!("ensure_volume {n}"),
                Step::EnsureNetwork(p) => format!("ensure_network {}", p.name),
                Step::EnsureWorkload(w) => format!("ensure_workload {}", w.name),
                Step::Fail(e) => format!("fail {e}"),
            })
            .collect()
    }

    #[test]
    fn a_new_contract_is_planned_in_dependency_order() {
        let steps = plan(&owned(1, app("/app")), None, None);
        assert_eq!(
            names(&steps),
            [
                "ensure_volume web.data",
                "ensure_network web.net",
                "ensure_workload app"
            ]
        );
        let Step::EnsureNetwork(net) = &steps[1] else {
            panic!("{steps:?}")
        };
        assert_eq!(net.gateway.to_string(), "10.20.0.1");
    }

    #[test]
    fn an_update_removes_the_changed_workload_and_a_dropped_volume_first() {
        let mut next = app("/app-v2");
        next["volumes"] = serde_json::json!([]);
        next["workloads"][0]["mounts"] = serde_json::json!([]);
        let steps = plan(&owned(2, next), None, Some((&owned(1, app("/app")), None)));
        assert_eq!(
            names(&steps),
            [
                "remove_workload web.app",
                "remove_volume web.data",
                "ensure_network web.net",
                "ensure_workload app"
            ]
        );
    }

    #[test]
    fn a_node_in_another_slot_after_an_update_makes_its_network_again_in_that_slot() {
        let span = |slot| Some(plan::Span { slot, slots: 3 });
        let (prev, next) = (owned(1, app("/app")), owned(2, app("/app")));
        let steps = plan(&next, span(2), Some((&prev, span(1))));
        assert_eq!(
            names(&steps),
            [
                "remove_workload web.app",
                "remove_network web.net",
                "ensure_volume web.data",
                "ensure_network web.net",
                "ensure_workload app"
            ]
        );
        let Step::EnsureNetwork(net) = &steps[3] else {
            panic!("{steps:?}")
        };
        // 10.20.0.0/24 cut into /28s: slot 2 is 10.20.0.32/28.
        assert_eq!(
            (net.subnet.to_string(), net.prefix_len),
            ("10.20.0.32".into(), 28)
        );
        assert_eq!(net.gateway.to_string(), "10.20.0.33");
        // The same slot (more nodes appended): nothing made again.
        let steps = plan(
            &next,
            span(1),
            Some((&prev, Some(plan::Span { slot: 1, slots: 2 }))),
        );
        assert_eq!(
            names(&steps),
            [
                "ensure_volume web.data",
                "ensure_network web.net",
                "ensure_workload app"
            ]
        );
    }

    #[test]
    fn a_deployment_whose_addresses_do_not_work_out_stops_with_a_permanent_error() {
        let mut d = app("/app");
        d["networks"][0]["subnet"] = serde_json::json!("10.20.0.0/31");
        let steps = plan(&owned(1, d), None, None);
        let Some(Step::Fail(e)) = steps.last() else {
            panic!("{steps:?}")
        };
        assert!(e.is_permanent(), "{e}");
        assert_eq!(names(&steps)[0], "ensure_volume web.data");
    }

    #[test]
    fn a_teardown_keeps_the_volumes_unless_told() {
        let o = owned(1, app("/app"));
        assert_eq!(
            names(&teardown(&o, false)),
            ["remove_workload web.app", "remove_network web.net"]
        );
        assert_eq!(
            names(&teardown(&o, true)).last().unwrap(),
            "remove_volume web.data"
        );
    }
}
