//! The demo's last part: a node booted from the image. The initramfs of `cargo xtask
//! initramfs` (zosd as PID 1) boots under QEMU with two blank virtio disks; the demo
//! directory is shared with it over virtio-9p at the same path, so the directory
//! notary and the sample flist's local store read the same inside and out. The farm is
//! created, the node registers, the sample contract runs, its output shows on the
//! node's console, and the power button powers the node off.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::node::{hello_contract, wait_status_for};
use super::{section, Demo};
use crate::node::{self as qemu, Machine, Net, NodeSpec, Share};
use crate::status::{log_tail, poll_until};

/// TCG boots, mkfs's two disks and unpacks the flist: minutes at worst on 2 busy cores.
const BOOT: Duration = Duration::from_secs(600);
const RUN: Duration = Duration::from_secs(300);
const FARM: &str = "demo-farm";

pub fn run(d: &Demo) -> anyhow::Result<()> {
    section("15. a node booted from the image: zosd as PID 1 under QEMU");
    let files = qemu::boot_files(true)?;
    // The node reaches the host's loopback at 10.0.2.2 (QEMU user networking).
    let guest_notary = d.notary.replace("127.0.0.1", "10.0.2.2");
    d.step(&["key", "new", "--out", "farmer.key"])?;
    d.step(&[
        "farm",
        "create",
        FARM,
        "--name",
        "the demo's farm",
        "--key",
        "farmer.key",
        "--notary",
        &d.notary,
    ])?;
    let spec = NodeSpec {
        name: "demo".into(),
        disks: 2,
        disk_gib: 8,
        memory_mib: 2048,
        cpus: 2,
        machine: Machine::Microvm,
        cmdline: format!("zos.farm={FARM} zos.notary={guest_notary} zos.runmode=dev"),
        fresh: true,
        index: 0,
        usb: None,
        shares: vec![Share {
            tag: "demo".into(),
            path: d.dir.clone(),
        }],
        net: Net::User,
    };
    let accel = qemu::accel(&files.vmlinux);
    let mut node = qemu::boot(&files, &spec, accel)?;
    println!(
        "  QEMU ({accel}, microvm, 2 disks, {} shared at the same path); console {}",
        d.dir.display(),
        node.console.display()
    );
    let milestones = qemu::wait_serving(std::slice::from_mut(&mut node), BOOT)?;
    let console = node.console_text();
    let node_key = console
        .lines()
        .find_map(|l| l.split("zosd: node ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .context("no node key on the console")?
        .to_string();
    d.step(&["node", "list", "--farm", FARM, "--notary", &d.notary])?;

    println!("\n  the sample contract, for this node");
    let id = "hello-booted";
    hello_contract(d, &node_key, id, 7, "booted.json")?;
    let published = Instant::now();
    let boot_to_publish = node.started.elapsed();
    d.step(&[
        "contract",
        "publish",
        "booted.json",
        "--key",
        "owner.key",
        "--notary",
        &d.notary,
    ])?;
    let s = wait_status_for(d, &node_key, id, RUN, |s| {
        matches!(s["state"].as_str(), Some("ok" | "error" | "refused"))
    })?;
    if s["state"] != "ok" {
        bail!(
            "{id} on the booted node: {} ({}); see {}",
            s["state"],
            s["message"],
            node.console.display()
        );
    }
    let running = published.elapsed();
    wait_status_for(d, &node_key, id, RUN, |s| {
        log_tail(s, "app").iter().any(|l| l.contains("hello from"))
    })?;
    let output = published.elapsed();
    d.step(&[
        "contract", "status", id, "--node", &node_key, "--notary", &d.notary,
    ])?;
    // The status screen repaints on changes: the workload, running, with its newest
    // output line under it.
    let row = format!("{id}/app  container  running");
    let shown = poll_until(
        RUN,
        Duration::from_millis(200),
        || node.console_text(),
        |text| shows_output(&last_screen(text), &row),
    );
    if shown.is_err() {
        bail!(
            "the node's console never showed {row:?} with its output; see {}",
            node.console.display()
        );
    }
    println!("\n  the node's console (its status screen; keyboard input is ignored):");
    let console = node.console_text();
    let screen = last_screen(&console);
    for line in screen.lines() {
        println!("  | {line}");
    }

    // Its heartbeat (every minute): contracts running, listening sockets (none), and
    // zosd's own memory.
    d.step(&["node", "list", "--farm", FARM, "--notary", &d.notary])?;

    println!("\n  the power button (ACPI, QMP system_powerdown): an orderly power-off");
    let pressed = Instant::now();
    node.power_button()?;
    let Some(status) = node.wait_timeout(Duration::from_secs(120)) else {
        bail!(
            "the node did not power off within 120 s; see {}",
            node.console.display()
        );
    };
    let console = node.console_text();
    for line in console
        .lines()
        .filter(|l| l.contains("power") || l.contains("shutdown") || l.contains("reboot: "))
    {
        println!("  | {}", line.trim());
    }
    if !console.contains("reboot: Power down") {
        bail!("QEMU exited ({status}) without the kernel's power-down line");
    }
    let secs = |t: Option<Duration>| t.map_or("-".into(), |t| format!("{:.1} s", t.as_secs_f64()));
    let m = &milestones[0];
    println!(
        "\n  figures (TCG here): zosd's first line {}, registered {}, serving {}; contract \
         published at {:.1} s, running {:.1} s later, its output {:.1} s later; powered off \
         {:.1} s after the button",
        secs(m.pid1),
        secs(m.registered),
        secs(m.serving),
        boot_to_publish.as_secs_f64(),
        running.as_secs_f64(),
        output.as_secs_f64(),
        pressed.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Whether a status screen has the workload `row` with an output line (`    > ...`)
/// under it.
fn shows_output(screen: &str, row: &str) -> bool {
    let mut lines = screen.lines();
    lines.any(|l| l.trim_start().starts_with(row))
        && lines.next().is_some_and(|l| l.starts_with("    > "))
}

/// The newest status screen painted on a console log: from its title to its last
/// error row (log lines follow it on the same console).
fn last_screen(console: &str) -> String {
    const TOP: &str = "Zero-OS node  zosd";
    let from = console.rfind(TOP).unwrap_or(0);
    let mut lines = Vec::new();
    let mut in_errors = false;
    for line in console[from..].lines() {
        if in_errors && !line.starts_with("  ") {
            break;
        }
        in_errors |= line.starts_with("last errors");
        lines.push(line);
    }
    lines.join("\n")
}
