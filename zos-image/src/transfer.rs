//! Copying images between stores (push to a hub, pull into a local store).

use std::sync::Arc;

use rayon::prelude::*;

use crate::chunk::encode_object;
use crate::error::{Error, Result};
use crate::fetch::Fetcher;
use crate::hash::Hash;
use crate::image::{open_image, Trust};
use crate::progress::Progress;
use crate::store::{Object, Store};

/// Parallel requests while transferring: network latency, not CPU, is the limit.
const TRANSFER_THREADS: usize = 8;

#[derive(Debug, Default, Clone)]
pub struct TransferReport {
    pub chunks: u64,
    pub copied_chunks: u64,
    pub copied_bytes: u64,
}

/// Copy image `root` from `sources` into `dest`, verifying everything on the way. Chunks the
/// destination already has are skipped. The index goes last, so a destination never lists an
/// image whose chunks are not all there yet.
pub fn copy_image(
    sources: &[Arc<dyn Store>],
    dest: &dyn Store,
    root: &Hash,
    trust: &Trust,
    show_progress: bool,
) -> Result<TransferReport> {
    let image = open_image(sources, root, trust)?;
    let fetcher = Fetcher::new(sources.to_vec(), None);
    let count = image.index.chunk_count();
    let progress = Progress::items(show_progress, u64::from(count), "transferring");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(TRANSFER_THREADS)
        .build()
        .map_err(|e| Error::InvalidInput(format!("thread pool: {e}")))?;
    let copied: Vec<Result<Option<u64>>> = pool.install(|| {
        (0..count)
            .into_par_iter()
            .map(|i| {
                let info = image.index.chunk(i)?;
                let result = if dest.has(Object::Chunk(info.hash))? {
                    None
                } else {
                    // Re-encode from verified plaintext: what lands in `dest` is known good.
                    let plain = fetcher.fetch_remote(&info)?;
                    let object = encode_object(&plain);
                    dest.put(Object::Chunk(info.hash), &object)?;
                    Some(object.len() as u64)
                };
                progress.inc(1);
                Ok(result)
            })
            .collect()
    });
    progress.finish();
    let mut report = TransferReport {
        chunks: u64::from(count),
        ..Default::default()
    };
    for r in copied {
        if let Some(bytes) = r? {
            report.copied_chunks += 1;
            report.copied_bytes += bytes;
        }
    }
    if let Some(sig) = &image.signature {
        dest.put(Object::Signature(*root), sig)?;
    }
    dest.put(Object::Index(*root), image.index.as_bytes())?;
    Ok(report)
}
