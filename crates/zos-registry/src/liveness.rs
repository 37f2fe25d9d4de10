//! `nodes/<node>/alive`: the node's liveness, a leased record it keeps alive
//! (docs/grid.md, "Timing: why a replica never runs twice").
//!
//! [`start`] runs one task: grant a lease of the TTL, put the alive record with it, then
//! keep the lease alive every TTL / 3. When a renewal fails (the lease expired, the
//! notary is unreachable, anything), it grants a new lease and puts the record again,
//! retrying every TTL / 3 until that succeeds. The record's body (`{"ttl_ms": …}`) is for
//! people: readers judge liveness by the key's presence, on their own clock.
//!
//! For the node's fence, [`Liveness::renewed`] gives the time of the last renewal that
//! **succeeded**, read on [`boottime`] just **before sending** it: the server renewed
//! the lease at or after that moment, so measuring from it makes the fence an upper
//! bound. A first put counts as a renewal from just before its lease was granted.
//!
//! Dropping the [`Liveness`] stops the task and revokes nothing: a node that stops
//! renewing is what a dead node looks like, and the record goes when its lease expires.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use zos_contract::SecretKey;
use zos_notary::{AnyNotary, Expect, Lease, Notary, NotaryError, NotaryKey, Record};

/// The node's clock for liveness: `CLOCK_BOOTTIME`, which keeps counting while the
/// machine is suspended (`CLOCK_MONOTONIC` stops). A node resumed after a suspend must
/// count the suspension as time without renewal, or it would fence late.
pub fn boottime() -> Duration {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .expect("CLOCK_BOOTTIME exists on every Linux zosd supports (2.6.39 and later)");
    // A clock since boot is never negative.
    Duration::new(
        ts.tv_sec().max(0) as u64,
        ts.tv_nsec().clamp(0, 999_999_999) as u32,
    )
}

/// The running liveness task of a node; see the module docs.
#[derive(Debug)]
pub struct Liveness {
    renewed: watch::Receiver<Option<Duration>>,
    task: JoinHandle<()>,
}

impl Liveness {
    /// The [`boottime`] read just before sending the last renewal that succeeded; `None`
    /// until the first success.
    pub fn renewed(&self) -> watch::Receiver<Option<Duration>> {
        self.renewed.clone()
    }
}

impl Drop for Liveness {
    fn drop(&mut self) {
        // No revoke: a node that stops renewing is a node that died.
        self.task.abort();
    }
}

/// Starts keeping `nodes/<key>/alive` alive with leases of `ttl` (a tokio task on the
/// current runtime).
pub fn start(notary: AnyNotary, key: SecretKey, ttl: Duration) -> Liveness {
    let (tx, renewed) = watch::channel(None);
    let task = tokio::spawn(run(notary, key, ttl, tx));
    Liveness { renewed, task }
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum Failed {
    #[error(transparent)]
    Notary(#[from] NotaryError),
    #[error("signing the alive record: {0}")]
    Sign(zos_notary::RecordError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

async fn run(
    notary: AnyNotary,
    key: SecretKey,
    ttl: Duration,
    renewed: watch::Sender<Option<Duration>>,
) {
    let node = key.public();
    let period = (ttl / 3).max(Duration::from_millis(100));
    let mut failing = false;
    loop {
        let sent = boottime();
        match announce(&notary, &key, ttl).await {
            Ok(lease) => {
                renewed.send_replace(Some(sent));
                tracing::info!(%node, lease = lease.id(), ttl_ms = lease.ttl().as_millis() as u64, recovered = failing, "alive record put under a new lease");
                failing = false;
                let error = keep(&notary, &lease, period, &renewed).await;
                tracing::warn!(%node, lease = lease.id(), error = %error, "liveness renewal failed; putting the alive record under a new lease");
            }
            Err(error) if failing => {
                tracing::debug!(%node, error = %error, "alive record: still failing; trying again")
            }
            Err(error) => {
                failing = true;
                tracing::warn!(%node, error = %error, retry_ms = period.as_millis() as u64, "alive record could not be put; trying again");
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Grants a lease and puts the alive record with it.
async fn announce(notary: &AnyNotary, key: &SecretKey, ttl: Duration) -> Result<Lease, Failed> {
    let lease = bounded(ttl, notary.grant_lease(ttl)).await?;
    let body = serde_json::json!({ "ttl_ms": lease.ttl().as_millis() as u64 });
    let record = Record::sign(&NotaryKey::alive(&key.public()), body, key).map_err(Failed::Sign)?;
    bounded(ttl, notary.put_leased(&record, &lease, &Expect::Any)).await?;
    Ok(lease)
}

/// Keeps `lease` alive every `period` until a renewal fails; returns why.
async fn keep(
    notary: &AnyNotary,
    lease: &Lease,
    period: Duration,
    renewed: &watch::Sender<Option<Duration>>,
) -> Failed {
    loop {
        tokio::time::sleep(period).await;
        let sent = boottime();
        match bounded(lease.ttl(), notary.keep_alive(lease)).await {
            Ok(_) => {
                renewed.send_replace(Some(sent));
                tracing::trace!(lease = lease.id(), "liveness renewed");
            }
            Err(e) => return e,
        }
    }
}

/// `call`, given up after `limit`: an answer later than the lease's TTL is of no use,
/// and the next attempt starts afresh.
async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, NotaryError>>,
) -> Result<T, Failed> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Failed::Timeout(limit)),
    }
}
