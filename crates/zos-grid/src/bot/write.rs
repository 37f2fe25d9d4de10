//! A round's writes: per contract the placement record's compare-and-swap, then (only
//! if it won) the assignments; once every contract's are done, the removal of the
//! assignments they replaced (which only tidies: the old node stops on the newer epoch
//! anyway), so that no new assignment waits behind a deletion.

use zos_contract::PublicKey;
use zos_notary::{Expect, Notary, NotaryError, NotaryKey, Record};

use super::{Bot, BotError};

/// How many contracts' writes a round has in flight at once (etcd commits concurrent
/// writes together: more in flight, fewer fsync waits each).
pub(super) const WRITERS: usize = 32;

/// What one contract's plan writes: the placement record (compared and swapped), then
/// the assignments, then the removal of the assignments it replaced.
pub(super) struct Write {
    pub(super) contract: String,
    /// The placement record's key.
    pub(super) key: NotaryKey,
    pub(super) record: Record,
    pub(super) expect: Expect,
    /// Signed assignment records, with (replica, node, epoch).
    pub(super) assignments: Vec<(Record, u64, PublicKey, u64)>,
    /// (replica, old node, its assignment key).
    pub(super) replaced: Vec<(u64, PublicKey, NotaryKey)>,
}

/// How a [`Write`] went.
pub(super) enum Written {
    /// The record was swapped; these assignments were written.
    Done {
        /// (contract, replica, node, epoch) of each assignment written.
        assigned: Vec<(String, u64, PublicKey, u64)>,
        /// Every record written: the placement record, then the assignments.
        records: Vec<Record>,
        /// The replaced assignments, to remove ([`Bot::remove`]): (contract, replica,
        /// old node, key).
        replaced: Vec<(String, u64, PublicKey, NotaryKey)>,
    },
    /// Another writer changed the record since it was read: nothing was written.
    Conflict(NotaryKey),
}

impl<N: Notary> Bot<N> {
    /// Carries out one contract's [`Write`]: the placement record's compare-and-swap,
    /// then (only if it won) the assignments.
    ///
    /// A failure after the compare-and-swap (an assignment not written) fails the
    /// round: the view then lacks the record written, so the next round's
    /// compare-and-swap fails and re-reads it.
    pub(super) async fn write(&self, w: Write) -> Result<Written, BotError> {
        match self.notary.put_if(&w.record, &w.expect).await {
            Ok(()) => {}
            Err(NotaryError::Conflict { .. }) => {
                tracing::info!(contract = %w.contract, "placement record changed since it was read; planned again next round");
                return Ok(Written::Conflict(w.key));
            }
            Err(e) => return Err(e.into()),
        }
        let mut assigned = Vec::new();
        let mut records = vec![w.record];
        for (record, replica, node, epoch) in w.assignments {
            self.notary.put(&record).await?;
            tracing::info!(contract = %w.contract, replica, %node, epoch, "assigned");
            assigned.push((w.contract.clone(), replica, node, epoch));
            records.push(record);
        }
        let replaced = w
            .replaced
            .into_iter()
            .map(|(replica, old, key)| (w.contract.clone(), replica, old, key))
            .collect();
        Ok(Written::Done {
            assigned,
            records,
            replaced,
        })
    }

    /// Removes a replaced assignment: `Some(key)` when it is gone. The old node stops
    /// on the newer epoch elsewhere anyway (or has fenced); this only tidies its
    /// directory, so a failure is logged, not a round's.
    pub(super) async fn remove(
        &self,
        (contract, replica, old, key): (String, u64, PublicKey, NotaryKey),
    ) -> Option<NotaryKey> {
        match self.notary.delete(&key).await {
            Ok(()) => Some(key),
            Err(e) => {
                tracing::warn!(%contract, replica, node = %old, error = %e, "removing a replaced assignment");
                None
            }
        }
    }

    pub(super) fn sign(
        &self,
        key: &NotaryKey,
        body: serde_json::Value,
    ) -> Result<Record, BotError> {
        Record::sign(key, body, &self.key).map_err(|e| BotError::Sign {
            key: key.to_string(),
            error: e.to_string(),
        })
    }
}
