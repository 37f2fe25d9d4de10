//! The kernel side of storage behind a small trait, so placement and capacity logic can be
//! unit-tested with a fake. [`Kernel`] is the real implementation: btrfs ioctls, mount(2),
//! statvfs(2), sysfs qgroup counters, and `mkfs.btrfs` (run with explicit arguments).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};

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

    fn unmount(&self, target: &Path) -> Result<()> {
        umount2(target, MntFlags::empty()).map_err(|e| Error::sys("umount", target, e))
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
