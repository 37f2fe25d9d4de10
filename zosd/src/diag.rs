//! Diagnostics by signed request (docs/diagnostics.md): the node watches
//! `nodes/<node>/requests/`, checks each request (its body, its window, that it is for
//! this node) and who asked (the farmer of the node's farm for the node and its uplink,
//! a contract's owner for their own contract and workloads), runs at most one at a time
//! (a bounded queue: a full queue is a `busy` refusal), and publishes its signed answer
//! at `nodes/<node>/answers/<id>`: a refusal with its code, a probe's result
//! (zos-probe, inside the workload's network namespace or the node's), or a support
//! bundle (zos-support, inline in the answer under the record bound). Everything runs
//! on its own task and blocking threads: the engine is never waited on.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use zos_contract::deployment::{Workload, WorkloadKind};
use zos_contract::{Digest, PublicKey, SecretKey};
use zos_engine::journal::JournalData;
use zos_engine::{ContractSummary, JournalStore, KernelNames, Owned};
use zos_notary::record::{
    DiagAction, DiagAnswer, DiagRefusal, DiagRequest, DiagScope, InlineBundle, RefusalCode,
    MAX_INLINE_BUNDLE,
};
use zos_notary::{AnyNotary, KeyKind, KeyPrefix, Notary, NotaryKey, Record};
use zos_probe::{ProbeResult, ProbeSpec};
use zos_storage::Storage;
use zos_support::{BundleConfig, Redactor, Source};

use crate::config::NodeConfig;
use crate::node::{StateRecord, JOURNAL_KEY};

mod limit;

use limit::{Limits, Verdict};

/// A request as the node reads it.
pub type Request = DiagRequest<ProbeSpec>;
/// An answer as the node writes it.
pub type Answer = DiagAnswer<ProbeResult>;

/// Requests waiting to run; one more is refused `busy`.
const QUEUE: usize = 8;
/// Request versions remembered against re-deliveries of the watch.
const SEEN_MAX: usize = 4096;
/// The longest a probe may take.
const PROBE_LIMIT: Duration = Duration::from_secs(30);

/// What one request is about, once authorized.
#[derive(Debug)]
enum Target {
    Node,
    Uplink,
    Contract(Box<Owned>),
    Workload(Box<Owned>, Box<Workload>),
}

/// Who may ask what (docs/diagnostics.md, "Authorization"): the farmer anything on
/// this node; a contract's owner their own contract and its workloads; nobody else
/// anything. A contract not on this node is `unknown_workload` to the farmer and
/// `not_owner` to anyone else (a stranger does not learn what runs here).
fn authorize(
    scope: &DiagScope,
    author: &PublicKey,
    farmer: Option<&PublicKey>,
    contract: impl Fn(&str) -> Option<Owned>,
) -> Result<Target, DiagRefusal> {
    let is_farmer = farmer == Some(author);
    let owned = |id: &str| -> Result<Owned, DiagRefusal> {
        match contract(id) {
            Some(o) if is_farmer || o.owner == *author => Ok(o),
            None if is_farmer => Err(DiagRefusal::new(
                RefusalCode::UnknownWorkload,
                format!("contract {id:?} does not run on this node"),
            )),
            _ => Err(DiagRefusal::new(
                RefusalCode::NotOwner,
                format!("{author} does not own a contract {id:?} on this node"),
            )),
        }
    };
    match scope {
        DiagScope::Node | DiagScope::Uplink if !is_farmer => Err(DiagRefusal::new(
            RefusalCode::FarmerOnly,
            match farmer {
                Some(f) => format!("only the farmer ({f}) may ask about the node"),
                None => "this node is in no farm: nobody may ask about the node".into(),
            },
        )),
        DiagScope::Node => Ok(Target::Node),
        DiagScope::Uplink => Ok(Target::Uplink),
        DiagScope::Contract(id) => Ok(Target::Contract(Box::new(owned(id)?))),
        DiagScope::Workload { contract, workload } => {
            let o = owned(contract)?;
            let w = o
                .deployment
                .workloads
                .iter()
                .find(|w| w.name == *workload)
                .cloned()
                .ok_or_else(|| {
                    DiagRefusal::new(
                        RefusalCode::UnknownWorkload,
                        format!("contract {contract:?} has no workload {workload:?}"),
                    )
                })?;
            Ok(Target::Workload(Box::new(o), Box::new(w)))
        }
    }
}

/// The dispatcher's view of the node.
pub struct Diag {
    key: SecretKey,
    notary: AnyNotary,
    farmer: Option<PublicKey>,
    storage: Arc<Storage>,
    cfg: NodeConfig,
}

impl Diag {
    /// The dispatcher of node `key`; `farmer`: the farm record's key, if in a farm.
    pub fn new(
        cfg: &NodeConfig,
        key: &SecretKey,
        notary: AnyNotary,
        storage: Arc<Storage>,
        farmer: Option<PublicKey>,
    ) -> Diag {
        Diag {
            key: key.clone(),
            notary,
            farmer,
            storage,
            cfg: cfg.clone(),
        }
    }

    /// Starts watching for requests; the task ends when the handle is dropped.
    pub fn start(self, summaries: tokio::sync::watch::Receiver<Vec<ContractSummary>>) -> Running {
        let diag = Arc::new(self);
        let (tx, rx) = tokio::sync::mpsc::channel::<Record>(QUEUE);
        let worker = tokio::spawn(worker(diag.clone(), rx, summaries));
        let watcher = tokio::spawn(watcher(diag, tx));
        Running(vec![worker, watcher])
    }

    fn node(&self) -> PublicKey {
        self.key.public()
    }

    fn journal(&self) -> JournalData {
        match JournalStore::load(&StateRecord(self.storage.clone(), JOURNAL_KEY)) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
            _ => JournalData::default(),
        }
    }

    async fn publish(&self, id: &str, answer: &Answer) {
        let node = self.node();
        let result = async {
            let key = NotaryKey::answer(&node, id)?;
            let body = serde_json::to_value(answer).map_err(|e| anyhow::anyhow!(e))?;
            let record = Record::sign(&key, body, &self.key)?;
            self.notary.put(&record).await?;
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) => tracing::info!(
                request = id,
                refused = answer.refused.map(|c| c.as_str()),
                "diagnostic request answered"
            ),
            Err(e) => {
                tracing::warn!(request = id, error = %format!("{e:#}"), "publishing a diagnostic answer")
            }
        }
    }

    async fn refuse(&self, id: &str, request: Digest, refusal: DiagRefusal) {
        tracing::warn!(request = id, code = %refusal.refused, reason = %refusal.reason, "diagnostic request refused");
        self.publish(id, &Answer::refusal(id, request, now(), refusal))
            .await;
    }

    /// The network namespace a workload's probes run in: a container's own, a VM's
    /// tenant network's (its tap is there). Names are looked up, never recorded.
    fn workload_netns(&self, owned: &Owned, w: &Workload) -> Result<PathBuf, DiagRefusal> {
        let Some(net) = &w.network else {
            return Err(DiagRefusal::new(
                RefusalCode::Unsupported,
                format!("workload {:?} is on no network", w.name),
            ));
        };
        let failed = |e: String| {
            DiagRefusal::new(
                RefusalCode::UnknownWorkload,
                format!("workload {:?}: {e}", w.name),
            )
        };
        let store = Arc::new(ReadOnly(
            JournalStore::load(&StateRecord(
                self.storage.clone(),
                zos_engine::kernel_names::NAMES_KEY,
            ))
            .map_err(|e| failed(e.to_string()))?,
        ));
        let names = KernelNames::open(
            store,
            &self.cfg.state_dir.join("names.json"),
            &self.cfg.network.prefix,
        )
        .map_err(|e| failed(e.to_string()))?;
        let net_id = names
            .kernel("net", &zos_engine::names::of(&owned.id, net))
            .map_err(|e| failed(format!("its network is not made yet ({e})")))?;
        let mut nc = zos_network::NetworkConfig::new(&self.cfg.network.uplink);
        nc.prefix = self.cfg.network.prefix.clone();
        nc.run_dir = self.cfg.network.netns_dir.clone();
        let network = zos_network::Network::new(nc).map_err(|e| failed(e.to_string()))?;
        let ns = match w.kind {
            WorkloadKind::Container => {
                let wl_id = names
                    .kernel("wl", &zos_engine::names::of(&owned.id, &w.name))
                    .map_err(|e| failed(format!("it is not placed yet ({e})")))?;
                network.workload_netns(&net_id, &wl_id)
            }
            WorkloadKind::Vm => network.tenant_netns(&net_id),
        };
        let path = network.netns_path(&ns);
        if !path.exists() {
            return Err(failed(format!(
                "no network namespace at {}",
                path.display()
            )));
        }
        Ok(path)
    }

    /// zosd's own parts of a bundle: of the node, or of one contract only.
    async fn zosd_parts(
        &self,
        target: &Target,
        summaries: &[ContractSummary],
    ) -> Vec<Box<dyn Source>> {
        let mut parts: Vec<Box<dyn Source>> = Vec::new();
        let node = self.node();
        match target {
            Target::Contract(owned) => {
                let id = &owned.id;
                let summary: Vec<_> = summaries.iter().filter(|s| s.contract == *id).collect();
                parts.push(text("contract-state.txt", format!("{summary:#?}\n")));
                parts.push(
                    self.record_part("contract-status.json", NotaryKey::status(&node, id))
                        .await,
                );
                for w in &owned.deployment.workloads {
                    if w.kind != WorkloadKind::Container {
                        continue;
                    }
                    let dir = self
                        .cfg
                        .state_dir
                        .join("containers/logs")
                        .join(zos_engine::names::of(id, &w.name));
                    for stream in [zos_container::Stream::Stdout, zos_container::Stream::Stderr] {
                        parts.push(Box::new(File {
                            name: format!("{}.{}.log", w.name, stream.name()),
                            path: stream.log_path(&dir),
                        }));
                    }
                }
            }
            _ => {
                parts.push(text("zosd-state.txt", format!("{summaries:#?}\n")));
                let journal = self.journal();
                let mut lines = String::new();
                for o in journal.owned.values() {
                    lines += &format!(
                        "{} v{} owner {} {:?} workloads {}\n",
                        o.id,
                        o.version,
                        o.owner,
                        o.phase,
                        o.deployment.workloads.len()
                    );
                }
                for (id, (v, d)) in &journal.accepted {
                    lines += &format!("accepted {id} v{v} {d}\n");
                }
                parts.push(text("zosd-journal.txt", lines));
                let refusals: Vec<_> = summaries
                    .iter()
                    .filter(|s| s.state == zos_engine::State::Refused)
                    .collect();
                parts.push(text("zosd-refusals.txt", format!("{refusals:#?}\n")));
                parts.push(
                    self.record_part("zosd-heartbeat.json", Ok(NotaryKey::heartbeat(&node)))
                        .await,
                );
                parts.push(
                    self.record_part("zosd-registration.json", Ok(NotaryKey::registration(&node)))
                        .await,
                );
            }
        }
        parts
    }

    async fn record_part(
        &self,
        name: &str,
        key: Result<NotaryKey, zos_notary::KeyError>,
    ) -> Box<dyn Source> {
        let got = match key {
            Ok(key) => self.notary.get(&key).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        Box::new(Fixed {
            name: name.to_string(),
            data: match got {
                Ok(Some(r)) => serde_json::to_vec_pretty(&r.body).map_err(|e| e.to_string()),
                Ok(None) => Ok(b"(none)\n".to_vec()),
                Err(e) => Err(e),
            },
        })
    }

    /// The secrets a bundle never holds: the node's identity seed.
    fn redactor(&self) -> Redactor {
        let mut r = Redactor::new(Vec::<Vec<u8>>::new());
        if let Ok(Some(seed)) = self.storage.state().read(zos_storage::IDENTITY_KEY) {
            r.add(&seed.data);
        }
        r
    }

    /// Runs one request and publishes its answer.
    async fn handle(&self, record: Record, summaries: &[ContractSummary]) {
        let Ok(key) = record.notary_key() else { return };
        let KeyKind::Request { request_id: id, .. } = key.kind() else {
            return;
        };
        let digest = match record.signing_digest() {
            Ok(d) => d,
            Err(_) => return,
        };
        // A request is run once: an id already answered is a replay, answered before.
        match self
            .notary
            .get(&match NotaryKey::answer(&self.node(), &id) {
                Ok(k) => k,
                Err(_) => return,
            })
            .await
        {
            Ok(Some(prev)) => {
                let same =
                    serde_json::from_value::<Answer>(prev.body).is_ok_and(|a| a.request == digest);
                tracing::warn!(request = %id, same_request = same, "diagnostic request already answered; not run again (replay)");
                return;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(request = %id, error = %e, "reading a previous answer"),
        }
        let req: Request = match serde_json::from_value(record.body.clone()) {
            Ok(r) => r,
            Err(e) => {
                let refusal = DiagRefusal::new(RefusalCode::Malformed, e.to_string());
                return self.refuse(&id, digest, refusal).await;
            }
        };
        if let Err(refusal) = req.check(&key, now()) {
            return self.refuse(&id, digest, refusal).await;
        }
        if let DiagAction::Probe(spec) = &req.action {
            if let Err(e) = spec.validate() {
                let refusal = DiagRefusal::new(RefusalCode::InvalidProbe, e.to_string());
                return self.refuse(&id, digest, refusal).await;
            }
        }
        let journal = self.journal();
        let target = match authorize(&req.scope, &record.author, self.farmer.as_ref(), |c| {
            journal.owned.get(c).cloned()
        }) {
            Ok(t) => t,
            Err(refusal) => return self.refuse(&id, digest, refusal).await,
        };
        tracing::info!(request = %id, author = %record.author, scope = ?req.scope, "diagnostic request accepted");
        let mut answer = Answer {
            id: id.clone(),
            request: digest,
            answered_at: 0,
            refused: None,
            reason: None,
            probe: None,
            bundle: None,
        };
        match (&req.action, &target) {
            (DiagAction::Probe(spec), Target::Uplink | Target::Workload(..)) => {
                let netns = match &target {
                    Target::Workload(o, w) => match self.workload_netns(o, w) {
                        Ok(p) => Some(p),
                        Err(refusal) => return self.refuse(&id, digest, refusal).await,
                    },
                    _ => self.cfg.network.node_netns.clone(),
                };
                let spec = spec.clone();
                let result = tokio::task::spawn_blocking(move || {
                    zos_probe::run(&spec, netns.as_deref(), PROBE_LIMIT)
                })
                .await;
                answer.probe = Some(result.unwrap_or_else(|e| ProbeResult {
                    probe: "?".into(),
                    ok: false,
                    lines: Vec::new(),
                    error: Some(format!("the probe's thread panicked: {e}")),
                    elapsed_ms: 0,
                }));
            }
            (DiagAction::SupportBundle, Target::Node | Target::Contract(_)) => {
                let mut sources = self.zosd_parts(&target, summaries).await;
                if matches!(target, Target::Node) {
                    sources.extend(zos_support::sources::builtin());
                }
                let redact = self.redactor();
                let cfg = BundleConfig {
                    max_bytes: MAX_INLINE_BUNDLE,
                    part_limit: 256 << 10,
                    part_timeout: Duration::from_secs(10),
                };
                let bundle =
                    tokio::task::spawn_blocking(move || zos_support::build(sources, &cfg, &redact))
                        .await;
                let bundle = match bundle {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(request = %id, error = %e, "the bundle's thread panicked");
                        return;
                    }
                };
                answer.bundle = Some(InlineBundle {
                    sha256: Digest::of(&bundle.bytes),
                    size: bundle.bytes.len() as u64,
                    manifest: serde_json::to_value(&bundle.manifest).unwrap_or_default(),
                    data: base64::engine::general_purpose::STANDARD.encode(&bundle.bytes),
                });
            }
            (action, _) => {
                let what = match action {
                    DiagAction::Probe(_) => "a probe runs on the uplink or in a workload",
                    DiagAction::SupportBundle => "a support bundle is of the node or of a contract",
                };
                let refusal = DiagRefusal::new(
                    RefusalCode::Unsupported,
                    format!("{what}, not {:?}", req.scope),
                );
                return self.refuse(&id, digest, refusal).await;
            }
        }
        answer.answered_at = now();
        self.publish(&id, &answer).await;
    }
}

/// The dispatcher's tasks; dropping it stops them.
pub struct Running(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// The farmer and the owners of the contracts on the node: the askers with a rate limit
/// of their own. The owners are read from the journal at most once a second, so a flood
/// does not turn into a flood of journal reads.
struct Askers {
    owners: HashSet<PublicKey>,
    read: Option<Instant>,
}

impl Askers {
    fn known(&mut self, diag: &Diag, author: &PublicKey, now: Instant) -> bool {
        if diag.farmer.as_ref() == Some(author) {
            return true;
        }
        if self
            .read
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1))
        {
            self.owners = diag.journal().owned.values().map(|o| o.owner).collect();
            self.read = Some(now);
        }
        self.owners.contains(author)
    }
}

/// Subscribes to the node's requests (again after an error) and queues each new one
/// within its asker's rate limit (`limit`); a full queue is a `busy` refusal.
async fn watcher(diag: Arc<Diag>, tx: tokio::sync::mpsc::Sender<Record>) {
    let prefix = KeyPrefix::node_requests(&diag.node());
    let mut seen: HashSet<(String, Digest)> = HashSet::new();
    let mut limits = Limits::new(limit::KNOWN, limit::STRANGERS, Instant::now());
    let mut askers = Askers {
        owners: HashSet::new(),
        read: None,
    };
    let mut delay = Duration::from_millis(200);
    loop {
        let (existing, mut watch) = match diag.notary.subscribe(&prefix).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "watching diagnostic requests; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        delay = Duration::from_millis(200);
        let mut next = existing.into_iter();
        loop {
            let record = match next.next() {
                Some(r) => r,
                None => match watch.recv().await {
                    Some(r) => r,
                    None => break,
                },
            };
            let Ok(digest) = record.signing_digest() else {
                continue;
            };
            if !seen.insert((record.key.clone(), digest)) {
                continue;
            }
            // Bounded memory whatever anyone writes: a replay is still caught by the
            // answer already at its id.
            if seen.len() > SEEN_MAX {
                seen.clear();
            }
            let now = Instant::now();
            let known = askers.known(&diag, &record.author, now);
            if let Verdict::Drop { report } = limits.admit(&record.author, known, now) {
                if let Some(dropped) = report {
                    tracing::warn!(
                        dropped,
                        author = %record.author,
                        "diagnostic requests over the rate limit dropped, unanswered"
                    );
                    limits.retain(|k| diag.farmer.as_ref() == Some(k) || askers.owners.contains(k));
                }
                continue;
            }
            match tx.try_send(record) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(record)) => {
                    if let Ok(KeyKind::Request { request_id, .. }) =
                        record.notary_key().map(|k| k.kind())
                    {
                        let refusal = DiagRefusal::new(
                            RefusalCode::Busy,
                            format!("{QUEUE} diagnostic requests are waiting; ask again later"),
                        );
                        diag.refuse(&request_id, digest, refusal).await;
                    }
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}

/// Runs the queued requests one at a time.
async fn worker(
    diag: Arc<Diag>,
    mut rx: tokio::sync::mpsc::Receiver<Record>,
    summaries: tokio::sync::watch::Receiver<Vec<ContractSummary>>,
) {
    while let Some(record) = rx.recv().await {
        let current = summaries.borrow().clone();
        diag.handle(record, &current).await;
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The kernel name map as stored, for lookups: a name it does not hold is an error,
/// never recorded.
struct ReadOnly(Option<Vec<u8>>);

impl JournalStore for ReadOnly {
    fn load(&self) -> std::io::Result<Option<Vec<u8>>> {
        Ok(self.0.clone())
    }
    fn save(&self, _: &[u8]) -> std::io::Result<()> {
        Err(std::io::Error::other("not made on this node"))
    }
}

fn text(name: &str, s: String) -> Box<dyn Source> {
    Box::new(Fixed {
        name: name.to_string(),
        data: Ok(s.into_bytes()),
    })
}

/// A part computed before the bundle is built (zosd's state, notary records).
struct Fixed {
    name: String,
    data: Result<Vec<u8>, String>,
}

impl Source for Fixed {
    fn name(&self) -> &str {
        &self.name
    }
    fn collect(&self, limit: usize) -> Result<Vec<u8>, String> {
        let mut d = self.data.clone()?;
        d.truncate(limit.saturating_add(1));
        Ok(d)
    }
}

/// A log file's tail.
struct File {
    name: String,
    path: PathBuf,
}

impl Source for File {
    fn name(&self) -> &str {
        &self.name
    }
    fn collect(&self, limit: usize) -> Result<Vec<u8>, String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f =
            std::fs::File::open(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = f.seek(SeekFrom::Start(len.saturating_sub(limit as u64)));
        let mut out = Vec::new();
        f.take(limit as u64)
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        Ok(out)
    }
    fn tail(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_engine::Phase;

    fn sk(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    fn owned(id: &str, owner: &SecretKey) -> Owned {
        let deployment = serde_json::from_value(serde_json::json!({"workloads": [{
            "name": "web", "kind": "container", "cpu": 1, "memory_mib": 32,
            "flist": {"url": "dir:///x", "sha256": Digest::of(b"f"), "stores": [], "publishers": []}
        }]}))
        .unwrap();
        Owned {
            id: id.into(),
            version: 1,
            digest: Digest::of(b"d"),
            owner: owner.public(),
            expires: None,
            deployment,
            phase: Phase::Running,
            restarts: Default::default(),
            signers: None,
            held: None,
        }
    }

    #[test]
    fn who_may_ask_what() {
        let (farmer, owner, other) = (sk(1), sk(2), sk(3));
        let contracts = |id: &str| match id {
            "mine" => Some(owned("mine", &owner)),
            "theirs" => Some(owned("theirs", &other)),
            _ => None,
        };
        let wl = |c: &str, w: &str| DiagScope::Workload {
            contract: c.into(),
            workload: w.into(),
        };
        let code = |scope: &DiagScope, who: &SecretKey, farm: Option<&PublicKey>| {
            authorize(scope, &who.public(), farm, contracts).map_err(|r| r.refused)
        };
        let f = Some(&farmer.public()).copied();
        let f = f.as_ref();
        assert!(matches!(
            code(&DiagScope::Node, &farmer, f),
            Ok(Target::Node)
        ));
        assert!(matches!(
            code(&DiagScope::Uplink, &farmer, f),
            Ok(Target::Uplink)
        ));
        assert!(matches!(
            code(&wl("theirs", "web"), &farmer, f),
            Ok(Target::Workload(..))
        ));
        assert!(matches!(
            code(&wl("mine", "web"), &owner, f),
            Ok(Target::Workload(..))
        ));
        assert!(matches!(
            code(&DiagScope::Contract("mine".into()), &owner, f),
            Ok(Target::Contract(_))
        ));
        assert_eq!(
            code(&DiagScope::Uplink, &owner, f).unwrap_err(),
            RefusalCode::FarmerOnly
        );
        assert_eq!(
            code(&DiagScope::Node, &owner, f).unwrap_err(),
            RefusalCode::FarmerOnly
        );
        assert_eq!(
            code(&DiagScope::Node, &farmer, None).unwrap_err(),
            RefusalCode::FarmerOnly
        );
        assert_eq!(
            code(&wl("theirs", "web"), &owner, f).unwrap_err(),
            RefusalCode::NotOwner
        );
        assert_eq!(
            code(&DiagScope::Contract("theirs".into()), &owner, f).unwrap_err(),
            RefusalCode::NotOwner
        );
        // Not told apart from someone else's for a stranger; told to the farmer.
        assert_eq!(
            code(&wl("nowhere", "web"), &owner, f).unwrap_err(),
            RefusalCode::NotOwner
        );
        assert_eq!(
            code(&wl("nowhere", "web"), &farmer, f).unwrap_err(),
            RefusalCode::UnknownWorkload
        );
        assert_eq!(
            code(&wl("mine", "db"), &owner, f).unwrap_err(),
            RefusalCode::UnknownWorkload
        );
    }
}
