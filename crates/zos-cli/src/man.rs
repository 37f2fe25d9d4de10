//! Man pages from the tool's clap `Command` (clap_mangen): `zos.1` and one page per
//! subcommand (`zos-contract.1`, `zos-contract-status.1`, ...).

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Writes the pages into `dir` (created if missing); returns their paths, sorted.
pub fn write_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(crate::command(), dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    let mut pages = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("zos") && name.ends_with(".1") {
            pages.push(path);
        }
    }
    pages.sort();
    Ok(pages)
}
