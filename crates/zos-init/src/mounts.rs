//! The pseudo filesystems a node needs, mounted once at boot.
//!
//! Idempotent: a target that is already a mount point (per `/proc/self/mountinfo`) is
//! left alone, so running it twice, or on a machine that mounted some of them already,
//! changes nothing. `/proc` comes first because the check itself reads it.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;
use thiserror::Error;

use crate::sys::{MountSpec, Sys};

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In mount order: each target lives on a filesystem mounted before it.
pub const BOOT_MOUNTS: [MountSpec; 7] = [
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        // No tty group in the image: the pty owner alone may write.
        data: Some("mode=0620,ptmxmode=0666"),
    },
    MountSpec {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=1777"),
    },
    MountSpec {
        source: "run",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        // Delegation boundaries for cgroup namespaces (containers).
        data: Some("nsdelegate"),
    },
];

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Why a boot mount failed (the mounts after it were not tried).
#[derive(Debug, Error)]
pub enum MountError {
    /// The mount point could not be created.
    #[error("creating mount point {target}: {source}")]
    MountPoint {
        /// The mount point.
        target: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The kernel refused the mount.
    #[error("mounting {fstype} on {target}: {errno}")]
    Mount {
        /// The mount point.
        target: &'static str,
        /// The filesystem type.
        fstype: &'static str,
        /// What `mount(2)` returned.
        errno: Errno,
    },
}

/// What [`mount_all`] did for one boot mount (by its mount point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOutcome {
    /// Mounted now.
    Mounted(&'static str),
    /// Something was mounted there already (the kernel's devtmpfs, a second run): left
    /// as it is.
    AlreadyMounted(&'static str),
}

/// Mounts [`BOOT_MOUNTS`]. Stops at the first failure: what follows depends on it
/// (devpts needs /dev, cgroup2 needs /sys). PID 1 logs the error and boots on.
pub fn mount_all(sys: &dyn Sys) -> Result<Vec<MountOutcome>, MountError> {
    let mut outcomes = Vec::new();
    for spec in &BOOT_MOUNTS {
        // Re-read each time: the first mount is /proc itself.
        let mounted = sys
            .read_file(Path::new("/proc/self/mountinfo"))
            .map(|text| mount_points(&text))
            .unwrap_or_default();
        if mounted.iter().any(|m| m == spec.target) {
            tracing::debug!(target = spec.target, "already mounted");
            outcomes.push(MountOutcome::AlreadyMounted(spec.target));
            continue;
        }
        sys.mkdir_all(Path::new(spec.target))
            .map_err(|source| MountError::MountPoint {
                target: spec.target,
                source,
            })?;
        sys.mount(spec).map_err(|errno| MountError::Mount {
            target: spec.target,
            fstype: spec.fstype,
            errno,
        })?;
        tracing::info!(target = spec.target, fstype = spec.fstype, "mounted");
        outcomes.push(MountOutcome::Mounted(spec.target));
    }
    Ok(outcomes)
}

/// `zos.share=<tag>:<path>`: the hypervisor's virtio-9p shares (9pnet_virtio must be
/// loaded), each at its path. A share that fails is logged; the agent then says what it
/// cannot reach.
pub fn mount_shares(shares: &[crate::Share]) {
    for share in shares {
        let mounted = std::fs::create_dir_all(&share.path)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                nix::mount::mount(
                    Some(share.tag.as_str()),
                    share.path.as_str(),
                    Some("9p"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    // No page cache: the host writes the same files (a notary's records).
                    Some("trans=virtio,version=9p2000.L,msize=262144,cache=none"),
                )
                .map_err(|e| e.to_string())
            });
        match mounted {
            Ok(()) => tracing::info!(tag = %share.tag, path = %share.path, "share mounted"),
            Err(error) => {
                tracing::error!(tag = %share.tag, path = %share.path, %error, "mounting a share")
            }
        }
    }
}

/// Enables every controller the cgroup2 root offers for its children, one at a time so
/// one the kernel refuses does not keep the others off. Returns the enabled ones and
/// the refused ones with their error.
pub fn enable_cgroup_controllers(sys: &dyn Sys) -> (Vec<String>, Vec<(String, std::io::Error)>) {
    let root = Path::new(CGROUP_ROOT);
    let available = match sys.read_file(&root.join("cgroup.controllers")) {
        Ok(t) => t,
        Err(e) => return (vec![], vec![("cgroup.controllers".into(), e)]),
    };
    let (mut ok, mut refused) = (Vec::new(), Vec::new());
    for c in available.split_whitespace() {
        match sys.write_file(&root.join("cgroup.subtree_control"), &format!("+{c}")) {
            Ok(()) => ok.push(c.to_string()),
            Err(e) => refused.push((c.to_string(), e)),
        }
    }
    tracing::info!(enabled = ?ok, refused = refused.len(), "cgroup2 controllers");
    (ok, refused)
}

/// The mount points of a `/proc/self/mountinfo` text, in its order (parents before
/// the filesystems mounted on them).
pub(crate) fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_octal)
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeSys;

    const HOST_MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - rootfs rootfs rw
23 22 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:2 - proc proc rw
24 22 0:23 / /sys rw,nosuid,nodev,noexec,relatime shared:3 - sysfs sysfs rw
30 22 0:30 / /mnt/my\\040disk rw - ext4 /dev/vdb rw
";

    #[test]
    fn mount_points_in_order_with_escapes() {
        assert_eq!(
            mount_points(HOST_MOUNTINFO),
            vec!["/", "/proc", "/sys", "/mnt/my disk"]
        );
        assert_eq!(unescape_octal(r"a\134b\011"), "a\\b\t");
        assert_eq!(unescape_octal(r"tail\04"), r"tail\04");
    }

    #[test]
    fn a_fresh_boot_mounts_everything_in_order() {
        let sys = FakeSys::default();
        let out = mount_all(&sys).unwrap();
        assert!(out.iter().all(|o| matches!(o, MountOutcome::Mounted(_))));
        let mounted: Vec<String> = sys.calls_with("mount ");
        assert_eq!(
            mounted,
            BOOT_MOUNTS
                .iter()
                .map(|m| format!("mount {} {}", m.fstype, m.target))
                .collect::<Vec<_>>()
        );
        // Mount points are created first: devtmpfs comes up empty.
        assert!(sys.calls().contains(&"mkdir /dev/pts".to_string()));
    }

    #[test]
    fn what_is_mounted_is_skipped() {
        let sys = FakeSys::default();
        sys.set_file("/proc/self/mountinfo", HOST_MOUNTINFO);
        let out = mount_all(&sys).unwrap();
        assert_eq!(out[0], MountOutcome::AlreadyMounted("/proc"));
        assert_eq!(out[1], MountOutcome::AlreadyMounted("/sys"));
        assert_eq!(out[2], MountOutcome::Mounted("/dev"));
        assert!(!sys.calls().iter().any(|c| c.ends_with(" /proc")));
    }

    #[test]
    fn a_failed_mount_stops_with_a_typed_error() {
        let sys = FakeSys::default();
        sys.fail_mount("/dev", Errno::ENODEV);
        let err = mount_all(&sys).unwrap_err();
        assert!(
            matches!(
                err,
                MountError::Mount {
                    target: "/dev",
                    errno: Errno::ENODEV,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!sys.calls().iter().any(|c| c.contains("/dev/pts")));
    }

    #[test]
    fn controllers_are_enabled_one_by_one() {
        let sys = FakeSys::default();
        sys.set_file(
            "/sys/fs/cgroup/cgroup.controllers",
            "cpuset cpu io memory pids\n",
        );
        sys.fail_write("+io");
        let (ok, refused) = enable_cgroup_controllers(&sys);
        assert_eq!(ok, vec!["cpuset", "cpu", "memory", "pids"]);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].0, "io");
    }
}
