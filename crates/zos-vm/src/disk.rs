//! Disk images onto vdisks, and files copied from a verified descriptor.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;

/// Copies all of `from` to the start of `to`: a reflink (FICLONE) when both are on
/// the same btrfs and the kernel accepts the range, else a byte copy. Both are open
/// files (opened beneath their trees by the caller): no path is followed here.
pub(crate) fn copy_fd(from: &File, to: &File) -> std::io::Result<()> {
    // SAFETY: FICLONE takes the source fd as its argument; both fds are open.
    let cloned = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } == 0;
    if !cloned {
        let (mut from, mut to) = (from, to);
        from.seek(SeekFrom::Start(0))?;
        to.seek(SeekFrom::Start(0))?;
        std::io::copy(&mut from, &mut to)?;
    }
    Ok(())
}

/// Copies the image `from` to the start of the vdisk `to`, which keeps its size (the
/// vdisk is the disk; the image may be smaller): a reflink when both are on the same
/// btrfs, else a byte copy.
pub fn copy_image(from: &File, to: &File) -> std::io::Result<()> {
    let size = to.metadata()?.len();
    copy_fd(from, to)?;
    if to.metadata()?.len() < size {
        to.set_len(size)?;
    }
    to.sync_all()
}

#[cfg(test)]
mod tests {
    #[test]
    fn copies_the_bytes_when_it_cannot_reflink() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("image.raw"), dir.path().join("vdisk"));
        std::fs::write(&src, b"a boot sector and more").unwrap();
        std::fs::File::create(&dst)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let from = std::fs::File::open(&src).unwrap();
        let to = std::fs::OpenOptions::new().write(true).open(&dst).unwrap();
        super::copy_image(&from, &to).unwrap();
        let got = std::fs::read(&dst).unwrap();
        assert!(got.starts_with(b"a boot sector and more"));
        assert_eq!(got.len(), 1 << 20, "the vdisk keeps its size");
    }
}
