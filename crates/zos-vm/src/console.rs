//! The VM's serial console, kept in a size-bounded file.
//!
//! QEMU appends to `console.log` (O_APPEND), so the file can be cut under it: when it
//! grows past the limit, its newest half is kept and the rest dropped. Lines the guest
//! writes between the read of that half and the cut are lost; the bound is the limit
//! plus what the guest writes between two checks (each state poll checks).

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Keeps `path` under `limit` bytes (see the module docs). Returns whether it cut.
pub(crate) fn enforce_limit(path: &Path, limit: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if len <= limit {
        return Ok(false);
    }
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    let keep = limit / 2;
    file.seek(SeekFrom::Start(len - keep))?;
    let mut tail = Vec::with_capacity(keep as usize);
    file.take(keep).read_to_end(&mut tail)?;
    // Start the kept part at a line boundary.
    let start = tail.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.set_len(0)?;
    file.write_all(&tail[start..])?;
    Ok(true)
}

/// The last `n` lines of the console, with carriage returns and non-UTF-8 bytes
/// made harmless.
pub fn tail(path: &Path, n: usize) -> Vec<String> {
    const WINDOW: u64 = 64 << 10;
    let Ok(mut file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if file
        .seek(SeekFrom::Start(len.saturating_sub(WINDOW)))
        .is_err()
    {
        return Vec::new();
    }
    let mut bytes = Vec::new();
    if file.take(WINDOW).read_to_end(&mut bytes).is_err() {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let skip = lines.len().saturating_sub(n);
    lines[skip..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_the_newest_whole_lines_and_appends_continue() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        for i in 0..1000 {
            writeln!(f, "line {i}").unwrap();
        }
        assert!(enforce_limit(&path, 1000).unwrap());
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= 500, "{len}");
        // The writer (QEMU's O_APPEND fd) goes on at the new end.
        writeln!(f, "after the cut").unwrap();
        let lines = tail(&path, 3);
        assert_eq!(lines, vec!["line 998", "line 999", "after the cut"]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("line "), "starts at a line boundary");
        assert!(!enforce_limit(&path, 1000).unwrap());
    }

    #[test]
    fn tail_of_a_missing_console_is_empty() {
        assert!(tail(Path::new("/nonexistent/console.log"), 5).is_empty());
    }
}
