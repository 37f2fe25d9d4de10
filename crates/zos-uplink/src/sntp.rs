//! SNTP client (RFC 4330): one 48-byte request, one reply, the clock offset.
//!
//! The node checks contract expiries and signature validity windows, so its clock
//! must be right before it verifies anything; a board with a dead RTC battery boots
//! in 1970 or wherever its firmware left it. One query to an NTP server (from the
//! DHCP lease, or configured) gives the offset; [`set_clock`] steps the clock.
//! No daemon disciplines the clock afterwards: a periodic re-query is enough for
//! expiry checks.
//!
//! The request's transmit timestamp is a random nonce (as RFC 9109 advises), not
//! our clock: it proves the reply answers this request (off-path spoofing needs
//! 64 unguessable bits) and leaks nothing about the node's clock. The timestamps
//! used for the offset are taken locally when sending and receiving.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The NTP header without extension fields or authenticator.
pub const PACKET_LEN: usize = 48;
/// Largest reply accepted (header, extension fields and a MAC fit easily).
pub const MAX_REPLY_LEN: usize = 1024;
/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_DELTA: u64 = 2_208_988_800;

/// Why a server's time was not obtained, or the clock not set.
#[derive(Debug, thiserror::Error)]
pub enum SntpError {
    /// A socket operation towards the server failed (ECONNREFUSED on `receive`:
    /// nothing serves NTP there).
    #[error("{op} ({server}): {source}")]
    Io {
        /// `connect`, `send`, `set timeout` or `receive`.
        op: &'static str,
        /// The server asked.
        server: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// No acceptable reply in time (replies to other requests are discarded).
    #[error("no SNTP reply from {server} within {timeout:?}")]
    Timeout {
        /// The server asked.
        server: SocketAddr,
        /// The wait allowed.
        timeout: Duration,
    },
    /// Shorter than the 48-byte NTP header.
    #[error("truncated SNTP reply: {len} bytes, at least 48 needed")]
    Truncated {
        /// The datagram's length, in bytes.
        len: usize,
    },
    /// Longer than [`MAX_REPLY_LEN`].
    #[error("oversized SNTP reply: {len} bytes, at most {max} accepted")]
    Oversized {
        /// The datagram's length, in bytes.
        len: usize,
        /// [`MAX_REPLY_LEN`].
        max: usize,
    },
    /// The mode is not 4 (server): e.g. a reflected client request.
    #[error("SNTP reply has mode {0}, not 4 (server)")]
    NotAServerReply(u8),
    /// The version is not 3 or 4.
    #[error("SNTP reply has version {0}, only 3 and 4 are spoken")]
    BadVersion(u8),
    /// The originate timestamp is not the request's nonce: not an answer to it
    /// (a late or forged reply).
    #[error("SNTP reply does not answer our request (originate timestamp mismatch)")]
    WrongOriginate,
    /// The server says it has no time to give (leap indicator 3, or stratum over 15).
    #[error("server is not synchronised (leap indicator 3 or stratum {stratum})")]
    Unsynchronised {
        /// The reply's stratum.
        stratum: u8,
    },
    /// Stratum 0: the server asks to be left alone; the text is its 4-letter code
    /// (e.g. `RATE`, `DENY`).
    #[error("server sent a kiss-o'-death {0:?}: stop asking it")]
    KissOfDeath(String),
    /// The server's receive or transmit timestamp is 0 (it has no time).
    #[error("SNTP reply has a zero receive or transmit timestamp")]
    ZeroTimestamp,
    /// The time to set cannot be given to the kernel.
    #[error("time {0:?} is before the Unix epoch or out of range")]
    TimeOutOfRange(SystemTime),
    /// The kernel refused to set the clock (EPERM: no CAP_SYS_TIME).
    #[error("clock_settime(CLOCK_REALTIME): {0}")]
    SetClock(std::io::Error),
}

/// What one exchange told us.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SntpTime {
    /// The server that answered.
    pub server: SocketAddr,
    /// Its stratum, 1..=15 (1: it has a reference clock).
    pub stratum: u8,
    /// The server's clock minus ours, in nanoseconds (positive: we are behind).
    pub offset_nanos: i64,
    /// Round trip minus the server's processing time (the RFC's "delay").
    pub roundtrip: Duration,
    /// The server's time when the reply arrived (our clock then, plus the offset).
    pub server_time: SystemTime,
}

impl SntpTime {
    /// [`SntpTime::offset_nanos`] in seconds (for logs and tests).
    pub fn offset(&self) -> f64 {
        self.offset_nanos as f64 / 1e9
    }

    /// The current time by the server's clock: our clock now, corrected by the
    /// offset. What to give [`set_clock`] a moment after the query.
    pub fn corrected_now(&self) -> SystemTime {
        shift(SystemTime::now(), self.offset_nanos)
    }
}

fn shift(t: SystemTime, nanos: i64) -> SystemTime {
    let d = Duration::from_nanos(nanos.unsigned_abs());
    if nanos >= 0 {
        t + d
    } else {
        t - d
    }
}

/// Nanoseconds since the Unix epoch (negative before it).
fn unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

/// An NTP 32.32 timestamp to Unix nanoseconds. RFC 4330 3: a timestamp whose top
/// bit is clear is in era 1 (from 2036-02-07), so this works until 2104.
fn ntp_to_unix_nanos(ts: u64) -> i128 {
    let secs = ts >> 32;
    let frac = ts & 0xffff_ffff;
    let secs = if secs & 0x8000_0000 == 0 {
        secs + (1 << 32)
    } else {
        secs
    };
    // Rounded, so a timestamp made from whole nanoseconds converts back exactly.
    let nanos = (frac * 1_000_000_000 + (1 << 31)) >> 32;
    (i128::from(secs) - i128::from(NTP_UNIX_DELTA)) * 1_000_000_000 + i128::from(nanos)
}

/// A client request (LI 0, version 4, mode 3) carrying `nonce` as its transmit
/// timestamp.
pub fn request(nonce: u64) -> [u8; PACKET_LEN] {
    let mut p = [0u8; PACKET_LEN];
    p[0] = 4 << 3 | 3;
    p[40..48].copy_from_slice(&nonce.to_be_bytes());
    p
}

/// The server's receive (T2) and transmit (T3) timestamps and stratum of a
/// checked reply to the request that carried `nonce`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The server's stratum, 1..=15.
    pub stratum: u8,
    /// When the server received the request (T2), an NTP 32.32 timestamp.
    pub receive: u64,
    /// When the server sent the reply (T3), an NTP 32.32 timestamp.
    pub transmit: u64,
}

/// Checks a datagram as the reply to the request that carried `nonce` (size, mode,
/// version, originate timestamp first, then kiss-o'-death, synchronisation and
/// timestamps) and returns what it says. Never panics, whatever `buf` holds.
pub fn parse_reply(buf: &[u8], nonce: u64) -> Result<Reply, SntpError> {
    if buf.len() < PACKET_LEN {
        return Err(SntpError::Truncated { len: buf.len() });
    }
    if buf.len() > MAX_REPLY_LEN {
        return Err(SntpError::Oversized {
            len: buf.len(),
            max: MAX_REPLY_LEN,
        });
    }
    let be64 = |at: usize| u64::from_be_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
    let (li, vn, mode) = (buf[0] >> 6, (buf[0] >> 3) & 7, buf[0] & 7);
    if mode != 4 {
        return Err(SntpError::NotAServerReply(mode));
    }
    if !(3..=4).contains(&vn) {
        return Err(SntpError::BadVersion(vn));
    }
    // Checked before anything else the server says: only an answer to our own
    // request may tell us to back off.
    if be64(24) != nonce {
        return Err(SntpError::WrongOriginate);
    }
    let stratum = buf[1];
    if stratum == 0 {
        // RFC 4330 8: the reference id carries a 4-letter ASCII code.
        let code = String::from_utf8_lossy(&buf[12..16])
            .trim_end_matches('\0')
            .to_string();
        return Err(SntpError::KissOfDeath(code));
    }
    if li == 3 || stratum > 15 {
        return Err(SntpError::Unsynchronised { stratum });
    }
    let (receive, transmit) = (be64(32), be64(40));
    if receive == 0 || transmit == 0 {
        return Err(SntpError::ZeroTimestamp);
    }
    Ok(Reply {
        stratum,
        receive,
        transmit,
    })
}

/// Offset and delay from the four timestamps (RFC 4330 5), Unix nanoseconds.
fn offset_delay(t1: i128, t2: i128, t3: i128, t4: i128) -> (i128, i128) {
    (((t2 - t1) + (t3 - t4)) / 2, (t4 - t1) - (t3 - t2))
}

fn nonce() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // Still unique per request; only less unguessable.
        let t = unix_nanos(SystemTime::now()) as u64;
        return t.rotate_left(17) ^ u64::from(std::process::id());
    }
    u64::from_ne_bytes(b)
}

/// Ask `server` for the time; wait at most `timeout` for the reply.
pub fn query(server: SocketAddr, timeout: Duration) -> Result<SntpTime, SntpError> {
    let ioerr = |op| move |source| SntpError::Io { op, server, source };
    let sock = crate::sock::connected_udp(server).map_err(ioerr("connect"))?;
    let nonce = nonce();
    let t1_wall = SystemTime::now();
    let t1 = Instant::now();
    sock.send(&request(nonce)).map_err(ioerr("send"))?;
    let deadline = t1 + timeout;
    let mut buf = [0u8; MAX_REPLY_LEN + 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(SntpError::Timeout { server, timeout });
        }
        sock.set_read_timeout(Some(left))
            .map_err(ioerr("set timeout"))?;
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(SntpError::Timeout { server, timeout })
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ioerr("receive")(e)),
        };
        let elapsed = t1.elapsed();
        let reply = match parse_reply(&buf[..n], nonce) {
            // A stale or forged datagram: keep waiting for the real answer.
            Err(e @ SntpError::WrongOriginate) => {
                tracing::debug!(%server, len = n, error = %e, "SNTP reply discarded");
                continue;
            }
            r => r?,
        };
        // T4 from the monotonic clock: a clock step during the exchange must not
        // turn into a bogus offset.
        let t1n = unix_nanos(t1_wall);
        let t4n = t1n + elapsed.as_nanos() as i128;
        let (offset, delay) = offset_delay(
            t1n,
            ntp_to_unix_nanos(reply.receive),
            ntp_to_unix_nanos(reply.transmit),
            t4n,
        );
        let offset_nanos = offset.clamp(i64::MIN.into(), i64::MAX.into()) as i64;
        let t = SntpTime {
            server,
            stratum: reply.stratum,
            offset_nanos,
            // A server whose clock runs backwards within the exchange could make
            // the delay negative: report 0 rather than wrap.
            roundtrip: Duration::from_nanos(delay.clamp(0, u64::MAX.into()) as u64),
            server_time: shift(t1_wall + elapsed, offset_nanos),
        };
        tracing::info!(%server, stratum = t.stratum, offset_ms = t.offset() * 1e3, roundtrip_us = t.roundtrip.as_micros() as u64, "SNTP time");
        return Ok(t);
    }
}

/// Ask each server in turn; the first good answer wins.
pub fn query_first(servers: &[SocketAddr], timeout: Duration) -> Result<SntpTime, SntpError> {
    let mut last = None;
    for s in servers {
        match query(*s, timeout) {
            Ok(t) => return Ok(t),
            Err(e) => {
                tracing::warn!(server = %s, error = %e, "SNTP query failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or(SntpError::Timeout {
        server: SocketAddr::from(([0, 0, 0, 0], 123)),
        timeout,
    }))
}

/// Step the system clock (CLOCK_REALTIME) to `t`. Needs CAP_SYS_TIME.
pub fn set_clock(t: SystemTime) -> Result<(), SntpError> {
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| SntpError::TimeOutOfRange(t))?;
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(d.as_secs()).map_err(|_| SntpError::TimeOutOfRange(t))?,
        tv_nsec: d.subsec_nanos().into(),
    };
    // SAFETY: `ts` is a valid, initialised timespec that outlives the call, and
    // clock_settime only reads it; CLOCK_REALTIME is a valid clock id.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    if rc != 0 {
        return Err(SntpError::SetClock(std::io::Error::last_os_error()));
    }
    tracing::info!(unix_secs = d.as_secs(), "system clock set");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONCE: u64 = 0x0123_4567_89ab_cdef;

    /// NTP timestamp of Unix time `secs` + `nanos`.
    fn ntp(secs: u64, nanos: u64) -> u64 {
        ((secs + NTP_UNIX_DELTA) % (1 << 32)) << 32 | ((nanos << 32) / 1_000_000_000)
    }

    fn reply(edit: impl FnOnce(&mut [u8; 48])) -> [u8; 48] {
        let mut p = [0u8; 48];
        p[0] = 4 << 3 | 4;
        p[1] = 2;
        p[12..16].copy_from_slice(b"GPS\0");
        p[24..32].copy_from_slice(&NONCE.to_be_bytes());
        p[32..40].copy_from_slice(&ntp(1_800_000_000, 500).to_be_bytes());
        p[40..48].copy_from_slice(&ntp(1_800_000_000, 900).to_be_bytes());
        edit(&mut p);
        p
    }

    #[test]
    fn request_is_a_v4_client_packet_carrying_the_nonce() {
        let r = request(NONCE);
        assert_eq!(r[0], 0x23);
        assert_eq!(&r[40..48], &NONCE.to_be_bytes());
        assert!(r[1..40].iter().all(|b| *b == 0));
    }

    #[test]
    fn good_reply() {
        let r = parse_reply(&reply(|_| {}), NONCE).unwrap();
        assert_eq!(r.stratum, 2);
        assert_eq!(
            ntp_to_unix_nanos(r.transmit),
            1_800_000_000 * 1_000_000_000 + 900
        );
        // Extension fields after the header are tolerated.
        let mut long = reply(|_| {}).to_vec();
        long.extend_from_slice(&[0; 20]);
        assert!(parse_reply(&long, NONCE).is_ok());
    }

    #[test]
    fn bad_replies_are_refused() {
        let ok = reply(|_| {});
        assert!(matches!(
            parse_reply(&ok[..47], NONCE),
            Err(SntpError::Truncated { len: 47 })
        ));
        let big = vec![0u8; MAX_REPLY_LEN + 1];
        assert!(matches!(
            parse_reply(&big, NONCE),
            Err(SntpError::Oversized { .. })
        ));
        assert!(matches!(
            parse_reply(&ok, NONCE ^ 1),
            Err(SntpError::WrongOriginate)
        ));
        assert!(matches!(
            parse_reply(&reply(|p| p[0] = 4 << 3 | 3), NONCE),
            Err(SntpError::NotAServerReply(3))
        ));
        assert!(matches!(
            parse_reply(&reply(|p| p[0] = 2 << 3 | 4), NONCE),
            Err(SntpError::BadVersion(2))
        ));
        assert!(matches!(
            parse_reply(&reply(|p| p[0] |= 3 << 6), NONCE),
            Err(SntpError::Unsynchronised { .. })
        ));
        assert!(matches!(
            parse_reply(&reply(|p| p[1] = 16), NONCE),
            Err(SntpError::Unsynchronised { stratum: 16 })
        ));
        let kod = parse_reply(
            &reply(|p| {
                p[1] = 0;
                p[12..16].copy_from_slice(b"RATE");
            }),
            NONCE,
        );
        assert!(matches!(kod, Err(SntpError::KissOfDeath(ref c)) if c == "RATE"));
        assert!(matches!(
            parse_reply(&reply(|p| p[40..48].fill(0)), NONCE),
            Err(SntpError::ZeroTimestamp)
        ));
    }

    #[test]
    fn offset_and_delay_follow_rfc_4330() {
        // Server 1 s ahead, 10 ms each way, 2 ms processing.
        let s = 1_000_000_000i128;
        let ms = 1_000_000i128;
        let (o, d) = offset_delay(0, s + 10 * ms, s + 12 * ms, 22 * ms);
        assert_eq!((o, d), (s, 20 * ms));
    }

    #[test]
    fn ntp_eras() {
        // 2036-02-07T06:28:16Z is NTP second 2^32 = era 1, second 0.
        assert_eq!(
            ntp_to_unix_nanos(0),
            (1i128 << 32) * 1_000_000_000 - 2_208_988_800 * 1_000_000_000
        );
        assert_eq!(ntp_to_unix_nanos(ntp(0, 0)), 0);
        assert_eq!(
            ntp_to_unix_nanos(ntp(2_100_000_000, 0)) / 1_000_000_000,
            2_100_000_000
        );
    }

    #[test]
    fn set_clock_refuses_times_before_the_epoch() {
        let t = UNIX_EPOCH - Duration::from_secs(1);
        assert!(matches!(set_clock(t), Err(SntpError::TimeOutOfRange(_))));
    }
}
