//! create + start + wait + delete of a busybox `true` container: through zos-container vs
//! bare libcontainer calls on the same bundle, interleaved round by round.
//!
//! `cargo xtask bench container` (or `cargo bench -p zos-container --bench container`), as
//! root, with a static /bin/busybox. `ZOS_BENCH_N` rounds (default 50).

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use zos_container::{ContainerSpec, Exit, Libcontainer, Runtime, RuntimeConfig};

const APPLETS: &[&str] = &["sh", "true"];

fn rootfs(root: &Path) {
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("copy /bin/busybox (apt-get install -y busybox-static)");
    for a in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
}

fn suffix() -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

/// One round through zos-container (bundle written, logs pumped, exit watched).
fn zos_round(rt: &Libcontainer, spec: &ContainerSpec) -> Duration {
    let t = Instant::now();
    let c = rt.create(spec).unwrap();
    rt.start(&spec.id).unwrap();
    let exit = c.exit.wait_blocking(Duration::from_secs(60)).expect("exit");
    rt.delete(&spec.id).unwrap();
    let d = t.elapsed();
    assert_eq!(exit, Exit::Code(0));
    d
}

fn null() -> File {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap()
}

/// One round of bare libcontainer calls on an existing bundle.
fn bare_round(state: &Path, bundle: &Path, id: &str) -> Duration {
    let t = Instant::now();
    let mut c = ContainerBuilder::new(id.to_string(), SyscallType::default())
        .with_root_path(state)
        .unwrap()
        .with_stdin(null())
        .with_stdout(null())
        .with_stderr(null())
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .unwrap();
    let pid = c.pid().unwrap();
    c.start().unwrap();
    let st = loop {
        match waitpid(pid, Some(WaitPidFlag::__WALL)) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r.unwrap(),
        }
    };
    c.delete(true).unwrap();
    let d = t.elapsed();
    assert!(matches!(st, WaitStatus::Exited(_, 0)), "{st:?}");
    d
}

fn stats(v: &mut [Duration]) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let median = ms(v[v.len() / 2]);
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    (median, mean)
}

fn main() {
    if !zos_testkit::Needs::root().check("container benchmark") {
        return;
    }
    let n: usize = std::env::var("ZOS_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        .max(1);
    let dir = zos_testkit::tempdir("ctrbench");
    rootfs(&dir.path().join("rootfs"));
    let rt = Libcontainer::new(RuntimeConfig::under(&dir.path().join("run"))).unwrap();
    let bare_state = dir.path().join("bare-state");
    std::fs::create_dir_all(&bare_state).unwrap();

    let tag = suffix();
    let spec_for = |i: usize| {
        ContainerSpec::new(
            format!("zt-bz-{tag}-{i}"),
            dir.path().join("rootfs"),
            dir.path().join("logs"),
            "/bin/true",
        )
    };
    // The bare arm runs on the very bundle zos-container writes (same config.json).
    let bundle_spec = spec_for(usize::MAX);
    let bundle = rt.write_bundle(&bundle_spec).unwrap();

    let warm = 3;
    let (mut zos, mut bare) = (Vec::new(), Vec::new());
    for i in 0..n + warm {
        let spec = spec_for(i);
        let bare_id = format!("zt-bb-{tag}-{i}");
        // Alternate which goes first so neither always runs on a warmer cache.
        let (z, b) = if i % 2 == 0 {
            let z = zos_round(&rt, &spec);
            (z, bare_round(&bare_state, &bundle, &bare_id))
        } else {
            let b = bare_round(&bare_state, &bundle, &bare_id);
            (zos_round(&rt, &spec), b)
        };
        if i >= warm {
            zos.push(z);
            bare.push(b);
        }
    }
    rt.delete(&bundle_spec.id).unwrap();

    let (zm, za) = stats(&mut zos);
    let (bm, ba) = stats(&mut bare);
    println!("container create+start+wait+delete, busybox true, {n} interleaved rounds");
    println!("  zos-container     median {zm:7.2} ms  mean {za:7.2} ms");
    println!("  bare libcontainer median {bm:7.2} ms  mean {ba:7.2} ms");
    println!(
        "  ratio (zos / bare) median {:.2}x  mean {:.2}x  (target <= 1.3x)",
        zm / bm,
        za / ba
    );
}
