//! The peer record: what a node publishes, signed, per (contract, network).
//!
//! Key `nodes/<node>/mesh/<contract>/<network>`, author the node, in the notary's
//! envelope (`zos_notary::Record`: the key is signed, so a record cannot be replayed
//! under another node, contract or network). Body:
//!
//! ```json
//! {"contract":"web","network":"net","version":3,
//!  "public_key":"<base64 X25519>","endpoint":"203.0.113.7:51820",
//!  "subnet":"10.20.4.0/22","placement":{"replica":1,"epoch":2}}
//! ```
//!
//! `endpoint` is absent for a node that cannot be reached (behind NAT: it keeps the
//! tunnel open from its side); `placement` is present exactly for a placement contract.
//! `subnet` is what the node computed for itself; readers compute it again and refuse a
//! record that claims another (`overlapping_range`, `subnet_mismatch`).
//!
//! [`sign_record`] builds the same envelope `Record::sign_at` does; it is built here
//! because the notary's key layout does not hold the mesh key yet (docs/network.md).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};
use zos_contract::{PublicKey, SecretKey};
use zos_notary::{KeyError, NotaryKey, Record, RecordError};

use crate::addr::Ipv4Net;
use crate::key::WgPublicKey;

/// The replica and epoch a node holds (placement contracts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldReplica {
    /// The replica number.
    pub replica: u64,
    /// The epoch of the assignment the node runs it at.
    pub epoch: u64,
}

/// The body of a peer record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRecord {
    /// The contract id.
    pub contract: String,
    /// The network's name in the contract's deployment.
    pub network: String,
    /// The contract version the node runs.
    pub version: u64,
    /// The node's WireGuard public key for this network.
    pub public_key: WgPublicKey,
    /// Where its WireGuard port is reached (address and port of its registration);
    /// absent: not reachable (behind NAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<SocketAddr>,
    /// The subnet the node computed for itself.
    pub subnet: Ipv4Net,
    /// For a placement contract: the replica and epoch the node holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<HeldReplica>,
}

/// `nodes/<node>/mesh/<contract>/<network>`: where `node` publishes its peer record
/// (the notary lets only `node` write it).
pub fn mesh_key(node: &PublicKey, contract: &str, network: &str) -> Result<NotaryKey, KeyError> {
    NotaryKey::mesh(node, contract, network)
}

/// Why a record is not taken as a peer. Stable codes: statuses and tests use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalCode {
    /// The author is not one of the contract's nodes, nor holds a replica's current
    /// assignment.
    NotANodeOfTheContract,
    /// The author claims a replica at an epoch below the replica's current one.
    StaleEpoch,
    /// The author claims an epoch above what the placement record shows (the record
    /// has not caught up yet): not a peer until it does.
    EpochNotPlaced,
    /// The signature does not verify over the envelope.
    BadSignature,
    /// The record is signed for another key than the author's mesh key of this
    /// contract and network (replayed or moved).
    WrongKey,
    /// The body names another contract or network than its key.
    WrongContract,
    /// The body is not a peer record, or not the shape the contract needs (a replica
    /// claimed for a node-list contract, none for a placement).
    Malformed,
    /// The subnet claimed is not the author's and overlaps another node's.
    OverlappingRange,
    /// The subnet claimed is not the one computed for the author (and overlaps none).
    SubnetMismatch,
    /// The WireGuard public key is all zeros.
    BadPublicKey,
    /// The endpoint is no address a peer can send to (unspecified, loopback,
    /// multicast, broadcast, port 0).
    BadEndpoint,
    /// The WireGuard public key is another node's too (or this node's).
    DuplicatePublicKey,
    /// Two records of one author were handed in.
    DuplicateRecord,
    /// Neither this node nor the author has an endpoint: neither can start the
    /// handshake.
    NoEndpointEitherSide,
}

impl RefusalCode {
    /// The code as statuses carry it.
    pub fn as_str(&self) -> &'static str {
        match self {
            RefusalCode::NotANodeOfTheContract => "not_a_node_of_the_contract",
            RefusalCode::StaleEpoch => "stale_epoch",
            RefusalCode::EpochNotPlaced => "epoch_not_placed",
            RefusalCode::BadSignature => "bad_signature",
            RefusalCode::WrongKey => "wrong_key",
            RefusalCode::WrongContract => "wrong_contract",
            RefusalCode::Malformed => "malformed",
            RefusalCode::OverlappingRange => "overlapping_range",
            RefusalCode::SubnetMismatch => "subnet_mismatch",
            RefusalCode::BadPublicKey => "bad_public_key",
            RefusalCode::BadEndpoint => "bad_endpoint",
            RefusalCode::DuplicatePublicKey => "duplicate_public_key",
            RefusalCode::DuplicateRecord => "duplicate_record",
            RefusalCode::NoEndpointEitherSide => "no_endpoint_either_side",
        }
    }
}

impl fmt::Display for RefusalCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why one record is not taken: its code, and what is wrong for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct Refusal {
    /// The stable code.
    pub code: RefusalCode,
    /// What is wrong.
    pub detail: String,
}

impl Refusal {
    /// A refusal with `code` and `detail`.
    pub fn new(code: RefusalCode, detail: impl Into<String>) -> Self {
        Refusal {
            code,
            detail: detail.into(),
        }
    }
}

/// Signs `body` as `secret`'s node at `signed_at`: the notary envelope for
/// [`mesh_key`]`(node, body.contract, body.network)`.
pub fn sign_record(
    body: &PeerRecord,
    secret: &SecretKey,
    signed_at: u64,
) -> Result<Record, RecordError> {
    let key = mesh_key(&secret.public(), &body.contract, &body.network)?;
    let value = serde_json::to_value(body).map_err(|e| RecordError::Malformed(e.to_string()))?;
    Record::sign_at(&key, value, secret, signed_at)
}

/// `record` read as a peer record of `contract`'s `network`: signed by its author,
/// for the author's mesh key of that contract and network, with a well-formed body.
/// Whether the author belongs to the contract is [`crate::peers`]'s question.
pub fn verify_record(
    record: &Record,
    contract: &str,
    network: &str,
) -> Result<PeerRecord, Refusal> {
    // The envelope: its signature, its key's layout and the author rule (a mesh key is
    // its node's own).
    record.verify().map_err(|e| match e {
        RecordError::BadSignature { .. } | RecordError::WrongAuthor { .. } => {
            Refusal::new(RefusalCode::BadSignature, format!("{}: {e}", record.key))
        }
        other => Refusal::new(RefusalCode::Malformed, other.to_string()),
    })?;
    let expected = mesh_key(&record.author, contract, network)
        .map_err(|e| Refusal::new(RefusalCode::Malformed, e.to_string()))?;
    if record.key != expected.as_str() {
        return Err(Refusal::new(
            RefusalCode::WrongKey,
            format!("signed for {}, expected {expected}", record.key),
        ));
    }
    let body: PeerRecord = serde_json::from_value(record.body.clone())
        .map_err(|e| Refusal::new(RefusalCode::Malformed, e.to_string()))?;
    if body.contract != contract || body.network != network {
        return Err(Refusal::new(
            RefusalCode::WrongContract,
            format!(
                "body names {}/{}, key {contract}/{network}",
                body.contract, body.network
            ),
        ));
    }
    if body.public_key.0 == [0; 32] {
        return Err(Refusal::new(
            RefusalCode::BadPublicKey,
            "all-zero WireGuard key",
        ));
    }
    if let Some(ep) = body.endpoint {
        let bad_ip = match ep.ip() {
            IpAddr::V4(ip) => {
                ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast()
            }
            IpAddr::V6(ip) => ip.is_unspecified() || ip.is_loopback() || ip.is_multicast(),
        };
        if bad_ip || ep.port() == 0 {
            return Err(Refusal::new(
                RefusalCode::BadEndpoint,
                format!("endpoint {ep}"),
            ));
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::WgSecretKey;

    fn body() -> PeerRecord {
        PeerRecord {
            contract: "web".into(),
            network: "net".into(),
            version: 3,
            public_key: WgSecretKey::from_bytes([7; 32]).public(),
            endpoint: Some("203.0.113.7:51820".parse().unwrap()),
            subnet: "10.20.4.0/22".parse().unwrap(),
            placement: Some(HeldReplica {
                replica: 1,
                epoch: 2,
            }),
        }
    }

    #[test]
    fn a_signed_record_verifies_and_round_trips() {
        let node = SecretKey::from_seed([1; 32]);
        let r = sign_record(&body(), &node, 1_700_000_000).unwrap();
        assert_eq!(r.key, format!("nodes/{}/mesh/web/net", node.public()));
        assert_eq!(verify_record(&r, "web", "net").unwrap(), body());
        // The stored form reads back (strict JSON) and still verifies.
        let back = Record::from_bytes(&r.to_bytes().unwrap()).unwrap();
        assert_eq!(verify_record(&back, "web", "net").unwrap(), body());
        // The JSON shape documented above.
        assert_eq!(
            r.body,
            serde_json::json!({"contract": "web", "network": "net", "version": 3,
                "public_key": body().public_key.to_string(), "endpoint": "203.0.113.7:51820",
                "subnet": "10.20.4.0/22", "placement": {"replica": 1, "epoch": 2}})
        );
    }

    #[test]
    fn refusals() {
        let node = SecretKey::from_seed([1; 32]);
        let code = |r: &Record| verify_record(r, "web", "net").unwrap_err().code;
        // Tampered body: the signature no longer verifies.
        let mut r = sign_record(&body(), &node, 1).unwrap();
        r.body["endpoint"] = serde_json::json!("198.51.100.1:51820");
        assert_eq!(code(&r), RefusalCode::BadSignature);
        // Another author claiming the record (author swapped, signature kept).
        let mut r = sign_record(&body(), &node, 1).unwrap();
        r.author = SecretKey::from_seed([2; 32]).public();
        assert_eq!(code(&r), RefusalCode::BadSignature);
        // A record of another network, read as this one: its key says so.
        let mut other = body();
        other.network = "other".into();
        let r = sign_record(&other, &node, 1).unwrap();
        assert_eq!(code(&r), RefusalCode::WrongKey);
        // The key right, the body naming another contract.
        let mut r = sign_record(&body(), &node, 1).unwrap();
        r.body["contract"] = serde_json::json!("db");
        r.signature = node.sign(&r.signing_digest().unwrap());
        assert_eq!(code(&r), RefusalCode::WrongContract);
        // Unknown fields, a zero key, bad endpoints.
        let mut r = sign_record(&body(), &node, 1).unwrap();
        r.body["extra"] = serde_json::json!(1);
        r.signature = node.sign(&r.signing_digest().unwrap());
        assert_eq!(code(&r), RefusalCode::Malformed);
        let mut zero = body();
        zero.public_key = WgPublicKey([0; 32]);
        assert_eq!(
            code(&sign_record(&zero, &node, 1).unwrap()),
            RefusalCode::BadPublicKey
        );
        for ep in [
            "0.0.0.0:51820",
            "127.0.0.1:51820",
            "224.0.0.1:51820",
            "203.0.113.7:0",
            "[::1]:51820",
        ] {
            let mut b = body();
            b.endpoint = Some(ep.parse().unwrap());
            assert_eq!(
                code(&sign_record(&b, &node, 1).unwrap()),
                RefusalCode::BadEndpoint,
                "{ep}"
            );
        }
        let mut v6 = body();
        v6.endpoint = Some("[2001:db8::7]:51820".parse().unwrap());
        assert!(verify_record(&sign_record(&v6, &node, 1).unwrap(), "web", "net").is_ok());
    }
}
