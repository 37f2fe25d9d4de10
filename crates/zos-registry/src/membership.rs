//! A node's membership of its farm, over time: before it takes contracts the node waits
//! for its farm in the notary, pins the farmer, publishes its registration, then a
//! heartbeat every period (docs/registration.md).
//!
//! - No farm configured: nothing is published (a development node); [`join`] returns
//!   at once.
//! - The farm is missing, invalid, or the notary is unreachable: the console says so
//!   (once per kind of problem) and the node retries with backoff (1 s doubling to
//!   60 s, and at once when the farm record is put, through a watch), taking no
//!   contracts meanwhile. [`FarmWait`] is that policy as a pure state machine.
//! - The first farmer seen is pinned in the node's state home ([`NodeHost`]): a farm
//!   record later signed by another farmer (someone with write access to the store took
//!   the farm over) is refused like a missing farm, so the node does not follow it.
//!
//! What the node is made of (its pools, its journal, its state home) belongs to other
//! crates: the caller hands them over as a [`NodeHost`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use zos_contract::{PublicKey, SecretKey};
use zos_notary::{AnyNotary, KeyError, KeyPrefix, Notary, NotaryError, NotaryKey, Watch};

use crate::detect::{self, DetectError};
use crate::{
    label_wireguard, ContractCounts, Farm, Heartbeat, NodeResources, Registration, RegistryError,
    Socket, Usage,
};

/// First retry delay while the farm is missing or the notary away.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// An error of the node's own parts, as its [`NodeHost`] reports it.
pub type HostError = Box<dyn std::error::Error + Send + Sync>;

/// The node's parts the membership reads and writes. Called on blocking threads.
pub trait NodeHost: Send + Sync + 'static {
    /// The farmer pinned at the first registration (its 32 key bytes), `None` before.
    fn pinned_farmer(&self) -> Result<Option<Vec<u8>>, HostError>;
    /// Pins the farmer (its 32 key bytes).
    fn pin_farmer(&self, farmer: &[u8]) -> Result<(), HostError>;
    /// The pools' bytes, by disk kind.
    fn pools(&self) -> Result<PoolBytes, HostError>;
    /// What the node's contracts hold now.
    fn contracts(&self) -> Result<ContractLoad, HostError>;
    /// The UDP listen ports of the node's WireGuard links (tenant networks across
    /// nodes): the heartbeat labels the kernel's sockets on them `wireguard`. None by
    /// default (a node without mesh networks).
    fn wireguard_ports(&self) -> Result<Vec<u16>, HostError> {
        Ok(Vec::new())
    }
}

/// The pools' size and use, in bytes, by disk kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolBytes {
    /// Capacity of the SSD pools.
    pub ssd: u64,
    /// Capacity of the HDD pools.
    pub hdd: u64,
    /// Bytes used on the SSD pools.
    pub ssd_used: u64,
    /// Bytes used on the HDD pools.
    pub hdd_used: u64,
}

/// What the node's contracts hold: their reservations, their phases, their workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContractLoad {
    /// What the contracts reserve, summed.
    pub reserved: NodeResources,
    /// The contracts, by phase.
    pub contracts: ContractCounts,
    /// Their workloads (containers, VMs).
    pub workloads: u64,
}

/// How the node takes part in its farm.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// The farm; `None`: a development node that publishes nothing.
    pub farm: Option<String>,
    /// The node's software version, in its registration.
    pub version: String,
    /// The namespace whose listening sockets the heartbeat lists (`None`: the caller's).
    pub netns: Option<PathBuf>,
    /// Time between two heartbeats.
    pub heartbeat: Duration,
    /// What the node offers to contracts (after reserves and overcommit), published in
    /// its registration for placement; `None`: the machine's capacity counts.
    pub offered: Option<NodeResources>,
}

/// Why joining the farm stopped (a farm that is not there yet is waited for, not this).
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The configured farm id cannot be part of a notary key.
    #[error("the configured farm id")]
    FarmId(#[source] KeyError),
    /// One of the node's parts ([`NodeHost`]) failed.
    #[error("{what}")]
    Host {
        /// What the membership was doing (`pinning the farmer`, `pool usage`, ...).
        what: &'static str,
        /// The part's error.
        #[source]
        source: HostError,
    },
    /// The state home holds a pinned farmer that is not a public key (corrupt state).
    #[error("the pinned farmer is not a 32-byte public key")]
    PinnedFarmer,
    /// What the node reports about itself could not be read.
    #[error(transparent)]
    Detect(#[from] DetectError),
    /// The node's own registration or heartbeat could not be made into a record.
    #[error(transparent)]
    Record(#[from] RegistryError),
    /// A blocking task (a [`NodeHost`] call, detection) panicked or was cancelled.
    #[error("a blocking task failed")]
    Task(#[source] tokio::task::JoinError),
}

fn host_err(what: &'static str) -> impl FnOnce(HostError) -> JoinError {
    move |source| JoinError::Host { what, source }
}

/// Why the farm cannot be used yet.
#[derive(Debug)]
pub enum FarmProblem {
    /// No record at `farms/<farm>`.
    Missing,
    /// The notary could not be read.
    Unreachable(NotaryError),
    /// The farm record is there but refused (signature, body, bounds).
    Invalid(RegistryError),
    /// Signed by another farmer than the one this node registered under.
    Hijacked {
        /// The farmer this node pinned.
        pinned: PublicKey,
        /// The farmer the record names now.
        now: PublicKey,
    },
}

impl FarmProblem {
    /// The console line (also the `tracing` message).
    pub fn console(&self, farm: &str) -> String {
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
}

/// Retry delays: [`BACKOFF_MIN`] doubling to [`BACKOFF_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryDelay(Duration);

impl Default for RetryDelay {
    fn default() -> Self {
        RetryDelay(BACKOFF_MIN)
    }
}

impl RetryDelay {
    /// The delay before the next attempt; the one after is twice as long, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let now = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        now
    }
}

/// The wait for the farm as a state machine: each failed attempt says when to try
/// again and whether the console hears of it (once per kind of problem, not once per
/// attempt).
#[derive(Debug, Default)]
pub struct FarmWait {
    delay: RetryDelay,
    attempt: u32,
    last: Option<std::mem::Discriminant<FarmProblem>>,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FarmRetry {
    /// The attempt that failed, from 1.
    pub attempt: u32,
    /// How long to wait (less if the farm record is put meanwhile).
    pub delay: Duration,
    /// Whether the console hears of this problem (a kind it did not just show).
    pub announce: bool,
}

impl FarmWait {
    /// Records a failed attempt with `problem`: its number, the delay before the next
    /// one, and whether to announce it.
    pub fn failed(&mut self, problem: &FarmProblem) -> FarmRetry {
        self.attempt += 1;
        let kind = std::mem::discriminant(problem);
        let announce = self.last != Some(kind);
        self.last = Some(kind);
        FarmRetry {
            attempt: self.attempt,
            delay: self.delay.next_delay(),
            announce,
        }
    }
}

/// A node that may take contracts: its heartbeats run (until this is dropped), and the
/// farm it registered in (none without a configured farm) says which blueprint authors
/// it trusts.
pub struct Member {
    heartbeats: Option<tokio::task::JoinHandle<()>>,
    /// The farm record the node registered in; `None`: no farm configured.
    pub farm: Option<Farm>,
}

impl Member {
    /// The farm's trusted blueprint authors (empty: the farm names none).
    pub fn farm_blueprint_authors(&self) -> &[PublicKey] {
        self.farm.as_ref().map_or(&[], |f| &f.blueprint_authors)
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if let Some(task) = self.heartbeats.take() {
            task.abort();
        }
    }
}

/// Waits for the farm, publishes the registration and starts the heartbeat. `None`:
/// `shutdown` completed first (nothing more to do). Without a configured farm, returns
/// at once and publishes nothing. The farm is read once here: a change of its trusted
/// blueprint authors reaches the node at its agent's next start. `say` gets the lines
/// meant for the console.
pub async fn join<H: NodeHost>(
    cfg: &MemberConfig,
    key: &SecretKey,
    notary: &AnyNotary,
    host: Arc<H>,
    shutdown: impl Future<Output = ()>,
    mut say: impl FnMut(&str),
) -> Result<Option<Member>, JoinError> {
    let node = key.public();
    let Some(farm_id) = cfg.farm.clone() else {
        tracing::info!(%node, "no farm configured: the node does not register and sends no heartbeat");
        return Ok(Some(Member {
            heartbeats: None,
            farm: None,
        }));
    };
    tokio::pin!(shutdown);
    // Poll it once: a signal future installs its handlers when first polled, and a
    // SIGTERM after the console line below must stop the node cleanly, not kill it.
    tokio::select! {
        biased;
        _ = &mut shutdown => return Ok(None),
        _ = std::future::ready(()) => {}
    }
    let pinned = pinned_farmer(host.clone()).await?;
    let Some(farm) = wait_for_farm(notary, &farm_id, pinned, &mut shutdown, &mut |l| {
        say(&format!("node {node} waiting: {l}"))
    })
    .await?
    else {
        return Ok(None);
    };
    if pinned.is_none() {
        let farmer = farm.farmer;
        blocking(host.clone(), move |h| h.pin_farmer(&farmer.0))
            .await?
            .map_err(host_err("pinning the farmer"))?;
        tracing::info!(farm = %farm.id, farmer = %farm.farmer, "farmer pinned in the state home");
    }

    if !publish_registration(cfg, key, notary, &farm, host.clone(), &mut shutdown).await? {
        return Ok(None);
    }
    tracing::info!(%node, farm = %farm.id, "registered");
    say(&format!("node {node} registered in farm {}", farm.id));

    let task = tokio::spawn(heartbeat_loop(
        key.clone(),
        notary.clone(),
        host,
        cfg.netns.clone(),
        cfg.heartbeat,
    ));
    Ok(Some(Member {
        heartbeats: Some(task),
        farm: Some(farm),
    }))
}

/// The farmer pinned in the node's state home, if any.
async fn pinned_farmer<H: NodeHost>(host: Arc<H>) -> Result<Option<PublicKey>, JoinError> {
    let pinned = blocking(host, |h| h.pinned_farmer())
        .await?
        .map_err(host_err("reading the pinned farmer"))?;
    match pinned {
        None => Ok(None),
        Some(bytes) => Ok(Some(PublicKey(
            bytes.try_into().map_err(|_| JoinError::PinnedFarmer)?,
        ))),
    }
}

/// Publishes the node's registration in `farm`, retried until the notary takes it
/// (`false`: `shutdown` came first).
async fn publish_registration<H: NodeHost>(
    cfg: &MemberConfig,
    key: &SecretKey,
    notary: &AnyNotary,
    farm: &Farm,
    host: Arc<H>,
    mut shutdown: impl Future<Output = ()> + Unpin,
) -> Result<bool, JoinError> {
    let (id, version) = (farm.id.clone(), cfg.version.clone());
    let mut registration = blocking(host, move |h| registration(id, version, h)).await??;
    registration.offered = cfg.offered;
    let c = &registration.capacity;
    tracing::info!(
        cpus = c.cpus,
        memory_bytes = c.memory_bytes,
        ssd_bytes = c.ssd_bytes,
        hdd_bytes = c.hdd_bytes,
        nics = registration.nics.len(),
        "registration"
    );
    let mut delay = RetryDelay::default();
    loop {
        let record = registration.sign(key, crate::now())?;
        let Err(e) = notary.put(&record).await else {
            return Ok(true);
        };
        let retry = delay.next_delay();
        tracing::warn!(error = %e, retry_in_secs = retry.as_secs(), "registration not published: retrying");
        tokio::select! {
            _ = &mut shutdown => return Ok(false),
            _ = tokio::time::sleep(retry) => {}
        }
    }
}

/// Runs `f` on a blocking thread.
async fn blocking<H: NodeHost, T: Send + 'static>(
    host: Arc<H>,
    f: impl FnOnce(&H) -> T + Send + 'static,
) -> Result<T, JoinError> {
    tokio::task::spawn_blocking(move || f(&host))
        .await
        .map_err(JoinError::Task)
}

/// Tries the farm until it is there and signed by the pinned farmer (any farmer when
/// none is pinned). `None`: `shutdown` came first.
pub async fn wait_for_farm(
    notary: &AnyNotary,
    farm_id: &str,
    pinned: Option<PublicKey>,
    mut shutdown: impl Future<Output = ()> + Unpin,
    say: &mut impl FnMut(&str),
) -> Result<Option<Farm>, JoinError> {
    let farm_key = NotaryKey::farm(farm_id).map_err(JoinError::FarmId)?;
    let mut wait = FarmWait::default();
    let mut watch: Option<Watch> = None;
    loop {
        let problem = match check_farm(notary, &farm_key, pinned).await {
            Ok(farm) => return Ok(Some(farm)),
            Err(p) => p,
        };
        let retry = wait.failed(&problem);
        let line = problem.console(farm_id);
        tracing::warn!(farm = %farm_id, attempt = retry.attempt, retry_in_secs = retry.delay.as_secs(), "{line}");
        if retry.announce {
            say(&line);
        }
        if watch.is_none() {
            // Wake up as soon as the farm record is put (if the notary answers).
            watch = notary.watch(&KeyPrefix::from(&farm_key)).await.ok();
        }
        let watch_ended = tokio::select! {
            _ = &mut shutdown => return Ok(None),
            _ = tokio::time::sleep(retry.delay) => false,
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
    }
}

/// The farm record, verified, and signed by the pinned farmer if one is pinned.
pub(crate) async fn check_farm(
    notary: &AnyNotary,
    key: &NotaryKey,
    pinned: Option<PublicKey>,
) -> Result<Farm, FarmProblem> {
    let record = match notary.get(key).await {
        Ok(Some(r)) => r,
        Ok(None) => return Err(FarmProblem::Missing),
        // A forged or misplaced record is not a farm either.
        Err(NotaryError::Record(e)) => return Err(FarmProblem::Invalid(e.into())),
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

/// What the node is: the machine's CPUs and memory, the pools, NICs and DMI.
fn registration(
    farm: String,
    version: String,
    host: &impl NodeHost,
) -> Result<Registration, JoinError> {
    let pools = host.pools().map_err(host_err("pool capacity"))?;
    Ok(Registration {
        farm,
        version,
        capacity: NodeResources {
            cpus: detect::logical_cpus(),
            memory_bytes: detect::memory()?.total_bytes,
            ssd_bytes: pools.ssd,
            hdd_bytes: pools.hdd,
        },
        offered: None,
        nics: detect::nics().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "no NIC list");
            Vec::new()
        }),
        dmi: detect::dmi(),
        registered_at: crate::now(),
    })
}

async fn heartbeat_loop<H: NodeHost>(
    key: SecretKey,
    notary: AnyNotary,
    host: Arc<H>,
    netns: Option<PathBuf>,
    period: Duration,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let netns = netns.clone();
        let taken = blocking(host.clone(), move |h| heartbeat(h, netns.as_deref()))
            .await
            .and_then(|r| r);
        let hb = match taken {
            Ok(hb) => hb,
            Err(e) => {
                // A heartbeat that could not say what listens would claim less than
                // the truth: none is sent, and the node looks late instead.
                tracing::warn!(error = %chain(&e), "no heartbeat this period");
                continue;
            }
        };
        if hb.unexpected_listening() > 0 {
            tracing::warn!(sockets = ?hb.listening, "the node has listening sockets");
        }
        let result = match hb.sign(&key, crate::now()) {
            Ok(record) => notary.put(&record).await.map_err(|e| chain(&e)),
            Err(e) => Err(chain(&e)),
        };
        match result {
            Ok(()) => tracing::debug!(
                uptime_secs = hb.uptime_secs,
                running = hb.contracts.running,
                listening = hb.listening_total,
                "heartbeat"
            ),
            Err(error) => tracing::warn!(%error, "heartbeat not published"),
        }
    }
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// One heartbeat: uptime, what contracts reserve and hold, what is in use, and the
/// node namespace's listening sockets.
fn heartbeat(
    host: &impl NodeHost,
    netns: Option<&std::path::Path>,
) -> Result<Heartbeat, JoinError> {
    let load = host.contracts().map_err(host_err("reading the journal"))?;
    let pools = host.pools().map_err(host_err("pool usage"))?;
    let rss = detect::zosd_rss()?;
    let mut hb = Heartbeat {
        uptime_secs: detect::uptime()?,
        reserved: load.reserved,
        used: Usage {
            memory_bytes: detect::memory()?.used_bytes(),
            ssd_bytes: pools.ssd_used,
            hdd_bytes: pools.hdd_used,
            agent_rss_bytes: rss.0,
            init_rss_bytes: rss.1,
        },
        contracts: load.contracts,
        workloads: load.workloads,
        listening: Vec::new(),
        listening_total: 0,
        time: crate::now(),
    };
    let mut sockets = detect::listening_sockets(netns).map_err(|e| JoinError::Host {
        what: "listening sockets",
        source: Box::new(e),
    })?;
    label_sockets(host, &mut sockets);
    hb.set_listening(sockets);
    Ok(hb)
}

/// Labels the WireGuard links' sockets among `sockets`. When the ports or the held
/// sockets cannot be read, nothing is labelled: the heartbeat then shows them as
/// alarms, more than the truth, never less.
fn label_sockets(host: &impl NodeHost, sockets: &mut [Socket]) {
    let ports = match host.wireguard_ports() {
        Ok(ports) => ports,
        Err(e) => {
            tracing::warn!(error = %chain(&*e), "no WireGuard ports: their sockets are not labelled");
            return;
        }
    };
    if !sockets.iter().any(|s| ports.contains(&s.port)) {
        return;
    }
    match detect::held_socket_inodes() {
        Ok(held) => label_wireguard(sockets, &ports, &held),
        Err(e) => {
            tracing::warn!(error = %e, "no socket owners: WireGuard's sockets are not labelled")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> u64 {
        d.as_secs()
    }

    #[test]
    fn retries_double_from_one_second_up_to_a_minute() {
        let mut d = RetryDelay::default();
        let got: Vec<u64> = (0..9).map(|_| secs(d.next_delay())).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[test]
    fn the_console_hears_of_each_kind_of_problem_once_in_a_row() {
        let mut w = FarmWait::default();
        let missing = FarmProblem::Missing;
        let other = SecretKey::from_seed([2; 32]).public();
        let pinned = SecretKey::from_seed([1; 32]).public();
        let hijacked = FarmProblem::Hijacked { pinned, now: other };
        let steps: Vec<FarmRetry> = [&missing, &missing, &missing, &hijacked, &hijacked, &missing]
            .into_iter()
            .map(|p| w.failed(p))
            .collect();
        let announced: Vec<bool> = steps.iter().map(|r| r.announce).collect();
        assert_eq!(announced, [true, false, false, true, false, true]);
        let attempts: Vec<u32> = steps.iter().map(|r| r.attempt).collect();
        assert_eq!(attempts, [1, 2, 3, 4, 5, 6]);
        // One backoff across kinds: a change of problem does not start it over.
        let delays: Vec<u64> = steps.iter().map(|r| secs(r.delay)).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32]);
    }

    #[test]
    fn the_console_lines_name_the_farm_and_the_farmers() {
        let pinned = SecretKey::from_seed([1; 32]).public();
        let now = SecretKey::from_seed([2; 32]).public();
        assert_eq!(
            FarmProblem::Missing.console("f1"),
            "farm f1 is not in the notary: retrying"
        );
        let line = FarmProblem::Hijacked { pinned, now }.console("f1");
        assert!(
            line.contains(&format!("signed by farmer {now}, not by {pinned}")),
            "{line}"
        );
    }

    /// A real `dir://` notary in a temporary directory.
    fn dir_notary() -> (tempfile::TempDir, AnyNotary) {
        let dir = tempfile::Builder::new()
            .prefix("zt-notary")
            .tempdir()
            .unwrap();
        let notary = zos_notary::open(&format!("dir://{}", dir.path().display())).unwrap();
        (dir, notary)
    }

    fn farm_record(farmer: &SecretKey) -> zos_notary::Record {
        let now = crate::now();
        Farm::create_or_update(None, "zt-farm", "test farm", farmer.public(), now)
            .unwrap()
            .sign(farmer, now)
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_farm_put_while_the_node_waits_ends_the_wait() {
        let (_dir, notary) = dir_notary();
        let farmer = SecretKey::from_seed([7; 32]);
        let (said_tx, mut said) = tokio::sync::mpsc::unbounded_channel();
        let waiting = {
            let notary = notary.clone();
            tokio::spawn(async move {
                let mut say = |l: &str| said_tx.send(l.to_string()).unwrap();
                wait_for_farm(&notary, "zt-farm", None, std::future::pending(), &mut say).await
            })
        };
        let line = said.recv().await.unwrap();
        assert_eq!(line, "farm zt-farm is not in the notary: retrying");
        notary.put(&farm_record(&farmer)).await.unwrap();
        let farm = waiting
            .await
            .unwrap()
            .unwrap()
            .expect("a farm, not a shutdown");
        assert_eq!(farm.farmer, farmer.public());
        assert_eq!(farm.id, "zt-farm");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_farm_signed_over_to_another_farmer_is_waited_out_not_followed() {
        let (_dir, notary) = dir_notary();
        let (farmer, thief) = (SecretKey::from_seed([7; 32]), SecretKey::from_seed([8; 32]));
        notary.put(&farm_record(&thief)).await.unwrap();
        let (stop_tx, stop) = tokio::sync::oneshot::channel::<()>();
        let (said_tx, mut said) = tokio::sync::mpsc::unbounded_channel();
        let pinned = Some(farmer.public());
        let waiting = {
            let notary = notary.clone();
            tokio::spawn(async move {
                let mut say = |l: &str| said_tx.send(l.to_string()).unwrap();
                let stop = async {
                    let _ = stop.await;
                };
                wait_for_farm(&notary, "zt-farm", pinned, Box::pin(stop), &mut say).await
            })
        };
        let line = said.recv().await.unwrap();
        let expected = format!(
            "signed by farmer {}, not by {}",
            thief.public(),
            farmer.public()
        );
        assert!(line.contains(&expected), "{line}");
        stop_tx.send(()).unwrap();
        assert!(
            waiting.await.unwrap().unwrap().is_none(),
            "no farm after a stop"
        );
    }

    /// The node's parts in memory (zosd's are the state home, pools and journal,
    /// exercised in zosd's registration tests).
    #[derive(Default)]
    struct FakeHost {
        pinned: std::sync::Mutex<Option<Vec<u8>>>,
        /// What `wireguard_ports` says.
        wireguard: Vec<u16>,
        /// `wireguard_ports` fails.
        wireguard_unreadable: bool,
    }

    impl NodeHost for FakeHost {
        fn pinned_farmer(&self) -> Result<Option<Vec<u8>>, HostError> {
            Ok(self.pinned.lock().unwrap().clone())
        }
        fn pin_farmer(&self, farmer: &[u8]) -> Result<(), HostError> {
            *self.pinned.lock().unwrap() = Some(farmer.to_vec());
            Ok(())
        }
        fn pools(&self) -> Result<PoolBytes, HostError> {
            Ok(PoolBytes {
                ssd: 10 << 30,
                hdd: 0,
                ssd_used: 1 << 20,
                hdd_used: 0,
            })
        }
        fn contracts(&self) -> Result<ContractLoad, HostError> {
            Ok(ContractLoad {
                reserved: NodeResources {
                    cpus: 1,
                    memory_bytes: 64 << 20,
                    ssd_bytes: 0,
                    hdd_bytes: 0,
                },
                contracts: ContractCounts {
                    provisioning: 0,
                    running: 1,
                    failed: 0,
                },
                workloads: 2,
            })
        }
        fn wireguard_ports(&self) -> Result<Vec<u16>, HostError> {
            if self.wireguard_unreadable {
                return Err("no WireGuard links to read".into());
            }
            Ok(self.wireguard.clone())
        }
    }

    /// As root, in a `zt-` namespace: a VXLAN device's UDP socket (a kernel socket, made
    /// as a WireGuard link's is; this host has no WireGuard) on a port the host names as
    /// a WireGuard port is listed `wireguard` in the heartbeat; when the host cannot
    /// say its ports, the heartbeat still goes out, the socket unlabelled (an alarm).
    #[test]
    fn the_heartbeat_labels_the_kernels_socket_on_a_wireguard_port() {
        let test = "the_heartbeat_labels_the_kernels_socket_on_a_wireguard_port";
        if !zos_testkit::Needs::root().bin("ip").check(test) {
            return;
        }
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            out.status
                .success()
                .then_some(())
                .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
        };
        struct Ns(String);
        impl Drop for Ns {
            fn drop(&mut self) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &self.0])
                    .output();
            }
        }
        let ns = Ns(format!("zt-hbm-{}", std::process::id()));
        ip(&["netns", "add", &ns.0]).unwrap();
        if let Err(e) = ip(&[
            "-n",
            &ns.0,
            "link",
            "add",
            "zt-vx",
            "type",
            "vxlan",
            "id",
            "7",
            "dstport",
            "51830",
            "local",
            "127.0.0.1",
        ])
        .and_then(|()| ip(&["-n", &ns.0, "link", "set", "zt-vx", "up"]))
        {
            zos_testkit::skip_or_fail(test, &format!("needs a kernel with VXLAN ({e})"));
            return;
        }
        let path = std::path::Path::new("/run/netns").join(&ns.0);
        let host = FakeHost {
            wireguard: vec![51830],
            ..FakeHost::default()
        };
        let hb = heartbeat(&host, Some(&path)).unwrap();
        let wg: Vec<&Socket> = hb.listening.iter().filter(|s| s.port == 51830).collect();
        assert_eq!(wg.len(), 1, "{:?}", hb.listening);
        assert!(wg[0].is_wireguard(), "{:?}", wg[0]);
        assert_eq!(hb.unexpected_listening(), 0, "{:?}", hb.listening);

        let unreadable = FakeHost {
            wireguard: vec![51830],
            wireguard_unreadable: true,
            ..FakeHost::default()
        };
        let hb = heartbeat(&unreadable, Some(&path)).unwrap();
        assert_eq!(hb.listening_total, 1);
        assert_eq!(hb.unexpected_listening(), 1, "{:?}", hb.listening);
    }

    fn member_config(farm: Option<&str>) -> MemberConfig {
        MemberConfig {
            farm: farm.map(str::to_string),
            version: "0.0.0-test".into(),
            netns: None,
            heartbeat: Duration::from_secs(3600),
            offered: Some(NodeResources {
                cpus: 16,
                memory_bytes: 3 << 30,
                ssd_bytes: 9 << 30,
                hdd_bytes: 0,
            }),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_farm_nothing_is_published_or_pinned() {
        let (_dir, notary) = dir_notary();
        let node = SecretKey::from_seed([3; 32]);
        let host = Arc::new(FakeHost::default());
        let cfg = member_config(None);
        let member = join(
            &cfg,
            &node,
            &notary,
            host.clone(),
            std::future::pending(),
            |_| {},
        )
        .await
        .unwrap()
        .unwrap();
        assert!(member.farm.is_none());
        assert!(member.farm_blueprint_authors().is_empty());
        let prefix = KeyPrefix::from(&NotaryKey::registration(&node.public()));
        assert!(notary.list(&prefix).await.unwrap().is_empty());
        assert!(host.pinned.lock().unwrap().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_in_its_farm_pins_the_farmer_registers_and_beats() {
        let (_dir, notary) = dir_notary();
        let (farmer, node) = (SecretKey::from_seed([7; 32]), SecretKey::from_seed([3; 32]));
        notary.put(&farm_record(&farmer)).await.unwrap();
        let hb_key = NotaryKey::heartbeat(&node.public());
        let mut beats = notary.watch(&KeyPrefix::from(&hb_key)).await.unwrap();
        let host = Arc::new(FakeHost::default());
        let mut said = Vec::new();
        let cfg = member_config(Some("zt-farm"));
        let member = join(
            &cfg,
            &node,
            &notary,
            host.clone(),
            std::future::pending(),
            |l| said.push(l.to_string()),
        )
        .await
        .unwrap()
        .expect("registered");
        assert_eq!(member.farm.as_ref().unwrap().farmer, farmer.public());
        assert_eq!(
            host.pinned.lock().unwrap().as_deref(),
            Some(&farmer.public().0[..])
        );
        assert_eq!(
            said,
            [format!("node {} registered in farm zt-farm", node.public())]
        );
        let record = notary
            .get(&NotaryKey::registration(&node.public()))
            .await
            .unwrap()
            .expect("the registration is published");
        let (author, reg) = Registration::from_record(&record).unwrap();
        assert_eq!(author, node.public());
        assert_eq!(reg.farm, "zt-farm");
        assert_eq!(reg.version, "0.0.0-test");
        assert_eq!(reg.capacity.ssd_bytes, 10 << 30);
        // What the node admits, beside what the machine has: placement uses it.
        assert_eq!(reg.placeable().cpus, 16);
        assert_eq!(reg.offered.map(|o| o.memory_bytes), Some(3 << 30));
        // The first heartbeat goes out at once, with what the host reports.
        let hb = tokio::time::timeout(Duration::from_secs(60), beats.recv())
            .await
            .expect("a heartbeat within a minute")
            .unwrap();
        let (author, hb) = Heartbeat::from_record(&hb).unwrap();
        assert_eq!(author, node.public());
        assert_eq!(hb.contracts.running, 1);
        assert_eq!(hb.workloads, 2);
        assert_eq!(hb.reserved.memory_bytes, 64 << 20);
        assert_eq!(hb.used.ssd_bytes, 1 << 20);
    }
}
