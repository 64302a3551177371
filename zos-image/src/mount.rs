//! Read-only FUSE mount of an image. Metadata comes straight from the index; file data is
//! fetched chunk by chunk on first read through the verifying [`Fetcher`].

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, MountOption, Notifier, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyOpen,
    ReplyStatfs, ReplyXattr, Request, SessionACL,
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
    /// Let every user of the host access the mount. Off by default: an image is a stranger's
    /// tree, so only the mounting user (the node's hypervisor side) may enter it.
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
            allow_other: false,
            record_trace: None,
            prefetch: Vec::new(),
        }
    }
}

struct Shared {
    index: Index,
    fetcher: Arc<Fetcher>,
    readahead: u32,
    queue: SyncSender<(u32, ChunkInfo)>,
    /// Chunks sitting in the queue or being fetched by a worker: asking twice would only tie
    /// up a second worker waiting for the first.
    queued: Arc<BitSet>,
    trace: Option<Mutex<(Vec<Hash>, HashSet<Hash>)>>,
    /// The kernel agreed to skip OPEN/RELEASE (and OPENDIR/RELEASEDIR): an immutable image
    /// keeps no per-handle state, so those round trips are pure overhead.
    no_open: AtomicBool,
    no_opendir: AtomicBool,
    /// One past the last chunk number queued by image-order readahead.
    queued_until: AtomicU32,
    /// Inodes the kernel has been told about (LOOKUP or READDIRPLUS answers): only those can
    /// be stored into its page cache.
    announced: BitSet,
    /// Files already stored into the page cache, or read.
    pushed: BitSet,
    /// (chunk, inode) of the files packed into shared chunks, sorted; built in the background.
    packed: OnceLock<Vec<(u32, u32)>>,
    /// Set once the session exists (the notifier comes from it).
    notifier: OnceLock<Notifier>,
    /// FUSE workers that may store into the page cache themselves; always one fewer than
    /// there are workers, so one is left to answer the READ that a store may wait on.
    push_slots: AtomicUsize,
    /// Stores that found no free slot go to this thread.
    pusher: OnceLock<SyncSender<PackedChunk>>,
    stats: MountStats,
}

/// A fixed-size set of inode or chunk numbers, shared between threads without a lock.
struct BitSet(Vec<AtomicU64>);

impl BitSet {
    fn new(len: u32) -> BitSet {
        BitSet((0..len.div_ceil(64)).map(|_| AtomicU64::new(0)).collect())
    }

    fn remove(&self, n: u32) {
        if let Some(w) = self.0.get((n / 64) as usize) {
            w.fetch_and(!(1 << (n % 64)), Ordering::Relaxed);
        }
    }

    fn contains(&self, ino: u32) -> bool {
        self.0
            .get((ino / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (ino % 64)) != 0)
    }

    /// Adds `ino`; true if it was not there before.
    fn insert(&self, ino: u32) -> bool {
        self.0.get((ino / 64) as usize).is_some_and(|w| {
            let bit = 1 << (ino % 64);
            w.fetch_or(bit, Ordering::Relaxed) & bit == 0
        })
    }
}

/// What the kernel asked of the mount, for `mount` statistics and benchmarks.
#[derive(Debug, Default)]
pub struct MountStats {
    /// READ requests answered with data.
    pub reads: AtomicU64,
    /// Small files stored into the page cache ahead of their first read.
    pub pushed_files: AtomicU64,
    /// READs that had to wait for a chunk to arrive.
    pub waited: AtomicU64,
}

/// A chunk of small files of which one was just read.
struct PackedChunk {
    ino: u32,
    chunk: u32,
    data: Arc<Vec<u8>>,
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
    /// in name order, so looking up one file is a good hint to start fetching the first chunks
    /// of the next files (from entry `from` on).
    fn prefetch_files(&self, dir: &Inode, from: u32) {
        if self.readahead == 0 {
            return;
        }
        let end = from
            .saturating_add(SIBLING_PREFETCH)
            .min(self.index.dir_len(dir));
        let mut last_queued = None;
        for i in from..end {
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
            if !self.queue_fetch(first.chunk, info) {
                return;
            }
        }
    }

    /// The bytes of `inode` in `offset..offset+size`, as slices of verified chunks (most reads
    /// fall inside one chunk and are answered without copying).
    fn read(&self, inode: &Inode, offset: u64, size: u32) -> Result<Vec<Piece>> {
        let end = offset.saturating_add(u64::from(size)).min(inode.size);
        let mut pieces = Vec::new();
        let Some(mut k) = self.index.file_chunk_at(inode, offset)? else {
            return Ok(pieces);
        };
        let count = self.index.file_chunk_count(inode);
        let mut pos = offset;
        let mut last_chunk = None;
        while pos < end && k < count {
            let r = self.index.file_chunk(inode, k)?;
            let info = self.index.chunk(r.chunk)?;
            self.record(info.hash);
            if !self.fetcher.is_cached(&info.hash) {
                self.stats.waited.fetch_add(1, Ordering::Relaxed);
            }
            let data = self.fetcher.get(&info)?;
            let piece_end = r.chunk_offset as usize + r.len as usize;
            if data.len() < piece_end {
                return Err(Error::ChunkCorrupt {
                    hash: info.hash,
                    reason: "chunk shorter than index says".into(),
                });
            }
            let from = (pos - r.file_offset) as usize;
            let to = ((end - r.file_offset) as usize).min(r.len as usize);
            if from >= to {
                break;
            }
            let start = r.chunk_offset as usize;
            if r.len as usize != data.len() {
                self.push_packed_neighbours(inode.ino, r.chunk, &data);
            }
            pieces.push(Piece {
                data,
                range: start + from..start + to,
            });
            last_chunk = Some(r.chunk);
            pos += (to - from) as u64;
            k += 1;
        }
        // Sequential readers almost always continue; fetch the next chunks in the background.
        for next in k..(k + self.readahead).min(count) {
            let chunk = self.index.file_chunk(inode, next)?.chunk;
            if !self.queue_fetch(chunk, self.index.chunk(chunk)?) {
                break;
            }
        }
        if let Some(chunk) = last_chunk {
            self.readahead_image_order(chunk);
        }
        Ok(pieces)
    }

    /// Queue a background fetch unless the chunk is already here. False when the workers are
    /// saturated (the next read will ask again).
    fn queue_fetch(&self, chunk: u32, info: ChunkInfo) -> bool {
        if self.fetcher.is_cached(&info.hash) || !self.queued.insert(chunk) {
            return true;
        }
        match self.queue.try_send((chunk, info)) {
            Ok(()) => true,
            Err(e) => {
                self.queued.remove(chunk);
                !matches!(e, TrySendError::Full(_))
            }
        }
    }

    /// Chunks are numbered in order of first use in inode order, and a directory's files are
    /// consecutive inodes, so the chunks after the one just read are what a tree walk (tar,
    /// cp -r, a program loading its modules) reads next, across file boundaries.
    fn readahead_image_order(&self, chunk: u32) {
        if self.readahead == 0 {
            return;
        }
        let window_end = chunk
            .saturating_add(1)
            .saturating_add(self.readahead)
            .min(self.index.chunk_count());
        let queued = self.queued_until.load(Ordering::Relaxed);
        // Continue where the previous call stopped, unless the reader jumped elsewhere.
        let from = if queued > chunk && queued <= window_end {
            queued
        } else {
            chunk + 1
        };
        if from >= window_end {
            return;
        }
        self.queued_until.store(window_end, Ordering::Relaxed);
        for next in from..window_end {
            let Ok(info) = self.index.chunk(next) else {
                return;
            };
            if !self.queue_fetch(next, info) {
                // Saturated: remember how far we really got.
                self.queued_until.store(next, Ordering::Relaxed);
                return;
            }
        }
    }

    /// Small files are packed together, so reading one of them fetched its neighbours too.
    /// Storing those into the kernel page cache before answering saves a READ round trip per
    /// file when a tree walk opens them next. A store waits if another READ holds the page
    /// locked, which only a free FUSE worker can release: a worker stores itself only while
    /// another stays free, otherwise a separate thread does it.
    fn push_packed_neighbours(&self, ino: u32, chunk: u32, data: &Arc<Vec<u8>>) {
        self.pushed.insert(ino);
        let (Some(notifier), Some(packed)) = (self.notifier.get(), self.packed.get()) else {
            return;
        };
        let job = PackedChunk {
            ino,
            chunk,
            data: data.clone(),
        };
        if !self.files_to_push(packed, &job).any(|_| true) {
            return;
        }
        let slot = self
            .push_slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        if slot.is_ok() {
            self.store_packed(notifier, packed, &job);
            self.push_slots.fetch_add(1, Ordering::AcqRel);
        } else if let Some(pusher) = self.pusher.get() {
            let _ = pusher.try_send(job);
        }
    }

    /// The files packed into `job.chunk` that the kernel knows and that are not in its page
    /// cache yet (never the one being read: its pages are locked by that READ).
    fn files_to_push<'a>(
        &'a self,
        packed: &'a [(u32, u32)],
        job: &'a PackedChunk,
    ) -> impl Iterator<Item = u32> + 'a {
        let from = packed.partition_point(|&(chunk, _)| chunk < job.chunk);
        packed[from..]
            .iter()
            .take_while(|(c, _)| *c == job.chunk)
            .map(|&(_, ino)| ino)
            .filter(|&ino| {
                ino != job.ino && self.announced.contains(ino) && !self.pushed.contains(ino)
            })
    }

    fn store_packed(&self, notifier: &Notifier, packed: &[(u32, u32)], job: &PackedChunk) {
        for ino in self.files_to_push(packed, job) {
            if !self.pushed.insert(ino) {
                continue; // another worker got there first
            }
            let Ok(inode) = self.index.inode(ino) else {
                continue;
            };
            let Ok(r) = self.index.file_chunk(&inode, 0) else {
                continue;
            };
            let start = r.chunk_offset as usize;
            let Some(bytes) = job.data.get(start..start + r.len as usize) else {
                continue;
            };
            // The kernel may have forgotten the inode since; then this is a no-op.
            match notifier.store(fuse_ino(ino), 0, bytes) {
                Ok(()) => {
                    self.stats.pushed_files.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(ino, error = %e, "page cache store failed"),
            }
        }
    }

    /// (chunk, inode) of every non-empty file that is one piece of a shared chunk, by chunk.
    fn packed_files(&self) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        for ino in 0..self.index.inode_count() {
            let Ok(inode) = self.index.inode(ino) else {
                continue;
            };
            if inode.kind != Kind::File || self.index.file_chunk_count(&inode) != 1 {
                continue;
            }
            let Ok(r) = self.index.file_chunk(&inode, 0) else {
                continue;
            };
            let whole = self
                .index
                .chunk(r.chunk)
                .map_or(true, |c| c.raw_len == r.len);
            if !whole && r.len > 0 {
                out.push((r.chunk, ino));
            }
        }
        out.sort_unstable();
        out
    }

    /// Walks the listing of directory `ino` from `offset` (0 is ".", 1 is "..", 2 + i is entry
    /// i), handing `add` each entry's next offset, name and inode until it reports the reply
    /// full. "." and ".." are given the directory's own inode, as the kernel ignores them.
    fn list_dir(
        &self,
        ino: INodeNo,
        offset: u64,
        mut add: impl FnMut(u64, &[u8], &Inode) -> bool,
    ) -> Result<(), Errno> {
        let dir = self.inode(ino)?;
        if dir.kind != Kind::Dir {
            return Err(Errno::ENOTDIR);
        }
        let count = u64::from(self.index.dir_len(&dir));
        for pos in offset..count + 2 {
            let full = match pos {
                0 => add(1, b".", &dir),
                1 => add(2, b"..", &dir),
                _ => {
                    let (name, child) = self
                        .index
                        .dir_entry(&dir, (pos - 2) as u32)
                        .map_err(|_| Errno::EIO)?;
                    let inode = self.index.inode(child).map_err(|_| Errno::EIO)?;
                    add(pos + 1, name, &inode)
                }
            };
            if full {
                break;
            }
        }
        Ok(())
    }
}

/// A slice of a verified chunk.
struct Piece {
    data: Arc<Vec<u8>>,
    range: std::ops::Range<usize>,
}

impl Filesystem for ImageFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        // Fewer round trips per file: no OPEN/RELEASE, no OPENDIR/RELEASEDIR, attributes of a
        // listed directory's entries delivered with the listing instead of one LOOKUP each.
        // Each is used only if this kernel offers it.
        let wanted = [
            InitFlags::FUSE_NO_OPEN_SUPPORT,
            InitFlags::FUSE_NO_OPENDIR_SUPPORT,
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
        ];
        for flag in wanted {
            if config.add_capabilities(flag).is_ok() {
                if flag == InitFlags::FUSE_NO_OPEN_SUPPORT {
                    self.0.no_open.store(true, Ordering::Relaxed);
                } else if flag == InitFlags::FUSE_NO_OPENDIR_SUPPORT {
                    self.0.no_opendir.store(true, Ordering::Relaxed);
                }
            }
        }
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
                        self.0.prefetch_files(&dir, pos + 1);
                    }
                    Ok(inode)
                }
                Ok(None) => Err(Errno::ENOENT),
                Err(_) => Err(Errno::EIO),
            }
        });
        match result {
            Ok(inode) => {
                self.0.announced.insert(inode.ino);
                reply.entry(&TTL, &attr_of(&inode), Generation(0))
            }
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
            // ENOSYS (once) tells the kernel to stop sending OPEN; it then keeps the page cache
            // across opens, as FOPEN_KEEP_CACHE does.
            Ok(_) if self.0.no_open.load(Ordering::Relaxed) => reply.error(Errno::ENOSYS),
            // Content is immutable, so the kernel page cache may keep it across opens: warm
            // reads never reach this process.
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.0.inode(ino) {
            Ok(dir) if dir.kind != Kind::Dir => reply.error(Errno::ENOTDIR),
            // As for files: the kernel stops asking, and caches listings of this immutable tree.
            Ok(_) if self.0.no_opendir.load(Ordering::Relaxed) => reply.error(Errno::ENOSYS),
            Ok(_) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE | FopenFlags::FOPEN_CACHE_DIR,
            ),
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
        self.0.stats.reads.fetch_add(1, Ordering::Relaxed);
        match self.0.read(&inode, offset, size) {
            Ok(pieces) => match pieces.as_slice() {
                [] => reply.data(&[]),
                [one] => reply.data(&one.data[one.range.clone()]),
                many => {
                    let mut out = Vec::with_capacity(many.iter().map(|p| p.range.len()).sum());
                    for p in many {
                        out.extend_from_slice(&p.data[p.range.clone()]);
                    }
                    reply.data(&out)
                }
            },
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
        let listed = self.0.list_dir(ino, offset, |next, name, inode| {
            reply.add(
                fuse_ino(inode.ino),
                next,
                file_type(inode.kind),
                OsStr::from_bytes(name),
            )
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listed = self.0.list_dir(ino, offset, |next, name, inode| {
            let full = reply.add(
                fuse_ino(inode.ino),
                next,
                OsStr::from_bytes(name),
                &TTL,
                &attr_of(inode),
                Generation(0),
            );
            if !full {
                self.0.announced.insert(inode.ino);
            }
            full
        });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever buffered for writing; ENOSYS makes the kernel stop sending FLUSH.
        reply.error(Errno::ENOSYS);
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

fn spawn_workers(
    rx: Receiver<(u32, ChunkInfo)>,
    fetcher: Arc<Fetcher>,
    queued: Arc<BitSet>,
    n: usize,
) {
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..n.max(1) {
        let rx = rx.clone();
        let fetcher = fetcher.clone();
        let queued = queued.clone();
        std::thread::spawn(move || loop {
            let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok((chunk, info)) = next else { return };
            if let Err(e) = fetcher.get(&info) {
                tracing::warn!(chunk = %info.hash, error = %e, "background fetch failed");
            }
            // Done either way: a failed chunk may be asked for again.
            queued.remove(chunk);
        });
    }
}

/// A live mount; unmounts when dropped or via [`MountHandle::unmount`].
/// How long an unmount waits for the FUSE server to finish.
const UNMOUNT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct MountHandle {
    session: Option<fuser::BackgroundSession>,
    shared: Arc<Shared>,
    trace_path: Option<PathBuf>,
}

impl MountHandle {
    pub fn fetcher(&self) -> &Arc<Fetcher> {
        &self.shared.fetcher
    }

    pub fn stats(&self) -> &MountStats {
        &self.shared.stats
    }

    pub fn unmount(mut self) -> Result<()> {
        self.finish()
    }

    fn finish(&mut self) -> Result<()> {
        if let Some(session) = self.session.take() {
            // A copy of the mount in another mount namespace (a daemon started through
            // `ip netns exec`, a service with private mounts) keeps the FUSE connection alive
            // after our unmount, and the join would wait for it forever: wait a bounded time,
            // then leave the server thread to end when that copy goes.
            let (done, wait) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = done.send(session.umount_and_join());
            });
            match wait.recv_timeout(UNMOUNT_WAIT) {
                Ok(result) => result.map_err(|e| Error::Store {
                    store: "fuse".into(),
                    message: e.to_string(),
                })?,
                Err(_) => tracing::warn!(
                    "image unmounted here, but another mount namespace still holds it: its server runs until that copy goes"
                ),
            }
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
    let queued = Arc::new(BitSet::new(index.chunk_count()));
    spawn_workers(rx, fetcher.clone(), queued.clone(), opts.prefetch_workers);
    let mut prefetch = Vec::new();
    if !opts.prefetch.is_empty() {
        let by_hash: std::collections::HashMap<Hash, ChunkInfo> = (0..index.chunk_count())
            .filter_map(|i| index.chunk(i).ok())
            .map(|c| (c.hash, c))
            .collect();
        prefetch.extend(opts.prefetch.iter().filter_map(|h| by_hash.get(h).copied()));
    }
    let inode_count = index.inode_count();
    let shared = Arc::new(Shared {
        index,
        fetcher: fetcher.clone(),
        readahead: opts.readahead_chunks,
        queue: tx,
        queued,
        trace: opts
            .record_trace
            .as_ref()
            .map(|_| Mutex::new((Vec::new(), HashSet::new()))),
        no_open: AtomicBool::new(false),
        no_opendir: AtomicBool::new(false),
        queued_until: AtomicU32::new(0),
        announced: BitSet::new(inode_count),
        pushed: BitSet::new(inode_count),
        packed: OnceLock::new(),
        notifier: OnceLock::new(),
        push_slots: AtomicUsize::new(opts.threads.max(1) - 1),
        pusher: OnceLock::new(),
        stats: MountStats::default(),
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
        // An image may carry device nodes and setuid binaries: on the host they are inert.
        MountOption::NoDev,
        MountOption::NoSuid,
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
    raise_kernel_readahead(mountpoint);
    if opts.readahead_chunks > 0 {
        let _ = shared.notifier.set(session.notifier());
        let (tx, rx) = sync_channel::<PackedChunk>(256);
        let _ = shared.pusher.set(tx);
        // Weak: the end of the session (which drops the sender) also ends this thread.
        let weak = Arc::downgrade(&shared);
        std::thread::spawn(move || {
            if let Some(shared) = weak.upgrade() {
                let _ = shared.packed.set(shared.packed_files());
            }
            while let Ok(job) = rx.recv() {
                let Some(shared) = weak.upgrade() else { return };
                if let (Some(notifier), Some(packed)) = (shared.notifier.get(), shared.packed.get())
                {
                    shared.store_packed(notifier, packed, &job);
                }
            }
        });
    }
    Ok(MountHandle {
        session: Some(session),
        shared,
        trace_path: opts.record_trace.clone(),
    })
}

/// Kernel readahead for the mount, in KiB. The kernel starts FUSE mounts at 128 KiB whatever
/// the filesystem offers; a larger window means fewer, larger READs for sequential readers.
const KERNEL_READAHEAD_KB: u32 = 1024;

/// Best effort (needs root): set the mount's readahead window through its backing device info.
fn raise_kernel_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(md) = std::fs::metadata(mountpoint) else {
        return;
    };
    let dev = md.dev();
    let path = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    if let Err(e) = std::fs::write(&path, KERNEL_READAHEAD_KB.to_string()) {
        tracing::debug!(path, error = %e, "could not raise the kernel readahead window");
    }
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
