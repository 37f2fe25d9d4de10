//! Keys and one signed contract record, for the tests that need a valid record and do
//! not care what it says.

use serde_json::json;
use zos_contract::{PublicKey, SecretKey};
use zos_notary::{NotaryKey, Record};

/// A key from a one-byte seed: the same key in every test run.
pub fn sk(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}

/// The node the records are for.
pub fn node() -> PublicKey {
    sk(1).public()
}

/// Contract record `id` for [`node`], written and signed by its owner (`sk(10)`: a
/// contract record's author must be a party of the contract).
pub fn contract(id: &str) -> Record {
    let key = NotaryKey::contract(&node(), id).unwrap();
    let body = json!({ "contract": { "owner": sk(10).public().to_string(), "version": 1 } });
    Record::sign_at(&key, body, &sk(10), 1_700_000_000).unwrap()
}
