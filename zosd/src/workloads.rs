//! Container workloads on zos-container's runtime: the engine's plan becomes a
//! [`ContainerSpec`]; containers are found again by id after zosd restarts, their exit
//! watched and their logs resumed (re-adoption), never started twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use zos_container::{
    log_tail, BindMount, ContainerSpec, Cpu, Exit, ExitWatch, Libcontainer, Runtime, RuntimeConfig,
    Status, Stream,
};
use zos_engine::{ProvisionError, WorkloadPlan, WorkloadState, WorkloadStatus};

/// Lines of log shown in a status record.
const LOG_TAIL_LINES: usize = 20;
/// Tasks a container may have: generous for an app, fatal for a fork bomb.
const PIDS_LIMIT: u64 = 1024;

/// What to start: the engine's plan, plus what the provisioner prepared for it.
pub struct ContainerPlan<'a> {
    pub plan: &'a WorkloadPlan,
    pub rootfs: PathBuf,
    pub netns: Option<PathBuf>,
}

pub struct Workloads {
    runtime: Libcontainer,
    logs: PathBuf,
    /// Exit watches of the containers this process started or adopted.
    exits: Mutex<HashMap<String, ExitWatch>>,
}

fn err(name: &str, e: impl std::fmt::Display) -> ProvisionError {
    ProvisionError::new("workload", name, e.to_string())
}

impl Workloads {
    pub fn new(state_dir: &Path) -> Result<Workloads, zos_container::Error> {
        let root = state_dir.join("containers");
        Ok(Workloads {
            runtime: Libcontainer::new(RuntimeConfig::under(&root))?,
            logs: root.join("logs"),
            exits: Mutex::new(HashMap::new()),
        })
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
        let state = self.runtime.state(name).ok()??;
        if state.status != Status::Running {
            return None;
        }
        let mut exits = self.exits.lock().expect("not poisoned");
        if !exits.contains_key(name) {
            match self.runtime.adopt(name) {
                Ok(Some(adopted)) => {
                    tracing::info!(workload = name, pid = ?state.pid, "re-adopted a running container");
                    exits.insert(name.to_string(), adopted.exit);
                }
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(workload = name, error = %e, "cannot adopt");
                    return None;
                }
            }
        }
        drop(exits);
        Some(self.status_of(name, WorkloadState::Running))
    }

    fn status_of(&self, name: &str, state: WorkloadState) -> WorkloadStatus {
        WorkloadStatus {
            state,
            address: None,
            log_tail: self.tail(name),
        }
    }

    /// Creates and starts the container, replacing a stopped one of the same name.
    pub fn start(&self, c: &ContainerPlan<'_>) -> Result<WorkloadStatus, ProvisionError> {
        let name = &c.plan.name;
        // A stopped container of this name (a crash, a restart): its cgroup and state
        // go first, its logs stay.
        self.runtime.delete(name).map_err(|e| err(name, e))?;
        let spec = self.spec(c)?;
        let created = self.runtime.create(&spec).map_err(|e| err(name, e))?;
        if let Err(e) = self.runtime.start(name) {
            let _ = self.runtime.delete(name);
            return Err(err(name, e));
        }
        self.exits
            .lock()
            .expect("not poisoned")
            .insert(name.clone(), created.exit);
        tracing::info!(workload = %name, pid = created.pid, "container started");
        Ok(WorkloadStatus {
            address: c.plan.network.as_ref().map(|(_, ip)| *ip),
            ..self.status_of(name, WorkloadState::Running)
        })
    }

    fn spec(&self, c: &ContainerPlan<'_>) -> Result<ContainerSpec, ProvisionError> {
        let w = &c.plan.workload;
        let name = &c.plan.name;
        let (entrypoint, args) = w
            .entrypoint
            .split_first()
            .ok_or_else(|| err(name, "the workload has no entrypoint").permanent())?;
        let mut spec = ContainerSpec::new(name, &c.rootfs, self.log_dir(name), entrypoint);
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
        spec.validate().map_err(|e| err(name, e).permanent())?;
        Ok(spec)
    }

    /// Kills and deletes the container (state, cgroup, bundle) and its logs.
    pub fn remove(&self, name: &str) -> Result<(), ProvisionError> {
        self.runtime.delete(name).map_err(|e| err(name, e))?;
        self.exits.lock().expect("not poisoned").remove(name);
        match std::fs::remove_dir_all(self.log_dir(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(err(name, e)),
        }
    }

    /// `None` when no container of that name exists.
    pub fn status(&self, name: &str) -> Option<WorkloadStatus> {
        let state = self.runtime.state(name).ok()??;
        let st = match state.status {
            Status::Running => {
                // Adopt on first sight, so its exit is watched.
                return self.running(name);
            }
            _ => {
                let exit = self
                    .exits
                    .lock()
                    .expect("not poisoned")
                    .get(name)
                    .and_then(ExitWatch::get);
                match exit {
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
                }
            }
        };
        Some(self.status_of(name, st))
    }

    /// Every container in the runtime's state dir.
    pub fn names(&self) -> Vec<String> {
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
