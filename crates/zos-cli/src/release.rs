//! `zos release publish` and the farmer's rollouts (`zos farm rollout`, the rollout part
//! of `zos farm show`): the node's own software, staged over a farm in waves
//! (docs/upgrade.md).
//!
//! A release record (`cargo xtask release` writes and signs it) is stored at
//! `releases/<version>`; the notary checks no author there, the nodes check the release
//! key inside. A rollout (`rollouts/<farm>`) is signed by the farm's farmer.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Subcommand;
use serde::Serialize;
use serde_json::Value;
use zos_contract::{Limits, PublicKey, SecretKey};
use zos_notary::{NotaryKey, Record};
use zos_registry::Farm;
use zos_release::{wave_of, Rollout, SignedRelease, SignedRollout, Version, Wave};

use crate::farm::NodeRow;
use crate::notary::Client;
use crate::output::outln;

#[derive(Debug, Subcommand)]
pub enum ReleaseCmd {
    /// Publish a signed release record (as `cargo xtask release` writes it) at
    /// `releases/<version>`.
    ///
    /// The record is read strictly and must be signed by the key it names; whether a
    /// node accepts it (its image pins that key, the version is above its own) is the
    /// node's check. The notary checks no author on releases: the record is stored
    /// under --key, or a one-time key.
    ///
    /// Example: zos release publish target/release/release.json --notary dir:///srv/notary
    Publish {
        /// The signed release record (JSON).
        release: PathBuf,
        /// The key the notary record is stored under (not a release key); absent: a
        /// one-time key.
        #[arg(long)]
        key: Option<PathBuf>,
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
    },
}

pub fn run(cmd: ReleaseCmd) -> anyhow::Result<()> {
    match cmd {
        ReleaseCmd::Publish {
            release,
            key,
            notary,
        } => {
            let key = match key {
                Some(k) => SecretKey::load(&k)?,
                None => SecretKey::generate().context("making a one-time key")?,
            };
            let version = publish(&Client::open(&notary)?, &release, &key)?;
            outln!("published release {version} at releases/{version}")
        }
    }
}

/// Reads, checks and stores the release in `file`; returns its version.
pub fn publish(client: &Client, file: &Path, key: &SecretKey) -> anyhow::Result<Version> {
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let signed = SignedRelease::from_bytes(&bytes, &Limits::default())
        .with_context(|| format!("{} is not a release record", file.display()))?;
    let r = &signed.release;
    let Some(signature) = &signed.signature else {
        bail!("{}: the release is unsigned", file.display());
    };
    if r.key
        .verify(&SignedRelease::digest_of(r), signature)
        .is_err()
    {
        bail!(
            "{}: the signature does not verify under the key it names ({})",
            file.display(),
            r.key
        );
    }
    let version = r.version;
    let nkey = NotaryKey::release(&version.to_string())?;
    client.put(&Record::sign(&nkey, signed.to_value(), key)?)?;
    Ok(version)
}

/// `--waves`: comma-separated waves, each `P%` (a cumulative percentage of the farm's
/// nodes) or node keys joined by `+`.
pub fn parse_waves(text: &str) -> anyhow::Result<Vec<Wave>> {
    text.split(',')
        .map(|w| {
            let w = w.trim();
            if let Some(p) = w.strip_suffix('%') {
                let p: u64 = p
                    .parse()
                    .with_context(|| format!("wave {w:?}: not a percentage"))?;
                Ok(Wave::Percent(p))
            } else {
                w.split('+')
                    .map(|k| {
                        k.parse::<PublicKey>()
                            .map_err(|_| anyhow::anyhow!("wave {w:?}: {k:?} is not a node key"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()
                    .map(Wave::Nodes)
            }
        })
        .collect()
}

/// `zos farm rollout`: the rollout signed by `key`, which must be the farm's farmer,
/// stored at `rollouts/<farm>`. Refused with nothing written otherwise, or when the
/// waves are malformed.
pub fn rollout(
    client: &Client,
    farm_id: &str,
    version: &Version,
    waves: Vec<Wave>,
    key: &SecretKey,
) -> anyhow::Result<()> {
    let fkey = NotaryKey::farm(farm_id).map_err(|e| anyhow::anyhow!("farm id {farm_id:?}: {e}"))?;
    let Some(record) = client.get(&fkey)? else {
        bail!("no farm {farm_id:?} in the notary");
    };
    let farm = Farm::from_record(&record).with_context(|| format!("{fkey} is not a valid farm"))?;
    if farm.farmer != key.public() {
        bail!(
            "refused: {} is not the farmer of {farm_id} ({}); nothing written",
            key.public(),
            farm.farmer
        );
    }
    let signed = SignedRollout::sign(
        Rollout {
            farm: farm_id.into(),
            version: *version,
            waves,
            issued_at: crate::contract::now(),
            farmer: key.public(),
        },
        key,
    );
    // What every node checks: refused here, nothing is written.
    signed
        .verify(farm_id, &farm.farmer)
        .map_err(|e| anyhow::anyhow!("refused: {e}; nothing written"))?;
    let nkey = NotaryKey::rollout(farm_id)?;
    client.put(&Record::sign(&nkey, signed.to_value(), key)?)?;
    Ok(())
}

/// One node under the farm's rollout.
#[derive(Debug, Serialize)]
pub struct RolloutNode {
    pub node: PublicKey,
    /// 0-based; `waves.len()` is the implicit last wave.
    pub wave: usize,
    /// The version its registration reports.
    pub version: String,
    /// It reports the rollout's version and beats.
    pub upgraded: bool,
    /// Its last upgrade outcome (`nodes/<node>/upgrade`), if signed by it.
    pub upgrade: Option<Value>,
    /// Its rollback record (`nodes/<node>/rollback`), if signed by it.
    pub rollback: Option<Value>,
}

/// The farm's rollout as `zos farm show` prints it.
#[derive(Debug, Serialize)]
pub struct RolloutView {
    /// The rollout as stored.
    pub rollout: Rollout,
    /// Why nodes do not follow it (its code: not signed by the farm's farmer,
    /// malformed…); absent when it verifies.
    pub refused: Option<String>,
    pub nodes: Vec<RolloutNode>,
    /// Why the rollout stopped: a node rolled back from the rollout's version, or
    /// refused its release.
    pub halted: Vec<String>,
}

/// The farm's rollout and where each of its nodes stands; `None` without a rollout.
pub fn view(
    client: &Client,
    farm: &Farm,
    nodes: &[NodeRow],
) -> anyhow::Result<Option<RolloutView>> {
    let Some(record) = client.get(&NotaryKey::rollout(&farm.id)?)? else {
        return Ok(None);
    };
    let bytes = serde_json::to_vec(&record.body)?;
    let signed = SignedRollout::from_bytes(&bytes, &Limits::default())
        .with_context(|| format!("rollouts/{} is not a rollout record", farm.id))?;
    let refused = signed
        .verify(&farm.id, &farm.farmer)
        .err()
        .map(|e| format!("{} ({e})", e.code()));
    let r = signed.rollout;
    let target = r.version.to_string();
    let sorted: Vec<PublicKey> = nodes.iter().map(|n| n.node).collect();
    let mut out = Vec::new();
    let mut halted = Vec::new();
    for row in nodes {
        let own = |k: NotaryKey| -> anyhow::Result<Option<Value>> {
            Ok(client
                .get(&k)?
                .filter(|rec| rec.author == row.node)
                .map(|rec| rec.body))
        };
        let upgrade = own(NotaryKey::upgrade(&row.node))?;
        let rollback = own(NotaryKey::rollback(&row.node))?;
        if let Some(b) = rollback.as_ref().map(|b| &b["rollback"]) {
            if b["version"].as_str() == Some(&target) {
                halted.push(format!(
                    "node {} rolled back from {target}: {}{}",
                    row.node,
                    b["cause"].as_str().unwrap_or("?"),
                    b["detail"]
                        .as_str()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                ));
            }
        }
        if let Some(u) = &upgrade {
            if u["outcome"] == "refused" && u["version"].as_str() == Some(&target) {
                halted.push(format!(
                    "node {} refused release {target}: {}: {}",
                    row.node,
                    u["code"].as_str().unwrap_or("?"),
                    u["message"].as_str().unwrap_or("")
                ));
            }
        }
        out.push(RolloutNode {
            node: row.node,
            wave: wave_of(&row.node, &sorted, &r.waves),
            version: row.registration.version.clone(),
            upgraded: row.registration.version == target && row.heartbeat.is_some(),
            upgrade,
            rollback,
        });
    }
    Ok(Some(RolloutView {
        rollout: r,
        refused,
        nodes: out,
        halted,
    }))
}

fn wave_text(w: &Wave) -> String {
    match w {
        Wave::Percent(p) => format!("{p}%"),
        Wave::Nodes(n) => n
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join("+"),
    }
}

/// The rollout's lines of `zos farm show`.
pub fn print(view: &RolloutView) -> anyhow::Result<()> {
    let r = &view.rollout;
    let waves: Vec<String> = r.waves.iter().map(wave_text).collect();
    outln!("rollout   {} in waves {}", r.version, waves.join(","))?;
    if let Some(why) = &view.refused {
        outln!("  refused by the nodes: {why}")?;
    }
    let mut by_wave: BTreeMap<usize, Vec<&RolloutNode>> = BTreeMap::new();
    for n in &view.nodes {
        by_wave.entry(n.wave).or_default().push(n);
    }
    // A node's last outcome counts only when it is about this rollout's version.
    let target = r.version.to_string();
    let about_target = |v: &Value| v["version"].as_str() == Some(target.as_str());
    for (wave, nodes) in by_wave {
        for n in nodes {
            let rolled_back = n
                .rollback
                .as_ref()
                .is_some_and(|b| about_target(&b["rollback"]));
            let outcome = n.upgrade.as_ref().filter(|u| about_target(u));
            let state = match outcome {
                _ if n.upgraded => "upgraded".to_string(),
                _ if rolled_back => "rolled back".to_string(),
                Some(u) if u["outcome"] == "refused" => {
                    format!("refused ({})", u["code"].as_str().unwrap_or("?"))
                }
                Some(u) if u["outcome"] == "switching" => "switching".to_string(),
                _ if !view.halted.is_empty() => "halted".to_string(),
                _ => "waiting".to_string(),
            };
            outln!("  wave {wave}  {}  runs {}  {state}", n.node, n.version)?;
        }
    }
    for why in &view.halted {
        outln!("  halted: {why}")?;
    }
    Ok(())
}

/// `VERSION` of `zos farm rollout`.
pub fn parse_version(text: &str) -> anyhow::Result<Version> {
    text.parse()
        .map_err(|e| anyhow::anyhow!("version {text:?}: {e}"))
}
