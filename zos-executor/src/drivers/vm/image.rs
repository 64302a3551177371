//! Images of VM workloads: the node's policy on where they may come from, fetching and checking
//! the index against the spec's root hash, and the verifying read-only FUSE mount.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{anyhow, Context};
use tracing::warn;
use zos_image::{
    cache::ChunkCache,
    fetch::Fetcher,
    image::{open_image, Trust},
    mount::{MountHandle, MountOptions},
    store::{DirStore, HttpStore, Store},
};

use crate::drivers::{DriverError, DriverResult};

/// Chunk cache bound per VM (HTTP sources only; a directory store is local already).
const IMAGE_CACHE_BYTES: u64 = 1 << 30;

/// The node's policy on image sources named by specs. A spec is a stranger's input: by default
/// it may name any http(s) hub and nothing else (never a path on this host); a farmer can
/// narrow that to a list of allowed prefixes (`https://hub.example/`), which is also the only
/// way to let specs use a directory store on the node (`/srv/hub`).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ImageSourcePolicy {
    /// Allowed source prefixes; empty: any `http://` or `https://` URL.
    pub allowed: Vec<String>,
    /// The node's overlay hub (the overlay daemon's `--hub-listen`), asked before the spec's
    /// source: it answers from overlay peers that hold the image. The farmer's choice, not the
    /// spec's; any store may serve, as the index and every chunk are checked by hash.
    #[serde(default)]
    pub overlay_hub: Option<String>,
}

impl ImageSourcePolicy {
    /// Why `source` is refused, if it is.
    pub fn check(&self, source: &str) -> Result<(), String> {
        // Nothing that a URL parser or a path resolver could turn into another location.
        if source.contains("..")
            || source.contains('%')
            || source.contains('\\')
            || source.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "image source {source:?} contains '..', '%', a backslash or whitespace: refused"
            ));
        }
        let is_url = source.starts_with("http://") || source.starts_with("https://");
        if self.allowed.is_empty() {
            return if is_url {
                Ok(())
            } else {
                Err(format!(
                    "image source {source:?} is not an http(s) hub URL (this node takes images from hubs only)"
                ))
            };
        }
        let allowed = self.allowed.iter().any(|prefix| {
            // A prefix matches at a path boundary only: "/srv/hub" does not allow "/srv/hub2".
            source == prefix.trim_end_matches('/')
                || source.starts_with(prefix.as_str())
                    && (prefix.ends_with('/') || source[prefix.len()..].starts_with('/'))
        });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "image source {source:?} is not allowed by this node's policy (allowed: {})",
                self.allowed.join(", ")
            ))
        }
    }
}

/// How long a missing image (404 from its hub) is retried before the deployment fails: a
/// deployer may approve a contract before the image push has finished.
pub(super) const IMAGE_MISSING_GRACE: Duration = Duration::from_secs(600);

/// The image's hub does not have it (yet).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ImageMissing(pub String);

/// Classifies a missing image by how long it has been missing: transient within the grace,
/// permanent after it.
pub(super) fn classify_missing(error: anyhow::Error, missing_for: Duration) -> DriverError {
    if missing_for >= IMAGE_MISSING_GRACE {
        DriverError::permanent(format!(
            "{error:#} (still missing after {} s)",
            missing_for.as_secs()
        ))
    } else {
        DriverError::Transient(error)
    }
}

fn transient(e: anyhow::Error) -> DriverError {
    DriverError::Transient(e)
}

/// Detaches a FUSE mount whose server died with an earlier executor process (ENOTCONN).
pub(super) fn detach_dead_mount(path: &Path) {
    if let Err(e) = std::fs::metadata(path) {
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            warn!(path = %path.display(), "detaching a dead image mount left by an earlier run");
            if let Err(e) = zos_image::overlay::unmount_detach(path) {
                warn!(path = %path.display(), error = %e, "detaching the dead mount failed");
            }
        }
    }
}

/// The store named by `source`: a hub URL or an existing directory store, if the node's policy
/// allows it.
pub(super) fn open_source(
    source: &str,
    policy: &ImageSourcePolicy,
) -> DriverResult<Arc<dyn Store>> {
    policy.check(source).map_err(DriverError::Permanent)?;
    if source.starts_with("http://") || source.starts_with("https://") {
        return Ok(Arc::new(HttpStore::new(source, None)));
    }
    let path = Path::new(source);
    if !path.is_absolute() {
        return Err(DriverError::permanent(format!(
            "image source {source:?} is neither an http(s) hub URL nor an absolute directory store path"
        )));
    }
    if !path.join("images").is_dir() || !path.join("chunks").is_dir() {
        return Err(DriverError::permanent(format!(
            "image source {source}: not a directory store on this node (no images/ and chunks/)"
        )));
    }
    let store = DirStore::open(path)
        .map_err(|e| transient(anyhow!(e).context(format!("opening store {source}"))))?;
    Ok(Arc::new(store))
}

/// The stores an image is read from, in order: the node's overlay hub if it has one, then the
/// spec's source (when the overlay hub is down or lacks an object, the source still serves).
pub(super) fn image_stores(
    source: &str,
    policy: &ImageSourcePolicy,
) -> DriverResult<Vec<Arc<dyn Store>>> {
    let spec_store = open_source(source, policy)?;
    let mut stores: Vec<Arc<dyn Store>> = Vec::with_capacity(2);
    if let Some(hub) = &policy.overlay_hub {
        stores.push(Arc::new(HttpStore::new(hub, None)));
    }
    stores.push(spec_store);
    Ok(stores)
}

/// Fetches the index of image `root` from `source` (checked against the node's policy and
/// against `root`), then mounts it read-only at `mountpoint`. Blocking.
pub fn mount_image(
    source: &str,
    root: zos_image::Hash,
    mountpoint: &Path,
    cache_dir: &Path,
    policy: &ImageSourcePolicy,
) -> DriverResult<MountHandle> {
    use zos_image::Error as E;
    let sources = image_stores(source, policy)?;
    let remote = source.starts_with("http") || policy.overlay_hub.is_some();
    let from = match &policy.overlay_hub {
        Some(hub) => format!("{source} (or the overlay hub {hub})"),
        None => source.to_string(),
    };
    let image = open_image(&sources, &root, &Trust::default()).map_err(|e| match e {
        // Perhaps not pushed yet: retried for a while before the deployment fails.
        E::ImageNotFound(_) => transient(anyhow!(ImageMissing(format!(
            "image {root} is not on {from}"
        )))),
        E::RootMismatch { .. } | E::Format(_) | E::Signature(_) => {
            DriverError::permanent(format!("image from {from} refused: {e}"))
        }
        other => transient(
            anyhow!(other).context(format!("fetching the index of image {root} from {from}")),
        ),
    })?;
    let cache = if remote {
        let (cache, _) = ChunkCache::open(cache_dir, IMAGE_CACHE_BYTES)
            .map_err(|e| transient(anyhow!(e).context("opening the image chunk cache")))?;
        Some(cache)
    } else {
        None
    };
    let fetcher = Arc::new(Fetcher::new(sources, cache));
    detach_dead_mount(mountpoint);
    std::fs::create_dir_all(mountpoint)
        .with_context(|| format!("creating {}", mountpoint.display()))
        .map_err(transient)?;
    let opts = MountOptions {
        threads: 2,
        prefetch_workers: 4,
        ..Default::default()
    };
    let handle = zos_image::mount::mount(image.index, fetcher, mountpoint, &opts).map_err(|e| {
        transient(anyhow!(e).context(format!("mounting image {root} at {}", mountpoint.display())))
    })?;
    if !zos_image::mount::wait_until_mounted(mountpoint, Duration::from_secs(10)) {
        return Err(transient(anyhow!(
            "image mount at {} did not appear",
            mountpoint.display()
        )));
    }
    Ok(handle)
}

/// Unmounts off the async runtime (FUSE teardown blocks).
pub async fn unmount(handle: MountHandle) -> DriverResult<()> {
    tokio::task::spawn_blocking(move || handle.unmount())
        .await
        .map_err(|e| transient(e.into()))?
        .map_err(|e| transient(anyhow!(e).context("unmounting the image")))
}
