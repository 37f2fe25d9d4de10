//! Installs the Debian packages the project needs, only when they are missing.

use std::process::{Command, Stdio};

use anyhow::{bail, Context};

/// Packages every test tier needs on a fresh Debian 12 machine.
pub const TEST_PACKAGES: &[&str] = &[
    "etcd-server",        // the etcd:// notary backend, tested against a real server
    "btrfs-progs",        // storage pools
    "e2fsprogs",          // a foreign filesystem the storage tests must refuse
    "util-linux",         // losetup for loop devices
    "nftables",           // tenant NAT and isolation
    "iproute2",           // namespaces in network tests
    "iputils-ping",       // reachability checks in network tests
    "libseccomp-dev",     // youki's libcontainer links libseccomp
    "libelf-dev",         // libbpf-sys (the cgroup v2 device program) builds libbpf from source
    "zlib1g-dev",         // and links zlib
    "gcc",                // C code of build scripts; the container attack tests' probe tool
    "libc6-dev",          // its headers and libc
    "busybox-static",     // a test workload inside container tests (never in the image)
    "qemu-system-x86",    // micro-VMs (zos-vm, zosd) and the boot tests, under TCG here
    "ipxe-qemu",          // the NIC's iPXE ROM for the network boot test
    "grub-common",        // grub-mkrescue: the ISO the USB boot test boots
    "grub-pc-bin",        // its BIOS part (files only: nothing is installed on the host's disk)
    "grub-efi-amd64-bin", // its UEFI part (files only)
    "xorriso",            // grub-mkrescue writes the ISO with it
    "mtools",             // and the EFI system partition in it
    "ovmf",               // UEFI firmware for the USB boot test
    "systemd-boot-efi",   // the EFI stub of the unified kernel image (Secure Boot test)
    "sbsigntool",         // signs it
    "dosfstools",         // its EFI system partition
    "kmod",               // depmod for the Debian kernel's modules.dep
    "xz-utils",           // the kernel's xz payload, extracted as a PVH vmlinux
    "cpio",               // reads back the initrds xtask writes (a unit test)
    "dnsmasq-base",       // a real DHCP and DNS server for zos-uplink's client tests
    "tcpdump",            // the mesh test's capture on the booted nodes' LAN
    "chrony",             // a real NTP server (chronyd) for zos-uplink's SNTP test
    "rsyslog",            // a real syslog receiver for zos-logship's delivery tests
    "rsyslog-openssl",    // its TLS listener (the pinned-CA tests)
    "openssl",            // the test CA those tests make
    "prometheus",         // a real remote-write receiver for zos-metrics' tests
    "groff-base",         // renders the generated man pages in zos-cli's tests
    "tmux",               // a real terminal for zos farm top's screen test
    "pkg-config",
];

/// Packages the demo needs: a node on a loop-file pool, in namespaces of its own.
pub const DEMO_PACKAGES: &[&str] = &[
    "etcd-server",     // --etcd, and the booted farm's notary (step 17)
    "btrfs-progs",     // pools
    "nftables",        // tenant NAT and isolation, the node firewall
    "iproute2",        // the demo's node and internet namespaces
    "util-linux",      // losetup and umount for the demo's cleanup
    "libseccomp-dev",  // zosd links youki's libcontainer, which links libseccomp
    "libelf-dev",      // libbpf-sys (the cgroup v2 device program) builds libbpf from source
    "zlib1g-dev",      // and links zlib
    "qemu-system-x86", // the micro-VM step
    "kmod",            // depmod for the sample VM's kernel modules
    "xz-utils",        // the sample VM's kernel, extracted as a PVH vmlinux
    "pkg-config",
];

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

/// `apt-get install` whatever of `pkgs` is missing (running `apt-get update` first).
pub fn ensure(pkgs: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get (is this Debian, and are we root?)")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt(&args)
}

/// Makes sure python3 can import `module`, installing `pip_pkg` with pip if not.
pub fn ensure_python_module(module: &str, pip_pkg: &str) -> anyhow::Result<()> {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        return Ok(());
    }
    eprintln!("installing python package {pip_pkg}");
    let status = Command::new("python3")
        .args(["-m", "pip", "install", "-q", pip_pkg])
        .status()
        .context("running pip")?;
    if !status.success() {
        bail!("pip install {pip_pkg} failed ({status})");
    }
    Ok(())
}
