//! Backends for the shared notary suite: a `dir://` notary in a `zt-` temp dir, and a
//! real etcd server (the kit's: Debian's `etcd-server` on free loopback ports), one per
//! fixture, killed and removed by `Drop`.
#![allow(dead_code)]

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use zos_notary::{AnyNotary, DirNotary, EtcdNotary, NotaryKey};
use zos_testkit::etcd::Etcd;

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
        let dir = zos_testkit::tempdir("notary");
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

pub struct EtcdBackend {
    pub server: Etcd,
    url: String,
    notary: AnyNotary,
}

impl EtcdBackend {
    pub async fn new() -> EtcdBackend {
        let server = tokio::task::spawn_blocking(Etcd::temp).await.unwrap();
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
        self.server.post("v3/kv/put", &body).unwrap();
    }
    fn reopen(&self) -> AnyNotary {
        zos_notary::open(&self.url).unwrap()
    }
}
