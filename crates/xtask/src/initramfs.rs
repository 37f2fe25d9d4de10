//! `cargo xtask initramfs`: the node's boot image (initramfs/README.md).
//!
//! A compressed `newc` cpio with a static zosd as `/init`, the kernel modules a node
//! needs (with their dependencies from the Debian kernel's modules.dep, and a
//! `modules.dep`/`.alias`/`.softdep` made by `depmod` for exactly that set: zos-init
//! loads every module its modules.dep lists), and the helper programs the agent runs
//! (mkfs.btrfs, btrfs, nft) with their shared libraries and the dynamic loader.
//! Nothing else: no shell, getty, sshd or busybox. The archive's bytes depend only on
//! its inputs (fixed order, owners and times).
//!
//! Each step of the build says on stderr what it does and how long it took ([`Step`]):
//! a spinner on a terminal, plain lines otherwise.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::cpio::Cpio;
use crate::kernel::Kernel;
use crate::{packages, target_dir};

/// Debian packages the image is built from (and with).
pub const IMAGE_PACKAGES: &[&str] = &[
    "btrfs-progs",    // mkfs.btrfs and btrfs, copied into the image
    "nftables",       // nft, copied into the image
    "libseccomp-dev", // libseccomp.a: zosd links it statically
    "libelf-dev",     // libelf.a for libbpf (the cgroup v2 device program), statically
    "zlib1g-dev",     // libz.a, likewise
    "pkg-config",     // libseccomp-sys' build script
    "kmod",           // depmod for the image's own modules.dep
    "xz-utils",       // the kernel's payload (kernel.rs)
    "zstd",           // the archive's compression (the kernel has RD_ZSTD)
    "binutils",       // strip, for a smaller /init
];

/// The drivers of devices a node may have: virtio for QEMU (mmio for `-M microvm`, pci
/// for q35 and clouds), common NICs and disk controllers for real machines. PID 1 loads
/// those its devices ask for (`zos.modules=devices`) or all of them.
pub const DRIVER_MODULES: &[&str] = &[
    // QEMU / clouds
    "virtio_mmio",
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi", // QEMU nodes' SSD (a virtio-blk disk always reads as rotational)
    "virtio_rng",
    "9pnet_virtio", // the hypervisor's shares (zos.share)
    "button",       // the ACPI power button (a press powers the node off)
    // real machines: disks and a few common NICs
    "nvme",
    "ahci",
    "e1000",
    "e1000e",
    "igb",
    "r8169",
    "realtek", // r8169's PHY (a soft dependency)
];

/// Every module the image carries, before the dependencies modules.dep adds: the
/// drivers, and the modules PID 1 loads whatever the devices
/// ([`zos_init::modules::FEATURE_MODULES`]: the filesystems, network pieces and crypto
/// algorithms the agent uses, soft dependencies included, since there is no modprobe to
/// fetch them later). One list, owned by zos-init, so the image cannot lack one.
pub fn node_modules() -> Vec<&'static str> {
    DRIVER_MODULES
        .iter()
        .chain(zos_init::modules::FEATURE_MODULES)
        .copied()
        .collect()
}

/// The programs the agent runs (zos-storage: mkfs.btrfs; zos-network: nft), and
/// btrfs-progs' `btrfs` for the filesystem's own maintenance. Destination in the image.
pub const HELPERS: &[&str] = &["usr/sbin/mkfs.btrfs", "usr/bin/btrfs", "usr/sbin/nft"];

/// The dynamic loader the helpers name as their interpreter.
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

/// Names no file in the image may have (the no-login-surface rule).
pub const FORBIDDEN: &[&str] = &[
    "sh", "bash", "dash", "ash", "zsh", "busybox", "getty", "agetty", "login", "sshd", "dropbear",
    "telnetd",
];

/// What [`build`] made.
pub struct Built {
    /// The kernel whose modules the archive holds (the one to boot it with).
    pub kernel: Kernel,
    /// The compressed archive.
    pub path: PathBuf,
    /// Compressed bytes of the archive without the modules, and with them.
    pub size_without_modules: u64,
    /// Compressed bytes of the whole archive.
    pub size: u64,
    /// Uncompressed bytes, in the same order.
    pub raw_without_modules: u64,
    /// Uncompressed bytes of the whole archive.
    pub raw: u64,
    /// How many kernel modules it holds.
    pub modules: usize,
    /// The size of the static, stripped zosd (`/init`), in bytes.
    pub zosd_bytes: u64,
    /// Every path in the archive.
    pub files: Vec<String>,
}

/// One entry of the archive, by its path in the image.
enum Entry {
    Dir,
    File { data: Vec<u8>, mode: u32 },
    CharDevice { major: u32, minor: u32 },
}

/// `cargo xtask initramfs`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    if let Some(a) = args.first() {
        bail!("cargo xtask initramfs takes no arguments (got {a:?})");
    }
    let b = build()?;
    report(&b);
    Ok(())
}

/// Prints what `b` holds and its sizes.
pub fn report(b: &Built) {
    println!("initramfs {}", b.path.display());
    println!("  kernel        {}", b.kernel.release);
    println!("  zosd (/init)  {} (static, stripped)", human(b.zosd_bytes));
    println!(
        "  without modules: {} compressed ({} uncompressed)",
        human(b.size_without_modules),
        human(b.raw_without_modules)
    );
    println!(
        "  with {} modules: {} compressed ({} uncompressed)",
        b.modules,
        human(b.size),
        human(b.raw)
    );
    println!("  {} entries", b.files.len());
}

/// `bytes` in MiB with one decimal, and the exact count.
pub fn human(bytes: u64) -> String {
    format!("{:.1} MiB ({bytes} bytes)", bytes as f64 / (1 << 20) as f64)
}

/// One step of an image build, on stderr. On a terminal: a spinner with the time so far
/// while it runs. Otherwise (CI logs, the e2e tests that build the image): a line when
/// it starts, so a log shows where a build hangs. Either way a line with its result and
/// the time it took when it ends ([`Step::done`]), or that it failed and after how long
/// (dropped without `done`).
pub struct Step {
    label: String,
    started: Instant,
    /// The spinner or bar; `None` when stderr is not a terminal.
    bar: Option<ProgressBar>,
    done: bool,
}

impl Step {
    /// Starts the step `label` (what it does, in a few words).
    pub fn start(label: impl Into<String>) -> Step {
        let label = label.into();
        let bar = if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_message(label.clone());
            bar.enable_steady_tick(Duration::from_millis(120));
            Some(bar)
        } else {
            eprintln!("==> {label}");
            None
        };
        Step {
            label,
            started: Instant::now(),
            bar,
            done: false,
        }
    }

    /// Ends the step: `result` and the time it took, on one line.
    pub fn done(mut self, result: impl Display) {
        self.done = true;
        self.end(&result.to_string());
    }

    fn end(&self, result: &str) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "    {}: {result} ({:.1} s)",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.done {
            // An error return: no spinner left above the error, and the step named.
            self.end("failed");
        }
    }
}

/// Builds the static zosd and the archive; returns where it is and its sizes.
pub fn build() -> anyhow::Result<Built> {
    packages::ensure(IMAGE_PACKAGES)?;
    let step = Step::start("the Debian kernel (fetched and unpacked on first use)");
    let kernel = crate::kernel::debian()?;
    step.done(&kernel.release);
    let out_dir = target_dir().join("image");
    std::fs::create_dir_all(&out_dir)?;
    // One build at a time, across processes: the e2e tests build the image side by side
    // (in one binary and through `cargo xtask node`), and `init` and `modules/` are
    // written in place.
    let lock = std::fs::File::create(out_dir.join(".build.lock"))?;
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the image build")?;

    let init = stripped_init(&out_dir)?;
    let zosd_bytes = std::fs::metadata(&init)?.len();
    let step = Step::start("the helpers (mkfs.btrfs, btrfs, nft), their libraries, the loader");
    let mut full = base_tree(&init)?;
    let without: Vec<u8> = archive_bytes(&full)?;
    step.done(format!("{} entries", full.len()));
    let step = Step::start(format!(
        "kernel modules: {} and their dependencies, depmod",
        node_modules().len()
    ));
    let modules = stage_modules(&kernel, &out_dir.join("modules"))?;
    let module_count = modules.iter().filter(|(p, _)| p.ends_with(".ko")).count();
    for (dest, src) in modules {
        add_file(&mut full, &dest, &src, 0o644)?;
    }
    step.done(format!("{module_count} modules staged"));
    let raw = archive_bytes(&full)?;
    let files: Vec<String> = full.keys().cloned().collect();
    forbid_login_surface(&files)?;

    let (path, size, size_without_modules) = write_compressed(&kernel, &out_dir, &raw, &without)?;
    std::fs::write(out_dir.join("initramfs.files"), files.join("\n") + "\n")?;
    Ok(Built {
        kernel,
        path,
        size_without_modules,
        size,
        raw_without_modules: without.len() as u64,
        raw: raw.len() as u64,
        modules: module_count,
        zosd_bytes,
        files,
    })
}

/// The static zosd, stripped, as `<out_dir>/init`; refused if it names a dynamic loader.
fn stripped_init(out_dir: &Path) -> anyhow::Result<PathBuf> {
    let zosd = static_zosd()?;
    let step = Step::start("/init: zosd stripped");
    let init = out_dir.join("init");
    std::fs::copy(&zosd, &init).context("copying zosd")?;
    exec(Command::new("strip").arg("--strip-all").arg(&init))?;
    if has_interpreter(&std::fs::read(&init)?)? {
        bail!(
            "{} is not static (it names a dynamic loader)",
            zosd.display()
        );
    }
    step.done(human(std::fs::metadata(&init)?.len()));
    Ok(init)
}

/// The image without the kernel modules: its directories and device nodes, zosd as
/// `/init`, the helpers with their libraries and the loader, and the files their glibc
/// reads.
fn base_tree(init: &Path) -> anyhow::Result<BTreeMap<String, Entry>> {
    let mut base: BTreeMap<String, Entry> = BTreeMap::new();
    for d in [
        "dev", "proc", "sys", "run", "tmp", "etc", "var", "var/lib", "mnt", "root",
    ] {
        base.insert(d.into(), Entry::Dir);
    }
    base.insert(
        "dev/console".into(),
        Entry::CharDevice { major: 5, minor: 1 },
    );
    base.insert("dev/null".into(), Entry::CharDevice { major: 1, minor: 3 });
    base.insert(
        "init".into(),
        Entry::File {
            data: std::fs::read(init)?,
            mode: 0o755,
        },
    );
    // The helpers, their libraries and the loader.
    for dest in HELPERS {
        let name = dest.rsplit('/').next().unwrap_or(dest);
        let src = which(name)?;
        add_file(&mut base, dest, &src, 0o755)?;
        for lib in libraries(&src)? {
            let dest = lib.to_str().context("utf-8 library path")?.to_string();
            add_file(&mut base, &dest, &lib, 0o755)?;
        }
    }
    add_file(&mut base, LOADER, Path::new(LOADER), 0o755)?;
    // Name lookups of the helpers' glibc (nft's `getprotobyname`) read these.
    for (path, text) in [
        ("etc/protocols", PROTOCOLS),
        (
            "etc/nsswitch.conf",
            "hosts: files dns\nprotocols: files\nservices: files\n",
        ),
    ] {
        insert_data(&mut base, path, text.as_bytes().to_vec(), 0o644);
    }
    // The release keys the image pins (docs/upgrade.md): the file named by
    // ZOS_RELEASE_KEYS (one ed25519 public key in hex per line) as /etc/zos/release-keys.
    // Without it the image pins none and accepts no release.
    if let Some(keys) = std::env::var_os("ZOS_RELEASE_KEYS") {
        let text = std::fs::read(&keys)
            .with_context(|| format!("ZOS_RELEASE_KEYS={}", Path::new(&keys).display()))?;
        base.insert("etc/zos".into(), Entry::Dir);
        insert_data(&mut base, "etc/zos/release-keys", text, 0o644);
    }
    Ok(base)
}

/// Compresses the archive as the kernel can unpack it (zstd if it has CONFIG_RD_ZSTD,
/// else gzip) into `<out_dir>/initramfs.cpio.<ext>`, replaced atomically, and removes the
/// other compression's leftover. Returns the path and the compressed sizes of `raw` and
/// of `without` (the archive without modules, for the report).
fn write_compressed(
    kernel: &Kernel,
    out_dir: &Path,
    raw: &[u8],
    without: &[u8],
) -> anyhow::Result<(PathBuf, u64, u64)> {
    let zstd = kernel_has(kernel, "CONFIG_RD_ZSTD=y")?;
    let (ext, compress): (&str, Compressor) = if zstd {
        ("zst", zstd_bytes)
    } else {
        ("gz", gzip_bytes)
    };
    let path = out_dir.join(format!("initramfs.cpio.{ext}"));
    // The archive is deterministic (no timestamps): when it is the one already
    // compressed, the minutes of zstd -19 are skipped. The e2e tests build the image
    // once per test, and only the first of a run changes anything.
    let stamp_path = out_dir.join("initramfs.stamp");
    let stamp = {
        use std::hash::Hasher;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        h.write(raw);
        h.write(without);
        format!("{ext} {:016x} {} {}", h.finish(), raw.len(), without.len())
    };
    if path.exists() {
        if let Ok(text) = std::fs::read_to_string(&stamp_path) {
            let mut parts = text.trim().rsplitn(3, ' ');
            let sizes = (parts.next(), parts.next(), parts.next());
            if let (Some(without_size), Some(size), Some(was)) = sizes {
                if was == stamp {
                    if let (Ok(size), Ok(without_size)) = (size.parse(), without_size.parse()) {
                        eprintln!(
                            "    compressing: the archive is unchanged ({})",
                            path.display()
                        );
                        return Ok((path, size, without_size));
                    }
                }
            }
        }
    }
    // A spinner, not a byte bar: zstd -T0 takes in tens of MiB at once and then
    // compresses them, so the bytes fed say little about the time left.
    let step = Step::start(format!(
        "compressing ({ext}): the archive ({:.1} MiB), and without modules ({:.1} MiB) for the report",
        raw.len() as f64 / (1 << 20) as f64,
        without.len() as f64 / (1 << 20) as f64
    ));
    let compressed = compress(raw)?;
    let compressed_without = compress(without)?;
    step.done(human(compressed.len() as u64));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &compressed)?;
    std::fs::rename(&tmp, &path)?;
    std::fs::write(
        &stamp_path,
        format!(
            "{stamp} {} {}\n",
            compressed.len(),
            compressed_without.len()
        ),
    )?;
    // The other compression's leftover from an earlier build would be confusing.
    let other = out_dir.join(format!(
        "initramfs.cpio.{}",
        if zstd { "gz" } else { "zst" }
    ));
    let _ = std::fs::remove_file(other);
    Ok((
        path,
        compressed.len() as u64,
        compressed_without.len() as u64,
    ))
}

/// zosd for `/init`: crt-static, with libseccomp linked statically (a target dir of its
/// own: the flags differ from the workspace's). The image's `/init` and a release's
/// agent are this one build: a release's version is what its record says.
pub fn static_zosd() -> anyhow::Result<PathBuf> {
    let lib = "/usr/lib/x86_64-linux-gnu";
    if !Path::new(lib).join("libseccomp.a").exists() {
        bail!("{lib}/libseccomp.a is missing (apt-get install libseccomp-dev)");
    }
    let static_target = target_dir().join("static");
    let args = [
        "build",
        "--quiet",
        "--release",
        "-p",
        "zosd",
        "--target",
        "x86_64-unknown-linux-gnu",
        "--target-dir",
        static_target.to_str().context("utf-8 target dir")?,
    ];
    eprintln!("+ cargo {}", args.join(" "));
    let step = Step::start("zosd for /init: a static release build (minutes on a cold cache)");
    // Its messages (warnings, errors) are kept and printed after the spinner, which
    // they would otherwise break into.
    let out = crate::cargo_command()
        .args(args)
        .envs([
            ("RUSTFLAGS", "-C target-feature=+crt-static"),
            ("LIBSECCOMP_LINK_TYPE", "static"),
            ("LIBSECCOMP_LIB_PATH", lib),
            // Why cargo found a unit stale, logged (below): a build that should have
            // been fresh and was not says why.
            ("CARGO_LOG", "cargo::core::compiler::fingerprint=info"),
        ])
        .stdin(Stdio::null())
        .output()
        .context("running cargo")?;
    let (why_stale, messages): (Vec<&str>, Vec<&str>) = std::str::from_utf8(&out.stderr)
        .unwrap_or_default()
        .lines()
        .partition(|l| l.contains("cargo::core::compiler::fingerprint"));
    log_staleness(&static_target, &why_stale);
    let messages = messages.join("\n");
    if !out.status.success() {
        drop(step);
        bail!(
            "cargo {} failed ({}):\n{messages}",
            args.join(" "),
            out.status
        );
    }
    step.done("built");
    if !messages.trim().is_empty() {
        eprintln!("{messages}");
    }
    Ok(static_target.join("x86_64-unknown-linux-gnu/release/zosd"))
}

/// Appends what cargo said about stale units of the static build to
/// `<target>/static/why-rebuilt.log`, when it rebuilt anything: a build that found
/// everything fresh adds nothing.
fn log_staleness(static_target: &Path, lines: &[&str]) {
    if lines.is_empty() {
        return;
    }
    let mut text = format!(
        "--- {:?}, {} lines\n",
        std::time::SystemTime::now(),
        lines.len()
    );
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    let path = static_target.join("why-rebuilt.log");
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    if let Err(e) = appended {
        eprintln!("(not written: {}: {e})", path.display());
    }
}

/// Whether an ELF file has a PT_INTERP program header (a dynamic loader).
fn has_interpreter(elf: &[u8]) -> anyhow::Result<bool> {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        bail!("not a little-endian 64-bit ELF");
    }
    let phoff = u64_at(0x20).context("short ELF")? as usize;
    let phentsize = u16_at(0x36).context("short ELF")? as usize;
    let phnum = u16_at(0x38).context("short ELF")? as usize;
    const PT_INTERP: u32 = 3;
    Ok((0..phnum).any(|i| u32_at(phoff + i * phentsize) == Some(PT_INTERP)))
}

fn which(name: &str) -> anyhow::Result<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not installed"))
}

/// The shared libraries `bin` loads, as the loader resolves them (`ld.so --list`:
/// ldd without its shell script).
fn libraries(bin: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new(LOADER)
        .arg("--list")
        .arg(bin)
        .stderr(Stdio::inherit())
        .output()
        .context("running the dynamic loader")?;
    if !out.status.success() {
        bail!("{LOADER} --list {} failed", bin.display());
    }
    let mut libs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)"; the loader itself
        // and the vDSO are not files to copy from here.
        let Some((_, rest)) = line.split_once("=>") else {
            continue;
        };
        let path = rest.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        } else {
            bail!("{}: library not found: {line}", bin.display());
        }
    }
    Ok(libs)
}

/// Every parent of `path` as a directory entry, then the file (read through symlinks).
fn add_file(
    m: &mut BTreeMap<String, Entry>,
    dest: &str,
    src: &Path,
    mode: u32,
) -> anyhow::Result<()> {
    let data = std::fs::read(src).with_context(|| format!("reading {}", src.display()))?;
    insert_data(m, dest, data, mode);
    Ok(())
}

fn insert_data(m: &mut BTreeMap<String, Entry>, dest: &str, data: Vec<u8>, mode: u32) {
    let dest = dest.trim_start_matches('/');
    let mut parent = String::new();
    let parts: Vec<&str> = dest.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        if !parent.is_empty() {
            parent.push('/');
        }
        parent.push_str(part);
        m.entry(parent.clone()).or_insert(Entry::Dir);
    }
    m.insert(dest.to_string(), Entry::File { data, mode });
}

/// The archive: entries in path order (a parent sorts before its children).
fn archive_bytes(m: &BTreeMap<String, Entry>) -> anyhow::Result<Vec<u8>> {
    let mut c = Cpio::new(Vec::new());
    for (path, e) in m {
        match e {
            Entry::Dir => c.dir(path)?,
            Entry::File { data, mode } => c.file(path, *mode, data)?,
            Entry::CharDevice { major, minor } => c.char_device(path, 0o600, *major, *minor)?,
        }
    }
    Ok(c.finish()?)
}

/// Copies the node's modules (and their dependencies) into `stage/lib/modules/<rel>`,
/// runs `depmod` there, and returns (path in the image, file) for the modules and the
/// index files zos-init reads.
fn stage_modules(kernel: &Kernel, stage: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let _ = std::fs::remove_dir_all(stage);
    let rel = format!("lib/modules/{}", kernel.release);
    let dir = stage.join(&rel);
    std::fs::create_dir_all(&dir)?;
    let mut out = Vec::new();
    for module in kernel.modules_for(&node_modules())? {
        let inner = module
            .strip_prefix(&kernel.modules)
            .context("module outside the kernel tree")?;
        let to = dir.join(inner);
        std::fs::create_dir_all(to.parent().context("module dir")?)?;
        std::fs::copy(&module, &to).with_context(|| format!("copying {}", module.display()))?;
        out.push((format!("{rel}/{}", inner.display()), to));
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        std::fs::copy(kernel.modules.join(f), dir.join(f))?;
    }
    exec(
        Command::new("depmod")
            .arg("-b")
            .arg(stage)
            .arg(&kernel.release),
    )?;
    for f in [
        "modules.dep",
        "modules.alias",
        "modules.softdep",
        "modules.builtin",
    ] {
        out.push((format!("{rel}/{f}"), dir.join(f)));
    }
    Ok(out)
}

fn forbid_login_surface(files: &[String]) -> anyhow::Result<()> {
    for f in files {
        let name = f.rsplit('/').next().unwrap_or(f);
        if FORBIDDEN.contains(&name) {
            bail!("the image would carry {f}: no shell, getty, sshd or busybox");
        }
    }
    Ok(())
}

fn kernel_has(kernel: &Kernel, line: &str) -> anyhow::Result<bool> {
    let config = kernel.config();
    let text = std::fs::read_to_string(&config)
        .with_context(|| format!("reading {}", config.display()))?;
    Ok(text.lines().any(|l| l == line))
}

type Compressor = fn(&[u8]) -> anyhow::Result<Vec<u8>>;

fn zstd_bytes(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    filter(Command::new("zstd").args(["-q", "-19", "-T0", "-c"]), data)
}

fn gzip_bytes(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    filter(Command::new("gzip").args(["-9", "-n", "-c"]), data)
}

/// Runs a compressor over `data` (written from a scoped thread: no copy of it).
fn filter(cmd: &mut Command, data: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let out = std::thread::scope(|s| {
        let writer = s.spawn(move || stdin.write_all(data));
        let out = child.wait_with_output();
        writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))??;
        anyhow::Ok(out?)
    })?;
    if !out.status.success() {
        bail!("{:?} failed ({})", cmd.get_program(), out.status);
    }
    Ok(out.stdout)
}

fn exec(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// The protocol numbers nft may look up by name.
const PROTOCOLS: &str = "\
ip\t0\tIP
icmp\t1\tICMP
tcp\t6\tTCP
udp\t17\tUDP
ipv6-icmp\t58\tIPv6-ICMP
";

/// Writes `initrd` with the release keys `keys` (one ed25519 public key in hex per line)
/// pinned as `/etc/zos/release-keys` to `out`: a second, uncompressed archive appended
/// to the image's. The kernel unpacks concatenated archives in order; an uncompressed
/// one must start at a multiple of 4 bytes (the zeros before it are skipped). A farm's
/// own image pins its keys at build time (`ZOS_RELEASE_KEYS`); this gives a scenario
/// its own keys without rebuilding or replacing the shared image.
pub fn with_release_keys(initrd: &Path, keys: &str, out: &Path) -> anyhow::Result<()> {
    let mut bytes =
        std::fs::read(initrd).with_context(|| format!("reading {}", initrd.display()))?;
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    let mut layer = Cpio::new(Vec::new());
    layer.dir("etc/zos")?;
    layer.file("etc/zos/release-keys", 0o644, keys.as_bytes())?;
    bytes.extend(layer.finish()?);
    std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))
}
