//! A fake [`Sys`] for unit tests: a scripted clock, signals and process table; files in
//! memory; every call recorded as a line of text.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::io;
use std::path::Path;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::modules::module_name;
use crate::sys::{MountSpec, PowerAction, Sys};

/// What the next `wait_signal` sees.
#[derive(Debug, Clone)]
pub enum Event {
    /// Delivered at once.
    Signal(Signal),
    /// The newest child exits `after` its start, with SIGCHLD.
    AgentExit { after: Duration, code: i32 },
    /// Nothing happens for this long.
    Idle(Duration),
}

/// Shared, so a test keeps a handle while `Init` owns another.
pub type FakeSys = Rc<FakeState>;

pub struct FakeState {
    base: Instant,
    elapsed: Cell<Duration>,
    events: RefCell<VecDeque<Event>>,
    next_pid: Cell<i32>,
    /// (pid, started at)
    alive: RefCell<Vec<(Pid, Duration)>>,
    exited: RefCell<VecDeque<WaitStatus>>,
    ignore_sigterm: Cell<bool>,
    failing_spawns: Cell<u32>,
    files: RefCell<HashMap<String, String>>,
    failing_mounts: RefCell<HashMap<String, Errno>>,
    failing_writes: RefCell<BTreeSet<String>>,
    module_results: RefCell<HashMap<String, Errno>>,
    calls: RefCell<Vec<String>>,
}

impl Default for FakeState {
    fn default() -> FakeState {
        FakeState {
            base: Instant::now(),
            elapsed: Cell::new(Duration::ZERO),
            events: RefCell::default(),
            next_pid: Cell::new(100),
            alive: RefCell::default(),
            exited: RefCell::default(),
            ignore_sigterm: Cell::new(false),
            failing_spawns: Cell::new(0),
            files: RefCell::default(),
            failing_mounts: RefCell::default(),
            failing_writes: RefCell::default(),
            module_results: RefCell::default(),
            calls: RefCell::default(),
        }
    }
}

impl FakeState {
    pub fn script(&self, events: impl IntoIterator<Item = Event>) {
        self.events.borrow_mut().extend(events);
    }
    pub fn ignore_sigterm(&self) {
        self.ignore_sigterm.set(true);
    }
    pub fn fail_spawns(&self, n: u32) {
        self.failing_spawns.set(n);
    }
    pub fn set_file(&self, path: &str, text: &str) {
        self.files.borrow_mut().insert(path.into(), text.into());
    }
    pub fn fail_mount(&self, target: &str, errno: Errno) {
        self.failing_mounts
            .borrow_mut()
            .insert(target.into(), errno);
    }
    pub fn fail_write(&self, data: &str) {
        self.failing_writes.borrow_mut().insert(data.into());
    }
    pub fn fail_module(&self, name: &str, errno: Errno) {
        self.module_results.borrow_mut().insert(name.into(), errno);
    }
    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }
    pub fn calls_with(&self, prefix: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.starts_with(prefix))
            .collect()
    }
    pub fn elapsed(&self) -> Duration {
        self.elapsed.get()
    }

    fn record(&self, call: String) {
        self.calls.borrow_mut().push(call);
    }
    fn advance(&self, d: Duration) {
        self.elapsed.set(self.elapsed.get() + d);
    }
    fn exit(&self, pid: Pid, status: WaitStatus) {
        self.alive.borrow_mut().retain(|(p, _)| *p != pid);
        self.exited.borrow_mut().push_back(status);
    }
}

impl Sys for FakeSys {
    fn now(&self) -> Instant {
        self.base + self.elapsed.get()
    }

    fn wait_signal(&self, timeout: Option<Duration>) -> Option<Signal> {
        let front = self.events.borrow_mut().pop_front();
        let newest = self.alive.borrow().last().copied();
        let until = |d: Duration| -> Option<Duration> { timeout.filter(|t| *t < d) };
        match (front, newest) {
            (Some(Event::Signal(s)), _) => Some(s),
            (Some(Event::Idle(d)), _) => {
                if let Some(t) = until(d) {
                    self.events.borrow_mut().push_front(Event::Idle(d - t));
                    self.advance(t);
                } else {
                    self.advance(d);
                }
                None
            }
            (Some(Event::AgentExit { after, code }), Some((pid, started))) => {
                let left = (started + after).saturating_sub(self.elapsed.get());
                if let Some(t) = until(left) {
                    self.events
                        .borrow_mut()
                        .push_front(Event::AgentExit { after, code });
                    self.advance(t);
                    return None;
                }
                self.advance(left);
                self.exit(pid, WaitStatus::Exited(pid, code));
                Some(Signal::SIGCHLD)
            }
            (front, _) => {
                // Nothing can happen before the timeout.
                if let Some(e) = front {
                    self.events.borrow_mut().push_front(e);
                }
                let t = timeout.expect("the init loop would wait forever: script ran out");
                self.advance(t);
                None
            }
        }
    }

    fn reap_one(&self) -> Result<Option<WaitStatus>, Errno> {
        if let Some(s) = self.exited.borrow_mut().pop_front() {
            return Ok(Some(s));
        }
        if self.alive.borrow().is_empty() {
            Err(Errno::ECHILD)
        } else {
            Ok(None)
        }
    }

    fn spawn(&self, cmd: &mut Command) -> io::Result<Pid> {
        let at = self.elapsed.get().as_millis();
        if self.failing_spawns.get() > 0 {
            self.failing_spawns.set(self.failing_spawns.get() - 1);
            self.record(format!("spawn failed at {at}ms"));
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let pid = Pid::from_raw(self.next_pid.get());
        self.next_pid.set(pid.as_raw() + 1);
        self.alive.borrow_mut().push((pid, self.elapsed.get()));
        self.record(format!(
            "spawn {} at {at}ms",
            cmd.get_program().to_string_lossy()
        ));
        Ok(pid)
    }

    fn kill(&self, pid: Pid, sig: Signal) -> Result<(), Errno> {
        self.record(format!("kill {pid} {sig}"));
        if !self.alive.borrow().iter().any(|(p, _)| *p == pid) {
            return Err(Errno::ESRCH);
        }
        if sig == Signal::SIGKILL || !self.ignore_sigterm.get() {
            self.exit(pid, WaitStatus::Signaled(pid, sig, false));
        }
        Ok(())
    }

    fn kill_all(&self, sig: Signal) -> Result<(), Errno> {
        self.record(format!("kill_all {sig}"));
        let pids: Vec<Pid> = self.alive.borrow().iter().map(|(p, _)| *p).collect();
        if pids.is_empty() {
            return Err(Errno::ESRCH);
        }
        for pid in pids {
            if sig == Signal::SIGKILL || !self.ignore_sigterm.get() {
                self.exit(pid, WaitStatus::Signaled(pid, sig, false));
            }
        }
        Ok(())
    }

    fn read_file(&self, path: &Path) -> io::Result<String> {
        let key = path.to_string_lossy().into_owned();
        self.files
            .borrow()
            .get(&key)
            .cloned()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn write_file(&self, path: &Path, data: &str) -> io::Result<()> {
        if self.failing_writes.borrow().contains(data) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        self.record(format!("write {} {data}", path.display()));
        Ok(())
    }

    fn mkdir_all(&self, path: &Path) -> io::Result<()> {
        self.record(format!("mkdir {}", path.display()));
        Ok(())
    }

    fn mount(&self, spec: &MountSpec) -> Result<(), Errno> {
        if let Some(e) = self.failing_mounts.borrow().get(spec.target) {
            return Err(*e);
        }
        self.record(format!("mount {} {}", spec.fstype, spec.target));
        // Visible in mountinfo from now on, as with the kernel.
        let mut files = self.files.borrow_mut();
        let mi = files.entry("/proc/self/mountinfo".into()).or_default();
        mi.push_str(&format!(
            "9 1 0:9 / {} rw - {} {} rw\n",
            spec.target, spec.fstype, spec.source
        ));
        Ok(())
    }

    fn unmount(&self, target: &Path) -> Result<(), Errno> {
        self.record(format!("unmount {}", target.display()));
        Ok(())
    }

    fn sync(&self) {
        self.record("sync".into());
    }

    fn finit_module(&self, path: &Path, compressed: bool) -> Result<(), Errno> {
        let flag = if compressed { " compressed" } else { "" };
        self.record(format!("finit_module {}{flag}", path.display()));
        match self
            .module_results
            .borrow()
            .get(&module_name(&path.to_string_lossy()))
        {
            Some(e) => Err(*e),
            None => Ok(()),
        }
    }

    fn disable_ctrl_alt_del(&self) -> Result<(), Errno> {
        self.record("disable_ctrl_alt_del".into());
        Ok(())
    }

    fn reboot(&self, action: PowerAction) -> Result<(), Errno> {
        self.record(format!("reboot {action:?}"));
        Ok(())
    }
}
