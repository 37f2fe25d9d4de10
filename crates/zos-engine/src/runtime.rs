//! One seam per workload kind. A [`WorkloadRuntime`] runs the workloads of one kind
//! (containers, VMs); [`Runtimes`] holds one per kind and sends every call to the
//! runtime of the workload's kind, chosen by one exhaustive `match` written where the
//! runtimes are built (zosd). A new kind is then one runtime implementation plus one
//! arm of that match: forgetting the arm does not compile, and no kind can fall through
//! to another kind's runtime.
//!
//! A runtime's calls block (they fork, mount, talk to QEMU): the provisioner runs them
//! off the async executor.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;

use zos_contract::deployment::WorkloadKind;

use crate::provision::{ProvisionError, WorkloadPlan, WorkloadState, WorkloadStatus};

/// How a workload of a kind joins its tenant network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicStyle {
    /// A veth pair whose inner end is `eth0` in the workload's own network namespace
    /// (a container joins that namespace).
    Veth,
    /// A tap device on the tenant bridge, which the hypervisor opens (a VM).
    Tap,
}

/// The network side of a workload, made by the provisioner before the runtime starts
/// it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    /// The network namespace: the workload's own (veth) or its tenant network's (tap).
    pub netns: PathBuf,
    /// The tap's name ([`NicStyle::Tap`] only).
    pub tap: Option<String>,
}

/// What the provisioner resolved for a workload before handing it to its runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The workload's short kernel-object name (see zosd's kernel names): what its
    /// cgroup, its pool subvolume and its tap are named after.
    pub kernel_id: String,
    /// Its network attachment, if the workload is on a tenant network.
    pub nic: Option<Nic>,
    /// The user namespace it runs in (see [`WorkloadRuntime::user_namespace`]);
    /// `None`: the node's.
    pub userns: Option<PathBuf>,
}

/// The node's map between node-wide workload names and short kernel ids (zosd's kernel
/// names, kept in the node's state home). A runtime asked by name (`remove`, `state`)
/// finds its kernel objects through it, and lists them back by name (`names`).
pub trait KernelIds: Send + Sync {
    /// The kernel id of workload `name` (`None`: it cannot have one). A lookup: it
    /// records nothing.
    fn kernel_id(&self, name: &str) -> Option<String>;
    /// The workload name of kernel id `id` (a name no contract owns when unknown, so
    /// that orphan collection removes it).
    fn workload_name(&self, id: &str) -> String;
}

/// Runs the workloads of one kind. Every call is idempotent, like the provisioner's.
/// Names are node-wide workload names ([`WorkloadPlan::name`]).
pub trait WorkloadRuntime: Send + Sync {
    /// How this kind joins a tenant network.
    fn nic_style(&self) -> NicStyle;

    /// The user namespace workload `plan` runs in (a bind-mounted nsfs file), made if
    /// missing. Asked before the workload's network attachment, whose own namespace is
    /// then made inside it. `None` (the default): the node's.
    fn user_namespace(
        &self,
        plan: &WorkloadPlan,
        kernel_id: &str,
    ) -> Result<Option<PathBuf>, ProvisionError> {
        let _ = (plan, kernel_id);
        Ok(None)
    }

    /// Prepares what the workload needs (its verified flist, its root filesystem or
    /// disks) and starts it. A workload that runs already is left alone (re-adoption).
    fn ensure(
        &self,
        plan: &WorkloadPlan,
        placement: &Placement,
    ) -> Result<WorkloadStatus, ProvisionError>;

    /// Starts a workload that exited, without preparing its root again.
    fn restart(
        &self,
        plan: &WorkloadPlan,
        placement: &Placement,
    ) -> Result<WorkloadStatus, ProvisionError>;

    /// Stops the workload and removes what it was started from (its root, its logs,
    /// its runtime state), never its volumes. Absent: a no-op.
    fn remove(&self, name: &str) -> Result<(), ProvisionError>;

    /// Only the state (polled by supervision several times a second). `None`: no such
    /// workload of this kind.
    fn state(&self, name: &str) -> Option<WorkloadState>;

    /// The state with the log tail and the runtime's description.
    fn status(&self, name: &str) -> Option<WorkloadStatus>;

    /// Every workload of this kind that exists on the node (running or not).
    fn names(&self) -> BTreeSet<String>;
}

/// A set of workload kinds: [`WorkloadKind`] in production, a test's own enum in tests.
pub trait Kind: Copy + Eq + Debug + Send + Sync + 'static {
    /// Every kind, once.
    const ALL: &'static [Self];
}

impl Kind for WorkloadKind {
    const ALL: &'static [Self] = &[WorkloadKind::Container, WorkloadKind::Vm];
}

/// One runtime per kind; see the module docs.
pub struct Runtimes<K: Kind = WorkloadKind> {
    by_kind: Vec<(K, Arc<dyn WorkloadRuntime>)>,
}

impl<K: Kind> Runtimes<K> {
    /// `runtime_of` is the one exhaustive `match` on the kind.
    pub fn new(runtime_of: impl Fn(K) -> Arc<dyn WorkloadRuntime>) -> Self {
        Runtimes {
            by_kind: K::ALL.iter().map(|&k| (k, runtime_of(k))).collect(),
        }
    }

    /// The runtime of `kind`.
    pub fn of(&self, kind: K) -> &dyn WorkloadRuntime {
        self.by_kind
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, r)| r.as_ref())
            .expect("Runtimes::new made one runtime per kind in Kind::ALL")
    }

    /// The runtime that has a workload called `name`, and its kind.
    pub fn holding(&self, name: &str) -> Option<(K, &dyn WorkloadRuntime)> {
        self.by_kind
            .iter()
            .find(|(_, r)| r.state(name).is_some() || r.names().contains(name))
            .map(|(k, r)| (*k, r.as_ref()))
    }

    /// [`WorkloadRuntime::ensure`] on the runtime of `kind`.
    pub fn ensure(
        &self,
        kind: K,
        plan: &WorkloadPlan,
        placement: &Placement,
    ) -> Result<WorkloadStatus, ProvisionError> {
        self.of(kind).ensure(plan, placement)
    }

    /// [`WorkloadRuntime::restart`] on the runtime of `kind`.
    pub fn restart(
        &self,
        kind: K,
        plan: &WorkloadPlan,
        placement: &Placement,
    ) -> Result<WorkloadStatus, ProvisionError> {
        self.of(kind).restart(plan, placement)
    }

    /// Removes `name` from the runtime that has it. A name no runtime knows is asked of
    /// every runtime (each removal is a no-op when absent): a half-made workload that
    /// no runtime lists yet still has its leftovers removed.
    pub fn remove(&self, name: &str) -> Result<(), ProvisionError> {
        match self.holding(name) {
            Some((_, r)) => r.remove(name),
            None => self.by_kind.iter().try_for_each(|(_, r)| r.remove(name)),
        }
    }

    /// The state of workload `name` in whichever runtime has it; `None` when none has.
    pub fn state(&self, name: &str) -> Option<WorkloadState> {
        self.by_kind.iter().find_map(|(_, r)| r.state(name))
    }

    /// The status of workload `name` in whichever runtime has it; `None` when none has.
    pub fn status(&self, name: &str) -> Option<WorkloadStatus> {
        self.by_kind.iter().find_map(|(_, r)| r.status(name))
    }

    /// Every workload of every kind.
    pub fn names(&self) -> BTreeSet<String> {
        self.by_kind.iter().flat_map(|(_, r)| r.names()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Three kinds: a newcomer's third kind beside the two the node has.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum TestKind {
        Container,
        Vm,
        Unikernel,
    }

    impl Kind for TestKind {
        const ALL: &'static [Self] = &[TestKind::Container, TestKind::Vm, TestKind::Unikernel];
    }

    /// A runtime that records every call and holds the workloads it started.
    #[derive(Default)]
    struct Recording {
        calls: Mutex<Vec<String>>,
        running: Mutex<BTreeSet<String>>,
    }

    impl Recording {
        fn record(&self, call: &str, name: &str) {
            self.calls.lock().unwrap().push(format!("{call} {name}"));
        }
        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    fn running() -> WorkloadStatus {
        WorkloadStatus {
            state: WorkloadState::Running,
            address: None,
            log_tail: Vec::new(),
            runtime: None,
        }
    }

    impl WorkloadRuntime for Recording {
        fn nic_style(&self) -> NicStyle {
            NicStyle::Veth
        }
        fn ensure(
            &self,
            plan: &WorkloadPlan,
            _: &Placement,
        ) -> Result<WorkloadStatus, ProvisionError> {
            self.record("ensure", &plan.name);
            self.running.lock().unwrap().insert(plan.name.clone());
            Ok(running())
        }
        fn restart(
            &self,
            plan: &WorkloadPlan,
            _: &Placement,
        ) -> Result<WorkloadStatus, ProvisionError> {
            self.record("restart", &plan.name);
            Ok(running())
        }
        fn remove(&self, name: &str) -> Result<(), ProvisionError> {
            self.record("remove", name);
            self.running.lock().unwrap().remove(name);
            Ok(())
        }
        fn state(&self, name: &str) -> Option<WorkloadState> {
            self.running
                .lock()
                .unwrap()
                .contains(name)
                .then_some(WorkloadState::Running)
        }
        fn status(&self, name: &str) -> Option<WorkloadStatus> {
            self.state(name).map(|_| running())
        }
        fn names(&self) -> BTreeSet<String> {
            self.running.lock().unwrap().clone()
        }
    }

    fn plan(name: &str) -> WorkloadPlan {
        let workload = serde_json::from_value(serde_json::json!({
            "name": name,
            "kind": "container",
            "cpu": 1,
            "memory_mib": 64,
            "flist": {"url": "dir:///x.fl", "sha256": "0".repeat(64), "stores": []},
        }))
        .unwrap();
        WorkloadPlan {
            name: name.into(),
            workload,
            network: None,
            mounts: Vec::new(),
            logs: None,
        }
    }

    fn placement() -> Placement {
        Placement {
            kernel_id: "wl0".into(),
            nic: None,
            userns: None,
        }
    }

    #[test]
    fn a_third_kind_reaches_its_own_runtime_and_nothing_else() {
        let container = Arc::new(Recording::default());
        let vm = Arc::new(Recording::default());
        let uni = Arc::new(Recording::default());
        let (c, v, u) = (container.clone(), vm.clone(), uni.clone());
        // The one exhaustive match, as zosd writes it for WorkloadKind.
        let runtimes = Runtimes::new(move |k| -> Arc<dyn WorkloadRuntime> {
            match k {
                TestKind::Container => c.clone(),
                TestKind::Vm => v.clone(),
                TestKind::Unikernel => u.clone(),
            }
        });

        runtimes
            .ensure(TestKind::Unikernel, &plan("c1.u"), &placement())
            .unwrap();
        runtimes
            .ensure(TestKind::Container, &plan("c1.web"), &placement())
            .unwrap();
        assert_eq!(uni.calls(), ["ensure c1.u"]);
        assert_eq!(container.calls(), ["ensure c1.web"]);
        assert!(vm.calls().is_empty(), "{:?}", vm.calls());

        assert_eq!(runtimes.state("c1.u"), Some(WorkloadState::Running));
        assert_eq!(
            runtimes.names(),
            BTreeSet::from(["c1.u".to_string(), "c1.web".to_string()])
        );
        assert_eq!(
            runtimes.holding("c1.u").map(|(k, _)| k),
            Some(TestKind::Unikernel)
        );

        runtimes.remove("c1.u").unwrap();
        assert_eq!(uni.calls(), ["ensure c1.u", "remove c1.u"]);
        assert_eq!(
            container.calls(),
            ["ensure c1.web"],
            "removal went elsewhere"
        );
        assert!(vm.calls().is_empty());
        assert_eq!(runtimes.state("c1.u"), None);
    }

    #[test]
    fn an_unknown_name_is_removed_from_every_runtime() {
        let a = Arc::new(Recording::default());
        let b = Arc::new(Recording::default());
        let (a2, b2) = (a.clone(), b.clone());
        let runtimes = Runtimes::new(move |k| -> Arc<dyn WorkloadRuntime> {
            match k {
                WorkloadKind::Container => a2.clone(),
                WorkloadKind::Vm => b2.clone(),
            }
        });
        runtimes.remove("half-made").unwrap();
        assert_eq!(a.calls(), ["remove half-made"]);
        assert_eq!(b.calls(), ["remove half-made"]);
    }
}
