//! How many diagnostic requests the node answers (docs/diagnostics.md, "Rate limits").
//!
//! Anyone who can write to the notary can put a request under the node's key, and every
//! answer, a refusal too, is a record the node signs and writes. Without a bound, a
//! stranger turns the node into a signing and writing machine. So each asker the node
//! knows (its farmer, the owner of a contract it runs) has a token bucket of its own,
//! and everyone else shares one small bucket: a flood by strangers cannot starve the
//! farmer, and costs the node at most that bucket's answers. A request over its bucket
//! is not answered at all (answering would be the very work being limited); the drops
//! are counted and logged at most once a minute.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use zos_contract::PublicKey;

/// A token bucket: `burst` tokens, one more every `every`.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub burst: u32,
    pub every: Duration,
}

/// The farmer's and each owner's own bucket: a burst of 16, then 15 a minute.
pub const KNOWN: Rate = Rate {
    burst: 16,
    every: Duration::from_secs(4),
};

/// The one bucket every other author shares: a burst of 4, then 2 a minute.
pub const STRANGERS: Rate = Rate {
    burst: 4,
    every: Duration::from_secs(30),
};

/// How often the count of dropped requests is logged.
const REPORT_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Bucket {
    tokens: u32,
    since: Instant,
}

impl Bucket {
    fn full(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            tokens: rate.burst,
            since: now,
        }
    }

    /// Takes a token if there is one, after adding those earned since the last refill.
    fn take(&mut self, rate: Rate, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.since).as_nanos() / rate.every.as_nanos();
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(rate.burst);
            // The remainder of a partly earned token is kept.
            self.since += rate.every * earned.min(rate.burst);
            if self.tokens == rate.burst {
                self.since = now;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// What to do with one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within its bucket: check it and answer it.
    Answer,
    /// Over its bucket: no answer. `report`: the drops since the last report, when one
    /// is due now.
    Drop { report: Option<u64> },
}

/// The buckets of the node's dispatcher.
#[derive(Debug)]
pub struct Limits {
    known: Rate,
    strangers: Rate,
    per_asker: HashMap<PublicKey, Bucket>,
    shared: Bucket,
    dropped: u64,
    reported: Option<Instant>,
}

impl Limits {
    pub fn new(known: Rate, strangers: Rate, now: Instant) -> Limits {
        Limits {
            known,
            strangers,
            per_asker: HashMap::new(),
            shared: Bucket::full(strangers, now),
            dropped: 0,
            reported: None,
        }
    }

    /// A request by `author`; `known`: the farmer or an owner of a contract on the node
    /// (the caller knows, from the farm record and the journal).
    pub fn admit(&mut self, author: &PublicKey, known: bool, now: Instant) -> Verdict {
        let ok = if known {
            let rate = self.known;
            self.per_asker
                .entry(*author)
                .or_insert_with(|| Bucket::full(rate, now))
                .take(rate, now)
        } else {
            self.shared.take(self.strangers, now)
        };
        if ok {
            return Verdict::Answer;
        }
        self.dropped += 1;
        let due = self
            .reported
            .is_none_or(|t| now.saturating_duration_since(t) >= REPORT_EVERY);
        if !due {
            return Verdict::Drop { report: None };
        }
        self.reported = Some(now);
        Verdict::Drop {
            report: Some(std::mem::take(&mut self.dropped)),
        }
    }

    /// Forgets the buckets of askers no longer known (a cancelled contract's owner), so
    /// the map stays as small as the node's contracts.
    pub fn retain(&mut self, known: impl Fn(&PublicKey) -> bool) {
        self.per_asker.retain(|k, _| known(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_contract::SecretKey;

    fn key(n: u8) -> PublicKey {
        SecretKey::from_seed([n; 32]).public()
    }

    const R: Rate = Rate {
        burst: 3,
        every: Duration::from_secs(10),
    };

    #[test]
    fn a_bucket_gives_its_burst_then_one_per_period() {
        let t0 = Instant::now();
        let mut l = Limits::new(R, R, t0);
        let a = key(1);
        for _ in 0..3 {
            assert_eq!(l.admit(&a, true, t0), Verdict::Answer);
        }
        assert_eq!(l.admit(&a, true, t0), Verdict::Drop { report: Some(1) });
        assert_eq!(
            l.admit(&a, true, t0 + Duration::from_secs(9)),
            Verdict::Drop { report: None }
        );
        assert_eq!(
            l.admit(&a, true, t0 + Duration::from_secs(10)),
            Verdict::Answer
        );
        assert!(matches!(
            l.admit(&a, true, t0 + Duration::from_secs(11)),
            Verdict::Drop { .. }
        ));
        // A long pause refills to the burst, never beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.admit(&a, true, later), Verdict::Answer);
        }
        assert!(matches!(l.admit(&a, true, later), Verdict::Drop { .. }));
    }

    #[test]
    fn strangers_share_one_bucket_and_cannot_starve_the_known() {
        let t0 = Instant::now();
        let mut l = Limits::new(R, R, t0);
        let answered = (10..40u8)
            .filter(|n| l.admit(&key(*n), false, t0) == Verdict::Answer)
            .count();
        assert_eq!(answered, 3, "thirty strangers share a burst of three");
        let farmer = key(1);
        assert_eq!(l.admit(&farmer, true, t0), Verdict::Answer);
    }

    #[test]
    fn drops_are_reported_at_most_once_a_minute_with_their_count() {
        let t0 = Instant::now();
        let mut l = Limits::new(R, R, t0);
        let s = key(2);
        for _ in 0..3 {
            l.admit(&s, false, t0);
        }
        assert_eq!(l.admit(&s, false, t0), Verdict::Drop { report: Some(1) });
        for _ in 0..4 {
            assert_eq!(l.admit(&s, false, t0), Verdict::Drop { report: None });
        }
        // Tokens earned in the minute are spent before the next drop.
        let t1 = t0 + REPORT_EVERY;
        while l.admit(&s, false, t1) == Verdict::Answer {}
        assert_eq!(
            l.admit(&s, false, t1 + Duration::from_secs(1)),
            Verdict::Drop { report: None }
        );
        assert_eq!(
            l.admit(&s, false, t0 + 2 * REPORT_EVERY),
            Verdict::Answer,
            "a token earned since"
        );
    }

    #[test]
    fn askers_no_longer_known_are_forgotten() {
        let t0 = Instant::now();
        let mut l = Limits::new(R, R, t0);
        l.admit(&key(1), true, t0);
        l.admit(&key(2), true, t0);
        l.retain(|k| *k == key(1));
        assert_eq!(l.per_asker.len(), 1);
    }
}
