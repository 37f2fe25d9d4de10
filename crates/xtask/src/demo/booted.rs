//! The demo's last part: a node booted from the image. The initramfs of `cargo xtask
//! initramfs` (zosd as PID 1) boots under QEMU with two blank virtio disks; the demo
//! directory is shared with it over virtio-9p at the same path, so the directory
//! notary and the sample flist's local store read the same inside and out. The farm is
//! created with a real rsyslogd of the demo's as its log destination, the node registers
//! and its boot lines (zosd's, PID 1's, the kernel's) arrive at that receiver, the sample
//! contract runs, its output shows on the node's console, and the power button powers the
//! node off.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::node::{hello_contract, wait_status_for};
use super::{section, Demo};
use crate::node::{self as qemu, BootFrom, Booted, Machine, Milestones, Net, NodeSpec, Share};
use crate::status::{log_tail, poll_until};
use zos_testkit::rsyslog::Rsyslog;

/// TCG boots, mkfs's two disks and unpacks the flist: minutes at worst on 2 busy cores.
const BOOT: Duration = Duration::from_secs(600);
const RUN: Duration = Duration::from_secs(300);
/// How long the node's boot lines may take to reach the receiver once it serves.
const LOGS: Duration = Duration::from_secs(120);
const FARM: &str = "demo-farm";
/// The sample contract's id.
const ID: &str = "hello-booted";

pub fn run(d: &Demo) -> anyhow::Result<()> {
    section("16. a node booted from the image: zosd as PID 1 under QEMU");
    let files = qemu::boot_files(true)?;
    crate::packages::ensure(&["rsyslog"])?;
    // The farm's log receiver, on the host's loopback: 10.0.2.2 for the guest.
    let rx = Rsyslog::loopback()?;
    println!(
        "  a log receiver for the farm: rsyslogd on {} (records in {})",
        rx.addr,
        rx.out_file().display()
    );
    create_farm(d, &rx)?;
    let spec = node_spec(d);
    let accel = qemu::accel(&files.vmlinux);
    let mut node = qemu::boot(&files, &spec, accel)?;
    println!(
        "  QEMU ({accel}, microvm, 2 disks, {} shared at the same path); console {}",
        d.dir.display(),
        node.console.display()
    );
    let milestones = qemu::wait_serving(std::slice::from_mut(&mut node), BOOT)?;
    let node_key = qemu::node_key(&node.console_text())?;
    d.step(&["node", "list", "--farm", FARM, "--notary", &d.notary])?;
    show_boot_logs(d, &rx, &node_key)?;

    let sample = run_sample(d, &node, &node_key)?;
    show_status_screen(&node)?;

    // Its heartbeat (every minute): contracts running, listening sockets (none), and
    // zosd's own memory.
    d.step(&["node", "list", "--farm", FARM, "--notary", &d.notary])?;

    let powered_off = power_off(&mut node)?;
    print_figures(&milestones[0], &sample, powered_off);
    Ok(())
}

/// The farmer's key and the demo's farm, in the demo's notary; its nodes' logs go to
/// `rx` (as the guest reaches it).
fn create_farm(d: &Demo, rx: &Rsyslog) -> anyhow::Result<()> {
    d.step(&["key", "new", "--out", "farmer.key"])?;
    let logs = format!("syslog+tcp://10.0.2.2:{}", rx.port());
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
        "--logs",
        &logs,
    ])?;
    Ok(())
}

/// The node's boot lines at the farm's receiver: waits (bounded) for zosd's line that
/// says where its logs go (logged before the farm record was read, so it was held in
/// the node's buffer) and the kernel's first line, then prints a few.
fn show_boot_logs(d: &Demo, rx: &Rsyslog, node_key: &str) -> anyhow::Result<()> {
    println!(
        "
  the node's own logs, at the farm's receiver (no login, no port on the node)"
    );
    d.step(&["node", "logs", node_key, "--notary", &d.notary])?;
    let has = |v: &serde_json::Value, app: &str, text: &str| {
        v["app"] == app && v["msg"].as_str().is_some_and(|m| m.contains(text))
    };
    let wanted: [(&str, &str); 4] = [
        ("kernel", "Linux version"),
        ("kernel", "zos-init: "),
        ("zosd", "capacity offered to contracts"),
        ("zosd", "node logs go to the farm's destination"),
    ];
    let records = rx.wait_for("the node's boot lines", LOGS, |r| {
        wanted
            .iter()
            .all(|(app, text)| r.iter().any(|v| has(v, app, text)))
    })?;
    let foreign = records.iter().filter(|v| v["hostname"] != node_key).count();
    if foreign > 0 {
        bail!("{foreign} lines at the farm's receiver do not carry the node's key as HOSTNAME");
    }
    let first = &records[0];
    println!(
        "  logs received at rsyslog {}: {} lines, first: {} {} {}",
        rx.addr,
        records.len(),
        first["timestamp"].as_str().unwrap_or("-"),
        first["app"].as_str().unwrap_or("-"),
        first["msg"].as_str().unwrap_or("-")
    );
    for (app, text) in wanted {
        if let Some(v) = records.iter().find(|v| has(v, app, text)) {
            let msg = v["msg"].as_str().unwrap_or("-");
            let msg: String = msg.chars().take(110).collect();
            println!(
                "  | {} {:<6} {}",
                v["timestamp"].as_str().unwrap_or("-"),
                app,
                msg
            );
        }
    }
    println!("  (HOSTNAME of every line: the node's key {node_key:.16}…)");
    Ok(())
}

/// A fresh microvm node with two disks, in the demo's farm, the demo directory shared at
/// the same path.
fn node_spec(d: &Demo) -> NodeSpec {
    // The node reaches the host's loopback at 10.0.2.2 (QEMU user networking).
    let guest_notary = d.notary.replace("127.0.0.1", "10.0.2.2");
    NodeSpec {
        name: "demo".into(),
        disks: 2,
        disk_gib: 8,
        memory_mib: 2048,
        cpus: 2,
        machine: Machine::Microvm,
        cmdline: format!("zos.farm={FARM} zos.notary={guest_notary} zos.runmode=dev"),
        fresh: true,
        index: 0,
        from: BootFrom::Kernel,
        shares: vec![Share {
            tag: "demo".into(),
            path: d.dir.clone(),
        }],
        net: Net::User,
    }
}

/// How long the sample contract took on the booted node.
struct Sample {
    /// From QEMU's start to the contract's publication.
    boot_to_publish: Duration,
    /// From the publication to its workload running.
    running: Duration,
    /// From the publication to its output in the status record.
    output: Duration,
}

/// The sample contract for this node: published, running, its output in its status.
fn run_sample(d: &Demo, node: &Booted, node_key: &str) -> anyhow::Result<Sample> {
    println!("\n  the sample contract, for this node");
    hello_contract(d, node_key, ID, 7, "booted.json")?;
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
    let s = wait_status_for(d, node_key, ID, RUN, |s| {
        matches!(s["state"].as_str(), Some("ok" | "error" | "refused"))
    })?;
    if s["state"] != "ok" {
        bail!(
            "{ID} on the booted node: {} ({}); see {}",
            s["state"],
            s["message"],
            node.console.display()
        );
    }
    let running = published.elapsed();
    wait_status_for(d, node_key, ID, RUN, |s| {
        log_tail(s, "app").iter().any(|l| l.contains("hello from"))
    })?;
    let output = published.elapsed();
    d.step(&[
        "contract", "status", ID, "--node", node_key, "--notary", &d.notary,
    ])?;
    Ok(Sample {
        boot_to_publish,
        running,
        output,
    })
}

/// Waits for the node's status screen to show the sample's workload running with its
/// newest output line under it (the screen repaints on changes), then prints it.
fn show_status_screen(node: &Booted) -> anyhow::Result<()> {
    let row = format!("{ID}/app  container  running");
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
    Ok(())
}

/// Presses the power button and waits for the kernel's power-down; returns how long it
/// took.
fn power_off(node: &mut Booted) -> anyhow::Result<Duration> {
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
    Ok(pressed.elapsed())
}

fn print_figures(m: &Milestones, sample: &Sample, powered_off: Duration) {
    let secs = |t: Option<Duration>| t.map_or("-".into(), |t| format!("{:.1} s", t.as_secs_f64()));
    println!(
        "\n  figures (TCG here): zosd's first line {}, registered {}, serving {}; contract \
         published at {:.1} s, running {:.1} s later, its output {:.1} s later; powered off \
         {:.1} s after the button",
        secs(m.pid1),
        secs(m.registered),
        secs(m.serving),
        sample.boot_to_publish.as_secs_f64(),
        sample.running.as_secs_f64(),
        sample.output.as_secs_f64(),
        powered_off.as_secs_f64()
    );
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
