//! Painting the status screen on the console (or a file, in tests).
//!
//! The console is opened write-only and `O_NOCTTY`, so it never becomes zosd's
//! controlling terminal: a ctrl-C typed on the keyboard reaches nobody, and nothing
//! here ever reads from it. Keyboard input is ignored by construction.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::render::render;
use crate::{StatusError, StatusReceiver};

/// ANSI: cursor home, then clear the screen.
const CLEAR: &str = "\x1b[H\x1b[2J";
/// At most one frame per this, however often the status changes (a serial console
/// at 115200 baud takes ~0.2 s for a screen).
const MIN_GAP: Duration = Duration::from_secs(1);

/// Paints the screen on `path` every `every` and when the status changes, until the
/// sender is dropped. A failed write is logged and retried at the next frame.
pub async fn run(path: PathBuf, mut status: StatusReceiver, every: Duration) {
    let mut last: Option<Instant> = None;
    let mut failing = false;
    loop {
        if let Some(t) = last {
            tokio::time::sleep_until(t + MIN_GAP).await;
        }
        let frame = render(&status.borrow_and_update());
        let target = path.clone();
        // A console write can block (a slow serial line): off the runtime's threads.
        let written = tokio::task::spawn_blocking(move || paint(&target, &frame))
            .await
            .unwrap_or_else(|e| {
                Err(StatusError::io(
                    "write",
                    &path,
                    std::io::Error::other(e.to_string()),
                ))
            });
        match written {
            Ok(()) if failing => {
                tracing::info!(console = %path.display(), "status screen painted again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(console = %path.display(), error = %e, "status screen not painted");
                failing = true;
            }
            Err(_) => {}
        }
        last = Some(Instant::now());
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One frame: clear, home, the screen. A regular file is truncated first, so it
/// holds the latest frame only (tests read it); O_TRUNC means nothing to a tty.
pub fn paint(path: &Path, frame: &str) -> Result<(), StatusError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
        .map_err(|e| StatusError::io("open", path, e))?;
    let mut text = String::with_capacity(frame.len() + 16);
    text.push_str(CLEAR);
    text.push_str(frame);
    f.write_all(text.as_bytes())
        .map_err(|e| StatusError::io("write", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeStatus;

    #[tokio::test]
    async fn paints_at_start_on_change_and_stops_with_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console");
        let (tx, rx) = crate::channel(NodeStatus {
            node: "first".into(),
            ..Default::default()
        });
        let task = tokio::spawn(run(path.clone(), rx, Duration::from_secs(5)));
        let read = || std::fs::read_to_string(&path).unwrap_or_default();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if read().contains("first") {
                break;
            }
        }
        assert!(read().starts_with(CLEAR), "{:?}", read());
        assert!(read().contains("node      first"));
        tx.send_modify(|s| s.node = "second".into());
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if read().contains("second") {
                break;
            }
        }
        assert!(read().contains("node      second"), "{}", read());
        assert!(!read().contains("first"), "one frame only");
        drop(tx);
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("stops without a sender")
            .unwrap();
    }
}
