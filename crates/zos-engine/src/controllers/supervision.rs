//! Supervision: contracts that should run, kept running.
//!
//! - Inputs ([`Inputs`]): the owned contracts no job is working on, the state of each
//!   of their workloads (polled by the engine), and the instant.
//! - Actions ([`Action`]): retry the provisioning of a contract whose last try failed
//!   transiently; restart the workloads that died (or vanished), each with its own
//!   backoff ([`Backoff`], kept by the [`Supervisor`]).
//!
//! [`restart`] is the executor of a restart: it runs on a job of its own, as a
//! provisioning does (a vanished workload's flist may be fetched again).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use zos_contract::deployment::Workload;

use crate::journal::{Owned, Phase};
use crate::names;
use crate::plan;
use crate::provision::{Provisioner, WorkloadState};
use crate::restart::Backoff;

/// What supervision reads.
pub struct Inputs<'a> {
    /// Owned contracts that no job works on.
    pub owned: &'a [Owned],
    /// Workload state by node-wide name: `None` when it does not exist; absent when
    /// the provisioner could not tell (nothing is decided for it).
    pub states: &'a BTreeMap<String, Option<WorkloadState>>,
    /// The monotonic time backoffs are measured against.
    pub now: Instant,
}

/// What supervision decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Provision the contract again (its last try failed transiently).
    Provision(String),
    /// Start these workloads of the contract again: `true` when it exited (restart),
    /// `false` when it is gone (ensure: prepared from its flist again).
    Restart {
        /// The contract id.
        id: String,
        /// Per workload, its name in the deployment and whether it exited.
        workloads: Vec<(String, bool)>,
    },
}

/// The restart backoffs, by node-wide workload name (and `ID#provision` for retries).
#[derive(Debug)]
pub struct Supervisor {
    backoff: HashMap<String, Backoff>,
    min: Duration,
    max: Duration,
    reset: Duration,
}

impl Supervisor {
    /// No backoff yet; a workload's first restart waits `min`, doubling up to `max`;
    /// `reset` of running starts it from `min` again.
    pub fn new(min: Duration, max: Duration, reset: Duration) -> Self {
        Supervisor {
            backoff: HashMap::new(),
            min,
            max,
            reset,
        }
    }

    fn backoff(&mut self, key: &str) -> &mut Backoff {
        let (min, max) = (self.min, self.max);
        self.backoff
            .entry(key.to_string())
            .or_insert_with(|| Backoff::new(min, max))
    }

    /// Forgets the backoff of workload `name` (removed).
    pub fn forget(&mut self, name: &str) {
        self.backoff.remove(name);
    }

    /// One pass: see the module docs. Failed contracts are left alone.
    pub fn plan(&mut self, inputs: Inputs<'_>) -> Vec<Action> {
        let now = inputs.now;
        let mut actions = Vec::new();
        for o in inputs.owned {
            match o.phase {
                Phase::Failed { .. } => {}
                Phase::Provisioning => {
                    // At the pace of the contract's own backoff.
                    let b = self.backoff(&format!("{}#provision", o.id));
                    if b.due(now) {
                        b.failed(now);
                        actions.push(Action::Provision(o.id.clone()));
                    }
                }
                Phase::Running => {
                    let mut workloads = Vec::new();
                    for w in &o.deployment.workloads {
                        let name = names::of(&o.id, &w.name);
                        let Some(state) = inputs.states.get(&name) else {
                            continue;
                        };
                        let reset = self.reset;
                        let b = self.backoff(&name);
                        match state {
                            Some(WorkloadState::Running) => b.running(now, reset),
                            exited => {
                                if b.due(now) {
                                    b.failed(now);
                                    tracing::warn!(workload = %name, state = ?exited, "workload not running; restarting");
                                    workloads.push((w.name.clone(), exited.is_some()));
                                }
                            }
                        }
                    }
                    if !workloads.is_empty() {
                        actions.push(Action::Restart {
                            id: o.id.clone(),
                            workloads,
                        });
                    }
                }
            }
        }
        actions
    }
}

/// What a restart job reports back: per workload (its name in the deployment), the
/// error of its restart, if any.
#[derive(Debug)]
pub struct Restarted {
    /// The contract id.
    pub id: String,
    /// The contract version whose workloads were restarted.
    pub version: u64,
    /// Per workload: its name in the deployment, and the error text when its restart
    /// failed (`None`: it started).
    pub results: Vec<(String, Option<String>)>,
}

/// Starts `workloads` of `owned` again (see [`Action::Restart`]), with the paths of
/// its volumes from the idempotent ensure (`span`: the contract's slot, when it runs on
/// several nodes, [`plan::span`]).
pub async fn restart<P: Provisioner>(
    p: &P,
    owned: &Owned,
    workloads: Vec<(String, bool)>,
    span: Option<plan::Span>,
) -> Restarted {
    let mut paths: BTreeMap<String, PathBuf> = BTreeMap::new();
    for v in &owned.deployment.volumes {
        if let Ok(path) = p.ensure_volume(&names::of(&owned.id, &v.name), v).await {
            paths.insert(v.name.clone(), path);
        }
    }
    let mut results = Vec::new();
    for (name, exited) in workloads {
        let Some(w): Option<&Workload> = owned.deployment.workloads.iter().find(|w| w.name == name)
        else {
            continue;
        };
        let result = match plan::workload_plan(&owned.id, &owned.deployment, w, &paths, span) {
            Ok(plan) if exited => p.restart_workload(&plan).await,
            Ok(plan) => p.ensure_workload(&plan).await,
            Err(e) => Err(e),
        };
        let error = result.err().map(|e| {
            tracing::warn!(workload = %names::of(&owned.id, &name), error = %e, "restart failed");
            e.to_string()
        });
        results.push((name, error));
    }
    Restarted {
        id: owned.id.clone(),
        version: owned.version,
        results,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(phase: Phase) -> Owned {
        Owned {
            id: "web".into(),
            version: 1,
            digest: zos_contract::Digest::of(b"x"),
            owner: zos_contract::SecretKey::from_seed([2; 32]).public(),
            expires: None,
            deployment: serde_json::from_value(serde_json::json!({
                "workloads": [{"name": "app", "kind": "container",
                    "flist": {"url": "dir:///f.fl", "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "stores": ["dir:///s"]},
                    "entrypoint": ["/app"], "cpu": 1, "memory_mib": 16}]
            }))
            .unwrap(),
            phase,
            restarts: BTreeMap::new(),
            signers: None,
            held: None,
        }
    }

    #[test]
    fn a_dead_workload_is_restarted_after_its_backoff_and_a_vanished_one_ensured() {
        let ms = Duration::from_millis;
        let mut s = Supervisor::new(ms(200), ms(2000), ms(60_000));
        let o = [owned(Phase::Running)];
        let t0 = Instant::now();
        let dead = BTreeMap::from([(
            "web.app".to_string(),
            Some(WorkloadState::Exited {
                code: Some(1),
                signal: None,
            }),
        )]);
        let plan = |s: &mut Supervisor, states, now| {
            s.plan(Inputs {
                owned: &o,
                states,
                now,
            })
        };
        assert_eq!(plan(&mut s, &dead, t0), [], "noticed; waits the minimum");
        assert_eq!(
            plan(&mut s, &dead, t0 + ms(200)),
            [Action::Restart {
                id: "web".into(),
                workloads: vec![("app".into(), true)]
            }]
        );
        let gone = BTreeMap::from([("web.app".to_string(), None)]);
        assert_eq!(plan(&mut s, &gone, t0 + ms(300)), [], "twice the delay");
        assert_eq!(
            plan(&mut s, &gone, t0 + ms(600)),
            [Action::Restart {
                id: "web".into(),
                workloads: vec![("app".into(), false)]
            }]
        );
        // Unknown state: nothing decided.
        assert_eq!(plan(&mut s, &BTreeMap::new(), t0 + ms(9000)), []);
    }

    #[test]
    fn a_transient_failure_is_retried_and_a_failed_contract_left_alone() {
        let ms = Duration::from_millis;
        let mut s = Supervisor::new(ms(200), ms(2000), ms(60_000));
        let t0 = Instant::now();
        let o = [
            owned(Phase::Provisioning),
            Owned {
                id: "bad".into(),
                ..owned(Phase::Failed {
                    message: "tampered".into(),
                })
            },
        ];
        let states = BTreeMap::new();
        let mut plan = |now| {
            s.plan(Inputs {
                owned: &o,
                states: &states,
                now,
            })
        };
        assert_eq!(plan(t0), []);
        assert_eq!(plan(t0 + ms(200)), [Action::Provision("web".into())]);
        assert_eq!(plan(t0 + ms(9000)), [Action::Provision("web".into())]);
    }
}
