//! Real-kernel fixtures: the kit's world of `zt-<random>` network namespaces (one
//! playing the node, one playing the internet; crates/zos-testkit) so the host's root
//! namespace, its interfaces and its nft rules are never touched, given to
//! zos-network as its configuration. `Drop` removes every namespace with the world's
//! random tag, on success and on failure.
#![allow(dead_code)]

use std::path::PathBuf;

use zos_network::{Ipv4Subnet, Network, NetworkConfig};
// Each test binary (and the bench) uses some of these.
#[allow(unused_imports)]
pub use zos_testkit::netns::{accept_peer, run, without_counts, INET_IP, NODE_IP, RUN_DIR, UPLINK};

/// Fail loudly unless the machine can run privileged network tests; with
/// `ZOS_SKIP_PRIVILEGED=1` print a SKIP line instead and return false.
pub fn privileged(test: &str) -> bool {
    zos_testkit::Needs::root().networking().check(test)
}

/// The kit's [`zos_testkit::netns::World`] (its namespaces, probes and cleanup), and
/// the zos-network configuration that puts the node in it.
pub struct World(zos_testkit::netns::World);

impl World {
    pub fn new() -> World {
        World(zos_testkit::netns::World::new())
    }

    pub fn config(&self) -> NetworkConfig {
        let mut c = NetworkConfig::new(UPLINK);
        c.prefix = self.prefix.clone();
        c.run_dir = PathBuf::from(RUN_DIR);
        c.node_netns = Some(self.path(&self.node));
        c.transit = "100.127.0.0/16".parse::<Ipv4Subnet>().unwrap();
        c
    }

    pub fn network(&self) -> Network {
        Network::new(self.config()).unwrap()
    }
}

impl std::ops::Deref for World {
    type Target = zos_testkit::netns::World;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
