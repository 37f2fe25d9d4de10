//! A UDP scan of every port of one address: a datagram to each port, then everything
//! that comes back, a UDP reply or any ICMP error from that address (a closed port
//! answers "port unreachable" unless a firewall drops the probe). Run it in the
//! namespace the address is reached from ([`crate::lan::Lan::run`]).
//!
//! The detector proves itself first: a probe to a closed port of `control` (an
//! address of this namespace, whose kernel answers) must come back as an ICMP error.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// What a scan saw.
#[derive(Debug, Default)]
pub struct UdpScan {
    /// Datagrams sent (one per port).
    pub probes: u64,
    /// Ports that answered with UDP.
    pub replies: Vec<u16>,
    /// ICMP messages from the target: (type, code).
    pub icmp: Vec<(u8, u8)>,
    /// ICMP errors from the control address (the detector's proof).
    pub control_icmp: u64,
    /// How long it took.
    pub elapsed: Duration,
}

/// A raw ICMP socket: every ICMP packet this namespace receives.
fn icmp_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK,
            libc::IPPROTO_ICMP,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads every ICMP packet waiting on `sock`: (source, type, code).
fn drain_icmp(sock: &OwnedFd) -> Vec<(Ipv4Addr, u8, u8)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        // SAFETY: recv(2) into a buffer of the length given, on an open socket.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            return out;
        }
        let p = &buf[..n as usize];
        // A raw IPv4 socket hands the IP header too.
        let ihl = usize::from(p[0] & 0x0f) * 4;
        if p.len() < ihl + 2 {
            continue;
        }
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        out.push((src, p[ihl], p[ihl + 1]));
    }
}

/// Scans every UDP port of `target`; `control` is a local address with a closed port.
pub fn scan(target: Ipv4Addr, control: Ipv4Addr, wait: Duration) -> anyhow::Result<UdpScan> {
    let started = Instant::now();
    let icmp = icmp_socket().context("a raw ICMP socket (root)")?;
    let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding a UDP socket")?;
    udp.set_nonblocking(true)?;
    let probe = [0x5au8; 32];
    let mut seen = UdpScan::default();

    // The detector's proof: a closed port of our own side answers.
    let closed = UdpSocket::bind((control, 0))?;
    let closed_port = closed.local_addr()?.port();
    drop(closed);
    udp.send_to(&probe, SocketAddrV4::new(control, closed_port))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.control_icmp == 0 && Instant::now() < deadline {
        seen.control_icmp += drain_icmp(&icmp)
            .iter()
            .filter(|(src, t, _)| *src == control && *t == 3)
            .count() as u64;
        std::thread::sleep(Duration::from_millis(10));
    }
    if seen.control_icmp == 0 {
        bail!("the scanner saw no ICMP error from {control}:{closed_port}: it would miss them from {target} too");
    }

    let collect = |seen: &mut UdpScan| {
        for (src, t, c) in drain_icmp(&icmp) {
            if src == target {
                seen.icmp.push((t, c));
            }
        }
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = udp.recv_from(&mut buf) {
            if from.ip() == std::net::IpAddr::V4(target) {
                seen.replies.push(from.port());
            }
        }
    };
    for port in 1..=u16::MAX {
        // A full socket buffer: wait for it to drain rather than skip the port.
        loop {
            match udp.send_to(&probe, SocketAddrV4::new(target, port)) {
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => return Err(e).with_context(|| format!("probing {target}:{port}")),
            }
        }
        seen.probes += 1;
        // Paced, so a TCG guest's queue is not overrun (a dropped probe proves nothing).
        if port % 512 == 0 {
            collect(&mut seen);
            std::thread::sleep(Duration::from_millis(15));
        }
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        collect(&mut seen);
        std::thread::sleep(Duration::from_millis(50));
    }
    collect(&mut seen);
    seen.elapsed = started.elapsed();
    Ok(seen)
}
