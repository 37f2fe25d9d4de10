//! Which accelerator runs the VMs: KVM only if a probe VM really boots under it.
//!
//! `/dev/kvm` existing proves little: on some hosts (this project's development
//! machines among them) it is a PVM flavour under which a standard guest kernel
//! either never gets past its real-mode setup, or prints its banner (sometimes after
//! seconds) and then stops in an emulation error halfway through its own start,
//! although a boot sector, even one that switches to long mode, runs fine. So the
//! probe boots a real kernel, the first VM's own, under KVM and waits for the kernel
//! to *finish* starting: its initcalls done, it reaches for its root (see
//! [`BOOTED`]). The banner alone is not enough. The answer holds for the host's boot
//! (it is kept with the host's boot id).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The accelerator QEMU runs a VM with (`-accel kvm` or `-accel tcg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's software emulation: slow, but runs anywhere.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What the node's configuration asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// Probe (see the module docs).
    #[default]
    Auto,
    /// KVM without a probe (a host known to run guests under it).
    Kvm,
    /// TCG always, without a probe.
    Tcg,
}

/// The outcome of a probe, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// KVM if the probe kernel finished starting under it, TCG otherwise.
    pub accel: Accel,
    /// Why, for the log: how long the kernel took, or what failed or timed out.
    pub reason: String,
}

/// Console lines a kernel prints only once every initcall has run: either it found no
/// root (the probe gives it none) or it is about to start init (a kernel with an
/// initramfs built in). A kernel that printed one of them ran its whole start under
/// the accelerator.
pub const BOOTED: [&str; 2] = ["VFS: Unable to mount root fs", "Freeing unused kernel"];

/// Boots `kernel` under KVM on `-M microvm` and waits up to `timeout` for one of
/// [`BOOTED`] on its console.
pub fn probe(qemu: &Path, kernel: &Path, timeout: Duration) -> Probe {
    probe_in(
        &crate::program::Invocation::plain(qemu),
        kernel,
        timeout,
        None,
    )
}

/// [`probe`], with QEMU confined as a VM's own would be (its uid, its mount view, an
/// empty network namespace, its seccomp filter): the kernel it boots is a tenant's.
pub(crate) fn probe_in(
    qemu: &crate::program::Invocation,
    kernel: &Path,
    timeout: Duration,
    confined: Option<crate::confine::Confinement>,
) -> Probe {
    let tcg = |reason: String| Probe {
        accel: Accel::Tcg,
        reason,
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return tcg(format!("/dev/kvm: {e}"));
    }
    let mut cmd = qemu.command();
    cmd.args(["-accel", "kvm", "-cpu", "host", "-M", "microvm"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-m", "128", "-smp", "1", "-no-reboot", "-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(view) = confined {
        cmd.args(["-sandbox", crate::qemu::SANDBOX]);
        // SAFETY: `enter` runs in the forked child before exec and makes only
        // async-signal-safe syscalls on memory `view` prepared (moved into the
        // closure, alive until spawn returns).
        unsafe {
            cmd.pre_exec(move || view.enter());
        }
    }
    let child = cmd.spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return tcg(format!("running {}: {e}", qemu.program().display())),
    };
    let mut out = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            // Search only what a marker could newly end in.
            let from = seen.len().saturating_sub(64);
            seen.extend_from_slice(&buf[..n]);
            let fresh = &seen[from..];
            if BOOTED
                .iter()
                .any(|m| fresh.windows(m.len()).any(|w| w == m.as_bytes()))
            {
                let _ = tx.send(());
                return;
            }
        }
    });
    let start = Instant::now();
    let outcome = rx.recv_timeout(timeout);
    let _ = child.kill();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let status = child.wait();
    match outcome {
        Ok(()) => Probe {
            accel: Accel::Kvm,
            reason: format!("a probe VM booted under KVM in {:?}", start.elapsed()),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => tcg(format!(
            "a probe VM did not finish starting its kernel under KVM within {timeout:?}"
        )),
        // The console closed: QEMU ended before the kernel finished starting.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            let said = stderr
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("no message");
            let status = status.map(|s| s.to_string()).unwrap_or_default();
            tcg(format!(
                "a probe VM under KVM ended before its kernel finished starting ({status}): {said}"
            ))
        }
    }
}

/// The host's boot id: a probe's answer is good until the host reboots.
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A remembered probe: `<boot id> <accel>` in `file`.
pub fn remembered(file: &PathBuf) -> Option<Accel> {
    let text = std::fs::read_to_string(file).ok()?;
    let (id, accel) = text.trim().split_once(' ')?;
    if id != boot_id() {
        return None;
    }
    match accel {
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        _ => None,
    }
}

/// Keeps `accel` in `file` with the host's boot id, for [`remembered`] until the
/// host reboots. Best effort: a failed write only means probing again.
pub fn remember(file: &PathBuf, accel: Accel) {
    let _ = std::fs::write(file, format!("{} {accel}\n", boot_id()));
}
