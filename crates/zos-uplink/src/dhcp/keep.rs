//! Keeping a lease for as long as the node runs (RFC 2131 4.4.5): renew with the
//! granting server from T1, start over with any server from T2, and keep trying after
//! the lease ran out, so an address lost to a DHCP server's restart or a long outage
//! comes back by itself.
//!
//! [`phase`] is the schedule alone (inputs: the lease and how long it has been held;
//! output: what to do now), so it is tested without a network; [`keep`] runs it on the
//! calling thread with the real exchanges ([`super::renew`], [`super::acquire`],
//! [`super::apply`]), which the dnsmasq tests cover.

use std::time::{Duration, Instant};

use super::{acquire, apply, renew, DhcpConfig, DhcpError, Lease};

/// Between retries of a failed renewal or rebinding: half the time left to the next
/// deadline (RFC 2131), but at least this ...
const MIN_RETRY: Duration = Duration::from_secs(60);
/// ... and, once the lease ran out, this between attempts to get a new one.
const EXPIRED_RETRY: Duration = Duration::from_secs(30);

/// What the keeper does next, for a lease held for some time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before T1: nothing until then.
    Bound {
        /// Time left to T1.
        renew_in: Duration,
    },
    /// Between T1 and T2: renew with the granting server (unicast).
    Renewing {
        /// Time left to T2.
        rebind_in: Duration,
    },
    /// Between T2 and the lease's end: any server (a new DISCOVER).
    Rebinding {
        /// Time left until the lease runs out.
        expires_in: Duration,
    },
    /// The lease ran out: the address may be someone else's; get a new one.
    Expired,
}

/// The phase of `lease`, `held` after it was granted.
pub fn phase(lease: &Lease, held: Duration) -> Phase {
    let at = |secs: u32| Duration::from_secs(u64::from(secs));
    let (t1, t2, end) = (
        at(lease.renew_secs),
        at(lease.rebind_secs),
        at(lease.lease_secs),
    );
    if held < t1 {
        Phase::Bound {
            renew_in: t1 - held,
        }
    } else if held < t2 {
        Phase::Renewing {
            rebind_in: t2 - held,
        }
    } else if held < end {
        Phase::Rebinding {
            expires_in: end - held,
        }
    } else {
        Phase::Expired
    }
}

/// How long to wait after a failed attempt in `phase` (never past the next deadline,
/// never a busy loop).
pub fn retry_after(phase: Phase) -> Duration {
    match phase {
        Phase::Bound { renew_in } => renew_in,
        Phase::Renewing { rebind_in } => (rebind_in / 2).max(MIN_RETRY).min(rebind_in),
        Phase::Rebinding { expires_in } => (expires_in / 2).max(MIN_RETRY).min(expires_in),
        Phase::Expired => EXPIRED_RETRY,
    }
    .max(Duration::from_secs(1))
}

/// Keeps `lease` on `iface` forever: renews, rebinds, re-acquires, applying each new
/// lease; `on_lease` sees every one applied (to pass DNS or NTP servers on). Runs on
/// the calling thread (a dedicated one: it sleeps for hours).
pub fn keep(
    iface: &str,
    mut lease: Lease,
    cfg: &DhcpConfig,
    mut on_lease: impl FnMut(&Lease),
) -> ! {
    let mut granted = Instant::now();
    loop {
        let now = phase(&lease, granted.elapsed());
        let attempt = match now {
            Phase::Bound { renew_in } => {
                std::thread::sleep(renew_in);
                continue;
            }
            Phase::Renewing { .. } => renew(iface, &lease, cfg),
            Phase::Rebinding { .. } | Phase::Expired => acquire(iface, cfg),
        };
        match attempt.and_then(|l| apply(iface, &l).map(|()| l)) {
            Ok(l) => {
                lease = l;
                granted = Instant::now();
                on_lease(&lease);
            }
            // The server says the address is not ours any more: start over at once.
            Err(DhcpError::Nak { .. }) if matches!(now, Phase::Renewing { .. }) => {
                tracing::warn!(iface, address = %lease.address, "renewal refused (NAK): asking any server");
                lease.rebind_secs = 0;
                lease.renew_secs = 0;
            }
            Err(error) => {
                let wait = retry_after(now);
                tracing::warn!(iface, ?now, %error, retry_in_secs = wait.as_secs(), "DHCP lease not extended");
                std::thread::sleep(wait);
            }
        }
    }
}

/// For a node that booted without a lease: asks every `EXPIRED_RETRY` (30 s) until a server
/// answers, then [`keep`]s that lease.
pub fn acquire_and_keep(iface: &str, cfg: &DhcpConfig, mut on_lease: impl FnMut(&Lease)) -> ! {
    loop {
        std::thread::sleep(EXPIRED_RETRY);
        match acquire(iface, cfg).and_then(|l| apply(iface, &l).map(|()| l)) {
            Ok(lease) => {
                on_lease(&lease);
                keep(iface, lease, cfg, on_lease)
            }
            Err(error) => tracing::warn!(iface, %error, "still no DHCP lease"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(lease_secs: u32, renew_secs: u32, rebind_secs: u32) -> Lease {
        Lease {
            address: "10.0.2.15".parse().unwrap(),
            prefix_len: 24,
            router: None,
            dns: vec![],
            ntp: vec![],
            domain: None,
            lease_secs,
            renew_secs,
            rebind_secs,
            server: "10.0.2.2".parse().unwrap(),
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_phases_of_a_day_long_lease() {
        let l = lease(86_400, 43_200, 75_600);
        assert_eq!(
            phase(&l, S(0)),
            Phase::Bound {
                renew_in: S(43_200)
            }
        );
        assert_eq!(phase(&l, S(43_199)), Phase::Bound { renew_in: S(1) });
        assert_eq!(
            phase(&l, S(43_200)),
            Phase::Renewing {
                rebind_in: S(32_400)
            }
        );
        assert_eq!(
            phase(&l, S(75_600)),
            Phase::Rebinding {
                expires_in: S(10_800)
            }
        );
        assert_eq!(phase(&l, S(86_400)), Phase::Expired);
        assert_eq!(phase(&l, S(1_000_000)), Phase::Expired);
    }

    #[test]
    fn retries_halve_the_time_left_but_not_below_a_minute_nor_past_the_deadline() {
        assert_eq!(
            retry_after(Phase::Renewing {
                rebind_in: S(32_400)
            }),
            S(16_200)
        );
        assert_eq!(retry_after(Phase::Renewing { rebind_in: S(90) }), S(60));
        assert_eq!(retry_after(Phase::Renewing { rebind_in: S(20) }), S(20));
        assert_eq!(
            retry_after(Phase::Rebinding {
                expires_in: S(10_800)
            }),
            S(5_400)
        );
        assert_eq!(
            retry_after(Phase::Rebinding {
                expires_in: Duration::ZERO
            }),
            S(1)
        );
        assert_eq!(retry_after(Phase::Expired), S(30));
    }

    #[test]
    fn a_refused_renewal_goes_straight_to_rebinding() {
        // What `keep` does on a NAK: T1 and T2 at 0, so the next phase asks any server.
        let mut l = lease(3600, 1800, 3150);
        l.renew_secs = 0;
        l.rebind_secs = 0;
        assert!(matches!(phase(&l, S(1)), Phase::Rebinding { .. }));
    }
}
