//! Expiry: contracts past their end.
//!
//! - Inputs: the journal (owned contracts' `expires`, retired contracts'
//!   `volumes_until`) and the wall clock (unix seconds).
//! - Actions ([`Action`]): expire a contract (its workloads and networks go, its
//!   volumes wait out the grace period for its owner), and delete the volumes of a
//!   contract whose grace period is over.

use std::time::Duration;

use crate::journal::{JournalData, Owned, Retired};

/// What expiry decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Its grace period is over: remove what it has, volumes included.
    DeleteVolumes(Box<Retired>),
    /// It expired: retire it (journal first) until `volumes_until`, then remove its
    /// workloads and networks.
    Expire {
        /// The expired contract.
        owned: Box<Owned>,
        /// Unix seconds: its volumes are kept until then.
        volumes_until: u64,
    },
}

/// One pass at `wall` (unix seconds), with volumes kept `grace` after expiry.
pub fn plan(j: &JournalData, wall: u64, grace: Duration) -> Vec<Action> {
    let over = j
        .retired
        .values()
        .filter(|r| wall >= r.volumes_until)
        .map(|r| Action::DeleteVolumes(Box::new(r.clone())));
    let expired = j.owned.values().filter_map(|o| {
        let expires = o.expires.filter(|e| wall >= *e)?;
        Some(Action::Expire {
            owned: Box::new(o.clone()),
            volumes_until: wall.max(expires).saturating_add(grace.as_secs()),
        })
    });
    over.chain(expired).collect()
}

/// The journal change of [`Action::Expire`].
pub fn journal_expire(j: &mut JournalData, owned: &Owned, volumes_until: u64) {
    j.owned.remove(&owned.id);
    j.members.remove(&owned.id);
    j.retired.insert(
        owned.id.clone(),
        Retired {
            owned: owned.clone(),
            volumes_until,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Phase;

    #[test]
    fn an_expired_contract_is_retired_for_the_grace_period_then_its_volumes_go() {
        let owned = Owned {
            id: "web".into(),
            version: 1,
            digest: zos_contract::Digest::of(b"x"),
            owner: zos_contract::SecretKey::from_seed([2; 32]).public(),
            expires: Some(1000),
            deployment: serde_json::from_value(serde_json::json!({"workloads": []})).unwrap(),
            phase: Phase::Running,
            restarts: Default::default(),
            signers: None,
            held: None,
        };
        let mut j = JournalData::default();
        j.owned.insert("web".into(), owned.clone());
        let grace = Duration::from_secs(100);
        assert_eq!(plan(&j, 999, grace), []);
        let actions = plan(&j, 1010, grace);
        assert_eq!(
            actions,
            [Action::Expire {
                owned: Box::new(owned.clone()),
                volumes_until: 1110
            }]
        );
        journal_expire(&mut j, &owned, 1110);
        assert!(j.owned.is_empty());
        assert_eq!(plan(&j, 1109, grace), []);
        assert!(
            matches!(&plan(&j, 1110, grace)[..], [Action::DeleteVolumes(r)] if r.owned.id == "web")
        );
    }
}
