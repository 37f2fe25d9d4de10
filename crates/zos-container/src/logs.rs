//! Size-bounded stdout/stderr logs.
//!
//! The container writes into a FIFO (`<log_dir>/<stream>.fifo`) that it holds open
//! read-write. Holding the read side itself means a write never fails with `EPIPE` while
//! zosd is down (it blocks once the pipe buffer is full instead), so a re-adopted workload
//! keeps running and zosd, restarted, just reopens the FIFO and resumes reading.
//!
//! One thread copies every FIFO into its `<stream>.log` ([`crate::pump`]). When the file would pass
//! the cap it is renamed to `<stream>.log.1` (replacing the previous one) and a fresh file
//! starts: at most `2 * cap` bytes per stream on disk.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::Error;

/// Default cap of one log file (the rotated `.1` doubles the bound).
pub const DEFAULT_LOG_CAP: u64 = 1 << 20;

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The container's standard output.
    Stdout,
    /// The container's standard error.
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`: the stem of its file names.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    /// The current log file in `dir` (`stdout.log`).
    pub fn log_path(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.log", self.name()))
    }

    /// The previous log file in `dir` (`stdout.log.1`), replaced at each rotation.
    pub fn rotated_path(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.log.1", self.name()))
    }

    pub(crate) fn fifo_path(self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.fifo", self.name()))
    }
}

/// An append-only file that rotates to `.1` at a size cap.
#[derive(Debug)]
pub(crate) struct RotatingLog {
    path: PathBuf,
    rotated: PathBuf,
    cap: u64,
    file: Option<File>,
    size: u64,
}

impl RotatingLog {
    /// Opens (creates, mode 0640) `path` for appending; `cap` is in bytes (at least 1).
    pub fn open(path: PathBuf, rotated: PathBuf, cap: u64) -> std::io::Result<RotatingLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path,
            rotated,
            cap: cap.max(1),
            file: Some(file),
            size,
        })
    }

    /// Appends `buf`, rotating to the `.1` file whenever the cap is reached (a write
    /// is split at the cap).
    pub fn write_all(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        while !buf.is_empty() {
            if self.size >= self.cap {
                self.rotate()?;
            }
            let room = (self.cap - self.size) as usize;
            let n = room.min(buf.len());
            let file = match self.file.as_mut() {
                Some(f) => f,
                None => return Err(std::io::Error::other("log file closed")),
            };
            file.write_all(&buf[..n])?;
            self.size += n as u64;
            buf = &buf[n..];
        }
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.file = None;
        std::fs::rename(&self.path, &self.rotated)?;
        let fresh = RotatingLog::open(self.path.clone(), self.rotated.clone(), self.cap)?;
        self.file = fresh.file;
        self.size = 0;
        Ok(())
    }
}

/// Writers shared by every pump of one log file: a restarted container's new pump and the
/// old one still draining must not rotate the same file twice.
fn writer(path: PathBuf, rotated: PathBuf, cap: u64) -> std::io::Result<Arc<Mutex<RotatingLog>>> {
    static WRITERS: OnceLock<Mutex<HashMap<PathBuf, std::sync::Weak<Mutex<RotatingLog>>>>> =
        OnceLock::new();
    let map = WRITERS.get_or_init(Default::default);
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(w) = map.get(&path).and_then(|w| w.upgrade()) {
        return Ok(w);
    }
    let w = Arc::new(Mutex::new(RotatingLog::open(path.clone(), rotated, cap)?));
    map.insert(path, Arc::downgrade(&w));
    Ok(w)
}

/// Create a fresh FIFO for `stream` and return the container's end of it (read-write).
///
/// A fresh inode per container incarnation: a pump still draining the previous one keeps
/// its own (now unlinked) FIFO.
pub(crate) fn new_fifo(dir: &Path, stream: Stream) -> Result<File, Error> {
    let path = stream.fifo_path(dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("removing old log fifo", &path)(e)),
    }
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(|e| {
        Error::io("creating log fifo", &path)(std::io::Error::from_raw_os_error(e as i32))
    })?;
    // O_RDWR on a FIFO never blocks and makes the holder a reader too (see module doc).
    // O_CLOEXEC is dropped by dup2 in the container's init, which is what we want.
    let end = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(&path)
        .map_err(Error::io("opening log fifo", &path))?;
    // More slack while zosd is away (restarting): the workload blocks only once this fills.
    if let Err(e) = nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&end),
        nix::fcntl::FcntlArg::F_SETPIPE_SZ(FIFO_SIZE),
    ) {
        tracing::debug!(path = %path.display(), error = %e, "cannot enlarge log fifo");
    }
    Ok(end)
}

/// Pipe buffer of a log FIFO (the kernel default is 64 KiB).
const FIFO_SIZE: libc::c_int = 1 << 20;

/// Receives a container's output line by line, beside its log files (zosd ships the
/// lines to the contract's log destination).
pub trait LineTap: Send + Sync {
    /// One line of `container`'s `stream`, without its newline (a line longer than
    /// [`MAX_TAP_LINE`] bytes comes in pieces).
    fn line(&self, container: &str, stream: Stream, line: &str);
}

/// The longest line a [`LineTap`] gets whole.
pub const MAX_TAP_LINE: usize = 8 << 10;

/// A [`LineTap`] in a runtime's configuration.
#[derive(Clone)]
pub struct Tap(pub Arc<dyn LineTap>);

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tap")
    }
}

/// Cuts a byte stream into lines for a [`LineTap`].
#[derive(Default)]
pub(crate) struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    pub(crate) fn feed(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&str)) {
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&bytes[..nl]);
            emit(&String::from_utf8_lossy(&self.partial));
            self.partial.clear();
            bytes = &bytes[nl + 1..];
        }
        self.partial.extend_from_slice(bytes);
        while self.partial.len() >= MAX_TAP_LINE {
            let rest = self.partial.split_off(MAX_TAP_LINE);
            emit(&String::from_utf8_lossy(&self.partial));
            self.partial = rest;
        }
    }
}

/// Start copying `<dir>/<stream>.fifo` into the rotating log (until every writer is
/// gone), on the one thread that copies every container's output ([`crate::pump`]).
pub(crate) fn start_pump(
    id: &str,
    dir: &Path,
    stream: Stream,
    cap: u64,
    tap: Option<Tap>,
) -> Result<(), Error> {
    let fifo = stream.fifo_path(dir);
    // Non-blocking: the open never waits for a writer, and the pump's reads never wait.
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&fifo)
        .map_err(Error::io("opening log fifo", &fifo))?;
    let log = writer(stream.log_path(dir), stream.rotated_path(dir), cap)
        .map_err(Error::io("opening log", stream.log_path(dir)))?;
    crate::pump::add(crate::pump::Source {
        reader,
        log,
        container: id.to_string(),
        stream,
        tap,
        lines: Lines::default(),
    })
    .map_err(Error::io("pumping log fifo", &fifo))
}

/// The last `n` lines of a stream's log (rotated file included when needed), lossily
/// decoded. A missing log is an empty tail.
pub fn log_tail(dir: &Path, stream: Stream, n: usize) -> std::io::Result<Vec<String>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    // Only the end of a file is read: status records ask for a few lines, several
    // times a minute per workload, of files up to the rotation size.
    const WINDOW: u64 = 64 << 10;
    let read_end = |p: PathBuf| -> std::io::Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = match std::fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let len = f.metadata()?.len();
        let start = len.saturating_sub(WINDOW);
        f.seek(SeekFrom::Start(start))?;
        let mut b = Vec::new();
        f.take(WINDOW).read_to_end(&mut b)?;
        if start > 0 {
            // The window began mid-line: drop that partial line.
            let cut = b
                .iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |i| i + 1);
            b.drain(..cut);
        }
        Ok(b)
    };
    let mut bytes = read_end(stream.log_path(dir))?;
    let lines = |b: &[u8]| b.split(|&c| c == b'\n').count();
    if lines(&bytes) <= n {
        let mut older = read_end(stream.rotated_path(dir))?;
        older.extend_from_slice(&bytes);
        bytes = older;
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.split('\n').collect();
    if all.last() == Some(&"") {
        all.pop();
    }
    let start = all.len().saturating_sub(n);
    Ok(all[start..].iter().map(|s| s.to_string()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tap_gets_whole_lines_whatever_the_reads() {
        let mut lines = Lines {
            partial: Vec::new(),
        };
        let mut got = Vec::new();
        for chunk in [&b"one\ntw"[..], b"o\n", b"", b"three", b"\n\n"] {
            lines.feed(chunk, |l| got.push(l.to_string()));
        }
        assert_eq!(got, ["one", "two", "three", ""]);
        got.clear();
        lines.feed(&vec![b'x'; MAX_TAP_LINE + 3], |l| got.push(l.to_string()));
        assert_eq!(got, ["x".repeat(MAX_TAP_LINE)]);
        lines.feed(b"\n", |l| got.push(l.to_string()));
        assert_eq!(got[1], "xxx");
    }

    #[test]
    fn rotates_at_cap_and_tails_across_files() {
        let dir = tempfile::Builder::new()
            .prefix("zt-logs-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let mut log = RotatingLog::open(
            Stream::Stdout.log_path(d),
            Stream::Stdout.rotated_path(d),
            100,
        )
        .unwrap();
        for i in 0..50 {
            log.write_all(format!("line {i:02}\n").as_bytes()).unwrap();
        }
        let cur = std::fs::metadata(Stream::Stdout.log_path(d)).unwrap().len();
        let old = std::fs::metadata(Stream::Stdout.rotated_path(d))
            .unwrap()
            .len();
        assert!(cur <= 100 && old == 100, "cur {cur} old {old}");
        let tail = log_tail(d, Stream::Stdout, 3).unwrap();
        assert_eq!(tail, vec!["line 47", "line 48", "line 49"]);
        // More lines than the current file holds: the rotated one fills in.
        let tail = log_tail(d, Stream::Stdout, 12).unwrap();
        assert_eq!(tail.last().unwrap(), "line 49");
        assert_eq!(tail.len(), 12);
        assert!(log_tail(d, Stream::Stderr, 5).unwrap().is_empty());
    }

    #[test]
    fn tail_of_a_large_log_reads_only_its_end_and_whole_lines() {
        let dir = tempfile::Builder::new()
            .prefix("zt-logs-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let mut text = String::new();
        for i in 0..20_000 {
            text.push_str(&format!("a longer line number {i:05}\n"));
        }
        std::fs::write(Stream::Stdout.log_path(d), &text).unwrap();
        let tail = log_tail(d, Stream::Stdout, 2).unwrap();
        assert_eq!(
            tail,
            vec!["a longer line number 19998", "a longer line number 19999"]
        );
        // More lines than the window holds: whole lines only, the newest last.
        let tail = log_tail(d, Stream::Stdout, 100_000).unwrap();
        assert!(tail.len() > 1000 && tail.len() < 20_000, "{}", tail.len());
        assert!(tail[0].starts_with("a longer line number "));
        assert_eq!(tail[0].len(), "a longer line number 00000".len());
    }

    #[test]
    fn fifo_pump_copies_until_writers_close() {
        let dir = tempfile::Builder::new()
            .prefix("zt-logs-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let mut w = new_fifo(d, Stream::Stderr).unwrap();
        start_pump("zt-unit", d, Stream::Stderr, 1 << 20, None).unwrap();
        w.write_all(b"hello\nworld\n").unwrap();
        drop(w);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let t = log_tail(d, Stream::Stderr, 10).unwrap();
            if t == vec!["hello", "world"] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "log not copied: {t:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn writes_survive_an_absent_reader_and_a_later_pump_resumes() {
        // What a re-adopted container goes through: zosd (the reader) is gone for a while.
        let dir = tempfile::Builder::new()
            .prefix("zt-logs-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let mut w = new_fifo(d, Stream::Stdout).unwrap();
        // No reader at all: a plain pipe would fail with EPIPE here.
        w.write_all(b"while away\n").unwrap();
        start_pump("zt-unit", d, Stream::Stdout, 1 << 20, None).unwrap();
        w.write_all(b"back\n").unwrap();
        drop(w);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let t = log_tail(d, Stream::Stdout, 10).unwrap();
            if t == vec!["while away", "back"] {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "log not copied: {t:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
