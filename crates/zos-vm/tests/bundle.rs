//! The hypervisor bundle as a release part: collected from this host's QEMU, packed as
//! a signed flist and fetched back into a slot with zos-release's verification (the
//! pin, the publisher's signature, every block). A library swapped in the store after
//! the part was published is refused, and no slot is written.

use std::path::{Path, PathBuf};

use zos_contract::deployment::FlistRef;
use zos_contract::{Digest, SecretKey};
use zos_flist::{DirAccess, Flist, PackOptions, Router};
use zos_release::hypervisor;
use zos_release::PartError;

fn host_qemu(test: &str) -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("qemu-system-x86_64"))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("SKIP: {test}: no qemu-system-x86_64 on PATH (apt-get install qemu-system-x86)");
    }
    found
}

/// The bundle of the host's QEMU, packed under `dir` (`qemu.fl`, `store/`), signed.
fn published(qemu: &Path, dir: &Path) -> (hypervisor::Bundle, FlistRef) {
    let bundle = hypervisor::collect(qemu, &dir.join("tree")).unwrap();
    let fl = dir.join("qemu.fl");
    let store = format!("dir://{}", dir.join("store").display());
    zos_flist::pack(
        &bundle.dir,
        &fl,
        &Router::parse(std::slice::from_ref(&store)).unwrap(),
        &PackOptions::default(),
    )
    .unwrap();
    let key = SecretKey::generate().unwrap();
    zos_flist::sign_file(&fl, &key).unwrap();
    let part = FlistRef {
        url: format!("dir://{}", fl.display()),
        sha256: Digest::of(&std::fs::read(&fl).unwrap()),
        stores: vec![store],
        publishers: vec![key.public()],
    };
    (bundle, part)
}

/// The store file of the first block of `path` in the flist at `fl`.
fn block_of(fl: &Path, store: &Path, path: &str) -> PathBuf {
    let flist = Flist::open(fl).unwrap();
    let entry = &flist.entries[flist.lookup(path).unwrap()];
    let id = entry.blocks[0].id_hex();
    store.join(&id[..2]).join(&id)
}

#[test]
fn the_bundle_fetched_back_is_the_one_published() {
    let Some(qemu) = host_qemu("the_bundle_fetched_back_is_the_one_published") else {
        return;
    };
    let tmp = zos_testkit::tempdir("bundle");
    let dir = tmp.path().canonicalize().unwrap();
    let (bundle, part) = published(&qemu, &dir);
    let slot = dir.join("slots/qemu");
    zos_release::fetch_part("qemu", &part, &DirAccess::under([&dir]), &slot, 1 << 30).unwrap();
    for (rel, size) in &bundle.files {
        let got = std::fs::read(slot.join(rel)).unwrap();
        assert_eq!(got.len() as u64, *size, "{}", rel.display());
        assert_eq!(got, std::fs::read(bundle.dir.join(rel)).unwrap());
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(slot.join(hypervisor::LOADER))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "the loader stays executable: {mode:o}");
}

/// ATTACK: after the part is published, the block of the bundle's libc in the store is
/// replaced by another library's block (a valid block, the wrong one): a node fetching
/// the part refuses it as tampered and writes no slot (no partial one either).
#[test]
fn attack_a_library_swapped_in_the_store_is_refused_and_no_slot_is_written() {
    let test = "attack_a_library_swapped_in_the_store_is_refused_and_no_slot_is_written";
    let Some(qemu) = host_qemu(test) else {
        return;
    };
    let tmp = zos_testkit::tempdir("bundle");
    let dir = tmp.path().canonicalize().unwrap();
    let (_, part) = published(&qemu, &dir);
    let fl = dir.join("qemu.fl");
    let store = dir.join("store");
    let libc = block_of(&fl, &store, "lib/libc.so.6");
    let other = block_of(&fl, &store, "lib/libz.so.1");
    assert_ne!(libc, other);
    std::fs::write(&libc, std::fs::read(&other).unwrap()).unwrap();

    let slots = dir.join("slots");
    let slot = slots.join("qemu");
    let e = zos_release::fetch_part("qemu", &part, &DirAccess::under([&dir]), &slot, 1 << 30)
        .unwrap_err();
    eprintln!("{test}: {e}");
    assert!(
        matches!(&e, PartError::Tampered { part, .. } if part == "qemu"),
        "{e}"
    );
    assert_eq!(e.code(), "tampered_part");
    assert!(slot.symlink_metadata().is_err(), "a slot was written");
    let left: Vec<_> = std::fs::read_dir(&slots)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in the slots: {left:?}");
}
