//! `zos support request|fetch`: support bundles by signed request (docs/diagnostics.md),
//! and the request/answer plumbing `zos probe` shares.
//!
//! A request is a record at `nodes/<node>/requests/<id>` signed by the one who asks; the
//! node answers at `nodes/<node>/answers/<id>`, signed with its key (the notary refuses
//! an answer signed by anyone else). The bundle rides inline, base64, with its sha256.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine as _;
use clap::Subcommand;
use serde_json::{json, Value};
use zos_contract::{Digest, PublicKey, SecretKey};
use zos_notary::record::{DiagAnswer, DiagOutcome, DiagScope, MAX_REQUEST_WINDOW};
use zos_notary::{NotaryKey, Record};
use zos_probe::{ProbeResult, ProbeSpec};

use crate::notary::Client;
use crate::output::{json as print_json, note, outln, Format};

/// An answer as the CLI reads it.
pub type Answer = DiagAnswer<ProbeResult>;

#[derive(Debug, Subcommand)]
pub enum SupportCmd {
    /// Ask a node for a support bundle; prints the request id.
    ///
    /// Signed with --key: the farmer of the node's farm gets the node's bundle (state,
    /// journal, heartbeats, refusals, kernel log, pools, links, routes, nft, mounts); a
    /// contract's owner gets, with --contract, that contract's status and its workloads'
    /// logs only. Fetch the answer with `zos support fetch`.
    ///
    /// Examples: zos support request <node_pub> --key farmer.key --notary dir:///srv/notary
    ///           zos support request <node_pub> --key owner.key --contract crm-acme --notary etcd://127.0.0.1:2379
    Request {
        /// The node's public key (hex).
        node: PublicKey,
        /// The requester's key: the farmer's, or the contract owner's with --contract.
        #[arg(long)]
        key: PathBuf,
        /// dir:///path or etcd://host:port[/prefix].
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
        /// A bundle of this contract only (its owner may ask).
        #[arg(long)]
        contract: Option<String>,
        /// How long the node may still take it up, in seconds (at most 3600).
        #[arg(long, default_value_t = 600)]
        valid_secs: u64,
    },
    /// Wait for a node's answer to a support request, verify it, and write the bundle.
    ///
    /// The answer must be signed by NODE and answer that very request; the bundle's
    /// sha256 must match. A refusal is printed with its code and the command fails.
    ///
    /// Examples: zos support fetch <node_pub> --id r-1a2b3c4d5e6f7a8b -o bundle.tar.zst --notary dir:///srv/notary --wait 60
    ///           zos support fetch <node_pub> --id r-1a2b3c4d5e6f7a8b --unpack ./bundle --notary dir:///srv/notary
    Fetch {
        /// The node's public key (hex).
        node: PublicKey,
        /// The request id `zos support request` printed.
        #[arg(long)]
        id: String,
        /// Write the bundle (tar.zst) here.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Unpack the bundle into this directory (checked: no path leaves it).
        #[arg(long)]
        unpack: Option<PathBuf>,
        /// dir:///path or etcd://host:port[/prefix].
        #[arg(long, env = "ZOS_NOTARY")]
        notary: String,
        /// Wait up to this many seconds for the answer (0: only look once). A bundle
        /// takes the node a few seconds to build.
        #[arg(long, default_value_t = 60)]
        wait: u64,
        #[command(flatten)]
        format: Format,
    },
}

pub fn run(cmd: SupportCmd) -> anyhow::Result<()> {
    match cmd {
        SupportCmd::Request {
            node,
            key,
            notary,
            contract,
            valid_secs,
        } => {
            let key = SecretKey::load(&key)?;
            let client = Client::open(&notary)?;
            let scope = match contract {
                Some(c) => DiagScope::Contract(c),
                None => DiagScope::Node,
            };
            let id = publish(
                &client,
                &node,
                &key,
                &scope,
                json!("support_bundle"),
                valid_secs,
            )?;
            // A write: the id, for `zos support fetch --id`.
            outln!("{id}")
        }
        SupportCmd::Fetch {
            node,
            id,
            output,
            unpack,
            notary,
            wait,
            format,
        } => {
            if output.is_none() && unpack.is_none() {
                bail!("say where the bundle goes: -o FILE, --unpack DIR, or both");
            }
            let client = Client::open(&notary)?;
            let answer = wait_answer(&client, &node, &id, Duration::from_secs(wait))?;
            let bundle = match answer.outcome() {
                Some(DiagOutcome::Bundle(b)) => b,
                Some(DiagOutcome::Refused(code, reason)) => {
                    bail!("node {node} refused request {id} ({code}): {reason}")
                }
                Some(DiagOutcome::Probe(_)) => bail!("request {id} was a probe: use zos probe"),
                None => bail!("the answer to {id} says nothing usable"),
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&bundle.data)
                .context("the bundle is not base64")?;
            if Digest::of(&bytes) != bundle.sha256 || bytes.len() as u64 != bundle.size {
                bail!("the bundle does not match the sha256 and size the node signed");
            }
            if let Some(path) = &output {
                write_file(path, &bytes)?;
                note!("wrote {} ({} bytes)", path.display(), bytes.len());
            }
            if let Some(dir) = &unpack {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let manifest = zos_support::unpack(&bytes, dir)
                    .with_context(|| format!("unpacking into {}", dir.display()))?;
                note!(
                    "unpacked {} parts into {}",
                    manifest.parts.len(),
                    dir.display()
                );
            }
            if format.json {
                print_json(&json!({
                    "id": id,
                    "node": node,
                    "sha256": bundle.sha256,
                    "size": bundle.size,
                    "manifest": bundle.manifest,
                    "output": output,
                    "unpacked": unpack,
                }))
            } else {
                for part in bundle.manifest["parts"].as_array().into_iter().flatten() {
                    let name = part["name"].as_str().unwrap_or("?");
                    match part["error"].as_str() {
                        Some(e) => outln!("{name}: {e}")?,
                        None => outln!("{name}: {} bytes", part["bytes"])?,
                    }
                }
                Ok(())
            }
        }
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A fresh request id: `r-` and 16 random hex characters.
fn new_id() -> anyhow::Result<String> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random source: {e}"))?;
    Ok(format!("r-{}", hex::encode(b)))
}

/// Signs and publishes a request to `node`; returns its id.
pub(crate) fn publish(
    client: &Client,
    node: &PublicKey,
    key: &SecretKey,
    scope: &DiagScope,
    action: Value,
    valid_secs: u64,
) -> anyhow::Result<String> {
    if valid_secs == 0 || valid_secs > MAX_REQUEST_WINDOW {
        bail!("--valid-secs must be 1 to {MAX_REQUEST_WINDOW}");
    }
    let id = new_id()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_secs();
    let body = json!({
        "id": id,
        "node": node,
        "scope": scope,
        "action": action,
        "issued_at": now,
        "expires_at": now + valid_secs,
    });
    let rkey = NotaryKey::request(node, &id)?;
    client.put(&Record::sign(&rkey, body, key)?)?;
    Ok(id)
}

/// Waits up to `wait` for `node`'s answer to `id`, and checks it answers the request
/// the notary holds (when it still holds it).
pub(crate) fn wait_answer(
    client: &Client,
    node: &PublicKey,
    id: &str,
    wait: Duration,
) -> anyhow::Result<Answer> {
    let akey = NotaryKey::answer(node, id)?;
    let deadline = Instant::now() + wait;
    let record = loop {
        // The notary verifies the record: an answer key is the node's alone.
        if let Some(r) = client.get(&akey)? {
            break r;
        }
        if Instant::now() >= deadline {
            bail!("node {node} has not answered {id} yet (try --wait SECS)");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if record.author != *node {
        bail!("the answer to {id} is not signed by node {node}");
    }
    let answer: Answer = serde_json::from_value(record.body).context("reading the answer")?;
    if answer.id != id {
        bail!("the answer names request {:?}, not {id}", answer.id);
    }
    if let Some(req) = client.get(&NotaryKey::request(node, id)?)? {
        if req.signing_digest()? != answer.request {
            bail!("the answer to {id} is for another request than the one published under that id");
        }
    }
    Ok(answer)
}

/// A probe request's action.
pub(crate) fn probe_action(spec: &ProbeSpec) -> anyhow::Result<Value> {
    Ok(json!({ "probe": serde_json::to_value(spec)? }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_notary::record::{DiagRefusal, RefusalCode};

    fn sk(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    /// A request published through a real dir:// notary, answered by the node's key:
    /// the CLI takes the node's answer to that request and nothing else.
    #[test]
    fn fetch_takes_only_the_nodes_answer_to_that_request() {
        let dir = zos_testkit::tempdir("cli-support");
        let client = Client::open(&format!("dir://{}", dir.path().display())).unwrap();
        let (node, farmer) = (sk(1), sk(2));
        let id = publish(
            &client,
            &node.public(),
            &farmer,
            &DiagScope::Node,
            json!("support_bundle"),
            600,
        )
        .unwrap();
        assert!(id.starts_with("r-") && id.len() == 18, "{id}");
        let req = client
            .get(&NotaryKey::request(&node.public(), &id).unwrap())
            .unwrap()
            .unwrap();
        let body: zos_notary::record::DiagRequest<ProbeSpec> =
            serde_json::from_value(req.body.clone()).unwrap();
        assert_eq!(body.expires_at - body.issued_at, 600);
        // Not answered yet: a bounded wait says so.
        let e = wait_answer(&client, &node.public(), &id, Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("has not answered"), "{e}");

        // An answer for another request under this id is refused.
        let akey = NotaryKey::answer(&node.public(), &id).unwrap();
        let refusal = |digest| {
            serde_json::to_value(Answer::refusal(
                &id,
                digest,
                1,
                DiagRefusal::new(RefusalCode::Busy, "later"),
            ))
            .unwrap()
        };
        let other = Record::sign(&akey, refusal(Digest::of(b"another")), &node).unwrap();
        client.put(&other).unwrap();
        let e = wait_answer(&client, &node.public(), &id, Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("another request"), "{e}");
        // The node's answer to this request is taken.
        let real = Record::sign(&akey, refusal(req.signing_digest().unwrap()), &node).unwrap();
        client.put(&real).unwrap();
        let a = wait_answer(&client, &node.public(), &id, Duration::ZERO).unwrap();
        assert_eq!(a.refused, Some(RefusalCode::Busy));
        // Nobody else can answer for the node: the notary refuses the write.
        let forged = Record::sign(&akey, refusal(req.signing_digest().unwrap()), &farmer).unwrap();
        assert!(client.put(&forged).is_err());
    }
}
