//! `zos flist`: pack, verify, list, unpack and mount flists.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use zos_contract::{PublicKey, SecretKey};
use zos_flist::sign::{open_trusted, sign_file, Trust};
use zos_flist::{BlockCache, EntryKind, Fetcher, Flist, Router};

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
    /// Example: zos flist verify app.fl --store dir:///srv/store --trust <publisher>
    Verify {
        flist: PathBuf,
        #[command(flatten)]
        src: Source,
        #[arg(long, default_value_t = 8)]
        threads: usize,
    },
    /// List entries like ls -l, from the metadata alone (nothing is fetched).
    ///
    /// Example: zos flist ls app.fl /etc
    Ls {
        flist: PathBuf,
        /// Directory or entry inside the flist (default /).
        path: Option<String>,
        /// List the whole tree under PATH.
        #[arg(long, short = 'R')]
        recursive: bool,
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
            eprintln!("warning: --insecure-unsigned: the flist signature is not checked");
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
            eprintln!("signature: ok, publisher {p}");
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
        } => verify(&flist, &src, threads),
        FlistCmd::Ls {
            flist,
            path,
            recursive,
        } => ls(&flist, path.as_deref(), recursive),
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
    let last = AtomicU64::new(u64::MAX);
    let progress = |done: u64, total: u64| {
        let pct = (done * 100).checked_div(total).unwrap_or(100);
        if last.swap(pct, Ordering::Relaxed) != pct {
            eprint!("\rpacking: {pct:3}% ({} / {} MiB)", done >> 20, total >> 20);
        }
    };
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
    eprintln!();
    println!(
        "{}: {} entries, {} files, {} bytes, {} blocks",
        out.display(),
        report.entries,
        report.files,
        report.bytes,
        report.blocks
    );
    if let Some(key) = key {
        let sig = sign_file(out, &key)?;
        println!(
            "signed: {}.sig (publisher {}, sha256 {})",
            out.display(),
            sig.publisher,
            sig.sha256
        );
    }
    Ok(())
}

/// `zos flist verify`: every block fetched and checked.
fn verify(flist: &Path, src: &Source, threads: usize) -> anyhow::Result<()> {
    let (fl, fetcher) = src.open(flist)?;
    let r = zos_flist::verify_blocks(&fl, &fetcher, threads)?;
    println!(
        "ok: {} files, {} blocks, {} bytes verified (sha256 {})",
        r.files,
        r.blocks,
        r.bytes,
        hex::encode(fl.sha256)
    );
    Ok(())
}

/// `zos flist ls`: a directory (recursively if asked) or one entry.
fn ls(flist: &Path, path: Option<&str>, recursive: bool) -> anyhow::Result<()> {
    let fl = Flist::open(flist)?;
    let idx = fl.lookup(path.unwrap_or("/"))?;
    if fl.entries[idx].kind == EntryKind::Dir {
        ls_dir(&fl, idx, recursive);
    } else {
        println!("{}", ls_line(&fl, idx, &fl.path_of(idx)));
    }
    Ok(())
}

/// `zos flist unpack`: the tree written under `dest`.
fn unpack(flist: &Path, dest: &Path, src: &Source, threads: usize) -> anyhow::Result<()> {
    let (fl, fetcher) = src.open(flist)?;
    let r = zos_flist::unpack(&fl, &fetcher, dest, &zos_flist::UnpackOptions { threads })
        .with_context(|| format!("unpacking into {}", dest.display()))?;
    println!(
        "{}: {} entries, {} files, {} bytes",
        dest.display(),
        r.entries,
        r.files,
        r.bytes
    );
    Ok(())
}

/// `zos flist mount`: a FUSE mount in the foreground.
fn mount(flist: &Path, mountpoint: &Path, src: &Source) -> anyhow::Result<()> {
    let (fl, fetcher) = src.open(flist)?;
    eprintln!(
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

fn ls_dir(fl: &Flist, dir: usize, recursive: bool) {
    for &c in &fl.entries[dir].children {
        let name = if recursive {
            fl.path_of(c)
        } else {
            fl.entries[c].name.clone()
        };
        println!("{}", ls_line(fl, c, &name));
        if recursive && fl.entries[c].kind == EntryKind::Dir {
            ls_dir(fl, c, true);
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
