//! `zos farm` and `zos node`: farms (farmers) and the nodes registered in them.
//!
//! A farm record (`farms/<id>`) is signed by its farmer; nodes booted with that farm id
//! register under it (`nodes/<node>/registration`) and beat (`nodes/<node>/heartbeat`).
//! Every record shown here is verified, farm rules included (zos-registry); see
//! docs/registration.md.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde::Serialize;
use zos_contract::{PublicKey, SecretKey};
use zos_notary::{KeyKind, KeyPrefix, NotaryKey};
use zos_registry::{Farm, Heartbeat, NodeResources, Registration, Telemetry};

use crate::notary::Client;
use crate::output::{note, outln, Format};

#[derive(Debug, Subcommand)]
pub enum FarmCmd {
    /// Create a farm in a notary (or rename it), signed by the farmer's key.
    ///
    /// Nodes booted with this farm id register under it; until it exists they wait and
    /// take no contracts. Running it again renames the farm; only the same farmer key
    /// may (a farm never changes hands).
    ///
    /// Example: zos farm create farm-1 --name "Ghent rack 3" --key farmer.key
    ///   --notary dir:///srv/notary
    Create {
        /// The farm id: 1-128 of [A-Za-z0-9._-], not starting with `.`.
        farm_id: String,
        /// A name for people.
        #[arg(long)]
        name: String,
        /// The farmer's secret key (`zos key new --out farmer.key`).
        #[arg(long)]
        key: PathBuf,
        /// Trust only blueprints signed by this author (repeatable). The farm's nodes then
        /// refuse contracts built from any other author's blueprint. Without it, a new
        /// farm trusts any author and an existing farm keeps its list.
        #[arg(long = "blueprint-author", value_name = "PUB")]
        blueprint_authors: Vec<PublicKey>,
        /// Drop the farm's list of trusted blueprint authors (any author again).
        #[arg(long, conflicts_with = "blueprint_authors")]
        any_blueprint_author: bool,
        #[command(flatten)]
        telemetry: TelemetryArgs,
        /// dir:///path or etcd://host:port[/prefix].
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
    },
    /// Show a farm: its verified record and the nodes registered in it.
    ///
    /// Example: zos farm show farm-1 --notary etcd://127.0.0.1:2379 --json
    Show {
        farm_id: String,
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
        #[command(flatten)]
        format: Format,
    },
    /// Stage a release over the farm's nodes in waves, signed by the farmer: the
    /// rollout record at `rollouts/<farm>`.
    ///
    /// A node of wave k upgrades only once every node of wave k-1 reports VERSION and
    /// beats; a rollback of VERSION anywhere halts it (`zos farm show` says why). Each
    /// node still verifies the release itself (`zos release publish`). Refused, with
    /// nothing written, unless --key is the farm's farmer and the waves are well formed.
    ///
    /// Example: zos farm rollout farm-1 0.2.0 --waves 10%,50%,100% --key farmer.key
    ///   --notary etcd://127.0.0.1:2379
    Rollout {
        farm_id: String,
        /// The version the farm's nodes go to (MAJOR.MINOR.PATCH).
        version: String,
        /// Comma-separated waves: `P%` (cumulative percentages of the farm's nodes in
        /// key order, increasing) or node keys joined by `+`.
        #[arg(long, value_name = "WAVES")]
        waves: String,
        /// The farmer's secret key.
        #[arg(long)]
        key: PathBuf,
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
    },
    /// A live terminal dashboard of a farm: its nodes (heartbeat age, version, capacity
    /// bars), their contracts' states, recent refusals. Read-only.
    ///
    /// It follows the notary's watch, or lists every --refresh seconds where there is
    /// none. Keys: s sort (age, name, load), / filter, Up/Down select, Enter open a
    /// node, Esc back, q quit.
    ///
    /// Example: zos farm top farm-1 --notary etcd://127.0.0.1:2379
    Top {
        farm_id: String,
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
        /// Seconds between listings when the notary cannot be watched.
        #[arg(long, default_value_t = 5, value_name = "SECS")]
        refresh: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List the registered nodes: farm, version, capacity, last heartbeat and how many
    /// sockets the node reports listening (a node should report none).
    ///
    /// Example: zos node list --farm farm-1 --notary dir:///srv/notary --json
    List {
        /// Only the nodes of this farm.
        #[arg(long)]
        farm: Option<String>,
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
        #[command(flatten)]
        format: Format,
    },
    /// Drain a node of your farm, signed by the farmer: the orchestrators of the farm's
    /// placement contracts place nothing new on it and move its replicas away,
    /// make-before-break (each new copy runs before the old one stops). Refused, with
    /// nothing written, unless --key is the farm's farmer and the node is registered in
    /// the farm. See docs/grid.md, "Drain".
    ///
    /// Example: zos node drain <hex> --farm farm-1 --key farmer.key
    ///   --notary etcd://127.0.0.1:2379
    Drain {
        node: PublicKey,
        /// The node's farm.
        #[arg(long)]
        farm: String,
        /// The farmer's secret key.
        #[arg(long)]
        key: PathBuf,
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
    },
    /// Undrain a node, signed by the farmer: it gets new replicas again (those moved
    /// away do not move back; a handover in progress completes). Refused, with nothing
    /// written, unless --key is the farm's farmer.
    ///
    /// Example: zos node undrain <hex> --farm farm-1 --key farmer.key
    ///   --notary etcd://127.0.0.1:2379
    Undrain {
        node: PublicKey,
        /// The node's farm.
        #[arg(long)]
        farm: String,
        /// The farmer's secret key.
        #[arg(long)]
        key: PathBuf,
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
    },
    /// Where a node's own logs go: the destination its farm's record names (the node
    /// publishes no log lines to the notary).
    ///
    /// Example: zos node logs <hex> --notary dir:///srv/notary
    Logs {
        node: PublicKey,
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
        #[command(flatten)]
        format: Format,
    },
}

/// One node of `zos node list`.
#[derive(Debug, Serialize)]
pub struct NodeRow {
    pub node: PublicKey,
    pub farm: String,
    /// The farm exists in the notary and is valid.
    pub farm_known: bool,
    pub registration: Registration,
    /// The latest verified heartbeat, if any.
    pub heartbeat: Option<Heartbeat>,
    /// Seconds since that heartbeat was taken.
    pub heartbeat_age_secs: Option<u64>,
}

pub fn run_farm(cmd: FarmCmd) -> anyhow::Result<()> {
    match cmd {
        FarmCmd::Create {
            farm_id,
            name,
            key,
            blueprint_authors,
            any_blueprint_author,
            telemetry,
            notary,
        } => {
            let key = SecretKey::load(&key)?;
            let client = Client::open(&notary)?;
            let authors = match (any_blueprint_author, blueprint_authors.is_empty()) {
                (true, _) => Some(Vec::new()),
                (false, true) => None,
                (false, false) => Some(blueprint_authors),
            };
            create(&client, &farm_id, &name, &key, authors, &telemetry)
        }
        FarmCmd::Show {
            farm_id,
            notary,
            format,
        } => show(&farm_id, &notary, &format),
        FarmCmd::Top {
            farm_id,
            notary,
            refresh,
        } => crate::top::run(&farm_id, &notary, refresh),
        FarmCmd::Rollout {
            farm_id,
            version,
            waves,
            key,
            notary,
        } => {
            let version = crate::release::parse_version(&version)?;
            let waves = crate::release::parse_waves(&waves)?;
            let key = SecretKey::load(&key)?;
            crate::release::rollout(&Client::open(&notary)?, &farm_id, &version, waves, &key)?;
            note!("rollout of farm {farm_id} to {version} published at rollouts/{farm_id}");
            Ok(())
        }
    }
}

/// `zos farm show`: the farm record, verified, and its nodes.
fn show(farm_id: &str, notary: &str, format: &crate::output::Format) -> anyhow::Result<()> {
    let client = Client::open(notary)?;
    let nkey = NotaryKey::farm(farm_id).map_err(|e| anyhow::anyhow!("farm id {farm_id:?}: {e}"))?;
    let Some(record) = client.get(&nkey)? else {
        bail!("no farm {farm_id:?} in {notary}");
    };
    let farm = Farm::from_record(&record)
        .with_context(|| format!("{nkey} in {notary} is not a valid farm"))?;
    let nodes: Vec<NodeRow> = nodes(&client, Some(farm_id))?;
    let rollout = crate::release::view(&client, &farm, &nodes)?;
    if format.json {
        let out = serde_json::json!({
            "farm": farm,
            "signed_at": record.signed_at,
            "nodes": nodes,
            "rollout": rollout,
        });
        return crate::output::json(&out);
    }
    outln!("farm      {}", farm.id)?;
    outln!("name      {}", farm.name)?;
    outln!("farmer    {}", farm.farmer)?;
    outln!("created   {}", farm.created)?;
    if farm.blueprint_authors.is_empty() {
        outln!("blueprint authors  any")?;
    }
    for author in &farm.blueprint_authors {
        outln!("blueprint author   {author}")?;
    }
    outln!("nodes     {}", nodes.len())?;
    for row in &nodes {
        outln!("  {} {}", row.node, heartbeat_text(row))?;
    }
    match &rollout {
        Some(view) => crate::release::print(view)?,
        None => outln!("rollout   none")?,
    }
    Ok(())
}

pub fn run_node(cmd: NodeCmd) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::Drain {
            node,
            farm,
            key,
            notary,
        } => drain(
            &Client::open(&notary)?,
            &farm,
            &node,
            &SecretKey::load(&key)?,
            true,
        ),
        NodeCmd::Undrain {
            node,
            farm,
            key,
            notary,
        } => drain(
            &Client::open(&notary)?,
            &farm,
            &node,
            &SecretKey::load(&key)?,
            false,
        ),
        NodeCmd::Logs {
            node,
            notary,
            format,
        } => node_logs(&node, &notary, &format),
        NodeCmd::List {
            farm,
            notary,
            format,
        } => {
            let client = Client::open(&notary)?;
            let rows = nodes(&client, farm.as_deref())?;
            if format.json {
                crate::output::json(&rows)?;
            } else if rows.is_empty() {
                outln!("no registered nodes in {notary}")?;
            } else {
                print_nodes(&rows)?;
            }
            Ok(())
        }
    }
}

/// Publishes farm `id` signed by `key`: a new farm, or a rename by the same farmer. The
/// trusted blueprint authors are set when `authors` is given (empty: any author); `None`
/// keeps an existing farm's list.
pub fn create(
    client: &Client,
    id: &str,
    name: &str,
    key: &SecretKey,
    authors: Option<Vec<PublicKey>>,
    telemetry: &TelemetryArgs,
) -> anyhow::Result<()> {
    let nkey = NotaryKey::farm(id).map_err(|e| anyhow::anyhow!("farm id {id:?}: {e}"))?;
    let existing = match client.get(&nkey)? {
        None => None,
        Some(record) => match Farm::from_record(&record) {
            Ok(farm) => Some(farm),
            // Someone with write access put a record no reader accepts; the farmer
            // replacing it is what should happen.
            Err(e) => {
                note!("warning: {nkey} held an invalid farm record ({e}); replacing it");
                None
            }
        },
    };
    let farm = Farm::create_or_update(
        existing.as_ref(),
        id,
        name,
        key.public(),
        crate::contract::now(),
    )?;
    let farm = match authors {
        Some(authors) => farm.with_blueprint_authors(authors)?,
        None => farm,
    };
    let (logs, metrics) = telemetry.apply(farm.logs.clone(), farm.metrics.clone())?;
    let farm = farm.with_telemetry(logs, metrics)?;
    let record = farm.sign(key, crate::contract::now())?;
    client.put(&record)?;
    let what = if existing.is_some() {
        "updated"
    } else {
        "created"
    };
    outln!(
        "{what} farm {} ({}) for farmer {} in {}",
        farm.id,
        farm.name,
        farm.farmer,
        client.url
    )?;
    Ok(())
}

/// `zos node drain` (`drained`) and `zos node undrain`: the farmer's signed record at
/// `grid/<farm>/drains/<node>`, written only when `key` is the farm record's farmer
/// (the notary cannot check that; the orchestrator ignores anyone else's) and, for a
/// drain, the node is registered in the farm.
pub fn drain(
    client: &Client,
    farm_id: &str,
    node: &PublicKey,
    key: &SecretKey,
    drained: bool,
) -> anyhow::Result<()> {
    let nkey = NotaryKey::farm(farm_id).map_err(|e| anyhow::anyhow!("farm id {farm_id:?}: {e}"))?;
    let Some(record) = client.get(&nkey)? else {
        bail!("no farm {farm_id:?} in {}: nothing written", client.url);
    };
    let farm = Farm::from_record(&record).with_context(|| {
        format!(
            "{nkey} in {} is not a valid farm; nothing written",
            client.url
        )
    })?;
    if key.public() != farm.farmer {
        bail!(
            "key {} is not the farmer of farm {farm_id:?} (its farmer is {}): nothing written",
            key.public(),
            farm.farmer
        );
    }
    if drained {
        let registered = match client.get(&NotaryKey::registration(node))? {
            Some(r) => Registration::from_record(&r).ok().map(|(_, reg)| reg.farm),
            None => None,
        };
        if registered.as_deref() != Some(farm_id) {
            bail!(
                "node {node} is not registered in farm {farm_id:?}{}: nothing written",
                registered.map_or(String::new(), |f| format!(" (it is in {f:?})"))
            );
        }
    }
    let record = zos_grid::Drain { drained }
        .sign(&farm, node, key)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    client.put(&record)?;
    if drained {
        outln!(
            "drained node {node} in farm {farm_id}: its replicas move away (each new copy runs before the old one stops) and it gets nothing new"
        )
    } else {
        outln!("undrained node {node} in farm {farm_id}: it gets new replicas again")
    }
}

/// `zos node logs`: the node's farm, and the log destination that farm names.
fn node_logs(node: &PublicKey, notary: &str, format: &Format) -> anyhow::Result<()> {
    let client = Client::open(notary)?;
    let Some(record) = client.get(&NotaryKey::registration(node))? else {
        bail!("node {node} is not registered in {notary}");
    };
    let (_, reg) = Registration::from_record(&record)
        .with_context(|| format!("the registration of {node} in {notary}"))?;
    let farm = match client.get(&NotaryKey::farm(&reg.farm).map_err(|e| anyhow::anyhow!("{e}"))?)? {
        Some(r) => Some(Farm::from_record(&r).with_context(|| format!("farm {}", reg.farm))?),
        None => None,
    };
    let destination = farm
        .as_ref()
        .and_then(|f| f.logs.as_ref())
        .map(|t| t.url.clone());
    if format.json {
        return crate::output::json(&serde_json::json!({
            "node": node.to_string(),
            "farm": reg.farm,
            "destination": destination,
        }));
    }
    match (&farm, &destination) {
        (None, _) => outln!("node {node}: farm {} is not in {notary}", reg.farm),
        (Some(_), Some(url)) => outln!("node {node}: its logs go to {url} (farm {})", reg.farm),
        (Some(_), None) => outln!(
            "node {node}: farm {} names no log destination; its logs stay on the node \
             (zos farm create {} --logs URL)",
            reg.farm,
            reg.farm
        ),
    }
}

/// The verified registrations in the notary (of `farm` only, if given), with their
/// latest heartbeats, sorted by farm then node.
pub fn nodes(client: &Client, farm: Option<&str>) -> anyhow::Result<Vec<NodeRow>> {
    let farms: BTreeMap<String, Farm> = client
        .list(&KeyPrefix::farms())?
        .iter()
        .filter_map(|r| Farm::from_record(r).ok())
        .map(|f| (f.id.clone(), f))
        .collect();
    // The layout has no prefix for registrations alone: list the nodes' records and
    // keep registrations and heartbeats.
    let prefix = KeyPrefix::parse("nodes").expect("a valid prefix");
    let mut registrations = BTreeMap::new();
    let mut heartbeats = BTreeMap::new();
    for record in client.list(&prefix)? {
        match record.notary_key().map(|k| k.kind()) {
            Ok(KeyKind::Registration { .. }) => match Registration::from_record(&record) {
                Ok((node, reg)) => {
                    registrations.insert(node, reg);
                }
                Err(e) => note!("warning: {} skipped: {e}", record.key),
            },
            Ok(KeyKind::Heartbeat { .. }) => match Heartbeat::from_record(&record) {
                Ok((node, hb)) => {
                    heartbeats.insert(node, hb);
                }
                Err(e) => note!("warning: {} skipped: {e}", record.key),
            },
            _ => {}
        }
    }
    let now = crate::contract::now();
    let mut rows: Vec<NodeRow> = registrations
        .into_iter()
        .filter(|(_, reg)| farm.is_none_or(|f| reg.farm == f))
        .map(|(node, registration)| {
            let heartbeat = heartbeats.remove(&node);
            NodeRow {
                node,
                farm: registration.farm.clone(),
                farm_known: farms.contains_key(&registration.farm),
                heartbeat_age_secs: heartbeat.as_ref().map(|h| h.age(now)),
                heartbeat,
                registration,
            }
        })
        .collect();
    rows.sort_by(|a, b| (&a.farm, a.node).cmp(&(&b.farm, b.node)));
    Ok(rows)
}

/// Bytes for people (`1.5 KiB`): the status screen's formatting, so both read alike.
use zos_status::render::bytes as human_bytes;

fn heartbeat_text(row: &NodeRow) -> String {
    match (&row.heartbeat, row.heartbeat_age_secs) {
        (Some(hb), Some(age)) => {
            let wireguard = hb.listening.iter().filter(|s| s.is_wireguard()).count();
            let mut text = format!(
                "heartbeat {age}s ago, up {}s, {} contract(s) running, {} listening socket(s){}, zosd RSS {}",
                hb.uptime_secs,
                hb.contracts.running,
                hb.listening_total,
                if wireguard > 0 {
                    format!(" ({wireguard} wireguard)")
                } else {
                    String::new()
                },
                human_bytes(hb.used.agent_rss_bytes)
            );
            if hb.used.init_rss_bytes > 0 {
                text.push_str(&format!(
                    " + {} (PID 1)",
                    human_bytes(hb.used.init_rss_bytes)
                ));
            }
            text
        }
        _ => "no heartbeat yet".into(),
    }
}

fn capacity_text(c: &NodeResources) -> String {
    format!(
        "{} cpu, {} mem, {} ssd, {} hdd",
        c.cpus,
        human_bytes(c.memory_bytes),
        human_bytes(c.ssd_bytes),
        human_bytes(c.hdd_bytes)
    )
}

fn print_nodes(rows: &[NodeRow]) -> anyhow::Result<()> {
    for row in rows {
        let farm = if row.farm_known {
            row.farm.clone()
        } else {
            format!("{} (not in the notary)", row.farm)
        };
        outln!("node      {}", row.node)?;
        outln!("  farm      {farm}")?;
        outln!("  version   {}", row.registration.version)?;
        outln!("  capacity  {}", capacity_text(&row.registration.capacity))?;
        let nics: Vec<String> = row
            .registration
            .nics
            .iter()
            .map(|n| format!("{} {}", n.name, n.mac))
            .collect();
        outln!(
            "  nics      {}",
            if nics.is_empty() {
                "-".into()
            } else {
                nics.join(", ")
            }
        )?;
        outln!("  status    {}", heartbeat_text(row))?;
        if let Some(hb) = &row.heartbeat {
            for s in &hb.listening {
                outln!("  {}", socket_line(s))?;
            }
        }
    }
    Ok(())
}

/// A listed socket for `node list`: a WireGuard link's as what it is (the one UDP
/// socket a node with mesh networks has, docs/security.md), any other as the alarm it is.
fn socket_line(s: &zos_registry::Socket) -> String {
    if s.is_wireguard() {
        let address = std::net::SocketAddr::new(s.address, s.port);
        format!(
            "wireguard {} {address} (a tenant network's link: answers only its peers)",
            s.proto
        )
    } else {
        format!(
            "LISTENING {} {}:{} uid {}",
            s.proto, s.address, s.port, s.uid
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{human_bytes, socket_line};
    use zos_registry::{Proto, Socket, SocketLabel};

    #[test]
    fn a_wireguard_socket_is_named_and_any_other_is_an_alarm() {
        let mut s = Socket {
            proto: Proto::Udp6,
            address: "::".parse().unwrap(),
            port: 51820,
            uid: 0,
            inode: 77,
            label: None,
        };
        assert_eq!(socket_line(&s), "LISTENING udp6 :::51820 uid 0");
        s.label = Some(SocketLabel::Wireguard);
        assert_eq!(
            socket_line(&s),
            "wireguard udp6 [::]:51820 (a tenant network's link: answers only its peers)"
        );
    }

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(8 << 30), "8.0 GiB");
    }
}

/// Where the farm's nodes send their logs and push their metrics (`zos farm create`).
/// Unset: an existing farm keeps what it has.
#[derive(Debug, clap::Args)]
pub struct TelemetryArgs {
    /// Send the nodes' own logs here: syslog+tcp://HOST:PORT, syslog+tls://HOST:PORT
    /// (with --logs-ca) or jsonl+tcp://HOST:PORT.
    #[arg(long, value_name = "URL")]
    logs: Option<String>,
    /// The CA (PEM file) that signs the log receiver's certificate (syslog+tls).
    #[arg(long, value_name = "FILE", requires = "logs")]
    logs_ca: Option<PathBuf>,
    /// Push the nodes' metrics here: a Prometheus remote-write URL (http:// or https://
    /// with --metrics-ca).
    #[arg(long, value_name = "URL")]
    metrics: Option<String>,
    /// The CA (PEM file) that signs the metrics receiver's certificate (https).
    #[arg(long, value_name = "FILE", requires = "metrics")]
    metrics_ca: Option<PathBuf>,
    /// Stop sending logs and metrics anywhere.
    #[arg(long, conflicts_with_all = ["logs", "metrics"])]
    no_telemetry: bool,
}

impl TelemetryArgs {
    /// The farm's targets after this change, from the ones it had.
    fn apply(
        &self,
        logs: Option<Telemetry>,
        metrics: Option<Telemetry>,
    ) -> anyhow::Result<(Option<Telemetry>, Option<Telemetry>)> {
        if self.no_telemetry {
            return Ok((None, None));
        }
        let target = |url: &Option<String>, ca: &Option<PathBuf>, old: Option<Telemetry>| {
            let Some(url) = url else {
                return Ok(old);
            };
            let ca_pem = match ca {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                ),
                None => None,
            };
            anyhow::Ok(Some(Telemetry {
                url: url.clone(),
                ca_pem,
            }))
        };
        Ok((
            target(&self.logs, &self.logs_ca, logs)?,
            target(&self.metrics, &self.metrics_ca, metrics)?,
        ))
    }
}
