//! `zos farm top` in a real terminal: tmux runs the real `zos` binary against a dir://
//! notary this test fills (a farm, two of its nodes' registrations, heartbeats and
//! status records signed as nodes sign them, and a node of another farm), and the test
//! reads the screen with `tmux capture-pane -p`, waiting for what it expects (bounded),
//! sends keys, publishes a new heartbeat and sees the screen follow it, then quits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use zos_contract::{PublicKey, SecretKey};
use zos_notary::{Notary, NotaryKey, Record};
use zos_registry::{ContractCounts, Dmi, Farm, Heartbeat, Nic, NodeResources, Registration, Usage};

/// How long any expected screen may take to appear.
const WAIT: Duration = Duration::from_secs(30);

/// A tmux server of our own (`-L zt-...`), killed however the test ends.
struct Tmux {
    socket: String,
    /// The server's socket file, which it leaves behind (known once it runs).
    socket_path: Option<PathBuf>,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("running tmux")
    }

    fn ok(&self, args: &[&str]) {
        let out = self.cmd(args);
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
    }

    /// Polls the screen until `want` holds for it on two captures in a row that are the
    /// same: one capture can catch a frame half drawn (tmux draws what it has read), so
    /// a screen counts once it has settled. Panics with the last screen after [`WAIT`].
    fn wait_for(&self, what: &str, exit: &Path, want: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            let screen = self.screen();
            if want(&screen) && screen == last {
                return screen;
            }
            last = screen.clone();
            if start.elapsed() > WAIT {
                panic!(
                    "waiting for {what}: not on screen after {WAIT:?}; zos exit: {:?}\n{screen}",
                    std::fs::read_to_string(exit).ok()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn keys(&self, literal: &str) {
        self.ok(&["send-keys", "-t", "top", "-l", literal]);
    }

    fn key(&self, name: &str) {
        self.ok(&["send-keys", "-t", "top", name]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

fn put(url: &str, record: &Record) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(zos_notary::open(url).unwrap().put(record))
        .unwrap();
}

fn registration(farm: &str, mac: &str) -> Registration {
    Registration {
        farm: farm.into(),
        version: "0.1.0".into(),
        capacity: NodeResources {
            cpus: 4,
            memory_bytes: 8 << 30,
            ssd_bytes: 100 << 30,
            hdd_bytes: 0,
        },
        offered: None,
        nics: vec![Nic {
            name: "eth0".into(),
            mac: mac.into(),
        }],
        dmi: Dmi::default(),
        registered_at: zos_registry::now(),
    }
}

fn heartbeat(time: u64, memory_used: u64) -> Heartbeat {
    Heartbeat {
        uptime_secs: 3600,
        reserved: NodeResources {
            cpus: 1,
            memory_bytes: 1 << 30,
            ssd_bytes: 10 << 30,
            hdd_bytes: 0,
        },
        used: Usage {
            memory_bytes: memory_used,
            ssd_bytes: 25 << 30,
            ..Usage::default()
        },
        contracts: ContractCounts {
            provisioning: 0,
            running: 1,
            failed: 0,
        },
        workloads: 1,
        listening: vec![],
        listening_total: 0,
        time,
    }
}

fn status(node: &SecretKey, id: &str, body: serde_json::Value) -> Record {
    let key = NotaryKey::status(&node.public(), id).unwrap();
    Record::sign_at(&key, body, node, zos_registry::now()).unwrap()
}

/// Every file under `root` (hidden ones included) and its bytes.
fn tree(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn short(node: &PublicKey) -> String {
    node.to_string()[..16].to_string()
}

/// The screen's line holding `needle`.
fn line<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} on\n{screen}"))
}

#[test]
fn farm_top_shows_follows_filters_and_opens_nodes_in_tmux() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("SKIP: farm_top_shows_follows_filters_and_opens_nodes_in_tmux: no tmux (apt-get install tmux)");
        return;
    }
    let tmp = zos_testkit::tempdir("cli-top");
    let url = format!("dir://{}/notary", tmp.path().display());
    let now = zos_registry::now();

    let farmer = SecretKey::from_seed([7; 32]);
    let farm =
        Farm::create_or_update(None, "farm-1", "Ghent rack 3", farmer.public(), now).unwrap();
    put(&url, &farm.sign(&farmer, now).unwrap());

    // Two nodes of farm-1 (ages 3h and 10m, stable for tens of seconds either way) and
    // one of farm-2 that must not show.
    let a = SecretKey::from_seed([1; 32]);
    let b = SecretKey::from_seed([2; 32]);
    let c = SecretKey::from_seed([3; 32]);
    for (node, farm, mac, age) in [
        (&a, "farm-1", "52:54:00:00:00:01", 3 * 3600 + 60),
        (&b, "farm-1", "52:54:00:00:00:02", 630),
        (&c, "farm-2", "52:54:00:00:00:03", 5),
    ] {
        put(&url, &registration(farm, mac).sign(node, now).unwrap());
        let hb = heartbeat(now - age, 2 << 30);
        put(&url, &hb.sign(node, now - age).unwrap());
    }
    put(
        &url,
        &status(
            &a,
            "web-1",
            serde_json::json!({"contract": "web-1", "version": 2, "state": "ok",
                "message": "every workload runs",
                "workloads": {"web": {"state": "running", "restarts": 0}}}),
        ),
    );
    put(
        &url,
        &status(
            &b,
            "db-1",
            serde_json::json!({"contract": "db-1", "version": 1, "state": "refused",
                "message": "the node cannot hold it",
                "reasons": [{"code": "over_capacity", "message": "16 GiB of memory asked"}]}),
        ),
    );

    // What the notary holds before zos runs: it must write nothing to it.
    let root = tmp.path().join("notary");
    let before = tree(&root);

    let exit = tmp.path().join("exit");
    let script = tmp.path().join("run.sh");
    let zos = PathBuf::from(env!("CARGO_BIN_EXE_zos"));
    std::fs::write(
        &script,
        format!(
            "unset ZOS_NOTARY\n'{}' farm top farm-1 --notary '{url}' 2>'{}'\necho $? > '{}'\n",
            zos.display(),
            tmp.path().join("stderr").display(),
            exit.display()
        ),
    )
    .unwrap();
    let mut tmux = Tmux {
        socket: format!("zt-top-{}", std::process::id()),
        socket_path: None,
    };
    tmux.ok(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "200",
        "-y",
        "50",
        &format!("sh '{}'", script.display()),
    ]);
    let path = tmux.cmd(&["display-message", "-t", "top", "-p", "#{socket_path}"]);
    let path = PathBuf::from(String::from_utf8_lossy(&path.stdout).trim());
    assert!(path.ends_with(&tmux.socket), "tmux socket {path:?}");
    tmux.socket_path = Some(path);

    // The farm screen: both nodes with their heartbeat ages, contract states, the
    // refusal, and not the other farm's node.
    let (sa, sb, sc) = (short(&a.public()), short(&b.public()), short(&c.public()));
    let screen = tmux.wait_for("the farm screen", &exit, |s| {
        s.contains(&sa) && s.contains(&sb) && s.contains("web-1") && s.contains("db-1")
    });
    assert!(screen.contains("farm farm-1 \"Ghent rack 3\""), "{screen}");
    assert!(screen.contains("live (notary watch)"), "{screen}");
    assert!(screen.contains("Nodes (2)"), "{screen}");
    let row_a = line(&screen, &format!("{sa} 0.1.0"));
    assert!(row_a.contains("3h ago"), "{row_a}");
    // 1 of 4 CPUs reserved, 2 of 8 GiB memory and 25 of 100 GiB SSD used.
    assert!(row_a.contains("[###-------]  25%"), "{row_a}");
    let row_b = line(&screen, &format!("{sb} 0.1.0"));
    assert!(row_b.contains("10m ago"), "{row_b}");
    let web = line(&screen, "web-1");
    assert!(web.contains(&sa) && web.contains(" ok "), "{web}");
    assert!(web.contains("web running"), "{web}");
    let db = line(&screen, "db-1 ");
    assert!(db.contains(&sb) && db.contains("refused"), "{db}");
    assert!(
        screen.contains("[over_capacity] the node cannot hold it"),
        "{screen}"
    );
    assert!(screen.contains("Rollbacks"), "{screen}");
    assert!(
        screen.contains("no placement contract in this farm"),
        "{screen}"
    );
    assert!(!screen.contains(&sc), "farm-2's node shown:\n{screen}");

    // `s` cycles the order: name, load, and back to heartbeat age.
    for sort in ["name", "load", "age"] {
        tmux.keys("s");
        tmux.wait_for(&format!("sort by {sort}"), &exit, |s| {
            s.contains(&format!("sort: {sort} (s)"))
        });
    }

    // Filter by b's key prefix: only b and its contract remain.
    tmux.keys("/");
    tmux.keys(&sb[..8]);
    tmux.key("Enter");
    let applied = format!("filter: {} (/ edit", &sb[..8]);
    let screen = tmux.wait_for("the filter applied", &exit, |s| s.contains(&applied));
    assert!(screen.contains("Nodes (1 of 2)"), "{screen}");
    assert!(screen.contains(&sb), "{screen}");
    assert!(!screen.contains(&sa), "{screen}");
    assert!(!screen.contains("web-1"), "{screen}");

    // Enter opens b: its full key, its heartbeat and its contracts.
    tmux.key("Enter");
    let full_b = b.public().to_string();
    let screen = tmux.wait_for("node b's screen", &exit, |s| {
        s.contains(&format!("node      {full_b}"))
    });
    assert!(screen.contains("Contracts on this node"), "{screen}");
    assert!(line(&screen, "db-1").contains("refused"), "{screen}");
    assert!(screen.contains("heartbeat 10m ago"), "{screen}");
    assert!(screen.contains("52:54:00:00:00:02"), "{screen}");

    // Attack: a status record for b signed by another key, written straight into the
    // tree (a notary's put refuses it), claims b runs "evil-1". Then a new heartbeat
    // from b (6 of 8 GiB used) shows up through the watch, and the forgery never did.
    let mallory = SecretKey::from_seed([66; 32]);
    let forged = Record::sign_at(
        &NotaryKey::status(&b.public(), "evil-1").unwrap(),
        serde_json::json!({"contract": "evil-1", "state": "ok", "message": "forged"}),
        &mallory,
        now,
    )
    .unwrap();
    let status_dir = root.join(format!("nodes/{}/status", b.public()));
    let forged_path = status_dir.join("evil-1.json");
    let hidden = status_dir.join(".evil-1.json.zt-forged");
    std::fs::write(&hidden, serde_json::to_vec(&forged).unwrap()).unwrap();
    std::fs::rename(&hidden, &forged_path).unwrap();
    let later = zos_registry::now();
    put(&url, &heartbeat(later, 6 << 30).sign(&b, later).unwrap());
    let screen = tmux.wait_for("b's new heartbeat", &exit, |s| {
        s.contains(&format!("(taken at {later})"))
    });
    assert!(
        line(&screen, "  memory ").contains("[###############-----]  75%"),
        "{screen}"
    );
    assert!(
        !screen.contains("evil-1"),
        "a forged status shown:\n{screen}"
    );

    // Esc goes back to the (still filtered) farm screen, q quits with status 0.
    tmux.key("Escape");
    let screen = tmux.wait_for("the farm screen again", &exit, |s| {
        s.contains("Nodes (1 of 2)")
    });
    assert!(
        line(&screen, &format!("{sb} 0.1.0")).contains("75%"),
        "{screen}"
    );
    assert!(
        !screen.contains("evil-1"),
        "a forged status shown:\n{screen}"
    );

    // Attack: someone with write access to the notary replaces the farm record with
    // one naming the same farmer but signed by another key (the notary stores it: a
    // farm key has no owning node). The dashboard says the farm record is invalid
    // and never shows the forged name.
    let forged_farm = Record::sign(
        &NotaryKey::farm("farm-1").unwrap(),
        serde_json::json!({"id": "farm-1", "name": "Forged rack", "farmer": farmer.public(),
            "created": 1}),
        &mallory,
    )
    .unwrap();
    put(&url, &forged_farm);
    let screen = tmux.wait_for("the forged farm record refused", &exit, |s| {
        s.contains("no valid farm record") || s.contains("Forged rack")
    });
    assert!(
        !screen.contains("Forged rack"),
        "a forged farm shown:\n{screen}"
    );
    assert!(
        screen.contains("farm farm-1 (no valid farm record in the notary)"),
        "{screen}"
    );
    assert!(screen.contains("1 invalid record(s) not shown"), "{screen}");
    tmux.keys("q");
    let start = Instant::now();
    let code = loop {
        if let Ok(code) = std::fs::read_to_string(&exit) {
            if code.ends_with('\n') {
                break code;
            }
        }
        assert!(start.elapsed() < WAIT, "zos farm top did not quit on q");
        std::thread::sleep(Duration::from_millis(100));
    };
    let stderr = std::fs::read_to_string(tmp.path().join("stderr")).unwrap_or_default();
    assert_eq!(
        code.trim(),
        "0",
        "zos farm top exit status; stderr: {stderr}"
    );

    // Read-only: apart from the three records this test put or planted meanwhile, the
    // notary's tree is byte for byte what it was (no record, lock or mark written).
    let mut after = tree(&root);
    let mut before = before;
    for key in [
        forged_path.clone(),
        root.join(format!("nodes/{}/heartbeat.json", b.public())),
        root.join("farms/farm-1.json"),
    ] {
        assert!(after.remove(&key).is_some(), "{} missing", key.display());
        before.remove(&key);
    }
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "files appeared or went in the notary"
    );
    assert!(before == after, "zos farm top changed the notary's files");
}

#[test]
fn farm_top_without_a_terminal_says_what_reads_the_same() {
    let tmp = zos_testkit::tempdir("cli-top-pipe");
    let url = format!("dir://{}/notary", tmp.path().display());
    let out = Command::new(env!("CARGO_BIN_EXE_zos"))
        .args(["farm", "top", "farm-1", "--notary", &url])
        .env_remove("ZOS_NOTARY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(out.stdout.is_empty(), "drew on a pipe");
    assert!(stderr.contains("zos farm show farm-1 --json"), "{stderr}");
}
