//! Loop devices over image files, for nodes (and tests, and the demo) whose "disks" are
//! files: agent mode on a developer machine, or a node with no spare disk.
//!
//! Attaching is idempotent: a file already backing a loop device is found through
//! sysfs (`/sys/block/loopN/loop/backing_file`) and that device is returned, so a
//! restarted zosd does not attach the same file twice (two btrfs mounts of one
//! filesystem through two devices would corrupt it). Devices are attached with
//! `LO_FLAGS_AUTOCLEAR` off: they must outlive zosd, which may be restarted while
//! workloads keep running on the pools.

use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

mod ioctl {
    // linux/loop.h
    pub const LOOP_SET_FD: u64 = 0x4C00;
    pub const LOOP_CTL_GET_FREE: u64 = 0x4C82;
    nix::ioctl_write_int_bad!(set_fd, LOOP_SET_FD);
    nix::ioctl_none_bad!(ctl_get_free, LOOP_CTL_GET_FREE);
}

fn io<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The loop device backed by `file`, if one is attached.
pub fn find(file: &Path) -> Result<Option<PathBuf>> {
    let file = fs::canonicalize(file).map_err(io(file, "resolving"))?;
    let Ok(entries) = fs::read_dir("/sys/block") else {
        return Ok(None);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("loop") {
            continue;
        }
        let Ok(backing) = fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        if Path::new(backing.trim_end()) == file {
            return Ok(Some(PathBuf::from("/dev").join(name)));
        }
    }
    Ok(None)
}

/// Creates `file` (sparse, `size` bytes) if it does not exist, and returns the loop
/// device backed by it, attaching one if none is.
pub fn ensure(file: &Path, size: u64) -> Result<PathBuf> {
    if !file.exists() {
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir).map_err(io(dir, "creating"))?;
        }
        let f = File::create(file).map_err(io(file, "creating"))?;
        f.set_len(size).map_err(io(file, "sizing"))?;
    }
    if let Some(dev) = find(file)? {
        return Ok(dev);
    }
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .map_err(io(file, "opening"))?;
    let control = Path::new("/dev/loop-control");
    // Another process may take the free device between the two calls: retry.
    let mut last = None;
    for _ in 0..8 {
        let ctl = File::open(control).map_err(io(control, "opening"))?;
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number; the
        // fd is a valid open /dev/loop-control for the duration of the call.
        let n = unsafe { ioctl::ctl_get_free(ctl.as_raw_fd()) }.map_err(|source| Error::Sys {
            op: "LOOP_CTL_GET_FREE",
            path: control.to_path_buf(),
            source,
        })?;
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let loopdev = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .map_err(io(&dev, "opening"))?;
        // SAFETY: LOOP_SET_FD takes the backing file's descriptor as its integer
        // argument; both descriptors stay open for the duration of the call.
        match unsafe { ioctl::set_fd(loopdev.as_raw_fd(), backing.as_raw_fd()) } {
            Ok(_) => return Ok(dev),
            Err(nix::Error::EBUSY) => last = Some(nix::Error::EBUSY),
            Err(source) => {
                return Err(Error::Sys {
                    op: "LOOP_SET_FD",
                    path: dev,
                    source,
                })
            }
        }
    }
    // Every free device we were handed was taken by someone else first.
    Err(Error::Sys {
        op: "LOOP_SET_FD",
        path: file.to_path_buf(),
        source: last.unwrap_or(nix::Error::EBUSY),
    })
}
