//! Named network namespaces, kept alive by bind mounts under `/run/netns` (where `ip netns`
//! finds them too), and running code inside one.
//!
//! Entering a namespace is per thread (`setns`), so code for another namespace runs on a short
//! dedicated thread; sockets opened there stay in that namespace after the thread ends.

use std::{
    ffi::CString,
    fs::{self, File},
    io,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// Where named namespaces live.
pub const NETNS_DIR: &str = "/run/netns";

pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether `path` is a mounted network namespace (not just the empty file under it).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type == libc::NSFS_MAGIC }
}

/// Creates the named namespace unless it exists.
pub fn create(name: &str) -> Result<PathBuf> {
    let path = path_of(name);
    if is_mounted(&path) {
        return Ok(path);
    }
    fs::create_dir_all(NETNS_DIR).context("creating /run/netns")?;
    File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let target = path.clone();
    std::thread::spawn(move || -> Result<()> {
        // SAFETY: unshare only changes this thread's network namespace, which ends with it.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
        }
        let src = CString::new("/proc/thread-self/ns/net")?;
        let dst = CString::new(target.as_os_str().as_encoded_bytes())?;
        // SAFETY: valid C strings; a bind mount of this thread's namespace file.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("bind-mounting the namespace");
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("namespace thread panicked"))?
    .with_context(|| format!("creating network namespace {name}"))?;
    Ok(path)
}

/// Unmounts and removes the named namespace; succeeds when it is already gone. The kernel
/// frees it (and every interface in it) once no process or socket uses it.
pub fn delete(name: &str) -> Result<()> {
    let path = path_of(name);
    if is_mounted(&path) {
        let c = CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: valid C string.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("unmounting {}", path.display()));
        }
    }
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// Names of the mounted namespaces under `/run/netns`.
pub fn list() -> Result<Vec<String>> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        other => other.context("listing /run/netns")?,
    };
    let mut names = vec![];
    for entry in entries {
        let entry = entry?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_string());
        }
    }
    Ok(names)
}

/// Runs `f` on a thread inside the namespace at `path` (any nsfs file, e.g. a named one or
/// `/proc/<pid>/ns/net`). Blocking: call from blocking contexts only.
pub fn run_in<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::thread::spawn(move || -> Result<T> {
        // SAFETY: a valid namespace fd; only this short-lived thread moves.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error()).context("setns");
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in a network namespace panicked"))?
}

/// Writes a sysctl under `/proc/sys` as seen from the namespace at `ns` (or from ours).
pub fn sysctl(ns: Option<&Path>, key: &str, value: &str) -> Result<()> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    let value = value.to_string();
    let write =
        move || fs::write(&path, &value).with_context(|| format!("writing {}", path.display()));
    match ns {
        Some(ns) => run_in(ns, write),
        None => write(),
    }
}
