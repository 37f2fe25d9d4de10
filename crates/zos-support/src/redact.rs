//! Secrets never leave in a bundle: the [`Redactor`] knows each secret in every encoding a
//! node writes them in and replaces any occurrence with [`REDACTED`].

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;

/// What a secret is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// A partial encoding at a part's edge (a secret cut by a bound) this long or longer is
/// cut too.
const MIN_PARTIAL: usize = 6;

/// The secrets to keep out of a bundle (the identity seed, WireGuard private keys), each
/// in every encoding: raw bytes, hex (lower and upper case), base64 (standard and URL
/// alphabets, padded or not).
///
/// Raw bytes written into the kernel log come back out of `/dev/kmsg` escaped (see
/// [`kmsg_escaped`]): that form is looked for too.
///
/// A secret inside a longer base64 text at an offset that is not a multiple of three
/// bytes encodes differently and is not found; keys are written on their own.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Every encoding of every secret, longest first (so a padded base64 wins over its
    /// unpadded prefix).
    needles: Vec<Vec<u8>>,
    /// Bytes some needle starts with.
    first: Box<[bool]>,
}

/// How `/dev/kmsg` shows a record's bytes: a control byte, DEL and above, and `\` as
/// `\xNN`, the rest as is.
fn kmsg_escaped(secret: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(secret.len() * 4);
    for &c in secret {
        if !(b' '..127).contains(&c) || c == b'\\' {
            out.extend_from_slice(format!("\\x{c:02x}").as_bytes());
        } else {
            out.push(c);
        }
    }
    out
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets themselves.
        f.debug_struct("Redactor")
            .field("encodings", &self.needles.len())
            .finish()
    }
}

impl Redactor {
    /// A redactor for these secrets (empty ones are ignored).
    pub fn new<I, S>(secrets: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        let mut r = Redactor::default();
        for s in secrets {
            r.add(s.as_ref());
        }
        r
    }

    /// Add one secret (its raw bytes).
    pub fn add(&mut self, secret: &[u8]) {
        if secret.is_empty() {
            return;
        }
        let encodings = [
            secret.to_vec(),
            hex::encode(secret).into_bytes(),
            hex::encode_upper(secret).into_bytes(),
            STANDARD.encode(secret).into_bytes(),
            STANDARD_NO_PAD.encode(secret).into_bytes(),
            URL_SAFE.encode(secret).into_bytes(),
            URL_SAFE_NO_PAD.encode(secret).into_bytes(),
            kmsg_escaped(secret),
        ];
        for e in encodings {
            if !self.needles.contains(&e) {
                self.needles.push(e);
            }
        }
        self.needles.sort_by_key(|n| std::cmp::Reverse(n.len()));
        let mut first = vec![false; 256];
        for n in &self.needles {
            first[n[0] as usize] = true;
        }
        self.first = first.into_boxed_slice();
    }

    /// No secrets.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// `data` with every occurrence of every encoding replaced by [`REDACTED`], and how
    /// many were replaced.
    pub fn redact(&self, data: &[u8]) -> (Vec<u8>, usize) {
        if self.needles.is_empty() {
            return (data.to_vec(), 0);
        }
        let mut out = Vec::with_capacity(data.len());
        let mut n = 0;
        let mut i = 0;
        'outer: while i < data.len() {
            if self.first[data[i] as usize] {
                for needle in &self.needles {
                    if data[i..].starts_with(needle) {
                        out.extend_from_slice(REDACTED.as_bytes());
                        i += needle.len();
                        n += 1;
                        continue 'outer;
                    }
                }
            }
            out.push(data[i]);
            i += 1;
        }
        (out, n)
    }

    /// Cut a partial encoding (at least a few bytes of one) from the end of `data` (its
    /// beginning) and from its start (its end), left there by a bound that cut a secret.
    /// Returns how many were cut.
    pub fn trim_edges(&self, data: &mut Vec<u8>) -> usize {
        let mut cut = 0;
        // The end: the longest proper prefix of a needle that `data` ends with.
        let tail = self
            .needles
            .iter()
            .flat_map(|n| (MIN_PARTIAL..n.len()).map(move |k| &n[..k]))
            .filter(|p| data.ends_with(p))
            .map(|p| p.len())
            .max();
        if let Some(k) = tail {
            data.truncate(data.len() - k);
            cut += 1;
        }
        // The start: the longest proper suffix of a needle that `data` starts with.
        let head = self
            .needles
            .iter()
            .flat_map(|n| (MIN_PARTIAL..n.len()).map(move |k| &n[n.len() - k..]))
            .filter(|s| data.starts_with(s))
            .map(|s| s.len())
            .max();
        if let Some(k) = head {
            data.drain(..k);
            cut += 1;
        }
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: [u8; 8] = [0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0xff];

    #[test]
    fn every_encoding_is_replaced() {
        let r = Redactor::new([SECRET]);
        for enc in [
            hex::encode(SECRET),
            hex::encode_upper(SECRET),
            STANDARD.encode(SECRET),
            STANDARD_NO_PAD.encode(SECRET),
            URL_SAFE.encode(SECRET),
            URL_SAFE_NO_PAD.encode(SECRET),
        ] {
            let text = format!("key={enc} end");
            let (out, n) = r.redact(text.as_bytes());
            assert_eq!(n, 1, "{enc}");
            assert_eq!(out, b"key=[REDACTED] end", "{enc}");
        }
        let (out, n) = r.redact(b"k \\xde\\xad\\xbe\\xef\\x01\\x02\\x03\\xff k");
        assert_eq!(
            (out, n),
            (b"k [REDACTED] k".to_vec(), 1),
            "as /dev/kmsg shows raw bytes"
        );
        let mut raw = b"x".to_vec();
        raw.extend_from_slice(&SECRET);
        raw.push(b'y');
        assert_eq!(r.redact(&raw), (b"x[REDACTED]y".to_vec(), 1));
    }

    #[test]
    fn a_cut_secret_is_trimmed_at_either_edge() {
        let r = Redactor::new([SECRET]);
        let h = hex::encode(SECRET);
        let mut end = format!("abc {}", &h[..9]).into_bytes();
        assert_eq!(r.trim_edges(&mut end), 1);
        assert_eq!(end, b"abc ");
        let mut start = format!("{} abc", &h[4..]).into_bytes();
        assert_eq!(r.trim_edges(&mut start), 1);
        assert_eq!(start, b" abc");
        let mut clean = b"nothing here".to_vec();
        assert_eq!(r.trim_edges(&mut clean), 0);
    }

    #[test]
    fn debug_shows_no_secret() {
        let r = Redactor::new([SECRET]);
        let d = format!("{r:?}");
        assert!(
            !d.contains(&hex::encode(SECRET)) && !d.contains("222"),
            "{d}"
        );
    }
}
