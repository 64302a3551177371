//! Through the real FUSE mount: metadata and content, EIO on tampered chunks, crash-safe cache,
//! writable overlay.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use zos_image::cache::ChunkCache;
use zos_image::chunk::decode_object;
use zos_image::fetch::Fetcher;
use zos_image::image::{open_image, Trust};
use zos_image::mount::{mount, MountOptions};
use zos_image::pack::{pack_dir, PackOptions};
use zos_image::store::{DirStore, Object, Store};
use zos_image::Hash;

fn pack(src: &Path, store: &Path) -> Hash {
    let store: Arc<dyn Store> = Arc::new(DirStore::open(store).unwrap());
    pack_dir(src, store, None, &PackOptions::default())
        .unwrap()
        .root
}

fn sources(dirs: &[&Path]) -> Vec<Arc<dyn Store>> {
    dirs.iter()
        .map(|d| Arc::new(DirStore::open(d).unwrap()) as Arc<dyn Store>)
        .collect()
}

fn chunk_path_of(store: &Path, root: &Hash, file: &[u8]) -> PathBuf {
    let image = open_image(&sources(&[store]), root, &Trust::default()).unwrap();
    let idx = &image.index;
    let inode = idx.inode(idx.resolve(file).unwrap().unwrap()).unwrap();
    let chunk = idx.chunk(idx.file_chunk(&inode, 0).unwrap().chunk).unwrap();
    DirStore::open(store)
        .unwrap()
        .path_of(Object::Chunk(chunk.hash))
}

#[test]
fn mount_shows_the_exact_tree() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let store = tmp.path().join("store");
    let root = pack(&src, &store);
    let image = open_image(&sources(&[&store]), &root, &Trust::default()).unwrap();
    let (cache, _) = ChunkCache::open(tmp.path().join("cache"), 1 << 30).unwrap();
    let fetcher = Arc::new(Fetcher::new(sources(&[&store]), Some(cache)));
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let handle = mount(image.index, fetcher.clone(), &mnt, &MountOptions::default()).unwrap();
    assert_same_tree(&src, &mnt);
    // Lazy: nothing beyond what was read has been fetched, and re-reads hit the caches.
    let fetched = fetcher
        .stats
        .fetched_chunks
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_same_tree(&src, &mnt);
    assert_eq!(
        fetched,
        fetcher
            .stats
            .fetched_chunks
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    handle.unmount().unwrap();
    assert!(!is_mounted(&mnt));
}

/// Small files are packed into shared chunks; once one is read, the mount stores the others the
/// kernel knows into its page cache, so a tree walk reads them without a READ each - and what the
/// kernel then serves must be exactly the files' bytes.
#[test]
fn packed_small_files_reach_the_page_cache_with_exact_content() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let mut files = 0u64;
    for dir in ["a", "a/inner", "b"] {
        fs::create_dir_all(src.join(dir)).unwrap();
        for i in 0..60u64 {
            let len = 100 + (i * 397) % 4000;
            fs::write(
                src.join(dir).join(format!("f{i:03}")),
                random_bytes(len as usize, i + 1000 * files),
            )
            .unwrap();
            files += 1;
        }
    }
    let store = tmp.path().join("store");
    let root = pack(&src, &store);
    let image = open_image(&sources(&[&store]), &root, &Trust::default()).unwrap();
    let fetcher = Arc::new(Fetcher::new(sources(&[&store]), None));
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let handle = mount(image.index, fetcher, &mnt, &MountOptions::default()).unwrap();
    // As `ls -lR` before `tar`: every file is known to the kernel before any is read (which
    // files a bare readdir announces depends on the kernel's readdirplus heuristics).
    for dir in ["a", "a/inner", "b"] {
        for entry in fs::read_dir(mnt.join(dir)).unwrap() {
            fs::symlink_metadata(entry.unwrap().path()).unwrap();
        }
    }
    assert_same_tree(&src, &mnt);
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let (reads, pushed) = (
        load(&handle.stats().reads),
        load(&handle.stats().pushed_files),
    );
    eprintln!("{reads} READs for {files} small files, {pushed} stored ahead of their read");
    assert!(pushed > 0, "no small file was stored ahead of its read");
    assert!(
        reads < files / 2,
        "{reads} READs for {files} small files: the page cache was not used"
    );
    handle.unmount().unwrap();
}

#[test]
fn tampered_chunk_gives_eio_and_a_good_replica_is_used() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    make_tree(&src);
    let bad_store = tmp.path().join("bad");
    let good_store = tmp.path().join("good");
    let root = pack(&src, &bad_store);
    assert_eq!(pack(&src, &good_store), root);
    let chunk = chunk_path_of(&bad_store, &root, b"dir/sub/random.bin");
    let original = fs::read(&chunk).unwrap();
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 0x40;
    fs::write(&chunk, &flipped).unwrap();

    // Only the tampered store: EIO, while other files still read fine.
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let image = open_image(&sources(&[&bad_store]), &root, &Trust::default()).unwrap();
    let (cache, _) = ChunkCache::open(tmp.path().join("cache"), 1 << 30).unwrap();
    let fetcher = Arc::new(Fetcher::new(sources(&[&bad_store]), Some(cache)));
    let handle = mount(image.index, fetcher, &mnt, &MountOptions::default()).unwrap();
    let err = fs::read(mnt.join("dir/sub/random.bin")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert_eq!(fs::read(mnt.join("hello.txt")).unwrap(), b"hello world\n");
    // Nothing unverified reached the cache.
    let hash: Hash = chunk
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let (cache_check, _) = ChunkCache::open(tmp.path().join("cache"), 1 << 30).unwrap();
    assert!(!cache_check.contains(&hash));
    // Once the store is repaired the same mount serves the file: failures are not cached.
    fs::write(&chunk, &original).unwrap();
    assert_eq!(
        fs::read(mnt.join("dir/sub/random.bin")).unwrap(),
        fs::read(src.join("dir/sub/random.bin")).unwrap()
    );
    handle.unmount().unwrap();

    // Tampered store first, good replica second: the read succeeds from the replica.
    fs::write(&chunk, &flipped).unwrap();
    let image = open_image(&sources(&[&bad_store]), &root, &Trust::default()).unwrap();
    let fetcher = Arc::new(Fetcher::new(sources(&[&bad_store, &good_store]), None));
    let mnt2 = tmp.path().join("mnt2");
    fs::create_dir(&mnt2).unwrap();
    let handle = mount(
        image.index,
        fetcher.clone(),
        &mnt2,
        &MountOptions::default(),
    )
    .unwrap();
    assert_eq!(
        fs::read(mnt2.join("dir/sub/random.bin")).unwrap(),
        fs::read(src.join("dir/sub/random.bin")).unwrap()
    );
    handle.unmount().unwrap();
}

fn spawn_mount(root: &Hash, mnt: &Path, store: &Path, cache: &Path) -> Child {
    Command::new(bin())
        .args(["mount", &root.to_string()])
        .arg(mnt)
        .arg("--store")
        .arg(store)
        .arg("--cache")
        .arg(cache)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn assert_cache_entries_valid(cache: &Path) -> (usize, usize) {
    let (mut valid, mut temp) = (0, 0);
    for shard in fs::read_dir(cache).unwrap() {
        let shard = shard.unwrap().path();
        if !shard.is_dir() {
            continue;
        }
        for e in fs::read_dir(&shard).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                temp += 1;
                continue;
            }
            let object = fs::read(e.path()).unwrap();
            let hash: Hash = name.parse().unwrap();
            assert!(
                decode_object(&hash, &object, None).is_ok(),
                "torn or wrong cache entry {name}"
            );
            valid += 1;
        }
    }
    (valid, temp)
}

#[test]
fn cache_survives_kill_9_mid_write() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir(&src).unwrap();
    let data = random_bytes(48 << 20, 7);
    fs::write(src.join("large.bin"), &data).unwrap();
    let store = tmp.path().join("store");
    let root = pack(&src, &store);
    let cache = tmp.path().join("cache");
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();

    // Kill at many points of a cold read, each time over a fresh cache, and once more over a
    // cache that already holds part of the file.
    let mut interrupted = 0;
    let delays = [5u64, 10, 15, 20, 30, 45, 60, 90, 150];
    for (i, delay_ms) in delays.iter().enumerate() {
        if i + 1 < delays.len() && i > 0 {
            let _ = fs::remove_dir_all(&cache);
        }
        let child = spawn_mount(&root, &mnt, &store, &cache);
        wait_mounted(&mnt);
        let path = mnt.join("large.bin");
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 20];
            if let Ok(mut f) = fs::File::open(path) {
                while matches!(f.read(&mut buf), Ok(n) if n > 0) {}
            }
        });
        std::thread::sleep(Duration::from_millis(*delay_ms));
        let mut child = child;
        child.kill().unwrap(); // SIGKILL: no cleanup of any kind
        child.wait().unwrap();
        force_unmount(&mnt);
        reader.join().unwrap();
        let (valid, temp) = assert_cache_entries_valid(&cache);
        interrupted += temp;
        eprintln!(
            "after kill at {delay_ms} ms: {valid} valid cache entries, {temp} interrupted writes"
        );
    }
    eprintln!("{interrupted} interrupted writes in total");

    // Damage one entry the way a non-atomic writer would (truncated under its final name) and
    // leave a stray temporary file: neither may be served.
    let mut victim = None;
    for shard in fs::read_dir(&cache).unwrap() {
        let shard = shard.unwrap().path();
        if let Some(e) = fs::read_dir(&shard)
            .unwrap()
            .flatten()
            .find(|e| !e.file_name().to_string_lossy().ends_with(".tmp"))
        {
            victim = Some(e.path());
            break;
        }
    }
    let victim = victim.expect("some chunk was cached before the kills");
    let len = fs::metadata(&victim).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    fs::write(victim.parent().unwrap().join(".junk.1.2.tmp"), b"partial").unwrap();

    let child = spawn_mount(&root, &mnt, &store, &cache);
    wait_mounted(&mnt);
    let read = fs::read(mnt.join("large.bin")).unwrap();
    assert!(
        read == data,
        "content read after crashes differs from the source"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&mnt));
    let (valid, temp) = assert_cache_entries_valid(&cache);
    assert_eq!(temp, 0, "interrupted writes must be cleaned up on open");
    assert!(valid > 0);
}

#[test]
fn writable_overlay_keeps_the_image_untouched() {
    if !fuse_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("etc")).unwrap();
    fs::write(src.join("etc/hostname"), b"image\n").unwrap();
    fs::write(src.join("keep"), b"unchanged").unwrap();
    let store = tmp.path().join("store");
    let root = pack(&src, &store);
    let mnt = tmp.path().join("rootfs");
    let state = tmp.path().join("state");
    fs::create_dir(&mnt).unwrap();
    let mut child = Command::new(bin())
        .args(["mount", &root.to_string()])
        .arg(&mnt)
        .arg("--store")
        .arg(&store)
        .arg("--cache")
        .arg(tmp.path().join("cache"))
        .arg("--writable")
        .arg(&state)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_mounted(&mnt);
    // Overlay is mounted right after the FUSE mount; wait until it shows image content.
    for _ in 0..200 {
        if mnt.join("keep").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(fs::read(mnt.join("etc/hostname")).unwrap(), b"image\n");
    fs::write(mnt.join("etc/hostname"), b"vm-1\n").unwrap();
    fs::write(mnt.join("new-file"), b"created in the vm").unwrap();
    fs::remove_file(mnt.join("keep")).unwrap();
    assert_eq!(fs::read(mnt.join("etc/hostname")).unwrap(), b"vm-1\n");
    assert!(!mnt.join("keep").exists());
    // The read-only lower layer still shows the image.
    assert_eq!(
        fs::read(state.join("lower/etc/hostname")).unwrap(),
        b"image\n"
    );
    assert!(state.join("lower/keep").exists());
    assert_eq!(
        fs::read(state.join("upper/new-file")).unwrap(),
        b"created in the vm"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success());
    assert!(!is_mounted(&mnt));
    assert!(!is_mounted(&state.join("lower")));
}

/// Runs `program args` as the unprivileged user `nobody` (uid/gid 65534); returns its exit
/// success and output.
fn run_as_nobody(program: &Path, args: &[&str]) -> (bool, String) {
    use std::os::unix::process::CommandExt;
    match Command::new(program)
        .args(args)
        .uid(65534)
        .gid(65534)
        .output()
    {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// An image is a stranger's tree. One carrying a world-writable block device node of the host's
/// own disk and a setuid-root binary must give nobody on the host anything: by default only the
/// mounting user may enter the mount at all, the device node does not open even for root
/// (nodev), and with the mount opened to every user the setuid bit does not elevate (nosuid).
#[test]
fn hostile_device_nodes_and_setuid_binaries_stay_inert_on_the_host() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !fuse_available() || !is_root() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Let `nobody` traverse down to the mountpoint, as on a host where the data dir is 0755.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let src = tmp.path().join("src");
    fs::create_dir_all(src.join("dev")).unwrap();
    fs::create_dir_all(src.join("bin")).unwrap();
    // The block device holding the host's root filesystem, readable and writable by anyone.
    let host_disk = fs::metadata("/").unwrap().dev();
    let node = src.join("dev/hostdisk");
    let c = std::ffi::CString::new(node.to_str().unwrap()).unwrap();
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFBLK | 0o666, host_disk as libc::dev_t) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
    fs::set_permissions(&node, fs::Permissions::from_mode(0o666)).unwrap();
    // A setuid-root `id`: run by anyone it would report uid 0 where setuid works.
    let id = ["/usr/bin/id", "/bin/id"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("coreutils id");
    fs::copy(id, src.join("bin/id")).unwrap();
    fs::set_permissions(src.join("bin/id"), fs::Permissions::from_mode(0o4755)).unwrap();

    let store = tmp.path().join("store");
    let root = pack(&src, &store);
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    fs::set_permissions(&mnt, fs::Permissions::from_mode(0o755)).unwrap();
    let mount_with = |opts: &MountOptions| {
        let image = open_image(&sources(&[&store]), &root, &Trust::default()).unwrap();
        let fetcher = Arc::new(Fetcher::new(sources(&[&store]), None));
        mount(image.index, fetcher, &mnt, opts).unwrap()
    };

    // Default options: the image's tree exists for the mounting user only.
    let handle = mount_with(&MountOptions::default());
    let meta = fs::symlink_metadata(mnt.join("dev/hostdisk")).unwrap();
    assert_eq!(
        meta.mode() & 0o777,
        0o666,
        "the node is in the image as packed"
    );
    assert_eq!(
        fs::File::open(mnt.join("dev/hostdisk"))
            .map(|_| ())
            .unwrap_err()
            .kind(),
        std::io::ErrorKind::PermissionDenied,
        "a device node inside an image must not open on the host, even for root"
    );
    let (ran, out) = run_as_nobody(&mnt.join("bin/id"), &["-u"]);
    assert!(
        !ran,
        "an unprivileged user ran a binary from the image: {out}"
    );
    let (read, out) = run_as_nobody(
        Path::new("/bin/cat"),
        &[mnt.join("dev/hostdisk").to_str().unwrap()],
    );
    assert!(
        !read,
        "an unprivileged user read the host disk through the image: {out}"
    );
    let (listed, out) = run_as_nobody(Path::new("/bin/ls"), &[mnt.to_str().unwrap()]);
    assert!(!listed, "an unprivileged user listed the image: {out}");
    let stat = nix_statvfs(&mnt);
    assert!(
        stat & libc::ST_NODEV != 0 && stat & libc::ST_NOSUID != 0,
        "flags {stat:#x}"
    );
    handle.unmount().unwrap();

    // Even opened to every user (a developer's `--allow-other`), setuid does not elevate and
    // the device node stays closed.
    let handle = mount_with(&MountOptions {
        allow_other: true,
        ..Default::default()
    });
    let (ran, out) = run_as_nobody(&mnt.join("bin/id"), &["-u"]);
    assert!(ran, "running the image's id as nobody: {out}");
    assert_eq!(out.trim(), "65534", "the setuid bit elevated a user");
    let (read, out) = run_as_nobody(
        Path::new("/bin/cat"),
        &[mnt.join("dev/hostdisk").to_str().unwrap()],
    );
    assert!(
        !read,
        "an unprivileged user read the host disk through the image: {out}"
    );
    handle.unmount().unwrap();
}

/// The mount flags of `path` (statvfs f_flag).
fn nix_statvfs(path: &Path) -> libc::c_ulong {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    st.f_flag
}
