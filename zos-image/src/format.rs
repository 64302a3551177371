//! The index: a compact, deterministic binary description of a whole POSIX tree.
//!
//! Layout (all integers little endian), sections back to back with sizes implied by the header
//! counts, so there are no offsets that could disagree with each other:
//!
//! ```text
//! header      64 bytes   magic "ZOSIMG\0\0", version, counts
//! inodes      64 bytes each, indexed by inode number (0 = root directory)
//! dirents      8 bytes each (name end, inode), grouped per directory, sorted by raw name
//! chunk refs  16 bytes each (file offset, chunk, offset in chunk), per regular file, in order
//! chunks      36 bytes each (BLAKE3, length), unique, in order of first use
//! names       entry names back to back, in dirent order
//! blob        symlink targets and xattrs, referenced by (offset, length)
//! ```
//!
//! Small files are packed together into shared chunks (a chunk ref says where in the chunk a
//! file's bytes are); large files are cut into content-defined chunks. Every table is laid out
//! so that neighbouring records differ little, which is what makes the index compress well.
//!
//! Fixed-size records make every lookup O(1) or a binary search directly on the (possibly
//! memory-mapped) bytes: nothing has to be loaded or parsed up front beyond one validation pass.
//! The encoder emits exactly one byte sequence per tree (canonical order everywhere, reserved
//! fields zero), and the decoder rejects anything non-canonical, so root = BLAKE3(index) pins the
//! tree.

use std::collections::HashMap;
use std::ops::Range;

use crate::error::{corrupt, FormatError};
use crate::hash::Hash;

pub const MAGIC: [u8; 8] = *b"ZOSIMG\0\0";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;
pub const INODE_LEN: usize = 64;
pub const DIRENT_LEN: usize = 8;
pub const CHUNK_REF_LEN: usize = 16;
pub const CHUNK_LEN: usize = 36;
/// Upper bound on a chunk's plaintext size; a decoder never allocates more than this per chunk.
pub const MAX_CHUNK_LEN: u32 = 4 << 20;
pub const MAX_NAME_LEN: usize = 255;

type FResult<T> = Result<T, FormatError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Dir = 1,
    File = 2,
    Symlink = 3,
    CharDev = 4,
    BlockDev = 5,
    Fifo = 6,
    Socket = 7,
}

impl Kind {
    fn from_u8(v: u8) -> FResult<Kind> {
        Ok(match v {
            1 => Kind::Dir,
            2 => Kind::File,
            3 => Kind::Symlink,
            4 => Kind::CharDev,
            5 => Kind::BlockDev,
            6 => Kind::Fifo,
            7 => Kind::Socket,
            other => return corrupt(format!("unknown inode kind {other}")),
        })
    }

    /// The S_IFMT bits for this kind.
    pub fn mode_bits(self) -> u32 {
        match self {
            Kind::Dir => libc::S_IFDIR,
            Kind::File => libc::S_IFREG,
            Kind::Symlink => libc::S_IFLNK,
            Kind::CharDev => libc::S_IFCHR,
            Kind::BlockDev => libc::S_IFBLK,
            Kind::Fifo => libc::S_IFIFO,
            Kind::Socket => libc::S_IFSOCK,
        }
    }
}

/// Metadata common to every inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Meta {
    /// Permission bits including setuid/setgid/sticky (mode & 0o7777).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
}

/// One decoded inode record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inode {
    pub ino: u32,
    pub kind: Kind,
    pub meta: Meta,
    pub nlink: u32,
    /// Regular file: content length. Symlink: target length. Directory: entry count.
    pub size: u64,
    /// Dir: first dirent; File: first chunk ref; Symlink: blob offset; device: rdev.
    a: u64,
    /// Dir: dirent count; File: chunk ref count; Symlink: target length.
    b: u32,
    xattr_len: u32,
    xattr_off: u64,
}

impl Inode {
    pub fn rdev(&self) -> u64 {
        match self.kind {
            Kind::CharDev | Kind::BlockDev => self.a,
            _ => 0,
        }
    }

    pub fn has_xattrs(&self) -> bool {
        self.xattr_len > 0
    }

    fn range(&self) -> Range<u64> {
        self.a..self.a + u64::from(self.b)
    }
}

/// A chunk as listed in the index: its name (BLAKE3 of the plaintext) and plaintext length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    pub hash: Hash,
    pub raw_len: u32,
}

/// Where a piece of a regular file lives: bytes `file_offset..file_offset+len` of the file are
/// bytes `chunk_offset..chunk_offset+len` of chunk number `chunk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    pub file_offset: u64,
    pub chunk: u32,
    pub chunk_offset: u32,
    pub len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub inode_count: u64,
    pub dirent_count: u64,
    pub chunk_ref_count: u64,
    pub chunk_count: u64,
    pub blob_len: u64,
    pub names_len: u64,
}

impl Header {
    fn section_ranges(&self) -> FResult<[Range<usize>; 6]> {
        let sizes = [
            self.inode_count.checked_mul(INODE_LEN as u64),
            self.dirent_count.checked_mul(DIRENT_LEN as u64),
            self.chunk_ref_count.checked_mul(CHUNK_REF_LEN as u64),
            self.chunk_count.checked_mul(CHUNK_LEN as u64),
            Some(self.names_len),
            Some(self.blob_len),
        ];
        let mut start = HEADER_LEN as u64;
        let mut out: [Range<usize>; 6] = Default::default();
        for (slot, size) in out.iter_mut().zip(sizes) {
            let end = size
                .and_then(|s| start.checked_add(s))
                .filter(|e| *e <= usize::MAX as u64)
                .ok_or(FormatError::Corrupt("section sizes overflow".into()))?;
            *slot = start as usize..end as usize;
            start = end;
        }
        Ok(out)
    }

    fn total_len(&self) -> FResult<u64> {
        Ok(self.section_ranges()?[BLOB].end as u64)
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4-byte slice"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8-byte slice"))
}

/// Bytes backing an index: owned or memory-mapped.
pub enum IndexBytes {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for IndexBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            IndexBytes::Owned(v) => v,
            IndexBytes::Mapped(m) => m,
        }
    }
}

/// A validated index. All accessors work directly on the encoded bytes.
pub struct Index {
    bytes: IndexBytes,
    header: Header,
    sections: [Range<usize>; 6],
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("header", &self.header)
            .finish()
    }
}

const INODES: usize = 0;
const DIRENTS: usize = 1;
const CHUNK_REFS: usize = 2;
const CHUNKS: usize = 3;
const NAMES: usize = 4;
const BLOB: usize = 5;

impl Index {
    /// Decode and fully validate an index. Never panics on any input.
    pub fn parse(bytes: impl Into<IndexBytesInput>) -> FResult<Index> {
        let bytes = bytes.into().0;
        let header = parse_header(&bytes)?;
        let expected = header.total_len()?;
        if expected != bytes.len() as u64 {
            return Err(FormatError::LengthMismatch {
                expected,
                actual: bytes.len() as u64,
            });
        }
        let sections = header.section_ranges()?;
        let index = Index {
            bytes,
            header,
            sections,
        };
        index.validate()?;
        Ok(index)
    }

    pub fn root_hash(&self) -> Hash {
        Hash::of(&self.bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn header(&self) -> Header {
        self.header
    }

    pub fn inode_count(&self) -> u32 {
        self.header.inode_count as u32
    }

    pub fn chunk_count(&self) -> u32 {
        self.header.chunk_count as u32
    }

    fn record(&self, section: usize, len: usize, i: u64) -> FResult<&[u8]> {
        let range = &self.sections[section];
        let start = (i as usize)
            .checked_mul(len)
            .and_then(|o| o.checked_add(range.start))
            .filter(|s| s.checked_add(len).is_some_and(|e| e <= range.end))
            .ok_or(FormatError::Corrupt(format!("record {i} out of range")))?;
        Ok(&self.bytes[start..start + len])
    }

    fn blob(&self, off: u64, len: u64) -> FResult<&[u8]> {
        let blob = &self.bytes[self.sections[BLOB].clone()];
        let end = off.checked_add(len).filter(|e| *e <= blob.len() as u64);
        match end {
            Some(end) => Ok(&blob[off as usize..end as usize]),
            None => corrupt(format!("blob reference {off}+{len} out of range")),
        }
    }

    pub fn inode(&self, ino: u32) -> FResult<Inode> {
        let r = self.record(INODES, INODE_LEN, u64::from(ino))?;
        let kind = Kind::from_u8(r[0])?;
        if r[1] != 0 || u16_at(r, 2) != 0 {
            return corrupt(format!("inode {ino}: reserved bytes set"));
        }
        let meta = Meta {
            perm: u32_at(r, 4),
            uid: u32_at(r, 8),
            gid: u32_at(r, 12),
            mtime_nsec: u32_at(r, 20),
            mtime_sec: u64_at(r, 24) as i64,
        };
        if meta.perm & !0o7777 != 0 {
            return corrupt(format!(
                "inode {ino}: mode {:o} has bits outside 0o7777",
                meta.perm
            ));
        }
        if meta.mtime_nsec >= 1_000_000_000 {
            return corrupt(format!("inode {ino}: nanoseconds out of range"));
        }
        Ok(Inode {
            ino,
            kind,
            meta,
            nlink: u32_at(r, 16),
            size: u64_at(r, 32),
            a: u64_at(r, 40),
            b: u32_at(r, 48),
            xattr_len: u32_at(r, 52),
            xattr_off: u64_at(r, 56),
        })
    }

    /// Entry `i` (absolute dirent index): (raw name, inode). A name runs from the previous
    /// entry's end to this entry's end in the names section.
    fn dirent(&self, i: u64) -> FResult<(&[u8], u32)> {
        let r = self.record(DIRENTS, DIRENT_LEN, i)?;
        let end = u64::from(u32_at(r, 0));
        let ino = u32_at(r, 4);
        let start = if i == 0 {
            0
        } else {
            u64::from(u32_at(self.record(DIRENTS, DIRENT_LEN, i - 1)?, 0))
        };
        let names = &self.bytes[self.sections[NAMES].clone()];
        if start >= end || end > names.len() as u64 {
            return corrupt(format!("dirent {i}: name out of range"));
        }
        Ok((&names[start as usize..end as usize], ino))
    }

    fn expect_kind(inode: &Inode, kind: Kind) -> FResult<()> {
        if inode.kind == kind {
            Ok(())
        } else {
            corrupt(format!(
                "inode {} is {:?}, expected {kind:?}",
                inode.ino, inode.kind
            ))
        }
    }

    /// Number of entries in a directory (excluding "." and "..").
    pub fn dir_len(&self, dir: &Inode) -> u32 {
        if dir.kind == Kind::Dir {
            dir.b
        } else {
            0
        }
    }

    /// The `i`-th entry of a directory, in sorted order.
    pub fn dir_entry(&self, dir: &Inode, i: u32) -> FResult<(&[u8], u32)> {
        Self::expect_kind(dir, Kind::Dir)?;
        if i >= dir.b {
            return corrupt("directory entry index out of range");
        }
        self.dirent(dir.a + u64::from(i))
    }

    pub fn dir_entries<'a>(
        &'a self,
        dir: &Inode,
    ) -> FResult<impl Iterator<Item = FResult<(&'a [u8], u32)>> + 'a> {
        Self::expect_kind(dir, Kind::Dir)?;
        Ok(dir.range().map(move |i| self.dirent(i)))
    }

    /// Binary search a directory for `name`.
    pub fn lookup(&self, dir: &Inode, name: &[u8]) -> FResult<Option<u32>> {
        Ok(self.lookup_pos(dir, name)?.map(|(_, ino)| ino))
    }

    /// Like [`Index::lookup`], also returning the entry's position in the directory.
    pub fn lookup_pos(&self, dir: &Inode, name: &[u8]) -> FResult<Option<(u32, u32)>> {
        Self::expect_kind(dir, Kind::Dir)?;
        let (mut lo, mut hi) = (0u32, dir.b);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (entry, ino) = self.dirent(dir.a + u64::from(mid))?;
            match entry.cmp(name) {
                std::cmp::Ordering::Equal => return Ok(Some((mid, ino))),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }

    /// Resolve a slash-separated path from the root without following symlinks.
    pub fn resolve(&self, path: &[u8]) -> FResult<Option<u32>> {
        let mut ino = 0u32;
        for part in path
            .split(|b| *b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
        {
            let inode = self.inode(ino)?;
            if inode.kind != Kind::Dir {
                return Ok(None);
            }
            match self.lookup(&inode, part)? {
                Some(next) => ino = next,
                None => return Ok(None),
            }
        }
        Ok(Some(ino))
    }

    pub fn symlink_target(&self, inode: &Inode) -> FResult<&[u8]> {
        Self::expect_kind(inode, Kind::Symlink)?;
        self.blob(inode.a, u64::from(inode.b))
    }

    pub fn xattrs(&self, inode: &Inode) -> FResult<Vec<(&[u8], &[u8])>> {
        let mut data = self.blob(inode.xattr_off, u64::from(inode.xattr_len))?;
        let mut out = Vec::new();
        while !data.is_empty() {
            if data.len() < 6 {
                return corrupt("truncated xattr record");
            }
            let name_len = u16_at(data, 0) as usize;
            let value_len = u32_at(data, 2) as usize;
            let rest = &data[6..];
            if name_len == 0 || rest.len() < name_len || rest.len() - name_len < value_len {
                return corrupt("xattr record out of range");
            }
            let (name, rest) = rest.split_at(name_len);
            let (value, rest) = rest.split_at(value_len);
            if out
                .last()
                .is_some_and(|(prev, _): &(&[u8], &[u8])| *prev >= name)
            {
                return corrupt("xattr names not strictly sorted");
            }
            out.push((name, value));
            data = rest;
        }
        Ok(out)
    }

    pub fn file_chunk_count(&self, file: &Inode) -> u32 {
        if file.kind == Kind::File {
            file.b
        } else {
            0
        }
    }

    /// The `i`-th chunk reference of a regular file.
    pub fn file_chunk(&self, file: &Inode, i: u32) -> FResult<ChunkRef> {
        Self::expect_kind(file, Kind::File)?;
        if i >= file.b {
            return corrupt("chunk reference index out of range");
        }
        let r = self.record(CHUNK_REFS, CHUNK_REF_LEN, file.a + u64::from(i))?;
        let file_offset = u64_at(r, 0);
        let end = if i + 1 < file.b {
            u64_at(
                self.record(CHUNK_REFS, CHUNK_REF_LEN, file.a + u64::from(i) + 1)?,
                0,
            )
        } else {
            file.size
        };
        let len = end
            .checked_sub(file_offset)
            .and_then(|l| u32::try_from(l).ok())
            .filter(|l| *l > 0 && *l <= MAX_CHUNK_LEN)
            .ok_or(FormatError::Corrupt(format!(
                "file {}: bad piece {i}",
                file.ino
            )))?;
        Ok(ChunkRef {
            file_offset,
            chunk: u32_at(r, 8),
            chunk_offset: u32_at(r, 12),
            len,
        })
    }

    /// Index (within the file) of the chunk reference covering byte `offset`.
    pub fn file_chunk_at(&self, file: &Inode, offset: u64) -> FResult<Option<u32>> {
        Self::expect_kind(file, Kind::File)?;
        if offset >= file.size || file.b == 0 {
            return Ok(None);
        }
        // Last reference whose start is <= offset.
        let (mut lo, mut hi) = (0u32, file.b);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.file_chunk(file, mid)?.file_offset <= offset {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        Ok(Some(lo))
    }

    pub fn chunk(&self, i: u32) -> FResult<ChunkInfo> {
        let r = self.record(CHUNKS, CHUNK_LEN, u64::from(i))?;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&r[..32]);
        Ok(ChunkInfo {
            hash: Hash(hash),
            raw_len: u32_at(r, 32),
        })
    }

    /// Check every structural invariant once, so later accessors can only fail on a bug.
    fn validate(&self) -> FResult<()> {
        let h = self.header;
        if h.inode_count == 0 {
            return corrupt("no root inode");
        }
        if h.inode_count > u64::from(u32::MAX) || h.chunk_count > u64::from(u32::MAX) {
            return corrupt("too many inodes or chunks");
        }
        let mut hashes = std::collections::HashSet::with_capacity(h.chunk_count as usize);
        for i in 0..h.chunk_count as u32 {
            let c = self.chunk(i)?;
            if !hashes.insert(c.hash) {
                return corrupt("chunk listed twice");
            }
            if c.raw_len == 0 || c.raw_len > MAX_CHUNK_LEN {
                return corrupt(format!("chunk {i} has invalid length"));
            }
        }
        drop(hashes);
        // Chunks must appear in order of first use (canonical, and every chunk is used).
        let mut next_new_chunk = 0u64;
        // Directory and chunk-ref ranges must tile their sections in inode order.
        let mut next_dirent = 0u64;
        let mut next_ref = 0u64;
        let mut referenced = vec![0u32; h.inode_count as usize];
        for ino in 0..h.inode_count as u32 {
            let inode = self.inode(ino)?;
            if ino == 0 && inode.kind != Kind::Dir {
                return corrupt("root inode is not a directory");
            }
            if inode.xattr_len > 0 {
                self.xattrs(&inode)?;
            } else if inode.xattr_off != 0 {
                return corrupt(format!("inode {ino}: xattr offset without xattrs"));
            }
            match inode.kind {
                Kind::Dir => {
                    if inode.a != next_dirent || inode.size != u64::from(inode.b) {
                        return corrupt(format!("directory {ino}: entries out of place"));
                    }
                    next_dirent += u64::from(inode.b);
                    let mut prev: Option<&[u8]> = None;
                    for i in inode.range() {
                        let (name, child) = self.dirent(i)?;
                        check_name(name)?;
                        if prev.is_some_and(|p| p >= name) {
                            return corrupt(format!("directory {ino}: names not strictly sorted"));
                        }
                        prev = Some(name);
                        let slot =
                            referenced
                                .get_mut(child as usize)
                                .ok_or(FormatError::Corrupt(format!(
                                    "dirent points at missing inode {child}"
                                )))?;
                        *slot = slot.saturating_add(1);
                    }
                }
                Kind::File => {
                    if inode.a != next_ref {
                        return corrupt(format!("file {ino}: chunk refs out of place"));
                    }
                    next_ref += u64::from(inode.b);
                    if (inode.b == 0) != (inode.size == 0) {
                        return corrupt(format!("file {ino}: chunks do not add up to its size"));
                    }
                    let mut expect = 0u64;
                    for i in 0..inode.b {
                        // file_chunk checks that pieces are non-empty and in increasing order.
                        let r = self.file_chunk(&inode, i)?;
                        if r.file_offset != expect {
                            return corrupt(format!("file {ino}: chunk offsets inconsistent"));
                        }
                        match u64::from(r.chunk).cmp(&next_new_chunk) {
                            std::cmp::Ordering::Less => {}
                            std::cmp::Ordering::Equal => next_new_chunk += 1,
                            std::cmp::Ordering::Greater => {
                                return corrupt(format!(
                                    "file {ino}: chunk table not in order of first use"
                                ))
                            }
                        }
                        let c = self.chunk(r.chunk)?;
                        if u64::from(r.chunk_offset) + u64::from(r.len) > u64::from(c.raw_len) {
                            return corrupt(format!(
                                "file {ino}: piece {i} lies outside its chunk"
                            ));
                        }
                        expect += u64::from(r.len);
                    }
                    if expect != inode.size {
                        return corrupt(format!("file {ino}: chunks do not add up to its size"));
                    }
                }
                Kind::Symlink => {
                    if inode.size != u64::from(inode.b) || inode.b == 0 {
                        return corrupt(format!("symlink {ino}: bad target length"));
                    }
                    self.symlink_target(&inode)?;
                }
                Kind::CharDev | Kind::BlockDev | Kind::Fifo | Kind::Socket => {
                    let rdev_ok =
                        matches!(inode.kind, Kind::CharDev | Kind::BlockDev) || inode.a == 0;
                    if !rdev_ok || inode.b != 0 || inode.size != 0 {
                        return corrupt(format!("special inode {ino}: unexpected payload"));
                    }
                }
            }
        }
        if next_dirent != h.dirent_count
            || next_ref != h.chunk_ref_count
            || next_new_chunk != h.chunk_count
        {
            return corrupt("directory, chunk-ref or chunk section has unreferenced records");
        }
        let names_end = match h.dirent_count {
            0 => 0,
            n => u64::from(u32_at(self.record(DIRENTS, DIRENT_LEN, n - 1)?, 0)),
        };
        if names_end != h.names_len {
            return corrupt("names section has unreferenced bytes");
        }
        // A directory reachable twice (or the root reachable at all) would make the tree a graph
        // with cycles; hardlinks are only legal for non-directories.
        for ino in 0..h.inode_count as u32 {
            let kind = self.inode(ino)?.kind;
            let refs = referenced[ino as usize];
            let ok = match (ino, kind) {
                (0, _) => refs == 0,
                (_, Kind::Dir) => refs == 1,
                _ => refs >= 1,
            };
            if !ok {
                return corrupt(format!("inode {ino} is referenced {refs} times"));
            }
        }
        Ok(())
    }
}

/// Accepts either owned bytes or a memory map for [`Index::parse`].
pub struct IndexBytesInput(IndexBytes);

impl From<Vec<u8>> for IndexBytesInput {
    fn from(v: Vec<u8>) -> Self {
        IndexBytesInput(IndexBytes::Owned(v))
    }
}
impl From<&[u8]> for IndexBytesInput {
    fn from(v: &[u8]) -> Self {
        IndexBytesInput(IndexBytes::Owned(v.to_vec()))
    }
}
impl From<memmap2::Mmap> for IndexBytesInput {
    fn from(m: memmap2::Mmap) -> Self {
        IndexBytesInput(IndexBytes::Mapped(m))
    }
}

fn check_name(name: &[u8]) -> FResult<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name == b"." || name == b".." {
        return corrupt(format!(
            "invalid entry name {:?}",
            String::from_utf8_lossy(name)
        ));
    }
    if name.iter().any(|b| *b == b'/' || *b == 0) {
        return corrupt("entry name contains '/' or NUL");
    }
    Ok(())
}

pub fn parse_header(bytes: &[u8]) -> FResult<Header> {
    if bytes.len() < HEADER_LEN {
        if bytes.len() >= 8 && bytes[..8] != MAGIC {
            return Err(FormatError::BadMagic);
        }
        return Err(FormatError::Truncated("header"));
    }
    if bytes[..8] != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = u32_at(bytes, 8);
    if version != FORMAT_VERSION {
        return Err(FormatError::UnsupportedVersion(version));
    }
    if u32_at(bytes, 12) != 0 {
        return corrupt("reserved header bytes set");
    }
    Ok(Header {
        inode_count: u64_at(bytes, 16),
        dirent_count: u64_at(bytes, 24),
        chunk_ref_count: u64_at(bytes, 32),
        chunk_count: u64_at(bytes, 40),
        blob_len: u64_at(bytes, 48),
        names_len: u64_at(bytes, 56),
    })
}

// ---------------------------------------------------------------------------------------------
// Encoding

/// What a node of the in-memory tree is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// Entries: (raw name, node id). Any order; the encoder sorts.
    Dir(Vec<(Vec<u8>, usize)>),
    File {
        size: u64,
        pieces: Vec<Piece>,
    },
    Symlink(Vec<u8>),
    CharDev(u64),
    BlockDev(u64),
    Fifo,
    Socket,
}

/// Part of a file's content: `len` bytes at `offset` inside `chunk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub chunk: ChunkInfo,
    pub offset: u32,
    pub len: u32,
}

impl Piece {
    /// A piece that is a whole chunk.
    pub fn whole(chunk: ChunkInfo) -> Piece {
        Piece {
            chunk,
            offset: 0,
            len: chunk.raw_len,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub meta: Meta,
    pub kind: NodeKind,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// An in-memory tree to encode. Node 0 is the root; a non-directory node referenced from several
/// directory entries is a hardlink.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

/// Statistics computed while encoding (for `inspect` and the pack summary).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EncodeStats {
    pub inodes: u64,
    pub file_bytes: u64,
    pub chunk_refs: u64,
    pub unique_chunks: u64,
    pub unique_bytes: u64,
}

struct BlobWriter {
    data: Vec<u8>,
}

impl BlobWriter {
    fn add(&mut self, bytes: &[u8]) -> Result<u64, FormatError> {
        let off = self.data.len() as u64;
        self.data.extend_from_slice(bytes);
        Ok(off)
    }
}

/// Encode a tree into canonical index bytes.
pub fn encode(tree: &Tree) -> Result<(Vec<u8>, EncodeStats), FormatError> {
    let nodes = &tree.nodes;
    match nodes.first() {
        Some(Node {
            kind: NodeKind::Dir(_),
            ..
        }) => {}
        _ => return corrupt("tree root must be a directory"),
    }
    // Breadth-first numbering over sorted entries: a directory's children are numbered when the
    // directory is visited, so directories are visited in inode order and their entry ranges
    // come out contiguous. Hardlinked nodes keep the number of their first occurrence.
    let mut number: Vec<Option<u32>> = vec![None; nodes.len()];
    let mut order: Vec<usize> = vec![0];
    number[0] = Some(0);
    let mut nlink = vec![0u32; nodes.len()];
    let mut sorted_dirs: HashMap<usize, Vec<(&[u8], usize)>> = HashMap::new();
    let mut visit = 0;
    while visit < order.len() {
        let id = order[visit];
        visit += 1;
        if let NodeKind::Dir(entries) = &nodes[id].kind {
            let mut entries: Vec<(&[u8], usize)> =
                entries.iter().map(|(n, c)| (n.as_slice(), *c)).collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for pair in entries.windows(2) {
                if pair[0].0 == pair[1].0 {
                    return corrupt("duplicate name in directory");
                }
            }
            for (name, child) in &entries {
                check_name(name)?;
                let node = nodes
                    .get(*child)
                    .ok_or(FormatError::Corrupt("dangling node".into()))?;
                nlink[*child] += 1;
                if number[*child].is_none() {
                    number[*child] = Some(order.len() as u32);
                    order.push(*child);
                } else if matches!(node.kind, NodeKind::Dir(_)) || *child == 0 {
                    return corrupt("directory linked more than once");
                }
            }
            sorted_dirs.insert(id, entries);
        }
    }

    // Unique chunks in order of first use: consecutive files mostly use consecutive chunks, so
    // chunk numbers in the ref table are small deltas that compress to almost nothing.
    let mut chunk_table: Vec<ChunkInfo> = Vec::new();
    let mut chunk_pos: HashMap<Hash, u32> = HashMap::new();
    for &id in &order {
        if let NodeKind::File { pieces, .. } = &nodes[id].kind {
            for p in pieces {
                if let Some(&pos) = chunk_pos.get(&p.chunk.hash) {
                    if chunk_table[pos as usize].raw_len != p.chunk.raw_len {
                        return corrupt("one chunk hash with two lengths");
                    }
                } else {
                    chunk_pos.insert(p.chunk.hash, chunk_table.len() as u32);
                    chunk_table.push(p.chunk);
                }
            }
        }
    }

    let mut blob = BlobWriter { data: Vec::new() };
    let mut names: Vec<u8> = Vec::new();
    let mut inodes = Vec::with_capacity(order.len() * INODE_LEN);
    let mut dirents = Vec::new();
    let mut refs = Vec::new();
    let mut stats = EncodeStats {
        inodes: order.len() as u64,
        ..Default::default()
    };
    for &id in &order {
        let node = &nodes[id];
        let (kind, size, a, b) = match &node.kind {
            NodeKind::Dir(_) => {
                let entries = &sorted_dirs[&id];
                let first = (dirents.len() / DIRENT_LEN) as u64;
                for (name, child) in entries {
                    names.extend_from_slice(name);
                    let end = u32::try_from(names.len())
                        .map_err(|_| FormatError::Corrupt("names exceed 4 GiB".into()))?;
                    dirents.extend_from_slice(&end.to_le_bytes());
                    dirents.extend_from_slice(&number[*child].unwrap_or(0).to_le_bytes());
                }
                (Kind::Dir, entries.len() as u64, first, entries.len() as u32)
            }
            NodeKind::File { size, pieces } => {
                let first = (refs.len() / CHUNK_REF_LEN) as u64;
                let mut offset = 0u64;
                for p in pieces {
                    let c = p.chunk;
                    if c.raw_len == 0
                        || c.raw_len > MAX_CHUNK_LEN
                        || p.len == 0
                        || u64::from(p.offset) + u64::from(p.len) > u64::from(c.raw_len)
                    {
                        return corrupt("file piece with invalid length");
                    }
                    refs.extend_from_slice(&offset.to_le_bytes());
                    refs.extend_from_slice(&chunk_pos[&c.hash].to_le_bytes());
                    refs.extend_from_slice(&p.offset.to_le_bytes());
                    offset += u64::from(p.len);
                }
                if offset != *size {
                    return corrupt("file chunks do not add up to its size");
                }
                stats.file_bytes += size;
                stats.chunk_refs += pieces.len() as u64;
                let count = u32::try_from(pieces.len())
                    .map_err(|_| FormatError::Corrupt("file has too many chunks".into()))?;
                (Kind::File, *size, first, count)
            }
            NodeKind::Symlink(target) => {
                if target.is_empty() {
                    return corrupt("empty symlink target");
                }
                let len = u32::try_from(target.len())
                    .map_err(|_| FormatError::Corrupt("symlink target too long".into()))?;
                (Kind::Symlink, target.len() as u64, blob.add(target)?, len)
            }
            NodeKind::CharDev(rdev) => (Kind::CharDev, 0, *rdev, 0),
            NodeKind::BlockDev(rdev) => (Kind::BlockDev, 0, *rdev, 0),
            NodeKind::Fifo => (Kind::Fifo, 0, 0, 0),
            NodeKind::Socket => (Kind::Socket, 0, 0, 0),
        };
        let (xattr_off, xattr_len) = if node.xattrs.is_empty() {
            (0u64, 0u32)
        } else {
            let mut xs: Vec<&(Vec<u8>, Vec<u8>)> = node.xattrs.iter().collect();
            xs.sort_by(|a, b| a.0.cmp(&b.0));
            let mut enc = Vec::new();
            for (i, (name, value)) in xs.iter().enumerate() {
                if name.is_empty()
                    || name.len() > u16::MAX as usize
                    || (i > 0 && xs[i - 1].0 == *name)
                {
                    return corrupt("invalid or duplicate xattr name");
                }
                let value_len = u32::try_from(value.len())
                    .map_err(|_| FormatError::Corrupt("xattr value too long".into()))?;
                enc.extend_from_slice(&(name.len() as u16).to_le_bytes());
                enc.extend_from_slice(&value_len.to_le_bytes());
                enc.extend_from_slice(name);
                enc.extend_from_slice(value);
            }
            let len = u32::try_from(enc.len())
                .map_err(|_| FormatError::Corrupt("xattrs too large".into()))?;
            (blob.add(&enc)?, len)
        };
        let m = node.meta;
        if m.perm & !0o7777 != 0 || m.mtime_nsec >= 1_000_000_000 {
            return corrupt("invalid mode or timestamp");
        }
        let links = if kind == Kind::Dir {
            2 + sorted_dirs[&id]
                .iter()
                .filter(|(_, c)| matches!(nodes[*c].kind, NodeKind::Dir(_)))
                .count() as u32
        } else {
            nlink[id]
        };
        inodes.push(kind as u8);
        inodes.extend_from_slice(&[0u8; 3]);
        inodes.extend_from_slice(&m.perm.to_le_bytes());
        inodes.extend_from_slice(&m.uid.to_le_bytes());
        inodes.extend_from_slice(&m.gid.to_le_bytes());
        inodes.extend_from_slice(&links.to_le_bytes());
        inodes.extend_from_slice(&m.mtime_nsec.to_le_bytes());
        inodes.extend_from_slice(&m.mtime_sec.to_le_bytes());
        inodes.extend_from_slice(&size.to_le_bytes());
        inodes.extend_from_slice(&a.to_le_bytes());
        inodes.extend_from_slice(&b.to_le_bytes());
        inodes.extend_from_slice(&xattr_len.to_le_bytes());
        inodes.extend_from_slice(&xattr_off.to_le_bytes());
    }

    let mut chunks = Vec::with_capacity(chunk_table.len() * CHUNK_LEN);
    for c in &chunk_table {
        chunks.extend_from_slice(&c.hash.0);
        chunks.extend_from_slice(&c.raw_len.to_le_bytes());
        stats.unique_bytes += u64::from(c.raw_len);
    }
    stats.unique_chunks = chunk_table.len() as u64;

    let mut out = Vec::with_capacity(
        HEADER_LEN
            + inodes.len()
            + dirents.len()
            + refs.len()
            + chunks.len()
            + names.len()
            + blob.data.len(),
    );
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for count in [
        order.len() as u64,
        (dirents.len() / DIRENT_LEN) as u64,
        (refs.len() / CHUNK_REF_LEN) as u64,
        chunk_table.len() as u64,
        blob.data.len() as u64,
        names.len() as u64,
    ] {
        out.extend_from_slice(&count.to_le_bytes());
    }
    debug_assert_eq!(out.len(), HEADER_LEN);
    out.extend_from_slice(&inodes);
    out.extend_from_slice(&dirents);
    out.extend_from_slice(&refs);
    out.extend_from_slice(&chunks);
    out.extend_from_slice(&names);
    out.extend_from_slice(&blob.data);
    Ok((out, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            perm: 0o755,
            uid: 1,
            gid: 2,
            mtime_sec: 1_700_000_000,
            mtime_nsec: 123_456_789,
        }
    }

    fn sample() -> Tree {
        let chunk = Piece::whole(ChunkInfo {
            hash: Hash::of(b"hello"),
            raw_len: 5,
        });
        Tree {
            nodes: vec![
                Node {
                    meta: meta(),
                    kind: NodeKind::Dir(vec![
                        (b"b".to_vec(), 1),
                        (b"a".to_vec(), 2),
                        (b"link".to_vec(), 1),
                        (b"sub".to_vec(), 3),
                    ]),
                    xattrs: vec![],
                },
                Node {
                    meta: meta(),
                    kind: NodeKind::File {
                        size: 10,
                        pieces: vec![chunk, chunk],
                    },
                    xattrs: vec![(b"user.x".to_vec(), b"1".to_vec())],
                },
                Node {
                    meta: meta(),
                    kind: NodeKind::Symlink(b"b".to_vec()),
                    xattrs: vec![],
                },
                Node {
                    meta: meta(),
                    kind: NodeKind::Dir(vec![]),
                    xattrs: vec![],
                },
            ],
        }
    }

    #[test]
    fn encode_decode_lookup() {
        let (bytes, stats) = encode(&sample()).unwrap();
        assert_eq!(stats.unique_chunks, 1);
        let idx = Index::parse(bytes).unwrap();
        let root = idx.inode(0).unwrap();
        let names: Vec<Vec<u8>> = idx
            .dir_entries(&root)
            .unwrap()
            .map(|e| e.unwrap().0.to_vec())
            .collect();
        assert_eq!(
            names,
            vec![
                b"a".to_vec(),
                b"b".to_vec(),
                b"link".to_vec(),
                b"sub".to_vec()
            ]
        );
        let b = idx.lookup(&root, b"b").unwrap().unwrap();
        assert_eq!(idx.lookup(&root, b"link").unwrap(), Some(b));
        let file = idx.inode(b).unwrap();
        assert_eq!(file.nlink, 2);
        assert_eq!(idx.file_chunk_at(&file, 7).unwrap(), Some(1));
        assert_eq!(
            idx.xattrs(&file).unwrap(),
            vec![(&b"user.x"[..], &b"1"[..])]
        );
        assert_eq!(root.nlink, 3);
        assert_eq!(idx.lookup(&root, b"zzz").unwrap(), None);
    }

    #[test]
    fn truncation_and_bad_magic_are_typed_errors() {
        let (bytes, _) = encode(&sample()).unwrap();
        assert!(matches!(
            Index::parse(&bytes[..10]),
            Err(FormatError::Truncated(_))
        ));
        let mut bad = bytes.clone();
        bad[0] ^= 1;
        assert_eq!(Index::parse(bad).unwrap_err(), FormatError::BadMagic);
        assert!(matches!(
            Index::parse(&bytes[..bytes.len() - 1]),
            Err(FormatError::LengthMismatch { .. })
        ));
    }
}
