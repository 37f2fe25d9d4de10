//! The orderly shutdown: agent first, then everything else, then the disks.
//!
//! 1. SIGTERM to the agent; wait up to `agent_grace` for it.
//! 2. SIGTERM to every other process (`kill(-1)`, workloads included); wait up to
//!    `others_grace` for all children to go.
//! 3. SIGKILL to whatever is left; reap.
//! 4. sync; unmount every filesystem in reverse mount order (a busy one is remounted
//!    read-only); sync.
//! 5. `reboot(RB_POWER_OFF)` or `reboot(RB_AUTOBOOT)`.
//!
//! | signal to PID 1                   | action    |
//! |-----------------------------------|-----------|
//! | SIGTERM, SIGUSR2, SIGPWR          | power off |
//! | SIGINT (ctrl-alt-del), SIGUSR1    | reboot    |
//! | SIGHUP, SIGQUIT                   | ignored   |

use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::mounts::mount_points;
use crate::reaper::{reap_all, Exit};
use crate::sys::{PowerAction, Sys};

/// The action a signal asks for; `None` for the ones PID 1 does not act on.
pub fn action_for(signal: Signal) -> Option<PowerAction> {
    match signal {
        Signal::SIGTERM | Signal::SIGUSR2 | Signal::SIGPWR => Some(PowerAction::PowerOff),
        Signal::SIGINT | Signal::SIGUSR1 => Some(PowerAction::Reboot),
        _ => None,
    }
}

/// How long each step of the shutdown waits (defaults: 30 s, 10 s, 2 s).
#[derive(Debug, Clone)]
pub struct ShutdownPlan {
    /// After SIGTERM to the agent, how long to wait for it to exit.
    pub agent_grace: Duration,
    /// After SIGTERM to every other process, how long to wait for all to go.
    pub others_grace: Duration,
    /// After SIGKILL, how long to wait for the last ones to be reaped.
    pub kill_grace: Duration,
}

impl Default for ShutdownPlan {
    fn default() -> ShutdownPlan {
        ShutdownPlan {
            agent_grace: Duration::from_secs(30),
            others_grace: Duration::from_secs(10),
            kill_grace: Duration::from_secs(2),
        }
    }
}

/// What the shutdown did, for the log and for tests (with the real system the machine is
/// off before anyone reads it, unless the final call failed).
#[derive(Debug, Default)]
pub struct ShutdownReport {
    /// How the agent ended; `None`: it was not running, or not reaped within
    /// `agent_grace`.
    pub agent_exit: Option<Exit>,
    /// Children still there after SIGKILL (stuck in the kernel, e.g. on a dead disk).
    pub survivors: bool,
    /// Mount points unmounted, in the order done (children before parents).
    pub unmounted: Vec<String>,
    /// Mount points that would not unmount, with the error (a busy one was remounted
    /// read-only and detached first: `EBUSY`).
    pub unmount_failed: Vec<(String, Errno)>,
    /// Set when the final reboot call failed; with the real system nothing is returned
    /// otherwise (the machine is off).
    pub reboot_error: Option<Errno>,
}

/// Mount points to unmount, children before parents; `/` stays.
pub fn unmount_order(mountinfo: &str) -> Vec<String> {
    let mut points = mount_points(mountinfo);
    points.retain(|p| p != "/");
    points.reverse();
    points
}

/// Runs the shutdown; returns only if the final reboot call returned (a fake, or a
/// failure: the caller then halts, reaping forever).
pub fn shutdown(
    sys: &dyn Sys,
    agent: Option<Pid>,
    action: PowerAction,
    plan: &ShutdownPlan,
) -> ShutdownReport {
    tracing::warn!(
        ?action,
        agent = agent.map(|p| p.as_raw()),
        "orderly shutdown"
    );
    let mut report = ShutdownReport::default();

    if let Some(pid) = agent {
        if let Err(errno) = sys.kill(pid, Signal::SIGTERM) {
            tracing::warn!(%errno, pid = pid.as_raw(), "signalling the agent");
        }
        let gone = wait_children(sys, plan.agent_grace, |r, no_children| {
            if let Some(x) = r.iter().find(|x| x.pid == pid) {
                report.agent_exit = Some(x.exit);
            }
            report.agent_exit.is_some() || no_children
        });
        if !gone {
            tracing::warn!(grace = ?plan.agent_grace, "the agent did not stop in time");
        }
    }

    // ESRCH: nobody else is left, which is fine.
    let _ = sys.kill_all(Signal::SIGTERM);
    let all_gone = wait_children(sys, plan.others_grace, |_, none| none);
    if !all_gone {
        let _ = sys.kill_all(Signal::SIGKILL);
        report.survivors = !wait_children(sys, plan.kill_grace, |_, none| none);
        if report.survivors {
            tracing::error!("processes survived SIGKILL");
        }
    }

    sys.sync();
    let mountinfo = sys
        .read_file(Path::new("/proc/self/mountinfo"))
        .unwrap_or_default();
    for point in unmount_order(&mountinfo) {
        match sys.unmount(Path::new(&point)) {
            Ok(()) => report.unmounted.push(point),
            Err(errno) => {
                tracing::warn!(mount = %point, %errno, "unmount");
                report.unmount_failed.push((point, errno));
            }
        }
    }
    sys.sync();

    tracing::warn!(?action, "bye");
    if let Err(errno) = sys.reboot(action) {
        tracing::error!(%errno, ?action, "reboot call failed");
        report.reboot_error = Some(errno);
    }
    report
}

/// Reaps until `done(reaped_now, no_children_left)` says so or `grace` ran out; returns
/// whether it was done.
fn wait_children(
    sys: &dyn Sys,
    grace: Duration,
    mut done: impl FnMut(&[crate::reaper::Reaped], bool) -> bool,
) -> bool {
    let deadline = sys.now() + grace;
    loop {
        let sweep = reap_all(sys);
        for r in &sweep.reaped {
            tracing::debug!(pid = r.pid.as_raw(), exit = %r.exit, "reaped during shutdown");
        }
        if done(&sweep.reaped, sweep.no_children) {
            return true;
        }
        let now = sys.now();
        if now >= deadline {
            return false;
        }
        // A second shutdown signal changes nothing: this one is under way.
        if let Some(sig) = sys.wait_signal(Some(deadline - now)) {
            if sig != Signal::SIGCHLD {
                tracing::info!(signal = %sig, "ignored during shutdown");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmount_children_first_and_never_root() {
        let mi = "\
1 0 0:1 / / rw - rootfs rootfs rw
2 1 0:2 / /proc rw - proc proc rw
3 1 0:3 / /sys rw - sysfs sysfs rw
4 3 0:4 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
5 1 8:16 / /var/lib/zos/pools/zos-ssd0 rw - btrfs /dev/vdb rw
";
        assert_eq!(
            unmount_order(mi),
            vec![
                "/var/lib/zos/pools/zos-ssd0",
                "/sys/fs/cgroup",
                "/sys",
                "/proc"
            ]
        );
    }

    #[test]
    fn signal_table() {
        assert_eq!(action_for(Signal::SIGTERM), Some(PowerAction::PowerOff));
        assert_eq!(action_for(Signal::SIGINT), Some(PowerAction::Reboot));
        assert_eq!(action_for(Signal::SIGUSR1), Some(PowerAction::Reboot));
        assert_eq!(action_for(Signal::SIGPWR), Some(PowerAction::PowerOff));
        assert_eq!(action_for(Signal::SIGHUP), None);
        assert_eq!(action_for(Signal::SIGCHLD), None);
    }
}
