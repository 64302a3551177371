//! Disk driver: a raw block device for a VM, stored as a sparse file
//! `<contract dir>/disks/<name>.raw` of exactly the spec's size. Grown in place on update;
//! shrinking would destroy data, so it is refused. Removed with the contract.
//!
//! A new disk goes to the filesystem with the most free space among the data directory and the
//! node's capacity disks; on a capacity disk (`<disk>/contracts/<contract>/disks/<name>.raw`)
//! the contract directory keeps a symbolic link to it, so a disk whose capacity disk is not
//! mounted is waited for, never made again empty.
//!
//! A new disk is made beside its final name, formatted ext4 (a journal: a guest that is cut
//! off mid-write finds a consistent filesystem after the journal replay at its next mount),
//! then renamed into place, so a crash never leaves a half-made disk under the final name.
//! Without `mkfs.ext4` on the host the disk stays blank and the guest formats it (ext2).

use std::path::PathBuf;

use anyhow::Context;
use async_trait::async_trait;
use zos_primitives::{
    spec::{Workload, WorkloadKind},
    MIB,
};

use super::{Driver, DriverError, DriverResult, Observed, Usage, WorkloadCtx};

#[derive(Default)]
pub struct DiskDriver;

/// A disk's file name under a contract directory.
fn disk_file(workload: &Workload) -> PathBuf {
    PathBuf::from("disks").join(format!(
        "{}.raw",
        String::from_utf8_lossy(workload.name.as_bytes())
    ))
}

/// A disk's place in its contract directory: the disk file, or a symbolic link to it when it
/// was placed on a capacity disk.
fn disk_link(ctx: &WorkloadCtx, workload: &Workload) -> PathBuf {
    ctx.dir.join(disk_file(workload))
}

/// The disk file of `workload` in `ctx` (through its link when it lives on a capacity disk).
/// Shared with the VM driver, which attaches it.
pub fn disk_path(ctx: &WorkloadCtx, workload: &Workload) -> PathBuf {
    let here = disk_link(ctx, workload);
    std::fs::read_link(&here).unwrap_or(here)
}

/// The error for a disk whose capacity disk is not mounted: its link is there, its file is
/// not. Never answered with a new, empty disk: the tenant's data may come back with the disk.
pub fn out_of_reach(ctx: &WorkloadCtx, workload: &Workload) -> Option<DriverError> {
    let target = std::fs::read_link(disk_link(ctx, workload)).ok()?;
    (!target.exists()).then(|| {
        DriverError::Transient(anyhow::anyhow!(
            "disk {} lives on a capacity disk that is not mounted ({}): waiting for it",
            String::from_utf8_lossy(workload.name.as_bytes()),
            target.display()
        ))
    })
}

/// Where a new disk goes: into whichever of the contract directory and its capacity
/// directories has the most free space (the contract directory on a tie, or when nothing can
/// be measured).
fn placement(ctx: &WorkloadCtx, workload: &Workload) -> PathBuf {
    let mut best = (
        ctx.dir.clone(),
        crate::config::free_bytes(&ctx.dir).unwrap_or(0),
    );
    for dir in &ctx.capacity_dirs {
        match crate::config::free_bytes(dir) {
            Ok(free) if free > best.1 => best = (dir.clone(), free),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "capacity disk not measurable")
            }
        }
    }
    best.0.join(disk_file(workload))
}

fn size_bytes(workload: &Workload) -> DriverResult<u64> {
    match &workload.kind {
        WorkloadKind::Disk(d) => d
            .size_mib
            .checked_mul(MIB)
            .ok_or_else(|| DriverError::permanent("disk size overflows u64 bytes")),
        _ => Err(DriverError::permanent("not a disk workload")),
    }
}

/// Brings an existing disk to `size`, which must not be smaller: shrinking destroys data.
fn grow(path: &std::path::Path, size: u64) -> DriverResult<()> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    if len > size {
        return Err(DriverError::permanent(format!(
            "existing disk is {len} bytes, larger than the spec's {size}: refusing to shrink"
        )));
    }
    sized_file(path, size)?;
    Ok(())
}

fn sync_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing {}", dir.display()))
}

/// Opens (creating) `path` and sets its length; set_len extends sparsely: no blocks are
/// allocated until the guest writes.
fn sized_file(path: &std::path::Path, size: u64) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.set_len(size)
        .with_context(|| format!("sizing {}", path.display()))?;
    file.sync_all().context("syncing the disk file")?;
    Ok(())
}

/// Formats a new (all-zero) disk file ext4; on failure it stays blank for the guest to format.
fn format_ext4(path: &std::path::Path) {
    // No reserved blocks (the tenant's disk); the file is sparse and already zero, so nothing
    // is zeroed, now or later by the guest kernel (which would allocate, and bill, the inode
    // tables); no discard (a file, not a device).
    let out = std::process::Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-m",
            "0",
            "-E",
            "assume_storage_prezeroed=1,nodiscard",
        ])
        .arg(path)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output();
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => tracing::warn!(
            disk = %path.display(),
            error = %String::from_utf8_lossy(&out.stderr).trim(),
            "mkfs.ext4 failed: the guest formats the disk (ext2) instead"
        ),
        Err(e) => tracing::warn!(
            disk = %path.display(),
            error = %e,
            "mkfs.ext4 is not available: the guest formats the disk (ext2) instead"
        ),
    }
}

#[async_trait]
impl Driver for DiskDriver {
    fn kind(&self) -> &'static str {
        "disk"
    }

    async fn install(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()> {
        let size = size_bytes(workload)?;
        let (ctx, workload) = (ctx.clone(), workload.clone());
        tokio::task::spawn_blocking(move || -> DriverResult<()> {
            if let Some(e) = out_of_reach(&ctx, &workload) {
                return Err(e);
            }
            let path = disk_path(&ctx, &workload);
            if std::fs::metadata(&path).is_ok() {
                return grow(&path, size);
            }
            let here = disk_link(&ctx, &workload);
            // A disk already on a capacity disk without its link (a crash between making it
            // and linking it) is adopted, never made again over.
            let file = disk_file(&workload);
            let adopted = ctx
                .capacity_dirs
                .iter()
                .map(|dir| dir.join(&file))
                .find(|p| p.is_file());
            let placed = match adopted {
                Some(existing) => {
                    grow(&existing, size)?;
                    existing
                }
                None => {
                    let placed = placement(&ctx, &workload);
                    let dir = placed.parent().context("disk path has no parent")?;
                    crate::engine::create_private_dir_now(dir)?;
                    let fresh = placed.with_extension("raw.new");
                    // Left by a crash mid-create: start from zero again.
                    let _ = std::fs::remove_file(&fresh);
                    sized_file(&fresh, size)?;
                    format_ext4(&fresh);
                    std::fs::rename(&fresh, &placed)
                        .with_context(|| format!("renaming {} into place", fresh.display()))?;
                    sync_dir(dir)?;
                    placed
                }
            };
            if placed != here {
                // The contract directory names where the disk went, so it is found there (and
                // never made again) whether or not that capacity disk is mounted.
                let dir = here.parent().context("disk path has no parent")?;
                crate::engine::create_private_dir_now(dir)?;
                let link = here.with_extension("raw.link");
                let _ = std::fs::remove_file(&link);
                // Absolute: a relative data directory would make the link point elsewhere.
                let target = std::path::absolute(&placed).context("the disk's absolute path")?;
                std::os::unix::fs::symlink(&target, &link)
                    .with_context(|| format!("linking {}", link.display()))?;
                std::fs::rename(&link, &here)
                    .with_context(|| format!("renaming {} into place", link.display()))?;
                sync_dir(dir)?;
                tracing::info!(disk = %placed.display(), "disk placed on a capacity disk");
            }
            Ok(())
        })
        .await
        .map_err(|e| DriverError::Transient(e.into()))?
    }

    async fn update(&self, ctx: &WorkloadCtx, old: &Workload, new: &Workload) -> DriverResult<()> {
        super::refuse_shrink("disk", size_bytes(old)?, size_bytes(new)?)?;
        self.install(ctx, new).await
    }

    async fn remove(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()> {
        // Its capacity disk away: removed once it is back (dropping the link now would leave
        // the file there for good).
        if let Some(e) = out_of_reach(ctx, workload) {
            return Err(e);
        }
        // The file (on a capacity disk, through the link), then the link.
        for path in [disk_path(ctx, workload), disk_link(ctx, workload)] {
            match tokio::fs::remove_file(&path).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(DriverError::Transient(
                        anyhow::Error::new(e).context(format!("removing {}", path.display())),
                    ))
                }
            }
        }
        Ok(())
    }

    // A disk has nothing to serve by itself: the VM using it is paused instead.
    async fn pause(&self, _ctx: &WorkloadCtx, _workload: &Workload) -> DriverResult<()> {
        Ok(())
    }

    async fn resume(&self, _ctx: &WorkloadCtx, _workload: &Workload) -> DriverResult<()> {
        Ok(())
    }

    async fn inspect(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<Observed> {
        let want = size_bytes(workload)?;
        if let Some(e) = out_of_reach(ctx, workload) {
            return Err(e);
        }
        match tokio::fs::metadata(disk_path(ctx, workload)).await {
            Ok(meta) if meta.len() == want => Ok(Observed::Running),
            Ok(meta) => Ok(Observed::Broken(format!(
                "disk is {} bytes, spec says {want}",
                meta.len()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Observed::Missing),
            Err(e) => Err(DriverError::Transient(e.into())),
        }
    }

    async fn usage(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<Usage> {
        use std::os::unix::fs::MetadataExt;
        let meta = tokio::fs::metadata(disk_path(ctx, workload))
            .await
            .map_err(|e| DriverError::Transient(e.into()))?;
        // Allocated, not apparent, size: what the sparse file really occupies.
        Ok(Usage {
            disk_bytes: meta.blocks().saturating_mul(512),
            ..Default::default()
        })
    }
}
