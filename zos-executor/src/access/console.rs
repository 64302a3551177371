//! Reading a VM's console log: whole, or followed across its rotation, never through a link.

use std::path::Path;

use tokio::io::AsyncReadExt;

/// Largest piece of a followed console sent at once.
const FOLLOW_CHUNK: usize = 64 * 1024;
/// Most of one console file read (the log and its rotated half are each bounded far below).
const MAX_CONSOLE_FILE: u64 = 16 << 20;

/// The last `lines` lines of `text` (all of it for `None`).
pub(super) fn last_lines(text: &str, lines: Option<usize>) -> &str {
    let Some(n) = lines else { return text };
    let trimmed = text.strip_suffix('\n').unwrap_or(text);
    match trimmed.rmatch_indices('\n').nth(n.saturating_sub(1)) {
        Some((i, _)) if n > 0 => &text[i + 1..],
        _ if n == 0 => "",
        _ => text,
    }
}

/// Where a follower stands: the file (by inode) and the offset in it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Position {
    inode: Option<u64>,
    offset: u64,
}

pub(super) enum Next {
    Bytes(Vec<u8>),
    Nothing,
    /// The VM, and its directory, are gone.
    Gone,
}

/// What the console printed since `at`. A rotation (the log renamed to `.1`, a new one
/// started) is noticed by the inode: the rest of the old file is read before the new one.
pub(super) async fn next_output(log: &Path, at: &mut Position) -> Next {
    use std::os::unix::fs::MetadataExt as _;
    let current = match tokio::fs::symlink_metadata(log).await {
        Ok(m) => m,
        Err(_) => {
            let gone = match log.parent() {
                Some(dir) => !tokio::fs::try_exists(dir).await.unwrap_or(false),
                None => true,
            };
            return if gone { Next::Gone } else { Next::Nothing };
        }
    };
    if at.inode.is_some_and(|inode| inode != current.ino()) {
        let rotated = zos_vm::console::RotatingLog::rotated_path(log);
        let same = tokio::fs::symlink_metadata(&rotated)
            .await
            .is_ok_and(|m| Some(m.ino()) == at.inode);
        if same {
            if let Ok(bytes) = read_from(&rotated, at.offset, FOLLOW_CHUNK).await {
                if !bytes.is_empty() {
                    at.offset = at.offset.saturating_add(bytes.len() as u64);
                    return Next::Bytes(bytes);
                }
            }
        }
        *at = Position {
            inode: Some(current.ino()),
            offset: 0,
        };
    }
    if at.inode.is_none() {
        at.inode = Some(current.ino());
    }
    if current.len() <= at.offset {
        return Next::Nothing;
    }
    match read_from(log, at.offset, FOLLOW_CHUNK).await {
        Ok(bytes) if !bytes.is_empty() => {
            at.offset = at.offset.saturating_add(bytes.len() as u64);
            Next::Bytes(bytes)
        }
        _ => Next::Nothing,
    }
}

/// Opens a console file for reading without following a symlink: the VM's directory is
/// shared with processes of the tenant's (the guest's hypervisor), whose link to a host file
/// must not be served. A hard link (more than one name) is refused for the same reason.
fn open_console(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(std::io::Error::other("not a console log"));
    }
    Ok(file)
}

/// The rotated and current console (oldest first, lossily as text) and where following goes
/// on: the current file, after what was read of it.
pub(super) fn read_console(log: &Path) -> (String, Position) {
    use std::{io::Read as _, os::unix::fs::MetadataExt as _};
    let mut out = Vec::new();
    let mut position = Position {
        inode: None,
        offset: 0,
    };
    for (path, is_current) in [
        (zos_vm::console::RotatingLog::rotated_path(log), false),
        (log.to_path_buf(), true),
    ] {
        let Ok(file) = open_console(&path) else {
            continue;
        };
        let inode = file.metadata().map(|m| m.ino()).ok();
        let before = out.len();
        if file.take(MAX_CONSOLE_FILE).read_to_end(&mut out).is_err() {
            out.truncate(before);
        }
        if is_current {
            position = Position {
                inode,
                offset: (out.len() - before) as u64,
            };
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), position)
}

async fn read_from(path: &Path, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncSeekExt as _;
    let mut file = tokio::fs::File::from_std(open_console(path)?);
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = Vec::with_capacity(max.min(8192));
    file.take(max as u64).read_to_end(&mut buf).await?;
    Ok(buf)
}
