//! Output shared by the commands: stdout that stops quietly when its reader has gone,
//! `--json`, and files written atomically.
//!
//! `println!` panics when stdout is a closed pipe (`zos contract status ... | head`).
//! Every command writes through [`outln!`], [`out!`] and [`json`] instead: a closed pipe
//! comes back as [`StdoutClosed`], which the tool's entry point turns into a quiet exit 0
//! (what a reader that stopped early asks for). Messages for people go to stderr through
//! [`note!`], which never fails.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;

use anyhow::Context;

/// `--json` for read commands: one JSON document on stdout.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Format {
    /// Print one machine-readable JSON document instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Stdout's reader has gone (a closed pipe): stop quietly, it wants nothing more.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stdout is closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// `println!` to stdout that returns an error instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*), true)
    };
}

/// `print!` to stdout that returns an error instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*), false)
    };
}

/// `eprintln!` that never panics: a message for people on stderr, lost if stderr is gone.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::output::write_stderr(format_args!($($arg)*))
    };
}

pub(crate) use {note, out, outln};

/// Writes `args` (and a newline) to stdout; a closed pipe is [`StdoutClosed`].
pub fn write_stdout(args: fmt::Arguments<'_>, newline: bool) -> anyhow::Result<()> {
    let mut stdout = io::stdout().lock();
    let written = stdout.write_fmt(args).and_then(|()| {
        if newline {
            stdout.write_all(b"\n")
        } else {
            Ok(())
        }
    });
    written.and_then(|()| stdout.flush()).map_err(stdout_error)
}

/// Writes `args` and a newline to stderr, ignoring failure (there is nowhere to report it).
pub fn write_stderr(args: fmt::Arguments<'_>) {
    let mut stderr = io::stderr().lock();
    let _ = stderr
        .write_fmt(args)
        .and_then(|()| stderr.write_all(b"\n"));
}

fn stdout_error(e: io::Error) -> anyhow::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        StdoutClosed.into()
    } else {
        anyhow::Error::new(e).context("writing to stdout")
    }
}

/// `value` as one pretty-printed JSON document on stdout.
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    outln!("{text}")
}

/// True when `e` only says stdout's reader has gone.
pub fn is_stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| cause.is::<StdoutClosed>())
}

/// Writes `text` to `path` atomically (temp + rename), or to stdout without a path.
pub fn write_new_or_stdout(path: Option<&Path>, text: &str) -> anyhow::Result<()> {
    match path {
        None => outln!("{text}"),
        Some(path) => write_atomic(path, text),
    }
}

/// Replaces `path` with `text` so a reader never sees half a document.
pub fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())?;
    tmp.write_all(b"\n")?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
