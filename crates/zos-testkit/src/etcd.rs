//! A throwaway etcd server (Debian's `etcd-server`): its own data dir, free loopback
//! ports (or addresses the caller picks, perhaps in a network namespace of the
//! caller's), stopped when dropped. Used by the notary's suite, the CLI's tests,
//! `cargo xtask demo --etcd` and the end-to-end tests.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::KitError;

/// How long an etcd server may take to answer its first request.
const START: Duration = Duration::from_secs(30);

/// A running etcd server (one member), killed and waited for on drop or [`Etcd::stop`].
pub struct Etcd {
    child: Child,
    /// Where it serves clients, over plain `http://` (a free loopback port unless
    /// [`Etcd::start_at`] was given another).
    pub client: SocketAddr,
    /// The network namespace (`ip netns` name) it runs in, if not the caller's.
    pub netns: Option<String>,
    /// The temp dir of [`Etcd::temp`], removed after the server stops.
    _dir: Option<tempfile::TempDir>,
}

/// The command line every etcd of the tests shares: one member named `zt`, its store in
/// `data_dir`, serving clients at `client_url` (`http://` or `https://`) and its peer
/// port at `peer_url`, in the network namespace `netns` (`ip netns exec`: the child
/// is etcd itself) or the caller's, logging errors only. Callers add flags (TLS) and
/// where its output goes.
pub fn command(netns: Option<&str>, data_dir: &Path, client_url: &str, peer_url: &str) -> Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "etcd"]);
            c
        }
        None => Command::new("etcd"),
    };
    cmd.arg("--name=zt")
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={client_url}"))
        .arg(format!("--advertise-client-urls={client_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=zt={peer_url}"))
        .arg("--log-level=error")
        .stdin(Stdio::null());
    cmd
}

/// A free TCP port on the host's loopback (free when asked: bind it soon).
pub fn free_port() -> Result<u16, KitError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| KitError::io("binding a port", e))?;
    Ok(l.local_addr()
        .map_err(|e| KitError::io("a bound port", e))?
        .port())
}

fn free_loopback() -> Result<SocketAddr, KitError> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

impl Etcd {
    /// A server in a `zt-etcd-` temp dir of its own, for a test: panics (with the
    /// reason and etcd's log) if it does not come up.
    pub fn temp() -> Etcd {
        let dir = crate::tempdir("etcd");
        let mut etcd = Etcd::start(dir.path()).unwrap_or_else(|e| {
            panic!("{e} (apt-get install -y etcd-server; cargo xtask test installs it)")
        });
        etcd._dir = Some(dir);
        etcd
    }

    /// Starts etcd with its data under `dir` on free loopback ports and waits (up to
    /// 30 s) until it answers. The ports are picked, then released: another process
    /// could take one in between, so a failed start is retried on fresh ports (and a
    /// fresh store) twice.
    pub fn start(dir: &Path) -> Result<Etcd, KitError> {
        let mut last = None;
        for _ in 0..3 {
            let _ = std::fs::remove_dir_all(dir.join("etcd-data"));
            match Etcd::start_at(dir, free_loopback()?, free_loopback()?, None) {
                Ok(etcd) => return Ok(etcd),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("three attempts"))
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
    ) -> Result<Etcd, KitError> {
        let peer = format!("http://{peer}");
        let log_path = dir.join("etcd.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| KitError::io(format!("opening {}", log_path.display()), e))?;
        let log2 = log.try_clone().map_err(|e| KitError::io("etcd's log", e))?;
        let child = command(
            netns,
            &dir.join("etcd-data"),
            &format!("http://{client}"),
            &peer,
        )
        .stdout(log2)
        .stderr(log)
        .spawn()
        .map_err(|e| KitError::io("starting etcd (Debian package etcd-server)", e))?;
        let mut etcd = Etcd {
            child,
            client,
            netns: netns.map(str::to_owned),
            _dir: None,
        };
        let deadline = Instant::now() + START;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = etcd.child.try_wait() {
                return Err(KitError::Failed(format!(
                    "etcd exited ({status}); its log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                )));
            }
            if etcd.healthy() {
                return Ok(etcd);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(KitError::Failed(format!(
            "etcd did not answer within {} s; its log:\n{}",
            START.as_secs(),
            std::fs::read_to_string(&log_path).unwrap_or_default()
        )))
    }

    /// `http://127.0.0.1:port`, etcd's JSON gateway.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.client)
    }

    /// `etcd://127.0.0.1:port/<prefix>`, a notary URL.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}/{prefix}", self.client)
    }

    /// A POST of `body` (JSON) to the gateway's `path` (`v3/kv/put`) on a fresh
    /// connection, as an attacker with write access to the store would write: the
    /// reply's text on `200`, an error otherwise.
    pub fn post(&self, path: &str, body: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&self.client, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let authority = self.client;
        let path = path.trim_start_matches('/');
        write!(
            s,
            "POST /{path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        if out.starts_with("HTTP/1.1 200") {
            Ok(out)
        } else {
            Err(std::io::Error::other(out))
        }
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
            Some(ns) => crate::netns::in_netns(ns, probe).unwrap_or(false),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
