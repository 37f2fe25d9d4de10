//! `cargo xtask image`: boot media for a farmer (initramfs/README.md).
//!
//! - `target/image/zos.iso`: a hybrid ISO for a USB stick or a CD, booting with BIOS
//!   (GRUB i386-pc) and UEFI (GRUB x86_64-efi), made by `grub-mkrescue` (xorriso and
//!   mtools underneath); the kernel is the Debian bzImage, the initrd the archive of
//!   `cargo xtask initramfs`.
//! - `target/image/pxe/`: the same kernel and initramfs with an iPXE script.
//! - `target/image/zos.efi`: the same as one unified kernel image signed for Secure
//!   Boot, and `zos-esp.img`, an EFI system partition holding it ([`secureboot`]).
//!
//! The kernel command line carries the farm and the notary: `--farm ID --notary URL`
//! (and `--runmode`, `--debug`).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::initramfs::{self, human, Step};
use crate::secureboot;
use crate::{packages, target_dir};

/// What `grub-mkrescue` needs for BIOS and UEFI media.
pub const ISO_PACKAGES: &[&str] = &[
    "grub-common",
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "xorriso",
    "mtools",
];

/// The `zos.*` kernel parameters of a medium.
#[derive(Default, Clone)]
pub struct BootArgs {
    /// `zos.farm=`: the farm the node registers in; `None`: not on the command line.
    pub farm: Option<String>,
    /// `zos.notary=`: the notary's URL; `None`: not on the command line.
    pub notary: Option<String>,
    /// `zos.runmode=`; `None`: not on the command line.
    pub runmode: Option<String>,
    /// `zos.debug`: more verbose logs on the console.
    pub debug: bool,
}

impl BootArgs {
    /// Parses `--farm`, `--notary`, `--runmode`, `--debug`; returns the other words.
    pub fn parse(args: &[String]) -> anyhow::Result<(BootArgs, Vec<String>)> {
        let mut b = BootArgs::default();
        let mut rest = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut value = |name: &str| {
                it.next()
                    .cloned()
                    .with_context(|| format!("{name} needs a value"))
            };
            match a.as_str() {
                "--farm" => b.farm = Some(value("--farm")?),
                "--notary" => b.notary = Some(value("--notary")?),
                "--runmode" => b.runmode = Some(value("--runmode")?),
                "--debug" => b.debug = true,
                _ => rest.push(a.clone()),
            }
        }
        for v in [&b.farm, &b.notary, &b.runmode].into_iter().flatten() {
            // The words go into grub.cfg and an iPXE script unquoted.
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._:/@%+=,~".contains(c))
            {
                bail!("{v:?}: boot parameters are limited to [A-Za-z0-9-._:/@%+=,~]");
            }
        }
        Ok((b, rest))
    }

    /// `zos.farm=... zos.notary=...`.
    pub fn kernel_words(&self) -> String {
        let mut w = Vec::new();
        if let Some(f) = &self.farm {
            w.push(format!("zos.farm={f}"));
        }
        if let Some(n) = &self.notary {
            w.push(format!("zos.notary={n}"));
        }
        if let Some(r) = &self.runmode {
            w.push(format!("zos.runmode={r}"));
        }
        if self.debug {
            w.push("zos.debug".into());
        }
        w.join(" ")
    }
}

/// `cargo xtask image [--farm ID] [--notary URL] [--runmode M] [--debug]`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let (boot, rest) = BootArgs::parse(args)?;
    if let Some(a) = rest.first() {
        bail!("cargo xtask image: unknown option {a:?} (options: --farm ID --notary URL --runmode M --debug)");
    }
    packages::ensure(ISO_PACKAGES)?;
    let built = initramfs::build()?;
    initramfs::report(&built);
    let out = target_dir().join("image");
    let words = boot.kernel_words();
    let initrd_name = built
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .context("initramfs name")?
        .to_string();
    let vmlinuz = built.kernel.vmlinuz();

    let step = Step::start("the PXE set (kernel, initramfs, iPXE script)");
    let pxe = out.join("pxe");
    make_pxe(&pxe, &vmlinuz, &built.path, &words)?;
    step.done(pxe.display());

    let iso = out.join("zos.iso");
    let step = Step::start("the ISO (grub-mkrescue: BIOS and UEFI)");
    make_iso(&vmlinuz, &built.path, &words, &iso)?;
    step.done(human(size(&iso)?));
    println!("kernel command line: {words}");
    println!(
        "ISO (BIOS + UEFI) {}: {}",
        iso.display(),
        human(size(&iso)?)
    );
    println!("PXE set {}:", pxe.display());
    for f in ["vmlinuz", initrd_name.as_str(), PXE_SCRIPT] {
        println!("  {f:<22} {}", human(size(&pxe.join(f))?));
    }

    // Secure Boot: the unified kernel image signed by the farm's db key, on an EFI
    // system partition image (docs/upgrade.md "Secure Boot").
    let step = Step::start("the signed unified kernel image and its EFI system partition");
    let keys = secureboot::Keys::ensure()?;
    let unsigned = out.join("zos.unsigned.efi");
    let cmdline = format!("console=tty0 console=ttyS0,115200 {words}");
    secureboot::unified_image(&vmlinuz, &built.path, cmdline.trim(), &unsigned)?;
    let efi = out.join("zos.efi");
    keys.sign(&unsigned, secureboot::Signer::Farm, &efi)?;
    std::fs::remove_file(&unsigned)?;
    let esp = out.join("zos-esp.img");
    secureboot::system_partition(&efi, &esp)?;
    step.done(human(size(&efi)?));
    println!(
        "Secure Boot: {} (signed by {}), on the EFI system partition {}",
        efi.display(),
        keys.db_certificate().display(),
        esp.display()
    );
    Ok(())
}

/// The iPXE script's name in a PXE set: the boot file a DHCP server names.
pub const PXE_SCRIPT: &str = "zos.ipxe";

/// A PXE set in `dir` (emptied first): `vmlinuz`, the initramfs, and an iPXE script
/// ([`PXE_SCRIPT`]) that boots them with `words` on the kernel command line. The
/// script's URLs are relative: the set is served from one directory, over TFTP or HTTP.
pub fn make_pxe(dir: &Path, vmlinuz: &Path, initrd: &Path, words: &str) -> anyhow::Result<()> {
    let initrd_name = initrd
        .file_name()
        .and_then(|n| n.to_str())
        .context("initramfs name")?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    std::fs::copy(vmlinuz, dir.join("vmlinuz"))?;
    std::fs::copy(initrd, dir.join(initrd_name))?;
    // `initrd=` on the command line: the kernel's EFI stub needs it under UEFI iPXE.
    let script = format!(
        "#!ipxe\n# Zero-OS node (zosd)\nkernel vmlinuz initrd={initrd_name} console=tty0 console=ttyS0,115200 {words}\ninitrd {initrd_name}\nboot\n"
    );
    std::fs::write(dir.join(PXE_SCRIPT), script)?;
    Ok(())
}

/// A hybrid ISO (USB stick or CD; BIOS and UEFI) at `iso` booting `vmlinuz` with
/// `initrd` and the kernel command-line words `words` (serial and screen consoles).
pub fn make_iso(vmlinuz: &Path, initrd: &Path, words: &str, iso: &Path) -> anyhow::Result<()> {
    packages::ensure(ISO_PACKAGES)?;
    for platform in ["i386-pc", "x86_64-efi"] {
        if !Path::new("/usr/lib/grub").join(platform).exists() {
            bail!("GRUB {platform} is missing: the ISO would not boot there");
        }
    }
    let initrd_name = initrd
        .file_name()
        .and_then(|n| n.to_str())
        .context("initramfs name")?;
    let stage = iso.with_extension("root");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(stage.join("boot/grub"))?;
    std::fs::copy(vmlinuz, stage.join("boot/vmlinuz"))?;
    std::fs::copy(initrd, stage.join("boot").join(initrd_name))?;
    let grub = format!(
        "# Zero-OS node (zosd)\n\
         serial --unit=0 --speed=115200\n\
         terminal_input console serial\n\
         terminal_output console serial\n\
         set timeout=3\n\
         menuentry \"Zero-OS node (zosd)\" {{\n\
         \tlinux /boot/vmlinuz console=tty0 console=ttyS0,115200 {words}\n\
         \tinitrd /boot/{initrd_name}\n\
         }}\n"
    );
    std::fs::write(stage.join("boot/grub/grub.cfg"), grub)?;
    let _ = std::fs::remove_file(iso);
    let output = Command::new("grub-mkrescue")
        .arg("-o")
        .arg(iso)
        .arg(&stage)
        .output()
        .context("running grub-mkrescue")?;
    if !output.status.success() {
        bail!(
            "grub-mkrescue failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&stage);
    Ok(())
}

fn size(p: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(p)
        .with_context(|| format!("{}", p.display()))?
        .len())
}
