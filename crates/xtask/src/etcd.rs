//! A throwaway etcd server for `cargo xtask demo --etcd` and the end-to-end tests: the
//! test kit's (crates/zos-testkit), the one fixture every test and tool starts etcd
//! with.

pub use zos_testkit::etcd::{free_port, Etcd};
pub use zos_testkit::netns::in_netns;
