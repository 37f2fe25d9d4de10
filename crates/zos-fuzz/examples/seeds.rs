//! Writes the seed corpora under fuzz/corpus/<target>/: a handful of valid inputs,
//! made by the project's own code (the spec example's contract, signed records, a
//! packed flist) or byte for byte after the RFCs (DHCP, DNS, SNTP), and a few invalid
//! ones. Run again after a format changes:
//!
//!     cargo run -p zos-fuzz --example seeds

use std::net::Ipv4Addr;
use std::path::PathBuf;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode};
use dhcproto::{Encodable, Encoder};
use serde_json::json;
use zos_contract::spec_example::Example;
use zos_contract::{Cancellation, SignedCancellation};
use zos_fuzz::{seed_key, DHCP_MAC, DHCP_XID, DNS_QNAME, SNTP_NONCE, SQLITE_MAGIC};
use zos_notary::{NotaryKey, Record};

fn corpus(target: &str) -> PathBuf {
    let dir = zos_fuzz::fuzz_dir().join("corpus").join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    dir
}

fn put(target: &str, name: &str, bytes: impl AsRef<[u8]>) {
    std::fs::write(corpus(target).join(name), bytes).expect("seed written");
}

fn main() {
    contract();
    notary_record();
    flist_meta();
    dhcp();
    dns();
    sntp();
    cmdline();
    eprintln!("seeds written under {}", corpus("").display());
}

fn contract() {
    let e = Example::build();
    put("contract", "sample-contract.json", e.contract.to_pretty());
    put("contract", "sample-blueprint.json", e.blueprint.to_pretty());
    let cancel = SignedCancellation::sign(
        Cancellation {
            id: "hello-1".into(),
            version: 2,
            owner: e.owner.public(),
        },
        &e.owner,
    )
    .expect("signs");
    put(
        "contract",
        "cancellation.json",
        serde_json::to_vec(&cancel).expect("serializes"),
    );
    // Invalid: a duplicate key, an integer beyond 2^53-1, a lone surrogate, truncation.
    put(
        "contract",
        "duplicate-key.json",
        r#"{"contract":{"id":"a","id":"b"}}"#,
    );
    put(
        "contract",
        "big-int.json",
        r#"{"contract":{"version":9007199254740993}}"#,
    );
    put(
        "contract",
        "surrogate.json",
        r#"{"contract":{"id":"\ud800"}}"#,
    );
    let text = e.contract.to_pretty();
    put("contract", "truncated.json", &text[..text.len() / 2]);
}

fn notary_record() {
    let farmer = seed_key(9);
    let node = seed_key(5);
    let farm = Record::sign_at(
        &NotaryKey::farm("1").expect("farm key"),
        json!({"farm": {"id": "1", "name": "zt", "farmer": farmer.public()}}),
        &farmer,
        1_700_000_000,
    )
    .expect("signs");
    put(
        "notary_record",
        "farm.json",
        farm.to_bytes().expect("bytes"),
    );
    let beat = Record::sign_at(
        &NotaryKey::heartbeat(&node.public()),
        json!({"time": 1_700_000_001u64, "listening": [], "uptime_secs": 3}),
        &node,
        1_700_000_001,
    )
    .expect("signs");
    put(
        "notary_record",
        "heartbeat.json",
        beat.to_bytes().expect("bytes"),
    );
    let e = Example::build();
    let contract = Record::sign_at(
        &NotaryKey::contract(&e.node.public(), "hello-1").expect("key"),
        e.contract.to_value(),
        &e.owner,
        1_700_000_002,
    )
    .expect("signs");
    put(
        "notary_record",
        "contract.json",
        contract.to_bytes().expect("bytes"),
    );
    // Invalid: an unknown member, and a heartbeat signed by someone else than its node.
    let mut v: serde_json::Value = serde_json::from_slice(&farm.to_bytes().unwrap()).unwrap();
    v["extra"] = json!(1);
    put("notary_record", "unknown-field.json", v.to_string());
    let forged = Record::sign_at(
        &NotaryKey::heartbeat(&node.public()),
        json!({"time": 1}),
        &farmer,
        1,
    )
    .expect("signs");
    put(
        "notary_record",
        "wrong-author.json",
        forged.to_bytes().unwrap(),
    );
}

fn flist_meta() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("root");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/hostname"), "zos\n").unwrap();
    std::fs::write(src.join("hello"), vec![7u8; 3000]).unwrap();
    std::os::unix::fs::symlink("etc/hostname", src.join("link")).unwrap();
    let store = tmp.path().join("store");
    std::fs::create_dir_all(&store).unwrap();
    let router = zos_flist::Router::parse(&[format!("dir://{}", store.display())]).unwrap();
    let fl = tmp.path().join("small.fl");
    zos_flist::pack(
        &src,
        &fl,
        &router,
        &zos_flist::PackOptions {
            threads: 1,
            progress: None,
        },
    )
    .expect("packs");
    let bytes = std::fs::read(&fl).unwrap();
    assert!(bytes.starts_with(SQLITE_MAGIC));
    put("flist_meta", "small.fl", &bytes);
    // Invalid: the header alone, and the file cut in half.
    put("flist_meta", "header-only.fl", &bytes[..100]);
    put("flist_meta", "half.fl", &bytes[..bytes.len() / 2]);
    // Rows (see zos_fuzz::flist_rows): a root, a file under it with one block, a
    // route and a tag; and a name with a slash.
    let mut rows = Vec::new();
    let inode = |rows: &mut Vec<u8>, ino: u8, parent: u8, name: &str, mode: u32, size: u64| {
        rows.extend([0, ino, parent, name.len() as u8]);
        rows.extend(name.as_bytes());
        rows.extend(mode.to_le_bytes());
        rows.extend(size.to_le_bytes());
        rows.extend([0u8; 8 + 8 + 8 + 8]); // uid, gid, rdev, ctime
        rows.extend([0u8; 8]); // mtime
    };
    inode(&mut rows, 1, 0, "", 0o040755, 0);
    inode(&mut rows, 2, 1, "a", 0o100644, 10);
    rows.extend([1, 2, 0xab, 0xcd, 0xef]);
    rows.extend([2, 0, 255, 14]);
    rows.extend(b"dir:///srv/st0");
    rows.extend([3, 3]);
    rows.extend(b"key");
    rows.extend([5]);
    rows.extend(b"value");
    put("flist_meta", "rows.bin", &rows);
    let mut bad = Vec::new();
    inode(&mut bad, 1, 0, "", 0o040755, 0);
    inode(&mut bad, 2, 1, "a/b", 0o100644, 0);
    put("flist_meta", "rows-slash.bin", &bad);
}

fn dhcp_reply(kind: MessageType, opts: &[DhcpOption]) -> Vec<u8> {
    let mut m = Message::new_with_id(
        DHCP_XID,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::new(10, 0, 2, 15),
        Ipv4Addr::new(10, 0, 2, 2),
        Ipv4Addr::UNSPECIFIED,
        &DHCP_MAC,
    );
    m.set_opcode(Opcode::BootReply);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    for opt in opts {
        o.insert(opt.clone());
    }
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).expect("encodes");
    // Even length: the harness checks it against the xid and chaddr it carries.
    if buf.len() % 2 != 0 {
        buf.push(0);
    }
    buf
}

fn dhcp() {
    let server = Ipv4Addr::new(10, 0, 2, 2);
    let lease = [
        DhcpOption::ServerIdentifier(server),
        DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)),
        DhcpOption::Router(vec![server]),
        DhcpOption::DomainNameServer(vec![Ipv4Addr::new(10, 0, 2, 3)]),
        DhcpOption::NtpServers(vec![Ipv4Addr::new(10, 0, 2, 4)]),
        DhcpOption::DomainName("zos.test".into()),
        DhcpOption::AddressLeaseTime(3600),
        DhcpOption::Renewal(1800),
        DhcpOption::Rebinding(3150),
    ];
    put("dhcp", "offer.bin", dhcp_reply(MessageType::Offer, &lease));
    put("dhcp", "ack.bin", dhcp_reply(MessageType::Ack, &lease));
    put(
        "dhcp",
        "nak.bin",
        dhcp_reply(
            MessageType::Nak,
            &[
                DhcpOption::ServerIdentifier(server),
                DhcpOption::Message("no".into()),
            ],
        ),
    );
    // Invalid: a reply to another client (odd length: checked against the fixed xid).
    let mut other = dhcp_reply(MessageType::Ack, &lease);
    other.push(0);
    other[4] ^= 1;
    put("dhcp", "other-xid.bin", other);
}

fn dns_name(out: &mut Vec<u8>, name: &str) {
    for l in name.split('.') {
        out.push(l.len() as u8);
        out.extend(l.as_bytes());
    }
    out.push(0);
}

fn dns_reply(id: u16, rcode: u16, answers: &[(&[u8], u16, &[u8])]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend(id.to_be_bytes());
    m.extend((0x8180u16 | rcode).to_be_bytes());
    m.extend(1u16.to_be_bytes());
    m.extend((answers.len() as u16).to_be_bytes());
    m.extend([0; 4]);
    dns_name(&mut m, DNS_QNAME);
    m.extend([0, 1, 0, 1]);
    for (owner, ty, data) in answers {
        m.extend(*owner);
        m.extend(ty.to_be_bytes());
        m.extend([0, 1, 0, 0, 0x0e, 0x10]);
        m.extend((data.len() as u16).to_be_bytes());
        m.extend(*data);
    }
    m
}

fn dns() {
    // The question's name sits at offset 12: a pointer to it is 0xc00c.
    let q: &[u8] = &[0xc0, 0x0c];
    put(
        "dns",
        "a.bin",
        dns_reply(
            0x1234,
            0,
            &[(q, 1, &[192, 0, 2, 1]), (q, 1, &[192, 0, 2, 2])],
        ),
    );
    let mut target = Vec::new();
    dns_name(&mut target, "edge.example.net");
    let mut owner = Vec::new();
    dns_name(&mut owner, "edge.example.net");
    put(
        "dns",
        "cname.bin",
        dns_reply(
            0x4321,
            0,
            &[(q, 5, &target), (&owner, 1, &[198, 51, 100, 7])],
        ),
    );
    put("dns", "nxdomain.bin", dns_reply(7, 3, &[]));
    // Invalid: a pointer to itself.
    put(
        "dns",
        "loop.bin",
        dns_reply(9, 0, &[(&[0xc0, 0x29], 1, &[1, 2, 3, 4])]),
    );
}

fn sntp_reply(stratum: u8, originate: u64) -> Vec<u8> {
    let mut b = vec![0u8; 48];
    b[0] = (4 << 3) | 4; // LI 0, version 4, mode 4 (server)
    b[1] = stratum;
    b[24..32].copy_from_slice(&originate.to_be_bytes());
    // 2026-01-01 in NTP seconds, as receive and transmit.
    let t = (3_976_214_400u64 << 32) | 0x8000_0000;
    b[32..40].copy_from_slice(&t.to_be_bytes());
    b[40..48].copy_from_slice(&(t + 1).to_be_bytes());
    b
}

fn sntp() {
    put("sntp", "reply.bin", sntp_reply(2, SNTP_NONCE));
    let mut kod = sntp_reply(0, SNTP_NONCE);
    kod[12..16].copy_from_slice(b"RATE");
    put("sntp", "kiss-of-death.bin", kod);
    put("sntp", "other-originate.bin", sntp_reply(1, 42));
}

fn cmdline() {
    put(
        "cmdline",
        "node.txt",
        "BOOT_IMAGE=/vmlinuz console=ttyS0 zos.farm=1 zos.notary=etcd://10.0.2.2:2379 zos.runmode=dev zos.debug\n",
    );
    put(
        "cmdline",
        "share.txt",
        "quiet zos.share=notary:/srv/notary zos.farm=7 \"zos.notary=dir:///srv/notary\" -- init=/x",
    );
    put(
        "cmdline",
        "bad.txt",
        "zos.farm= zos.runmode=root zos.debug=maybe \"zos.share",
    );
}
