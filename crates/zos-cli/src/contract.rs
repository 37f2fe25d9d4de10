//! `zos contract`: instantiate, sign, verify, publish, list and cancel contracts.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Subcommand;
use zos_contract::verify::{parse_param_args, Role};
use zos_contract::{
    BlueprintRef, Constraints, Contract, Failover, FailoverMode, Limits, Placement, PublicKey,
    SecretKey, SignedContract, Stakeholder, Verification, VerifyContext,
};

use crate::output::{note, outln, write_atomic, write_new_or_stdout, Format};

#[derive(Debug, Subcommand)]
pub enum ContractCmd {
    /// Instantiate a signed blueprint into an unsigned contract.
    ///
    /// Parameters are checked against the blueprint's bounds here already, so a
    /// contract that could never deploy is not written.
    ///
    /// The contract names its nodes (--node), or carries a placement: a farm, a
    /// number of replicas and the orchestrator key that chooses the farm's nodes
    /// (--farm, --replicas, --orchestrator; docs/grid.md).
    ///
    /// Example: zos contract new --blueprint crm.blueprint.json --param users=100
    ///   --owner <owner_pub> --node <node_pub> --stakeholder <legal_pub>:2:required
    ///   --stakeholder <budget_pub>:1 --threshold 3 -o c.json
    ///
    /// Example: zos contract new --blueprint crm.blueprint.json --owner <owner_pub>
    ///   --farm 7 --replicas 2 --orchestrator <bot_pub> --failover move --after-s 60
    ///   --min-ssd-gib 10 -o c.json
    New(Box<NewArgs>),
    /// Sign a contract as its owner or as a stakeholder: a file in place, or, with
    /// --notary, the published contract with that id (co-signing after publication).
    ///
    /// Examples: zos contract sign c.json --key owner.key
    ///           zos contract sign crm-acme --key legal.key --notary dir:///srv/notary
    Sign {
        /// A contract file, or a contract id with --notary.
        target: String,
        /// The signer's secret key.
        #[arg(long)]
        key: PathBuf,
        /// Sign the contract published in this notary instead of a file.
        #[arg(long, env = "ZOS_NOTARY")]
        notary: Option<String>,
        /// With --notary: only on this node.
        #[arg(long)]
        node: Option<PublicKey>,
    },
    /// Verify a contract: signatures, weights, parameters, blueprint, validity.
    ///
    /// Prints the digest, the nodes or the placement, each signer, the signed weight,
    /// signature entries that were not counted (warnings), and OK or every reason for
    /// refusal. Exits with status 1 when the contract would be refused. A placement
    /// contract verified with --node is `unassigned`: only its orchestrator's
    /// assignment puts it on a node.
    ///
    /// Replay is checked against --running-version, or, with --notary and --node, the
    /// version that node reports running (its signed status record for this id); with
    /// neither, it is not checked.
    ///
    /// Example: zos contract verify c.json --node <node_pub> --running-version 3
    Verify {
        file: PathBuf,
        /// Verify as this node would (checks the contract is addressed to it).
        #[arg(long)]
        node: Option<PublicKey>,
        /// The version the node runs for this id: a version at or below it is a replay.
        #[arg(long, value_name = "N")]
        running_version: Option<u64>,
        /// Notary to resolve a blueprint given by digest.
        #[arg(long, env = "ZOS_NOTARY")]
        notary: Option<String>,
        /// Accept only blueprints signed by this expert (repeatable), as a node with
        /// an author policy would.
        #[arg(long = "trusted-author", value_name = "PUB")]
        trusted_authors: Vec<PublicKey>,
        #[command(flatten)]
        format: Format,
    },
    /// Publish a contract (and its embedded blueprint) to a notary, for each of its nodes;
    /// a placement contract under its farm (grid/<farm>/contracts/<id>), for its
    /// orchestrator to place.
    ///
    /// The record is signed with --key (the owner or a stakeholder). A contract that its
    /// nodes would refuse for any reason other than missing stakeholder signatures is
    /// not published, nor is a version that does not supersede the notary's (replay).
    ///
    /// Example: zos contract publish c.json --key owner.key --notary dir:///srv/notary
    Publish {
        file: PathBuf,
        /// The publisher's secret key (owner or stakeholder).
        #[arg(long)]
        key: PathBuf,
        /// dir:///path or etcd://host:port[/prefix].
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
    },
    /// List the contracts a notary holds for a node, each checked as the node would.
    ///
    /// Example: zos contract list --notary etcd://127.0.0.1:2379 --node <node_pub> --json
    List {
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
        #[arg(long)]
        node: PublicKey,
        #[command(flatten)]
        format: Format,
    },
    /// Show the status a node reports for a contract: its signed status record (state,
    /// message, refusal reasons, each workload's state, address, restarts and last log
    /// lines). The record is verified: only the node itself can have written it.
    ///
    /// With --farm, for a placement contract: the orchestrator's placement record
    /// instead (where each replica runs, at which epoch, its state, refusals and the last
    /// moves), verified as signed by the contract's orchestrator.
    ///
    /// Example: zos contract status crm-acme --node <node_pub> --notary dir:///srv/notary
    ///          zos contract status crm-grid --farm 7 --notary etcd://10.0.0.5:2379/zos
    Status {
        id: String,
        #[arg(long, required_unless_present = "farm", conflicts_with = "farm")]
        node: Option<PublicKey>,
        /// The farm of a placement contract: show its placement record.
        #[arg(long)]
        farm: Option<String>,
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
        #[command(flatten)]
        format: Format,
    },
    /// Show a contract's workload logs: the lines its node publishes (when the
    /// deployment sets `publish_logs`), and where its lines are shipped (when the
    /// deployment names a `logs` destination).
    ///
    /// Example: zos contract logs crm-acme --node <hex> --notary dir:///srv/notary -f
    Logs {
        id: String,
        #[arg(long)]
        node: PublicKey,
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
        /// Keep printing new lines as the node publishes them (every 2 s).
        #[arg(short, long)]
        follow: bool,
        #[command(flatten)]
        format: Format,
    },
    /// Cancel a contract: the owner's signed cancellation replaces it on its nodes.
    ///
    /// A placement contract is cancelled at its farm's key (--farm): every node that
    /// runs one of its replicas removes it.
    ///
    /// Example: zos contract cancel crm-acme --key owner.key --notary dir:///srv/notary
    ///          zos contract cancel crm-grid --farm 7 --key owner.key --notary dir:///srv/notary
    Cancel {
        id: String,
        /// The owner's secret key.
        #[arg(long)]
        key: PathBuf,
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
        /// Only on this node (default: every node that holds it).
        #[arg(long, conflicts_with = "farm")]
        node: Option<PublicKey>,
        /// The farm of a placement contract.
        #[arg(long)]
        farm: Option<String>,
    },
}

// The arguments of `zos contract new` (its help is the variant's doc comment).
#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The signed blueprint (from `zos blueprint sign`).
    #[arg(long)]
    pub blueprint: PathBuf,
    /// A parameter value, name=value (repeatable). Integers and true/false are typed.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// The owner's public key (hex). The owner must sign.
    #[arg(long)]
    pub owner: PublicKey,
    /// A node that runs the contract (repeatable). Or a placement: --farm and the rest.
    #[arg(
        long = "node",
        required_unless_present = "farm",
        conflicts_with = "farm"
    )]
    pub nodes: Vec<PublicKey>,
    /// Placement: the farm whose nodes run the replicas.
    #[arg(long, requires_all = ["replicas", "orchestrator"])]
    pub farm: Option<String>,
    /// Placement: how many replicas, each on a distinct node (1-64).
    #[arg(long, requires = "farm")]
    pub replicas: Option<u64>,
    /// Placement: the orchestrator's public key, which assigns replicas to nodes.
    #[arg(long, requires = "farm")]
    pub orchestrator: Option<PublicKey>,
    /// Placement: when a replica's node is lost, move the replica or only report it.
    #[arg(
        long,
        requires = "farm",
        value_name = "move|stay",
        default_value = "move"
    )]
    pub failover: String,
    /// Placement: seconds without the node's liveness before it counts as lost
    /// (10-86400); the node stops `move` replicas itself at half of it.
    #[arg(long, requires = "farm", value_name = "N", default_value_t = 60)]
    pub after_s: u64,
    /// Placement: only nodes with this much SSD free (GiB).
    #[arg(long, requires = "farm", value_name = "N")]
    pub min_ssd_gib: Option<u64>,
    /// Placement: only nodes with this much memory free (MiB).
    #[arg(long, requires = "farm", value_name = "N")]
    pub min_memory_mib: Option<u64>,
    /// A co-signer: PUBKEY:WEIGHT or PUBKEY:WEIGHT:required (repeatable).
    #[arg(long = "stakeholder", value_name = "PUB:WEIGHT[:required]")]
    pub stakeholders: Vec<String>,
    /// Stakeholder weight that must sign (default: 0, or the total weight).
    #[arg(long)]
    pub threshold: Option<u64>,
    /// Contract id, 1-64 of [a-z0-9-] (default: blueprint name and a random suffix).
    #[arg(long)]
    pub id: Option<String>,
    /// Version; a node only accepts a version above the one it runs.
    #[arg(long, default_value_t = 1)]
    pub version: u64,
    /// Not valid before: unix seconds, or a delay from now like 10m, 2h, 1d.
    #[arg(long, value_parser = parse_time)]
    pub not_before: Option<u64>,
    /// Expiry: unix seconds, or a duration from now like 30d, 12h, 90m.
    #[arg(long, value_parser = parse_time)]
    pub expires: Option<u64>,
    /// Refer to the blueprint by digest (resolved in the notary) instead of embedding it.
    #[arg(long)]
    pub by_digest: bool,
    /// Where to write the contract; stdout if absent.
    #[arg(long, short)]
    pub out: Option<PathBuf>,
}

pub fn run(cmd: ContractCmd) -> anyhow::Result<()> {
    match cmd {
        ContractCmd::New(args) => new(*args),
        ContractCmd::Sign {
            target,
            key,
            notary,
            node,
        } => sign(&target, &key, notary.as_deref(), node.as_ref()),
        ContractCmd::Verify {
            file,
            node,
            running_version,
            notary,
            trusted_authors,
            format,
        } => verify(
            &file,
            node,
            running_version,
            notary.as_deref(),
            trusted_authors,
            &format,
        ),
        ContractCmd::Publish { file, key, notary } => {
            let doc = read(&file)?;
            let key = SecretKey::load(&key)?;
            let client = crate::notary::Client::open(&notary)?;
            crate::notary::publish(&client, &doc, &key)
        }
        ContractCmd::List {
            notary,
            node,
            format,
        } => list(&notary, &node, &format),
        ContractCmd::Status {
            id,
            node,
            farm,
            notary,
            format,
        } => match (node, farm) {
            (Some(node), _) => status(&id, &node, &notary, &format),
            (None, Some(farm)) => placement_status(&id, &farm, &notary, &format),
            (None, None) => bail!("--node or --farm is required"),
        },
        ContractCmd::Logs {
            id,
            node,
            notary,
            follow,
            format,
        } => logs(&id, &node, &notary, follow, &format),
        ContractCmd::Cancel {
            id,
            key,
            notary,
            node,
            farm,
        } => {
            let key = SecretKey::load(&key)?;
            let client = crate::notary::Client::open(&notary)?;
            crate::notary::cancel(&client, &id, node.as_ref(), farm.as_deref(), &key)
        }
    }
}

/// `zos contract new`: the parameters checked against the blueprint's bounds, then the
/// unsigned contract written.
fn new(a: NewArgs) -> anyhow::Result<()> {
    let signed_bp = crate::blueprint::read_signed(&a.blueprint)?;
    let params = parse_param_args(&a.params)?;
    if let Err(errors) = zos_contract::params::resolve(&signed_bp.blueprint.params, &params) {
        let list: Vec<String> = errors.iter().map(|e| format!("  - {e}")).collect();
        bail!("parameters refused by the blueprint:\n{}", list.join("\n"));
    }
    let stakeholders = a
        .stakeholders
        .iter()
        .map(|s| parse_stakeholder(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let total: u64 = stakeholders.iter().map(|s| s.weight).sum();
    let placement = placement_of(&a)?;
    let contract = Contract {
        id: a
            .id
            .unwrap_or_else(|| default_id(&signed_bp.blueprint.name)),
        version: a.version,
        owner: a.owner,
        nodes: a.nodes,
        blueprint: if a.by_digest {
            BlueprintRef::Sha256(signed_bp.digest)
        } else {
            BlueprintRef::Embedded(signed_bp.to_value())
        },
        params,
        stakeholders,
        threshold: a.threshold.unwrap_or(total),
        not_before: a.not_before,
        expires: a.expires,
    };
    let doc = match placement {
        Some(p) => SignedContract::placed(contract, p)?,
        None => SignedContract::new(contract)?,
    };
    write_new_or_stdout(a.out.as_deref(), &doc.to_pretty())?;
    note!(
        "contract {} version {}\ndigest {}\nnext: each signer runs `zos contract sign FILE --key KEY`",
        doc.contract.id, doc.contract.version, doc.digest
    );
    Ok(())
}

/// The placement `--farm` and its companions describe, checked as a node would (a
/// contract whose placement every node refuses is not written); `None` without --farm.
fn placement_of(a: &NewArgs) -> anyhow::Result<Option<Placement>> {
    let (Some(farm), Some(replicas), Some(orchestrator)) =
        (a.farm.clone(), a.replicas, a.orchestrator)
    else {
        return Ok(None);
    };
    let mode: FailoverMode = a.failover.parse()?;
    let constraints =
        (a.min_ssd_gib.is_some() || a.min_memory_mib.is_some()).then_some(Constraints {
            min_ssd_gib: a.min_ssd_gib,
            min_memory_mib: a.min_memory_mib,
        });
    let placement = Placement {
        farm,
        replicas,
        orchestrator,
        failover: Failover {
            mode,
            after_s: a.after_s,
        },
        constraints,
    };
    let errors = placement.check();
    if !errors.is_empty() {
        let list: Vec<String> = errors
            .iter()
            .map(|e| format!("  - {}: {e}", e.path()))
            .collect();
        bail!("placement refused:\n{}", list.join("\n"));
    }
    Ok(Some(placement))
}

/// `zos contract sign`: a file in place, or the contract published in a notary.
fn sign(
    target: &str,
    key: &Path,
    notary: Option<&str>,
    node: Option<&PublicKey>,
) -> anyhow::Result<()> {
    let key = SecretKey::load(key)?;
    if let Some(url) = notary {
        let client = crate::notary::Client::open(url)?;
        return crate::notary::cosign(&client, target, node, &key);
    }
    let file = PathBuf::from(target);
    let mut doc = read(&file)?;
    doc.sign(&key)?;
    write_atomic(&file, &doc.to_pretty())?;
    let role = if key.public() == doc.contract.owner {
        "owner"
    } else {
        "stakeholder"
    };
    note!("signed {} as {role} {}", doc.contract.id, key.public());
    Ok(())
}

/// `zos contract verify`: as a node would, replay checked against the version given
/// or the one the node reports; exits with status 1 when the contract is refused.
fn verify(
    file: &Path,
    node: Option<PublicKey>,
    running_version: Option<u64>,
    notary: Option<&str>,
    trusted_authors: Vec<PublicKey>,
    format: &Format,
) -> anyhow::Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let resolver = crate::notary::blueprint_resolver(notary)?;
    let trusted: std::collections::BTreeSet<PublicKey> = trusted_authors.into_iter().collect();
    let running = match (running_version, notary, node) {
        (Some(n), _, _) => Some(n),
        (None, Some(url), Some(node)) => reported_version(&bytes, url, &node)?,
        _ => None,
    };
    let mut ctx = VerifyContext::offline(now());
    ctx.node = node;
    // Only the version is known, not the running document's digest: a document
    // at the running version is a replay here even if it is the one running.
    ctx.accepted = running.map(|v| (v, zos_contract::Digest([0; 32])));
    ctx.resolve_blueprint = &resolver;
    if !trusted.is_empty() {
        ctx.trusted_authors = Some(&trusted);
    }
    // Unreadable documents are refusals like any other: same report, same codes.
    let v = zos_contract::verify_bytes(&bytes, &ctx);
    // What the document addresses: its nodes or its placement (when it reads at all).
    let doc = SignedContract::from_bytes(&bytes, &Limits::default()).ok();
    let printed = if format.json {
        let mut json = serde_json::to_value(&v)?;
        json["ok"] = v.is_ok().into();
        json["running_version"] = running.into();
        if let Some(doc) = &doc {
            json["nodes"] = serde_json::to_value(&doc.contract.nodes)?;
            json["placement"] = serde_json::to_value(&doc.placement)?;
        }
        crate::output::json(&json)
    } else {
        running
            .map_or(Ok(()), |n| {
                outln!("running   version {n} (replay checked against it)")
            })
            .and_then(|()| print_verification(&v, doc.as_ref()))
    };
    // The verdict decides the exit status, even when the reader stopped early.
    if !v.is_ok() {
        if let Err(e) = &printed {
            if !crate::output::is_stdout_closed(e) {
                note!("error: {e:#}");
            }
        }
        std::process::exit(1);
    }
    printed
}

/// `zos contract list`: the node's contracts in the notary, each checked as it would.
fn list(notary: &str, node: &PublicKey, format: &Format) -> anyhow::Result<()> {
    let client = crate::notary::Client::open(notary)?;
    let rows = crate::notary::list(&client, node)?;
    if format.json {
        return crate::output::json(&rows);
    }
    if rows.is_empty() {
        outln!("no contracts for node {node} in {notary}")?;
        return Ok(());
    }
    outln!(
        "{:<24} {:>7} {:>8}  {:<24} node status",
        "ID",
        "VERSION",
        "WEIGHT",
        "STATE"
    )?;
    for r in rows {
        let weight = r
            .weight
            .map(|(h, n)| format!("{h}/{n}"))
            .unwrap_or_default();
        let status = r
            .node_status
            .as_ref()
            .and_then(|s| s.get("state"))
            .and_then(|s| s.as_str())
            .unwrap_or("-");
        outln!(
            "{:<24} {:>7} {:>8}  {:<24} {status}",
            r.id,
            r.version,
            weight,
            r.state
        )?;
        for reason in &r.reasons {
            outln!("{:<24}   - [{}] {reason}", "", reason.code())?;
        }
    }
    Ok(())
}

/// `zos contract status`: the node's signed status record for the contract.
fn status(id: &str, node: &PublicKey, notary: &str, format: &Format) -> anyhow::Result<()> {
    let client = crate::notary::Client::open(notary)?;
    let key = zos_notary::NotaryKey::status(node, id)
        .map_err(|e| anyhow::anyhow!("contract id {id:?}: {e}"))?;
    let Some(record) = client.get(&key)? else {
        bail!("node {node} has published no status for {id} in {notary} (yet)");
    };
    if format.json {
        let mut body = record.body.clone();
        body["signed_at"] = record.signed_at.into();
        crate::output::json(&body)
    } else {
        print_status(&record.body, record.signed_at)
    }
}

/// `zos contract status --farm`: the orchestrator's placement record of a placement
/// contract, checked against the orchestrator the contract names.
fn placement_status(id: &str, farm: &str, notary: &str, format: &Format) -> anyhow::Result<()> {
    let client = crate::notary::Client::open(notary)?;
    let bad = |e: zos_notary::KeyError| anyhow::anyhow!("farm {farm:?}, contract {id:?}: {e}");
    let Some(contract) =
        client.get(&zos_notary::NotaryKey::placement_contract(farm, id).map_err(bad)?)?
    else {
        bail!("farm {farm} holds no placement contract {id} in {notary}");
    };
    let orchestrator =
        match zos_contract::ContractRecord::from_value(&contract.body, &Limits::default()) {
            Ok(zos_contract::ContractRecord::Contract(doc)) => match &doc.placement {
                Some(p) => p.orchestrator,
                None => bail!("{id} in farm {farm} has no placement"),
            },
            Ok(zos_contract::ContractRecord::Cancellation(_)) => {
                bail!("{id} in farm {farm} is cancelled")
            }
            Err(e) => bail!("{id} in farm {farm}: {e}"),
        };
    let Some(record) = client.get(&zos_notary::NotaryKey::placement(farm, id).map_err(bad)?)?
    else {
        bail!(
            "orchestrator {orchestrator} has not placed {id} yet (no placement record in {notary})"
        );
    };
    if record.author != orchestrator {
        bail!(
            "the placement record of {id} is signed by {}, not by its orchestrator {orchestrator}",
            record.author
        );
    }
    let p: zos_grid::PlacementRecord = serde_json::from_value(record.body.clone())
        .map_err(|e| anyhow::anyhow!("the placement record of {id}: {e}"))?;
    // Each placed replica's mesh section, from its node's own signed status record.
    let meshes: Vec<Option<serde_json::Value>> = p
        .replicas
        .iter()
        .map(|r| r.node.and_then(|n| replica_mesh(&client, id, &n)))
        .collect();
    if format.json {
        let mut body = record.body.clone();
        body["signed_at"] = record.signed_at.into();
        body["orchestrator"] = serde_json::json!(orchestrator);
        if let Some(replicas) = body["replicas"].as_array_mut() {
            for (r, mesh) in replicas.iter_mut().zip(&meshes) {
                if let (Some(r), Some(mesh)) = (r.as_object_mut(), mesh) {
                    r.insert("mesh".into(), mesh.clone());
                }
            }
        }
        return crate::output::json(&body);
    }
    outln!(
        "{id} version {} in farm {farm}, placed by {orchestrator}",
        p.version
    )?;
    for (i, r) in p.replicas.iter().enumerate() {
        let node = r.node.map_or("-".to_string(), |n| n.to_string());
        let state = serde_json::to_value(r.state).unwrap_or_default();
        outln!(
            "  replica {}  {}  epoch {}  on {node}{}",
            r.replica,
            state.as_str().unwrap_or("?"),
            r.epoch,
            if r.detail.is_empty() {
                String::new()
            } else {
                format!("  ({})", r.detail)
            }
        )?;
        for refusal in &r.refused_on {
            outln!("    refused by {}: {}", refusal.node, refusal.reason)?;
        }
        if let Some(h) = r.handover_text() {
            outln!("    {h}")?;
        }
        if let Some(Some(mesh)) = meshes.get(i) {
            for line in mesh_lines(&serde_json::json!({ "mesh": mesh }), "    ") {
                outln!("{line}")?;
            }
        }
    }
    if !p.moves.is_empty() {
        outln!("  moves (oldest first):")?;
        for m in &p.moves {
            let why = serde_json::to_value(&m.reason).unwrap_or_default();
            outln!(
                "    {}  replica {} -> {} epoch {}  {}",
                zos_status::render::utc(m.at),
                m.replica,
                m.to,
                m.epoch,
                why["why"].as_str().unwrap_or("?")
            )?;
        }
    }
    Ok(())
}

/// The `mesh` section of the status record `node` signed for contract `id`: `None` when
/// it has none (or no record yet). A record not signed by that node is not believed.
fn replica_mesh(
    client: &crate::notary::Client,
    id: &str,
    node: &PublicKey,
) -> Option<serde_json::Value> {
    let key = zos_notary::NotaryKey::status(node, id).ok()?;
    match client.get(&key) {
        Ok(Some(record)) if record.author == *node => record.body.get("mesh").cloned(),
        Ok(Some(_)) => {
            note!("warning: the status record of {id} on {node} is not signed by that node");
            None
        }
        Ok(None) => None,
        Err(e) => {
            note!("warning: no status of {id} from node {node}: {e:#}");
            None
        }
    }
}

/// `zos contract logs`: the log tails in the node's signed status record, and the
/// destination the contract's deployment ships its lines to.
fn logs(
    id: &str,
    node: &PublicKey,
    notary: &str,
    follow: bool,
    format: &Format,
) -> anyhow::Result<()> {
    let client = crate::notary::Client::open(notary)?;
    let skey = zos_notary::NotaryKey::status(node, id)
        .map_err(|e| anyhow::anyhow!("contract id {id:?}: {e}"))?;
    let tails = |client: &crate::notary::Client| -> anyhow::Result<Vec<(String, Vec<String>)>> {
        let Some(record) = client.get(&skey)? else {
            return Ok(Vec::new());
        };
        if record.author != *node {
            bail!("the status record of {id} is not signed by node {node}");
        }
        Ok(record.body["workloads"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, w)| {
                let lines = w["log_tail"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|l| l.as_str().map(str::to_owned))
                    .collect();
                (name.clone(), lines)
            })
            .collect())
    };
    let destination = shipped_to(&client, id, node);
    let first = tails(&client)?;
    if format.json {
        let workloads: serde_json::Map<String, serde_json::Value> = first
            .iter()
            .map(|(n, l)| (n.clone(), serde_json::json!(l)))
            .collect();
        return crate::output::json(&serde_json::json!({
            "contract": id,
            "node": node.to_string(),
            "workloads": workloads,
            "destination": destination,
        }));
    }
    match &destination {
        Some(url) => note!("{id}: its workloads' lines are shipped to {url} (deployment logs)"),
        None => note!("{id}: its deployment names no log destination"),
    }
    if first.iter().all(|(_, l)| l.is_empty()) {
        note!(
            "node {node} publishes no lines of {id}: the deployment does not set \
             publish_logs, or nothing was written yet"
        );
    }
    let mut shown: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut print = |tails: Vec<(String, Vec<String>)>| -> anyhow::Result<()> {
        for (name, lines) in tails {
            let old = shown.entry(name.clone()).or_default();
            // The tail is a window: print what follows the longest overlap with the
            // window shown before.
            let skip = (0..=old.len().min(lines.len()))
                .rev()
                .find(|&k| old[old.len() - k..] == lines[..k])
                .unwrap_or(0);
            for line in &lines[skip..] {
                outln!("{name} | {line}")?;
            }
            *old = lines;
        }
        Ok(())
    };
    print(first)?;
    if !follow {
        return Ok(());
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(2));
        print(tails(&client)?)?;
    }
}

/// The `logs` destination of the contract's deployment on `node`, if its record there
/// verifies (its blueprint resolved from the notary).
fn shipped_to(client: &crate::notary::Client, id: &str, node: &PublicKey) -> Option<String> {
    let key = zos_notary::NotaryKey::contract(node, id).ok()?;
    let record = client.get(&key).ok()??;
    let bytes = serde_json::to_vec(&record.body).ok()?;
    let resolve = |d: &zos_contract::Digest| client.blueprint(d);
    let mut ctx = VerifyContext::offline(now());
    ctx.node = Some(*node);
    ctx.resolve_blueprint = &resolve;
    let v = zos_contract::verify_bytes(&bytes, &ctx);
    v.is_ok()
        .then_some(v.deployment)
        .flatten()
        .and_then(|d| d.logs)
        .map(|l| l.url)
}

/// The version `node` reports running for the contract in `bytes` (its signed status
/// record in the notary; a refusal's version runs nothing). `None` when the document
/// cannot be read (verification reports why) or the node reports none.
fn reported_version(bytes: &[u8], url: &str, node: &PublicKey) -> anyhow::Result<Option<u64>> {
    let Ok(doc) = SignedContract::from_bytes(bytes, &Limits::default()) else {
        return Ok(None);
    };
    let Ok(key) = zos_notary::NotaryKey::status(node, &doc.contract.id) else {
        return Ok(None);
    };
    let client = crate::notary::Client::open(url)?;
    Ok(client
        .get(&key)?
        .filter(|r| r.body["state"] != "refused")
        .and_then(|r| r.body["version"].as_u64()))
}

/// Reads a contract document from a file.
pub fn read(path: &Path) -> anyhow::Result<SignedContract> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    SignedContract::from_bytes(&bytes, &Limits::default())
        .with_context(|| format!("{} is not a contract document", path.display()))
}

/// The verification for a person: the contract, its nodes or placement (`doc`, when
/// the document reads), signers, weight, warnings, then OK or every reason.
pub fn print_verification(v: &Verification, doc: Option<&SignedContract>) -> anyhow::Result<()> {
    let short = |k: &PublicKey| k.to_hex();
    outln!(
        "contract  {} version {}",
        v.id.as_deref().unwrap_or("?"),
        v.version
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into())
    )?;
    if let Some(d) = v.digest {
        outln!("digest    {d}")?;
    }
    if let Some(b) = v.blueprint {
        outln!("blueprint {b}")?;
    }
    if let Some(doc) = doc {
        print_addressing(doc)?;
    }
    for s in &v.signers {
        let role = match s.role {
            Role::Owner => "owner      ".to_string(),
            Role::Stakeholder => format!("weight {:<4}", s.weight),
        };
        outln!(
            "signer    {} {role} {:<8} {}",
            short(&s.key),
            if s.required { "required" } else { "optional" },
            if s.signed { "signed" } else { "not signed" }
        )?;
    }
    outln!("weight    {}/{}", v.weight, v.threshold)?;
    for w in &v.warnings {
        outln!("warning   [{}] {w} (not counted)", w.code())?;
    }
    if v.is_ok() {
        outln!("OK")?;
    } else {
        outln!("REFUSED")?;
        for r in &v.reasons {
            outln!("  - [{}] {r}", r.code())?;
        }
    }
    Ok(())
}

/// A contract's nodes, or its placement, one line each.
pub fn print_addressing(doc: &SignedContract) -> anyhow::Result<()> {
    for n in &doc.contract.nodes {
        outln!("node      {n}")?;
    }
    if let Some(p) = &doc.placement {
        outln!(
            "placement farm {}, {} replica(s), orchestrator {}",
            p.farm,
            p.replicas,
            p.orchestrator
        )?;
        outln!(
            "failover  {} after {} s (a node fences its replicas at {} s)",
            p.failover.mode.as_str(),
            p.failover.after_s,
            p.failover.after_s / 2
        )?;
        if let Some(c) = &p.constraints {
            let mut parts = Vec::new();
            if let Some(n) = c.min_ssd_gib {
                parts.push(format!("SSD >= {n} GiB free"));
            }
            if let Some(n) = c.min_memory_mib {
                parts.push(format!("memory >= {n} MiB free"));
            }
            outln!("requires  {}", parts.join(", "))?;
        }
    }
    Ok(())
}

fn parse_stakeholder(s: &str) -> anyhow::Result<Stakeholder> {
    let mut parts = s.split(':');
    let (Some(key), Some(weight)) = (parts.next(), parts.next()) else {
        bail!("stakeholder {s:?}: expected PUBKEY:WEIGHT[:required]");
    };
    let required = match parts.next() {
        None => false,
        Some("required") => true,
        Some(other) => bail!("stakeholder {s:?}: {other:?} is not 'required'"),
    };
    if parts.next().is_some() {
        bail!("stakeholder {s:?}: expected PUBKEY:WEIGHT[:required]");
    }
    Ok(Stakeholder {
        key: key.parse()?,
        weight: weight
            .parse()
            .with_context(|| format!("stakeholder {s:?}: weight {weight:?} is not a number"))?,
        required,
    })
}

fn default_id(name: &str) -> String {
    let mut suffix = [0u8; 3];
    getrandom::fill(&mut suffix).expect("the OS has a random source");
    let base: String = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(56)
        .collect();
    format!("{base}-{}", hex::encode(suffix))
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix seconds, or a duration from now: `90s`, `10m`, `12h`, `30d`.
fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let (num, unit) = s.split_at(s.len().saturating_sub(1));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected unix seconds or a duration like 30d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    Ok(now() + secs)
}

/// A status record body for a person: state and message, reasons, then each workload.
fn print_status(body: &serde_json::Value, signed_at: u64) -> anyhow::Result<()> {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    outln!("contract  {}", text(&body["contract"]))?;
    if let Some(v) = body["version"].as_u64() {
        outln!("version   {v}")?;
    }
    outln!("state     {}", text(&body["state"]))?;
    outln!("message   {}", text(&body["message"]))?;
    outln!("reported  {signed_at} (unix seconds, signed by the node)")?;
    for r in body["reasons"].as_array().into_iter().flatten() {
        outln!("  - [{}] {}", text(&r["code"]), text(&r["message"]))?;
    }
    for (name, w) in body["workloads"].as_object().into_iter().flatten() {
        let runtime = w["runtime"]
            .as_str()
            .map(|r| format!(", on {r}"))
            .unwrap_or_default();
        outln!(
            "workload  {name}: {}, address {}, restarts {}{runtime}",
            text(&w["state"]),
            text(&w["address"]),
            w["restarts"].as_u64().unwrap_or(0)
        )?;
        for line in w["log_tail"].as_array().into_iter().flatten() {
            outln!("  | {}", text(line))?;
        }
    }
    for line in mesh_lines(body, "") {
        outln!("{line}")?;
    }
    Ok(())
}

/// The status record's mesh section for a person (none when the contract has no network
/// across nodes), each line after `indent`.
fn mesh_lines(body: &serde_json::Value, indent: &str) -> Vec<String> {
    let Some(mesh) = body.get("mesh") else {
        return Vec::new();
    };
    match serde_json::from_value::<Vec<zos_status::mesh::MeshReport>>(mesh.clone()) {
        Ok(mesh) => zos_status::mesh::lines(&mesh, now())
            .into_iter()
            .map(|l| format!("{indent}{l}"))
            .collect(),
        Err(e) => vec![format!("{indent}mesh      (unreadable: {e})")],
    }
}
