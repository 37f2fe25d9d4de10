//! The console screen: plain text, one fact per line, no colours, so it reads the
//! same on a VGA console, a serial line and in a log file.
//!
//! Every string that came from outside (contract ids, messages) is made printable:
//! a control character could otherwise move the cursor or restyle the console.

use std::fmt::Write;

use crate::model::{NodeStatus, Resources};

/// Workload, contract and error lines shown at most (a console has ~25 lines).
const MAX_ROWS: usize = 12;
/// Long lines are cut here (a console wraps at 80; the key needs 64 + label).
const MAX_WIDTH: usize = 100;

/// The screen for `s`, ending with a newline.
pub fn render(s: &NodeStatus) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&clip(&printable(&text)));
        out.push('\n');
    };
    line(format!(
        "Zero-OS node  zosd {}  (read-only; there is no login)",
        s.version
    ));
    line(format!("node      {}", or_dash(&s.node)));
    line(format!(
        "farm      {}",
        s.farm.as_deref().unwrap_or("(none: not registering)")
    ));
    line(format!("state     {}", or_dash(&s.state)));
    line(format!("uptime    {}", duration(s.uptime_secs)));
    if s.addresses.is_empty() {
        line("address   -".into());
    }
    for a in &s.addresses {
        line(format!("address   {a}"));
    }
    line(String::new());
    line(format!("pools ({})", s.pools.len()));
    for p in &s.pools {
        line(format!(
            "  {:<16} {:<4} {:<8} {:>10} used {}",
            p.label,
            p.kind,
            p.state,
            bytes(p.size_bytes),
            bytes(p.used_bytes)
        ));
    }
    line(format!(
        "capacity  {:>8} {:>10} {:>10} {:>10}",
        "cpu", "memory", "ssd", "hdd"
    ));
    for (name, r) in [("offered", s.offered), ("reserved", s.reserved)] {
        line(resources(name, &r));
    }
    line(String::new());
    line(format!("workloads ({})", s.workloads.len()));
    for w in s.workloads.iter().take(MAX_ROWS) {
        let mut text = format!(
            "  {}/{}  {}  {}  restarts {}",
            w.contract, w.name, w.kind, w.state, w.restarts
        );
        if let Some(a) = &w.address {
            let _ = write!(text, "  {a}");
        }
        if let Some(r) = &w.runtime {
            let _ = write!(text, "  {r}");
        }
        line(text);
        if let Some(output) = &w.output {
            line(format!("    > {output}"));
        }
    }
    more(&mut line, s.workloads.len());
    line(format!("contracts ({})", s.contracts.len()));
    for c in s.contracts.iter().take(MAX_ROWS) {
        let version = c.version.map(|v| format!(" v{v}")).unwrap_or_default();
        line(format!("  {}{version}  {}  {}", c.id, c.state, c.message));
    }
    more(&mut line, s.contracts.len());
    line(format!("last errors ({})", s.errors.len()));
    // Newest first: the one that matters is on screen even when the list is cut.
    for e in s.errors.iter().rev().take(MAX_ROWS) {
        line(format!("  {}  {}: {}", utc(e.time), e.source, e.message));
    }
    out
}

fn more(line: &mut impl FnMut(String), total: usize) {
    if total > MAX_ROWS {
        line(format!("  ... and {} more", total - MAX_ROWS));
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

fn resources(name: &str, r: &Resources) -> String {
    format!(
        "  {:<8}{:>8} {:>10} {:>10} {:>10}",
        name,
        r.cpu,
        bytes(r.memory_bytes),
        bytes(r.ssd_bytes),
        bytes(r.hdd_bytes)
    )
}

/// Control characters (ESC above all) become `?`.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn clip(s: &str) -> String {
    if s.chars().count() <= MAX_WIDTH {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(MAX_WIDTH - 3).collect();
    cut.push_str("...");
    cut
}

/// `1.5 GiB`, `64.0 MiB`, `512 B`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `3d 04:05:06`.
pub fn duration(secs: u64) -> String {
    let (d, rest) = (secs / 86_400, secs % 86_400);
    format!(
        "{d}d {:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// `2026-11-23 15:50:01Z` from unix seconds (civil-from-days, proleptic Gregorian).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::*;

    pub(crate) fn sample() -> NodeStatus {
        let mut s = NodeStatus {
            node: "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c".into(),
            farm: Some("farm-1".into()),
            version: "0.1.0".into(),
            state: "serving".into(),
            uptime_secs: 93_784,
            addresses: vec!["eth0 10.0.2.15/24".into()],
            pools: vec![PoolStatus {
                label: "zos-ssd-0".into(),
                kind: "ssd".into(),
                state: "online".into(),
                size_bytes: 8 << 30,
                used_bytes: 120 << 20,
            }],
            offered: Resources {
                cpu: 8,
                memory_bytes: 3584 << 20,
                ssd_bytes: 8 << 30,
                hdd_bytes: 0,
            },
            reserved: Resources {
                cpu: 1,
                memory_bytes: 64 << 20,
                ssd_bytes: 64 << 20,
                hdd_bytes: 0,
            },
            contracts: vec![
                ContractStatus {
                    id: "crm".into(),
                    version: Some(2),
                    state: "ok".into(),
                    message: "every workload runs".into(),
                },
                ContractStatus {
                    id: "bad".into(),
                    version: Some(1),
                    state: "refused".into(),
                    message: "[signature] owner signature invalid\x1b[2J".into(),
                },
            ],
            workloads: vec![WorkloadLine {
                contract: "crm".into(),
                name: "app".into(),
                kind: "container".into(),
                state: "running".into(),
                restarts: 1,
                address: Some("10.70.0.2".into()),
                runtime: None,
                output: Some("hello from crm-app\x1b[31m: serving 100 users".into()),
            }],
            errors: Vec::new(),
        };
        s.push_error(
            1_795_449_001,
            "farm",
            "farm-1 is not in the notary: retrying",
        );
        s.push_error(
            1_795_449_061,
            "contract bad",
            "[signature] owner signature invalid",
        );
        s
    }

    #[test]
    fn golden_screen() {
        let want = "\
Zero-OS node  zosd 0.1.0  (read-only; there is no login)
node      8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c
farm      farm-1
state     serving
uptime    1d 02:03:04
address   eth0 10.0.2.15/24

pools (1)
  zos-ssd-0        ssd  online      8.0 GiB used 120.0 MiB
capacity       cpu     memory        ssd        hdd
  offered        8    3.5 GiB    8.0 GiB        0 B
  reserved       1   64.0 MiB   64.0 MiB        0 B

workloads (1)
  crm/app  container  running  restarts 1  10.70.0.2
    > hello from crm-app?[31m: serving 100 users
contracts (2)
  crm v2  ok  every workload runs
  bad v1  refused  [signature] owner signature invalid?[2J
last errors (2)
  2026-11-23 15:51:01Z  contract bad: [signature] owner signature invalid
  2026-11-23 15:50:01Z  farm: farm-1 is not in the notary: retrying
";
        let got = render(&sample());
        assert_eq!(got, want, "got:\n{got}");
    }

    #[test]
    fn an_empty_status_renders_and_long_lists_are_cut() {
        let text = render(&NodeStatus::default());
        assert!(text.contains("node      -\n"), "{text}");
        assert!(
            text.contains("farm      (none: not registering)\n"),
            "{text}"
        );
        let s = NodeStatus {
            workloads: (0..20)
                .map(|i| WorkloadLine {
                    contract: format!("c{i}"),
                    name: "w".repeat(200),
                    ..Default::default()
                })
                .collect(),
            ..NodeStatus::default()
        };
        let text = render(&s);
        assert!(text.contains("  ... and 8 more\n"), "{text}");
        assert!(text.lines().all(|l| l.chars().count() <= MAX_WIDTH));
    }

    #[test]
    fn units_and_dates() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(duration(59), "0d 00:00:59");
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00Z");
    }
}
