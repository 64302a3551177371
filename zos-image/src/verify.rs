//! Full verification of an image: index against root, signature, then every chunk fetched,
//! decoded and re-hashed.

use std::sync::Arc;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::fetch::Fetcher;
use crate::hash::Hash;
use crate::image::{open_image, Trust};
use crate::progress::Progress;
use crate::store::Store;

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub chunks: u64,
    pub bytes: u64,
    pub signed: bool,
    pub missing: Vec<Hash>,
    pub corrupt: Vec<(Hash, String)>,
}

pub fn verify_image(
    sources: &[Arc<dyn Store>],
    root: &Hash,
    trust: &Trust,
    show_progress: bool,
) -> Result<VerifyReport> {
    let image = open_image(sources, root, trust)?;
    let fetcher = Fetcher::new(sources.to_vec(), None);
    let count = image.index.chunk_count();
    let progress = Progress::items(show_progress, u64::from(count), "verifying");
    let results: Vec<(Hash, u32, Result<()>)> = (0..count)
        .into_par_iter()
        .map(|i| {
            let outcome = image.index.chunk(i).map_err(Error::from).map(|info| {
                let r = fetcher.fetch_remote(&info).map(|_| ());
                progress.inc(1);
                (info.hash, info.raw_len, r)
            });
            match outcome {
                Ok(t) => t,
                Err(e) => (Hash([0; 32]), 0, Err(e)),
            }
        })
        .collect();
    progress.finish();
    let mut report = VerifyReport {
        signed: image.signature.is_some(),
        ..Default::default()
    };
    for (hash, len, r) in results {
        report.chunks += 1;
        report.bytes += u64::from(len);
        match r {
            Ok(()) => {}
            Err(Error::ChunkMissing(h)) => report.missing.push(h),
            Err(e) => report.corrupt.push((hash, e.to_string())),
        }
    }
    if !report.missing.is_empty() || !report.corrupt.is_empty() {
        let first = report
            .corrupt
            .first()
            .map(|(_, e)| e.clone())
            .or_else(|| report.missing.first().map(|h| format!("chunk {h} missing")))
            .unwrap_or_default();
        return Err(Error::VerifyFailed {
            missing: report.missing.len(),
            corrupt: report.corrupt.len(),
            first,
        });
    }
    Ok(report)
}
