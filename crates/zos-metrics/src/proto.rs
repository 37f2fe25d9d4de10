//! Prometheus remote-write 1.0's `WriteRequest`, encoded by hand.
//!
//! Three messages (`prompb/types.proto`, `prompb/remote.proto`):
//!
//! ```text
//! WriteRequest { repeated TimeSeries timeseries = 1; }
//! TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2; }
//! Label        { string name = 1; string value = 2; }
//! Sample       { double value = 1; int64 timestamp = 2; }   // milliseconds
//! ```
//!
//! Every field is written, defaults included (a decoder accepts both). The body is then
//! compressed with snappy's block format ([`compress`]).

/// Protobuf wire type of a varint field.
const VARINT: u8 = 0;
/// Protobuf wire type of a 64-bit fixed field (a `double`).
const FIXED64: u8 = 1;
/// Protobuf wire type of a length-delimited field (strings, messages).
const LEN: u8 = 2;

/// One label of a series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Label {
    /// The label's name (`__name__` for the metric name).
    pub name: String,
    /// Its value; never empty in a [`TimeSeries`] built by [`TimeSeries::new`].
    pub value: String,
}

/// One value at one time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The value.
    pub value: f64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
}

/// A series: its labels (sorted by name, `__name__` among them) and its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeSeries {
    /// Sorted by name; names are unique.
    pub labels: Vec<Label>,
    /// Oldest first.
    pub samples: Vec<Sample>,
}

impl TimeSeries {
    /// The series `name{labels}` with one sample. Labels are sorted by name with
    /// `__name__` added; a label with an empty value is left out (Prometheus reads an
    /// empty value as "no such label").
    pub fn new<'a>(
        name: &str,
        labels: impl IntoIterator<Item = (&'a str, &'a str)>,
        sample: Sample,
    ) -> TimeSeries {
        let mut all: Vec<Label> = labels
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| Label {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect();
        all.push(Label {
            name: "__name__".to_string(),
            value: name.to_string(),
        });
        all.sort();
        TimeSeries {
            labels: all,
            samples: vec![sample],
        }
    }

    /// The value of label `name`, if the series has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.value.as_str())
    }
}

/// The `WriteRequest` holding `series`, protobuf-encoded (not yet compressed).
pub fn encode(series: &[TimeSeries]) -> Vec<u8> {
    let mut out = Vec::with_capacity(series.iter().map(|s| series_len(s) + 4).sum());
    for s in series {
        put_key(&mut out, 1, LEN);
        put_varint(&mut out, series_len(s) as u64);
        for l in &s.labels {
            put_key(&mut out, 1, LEN);
            put_varint(&mut out, label_len(l) as u64);
            put_bytes(&mut out, 1, l.name.as_bytes());
            put_bytes(&mut out, 2, l.value.as_bytes());
        }
        for x in &s.samples {
            put_key(&mut out, 2, LEN);
            put_varint(&mut out, sample_len(x) as u64);
            put_key(&mut out, 1, FIXED64);
            out.extend_from_slice(&x.value.to_le_bytes());
            put_key(&mut out, 2, VARINT);
            // int64: a negative number is its two's complement, ten bytes.
            put_varint(&mut out, x.timestamp_ms as u64);
        }
    }
    out
}

/// `body` in snappy's block format (no framing), as remote-write 1.0 sends it.
pub fn compress(body: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(body)
        .expect("snappy block compression of an in-memory buffer cannot fail")
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn bytes_field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

fn label_len(l: &Label) -> usize {
    bytes_field_len(l.name.len()) + bytes_field_len(l.value.len())
}

fn sample_len(s: &Sample) -> usize {
    1 + 8 + 1 + varint_len(s.timestamp_ms as u64)
}

fn series_len(s: &TimeSeries) -> usize {
    s.labels
        .iter()
        .map(|l| bytes_field_len(label_len(l)))
        .chain(s.samples.iter().map(|x| bytes_field_len(sample_len(x))))
        .sum()
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A field key; field numbers here are all below 16, so one byte.
fn put_key(out: &mut Vec<u8>, field: u8, wire: u8) {
    out.push((field << 3) | wire);
}

fn put_bytes(out: &mut Vec<u8>, field: u8, b: &[u8]) {
    put_key(out, field, LEN);
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_base_128() {
        let enc = |v: u64| {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
            b
        };
        assert_eq!(enc(0), [0x00]);
        assert_eq!(enc(1), [0x01]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x80, 0x01]);
        assert_eq!(enc(300), [0xac, 0x02]);
        // -1 as an int64: ten bytes, all ones.
        assert_eq!(
            enc(-1i64 as u64),
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]
        );
    }

    /// `up{job="a"} 1 @ 1000`, worked out by hand from the .proto:
    /// the label `__name__="up"` (0a 0e | 0a 08 5f5f6e616d655f5f | 12 02 7570: 2 + 14
    /// bytes) sorts before `job="a"` (0a 08 | 0a 03 6a6f62 | 12 01 61: 2 + 8), then the
    /// sample (12 0c | 09 000000000000f03f | 10 e807: 2 + 12; 1000 = 0x3e8), all inside
    /// one timeseries of 16 + 10 + 14 = 40 bytes (0a 28).
    #[test]
    fn one_series_encodes_to_the_hand_computed_bytes() {
        let s = TimeSeries::new(
            "up",
            [("job", "a")],
            Sample {
                value: 1.0,
                timestamp_ms: 1000,
            },
        );
        let want: Vec<u8> = [
            &[0x0a, 0x28][..],
            &[0x0a, 0x0e, 0x0a, 0x08],
            b"__name__",
            &[0x12, 0x02],
            b"up",
            &[0x0a, 0x08, 0x0a, 0x03],
            b"job",
            &[0x12, 0x01],
            b"a",
            &[
                0x12, 0x0c, 0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f, 0x10, 0xe8, 0x07,
            ],
        ]
        .concat();
        assert_eq!(encode(&[s]), want);
    }

    #[test]
    fn labels_are_sorted_by_name_with_the_name_label_and_empty_values_dropped() {
        let s = TimeSeries::new(
            "m",
            [("zone", "z"), ("a", "1"), ("empty", ""), ("_x", "2")],
            Sample {
                value: 0.0,
                timestamp_ms: 0,
            },
        );
        let names: Vec<&str> = s.labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["__name__", "_x", "a", "zone"]);
        assert_eq!(s.label("__name__"), Some("m"));
        assert_eq!(s.label("empty"), None);
    }

    /// Two series, a negative value, a long label and a negative timestamp: every
    /// length prefix agrees with the bytes that follow it.
    #[test]
    fn lengths_hold_for_several_series_and_multi_byte_varints() {
        let long = "x".repeat(200);
        let a = TimeSeries::new(
            "a",
            [("l", long.as_str())],
            Sample {
                value: -2.5,
                timestamp_ms: -1,
            },
        );
        let b = TimeSeries::new(
            "b",
            [],
            Sample {
                value: f64::INFINITY,
                timestamp_ms: 1_700_000_000_000,
            },
        );
        let bytes = encode(&[a.clone(), b.clone()]);
        // The first series: key, a two-byte length, its body.
        assert_eq!(bytes[0], 0x0a);
        let len_a = series_len(&a);
        assert!(len_a >= 128);
        assert_eq!(
            &bytes[1..3],
            &[(len_a as u8 & 0x7f) | 0x80, (len_a >> 7) as u8]
        );
        let rest = &bytes[3 + len_a..];
        assert_eq!(rest[0], 0x0a);
        assert_eq!(rest[1] as usize, series_len(&b));
        assert_eq!(rest.len(), 2 + series_len(&b));
        // -2.5 as a little-endian double follows the sample's key.
        let at = bytes
            .windows(9)
            .position(|w| w[0] == 0x09)
            .expect("a double");
        assert_eq!(&bytes[at + 1..at + 9], &(-2.5f64).to_le_bytes());
    }

    #[test]
    fn snappy_block_format_round_trips() {
        let body = encode(&[TimeSeries::new(
            "m",
            [("a", "b")],
            Sample {
                value: 3.0,
                timestamp_ms: 5,
            },
        )]);
        let packed = compress(&body);
        // The block format starts with the uncompressed length as a varint (no stream
        // identifier chunk, which the framed format would have).
        assert_eq!(packed[0] as usize, body.len());
        let back = snap::raw::Decoder::new().decompress_vec(&packed).unwrap();
        assert_eq!(back, body);
    }

    /// A protobuf reader for the three messages, written from the .proto (not from
    /// the encoder): every series comes back as it went in.
    fn decode(mut b: &[u8]) -> Vec<TimeSeries> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            for shift in (0..70).step_by(7) {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    return v;
                }
            }
            panic!("varint too long")
        }
        fn field<'a>(b: &mut &'a [u8], want: u8) -> &'a [u8] {
            assert_eq!(varint(b), u64::from(want));
            let len = varint(b) as usize;
            let (f, rest) = b.split_at(len);
            *b = rest;
            f
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let mut ts = field(&mut b, 0x0a);
            let mut s = TimeSeries {
                labels: vec![],
                samples: vec![],
            };
            while !ts.is_empty() {
                match ts[0] {
                    0x0a => {
                        let mut l = field(&mut ts, 0x0a);
                        let name = String::from_utf8(field(&mut l, 0x0a).to_vec()).unwrap();
                        let value = String::from_utf8(field(&mut l, 0x12).to_vec()).unwrap();
                        assert!(l.is_empty());
                        s.labels.push(Label { name, value });
                    }
                    0x12 => {
                        let mut x = field(&mut ts, 0x12);
                        assert_eq!(x[0], 0x09);
                        let value = f64::from_le_bytes(x[1..9].try_into().unwrap());
                        x = &x[9..];
                        assert_eq!(varint(&mut x), 0x10);
                        let timestamp_ms = varint(&mut x) as i64;
                        assert!(x.is_empty());
                        s.samples.push(Sample {
                            value,
                            timestamp_ms,
                        });
                    }
                    k => panic!("unexpected key {k:#x}"),
                }
            }
            out.push(s);
        }
        out
    }

    proptest::proptest! {
        #[test]
        fn any_series_decodes_back_to_itself(
            series in proptest::collection::vec(
                (
                    "[a-z_:][a-z0-9_:]{0,20}",
                    proptest::collection::btree_map("[a-z_][a-z0-9_]{0,10}", "\\PC{1,300}", 0..6),
                    proptest::num::f64::NORMAL | proptest::num::f64::ZERO | proptest::num::f64::INFINITE,
                    proptest::num::i64::ANY,
                ),
                0..8,
            )
        ) {
            let series: Vec<TimeSeries> = series
                .iter()
                .map(|(name, labels, value, ts)| {
                    TimeSeries::new(
                        name,
                        labels.iter().map(|(n, v)| (n.as_str(), v.as_str())),
                        Sample { value: *value, timestamp_ms: *ts },
                    )
                })
                .collect();
            let bytes = encode(&series);
            proptest::prop_assert_eq!(decode(&bytes), series);
            let back = snap::raw::Decoder::new().decompress_vec(&compress(&bytes)).unwrap();
            proptest::prop_assert_eq!(back, bytes);
        }
    }
}
