//! Files a VM gets from a tree someone else filled (a VM flist, a tenant's volume),
//! opened beneath that tree without following any link.
//!
//! A path check (`is_file()`, `exists()`) follows symbolic links: a flist whose
//! `/boot/vmlinux` links to a host file, or a volume in which a container planted
//! `vm-disk.raw -> /dev/loop0`, would hand QEMU (root) that host file. Here every file
//! is opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` relative to its tree,
//! non-blocking (a FIFO cannot stall the open), then must be a regular file by
//! `fstat`; QEMU gets the descriptor (or a copy made from it), never the path.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A file inside a directory tree: `file` is relative to `dir` and is opened beneath
/// it; `dir` itself is the node's own path (a flist's unpacked tree, a volume's
/// subvolume, a pool's vdisk directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeFile {
    /// The tree's directory on the node (absolute; trusted).
    pub dir: PathBuf,
    /// The file inside it, relative, plain names only (untrusted: from a flist or a
    /// tenant's volume).
    pub file: PathBuf,
}

impl TreeFile {
    /// `file` beneath `dir`; [`TreeFile::check`] says whether the shape is acceptable.
    pub fn new(dir: impl Into<PathBuf>, file: impl Into<PathBuf>) -> TreeFile {
        TreeFile {
            dir: dir.into(),
            file: file.into(),
        }
    }

    /// The file of an absolute `path` beneath its parent directory.
    pub fn of(path: &Path) -> Option<TreeFile> {
        Some(TreeFile::new(path.parent()?, path.file_name()?))
    }

    /// Where it is on the host (for messages only: never opened by this path).
    pub fn display_path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    /// `dir` absolute; `file` relative, of plain names only (no `..`, no `.`).
    pub fn check(&self) -> std::result::Result<(), String> {
        if !self.dir.is_absolute() {
            return Err(format!("{}: not an absolute directory", self.dir.display()));
        }
        let plain = self.file.components().count() > 0
            && self
                .file
                .components()
                .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(format!(
                "{}: not a plain relative path (no '/', '.' or '..' at its start)",
                self.file.display()
            ));
        }
        Ok(())
    }
}

/// How a [`TreeFile`] is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only.
    Read,
    /// Read and write; the file must have a single link (no hard link of it elsewhere
    /// is written through the VM).
    ReadWrite,
}

fn refused(f: &TreeFile, reason: impl Into<String>) -> Error {
    Error::Refused {
        path: f.display_path(),
        reason: reason.into(),
    }
}

fn open_dir(dir: &Path) -> Result<OwnedFd> {
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("opening", dir)(e.into()))?;
    // SAFETY: `open` just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2` beneath `dir` with no symlink (nor magic link) anywhere in `file`.
fn openat2_beneath(dir: &OwnedFd, f: &TreeFile, flags: OFlag, mode: Mode) -> Result<File> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOCTTY)
        .mode(mode)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match nix::fcntl::openat2(dir.as_raw_fd(), f.file.as_path(), how) {
        // SAFETY: `openat2` just returned this descriptor; nothing else owns it.
        Ok(fd) => Ok(unsafe { File::from_raw_fd(fd) }),
        Err(Errno::ELOOP) => Err(refused(
            f,
            "a symbolic link on the way (only regular files inside the tree are used)",
        )),
        Err(Errno::EXDEV) => Err(refused(f, "it leads out of its tree")),
        Err(Errno::ENOSYS) => Err(Error::Io {
            what: "opening (this kernel lacks openat2, which VM files need)",
            path: f.display_path(),
            source: Errno::ENOSYS.into(),
        }),
        Err(e) => Err(Error::io("opening", f.display_path())(e.into())),
    }
}

/// Opens `f` beneath its tree (see the module docs): a regular file, else
/// [`Error::Refused`]. A missing file is [`Error::Io`] with `NotFound`
/// ([`Error::is_not_found`]).
pub fn open(f: &TreeFile, access: Access) -> Result<File> {
    f.check().map_err(|reason| refused(f, reason))?;
    let dir = open_dir(&f.dir)?;
    let rw = match access {
        Access::Read => OFlag::O_RDONLY,
        Access::ReadWrite => OFlag::O_RDWR,
    };
    let file = openat2_beneath(&dir, f, rw | OFlag::O_NONBLOCK, Mode::empty())?;
    regular(f, file, access)
}

/// Opens `f` for reading and writing, creating it (mode 0600, `O_EXCL`: never through
/// a link planted under its name) when it does not exist. Returns the file and whether
/// it was created.
pub(crate) fn open_or_create(f: &TreeFile) -> Result<(File, bool)> {
    match open(f, Access::ReadWrite) {
        Err(e) if e.is_not_found() => {}
        other => return other.map(|file| (file, false)),
    }
    let dir = open_dir(&f.dir)?;
    let file = openat2_beneath(
        &dir,
        f,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(0o600),
    )?;
    Ok((regular(f, file, Access::ReadWrite)?, true))
}

fn regular(f: &TreeFile, file: File, access: Access) -> Result<File> {
    let meta = file
        .metadata()
        .map_err(Error::io("inspecting", f.display_path()))?;
    if !meta.file_type().is_file() {
        return Err(refused(f, "not a regular file"));
    }
    if access == Access::ReadWrite && meta.nlink() != 1 {
        return Err(refused(
            f,
            format!("{} hard links: a disk must have exactly one", meta.nlink()),
        ));
    }
    // Blocking again: O_NONBLOCK was only there so that opening a FIFO could not hang.
    let fl = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| Error::io("inspecting", f.display_path())(e.into()))?;
    let fl = OFlag::from_bits_truncate(fl) & !OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(fl))
        .map_err(|e| Error::io("inspecting", f.display_path())(e.into()))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_fifos_and_escapes_are_refused_regular_files_open() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("zt-secret");
        std::fs::write(&secret, b"host secret").unwrap();
        std::fs::create_dir(dir.path().join("boot")).unwrap();
        std::fs::write(dir.path().join("boot/ok"), b"kernel").unwrap();
        std::os::unix::fs::symlink(&secret, dir.path().join("boot/abs")).unwrap();
        std::os::unix::fs::symlink("ok", dir.path().join("boot/rel")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("linked")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();

        let t = |f: &str| TreeFile::new(dir.path(), f);
        assert!(open(&t("boot/ok"), Access::Read).is_ok());
        for (f, want) in [
            ("boot/abs", "symbolic link"),
            ("boot/rel", "symbolic link"),
            ("linked/zt-secret", "symbolic link"),
            ("fifo", "not a regular file"),
            ("sub", "not a regular file"),
            ("../x", "plain relative"),
            ("/etc/passwd", "plain relative"),
        ] {
            let e = open(&t(f), Access::Read).unwrap_err();
            assert!(e.is_permanent(), "{f}: {e}");
            assert!(e.to_string().contains(want), "{f}: {e}");
        }
        assert!(open(&t("missing"), Access::Read)
            .unwrap_err()
            .is_not_found());

        // Created when absent, never through a planted link; hard links refused.
        let (_, created) = open_or_create(&t("disk.raw")).unwrap();
        assert!(created);
        let (_, created) = open_or_create(&t("disk.raw")).unwrap();
        assert!(!created);
        std::os::unix::fs::symlink(&secret, dir.path().join("planted.raw")).unwrap();
        assert!(open_or_create(&t("planted.raw"))
            .unwrap_err()
            .to_string()
            .contains("symbolic link"));
        std::fs::hard_link(dir.path().join("disk.raw"), dir.path().join("twin.raw")).unwrap();
        assert!(open(&t("twin.raw"), Access::ReadWrite)
            .unwrap_err()
            .to_string()
            .contains("hard links"));
        assert_eq!(std::fs::read(&secret).unwrap(), b"host secret");
    }
}
