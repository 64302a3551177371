//! Writable layer for VM root filesystems: kernel overlayfs with the read-only image mount as
//! the lower layer and a per-VM directory as the upper layer. Writes land in the upper
//! directory (copy-up on first write); the image and its cache are never modified.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// Directories used by one writable mount, all under a single state directory.
pub struct OverlayDirs {
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl OverlayDirs {
    pub fn under(state: &Path) -> Result<OverlayDirs> {
        let dirs = OverlayDirs {
            lower: state.join("lower"),
            upper: state.join("upper"),
            work: state.join("work"),
        };
        for d in [&dirs.lower, &dirs.upper, &dirs.work] {
            fs::create_dir_all(d).at(d)?;
        }
        Ok(dirs)
    }
}

fn cstr(s: &[u8]) -> Result<CString> {
    CString::new(s).map_err(|_| Error::InvalidInput("path contains NUL".into()))
}

/// Mount overlayfs at `target`. Requires CAP_SYS_ADMIN.
pub fn mount_overlay(dirs: &OverlayDirs, target: &Path) -> Result<()> {
    for d in [&dirs.lower, &dirs.upper, &dirs.work] {
        let s = d.to_string_lossy();
        if s.contains(',') || s.contains(':') {
            return Err(Error::InvalidInput(format!(
                "{s}: overlay paths may not contain ',' or ':'"
            )));
        }
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        dirs.lower.display(),
        dirs.upper.display(),
        dirs.work.display()
    );
    let src = cstr(b"overlay")?;
    let fstype = cstr(b"overlay")?;
    let target_c = cstr(target.as_os_str().as_bytes())?;
    let data = cstr(opts.as_bytes())?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target_c.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).at(target);
    }
    Ok(())
}

pub fn unmount(target: &Path) -> Result<()> {
    let c = cstr(target.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).at(target);
    }
    Ok(())
}

/// Lazy unmount (MNT_DETACH): used for mounts whose server is gone.
pub fn unmount_detach(target: &Path) -> Result<()> {
    let c = cstr(target.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).at(target);
    }
    Ok(())
}
