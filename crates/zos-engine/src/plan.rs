//! What the engine works out from a deployment for the provisioner: the node-wide
//! names of its resources, the addresses on its tenant networks, and the plans of its
//! networks and workloads. Pure functions of the deployment.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use zos_contract::deployment::{parse_cidr, parse_private_subnet, Workload};
use zos_contract::Deployment;

use crate::names;
use crate::provision::{NetworkPlan, ProvisionError, WorkloadPlan};

/// The three kinds of resources a deployment turns into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    /// A persistent volume (a subvolume of the storage pool).
    Volume,
    /// A tenant network.
    Network,
    /// A container or a VM.
    Workload,
}

/// Why the addresses of a tenant network cannot be worked out (a deployment that
/// verification let through cannot say this; a journalled one from an older rule can).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The deployment declares no network of this name.
    #[error("no network {0:?}")]
    NoNetwork(String),
    /// The network's subnet is not a private IPv4 subnet (the parser's message).
    #[error("{0}")]
    Subnet(String),
    /// The subnet has fewer host addresses than the gateway and the workloads on it.
    #[error("{workloads} workloads and a gateway do not fit in {subnet} ({hosts} hosts)")]
    TooMany {
        /// Workloads on the network.
        workloads: usize,
        /// The network's subnet, as the deployment writes it.
        subnet: String,
        /// Usable host addresses in the subnet.
        hosts: u64,
    },
    /// An `egress_allow` entry is not a CIDR (the parser's message).
    #[error("egress_allow: {0}")]
    EgressAllow(String),
}

/// The node-wide names of `d`'s resources of `kind` (contract `id`).
pub fn resource_names(id: &str, d: &Deployment, kind: Resource) -> BTreeSet<String> {
    let names: Vec<&str> = match kind {
        Resource::Volume => d.volumes.iter().map(|v| v.name.as_str()).collect(),
        Resource::Network => d.networks.iter().map(|n| n.name.as_str()).collect(),
        Resource::Workload => d.workloads.iter().map(|w| w.name.as_str()).collect(),
    };
    names.into_iter().map(|n| names::of(id, n)).collect()
}

/// The addresses on network `net`: the gateway is the subnet's first host, then the
/// workloads on it in deployment order (`.2`, `.3`, ...).
pub fn addresses(
    d: &Deployment,
    net: &str,
) -> Result<(NetworkPlan, BTreeMap<String, Ipv4Addr>), AddressError> {
    let spec = d
        .networks
        .iter()
        .find(|n| n.name == net)
        .ok_or_else(|| AddressError::NoNetwork(net.to_string()))?;
    let (base, len) = parse_private_subnet(&spec.subnet).map_err(AddressError::Subnet)?;
    let base = u32::from(base);
    // Hosts are base+1 ..= broadcast-1.
    let hosts = (1u64 << (32 - u32::from(len))) - 2;
    let on_net: Vec<&Workload> = d
        .workloads
        .iter()
        .filter(|w| w.network.as_deref() == Some(net))
        .collect();
    if on_net.len() as u64 + 1 > hosts {
        return Err(AddressError::TooMany {
            workloads: on_net.len(),
            subnet: spec.subnet.clone(),
            hosts,
        });
    }
    let mut by_workload = BTreeMap::new();
    let mut forwards = Vec::new();
    for (i, w) in on_net.iter().enumerate() {
        let ip = Ipv4Addr::from(base + 2 + i as u32);
        by_workload.insert(w.name.clone(), ip);
        forwards.extend(w.ports.iter().map(|p| (ip, p.clone())));
    }
    let plan = NetworkPlan {
        name: String::new(),
        subnet: Ipv4Addr::from(base),
        prefix_len: len,
        gateway: Ipv4Addr::from(base + 1),
        forwards,
        egress_allow: spec
            .egress_allow
            .iter()
            .map(|c| parse_cidr(c))
            .collect::<Result<_, _>>()
            .map_err(AddressError::EgressAllow)?,
    };
    Ok((plan, by_workload))
}

/// The plan of network `net` of contract `id`.
pub fn network_plan(id: &str, d: &Deployment, net: &str) -> Result<NetworkPlan, ProvisionError> {
    let name = names::of(id, net);
    let (mut plan, _) = addresses(d, net)
        .map_err(|e| ProvisionError::from_source("network", &name, e).permanent())?;
    plan.name = name;
    Ok(plan)
}

/// The plan of workload `w` of contract `id`, with its volumes at `volume_paths`.
pub fn workload_plan(
    id: &str,
    d: &Deployment,
    w: &Workload,
    volume_paths: &BTreeMap<String, PathBuf>,
) -> Result<WorkloadPlan, ProvisionError> {
    let name = names::of(id, &w.name);
    let network = match w.network.as_deref() {
        Some(net) => {
            let (mut plan, ips) = addresses(d, net).map_err(|e| {
                ProvisionError::from_source("network", &names::of(id, net), e).permanent()
            })?;
            plan.name = names::of(id, net);
            Some((plan, ips[&w.name]))
        }
        None => None,
    };
    Ok(WorkloadPlan {
        name,
        workload: w.clone(),
        network,
        mounts: w
            .mounts
            .iter()
            .filter_map(|m| {
                volume_paths
                    .get(&m.volume)
                    .map(|p| (p.clone(), m.path.clone(), m.read_only))
            })
            .collect(),
        logs: d.logs.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(subnet: &str, workloads: usize) -> Deployment {
        let w = |i: usize| {
            serde_json::json!({"name": format!("w{i}"), "kind": "container",
                "flist": {"url": "dir:///f.fl",
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                    "stores": ["dir:///s"]},
                "entrypoint": ["/app"], "cpu": 1, "memory_mib": 16, "network": "net",
                "ports": [{"port": 80, "public": 8000 + i}]})
        };
        serde_json::from_value(serde_json::json!({
            "networks": [{"name": "net", "subnet": subnet}],
            "workloads": (0..workloads).map(w).collect::<Vec<_>>()
        }))
        .unwrap()
    }

    #[test]
    fn the_gateway_takes_the_first_host_and_the_workloads_the_next_ones() {
        let (plan, ips) = addresses(&deployment("10.20.0.0/29", 3), "net").unwrap();
        assert_eq!(plan.gateway.to_string(), "10.20.0.1");
        assert_eq!(ips["w0"].to_string(), "10.20.0.2");
        assert_eq!(ips["w2"].to_string(), "10.20.0.4");
        assert_eq!(plan.forwards.len(), 3);
    }

    #[test]
    fn addresses_that_do_not_work_out_are_typed_errors() {
        // A /29 has six hosts: the gateway and five workloads.
        assert_eq!(
            addresses(&deployment("10.20.0.0/29", 6), "net").unwrap_err(),
            AddressError::TooMany {
                workloads: 6,
                subnet: "10.20.0.0/29".into(),
                hosts: 6
            }
        );
        assert_eq!(
            addresses(&deployment("10.20.0.0/29", 1), "other").unwrap_err(),
            AddressError::NoNetwork("other".into())
        );
        let e = network_plan("web", &deployment("10.20.0.0/29", 6), "net").unwrap_err();
        assert!(e.is_permanent());
        assert!(
            e.to_string().starts_with("network web.net: 6 workloads"),
            "{e}"
        );
    }
}
