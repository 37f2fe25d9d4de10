//! Nodes booted from the built image under QEMU (zosd as PID 1), given real work and
//! mistreated from the outside.
//!
//! - `a_contract_runs_on_a_booted_node_and_survives_a_hard_reset`: a private etcd is
//!   the notary, the farm is created, a node boots on blank disks with the sample flist's
//!   directory shared (virtio-9p, same path); a hello contract for its key runs and its
//!   status says so. Then a hard reset (QEMU killed, no shutdown) and a boot on the same
//!   disks: the same node key, and the workload comes back (the new boot's status screen
//!   shows it running with its output, and the node publishes a fresh status record).
//!   The farm names a real rsyslogd of the test's as its log destination: the node's
//!   boot lines arrive there (zosd's own, those logged before the farm record was read
//!   included; PID 1's, from before the uplink was up; the kernel's), each with the
//!   node's key as HOSTNAME, no line of the contract's among them, and the second
//!   boot's kernel log arrives too.
//! - `a_node_catches_up_when_its_notary_comes_back`: a node boots while its notary is
//!   down; its console says it cannot read the farm and it keeps retrying; the notary
//!   comes up (the farm created) and the node registers and serves; the notary goes down
//!   again for a while and comes back on the same data: a contract published then runs
//!   (the node's watch reconnected).
//! - `no_port_of_a_booted_node_answers`: a node on a tap in a network namespace of the
//!   test's own (dnsmasq for DHCP, etcd as notary, both in that namespace): from there, a
//!   TCP connect to every port 1-65535 of the node's address fails; the same scanner
//!   finds the listeners on the namespace's side (it would see an open port).
//!
//! Without QEMU, etcd or dnsmasq, a test prints a counted `SKIP:` line and passes.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e::{missing, serving_key, skip, workdir, Zos};
use serde_json::Value;
use xtask::etcd::{free_port, in_netns, Etcd};
use xtask::node::{self as qemu, BootFiles, BootFrom, Booted, Machine, Net, NodeSpec, Share};
use xtask::status::{log_tail, poll_until};
use zos_testkit::rsyslog::Rsyslog;

/// TCG boots, mkfs's two disks and unpacks the flist: minutes at worst on 2 busy cores.
const BOOT: Duration = Duration::from_secs(600);
const RUN: Duration = Duration::from_secs(300);

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// The image (built or brought up to date) and the accelerator.
fn image() -> (BootFiles, &'static str) {
    let files = qemu::boot_files(true).expect("building the image");
    let accel = qemu::accel(&files.vmlinux);
    (files, accel)
}

fn spec(name: &str, cmdline: String, shares: Vec<Share>, net: Net) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        disks: 2,
        disk_gib: 8,
        memory_mib: 2048,
        cpus: 2,
        machine: Machine::Microvm,
        cmdline,
        fresh: true,
        index: 7,
        from: BootFrom::Kernel,
        shares,
        net,
    }
}

/// Boots and waits until the node serves; its key and how long it took.
fn boot_serving(files: &BootFiles, spec: &NodeSpec, accel: &'static str) -> (Booted, String) {
    let mut node = qemu::boot(files, spec, accel).expect("starting QEMU");
    println!(
        "{}: booting ({accel}, microvm, fresh={}), console {}",
        spec.name,
        spec.fresh,
        node.console.display()
    );
    let m = qemu::wait_serving(std::slice::from_mut(&mut node), BOOT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.console_text()));
    let key = serving_key(&node.console_text()).expect("the node key on the serving line");
    println!(
        "{}: boot -> serving {} (zosd's first line {}, registered {})",
        spec.name,
        secs(m[0].serving.unwrap()),
        m[0].pid1.map_or("-".into(), secs),
        m[0].registered.map_or("-".into(), secs)
    );
    (node, key)
}

/// Whether the newest status screen on a console shows the workload of contract `id`
/// running, with a line of its output under it (the screen shows the newest line).
fn screen_shows_running(console: &str, id: &str) -> bool {
    let screen = match console.rfind("Zero-OS node  zosd") {
        Some(at) => &console[at..],
        None => return false,
    };
    let mut lines = screen.lines();
    while let Some(l) = lines.next() {
        if l.starts_with(&format!("  {id}/app  container  running")) {
            return lines.next().is_some_and(|o| o.starts_with("    > "));
        }
    }
    false
}

fn screen_lines(console: &str, id: &str) -> Vec<String> {
    console
        .lines()
        .filter(|l| l.starts_with(&format!("  {id}/app")) || l.starts_with("    > "))
        .map(|l| l.trim_end().to_owned())
        .rev()
        .take(2)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

/// How long the node's lines may take to reach the receiver once it serves.
const LOGS: Duration = Duration::from_secs(120);

/// The records of `app` whose message contains `text`.
fn lines_of<'a>(records: &'a [Value], app: &str, text: &str) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|v| v["app"] == app && v["msg"].as_str().is_some_and(|m| m.contains(text)))
        .collect()
}

/// Waits for a record of `app` whose message contains `text`; all records then.
fn wait_line(rx: &Rsyslog, app: &str, text: &str) -> Vec<Value> {
    let records = rx
        .wait_for(&format!("{app} line {text:?}"), LOGS, |r| {
            !lines_of(r, app, text).is_empty()
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let first = lines_of(&records, app, text)[0];
    println!(
        "  rsyslog | {} {} {}",
        first["timestamp"], first["app"], first["msg"]
    );
    records
}

/// The first boot's lines at the farm's receiver: zosd's (those logged before the farm
/// record named the destination, so held in the node's buffer), PID 1's (from before
/// the uplink was up, in the kernel's ring), the kernel's; all with the node's key as
/// HOSTNAME, none of a contract's.
fn check_boot_logs(rx: &Rsyslog, key: &str) {
    // zosd: opened its pools and offered its capacity before it registered, and so
    // before it read the farm record that names the destination.
    wait_line(rx, "zosd", "node identity");
    let records = wait_line(rx, "zosd", "capacity offered to contracts");
    let bound = wait_line(rx, "zosd", "node logs go to the farm's destination");
    let time = |v: &Value| v["timestamp"].as_str().unwrap_or_default().to_owned();
    let early = time(lines_of(&records, "zosd", "capacity offered to contracts")[0]);
    let bound_at = time(lines_of(&bound, "zosd", "node logs go to the farm's destination")[0]);
    assert!(
        early < bound_at,
        "the early line ({early}) was logged before the destination was known ({bound_at})"
    );
    // PID 1: its lines are in the kernel's ring (tagged zos-init): its first ones, from
    // long before it brought the uplink up, and later ones (PID 1 turns the kernel's
    // rate limit of /dev/kmsg writers off, which kept 10 records per 5 s).
    wait_line(rx, "kernel", "zos-init:  INFO zosd: PID 1 version");
    wait_line(rx, "kernel", "zos-init:  INFO module loaded");
    wait_line(rx, "kernel", "power button: a press powers the node off");
    wait_line(rx, "kernel", "DHCP lease acquired");
    // The kernel's own first line.
    let records = rx
        .wait_for("the kernel's first line", LOGS, |r| {
            r.iter().any(|v| {
                v["app"] == "kernel"
                    && v["msg"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("Linux version"))
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
    println!("rsyslog received {} lines of the first boot", records.len());
    for v in &records {
        assert_eq!(v["hostname"], key, "a line without the node's key: {v}");
        assert!(v["app"] == "zosd" || v["app"] == "kernel", "{v}");
        let sd = v["sd"].as_str().unwrap_or_default();
        assert!(
            !sd.contains("contract="),
            "a contract's line at the farm's receiver: {v}"
        );
        assert!(
            !sd.contains("workload="),
            "a workload's line at the farm's receiver: {v}"
        );
        let msg = v["msg"].as_str().unwrap_or_default();
        assert!(
            !msg.contains("hello from"),
            "the workload's output at the farm's receiver: {v}"
        );
    }
}

#[test]
fn a_contract_runs_on_a_booted_node_and_survives_a_hard_reset() {
    const NAME: &str = "a_contract_runs_on_a_booted_node_and_survives_a_hard_reset";
    if let Some(p) = missing(&["qemu-system-x86_64", "etcd", "rsyslogd"]) {
        return skip(NAME, &format!("{p} is not installed"));
    }
    let (files, accel) = image();
    let work = workdir("booted-reset").unwrap();
    let etcd = Etcd::start(&work).expect("starting etcd");
    let port = etcd.client.port();
    let url = format!("etcd://127.0.0.1:{port}/zos");
    let guest_url = format!("etcd://10.0.2.2:{port}/zos");
    let farm = "e2e-reset-farm";
    let zos = Zos::new(&work).unwrap();
    // The farm's log receiver, on the host's loopback: 10.0.2.2 for the guest.
    let rx = Rsyslog::loopback().expect("starting rsyslogd");
    let logs = format!("syslog+tcp://10.0.2.2:{}", rx.port());
    zos.create_farm_with(farm, &url, &["--logs", &logs])
        .unwrap();
    let flists = work.join("flist");
    zos.hello_blueprint(&flists).unwrap();

    let mut spec = spec(
        "e2e-booted-reset",
        format!("zos.farm={farm} zos.notary={guest_url} zos.runmode=dev"),
        vec![Share {
            tag: "flist".into(),
            path: flists.clone(),
        }],
        Net::User,
    );
    let (mut node, key) = boot_serving(&files, &spec, accel);
    assert!(
        node.console_text()
            .contains(&format!("zosd: node {key} registered in farm {farm}")),
        "{}",
        node.console_text()
    );
    check_boot_logs(&rx, &key);

    let id = "hello-reset";
    let published = Instant::now();
    zos.publish_hello(id, &key, 7, &url).unwrap();
    let ok = zos
        .wait_status(id, &key, &url, RUN, |s| s["state"] == "ok")
        .unwrap();
    let to_ok = published.elapsed();
    let before = zos
        .wait_status(id, &key, &url, RUN, |s| {
            s["state"] == "ok" && log_tail(s, "app").iter().any(|l| l.contains("hello from"))
        })
        .unwrap();
    let to_output = published.elapsed();
    println!("status when ok: {ok}");
    println!("status with output: {before}");
    let greeting = log_tail(&before, "app")
        .into_iter()
        .find(|l| l.contains("hello from"))
        .unwrap();
    assert!(greeting.contains("serving 7 users"), "{greeting}");
    poll_until(
        RUN,
        Duration::from_millis(200),
        || node.console_text(),
        |c| screen_shows_running(c, id),
    )
    .unwrap_or_else(|c| panic!("the status screen never showed {id} running:\n{c}"));
    println!(
        "first boot's screen: {:?}",
        screen_lines(&node.console_text(), id)
    );

    // A hard reset: QEMU killed, nothing inside gets to shut down.
    node.kill();
    let reset = Instant::now();
    let reset_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(!node.console_text().contains("reboot: Power down"));
    spec.fresh = false;
    let (mut node, again) = boot_serving(&files, &spec, accel);
    assert_eq!(again, key, "a new node key after the reset");
    let console = poll_until(
        RUN,
        Duration::from_millis(200),
        || node.console_text(),
        |c| screen_shows_running(c, id),
    )
    .unwrap_or_else(|c| panic!("after the reset, the screen never showed {id} running:\n{c}"));
    let back = node.started.elapsed();
    assert!(
        !console.contains("first boot: node identity created"),
        "{console}"
    );
    println!("second boot's screen: {:?}", screen_lines(&console, id));
    // The record the node signs after the reboot (a new one: not the first boot's).
    let after = zos
        .wait_status(id, &key, &url, RUN, |s| {
            s["state"] == "ok"
                && s["signed_at"].as_u64() > Some(reset_unix)
                && log_tail(s, "app").iter().any(|l| l.contains("hello from"))
        })
        .unwrap();
    println!("status after the reset: {after}");
    // The second boot's kernel log left too (a new boot id: its ring from the start).
    let boots = |r: &[Value]| {
        r.iter()
            .filter(|v| {
                v["app"] == "kernel"
                    && v["msg"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("Linux version"))
            })
            .map(|v| v["timestamp"].as_str().unwrap_or_default().to_owned())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    let records = rx
        .wait_for("the second boot's kernel line", LOGS, |r| boots(r) >= 2)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        records.iter().all(|v| v["hostname"] == key.as_str()
            && !v["sd"].as_str().unwrap_or_default().contains("contract=")),
        "after the reset: a line without the node's key, or a contract's"
    );
    println!("rsyslog received {} lines over both boots", records.len());
    println!(
        "figures ({accel}): publish -> ok {}, -> output {}; hard reset -> workload running \
         again {} (QEMU start -> screen shows it {})",
        secs(to_ok),
        secs(to_output),
        secs(reset.elapsed()),
        secs(back)
    );
    node.kill();
    drop(etcd);

    // Nothing lost: the volume on the node's pools (read here, the node powered off)
    // holds the line the workload appended at each start, both boots' lines.
    let dir = xtask::target_dir().join("nodes").join(&spec.name);
    let lines: Vec<String> = e2e::hello_logs(&dir, &work.join("mnt"))
        .into_values()
        .flatten()
        .collect();
    println!("hello.log on the node's volume after two boots: {lines:?}");
    assert!(lines.len() >= 2, "{lines:?}");
}

#[test]
fn a_node_catches_up_when_its_notary_comes_back() {
    const NAME: &str = "a_node_catches_up_when_its_notary_comes_back";
    if let Some(p) = missing(&["qemu-system-x86_64", "etcd"]) {
        return skip(NAME, &format!("{p} is not installed"));
    }
    let (files, accel) = image();
    let work = workdir("booted-notary").unwrap();
    let zos = Zos::new(&work).unwrap();
    let flists = work.join("flist");
    zos.hello_blueprint(&flists).unwrap();
    // The notary's address, fixed before it runs.
    let client = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let peer = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let url = format!("etcd://{client}/zos");
    let guest_url = format!("etcd://10.0.2.2:{}/zos", client.port());
    let farm = "e2e-notary-farm";

    let spec = spec(
        "e2e-booted-notary",
        format!("zos.farm={farm} zos.notary={guest_url} zos.runmode=dev"),
        vec![Share {
            tag: "flist".into(),
            path: flists.clone(),
        }],
        Net::User,
    );
    let mut node = qemu::boot(&files, &spec, accel).expect("starting QEMU");
    println!("{}: booting, console {}", spec.name, node.console.display());
    // crates/zos-registry/src/membership.rs: "zosd: node <key> waiting: farm <id>: the
    // notary cannot be read (<error>): retrying" once, then a warning per attempt
    // (backoff 1 s..60 s).
    let waiting = format!("waiting: farm {farm}: the notary cannot be read");
    let console = poll_until(
        BOOT,
        Duration::from_millis(200),
        || node.console_text(),
        |c| c.contains(&waiting),
    )
    .unwrap_or_else(|c| panic!("no {waiting:?} on the console:\n{c}"));
    let down_seen = node.started.elapsed();
    let line = console.lines().find(|l| l.contains(&waiting)).unwrap();
    println!("{}: {}: {}", spec.name, secs(down_seen), line.trim());
    // It keeps retrying: wait (bounded) until the console shows 3 lines about the
    // unreadable notary (the first attempt's, then one warning per attempt: with the
    // backoff of 1 s, 2 s, 4 s... that is within seconds), rather than sleeping and
    // counting afterwards.
    let attempts = |c: &String| {
        c.lines()
            .filter(|l| l.contains("the notary cannot be read"))
            .count()
    };
    let console = poll_until(
        Duration::from_secs(120),
        Duration::from_millis(200),
        || node.console_text(),
        |c| attempts(c) >= 3,
    )
    .unwrap_or_else(|c| {
        panic!(
            "the node did not keep retrying ({} lines):\n{c}",
            attempts(&c)
        )
    });
    assert!(!console.contains(" serving contracts from "), "{console}");
    println!(
        "{}: {} console lines about the unreadable notary {} after the first",
        spec.name,
        attempts(&console),
        secs(node.started.elapsed().saturating_sub(down_seen))
    );

    let etcd_dir = work.join("notary");
    std::fs::create_dir_all(&etcd_dir).unwrap();
    let mut etcd = Etcd::start_at(&etcd_dir, client, peer, None).expect("starting etcd");
    zos.create_farm(farm, &url).unwrap();
    let up = node.started.elapsed();
    let m = qemu::wait_serving(std::slice::from_mut(&mut node), BOOT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.console_text()));
    let key = serving_key(&node.console_text()).unwrap();
    let caught_up = m[0].serving.unwrap();
    println!(
        "{}: notary up at {}, node serving at {} ({} later)",
        spec.name,
        secs(up),
        secs(caught_up),
        secs(caught_up.saturating_sub(up))
    );

    // Down again for a while, then back on the same data and address.
    etcd.stop();
    let stopped = Instant::now();
    println!("notary stopped");
    std::thread::sleep(Duration::from_secs(10));
    let etcd = Etcd::start_at(&etcd_dir, client, peer, None).expect("restarting etcd");
    println!("notary back after {}", secs(stopped.elapsed()));
    let listed = zos
        .run(&["node", "list", "--farm", farm, "--notary", &url])
        .unwrap();
    assert!(listed.contains(&key), "{listed}");
    let id = "hello-catch-up";
    let published = Instant::now();
    zos.publish_hello(id, &key, 3, &url).unwrap();
    // First the node sees it (a status record: its watch reconnected), then it runs.
    let seen = zos
        .wait_status(id, &key, &url, RUN, |s| !s.is_null())
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.console_text()));
    println!(
        "the node reported on the new contract {} after publishing: {seen}",
        secs(published.elapsed())
    );
    let s = zos
        .wait_status(id, &key, &url, RUN, |s| {
            s["state"] == "ok" && log_tail(s, "app").iter().any(|l| l.contains("hello from"))
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.console_text()));
    println!("status: {s}");
    println!(
        "figures ({accel}): unreadable notary on the console at {}; notary up -> serving {}; \
         published after the notary's restart -> running with output {}",
        secs(down_seen),
        secs(caught_up.saturating_sub(up)),
        secs(published.elapsed())
    );
    let console = node.console_text();
    let failed = console
        .lines()
        .filter(|l| l.contains("watch reconnect failed"))
        .count();
    for l in console.lines().filter(|l| l.contains("watch resumed")) {
        println!("  | {}", l.trim());
    }
    println!("  ({failed} failed watch reconnects while the notary was down)");
    node.kill();
    drop(etcd);
}

/// The test's network namespace and dnsmasq; Drop stops dnsmasq and deletes the
/// namespace (with the tap in it).
struct Netns {
    name: String,
    dnsmasq: Option<Child>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut d) = self.dnsmasq.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What a scan found.
#[derive(Debug, Default)]
struct Scan {
    open: Vec<u16>,
    refused: usize,
    timed_out: usize,
    unreachable: usize,
    other: Vec<(u16, i32)>,
    elapsed: Duration,
}

/// TCP connects to `ip` on every port of `ports`, `concurrency` at a time (nonblocking
/// sockets and poll), each given up after `timeout`.
fn scan(ip: Ipv4Addr, ports: Vec<u16>, concurrency: usize, timeout: Duration) -> Scan {
    let start = Instant::now();
    let mut out = Scan::default();
    let mut pending = ports.into_iter();
    // (socket, port, deadline)
    let mut flight: Vec<(OwnedFd, u16, Instant)> = Vec::new();
    let classify = |out: &mut Scan, port: u16, err: i32| match err {
        0 => out.open.push(port),
        libc::ECONNREFUSED => out.refused += 1,
        libc::ETIMEDOUT => out.timed_out += 1,
        libc::EHOSTUNREACH | libc::ENETUNREACH => out.unreachable += 1,
        e => out.other.push((port, e)),
    };
    loop {
        while flight.len() < concurrency {
            let Some(port) = pending.next() else { break };
            // SAFETY: plain socket(2); the fd is owned right away.
            let fd = unsafe {
                libc::socket(
                    libc::AF_INET,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                )
            };
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            // SAFETY: fd is a fresh socket nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(ip).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sa is a valid sockaddr_in of the given length.
            let r = unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    &sa as *const libc::sockaddr_in as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if r == 0 {
                classify(&mut out, port, 0);
                continue;
            }
            let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if e == libc::EINPROGRESS {
                flight.push((fd, port, Instant::now() + timeout));
            } else {
                classify(&mut out, port, e);
            }
        }
        if flight.is_empty() {
            break;
        }
        let mut polls: Vec<libc::pollfd> = flight
            .iter()
            .map(|(fd, _, _)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            })
            .collect();
        // SAFETY: polls is a valid array of pollfd of that length.
        let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, 20) };
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        let now = Instant::now();
        let mut keep = Vec::with_capacity(flight.len());
        for ((fd, port, deadline), p) in flight.drain(..).zip(&polls) {
            if p.revents != 0 {
                let mut err: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                // SAFETY: err and len are valid for getsockopt's SO_ERROR.
                unsafe {
                    libc::getsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_ERROR,
                        &mut err as *mut libc::c_int as *mut libc::c_void,
                        &mut len,
                    )
                };
                classify(&mut out, port, err);
            } else if now > deadline {
                out.timed_out += 1;
            } else {
                keep.push((fd, port, deadline));
            }
        }
        flight = keep;
    }
    out.elapsed = start.elapsed();
    out
}

/// Raises this process's open-file limit to its hard limit (the scan keeps thousands
/// of sockets open).
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

#[test]
fn no_port_of_a_booted_node_answers() {
    const NAME: &str = "no_port_of_a_booted_node_answers";
    if let Some(p) = missing(&["qemu-system-x86_64", "etcd", "dnsmasq", "ip"]) {
        return skip(NAME, &format!("{p} is not installed"));
    }
    let (files, accel) = image();
    let work = workdir("booted-noport").unwrap();
    let zos_dir = work.join("zos");
    let mut zos = Zos::new(&zos_dir).unwrap();

    // Our namespace, with the node's tap made beforehand (QEMU attaches to it).
    let ns = format!("zt-noport-{}", std::process::id());
    let tap = "zt-tap";
    let host_ip = Ipv4Addr::new(10, 213, 0, 1);
    let node_ip = Ipv4Addr::new(10, 213, 0, 50);
    let index = 7u8;
    let mut netns = Netns {
        name: ns.clone(),
        dnsmasq: None,
    };
    // A leftover of an earlier run of this process id (a killed test) goes first.
    if Path::new("/run/netns").join(&ns).exists() {
        ip(&["netns", "delete", &ns]);
    }
    ip(&["netns", "add", &ns]);
    ip(&["-n", &ns, "link", "set", "lo", "up"]);
    ip(&["-n", &ns, "tuntap", "add", "dev", tap, "mode", "tap"]);
    ip(&[
        "-n",
        &ns,
        "addr",
        "add",
        &format!("{host_ip}/24"),
        "dev",
        tap,
    ]);
    ip(&["-n", &ns, "link", "set", tap, "up"]);

    let leases = work.join("dnsmasq.leases");
    let dnsmasq = Command::new("ip")
        .args(["netns", "exec", &ns, "dnsmasq", "--keep-in-foreground"])
        .args([
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--port=0",
            "--bind-interfaces",
            &format!("--interface={tap}"),
            "--dhcp-authoritative",
            "--log-dhcp",
            "--dhcp-range=10.213.0.50,10.213.0.99,255.255.255.0,1h",
            &format!("--dhcp-host=52:54:00:5a:05:{index:02x},{node_ip}"),
            &format!("--dhcp-option=option:router,{host_ip}"),
        ])
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .arg(format!("--pid-file={}", work.join("dnsmasq.pid").display()))
        .arg(format!(
            "--log-facility={}",
            work.join("dnsmasq.log").display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("dnsmasq.err")).unwrap())
        .spawn()
        .expect("starting dnsmasq");
    netns.dnsmasq = Some(dnsmasq);

    let client = SocketAddr::from((host_ip, 2379));
    let peer = SocketAddr::from(([127, 0, 0, 1], 2380));
    let etcd = Etcd::start_at(&work, client, peer, Some(&ns)).expect("starting etcd in the netns");
    let url = format!("etcd://{client}/zos");
    let farm = "e2e-noport-farm";
    zos.netns = Some(ns.clone());
    zos.create_farm(farm, &url).unwrap();

    let mut spec = spec(
        "e2e-booted-noport",
        format!("zos.farm={farm} zos.notary={url}"),
        Vec::new(),
        Net::Tap {
            netns: ns.clone(),
            ifname: tap.into(),
        },
    );
    spec.index = index;
    let (mut node, key) = boot_serving(&files, &spec, accel);
    let lease = std::fs::read_to_string(&leases).unwrap_or_default();
    println!("dnsmasq leases: {}", lease.trim());
    assert!(lease.contains(&node_ip.to_string()), "{lease}");

    // Positive controls: the same scanner finds the listeners on our side of the tap
    // (etcd's and one of ours), and the node's address answers ping or ARP.
    let nofile = raise_nofile();
    let concurrency = (nofile.saturating_sub(256) as usize).clamp(64, 4096);
    let control = in_netns(&ns, move || {
        let listener = TcpListener::bind(SocketAddrV4::new(host_ip, 0)).unwrap();
        let mine = listener.local_addr().unwrap().port();
        let mut ports: Vec<u16> = (2300..2400).collect();
        ports.push(mine);
        (
            mine,
            scan(host_ip, ports, concurrency, Duration::from_secs(2)),
        )
    })
    .unwrap();
    let (mine, control) = control;
    println!("control scan of {host_ip} (our side): {control:?}");
    let mut open = control.open.clone();
    open.sort_unstable();
    assert_eq!(open, vec![2379, mine], "{control:?}");
    let ping = Command::new("ip")
        .args(["netns", "exec", &ns, "ping", "-c", "3", "-W", "2"])
        .arg(node_ip.to_string())
        .output()
        .expect("running ping");
    let pinged = ping.status.success();
    println!(
        "ping {node_ip}: {}",
        String::from_utf8_lossy(&ping.stdout)
            .lines()
            .filter(|l| l.contains("packets"))
            .collect::<String>()
    );

    // The scan: every port of the node, from our side of its tap.
    let timeout = Duration::from_secs(3);
    let result = in_netns(&ns, move || {
        scan(node_ip, (1..=65535).collect(), concurrency, timeout)
    })
    .unwrap();
    let neigh = Command::new("ip")
        .args(["-n", &ns, "neigh", "show", &node_ip.to_string()])
        .output()
        .unwrap();
    println!(
        "scan of {node_ip}:1-65535 ({concurrency} at a time, {timeout:?} each): {} open, {} \
         refused, {} timed out, {} unreachable, {} other errors, in {}; neighbour: {}",
        result.open.len(),
        result.refused,
        result.timed_out,
        result.unreachable,
        result.other.len(),
        secs(result.elapsed),
        String::from_utf8_lossy(&neigh.stdout).trim()
    );
    assert!(result.open.is_empty(), "open ports: {:?}", result.open);
    assert!(
        result.other.is_empty(),
        "unexpected connect errors: {:?}",
        &result.other[..result.other.len().min(20)]
    );
    assert_eq!(
        result.refused + result.timed_out + result.unreachable,
        65535,
        "{result:?}"
    );
    // The node is still up and serving, and was reachable at all.
    assert!(node.running(), "QEMU exited during the scan");
    assert!(
        pinged || result.refused > 0 || neigh.stdout.windows(6).any(|w| w == b"lladdr"),
        "the node's address never answered anything: the scan proves nothing"
    );
    let hb = zos
        .run(&["node", "list", "--farm", farm, "--notary", &url])
        .unwrap();
    assert!(hb.contains(&key), "{hb}");
    node.kill();
    drop(etcd);
    drop(netns);
}
