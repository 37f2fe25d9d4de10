//! Bringing the node up in agent mode: pools, identity, journal, network, capacity,
//! then the engine. Each step says what it did on the log.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use zos_container::ContainerRuntime;
use zos_contract::SecretKey;
use zos_engine::{Capacity, Engine, EngineConfig, Journal, JournalStore, KernelNames};
use zos_network::{Network, NetworkConfig};
use zos_storage::{DiscoveryConfig, DiskSelection, PoolKind, PoolStatus, Storage, StorageConfig};
use zos_vm::VmRuntime;

use crate::config::NodeConfig;
use crate::logs::NodeLogs;
use crate::provisioner::NodeProvisioner;
use zos_status::live::LiveStatus;

/// State home key of the node's ed25519 seed.
const IDENTITY_KEY: &str = zos_storage::IDENTITY_KEY;
/// State home key of the engine's journal.
pub const JOURNAL_KEY: &str = "journal";
/// State home key of the clock floor (docs/security.md, H3).
const CLOCK_FLOOR_KEY: &str = "clock-floor";

/// One record of the node state home, replicated on every pool (so the node remembers
/// what it owns when a disk dies): the engine's journal, the clock floor.
pub struct StateRecord(pub Arc<Storage>, pub &'static str);

impl StateRecord {
    fn load(&self) -> std::io::Result<Option<Vec<u8>>> {
        let read = self.0.state().read(self.1);
        read.map(|r| r.map(|r| r.data))
            .map_err(std::io::Error::other)
    }

    fn save(&self, bytes: &[u8]) -> std::io::Result<()> {
        let written = self.0.state().write(self.1, bytes);
        written.map(|_| ()).map_err(std::io::Error::other)
    }
}

impl JournalStore for StateRecord {
    fn load(&self) -> std::io::Result<Option<Vec<u8>>> {
        StateRecord::load(self)
    }
    fn save(&self, bytes: &[u8]) -> std::io::Result<()> {
        StateRecord::save(self, bytes)
    }
}

impl zos_uplink::home_floor::FloorStore for StateRecord {
    fn load(&self) -> std::io::Result<Option<Vec<u8>>> {
        StateRecord::load(self)
    }
    fn save(&self, bytes: &[u8]) -> std::io::Result<()> {
        StateRecord::save(self, bytes)
    }
}

/// Opens (creating on first boot) the pools named by the configuration.
pub fn open_storage(cfg: &NodeConfig) -> anyhow::Result<Storage> {
    let mut disks: Vec<PathBuf> = cfg.storage.disks.clone();
    let mut sc = StorageConfig::new(&cfg.storage.pools_root);
    for lf in &cfg.storage.loop_files {
        let dev = zos_storage::loopdev::ensure(&lf.path, lf.size_gib << 30)
            .with_context(|| format!("loop device for {}", lf.path.display()))?;
        tracing::info!(file = %lf.path.display(), device = %dev.display(), kind = %lf.kind, "loop disk");
        if let Some(name) = dev.file_name().and_then(|n| n.to_str()) {
            sc.kind_override.insert(name.to_string(), lf.kind);
        }
        disks.push(dev);
    }
    // The state home belongs to the node identity: created on first boot, and every
    // record in it (journal, name map, registries) authenticated by a key from it.
    sc.node_identity = true;
    sc.discovery = DiscoveryConfig {
        selection: DiskSelection::Explicit(disks),
        label_prefix: cfg.storage.label_prefix.clone(),
        ..DiscoveryConfig::default()
    };
    let storage = Storage::open(sc).context("opening the pools")?;
    for p in storage.pools() {
        tracing::info!(pool = %p.label, status = ?p.status, "pool");
    }
    if !storage
        .pools()
        .iter()
        .any(|p| p.status == PoolStatus::Online)
    {
        bail!("no pool is online");
    }
    Ok(storage)
}

/// The node key: the seed zos-storage keeps in the state home (created on first
/// boot, 0600 on every pool, write-once; a pool holding another seed is refused).
pub fn identity(storage: &Storage) -> anyhow::Result<SecretKey> {
    let read = storage
        .state()
        .read(IDENTITY_KEY)
        .context("reading the node identity")?
        .context("the state home holds no node identity")?;
    let seed: [u8; 32] = read
        .data
        .as_slice()
        .try_into()
        .context("the stored node identity is not a 32-byte seed")?;
    let key = SecretKey::from_seed(seed);
    tracing::info!(node = %key.public(), generation = read.generation, "node identity");
    Ok(key)
}

/// What contracts may reserve: the machine minus the configured reserve.
fn capacity(cfg: &NodeConfig, storage: &Storage) -> anyhow::Result<Capacity> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    let mem_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no MemTotal in /proc/meminfo")?;
    let (mut ssd, mut hdd) = (0u64, 0u64);
    for info in storage.pool_infos().context("pool capacity")? {
        match info.pool.kind {
            PoolKind::Ssd => ssd += info.capacity >> 20,
            PoolKind::Hdd => hdd += info.capacity >> 20,
        }
    }
    Ok(Capacity {
        cpu: cpus
            .saturating_sub(cfg.capacity.reserve_cpu)
            .saturating_mul(cfg.capacity.cpu_overcommit),
        memory_mib: (mem_kib >> 10).saturating_sub(cfg.capacity.reserve_memory_mib),
        ssd_mib: ssd,
        hdd_mib: hdd,
    })
}

/// QEMU for micro-VMs, its run directories under the state dir. The accelerator is
/// decided when the first VM starts (a probe boots that VM's kernel under KVM).
/// `cgroup_parent`: where its VMs' cgroups go (the node's own scope). Its program: the
/// system's (`[vm] qemu`), or the running release's `qemu` part, or none
/// (zosd/src/hypervisor.rs); a release part is read where `access` allows.
fn hypervisor(
    cfg: &NodeConfig,
    cgroup_parent: &str,
    access: &zos_flist::DirAccess,
) -> anyhow::Result<Arc<dyn zos_vm::Hypervisor>> {
    let mut q = zos_vm::QemuConfig::under(cfg.state_dir.join("vms"));
    q.cgroup_parent = cgroup_parent.to_string();
    q.binary = cfg.vm.qemu.clone();
    q.accel = cfg.vm.accel;
    q.console_limit = cfg.vm.console_limit_kib << 10;
    q.stop_grace = std::time::Duration::from_secs(cfg.vm.stop_grace_secs);
    crate::hypervisor::build(q, cfg, access).context("micro-VM hypervisor")
}

/// Runs the node agent until SIGTERM or SIGINT, with its local status (console
/// screen, read-only D-Bus socket) up the whole time: a failure is on the screen too.
pub async fn run(cfg: NodeConfig, logs: NodeLogs) -> anyhow::Result<()> {
    // First: a SIGTERM from now on is kept, whatever the agent is doing when it comes.
    let stop = Stop::listen()?;
    let mut status = crate::status::start(&cfg);
    let result = serve(cfg, &mut status, &stop, &logs).await;
    crate::status::finish(&status, &result);
    result
}

async fn serve(
    cfg: NodeConfig,
    status: &mut LiveStatus,
    stop: &Stop,
    logs: &NodeLogs,
) -> anyhow::Result<()> {
    let storage = Arc::new(tokio::task::block_in_place(|| open_storage(&cfg))?);
    // The slots PID 1 keeps, on a pool when the state dir is not persistent; PID 1 looks
    // again when they say a slot runs (docs/upgrade.md).
    let slots = crate::upgrade::place_slots(&cfg, &storage);
    if crate::upgrade::ask_pid1_to_adopt(&slots) {
        std::process::exit(zos_init::slots::SWITCH_EXIT_CODE);
    }
    let key = identity(&storage)?;
    // The time never goes back below what this node has seen (before expiry decides
    // anything): docs/security.md, H3.
    let floor = Arc::new(StateRecord(storage.clone(), CLOCK_FLOOR_KEY));
    let pid1_floor = cfg.state_dir.join(zos_uplink::boot::CLOCK_FLOOR);
    tokio::task::block_in_place(|| zos_uplink::home_floor::restore(&*floor, &pid1_floor));
    let _clock_floor = zos_uplink::home_floor::keep(floor);
    let node = key.public();
    logs.named(&node);
    if cfg.ship_kernel_log {
        logs.forward_kernel(&cfg.state_dir.join("kmsg.seq"));
    }
    status.set(|s| s.node = node.to_string());
    let journal =
        Journal::open(StateRecord(storage.clone(), JOURNAL_KEY)).context("opening the journal")?;
    let network = node_network(&cfg)?;
    let capacity = capacity(&cfg, &storage)?;
    tracing::info!(?capacity, "capacity offered to contracts");
    let netns = cfg.network.node_netns.clone();
    crate::status::refresh(status, storage.clone(), netns, capacity);
    let tenant_logs = crate::logs::TenantLogs::new(&node);
    let provisioner = provisioner(&cfg, &storage, network, tenant_logs)?;
    let notary = zos_notary::open(&cfg.notary).context("opening the notary")?;
    if let Some(farm) = &cfg.farm {
        status.state(&format!(
            "registering in farm {farm} (waiting for it in the notary)"
        ));
    }
    // No contracts before the farm is in the notary; then registration and heartbeats
    // (docs/registration.md). `None`: stopped while waiting for the farm.
    let Some((registered, liveness)) =
        crate::registration::register(&cfg, &key, &notary, &storage, capacity, stop.requested())
            .await?
    else {
        return Ok(());
    };
    logs.bind(registered.farm.as_ref());
    let engine_cfg = EngineConfig {
        capacity,
        trusted_authors: trusted_authors(&cfg, &registered),
        // A registered node follows its farm's placement contracts (docs/grid.md).
        farm: registered.farm.as_ref().and(cfg.farm.clone()),
        // Networks across nodes: keys beside the node's other state, and the endpoint
        // its peer records publish (docs/engine.md, "Mesh").
        mesh_keys: Some(cfg.state_dir.join("mesh")),
        ..EngineConfig::default()
    };
    tracing::info!(%node, notary = %cfg.notary, "node agent ready");
    // The one line a person (or the demo) looks for.
    println!("zosd: node {node} serving contracts from {}", cfg.notary);
    // Diagnostics by signed request (docs/diagnostics.md), beside the engine.
    let farmer = registered.farm.as_ref().map(|f| f.farmer);
    let diag = crate::diag::Diag::new(&cfg, &key, notary.clone(), storage.clone(), farmer);
    let cgroups = provisioner.cgroups();
    // The slots PID 1 keeps: a rollback to publish, a health mark to write.
    crate::upgrade::on_serving(&cfg, &key, &notary);
    // The farm's rollout, with release keys only (docs/upgrade.md).
    crate::upgrade::follow_rollout(&cfg, &key, &notary, store_access(&cfg.store_roots));
    let mut engine = Engine::new(key, engine_cfg, provisioner, notary, journal);
    // The mesh endpoint follows the uplink's address (a lease that comes late, or
    // changes): the engine publishes a new one at its next refresh.
    let (endpoint, _follow_endpoint) = follow_mesh_endpoint(&cfg);
    engine = engine.with_mesh_endpoint(endpoint);
    // Move replicas are fenced by the liveness record's renewals (docs/grid.md); the
    // task keeps renewing for as long as `liveness` lives.
    if let Some(l) = &liveness {
        engine = engine.with_liveness(zos_engine::Liveness {
            renewed: l.renewed(),
            now: zos_registry::liveness::boottime,
        });
    }
    // Metrics (docs/observability.md): the node's and the engine's to the farm's
    // target, each contract's workloads' to the target its deployment names.
    let every = std::time::Duration::from_secs(cfg.metrics_every_secs.max(1));
    let farm = registered.farm.as_ref();
    let _metrics = crate::metrics::start(&node, farm, storage.clone(), engine.stats(), every);
    let _tenant_metrics = crate::metrics::start_tenants(&node, engine.stats(), cgroups, every);
    status.follow(engine.summaries());
    let _diag = diag.start(engine.summaries());
    status.state("serving");
    engine.run(stop.requested()).await?;
    tracing::info!("stopped; workloads keep running and are re-adopted at the next start");
    Ok(())
}

/// How often "auto" looks at the uplink's addresses again.
const MESH_ENDPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// `[mesh] endpoint` resolved now: with "auto", the uplink's first global IPv4 address
/// (else IPv6) in the node's namespace (blocking: it enters that namespace).
fn mesh_endpoint(cfg: &NodeConfig) -> Option<std::net::IpAddr> {
    let addresses = match &cfg.network.node_netns {
        None => zos_status::live::addresses(),
        Some(ns) => {
            zos_network::netns::run_at(ns, || Ok(zos_status::live::addresses())).unwrap_or_default()
        }
    };
    cfg.mesh.endpoint.resolve(&cfg.network.uplink, &addresses)
}

fn log_mesh_endpoint(cfg: &NodeConfig, endpoint: Option<std::net::IpAddr>) {
    match endpoint {
        Some(ip) => tracing::info!(%ip, "mesh endpoint"),
        None => tracing::warn!(
            uplink = %cfg.network.uplink,
            setting = ?cfg.mesh.endpoint,
            "no mesh endpoint: this node's peers must reach it (networks across nodes need one side with an endpoint)"
        ),
    }
}

/// The mesh endpoint now, and with "auto" a task that looks at the uplink again every
/// [`MESH_ENDPOINT_EVERY`] (a PID 1 node's lease may come after the agent starts, or
/// change); the task ends with the returned guard.
fn follow_mesh_endpoint(
    cfg: &NodeConfig,
) -> (
    tokio::sync::watch::Receiver<Option<std::net::IpAddr>>,
    Option<AbortOnDrop>,
) {
    let now = tokio::task::block_in_place(|| mesh_endpoint(cfg));
    log_mesh_endpoint(cfg, now);
    let (tx, rx) = tokio::sync::watch::channel(now);
    if cfg.mesh.endpoint != crate::config::MeshEndpoint::Auto {
        return (rx, None);
    }
    let cfg = cfg.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::time::sleep(MESH_ENDPOINT_EVERY).await;
            let c = cfg.clone();
            let Ok(ip) = tokio::task::spawn_blocking(move || mesh_endpoint(&c)).await else {
                continue;
            };
            if tx.send_if_modified(|old| std::mem::replace(old, ip) != ip) {
                log_mesh_endpoint(&cfg, ip);
            }
        }
    });
    (rx, Some(AbortOnDrop(task)))
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The node's side of the tenant networks: its firewall and forwarding ensured.
fn node_network(cfg: &NodeConfig) -> anyhow::Result<Network> {
    let mut net_cfg = NetworkConfig::new(&cfg.network.uplink);
    net_cfg.prefix = cfg.network.prefix.clone();
    net_cfg.run_dir = cfg.network.netns_dir.clone();
    net_cfg.node_netns = cfg.network.node_netns.clone();
    net_cfg.egress_deny.extend(cfg.network.egress_deny()?);
    let network = Network::new(net_cfg).context("network")?;
    network
        .ensure_node()
        .context("node firewall and forwarding")?;
    Ok(network)
}

/// The engine's provisioner: the kernel name map, and one runtime per workload kind.
fn provisioner(
    cfg: &NodeConfig,
    storage: &Arc<Storage>,
    network: Network,
    tenant_logs: Arc<crate::logs::TenantLogs>,
) -> anyhow::Result<NodeProvisioner> {
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    let record = StateRecord(storage.clone(), zos_engine::kernel_names::NAMES_KEY);
    let names = Arc::new(KernelNames::open(
        Arc::new(record),
        &cfg.state_dir.join("names.json"),
        &cfg.network.prefix,
    )?);
    let access = store_access(&cfg.store_roots);
    // Every cgroup this node makes is under its own scope: nodes sharing a host never
    // share one (docs/container.md).
    let cgroups = crate::provisioner::CgroupParents::of_network_prefix(&cfg.network.prefix)?;
    let containers = ContainerRuntime::with_options(
        &cfg.state_dir,
        storage.clone(),
        access.clone(),
        names.clone(),
        Some(zos_container::Tap(tenant_logs.clone())),
        &cgroups.containers,
    )
    .context("container runtime")?;
    let hypervisor = hypervisor(cfg, &cgroups.vms, &access)?;
    let vms = VmRuntime::new(hypervisor, storage.clone(), access, names.clone());
    Ok(NodeProvisioner::new(
        storage.clone(),
        network,
        names,
        containers,
        vms,
        tenant_logs,
    ))
}

/// The blueprint authors named by node.toml and by the farm record: both are the
/// farmer's word. `None` (none named): any author.
fn trusted_authors(
    cfg: &NodeConfig,
    registered: &zos_registry::membership::Member,
) -> Option<std::collections::BTreeSet<zos_contract::PublicKey>> {
    let authors: std::collections::BTreeSet<_> = cfg
        .trust
        .blueprint_authors
        .iter()
        .chain(registered.farm_blueprint_authors())
        .copied()
        .collect();
    tracing::info!(
        trusted_blueprint_authors = authors.len(),
        "blueprint authors (0: any)"
    );
    (!authors.is_empty()).then_some(authors)
}

/// SIGTERM or SIGINT, caught from the agent's start. The listeners are made once, up
/// front: a tokio signal listener only sees signals sent after it exists, and once
/// tokio handles SIGTERM the default action (exit) is gone, so a listener made per
/// phase (registration, then the engine) lost a SIGTERM that came in between, while
/// the engine was starting a contract: PID 1 then waited its whole grace period.
struct Stop(tokio::sync::watch::Receiver<bool>);

impl Stop {
    fn listen() -> anyhow::Result<Stop> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = tx.send(true);
        });
        Ok(Stop(rx))
    }

    /// Resolves once a stop signal came (at once if one already has).
    fn requested(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut rx = self.0.clone();
        async move {
            // An error means the sender is gone, which it never is before the signal.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// What a contract's `dir://` URLs may reach: only the configured store roots.
fn store_access(roots: &[std::path::PathBuf]) -> zos_flist::DirAccess {
    if roots.is_empty() {
        zos_flist::DirAccess::None
    } else {
        zos_flist::DirAccess::Under(roots.to_vec())
    }
}
