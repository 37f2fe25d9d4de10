//! Boot parameters from the kernel command line (`/proc/cmdline`).
//!
//! | parameter          | meaning                                            |
//! |--------------------|----------------------------------------------------|
//! | `zos.farm=<id>`    | the farm this node registers under                 |
//! | `zos.notary=<url>` | where contracts come from (`dir://`, `etcd://`...) |
//! | `zos.runmode=<m>`  | `dev`, `test` or `prod` (default `prod`)           |
//! | `zos.debug`        | more logs on the console (never a shell)           |
//! | `zos.share=<t>:<p>`| mount the hypervisor's virtio-9p share `t` at `p`  |
//! | `zos.modules=<m>`  | which kernel modules load: `devices` or `all`      |
//!
//! `zos.share` is for nodes under a hypervisor: a QEMU node reads a directory notary or
//! a local flist store from the host at the same path (`cargo xtask demo`). It may be
//! repeated; the path must be absolute, clean, and outside the boot filesystems.
//!
//! Parsing never fails: PID 1 must boot whatever the boot loader says. Every problem is
//! a typed [`CmdlineWarning`] that PID 1 logs, and the parameter falls back to its safe
//! value (`prod`, no farm, no notary, no debug). The last occurrence of a parameter wins,
//! as for the kernel's own parameters; a repeated one is also warned about.
//!
//! Quoting follows the kernel (`next_arg` in lib/cmdline.c): words split on whitespace;
//! double quotes group, and are removed around a whole word (`"zos.notary=a b"`) or around
//! a value (`zos.notary="a b"`). Words after `--` are handed to init as arguments, not
//! kernel parameters; they are read too, so `-- zos.farm=7` works as well.

use std::fmt;

use thiserror::Error;

/// Which kind of network the node serves (`zos.runmode`). Today it is only logged and
/// written as a comment in node.toml: nothing behaves differently by it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunMode {
    /// A developer's node (`dev`).
    Dev,
    /// A test network's node (`test`).
    Test,
    /// A production node (`prod`), also what any missing or invalid value gives.
    #[default]
    Prod,
}

impl RunMode {
    /// The parameter's value for this mode: `dev`, `test` or `prod`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunMode::Dev => "dev",
            RunMode::Test => "test",
            RunMode::Prod => "prod",
        }
    }
}

impl fmt::Display for RunMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which kernel modules the boot loads (`zos.modules`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ModulesMode {
    /// What the present devices ask for (their modaliases) and the features the node
    /// needs, independent ones at once (`devices`).
    Devices,
    /// Every module the image carries, one after the other (`all`): the boot before
    /// coldplug, kept to compare against and as a way out if a device's driver were
    /// missed. The default: on the QEMU node of `cargo xtask bench boot`, `devices`
    /// loads 66 of the image's 84 modules and saves nothing measurable
    /// (docs/benchmarks.md), so the mode that cannot miss a driver stays.
    #[default]
    All,
}

/// What the `zos.*` boot parameters say, each at its safe value when absent or invalid.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootParams {
    /// `zos.farm`: the farm id the node registers under; `None`: it registers nowhere.
    pub farm: Option<String>,
    /// `zos.notary`: the notary URL, unchecked here (the agent parses it); `None`: the
    /// agent has no notary and says so.
    pub notary: Option<String>,
    /// `zos.runmode`.
    pub runmode: RunMode,
    /// `zos.debug`: more logs on the console (never a shell).
    pub debug: bool,
    /// Every valid `zos.share`, in command-line order.
    pub shares: Vec<Share>,
    /// `zos.modules`.
    pub modules: ModulesMode,
}

/// `zos.share=<tag>:<path>`: a virtio-9p share to mount before the agent starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The 9p mount tag QEMU gave the share (at most 31 bytes: letters, digits, `-_.`).
    pub tag: String,
    /// Where to mount it: absolute, clean, outside `/proc`, `/sys`, `/dev`, `/run` and
    /// the node's state directory.
    pub path: String,
}

impl Share {
    /// `<tag>:<path>`, or why not. The tag is what QEMU's `mount_tag` allows (at most
    /// 31 bytes here, plain characters); the path is absolute, without `.`/`..` parts,
    /// and not one of the boot filesystems PID 1 owns.
    pub fn parse(value: &str) -> Option<Share> {
        let (tag, path) = value.split_once(':')?;
        let tag_ok = !tag.is_empty()
            && tag.len() <= 31
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        let parts: Vec<&str> = path.split('/').skip(1).collect();
        let path_ok = path.starts_with('/')
            && !parts.is_empty()
            && parts
                .iter()
                .all(|p| !p.is_empty() && *p != "." && *p != "..")
            && !["proc", "sys", "dev", "run"].contains(&parts[0])
            && path != "/var/lib/zos"
            && !path.starts_with("/var/lib/zos/");
        (tag_ok && path_ok).then(|| Share {
            tag: tag.into(),
            path: path.into(),
        })
    }
}

/// A boot parameter that was ignored or fell back to its default.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CmdlineWarning {
    /// A `zos.` parameter this init does not know (the text is the key).
    #[error("unknown boot parameter {0:?} (known: zos.farm, zos.notary, zos.runmode, zos.debug, zos.share, zos.modules)")]
    UnknownKey(String),
    /// `zos.runmode` with another value (the text); [`RunMode::Prod`] is used.
    #[error("zos.runmode={0:?} is not dev, test or prod: running as prod")]
    InvalidRunMode(String),
    /// A parameter that takes a value was given without one (`zos.notary`: or a blank
    /// one); it is ignored.
    #[error("{key} needs a value ({key}=...): ignored")]
    MissingValue {
        /// The parameter, e.g. `zos.notary`.
        key: &'static str,
    },
    /// `zos.farm` with a value that is not a farm id (the text); no farm is used.
    #[error("zos.farm={0:?} is not a farm id (letters, digits, '-', '_', '.'): ignored")]
    InvalidFarm(String),
    /// `zos.modules` with another value than `devices` or `all` (the text); the
    /// default, [`ModulesMode::All`], is used.
    #[error("zos.modules={0:?} is not devices or all: loading all")]
    InvalidModules(String),
    /// `zos.debug` with a value other than `1`/`true`/`yes`/`on` or
    /// `0`/`false`/`no`/`off` (the text); it is ignored.
    #[error("zos.debug={0:?}: use zos.debug, or zos.debug=0/1: ignored")]
    InvalidDebug(String),
    /// The parameter appeared more than once; the last occurrence was taken.
    #[error("{0} given more than once: the last one wins")]
    Repeated(&'static str),
    /// A `zos.share` value [`Share::parse`] refused (the text); that share is skipped.
    #[error("zos.share={0:?} is not <tag>:<absolute path> outside /proc, /sys, /dev, /run and the node state: ignored")]
    InvalidShare(String),
    /// A double quote is never closed; the rest of the line is read as one word.
    #[error("unbalanced double quote on the kernel command line")]
    UnbalancedQuote,
}

/// Splits a command line into `(param, value)` pairs the way the kernel does; the flag
/// is true when a double quote was left open.
pub fn split_kernel_args(line: &str) -> (Vec<(String, Option<String>)>, bool) {
    let mut out = Vec::new();
    let mut unbalanced = false;
    let mut rest = line.trim_start();
    while !rest.is_empty() {
        // Find the end of the word: whitespace outside quotes.
        let mut in_quote = false;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            if c == '"' {
                in_quote = !in_quote;
            } else if c.is_whitespace() && !in_quote {
                end = i;
                break;
            }
        }
        unbalanced |= in_quote;
        let mut word = &rest[..end];
        rest = rest[end..].trim_start();

        // A quote opening the word opens the whole word; its closing quote is dropped.
        let whole_quoted = word.starts_with('"');
        if whole_quoted {
            word = &word[1..];
            word = word.strip_suffix('"').unwrap_or(word);
        }
        let pair = match word.split_once('=') {
            None => (word.to_string(), None),
            Some((k, v)) => {
                // A quote opening the value is dropped with its closing one.
                let v = match v.strip_prefix('"') {
                    Some(inner) => inner.strip_suffix('"').unwrap_or(inner),
                    None => v,
                };
                (k.to_string(), Some(v.to_string()))
            }
        };
        out.push(pair);
    }
    (out, unbalanced)
}

impl BootParams {
    /// Reads the zos parameters out of `/proc/cmdline` text; other parameters (the
    /// kernel's own, `console=`, `root=`...) are not ours and are passed over silently.
    pub fn parse(line: &str) -> (BootParams, Vec<CmdlineWarning>) {
        let (args, unbalanced) = split_kernel_args(line);
        let mut p = BootParams::default();
        let mut warnings = Vec::new();
        if unbalanced {
            warnings.push(CmdlineWarning::UnbalancedQuote);
        }
        let mut seen: Vec<&'static str> = Vec::new();
        let mut note = |key: &'static str, warnings: &mut Vec<CmdlineWarning>| {
            if seen.contains(&key) {
                warnings.push(CmdlineWarning::Repeated(key));
            }
            seen.push(key);
        };
        for (key, value) in args {
            if key == "--" || !key.starts_with("zos.") {
                continue;
            }
            match (key.as_str(), value) {
                ("zos.farm", Some(v)) if is_farm_id(&v) => {
                    note("zos.farm", &mut warnings);
                    p.farm = Some(v);
                }
                ("zos.farm", Some(v)) => warnings.push(CmdlineWarning::InvalidFarm(v)),
                ("zos.notary", Some(v)) if !v.trim().is_empty() => {
                    note("zos.notary", &mut warnings);
                    p.notary = Some(v);
                }
                ("zos.runmode", Some(v)) => {
                    note("zos.runmode", &mut warnings);
                    p.runmode = match v.as_str() {
                        "dev" => RunMode::Dev,
                        "test" => RunMode::Test,
                        "prod" => RunMode::Prod,
                        _ => {
                            warnings.push(CmdlineWarning::InvalidRunMode(v));
                            RunMode::Prod
                        }
                    };
                }
                ("zos.debug", None) => {
                    note("zos.debug", &mut warnings);
                    p.debug = true;
                }
                ("zos.debug", Some(v)) => match v.as_str() {
                    "1" | "true" | "yes" | "on" => {
                        note("zos.debug", &mut warnings);
                        p.debug = true;
                    }
                    "0" | "false" | "no" | "off" => {
                        note("zos.debug", &mut warnings);
                        p.debug = false;
                    }
                    _ => warnings.push(CmdlineWarning::InvalidDebug(v)),
                },
                ("zos.share", Some(v)) => match Share::parse(&v) {
                    Some(share) => p.shares.push(share),
                    None => warnings.push(CmdlineWarning::InvalidShare(v)),
                },
                ("zos.modules", Some(v)) => {
                    note("zos.modules", &mut warnings);
                    p.modules = match v.as_str() {
                        "devices" => ModulesMode::Devices,
                        "all" => ModulesMode::All,
                        _ => {
                            warnings.push(CmdlineWarning::InvalidModules(v));
                            ModulesMode::All
                        }
                    };
                }
                ("zos.modules", None) => {
                    warnings.push(CmdlineWarning::MissingValue { key: "zos.modules" })
                }
                ("zos.share", None) => {
                    warnings.push(CmdlineWarning::MissingValue { key: "zos.share" })
                }
                ("zos.farm", None) => {
                    warnings.push(CmdlineWarning::MissingValue { key: "zos.farm" })
                }
                ("zos.notary", _) => {
                    warnings.push(CmdlineWarning::MissingValue { key: "zos.notary" })
                }
                ("zos.runmode", None) => {
                    warnings.push(CmdlineWarning::MissingValue { key: "zos.runmode" })
                }
                _ => warnings.push(CmdlineWarning::UnknownKey(key)),
            }
        }
        (p, warnings)
    }
}

/// A farm id names a notary key (`farms/<id>`): no '/', no spaces, nothing exotic.
fn is_farm_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s != "."
        && s != ".."
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typical_line() {
        let line = "BOOT_IMAGE=/vmlinuz console=ttyS0 zos.farm=42 zos.notary=etcd://10.0.2.2:2379 zos.runmode=test zos.debug quiet\n";
        let (p, w) = BootParams::parse(line);
        assert_eq!(w, vec![]);
        assert_eq!(
            p,
            BootParams {
                farm: Some("42".into()),
                notary: Some("etcd://10.0.2.2:2379".into()),
                runmode: RunMode::Test,
                debug: true,
                shares: vec![],
                modules: ModulesMode::All,
            }
        );
    }

    #[test]
    fn the_modules_mode_is_devices_or_all_and_the_last_one_wins() {
        assert_eq!(BootParams::parse("quiet").0.modules, ModulesMode::All);
        let (p, w) = BootParams::parse("zos.modules=devices");
        assert_eq!((p.modules, w), (ModulesMode::Devices, vec![]));
        let (p, w) = BootParams::parse("zos.modules=devices zos.modules=all");
        assert_eq!(p.modules, ModulesMode::All);
        assert_eq!(w, vec![CmdlineWarning::Repeated("zos.modules")]);
        let (p, w) = BootParams::parse("zos.modules=devices zos.modules=some");
        assert_eq!(p.modules, ModulesMode::All);
        assert_eq!(
            w,
            vec![
                CmdlineWarning::Repeated("zos.modules"),
                CmdlineWarning::InvalidModules("some".into())
            ]
        );
        let (p, w) = BootParams::parse("zos.modulesx=devices");
        assert_eq!(p.modules, ModulesMode::All);
        assert_eq!(w, vec![CmdlineWarning::UnknownKey("zos.modulesx".into())]);
    }

    #[test]
    fn shares_are_tag_and_clean_absolute_path() {
        let (p, w) = BootParams::parse("zos.share=zos:/srv/demo zos.share=store-1:/tmp/x/store");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            p.shares,
            vec![
                Share {
                    tag: "zos".into(),
                    path: "/srv/demo".into()
                },
                Share {
                    tag: "store-1".into(),
                    path: "/tmp/x/store".into()
                },
            ]
        );
        for bad in [
            "zos",
            ":/srv",
            "zos:srv",
            "zos:/",
            "zos:/srv/../etc",
            "zos:/srv//x",
            "zos:/proc/x",
            "zos:/dev",
            "zos:/run/zos",
            "zos:/var/lib/zos",
            "zos:/var/lib/zos/pools",
            "a tag:/srv",
            "abcdefghijklmnopqrstuvwxyz0123456:/srv",
        ] {
            let (p, w) = BootParams::parse(&format!("\"zos.share={bad}\""));
            assert!(p.shares.is_empty(), "{bad}");
            assert_eq!(w, vec![CmdlineWarning::InvalidShare(bad.into())], "{bad}");
        }
        let (_, w) = BootParams::parse("zos.share");
        assert_eq!(w, vec![CmdlineWarning::MissingValue { key: "zos.share" }]);
    }

    #[test]
    fn defaults_are_the_safe_ones() {
        let (p, w) = BootParams::parse("console=ttyS0");
        assert!(w.is_empty());
        assert_eq!(p, BootParams::default());
        assert_eq!(p.runmode, RunMode::Prod);
        assert!(!p.debug);
    }

    #[test]
    fn quoting_as_the_kernel_does() {
        let (args, unbalanced) = split_kernel_args(r#"a="b c" "d=e f" g=h"i j" "k" l= m"#);
        assert!(!unbalanced);
        let args: Vec<(&str, Option<&str>)> = args
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        assert_eq!(
            args,
            vec![
                ("a", Some("b c")),
                ("d", Some("e f")),
                // A quote in the middle of a value groups but stays, as in the kernel.
                ("g", Some(r#"h"i j""#)),
                ("k", None),
                ("l", Some("")),
                ("m", None),
            ]
        );
        let (p, _) = BootParams::parse(r#"zos.notary="dir:///mnt/my notary""#);
        assert_eq!(p.notary.as_deref(), Some("dir:///mnt/my notary"));
        let (p, _) = BootParams::parse(r#""zos.notary=dir:///a b""#);
        assert_eq!(p.notary.as_deref(), Some("dir:///a b"));
    }

    #[test]
    fn problems_are_typed_warnings_with_safe_fallbacks() {
        let (p, w) = BootParams::parse(
            "zos.runmode=staging zos.farm=../x zos.notary= zos.debug=maybe zos.color=red zos.farm",
        );
        assert_eq!(p, BootParams::default());
        assert_eq!(
            w,
            vec![
                CmdlineWarning::InvalidRunMode("staging".into()),
                CmdlineWarning::InvalidFarm("../x".into()),
                CmdlineWarning::MissingValue { key: "zos.notary" },
                CmdlineWarning::InvalidDebug("maybe".into()),
                CmdlineWarning::UnknownKey("zos.color".into()),
                CmdlineWarning::MissingValue { key: "zos.farm" },
            ]
        );
    }

    #[test]
    fn the_last_one_wins_and_is_warned_about() {
        let (p, w) = BootParams::parse("zos.farm=1 zos.debug zos.farm=2 zos.debug=0");
        assert_eq!(p.farm.as_deref(), Some("2"));
        assert!(!p.debug);
        assert_eq!(
            w,
            vec![
                CmdlineWarning::Repeated("zos.farm"),
                CmdlineWarning::Repeated("zos.debug")
            ]
        );
    }

    #[test]
    fn after_double_dash_and_unbalanced_quotes() {
        let (p, w) = BootParams::parse("quiet -- zos.farm=7 zos.notary=\"dir:///x");
        assert_eq!(p.farm.as_deref(), Some("7"));
        assert_eq!(p.notary.as_deref(), Some("dir:///x"));
        assert_eq!(w, vec![CmdlineWarning::UnbalancedQuote]);
    }

    #[test]
    fn splitting_never_panics_on_odd_input() {
        for line in [
            "",
            " ",
            "\"",
            "\"\"",
            "=",
            "\"=\"",
            "a=\"",
            "é=\"ü ß\" ",
            "\t\n",
        ] {
            let _ = BootParams::parse(line);
        }
    }
}
