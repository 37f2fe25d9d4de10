//! UDP sockets pinned to one interface.
//!
//! Before the uplink has an address, DHCP has to broadcast from 0.0.0.0 and hear
//! broadcast replies: a UDP socket with `SO_BINDTODEVICE` does both without a raw
//! socket (the kernel picks the bound device for 255.255.255.255 and accepts
//! limited broadcasts on a device with no address yet), and it never hears what
//! arrives on another interface. The options are set before `bind` so the port is
//! taken on that device only.

use std::ffi::OsString;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    bind, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
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

/// A client socket for one exchange with `server`: an ephemeral port, connected at
/// once, so the kernel delivers only the server's datagrams and the socket is never a
/// listener (it shows as connected in /proc/net/udp, which the heartbeat reports).
pub fn connected_udp(server: SocketAddr) -> std::io::Result<UdpSocket> {
    let local: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local)?;
    sock.connect(server)?;
    Ok(sock)
}
