//! The machine before anything runs: pseudo filesystems, the console, kernel modules, the clock.

use std::{
    ffi::CString,
    io,
    os::fd::AsRawFd,
    path::Path,
    time::{Duration, SystemTime},
};

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in a constant path")
}

/// mount(2) of `source` on `target` (created first); `fstype` `None` for a bind mount.
/// Returns the raw OS error.
fn mount_raw(
    source: &Path,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    std::fs::create_dir_all(target)?;
    let s = CString::new(source.as_os_str().as_encoded_bytes())?;
    let t = CString::new(target.as_os_str().as_encoded_bytes())?;
    let f = fstype.map(CString::new).transpose()?;
    let d = data.map(CString::new).transpose()?;
    // SAFETY: live NUL-terminated strings or null pointers, as mount(2) accepts.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            f.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            d.as_ref().map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// [`mount_raw`], with an error that names what was mounted where.
pub fn mount_at(
    source: &Path,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    mount_raw(source, target, fstype, flags, data).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "mounting {} ({}) on {}: {e}",
                source.display(),
                fstype.unwrap_or("bind"),
                target.display()
            ),
        )
    })
}

fn mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    match mount_raw(
        Path::new(source),
        Path::new(target),
        Some(fstype),
        flags,
        Some(data),
    ) {
        // Already mounted (the kernel mounts devtmpfs itself with CONFIG_DEVTMPFS_MOUNT).
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("mounting {fstype} on {target}: {e}"),
        )),
        Ok(()) => Ok(()),
    }
}

/// /proc, /sys, /dev, /run and /tmp, then stdin/stdout/stderr on /dev/console.
pub fn early_mounts() -> io::Result<()> {
    let hardened = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", hardened, "")?;
    mount("sysfs", "/sys", "sysfs", hardened, "")?;
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755")?;
    mount(
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    )?;
    mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    )?;
    if let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/console")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this process.
            unsafe { libc::dup2(console.as_raw_fd(), fd) };
        }
    }
    Ok(())
}

/// Loads the modules listed in `<dir>/load-order` (dependencies first, as built by
/// build-initramfs.sh). A module that is already loaded or built in is fine; one that fails is
/// reported and skipped, since the NIC that matters may not need it.
pub fn load_modules(dir: &Path) -> Vec<(String, io::Error)> {
    let mut failed = Vec::new();
    let Ok(order) = std::fs::read_to_string(dir.join("load-order")) else {
        return failed;
    };
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(format!("{name}.ko"));
        let result = std::fs::File::open(&path).and_then(|f| {
            let params = cstr("");
            // SAFETY: finit_module on an open module file with an empty parameter string.
            let rc =
                unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
            if rc == 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                Ok(())
            } else {
                Err(e)
            }
        });
        if let Err(e) = result {
            failed.push((name.to_string(), e));
        }
    }
    failed
}

/// The loopback interface up, so local services can talk to each other.
pub fn loopback_up() -> io::Result<()> {
    crate::netconf::up("lo")
}

/// Time sanity: a node whose clock is far behind the boot server's (no RTC, a dead battery)
/// takes the server's time. Only forward: the `Date` header is unauthenticated, and a clock
/// moved back could make expired certificates look valid. Signatures do not depend on the
/// clock; TLS and the chain do. Returns the correction made, if any.
pub fn sync_clock(server_time: SystemTime, tolerance: Duration) -> io::Result<Option<i64>> {
    let now = SystemTime::now();
    let skew = match server_time.duration_since(now) {
        Ok(ahead) => ahead.as_secs() as i64,
        Err(behind) => -(behind.duration().as_secs() as i64),
    };
    if skew <= tolerance.as_secs() as i64 {
        return Ok(None);
    }
    let since = server_time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let tv = libc::timeval {
        tv_sec: since.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: settimeofday with a valid timeval and no timezone.
    if unsafe { libc::settimeofday(&tv, std::ptr::null()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Some(skew))
}
