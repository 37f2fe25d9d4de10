//! Where lines go: `syslog+tcp://host:port`, `syslog+tls://host:port` (with a pinned CA)
//! and `jsonl+tcp://host:port`, as the farm record and a contract carry them.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::line::Format;

/// Why a destination string or its CA was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// No `scheme://`.
    #[error("destination {0:?}: expected scheme://host:port")]
    NoScheme(String),
    /// A scheme other than `syslog+tcp`, `syslog+tls`, `jsonl+tcp`.
    #[error("destination scheme {0:?}: expected syslog+tcp, syslog+tls or jsonl+tcp")]
    UnknownScheme(String),
    /// No host, or an unclosed `[`.
    #[error("destination {0:?}: missing or malformed host")]
    BadHost(String),
    /// No port, or not 1..=65535.
    #[error("destination {0:?}: missing or invalid port")]
    BadPort(String),
    /// A path, query or user part: destinations are only `host:port`.
    #[error("destination {0:?}: unexpected path, query or credentials")]
    Trailing(String),
    /// The host is not usable as a TLS server name (a DNS name or an IP address).
    #[error("destination host {0:?} is not a valid TLS server name")]
    BadServerName(String),
    /// A TLS destination needs a pinned CA; a TCP one must not have one.
    #[error("destination {url}: {reason}")]
    CaMismatch {
        /// The destination.
        url: String,
        /// "TLS needs a pinned CA" or "a CA given for a TCP destination".
        reason: &'static str,
    },
    /// The CA's PEM had no certificate, or a malformed one.
    #[error("pinned CA: {0}")]
    BadCa(String),
    /// The CA file could not be read.
    #[error("pinned CA file {path}: {error}")]
    CaFile {
        /// The file.
        path: String,
        /// The I/O error.
        error: String,
    },
}

/// Plain TCP or TLS.
#[derive(Clone, PartialEq, Eq)]
pub enum Transport {
    /// Plain TCP.
    Tcp,
    /// TLS over TCP; the server's certificate must chain to the pinned CA, and name the
    /// destination's host.
    Tls(PinnedCa),
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Tcp => f.write_str("Tcp"),
            Transport::Tls(ca) => write!(f, "Tls({} CA certificates)", ca.certs.len()),
        }
    }
}

/// The CA certificates a TLS destination's server must chain to: only these (no system
/// or web roots).
#[derive(Clone)]
pub struct PinnedCa {
    certs: Arc<Vec<CertificateDer<'static>>>,
}

impl PartialEq for PinnedCa {
    fn eq(&self, other: &Self) -> bool {
        self.certs == other.certs
    }
}
impl Eq for PinnedCa {}

impl PinnedCa {
    /// The certificates in PEM bytes (one or more `CERTIFICATE` blocks).
    pub fn from_pem(pem: &[u8]) -> Result<PinnedCa, DestinationError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| DestinationError::BadCa(e.to_string()))?;
        if certs.is_empty() {
            return Err(DestinationError::BadCa("no CERTIFICATE in the PEM".into()));
        }
        // Each must parse as a trust anchor.
        for c in &certs {
            webpki_anchor_ok(c)?;
        }
        Ok(PinnedCa {
            certs: Arc::new(certs),
        })
    }

    /// The certificates in a PEM file.
    pub fn from_file(path: &Path) -> Result<PinnedCa, DestinationError> {
        let pem = std::fs::read(path).map_err(|e| DestinationError::CaFile {
            path: path.display().to_string(),
            error: e.to_string(),
        })?;
        PinnedCa::from_pem(&pem)
    }

    pub(crate) fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        // Checked in from_pem: every certificate is a usable anchor.
        let (_added, _ignored) = roots.add_parsable_certificates(self.certs.iter().cloned());
        roots
    }
}

fn webpki_anchor_ok(c: &CertificateDer<'_>) -> Result<(), DestinationError> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(c.clone())
        .map_err(|e| DestinationError::BadCa(format!("not a usable CA certificate: {e}")))
}

/// One destination: format, transport, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Wire format.
    pub format: Format,
    /// TCP or TLS (with its pinned CA).
    pub transport: Transport,
    /// Host name or IP address (without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Destination {
    /// Parses a plain-TCP destination (`syslog+tcp://` or `jsonl+tcp://`); a TLS one is
    /// refused here (it needs its CA: [`Destination::parse_with_ca`]).
    pub fn parse(url: &str) -> Result<Destination, DestinationError> {
        Destination::parse_with_ca(url, None)
    }

    /// Parses a destination; `ca` is required for `syslog+tls://` and refused otherwise.
    pub fn parse_with_ca(url: &str, ca: Option<PinnedCa>) -> Result<Destination, DestinationError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| DestinationError::NoScheme(url.to_string()))?;
        let (format, tls) = match scheme {
            "syslog+tcp" => (Format::Syslog, false),
            "syslog+tls" => (Format::Syslog, true),
            "jsonl+tcp" => (Format::JsonLines, false),
            other => return Err(DestinationError::UnknownScheme(other.to_string())),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(DestinationError::Trailing(url.to_string()));
        }
        let (host, port) = if let Some(after) = rest.strip_prefix('[') {
            let (h, p) = after
                .split_once(']')
                .ok_or_else(|| DestinationError::BadHost(url.to_string()))?;
            let p = p
                .strip_prefix(':')
                .ok_or_else(|| DestinationError::BadPort(url.to_string()))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(DestinationError::BadHost(url.to_string()));
            }
            (h, p)
        } else {
            rest.rsplit_once(':')
                .ok_or_else(|| DestinationError::BadPort(url.to_string()))?
        };
        if host.is_empty() || host.contains([':', ' ']) && !rest.starts_with('[') {
            return Err(DestinationError::BadHost(url.to_string()));
        }
        let port: u16 = match port.parse() {
            Ok(p) if p != 0 => p,
            _ => return Err(DestinationError::BadPort(url.to_string())),
        };
        let transport = match (tls, ca) {
            (true, Some(ca)) => {
                ServerName::try_from(host.to_string())
                    .map_err(|_| DestinationError::BadServerName(host.to_string()))?;
                Transport::Tls(ca)
            }
            (true, None) => {
                return Err(DestinationError::CaMismatch {
                    url: url.to_string(),
                    reason: "TLS needs a pinned CA",
                })
            }
            (false, Some(_)) => {
                return Err(DestinationError::CaMismatch {
                    url: url.to_string(),
                    reason: "a CA given for a TCP destination",
                })
            }
            (false, None) => Transport::Tcp,
        };
        Ok(Destination {
            format,
            transport,
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match (&self.format, &self.transport) {
            (Format::Syslog, Transport::Tcp) => "syslog+tcp",
            (Format::Syslog, Transport::Tls(_)) => "syslog+tls",
            (Format::JsonLines, Transport::Tcp) => "jsonl+tcp",
            (Format::JsonLines, Transport::Tls(_)) => "jsonl+tls",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_schemes_parse() {
        let d = Destination::parse("syslog+tcp://logs.example.org:6514").unwrap();
        assert_eq!(
            (d.format, d.host.as_str(), d.port),
            (Format::Syslog, "logs.example.org", 6514)
        );
        assert_eq!(d.transport, Transport::Tcp);
        let d = Destination::parse("jsonl+tcp://[2001:db8::1]:9000/").unwrap();
        assert_eq!(
            (d.format, d.host.as_str(), d.port),
            (Format::JsonLines, "2001:db8::1", 9000)
        );
        assert_eq!(d.to_string(), "jsonl+tcp://[2001:db8::1]:9000");
        assert_eq!(
            Destination::parse("syslog+tls://10.0.0.1:6514"),
            Err(DestinationError::CaMismatch {
                url: "syslog+tls://10.0.0.1:6514".into(),
                reason: "TLS needs a pinned CA"
            })
        );
    }

    #[test]
    fn malformed_destinations_are_refused_with_their_reason() {
        use DestinationError::*;
        type Is = fn(&DestinationError) -> bool;
        let cases: &[(&str, Is)] = &[
            ("logs:514", |e| matches!(e, NoScheme(_))),
            (
                "udp://logs:514",
                |e| matches!(e, UnknownScheme(s) if s == "udp"),
            ),
            ("syslog+tcp://logs", |e| matches!(e, BadPort(_))),
            ("syslog+tcp://logs:0", |e| matches!(e, BadPort(_))),
            ("syslog+tcp://logs:70000", |e| matches!(e, BadPort(_))),
            ("syslog+tcp://:514", |e| matches!(e, BadHost(_))),
            ("syslog+tcp://[nothost]:514", |e| matches!(e, BadHost(_))),
            ("syslog+tcp://a::1:514", |e| matches!(e, BadHost(_))),
            ("syslog+tcp://logs:514/path", |e| matches!(e, Trailing(_))),
            ("syslog+tcp://user@logs:514", |e| matches!(e, Trailing(_))),
        ];
        for (url, is) in cases {
            let e = Destination::parse(url).unwrap_err();
            assert!(is(&e), "{url}: {e:?}");
        }
    }

    #[test]
    fn a_bad_ca_is_refused() {
        assert!(matches!(
            PinnedCa::from_pem(b"not pem"),
            Err(DestinationError::BadCa(_))
        ));
        assert!(matches!(
            PinnedCa::from_file(Path::new("/nonexistent/zt-ca.pem")),
            Err(DestinationError::CaFile { .. })
        ));
    }
}
