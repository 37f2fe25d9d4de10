//! Rollouts: the farmer's signed plan to bring a farm's nodes to a version in waves.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use zos_contract::document::{self, DocError};
use zos_contract::{canonical, Digest, Limits, PublicKey, SecretKey, Signature};

use crate::version::Version;

/// One wave of a rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Wave {
    /// `{"percent": p}`: the first `ceil(p × n / 100)` of the farm's `n` nodes in key
    /// order, cumulative (waves 10, 50, 100 take 10 %, then up to 50 %, then the rest),
    /// less the nodes of earlier waves. 1 to 100, increasing across a rollout's waves.
    Percent(u64),
    /// `{"nodes": [key, …]}`: these nodes, less the nodes of earlier waves.
    Nodes(Vec<PublicKey>),
}

/// A farm's rollout, as its farmer signs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// The farm.
    pub farm: String,
    /// The version the farm's nodes go to (a release the nodes verify themselves).
    pub version: Version,
    /// The waves, in order. A node in none of them is in an implicit last wave
    /// (`waves.len()`): it upgrades once every listed wave is healthy.
    pub waves: Vec<Wave>,
    /// Unix seconds, the farmer's clock: for humans, never for order.
    pub issued_at: u64,
    /// The key that signs: must be the farm's farmer.
    pub farmer: PublicKey,
}

/// A rollout with the farmer's signature over `sha256(jcs(rollout))`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRollout {
    /// The signed body.
    pub rollout: Rollout,
    /// `rollout.farmer`'s signature; absent: unsigned, refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// Why a node does not follow a rollout. `code()` is stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum RolloutRefusal {
    /// No signature.
    #[error("the rollout of farm {farm:?} is unsigned")]
    Unsigned {
        /// The farm it names.
        farm: String,
    },
    /// Another farm's rollout, or signed by a key that is not the farm's farmer.
    #[error("the rollout names farm {farm:?} and key {signer}, not this farm's farmer")]
    NotFarmer {
        /// The farm it names.
        farm: String,
        /// The key it names.
        signer: PublicKey,
    },
    /// The signature does not verify under the farmer's key.
    #[error("the rollout's signature does not verify under {farmer}")]
    BadSignature {
        /// The farmer's key.
        farmer: PublicKey,
    },
    /// Not a rollout a node can follow (unreadable, no waves, percentages out of order).
    #[error("malformed rollout: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
}

impl RolloutRefusal {
    /// `unsigned`, `not_farmer`, `bad_signature`, `malformed`.
    pub fn code(&self) -> &'static str {
        match self {
            RolloutRefusal::Unsigned { .. } => "unsigned",
            RolloutRefusal::NotFarmer { .. } => "not_farmer",
            RolloutRefusal::BadSignature { .. } => "bad_signature",
            RolloutRefusal::Malformed { .. } => "malformed",
        }
    }
}

impl Rollout {
    fn malformed(&self) -> Option<String> {
        if self.waves.is_empty() {
            return Some("no waves".into());
        }
        let mut last = 0;
        for (k, w) in self.waves.iter().enumerate() {
            match w {
                Wave::Percent(p) if *p == 0 || *p > 100 || *p <= last => {
                    return Some(format!(
                        "wave {k}: {p} % (1 to 100, above the previous wave's {last} %)"
                    ))
                }
                Wave::Percent(p) => last = *p,
                Wave::Nodes(nodes) if nodes.is_empty() => {
                    return Some(format!("wave {k}: no nodes"))
                }
                Wave::Nodes(_) => {}
            }
        }
        None
    }
}

impl SignedRollout {
    /// Signs `rollout` with `key`.
    pub fn sign(rollout: Rollout, key: &SecretKey) -> Self {
        let digest = Self::digest_of(&rollout);
        SignedRollout {
            signature: Some(key.sign(&digest)),
            rollout,
        }
    }

    /// `sha256(jcs(rollout))`.
    pub fn digest_of(rollout: &Rollout) -> Digest {
        let value = serde_json::to_value(rollout).expect("a rollout serializes");
        Digest::of(&canonical::to_vec(&value).expect("a rollout has canonical bytes"))
    }

    /// Reads a rollout record from untrusted bytes, within `limits` (the signature is
    /// checked by [`SignedRollout::verify`]).
    pub fn from_bytes(bytes: &[u8], limits: &Limits) -> Result<Self, DocError> {
        let value = document::parse_value(bytes, limits)?;
        document::object(&value, "$")?;
        document::typed(&value, "$")
    }

    /// The record as [`SignedRollout::from_bytes`] reads it.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("a rollout serializes")
    }

    /// The rollout, if it is for `farm`, signed by its `farmer`, and well formed.
    pub fn verify(&self, farm: &str, farmer: &PublicKey) -> Result<&Rollout, RolloutRefusal> {
        let r = &self.rollout;
        let Some(signature) = &self.signature else {
            return Err(RolloutRefusal::Unsigned {
                farm: r.farm.clone(),
            });
        };
        if r.farm != farm || r.farmer != *farmer {
            return Err(RolloutRefusal::NotFarmer {
                farm: r.farm.clone(),
                signer: r.farmer,
            });
        }
        if farmer.verify(&Self::digest_of(r), signature).is_err() {
            return Err(RolloutRefusal::BadSignature { farmer: *farmer });
        }
        if let Some(reason) = r.malformed() {
            return Err(RolloutRefusal::Malformed { reason });
        }
        Ok(r)
    }
}

/// The wave (0-based) of `node` among the farm's nodes `nodes_sorted` (sorted by key,
/// without duplicates): the first wave that takes it, or `waves.len()` (the implicit
/// last wave) when none does.
pub fn wave_of(node: &PublicKey, nodes_sorted: &[PublicKey], waves: &[Wave]) -> usize {
    debug_assert!(
        nodes_sorted.windows(2).all(|w| w[0] < w[1]),
        "sorted, unique"
    );
    let n = nodes_sorted.len() as u64;
    let index = nodes_sorted.binary_search(node).ok().map(|i| i as u64);
    for (k, wave) in waves.iter().enumerate() {
        let takes = match wave {
            Wave::Percent(p) => index.is_some_and(|i| i < (p.min(&100) * n).div_ceil(100)),
            Wave::Nodes(list) => list.contains(node),
        };
        if takes {
            return k;
        }
    }
    waves.len()
}

/// What one node of the previous wave reports in its heartbeat, judged against the
/// rollout's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It runs the rollout's version and reports itself healthy.
    Upgraded,
    /// Anything else: an older version, unhealthy, rolled back, or no heartbeat.
    NotYet,
}

impl Health {
    /// The health of a node that reports `running` (`None`: no heartbeat) and
    /// `healthy`, for a rollout to `target`.
    pub fn of(running: Option<&Version>, healthy: bool, target: &Version) -> Health {
        if healthy && running == Some(target) {
            Health::Upgraded
        } else {
            Health::NotYet
        }
    }
}

/// Whether a node in wave `my_wave` may upgrade, given the health of every node of
/// wave `my_wave - 1`: wave 0 always may; any other only when every node of the
/// previous wave runs the new version healthy (an empty previous wave holds nobody
/// back).
pub fn may_upgrade(my_wave: usize, health_of_previous_wave: &[Health]) -> bool {
    my_wave == 0
        || health_of_previous_wave
            .iter()
            .all(|h| *h == Health::Upgraded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u8) -> Vec<PublicKey> {
        let mut v: Vec<PublicKey> = (0..n)
            .map(|i| SecretKey::from_seed([i + 1; 32]).public())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn percent_waves_are_cumulative_in_key_order() {
        let farm = nodes(10);
        let waves = [Wave::Percent(10), Wave::Percent(50), Wave::Percent(100)];
        let of: Vec<usize> = farm.iter().map(|n| wave_of(n, &farm, &waves)).collect();
        assert_eq!(of, [0, 1, 1, 1, 1, 2, 2, 2, 2, 2]);
    }

    #[test]
    fn a_small_farm_rounds_up_so_the_first_wave_is_never_empty() {
        let farm = nodes(3);
        let waves = [Wave::Percent(10), Wave::Percent(50), Wave::Percent(100)];
        let of: Vec<usize> = farm.iter().map(|n| wave_of(n, &farm, &waves)).collect();
        assert_eq!(of, [0, 1, 2]);
    }

    #[test]
    fn node_lists_take_their_nodes_and_the_rest_is_the_implicit_last_wave() {
        let farm = nodes(4);
        let waves = [
            Wave::Nodes(vec![farm[2]]),
            Wave::Nodes(vec![farm[2], farm[0]]),
        ];
        assert_eq!(wave_of(&farm[2], &farm, &waves), 0);
        assert_eq!(wave_of(&farm[0], &farm, &waves), 1);
        assert_eq!(wave_of(&farm[1], &farm, &waves), 2);
        assert_eq!(wave_of(&farm[3], &farm, &waves), 2);
        // Not a node of the farm (not in nodes_sorted): only a list can take it.
        let stranger = SecretKey::from_seed([99; 32]).public();
        assert_eq!(wave_of(&stranger, &farm, &[Wave::Percent(100)]), 1);
    }

    #[test]
    fn a_wave_waits_for_every_node_of_the_previous_one() {
        let v2 = Version::new(0, 2, 0);
        let v1 = Version::new(0, 1, 0);
        assert!(may_upgrade(0, &[]));
        assert!(may_upgrade(0, &[Health::NotYet]));
        let up = Health::of(Some(&v2), true, &v2);
        assert_eq!(up, Health::Upgraded);
        assert!(may_upgrade(1, &[up, up]));
        for not_yet in [
            Health::of(Some(&v2), false, &v2),
            Health::of(Some(&v1), true, &v2),
            Health::of(None, true, &v2),
        ] {
            assert_eq!(not_yet, Health::NotYet);
            assert!(!may_upgrade(1, &[up, not_yet]));
            assert!(!may_upgrade(2, &[not_yet]));
        }
        assert!(may_upgrade(3, &[]));
    }

    #[test]
    fn a_rollout_is_followed_only_from_its_farmer() {
        let farmer = SecretKey::from_seed([7; 32]);
        let other = SecretKey::from_seed([8; 32]);
        let rollout = Rollout {
            farm: "f1".into(),
            version: Version::new(0, 2, 0),
            waves: vec![Wave::Percent(10), Wave::Percent(100)],
            issued_at: 1,
            farmer: farmer.public(),
        };
        let signed = SignedRollout::sign(rollout.clone(), &farmer);
        let bytes = serde_json::to_vec(&signed.to_value()).unwrap();
        let read = SignedRollout::from_bytes(&bytes, &Limits::default()).unwrap();
        assert_eq!(read.verify("f1", &farmer.public()).unwrap(), &rollout);
        assert_eq!(
            read.to_value()["rollout"]["waves"],
            serde_json::json!([{"percent": 10}, {"percent": 100}])
        );

        let code = |s: &SignedRollout| s.verify("f1", &farmer.public()).unwrap_err().code();
        let mut unsigned = signed.clone();
        unsigned.signature = None;
        assert_eq!(code(&unsigned), "unsigned");
        let mut theirs = rollout.clone();
        theirs.farmer = other.public();
        assert_eq!(code(&SignedRollout::sign(theirs, &other)), "not_farmer");
        assert_eq!(
            signed.verify("f2", &farmer.public()).unwrap_err().code(),
            "not_farmer"
        );
        assert_eq!(
            code(&SignedRollout::sign(rollout.clone(), &other)),
            "bad_signature"
        );
        for waves in [
            vec![],
            vec![Wave::Percent(0)],
            vec![Wave::Percent(101)],
            vec![Wave::Percent(50), Wave::Percent(50)],
            vec![Wave::Nodes(vec![])],
        ] {
            let mut bad = rollout.clone();
            bad.waves = waves;
            assert_eq!(code(&SignedRollout::sign(bad, &farmer)), "malformed");
        }
    }
}
