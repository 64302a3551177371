//! Read-only FUSE mount of an image. Metadata comes straight from the index; file data is
//! fetched chunk by chunk on first read through the verifying [`Fetcher`].

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    IoctlFlags, KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen, ReplyStatfs, ReplyXattr,
    Request, SessionACL,
};

use crate::error::{Error, IoContext, Result};
use crate::fetch::Fetcher;
use crate::format::{ChunkInfo, Index, Inode, Kind};
use crate::hash::Hash;

/// The image never changes, so the kernel may cache attributes and entries for long.
const TTL: Duration = Duration::from_secs(3600);
/// Files after a looked-up file whose first chunk is fetched in the background.
const SIBLING_PREFETCH: u32 = 32;

#[derive(Debug, Clone)]
pub struct MountOptions {
    /// FUSE worker threads.
    pub threads: usize,
    /// Chunks fetched ahead of a sequential reader.
    pub readahead_chunks: u32,
    /// Background fetch workers (readahead and prefetch list).
    pub prefetch_workers: usize,
    /// Let users other than the mounting one access the mount.
    pub allow_other: bool,
    /// Record the order in which chunks are first read, written on unmount.
    pub record_trace: Option<PathBuf>,
    /// Chunks to fetch in the background right after mounting (a recorded trace).
    pub prefetch: Vec<Hash>,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            threads: 4,
            readahead_chunks: 16,
            prefetch_workers: 8,
            allow_other: true,
            record_trace: None,
            prefetch: Vec::new(),
        }
    }
}

struct Shared {
    index: Index,
    fetcher: Arc<Fetcher>,
    readahead: u32,
    queue: SyncSender<ChunkInfo>,
    trace: Option<Mutex<(Vec<Hash>, HashSet<Hash>)>>,
}

struct ImageFs(Arc<Shared>);

fn fuse_ino(ino: u32) -> INodeNo {
    INodeNo(u64::from(ino) + 1)
}

fn image_ino(ino: INodeNo) -> Option<u32> {
    ino.0.checked_sub(1).and_then(|i| u32::try_from(i).ok())
}

fn file_type(kind: Kind) -> FileType {
    match kind {
        Kind::Dir => FileType::Directory,
        Kind::File => FileType::RegularFile,
        Kind::Symlink => FileType::Symlink,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
    }
}

fn attr_of(inode: &Inode) -> FileAttr {
    let m = inode.meta;
    let time = if m.mtime_sec >= 0 {
        UNIX_EPOCH + Duration::new(m.mtime_sec as u64, m.mtime_nsec)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(m.mtime_sec.unsigned_abs()))
            .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(m.mtime_nsec))))
            .unwrap_or(UNIX_EPOCH)
    };
    FileAttr {
        ino: fuse_ino(inode.ino),
        size: inode.size,
        blocks: inode.size.div_ceil(512),
        atime: time,
        mtime: time,
        ctime: time,
        crtime: time,
        kind: file_type(inode.kind),
        perm: (m.perm & 0o7777) as u16,
        nlink: inode.nlink,
        uid: m.uid,
        gid: m.gid,
        rdev: inode.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

impl Shared {
    fn inode(&self, ino: INodeNo) -> Result<Inode, Errno> {
        let ino = image_ino(ino)
            .filter(|i| *i < self.index.inode_count())
            .ok_or(Errno::ENOENT)?;
        self.index.inode(ino).map_err(|e| {
            tracing::error!(error = %e, "index read failed");
            Errno::EIO
        })
    }

    fn record(&self, hash: Hash) {
        if let Some(trace) = &self.trace {
            let mut t = trace.lock().unwrap_or_else(|p| p.into_inner());
            if t.1.insert(hash) {
                t.0.push(hash);
            }
        }
    }

    /// Tree walks (tar, cp -r, a program loading its modules) open the files of a directory
    /// in name order, so looking up one file is a good hint to start fetching the next ones.
    fn prefetch_siblings(&self, dir: &Inode, pos: u32) {
        if self.readahead == 0 {
            return;
        }
        let end = (pos + 1 + SIBLING_PREFETCH).min(self.index.dir_len(dir));
        let mut last_queued = None;
        for i in pos + 1..end {
            let Ok((_, ino)) = self.index.dir_entry(dir, i) else {
                return;
            };
            let Ok(inode) = self.index.inode(ino) else {
                return;
            };
            if inode.kind != Kind::File || self.index.file_chunk_count(&inode) == 0 {
                continue;
            }
            let Ok(first) = self.index.file_chunk(&inode, 0) else {
                return;
            };
            if last_queued == Some(first.chunk) {
                continue; // packed into the same chunk as the previous file
            }
            last_queued = Some(first.chunk);
            let Ok(info) = self.index.chunk(first.chunk) else {
                return;
            };
            if !self.fetcher.is_cached(&info.hash) && self.queue.try_send(info).is_err() {
                return;
            }
        }
    }

    fn read(&self, inode: &Inode, offset: u64, size: u32) -> Result<Vec<u8>> {
        let end = offset.saturating_add(u64::from(size)).min(inode.size);
        let mut out = Vec::with_capacity(end.saturating_sub(offset) as usize);
        let Some(mut k) = self.index.file_chunk_at(inode, offset)? else {
            return Ok(out);
        };
        let count = self.index.file_chunk_count(inode);
        let mut pos = offset;
        while pos < end && k < count {
            let r = self.index.file_chunk(inode, k)?;
            let info = self.index.chunk(r.chunk)?;
            self.record(info.hash);
            let data = self.fetcher.get(&info)?;
            let piece = data
                .get(r.chunk_offset as usize..r.chunk_offset as usize + r.len as usize)
                .ok_or_else(|| Error::ChunkCorrupt {
                    hash: info.hash,
                    reason: "chunk shorter than index says".into(),
                })?;
            let from = (pos - r.file_offset) as usize;
            let to = ((end - r.file_offset) as usize).min(piece.len());
            if from >= to {
                break;
            }
            out.extend_from_slice(&piece[from..to]);
            pos += (to - from) as u64;
            k += 1;
        }
        // Sequential readers almost always continue; fetch the next chunks in the background.
        for next in k..(k + self.readahead).min(count) {
            let info = self
                .index
                .chunk(self.index.file_chunk(inode, next)?.chunk)?;
            if self.fetcher.is_cached(&info.hash) {
                continue;
            }
            if let Err(TrySendError::Full(_)) = self.queue.try_send(info) {
                break; // workers are saturated; the next read will ask again
            }
        }
        Ok(out)
    }
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let result = self.0.inode(parent).and_then(|dir| {
            if dir.kind != Kind::Dir {
                return Err(Errno::ENOTDIR);
            }
            match self.0.index.lookup_pos(&dir, name.as_bytes()) {
                Ok(Some((pos, child))) => {
                    let inode = self.0.index.inode(child).map_err(|_| Errno::EIO)?;
                    if inode.kind == Kind::File {
                        self.0.prefetch_siblings(&dir, pos);
                    }
                    Ok(inode)
                }
                Ok(None) => Err(Errno::ENOENT),
                Err(_) => Err(Errno::EIO),
            }
        });
        match result {
            Ok(inode) => reply.entry(&TTL, &attr_of(&inode), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.inode(ino) {
            Ok(inode) => reply.attr(&TTL, &attr_of(&inode)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.0.inode(ino) {
            Ok(inode) if inode.kind == Kind::Symlink => match self.0.index.symlink_target(&inode) {
                Ok(target) => reply.data(target),
                Err(_) => reply.error(Errno::EIO),
            },
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.0.inode(ino) {
            // Content is immutable, so the kernel page cache may keep it across opens: warm
            // reads never reach this process.
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let inode = match self.0.inode(ino) {
            Ok(inode) if inode.kind == Kind::File => inode,
            Ok(_) => return reply.error(Errno::EISDIR),
            Err(e) => return reply.error(e),
        };
        match self.0.read(&inode, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => {
                // Never hand out unverified bytes: the reader gets EIO, the next read retries.
                tracing::error!(ino = inode.ino, offset, error = %e, "read failed");
                reply.error(Errno::EIO)
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dir = match self.0.inode(ino) {
            Ok(dir) if dir.kind == Kind::Dir => dir,
            Ok(_) => return reply.error(Errno::ENOTDIR),
            Err(e) => return reply.error(e),
        };
        // Offsets: 0 -> ".", 1 -> "..", 2 + i -> entry i.
        let count = u64::from(self.0.index.dir_len(&dir));
        let mut pos = offset;
        while pos < count + 2 {
            let full =
                match pos {
                    0 => reply.add(ino, 1, FileType::Directory, "."),
                    1 => reply.add(ino, 2, FileType::Directory, ".."),
                    _ => {
                        let entry = self.0.index.dir_entry(&dir, (pos - 2) as u32).and_then(
                            |(name, child)| Ok((name, child, self.0.index.inode(child)?.kind)),
                        );
                        match entry {
                            Ok((name, child, kind)) => reply.add(
                                fuse_ino(child),
                                pos + 1,
                                file_type(kind),
                                OsStr::from_bytes(name),
                            ),
                            Err(_) => return reply.error(Errno::EIO),
                        }
                    }
                };
            if full {
                break;
            }
            pos += 1;
        }
        reply.ok();
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok(); // nothing is ever buffered for writing
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY); // e.g. isatty() probes: these are not terminals
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let h = self.0.index.header();
        let mut bytes = 0u64;
        for i in 0..self.0.index.chunk_count() {
            bytes += self.0.index.chunk(i).map_or(0, |c| u64::from(c.raw_len));
        }
        reply.statfs(
            bytes.div_ceil(4096),
            0,
            0,
            h.inode_count,
            0,
            4096,
            255,
            4096,
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let inode = match self.0.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        let xattrs = match self.0.index.xattrs(&inode) {
            Ok(x) => x,
            Err(_) => return reply.error(Errno::EIO),
        };
        match xattrs.iter().find(|(n, _)| *n == name.as_bytes()) {
            None => reply.error(Errno::NO_XATTR),
            Some((_, value)) => reply_sized(reply, size, value),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let inode = match self.0.inode(ino) {
            Ok(i) => i,
            Err(e) => return reply.error(e),
        };
        match self.0.index.xattrs(&inode) {
            Ok(xattrs) => {
                let mut list = Vec::new();
                for (name, _) in xattrs {
                    list.extend_from_slice(name);
                    list.push(0);
                }
                reply_sized(reply, size, &list)
            }
            Err(_) => reply.error(Errno::EIO),
        }
    }
}

/// xattr replies: size 0 asks for the length, a too-small buffer is ERANGE.
fn reply_sized(reply: ReplyXattr, size: u32, data: &[u8]) {
    if size == 0 {
        reply.size(data.len() as u32);
    } else if (size as usize) < data.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(data);
    }
}

fn spawn_workers(rx: Receiver<ChunkInfo>, fetcher: Arc<Fetcher>, n: usize) {
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..n.max(1) {
        let rx = rx.clone();
        let fetcher = fetcher.clone();
        std::thread::spawn(move || loop {
            let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok(info) = next else { return };
            if let Err(e) = fetcher.get(&info) {
                tracing::warn!(chunk = %info.hash, error = %e, "background fetch failed");
            }
        });
    }
}

/// A live mount; unmounts when dropped or via [`MountHandle::unmount`].
pub struct MountHandle {
    session: Option<fuser::BackgroundSession>,
    shared: Arc<Shared>,
    trace_path: Option<PathBuf>,
}

impl MountHandle {
    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.shared.fetcher
    }

    pub fn unmount(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(session) = self.session.take() {
            session.umount_and_join().map_err(|e| Error::Store {
                store: "fuse".into(),
                message: e.to_string(),
            })?;
        }
        if let (Some(path), Some(trace)) = (self.trace_path.take(), &self.shared.trace) {
            let t = trace.lock().unwrap_or_else(|p| p.into_inner());
            let text: String = t.0.iter().map(|h| format!("{h}\n")).collect();
            std::fs::write(&path, text).at(&path)?;
        }
        Ok(())
    }
}

impl Drop for MountHandle {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            tracing::warn!(error = %e, "unmount failed");
        }
    }
}

/// Mount `index` at `mountpoint`, serving data through `fetcher`. Returns once the mount is live.
pub fn mount(
    index: Index,
    fetcher: Arc<Fetcher>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> Result<MountHandle> {
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::InvalidInput(
            "/dev/fuse is not available on this machine".into(),
        ));
    }
    let (tx, rx) = sync_channel(1024);
    spawn_workers(rx, fetcher.clone(), opts.prefetch_workers);
    let mut prefetch = Vec::new();
    if !opts.prefetch.is_empty() {
        let by_hash: std::collections::HashMap<Hash, ChunkInfo> = (0..index.chunk_count())
            .filter_map(|i| index.chunk(i).ok())
            .map(|c| (c.hash, c))
            .collect();
        prefetch.extend(opts.prefetch.iter().filter_map(|h| by_hash.get(h).copied()));
    }
    let shared = Arc::new(Shared {
        index,
        fetcher: fetcher.clone(),
        readahead: opts.readahead_chunks,
        queue: tx,
        trace: opts
            .record_trace
            .as_ref()
            .map(|_| Mutex::new((Vec::new(), HashSet::new()))),
    });
    if !prefetch.is_empty() {
        // The trace is in first-use order; fetch it with a few threads so the earliest chunks
        // arrive first, without competing with the readahead queue.
        let fetcher = fetcher.clone();
        std::thread::spawn(move || {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(4).build();
            if let Ok(pool) = pool {
                pool.install(|| {
                    use rayon::prelude::*;
                    prefetch.par_iter().for_each(|info| {
                        let _ = fetcher.get(info);
                    })
                });
            }
        });
    }
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::FSName("zos-image".into()),
        MountOption::Subtype("zos-image".into()),
        MountOption::DefaultPermissions,
        MountOption::Dev,
        MountOption::Suid,
    ];
    if opts.allow_other {
        config.acl = SessionACL::All;
    }
    // No auto_unmount: it hands unmounting to a fusermount helper process, which does not
    // reliably outlive us. A mount left behind by a killed process is cleared here instead.
    clear_stale_mount(mountpoint);
    config.n_threads = Some(opts.threads.max(1));
    let session =
        fuser::spawn_mount(ImageFs(shared.clone()), mountpoint, &config).map_err(|e| {
            Error::Store {
                store: mountpoint.display().to_string(),
                message: format!("mount failed: {e}"),
            }
        })?;
    Ok(MountHandle {
        session: Some(session),
        shared,
        trace_path: opts.record_trace.clone(),
    })
}

/// A FUSE mount whose server died answers ENOTCONN; detach it so the path can be reused.
fn clear_stale_mount(mountpoint: &Path) {
    if let Err(e) = std::fs::metadata(mountpoint) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            tracing::warn!(path = %mountpoint.display(), "detaching stale mount left by a dead process");
            let _ = crate::overlay::unmount_detach(mountpoint);
        }
    }
}

/// Wait until `mountpoint` shows the mounted root (mount is asynchronous on some kernels).
pub fn wait_until_mounted(mountpoint: &Path, timeout: Duration) -> bool {
    let start = SystemTime::now();
    while start.elapsed().unwrap_or_default() < timeout {
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") {
            let needle = mountpoint.to_string_lossy();
            if mounts.lines().any(|l| l.split(' ').nth(4) == Some(&needle)) {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
