//! Loading the kernel modules the boot image carries, without modprobe.
//!
//! `depmod -b` writes `/lib/modules/<release>/modules.dep`: one line per module,
//! `path: dep-path dep-path...`, paths relative to that directory. Each module is loaded
//! after its dependencies (a depth-first order over that graph), with `finit_module`.
//! A module that is already loaded (`EEXIST`) or built into the kernel
//! (`modules.builtin`) counts as present.
//!
//! Compressed modules (`.ko.xz`, `.ko.zst`, `.ko.gz`) are handed to the kernel with
//! `MODULE_INIT_COMPRESSED_FILE` (Linux 6.4+, built with `CONFIG_MODULE_DECOMPRESS` and
//! that algorithm); a kernel that cannot decompress gives
//! [`ModulesError::CompressedUnsupported`]: ship the image's modules uncompressed then.
//!
//! A broken entry (a cycle, a dependency missing from the image) fails the modules that
//! need it, with a typed error, and nothing else: the rest still load.
//!
//! Soft dependencies (`modules.softdep`, `softdep btrfs pre: crypto-crc32c`) are what
//! modprobe loads first without the module linking against them: mostly the crypto
//! algorithms a module asks the kernel for at init, which the kernel would otherwise
//! request through modprobe, which the image does not have. Their names are resolved
//! through `modules.alias` (exact aliases only). They are best effort: one that fails
//! does not fail the module, and one that does not apply to this machine (`ENODEV`,
//! e.g. `crc32c_intel` on a CPU without SSE 4.2) is listed as such, not as a failure.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use thiserror::Error;

use crate::sys::Sys;

/// Why modules.dep could not be used, or why one module was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ModulesError {
    /// `modules.dep` could not be read: nothing is loaded.
    #[error("reading {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error's text.
        message: String,
    },
    /// A `modules.dep` line is not `path.ko...: deps`: nothing is loaded.
    #[error("modules.dep line {line}: {text:?} is not `path.ko: deps...`")]
    Malformed {
        /// The line's number, from 1.
        line: usize,
        /// The line.
        text: String,
    },
    /// A wanted module the image does not carry and the kernel does not build in.
    #[error("module {0} is neither in modules.dep nor built in")]
    Unknown(String),
    /// A module needs one that is not in modules.dep: it is not loaded.
    #[error("module {module} depends on {dependency}, which is not in modules.dep")]
    MissingDependency {
        /// The module not loaded.
        module: String,
        /// What it needs.
        dependency: String,
    },
    /// The dependencies loop (the names along the loop, first repeated last): the
    /// modules on it are not loaded.
    #[error("module dependency cycle: {}", .0.join(" -> "))]
    Cycle(Vec<String>),
    /// A dependency failed to load, or does not apply to this machine, so the module
    /// was not tried.
    #[error("module {module} not loaded: its dependency {dependency} failed")]
    DependencyFailed {
        /// The module not loaded.
        module: String,
        /// The dependency that failed.
        dependency: String,
    },
    /// The kernel cannot take this compressed module (EINVAL: before Linux 6.4;
    /// EOPNOTSUPP: no `CONFIG_MODULE_DECOMPRESS` for its algorithm).
    #[error(
        "module {module} ({path}) is compressed and this kernel cannot decompress it ({errno})"
    )]
    CompressedUnsupported {
        /// The module.
        module: String,
        /// Its file.
        path: PathBuf,
        /// What `finit_module` returned.
        errno: Errno,
    },
    /// `finit_module` failed.
    #[error("loading module {module} ({path}): {errno}")]
    Load {
        /// The module.
        module: String,
        /// Its file.
        path: PathBuf,
        /// What `finit_module` returned.
        errno: Errno,
    },
}

/// One module of the image, as modules.dep (and modules.softdep) describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The kernel's name: file name without `.ko*`, `-` as `_`.
    pub name: String,
    /// Relative to the modules directory.
    pub path: PathBuf,
    /// Names of the modules it needs.
    pub deps: Vec<String>,
    /// Names of the modules to load before it if possible (`softdep ... pre:`).
    pub soft_pre: Vec<String>,
}

impl Module {
    /// Whether its file is compressed (anything after `.ko`: `.ko.xz`, `.ko.zst`, ...),
    /// which `finit_module` must be told.
    pub fn is_compressed(&self) -> bool {
        !self.path.to_string_lossy().ends_with(".ko")
    }
}

/// Which modules to load.
#[derive(Debug, Clone, Copy)]
pub enum Wanted<'a> {
    /// Every module in modules.dep (an image carries only what its node needs).
    All,
    /// These modules (file or kernel names) and what they need.
    Names(&'a [&'a str]),
}

/// The parsed `modules.dep` (and `modules.builtin`).
#[derive(Debug, Clone, Default)]
pub struct ModulesDep {
    /// The image's modules, by kernel name.
    pub modules: BTreeMap<String, Module>,
    /// The kernel names of the modules built into the kernel (never loaded, always
    /// present).
    pub builtin: HashSet<String>,
}

/// `virtio-net`, `kernel/drivers/net/virtio_net.ko.xz` -> `virtio_net`.
pub fn module_name(path_or_name: &str) -> String {
    let file = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let stem = match file.find(".ko") {
        Some(i) => &file[..i],
        None => file,
    };
    stem.replace('-', "_")
}

impl ModulesDep {
    /// Parses `modules.dep` and `modules.builtin` (either may be empty); a malformed
    /// modules.dep line fails it all.
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Result<ModulesDep, ModulesError> {
        let mut modules = BTreeMap::new();
        for (i, line) in modules_dep.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = || ModulesError::Malformed {
                line: i + 1,
                text: line.to_string(),
            };
            let (path, deps) = line.split_once(':').ok_or_else(malformed)?;
            if !path.contains(".ko") || path.contains(char::is_whitespace) {
                return Err(malformed());
            }
            let m = Module {
                name: module_name(path),
                path: PathBuf::from(path),
                deps: deps.split_whitespace().map(module_name).collect(),
                soft_pre: Vec::new(),
            };
            modules.insert(m.name.clone(), m);
        }
        let builtin = modules_builtin
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(module_name)
            .collect();
        Ok(ModulesDep { modules, builtin })
    }

    /// Adds the `pre:` soft dependencies of `modules.softdep`, resolving names through
    /// `modules.alias`; names that resolve to no module in modules.dep (built in, or
    /// not in the image) are dropped: they are soft.
    pub fn add_softdeps(&mut self, modules_softdep: &str, modules_alias: &str) {
        let mut aliases: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for line in modules_alias.lines() {
            let mut f = line.split_whitespace();
            if let (Some("alias"), Some(pattern), Some(module)) = (f.next(), f.next(), f.next()) {
                if !pattern.contains(['*', '?', '[']) {
                    aliases
                        .entry(pattern)
                        .or_default()
                        .push(module_name(module));
                }
            }
        }
        for line in modules_softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(module) = words.next().map(module_name) else {
                continue;
            };
            let mut pre = Vec::new();
            let mut in_pre = false;
            for w in words {
                match w {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    name if in_pre => pre.push(name),
                    _ => {}
                }
            }
            let resolved: Vec<String> = pre
                .into_iter()
                .flat_map(|n| match aliases.get(n) {
                    Some(ms) => ms.clone(),
                    None => vec![module_name(n)],
                })
                .filter(|n| *n != module && self.modules.contains_key(n))
                .collect();
            if let Some(m) = self.modules.get_mut(&module) {
                for r in resolved {
                    if !m.soft_pre.contains(&r) {
                        m.soft_pre.push(r);
                    }
                }
            }
        }
    }

    /// The modules to load for `wanted`, dependencies first, each once; and a typed
    /// error for each wanted module that cannot be ordered (its good dependencies stay
    /// in the order).
    pub fn load_order(&self, wanted: Wanted<'_>) -> (Vec<&Module>, Vec<ModulesError>) {
        let roots: Vec<String> = match wanted {
            Wanted::All => self.modules.keys().cloned().collect(),
            Wanted::Names(names) => names.iter().map(|n| module_name(n)).collect(),
        };
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        let mut errors = Vec::new();
        for root in roots {
            if !self.modules.contains_key(&root) {
                if !self.builtin.contains(&root) {
                    errors.push(ModulesError::Unknown(root));
                }
                continue;
            }
            let mut stack = Vec::new();
            if let Err(e) = self.visit(&root, &mut stack, &mut done, &mut order) {
                errors.push(e);
            }
        }
        (order, errors)
    }

    /// Depth-first: a module goes into `order` only after all of its dependencies did.
    fn visit<'a>(
        &'a self,
        name: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        order: &mut Vec<&'a Module>,
    ) -> Result<(), ModulesError> {
        if done.contains(name) {
            return Ok(());
        }
        if let Some(pos) = stack.iter().position(|s| s == name) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(name.to_string());
            return Err(ModulesError::Cycle(cycle));
        }
        let m = &self.modules[name];
        stack.push(name.to_string());
        for soft in &m.soft_pre {
            // Best effort: a soft dependency that cannot be ordered is left out.
            let mut soft_stack = stack.clone();
            let _ = self.visit(soft, &mut soft_stack, done, order);
        }
        for dep in &m.deps {
            if !self.modules.contains_key(dep) {
                return Err(ModulesError::MissingDependency {
                    module: name.to_string(),
                    dependency: dep.clone(),
                });
            }
            self.visit(dep, stack, done, order)?;
        }
        stack.pop();
        done.insert(name.to_string());
        order.push(m);
        Ok(())
    }
}

/// What [`load`] did, module by module (kernel names, in load order).
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Loaded now.
    pub loaded: Vec<String>,
    /// Already loaded (EEXIST) before we came.
    pub present: Vec<String>,
    /// Modules whose init said this machine has nothing for them (ENODEV).
    pub not_applicable: Vec<String>,
    /// Every module that could not be ordered or loaded, with why (a failed soft
    /// dependency is listed here too, without failing the module that wanted it).
    pub failed: Vec<ModulesError>,
}

/// `/lib/modules/<uname -r>`.
pub fn kernel_modules_dir() -> PathBuf {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    Path::new("/lib/modules").join(release)
}

/// Loads `wanted` from `dir` (see [`kernel_modules_dir`]). Fails as a whole only when
/// modules.dep cannot be read or parsed; per-module failures are in the report.
pub fn load(sys: &dyn Sys, dir: &Path, wanted: Wanted<'_>) -> Result<LoadReport, ModulesError> {
    let dep_path = dir.join("modules.dep");
    let text = sys.read_file(&dep_path).map_err(|e| ModulesError::Read {
        path: dep_path.clone(),
        message: e.to_string(),
    })?;
    // The others are optional: older or hand-made trees lack them.
    let optional = |name: &str| sys.read_file(&dir.join(name)).unwrap_or_default();
    let mut dep = ModulesDep::parse(&text, &optional("modules.builtin"))?;
    dep.add_softdeps(&optional("modules.softdep"), &optional("modules.alias"));
    let (order, mut failed) = dep.load_order(wanted);

    let mut report = LoadReport::default();
    let mut bad: HashSet<&str> = HashSet::new();
    for m in order {
        if let Some(d) = m.deps.iter().find(|d| bad.contains(d.as_str())) {
            failed.push(ModulesError::DependencyFailed {
                module: m.name.clone(),
                dependency: d.clone(),
            });
            bad.insert(&m.name);
            continue;
        }
        let path = dir.join(&m.path);
        match sys.finit_module(&path, m.is_compressed()) {
            Ok(()) => {
                tracing::info!(module = %m.name, "module loaded");
                report.loaded.push(m.name.clone());
            }
            Err(Errno::EEXIST) => report.present.push(m.name.clone()),
            Err(Errno::ENODEV) => {
                // Not an error for the node, but what needs it cannot load.
                tracing::info!(module = %m.name, "module does not apply to this machine");
                bad.insert(&m.name);
                report.not_applicable.push(m.name.clone());
            }
            // EINVAL: a kernel before 6.4 (unknown flag); EOPNOTSUPP: built without
            // CONFIG_MODULE_DECOMPRESS or without this algorithm.
            Err(errno @ (Errno::EINVAL | Errno::EOPNOTSUPP)) if m.is_compressed() => {
                bad.insert(&m.name);
                failed.push(ModulesError::CompressedUnsupported {
                    module: m.name.clone(),
                    path,
                    errno,
                });
            }
            Err(errno) => {
                bad.insert(&m.name);
                failed.push(ModulesError::Load {
                    module: m.name.clone(),
                    path,
                    errno,
                });
            }
        }
    }
    for e in &failed {
        tracing::warn!(error = %e, "kernel module");
    }
    report.failed = failed;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeSys;

    const DEP: &str = include_str!("../tests/fixtures/modules.dep");
    const BUILTIN: &str = include_str!("../tests/fixtures/modules.builtin");

    fn names(order: &[&Module]) -> Vec<String> {
        order.iter().map(|m| m.name.clone()).collect()
    }

    fn before(order: &[String], a: &str, b: &str) -> bool {
        let pos = |n| {
            order
                .iter()
                .position(|x| x == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        pos(a) < pos(b)
    }

    #[test]
    fn names_from_paths() {
        assert_eq!(
            module_name("kernel/drivers/net/virtio_net.ko.xz"),
            "virtio_net"
        );
        assert_eq!(module_name("kernel/fs/9p/9p.ko"), "9p");
        assert_eq!(module_name("9pnet-virtio"), "9pnet_virtio");
    }

    #[test]
    fn dependencies_come_first_and_once() {
        let dep = ModulesDep::parse(DEP, BUILTIN).unwrap();
        let wanted = [
            "virtio_net",
            "virtio_blk",
            "btrfs",
            "overlay",
            "fuse",
            "9p",
            "9pnet_virtio",
        ];
        let (order, errors) = dep.load_order(Wanted::Names(&wanted));
        assert_eq!(errors, vec![]);
        let order = names(&order);
        assert!(before(&order, "net_failover", "virtio_net"), "{order:?}");
        assert!(before(&order, "failover", "net_failover"), "{order:?}");
        assert!(before(&order, "raid6_pq", "btrfs"), "{order:?}");
        assert!(before(&order, "xor", "btrfs"), "{order:?}");
        assert!(before(&order, "netfs", "9p"), "{order:?}");
        assert!(before(&order, "9pnet", "9p"), "{order:?}");
        assert!(before(&order, "9pnet", "9pnet_virtio"), "{order:?}");
        let unique: BTreeSet<_> = order.iter().collect();
        assert_eq!(unique.len(), order.len(), "{order:?}");
        // virtio_blk is built into this kernel: nothing to load, no error.
        assert!(!order.contains(&"virtio_blk".to_string()));
    }

    #[test]
    fn all_means_every_entry() {
        let dep = ModulesDep::parse(DEP, BUILTIN).unwrap();
        let (order, errors) = dep.load_order(Wanted::All);
        assert_eq!(errors, vec![]);
        assert_eq!(order.len(), dep.modules.len());
    }

    #[test]
    fn cycles_and_missing_dependencies_are_typed_errors_and_spare_the_rest() {
        let dep =
            ModulesDep::parse(include_str!("../tests/fixtures/modules.dep.broken"), "").unwrap();
        let (order, errors) = dep.load_order(Wanted::Names(&[
            "a",
            "lonely",
            "needs_ghost",
            "fine",
            "nope",
        ]));
        assert_eq!(
            errors,
            vec![
                ModulesError::Cycle(vec!["a".into(), "b".into(), "c".into(), "a".into()]),
                ModulesError::MissingDependency {
                    module: "needs_ghost".into(),
                    dependency: "ghost".into()
                },
                ModulesError::Unknown("nope".into()),
            ]
        );
        assert_eq!(names(&order), vec!["lonely", "base", "fine"]);
    }

    #[test]
    fn malformed_lines_are_refused() {
        let err = ModulesDep::parse("kernel/a.ko: b.ko\nnot a module line\n", "").unwrap_err();
        assert_eq!(
            err,
            ModulesError::Malformed {
                line: 2,
                text: "not a module line".into()
            }
        );
    }

    #[test]
    fn loading_reports_present_compressed_and_dependents_of_failures() {
        let sys = FakeSys::default();
        let dir = Path::new("/lib/modules/6.1.0-test");
        sys.set_file("/lib/modules/6.1.0-test/modules.dep", DEP);
        // overlay is loaded already; the kernel cannot decompress xz; failover is broken.
        sys.fail_module("overlay", Errno::EEXIST);
        sys.fail_module("raid6_pq", Errno::EOPNOTSUPP);
        sys.fail_module("failover", Errno::ENOEXEC);
        let report = load(
            &sys,
            dir,
            Wanted::Names(&["overlay", "btrfs", "virtio_net", "fuse"]),
        )
        .unwrap();
        assert_eq!(report.present, vec!["overlay"]);
        assert!(report.loaded.contains(&"fuse".to_string()));
        assert!(report.loaded.contains(&"xor".to_string()));
        assert!(report.failed.iter().any(|e| matches!(e,
            ModulesError::CompressedUnsupported { module, errno: Errno::EOPNOTSUPP, .. } if module == "raid6_pq")));
        assert!(report.failed.iter().any(|e| matches!(e,
            ModulesError::DependencyFailed { module, dependency } if module == "btrfs" && dependency == "raid6_pq")));
        assert!(report.failed.iter().any(|e| matches!(e,
            ModulesError::Load { module, errno: Errno::ENOEXEC, .. } if module == "failover")));
        assert!(report.failed.iter().any(|e| matches!(e,
            ModulesError::DependencyFailed { module, .. } if module == "virtio_net")));
        // The compressed flag is passed for .ko.xz and not for .ko.
        assert!(sys.calls().contains(
            &"finit_module /lib/modules/6.1.0-test/kernel/lib/raid6/raid6_pq.ko.xz compressed"
                .to_string()
        ));
        assert!(sys
            .calls()
            .contains(&"finit_module /lib/modules/6.1.0-test/kernel/fs/fuse/fuse.ko".to_string()));
    }

    const SOFTDEP: &str =
        "softdep btrfs pre: crypto-crc32c sha256 post: nothing\nsoftdep ghost pre: fuse\n";
    const ALIAS: &str = "alias crypto-crc32c crc32c_intel\nalias crypto-crc32c crc32c_generic\nalias pci:v00001AF4d* virtio_pci\n";

    #[test]
    fn soft_dependencies_come_first_through_aliases() {
        let mut dep = ModulesDep::parse(DEP, BUILTIN).unwrap();
        dep.add_softdeps(SOFTDEP, ALIAS);
        // sha256 is not in the image (built in): dropped; post: is not ours.
        assert_eq!(
            dep.modules["btrfs"].soft_pre,
            vec!["crc32c_intel", "crc32c_generic"]
        );
        let (order, errors) = dep.load_order(Wanted::Names(&["btrfs"]));
        assert_eq!(errors, vec![]);
        let order = names(&order);
        assert!(before(&order, "crc32c_intel", "btrfs"), "{order:?}");
        assert!(before(&order, "crc32c_generic", "btrfs"), "{order:?}");
    }

    #[test]
    fn a_soft_dependency_that_does_not_apply_fails_nothing() {
        let sys = FakeSys::default();
        let dir = Path::new("/m");
        sys.set_file("/m/modules.dep", DEP);
        sys.set_file("/m/modules.softdep", SOFTDEP);
        sys.set_file("/m/modules.alias", ALIAS);
        sys.fail_module("crc32c_intel", Errno::ENODEV);
        let report = load(&sys, dir, Wanted::Names(&["btrfs"])).unwrap();
        assert_eq!(report.not_applicable, vec!["crc32c_intel"]);
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        assert!(report.loaded.contains(&"crc32c_generic".to_string()));
        assert_eq!(report.loaded.last().map(String::as_str), Some("btrfs"));
    }

    #[test]
    fn an_unreadable_modules_dep_is_one_error() {
        let sys = FakeSys::default();
        let err = load(&sys, Path::new("/nowhere"), Wanted::All).unwrap_err();
        assert!(matches!(err, ModulesError::Read { .. }), "{err}");
    }
}
