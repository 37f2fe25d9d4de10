//! Which modules the present devices ask for, as udev's coldplug finds them: every
//! device in sysfs names itself by a `modalias` (`virtio:d00000001v00001AF4`,
//! `pci:v00008086d0000100Esv...`, `acpi:LNXPWRBN:`), and `modules.alias` maps glob
//! patterns of those to the modules that drive them (`alias virtio:d00000001v* virtio_net`).
//!
//! The patterns are fnmatch globs: `*`, `?`, `[...]` (with ranges and `!`/`^`
//! negation), no escapes (kmod matches them the same way).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use crate::modules::module_name;

/// Whether `text` matches the glob `pattern` (`*`, `?`, `[...]`, see the module docs).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0, 0);
    // Where to resume after the last `*`: its pattern position and the text position
    // it has swallowed up to. One `*` to backtrack to is enough for globs (a later `*`
    // supersedes an earlier one), which keeps this linear-ish, never exponential.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match p.get(pi) {
            Some(b'*') => {
                star = Some((pi + 1, ti));
                pi += 1;
                continue;
            }
            Some(b'?') => Some(pi + 1),
            Some(b'[') => match bracket(p, pi, t[ti]) {
                Some((true, next)) => Some(next),
                Some((false, _)) => None,
                // An unclosed `[` is a literal character.
                None => (t[ti] == b'[').then_some(pi + 1),
            },
            Some(&c) => (c == t[ti]).then_some(pi + 1),
            None => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ti += 1;
            }
            (None, Some((after_star, swallowed))) => {
                pi = after_star;
                ti = swallowed + 1;
                star = Some((after_star, swallowed + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The bracket expression at `p[open]` (`[`) against `c`: whether it matches and the
/// pattern position after its `]`; `None` when it is not closed.
fn bracket(p: &[u8], open: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = open + 1;
    let negated = matches!(p.get(i), Some(b'!' | b'^'));
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        // A `]` first in the set is a member, not the end.
        if lo == b']' && !first {
            return Some((matched != negated, i + 1));
        }
        first = false;
        match (p.get(i + 1), p.get(i + 2)) {
            (Some(b'-'), Some(&hi)) if hi != b']' => {
                matched |= (lo..=hi).contains(&c);
                i += 3;
            }
            _ => {
                matched |= lo == c;
                i += 1;
            }
        }
    }
}

/// `modules.alias`, grouped by the bus before the first `:` (so a `pci:` device is
/// matched against the pci patterns only); patterns whose bus part has a wildcard
/// (`acpi*:LNRO0005:*`) are tried for every device.
#[derive(Debug, Default)]
pub struct AliasTable {
    by_bus: HashMap<String, Vec<(String, String)>>,
    any_bus: Vec<(String, String)>,
}

impl AliasTable {
    /// Parses `alias <pattern> <module>` lines; anything else is skipped.
    pub fn parse(modules_alias: &str) -> AliasTable {
        let mut table = AliasTable::default();
        for line in modules_alias.lines() {
            let mut f = line.split_whitespace();
            let (Some("alias"), Some(pattern), Some(module)) = (f.next(), f.next(), f.next())
            else {
                continue;
            };
            let entry = (pattern.to_string(), module_name(module));
            match literal_bus(pattern) {
                Some(bus) => table.by_bus.entry(bus.to_string()).or_default().push(entry),
                None => table.any_bus.push(entry),
            }
        }
        table
    }

    /// The modules (kernel names) whose aliases match `modalias`.
    pub fn modules_for<'a>(&'a self, modalias: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        let bus = modalias.split(':').next().unwrap_or_default();
        self.by_bus
            .get(bus)
            .into_iter()
            .flatten()
            .chain(&self.any_bus)
            .filter(move |(pattern, _)| glob_match(pattern, modalias))
            .map(|(_, module)| module.as_str())
    }
}

/// `pci` of `pci:v00008086d*`; `None` when the part before `:` has a wildcard or there
/// is no `:` (the pattern could match any bus).
fn literal_bus(pattern: &str) -> Option<&str> {
    let (bus, _) = pattern.split_once(':')?;
    (!bus.contains(['*', '?', '['])).then_some(bus)
}

/// Every device's modalias under `devices` (`/sys/devices`): its `modalias` files,
/// found without following symbolic links (sysfs links `subsystem`, `driver` and
/// `device` back up the tree). Unreadable directories and files are skipped: a device
/// that goes away while it is read is no error.
pub fn modaliases(devices: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut dirs = vec![devices.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() && entry.file_name() == "modalias" {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    let alias = text.trim();
                    if !alias.is_empty() {
                        found.insert(alias.to_string());
                    }
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_and_question_marks() {
        assert!(glob_match(
            "virtio:d00000001v*",
            "virtio:d00000001v00001AF4"
        ));
        assert!(!glob_match(
            "virtio:d00000001v*",
            "virtio:d00000002v00001AF4"
        ));
        assert!(glob_match(
            "pci:v00008086d0000100Esv*sd*bc*sc*i*",
            "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00"
        ));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
        assert!(glob_match("**a**", "xxa"));
        assert!(!glob_match("", "a"));
        assert!(glob_match("", ""));
        // A star that must give back what it took: the last `b` ends the pattern.
        assert!(glob_match("*b", "abab"));
        assert!(!glob_match("*b", "abba_"));
        assert!(glob_match("a*b*c", "a_b_b_c"));
        assert!(!glob_match("a*b*c", "a_c_b"));
        assert!(glob_match("acpi*:LNRO0005:*", "acpi:LNRO0005:"));
        assert!(glob_match("acpi*:LNRO0005:*", "acpi:LNRO0005:PNP0C0D:"));
        assert!(!glob_match("acpi*:LNRO0005:*", "acpi:LNXPWRBN:"));
    }

    #[test]
    fn brackets_sets_ranges_and_negation() {
        assert!(glob_match(
            "cpu:type:x86,ven*fam*mod*:feature:*0094*",
            "cpu:type:x86,ven0000fam0006mod003F:feature:,0000,0001,0094,00C0"
        ));
        assert!(glob_match("usb:v*p*d*dc[0-9]*", "usb:v1d6bp0002d0515dc09"));
        assert!(!glob_match("usb:v*p*d*dc[0-8]*", "usb:v1d6bp0002d0515dc9"));
        assert!(glob_match("x[abc]y", "xby"));
        assert!(!glob_match("x[abc]y", "xdy"));
        assert!(glob_match("x[!abc]y", "xdy"));
        assert!(glob_match("x[^abc]y", "xdy"));
        assert!(!glob_match("x[!abc]y", "xay"));
        assert!(glob_match("x[]]y", "x]y"));
        assert!(glob_match("x[a-]y", "x-y"));
        // Not closed: a literal `[`.
        assert!(glob_match("x[y", "x[y"));
        assert!(!glob_match("x[y", "xay"));
    }

    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias virtio:d00000001v* virtio_net
alias virtio:d00000002v* virtio_blk
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias acpi*:LNRO0005:* virtio_mmio
alias fs-btrfs btrfs
alias input:b*v*p*e*-e*k*r*a*m*l*s*f*w* evdev
";

    #[test]
    fn devices_ask_for_modules_by_bus_and_across_buses() {
        let table = AliasTable::parse(ALIAS);
        let modules = |alias| table.modules_for(alias).collect::<Vec<_>>();
        assert_eq!(modules("virtio:d00000001v00001AF4"), ["virtio_net"]);
        assert_eq!(
            modules("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"),
            ["virtio_pci"]
        );
        assert_eq!(modules("acpi:LNRO0005:"), ["virtio_mmio"]);
        assert_eq!(
            modules("input:b0019v0000p0001e0000-e0,1,k74,ramlsfw"),
            ["evdev"]
        );
        assert!(modules("platform:serial8250").is_empty());
    }

    #[test]
    fn modaliases_are_read_without_following_links() {
        let root = tempfile::tempdir().unwrap();
        let devices = root.path().join("devices");
        let dev = devices.join("platform/LNRO0005:00");
        std::fs::create_dir_all(dev.join("virtio0")).unwrap();
        std::fs::write(dev.join("modalias"), "acpi:LNRO0005:\n").unwrap();
        std::fs::write(dev.join("virtio0/modalias"), "virtio:d00000001v00001AF4\n").unwrap();
        // An empty modalias names nothing; a link back up the tree is not walked.
        std::fs::write(devices.join("platform/modalias"), "\n").unwrap();
        std::os::unix::fs::symlink(&devices, dev.join("virtio0/subsystem")).unwrap();
        let found: Vec<_> = modaliases(&devices).into_iter().collect();
        assert_eq!(found, ["acpi:LNRO0005:", "virtio:d00000001v00001AF4"]);
    }
}
