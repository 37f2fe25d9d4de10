//! A node booted under QEMU from the built image, checked from the outside.
//!
//! - `node_boots_registers_and_keeps_its_key`: `cargo xtask node --check --fresh` builds
//!   the image (static zosd, modules, helpers), starts a private etcd, creates the farm,
//!   boots a node (TCG here) and waits until its console says it is registered and
//!   serving; the notary lists it under the farm. A second boot on the same disks (the
//!   first one ended with a hard power-off) comes back with the same node key.
//! - `iso_boots_from_a_usb_stick_under_uefi`: the ISO of `cargo xtask image` (with this
//!   node's command line) as a USB stick on q35 with OVMF: GRUB boots the kernel and the
//!   node serves (the path of a farmer's USB stick).
//! - `pxe_boot_registers`: the PXE set of `cargo xtask image` (with this node's command
//!   line) booted over the network on q35: SeaBIOS runs the NIC's iPXE ROM, QEMU's DHCP
//!   server names the iPXE script and its TFTP server serves the script, the kernel and
//!   the initramfs; the node registers and serves (the path of a farmer's PXE server).
//! - `secure_boot_admits_the_farms_key_only`: the unified kernel image (kernel,
//!   initramfs, this node's command line in one PE) signed by the farm's Secure Boot key
//!   boots under OVMF with Secure Boot enforced and the farm's keys enrolled (the EFI
//!   stub and the kernel both say Secure Boot is on) and the node serves; the same image
//!   signed by another key is refused by the firmware (`Access Denied`), which then
//!   finds nothing it may boot, and no kernel starts.
//! - `image_has_no_login_surface`: the archive's file list (read from the archive
//!   itself) has no shell, getty, sshd or busybox, and `/init` is a static binary.
//!
//! Without QEMU or etcd, a test prints a counted `SKIP:` line and passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::time::Duration;

use e2e::{on_path, skip};
use xtask::node as qemu;
use xtask::secureboot::Signer;
use xtask::status::poll_until;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("tests/e2e is two levels down")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// A node's serial console (firmware output is not always UTF-8).
fn console(name: &str) -> String {
    let path = target_dir().join("nodes").join(name).join("console.log");
    String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned()
}

/// Runs `cargo xtask args…` (the xtask alias is `cargo run -p xtask --`) and returns
/// what it printed; fails the test if it fails.
fn xtask(args: &[&str]) -> String {
    // Without this test's own CARGO_MANIFEST_DIR and such: the builds it starts are
    // the same as `cargo xtask`'s (xtask::cargo_command).
    let out = xtask::cargo_command()
        .args(["run", "--quiet", "-p", "xtask", "--"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running cargo");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("$ cargo xtask {}\n{stdout}", args.join(" "));
    assert!(
        out.status.success(),
        "cargo xtask {} failed ({}):\n{stdout}\n{stderr}",
        args.join(" "),
        out.status
    );
    stdout
}

/// The key in "<name>: <t> s: zosd: node <key> serving contracts from <url>".
fn serving_key(output: &str) -> String {
    let line = output
        .lines()
        .find(|l| l.contains(" serving contracts from "))
        .unwrap_or_else(|| panic!("no serving line in:\n{output}"));
    let after = line.split("zosd: node ").nth(1).expect("zosd: node <key>");
    let key = after.split_whitespace().next().unwrap().to_string();
    assert_eq!(key.len(), 64, "{line}");
    assert!(key.chars().all(|c| c.is_ascii_hexdigit()), "{line}");
    key
}

#[test]
fn node_boots_registers_and_keeps_its_key() {
    const NAME: &str = "node_boots_registers_and_keeps_its_key";
    for program in ["qemu-system-x86_64", "etcd"] {
        if !on_path(program) {
            skip(NAME, &format!("{program} is not installed"));
            return;
        }
    }
    let farm = "e2e-farm";
    let first = xtask(&[
        "node",
        "--check",
        "--fresh",
        "--name",
        "e2e",
        "--farm",
        farm,
        "--timeout",
        "600",
    ]);
    let key = serving_key(&first);
    assert!(
        first.contains(&format!("zosd: node {key} registered in farm {farm}")),
        "{first}"
    );
    // `zos node list --farm e2e-farm` as xtask ran it against the notary.
    let listed = first
        .split("$ zos node list")
        .nth(1)
        .unwrap_or_else(|| panic!("no node list in:\n{first}"));
    assert!(listed.contains(&format!("node      {key}")), "{listed}");
    assert!(listed.contains(&format!("farm      {farm}")), "{listed}");

    let console = console("e2e");
    assert!(
        console.contains("failed=0"),
        "a kernel module failed:\n{console}"
    );
    assert!(!console.contains("Kernel panic"), "{console}");

    // A hard reset (--check killed QEMU) and a boot on the same disks: same identity.
    let second = xtask(&[
        "node",
        "--check",
        "--no-build",
        "--name",
        "e2e",
        "--farm",
        farm,
        "--timeout",
        "600",
    ]);
    assert_eq!(serving_key(&second), key, "{second}");
}

#[test]
fn iso_boots_from_a_usb_stick_under_uefi() {
    const NAME: &str = "iso_boots_from_a_usb_stick_under_uefi";
    for program in ["qemu-system-x86_64", "etcd", "grub-mkrescue"] {
        if !on_path(program) {
            skip(NAME, &format!("{program} is not installed"));
            return;
        }
    }
    if !Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").exists() {
        skip(NAME, "no OVMF firmware (apt-get install ovmf)");
        return;
    }
    let out = xtask(&[
        "node",
        "--check",
        "--fresh",
        "--usb",
        "uefi",
        "--name",
        "e2e-usb",
        "--timeout",
        "900",
    ]);
    assert!(out.contains("USB stick, UEFI"), "{out}");
    let key = serving_key(&out);
    let console = console("e2e-usb");
    // OVMF's boot manager, then the kernel started by GRUB from the stick.
    assert!(console.contains("BdsDxe"), "{console}");
    assert!(console.contains("efi: EFI v"), "{console}");
    assert!(console.contains(&key));
}

#[test]
fn pxe_boot_registers() {
    const NAME: &str = "pxe_boot_registers";
    for program in ["qemu-system-x86_64", "etcd"] {
        if !on_path(program) {
            skip(NAME, &format!("{program} is not installed"));
            return;
        }
    }
    let farm = "e2e-pxe-farm";
    let out = xtask(&[
        "node",
        "--check",
        "--fresh",
        "--pxe",
        "--name",
        "e2e-pxe",
        "--farm",
        farm,
        "--timeout",
        "600",
    ]);
    assert!(out.contains("network boot (iPXE, TFTP)"), "{out}");
    let key = serving_key(&out);
    assert!(
        out.contains(&format!("zosd: node {key} registered in farm {farm}")),
        "{out}"
    );
    let console = console("e2e-pxe");
    // The command line as iPXE's script gave it: `initrd=` is the script's word, which
    // no direct kernel boot of QEMU's and no GRUB entry of the ISO puts there.
    let line = console
        .lines()
        .find(|l| l.contains("Command line: "))
        .unwrap_or_else(|| panic!("no kernel command line on the console:\n{console}"));
    assert!(
        line.contains("Command line: initrd=initramfs.cpio."),
        "not booted by the iPXE script: {line}"
    );
    assert!(line.contains(&format!("zos.farm={farm}")), "{line}");
    assert!(console.contains(&key));
}

#[test]
fn secure_boot_admits_the_farms_key_only() {
    const NAME: &str = "secure_boot_admits_the_farms_key_only";
    for program in ["qemu-system-x86_64", "etcd"] {
        if !on_path(program) {
            skip(NAME, &format!("{program} is not installed"));
            return;
        }
    }
    let out = xtask(&[
        "node",
        "--check",
        "--fresh",
        "--secure-boot",
        "farm",
        "--name",
        "e2e-sb",
        "--timeout",
        "900",
    ]);
    assert!(
        out.contains("Secure Boot, signed by the farm's key"),
        "{out}"
    );
    let key = serving_key(&out);
    let console = console("e2e-sb");
    assert!(
        console.contains("EFI stub: UEFI Secure Boot is enabled."),
        "{console}"
    );
    assert!(
        console.contains("secureboot: Secure boot enabled"),
        "{console}"
    );
    // The kernel locks itself down under Secure Boot: it loads signed modules only.
    // Debian's are, by the key built into it, so every module of the image loads.
    assert!(
        console.contains("failed=0"),
        "a kernel module failed:\n{console}"
    );
    assert!(console.contains(&key));

    // Signed by another key: the firmware refuses it and boots nothing.
    let files = qemu::boot_files(false).expect("the image built above");
    let accel = qemu::accel(&files.vmlinux);
    let spec = qemu::NodeSpec {
        name: "e2e-sb-other".into(),
        disks: 1,
        disk_gib: 1,
        memory_mib: 1024,
        cpus: 1,
        machine: qemu::Machine::Q35,
        cmdline: String::new(),
        fresh: true,
        index: 0,
        from: qemu::BootFrom::SecureBoot(Signer::Other),
        shares: Vec::new(),
        net: qemu::Net::User,
    };
    let mut node = qemu::boot(&files, &spec, accel).expect("starting QEMU");
    let refused = poll_until(
        Duration::from_secs(600),
        Duration::from_millis(200),
        || node.console_text(),
        |c| c.contains("No bootable option or device was found"),
    );
    node.kill();
    let console = refused.unwrap_or_else(|c| panic!("no refusal on the console:\n{c}"));
    assert!(
        console.contains("failed to load Boot0001") && console.contains("Access Denied"),
        "{console}"
    );
    assert!(
        !console.contains("Linux version"),
        "a kernel started:\n{console}"
    );
}

#[test]
fn image_has_no_login_surface() {
    const NAME: &str = "image_has_no_login_surface";
    let image = target_dir().join("image/initramfs.cpio.zst");
    if !image.exists() {
        skip(
            NAME,
            "no target/image/initramfs.cpio.zst (cargo xtask initramfs)",
        );
        return;
    }
    if !on_path("zstd") {
        skip(NAME, "zstd is not installed");
        return;
    }
    let out = Command::new("zstd")
        .args(["-dc", "-q"])
        .arg(&image)
        .output()
        .expect("running zstd");
    assert!(out.status.success());
    let entries = newc_entries(&out.stdout);
    let names: Vec<&str> = entries.iter().map(|(n, _, _)| n.as_str()).collect();
    for forbidden in [
        "sh", "bash", "dash", "ash", "zsh", "busybox", "getty", "agetty", "login", "sshd",
        "dropbear", "telnetd",
    ] {
        assert!(
            !names
                .iter()
                .any(|n| n.rsplit('/').next() == Some(forbidden)),
            "the image carries {forbidden}"
        );
    }
    for needed in [
        "init",
        "dev/console",
        "usr/sbin/mkfs.btrfs",
        "usr/sbin/nft",
        "lib64/ld-linux-x86-64.so.2",
    ] {
        assert!(names.contains(&needed), "no {needed} in {names:?}");
    }
    let (_, _, init) = entries.iter().find(|(n, _, _)| n == "init").unwrap();
    assert!(init.starts_with(b"\x7fELF"));
    assert!(!has_interpreter(init), "/init names a dynamic loader");
    let modules = names.iter().filter(|n| n.ends_with(".ko")).count();
    println!("{} entries, {modules} modules", names.len());
    assert!(modules > 20);
}

/// (name, mode, data) of every entry of a `newc` archive.
fn newc_entries(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
    let hex = |b: &[u8]| u32::from_str_radix(std::str::from_utf8(b).unwrap(), 16).unwrap();
    let pad = |n: usize| (4 - n % 4) % 4;
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let h = &bytes[at..at + 110];
        assert_eq!(&h[..6], b"070701", "newc magic at {at}");
        let field = |i: usize| hex(&h[6 + i * 8..6 + (i + 1) * 8]);
        let (mode, size, namesize) = (field(1), field(6) as usize, field(11) as usize);
        let name_start = at + 110;
        let name =
            String::from_utf8_lossy(&bytes[name_start..name_start + namesize - 1]).into_owned();
        let data_start = name_start + namesize + pad(110 + namesize);
        let data = bytes[data_start..data_start + size].to_vec();
        at = data_start + size + pad(size);
        if name == "TRAILER!!!" {
            return out;
        }
        out.push((name, mode, data));
    }
}

/// Whether a 64-bit little-endian ELF has a PT_INTERP program header.
fn has_interpreter(elf: &[u8]) -> bool {
    let u = |o: usize, n: usize| {
        elf[o..o + n]
            .iter()
            .rev()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    };
    let (phoff, phentsize, phnum) = (u(0x20, 8) as usize, u(0x36, 2) as usize, u(0x38, 2));
    (0..phnum as usize).any(|i| u(phoff + i * phentsize, 4) == 3)
}
