//! Real-kernel fixtures: a busybox rootfs in a `zt-` temp dir, unique `zt-` container ids,
//! and a guard that kills and deletes the container on drop (pass or fail).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use zos_testkit::Needs;

use zos_container::{ContainerSpec, Libcontainer, Runtime, RuntimeConfig, Signal};

/// Generous bound for anything that should take milliseconds (never a timing assertion).
pub const WAIT: Duration = Duration::from_secs(60);

const BUSYBOX: &str = "/bin/busybox";
const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "cat", "hostname", "pwd", "id", "touch", "env", "true", "false",
    "mkdir", "ls", "grep", "mount", "rm",
];

/// Fail loudly unless the machine can run containers; with `ZOS_SKIP_PRIVILEGED=1` print a
/// SKIP line instead and return false.
pub fn privileged(test: &str) -> bool {
    let static_busybox = std::fs::read(BUSYBOX)
        .map(|b| is_static_elf64(&b))
        .unwrap_or(false);
    let cgroups = Path::new("/sys/fs/cgroup/memory").is_dir()
        || Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    Needs::root()
        .that(
            static_busybox,
            format!("a static {BUSYBOX} (apt-get install -y busybox-static)"),
        )
        .that(cgroups, "cgroups (v1 memory controller or cgroup2)")
        .check(test)
}

/// An ELF64 without a PT_INTERP program header needs no dynamic loader in the rootfs.
fn is_static_elf64(b: &[u8]) -> bool {
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (size, n) = (u16_at(0x36), u16_at(0x38));
    (0..n).all(|i| {
        let o = phoff + i * size;
        o + 4 <= b.len() && u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) != 3
    })
}

pub fn random_id() -> String {
    zos_testkit::tag(6)
}

/// Build a minimal rootfs: static busybox plus applet symlinks and the usual mount points.
pub fn busybox_rootfs(root: &Path) {
    for d in [
        "bin", "proc", "sys", "dev", "tmp", "etc", "work", "data", "ro", "mnt",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    // Copied by `cp`, not by us: while our write fd is open, a container cloned by another
    // test thread inherits it until its exec, and exec'ing this busybox then fails with
    // ETXTBSY. `cp`'s fds never live in our process.
    let st = std::process::Command::new("cp")
        .arg(BUSYBOX)
        .arg(root.join("bin/busybox"))
        .status()
        .expect("run cp");
    assert!(st.success(), "cp {BUSYBOX}");
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
}

/// One test's world: temp dir, rootfs, runtime dirs.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub rt: Libcontainer,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = zos_testkit::tempdir("ctr");
        busybox_rootfs(&dir.path().join("rootfs"));
        let rt = Libcontainer::new(RuntimeConfig::under(&dir.path().join("run"))).unwrap();
        Fixture { dir, rt }
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// A spec for `sh -c <script>` with a fresh id and its own log dir.
    pub fn sh(&self, script: &str) -> ContainerSpec {
        let id = random_id();
        let logs = self.dir.path().join("logs").join(&id);
        eprintln!("container {id}: sh -c {script:?}");
        let mut s = ContainerSpec::new(id, self.rootfs(), logs, "/bin/sh");
        s.args = vec!["-c".into(), script.into()];
        s
    }

    pub fn guard(&self, id: &str) -> Guard {
        Guard {
            rt: self.rt.clone(),
            id: id.to_string(),
        }
    }

    /// Mountpoints under our temp dir, deepest first (there should be none).
    pub fn our_mounts(&self) -> Vec<String> {
        zos_testkit::mounts_under(self.dir.path())
            .into_iter()
            .map(|m| m.to_string_lossy().into_owned())
            .collect()
    }
}

/// Kills and deletes one container we created, whatever happened in the test.
pub struct Guard {
    pub rt: Libcontainer,
    pub id: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.rt.kill(&self.id, Signal::SIGKILL);
        if let Err(e) = self.rt.delete(&self.id) {
            eprintln!("cleanup: delete {}: {e}", self.id);
        }
        // delete must have removed every cgroup of ours; say so loudly if not, and tidy up
        // so a bug here never leaves the machine dirty.
        if let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") {
            for d in rd.flatten() {
                let cg = d
                    .path()
                    .join(&self.rt.config().cgroup_parent)
                    .join(&self.id);
                if cg.is_dir() {
                    eprintln!("LEAK: {} still exists after delete", cg.display());
                    let _ = std::fs::remove_dir(&cg);
                }
            }
        }
    }
}

/// Cgroup parents a test made (e.g. `zos/zt-ab12-a`): removed from every hierarchy on
/// drop, once the containers under them are deleted (drop it after their guards).
pub struct CgroupParents(pub Vec<String>);

impl Drop for CgroupParents {
    fn drop(&mut self) {
        let Ok(rd) = std::fs::read_dir("/sys/fs/cgroup") else {
            return;
        };
        let roots: Vec<PathBuf> = rd.flatten().map(|d| d.path()).collect();
        for parent in &self.0 {
            for root in std::iter::once(Path::new("/sys/fs/cgroup"))
                .chain(roots.iter().map(PathBuf::as_path))
            {
                let dir = root.join(parent);
                if dir.is_dir() {
                    if let Err(e) = std::fs::remove_dir(&dir) {
                        eprintln!("cleanup: rmdir {}: {e}", dir.display());
                    }
                }
            }
        }
    }
}

pub fn cgroup_v1() -> bool {
    Path::new("/sys/fs/cgroup/memory").is_dir()
}

/// Alive and not a zombie: `/proc/<pid>/stat`'s state is neither Z nor X.
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let state = s.rsplit_once(')')?.1.split_whitespace().next()?.to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

/// The cgroup path of `pid` in the hierarchy of `controller` (v1) or the unified one.
pub fn cgroup_of(pid: i32, controller: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            let hit = if cgroup_v1() {
                ctrls.split(',').any(|c| c == controller)
            } else {
                ctrls.is_empty()
            };
            hit.then(|| path.to_string())
        })
        .next()
        .unwrap_or_default()
}

/// A named network namespace of ours (`ip netns add zt-...`), deleted on drop.
pub struct NetNs(pub String);

impl NetNs {
    pub fn add() -> NetNs {
        let name = random_id();
        let st = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("run ip (apt-get install -y iproute2)");
        assert!(st.success(), "ip netns add {name}");
        NetNs(name)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// v1 cgroup dir of a container for one controller (v2: the unified dir).
pub fn cgroup_dir(controller: &str, id: &str) -> PathBuf {
    let v1 = PathBuf::from(format!("/sys/fs/cgroup/{controller}/zos/{id}"));
    if cgroup_v1() {
        v1
    } else {
        PathBuf::from(format!("/sys/fs/cgroup/zos/{id}"))
    }
}

/// Poll `f` until it returns Some, at most `WAIT`.
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
