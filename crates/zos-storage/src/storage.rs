//! Pools, volumes, vdisks and placement.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::backend::{Backend, FsUsage, Kernel};
use crate::disk::{self, DiscoveryConfig, Disk, Verdict};
use crate::error::{Error, Result};
use crate::state::{self, mac_key_of, CopyState, StateHome, IDENTITY_KEY, STATE_DIR};
use crate::{check_name, PoolKind};

/// Directory of volume subvolumes inside a pool.
pub const VOLUMES_DIR: &str = "volumes";
/// Directory of vdisk files inside a pool.
pub const VDISKS_DIR: &str = "vdisks";
/// State key of the pool registry (the pools this node has ever had).
pub const POOLS_KEY: &str = "pools";
/// State key of the volume registry: every volume this node created, by pool. A volume
/// in it whose subvolume is gone is lost ([`Error::VolumeLost`]), never recreated empty.
pub const VOLUMES_KEY: &str = "volumes";
/// State key of the vdisk registry: every vdisk this node created, by pool
/// ([`Error::VdiskLost`] when its file is gone).
pub const VDISKS_KEY: &str = "vdisks";

/// How storage is set up.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Where disks are found and which may be used.
    pub discovery: DiscoveryConfig,
    /// Pools are mounted at `<pools_root>/<label>`.
    pub pools_root: PathBuf,
    /// Kind per disk kernel name, overriding the rotational flag.
    pub kind_override: BTreeMap<String, PoolKind>,
    /// The state home belongs to a node identity: its 32-byte seed ([`IDENTITY_KEY`])
    /// is created on first open, and every other state record is authenticated by a key
    /// derived from it. A pool whose identity copy differs is foreign.
    pub node_identity: bool,
}

impl StorageConfig {
    /// The defaults (every disk, `/sys`, `/dev`, no identity), pools under `pools_root`.
    pub fn new(pools_root: impl Into<PathBuf>) -> Self {
        StorageConfig {
            discovery: DiscoveryConfig::default(),
            pools_root: pools_root.into(),
            kind_override: BTreeMap::new(),
            node_identity: false,
        }
    }
}

/// Health of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolStatus {
    /// Mounted and usable.
    Online,
    /// Known from the registry, but no disk carries its label any more.
    Missing,
    /// Its disk is there but it could not be mounted or used.
    Broken {
        /// Why.
        reason: String,
    },
}

/// One btrfs filesystem on one disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// Its btrfs label (our prefix, then an id).
    pub label: String,
    /// SSD or HDD, from its disk.
    pub kind: PoolKind,
    /// Kernel name of the disk it was last seen on.
    pub disk: Option<String>,
    /// Device node of that disk.
    pub device: Option<PathBuf>,
    /// Where it is (or would be) mounted: `<pools_root>/<label>`.
    pub mountpoint: PathBuf,
    /// Its health.
    pub status: PoolStatus,
}

/// A pool with its numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolInfo {
    /// The pool.
    pub pool: Pool,
    /// statvfs total / used / available, when online.
    pub total: u64,
    /// statvfs used bytes.
    pub used: u64,
    /// statvfs available bytes.
    pub free: u64,
    /// What placement may hand out: total minus the space btrfs keeps for itself.
    pub capacity: u64,
    /// Sum of volume limits and vdisk sizes on this pool.
    pub allocated: u64,
}

/// A subvolume with a qgroup limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Its node-wide name.
    pub name: String,
    /// The label of the pool it is on.
    pub pool: String,
    /// The subvolume.
    pub path: PathBuf,
    /// The qgroup limit (referenced bytes); 0 when none is set.
    pub size: u64,
    /// Referenced bytes (as of the last committed transaction).
    pub used: u64,
}

/// A sparse NOCOW file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vdisk {
    /// Its node-wide name.
    pub name: String,
    /// The label of the pool it is on.
    pub pool: String,
    /// The file.
    pub path: PathBuf,
    /// Its apparent size in bytes (what the VM sees).
    pub size: u64,
    /// Bytes actually allocated on disk.
    pub allocated: u64,
}

/// A pool's numbers as placement sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolCapacity {
    /// The pool's label.
    pub label: String,
    /// SSD or HDD.
    pub kind: PoolKind,
    /// What placement may hand out (see [`PoolInfo::capacity`]).
    pub capacity: u64,
    /// Sum of volume limits and vdisk sizes on it.
    pub allocated: u64,
}

impl PoolCapacity {
    /// Capacity not yet allocated.
    pub fn free(&self) -> u64 {
        self.capacity.saturating_sub(self.allocated)
    }
}

/// Placement: the pool of `kind` with the most unallocated space, if `size` fits there.
pub fn place(pools: &[PoolCapacity], kind: PoolKind, size: u64) -> Result<usize> {
    let best = pools
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind == kind)
        .max_by(|(_, a), (_, b)| a.free().cmp(&b.free()).then(b.label.cmp(&a.label)));
    match best {
        Some((i, p)) if p.free() >= size => Ok(i),
        best => Err(Error::NoCapacity {
            requested: size,
            largest_free: best.map(|(_, p)| p.free()).unwrap_or(0),
            largest_pool: best
                .map(|(_, p)| p.label.clone())
                .unwrap_or_else(|| "-".into()),
            kind,
            pools: pools.iter().filter(|p| p.kind == kind).count(),
        }),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct KnownPool {
    label: String,
    kind: PoolKind,
    disk: Option<String>,
}

/// The node's storage: its pools and what lives on them.
pub struct Storage<B: Backend = Kernel> {
    backend: B,
    pools_root: PathBuf,
    inner: Mutex<Vec<Pool>>,
    state: StateHome,
}

impl<B: Backend> std::fmt::Debug for Storage<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("pools_root", &self.pools_root)
            .field("pools", &*self.lock())
            .finish()
    }
}

fn random_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b)
        .map_err(|e| Error::io("getrandom", "uuid", std::io::Error::other(e.to_string())))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

fn ensure_layout(mnt: &Path) -> Result<()> {
    for d in [VOLUMES_DIR, VDISKS_DIR, STATE_DIR] {
        let p = mnt.join(d);
        fs::create_dir_all(&p).map_err(|e| Error::io("create dir", &p, e))?;
    }
    Ok(())
}

fn list_names(dir: &Path) -> Result<Vec<String>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list", dir, e)),
    };
    let mut v: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    v.sort();
    Ok(v)
}

impl Storage<Kernel> {
    /// Discover disks, create pools on blank ones, mount existing pools by label, and mark
    /// pools known from the registry but absent as missing.
    pub fn open(cfg: StorageConfig) -> Result<Self> {
        Self::open_with(Kernel, cfg)
    }
}

impl<B: Backend> Storage<B> {
    /// [`Storage::open`] with another backend.
    pub fn open_with(backend: B, cfg: StorageConfig) -> Result<Self> {
        let plan = disk::plan(&cfg.discovery)?;
        fs::create_dir_all(&cfg.pools_root)
            .map_err(|e| Error::io("create dir", &cfg.pools_root, e))?;
        let prefix = &cfg.discovery.label_prefix;
        let mut pools = Vec::new();
        for (d, v) in &plan.disks {
            if let Some(pool) = Self::pool_on(&backend, &cfg, d, v)? {
                pools.push(pool);
            }
        }
        let seed = if cfg.node_identity {
            Some(Self::node_identity(&backend, &mut pools)?)
        } else {
            None
        };
        let storage = Self::with_pools(backend, cfg.pools_root.clone(), pools);
        if let Some(seed) = seed {
            storage.adopt_identity(seed)?;
        }
        storage.reconcile_registry(prefix)?;
        storage.reconcile_volumes()?;
        Ok(storage)
    }

    /// The pool on disk `d` as the policy decided (`v`): none on a refused disk; an
    /// existing pool mounted, or marked broken when that fails; a new pool made, or the
    /// open refused when that fails.
    fn pool_on(backend: &B, cfg: &StorageConfig, d: &Disk, v: &Verdict) -> Result<Option<Pool>> {
        let kind = cfg
            .kind_override
            .get(&d.name)
            .copied()
            .unwrap_or(if d.rotational {
                PoolKind::Hdd
            } else {
                PoolKind::Ssd
            });
        let prefix = &cfg.discovery.label_prefix;
        let (label, new, wipe) = match v {
            Verdict::Refused { .. } => return Ok(None),
            Verdict::ExistingPool { label } => (label.clone(), false, false),
            Verdict::NewPool { wipe } => (format!("{prefix}{}", random_uuid()?), true, *wipe),
        };
        let mountpoint = cfg.pools_root.join(&label);
        let status = match Self::bring_up(backend, &d.path, &label, &mountpoint, new, wipe) {
            Ok(()) => PoolStatus::Online,
            Err(e) if new => return Err(e),
            Err(e) => {
                tracing::error!(pool = %label, disk = %d.name, error = %e, "pool is broken");
                PoolStatus::Broken {
                    reason: e.to_string(),
                }
            }
        };
        tracing::info!(pool = %label, disk = %d.name, ?kind, new, ?status, "pool");
        Ok(Some(Pool {
            label,
            kind,
            disk: Some(d.name.clone()),
            device: Some(d.path.clone()),
            mountpoint,
            status,
        }))
    }

    /// The node identity's seed from the pools ([`resolve_identity`]). Refused: nothing
    /// stays mounted. Accepted: the foreign pools it marked broken are unmounted, so
    /// nothing of ours goes near them.
    fn node_identity(backend: &B, pools: &mut [Pool]) -> Result<Option<[u8; 32]>> {
        let seed = match resolve_identity(pools) {
            Ok(seed) => seed,
            Err(e) => {
                for p in pools.iter() {
                    if backend.is_mounted(&p.mountpoint).unwrap_or(false) {
                        let _ = backend.unmount(&p.mountpoint);
                    }
                }
                return Err(e);
            }
        };
        for p in pools
            .iter()
            .filter(|p| matches!(p.status, PoolStatus::Broken { .. }))
        {
            if backend.is_mounted(&p.mountpoint).unwrap_or(false) {
                if let Err(e) = backend.unmount(&p.mountpoint) {
                    tracing::warn!(pool = %p.label, error = %e, "unmounting a refused pool");
                }
            }
        }
        Ok(seed)
    }

    /// Stores the seed where it is missing (first boot, a new pool), sets its copies to
    /// 0600, and authenticates the state home by it from now on.
    fn adopt_identity(&self, seed: Option<[u8; 32]>) -> Result<()> {
        let seed = match seed {
            Some(s) => {
                self.state.read(IDENTITY_KEY)?;
                s
            }
            None => {
                let mut s = [0u8; 32];
                getrandom::fill(&mut s).map_err(|e| {
                    Error::io(
                        "getrandom",
                        "identity",
                        std::io::Error::other(e.to_string()),
                    )
                })?;
                self.state.write(IDENTITY_KEY, &s)?;
                tracing::info!("first open: node identity seed created");
                s
            }
        };
        self.state.set_mac_key(mac_key_of(&seed))?;
        self.state.upgrade().map(|_| ())
    }

    /// The registry of created volumes: seeded from the subvolumes there are when it
    /// does not exist yet (a node from before the registry). Unreadable or forged: an
    /// error (treating it as empty would turn lost volumes into new empty ones).
    fn reconcile_volumes(&self) -> Result<()> {
        if self.state.dirs().is_empty() {
            return Ok(());
        }
        if self.state.read(VOLUMES_KEY)?.is_none() {
            let reg: BTreeMap<String, String> = self
                .volumes()?
                .into_iter()
                .map(|v| (v.name, v.pool))
                .collect();
            self.save_registry(VOLUMES_KEY, &reg)?;
        }
        if self.state.read(VDISKS_KEY)?.is_none() {
            let reg: BTreeMap<String, String> = self
                .vdisks()?
                .into_iter()
                .map(|v| (v.name, v.pool))
                .collect();
            self.save_registry(VDISKS_KEY, &reg)?;
        }
        Ok(())
    }

    fn registry(&self, key: &str) -> Result<BTreeMap<String, String>> {
        if self.state.dirs().is_empty() {
            return Ok(BTreeMap::new());
        }
        match self.state.read(key)? {
            Some(r) => serde_json::from_slice(&r.data).map_err(|e| Error::Corrupt {
                what: format!("{key} registry"),
                why: e.to_string(),
            }),
            None => Ok(BTreeMap::new()),
        }
    }

    fn volume_registry(&self) -> Result<BTreeMap<String, String>> {
        self.registry(VOLUMES_KEY)
    }

    fn save_registry(&self, key: &str, reg: &BTreeMap<String, String>) -> Result<()> {
        let bytes = serde_json::to_vec(reg).expect("strings serialise");
        self.state.write(key, &bytes).map(|_| ())
    }

    fn save_volume_registry(&self, reg: &BTreeMap<String, String>) -> Result<()> {
        self.save_registry(VOLUMES_KEY, reg)
    }

    /// [`Storage::absent_volume`] for a vdisk.
    fn absent_vdisk(pools: &[Pool], name: &str, label: &str) -> Error {
        match pools.iter().find(|p| p.label == label).map(|p| &p.status) {
            Some(PoolStatus::Online) => {
                tracing::error!(vdisk = name, pool = label, "vdisk lost: its file is gone");
                Error::VdiskLost {
                    name: name.into(),
                    pool: label.into(),
                    gone: "its file is gone",
                }
            }
            Some(PoolStatus::Broken { .. }) => Error::PoolOffline(label.into()),
            Some(PoolStatus::Missing) | None => {
                tracing::error!(vdisk = name, pool = label, "vdisk lost: its pool is gone");
                Error::VdiskLost {
                    name: name.into(),
                    pool: label.into(),
                    gone: "that pool's disk is not in this node any more",
                }
            }
        }
    }

    /// The error for a registered volume whose subvolume is not there: lost when its
    /// pool is online (the subvolume is gone) or missing (no disk of the node carries
    /// it any more: a disk removed or replaced); unavailable while its disk is there
    /// but the pool is broken (it may come back). Never recreated empty in any case.
    fn absent_volume(pools: &[Pool], name: &str, label: &str) -> Error {
        match pools.iter().find(|p| p.label == label).map(|p| &p.status) {
            Some(PoolStatus::Online) => {
                tracing::error!(
                    volume = name,
                    pool = label,
                    "volume lost: its subvolume is gone"
                );
                Error::VolumeLost {
                    name: name.into(),
                    pool: label.into(),
                    gone: "its subvolume is gone",
                }
            }
            Some(PoolStatus::Broken { .. }) => Error::PoolOffline(label.into()),
            Some(PoolStatus::Missing) | None => {
                tracing::error!(volume = name, pool = label, "volume lost: its pool is gone");
                Error::VolumeLost {
                    name: name.into(),
                    pool: label.into(),
                    gone: "that pool's disk is not in this node any more",
                }
            }
        }
    }

    fn bring_up(
        backend: &B,
        dev: &Path,
        label: &str,
        mnt: &Path,
        new: bool,
        wipe: bool,
    ) -> Result<()> {
        if new {
            tracing::info!(device = %dev.display(), label, wipe, "creating pool");
            backend.mkfs(dev, label, wipe)?;
        }
        fs::create_dir_all(mnt).map_err(|e| Error::io("create dir", mnt, e))?;
        if !backend.is_mounted(mnt)? {
            backend.mount(dev, mnt)?;
        }
        backend.enable_quota(mnt)?;
        ensure_layout(mnt)
    }

    /// Storage over pools that are already mounted (used by tests with a fake backend).
    pub fn with_pools(backend: B, pools_root: PathBuf, pools: Vec<Pool>) -> Self {
        let state = StateHome::new(
            pools
                .iter()
                .filter(|p| p.status == PoolStatus::Online)
                .map(|p| p.mountpoint.join(STATE_DIR))
                .collect(),
        );
        Storage {
            backend,
            pools_root,
            inner: Mutex::new(pools),
            state,
        }
    }

    /// Merge the registry of known pools with what was found; absent ones become Missing.
    fn reconcile_registry(&self, prefix: &str) -> Result<()> {
        if self.state.dirs().is_empty() {
            return Ok(());
        }
        let mut known: Vec<KnownPool> = match self.state.read(POOLS_KEY) {
            Ok(Some(r)) => serde_json::from_slice(&r.data).map_err(|e| Error::Corrupt {
                what: "pool registry".into(),
                why: e.to_string(),
            })?,
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::error!(error = %e, "pool registry unreadable; rebuilding it");
                Vec::new()
            }
        };
        let mut pools = self.lock();
        // Pool mountpoint directories left from earlier boots count as known too.
        for n in list_names(&self.pools_root)? {
            if n.starts_with(prefix) && !known.iter().any(|k| k.label == n) {
                known.push(KnownPool {
                    label: n,
                    kind: PoolKind::Ssd,
                    disk: None,
                });
            }
        }
        for k in &known {
            if !pools.iter().any(|p| p.label == k.label) {
                tracing::error!(pool = %k.label, disk = ?k.disk, "pool is missing");
                pools.push(Pool {
                    label: k.label.clone(),
                    kind: k.kind,
                    disk: k.disk.clone(),
                    device: None,
                    mountpoint: self.pools_root.join(&k.label),
                    status: PoolStatus::Missing,
                });
            }
        }
        let registry: Vec<KnownPool> = pools
            .iter()
            .map(|p| KnownPool {
                label: p.label.clone(),
                kind: p.kind,
                disk: p.disk.clone(),
            })
            .collect();
        drop(pools);
        let bytes = serde_json::to_vec(&registry).expect("registry serialises");
        self.state.write(POOLS_KEY, &bytes)?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Pool>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node state home over every online pool.
    pub fn state(&self) -> &StateHome {
        &self.state
    }

    /// The kernel interface it drives.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// All pools (online, missing, broken).
    pub fn pools(&self) -> Vec<Pool> {
        self.lock().clone()
    }

    fn pool_capacity(&self, p: &Pool) -> Result<(FsUsage, u64, u64)> {
        let u = self.backend.fs_usage(&p.mountpoint)?;
        let mut allocated = 0;
        for v in list_names(&p.mountpoint.join(VOLUMES_DIR))? {
            let path = p.mountpoint.join(VOLUMES_DIR).join(&v);
            allocated += self.backend.qgroup_usage(&path, false)?.limit.unwrap_or(0);
        }
        for v in list_names(&p.mountpoint.join(VDISKS_DIR))? {
            let path = p.mountpoint.join(VDISKS_DIR).join(&v);
            allocated += fs::metadata(&path)
                .map_err(|e| Error::io("stat", &path, e))?
                .len();
        }
        // btrfs keeps (free - available) for metadata and its global reserve.
        let reserved = u.total.saturating_sub(u.used).saturating_sub(u.free);
        Ok((u, u.total.saturating_sub(reserved), allocated))
    }

    /// Every pool with its numbers (zeros for pools that are not online).
    pub fn pool_infos(&self) -> Result<Vec<PoolInfo>> {
        let pools = self.lock().clone();
        pools
            .into_iter()
            .map(|p| {
                if p.status != PoolStatus::Online {
                    return Ok(PoolInfo {
                        pool: p,
                        total: 0,
                        used: 0,
                        free: 0,
                        capacity: 0,
                        allocated: 0,
                    });
                }
                let (u, capacity, allocated) = self.pool_capacity(&p)?;
                Ok(PoolInfo {
                    pool: p,
                    total: u.total,
                    used: u.used,
                    free: u.free,
                    capacity,
                    allocated,
                })
            })
            .collect()
    }

    fn capacities(&self, pools: &[Pool]) -> Result<Vec<(Pool, PoolCapacity)>> {
        let mut out = Vec::new();
        for p in pools.iter().filter(|p| p.status == PoolStatus::Online) {
            let (_, capacity, allocated) = self.pool_capacity(p)?;
            out.push((
                p.clone(),
                PoolCapacity {
                    label: p.label.clone(),
                    kind: p.kind,
                    capacity,
                    allocated,
                },
            ));
        }
        Ok(out)
    }

    fn choose(&self, pools: &[Pool], kind: PoolKind, size: u64) -> Result<Pool> {
        let caps = self.capacities(pools)?;
        let cs: Vec<PoolCapacity> = caps.iter().map(|(_, c)| c.clone()).collect();
        let i = place(&cs, kind, size)?;
        Ok(caps[i].0.clone())
    }

    fn find_in(&self, pools: &[Pool], sub: &str, name: &str) -> Option<(Pool, PathBuf)> {
        pools
            .iter()
            .filter(|p| p.status == PoolStatus::Online)
            .find_map(|p| {
                let path = p.mountpoint.join(sub).join(name);
                fs::symlink_metadata(&path)
                    .is_ok()
                    .then(|| (p.clone(), path))
            })
    }

    // ----- volumes -----

    fn volume_at(&self, pool: &Pool, name: &str, path: PathBuf, sync: bool) -> Result<Volume> {
        let q = self.backend.qgroup_usage(&path, sync)?;
        Ok(Volume {
            name: name.to_string(),
            pool: pool.label.clone(),
            path,
            size: q.limit.unwrap_or(0),
            used: q.referenced,
        })
    }

    /// Create a volume of `size` bytes on the best pool of `kind`; refuses if it exists.
    pub fn volume_create(&self, name: &str, size: u64, kind: PoolKind) -> Result<Volume> {
        check_name(name)?;
        check_size("volume", size)?;
        let pools = self.lock();
        if let Some((p, _)) = self.find_in(&pools, VOLUMES_DIR, name) {
            return Err(Error::Exists {
                kind: "volume",
                name: name.into(),
                pool: p.label,
            });
        }
        let mut registry = self.volume_registry()?;
        if let Some(label) = registry.get(name) {
            return Err(Self::absent_volume(&pools, name, label));
        }
        let pool = self.choose(&pools, kind, size)?;
        let path = pool.mountpoint.join(VOLUMES_DIR).join(name);
        self.backend.subvol_create(&path)?;
        if let Err(e) = self.backend.set_limit(&path, size) {
            let _ = self.backend.subvol_delete(&path);
            return Err(e);
        }
        registry.insert(name.to_string(), pool.label.clone());
        if let Err(e) = self.save_volume_registry(&registry) {
            let _ = self.backend.subvol_delete(&path);
            return Err(e);
        }
        tracing::info!(volume = name, pool = %pool.label, size, "volume created");
        Ok(Volume {
            name: name.to_string(),
            pool: pool.label.clone(),
            path,
            size,
            used: 0,
        })
    }

    /// Idempotent: create the volume, or resize it if it exists with another size.
    pub fn volume_ensure(&self, name: &str, size: u64, kind: PoolKind) -> Result<Volume> {
        match self.volume(name)? {
            None => self.volume_create(name, size, kind),
            Some(v) if v.size == size => Ok(v),
            Some(_) => self.volume_resize(name, size),
        }
    }

    /// Change a volume's limit. Growing is refused if the pool would be overcommitted.
    pub fn volume_resize(&self, name: &str, size: u64) -> Result<Volume> {
        check_name(name)?;
        check_size("volume", size)?;
        let pools = self.lock();
        let Some((pool, path)) = self.find_in(&pools, VOLUMES_DIR, name) else {
            return Err(match self.volume_registry()?.get(name) {
                Some(label) => Self::absent_volume(&pools, name, label),
                None => not_found("volume", name),
            });
        };
        let current = self.backend.qgroup_usage(&path, false)?.limit.unwrap_or(0);
        if size > current {
            let (_, capacity, allocated) = self.pool_capacity(&pool)?;
            let available = capacity.saturating_sub(allocated);
            if size - current > available {
                return Err(Error::ResizeNoCapacity {
                    name: name.into(),
                    pool: pool.label,
                    requested: size,
                    available,
                });
            }
        }
        self.backend.set_limit(&path, size)?;
        tracing::info!(volume = name, pool = %pool.label, from = current, to = size, "volume resized");
        self.volume_at(&pool, name, path, false)
    }

    /// Delete a volume and its data, and its entry in the volume registry. Returns
    /// false if there was no subvolume to delete.
    pub fn volume_remove(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        let pools = self.lock();
        let found = self.find_in(&pools, VOLUMES_DIR, name);
        if let Some((pool, path)) = &found {
            self.backend.subvol_delete(path)?;
            tracing::info!(volume = name, pool = %pool.label, "volume removed");
        }
        let mut registry = self.volume_registry()?;
        if registry.remove(name).is_some() {
            self.save_volume_registry(&registry)?;
        }
        Ok(found.is_some())
    }

    /// One volume with fresh usage numbers (commits the transaction first).
    pub fn volume(&self, name: &str) -> Result<Option<Volume>> {
        check_name(name)?;
        let pools = self.lock();
        match self.find_in(&pools, VOLUMES_DIR, name) {
            Some((p, path)) => Ok(Some(self.volume_at(&p, name, path, true)?)),
            None => Ok(None),
        }
    }

    /// Every volume on every online pool (usage as of the last commit).
    pub fn volumes(&self) -> Result<Vec<Volume>> {
        let pools = self.lock().clone();
        let mut out = Vec::new();
        for p in pools.iter().filter(|p| p.status == PoolStatus::Online) {
            for n in list_names(&p.mountpoint.join(VOLUMES_DIR))? {
                let path = p.mountpoint.join(VOLUMES_DIR).join(&n);
                out.push(self.volume_at(p, &n, path, false)?);
            }
        }
        Ok(out)
    }

    // ----- vdisks -----

    fn vdisk_at(pool: &Pool, name: &str, path: PathBuf) -> Result<Vdisk> {
        let m = fs::metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
        Ok(Vdisk {
            name: name.to_string(),
            pool: pool.label.clone(),
            path,
            size: m.len(),
            allocated: m.blocks() * 512,
        })
    }

    /// Create a sparse NOCOW file of `size` bytes on the best pool of `kind`.
    pub fn vdisk_create(&self, name: &str, size: u64, kind: PoolKind) -> Result<Vdisk> {
        check_name(name)?;
        check_size("vdisk", size)?;
        let pools = self.lock();
        if let Some((p, _)) = self.find_in(&pools, VDISKS_DIR, name) {
            return Err(Error::Exists {
                kind: "vdisk",
                name: name.into(),
                pool: p.label,
            });
        }
        let mut registry = self.registry(VDISKS_KEY)?;
        if let Some(label) = registry.get(name) {
            return Err(Self::absent_vdisk(&pools, name, label));
        }
        let pool = self.choose(&pools, kind, size)?;
        let path = pool.mountpoint.join(VDISKS_DIR).join(name);
        let res = (|| {
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| Error::io("create", &path, e))?;
            // NOCOW only takes effect on an empty file: set it before any data.
            self.backend.set_nocow(&f, &path)?;
            f.set_len(size)
                .map_err(|e| Error::io("truncate", &path, e))?;
            f.sync_all().map_err(|e| Error::io("fsync", &path, e))
        })();
        let res = res.and_then(|()| {
            registry.insert(name.to_string(), pool.label.clone());
            self.save_registry(VDISKS_KEY, &registry)
        });
        if let Err(e) = res {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        tracing::info!(vdisk = name, pool = %pool.label, size, "vdisk created");
        Self::vdisk_at(&pool, name, path)
    }

    /// Idempotent: create, or grow to `size` if it exists smaller.
    pub fn vdisk_ensure(&self, name: &str, size: u64, kind: PoolKind) -> Result<Vdisk> {
        match self.vdisks()?.into_iter().find(|v| v.name == name) {
            None => self.vdisk_create(name, size, kind),
            Some(v) if v.size == size => Ok(v),
            Some(_) => self.vdisk_resize(name, size),
        }
    }

    /// Grow a vdisk (shrinking would cut a guest's filesystem and is refused).
    pub fn vdisk_resize(&self, name: &str, size: u64) -> Result<Vdisk> {
        check_name(name)?;
        check_size("vdisk", size)?;
        let pools = self.lock();
        let Some((pool, path)) = self.find_in(&pools, VDISKS_DIR, name) else {
            return Err(match self.registry(VDISKS_KEY)?.get(name) {
                Some(label) => Self::absent_vdisk(&pools, name, label),
                None => not_found("vdisk", name),
            });
        };
        let current = Self::vdisk_at(&pool, name, path.clone())?.size;
        if size < current {
            return Err(Error::InvalidSize {
                what: format!("vdisk {name}"),
                size,
                why: "shrinking a vdisk would destroy guest data",
            });
        }
        let (_, capacity, allocated) = self.pool_capacity(&pool)?;
        let available = capacity.saturating_sub(allocated);
        if size - current > available {
            return Err(Error::ResizeNoCapacity {
                name: name.into(),
                pool: pool.label,
                requested: size,
                available,
            });
        }
        let f = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("open", &path, e))?;
        f.set_len(size)
            .map_err(|e| Error::io("truncate", &path, e))?;
        f.sync_all().map_err(|e| Error::io("fsync", &path, e))?;
        tracing::info!(vdisk = name, pool = %pool.label, from = current, to = size, "vdisk resized");
        Self::vdisk_at(&pool, name, path)
    }

    /// Delete a vdisk and its registry entry. Returns false if there was no file.
    pub fn vdisk_remove(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        let pools = self.lock();
        let found = self.find_in(&pools, VDISKS_DIR, name);
        if let Some((pool, path)) = &found {
            fs::remove_file(path).map_err(|e| Error::io("remove", path, e))?;
            tracing::info!(vdisk = name, pool = %pool.label, "vdisk removed");
        }
        let mut registry = self.registry(VDISKS_KEY)?;
        if registry.remove(name).is_some() {
            self.save_registry(VDISKS_KEY, &registry)?;
        }
        Ok(found.is_some())
    }

    /// Every vdisk on the online pools.
    pub fn vdisks(&self) -> Result<Vec<Vdisk>> {
        let pools = self.lock().clone();
        let mut out = Vec::new();
        for p in pools.iter().filter(|p| p.status == PoolStatus::Online) {
            for n in list_names(&p.mountpoint.join(VDISKS_DIR))? {
                let path = p.mountpoint.join(VDISKS_DIR).join(&n);
                out.push(Self::vdisk_at(p, &n, path)?);
            }
        }
        Ok(out)
    }

    /// Unmount every online pool (shutdown, or a simulated reboot in tests). A pool kept
    /// busy briefly (a child forked while a file of it was open, until it execs or exits)
    /// is waited for; one still busy after the bounded wait is [`Error::Busy`] naming its
    /// holders, and the other pools are unmounted all the same.
    pub fn close(self) -> Result<()> {
        let pools = self.lock().clone();
        let mut first = None;
        for p in pools.iter().filter(|p| p.status == PoolStatus::Online) {
            if let Err(e) = self.backend.unmount(&p.mountpoint) {
                tracing::error!(pool = %p.label, error = %e, "unmount failed");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// The node's identity seed from the online pools' copies; `None` when no pool has one
/// (first open). Pools holding another seed are foreign: when exactly one seed is
/// rooted (a pool holding it carries a pool registry authenticated by that seed and
/// listing that pool) the others' pools become `Broken` and are neither read nor
/// written; otherwise the state home is refused ([`Error::StateConflict`]).
fn resolve_identity(pools: &mut [Pool]) -> Result<Option<[u8; 32]>> {
    let mut held: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut corrupt = 0;
    for (i, p) in pools.iter().enumerate() {
        if p.status != PoolStatus::Online {
            continue;
        }
        match state::read_copy(&p.mountpoint.join(STATE_DIR), IDENTITY_KEY, None) {
            (_, Some(v)) => held.push((i, v)),
            (CopyState::Missing, _) => {}
            _ => corrupt += 1,
        }
    }
    let mut seeds: Vec<&Vec<u8>> = held.iter().map(|(_, v)| v).collect();
    seeds.sort();
    seeds.dedup();
    let seed_of = |v: &[u8]| -> Result<[u8; 32]> {
        v.try_into().map_err(|_| Error::Corrupt {
            what: "node identity".into(),
            why: format!("{} bytes, not a 32-byte seed", v.len()),
        })
    };
    let chosen = match seeds.as_slice() {
        [] if corrupt > 0 => {
            return Err(Error::StateUnreadable {
                key: IDENTITY_KEY.into(),
                copies: corrupt,
            })
        }
        [] => return Ok(None),
        [one] => seed_of(one)?,
        several => {
            let rooted: Vec<&Vec<u8>> = several
                .iter()
                .copied()
                .filter(|seed| {
                    let mac = mac_key_of(seed);
                    held.iter().filter(|(_, v)| v == *seed).any(|(i, _)| {
                        let p = &pools[*i];
                        let dir = p.mountpoint.join(STATE_DIR);
                        match state::read_copy(&dir, POOLS_KEY, Some(&mac)) {
                            (_, Some(reg)) => serde_json::from_slice::<Vec<KnownPool>>(&reg)
                                .is_ok_and(|known| known.iter().any(|k| k.label == p.label)),
                            _ => false,
                        }
                    })
                })
                .collect();
            let [one] = rooted.as_slice() else {
                return Err(Error::StateConflict {
                    key: IDENTITY_KEY.into(),
                    copies: held
                        .iter()
                        .map(|(i, _)| pools[*i].mountpoint.join(STATE_DIR).join(IDENTITY_KEY))
                        .collect(),
                });
            };
            seed_of(one)?
        }
    };
    for (i, v) in &held {
        if v[..] != chosen[..] {
            let p = &mut pools[*i];
            tracing::error!(pool = %p.label, disk = ?p.disk, "foreign state home: refused");
            p.status = PoolStatus::Broken {
                reason: "foreign state home: its node identity is not this node's".into(),
            };
        }
    }
    Ok(Some(chosen))
}

fn not_found(kind: &'static str, name: &str) -> Error {
    Error::NotFound {
        kind,
        name: name.to_string(),
    }
}

fn check_size(what: &str, size: u64) -> Result<()> {
    if size < 4096 || size % 4096 != 0 {
        return Err(Error::InvalidSize {
            what: what.to_string(),
            size,
            why: "must be a positive multiple of 4096",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::QgroupUsage;
    use std::collections::HashMap;
    use std::fs::File;

    /// A kernel stand-in: pools are plain directories with a configured size.
    #[derive(Default)]
    struct Fake {
        sizes: HashMap<PathBuf, u64>,
        limits: Mutex<HashMap<PathBuf, u64>>,
    }

    impl Backend for Fake {
        fn mkfs(&self, _: &Path, _: &str, _: bool) -> Result<()> {
            unreachable!("fake pools are pre-made")
        }
        fn mount(&self, _: &Path, _: &Path) -> Result<()> {
            unreachable!()
        }
        fn unmount(&self, _: &Path) -> Result<()> {
            Ok(())
        }
        fn is_mounted(&self, _: &Path) -> Result<bool> {
            Ok(true)
        }
        fn enable_quota(&self, _: &Path) -> Result<()> {
            Ok(())
        }
        fn fs_usage(&self, mnt: &Path) -> Result<FsUsage> {
            let total = self.sizes[mnt];
            Ok(FsUsage {
                total,
                used: 0,
                free: total,
            })
        }
        fn subvol_create(&self, path: &Path) -> Result<()> {
            fs::create_dir(path).map_err(|e| Error::io("mkdir", path, e))
        }
        fn subvol_delete(&self, path: &Path) -> Result<()> {
            self.limits.lock().unwrap().remove(path);
            fs::remove_dir_all(path).map_err(|e| Error::io("rm", path, e))
        }
        fn set_limit(&self, subvol: &Path, bytes: u64) -> Result<()> {
            self.limits
                .lock()
                .unwrap()
                .insert(subvol.to_path_buf(), bytes);
            Ok(())
        }
        fn qgroup_usage(&self, subvol: &Path, _: bool) -> Result<QgroupUsage> {
            Ok(QgroupUsage {
                limit: self.limits.lock().unwrap().get(subvol).copied(),
                ..Default::default()
            })
        }
        fn set_nocow(&self, _: &File, _: &Path) -> Result<()> {
            Ok(())
        }
    }

    const MIB: u64 = 1 << 20;

    fn storage(pools: &[(&str, PoolKind, u64)]) -> (tempfile::TempDir, Storage<Fake>) {
        let t = tempfile::tempdir().unwrap();
        let mut fake = Fake::default();
        let mut ps = Vec::new();
        for (label, kind, size) in pools {
            let mnt = t.path().join(label);
            ensure_layout(&mnt).unwrap();
            fake.sizes.insert(mnt.clone(), *size);
            ps.push(Pool {
                label: label.to_string(),
                kind: *kind,
                disk: None,
                device: None,
                mountpoint: mnt,
                status: PoolStatus::Online,
            });
        }
        ps.push(Pool {
            label: "gone".into(),
            kind: PoolKind::Ssd,
            disk: None,
            device: None,
            mountpoint: t.path().join("gone"),
            status: PoolStatus::Missing,
        });
        let root = t.path().to_path_buf();
        (t, Storage::with_pools(fake, root, ps))
    }

    #[test]
    fn placement_prefers_ssd_with_most_free() {
        let (_t, s) = storage(&[
            ("ssd1", PoolKind::Ssd, 100 * MIB),
            ("ssd2", PoolKind::Ssd, 200 * MIB),
            ("hdd1", PoolKind::Hdd, 1000 * MIB),
        ]);
        assert_eq!(
            s.volume_create("a", 50 * MIB, PoolKind::Ssd).unwrap().pool,
            "ssd2"
        );
        assert_eq!(
            s.volume_create("b", 100 * MIB, PoolKind::Ssd).unwrap().pool,
            "ssd2"
        );
        // ssd2 now has 50 MiB left, ssd1 100 MiB.
        assert_eq!(
            s.vdisk_create("c", 60 * MIB, PoolKind::Ssd).unwrap().pool,
            "ssd1"
        );
        assert_eq!(
            s.volume_create("d", 500 * MIB, PoolKind::Hdd).unwrap().pool,
            "hdd1"
        );
        // No overcommit: 50 + 40 free on SSDs, 41 MiB fits nowhere.
        match s.volume_create("e", 51 * MIB, PoolKind::Ssd) {
            Err(Error::NoCapacity {
                requested,
                largest_free,
                largest_pool,
                pools,
                ..
            }) => {
                assert_eq!(
                    (requested, largest_free, largest_pool.as_str(), pools),
                    (51 * MIB, 50 * MIB, "ssd2", 2)
                );
            }
            r => panic!("{r:?}"),
        }
        assert!(s.volume("e").unwrap().is_none());
        let msg = s
            .vdisk_create("e", 51 * MIB, PoolKind::Ssd)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("53477376") && msg.contains("52428800"),
            "{msg}"
        );
        assert!(s.vdisks().unwrap().len() == 1);
        // Exactly the remaining space fits.
        assert_eq!(
            s.volume_create("f", 50 * MIB, PoolKind::Ssd).unwrap().pool,
            "ssd2"
        );
        let infos = s.pool_infos().unwrap();
        let ssd2 = infos.iter().find(|i| i.pool.label == "ssd2").unwrap();
        assert_eq!((ssd2.allocated, ssd2.capacity), (200 * MIB, 200 * MIB));
        let gone = infos.iter().find(|i| i.pool.label == "gone").unwrap();
        assert_eq!(gone.pool.status, PoolStatus::Missing);
    }

    #[test]
    fn resize_respects_capacity_and_remove_frees() {
        let (_t, s) = storage(&[("ssd1", PoolKind::Ssd, 100 * MIB)]);
        s.volume_create("a", 40 * MIB, PoolKind::Ssd).unwrap();
        s.volume_create("b", 40 * MIB, PoolKind::Ssd).unwrap();
        assert!(matches!(
            s.volume_resize("a", 61 * MIB),
            Err(Error::ResizeNoCapacity { available, .. }) if available == 20 * MIB
        ));
        assert_eq!(s.volume_resize("a", 60 * MIB).unwrap().size, 60 * MIB);
        assert_eq!(s.volume_resize("a", 10 * MIB).unwrap().size, 10 * MIB);
        assert!(matches!(
            s.volume_create("a", 4096, PoolKind::Ssd),
            Err(Error::Exists { .. })
        ));
        // ensure is idempotent and resizes.
        assert_eq!(
            s.volume_ensure("a", 10 * MIB, PoolKind::Ssd).unwrap().size,
            10 * MIB
        );
        assert_eq!(
            s.volume_ensure("a", 20 * MIB, PoolKind::Ssd).unwrap().size,
            20 * MIB
        );
        assert!(s.volume_remove("b").unwrap());
        assert!(!s.volume_remove("b").unwrap());
        assert_eq!(s.volumes().unwrap().len(), 1);
        s.vdisk_create("v", 80 * MIB, PoolKind::Ssd).unwrap();
        assert!(matches!(
            s.vdisk_resize("v", 40 * MIB),
            Err(Error::InvalidSize { .. })
        ));
        assert!(matches!(
            s.vdisk_resize("v", 81 * MIB),
            Err(Error::ResizeNoCapacity { .. })
        ));
        assert!(s.vdisk_remove("v").unwrap());
        assert!(matches!(
            s.volume_create("../x", 4096, PoolKind::Ssd),
            Err(Error::InvalidName(_))
        ));
        assert!(matches!(
            s.volume_create("x", 1000, PoolKind::Ssd),
            Err(Error::InvalidSize { .. })
        ));
        // No HDD pool at all: refused with zero pools.
        assert!(matches!(
            s.volume_create("h", 4096, PoolKind::Hdd),
            Err(Error::NoCapacity {
                pools: 0,
                largest_free: 0,
                ..
            })
        ));
    }

    #[test]
    fn place_is_pure() {
        let p = |l: &str, k, c, a| PoolCapacity {
            label: l.into(),
            kind: k,
            capacity: c,
            allocated: a,
        };
        let pools = [
            p("a", PoolKind::Ssd, 100, 90),
            p("b", PoolKind::Ssd, 50, 0),
            p("c", PoolKind::Hdd, 1000, 0),
        ];
        assert_eq!(place(&pools, PoolKind::Ssd, 50).unwrap(), 1);
        assert_eq!(place(&pools, PoolKind::Hdd, 1000).unwrap(), 2);
        assert!(place(&pools, PoolKind::Ssd, 51).is_err());
    }
}
