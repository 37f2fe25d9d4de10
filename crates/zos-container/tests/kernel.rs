//! Real kernel, real libcontainer, as root: run busybox containers and check what the
//! kernel sees.

mod common;

use std::path::Path;

use common::*;
use zos_container::{log_tail, BindMount, Cpu, Exit, Runtime, Signal, Status, Stream};

/// Wait for the exit and compare, showing the container's output when it differs.
fn expect_exit(c: &zos_container::Created, spec: &zos_container::ContainerSpec, want: Exit) {
    let got = c.exit.wait_blocking(WAIT);
    if got != Some(want) {
        std::thread::sleep(std::time::Duration::from_millis(200));
        panic!(
            "{}: exit {got:?}, want {want:?}; stdout {:?} stderr {:?}",
            spec.id,
            tail(&spec.log_dir, Stream::Stdout),
            tail(&spec.log_dir, Stream::Stderr)
        );
    }
}

fn tail(dir: &Path, s: Stream) -> Vec<String> {
    log_tail(dir, s, 100).unwrap()
}

#[test]
fn echo_exits_zero_and_logs_are_captured() {
    if !privileged("echo_exits_zero_and_logs_are_captured") {
        return;
    }
    let fx = Fixture::new();
    let spec = fx.sh("echo hello; echo oops >&2; echo world");
    let _g = fx.guard(&spec.id);
    let c = fx.rt.create(&spec).unwrap();
    assert_eq!(
        fx.rt.state(&spec.id).unwrap().unwrap().status,
        Status::Created
    );
    fx.rt.start(&spec.id).unwrap();
    // The async side, as the engine uses it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut w = c.exit.clone();
    let exit = rt
        .block_on(async { tokio::time::timeout(WAIT, w.wait()).await })
        .unwrap();
    assert_eq!(exit, Exit::Code(0));
    eventually("stdout log", || {
        (tail(&spec.log_dir, Stream::Stdout) == ["hello", "world"]).then_some(())
    });
    eventually("stderr log", || {
        (tail(&spec.log_dir, Stream::Stderr) == ["oops"]).then_some(())
    });
    assert_eq!(
        fx.rt.state(&spec.id).unwrap().unwrap().status,
        Status::Stopped
    );
}

#[test]
fn exit_code_is_reported() {
    if !privileged("exit_code_is_reported") {
        return;
    }
    let fx = Fixture::new();
    let spec = fx.sh("exit 7");
    let _g = fx.guard(&spec.id);
    let c = fx.rt.create(&spec).unwrap();
    fx.rt.start(&spec.id).unwrap();
    expect_exit(&c, &spec, Exit::Code(7));
}

#[test]
fn env_cwd_hostname_and_user_are_applied() {
    if !privileged("env_cwd_hostname_and_user_are_applied") {
        return;
    }
    let fx = Fixture::new();
    let mut spec = fx.sh("echo \"foo=$FOO\"; pwd; hostname; id -u; id -g");
    spec.env = vec![("FOO".into(), "bar baz".into())];
    spec.cwd = "/work".into();
    spec.hostname = Some("zt-host".into());
    spec.uid = 1234;
    spec.gid = 4321;
    let _g = fx.guard(&spec.id);
    let c = fx.rt.create(&spec).unwrap();
    fx.rt.start(&spec.id).unwrap();
    expect_exit(&c, &spec, Exit::Code(0));
    let want = ["foo=bar baz", "/work", "zt-host", "1234", "4321"];
    eventually("stdout log", || {
        (tail(&spec.log_dir, Stream::Stdout) == want).then_some(())
    });
}

#[test]
fn limits_and_security_defaults_reach_the_kernel_and_delete_cleans_up() {
    if !privileged("limits_and_security_defaults_reach_the_kernel_and_delete_cleans_up") {
        return;
    }
    let fx = Fixture::new();
    let mut spec = fx.sh("sleep 600");
    spec.memory_limit = Some(64 << 20);
    spec.pids_limit = Some(32);
    spec.cpu = Some(Cpu::Millicores(500));
    let id = spec.id.clone();
    let _g = fx.guard(&id);
    let c = fx.rt.create(&spec).unwrap();
    fx.rt.start(&id).unwrap();
    assert_eq!(fx.rt.state(&id).unwrap().unwrap().status, Status::Running);

    let read = |ctrl: &str, file: &str| {
        std::fs::read_to_string(cgroup_dir(ctrl, &id).join(file))
            .unwrap_or_else(|e| panic!("{ctrl}/{file}: {e}"))
            .trim()
            .to_string()
    };
    if cgroup_v1() {
        assert_eq!(
            read("memory", "memory.limit_in_bytes"),
            (64u64 << 20).to_string()
        );
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu", "cpu.shares"), "512");
    } else {
        assert_eq!(read("memory", "memory.max"), (64u64 << 20).to_string());
        assert_eq!(read("cpu", "cpu.max"), "50000 100000");
    }
    assert_eq!(read("pids", "pids.max"), "32");
    let procs = read("memory", "cgroup.procs");
    assert!(
        procs.lines().any(|p| p == c.pid.to_string()),
        "init not in cgroup: {procs}"
    );

    // What the kernel says about the init (now `sleep`).
    let status = std::fs::read_to_string(format!("/proc/{}/status", c.pid)).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}:")))
            .unwrap_or_else(|| panic!("no {k} in status"))
            .trim()
            .to_string()
    };
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2", "seccomp filter mode");
    let bnd = u64::from_str_radix(&field("CapBnd"), 16).unwrap();
    assert_eq!(bnd & (1 << 13), 0, "CAP_NET_RAW must be dropped");
    assert_eq!(bnd & (1 << 21), 0, "CAP_SYS_ADMIN must be dropped");
    assert_eq!(bnd & (1 << 27), 0, "CAP_MKNOD must be dropped");
    assert_eq!(bnd & (1 << 29), 0, "CAP_AUDIT_WRITE must be dropped");
    assert_ne!(bnd & (1 << 0), 0, "CAP_CHOWN is kept");
    // New namespaces: pid, ipc, uts, mnt, net differ from ours.
    for ns in ["pid", "ipc", "uts", "mnt", "net"] {
        let theirs = std::fs::read_link(format!("/proc/{}/ns/{ns}", c.pid)).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "{ns} namespace shared with the host");
    }

    fx.rt.delete(&id).unwrap();
    assert!(c.exit.wait_blocking(WAIT).is_some());
    assert!(fx.rt.state(&id).unwrap().is_none());
    assert!(!fx.rt.state_path(&id).exists(), "state dir left");
    assert!(!fx.rt.bundle_path(&id).exists(), "bundle left");
    for ctrl in ["memory", "pids", "cpu"] {
        assert!(!cgroup_dir(ctrl, &id).exists(), "{ctrl} cgroup left");
    }
    // Delete is idempotent.
    fx.rt.delete(&id).unwrap();
    assert!(
        fx.our_mounts().is_empty(),
        "mounts left: {:?}",
        fx.our_mounts()
    );
}

#[test]
fn volumes_are_bind_mounted_rw_and_ro() {
    if !privileged("volumes_are_bind_mounted_rw_and_ro") {
        return;
    }
    let fx = Fixture::new();
    let vol = fx.dir.path().join("vol");
    let ro = fx.dir.path().join("rovol");
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::write(ro.join("seed"), "seed\n").unwrap();
    let mut spec = fx.sh(
        "echo written > /data/f && cat /ro/seed && if touch /ro/x 2>/dev/null; then exit 3; fi",
    );
    spec.mounts = vec![
        BindMount {
            source: vol.clone(),
            target: "/data".into(),
            readonly: false,
        },
        BindMount {
            source: ro.clone(),
            target: "/ro".into(),
            readonly: true,
        },
    ];
    let _g = fx.guard(&spec.id);
    let c = fx.rt.create(&spec).unwrap();
    fx.rt.start(&spec.id).unwrap();
    expect_exit(&c, &spec, Exit::Code(0));
    assert_eq!(std::fs::read_to_string(vol.join("f")).unwrap(), "written\n");
    assert!(!ro.join("x").exists());
    eventually("stdout log", || {
        (tail(&spec.log_dir, Stream::Stdout) == ["seed"]).then_some(())
    });
}

#[test]
fn readonly_paths_and_rootfs_are_read_only() {
    if !privileged("readonly_paths_and_rootfs_are_read_only") {
        return;
    }
    let fx = Fixture::new();
    // A read-only path inside a writable rootfs.
    let mut spec = fx.sh("touch /tmp/ok || exit 2; if touch /etc/x 2>/dev/null; then exit 3; fi");
    spec.readonly_paths = vec!["/etc".into()];
    let g1 = fx.guard(&spec.id);
    let c = fx.rt.create(&spec).unwrap();
    fx.rt.start(&spec.id).unwrap();
    expect_exit(&c, &spec, Exit::Code(0));
    assert!(!fx.rootfs().join("etc/x").exists());
    drop(g1);

    // A read-only rootfs, with a writable volume.
    let vol = fx.dir.path().join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    let mut spec = fx.sh("if touch /x 2>/dev/null; then exit 3; fi; touch /data/ok");
    spec.readonly_rootfs = true;
    spec.mounts = vec![BindMount {
        source: vol.clone(),
        target: "/data".into(),
        readonly: false,
    }];
    let _g = fx.guard(&spec.id);
    let c = fx.rt.create(&spec).unwrap();
    fx.rt.start(&spec.id).unwrap();
    expect_exit(&c, &spec, Exit::Code(0));
    assert!(!fx.rootfs().join("x").exists());
    assert!(vol.join("ok").exists());
}

#[test]
fn mount_is_denied_and_proc_is_masked() {
    if !privileged("mount_is_denied_and_proc_is_masked") {
        return;
    }
    let fx = Fixture::new();
    // `mount` fails without CAP_SYS_ADMIN anyway; this checks the container still runs
    // with the filter loaded and reports the denial instead of being killed.
    // runc's masked (/proc/kcore: empty) and read-only (/proc/sys) paths hold too.
    let spec = fx.sh("if mount -t tmpfs none /mnt 2>/dev/null; then exit 3; fi; \
         if [ -s /proc/kcore ]; then exit 4; fi; \
         if echo zt > /proc/sys/kernel/hostname 2>/dev/null; then exit 5; fi; \
         echo denied");
    let _g = fx.guard(&spec.id);
    let c = fx.rt.create(&spec).unwrap();
    fx.rt.start(&spec.id).unwrap();
    expect_exit(&c, &spec, Exit::Code(0));
    eventually("stdout log", || {
        (tail(&spec.log_dir, Stream::Stdout) == ["denied"]).then_some(())
    });
}

#[test]
fn sigkill_is_detected_as_a_crash() {
    if !privileged("sigkill_is_detected_as_a_crash") {
        return;
    }
    let fx = Fixture::new();
    let spec = fx.sh("sleep 600");
    let _g = fx.guard(&spec.id);
    let c = fx.rt.create(&spec).unwrap();
    fx.rt.start(&spec.id).unwrap();
    assert_eq!(c.exit.get(), None);
    // From outside, as an OOM kill or an operator would.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.pid), Signal::SIGKILL).unwrap();
    let exit = c.exit.wait_blocking(WAIT).unwrap();
    assert_eq!(exit, Exit::Signal(Signal::SIGKILL as i32));
    assert!(exit.crashed());
    assert_eq!(
        fx.rt.state(&spec.id).unwrap().unwrap().status,
        Status::Stopped
    );
    // Killing a stopped container is not an error.
    fx.rt.kill(&spec.id, Signal::SIGTERM).unwrap();
}

#[test]
fn readoption_finds_the_running_container_and_never_starts_a_second() {
    if !privileged("readoption_finds_the_running_container_and_never_starts_a_second") {
        return;
    }
    let fx = Fixture::new();
    let spec = fx.sh("i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.05; done");
    let id = spec.id.clone();
    let _g = fx.guard(&id);
    let c = fx.rt.create(&spec).unwrap();
    fx.rt.start(&id).unwrap();
    eventually("first ticks", || {
        (!tail(&spec.log_dir, Stream::Stdout).is_empty()).then_some(())
    });

    // A second runtime over the same dirs stands for zosd after a restart.
    let again = zos_container::Libcontainer::new(fx.rt.config().clone()).unwrap();
    let adopted = again.adopt(&id).unwrap().expect("container found");
    assert_eq!(adopted.state.status, Status::Running);
    assert_eq!(adopted.state.pid, Some(c.pid));
    assert!(adopted.exit.get().is_none());
    assert!(matches!(
        again.create(&spec),
        Err(zos_container::Error::Exists(_))
    ));
    // Exactly one process tree in the cgroup: one member whose parent is outside it.
    let procs = std::fs::read_to_string(cgroup_dir("pids", &id).join("cgroup.procs")).unwrap();
    let members: Vec<&str> = procs.lines().collect();
    let ppid = |p: &str| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PPid:").map(|v| v.trim().to_string()))
            })
    };
    let roots: Vec<&&str> = members
        .iter()
        .filter(|p| ppid(p).is_some_and(|pp| !members.contains(&pp.as_str())))
        .collect();
    assert_eq!(
        roots,
        [&c.pid.to_string().as_str()],
        "one workload tree: {procs}"
    );

    // The log keeps growing through the adopted pump too.
    let n = tail(&spec.log_dir, Stream::Stdout).len();
    eventually("more ticks", || {
        (tail(&spec.log_dir, Stream::Stdout).len() > n).then_some(())
    });

    again.kill(&id, Signal::SIGKILL).unwrap();
    assert!(adopted.exit.wait_blocking(WAIT).is_some());
    assert!(c.exit.wait_blocking(WAIT).is_some());
    assert_eq!(again.state(&id).unwrap().unwrap().status, Status::Stopped);
    // Nothing to adopt for an unknown id.
    assert!(again.adopt("zt-does-not-exist").unwrap().is_none());
}

#[test]
fn unknown_ids_and_duplicates() {
    if !privileged("unknown_ids_and_duplicates") {
        return;
    }
    let fx = Fixture::new();
    let missing = random_id();
    assert!(fx.rt.state(&missing).unwrap().is_none());
    fx.rt.delete(&missing).unwrap();
    assert!(matches!(
        fx.rt.start(&missing),
        Err(zos_container::Error::NotFound(_))
    ));
    let spec = fx.sh("sleep 600");
    let _g = fx.guard(&spec.id);
    fx.rt.create(&spec).unwrap();
    assert!(matches!(
        fx.rt.create(&spec),
        Err(zos_container::Error::Exists(_))
    ));
    // A rootfs without the entrypoint fails at start, not by hanging.
    let mut bad = fx.sh("true");
    bad.entrypoint = "/nope".into();
    let _g2 = fx.guard(&bad.id);
    let r = fx
        .rt
        .create(&bad)
        .and_then(|c| fx.rt.start(&bad.id).map(|_| c));
    if let Ok(c) = r {
        // Some runtimes report the exec failure as an exit instead.
        assert!(c.exit.wait_blocking(WAIT).unwrap().crashed());
    }
}

#[test]
fn joins_the_given_network_namespace() {
    if !privileged("joins_the_given_network_namespace") {
        return;
    }
    let fx = Fixture::new();
    let ns = NetNs::add();
    let mut spec = fx.sh("sleep 600");
    spec.netns = Some(ns.path());
    let _g = fx.guard(&spec.id);
    let c = fx.rt.create(&spec).unwrap();
    fx.rt.start(&spec.id).unwrap();
    let theirs = std::fs::metadata(format!("/proc/{}/ns/net", c.pid)).unwrap();
    let want = std::fs::metadata(ns.path()).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((theirs.dev(), theirs.ino()), (want.dev(), want.ino()));
}

/// Two nodes on one host (the grid tests, the demo) each run a copy of one replica: one
/// container id in two runtimes. With a cgroup parent each, deleting one copy (its
/// cgroup SIGKILLed and removed) leaves the other running in its own cgroup.
#[test]
fn runtimes_with_their_own_cgroup_parent_keep_one_id_apart() {
    let test = "runtimes_with_their_own_cgroup_parent_keep_one_id_apart";
    if !privileged(test) {
        return;
    }
    let fx = Fixture::new();
    let tag = random_id();
    let parents = [format!("zos/{tag}-a"), format!("zos/{tag}-b")];
    let _parents = CgroupParents(parents.to_vec());
    let runtime = |parent: &str, dir: &str| {
        zos_container::Libcontainer::new(zos_container::RuntimeConfig {
            cgroup_parent: parent.to_string(),
            ..zos_container::RuntimeConfig::under(&fx.dir.path().join(dir))
        })
        .unwrap()
    };
    let (a, b) = (runtime(&parents[0], "run-a"), runtime(&parents[1], "run-b"));
    let spec_a = fx.sh("echo up; sleep 600");
    let mut spec_b = spec_a.clone();
    spec_b.log_dir = fx.dir.path().join("logs-b").join(&spec_b.id);
    let id = spec_a.id.clone();
    let _ga = Guard {
        rt: a.clone(),
        id: id.clone(),
    };
    let _gb = Guard {
        rt: b.clone(),
        id: id.clone(),
    };
    let ca = a.create(&spec_a).unwrap();
    a.start(&id).unwrap();
    let cb = b.create(&spec_b).unwrap();
    b.start(&id).unwrap();
    for spec in [&spec_a, &spec_b] {
        eventually("both copies up", || {
            tail(&spec.log_dir, Stream::Stdout)
                .contains(&"up".to_string())
                .then_some(())
        });
    }
    assert_ne!(ca.pid, cb.pid);
    for (c, parent) in [(&ca, &parents[0]), (&cb, &parents[1])] {
        assert_eq!(cgroup_of(c.pid, "pids"), format!("/{parent}/{id}"));
    }

    a.delete(&id).unwrap();
    assert!(ca.exit.wait_blocking(WAIT).is_some(), "a's copy not ended");
    // The delete has returned (a's cgroup killed and removed): b's copy runs on.
    assert!(alive(cb.pid), "b's copy was killed by a's delete");
    assert_eq!(cb.exit.get(), None, "b's copy has exited");
    assert_eq!(b.state(&id).unwrap().unwrap().status, Status::Running);
    assert_eq!(cgroup_of(cb.pid, "pids"), format!("/{}/{id}", parents[1]));
    assert!(a.state(&id).unwrap().is_none());
}

/// A runtime whose cgroup parent changed (zosd upgraded to a per-node scope) finds the
/// containers made under the old one: running, adopted with the same pid (not taken for
/// stopped and started twice), and deleted whole, cgroup included.
#[test]
fn a_container_made_under_another_parent_is_adopted_and_deleted_whole() {
    let test = "a_container_made_under_another_parent_is_adopted_and_deleted_whole";
    if !privileged(test) {
        return;
    }
    let fx = Fixture::new();
    let tag = random_id();
    let (old, new) = (format!("zos/{tag}-old"), format!("zos/{tag}-new"));
    let _parents = CgroupParents(vec![old.clone(), new.clone()]);
    let before = zos_container::Libcontainer::new(zos_container::RuntimeConfig {
        cgroup_parent: old.clone(),
        ..fx.rt.config().clone()
    })
    .unwrap();
    let spec = fx.sh("echo up; sleep 600");
    let id = spec.id.clone();
    let _g = Guard {
        rt: before.clone(),
        id: id.clone(),
    };
    let c = before.create(&spec).unwrap();
    before.start(&id).unwrap();
    eventually("the container up", || {
        tail(&spec.log_dir, Stream::Stdout)
            .contains(&"up".to_string())
            .then_some(())
    });

    let after = zos_container::Libcontainer::new(zos_container::RuntimeConfig {
        cgroup_parent: new.clone(),
        ..fx.rt.config().clone()
    })
    .unwrap();
    let adopted = after.adopt(&id).unwrap().expect("container found");
    assert_eq!(adopted.state.status, Status::Running);
    assert_eq!(adopted.state.pid, Some(c.pid));
    assert_eq!(cgroup_of(c.pid, "pids"), format!("/{old}/{id}"));
    // Where it is, for the metrics too; a container not made yet would be under `new`.
    assert_eq!(after.cgroup_path(&id), Path::new(&format!("/{old}/{id}")));
    assert_eq!(
        after.cgroup_path("zt-none"),
        Path::new(&format!("/{new}/zt-none"))
    );

    after.delete(&id).unwrap();
    assert!(c.exit.wait_blocking(WAIT).is_some(), "not ended by delete");
    assert!(!alive(c.pid));
    assert!(after.state(&id).unwrap().is_none());
    let left: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|d| d.path().join(&old).join(&id))
        .filter(|p| p.is_dir())
        .collect();
    assert!(left.is_empty(), "cgroups left: {left:?}");
}
