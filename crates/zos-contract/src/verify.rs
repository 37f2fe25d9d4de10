//! Contract verification: everything a node checks before it deploys anything.
//!
//! [`verify`] never stops at the first problem: a refusal names every reason it found,
//! so the owner fixes the contract once. Each [`Reason`] has a stable `code()` for
//! status records and scripts.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::blueprint::{BlueprintError, LimitsChecked, ReadBlueprint, SignedBlueprint};
use crate::contract::{BlueprintRef, SignedCancellation, SignedContract};
use crate::crypto::{self, Digest, PublicKey, VerifiedTriples};
use crate::deployment::Deployment;
use crate::document::DocError;
use crate::limits::Limits;
use crate::params::{self, ParamError};

/// One reason to refuse a contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum Reason {
    /// The document is not valid JSON, not the shape the spec defines, or breaks a rule
    /// on its id, version, nodes, stakeholders, threshold or validity window.
    #[error("malformed at {path}: {message}")]
    Malformed {
        /// The JSON path of the first problem.
        path: String,
        /// What is wrong there.
        message: String,
    },
    /// A [`Limits`] bound is broken.
    #[error("oversized: {what} is {actual}, the limit is {limit} (at {path})")]
    Oversized {
        /// Which bound: `document size`, `string length`, `signature count`, ...
        what: String,
        /// The bound, in the unit of `what` (bytes, characters, items, levels).
        limit: usize,
        /// What the document has, in the same unit.
        actual: usize,
        /// The JSON path where the bound is broken.
        path: String,
    },
    /// A signature entry does not verify over the contract's digest.
    #[error("signature by {signer} does not verify")]
    BadSignature {
        /// The key the entry names.
        signer: PublicKey,
    },
    /// A signature entry by a key that is neither the owner nor a stakeholder.
    #[error("signature by {signer}, who is neither the owner nor a stakeholder")]
    UnknownSigner {
        /// The key the entry names.
        signer: PublicKey,
    },
    /// A signer has more than one signature entry.
    #[error("{signer} signed more than once")]
    DuplicateSignature {
        /// The key signing more than once.
        signer: PublicKey,
    },
    /// The owner's valid signature is missing.
    #[error("the owner {owner} has not signed")]
    OwnerSignatureMissing {
        /// The contract's owner.
        owner: PublicKey,
    },
    /// A required stakeholder's valid signature is missing.
    #[error("required stakeholder {signer} has not signed")]
    RequiredSignerMissing {
        /// The stakeholder who has not signed.
        signer: PublicKey,
    },
    /// The stakeholders who signed validly weigh less than the threshold.
    #[error("threshold not met: signed weight {have} of {need}")]
    ThresholdNotMet {
        /// The weight signed validly.
        have: u64,
        /// The contract's threshold.
        need: u64,
    },
    /// A parameter value is unknown, missing, mistyped or out of bounds.
    #[error("parameter: {detail}")]
    ParamOutOfBounds {
        /// Every parameter problem, joined with `; `.
        detail: String,
    },
    /// The embedded blueprint's author signature does not verify.
    #[error("blueprint signature invalid: {detail}")]
    BlueprintSignatureInvalid {
        /// Who signed, and that it does not verify.
        detail: String,
    },
    /// The blueprint named by digest is not in the notary (or the copy found has another digest).
    #[error("blueprint {digest} is not in the notary")]
    BlueprintUnresolved {
        /// The digest the contract names.
        digest: Digest,
    },
    /// The blueprint's author is not one this node trusts.
    #[error("blueprint author {author} is not trusted by this node")]
    BlueprintAuthorUntrusted {
        /// The blueprint's author.
        author: PublicKey,
    },
    /// The blueprint, with these parameters, does not expand to a valid deployment.
    #[error("the blueprint does not expand to a valid deployment: {detail}")]
    InvalidDeployment {
        /// Every `(json path: problem)`, joined with `; `.
        detail: String,
    },
    /// The version is not above the one this node accepted already (same version: only the same document).
    #[error("replay: version {version} is not above the accepted version {accepted}")]
    Replay {
        /// The contract's version.
        version: u64,
        /// The version this node accepted already.
        accepted: u64,
    },
    /// `now` is before the contract's `not_before`.
    #[error("not yet valid: not before {not_before}, now {now}")]
    NotYetValid {
        /// Unix seconds from which the contract is valid.
        not_before: u64,
        /// The verifying node's time, Unix seconds.
        now: u64,
    },
    /// `now` is at or after the contract's `expires`.
    #[error("expired at {expires}, now {now}")]
    Expired {
        /// Unix seconds from which the contract is no longer valid.
        expires: u64,
        /// The verifying node's time, Unix seconds.
        now: u64,
    },
    /// The contract's `nodes` do not name the verifying node.
    #[error("addressed to other nodes, not to {node}")]
    WrongNode {
        /// The verifying node.
        node: PublicKey,
    },
    /// A placement contract verified for a node: only its orchestrator's assignment
    /// can name a node ([`crate::assignment::admit`]), so verification alone never
    /// admits it there. Verify it for no node, then admit the node's assignment.
    #[error("a placement contract runs on {node} only by its orchestrator's assignment")]
    Unassigned {
        /// The verifying node.
        node: PublicKey,
    },
}

impl Reason {
    /// A stable snake_case code (the `code` field of the JSON form).
    pub fn code(&self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(m)) => m["code"].as_str().unwrap_or("unknown").to_string(),
            _ => "unknown".to_string(),
        }
    }
}

impl From<DocError> for Reason {
    fn from(e: DocError) -> Self {
        match e {
            DocError::Oversized {
                what,
                limit,
                actual,
                path,
            } => Reason::Oversized {
                what: what.to_string(),
                limit,
                actual,
                path,
            },
            DocError::Malformed { path, message } => Reason::Malformed { path, message },
        }
    }
}

/// What the node knows when it verifies: the time, who it is, what it runs already.
pub struct VerifyContext<'a> {
    /// Unix seconds.
    pub now: u64,
    /// The verifying node; `None` checks the contract for no node in particular.
    pub node: Option<PublicKey>,
    /// The version and digest this node has accepted already for this contract id;
    /// `None`: none (any version is new).
    pub accepted: Option<(u64, Digest)>,
    /// Resolves a blueprint named by digest (from the notary); `None`: not found.
    pub resolve_blueprint: &'a dyn Fn(&Digest) -> Option<SignedBlueprint>,
    /// Blueprint authors this node accepts; `None` accepts any validly signed blueprint.
    pub trusted_authors: Option<&'a BTreeSet<PublicKey>>,
    /// The size bounds documents are read within.
    pub limits: Limits,
}

impl VerifyContext<'_> {
    /// A context with no accepted version, no notary and no author policy.
    pub fn offline(now: u64) -> VerifyContext<'static> {
        VerifyContext {
            now,
            node: None,
            accepted: None,
            resolve_blueprint: &|_| None,
            trusted_authors: None,
            limits: Limits::default(),
        }
    }
}

/// A signer's part in a contract, as found by verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignerStatus {
    /// The signer's key.
    pub key: PublicKey,
    /// Owner or stakeholder.
    pub role: Role,
    /// Its weight towards the threshold; 0 for the owner.
    pub weight: u64,
    /// Whether the contract needs its signature (always true for the owner).
    pub required: bool,
    /// Whether a signature entry by it verifies over the digest.
    pub signed: bool,
}

/// Who a signer is to the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The contract's owner.
    Owner,
    /// One of its stakeholders.
    Stakeholder,
}

/// Everything verification found: the facts, the deployment if it could be built, and
/// the reasons to refuse (empty when the contract is accepted).
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    /// The contract id; `None` when the document could not be read.
    pub id: Option<String>,
    /// The contract version; `None` when the document could not be read.
    pub version: Option<u64>,
    /// The contract's digest; `None` when the document could not be read.
    pub digest: Option<Digest>,
    /// The blueprint's digest; `None` when no blueprint was read or named.
    pub blueprint: Option<Digest>,
    /// The owner, then each stakeholder, with whether each signed.
    pub signers: Vec<SignerStatus>,
    /// The stakeholder weight signed validly.
    pub weight: u64,
    /// The contract's threshold.
    pub threshold: u64,
    /// What the blueprint expands to; `None` when it could not be built. Present does
    /// not mean accepted: see `reasons`.
    #[serde(skip)]
    pub deployment: Option<Deployment>,
    /// Every reason to refuse; empty when the contract is accepted.
    pub reasons: Vec<Reason>,
    /// Signature entries that were not counted (`bad_signature`, `unknown_signer`,
    /// `duplicate_signature`) while the counted ones met the rules: reported, not a
    /// reason to refuse. When the rules are not met they are in `reasons` instead.
    pub warnings: Vec<Reason>,
}

impl Verification {
    fn refused(reason: Reason) -> Self {
        Verification {
            id: None,
            version: None,
            digest: None,
            blueprint: None,
            signers: Vec::new(),
            weight: 0,
            threshold: 0,
            deployment: None,
            reasons: vec![reason],
            warnings: Vec::new(),
        }
    }

    /// Whether the contract is accepted: no reason to refuse, and a deployment.
    pub fn is_ok(&self) -> bool {
        self.reasons.is_empty() && self.deployment.is_some()
    }

    /// The accepted contract, or the refusal.
    pub fn into_result(self) -> Result<Accepted, Refusal> {
        match (self.reasons.is_empty(), self.deployment) {
            (true, Some(deployment)) => Ok(Accepted {
                id: self.id.unwrap_or_default(),
                version: self.version.unwrap_or_default(),
                digest: self.digest.expect("an accepted contract has a digest"),
                blueprint: self
                    .blueprint
                    .expect("an accepted contract has a blueprint"),
                deployment,
            }),
            (_, _) => Err(Refusal {
                id: self.id,
                reasons: self.reasons,
            }),
        }
    }
}

/// A contract the node may deploy.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    /// The contract id.
    pub id: String,
    /// The contract version accepted.
    pub version: u64,
    /// The contract's digest: what the node records as accepted.
    pub digest: Digest,
    /// The digest of the blueprint it instantiates.
    pub blueprint: Digest,
    /// What to deploy: the blueprint's expansion.
    pub deployment: Deployment,
}

/// A refused contract and every reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct Refusal {
    /// The contract id; `None` when the document could not be read.
    pub id: Option<String>,
    /// Every reason found; never empty.
    pub reasons: Vec<Reason>,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "contract {} refused: ",
            self.id.as_deref().unwrap_or("?")
        )?;
        for (i, r) in self.reasons.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Verifies a contract document read from untrusted bytes.
pub fn verify_bytes(bytes: &[u8], ctx: &VerifyContext) -> Verification {
    verify_bytes_with(bytes, ctx, None)
}

/// [`verify_bytes`], skipping the ed25519 arithmetic for (digest, signer, signature)
/// triples `cache` saw verify before. Every other check runs as in [`verify_bytes`].
pub fn verify_bytes_cached(
    bytes: &[u8],
    ctx: &VerifyContext,
    cache: &mut VerifiedTriples,
) -> Verification {
    verify_bytes_with(bytes, ctx, Some(cache))
}

fn verify_bytes_with(
    bytes: &[u8],
    ctx: &VerifyContext,
    cache: Option<&mut VerifiedTriples>,
) -> Verification {
    // The document is verified and dropped here: its embedded blueprint is moved into
    // the contract, not copied.
    match SignedContract::from_bytes_to_verify(bytes, &ctx.limits) {
        // from_bytes checked the whole document against ctx.limits, the embedded
        // blueprint with it.
        Ok(doc) => verify_with(&doc, ctx, cache, LimitsChecked::AsPartOfItsDocument),
        Err(e) => Verification::refused(e.into()),
    }
}

/// Verifies a parsed contract document.
pub fn verify(doc: &SignedContract, ctx: &VerifyContext) -> Verification {
    verify_with(doc, ctx, None, LimitsChecked::No)
}

/// [`verify`], skipping the ed25519 arithmetic for (digest, signer, signature) triples
/// `cache` saw verify before (a re-delivery of an unchanged document). Every other
/// check (shape, limits, signers, threshold, validity window, replay, expansion) runs
/// as in [`verify`], and a triple differing in any byte is verified afresh.
pub fn verify_cached(
    doc: &SignedContract,
    ctx: &VerifyContext,
    cache: &mut VerifiedTriples,
) -> Verification {
    verify_with(doc, ctx, Some(cache), LimitsChecked::No)
}

/// `embedded`: whether an embedded blueprint's limits were checked with `doc`'s
/// document (a parsed `doc` may have been built or changed since it was read).
fn verify_with(
    doc: &SignedContract,
    ctx: &VerifyContext,
    mut cache: Option<&mut VerifiedTriples>,
    embedded: LimitsChecked,
) -> Verification {
    let c = &doc.contract;
    let mut reasons = Vec::new();

    check_shape(doc, ctx, &mut reasons);

    // Signatures: each signer once, known, valid; weights only from valid signatures.
    let mut signers: Vec<SignerStatus> = std::iter::once(SignerStatus {
        key: c.owner,
        role: Role::Owner,
        weight: 0,
        required: true,
        signed: false,
    })
    .chain(c.stakeholders.iter().map(|s| SignerStatus {
        key: s.key,
        role: Role::Stakeholder,
        weight: s.weight,
        required: s.required,
        signed: false,
    }))
    .collect();
    // Every entry is looked at; only those by the owner or a stakeholder that verify
    // count, a signer once however many entries it has. The others cannot veto: they
    // are reported, and become reasons only when the counted ones fall short.
    let mut ignored = Vec::new();
    let mut seen = BTreeSet::new();
    for entry in &doc.signatures {
        // A key is the owner or one stakeholder (check_shape refuses it twice).
        let Some(status) = signers.iter_mut().find(|s| s.key == entry.signer) else {
            ignored.push(Reason::UnknownSigner {
                signer: entry.signer,
            });
            continue;
        };
        if !seen.insert(entry.signer) {
            ignored.push(Reason::DuplicateSignature {
                signer: entry.signer,
            });
        }
        if crypto::check(
            cache.as_deref_mut(),
            &entry.signer,
            &doc.digest,
            &entry.signature,
        )
        .is_ok()
        {
            status.signed = true;
        } else {
            ignored.push(Reason::BadSignature {
                signer: entry.signer,
            });
        }
    }
    let mut unmet = Vec::new();
    if !signers[0].signed {
        unmet.push(Reason::OwnerSignatureMissing { owner: c.owner });
    }
    for s in signers.iter().skip(1).filter(|s| s.required && !s.signed) {
        unmet.push(Reason::RequiredSignerMissing { signer: s.key });
    }
    let weight: u64 = signers
        .iter()
        .skip(1)
        .filter(|s| s.signed)
        .fold(0u64, |acc, s| acc.saturating_add(s.weight));
    if weight < c.threshold {
        unmet.push(Reason::ThresholdNotMet {
            have: weight,
            need: c.threshold,
        });
    }
    let warnings = if unmet.is_empty() {
        ignored
    } else {
        reasons.append(&mut ignored);
        reasons.append(&mut unmet);
        Vec::new()
    };

    // Time, addressing, replay.
    if let Some(nb) = c.not_before.filter(|nb| ctx.now < *nb) {
        reasons.push(Reason::NotYetValid {
            not_before: nb,
            now: ctx.now,
        });
    }
    if let Some(exp) = c.expires.filter(|exp| ctx.now >= *exp) {
        reasons.push(Reason::Expired {
            expires: exp,
            now: ctx.now,
        });
    }
    if let Some(node) = ctx.node {
        if doc.placement.is_some() {
            reasons.push(Reason::Unassigned { node });
        } else if !c.nodes.contains(&node) {
            reasons.push(Reason::WrongNode { node });
        }
    }
    if let Some((accepted, accepted_digest)) = ctx.accepted {
        let same_document = c.version == accepted && doc.digest == accepted_digest;
        if c.version <= accepted && !same_document {
            reasons.push(Reason::Replay {
                version: c.version,
                accepted,
            });
        }
    }

    // The blueprint and what it expands to.
    let (blueprint_digest, deployment) = expand(doc, ctx, cache, embedded, &mut reasons);

    Verification {
        id: Some(c.id.clone()),
        version: Some(c.version),
        digest: Some(doc.digest),
        blueprint: blueprint_digest,
        signers,
        weight,
        threshold: c.threshold,
        deployment,
        reasons,
        warnings,
    }
}

/// Structural rules serde cannot express.
fn check_shape(doc: &SignedContract, ctx: &VerifyContext, reasons: &mut Vec<Reason>) {
    let c = &doc.contract;
    let mut malformed = |path: &str, message: String| {
        reasons.push(Reason::Malformed {
            path: path.to_string(),
            message,
        })
    };
    let id_ok = (1..=64).contains(&c.id.len())
        && c.id
            .chars()
            .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-');
    if !id_ok {
        malformed(
            "$.contract.id",
            format!("{:?} is not 1-64 of [a-z0-9-]", c.id),
        );
    }
    if c.version == 0 {
        malformed("$.contract.version", "versions start at 1".into());
    }
    // Addressed by `nodes` or by `placement`, never both, never neither.
    match (&doc.placement, doc.names_nodes()) {
        (Some(_), true) => malformed(
            "$.contract",
            "has both nodes and a placement: the owner names the nodes, or the \
             placement's orchestrator does"
                .into(),
        ),
        (None, false) => malformed("$.contract", "has neither nodes nor a placement".into()),
        (Some(placement), false) => {
            for e in placement.check() {
                malformed(e.path(), e.to_string());
            }
        }
        (None, true) => {
            if c.nodes.is_empty() {
                malformed("$.contract.nodes", "names no node".into());
            }
            if c.nodes.iter().collect::<BTreeSet<_>>().len() != c.nodes.len() {
                malformed("$.contract.nodes", "a node is listed twice".into());
            }
        }
    }
    let mut keys = BTreeSet::from([c.owner]);
    for (i, s) in c.stakeholders.iter().enumerate() {
        if !keys.insert(s.key) {
            malformed(
                &format!("$.contract.stakeholders[{i}].key"),
                "is the owner or listed twice".into(),
            );
        }
        if s.weight == 0 && !s.required {
            malformed(
                &format!("$.contract.stakeholders[{i}].weight"),
                "an optional stakeholder needs a weight above 0".into(),
            );
        }
    }
    let total: u64 = c
        .stakeholders
        .iter()
        .fold(0u64, |a, s| a.saturating_add(s.weight));
    if c.threshold > total {
        malformed(
            "$.contract.threshold",
            format!(
                "{} is above the total stakeholder weight {total}: it can never be met",
                c.threshold
            ),
        );
    }
    if let (Some(nb), Some(exp)) = (c.not_before, c.expires) {
        if exp <= nb {
            malformed("$.contract.expires", "is not after not_before".into());
        }
    }
    if doc.signatures.len() > ctx.limits.collection_items {
        reasons.push(Reason::Oversized {
            what: "signature count".into(),
            limit: ctx.limits.collection_items,
            actual: doc.signatures.len(),
            path: "$.signatures".into(),
        });
    }
}

fn expand(
    doc: &SignedContract,
    ctx: &VerifyContext,
    cache: Option<&mut VerifiedTriples>,
    embedded: LimitsChecked,
    reasons: &mut Vec<Reason>,
) -> (Option<Digest>, Option<Deployment>) {
    let blueprint: ReadBlueprint = match &doc.contract.blueprint {
        BlueprintRef::Embedded(_) => {
            match doc.read_embedded_blueprint(&ctx.limits, cache, embedded) {
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    reasons.push(blueprint_reason(e));
                    return (None, None);
                }
                None => unreachable!("an embedded blueprint is present"),
            }
        }
        BlueprintRef::Sha256(digest) => match (ctx.resolve_blueprint)(digest) {
            // The resolver's copy must be the one the contract names.
            Some(b) if b.digest == *digest => b.into(),
            _ => {
                reasons.push(Reason::BlueprintUnresolved { digest: *digest });
                return (Some(*digest), None);
            }
        },
    };
    if let Some(trusted) = ctx.trusted_authors {
        if !trusted.contains(&blueprint.author) {
            reasons.push(Reason::BlueprintAuthorUntrusted {
                author: blueprint.author,
            });
        }
    }
    let params = match params::resolve(&blueprint.blueprint.params, &doc.contract.params) {
        Ok(p) => p,
        Err(errors) => {
            reasons.extend(errors.into_iter().map(|e| Reason::ParamOutOfBounds {
                detail: e.to_string(),
            }));
            return (Some(blueprint.digest), None);
        }
    };
    match crate::blueprint::deployment(&blueprint.blueprint.body, &params, &ctx.limits) {
        Ok(d) => (Some(blueprint.digest), Some(d)),
        Err(detail) => {
            reasons.push(Reason::InvalidDeployment { detail });
            (Some(blueprint.digest), None)
        }
    }
}

fn blueprint_reason(e: BlueprintError) -> Reason {
    match e {
        BlueprintError::BadSignature(author) => Reason::BlueprintSignatureInvalid {
            detail: format!("signature by {author} does not verify"),
        },
        BlueprintError::Document(d) => match Reason::from(d) {
            Reason::Malformed { path, message } => Reason::Malformed {
                path: path.replacen('$', "$.contract.blueprint.embedded", 1),
                message,
            },
            Reason::Oversized {
                what,
                limit,
                actual,
                path,
            } => Reason::Oversized {
                what,
                limit,
                actual,
                path: path.replacen('$', "$.contract.blueprint.embedded", 1),
            },
            other => other,
        },
        other => Reason::InvalidDeployment {
            detail: other.to_string(),
        },
    }
}

/// Why a cancellation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CancelRefusal {
    /// The owner's signature does not verify.
    #[error("cancellation signature does not verify")]
    BadSignature,
    /// The cancellation names another contract.
    #[error("cancellation is for contract {got:?}, not {want:?}")]
    WrongContract {
        /// The id the cancellation names.
        got: String,
        /// The running contract's id.
        want: String,
    },
    /// The cancellation is signed by someone other than the running contract's owner.
    #[error("cancellation signed by {got}, but the contract's owner is {want}")]
    NotOwner {
        /// The owner the cancellation names (whose signature verified).
        got: PublicKey,
        /// The running contract's owner.
        want: PublicKey,
    },
    /// The cancellation's version is not above the running version.
    #[error("replay: cancellation version {version} is not above the running version {running}")]
    Replay {
        /// The cancellation's version.
        version: u64,
        /// The running contract's version.
        running: u64,
    },
}

/// Checks that a cancellation may stop the contract a node runs.
pub fn verify_cancellation(
    cancel: &SignedCancellation,
    running_id: &str,
    running_owner: &PublicKey,
    running_version: u64,
) -> Result<(), CancelRefusal> {
    let c = &cancel.cancellation;
    cancel
        .check_signature()
        .map_err(|_| CancelRefusal::BadSignature)?;
    if c.id != running_id {
        return Err(CancelRefusal::WrongContract {
            got: c.id.clone(),
            want: running_id.to_string(),
        });
    }
    if c.owner != *running_owner {
        return Err(CancelRefusal::NotOwner {
            got: c.owner,
            want: *running_owner,
        });
    }
    if c.version <= running_version {
        return Err(CancelRefusal::Replay {
            version: c.version,
            running: running_version,
        });
    }
    Ok(())
}

/// Parameter values from `name=value` strings: integers, booleans, else strings.
pub fn parse_param_args(
    args: &[String],
) -> Result<BTreeMap<String, serde_json::Value>, ParamError> {
    let mut out = BTreeMap::new();
    for arg in args {
        let (name, value) = arg.split_once('=').ok_or_else(|| ParamError::OutOfBounds {
            name: arg.clone(),
            reason: "expected name=value".into(),
        })?;
        let v = if let Ok(i) = value.parse::<i64>() {
            serde_json::Value::from(i)
        } else if let Ok(b) = value.parse::<bool>() {
            serde_json::Value::from(b)
        } else {
            serde_json::Value::from(value)
        };
        out.insert(name.to_string(), v);
    }
    Ok(out)
}
