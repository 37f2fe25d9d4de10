//! End-to-end tests live in `tests/`; they drive `cargo xtask`, the built image and the
//! `zos` tool the way a farmer or CI would. This library holds what several of them
//! share: skipping without a tool, the `zos` CLI in a working directory of keys and
//! files, the node key on a console, and contracts for the sample `hello` flist.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

/// Prints the counted `SKIP: <test>: <why>` line of a test that cannot run here, to
/// the real stderr (the kit's: crates/zos-testkit).
pub use zos_testkit::skip_line as skip;

/// Whether `program` is installed in one of the system's bin directories.
pub fn on_path(program: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).is_file())
}

/// The first of `programs` that is not installed.
pub fn missing(programs: &[&'static str]) -> Option<&'static str> {
    programs.iter().copied().find(|p| !on_path(p))
}

/// A fresh working directory `target/e2e/<name>/` (removed first).
pub fn workdir(name: &str) -> anyhow::Result<PathBuf> {
    let dir = xtask::target_dir().join("e2e").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The key in `zosd: node <key> serving contracts from <url>` (the first such line).
pub fn serving_key(console: &str) -> Option<String> {
    let line = console
        .lines()
        .find(|l| l.contains(" serving contracts from "))?;
    let key = line
        .split("zosd: node ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .to_string();
    (key.len() == 64 && key.chars().all(|c| c.is_ascii_hexdigit())).then_some(key)
}

/// The `zos` tool (built by `cargo build -p zos-cli`) run in a directory holding the
/// keys and files it reads and writes.
pub struct Zos {
    /// The `zos` binary.
    pub bin: PathBuf,
    /// Its working directory: the keys and files it reads and writes.
    pub dir: PathBuf,
    /// Run it in this network namespace (`ip netns exec`), where the notary is.
    pub netns: Option<String>,
}

impl Zos {
    /// Builds the tool and uses `dir` (created if missing).
    pub fn new(dir: &Path) -> anyhow::Result<Zos> {
        xtask::cargo(&["build", "--quiet", "-p", "zos-cli"])?;
        std::fs::create_dir_all(dir)?;
        Ok(Zos {
            bin: xtask::target_dir().join("debug/zos"),
            dir: dir.to_path_buf(),
            netns: None,
        })
    }

    fn command(&self) -> Command {
        let mut c = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        c.current_dir(&self.dir).stdin(Stdio::null());
        c
    }

    /// Runs `zos args…` in the directory, printing the command; its trimmed stdout.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.command().args(args).output().context("running zos")?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("$ zos {}", args.join(" "));
        if !out.status.success() {
            bail!(
                "zos {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(stdout)
    }

    /// A new key pair in `<who>.key`; its public key (hex).
    pub fn key(&self, who: &str) -> anyhow::Result<String> {
        self.run(&["key", "new", "--out", &format!("{who}.key")])
    }

    /// Creates `farm` in the notary at `url`, signed by `farmer.key` (made if missing).
    pub fn create_farm(&self, farm: &str, url: &str) -> anyhow::Result<()> {
        self.create_farm_with(farm, url, &[])
    }

    /// [`Zos::create_farm`] with further `zos farm create` options, e.g. the farm's log
    /// destination (`--logs syslog+tcp://HOST:PORT`).
    pub fn create_farm_with(&self, farm: &str, url: &str, options: &[&str]) -> anyhow::Result<()> {
        if !self.dir.join("farmer.key").exists() {
            self.key("farmer")?;
        }
        let mut args = vec![
            "farm",
            "create",
            farm,
            "--name",
            "an e2e test's farm",
            "--key",
            "farmer.key",
            "--notary",
            url,
        ];
        args.extend_from_slice(options);
        self.run(&args)?;
        Ok(())
    }

    /// Builds the sample `hello` flist under `flist_dir` and signs a blueprint pinning
    /// it (`hello.blueprint.json`, by `expert.key`). Its volume is on SSD: a QEMU node's
    /// first disk is one (virtio-scsi, rotation_rate=1).
    pub fn hello_blueprint(&self, flist_dir: &Path) -> anyhow::Result<xtask::flists::SampleFlist> {
        let flist = xtask::flists::build(flist_dir, &self.bin)?;
        let toml = xtask::flists::pinned_blueprint("crm.blueprint.toml", "hello.fl", &flist)?;
        std::fs::write(self.dir.join("hello.blueprint.toml"), toml)?;
        if !self.dir.join("expert.key").exists() {
            self.key("expert")?;
        }
        self.run(&[
            "blueprint",
            "sign",
            "hello.blueprint.toml",
            "--key",
            "expert.key",
            "-o",
            "hello.blueprint.json",
        ])?;
        Ok(flist)
    }

    /// A hello contract `id` for `node`, signed by `owner.key` (made if missing) and
    /// published to `url`.
    pub fn publish_hello(&self, id: &str, node: &str, users: u32, url: &str) -> anyhow::Result<()> {
        self.publish_hello_version(id, node, users, 1, url)
    }

    /// [`Zos::publish_hello`] at `version` (an update when the node runs a lower one).
    pub fn publish_hello_version(
        &self,
        id: &str,
        node: &str,
        users: u32,
        version: u64,
        url: &str,
    ) -> anyhow::Result<()> {
        if !self.dir.join("owner.key").exists() {
            self.key("owner")?;
        }
        let owner = self.run(&["key", "show", "owner.key"])?;
        let file = format!("{id}.json");
        self.run(&[
            "contract",
            "new",
            "--blueprint",
            "hello.blueprint.json",
            "--param",
            &format!("users={users}"),
            "--owner",
            &owner,
            "--node",
            node,
            "--expires",
            "1d",
            "--id",
            id,
            "--version",
            &version.to_string(),
            "-o",
            &file,
        ])?;
        self.run(&["contract", "sign", &file, "--key", "owner.key"])?;
        self.run(&[
            "contract",
            "publish",
            &file,
            "--key",
            "owner.key",
            "--notary",
            url,
        ])?;
        Ok(())
    }

    /// The owner's signed cancellation of contract `id` on `node`, published to `url`.
    pub fn cancel(&self, id: &str, node: &str, url: &str) -> anyhow::Result<()> {
        self.run(&[
            "contract",
            "cancel",
            id,
            "--key",
            "owner.key",
            "--node",
            node,
            "--notary",
            url,
        ])?;
        Ok(())
    }

    /// The node's status record for contract `id` (JSON), or `Null` if there is none
    /// (yet) or the notary does not answer.
    pub fn status(&self, id: &str, node: &str, url: &str) -> Value {
        let out = self
            .command()
            .args([
                "contract", "status", id, "--node", node, "--notary", url, "--json",
            ])
            .output();
        match out {
            Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// Polls the status record (every 250 ms) until `pred` holds, for at most `timeout`.
    pub fn wait_status(
        &self,
        id: &str,
        node: &str,
        url: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        xtask::status::poll_until(
            timeout,
            Duration::from_millis(250),
            || self.status(id, node, url),
            pred,
        )
        .or_else(|s| bail!("{id}: the node's status did not get there in {timeout:?}; last: {s}"))
    }
}

/// Unmounts what it mounted (a powered-off node's pools, loop-mounted read-write: a pool
/// of a node that lost power has a tree log to replay, which a read-only loop device
/// refuses, "log replay required on RO media").
struct Mounted(Vec<PathBuf>);

impl Drop for Mounted {
    fn drop(&mut self) {
        for m in self.0.iter().rev() {
            let _ = Command::new("umount").arg(m).status();
        }
    }
}

/// Every `hello.log` (the sample workload's volume file: a line per start) on the two
/// disks of a powered-off QEMU node in `node_dir`, mounted under `mnt`: path -> lines.
pub fn hello_logs(node_dir: &Path, mnt: &Path) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut mounted = Mounted(Vec::new());
    let mut logs = std::collections::BTreeMap::new();
    for i in 0..2 {
        let disk = node_dir.join(format!("disk{i}.raw"));
        let at = mnt.join(format!("disk{i}"));
        if std::fs::create_dir_all(&at).is_err() {
            continue;
        }
        let ok = Command::new("mount")
            .args(["-t", "btrfs", "-o", "loop"])
            .arg(&disk)
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            continue;
        }
        mounted.0.push(at.clone());
        let Ok(found) = Command::new("find")
            .arg(&at)
            .args(["-name", "hello.log", "-type", "f"])
            .output()
        else {
            continue;
        };
        for file in String::from_utf8_lossy(&found.stdout).lines() {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            logs.insert(file.to_owned(), text.lines().map(str::to_owned).collect());
        }
    }
    logs
}
