//! The kernel log: `/dev/kmsg` records into lines, with the kernel's own facility,
//! severity and timestamp. Blocking reads on a thread: usable by PID 1, which has no
//! async runtime.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::line::{Facility, Line, Severity};
use crate::shipper::NodeSink;

/// The kernel log device.
pub const KMSG: &str = "/dev/kmsg";

/// A record of `/dev/kmsg` that is not `PRI,SEQ,USEC,FLAGS;MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed /dev/kmsg record: {0}")]
pub struct KmsgError(pub String);

/// One kernel log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRecord {
    /// Facility (kern for the kernel's own; a process writing to /dev/kmsg may set another).
    pub facility: Facility,
    /// Severity (the kernel's log level).
    pub severity: Severity,
    /// The record's sequence number.
    pub seq: u64,
    /// Microseconds since boot (the kernel's monotonic clock).
    pub usec: u64,
    /// The text, unescaped (`\xNN` back to bytes, invalid UTF-8 replaced).
    pub message: String,
}

/// Parses one record as `read(2)` on /dev/kmsg returns it: `PRI,SEQ,USEC,FLAGS[,...];TEXT\n`
/// followed by ` KEY=VALUE` dictionary lines (ignored).
pub fn parse_record(rec: &[u8]) -> Result<KernelRecord, KmsgError> {
    let bad = |why: &str| KmsgError(format!("{why}: {:?}", String::from_utf8_lossy(rec)));
    let semi = rec
        .iter()
        .position(|&b| b == b';')
        .ok_or_else(|| bad("no ';'"))?;
    let prefix = std::str::from_utf8(&rec[..semi]).map_err(|_| bad("prefix not ASCII"))?;
    let mut parts = prefix.split(',');
    let mut num = |what: &str| -> Result<u64, KmsgError> {
        parts
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| bad(what))
    };
    let pri = num("PRI")?;
    let seq = num("SEQ")?;
    let usec = num("USEC")?;
    let text = &rec[semi + 1..];
    let text = &text[..text.iter().position(|&b| b == b'\n').unwrap_or(text.len())];
    let facility = u8::try_from(pri >> 3)
        .ok()
        .and_then(Facility::from_code)
        .unwrap_or(Facility::Kern);
    Ok(KernelRecord {
        facility,
        severity: Severity::from_code((pri & 7) as u8),
        seq,
        usec,
        message: String::from_utf8_lossy(&unescape(text)).into_owned(),
    })
}

/// `\xNN` (the kernel's escape for unprintable bytes and `\`) back to the byte.
fn unescape(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i] == b'\\' && text.get(i + 1) == Some(&b'x') {
            if let Some(b) = text
                .get(i + 2..i + 4)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(text[i]);
        i += 1;
    }
    out
}

/// What one read of /dev/kmsg gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmsgEvent {
    /// A record.
    Record(KernelRecord),
    /// Records were overwritten in the kernel's ring before they were read (EPIPE); the
    /// next read continues with the oldest one still there.
    Overrun,
}

/// A reader of /dev/kmsg (or another file of records, for tests).
pub struct KmsgReader {
    file: File,
    buf: Vec<u8>,
}

impl KmsgReader {
    /// Opens `path`; `from_start` reads the whole ring (PID 1: the boot lines), otherwise
    /// only records written from now on.
    pub fn open(path: &Path, from_start: bool) -> io::Result<KmsgReader> {
        let mut file = File::open(path)?;
        if !from_start {
            file.seek(SeekFrom::End(0))?;
        }
        // A record is at most 8 KiB (the kernel's CONSOLE_EXT_LOG_MAX); a smaller buffer
        // makes read(2) fail with EINVAL.
        Ok(KmsgReader {
            file,
            buf: vec![0; 8192],
        })
    }

    /// The next record, blocking until there is one. `Ok(None)` at the end of a regular
    /// file (never for /dev/kmsg).
    pub fn next_event(&mut self) -> io::Result<Option<Result<KmsgEvent, KmsgError>>> {
        loop {
            match self.file.read(&mut self.buf) {
                Ok(0) => return Ok(None),
                Ok(n) => return Ok(Some(parse_record(&self.buf[..n]).map(KmsgEvent::Record))),
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => {
                    return Ok(Some(Ok(KmsgEvent::Overrun)))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// The wall-clock time of boot (now minus the monotonic clock, which the kernel log's
/// timestamps count from).
pub fn boot_time() -> SystemTime {
    let mono = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
        .unwrap_or_default();
    SystemTime::now() - mono
}

/// A kernel record as a line: APP-NAME `kernel`, the record's facility and severity, its
/// time (`boot` + its timestamp), its sequence number as the `seq` parameter.
pub fn record_line(rec: &KernelRecord, boot: SystemTime) -> Line {
    let mut line = Line::new("kernel", rec.severity, rec.message.clone())
        .facility(rec.facility)
        .param("seq", rec.seq.to_string());
    line.time = boot + Duration::from_micros(rec.usec);
    line
}

/// Forwards the kernel log into `sink` on a thread of its own until a read fails: every
/// record as [`record_line`]; an overrun as a `kernel log overrun` warning; a malformed
/// record is skipped.
pub fn forward(
    reader: KmsgReader,
    sink: NodeSink,
) -> io::Result<std::thread::JoinHandle<io::Error>> {
    forward_after(reader, sink, None, |_| {})
}

/// As [`forward`], skipping the records up to sequence number `after` (those a previous
/// forwarder sent), and telling `sent` each record's number once it is queued, for the
/// caller to keep across restarts.
pub fn forward_after(
    mut reader: KmsgReader,
    sink: NodeSink,
    after: Option<u64>,
    mut sent: impl FnMut(u64) + Send + 'static,
) -> io::Result<std::thread::JoinHandle<io::Error>> {
    std::thread::Builder::new()
        .name("kmsg".into())
        .spawn(move || {
            let boot = boot_time();
            loop {
                match reader.next_event() {
                    Ok(Some(Ok(KmsgEvent::Record(r)))) => {
                        if after.is_some_and(|a| r.seq <= a) {
                            continue;
                        }
                        sink.send(record_line(&r, boot));
                        sent(r.seq);
                    }
                    Ok(Some(Ok(KmsgEvent::Overrun))) => sink.send(
                        Line::new(
                            "kernel",
                            Severity::Warning,
                            "kernel log overrun: records were lost before they were read",
                        )
                        .facility(Facility::Kern),
                    ),
                    Ok(Some(Err(_malformed))) => {}
                    Ok(None) => return io::Error::from(io::ErrorKind::UnexpectedEof),
                    Err(e) => return e,
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_parse_with_the_kernels_fields() {
        let r =
            parse_record(b"6,339,5140900,-;NET: Registered \\x5c\\x0a family 10\n SUBSYSTEM=net\n")
                .unwrap();
        assert_eq!(r.facility, Facility::Kern);
        assert_eq!(r.severity, Severity::Informational);
        assert_eq!((r.seq, r.usec), (339, 5_140_900));
        assert_eq!(r.message, "NET: Registered \\\n family 10");
        let r = parse_record(b"14,1,2,c,more;user line").unwrap();
        assert_eq!(
            (r.facility, r.severity),
            (Facility::User, Severity::Informational)
        );
        assert!(parse_record(b"no semicolon").is_err());
        assert!(parse_record(b"x,1,2,-;text").is_err());
    }

    #[test]
    fn kernel_lines_keep_the_kernels_time() {
        let r = parse_record(b"3,7,1500000,-;oops").unwrap();
        let boot = SystemTime::UNIX_EPOCH;
        let l = record_line(&r, boot);
        assert_eq!(l.app, "kernel");
        assert_eq!((l.facility, l.severity), (Facility::Kern, Severity::Error));
        assert_eq!(l.time, boot + Duration::from_millis(1500));
    }
}
