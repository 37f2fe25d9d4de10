//! zos-init: what zosd does as PID 1, small enough to read in one sitting.
//!
//! - [`cmdline`]: `zos.*` boot parameters from `/proc/cmdline`;
//! - [`boot`]: the machine's part of a boot, those below in order, each logged;
//! - [`agent_config`]: the agent's node.toml, written from them at every boot;
//! - [`console`]: `/dev/console` as PID 1's standard streams;
//! - [`rootfs`]: off the kernel's initramfs onto a tmpfs root (pivot_root works there);
//! - [`mounts`]: proc, sys, dev, devpts, shm, run, cgroup2 (idempotent); the 9p shares;
//! - [`modules`]: kernel modules in `modules.dep` order, with `finit_module`;
//! - [`reaper`]: waiting for every orphan;
//! - [`supervisor`]: the agent as a child, restarted with backoff, forever;
//! - [`slots`]: which agent runs (the image's or an installed release's), the live
//!   switch and its health gate, the automatic rollback;
//! - [`shutdown`]: signals to an orderly power-off or reboot;
//! - [`power_button`]: the power button's press, as SIGPWR.
//!
//! [`Init`] ties the last three together into the loop PID 1 runs. Every system call
//! that changes the machine goes through [`sys::Sys`], so tests use a fake that records
//! the unmounts and the power-off instead of doing them.
//!
//! PID 1 takes its signals synchronously: [`block_init_signals`] blocks them before any
//! thread exists, and the loop sleeps in `sigtimedwait`. No signal handlers.

pub mod agent_config;
pub mod boot;
pub mod cmdline;
pub mod coldplug;
pub mod console;
pub mod modules;
pub mod mounts;
pub mod power_button;
pub mod reaper;
pub mod rootfs;
pub mod shutdown;
pub mod slots;
pub mod supervisor;
pub mod sys;
#[cfg(test)]
mod testing;

pub use cmdline::{BootParams, CmdlineWarning, ModulesMode, RunMode, Share};
pub use shutdown::{ShutdownPlan, ShutdownReport};
pub use supervisor::{MakeCommand, RespawnBackoff, Supervisor};
pub use sys::{
    block_init_signals, cap_malloc_arenas, release_free_memory, set_child_subreaper, Linux,
    PowerAction, Sys,
};

use nix::sys::signal::Signal;

/// `/proc/self/ns/pid` of the machine's own PID namespace (PROC_PID_INIT_INO).
const INITIAL_PID_NS: &str = "pid:[4026531836]";

/// Why this process may not act as the machine's init.
#[derive(Debug, thiserror::Error)]
pub enum NotMachineInit {
    /// The process is not PID 1 at all.
    #[error("must run as PID 1 (/init in the boot image)")]
    NotPid1,
    /// PID 1, but of a container's PID namespace (the text is its
    /// `/proc/self/ns/pid` link): acting as init would shut down the host.
    #[error("PID 1 of a PID namespace ({0}), not of the machine: refusing to act as its init")]
    PidNamespace(String),
}

/// Whether this process is PID 1 (of some PID namespace).
pub fn is_pid1() -> bool {
    nix::unistd::getpid().as_raw() == 1
}

/// Whether this process is the machine's PID 1: everything an init does would unmount
/// the host's filesystems and power it off, so nothing may start before this holds.
/// (/proc is not mounted yet at a real boot; if it is, the PID namespace is checked.)
pub fn check_machine_init() -> Result<(), NotMachineInit> {
    if !is_pid1() {
        return Err(NotMachineInit::NotPid1);
    }
    match std::fs::read_link("/proc/self/ns/pid") {
        Ok(ns) if ns != std::path::Path::new(INITIAL_PID_NS) => {
            Err(NotMachineInit::PidNamespace(ns.display().to_string()))
        }
        _ => Ok(()),
    }
}

/// PID 1's loop: supervise the agent, reap everything, wait for a shutdown signal.
pub struct Init<S: Sys> {
    /// The machine (the real [`Linux`], or a test's fake).
    pub sys: S,
    /// The agent's supervisor; its state survives a panic of [`Init::run`].
    pub supervisor: Supervisor,
    /// What to stop, unmount and call at shutdown.
    pub plan: ShutdownPlan,
    /// The agent's slots, when the agent's command comes from them
    /// ([`Init::with_slots`]).
    pub slots: Option<slots::SharedSlots>,
}

impl<S: Sys> Init<S> {
    /// PID 1's loop over `sys`, supervising the agent `agent` makes (started at the
    /// first [`Init::run`] tick, not here), restarted under `backoff`.
    pub fn new(sys: S, agent: MakeCommand, backoff: RespawnBackoff, plan: ShutdownPlan) -> Init<S> {
        let supervisor = Supervisor::new(&sys, agent, backoff);
        Init {
            sys,
            supervisor,
            plan,
            slots: None,
        }
    }

    /// PID 1's loop whose agent comes from `slots` (its command maker, the switch
    /// requests, the health gate: [`slots`]).
    pub fn with_slots(
        sys: S,
        slots: slots::SharedSlots,
        backoff: RespawnBackoff,
        plan: ShutdownPlan,
    ) -> Init<S> {
        let mut init = Init::new(sys, slots.make_command(), backoff, plan);
        init.slots = Some(slots);
        init
    }

    /// Runs until a shutdown signal, then shuts down. Returns only when the final reboot
    /// call returned (a test's fake, or a failed call: the caller then halts). Can be
    /// called again after a panic: the agent's state lives in `self`.
    pub fn run(&mut self) -> ShutdownReport {
        let action = loop {
            let mut sleep = self.supervisor.tick(&self.sys);
            if let Some(slots) = &self.slots {
                let bound = slots.poll(&self.sys, self.supervisor.agent_pid());
                sleep = match (sleep, bound) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let signal = self.sys.wait_signal(sleep);
            // Reap on every wakeup: SIGCHLDs coalesce, and a timeout may hide one.
            for r in reaper::reap_all(&self.sys).reaped {
                if self.supervisor.on_reaped(&self.sys, &r) {
                    if let Some(slots) = &self.slots {
                        slots.on_agent_exit(&r.exit);
                    }
                } else {
                    tracing::debug!(pid = r.pid.as_raw(), exit = %r.exit, "reaped orphan");
                }
            }
            match signal {
                None | Some(Signal::SIGCHLD) => {}
                Some(sig) => match shutdown::action_for(sig) {
                    Some(action) => break action,
                    None => tracing::info!(signal = %sig, "signal ignored"),
                },
            }
        };
        shutdown::shutdown(&self.sys, self.supervisor.agent_pid(), action, &self.plan)
    }

    /// [`Init::run`] forever: a panic in the loop is logged and the loop resumed (the
    /// agent's state is in `self`) a second later, without spinning; after a shutdown
    /// whose reboot call returned, [`Init::halt`]. PID 1 never exits.
    pub fn run_forever(mut self) -> ! {
        loop {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run()));
            match ran {
                Ok(_report) => self.halt(),
                Err(_) => {
                    tracing::error!("PID 1 loop panicked; resuming");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        }
    }

    /// After a failed reboot call: keep reaping, forever. PID 1 never exits.
    pub fn halt(&self) -> ! {
        tracing::error!("halted: reaping only");
        loop {
            let _ = self.sys.wait_signal(None);
            reaper::reap_all(&self.sys);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::time::Duration;

    use super::*;
    use crate::reaper::Exit;
    use crate::testing::{Event, FakeSys};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn agent() -> MakeCommand {
        Box::new(|| Command::new("agent"))
    }

    #[test]
    fn crashes_are_restarted_with_backoff_then_sigterm_shuts_down_in_order() {
        let sys = FakeSys::default();
        sys.set_file(
            "/proc/self/mountinfo",
            "1 0 0:1 / / rw - rootfs rootfs rw\n2 1 0:2 / /proc rw - proc proc rw\n3 1 0:3 / /run rw - tmpfs run rw\n",
        );
        sys.script([
            Event::AgentExit {
                after: ms(100),
                code: 1,
            },
            Event::AgentExit {
                after: ms(200),
                code: 101,
            },
            Event::Signal(Signal::SIGHUP),
            Event::AgentExit {
                after: Duration::from_secs(100),
                code: 0,
            },
            Event::Idle(Duration::from_secs(5)),
            Event::Signal(Signal::SIGTERM),
        ]);
        let mut init = Init::new(
            sys.clone(),
            agent(),
            RespawnBackoff::default(),
            ShutdownPlan::default(),
        );
        let report = init.run();

        // Starts at 0, after a 100 ms run + 1 s, after a 200 ms run + 2 s, and after a
        // stable 100 s run + 1 s again.
        assert_eq!(
            sys.calls_with("spawn"),
            vec![
                "spawn agent at 0ms",
                "spawn agent at 1100ms",
                "spawn agent at 3300ms",
                "spawn agent at 104300ms"
            ]
        );
        assert_eq!(init.supervisor.starts, 4);
        assert_eq!(
            report.agent_exit,
            Some(Exit::Signal {
                signal: Signal::SIGTERM,
                core_dumped: false
            })
        );
        assert!(!report.survivors);
        let tail: Vec<String> = sys
            .calls()
            .into_iter()
            .skip_while(|c| !c.starts_with("kill "))
            .collect();
        assert_eq!(
            tail,
            vec![
                "kill 103 SIGTERM",
                "kill_all SIGTERM",
                "sync",
                "unmount /run",
                "unmount /proc",
                "sync",
                "reboot PowerOff"
            ]
        );
    }

    #[test]
    fn a_stubborn_agent_is_killed_after_the_grace_periods() {
        let sys = FakeSys::default();
        sys.ignore_sigterm();
        sys.script([Event::Signal(Signal::SIGINT)]);
        let mut init = Init::new(
            sys.clone(),
            agent(),
            RespawnBackoff::default(),
            ShutdownPlan::default(),
        );
        let report = init.run();
        assert_eq!(report.agent_exit, None);
        assert_eq!(
            sys.calls_with("kill"),
            vec!["kill 100 SIGTERM", "kill_all SIGTERM", "kill_all SIGKILL"]
        );
        // 30 s for the agent, 10 s for the rest, then SIGKILL.
        assert_eq!(sys.calls().last().unwrap(), "reboot Reboot");
        assert_eq!(sys.elapsed(), Duration::from_secs(40));
    }

    #[test]
    fn a_failed_spawn_is_retried_with_backoff() {
        let sys = FakeSys::default();
        sys.fail_spawns(2);
        sys.script([
            Event::AgentExit {
                after: Duration::from_secs(5),
                code: 0,
            },
            Event::Idle(Duration::from_secs(10)),
            Event::Signal(Signal::SIGTERM),
        ]);
        let mut init = Init::new(
            sys.clone(),
            agent(),
            RespawnBackoff::default(),
            ShutdownPlan::default(),
        );
        init.run();
        assert_eq!(
            sys.calls_with("spawn"),
            vec![
                "spawn failed at 0ms",
                "spawn failed at 1000ms",
                "spawn agent at 3000ms",
                "spawn agent at 12000ms"
            ]
        );
    }

    #[test]
    fn a_test_process_is_not_the_machines_init() {
        assert!(!is_pid1());
        let err = check_machine_init().unwrap_err();
        assert!(matches!(err, NotMachineInit::NotPid1), "{err}");
        assert!(err.to_string().contains("PID 1"), "{err}");
    }
}
