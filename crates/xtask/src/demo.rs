//! `cargo xtask demo`: the main job end to end, on a fresh directory notary.
//!
//! Drives the real `zos` binary the way an IT expert, a consumer and two stakeholders
//! would, prints every command and what it said, then shows one refused contract for
//! every refusal reason, each with the node's exact message.

mod booted;
mod grid;
mod node;
mod upgrade;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::etcd::Etcd;
use crate::{cargo, packages, root, target_dir};

struct Demo {
    zos: PathBuf,
    dir: PathBuf,
    notary: String,
}

/// What a command printed and how it ended.
struct Output {
    ok: bool,
    stdout: String,
}

impl Demo {
    /// Runs `zos args…` in the demo directory, printing the command and its output.
    fn zos(&self, args: &[&str]) -> anyhow::Result<Output> {
        println!("\n$ zos {}", args.join(" "));
        let out = Command::new(&self.zos)
            .args(args)
            .current_dir(&self.dir)
            .output()
            .with_context(|| format!("running {}", self.zos.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        for line in stdout.lines().chain(stderr.lines()) {
            println!("  {line}");
        }
        Ok(Output {
            ok: out.status.success(),
            stdout,
        })
    }

    /// Like [`Demo::zos`], but the step must succeed.
    fn step(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.zos(args)?;
        if !out.ok {
            bail!("demo step failed: zos {}", args.join(" "));
        }
        Ok(out.stdout.trim().to_string())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn read_json(&self, name: &str) -> anyhow::Result<Value> {
        Ok(serde_json::from_slice(&std::fs::read(self.path(name))?)?)
    }

    fn write_json(&self, name: &str, v: &Value) -> anyhow::Result<()> {
        std::fs::write(self.path(name), serde_json::to_vec_pretty(v)?)?;
        Ok(())
    }
}

fn section(title: &str) {
    println!("\n== {title} ==");
}

/// `cargo xtask demo [--etcd] [--keep] [--booted-only]`: runs the demo (see the module
/// docs).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut keep = false;
    let mut on_etcd = false;
    let mut booted_only = false;
    for arg in args {
        match arg.as_str() {
            "--keep" => keep = true,
            "--etcd" => on_etcd = true,
            "--booted-only" => booted_only = true,
            other => bail!(
                "cargo xtask demo: unknown option {other:?} (options: --etcd, --keep, --booted-only)"
            ),
        }
    }
    packages::ensure(packages::DEMO_PACKAGES)?;
    cargo(&["build", "--quiet", "-p", "zos-cli"])?;
    let tmp = tempfile::Builder::new().prefix("zos-demo-").tempdir()?;
    let dir = tmp.path().to_path_buf();
    // Declared before the result is computed, so etcd outlives the flow.
    let etcd = if on_etcd {
        Some(Etcd::start(&dir)?)
    } else {
        None
    };
    let notary = match &etcd {
        Some(etcd) => format!("etcd://{}/demo", etcd.client),
        None => format!("dir://{}", dir.join("notary").display()),
    };
    let demo = Demo {
        zos: target_dir().join("debug/zos"),
        notary,
        dir,
    };
    println!(
        "zosd demo in {} (notary {})",
        demo.dir.display(),
        demo.notary
    );
    let result = if booted_only {
        // Steps 1-7, the sample blueprint, the node booted from the image, the booted
        // farms (the mesh, the upgrade).
        flow(&demo)
            .and_then(|()| node::sample_blueprint(&demo))
            .and_then(|()| booted::run(&demo))
            .and_then(|()| grid::run_booted())
            .and_then(|()| upgrade::run())
    } else {
        flow(&demo)
            .and_then(|()| node::run(&demo))
            .and_then(|()| grid::run(&demo))
            .and_then(|()| booted::run(&demo))
            .and_then(|()| grid::run_booted())
            .and_then(|()| upgrade::run())
    };
    drop(etcd);
    if keep {
        let kept = tmp.keep();
        println!("\nkept {}", kept.display());
    }
    result
}

/// Everyone's keys, by role: `expert`, `owner`, `legal`, `budget`, `node`, `stranger`.
type Keys = std::collections::BTreeMap<&'static str, String>;

/// A refused contract: (reason code, file, extra verify args).
type Refusal = (&'static str, String, Vec<String>);

/// The three who sign a contract for it to hold: the owner and both stakeholders.
const SIGNERS: [&str; 3] = ["owner", "legal", "budget"];

fn flow(d: &Demo) -> anyhow::Result<()> {
    section("1. keys: an IT expert, a consumer (owner), two stakeholders, a node");
    let keys = new_keys(d)?;

    section("2. the expert signs a blueprint");
    sign_blueprint(d)?;

    section("3. the consumer instantiates it for a node, with two stakeholders");
    new_contract(d, &keys, "c.json", &["--id", "crm-acme"])?;

    section("4. the owner and both stakeholders sign; the contract verifies");
    sign_by_all(d, "c.json")?;
    d.step(&["contract", "verify", "c.json", "--node", &keys["node"]])?;

    section("5. publish it to the notary; the node's list shows it");
    publish(d, "c.json")?;
    list(d, &keys)?;

    section("6. refusals: one contract for every reason, with the node's message");
    let mut shown = show_refusals(d, &keys)?;
    show_replay_refused(d, &keys)?;
    shown.push("replay");

    section("7. the owner cancels the contract");
    d.step(&[
        "contract",
        "cancel",
        "crm-acme",
        "--key",
        "owner.key",
        "--notary",
        &d.notary,
    ])?;
    list(d, &keys)?;

    println!(
        "\ndemo complete: steps 1-4 of the flow succeeded; refused with their reasons: {}",
        shown.join(", ")
    );
    Ok(())
}

/// Step 1: a new key for every role, each in `<role>.key`.
fn new_keys(d: &Demo) -> anyhow::Result<Keys> {
    let mut keys = Keys::new();
    for who in ["expert", "owner", "legal", "budget", "node", "stranger"] {
        let file = format!("{who}.key");
        keys.insert(who, d.step(&["key", "new", "--out", &file])?);
    }
    Ok(keys)
}

/// Step 2: the example blueprint, signed by the expert into `crm.blueprint.json`.
fn sign_blueprint(d: &Demo) -> anyhow::Result<()> {
    let source = root().join("docs/examples/crm.blueprint.toml");
    std::fs::copy(&source, d.path("crm.blueprint.toml"))?;
    d.step(&[
        "blueprint",
        "sign",
        "crm.blueprint.toml",
        "--key",
        "expert.key",
        "-o",
        "crm.blueprint.json",
    ])?;
    d.step(&["blueprint", "show", "crm.blueprint.json"])?;
    Ok(())
}

/// The consumer's contract for the node, with legal (weight 2, required) and budget
/// (weight 1) as stakeholders, into `out`; `extra` are more `contract new` arguments.
fn new_contract(d: &Demo, keys: &Keys, out: &str, extra: &[&str]) -> anyhow::Result<String> {
    let legal = format!("{}:2:required", keys["legal"]);
    let budget = format!("{}:1", keys["budget"]);
    let mut args = vec![
        "contract",
        "new",
        "--blueprint",
        "crm.blueprint.json",
        "--param",
        "users=100",
        "--owner",
        &keys["owner"],
        "--node",
        &keys["node"],
        "--stakeholder",
        &legal,
        "--stakeholder",
        &budget,
        "--threshold",
        "3",
        "--expires",
        "30d",
        "-o",
        out,
    ];
    args.extend(extra);
    d.step(&args)
}

/// The owner and both stakeholders sign `file`.
fn sign_by_all(d: &Demo, file: &str) -> anyhow::Result<()> {
    for who in SIGNERS {
        d.step(&["contract", "sign", file, "--key", &format!("{who}.key")])?;
    }
    Ok(())
}

/// `zos contract publish file` as the owner.
fn publish_args<'a>(d: &'a Demo, file: &'a str) -> [&'a str; 7] {
    [
        "contract",
        "publish",
        file,
        "--key",
        "owner.key",
        "--notary",
        &d.notary,
    ]
}

/// Publishes `file` as the owner; the step must succeed.
fn publish(d: &Demo, file: &str) -> anyhow::Result<()> {
    d.step(&publish_args(d, file))?;
    Ok(())
}

/// The node's contract list.
fn list(d: &Demo, keys: &Keys) -> anyhow::Result<()> {
    d.step(&[
        "contract",
        "list",
        "--notary",
        &d.notary,
        "--node",
        &keys["node"],
    ])?;
    Ok(())
}

/// Step 6: every refused contract of [`refusal_cases`] verified for the node (the
/// wrong-node one for a stranger's key), each refused with its own reason code. Returns
/// the codes shown.
fn show_refusals(d: &Demo, keys: &Keys) -> anyhow::Result<Vec<&'static str>> {
    let base = d.read_json("c.json")?;
    let refusals = refusal_cases(d, &base, keys)?;
    let mut shown = Vec::new();
    for (code, file, extra) in &refusals {
        let mut args = vec!["contract", "verify", file.as_str(), "--node"];
        let node = if *code == "wrong_node" {
            keys["stranger"].clone()
        } else {
            keys["node"].clone()
        };
        args.push(&node);
        args.extend(extra.iter().map(String::as_str));
        let out = d.zos(&args)?;
        if out.ok || !out.stdout.contains(&format!("[{code}]")) {
            bail!("{file} was not refused with [{code}]");
        }
        shown.push(*code);
    }
    Ok(shown)
}

/// Replay is also refused when publishing: once the notary holds version 2, publishing
/// version 1 again fails.
fn show_replay_refused(d: &Demo, keys: &Keys) -> anyhow::Result<()> {
    new_contract(d, keys, "c2.json", &["--id", "crm-acme", "--version", "2"])?;
    sign_by_all(d, "c2.json")?;
    publish(d, "c2.json")?;
    if d.zos(&publish_args(d, "c.json"))?.ok {
        bail!("publishing version 1 over version 2 was not refused");
    }
    Ok(())
}

/// Builds one refused contract per reason, in the order they are shown.
fn refusal_cases(d: &Demo, base: &Value, keys: &Keys) -> anyhow::Result<Vec<Refusal>> {
    let mut cases = signature_cases(d, base, keys)?;
    cases.extend(signer_rule_cases(d, base)?);
    cases.extend(content_cases(d, base, keys)?);
    cases.extend(validity_cases(d, base)?);
    cases.extend(shape_cases(d, base)?);
    cases.push((
        "invalid_deployment",
        invalid_deployment_case(d, keys)?,
        vec![],
    ));
    Ok(cases)
}

/// Writes `refused-<name>.json`, a variant of the contract, signed by `signers` (by
/// role); returns its file name.
fn variant(d: &Demo, name: &str, v: &Value, signers: &[&str]) -> anyhow::Result<String> {
    let file = format!("refused-{name}.json");
    d.write_json(&file, v)?;
    for who in signers {
        let out = Command::new(&d.zos)
            .args(["contract", "sign", &file, "--key", &format!("{who}.key")])
            .current_dir(&d.dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "signing {file} as {who}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Ok(file)
}

/// The contract without its signatures, edited by `edit`.
fn unsigned(base: &Value, edit: &dyn Fn(&mut Value)) -> Value {
    let mut v = base.clone();
    v["signatures"] = json!([]);
    edit(&mut v);
    v
}

/// Signature entries that are wrong: a flipped bit, a stranger's, a repeat.
fn signature_cases(d: &Demo, base: &Value, keys: &Keys) -> anyhow::Result<Vec<Refusal>> {
    let mut cases = Vec::new();
    let mut v = base.clone();
    let sig = v["signatures"][1]["signature"]
        .as_str()
        .unwrap()
        .to_string();
    let flipped = format!(
        "{}{}",
        if sig.starts_with('0') { "1" } else { "0" },
        &sig[1..]
    );
    v["signatures"][1]["signature"] = json!(flipped);
    cases.push((
        "bad_signature",
        variant(d, "bad-signature", &v, &[])?,
        vec![],
    ));

    // An entry that does not count (a stranger's, a repeat) is only a warning while the
    // counted signatures meet the rules (docs/contract-format.md §4): shown here on a
    // contract that also lacks budget's signature, where the rules are unmet and the
    // entry is one of the reasons.
    let short = variant(
        d,
        "short-of-budget",
        &unsigned(base, &|_| {}),
        &["owner", "legal"],
    )?;
    let file = variant(d, "unknown-signer", &d.read_json(&short)?, &[])?;
    // The CLI refuses to sign for a stranger, so forge the entry by hand.
    let mut v = d.read_json(&file)?;
    let stranger_sig = v["signatures"][0]["signature"].clone();
    v["signatures"]
        .as_array_mut()
        .unwrap()
        .push(json!({"signer": keys["stranger"], "signature": stranger_sig}));
    cases.push((
        "unknown_signer",
        variant(d, "unknown-signer", &v, &[])?,
        vec![],
    ));

    let mut v = d.read_json(&short)?;
    let first = v["signatures"][0].clone();
    v["signatures"].as_array_mut().unwrap().push(first);
    cases.push((
        "duplicate_signature",
        variant(d, "duplicate-signature", &v, &[])?,
        vec![],
    ));
    Ok(cases)
}

/// Signatures that do not meet the contract's rules: the owner's or a required
/// stakeholder's missing, the weights under the threshold.
fn signer_rule_cases(d: &Demo, base: &Value) -> anyhow::Result<Vec<Refusal>> {
    let optional_legal = unsigned(base, &|v| {
        v["contract"]["stakeholders"][0]["required"] = json!(false)
    });
    Ok(vec![
        (
            "owner_signature_missing",
            variant(
                d,
                "owner-missing",
                &unsigned(base, &|_| {}),
                &["legal", "budget"],
            )?,
            vec![],
        ),
        (
            "required_signer_missing",
            variant(
                d,
                "legal-missing",
                &unsigned(base, &|_| {}),
                &["owner", "budget"],
            )?,
            vec![],
        ),
        (
            "threshold_not_met",
            variant(d, "under-threshold", &optional_legal, &["owner", "budget"])?,
            vec![],
        ),
    ])
}

/// Signed by everyone, but what is signed is wrong: a parameter out of its bounds, a
/// tampered, unknown or untrusted blueprint.
fn content_cases(d: &Demo, base: &Value, keys: &Keys) -> anyhow::Result<Vec<Refusal>> {
    let too_many = unsigned(base, &|v| v["contract"]["params"]["users"] = json!(5000));
    let tampered_bp = unsigned(base, &|v| {
        v["contract"]["blueprint"]["embedded"]["blueprint"]["body"]["workloads"][0]["cpu"] =
            json!(64)
    });
    let by_digest = unsigned(base, &|v| {
        v["contract"]["blueprint"] = json!({"sha256": "00".repeat(32)});
    });
    Ok(vec![
        (
            "param_out_of_bounds",
            variant(d, "too-many-users", &too_many, &SIGNERS)?,
            vec![],
        ),
        (
            "blueprint_signature_invalid",
            variant(d, "tampered-blueprint", &tampered_bp, &SIGNERS)?,
            vec![],
        ),
        (
            "blueprint_unresolved",
            variant(d, "unknown-blueprint", &by_digest, &SIGNERS)?,
            vec![],
        ),
        (
            "blueprint_author_untrusted",
            variant(d, "untrusted-author", base, &[])?,
            vec!["--trusted-author".into(), keys["stranger"].clone()],
        ),
    ])
}

/// Not for now or not for this node: not yet valid, expired, for another node.
fn validity_cases(d: &Demo, base: &Value) -> anyhow::Result<Vec<Refusal>> {
    let early = unsigned(base, &|v| {
        v["contract"]["not_before"] = json!(4_000_000_000u64);
        v["contract"]["expires"] = json!(4_100_000_000u64);
    });
    let expired = unsigned(base, &|v| {
        v["contract"]["expires"] = json!(1_000_000_000u64)
    });
    Ok(vec![
        (
            "not_yet_valid",
            variant(d, "not-yet-valid", &early, &SIGNERS)?,
            vec![],
        ),
        (
            "expired",
            variant(d, "expired", &expired, &SIGNERS)?,
            vec![],
        ),
        ("wrong_node", variant(d, "wrong-node", base, &[])?, vec![]),
    ])
}

/// Documents the node does not read at all: an unknown field, too many bytes.
fn shape_cases(d: &Demo, base: &Value) -> anyhow::Result<Vec<Refusal>> {
    let unknown_field = unsigned(base, &|v| {
        v["contract"]["workloads"] = json!([{"name": "miner"}])
    });
    let huge = unsigned(base, &|v| {
        v["contract"]["params"]["pad"] = json!("x".repeat(300_000))
    });
    Ok(vec![
        (
            "malformed",
            variant(d, "free-form-workload", &unknown_field, &[])?,
            vec![],
        ),
        ("oversized", variant(d, "oversized", &huge, &[])?, vec![]),
    ])
}

/// A blueprint that is valid for its example values but not for users=1000, and a
/// contract using that value.
fn invalid_deployment_case(d: &Demo, keys: &Keys) -> anyhow::Result<String> {
    let source = std::fs::read_to_string(d.path("crm.blueprint.toml"))?;
    let edited = source.replace(
        "memory_mib = \"{{ 32 + users / 10 }}\"",
        "memory_mib = \"{{ 1010 - users }}\"",
    );
    if edited == source {
        bail!(
            "docs/examples/crm.blueprint.toml changed: update the demo's invalid_deployment case"
        );
    }
    std::fs::write(d.path("fragile.blueprint.toml"), edited)?;
    run_quiet(
        d,
        &[
            "blueprint",
            "sign",
            "fragile.blueprint.toml",
            "--key",
            "expert.key",
            "-o",
            "fragile.blueprint.json",
        ],
    )?;
    run_quiet(
        d,
        &[
            "contract",
            "new",
            "--blueprint",
            "fragile.blueprint.json",
            "--param",
            "users=1000",
            "--owner",
            &keys["owner"],
            "--node",
            &keys["node"],
            "--id",
            "fragile",
            "-o",
            "refused-invalid-deployment.json",
        ],
    )?;
    run_quiet(
        d,
        &[
            "contract",
            "sign",
            "refused-invalid-deployment.json",
            "--key",
            "owner.key",
        ],
    )?;
    Ok("refused-invalid-deployment.json".into())
}

fn run_quiet(d: &Demo, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(&d.zos)
        .args(args)
        .current_dir(&d.dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "zos {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
