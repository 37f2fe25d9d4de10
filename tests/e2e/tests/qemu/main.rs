//! The end-to-end tests: nodes booted under QEMU from the built image, checked from the
//! outside. One test binary, so that its tests share the test harness's threads: two
//! booted nodes run side by side on this 2-core machine (a TCG guest leaves a core idle
//! most of the time), and the image is built once per run (`xtask::initramfs::build`
//! holds a lock across processes).
//!
//! - `booted`: a contract on a booted node through a hard reset, a notary outage, and a
//!   port scan of the node from the LAN.
//! - `node`: `cargo xtask node` registers a node that keeps its key; the USB stick under
//!   UEFI, the network boot (iPXE), Secure Boot with the farm's key and not another's;
//!   the image's file list without a login surface.
//! - `crash`: ten power cuts at random moments, and a lost disk. The longest test: its
//!   module's name sorts before most others because libtest starts tests in name order,
//!   so it starts early and overlaps them instead of running alone at the end.
//! - `mesh`: three booted nodes on one LAN, two tenants' networks across them over
//!   WireGuard: private answers, isolation, a capture, a UDP scan, and the grid's move
//!   of a replica off the node that loses power (`cargo xtask farm 3 --mesh`).
//! - `upgrade`: three booted nodes with a release key pinned: a release in waves applied
//!   live, a broken one rolled back, four refused, a hard reset on the committed version,
//!   and a VM from the release's hypervisor part (`cargo xtask farm 3 --upgrade`).
//!
//! Run one group with a filter: `cargo test -p e2e --test qemu crash -- --nocapture`.

mod booted;
mod crash;
mod mesh;
mod node;
mod upgrade;
