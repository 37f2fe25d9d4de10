//! `zos blueprint`: sign and inspect blueprints.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use zos_contract::{Blueprint, Limits, SecretKey, SignedBlueprint};

use crate::output::{note, outln, write_new_or_stdout, Format};

#[derive(Debug, Subcommand)]
pub enum BlueprintCmd {
    /// Sign a blueprint written in TOML (or JSON) as its IT expert.
    ///
    /// The blueprint's parameters are checked, and its body must expand to a valid
    /// deployment with example values, before anything is signed. Prints the
    /// blueprint's digest: its identity in the notary.
    ///
    /// Example: zos blueprint sign crm.blueprint.toml --key expert.key -o crm.blueprint.json
    Sign {
        /// The unsigned blueprint (.toml or .json).
        source: PathBuf,
        /// The expert's secret key.
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed blueprint (JSON); stdout if absent.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Check a signed blueprint and show its digest, author and parameters.
    ///
    /// Example: zos blueprint show crm.blueprint.json --json
    Show {
        file: PathBuf,
        #[command(flatten)]
        format: Format,
    },
    /// Publish a signed blueprint to a notary under blueprints/<digest>, so contracts
    /// can name it by digest (`zos contract new --by-digest`).
    ///
    /// Example: zos blueprint publish crm.blueprint.json --key expert.key --notary dir:///srv/notary
    Publish {
        file: PathBuf,
        /// The publisher's secret key (the record's author; the blueprint keeps its own
        /// expert signature).
        #[arg(long)]
        key: PathBuf,
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
    },
}

pub fn run(cmd: BlueprintCmd) -> anyhow::Result<()> {
    match cmd {
        BlueprintCmd::Sign { source, key, out } => {
            let blueprint = read_unsigned(&source)?;
            let key = SecretKey::load(&key)?;
            let signed = blueprint.sign(&key, &Limits::default())?;
            write_new_or_stdout(out.as_deref(), &signed.to_pretty())?;
            note!(
                "signed blueprint {} {} by {}\ndigest {}",
                signed.blueprint.name,
                signed.blueprint.version,
                signed.author,
                signed.digest
            );
        }
        BlueprintCmd::Show { file, format } => show(&file, &format)?,
        BlueprintCmd::Publish { file, key, notary } => {
            let signed = read_signed(&file)?;
            let key = SecretKey::load(&key)?;
            let client = crate::notary::Client::open(&notary)?;
            let nkey = zos_notary::NotaryKey::blueprint(&signed.digest);
            client.put(&zos_notary::Record::sign(&nkey, signed.to_value(), &key)?)?;
            outln!(
                "published blueprint {} {} as {nkey}",
                signed.blueprint.name,
                signed.blueprint.version
            )?;
        }
    }
    Ok(())
}

/// `zos blueprint show`: the signed blueprint, its signature checked.
fn show(file: &Path, format: &crate::output::Format) -> anyhow::Result<()> {
    let signed = read_signed(file)?;
    if format.json {
        return crate::output::json(&serde_json::json!({
            "digest": signed.digest,
            "author": signed.author,
            "name": signed.blueprint.name,
            "version": signed.blueprint.version,
            "params": signed.blueprint.params,
        }));
    }
    let b = &signed.blueprint;
    outln!("blueprint {} {}", b.name, b.version)?;
    outln!("digest    {}", signed.digest)?;
    outln!("author    {} (signature OK)", signed.author)?;
    for (name, spec) in &b.params {
        outln!("param     {name}: {}", serde_json::to_string(spec)?)?;
    }
    Ok(())
}

/// Reads an unsigned blueprint from TOML or JSON.
fn read_unsigned(path: &Path) -> anyhow::Result<Blueprint> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value = if path.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text)?
    } else {
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?
    };
    serde_path_to_error::deserialize(&value)
        .map_err(|e| anyhow::anyhow!("{}: at {}: {}", path.display(), e.path(), e.inner()))
}

/// Reads and checks a signed blueprint.
pub fn read_signed(path: &Path) -> anyhow::Result<SignedBlueprint> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    SignedBlueprint::from_bytes(&bytes, &Limits::default())
        .with_context(|| format!("{} is not a valid signed blueprint", path.display()))
}
