//! A throwaway rsyslogd (Debian's `rsyslog`) as a log receiver: its own configuration in
//! a `zt-rsyslog-` temp dir (imtcp on the address the caller gives and a free port,
//! optionally TLS with rsyslog's OpenSSL driver), every message written by omfile as one
//! JSON object of its parsed RFC 5424 fields per line, killed when dropped. For tests of
//! what a node ships (zos-logship's delivery tests, the booted end-to-end test) and the
//! demo; read back with [`Rsyslog::records`] and waited for with [`Rsyslog::wait_for`].
//!
//! A record's keys: `pri`, `facility`, `severity` (numbers, as strings), `timestamp`
//! (RFC 3339), `hostname`, `app`, `procid`, `msgid`, `sd` (the structured data as sent)
//! and `msg`.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{KitError, Needs};

/// How long rsyslogd may take to listen, or to exit after SIGTERM.
const WAIT: Duration = Duration::from_secs(20);

/// rsyslog's OpenSSL network stream driver (Debian's `rsyslog-openssl`), needed for
/// [`Tls`].
pub const OSSL_DRIVER: &str = "/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_ossl.so";

/// The parsed fields of every message, one JSON object per line.
const TEMPLATE: &str = r#"template(name="zt" type="list" option.jsonf="on") {
  property(outname="pri" name="pri" format="jsonf")
  property(outname="facility" name="syslogfacility" format="jsonf")
  property(outname="severity" name="syslogseverity" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}"#;

/// The server side of a TLS receiver (files): the CA its clients pin, its certificate
/// and its key.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The server's certificate (PEM), signed by `ca`.
    pub cert: PathBuf,
    /// The server's private key (PEM).
    pub key: PathBuf,
}

/// What a receiver needs on this machine: rsyslogd, and for TLS its OpenSSL driver.
/// Check it with [`Needs::check`] (a counted SKIP or a loud failure).
pub fn needs(tls: bool) -> Needs {
    let n = Needs::none().bin_from("rsyslogd", "rsyslog");
    if tls {
        n.file(
            OSSL_DRIVER,
            "rsyslog's OpenSSL driver (apt-get install -y rsyslog-openssl)",
        )
    } else {
        n
    }
}

/// A running rsyslogd of the caller's own, stopped (SIGTERM, then waited for) on drop.
pub struct Rsyslog {
    dir: tempfile::TempDir,
    /// Where it listens.
    pub addr: SocketAddr,
    child: Option<Child>,
}

impl Rsyslog {
    /// Starts one listening on `ip` and a free port (plain TCP, or TLS with `tls`) and
    /// waits until a connection is accepted. An error (with rsyslogd's own log) if it
    /// cannot be started or does not listen.
    pub fn start(ip: IpAddr, tls: Option<&Tls>) -> Result<Rsyslog, KitError> {
        let dir = crate::tempdir("rsyslog");
        let port = {
            let l = TcpListener::bind((ip, 0))
                .map_err(|e| KitError::io(format!("binding a port on {ip}"), e))?;
            l.local_addr()
                .map_err(|e| KitError::io("a bound port", e))?
                .port()
        };
        let addr = SocketAddr::new(ip, port);
        let work = dir.path().display();
        let (global_tls, module) = match tls {
            None => (String::new(), r#"module(load="imtcp")"#.to_string()),
            Some(t) => (
                format!(
                    r#" DefaultNetstreamDriver="ossl" DefaultNetstreamDriverCAFile="{}" DefaultNetstreamDriverCertFile="{}" DefaultNetstreamDriverKeyFile="{}""#,
                    t.ca.display(),
                    t.cert.display(),
                    t.key.display()
                ),
                r#"module(load="imtcp" StreamDriver.Name="ossl" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")"#
                    .to_string(),
            ),
        };
        // Newlines inside messages stay newlines (not #012).
        let conf = format!(
            "global(workDirectory=\"{work}\" parser.escapeControlCharactersOnReceive=\"off\"{global_tls})\n\
             {module}\n{TEMPLATE}\n\
             ruleset(name=\"zt\") {{ action(type=\"omfile\" file=\"{work}/out.jsonl\" template=\"zt\") }}\n\
             input(type=\"imtcp\" address=\"{ip}\" port=\"{port}\" ruleset=\"zt\")\n"
        );
        std::fs::write(dir.path().join("rsyslog.conf"), conf)
            .map_err(|e| KitError::io("writing rsyslogd's configuration", e))?;
        let mut r = Rsyslog {
            dir,
            addr,
            child: None,
        };
        r.run()?;
        Ok(r)
    }

    /// [`Rsyslog::start`] on 127.0.0.1 without TLS.
    pub fn loopback() -> Result<Rsyslog, KitError> {
        Rsyslog::start(IpAddr::from([127, 0, 0, 1]), None)
    }

    /// (Re)starts rsyslogd on the same address and files (after [`Rsyslog::stop`]: a
    /// receiver coming back) and waits until a connection is accepted.
    pub fn run(&mut self) -> Result<(), KitError> {
        self.stop();
        let d = self.dir.path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("rsyslogd.log"))
            .map_err(|e| KitError::io("opening rsyslogd's log", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| KitError::io("rsyslogd's log", e))?;
        let child = Command::new("rsyslogd")
            .arg("-n")
            .arg("-f")
            .arg(d.join("rsyslog.conf"))
            .arg("-i")
            .arg(d.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log)
            .spawn()
            .map_err(|e| KitError::io("starting rsyslogd (apt-get install -y rsyslog)", e))?;
        self.child = Some(child);
        // Listening: a connection is accepted (it sends nothing, so no record).
        let start = Instant::now();
        while TcpStream::connect_timeout(&self.addr, Duration::from_secs(2)).is_err() {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                self.child = None;
                return Err(KitError::Failed(format!(
                    "rsyslogd exited ({status}): {}",
                    self.log()
                )));
            }
            if start.elapsed() > WAIT {
                self.stop();
                return Err(KitError::Failed(format!(
                    "rsyslogd not listening on {} after {WAIT:?}: {}",
                    self.addr,
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGTERM (rsyslogd writes out what it received) and wait for it to exit (killed
    /// after 20 s). Nothing if it is not running.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while matches!(child.try_wait(), Ok(None)) {
            if start.elapsed() > WAIT {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.wait();
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `scheme://IP:PORT`, e.g. `syslog+tcp://127.0.0.1:40123`.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// rsyslogd's own output so far (errors in its configuration, TLS failures).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("rsyslogd.log")).unwrap_or_default()
    }

    /// The file the records are written to.
    pub fn out_file(&self) -> PathBuf {
        self.dir.path().join("out.jsonl")
    }

    /// Its directory (configuration, log, records).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every record received so far, in order. A line rsyslogd has only half written
    /// yet (the last one, without its newline) is left for the next call.
    pub fn records(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.out_file()).unwrap_or_default();
        let complete = match text.rfind('\n') {
            Some(end) => &text[..end],
            None => "",
        };
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// Polls the records (every 20 ms) until `pred` holds on them, for at most
    /// `timeout`; the records. The error names `what`, the records' count and
    /// rsyslogd's log.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>, KitError> {
        let start = Instant::now();
        loop {
            let r = self.records();
            if pred(&r) {
                return Ok(r);
            }
            if start.elapsed() > timeout {
                return Err(KitError::Failed(format!(
                    "rsyslogd at {}: no {what} after {timeout:?} ({} records); rsyslogd: {}",
                    self.addr,
                    r.len(),
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        self.stop();
    }
}
