//! Replays every committed input through the fuzz harness, without libFuzzer: the
//! seed corpora (fuzz/corpus/<target>/) and every crash a fuzzer found
//! (fuzz/regressions/<target>/), which must not crash again once fixed. `cargo xtask
//! test` runs this with the workspace's tests (`cargo test -p zos-fuzz`);
//! a regression input whose fix has not landed yet makes it fail, as it should.
//!
//! The seeds are also checked for what they are meant to reach: the valid ones get
//! past every gate of their parser, so the fuzzer starts from deep inside it.

use std::path::{Path, PathBuf};

use zos_fuzz::*;

/// A harness function: what a fuzz target runs on one input.
type Harness = fn(&[u8]);

const TARGETS: &[(&str, Harness)] = &[
    ("contract", contract),
    ("notary_record", notary_record),
    ("flist_meta", flist_meta),
    ("dhcp", dhcp),
    ("dns", dns),
    ("sntp", sntp),
    ("cmdline", cmdline),
];

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != "README.md"))
        .collect();
    files.sort();
    files
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    let path = fuzz_dir().join("corpus").join(target).join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_corpus_and_regression_input_replays_without_a_crash() {
    let mut replayed = 0;
    let mut crashed = Vec::new();
    for (target, run) in TARGETS {
        let seeds = inputs("corpus", target);
        assert!(
            seeds.len() >= 3,
            "fuzz/corpus/{target} has {} seeds; it should hold a handful",
            seeds.len()
        );
        for path in seeds.iter().chain(&inputs("regressions", target)) {
            let bytes = std::fs::read(path).unwrap();
            // Every input runs, and every crash is named (its panic message and stack
            // are printed above it).
            if std::panic::catch_unwind(|| run(&bytes)).is_err() {
                crashed.push(format!("{target}: {}", path.display()));
            }
            replayed += 1;
        }
    }
    cleanup();
    assert!(
        crashed.is_empty(),
        "{} of {replayed} inputs crash the harness:\n  {}",
        crashed.len(),
        crashed.join("\n  ")
    );
    assert!(replayed >= 7 * 3);
}

#[test]
fn the_valid_seeds_get_past_every_check() {
    use zos_contract::{verify_bytes, VerifyContext};
    let v = verify_bytes(
        &seed("contract", "sample-contract.json"),
        &VerifyContext::offline(VERIFY_NOW),
    );
    assert!(v.is_ok(), "{:?}", v.reasons);

    let r = zos_notary::Record::from_bytes(&seed("notary_record", "farm.json")).unwrap();
    r.verify_at("farms/1").unwrap();

    let fl = zos_flist::Flist::from_bytes(Path::new("small.fl"), &seed("flist_meta", "small.fl"))
        .unwrap();
    assert!(fl.lookup("/etc/hostname").is_ok());

    let ack = seed("dhcp", "ack.bin");
    match dhcp_packet::parse_reply(&ack, DHCP_XID, &DHCP_MAC).unwrap() {
        dhcp_packet::Reply::Ack(lease) => {
            assert_eq!(lease.address, std::net::Ipv4Addr::new(10, 0, 2, 15));
            assert_eq!(lease.renew_secs, 1800);
        }
        other => panic!("not an ack: {other:?}"),
    }

    let qname = dns_wire::labels(DNS_QNAME).unwrap();
    let a = dns_wire::parse_reply(&seed("dns", "a.bin"), 0x1234, &qname).unwrap();
    assert!(
        matches!(a, dns_wire::Answer::Addrs(ref v) if v.len() == 2),
        "{a:?}"
    );
    let c = dns_wire::parse_reply(&seed("dns", "cname.bin"), 0x4321, &qname).unwrap();
    assert!(
        matches!(c, dns_wire::Answer::Addrs(ref v) if v.len() == 1),
        "{c:?}"
    );

    zos_uplink::sntp::parse_reply(&seed("sntp", "reply.bin"), SNTP_NONCE).unwrap();

    let line = String::from_utf8(seed("cmdline", "node.txt")).unwrap();
    let (p, warnings) = zos_init::BootParams::parse(&line);
    assert_eq!(p.farm.as_deref(), Some("1"));
    assert!(warnings.is_empty(), "{warnings:?}");
}
