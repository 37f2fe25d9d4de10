//! `cargo xtask flist`: builds the sample workload (flists/hello, a static binary),
//! lays out its root filesystem, and packs and signs it into a local flist store.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::{cargo_env, target_dir};

/// What `build` produced.
pub struct SampleFlist {
    /// The `.fl` file; `<fl>.sig` beside it.
    pub fl: PathBuf,
    /// `dir://` URL of the block store.
    pub store: String,
    /// The publisher's public key (hex) and secret key file.
    pub publisher: String,
    pub publisher_key: PathBuf,
    /// sha256 of the `.fl` bytes, the pin a blueprint carries.
    pub sha256: String,
}

/// Builds the hello flist under `out` (created if missing), using the `zos` binary.
pub fn build(out: &Path, zos: &Path) -> anyhow::Result<SampleFlist> {
    std::fs::create_dir_all(out)?;
    // Static, so the flist needs nothing but the binary. A target dir of its own: the
    // flags differ from the workspace's.
    let static_target = target_dir().join("static");
    cargo_env(
        &[
            "build",
            "--quiet",
            "--release",
            "-p",
            "hello",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
            static_target.to_str().context("utf-8 target dir")?,
        ],
        &[("RUSTFLAGS", "-C target-feature=+crt-static")],
    )?;
    let binary = static_target.join("x86_64-unknown-linux-gnu/release/hello");

    let rootfs = out.join("rootfs");
    let _ = std::fs::remove_dir_all(&rootfs);
    for dir in ["data", "tmp", "etc", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(dir))?;
    }
    std::fs::copy(&binary, rootfs.join("hello")).context("copying the hello binary")?;
    std::fs::write(rootfs.join("etc/motd"), "a zosd sample workload\n")?;

    let publisher_key = out.join("publisher.key");
    let publisher = if publisher_key.exists() {
        run(zos, &["key", "show", path(&publisher_key)?])?
    } else {
        run(zos, &["key", "new", "--out", path(&publisher_key)?])?
    };
    let store_dir = out.join("store");
    let store = format!("dir://{}", store_dir.display());
    let fl = out.join("hello.fl");
    run(
        zos,
        &[
            "flist",
            "pack",
            path(&rootfs)?,
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

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("paths are utf-8 here")
}

fn run(zos: &Path, args: &[&str]) -> anyhow::Result<String> {
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

/// `cargo xtask flist [DIR]`.
pub fn run_task(args: &[String]) -> anyhow::Result<()> {
    let out = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("flists/hello"));
    crate::cargo(&["build", "--quiet", "-p", "zos-cli"])?;
    let zos = target_dir().join("debug/zos");
    let f = build(&out, &zos)?;
    println!("flist     {}", f.fl.display());
    println!("signature {}.sig", f.fl.display());
    println!("store     {}", f.store);
    println!("sha256    {}", f.sha256);
    println!("publisher {} ({})", f.publisher, f.publisher_key.display());
    Ok(())
}
