//! The end-to-end tests: nodes booted under QEMU from the built image, checked from the
//! outside. One test binary, so that its tests share the test harness's threads: two
//! booted nodes run side by side on this 2-core machine (a TCG guest leaves a core idle
//! most of the time), and the image is built once per run (`xtask::initramfs::build`
//! holds a lock across processes).
//!
//! - `booted`: a contract on a booted node through a hard reset, a notary outage, and a
//!   port scan of the node from the LAN.
//! - `node`: `cargo xtask node` registers a node that keeps its key, the USB stick under
//!   UEFI, and the image's file list without a login surface.
//! - `powercut`: ten power cuts at random moments, and a lost disk.
//! - `grid`: three booted nodes, a placement contract's replica moves off the one that
//!   loses power (`cargo xtask farm 3 --failover`).
//!
//! Run one group with a filter: `cargo test -p e2e --test qemu powercut -- --nocapture`.

mod booted;
mod grid;
mod node;
mod powercut;
