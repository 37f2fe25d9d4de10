//! The notary side of the `zos` tool: publishing, listing, co-signing and cancelling
//! contracts, and resolving blueprints by digest.
//!
//! A contract lives under `nodes/<node>/contracts/<id>` for each of its nodes, with the
//! signatures collected so far: the owner publishes it, stakeholders co-sign it there,
//! and the owner's cancellation finally replaces it. Every record is signed by whoever
//! put it; nodes check that this author is the owner or a stakeholder.

use std::collections::BTreeMap;

use anyhow::{bail, Context};
use zos_contract::verify::Reason;
use zos_contract::{
    Cancellation, ContractRecord, Digest, Limits, PublicKey, SecretKey, SignedBlueprint,
    SignedCancellation, SignedContract, VerifyContext,
};
use zos_notary::{AnyNotary, KeyKind, KeyPrefix, Notary, NotaryKey, Record};

use crate::output::outln;

/// A notary and the runtime its async calls run on (the CLI itself is synchronous).
pub struct Client {
    rt: tokio::runtime::Runtime,
    notary: AnyNotary,
    pub url: String,
}

impl Client {
    pub fn open(url: &str) -> anyhow::Result<Client> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let notary = zos_notary::open(url).with_context(|| format!("opening notary {url}"))?;
        Ok(Client {
            rt,
            notary,
            url: url.to_string(),
        })
    }

    pub fn put(&self, record: &Record) -> anyhow::Result<()> {
        self.rt
            .block_on(self.notary.put(record))
            .with_context(|| format!("writing {} to {}", record.key, self.url))
    }

    pub fn get(&self, key: &NotaryKey) -> anyhow::Result<Option<Record>> {
        self.rt
            .block_on(self.notary.get(key))
            .with_context(|| format!("reading {key} from {}", self.url))
    }

    pub fn list(&self, prefix: &KeyPrefix) -> anyhow::Result<Vec<Record>> {
        self.rt
            .block_on(self.notary.list(prefix))
            .with_context(|| format!("listing {} in {}", prefix.as_str(), self.url))
    }

    /// A signed blueprint by digest, if the notary holds a valid one.
    pub fn blueprint(&self, digest: &Digest) -> Option<SignedBlueprint> {
        self.rt.block_on(zos_notary::blueprint(
            &self.notary,
            digest,
            &Limits::default(),
        ))
    }

    /// Every contract record for contract `id`, on `node` or on any node.
    pub fn contract_records(
        &self,
        id: &str,
        node: Option<&PublicKey>,
    ) -> anyhow::Result<Vec<(PublicKey, ContractRecord)>> {
        let records = match node {
            Some(node) => self.list(&KeyPrefix::node_contracts(node))?,
            None => self.list(&KeyPrefix::all())?,
        };
        let mut out = Vec::new();
        for record in records {
            let Ok(KeyKind::Contract { node, contract_id }) = record.notary_key().map(|k| k.kind())
            else {
                continue;
            };
            if contract_id != id {
                continue;
            }
            let parsed = ContractRecord::from_value(&record.body, &Limits::default())
                .with_context(|| format!("{} holds no valid contract record", record.key))?;
            out.push((node, parsed));
        }
        Ok(out)
    }
}

/// A blueprint resolver for verification: from the notary when one is given.
pub fn blueprint_resolver(
    notary: Option<&str>,
) -> anyhow::Result<impl Fn(&Digest) -> Option<SignedBlueprint>> {
    let client = notary.map(Client::open).transpose()?;
    Ok(move |digest: &Digest| client.as_ref().and_then(|c| c.blueprint(digest)))
}

/// Reasons that only mean "not everyone has signed yet": a contract with only these may
/// be published, and stakeholders co-sign it in the notary.
fn awaiting_signatures(reason: &Reason) -> bool {
    matches!(
        reason,
        Reason::RequiredSignerMissing { .. } | Reason::ThresholdNotMet { .. }
    )
}

/// Publishes `doc` under every node it names, or a placement contract under its farm
/// (and its embedded blueprint), refusing a contract that could never deploy and a
/// version that does not supersede the notary's.
pub fn publish(client: &Client, doc: &SignedContract, key: &SecretKey) -> anyhow::Result<()> {
    let c = &doc.contract;
    let author = key.public();
    if author != c.owner && !c.stakeholders.iter().any(|s| s.key == author) {
        bail!(
            "{author} is neither the owner nor a stakeholder of {}: it cannot publish it",
            c.id
        );
    }
    let resolver = |d: &Digest| client.blueprint(d);
    let mut ctx = VerifyContext::offline(crate::contract::now());
    ctx.resolve_blueprint = &resolver;
    let v = zos_contract::verify(doc, &ctx);
    let blocking: Vec<&Reason> = v
        .reasons
        .iter()
        .filter(|r| !awaiting_signatures(r))
        .collect();
    if !blocking.is_empty() {
        let list: Vec<String> = blocking
            .iter()
            .map(|r| format!("  - [{}] {r}", r.code()))
            .collect();
        bail!(
            "contract {} would be refused by its nodes:\n{}",
            c.id,
            list.join("\n")
        );
    }
    // Where it goes: under each node it names, or under its farm for its orchestrator.
    let targets: Vec<(NotaryKey, String)> = match &doc.placement {
        Some(p) => vec![(
            NotaryKey::placement_contract(&p.farm, &c.id)?,
            format!("farm {}", p.farm),
        )],
        None => c
            .nodes
            .iter()
            .map(|node| Ok((NotaryKey::contract(node, &c.id)?, format!("node {node}"))))
            .collect::<anyhow::Result<_>>()?,
    };
    // Replays are refused here already (and again by every node).
    for (nkey, whose) in &targets {
        if let Some(existing) = client.get(nkey)? {
            let existing = ContractRecord::from_value(&existing.body, &Limits::default())
                .with_context(|| format!("{nkey} holds no valid contract record"))?;
            let same = matches!(&existing, ContractRecord::Contract(e) if e.digest == doc.digest);
            let what = match &existing {
                ContractRecord::Contract(_) => "holds version",
                ContractRecord::Cancellation(_) => "was cancelled at version",
            };
            if !same && existing.version() >= c.version {
                bail!(
                    "replay: {whose} {what} {} of {}; publish version {} or above",
                    existing.version(),
                    c.id,
                    existing.version() + 1
                );
            }
        }
    }
    if let Some(Ok(bp)) = doc.embedded_blueprint(&Limits::default()) {
        client.put(&Record::sign(
            &NotaryKey::blueprint(&bp.digest),
            bp.to_value(),
            key,
        )?)?;
    }
    for (nkey, _) in &targets {
        client.put(&Record::sign(nkey, doc.to_value(), key)?)?;
    }
    let state = match (v.reasons.is_empty(), &doc.placement) {
        (true, None) => "ready to deploy".to_string(),
        (true, Some(_)) => "ready to place".to_string(),
        (false, _) => format!(
            "waiting for signatures: weight {}/{}",
            v.weight, v.threshold
        ),
    };
    match &doc.placement {
        Some(p) => outln!(
            "published {} version {} to farm {} in {} ({state}): its orchestrator {} places {} replica(s)",
            c.id,
            c.version,
            p.farm,
            client.url,
            p.orchestrator,
            p.replicas
        )?,
        None => outln!(
            "published {} version {} to {} node(s) in {} ({state})",
            c.id,
            c.version,
            c.nodes.len(),
            client.url
        )?,
    }
    Ok(())
}

/// Adds `key`'s signature to contract `id` wherever the notary holds it.
pub fn cosign(
    client: &Client,
    id: &str,
    node: Option<&PublicKey>,
    key: &SecretKey,
) -> anyhow::Result<()> {
    let records = client.contract_records(id, node)?;
    if records.is_empty() {
        bail!("no contract {id:?} in {}", client.url);
    }
    for (node, record) in records {
        let ContractRecord::Contract(mut doc) = record else {
            bail!("contract {id} was cancelled on node {node}");
        };
        doc.sign(key)?;
        let nkey = NotaryKey::contract(&node, id)?;
        client.put(&Record::sign(&nkey, doc.to_value(), key)?)?;
        outln!(
            "signed {id} version {} on node {node} as {}",
            doc.contract.version,
            key.public()
        )?;
    }
    Ok(())
}

/// Replaces contract `id` with the owner's cancellation on every node that holds it.
pub fn cancel(
    client: &Client,
    id: &str,
    node: Option<&PublicKey>,
    farm: Option<&str>,
    key: &SecretKey,
) -> anyhow::Result<()> {
    // Where the contract is held: a placement contract at its farm's key, which its
    // replicas' nodes follow; else at each node's key.
    let mut held: Vec<(NotaryKey, String, ContractRecord)> = Vec::new();
    match farm {
        Some(farm) => {
            let fkey = NotaryKey::placement_contract(farm, id)?;
            if let Some(record) = client.get(&fkey)? {
                let parsed = ContractRecord::from_value(&record.body, &Limits::default())
                    .with_context(|| format!("{fkey} holds no valid contract record"))?;
                held.push((fkey, format!("farm {farm}"), parsed));
            }
        }
        None => {
            for (node, parsed) in client.contract_records(id, node)? {
                held.push((
                    NotaryKey::contract(&node, id)?,
                    format!("node {node}"),
                    parsed,
                ));
            }
        }
    }
    if held.is_empty() {
        bail!("no contract {id:?} in {}", client.url);
    }
    for (nkey, place, record) in held {
        let doc = match record {
            ContractRecord::Contract(doc) => doc,
            ContractRecord::Cancellation(c) => {
                outln!(
                    "{id} is already cancelled on {place} (version {})",
                    c.cancellation.version
                )?;
                continue;
            }
        };
        if doc.contract.owner != key.public() {
            bail!("only the owner {} can cancel {id}", doc.contract.owner);
        }
        let cancellation = SignedCancellation::sign(
            Cancellation {
                id: id.to_string(),
                version: doc.contract.version + 1,
                owner: key.public(),
            },
            key,
        )?;
        let body = serde_json::to_value(&cancellation)?;
        client.put(&Record::sign(&nkey, body, key)?)?;
        outln!(
            "cancelled {id} (version {}) on {place}",
            doc.contract.version
        )?;
    }
    Ok(())
}

/// One row of `zos contract list`.
#[derive(Debug, serde::Serialize)]
pub struct Listing {
    pub id: String,
    pub version: u64,
    pub state: String,
    pub weight: Option<(u64, u64)>,
    pub reasons: Vec<Reason>,
    pub author: PublicKey,
    pub signed_at: u64,
    /// The node's own status record, when it has published one.
    pub node_status: Option<serde_json::Value>,
}

/// The contracts the notary holds for `node`, each checked as that node would.
pub fn list(client: &Client, node: &PublicKey) -> anyhow::Result<Vec<Listing>> {
    let statuses: BTreeMap<String, serde_json::Value> = client
        .list(&KeyPrefix::node_status(node))?
        .into_iter()
        .filter_map(|r| match r.notary_key().map(|k| k.kind()) {
            Ok(KeyKind::Status { contract_id, .. }) => Some((contract_id, r.body)),
            _ => None,
        })
        .collect();
    let resolver = |d: &Digest| client.blueprint(d);
    let mut rows = Vec::new();
    for record in client.list(&KeyPrefix::node_contracts(node))? {
        let Ok(KeyKind::Contract { contract_id, .. }) = record.notary_key().map(|k| k.kind())
        else {
            continue;
        };
        let node_status = statuses.get(&contract_id).cloned();
        let row = match ContractRecord::from_value(&record.body, &Limits::default()) {
            Err(e) => Listing {
                id: contract_id,
                version: 0,
                state: "unreadable".into(),
                weight: None,
                reasons: vec![e.into()],
                author: record.author,
                signed_at: record.signed_at,
                node_status,
            },
            Ok(ContractRecord::Cancellation(c)) => Listing {
                id: contract_id,
                version: c.cancellation.version,
                state: "cancelled".into(),
                weight: None,
                reasons: vec![],
                author: record.author,
                signed_at: record.signed_at,
                node_status,
            },
            Ok(ContractRecord::Contract(doc)) => {
                let mut ctx = VerifyContext::offline(crate::contract::now());
                ctx.node = Some(*node);
                ctx.resolve_blueprint = &resolver;
                let v = zos_contract::verify(&doc, &ctx);
                let state = if v.is_ok() {
                    "ready"
                } else if v.reasons.iter().all(awaiting_signatures) {
                    "waiting for signatures"
                } else {
                    "refused"
                };
                Listing {
                    id: contract_id,
                    version: doc.contract.version,
                    state: state.into(),
                    weight: Some((v.weight, v.threshold)),
                    reasons: v.reasons,
                    author: record.author,
                    signed_at: record.signed_at,
                    node_status,
                }
            }
        };
        rows.push(row);
    }
    Ok(rows)
}
