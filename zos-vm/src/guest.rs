//! The guest kernel and initramfs the project ships: fetched and built by the scripts in
//! `zos-vm/scripts`, cached under `${XDG_CACHE_HOME:-$HOME/.cache}/zos-grid/guest`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GuestAssets {
    /// bzImage for `-kernel`.
    pub kernel: PathBuf,
    /// gzip'd cpio for `-initrd` (the per-VM configuration is appended to a copy).
    pub initramfs: PathBuf,
    pub kernel_version: String,
    /// BLAKE3 of the kernel and its modules ([`kernel_tree_hash`]), checked against the pin
    /// the node was given, else against the hash recorded when the kernel was fetched.
    #[serde(default)]
    pub kernel_blake3: String,
    /// BLAKE3 of `initramfs` when it was built (or found up to date); checked whenever a
    /// guest's initrd is made from it.
    #[serde(default)]
    pub initramfs_blake3: String,
}

/// Where the hash of a fetched kernel is recorded, beside it in the cache.
const RECORDED_HASH: &str = ".blake3";

/// BLAKE3 over `vmlinuz` and every file under `modules/`, in path order, each as its relative
/// path, its length and its bytes: what the guest boots and what its initramfs loads.
pub fn kernel_tree_hash(kernel_dir: &Path) -> Result<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("listing {}", dir.display()))?
            .collect::<std::io::Result<_>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let kind = e.file_type()?;
            if kind.is_dir() {
                walk(base, &e.path(), out)?;
            } else if kind.is_file() {
                out.push(e.path().strip_prefix(base)?.to_path_buf());
            }
            // Symbolic links (the package's `build`, `source`) point outside: nothing booted.
        }
        Ok(())
    }
    let mut files = vec![PathBuf::from("vmlinuz")];
    walk(kernel_dir, &kernel_dir.join("modules"), &mut files)?;
    let mut hasher = blake3::Hasher::new();
    for rel in files {
        let path = kernel_dir.join(&rel);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        hasher.update(rel.as_os_str().as_encoded_bytes());
        hasher.update(&[0]);
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// The kernel tree's hash, refused when it differs from `pinned`, or (without a pin) from the
/// hash recorded when it was first used: a cached kernel altered on disk is never booted.
pub fn check_kernel(kernel_dir: &Path, pinned: Option<&str>) -> Result<String> {
    let found = kernel_tree_hash(kernel_dir)?;
    if let Some(pin) = pinned {
        if !pin.eq_ignore_ascii_case(&found) {
            bail!(
                "the guest kernel in {} has BLAKE3 {found}, not the pinned {pin}: put the pinned kernel there (from a node that has it) or change the pin",
                kernel_dir.display()
            );
        }
    }
    let record = kernel_dir.join(RECORDED_HASH);
    if pinned.is_some() {
        // The pin decides: a kernel put in place by hand to match it becomes the record.
        std::fs::write(&record, format!("{found}\n"))
            .with_context(|| format!("writing {}", record.display()))?;
        return Ok(found);
    }
    match std::fs::read_to_string(&record) {
        Ok(recorded) if recorded.trim() == found => {}
        Ok(recorded) => bail!(
            "the guest kernel in {} changed since it was fetched (BLAKE3 {} then, {found} now): remove the directory to fetch it again",
            kernel_dir.display(),
            recorded.trim()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&record, format!("{found}\n"))
                .with_context(|| format!("writing {}", record.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", record.display())),
    }
    Ok(found)
}

/// The scripts and the guest's /init, compiled into the binary: an executor deployed without
/// the source tree still builds its guest, and a binary never runs another checkout's scripts.
const EMBEDDED: [(&str, &str); 3] = [
    (
        "scripts/fetch-kernel.sh",
        include_str!("../scripts/fetch-kernel.sh"),
    ),
    (
        "scripts/build-initramfs.sh",
        include_str!("../scripts/build-initramfs.sh"),
    ),
    ("guest/init", include_str!("../guest/init")),
];

/// The default cache, as the scripts compute it.
fn default_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("zos-grid/guest")
}

/// Writes the embedded files under `base` (keeping their relative layout, which the scripts
/// rely on) where missing or different; each is replaced atomically.
fn materialize_embedded(base: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for (rel, content) in EMBEDDED {
        let path = base.join(rel);
        if std::fs::read(&path).is_ok_and(|old| old == content.as_bytes()) {
            continue;
        }
        let dir = path.parent().context("embedded file without a directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            rel.replace('/', "_"),
            std::process::id()
        ));
        std::fs::write(&tmp, content).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

impl GuestAssets {
    /// Where the scripts are: `$ZOS_VM_SCRIPTS` (to try edited scripts without rebuilding),
    /// else the copies embedded in this binary, written out under the guest cache.
    pub fn scripts_dir(cache: Option<&Path>) -> Result<PathBuf> {
        if let Some(dir) = std::env::var_os("ZOS_VM_SCRIPTS") {
            return Ok(PathBuf::from(dir));
        }
        let base = cache
            .map_or_else(default_cache, Path::to_path_buf)
            .join("tools");
        materialize_embedded(&base)?;
        Ok(base.join("scripts"))
    }

    /// Fetches the kernel and builds the initramfs when missing or stale (both scripts are
    /// idempotent and fast when nothing changed). `cache` defaults as the scripts do. Blocking.
    /// Fails with the scripts' own message when the kernel cannot be obtained.
    pub fn prepare(cache: Option<&Path>) -> Result<Self> {
        Self::prepare_pinned(cache, None)
    }

    /// [`Self::prepare`], refusing a kernel whose [`kernel_tree_hash`] is not `pinned` (hex).
    pub fn prepare_pinned(cache: Option<&Path>, pinned: Option<&str>) -> Result<Self> {
        let scripts = Self::scripts_dir(cache)?;
        let kernel_dir = run_script(&scripts.join("fetch-kernel.sh"), cache, None, &[])?;
        let kernel_blake3 = check_kernel(Path::new(&kernel_dir), pinned)?;
        let agent = agent_binary();
        if agent.is_none() {
            tracing::warn!("no zos-guest-agent binary beside this program (or $ZOS_GUEST_AGENT): guests get no agent, so no exec or shell sessions");
        }
        let kernel_dir = PathBuf::from(kernel_dir);
        let initramfs = match cache {
            Some(c) => run_script(
                &scripts.join("build-initramfs.sh"),
                Some(c),
                agent.as_deref(),
                &[
                    kernel_dir.as_os_str(),
                    c.join("initramfs.cpio.gz").as_os_str(),
                ],
            )?,
            None => run_script(
                &scripts.join("build-initramfs.sh"),
                None,
                agent.as_deref(),
                &[kernel_dir.as_os_str()],
            )?,
        };
        let kernel = kernel_dir.join("vmlinuz");
        let kernel_version = std::fs::read_to_string(kernel_dir.join("version"))
            .context("reading the kernel version")?
            .trim()
            .to_string();
        if !kernel.is_file() {
            bail!("{} is missing after fetch-kernel.sh", kernel.display());
        }
        let initramfs = PathBuf::from(initramfs);
        let initramfs_blake3 = blake3::hash(
            &std::fs::read(&initramfs)
                .with_context(|| format!("reading {}", initramfs.display()))?,
        )
        .to_hex()
        .to_string();
        Ok(Self {
            kernel,
            initramfs,
            kernel_version,
            kernel_blake3,
            initramfs_blake3,
        })
    }
}

/// The guest agent the initramfs ships: `$ZOS_GUEST_AGENT`, else `zos-guest-agent` beside
/// this program (or one directory up, where test binaries run from).
fn agent_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ZOS_GUEST_AGENT") {
        return Some(PathBuf::from(path));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("zos-guest-agent"))
        .find(|p| p.is_file())
}

fn run_script(
    script: &Path,
    cache: Option<&Path>,
    agent: Option<&Path>,
    args: &[&std::ffi::OsStr],
) -> Result<String> {
    let mut cmd = Command::new("bash");
    cmd.arg(script);
    if let Some(c) = cache {
        cmd.env("ZOS_GUEST_CACHE", c);
    }
    if let Some(agent) = agent {
        cmd.env("AGENT", agent);
    }
    cmd.args(args);
    let out = cmd
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    let stdout = String::from_utf8(out.stdout).context("script output is not UTF-8")?;
    let last = stdout.lines().last().unwrap_or_default().trim().to_string();
    if last.is_empty() {
        bail!("{} printed no path", script.display());
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_kernel(dir: &Path) {
        std::fs::create_dir_all(dir.join("modules/kernel/drivers")).unwrap();
        std::fs::write(dir.join("vmlinuz"), b"bzImage").unwrap();
        std::fs::write(dir.join("modules/kernel/drivers/virtio.ko"), b"module").unwrap();
        std::fs::write(dir.join("modules/modules.dep"), b"deps").unwrap();
    }

    #[test]
    fn a_kernel_is_pinned_by_its_tree_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        fake_kernel(dir);
        let hash = kernel_tree_hash(dir).unwrap();
        assert_eq!(hash.len(), 64);
        // Symbolic links are not part of it; the cache's own record is not either.
        std::os::unix::fs::symlink("/nonexistent", dir.join("modules/build")).unwrap();
        assert_eq!(check_kernel(dir, Some(&hash)).unwrap(), hash);
        assert_eq!(kernel_tree_hash(dir).unwrap(), hash);
        let wrong = "0".repeat(64);
        let err = check_kernel(dir, Some(&wrong)).unwrap_err().to_string();
        assert!(err.contains(&hash) && err.contains(&wrong), "{err}");
        // A module changed after it was first used: refused even without a pin.
        std::fs::write(dir.join("modules/kernel/drivers/virtio.ko"), b"rootkit").unwrap();
        let err = check_kernel(dir, None).unwrap_err().to_string();
        assert!(err.contains("changed since it was fetched"), "{err}");
        // Renaming a file changes the hash too.
        std::fs::write(dir.join("modules/kernel/drivers/virtio.ko"), b"module").unwrap();
        assert_eq!(kernel_tree_hash(dir).unwrap(), hash);
        std::fs::rename(
            dir.join("modules/modules.dep"),
            dir.join("modules/modules.de"),
        )
        .unwrap();
        assert_ne!(kernel_tree_hash(dir).unwrap(), hash);
    }

    #[test]
    fn an_unpinned_kernel_is_recorded_on_first_use() {
        let tmp = tempfile::tempdir().unwrap();
        fake_kernel(tmp.path());
        let hash = check_kernel(tmp.path(), None).unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.path().join(RECORDED_HASH)).unwrap(),
            format!("{hash}\n")
        );
        assert_eq!(check_kernel(tmp.path(), None).unwrap(), hash);
    }
}
