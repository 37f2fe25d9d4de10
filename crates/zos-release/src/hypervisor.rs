//! The hypervisor bundle: the release part `qemu` (docs/upgrade.md, "The hypervisor
//! bundle").
//!
//! A booted node's image holds no QEMU. The bundle is a tree that runs on its own:
//!
//! ```text
//! bin/qemu-system-x86_64          the emulator, as the distribution built it
//! lib/ld-linux-x86-64.so.2        its dynamic loader: the program that is executed
//! lib/<soname>                    every shared library it needs (ldd, resolved)
//! lib/qemu/accel-*.so             the accelerator modules QEMU loads (TCG is one)
//! share/qemu/<firmware>           the firmware and option ROMs of our machines
//! ```
//!
//! zos-vm runs it without a shell: the loader is the program, `--library-path
//! <dir>/lib --inhibit-cache`, QEMU's path after it, `-L <dir>/share/qemu` for its
//! firmware and `QEMU_MODULE_DIR=<dir>/lib/qemu` for its modules. [`collect`] builds a
//! bundle from a QEMU installed on the build host (`ldd` says which libraries);
//! `cargo xtask release` packs it as the signed flist `qemu.fl`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The emulator, relative to the bundle.
pub const QEMU: &str = "bin/qemu-system-x86_64";
/// The dynamic loader, the program zos-vm executes.
pub const LOADER: &str = "lib/ld-linux-x86-64.so.2";
/// The library directory (`--library-path`).
pub const LIB: &str = "lib";
/// QEMU's module directory (`QEMU_MODULE_DIR`).
pub const MODULES: &str = "lib/qemu";
/// QEMU's firmware directory (`-L`).
pub const FIRMWARE: &str = "share/qemu";

/// The firmware files our machines open, found by tracing QEMU 7.2 (`strace -e
/// openat`) with the flags zos-vm passes: `-M microvm` with `-kernel` loads
/// `bios-microvm.bin` (qboot) and `pvh.bin` (the PVH entry of an ELF kernel); `-M q35`
/// loads `bios-256k.bin` (SeaBIOS), `kvmvapic.bin` and, for a virtio-net-pci NIC,
/// `efi-virtio.rom`; `linuxboot_dma.bin` is q35's `-kernel` loader.
pub const FIRMWARE_FILES: [&str; 6] = [
    "bios-microvm.bin",
    "pvh.bin",
    "bios-256k.bin",
    "kvmvapic.bin",
    "efi-virtio.rom",
    "linuxboot_dma.bin",
];

/// Where a distribution keeps QEMU's firmware, relative to its prefix (`/usr`):
/// QEMU's own, then Debian's SeaBIOS and iPXE packages.
const FIRMWARE_DIRS: [&str; 3] = ["share/qemu", "share/seabios", "lib/ipxe/qemu"];

/// Why a bundle could not be collected.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// `ldd` failed or said a library is missing.
    #[error("ldd {path}: {reason}")]
    Ldd {
        /// The binary or module.
        path: PathBuf,
        /// What ldd said.
        reason: String,
    },
    /// A file the bundle needs is not on the build host.
    #[error("{what}: not found (looked in {looked})")]
    Missing {
        /// The file.
        what: String,
        /// Where.
        looked: String,
    },
    /// The output directory exists already.
    #[error("{0}: exists (a bundle is collected into a new directory)")]
    Exists(PathBuf),
}

/// What [`collect`] put in the bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    /// The bundle's directory.
    pub dir: PathBuf,
    /// Every file, relative to `dir`, with its size in bytes.
    pub files: BTreeMap<PathBuf, u64>,
}

impl Bundle {
    /// The bytes of all its files.
    pub fn bytes(&self) -> u64 {
        self.files.values().sum()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError {
    let path = path.to_path_buf();
    move |source| BundleError::Io { path, source }
}

/// What `ldd` says of a binary.
struct Needs {
    /// (soname, resolved path).
    libs: Vec<(String, PathBuf)>,
    /// The line with an absolute path and no `=>`.
    loader: Option<PathBuf>,
}

/// The libraries `ldd` resolves for `binary`, and its loader.
fn ldd(binary: &Path) -> Result<Needs, BundleError> {
    let fail = |reason: String| BundleError::Ldd {
        path: binary.to_path_buf(),
        reason,
    };
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| fail(format!("not run: {e}")))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let mut libs = Vec::new();
    let mut loader = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let line = line.trim();
        if let Some((name, rest)) = line.split_once(" => ") {
            let path = rest.split(" (").next().unwrap_or("").trim();
            if path == "not found" || !path.starts_with('/') {
                return Err(fail(format!("{name} not found")));
            }
            libs.push((name.trim().to_string(), PathBuf::from(path)));
        } else if line.starts_with('/') {
            loader = Some(PathBuf::from(line.split(" (").next().unwrap_or(line)));
        }
        // linux-vdso.so.1 has no file.
    }
    Ok(Needs { libs, loader })
}

/// Copies `from` (symbolic links followed) to `dir/rel` with `mode`.
fn put(
    from: &Path,
    dir: &Path,
    rel: &Path,
    mode: u32,
    files: &mut BTreeMap<PathBuf, u64>,
) -> Result<(), BundleError> {
    let to = dir.join(rel);
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(io(parent))?;
    }
    let bytes = fs::copy(from, &to).map_err(io(from))?;
    fs::set_permissions(&to, fs::Permissions::from_mode(mode)).map_err(io(&to))?;
    files.insert(rel.to_path_buf(), bytes);
    Ok(())
}

/// Collects a bundle from the QEMU at `qemu` (installed under a prefix such as `/usr`:
/// its modules in `<prefix>/lib/<triplet>/qemu`, its firmware in `<prefix>/share/qemu`
/// and Debian's `share/seabios`, `lib/ipxe/qemu`) into the new directory `out`.
/// Libraries are named by their soname, their bytes those of the resolved file.
pub fn collect(qemu: &Path, out: &Path) -> Result<Bundle, BundleError> {
    let qemu = fs::canonicalize(qemu).map_err(io(qemu))?;
    if out.symlink_metadata().is_ok() {
        return Err(BundleError::Exists(out.to_path_buf()));
    }
    let prefix = qemu
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| BundleError::Missing {
            what: "QEMU's prefix".into(),
            looked: qemu.display().to_string(),
        })?
        .to_path_buf();
    fs::create_dir_all(out).map_err(io(out))?;
    fs::set_permissions(out, fs::Permissions::from_mode(0o755)).map_err(io(out))?;
    let mut files = BTreeMap::new();
    put(&qemu, out, Path::new(QEMU), 0o755, &mut files)?;

    // The accelerator modules: TCG is one in Debian's build.
    let mut modules = Vec::new();
    let mut looked = Vec::new();
    for dir in ["lib/x86_64-linux-gnu/qemu", "lib64/qemu", "lib/qemu"] {
        let dir = prefix.join(dir);
        looked.push(dir.display().to_string());
        let Ok(list) = fs::read_dir(&dir) else {
            continue;
        };
        for e in list.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("accel-") && name.ends_with("-x86_64.so") {
                modules.push(e.path());
            }
        }
        break;
    }
    modules.sort();

    let mut loader = None;
    let mut libs = BTreeMap::new();
    for binary in std::iter::once(&qemu).chain(&modules) {
        let needs = ldd(binary)?;
        loader = loader.or(needs.loader);
        libs.extend(needs.libs);
    }
    for m in &modules {
        let name = m.file_name().expect("a module file");
        put(m, out, &Path::new(MODULES).join(name), 0o644, &mut files)?;
    }
    let loader = loader.ok_or_else(|| BundleError::Ldd {
        path: qemu.clone(),
        reason: "no dynamic loader named".into(),
    })?;
    put(&loader, out, Path::new(LOADER), 0o755, &mut files)?;
    for (soname, path) in &libs {
        put(path, out, &Path::new(LIB).join(soname), 0o644, &mut files)?;
    }

    for name in FIRMWARE_FILES {
        let dirs: Vec<PathBuf> = FIRMWARE_DIRS.iter().map(|d| prefix.join(d)).collect();
        let from = dirs
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .ok_or_else(|| BundleError::Missing {
                what: name.to_string(),
                looked: dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        put(
            &from,
            out,
            &Path::new(FIRMWARE).join(name),
            0o644,
            &mut files,
        )?;
    }
    if modules.is_empty() {
        tracing::info!(looked = %looked.join(", "), "no accelerator modules: built in");
    }
    tracing::info!(
        qemu = %qemu.display(),
        bundle = %out.display(),
        files = files.len(),
        bytes = files.values().sum::<u64>(),
        "hypervisor bundle collected"
    );
    Ok(Bundle {
        dir: out.to_path_buf(),
        files,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The host's QEMU, collected: the layout zos-vm runs.
    #[test]
    fn the_hosts_qemu_is_collected_with_its_loader_libraries_modules_and_firmware() {
        let Some(qemu) = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("qemu-system-x86_64"))
            .find(|p| p.is_file())
        else {
            eprintln!("SKIP: the_hosts_qemu_is_collected: no qemu-system-x86_64 on PATH");
            return;
        };
        let tmp = zos_testkit::tempdir("bundle");
        let out = tmp.path().join("qemu");
        let b = collect(&qemu, &out).unwrap();
        assert!(b.files.contains_key(Path::new(QEMU)));
        assert!(b.files.contains_key(Path::new(LOADER)));
        for f in FIRMWARE_FILES {
            assert!(b.files.contains_key(&Path::new(FIRMWARE).join(f)), "{f}");
        }
        let libc = Path::new(LIB).join("libc.so.6");
        assert!(b.files.contains_key(&libc), "{:?}", b.files.keys());
        let mode = |rel: &str| fs::metadata(out.join(rel)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(LOADER), 0o755);
        assert_eq!(mode(QEMU), 0o755);
        // Every file is a regular file (no links into the build host).
        for rel in b.files.keys() {
            let m = out.join(rel).symlink_metadata().unwrap();
            assert!(m.is_file(), "{}", rel.display());
        }
        assert!(matches!(collect(&qemu, &out), Err(BundleError::Exists(_))));
    }
}
