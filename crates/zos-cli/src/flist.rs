//! `zos flist`: pack, verify, list, unpack and mount flists.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::Serialize;
use zos_contract::{PublicKey, SecretKey};
use zos_flist::sign::{open_trusted, sign_file, Trust};
use zos_flist::{BlockCache, EntryKind, Fetcher, Flist, Router};

use crate::output::{note, outln, Format};

/// Work with rfs-compatible flists.
#[derive(Debug, Subcommand)]
pub enum FlistCmd {
    /// Pack a directory into a flist; blocks go to the store(s).
    ///
    /// Example: zos flist pack ./rootfs --store dir:///srv/store -o app.fl --sign publisher.key
    Pack {
        /// Directory to pack.
        src: PathBuf,
        /// Store URL (dir:///path or http://host/path), or xx-yy=URL for a range of block
        /// ids by first byte. Repeat for several; blocks go to every matching store.
        #[arg(long, required = true)]
        store: Vec<String>,
        /// The flist to write.
        #[arg(long, short)]
        out: PathBuf,
        /// Sign with this secret key file: writes OUT.sig next to the flist.
        #[arg(long)]
        sign: Option<PathBuf>,
        /// Worker threads (default: one per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Check the signature, then fetch every block and check its id and key hashes.
    ///
    /// Example: zos flist verify app.fl --store dir:///srv/store --trust <publisher> --json
    Verify {
        flist: PathBuf,
        #[command(flatten)]
        src: Source,
        #[arg(long, default_value_t = 8)]
        threads: usize,
        #[command(flatten)]
        format: Format,
    },
    /// List entries like ls -l, from the metadata alone (nothing is fetched).
    ///
    /// Example: zos flist ls app.fl /etc --json
    Ls {
        flist: PathBuf,
        /// Directory or entry inside the flist (default /).
        path: Option<String>,
        /// List the whole tree under PATH.
        #[arg(long, short = 'R')]
        recursive: bool,
        #[command(flatten)]
        format: Format,
    },
    /// Extract a flist into an empty directory, verifying every block.
    ///
    /// Example: zos flist unpack app.fl ./out --store http://127.0.0.1:8080/store --trust <publisher>
    Unpack {
        flist: PathBuf,
        dest: PathBuf,
        #[command(flatten)]
        src: Source,
        /// Parallel file fetches (default: four per core).
        #[arg(long, default_value_t = 0)]
        threads: usize,
    },
    /// Mount a flist read-only with FUSE; blocks are fetched and verified when read.
    /// Runs until unmounted or interrupted.
    ///
    /// Example: zos flist mount app.fl /mnt/app --store dir:///srv/store --cache /var/cache/zos/blocks --trust <publisher>
    Mount {
        flist: PathBuf,
        mountpoint: PathBuf,
        #[command(flatten)]
        src: Source,
    },
}

/// Where blocks come from and whom to trust.
#[derive(Debug, Args)]
pub struct Source {
    /// Store URL(s) to read blocks from (default: the routes recorded in the flist).
    #[arg(long)]
    store: Vec<String>,
    /// Verified block cache directory.
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Trusted publisher public key (hex). Repeat for several.
    #[arg(long)]
    trust: Vec<String>,
    /// Use the flist without checking its signature (hub flists are unsigned).
    #[arg(long)]
    insecure_unsigned: bool,
}

impl Source {
    fn open(&self, path: &Path) -> anyhow::Result<(Flist, Fetcher)> {
        let trust = if self.insecure_unsigned {
            note!("warning: --insecure-unsigned: the flist signature is not checked");
            Trust::InsecureUnsigned
        } else {
            let keys = self
                .trust
                .iter()
                .map(|k| k.parse::<PublicKey>())
                .collect::<Result<Vec<_>, _>>()?;
            Trust::Publishers(keys)
        };
        let (flist, publisher) = open_trusted(path, &trust)?;
        if let Some(p) = publisher {
            note!("signature: ok, publisher {p}");
        }
        let router = if self.store.is_empty() {
            if flist.routes.is_empty() {
                bail!("the flist records no store routes; pass --store");
            }
            Router::new(&flist.routes)?
        } else {
            Router::parse(&self.store)?
        };
        let cache = self.cache.as_ref().map(BlockCache::new);
        Ok((flist, Fetcher::new(router, cache)))
    }
}

pub fn run(cmd: FlistCmd) -> anyhow::Result<()> {
    match cmd {
        FlistCmd::Pack {
            src,
            store,
            out,
            sign,
            threads,
        } => pack(&src, &store, &out, sign.as_deref(), threads),
        FlistCmd::Verify {
            flist,
            src,
            threads,
            format,
        } => verify(&flist, &src, threads, &format),
        FlistCmd::Ls {
            flist,
            path,
            recursive,
            format,
        } => ls(&flist, path.as_deref(), recursive, &format),
        FlistCmd::Unpack {
            flist,
            dest,
            src,
            threads,
        } => unpack(&flist, &dest, &src, threads),
        FlistCmd::Mount {
            flist,
            mountpoint,
            src,
        } => mount(&flist, &mountpoint, &src),
    }
}

/// `zos flist pack`: the tree into blocks in the store and an .fl, signed if asked.
fn pack(
    src: &Path,
    store: &[String],
    out: &Path,
    sign: Option<&Path>,
    threads: usize,
) -> anyhow::Result<()> {
    // Load the key first: a bad key file should fail before minutes of packing.
    let key = sign.map(SecretKey::load).transpose()?;
    let router = Router::parse(store)?;
    let bar = crate::progress::Bar::bytes("packing");
    let progress = |done: u64, total: u64| bar.update(done, total);
    let report = zos_flist::pack(
        src,
        out,
        &router,
        &zos_flist::PackOptions {
            threads,
            progress: Some(&progress),
        },
    )
    .with_context(|| format!("packing {}", src.display()))?;
    bar.finish();
    outln!(
        "{}: {} entries, {} files, {} bytes, {} blocks",
        out.display(),
        report.entries,
        report.files,
        report.bytes,
        report.blocks
    )?;
    if let Some(key) = key {
        let sig = sign_file(out, &key)?;
        outln!(
            "signed: {}.sig (publisher {}, sha256 {})",
            out.display(),
            sig.publisher,
            sig.sha256
        )?;
    }
    Ok(())
}

/// `zos flist verify --json`: what was checked.
#[derive(Debug, Serialize)]
struct Verified {
    flist: PathBuf,
    /// The .fl file's sha256 (hex): what a signature covers.
    sha256: String,
    files: u64,
    blocks: u64,
    /// Plaintext bytes in the verified blocks.
    bytes: u64,
}

/// `zos flist verify`: every block fetched and checked.
fn verify(flist: &Path, src: &Source, threads: usize, format: &Format) -> anyhow::Result<()> {
    let (fl, fetcher) = src.open(flist)?;
    let bar = crate::progress::Bar::bytes("verifying");
    bar.start(file_bytes(&fl));
    let progress = |done: u64, total: u64| bar.update(done, total);
    let r = zos_flist::verify_blocks(&fl, &fetcher, threads, Some(&progress))?;
    bar.finish();
    let v = Verified {
        flist: flist.to_path_buf(),
        sha256: hex::encode(fl.sha256),
        files: r.files,
        blocks: r.blocks,
        bytes: r.bytes,
    };
    if format.json {
        return crate::output::json(&v);
    }
    outln!(
        "ok: {} files, {} blocks, {} bytes verified (sha256 {})",
        v.files,
        v.blocks,
        v.bytes,
        v.sha256
    )
}

/// The bytes of the flist's regular files: what an unpack writes.
fn file_bytes(fl: &Flist) -> u64 {
    fl.entries
        .iter()
        .filter(|e| e.kind == EntryKind::File)
        .fold(0u64, |sum, e| sum.saturating_add(e.size))
}

/// One entry of `zos flist ls --json`.
#[derive(Debug, Serialize)]
struct LsEntry {
    /// Absolute path inside the flist.
    path: String,
    /// file, dir, symlink, fifo, char_device, block_device or socket.
    kind: &'static str,
    /// Permission bits (with setuid, setgid, sticky), without the file type.
    mode: u32,
    uid: u32,
    gid: u32,
    /// Bytes (files), target length (symlinks).
    size: u64,
    /// Modification time, unix seconds.
    mtime: i64,
    /// A symlink's target.
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    /// A device's (major, minor).
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<(u64, u64)>,
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink => "symlink",
        EntryKind::Fifo => "fifo",
        EntryKind::CharDevice => "char_device",
        EntryKind::BlockDevice => "block_device",
        EntryKind::Socket => "socket",
    }
}

fn ls_entry(fl: &Flist, idx: usize) -> LsEntry {
    let e = &fl.entries[idx];
    LsEntry {
        path: fl.path_of(idx),
        kind: kind_name(e.kind),
        mode: e.perm(),
        uid: e.uid,
        gid: e.gid,
        size: e.size,
        mtime: e.mtime,
        target: e
            .target
            .as_ref()
            .map(|t| String::from_utf8_lossy(t).into_owned()),
        device: matches!(e.kind, EntryKind::CharDevice | EntryKind::BlockDevice)
            .then(|| (libc_major(e.rdev), libc_minor(e.rdev))),
    }
}

/// `zos flist ls`: a directory (recursively if asked) or one entry.
fn ls(flist: &Path, path: Option<&str>, recursive: bool, format: &Format) -> anyhow::Result<()> {
    let fl = Flist::open(flist)?;
    let idx = fl.lookup(path.unwrap_or("/"))?;
    let mut shown = Vec::new();
    if fl.entries[idx].kind == EntryKind::Dir {
        dir_entries(&fl, idx, recursive, &mut shown);
    } else {
        shown.push(idx);
    }
    if format.json {
        let entries: Vec<LsEntry> = shown.iter().map(|&i| ls_entry(&fl, i)).collect();
        return crate::output::json(&entries);
    }
    let single = fl.entries[idx].kind != EntryKind::Dir;
    for i in shown {
        let name = if recursive || single {
            fl.path_of(i)
        } else {
            fl.entries[i].name.clone()
        };
        outln!("{}", ls_line(&fl, i, &name))?;
    }
    Ok(())
}

/// `zos flist unpack`: the tree written under `dest`.
fn unpack(flist: &Path, dest: &Path, src: &Source, threads: usize) -> anyhow::Result<()> {
    let (fl, fetcher) = src.open(flist)?;
    let bar = crate::progress::Bar::bytes("unpacking");
    bar.start(file_bytes(&fl));
    let progress = |done: u64, total: u64| bar.update(done, total);
    let opts = zos_flist::UnpackOptions {
        threads,
        progress: Some(&progress),
        ..Default::default()
    };
    let r = zos_flist::unpack(&fl, &fetcher, dest, &opts)
        .with_context(|| format!("unpacking into {}", dest.display()))?;
    bar.finish();
    outln!(
        "{}: {} entries, {} files, {} bytes",
        dest.display(),
        r.entries,
        r.files,
        r.bytes
    )
}

/// `zos flist mount`: a FUSE mount in the foreground.
fn mount(flist: &Path, mountpoint: &Path, src: &Source) -> anyhow::Result<()> {
    let (fl, fetcher) = src.open(flist)?;
    note!(
        "mounting at {}; unmount it or press Ctrl-C to stop",
        mountpoint.display()
    );
    zos_flist::mount_foreground(
        Arc::new(fl),
        Arc::new(fetcher),
        mountpoint,
        &zos_flist::MountOptions::default(),
    )?;
    Ok(())
}

/// The entries under directory `dir` in listing order (depth first when recursive).
fn dir_entries(fl: &Flist, dir: usize, recursive: bool, out: &mut Vec<usize>) {
    for &c in &fl.entries[dir].children {
        out.push(c);
        if recursive && fl.entries[c].kind == EntryKind::Dir {
            dir_entries(fl, c, true, out);
        }
    }
}

fn ls_line(fl: &Flist, idx: usize, name: &str) -> String {
    let e = &fl.entries[idx];
    let mut perm = String::with_capacity(10);
    perm.push(e.kind.letter());
    let m = e.perm();
    for (shift, special, lower, upper) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (m >> shift) & 7;
        perm.push(if bits & 4 != 0 { 'r' } else { '-' });
        perm.push(if bits & 2 != 0 { 'w' } else { '-' });
        perm.push(match (bits & 1 != 0, m & special != 0) {
            (true, true) => lower,
            (false, true) => upper,
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    let size = match e.kind {
        EntryKind::CharDevice | EntryKind::BlockDevice => {
            let (maj, min) = (libc_major(e.rdev), libc_minor(e.rdev));
            format!("{maj}, {min}")
        }
        _ => e.size.to_string(),
    };
    let mut line = format!(
        "{perm} {:>5} {:>5} {:>12} {} {name}",
        e.uid,
        e.gid,
        size,
        fmt_time(e.mtime)
    );
    if let Some(t) = &e.target {
        line.push_str(" -> ");
        line.push_str(&String::from_utf8_lossy(t));
    }
    line
}

// glibc's encoding of dev_t (major in bits 8-19 and 32-43, minor in 0-7 and 20-31).
fn libc_major(dev: u64) -> u64 {
    ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff)
}
fn libc_minor(dev: u64) -> u64 {
    (dev & 0xff) | ((dev >> 12) & !0xff)
}

/// UTC `YYYY-MM-DD HH:MM` (civil-from-days, no time zone database needed).
fn fmt_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}
