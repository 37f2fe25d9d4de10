//! Packing a directory tree into a flist: metadata to the `.fl`, blocks to the stores.

use std::collections::VecDeque;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::block::{encode, BlockRef};
use crate::error::{Error, FormatError};
use crate::meta::{bad_name, EntryKind, NewInode, Writer};
use crate::store::Router;
use crate::{Meter, Progress, BLOCK_SIZE};

/// How to pack.
#[derive(Default)]
pub struct PackOptions<'a> {
    /// Worker threads reading, compressing, encrypting and storing blocks (0: one per core).
    pub threads: usize,
    /// Called after each block is stored; `None`: no progress reported.
    pub progress: Option<Progress<'a>>,
}

/// What was packed.
#[derive(Debug, Clone, Default)]
pub struct PackReport {
    /// Inodes written: directories, files, links and devices, the root included.
    pub entries: u64,
    /// Regular files among them.
    pub files: u64,
    /// Bytes read from those files.
    pub bytes: u64,
    /// Blocks listed for them (a repeated block counts each time it is listed).
    pub blocks: u64,
}

/// A packed file: bytes read and its blocks.
type Packed = (u64, Vec<BlockRef>);

struct Item {
    path: PathBuf,
    inode: NewInode,
    kind: EntryKind,
}

/// Packs `src` into the flist `out`, writing blocks to every store of `router` whose range
/// covers them and recording the router's routes in the flist.
pub fn pack(
    src: &Path,
    out: &Path,
    router: &Router,
    opts: &PackOptions<'_>,
) -> Result<PackReport, Error> {
    let items = walk(src)?;
    let files: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].kind == EntryKind::File)
        .collect();
    let total: u64 = files.iter().map(|&i| items[i].inode.size).sum();
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        opts.threads
    };

    // Blocks of every file, computed in parallel; index into `files`.
    let results: Vec<Mutex<Option<Packed>>> = files.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let meter = Meter::new(opts.progress, total);
    let failed = AtomicBool::new(false);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.min(files.len().max(1)) {
            s.spawn(|| {
                let mut buf = vec![0u8; BLOCK_SIZE];
                loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&i) = files.get(n) else { return };
                    match pack_file(&items[i].path, router, &mut buf, &meter) {
                        Ok(r) => *results[n].lock().expect("not poisoned") = Some(r),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_err.lock().expect("not poisoned").get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().expect("not poisoned") {
        return Err(e);
    }

    let writer = Writer::create(out)?;
    for r in router.routes() {
        writer.route(r)?;
    }
    let mut report = PackReport::default();
    let mut blocks_of: Vec<Option<Packed>> = results
        .into_iter()
        .map(|m| m.into_inner().expect("not poisoned"))
        .collect();
    let mut file_n = 0;
    for (i, item) in items.iter().enumerate() {
        let ino = i as u64 + 1;
        let mut inode = item.inode.clone();
        if item.kind == EntryKind::File {
            let (size, blocks) = blocks_of[file_n].take().expect("every file was packed");
            file_n += 1;
            // The size is what was read, so that size and block list always agree.
            inode.size = size;
            writer.inode(ino, &inode)?;
            for b in &blocks {
                writer.block(ino, b)?;
            }
            report.files += 1;
            report.bytes += size;
            report.blocks += blocks.len() as u64;
        } else {
            writer.inode(ino, &inode)?;
        }
        report.entries += 1;
    }
    writer.finish()?;
    tracing::info!(flist = %out.display(), entries = report.entries, bytes = report.bytes,
        blocks = report.blocks, "packed");
    Ok(report)
}

fn pack_file(
    path: &Path,
    router: &Router,
    buf: &mut [u8],
    meter: &Meter<'_>,
) -> Result<Packed, Error> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut blocks = Vec::new();
    let mut size = 0u64;
    loop {
        // Fill the whole buffer: every block but the last is exactly BLOCK_SIZE, which is
        // what lets readers map an offset to a block.
        let mut n = 0;
        while n < buf.len() {
            match f.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        if n == 0 {
            break;
        }
        let (b, ct) = encode(&buf[..n]);
        router.set(&b.id, &ct)?;
        blocks.push(b);
        size += n as u64;
        meter.add(n as u64);
        if n < buf.len() {
            break;
        }
    }
    Ok((size, blocks))
}

/// Breadth-first walk, children sorted by name, so the same tree gives the same flist.
fn walk(src: &Path) -> Result<Vec<Item>, Error> {
    let meta = std::fs::symlink_metadata(src).map_err(|e| Error::io(src, e))?;
    if !meta.is_dir() {
        return Err(Error::io(
            src,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a directory"),
        ));
    }
    let mut items = vec![item(src, 0, "/".to_string(), &meta)?];
    let mut queue = VecDeque::from([0usize]);
    while let Some(d) = queue.pop_front() {
        let dir = items[d].path.clone();
        let mut children: Vec<_> = std::fs::read_dir(&dir)
            .map_err(|e| Error::io(&dir, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| Error::io(&dir, e))?;
        children.sort_by_key(|c| c.file_name());
        for c in children {
            let path = c.path();
            let name = c.file_name().into_string().map_err(|n| Error::Format {
                path: path.clone(),
                reason: FormatError::BadName {
                    ino: 0,
                    name: n.to_string_lossy().into_owned(),
                    reason: "not UTF-8 (the flist format stores names as text)",
                },
            })?;
            if let Some(reason) = bad_name(&name) {
                return Err(Error::Format {
                    path,
                    reason: FormatError::BadName {
                        ino: 0,
                        name,
                        reason,
                    },
                });
            }
            let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
            let it = item(&path, d as u64 + 1, name, &meta)?;
            let is_dir = it.kind == EntryKind::Dir;
            items.push(it);
            if is_dir {
                queue.push_back(items.len() - 1);
            }
        }
    }
    Ok(items)
}

fn item(path: &Path, parent: u64, name: String, m: &std::fs::Metadata) -> Result<Item, Error> {
    let kind = EntryKind::from_mode(m.mode()).ok_or_else(|| Error::Format {
        path: path.to_path_buf(),
        reason: FormatError::UnknownFileType {
            ino: 0,
            mode: m.mode(),
        },
    })?;
    let target = if kind == EntryKind::Symlink {
        let t = std::fs::read_link(path).map_err(|e| Error::io(path, e))?;
        Some(std::os::unix::ffi::OsStrExt::as_bytes(t.as_os_str()).to_vec())
    } else {
        None
    };
    Ok(Item {
        path: path.to_path_buf(),
        kind,
        inode: NewInode {
            parent,
            name,
            size: m.size(),
            uid: m.uid(),
            gid: m.gid(),
            mode: m.mode(),
            rdev: m.rdev(),
            ctime: m.ctime(),
            mtime: m.mtime(),
            target,
        },
    })
}
