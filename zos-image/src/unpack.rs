//! Materialise an image as a real directory tree, restoring all metadata.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};
use crate::fetch::Fetcher;
use crate::format::{ChunkRef, Index, Inode, Kind};
use crate::progress::Progress;

/// Chunks fetched concurrently within one file.
const FILE_FETCH_WINDOW: usize = 16;

#[derive(Debug, Default)]
pub struct UnpackReport {
    pub files: u64,
    pub bytes: u64,
    /// Things that could not be restored without privileges (ownership, device nodes).
    pub warnings: Vec<String>,
}

fn cpath(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::InvalidInput(format!("{path:?} contains NUL")))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn mknod(path: &Path, kind: Kind, perm: u32, rdev: u64) -> std::io::Result<()> {
    let c = cpath(path).map_err(std::io::Error::other)?;
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind.mode_bits() | perm, rdev as libc::dev_t) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn set_mtime(path: &Path, sec: i64, nsec: u32) -> Result<()> {
    let c = cpath(path)?;
    let t = libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: nsec as _,
    };
    let times = [t, t];
    // SAFETY: valid path pointer and a two-element timespec array as utimensat requires.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error()).at(path)
    }
}

/// Write one regular file, fetching chunks a window at a time.
fn write_file(
    index: &Index,
    fetcher: &Fetcher,
    inode: &Inode,
    path: &Path,
    progress: &Progress,
) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path).at(path)?);
    let count = index.file_chunk_count(inode);
    let mut start = 0;
    while start < count {
        let end = (start + FILE_FETCH_WINDOW as u32).min(count);
        let batch: Vec<Result<(std::sync::Arc<Vec<u8>>, ChunkRef)>> = (start..end)
            .into_par_iter()
            .map(|i| {
                let r = index.file_chunk(inode, i)?;
                Ok((fetcher.get(&index.chunk(r.chunk)?)?, r))
            })
            .collect();
        for item in batch {
            let (data, r) = item?;
            let piece = data
                .get(r.chunk_offset as usize..r.chunk_offset as usize + r.len as usize)
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "{}: chunk shorter than the index says",
                        path.display()
                    ))
                })?;
            out.write_all(piece).at(path)?;
            progress.inc(piece.len() as u64);
        }
        start = end;
    }
    out.into_inner()
        .map_err(|e| e.into_error())
        .at(path)?
        .sync_all()
        .ok();
    Ok(())
}

pub fn unpack(
    index: &Index,
    fetcher: &Fetcher,
    target: &Path,
    show_progress: bool,
) -> Result<UnpackReport> {
    if target.exists() {
        let empty = fs::read_dir(target).at(target)?.next().is_none();
        if !empty {
            return Err(Error::InvalidInput(format!(
                "{} exists and is not empty",
                target.display()
            )));
        }
    } else {
        fs::create_dir_all(target).at(target)?;
    }
    let root_user = is_root();
    let mut report = UnpackReport::default();
    // First path of every inode, in creation order (directories in breadth-first order).
    let mut first_path: HashMap<u32, PathBuf> = HashMap::new();
    let mut order: Vec<u32> = vec![0];
    let mut files: Vec<(Inode, PathBuf)> = Vec::new();
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    first_path.insert(0, target.to_path_buf());
    let mut queue = std::collections::VecDeque::from([(0u32, target.to_path_buf())]);
    while let Some((dir_ino, dir_path)) = queue.pop_front() {
        let dir = index.inode(dir_ino)?;
        for entry in index.dir_entries(&dir)? {
            let (name, child) = entry?;
            let path = dir_path.join(OsStr::from_bytes(name));
            if let Some(existing) = first_path.get(&child) {
                links.push((existing.clone(), path));
                continue;
            }
            let inode = index.inode(child)?;
            match inode.kind {
                Kind::Dir => {
                    fs::create_dir(&path).at(&path)?;
                    queue.push_back((child, path.clone()));
                }
                Kind::File => files.push((inode, path.clone())),
                Kind::Symlink => {
                    let target = OsStr::from_bytes(index.symlink_target(&inode)?);
                    std::os::unix::fs::symlink(target, &path).at(&path)?;
                }
                Kind::CharDev | Kind::BlockDev | Kind::Fifo | Kind::Socket => {
                    if let Err(e) = mknod(&path, inode.kind, inode.meta.perm, inode.rdev()) {
                        if e.raw_os_error() == Some(libc::EPERM) && !root_user {
                            report
                                .warnings
                                .push(format!("{}: {e} (needs root)", path.display()));
                            continue;
                        }
                        return Err(e).at(&path);
                    }
                }
            }
            first_path.insert(child, path);
            order.push(child);
        }
    }

    let total: u64 = files.iter().map(|(i, _)| i.size).sum();
    let progress = Progress::bytes(show_progress, total, "unpacking");
    files
        .par_iter()
        .map(|(inode, path)| write_file(index, fetcher, inode, path, &progress))
        .collect::<Result<Vec<()>>>()?;
    progress.finish();
    report.files = files.len() as u64;
    report.bytes = total;
    for (existing, path) in &links {
        fs::hard_link(existing, path).at(path)?;
    }

    // Metadata last, children before parents, so creating entries does not disturb a
    // directory's restored mtime and read-only directories are only locked at the end.
    for ino in order.iter().rev() {
        let inode = index.inode(*ino)?;
        let path = &first_path[ino];
        let m = inode.meta;
        if let Err(e) = std::os::unix::fs::lchown(path, Some(m.uid), Some(m.gid)) {
            if root_user {
                return Err(e).at(path);
            }
            report.warnings.push(format!(
                "{}: cannot set owner {}:{}: {e}",
                path.display(),
                m.uid,
                m.gid
            ));
        }
        if inode.kind != Kind::Symlink {
            // chown clears setuid/setgid, so the mode goes after it.
            fs::set_permissions(path, fs::Permissions::from_mode(m.perm)).at(path)?;
        }
        for (name, value) in index.xattrs(&inode)? {
            if let Err(e) = xattr::set(path, OsStr::from_bytes(name), value) {
                if root_user {
                    return Err(e).at(path);
                }
                report.warnings.push(format!(
                    "{}: cannot set xattr {}: {e}",
                    path.display(),
                    String::from_utf8_lossy(name)
                ));
            }
        }
        set_mtime(path, m.mtime_sec, m.mtime_nsec)?;
    }
    Ok(report)
}
