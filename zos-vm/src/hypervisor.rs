//! The backend abstraction: a [`Hypervisor`] launches one process per guest and hands back an
//! [`Instance`] that controls it until it ends. Supervision (restarts, events, metering) is the
//! backend-independent [`crate::Vm`]'s job.

use std::{fmt, path::PathBuf, time::Duration};

use anyhow::Result;
use async_trait::async_trait;

use crate::config::VmConfig;

/// Files of one VM inside its directory (created by [`crate::Vm::create`]).
#[derive(Clone, Debug)]
pub struct VmLayout {
    pub dir: PathBuf,
}

impl VmLayout {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// Control socket (QMP for QEMU, REST for cloud-hypervisor).
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    /// The guest serial console, served by the hypervisor; the console pump reads it.
    pub fn console_socket(&self) -> PathBuf {
        self.dir.join("console.sock")
    }
    /// The current console log; rotated to `console.log.1`.
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The hypervisor's own stdout/stderr (errors before the guest runs).
    pub fn process_log(&self) -> PathBuf {
        self.dir.join("hypervisor.log")
    }
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("hypervisor.pid")
    }
    /// Base initramfs + configuration appendix, written at every launch.
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
    pub fn virtiofs_socket(&self) -> PathBuf {
        self.dir.join("virtiofs.sock")
    }
    pub fn virtiofs_log(&self) -> PathBuf {
        self.dir.join("virtiofsd.log")
    }
    /// The guest agent's virtio-serial port, served by the hypervisor (the executor connects).
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    /// The virtiofsd socket of a shared directory (by its tag).
    pub fn share_socket(&self, tag: &str) -> PathBuf {
        self.dir.join(format!("share-{tag}.sock"))
    }
    pub fn share_log(&self, tag: &str) -> PathBuf {
        self.dir.join(format!("share-{tag}.log"))
    }
}

/// The guest's run state as the hypervisor reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
    /// Created, not yet running (QEMU's `prelaunch`, cloud-hypervisor's `Created`).
    Prelaunch,
    Shutdown,
    /// Anything else, as the backend names it (`guest-panicked`, `io-error`, ...).
    Other(String),
}

/// How a hypervisor process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// The guest powered itself off (entrypoint finished, `poweroff` in the guest).
    GuestPoweroff,
    /// The host asked it to end (stop, QMP `quit`, SIGTERM).
    HostRequested,
    /// The guest reset or panicked (a reset ends the process: it runs with `-no-reboot`).
    GuestFailure(String),
    /// The process died from a signal with no shutdown announced (e.g. `kill -9`, OOM killer).
    Killed(i32),
    /// The process exited with an error code and no shutdown announced.
    Failed(i32),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitInfo {
    pub kind: ExitKind,
    /// Tail of the hypervisor's own log, for reports.
    pub detail: String,
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitKind::GuestPoweroff => write!(f, "guest powered off"),
            ExitKind::HostRequested => write!(f, "stopped by the host"),
            ExitKind::GuestFailure(r) => write!(f, "guest failure ({r})"),
            ExitKind::Killed(s) => write!(f, "hypervisor killed by signal {s}"),
            ExitKind::Failed(c) => write!(f, "hypervisor exited with code {c}"),
        }
    }
}

/// Which acceleration a backend ended up using.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// A VM backend.
#[async_trait]
pub trait Hypervisor: Send + Sync + 'static {
    /// `qemu` or `cloud-hypervisor`.
    fn name(&self) -> &'static str;
    /// The acceleration guests will use (probing it on first call where needed).
    async fn accel(&self) -> Result<Accel>;
    /// Starts a hypervisor process for `cfg` with its files in `layout.dir`, attaches the
    /// console pump (rotating at `console_max_bytes`) and lets the guest run. Returns once the
    /// guest is running.
    async fn launch(
        &self,
        cfg: &VmConfig,
        layout: &VmLayout,
        console_max_bytes: u64,
    ) -> Result<Box<dyn Instance>>;
    /// Kills a hypervisor process left over from an earlier launch in `layout` (pid file),
    /// so two processes never share the VM's disks. Returns whether one was found.
    async fn kill_stale(&self, layout: &VmLayout) -> Result<bool>;
}

/// One running hypervisor process.
#[async_trait]
pub trait Instance: Send + Sync {
    fn pid(&self) -> u32;
    /// Helper processes serving this guest (virtiofsd), metered with it.
    fn helper_pids(&self) -> Vec<u32>;
    fn accel(&self) -> Accel;
    async fn pause(&self) -> Result<()>;
    async fn resume(&self) -> Result<()>;
    async fn run_state(&self) -> Result<RunState>;
    /// Grows an attached disk in place to `new_bytes` (the guest sees the new capacity).
    async fn resize_disk(&self, disk_id: &str, new_bytes: u64) -> Result<()>;
    /// Asks the guest to power off (ACPI), waits up to `grace`, then ends the process.
    /// Returns when the process is gone.
    async fn shutdown(&self, grace: Duration) -> Result<()>;
    /// Waits until the process has ended; callable repeatedly and concurrently.
    async fn wait(&self) -> ExitInfo;
}
