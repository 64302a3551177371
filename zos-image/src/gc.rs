//! Garbage collection of a directory store: every index, signature and chunk that none of the
//! images to keep needs is deleted.
//!
//! A store only grows as images are packed into it (a boot directory packs each node OS
//! release); this is how an operator gives the space back. Objects written recently are spared:
//! an image being packed writes its chunks before its index, so a pack running beside the
//! collection keeps what it has written so far. Uploads that skip chunks the store already
//! holds (`push`, a hub's PUT) do not refresh them: collect only when none is running.

use std::{
    collections::HashSet,
    fs,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::{
    error::{IoContext, Result},
    hash::Hash,
    image::{open_image, Trust},
    store::{DirStore, Object, Store},
};

/// What a collection removed and kept.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    pub images_kept: usize,
    pub images_removed: usize,
    pub chunks_kept: usize,
    pub chunks_removed: usize,
    /// Stored bytes given back.
    pub bytes_removed: u64,
    /// Unreferenced objects left because they are younger than the grace period.
    pub recent_spared: usize,
}

/// The chunks the images `keep` need; an error when one of them is not in `store` with a
/// valid index.
pub fn live_chunks(store: &DirStore, keep: &[Hash]) -> Result<HashSet<Hash>> {
    let source: Arc<dyn Store> = Arc::new(DirStore::open(store.root())?);
    let mut live = HashSet::new();
    for root in keep {
        let image = open_image(std::slice::from_ref(&source), root, &Trust::default())?;
        for i in 0..image.index.chunk_count() {
            live.insert(image.index.chunk(i)?.hash);
        }
    }
    Ok(live)
}

/// Deletes from `store` every object not needed by the images `keep`; objects modified less
/// than `grace` ago stay. Every image to keep must be in the store with a valid index (else
/// nothing is deleted: a typo in a root must not cost the image).
pub fn collect(store: &DirStore, keep: &[Hash], grace: Duration) -> Result<GcReport> {
    let live_chunks = live_chunks(store, keep)?;
    let keep: HashSet<Hash> = keep.iter().copied().collect();
    let now = SystemTime::now();
    let mut report = GcReport {
        images_kept: keep.len(),
        chunks_kept: live_chunks.len(),
        ..GcReport::default()
    };
    let remove = |path: &Path, report: &mut GcReport| -> Result<bool> {
        let meta = fs::symlink_metadata(path).at(path)?;
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if age < grace {
            report.recent_spared += 1;
            return Ok(false);
        }
        fs::remove_file(path).at(path)?;
        report.bytes_removed = report.bytes_removed.saturating_add(meta.len());
        Ok(true)
    };

    let images = store.root().join("images");
    let mut removed_images = HashSet::new();
    for entry in fs::read_dir(&images).at(&images)? {
        let path = entry.at(&images)?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // `<root>.idx`, `<root>.sig`, or a temporary file of an interrupted write.
        let root = name.split('.').next().and_then(|h| h.parse::<Hash>().ok());
        if root.is_some_and(|r| keep.contains(&r)) {
            continue;
        }
        if remove(&path, &mut report)? && name.ends_with(".idx") {
            removed_images.insert(name.to_string());
        }
    }
    report.images_removed = removed_images.len();

    for chunk in store.list_chunks()? {
        if live_chunks.contains(&chunk) {
            continue;
        }
        if remove(&store.path_of(Object::Chunk(chunk)), &mut report)? {
            report.chunks_removed += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pack::{pack_dir, PackOptions};
    use crate::verify::verify_image;

    fn pack(store: &DirStore, files: &[(&str, Vec<u8>)]) -> Hash {
        let src = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            fs::write(src.path().join(name), bytes).unwrap();
        }
        let store: Arc<dyn Store> = Arc::new(DirStore::open(store.root()).unwrap());
        pack_dir(
            src.path(),
            store,
            None,
            &PackOptions {
                threads: 1,
                show_progress: false,
            },
        )
        .unwrap()
        .root
    }

    fn noise(seed: u8, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        let mut x = u64::from(seed) + 1;
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    #[test]
    fn only_what_the_kept_images_need_stays() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let shared = noise(1, 3 << 20);
        let old = pack(
            &store,
            &[("shared", shared.clone()), ("old", noise(2, 2 << 20))],
        );
        let new = pack(&store, &[("shared", shared), ("new", noise(3, 2 << 20))]);
        let before = store.list_chunks().unwrap().len();

        // Everything is recent: nothing goes within the grace period.
        let spared = collect(&store, &[new], Duration::from_secs(3600)).unwrap();
        assert_eq!(spared.chunks_removed, 0);
        assert!(spared.recent_spared > 0);
        assert_eq!(store.list_chunks().unwrap().len(), before);

        let report = collect(&store, &[new], Duration::ZERO).unwrap();
        assert_eq!(report.images_removed, 1);
        assert!(
            report.chunks_removed > 0 && report.bytes_removed > 0,
            "{report:?}"
        );
        assert_eq!(
            store.list_chunks().unwrap().len(),
            before - report.chunks_removed
        );
        let source: Arc<dyn Store> = Arc::new(DirStore::open(dir.path()).unwrap());
        // The kept image is whole (its shared chunks stayed); the old one is gone.
        verify_image(
            std::slice::from_ref(&source),
            &new,
            &Trust::default(),
            false,
        )
        .unwrap();
        assert!(verify_image(
            std::slice::from_ref(&source),
            &old,
            &Trust::default(),
            false
        )
        .is_err());
        // Collecting again finds nothing more.
        let again = collect(&store, &[new], Duration::ZERO).unwrap();
        assert_eq!((again.chunks_removed, again.images_removed), (0, 0));
    }

    #[test]
    fn a_root_not_in_the_store_deletes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = DirStore::open(dir.path()).unwrap();
        let image = pack(&store, &[("f", noise(4, 1 << 20))]);
        let before = store.list_chunks().unwrap();
        let typo = Hash::of(b"not an image");
        assert!(collect(&store, &[typo], Duration::ZERO).is_err());
        assert_eq!(store.list_chunks().unwrap(), before);
        let source: Arc<dyn Store> = Arc::new(DirStore::open(dir.path()).unwrap());
        verify_image(
            std::slice::from_ref(&source),
            &image,
            &Trust::default(),
            false,
        )
        .unwrap();
    }
}
