//! RFC 8785 JSON Canonicalization Scheme (JCS) and a strict JSON reader.
//!
//! Signatures in zosd sign `sha256(jcs(body))`, so two implementations must agree on
//! every byte. The rules (docs/contract-format.md repeats them for implementers):
//! objects sorted by the UTF-16 code units of their keys, no whitespace, strings
//! escaped as ECMAScript `JSON.stringify` does, numbers as ECMAScript
//! `Number.prototype.toString`.
//!
//! Untrusted documents are read with [`parse_strict`], which refuses duplicate object
//! keys (with duplicates, two readers could see two different documents behind one
//! signature), and, before parsing, nesting deeper than a limit and integers outside
//! ±(2^53-1) (another reader would see another number).

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Why a value has no canonical form or a document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonError {
    /// An integer outside ±(2^53-1).
    #[error("integer {0} is outside ±(2^53-1); another reader could see another number")]
    UnsafeInteger(String),
    /// Arrays and objects nested deeper than the limit given.
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    /// NaN or an infinity, which JSON cannot hold.
    #[error("number is not finite")]
    NonFinite,
    /// Not JSON: the parser's message.
    #[error("invalid JSON: {0}")]
    Syntax(String),
    /// An object names this key twice.
    #[error("duplicate key {0:?} in object")]
    DuplicateKey(String),
}

/// The largest integer a document may hold: 2^53 - 1 (every integer up to it is exactly
/// one IEEE 754 double, so every reader sees the integer written).
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The nesting [`parse_strict`] allows: arrays and objects inside one another.
pub const MAX_DEPTH: usize = 128;

/// The canonical bytes of `value`.
pub fn to_vec(value: &Value) -> Result<Vec<u8>, CanonError> {
    let mut out = Vec::with_capacity(256);
    write_value(value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), CanonError> {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out)?,
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // JCS orders keys by UTF-16 code units, which differs from UTF-8 byte order
            // only for characters above U+FFFF versus U+E000..U+FFFF. Keys without a
            // character above U+FFFF (no 4-byte UTF-8 sequence) need sorting only if the
            // map is not in byte order already.
            let bmp_only = map.keys().all(|k| k.bytes().all(|b| b < 0xF0));
            let byte_ordered = entries.windows(2).all(|w| w[0].0 <= w[1].0);
            if !(bmp_only && byte_ordered) {
                entries.sort_by(|(a, _), (b, _)| a.encode_utf16().cmp(b.encode_utf16()));
            }
            out.push(b'{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_value(v, out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

fn write_number(n: &Number, out: &mut Vec<u8>) -> Result<(), CanonError> {
    // A safe integer is exactly one double, which ECMAScript prints as its decimal
    // digits (no exponent below 1e21): the same text as the integer's own.
    if let Some(i) = safe_integer(n) {
        out.extend_from_slice(itoa_i64(i, &mut [0u8; 20]));
        return Ok(());
    }
    // Every JCS number is an IEEE 754 double, printed as ECMAScript prints it. An
    // integer whose text that would change (2^53 + 1 becomes 9007199254740992) is
    // refused: another reader would silently see a different number.
    let is_integer = n.is_i64() || n.is_u64();
    let f = n.as_f64().ok_or(CanonError::NonFinite)?;
    if !f.is_finite() {
        return Err(CanonError::NonFinite);
    }
    let text = if f == 0.0 {
        // ECMAScript prints -0 as "0".
        "0".to_string()
    } else {
        ryu_js::Buffer::new().format_finite(f).to_string()
    };
    if is_integer && text != n.to_string() {
        return Err(CanonError::UnsafeInteger(n.to_string()));
    }
    // Written as an integer: it must be a safe one (1e20 as a double prints as 21 digits).
    if !text.contains(['.', 'e']) && !is_safe_integer(text.as_bytes()) {
        return Err(CanonError::UnsafeInteger(text));
    }
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// The integer `n` holds if it is within ±(2^53-1) (0 for -0 is not an integer here:
/// serde_json holds it as a float).
fn safe_integer(n: &Number) -> Option<i64> {
    const MAX: i64 = MAX_SAFE_INTEGER as i64;
    n.as_i64().filter(|i| (-MAX..=MAX).contains(i))
}

/// The decimal digits of `i`, written into the end of `buf`.
fn itoa_i64(i: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    let mut rest = i.unsigned_abs();
    loop {
        at -= 1;
        // Always a digit: `rest % 10` is below 10.
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if i < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..]
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    // Most strings (keys, hex, names) need no escape: copied whole. Every byte is
    // looked at without stopping early, which the compiler turns into a vector loop.
    let plain = s.bytes().fold(true, |plain, b| {
        plain & (b != b'"') & (b != b'\\') & (b >= 0x20)
    });
    if plain {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{08}' => out.extend_from_slice(b"\\b"),
            '\u{09}' => out.extend_from_slice(b"\\t"),
            '\u{0A}' => out.extend_from_slice(b"\\n"),
            '\u{0C}' => out.extend_from_slice(b"\\f"),
            '\u{0D}' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Whether an integer's text (`-`? digits) is within ±(2^53-1).
fn is_safe_integer(text: &[u8]) -> bool {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    digits.len() <= 16
        && std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse::<u64>().ok())
            .is_some_and(|n| n <= MAX_SAFE_INTEGER)
}

/// One pass over the bytes before they are parsed: arrays and objects nested deeper
/// than `max_depth`, and integer literals (no `.`, no exponent) outside ±(2^53-1).
/// Anything else that is not JSON is left to the parser.
pub(crate) fn scan(bytes: &[u8], max_depth: usize) -> Result<(), CanonError> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Err(CanonError::TooDeep(max_depth));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = &bytes[start..i];
                let digits = token.strip_prefix(b"-").unwrap_or(token);
                let integer = !digits.is_empty() && digits.iter().all(u8::is_ascii_digit);
                if integer && !is_safe_integer(token) {
                    return Err(CanonError::UnsafeInteger(
                        String::from_utf8_lossy(token).into_owned(),
                    ));
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Reads a JSON document, refusing duplicate object keys at any depth, nesting over
/// [`MAX_DEPTH`] and unsafe integers.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, CanonError> {
    parse_strict_within(bytes, MAX_DEPTH)
}

/// [`parse_strict`] with another nesting limit, checked before parsing.
pub(crate) fn parse_strict_within(bytes: &[u8], max_depth: usize) -> Result<Value, CanonError> {
    parse_watched(bytes, max_depth, None)
}

/// Bounds to watch while a document is parsed: the parse says whether any value in it
/// breaks one, so a document within them need not be walked again to find out.
pub(crate) struct Watch {
    /// Characters in a string or a key.
    pub(crate) string_chars: usize,
    /// Items in an array or members in an object.
    pub(crate) collection_items: usize,
    /// The depth of a value, the whole document's being 1.
    pub(crate) depth: usize,
    broken: std::cell::Cell<bool>,
}

impl Watch {
    pub(crate) fn new(string_chars: usize, collection_items: usize, depth: usize) -> Self {
        Watch {
            string_chars,
            collection_items,
            depth,
            broken: std::cell::Cell::new(false),
        }
    }

    /// Whether a value parsed since [`Watch::new`] broke a bound.
    pub(crate) fn broken(&self) -> bool {
        self.broken.get()
    }

    /// Notes a value at `depth`.
    pub(crate) fn depth(&self, depth: usize) {
        if depth > self.depth {
            self.broken.set(true);
        }
    }

    /// Notes a bound broken, or perhaps broken.
    pub(crate) fn set_broken(&self) {
        self.broken.set(true);
    }

    /// Notes a string or a key.
    pub(crate) fn text(&self, s: &str) {
        // A string no longer in bytes than the bound is within it in characters.
        if s.len() > self.string_chars && s.chars().count() > self.string_chars {
            self.broken.set(true);
        }
    }

    /// Notes an array's items or an object's members.
    pub(crate) fn items(&self, n: usize) {
        if n > self.collection_items {
            self.broken.set(true);
        }
    }
}

/// [`parse_strict_within`], noting in `watch` whether a value breaks its bounds.
pub(crate) fn parse_watched(
    bytes: &[u8],
    max_depth: usize,
    watch: Option<&Watch>,
) -> Result<Value, CanonError> {
    scan(bytes, max_depth)?;
    // UTF-8 checked once for the whole document, not string by string; a document
    // that is not UTF-8 is read as bytes, to be refused where the parser finds it.
    match std::str::from_utf8(bytes) {
        Ok(text) => parse_with(serde_json::Deserializer::from_str(text), watch),
        Err(_) => parse_with(serde_json::Deserializer::from_slice(bytes), watch),
    }
}

fn parse_with<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
    watch: Option<&Watch>,
) -> Result<Value, CanonError> {
    let value = StrictValue { depth: 1, watch }
        .deserialize(&mut de)
        .map_err(|e| classify(e.to_string()))?;
    de.end().map_err(|e| CanonError::Syntax(e.to_string()))?;
    Ok(value)
}

const DUPLICATE_MARK: &str = "\u{0}zos-duplicate-key:";

fn classify(msg: String) -> CanonError {
    match msg.find(DUPLICATE_MARK) {
        Some(at) => {
            let rest = &msg[at + DUPLICATE_MARK.len()..];
            let key = rest.split('\u{0}').next().unwrap_or_default();
            CanonError::DuplicateKey(key.to_string())
        }
        None => CanonError::Syntax(msg),
    }
}

/// A `serde_json::Value` seed that errors on duplicate keys: the value at `depth`.
#[derive(Clone, Copy)]
struct StrictValue<'w> {
    depth: usize,
    watch: Option<&'w Watch>,
}

impl StrictValue<'_> {
    fn duplicate<E: de::Error>(key: &str) -> E {
        de::Error::custom(format!("{DUPLICATE_MARK}{key}\u{0}"))
    }
}

impl<'de> DeserializeSeed<'de> for StrictValue<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if let Some(w) = self.watch {
            w.depth(self.depth);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        if let Some(w) = self.watch {
            w.text(v);
        }
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        if let Some(w) = self.watch {
            w.text(&v);
        }
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = StrictValue {
            depth: self.depth + 1,
            ..self
        };
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        if let Some(w) = self.watch {
            w.items(items.len());
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = StrictValue {
            depth: self.depth + 1,
            ..self
        };
        // Members in increasing key order (as canonical documents have them) cannot
        // repeat a key: they are kept in order and the map is built from them at once.
        // From the first key not above the one before, a map checks every key.
        let mut sorted: Vec<(String, Value)> = Vec::new();
        let mut out: Option<Map<String, Value>> = None;
        while let Some(key) = map.next_key::<String>()? {
            if let Some(w) = self.watch {
                w.text(&key);
            }
            let members = match &mut out {
                Some(members) => members,
                None if sorted.last().is_none_or(|(last, _)| *last < key) => {
                    let value = map.next_value_seed(inner)?;
                    sorted.push((key, value));
                    continue;
                }
                None => out.insert(std::mem::take(&mut sorted).into_iter().collect()),
            };
            match members.entry(key) {
                serde_json::map::Entry::Occupied(o) => return Err(Self::duplicate(o.key())),
                serde_json::map::Entry::Vacant(v) => {
                    v.insert(map.next_value_seed(inner)?);
                }
            }
        }
        let out = out.unwrap_or_else(|| sorted.into_iter().collect());
        if let Some(w) = self.watch {
            w.items(out.len());
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: Value) -> String {
        String::from_utf8(to_vec(&v).unwrap()).unwrap()
    }

    #[test]
    fn rfc8785_sorting_example() {
        // RFC 8785 section 3.2.3: keys sorted by UTF-16 code units.
        let v = parse_strict(
            br#"{"\u20ac":"Euro Sign","\r":"Carriage Return","\ufb33":"Hebrew Letter Dalet With Dagesh","1":"One","\ud83d\ude00":"Emoji: Grinning Face","\u0080":"Control","\u00f6":"Latin Small Letter O With Diaeresis"}"#,
        )
        .unwrap();
        let want = "{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u{80}\":\"Control\",\"\u{f6}\":\"Latin Small Letter O With Diaeresis\",\"\u{20ac}\":\"Euro Sign\",\"\u{1f600}\":\"Emoji: Grinning Face\",\"\u{fb33}\":\"Hebrew Letter Dalet With Dagesh\"}";
        assert_eq!(canon(v), want);
    }

    #[test]
    fn rfc8785_numbers() {
        // Values from RFC 8785 appendix B.
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1e21, "1e+21"),
            (1e-7, "1e-7"),
            (0.000001, "0.000001"),
            (333333333.3333333, "333333333.3333333"),
            (1e23, "1e+23"),
            (4.5, "4.5"),
            (2e-3, "0.002"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
        ];
        for (f, want) in cases {
            let n = Number::from_f64(*f).unwrap();
            assert_eq!(canon(Value::Number(n)), *want, "{f}");
        }
        assert_eq!(canon(json!(9007199254740991u64)), "9007199254740991");
        assert_eq!(canon(json!(-9007199254740991i64)), "-9007199254740991");
        // 2^53 + 1 has no double: refused rather than rounded.
        assert_eq!(
            to_vec(&json!(9007199254740993u64)),
            Err(CanonError::UnsafeInteger("9007199254740993".into()))
        );
        // 2^53 and 1e19 are doubles, but outside ±(2^53-1): refused too, as integers and
        // as doubles whose text is an integer.
        for v in [
            json!(9007199254740992u64),
            json!(-9007199254740992i64),
            json!(10000000000000000000u64),
            json!(1e20),
        ] {
            assert!(
                matches!(to_vec(&v), Err(CanonError::UnsafeInteger(_))),
                "{v}"
            );
        }
        assert_eq!(canon(json!(1e21)), "1e+21");
    }

    #[test]
    fn strings_escape_like_json_stringify() {
        assert_eq!(
            canon(json!("a\"b\\c\u{1}\u{1f}\n\t\u{8}\u{c}\r/\u{7f}\u{2028}é")),
            "\"a\\\"b\\\\c\\u0001\\u001f\\n\\t\\b\\f\\r/\u{7f}\u{2028}é\""
        );
    }

    #[test]
    fn nested_and_whitespace_free() {
        let v = parse_strict(br#" { "b" : [ 1 , { "z":null, "a":true } ], "a" : "x" } "#).unwrap();
        assert_eq!(canon(v), r#"{"a":"x","b":[1,{"a":true,"z":null}]}"#);
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert_eq!(
            parse_strict(br#"{"a":1,"a":2}"#),
            Err(CanonError::DuplicateKey("a".into()))
        );
        assert_eq!(
            parse_strict(br#"{"x":[{"k":1,"k":1}]}"#),
            Err(CanonError::DuplicateKey("k".into()))
        );
    }

    #[test]
    fn unsafe_integers_are_refused_before_parsing() {
        for text in [
            "9007199254740992",
            "-9007199254740992",
            "1152921504606847000",
            "100000000000000000000000000000",
            r#"{"a":[1,{"b":18446744073709551616}]}"#,
        ] {
            assert!(
                matches!(
                    parse_strict(text.as_bytes()),
                    Err(CanonError::UnsafeInteger(_))
                ),
                "{text}"
            );
        }
        // Fractions and exponents are doubles, not integers; digits in strings are text.
        for text in [
            "9007199254740991",
            "-9007199254740991",
            "1e300",
            "1.5",
            r#""100000000000000000000000""#,
            r#"{"\"1e99999999999999999":0}"#,
        ] {
            assert!(parse_strict(text.as_bytes()).is_ok(), "{text}");
        }
    }

    #[test]
    fn nesting_is_limited_before_parsing() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(parse_strict_within(deep(32).as_bytes(), 32).is_ok());
        assert_eq!(
            parse_strict_within(deep(33).as_bytes(), 32),
            Err(CanonError::TooDeep(32))
        );
        // A million levels: refused by the scan, never by the stack.
        assert_eq!(
            parse_strict("{\"a\":".repeat(1_000_000).as_bytes()),
            Err(CanonError::TooDeep(MAX_DEPTH))
        );
        // Brackets inside strings are text.
        assert!(parse_strict_within(br#"["[[[[", "\"{{{"]"#, 1).is_ok());
    }

    #[test]
    fn keys_in_any_order_are_read_and_repeats_refused() {
        // In order, out of order from the start, and out of order after a run in order.
        for text in [
            r#"{"a":1,"b":[2],"c":{"x":3}}"#,
            r#"{"c":{"x":3},"b":[2],"a":1}"#,
            r#"{"a":1,"c":{"x":3},"b":[2]}"#,
        ] {
            let v = parse_strict(text.as_bytes()).unwrap();
            assert_eq!(
                v,
                serde_json::json!({"a": 1, "b": [2], "c": {"x": 3}}),
                "{text}"
            );
        }
        for (text, key) in [
            (r#"{"a":1,"b":2,"a":3}"#, "a"),
            (r#"{"b":1,"a":2,"b":3}"#, "b"),
            (r#"{"a":1,"c":2,"b":3,"c":4}"#, "c"),
            (r#"{"a":1,"a":2}"#, "a"),
            // The first repeat in document order, before what follows it is read.
            (r#"{"b":1,"a":2,"b":{"x":1,"x":2},"a":3}"#, "b"),
            (r#"{"b":1,"b":[}"#, "b"),
        ] {
            assert_eq!(
                parse_strict(text.as_bytes()),
                Err(CanonError::DuplicateKey(key.into())),
                "{text}"
            );
        }
    }

    #[test]
    fn a_watch_sees_every_broken_bound() {
        // Exactly the documents the walk refuses.
        let limits = crate::Limits {
            string_chars: 3,
            collection_items: 2,
            depth: 3,
            ..crate::Limits::default()
        };
        for (text, breaks) in [
            (r#"{"a":["abc"],"b":{"c":1,"d":"xyz"}}"#, false),
            (r#"[[1],[2,3]]"#, false),
            (r#"{"b":"é€"}"#, false),
            (r#"[[[]]]"#, false),
            (r#"{"a":"abcd"}"#, true),
            (r#"{"abcd":1}"#, true),
            (r#"[1,2,3]"#, true),
            (r#"{"a":1,"b":2,"c":3}"#, true),
            (r#"{"c":1,"b":2,"a":3}"#, true),
            (r#"[[[1]]]"#, true),
            (r#"[[[[]]]]"#, true),
            (r#"{"a":{"b":{"c":1}}}"#, true),
        ] {
            let watch = Watch::new(limits.string_chars, limits.collection_items, limits.depth);
            let v = parse_watched(text.as_bytes(), 32, Some(&watch)).unwrap();
            assert_eq!(watch.broken(), breaks, "{text}");
            assert_eq!(
                crate::limits::check_value(&v, &limits).is_err(),
                breaks,
                "{text}"
            );
        }
    }

    #[test]
    fn text_and_bytes_read_alike() {
        // Whatever the input, reading it as checked text gives what reading its bytes
        // gives, the same value or the same refusal.
        let bytes_read =
            |bytes: &[u8]| parse_with(serde_json::Deserializer::from_slice(bytes), None);
        for text in [
            r#"{"a":"é\u00e9\ud83d\ude00","b":[1,-2,3.5e3,null,true]}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00x"}"#,
            r#"{"a":"\u12"}"#,
            "{\"a\":\"\t\"}",
            r#"{"a":"x\qy"}"#,
            r#"{"a" 1}"#,
            r#"[1,]"#,
            r#"{"b":1,"b":2}"#,
        ] {
            assert_eq!(
                parse_watched(text.as_bytes(), 32, None),
                bytes_read(text.as_bytes()),
                "{text}"
            );
        }
        // Not UTF-8: refused where the parser finds it, as before.
        let bad = b"{\"a\":\"\xff\"}";
        assert_eq!(parse_watched(bad, 32, None), bytes_read(bad));
        assert!(parse_watched(bad, 32, None).is_err());
    }

    #[test]
    fn trailing_garbage_is_refused() {
        assert!(matches!(parse_strict(b"{} {}"), Err(CanonError::Syntax(_))));
        assert!(matches!(parse_strict(b"{"), Err(CanonError::Syntax(_))));
    }
}
