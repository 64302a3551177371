//! The KVM probe: a guest booted with KVM that must reach its /init, since /dev/kvm may exist
//! on nested hosts while guests fail or hang.

use super::*;

impl Qemu {
    /// Boots a probe guest with KVM; `Ok(())` when it reaches /init.
    pub async fn probe_kvm(&self) -> Result<()> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .context("/dev/kvm cannot be opened read-write")?;
        let dir = tempdir("zos-kvm-probe")?;
        let cfg = VmConfig {
            name: "kvm-probe".into(),
            vcpus: 1,
            memory_mib: 256,
            boot: BootMode::Initramfs,
            disks: vec![],
            shares: vec![],
            nics: vec![],
            netns: None,
            guest: GuestConfig {
                entrypoint: "true".into(),
                ..Default::default()
            },
        };
        let initrd = dir.join("initrd.img");
        write_initrd(&self.opts.assets, &cfg, &initrd)?;
        let mut child = Command::new(&self.opts.qemu_binary)
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .args([
                "-machine", "q35", "-accel", "kvm", "-cpu", "host", "-m", "256",
            ])
            .arg("-kernel")
            .arg(&self.opts.assets.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args([
                "-append",
                "console=ttyS0 panic=-1 quiet",
                "-serial",
                "stdio",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting the KVM probe")?;
        let stdout = child.stdout.take().context("probe stdout")?;
        let found = tokio::time::timeout(self.opts.probe_timeout, async {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("ZOS-GUEST-INIT") {
                    return true;
                }
            }
            false
        })
        .await;
        let _ = child.kill().await;
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use tokio::io::AsyncReadExt;
            let _ = tokio::time::timeout(Duration::from_secs(1), e.read_to_string(&mut err)).await;
        }
        let _ = std::fs::remove_dir_all(&dir);
        match found {
            Ok(true) => Ok(()),
            Ok(false) => bail!("the KVM probe guest ended before /init: {}", err.trim()),
            Err(_) => bail!(
                "the KVM probe guest did not reach /init within {:?} {}",
                self.opts.probe_timeout,
                err.trim()
            ),
        }
    }
}

fn tempdir(prefix: &str) -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for i in 0..100u32 {
        let p = base.join(format!("{prefix}-{}-{i}", std::process::id()));
        if std::fs::create_dir(&p).is_ok() {
            return Ok(p);
        }
    }
    bail!("cannot create a temporary directory in {}", base.display())
}
