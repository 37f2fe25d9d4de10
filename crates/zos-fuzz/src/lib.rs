//! The harness behind every fuzz target: one function per parser of untrusted input,
//! each taking the raw bytes a peer could send. The libFuzzer targets
//! (`fuzz/fuzz_targets/*.rs`, their own workspace) call these, and so does the replay
//! test (`tests/replay.rs`, in the main workspace's test run), which runs every
//! committed corpus and regression input through the same code without libFuzzer.
//! See docs/fuzzing.md.
//!
//! Besides "no panic, no overflow, no hang", some targets check a property the
//! parser promises: what it accepts, it writes back in a form it reads the same way.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use zos_contract::{
    canonical, verify_bytes, ContractRecord, Limits, SecretKey, SignedBlueprint, SignedContract,
    VerifyContext,
};

// zos-uplink's DHCP reply checks and DNS reply decoder, compiled from its own source:
// those modules are private to zos-uplink (only its socket-level clients are public),
// and fuzzing the real code needs no copy of it. Their `super::{Lease, PacketError}`
// and `super::WireError` resolve to zos-uplink's own types, re-exported here.
pub use zos_uplink::dhcp::{Lease, PacketError};
pub use zos_uplink::dns::WireError;

/// zos-uplink's `dhcp/packet.rs`.
#[allow(dead_code, unused_imports, missing_docs)]
#[path = "../../zos-uplink/src/dhcp/packet.rs"]
pub mod dhcp_packet;

/// zos-uplink's `dns/wire.rs`.
#[allow(dead_code, unused_imports, missing_docs)]
#[path = "../../zos-uplink/src/dns/wire.rs"]
pub mod dns_wire;

/// `fuzz/`: the cargo-fuzz workspace, with the committed seed corpora
/// (`corpus/<target>/`) and the inputs a fuzzer crashed on (`regressions/<target>/`).
pub fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// The time the contract target verifies at: within the sample contract's validity
/// (it expires at 2_000_000_000), so a seed that verifies reaches the deployment.
pub const VERIFY_NOW: u64 = 1_800_000_000;

/// Contract, blueprint and cancellation documents (zos-contract): strict JSON with
/// limits, the typed documents, and the whole verification, offline and as the node
/// of the sample contract with the sample blueprint resolvable by digest.
pub fn contract(data: &[u8]) {
    let limits = Limits::default();
    // RFC 8785 canonical form: what parses strictly and has a canonical form must
    // reach a fixed point after one round (the bytes every signature covers).
    if let Ok(value) = canonical::parse_strict(data) {
        if let Ok(first) = canonical::to_vec(&value) {
            let again = canonical::parse_strict(&first)
                .expect("the canonical form of an accepted document parses");
            let second = canonical::to_vec(&again).expect("a canonical form has a canonical form");
            assert_eq!(first, second, "canonical form is not a fixed point");
        }
    }
    let _ = SignedBlueprint::from_bytes(data, &limits);
    if let Ok(doc) = SignedContract::from_bytes(data, &limits) {
        let _ = doc.to_pretty();
        let _ = ContractRecord::from_value(&doc.to_value(), &limits);
    }
    if let Ok(value) = zos_contract::document::parse_value(data, &limits) {
        let _ = ContractRecord::from_value(&value, &limits);
    }
    let offline = verify_bytes(data, &VerifyContext::offline(VERIFY_NOW));
    let _ = offline.into_result();

    let example = sample();
    let resolve = |d: &zos_contract::Digest| {
        (*d == example.blueprint.digest).then(|| example.blueprint.clone())
    };
    let trusted = BTreeSet::from([example.expert]);
    let ctx = VerifyContext {
        now: VERIFY_NOW,
        node: Some(example.node),
        accepted: Some((1, example.contract_digest)),
        resolve_blueprint: &resolve,
        trusted_authors: Some(&trusted),
        limits: Limits::default(),
    };
    let v = verify_bytes(data, &ctx);
    if let Ok(accepted) = v.into_result() {
        // Whatever is accepted must also pass the deployment's own checks.
        assert!(
            accepted.deployment.check(&Limits::default()).is_empty(),
            "an accepted contract's deployment fails its checks"
        );
    }
}

struct Sample {
    expert: zos_contract::PublicKey,
    node: zos_contract::PublicKey,
    blueprint: SignedBlueprint,
    contract_digest: zos_contract::Digest,
}

fn sample() -> &'static Sample {
    static SAMPLE: std::sync::OnceLock<Sample> = std::sync::OnceLock::new();
    SAMPLE.get_or_init(|| {
        let e = zos_contract::spec_example::Example::build();
        Sample {
            expert: e.expert.public(),
            node: e.node.public(),
            blueprint: e.blueprint,
            contract_digest: e.contract.digest,
        }
    })
}

/// A notary record as a backend returns it (zos-notary record.rs): strict envelope,
/// key, author and signature; what it reads, it stores back byte for byte.
pub fn notary_record(data: &[u8]) {
    use zos_notary::record::Record;
    let Ok(record) = Record::from_bytes(data) else {
        return;
    };
    let _ = record.verify();
    let _ = record.verify_at("farms/1");
    let _ = record.notary_key();
    if let Ok(bytes) = record.to_bytes() {
        let back = Record::from_bytes(&bytes).expect("a record's stored form reads back");
        assert_eq!(
            back.to_bytes().expect("stored form"),
            bytes,
            "a record's stored form is not a fixed point"
        );
    }
}

/// Marks a raw `.fl` input; anything else is decoded as rows (see [`flist_rows`]).
pub const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// An rfs `.fl` flist (zos-flist meta): raw SQLite bytes go to the loader as they
/// are; other inputs are read as rows and written with zos-flist's own writer first,
/// so the row checks (names, modes, parents, blocks, routes) are reached with valid
/// SQLite around them.
pub fn flist_meta(data: &[u8]) {
    if data.starts_with(SQLITE_MAGIC) {
        if let Ok(fl) = zos_flist::Flist::from_bytes(Path::new("fuzz.fl"), data) {
            walk(&fl);
        }
    } else {
        flist_rows(data);
    }
}

fn walk(fl: &zos_flist::Flist) {
    let _ = fl.root();
    let _ = fl.totals();
    for (i, e) in fl.entries.iter().enumerate() {
        let path = fl.path_of(i);
        assert_eq!(
            fl.lookup(&path).ok(),
            Some(i),
            "entry {i} is not found under its own path {path:?}"
        );
        for b in 0..e.blocks.len() {
            let _ = e.block_len(b);
        }
    }
}

/// A byte cursor that never fails: past the end it yields zeros.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
    fn u32(&mut self) -> u32 {
        let mut b = [0; 4];
        b.iter_mut().for_each(|x| *x = self.u8());
        u32::from_le_bytes(b)
    }
    fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }
    fn text(&mut self) -> String {
        let n = usize::from(self.u8() % 64);
        String::from_utf8_lossy(&self.bytes(n)).into_owned()
    }
}

/// Decodes `data` as a list of rows (inode, block, route, tag), writes them with
/// [`zos_flist::meta::Writer`] to a file on a tmpfs and loads it.
pub fn flist_rows(data: &[u8]) {
    use zos_flist::block::BlockRef;
    use zos_flist::meta::{NewInode, Writer};
    use zos_flist::Route;

    let dir = scratch();
    let dest = dir.join("rows.fl");
    let Ok(w) = Writer::create(&dest) else {
        return;
    };
    let mut c = Cursor(data);
    let mut rows = 0;
    while !c.0.is_empty() && rows < 256 {
        rows += 1;
        let op = c.u8();
        let r = match op % 4 {
            0 => {
                let ino = u64::from(c.u8());
                let parent = u64::from(c.u8());
                let name = c.text();
                let mode = c.u32();
                let size = c.u64();
                let (uid, gid) = (c.u32(), c.u32());
                let rdev = c.u64();
                let (ctime, mtime) = (c.u64() as i64, c.u64() as i64);
                let target = (op & 0x80 != 0).then(|| {
                    let n = usize::from(c.u8());
                    c.bytes(n)
                });
                let n = NewInode {
                    parent,
                    name,
                    size,
                    uid,
                    gid,
                    mode,
                    rdev,
                    ctime,
                    mtime,
                    target,
                };
                w.inode(ino, &n)
            }
            1 => {
                let ino = u64::from(c.u8());
                let mut b = BlockRef {
                    id: [0; 32],
                    key: [0; 32],
                };
                b.id[0] = c.u8();
                b.id[31] = c.u8();
                b.key[0] = c.u8();
                w.block(ino, &b)
            }
            2 => {
                let (start, end) = (c.u8(), c.u8());
                let url = c.text();
                let _ = Route::parse(&url);
                w.route(&Route { start, end, url })
            }
            _ => {
                let (k, v) = (c.text(), c.text());
                w.tag(&k, &v)
            }
        };
        if r.is_err() {
            return;
        }
    }
    if w.finish().is_err() {
        return;
    }
    if let Ok(fl) = zos_flist::Flist::open(&dest) {
        walk(&fl);
    }
}

/// A per-process scratch directory on a tmpfs (/dev/shm when there is one): the
/// writer syncs every file it finishes.
fn scratch() -> &'static Path {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("zosd-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
}

/// Removes the scratch directory of this process (the replay test calls it at the end).
pub fn cleanup() {
    let dir = scratch();
    let _ = std::fs::remove_dir_all(dir);
}

/// The client's transaction id in the fuzz harness's DHCP checks when the input does
/// not name it (see [`dhcp`]).
pub const DHCP_XID: u32 = 0x5a05_d001;
/// The client's hardware address, likewise.
pub const DHCP_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

/// A DHCP reply on the client port (zos-uplink dhcp/packet.rs). Half the inputs are
/// checked against the xid and chaddr they carry themselves, so the fuzzer gets past
/// "not our transaction" into the options.
pub fn dhcp(data: &[u8]) {
    let (xid, mac) = match data.get(4..8).zip(data.get(28..34)) {
        Some((x, m)) if data.len() % 2 == 0 => (
            u32::from_be_bytes(x.try_into().expect("4 bytes")),
            m.to_vec(),
        ),
        _ => (DHCP_XID, DHCP_MAC.to_vec()),
    };
    if let Ok(dhcp_packet::Reply::Ack(lease)) = dhcp_packet::parse_reply(data, xid, &mac) {
        let _ = lease.ntp_servers();
        let _ = lease.resolver();
        let _ = zos_uplink::dhcp::phase(&lease, std::time::Duration::from_secs(1));
    }
}

/// The name the DNS harness asks for; the reply's id is taken from the input.
pub const DNS_QNAME: &str = "zos.example.org";

/// A DNS reply (zos-uplink dns/wire.rs) to an A query for [`DNS_QNAME`].
pub fn dns(data: &[u8]) {
    let qname = dns_wire::labels(DNS_QNAME).expect("a valid name");
    let id = match data {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 0,
    };
    let _ = dns_wire::parse_reply(data, id, &qname);
}

/// The nonce the SNTP harness's request carried (the originate timestamp).
pub const SNTP_NONCE: u64 = 0x0123_4567_89ab_cdef;

/// An SNTP reply (zos-uplink sntp.rs): against the fixed nonce, and against the
/// originate timestamp the input carries, so the later checks are reached.
pub fn sntp(data: &[u8]) {
    let _ = zos_uplink::sntp::parse_reply(data, SNTP_NONCE);
    if let Some(o) = data.get(24..32) {
        let nonce = u64::from_be_bytes(o.try_into().expect("8 bytes"));
        let _ = zos_uplink::sntp::parse_reply(data, nonce);
    }
}

/// The kernel command line as PID 1 reads it from /proc/cmdline (zos-init cmdline.rs).
pub fn cmdline(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    let _ = zos_init::cmdline::split_kernel_args(&line);
    let (params, _warnings) = zos_init::BootParams::parse(&line);
    for s in &params.shares {
        let _ = zos_init::Share::parse(&format!("{}:{}", s.tag, s.path));
    }
}

/// A secret key for seeds (the fixed seeds of the spec example are used elsewhere).
pub fn seed_key(n: u8) -> SecretKey {
    SecretKey::from_seed([n; 32])
}
