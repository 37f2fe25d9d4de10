//! Blueprints: an IT expert's parameterised, signed description of an architecture.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::canonical;
use crate::crypto::{self, Digest, PublicKey, SecretKey, Signature, VerifiedTriples};
use crate::deployment::Deployment;
use crate::document::{self, DocError};
use crate::limits::Limits;
use crate::params::{self, ParamError, ParamSpec};

/// The unsigned blueprint, as its author wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Blueprint {
    /// What the architecture is called, as its author names it.
    pub name: String,
    /// The author's version of the blueprint (free text, e.g. `1.0.0`); not ordered by the node.
    pub version: String,
    /// Human-readable purpose; empty when absent.
    #[serde(default)]
    pub description: String,
    /// The parameters a contract must supply, by name, with their types and bounds.
    #[serde(default)]
    pub params: BTreeMap<String, ParamSpec>,
    /// The deployment template: a [`Deployment`] whose strings may hold `{{ expr }}`.
    pub body: Value,
}

/// Why a blueprint was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlueprintError {
    /// The document is oversized or malformed.
    #[error(transparent)]
    Document(#[from] DocError),
    /// A parameter declaration or value is invalid.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// The author's signature does not verify over the blueprint's digest.
    #[error("blueprint signature by {0} does not verify")]
    BadSignature(PublicKey),
    /// The body, expanded with the parameters' example values, is not a valid deployment.
    #[error("the body does not expand to a valid deployment with parameters {params}: {problems}")]
    InvalidBody {
        /// The parameter values tried, as a JSON object.
        params: String,
        /// Every `(json path: problem)` found, joined with `; `.
        problems: String,
    },
}

impl Blueprint {
    /// Checks the declarations and that the body expands to a valid deployment with
    /// example values, then signs. A blueprint that cannot deploy is never signed.
    pub fn sign(self, key: &SecretKey, limits: &Limits) -> Result<SignedBlueprint, BlueprintError> {
        let raw = serde_json::to_value(&self).expect("a blueprint serializes");
        document::check_limits(&raw, limits)?;
        document::check_workloads(raw.pointer("/body/workloads"), "$.body.workloads", limits)?;
        for (name, spec) in &self.params {
            spec.check(name)?;
        }
        let examples: BTreeMap<String, Value> = self
            .params
            .iter()
            .filter_map(|(n, s)| s.example().map(|v| (n.clone(), v)))
            .collect();
        if examples.len() == self.params.len() {
            self.deployment(&examples, limits)
                .map_err(|problems| BlueprintError::InvalidBody {
                    params: Value::from(serde_json::Map::from_iter(examples.clone())).to_string(),
                    problems,
                })?;
        }
        let digest = document::digest(&raw)?;
        Ok(SignedBlueprint {
            signature: key.sign(&digest),
            author: key.public(),
            digest,
            raw,
            blueprint: self,
        })
    }

    /// Substitutes complete, validated parameters into the body and checks the result.
    /// Errors are `(json path, problem)` pairs rendered as one line.
    pub fn deployment(
        &self,
        params: &BTreeMap<String, Value>,
        limits: &Limits,
    ) -> Result<Deployment, String> {
        deployment(&self.body, params, limits)
    }
}

/// [`Blueprint::deployment`] of a blueprint whose template is `body`.
pub(crate) fn deployment(
    body: &Value,
    params: &BTreeMap<String, Value>,
    limits: &Limits,
) -> Result<Deployment, String> {
    let watch = canonical::Watch::new(limits.string_chars, limits.collection_items, limits.depth);
    let expanded = params::expand_watched(body, params, Some(&watch)).map_err(|e| e.to_string())?;
    // The expansion watched the bounds the walk checks: only a result that breaks one
    // (or may) is walked, to find the first break and its path.
    if watch.broken() {
        document::check_limits(&expanded, limits).map_err(|e| e.to_string())?;
    }
    let deployment: Deployment = document::typed(&expanded, "$.body").map_err(|e| e.to_string())?;
    let problems = deployment.check(limits);
    if problems.is_empty() {
        Ok(deployment)
    } else {
        Err(problems
            .into_iter()
            .map(|(p, what)| format!("{}: {what}", p.replacen('$', "$.body", 1)))
            .collect::<Vec<_>>()
            .join("; "))
    }
}

/// A blueprint with its author's signature over `sha256(jcs(blueprint))`.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedBlueprint {
    /// The blueprint as read (typed).
    pub blueprint: Blueprint,
    /// The IT expert who signed it.
    pub author: PublicKey,
    /// `author`'s signature over [`SignedBlueprint::digest`].
    pub signature: Signature,
    /// The digest of the blueprint as received: its identity in the notary.
    pub digest: Digest,
    raw: Value,
}

impl SignedBlueprint {
    /// Reads a signed blueprint document and checks its signature.
    pub fn from_value(value: &Value, limits: &Limits) -> Result<Self, BlueprintError> {
        let read = ReadBlueprint::from_value(value, limits, None, LimitsChecked::No)?;
        Ok(SignedBlueprint {
            blueprint: read.blueprint.into_blueprint(),
            author: read.author,
            signature: read.signature,
            digest: read.digest,
            raw: value["blueprint"].clone(),
        })
    }

    /// Reads a signed blueprint document from untrusted bytes (within `limits`) and
    /// checks its signature.
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Self, BlueprintError> {
        Self::from_value(&document::parse_value(bytes, limits)?, limits)
    }

    /// The signed document `{"blueprint", "author", "signature"}`, with the blueprint
    /// exactly as received, so its digest is unchanged.
    pub fn to_value(&self) -> Value {
        json!({"blueprint": self.raw, "author": self.author, "signature": self.signature})
    }

    /// [`SignedBlueprint::to_value`] as indented JSON, for files and humans.
    pub fn to_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).expect("json serializes")
    }
}

/// Whether a value's size limits are still to be checked, or were checked already as
/// part of the document it was read from, against the same limits: a part of a value
/// within the limits is within them (its depth only smaller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitsChecked {
    /// Check them.
    No,
    /// Checked with the whole document it is part of, unchanged since.
    AsPartOfItsDocument,
}

/// [`Blueprint`] with its template only looked at: what reading one checks, since a
/// `Value` template is read as given and writes back as given, whatever it is. The same
/// members in the same order, with the same attributes and the same name in messages.
#[derive(Serialize, Deserialize)]
#[serde(
    rename = "Blueprint",
    expecting = "struct Blueprint",
    deny_unknown_fields
)]
struct BlueprintHead {
    name: String,
    version: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    params: BTreeMap<String, ParamSpec>,
    // Taken from the document by `Blueprint::read`, copied once.
    body: document::Opaque,
}

/// A [`Blueprint`] as verification reads it: its template borrowed from the document
/// it was read from, where it can be.
pub(crate) struct BlueprintRead<'a> {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) description: String,
    pub(crate) params: BTreeMap<String, ParamSpec>,
    pub(crate) body: Cow<'a, Value>,
}

impl BlueprintRead<'_> {
    /// `document::typed(value, "$.blueprint")`, refusing what it refuses with the same
    /// error, without reading the template into a new value and then walking it for its
    /// shape: it is borrowed from `value`.
    fn read(value: &Value) -> Result<BlueprintRead<'_>, DocError> {
        if !value.is_object() {
            // Refused, with the full type's message (a head's could differ).
            return document::typed::<Blueprint>(value, "$.blueprint").map(BlueprintRead::from);
        }
        let head: BlueprintHead = document::typed(value, "$.blueprint")?;
        Ok(BlueprintRead {
            name: head.name,
            version: head.version,
            description: head.description,
            params: head.params,
            // The read found it: an object with a `body` member.
            body: Cow::Borrowed(&value["body"]),
        })
    }

    fn into_blueprint(self) -> Blueprint {
        Blueprint {
            name: self.name,
            version: self.version,
            description: self.description,
            params: self.params,
            body: self.body.into_owned(),
        }
    }
}

impl From<Blueprint> for BlueprintRead<'static> {
    fn from(b: Blueprint) -> Self {
        BlueprintRead {
            name: b.name,
            version: b.version,
            description: b.description,
            params: b.params,
            body: Cow::Owned(b.body),
        }
    }
}

/// A signed blueprint document as verification uses it: [`SignedBlueprint`] without the
/// copy of the document it keeps for [`SignedBlueprint::to_value`].
pub(crate) struct ReadBlueprint<'a> {
    pub(crate) blueprint: BlueprintRead<'a>,
    pub(crate) author: PublicKey,
    pub(crate) signature: Signature,
    pub(crate) digest: Digest,
}

impl ReadBlueprint<'_> {
    /// Reads a signed blueprint document and checks its signature, through `cache`
    /// when there is one.
    pub(crate) fn from_value<'a>(
        value: &'a Value,
        limits: &Limits,
        cache: Option<&mut VerifiedTriples>,
        checked: LimitsChecked,
    ) -> Result<ReadBlueprint<'a>, BlueprintError> {
        if checked == LimitsChecked::No {
            document::check_limits(value, limits)?;
        }
        document::check_workloads(
            document::member(value, &["blueprint", "body", "workloads"]),
            "$.blueprint.body.workloads",
            limits,
        )?;
        document::object(value, "$")?;
        #[derive(Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Envelope {
            // Read from `value` below, not copied here.
            blueprint: document::Opaque,
            author: PublicKey,
            signature: Signature,
        }
        let env: Envelope = document::typed(value, "$")?;
        let body = &value["blueprint"];
        let blueprint = BlueprintRead::read(body)?;
        let digest = document::digest(body)?;
        crypto::check(cache, &env.author, &digest, &env.signature)
            .map_err(|_| BlueprintError::BadSignature(env.author))?;
        Ok(ReadBlueprint {
            blueprint,
            author: env.author,
            signature: env.signature,
            digest,
        })
    }
}

impl From<SignedBlueprint> for ReadBlueprint<'static> {
    fn from(b: SignedBlueprint) -> Self {
        ReadBlueprint {
            blueprint: b.blueprint.into(),
            author: b.author,
            signature: b.signature,
            digest: b.digest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_blueprint_reads_as_typed_reads_it() {
        let good = json!({
            "name": "n",
            "version": "1",
            "description": "d",
            "params": {"p": {"type": "int", "min": 1, "max": 5}},
            "body": {"workloads": [{"x": null, "y": [1, "{{ p }}"]}]}
        });
        type Edit = Box<dyn Fn(&mut Value)>;
        let edits: Vec<Edit> = vec![
            Box::new(|_| {}),
            Box::new(|v| v["body"] = Value::Null),
            Box::new(|v| v["body"] = json!([null, {"a": null}])),
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("body");
            }),
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("description");
                v.as_object_mut().unwrap().remove("params");
            }),
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("name");
            }),
            Box::new(|v| v["extra"] = json!(1)),
            Box::new(|v| v["name"] = json!(7)),
            Box::new(|v| v["description"] = Value::Null),
            Box::new(|v| v["params"] = json!([1])),
            Box::new(|v| v["params"]["p"] = json!(["int", 1, 5])),
            Box::new(|v| v["params"]["p"]["max"] = Value::Null),
            Box::new(|v| v["params"]["p"]["type"] = json!("float")),
            Box::new(|v| *v = json!(["n", "1", "d", {}, {}])),
            Box::new(|v| *v = json!(["n", "1"])),
            Box::new(|v| *v = json!("n")),
            Box::new(|v| *v = Value::Null),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut v = good.clone();
            edit(&mut v);
            assert_eq!(
                BlueprintRead::read(&v).map(BlueprintRead::into_blueprint),
                document::typed::<Blueprint>(&v, "$.blueprint"),
                "edit {i}: {v}"
            );
        }
    }
}
