//! The contracts' registries and pushers: one registry per contract, whose every
//! series carries `contract=<id>`, pushed only to the target that contract names.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::push::{PushConfig, PushError, PushStats, Pusher, Target};
use crate::registry::{Registry, RegistryError};

/// The constant label of a contract's registry.
pub const CONTRACT_LABEL: &str = "contract";

struct Tenant {
    registry: Registry,
    /// The target's URL and the pusher sending there, if the contract names one.
    pusher: Option<(String, Arc<Pusher>)>,
}

/// Every contract's registry and pusher. A contract without a target keeps its
/// registry (its workloads update it) and nothing leaves the node for it.
pub struct Tenants {
    config: PushConfig,
    /// Labels on every contract's series besides `contract` (e.g. `node`).
    labels: Vec<(String, String)>,
    map: Mutex<BTreeMap<String, Tenant>>,
}

impl std::fmt::Debug for Tenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenants")
            .field(
                "contracts",
                &self.lock().keys().cloned().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Tenants {
    /// No contracts yet; every pusher made later paces itself by `config`.
    pub fn new(config: PushConfig) -> Tenants {
        Tenants {
            config,
            labels: Vec::new(),
            map: Mutex::default(),
        }
    }

    /// Every contract's registry carries `labels` too (e.g. `[("node", id)]`); they
    /// are checked when a registry is made (`contract` among them is refused there).
    pub fn with_labels(config: PushConfig, labels: &[(&str, &str)]) -> Tenants {
        Tenants {
            labels: labels
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            ..Tenants::new(config)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Tenant>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The registry of `contract`, made (with `contract=<id>`) the first time.
    pub fn registry(&self, contract: &str) -> Result<Registry, RegistryError> {
        let mut map = self.lock();
        if let Some(t) = map.get(contract) {
            return Ok(t.registry.clone());
        }
        let mut labels: Vec<(&str, &str)> = vec![(CONTRACT_LABEL, contract)];
        labels.extend(self.labels.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let registry = Registry::with_labels(&labels)?;
        map.insert(
            contract.to_string(),
            Tenant {
                registry: registry.clone(),
                pusher: None,
            },
        );
        Ok(registry)
    }

    /// Sends `contract`'s registry to `target` from now on (`None`: to nowhere). The
    /// same URL as before keeps its pusher (and its queue); another replaces it, and
    /// what the old one had queued is not sent to the new target. Runs on the current
    /// tokio runtime.
    pub fn set_target(&self, contract: &str, target: Option<&Target>) -> Result<(), PushError> {
        let registry = self
            .registry(contract)
            .map_err(|e| PushError::Config(e.to_string()))?;
        let mut map = self.lock();
        let t = map.get_mut(contract).expect("registry() made it");
        let url = target.map(|t| t.url.to_string());
        if t.pusher.as_ref().map(|(u, _)| u) == url.as_ref() {
            return Ok(());
        }
        // The old pusher stops when the last handle drops.
        t.pusher = None;
        if let Some(target) = target {
            let p = Pusher::spawn(target, registry, self.config.clone())?;
            t.pusher = Some((target.url.to_string(), Arc::new(p)));
            tracing::info!(contract, target_url = %target.url, "contract metrics target bound");
        }
        Ok(())
    }

    /// Forgets `contract` (it is gone): its pusher stops, its registry is dropped.
    pub fn remove(&self, contract: &str) -> bool {
        self.lock().remove(contract).is_some()
    }

    /// The contracts known, in order.
    pub fn contracts(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// What `contract`'s pusher has done, if it has one.
    pub fn stats(&self, contract: &str) -> Option<PushStats> {
        let map = self.lock();
        map.get(contract)?.pusher.as_ref().map(|(_, p)| p.stats())
    }

    /// Pushes `contract`'s registry now ([`Pusher::push_now`]); `Stopped` if it has no
    /// target.
    pub async fn push_now(&self, contract: &str) -> Result<(), PushError> {
        let pusher = {
            let map = self.lock();
            map.get(contract)
                .and_then(|t| t.pusher.as_ref())
                .map(|(_, p)| p.clone())
        };
        match pusher {
            Some(p) => p.push_now().await,
            None => Err(PushError::Stopped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_contract_s_registry_carries_its_id_and_targets_bind_and_unbind() {
        let t = Tenants::new(PushConfig::default());
        let r = t.registry("c1").unwrap();
        r.gauge("g", &[]).unwrap().set(1.0);
        assert_eq!(r.snapshot(0)[0].label(CONTRACT_LABEL), Some("c1"));
        // The same registry the second time.
        assert_eq!(t.registry("c1").unwrap().len(), 1);
        assert!(t.stats("c1").is_none());
        assert!(matches!(t.push_now("c1").await, Err(PushError::Stopped)));
        let target = Target::new("http://127.0.0.1:1/api/v1/write".parse().unwrap());
        t.set_target("c1", Some(&target)).unwrap();
        assert_eq!(t.stats("c1"), Some(PushStats::default()));
        t.set_target("c1", None).unwrap();
        assert!(t.stats("c1").is_none());
        assert_eq!(t.contracts(), ["c1"]);
        assert!(t.remove("c1"));
        assert!(t.contracts().is_empty());
        // Labels of the node's own on every contract's series; `contract` is not one.
        let t = Tenants::with_labels(PushConfig::default(), &[("node", "n1")]);
        let r = t.registry("c2").unwrap();
        r.gauge("g", &[]).unwrap().set(1.0);
        let s = &r.snapshot(0)[0];
        assert_eq!(s.label(CONTRACT_LABEL), Some("c2"));
        assert_eq!(s.label("node"), Some("n1"));
        let t = Tenants::with_labels(PushConfig::default(), &[(CONTRACT_LABEL, "forged")]);
        assert!(t.registry("c3").is_err());
    }
}
