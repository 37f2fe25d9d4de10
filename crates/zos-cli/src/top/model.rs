//! What `zos farm top` shows, computed from the notary's records: no terminal here, so
//! that sorting, filtering and the bars are unit-tested.
//!
//! The records come verified from the notary (signature, and for a node's own reports,
//! the node as author); the registry's parsers check them again and a record that does
//! not parse is counted, not shown.

use std::collections::BTreeMap;

use serde_json::Value;
use zos_contract::{ContractRecord, Limits, PublicKey};
use zos_grid::PlacementRecord;
use zos_notary::{KeyKind, NotaryKey, Record};
use zos_registry::{Farm, Heartbeat, Registration};

/// The latest record of every key the dashboard follows (the farm's record and every
/// node's records), as the notary's snapshot and watch deliver them.
#[derive(Debug, Default)]
pub struct Records {
    by_key: BTreeMap<String, Record>,
}

/// True for the records the dashboard shows: farms, registrations, heartbeats, status
/// reports, and the grid's placement contracts and placement records. The rest under
/// `nodes/` (contracts, support requests and their answers, which may carry a bundle)
/// is not kept.
fn shown(record: &Record) -> bool {
    matches!(
        record.notary_key().map(|k| k.kind()),
        Ok(KeyKind::Farm { .. }
            | KeyKind::Registration { .. }
            | KeyKind::Heartbeat { .. }
            | KeyKind::Status { .. }
            | KeyKind::PlacementContract { .. }
            | KeyKind::Placement { .. })
    )
}

impl Records {
    /// Replaces everything with a snapshot (a listing).
    pub fn replace(&mut self, records: Vec<Record>) {
        self.by_key = records
            .into_iter()
            .filter(shown)
            .map(|r| (r.key.clone(), r))
            .collect();
    }

    /// A record put (the latest value of its key).
    pub fn put(&mut self, record: Record) {
        if shown(&record) {
            self.by_key.insert(record.key.clone(), record);
        }
    }

    /// A key deleted (a lease expired, a record removed).
    pub fn delete(&mut self, key: &NotaryKey) {
        self.by_key.remove(key.as_str());
    }

    /// The farm `farm_id` as the records stand.
    pub fn farm_view(&self, farm_id: &str) -> FarmView {
        let mut view = FarmView::default();
        let mut registrations = BTreeMap::new();
        let mut heartbeats = BTreeMap::new();
        let mut statuses: BTreeMap<PublicKey, Vec<ContractRow>> = BTreeMap::new();
        for record in self.by_key.values() {
            let Ok(key) = record.notary_key() else {
                continue; // not kept (see `shown`)
            };
            match key.kind() {
                KeyKind::Farm { farm_id: id } if id == farm_id => match Farm::from_record(record) {
                    Ok(farm) => view.farm = Some(farm),
                    Err(_) => view.skipped += 1,
                },
                KeyKind::Registration { .. } => match Registration::from_record(record) {
                    Ok((node, reg)) => {
                        registrations.insert(node, reg);
                    }
                    Err(_) => view.skipped += 1,
                },
                KeyKind::Heartbeat { .. } => match Heartbeat::from_record(record) {
                    Ok((node, hb)) => {
                        heartbeats.insert(node, hb);
                    }
                    Err(_) => view.skipped += 1,
                },
                KeyKind::Status { node, contract_id } => {
                    match ContractRow::parse(&contract_id, record) {
                        Some(row) => statuses.entry(node).or_default().push(row),
                        None => view.skipped += 1,
                    }
                }
                KeyKind::Placement {
                    farm_id: id,
                    contract_id,
                } if id == farm_id => match self.placement(farm_id, &contract_id, record) {
                    Some(p) => view.placements.push(p),
                    None => view.skipped += 1,
                },
                _ => {}
            }
        }
        view.nodes = registrations
            .into_iter()
            .filter(|(_, reg)| reg.farm == farm_id)
            .map(|(node, registration)| NodeView {
                heartbeat: heartbeats.remove(&node),
                contracts: statuses.remove(&node).unwrap_or_default(),
                node,
                registration,
            })
            .collect();
        view
    }
}

impl Records {
    /// A placement record, shown only when signed by the orchestrator its contract
    /// names (anyone may write at the key).
    fn placement(&self, farm_id: &str, id: &str, record: &Record) -> Option<PlacementRecord> {
        let contract = self
            .by_key
            .get(NotaryKey::placement_contract(farm_id, id).ok()?.as_str())?;
        let doc = match ContractRecord::from_value(&contract.body, &Limits::default()).ok()? {
            ContractRecord::Contract(doc) => doc,
            ContractRecord::Cancellation(_) => return None,
        };
        if doc.placement.as_ref()?.orchestrator != record.author {
            return None;
        }
        serde_json::from_value(record.body.clone()).ok()
    }
}

/// One farm: its record (when valid) and its registered nodes.
#[derive(Debug, Default)]
pub struct FarmView {
    pub farm: Option<Farm>,
    /// The grid's placement records of the farm's placement contracts, by contract id.
    pub placements: Vec<PlacementRecord>,
    /// Sorted by node key.
    pub nodes: Vec<NodeView>,
    /// Records that did not parse as what their key says (not shown).
    pub skipped: usize,
}

/// A node of the farm: its registration, latest heartbeat and status records.
#[derive(Debug)]
pub struct NodeView {
    pub node: PublicKey,
    pub registration: Registration,
    pub heartbeat: Option<Heartbeat>,
    /// Sorted by contract id.
    pub contracts: Vec<ContractRow>,
}

/// A node's status record for one contract.
#[derive(Debug, Clone, PartialEq)]
pub struct ContractRow {
    pub id: String,
    pub version: Option<u64>,
    /// `provisioning`, `ok`, `error`, `refused`, `cancelled`, `expired`.
    pub state: String,
    pub message: String,
    /// `(code, message)` of each refusal reason.
    pub reasons: Vec<(String, String)>,
    /// A record at the contract's key the node refused while this version runs.
    pub refused_update: Option<RefusedUpdate>,
    /// `(name, state, restarts)` per workload.
    pub workloads: Vec<(String, String, u64)>,
    /// When the node signed the report (unix seconds).
    pub signed_at: u64,
}

/// A refused update of a running contract.
#[derive(Debug, Clone, PartialEq)]
pub struct RefusedUpdate {
    pub version: Option<u64>,
    pub message: String,
}

impl ContractRow {
    /// The status record `record` for contract `id`; `None` when it is not signed by
    /// the node it is filed under, or its body is no status report (no state).
    fn parse(id: &str, record: &Record) -> Option<ContractRow> {
        // The notary verified it already; a status shown must be the node's own
        // however it arrived.
        record.verify().ok()?;
        let body = &record.body;
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let state = body["state"].as_str()?.to_string();
        let reasons = body["reasons"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| (text(&r["code"]), text(&r["message"])))
            .collect();
        let refused_update = body
            .get("refused_update")
            .filter(|u| u.is_object())
            .map(|u| RefusedUpdate {
                version: u["version"].as_u64(),
                message: text(&u["message"]),
            });
        let workloads = body["workloads"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, w)| {
                (
                    name.clone(),
                    text(&w["state"]),
                    w["restarts"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        Some(ContractRow {
            id: id.to_string(),
            version: body["version"].as_u64(),
            state,
            message: text(&body["message"]),
            reasons,
            refused_update,
            workloads,
            signed_at: record.signed_at,
        })
    }

    /// True for a contract the node refused or failed.
    pub fn is_refusal(&self) -> bool {
        self.state == "refused" || self.state == "error"
    }
}

/// One line of "recent refusals": a refused or failed contract, or a refused update.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub node: PublicKey,
    pub contract: String,
    /// `refused`, `error` or `refused update vN`.
    pub what: String,
    /// The reasons' codes and the message.
    pub why: String,
    pub signed_at: u64,
}

/// The refusals of `nodes`, newest first.
pub fn refusals<'a>(nodes: impl IntoIterator<Item = &'a NodeView>) -> Vec<Refusal> {
    let mut out = Vec::new();
    for n in nodes {
        for c in &n.contracts {
            if c.is_refusal() {
                let codes: Vec<&str> = c.reasons.iter().map(|(code, _)| code.as_str()).collect();
                let why = if codes.is_empty() {
                    c.message.clone()
                } else {
                    format!("[{}] {}", codes.join(", "), c.message)
                };
                out.push(Refusal {
                    node: n.node,
                    contract: c.id.clone(),
                    what: c.state.clone(),
                    why,
                    signed_at: c.signed_at,
                });
            }
            if let Some(u) = &c.refused_update {
                out.push(Refusal {
                    node: n.node,
                    contract: c.id.clone(),
                    what: match u.version {
                        Some(v) => format!("refused update v{v}"),
                        None => "refused update".into(),
                    },
                    why: u.message.clone(),
                    signed_at: c.signed_at,
                });
            }
        }
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.signed_at));
    out
}

/// The node list's order (`s` cycles through them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Freshest heartbeat first; nodes that never beat last.
    Age,
    /// By node key.
    Name,
    /// Most loaded first (the fullest of CPU reserved, memory, SSD and HDD used).
    Load,
}

impl Sort {
    pub fn next(self) -> Sort {
        match self {
            Sort::Age => Sort::Name,
            Sort::Name => Sort::Load,
            Sort::Load => Sort::Age,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Sort::Age => "age",
            Sort::Name => "name",
            Sort::Load => "load",
        }
    }
}

impl NodeView {
    /// The fullest of the node's resources, 0.0 to 1.0 (0 without a heartbeat).
    pub fn load(&self) -> f64 {
        self.gauges().iter().map(|g| g.ratio()).fold(0.0, f64::max)
    }

    /// CPU (reserved of total: a heartbeat measures no CPU use), memory, SSD and HDD
    /// (used of total), from the latest heartbeat against the registered capacity.
    pub fn gauges(&self) -> [Gauge; 4] {
        let cap = &self.registration.capacity;
        let (cpu, mem, ssd, hdd) = match &self.heartbeat {
            Some(hb) => (
                hb.reserved.cpus,
                hb.used.memory_bytes,
                hb.used.ssd_bytes,
                hb.used.hdd_bytes,
            ),
            None => (0, 0, 0, 0),
        };
        [
            Gauge::new(cpu, cap.cpus),
            Gauge::new(mem, cap.memory_bytes),
            Gauge::new(ssd, cap.ssd_bytes),
            Gauge::new(hdd, cap.hdd_bytes),
        ]
    }

    /// True when `filter` (lowercase) is empty or found in the node key, its version or
    /// one of its contract ids.
    pub fn matches(&self, filter: &str) -> bool {
        filter.is_empty()
            || self.node.to_string().contains(filter)
            || self.registration.version.to_lowercase().contains(filter)
            || self
                .contracts
                .iter()
                .any(|c| c.id.to_lowercase().contains(filter))
    }
}

/// The nodes of `view` matching `filter`, in `sort` order.
pub fn visible<'a>(view: &'a FarmView, filter: &str, sort: Sort, now: u64) -> Vec<&'a NodeView> {
    let filter = filter.to_lowercase();
    let mut nodes: Vec<&NodeView> = view.nodes.iter().filter(|n| n.matches(&filter)).collect();
    match sort {
        Sort::Name => nodes.sort_by_key(|n| n.node),
        Sort::Age => nodes.sort_by_key(|n| {
            (
                n.heartbeat.as_ref().map_or(u64::MAX, |h| h.age(now)),
                n.node,
            )
        }),
        Sort::Load => nodes.sort_by(|a, b| {
            b.load()
                .total_cmp(&a.load())
                .then_with(|| a.node.cmp(&b.node))
        }),
    }
    nodes
}

/// Part of a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gauge {
    pub used: u64,
    pub total: u64,
}

impl Gauge {
    pub fn new(used: u64, total: u64) -> Gauge {
        Gauge { used, total }
    }

    /// 0.0 to 1.0 (more than the total shows as full; no total as empty).
    pub fn ratio(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            (self.used as f64 / self.total as f64).min(1.0)
        }
    }

    /// `[###-------]  30%` in `width` cells of bar (` 30%` alone for 0); `-` when
    /// there is no total.
    pub fn bar(&self, width: usize) -> String {
        let percent = match self.total {
            0 => 0,
            total => (self.used as f64 * 100.0 / total as f64).round() as u64,
        };
        if width == 0 {
            return match self.total {
                0 => format!("{:>4}", "-"),
                _ => format!("{percent:>3}%"),
            };
        }
        if self.total == 0 {
            return format!("{:<w$}", "-", w = width + 7);
        }
        let filled = (self.ratio() * width as f64).round() as usize;
        format!(
            "[{}{}] {:>3}%",
            "#".repeat(filled),
            "-".repeat(width - filled),
            percent
        )
    }
}

/// A heartbeat age for people: `42s`, `10m`, `3h`, `2d`.
pub fn age_text(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs}s"),
        120..7200 => format!("{}m", secs / 60),
        7200..172_800 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// The first 16 hex digits of a node key: enough to tell a farm's nodes apart, and what
/// the filter is usually typed from.
pub fn short(node: &PublicKey) -> String {
    node.to_string().chars().take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_contract::SecretKey;
    use zos_registry::{ContractCounts, Dmi, NodeResources, Usage};

    fn node(seed: u8, farm: &str, hb_time: Option<u64>, mem_used: u64) -> (SecretKey, Vec<Record>) {
        let sk = SecretKey::from_seed([seed; 32]);
        let reg = Registration {
            farm: farm.into(),
            version: format!("0.{seed}.0"),
            capacity: NodeResources {
                cpus: 4,
                memory_bytes: 1000,
                ssd_bytes: 1000,
                hdd_bytes: 0,
            },
            offered: None,
            nics: vec![],
            dmi: Dmi::default(),
            registered_at: 1,
        };
        let mut records = vec![reg.sign(&sk, 1).unwrap()];
        if let Some(time) = hb_time {
            let hb = Heartbeat {
                uptime_secs: 10,
                reserved: NodeResources {
                    cpus: 1,
                    memory_bytes: 0,
                    ssd_bytes: 0,
                    hdd_bytes: 0,
                },
                used: Usage {
                    memory_bytes: mem_used,
                    ..Usage::default()
                },
                contracts: ContractCounts::default(),
                workloads: 0,
                listening: vec![],
                listening_total: 0,
                time,
            };
            records.push(hb.sign(&sk, time).unwrap());
        }
        (sk, records)
    }

    fn status(sk: &SecretKey, id: &str, body: Value) -> Record {
        let key = NotaryKey::status(&sk.public(), id).unwrap();
        Record::sign_at(&key, body, sk, 50).unwrap()
    }

    #[test]
    fn a_farm_view_keeps_its_nodes_and_their_reports() {
        let (a, mut records) = node(1, "farm-1", Some(90), 250);
        let (b, more) = node(2, "farm-1", None, 0);
        records.extend(more);
        let (_, other) = node(3, "farm-2", Some(95), 0);
        records.extend(other);
        records.push(status(
            &a,
            "web",
            serde_json::json!({"contract": "web", "version": 2, "state": "ok",
                "message": "running", "refused_update": {"version": 3,
                "message": "not signed by the owner", "reasons": []}}),
        ));
        records.push(status(
            &b,
            "db",
            serde_json::json!({"contract": "db", "state": "refused", "message": "too big",
                "reasons": [{"code": "over_capacity", "message": "too big"}]}),
        ));
        let mut store = Records::default();
        store.replace(records);
        let view = store.farm_view("farm-1");
        assert!(view.farm.is_none());
        assert_eq!(view.nodes.len(), 2);
        assert_eq!(view.skipped, 0);
        let by = |k: &SecretKey| view.nodes.iter().find(|n| n.node == k.public()).unwrap();
        assert_eq!(by(&a).contracts[0].state, "ok");
        assert_eq!(by(&a).heartbeat.as_ref().unwrap().time, 90);
        assert!(by(&b).heartbeat.is_none());

        let refused = refusals(&view.nodes);
        assert_eq!(refused.len(), 2, "{refused:?}");
        assert!(refused
            .iter()
            .any(|r| r.what == "refused" && r.why == "[over_capacity] too big"));
        assert!(refused
            .iter()
            .any(|r| r.what == "refused update v3" && r.why == "not signed by the owner"));

        // Sorting: age puts the node that never beat last; load the fuller first.
        let ages: Vec<_> = visible(&view, "", Sort::Age, 100)
            .iter()
            .map(|n| n.node)
            .collect();
        assert_eq!(ages, vec![a.public(), b.public()]);
        let loads: Vec<_> = visible(&view, "", Sort::Load, 100)
            .iter()
            .map(|n| n.node)
            .collect();
        assert_eq!(loads[0], a.public());
        // Filtering by a key prefix, typed in capitals, and by a contract id.
        let prefix = short(&b.public()).to_uppercase();
        let only_b = visible(&view, &prefix[..6], Sort::Name, 100);
        assert_eq!(only_b.len(), 1);
        assert_eq!(only_b[0].node, b.public());
        assert_eq!(visible(&view, "web", Sort::Name, 100)[0].node, a.public());

        // A deleted heartbeat (its lease gone) is no longer shown.
        store.delete(&NotaryKey::heartbeat(&a.public()));
        let after = store.farm_view("farm-1");
        assert!(after.nodes.iter().all(|n| n.heartbeat.is_none()));
    }

    #[test]
    fn placements_are_shown_only_when_signed_by_the_contracts_orchestrator() {
        use zos_contract::{BlueprintRef, Contract, Failover, FailoverMode, Placement};
        let (owner, bot, mallory) = (
            SecretKey::from_seed([70; 32]),
            SecretKey::from_seed([71; 32]),
            SecretKey::from_seed([72; 32]),
        );
        let blueprint = zos_testkit::contract::signed_blueprint(
            &owner,
            serde_json::json!({"name": "w", "version": "1.0.0", "params": {},
                "body": {"workloads": [{"name": "app", "kind": "container",
                    "flist": {"url": "dir:///srv/w.fl",
                        "sha256": "0000000000000000000000000000000000000000000000000000000000000000",
                        "stores": ["dir:///srv/store"], "publishers": [owner.public().to_hex()]},
                    "entrypoint": ["/bin/w"], "cpu": 1, "memory_mib": 64}]}}),
        );
        let c = Contract {
            id: "web".into(),
            version: 1,
            owner: owner.public(),
            nodes: vec![],
            blueprint: BlueprintRef::Embedded(blueprint),
            params: Default::default(),
            stakeholders: vec![],
            threshold: 0,
            not_before: None,
            expires: None,
        };
        let placement = Placement {
            farm: "farm-1".into(),
            replicas: 1,
            orchestrator: bot.public(),
            failover: Failover {
                mode: FailoverMode::Move,
                after_s: 60,
            },
            constraints: None,
        };
        let mut doc = zos_contract::SignedContract::placed(c, placement).unwrap();
        doc.sign(&owner).unwrap();
        let ckey = NotaryKey::placement_contract("farm-1", "web").unwrap();
        let contract = Record::sign_at(&ckey, doc.to_value(), &owner, 1).unwrap();
        let (node, _) = node(1, "farm-1", Some(90), 0);
        let mut rec = PlacementRecord::new("web", 1, doc.digest, 1);
        rec.replicas[0].node = Some(node.public());
        rec.replicas[0].epoch = 1;
        let pkey = NotaryKey::placement("farm-1", "web").unwrap();
        let body = serde_json::to_value(&rec).unwrap();
        let mut store = Records::default();
        store.replace(vec![
            contract.clone(),
            Record::sign_at(&pkey, body.clone(), &bot, 2).unwrap(),
        ]);
        let view = store.farm_view("farm-1");
        assert_eq!(view.placements, vec![rec.clone()]);
        assert!(store.farm_view("farm-2").placements.is_empty());
        // Written at the key by anyone else: counted, not shown.
        store.replace(vec![
            contract,
            Record::sign_at(&pkey, body, &mallory, 2).unwrap(),
        ]);
        let view = store.farm_view("farm-1");
        assert!(view.placements.is_empty());
        assert_eq!(view.skipped, 1);
    }

    #[test]
    fn a_status_not_signed_by_its_node_is_not_shown() {
        let (b, records) = node(2, "farm-1", Some(90), 0);
        let mallory = SecretKey::from_seed([66; 32]);
        let key = NotaryKey::status(&b.public(), "evil-1").unwrap();
        let forged = Record::sign_at(
            &key,
            serde_json::json!({"contract": "evil-1", "state": "ok", "message": "forged"}),
            &mallory,
            50,
        )
        .unwrap();
        let mut store = Records::default();
        store.replace(records);
        store.put(forged);
        let view = store.farm_view("farm-1");
        assert!(view.nodes[0].contracts.is_empty(), "{:?}", view.nodes[0]);
        assert_eq!(view.skipped, 1);
    }

    #[test]
    fn bars_and_ages_for_people() {
        assert_eq!(Gauge::new(1, 4).bar(8), "[##------]  25%");
        assert_eq!(Gauge::new(9, 4).bar(4), "[####] 225%");
        assert_eq!(Gauge::new(0, 0).bar(4).trim(), "-");
        assert_eq!(Gauge::new(0, 0).bar(4).len(), Gauge::new(1, 2).bar(4).len());
        assert_eq!(Gauge::new(1, 4).bar(0), " 25%");
        assert_eq!(Gauge::new(0, 0).bar(0), "   -");
        assert_eq!(age_text(42), "42s");
        assert_eq!(age_text(630), "10m");
        assert_eq!(age_text(3 * 3600 + 60), "3h");
        assert_eq!(age_text(3 * 86_400), "3d");
        assert_eq!(Sort::Age.next().next().next(), Sort::Age);
    }
}
