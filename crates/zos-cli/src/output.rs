//! Output helpers shared by the commands.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

/// `--json` for read commands.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Format {
    /// Print machine-readable JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Writes `text` to `path` atomically (temp + rename), or to stdout without a path.
pub fn write_new_or_stdout(path: Option<&Path>, text: &str) -> anyhow::Result<()> {
    match path {
        None => {
            println!("{text}");
            Ok(())
        }
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
