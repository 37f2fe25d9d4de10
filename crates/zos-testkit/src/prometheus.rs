//! A throwaway Prometheus (Debian's `prometheus`) with its remote-write receiver on: no
//! scrape jobs, its TSDB in a `zt-prom-` temp dir, a free loopback port, killed when
//! dropped. For tests of what a node pushes; queried back over its HTTP API with a
//! blocking loopback GET (no HTTP client needed).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::KitError;

/// How long Prometheus may take to be ready, and a query to show a series.
const WAIT: Duration = Duration::from_secs(60);

/// A running Prometheus, killed and waited for on drop.
pub struct Prometheus {
    child: Child,
    /// Where it serves (plain HTTP on loopback).
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts one and waits until `/-/ready` answers 200.
    pub fn start() -> Result<Prometheus, KitError> {
        let dir = crate::tempdir("prom");
        let config = dir.path().join("p.yml");
        std::fs::write(
            &config,
            "global:\n  scrape_interval: 1h\nscrape_configs: []\n",
        )
        .map_err(|e| KitError::io("writing prometheus' config", e))?;
        let log = std::fs::File::create(dir.path().join("prometheus.log"))
            .map_err(|e| KitError::io("creating prometheus' log", e))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], crate::etcd::free_port()?));
        let child = Command::new("prometheus")
            .arg("--web.enable-remote-write-receiver")
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!("--config.file={}", config.display()))
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(|e| KitError::io("prometheus' log", e))?,
            )
            .stderr(log)
            .spawn()
            .map_err(|e| KitError::io("starting prometheus (apt-get install -y prometheus)", e))?;
        let mut p = Prometheus { child, addr, dir };
        let deadline = Instant::now() + WAIT;
        while get(addr, "/-/ready").map(|(code, _)| code) != Some(200) {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(KitError::Failed(format!(
                    "prometheus exited ({status}): {}",
                    p.log()
                )));
            }
            if Instant::now() > deadline {
                return Err(KitError::Failed(format!(
                    "prometheus not ready: {}",
                    p.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(p)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The remote-write receiver's URL.
    pub fn write_url(&self) -> String {
        format!("http://{}/api/v1/write", self.addr)
    }

    /// The result array of the instant query `promql` (each `{metric, value}`).
    pub fn query(&self, promql: &str) -> Result<Vec<serde_json::Value>, KitError> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (code, body) = get(self.addr, &path)
            .ok_or_else(|| KitError::Failed(format!("prometheus did not answer {path}")))?;
        let json = body.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: serde_json::Value = serde_json::from_str(json)
            .map_err(|e| KitError::Failed(format!("query {promql}: {code} {e}: {body}")))?;
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Polls `promql` until it has a series (at most a minute); the series.
    pub fn wait_for(&self, promql: &str) -> Result<Vec<serde_json::Value>, KitError> {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self.query(promql)?;
            if !r.is_empty() {
                return Ok(r);
            }
            if Instant::now() > deadline {
                return Err(KitError::Failed(format!(
                    "{promql}: no series after {WAIT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTP/1.0 GET on loopback: `(status, whole response)`.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some((code, out))
}

/// Everything but unreserved characters as `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
