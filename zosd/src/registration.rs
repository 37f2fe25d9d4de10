//! Registration: before the engine takes contracts, the node's farm must be in the
//! notary; then the node publishes its registration, and a heartbeat every period.
//! The records and their checks are zos-registry's; see docs/registration.md.
//!
//! - No `farm` in the configuration: nothing is published (a development node), and
//!   the engine starts as before.
//! - The farm is missing, invalid, or the notary is unreachable: the console says so
//!   and zosd retries with backoff (1 s doubling to 60 s, and at once when the farm
//!   record is put, through a watch), taking no contracts meanwhile.
//! - The first farmer seen is pinned in the node state home: a farm record later
//!   signed by another farmer (someone with write access to the store took the farm
//!   over) is refused like a missing farm, so the node does not follow it.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use zos_contract::{PublicKey, SecretKey};
use zos_engine::journal::JournalData;
use zos_engine::{JournalStore, Phase};
use zos_notary::{AnyNotary, KeyPrefix, Notary, NotaryKey, Watch};
use zos_registry::{detect, Capacity, ContractCounts, Farm, Heartbeat, Registration, Usage};
use zos_storage::{PoolKind, Storage};

use crate::config::NodeConfig;
use crate::node::StateJournal;

/// State home key of the pinned farmer public key.
const FARMER_KEY: &str = "farmer";
/// Retry delays while the farm is missing or the notary away.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The heartbeat task; stopped when dropped (zosd stops).
pub struct Heartbeats(Option<tokio::task::JoinHandle<()>>);

/// A node that may take contracts: its heartbeats run, and the farm it registered in (none
/// without a configured farm) says which blueprint authors it trusts.
pub struct Registered {
    /// Held for its `Drop`: the heartbeats stop with the agent.
    _heartbeats: Heartbeats,
    pub farm: Option<Farm>,
}

impl Registered {
    /// The farm's trusted blueprint authors (empty: the farm names none).
    pub fn farm_blueprint_authors(&self) -> &[PublicKey] {
        self.farm.as_ref().map_or(&[], |f| &f.blueprint_authors)
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Why the farm cannot be used yet.
#[derive(Debug)]
enum FarmProblem {
    Missing,
    Unreachable(zos_notary::NotaryError),
    Invalid(zos_registry::RegistryError),
    /// Signed by another farmer than the one this node registered under.
    Hijacked {
        pinned: PublicKey,
        now: PublicKey,
    },
}

impl FarmProblem {
    /// The console line (also the `tracing` message).
    fn console(&self, farm: &str) -> String {
        match self {
            FarmProblem::Missing => format!("farm {farm} is not in the notary: retrying"),
            FarmProblem::Unreachable(e) => {
                format!("farm {farm}: the notary cannot be read ({e}): retrying")
            }
            FarmProblem::Invalid(e) => format!("farm {farm} is not valid ({e}): retrying"),
            FarmProblem::Hijacked { pinned, now } => format!(
                "farm {farm} is now signed by farmer {now}, not by {pinned} this node registered under: retrying"
            ),
        }
    }

    fn same_kind(&self, other: &FarmProblem) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// Waits for the farm, publishes the registration and starts the heartbeat. `None`:
/// `shutdown` completed first (nothing more to do). Without a configured farm, returns
/// at once and publishes nothing. The farm is read once here: a change of its trusted
/// blueprint authors reaches the node at its agent's next start.
pub async fn register(
    cfg: &NodeConfig,
    key: &SecretKey,
    notary: &AnyNotary,
    storage: &Arc<Storage>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Option<Registered>> {
    let node = key.public();
    let Some(farm_id) = cfg.farm.clone() else {
        tracing::info!(%node, "no farm configured: the node does not register and sends no heartbeat");
        return Ok(Some(Registered {
            _heartbeats: Heartbeats(None),
            farm: None,
        }));
    };
    tokio::pin!(shutdown);
    // Poll it once: a signal future installs its handlers when first polled, and a
    // SIGTERM after the console line below must stop zosd cleanly, not kill it.
    tokio::select! {
        biased;
        _ = &mut shutdown => return Ok(None),
        _ = std::future::ready(()) => {}
    }
    let pinned = pinned_farmer(storage)?;
    let farm_key = NotaryKey::farm(&farm_id).context("the configured farm id")?;

    // The farm.
    let mut backoff = BACKOFF_MIN;
    let mut watch: Option<Watch> = None;
    let mut last: Option<FarmProblem> = None;
    let mut attempt: u32 = 0;
    let farm = loop {
        attempt += 1;
        let problem = match check_farm(notary, &farm_key, pinned).await {
            Ok(farm) => break farm,
            Err(p) => p,
        };
        let line = problem.console(&farm_id);
        tracing::warn!(%node, farm = %farm_id, attempt, retry_in_secs = backoff.as_secs(), "{line}");
        if !last.as_ref().is_some_and(|l| l.same_kind(&problem)) {
            // On the console once per kind of problem, not once per attempt.
            println!("zosd: node {node} waiting: {line}");
        }
        last = Some(problem);
        if watch.is_none() {
            // Wake up as soon as the farm record is put (if the notary answers).
            watch = notary.watch(&KeyPrefix::from(&farm_key)).await.ok();
        }
        let watch_ended = tokio::select! {
            _ = &mut shutdown => return Ok(None),
            _ = tokio::time::sleep(backoff) => false,
            delivered = async {
                match watch.as_mut() {
                    Some(w) => w.recv().await.is_some(),
                    None => std::future::pending().await,
                }
            } => !delivered,
        };
        if watch_ended {
            // Set up again at the next attempt.
            watch = None;
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    };
    drop(watch);
    if pinned.is_none() {
        pin_farmer(storage, &farm.farmer)?;
        tracing::info!(farm = %farm.id, farmer = %farm.farmer, "farmer pinned in the state home");
    }

    // The registration: retried until the notary takes it.
    let registration = tokio::task::block_in_place(|| registration(&farm.id, storage))?;
    let c = &registration.capacity;
    tracing::info!(
        cpus = c.cpus,
        memory_bytes = c.memory_bytes,
        ssd_bytes = c.ssd_bytes,
        hdd_bytes = c.hdd_bytes,
        nics = registration.nics.len(),
        "registration"
    );
    let mut backoff = BACKOFF_MIN;
    loop {
        let record = registration.sign(key, zos_registry::now())?;
        match notary.put(&record).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, retry_in_secs = backoff.as_secs(), "registration not published: retrying");
                tokio::select! {
                    _ = &mut shutdown => return Ok(None),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
    tracing::info!(%node, farm = %farm.id, "registered");
    println!("zosd: node {node} registered in farm {}", farm.id);

    let task = tokio::spawn(heartbeat_loop(
        key.clone(),
        notary.clone(),
        storage.clone(),
        cfg.network.node_netns.clone(),
        Duration::from_secs(cfg.heartbeat_secs),
    ));
    Ok(Some(Registered {
        _heartbeats: Heartbeats(Some(task)),
        farm: Some(farm),
    }))
}

async fn check_farm(
    notary: &AnyNotary,
    key: &NotaryKey,
    pinned: Option<PublicKey>,
) -> Result<Farm, FarmProblem> {
    let record = match notary.get(key).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(FarmProblem::Missing),
        // A forged or misplaced record is not a farm either.
        Err(zos_notary::NotaryError::Record(e)) => return Err(FarmProblem::Invalid(e.into())),
        Err(e) => return Err(FarmProblem::Unreachable(e)),
    };
    let farm = Farm::from_record(&record).map_err(FarmProblem::Invalid)?;
    match pinned {
        Some(p) if p != farm.farmer => Err(FarmProblem::Hijacked {
            pinned: p,
            now: farm.farmer,
        }),
        _ => Ok(farm),
    }
}

fn pinned_farmer(storage: &Storage) -> anyhow::Result<Option<PublicKey>> {
    let Some(read) = storage
        .state()
        .read(FARMER_KEY)
        .context("reading the pinned farmer")?
    else {
        return Ok(None);
    };
    let bytes: [u8; 32] = read
        .data
        .as_slice()
        .try_into()
        .context("the pinned farmer is not a 32-byte public key")?;
    Ok(Some(PublicKey(bytes)))
}

fn pin_farmer(storage: &Storage, farmer: &PublicKey) -> anyhow::Result<()> {
    storage
        .state()
        .write(FARMER_KEY, &farmer.0)
        .context("pinning the farmer")?;
    Ok(())
}

/// What the node is: the machine's CPUs and memory, the pools, NICs and DMI.
fn registration(farm: &str, storage: &Storage) -> anyhow::Result<Registration> {
    let (mut ssd, mut hdd) = (0u64, 0u64);
    for info in storage.pool_infos().context("pool capacity")? {
        match info.pool.kind {
            PoolKind::Ssd => ssd += info.capacity,
            PoolKind::Hdd => hdd += info.capacity,
        }
    }
    Ok(Registration {
        farm: farm.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        capacity: Capacity {
            cpus: detect::logical_cpus(),
            memory_bytes: detect::memory()?.total_bytes,
            ssd_bytes: ssd,
            hdd_bytes: hdd,
        },
        nics: detect::nics().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no NIC list");
            Vec::new()
        }),
        dmi: detect::dmi(),
        registered_at: zos_registry::now(),
    })
}

async fn heartbeat_loop(
    key: SecretKey,
    notary: AnyNotary,
    storage: Arc<Storage>,
    netns: Option<PathBuf>,
    period: Duration,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (storage, netns) = (storage.clone(), netns.clone());
        let taken = tokio::task::spawn_blocking(move || heartbeat(&storage, netns.as_deref()))
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r);
        let hb = match taken {
            Ok(hb) => hb,
            Err(e) => {
                // A heartbeat that could not say what listens would claim less than
                // the truth: none is sent, and the node looks late instead.
                tracing::warn!(error = %format!("{e:#}"), "no heartbeat this period");
                continue;
            }
        };
        if hb.listening_total > 0 {
            tracing::warn!(sockets = ?hb.listening, "the node has listening sockets");
        }
        let result = hb
            .sign(&key, zos_registry::now())
            .map_err(anyhow::Error::from);
        let result = match result {
            Ok(record) => notary.put(&record).await.map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => tracing::debug!(
                uptime_secs = hb.uptime_secs,
                running = hb.contracts.running,
                listening = hb.listening_total,
                "heartbeat"
            ),
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "heartbeat not published"),
        }
    }
}

/// One heartbeat: uptime, what contracts reserve (from the journal), what is in use,
/// contract and workload counts, and the node namespace's listening sockets.
fn heartbeat(storage: &Arc<Storage>, netns: Option<&std::path::Path>) -> anyhow::Result<Heartbeat> {
    let journal: JournalData = match StateJournal(storage.clone())
        .load()
        .context("reading the journal")?
    {
        Some(bytes) => serde_json::from_slice(&bytes).context("parsing the journal")?,
        None => JournalData::default(),
    };
    let reserved = zos_engine::capacity::used(journal.owned.values().map(|o| &o.deployment));
    let mut contracts = ContractCounts::default();
    let mut workloads = 0u64;
    for owned in journal.owned.values() {
        match owned.phase {
            Phase::Provisioning => contracts.provisioning += 1,
            Phase::Running => contracts.running += 1,
            Phase::Failed { .. } => contracts.failed += 1,
        }
        workloads += owned.deployment.workloads.len() as u64;
    }
    let (mut ssd_used, mut hdd_used) = (0u64, 0u64);
    for info in storage.pool_infos().context("pool usage")? {
        match info.pool.kind {
            PoolKind::Ssd => ssd_used += info.used,
            PoolKind::Hdd => hdd_used += info.used,
        }
    }
    let rss = detect::zosd_rss()?;
    let mut hb = Heartbeat {
        uptime_secs: detect::uptime()?,
        reserved: Capacity {
            cpus: reserved.cpu,
            memory_bytes: reserved.memory_mib << 20,
            ssd_bytes: reserved.ssd_mib << 20,
            hdd_bytes: reserved.hdd_mib << 20,
        },
        used: Usage {
            memory_bytes: detect::memory()?.used_bytes(),
            ssd_bytes: ssd_used,
            hdd_bytes: hdd_used,
            agent_rss_bytes: rss.0,
            init_rss_bytes: rss.1,
        },
        contracts,
        workloads,
        listening: Vec::new(),
        listening_total: 0,
        time: zos_registry::now(),
    };
    hb.set_listening(detect::listening_sockets(netns).context("listening sockets")?);
    Ok(hb)
}
