//! The guest kernel and initramfs the project ships: fetched and built by the scripts in
//! `zos-vm/scripts`, cached under `${XDG_CACHE_HOME:-$HOME/.cache}/zos-grid/guest`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

#[derive(Clone, Debug)]
pub struct GuestAssets {
    /// bzImage for `-kernel`.
    pub kernel: PathBuf,
    /// gzip'd cpio for `-initrd` (the per-VM configuration is appended to a copy).
    pub initramfs: PathBuf,
    pub kernel_version: String,
}

impl GuestAssets {
    /// Where the scripts are: `$ZOS_VM_SCRIPTS`, else this crate's `scripts/` directory.
    pub fn scripts_dir() -> PathBuf {
        std::env::var_os("ZOS_VM_SCRIPTS")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts"))
    }

    /// Fetches the kernel and builds the initramfs when missing or stale (both scripts are
    /// idempotent and fast when nothing changed). `cache` defaults as the scripts do. Blocking.
    /// Fails with the scripts' own message when the kernel cannot be obtained.
    pub fn prepare(cache: Option<&Path>) -> Result<Self> {
        let scripts = Self::scripts_dir();
        let kernel_dir = run_script(&scripts.join("fetch-kernel.sh"), cache, &[])?;
        let kernel_dir = PathBuf::from(kernel_dir);
        let initramfs = match cache {
            Some(c) => run_script(
                &scripts.join("build-initramfs.sh"),
                Some(c),
                &[
                    kernel_dir.as_os_str(),
                    c.join("initramfs.cpio.gz").as_os_str(),
                ],
            )?,
            None => run_script(
                &scripts.join("build-initramfs.sh"),
                None,
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

fn run_script(script: &Path, cache: Option<&Path>, args: &[&std::ffi::OsStr]) -> Result<String> {
    let mut cmd = Command::new("bash");
    cmd.arg(script);
    if let Some(c) = cache {
        cmd.env("ZOS_GUEST_CACHE", c);
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
