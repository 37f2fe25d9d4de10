//! Attack tests: a real container run by libcontainer tries to reach devices, the node and
//! other tenants, and each attempt must fail with its specific error while the secret
//! bytes never show up in what the container printed.
//!
//! The tools inside are Debian's static busybox and `zt-probe` (tests/probe/zt-probe.c,
//! built static with the host's gcc: one raw syscall per word, "<what>: errno <NAME>").
//! The "pool" is a `zt-` loop device with a filesystem on it, standing for the node's
//! btrfs pool that holds volumes and the node's identity seed.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use zos_container::{log_tail, BindMount, ContainerSpec, Created, Exit, Runtime, Stream};
use zos_testkit::skip_or_fail;

/// Busybox applets the attacks use, on top of the common rootfs's.
const ATTACK_APPLETS: &[&str] = &[
    "mknod", "dd", "unshare", "nsenter", "head", "wc", "od", "ln", "chmod",
];

/// A secret that appears nowhere but in the file(s) the test plants.
fn secret() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap();
    format!("ZTSECRET{}", hex::encode(b))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `zt-` loop device with an ext4 filesystem, mounted under the test's temp dir.
struct Pool {
    dev: String,
    mnt: PathBuf,
    image: PathBuf,
}

impl Pool {
    fn new(dir: &Path) -> Pool {
        let image = dir.join("zt-pool.img");
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(64 << 20).unwrap();
        drop(f);
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "zt-pool"])
            .arg(&image));
        let dev = run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image))
        .trim()
        .to_string();
        let mnt = dir.join("zt-pool");
        std::fs::create_dir_all(&mnt).unwrap();
        let pool = Pool { dev, mnt, image };
        run(Command::new("mount").arg(&pool.dev).arg(&pool.mnt));
        pool
    }

    /// (major, minor) of the loop device.
    fn numbers(&self) -> (u64, u64) {
        let rdev = std::fs::metadata(&self.dev).unwrap().rdev();
        (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
    }

    /// Write a file on the pool and push it to the device (so a raw read would see it).
    fn plant(&self, rel: &str, data: &str) -> PathBuf {
        let p = self.mnt.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        run(Command::new("sync").arg("-f").arg(&p));
        p
    }

    /// The image file holds `needle` (what a raw write through the device would leave).
    fn image_contains(&self, needle: &str) -> bool {
        let bytes = std::fs::read(&self.image).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// The fixture's rootfs plus the attack applets and `zt-probe`. Panics (or SKIPs under
/// `ZOS_SKIP_PRIVILEGED=1`) without gcc and a static libc.
fn attack_rootfs(fx: &Fixture, test: &str) -> bool {
    for a in ATTACK_APPLETS {
        std::os::unix::fs::symlink("busybox", fx.rootfs().join("bin").join(a)).unwrap();
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/probe/zt-probe.c");
    // gcc writes the binary from its own process (no fd of ours: see busybox_rootfs).
    let st = Command::new("gcc")
        .args(["-static", "-O1", "-o"])
        .arg(fx.rootfs().join("bin/zt-probe"))
        .arg(&src)
        .status();
    if matches!(st, Ok(s) if s.success()) {
        return true;
    }
    skip_or_fail(
        test,
        "needs gcc and a static libc (apt-get install -y gcc libc6-dev)",
    );
    false
}

/// A block device node (0666) of the pool's loop device inside the rootfs: what an flist
/// carrying a device node would put there.
fn plant_device_node(fx: &Fixture, pool: &Pool, name: &str) {
    let (major, minor) = pool.numbers();
    nix::sys::stat::mknod(
        &fx.rootfs().join(name),
        nix::sys::stat::SFlag::S_IFBLK,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(major, minor),
    )
    .unwrap();
    // mknod's mode is filtered by our umask.
    run(Command::new("chmod")
        .arg("0666")
        .arg(fx.rootfs().join(name)));
}

/// What the container printed: stdout and stderr, once both show `END`.
struct Output {
    stdout: Vec<String>,
    stderr: Vec<String>,
}

impl Output {
    fn all(&self) -> String {
        format!("{}\n{}", self.stdout.join("\n"), self.stderr.join("\n"))
    }

    fn has_err(&self, line: &str) -> bool {
        self.stderr.iter().any(|l| l == line)
    }

    fn has_out(&self, line: &str) -> bool {
        self.stdout.iter().any(|l| l == line)
    }
}

/// Run `spec` to its end and collect its output. Its script ends with `echo END`; an
/// `END` line is added to stderr here, so both pumps are waited for (each stream has its
/// own pump thread: stdout complete says nothing about stderr).
fn run_to_end(fx: &Fixture, spec: &ContainerSpec) -> Output {
    let mut spec = spec.clone();
    if let Some(script) = spec.args.last_mut() {
        script.push_str("; echo END >&2");
    }
    let c: Created = fx.rt.create(&spec).unwrap();
    fx.rt.start(&spec.id).unwrap();
    let exit = c.exit.wait_blocking(WAIT);
    let read = |s: Stream| {
        eventually("END on stdout and stderr", || {
            let out = log_tail(&spec.log_dir, s, 1000).unwrap();
            out.iter().any(|l| l == "END").then_some(out)
        })
    };
    let out = Output {
        stdout: read(Stream::Stdout),
        stderr: read(Stream::Stderr),
    };
    eprintln!(
        "{}: exit {exit:?}\n--- stdout\n{}\n--- stderr\n{}",
        spec.id,
        out.stdout.join("\n"),
        out.stderr.join("\n")
    );
    assert_eq!(exit, Some(Exit::Code(0)), "{}", out.all());
    out
}

fn assert_not_leaked(out: &Output, secret: &str) {
    // The random part alone: a partial or reformatted leak counts too.
    let tail = &secret["ZTSECRET".len()..];
    assert!(
        !out.all().contains(tail),
        "the secret reached the container's output"
    );
}

/// C2: a container makes or opens the block device behind the pool. `mknod` needs
/// CAP_MKNOD (gone), and a device node that is already there (an flist may carry one)
/// is refused by the device cgroup (v1 `devices.deny`, v2 eBPF).
#[test]
fn mknod_and_open_of_the_pools_block_device_fail() {
    let test = "mknod_and_open_of_the_pools_block_device_fail";
    if !privileged(test) {
        return;
    }
    let fx = Fixture::new();
    if !attack_rootfs(&fx, test) {
        return;
    }
    let pool = Pool::new(fx.dir.path());
    let secret = secret();
    pool.plant("data/file", &secret);
    plant_device_node(&fx, &pool, "blk");
    let (major, minor) = pool.numbers();
    let spec = fx.sh(&format!(
        "mknod /dev/zt-blk b {major} {minor} && echo mknod-made; \
         dd if=/dev/zt-blk bs=65536 count=1024 2>/dev/null | grep -a -o 'ZTSECRET[0-9a-f]*'; \
         dd if=/blk of=/dev/null bs=65536 count=1 && echo read-blk; \
         dd if=/blk bs=65536 count=1024 2>/dev/null | grep -a -o 'ZTSECRET[0-9a-f]*'; \
         echo ZTWRITTEN | dd of=/blk bs=1 seek=1048576 conv=notrunc && echo wrote-blk; \
         echo END"
    ));
    let _g = fx.guard(&spec.id);
    let out = run_to_end(&fx, &spec);
    assert!(
        out.has_err("mknod: /dev/zt-blk: Operation not permitted"),
        "mknod of the pool's device not refused with EPERM: {}",
        out.all()
    );
    assert!(
        out.has_err("dd: can't open '/blk': Operation not permitted"),
        "open of the planted device node not refused with EPERM: {}",
        out.all()
    );
    for l in ["mknod-made", "read-blk", "wrote-blk"] {
        assert!(!out.has_out(l), "{l}: {}", out.all());
    }
    assert_not_leaked(&out, &secret);
    assert!(
        !pool.image_contains("ZTWRITTEN"),
        "the container wrote the pool"
    );
    // What the reviewer read on a v1 host: `a *:* rwm`. Now: no wildcard, no block device.
    if cgroup_v1() {
        let list = std::fs::read_to_string(cgroup_dir("devices", &spec.id).join("devices.list"))
            .expect("devices.list of the stopped container");
        eprintln!("devices.list:\n{list}");
        assert!(
            !list.lines().any(|l| l.starts_with("a ")),
            "device wildcard: {list}"
        );
        assert!(
            !list
                .lines()
                .any(|l| l.starts_with("b ") && (l.contains('r') || l.contains('w'))),
            "block device readable or writable: {list}"
        );
    }
}

/// C2/H5: tenant B reads tenant A's volume: through its mounts (not there), /proc (its
/// own PID namespace) or the raw pool device under both (refused as above).
#[test]
fn another_workloads_volume_is_unreachable() {
    let test = "another_workloads_volume_is_unreachable";
    if !privileged(test) {
        return;
    }
    let fx = Fixture::new();
    if !attack_rootfs(&fx, test) {
        return;
    }
    let pool = Pool::new(fx.dir.path());
    plant_device_node(&fx, &pool, "blk");
    let (vol_a, vol_b) = (pool.mnt.join("vol-a"), pool.mnt.join("vol-b"));
    std::fs::create_dir_all(&vol_a).unwrap();
    std::fs::create_dir_all(&vol_b).unwrap();
    let secret = secret();

    // A writes its secret to its own volume and stays up.
    let mut a = fx.sh("echo \"$ZT_DATA\" > /data/secret && sync && echo written; sleep 600");
    a.env = vec![("ZT_DATA".into(), secret.clone())];
    a.mounts = vec![BindMount {
        source: vol_a.clone(),
        target: "/data".into(),
        readonly: false,
    }];
    let _ga = fx.guard(&a.id);
    let ca = fx.rt.create(&a).unwrap();
    fx.rt.start(&a.id).unwrap();
    eventually("A wrote its volume", || {
        let out = log_tail(&a.log_dir, Stream::Stdout, 10).unwrap();
        out.iter().any(|l| l == "written").then_some(())
    });
    assert_eq!(ca.exit.get(), None, "A is running");
    assert_eq!(
        std::fs::read_to_string(vol_a.join("secret")).unwrap(),
        format!("{secret}\n")
    );

    let (major, minor) = pool.numbers();
    let mut b = fx.sh(&format!(
        "cat /proc/*/root/data/secret; \
         ls /data/..; grep -c vol-a /proc/self/mountinfo; \
         mknod /dev/zt-blk b {major} {minor} && echo mknod-made; \
         dd if=/dev/zt-blk bs=65536 count=1024 2>/dev/null | grep -a -o 'ZTSECRET[0-9a-f]*'; \
         dd if=/blk bs=65536 count=1024 | grep -a -o 'ZTSECRET[0-9a-f]*'; \
         echo END"
    ));
    b.mounts = vec![BindMount {
        source: vol_b.clone(),
        target: "/data".into(),
        readonly: false,
    }];
    let _gb = fx.guard(&b.id);
    let out = run_to_end(&fx, &b);
    assert!(
        out.has_err("cat: can't open '/proc/*/root/data/secret': No such file or directory"),
        "A's volume reachable through /proc: {}",
        out.all()
    );
    assert!(out.has_out("0"), "A's volume in B's mount table");
    assert!(
        out.has_err("mknod: /dev/zt-blk: Operation not permitted"),
        "mknod of the pool's device not refused with EPERM: {}",
        out.all()
    );
    assert!(
        out.has_err("dd: can't open '/blk': Operation not permitted"),
        "open of the planted device node not refused with EPERM: {}",
        out.all()
    );
    assert_not_leaked(&out, &secret);
    // Nothing of A's reached B's volume, and A's file is as A wrote it.
    assert_eq!(std::fs::read_dir(&vol_b).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_to_string(vol_a.join("secret")).unwrap(),
        format!("{secret}\n")
    );
}

/// A user namespace (and with it a full capability set over new namespaces) or a join of
/// another namespace: refused by the seccomp allow-list, flag by flag for clone.
#[test]
fn unshare_setns_and_namespace_clones_fail() {
    let test = "unshare_setns_and_namespace_clones_fail";
    if !privileged(test) {
        return;
    }
    let fx = Fixture::new();
    if !attack_rootfs(&fx, test) {
        return;
    }
    let spec = fx.sh("unshare -U -r cat /proc/self/uid_map && echo unshared; \
         nsenter --net=/proc/self/ns/net true && echo entered; \
         zt-probe clone-userns clone-mntns clone-netns clone3 unshare-userns unshare-mntns \
            setns io_uring_setup userfaultfd bpf perf_event_open keyctl name_to_handle_at \
            clone-thread; \
         echo END");
    let _g = fx.guard(&spec.id);
    let out = run_to_end(&fx, &spec);
    assert!(
        out.has_err("unshare: unshare(0x10000000): Operation not permitted"),
        "unshare -U not refused with EPERM: {}",
        out.all()
    );
    assert!(
        out.has_err(
            "nsenter: setns(): can't reassociate to namespace 'net': Operation not permitted"
        ),
        "setns not refused with EPERM: {}",
        out.all()
    );
    for l in ["unshared", "entered"] {
        assert!(!out.has_out(l), "{l}: {}", out.all());
    }
    for probe in [
        "clone-userns",
        "clone-mntns",
        "clone-netns",
        "unshare-userns",
        "unshare-mntns",
        "setns",
        "io_uring_setup",
        "userfaultfd",
        "bpf",
        "perf_event_open",
        "keyctl",
        "name_to_handle_at",
    ] {
        let want = format!("{probe}: errno EPERM");
        assert!(out.has_out(&want), "want {want:?}: {}", out.all());
    }
    // clone3 passes its flags in memory the filter cannot read: ENOSYS, so libc falls
    // back to clone, whose flags it can.
    assert!(out.has_out("clone3: errno ENOSYS"), "{}", out.all());
    // A plain fork still works.
    assert!(out.has_out("clone-thread: ok"), "{}", out.all());
}

/// /proc/kcore reads nothing and /sys takes no write (not even after a remount).
#[test]
fn proc_kcore_and_sys_writes_fail() {
    let test = "proc_kcore_and_sys_writes_fail";
    if !privileged(test) {
        return;
    }
    let fx = Fixture::new();
    if !attack_rootfs(&fx, test) {
        return;
    }
    let ksm_before = std::fs::read_to_string("/sys/kernel/mm/ksm/run").ok();
    let spec = fx.sh(
        "echo kcore-bytes=$(dd if=/proc/kcore bs=4096 count=16 2>/dev/null | wc -c); \
         echo 1 > /sys/kernel/mm/ksm/run && echo wrote-ksm; \
         echo zt > /sys/class/net/lo/ifalias && echo wrote-ifalias; \
         mount -o remount,rw /sys && echo remounted; \
         echo END",
    );
    let _g = fx.guard(&spec.id);
    let out = run_to_end(&fx, &spec);
    assert!(
        out.has_out("kcore-bytes=0"),
        "/proc/kcore gave bytes: {}",
        out.all()
    );
    assert!(
        out.has_err("/bin/sh: can't create /sys/kernel/mm/ksm/run: Read-only file system"),
        "/sys write not refused with EROFS: {}",
        out.all()
    );
    assert!(
        out.has_err("/bin/sh: can't create /sys/class/net/lo/ifalias: Read-only file system"),
        "/sys write not refused with EROFS: {}",
        out.all()
    );
    assert!(
        // busybox's words for EPERM from mount(2).
        out.has_err("mount: permission denied (are you root?)"),
        "remount of /sys not refused: {}",
        out.all()
    );
    for l in ["wrote-ksm", "wrote-ifalias", "remounted"] {
        assert!(!out.has_out(l), "{l}: {}", out.all());
    }
    assert_eq!(
        std::fs::read_to_string("/sys/kernel/mm/ksm/run").ok(),
        ksm_before
    );
}

/// The node's identity seed, on the pool and on the host's root filesystem outside every
/// container mount: by path tricks through /proc, by file handle, by the raw device.
#[test]
fn identity_seed_is_unreachable() {
    let test = "identity_seed_is_unreachable";
    if !privileged(test) {
        return;
    }
    let fx = Fixture::new();
    if !attack_rootfs(&fx, test) {
        return;
    }
    let pool = Pool::new(fx.dir.path());
    plant_device_node(&fx, &pool, "blk");
    let secret = secret();
    let on_pool = pool.plant("identity/seed", &secret);
    let on_host = fx.dir.path().join("seed");
    std::fs::write(&on_host, &secret).unwrap();
    for p in [&on_pool, &on_host] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    // The handles an attacker would guess (inode numbers are predictable).
    let probe = fx.rootfs().join("bin/zt-probe");
    let handle = |p: &Path| {
        run(Command::new(&probe).arg("handle-of").arg(p))
            .trim()
            .to_string()
    };
    let (h_pool, h_host) = (handle(&on_pool), handle(&on_host));
    let (major, minor) = pool.numbers();
    let spec = fx.sh(&format!(
        "cat /proc/1/root/../seed /proc/self/root/../../seed /../seed; \
         ls /proc/1/root/.. /proc/self/cwd/..; \
         zt-probe open_by_handle_at {h_pool} open_by_handle_at {h_host}; \
         mknod /dev/zt-blk b {major} {minor} && echo mknod-made; \
         dd if=/dev/zt-blk bs=65536 count=1024 2>/dev/null | grep -a -o 'ZTSECRET[0-9a-f]*'; \
         dd if=/blk bs=65536 count=1024 | grep -a -o 'ZTSECRET[0-9a-f]*'; \
         echo END"
    ));
    let _g = fx.guard(&spec.id);
    let out = run_to_end(&fx, &spec);
    for p in [
        "/proc/1/root/../seed",
        "/proc/self/root/../../seed",
        "/../seed",
    ] {
        let want = format!("cat: can't open '{p}': No such file or directory");
        assert!(out.has_err(&want), "want {want:?}: {}", out.all());
    }
    assert_eq!(
        out.stdout
            .iter()
            .filter(|l| *l == "open_by_handle_at: errno EPERM")
            .count(),
        2,
        "open_by_handle_at not refused with EPERM: {}",
        out.all()
    );
    assert!(
        out.has_err("mknod: /dev/zt-blk: Operation not permitted"),
        "mknod of the pool's device not refused with EPERM: {}",
        out.all()
    );
    assert!(
        out.has_err("dd: can't open '/blk': Operation not permitted"),
        "open of the planted device node not refused with EPERM: {}",
        out.all()
    );
    assert!(!out.has_out("mknod-made"), "{}", out.all());
    assert_not_leaked(&out, &secret);
}

/// A cgroup2 directory of ours (`zt-` name), removed on drop.
struct Cgroup2(PathBuf);

impl Drop for Cgroup2 {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir(&self.0) {
            eprintln!("cleanup: rmdir {}: {e}", self.0.display());
        }
    }
}

/// libcgroups' v2 device controller on `cg` with `rules`. It first raises RLIMIT_MEMLOCK,
/// which needs CAP_SYS_RESOURCE: zosd (PID 1 in the image) has it, this machine's root
/// does not, and kernels since 5.11 do not charge BPF programs to memlock anyway. Without
/// it the same program (libcgroups' emulator and assembler, same rules) is loaded and
/// attached directly.
fn attach_device_program(cg: &Path, rules: Vec<oci_spec::runtime::LinuxDeviceCgroup>) {
    use libcgroups::v2::devices::{bpf, controller, emulator, program};
    use std::os::fd::AsRawFd;
    match controller::Devices::apply_devices(cg, &Some(rules.clone())) {
        Ok(()) => return,
        Err(controller::DevicesControllerError::Bpf(bpf::BpfError::FailedToIncreaseRLimit)) => {
            eprintln!("note: no CAP_SYS_RESOURCE here: loading the device program directly");
        }
        Err(e) => panic!("device program: {e}"),
    }
    let mut em = emulator::Emulator::with_default_allow(false);
    em.add_rules(&rules);
    let prog = program::Program::from_rules(&em.rules, em.default_allow).unwrap();
    let fd = bpf::prog::load("Apache", prog.bytecodes()).expect("BPF_PROG_LOAD");
    let dir = std::fs::File::open(cg).unwrap();
    bpf::prog::attach(fd, dir.as_raw_fd()).expect("BPF_PROG_ATTACH");
    // The attachment keeps the program; our fd is not needed any more.
    // SAFETY: `fd` came from BPF_PROG_LOAD above and is closed exactly once, here.
    drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
}

/// The cgroup2 mount: `/sys/fs/cgroup` on a pure v2 system (the boot image),
/// `/sys/fs/cgroup/unified` on a hybrid one (this host).
fn cgroup2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
}

/// C2 on cgroup v2: the eBPF device program libcgroups builds from our rules (the same
/// `device_rules()` every container spec carries) refuses the pool's block device while
/// /dev/null still works. Loaded on a `zt-` cgroup2 directly: this host runs containers
/// with the v1 manager, the boot image with the v2 one.
#[test]
fn v2_device_program_refuses_the_pools_block_device() {
    let test = "v2_device_program_refuses_the_pools_block_device";
    if !privileged(test) {
        return;
    }
    let Some(root) = cgroup2_root() else {
        skip_or_fail(test, "needs a cgroup2 mount");
        return;
    };
    let fx = Fixture::new();
    let pool = Pool::new(fx.dir.path());
    let secret = secret();
    pool.plant("data/file", &secret);
    let cg = Cgroup2(root.join(random_id()));
    std::fs::create_dir(&cg.0).unwrap();
    let rules = zos_container::spec::device_rules().unwrap();
    attach_device_program(&cg.0, rules);

    // A shell moves itself into the cgroup, then tries the device (host busybox, so the
    // messages are the same as inside the containers above).
    let script = format!(
        "echo $$ > {procs} && exec /bin/busybox sh -c \"\
         /bin/busybox dd if={dev} bs=65536 count=1024 2>&1 | /bin/busybox grep -a -o 'ZTSECRET[0-9a-f]*'; \
         /bin/busybox dd if={dev} of=/dev/null bs=512 count=1 && echo read-blk; \
         echo x > /dev/null && echo null-ok; echo END\"",
        procs = cg.0.join("cgroup.procs").display(),
        dev = pool.dev,
    );
    let out = Command::new("/bin/busybox")
        .args(["sh", "-c", &script])
        .output()
        .unwrap();
    let out = Output {
        stdout: String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        stderr: String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(str::to_string)
            .collect(),
    };
    eprintln!("{}", out.all());
    assert!(out.has_out("END"), "{}", out.all());
    let refused = format!("dd: can't open '{}': Operation not permitted", pool.dev);
    assert!(
        out.has_err(&refused),
        "open of the pool's device not refused with EPERM: {}",
        out.all()
    );
    assert!(!out.has_out("read-blk"), "{}", out.all());
    assert!(out.has_out("null-ok"), "/dev/null refused: {}", out.all());
    assert_not_leaked(&out, &secret);
}

/// Removes a test's user namespace file.
struct UsernsGuard(PathBuf);

impl Drop for UsernsGuard {
    fn drop(&mut self) {
        let _ = zos_container::userns::remove(&self.0);
    }
}

/// Container root is not host root: in its own user namespace, container root is the
/// first id of its contract's range, and what host root owns stays out of its reach
/// even where it is mounted in (a 0600 file, a directory): no read, no write, no chmod.
#[test]
fn host_roots_files_are_not_container_roots() {
    use zos_container::userns;
    let test = "host_roots_files_are_not_container_roots";
    if !privileged(test) {
        return;
    }
    let fx = Fixture::new();
    if !attack_rootfs(&fx, test) {
        return;
    }
    let secret = secret();
    let (host, vol) = (fx.dir.path().join("zt-host"), fx.dir.path().join("zt-vol"));
    std::fs::create_dir_all(&host).unwrap();
    std::fs::create_dir_all(&vol).unwrap();
    let seed = host.join("seed");
    std::fs::write(&seed, &secret).unwrap();
    std::fs::set_permissions(&seed, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let ids = userns::IdRanges::new(fx.dir.path().join("idranges"))
        .of(&format!("zt-{}", std::process::id()))
        .unwrap();
    let ns = fx.dir.path().join("userns");
    let _gns = UsernsGuard(ns.clone());
    assert!(userns::ensure(&ns, ids).unwrap());
    // What the node does for a container's root and volumes: owned in its range.
    userns::shift_tree(&fx.rootfs(), ids).unwrap();
    userns::shift_tree(&vol, ids).unwrap();

    let mut spec = fx.sh(
        "cat /proc/self/uid_map; id -u; cat /host/seed; echo x > /host/planted; \
         chmod 0666 /host/seed; echo mine > /data/mine && echo wrote-own-volume; echo END",
    );
    spec.userns = Some(ns.clone());
    spec.mounts = vec![
        BindMount {
            source: host.clone(),
            target: "/host".into(),
            readonly: false,
        },
        BindMount {
            source: vol.clone(),
            target: "/data".into(),
            readonly: false,
        },
    ];
    let _g = fx.guard(&spec.id);
    let out = run_to_end(&fx, &spec);
    let words = |l: &String| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert!(
        out.stdout
            .iter()
            .any(|l| words(l) == ["0", &ids.base().to_string(), "65536"]),
        "container root not mapped to the range: {}",
        out.all()
    );
    assert!(out.has_out("0"), "not root inside: {}", out.all());
    assert!(
        out.has_err("cat: can't open '/host/seed': Permission denied"),
        "host root's 0600 file readable: {}",
        out.all()
    );
    assert!(
        out.stderr
            .iter()
            .any(|l| l.ends_with("can't create /host/planted: Permission denied")),
        "host root's directory writable: {}",
        out.all()
    );
    assert!(
        out.has_err("chmod: /host/seed: Operation not permitted"),
        "host root's file chmod-able: {}",
        out.all()
    );
    assert!(out.has_out("wrote-own-volume"), "{}", out.all());
    assert_not_leaked(&out, &secret);
    // Nothing written or changed on the host's side; the container's own file is
    // owned by its range.
    assert!(!host.join("planted").exists());
    let meta = std::fs::metadata(&seed).unwrap();
    assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, 0));
    assert_eq!(
        std::fs::metadata(vol.join("mine")).unwrap().uid(),
        ids.base()
    );
}
