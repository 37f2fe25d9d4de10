//! One log line and its two wire formats: RFC 5424 syslog with octet-counted framing
//! (RFC 6587 §3.4.1) and JSON lines.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Syslog facility (RFC 5424 §6.2.1), the numeric codes 0..=23.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)] // The RFC's names.
pub enum Facility {
    Kern = 0,
    User = 1,
    Mail = 2,
    Daemon = 3,
    Auth = 4,
    Syslog = 5,
    Lpr = 6,
    News = 7,
    Uucp = 8,
    Cron = 9,
    AuthPriv = 10,
    Ftp = 11,
    Ntp = 12,
    Audit = 13,
    Alert = 14,
    Clock = 15,
    Local0 = 16,
    Local1 = 17,
    Local2 = 18,
    Local3 = 19,
    Local4 = 20,
    Local5 = 21,
    Local6 = 22,
    Local7 = 23,
}

impl Facility {
    const ALL: [Facility; 24] = [
        Facility::Kern,
        Facility::User,
        Facility::Mail,
        Facility::Daemon,
        Facility::Auth,
        Facility::Syslog,
        Facility::Lpr,
        Facility::News,
        Facility::Uucp,
        Facility::Cron,
        Facility::AuthPriv,
        Facility::Ftp,
        Facility::Ntp,
        Facility::Audit,
        Facility::Alert,
        Facility::Clock,
        Facility::Local0,
        Facility::Local1,
        Facility::Local2,
        Facility::Local3,
        Facility::Local4,
        Facility::Local5,
        Facility::Local6,
        Facility::Local7,
    ];

    /// The facility with this numeric code (0..=23), `None` outside.
    pub fn from_code(code: u8) -> Option<Facility> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The lower-case name used in JSON lines ("kern", "daemon", "local0", ...).
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 24] = [
            "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron",
            "authpriv", "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2",
            "local3", "local4", "local5", "local6", "local7",
        ];
        NAMES[self as usize]
    }
}

/// Syslog severity (RFC 5424 §6.2.1), 0 (emergency) ..= 7 (debug).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
#[allow(missing_docs)] // The RFC's names.
pub enum Severity {
    Emergency = 0,
    Alert = 1,
    Critical = 2,
    Error = 3,
    Warning = 4,
    Notice = 5,
    Informational = 6,
    Debug = 7,
}

impl Severity {
    /// The severity with this numeric code; only the low 3 bits count (as in a PRI).
    pub fn from_code(code: u8) -> Severity {
        match code & 7 {
            0 => Severity::Emergency,
            1 => Severity::Alert,
            2 => Severity::Critical,
            3 => Severity::Error,
            4 => Severity::Warning,
            5 => Severity::Notice,
            6 => Severity::Informational,
            _ => Severity::Debug,
        }
    }

    /// The lower-case name used in JSON lines ("err", "warning", "info", ...).
    pub fn name(self) -> &'static str {
        match self {
            Severity::Emergency => "emerg",
            Severity::Alert => "alert",
            Severity::Critical => "crit",
            Severity::Error => "err",
            Severity::Warning => "warning",
            Severity::Notice => "notice",
            Severity::Informational => "info",
            Severity::Debug => "debug",
        }
    }
}

/// One log line as the node produces it. Who it belongs to (the node, or one contract) is
/// not a field: the shipper it is pushed into stamps it (see [`crate::TenantSink`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// When it happened (wall clock).
    pub time: SystemTime,
    /// Syslog facility.
    pub facility: Facility,
    /// Syslog severity.
    pub severity: Severity,
    /// APP-NAME: "zosd", "init", "kernel", or a workload's name.
    pub app: String,
    /// PROCID, if any (a process id).
    pub procid: Option<String>,
    /// MSGID, if any (a short kind of message).
    pub msgid: Option<String>,
    /// Extra parameters of the `zos` structured-data element, after the ones the shipper
    /// stamps (`contract`, `workload`).
    pub params: Vec<(String, String)>,
    /// The message: any UTF-8, several lines allowed.
    pub message: String,
}

impl Line {
    /// A line of now, facility `daemon`, no PROCID/MSGID/params.
    pub fn new(app: impl Into<String>, severity: Severity, message: impl Into<String>) -> Line {
        Line {
            time: SystemTime::now(),
            facility: Facility::Daemon,
            severity,
            app: app.into(),
            procid: None,
            msgid: None,
            params: Vec::new(),
            message: message.into(),
        }
    }

    /// The same line with this facility.
    pub fn facility(mut self, facility: Facility) -> Line {
        self.facility = facility;
        self
    }

    /// The same line with this MSGID.
    pub fn msgid(mut self, msgid: impl Into<String>) -> Line {
        self.msgid = Some(msgid.into());
        self
    }

    /// The same line with one more `zos` structured-data parameter.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Line {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Bytes this line holds in memory, for the queue's byte bound (an estimate: the
    /// strings' lengths plus a fixed overhead).
    pub(crate) fn weight(&self) -> usize {
        64 + self.app.len()
            + self.procid.as_ref().map_or(0, String::len)
            + self.msgid.as_ref().map_or(0, String::len)
            + self
                .params
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.message.len()
    }
}

/// The wire format of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// RFC 5424, each message framed as `LEN SP MSG` (RFC 6587 octet counting).
    Syslog,
    /// One JSON object per line, `\n`-terminated.
    JsonLines,
}

/// The SD-ID of the node's structured-data element.
pub const SD_ID: &str = "zos";
/// RFC 5424's limits on header fields (octets).
const HOSTNAME_MAX: usize = 255;
const APP_NAME_MAX: usize = 48;
const PROCID_MAX: usize = 128;
const MSGID_MAX: usize = 32;
const SD_NAME_MAX: usize = 32;

/// Who a shipper's lines come from: stamped on every line it sends.
#[derive(Debug, Clone)]
pub(crate) struct Stamp {
    /// HOSTNAME: the node id.
    pub hostname: String,
    /// The contract, for a tenant's shipper.
    pub contract: Option<String>,
}

/// One line encoded in `format`: a complete frame, ready to write.
pub(crate) fn encode(line: &Line, stamp: &Stamp, format: Format, max_message: usize) -> Vec<u8> {
    let message = truncate(&line.message, max_message);
    match format {
        Format::Syslog => {
            let msg = rfc5424(line, stamp, message);
            let mut out = format!("{} ", msg.len()).into_bytes();
            out.extend_from_slice(msg.as_bytes());
            out
        }
        Format::JsonLines => {
            let mut obj = serde_json::Map::new();
            let mut put = |k: &str, v: serde_json::Value| {
                obj.insert(k.to_string(), v);
            };
            put("time", rfc3339(line.time).into());
            put("host", stamp.hostname.clone().into());
            put("app", line.app.clone().into());
            put("facility", line.facility.name().into());
            put("severity", line.severity.name().into());
            if let Some(p) = &line.procid {
                put("procid", p.clone().into());
            }
            if let Some(m) = &line.msgid {
                put("msgid", m.clone().into());
            }
            if let Some(c) = &stamp.contract {
                put("contract", c.clone().into());
            }
            for (k, v) in &line.params {
                // The stamped contract always wins over a same-named parameter.
                if k != "contract" || stamp.contract.is_none() {
                    put(k, v.clone().into());
                }
            }
            put("message", message.into());
            let mut out = serde_json::Value::Object(obj).to_string().into_bytes();
            out.push(b'\n');
            out
        }
    }
}

/// `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG`, without BOM.
fn rfc5424(line: &Line, stamp: &Stamp, message: &str) -> String {
    let pri = (line.facility as u8) * 8 + line.severity as u8;
    let mut s = format!(
        "<{pri}>1 {} {} {} {} {} ",
        rfc3339(line.time),
        header_field(&stamp.hostname, HOSTNAME_MAX),
        header_field(&line.app, APP_NAME_MAX),
        header_field(line.procid.as_deref().unwrap_or(""), PROCID_MAX),
        header_field(line.msgid.as_deref().unwrap_or(""), MSGID_MAX),
    );
    let mut params: Vec<(&str, &str)> = Vec::new();
    if let Some(c) = &stamp.contract {
        params.push(("contract", c));
    }
    for (k, v) in &line.params {
        if k != "contract" || stamp.contract.is_none() {
            params.push((k, v));
        }
    }
    if params.is_empty() {
        s.push('-');
    } else {
        s.push('[');
        s.push_str(SD_ID);
        for (k, v) in params {
            let _ = write!(s, " {}=\"", sd_name(k));
            for c in v.chars() {
                if matches!(c, '"' | '\\' | ']') {
                    s.push('\\');
                }
                s.push(c);
            }
            s.push('"');
        }
        s.push(']');
    }
    if !message.is_empty() {
        s.push(' ');
        s.push_str(message);
    }
    s
}

/// A header field: printable US-ASCII only (others become `_`), at most `max` octets,
/// `-` when empty.
fn header_field(v: &str, max: usize) -> String {
    let s: String = v
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if s.is_empty() {
        "-".to_string()
    } else {
        s
    }
}

/// An SD-NAME: printable US-ASCII but `=`, space, `]`, `"`; at most 32 octets.
fn sd_name(v: &str) -> String {
    let s: String = v
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && !matches!(c, '=' | ']' | '"') {
                c
            } else {
                '_'
            }
        })
        .take(SD_NAME_MAX)
        .collect();
    if s.is_empty() {
        "_".to_string()
    } else {
        s
    }
}

/// At most `max` bytes of `s`, cut on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// RFC 3339 in UTC with microseconds: `2026-12-06T18:33:40.123456Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (the era-based algorithm: 400-year cycles of 146097 days).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(contract: Option<&str>) -> Stamp {
        Stamp {
            hostname: "node-1".into(),
            contract: contract.map(str::to_string),
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_796_582_020_123_456);
        assert_eq!(rfc3339(t), "2026-12-06T18:33:40.123456Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn syslog_frames_are_octet_counted_with_escaped_sd() {
        let mut line = Line::new("web", Severity::Warning, "two\nlines é")
            .msgid("OUT")
            .param("workload", "a\"b]c\\d");
        line.time = UNIX_EPOCH;
        let frame = encode(&line, &stamp(Some("c-1")), Format::Syslog, 8192);
        let text = String::from_utf8(frame).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert_eq!(
            msg,
            "<28>1 1970-01-01T00:00:00.000000Z node-1 web - OUT \
             [zos contract=\"c-1\" workload=\"a\\\"b\\]c\\\\d\"] two\nlines é"
        );
    }

    #[test]
    fn a_line_cannot_claim_another_contract() {
        let line = Line::new("web", Severity::Notice, "x").param("contract", "c-other");
        let text =
            String::from_utf8(encode(&line, &stamp(Some("c-1")), Format::Syslog, 99)).unwrap();
        assert!(text.contains("[zos contract=\"c-1\"]"), "{text}");
        assert!(!text.contains("c-other"), "{text}");
        let json = encode(&line, &stamp(Some("c-1")), Format::JsonLines, 99);
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["contract"], "c-1");
    }

    #[test]
    fn header_fields_are_printable_and_bounded() {
        let mut line = Line::new("my app with spaces ünï", Severity::Debug, "");
        line.msgid = Some("x".repeat(40));
        let text = String::from_utf8(encode(&line, &stamp(None), Format::Syslog, 10)).unwrap();
        let msg = text.split_once(' ').unwrap().1;
        let fields: Vec<&str> = msg.split(' ').collect();
        assert_eq!(fields[3], "my_app_with_spaces__n_");
        assert_eq!(fields[5], "x".repeat(32));
        assert_eq!(fields[6], "-");
        assert_eq!(
            fields.len(),
            7,
            "an empty MSG has no trailing space: {msg:?}"
        );
    }

    #[test]
    fn json_lines_are_one_object_per_line() {
        let line = Line::new("zosd", Severity::Error, "a\nb").facility(Facility::Kern);
        let out = encode(&line, &stamp(None), Format::JsonLines, 8192);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["message"], "a\nb");
        assert_eq!(v["facility"], "kern");
        assert_eq!(v["severity"], "err");
        assert!(v.get("contract").is_none());
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        assert_eq!(truncate("ééé", 3), "é");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
