//! `farms/<farm_id>`: a farm, signed by its farmer.
//!
//! ```json
//! {"blueprint_authors":["<hex>"],"created":1700000000,"farmer":"<hex>","id":"farm-1","name":"Ghent rack 3"}
//! ```
//!
//! `logs` and `metrics` are optional too: `{"url": "...", "ca_pem": "..."}`, where the
//! farm's nodes send their own logs and push their metrics ([`Telemetry`]).
//!
//! `blueprint_authors` is optional: when the farmer lists keys there, the farm's nodes run
//! only blueprints signed by one of them (M8 in docs/security.md); absent or empty, any
//! well-signed blueprint is accepted, as before.
//!
//! The notary accepts any well-signed record under `farms/`, so the farm's rules are
//! checked here: the record's author is the `farmer` of its body ([`Farm::from_record`]),
//! and an update is signed by the same farmer and keeps `id` and `created`
//! ([`Farm::check_update`]). Nodes pin the farmer they first registered under, so a
//! farm record replaced by someone else's is refused by the nodes of that farm too.

use serde::{Deserialize, Serialize};
use zos_contract::deployment::{Telemetry, TelemetryKind};
use zos_contract::{PublicKey, SecretKey};
use zos_notary::{KeyKind, NotaryKey, Record};

use crate::{check_int, check_text, parse_body, RegistryError};

/// Longest farm name, in characters.
pub const MAX_NAME: usize = 128;
/// Most trusted blueprint authors a farm may name.
pub const MAX_BLUEPRINT_AUTHORS: usize = 64;

/// The body of a farm record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Farm {
    /// The farm id: the last segment of its key (`[A-Za-z0-9._-]`, 1-128).
    pub id: String,
    /// A name for people.
    pub name: String,
    /// The farmer's public key: the only key that may sign this record.
    pub farmer: PublicKey,
    /// Unix seconds of the farm's creation; kept by updates.
    pub created: u64,
    /// The blueprint authors the farm's nodes trust, sorted and without repeats; empty:
    /// any author. Absent from the record when empty, so older farm records still read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blueprint_authors: Vec<PublicKey>,
    /// Where the farm's nodes send their own logs (zosd's, PID 1's, the kernel's); absent:
    /// the logs stay on the node (docs/observability.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<Telemetry>,
    /// Where the farm's nodes push their node metrics (a Prometheus remote-write URL);
    /// absent: none are pushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Telemetry>,
}

impl Farm {
    /// A new farm, checked.
    pub fn new(
        id: &str,
        name: &str,
        farmer: PublicKey,
        created: u64,
    ) -> Result<Farm, RegistryError> {
        let farm = Farm {
            id: id.to_owned(),
            name: name.to_owned(),
            farmer,
            created,
            blueprint_authors: Vec::new(),
            logs: None,
            metrics: None,
        };
        farm.check(NotaryKey::farm(id)?.as_str())?;
        Ok(farm)
    }

    /// This farm trusting exactly `authors` (sorted, repeats dropped) for blueprints.
    pub fn with_blueprint_authors(
        mut self,
        authors: impl IntoIterator<Item = PublicKey>,
    ) -> Result<Farm, RegistryError> {
        let set: std::collections::BTreeSet<PublicKey> = authors.into_iter().collect();
        self.blueprint_authors = set.into_iter().collect();
        self.check(self.key()?.as_str())?;
        Ok(self)
    }

    /// The key this farm lives under.
    pub fn key(&self) -> Result<NotaryKey, RegistryError> {
        Ok(NotaryKey::farm(&self.id)?)
    }

    /// This farm sending its nodes' logs to `logs` and their metrics to `metrics`.
    pub fn with_telemetry(
        mut self,
        logs: Option<Telemetry>,
        metrics: Option<Telemetry>,
    ) -> Result<Farm, RegistryError> {
        self.logs = logs;
        self.metrics = metrics;
        self.check(self.key()?.as_str())?;
        Ok(self)
    }

    fn check(&self, key: &str) -> Result<(), RegistryError> {
        check_text(key, "name", &self.name, MAX_NAME)?;
        check_int(key, "created", self.created)?;
        for (field, target, kind) in [
            ("logs", &self.logs, TelemetryKind::Logs),
            ("metrics", &self.metrics, TelemetryKind::Metrics),
        ] {
            let problems = target.iter().flat_map(|t| t.check(kind, field));
            if let Some((path, reason)) = problems.into_iter().next() {
                return Err(RegistryError::Invalid {
                    key: key.to_owned(),
                    field,
                    reason: format!("{path}: {reason}"),
                });
            }
        }
        if self.blueprint_authors.len() > MAX_BLUEPRINT_AUTHORS {
            return Err(RegistryError::Invalid {
                key: key.to_owned(),
                field: "blueprint_authors",
                reason: format!(
                    "{} keys, at most {MAX_BLUEPRINT_AUTHORS}",
                    self.blueprint_authors.len()
                ),
            });
        }
        if !self.blueprint_authors.windows(2).all(|w| w[0] < w[1]) {
            return Err(RegistryError::Invalid {
                key: key.to_owned(),
                field: "blueprint_authors",
                reason: "not sorted, or a key repeats".to_owned(),
            });
        }
        Ok(())
    }

    /// Signs the farm record with the farmer's key at `signed_at`. Refused when `secret`
    /// is not the farmer's: nobody would accept the record.
    pub fn sign(&self, secret: &SecretKey, signed_at: u64) -> Result<Record, RegistryError> {
        let key = self.key()?;
        self.check(key.as_str())?;
        if secret.public() != self.farmer {
            return Err(RegistryError::FarmerNotAuthor {
                farm: self.id.clone(),
                farmer: self.farmer,
                author: secret.public(),
            });
        }
        let body = serde_json::to_value(self).expect("a farm serializes");
        Ok(Record::sign_at(&key, body, secret, signed_at)?)
    }

    /// The farm a record holds: the envelope verifies, the key is a farm key, the body is
    /// a valid farm with the key's id, and the author is the farmer it names.
    pub fn from_record(record: &Record) -> Result<Farm, RegistryError> {
        record.verify()?;
        let key = record.notary_key()?;
        let KeyKind::Farm { farm_id } = key.kind() else {
            return Err(RegistryError::WrongKind {
                key: record.key.clone(),
                expected: "farm",
            });
        };
        let farm: Farm = parse_body(&record.key, &record.body)?;
        if farm.id != farm_id {
            return Err(RegistryError::FarmIdMismatch {
                key: record.key.clone(),
                body_id: farm.id,
            });
        }
        farm.check(&record.key)?;
        if record.author != farm.farmer {
            return Err(RegistryError::FarmerNotAuthor {
                farm: farm.id,
                farmer: farm.farmer,
                author: record.author,
            });
        }
        Ok(farm)
    }

    /// Whether `new` may replace `self`: same id, same farmer. A farm never changes
    /// hands through the notary (a farmer who lost their key makes a new farm), so
    /// whoever can write to the store cannot take a farm and its nodes over.
    pub fn check_update(&self, new: &Farm) -> Result<(), RegistryError> {
        if new.id != self.id {
            return Err(RegistryError::FarmIdMismatch {
                key: format!("farms/{}", self.id),
                body_id: new.id.clone(),
            });
        }
        if new.farmer != self.farmer {
            return Err(RegistryError::FarmerChanged {
                farm: self.id.clone(),
                owner: self.farmer,
                new: new.farmer,
            });
        }
        Ok(())
    }

    /// The farm to publish for `zos farm create`: a new one, or, when the notary holds
    /// `existing`, that farm renamed (same farmer, same `created`, same trusted
    /// blueprint authors: [`Farm::with_blueprint_authors`] changes those).
    pub fn create_or_update(
        existing: Option<&Farm>,
        id: &str,
        name: &str,
        farmer: PublicKey,
        now: u64,
    ) -> Result<Farm, RegistryError> {
        let created = existing.map_or(now, |f| f.created);
        let authors = existing.map(|f| f.blueprint_authors.clone());
        let new = Farm::new(id, name, farmer, created)?
            .with_blueprint_authors(authors.unwrap_or_default())?
            .with_telemetry(
                existing.and_then(|f| f.logs.clone()),
                existing.and_then(|f| f.metrics.clone()),
            )?;
        if let Some(old) = existing {
            old.check_update(&new)?;
        }
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sk(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    #[test]
    fn a_farm_signed_by_its_farmer_reads_back() {
        let farmer = sk(1);
        let farm = Farm::new("farm-1", "Ghent rack 3", farmer.public(), 100).unwrap();
        let record = farm.sign(&farmer, 200).unwrap();
        assert_eq!(record.key, "farms/farm-1");
        assert_eq!(Farm::from_record(&record).unwrap(), farm);
        // The documented body form.
        assert_eq!(
            String::from_utf8(zos_contract::canonical::to_vec(&record.body).unwrap()).unwrap(),
            format!(
                r#"{{"created":100,"farmer":"{}","id":"farm-1","name":"Ghent rack 3"}}"#,
                farmer.public()
            )
        );
    }

    #[test]
    fn a_farm_signed_by_another_key_is_refused() {
        let farm = Farm::new("f", "n", sk(1).public(), 1).unwrap();
        assert!(matches!(
            farm.sign(&sk(2), 1),
            Err(RegistryError::FarmerNotAuthor { .. })
        ));
        // Forged by hand: a valid envelope by key 2 naming farmer 1.
        let key = NotaryKey::farm("f").unwrap();
        let forged =
            Record::sign_at(&key, serde_json::to_value(&farm).unwrap(), &sk(2), 1).unwrap();
        assert!(matches!(
            Farm::from_record(&forged),
            Err(RegistryError::FarmerNotAuthor { .. })
        ));
    }

    #[test]
    fn bodies_are_read_strictly() {
        let s = sk(1);
        let key = NotaryKey::farm("f").unwrap();
        let sign = |body| Record::sign_at(&key, body, &s, 1).unwrap();
        let good = json!({"id": "f", "name": "n", "farmer": s.public(), "created": 1});
        Farm::from_record(&sign(good.clone())).unwrap();
        let mut extra = good.clone();
        extra["owner"] = json!("x");
        assert!(matches!(
            Farm::from_record(&sign(extra)),
            Err(RegistryError::Body { .. })
        ));
        let mut other_id = good.clone();
        other_id["id"] = json!("g");
        assert!(matches!(
            Farm::from_record(&sign(other_id)),
            Err(RegistryError::FarmIdMismatch { .. })
        ));
        for bad in [json!(""), json!("a\u{1b}[2Jb"), json!("x".repeat(129))] {
            let mut b = good.clone();
            b["name"] = bad;
            assert!(matches!(
                Farm::from_record(&sign(b)),
                Err(RegistryError::Invalid { field: "name", .. })
            ));
        }
        // One spelling: the body as a positional array, or a null member, is refused.
        let s2 = s.public();
        for odd in [
            json!(["f", "n", s2, 1]),
            json!({"id": "f", "name": "n", "farmer": s2, "created": 1, "blueprint_authors": null}),
        ] {
            assert!(matches!(
                Farm::from_record(&sign(odd)),
                Err(RegistryError::Body { .. })
            ));
        }
        // Not a farm key.
        let hb = NotaryKey::heartbeat(&s.public());
        let r = Record::sign_at(&hb, good, &s, 1).unwrap();
        assert!(matches!(
            Farm::from_record(&r),
            Err(RegistryError::WrongKind { .. })
        ));
        // Tampered envelope.
        let mut t = sign(json!({"id": "f", "name": "n", "farmer": s.public(), "created": 1}));
        t.body["name"] = json!("m");
        assert!(matches!(
            Farm::from_record(&t),
            Err(RegistryError::Record(_))
        ));
    }

    #[test]
    fn an_update_keeps_the_farmer_and_the_creation_time() {
        let a = sk(1).public();
        let old = Farm::new("f", "old", a, 10).unwrap();
        let renamed = Farm::create_or_update(Some(&old), "f", "new", a, 99).unwrap();
        assert_eq!((renamed.name.as_str(), renamed.created), ("new", 10));
        assert!(matches!(
            Farm::create_or_update(Some(&old), "f", "mine", sk(2).public(), 99),
            Err(RegistryError::FarmerChanged { .. })
        ));
        let fresh = Farm::create_or_update(None, "f", "n", a, 99).unwrap();
        assert_eq!(fresh.created, 99);
        assert!(matches!(
            Farm::new("../x", "n", a, 1),
            Err(RegistryError::Key(_))
        ));
    }

    #[test]
    fn telemetry_targets_are_checked_and_kept_by_a_rename() {
        let t = |url: &str, ca: Option<&str>| Telemetry {
            url: url.into(),
            ca_pem: ca.map(str::to_owned),
        };
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let farm = Farm::new("f", "n", sk(1).public(), 1)
            .unwrap()
            .with_telemetry(
                Some(t("syslog+tls://logs.example:6514", Some(pem))),
                Some(t("http://10.0.0.1:9090/api/v1/write", None)),
            )
            .unwrap();
        let record = farm.sign(&sk(1), 2).unwrap();
        assert_eq!(Farm::from_record(&record).unwrap(), farm);
        let renamed = Farm::create_or_update(Some(&farm), "f", "m", sk(1).public(), 3).unwrap();
        assert_eq!(
            (renamed.logs, renamed.metrics),
            (farm.logs.clone(), farm.metrics.clone())
        );
        let bad = |logs: Option<Telemetry>, metrics: Option<Telemetry>| match Farm::new(
            "f",
            "n",
            sk(1).public(),
            1,
        )
        .unwrap()
        .with_telemetry(logs, metrics)
        {
            Err(RegistryError::Invalid { field, reason, .. }) => (field, reason),
            other => panic!("accepted: {other:?}"),
        };
        assert_eq!(bad(Some(t("ftp://x:1", None)), None).0, "logs");
        assert!(bad(Some(t("syslog+tls://x:1", None)), None)
            .1
            .contains("needs ca_pem"));
        assert!(bad(Some(t("syslog+tls://x:1", Some("junk"))), None)
            .1
            .contains("no PEM"));
        assert_eq!(bad(None, Some(t("syslog+tcp://x:1", None))).0, "metrics");
        assert_eq!(bad(None, Some(t("https://x:1/w", None))).0, "metrics");
        let long = format!(
            "http://{}",
            "a".repeat(zos_contract::deployment::MAX_TELEMETRY_URL)
        );
        assert_eq!(bad(None, Some(t(&long, None))).0, "metrics");
    }

    #[test]
    fn trusted_blueprint_authors_are_kept_sorted_and_bounded() {
        let (a, b) = (sk(1).public(), sk(2).public());
        let farm = Farm::new("f", "n", a, 1)
            .unwrap()
            .with_blueprint_authors([b, a, b])
            .unwrap();
        let mut sorted = vec![a, b];
        sorted.sort();
        assert_eq!(farm.blueprint_authors, sorted);
        let record = farm.sign(&sk(1), 2).unwrap();
        assert_eq!(Farm::from_record(&record).unwrap(), farm);
        // A rename keeps them.
        let renamed = Farm::create_or_update(Some(&farm), "f", "m", a, 9).unwrap();
        assert_eq!(renamed.blueprint_authors, sorted);
        // Written by hand unsorted, repeated or too many: refused.
        let key = NotaryKey::farm("f").unwrap();
        let sign = |authors: serde_json::Value| {
            let body = json!({"id": "f", "name": "n", "farmer": a, "created": 1,
                              "blueprint_authors": authors});
            Farm::from_record(&Record::sign_at(&key, body, &sk(1), 1).unwrap())
        };
        for bad in [
            json!([sorted[1], sorted[0]]),
            json!([a, a]),
            json!((0..65u8).map(|n| sk(n).public()).collect::<Vec<_>>()),
        ] {
            assert!(matches!(
                sign(bad),
                Err(RegistryError::Invalid {
                    field: "blueprint_authors",
                    ..
                })
            ));
        }
        // An older record without the field still reads, trusting any author.
        let plain = Farm::new("f", "n", a, 1).unwrap().sign(&sk(1), 1).unwrap();
        assert!(!plain
            .body
            .as_object()
            .unwrap()
            .contains_key("blueprint_authors"));
        assert!(Farm::from_record(&plain)
            .unwrap()
            .blueprint_authors
            .is_empty());
    }
}
