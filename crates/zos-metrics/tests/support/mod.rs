//! A real Prometheus (Debian's `prometheus`) with the remote-write receiver on, on a
//! free loopback port, its TSDB in a `zt-prom-` temp dir; and queries against it.
//!
//! The shared instances ([`shared`]) are started once per test binary by a keeper
//! thread that never exits: each child has `PR_SET_PDEATHSIG=SIGKILL`, which fires
//! when the thread that forked it dies, so the servers die with the test binary
//! (statics are never dropped). Their temp dirs carry the binary's pid; a later run
//! removes those whose process is gone.

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a Prometheus may take to say it is ready, and a series to appear.
pub const WAIT: Duration = Duration::from_secs(30);

/// A running Prometheus; killed and its dir removed on drop (a shared one never drops).
pub struct Prometheus {
    child: Child,
    dir: PathBuf,
    /// `127.0.0.1:<port>`.
    pub addr: std::net::SocketAddr,
    /// `http://<addr>` or, with TLS, `https://<addr>`.
    base: String,
    /// Trusts the server's CA, with TLS.
    http: reqwest::Client,
}

/// A TLS Prometheus: its certificate and key (files), and the CA (PEM) that signed it.
pub struct Tls {
    /// The server's certificate, PEM file.
    pub cert: PathBuf,
    /// Its key, PEM file.
    pub key: PathBuf,
    /// The CA's certificate, PEM.
    pub ca_pem: Vec<u8>,
}

impl Prometheus {
    /// Starts one on `port` with its TSDB under `dir` (made here); waits until ready.
    /// `pdeathsig`: the child is killed when the calling thread exits.
    pub fn start_at(dir: &Path, port: u16, pdeathsig: bool) -> Result<Prometheus, String> {
        Prometheus::start_with(dir, port, pdeathsig, None)
    }

    /// As [`Prometheus::start_at`], serving HTTPS with `tls` when given (ready when its
    /// log says so: the plain `/-/ready` probe cannot speak TLS).
    pub fn start_with(
        dir: &Path,
        port: u16,
        pdeathsig: bool,
        tls: Option<&Tls>,
    ) -> Result<Prometheus, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // No scrape jobs: everything it holds came by remote-write.
        let config = dir.join("p.yml");
        std::fs::write(
            &config,
            "global:\n  scrape_interval: 1h\nscrape_configs: []\n",
        )
        .map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.join("prometheus.log")).map_err(|e| e.to_string())?;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = Command::new("prometheus");
        let mut http = reqwest::Client::builder();
        let mut base = format!("http://{addr}");
        if let Some(tls) = tls {
            let web = dir.join("web.yml");
            std::fs::write(
                &web,
                format!(
                    "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
                    tls.cert.display(),
                    tls.key.display()
                ),
            )
            .map_err(|e| e.to_string())?;
            cmd.arg(format!("--web.config.file={}", web.display()));
            let ca = reqwest::Certificate::from_pem(&tls.ca_pem).map_err(|e| e.to_string())?;
            http = http.add_root_certificate(ca);
            base = format!("https://{addr}");
        }
        let http = http.build().map_err(|e| e.to_string())?;
        cmd.arg("--web.enable-remote-write-receiver")
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!("--config.file={}", config.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        if pdeathsig {
            // SAFETY: between fork and exec the closure only makes one prctl system
            // call, which is async-signal-safe; it allocates nothing and takes no lock.
            unsafe {
                cmd.pre_exec(|| {
                    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                        .map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting prometheus: {e}"))?;
        let tls = base.starts_with("https");
        let mut p = Prometheus {
            child,
            dir: dir.to_path_buf(),
            addr,
            base,
            http,
        };
        p.wait_ready(tls)?;
        Ok(p)
    }

    fn wait_ready(&mut self, tls: bool) -> Result<(), String> {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("prometheus exited ({status}): {}", self.log()));
            }
            let ready = if tls {
                self.log()
                    .contains("Server is ready to receive web requests")
            } else {
                http_get(self.addr, "/-/ready").is_some_and(|(code, _)| code == 200)
            };
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("prometheus not ready in {WAIT:?}: {}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// The remote-write receiver's URL.
    pub fn write_url(&self) -> reqwest::Url {
        format!("{}/api/v1/write", self.base).parse().unwrap()
    }

    /// A URL on this server that is not the receiver (answers 404).
    pub fn wrong_url(&self) -> reqwest::Url {
        format!("{}/api/v1/zt-not-a-receiver", self.base)
            .parse()
            .unwrap()
    }

    /// The result of the instant query `promql`: `(labels, value)` per series (for a
    /// range selector, the value is the last one; see [`Prometheus::range`]).
    pub async fn query(&self, promql: &str) -> Vec<(serde_json::Map<String, Value>, Vec<f64>)> {
        let mut url: reqwest::Url = format!("{}/api/v1/query", self.base).parse().unwrap();
        url.query_pairs_mut().append_pair("query", promql);
        let body: Value = self
            .http
            .get(url)
            .send()
            .await
            .expect("querying prometheus")
            .json()
            .await
            .expect("prometheus answers JSON");
        assert_eq!(body["status"], "success", "query {promql}: {body}");
        let num = |v: &Value| -> f64 { v[1].as_str().unwrap().parse().unwrap() };
        body["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let labels = r["metric"].as_object().unwrap().clone();
                let values = match r.get("value") {
                    Some(v) => vec![num(v)],
                    None => r["values"].as_array().unwrap().iter().map(num).collect(),
                };
                (labels, values)
            })
            .collect()
    }

    /// Polls `promql` until `done` holds for its result (at most [`WAIT`]); the result.
    pub async fn wait_for(
        &self,
        promql: &str,
        done: impl Fn(&[(serde_json::Map<String, Value>, Vec<f64>)]) -> bool,
    ) -> Vec<(serde_json::Map<String, Value>, Vec<f64>)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let r = self.query(promql).await;
            if done(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: not there after {WAIT:?}; last result {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Polls until `promql` has a series; the only value of the only series.
    pub async fn value(&self, promql: &str) -> f64 {
        let r = self.wait_for(promql, |r| !r.is_empty()).await;
        assert_eq!(r.len(), 1, "{promql}: one series expected, got {r:?}");
        r[0].1[0]
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A blocking GET on loopback: (status, body), or None if nothing answers.
fn http_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_ascii_whitespace().nth(1)?.parse().ok()?;
    Some((code, out))
}

/// A free loopback port (free when asked).
pub fn free_port() -> u16 {
    zos_testkit::etcd::free_port().expect("a free port")
}

/// A fresh `zt-prom-<pid>-<name>-XXXX` dir path under the temp dir (not made yet).
pub fn fresh_dir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "zt-prom-{}-{name}-{}",
        std::process::id(),
        zos_testkit::random_hex(4)
    ))
}

/// Removes `zt-prom-<pid>-*` dirs of test binaries that are no longer running.
fn sweep_stale() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("zt-prom-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// The two shared instances: `farm` (every test may push there) and `tenant` (only
/// the tenant test pushes there).
pub struct Shared {
    /// The farm's target.
    pub farm: &'static Prometheus,
    /// One contract's target.
    pub tenant: &'static Prometheus,
}

/// Starts a Prometheus with three tries on fresh ports (another process may take a
/// port between picking and binding).
pub fn start_fresh(name: &str, pdeathsig: bool) -> Result<Prometheus, String> {
    let mut last = String::new();
    for _ in 0..3 {
        match Prometheus::start_at(&fresh_dir(name), free_port(), pdeathsig) {
            Ok(p) => return Ok(p),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The shared pair, started on first use.
pub fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        sweep_stale();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("zt-prometheus-keeper".into())
            .spawn(move || {
                // Started from this thread, not a helper thread: the parent-death
                // signal fires when the forking thread exits.
                let started = (start_fresh("farm", true), start_fresh("tenant", true));
                let _ = tx.send(started);
                // The children's parent-death signal is tied to this thread: keep it.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawning the keeper thread");
        match rx.recv().expect("the keeper answers") {
            (Ok(farm), Ok(tenant)) => Shared {
                farm: Box::leak(Box::new(farm)),
                tenant: Box::leak(Box::new(tenant)),
            },
            (a, b) => panic!(
                "starting prometheus: {:?} / {:?} (apt-get install -y prometheus)",
                a.err(),
                b.err()
            ),
        }
    })
}

/// Runs `openssl args` in `dir`; panics with its stderr if it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running openssl ({e}): apt-get install -y openssl"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A self-signed CA `<name>-ca.pem` (key `<name>-ca.key`) in `dir`; its PEM.
pub fn make_ca(dir: &Path, name: &str) -> Vec<u8> {
    let (pem, key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN=zt-metrics {name} CA"),
            "-keyout",
            &key,
            "-out",
            &pem,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    std::fs::read(dir.join(pem)).unwrap()
}

/// A server certificate for 127.0.0.1 signed by `dir`'s CA `ca` (see [`make_ca`]).
pub fn make_server_cert(dir: &Path, ca: &str) -> Tls {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}-ca.pem"),
            "-CAkey",
            &format!("{ca}-ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    Tls {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
        ca_pem: std::fs::read(dir.join(format!("{ca}-ca.pem"))).unwrap(),
    }
}
