//! Volume driver: a directory shared into VMs over virtio-fs, limited to the spec's size.
//!
//! A volume is an ext4 filesystem in a sparse file `<contract dir>/volumes/<name>.ext4`,
//! loop-mounted (`nosuid,nodev`) at `<contract dir>/volumes/<name>`; the VMs that mount it get
//! that directory through their own virtiofsd. The filesystem's size is the quota: the kernel
//! refuses writes past it (ENOSPC in the guest), with no quota tooling on the host, and several
//! VMs may share one volume. It outlives VM restarts and updates, grows in place (online
//! resize), never shrinks, and goes with the contract. Usage is the file's allocated bytes,
//! metered like a disk's.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context};
use async_trait::async_trait;
use tracing::{info, warn};
use zos_primitives::{
    spec::{Workload, WorkloadKind},
    MIB,
};

use super::{Driver, DriverError, DriverResult, Observed, Usage, WorkloadCtx};

#[derive(Default)]
pub struct VolumeDriver;

fn name_of(workload: &Workload) -> String {
    String::from_utf8_lossy(workload.name.as_bytes()).into_owned()
}

/// The directory the VMs see: the mount point of the volume's filesystem.
pub fn volume_dir(ctx: &WorkloadCtx, workload: &Workload) -> PathBuf {
    ctx.dir.join("volumes").join(name_of(workload))
}

/// The file holding the volume's filesystem.
fn image_path(ctx: &WorkloadCtx, workload: &Workload) -> PathBuf {
    ctx.dir
        .join("volumes")
        .join(format!("{}.ext4", name_of(workload)))
}

fn size_bytes(workload: &Workload) -> DriverResult<u64> {
    match &workload.kind {
        WorkloadKind::Volume(v) => v
            .size_mib
            .checked_mul(MIB)
            .ok_or_else(|| DriverError::permanent("volume size overflows u64 bytes")),
        _ => Err(DriverError::permanent("not a volume workload")),
    }
}

/// Runs a host tool; its stderr becomes the error.
fn run(tool: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let out = Command::new(tool)
        .args(args)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .with_context(|| {
            format!("running {tool} (e2fsprogs and util-linux provide the volume tools)")
        })?;
    if !out.status.success() {
        bail!(
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Undoes the octal escapes (`\040` for a space) of /proc/self/mountinfo fields.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let digits = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let (b'\\', Some(d)) = (bytes[i], digits) {
            let value = (u32::from(d[0] - b'0') << 6)
                | (u32::from(d[1] - b'0') << 3)
                | u32::from(d[2] - b'0');
            if let Ok(v) = u8::try_from(value) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts of this process's namespace: (mount point, source), in mount order.
fn mounts() -> anyhow::Result<Vec<(PathBuf, String)>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = fields.get(4)?;
            // The fields after " - " are the type and the source.
            let dash = fields.iter().position(|f| *f == "-")?;
            let source = fields.get(dash + 2)?;
            Some((
                PathBuf::from(unescape_mount_field(point)),
                unescape_mount_field(source),
            ))
        })
        .collect())
}

/// `path` as the kernel records mount points: absolute, without links (the data directory
/// may be given relative or through a link). Left as is when it does not exist.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The source (loop device) mounted at `dir`, if `dir` is a mount point.
fn mounted_source(dir: &Path) -> anyhow::Result<Option<String>> {
    let dir = canonical(dir);
    Ok(mounts()?
        .into_iter()
        .rev()
        .find(|(point, _)| *point == dir)
        .map(|(_, source)| source))
}

/// Whether a filesystem is mounted at `dir`.
pub fn is_mounted(dir: &Path) -> anyhow::Result<bool> {
    Ok(mounted_source(dir)?.is_some())
}

/// Unmounts `dir`; detaches it when something still holds it (the kernel frees the loop
/// device once the last user lets go).
fn unmount(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).context("path with NUL")?;
    // SAFETY: a valid NUL-terminated path; plain syscalls.
    if unsafe { libc::umount2(c.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let first = std::io::Error::last_os_error();
    // SAFETY: as above.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } == 0 {
        warn!(dir = %dir.display(), error = %first, "volume busy: detached it instead");
        return Ok(());
    }
    Err(anyhow!(std::io::Error::last_os_error())).context(format!("unmounting {}", dir.display()))
}

/// Unmounts every mount at or below `dir` (deepest first): a contract directory is removed
/// only after, so a removal never walks into a mounted volume or leaves a mount behind.
pub fn unmount_all_below(dir: &Path) -> anyhow::Result<()> {
    let dir = canonical(dir);
    let mut below: Vec<PathBuf> = mounts()?
        .into_iter()
        .map(|(point, _)| point)
        .filter(|point| point.starts_with(&dir))
        .collect();
    below.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    below.dedup();
    for point in below {
        unmount(&point)?;
    }
    Ok(())
}

/// Creates the volume's filesystem (beside its final name, so a crash never leaves a half-made
/// one under it) or grows an existing one, and mounts it.
fn ensure_volume(image: &Path, dir: &Path, size: u64) -> DriverResult<()> {
    let parent = image.parent().context("volume path has no parent")?;
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    match std::fs::metadata(image) {
        Ok(meta) if meta.len() > size => {
            return Err(DriverError::permanent(format!(
                "the volume holds {} bytes, more than the spec's {size}: a volume cannot shrink",
                meta.len()
            )))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let fresh = image.with_extension("ext4.new");
            let _ = std::fs::remove_file(&fresh);
            let file = std::fs::File::create(&fresh)
                .with_context(|| format!("creating {}", fresh.display()))?;
            file.set_len(size).context("sizing the volume")?;
            drop(file);
            // No reserved blocks: the whole size is the tenant's. Prezeroed: the sparse file
            // reads as zero, so nothing is written (or billed) for the inode tables.
            run(
                "mkfs.ext4",
                &[
                    "-q".as_ref(),
                    "-F".as_ref(),
                    "-m".as_ref(),
                    "0".as_ref(),
                    "-E".as_ref(),
                    "assume_storage_prezeroed=1,nodiscard,root_owner=0:0".as_ref(),
                    fresh.as_os_str(),
                ],
            )
            .map_err(|e| DriverError::Transient(e.context("formatting a new volume")))?;
            std::fs::rename(&fresh, image)
                .with_context(|| format!("renaming {} into place", fresh.display()))?;
        }
        Err(e) => return Err(DriverError::Transient(e.into())),
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let source = mount_volume(image, dir)?;
    let current = std::fs::metadata(image)
        .with_context(|| format!("reading {}", image.display()))?
        .len();
    // The marker says a growth was cut short (the file grown, its filesystem maybe not).
    let growing = image.with_extension("ext4.growing");
    if current < size || growing.exists() {
        std::fs::write(&growing, b"").context("recording the growth")?;
        grow(image, dir, &source, current, size)?;
        let _ = std::fs::remove_file(&growing);
        info!(volume = %dir.display(), size, "volume grown");
    }
    Ok(())
}

/// Mounts the volume's filesystem at `dir` unless it is; returns the loop device.
fn mount_volume(image: &Path, dir: &Path) -> DriverResult<String> {
    if let Some(source) = mounted_source(dir)? {
        return Ok(source);
    }
    run(
        "mount",
        &[
            "-o".as_ref(),
            "loop,nosuid,nodev,noatime".as_ref(),
            image.as_os_str(),
            dir.as_os_str(),
        ],
    )
    .map_err(|e| DriverError::Transient(e.context("mounting the volume")))?;
    info!(volume = %dir.display(), "volume mounted");
    Ok(mounted_source(dir)?.context("the volume is not mounted after mount")?)
}

fn set_file_len(image: &Path, len: u64) -> anyhow::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .and_then(|f| f.set_len(len))
        .with_context(|| format!("sizing {}", image.display()))
}

/// Grows the volume from `current` to `size` bytes: online while mounted (guests keep using
/// it), else, where the host may not resize online (no CAP_SYS_RESOURCE, as in many
/// containers), offline when no guest holds it.
fn grow(image: &Path, dir: &Path, source: &str, current: u64, size: u64) -> DriverResult<()> {
    set_file_len(image, size.max(current))?;
    run("losetup", &["-c".as_ref(), source.as_ref()])
        .map_err(|e| DriverError::Transient(e.context("refreshing the loop device size")))?;
    let Err(online) = run("resize2fs", &[source.as_ref()]) else {
        return Ok(());
    };
    let in_use = |why: String| -> DriverResult<()> {
        // The filesystem did not grow: neither does the file, so inspect keeps seeing the old
        // size and a later update (with the VMs gone) can try again.
        set_file_len(image, current)?;
        run("losetup", &["-c".as_ref(), source.as_ref()])
            .map_err(|e| DriverError::Transient(e.context("refreshing the loop device size")))?;
        Err(DriverError::permanent(format!(
            "this node cannot grow a volume while a VM uses it ({online:#}; {why}): \
             grow it in a later update, after one that removes the VMs mounting it"
        )))
    };
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).context("path with NUL")?;
    // SAFETY: a valid NUL-terminated path. No detach: this fails while a guest uses it.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        let busy = std::io::Error::last_os_error();
        return in_use(format!("unmounting: {busy}"));
    }
    // A virtiofsd holds its own copy of the mount in its namespace: the loop device then
    // stays attached after our unmount, and the filesystem is live. Mount the same device
    // back (the same superblock) and leave it alone.
    let loop_name = source.rsplit('/').next().unwrap_or_default();
    let attached = Path::new("/sys/block")
        .join(loop_name)
        .join("loop/backing_file");
    // The kernel lets a free loop device go shortly after the unmount, not always at once.
    for _ in 0..40 {
        if !attached.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    if attached.exists() {
        run(
            "mount",
            &[
                "-o".as_ref(),
                "nosuid,nodev,noatime".as_ref(),
                source.as_ref(),
                dir.as_os_str(),
            ],
        )
        .map_err(|e| DriverError::Transient(e.context("mounting the volume back")))?;
        return in_use("a guest's file server still holds it".into());
    }
    // e2fsck exits 1 when it fixed something, which still leaves a consistent filesystem.
    let checked = Command::new("e2fsck")
        .args(["-f", "-p"])
        .arg(image)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .output()
        .context("running e2fsck")?;
    if !matches!(checked.status.code(), Some(0 | 1)) {
        return Err(DriverError::Transient(anyhow!(
            "e2fsck before growing the volume: {}",
            String::from_utf8_lossy(&checked.stdout).trim()
        )));
    }
    run("resize2fs", &[image.as_os_str()]).map_err(|e| {
        DriverError::Transient(e.context("growing the volume's filesystem offline"))
    })?;
    mount_volume(image, dir)?;
    Ok(())
}

#[async_trait]
impl Driver for VolumeDriver {
    fn kind(&self) -> &'static str {
        "volume"
    }

    async fn install(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()> {
        let (image, dir, size) = (
            image_path(ctx, workload),
            volume_dir(ctx, workload),
            size_bytes(workload)?,
        );
        tokio::task::spawn_blocking(move || ensure_volume(&image, &dir, size))
            .await
            .map_err(|e| DriverError::Transient(e.into()))?
    }

    async fn update(&self, ctx: &WorkloadCtx, old: &Workload, new: &Workload) -> DriverResult<()> {
        super::refuse_shrink("volume", size_bytes(old)?, size_bytes(new)?)?;
        self.install(ctx, new).await
    }

    async fn remove(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()> {
        let (image, dir) = (image_path(ctx, workload), volume_dir(ctx, workload));
        tokio::task::spawn_blocking(move || -> DriverResult<()> {
            unmount_all_below(&dir)?;
            let leftovers = ["ext4.new", "ext4.growing"].map(|ext| image.with_extension(ext));
            for file in std::iter::once(image.clone()).chain(leftovers) {
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(DriverError::Transient(
                            anyhow::Error::new(e).context(format!("removing {}", file.display())),
                        ))
                    }
                }
            }
            match std::fs::remove_dir(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(DriverError::Transient(
                    anyhow::Error::new(e).context(format!("removing {}", dir.display())),
                )),
            }
        })
        .await
        .map_err(|e| DriverError::Transient(e.into()))?
    }

    // The VMs using the volume are paused instead; the volume only holds data.
    async fn pause(&self, _ctx: &WorkloadCtx, _workload: &Workload) -> DriverResult<()> {
        Ok(())
    }

    async fn resume(&self, _ctx: &WorkloadCtx, _workload: &Workload) -> DriverResult<()> {
        Ok(())
    }

    async fn inspect(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<Observed> {
        let want = size_bytes(workload)?;
        let (image, dir) = (image_path(ctx, workload), volume_dir(ctx, workload));
        tokio::task::spawn_blocking(move || -> DriverResult<Observed> {
            let meta = match std::fs::metadata(&image) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Observed::Missing),
                Err(e) => return Err(DriverError::Transient(e.into())),
            };
            if meta.len() != want {
                return Ok(Observed::Broken(format!(
                    "volume is {} bytes, spec says {want}",
                    meta.len()
                )));
            }
            // After a host reboot the file is there but not mounted: install mounts it again.
            if mounted_source(&dir)?.is_none() {
                return Ok(Observed::Broken("volume is not mounted".into()));
            }
            Ok(Observed::Running)
        })
        .await
        .map_err(|e| DriverError::Transient(e.into()))?
    }

    async fn usage(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<Usage> {
        use std::os::unix::fs::MetadataExt;
        let meta = tokio::fs::metadata(image_path(ctx, workload))
            .await
            .map_err(|e| DriverError::Transient(e.into()))?;
        // Allocated, not apparent, size: what the tenant's files really occupy.
        Ok(Usage {
            disk_bytes: meta.blocks().saturating_mul(512),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Write, sync::Arc};
    use zos_primitives::spec::{DeploymentSpec, VolumeSpec};

    fn volume(size_mib: u64) -> Workload {
        Workload {
            name: b"shared".as_slice().try_into().unwrap(),
            kind: WorkloadKind::Volume(VolumeSpec { size_mib }),
        }
    }

    /// Writes `mib` MiB into `path`; the error is what the filesystem said.
    fn fill(path: &Path, mib: usize) -> std::io::Result<()> {
        let mut f = std::fs::File::create(path)?;
        let block = vec![7u8; MIB as usize];
        for _ in 0..mib {
            f.write_all(&block)?;
        }
        f.sync_all()
    }

    /// Real loop mounts (the node runs as root, as CI does): the size is a hard limit, a grown
    /// volume keeps its files, a host reboot's lost mount is repaired, removal leaves nothing.
    #[tokio::test]
    async fn a_volume_is_a_bounded_directory_that_grows_and_goes_with_its_contract() {
        // SAFETY: no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "loop mounts need root");
        let tmp = tempfile::tempdir().unwrap();
        let ctx = WorkloadCtx {
            contract: 7,
            dir: tmp.path().join("contracts/7"),
            capacity_dirs: Vec::new(),
            spec: Arc::new(DeploymentSpec {
                version: 0,
                workloads: Default::default(),
                metadata: Default::default(),
            }),
            public_ips: vec![],
            node_ipv6: None,
            node_domain: None,
            node_addresses: vec![],
            owner: None,
        };
        // Unmounted whatever happens below.
        struct Cleanup(PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = unmount_all_below(&self.0);
            }
        }
        let _cleanup = Cleanup(ctx.dir.clone());
        let driver = VolumeDriver;
        let dir = volume_dir(&ctx, &volume(32));

        driver.install(&ctx, &volume(32)).await.unwrap();
        assert_eq!(
            driver.inspect(&ctx, &volume(32)).await.unwrap(),
            Observed::Running
        );
        assert!(is_mounted(&dir).unwrap());
        let err = fill(&dir.join("big"), 48).expect_err("48 MiB fit in a 32 MiB volume");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
        std::fs::remove_file(dir.join("big")).unwrap();
        std::fs::write(dir.join("kept"), "tenant data").unwrap();
        let used = driver.usage(&ctx, &volume(32)).await.unwrap().disk_bytes;
        assert!(used > 0 && used < 32 * MIB, "usage {used}");

        // A guest's file server holds the volume from its own mount namespace (as virtiofsd
        // does): grown online where the host can, else refused with nothing changed (never
        // resized under a live mount).
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sleep", "60"])
            .spawn()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let can_resize_online = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|caps| u64::from_str_radix(caps.trim(), 16).ok())
            // Bit 24: CAP_SYS_RESOURCE, which online resizing needs.
            .is_some_and(|caps| caps & (1 << 24) != 0);
        match driver.update(&ctx, &volume(32), &volume(64)).await {
            Ok(()) => assert!(can_resize_online, "grown offline under a live mount"),
            Err(DriverError::Permanent(why)) => {
                assert!(why.contains("while a VM uses it"), "{why}");
                let len = std::fs::metadata(image_path(&ctx, &volume(32)))
                    .unwrap()
                    .len();
                assert_eq!(len, 32 * MIB);
                assert!(is_mounted(&dir).unwrap());
                assert_eq!(
                    std::fs::read_to_string(dir.join("kept")).unwrap(),
                    "tenant data"
                );
            }
            Err(other) => panic!("{other}"),
        }
        let _ = holder.kill();
        let _ = holder.wait();

        // Grown (online, or offline now that nothing holds it): the files stay, the new space
        // is usable.
        driver.update(&ctx, &volume(32), &volume(64)).await.unwrap();
        assert_eq!(
            driver.inspect(&ctx, &volume(64)).await.unwrap(),
            Observed::Running
        );
        fill(&dir.join("big"), 48).expect("48 MiB in the grown 64 MiB volume");
        assert_eq!(
            std::fs::read_to_string(dir.join("kept")).unwrap(),
            "tenant data"
        );
        assert!(matches!(
            driver.update(&ctx, &volume(64), &volume(32)).await,
            Err(DriverError::Permanent(_))
        ));

        // After a reboot the mount is gone: inspect says so and install mounts it again.
        unmount(&dir).unwrap();
        assert!(matches!(
            driver.inspect(&ctx, &volume(64)).await.unwrap(),
            Observed::Broken(_)
        ));
        driver.install(&ctx, &volume(64)).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("kept")).unwrap(),
            "tenant data"
        );

        driver.remove(&ctx, &volume(64)).await.unwrap();
        assert!(!is_mounted(&dir).unwrap());
        assert!(!dir.exists() && !image_path(&ctx, &volume(64)).exists());
        assert_eq!(
            driver.inspect(&ctx, &volume(64)).await.unwrap(),
            Observed::Missing
        );
        driver.remove(&ctx, &volume(64)).await.unwrap();
    }

    #[test]
    fn mountinfo_fields_are_unescaped() {
        assert_eq!(unescape_mount_field(r"/srv/a\040b"), "/srv/a b");
        assert_eq!(unescape_mount_field(r"/srv/tab\011x\134"), "/srv/tab\tx\\");
        assert_eq!(unescape_mount_field(r"/srv/\04"), r"/srv/\04");
    }
}
