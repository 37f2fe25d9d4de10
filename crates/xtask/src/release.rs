//! `cargo xtask release VERSION --key KEY [--out DIR] [--base URL] [--publisher KEY]
//! [--agent PATH] [--qemu PATH | --no-qemu]`: builds the node's agent and hypervisor and
//! signs them as a release (docs/upgrade.md).
//!
//! 1. zosd, the static release build the image's `/init` is (`initramfs::static_zosd`;
//!    `--agent PATH`: another static binary), stripped, is laid out as `/zosd` of a tree.
//!    The version is the record's: the agent reports the version of the slot PID 1
//!    started it from, so the same build is released under any version; the hypervisor bundle is collected
//!    from the build host's QEMU (`--qemu`, else `qemu-system-x86_64` in PATH) with
//!    its loader, libraries, modules and firmware (`zos_release::hypervisor::collect`;
//!    `--no-qemu`: a release without one, `parts.qemu` absent);
//! 2. each tree is packed as a flist (`DIR/zosd.fl`, `DIR/qemu.fl`, their blocks in
//!    `DIR/store`) and signed by the publisher key (`DIR/<part>.fl.sig`; the release
//!    key unless `--publisher` names another);
//! 3. the release record, `{version, parts: {zosd, qemu}, signed_at, key}` with the
//!    release key's signature over `sha256(jcs(release))`, is written to
//!    `DIR/release.json`;
//! 4. the record is checked as a node checks it (`zos_release::verify_release_bytes`)
//!    and, for a `dir://` release, both parts fetched back through
//!    `zos_release::fetch_part` (pin, signature, every block) and compared file by
//!    file.
//!
//! DIR defaults to `target/releases/VERSION`. The part's URL and store are `dir://` paths
//! under DIR unless `--base URL` says where DIR is served (`URL/zosd.fl`, `URL/store`).
//! KEY is created (mode 0600) when it does not exist. A version is released once: an
//! existing `DIR/release.json` is not replaced.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use zos_contract::deployment::FlistRef;
use zos_contract::{Digest, SecretKey};
use zos_flist::{DirAccess, PackOptions, PackReport, Router};
use zos_release::{Parts, Release, SignedRelease, Version};

use crate::initramfs::{human, static_zosd};

const USAGE: &str = "usage: cargo xtask release VERSION --key KEY [--out DIR] [--base URL] \
     [--publisher KEY] [--agent PATH] [--qemu PATH | --no-qemu]";

struct Args {
    version: Version,
    key: PathBuf,
    publisher: Option<PathBuf>,
    out: Option<PathBuf>,
    base: Option<String>,
    agent: Option<PathBuf>,
    qemu: Option<PathBuf>,
    no_qemu: bool,
}

fn parse(args: &[String]) -> anyhow::Result<Args> {
    let mut version = None;
    let mut no_qemu = false;
    let (mut key, mut publisher, mut out, mut base) = (None, None, None, None);
    let (mut agent, mut qemu) = (None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().context(USAGE);
        match a.as_str() {
            "--key" => key = Some(PathBuf::from(value()?)),
            "--publisher" => publisher = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--base" => base = Some(value()?.trim_end_matches('/').to_string()),
            "--agent" => agent = Some(PathBuf::from(value()?)),
            "--qemu" => qemu = Some(PathBuf::from(value()?)),
            "--no-qemu" => no_qemu = true,
            v if version.is_none() && !v.starts_with('-') => {
                version = Some(v.parse::<Version>().context(USAGE)?)
            }
            other => bail!("unexpected {other:?}\n{USAGE}"),
        }
    }
    Ok(Args {
        version: version.context(USAGE)?,
        key: key.context(USAGE)?,
        publisher,
        out,
        base,
        agent,
        qemu,
        no_qemu,
    })
}

/// The secret key at `path`, created when missing.
fn key_at(path: &Path, what: &str) -> anyhow::Result<SecretKey> {
    if path.exists() {
        return SecretKey::load(path).with_context(|| format!("the {what} key"));
    }
    let key = SecretKey::generate()?;
    key.save_new(path)?;
    println!(
        "new {what} key {} in {} (mode 0600)",
        key.public(),
        path.display()
    );
    Ok(key)
}

/// `cargo xtask release ...`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let a = parse(args)?;
    if a.no_qemu && a.qemu.is_some() {
        bail!("--qemu and --no-qemu together\n{USAGE}");
    }
    let out = a.out.clone().unwrap_or_else(|| {
        crate::target_dir()
            .join("releases")
            .join(a.version.to_string())
    });
    let record_path = out.join("release.json");
    if record_path.exists() {
        bail!(
            "{} exists: version {} is released already (a version is released once)",
            record_path.display(),
            a.version
        );
    }
    let release_key = key_at(&a.key, "release")?;
    let publisher = match &a.publisher {
        Some(p) => key_at(p, "publisher")?,
        None => release_key.clone(),
    };

    // 1. The agent, as the image's /init is built (or the one named).
    let zosd = match &a.agent {
        Some(p) => p.clone(),
        None => static_zosd()?,
    };
    std::fs::create_dir_all(&out)?;
    let out = out.canonicalize()?;
    let work = tempfile::Builder::new()
        .prefix(".rootfs-")
        .tempdir_in(&out)?;
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir(&rootfs)?;
    let agent = rootfs.join("zosd");
    std::fs::copy(&zosd, &agent).context("copying zosd")?;
    let status = Command::new("strip")
        .arg("--strip-all")
        .arg(&agent)
        .status()?;
    if !status.success() {
        bail!("strip --strip-all {} failed ({status})", agent.display());
    }

    // The hypervisor bundle, from the build host's QEMU.
    let bundle = if a.no_qemu {
        None
    } else {
        let host_qemu = match &a.qemu {
            Some(p) => p.clone(),
            None => which("qemu-system-x86_64")?,
        };
        let bundle = zos_release::hypervisor::collect(&host_qemu, &work.path().join("qemu"))
            .with_context(|| {
                format!(
                    "collecting the hypervisor bundle from {}",
                    host_qemu.display()
                )
            })?;
        Some((host_qemu, bundle))
    };

    // 2. Packed and signed.
    let store_dir = out.join("store");
    let local_store = format!("dir://{}", store_dir.display());
    let publish = |name: &str, tree: &Path| -> anyhow::Result<(FlistRef, PackReport)> {
        let fl = out.join(format!("{name}.fl"));
        let report = zos_flist::pack(
            tree,
            &fl,
            &Router::parse(std::slice::from_ref(&local_store))?,
            &PackOptions::default(),
        )?;
        zos_flist::sign_file(&fl, &publisher)?;
        let (url, store) = match &a.base {
            Some(base) => (format!("{base}/{name}.fl"), format!("{base}/store")),
            None => (format!("dir://{}", fl.display()), local_store.clone()),
        };
        let part = FlistRef {
            url,
            sha256: Digest::of(&std::fs::read(&fl)?),
            stores: vec![store],
            publishers: vec![publisher.public()],
        };
        Ok((part, report))
    };
    let (part, report) = publish("zosd", &rootfs)?;
    let qemu_published = match &bundle {
        Some((_, b)) => Some(publish("qemu", &b.dir)?),
        None => None,
    };

    // 3. The signed record.
    let signed_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let release = Release {
        version: a.version,
        parts: Parts {
            zosd: part,
            qemu: qemu_published.as_ref().map(|(part, _)| part.clone()),
        },
        rollback: false,
        signed_at,
        key: release_key.public(),
    };
    let signed = SignedRelease::sign(release, &release_key);
    let mut text = serde_json::to_string_pretty(&signed.to_value())?;
    text.push('\n');
    let tmp = out.join(".release.json.tmp");
    std::fs::write(&tmp, &text)?;
    std::fs::rename(&tmp, &record_path)?;

    // 4. Checked as a node checks it.
    let pinned: BTreeSet<_> = [release_key.public()].into();
    let below = Version::new(0, 0, 0);
    if a.version != below {
        zos_release::verify_release_bytes(text.as_bytes(), &pinned, &below)
            .context("the record just written does not verify")?;
    }
    let fetched_back = if a.base.is_none() {
        let access = DirAccess::under([&out]);
        let slot = work.path().join("slot");
        zos_release::fetch_part("zosd", &signed.release.parts.zosd, &access, &slot, 1 << 30)?;
        if std::fs::read(slot.join("zosd"))? != std::fs::read(&agent)? {
            bail!("the agent fetched back from the release differs from the one packed");
        }
        if let (Some((_, bundle)), Some(qemu)) = (&bundle, &signed.release.parts.qemu) {
            let slot = work.path().join("slot-qemu");
            zos_release::fetch_part("qemu", qemu, &access, &slot, 1 << 30)?;
            for rel in bundle.files.keys() {
                if std::fs::read(slot.join(rel))? != std::fs::read(bundle.dir.join(rel))? {
                    bail!(
                        "{} of the hypervisor fetched back differs from the one packed",
                        rel.display()
                    );
                }
            }
        }
        "fetched back and compared"
    } else {
        "not fetched back (served at --base)"
    };

    println!("release   {} ({})", a.version, record_path.display());
    println!(
        "digest    {}",
        SignedRelease::digest_of(&signed.release).to_hex()
    );
    println!("key       {} ({})", release_key.public(), a.key.display());
    println!(
        "zosd      {} ({} stripped, {} blocks), {fetched_back}",
        out.join("zosd.fl").display(),
        human(report.bytes),
        report.blocks
    );
    println!("          sha256 {}", signed.release.parts.zosd.sha256);
    match (&bundle, &qemu_published) {
        (Some((host_qemu, _)), Some((part, r))) => {
            println!(
                "qemu      {} ({} in {} files from {}, {} blocks), {fetched_back}",
                out.join("qemu.fl").display(),
                human(r.bytes),
                r.files,
                host_qemu.display(),
                r.blocks
            );
            println!("          sha256 {}", part.sha256);
        }
        _ => println!("qemu      not in this release (--no-qemu)"),
    }
    println!("signature DIR/<part>.fl.sig by {}", publisher.public());
    println!("store     {}", store_dir.display());
    Ok(())
}

/// `name` in PATH.
fn which(name: &str) -> anyhow::Result<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name}: not in PATH (--qemu PATH names another)"))
}
