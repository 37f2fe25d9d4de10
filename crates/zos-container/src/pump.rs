//! One thread copies every container's output into its logs.
//!
//! The read ends of the log FIFOs sit in one epoll set (level-triggered, non-blocking
//! reads). Each time one is readable the thread reads at most one buffer from it, so a
//! chatty container takes its turn with the others. A FIFO whose writers have all gone
//! reads end-of-file: it leaves the set and its end is closed.
//!
//! Why not a thread per stream: that was two threads per container, each with its own
//! stack and read buffer, for output that mostly never comes. With 500 containers that
//! is 1,000 threads, and about a quarter of zosd's memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags, EpollTimeout};

use crate::epoll_thread::EpollThread;
use crate::logs::{Lines, RotatingLog, Stream, Tap};

/// What one read takes from a FIFO at most: a pipe's default size.
const READ_SIZE: usize = 64 * 1024;

/// One stream of one container: where its bytes come from and where they go.
pub(crate) struct Source {
    /// The FIFO's read end, non-blocking.
    pub reader: File,
    pub log: Arc<Mutex<RotatingLog>>,
    pub container: String,
    pub stream: Stream,
    pub tap: Option<Tap>,
    pub lines: Lines,
}

impl Source {
    /// Writes what was read to the log and the tap.
    fn copy(&mut self, bytes: &[u8]) {
        let mut log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = log.write_all(bytes) {
            tracing::warn!(container = %self.container, stream = self.stream.name(), error = %e, "writing container log failed; dropping output");
        }
        drop(log);
        if let Some(Tap(tap)) = &self.tap {
            let (container, stream) = (&self.container, self.stream);
            self.lines
                .feed(bytes, |line| tap.line(container, stream, line));
        }
    }
}

/// The epoll set and the sources in it, by token.
struct Pump {
    epoll: Epoll,
    sources: Mutex<Sources>,
}

#[derive(Default)]
struct Sources {
    by_token: HashMap<u64, Source>,
    next_token: u64,
}

impl Pump {
    fn sources(&self) -> MutexGuard<'_, Sources> {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        let mut events = [EpollEvent::empty(); 64];
        let mut buf = vec![0u8; READ_SIZE];
        loop {
            let n = match self.epoll.wait(&mut events, EpollTimeout::NONE) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    // Not expected on a valid epoll fd; do not spin if it happens.
                    tracing::error!(error = %e, "waiting on container output failed");
                    std::thread::sleep(std::time::Duration::from_secs(1));
                    continue;
                }
            };
            for event in &events[..n] {
                self.service(event.data(), &mut buf);
            }
        }
    }

    /// One read from the source `token` (gone already: nothing).
    fn service(&self, token: u64, buf: &mut [u8]) {
        let mut sources = self.sources();
        let Some(source) = sources.by_token.get_mut(&token) else {
            return;
        };
        let ended = match source.reader.read(buf) {
            // Every writer closed: the container (and anything it forked) is gone.
            Ok(0) => true,
            Ok(n) => {
                source.copy(&buf[..n]);
                false
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                false
            }
            Err(e) => {
                tracing::warn!(container = %source.container, stream = source.stream.name(), error = %e, "reading container output failed");
                true
            }
        };
        if ended {
            let source = sources.by_token.remove(&token).expect("looked up above");
            if let Err(e) = self.epoll.delete(&source.reader) {
                tracing::warn!(container = %source.container, error = %e, "removing a log fifo from the pump");
            }
            tracing::debug!(container = %source.container, stream = source.stream.name(), "log pump finished");
        }
    }
}

/// The pump, started on first use.
fn pump() -> std::io::Result<Arc<Pump>> {
    static PUMP: EpollThread<Pump> = EpollThread::new();
    PUMP.get(
        "zos-logs",
        128 * 1024,
        |epoll| Pump {
            epoll,
            sources: Mutex::default(),
        },
        Pump::run,
    )
}

/// Starts copying `source` (its reader non-blocking) until its writers are gone.
pub(crate) fn add(source: Source) -> std::io::Result<()> {
    let p = pump()?;
    let mut sources = p.sources();
    let token = sources.next_token;
    sources.next_token += 1;
    p.epoll
        .add(&source.reader, EpollEvent::new(EpollFlags::EPOLLIN, token))?;
    sources.by_token.insert(token, source);
    Ok(())
}

/// How many streams are being copied (for tests).
#[cfg(test)]
pub(crate) fn streams_of(container: &str) -> usize {
    pump().map_or(0, |p| {
        p.sources()
            .by_token
            .values()
            .filter(|s| s.container == container)
            .count()
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use crate::logs::{log_tail, new_fifo, start_pump, Stream};

    fn threads_named(name: &str) -> usize {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim_end() == name)
            .count()
    }

    #[test]
    fn one_thread_copies_many_fifos_and_lets_each_go_at_its_end() {
        let dir = tempfile::Builder::new()
            .prefix("zt-pump-")
            .tempdir()
            .unwrap();
        let container = "zt-pump-many";
        let mut writers = Vec::new();
        for i in 0..40 {
            let d = dir.path().join(i.to_string());
            std::fs::create_dir(&d).unwrap();
            let w = new_fifo(&d, Stream::Stdout).unwrap();
            start_pump(container, &d, Stream::Stdout, 1 << 20, None).unwrap();
            writers.push((d, w));
        }
        assert_eq!(super::streams_of(container), 40);
        assert_eq!(threads_named("zos-logs"), 1, "one thread for every stream");
        for (i, (_, w)) in writers.iter_mut().enumerate() {
            writeln!(w, "line {i}").unwrap();
        }
        let dirs: Vec<_> = writers.into_iter().map(|(d, _)| d).collect();
        // The writers are closed: each stream is copied, then leaves the set.
        let deadline = Instant::now() + Duration::from_secs(30);
        while super::streams_of(container) > 0 {
            assert!(Instant::now() < deadline, "streams never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        for (i, d) in dirs.iter().enumerate() {
            assert_eq!(
                log_tail(d, Stream::Stdout, 10).unwrap(),
                vec![format!("line {i}")]
            );
        }
    }
}
