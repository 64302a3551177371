//! A running QEMU guest controlled over QMP: pause, resume, run state, disk resize, shutdown
//! (power button, then `quit`, then SIGKILL) and its exit.

use super::*;

pub(super) fn qmp_err(e: qapi::ExecuteError) -> anyhow::Error {
    anyhow!("{e}")
}

pub struct QemuInstance {
    pub(super) pid: u32,
    pub(super) helper_pids: Vec<u32>,
    pub(super) accel: Accel,
    pub(super) qmp: QmpService,
    pub(super) exit: watch::Receiver<Option<ExitInfo>>,
    pub(super) _reaper: JoinHandle<()>,
}

impl QemuInstance {
    fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }
}

#[async_trait]
impl Instance for QemuInstance {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn helper_pids(&self) -> Vec<u32> {
        self.helper_pids.clone()
    }
    fn accel(&self) -> Accel {
        self.accel
    }

    async fn pause(&self) -> Result<()> {
        self.qmp
            .execute(qmp::stop {})
            .await
            .map_err(qmp_err)
            .context("QMP stop")?;
        Ok(())
    }

    async fn resume(&self) -> Result<()> {
        self.qmp
            .execute(qmp::cont {})
            .await
            .map_err(qmp_err)
            .context("QMP cont")?;
        Ok(())
    }

    async fn run_state(&self) -> Result<RunState> {
        let info = self
            .qmp
            .execute(qmp::query_status {})
            .await
            .map_err(qmp_err)
            .context("QMP query-status")?;
        Ok(match info.status {
            qmp::RunState::running => RunState::Running,
            qmp::RunState::paused => RunState::Paused,
            qmp::RunState::prelaunch => RunState::Prelaunch,
            qmp::RunState::shutdown => RunState::Shutdown,
            other => RunState::Other(
                serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default(),
            ),
        })
    }

    async fn resize_disk(&self, disk_id: &str, new_bytes: u64) -> Result<()> {
        let size = i64::try_from(new_bytes).context("disk size overflows i64")?;
        self.qmp
            .execute(qmp::block_resize {
                device: None,
                node_name: Some(disk_id.to_string()),
                size,
            })
            .await
            .map_err(qmp_err)
            .with_context(|| format!("QMP block_resize of disk {disk_id} to {new_bytes} bytes"))?;
        Ok(())
    }

    async fn shutdown(&self, grace: Duration) -> Result<()> {
        if self.exited() {
            return Ok(());
        }
        let mut exit = self.exit.clone();
        if !grace.is_zero() {
            let _ = self.qmp.execute(qmp::system_powerdown {}).await;
            if tokio::time::timeout(grace, exit.wait_for(|e| e.is_some()))
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        let _ = self.qmp.execute(qmp::quit {}).await;
        if tokio::time::timeout(Duration::from_secs(5), exit.wait_for(|e| e.is_some()))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tracing::warn!(pid = self.pid, "qemu ignored quit: killing it");
        // SAFETY: signal to our own child process.
        unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
        exit.wait_for(|e| e.is_some())
            .await
            .map_err(|_| anyhow!("qemu reaper vanished"))?;
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
