//! Pruning a boot directory: every published release keeps its OS image in the directory's
//! store, which otherwise only grows. Old releases' manifests go, and then every store object
//! only they needed.

use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};
use zos_image::{gc::GcReport, store::DirStore, Hash};
use zos_release::{ReleaseManifest, Runmode, Version};

use crate::{publish::release_dir, serve::OS_STORE};

/// What a prune removed.
#[derive(Debug)]
pub struct PruneReport {
    /// The release manifests removed, by runmode.
    pub releases_removed: Vec<(Runmode, Version)>,
    /// The releases whose images stay.
    pub releases_kept: Vec<(Runmode, Version)>,
    pub store: GcReport,
}

fn image_root(manifest_json: &Path) -> Result<(Version, Hash)> {
    let bytes = std::fs::read(manifest_json)
        .with_context(|| format!("reading {}", manifest_json.display()))?;
    let m: ReleaseManifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("parsing {}", manifest_json.display()))?;
    let root = m
        .image_root
        .parse()
        .with_context(|| format!("the image root of {}", manifest_json.display()))?;
    Ok((m.version, root))
}

/// Keeps each runmode's `keep` newest published releases, its current one and the versions in
/// `also` (the releases the chain set: nodes fetch those by version), removes the other
/// releases' manifests, then deletes from the OS store every object that neither the kept
/// releases' images nor the directory's last built image (`os-root`) need. Store objects
/// younger than `grace` stay (a build may be packing into the store).
pub fn prune(
    boot_dir: &Path,
    keep: usize,
    also: &[(Runmode, Version)],
    grace: Duration,
) -> Result<PruneReport> {
    if keep == 0 {
        bail!("keep at least one release per runmode");
    }
    let mut roots = Vec::new();
    let mut releases_kept = Vec::new();
    let mut doomed = Vec::new();
    for runmode in Runmode::ALL {
        let dir = release_dir(boot_dir, runmode);
        let current = dir.join("manifest.json");
        let current = if current.exists() {
            let (version, root) = image_root(&current)?;
            roots.push(root);
            Some(version)
        } else {
            None
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut versions: Vec<(Version, std::path::PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse().ok()?;
                Some((version, e.path()))
            })
            .collect();
        versions.sort_by(|a, b| b.0.cmp(&a.0));
        for (i, (version, path)) in versions.into_iter().enumerate() {
            if i < keep || Some(version) == current || also.contains(&(runmode, version)) {
                let (_, root) = image_root(&path.join("manifest.json"))?;
                roots.push(root);
                releases_kept.push((runmode, version));
            } else {
                doomed.push((runmode, version, path));
            }
        }
    }
    let last_built = boot_dir.join("os-root");
    if let Ok(text) = std::fs::read_to_string(&last_built) {
        roots.push(
            text.trim()
                .parse()
                .with_context(|| format!("parsing {}", last_built.display()))?,
        );
    }
    roots.sort();
    roots.dedup();
    // Every kept image's index is read before anything is removed: a release whose image is
    // not in the store stops the prune.
    if roots.is_empty() {
        bail!(
            "no release and no built image in {}: nothing to keep",
            boot_dir.display()
        );
    }
    let store = DirStore::open(boot_dir.join(OS_STORE))?;
    zos_image::gc::live_chunks(&store, &roots)
        .context("an image to keep is not in the OS store; nothing removed")?;
    let mut releases_removed = Vec::new();
    // Manifests first: a node never finds a release whose image is being removed.
    for (runmode, version, path) in doomed {
        std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        releases_removed.push((runmode, version));
    }
    let report =
        zos_image::gc::collect(&store, &roots, grace).context("collecting the OS store")?;
    Ok(PruneReport {
        releases_removed,
        releases_kept,
        store: report,
    })
}
