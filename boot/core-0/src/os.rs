//! The OS payload: the release's image, mounted lazily and verified chunk by chunk by
//! zos-image, made into the root the services run in.

use std::{
    io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use crate::supervisor::{pump, SharedRing};

/// zos-image in the initramfs (with the libraries it links), put there by boot/build.sh.
pub const ZOS_IMAGE: &str = "/bin/zos-image";
/// Chunk cache bounds: the payload is read lazily, most of it never. In memory (no data
/// disk) the cache takes RAM from workloads, so it is kept small.
const CACHE_SIZE_ON_DISK: &str = "2G";
const CACHE_SIZE_IN_MEMORY: &str = "256M";

/// Where one release's OS lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OsPaths {
    /// The services' root: the image with a writable layer over it.
    pub root: PathBuf,
    /// The writable layer and the image's read-only mount (under `lower`).
    pub state: PathBuf,
    /// The chunk cache.
    pub cache: PathBuf,
    /// Whether the cache is on the data disk (else in memory).
    pub cache_on_disk: bool,
}

impl OsPaths {
    /// Paths for release `version`, with the chunk cache under `cache_dir`.
    pub fn for_release(version: &str, cache_dir: &Path, cache_on_disk: bool) -> Self {
        Self {
            root: PathBuf::from("/os").join(version),
            state: PathBuf::from("/run/zos/os").join(version),
            cache: cache_dir.to_path_buf(),
            cache_on_disk,
        }
    }

    /// The release's two mounts: its root (the writable overlay) and the image under it.
    fn mounts(&self) -> [PathBuf; 2] {
        [self.root.clone(), self.state.join("lower")]
    }
}

/// The zos-image command that mounts `image_root` from `hub` at `paths.root`.
pub fn mount_command(image_root: &str, hub: &str, paths: &OsPaths) -> Command {
    let mut cmd = Command::new(ZOS_IMAGE);
    cmd.arg("mount")
        .arg(image_root)
        .arg(&paths.root)
        .args(["--store", hub, "--cache"])
        .arg(&paths.cache)
        .arg("--cache-size")
        .arg(if paths.cache_on_disk {
            CACHE_SIZE_ON_DISK
        } else {
            CACHE_SIZE_IN_MEMORY
        })
        .arg("--writable")
        .arg(&paths.state);
    cmd
}

/// Whether `path` is a mount point, from `/proc/self/mountinfo`'s text.
pub fn is_mount_point(mountinfo: &str, path: &Path) -> bool {
    let want = path.to_string_lossy();
    // Field 5 is the mount point (spaces escaped as \040; these paths have none).
    mountinfo
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_ref()))
}

/// Mounts the image and waits until its root is there. The mount process keeps running (it is
/// the filesystem); its output goes to the ring. Returns its pid.
pub fn mount(
    image_root: &str,
    hub: &str,
    paths: &OsPaths,
    ring: &SharedRing,
    timeout: Duration,
) -> io::Result<u32> {
    for dir in [&paths.root, &paths.state, &paths.cache] {
        std::fs::create_dir_all(dir)?;
    }
    let mut child = mount_command(image_root, hub, paths)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{ZOS_IMAGE}: {e}")))?;
    if let Some(out) = child.stdout.take() {
        pump(out, "[os-image] ".into(), ring.clone());
    }
    if let Some(err) = child.stderr.take() {
        pump(err, "[os-image] ".into(), ring.clone());
    }
    let deadline = Instant::now() + timeout;
    loop {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        if is_mount_point(&info, &paths.root) {
            return Ok(child.id());
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "zos-image mount {}",
                crate::supervisor::describe(status)
            )));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the image was not mounted within {} s", timeout.as_secs()),
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn bind(source: &Path, target: &Path, recursive: bool) -> io::Result<()> {
    let flags = if recursive {
        libc::MS_BIND | libc::MS_REC
    } else {
        libc::MS_BIND
    };
    crate::system::mount_at(source, target, None, flags, None)
}

/// The machine's pseudo filesystems and scratch space inside the services' root, and the
/// resolver configuration DHCP wrote.
pub fn bind_system(root: &Path) -> io::Result<()> {
    // /run and /tmp without what is mounted under them: /run holds every release's image
    // mounts, which a release's root must not pin.
    for (dir, recursive) in [
        ("/dev", true),
        ("/proc", true),
        ("/sys", true),
        ("/run", false),
        ("/tmp", false),
    ] {
        bind(Path::new(dir), &root.join(&dir[1..]), recursive)?;
    }
    if let Ok(resolv) = std::fs::read("/etc/resolv.conf") {
        std::fs::create_dir_all(root.join("etc"))?;
        std::fs::write(root.join("etc/resolv.conf"), resolv)?;
    }
    Ok(())
}

/// The node's data directory (identity, state, workloads) as the services' `/var/lib/zos`.
pub fn bind_data(root: &Path, data: &Path) -> io::Result<()> {
    bind(data, &root.join("var/lib/zos"), true)
}

/// The filesystems of a mounted release's OS image: its root (the writable overlay) and the
/// image's own mount under it. Read while mounted: a detached mount has no path to stat.
pub fn image_devices(paths: &OsPaths) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    paths
        .mounts()
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.dev())
        .collect()
}

/// Whether any process in `proc` (`/proc`) uses a release's OS image: its root directory
/// (services are chrooted there, and the guests they start keep it), its working directory or
/// its program lies under `root`, or it maps a file (a program, a library) from one of
/// `devices` (the image's filesystems, [`image_devices`]: a process in its own mount
/// namespace, such as a sandboxed virtiofsd, shows other paths, but its mappings are still on
/// these). Nothing here asks a filesystem (a hung FUSE server must not stall PID 1): links are
/// read as text and devices from `maps`. When `proc` cannot be read the answer is yes: an
/// image is never released blind.
pub fn in_use(proc: &Path, root: &Path, devices: &[u64]) -> bool {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return true;
    };
    let wanted: Vec<(u32, u32)> = devices
        .iter()
        .map(|&d| (libc::major(d), libc::minor(d)))
        .collect();
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| {
            let pid = e.path();
            ["root", "cwd", "exe"].iter().any(|link| {
                std::fs::read_link(pid.join(link)).is_ok_and(|target| target.starts_with(root))
            }) || std::fs::read_to_string(pid.join("maps")).is_ok_and(|maps| {
                maps.lines()
                    .any(|l| maps_device(l).is_some_and(|d| wanted.contains(&d)))
            })
        })
}

/// The device (major, minor) of one `/proc/<pid>/maps` line: its fourth field, in hex.
fn maps_device(line: &str) -> Option<(u32, u32)> {
    let (major, minor) = line.split_whitespace().nth(3)?.split_once(':')?;
    Some((
        u32::from_str_radix(major, 16).ok()?,
        u32::from_str_radix(minor, 16).ok()?,
    ))
}

/// Detaches a release's mounts (lazily: what still uses them keeps them until it ends), so a
/// dead mount can be mounted again or a retired one goes.
pub fn detach(paths: &OsPaths) {
    for p in paths.mounts() {
        if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) {
            // SAFETY: umount2 on a NUL-terminated path; failure (not mounted) is fine.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Frees a released image's writable layer (memory, under /run) and its mount point, once its
/// mount process ended. Refused while its image is still mounted below the layer: the removal
/// must not walk into it.
pub fn discard_layer(paths: &OsPaths) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let state = match std::fs::symlink_metadata(&paths.state) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let lower = paths.state.join("lower");
    if std::fs::symlink_metadata(&lower).is_ok_and(|m| m.dev() != state.dev()) {
        return Err(io::Error::other(format!(
            "{} is still mounted",
            lower.display()
        )));
    }
    std::fs::remove_dir_all(&paths.state)?;
    match std::fs::remove_dir(&paths.root) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_layer_is_freed_only_when_nothing_is_mounted_below_it() {
        let dir = tempfile::tempdir().unwrap();
        let paths = OsPaths {
            root: dir.path().join("os/1.0.0"),
            state: dir.path().join("run/os/1.0.0"),
            cache: dir.path().join("cache"),
            cache_on_disk: false,
        };
        std::fs::create_dir_all(&paths.root).unwrap();
        std::fs::create_dir_all(paths.state.join("upper/etc")).unwrap();
        std::fs::create_dir_all(paths.state.join("lower")).unwrap();
        std::fs::write(paths.state.join("upper/etc/written"), b"by a service").unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let lower = paths.state.join("lower");
            crate::system::mount_at(Path::new("tmpfs"), &lower, Some("tmpfs"), 0, None).unwrap();
            std::fs::write(lower.join("image file"), b"x").unwrap();
            assert!(discard_layer(&paths).is_err());
            assert!(lower.join("image file").exists(), "walked into the mount");
            let c = std::ffi::CString::new(lower.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: umount2 on a NUL-terminated path.
            assert_eq!(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }, 0);
        }
        discard_layer(&paths).unwrap();
        assert!(!paths.state.exists() && !paths.root.exists());
        // Already gone: nothing to do.
        discard_layer(&paths).unwrap();
    }

    #[test]
    fn a_release_mounts_under_its_version_with_the_cache_where_asked() {
        let p = OsPaths::for_release("1.2.3", Path::new("/var/lib/zos/cache/os"), true);
        assert_eq!(p.root, Path::new("/os/1.2.3"));
        let cmd = mount_command(&"ab".repeat(32), "http://10.0.2.2:8088/hub", &p);
        let args: Vec<_> = cmd.get_args().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            args.join(" "),
            format!(
                "mount {} /os/1.2.3 --store http://10.0.2.2:8088/hub --cache /var/lib/zos/cache/os --cache-size 2G --writable /run/zos/os/1.2.3",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn an_image_is_in_use_while_a_process_works_under_it() {
        let used = tempfile::tempdir().unwrap();
        let unused = tempfile::tempdir().unwrap();
        let proc = Path::new("/proc");
        let mut child = Command::new("sleep")
            .arg("30")
            .current_dir(used.path())
            .spawn()
            .unwrap();
        assert!(in_use(proc, used.path(), &[]));
        assert!(!in_use(proc, unused.path(), &[]));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!in_use(proc, used.path(), &[]));
        assert!(in_use(Path::new("/nonexistent-proc"), unused.path(), &[]));
    }

    /// A program mapped from the image's filesystem counts whatever its path looks like (as
    /// in another mount namespace). Needs root: a tmpfs of its own stands in for the image.
    #[test]
    fn a_program_mapped_from_the_image_filesystem_counts() {
        use std::os::unix::fs::MetadataExt;
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "needs root (mounts a tmpfs)");
        let image = tempfile::tempdir().unwrap();
        crate::system::mount_at(Path::new("tmpfs"), image.path(), Some("tmpfs"), 0, None).unwrap();
        let program = image.path().join("sleep");
        std::fs::copy("/bin/sleep", &program).unwrap();
        let devices = [std::fs::metadata(image.path()).unwrap().dev()];
        let elsewhere = Path::new("/nonexistent-root");
        let proc = Path::new("/proc");
        assert!(!in_use(proc, elsewhere, &devices));
        let mut child = Command::new(&program).arg("30").spawn().unwrap();
        assert!(in_use(proc, elsewhere, &devices));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!in_use(proc, elsewhere, &devices));
        let c = std::ffi::CString::new(image.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: umount2 on a NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }

    #[test]
    fn maps_lines_name_their_device() {
        let line = "7f1c2a000000-7f1c2a022000 r--p 00000000 fd:01 1048602    /usr/lib/libc.so.6";
        assert_eq!(maps_device(line), Some((0xfd, 1)));
        assert_eq!(
            maps_device("7ffd1000-7ffd2000 rw-p 00000000 00:00 0 [stack]"),
            Some((0, 0))
        );
        assert_eq!(maps_device("garbage"), None);
    }

    #[test]
    fn mount_points_are_read_from_mountinfo() {
        let info = "22 1 0:20 / / rw - rootfs rootfs rw\n\
                    41 22 0:35 / /os/1.0.0 rw,relatime - overlay overlay rw,lowerdir=x\n";
        assert!(is_mount_point(info, Path::new("/os/1.0.0")));
        assert!(!is_mount_point(info, Path::new("/os/1.0")));
        assert!(!is_mount_point(info, Path::new("/os")));
    }
}
