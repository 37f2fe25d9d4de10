//! DNS: the A records of a name from a named server, through zos-uplink's stub
//! resolver (one UDP query, id and question checked, a bounds-checked decoder).

use std::net::SocketAddr;
use std::time::Instant;

use zos_uplink::dns::{DnsError, Resolver};

use crate::{left, ms, Outcome, ProbeError};

/// A host name: 1..=253 bytes, labels of 1..=63 letters, digits, `-` or `_`, an
/// optional trailing dot.
pub(crate) fn check_name(name: &str) -> Result<(), ProbeError> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(ProbeError::BadName(name.to_string()))
    }
}

pub(crate) fn resolve(name: &str, server: Option<SocketAddr>, deadline: Instant) -> Outcome {
    let Some(server) = server else {
        return Outcome::failed(vec![], ProbeError::NoDnsServer);
    };
    let Some(budget) = left(deadline) else {
        return Outcome::failed(
            vec![],
            ProbeError::io("dns")(std::io::ErrorKind::TimedOut.into()),
        );
    };
    let t = Instant::now();
    let name = name.strip_suffix('.').unwrap_or(name);
    let r = Resolver::with_addrs(vec![server])
        .timeout(budget)
        .attempts(1)
        .lookup_ipv4(name);
    let took = ms(t.elapsed());
    match r {
        Ok(addrs) => Outcome {
            ok: true,
            lines: addrs
                .iter()
                .map(|a| format!("{name} A {a} (from {server} in {took})"))
                .collect(),
            error: None,
        },
        Err(e) => {
            let line = match &e {
                DnsError::NoSuchName { .. } => {
                    format!("{name}: no such name (NXDOMAIN) from {server} in {took}")
                }
                DnsError::NoAddress { .. } => format!("{name}: no A record at {server} in {took}"),
                _ => format!("{name}: no answer from {server} after {took}"),
            };
            Outcome::failed(vec![line], ProbeError::Dns(e))
        }
    }
}
