//! The node's uplink, brought up without any external program: a DHCPv4 client
//! ([`dhcp`]), an SNTP client to set the clock ([`sntp`]) under a policy that bounds
//! what unauthenticated time servers may do to it ([`clock`]), and a DNS stub resolver
//! for A records ([`dns`]); and how a booting node uses them ([`boot`]: the lease and
//! the clock kept) and keeps its clock floor in its state home ([`home_floor`]).
//!
//! The boot image has no dhclient, ntpd or shell, and zosd is linked statically
//! against glibc, whose resolver (NSS) does not work in a static binary: each of
//! these is a few hundred lines of Rust over blocking std sockets instead. All of
//! them are clients only: nothing here listens on a port a peer could connect to.
//! See docs/uplink.md.

pub mod boot;
pub mod clock;
pub mod dhcp;
pub mod dns;
pub mod home_floor;
mod link;
pub mod sntp;
mod sock;

pub use link::LinkError;
