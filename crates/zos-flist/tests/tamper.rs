//! Tampering with the store or the flist is refused with its specific error, and the
//! verified cache never holds a bad block.

mod common;

use common::*;
use zos_contract::SecretKey;
use zos_flist::sign::{open_trusted, sign_file, Trust};
use zos_flist::{
    unpack, verify_blocks, BlockCache, BlockError, Error, Fetcher, Router, SignError,
    UnpackOptions, BLOCK_SIZE,
};

fn tree(root: &std::path::Path) {
    std::fs::write(root.join("a"), random(3 * BLOCK_SIZE + 100)).unwrap();
    std::fs::write(root.join("b"), random(BLOCK_SIZE)).unwrap();
}

/// Unpacks through a cache and returns the error; asserts the cache holds only blocks
/// that verify.
fn unpack_err(p: &Packed, tag: &str) -> Error {
    let cache_dir = p.dir.path().join(format!("cache-{tag}"));
    let fetcher = Fetcher::new(
        Router::parse(&[p.store_url()]).unwrap(),
        Some(BlockCache::new(&cache_dir)),
    );
    let out = p.dir.path().join(format!("out-{tag}"));
    let err = unpack(
        &p.flist(),
        &fetcher,
        &out,
        &UnpackOptions {
            threads: 1,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert_cache_clean(p, &cache_dir);
    err
}

fn assert_cache_clean(p: &Packed, cache_dir: &std::path::Path) {
    let fl = p.flist();
    let cache = BlockCache::new(cache_dir);
    let good: std::collections::HashMap<String, _> = fl
        .entries
        .iter()
        .flat_map(|e| e.blocks.iter())
        .map(|b| (b.id_hex(), *b))
        .collect();
    for f in cache.entries() {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let b = good
            .get(&name)
            .unwrap_or_else(|| panic!("stray cache file {f:?}"));
        let plain = std::fs::read(&f).unwrap();
        zos_flist::block::check_plain(b, &plain).expect("cache holds only verified plaintext");
    }
}

fn block_reason(e: &Error) -> (&str, usize, &BlockError) {
    match e {
        Error::Block {
            file,
            index,
            reason,
            ..
        } => (file.as_str(), *index, reason),
        other => panic!("expected a block error, got {other}"),
    }
}

#[test]
fn flipped_byte_in_a_stored_block_is_an_id_mismatch() {
    let p = Packed::new("tamper-flip", tree);
    let blob = p.blob_of("/a", 2);
    let mut data = std::fs::read(&blob).unwrap();
    data[10] ^= 0x40;
    std::fs::write(&blob, data).unwrap();
    let err = unpack_err(&p, "x");
    let (file, index, reason) = block_reason(&err);
    assert_eq!((file, index), ("/a", 2));
    assert!(matches!(reason, BlockError::IdMismatch { .. }), "{reason}");
    assert!(reason.is_bad_data());
    assert!(err.to_string().contains("/a: block 2"), "{err}");
}

#[test]
fn truncated_block_is_an_id_mismatch() {
    let p = Packed::new("tamper-trunc", tree);
    let blob = p.blob_of("/b", 0);
    let data = std::fs::read(&blob).unwrap();
    std::fs::write(&blob, &data[..data.len() / 2]).unwrap();
    let err = unpack_err(&p, "x");
    let (file, index, reason) = block_reason(&err);
    assert_eq!((file, index), ("/b", 0));
    assert!(matches!(reason, BlockError::IdMismatch { .. }), "{reason}");
}

#[test]
fn swapped_blocks_are_refused() {
    let p = Packed::new("tamper-swap", tree);
    let (x, y) = (p.blob_of("/a", 0), p.blob_of("/a", 1));
    let tmp = p.dir.path().join("swap");
    std::fs::rename(&x, &tmp).unwrap();
    std::fs::rename(&y, &x).unwrap();
    std::fs::rename(&tmp, &y).unwrap();
    let err = unpack_err(&p, "x");
    let (file, index, reason) = block_reason(&err);
    assert_eq!((file, index), ("/a", 0));
    assert!(matches!(reason, BlockError::IdMismatch { .. }), "{reason}");
    // verify reports it too, without writing anything.
    let err = verify_blocks(&p.flist(), &p.fetcher(), 2, None).unwrap_err();
    assert!(matches!(
        block_reason(&err).2,
        BlockError::IdMismatch { .. }
    ));
}

#[test]
fn wrong_key_in_the_flist_fails_decryption() {
    let p = Packed::new("tamper-key", tree);
    let conn = rusqlite::Connection::open(&p.fl).unwrap();
    let (rowid, mut key): (i64, Vec<u8>) = conn
        .query_row("SELECT rowid, key FROM block LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    key[0] ^= 1;
    conn.execute(
        "UPDATE block SET key = ?1 WHERE rowid = ?2",
        rusqlite::params![key, rowid],
    )
    .unwrap();
    drop(conn);
    let err = unpack_err(&p, "x");
    assert_eq!(block_reason(&err).2, &BlockError::Decrypt);
}

#[test]
fn block_encrypted_under_a_key_that_is_not_its_hash_is_a_key_mismatch() {
    use aes_gcm::aead::{Aead, KeyInit};
    let p = Packed::new("tamper-keyhash", |r| {
        std::fs::write(r.join("f"), b"tiny").unwrap()
    });
    // A store-and-flist pair made by someone who encrypts "evil" under a chosen key and
    // records that key: id and GCM check out, only the plaintext hash catches it.
    let key = [7u8; 32];
    let compressed = snap::raw::Encoder::new().compress_vec(b"evil").unwrap();
    let ct = aes_gcm::Aes256Gcm::new((&key).into())
        .encrypt(
            aes_gcm::Nonce::from_slice(&key[..12]),
            compressed.as_slice(),
        )
        .unwrap();
    let id = zos_flist::block::blake2b256(&ct);
    let hex = hex::encode(id);
    std::fs::create_dir_all(p.store.join(&hex[..2])).unwrap();
    std::fs::write(p.store.join(&hex[..2]).join(&hex), &ct).unwrap();
    let conn = rusqlite::Connection::open(&p.fl).unwrap();
    conn.execute(
        "UPDATE block SET id = ?1, key = ?2",
        rusqlite::params![&id[..], &key[..]],
    )
    .unwrap();
    drop(conn);
    let err = unpack_err(&p, "x");
    assert!(matches!(
        block_reason(&err).2,
        BlockError::KeyMismatch { .. }
    ));
}

fn signed(what: &str) -> (Packed, SecretKey) {
    let p = Packed::new(what, tree);
    let key = SecretKey::from_seed([42; 32]);
    sign_file(&p.fl, &key).unwrap();
    (p, key)
}

fn sign_err(e: Error) -> SignError {
    match e {
        Error::Sign(s) => s,
        other => panic!("expected a signature refusal, got {other}"),
    }
}

#[test]
fn signed_flist_opens_for_its_publisher_only() {
    let (p, key) = signed("sig-ok");
    let (fl, who) = open_trusted(&p.fl, &Trust::Publishers(vec![key.public()])).unwrap();
    assert_eq!(who, Some(key.public()));
    assert_eq!(
        fl.sha256,
        zos_contract::Digest::of(&std::fs::read(&p.fl).unwrap()).0
    );

    let stranger = SecretKey::from_seed([1; 32]).public();
    let err = sign_err(open_trusted(&p.fl, &Trust::Publishers(vec![stranger])).unwrap_err());
    assert_eq!(err, SignError::UntrustedSigner(key.public().to_hex()));
}

#[test]
fn flist_signed_by_an_untrusted_key_is_refused() {
    let p = Packed::new("sig-untrusted", tree);
    let mallory = SecretKey::from_seed([66; 32]);
    sign_file(&p.fl, &mallory).unwrap();
    let trusted = SecretKey::from_seed([42; 32]).public();
    let err = sign_err(open_trusted(&p.fl, &Trust::Publishers(vec![trusted])).unwrap_err());
    assert_eq!(err, SignError::UntrustedSigner(mallory.public().to_hex()));
}

#[test]
fn edited_flist_no_longer_matches_its_signature() {
    let (p, key) = signed("sig-edit");
    let conn = rusqlite::Connection::open(&p.fl).unwrap();
    conn.execute("UPDATE inode SET mode = mode | 2048 WHERE name = 'a'", [])
        .unwrap();
    drop(conn);
    let err = sign_err(open_trusted(&p.fl, &Trust::Publishers(vec![key.public()])).unwrap_err());
    assert!(matches!(err, SignError::DigestMismatch { .. }), "{err}");
}

#[test]
fn forged_signature_with_the_right_digest_is_refused() {
    let (p, key) = signed("sig-forged");
    let sig_path = zos_flist::sign::sig_path(&p.fl);
    let mut sig: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sig_path).unwrap()).unwrap();
    let mut s = sig["signature"].as_str().unwrap().to_string();
    s.replace_range(0..2, if &s[0..2] == "00" { "01" } else { "00" });
    sig["signature"] = s.into();
    std::fs::write(&sig_path, sig.to_string()).unwrap();
    let err = sign_err(open_trusted(&p.fl, &Trust::Publishers(vec![key.public()])).unwrap_err());
    assert_eq!(err, SignError::BadSignature(key.public().to_hex()));
}

#[test]
fn unsigned_flist_is_refused_unless_insecure() {
    let p = Packed::new("sig-none", tree);
    let k = SecretKey::from_seed([42; 32]).public();
    let err = sign_err(open_trusted(&p.fl, &Trust::Publishers(vec![k])).unwrap_err());
    assert!(matches!(err, SignError::Missing(_)), "{err}");
    let err = sign_err(open_trusted(&p.fl, &Trust::Publishers(vec![])).unwrap_err());
    assert_eq!(err, SignError::NoTrust);
    let (_, who) = open_trusted(&p.fl, &Trust::InsecureUnsigned).unwrap();
    assert_eq!(who, None);
}

#[test]
fn malformed_signature_file_is_refused() {
    let (p, key) = signed("sig-malformed");
    std::fs::write(zos_flist::sign::sig_path(&p.fl), b"{\"format\":1}").unwrap();
    let err = sign_err(open_trusted(&p.fl, &Trust::Publishers(vec![key.public()])).unwrap_err());
    assert!(matches!(err, SignError::Malformed { .. }), "{err}");
}

#[test]
fn rotten_cache_entry_is_dropped_and_refetched() {
    let p = Packed::new("cache-rot", tree);
    let cache_dir = p.dir.path().join("cache");
    let fetcher = Fetcher::new(
        Router::parse(&[p.store_url()]).unwrap(),
        Some(BlockCache::new(&cache_dir)),
    );
    verify_blocks(&p.flist(), &fetcher, 2, None).unwrap();
    let fl = p.flist();
    let b = fl.entries[fl.lookup("/b").unwrap()].blocks[0];
    let cache = BlockCache::new(&cache_dir);
    std::fs::write(cache.path(&b), b"rotten").unwrap();
    assert!(cache.get(&b).is_none());
    assert!(!cache.path(&b).exists(), "a bad cache entry is removed");
    let out = p.dir.path().join("out");
    unpack(&fl, &fetcher, &out, &Default::default()).unwrap();
    assert_same_tree(&p.src, &out);
    assert_cache_clean(&p, &cache_dir);
}

/// What a power cut can leave of a cache entry written without fsync: an empty file or
/// the block's first half under its name. Each is a miss, removed, and the unpack that
/// follows fetches the block again and matches the source.
#[test]
fn torn_cache_entries_after_a_power_cut_are_misses_and_refetched() {
    let p = Packed::new("cache-torn", tree);
    let cache_dir = p.dir.path().join("cache");
    let fetcher = Fetcher::new(
        Router::parse(&[p.store_url()]).unwrap(),
        Some(BlockCache::new(&cache_dir)),
    );
    verify_blocks(&p.flist(), &fetcher, 2, None).unwrap();
    let fl = p.flist();
    let b = fl.entries[fl.lookup("/b").unwrap()].blocks[0];
    let cache = BlockCache::new(&cache_dir);
    let whole = cache.get(&b).expect("cached by the verification");
    for torn in [&whole[..0], &whole[..whole.len() / 2]] {
        std::fs::write(cache.path(&b), torn).unwrap();
        assert!(
            cache.get(&b).is_none(),
            "a torn entry of {} bytes",
            torn.len()
        );
        assert!(!cache.path(&b).exists(), "a torn entry is removed");
    }
    let out = p.dir.path().join("out");
    unpack(&fl, &fetcher, &out, &Default::default()).unwrap();
    assert_same_tree(&p.src, &out);
    assert_cache_clean(&p, &cache_dir);
}
