//! One precondition check for every test that needs the machine: root, programs,
//! devices, files. A test asks for what it needs and gets `true` (run), a panic naming
//! everything missing, or, with `ZOS_SKIP_PRIVILEGED=1`, a counted SKIP line and
//! `false`.

use std::path::{Path, PathBuf};

/// What a test needs; [`Needs::check`] decides.
///
/// ```no_run
/// # fn t() {
/// if !zos_testkit::Needs::root().bin("nft").dev("/dev/fuse").check("my_test") {
///     return;
/// }
/// # }
/// ```
#[derive(Debug, Default, Clone)]
#[must_use = "nothing is checked until .check(test)"]
pub struct Needs {
    missing: Vec<String>,
}

impl Needs {
    /// Nothing yet.
    pub fn none() -> Needs {
        Needs::default()
    }

    /// Effective uid 0.
    pub fn root() -> Needs {
        Needs::none().root_too()
    }

    /// Effective uid 0, added to what is already asked.
    pub fn root_too(self) -> Needs {
        let root = nix::unistd::geteuid().is_root();
        self.that(root, "root")
    }

    /// A program on `PATH` (or at this path when it has a `/`).
    pub fn bin(self, program: &str) -> Needs {
        let found = on_path(program);
        self.that(found, program)
    }

    /// A program on `PATH`, with the Debian package that has it in the message.
    pub fn bin_from(self, program: &str, package: &str) -> Needs {
        let found = on_path(program);
        self.that(found, format!("{program} (apt-get install -y {package})"))
    }

    /// What the namespace world ([`crate::netns::World`]) and the node's networks
    /// use: `ip`, `nft`, `ping` and `/dev/net/tun`.
    pub fn networking(self) -> Needs {
        self.bin_from("ip", "iproute2")
            .bin_from("nft", "nftables")
            .bin_from("ping", "iputils-ping")
            .dev("/dev/net/tun")
    }

    /// A device node (or any file) at `path`.
    pub fn dev(self, path: &str) -> Needs {
        let found = Path::new(path).exists();
        self.that(found, path)
    }

    /// A file at `path`; `what` says how to get it (`the sample VM (cargo xtask flist vm)`).
    pub fn file(self, path: impl AsRef<Path>, what: &str) -> Needs {
        let found = path.as_ref().exists();
        self.that(found, what)
    }

    /// Any other condition, described by `what` when it does not hold.
    pub fn that(mut self, holds: bool, what: impl Into<String>) -> Needs {
        if !holds {
            self.missing.push(what.into());
        }
        self
    }

    /// What is missing, in the order asked (empty: the test can run).
    pub fn missing(&self) -> &[String] {
        &self.missing
    }

    /// `true` when everything is there. Otherwise: with `ZOS_SKIP_PRIVILEGED=1`, one
    /// `SKIP: <test>: needs <what>, <what>` line on the real stderr and `false`;
    /// without it, a panic naming what is missing.
    pub fn check(&self, test: &str) -> bool {
        if self.missing.is_empty() {
            return true;
        }
        skip_or_fail(test, &format!("needs {}", self.missing.join(", ")));
        false
    }

    /// For tests that skip whatever the environment says (the daemons they drive are
    /// optional on a developer's machine): `true`, or the SKIP line and `false`.
    pub fn or_skip(&self, test: &str) -> bool {
        if self.missing.is_empty() {
            return true;
        }
        skip_line(test, &format!("needs {}", self.missing.join(", ")));
        false
    }
}

/// For a test that found it cannot run (`reason`: `needs a cgroup2 mount`): with
/// `ZOS_SKIP_PRIVILEGED=1`, the counted SKIP line; without it, a panic.
pub fn skip_or_fail(test: &str, reason: &str) {
    if std::env::var("ZOS_SKIP_PRIVILEGED").as_deref() == Ok("1") {
        skip_line(test, reason);
    } else {
        panic!("{test}: {reason} (set ZOS_SKIP_PRIVILEGED=1 to skip)");
    }
}

/// One `SKIP: <test>: <reason>` line on the real stderr, the line `cargo xtask test`
/// counts. Not through `eprintln!`: libtest captures that and hides it for a passing
/// test.
pub fn skip_line(test: &str, reason: &str) {
    use std::io::Write;
    let line = format!("SKIP: {test}: {reason}\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// True when `program` is an executable file on `PATH` (or is such a path itself).
fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        return executable(Path::new(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path).any(|d: PathBuf| executable(&d.join(program)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_there_is_not_missing_and_what_is_not_is_named_in_order() {
        let n = Needs::none()
            .bin("sh")
            .dev("/")
            .bin("zt-no-such-program")
            .dev("/zt-no-such-device")
            .that(false, "a custom thing");
        assert_eq!(
            n.missing(),
            ["zt-no-such-program", "/zt-no-such-device", "a custom thing"]
        );
        assert!(Needs::none().bin("sh").check("t"));
    }

    /// Only the branch that runs: the other writes a SKIP line to the real stderr,
    /// which `cargo xtask test` would count as a skipped test.
    #[test]
    fn or_skip_is_true_when_nothing_is_missing() {
        assert!(Needs::none().bin("sh").or_skip("zt_kit_self_test"));
    }
}
