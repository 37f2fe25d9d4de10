//! Who may change a running contract: the update rule.
//!
//! A new version of a contract a node runs is an update only when it keeps the running
//! version's owner and carries the consent the running version demands: the owner's
//! signature and, counted over the NEW document's digest, the signatures of the
//! RUNNING version's required stakeholders and enough of its stakeholders' weight to
//! reach the RUNNING version's threshold. So the stakeholder set and the threshold
//! change only with the consent of the set that governs now; an owner alone cannot drop
//! a required stakeholder by publishing a version without it.
//!
//! [`check_update`] is this rule alone; the new document must also pass
//! [`crate::verify()`] on its own terms (its own stakeholders and threshold, the replay
//! floor, the blueprint, ...). A stakeholder of the running version whom the new
//! document no longer names signs the new document's digest all the same: that
//! signature counts here, and [`for_verification`] takes it out of what
//! [`crate::verify()`] sees (which would call it an unknown signer).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::contract::{Contract, SignedContract, Stakeholder};
use crate::crypto::PublicKey;

/// Who governs a contract: what a node keeps of the running version to judge updates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signers {
    /// The running version's owner: an update must keep it and carry its signature.
    pub owner: PublicKey,
    /// The running version's stakeholders, whose consent an update needs.
    #[serde(default)]
    pub stakeholders: Vec<Stakeholder>,
    /// The stakeholder weight an update must carry; 0 when there are no stakeholders.
    #[serde(default)]
    pub threshold: u64,
}

impl From<&Contract> for Signers {
    fn from(c: &Contract) -> Self {
        Signers {
            owner: c.owner,
            stakeholders: c.stakeholders.clone(),
            threshold: c.threshold,
        }
    }
}

/// One reason an update is refused. `code()` is stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum UpdateReason {
    /// The new document names another owner: it is not an update at all.
    #[error("owner changed: the update is owned by {next}, the running version by {running}; an update keeps its owner")]
    OwnerChanged {
        /// The running version's owner.
        running: PublicKey,
        /// The owner the new document names.
        next: PublicKey,
    },
    /// The owner's valid signature over the new digest is missing.
    #[error("the running version's owner {owner} has not signed the update")]
    UpdateOwnerSignatureMissing {
        /// The owner (of both versions).
        owner: PublicKey,
    },
    /// A required stakeholder of the running version has not signed the new digest.
    #[error("the running version's required stakeholder {signer} has not signed the update")]
    UpdateRequiredSignerMissing {
        /// That stakeholder.
        signer: PublicKey,
    },
    /// The running version's stakeholders signed the new digest with too little weight.
    #[error("the running version's threshold is not met by the update: its stakeholders signed weight {have} of {need}")]
    UpdateThresholdNotMet {
        /// The weight of the running version's stakeholders who signed.
        have: u64,
        /// The running version's threshold.
        need: u64,
    },
}

impl UpdateReason {
    /// A stable snake_case code (the `code` field of the JSON form).
    pub fn code(&self) -> &'static str {
        match self {
            UpdateReason::OwnerChanged { .. } => "owner_changed",
            UpdateReason::UpdateOwnerSignatureMissing { .. } => "update_owner_signature_missing",
            UpdateReason::UpdateRequiredSignerMissing { .. } => "update_required_signer_missing",
            UpdateReason::UpdateThresholdNotMet { .. } => "update_threshold_not_met",
        }
    }
}

/// A refused update and every reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct UpdateRefusal {
    /// Every reason found; never empty.
    pub reasons: Vec<UpdateReason>,
}

impl std::fmt::Display for UpdateRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("update refused: ")?;
        for (i, r) in self.reasons.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

/// Checks that `next` may replace the version governed by `running` (see the module
/// docs). The caller has checked that `next` has the running contract's id and a
/// higher version. A different owner is the one reason given for a document of
/// another owner: it is never an update, whoever else signed it.
pub fn check_update(running: &Signers, next: &SignedContract) -> Result<(), UpdateRefusal> {
    if next.contract.owner != running.owner {
        return Err(UpdateRefusal {
            reasons: vec![UpdateReason::OwnerChanged {
                running: running.owner,
                next: next.contract.owner,
            }],
        });
    }
    // Every signer once, and only signatures that verify over the new digest.
    let mut seen = BTreeSet::new();
    let signed: BTreeSet<PublicKey> = next
        .signatures
        .iter()
        .filter(|s| seen.insert(s.signer))
        .filter(|s| s.signer.verify(&next.digest, &s.signature).is_ok())
        .map(|s| s.signer)
        .collect();
    let mut reasons = Vec::new();
    if !signed.contains(&running.owner) {
        reasons.push(UpdateReason::UpdateOwnerSignatureMissing {
            owner: running.owner,
        });
    }
    for s in running
        .stakeholders
        .iter()
        .filter(|s| s.required && !signed.contains(&s.key))
    {
        reasons.push(UpdateReason::UpdateRequiredSignerMissing { signer: s.key });
    }
    let have = running
        .stakeholders
        .iter()
        .filter(|s| signed.contains(&s.key))
        .fold(0u64, |acc, s| acc.saturating_add(s.weight));
    if have < running.threshold {
        reasons.push(UpdateReason::UpdateThresholdNotMet {
            have,
            need: running.threshold,
        });
    }
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(UpdateRefusal { reasons })
    }
}

/// `next` without the signatures of the running version's stakeholders that `next`
/// itself does not name: they count for [`check_update`] only, and
/// [`crate::verify()`] judges the rest (a signer neither version names stays in, and
/// is refused there as unknown).
pub fn for_verification(running: &Signers, next: &SignedContract) -> SignedContract {
    let c = &next.contract;
    let named = |k: &PublicKey| *k == c.owner || c.stakeholders.iter().any(|s| s.key == *k);
    let governs = |k: &PublicKey| running.stakeholders.iter().any(|s| s.key == *k);
    let mut out = next.clone();
    out.signatures
        .retain(|s| named(&s.signer) || !governs(&s.signer));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{BlueprintRef, SignatureEntry};
    use crate::crypto::SecretKey;

    fn key(n: u8) -> SecretKey {
        SecretKey::from_seed([n; 32])
    }

    fn holder(k: &SecretKey, weight: u64, required: bool) -> Stakeholder {
        Stakeholder {
            key: k.public(),
            weight,
            required,
        }
    }

    fn doc(owner: &SecretKey, stakeholders: Vec<Stakeholder>, threshold: u64) -> SignedContract {
        SignedContract::new(Contract {
            id: "c".into(),
            version: 2,
            owner: owner.public(),
            nodes: vec![key(50).public()],
            blueprint: BlueprintRef::Sha256(crate::Digest::of(b"bp")),
            params: Default::default(),
            stakeholders,
            threshold,
            not_before: None,
            expires: None,
        })
        .unwrap()
    }

    /// `k`'s signature over `d`'s digest, named or not by the document.
    fn sign(d: &mut SignedContract, k: &SecretKey) {
        d.signatures.push(SignatureEntry {
            signer: k.public(),
            signature: k.sign(&d.digest),
        });
    }

    fn codes(r: Result<(), UpdateRefusal>) -> Vec<&'static str> {
        r.err()
            .map(|e| e.reasons.iter().map(UpdateReason::code).collect())
            .unwrap_or_default()
    }

    #[test]
    fn another_owner_is_never_an_update() {
        let (a, b, legal) = (key(1), key(2), key(3));
        let running = Signers {
            owner: a.public(),
            stakeholders: vec![holder(&legal, 1, true)],
            threshold: 1,
        };
        let mut next = doc(&b, vec![holder(&legal, 1, true)], 1);
        sign(&mut next, &b);
        sign(&mut next, &legal);
        sign(&mut next, &a);
        let err = check_update(&running, &next).unwrap_err();
        assert_eq!(
            err.reasons,
            [UpdateReason::OwnerChanged {
                running: a.public(),
                next: b.public()
            }]
        );
        assert!(err.to_string().contains("keeps its owner"), "{err}");
    }

    #[test]
    fn the_running_versions_required_stakeholders_must_sign_the_new_digest() {
        let (a, legal, budget) = (key(1), key(3), key(4));
        let running = Signers {
            owner: a.public(),
            stakeholders: vec![holder(&legal, 1, true), holder(&budget, 1, false)],
            threshold: 2,
        };
        // Dropping both stakeholders, signed by the owner alone.
        let mut next = doc(&a, vec![], 0);
        sign(&mut next, &a);
        assert_eq!(
            codes(check_update(&running, &next)),
            ["update_required_signer_missing", "update_threshold_not_met"]
        );
        // With both of the running set's signatures on the new digest: an update.
        sign(&mut next, &legal);
        sign(&mut next, &budget);
        assert_eq!(check_update(&running, &next), Ok(()));
    }

    #[test]
    fn signatures_count_only_when_they_verify_over_the_new_digest_and_once() {
        let (a, legal, budget) = (key(1), key(3), key(4));
        let running = Signers {
            owner: a.public(),
            stakeholders: vec![holder(&legal, 1, false), holder(&budget, 1, false)],
            threshold: 2,
        };
        let mut next = doc(&a, running.stakeholders.clone(), 2);
        sign(&mut next, &a);
        // legal twice; budget's signature over another digest.
        sign(&mut next, &legal);
        sign(&mut next, &legal);
        next.signatures.push(SignatureEntry {
            signer: budget.public(),
            signature: budget.sign(&crate::Digest::of(b"other")),
        });
        assert_eq!(
            codes(check_update(&running, &next)),
            ["update_threshold_not_met"]
        );
        // The owner's signature over another digest does not count either.
        let mut forged = doc(&a, vec![], 0);
        forged.signatures.push(SignatureEntry {
            signer: a.public(),
            signature: a.sign(&crate::Digest::of(b"other")),
        });
        let owner_only = Signers {
            owner: a.public(),
            stakeholders: vec![],
            threshold: 0,
        };
        assert_eq!(
            codes(check_update(&owner_only, &forged)),
            ["update_owner_signature_missing"]
        );
    }

    #[test]
    fn lowering_the_threshold_needs_the_running_threshold() {
        let (a, legal, budget) = (key(1), key(3), key(4));
        let holders = vec![holder(&legal, 1, false), holder(&budget, 1, false)];
        let running = Signers {
            owner: a.public(),
            stakeholders: holders.clone(),
            threshold: 2,
        };
        let mut next = doc(&a, holders, 1);
        sign(&mut next, &a);
        sign(&mut next, &legal);
        assert_eq!(
            codes(check_update(&running, &next)),
            ["update_threshold_not_met"]
        );
    }

    #[test]
    fn verification_sees_no_signature_of_a_dropped_stakeholder_only() {
        let (a, legal, stranger) = (key(1), key(3), key(9));
        let running = Signers {
            owner: a.public(),
            stakeholders: vec![holder(&legal, 1, true)],
            threshold: 1,
        };
        let mut next = doc(&a, vec![], 0);
        sign(&mut next, &a);
        sign(&mut next, &legal);
        sign(&mut next, &stranger);
        let seen: Vec<PublicKey> = for_verification(&running, &next)
            .signatures
            .iter()
            .map(|s| s.signer)
            .collect();
        assert_eq!(seen, [a.public(), stranger.public()]);
        assert_eq!(check_update(&running, &next), Ok(()));
    }
}
