//! The node's farm membership (zos-registry's `membership`: the farm wait, the farmer
//! pin, the registration, the heartbeats; docs/registration.md), wired to the node's
//! parts: the farmer pin in the state home, the pools, the engine's journal, the
//! tenant networks' WireGuard ports (labelled in the heartbeat); and, once
//! registered in a farm, the node's liveness record (zos-registry's `liveness`,
//! docs/grid.md).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use zos_contract::SecretKey;
use zos_engine::journal::JournalData;
use zos_engine::{JournalStore, Phase};
use zos_network::{Network, NetworkConfig};
use zos_notary::AnyNotary;
use zos_registry::liveness::{self, Liveness};
use zos_registry::membership::{self, ContractLoad, HostError, Member, NodeHost, PoolBytes};
use zos_registry::{ContractCounts, NodeResources};
use zos_storage::{PoolKind, Storage};

use crate::config::NodeConfig;
use crate::node::{StateRecord, JOURNAL_KEY};

/// State home key of the pinned farmer public key.
const FARMER_KEY: &str = "farmer";

/// The lease TTL of the node's liveness record (`T` in docs/grid.md: at most a quarter
/// of the smallest `after_s`, 10 s, and not below etcd's minimum of about 2 s).
pub const LIVENESS_TTL: Duration = Duration::from_secs(2);

/// Waits for the farm, registers, and starts the heartbeats and, in a farm, the
/// liveness record (`None`: stopped first). The [`Liveness`] (`None` without a farm)
/// renews for as long as it is kept; its `renewed()` is what the node fences on.
/// `offered`: what the engine admits, published for placement.
pub async fn register(
    cfg: &NodeConfig,
    key: &SecretKey,
    notary: &AnyNotary,
    storage: &Arc<Storage>,
    offered: zos_engine::Capacity,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<Option<(Member, Option<Liveness>)>> {
    let member = membership::MemberConfig {
        farm: cfg.farm.clone(),
        version: crate::version().to_string(),
        netns: cfg.network.node_netns.clone(),
        heartbeat: Duration::from_secs(cfg.heartbeat_secs),
        // The orchestrator places by what the node admits, not by the machine.
        offered: Some(NodeResources {
            cpus: offered.cpu,
            memory_bytes: offered.memory_mib << 20,
            ssd_bytes: offered.ssd_mib << 20,
            hdd_bytes: offered.hdd_mib << 20,
        }),
    };
    let parts = Arc::new(Parts {
        storage: storage.clone(),
        network: wireguard_reader(cfg)?,
    });
    let say = |line: &str| println!("zosd: {line}");
    let Some(member) = membership::join(&member, key, notary, parts, shutdown, say).await? else {
        return Ok(None);
    };
    let liveness = member
        .farm
        .is_some()
        .then(|| liveness::start(notary.clone(), key.clone(), LIVENESS_TTL));
    Ok(Some((member, liveness)))
}

/// A reader of the node's tenant networks for the heartbeat: the same namespaces as the
/// provisioner's `Network` (prefix, run dir, node namespace), used only to read the
/// WireGuard links' ports (`mesh_ports`); it changes nothing.
fn wireguard_reader(cfg: &NodeConfig) -> anyhow::Result<Network> {
    let mut net_cfg = NetworkConfig::new(&cfg.network.uplink);
    net_cfg.prefix = cfg.network.prefix.clone();
    net_cfg.run_dir = cfg.network.netns_dir.clone();
    net_cfg.node_netns = cfg.network.node_netns.clone();
    Network::new(net_cfg).context("network (the heartbeat's WireGuard ports)")
}

struct Parts {
    storage: Arc<Storage>,
    network: Network,
}

impl NodeHost for Parts {
    fn pinned_farmer(&self) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self.storage.state().read(FARMER_KEY)?.map(|r| r.data))
    }

    fn pin_farmer(&self, farmer: &[u8]) -> Result<(), HostError> {
        self.storage.state().write(FARMER_KEY, farmer)?;
        Ok(())
    }

    fn pools(&self) -> Result<PoolBytes, HostError> {
        let mut p = PoolBytes::default();
        for info in self.storage.pool_infos()? {
            let (size, used) = match info.pool.kind {
                PoolKind::Ssd => (&mut p.ssd, &mut p.ssd_used),
                PoolKind::Hdd => (&mut p.hdd, &mut p.hdd_used),
            };
            *size += info.capacity;
            *used += info.used;
        }
        Ok(p)
    }

    fn contracts(&self) -> Result<ContractLoad, HostError> {
        let journal: JournalData = match StateRecord(self.storage.clone(), JOURNAL_KEY).load()? {
            Some(bytes) => serde_json::from_slice(&bytes)?,
            None => JournalData::default(),
        };
        let reserved = zos_engine::capacity::used(journal.owned.values().map(|o| &o.deployment));
        let mut load = ContractLoad {
            reserved: NodeResources {
                cpus: reserved.cpu,
                memory_bytes: reserved.memory_mib << 20,
                ssd_bytes: reserved.ssd_mib << 20,
                hdd_bytes: reserved.hdd_mib << 20,
            },
            contracts: ContractCounts::default(),
            workloads: 0,
        };
        for owned in journal.owned.values() {
            match owned.phase {
                Phase::Provisioning => load.contracts.provisioning += 1,
                Phase::Running => load.contracts.running += 1,
                Phase::Failed { .. } => load.contracts.failed += 1,
            }
            load.workloads += owned.deployment.workloads.len() as u64;
        }
        Ok(load)
    }

    /// The heartbeat lists the kernel's sockets on these ports as `wireguard`.
    fn wireguard_ports(&self) -> Result<Vec<u16>, HostError> {
        Ok(self.network.mesh_ports()?)
    }
}
