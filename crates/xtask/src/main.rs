//! `cargo xtask <task>`: the project's tasks, in Rust so they run the same everywhere.
//!
//! - `demo`: the main job, end to end, on a fresh directory notary.
//! - `test`: everything CI runs (installs the Debian packages it needs first).
//! - `bench [NAME|all]`: benchmarks, each against a reference in the same run.
//! - `fuzz [TARGET] [--seconds N]`: coverage-guided fuzzing of the parsers (fuzz/).

use xtask::{bench, demo, flists, fuzz, image, initramfs, node, test};

mod man;

const USAGE: &str = "\
usage: cargo xtask <task>

tasks:
  demo [--etcd] [--keep] [--booted-only]
                run the flow end to end on a fresh directory notary (or, with --etcd,
                on a private etcd server): keys, blueprint, contract, signatures,
                verification, publish, list, cancel, and one refused contract for
                every refusal reason, a node (zosd run) with the sample workload and a
                micro-VM, the grid (three nodes, a node dies, its replica moves), then
                a node booted from the image under QEMU running the sample contract
                and the grid's failover on three booted nodes; --keep keeps the demo
                directory, --booted-only skips the zosd-run nodes and the VM
  test          install missing Debian packages, then fmt, clippy and every test tier
                (unit, integration, privileged against the real kernel and real etcd),
                the fuzz corpora replayed; counts the tests' SKIP lines and lists them
  flist [hello|vm] [DIR]
                build a sample workload and pack and sign it into a flist with a local
                store (default DIR: target/flists/<name>): hello is the container app
                (flists/hello), vm the micro-VM (the Debian kernel as a PVH vmlinux and
                an initrd with flists/vm-echo as its init)
  bench [NAME] [--no-build]
                benchmarks: contracts, engine, flist, storage, network, container, vm,
                grid, mesh and boot (booted nodes; --no-build boots the image as it
                is; boot takes --rounds N), or all
  fuzz [TARGET] [--seconds N] [--keep-going]
                coverage-guided fuzzing (cargo-fuzz, libFuzzer, stable Rust) of the
                parsers of untrusted input: contract, notary_record, flist_meta, dhcp,
                dns, sntp, cmdline; each target (or the one named) for N seconds
                (default 60), one at a time; prints executions and findings per
                target and fails on a finding; --keep-going fuzzes on past a crash
                (libFuzzer's fork mode) (docs/fuzzing.md)
  initramfs     the node's boot image: a static zosd as /init, the kernel modules a
                node needs, mkfs.btrfs, btrfs and nft with their libraries (no shell);
                target/image/initramfs.cpio.zst, sizes printed (initramfs/README.md)
  image [--farm ID] [--notary URL] [--runmode M] [--debug]
                boot media: target/image/zos.iso (USB/CD, BIOS and UEFI), a PXE set
                (target/image/pxe: kernel, initramfs, iPXE script) and the unified
                kernel image for Secure Boot, signed by the farm's key in
                target/secureboot (target/image/zos.efi, on zos-esp.img)
  node [--notary URL] [--farm ID] [--disks N] [--name NAME] [--check] [--fresh] ...
                boot one node under QEMU (TCG here, KVM where a probe boots) from the
                built image, with N virtio disks (default 2) and a NIC; without
                --notary a private etcd on the host loopback (the node reaches it at
                10.0.2.2) with the farm created; waits until it serves contracts;
                console in target/nodes/<name>/console.log. More: --machine
                microvm|q35, --memory MIB, --cpus N, --disk-gib N, --timeout SECS,
                --no-build (reuse the image), --debug (zos.debug), --usb bios|uefi
                (boot the ISO as a USB stick on q35 instead), --pxe (a network boot on
                q35: iPXE fetches the PXE set over QEMU's TFTP), --secure-boot
                farm|other (the signed unified kernel image under OVMF with Secure
                Boot enforced and the farm's keys enrolled; signed by another key, the
                firmware refuses it) (qemu/README.md)
  farm N [node options]
                boot N nodes on one notary
  farm N --failover [--no-build]
                the grid's failover on booted nodes (docs/grid.md): N >= 3 nodes on a
                private etcd, `zos bot run` on the host places a contract's 2 replicas,
                one node's QEMU is killed (a power cut), and the replica runs on another
                node at a higher epoch; prints the times, then stops everything
  farm 3 --mesh [--no-build]
                a tenant network across booted nodes (docs/network.md, Mesh): 3
                nodes on one LAN (a bridge in a zt- namespace, dnsmasq, etcd), two
                tenants' copies talk over WireGuard and never to each other, a capture
                on the bridge finds no clear tenant traffic, a UDP scan no answer, and
                after a power cut the moved replica is reached again; prints the times
  farm 3 --upgrade [--no-build]
                the node's self-upgrade on booted nodes (docs/upgrade.md): 3 nodes on
                one LAN with a release key pinned; a release in two waves (wave 2
                waits for wave 1) upgrades them live with the container's pid
                unchanged, a broken release rolls back by itself and halts the
                rollout, an unsigned, unknown-key, tampered and downgrade release are
                each refused by every node, a hard reset comes back on the
                committed version, and a VM runs from the hypervisor part of the
                release a node runs (TCG inside TCG); prints the times
  release VERSION --key KEY [--out DIR] [--base URL] [--publisher KEY]
                [--agent PATH] [--qemu PATH | --no-qemu]
                the node's agent (the image's static zosd, or PATH) and the hypervisor bundle
                (QEMU with its loader, libraries and firmware) packed as flists signed
                by the publisher key (default: KEY) and a release record signed by the
                release key KEY, in DIR (default target/releases/VERSION)
                (docs/upgrade.md)
  man [DIR]     the zos tool's man pages, one per command, from its clap definition
                (default DIR: target/man); read one with man -l DIR/zos.1
";

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run(&args[1..]),
        Some("test") => test::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("flist") => flists::run_task(&args[1..]),
        Some("initramfs") => initramfs::run(&args[1..]),
        Some("image") => image::run(&args[1..]),
        Some("node") => node::run_node(&args[1..]),
        Some("farm") => node::run_farm(&args[1..]),
        Some("man") => man::run(&args[1..]),
        Some("release") => xtask::release::run(&args[1..]),
        Some("-h" | "--help" | "help") | None => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown task {other:?}\n\n{USAGE}")),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cargo xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
