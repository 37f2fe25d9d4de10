//! Built-in sources: the parts that need no node internals (the kernel log tail, mounts,
//! links, addresses and routes, the nft ruleset, a cgroup summary, memory, uptime), a
//! bounded file, and a closure for what the node supplies (its state summary, journal,
//! heartbeats, refusals).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::Source;

/// Every built-in source with its default settings, for a bundle of this host.
pub fn builtin() -> Vec<Box<dyn Source>> {
    vec![
        Box::new(KernelLog::default()),
        Box::new(FileSource::new("mounts.txt", "/proc/self/mountinfo")),
        Box::new(Network::Links),
        Box::new(Network::Addresses),
        Box::new(Network::Routes),
        Box::new(NftRuleset::default()),
        Box::new(CgroupSummary::default()),
        Box::new(FileSource::new("meminfo.txt", "/proc/meminfo")),
        Box::new(Uptime),
    ]
}

/// Read at most `limit + 1` bytes of `r` (the extra one shows a truncation).
fn read_bounded(r: impl Read, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    r.take(limit as u64 + 1).read_to_end(&mut out)?;
    Ok(out)
}

/// A file, read up to the part limit.
#[derive(Debug, Clone)]
pub struct FileSource {
    name: String,
    path: PathBuf,
}

impl FileSource {
    /// The file at `path`, as `name` in the bundle.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> FileSource {
        FileSource {
            name: name.into(),
            path: path.into(),
        }
    }
}

impl Source for FileSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn collect(&self, limit: usize) -> Result<Vec<u8>, String> {
        let f = std::fs::File::open(&self.path)
            .map_err(|e| format!("open {}: {e}", self.path.display()))?;
        read_bounded(f, limit).map_err(|e| format!("read {}: {e}", self.path.display()))
    }
}

/// A part computed by the caller (zosd's state summary, journal, heartbeats, refusals).
pub struct FnSource<F> {
    name: String,
    f: F,
}

impl<F> FnSource<F>
where
    F: Fn(usize) -> Result<Vec<u8>, String> + Send + Sync,
{
    /// `f(limit)` gives the part's bytes.
    pub fn new(name: impl Into<String>, f: F) -> FnSource<F> {
        FnSource {
            name: name.into(),
            f,
        }
    }
}

impl<F> Source for FnSource<F>
where
    F: Fn(usize) -> Result<Vec<u8>, String> + Send + Sync,
{
    fn name(&self) -> &str {
        &self.name
    }

    fn collect(&self, limit: usize) -> Result<Vec<u8>, String> {
        (self.f)(limit)
    }
}

/// The kernel log's last records, from `/dev/kmsg` read without blocking (all records
/// still in the ring buffer, the last `records` kept), as `[seconds.micros] <level>
/// message` lines in `kernel.log`. Truncated, it keeps the tail.
#[derive(Debug, Clone)]
pub struct KernelLog {
    /// How many records at most.
    pub records: usize,
    /// The device (`/dev/kmsg`).
    pub path: PathBuf,
}

impl Default for KernelLog {
    fn default() -> Self {
        KernelLog {
            records: 2000,
            path: PathBuf::from("/dev/kmsg"),
        }
    }
}

/// `pri,seq,usec,flags[,...];message` (continuation lines ` KEY=VALUE` dropped) as a line.
fn kmsg_line(record: &[u8]) -> Vec<u8> {
    let first = record.split(|&b| b == b'\n').next().unwrap_or(record);
    let Some(semi) = first.iter().position(|&b| b == b';') else {
        let mut l = first.to_vec();
        l.push(b'\n');
        return l;
    };
    let prefix = String::from_utf8_lossy(&first[..semi]);
    let mut fields = prefix.split(',');
    let pri: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let _seq = fields.next();
    let usec: u64 = fields.next().and_then(|u| u.parse().ok()).unwrap_or(0);
    let mut l = format!(
        "[{:>6}.{:06}] <{}> ",
        usec / 1_000_000,
        usec % 1_000_000,
        pri & 7
    )
    .into_bytes();
    l.extend_from_slice(&first[semi + 1..]);
    l.push(b'\n');
    l
}

impl Source for KernelLog {
    fn name(&self) -> &str {
        "kernel.log"
    }

    fn tail(&self) -> bool {
        true
    }

    fn collect(&self, limit: usize) -> Result<Vec<u8>, String> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path)
            .map_err(|e| format!("open {}: {e}", self.path.display()))?;
        let mut lines: VecDeque<Vec<u8>> = VecDeque::new();
        let mut bytes = 0usize;
        let mut buf = vec![0u8; 16 * 1024];
        let mut lost = 0u64;
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let l = kmsg_line(&buf[..n]);
                    bytes += l.len();
                    lines.push_back(l);
                    // Keep the last `records`, and no more than the limit (+1 shows a cut).
                    while lines.len() > self.records.max(1) || bytes > limit + 1 {
                        match lines.pop_front() {
                            Some(old) => bytes -= old.len(),
                            None => break,
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // EPIPE: records were overwritten while reading; go on with the next.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => lost += 1,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read {}: {e}", self.path.display())),
            }
        }
        let mut out = Vec::with_capacity(bytes + 64);
        if lost > 0 {
            out.extend_from_slice(
                format!("[zos-support: {lost} kernel records overwritten while reading]\n")
                    .as_bytes(),
            );
        }
        for l in lines {
            out.extend_from_slice(&l);
        }
        Ok(out)
    }
}

/// The node's links, addresses or routes (IPv4 and IPv6, every table), dumped by netlink
/// in the calling thread's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// `links.txt`: index, name, kind, state, MTU, MAC, controller.
    Links,
    /// `addresses.txt`: link index, address/prefix, label.
    Addresses,
    /// `routes.txt`: destination, gateway, output link, table, protocol, scope, type.
    Routes,
}

impl Source for Network {
    fn name(&self) -> &str {
        match self {
            Network::Links => "links.txt",
            Network::Addresses => "addresses.txt",
            Network::Routes => "routes.txt",
        }
    }

    fn collect(&self, limit: usize) -> Result<Vec<u8>, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| format!("tokio runtime for netlink: {e}"))?;
        let what = *self;
        let text = rt.block_on(async move {
            let (conn, handle, _) =
                rtnetlink::new_connection().map_err(|e| format!("netlink socket: {e}"))?;
            let conn = tokio::spawn(conn);
            let r = match what {
                Network::Links => links(&handle).await,
                Network::Addresses => addresses(&handle).await,
                Network::Routes => routes(&handle).await,
            };
            conn.abort();
            r
        })?;
        let mut b = text.into_bytes();
        b.truncate(limit + 1);
        Ok(b)
    }
}

async fn links(handle: &rtnetlink::Handle) -> Result<String, String> {
    use futures_util::TryStreamExt;
    use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo};
    let mut s = handle.link().get().execute();
    let mut out = String::from("index name kind flags state mtu mac controller\n");
    while let Some(m) = s.try_next().await.map_err(|e| format!("dump links: {e}"))? {
        let (mut name, mut kind, mut state, mut mtu, mut mac, mut ctl) = (
            String::from("?"),
            String::from("-"),
            String::from("?"),
            0u32,
            String::from("-"),
            String::from("-"),
        );
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => name = n.clone(),
                LinkAttribute::Mtu(v) => mtu = *v,
                LinkAttribute::OperState(st) => state = format!("{st:?}").to_lowercase(),
                LinkAttribute::Address(b) => {
                    mac = b
                        .iter()
                        .map(|x| format!("{x:02x}"))
                        .collect::<Vec<_>>()
                        .join(":")
                }
                LinkAttribute::Controller(c) => ctl = c.to_string(),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            kind = format!("{k:?}").to_lowercase();
                        }
                    }
                }
                _ => {}
            }
        }
        let up = if m.header.flags.contains(LinkFlags::Up) {
            "up"
        } else {
            "down"
        };
        let _ = writeln!(
            out,
            "{} {name} {kind} {up} {state} {mtu} {mac} {ctl}",
            m.header.index
        );
    }
    Ok(out)
}

async fn addresses(handle: &rtnetlink::Handle) -> Result<String, String> {
    use futures_util::TryStreamExt;
    use rtnetlink::packet_route::address::AddressAttribute;
    let mut s = handle.address().get().execute();
    let mut out = String::from("index address label\n");
    while let Some(m) = s
        .try_next()
        .await
        .map_err(|e| format!("dump addresses: {e}"))?
    {
        let mut addr = None;
        let mut label = String::from("-");
        for a in &m.attributes {
            match a {
                AddressAttribute::Address(ip) => addr = Some(*ip),
                AddressAttribute::Local(ip) if addr.is_none() => addr = Some(*ip),
                AddressAttribute::Label(l) => label = l.clone(),
                _ => {}
            }
        }
        let addr = addr.map_or("?".to_string(), |a| a.to_string());
        let _ = writeln!(
            out,
            "{} {addr}/{} {label}",
            m.header.index, m.header.prefix_len
        );
    }
    Ok(out)
}

fn route_addr(a: &rtnetlink::packet_route::route::RouteAddress) -> String {
    use rtnetlink::packet_route::route::RouteAddress;
    match a {
        RouteAddress::Inet(ip) => ip.to_string(),
        RouteAddress::Inet6(ip) => ip.to_string(),
        other => format!("{other:?}"),
    }
}

async fn routes(handle: &rtnetlink::Handle) -> Result<String, String> {
    use futures_util::TryStreamExt;
    use rtnetlink::packet_route::route::RouteAttribute;
    use rtnetlink::RouteMessageBuilder;
    use std::net::{Ipv4Addr, Ipv6Addr};
    let mut out = String::from("destination gateway oif table protocol scope type\n");
    let requests = [
        RouteMessageBuilder::<Ipv4Addr>::new().build(),
        RouteMessageBuilder::<Ipv6Addr>::new().build(),
    ];
    for req in requests {
        let mut s = handle.route().get(req).execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| format!("dump routes: {e}"))?
        {
            let h = &m.header;
            let mut dst = None;
            let mut gw = String::from("-");
            let mut oif = String::from("-");
            let mut table = u32::from(h.table);
            for a in &m.attributes {
                match a {
                    RouteAttribute::Destination(d) => dst = Some(route_addr(d)),
                    RouteAttribute::Gateway(g) => gw = route_addr(g),
                    RouteAttribute::Oif(i) => oif = i.to_string(),
                    RouteAttribute::Table(t) => table = *t,
                    _ => {}
                }
            }
            let dst = match dst {
                Some(d) => format!("{d}/{}", h.destination_prefix_length),
                None if h.destination_prefix_length == 0 => "default".to_string(),
                None => format!("?/{}", h.destination_prefix_length),
            };
            let _ = writeln!(
                out,
                "{dst} {gw} {oif} {table} {:?} {:?} {:?}",
                h.protocol, h.scope, h.kind
            );
        }
    }
    Ok(out)
}

/// `nft -j list ruleset` (the node image has nft; a missing binary is a failed part).
/// The child is killed when it runs longer than `timeout`, so a hung nft does not
/// outlive the bundle (the bundle would abandon the part, not the process).
#[derive(Debug, Clone)]
pub struct NftRuleset {
    /// The program (`nft`, looked up on `PATH`).
    pub program: PathBuf,
    /// How long it may run before it is killed.
    pub timeout: Duration,
}

impl Default for NftRuleset {
    fn default() -> Self {
        NftRuleset {
            program: PathBuf::from("nft"),
            timeout: Duration::from_secs(5),
        }
    }
}

/// SIGKILL to the child's process group (it leads one), and to the child itself.
fn kill_group(c: &mut std::process::Child) {
    if let Ok(pid) = i32::try_from(c.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = c.kill();
}

impl Source for NftRuleset {
    fn name(&self) -> &str {
        "nft-ruleset.json"
    }

    fn collect(&self, limit: usize) -> Result<Vec<u8>, String> {
        let prog = self.program.display();
        let mut child = Command::new(&self.program)
            .args(["-j", "list", "ruleset"])
            // Its own process group: the watchdog kills whatever it started too.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("run {prog}: {e}"))?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let child = Arc::new(Mutex::new(child));
        // The watchdog: kills the child unless told it is done within the timeout.
        let (done, wait) = mpsc::channel::<()>();
        let killed = Arc::new(AtomicBool::new(false));
        let watchdog = {
            let (child, killed, timeout) = (child.clone(), killed.clone(), self.timeout);
            std::thread::Builder::new()
                .name("support-nft-watchdog".into())
                .spawn(move || {
                    if let Err(mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(timeout) {
                        if let Ok(mut c) = child.lock() {
                            if matches!(c.try_wait(), Ok(None)) {
                                killed.store(true, Ordering::SeqCst);
                                kill_group(&mut c);
                            }
                        }
                    }
                })
                .map_err(|e| format!("start the nft watchdog: {e}"))?
        };
        let out = stdout.map(|o| read_bounded(o, limit)).transpose();
        let mut err = Vec::new();
        if let Some(e) = stderr {
            let _ = e.take(4096).read_to_end(&mut err);
        }
        let status = {
            let mut c = child
                .lock()
                .map_err(|_| "the nft child's lock".to_string())?;
            if matches!(&out, Ok(Some(o)) if o.len() > limit) {
                // The part is cut anyway: do not wait for the rest.
                kill_group(&mut c);
            }
            c.wait()
        };
        let _ = done.send(());
        let _ = watchdog.join();
        let status = status.map_err(|e| format!("wait {prog}: {e}"))?;
        if killed.load(Ordering::SeqCst) {
            return Err(format!(
                "{prog} -j list ruleset: killed after {:?}",
                self.timeout
            ));
        }
        let out = out
            .map_err(|e| format!("read {prog} output: {e}"))?
            .unwrap_or_default();
        if !status.success() && out.len() <= limit {
            return Err(format!(
                "{prog} -j list ruleset: {status}: {}",
                String::from_utf8_lossy(&err).trim()
            ));
        }
        Ok(out)
    }
}

/// A summary of the cgroup tree under `root` (two levels deep): per group, the memory in
/// use and its limit, the number of tasks, and (v2) the CPU time used.
#[derive(Debug, Clone)]
pub struct CgroupSummary {
    /// The cgroup mount (`/sys/fs/cgroup`).
    pub root: PathBuf,
    /// How deep below `root` (2).
    pub depth: usize,
}

impl Default for CgroupSummary {
    fn default() -> Self {
        CgroupSummary {
            root: PathBuf::from("/sys/fs/cgroup"),
            depth: 2,
        }
    }
}

/// The files of a cgroup worth a line (v2 and v1 names).
const CGROUP_FILES: &[&str] = &[
    "memory.current",
    "memory.max",
    "memory.usage_in_bytes",
    "memory.limit_in_bytes",
    "pids.current",
    "pids.max",
    "cgroup.procs",
    "cpu.stat",
    "cpuacct.usage",
];

fn first_line(p: &Path, file: &str) -> Option<String> {
    if file == "cgroup.procs" {
        let s = std::fs::read_to_string(p.join(file)).ok()?;
        return Some(format!("procs={}", s.lines().count()));
    }
    let mut s = String::new();
    std::fs::File::open(p.join(file))
        .ok()?
        .take(256)
        .read_to_string(&mut s)
        .ok()?;
    let l = s.lines().next()?.trim().to_string();
    Some(format!("{file}={l}"))
}

impl CgroupSummary {
    fn walk(&self, dir: &Path, depth: usize, out: &mut String, limit: usize) {
        if out.len() > limit {
            return;
        }
        let rel = dir.strip_prefix(&self.root).unwrap_or(dir);
        let fields: Vec<String> = CGROUP_FILES
            .iter()
            .filter_map(|f| first_line(dir, f))
            .collect();
        if !fields.is_empty() {
            let _ = writeln!(out, "/{} {}", rel.display(), fields.join(" "));
        }
        if depth == 0 {
            return;
        }
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let mut subs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        subs.sort();
        for s in subs {
            self.walk(&s, depth - 1, out, limit);
        }
    }
}

impl Source for CgroupSummary {
    fn name(&self) -> &str {
        "cgroups.txt"
    }

    fn collect(&self, limit: usize) -> Result<Vec<u8>, String> {
        let mut out = String::new();
        for (what, p) in [
            ("/proc/self/cgroup", "/proc/self/cgroup"),
            ("/proc/cgroups", "/proc/cgroups"),
        ] {
            if let Ok(s) = std::fs::read_to_string(p) {
                let _ = writeln!(out, "== {what}\n{s}");
            }
        }
        if let Ok(s) = std::fs::read_to_string(self.root.join("cgroup.controllers")) {
            let _ = writeln!(out, "== cgroup v2 controllers: {}", s.trim());
        }
        let _ = writeln!(out, "== groups under {}", self.root.display());
        if !self.root.is_dir() {
            return Err(format!("{} is not a directory", self.root.display()));
        }
        self.walk(&self.root, self.depth, &mut out, limit);
        let mut b = out.into_bytes();
        b.truncate(limit + 1);
        Ok(b)
    }
}

/// `/proc/uptime` and `/proc/loadavg`, read as `uptime.txt`.
#[derive(Debug, Clone, Copy)]
pub struct Uptime;

impl Source for Uptime {
    fn name(&self) -> &str {
        "uptime.txt"
    }

    fn collect(&self, _limit: usize) -> Result<Vec<u8>, String> {
        let up = std::fs::read_to_string("/proc/uptime")
            .map_err(|e| format!("read /proc/uptime: {e}"))?;
        let mut parts = up.split_whitespace();
        let secs: f64 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("/proc/uptime: unexpected {up:?}"))?;
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        Ok(format!(
            "uptime_seconds {secs}\nuptime {}d {}h {}m\nloadavg {}\n",
            (secs as u64) / 86400,
            (secs as u64) % 86400 / 3600,
            (secs as u64) % 3600 / 60,
            load.trim()
        )
        .into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kmsg_records_become_lines() {
        assert_eq!(
            kmsg_line(b"6,1234,5000001,-;hello world\n SUBSYSTEM=x\n"),
            b"[     5.000001] <6> hello world\n"
        );
        assert_eq!(kmsg_line(b"garbage"), b"garbage\n");
    }
}
