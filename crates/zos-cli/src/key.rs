//! `zos key`: make and inspect ed25519 keys.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use zos_contract::SecretKey;

use crate::output::{outln, Format};

#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Make a new ed25519 key; print its public key.
    ///
    /// The file is created mode 0600 and is never overwritten.
    ///
    /// Example: zos key new --out expert.key
    New {
        /// Where to write the secret key.
        #[arg(long, short)]
        out: PathBuf,
    },
    /// Print the public key of a secret key file.
    ///
    /// Example: zos key show expert.key --json
    Show {
        key: PathBuf,
        #[command(flatten)]
        format: Format,
    },
}

pub fn run(cmd: KeyCmd) -> anyhow::Result<()> {
    match cmd {
        KeyCmd::New { out } => {
            let key = SecretKey::generate()?;
            key.save_new(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            outln!("{}", key.public())?;
        }
        KeyCmd::Show { key: path, format } => {
            let public = SecretKey::load(&path)?.public();
            if format.json {
                crate::output::json(&serde_json::json!({
                    "key": path,
                    "public": public,
                }))?;
            } else {
                outln!("{public}")?;
            }
        }
    }
    Ok(())
}
