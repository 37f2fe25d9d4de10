//! A booted node (zosd as PID 1 under QEMU) has its power cut at random moments while
//! contracts are provisioned, updated and cancelled, then loses a disk (issue #13 item 4,
//! docs/security.md).
//!
//! - Ten hard resets (QEMU killed, nothing inside shuts down), each at a random delay
//!   after a random action (publish a new contract, update the live one to version + 1,
//!   cancel it; one live at a time: the sample blueprint forwards one public port). After each boot the node must converge to what the verified contracts say:
//!   the same node key, every live contract `ok` at its newest version in a status the
//!   node signed after the cut, shown running exactly once on the status screen, every
//!   cancelled one `cancelled` and gone from the screen. The seed and every moment
//!   chosen are printed (`ZOS_POWERCUT_SEED=N` replays a run).
//! - Then the nodes' disks are read on the host: each live contract's volume holds one
//!   line per start of its workload (the sample workload appends one at every start), so
//!   no volume was lost or emptied along the way.
//! - Last, the SSD (the first disk, where the sample contract's volume lives) is replaced
//!   by a blank one: the node boots with the same key and journal (kept on the other
//!   pool) and reports each live contract's lost volume as an error (`volume lost`),
//!   never as a fresh empty volume.
//!
//! Without QEMU or etcd it prints a counted `SKIP:` line.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::{missing, serving_key, skip, workdir, Zos};
use xtask::etcd::Etcd;
use xtask::node::{self as qemu, BootFiles, BootFrom, Booted, Machine, Net, NodeSpec, Share};
use xtask::status::poll_until;

const BOOT: Duration = Duration::from_secs(600);
const RUN: Duration = Duration::from_secs(300);
const CUTS: usize = 10;

/// A small deterministic generator (xorshift64*): the run is replayed from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// What the verified contracts say about one contract id.
#[derive(Debug, Clone)]
struct Expected {
    version: u64,
    users: u32,
    live: bool,
    /// Boots after which its workload was seen running (each start appends a line).
    starts: usize,
}

fn boot(files: &BootFiles, spec: &NodeSpec, accel: &'static str) -> (Booted, String) {
    let mut node = qemu::boot(files, spec, accel).expect("starting QEMU");
    qemu::wait_serving(std::slice::from_mut(&mut node), BOOT)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", node.console_text()));
    let key = serving_key(&node.console_text()).expect("the node key on the serving line");
    (node, key)
}

/// The newest status screen on a console (from its last header on).
fn newest_screen(console: &str) -> Option<&str> {
    console.rfind("Zero-OS node  zosd").map(|at| &console[at..])
}

/// How many times the newest screen lists contract `id`'s workload as running.
fn running_on_screen(console: &str, id: &str) -> usize {
    newest_screen(console).map_or(0, |screen| {
        screen
            .lines()
            .filter(|l| l.starts_with(&format!("  {id}/app  container  running")))
            .count()
    })
}

/// Whether the newest screen lists contract `id` at all.
fn on_screen(console: &str, id: &str) -> bool {
    newest_screen(console).is_some_and(|s| s.lines().any(|l| l.starts_with(&format!("  {id}/"))))
}

/// Waits until the node shows what `expected` says, after a cut at `cut_unix`.
fn converge(
    zos: &Zos,
    node: &Booted,
    key: &str,
    url: &str,
    cut_unix: u64,
    expected: &BTreeMap<String, Expected>,
) {
    for (id, e) in expected {
        if e.live {
            let s = zos
                .wait_status(id, key, url, RUN, |s| {
                    s["state"] == "ok"
                        && s["version"].as_u64() == Some(e.version)
                        && s["signed_at"].as_u64() >= Some(cut_unix)
                })
                .unwrap_or_else(|err| panic!("{err:#}\n{}", node.console_text()));
            println!("  {id}: ok at version {} ({})", e.version, s["signed_at"]);
            let console = poll_until(
                RUN,
                Duration::from_millis(200),
                || node.console_text(),
                |c| running_on_screen(c, id) >= 1,
            )
            .unwrap_or_else(|c| panic!("{id} never shown running:\n{c}"));
            assert_eq!(
                running_on_screen(&console, id),
                1,
                "{id} listed running more than once:\n{}",
                newest_screen(&console).unwrap_or_default()
            );
        } else {
            zos.wait_status(id, key, url, RUN, |s| s["state"] == "cancelled")
                .unwrap_or_else(|err| panic!("{err:#}\n{}", node.console_text()));
            poll_until(
                RUN,
                Duration::from_millis(200),
                || node.console_text(),
                |c| newest_screen(c).is_some() && !on_screen(c, id),
            )
            .unwrap_or_else(|c| panic!("cancelled {id} still on the screen:\n{c}"));
            println!("  {id}: cancelled");
        }
    }
}

#[test]
fn a_booted_node_converges_after_ten_power_cuts_and_reports_a_lost_disk() {
    const NAME: &str = "a_booted_node_converges_after_ten_power_cuts_and_reports_a_lost_disk";
    if let Some(p) = missing(&["qemu-system-x86_64", "etcd"]) {
        return skip(NAME, &format!("{p} is not installed"));
    }
    let files = qemu::boot_files(true).expect("building the image");
    let accel = qemu::accel(&files.vmlinux);
    let work = workdir("powercut").unwrap();
    let etcd = Etcd::start(&work).expect("starting etcd");
    let port = etcd.client.port();
    let url = format!("etcd://127.0.0.1:{port}/zos");
    let guest_url = format!("etcd://10.0.2.2:{port}/zos");
    let farm = "e2e-powercut-farm";
    let zos = Zos::new(&work).unwrap();
    zos.create_farm(farm, &url).unwrap();
    let flists = work.join("flist");
    zos.hello_blueprint(&flists).unwrap();

    let seed = std::env::var("ZOS_POWERCUT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| unix_now() | 1);
    println!("seed {seed} (ZOS_POWERCUT_SEED={seed} replays these moments)");
    let mut rng = Rng(seed);

    let mut spec = NodeSpec {
        name: "e2e-powercut".into(),
        disks: 2,
        disk_gib: 8,
        memory_mib: 2048,
        cpus: 2,
        machine: Machine::Microvm,
        cmdline: format!("zos.farm={farm} zos.notary={guest_url} zos.runmode=dev"),
        fresh: true,
        index: 8,
        from: BootFrom::Kernel,
        shares: vec![Share {
            tag: "flist".into(),
            path: flists.clone(),
        }],
        net: Net::User,
    };
    let (mut node, key) = boot(&files, &spec, accel);
    spec.fresh = false;

    let mut expected: BTreeMap<String, Expected> = BTreeMap::new();
    let mut next_id = 1;
    let mut converged = 0;
    for cut in 1..=CUTS {
        // A random action, then the power cut a random moment after it.
        let live: Vec<String> = expected
            .iter()
            .filter(|(_, e)| e.live)
            .map(|(id, _)| id.clone())
            .collect();
        // One live contract at a time: the sample blueprint forwards one public port.
        // The last cut never cancels: a contract lives on for the volume and disk checks.
        let action = match (live.is_empty(), cut == CUTS) {
            (true, _) => 0,
            (false, true) => 1,
            (false, false) => 1 + rng.below(2),
        };
        let what = match action {
            0 => {
                let id = format!("pc{next_id}");
                next_id += 1;
                let users = 1 + rng.below(99) as u32;
                zos.publish_hello(&id, &key, users, &url).unwrap();
                expected.insert(
                    id.clone(),
                    Expected {
                        version: 1,
                        users,
                        live: true,
                        starts: 0,
                    },
                );
                format!("publish {id} v1 ({users} users)")
            }
            1 => {
                let id = &live[rng.below(live.len() as u64) as usize];
                let e = expected.get_mut(id).unwrap();
                e.version += 1;
                e.users = 1 + rng.below(99) as u32;
                zos.publish_hello_version(id, &key, e.users, e.version, &url)
                    .unwrap();
                format!("update {id} to v{} ({} users)", e.version, e.users)
            }
            _ => {
                let id = &live[rng.below(live.len() as u64) as usize];
                zos.cancel(id, &key, &url).unwrap();
                expected.get_mut(id).unwrap().live = false;
                format!("cancel {id}")
            }
        };
        let delay = Duration::from_millis(rng.below(4000));
        std::thread::sleep(delay);
        node.kill();
        let cut_unix = unix_now();
        println!(
            "cut {cut}/{CUTS}: {what}, power cut {} ms after it",
            delay.as_millis()
        );

        let started = Instant::now();
        let (again, k) = boot(&files, &spec, accel);
        node = again;
        assert_eq!(k, key, "a new node key after cut {cut}");
        assert!(
            !node
                .console_text()
                .contains("first boot: node identity created"),
            "{}",
            node.console_text()
        );
        converge(&zos, &node, &key, &url, cut_unix, &expected);
        for e in expected.values_mut().filter(|e| e.live) {
            e.starts += 1;
        }
        converged += 1;
        println!(
            "cut {cut}/{CUTS}: converged {:.1} s after QEMU start",
            started.elapsed().as_secs_f64()
        );
    }
    println!("power cuts: {converged}/{CUTS} converged");
    assert!(
        expected.values().any(|e| e.live),
        "no live contract to check"
    );

    // Nothing lost or emptied: each live contract's volume holds a line per start.
    node.kill();
    let dir = xtask::target_dir().join("nodes").join(&spec.name);
    let logs = e2e::hello_logs(&dir, &work.join("mnt"));
    for (id, e) in expected.iter().filter(|(_, e)| e.live) {
        let lines: Vec<&String> = logs
            .iter()
            .filter(|(path, _)| path.contains(&format!("/{id}.")))
            .flat_map(|(_, l)| l)
            .collect();
        println!(
            "{id}: {} lines in its volume, {} starts seen",
            lines.len(),
            e.starts
        );
        assert!(
            lines.len() >= e.starts,
            "{id}: the volume lost lines: {lines:?} (logs: {logs:?})"
        );
    }

    // A disk lost between two boots: the SSD (disk0) replaced by a blank one.
    std::fs::remove_file(dir.join("disk0.raw")).unwrap();
    let cut_unix = unix_now();
    let (node, k) = boot(&files, &spec, accel);
    assert_eq!(k, key, "the identity did not survive the loss of one disk");
    for (id, _) in expected.iter().filter(|(_, e)| e.live) {
        // First the supervisor sees the workload gone; re-provisioning it then finds
        // the volume lost, which is what the node must report (never an empty volume).
        let s = zos
            .wait_status(id, &key, &url, RUN, |s| {
                s["signed_at"].as_u64() >= Some(cut_unix)
                    && s["state"] == "error"
                    && s.to_string().contains("volume lost")
            })
            .unwrap_or_else(|err| panic!("{err:#}\n{}", node.console_text()));
        assert_ne!(s["workloads"]["app"]["state"], "running", "{id}: {s:#}");
        println!("{id} after the disk loss: {}", s["message"]);
    }
    drop(node);
    drop(etcd);
}
