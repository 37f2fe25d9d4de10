//! The etcd transport under attack: a real etcd (Debian's etcd-server) started with TLS
//! and client-certificate authentication, with certificates made in the test by the
//! openssl CLI (two CAs: ours, and a stranger's), and a rogue HTTP server that answers
//! with an endless body.
//!
//! - `etcds://` with our CA and client certificate works (put, get, list, watch);
//! - a client without a certificate, or with one from another CA: refused by the
//!   server, [`NotaryError::TlsRejectedByServer`], nothing stored;
//! - a server whose certificate is from another CA: refused by us,
//!   [`NotaryError::TlsUntrustedServer`], nothing stored there;
//! - a response body without end: [`NotaryError::ResponseTooLarge`] once the bound is
//!   passed, and the client stops reading there.

mod signed;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use signed::{contract, node};
use zos_notary::{AnyNotary, KeyPrefix, Notary, NotaryError, NotaryKey};

fn free_port() -> u16 {
    zos_testkit::etcd::free_port().unwrap()
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl ({e}): apt-get install -y openssl"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>-ca.pem`), and certificates it signed: a server one for 127.0.0.1
/// (`<name>-server.pem`/`.key`) and a client one (`<name>-client.pem`/`.key`).
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path, names: &[&str]) -> Pki {
        for name in names {
            let ca = format!("{name}-ca");
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
                    &format!("/CN=zt {name} CA"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                ],
            );
            for (leaf, ext) in [
                (
                    "server",
                    "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n\
                     basicConstraints=CA:FALSE\nkeyUsage=digitalSignature",
                ),
                (
                    "client",
                    "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n\
                     keyUsage=digitalSignature",
                ),
            ] {
                let base = format!("{name}-{leaf}");
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
                        &format!("/CN=zt {name} {leaf}"),
                        "-keyout",
                        &format!("{base}.key"),
                        "-out",
                        &format!("{base}.csr"),
                    ],
                );
                std::fs::write(dir.join(format!("{base}.ext")), ext).unwrap();
                openssl(
                    dir,
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &format!("{base}.csr"),
                        "-CA",
                        &format!("{ca}.pem"),
                        "-CAkey",
                        &format!("{ca}.key"),
                        "-CAcreateserial",
                        "-days",
                        "2",
                        "-extfile",
                        &format!("{base}.ext"),
                        "-out",
                        &format!("{base}.pem"),
                    ],
                );
            }
        }
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

/// etcd serving HTTPS only to clients with a certificate from `client_ca`, presenting
/// `<server>-server.pem`. Killed by Drop.
struct TlsEtcd {
    child: Child,
    port: u16,
    _data: tempfile::TempDir,
}

impl TlsEtcd {
    fn start(pki: &Pki, server: &str, client_ca: &str) -> TlsEtcd {
        let data = zos_testkit::tempdir("etcd");
        let (port, peer) = (free_port(), free_port());
        let log = std::fs::File::create(data.path().join("etcd.log")).unwrap();
        let client_url = format!("https://127.0.0.1:{port}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child =
            zos_testkit::etcd::command(None, &data.path().join("data"), &client_url, &peer_url)
                .arg(format!(
                    "--cert-file={}",
                    pki.path(&format!("{server}-server.pem"))
                ))
                .arg(format!(
                    "--key-file={}",
                    pki.path(&format!("{server}-server.key"))
                ))
                .arg("--client-cert-auth")
                .arg(format!(
                    "--trusted-ca-file={}",
                    pki.path(&format!("{client_ca}-ca.pem"))
                ))
                // Values far above a record's limit can be stored: as a hostile operator could.
                .arg("--max-request-bytes=8388608")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start etcd ({e}): apt-get install -y etcd-server")
                });
        TlsEtcd {
            child,
            port,
            _data: data,
        }
    }

    /// `etcds://` with the CA `ca` pinned and the client certificate of `client`.
    fn url(&self, pki: &Pki, ca: &str, client: Option<&str>) -> String {
        let mut url = format!(
            "etcds://127.0.0.1:{}/zt-tls?ca={}",
            self.port,
            pki.path(&format!("{ca}-ca.pem"))
        );
        if let Some(c) = client {
            url.push_str(&format!(
                "&cert={}&key={}",
                pki.path(&format!("{c}-client.pem")),
                pki.path(&format!("{c}-client.key"))
            ));
        }
        url
    }

    /// Waits until a client with `url` is served (a get answers), the process dies,
    /// or 30 s pass.
    async fn wait_ready(&mut self, url: &str) -> AnyNotary {
        let notary = zos_notary::open(url).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let key = NotaryKey::heartbeat(&node());
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("etcd exited: {status}");
            }
            match notary.get(&key).await {
                Ok(_) => return notary,
                Err(e) if Instant::now() > deadline => panic!("etcd not ready: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl Drop for TlsEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tmp() -> tempfile::TempDir {
    zos_testkit::tempdir("pki")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcds_with_the_pinned_ca_and_a_client_certificate_works() {
    let dir = tmp();
    let pki = Pki::new(dir.path(), &["ours"]);
    let mut etcd = TlsEtcd::start(&pki, "ours", "ours");
    let n = etcd.wait_ready(&etcd.url(&pki, "ours", Some("ours"))).await;
    assert!(matches!(&n, AnyNotary::Etcd(e) if e.endpoint().starts_with("https://")));
    let mut watch = n.watch(&KeyPrefix::node_contracts(&node())).await.unwrap();
    let r = contract("c1");
    n.put(&r).await.unwrap();
    assert_eq!(
        n.get(&r.notary_key().unwrap()).await.unwrap(),
        Some(r.clone())
    );
    assert_eq!(
        n.list(&KeyPrefix::node_contracts(&node())).await.unwrap(),
        vec![r.clone()]
    );
    let got = tokio::time::timeout(Duration::from_secs(10), watch.recv())
        .await
        .expect("delivered over TLS")
        .unwrap();
    assert_eq!(got, r);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_right_certificate_is_refused() {
    let dir = tmp();
    let pki = Pki::new(dir.path(), &["ours", "theirs"]);
    let mut etcd = TlsEtcd::start(&pki, "ours", "ours");
    let good = etcd.wait_ready(&etcd.url(&pki, "ours", Some("ours"))).await;

    for client in [None, Some("theirs")] {
        let n = zos_notary::open(&etcd.url(&pki, "ours", client)).unwrap();
        // Every attempt is refused. Under TLS 1.3 the client's handshake is done before
        // the server has checked its certificate: the server's alert is what the client
        // reads next, unless the server's reset (it closes after the alert) overtakes
        // it, which the kernel then discards. So an attempt may also end in a plain
        // connection error; the alert is read in all but rare cases.
        let mut named = 0;
        for attempt in 0..3 {
            let err = if attempt % 2 == 0 {
                n.put(&contract("intruder")).await.unwrap_err()
            } else {
                n.list(&KeyPrefix::all()).await.map(|_| ()).unwrap_err()
            };
            match err {
                NotaryError::TlsRejectedByServer { .. } => named += 1,
                NotaryError::Http { .. } => eprintln!("client {client:?}: {err}"),
                other => panic!("client certificate {client:?}: {other} ({other:?})"),
            }
        }
        assert!(named > 0, "client certificate {client:?}: never named");
    }
    assert!(
        good.list(&KeyPrefix::all()).await.unwrap().is_empty(),
        "nothing was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_a_certificate_from_another_ca_is_refused() {
    let dir = tmp();
    let pki = Pki::new(dir.path(), &["ours", "theirs"]);
    // The impostor: a real etcd with the other CA's server certificate, which accepts
    // our client certificate (it trusts our CA, and its own for its gateway), so only
    // our check can stop us.
    let both = [
        std::fs::read(dir.path().join("ours-ca.pem")).unwrap(),
        std::fs::read(dir.path().join("theirs-ca.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(dir.path().join("both-ca.pem"), both).unwrap();
    let mut etcd = TlsEtcd::start(&pki, "theirs", "both");
    // Its own operator's view (pinning its CA), to see what it stored.
    let theirs = etcd
        .wait_ready(&etcd.url(&pki, "theirs", Some("ours")))
        .await;

    let n = zos_notary::open(&etcd.url(&pki, "ours", Some("ours"))).unwrap();
    let err = n.put(&contract("c1")).await.unwrap_err();
    assert!(
        matches!(err, NotaryError::TlsUntrustedServer { .. }),
        "{err} ({err:?})"
    );
    let err = n
        .get(&contract("c1").notary_key().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, NotaryError::TlsUntrustedServer { .. }),
        "{err}"
    );
    let err = n.watch(&KeyPrefix::all()).await.unwrap_err();
    assert!(
        matches!(err, NotaryError::TlsUntrustedServer { .. }),
        "{err}"
    );
    assert!(
        theirs.list(&KeyPrefix::all()).await.unwrap().is_empty(),
        "nothing reached the impostor"
    );
}

/// A rogue gateway: answers every request with a 200 and an endless chunked body, one
/// JSON message that never ends (a string that goes on and on), counting what it
/// managed to send; stops when the client goes away.
fn endless_server() -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut s) = conn else { return };
            let counter = counter.clone();
            std::thread::spawn(move || {
                let mut req = [0u8; 4096];
                let _ = s.read(&mut req);
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                      Transfer-Encoding: chunked\r\n\r\n",
                );
                let start = b"{\"result\":{\"header\":{},\"x\":\"";
                let _ = s.write_all(format!("{:x}\r\n", start.len()).as_bytes());
                let _ = s.write_all(start);
                let _ = s.write_all(b"\r\n");
                let chunk = vec![b'a'; 64 * 1024];
                let head = format!("{:x}\r\n", chunk.len());
                // Up to 1 GiB, far beyond any bound: the test would see it all if the
                // client read on.
                for _ in 0..(1 << 14) {
                    if s.write_all(head.as_bytes()).is_err()
                        || s.write_all(&chunk).is_err()
                        || s.write_all(b"\r\n").is_err()
                    {
                        return;
                    }
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
                let _ = s.write_all(b"0\r\n\r\n");
            });
        }
    });
    (port, sent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_response_body_is_cut_off_at_the_bound() {
    let (port, sent) = endless_server();
    let n = zos_notary::open(&format!("etcd://127.0.0.1:{port}/zt")).unwrap();
    let err = n
        .get(&contract("c1").notary_key().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, NotaryError::ResponseTooLarge { max, .. } if max == zos_notary::MAX_RESPONSE),
        "{err}"
    );
    let err = n.list(&KeyPrefix::all()).await.unwrap_err();
    assert!(matches!(err, NotaryError::ResponseTooLarge { .. }), "{err}");
    let err = n.watch(&KeyPrefix::all()).await.unwrap_err();
    assert!(
        matches!(err, NotaryError::ResponseTooLarge { max, .. } if max == zos_notary::MAX_WATCH_MESSAGE),
        "{err}"
    );
    // Three requests, each cut off near its bound (plus what sat in socket buffers),
    // not the gigabyte on offer.
    let total = sent.load(Ordering::Relaxed);
    assert!(total < 64 << 20, "the client read {total} bytes");
}

/// Writes `bytes` under logical key `key` straight into etcd (as a hostile operator
/// could, past every check), over the same TLS with our client certificate.
async fn raw_put(pki: &Pki, port: u16, key: &str, bytes: &[u8]) {
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(pki.path("ours-ca.pem")).unwrap()).unwrap();
    let identity = reqwest::Identity::from_pem(
        &[
            std::fs::read(pki.path("ours-client.pem")).unwrap(),
            std::fs::read(pki.path("ours-client.key")).unwrap(),
        ]
        .concat(),
    )
    .unwrap();
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .identity(identity)
        .build()
        .unwrap();
    let resp = client
        .post(format!("https://127.0.0.1:{port}/v3/kv/put"))
        .json(&json!({
            "key": B64.encode(format!("zt-tls/{key}")),
            "value": B64.encode(bytes),
        }))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
}

/// A value of 3 MiB in a real etcd (over TLS): `get` refuses it with
/// `ResponseTooLarge` (cut off while streaming), `list` skips it and lists the rest,
/// and a watch that meets it in its stream catches up and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_value_in_a_real_etcd_is_refused_and_skipped() {
    let dir = tmp();
    let pki = Pki::new(dir.path(), &["ours"]);
    let mut etcd = TlsEtcd::start(&pki, "ours", "ours");
    let n = etcd.wait_ready(&etcd.url(&pki, "ours", Some("ours"))).await;
    let mut watch = n.watch(&KeyPrefix::node_contracts(&node())).await.unwrap();

    let good = contract("good");
    n.put(&good).await.unwrap();
    let huge = NotaryKey::contract(&node(), "huge").unwrap();
    raw_put(&pki, etcd.port, huge.as_str(), &vec![b' '; 3 << 20]).await;
    let after = contract("after");
    n.put(&after).await.unwrap();

    let err = n.get(&huge).await.unwrap_err();
    assert!(
        matches!(err, NotaryError::ResponseTooLarge { max, .. } if max == zos_notary::MAX_RESPONSE),
        "{err}"
    );
    let listed = n.list(&KeyPrefix::node_contracts(&node())).await.unwrap();
    assert_eq!(listed, vec![after.clone(), good.clone()]);

    // The watch delivers `good`, then meets the huge message, catches up from a
    // listing (which skips it) and delivers `after`.
    let mut got = Vec::new();
    while !got.contains(&after) {
        let r = tokio::time::timeout(Duration::from_secs(20), watch.recv())
            .await
            .expect("the watch goes on past the huge value")
            .unwrap();
        got.push(r);
    }
    assert_eq!(got.first(), Some(&good));
    assert!(got.iter().all(|r| r.key != huge.as_str()));
}
