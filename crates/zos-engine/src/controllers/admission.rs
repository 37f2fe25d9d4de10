//! Admission: what a record at one of this node's contract keys does.
//!
//! - Inputs: the record ([`read`]), the journal ([`JournalData`]), the blueprint record
//!   a contract names by digest (fetched by the engine), the wall clock and the node's
//!   trust settings ([`Inputs`]).
//! - Actions ([`Action`]): refuse (a status saying why, nothing created), accept (a
//!   new journal entry, then provisioning), cancel (journal first, then teardown), keep
//!   a tombstone (an owner's cancellation of a contract the node does not run).

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use zos_contract::verify::verify_cancellation;
use zos_contract::{
    check_update, Accepted, ContractRecord, Deployment, Digest, Limits, PublicKey,
    SignedAssignment, SignedBlueprint, SignedCancellation, SignedContract, Signers,
    VerifiedTriples, VerifyContext,
};
use zos_notary::{KeyKind, Record};

use crate::capacity::{self, Capacity};
use crate::journal::{Held, JournalData, Owned, Phase};
use crate::names;
use crate::status::ReasonReport;

/// How many owner-signed cancellations of a contract this node does not run are kept
/// per contract id (the highest versions).
pub const MAX_TOMBSTONES: usize = 8;

/// A record at a contract key of this node, read.
#[derive(Debug)]
pub enum RecordInput {
    /// A signed contract document whose id is the one its key names.
    Contract(Box<SignedContract>),
    /// An owner-signed cancellation of the contract its key names.
    Cancellation {
        /// The contract id, from the record key.
        id: String,
        /// The cancellation as read; not yet verified.
        cancel: SignedCancellation,
    },
    /// It does not parse, or names another id than its key.
    Malformed {
        /// The contract id, from the record key.
        id: String,
        /// The document's version, when it parsed that far; `None` otherwise.
        version: Option<u64>,
        /// Why it is refused, as published in the contract's status.
        reasons: Vec<ReasonReport>,
    },
}

/// Reads `record`: `None` when it is not at a contract key of `node`.
pub fn read(record: &Record, node: &PublicKey, limits: &Limits) -> Option<RecordInput> {
    let Ok(KeyKind::Contract {
        node: at,
        contract_id,
    }) = record.notary_key().map(|k| k.kind())
    else {
        return None;
    };
    (at == *node).then(|| read_body(record, contract_id, limits))
}

/// Reads `record`: `None` when it is not at a placement contract key of `farm`
/// (`grid/<farm>/contracts/<id>`).
pub fn read_farm(record: &Record, farm: &str, limits: &Limits) -> Option<RecordInput> {
    let Ok(KeyKind::PlacementContract {
        farm_id,
        contract_id,
    }) = record.notary_key().map(|k| k.kind())
    else {
        return None;
    };
    (farm_id == farm).then(|| read_body(record, contract_id, limits))
}

/// The body of a record at the key of contract `contract_id`.
fn read_body(record: &Record, contract_id: String, limits: &Limits) -> RecordInput {
    match ContractRecord::from_value(&record.body, limits) {
        Ok(ContractRecord::Contract(doc)) if doc.contract.id != contract_id => {
            RecordInput::Malformed {
                version: Some(doc.contract.version),
                reasons: vec![ReasonReport {
                    code: "malformed".into(),
                    message: format!(
                        "record key names contract {contract_id}, the document {}",
                        doc.contract.id
                    ),
                }],
                id: contract_id,
            }
        }
        Ok(ContractRecord::Contract(doc)) => RecordInput::Contract(doc),
        Ok(ContractRecord::Cancellation(cancel)) => RecordInput::Cancellation {
            id: contract_id,
            cancel,
        },
        Err(e) => RecordInput::Malformed {
            id: contract_id,
            version: None,
            reasons: vec![(&zos_contract::Reason::from(e)).into()],
        },
    }
}

/// What admission decides.
#[derive(Debug)]
pub enum Action {
    /// Report why; create nothing.
    Refuse {
        /// The contract id.
        id: String,
        /// The refused version; `None` when the document did not parse that far.
        version: Option<u64>,
        /// Why, as published in the contract's status.
        reasons: Vec<ReasonReport>,
    },
    /// Journal `owned` (it replaces `previous`, the version that ran or waits out its
    /// grace period), then provision it.
    Accept {
        /// The accepted version, as the journal keeps it.
        owned: Box<Owned>,
        /// The version it replaces; `None` for a contract new to this node.
        previous: Option<Box<Owned>>,
        /// The contract's signed `nodes` (empty for a placement): with more than one,
        /// the journal keeps them ([`JournalData::members`]).
        nodes: Vec<PublicKey>,
    },
    /// Its owner cancelled `target` (`running`: it runs; else its volumes wait out a
    /// grace period): journal it (at `version`, `marker`), then remove everything.
    Cancel {
        /// The contract version the cancellation removes.
        target: Box<Owned>,
        /// `true`: it runs; `false`: it is retired, its volumes in their grace period.
        running: bool,
        /// The cancellation's version: from now on the highest accepted for the id.
        version: u64,
        /// The digest of the cancellation, journalled with `version` as accepted.
        marker: Digest,
    },
    /// The owner's cancellation at `version` was carried out already (journalled, its
    /// resources torn down or doomed), but its `cancelled` status may not have reached
    /// the notary (a power cut in between): publish it again.
    Cancelled {
        /// The contract id.
        id: String,
        /// The cancellation's version.
        version: u64,
    },
    /// Journal `cancel` as a tombstone of a contract this node does not run.
    Tombstone {
        /// The contract id.
        id: String,
        /// The cancellation, its signature checked; it keeps versions up to its own
        /// from being accepted later.
        cancel: SignedCancellation,
    },
}

/// What [`plan_contract`] reads besides the document.
pub struct Inputs<'a> {
    /// What the node owns, retired and remembers (tombstones, quarantine).
    pub journal: &'a JournalData,
    /// The blueprint record the contract names by digest, if the notary has it.
    pub blueprint: Option<SignedBlueprint>,
    /// Unix seconds.
    pub now: u64,
    /// This node's key: a contract must name it.
    pub node: PublicKey,
    /// Blueprint authors this node accepts; `None` accepts any validly signed blueprint.
    pub trusted_authors: Option<&'a BTreeSet<PublicKey>>,
    /// Bounds on one document: what it was parsed and is verified under.
    pub limits: Limits,
    /// What the node offers to contracts in all (see [`crate::capacity::admit`]).
    pub capacity: Capacity,
    /// For a record at the farm's placement contract key (`grid/<farm>/contracts/<id>`):
    /// what the node knows of its assignment. `None` for a record at this node's own
    /// contract key, where a placement contract is refused as `unassigned`.
    pub grid: Option<GridInput<'a>>,
    /// Whether this node's kernel has WireGuard: a contract with a network across
    /// several nodes is refused (`wireguard_missing`) without it.
    pub wireguard: bool,
}

/// What admission reads for a placement contract besides the document.
pub struct GridInput<'a> {
    /// The assignment naming this node for the contract (the lowest replica, when the
    /// orchestrator named it for several); `None`: none.
    pub assignment: Option<&'a SignedAssignment>,
    /// The farm this node is registered in.
    pub farm: &'a str,
}

/// A contract document: accept it, refuse it, or nothing (a re-delivery of what runs,
/// a replay of an older version of it). In order: verification, the node's own rules
/// (update, tombstones, quarantine), then capacity.
pub fn plan_contract(doc: &SignedContract, inputs: Inputs<'_>) -> Vec<Action> {
    let c = &doc.contract;
    let j = inputs.journal;
    let refuse = |reasons| {
        vec![Action::Refuse {
            id: c.id.clone(),
            version: Some(c.version),
            reasons,
        }]
    };
    // A placement contract runs on its orchestrator's assignment only (docs/grid.md).
    let held = match &inputs.grid {
        None => None,
        Some(grid) => match held(doc, grid, &inputs) {
            Ok(held) => Some(held),
            Err(reason) => return refuse(vec![reason]),
        },
    };
    // Re-deliveries and co-signatures of what runs already change nothing.
    if let Some(owned) = j.owned.get(&c.id) {
        if owned.version == c.version && owned.digest == doc.digest && owned.held == held {
            return Vec::new();
        }
    }
    // Who governs this id now: the contract that runs, or an expired one whose
    // volumes wait out their grace period. A new version must be its update.
    let governing: Option<&Owned> = j
        .owned
        .get(&c.id)
        .or_else(|| j.retired.get(&c.id).map(|r| &r.owned));
    let (accepted, mut reasons) = match verify(doc, governing, &inputs) {
        None => return Vec::new(),
        Some(Ok(a)) => (Some(a), Vec::new()),
        Some(Err(reasons)) => (None, reasons),
    };
    reasons.extend(node_rules(doc, governing, accepted.as_ref(), j));
    let accepted = match accepted {
        Some(a) if reasons.is_empty() => a,
        _ => return refuse(reasons),
    };
    if let Err(over) = fits(&c.id, &accepted.deployment, &inputs) {
        return refuse(vec![over]);
    }
    if let Err(reason) = mesh_rules(doc, &accepted.deployment, held.as_ref(), &inputs) {
        return refuse(vec![reason]);
    }
    let owned = Owned {
        id: c.id.clone(),
        version: accepted.version,
        digest: accepted.digest,
        owner: c.owner,
        expires: c.expires,
        deployment: accepted.deployment,
        phase: Phase::Provisioning,
        restarts: governing.map(|p| p.restarts.clone()).unwrap_or_default(),
        signers: Some(Signers::from(c)),
        held,
    };
    vec![Action::Accept {
        owned: Box::new(owned),
        previous: governing.cloned().map(Box::new),
        nodes: c.nodes.clone(),
    }]
}

/// The code of [`mesh_rules`]' refusal on a kernel without WireGuard.
pub const WIREGUARD_MISSING: &str = "wireguard_missing";

/// A contract whose networks span several nodes (docs/network.md, "Mesh"): every node
/// lays them out the same way, so what cannot be laid out is refused here, before
/// anything is made, with the layout's code (`range_too_small`, `overlapping_range`,
/// `duplicate_node`, ...); so is one on a kernel without WireGuard
/// ([`WIREGUARD_MISSING`]). A contract on one node is not judged here.
fn mesh_rules(
    doc: &SignedContract,
    deployment: &Deployment,
    held: Option<&Held>,
    inputs: &Inputs<'_>,
) -> Result<(), ReasonReport> {
    let c = &doc.contract;
    if deployment.networks.is_empty() || !crate::plan::spans_nodes(&c.nodes, doc.placement.as_ref())
    {
        return Ok(());
    }
    let reason = |code: &str, message: String| ReasonReport {
        code: code.into(),
        message,
    };
    let address = |e: crate::plan::AddressError| reason(e.code(), e.to_string());
    zos_mesh::check_ranges(&deployment.networks).map_err(|e| address(e.into()))?;
    let span = match (held, doc.placement.as_ref()) {
        (Some(h), _) => crate::plan::Span {
            slot: h.replica,
            slots: h.placement.replicas,
        },
        (None, Some(p)) => crate::plan::Span {
            slot: 0,
            slots: p.replicas,
        },
        (None, None) => {
            for n in &deployment.networks {
                zos_mesh::layout(n, &zos_mesh::Members::Nodes(&c.nodes))
                    .map_err(|e| address(e.into()))?;
            }
            let slot = c.nodes.iter().position(|n| *n == inputs.node).unwrap_or(0);
            crate::plan::Span {
                slot: slot as u64,
                slots: c.nodes.len() as u64,
            }
        }
    };
    for n in &deployment.networks {
        crate::plan::addresses(deployment, &n.name, Some(span)).map_err(address)?;
    }
    if !inputs.wireguard {
        return Err(reason(
            WIREGUARD_MISSING,
            "this node's kernel has no WireGuard: a network across nodes needs it".into(),
        ));
    }
    Ok(())
}

/// The replica a placement contract at the farm's key gives this node: the assignment
/// `admit()`ted ([`zos_contract::admit`]), or why not. The node is in the placement's
/// farm when that is the farm it registered in; the epoch must not be below the
/// highest the journal has seen for the replica.
fn held(
    doc: &SignedContract,
    grid: &GridInput<'_>,
    inputs: &Inputs<'_>,
) -> Result<Held, ReasonReport> {
    let c = &doc.contract;
    let Some(placement) = &doc.placement else {
        let refusal = zos_contract::AssignmentRefusal::NotPlacement {
            contract: c.id.clone(),
        };
        return Err(assignment_reason(&refusal));
    };
    let farm_nodes: BTreeSet<PublicKey> = (placement.farm == grid.farm)
        .then_some(inputs.node)
        .into_iter()
        .collect();
    let seen = grid.assignment.map_or(0, |a| {
        inputs.journal.highest_epoch(&c.id, a.assignment.replica)
    });
    match zos_contract::admit(grid.assignment, doc, &inputs.node, &farm_nodes, seen) {
        Ok(admitted) => Ok(Held {
            replica: admitted.replica,
            epoch: admitted.epoch,
            placement: placement.clone(),
        }),
        Err(refusal) => Err(assignment_reason(&refusal)),
    }
}

fn assignment_reason(refusal: &zos_contract::AssignmentRefusal) -> ReasonReport {
    ReasonReport {
        code: refusal.code(),
        message: refusal.to_string(),
    }
}

/// The (digest, signer, signature) triples this process saw verify: a re-delivery of an
/// unchanged contract (every watch event, every resync) skips the ed25519 arithmetic,
/// and nothing else. Bounded (zos-contract's default, 4096 triples, oldest out first).
static VERIFIED: Mutex<VerifiedTriples> = Mutex::new(VerifiedTriples::new());

/// zos-contract's verification as this node: `None` for a replay of an older version
/// while a newer one runs (only logged: the running version's status stays).
fn verify(
    doc: &SignedContract,
    governing: Option<&Owned>,
    inputs: &Inputs<'_>,
) -> Option<Result<Accepted, Vec<ReasonReport>>> {
    let (c, j) = (&doc.contract, inputs.journal);
    // Signatures of governing stakeholders the new document drops count for the
    // update rule only; verification judges the document on its own terms.
    let checked = match governing.and_then(|g| g.signers.as_ref()) {
        Some(signers) => zos_contract::update::for_verification(signers, doc),
        None => doc.clone(),
    };
    let blueprint = inputs.blueprint.clone();
    let resolver = move |d: &Digest| blueprint.clone().filter(|b| b.digest == *d);
    // A placement contract names no node: the farm's copy is verified for no node in
    // particular (its assignment was admitted before); at this node's own key it is
    // verified for this node, which refuses it as `unassigned`.
    let node = match (&inputs.grid, &doc.placement) {
        (Some(_), Some(_)) => None,
        _ => Some(inputs.node),
    };
    let ctx = VerifyContext {
        now: inputs.now,
        node,
        accepted: j.accepted.get(&c.id).copied(),
        resolve_blueprint: &resolver,
        trusted_authors: inputs.trusted_authors,
        limits: inputs.limits,
    };
    let verification = {
        // The cache holds only triples that verified, so a poisoned lock's contents are
        // still sound.
        let mut cache = VERIFIED.lock().unwrap_or_else(PoisonError::into_inner);
        zos_contract::verify_cached(&checked, &ctx, &mut cache)
    };
    for warning in &verification.warnings {
        // Signature entries that did not count (docs/contract-format.md §4): anyone
        // can add one, so they refuse nothing while the rules are met.
        tracing::warn!(contract = %c.id, version = c.version, %warning, "signature entry not counted");
    }
    match verification.into_result() {
        Ok(a) => Some(Ok(a)),
        Err(refusal) => {
            let replay_of_running = j.owned.contains_key(&c.id)
                && refusal
                    .reasons
                    .iter()
                    .any(|r| matches!(r, zos_contract::Reason::Replay { .. }));
            if replay_of_running {
                tracing::warn!(contract = %c.id, version = c.version, %refusal, "replay refused");
                return None;
            }
            Some(Err(refusal
                .reasons
                .iter()
                .map(ReasonReport::from)
                .collect()))
        }
    }
}

/// The node's own rules: the update rule against the governing version, the owner's
/// tombstones, and quarantined volumes.
fn node_rules(
    doc: &SignedContract,
    governing: Option<&Owned>,
    accepted: Option<&Accepted>,
    j: &JournalData,
) -> Vec<ReasonReport> {
    let c = &doc.contract;
    let mut reasons = Vec::new();
    if let Some(g) = governing {
        match &g.signers {
            Some(signers) => {
                if let Err(refusal) = check_update(signers, doc) {
                    reasons.extend(refusal.reasons.iter().map(ReasonReport::from));
                }
            }
            None => reasons.push(ReasonReport {
                code: "update_signers_unknown".into(),
                message: format!(
                    "version {} was journalled without its stakeholders: it takes no update; its owner cancels it and publishes again",
                    g.version
                ),
            }),
        }
    }
    let tombstone = j.tombstones.get(&c.id).and_then(|ts| {
        ts.iter()
            .find(|t| t.cancellation.owner == c.owner && t.cancellation.version >= c.version)
    });
    if let Some(t) = tombstone {
        reasons.push(ReasonReport {
            code: "cancelled".into(),
            message: format!(
                "its owner cancelled it at version {}; version {} is not above that",
                t.cancellation.version, c.version
            ),
        });
    }
    for v in accepted.iter().flat_map(|a| &a.deployment.volumes) {
        let name = names::of(&c.id, &v.name);
        if j.quarantined.contains(&name) {
            reasons.push(ReasonReport {
                code: "volume_quarantined".into(),
                message: format!(
                    "volume {name} exists and holds data of an unknown owner: it is quarantined, never handed to a contract"
                ),
            });
        }
    }
    reasons
}

/// Capacity: what the other contracts reserve (and the volumes of expired ones in
/// their grace period), plus `deployment` of contract `id`.
fn fits(id: &str, deployment: &Deployment, inputs: &Inputs<'_>) -> Result<(), ReasonReport> {
    let j = inputs.journal;
    let kept: Vec<Deployment> = j
        .retired
        .values()
        .filter(|r| r.owned.id != id)
        .map(|r| Deployment {
            networks: Vec::new(),
            volumes: r.owned.deployment.volumes.clone(),
            workloads: Vec::new(),
            publish_logs: false,
            logs: None,
            metrics: None,
        })
        .collect();
    let used = capacity::used(
        j.owned
            .values()
            .filter(|o| o.id != id)
            .map(|o| &o.deployment)
            .chain(kept.iter()),
    );
    capacity::admit(inputs.capacity, used, Capacity::of(deployment)).map_err(|over| ReasonReport {
        code: "over_capacity".into(),
        message: over.to_string(),
    })
}

/// The journal change of [`Action::Accept`].
pub fn journal_accept(j: &mut JournalData, owned: &Owned, nodes: &[PublicKey]) {
    let id = &owned.id;
    if nodes.len() > 1 {
        j.members.insert(id.clone(), nodes.to_vec());
    } else {
        j.members.remove(id);
    }
    if let Some(h) = &owned.held {
        j.see_epoch(id, h.replica, h.epoch);
    }
    j.accepted.insert(id.clone(), (owned.version, owned.digest));
    j.owned.insert(id.clone(), owned.clone());
    j.retired.remove(id);
    if let Some(ts) = j.tombstones.get_mut(id) {
        ts.retain(|t| t.cancellation.version > owned.version);
        if ts.is_empty() {
            j.tombstones.remove(id);
        }
    }
}

/// A cancellation at key `id`: of the contract that runs (or waits out its grace
/// period) if its owner signed it above that version; a tombstone when the node does
/// not run `id` and its signature verifies; else nothing (logged).
pub fn plan_cancellation(j: &JournalData, id: &str, cancel: &SignedCancellation) -> Vec<Action> {
    let version = cancel.cancellation.version;
    let (target, running) = match (j.owned.get(id), j.retired.get(id)) {
        (Some(o), _) => (o, true),
        (None, Some(r)) => (&r.owned, false),
        (None, None) => return plan_tombstone(j, id, cancel),
    };
    if let Err(e) = verify_cancellation(cancel, &target.id, &target.owner, target.version) {
        tracing::warn!(contract = %id, version, error = %e, "cancellation refused");
        return Vec::new();
    }
    let marker = cancellation_marker(cancel);
    vec![Action::Cancel {
        target: Box::new(target.clone()),
        running,
        version,
        marker,
    }]
}

/// What the journal keeps as accepted for a carried-out cancellation.
fn cancellation_marker(cancel: &SignedCancellation) -> Digest {
    Digest::of(
        serde_json::to_string(&cancel.cancellation)
            .unwrap_or_default()
            .as_bytes(),
    )
}

fn plan_tombstone(j: &JournalData, id: &str, cancel: &SignedCancellation) -> Vec<Action> {
    let c = &cancel.cancellation;
    if c.id != id || cancel.check_signature().is_err() {
        tracing::warn!(contract = %id, version = c.version, "cancellation refused: not for this id, or its signature does not verify");
        return Vec::new();
    }
    if j.accepted.get(id) == Some(&(c.version, cancellation_marker(cancel))) {
        // This very cancellation was carried out (journal_cancel): only its status
        // may be missing.
        return vec![Action::Cancelled {
            id: id.to_string(),
            version: c.version,
        }];
    }
    if j.accepted.get(id).is_some_and(|(v, _)| *v >= c.version) {
        tracing::info!(contract = %id, version = c.version, "cancellation not above what this node accepted; ignored");
        return Vec::new();
    }
    vec![Action::Tombstone {
        id: id.to_string(),
        cancel: cancel.clone(),
    }]
}

/// The journal change of [`Action::Cancel`], made before the teardown: the contract
/// is gone from the journal, its version is the highest accepted, and its volumes are
/// doomed (a crash before they are removed leaves them to the next start's orphan
/// collection, which removes doomed volumes instead of quarantining them).
pub fn journal_cancel(j: &mut JournalData, target: &Owned, version: u64, marker: Digest) {
    j.owned.remove(&target.id);
    j.retired.remove(&target.id);
    j.epochs.remove(&target.id);
    j.members.remove(&target.id);
    j.accepted.insert(target.id.clone(), (version, marker));
    j.doomed.extend(crate::plan::resource_names(
        &target.id,
        &target.deployment,
        crate::plan::Resource::Volume,
    ));
}

/// The journal change of [`Action::Tombstone`]: at most one per owner (the highest
/// version), at most [`MAX_TOMBSTONES`] per id (anyone may sign a cancellation of any
/// id with a key of theirs; the lowest versions go first).
pub fn journal_tombstone(j: &mut JournalData, id: &str, cancel: &SignedCancellation) {
    let c = &cancel.cancellation;
    let ts = j.tombstones.entry(id.to_string()).or_default();
    match ts.iter_mut().find(|t| t.cancellation.owner == c.owner) {
        Some(t) if t.cancellation.version >= c.version => {}
        Some(t) => *t = cancel.clone(),
        None => ts.push(cancel.clone()),
    }
    ts.sort_by_key(|t| std::cmp::Reverse(t.cancellation.version));
    ts.truncate(MAX_TOMBSTONES);
}
