//! The containers of a node's workloads on [`Libcontainer`]: the engine's plan becomes
//! a [`ContainerSpec`]; containers are found again by id after zosd restarts, their
//! exit watched and their logs resumed (re-adoption), never started twice.
//!
//! The create runs in a child process of its own ([`runtime_create`], behind
//! `zosd runtime-create`): libcontainer forks its helpers with a raw clone3, and in a
//! process with many threads a helper can inherit a lock another thread held and hang.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use zos_engine::{ProvisionError, WorkloadPlan, WorkloadState, WorkloadStatus};

use crate::logs::Tap;
use crate::{
    log_tail, BindMount, ContainerSpec, Cpu, Error, Exit, ExitWatch, Libcontainer, Runtime,
    RuntimeConfig, Status, Stream,
};

/// Lines of log shown in a status record.
const LOG_TAIL_LINES: usize = 20;
/// Tasks a container may have: generous for an app, fatal for a fork bomb.
pub const PIDS_LIMIT: u64 = 1024;

/// What to start: the engine's plan, plus what was prepared for it.
pub struct ContainerPlan<'a> {
    /// The workload, its volumes' mounts and its network address, as the engine
    /// planned them.
    pub plan: &'a WorkloadPlan,
    /// The merged root filesystem ([`crate::rootfs::Rootfs::ensure`]).
    pub rootfs: PathBuf,
    /// The workload's own network namespace, if it is on a tenant network.
    pub netns: Option<PathBuf>,
    /// The workload's user namespace ([`crate::userns`]), which owns `netns`.
    pub userns: Option<PathBuf>,
}

/// The node's containers, under `<state>/containers`.
pub struct Containers {
    runtime: Libcontainer,
    /// The runtime's root, handed to the `runtime-create` child.
    root: PathBuf,
    logs: PathBuf,
    /// Exit watches of the containers this process started or adopted.
    exits: Mutex<HashMap<String, ExitWatch>>,
}

fn err(name: &str, e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::new("workload", name, e.to_string())
}

/// This crate's error as the source, permanent when it says so (a refused spec).
fn typed(name: &str, e: Error) -> ProvisionError {
    let permanent = e.is_permanent();
    ProvisionError::from_source("workload", name, e).permanent_if(permanent)
}

impl Containers {
    /// The containers under `<state_dir>/containers` (runtime state, bundles, logs);
    /// creates the directories. Nothing is adopted yet.
    pub fn new(state_dir: &Path) -> Result<Containers, Error> {
        Containers::with_tap(state_dir, None)
    }

    /// As [`Containers::new`], with every output line also handed to `tap`.
    pub fn with_tap(state_dir: &Path, tap: Option<Tap>) -> Result<Containers, Error> {
        Containers::with_options(state_dir, tap, crate::spec::DEFAULT_CGROUP_PARENT)
    }

    /// As [`Containers::with_tap`], every container's cgroup under `cgroup_parent`
    /// (see [`RuntimeConfig::cgroup_parent`]).
    pub fn with_options(
        state_dir: &Path,
        tap: Option<Tap>,
        cgroup_parent: &str,
    ) -> Result<Containers, Error> {
        let root = state_dir.join("containers");
        Ok(Containers {
            runtime: Libcontainer::new(RuntimeConfig {
                tap,
                cgroup_parent: cgroup_parent.to_string(),
                ..RuntimeConfig::under(&root)
            })?,
            root: root.clone(),
            logs: root.join("logs"),
            exits: Mutex::new(HashMap::new()),
        })
    }

    /// The cgroup path of container `name`, relative to each hierarchy's root
    /// ([`Libcontainer::cgroup_path`]).
    pub fn cgroup_path(&self, name: &str) -> PathBuf {
        self.runtime.cgroup_path(name)
    }

    fn log_dir(&self, name: &str) -> PathBuf {
        self.logs.join(name)
    }

    fn tail(&self, name: &str) -> Vec<String> {
        let dir = self.log_dir(name);
        let mut lines = log_tail(&dir, Stream::Stdout, LOG_TAIL_LINES).unwrap_or_default();
        let errors = log_tail(&dir, Stream::Stderr, LOG_TAIL_LINES).unwrap_or_default();
        lines.extend(errors.into_iter().map(|l| format!("stderr: {l}")));
        let skip = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines.split_off(skip)
    }

    /// The status of `name` if it is running, adopting it (exit watch, logs) when this
    /// process did not start it.
    pub fn running(&self, name: &str) -> Option<WorkloadStatus> {
        match self.state(name)? {
            WorkloadState::Running => Some(self.status_of(name, WorkloadState::Running)),
            WorkloadState::Exited { .. } => None,
        }
    }

    /// Takes over a running container this process does not watch yet. `None` when it
    /// cannot be adopted.
    fn adopt_if_unwatched(&self, name: &str, pid: Option<i32>) -> Option<()> {
        let mut exits = self.exits.lock().expect("not poisoned");
        if exits.contains_key(name) {
            return Some(());
        }
        match self.runtime.adopt(name) {
            Ok(Some(adopted)) => {
                tracing::info!(workload = name, ?pid, "re-adopted a running container");
                exits.insert(name.to_string(), adopted.exit);
                Some(())
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(workload = name, error = %e, "cannot adopt");
                None
            }
        }
    }

    fn status_of(&self, name: &str, state: WorkloadState) -> WorkloadStatus {
        // The init's pid in the node's PID namespace, while it runs: an operator (and the
        // upgrade's booted test) sees that an agent restart left the process alone.
        let runtime = matches!(state, WorkloadState::Running)
            .then(|| self.runtime.state(name).ok().flatten()?.pid)
            .flatten()
            .map(|pid| format!("container, pid {pid}"));
        WorkloadStatus {
            state,
            address: None,
            log_tail: self.tail(name),
            runtime,
        }
    }

    /// Creates and starts the container, replacing a stopped one of the same name.
    ///
    /// The create runs in a child process of its own (`/proc/self/exe runtime-create`,
    /// which calls [`runtime_create`]): in a fresh, single-threaded process a
    /// libcontainer helper cannot inherit a held lock, and a crash there is not the
    /// caller's. The container is then adopted like one found after a restart (exit
    /// watch, logs).
    pub fn start(&self, c: &ContainerPlan<'_>) -> Result<WorkloadStatus, ProvisionError> {
        let name = &c.plan.name;
        // A stopped container of this name (a crash, a restart): its cgroup and state
        // go first, its logs stay.
        self.runtime.delete(name).map_err(|e| typed(name, e))?;
        let spec = self.spec(c)?;
        let pid = self.create_in_child(&spec)?;
        match self.runtime.adopt(name) {
            Ok(Some(adopted)) => {
                self.exits
                    .lock()
                    .expect("not poisoned")
                    .insert(name.clone(), adopted.exit);
            }
            Ok(None) => return Err(err(name, "created, then not found")),
            Err(e) => return Err(typed(name, e)),
        }
        tracing::info!(workload = %name, pid, "container started");
        Ok(WorkloadStatus {
            address: c.plan.network.as_ref().map(|(_, ip)| *ip),
            ..self.status_of(name, WorkloadState::Running)
        })
    }

    /// Runs `runtime-create` with `spec` and this runtime's cgroup parent on its stdin
    /// (a [`CreateRequest`]); returns the init's pid.
    fn create_in_child(&self, spec: &ContainerSpec) -> Result<i32, ProvisionError> {
        use std::io::Write;
        let name = &spec.id;
        // /proc/self/exe, not the path it was started from: it still runs this very
        // binary after the file was replaced (an upgrade, a rebuild) or deleted.
        let mut child = Command::new("/proc/self/exe")
            .arg("runtime-create")
            .arg("--root")
            .arg(&self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| err(name, format!("spawning the runtime: {e}")))?;
        let request = CreateRequest {
            cgroup_parent: self.runtime.config().cgroup_parent.clone(),
            spec: spec.clone(),
        };
        let json = serde_json::to_vec(&request).map_err(|e| err(name, e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(&json).map_err(|e| err(name, e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| err(name, format!("waiting for the runtime: {e}")))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let reason = stderr.lines().last().unwrap_or("no message");
            return Err(err(name, format!("runtime ({}): {reason}", out.status)));
        }
        let reply: serde_json::Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| err(name, format!("runtime reply: {e}")))?;
        reply["pid"]
            .as_i64()
            .map(|p| p as i32)
            .ok_or_else(|| err(name, "runtime reply without a pid"))
    }

    fn spec(&self, c: &ContainerPlan<'_>) -> Result<ContainerSpec, ProvisionError> {
        spec_of(c, self.log_dir(&c.plan.name))
    }

    /// Kills and deletes the container (state, cgroup, bundle) and its logs.
    pub fn remove(&self, name: &str) -> Result<(), ProvisionError> {
        self.runtime.delete(name).map_err(|e| typed(name, e))?;
        self.exits.lock().expect("not poisoned").remove(name);
        match std::fs::remove_dir_all(self.log_dir(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(name, e)),
        }
    }

    /// The state of `name`, without reading its logs: what supervision polls several
    /// times a second. A running container is adopted on first sight, so its exit is
    /// watched. `None` when no container of that name exists.
    pub fn state(&self, name: &str) -> Option<WorkloadState> {
        // A watched init that has not ended is running: the reaper says so the moment it
        // ends. Reading the runtime's state file instead, for every running container
        // four times a second, was 2,000 reads a second on a node with 500.
        let running = self
            .exits
            .lock()
            .expect("not poisoned")
            .get(name)
            .is_some_and(|w| w.get().is_none());
        if running {
            return Some(WorkloadState::Running);
        }
        let state = self.runtime.state(name).ok()??;
        if state.status == Status::Running {
            self.adopt_if_unwatched(name, state.pid)?;
            return Some(WorkloadState::Running);
        }
        let exit = self
            .exits
            .lock()
            .expect("not poisoned")
            .get(name)
            .and_then(ExitWatch::get);
        Some(match exit {
            Some(Exit::Code(c)) => WorkloadState::Exited {
                code: Some(c),
                signal: None,
            },
            Some(Exit::Signal(s)) => WorkloadState::Exited {
                code: None,
                signal: Some(s),
            },
            _ => WorkloadState::Exited {
                code: None,
                signal: None,
            },
        })
    }

    /// [`Containers::state`] with the last lines of its logs, for status records.
    pub fn status(&self, name: &str) -> Option<WorkloadStatus> {
        self.state(name).map(|st| self.status_of(name, st))
    }

    /// Every container in the runtime's state dir.
    pub fn names(&self) -> BTreeSet<String> {
        std::fs::read_dir(&self.runtime.config().state_dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The container spec of a plan: its entrypoint, environment, limits (CPU from the
/// workload's cores, memory, [`PIDS_LIMIT`] tasks), network namespace and volumes.
/// A plan the spec refuses is refused for good.
fn spec_of(c: &ContainerPlan<'_>, log_dir: PathBuf) -> Result<ContainerSpec, ProvisionError> {
    let w = &c.plan.workload;
    let name = &c.plan.name;
    let (entrypoint, args) = w
        .entrypoint
        .split_first()
        .ok_or_else(|| err(name, "the workload has no entrypoint").permanent())?;
    let mut spec = ContainerSpec::new(name, &c.rootfs, log_dir, entrypoint);
    spec.args = args.to_vec();
    spec.env = w.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(cwd) = &w.cwd {
        spec.cwd = PathBuf::from(cwd);
    }
    spec.hostname = Some(w.name.clone());
    spec.cpu = Some(Cpu::Millicores(u64::from(w.cpu) * 1000));
    spec.memory_limit = Some(w.memory_mib << 20);
    spec.pids_limit = Some(PIDS_LIMIT);
    spec.netns = c.netns.clone();
    spec.userns = c.userns.clone();
    spec.mounts = c
        .plan
        .mounts
        .iter()
        .map(|(source, target, readonly)| BindMount {
            source: source.clone(),
            target: PathBuf::from(target),
            readonly: *readonly,
        })
        .collect();
    spec.validate().map_err(|e| typed(name, e))?;
    Ok(spec)
}

/// What [`Containers`] hands its `runtime-create` child on stdin: the spec, and the
/// cgroup parent of the runtime that adopts the container (the child's runtime must
/// make the cgroup where the parent's looks for it).
#[derive(serde::Serialize, serde::Deserialize)]
struct CreateRequest {
    cgroup_parent: String,
    spec: ContainerSpec,
}

/// `runtime-create --root DIR`: creates and starts the container whose spec is on
/// stdin (with the cgroup parent to make it under) and prints `{"pid": N}`. Runs in a
/// process of its own (see [`Containers::start`]); the container outlives it and the
/// caller adopts it.
pub fn runtime_create(root: &Path) -> Result<(), Error> {
    let CreateRequest {
        cgroup_parent,
        spec,
    } = serde_json::from_reader(std::io::stdin().lock())
        .map_err(|e| Error::InvalidSpec(format!("the spec on stdin: {e}")))?;
    // The caller pumps the logs once it adopts the container; until then they wait in
    // the FIFO the container holds.
    let runtime = Libcontainer::new(RuntimeConfig {
        pump_logs: false,
        cgroup_parent,
        ..RuntimeConfig::under(root)
    })?;
    let created = runtime.create(&spec)?;
    if let Err(e) = runtime.start(&spec.id) {
        let _ = runtime.delete(&spec.id);
        return Err(e);
    }
    println!("{}", serde_json::json!({ "pid": created.pid }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(entrypoint: &[&str]) -> WorkloadPlan {
        let workload = serde_json::from_value(serde_json::json!({
            "name": "web",
            "kind": "container",
            "cpu": 2,
            "memory_mib": 64,
            "entrypoint": entrypoint,
            "env": {"A": "1"},
            "flist": {"url": "dir:///x.fl", "sha256": "0".repeat(64), "stores": []},
        }))
        .unwrap();
        WorkloadPlan {
            name: "c1.web".into(),
            workload,
            network: None,
            mounts: vec![(PathBuf::from("/pool/v"), "/data".into(), true)],
            logs: None,
        }
    }

    #[test]
    fn a_plan_becomes_its_spec() {
        let p = plan(&["/bin/sh", "-c", "echo hi"]);
        let c = ContainerPlan {
            plan: &p,
            rootfs: PathBuf::from("/state/workloads/c1.web/rootfs"),
            netns: Some(PathBuf::from("/run/netns/w")),
            userns: None,
        };
        let spec = spec_of(&c, PathBuf::from("/logs/c1.web")).unwrap();
        assert_eq!(spec.id, "c1.web");
        assert_eq!(spec.entrypoint, "/bin/sh");
        assert_eq!(spec.args, ["-c", "echo hi"]);
        assert_eq!(spec.hostname.as_deref(), Some("web"));
        assert_eq!(spec.cpu, Some(Cpu::Millicores(2000)));
        assert_eq!(spec.memory_limit, Some(64 << 20));
        assert_eq!(spec.pids_limit, Some(PIDS_LIMIT));
        assert_eq!(spec.netns, c.netns);
        assert_eq!(spec.mounts.len(), 1);
        assert!(spec.mounts[0].readonly);
        assert!(spec.env.iter().any(|(k, v)| k == "A" && v == "1"));
    }

    #[test]
    fn a_plan_without_an_entrypoint_is_refused_for_good() {
        let p = plan(&[]);
        let c = ContainerPlan {
            plan: &p,
            rootfs: PathBuf::from("/r"),
            netns: None,
            userns: None,
        };
        let e = spec_of(&c, PathBuf::from("/logs")).unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert!(e.to_string().contains("no entrypoint"), "{e}");
    }

    #[test]
    fn a_spec_the_crate_refuses_is_permanent_and_keeps_its_typed_source() {
        let mut p = plan(&["/bin/true"]);
        p.mounts = vec![(PathBuf::from("/pool/v"), "/".into(), false)];
        let c = ContainerPlan {
            plan: &p,
            rootfs: PathBuf::from("/r"),
            netns: None,
            userns: None,
        };
        let e = spec_of(&c, PathBuf::from("/logs")).unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert!(
            matches!(
                e.source.downcast_ref::<Error>(),
                Some(Error::InvalidSpec(_))
            ),
            "{e:?}"
        );
    }
}
