//! `nodes/<node>/registration`: what a node is and which farm it belongs to, signed by
//! the node key.
//!
//! ```json
//! {"capacity":{"cpus":8,"hdd_bytes":0,"memory_bytes":33554432000,"ssd_bytes":500000000000},
//!  "dmi":{"product":"X11SCL","serial":"S123","vendor":"Supermicro"},
//!  "farm":"farm-1","nics":[{"mac":"52:54:00:12:34:56","name":"eth0"}],
//!  "registered_at":1700000000,"version":"0.1.0"}
//! ```
//!
//! A node publishes it each time it starts, once its farm exists: capacity and NICs
//! may have changed since the last boot.

use serde::{Deserialize, Serialize};
use zos_contract::{PublicKey, SecretKey};
use zos_notary::{KeyKind, NotaryKey, Record};

use crate::{check_int, check_text, parse_body, RegistryError};

/// Most NICs a registration lists.
pub const MAX_NICS: usize = 64;
/// Longest DMI string and version, in characters.
pub const MAX_TEXT: usize = 256;

/// What a node has. In a registration: the machine; in a heartbeat's `reserved`: what
/// the node's contracts reserve (CPUs may exceed the machine's: CPU is overcommitted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeResources {
    /// Logical CPUs.
    pub cpus: u64,
    /// Memory, in bytes.
    pub memory_bytes: u64,
    /// Capacity of the SSD pools (what placement may hand out).
    pub ssd_bytes: u64,
    /// Capacity of the HDD pools.
    pub hdd_bytes: u64,
}

impl NodeResources {
    pub(crate) fn check(&self, key: &str) -> Result<(), RegistryError> {
        check_int(key, "cpus", self.cpus)?;
        check_int(key, "memory_bytes", self.memory_bytes)?;
        check_int(key, "ssd_bytes", self.ssd_bytes)?;
        check_int(key, "hdd_bytes", self.hdd_bytes)
    }
}

/// A physical network interface.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nic {
    /// The interface name on the node (`eth0`, `enp3s0`, ...).
    pub name: String,
    /// Lowercase hex octets separated by `:`.
    pub mac: String,
}

/// The machine's DMI identity (absent on machines without DMI, e.g. most ARM boards).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dmi {
    /// The system's manufacturer (`sys_vendor`); `None`: not reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// The product name (`product_name`); `None`: not reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// The serial number (`product_serial`, readable by root only); `None`: not reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// The body of a registration record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// The farm the node belongs to.
    pub farm: String,
    /// zosd's version.
    pub version: String,
    /// What the machine has.
    pub capacity: NodeResources,
    /// What the node offers to contracts: its capacity after its reserves and CPU
    /// overcommit, the most it admits (what placement may hand out). `None`: a node
    /// that does not say; its machine capacity counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offered: Option<NodeResources>,
    /// Its hardware NICs, at most [`MAX_NICS`].
    pub nics: Vec<Nic>,
    /// Its DMI identity (empty when the machine has none).
    #[serde(default)]
    pub dmi: Dmi,
    /// Unix seconds of this registration.
    pub registered_at: u64,
}

/// True for `xx:xx:...` with 6 to 20 lowercase hex octets (Ethernet has 6, InfiniBand 20).
pub fn valid_mac(mac: &str) -> bool {
    let octets: Vec<&str> = mac.split(':').collect();
    (6..=20).contains(&octets.len())
        && octets.iter().all(|o| {
            o.len() == 2
                && o.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

impl Registration {
    /// What placement may hand out on this node: [`Registration::offered`], else its
    /// machine capacity.
    pub fn placeable(&self) -> NodeResources {
        self.offered.unwrap_or(self.capacity)
    }

    pub(crate) fn check(&self, key: &str) -> Result<(), RegistryError> {
        // The farm id must be one a farm key can have.
        NotaryKey::farm(&self.farm)?;
        check_text(key, "version", &self.version, MAX_TEXT)?;
        self.capacity.check(key)?;
        check_int(key, "registered_at", self.registered_at)?;
        if self.nics.len() > MAX_NICS {
            return Err(RegistryError::Invalid {
                key: key.to_owned(),
                field: "nics",
                reason: format!("lists {}; the limit is {MAX_NICS}", self.nics.len()),
            });
        }
        for nic in &self.nics {
            // IFNAMSIZ is 16 with its NUL.
            check_text(key, "nics.name", &nic.name, 15)?;
            if !valid_mac(&nic.mac) {
                return Err(RegistryError::Invalid {
                    key: key.to_owned(),
                    field: "nics.mac",
                    reason: format!("{:?} is not a MAC address", nic.mac),
                });
            }
        }
        for (field, value) in [
            ("dmi.vendor", &self.dmi.vendor),
            ("dmi.product", &self.dmi.product),
            ("dmi.serial", &self.dmi.serial),
        ] {
            if let Some(v) = value {
                check_text(key, field, v, MAX_TEXT)?;
            }
        }
        Ok(())
    }

    /// Signs the registration with the node key at `signed_at`.
    pub fn sign(&self, node: &SecretKey, signed_at: u64) -> Result<Record, RegistryError> {
        let key = NotaryKey::registration(&node.public());
        self.check(key.as_str())?;
        let body = serde_json::to_value(self).expect("a registration serializes");
        Ok(Record::sign_at(&key, body, node, signed_at)?)
    }

    /// The node and registration a record holds: the envelope verifies (and so is
    /// signed by the node it is about), the key is a registration key, the body valid.
    pub fn from_record(record: &Record) -> Result<(PublicKey, Registration), RegistryError> {
        record.verify()?;
        let KeyKind::Registration { node } = record.notary_key()?.kind() else {
            return Err(RegistryError::WrongKind {
                key: record.key.clone(),
                expected: "registration",
            });
        };
        let reg: Registration = parse_body(&record.key, &record.body)?;
        reg.check(&record.key)?;
        Ok((node, reg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sk(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    fn sample() -> Registration {
        Registration {
            farm: "farm-1".into(),
            version: "0.1.0".into(),
            capacity: NodeResources {
                cpus: 8,
                memory_bytes: 32 << 30,
                ssd_bytes: 500 << 30,
                hdd_bytes: 0,
            },
            offered: None,
            nics: vec![Nic {
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
            }],
            dmi: Dmi {
                vendor: Some("Supermicro".into()),
                product: None,
                serial: Some("S123".into()),
            },
            registered_at: 1_700_000_000,
        }
    }

    #[test]
    fn a_registration_signed_by_its_node_reads_back() {
        let node = sk(3);
        let record = sample().sign(&node, 5).unwrap();
        assert_eq!(record.key, format!("nodes/{}/registration", node.public()));
        let (who, reg) = Registration::from_record(&record).unwrap();
        assert_eq!((who, reg), (node.public(), sample()));
        // Absent DMI fields are left out, not null.
        assert_eq!(
            record.body["dmi"],
            json!({"vendor": "Supermicro", "serial": "S123"})
        );
    }

    #[test]
    fn another_key_cannot_register_a_node() {
        let key = NotaryKey::registration(&sk(3).public());
        let forged =
            Record::sign_at(&key, serde_json::to_value(sample()).unwrap(), &sk(4), 1).unwrap();
        assert!(matches!(
            Registration::from_record(&forged),
            Err(RegistryError::Record(
                zos_notary::RecordError::WrongAuthor { .. }
            ))
        ));
    }

    #[test]
    fn invalid_fields_are_named() {
        let node = sk(3);
        let field_of = |r: Registration| match r.sign(&node, 1) {
            Err(RegistryError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        let mut r = sample();
        r.nics[0].mac = "52:54:00:12:34".into();
        assert_eq!(field_of(r), "nics.mac");
        let mut r = sample();
        r.nics[0].mac = "52:54:00:12:34:5G".into();
        assert_eq!(field_of(r), "nics.mac");
        let mut r = sample();
        r.nics[0].name = "a-very-long-interface".into();
        assert_eq!(field_of(r), "nics.name");
        let mut r = sample();
        r.version = String::new();
        assert_eq!(field_of(r), "version");
        let mut r = sample();
        r.dmi.serial = Some("\n".into());
        assert_eq!(field_of(r), "dmi.serial");
        let mut r = sample();
        r.capacity.memory_bytes = 1 << 60;
        assert_eq!(field_of(r), "memory_bytes");
        let mut r = sample();
        r.farm = "a/b".into();
        assert!(matches!(r.sign(&node, 1), Err(RegistryError::Key(_))));
        let mut body = serde_json::to_value(sample()).unwrap();
        body["shell"] = json!(true);
        let rec =
            Record::sign_at(&NotaryKey::registration(&node.public()), body, &node, 1).unwrap();
        assert!(matches!(
            Registration::from_record(&rec),
            Err(RegistryError::Body { .. })
        ));
    }

    #[test]
    fn macs() {
        assert!(valid_mac("00:11:22:aa:bb:cc"));
        assert!(!valid_mac("00:11:22:AA:BB:CC"));
        assert!(!valid_mac("0011.22aa.bbcc"));
        assert!(valid_mac(&["80"; 20].join(":")));
        assert!(!valid_mac(&["80"; 21].join(":")));
    }
}
