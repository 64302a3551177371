//! cloud-hypervisor backend, used only when the `cloud-hypervisor` binary is on PATH and KVM
//! works (it has no TCG). The VM is described on the command line and controlled through the
//! REST API on a unix socket (`--api-socket`), with a small typed HTTP/1.1 client below.
//!
//! Status: compile-tested only. cloud-hypervisor is not packaged for Debian 12, cannot be
//! downloaded on the development machines, and needs KVM, which fails there for nested guests.
//! The endpoints used (`vm.info`, `vm.pause`, `vm.resume`, `vm.shutdown`, `vmm.shutdown`) are
//! those of cloud-hypervisor's documented v1 API. Growing a disk in place is not offered: it
//! returns an error naming the alternative (stop, grow the file, start).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use serde::Deserialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::Command,
    sync::watch,
};

use crate::{
    config::{VmConfig, ROOTFS_TAG},
    console,
    guest::GuestAssets,
    hypervisor::{Accel, ExitInfo, ExitKind, Hypervisor, Instance, RunState, VmLayout},
    qemu::{tail, write_initrd},
};

/// `cloud-hypervisor` on PATH, if any.
pub fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("cloud-hypervisor"))
        .find(|p| p.is_file())
}

pub struct CloudHypervisor {
    binary: PathBuf,
    virtiofsd: PathBuf,
    assets: GuestAssets,
}

impl CloudHypervisor {
    pub fn new(binary: PathBuf, virtiofsd: PathBuf, assets: GuestAssets) -> Self {
        Self {
            binary,
            virtiofsd,
            assets,
        }
    }

    pub fn args(&self, cfg: &VmConfig, layout: &VmLayout) -> Vec<String> {
        let mut a = vec![
            "--api-socket".to_string(),
            format!("path={}", layout.control_socket().display()),
            "--kernel".into(),
            self.assets.kernel.display().to_string(),
            "--initramfs".into(),
            layout.initrd().display().to_string(),
            "--cmdline".into(),
            "console=ttyS0 panic=-1 quiet".into(),
            "--cpus".into(),
            format!("boot={}", cfg.vcpus),
            "--memory".into(),
            format!(
                "size={}M,shared={}",
                cfg.memory_mib,
                if cfg.rootfs_dir().is_some() {
                    "on"
                } else {
                    "off"
                }
            ),
            "--serial".into(),
            format!("socket={}", layout.console_socket().display()),
            "--console".into(),
            "off".into(),
            "--seccomp".into(),
            "true".into(),
        ];
        for d in &cfg.disks {
            a.push("--disk".into());
            a.push(format!(
                "path={},id={},serial={},readonly={}",
                d.path.display(),
                d.id,
                d.id,
                if d.read_only { "on" } else { "off" }
            ));
        }
        for n in &cfg.nics {
            a.push("--net".into());
            a.push(format!("tap={},mac={}", n.tap, n.mac_string()));
        }
        if cfg.rootfs_dir().is_some() {
            a.push("--fs".into());
            a.push(format!(
                "tag={ROOTFS_TAG},socket={}",
                layout.virtiofs_socket().display()
            ));
        }
        a
    }
}

/// Minimal HTTP/1.1 over a unix socket: one request per connection.
async fn api(
    sock: &Path,
    method: &str,
    endpoint: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let mut s = tokio::net::UnixStream::connect(sock)
        .await
        .with_context(|| format!("connecting to {}", sock.display()))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} /api/v1/{endpoint} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut resp))
        .await
        .context("cloud-hypervisor API timed out")??;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("malformed HTTP response from cloud-hypervisor"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    if !(200..300).contains(&status) {
        bail!(
            "cloud-hypervisor {endpoint}: HTTP {status}: {}",
            body.trim()
        );
    }
    Ok((status, body))
}

#[derive(Deserialize)]
struct VmInfo {
    state: String,
}

#[async_trait]
impl Hypervisor for CloudHypervisor {
    fn name(&self) -> &'static str {
        "cloud-hypervisor"
    }

    async fn accel(&self) -> Result<Accel> {
        Ok(Accel::Kvm)
    }

    async fn kill_stale(&self, layout: &VmLayout) -> Result<bool> {
        let Ok(text) = std::fs::read_to_string(layout.pid_file()) else {
            return Ok(false);
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return Ok(false);
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let sock = layout.control_socket();
        let needle = sock.as_os_str().as_encoded_bytes();
        if cmdline.is_empty() || !cmdline.windows(needle.len()).any(|w| w == needle) {
            return Ok(false);
        }
        // SAFETY: a pid verified to serve this VM.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        Ok(true)
    }

    async fn launch(
        &self,
        cfg: &VmConfig,
        layout: &VmLayout,
        console_max_bytes: u64,
    ) -> Result<Box<dyn Instance>> {
        cfg.validate()?;
        anyhow::ensure!(
            cfg.shares.is_empty(),
            "volumes (shared directories) are served with QEMU only: configure the node with QEMU"
        );
        cfg.check_disk_files()?;
        write_initrd(&self.assets, cfg, &layout.initrd())?;
        for s in [layout.control_socket(), layout.console_socket()] {
            let _ = std::fs::remove_file(s);
        }
        let mut helper = None;
        if let Some(dir) = cfg.rootfs_dir() {
            let child = Command::new(&self.virtiofsd)
                .arg(format!(
                    "--socket-path={}",
                    layout.virtiofs_socket().display()
                ))
                .args([
                    "-o",
                    &format!("source={}", dir.display()),
                    "-o",
                    "cache=auto",
                ])
                .stdin(Stdio::null())
                .process_group(0)
                .spawn()
                .context("starting virtiofsd")?;
            helper = Some(child);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(layout.process_log())?;
        let mut child = Command::new(&self.binary)
            .args(self.args(cfg, layout))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let pid = child.id().context("no pid")?;
        std::fs::write(layout.pid_file(), format!("{pid}\n"))?;
        let pump = console::start_pump(
            &layout.console_socket(),
            &layout.console_log(),
            console_max_bytes,
        )
        .await?;
        let requested = Arc::new(AtomicBool::new(false));
        let (tx, rx) = watch::channel(None::<ExitInfo>);
        let helper_pids = helper.as_ref().and_then(|h| h.id()).into_iter().collect();
        {
            let requested = requested.clone();
            let log_path = layout.process_log();
            tokio::spawn(async move {
                let status = child.wait().await;
                let _ = pump.await;
                if let Some(mut h) = helper {
                    let _ = h.kill().await;
                }
                use std::os::unix::process::ExitStatusExt;
                let kind = match status {
                    Ok(s) if s.signal().is_some() => ExitKind::Killed(s.signal().unwrap_or(0)),
                    Ok(s) if s.code() == Some(0) && requested.load(Ordering::SeqCst) => {
                        ExitKind::HostRequested
                    }
                    Ok(s) if s.code() == Some(0) => ExitKind::GuestPoweroff,
                    Ok(s) => ExitKind::Failed(s.code().unwrap_or(-1)),
                    Err(e) => ExitKind::GuestFailure(e.to_string()),
                };
                let _ = tx.send(Some(ExitInfo {
                    kind,
                    detail: tail(&log_path),
                }));
            });
        }
        Ok(Box::new(ChInstance {
            pid,
            helper_pids,
            sock: layout.control_socket(),
            requested,
            exit: rx,
        }))
    }
}

struct ChInstance {
    pid: u32,
    helper_pids: Vec<u32>,
    sock: PathBuf,
    requested: Arc<AtomicBool>,
    exit: watch::Receiver<Option<ExitInfo>>,
}

#[async_trait]
impl Instance for ChInstance {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn helper_pids(&self) -> Vec<u32> {
        self.helper_pids.clone()
    }
    fn accel(&self) -> Accel {
        Accel::Kvm
    }
    async fn pause(&self) -> Result<()> {
        api(&self.sock, "PUT", "vm.pause", None).await.map(|_| ())
    }
    async fn resume(&self) -> Result<()> {
        api(&self.sock, "PUT", "vm.resume", None).await.map(|_| ())
    }
    async fn run_state(&self) -> Result<RunState> {
        let (_, body) = api(&self.sock, "GET", "vm.info", None).await?;
        let info: VmInfo = serde_json::from_str(&body).context("parsing vm.info")?;
        Ok(match info.state.as_str() {
            "Running" => RunState::Running,
            "Paused" => RunState::Paused,
            "Created" => RunState::Prelaunch,
            "Shutdown" => RunState::Shutdown,
            other => RunState::Other(other.to_string()),
        })
    }
    async fn resize_disk(&self, disk_id: &str, _new_bytes: u64) -> Result<()> {
        bail!(
            "cloud-hypervisor backend cannot grow disk {disk_id} in place: stop the VM, grow the \
             file, start it again"
        )
    }
    async fn shutdown(&self, grace: Duration) -> Result<()> {
        self.requested.store(true, Ordering::SeqCst);
        let mut exit = self.exit.clone();
        if !grace.is_zero() {
            let _ = api(&self.sock, "PUT", "vm.power-button", None).await;
            if tokio::time::timeout(grace, exit.wait_for(|e| e.is_some()))
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        let _ = api(&self.sock, "PUT", "vm.shutdown", None).await;
        let _ = api(&self.sock, "PUT", "vmm.shutdown", None).await;
        if tokio::time::timeout(Duration::from_secs(5), exit.wait_for(|e| e.is_some()))
            .await
            .is_err()
        {
            // SAFETY: our child process.
            unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
            let _ = exit.wait_for(|e| e.is_some()).await;
        }
        Ok(())
    }
    async fn wait(&self) -> ExitInfo {
        let mut exit = self.exit.clone();
        let got = exit
            .wait_for(|e| e.is_some())
            .await
            .ok()
            .and_then(|e| e.clone());
        got.unwrap_or_else(|| ExitInfo {
            kind: ExitKind::Failed(-1),
            detail: "reaper vanished".into(),
        })
    }
}
