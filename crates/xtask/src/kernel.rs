//! The Debian kernel the images boot: `linux-image-amd64`'s current package, downloaded
//! with `apt-get download`, unpacked with `dpkg -x`, its `modules.dep` made with
//! `depmod -b`, and its PVH `vmlinux` extracted from the bzImage (QEMU's `-M microvm`
//! boots an ELF with a PVH note directly, without the decompressor: seconds faster
//! under TCG). Cached under `target/kernel/<package>/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::{packages, target_dir};

/// The unpacked Debian kernel package (see the module docs).
pub struct Kernel {
    /// `uname -r` of the kernel, e.g. `6.1.0-56-amd64`.
    pub release: String,
    /// The uncompressed ELF with the PVH entry note.
    pub vmlinux: PathBuf,
    /// `lib/modules/<release>` of the unpacked package, with `modules.dep`.
    pub modules: PathBuf,
}

/// The kernel, fetched and prepared on first use.
pub fn debian() -> anyhow::Result<Kernel> {
    packages::ensure(&["kmod", "xz-utils"])?;
    let package = image_package()?;
    let dir = target_dir().join("kernel").join(&package);
    let tree = dir.join("tree");
    let done = dir.join("ready");
    if !done.exists() {
        eprintln!("fetching the Debian kernel {package}");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        run(Command::new("apt-get")
            .args(["download", "-qq", &package])
            .current_dir(&dir))?;
        let deb = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download left no .deb")?;
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&tree))?;
        std::fs::remove_file(&deb)?;
        let release = release_of(&tree)?;
        run(Command::new("depmod").arg("-b").arg(&tree).arg(&release))?;
        let vmlinuz = tree.join(format!("boot/vmlinuz-{release}"));
        extract_vmlinux(&vmlinuz, &dir.join("vmlinux"))?;
        std::fs::write(&done, &release)?;
    }
    let release = std::fs::read_to_string(&done)?;
    Ok(Kernel {
        vmlinux: dir.join("vmlinux"),
        modules: tree.join("lib/modules").join(&release),
        release,
    })
}

impl Kernel {
    /// The unpacked package (`tree/`, with `boot/` and `lib/modules/`).
    fn tree(&self) -> &Path {
        self.modules
            .ancestors()
            .nth(3)
            .expect("modules is <tree>/lib/modules/<release>")
    }

    /// The bzImage (`boot/vmlinuz-<release>`): what boot loaders (GRUB, iPXE) load.
    pub fn vmlinuz(&self) -> PathBuf {
        self.tree().join(format!("boot/vmlinuz-{}", self.release))
    }

    /// The kernel's build configuration (`boot/config-<release>`).
    pub fn config(&self) -> PathBuf {
        self.tree().join(format!("boot/config-{}", self.release))
    }

    /// The module files for `names` and everything they depend on, dependencies
    /// first: the order to load them in.
    pub fn modules_for(&self, names: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
        let dep = std::fs::read_to_string(self.modules.join("modules.dep"))
            .context("reading modules.dep")?;
        let deps: HashMap<&str, Vec<&str>> = dep
            .lines()
            .filter_map(|l| {
                let (module, rest) = l.split_once(':')?;
                Some((module, rest.split_whitespace().collect()))
            })
            .collect();
        let by_name: HashMap<String, &str> =
            deps.keys().map(|path| (module_name(path), *path)).collect();
        let mut order: Vec<&str> = Vec::new();
        for name in names {
            let path = by_name
                .get(&name.replace('-', "_"))
                .with_context(|| format!("module {name} is not in {}", self.release))?;
            // modules.dep lists every (transitive) dependency, the deepest last.
            for d in deps[path].iter().rev().chain(std::iter::once(path)) {
                if !order.contains(d) {
                    order.push(d);
                }
            }
        }
        Ok(order.into_iter().map(|p| self.modules.join(p)).collect())
    }
}

/// `kernel/drivers/net/virtio_net.ko` -> `virtio_net`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split('.').next().unwrap_or(file).replace('-', "_")
}

/// The versioned package `linux-image-amd64` depends on.
fn image_package() -> anyhow::Result<String> {
    let out = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .context("running apt-cache")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
        .map(|v| format!("linux-image-{v}"))
        .context("linux-image-amd64 has no versioned kernel (run apt-get update?)")
}

fn release_of(tree: &Path) -> anyhow::Result<String> {
    std::fs::read_dir(tree.join("lib/modules"))?
        .flatten()
        .find_map(|e| e.file_name().into_string().ok())
        .context("the kernel package has no lib/modules")
}

/// The ELF inside a bzImage: the payload is the first xz stream in the file.
fn extract_vmlinux(bzimage: &Path, out: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(bzimage)?;
    const XZ_MAGIC: &[u8] = b"\xfd7zXZ\x00";
    let start = bytes
        .windows(XZ_MAGIC.len())
        .position(|w| w == XZ_MAGIC)
        .context("no xz payload in the bzImage")?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(out)?)
        .spawn()
        .context("running xz")?;
    let mut stdin = child.stdin.take().context("xz stdin")?;
    let payload = bytes[start..].to_vec();
    // xz stops reading after the stream: a write error on the rest is expected.
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(&payload);
    });
    let status = child.wait()?;
    let _ = writer.join();
    if !status.success() {
        bail!("xz could not decompress the kernel payload ({status})");
    }
    let elf = std::fs::read(out)?;
    if !elf.starts_with(b"\x7fELF") {
        bail!("the kernel payload is not an ELF");
    }
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
