//! The node's UEFI Secure Boot path (issue #17, docs/upgrade.md "Secure Boot"): the
//! kernel, the initramfs and the kernel command line in one PE, a **unified kernel
//! image** (systemd's EFI stub, Debian's systemd-boot-efi, with the three added as
//! sections by objcopy), signed with sbsigntool by the farm's Secure Boot key, on an EFI
//! system partition (FAT, `EFI/BOOT/BOOTX64.EFI`, by dosfstools and mtools). OVMF's
//! Secure Boot build boots it only when the signer's certificate is in its `db`.
//!
//! UEFI Secure Boot verifies RSA-2048/SHA-256 Authenticode signatures against X.509
//! certificates, so these keys are not the project's ed25519 keys: a platform key (PK),
//! a key-exchange key (KEK) and a signature database key (db), self-signed by openssl,
//! kept in `target/secureboot/` and made on first use; plus `other`, a key no firmware
//! here trusts, for the refusal test. The keys are enrolled into a copy of OVMF's
//! variable store by `virt-fw-vars` (the virt-firmware Python package, from PyPI: Debian
//! 12 does not package it), which writes the edk2 store on the host: no key is enrolled
//! from inside the firmware, and nothing is typed at a firmware menu.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

use crate::{packages, target_dir};

/// The Debian packages this path needs.
pub const PACKAGES: &[&str] = &[
    "systemd-boot-efi", // the EFI stub a unified kernel image is made from
    "sbsigntool",       // sbsign, sbverify
    "dosfstools",       // mkfs.vfat for the EFI system partition
    "mtools",           // files into it without mounting
    "ovmf",             // OVMF_CODE_4M.secboot.fd and the blank variable store
    "openssl",          // the keys and certificates
];

/// systemd's EFI stub (systemd-boot-efi).
const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// OVMF built with Secure Boot (and SMM, which it needs to keep its variables safe).
pub const OVMF_SECBOOT_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// OVMF's blank variable store (setup mode: no platform key).
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Who signed an image.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Signer {
    /// The farm's db key: its certificate is enrolled.
    Farm,
    /// A key whose certificate is enrolled nowhere.
    Other,
}

/// The Secure Boot keys in `dir`: `PK`, `KEK`, `db` and `other`, each a `.key` (RSA
/// private key) and a `.crt` (self-signed X.509).
pub struct Keys {
    dir: PathBuf,
}

impl Keys {
    /// The keys in `target/secureboot/`, made on first use; the tools installed.
    pub fn ensure() -> anyhow::Result<Keys> {
        packages::ensure(PACKAGES)?;
        packages::ensure_python_module("virt.firmware", "virt-firmware")?;
        let dir = target_dir().join("secureboot");
        std::fs::create_dir_all(&dir)?;
        for name in ["PK", "KEK", "db", "other"] {
            let (key, crt) = (
                dir.join(format!("{name}.key")),
                dir.join(format!("{name}.crt")),
            );
            if key.exists() && crt.exists() {
                continue;
            }
            run(Command::new("openssl")
                .args([
                    "req", "-quiet", "-new", "-x509", "-newkey", "rsa:2048", "-nodes",
                ])
                .args(["-sha256", "-days", "3650", "-subj"])
                .arg(format!("/CN=zosd test Secure Boot {name}/"))
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&crt))?;
        }
        Ok(Keys { dir })
    }

    fn pair(&self, name: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{name}.key")),
            self.dir.join(format!("{name}.crt")),
        )
    }

    /// The farm's db certificate: what a machine's firmware must hold in its `db`.
    pub fn db_certificate(&self) -> PathBuf {
        self.pair("db").1
    }

    /// `unsigned` signed by `signer` into `out` (sbsign).
    pub fn sign(&self, unsigned: &Path, signer: Signer, out: &Path) -> anyhow::Result<()> {
        let (key, crt) = self.pair(match signer {
            Signer::Farm => "db",
            Signer::Other => "other",
        });
        run(Command::new("sbsign")
            .arg("--key")
            .arg(key)
            .arg("--cert")
            .arg(crt)
            .arg("--output")
            .arg(out)
            .arg(unsigned))
    }

    /// A copy of OVMF's blank variable store at `out` with PK, KEK and db enrolled and
    /// Secure Boot on (user mode).
    pub fn enrolled_vars(&self, out: &Path) -> anyhow::Result<()> {
        // The owner GUID the certificates are enrolled under (any fixed one).
        const OWNER: &str = "7a0f3c52-2ed4-4a0a-9a6b-5a6f0d5e2b15";
        let crt = |n: &str| self.pair(n).1;
        run(Command::new("virt-fw-vars")
            .arg("--input")
            .arg(OVMF_VARS)
            .arg("--output")
            .arg(out)
            .args(["--set-pk", OWNER])
            .arg(crt("PK"))
            .args(["--add-kek", OWNER])
            .arg(crt("KEK"))
            .args(["--add-db", OWNER])
            .arg(crt("db"))
            .arg("--secure-boot"))
    }
}

/// The unified kernel image of `vmlinuz`, `initrd` and the command line `cmdline`, at
/// `out` (unsigned). The stub's own sections end below 0x20000; the added ones go at
/// fixed addresses above it, the kernel (under 16 MiB) at 32 MiB and the initramfs
/// above it, as the stub's documentation lays them out.
pub fn unified_image(
    vmlinuz: &Path,
    initrd: &Path,
    cmdline: &str,
    out: &Path,
) -> anyhow::Result<()> {
    let stage = out.with_extension("sections");
    std::fs::create_dir_all(&stage)?;
    let osrel = stage.join("os-release");
    std::fs::write(&osrel, "ID=zos\nNAME=\"Zero-OS node (zosd)\"\n")?;
    let cmd = stage.join("cmdline");
    std::fs::write(&cmd, cmdline)?;
    if std::fs::metadata(vmlinuz)?.len() >= 16 << 20 {
        bail!(
            "{} is 16 MiB or more: the sections would overlap",
            vmlinuz.display()
        );
    }
    let section = |name: &str, file: &Path, vma: u64| -> anyhow::Result<Vec<String>> {
        Ok(vec![
            "--add-section".into(),
            format!("{name}={}", file.to_str().context("utf-8 path")?),
            "--change-section-vma".into(),
            format!("{name}={vma:#x}"),
        ])
    };
    let mut args = Vec::new();
    args.extend(section(".osrel", &osrel, 0x20000)?);
    args.extend(section(".cmdline", &cmd, 0x30000)?);
    args.extend(section(".linux", vmlinuz, 0x200_0000)?);
    args.extend(section(".initrd", initrd, 0x300_0000)?);
    run(Command::new("objcopy").args(&args).arg(STUB).arg(out))
}

/// An EFI system partition image at `out` (48 MiB, FAT) with `efi` as the removable
/// media boot path `EFI/BOOT/BOOTX64.EFI`.
pub fn system_partition(efi: &Path, out: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(out);
    let f = std::fs::File::create(out)?;
    f.set_len(48 << 20)?;
    drop(f);
    run(Command::new("mkfs.vfat").args(["-n", "ZOS"]).arg(out))?;
    run(Command::new("mmd")
        .arg("-i")
        .arg(out)
        .args(["::/EFI", "::/EFI/BOOT"]))?;
    run(Command::new("mcopy")
        .arg("-i")
        .arg(out)
        .arg(efi)
        .arg("::/EFI/BOOT/BOOTX64.EFI"))
}

/// Runs `cmd`; its stderr as the error.
fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}",
            cmd,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
