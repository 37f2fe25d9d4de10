//! A `newc` cpio writer: the format the kernel unpacks an initramfs (or a micro-VM's
//! initrd) from. Written here rather than run through `cpio(1)` so that the archive's
//! contents are exactly the list we give, in a fixed order, with fixed owners and times
//! (reproducible bytes).

use std::io::{self, Write};
use std::path::Path;

/// An archive being written: entries in the order they are added.
pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
    /// Device numbers of the entry being written (char devices only).
    rdev: (u32, u32),
}

impl<W: Write> Cpio<W> {
    /// An empty archive written to `out`.
    pub fn new(out: W) -> Self {
        Cpio {
            out,
            ino: 1,
            rdev: (0, 0),
        }
    }

    /// A directory, mode 0755.
    pub fn dir(&mut self, name: &str) -> io::Result<()> {
        self.entry(name, libc::S_IFDIR | 0o755, &[])
    }

    /// A regular file with `mode`'s permission bits.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        self.entry(name, libc::S_IFREG | (mode & 0o7777), data)
    }

    /// A regular file copied from `src`, keeping its permission bits.
    pub fn copy(&mut self, name: &str, src: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = std::fs::read(src)?;
        let mode = std::fs::metadata(src)?.permissions().mode();
        self.file(name, mode, &data)
    }

    /// A character device node (e.g. `dev/console`, 5:1): the kernel opens
    /// `/dev/console` for init before any devtmpfs is mounted.
    pub fn char_device(&mut self, name: &str, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        self.rdev = (major, minor);
        let r = self.entry(name, libc::S_IFCHR | (mode & 0o7777), &[]);
        self.rdev = (0, 0);
        r
    }

    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let size = u32::try_from(data.len()).map_err(|_| io::Error::other("file over 4 GiB"))?;
        let ino = self.ino;
        self.ino += 1;
        self.header(ino, mode, size, name)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn header(&mut self, ino: u32, mode: u32, size: u32, name: &str) -> io::Result<()> {
        let (rmajor, rminor) = self.rdev;
        let nlink = if mode & libc::S_IFMT == libc::S_IFDIR {
            2
        } else {
            1
        };
        let namesize = name.len() + 1;
        // magic, then 13 fields of 8 hex digits: ino mode uid gid nlink mtime filesize
        // devmajor devminor rdevmajor rdevminor namesize check.
        write!(
            self.out,
            "070701{ino:08X}{mode:08X}{:08X}{:08X}{nlink:08X}{:08X}{size:08X}{:08X}{:08X}{rmajor:08X}{rminor:08X}{namesize:08X}{:08X}",
            0, 0, 0, 0, 0, 0
        )?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        // The header (110 bytes) plus the name is padded to a multiple of 4.
        self.pad(110 + namesize)
    }

    fn pad(&mut self, len: usize) -> io::Result<()> {
        let zeros = [0u8; 3];
        self.out.write_all(&zeros[..(4 - len % 4) % 4])
    }

    /// Writes the trailer and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(0, 0, 0, "TRAILER!!!")?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cpio -t` (GNU cpio, when installed) lists what we wrote, in order.
    #[test]
    fn gnu_cpio_reads_the_archive() {
        let mut c = Cpio::new(Vec::new());
        c.dir("lib").unwrap();
        c.file("/lib/a.ko", 0o644, b"abc").unwrap();
        let bytes = c.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            zos_testkit::skip_line(
                "gnu_cpio_reads_the_archive",
                "cpio(1) is not installed (apt-get install cpio); the archive was checked by hand only",
            );
            return;
        };
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "lib\nlib/a.ko\n");
    }
}
