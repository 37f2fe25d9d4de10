//! The bundle's framing: a tar of plain files, compressed with zstd (pure Rust, ruzstd),
//! kept under a size bound; and its reader, which writes only plain files into the target
//! directory.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::Path;

use ruzstd::encoding::{compress_to_vec, CompressionLevel};

use crate::{is_plain_name, manifest_json, BundleError, Manifest, ERRORS, MANIFEST};

/// [`unpack`] refuses a bundle that decompresses to more than this.
pub const UNPACK_MAX: u64 = 1 << 30;

fn zstd(data: &[u8]) -> Vec<u8> {
    compress_to_vec(data, CompressionLevel::Fastest)
}

fn append(tar: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8], mtime: u64) {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_mtime(mtime);
    // Names are plain and at most 100 bytes (unique_names), so set_path cannot fail; a
    // failure would only lose this one entry, never the bundle.
    if let Err(e) = h.set_path(name) {
        tracing::warn!(part = %name, error = %e, "support bundle entry name refused");
        return;
    }
    h.set_cksum();
    if let Err(e) = tar.append(&h, data) {
        tracing::warn!(part = %name, error = %e, "support bundle entry not written");
    }
}

/// The tar.zst of the manifest, `errors.txt` and every part still present.
fn pack(manifest: &Manifest, bodies: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mtime = manifest.created;
    let errors: String = manifest
        .parts
        .iter()
        .filter_map(|p| p.error_line())
        .map(|l| l + "\n")
        .collect();
    append(&mut tar, MANIFEST, &manifest_json(manifest), mtime);
    append(&mut tar, ERRORS, errors.as_bytes(), mtime);
    for (report, body) in manifest.parts.iter().zip(bodies) {
        if let Some(body) = body {
            append(&mut tar, &report.name, body, mtime);
        }
    }
    // Writing into a Vec cannot fail.
    let raw = tar.into_inner().unwrap_or_default();
    zstd(&raw)
}

/// Pack, dropping the largest parts (by their compressed size alone) until the bundle
/// fits `max_bytes`; each drop is written into its part's report. When even no parts do
/// not fit (a bound below the manifest's own size), the bundle of manifest and errors is
/// returned as it is.
pub(crate) fn pack_bounded(
    manifest: &mut Manifest,
    bodies: &mut [Option<Vec<u8>>],
    max_bytes: usize,
) -> Vec<u8> {
    let mut bytes = pack(manifest, bodies);
    if bytes.len() <= max_bytes {
        return bytes;
    }
    // Each part's compressed size alone: what dropping it saves, roughly.
    let estimate: Vec<usize> = bodies
        .iter()
        .map(|b| b.as_deref().map_or(0, |b| zstd(b).len()))
        .collect();
    let mut order: Vec<usize> = (0..bodies.len()).filter(|&i| bodies[i].is_some()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(estimate[i]));
    let mut over = bytes.len() - max_bytes;
    let mut next = order.into_iter();
    loop {
        // Drop the largest parts until the estimate says it fits, then check for real.
        let mut saved = 0;
        for i in next.by_ref() {
            drop_part(manifest, bodies, i, max_bytes, estimate[i]);
            saved += estimate[i];
            if saved >= over {
                break;
            }
        }
        bytes = pack(manifest, bodies);
        if bytes.len() <= max_bytes || bodies.iter().all(Option::is_none) {
            if bytes.len() > max_bytes {
                tracing::warn!(
                    bytes = bytes.len(),
                    max_bytes,
                    "support bundle: the manifest alone is over the bound"
                );
            }
            return bytes;
        }
        over = bytes.len() - max_bytes;
    }
}

fn drop_part(
    manifest: &mut Manifest,
    bodies: &mut [Option<Vec<u8>>],
    i: usize,
    max_bytes: usize,
    compressed: usize,
) {
    let Some(body) = bodies[i].take() else {
        return;
    };
    let p = &mut manifest.parts[i];
    tracing::warn!(part = %p.name, bytes = body.len(), compressed, max_bytes, "support bundle part dropped for size");
    let before = p.error.take();
    let mut why = format!(
        "dropped: the bundle was over its bound of {max_bytes} bytes and this part was among the largest ({} bytes, {compressed} compressed)",
        body.len()
    );
    if let Some(b) = before {
        why = format!("{why}; before that: {b}");
    }
    p.error = Some(why);
    p.ok = false;
    p.dropped = true;
    p.bytes = 0;
}

/// A bundle's file names and contents, checked: every entry a regular file with a plain
/// name, no repeats, within [`UNPACK_MAX`].
fn entries(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>, BundleError> {
    let decoder = ruzstd::decoding::StreamingDecoder::new(bytes)
        .map_err(|e| BundleError::Decompress(e.to_string()))?;
    let mut raw = Vec::new();
    decoder
        .take(UNPACK_MAX + 1)
        .read_to_end(&mut raw)
        .map_err(|e| BundleError::Decompress(e.to_string()))?;
    if raw.len() as u64 > UNPACK_MAX {
        return Err(BundleError::TooLarge { limit: UNPACK_MAX });
    }
    let mut archive = tar::Archive::new(&raw[..]);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for entry in archive.entries().map_err(BundleError::Tar)? {
        let mut entry = entry.map_err(BundleError::Tar)?;
        // The bytes as written: `path()` would already have normalised them.
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if !kind.is_file() {
            return Err(BundleError::NotAFile {
                path,
                kind: kind_name(kind).to_string(),
            });
        }
        if !is_plain_name(&path) {
            return Err(BundleError::UnsafePath { path });
        }
        if !seen.insert(path.clone()) {
            return Err(BundleError::Duplicate { path });
        }
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(BundleError::Tar)?;
        out.push((path, data));
    }
    Ok(out)
}

fn kind_name(t: tar::EntryType) -> &'static str {
    match t {
        tar::EntryType::Symlink => "symlink",
        tar::EntryType::Link => "hard link",
        tar::EntryType::Directory => "directory",
        tar::EntryType::Char => "character device",
        tar::EntryType::Block => "block device",
        tar::EntryType::Fifo => "fifo",
        _ => "special entry",
    }
}

/// Check a bundle whole, then write its files into `dir` (created if missing) and return
/// its manifest. Nothing is written unless every entry is a regular file with a plain
/// name; no existing file is overwritten or followed (each is created new).
pub fn unpack(bytes: &[u8], dir: &Path) -> Result<Manifest, BundleError> {
    let entries = entries(bytes)?;
    let manifest = entries
        .iter()
        .find(|(n, _)| n == MANIFEST)
        .ok_or(BundleError::NoManifest)?;
    let manifest: Manifest = serde_json::from_slice(&manifest.1).map_err(BundleError::Manifest)?;
    let io = |path: &Path, source| BundleError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    for (name, data) in &entries {
        let path = dir.join(name);
        // create_new: O_EXCL, so a symlink planted at this name is not followed.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        f.write_all(data).map_err(|e| io(&path, e))?;
    }
    Ok(manifest)
}
