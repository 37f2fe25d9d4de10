//! What crosses a LAN between nodes: tcpdump on the LAN's bridge into a pcap file, and
//! a reader of that file that sorts the IPv4 packets between two sets of addresses
//! (the mesh scenario's proof that tenant traffic between nodes is WireGuard only).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// tcpdump writing every frame of `interface` to a file; stopped by [`Capture::stop`]
/// or on drop.
pub struct Capture {
    child: Option<Child>,
    file: PathBuf,
}

impl Capture {
    /// Starts tcpdump on `interface` (in the caller's network namespace: run it inside
    /// [`crate::lan::Lan::run`]) into `file`, and waits until it listens.
    pub fn start(interface: &str, file: &Path) -> anyhow::Result<Capture> {
        crate::packages::ensure(&["tcpdump"])?;
        let _ = std::fs::remove_file(file);
        let err = file.with_extension("err");
        // --immediate-mode: each packet handed over as it comes (else the kernel holds
        // them in blocks, and a stop can lose the last ones); -U: each written at once,
        // so the file can be read while tcpdump runs; -s 0: whole frames, the payload
        // is what is searched.
        let child = Command::new("tcpdump")
            .args([
                "-i",
                interface,
                "-n",
                "--immediate-mode",
                "-U",
                "-s",
                "0",
                "-w",
            ])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err)?)
            .spawn()
            .context("starting tcpdump (Debian package tcpdump)")?;
        let mut capture = Capture {
            child: Some(child),
            file: file.to_path_buf(),
        };
        // tcpdump says "listening on <if>" on stderr once its socket is bound.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let said = std::fs::read_to_string(&err).unwrap_or_default();
            if said.contains("listening on") {
                return Ok(capture);
            }
            if let Some(c) = capture.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("tcpdump exited ({status}): {}", said.trim());
                }
            }
            if Instant::now() > deadline {
                bail!("tcpdump did not start listening: {}", said.trim());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a captured packet holds `bytes` (at most `timeout`): the sign that
    /// everything sent before it is in the file too.
    pub fn wait_for(&self, bytes: &[u8], timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let file = std::fs::read(&self.file).unwrap_or_default();
            if let Ok(packets) = read_pcap(&file) {
                if packets.iter().any(|p| contains(&p.frame, bytes)) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the capture did not see {:?} within {timeout:?}",
                    String::from_utf8_lossy(bytes)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops tcpdump (SIGINT: it flushes) and reads the file.
    pub fn stop(mut self) -> anyhow::Result<Vec<Packet>> {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid, which it still is (not reaped).
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGINT) };
            let _ = c.wait();
        }
        read_pcap(&std::fs::read(&self.file)?)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One IPv4 packet of a capture.
#[derive(Debug, Clone)]
pub struct Packet {
    /// The source address.
    pub src: Ipv4Addr,
    /// The destination address.
    pub dst: Ipv4Addr,
    /// The IP protocol number (6 TCP, 17 UDP, 1 ICMP).
    pub proto: u8,
    /// The UDP or TCP source port (0 for other protocols).
    pub src_port: u16,
    /// The UDP or TCP destination port (0 for other protocols).
    pub dst_port: u16,
    /// The whole frame.
    pub frame: Vec<u8>,
}

const ETHERTYPE_IPV4: u16 = 0x0800;
const LINKTYPE_ETHERNET: u32 = 1;

/// The IPv4 packets of a pcap file (Ethernet frames; others are skipped).
pub fn read_pcap(bytes: &[u8]) -> anyhow::Result<Vec<Packet>> {
    if bytes.len() < 24 {
        bail!("not a pcap file: {} bytes", bytes.len());
    }
    let magic = u32::from_le_bytes(bytes[0..4].try_into()?);
    let le = match magic {
        0xa1b2c3d4 | 0xa1b23c4d => true,
        0xd4c3b2a1 | 0x4d3cb2a1 => false,
        m => bail!("not a pcap file (magic {m:#x})"),
    };
    let u32_at = |b: &[u8], at: usize| -> u32 {
        let a: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
        if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    if u32_at(bytes, 20) != LINKTYPE_ETHERNET {
        bail!("the capture is not of Ethernet frames");
    }
    let mut out = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let caplen = u32_at(bytes, at + 8) as usize;
        let start = at + 16;
        let Some(frame) = bytes.get(start..start + caplen) else {
            break; // cut short by the stop
        };
        at = start + caplen;
        if let Some(p) = parse_frame(frame) {
            out.push(p);
        }
    }
    Ok(out)
}

fn parse_frame(frame: &[u8]) -> Option<Packet> {
    let ethertype = u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?);
    if ethertype != ETHERTYPE_IPV4 {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let proto = *ip.get(9)?;
    let src = Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(12..16)?).ok()?);
    let dst = Ipv4Addr::from(<[u8; 4]>::try_from(ip.get(16..20)?).ok()?);
    let (src_port, dst_port) = match proto {
        6 | 17 => {
            let l4 = ip.get(ihl..ihl + 4)?;
            (
                u16::from_be_bytes([l4[0], l4[1]]),
                u16::from_be_bytes([l4[2], l4[3]]),
            )
        }
        _ => (0, 0),
    };
    Some(Packet {
        src,
        dst,
        proto,
        src_port,
        dst_port,
        frame: frame.to_vec(),
    })
}

/// What the packets between `nodes` (both ends one of them) were.
#[derive(Debug, Default)]
pub struct Between {
    /// UDP packets by (lower port, higher port) of the pair.
    pub udp: BTreeMap<(u16, u16), u64>,
    /// Every packet that was not UDP: (protocol, src, dst, src port, dst port).
    pub other: Vec<(u8, Ipv4Addr, Ipv4Addr, u16, u16)>,
    /// Packets whose bytes hold the marker.
    pub with_marker: u64,
    /// All packets between nodes.
    pub total: u64,
}

/// Sorts the packets whose two ends are both in `nodes`, looking for `marker`.
pub fn between(packets: &[Packet], nodes: &[Ipv4Addr], marker: &[u8]) -> Between {
    let mut b = Between::default();
    for p in packets
        .iter()
        .filter(|p| nodes.contains(&p.src) && nodes.contains(&p.dst))
    {
        b.total += 1;
        if contains(&p.frame, marker) {
            b.with_marker += 1;
        }
        if p.proto == 17 {
            let key = (p.src_port.min(p.dst_port), p.src_port.max(p.dst_port));
            *b.udp.entry(key).or_default() += 1;
        } else {
            b.other
                .push((p.proto, p.src, p.dst, p.src_port, p.dst_port));
        }
    }
    b
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(proto: u8, src: [u8; 4], dst: [u8; 4], ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        ip.extend_from_slice(&src);
        ip.extend_from_slice(&dst);
        ip.extend_from_slice(&ports.0.to_be_bytes());
        ip.extend_from_slice(&ports.1.to_be_bytes());
        ip.extend_from_slice(&[0, 0, 0, 0]);
        ip.extend_from_slice(payload);
        f.extend_from_slice(&ip);
        f
    }

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for v in [0xa1b2c3d4u32, 0x0004_0002, 0, 0, 65535, LINKTYPE_ETHERNET] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for f in frames {
            for v in [0u32, 0, f.len() as u32, f.len() as u32] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(f);
        }
        out
    }

    #[test]
    fn packets_between_nodes_are_sorted_and_searched() {
        let (a, b, gw) = ([10, 0, 0, 50], [10, 0, 0, 51], [10, 0, 0, 1]);
        let file = pcap(&[
            frame(17, a, b, (40000, 51820), b"sealed"),
            frame(17, b, a, (51820, 40000), b"sealed"),
            frame(6, a, b, (5555, 8080), b"xx zt-marker yy"),
            frame(6, a, gw, (5556, 2379), b"zt-marker"),
        ]);
        let packets = read_pcap(&file).unwrap();
        assert_eq!(packets.len(), 4);
        let nodes = [Ipv4Addr::from(a), Ipv4Addr::from(b)];
        let seen = between(&packets, &nodes, b"zt-marker");
        assert_eq!(seen.total, 3);
        assert_eq!(seen.udp.get(&(40000, 51820)), Some(&2));
        assert_eq!(seen.other.len(), 1);
        // The packet to the gateway is not between nodes.
        assert_eq!(seen.with_marker, 1);
    }

    #[test]
    fn a_file_that_is_not_a_capture_is_an_error() {
        assert!(read_pcap(b"short").is_err());
        assert!(read_pcap(&[0u8; 24]).is_err());
    }
}
