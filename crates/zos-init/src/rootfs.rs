//! From the kernel's initramfs root to a tmpfs root, before anything else.
//!
//! The kernel unpacks the initramfs into `rootfs`, the root of the whole mount tree. It
//! can never be unmounted or moved, so `pivot_root(2)` refuses to leave it (EINVAL):
//! every container runtime that jails a container with `pivot_root`, libcontainer
//! included, fails on a node running straight from its initramfs. The usual answer
//! (`switch_root`, LinuxKit, Talos) is to move the files onto a real mount and make
//! that the root: a tmpfs is mounted, the image's files are moved onto it (copied,
//! then deleted from rootfs so the memory is not held twice), and PID 1 `chroot`s into
//! it after moving the mount over `/`. Containers then `pivot_root` as anywhere else.
//!
//! [`move_tree`] is plain file work, tested on temp directories; [`switch_to_tmpfs`]
//! is the privileged part, run by PID 1 only when `/` is the kernel's rootfs.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use thiserror::Error;

/// Where the new root is assembled; hidden, and gone from view once it is `/`.
const NEW_ROOT: &str = "/.zos-root";

/// Why the switch to the tmpfs root failed (PID 1 logs it and boots on; containers
/// cannot start).
#[derive(Debug, Error)]
pub enum RootfsError {
    /// A file operation on the image's or the new root's files failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation, e.g. `creating`, `removing`, `chmod`.
        what: &'static str,
        /// The file.
        path: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// A system call failed (`mount`, `mknod`, `chdir`, ...).
    #[error("{what}: {errno}")]
    Sys {
        /// The call, e.g. `mounting tmpfs`, `chroot`.
        what: &'static str,
        /// What it returned.
        errno: nix::errno::Errno,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> RootfsError {
    let path = path.display().to_string();
    move |source| RootfsError::Io { what, path, source }
}

/// Whether `/` looks like the kernel's rootfs: a ramfs or tmpfs. Meant for PID 1's
/// first instruction, before anything is mounted: after [`switch_to_tmpfs`] the root
/// is a tmpfs too, so ask once per boot.
pub fn root_is_initramfs() -> bool {
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    match nix::sys::statfs::statfs("/") {
        Ok(s) => {
            let t = s.filesystem_type().0;
            t == RAMFS_MAGIC || t == TMPFS_MAGIC
        }
        Err(_) => false,
    }
}

/// Moves every entry of `from` into `to` (which exists), keeping types, modes and
/// owners: directories are recreated, regular files copied then removed from `from`,
/// symlinks and device nodes recreated. Entries named in `skip` (relative to `from`'s
/// top) are left alone, as is anything on another device than `from` (a mount).
/// Returns the number of bytes copied.
pub fn move_tree(from: &Path, to: &Path, skip: &[&str]) -> Result<u64, RootfsError> {
    let dev = fs::symlink_metadata(from)
        .map_err(io_err("stat", from))?
        .dev();
    move_dir(from, to, dev, skip)
}

fn move_dir(from: &Path, to: &Path, dev: u64, skip: &[&str]) -> Result<u64, RootfsError> {
    let mut bytes = 0;
    for entry in fs::read_dir(from).map_err(io_err("reading", from))? {
        let entry = entry.map_err(io_err("reading", from))?;
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let src = entry.path();
        let dst = to.join(&name);
        let meta = fs::symlink_metadata(&src).map_err(io_err("stat", &src))?;
        if meta.dev() != dev {
            continue;
        }
        let ft = meta.file_type();
        if ft.is_dir() {
            fs::DirBuilder::new()
                .mode(meta.mode() & 0o7777)
                .create(&dst)
                .or_else(|e| match e.kind() {
                    io::ErrorKind::AlreadyExists => Ok(()),
                    _ => Err(e),
                })
                .map_err(io_err("creating", &dst))?;
            bytes += move_dir(&src, &dst, dev, &[])?;
        } else if ft.is_file() {
            bytes += fs::copy(&src, &dst).map_err(io_err("copying", &src))?;
            // Free the initramfs copy now: the image is not held twice in memory.
            fs::remove_file(&src).map_err(io_err("removing", &src))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&src).map_err(io_err("reading link", &src))?;
            std::os::unix::fs::symlink(&target, &dst).map_err(io_err("creating", &dst))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let kind = if ft.is_char_device() {
                nix::sys::stat::SFlag::S_IFCHR
            } else if ft.is_block_device() {
                nix::sys::stat::SFlag::S_IFBLK
            } else {
                nix::sys::stat::SFlag::S_IFIFO
            };
            let perm = nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777);
            nix::sys::stat::mknod(&dst, kind, perm, meta.rdev()).map_err(|errno| {
                RootfsError::Sys {
                    what: "mknod",
                    errno,
                }
            })?;
        } else {
            continue; // sockets: nothing to keep
        }
        if !ft.is_symlink() {
            fs::set_permissions(&dst, fs::Permissions::from_mode(meta.mode() & 0o7777))
                .map_err(io_err("chmod", &dst))?;
        }
        // Ownership as in the image (root here; an unprivileged test keeps its own).
        let _ = std::os::unix::fs::lchown(&dst, Some(meta.uid()), Some(meta.gid()));
    }
    Ok(bytes)
}

/// Makes a tmpfs holding the image's files the root of the mount tree (see the module
/// documentation). Call as PID 1 before mounting anything: the image's files are
/// moved, so nothing may be using them but this process (whose own executable stays
/// mapped). Returns the bytes moved.
pub fn switch_to_tmpfs() -> Result<u64, RootfsError> {
    let new = Path::new(NEW_ROOT);
    fs::DirBuilder::new()
        .mode(0o755)
        .create(new)
        .map_err(io_err("creating", new))?;
    let sys = |what| move |errno| RootfsError::Sys { what, errno };
    // tmpfs's default size is half the memory, as for rootfs.
    mount(
        Some("rootfs"),
        new,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(sys("mounting tmpfs"))?;
    let bytes = move_tree(Path::new("/"), new, &[&NEW_ROOT[1..]])?;
    nix::unistd::chdir(new).map_err(sys("chdir"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sys("moving the new root over /"))?;
    nix::unistd::chroot(".").map_err(sys("chroot"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_moved_with_its_types_and_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let (from, to) = (tmp.path().join("from"), tmp.path().join("to"));
        fs::create_dir_all(from.join("usr/sbin")).unwrap();
        fs::create_dir_all(from.join(".zos-root")).unwrap();
        fs::create_dir(&to).unwrap();
        fs::write(from.join("init"), b"\x7fELF...").unwrap();
        fs::set_permissions(from.join("init"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(from.join("usr/sbin/nft"), vec![7u8; 100_000]).unwrap();
        fs::set_permissions(from.join("usr/sbin"), fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink("usr/sbin", from.join("sbin")).unwrap();
        nix::unistd::mkfifo(
            &from.join("fifo"),
            nix::sys::stat::Mode::from_bits(0o600).unwrap(),
        )
        .unwrap();

        let bytes = move_tree(&from, &to, &[".zos-root"]).unwrap();
        assert_eq!(bytes, 100_000 + 7);
        assert_eq!(fs::read(to.join("init")).unwrap(), b"\x7fELF...");
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&to.join("init")), 0o755);
        assert_eq!(mode(&to.join("usr/sbin")), 0o700);
        assert_eq!(fs::read(to.join("usr/sbin/nft")).unwrap().len(), 100_000);
        assert_eq!(
            fs::read_link(to.join("sbin")).unwrap(),
            Path::new("usr/sbin")
        );
        assert!(fs::symlink_metadata(to.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert!(!to.join(".zos-root").exists(), "the skipped entry");
        // Files left the old tree (memory is not held twice); directories stay.
        assert!(!from.join("init").exists());
        assert!(!from.join("usr/sbin/nft").exists());
        assert!(from.join(".zos-root").exists());
    }

    #[test]
    fn this_root_is_not_an_initramfs() {
        // The test runs on the machine's real root (not ramfs/tmpfs), or in a container
        // whose root is overlayfs: either way, nothing to switch.
        assert!(!root_is_initramfs());
    }
}
