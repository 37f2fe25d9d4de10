//! `cargo xtask farm 3 --mesh` (issue #16's booted tests, docs/network.md "Mesh"): three
//! nodes booted from the image under QEMU on one LAN ([`crate::lan`]: a bridge in a
//! `zt-` namespace, dnsmasq, etcd), the orchestrator `zos bot run` beside them.
//!
//! 1. Tenant A: a placement contract of the mesh blueprint, two replicas. Each copy
//!    asks the other by its private address; both answer over WireGuard.
//! 2. Tenant B: a node-list contract on the same two nodes, another range. Its copies
//!    reach each other, and neither tenant reaches the other's addresses.
//! 3. A capture on the LAN's bridge while they talk: between the nodes only UDP, and
//!    the marker both tenants send never appears in it. The capture's own proof: the
//!    same marker sent in clear from the LAN to a node's opened port is in it.
//! 4. A UDP scan of every port of a node that has WireGuard ports: no answer.
//! 5. With `bench`: round trips and throughput between the two copies over the tenant
//!    network, and over the same two nodes' plain LAN path (opened ports), same run.
//! 6. Replica 1's node loses power (QEMU killed): the replica runs on the third node in
//!    the same slot, the peers follow, and tenant A's traffic flows again.
//!
//! Every step waits for what it asserts (a status line, a placement record) and fails
//! with what it last saw.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use serde_json::Value;

use crate::capture::{self, Capture};
use crate::failover::{node_spec, replicas, sample_blueprint, start_bot, wait_placement, AFTER_S};
use crate::flists::{path, run as zos};
use crate::lan::{Lan, BRIDGE};
use crate::node::{self as qemu, NodeSpec};
use crate::status::{log_tail, poll_until};
use crate::udpscan::{self, UdpScan};
use crate::{cargo, target_dir};

const FARM: &str = "farm-mesh";
/// Tenant A (placement) and B (node list), and the benchmark's contract.
const A: &str = "mesh-a";
const B: &str = "mesh-b";
const C: &str = "mesh-c";
/// Their ranges. Each node's slot of a /16 is a /22: slot 0 is `.0.0/22`, slot 1
/// `.4.0/22`, and a slot's first workload is its `.2`.
const RANGE_A: &str = "10.20.0.0/16";
const RANGE_B: &str = "10.30.0.0/16";
const RANGE_C: &str = "10.40.0.0/16";
/// TCG boots of three nodes on two busy cores.
const BOOT: Duration = Duration::from_secs(600);
/// From publication to running, from a power cut to the move.
const PLACE: Duration = Duration::from_secs(300);
/// From running to the copies answering each other (flist fetch, WireGuard, peers).
const TALK: Duration = Duration::from_secs(240);
/// After the scan's last probe, how long answers are awaited.
const SCAN_WAIT: Duration = Duration::from_secs(3);

/// What a run measured.
#[derive(Debug)]
pub struct Figures {
    /// Per node, from QEMU's start to serving contracts.
    pub serving: Vec<Duration>,
    /// From tenant A's publication to the first answer across nodes.
    pub first_packet: Duration,
    /// The packets between nodes while both tenants talked.
    pub capture: capture::Between,
    /// The UDP scan of a node with WireGuard ports.
    pub scan: UdpScan,
    /// The measurement, with `bench`.
    pub bench: Option<Bench>,
    /// From the power cut to the replica running on the third node.
    pub moved: Duration,
    /// From the power cut to tenant A's traffic answered again.
    pub flowing_again: Duration,
    /// From the replica running on the third node to the traffic flowing again.
    pub flowing_after_running: Duration,
    /// Replica 1's epochs: before the power cut, after the move.
    pub epochs: (u64, u64),
}

/// Round trips and throughput between the two nodes' copies.
#[derive(Debug, Clone, Copy)]
pub struct Bench {
    /// The mean round trip of one byte over the tenant network (WireGuard), in µs.
    pub mesh_rtt_us: f64,
    /// The throughput over the tenant network, in Mbit/s.
    pub mesh_mbps: f64,
    /// The mean round trip over the LAN to the other node's opened ports (NAT, no
    /// encryption), in µs.
    pub plain_rtt_us: f64,
    /// The throughput over that plain path, in Mbit/s.
    pub plain_mbps: f64,
}

/// The address of the first workload in slot `slot` of the /16 `range`.
fn workload_ip(range: &str, slot: u8) -> String {
    let second = range.split('.').nth(1).unwrap_or("0");
    format!("10.{second}.{}.2", slot * 4)
}

/// Everything the scenario needs, made before entering the LAN (builds need the host's
/// network for crates).
struct Prepared {
    files: qemu::BootFiles,
    zos_bin: PathBuf,
    work: PathBuf,
    blueprint: PathBuf,
}

fn prepare(rebuild: bool) -> anyhow::Result<Prepared> {
    let files = qemu::boot_files(rebuild)?;
    cargo(&["build", "--quiet", "-p", "zos-cli"])?;
    let zos_bin = target_dir().join("debug/zos");
    let work = target_dir().join("nodes/mesh");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let blueprint = sample_blueprint(&zos_bin, &work, "mesh")?;
    Ok(Prepared {
        files,
        zos_bin,
        work,
        blueprint,
    })
}

/// Runs the scenario (module docs); with `bench`, step 5 too.
pub fn run(rebuild: bool, bench: bool) -> anyhow::Result<Figures> {
    let p = prepare(rebuild)?;
    let lan = Lan::start("mesh", 3, &p.work.join("lan"))?;
    println!(
        "LAN: namespace {}, bridge {BRIDGE} {}/24, notary {}",
        lan.netns,
        Lan::gateway(),
        lan.notary_url()
    );
    lan.run(|| Scenario::new(&p, &lan)?.run(bench))?
}

/// One run's state inside the LAN.
struct Scenario<'a> {
    p: &'a Prepared,
    url: String,
    net: Vec<qemu::Net>,
}

impl<'a> Scenario<'a> {
    fn new(p: &'a Prepared, lan: &Lan) -> anyhow::Result<Self> {
        Ok(Scenario {
            p,
            url: lan.notary_url(),
            net: (0..3).map(|i| lan.net(i)).collect(),
        })
    }

    fn zos(&self, args: &[&str]) -> anyhow::Result<String> {
        zos(&self.p.zos_bin, args)
    }

    fn key(&self, name: &str) -> anyhow::Result<String> {
        let out = self.zos(&["key", "new", "--out", path(&self.p.work.join(name))?])?;
        Ok(out
            .split_whitespace()
            .last()
            .unwrap_or_default()
            .to_string())
    }

    /// `zos contract new` with `extra` arguments, signed by `owner_key`, published.
    fn publish(&self, id: &str, owner_key: &str, extra: &[String]) -> anyhow::Result<Instant> {
        let owner = self.key(owner_key)?;
        let file = self.p.work.join(format!("{id}.json"));
        let mut args: Vec<String> = [
            "contract",
            "new",
            "--blueprint",
            path(&self.p.blueprint)?,
            "--owner",
            &owner,
            "--expires",
            "1d",
            "--id",
            id,
            "-o",
            path(&file)?,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().cloned());
        self.zos(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        let key = self.p.work.join(owner_key);
        self.zos(&["contract", "sign", path(&file)?, "--key", path(&key)?])?;
        println!("$ zos contract publish {id}");
        let at = Instant::now();
        self.zos(&[
            "contract",
            "publish",
            path(&file)?,
            "--key",
            path(&key)?,
            "--notary",
            &self.url,
        ])?;
        Ok(at)
    }

    /// Contract `id`'s status on `node`, `Null` until there is one.
    fn status(&self, id: &str, node: &str) -> Value {
        let out = std::process::Command::new(&self.p.zos_bin)
            .args([
                "contract", "status", id, "--node", node, "--notary", &self.url, "--json",
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// Waits until `id`'s app on `node` has printed a line for which `pred` holds, as
    /// the node's signed status shows it. Times are the host's: a guest's clock under
    /// TCG runs behind, so the lines' own stamps are never compared with the host's.
    fn wait_line(
        &self,
        id: &str,
        node: &str,
        what: &str,
        pred: &dyn Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let seen = poll_until(
            TALK,
            Duration::from_millis(500),
            || self.status(id, node),
            |s| log_tail(s, "app").iter().any(|l| pred(l)),
        );
        match seen {
            Ok(s) => Ok(log_tail(&s, "app")
                .into_iter()
                .find(|l| pred(l))
                .unwrap_or_default()),
            Err(last) => bail!(
                "{id} on {}: {what}: not within {TALK:?}; last status: {last}",
                short(node)
            ),
        }
    }

    /// Waits until `node`'s heartbeat lists the sockets of exactly `n` WireGuard ports
    /// (each link binds its port for IPv4 and IPv6), all labelled `wireguard`, and no
    /// other listening socket; returns them as the heartbeat says.
    fn wait_wireguard_sockets(&self, node: &str, n: usize) -> anyhow::Result<Value> {
        let read = || {
            let out = std::process::Command::new(&self.p.zos_bin)
                .args([
                    "node", "list", "--farm", FARM, "--notary", &self.url, "--json",
                ])
                .output();
            let rows: Value = match out {
                Ok(o) if o.status.success() => {
                    serde_json::from_slice(&o.stdout).unwrap_or(Value::Null)
                }
                _ => Value::Null,
            };
            rows.as_array()
                .into_iter()
                .flatten()
                .find(|r| r["node"] == node)
                .map(|r| r["heartbeat"].clone())
                .unwrap_or(Value::Null)
        };
        let done = |hb: &Value| {
            let list = hb["listening"].as_array().cloned().unwrap_or_default();
            let ports: std::collections::BTreeSet<u64> =
                list.iter().filter_map(|s| s["port"].as_u64()).collect();
            hb["listening_total"].as_u64() == Some(list.len() as u64)
                && ports.len() == n
                && list.iter().all(|s| {
                    s["label"] == "wireguard"
                        && s["proto"].as_str().is_some_and(|p| p.starts_with("udp"))
                })
        };
        poll_until(TALK, Duration::from_millis(500), read, done)
            .map(|hb| hb["listening"].clone())
            .or_else(|last| {
                bail!("{}'s heartbeat: not {n} wireguard ports and nothing else within {TALK:?}; last: {last}", short(node))
            })
    }

    fn show_status(&self, id: &str, node: &str) -> anyhow::Result<()> {
        println!("$ zos contract status {id} --node {}", short(node));
        let out = self.zos(&[
            "contract", "status", id, "--node", node, "--notary", &self.url,
        ])?;
        for line in out.lines() {
            println!("  {line}");
        }
        Ok(())
    }

    fn run(&self, bench: bool) -> anyhow::Result<Figures> {
        let work = &self.p.work;
        let farmer = self.p.work.join("farmer.key");
        self.key("farmer.key")?;
        self.zos(&[
            "farm",
            "create",
            FARM,
            "--name",
            "xtask mesh farm",
            "--key",
            path(&farmer)?,
            "--notary",
            &self.url,
        ])?;
        let accel = qemu::accel(&self.p.files.vmlinux);
        let cmdline = format!("zos.farm={FARM} zos.notary={}", self.url);
        let mut nodes = Vec::new();
        for i in 0..3 {
            nodes.push(qemu::boot(&self.p.files, &self.spec(&cmdline, i), accel)?);
        }
        println!("3 nodes booting under QEMU ({accel}, microvm) on the LAN");
        let milestones = qemu::wait_serving(&mut nodes, BOOT)?;
        let keys = nodes
            .iter()
            .map(|n| qemu::node_key(&n.console_text()))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let index = |key: &str| keys.iter().position(|k| k == key);

        let capture = Capture::start(BRIDGE, &work.join("bridge.pcap"))?;
        let bot_key = self.key("bot.key")?;
        let _bot = start_bot(&self.p.zos_bin, work, &self.url)?;

        // 1. Tenant A: two replicas that ask each other.
        let marker = format!("zt-marker-{}", std::process::id());
        let (a0, a1) = (workload_ip(RANGE_A, 0), workload_ip(RANGE_A, 1));
        let b1 = workload_ip(RANGE_B, 1);
        let peers_a = format!("{a0}:8080,{a1}:8080,{b1}:8080");
        let published = self.publish(
            A,
            "owner-a.key",
            &args(&[
                "--param",
                &format!("peers={peers_a}"),
                "--param",
                &format!("marker={marker}"),
                "--farm",
                FARM,
                "--replicas",
                "2",
                "--orchestrator",
                &bot_key,
                "--failover",
                "move",
                "--after-s",
                &AFTER_S.to_string(),
            ]),
        )?;
        let placed = wait_placement(
            &self.p.zos_bin,
            &self.url,
            FARM,
            A,
            PLACE,
            "both replicas running",
            &|r| {
                let l = replicas(r);
                l.len() == 2 && l.iter().all(|x| x.state == "running")
            },
        )?;
        let placed = replicas(&placed);
        let (x, y) = (placed[0].node.clone(), placed[1].node.clone());
        let z = keys
            .iter()
            .find(|k| **k != x && **k != y)
            .context("the third node")?
            .clone();
        let ok_to = |ip: &str| {
            let prefix = format!("peer {ip}:8080: ok");
            move |l: &str| l.starts_with(&prefix)
        };
        self.wait_line(A, &x, &format!("answered by {a1}"), &ok_to(&a1))?;
        let first_packet = published.elapsed();
        self.wait_line(A, &y, &format!("answered by {a0}"), &ok_to(&a0))?;
        println!(
            "tenant A: replica 0 ({a0}) and replica 1 ({a1}) answer each other; replica 0's \
             first answer seen in its status {:.1} s after publishing",
            first_packet.as_secs_f64()
        );

        // 2. Tenant B, on the same two nodes: its own copies talk, the other tenant's
        // addresses never answer, either way.
        let (b0, b1) = (workload_ip(RANGE_B, 0), workload_ip(RANGE_B, 1));
        let peers_b = format!("{b0}:8080,{b1}:8080,{a0}:8080,{a1}:8080");
        self.publish(
            B,
            "owner-b.key",
            &args(&[
                "--param",
                &format!("range={RANGE_B}"),
                "--param",
                "public_base=19081",
                "--param",
                &format!("peers={peers_b}"),
                "--param",
                &format!("marker={marker}"),
                "--node",
                &x,
                "--node",
                &y,
            ]),
        )?;
        self.wait_line(B, &x, &format!("answered by {b1}"), &ok_to(&b1))?;
        self.wait_line(B, &y, &format!("answered by {b0}"), &ok_to(&b0))?;
        let err_to = |ip: &str| {
            let prefix = format!("peer {ip}:8080: error");
            move |l: &str| l.starts_with(&prefix)
        };
        self.wait_line(B, &x, &format!("{a1} refused or silent"), &err_to(&a1))?;
        self.wait_line(A, &x, &format!("{b1} refused or silent"), &err_to(&b1))?;
        for (id, node, foreign) in [
            (A, &x, RANGE_B),
            (A, &y, RANGE_B),
            (B, &x, RANGE_A),
            (B, &y, RANGE_A),
        ] {
            let prefix = foreign.trim_end_matches(".0.0/16");
            let tail = log_tail(&self.status(id, node), "app");
            let leaked: Vec<&String> = tail
                .iter()
                .filter(|l| {
                    (l.starts_with(&format!("peer {prefix}.")) && l.contains(": ok "))
                        || l.starts_with(&format!("connection from {prefix}."))
                })
                .collect();
            ensure!(
                leaked.is_empty(),
                "{id} on {}: the other tenant got through: {leaked:?}",
                short(node)
            );
        }
        println!("tenant B ({RANGE_B}) on the same nodes: its copies answer each other; neither tenant reaches the other");
        // The node's heartbeat names its two WireGuard sockets, and nothing else listens.
        let listening = self.wait_wireguard_sockets(&x, 2)?;
        let sockets: Vec<String> = listening
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                format!(
                    "{} {} port {}",
                    s["label"].as_str().unwrap_or("?"),
                    s["proto"].as_str().unwrap_or("?"),
                    s["port"]
                )
            })
            .collect();
        println!(
            "{}'s heartbeat lists {} listening sockets, all WireGuard's: {}",
            short(&x),
            sockets.len(),
            sockets.join(", ")
        );
        self.show_status(A, &x)?;

        // 3. What crossed the bridge. First the capture's proof that it sees payloads:
        // the marker sent in clear from the LAN to replica 0's opened sink port.
        let x_ip = Lan::node_ip(index(&x).context("x booted")?);
        let counted = send_in_clear(x_ip, 18081, marker.as_bytes())?;
        println!("the marker sent in clear from the LAN to {x_ip}:18081 (the sink counted {counted} bytes)");
        capture.wait_for(marker.as_bytes(), Duration::from_secs(30))?;
        let packets = capture.stop()?;
        let ips: Vec<Ipv4Addr> = (0..3).map(Lan::node_ip).collect();
        let seen = capture::between(&packets, &ips, marker.as_bytes());
        let seen_anywhere = packets
            .iter()
            .filter(|p| capture::contains(&p.frame, marker.as_bytes()))
            .count();
        println!(
            "capture on {BRIDGE}: {} packets, {} between nodes: {} UDP ({} port pairs), {} \
             other; the marker in {} between nodes, in {seen_anywhere} elsewhere (sent \
             in clear from the LAN)",
            packets.len(),
            seen.total,
            seen.udp.values().sum::<u64>(),
            seen.udp.len(),
            seen.other.len(),
            seen.with_marker
        );
        ensure!(
            seen_anywhere > 0,
            "the capture never saw the marker: it proves nothing"
        );
        ensure!(seen.total > 0, "no packet between the nodes was captured");
        ensure!(
            seen.other.is_empty(),
            "not UDP between nodes: {:?}",
            &seen.other[..seen.other.len().min(10)]
        );
        ensure!(
            seen.with_marker == 0,
            "the marker crossed the bridge in clear"
        );

        // 4. A UDP scan of replica 0's node (it has two WireGuard ports).
        let target = x_ip;
        let scan = udpscan::scan(target, Lan::gateway(), SCAN_WAIT)?;
        println!(
            "UDP scan of {target}: {} probes, {} replies, {} ICMP errors, in {:.1} s (the \
             scanner's own control port answered {} time(s))",
            scan.probes,
            scan.replies.len(),
            scan.icmp.len(),
            scan.elapsed.as_secs_f64(),
            scan.control_icmp
        );
        ensure!(
            scan.replies.is_empty(),
            "UDP ports answered: {:?}",
            scan.replies
        );
        ensure!(scan.icmp.is_empty(), "ICMP answers: {:?}", scan.icmp);

        // 5. The measurement.
        let bench = if bench {
            Some(self.bench(&x, &y, index(&y).context("y booted")?)?)
        } else {
            None
        };

        // 6. Replica 1's node loses power.
        let victim = index(&y).context("replica 1's node is booted here")?;
        let epoch = placed[1].epoch;
        nodes[victim].kill();
        let before_cut: Vec<String> = log_tail(&self.status(A, &x), "app");
        let cut = Instant::now();
        println!(
            "\n{}: QEMU killed (replica 1 at epoch {epoch} ran there)",
            nodes[victim].name
        );
        let ys = y.clone();
        let moved = wait_placement(
            &self.p.zos_bin,
            &self.url,
            FARM,
            A,
            PLACE,
            "replica 1 running on another node",
            &move |r| {
                replicas(r)
                    .get(1)
                    .is_some_and(|x| x.node != ys && x.epoch > epoch && x.state == "running")
            },
        )?;
        let moved_after = cut.elapsed();
        let running = Instant::now();
        let after = replicas(&moved)[1].clone();
        ensure!(after.node == z, "replica 1 moved to a node not booted here");
        // A new "ok" line (each carries the guest's time, so none repeats an older one).
        self.wait_line(A, &x, &format!("answered by {a1} again"), &|l: &str| {
            ok_to(&a1)(l) && !before_cut.iter().any(|b| b == l)
        })?;
        let flowing_again = cut.elapsed();
        let flowing_after_running = running.elapsed();
        println!(
            "replica 1 running on the third node {:.1} s after the power cut; replica 0 \
             reaches {a1} again {:.1} s after the cut ({:.1} s after the move was running)",
            moved_after.as_secs_f64(),
            flowing_again.as_secs_f64(),
            flowing_after_running.as_secs_f64()
        );
        self.show_status(A, &x)?;
        drop(nodes);
        Ok(Figures {
            serving: milestones
                .iter()
                .map(|m| m.serving.unwrap_or_default())
                .collect(),
            first_packet,
            capture: seen,
            scan,
            bench,
            moved: moved_after,
            flowing_again,
            flowing_after_running,
            epochs: (epoch, after.epoch),
        })
    }

    /// Tenant C on nodes x and y: x's copy measures y's over the tenant network and
    /// over the LAN to y's opened ports.
    fn bench(&self, x: &str, y: &str, y_index: usize) -> anyhow::Result<Bench> {
        let c1 = workload_ip(RANGE_C, 1);
        let y_ip = Lan::node_ip(y_index);
        let spec = format!("{c1}:8081,{c1}:8082;{y_ip}:20081,{y_ip}:20082");
        self.publish(
            C,
            "owner-c.key",
            &args(&[
                "--param",
                &format!("range={RANGE_C}"),
                "--param",
                "public_base=20081",
                "--param",
                "peers=",
                "--param",
                &format!("bench={spec}"),
                "--param",
                &format!("lan={}", lan_cidr()),
                "--node",
                x,
                "--node",
                y,
            ]),
        )?;
        let line = |ip: String| {
            let prefix = format!("bench {ip} ");
            move |l: &str| l.starts_with(&prefix)
        };
        let mesh = self.wait_line(C, x, "the tenant network's measurement", &line(c1.clone()))?;
        let plain = self.wait_line(
            C,
            x,
            "the plain path's measurement",
            &line(y_ip.to_string()),
        )?;
        let parse = |l: &str| -> anyhow::Result<(f64, f64)> {
            let field = |name: &str| -> anyhow::Result<f64> {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix(name))
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("no {name} in {l:?}"))
            };
            Ok((field("rtt_us=")?, field("mbps=")?))
        };
        let (mesh_rtt_us, mesh_mbps) = parse(&mesh)?;
        let (plain_rtt_us, plain_mbps) = parse(&plain)?;
        Ok(Bench {
            mesh_rtt_us,
            mesh_mbps,
            plain_rtt_us,
            plain_mbps,
        })
    }

    /// Node `i` on the LAN.
    fn spec(&self, cmdline: &str, i: usize) -> NodeSpec {
        node_spec("mesh", cmdline, &self.p.work, i, self.net[i].clone())
    }
}

/// Sends `bytes` in clear to a sink at `ip:port` and returns the count it answers.
fn send_in_clear(ip: Ipv4Addr, port: u16, bytes: &[u8]) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let addr = std::net::SocketAddr::from((ip, port));
    let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .with_context(|| format!("connecting to {addr}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(bytes)?;
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    Ok(reply.trim().to_string())
}

/// The LAN's range, which tenant C's egress opens for the plain path.
fn lan_cidr() -> String {
    let o = Lan::gateway().octets();
    format!("{}.{}.{}.0/24", o[0], o[1], o[2])
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn short(key: &str) -> &str {
    &key[..key.len().min(12)]
}

/// Prints a run's figures.
pub fn print(f: &Figures) {
    let s = |d: &Duration| format!("{:.1} s", d.as_secs_f64());
    println!("\nmesh figures (TCG):");
    println!(
        "  serving after      {}",
        f.serving.iter().map(s).collect::<Vec<_>>().join(", ")
    );
    println!(
        "  publish -> first packet across nodes   {}",
        s(&f.first_packet)
    );
    println!(
        "  capture between nodes: {} packets, all UDP, marker in clear 0",
        f.capture.total
    );
    println!(
        "  UDP scan: {} probes, {} answers",
        f.scan.probes,
        f.scan.replies.len() + f.scan.icmp.len()
    );
    if let Some(b) = f.bench {
        println!(
            "  rtt: tenant network {:.0} us, plain path {:.0} us: ratio {:.2}",
            b.mesh_rtt_us,
            b.plain_rtt_us,
            b.mesh_rtt_us / b.plain_rtt_us
        );
        println!(
            "  throughput: tenant network {:.1} Mbit/s, plain path {:.1} Mbit/s: ratio {:.2}",
            b.mesh_mbps,
            b.plain_mbps,
            b.mesh_mbps / b.plain_mbps
        );
    }
    println!(
        "  power cut -> replica running elsewhere (epoch {} -> {}) {}; -> traffic again {} ({} after running)",
        f.epochs.0,
        f.epochs.1,
        s(&f.moved),
        s(&f.flowing_again),
        s(&f.flowing_after_running)
    );
}
