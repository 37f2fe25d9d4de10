//! What QEMU runs in: its own user, its own mount view, its own namespaces.
//!
//! zosd (root) opens everything the VM needs first (disks beneath their trees, the
//! tap, the QMP listener) and hands QEMU the descriptors. Then, in the forked child
//! before exec, [`Confinement::enter`]:
//!
//! 1. enters the tenant's network namespace (or a new, empty one when the VM has no
//!    network), and new mount, IPC and UTS namespaces;
//! 2. builds a read-only tmpfs root that holds only `/usr` (and the host's `/bin`,
//!    `/lib*`, `/sbin` links into it), `/etc/ld.so.cache`, a `/dev` of `null`, `zero`,
//!    `full`, `random`, `urandom` (and `kvm` when used), and the VM's run directory at
//!    its own path; then `pivot_root`s into it: the host's `/root`, the state directory,
//!    the pools, other tenants' files are not in QEMU's view at all;
//! 3. marks every descriptor close-on-exec but the ones QEMU is given;
//! 4. drops to the VM's own unprivileged uid and gid (no supplementary groups, no
//!    capabilities after exec) and sets `no_new_privs`.
//!
//! Everything the child does is a plain syscall on memory prepared before the fork
//! (no allocation: zosd is multi-threaded).

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One step of building the view (paths inside the view's root).
enum Op {
    /// mkdir 0755.
    Dir(CString),
    /// Bind `src` onto `dst` (made first: a directory, or an empty file when `file`).
    Bind {
        src: CString,
        dst: CString,
        file: bool,
        write: bool,
        exec: bool,
    },
    /// A symbolic link `at` -> `target`.
    Link { target: CString, at: CString },
    /// A character device node, mode `perm`, owned by `owner`.
    Char {
        path: CString,
        major: u32,
        minor: u32,
        perm: u32,
        owner: Option<(u32, u32)>,
    },
}

/// Everything the child needs, prepared in the parent.
pub(crate) struct Confinement {
    root: CString,
    ops: Vec<Op>,
    netns: Option<File>,
    keep: Vec<RawFd>,
    uid: u32,
    gid: u32,
    made: BTreeSet<PathBuf>,
    root_path: PathBuf,
}

fn cstr(p: impl AsRef<OsStr>) -> Result<CString> {
    CString::new(p.as_ref().as_bytes()).map_err(|_| Error::Confine("a path with a NUL".into()))
}

/// The character devices every QEMU gets: (name, major, minor).
const DEVICES: [(&str, u32, u32); 5] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
];

/// `/dev/kvm`.
pub(crate) const KVM: (u32, u32) = (10, 232);

impl Confinement {
    /// A view rooted at `root` (an empty directory the caller made; a tmpfs is mounted
    /// on it in the child's own mount namespace only), for a QEMU running as
    /// `uid:gid` in `netns` (None: a new, empty network namespace).
    pub(crate) fn new(root: &Path, uid: u32, gid: u32, netns: Option<&Path>) -> Result<Self> {
        let netns = match netns {
            Some(p) => Some(File::open(p).map_err(Error::io("opening netns", p))?),
            None => None,
        };
        let mut c = Confinement {
            root: cstr(root)?,
            ops: Vec::new(),
            netns,
            keep: Vec::new(),
            uid,
            gid,
            made: BTreeSet::new(),
            root_path: root.to_path_buf(),
        };
        c.bind(Path::new("/usr"), false, true)?;
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(top);
            match std::fs::symlink_metadata(&host) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(&host).map_err(Error::io("reading", &host))?;
                    c.ops.push(Op::Link {
                        target: cstr(&target)?,
                        at: c.inside(&host)?,
                    });
                }
                Ok(m) if m.is_dir() => c.bind(&host, false, true)?,
                _ => {}
            }
        }
        let cache = Path::new("/etc/ld.so.cache");
        if cache.is_file() {
            c.bind(cache, false, false)?;
        }
        c.dirs(Path::new("/dev"))?;
        for (name, major, minor) in DEVICES {
            c.ops.push(Op::Char {
                path: c.inside(&Path::new("/dev").join(name))?,
                major,
                minor,
                perm: 0o666,
                owner: None,
            });
        }
        Ok(c)
    }

    /// The path of host path `p` inside the view.
    fn inside(&self, p: &Path) -> Result<CString> {
        cstr(self.root_path.join(p.strip_prefix("/").unwrap_or(p)))
    }

    /// mkdir -p of `p` inside the view.
    fn dirs(&mut self, p: &Path) -> Result<()> {
        let mut at = PathBuf::from("/");
        for c in p.components().skip(1) {
            at.push(c);
            if self.made.insert(at.clone()) {
                let inside = self.inside(&at)?;
                self.ops.push(Op::Dir(inside));
            }
        }
        Ok(())
    }

    /// Makes host path `p` (a directory or a file) visible at the same path.
    pub(crate) fn bind(&mut self, p: &Path, write: bool, exec: bool) -> Result<()> {
        let file = !p.is_dir();
        if let Some(parent) = p.parent() {
            self.dirs(parent)?;
        }
        if !file {
            self.made.insert(p.to_path_buf());
        }
        let dst = self.inside(p)?;
        self.ops.push(Op::Bind {
            src: cstr(p)?,
            dst,
            file,
            write,
            exec,
        });
        Ok(())
    }

    /// Gives QEMU `/dev/kvm`, owned by its uid.
    pub(crate) fn kvm(&mut self) -> Result<()> {
        let path = self.inside(Path::new("/dev/kvm"))?;
        self.ops.push(Op::Char {
            path,
            major: KVM.0,
            minor: KVM.1,
            perm: 0o600,
            owner: Some((self.uid, self.gid)),
        });
        Ok(())
    }

    /// QEMU inherits `fd` (all others are closed on exec).
    pub(crate) fn keep(&mut self, fd: RawFd) {
        self.keep.push(fd);
    }

    /// Runs in the forked child, before exec (see the module docs). Async-signal-safe:
    /// syscalls on prepared memory only.
    pub(crate) fn enter(&self) -> std::io::Result<()> {
        let fail = || Err(std::io::Error::last_os_error());
        // SAFETY: (every libc call below) plain syscalls in the single-threaded child,
        // on NUL-terminated strings and descriptors prepared and kept alive by the
        // parent until spawn returns; nothing here allocates or takes a lock.
        unsafe {
            let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS;
            match &self.netns {
                Some(ns) => {
                    if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                        return fail();
                    }
                }
                None => flags |= libc::CLONE_NEWNET,
            }
            if libc::unshare(flags) != 0 {
                return fail();
            }
            let none = std::ptr::null::<libc::c_char>();
            if libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            if libc::mount(
                c"zos-vm".as_ptr(),
                self.root.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                c"mode=0755,size=256k".as_ptr().cast(),
            ) != 0
            {
                return fail();
            }
            for op in &self.ops {
                match op {
                    Op::Dir(p) => {
                        if libc::mkdir(p.as_ptr(), 0o755) != 0 {
                            return fail();
                        }
                    }
                    Op::Link { target, at } => {
                        if libc::symlink(target.as_ptr(), at.as_ptr()) != 0 {
                            return fail();
                        }
                    }
                    Op::Char {
                        path,
                        major,
                        minor,
                        perm,
                        owner,
                    } => {
                        let dev = libc::makedev(*major, *minor);
                        if libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, dev) != 0
                            || libc::chmod(path.as_ptr(), *perm) != 0
                        {
                            return fail();
                        }
                        if let Some((u, g)) = owner {
                            if libc::chown(path.as_ptr(), *u, *g) != 0 {
                                return fail();
                            }
                        }
                    }
                    Op::Bind {
                        src,
                        dst,
                        file,
                        write,
                        exec,
                    } => {
                        if *file {
                            let fd = libc::open(
                                dst.as_ptr(),
                                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                                0o644,
                            );
                            if fd < 0 {
                                return fail();
                            }
                            libc::close(fd);
                        } else if libc::mkdir(dst.as_ptr(), 0o755) != 0
                            && *libc::__errno_location() != libc::EEXIST
                        {
                            return fail();
                        }
                        // Not recursive for a writable bind: nothing mounted beneath
                        // it on the host comes along.
                        let rec = if *write { 0 } else { libc::MS_REC };
                        if libc::mount(
                            src.as_ptr(),
                            dst.as_ptr(),
                            none,
                            libc::MS_BIND | rec,
                            std::ptr::null(),
                        ) != 0
                        {
                            return fail();
                        }
                        let mut f =
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_NOSUID | libc::MS_NODEV;
                        if !*write {
                            f |= libc::MS_RDONLY;
                        }
                        if !*exec {
                            f |= libc::MS_NOEXEC;
                        }
                        if libc::mount(none, dst.as_ptr(), none, f, std::ptr::null()) != 0 {
                            return fail();
                        }
                    }
                }
            }
            // The view's own root: read-only from now on.
            let f = libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NOEXEC;
            if libc::mount(none, self.root.as_ptr(), none, f, std::ptr::null()) != 0 {
                return fail();
            }
            if libc::chdir(self.root.as_ptr()) != 0
                || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0
                || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) != 0
                || libc::chdir(c"/".as_ptr()) != 0
            {
                return fail();
            }
            // Every descriptor closes on exec, but QEMU's own.
            if libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            ) != 0
            {
                return fail();
            }
            for fd in &self.keep {
                if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                    return fail();
                }
            }
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(self.gid, self.gid, self.gid) != 0
                || libc::setresuid(self.uid, self.uid, self.uid) != 0
                || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            {
                return fail();
            }
        }
        Ok(())
    }
}

/// Attaches to the persistent tap `name` in the namespace `netns` (from a short-lived
/// thread that enters it): QEMU gets this descriptor, not the right to open taps.
pub(crate) fn open_tap(netns: Option<&Path>, name: &str) -> Result<File> {
    let owned = name.to_string();
    let fail =
        move |what: &str, e: std::io::Error| Error::Confine(format!("tap {owned}: {what}: {e}"));
    if name.len() > 15 {
        return Err(Error::InvalidSpec(format!("tap name {name:?}")));
    }
    let ns = match netns {
        Some(p) => Some(File::open(p).map_err(|e| fail("opening its namespace", e))?),
        None => None,
    };
    let name = name.to_string();
    std::thread::spawn(move || -> Result<File> {
        if let Some(ns) = &ns {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| fail("entering its namespace", e.into()))?;
        }
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| fail("opening /dev/net/tun", e))?;
        // SAFETY: ifreq is plain old data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes the ifreq we own, on an open tun fd.
        if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
            return Err(fail("attaching", std::io::Error::last_os_error()));
        }
        Ok(tun)
    })
    .join()
    .map_err(|_| Error::Confine("the tap thread panicked".into()))?
}

/// A file made for QEMU in the run directory (never through a link: `O_EXCL` after
/// the old one is removed, or `O_NOFOLLOW` when `keep` keeps what is there), owned by
/// `uid:gid` with `mode`.
pub(crate) fn owned_file(path: &Path, keep: bool, uid: u32, gid: u32, mode: u32) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    if !keep {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io("removing", path)(e))
            }
            _ => {}
        }
    }
    let mut o = std::fs::OpenOptions::new();
    o.write(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    if keep {
        o.create(true).append(true);
    } else {
        o.create_new(true);
    }
    let file = o.open(path).map_err(Error::io("creating", path))?;
    let meta = file.metadata().map_err(Error::io("inspecting", path))?;
    if !meta.is_file() {
        return Err(Error::Refused {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        });
    }
    std::os::unix::fs::fchown(&file, Some(uid), Some(gid)).map_err(Error::io("chown", path))?;
    // SAFETY: fchmod on the descriptor we just opened.
    if unsafe { libc::fchmod(file.as_raw_fd(), mode) } != 0 {
        return Err(Error::io("chmod", path)(std::io::Error::last_os_error()));
    }
    Ok(file)
}

/// `binary` as an absolute path (searched in `PATH` when it has no `/`).
pub(crate) fn resolve_binary(binary: &Path) -> Result<PathBuf> {
    if binary.as_os_str().as_bytes().contains(&b'/') {
        return std::fs::canonicalize(binary).map_err(Error::io("finding", binary));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(binary))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .ok_or_else(|| Error::Start {
            status: "not run".into(),
            message: format!("{}: not found in PATH", binary.display()),
        })
}
