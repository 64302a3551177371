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
        let scripts = Self::scripts_dir(cache)?;
        let kernel_dir = run_script(&scripts.join("fetch-kernel.sh"), cache, None, &[])?;
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
        Ok(Self {
            kernel,
            initramfs: PathBuf::from(initramfs),
            kernel_version,
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
