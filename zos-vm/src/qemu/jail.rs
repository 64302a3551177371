//! QEMU's jail (the firecracker jailer's model): between fork and exec the child enters a
//! mount namespace of its own whose root is a small tmpfs holding only what QEMU opens - the
//! system's `/usr` (read-only), a few device nodes, `/sys` (read-only), the VM's directory, its
//! disk files and the guest kernel - and a `/proc` that hides other users' processes
//! (`hidepid=invisible`; QEMU itself is not dumpable once it drops its privileges, so it is
//! hidden even from its own user). The old root is detached, so the copies of other tenants'
//! mounts (image FUSE mounts, volumes) a new namespace starts with are released at once rather
//! than pinned for the guest's lifetime.
//!
//! No pid namespace: QEMU's pid must stay the host's for supervision, pid files and metering;
//! its own uid (see [`crate::UserRegistry`]) already keeps it from signalling other guests, and
//! the private `/proc` from seeing them.
//!
//! Everything the child does is planned before the fork: the closure only makes syscalls on
//! prepared C strings (no allocation after fork).

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Component, Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// A host path QEMU may use inside the jail, at the same path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposed {
    pub path: PathBuf,
    pub writable: bool,
}

impl Exposed {
    pub fn read_only(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            writable: false,
        }
    }

    pub fn writable(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            writable: true,
        }
    }
}

#[derive(Debug)]
struct Bind {
    source: CString,
    target: CString,
    is_dir: bool,
    writable: bool,
    /// The source mount's own restrictions (nosuid, nodev, noexec, atime), kept by the
    /// read-only remount: dropping them would weaken it, and is refused in a user namespace.
    kept_flags: libc::c_ulong,
}

/// The `MS_*` restrictions of the mount holding `path`.
fn mount_restrictions(path: &Path) -> Result<libc::c_ulong> {
    let c = cstring(path)?;
    // SAFETY: a zeroed statvfs is a valid out-parameter; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("statvfs {}", path.display()));
    }
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    Ok(flags)
}

/// The prepared jail of one QEMU process.
#[derive(Debug)]
pub struct Jail {
    root: CString,
    dirs: Vec<CString>,
    links: Vec<(CString, CString)>,
    binds: Vec<Bind>,
    proc_dir: CString,
}

fn cstring(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))
}

/// What every QEMU needs besides the VM's own files.
pub fn system_paths() -> Vec<Exposed> {
    let mut out = vec![Exposed::read_only("/usr"), Exposed::read_only("/sys")];
    for dev in [
        "/dev/null",
        "/dev/zero",
        "/dev/full",
        "/dev/random",
        "/dev/urandom",
        "/dev/kvm",
        "/dev/net/tun",
        "/dev/vhost-net",
    ] {
        if Path::new(dev).exists() {
            out.push(Exposed::writable(dev));
        }
    }
    if Path::new("/etc/ld.so.cache").exists() {
        out.push(Exposed::read_only("/etc/ld.so.cache"));
    }
    out
}

impl Jail {
    /// Plans a jail rooted at `root` (an empty directory of the host, the tmpfs's mount point
    /// in the namespace) exposing `paths`. Top-level links of the host (`/bin -> usr/bin` on a
    /// merged-/usr system) are recreated; top-level directories that are not links are exposed
    /// read-only when something under them is needed by the dynamic loader (`/lib*`).
    pub fn plan(root: &Path, paths: &[Exposed]) -> Result<Self> {
        if !root.is_absolute() {
            bail!("the jail root {} is not absolute", root.display());
        }
        let mut paths = paths.to_vec();
        let mut links = Vec::new();
        let mut linked_tops = Vec::new();
        for top in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
            let p = Path::new(top);
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(p)?;
                    links.push((cstring(&target)?, cstring(&inside(root, p))?));
                    linked_tops.push(p);
                }
                Ok(m) if m.is_dir() => paths.push(Exposed::read_only(p)),
                _ => {}
            }
        }
        // A path through one of those links (`/bin/qemu-system-x86_64`) is exposed where it
        // leads; the link in the jail gets there the same way.
        for e in &mut paths {
            if linked_tops.iter().any(|top| e.path.starts_with(top)) {
                e.path = std::fs::canonicalize(&e.path)
                    .with_context(|| format!("jail: {}", e.path.display()))?;
            }
        }
        // A path inside an exposed directory is visible through it already; its own bind
        // would land in the host's directory instead of the jail's.
        let exposed_dirs: Vec<PathBuf> = paths
            .iter()
            .filter(|e| e.path.is_dir())
            .map(|e| e.path.clone())
            .collect();
        paths.retain(|e| {
            !exposed_dirs
                .iter()
                .any(|d| e.path != *d && e.path.starts_with(d))
        });
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut binds = Vec::new();
        for e in &paths {
            if !e.path.is_absolute()
                || e.path
                    .components()
                    .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
            {
                bail!("{} is not a plain absolute path", e.path.display());
            }
            let meta = std::fs::metadata(&e.path)
                .with_context(|| format!("jail: {}", e.path.display()))?;
            // Every ancestor becomes a directory of the tmpfs.
            let mut ancestors: Vec<&Path> = e.path.ancestors().skip(1).collect();
            ancestors.reverse();
            for a in ancestors {
                let d = inside(root, a);
                if !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
            binds.push(Bind {
                source: cstring(&e.path)?,
                target: cstring(&inside(root, &e.path))?,
                is_dir: meta.is_dir(),
                writable: e.writable,
                kept_flags: mount_restrictions(&e.path)?,
            });
        }
        Ok(Self {
            root: cstring(root)?,
            dirs: dirs.iter().map(|d| cstring(d)).collect::<Result<_>>()?,
            links,
            binds,
            proc_dir: cstring(&root.join("proc"))?,
        })
    }

    /// Enters the jail. Runs in the forked child before exec: syscalls only.
    ///
    /// # Safety
    /// Only between fork and exec, in the child.
    pub unsafe fn enter(&self) -> std::io::Result<()> {
        use libc::*;
        fn check(rc: c_int) -> std::io::Result<()> {
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        }
        fn check_mkdir(rc: c_int) -> std::io::Result<()> {
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(EEXIST) {
                    return Err(e);
                }
            }
            Ok(())
        }
        let none = std::ptr::null::<c_char>();
        check(unshare(CLONE_NEWNS))?;
        check(mount(
            none,
            c"/".as_ptr(),
            none,
            MS_REC | MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(mount(
            c"tmpfs".as_ptr(),
            self.root.as_ptr(),
            c"tmpfs".as_ptr(),
            MS_NOSUID | MS_NODEV,
            c"size=1m,mode=0755".as_ptr().cast(),
        ))?;
        for d in &self.dirs {
            check_mkdir(mkdir(d.as_ptr(), 0o755))?;
        }
        for (target, link) in &self.links {
            check(symlink(target.as_ptr(), link.as_ptr()))?;
        }
        for b in &self.binds {
            if b.is_dir {
                check_mkdir(mkdir(b.target.as_ptr(), 0o755))?;
            } else {
                let fd = open(b.target.as_ptr(), O_CREAT | O_WRONLY | O_CLOEXEC, 0o644);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                close(fd);
            }
            // Not recursive: mounts below an exposed directory (the VM's image mount) stay out.
            check(mount(
                b.source.as_ptr(),
                b.target.as_ptr(),
                none,
                MS_BIND,
                std::ptr::null(),
            ))?;
            if !b.writable {
                check(mount(
                    none,
                    b.target.as_ptr(),
                    none,
                    MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | b.kept_flags,
                    std::ptr::null(),
                ))?;
            }
        }
        check_mkdir(mkdir(self.proc_dir.as_ptr(), 0o555))?;
        check(mount(
            c"proc".as_ptr(),
            self.proc_dir.as_ptr(),
            c"proc".as_ptr(),
            MS_NOSUID | MS_NODEV | MS_NOEXEC,
            c"hidepid=invisible".as_ptr().cast(),
        ))?;
        check(chdir(self.root.as_ptr()))?;
        // pivot_root(".", "."): the old root ends up on top of the new one, then goes.
        if syscall(SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        check(umount2(c".".as_ptr(), MNT_DETACH))?;
        check(chdir(c"/".as_ptr()))?;
        Ok(())
    }
}

/// `path` (absolute) inside the jail rooted at `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_makes_every_ancestor_and_binds_each_path() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = tmp.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        let disk = tmp.path().join("disks/data.raw");
        std::fs::create_dir(disk.parent().unwrap()).unwrap();
        std::fs::write(&disk, b"").unwrap();
        let root = vm.join("jail");
        let jail = Jail::plan(&root, &[Exposed::writable(&vm), Exposed::writable(&disk)]).unwrap();
        let dirs: Vec<String> = jail
            .dirs
            .iter()
            .map(|d| d.to_string_lossy().into_owned())
            .collect();
        let inside_root = |p: &Path| inside(&root, p).to_string_lossy().into_owned();
        // Parents first, each once.
        assert_eq!(dirs[0], inside_root(Path::new("/")));
        assert!(dirs.contains(&inside_root(&disk.parent().unwrap())));
        let pos = |p: &Path| dirs.iter().position(|d| *d == inside_root(p)).unwrap();
        assert!(pos(tmp.path()) < pos(&disk.parent().unwrap()));
        assert_eq!(
            dirs.iter()
                .filter(|d| **d == inside_root(tmp.path()))
                .count(),
            1
        );
        let vm_bind = jail
            .binds
            .iter()
            .find(|b| b.source.as_bytes() == vm.as_os_str().as_bytes())
            .unwrap();
        assert!(vm_bind.is_dir && vm_bind.writable);
        let disk_bind = jail
            .binds
            .iter()
            .find(|b| b.source.as_bytes() == disk.as_os_str().as_bytes())
            .unwrap();
        assert!(!disk_bind.is_dir);
        assert_eq!(disk_bind.target.to_string_lossy(), inside_root(&disk));
    }

    #[test]
    fn a_path_inside_an_exposed_directory_is_not_bound_again() {
        let tmp = tempfile::tempdir().unwrap();
        let vm = tmp.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        std::fs::write(vm.join("initrd.img"), b"").unwrap();
        let jail = Jail::plan(
            &vm.join("jail"),
            &[
                Exposed::read_only(vm.join("initrd.img")),
                Exposed::writable(&vm),
            ],
        )
        .unwrap();
        assert_eq!(
            jail.binds.len(),
            1 + jail
                .binds
                .iter()
                .filter(|b| !b.source.as_bytes().starts_with(vm.as_os_str().as_bytes()))
                .count()
        );
    }

    #[test]
    fn a_path_through_a_top_level_link_is_exposed_where_it_leads() {
        let Ok(target) = std::fs::read_link("/bin") else {
            // Not a merged-/usr host: nothing to resolve.
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let jail = Jail::plan(&tmp.path().join("jail"), &[Exposed::read_only("/bin/sh")]).unwrap();
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        assert!(jail
            .binds
            .iter()
            .any(|b| b.source.as_bytes() == sh.as_os_str().as_bytes()));
        assert!(!jail.binds.iter().any(|b| b.source.as_bytes() == b"/bin/sh"));
        assert!(jail
            .links
            .iter()
            .any(|(t, _)| t.as_bytes() == target.as_os_str().as_bytes()));
        // Nothing is made where the link goes.
        assert!(!jail
            .dirs
            .iter()
            .any(|d| d.as_bytes().ends_with(b"/jail/bin")));
        let sys = jail.binds.iter().find(|b| b.source.as_bytes() == b"/sys");
        assert!(sys.is_none(), "only what was asked for");
        let probe = Jail::plan(
            &tmp.path().join("jail"),
            &[Exposed::read_only("/proc/self")],
        );
        assert!(probe.is_ok());
        let proc_bind = &probe.unwrap().binds[0];
        // The source mount's own options come along (relatime is the kernel's default).
        assert_ne!(
            proc_bind.kept_flags & libc::MS_RELATIME,
            0,
            "/proc's relatime"
        );
    }

    #[test]
    fn relative_or_dotted_paths_and_missing_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("jail");
        for bad in ["relative", "/usr/../etc"] {
            assert!(
                Jail::plan(&root, &[Exposed::read_only(bad)]).is_err(),
                "{bad}"
            );
        }
        assert!(Jail::plan(&root, &[Exposed::read_only(tmp.path().join("missing"))]).is_err());
        assert!(Jail::plan(Path::new("jail"), &[]).is_err());
    }
}
