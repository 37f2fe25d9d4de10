//! Disk images onto vdisks.

use std::path::Path;

/// Copies `src` to the start of the existing file `dst`, which keeps its size (the
/// vdisk is the disk; the image may be smaller): a reflink (FICLONE) when both are on
/// the same btrfs and the kernel accepts the range, else a byte copy.
pub fn copy_image(src: &Path, dst: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut from = std::fs::File::open(src)?;
    let mut to = std::fs::OpenOptions::new().write(true).open(dst)?;
    let size = to.metadata()?.len();
    // SAFETY: FICLONE takes the source fd as its argument; both fds are open.
    let cloned = unsafe { libc::ioctl(to.as_raw_fd(), libc::FICLONE, from.as_raw_fd()) } == 0;
    if !cloned {
        std::io::copy(&mut from, &mut to)?;
    }
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
        super::copy_image(&src, &dst).unwrap();
        let got = std::fs::read(&dst).unwrap();
        assert!(got.starts_with(b"a boot sector and more"));
        assert_eq!(got.len(), 1 << 20, "the vdisk keeps its size");
    }
}
