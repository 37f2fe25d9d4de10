//! `cargo xtask bench boot`: how long a booted node takes from zosd's first line to
//! registered, with the modules the devices ask for (`zos.modules=devices`, the
//! default) against every module the image carries (`zos.modules=all`, the boot
//! before coldplug), the same image booted both ways in the same run, interleaved,
//! each boot a first boot on fresh disks.
//!
//! The times are the host's, taken when a console line first appears (the console is
//! read every 20 ms): zosd's clock may be stepped by NTP during the boot, the host's
//! is not. The breakdown cuts the boot at these lines, in order:
//!
//! | segment      | ends at the line                                          |
//! |--------------|-----------------------------------------------------------|
//! | modules      | `kernel modules` (its `ms=` is zosd's own count)          |
//! | DHCP         | `DHCP lease applied`                                      |
//! | pools        | the last `pool` line before the identity                  |
//! | identity     | `node identity`                                           |
//! | registration | `registered in farm`                                      |
//!
//! "modules" starts at zosd's first line; each other segment starts where the one
//! before it ended (so the agent's start is in "pools").

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::node::{self, BootFiles, Booted, Machine, Net, NodeSpec, PID1_LINE};
use crate::target_dir;

/// How the two boots of a round load their modules.
const MODES: [&str; 2] = ["devices", "all"];

/// Boots per mode when `--rounds` is not given.
const DEFAULT_ROUNDS: usize = 3;

/// The lines that end the segments, in order (see the module docs).
const MODULES_LINE: &str = "kernel modules";
const DHCP_LINE: &str = "DHCP lease applied";
const POOL_LINE: &str = " pool pool=";
const IDENTITY_LINE: &str = "node identity";
const REGISTERED_LINE: &str = " registered in farm ";

/// One boot's milestones, as times since zosd's first line.
#[derive(Debug, Clone, Default)]
pub struct BootFigures {
    /// `devices` or `all`.
    pub mode: &'static str,
    /// zosd's first line, since QEMU started.
    pub pid1: Duration,
    /// The `kernel modules` line.
    pub modules: Duration,
    /// What zosd counted for loading the modules (`ms=` of that line).
    pub modules_ms: Option<u64>,
    /// How many modules it loaded (`loaded=`).
    pub loaded: Option<u64>,
    /// The DHCP lease applied.
    pub dhcp: Duration,
    /// The last pool line.
    pub pools: Duration,
    /// The node identity line.
    pub identity: Duration,
    /// Registered.
    pub registered: Duration,
}

/// `cargo xtask bench boot [--rounds N] [--no-build]`.
pub fn run(args: &[String], rebuild: bool) -> anyhow::Result<Vec<BootFigures>> {
    let rounds = match args.iter().position(|a| a == "--rounds") {
        Some(at) => args
            .get(at + 1)
            .context("--rounds N")?
            .parse()
            .context("--rounds N: a number")?,
        None => DEFAULT_ROUNDS,
    };
    let files = node::boot_files(rebuild)?;
    let notary = node::private_notary(
        &target_dir().join("nodes/notary-bootbench"),
        &target_dir().join("nodes/farmer-bootbench.key"),
        "farm-1",
    )?;
    let accel = node::accel(&files.vmlinux);
    let mut figures = Vec::new();
    for round in 0..rounds {
        for mode in MODES {
            let f = boot_once(&files, accel, &notary.guest_url, round, mode)?;
            println!(
                "round {}: {mode:7}: first line to registered {:5.2} s (modules {:5.2} s)",
                round + 1,
                f.registered.as_secs_f64(),
                f.modules.as_secs_f64()
            );
            figures.push(f);
        }
    }
    Ok(figures)
}

/// Boots the image once with `zos.modules=<mode>` on fresh disks and reads its
/// milestones off the console.
fn boot_once(
    files: &BootFiles,
    accel: &'static str,
    notary: &str,
    round: usize,
    mode: &'static str,
) -> anyhow::Result<BootFigures> {
    let spec = NodeSpec {
        name: format!("bootbench-{mode}"),
        disks: 2,
        disk_gib: 8,
        memory_mib: 2048,
        cpus: 1,
        machine: Machine::Microvm,
        cmdline: format!("zos.farm=farm-1 zos.notary={notary} zos.modules={mode}"),
        fresh: true,
        // A node key per boot (fresh disks): distinct MACs keep QEMU's leases apart.
        index: (round * MODES.len()) as u8 + u8::from(mode == "all"),
        from: node::BootFrom::Kernel,
        shares: Vec::new(),
        net: Net::User,
    };
    let mut booted = node::boot(files, &spec, accel)?;
    let seen = watch(&mut booted, Duration::from_secs(600))?;
    booted.kill();
    figures(mode, &seen)
}

/// Every console line with the time it was first seen (since QEMU started), until the
/// node registered.
fn watch(node: &mut Booted, timeout: Duration) -> anyhow::Result<Vec<(Duration, String)>> {
    let deadline = Instant::now() + timeout;
    let mut lines: Vec<(Duration, String)> = Vec::new();
    loop {
        let t = node.started.elapsed();
        let console = node.console_text();
        // Whole lines only: the last one may be half written.
        let whole = &console[..console.rfind('\n').map_or(0, |at| at + 1)];
        for line in whole.lines().skip(lines.len()) {
            lines.push((t, line.to_string()));
        }
        if lines.iter().any(|(_, l)| l.contains(REGISTERED_LINE)) {
            return Ok(lines);
        }
        if !node.running() || Instant::now() > deadline {
            bail!(
                "{}: not registered after {:.0} s; see {}",
                node.name,
                t.as_secs_f64(),
                node.console.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The milestones of one boot's console (lines with when they were seen).
fn figures(mode: &'static str, lines: &[(Duration, String)]) -> anyhow::Result<BootFigures> {
    let at = |needle: &str| {
        lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, l)| (*t, l.as_str()))
            .with_context(|| format!("{mode}: no {needle:?} line on the console"))
    };
    let (pid1, _) = at(PID1_LINE)?;
    let (modules, modules_line) = at(MODULES_LINE)?;
    let (dhcp, _) = at(DHCP_LINE)?;
    let (identity, _) = at(IDENTITY_LINE)?;
    let (registered, _) = at(REGISTERED_LINE)?;
    let pools = lines
        .iter()
        .filter(|(t, l)| l.contains(POOL_LINE) && *t <= identity)
        .map(|(t, _)| *t)
        .max()
        .unwrap_or(dhcp);
    let since = |t: Duration| t.saturating_sub(pid1);
    Ok(BootFigures {
        mode,
        pid1,
        modules: since(modules),
        modules_ms: field(modules_line, "ms"),
        loaded: field(modules_line, "loaded"),
        dhcp: since(dhcp),
        pools: since(pools),
        identity: since(identity),
        registered: since(registered),
    })
}

/// The number after `name=` in a log line.
fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
}

/// The medians per mode, the breakdown, and the ratio of the two boots.
pub fn print(figures: &[BootFigures]) {
    println!("\nboot: zosd's first line to registered (medians over the rounds, seconds)");
    println!(
        "{:8} {:>7} {:>8} {:>7} {:>7} {:>9} {:>13} {:>11} {:>7}",
        "mode", "boots", "modules", "DHCP", "pools", "identity", "registration", "total", "loaded"
    );
    let mut totals = Vec::new();
    for mode in MODES {
        let of: Vec<&BootFigures> = figures.iter().filter(|f| f.mode == mode).collect();
        if of.is_empty() {
            continue;
        }
        let med = |seg: fn(&BootFigures) -> f64| median(of.iter().map(|f| seg(f)).collect());
        let total = med(|f| f.registered.as_secs_f64());
        totals.push((mode, total));
        println!(
            "{:8} {:>7} {:>8.2} {:>7.2} {:>7.2} {:>9.2} {:>13.2} {:>11.2} {:>7.0}",
            mode,
            of.len(),
            med(|f| f.modules.as_secs_f64()),
            med(|f| (f.dhcp - f.modules.min(f.dhcp)).as_secs_f64()),
            med(|f| (f.pools - f.dhcp.min(f.pools)).as_secs_f64()),
            med(|f| (f.identity - f.pools.min(f.identity)).as_secs_f64()),
            med(|f| (f.registered - f.identity.min(f.registered)).as_secs_f64()),
            total,
            med(|f| f.loaded.unwrap_or(0) as f64),
        );
    }
    println!("\nper boot (zosd's own count of the module loading, ms):");
    for f in figures {
        println!(
            "  {:8} modules {:>6} ms, first line at {:5.2} s after QEMU started, registered at +{:5.2} s",
            f.mode,
            f.modules_ms.map_or("?".into(), |m| m.to_string()),
            f.pid1.as_secs_f64(),
            f.registered.as_secs_f64()
        );
    }
    if let [(_, devices), (_, all)] = totals.as_slice() {
        println!(
            "\ndevices / all: {:.2} (first line to registered, medians)",
            devices / all
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_milestones_are_read_off_the_console_lines() {
        let lines: Vec<(Duration, String)> = [
            (1000, "[    0.5] Linux version"),
            (2000, "2026-12-07T14:00:00Z  INFO zosd: PID 1 version=0.1"),
            (2600, "2026-12-07T14:00:01Z  INFO kernel modules mode=\"devices\" ms=540 rounds=3 loaded=41"),
            (3100, "2026-12-07T14:00:01Z  INFO DHCP lease applied iface=\"eth0\""),
            (4000, "2026-12-07T14:00:02Z  INFO zosd::node: pool pool=zos-ssd-1 status=Online"),
            (4200, "2026-12-07T14:00:02Z  INFO zosd::node: pool pool=zos-hdd-1 status=Online"),
            (4300, "2026-12-07T14:00:02Z  INFO zosd::node: node identity node=abc"),
            (5000, "zosd: node abc registered in farm farm-1"),
        ]
        .into_iter()
        .map(|(t, l)| (ms(t), l.to_string()))
        .collect();
        let f = figures("devices", &lines).unwrap();
        assert_eq!(f.pid1, ms(2000));
        assert_eq!(f.modules, ms(600));
        assert_eq!(f.modules_ms, Some(540));
        assert_eq!(f.loaded, Some(41));
        assert_eq!(f.dhcp, ms(1100));
        assert_eq!(f.pools, ms(2200));
        assert_eq!(f.identity, ms(2300));
        assert_eq!(f.registered, ms(3000));
        assert!(figures("all", &lines[..3]).is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
    }
}
