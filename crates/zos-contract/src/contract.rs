//! Contracts: a consumer's instantiation of a blueprint for one or more nodes, signed
//! by its owner and co-signed by stakeholders.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::blueprint::{LimitsChecked, ReadBlueprint, SignedBlueprint};
use crate::crypto::{Digest, PublicKey, SecretKey, Signature, VerifiedTriples};
use crate::document::{self, DocError};
use crate::limits::Limits;
use crate::placement::Placement;

/// The unsigned contract body: what every signature signs, except its `placement`
/// member, which [`SignedContract::placement`] holds beside it (so the many places that
/// build a `Contract` for a node-addressed contract stay as they are).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// `[a-z0-9-]`, 1-64 characters, chosen by the owner.
    pub id: String,
    /// Monotonic: a node accepts only a version above the one it runs.
    pub version: u64,
    /// The consumer who owns the contract: must sign it, alone may cancel it.
    pub owner: PublicKey,
    /// The nodes that run it; empty (and absent from the document) when the contract
    /// has a placement instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<PublicKey>,
    /// The blueprint this contract instantiates.
    pub blueprint: BlueprintRef,
    /// Values for the blueprint's parameters, by name; checked against its declarations.
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    /// The co-signers whose weight must reach `threshold`; empty when none.
    #[serde(default)]
    pub stakeholders: Vec<Stakeholder>,
    /// The stakeholder weight that must sign; 0 when there are no stakeholders.
    #[serde(default)]
    pub threshold: u64,
    /// Unix seconds before which the contract is not valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<u64>,
    /// Unix seconds from which the contract is no longer valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<u64>,
}

/// The blueprint a contract instantiates: carried whole, or named by its digest and
/// resolved in the notary (`blueprints/<sha256>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum BlueprintRef {
    /// The whole signed blueprint document, inside the contract.
    Embedded(Value),
    /// The digest of a signed blueprint the notary holds under `blueprints/<sha256>`.
    Sha256(Digest),
}

/// [`Contract`] with an embedded blueprint only looked at: what reading one checks,
/// since a `Value` is read as given and writes back as given, whatever it is. The same
/// members in the same order, with the same attributes and the same names in messages.
#[derive(Serialize, Deserialize)]
#[serde(
    rename = "Contract",
    expecting = "struct Contract",
    deny_unknown_fields
)]
struct ContractHead {
    id: String,
    version: u64,
    owner: PublicKey,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<PublicKey>,
    blueprint: BlueprintRefHead,
    #[serde(default)]
    params: BTreeMap<String, Value>,
    #[serde(default)]
    stakeholders: Vec<Stakeholder>,
    #[serde(default)]
    threshold: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    not_before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<u64>,
}

/// [`BlueprintRef`], its embedded document only looked at.
#[derive(Serialize, Deserialize)]
#[serde(
    rename = "BlueprintRef",
    expecting = "enum BlueprintRef",
    rename_all = "lowercase",
    deny_unknown_fields
)]
enum BlueprintRefHead {
    // Taken from the document by `Contract::read`, copied once.
    Embedded(document::Opaque),
    Sha256(Digest),
}

/// What reading a contract does with its embedded blueprint.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Embedded {
    /// Copies it from the document: the document keeps it.
    Copy,
    /// Moves it out of the document, which is then not kept whole.
    Move,
}

impl Contract {
    #[cfg(test)]
    /// `document::typed(value, "$.contract")`, refusing what it refuses with the same
    /// error, without reading an embedded blueprint into a new value and then walking
    /// it for its shape: it is copied from `value` once.
    fn read(value: &Value) -> Result<Contract, DocError> {
        Self::read_with(value, Embedded::Copy)
    }

    /// [`Contract::read`]; with [`Embedded::Move`], an embedded blueprint is left
    /// `Value::Null`, for the caller to move in.
    fn read_with(value: &Value, embedded: Embedded) -> Result<Contract, DocError> {
        if !value.is_object() {
            // Refused, with the full type's message (a head's could differ).
            return document::typed(value, "$.contract");
        }
        let head: ContractHead = document::typed(value, "$.contract")?;
        Ok(Contract {
            id: head.id,
            version: head.version,
            owner: head.owner,
            nodes: head.nodes,
            blueprint: match head.blueprint {
                // The read found it: `{"blueprint": {"embedded": ...}}`.
                BlueprintRefHead::Embedded(document::Opaque) => match embedded {
                    Embedded::Copy => {
                        BlueprintRef::Embedded(value["blueprint"]["embedded"].clone())
                    }
                    Embedded::Move => BlueprintRef::Embedded(Value::Null),
                },
                BlueprintRefHead::Sha256(digest) => BlueprintRef::Sha256(digest),
            },
            params: head.params,
            stakeholders: head.stakeholders,
            threshold: head.threshold,
            not_before: head.not_before,
            expires: head.expires,
        })
    }
}

/// A co-signer, weighed towards the threshold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stakeholder {
    /// The co-signer's key.
    pub key: PublicKey,
    /// What its signature adds towards the contract's threshold.
    pub weight: u64,
    /// Whether the contract is refused without this signature, whatever the weight.
    #[serde(default)]
    pub required: bool,
}

/// One signature over the contract's digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureEntry {
    /// Who signed: the owner or a stakeholder.
    pub signer: PublicKey,
    /// `signer`'s signature over the contract's digest.
    pub signature: Signature,
}

/// Why a contract document could not be built or signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContractError {
    /// The contract body has no canonical form (e.g. an unsafe integer in its params).
    #[error(transparent)]
    Document(#[from] DocError),
    /// The key that tried to sign is neither the owner nor a stakeholder.
    #[error("{0} is neither the owner nor a stakeholder of this contract")]
    NotASigner(PublicKey),
}

/// A contract document: the body as received plus the signatures collected so far.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedContract {
    /// The body as read (typed), without its `placement` member.
    pub contract: Contract,
    /// The body's `placement` member: the farm and orchestrator that choose the nodes
    /// instead of `nodes`. `None` for a contract addressed to its nodes.
    pub placement: Option<Placement>,
    /// The signatures collected so far, unchecked until [`crate::verify()`].
    pub signatures: Vec<SignatureEntry>,
    /// `sha256(jcs(contract))`, over the body exactly as received.
    pub digest: Digest,
    raw: Value,
}

impl SignedContract {
    /// A new, unsigned contract document.
    pub fn new(contract: Contract) -> Result<Self, ContractError> {
        let raw = serde_json::to_value(&contract).expect("a contract serializes");
        let digest = document::digest(&raw)?;
        Ok(SignedContract {
            contract,
            placement: None,
            signatures: Vec::new(),
            digest,
            raw,
        })
    }

    /// A new, unsigned contract document with a placement: `placement` is written into
    /// the body (and signed with it). `contract.nodes` should be empty: a body with both
    /// is built, and refused by [`crate::verify()`].
    pub fn placed(contract: Contract, placement: Placement) -> Result<Self, ContractError> {
        let mut raw = serde_json::to_value(&contract).expect("a contract serializes");
        raw.as_object_mut()
            .expect("a contract is an object")
            .insert(
                "placement".into(),
                serde_json::to_value(&placement).expect("a placement serializes"),
            );
        let digest = document::digest(&raw)?;
        Ok(SignedContract {
            contract,
            placement: Some(placement),
            signatures: Vec::new(),
            digest,
            raw,
        })
    }

    /// Whether the body has a `nodes` member (even an empty one).
    pub fn names_nodes(&self) -> bool {
        self.raw.get("nodes").is_some()
    }

    /// Reads a contract document. Signatures are not checked here: see [`crate::verify()`].
    pub fn from_value(value: &Value, limits: &Limits) -> Result<Self, DocError> {
        document::check_limits(value, limits)?;
        Self::from_value_within_limits(Cow::Borrowed(value), limits, Embedded::Copy)
    }

    /// [`SignedContract::from_value`] for a value [`document::check_limits`] passed;
    /// an owned value gives up its body instead of copying it.
    ///
    /// [`Embedded::Move`] (for an owned value only) moves an embedded blueprint out of
    /// the body instead of copying it: the document is then not whole, and
    /// [`SignedContract::to_value`] would not give it back.
    fn from_value_within_limits(
        value: Cow<'_, Value>,
        limits: &Limits,
        embedded: Embedded,
    ) -> Result<Self, DocError> {
        debug_assert!(embedded == Embedded::Copy || matches!(value, Cow::Owned(_)));
        document::check_workloads(
            document::member(
                &value,
                &[
                    "contract",
                    "blueprint",
                    "embedded",
                    "blueprint",
                    "body",
                    "workloads",
                ],
            ),
            "$.contract.blueprint.embedded.blueprint.body.workloads",
            limits,
        )?;
        document::object(&value, "$")?;
        #[derive(Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Envelope {
            // Read from `value` below, not copied here.
            contract: document::Opaque,
            #[serde(default)]
            signatures: Vec<SignatureEntry>,
        }
        let env: Envelope = document::typed(&value, "$")?;
        let body = &value["contract"];
        document::object(body, "$.contract")?;
        let (mut contract, placement) = match body.get("placement") {
            None => (Contract::read_with(body, embedded)?, None),
            Some(p) => {
                let placement: Placement = document::typed(p, "$.contract.placement")?;
                let mut rest = body.clone();
                rest.as_object_mut()
                    .expect("checked: an object")
                    .remove("placement");
                (Contract::read_with(&rest, embedded)?, Some(placement))
            }
        };
        let digest = document::digest(body)?;
        let mut raw = match value {
            Cow::Owned(Value::Object(mut members)) => {
                members.remove("contract").unwrap_or_default()
            }
            value => value["contract"].clone(),
        };
        if let (Embedded::Move, BlueprintRef::Embedded(slot)) = (embedded, &mut contract.blueprint)
        {
            // The read found it: `{"blueprint": {"embedded": ...}}`.
            if let Some(document) = raw.get_mut("blueprint").and_then(|b| b.get_mut("embedded")) {
                *slot = document.take();
            }
        }
        Ok(SignedContract {
            digest,
            contract,
            placement,
            signatures: env.signatures,
            raw,
        })
    }

    /// Reads a contract document from untrusted bytes, within `limits`. Signatures are
    /// not checked here.
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Self, DocError> {
        // parse_value checked the limits already.
        Self::from_value_within_limits(
            Cow::Owned(document::parse_value(bytes, limits)?),
            limits,
            Embedded::Copy,
        )
    }

    /// [`SignedContract::from_bytes`] for a verification that reads the document and
    /// drops it: an embedded blueprint is moved out of the body, not copied, so the
    /// document is not whole ([`SignedContract::to_value`] would lack it).
    pub(crate) fn from_bytes_to_verify(bytes: &[u8], limits: &Limits) -> Result<Self, DocError> {
        Self::from_value_within_limits(
            Cow::Owned(document::parse_value(bytes, limits)?),
            limits,
            Embedded::Move,
        )
    }

    /// Adds (or replaces) `key`'s signature. Only the owner and stakeholders may sign.
    pub fn sign(&mut self, key: &SecretKey) -> Result<(), ContractError> {
        let signer = key.public();
        let c = &self.contract;
        if signer != c.owner && !c.stakeholders.iter().any(|s| s.key == signer) {
            return Err(ContractError::NotASigner(signer));
        }
        self.signatures.retain(|s| s.signer != signer);
        self.signatures.push(SignatureEntry {
            signer,
            signature: key.sign(&self.digest),
        });
        Ok(())
    }

    /// The embedded blueprint, if the contract carries one.
    pub fn embedded_blueprint(
        &self,
        limits: &Limits,
    ) -> Option<Result<SignedBlueprint, crate::blueprint::BlueprintError>> {
        match &self.contract.blueprint {
            BlueprintRef::Embedded(v) => Some(SignedBlueprint::from_value(v, limits)),
            BlueprintRef::Sha256(_) => None,
        }
    }

    /// The embedded blueprint as verification reads it, if the contract carries one: its
    /// signature checked through `cache` when there is one, its limits as `checked` says.
    pub(crate) fn read_embedded_blueprint(
        &self,
        limits: &Limits,
        cache: Option<&mut VerifiedTriples>,
        checked: LimitsChecked,
    ) -> Option<Result<ReadBlueprint<'_>, crate::blueprint::BlueprintError>> {
        match &self.contract.blueprint {
            BlueprintRef::Embedded(v) => Some(ReadBlueprint::from_value(v, limits, cache, checked)),
            BlueprintRef::Sha256(_) => None,
        }
    }

    /// The document `{"contract", "signatures"}`, with the body exactly as received, so
    /// its digest is unchanged.
    pub fn to_value(&self) -> Value {
        json!({"contract": self.raw, "signatures": self.signatures})
    }

    /// [`SignedContract::to_value`] as indented JSON, for files and humans.
    pub fn to_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.to_value()).expect("json serializes")
    }
}

/// The owner's order to stop a contract on its nodes.
///
/// `version` must be above the version a node runs, so an old cancellation cannot be
/// replayed against a contract that was published again later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancellation {
    /// The id of the contract to stop.
    pub id: String,
    /// Above the running contract's version (see above).
    pub version: u64,
    /// The contract's owner, who alone may cancel it.
    pub owner: PublicKey,
}

/// A cancellation with the owner's signature over `sha256(jcs(cancellation))`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedCancellation {
    /// The signed body.
    pub cancellation: Cancellation,
    /// The owner's signature over `sha256(jcs(cancellation))`.
    pub signature: Signature,
}

impl SignedCancellation {
    /// Signs `cancellation` with `key` (which should be its owner's; not checked here).
    pub fn sign(cancellation: Cancellation, key: &SecretKey) -> Result<Self, DocError> {
        let digest = document::digest(&serde_json::to_value(&cancellation).expect("serializes"))?;
        Ok(SignedCancellation {
            signature: key.sign(&digest),
            cancellation,
        })
    }

    /// Checks the owner's signature. Whether the owner and version fit the running
    /// contract is the caller's check ([`crate::verify::verify_cancellation`]).
    pub fn check_signature(&self) -> Result<(), crate::crypto::KeyError> {
        let digest = Digest::of(
            &crate::canonical::to_vec(
                &serde_json::to_value(&self.cancellation).expect("serializes"),
            )
            .map_err(|_| crate::crypto::KeyError::BadSignature)?,
        );
        self.cancellation.owner.verify(&digest, &self.signature)
    }
}

/// What the notary holds under `nodes/<node>/contracts/<id>`: the contract with the
/// signatures collected so far, or the owner's cancellation that replaced it.
#[derive(Debug, Clone, PartialEq)]
pub enum ContractRecord {
    /// A contract to run, with the signatures collected so far.
    Contract(Box<SignedContract>),
    /// The owner's order to stop the contract.
    Cancellation(SignedCancellation),
}

impl ContractRecord {
    /// Reads a record body; `{"contract": …}` or `{"cancellation": …}`.
    pub fn from_value(value: &Value, limits: &Limits) -> Result<Self, DocError> {
        if value.get("cancellation").is_some() {
            document::check_limits(value, limits)?;
            document::object(value, "$")?;
            document::typed(value, "$").map(ContractRecord::Cancellation)
        } else {
            SignedContract::from_value(value, limits).map(|c| ContractRecord::Contract(Box::new(c)))
        }
    }

    /// Who may write a record with this body (the notary envelope's author): a
    /// contract's owner and stakeholders, a cancellation's owner. Read from those members
    /// alone, so a body that is wrong elsewhere still names its parties (and the node
    /// reports what is wrong with it); empty when the body names no owner.
    pub fn parties(body: &Value) -> Vec<PublicKey> {
        let key = |v: &Value| v.as_str().and_then(|s| s.parse::<PublicKey>().ok());
        if let Some(c) = body.get("cancellation") {
            return c.get("owner").and_then(key).into_iter().collect();
        }
        let Some(c) = body.get("contract") else {
            return Vec::new();
        };
        let Some(owner) = c.get("owner").and_then(key) else {
            return Vec::new();
        };
        let stakeholders = c.get("stakeholders").and_then(Value::as_array);
        std::iter::once(owner)
            .chain(
                stakeholders
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.get("key").and_then(key)),
            )
            .collect()
    }

    /// The record body, as [`ContractRecord::from_value`] reads it.
    pub fn to_value(&self) -> Value {
        match self {
            ContractRecord::Contract(c) => c.to_value(),
            ContractRecord::Cancellation(c) => serde_json::to_value(c).expect("serializes"),
        }
    }

    /// The contract id the record is about.
    pub fn id(&self) -> &str {
        match self {
            ContractRecord::Contract(c) => &c.contract.id,
            ContractRecord::Cancellation(c) => &c.cancellation.id,
        }
    }

    /// The version: a contract's, or the one a cancellation supersedes with.
    pub fn version(&self) -> u64 {
        match self {
            ContractRecord::Contract(c) => c.contract.version,
            ContractRecord::Cancellation(c) => c.cancellation.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contract_read_to_verify_is_the_contract_read() {
        let ex = crate::spec_example::Example::build();
        let bytes = serde_json::to_vec(&ex.contract.to_value()).unwrap();
        let limits = Limits::default();
        let whole = SignedContract::from_bytes(&bytes, &limits).unwrap();
        let read = SignedContract::from_bytes_to_verify(&bytes, &limits).unwrap();
        assert!(matches!(
            read.contract.blueprint,
            BlueprintRef::Embedded(Value::Object(_))
        ));
        assert_eq!(read.contract, whole.contract);
        assert_eq!(read.placement, whole.placement);
        assert_eq!(read.signatures, whole.signatures);
        assert_eq!(read.digest, whole.digest);
        assert_eq!(read.names_nodes(), whole.names_nodes());
    }

    #[test]
    fn a_contract_reads_as_typed_reads_it() {
        let ex = crate::spec_example::Example::build();
        let good = ex.contract.to_value()["contract"].clone();
        assert!(good["blueprint"]["embedded"].is_object());
        let digest = json!({"sha256": ex.blueprint.digest});
        type Edit = Box<dyn Fn(&mut Value)>;
        let edits: Vec<Edit> = vec![
            Box::new(|_| {}),
            Box::new(move |v| v["blueprint"] = digest.clone()),
            Box::new(|v| v["blueprint"] = json!({"embedded": null})),
            Box::new(|v| v["blueprint"] = json!({"embedded": [1, null]})),
            Box::new(|v| v["blueprint"]["sha256"] = json!("00")),
            Box::new(|v| v["blueprint"] = json!({"sha256": "zz"})),
            Box::new(|v| v["blueprint"] = json!({"other": {}})),
            Box::new(|v| v["blueprint"] = json!({})),
            Box::new(|v| v["blueprint"] = json!("embedded")),
            Box::new(|v| v["blueprint"] = json!(["embedded", {}])),
            Box::new(|v| v["blueprint"] = Value::Null),
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("blueprint");
            }),
            Box::new(|v| {
                for k in ["params", "stakeholders", "threshold", "nodes"] {
                    v.as_object_mut().unwrap().remove(k);
                }
            }),
            Box::new(|v| v["extra"] = json!(1)),
            Box::new(|v| v["version"] = json!("1")),
            Box::new(|v| v["expires"] = Value::Null),
            Box::new(|v| v["nodes"] = json!([])),
            Box::new(|v| v["nodes"] = json!({})),
            Box::new(|v| v["owner"] = json!("ab")),
            Box::new(|v| v["stakeholders"] = json!([[1, 2, 3]])),
            Box::new(|v| v["params"] = json!({"p": null})),
            Box::new(|v| *v = json!(["a", 1])),
            Box::new(|v| *v = Value::Null),
        ];
        for (i, edit) in edits.iter().enumerate() {
            let mut v = good.clone();
            edit(&mut v);
            assert_eq!(
                Contract::read(&v),
                document::typed::<Contract>(&v, "$.contract"),
                "edit {i}: {v}"
            );
        }
    }
}
