//! What the engine works out from a deployment for the provisioner: the node-wide
//! names of its resources, the addresses on its tenant networks, and the plans of its
//! networks and workloads. Pure functions of the deployment.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;

use zos_contract::deployment::{parse_cidr, parse_private_subnet, Network, Workload};
use zos_contract::{Deployment, PublicKey};

use crate::journal::{JournalData, Owned};
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
    /// A network across nodes cannot be laid out (docs/network.md, "Mesh").
    #[error(transparent)]
    Mesh(#[from] zos_mesh::AddressError),
}

impl AddressError {
    /// The stable code a refusal names: the mesh layout's (`range_too_small`,
    /// `overlapping_range`, ...), `too_many_workloads`, or `bad_network`.
    pub fn code(&self) -> &'static str {
        match self {
            AddressError::Mesh(e) => e.code(),
            AddressError::TooMany { .. } => "too_many_workloads",
            AddressError::NoNetwork(_) | AddressError::Subnet(_) | AddressError::EgressAllow(_) => {
                "bad_network"
            }
        }
    }
}

/// Where this node sits in a contract that runs on several nodes (docs/network.md,
/// "Mesh"): each of its networks' ranges is cut into `slots` subnets and this node's
/// bridge takes subnet `slot`. A contract that runs on one node has no span: the whole
/// subnet is on its bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// This node's slot: its replica number, or its position in `nodes`.
    pub slot: u64,
    /// How many slots the contract needs: its replicas, or its number of nodes.
    pub slots: u64,
}

/// Whether a contract with these `nodes` and this `placement` runs on several nodes:
/// more than one key in `nodes`, or more than one replica.
pub fn spans_nodes(nodes: &[PublicKey], placement: Option<&zos_contract::Placement>) -> bool {
    nodes.len() > 1 || placement.is_some_and(|p| p.replicas > 1)
}

/// The [`Span`] of `owned` on node `me`: a placement of several replicas (the one this
/// node holds), or a node list of several keys (the journal's `members`, this node's
/// position in it). `None`: it runs here alone.
pub fn span(j: &JournalData, owned: &Owned, me: &PublicKey) -> Option<Span> {
    if let Some(h) = &owned.held {
        return (h.placement.replicas > 1).then_some(Span {
            slot: h.replica,
            slots: h.placement.replicas,
        });
    }
    let nodes = j.members.get(&owned.id).filter(|n| n.len() > 1)?;
    let slot = nodes.iter().position(|n| n == me)? as u64;
    Some(Span {
        slot,
        slots: nodes.len() as u64,
    })
}

/// The subnet of slot `span.slot` of network `spec`'s range ([`zos_mesh::layout`]'s
/// answer for that slot, without the nodes of the others).
pub fn slot_subnet(spec: &Network, span: Span) -> Result<zos_mesh::Ipv4Net, AddressError> {
    let range = zos_mesh::addr::range_of(spec)?;
    let slots = zos_mesh::addr::slot_count(&range);
    match zos_mesh::addr::slot_subnet(&range, span.slot) {
        Some(subnet) if span.slots <= slots => Ok(subnet),
        _ => Err(zos_mesh::AddressError::RangeTooSmall {
            network: spec.name.clone(),
            range,
            slots,
            prefix: zos_mesh::addr::node_prefix(range.prefix_len()),
            needed: span.slots.max(span.slot + 1),
        }
        .into()),
    }
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
/// workloads on it in deployment order (`.2`, `.3`, ...). With a [`Span`], the subnet is
/// this node's slot of the network's range.
pub fn addresses(
    d: &Deployment,
    net: &str,
    span: Option<Span>,
) -> Result<(NetworkPlan, BTreeMap<String, Ipv4Addr>), AddressError> {
    let spec = d
        .networks
        .iter()
        .find(|n| n.name == net)
        .ok_or_else(|| AddressError::NoNetwork(net.to_string()))?;
    let (base, len) = parse_private_subnet(&spec.subnet).map_err(AddressError::Subnet)?;
    let (base, len) = match span {
        None => (base, len),
        Some(span) => {
            let slot = slot_subnet(spec, span)?;
            (slot.addr(), slot.prefix_len())
        }
    };
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
            subnet: match span {
                None => spec.subnet.clone(),
                Some(_) => format!("{}/{len}", Ipv4Addr::from(base)),
            },
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

/// The plan of network `net` of contract `id` (with a [`Span`]: this node's slot).
pub fn network_plan(
    id: &str,
    d: &Deployment,
    net: &str,
    span: Option<Span>,
) -> Result<NetworkPlan, ProvisionError> {
    let name = names::of(id, net);
    let (mut plan, _) = addresses(d, net, span)
        .map_err(|e| ProvisionError::from_source("network", &name, e).permanent())?;
    plan.name = name;
    Ok(plan)
}

/// The plan of workload `w` of contract `id`, with its volumes at `volume_paths` (with a
/// [`Span`]: its address in this node's slot).
pub fn workload_plan(
    id: &str,
    d: &Deployment,
    w: &Workload,
    volume_paths: &BTreeMap<String, PathBuf>,
    span: Option<Span>,
) -> Result<WorkloadPlan, ProvisionError> {
    let name = names::of(id, &w.name);
    let network = match w.network.as_deref() {
        Some(net) => {
            let (mut plan, ips) = addresses(d, net, span).map_err(|e| {
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
        let (plan, ips) = addresses(&deployment("10.20.0.0/29", 3), "net", None).unwrap();
        assert_eq!(plan.gateway.to_string(), "10.20.0.1");
        assert_eq!(ips["w0"].to_string(), "10.20.0.2");
        assert_eq!(ips["w2"].to_string(), "10.20.0.4");
        assert_eq!(plan.forwards.len(), 3);
    }

    #[test]
    fn addresses_that_do_not_work_out_are_typed_errors() {
        // A /29 has six hosts: the gateway and five workloads.
        assert_eq!(
            addresses(&deployment("10.20.0.0/29", 6), "net", None).unwrap_err(),
            AddressError::TooMany {
                workloads: 6,
                subnet: "10.20.0.0/29".into(),
                hosts: 6
            }
        );
        assert_eq!(
            addresses(&deployment("10.20.0.0/29", 1), "other", None).unwrap_err(),
            AddressError::NoNetwork("other".into())
        );
        let e = network_plan("web", &deployment("10.20.0.0/29", 6), "net", None).unwrap_err();
        assert!(e.is_permanent());
        assert!(
            e.to_string().starts_with("network web.net: 6 workloads"),
            "{e}"
        );
    }
}
