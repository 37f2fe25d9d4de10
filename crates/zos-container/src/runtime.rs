//! The runtime seam: a small [`Runtime`] trait the engine programs against (and fakes in
//! its unit tests), and [`Libcontainer`], the real one on youki's libcontainer.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::{Container, ContainerStatus};
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::error::Error;
use crate::exit::{self, Exit, ExitWatch};
use crate::logs::{self, Stream};
use crate::spec::{self, ContainerSpec, LOG_DIR_ANNOTATION};

/// Create attempts when the clone watchdog had to kill a deadlocked helper.
const CREATE_ATTEMPTS: u32 = 4;

/// How many times `delete` retries libcontainer's delete (pauses grow to ~5 s in total).
const DELETE_ATTEMPTS: u32 = 12;

/// libcontainer `chdir`s the whole process around binding and connecting the container's
/// notify socket (a workaround for the 108-byte socket path limit), in `build` and in
/// `start`. Two threads doing that at once connect in each other's directory, so every
/// call that can do it goes through this lock. Code elsewhere in the process must not rely
/// on the working directory (zosd uses absolute paths throughout).
static CHDIR_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn chdir_lock() -> std::sync::MutexGuard<'static, ()> {
    CHDIR_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Lifecycle state of a container, as the runtime sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Status {
    /// Being created (a crash mid-create leaves this).
    Creating,
    /// Created: the init waits for `start` to exec the entrypoint.
    Created,
    /// The entrypoint runs.
    Running,
    /// Frozen (cgroup freezer).
    Paused,
    /// The init has ended; state and cgroup remain until `delete`.
    Stopped,
}

/// What `state` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// The container id.
    pub id: String,
    /// Its lifecycle state.
    pub status: Status,
    /// The init's pid in our PID namespace (while it exists).
    pub pid: Option<i32>,
}

/// A freshly created container.
#[derive(Debug, Clone)]
pub struct Created {
    /// The init's pid in our PID namespace.
    pub pid: i32,
    /// Resolves when the init ends (code or signal).
    pub exit: ExitWatch,
}

/// A container found in the state dir (e.g. after zosd restarted).
#[derive(Debug, Clone)]
pub struct Adopted {
    /// What the runtime's state says of it.
    pub state: ContainerState,
    /// Resolves when it ends; already resolved (`Exit::Unknown`) when it is not running.
    pub exit: ExitWatch,
}

/// The operations the engine needs. Calls block for milliseconds (process creation,
/// cgroup writes): call them from `spawn_blocking` in async code.
pub trait Runtime: Send + Sync {
    /// Write the bundle and create the container (namespaces, cgroup, mounts) without
    /// running the entrypoint yet. Refuses an id that already exists.
    fn create(&self, spec: &ContainerSpec) -> Result<Created, Error>;
    /// Exec the entrypoint of a created container.
    fn start(&self, id: &str) -> Result<(), Error>;
    /// Signal the init; a stopped container is not an error.
    fn kill(&self, id: &str, signal: Signal) -> Result<(), Error>;
    /// Kill whatever runs, remove the cgroup, the state and the bundle. Idempotent.
    fn delete(&self, id: &str) -> Result<(), Error>;
    /// `None` when no such container exists.
    fn state(&self, id: &str) -> Result<Option<ContainerState>, Error>;
    /// Take over an existing container: watch its exit and resume its logs.
    fn adopt(&self, id: &str) -> Result<Option<Adopted>, Error>;
}

/// Where [`Libcontainer`] keeps things.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// libcontainer's root: one state dir per container (`<state_dir>/<id>`).
    pub state_dir: PathBuf,
    /// Bundles (`<bundle_dir>/<id>/config.json`).
    pub bundle_dir: PathBuf,
    /// Cap of one log file (see [`crate::logs`]).
    pub log_cap: u64,
    /// Copy the container's output into its log files from this process. Off in a
    /// process that only creates containers and exits (zosd's `runtime-create`): the
    /// output waits in the FIFO until the process that adopts the container pumps it,
    /// so no line is lost with a pump that dies with its process.
    pub pump_logs: bool,
    /// Where the pumps hand each output line too, beside the log files.
    pub tap: Option<logs::Tap>,
    /// The cgroup every container of this runtime is made under
    /// (`/<cgroup_parent>/<id>` in each hierarchy; see [`spec::validate_cgroup_parent`]).
    /// Two runtimes on one host with containers of one id need different parents: a
    /// delete kills everything in the container's cgroup.
    pub cgroup_parent: String,
}

impl RuntimeConfig {
    /// Both dirs under one root: `<root>/state`, `<root>/bundles`; cgroups under
    /// [`spec::DEFAULT_CGROUP_PARENT`].
    pub fn under(root: &Path) -> RuntimeConfig {
        RuntimeConfig {
            state_dir: root.join("state"),
            bundle_dir: root.join("bundles"),
            log_cap: logs::DEFAULT_LOG_CAP,
            pump_logs: true,
            tap: None,
            cgroup_parent: spec::DEFAULT_CGROUP_PARENT.to_string(),
        }
    }
}

/// The real runtime: youki's libcontainer, cgroupfs driver (no systemd: zosd is PID 1).
#[derive(Debug, Clone)]
pub struct Libcontainer {
    cfg: RuntimeConfig,
}

impl Libcontainer {
    /// Creates the state and bundle directories if missing. Refuses a cgroup parent
    /// that is not a relative path of plain names.
    pub fn new(cfg: RuntimeConfig) -> Result<Libcontainer, Error> {
        spec::validate_cgroup_parent(&cfg.cgroup_parent)?;
        for d in [&cfg.state_dir, &cfg.bundle_dir] {
            std::fs::create_dir_all(d).map_err(Error::io("creating runtime dir", d))?;
        }
        Ok(Libcontainer { cfg })
    }

    /// The configuration it was made with.
    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// `<bundle_dir>/<id>`.
    pub fn bundle_path(&self, id: &str) -> PathBuf {
        self.cfg.bundle_dir.join(id)
    }

    /// `<state_dir>/<id>`.
    pub fn state_path(&self, id: &str) -> PathBuf {
        self.cfg.state_dir.join(id)
    }

    /// Write `<bundle_dir>/<id>/config.json` for `spec` and return the bundle dir.
    pub fn write_bundle(&self, spec: &ContainerSpec) -> Result<PathBuf, Error> {
        let oci = spec.to_oci(&self.cfg.cgroup_parent)?;
        let bundle = self.bundle_path(&spec.id);
        std::fs::create_dir_all(&bundle).map_err(Error::io("creating bundle", &bundle))?;
        let tmp = bundle.join("config.json.tmp");
        let json = serde_json::to_vec_pretty(&oci)
            .map_err(|e| Error::io("serialising", &tmp)(std::io::Error::other(e)))?;
        std::fs::write(&tmp, json).map_err(Error::io("writing", &tmp))?;
        let path = bundle.join("config.json");
        std::fs::rename(&tmp, &path).map_err(Error::io("renaming", &path))?;
        Ok(bundle)
    }

    fn load(&self, id: &str) -> Result<Option<Container>, Error> {
        spec::validate_id(id)?;
        let root = self.state_path(id);
        if !root.join("state.json").exists() {
            return Ok(None);
        }
        // `load` reads /proc/<pid>/stat of the init; when the init is reaped between
        // libcontainer's existence check and that read it fails with "not found". The
        // next read sees no process at all (Stopped): retry that race away.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Container::load(root.clone()) {
                Ok(c) => return Ok(Some(c)),
                Err(e) if attempt < 5 && root.join("state.json").exists() => {
                    tracing::debug!(container = id, attempt, error = %e, "load raced, retrying");
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
                Err(e) => return Err(lc(id, "load", e)),
            }
        }
    }

    /// One libcontainer build: fresh FIFOs and pumps, then namespaces, cgroup and init.
    fn build_once(&self, spec: &ContainerSpec, bundle: &Path) -> Result<Container, Error> {
        let id = spec.id.as_str();
        let out = logs::new_fifo(&spec.log_dir, Stream::Stdout)?;
        let err = logs::new_fifo(&spec.log_dir, Stream::Stderr)?;
        if self.cfg.pump_logs {
            for s in [Stream::Stdout, Stream::Stderr] {
                logs::start_pump(id, &spec.log_dir, s, self.cfg.log_cap, self.cfg.tap.clone())?;
            }
        }
        let stdin = dev_null()?;
        let _lock = chdir_lock();
        let _watch = crate::watchdog::Watch::begin();
        // When this returns the builder is gone, so our copies of the FIFO ends are closed:
        // the container holds the only writers and the pumps see EOF when it is gone.
        ContainerBuilder::new(id.to_string(), SyscallType::default())
            .with_root_path(&self.cfg.state_dir)
            .map_err(|e| lc(id, "create", e))?
            .with_stdin(stdin)
            .with_stdout(out)
            .with_stderr(err)
            .as_init(bundle)
            .with_systemd(false)
            .with_detach(true)
            .build()
            .map_err(|e| lc(id, "create", e))
    }

    /// The cgroup of container `id` (relative to each hierarchy's root) as libcontainer
    /// recorded it at its create: under another parent than ours when the parent changed
    /// since (a node upgraded to a scope of its own), where libcontainer's delete still
    /// finds it. Without a record (no such container yet): `/<our parent>/<id>`.
    pub fn cgroup_path(&self, id: &str) -> PathBuf {
        let recorded = spec::validate_id(id)
            .ok()
            .and_then(|()| libcontainer::config::YoukiConfig::load(self.state_path(id)).ok());
        recorded
            .map(|c| c.cgroup_path)
            .unwrap_or_else(|| spec::cgroup_path(&self.cfg.cgroup_parent, id))
    }

    /// Best-effort removal of whatever a failed create left behind (the bundle too unless
    /// another attempt follows).
    fn cleanup_failed(&self, id: &str, keep_bundle: bool) {
        if let Ok(Some(mut c)) = self.load(id) {
            if let Err(e) = c.delete(true) {
                tracing::warn!(container = id, error = %e, "cleanup after failed create");
            }
        }
        remove_cgroups(&self.cfg.cgroup_parent, id);
        // Killed helpers take a moment to become zombies: two passes.
        crate::watchdog::reap_helper_zombies();
        std::thread::sleep(std::time::Duration::from_millis(20));
        crate::watchdog::reap_helper_zombies();
        let mut dirs = vec![self.state_path(id)];
        if !keep_bundle {
            dirs.push(self.bundle_path(id));
        }
        for d in dirs {
            if let Err(e) = std::fs::remove_dir_all(&d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(container = id, path = %d.display(), error = %e, "cleanup after failed create");
                }
            }
        }
    }
}

fn lc(id: &str, op: &'static str, e: libcontainer::error::LibcontainerError) -> Error {
    Error::Runtime {
        id: id.to_string(),
        op,
        source: Box::new(e),
    }
}

fn status_of(s: ContainerStatus) -> Status {
    match s {
        ContainerStatus::Creating => Status::Creating,
        ContainerStatus::Created => Status::Created,
        ContainerStatus::Running => Status::Running,
        ContainerStatus::Paused => Status::Paused,
        ContainerStatus::Stopped => Status::Stopped,
    }
}

/// Remove the container's cgroups by path, killing what is left in them. For the case
/// libcontainer cannot: a create that died before it saved its state. Covers v1 (one
/// hierarchy per controller mount) and v2 (`/sys/fs/cgroup/<parent>/<id>`).
fn remove_cgroups(parent: &str, id: &str) {
    let rel = spec::cgroup_path(parent, id);
    let rel = rel.strip_prefix("/").unwrap_or(&rel);
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join(rel)];
    if let Ok(rd) = std::fs::read_dir(root) {
        dirs.extend(rd.flatten().map(|e| e.path().join(rel)));
    }
    for dir in dirs.into_iter().filter(|d| d.is_dir()) {
        for attempt in 0..40u64 {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            match std::fs::remove_dir(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if attempt == 39 => {
                    tracing::warn!(container = id, path = %dir.display(), error = %e, "cannot remove cgroup");
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(5 * (attempt + 1))),
            }
        }
    }
}

/// Is `pid` still the process libcontainer recorded? After a reboot or a long downtime the
/// pid may belong to someone else: the container's cgroup (`want`) tells them apart.
fn pid_in_cgroup(pid: i32, want: &Path) -> bool {
    let want = want.to_string_lossy();
    match std::fs::read_to_string(format!("/proc/{pid}/cgroup")) {
        Ok(text) => text
            .lines()
            .filter_map(|l| l.splitn(3, ':').nth(2))
            .any(|p| p == want),
        Err(_) => false,
    }
}

fn dev_null() -> Result<File, Error> {
    OpenOptions::new()
        .read(true)
        .open("/dev/null")
        .map_err(Error::io("opening", "/dev/null"))
}

impl Runtime for Libcontainer {
    fn create(&self, spec: &ContainerSpec) -> Result<Created, Error> {
        spec.validate()?;
        let id = spec.id.as_str();
        if self.state_path(id).exists() {
            return Err(Error::Exists(id.to_string()));
        }
        let bundle = self.write_bundle(spec)?;
        std::fs::create_dir_all(&spec.log_dir)
            .map_err(Error::io("creating log dir", &spec.log_dir))?;
        // A create whose cloned helper deadlocked (see `watchdog`) was killed and failed:
        // that says nothing about the spec, so try again from a clean slate.
        let mut attempt = 0;
        let container = loop {
            attempt += 1;
            let kills = crate::watchdog::kills();
            match self.build_once(spec, &bundle) {
                Ok(c) => break c,
                Err(e) => {
                    tracing::warn!(container = id, attempt, error = %e, "create failed");
                    let retry = crate::watchdog::kills() > kills && attempt < CREATE_ATTEMPTS;
                    self.cleanup_failed(id, retry);
                    if !retry {
                        return Err(e);
                    }
                }
            }
        };
        let pid = match container.pid() {
            Some(p) => p,
            None => {
                self.cleanup_failed(id, false);
                return Err(Error::Sys {
                    id: id.to_string(),
                    op: "create (no init pid)",
                    source: nix::errno::Errno::ESRCH,
                });
            }
        };
        let exit = match exit::watch_child(id, pid) {
            Ok(w) => w,
            Err(e) => {
                self.cleanup_failed(id, false);
                return Err(Error::io("spawning exit watcher for", self.state_path(id))(
                    e,
                ));
            }
        };
        tracing::info!(container = id, pid = pid.as_raw(), "container created");
        Ok(Created {
            pid: pid.as_raw(),
            exit,
        })
    }

    fn start(&self, id: &str) -> Result<(), Error> {
        let mut c = self
            .load(id)?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        {
            let _lock = chdir_lock();
            let _watch = crate::watchdog::Watch::begin();
            c.start().map_err(|e| lc(id, "start", e))?;
        }
        tracing::info!(container = id, "container started");
        Ok(())
    }

    fn kill(&self, id: &str, signal: Signal) -> Result<(), Error> {
        let mut c = self
            .load(id)?
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        if c.status() == ContainerStatus::Stopped {
            return Ok(());
        }
        // The init only: it is PID 1 of the container's PID namespace, so when it dies the
        // kernel kills the rest; a graceful signal lets it shut its children down itself.
        c.kill(signal, false).map_err(|e| lc(id, "kill", e))?;
        tracing::info!(container = id, ?signal, "container signalled");
        Ok(())
    }

    fn delete(&self, id: &str) -> Result<(), Error> {
        // libcontainer SIGKILLs the cgroup's tasks and gives rmdir ~100 ms; a busy machine
        // can take longer to tear a killed process down (EBUSY). Its state stays until the
        // cgroup is gone, so retry the whole delete with a growing pause.
        let mut attempt = 0u32;
        while let Some(mut c) = self.load(id)? {
            match c.delete(true) {
                Ok(()) => break,
                Err(e) if attempt < DELETE_ATTEMPTS => {
                    attempt += 1;
                    tracing::debug!(container = id, attempt, error = %e, "delete not finished, retrying");
                    std::thread::sleep(std::time::Duration::from_millis(50 * u64::from(attempt)));
                }
                Err(e) => return Err(lc(id, "delete", e)),
            }
        }
        // libcontainer removes its state dir and cgroups; a crash mid-create may leave
        // them without a state to delete from.
        remove_cgroups(&self.cfg.cgroup_parent, id);
        for d in [self.state_path(id), self.bundle_path(id)] {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing", d)(e)),
            }
        }
        tracing::info!(container = id, "container deleted");
        Ok(())
    }

    fn state(&self, id: &str) -> Result<Option<ContainerState>, Error> {
        let Some(c) = self.load(id)? else {
            return Ok(None);
        };
        let pid = c.pid().map(|p| p.as_raw());
        let mut status = status_of(c.status());
        if matches!(status, Status::Running | Status::Created | Status::Paused)
            && !pid.is_some_and(|p| pid_in_cgroup(p, &self.cgroup_path(id)))
        {
            // The recorded pid is gone or reused by an unrelated process.
            status = Status::Stopped;
        }
        Ok(Some(ContainerState {
            id: id.to_string(),
            status,
            pid,
        }))
    }

    fn adopt(&self, id: &str) -> Result<Option<Adopted>, Error> {
        let Some(state) = self.state(id)? else {
            return Ok(None);
        };
        let alive = matches!(
            state.status,
            Status::Running | Status::Created | Status::Paused
        );
        let exit = match (alive, state.pid) {
            (true, Some(pid)) => exit::watch_foreign(id, Pid::from_raw(pid))
                .map_err(Error::io("watching adopted container", self.state_path(id)))?,
            _ => {
                let (n, w) = exit::exit_channel();
                n.notify(Exit::Unknown);
                w
            }
        };
        if alive {
            // Resume the logs from the FIFOs the container still holds.
            let config = self.bundle_path(id).join("config.json");
            let log_dir = oci_spec::runtime::Spec::load(&config)
                .ok()
                .and_then(|s| s.annotations().as_ref()?.get(LOG_DIR_ANNOTATION).cloned());
            match log_dir {
                Some(dir) => {
                    for s in [Stream::Stdout, Stream::Stderr] {
                        if let Err(e) = logs::start_pump(
                            id,
                            Path::new(&dir),
                            s,
                            self.cfg.log_cap,
                            self.cfg.tap.clone(),
                        ) {
                            tracing::warn!(container = id, error = %e, "cannot resume logs of adopted container");
                        }
                    }
                }
                None => {
                    tracing::warn!(
                        container = id,
                        "adopted container has no log dir annotation"
                    )
                }
            }
        }
        tracing::info!(container = id, status = ?state.status, pid = ?state.pid, "container adopted");
        Ok(Some(Adopted { state, exit }))
    }
}
