//! Pack / unpack / verify / signatures on a generated tree with every file type.

mod common;

use std::fs;
use std::process::Command;
use std::sync::Arc;

use common::*;
use zos_image::error::{Error, SignatureError};
use zos_image::fetch::Fetcher;
use zos_image::image::{open_image, Trust};
use zos_image::pack::{pack_dir, PackOptions};
use zos_image::store::{DirStore, Object, Store};
use zos_image::{sign, unpack, verify, Hash};

fn pack(
    src: &std::path::Path,
    store: &std::path::Path,
    key: Option<&ed25519_dalek::SigningKey>,
) -> Hash {
    let store: Arc<dyn Store> = Arc::new(DirStore::open(store).unwrap());
    pack_dir(src, store, key, &PackOptions::default())
        .unwrap()
        .root
}

fn stores(p: &std::path::Path) -> Vec<Arc<dyn Store>> {
    vec![Arc::new(DirStore::open(p).unwrap())]
}

#[test]
fn round_trip_is_byte_identical_including_metadata() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let root = pack(&src, &tmp.path().join("store"), None);
    let sources = stores(&tmp.path().join("store"));
    let image = open_image(&sources, &root, &Trust::default()).unwrap();
    let fetcher = Fetcher::new(sources, None);
    let out = tmp.path().join("out");
    let report = unpack::unpack(&image.index, &fetcher, &out, false).unwrap();
    assert!(
        report.warnings.is_empty() || !is_root(),
        "{:?}",
        report.warnings
    );
    assert_same_tree(&src, &out);
}

#[test]
fn packing_is_deterministic_and_dedups() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let a = pack(&src, &tmp.path().join("a"), None);
    let b = pack(&src, &tmp.path().join("b"), None);
    // Packing into a store that already holds the chunks gives the same root too.
    let c = pack(&src, &tmp.path().join("a"), None);
    assert_eq!(a, b);
    assert_eq!(a, c);
    let ia = fs::read(
        DirStore::open(tmp.path().join("a"))
            .unwrap()
            .path_of(Object::Index(a)),
    )
    .unwrap();
    let ib = fs::read(
        DirStore::open(tmp.path().join("b"))
            .unwrap()
            .path_of(Object::Index(b)),
    )
    .unwrap();
    assert_eq!(ia, ib);
    assert_eq!(Hash::of(&ia), a);
    // A copied tree (different inode numbers, same content and metadata) packs identically.
    let copy = tmp.path().join("copy");
    let image = open_image(&stores(&tmp.path().join("a")), &a, &Trust::default()).unwrap();
    unpack::unpack(
        &image.index,
        &Fetcher::new(stores(&tmp.path().join("a")), None),
        &copy,
        false,
    )
    .unwrap();
    assert_eq!(pack(&copy, &tmp.path().join("c"), None), a);
    // big.bin and its copy share every chunk: the store holds them once.
    let stats = image.index.header();
    let idx = &image.index;
    let big = idx
        .inode(idx.resolve(b"big.bin").unwrap().unwrap())
        .unwrap();
    assert!(
        idx.file_chunk_count(&big) > 3,
        "big file must be cut into several chunks"
    );
    let unique: u64 = (0..idx.chunk_count())
        .map(|i| u64::from(idx.chunk(i).unwrap().raw_len))
        .sum();
    assert!(
        unique < 4_000_000,
        "duplicate 3 MB file was stored twice ({unique} bytes)"
    );
    assert!(stats.chunk_count < stats.chunk_ref_count);
}

#[test]
fn flipped_byte_in_a_chunk_fails_verification() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let store_dir = tmp.path().join("store");
    let root = pack(&src, &store_dir, None);
    let sources = stores(&store_dir);
    verify::verify_image(&sources, &root, &Trust::default(), false).unwrap();

    let image = open_image(&sources, &root, &Trust::default()).unwrap();
    let idx = &image.index;
    let file = idx
        .inode(idx.resolve(b"dir/sub/random.bin").unwrap().unwrap())
        .unwrap();
    let chunk = idx.chunk(idx.file_chunk(&file, 0).unwrap().chunk).unwrap();
    let path = DirStore::open(&store_dir)
        .unwrap()
        .path_of(Object::Chunk(chunk.hash));
    let mut bytes = fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    fs::write(&path, &bytes).unwrap();

    match verify::verify_image(&sources, &root, &Trust::default(), false) {
        Err(Error::VerifyFailed {
            corrupt: 1,
            missing: 0,
            ..
        }) => {}
        other => panic!("expected one corrupt chunk, got {other:?}"),
    }
    // Unpack refuses as well instead of writing bad data.
    let fetcher = Fetcher::new(sources.clone(), None);
    let err = unpack::unpack(&image.index, &fetcher, &tmp.path().join("out"), false).unwrap_err();
    assert!(matches!(err, Error::ChunkCorrupt { .. }), "{err}");
    // The CLI reports it with a non-zero exit status.
    let out = Command::new(bin())
        .args(["verify", &root.to_string(), "--store"])
        .arg(&store_dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corrupt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A missing chunk is reported as missing.
    fs::remove_file(&path).unwrap();
    match verify::verify_image(&sources, &root, &Trust::default(), false) {
        Err(Error::VerifyFailed { missing: 1, .. }) => {}
        other => panic!("expected one missing chunk, got {other:?}"),
    }
}

#[test]
fn signatures_are_enforced() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"content").unwrap();
    let signer = sign::generate().unwrap();
    let other = sign::generate().unwrap();
    let store_dir = tmp.path().join("store");
    let root = pack(&src, &store_dir, Some(&signer));
    let sources = stores(&store_dir);
    let trust_signer = Trust {
        keys: vec![signer.verifying_key()],
    };
    let trust_other = Trust {
        keys: vec![other.verifying_key()],
    };

    open_image(&sources, &root, &trust_signer).unwrap();
    open_image(&sources, &root, &Trust::default()).unwrap();
    match open_image(&sources, &root, &trust_other) {
        Err(Error::Signature(SignatureError::UntrustedKey { .. })) => {}
        other => panic!("wrong key must be refused, got {:?}", other.err()),
    }
    match verify::verify_image(&sources, &root, &trust_other, false) {
        Err(Error::Signature(SignatureError::UntrustedKey { .. })) => {}
        other => panic!("verify must refuse too, got {other:?}"),
    }

    // A signature by the trusted key over a different root is refused.
    let store = DirStore::open(&store_dir).unwrap();
    let forged = sign::sign(&Hash::of(b"another image"), &signer);
    store.put(Object::Signature(root), &forged).unwrap();
    assert!(matches!(
        open_image(&sources, &root, &trust_signer),
        Err(Error::Signature(SignatureError::Invalid(_)))
    ));
    // Garbage signature file.
    store.put(Object::Signature(root), b"nonsense").unwrap();
    assert!(matches!(
        open_image(&sources, &root, &trust_signer),
        Err(Error::Signature(SignatureError::Malformed(_)))
    ));
    // No signature at all.
    fs::remove_file(store.path_of(Object::Signature(root))).unwrap();
    assert!(matches!(
        open_image(&sources, &root, &trust_signer),
        Err(Error::Signature(SignatureError::Missing(_)))
    ));

    // A tampered index no longer matches its root.
    let idx_path = store.path_of(Object::Index(root));
    let mut idx = fs::read(&idx_path).unwrap();
    let last = idx.len() - 1;
    idx[last] ^= 0x20;
    fs::write(&idx_path, &idx).unwrap();
    assert!(matches!(
        open_image(&sources, &root, &Trust::default()),
        Err(Error::RootMismatch { .. })
    ));
}

#[test]
fn cli_pack_sign_verify_and_wrong_key() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("a"), b"alpha").unwrap();
    let key = tmp.path().join("key");
    let wrong = tmp.path().join("wrong");
    assert!(Command::new(bin())
        .arg("keygen")
        .arg(&key)
        .status()
        .unwrap()
        .success());
    assert!(Command::new(bin())
        .arg("keygen")
        .arg(&wrong)
        .status()
        .unwrap()
        .success());
    let store = tmp.path().join("store");
    let out = Command::new(bin())
        .arg("pack")
        .arg(&src)
        .arg("--store")
        .arg(&store)
        .arg("--sign")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let root = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let verify = |k: &std::path::Path| {
        Command::new(bin())
            .args(["verify", &root, "--store"])
            .arg(&store)
            .arg("--trust")
            .arg(format!("{}.pub", k.display()))
            .output()
            .unwrap()
    };
    let ok = verify(&key);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("signed"));
    let bad = verify(&wrong);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a trusted key"));
    // A corrupt index gives a clear error, not a panic.
    let idx = store.join("images").join(format!("{root}.idx"));
    fs::write(&idx, b"ZOSIMG\0\0garbage").unwrap();
    let corrupt = Command::new(bin())
        .args(["inspect", &root, "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert_eq!(corrupt.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&corrupt.stderr).contains("error:"));
    let inspect_missing = Command::new(bin())
        .args(["inspect", &"0".repeat(64), "--store"])
        .arg(&store)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&inspect_missing.stderr).contains("not found"));
}
