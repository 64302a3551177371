//! Shared test helpers: a generated tree with every file type, tree comparison, FUSE checks.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// FUSE tests need /dev/fuse and root (for allow_other, device nodes and overlayfs).
pub fn fuse_available() -> bool {
    if !Path::new("/dev/fuse").exists() {
        eprintln!("SKIPPED: /dev/fuse is not available");
        return false;
    }
    if !is_root() {
        eprintln!("SKIPPED: FUSE tests need root");
        return false;
    }
    true
}

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

pub fn set_times(p: &Path, sec: i64, nsec: i64) {
    let t = libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let ts = [t, t];
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cpath(p).as_ptr(),
            ts.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0, "utimensat {}", p.display());
}

fn mknod(p: &Path, mode: u32, dev: u64) {
    let rc = unsafe { libc::mknod(cpath(p).as_ptr(), mode, dev as libc::dev_t) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// Build a tree with every file type the format supports.
pub fn make_tree(root: &Path) {
    let root_user = is_root();
    fs::create_dir_all(root.join("dir/sub/deeper")).unwrap();
    fs::create_dir(root.join("private")).unwrap();
    fs::create_dir(root.join("sticky")).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("hello.txt"), b"hello world\n").unwrap();
    fs::write(
        root.join("dir/text.txt"),
        "some text that compresses well. ".repeat(4000),
    )
    .unwrap();
    fs::write(root.join("dir/sub/random.bin"), random_bytes(100_000, 1)).unwrap();
    // Large enough for several content-defined chunks.
    let big = random_bytes(3_000_000, 2);
    fs::write(root.join("big.bin"), &big).unwrap();
    // Same content again: must dedup to the same chunks.
    fs::write(root.join("dir/sub/deeper/big-copy.bin"), &big).unwrap();
    fs::write(root.join("setuid"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(root.join("sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(root.join("private/secret"), b"s3cret").unwrap();
    fs::set_permissions(
        root.join("private/secret"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::os::unix::fs::symlink("hello.txt", root.join("link-rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("link-abs")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dir/dangling")).unwrap();
    fs::hard_link(root.join("hello.txt"), root.join("dir/hardlink")).unwrap();
    fs::hard_link(root.join("hello.txt"), root.join("dir/sub/hardlink2")).unwrap();
    mknod(&root.join("fifo"), libc::S_IFIFO | 0o644, 0);
    {
        let sock = root.join("sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    }
    if root_user {
        mknod(
            &root.join("null"),
            libc::S_IFCHR | 0o666,
            libc::makedev(1, 3),
        );
        mknod(
            &root.join("loop9"),
            libc::S_IFBLK | 0o660,
            libc::makedev(7, 9),
        );
        std::os::unix::fs::lchown(root.join("dir/text.txt"), Some(1234), Some(5678)).unwrap();
        std::os::unix::fs::lchown(root.join("link-rel"), Some(42), Some(43)).unwrap();
        std::os::unix::fs::lchown(root.join("private"), Some(1000), Some(1000)).unwrap();
        fs::set_permissions(root.join("setuid"), fs::Permissions::from_mode(0o4755)).unwrap();
    }
    // Raw-byte names: invalid UTF-8, newline, spaces.
    let raw = root.join(OsString::from_vec(b"caf\xe9-\xff\xfe".to_vec()));
    fs::write(&raw, b"latin-1 name").unwrap();
    fs::write(root.join("name with\nnewline and spaces"), b"x").unwrap();
    xattr::set(root.join("hello.txt"), "user.comment", b"greeting").unwrap();
    xattr::set(root.join("dir"), "user.dirattr", b"\x00\x01binary").unwrap();
    xattr::set(&raw, "user.empty", b"").unwrap();
    if root_user {
        xattr::set(root.join("big.bin"), "trusted.zos", b"trusted value").unwrap();
    }
    // Nanosecond times on everything, children before parents.
    let mut all = Vec::new();
    collect(root, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        set_times(p, 1_600_000_000 + i as i64 * 1000, 123_456_789 - i as i64);
    }
    set_times(root, 1_500_000_000, 987_654_321);
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.clone());
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            collect(&p, out);
        }
    }
}

/// Everything observable about one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Entry {
    kind: &'static str,
    perm: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: (i64, i64),
    rdev: u64,
    nlink: u64,
    target: Option<Vec<u8>>,
    content: Option<blake3::Hash>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// First path (in sorted order) sharing this inode, for hardlink structure.
    link_group: Vec<u8>,
}

pub fn snapshot(root: &Path) -> BTreeMap<Vec<u8>, Entry> {
    let mut out = BTreeMap::new();
    let mut groups: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut paths = vec![PathBuf::new()];
    collect_rel(root, Path::new(""), &mut paths);
    paths.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    for rel in paths {
        let p = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let md = fs::symlink_metadata(&p).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else if ft.is_fifo() {
            "fifo"
        } else {
            "socket"
        };
        let key = rel.as_os_str().as_bytes().to_vec();
        let link_group = groups
            .entry(md.ino())
            .or_insert_with(|| key.clone())
            .clone();
        let mut xattrs = BTreeMap::new();
        for name in xattr::list(&p).unwrap() {
            let v = xattr::get(&p, &name).unwrap().unwrap_or_default();
            xattrs.insert(name.as_bytes().to_vec(), v);
        }
        out.insert(
            key,
            Entry {
                kind,
                perm: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: if ft.is_dir() { 0 } else { md.len() },
                mtime: (md.mtime(), md.mtime_nsec()),
                rdev: md.rdev(),
                nlink: if ft.is_dir() { 0 } else { md.nlink() },
                target: ft
                    .is_symlink()
                    .then(|| fs::read_link(&p).unwrap().into_os_string().into_vec()),
                content: ft.is_file().then(|| blake3::hash(&fs::read(&p).unwrap())),
                xattrs,
                link_group: if ft.is_dir() { Vec::new() } else { link_group },
            },
        );
    }
    out
}

fn collect_rel(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let mut names: Vec<OsString> = fs::read_dir(root.join(rel))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for n in names {
        let r = rel.join(&n);
        out.push(r.clone());
        if fs::symlink_metadata(root.join(&r)).unwrap().is_dir() {
            collect_rel(root, &r, out);
        }
    }
}

pub fn assert_same_tree(a: &Path, b: &Path) {
    let (sa, sb) = (snapshot(a), snapshot(b));
    let ka: Vec<_> = sa
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    let kb: Vec<_> = sb
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(ka, kb, "different entries");
    for (k, ea) in &sa {
        assert_eq!(
            Some(ea),
            sb.get(k),
            "entry {:?} differs",
            OsStr::from_bytes(k)
        );
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_zos-image")
}

pub fn is_mounted(p: &Path) -> bool {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let needle = p.to_string_lossy();
    text.lines().any(|l| l.split(' ').nth(4) == Some(&needle))
}

pub fn wait_mounted(p: &Path) {
    for _ in 0..500 {
        if is_mounted(p) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} never got mounted", p.display());
}

pub fn force_unmount(p: &Path) {
    let quiet = |c: &mut Command| {
        let _ = c
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    };
    quiet(Command::new("fusermount3").arg("-u").arg("-z").arg(p));
    quiet(Command::new("umount").arg("-l").arg(p));
}
