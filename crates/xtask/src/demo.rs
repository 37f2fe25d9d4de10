//! `cargo xtask demo`: the main job end to end, on a fresh directory notary.
//!
//! Drives the real `zos` binary the way an IT expert, a consumer and two stakeholders
//! would, prints every command and what it said, then shows one refused contract for
//! every refusal reason, each with the node's exact message.

mod booted;
mod node;

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
    if on_etcd {
        packages::ensure(&["etcd-server"])?;
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
        // Steps 1-7, the sample blueprint, and the node booted from the image.
        flow(&demo)
            .and_then(|()| node::sample_blueprint(&demo))
            .and_then(|()| booted::run(&demo))
    } else {
        flow(&demo)
            .and_then(|()| node::run(&demo))
            .and_then(|()| booted::run(&demo))
    };
    drop(etcd);
    if keep {
        let kept = tmp.keep();
        println!("\nkept {}", kept.display());
    }
    result
}

fn flow(d: &Demo) -> anyhow::Result<()> {
    section("1. keys: an IT expert, a consumer (owner), two stakeholders, a node");
    let mut keys = std::collections::BTreeMap::new();
    for who in ["expert", "owner", "legal", "budget", "node", "stranger"] {
        let file = format!("{who}.key");
        keys.insert(who, d.step(&["key", "new", "--out", &file])?);
    }
    let key = |who: &str| keys[who].clone();

    section("2. the expert signs a blueprint");
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

    section("3. the consumer instantiates it for a node, with two stakeholders");
    let legal = format!("{}:2:required", key("legal"));
    let budget = format!("{}:1", key("budget"));
    let new_contract = |out: &str, extra: &[&str]| -> anyhow::Result<String> {
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
    };
    new_contract("c.json", &["--id", "crm-acme"])?;

    section("4. the owner and both stakeholders sign; the contract verifies");
    for who in ["owner", "legal", "budget"] {
        d.step(&["contract", "sign", "c.json", "--key", &format!("{who}.key")])?;
    }
    d.step(&["contract", "verify", "c.json", "--node", &key("node")])?;

    section("5. publish it to the notary; the node's list shows it");
    d.step(&[
        "contract",
        "publish",
        "c.json",
        "--key",
        "owner.key",
        "--notary",
        &d.notary,
    ])?;
    d.step(&[
        "contract",
        "list",
        "--notary",
        &d.notary,
        "--node",
        &key("node"),
    ])?;

    section("6. refusals: one contract for every reason, with the node's message");
    let base = d.read_json("c.json")?;
    let refusals = refusal_cases(d, &base, &keys)?;
    let mut shown = Vec::new();
    for (code, file, extra) in &refusals {
        let mut args = vec!["contract", "verify", file.as_str(), "--node"];
        let node = if *code == "wrong_node" {
            key("stranger")
        } else {
            key("node")
        };
        args.push(&node);
        args.extend(extra.iter().map(String::as_str));
        let out = d.zos(&args)?;
        if out.ok || !out.stdout.contains(&format!("[{code}]")) {
            bail!("{file} was not refused with [{code}]");
        }
        shown.push(*code);
    }
    // Replay is also refused when publishing: the notary holds a newer version.
    new_contract("c2.json", &["--id", "crm-acme", "--version", "2"])?;
    for who in ["owner", "legal", "budget"] {
        d.step(&[
            "contract",
            "sign",
            "c2.json",
            "--key",
            &format!("{who}.key"),
        ])?;
    }
    d.step(&[
        "contract",
        "publish",
        "c2.json",
        "--key",
        "owner.key",
        "--notary",
        &d.notary,
    ])?;
    let replay = d.zos(&[
        "contract",
        "publish",
        "c.json",
        "--key",
        "owner.key",
        "--notary",
        &d.notary,
    ])?;
    if replay.ok {
        bail!("publishing version 1 over version 2 was not refused");
    }
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
    d.step(&[
        "contract",
        "list",
        "--notary",
        &d.notary,
        "--node",
        &key("node"),
    ])?;

    println!(
        "\ndemo complete: steps 1-4 of the flow succeeded; refused with their reasons: {}",
        shown.join(", ")
    );
    Ok(())
}

/// Builds one refused contract per reason: (reason code, file, extra verify args).
fn refusal_cases(
    d: &Demo,
    base: &Value,
    keys: &std::collections::BTreeMap<&str, String>,
) -> anyhow::Result<Vec<(&'static str, String, Vec<String>)>> {
    let mut cases = Vec::new();
    // Writes a variant of the contract, optionally re-signed by `signers`.
    let variant = |name: &str, v: &Value, signers: &[&str]| -> anyhow::Result<String> {
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
    };
    let unsigned = |edit: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        v["signatures"] = json!([]);
        edit(&mut v);
        v
    };
    let all = ["owner", "legal", "budget"];

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
    cases.push(("bad_signature", variant("bad-signature", &v, &[])?, vec![]));

    // An entry that does not count (a stranger's, a repeat) is only a warning while the
    // counted signatures meet the rules (docs/contract-format.md §4): shown here on a
    // contract that also lacks budget's signature, where the rules are unmet and the
    // entry is one of the reasons.
    let short = variant("short-of-budget", &unsigned(&|_| {}), &["owner", "legal"])?;
    let file = variant("unknown-signer", &d.read_json(&short)?, &[])?;
    // The CLI refuses to sign for a stranger, so forge the entry by hand.
    let mut v = d.read_json(&file)?;
    let stranger_sig = v["signatures"][0]["signature"].clone();
    v["signatures"]
        .as_array_mut()
        .unwrap()
        .push(json!({"signer": keys["stranger"], "signature": stranger_sig}));
    cases.push((
        "unknown_signer",
        variant("unknown-signer", &v, &[])?,
        vec![],
    ));

    let mut v = d.read_json(&short)?;
    let first = v["signatures"][0].clone();
    v["signatures"].as_array_mut().unwrap().push(first);
    cases.push((
        "duplicate_signature",
        variant("duplicate-signature", &v, &[])?,
        vec![],
    ));

    cases.push((
        "owner_signature_missing",
        variant("owner-missing", &unsigned(&|_| {}), &["legal", "budget"])?,
        vec![],
    ));
    cases.push((
        "required_signer_missing",
        variant("legal-missing", &unsigned(&|_| {}), &["owner", "budget"])?,
        vec![],
    ));
    let optional_legal = unsigned(&|v| v["contract"]["stakeholders"][0]["required"] = json!(false));
    cases.push((
        "threshold_not_met",
        variant("under-threshold", &optional_legal, &["owner", "budget"])?,
        vec![],
    ));
    let too_many = unsigned(&|v| v["contract"]["params"]["users"] = json!(5000));
    cases.push((
        "param_out_of_bounds",
        variant("too-many-users", &too_many, &all)?,
        vec![],
    ));
    let tampered_bp = unsigned(&|v| {
        v["contract"]["blueprint"]["embedded"]["blueprint"]["body"]["workloads"][0]["cpu"] =
            json!(64)
    });
    cases.push((
        "blueprint_signature_invalid",
        variant("tampered-blueprint", &tampered_bp, &all)?,
        vec![],
    ));
    let by_digest = unsigned(&|v| {
        v["contract"]["blueprint"] = json!({"sha256": "00".repeat(32)});
    });
    cases.push((
        "blueprint_unresolved",
        variant("unknown-blueprint", &by_digest, &all)?,
        vec![],
    ));
    cases.push((
        "blueprint_author_untrusted",
        variant("untrusted-author", base, &[])?,
        vec!["--trusted-author".into(), keys["stranger"].clone()],
    ));
    let early = unsigned(&|v| v["contract"]["not_before"] = json!(4_000_000_000u64));
    let early = {
        let mut e = early;
        e["contract"]["expires"] = json!(4_100_000_000u64);
        e
    };
    cases.push((
        "not_yet_valid",
        variant("not-yet-valid", &early, &all)?,
        vec![],
    ));
    let expired = unsigned(&|v| v["contract"]["expires"] = json!(1_000_000_000u64));
    cases.push(("expired", variant("expired", &expired, &all)?, vec![]));
    cases.push(("wrong_node", variant("wrong-node", base, &[])?, vec![]));
    let unknown_field = unsigned(&|v| v["contract"]["workloads"] = json!([{"name": "miner"}]));
    cases.push((
        "malformed",
        variant("free-form-workload", &unknown_field, &[])?,
        vec![],
    ));
    let huge = unsigned(&|v| v["contract"]["params"]["pad"] = json!("x".repeat(300_000)));
    cases.push(("oversized", variant("oversized", &huge, &[])?, vec![]));
    cases.push((
        "invalid_deployment",
        invalid_deployment_case(d, keys)?,
        vec![],
    ));
    Ok(cases)
}

/// A blueprint that is valid for its example values but not for users=1000, and a
/// contract using that value.
fn invalid_deployment_case(
    d: &Demo,
    keys: &std::collections::BTreeMap<&str, String>,
) -> anyhow::Result<String> {
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
