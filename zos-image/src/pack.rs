//! Pack a directory tree into an index plus chunks in a store.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use std::io::Read;

use crate::chunk::{chunk_reader, encode_object, PACK_FILE_MAX, PACK_TARGET};
use crate::error::{Error, IoContext, Result};
use crate::format::{encode, ChunkInfo, EncodeStats, Meta, Node, NodeKind, Piece, Tree};
use crate::hash::Hash;
use crate::progress::Progress;
use crate::sign;
use crate::store::{Object, Store};

#[derive(Debug, Clone, Default)]
pub struct PackOptions {
    /// Worker threads for chunking/compression (0 = all cores).
    pub threads: usize,
    pub show_progress: bool,
}

#[derive(Debug, Clone)]
pub struct PackResult {
    pub root: Hash,
    pub index_len: u64,
    pub stats: EncodeStats,
    /// Stored bytes newly written to the store (what was not there yet).
    pub new_bytes: u64,
}

fn meta_of(md: &fs::Metadata) -> Meta {
    Meta {
        perm: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec() as u32,
    }
}

fn read_xattrs(path: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let names = match xattr::list(path) {
        Ok(names) => names,
        // Filesystems without xattr support simply have none.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(out),
        Err(e) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    for name in names {
        if let Some(value) = xattr::get(path, &name).at(path)? {
            out.push((name.as_bytes().to_vec(), value));
        }
    }
    out.sort();
    Ok(out)
}

struct Walker {
    tree: Tree,
    /// (dev, ino) -> node, to turn hardlinks back into one inode.
    seen: HashMap<(u64, u64), usize>,
    files: Vec<(usize, PathBuf, u64)>,
}

impl Walker {
    fn add(&mut self, path: &Path, md: &fs::Metadata) -> Result<usize> {
        let ft = md.file_type();
        if !ft.is_dir() && md.nlink() > 1 {
            if let Some(id) = self.seen.get(&(md.dev(), md.ino())) {
                return Ok(*id);
            }
        }
        let kind = if ft.is_dir() {
            NodeKind::Dir(Vec::new())
        } else if ft.is_file() {
            NodeKind::File {
                size: md.len(),
                pieces: Vec::new(),
            }
        } else if ft.is_symlink() {
            NodeKind::Symlink(
                fs::read_link(path)
                    .at(path)?
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            )
        } else if ft.is_char_device() {
            NodeKind::CharDev(md.rdev())
        } else if ft.is_block_device() {
            NodeKind::BlockDev(md.rdev())
        } else if ft.is_fifo() {
            NodeKind::Fifo
        } else if ft.is_socket() {
            NodeKind::Socket
        } else {
            return Err(Error::InvalidInput(format!(
                "{}: unsupported file type",
                path.display()
            )));
        };
        let id = self.tree.nodes.len();
        if ft.is_file() {
            self.files.push((id, path.to_path_buf(), md.len()));
        }
        self.tree.nodes.push(Node {
            meta: meta_of(md),
            kind,
            xattrs: read_xattrs(path)?,
        });
        if !ft.is_dir() && md.nlink() > 1 {
            self.seen.insert((md.dev(), md.ino()), id);
        }
        if ft.is_dir() {
            let mut names: Vec<OsString> = fs::read_dir(path)
                .at(path)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<std::io::Result<_>>()
                .at(path)?;
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            let mut entries = Vec::with_capacity(names.len());
            for name in names {
                let child = path.join(&name);
                let md = fs::symlink_metadata(&child).at(&child)?;
                let child_id = self.add(&child, &md)?;
                entries.push((name.as_bytes().to_vec(), child_id));
            }
            self.tree.nodes[id].kind = NodeKind::Dir(entries);
        }
        Ok(id)
    }
}

/// Regular files found by the walk: (node id, path, size), in tree order.
type FileList = Vec<(usize, PathBuf, u64)>;

/// Walk `src` into a tree (file contents not read yet).
fn walk(src: &Path) -> Result<(Tree, FileList)> {
    let md = fs::symlink_metadata(src).at(src)?;
    if !md.is_dir() {
        return Err(Error::InvalidInput(format!(
            "{} is not a directory",
            src.display()
        )));
    }
    let mut w = Walker {
        tree: Tree::default(),
        seen: HashMap::new(),
        files: Vec::new(),
    };
    w.add(src, &md)?;
    Ok((w.tree, w.files))
}

/// Store one chunk unless the store already has it; returns its info and the bytes written.
fn store_chunk(store: &dyn Store, plain: &[u8]) -> Result<(ChunkInfo, u64)> {
    let hash = Hash::of(plain);
    let object = Object::Chunk(hash);
    let info = ChunkInfo {
        hash,
        raw_len: plain.len() as u32,
    };
    if store.size(object)?.is_some_and(|n| n > 0) {
        return Ok((info, 0));
    }
    let encoded = encode_object(plain);
    store.put(object, &encoded)?;
    Ok((info, encoded.len() as u64))
}

fn changed(path: &Path, size: u64, read: u64) -> Error {
    Error::InvalidInput(format!(
        "{}: file changed while packing ({size} bytes expected, {read} read)",
        path.display()
    ))
}

/// What one worker does: a group of small files sharing a chunk, or one larger file.
enum Job<'a> {
    Packed(Vec<&'a (usize, PathBuf, u64)>),
    Single(&'a (usize, PathBuf, u64)),
}

type JobResult = Result<(Vec<(usize, Vec<Piece>)>, u64)>;

/// Small files are concatenated into one chunk; each gets a piece pointing into it.
fn pack_small_files(
    store: &dyn Store,
    files: &[&(usize, PathBuf, u64)],
    progress: &Progress,
) -> JobResult {
    let mut buf = Vec::with_capacity(files.iter().map(|f| f.2 as usize).sum());
    let mut spans = Vec::with_capacity(files.len());
    for (id, path, size) in files.iter().map(|f| (f.0, &f.1, f.2)) {
        let start = buf.len();
        fs::File::open(path)
            .and_then(|f| f.take(size + 1).read_to_end(&mut buf))
            .at(path)?;
        let read = (buf.len() - start) as u64;
        if read != size {
            return Err(changed(path, size, read));
        }
        spans.push((id, start as u32, size as u32));
    }
    let (info, new_bytes) = store_chunk(store, &buf)?;
    progress.inc(buf.len() as u64);
    let pieces = spans
        .into_iter()
        .map(|(id, offset, len)| {
            (
                id,
                vec![Piece {
                    chunk: info,
                    offset,
                    len,
                }],
            )
        })
        .collect();
    Ok((pieces, new_bytes))
}

/// A larger file: whole, or cut with FastCDC.
fn pack_file(
    store: &dyn Store,
    id: usize,
    path: &Path,
    size: u64,
    progress: &Progress,
) -> JobResult {
    let file = fs::File::open(path).at(path)?;
    let mut pieces = Vec::new();
    let mut new_bytes = 0u64;
    let read = chunk_reader(
        std::io::BufReader::with_capacity(1 << 20, file),
        size,
        |plain| {
            let (info, added) = store_chunk(store, plain)?;
            new_bytes += added;
            pieces.push(Piece::whole(info));
            progress.inc(plain.len() as u64);
            Ok(())
        },
    )
    .at(path)?;
    if read != size {
        return Err(changed(path, size, read));
    }
    Ok((vec![(id, pieces)], new_bytes))
}

/// Group files into jobs in tree order; the grouping depends only on the tree, never on timing.
fn plan_jobs(files: &[(usize, PathBuf, u64)]) -> Vec<Job<'_>> {
    let mut jobs = Vec::new();
    let mut group: Vec<&(usize, PathBuf, u64)> = Vec::new();
    let mut group_bytes = 0u64;
    for f in files {
        if f.2 == 0 {
            continue;
        }
        if f.2 <= PACK_FILE_MAX {
            group.push(f);
            group_bytes += f.2;
            if group_bytes >= PACK_TARGET {
                jobs.push(Job::Packed(std::mem::take(&mut group)));
                group_bytes = 0;
            }
        } else {
            jobs.push(Job::Single(f));
        }
    }
    if !group.is_empty() {
        jobs.push(Job::Packed(group));
    }
    jobs
}

/// Pack `src` into `store`; optionally sign the root. Returns the image root.
pub fn pack_dir(
    src: &Path,
    store: Arc<dyn Store>,
    signer: Option<&ed25519_dalek::SigningKey>,
    opts: &PackOptions,
) -> Result<PackResult> {
    let (mut tree, files) = walk(src)?;
    let total: u64 = files.iter().map(|f| f.2).sum();
    let progress = Progress::bytes(opts.show_progress, total, "packing");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| Error::InvalidInput(format!("thread pool: {e}")))?;
    let jobs = plan_jobs(&files);
    let results: Vec<JobResult> = pool.install(|| {
        jobs.par_iter()
            .map(|job| match job {
                Job::Packed(group) => pack_small_files(&*store, group, &progress),
                Job::Single(f) => pack_file(&*store, f.0, &f.1, f.2, &progress),
            })
            .collect()
    });
    progress.finish();
    let mut new_bytes = 0;
    for result in results {
        let (assigned, added) = result?;
        new_bytes += added;
        for (id, pieces) in assigned {
            if let NodeKind::File { pieces: slot, .. } = &mut tree.nodes[id].kind {
                *slot = pieces;
            }
        }
    }
    finish_image(&tree, store.as_ref(), signer, new_bytes)
}

/// Encode the tree, store index and signature.
pub fn finish_image(
    tree: &Tree,
    store: &dyn Store,
    signer: Option<&ed25519_dalek::SigningKey>,
    new_bytes: u64,
) -> Result<PackResult> {
    let (index, stats) = encode(tree)?;
    let root = Hash::of(&index);
    store.put(Object::Index(root), &index)?;
    if let Some(key) = signer {
        store.put(Object::Signature(root), &sign::sign(&root, key))?;
    }
    Ok(PackResult {
        root,
        index_len: index.len() as u64,
        stats,
        new_bytes,
    })
}
