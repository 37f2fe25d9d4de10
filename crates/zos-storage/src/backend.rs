//! The kernel side of storage behind a small trait, so placement and capacity logic can be
//! unit-tested with a fake. [`Kernel`] is the real implementation: btrfs ioctls, mount(2),
//! statvfs(2), sysfs qgroup counters, and `mkfs.btrfs` (run with explicit arguments).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Holder, Result};

/// How long [`Kernel`]'s unmount waits for a busy mount to become free.
pub const UNMOUNT_BUSY_WAIT: Duration = Duration::from_secs(5);

/// Unmount `target`, trying again while it is busy (EBUSY) for up to `wait`; `on_busy`
/// is called at every busy answer. Busy past `wait` is [`Error::Busy`] with the
/// holders found then.
pub(crate) fn unmount_waiting(
    target: &Path,
    wait: Duration,
    mut on_busy: impl FnMut(),
) -> Result<()> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(2);
    loop {
        match umount2(target, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(Errno::EBUSY) if start.elapsed() < wait => {
                on_busy();
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(Errno::EBUSY) => {
                return Err(Error::Busy {
                    path: target.to_path_buf(),
                    waited_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                    holders: holders_of(target),
                })
            }
            Err(e) => return Err(Error::sys("umount", target, e)),
        }
    }
}

/// The processes with a descriptor, working directory or root inside the mount at
/// `mnt` (from `/proc`; processes that exit or cannot be read while looking are skipped).
pub fn holders_of(mnt: &Path) -> Vec<Holder> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    let inside = |p: &Path| p.starts_with(mnt);
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let dir = e.path();
        let mut holds = Vec::new();
        for what in ["cwd", "root"] {
            if let Ok(t) = std::fs::read_link(dir.join(what)) {
                if inside(&t) {
                    holds.push(format!("{what} {}", t.display()));
                }
            }
        }
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            for fd in fds.flatten() {
                if let Ok(t) = std::fs::read_link(fd.path()) {
                    if inside(&t) {
                        holds.push(format!(
                            "fd {} {}",
                            fd.file_name().to_string_lossy(),
                            t.display()
                        ));
                    }
                }
            }
        }
        if holds.is_empty() {
            continue;
        }
        let command = std::fs::read_to_string(dir.join("comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_default();
        for h in holds {
            out.push(Holder {
                pid,
                command: command.clone(),
                holds: h,
            });
        }
    }
    out
}

/// Capacity of a mounted filesystem, from statvfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsUsage {
    /// Bytes of the filesystem.
    pub total: u64,
    /// Bytes in use.
    pub used: u64,
    /// Bytes available to an unprivileged writer.
    pub free: u64,
}

/// A subvolume's quota group counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QgroupUsage {
    /// Bytes referenced by the subvolume (what the limit applies to).
    pub referenced: u64,
    /// Bytes only this subvolume references (freed when it is deleted).
    pub exclusive: u64,
    /// `max_referenced`, `None` when unlimited.
    pub limit: Option<u64>,
}

/// What storage needs from the kernel.
pub trait Backend: Send + Sync + 'static {
    /// Create a btrfs filesystem labelled `label`; `force` overwrites existing signatures.
    fn mkfs(&self, dev: &Path, label: &str, force: bool) -> Result<()>;
    /// Mount the btrfs filesystem on `dev` at `target`.
    fn mount(&self, dev: &Path, target: &Path) -> Result<()>;
    /// Unmount what is mounted at `target`.
    fn unmount(&self, target: &Path) -> Result<()>;
    /// Is a filesystem mounted exactly at `target`?
    fn is_mounted(&self, target: &Path) -> Result<bool>;
    /// Turn on quota groups on the filesystem mounted at `mnt` (idempotent).
    fn enable_quota(&self, mnt: &Path) -> Result<()>;
    /// Capacity of the filesystem mounted at `mnt`.
    fn fs_usage(&self, mnt: &Path) -> Result<FsUsage>;
    /// Create the subvolume `path` (its parent exists).
    fn subvol_create(&self, path: &Path) -> Result<()>;
    /// Delete the subvolume `path` and its contents.
    fn subvol_delete(&self, path: &Path) -> Result<()>;
    /// Set the referenced-bytes limit of the subvolume's own qgroup.
    fn set_limit(&self, subvol: &Path, bytes: u64) -> Result<()>;
    /// Counters of the subvolume's qgroup; `sync` commits the transaction first.
    fn qgroup_usage(&self, subvol: &Path, sync: bool) -> Result<QgroupUsage>;
    /// Mark an (empty) file NOCOW.
    fn set_nocow(&self, file: &File, path: &Path) -> Result<()>;
}

/// The real kernel.
#[derive(Debug, Default, Clone, Copy)]
pub struct Kernel;

mod ioctl {
    pub const BTRFS_IOCTL_MAGIC: u8 = 0x94;

    #[repr(C)]
    pub struct VolArgs {
        pub fd: i64,
        pub name: [u8; 4088],
    }

    #[repr(C)]
    pub struct QuotaCtlArgs {
        pub cmd: u64,
        pub status: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct QgroupLimit {
        pub flags: u64,
        pub max_rfer: u64,
        pub max_excl: u64,
        pub rsv_rfer: u64,
        pub rsv_excl: u64,
    }

    #[repr(C)]
    #[derive(Default)]
    pub struct QgroupLimitArgs {
        pub qgroupid: u64,
        pub lim: QgroupLimit,
    }

    #[repr(C)]
    pub struct InoLookupArgs {
        pub treeid: u64,
        pub objectid: u64,
        pub name: [u8; 4080],
    }

    #[repr(C)]
    pub struct FsInfoArgs {
        pub max_id: u64,
        pub num_devices: u64,
        pub fsid: [u8; 16],
        pub rest: [u8; 1024 - 32],
    }

    pub const QUOTA_CTL_ENABLE: u64 = 1;
    pub const QGROUP_LIMIT_MAX_RFER: u64 = 1;
    pub const FIRST_FREE_OBJECTID: u64 = 256;
    pub const FS_NOCOW_FL: libc::c_int = 0x0080_0000;

    nix::ioctl_write_ptr!(subvol_create, BTRFS_IOCTL_MAGIC, 14, VolArgs);
    nix::ioctl_write_ptr!(snap_destroy, BTRFS_IOCTL_MAGIC, 15, VolArgs);
    nix::ioctl_readwrite!(ino_lookup, BTRFS_IOCTL_MAGIC, 18, InoLookupArgs);
    nix::ioctl_read!(fs_info, BTRFS_IOCTL_MAGIC, 31, FsInfoArgs);
    nix::ioctl_readwrite!(quota_ctl, BTRFS_IOCTL_MAGIC, 40, QuotaCtlArgs);
    nix::ioctl_read!(qgroup_limit, BTRFS_IOCTL_MAGIC, 43, QgroupLimitArgs);
    nix::ioctl_none!(sync, BTRFS_IOCTL_MAGIC, 8);
    // FS_IOC_GETFLAGS/SETFLAGS are declared with `long` but the kernel reads an int.
    nix::ioctl_read_bad!(
        get_flags,
        nix::request_code_read!(b'f', 1, std::mem::size_of::<libc::c_long>()),
        libc::c_int
    );
    nix::ioctl_write_ptr_bad!(
        set_flags,
        nix::request_code_write!(b'f', 2, std::mem::size_of::<libc::c_long>()),
        libc::c_int
    );
}

fn open_dir(path: &Path) -> Result<File> {
    File::open(path).map_err(|e| Error::io("open", path, e))
}

fn split_parent(path: &Path) -> Result<(PathBuf, Vec<u8>)> {
    use std::os::unix::ffi::OsStrExt;
    let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let name = path
        .file_name()
        .ok_or_else(|| {
            Error::io(
                "no file name",
                path,
                std::io::ErrorKind::InvalidInput.into(),
            )
        })?
        .as_bytes()
        .to_vec();
    if name.len() >= 4088 {
        return Err(Error::io(
            "name too long",
            path,
            std::io::ErrorKind::InvalidInput.into(),
        ));
    }
    Ok((parent, name))
}

fn vol_args(name: &[u8]) -> ioctl::VolArgs {
    let mut a = ioctl::VolArgs {
        fd: 0,
        name: [0; 4088],
    };
    a.name[..name.len()].copy_from_slice(name);
    a
}

impl Kernel {
    /// Subvolume (tree) id of the subvolume containing `path`.
    pub fn subvol_id(path: &Path) -> Result<u64> {
        let f = open_dir(path)?;
        let mut a = ioctl::InoLookupArgs {
            treeid: 0,
            objectid: ioctl::FIRST_FREE_OBJECTID,
            name: [0; 4080],
        };
        // SAFETY: `f` is an open fd and `a` is a properly sized, initialised
        // btrfs_ioctl_ino_lookup_args that outlives the call.
        unsafe { ioctl::ino_lookup(f.as_raw_fd(), &mut a) }
            .map_err(|e| Error::sys("BTRFS_IOC_INO_LOOKUP", path, e))?;
        Ok(a.treeid)
    }

    /// The btrfs fsid of the filesystem mounted at `mnt` (names its /sys/fs/btrfs dir).
    pub fn fsid(mnt: &Path) -> Result<String> {
        let f = open_dir(mnt)?;
        let mut a = ioctl::FsInfoArgs {
            max_id: 0,
            num_devices: 0,
            fsid: [0; 16],
            rest: [0; 1024 - 32],
        };
        // SAFETY: valid fd; `a` is a 1024-byte btrfs_ioctl_fs_info_args the kernel fills.
        unsafe { ioctl::fs_info(f.as_raw_fd(), &mut a) }
            .map_err(|e| Error::sys("BTRFS_IOC_FS_INFO", mnt, e))?;
        let h = hex::encode(a.fsid);
        Ok(format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        ))
    }

    fn qgroup_dir(subvol: &Path) -> Result<PathBuf> {
        let id = Self::subvol_id(subvol)?;
        let fsid = Self::fsid(subvol)?;
        Ok(PathBuf::from(format!(
            "/sys/fs/btrfs/{fsid}/qgroups/0_{id}"
        )))
    }
}

fn read_u64(path: &Path) -> Result<u64> {
    let s = std::fs::read_to_string(path).map_err(|e| Error::io("read", path, e))?;
    s.trim().parse().map_err(|_| Error::Corrupt {
        what: path.display().to_string(),
        why: format!("not a number: {s:?}"),
    })
}

impl Backend for Kernel {
    fn mkfs(&self, dev: &Path, label: &str, force: bool) -> Result<()> {
        let mut cmd = Command::new("mkfs.btrfs");
        cmd.arg("-q").arg("-L").arg(label);
        if force {
            cmd.arg("-f");
        }
        cmd.arg(dev);
        run(cmd, "mkfs.btrfs")
    }

    fn mount(&self, dev: &Path, target: &Path) -> Result<()> {
        mount(
            Some(dev),
            target,
            Some("btrfs"),
            MsFlags::MS_NOATIME | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            Some("space_cache=v2"),
        )
        .map_err(|e| Error::sys("mount", target, e))
    }

    /// A busy mount is waited for (bounded, [`UNMOUNT_BUSY_WAIT`]): a process that
    /// forked while one of this process's threads had a file of the pool open holds that
    /// descriptor until it execs or exits, which is brief. Still busy at the end is
    /// [`Error::Busy`] naming who holds it.
    fn unmount(&self, target: &Path) -> Result<()> {
        let mut first = true;
        unmount_waiting(target, UNMOUNT_BUSY_WAIT, || {
            if std::mem::take(&mut first) {
                tracing::debug!(mountpoint = %target.display(), "busy; unmounting again until free");
            }
        })
    }

    fn is_mounted(&self, target: &Path) -> Result<bool> {
        let text = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("read", "/proc/self/mountinfo", e))?;
        let want = target.to_string_lossy();
        Ok(text
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|mp| unescape_mount(mp) == want))
    }

    fn enable_quota(&self, mnt: &Path) -> Result<()> {
        let f = open_dir(mnt)?;
        let mut a = ioctl::QuotaCtlArgs {
            cmd: ioctl::QUOTA_CTL_ENABLE,
            status: 0,
        };
        // SAFETY: valid fd on the filesystem root; `a` is a btrfs_ioctl_quota_ctl_args.
        unsafe { ioctl::quota_ctl(f.as_raw_fd(), &mut a) }
            .map_err(|e| Error::sys("BTRFS_IOC_QUOTA_CTL(enable)", mnt, e))?;
        Ok(())
    }

    fn fs_usage(&self, mnt: &Path) -> Result<FsUsage> {
        let s = nix::sys::statvfs::statvfs(mnt).map_err(|e| Error::sys("statvfs", mnt, e))?;
        let bs = s.fragment_size();
        let total = s.blocks() * bs;
        let free = s.blocks_available() * bs;
        Ok(FsUsage {
            total,
            used: total.saturating_sub(s.blocks_free() * bs),
            free,
        })
    }

    fn subvol_create(&self, path: &Path) -> Result<()> {
        let (parent, name) = split_parent(path)?;
        let dir = open_dir(&parent)?;
        let a = vol_args(&name);
        // SAFETY: `dir` is an open directory fd; `a` is a NUL-terminated vol_args.
        unsafe { ioctl::subvol_create(dir.as_raw_fd(), &a) }
            .map_err(|e| Error::sys("BTRFS_IOC_SUBVOL_CREATE", path, e))?;
        Ok(())
    }

    fn subvol_delete(&self, path: &Path) -> Result<()> {
        let (parent, name) = split_parent(path)?;
        let dir = open_dir(&parent)?;
        let a = vol_args(&name);
        // SAFETY: `dir` is an open directory fd; `a` is a NUL-terminated vol_args.
        unsafe { ioctl::snap_destroy(dir.as_raw_fd(), &a) }
            .map_err(|e| Error::sys("BTRFS_IOC_SNAP_DESTROY", path, e))?;
        Ok(())
    }

    fn set_limit(&self, subvol: &Path, bytes: u64) -> Result<()> {
        let f = open_dir(subvol)?;
        let mut a = ioctl::QgroupLimitArgs {
            qgroupid: 0, // 0: the qgroup of the subvolume the fd is in
            lim: ioctl::QgroupLimit {
                flags: ioctl::QGROUP_LIMIT_MAX_RFER,
                max_rfer: bytes,
                ..Default::default()
            },
        };
        // SAFETY: valid fd inside the subvolume; `a` is a btrfs_ioctl_qgroup_limit_args.
        unsafe { ioctl::qgroup_limit(f.as_raw_fd(), &mut a) }
            .map_err(|e| Error::sys("BTRFS_IOC_QGROUP_LIMIT", subvol, e))?;
        Ok(())
    }

    fn qgroup_usage(&self, subvol: &Path, sync: bool) -> Result<QgroupUsage> {
        if sync {
            let f = open_dir(subvol)?;
            // SAFETY: valid fd on a btrfs filesystem; BTRFS_IOC_SYNC takes no argument.
            unsafe { ioctl::sync(f.as_raw_fd()) }
                .map_err(|e| Error::sys("BTRFS_IOC_SYNC", subvol, e))?;
        }
        let dir = Self::qgroup_dir(subvol)?;
        let flags = read_u64(&dir.join("limit_flags"))?;
        Ok(QgroupUsage {
            referenced: read_u64(&dir.join("referenced"))?,
            exclusive: read_u64(&dir.join("exclusive"))?,
            limit: if flags & ioctl::QGROUP_LIMIT_MAX_RFER != 0 {
                Some(read_u64(&dir.join("max_referenced"))?)
            } else {
                None
            },
        })
    }

    fn set_nocow(&self, file: &File, path: &Path) -> Result<()> {
        let mut flags: libc::c_int = 0;
        // SAFETY: valid fd; `flags` is a live c_int the kernel writes.
        unsafe { ioctl::get_flags(file.as_raw_fd(), &mut flags) }
            .map_err(|e| Error::sys("FS_IOC_GETFLAGS", path, e))?;
        flags |= ioctl::FS_NOCOW_FL;
        // SAFETY: valid fd; `flags` is a live c_int the kernel reads.
        unsafe { ioctl::set_flags(file.as_raw_fd(), &flags) }
            .map_err(|e| Error::sys("FS_IOC_SETFLAGS(NOCOW)", path, e))?;
        Ok(())
    }
}

/// Read a file's inode flags (for checks such as NOCOW).
pub fn file_flags(path: &Path) -> Result<i32> {
    let f = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut flags: libc::c_int = 0;
    // SAFETY: valid fd; `flags` is a live c_int the kernel writes.
    unsafe { ioctl::get_flags(f.as_raw_fd(), &mut flags) }
        .map_err(|e| Error::sys("FS_IOC_GETFLAGS", path, e))?;
    Ok(flags)
}

/// The NOCOW inode flag (`chattr +C`).
pub const FS_NOCOW_FL: i32 = ioctl::FS_NOCOW_FL;

fn unescape_mount(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn run(mut cmd: Command, program: &str) -> Result<()> {
    tracing::debug!(program, args = ?cmd.get_args().collect::<Vec<_>>(), "running");
    let out = cmd.output().map_err(|e| Error::io("spawn", program, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            program: program.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    //! Unmounting a busy mount, against real tmpfs mounts (root).

    use std::io::Write;
    use std::process::{Child, Stdio};
    use std::sync::mpsc;

    use super::*;

    /// A tmpfs at a `zt-` temp dir, unmounted (whatever holds it) on drop.
    struct TmpMount {
        dir: tempfile::TempDir,
    }

    impl TmpMount {
        fn new() -> TmpMount {
            let dir = zos_testkit::tempdir("unmount");
            mount(
                Some("zt-unmount"),
                dir.path(),
                Some("tmpfs"),
                MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
                Some("size=1m"),
            )
            .expect("mounting a tmpfs");
            TmpMount { dir }
        }
        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for TmpMount {
        fn drop(&mut self) {
            if Kernel.is_mounted(self.dir.path()).unwrap_or(false) {
                let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
            }
        }
    }

    /// A child whose working directory is inside the mount; it exits when its stdin
    /// closes. Killed on drop.
    struct Holder(Child);

    impl Drop for Holder {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn root(test: &str) -> bool {
        zos_testkit::Needs::root().check(test)
    }

    /// A node closing its pools while a child still holds one (a process that forked
    /// while a file of the pool was open, or one exiting): unmounting waits until the
    /// child is gone, then succeeds.
    #[test]
    fn a_busy_mount_is_unmounted_once_its_holder_exits() {
        if !root("a_busy_mount_is_unmounted_once_its_holder_exits") {
            return;
        }
        let m = TmpMount::new();
        let mut holder = Holder(
            Command::new("cat")
                .current_dir(m.path())
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("cat"),
        );
        let (busy_tx, busy_rx) = mpsc::channel();
        let target = m.path().to_path_buf();
        let unmounting = std::thread::spawn(move || {
            unmount_waiting(&target, Duration::from_secs(120), || {
                let _ = busy_tx.send(());
            })
        });
        // The positive event: unmounting found the mount busy.
        busy_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("unmounting never reported the mount busy");
        assert!(
            Kernel.is_mounted(m.path()).unwrap(),
            "still mounted while held"
        );
        // The holder exits; unmounting goes through.
        let mut stdin = holder.0.stdin.take().unwrap();
        stdin.write_all(b"bye\n").unwrap();
        drop(stdin);
        holder.0.wait().unwrap();
        unmounting.join().unwrap().expect("unmounted once free");
        assert!(!Kernel.is_mounted(m.path()).unwrap());
    }

    /// Held past the wait: a typed error naming the holder (this process's descriptor
    /// on a file inside), and the mount stays as it was.
    #[test]
    fn a_mount_held_past_the_wait_is_busy_naming_its_holder() {
        if !root("a_mount_held_past_the_wait_is_busy_naming_its_holder") {
            return;
        }
        let m = TmpMount::new();
        let file = m.path().join("held");
        let open = File::create(&file).unwrap();
        let mut busy = 0;
        match unmount_waiting(m.path(), Duration::from_millis(50), || busy += 1) {
            Err(Error::Busy {
                path,
                waited_ms,
                holders,
            }) => {
                assert_eq!(path, m.path());
                assert!(waited_ms >= 50, "{waited_ms}");
                let me = i32::try_from(std::process::id()).unwrap();
                let fd = format!("fd {} {}", open.as_raw_fd(), file.display());
                assert!(
                    holders.iter().any(|h| h.pid == me && h.holds == fd),
                    "{fd} of pid {me} not among {holders:?}"
                );
            }
            r => panic!("a held mount was not refused busy: {r:?}"),
        }
        assert!(busy >= 1);
        assert!(Kernel.is_mounted(m.path()).unwrap(), "nothing unmounted");
        assert_eq!(std::fs::read(&file).unwrap(), b"");
        drop(open);
        Kernel
            .unmount(m.path())
            .expect("unmounted once the file is closed");
    }
}
