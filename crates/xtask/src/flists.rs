//! `cargo xtask flist`: builds the sample workloads, lays out their root filesystems,
//! and packs and signs them into local flist stores.
//!
//! - `hello` (flists/hello): a container, one static binary.
//! - `vm` (flists/vm-echo): a micro-VM: the Debian kernel as a PVH `vmlinux` and an
//!   initrd holding the static guest init and the virtio modules it loads.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::cpio::Cpio;
use crate::{cargo_env, root, target_dir};

/// What `build` produced.
pub struct SampleFlist {
    /// The `.fl` file; `<fl>.sig` beside it.
    pub fl: PathBuf,
    /// `dir://` URL of the block store.
    pub store: String,
    /// The publisher's public key (hex) and secret key file.
    pub publisher: String,
    /// The file holding the publisher's secret key.
    pub publisher_key: PathBuf,
    /// sha256 of the `.fl` bytes, the pin a blueprint carries.
    pub sha256: String,
}

/// The guest modules the VM's init loads: the virtio-mmio transport of `-M microvm`,
/// the NIC and the disks (dependencies are added from modules.dep).
const VM_MODULES: &[&str] = &["virtio_mmio", "virtio_net", "virtio_blk"];

/// Builds `package` as a static binary (a target dir of its own: the flags differ from
/// the workspace's) and returns its path.
pub fn static_binary(package: &str) -> anyhow::Result<PathBuf> {
    let static_target = target_dir().join("static");
    cargo_env(
        &[
            "build",
            "--quiet",
            "--release",
            "-p",
            package,
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
            static_target.to_str().context("utf-8 target dir")?,
        ],
        &[("RUSTFLAGS", "-C target-feature=+crt-static")],
    )?;
    Ok(static_target.join(format!("x86_64-unknown-linux-gnu/release/{package}")))
}

/// Builds the hello flist under `out` (created if missing), using the `zos` binary.
pub fn build(out: &Path, zos: &Path) -> anyhow::Result<SampleFlist> {
    std::fs::create_dir_all(out)?;
    let binary = static_binary("hello")?;
    let rootfs = out.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    for dir in ["data", "tmp", "etc", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    std::fs::copy(&binary, rootfs.join("hello")).context("copying the hello binary")?;
    std::fs::write(rootfs.join("etc/motd"), "a zosd sample workload\n")?;
    pack(out, zos, &rootfs, "hello")
}

/// Builds the micro-VM flist under `out`: `/boot/vmlinux` and `/boot/initrd.img`.
pub fn build_vm(out: &Path, zos: &Path) -> anyhow::Result<SampleFlist> {
    std::fs::create_dir_all(out)?;
    let kernel = crate::kernel::debian()?;
    let init = static_binary("vm-echo")?;
    let rootfs = out.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::create_dir_all(rootfs.join("boot"))?;
    std::fs::copy(&kernel.vmlinux, rootfs.join("boot/vmlinux")).context("copying vmlinux")?;

    let initrd = std::fs::File::create(rootfs.join("boot/initrd.img"))?;
    let mut cpio = Cpio::new(std::io::BufWriter::new(initrd));
    for dir in ["proc", "sys", "dev", "lib", "lib/modules"] {
        cpio.dir(dir)?;
    }
    cpio.copy("init", &init)?;
    let mut order = String::new();
    for module in kernel.modules_for(VM_MODULES)? {
        let file = module
            .file_name()
            .and_then(|f| f.to_str())
            .context("module name")?;
        let name = format!("lib/modules/{file}");
        cpio.copy(&name, &module)?;
        order.push_str(&format!("/{name}\n"));
    }
    cpio.file("lib/modules/load-order", 0o644, order.as_bytes())?;
    cpio.finish()?;
    pack(out, zos, &rootfs, "vm")
}

/// Packs `rootfs` into `<out>/<name>.fl` with a store under `out`, signed by the
/// publisher key kept in `out` (created on first use).
fn pack(out: &Path, zos: &Path, rootfs: &Path, name: &str) -> anyhow::Result<SampleFlist> {
    let publisher_key = out.join("publisher.key");
    let publisher = if publisher_key.exists() {
        run(zos, &["key", "show", path(&publisher_key)?])?
    } else {
        run(zos, &["key", "new", "--out", path(&publisher_key)?])?
    };
    let store_dir = out.join("store");
    let store = format!("dir://{}", store_dir.display());
    let fl = out.join(format!("{name}.fl"));
    run(
        zos,
        &[
            "flist",
            "pack",
            path(rootfs)?,
            "--store",
            &store,
            "-o",
            path(&fl)?,
            "--sign",
            path(&publisher_key)?,
        ],
    )?;
    let sha256 = sha256_hex(&fl)?;
    Ok(SampleFlist {
        fl,
        store,
        publisher,
        publisher_key,
        sha256,
    })
}

/// A path as the `&str` a command line takes.
pub fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("paths are utf-8 here")
}

/// Runs the `zos` tool; its trimmed stdout, or its stderr as the error.
pub fn run(zos: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(zos).args(args).output()?;
    if !out.status.success() {
        bail!(
            "zos {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// sha256 of a file with `sha256sum` (coreutils), so xtask needs no hashing crate.
fn sha256_hex(file: &Path) -> anyhow::Result<String> {
    let out = Command::new("sha256sum").arg(file).output()?;
    if !out.status.success() {
        bail!("sha256sum {}", file.display());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}

/// `cargo xtask flist [hello|vm] [DIR]`.
pub fn run_task(args: &[String]) -> anyhow::Result<()> {
    let (which, rest) = match args.first().map(String::as_str) {
        Some(w @ ("hello" | "vm")) => (w, &args[1..]),
        _ => ("hello", args),
    };
    let out = rest
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("flists").join(which));
    crate::cargo(&["build", "--quiet", "-p", "zos-cli"])?;
    let zos = target_dir().join("debug/zos");
    let f = match which {
        "vm" => build_vm(&out, &zos)?,
        _ => build(&out, &zos)?,
    };
    println!("flist     {}", f.fl.display());
    println!("signature {}.sig", f.fl.display());
    println!("store     {}", f.store);
    println!("sha256    {}", f.sha256);
    println!("publisher {} ({})", f.publisher, f.publisher_key.display());
    Ok(())
}

/// The example blueprint `docs/examples/<file>` with its placeholder flist (`<fl>`)
/// replaced by `flist`: its url, pin, store and publisher.
pub fn pinned_blueprint(file: &str, fl: &str, flist: &SampleFlist) -> anyhow::Result<String> {
    let source = std::fs::read_to_string(root().join("docs/examples").join(file))?;
    let blueprint = source
        .replace(
            &format!("url = \"dir:///var/lib/zos/flists/{fl}\""),
            &format!("url = \"dir://{}\"", flist.fl.display()),
        )
        .replace(
            "sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"",
            &format!("sha256 = \"{}\"", flist.sha256),
        )
        .replace(
            "stores = [\"dir:///var/lib/zos/store\"]",
            &format!("stores = [\"{}\"]", flist.store),
        )
        .replace(
            "publishers = []",
            &format!("publishers = [\"{}\"]", flist.publisher),
        );
    if !blueprint.contains(&flist.sha256) || blueprint.contains("/var/lib/zos/") {
        bail!("docs/examples/{file} changed: update the demo's flist substitution");
    }
    Ok(blueprint)
}
