//! UDP sockets pinned to one interface.
//!
//! Before the uplink has an address, DHCP has to broadcast from 0.0.0.0 and hear
//! broadcast replies: a UDP socket with `SO_BINDTODEVICE` does both without a raw
//! socket (the kernel picks the bound device for 255.255.255.255 and accepts
//! limited broadcasts on a device with no address yet), and it never hears what
//! arrives on another interface. The options are set before `bind` so the port is
//! taken on that device only.

use std::ffi::OsString;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
    SockaddrStorage,
};

/// A blocking UDP socket on `iface`, bound to `local`, allowed to broadcast.
pub fn udp_on_device(iface: &str, local: SocketAddrV4) -> nix::Result<UdpSocket> {
    let fd = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // Another socket on the same port but another device (one client per NIC) must
    // not make bind fail.
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    setsockopt(&fd, sockopt::BindToDevice, &OsString::from(iface))?;
    setsockopt(&fd, sockopt::Broadcast, &true)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(local))?;
    Ok(UdpSocket::from(fd))
}

/// A client socket for one exchange with `server`: `connect` on a fresh socket picks
/// an ephemeral port and fixes the peer in one step, so the kernel delivers only the
/// server's datagrams and the socket is never, even for an instant, a bound
/// unconnected one (a listener; /proc/net/udp, which the heartbeat reports, shows it
/// connected).
pub fn connected_udp(server: SocketAddr) -> std::io::Result<UdpSocket> {
    let family = match server {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    connect(fd.as_raw_fd(), &SockaddrStorage::from(server))?;
    Ok(UdpSocket::from(fd))
}
