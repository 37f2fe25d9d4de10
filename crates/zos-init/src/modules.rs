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

use crate::coldplug::{modaliases, AliasTable};
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

/// Reads `modules.dep` (and the optional `modules.builtin`, `.softdep`, `.alias`) in
/// `dir`; also returns the text of `modules.alias` for coldplug.
fn read_tree(sys: &dyn Sys, dir: &Path) -> Result<(ModulesDep, String), ModulesError> {
    let dep_path = dir.join("modules.dep");
    let text = sys.read_file(&dep_path).map_err(|e| ModulesError::Read {
        path: dep_path.clone(),
        message: e.to_string(),
    })?;
    // The others are optional: older or hand-made trees lack them.
    let optional = |name: &str| sys.read_file(&dir.join(name)).unwrap_or_default();
    let mut dep = ModulesDep::parse(&text, &optional("modules.builtin"))?;
    let alias = optional("modules.alias");
    dep.add_softdeps(&optional("modules.softdep"), &alias);
    Ok((dep, alias))
}

/// Loads `wanted` from `dir` (see [`kernel_modules_dir`]), one module at a time. Fails
/// as a whole only when modules.dep cannot be read or parsed; per-module failures are
/// in the report.
pub fn load(sys: &dyn Sys, dir: &Path, wanted: Wanted<'_>) -> Result<LoadReport, ModulesError> {
    let (dep, _) = read_tree(sys, dir)?;
    let (order, failed) = dep.load_order(wanted);
    let mut report = LoadReport {
        failed,
        ..LoadReport::default()
    };
    let mut bad = HashSet::new();
    for m in order {
        load_wave(&OneByOne(sys), dir, &[m], &mut bad, &mut report);
    }
    log_failures(&report.failed);
    Ok(report)
}

fn log_failures(failed: &[ModulesError]) {
    for e in failed {
        tracing::warn!(error = %e, "kernel module");
    }
}

/// How a wave of modules that do not need each other reaches the kernel: `finit_module`
/// for each file (`compressed` as in [`Sys::finit_module`]), the results in the same
/// order.
pub trait LoadWave {
    /// Loads `files` (path, compressed), in any order or at once.
    fn load_wave(&self, files: &[(PathBuf, bool)]) -> Vec<Result<(), Errno>>;
}

/// One module after the other, through any [`Sys`].
pub struct OneByOne<'a>(pub &'a dyn Sys);

impl LoadWave for OneByOne<'_> {
    fn load_wave(&self, files: &[(PathBuf, bool)]) -> Vec<Result<(), Errno>> {
        files
            .iter()
            .map(|(path, compressed)| self.0.finit_module(path, *compressed))
            .collect()
    }
}

/// At most this many `finit_module`s at once: a module's init may sleep (a driver
/// probing its device), and the kernel decompresses and links each on its caller's
/// CPU, so a few more than the CPUs keeps them busy without a thread per module.
const MAX_PARALLEL_LOADS: usize = 8;

/// The real kernel: the wave's modules on several threads at once (finit_module of
/// modules that do not depend on each other may run concurrently; the kernel
/// serialises what must be).
impl LoadWave for crate::Linux {
    fn load_wave(&self, files: &[(PathBuf, bool)]) -> Vec<Result<(), Errno>> {
        let threads = files.len().min(MAX_PARALLEL_LOADS);
        if threads <= 1 {
            return OneByOne(self).load_wave(files);
        }
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results: Vec<std::sync::Mutex<Option<Result<(), Errno>>>> =
            files.iter().map(|_| std::sync::Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some((path, compressed)) = files.get(i) else {
                        break;
                    };
                    let r = Sys::finit_module(self, path, *compressed);
                    if let Ok(mut slot) = results[i].lock() {
                        *slot = Some(r);
                    }
                });
            }
        });
        results
            .into_iter()
            .map(|slot| {
                slot.into_inner()
                    .ok()
                    .flatten()
                    // Only if a loading thread panicked.
                    .unwrap_or(Err(Errno::EINTR))
            })
            .collect()
    }
}

/// `order` (dependencies first) cut into waves: each module goes into the wave after
/// the last of its dependencies (hard or soft) in `order`, so a wave's modules never
/// need each other and may load at once.
pub fn waves<'a>(order: &[&'a Module]) -> Vec<Vec<&'a Module>> {
    let mut level: BTreeMap<&str, usize> = BTreeMap::new();
    let mut waves: Vec<Vec<&Module>> = Vec::new();
    for m in order {
        let after = m
            .deps
            .iter()
            .chain(&m.soft_pre)
            .filter_map(|d| level.get(d.as_str()))
            .map(|l| l + 1)
            .max()
            .unwrap_or(0);
        level.insert(&m.name, after);
        if waves.len() <= after {
            waves.resize_with(after + 1, Vec::new);
        }
        waves[after].push(*m);
    }
    waves
}

/// Loads one wave (modules that do not need each other) through `loader`, skipping
/// those whose dependency is in `bad` and adding the ones that fail to it.
fn load_wave(
    loader: &dyn LoadWave,
    dir: &Path,
    wave: &[&Module],
    bad: &mut HashSet<String>,
    report: &mut LoadReport,
) {
    let mut ready = Vec::new();
    for m in wave {
        match m.deps.iter().find(|d| bad.contains(d.as_str())) {
            Some(d) => {
                report.failed.push(ModulesError::DependencyFailed {
                    module: m.name.clone(),
                    dependency: d.clone(),
                });
                bad.insert(m.name.clone());
            }
            None => ready.push(*m),
        }
    }
    let files: Vec<(PathBuf, bool)> = ready
        .iter()
        .map(|m| (dir.join(&m.path), m.is_compressed()))
        .collect();
    let results = loader.load_wave(&files);
    for ((m, (path, _)), result) in ready.iter().zip(files).zip(results) {
        record(m, path, result, bad, report);
    }
}

/// What one `finit_module` result means for the report.
fn record(
    m: &Module,
    path: PathBuf,
    result: Result<(), Errno>,
    bad: &mut HashSet<String>,
    report: &mut LoadReport,
) {
    match result {
        Ok(()) => {
            tracing::info!(module = %m.name, "module loaded");
            report.loaded.push(m.name.clone());
        }
        Err(Errno::EEXIST) => report.present.push(m.name.clone()),
        Err(Errno::ENODEV) => {
            // Not an error for the node, but what needs it cannot load.
            tracing::info!(module = %m.name, "module does not apply to this machine");
            bad.insert(m.name.clone());
            report.not_applicable.push(m.name.clone());
        }
        // EINVAL: a kernel before 6.4 (unknown flag); EOPNOTSUPP: built without
        // CONFIG_MODULE_DECOMPRESS or without this algorithm.
        Err(errno @ (Errno::EINVAL | Errno::EOPNOTSUPP)) if m.is_compressed() => {
            bad.insert(m.name.clone());
            report.failed.push(ModulesError::CompressedUnsupported {
                module: m.name.clone(),
                path,
                errno,
            });
        }
        Err(errno) => {
            bad.insert(m.name.clone());
            report.failed.push(ModulesError::Load {
                module: m.name.clone(),
                path,
                errno,
            });
        }
    }
}

/// The modules a node needs that no device asks for: filesystems, network features and
/// the crypto they request at init (there is no modprobe for the kernel to call). Those
/// the image does not carry (or the kernel builds in) are skipped without an error.
pub const FEATURE_MODULES: &[&str] = &[
    // storage and workloads
    "btrfs",
    "crc32c_generic",
    "crc32c_intel",
    "xxhash_generic",
    "blake2b_generic",
    "overlay",
    "fuse",
    "9p",
    // network: tenant links, bridges, taps, the node firewall and NAT, the mesh
    "tun",
    "veth",
    "bridge",
    "nf_tables",
    "nf_conntrack",
    "nf_nat",
    "nft_ct",
    "nft_nat",
    "nft_masq",
    "nft_chain_nat",
    "nft_fib_inet",
    "nft_fib_ipv4",
    "nft_fib_ipv6",
    "nft_reject_inet",
    "wireguard",
    // Drivers of devices that may appear only after the rounds end: SCSI disks are
    // found by an asynchronous scan of their host, and zosd reads the power button's
    // presses through evdev.
    "sd_mod",
    "evdev",
];

/// Coldplug gives up after this many rounds (each round's modules may add devices
/// that ask for more: a bus driver, then the drivers of the devices on that bus).
const MAX_COLDPLUG_ROUNDS: usize = 8;

/// What [`coldplug`] did: the load report and how many rounds it took.
#[derive(Debug, Default)]
pub struct ColdplugReport {
    /// Every module loaded, present, not applicable or failed, over all rounds.
    pub load: LoadReport,
    /// Rounds that loaded something.
    pub rounds: usize,
    /// How many modaliases the devices had at the end.
    pub modaliases: usize,
}

/// Loads the modules the present devices ask for (their modaliases under `devices`,
/// `/sys/devices`, against `dir`'s `modules.alias`) and the [`FEATURE_MODULES`], each
/// with its dependencies, in waves of modules that may load at once through `loader`;
/// then again for the devices those modules made appear, until no device asks for a
/// module not tried yet.
pub fn coldplug(
    sys: &dyn Sys,
    loader: &dyn LoadWave,
    dir: &Path,
    devices: &Path,
) -> Result<ColdplugReport, ModulesError> {
    let (dep, alias) = read_tree(sys, dir)?;
    let aliases = AliasTable::parse(&alias);
    let mut report = ColdplugReport::default();
    let mut tried: BTreeSet<String> = BTreeSet::new();
    let mut bad = HashSet::new();
    let mut wanted: BTreeSet<String> = FEATURE_MODULES
        .iter()
        .map(|n| n.to_string())
        .filter(|n| dep.modules.contains_key(n))
        .collect();
    loop {
        let found = modaliases(devices);
        report.modaliases = found.len();
        wanted.extend(
            found
                .iter()
                .flat_map(|a| aliases.modules_for(a))
                .filter(|m| dep.modules.contains_key(*m))
                .map(str::to_string),
        );
        wanted.retain(|m| !tried.contains(m));
        if wanted.is_empty() || report.rounds == MAX_COLDPLUG_ROUNDS {
            break;
        }
        report.rounds += 1;
        let names: Vec<&str> = wanted.iter().map(String::as_str).collect();
        let (order, failed) = dep.load_order(Wanted::Names(&names));
        report.load.failed.extend(failed);
        // A dependency tried in an earlier round is loaded (or in `bad`) already.
        let order: Vec<&Module> = order
            .into_iter()
            .filter(|m| !tried.contains(&m.name))
            .collect();
        tried.extend(wanted.iter().cloned());
        tried.extend(order.iter().map(|m| m.name.clone()));
        wanted.clear();
        for wave in waves(&order) {
            load_wave(loader, dir, &wave, &mut bad, &mut report.load);
        }
    }
    log_failures(&report.load.failed);
    Ok(report)
}

/// The fake machine loads one module after the other.
#[cfg(test)]
impl LoadWave for crate::testing::FakeSys {
    fn load_wave(&self, files: &[(PathBuf, bool)]) -> Vec<Result<(), Errno>> {
        OneByOne(self).load_wave(files)
    }
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
    fn waves_hold_modules_that_do_not_need_each_other() {
        let mut dep = ModulesDep::parse(DEP, BUILTIN).unwrap();
        dep.add_softdeps(SOFTDEP, ALIAS);
        let (order, errors) = dep.load_order(Wanted::Names(&["btrfs", "virtio_net", "fuse", "9p"]));
        assert_eq!(errors, vec![]);
        let waves = waves(&order);
        let wave_of = |name: &str| {
            waves
                .iter()
                .position(|w| w.iter().any(|m| m.name == name))
                .unwrap_or_else(|| panic!("{name} in no wave"))
        };
        for m in &order {
            for d in m.deps.iter().chain(&m.soft_pre) {
                assert!(wave_of(d) < wave_of(&m.name), "{d} before {}", m.name);
            }
        }
        // Independent modules share the first wave.
        assert_eq!(wave_of("fuse"), 0);
        assert_eq!(wave_of("failover"), 0);
        assert_eq!(wave_of("xor"), 0);
        let total: usize = waves.iter().map(Vec::len).sum();
        assert_eq!(total, order.len());
    }

    /// A made `/sys/devices`: one directory per modalias.
    fn devices(aliases: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (i, a) in aliases.iter().enumerate() {
            let dir = root.path().join(format!("dev{i}"));
            std::fs::create_dir(&dir).unwrap();
            std::fs::write(dir.join("modalias"), format!("{a}\n")).unwrap();
        }
        root
    }

    /// A loader that adds a device when a bus driver loads, as the kernel does.
    struct Bus<'a> {
        sys: &'a FakeSys,
        devices: &'a Path,
        appears: (&'a str, &'a str),
    }

    impl LoadWave for Bus<'_> {
        fn load_wave(&self, files: &[(PathBuf, bool)]) -> Vec<Result<(), Errno>> {
            for (path, _) in files {
                if module_name(&path.to_string_lossy()) == self.appears.0 {
                    let dir = self.devices.join("on-bus");
                    std::fs::create_dir(&dir).unwrap();
                    std::fs::write(dir.join("modalias"), self.appears.1).unwrap();
                }
            }
            OneByOne(self.sys).load_wave(files)
        }
    }

    #[test]
    fn coldplug_loads_features_and_what_devices_ask_for_round_after_round() {
        let sys = FakeSys::default();
        let dep = format!(
            "{DEP}kernel/drivers/virtio/virtio_mmio.ko.xz:\nkernel/drivers/net/e1000.ko.xz:\n"
        );
        sys.set_file("/m/modules.dep", &dep);
        sys.set_file("/m/modules.builtin", BUILTIN);
        sys.set_file(
            "/m/modules.alias",
            "alias acpi*:LNRO0005:* virtio_mmio\nalias virtio:d00000001v* virtio_net\nalias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000\n",
        );
        let devs = devices(&["acpi:LNRO0005:", "platform:serial8250"]);
        let bus = Bus {
            sys: &sys,
            devices: devs.path(),
            appears: ("virtio_mmio", "virtio:d00000001v00001AF4"),
        };
        let report = coldplug(&sys, &bus, Path::new("/m"), devs.path()).unwrap();
        let loaded = &report.load.loaded;
        // Round 1: the bus driver (and the features); round 2: the NIC on that bus.
        assert_eq!(report.rounds, 2, "{loaded:?}");
        let pos = |n: &str| loaded.iter().position(|l| l == n);
        assert!(pos("virtio_mmio") < pos("virtio_net"), "{loaded:?}");
        assert!(pos("failover") < pos("virtio_net"), "{loaded:?}");
        for feature in ["btrfs", "overlay", "fuse", "9p"] {
            assert!(pos(feature).is_some(), "{feature}: {loaded:?}");
        }
        // No device asks for e1000; every module loads once.
        assert_eq!(pos("e1000"), None);
        let unique: BTreeSet<_> = loaded.iter().collect();
        assert_eq!(unique.len(), loaded.len(), "{loaded:?}");
        assert!(report.load.failed.is_empty(), "{:?}", report.load.failed);
    }

    #[test]
    fn coldplug_does_not_load_what_a_failed_dependency_needs() {
        let sys = FakeSys::default();
        sys.set_file("/m/modules.dep", DEP);
        sys.set_file("/m/modules.alias", "alias virtio:d00000001v* virtio_net\n");
        sys.fail_module("failover", Errno::ENOEXEC);
        let devs = devices(&["virtio:d00000001v00001AF4"]);
        let report = coldplug(&sys, &OneByOne(&sys), Path::new("/m"), devs.path()).unwrap();
        assert!(report.load.failed.iter().any(|e| matches!(e,
            ModulesError::DependencyFailed { module, .. } if module == "net_failover")));
        assert!(!report.load.loaded.contains(&"virtio_net".to_string()));
        assert!(report.load.loaded.contains(&"btrfs".to_string()));
    }

    #[test]
    fn the_real_loader_loads_a_wave_at_once_and_keeps_the_results_in_order() {
        // Files that do not exist: each thread's finit_module fails with ENOENT at
        // open, in the slot of its own file.
        let files: Vec<(PathBuf, bool)> = (0..20)
            .map(|i| (PathBuf::from(format!("/nonexistent/zos-{i}.ko")), false))
            .collect();
        let results = crate::Linux.load_wave(&files);
        assert_eq!(results, vec![Err(Errno::ENOENT); 20]);
    }

    #[test]
    fn an_unreadable_modules_dep_is_one_error() {
        let sys = FakeSys::default();
        let err = load(&sys, Path::new("/nowhere"), Wanted::All).unwrap_err();
        assert!(matches!(err, ModulesError::Read { .. }), "{err}");
    }
}
