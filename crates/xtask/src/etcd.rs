//! A throwaway etcd server for `cargo xtask demo --etcd` and the end-to-end tests: its
//! own data dir and free loopback ports (or an address the caller picks, perhaps in a
//! network namespace of the caller's), stopped when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct Etcd {
    child: Child,
    pub client: SocketAddr,
    /// The network namespace (`ip netns` name) it runs in, if not the caller's.
    pub netns: Option<String>,
}

/// A free TCP port on the host's loopback (free when asked: bind it soon).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Etcd {
    /// Starts etcd with its data under `dir` on free loopback ports and waits (up to
    /// 30 s) until it answers.
    pub fn start(dir: &Path) -> anyhow::Result<Etcd> {
        let client: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let peer: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        Etcd::start_at(dir, client, peer, None)
    }

    /// Starts etcd with its data under `dir` (`<dir>/etcd-data`, kept: starting it
    /// again on the same `dir` resumes the same store), serving clients at `client` and
    /// its peer port at `peer`, in the network namespace `netns` (`ip netns exec`) or
    /// the caller's; waits (up to 30 s) until it answers. Its log is appended to
    /// `<dir>/etcd.log`.
    pub fn start_at(
        dir: &Path,
        client: SocketAddr,
        peer: SocketAddr,
        netns: Option<&str>,
    ) -> anyhow::Result<Etcd> {
        let peer = format!("http://{peer}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("etcd.log"))?;
        let mut cmd = match netns {
            Some(ns) => {
                // `ip netns exec` execs etcd in the namespace: the child is etcd itself.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "etcd"]);
                c
            }
            None => Command::new("etcd"),
        };
        let child = cmd
            .arg("--name=demo")
            .arg(format!("--data-dir={}", dir.join("etcd-data").display()))
            .arg(format!("--listen-client-urls=http://{client}"))
            .arg(format!("--advertise-client-urls=http://{client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=demo={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting etcd (Debian package etcd-server)")?;
        let mut etcd = Etcd {
            child,
            client,
            netns: netns.map(str::to_owned),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = etcd.child.try_wait()? {
                bail!(
                    "etcd exited ({status}); see {}",
                    dir.join("etcd.log").display()
                );
            }
            if etcd.healthy() {
                return Ok(etcd);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "etcd did not answer within 30 s; see {}",
            dir.join("etcd.log").display()
        )
    }

    /// Stops it (SIGKILL: the store is fsynced as it goes); the data dir stays.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn healthy(&self) -> bool {
        let client = self.client;
        let probe = move || {
            let Ok(mut s) = TcpStream::connect_timeout(&client, Duration::from_secs(1)) else {
                return false;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let request =
                format!("GET /health HTTP/1.1\r\nHost: {client}\r\nConnection: close\r\n\r\n");
            let mut reply = String::new();
            s.write_all(request.as_bytes()).is_ok()
                && s.read_to_string(&mut reply).is_ok()
                && reply.contains("\"health\":\"true\"")
        };
        match &self.netns {
            None => probe(),
            Some(ns) => in_netns(ns, probe).unwrap_or(false),
        }
    }
}

/// Runs `f` on a thread that entered the network namespace `ip netns` calls `netns`
/// (the caller's threads stay where they are) and returns what it returned.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = PathBuf::from("/run/netns").join(netns);
    let ns = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::spawn(move || -> anyhow::Result<T> {
        // SAFETY: setns on a valid namespace fd changes only this thread's network
        // namespace; the thread ends when `f` returns.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the thread in {netns} panicked"))?
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
