//! `cargo xtask test`: everything CI runs.

use anyhow::bail;

use crate::{cargo, flists, packages, target_dir};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if !args.is_empty() {
        bail!("cargo xtask test takes no arguments");
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask test runs privileged tests (loop devices, namespaces, FUSE, containers): run it as root");
    }
    packages::ensure(packages::TEST_PACKAGES)?;
    packages::ensure_python_module("cryptography", "cryptography")?;
    cargo(&["fmt", "--all", "--check"])?;
    // The sample micro-VM (the Debian kernel and the vm-echo init): zos-vm's and
    // zosd's VM tests boot it, zos-init's boot test boots its kernel.
    cargo(&["build", "--quiet", "-p", "zos-cli"])?;
    let vm = flists::build_vm(
        &target_dir().join("flists/vm"),
        &target_dir().join("debug/zos"),
    )?;
    eprintln!("sample VM flist: {}", vm.fl.display());
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // One run over the workspace: unit tests, integration tests and the privileged
    // tests that drive the real kernel, etcd and libcontainer.
    cargo(&["test", "--workspace", "--no-fail-fast"])?;
    eprintln!("cargo xtask test: all tiers passed");
    Ok(())
}
