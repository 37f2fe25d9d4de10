//! The container kind end to end on real parts: `ContainerRuntime` (zos-engine's
//! `WorkloadRuntime`) over a btrfs pool on a `zt-` loop device, a busybox flist packed
//! into a `dir://` store, and libcontainer.
//!
//! `harness = false`: the runtime creates a container in a child process
//! (`/proc/self/exe runtime-create --root DIR`, as zosd does), so this binary answers
//! that call itself, then runs its one test.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use zos_container::{ContainerRuntime, Libcontainer, Runtime, RuntimeConfig, Signal, Status};
use zos_engine::{KernelIds, Nic, Placement, WorkloadPlan, WorkloadRuntime, WorkloadState};
use zos_flist::{DirAccess, PackOptions, Router};
use zos_storage::{DiscoveryConfig, DiskSelection, PoolKind, Storage, StorageConfig};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("runtime-create") {
        let root = PathBuf::from(args.get(3).expect("runtime-create --root DIR"));
        return match zos_container::runtime_create(&root) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("runtime-create: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if a_container_is_prepared_run_restarted_and_removed_whole() {
        eprintln!("test a_container_is_prepared_run_restarted_and_removed_whole ... ok");
    }
    ExitCode::SUCCESS
}

/// The test's name map: kernel ids given by the test, as zosd's kernel names do.
#[derive(Default)]
struct Ids(Mutex<BTreeMap<String, String>>);

impl Ids {
    fn give(&self, name: &str, id: &str) {
        self.0.lock().unwrap().insert(name.into(), id.into());
    }
}

impl KernelIds for Ids {
    fn kernel_id(&self, name: &str) -> Option<String> {
        self.0.lock().unwrap().get(name).cloned()
    }
    fn workload_name(&self, id: &str) -> String {
        let map = self.0.lock().unwrap();
        map.iter()
            .find(|(_, v)| v.as_str() == id)
            .map(|(k, _)| k.clone())
            .unwrap_or_else(|| format!("?.{id}"))
    }
}

/// Kills and deletes the test's containers, unmounts what is under its temp dir
/// (deepest first) and detaches its loop device: on success and on failure.
struct Guard {
    dir: tempfile::TempDir,
    containers: PathBuf,
    /// The runtime's cgroup parent, removed after the containers.
    parent: common::CgroupParents,
    names: Vec<String>,
    dev: Option<PathBuf>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(rt) = runtime_at(&self.containers, &self.parent.0[0]) {
            for n in &self.names {
                let _ = rt.delete(n);
            }
        }
        for mp in zos_testkit::mounts_under(self.dir.path()) {
            if let Err(e) = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("cleanup: umount {}: {e}", mp.display());
            }
        }
        if let Some(dev) = &self.dev {
            let _ = std::process::Command::new("losetup")
                .arg("-d")
                .arg(dev)
                .status();
        }
    }
}

/// libcontainer over the test's runtime dirs and cgroup parent.
fn runtime_at(containers: &Path, parent: &str) -> Result<Libcontainer, zos_container::Error> {
    Libcontainer::new(RuntimeConfig {
        cgroup_parent: parent.to_string(),
        ..RuntimeConfig::under(containers)
    })
}

fn pid_of(guard: &Guard, name: &str) -> Option<i32> {
    let rt = runtime_at(&guard.containers, &guard.parent.0[0]).unwrap();
    rt.state(name)
        .unwrap()
        .filter(|s| s.status == Status::Running)
        .and_then(|s| s.pid)
}

fn plan_of(name: &str, flist: &str, sha256: &str, store: &str) -> WorkloadPlan {
    let workload = serde_json::from_value(serde_json::json!({
        "name": "app",
        "kind": "container",
        "cpu": 1,
        "memory_mib": 64,
        "disk_mib": 64,
        "entrypoint": ["/bin/sh", "-c", "echo started; touch /tmp/ran; exec sleep 1000"],
        "flist": {"url": flist, "sha256": sha256, "stores": [store]},
    }))
    .unwrap();
    WorkloadPlan {
        name: name.into(),
        workload,
        network: None,
        mounts: Vec::new(),
        logs: None,
    }
}

/// Runs the test; false when it was skipped (its SKIP line printed).
fn a_container_is_prepared_run_restarted_and_removed_whole() -> bool {
    let test = "a_container_is_prepared_run_restarted_and_removed_whole";
    if !common::privileged(test)
        || !zos_testkit::Needs::root()
            .bin_from("mkfs.btrfs", "btrfs-progs")
            .dev("/dev/loop-control")
            .check(test)
    {
        return false;
    }
    let dir = zos_testkit::tempdir("ctr-kind");
    let state = dir.path().join("state");
    let tag = zos_testkit::tag(4);
    let name = format!("{tag}.app");
    // A node's own cgroup scope, as zosd gives its runtime one.
    let parent = format!("zos/{tag}");
    let mut guard = Guard {
        containers: state.join("containers"),
        parent: common::CgroupParents(vec![parent.clone()]),
        names: vec![name.clone()],
        dev: None,
        dir,
    };
    let base = guard.dir.path().to_path_buf();

    // A pool of its own.
    let dev = zos_storage::loopdev::ensure(&base.join("zt-pool.img"), 1 << 30).unwrap();
    guard.dev = Some(dev.clone());
    let mut cfg = StorageConfig::new(base.join("pools"));
    cfg.discovery = DiscoveryConfig {
        selection: DiskSelection::Explicit(vec![dev.clone()]),
        label_prefix: format!("{tag}-"),
        ..DiscoveryConfig::default()
    };
    let dev_name = dev.file_name().unwrap().to_string_lossy().into_owned();
    cfg.kind_override.insert(dev_name, PoolKind::Ssd);
    let storage = Arc::new(Storage::open(cfg).unwrap());

    // A busybox flist in a dir:// store under the store root.
    let roots = base.join("roots");
    let rootfs = roots.join("rootfs");
    common::busybox_rootfs(&rootfs);
    let store = format!("dir://{}", roots.join("store").display());
    let fl = roots.join("app.fl");
    let router = Router::parse(std::slice::from_ref(&store)).unwrap();
    zos_flist::pack(&rootfs, &fl, &router, &PackOptions::default()).unwrap();
    let sha = zos_contract::Digest::of(&std::fs::read(&fl).unwrap()).to_hex();
    let flist_url = format!("dir://{}", fl.display());

    let ids = Arc::new(Ids::default());
    let id = tag.replace('-', "");
    ids.give(&name, &id);
    let runtime = ContainerRuntime::with_options(
        &state,
        storage.clone(),
        DirAccess::under([&roots]),
        ids.clone(),
        None,
        &parent,
    )
    .unwrap();
    let plan = plan_of(&name, &flist_url, &sha, &store);
    let placement = Placement {
        kernel_id: id.clone(),
        nic: None::<Nic>,
        userns: None,
    };

    // A flist whose bytes are not the pinned ones: refused for good, with zos-flist's
    // typed error as the source, and nothing runs.
    let wrong = zos_contract::Digest::of(b"another flist").to_hex();
    let e = runtime
        .ensure(&plan_of(&name, &flist_url, &wrong, &store), &placement)
        .unwrap_err();
    assert!(e.is_permanent(), "{e}");
    assert!(
        matches!(
            e.source.downcast_ref::<zos_flist::Error>(),
            Some(zos_flist::Error::Pin { .. })
        ),
        "{e:?}"
    );
    assert_eq!(runtime.state(&name), None);
    assert!(pid_of(&guard, &name).is_none());

    // ensure: the root on its own subvolume, the container running on it.
    let status = runtime.ensure(&plan, &placement).unwrap();
    assert_eq!(status.state, WorkloadState::Running);
    let volume = storage
        .volume(&format!("rootfs-{id}"))
        .unwrap()
        .expect("the root's subvolume");
    let merged = state.join("workloads").join(&name).join("rootfs");
    assert!(zos_container::rootfs::is_mountpoint(&merged));
    let ran = volume.path.join("upper/tmp/ran");
    common::eventually("the container writes /tmp/ran into its upper layer", || {
        ran.exists().then_some(())
    });
    let first = pid_of(&guard, &name).expect("running");
    assert!(runtime.names().contains(&name));
    // Made by the runtime-create child in the runtime's cgroup parent, where the
    // runtime says it is (what zosd's metrics read).
    let cgroup = PathBuf::from(format!("/{parent}/{name}"));
    assert_eq!(runtime.cgroup_path(&name), cgroup);
    assert_eq!(
        common::cgroup_of(first, "pids"),
        cgroup.display().to_string()
    );

    // ensure again: the same container (re-adoption), never a second one.
    runtime.ensure(&plan, &placement).unwrap();
    assert_eq!(pid_of(&guard, &name), Some(first));

    // It dies; restart starts it again on its root, without its flist or store.
    std::fs::remove_file(&fl).unwrap();
    std::fs::remove_dir_all(roots.join("store")).unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(first), Signal::SIGKILL).unwrap();
    common::eventually("the killed container is seen exited", || {
        matches!(runtime.state(&name), Some(WorkloadState::Exited { .. })).then_some(())
    });
    let status = runtime.restart(&plan, &placement).unwrap();
    assert_eq!(status.state, WorkloadState::Running);
    let second = pid_of(&guard, &name).expect("running again");
    assert_ne!(second, first);

    // A root left on the pool without a container (a crash, a reboot) is listed.
    let leftover = format!("{tag}.gone");
    let leftover_id = format!("{id}g");
    ids.give(&leftover, &leftover_id);
    storage
        .volume_ensure(&format!("rootfs-{leftover_id}"), 16 << 20, PoolKind::Ssd)
        .unwrap();
    let names = runtime.names();
    assert!(names.contains(&leftover), "{names:?}");

    // remove: the container, its logs, its mount, its subvolume; nothing of it is left.
    runtime.remove(&name).unwrap();
    runtime.remove(&leftover).unwrap();
    assert_eq!(runtime.state(&name), None);
    assert!(pid_of(&guard, &name).is_none());
    assert!(!zos_container::rootfs::is_mountpoint(&merged));
    assert!(!state.join("workloads").join(&name).exists());
    assert!(!state.join("containers/logs").join(&name).exists());
    assert!(storage.volume(&format!("rootfs-{id}")).unwrap().is_none());
    assert!(storage
        .volume(&format!("rootfs-{leftover_id}"))
        .unwrap()
        .is_none());
    let names = runtime.names();
    assert!(
        !names.contains(&name) && !names.contains(&leftover),
        "{names:?}"
    );
    // Removing what is absent is a no-op.
    runtime.remove(&name).unwrap();
    true
}
