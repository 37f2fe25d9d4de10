//! Step 18: the node's own software, upgraded on booted nodes (`cargo xtask farm 3
//! --upgrade`): a release in two waves applied live, a broken one rolled back by the
//! node itself, refused releases, a hard reset back on the committed version, and a VM
//! from the hypervisor part of the release a node runs.

use super::section;

/// Step 18, on the image the booted step built.
pub fn run() -> anyhow::Result<()> {
    section("18. booted nodes upgrade themselves: a signed release in two waves, live (the container keeps its pid); a broken release rolls back by itself and halts the rollout; unsigned, unknown-key, tampered and downgrade releases are refused; a hard reset comes back on the committed version; a VM runs from the release's hypervisor");
    println!("$ cargo xtask farm 3 --upgrade --no-build");
    let figures = crate::upgrade::run(false)?;
    crate::upgrade::print(&figures);
    Ok(())
}
