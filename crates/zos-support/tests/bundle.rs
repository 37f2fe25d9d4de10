//! Support bundles against the real host: real sources (the kernel log, netlink, nft,
//! cgroups, /proc), sources that fail, panic and hang, the size bound, secrets planted in
//! a file and in the real kernel log, and unpack's refusals of hostile archives.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use zos_support::sources::{builtin, FileSource, FnSource, KernelLog};
use zos_support::{build, unpack, Bundle, BundleConfig, BundleError, Redactor, Source};
use zos_testkit::Needs;

fn cfg() -> BundleConfig {
    BundleConfig {
        max_bytes: 8 << 20,
        part_limit: 1 << 20,
        part_timeout: Duration::from_secs(20),
    }
}

fn boxed<F>(name: &str, f: F) -> Box<dyn Source>
where
    F: Fn(usize) -> Result<Vec<u8>, String> + Send + Sync + 'static,
{
    Box::new(FnSource::new(name, f))
}

fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("getrandom");
    b
}

/// Unpack into a fresh zt- dir; the files by name.
fn unpacked(bundle: &Bundle) -> (tempfile::TempDir, PathBuf) {
    let tmp = zos_testkit::tempdir("bundle");
    let out = tmp.path().join("out");
    let m = unpack(&bundle.bytes, &out).expect("unpack a built bundle");
    assert_eq!(
        m, bundle.manifest,
        "the manifest inside is the one returned"
    );
    (tmp, out)
}

fn read(dir: &Path, name: &str) -> String {
    String::from_utf8_lossy(
        &std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}")),
    )
    .into_owned()
}

fn part<'a>(b: &'a Bundle, name: &str) -> &'a zos_support::PartReport {
    b.manifest
        .parts
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("no part {name} in {:#?}", b.manifest))
}

#[test]
fn a_bundle_of_this_hosts_real_sources() {
    let b = build(builtin(), &cfg(), &Redactor::default());
    assert!(b.bytes.len() <= cfg().max_bytes);
    let (_tmp, dir) = unpacked(&b);
    let names: Vec<&str> = b.manifest.parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "kernel.log",
            "mounts.txt",
            "links.txt",
            "addresses.txt",
            "routes.txt",
            "nft-ruleset.json",
            "cgroups.txt",
            "meminfo.txt",
            "uptime.txt"
        ]
    );
    // Every part that is in the bundle is a file of the size the manifest says.
    for p in &b.manifest.parts {
        let f = dir.join(&p.name);
        if p.ok {
            assert_eq!(std::fs::metadata(&f).unwrap().len(), p.bytes, "{}", p.name);
        } else {
            assert!(!f.exists(), "{} failed but is there", p.name);
            assert!(p.error.as_deref().is_some_and(|e| !e.is_empty()));
        }
    }
    assert!(read(&dir, "mounts.txt").contains(" / / "), "the root mount");
    assert!(read(&dir, "meminfo.txt").starts_with("MemTotal:"));
    assert!(read(&dir, "uptime.txt").starts_with("uptime_seconds "));
    assert!(
        read(&dir, "links.txt").contains(" lo "),
        "{}",
        read(&dir, "links.txt")
    );
    assert!(read(&dir, "addresses.txt").contains(" 127.0.0.1/8 "));
    assert!(
        read(&dir, "routes.txt").contains("127.0.0.0/8"),
        "{}",
        read(&dir, "routes.txt")
    );
    assert!(read(&dir, "cgroups.txt").contains("== groups under /sys/fs/cgroup"));
    let errors = read(&dir, "errors.txt");
    for p in b.manifest.parts.iter().filter(|p| !p.ok) {
        assert!(errors.contains(&format!("{}: ", p.name)), "{errors}");
    }

    // Root reads the kernel log and the ruleset; without root or nft, each is a failed
    // part saying why (the others are there, as checked above).
    let root = Needs::root().missing().is_empty();
    let kernel = part(&b, "kernel.log");
    if root {
        assert!(kernel.ok && kernel.bytes > 0, "{kernel:?}");
        assert!(read(&dir, "kernel.log").starts_with('['));
    }
    let nft = part(&b, "nft-ruleset.json");
    if root && Needs::none().bin("nft").missing().is_empty() {
        assert!(nft.ok, "{nft:?}");
        let v: serde_json::Value = serde_json::from_str(&read(&dir, "nft-ruleset.json")).unwrap();
        assert!(v.get("nftables").is_some(), "{v}");
    } else {
        assert!(
            !nft.ok && nft.error.as_deref().unwrap().contains("nft"),
            "{nft:?}"
        );
    }
}

/// Hangs until the test drops the sender (then its thread ends).
struct Hang(Mutex<mpsc::Receiver<()>>);

impl Source for Hang {
    fn name(&self) -> &str {
        "hang.txt"
    }
    fn collect(&self, _: usize) -> Result<Vec<u8>, String> {
        let _ = self.0.lock().unwrap().recv();
        Ok(b"too late".to_vec())
    }
}

#[test]
fn a_failing_a_panicking_and_a_hanging_source_each_become_a_line() {
    let (release, hold) = mpsc::channel::<()>();
    let sources: Vec<Box<dyn Source>> = vec![
        boxed("good.txt", |_| Ok(b"fine\n".to_vec())),
        boxed("fail.txt", |_| Err("disk on fire".to_string())),
        boxed("panic.txt", |_| panic!("boom {}", 42)),
        Box::new(Hang(Mutex::new(hold))),
        Box::new(FileSource::new(
            "missing.txt",
            "/nonexistent/zt-bundle-missing",
        )),
        boxed("after.txt", |_| Ok(b"also fine\n".to_vec())),
    ];
    let cfg = BundleConfig {
        part_timeout: Duration::from_secs(2),
        ..cfg()
    };
    let b = build(sources, &cfg, &Redactor::default());
    let (_tmp, dir) = unpacked(&b);

    assert_eq!(read(&dir, "good.txt"), "fine\n");
    assert_eq!(read(&dir, "after.txt"), "also fine\n");
    let fail = part(&b, "fail.txt");
    assert_eq!(
        (fail.ok, fail.error.as_deref()),
        (false, Some("disk on fire"))
    );
    let panic = part(&b, "panic.txt");
    assert_eq!(
        (panic.ok, panic.error.as_deref()),
        (false, Some("panicked: boom 42"))
    );
    let hang = part(&b, "hang.txt");
    assert!(!hang.ok, "{hang:?}");
    assert_eq!(hang.error.as_deref(), Some("timed out after 2s: abandoned"));
    let missing = part(&b, "missing.txt");
    assert!(missing
        .error
        .as_deref()
        .unwrap()
        .starts_with("open /nonexistent/zt-bundle-missing: "));
    for n in ["fail.txt", "panic.txt", "hang.txt", "missing.txt"] {
        assert!(!dir.join(n).exists(), "{n} is in the bundle");
    }
    let errors = read(&dir, "errors.txt");
    assert!(errors.contains("fail.txt: disk on fire\n"), "{errors}");
    assert!(
        errors.contains("panic.txt: panicked: boom 42\n"),
        "{errors}"
    );
    assert!(
        errors.contains("hang.txt: timed out after 2s: abandoned\n"),
        "{errors}"
    );
    assert_eq!(errors.lines().count(), 4, "{errors}");
    // The abandoned thread ends once its source returns.
    drop(release);
}

/// A tail source (like the kernel log).
struct Tail(Vec<u8>);

impl Source for Tail {
    fn name(&self) -> &str {
        "tail.log"
    }
    fn collect(&self, _: usize) -> Result<Vec<u8>, String> {
        Ok(self.0.clone())
    }
    fn tail(&self) -> bool {
        true
    }
}

#[test]
fn a_part_over_its_limit_is_truncated_with_a_note() {
    let long: Vec<u8> = (0..10_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let head = long.clone();
    let sources: Vec<Box<dyn Source>> = vec![
        boxed("head.txt", move |_| Ok(head.clone())),
        Box::new(Tail(long.clone())),
        boxed("short.txt", |_| Ok(b"short".to_vec())),
    ];
    let cfg = BundleConfig {
        part_limit: 1000,
        ..cfg()
    };
    let b = build(sources, &cfg, &Redactor::default());
    let (_tmp, dir) = unpacked(&b);
    assert_eq!(std::fs::read(dir.join("head.txt")).unwrap(), &long[..1000]);
    assert_eq!(std::fs::read(dir.join("tail.log")).unwrap(), &long[9000..]);
    for (n, kept) in [("head.txt", "the head"), ("tail.log", "the tail")] {
        let p = part(&b, n);
        assert!(p.ok && p.truncated && p.bytes == 1000, "{p:?}");
        assert_eq!(
            p.error.as_deref(),
            Some(format!("truncated to 1000 bytes of 10000 or more ({kept} kept)").as_str())
        );
    }
    assert!(!part(&b, "short.txt").truncated);
    assert!(read(&dir, "errors.txt").contains("head.txt: truncated to 1000 bytes"));
}

#[test]
fn the_bundle_stays_under_max_bytes_dropping_the_largest_parts_first() {
    // Random bytes do not compress: sizes are what they are.
    let big = random(400_000);
    let mid = random(200_000);
    let small = random(50_000);
    let sources = || -> Vec<Box<dyn Source>> {
        let (b, m, s) = (big.clone(), mid.clone(), small.clone());
        vec![
            boxed("mid.bin", move |_| Ok(m.clone())),
            boxed("big.bin", move |_| Ok(b.clone())),
            boxed("small.bin", move |_| Ok(s.clone())),
            boxed("note.txt", |_| Ok(b"a note\n".to_vec())),
        ]
    };
    let cfg = BundleConfig {
        max_bytes: 300_000,
        ..cfg()
    };
    let b = build(sources(), &cfg, &Redactor::default());
    assert!(b.bytes.len() <= 300_000, "{} bytes", b.bytes.len());
    let (_tmp, dir) = unpacked(&b);
    let big_p = part(&b, "big.bin");
    assert!(big_p.dropped && !big_p.ok && big_p.bytes == 0, "{big_p:?}");
    assert!(big_p.error.as_deref().unwrap().starts_with(
        "dropped: the bundle was over its bound of 300000 bytes and this part was among the largest (400000 bytes"
    ));
    assert!(!dir.join("big.bin").exists());
    assert_eq!(std::fs::read(dir.join("mid.bin")).unwrap(), mid);
    assert_eq!(std::fs::read(dir.join("small.bin")).unwrap(), small);
    assert_eq!(read(&dir, "note.txt"), "a note\n");
    assert!(read(&dir, "errors.txt").starts_with("big.bin: dropped: "));

    // A bound that only the manifest and the note fit: the three random parts are
    // dropped, the bound still holds.
    let tight = BundleConfig {
        max_bytes: 4096,
        ..cfg
    };
    let b = build(sources(), &tight, &Redactor::default());
    assert!(b.bytes.len() <= 4096, "{} bytes", b.bytes.len());
    for p in &b.manifest.parts {
        assert_eq!(p.dropped, p.name != "note.txt", "{p:?}");
    }
    let (_tmp, dir) = unpacked(&b);
    assert_eq!(read(&dir, "errors.txt").lines().count(), 3);
    assert_eq!(read(&dir, "note.txt"), "a note\n");
}

/// Every encoding the node might write a secret in, and the first 16 bytes of each (a
/// cut secret still leaks).
fn encodings(secret: &[u8]) -> Vec<Vec<u8>> {
    let full = [
        secret.to_vec(),
        hex::encode(secret).into_bytes(),
        hex::encode_upper(secret).into_bytes(),
        STANDARD.encode(secret).into_bytes(),
        STANDARD_NO_PAD.encode(secret).into_bytes(),
        URL_SAFE.encode(secret).into_bytes(),
        URL_SAFE_NO_PAD.encode(secret).into_bytes(),
        secret
            .iter()
            .flat_map(|&c| {
                if !(b' '..127).contains(&c) || c == b'\\' {
                    format!("\\x{c:02x}").into_bytes()
                } else {
                    vec![c]
                }
            })
            .collect(),
    ];
    let mut all = full.to_vec();
    all.extend(full.iter().map(|e| e[..16].to_vec()));
    all
}

/// (file, encoding index) of every secret encoding found in any file under `dir`.
fn leaks(dir: &Path, secrets: &[&[u8]]) -> Vec<(String, usize)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let data = std::fs::read(e.path()).unwrap();
        for s in secrets {
            for (i, enc) in encodings(s).iter().enumerate() {
                if data.windows(enc.len()).any(|w| w == &enc[..]) {
                    found.push((e.file_name().to_string_lossy().into_owned(), i));
                }
            }
        }
    }
    found
}

#[test]
fn no_encoding_of_a_secret_leaves_in_a_bundle() {
    const TEST: &str = "no_encoding_of_a_secret_leaves_in_a_bundle";
    if !Needs::root().dev("/dev/kmsg").check(TEST) {
        return;
    }
    // No NUL byte: the kernel log takes a written record as a C string.
    let seed: Vec<u8> = random(32).into_iter().map(|b| b.max(1)).collect();
    let wg = random(32);
    let wg_b64 = STANDARD.encode(&wg);
    let marker = zos_testkit::tag(6);

    // A file as a node might hold them: raw, hex, base64, a WireGuard config.
    let tmp = zos_testkit::tempdir("bundle-secrets");
    let file = tmp.path().join("node.conf");
    let mut content = b"seed raw: ".to_vec();
    content.extend_from_slice(&seed);
    content.extend_from_slice(
        format!(
            "\nseed hex: {}\nSEED HEX: {}\nseed b64: {}\nseed b64url: {}\n\
             [Interface]\nPrivateKey = {wg_b64}\nwg hex {}\n",
            hex::encode(&seed),
            hex::encode_upper(&seed),
            STANDARD.encode(&seed),
            URL_SAFE_NO_PAD.encode(&seed),
            hex::encode(&wg),
        )
        .as_bytes(),
    );
    std::fs::write(&file, &content).unwrap();

    // The real kernel log.
    let mut kmsg = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/kmsg")
        .unwrap();
    for line in [
        format!("<6>{marker}: seed={} wg={wg_b64}\n", hex::encode(&seed)),
        format!("<6>{marker}: seed64={}\n", STANDARD.encode(&seed)),
    ] {
        kmsg.write_all(line.as_bytes()).unwrap();
    }
    // The raw bytes: /dev/kmsg shows them escaped (\xNN).
    let mut raw_line = format!("<6>{marker}: rawseed=").into_bytes();
    raw_line.extend_from_slice(&seed);
    raw_line.extend_from_slice(b" end\n");
    kmsg.write_all(&raw_line).unwrap();

    let part_limit = 64 << 10;
    let sources = || -> Vec<Box<dyn Source>> {
        let (seed_hex, wg_b64) = (hex::encode(&seed), wg_b64.clone());
        vec![
            Box::new(FileSource::new("node.conf", &file)),
            Box::new(KernelLog::default()),
            // A secret in an error text.
            boxed("broken.txt", move |_| {
                Err(format!("cannot parse key {wg_b64}"))
            }),
            // A secret cut by the source's own bound (like a file read to limit + 1):
            // the first 20 hex digits end what it returns, 19 of them within the limit.
            boxed("cut.txt", move |limit| {
                let mut v = vec![b'x'; limit - 19];
                v.extend_from_slice(&seed_hex.as_bytes()[..20]);
                Ok(v)
            }),
        ]
    };
    let cfg = BundleConfig {
        part_limit,
        ..cfg()
    };

    // Control: without the redactor the grep finds them, in the file and the kernel log.
    let open = build(sources(), &cfg, &Redactor::default());
    let (_t1, dir) = unpacked(&open);
    let found = leaks(&dir, &[&seed, &wg]);
    for f in [
        "node.conf",
        "kernel.log",
        "manifest.json",
        "errors.txt",
        "cut.txt",
    ] {
        assert!(
            found.iter().any(|(n, _)| n == f),
            "control: no leak seen in {f}: {found:?}"
        );
    }

    let redactor = Redactor::new([&seed[..], &wg[..]]);
    let b = build(sources(), &cfg, &redactor);
    let (_t2, dir) = unpacked(&b);
    assert_eq!(leaks(&dir, &[&seed, &wg]), Vec::<(String, usize)>::new());
    // The lines are there, with the secrets replaced.
    let klog = read(&dir, "kernel.log");
    assert!(
        klog.contains(&format!("{marker}: seed=[REDACTED] wg=[REDACTED]")),
        "{}",
        &klog[klog.len().saturating_sub(2000)..]
    );
    assert!(klog.contains(&format!("{marker}: seed64=[REDACTED]")));
    assert!(klog.contains(&format!("{marker}: rawseed=[REDACTED] end")));
    let conf = read(&dir, "node.conf");
    assert!(conf.contains("PrivateKey = [REDACTED]\n") && conf.contains("SEED HEX: [REDACTED]"));
    assert_eq!(
        part(&b, "broken.txt").error.as_deref(),
        Some("cannot parse key [REDACTED]")
    );
    assert!(
        part(&b, "node.conf").redacted >= 7,
        "{:?}",
        part(&b, "node.conf")
    );
    let cut = std::fs::read(dir.join("cut.txt")).unwrap();
    assert!(
        cut.len() == part_limit - 19 && cut.iter().all(|&c| c == b'x'),
        "the cut secret's digits are gone: {:?}",
        String::from_utf8_lossy(&cut[cut.len().saturating_sub(40)..])
    );
}

#[test]
fn unpack_round_trips() {
    let data = random(5000);
    let d = data.clone();
    let sources: Vec<Box<dyn Source>> = vec![
        boxed("state.json", |_| Ok(br#"{"state":"ok"}"#.to_vec())),
        boxed("blob.bin", move |_| Ok(d.clone())),
        boxed("empty.txt", |_| Ok(Vec::new())),
    ];
    let b = build(sources, &cfg(), &Redactor::default());
    let (_tmp, dir) = unpacked(&b);
    assert_eq!(read(&dir, "state.json"), r#"{"state":"ok"}"#);
    assert_eq!(std::fs::read(dir.join("blob.bin")).unwrap(), data);
    assert_eq!(std::fs::read(dir.join("empty.txt")).unwrap(), b"");
    assert_eq!(read(&dir, "errors.txt"), "");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "blob.bin",
            "empty.txt",
            "errors.txt",
            "manifest.json",
            "state.json"
        ]
    );
    // Unpacking twice into the same dir overwrites nothing.
    let again = unpack(&b.bytes, &dir);
    assert!(matches!(again, Err(BundleError::Io { .. })), "{again:?}");
}

/// One raw tar entry: the name and link name written as given (no normalisation).
fn entry(
    tar: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &str,
    link: &str,
    data: &[u8],
) {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    let old = h.as_old_mut();
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_cksum();
    tar.append(&h, data).unwrap();
}

/// A raw entry: kind, name, link name, data.
type Raw<'a> = (tar::EntryType, &'a str, &'a str, &'a [u8]);

/// A bundle with a valid manifest and a harmless file first, then the hostile entries.
fn hostile(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let manifest = br#"{"parts":[]}"#;
    entry(
        &mut tar,
        tar::EntryType::Regular,
        "manifest.json",
        "",
        manifest,
    );
    entry(&mut tar, tar::EntryType::Regular, "ok.txt", "", b"harmless");
    for (k, n, l, d) in entries {
        entry(&mut tar, *k, n, l, d);
    }
    let raw = tar.into_inner().unwrap();
    ruzstd::encoding::compress_to_vec(&raw[..], ruzstd::encoding::CompressionLevel::Fastest)
}

#[test]
fn unpack_refuses_dot_dot_absolute_paths_links_and_directories() {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let tmp = zos_testkit::tempdir("bundle-unpack");
    let tag = zos_testkit::tag(6);
    let outside = tmp.path().join(format!("{tag}-outside"));
    let abs = std::env::temp_dir().join(format!("{tag}-abs"));
    let dotdot = format!("../{tag}-outside");
    let abs_s = abs.to_str().unwrap().to_string();
    let out_s = outside.to_str().unwrap().to_string();
    let cases: Vec<(&str, Vec<Raw<'_>>, &str)> = vec![
        (
            "dot-dot",
            vec![(Regular, &dotdot, "", b"pwned")],
            "not a plain file name",
        ),
        (
            "absolute",
            vec![(Regular, &abs_s, "", b"pwned")],
            "not a plain file name",
        ),
        (
            "nested",
            vec![(Regular, "a/b", "", b"pwned")],
            "not a plain file name",
        ),
        (
            "symlink then write through it",
            vec![
                (Symlink, "evil", &out_s, b""),
                (Regular, "evil", "", b"pwned"),
            ],
            "is a symlink, not a regular file",
        ),
        (
            "hard link",
            vec![(Link, "evil", &out_s, b"")],
            "is a hard link, not a regular file",
        ),
        (
            "directory",
            vec![
                (Directory, "sub", "", b""),
                (Regular, "sub/x", "", b"pwned"),
            ],
            "is a directory, not a regular file",
        ),
    ];
    for (what, entries, why) in cases {
        let bytes = hostile(&entries);
        let out = tmp.path().join("out");
        let err = unpack(&bytes, &out).expect_err(what);
        assert!(
            matches!(
                err,
                BundleError::UnsafePath { .. } | BundleError::NotAFile { .. }
            ),
            "{what}: {err:?}"
        );
        assert!(err.to_string().contains(why), "{what}: {err}");
        // Nothing written: not outside, not even the harmless file before it.
        assert!(!outside.exists(), "{what}: wrote {}", outside.display());
        assert!(!abs.exists(), "{what}: wrote {}", abs.display());
        assert!(!out.exists(), "{what}: created the target dir");
    }

    // A symlink planted in the target dir is not followed.
    let out = tmp.path().join("planted");
    std::fs::create_dir(&out).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("ok.txt")).unwrap();
    let err = unpack(&hostile(&[]), &out).expect_err("planted symlink");
    assert!(
        matches!(&err, BundleError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists),
        "{err:?}"
    );
    assert!(!outside.exists(), "wrote through a planted symlink");

    // Not zstd, and no manifest.
    let tmp_out = tmp.path().join("other");
    assert!(matches!(
        unpack(b"not a bundle", &tmp_out),
        Err(BundleError::Decompress(_))
    ));
    let mut tar = tar::Builder::new(Vec::new());
    entry(&mut tar, Regular, "x.txt", "", b"x");
    let raw = tar.into_inner().unwrap();
    let z =
        ruzstd::encoding::compress_to_vec(&raw[..], ruzstd::encoding::CompressionLevel::Fastest);
    assert!(matches!(unpack(&z, &tmp_out), Err(BundleError::NoManifest)));
    assert!(!tmp_out.exists());
}

/// The pid's process is gone or a zombie (killed, not yet reaped by its new parent).
fn dead(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
    }
}

#[test]
fn a_hung_nft_is_killed_with_what_it_started_and_a_missing_one_is_a_failed_part() {
    use zos_support::sources::NftRuleset;
    let tmp = zos_testkit::tempdir("bundle-nft");
    let pidfile = tmp.path().join("child.pid");
    let script = tmp.path().join("nft");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nsleep 1000 &\necho $! > {}\necho '{{\"partial\":'\nwait\n",
            pidfile.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let hung = NftRuleset {
        program: script.clone(),
        timeout: Duration::from_millis(300),
    };
    let err = hung.collect(1 << 20).expect_err("a hung nft");
    assert_eq!(
        err,
        format!("{} -j list ruleset: killed after 300ms", script.display())
    );
    // What it started (in its process group) is killed too: wait for it to be gone.
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !dead(&pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "the hung nft's child {pid} still runs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let missing = NftRuleset {
        program: PathBuf::from("/nonexistent/zt-nft"),
        ..NftRuleset::default()
    };
    let err = missing.collect(1 << 20).expect_err("no nft");
    assert!(err.starts_with("run /nonexistent/zt-nft: "), "{err}");
}
