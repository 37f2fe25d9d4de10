//! What a node reports about itself, read from /proc and /sys.
//!
//! Each source has a parser that takes the file's text (tested on fixtures) and a thin
//! reader. Decisions:
//!
//! - **CPUs**: the `processor` entries of /proc/cpuinfo (the machine, not zosd's
//!   affinity); when that file lists none (some architectures), the CPUs in zosd's
//!   scheduler affinity mask.
//! - **NICs**: only interfaces with a `device` link in `/sys/class/net/<name>/`, i.e.
//!   backed by hardware. `lo`, bridges, veths, taps, vxlans and ifbs live under
//!   /sys/devices/virtual/net and have none: most are zosd's own per-contract plumbing,
//!   which comes and goes and says nothing about the machine. All-zero MACs are skipped.
//! - **DMI**: /sys/class/dmi/id/{sys_vendor,product_name,product_serial}; absent files
//!   (no DMI, or not root for the serial) and empty values are left out.
//! - **Listening sockets**: /proc/net/{tcp,tcp6,udp,udp6} of the *node's* network
//!   namespace: TCP sockets in LISTEN (state `0A`) and UDP sockets that are bound and not
//!   connected (state `07` with a zero remote address), which is what receives
//!   datagrams from anyone. Connected sockets (zosd's notary connections, a resolver's
//!   query) are not a way in and are not listed. A missing tcp6/udp6 file (IPv6
//!   disabled) means no such sockets. A UDP socket that no process holds (no
//!   `/proc/<pid>/fd` link names its inode) is the kernel's own: a WireGuard link's
//!   socket is one, and the heartbeat labels it (`heartbeat::label_wireguard`).

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use crate::heartbeat::{Proto, Socket};
use crate::registration::{valid_mac, Dmi, Nic};

/// Why something could not be detected.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// A /proc or /sys file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The /proc or /sys file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A file's text is not in the format expected.
    #[error("{path}: {reason}")]
    Parse {
        /// The /proc or /sys file.
        path: PathBuf,
        /// What did not parse.
        reason: String,
    },
    /// The network namespace whose sockets were asked for could not be entered.
    #[error("entering network namespace {path}: {source}")]
    Netns {
        /// The namespace file (`/proc/<pid>/ns/net`, `/run/netns/<name>`, ...).
        path: PathBuf,
        /// The error of `setns`.
        #[source]
        source: nix::Error,
    },
}

fn read(path: &Path) -> Result<String, DetectError> {
    fs::read_to_string(path).map_err(|source| DetectError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn parse_err(path: &Path, reason: impl Into<String>) -> DetectError {
    DetectError::Parse {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------
// CPUs, memory, uptime

/// The number of `processor` entries in /proc/cpuinfo text.
pub fn parse_cpuinfo(text: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(name, _)| name.trim() == "processor")
        })
        .count() as u64
}

/// The CPUs in this process's scheduler affinity mask.
pub fn affinity_cpus() -> u64 {
    use nix::sched::{sched_getaffinity, CpuSet};
    match sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..CpuSet::count())
            .filter(|&i| set.is_set(i).unwrap_or(false))
            .count()
            .max(1) as u64,
        Err(_) => 1,
    }
}

/// The machine's logical CPUs (see the module docs).
pub fn logical_cpus() -> u64 {
    match fs::read_to_string("/proc/cpuinfo").map(|t| parse_cpuinfo(&t)) {
        Ok(n) if n > 0 => n,
        _ => affinity_cpus(),
    }
}

/// What /proc/meminfo says about memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemInfo {
    /// MemTotal: the RAM the kernel manages, in bytes.
    pub total_bytes: u64,
    /// MemAvailable: what can be allocated without swapping.
    pub available_bytes: u64,
}

impl MemInfo {
    /// Memory in use: total minus available.
    pub fn used_bytes(&self) -> u64 {
        self.total_bytes.saturating_sub(self.available_bytes)
    }
}

/// Parses /proc/meminfo text (`MemTotal:  16303412 kB`).
pub fn parse_meminfo(text: &str) -> Result<MemInfo, String> {
    let field = |name: &str| -> Result<u64, String> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .ok_or_else(|| format!("no {name}"))?;
        let kib = line.trim().trim_end_matches("kB").trim();
        kib.parse::<u64>()
            .map(|k| k.saturating_mul(1024))
            .map_err(|_| format!("{name}: {line:?} is not a number of kB"))
    };
    Ok(MemInfo {
        total_bytes: field("MemTotal")?,
        available_bytes: field("MemAvailable")?,
    })
}

/// The machine's memory, from /proc/meminfo.
pub fn memory() -> Result<MemInfo, DetectError> {
    let path = Path::new("/proc/meminfo");
    parse_meminfo(&read(path)?).map_err(|r| parse_err(path, r))
}

/// Whole seconds since boot from /proc/uptime text (`3600.52 7000.10`).
pub fn parse_uptime(text: &str) -> Result<u64, String> {
    let first = text.split_whitespace().next().ok_or("empty")?;
    let secs: f64 = first
        .parse()
        .map_err(|_| format!("{first:?} is not a number"))?;
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("{first:?} is not a duration"));
    }
    Ok(secs as u64)
}

/// Whole seconds since boot, from /proc/uptime.
pub fn uptime() -> Result<u64, DetectError> {
    let path = Path::new("/proc/uptime");
    parse_uptime(&read(path)?).map_err(|r| parse_err(path, r))
}

/// `VmRSS` from a `/proc/<pid>/status` text, in bytes.
pub fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib * 1024)
}

/// Resident memory of this process, and of PID 1 when PID 1 runs the same executable
/// (zosd as the node's init; 0 otherwise).
pub fn zosd_rss() -> Result<(u64, u64), DetectError> {
    let own = Path::new("/proc/self/status");
    let agent = parse_vm_rss(&read(own)?).ok_or_else(|| parse_err(own, "no VmRSS"))?;
    // PID 1 moved the image onto a tmpfs after it started: its own executable reads
    // "/init (deleted)" while the agent's is "/init".
    let exe = |pid: &str| {
        std::fs::read_link(format!("/proc/{pid}/exe")).map(|p| {
            let p = p.to_string_lossy().into_owned();
            p.strip_suffix(" (deleted)").map(str::to_owned).unwrap_or(p)
        })
    };
    let same_exe = matches!((exe("self"), exe("1")), (Ok(a), Ok(b)) if a == b);
    let init = if same_exe {
        let path = Path::new("/proc/1/status");
        parse_vm_rss(&read(path)?).unwrap_or(0)
    } else {
        0
    };
    Ok((agent, init))
}

// ---------------------------------------------------------------------------------
// NICs and DMI

/// Normalises a sysfs `address`: trimmed, lowercase; `None` when it is not a MAC or is
/// all zeros.
pub fn parse_mac(text: &str) -> Option<String> {
    let mac = text.trim().to_ascii_lowercase();
    (valid_mac(&mac) && mac.split(':').any(|o| o != "00")).then_some(mac)
}

/// The hardware NICs under a /sys/class/net directory, sorted by name.
pub fn nics_in(class_net: &Path) -> Result<Vec<Nic>, DetectError> {
    let entries = fs::read_dir(class_net).map_err(|source| DetectError::Io {
        path: class_net.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        // No `device` link: a virtual interface (see the module docs).
        if fs::symlink_metadata(dir.join("device")).is_err() {
            continue;
        }
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(mac) = fs::read_to_string(dir.join("address"))
            .ok()
            .and_then(|a| parse_mac(&a))
        else {
            continue;
        };
        out.push(Nic { name, mac });
    }
    out.sort();
    Ok(out)
}

/// The machine's hardware NICs, from /sys/class/net (see the module docs).
pub fn nics() -> Result<Vec<Nic>, DetectError> {
    nics_in(Path::new("/sys/class/net"))
}

/// The DMI identity under a /sys/class/dmi/id directory; missing files are left out.
pub fn dmi_in(dir: &Path) -> Dmi {
    let get = |file: &str| {
        fs::read_to_string(dir.join(file))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
    };
    Dmi {
        vendor: get("sys_vendor"),
        product: get("product_name"),
        serial: get("product_serial"),
    }
}

/// The machine's DMI identity, from /sys/class/dmi/id; fields it cannot read are `None`.
pub fn dmi() -> Dmi {
    dmi_in(Path::new("/sys/class/dmi/id"))
}

// ---------------------------------------------------------------------------------
// Listening sockets

/// A /proc/net address: 8 (IPv4) or 32 (IPv6) hex digits, each 32-bit word printed in
/// host byte order, then `:` and the port in hex.
fn parse_endpoint(s: &str) -> Option<(IpAddr, u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = addr.get(i * 8..i * 8 + 8)?;
        // The kernel prints the raw (network order) bytes as a native integer.
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some((ip, port))
}

/// TCP_LISTEN and TCP_CLOSE (an unconnected UDP socket) in /proc/net state codes.
const TCP_LISTEN: &str = "0A";
const UDP_UNCONNECTED: &str = "07";

/// The listening sockets in the text of `/proc/net/<proto>`: TCP in LISTEN, UDP bound and
/// unconnected. A line that does not have the kernel's layout is an error: a report
/// that silently skipped it would claim less than the truth.
pub fn parse_proc_net(proto: Proto, text: &str) -> Result<Vec<Socket>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let bad = |what: &str| format!("line {}: {what}: {line:?}", n + 1);
        if f.len() < 10 {
            return Err(bad("too few fields"));
        }
        let (address, port) = parse_endpoint(f[1]).ok_or_else(|| bad("local address"))?;
        let (remote, remote_port) = parse_endpoint(f[2]).ok_or_else(|| bad("remote address"))?;
        let listening = if proto.is_tcp() {
            f[3] == TCP_LISTEN
        } else {
            f[3] == UDP_UNCONNECTED && remote.is_unspecified() && remote_port == 0
        };
        if !listening {
            continue;
        }
        out.push(Socket {
            proto,
            address,
            port,
            uid: f[7].parse().map_err(|_| bad("uid"))?,
            inode: f[9].parse().map_err(|_| bad("inode"))?,
            label: None,
        });
    }
    Ok(out)
}

/// The listening sockets of the namespace whose /proc/net files are in `dir`.
pub fn listening_sockets_in(dir: &Path) -> Result<Vec<Socket>, DetectError> {
    let mut out = Vec::new();
    for proto in Proto::ALL {
        let path = dir.join(proto.file());
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            // No IPv6 in this kernel or namespace: no IPv6 sockets.
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    && !matches!(proto, Proto::Tcp | Proto::Udp) =>
            {
                continue
            }
            Err(source) => return Err(DetectError::Io { path, source }),
        };
        out.extend(parse_proc_net(proto, &text).map_err(|r| parse_err(&path, r))?);
    }
    out.sort();
    Ok(out)
}

/// The listening sockets of the node's network namespace: `netns` (a namespace file,
/// e.g. /run/netns/node) when the node is not zosd's own namespace, else zosd's.
///
/// For another namespace a short-lived thread enters it and reads
/// /proc/thread-self/net, which follows the reading thread's namespace; the rest of
/// zosd never changes namespace.
pub fn listening_sockets(netns: Option<&Path>) -> Result<Vec<Socket>, DetectError> {
    let Some(ns) = netns else {
        // /proc/self/net is the namespace of zosd's main thread.
        return listening_sockets_in(Path::new("/proc/self/net"));
    };
    let ns = ns.to_path_buf();
    std::thread::Builder::new()
        .name("zos-netns-sockets".into())
        .spawn(move || {
            let file = fs::File::open(&ns).map_err(|source| DetectError::Io {
                path: ns.clone(),
                source,
            })?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|source| {
                DetectError::Netns {
                    path: ns.clone(),
                    source,
                }
            })?;
            listening_sockets_in(Path::new("/proc/thread-self/net"))
        })
        .map_err(|source| DetectError::Io {
            path: PathBuf::from("thread"),
            source,
        })?
        .join()
        .unwrap_or_else(|_| {
            Err(DetectError::Io {
                path: PathBuf::from("/proc/thread-self/net"),
                source: io::Error::other("the socket reader thread panicked"),
            })
        })
}

/// Every socket inode some process has open: the `socket:[inode]` targets of the
/// `<pid>/fd/*` links under `proc` (/proc). A listening socket that is not among them is
/// the kernel's own, which no process can read from: a WireGuard link's (or a VXLAN
/// device's). A process that ends while it is read is skipped: its sockets went with it.
/// Threads that unshared their file table are not looked at (zosd starts none).
pub fn held_socket_inodes_in(proc: &Path) -> Result<BTreeSet<u64>, DetectError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DetectError::Io { path, source }
    };
    let gone = |e: &io::Error| {
        e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(nix::libc::ESRCH)
    };
    let mut held = BTreeSet::new();
    for entry in fs::read_dir(proc).map_err(io_err(proc))? {
        let entry = entry.map_err(io_err(proc))?;
        if !entry
            .file_name()
            .to_str()
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let fd_dir = entry.path().join("fd");
        let fds = match fs::read_dir(&fd_dir) {
            Ok(fds) => fds,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(io_err(&fd_dir)(e)),
        };
        for fd in fds {
            let fd = match fd {
                Ok(fd) => fd,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(io_err(&fd_dir)(e)),
            };
            // An fd closed between the listing and the read: not held any more.
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok());
            if let Some(inode) = inode {
                held.insert(inode);
            }
        }
    }
    Ok(held)
}

/// [`held_socket_inodes_in`] of /proc.
pub fn held_socket_inodes() -> Result<BTreeSet<u64>, DetectError> {
    held_socket_inodes_in(Path::new("/proc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_in_bytes() {
        let status = "Name:\tzosd\nVmHWM:\t   20000 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(
            parse_vm_rss("Name:\tkthreadd\n"),
            None,
            "kernel threads have none"
        );
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
        let (agent, init) = zosd_rss().unwrap();
        assert!(agent > 0);
        assert_eq!(init, 0, "PID 1 here is not this test binary");
    }

    #[test]
    fn cpuinfo_counts_processors() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: x processor y\n\nprocessor\t: 1\nflags\t\t: fpu\n";
        assert_eq!(parse_cpuinfo(text), 2);
        assert_eq!(parse_cpuinfo(""), 0);
        assert!(affinity_cpus() >= 1);
    }

    #[test]
    fn meminfo_in_bytes() {
        let text = "MemTotal:       16303412 kB\nMemFree:         1000000 kB\nMemAvailable:   12000000 kB\n";
        let m = parse_meminfo(text).unwrap();
        assert_eq!(m.total_bytes, 16303412 * 1024);
        assert_eq!(m.used_bytes(), (16303412 - 12000000) * 1024);
        assert!(parse_meminfo("MemTotal: x kB\nMemAvailable: 1 kB").is_err());
        assert!(parse_meminfo("MemTotal: 1 kB\n")
            .unwrap_err()
            .contains("MemAvailable"));
    }

    #[test]
    fn uptime_in_whole_seconds() {
        assert_eq!(parse_uptime("3600.52 7000.10\n").unwrap(), 3600);
        assert!(parse_uptime("").is_err());
        assert!(parse_uptime("-1 0").is_err());
        assert!(parse_uptime("NaN 0").is_err());
    }

    #[test]
    fn macs_are_normalised_and_zero_skipped() {
        assert_eq!(
            parse_mac("52:54:00:AB:cd:EF\n").as_deref(),
            Some("52:54:00:ab:cd:ef")
        );
        assert_eq!(parse_mac("00:00:00:00:00:00\n"), None);
        assert_eq!(parse_mac("\n"), None);
    }

    #[test]
    fn real_files_parse() {
        // The machine running the tests: whatever it has, the readers do not fail.
        assert!(logical_cpus() >= 1);
        assert!(memory().unwrap().total_bytes > 0);
        uptime().unwrap();
        nics().unwrap();
        dmi();
        listening_sockets(None).unwrap();
    }
}
