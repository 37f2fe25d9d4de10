//! Delivery against real receivers: rsyslogd (Debian's) started by each test with its own
//! configuration (zos_testkit::rsyslog: imtcp on 127.0.0.1 and a free port, omfile writing
//! every message's parsed RFC 5424 fields as one JSON object per line), a plain TCP
//! listener for JSON lines,
//! and TLS receivers with CAs made by the test with `openssl`.
//!
//! Outage window: 30 s, the issue's (`ZT_LOGSHIP_OUTAGE_SECS` shortens it while working
//! on the shipper).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use zos_logship::{
    kmsg, Backoff, DeliveryError, Destination, Facility, Limits, Line, PinnedCa, Severity,
    ShipLayer, Shipper, ShipperConfig, TenantShippers,
};
use zos_testkit::rsyslog::{self, Rsyslog, Tls};
use zos_testkit::Needs;

const WAIT: Duration = Duration::from_secs(20);

/// A test CA (and, if `server`, a certificate for 127.0.0.1 it signed), made by `openssl`
/// in `dir`.
fn make_ca(dir: &Path, name: &str) -> Tls {
    let cnf = dir.join(format!("{name}.cnf"));
    std::fs::write(
        &cnf,
        format!(
            "[req]\ndistinguished_name = dn\nx509_extensions = v3_ca\nprompt = no\n\
             [dn]\nCN = zt-logship {name} CA\n\
             [v3_ca]\nbasicConstraints = critical,CA:TRUE\nkeyUsage = critical,keyCertSign,cRLSign\n\
             subjectKeyIdentifier = hash\n\
             [server]\nbasicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\n\
             extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n\
             subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"
        ),
    )
    .unwrap();
    let p = |f: &str| dir.join(format!("{name}-{f}"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let s = |p: &PathBuf| p.to_str().unwrap().to_string();
    let (cnf, ca, ca_key, key, csr, cert) = (
        s(&cnf),
        s(&p("ca.pem")),
        s(&p("ca.key")),
        s(&p("server.key")),
        s(&p("server.csr")),
        s(&p("server.pem")),
    );
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    run(&[
        &["req", "-config", &cnf, "-x509"],
        &ec[..],
        &["-keyout", &ca_key, "-out", &ca, "-days", "2"],
    ]
    .concat());
    run(&[
        &["req", "-config", &cnf, "-new"],
        &ec[..],
        &["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-set_serial",
        "2",
        "-out",
        &cert,
        "-days",
        "2",
        "-extfile",
        &cnf,
        "-extensions",
        "server",
    ]);
    Tls {
        ca: ca.into(),
        cert: cert.into(),
        key: key.into(),
    }
}

/// One rsyslogd of the test's own (zos-testkit's), with async waits.
struct Receiver(Rsyslog);

impl std::ops::Deref for Receiver {
    type Target = Rsyslog;
    fn deref(&self) -> &Rsyslog {
        &self.0
    }
}

impl Receiver {
    /// A receiver on 127.0.0.1 and a free port, or `None` (and a SKIP line) without
    /// rsyslogd.
    fn start(test: &str, tls: Option<&Tls>) -> Option<Receiver> {
        if !rsyslog::needs(false).check(test) {
            return None;
        }
        let rx = Rsyslog::start(IpAddr::from([127, 0, 0, 1]), tls)
            .unwrap_or_else(|e| panic!("{test}: {e}"));
        Some(Receiver(rx))
    }

    /// Starts it again (same port, same records file).
    fn run(&mut self) {
        self.0.run().unwrap_or_else(|e| panic!("{e}"));
    }

    /// SIGTERM (rsyslogd writes out what it received), and wait for it to exit.
    fn stop(&mut self) {
        self.0.stop();
    }

    /// Waits (bounded) until the records satisfy `pred`; returns them.
    async fn wait(&self, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let r = self.records();
            if pred(&r) {
                return r;
            }
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for {what}; records: {r:#?}\nrsyslogd: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits for a record whose msg is `msg`.
    async fn wait_msg(&self, msg: &str) -> Vec<Value> {
        self.wait(msg, |r| r.iter().any(|v| v["msg"] == msg)).await
    }
}

fn config(node: &str) -> ShipperConfig {
    let mut c = ShipperConfig::new(node);
    c.backoff = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
    };
    c
}

fn msgs(records: &[Value]) -> Vec<String> {
    records
        .iter()
        .map(|v| v["msg"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_lines_arrive_with_their_rfc5424_fields() {
    let Some(rx) = Receiver::start("syslog_lines_arrive_with_their_rfc5424_fields", None) else {
        return;
    };
    let dest = Destination::parse(&rx.url("syslog+tcp")).unwrap();
    let (node, sink) = Shipper::node(dest.clone(), config("zt-node-1")).unwrap();

    let mut line = Line::new(
        "zosd",
        Severity::Warning,
        "first line\n  second line: ünïcödé ✓\nthird",
    )
    .msgid("POOL")
    .param("pool", "ssd \"0\" [a] \\b");
    line.procid = Some("42".into());
    let sent_time = line.time;
    sink.send(line);
    // zosd's own events, through the layer.
    {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(ShipLayer::new(sink.clone(), "zosd"));
        let _guard = tracing::subscriber::set_default(subscriber);
        tracing::error!(contract = "c-9", "deploy failed");
        // This crate's own events stay out of the queue.
        tracing::warn!(target: "zos_logship::shipper", "not shipped");
    }
    // A kernel record, as PID 1 forwards them.
    let rec = kmsg::parse_record(b"4,77,1500000,-;zt-logship: oops \\x5c ok\n").unwrap();
    sink.send(kmsg::record_line(
        &rec,
        std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_582_000),
    ));
    // A tenant's line.
    let (tenant, tsink) = Shipper::tenant(dest, "c-7", config("zt-node-1")).unwrap();
    tsink.send(
        "web",
        Line::new("web", Severity::Informational, "hello from web").facility(Facility::User),
    );

    let records = rx.wait("four lines", |r| r.len() >= 4).await;
    let by_app = |app: &str| {
        records
            .iter()
            .find(|v| v["app"] == app)
            .unwrap_or_else(|| panic!("no {app}: {records:#?}"))
    };

    let v = by_app("zosd");
    // The first zosd record is the direct line (sent before the layer's).
    let v = if v["msgid"] == "POOL" {
        v
    } else {
        records.iter().find(|v| v["msgid"] == "POOL").unwrap()
    };
    assert_eq!(v["pri"], "28"); // daemon(3) * 8 + warning(4)
    assert_eq!(
        (v["facility"].as_str(), v["severity"].as_str()),
        (Some("3"), Some("4"))
    );
    assert_eq!(v["timestamp"], zos_logship::rfc3339(sent_time).as_str());
    assert_eq!(v["hostname"], "zt-node-1");
    assert_eq!(v["procid"], "42");
    assert_eq!(v["sd"], r#"[zos pool="ssd \"0\" [a\] \\b"]"#);
    assert_eq!(v["msg"], "first line\n  second line: ünïcödé ✓\nthird");

    let ev = records
        .iter()
        .find(|v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("deploy failed"))
        })
        .unwrap();
    assert_eq!(
        (ev["app"].as_str(), ev["severity"].as_str()),
        (Some("zosd"), Some("3"))
    );
    assert_eq!(ev["msg"], r#"deploy failed contract="c-9""#);
    assert_eq!(ev["sd"], r#"[zos target="rsyslog"]"#);

    let k = by_app("kernel");
    assert_eq!(
        (
            k["facility"].as_str(),
            k["severity"].as_str(),
            k["pri"].as_str()
        ),
        (Some("0"), Some("4"), Some("4"))
    );
    assert_eq!(k["msg"], "zt-logship: oops \\ ok");
    assert_eq!(k["timestamp"], "2026-12-06T18:33:21.500000Z");
    assert_eq!(k["sd"], r#"[zos seq="77"]"#);

    let w = by_app("web");
    assert_eq!(w["sd"], r#"[zos contract="c-7" workload="web"]"#);
    assert_eq!(
        (w["facility"].as_str(), w["msg"].as_str()),
        (Some("1"), Some("hello from web"))
    );

    assert_eq!(records.len(), 4, "only these four: {records:#?}");
    assert!(!msgs(&records).iter().any(|m| m.contains("not shipped")));
    assert_eq!(node.stats().sent, 3);
    assert_eq!(tenant.stats().sent, 1);
}

/// ATTACK: contract A's workload tries to get lines to contract B's receiver (and to
/// label them as B's). Nothing of A's may appear at B's, nor B's at A's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contracts_lines_reach_only_its_own_receiver() {
    let test = "a_contracts_lines_reach_only_its_own_receiver";
    let Some(rx_a) = Receiver::start(test, None) else {
        return;
    };
    let Some(rx_b) = Receiver::start(test, None) else {
        return;
    };
    let mut tenants = TenantShippers::new(config("zt-node-2"));
    tenants
        .set(
            "c-a",
            Some(Destination::parse(&rx_a.url("syslog+tcp")).unwrap()),
        )
        .unwrap();
    tenants
        .set(
            "c-b",
            Some(Destination::parse(&rx_b.url("syslog+tcp")).unwrap()),
        )
        .unwrap();
    let (a, b) = (tenants.sink("c-a").unwrap(), tenants.sink("c-b").unwrap());
    assert_eq!((a.contract(), b.contract()), ("c-a", "c-b"));
    for i in 0..50 {
        a.send(
            "web",
            Line::new("web", Severity::Informational, format!("A-{i}")),
        );
        // The attack: a line of A's that claims to be B's.
        a.send(
            "web",
            Line::new("web", Severity::Informational, format!("A-claims-B-{i}"))
                .param("contract", "c-b"),
        );
        b.send(
            "db",
            Line::new("db", Severity::Informational, format!("B-{i}")),
        );
    }
    a.send("web", Line::new("web", Severity::Notice, "A-end"));
    b.send("db", Line::new("db", Severity::Notice, "B-end"));

    let ra = rx_a.wait_msg("A-end").await;
    let rb = rx_b.wait_msg("B-end").await;
    // Full content, after the positive marker arrived at each.
    assert_eq!(ra.len(), 101, "{:?}", msgs(&ra));
    assert_eq!(rb.len(), 51, "{:?}", msgs(&rb));
    for v in &ra {
        assert!(v["msg"].as_str().unwrap().starts_with("A-"), "{v}");
        assert_eq!(v["sd"], r#"[zos contract="c-a" workload="web"]"#, "{v}");
    }
    for v in &rb {
        assert!(v["msg"].as_str().unwrap().starts_with("B-"), "{v}");
        assert_eq!(v["sd"], r#"[zos contract="c-b" workload="db"]"#, "{v}");
    }
    let a_in_order: Vec<String> = msgs(&ra)
        .into_iter()
        .filter(|m| m.starts_with("A-") && !m.contains("claims"))
        .collect();
    let want: Vec<String> = (0..50)
        .map(|i| format!("A-{i}"))
        .chain(["A-end".to_string()])
        .collect();
    assert_eq!(a_in_order, want);
}

/// At boot the destination is not known yet (the farm record is read later): lines are
/// queued from the first instant and arrive once it is set; a new destination takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_lines_wait_for_the_destination_then_follow_it_when_it_changes() {
    let test = "boot_lines_wait_for_the_destination_then_follow_it_when_it_changes";
    let Some(rx_a) = Receiver::start(test, None) else {
        return;
    };
    let Some(rx_b) = Receiver::start(test, None) else {
        return;
    };
    let (shipper, sink) = Shipper::node_unbound(config("zt-node-9")).unwrap();
    for i in 0..10 {
        sink.send(Line::new(
            "init",
            Severity::Informational,
            format!("boot-{i}"),
        ));
    }
    let s = shipper.stats();
    assert_eq!((s.queued, s.sent, s.connected), (10, 0, false), "{s:?}");
    assert_eq!(shipper.destination(), None);

    shipper.set_destination(Destination::parse(&rx_a.url("syslog+tcp")).unwrap());
    sink.send(Line::new("zosd", Severity::Informational, "at-a"));
    let ra = rx_a.wait_msg("at-a").await;
    let want: Vec<String> = (0..10)
        .map(|i| format!("boot-{i}"))
        .chain(["at-a".to_string()])
        .collect();
    assert_eq!(msgs(&ra), want);
    shipper.wait_until(WAIT, |s| s.sent == 11).await.unwrap();

    shipper.set_destination(Destination::parse(&rx_b.url("syslog+tcp")).unwrap());
    sink.send(Line::new("zosd", Severity::Informational, "at-b"));
    let rb = rx_b.wait_msg("at-b").await;
    assert_eq!(msgs(&rb), ["at-b"]);
    assert_eq!(
        msgs(&rx_a.records()),
        want,
        "nothing more at the old destination"
    );
    let s = shipper.shutdown(WAIT).await;
    assert_eq!((s.sent, s.queued, s.dropped), (12, 0, 0));
}

fn outage() -> Duration {
    let secs = std::env::var("ZT_LOGSHIP_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30u64);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_written_while_the_receiver_is_down_arrive_after_it_restarts_in_order() {
    let test = "lines_written_while_the_receiver_is_down_arrive_after_it_restarts_in_order";
    let Some(mut rx) = Receiver::start(test, None) else {
        return;
    };
    let (shipper, sink) = Shipper::node(
        Destination::parse(&rx.url("syslog+tcp")).unwrap(),
        config("zt-node-3"),
    )
    .unwrap();
    sink.send(Line::new("zosd", Severity::Informational, "before"));
    rx.wait_msg("before").await;

    rx.stop();
    // The shipper saw the receiver go (positive signal), before anything is written.
    shipper
        .wait_until(WAIT, |s| !s.connected)
        .await
        .expect("shipper noticed the receiver left");
    let window = outage();
    let lines = 20;
    let start = Instant::now();
    for i in 0..lines {
        sink.send(Line::new(
            "zosd",
            Severity::Informational,
            format!("during-{i}"),
        ));
        tokio::time::sleep(window / lines).await;
    }
    let s = shipper.stats();
    assert!(start.elapsed() >= window);
    assert_eq!(
        (s.queued, s.dropped, s.sent),
        (lines as usize, 0, 1),
        "{s:?}"
    );
    assert!(
        matches!(
            s.last_error,
            Some(DeliveryError::Connect { .. }) | Some(DeliveryError::Send { .. })
        ),
        "{s:?}"
    );

    rx.run();
    sink.send(Line::new("zosd", Severity::Informational, "after"));
    let records = rx.wait_msg("after").await;
    let want: Vec<String> = ["before".to_string()]
        .into_iter()
        .chain((0..lines).map(|i| format!("during-{i}")))
        .chain(["after".to_string()])
        .collect();
    assert_eq!(msgs(&records), want);
    let s = shipper.wait_until(WAIT, |s| s.queued == 0).await.unwrap();
    assert_eq!((s.sent, s.dropped), (lines as u64 + 2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_drops_exactly_the_excess_and_says_so_when_delivery_resumes() {
    let test = "overflow_drops_exactly_the_excess_and_says_so_when_delivery_resumes";
    let Some(mut rx) = Receiver::start(test, None) else {
        return;
    };
    rx.stop();
    let (n, k) = (25usize, 7usize);
    let mut cfg = config("zt-node-4");
    cfg.limits = Limits {
        max_lines: n,
        ..Limits::default()
    };
    // Started while the receiver is down: as at boot, before the uplink.
    let (shipper, sink) =
        Shipper::node(Destination::parse(&rx.url("syslog+tcp")).unwrap(), cfg).unwrap();
    for i in 0..n + k {
        sink.send(Line::new(
            "zosd",
            Severity::Informational,
            format!("line-{i}"),
        ));
    }
    let s = shipper.stats();
    assert_eq!((s.queued, s.dropped, s.sent), (n, k as u64, 0), "{s:?}");

    rx.run();
    let notice = format!("{k} lines dropped");
    let records = rx.wait_msg(&notice).await;
    let want: Vec<String> = (0..n)
        .map(|i| format!("line-{i}"))
        .chain([notice.clone()])
        .collect();
    assert_eq!(
        msgs(&records),
        want,
        "the oldest N kept, then the notice where the gap is"
    );
    let v = records.last().unwrap();
    assert_eq!(
        (v["msgid"].as_str(), v["severity"].as_str()),
        (Some("DROPPED"), Some("4"))
    );
    assert_eq!(v["sd"], format!("[zos dropped=\"{k}\"]"));
    let s = shipper
        .wait_until(WAIT, |s| s.queued == 0 && s.sent == n as u64)
        .await
        .unwrap();
    assert_eq!(s.dropped, k as u64);
    // Lines after the gap go through, after the notice.
    sink.send(Line::new("zosd", Severity::Informational, "resumed"));
    let records = rx.wait_msg("resumed").await;
    assert_eq!(records.len(), n + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_reach_a_plain_tcp_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        for line in BufReader::new(conn).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let dest = Destination::parse(&format!("jsonl+tcp://127.0.0.1:{port}")).unwrap();
    let (tenant, sink) = Shipper::tenant(dest, "c-json", config("zt-node-5")).unwrap();
    let line = Line::new(
        "api",
        Severity::Error,
        "panic:\n  at main.rs:1 \"quoted\" ✓",
    )
    .msgid("CRASH");
    let t = line.time;
    sink.send("api", line);
    sink.send("api", Line::new("api", Severity::Debug, "second"));

    let recv = || rx.recv_timeout(WAIT).expect("a JSON line");
    let v: Value = serde_json::from_str(&recv()).unwrap();
    assert_eq!(v["time"], zos_logship::rfc3339(t).as_str());
    assert_eq!(v["host"], "zt-node-5");
    assert_eq!(v["app"], "api");
    assert_eq!(
        (v["facility"].as_str(), v["severity"].as_str()),
        (Some("daemon"), Some("err"))
    );
    assert_eq!(v["msgid"], "CRASH");
    assert_eq!(
        (v["contract"].as_str(), v["workload"].as_str()),
        (Some("c-json"), Some("api"))
    );
    assert_eq!(v["message"], "panic:\n  at main.rs:1 \"quoted\" ✓");
    let v: Value = serde_json::from_str(&recv()).unwrap();
    assert_eq!(
        (v["message"].as_str(), v["severity"].as_str()),
        (Some("second"), Some("debug"))
    );
    tenant.wait_until(WAIT, |s| s.sent == 2).await.unwrap();
}

fn tls_receiver(test: &str) -> Option<(Receiver, tempfile::TempDir, Tls)> {
    let needs = rsyslog::needs(true).bin_from("openssl", "openssl");
    if !needs.check(test) {
        return None;
    }
    let certs = zos_testkit::tempdir("logship-ca");
    let good = make_ca(certs.path(), "good");
    let rx = Receiver::start(test, Some(&good))?;
    Some((rx, certs, good))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_lines_arrive_at_a_receiver_of_the_pinned_ca() {
    let test = "tls_lines_arrive_at_a_receiver_of_the_pinned_ca";
    let Some((rx, _certs, good)) = tls_receiver(test) else {
        return;
    };
    let ca = PinnedCa::from_file(&good.ca).unwrap();
    let dest = Destination::parse_with_ca(&rx.url("syslog+tls"), Some(ca)).unwrap();
    let (shipper, sink) = Shipper::node(dest, config("zt-node-6")).unwrap();
    sink.send(Line::new("zosd", Severity::Notice, "over tls\nline two"));
    let records = rx.wait_msg("over tls\nline two").await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["hostname"], "zt-node-6");
    assert_eq!(shipper.stats().last_error, None);
}

/// ATTACK: a receiver whose certificate chains to another CA (a man in the middle, or a
/// wrong destination) and one whose certificate names another host. Refused before any
/// line leaves; the lines stay queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_of_another_ca_or_name_is_refused() {
    let test = "a_receiver_of_another_ca_or_name_is_refused";
    let Some((rx, certs, good)) = tls_receiver(test) else {
        return;
    };
    let other = make_ca(certs.path(), "other");

    // Pinned to another CA.
    let ca = PinnedCa::from_file(&other.ca).unwrap();
    let dest = Destination::parse_with_ca(&rx.url("syslog+tls"), Some(ca)).unwrap();
    let (wrong_ca, sink) = Shipper::node(dest, config("zt-node-7")).unwrap();
    sink.send(Line::new("zosd", Severity::Notice, "secret-1"));
    let s = wrong_ca
        .wait_until(WAIT, |s| {
            matches!(
                s.last_error,
                Some(DeliveryError::CertificateRejected { .. })
            )
        })
        .await
        .unwrap_or_else(|s| panic!("no certificate refusal: {s:?}"));
    let Some(DeliveryError::CertificateRejected { reason, .. }) = &s.last_error else {
        unreachable!()
    };
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    assert_eq!((s.sent, s.queued, s.connected), (0, 1, false));

    // The right CA, but the certificate is for 127.0.0.1, not "localhost".
    let ca = PinnedCa::from_file(&good.ca).unwrap();
    let dest = Destination::parse_with_ca(
        &format!("syslog+tls://localhost:{}", rx.port()),
        Some(ca.clone()),
    )
    .unwrap();
    let (wrong_name, sink) = Shipper::node(dest, config("zt-node-7")).unwrap();
    sink.send(Line::new("zosd", Severity::Notice, "secret-2"));
    let s = wrong_name
        .wait_until(WAIT, |s| {
            matches!(
                s.last_error,
                Some(DeliveryError::CertificateRejected { .. })
            )
        })
        .await
        .unwrap_or_else(|s| panic!("no certificate refusal: {s:?}"));
    let Some(DeliveryError::CertificateRejected { reason, .. }) = &s.last_error else {
        unreachable!()
    };
    assert!(reason.contains("NotValidForName"), "{reason}");
    assert_eq!((s.sent, s.queued), (0, 1));

    // A positive marker through a correctly pinned shipper; then the full content has
    // only it.
    let dest = Destination::parse_with_ca(&rx.url("syslog+tls"), Some(ca)).unwrap();
    let (_ok, sink) = Shipper::node(dest, config("zt-node-7")).unwrap();
    sink.send(Line::new("zosd", Severity::Notice, "marker"));
    let records = rx.wait_msg("marker").await;
    assert_eq!(msgs(&records), ["marker"]);
    drop((wrong_ca, wrong_name));
}

/// The kernel's log, read from /dev/kmsg as PID 1 does, arrives with the kernel's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_log_records_arrive() {
    let test = "kernel_log_records_arrive";
    if !Needs::root().dev(kmsg::KMSG).check(test) {
        return;
    }
    let reader = match kmsg::KmsgReader::open(Path::new(kmsg::KMSG), false) {
        Ok(r) => r,
        Err(e) => {
            zos_testkit::skip_or_fail(test, &format!("cannot read {}: {e}", kmsg::KMSG));
            return;
        }
    };
    let Some(rx) = Receiver::start(test, None) else {
        return;
    };
    let (_shipper, sink) = Shipper::node(
        Destination::parse(&rx.url("syslog+tcp")).unwrap(),
        config("zt-node-8"),
    )
    .unwrap();
    kmsg::forward(reader, sink).unwrap();
    let marker = format!("zt-logship-{}: kernel log marker", std::process::id());
    // <11>: facility user (1), severity err (3), as a process writing to /dev/kmsg sets it.
    let mut dev = std::fs::OpenOptions::new()
        .write(true)
        .open(kmsg::KMSG)
        .unwrap();
    dev.write_all(format!("<11>{marker}\n").as_bytes()).unwrap();
    let records = rx
        .wait(&marker, |r| r.iter().any(|v| v["msg"] == marker.as_str()))
        .await;
    let v = records
        .iter()
        .find(|v| v["msg"] == marker.as_str())
        .unwrap();
    assert_eq!(
        (
            v["app"].as_str(),
            v["facility"].as_str(),
            v["severity"].as_str()
        ),
        (Some("kernel"), Some("1"), Some("3"))
    );
    assert!(v["sd"].as_str().unwrap().starts_with("[zos seq=\""), "{v}");
}
