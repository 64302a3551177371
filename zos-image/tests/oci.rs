//! Container image import: docker-save tarball and OCI layout, layers with whiteouts.

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;

fn header(path: &str, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(1_650_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn add_dir(b: &mut tar::Builder<impl Write>, path: &str) {
    let mut h = header(path, tar::EntryType::Directory, 0o755, 0);
    h.set_cksum();
    b.append(&h, std::io::empty()).unwrap();
}

fn add_file(b: &mut tar::Builder<impl Write>, path: &str, data: &[u8], mode: u32) {
    let mut h = header(path, tar::EntryType::Regular, mode, data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn add_link(b: &mut tar::Builder<impl Write>, path: &str, target: &str, kind: tar::EntryType) {
    let mut h = header(path, kind, 0o777, 0);
    h.set_link_name(target).unwrap();
    h.set_cksum();
    b.append(&h, std::io::empty()).unwrap();
}

fn layer1() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for d in ["etc/", "bin/", "opt/", "opt/dir/", "usr/", "usr/bin/"] {
        add_dir(&mut b, d);
    }
    add_file(&mut b, "etc/hostname", b"base\n", 0o644);
    add_file(&mut b, "etc/remove-me", b"gone soon", 0o644);
    add_file(&mut b, "opt/dir/a", b"a", 0o644);
    add_file(&mut b, "opt/dir/b", b"b", 0o644);
    add_file(&mut b, "bin/sh", b"\x7fELF pretend shell", 0o755);
    add_link(&mut b, "bin/sh2", "bin/sh", tar::EntryType::Link);
    add_link(&mut b, "usr/bin/sh", "/bin/sh", tar::EntryType::Symlink);
    b.into_inner().unwrap()
}

fn layer2_gz() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    add_dir(&mut b, "etc/");
    add_file(&mut b, "etc/hostname", b"layer2\n", 0o644);
    add_file(&mut b, "etc/.wh.remove-me", b"", 0o644);
    add_dir(&mut b, "opt/dir/");
    add_file(&mut b, "opt/dir/c", b"c", 0o600);
    add_file(&mut b, "opt/dir/.wh..wh..opq", b"", 0o644);
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    // Digest names only need to be consistent inside the layout; the importer does not trust them.
    blake3::hash(data).to_hex().to_string()
}

fn docker_archive(path: &Path) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    let manifest = br#"[{"Config":"config.json","RepoTags":["test:latest"],"Layers":["l1/layer.tar","l2/layer.tar"]}]"#;
    add_file(&mut b, "manifest.json", manifest, 0o644);
    add_file(&mut b, "config.json", b"{}", 0o644);
    add_dir(&mut b, "l1/");
    add_dir(&mut b, "l2/");
    add_file(&mut b, "l1/layer.tar", &layer1(), 0o644);
    add_file(&mut b, "l2/layer.tar", &layer2_gz(), 0o644);
    b.finish().unwrap();
}

fn oci_layout(dir: &Path) {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs).unwrap();
    let put = |data: &[u8]| {
        let d = sha256_hex(data);
        fs::write(blobs.join(&d), data).unwrap();
        format!("sha256:{d}")
    };
    let l1 = put(&layer1());
    let l2 = put(&layer2_gz());
    let manifest = format!(
        r#"{{"schemaVersion":2,"layers":[{{"digest":"{l1}","mediaType":"application/vnd.oci.image.layer.v1.tar"}},{{"digest":"{l2}","mediaType":"application/vnd.oci.image.layer.v1.tar+gzip"}}]}}"#
    );
    let m = put(manifest.as_bytes());
    fs::write(
        dir.join("index.json"),
        format!(r#"{{"schemaVersion":2,"manifests":[{{"digest":"{m}"}}]}}"#),
    )
    .unwrap();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

fn pack_cli(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(bin()).arg("pack").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn docker_and_oci_imports_apply_layers_and_whiteouts() {
    if !is_root() {
        eprintln!("SKIPPED: container import restores ownership and needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("image.tar");
    docker_archive(&archive);
    let store = tmp.path().join("store");
    let root = pack_cli(&[archive.as_os_str(), "--store".as_ref(), store.as_os_str()]);
    // Importing again gives the same root.
    assert_eq!(
        pack_cli(&[archive.as_os_str(), "--store".as_ref(), store.as_os_str()]),
        root
    );

    let layout = tmp.path().join("layout");
    oci_layout(&layout);
    let oci_root = pack_cli(&[
        layout.as_os_str(),
        "--oci".as_ref(),
        "--store".as_ref(),
        store.as_os_str(),
    ]);
    assert_eq!(
        oci_root, root,
        "docker-save and OCI layout of the same layers differ"
    );

    let out = tmp.path().join("out");
    let status = Command::new(bin())
        .args(["unpack", &root])
        .arg(&out)
        .arg("--store")
        .arg(&store)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(fs::read(out.join("etc/hostname")).unwrap(), b"layer2\n");
    assert!(!out.join("etc/remove-me").exists(), "whiteout not applied");
    let mut opt: Vec<String> = fs::read_dir(out.join("opt/dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    opt.sort();
    assert_eq!(opt, vec!["c"], "opaque directory must hide lower entries");
    assert_eq!(
        fs::metadata(out.join("opt/dir/c")).unwrap().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::read_link(out.join("usr/bin/sh")).unwrap(),
        Path::new("/bin/sh")
    );
    let a = fs::metadata(out.join("bin/sh")).unwrap();
    let b = fs::metadata(out.join("bin/sh2")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hardlink lost");
    assert_eq!(a.mode() & 0o777, 0o755);
    assert_eq!(
        fs::metadata(out.join("etc")).unwrap().mtime(),
        1_650_000_000
    );
    // The scratch directory used for the import is gone.
    assert!(fs::read_dir(tmp.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".zos-image-import")));
}

#[test]
fn bad_container_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let junk = tmp.path().join("junk.tar");
    let mut b = tar::Builder::new(fs::File::create(&junk).unwrap());
    add_file(&mut b, "hello", b"not an image", 0o644);
    b.finish().unwrap();
    drop(b);
    let out = Command::new(bin())
        .arg("pack")
        .arg(&junk)
        .arg("--store")
        .arg(tmp.path().join("s"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("manifest.json") && err.contains("index.json"),
        "{err}"
    );
}
