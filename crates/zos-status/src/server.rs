//! The D-Bus interface, served peer-to-peer on a unix socket (no bus daemon).
//!
//! `org.zos.Node1` at `/org/zos/node` has read-only properties and no methods: a
//! caller can look, not change. The socket is created mode 0600 (in a 0700 directory
//! when zosd creates the directory), and a peer whose uid is neither root nor zosd's
//! own is dropped before the D-Bus handshake, whatever the file mode says.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::model::{NodeStatus, Resources};
use crate::{StatusError, StatusReceiver, OBJECT_PATH};

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// A connection is closed after this, whatever it does (`zos status` needs ms).
const MAX_CONNECTION_LIFE: Duration = Duration::from_secs(60);

/// `org.zos.Node1`: the node's status, read-only.
pub struct Node1 {
    status: StatusReceiver,
}

impl Node1 {
    /// The interface over a status channel; it only reads it.
    pub fn new(status: StatusReceiver) -> Self {
        Node1 { status }
    }

    fn with<T>(&self, f: impl FnOnce(&NodeStatus) -> T) -> T {
        f(&self.status.borrow())
    }
}

fn tuple(r: &Resources) -> (u64, u64, u64, u64) {
    (r.cpu, r.memory_bytes, r.ssd_bytes, r.hdd_bytes)
}

/// Properties only, each read-only and without change signals (the uptime alone
/// changes every second; readers ask when they want to know).
#[zbus::interface(name = "org.zos.Node1")]
impl Node1 {
    /// The node's public key, lowercase hex.
    #[zbus(property(emits_changed_signal = "false"))]
    fn node_key(&self) -> String {
        self.with(|s| s.node.clone())
    }

    /// The farm it registers in; empty when none is configured.
    #[zbus(property(emits_changed_signal = "false"))]
    fn farm(&self) -> String {
        self.with(|s| s.farm.clone().unwrap_or_default())
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn version(&self) -> String {
        self.with(|s| s.version.clone())
    }

    /// "starting", "registering", "serving", "stopping".
    #[zbus(property(emits_changed_signal = "false"))]
    fn state(&self) -> String {
        self.with(|s| s.state.clone())
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn uptime_secs(&self) -> u64 {
        self.with(|s| s.uptime_secs)
    }

    /// `<interface> <address>/<prefix>`.
    #[zbus(property(emits_changed_signal = "false"))]
    fn addresses(&self) -> Vec<String> {
        self.with(|s| s.addresses.clone())
    }

    /// (label, kind, state, size bytes, used bytes).
    #[zbus(property(emits_changed_signal = "false"))]
    fn pools(&self) -> Vec<(String, String, String, u64, u64)> {
        self.with(|s| {
            s.pools
                .iter()
                .map(|p| {
                    (
                        p.label.clone(),
                        p.kind.clone(),
                        p.state.clone(),
                        p.size_bytes,
                        p.used_bytes,
                    )
                })
                .collect()
        })
    }

    /// What contracts may reserve: (cpus, memory, ssd, hdd bytes).
    #[zbus(property(emits_changed_signal = "false"))]
    fn offered(&self) -> (u64, u64, u64, u64) {
        self.with(|s| tuple(&s.offered))
    }

    /// What the owned contracts reserve: (cpus, memory, ssd, hdd bytes).
    #[zbus(property(emits_changed_signal = "false"))]
    fn reserved(&self) -> (u64, u64, u64, u64) {
        self.with(|s| tuple(&s.reserved))
    }

    /// (id, version (0: none), state, message).
    #[zbus(property(emits_changed_signal = "false"))]
    fn contracts(&self) -> Vec<(String, u64, String, String)> {
        self.with(|s| {
            s.contracts
                .iter()
                .map(|c| {
                    (
                        c.id.clone(),
                        c.version.unwrap_or(0),
                        c.state.clone(),
                        c.message.clone(),
                    )
                })
                .collect()
        })
    }

    /// (contract, name, kind, state, restarts, address, runtime); "" when unknown.
    #[zbus(property(emits_changed_signal = "false"))]
    fn workloads(&self) -> Vec<(String, String, String, String, u32, String, String)> {
        self.with(|s| {
            s.workloads
                .iter()
                .map(|w| {
                    (
                        w.contract.clone(),
                        w.name.clone(),
                        w.kind.clone(),
                        w.state.clone(),
                        w.restarts,
                        w.address.clone().unwrap_or_default(),
                        w.runtime.clone().unwrap_or_default(),
                    )
                })
                .collect()
        })
    }

    /// (unix seconds, source, message), oldest first.
    #[zbus(property(emits_changed_signal = "false"))]
    fn last_errors(&self) -> Vec<(u64, String, String)> {
        self.with(|s| {
            s.errors
                .iter()
                .map(|e| (e.time, e.source.clone(), e.message.clone()))
                .collect()
        })
    }

    /// All of the above in one consistent JSON document (what `zos status` reads).
    #[zbus(property(emits_changed_signal = "false"))]
    fn status_json(&self) -> String {
        self.with(|s| serde_json::to_string(s).unwrap_or_default())
    }
}

/// The running server: stops and removes its socket when dropped.
pub struct StatusServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl StatusServer {
    /// The socket it serves on.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds `path` (replacing a stale socket) and serves `status` on it. Must be called
/// inside a tokio runtime.
pub fn serve(path: &Path, status: StatusReceiver) -> Result<StatusServer, StatusError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| StatusError::io("mkdir", dir, e))?;
    }
    // Bound under a temporary name, made 0600, then renamed over the final name: the
    // socket is never reachable with the umask's mode, and a stale socket from a
    // previous run is replaced atomically.
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "status.sock".into());
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| StatusError::io("bind", &tmp, e))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| StatusError::io("chmod", &tmp, e))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(|e| StatusError::io("rename", path, e)));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    tracing::info!(socket = %path.display(), "status interface (D-Bus, read-only) listening on a unix socket");
    let task = tokio::spawn(accept_loop(listener, status));
    Ok(StatusServer {
        path: path.to_path_buf(),
        task,
    })
}

async fn accept_loop(listener: UnixListener, status: StatusReceiver) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let own_uid = nix::unistd::geteuid().as_raw();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "status socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let uid = match stream.peer_cred() {
            Ok(c) => c.uid(),
            Err(e) => {
                tracing::warn!(error = %e, "status socket: no peer credentials; dropped");
                continue;
            }
        };
        if uid != 0 && uid != own_uid {
            tracing::warn!(
                uid,
                "status socket: peer is neither root nor zosd's user; dropped"
            );
            continue;
        }
        let status = status.clone();
        tokio::spawn(async move {
            let _permit = permit;
            // Past its life the connection is simply dropped.
            if let Ok(Err(e)) =
                tokio::time::timeout(MAX_CONNECTION_LIFE, serve_one(stream, status)).await
            {
                tracing::debug!(error = %e, "status connection ended");
            }
        });
    }
}

/// One peer: the handshake, then the object server until the peer hangs up.
async fn serve_one(stream: UnixStream, status: StatusReceiver) -> Result<(), zbus::Error> {
    let conn = zbus::connection::Builder::unix_stream(stream)
        .server(zbus::Guid::generate())?
        .p2p()
        .serve_at(OBJECT_PATH, Node1::new(status))?
        .build()
        .await?;
    // The stream ends (or errs) when the socket closes.
    let mut messages = zbus::MessageStream::from(&conn);
    while let Some(Ok(_)) = messages.next().await {}
    Ok(())
}
