//! Backends for the shared notary suite: a `dir://` notary in a `zt-` temp dir, and a
//! real etcd server (Debian's `etcd-server`) on free loopback ports, one per fixture,
//! killed and removed by `Drop`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use zos_notary::{AnyNotary, DirNotary, EtcdNotary, NotaryKey};

/// How long an etcd server may take to answer its first request.
const ETCD_START: Duration = Duration::from_secs(30);

/// What the suite needs from a backend besides the [`zos_notary::Notary`] API: a way to
/// write raw bytes under a key, as an attacker with write access to the store would.
pub trait Backend {
    fn notary(&self) -> &AnyNotary;
    /// Stores `bytes` under logical key `key`, bypassing every check.
    fn raw_put(&self, key: &str, bytes: &[u8]);
    /// A second handle on the same store, as another process would open it.
    fn reopen(&self) -> AnyNotary;
}

// ---------------------------------------------------------------------------------
// dir://

pub struct DirBackend {
    pub dir: tempfile::TempDir,
    notary: AnyNotary,
}

impl DirBackend {
    pub async fn new() -> DirBackend {
        let dir = tempfile::Builder::new()
            .prefix("zt-notary-")
            .tempdir()
            .unwrap();
        let notary = zos_notary::open(&format!("dir://{}", dir.path().display())).unwrap();
        DirBackend { dir, notary }
    }

    fn inner(&self) -> &DirNotary {
        match &self.notary {
            AnyNotary::Dir(d) => d,
            AnyNotary::Etcd(_) => unreachable!(),
        }
    }
}

impl Backend for DirBackend {
    fn notary(&self) -> &AnyNotary {
        &self.notary
    }
    fn raw_put(&self, key: &str, bytes: &[u8]) {
        let path = self.inner().path_of(&NotaryKey::parse(key).unwrap());
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
    fn reopen(&self) -> AnyNotary {
        zos_notary::open(&format!("dir://{}", self.dir.path().display())).unwrap()
    }
}

// ---------------------------------------------------------------------------------
// etcd://

/// A private etcd server: its own data dir and loopback ports.
pub struct EtcdServer {
    child: Child,
    pub client_url: String,
    _data: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl EtcdServer {
    /// Starts etcd and waits until it serves requests. Panics (loudly, with the reason
    /// and etcd's log) if the binary is missing or the server does not come up.
    pub fn start() -> EtcdServer {
        let data = tempfile::Builder::new()
            .prefix("zt-etcd-")
            .tempdir()
            .unwrap();
        let mut logs = Vec::new();
        // The two ports are picked then released, so another process could take one in
        // between: a failed start is retried with fresh ports.
        for attempt in 0..3 {
            let (client, peer) = (free_port(), free_port());
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log_path = data.path().join(format!("etcd-{attempt}.log"));
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = Command::new("etcd")
                .arg("--name=zt")
                .arg(format!(
                    "--data-dir={}",
                    data.path().join(format!("data-{attempt}")).display()
                ))
                .arg(format!("--listen-client-urls={client_url}"))
                .arg(format!("--advertise-client-urls={client_url}"))
                .arg(format!("--listen-peer-urls={peer_url}"))
                .arg(format!("--initial-advertise-peer-urls={peer_url}"))
                .arg(format!("--initial-cluster=zt={peer_url}"))
                .arg("--log-level=error")
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start etcd ({e}): apt-get install -y etcd-server \
                         (cargo xtask test installs it)"
                    )
                });
            if wait_ready(&mut child, &client_url) {
                return EtcdServer {
                    child,
                    client_url,
                    _data: data,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            logs.push(std::fs::read_to_string(&log_path).unwrap_or_default());
        }
        panic!(
            "etcd did not start in 3 attempts; its logs:\n{}",
            logs.join("\n---\n")
        );
    }

    /// `etcd://127.0.0.1:port/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!(
            "etcd://{}/{prefix}",
            self.client_url.trim_start_matches("http://")
        )
    }
}

/// Polls the gateway until it answers a range request, the process dies, or
/// [`ETCD_START`] passes.
fn wait_ready(child: &mut Child, client_url: &str) -> bool {
    let deadline = Instant::now() + ETCD_START;
    let url = format!("{client_url}/v3/kv/range");
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if blocking_post(&url, r#"{"key":"AA=="}"#).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 POST on a fresh connection, so the fixture needs no runtime.
fn blocking_post(url: &str, body: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (authority, path) = rest.split_once('/').unwrap();
    let addr: std::net::SocketAddr = authority.parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
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

pub struct EtcdBackend {
    pub server: EtcdServer,
    url: String,
    notary: AnyNotary,
}

impl EtcdBackend {
    pub async fn new() -> EtcdBackend {
        let server = tokio::task::spawn_blocking(EtcdServer::start)
            .await
            .unwrap();
        let url = server.url("zt-suite");
        let notary = zos_notary::open(&url).unwrap();
        EtcdBackend {
            server,
            url,
            notary,
        }
    }

    fn inner(&self) -> &EtcdNotary {
        match &self.notary {
            AnyNotary::Etcd(e) => e,
            AnyNotary::Dir(_) => unreachable!(),
        }
    }
}

impl Backend for EtcdBackend {
    fn notary(&self) -> &AnyNotary {
        &self.notary
    }
    fn raw_put(&self, key: &str, bytes: &[u8]) {
        let etcd_key = self.inner().etcd_key(&NotaryKey::parse(key).unwrap());
        let body = format!(
            r#"{{"key":"{}","value":"{}"}}"#,
            B64.encode(etcd_key),
            B64.encode(bytes)
        );
        blocking_post(&format!("{}/v3/kv/put", self.server.client_url), &body).unwrap();
    }
    fn reopen(&self) -> AnyNotary {
        zos_notary::open(&self.url).unwrap()
    }
}
