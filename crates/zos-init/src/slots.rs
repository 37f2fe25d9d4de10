//! Which agent PID 1 runs: the image's own, or a release installed in a slot of the
//! state home (`<state>/slots/<version>/`, written by zos-release's `install_release`).
//!
//! The decision is a state machine with an explicit transition table ([`next`]): pure,
//! no clock, no file. [`SlotState`] is persisted in `<state>/slots/state.json` (written
//! to a temporary file, fsynced, renamed, the directory fsynced) after every change, so
//! a power cut leaves either the old or the new state.
//!
//! | state | event | next state | effect |
//! |---|---|---|---|
//! | Image, Committed, RolledBack | `SwitchRequested` of a verified slot, not the running one | Trying | run the slot's agent |
//! | Image, Committed, RolledBack | `SwitchRequested`, slot refused or already running | unchanged | refused (the running agent starts again) |
//! | Trying | `SwitchRequested` | unchanged | refused: one trial at a time |
//! | Trying v | `HealthMark` v | Committed v | none |
//! | Trying v | `AgentExited` | RolledBack v (`exited`, status, last lines) | run the previous agent |
//! | Trying v | `WindowPassed` | RolledBack v (`no_health_mark`, last lines) | stop the trial agent |
//! | Trying v | `Booted` | RolledBack v (`rebooted_during_trial`) | none |
//! | Committed v, RolledBack to v | `Booted` with v refused | RolledBack v (`does_not_verify`), running the image | none |
//! | anything else | any | unchanged | none |
//!
//! The live switch: the agent installs a release, writes its version to
//! `<state>/slots/switch` ([`SWITCH_REQUEST`]) and exits with [`SWITCH_EXIT_CODE`]. PID 1
//! checks the slot and starts its agent (with `ZOSD_SLOT=<version>` in its environment),
//! its standard output and error teed to the console and kept (the last
//! [`LOG_TAIL_LINES`] lines). The new agent proves itself by writing its version to
//! `<state>/slots/health` ([`HEALTH_MARK`]) once it is registered, serving and has sent
//! its first heartbeat, within the health window (120 s by default). Otherwise PID 1
//! goes back to the previous agent by itself and records why in the `RolledBack`
//! state, for that agent to publish as the node's signed rollback record.
//!
//! On a booted node the slots live on a pool, which the image's agent mounts after PID 1
//! looked: PID 1 then found no state file, creates none, and runs the image's agent. Once
//! the state is there, the agent's first switch request (any version) is taken as "look
//! again": PID 1 makes the boot decision on the state it now finds (the committed slot's
//! agent if it verifies), with no trial.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::reaper::Exit;
use crate::supervisor::MakeCommand;
use crate::sys::Sys;

// The protocol's files and exit code, shared with the agent (zos-release's `agent`):
// the switch request, the health mark, the exit code that asks for the switch.
pub use zos_release::agent::{HEALTH_MARK, SWITCH_EXIT_CODE, SWITCH_REQUEST};
/// `<state>/slots/state.json`: the persisted [`SlotState`].
pub const STATE_FILE: &str = "state.json";
/// The environment variable naming the slot an agent runs from (absent: the image's).
pub const SLOT_ENV: &str = "ZOSD_SLOT";
/// The default health window.
pub const DEFAULT_HEALTH_WINDOW: Duration = Duration::from_secs(120);
/// How many of the trial agent's last output lines a rollback keeps.
pub const LOG_TAIL_LINES: usize = 20;
/// The longest line kept (bytes; longer ones are cut).
const LOG_LINE_MAX: usize = 512;
/// How often PID 1 looks for the health mark during a trial.
const POLL: Duration = Duration::from_millis(250);
/// After the window, SIGTERM; after this, SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Why PID 1 went back from a trial (or refused a committed slot at boot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackReason {
    /// `exited`, `no_health_mark`, `rebooted_during_trial` or `does_not_verify`.
    pub cause: String,
    /// The trial agent's exit status (`exit code 3`, `killed by SIGSEGV`), when it
    /// exited; the verification error for `does_not_verify`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Its last output lines, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log_tail: Vec<String>,
}

/// Which agent runs, persisted in `<state>/slots/state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SlotState {
    /// The image's own agent; no slot was ever committed.
    Image,
    /// The slot `version` is on trial since `since` (unix seconds, for humans);
    /// `previous` is the slot to go back to (`None`: the image's agent).
    Trying {
        /// The slot on trial.
        version: String,
        /// When the trial began (unix seconds).
        since: u64,
        /// The agent to go back to.
        previous: Option<String>,
    },
    /// The slot `version` passed its health gate: it runs, and at boot.
    Committed {
        /// The committed slot.
        version: String,
    },
    /// The slot `version` failed (`reason`); `running` runs instead (`None`: the
    /// image's agent).
    RolledBack {
        /// The slot that failed.
        version: String,
        /// Why.
        reason: RollbackReason,
        /// What runs instead.
        running: Option<String>,
    },
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// PID 1 started (a boot); `check` is the verdict on the slot the state runs.
    Booted {
        /// `Err(why)` when the running slot's release or binary does not verify.
        check: Result<(), String>,
    },
    /// The agent exited asking for `version`; `check` is the slot's verdict.
    SwitchRequested {
        /// The requested slot.
        version: String,
        /// `Err(why)` when the slot is missing or does not verify.
        check: Result<(), String>,
        /// Now (unix seconds).
        now: u64,
    },
    /// The health mark names `version`.
    HealthMark {
        /// The version written in the mark.
        version: String,
    },
    /// The agent exited (not a switch request), with this status and output.
    AgentExited {
        /// Its status.
        exit: String,
        /// Its last output lines.
        log_tail: Vec<String>,
    },
    /// The health window passed without the mark; the agent's last lines.
    WindowPassed {
        /// Its last output lines.
        log_tail: Vec<String>,
    },
}

/// What PID 1 does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond the supervisor's usual restart.
    None,
    /// Start this slot's agent next (`None`: the image's).
    Run(Option<String>),
    /// Stop the running (trial) agent; the previous one starts when it is gone.
    StopAgent,
    /// The request is refused (why); the running agent starts again.
    Refused(String),
}

impl SlotState {
    /// The slot whose agent runs in this state (`None`: the image's).
    pub fn running(&self) -> Option<&str> {
        match self {
            SlotState::Image => None,
            SlotState::Trying { version, .. } | SlotState::Committed { version } => Some(version),
            SlotState::RolledBack { running, .. } => running.as_deref(),
        }
    }
}

fn rolled_back(
    version: &str,
    cause: &str,
    detail: Option<String>,
    log_tail: Vec<String>,
    running: Option<String>,
) -> SlotState {
    SlotState::RolledBack {
        version: version.to_owned(),
        reason: RollbackReason {
            cause: cause.to_owned(),
            detail,
            log_tail,
        },
        running,
    }
}

/// The transition table (see the module's documentation). Pure.
pub fn next(state: &SlotState, event: Event) -> (SlotState, Effect) {
    use SlotState as S;
    let same = || (state.clone(), Effect::None);
    match (state, event) {
        // A trial interrupted by a reboot failed: it did not prove itself.
        (
            S::Trying {
                version, previous, ..
            },
            Event::Booted { .. },
        ) => (
            rolled_back(
                version,
                "rebooted_during_trial",
                None,
                Vec::new(),
                previous.clone(),
            ),
            Effect::None,
        ),
        (S::Image, Event::Booted { .. }) => same(),
        (S::Committed { .. } | S::RolledBack { .. }, Event::Booted { check }) => {
            match (state.running(), check) {
                (Some(v), Err(why)) => (
                    rolled_back(v, "does_not_verify", Some(why), Vec::new(), None),
                    Effect::None,
                ),
                _ => same(),
            }
        }
        (S::Trying { .. }, Event::SwitchRequested { .. }) => (
            state.clone(),
            Effect::Refused("a trial is under way".into()),
        ),
        (
            _,
            Event::SwitchRequested {
                version,
                check,
                now,
            },
        ) => {
            if state.running() == Some(version.as_str()) {
                return (
                    state.clone(),
                    Effect::Refused(format!("slot {version} is the one running")),
                );
            }
            match check {
                Err(why) => (state.clone(), Effect::Refused(why)),
                Ok(()) => (
                    S::Trying {
                        version: version.clone(),
                        since: now,
                        previous: state.running().map(str::to_owned),
                    },
                    Effect::Run(Some(version)),
                ),
            }
        }
        (S::Trying { version, .. }, Event::HealthMark { version: marked })
            if *version == marked =>
        {
            (
                S::Committed {
                    version: version.clone(),
                },
                Effect::None,
            )
        }
        (
            S::Trying {
                version, previous, ..
            },
            Event::AgentExited { exit, log_tail },
        ) => (
            rolled_back(version, "exited", Some(exit), log_tail, previous.clone()),
            Effect::Run(previous.clone()),
        ),
        (
            S::Trying {
                version, previous, ..
            },
            Event::WindowPassed { log_tail },
        ) => (
            rolled_back(version, "no_health_mark", None, log_tail, previous.clone()),
            Effect::StopAgent,
        ),
        _ => same(),
    }
}

/// Why the slot state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SlotsError {
    /// Reading or writing a file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `state.json` is not a slot state.
    #[error("{path}: not a slot state: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
}

/// The persisted state in `dir` (`<state>/slots`); [`SlotState::Image`] when there is
/// none.
pub fn load(dir: &Path) -> Result<SlotState, SlotsError> {
    let path = dir.join(STATE_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| SlotsError::Parse { path, source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SlotState::Image),
        Err(source) => Err(SlotsError::Io { path, source }),
    }
}

/// Writes `state` to `dir/state.json`: a temporary file, fsynced, renamed over the old
/// one, the directory fsynced. A power cut leaves the old state or the new.
pub fn store(dir: &Path, state: &SlotState) -> Result<(), SlotsError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let io = |source| SlotsError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut bytes = serde_json::to_vec_pretty(state).expect("a slot state serializes");
    bytes.push(b'\n');
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, &path).map_err(io)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks a slot: `Ok(agent binary)` when its release verifies against the pinned keys
/// and the binary is the one installed; `Err(why)` otherwise.
pub type CheckSlot = Box<dyn Fn(&str) -> Result<PathBuf, String> + Send>;
/// Builds the agent's command from its binary (the image's or a slot's).
pub type BuildAgent = Box<dyn Fn(&Path) -> Command + Send>;

/// Where the image carries the release keys it pins: one ed25519 public key (64 hex)
/// per line; blank lines and `#` comments are skipped.
pub const RELEASE_KEYS: &str = "/etc/zos/release-keys";

/// The release keys pinned in `path` ([`RELEASE_KEYS`]). Empty when the file is
/// missing (an image without keys accepts no release: every slot is refused); a line
/// that is not a key is logged and skipped.
pub fn pinned_keys(path: &Path) -> std::collections::BTreeSet<zos_contract::PublicKey> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "no pinned release keys: no release is accepted");
            return Default::default();
        }
    };
    let mut keys = std::collections::BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.parse() {
            Ok(k) => {
                keys.insert(k);
            }
            Err(_) => {
                tracing::error!(path = %path.display(), line = n + 1, "not a release key: skipped")
            }
        }
    }
    keys
}

/// The boot check of a slot in `dir`: zos-release's `check_slot` against `keys` (the
/// record still verifies and names the slot, the agent's sha256 is the one installed).
/// `Err` is `<code>: <message>`.
pub fn release_check(
    dir: PathBuf,
    keys: std::collections::BTreeSet<zos_contract::PublicKey>,
) -> CheckSlot {
    Box::new(move |version: &str| {
        zos_release::check_slot(&dir, version, &keys).map_err(|e| format!("{}: {e}", e.code()))
    })
}

/// How long an exited trial agent's last lines are waited for: the pipe ends when its
/// last writer closes it, which a process the agent left behind could delay.
const TAIL_EOF_WAIT: Duration = Duration::from_secs(2);

/// The output lines of the agent on trial, kept for the rollback record, and whether
/// the copying thread has seen the end of the pipe.
#[derive(Debug, Clone, Default)]
pub struct LogTail {
    lines: Arc<Mutex<VecDeque<String>>>,
    ended: Arc<(Mutex<bool>, Condvar)>,
}

impl LogTail {
    /// The lines kept, oldest first.
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|l| l.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn clear(&self) {
        if let Ok(mut l) = self.lines.lock() {
            l.clear();
        }
    }

    fn set_ended(&self, ended: bool) {
        let (lock, cvar) = &*self.ended;
        if let Ok(mut e) = lock.lock() {
            *e = ended;
            cvar.notify_all();
        }
    }

    /// Waits (at most `timeout`) until the copying thread has read the pipe to its end:
    /// every line the agent wrote is then kept.
    fn wait_ended(&self, timeout: Duration) {
        let (lock, cvar) = &*self.ended;
        if let Ok(e) = lock.lock() {
            let _ = cvar.wait_timeout_while(e, timeout, |ended| !*ended);
        }
    }

    fn push(&self, line: &str) {
        let mut line = line.trim_end().to_owned();
        if line.len() > LOG_LINE_MAX {
            let mut cut = LOG_LINE_MAX;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        if let Ok(mut l) = self.lines.lock() {
            if l.len() == LOG_TAIL_LINES {
                l.pop_front();
            }
            l.push_back(line);
        }
    }

    /// Gives `cmd` a pipe as standard output and error; a thread copies every line to
    /// PID 1's standard error (the console) and keeps the last ones. The thread ends when
    /// the last writer closes the pipe.
    fn tee(&self, cmd: &mut Command) -> std::io::Result<()> {
        // Close-on-exec both: the child gets the writer as its fds 1 and 2 only.
        let (reader, writer) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let reader = std::fs::File::from(reader);
        cmd.stdout(Stdio::from(writer.try_clone()?));
        cmd.stderr(Stdio::from(writer));
        let tail = self.clone();
        self.set_ended(false);
        std::thread::Builder::new()
            .name("agent-tail".into())
            .spawn(move || {
                let mut reader = BufReader::new(reader);
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    match reader.read_until(b'\n', &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {
                            let _ = std::io::stderr().write_all(&buf);
                            tail.push(&String::from_utf8_lossy(&buf));
                        }
                    }
                }
                tail.set_ended(true);
            })?;
        Ok(())
    }
}

/// PID 1's side of the slots: the state, the agent's binary, the trial's clock and
/// output. Shared between the supervisor's command maker and the init loop
/// ([`SharedSlots`]).
pub struct Slots {
    dir: PathBuf,
    image_agent: PathBuf,
    check: CheckSlot,
    build: BuildAgent,
    window: Duration,
    state: SlotState,
    agent: PathBuf,
    /// A state file was there when PID 1 looked (at boot, or since).
    found: bool,
    trial_started: Option<Instant>,
    stop_sent: Option<Instant>,
    tail: LogTail,
}

/// [`Slots`] behind a lock: one handle for the command maker, one for the loop.
#[derive(Clone)]
pub struct SharedSlots(Arc<Mutex<Slots>>);

/// The boot decision on the state in `dir`: the state after the boot event, the agent
/// to run, and whether a state file was there at all. Writes the state back when the
/// boot changed it (a state file is never created here: see [`Slots`]).
fn boot_choice(dir: &Path, image_agent: &Path, check: &CheckSlot) -> (SlotState, PathBuf, bool) {
    let found = dir.join(STATE_FILE).exists();
    let loaded = load(dir).unwrap_or_else(|error| {
        tracing::error!(%error, "slot state unreadable: running the image's agent");
        SlotState::Image
    });
    let mut state = loaded.clone();
    let mut agent = image_agent.to_path_buf();
    // At most two rounds: a trial rolled back to a committed slot, then that slot's
    // check.
    for _ in 0..2 {
        let verdict = match state.running() {
            None => Ok(image_agent.to_path_buf()),
            Some(v) => check(v),
        };
        let event = Event::Booted {
            check: verdict.clone().map(|_| ()),
        };
        let (new, _) = next(&state, event);
        if new == state {
            if let Ok(path) = verdict {
                agent = path;
            }
            break;
        }
        tracing::warn!(from = ?state, to = ?new, "slot state at boot");
        state = new;
        agent = image_agent.to_path_buf();
    }
    if state != loaded || (found && load(dir).is_err()) {
        if let Err(error) = store(dir, &state) {
            tracing::error!(%error, "writing the slot state");
        }
    }
    tracing::info!(state = ?state, agent = %agent.display(), found, "agent slot chosen");
    (state, agent, found)
}

impl Slots {
    /// Reads `dir/state.json` and applies the boot event: the running slot is checked
    /// (`check`), a trial interrupted by the boot is rolled back, and a slot that does
    /// not verify gives way to the image's agent (`image_agent`). Logs why; an
    /// unreadable state file counts as none (the image's agent runs).
    pub fn at_boot(
        dir: &Path,
        image_agent: &Path,
        check: CheckSlot,
        build: BuildAgent,
        window: Duration,
    ) -> Slots {
        let (state, agent, found) = boot_choice(dir, image_agent, &check);
        Slots {
            dir: dir.to_path_buf(),
            image_agent: image_agent.to_path_buf(),
            check,
            build,
            window,
            state,
            agent,
            found,
            trial_started: None,
            stop_sent: None,
            tail: LogTail::default(),
        }
    }

    /// The current state.
    pub fn state(&self) -> &SlotState {
        &self.state
    }

    /// Shares it with the command maker and the loop.
    pub fn shared(self) -> SharedSlots {
        SharedSlots(Arc::new(Mutex::new(self)))
    }

    fn apply(&mut self, event: Event) -> Effect {
        let (new, effect) = next(&self.state, event);
        if new != self.state {
            tracing::info!(from = ?self.state, to = ?new, "slot state");
            if let Err(error) = store(&self.dir, &new) {
                tracing::error!(%error, "writing the slot state");
            }
            self.found = true;
            self.state = new;
        }
        match &effect {
            Effect::Run(slot) => {
                self.agent = match slot {
                    None => self.image_agent.clone(),
                    Some(v) => (self.check)(v).unwrap_or_else(|why| {
                        tracing::error!(slot = %v, %why, "slot does not verify: the image's agent");
                        self.image_agent.clone()
                    }),
                };
            }
            Effect::StopAgent => {}
            Effect::Refused(why) => tracing::warn!(%why, "switch refused"),
            Effect::None => {}
        }
        if !matches!(self.state, SlotState::Trying { .. }) {
            self.trial_started = None;
            self.stop_sent = None;
        }
        if matches!(self.state, SlotState::RolledBack { .. }) && !matches!(effect, Effect::Run(_)) {
            self.agent = match self.state.running() {
                None => self.image_agent.clone(),
                Some(v) => (self.check)(v).unwrap_or_else(|_| self.image_agent.clone()),
            };
        }
        effect
    }

    fn command(&mut self) -> Command {
        let mut cmd = (self.build)(&self.agent);
        if let Some(v) = self.state.running() {
            cmd.env(SLOT_ENV, v);
        }
        if let SlotState::Trying { .. } = self.state {
            self.tail.clear();
            // The window runs from the first start: a trial agent that cannot even be
            // spawned (retried with backoff) still meets its deadline.
            self.trial_started.get_or_insert_with(Instant::now);
            if let Err(error) = self.tail.tee(&mut cmd) {
                tracing::error!(%error, "the trial agent's output is not captured");
            }
        }
        cmd
    }

    fn on_agent_exit(&mut self, exit: &Exit) {
        if matches!(exit, Exit::Code(SWITCH_EXIT_CODE))
            && !self.found
            && self.dir.join(STATE_FILE).exists()
        {
            // The state home came up after PID 1 looked (on a booted node the slots live
            // on a pool the image's agent mounts): the boot decision, now. The request
            // is the agent's "look again".
            let _ = std::fs::remove_file(self.dir.join(SWITCH_REQUEST));
            let (state, agent, found) = boot_choice(&self.dir, &self.image_agent, &self.check);
            self.state = state;
            self.agent = agent;
            self.found = found;
            return;
        }
        if matches!(exit, Exit::Code(SWITCH_EXIT_CODE)) {
            let request = self.dir.join(SWITCH_REQUEST);
            if let Ok(text) = std::fs::read_to_string(&request) {
                let _ = std::fs::remove_file(&request);
                let version = text.trim().to_owned();
                let _ = std::fs::remove_file(self.dir.join(HEALTH_MARK));
                let check = (self.check)(&version).map(|_| ());
                self.apply(Event::SwitchRequested {
                    version,
                    check,
                    now: unix_now(),
                });
                return;
            }
        }
        if matches!(self.state, SlotState::Trying { .. }) {
            // The agent's last lines: once the copying thread has read its pipe to the end.
            self.tail.wait_ended(TAIL_EOF_WAIT);
        }
        let log_tail = self.tail.lines();
        self.apply(Event::AgentExited {
            exit: exit.to_string(),
            log_tail,
        });
    }

    /// During a trial: looks for the health mark, and past the window stops the agent
    /// (SIGTERM, then SIGKILL). Returns how long the loop may sleep.
    fn poll(&mut self, sys: &dyn Sys, agent: Option<Pid>) -> Option<Duration> {
        let SlotState::Trying { version, .. } = &self.state else {
            return None;
        };
        let started = self.trial_started?;
        if let Ok(mark) = std::fs::read_to_string(self.dir.join(HEALTH_MARK)) {
            if mark.trim() == version {
                self.apply(Event::HealthMark {
                    version: mark.trim().to_owned(),
                });
                return None;
            }
        }
        if started.elapsed() >= self.window {
            let log_tail = self.tail.lines();
            if self.apply(Event::WindowPassed { log_tail }) == Effect::StopAgent {
                if let Some(pid) = agent {
                    let _ = sys.kill(pid, Signal::SIGTERM);
                    self.stop_sent = Some(Instant::now());
                }
            }
            return Some(POLL);
        }
        Some(POLL.min(self.window - started.elapsed()))
    }
}

impl SharedSlots {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The supervisor's command maker: the chosen agent's command.
    pub fn make_command(&self) -> MakeCommand {
        let me = self.clone();
        Box::new(move || me.lock().command())
    }

    /// The current state.
    pub fn state(&self) -> SlotState {
        self.lock().state.clone()
    }

    /// The loop's call after the supervisor reaped the agent.
    pub fn on_agent_exit(&self, exit: &Exit) {
        self.lock().on_agent_exit(exit)
    }

    /// The loop's call on every wakeup: how long it may sleep at most (`None`: no
    /// bound). Also sends SIGKILL to a stopped trial agent that outlived the grace.
    pub fn poll(&self, sys: &dyn Sys, agent: Option<Pid>) -> Option<Duration> {
        let mut s = self.lock();
        if let (Some(at), Some(pid)) = (s.stop_sent, agent) {
            if at.elapsed() >= STOP_GRACE {
                let _ = sys.kill(pid, Signal::SIGKILL);
                s.stop_sent = None;
            } else {
                return Some(POLL);
            }
        }
        s.poll(sys, agent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> String {
        s.to_owned()
    }

    fn trying(version: &str, previous: Option<&str>) -> SlotState {
        SlotState::Trying {
            version: v(version),
            since: 100,
            previous: previous.map(v),
        }
    }

    fn switch(version: &str, check: Result<(), String>) -> Event {
        Event::SwitchRequested {
            version: v(version),
            check,
            now: 100,
        }
    }

    #[test]
    fn a_verified_switch_starts_a_trial_from_the_running_agent() {
        let (s, e) = next(&SlotState::Image, switch("0.2.0", Ok(())));
        assert_eq!(s, trying("0.2.0", None));
        assert_eq!(e, Effect::Run(Some(v("0.2.0"))));
        let committed = SlotState::Committed {
            version: v("0.2.0"),
        };
        let (s, e) = next(&committed, switch("0.3.0", Ok(())));
        assert_eq!(s, trying("0.3.0", Some("0.2.0")));
        assert_eq!(e, Effect::Run(Some(v("0.3.0"))));
        let back = rolled_back("0.3.0", "exited", None, vec![], Some(v("0.2.0")));
        let (s, _) = next(&back, switch("0.4.0", Ok(())));
        assert_eq!(s, trying("0.4.0", Some("0.2.0")));
    }

    #[test]
    fn a_refused_switch_changes_nothing() {
        let committed = SlotState::Committed {
            version: v("0.2.0"),
        };
        let (s, e) = next(&committed, switch("0.3.0", Err("bad_signature".into())));
        assert_eq!(s, committed);
        assert_eq!(e, Effect::Refused(v("bad_signature")));
        let (s, e) = next(&committed, switch("0.2.0", Ok(())));
        assert_eq!(s, committed);
        assert!(matches!(e, Effect::Refused(w) if w.contains("running")));
        let t = trying("0.3.0", Some("0.2.0"));
        let (s, e) = next(&t, switch("0.4.0", Ok(())));
        assert_eq!(s, t);
        assert!(matches!(e, Effect::Refused(w) if w.contains("trial")));
    }

    #[test]
    fn the_health_mark_of_the_trial_commits_it_and_no_other() {
        let t = trying("0.3.0", Some("0.2.0"));
        let (s, e) = next(
            &t,
            Event::HealthMark {
                version: v("0.2.0"),
            },
        );
        assert_eq!(
            (s, e),
            (t.clone(), Effect::None),
            "an old mark commits nothing"
        );
        let (s, e) = next(
            &t,
            Event::HealthMark {
                version: v("0.3.0"),
            },
        );
        assert_eq!(
            s,
            SlotState::Committed {
                version: v("0.3.0")
            }
        );
        assert_eq!(e, Effect::None);
    }

    #[test]
    fn a_trial_that_exits_goes_back_to_the_previous_agent_with_the_reason() {
        let t = trying("0.3.0", Some("0.2.0"));
        let (s, e) = next(
            &t,
            Event::AgentExited {
                exit: v("exit code 3"),
                log_tail: vec![v("fatal: no notary")],
            },
        );
        assert_eq!(
            s,
            SlotState::RolledBack {
                version: v("0.3.0"),
                reason: RollbackReason {
                    cause: v("exited"),
                    detail: Some(v("exit code 3")),
                    log_tail: vec![v("fatal: no notary")],
                },
                running: Some(v("0.2.0")),
            }
        );
        assert_eq!(e, Effect::Run(Some(v("0.2.0"))));
        // From the image: back to the image.
        let (s, e) = next(
            &trying("0.2.0", None),
            Event::AgentExited {
                exit: v("killed by SIGSEGV"),
                log_tail: vec![],
            },
        );
        assert_eq!(s.running(), None);
        assert_eq!(e, Effect::Run(None));
    }

    #[test]
    fn a_trial_past_its_window_is_stopped_and_rolled_back() {
        let (s, e) = next(
            &trying("0.3.0", Some("0.2.0")),
            Event::WindowPassed {
                log_tail: vec![v("registering...")],
            },
        );
        let SlotState::RolledBack {
            version,
            reason,
            running,
        } = &s
        else {
            panic!("{s:?}")
        };
        assert_eq!(version, "0.3.0");
        assert_eq!(reason.cause, "no_health_mark");
        assert_eq!(reason.log_tail, vec![v("registering...")]);
        assert_eq!(running.as_deref(), Some("0.2.0"));
        assert_eq!(e, Effect::StopAgent);
        // Its exit afterwards is a plain restart of the previous agent.
        let (s2, e) = next(
            &s,
            Event::AgentExited {
                exit: v("killed by SIGTERM"),
                log_tail: vec![],
            },
        );
        assert_eq!((s2, e), (s, Effect::None));
    }

    #[test]
    fn at_boot_a_trial_is_a_failure_and_a_slot_that_does_not_verify_gives_way() {
        let (s, _) = next(
            &trying("0.3.0", Some("0.2.0")),
            Event::Booted { check: Ok(()) },
        );
        assert!(
            matches!(&s, SlotState::RolledBack { reason, running, .. }
                if reason.cause == "rebooted_during_trial" && running.as_deref() == Some("0.2.0")),
            "{s:?}"
        );
        let c = SlotState::Committed {
            version: v("0.2.0"),
        };
        assert_eq!(next(&c, Event::Booted { check: Ok(()) }).0, c);
        let (s, _) = next(
            &c,
            Event::Booted {
                check: Err(v("sha256 mismatch")),
            },
        );
        assert!(
            matches!(&s, SlotState::RolledBack { version, reason, running: None }
                if version == "0.2.0" && reason.cause == "does_not_verify"
                    && reason.detail.as_deref() == Some("sha256 mismatch")),
            "{s:?}"
        );
        assert_eq!(
            next(&SlotState::Image, Event::Booted { check: Ok(()) }).0,
            SlotState::Image
        );
    }

    #[test]
    fn plain_exits_and_stray_marks_outside_a_trial_change_nothing() {
        for s in [
            SlotState::Image,
            SlotState::Committed {
                version: v("0.2.0"),
            },
            rolled_back("0.3.0", "exited", None, vec![], None),
        ] {
            for e in [
                Event::AgentExited {
                    exit: v("exit code 1"),
                    log_tail: vec![],
                },
                Event::HealthMark {
                    version: v("0.3.0"),
                },
                Event::WindowPassed { log_tail: vec![] },
            ] {
                assert_eq!(next(&s, e), (s.clone(), Effect::None));
            }
        }
    }

    fn check_ok(dir: PathBuf) -> CheckSlot {
        Box::new(move |v: &str| {
            let p = dir.join(v).join("zosd");
            if p.exists() {
                Ok(p)
            } else {
                Err(format!("no agent in slot {v}"))
            }
        })
    }

    #[test]
    fn the_state_persists_and_boot_picks_the_committed_slot_or_the_image() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("slots");
        let image = tmp.path().join("init");
        assert_eq!(load(&dir).unwrap(), SlotState::Image, "no file: the image");
        store(
            &dir,
            &SlotState::Committed {
                version: v("0.2.0"),
            },
        )
        .unwrap();
        assert_eq!(
            load(&dir).unwrap(),
            SlotState::Committed {
                version: v("0.2.0")
            }
        );
        assert!(!dir.join(format!(".{STATE_FILE}.tmp")).exists());
        let build: fn() -> BuildAgent = || Box::new(|p: &Path| Command::new(p));

        // The slot's agent is missing: the image's agent, and the state says why.
        let s = Slots::at_boot(
            &dir,
            &image,
            check_ok(dir.clone()),
            build(),
            DEFAULT_HEALTH_WINDOW,
        );
        assert_eq!(s.agent, image);
        assert!(
            matches!(s.state(), SlotState::RolledBack { reason, running: None, .. } if reason.cause == "does_not_verify")
        );
        assert_eq!(&load(&dir).unwrap(), s.state());

        // Installed and committed: the slot's agent.
        std::fs::create_dir_all(dir.join("0.2.0")).unwrap();
        std::fs::write(dir.join("0.2.0/zosd"), b"agent").unwrap();
        store(
            &dir,
            &SlotState::Committed {
                version: v("0.2.0"),
            },
        )
        .unwrap();
        let mut s = Slots::at_boot(
            &dir,
            &image,
            check_ok(dir.clone()),
            build(),
            DEFAULT_HEALTH_WINDOW,
        );
        assert_eq!(s.agent, dir.join("0.2.0/zosd"));
        let cmd = s.command();
        assert!(cmd
            .get_envs()
            .any(|(k, val)| k == SLOT_ENV && val == Some("0.2.0".as_ref())));

        // A trial cut by a power cut: back to the committed slot it came from.
        store(&dir, &trying("0.3.0", Some("0.2.0"))).unwrap();
        let s = Slots::at_boot(
            &dir,
            &image,
            check_ok(dir.clone()),
            build(),
            DEFAULT_HEALTH_WINDOW,
        );
        assert_eq!(s.agent, dir.join("0.2.0/zosd"));
        assert!(
            matches!(s.state(), SlotState::RolledBack { reason, .. } if reason.cause == "rebooted_during_trial")
        );

        // Garbage in the file: the image's agent.
        std::fs::write(dir.join(STATE_FILE), b"{").unwrap();
        let s = Slots::at_boot(
            &dir,
            &image,
            check_ok(dir.clone()),
            build(),
            DEFAULT_HEALTH_WINDOW,
        );
        assert_eq!(s.agent, image);
        assert_eq!(s.state(), &SlotState::Image);
    }

    #[test]
    fn a_state_that_appears_after_boot_is_adopted_at_the_agents_request() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("slots");
        let image = tmp.path().join("init");
        let build: BuildAgent = Box::new(|p: &Path| Command::new(p));
        let mut s = Slots::at_boot(
            &dir,
            &image,
            check_ok(dir.clone()),
            build,
            DEFAULT_HEALTH_WINDOW,
        );
        assert_eq!(s.state(), &SlotState::Image);
        assert!(
            !dir.exists(),
            "PID 1 creates no state where the pools will be"
        );
        // The image's agent mounted the pools: a committed, installed slot is there.
        std::fs::create_dir_all(dir.join("0.2.0")).unwrap();
        std::fs::write(dir.join("0.2.0/zosd"), b"agent").unwrap();
        store(
            &dir,
            &SlotState::Committed {
                version: v("0.2.0"),
            },
        )
        .unwrap();
        std::fs::write(dir.join(SWITCH_REQUEST), "0.2.0").unwrap();
        s.on_agent_exit(&Exit::Code(SWITCH_EXIT_CODE));
        assert_eq!(
            s.state(),
            &SlotState::Committed {
                version: v("0.2.0")
            },
            "no trial: the boot choice"
        );
        assert_eq!(s.agent, dir.join("0.2.0/zosd"));
        assert!(!dir.join(SWITCH_REQUEST).exists());
        // From then on a request is a switch with its gate.
        std::fs::create_dir_all(dir.join("0.3.0")).unwrap();
        std::fs::write(dir.join("0.3.0/zosd"), b"agent").unwrap();
        std::fs::write(dir.join(SWITCH_REQUEST), "0.3.0").unwrap();
        s.on_agent_exit(&Exit::Code(SWITCH_EXIT_CODE));
        assert_eq!(s.state(), &trying_since(&s, "0.3.0", Some("0.2.0")));
    }

    fn trying_since(s: &Slots, version: &str, previous: Option<&str>) -> SlotState {
        let SlotState::Trying { since, .. } = s.state() else {
            panic!("{:?}", s.state())
        };
        SlotState::Trying {
            version: v(version),
            since: *since,
            previous: previous.map(v),
        }
    }

    #[test]
    fn pinned_keys_are_read_line_by_line_and_a_missing_file_pins_none() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("release-keys");
        assert!(pinned_keys(&f).is_empty());
        let k = zos_contract::SecretKey::from_seed([5; 32]).public();
        std::fs::write(&f, format!("# the release keys\n\n{k}\nnot-a-key\n")).unwrap();
        assert_eq!(pinned_keys(&f), [k].into());
        // The check refuses a missing slot with zos-release's code.
        let check = release_check(tmp.path().join("slots"), [k].into());
        let err = check("0.2.0").unwrap_err();
        assert!(err.starts_with("no_slot: "), "{err}");
    }

    #[test]
    fn the_json_form_is_tagged() {
        let j = serde_json::to_value(trying("0.3.0", None)).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"state": "trying", "version": "0.3.0", "since": 100, "previous": null})
        );
    }
}
