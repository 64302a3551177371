//! A supervised VM: lifecycle calls, restarts with backoff, events, metering, cgroup limits.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use futures::FutureExt;
use tokio::{
    sync::{broadcast, watch, Mutex},
    task::JoinHandle,
};

use crate::{
    cgroup::{self, CgroupStatus},
    config::VmConfig,
    console,
    hypervisor::{Accel, ExitInfo, ExitKind, Hypervisor, Instance, RunState, VmLayout},
    metering::{self, VmUsage},
};

/// When and how fast a failed guest is started again.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A guest that ran this long before failing starts again from `initial_backoff`.
    pub stable_after: Duration,
    /// Start the guest again when it powers itself off (a long-running service's VM), or
    /// leave it powered off (a job that finished).
    pub restart_on_poweroff: bool,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            stable_after: Duration::from_secs(600),
            restart_on_poweroff: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct VmOptions {
    pub restart: RestartPolicy,
    /// Console log bound; one rotated file is kept besides the current one.
    pub console_max_bytes: u64,
    /// Time the guest gets to power off on `stop` before the process is ended.
    pub stop_grace: Duration,
    /// cgroup v2 root; `None` disables cgroup limits.
    pub cgroup_root: Option<PathBuf>,
    /// How often the supervisor samples CPU time (kept across restarts).
    pub sample_every: Duration,
    /// Put the calling process into the VM's cgroup too: a per-VM supervisor (the executor's
    /// shim) that also serves the guest's image, so that fetching, decompressing and verifying
    /// it is charged to the VM rather than to the node.
    pub charge_supervisor: bool,
    /// Disk bandwidth and IOPS per disk under the VM's files (`io.max`); `None`: unlimited.
    pub io_limit: Option<cgroup::IoLimit>,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            restart: RestartPolicy::default(),
            console_max_bytes: 1 << 20,
            stop_grace: Duration::from_secs(10),
            cgroup_root: Some(PathBuf::from(cgroup::DEFAULT_ROOT)),
            sample_every: Duration::from_secs(5),
            charge_supervisor: false,
            io_limit: None,
        }
    }
}

/// What happened to a VM; every failure is reported, none is hidden.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VmEvent {
    Started {
        vm: String,
        pid: u32,
        accel: Accel,
        restarts: u32,
    },
    /// The guest or its hypervisor failed; it is started again after `restart_in`.
    Crashed {
        vm: String,
        reason: String,
        restarts: u32,
        restart_in: Duration,
    },
    /// A restart attempt itself failed; retried after `retry_in`.
    RestartFailed {
        vm: String,
        error: String,
        retry_in: Duration,
    },
    /// The guest powered itself off and the policy leaves it off.
    PoweredOff {
        vm: String,
    },
    Stopped {
        vm: String,
    },
    Paused {
        vm: String,
    },
    Resumed {
        vm: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum VmState {
    /// Created, never started (or deleted-in-progress).
    Created,
    Running,
    Paused,
    /// Failed; waiting to start again.
    Restarting {
        restarts: u32,
        last_error: String,
    },
    PoweredOff,
    Stopped,
}

struct Shared {
    state: VmState,
    instance: Option<Arc<dyn Instance>>,
    supervisor: Option<JoinHandle<()>>,
    /// CPU time of ended instances plus the last sample of the current one.
    cpu_ms_done: u64,
    cpu_ms_current: u64,
    cgroup: Option<CgroupStatus>,
    restarts: u32,
}

struct Inner {
    hv: Arc<dyn Hypervisor>,
    cfg: VmConfig,
    layout: VmLayout,
    /// The VM's cgroup under `<root>/zos/`: [`cgroup_name`].
    cgroup_name: String,
    opts: VmOptions,
    events: broadcast::Sender<VmEvent>,
    shared: Mutex<Shared>,
    stop_tx: watch::Sender<bool>,
}

/// Handle to one VM; cheap to clone.
#[derive(Clone)]
pub struct Vm {
    inner: Arc<Inner>,
}

impl Vm {
    /// Validates `cfg` and prepares `dir` (created if needed). Does not start anything.
    pub async fn create(
        hv: Arc<dyn Hypervisor>,
        dir: impl Into<PathBuf>,
        cfg: VmConfig,
        opts: VmOptions,
    ) -> Result<Self> {
        cfg.validate().context("invalid VM configuration")?;
        let dir = dir.into();
        tokio::fs::create_dir_all(&dir)
            .await
            .with_context(|| format!("creating {}", dir.display()))?;
        // The VM's files (console log, sockets, config channel) are the tenant's.
        {
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .await
                .with_context(|| format!("restricting {}", dir.display()))?;
        }
        let (events, _) = broadcast::channel(256);
        let (stop_tx, _) = watch::channel(false);
        Ok(Self {
            inner: Arc::new(Inner {
                hv,
                cgroup_name: cgroup_name(&cfg.name, &dir),
                cfg,
                layout: VmLayout::new(dir),
                opts,
                events,
                shared: Mutex::new(Shared {
                    state: VmState::Created,
                    instance: None,
                    supervisor: None,
                    cpu_ms_done: 0,
                    cpu_ms_current: 0,
                    cgroup: None,
                    restarts: 0,
                }),
                stop_tx,
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.cfg.name
    }
    pub fn config(&self) -> &VmConfig {
        &self.inner.cfg
    }
    pub fn dir(&self) -> &Path {
        &self.inner.layout.dir
    }
    pub fn console_log(&self) -> PathBuf {
        self.inner.layout.console_log()
    }
    /// Events of this VM from now on.
    pub fn events(&self) -> broadcast::Receiver<VmEvent> {
        self.inner.events.subscribe()
    }
    pub async fn state(&self) -> VmState {
        self.inner.shared.lock().await.state.clone()
    }
    /// Pid of the current hypervisor process.
    pub async fn pid(&self) -> Option<u32> {
        self.inner
            .shared
            .lock()
            .await
            .instance
            .as_ref()
            .map(|i| i.pid())
    }
    /// What the cgroup set-up did at the last start.
    pub async fn cgroup_status(&self) -> Option<CgroupStatus> {
        self.inner.shared.lock().await.cgroup.clone()
    }

    /// Starts the guest and its supervisor. Idempotent: a running (or restarting) VM is left
    /// alone. Errors of the first launch are returned (nothing is left running then).
    pub async fn start(&self) -> Result<()> {
        let mut sh = self.inner.shared.lock().await;
        if sh.supervisor.as_ref().is_some_and(|s| !s.is_finished()) {
            return Ok(());
        }
        self.inner.stop_tx.send_replace(false);
        let inst = launch(&self.inner, &mut sh).await?;
        sh.state = VmState::Running;
        let _ = self.inner.events.send(VmEvent::Started {
            vm: self.inner.cfg.name.clone(),
            pid: inst.pid(),
            accel: inst.accel(),
            restarts: sh.restarts,
        });
        let inner = self.inner.clone();
        sh.supervisor = Some(tokio::spawn(supervise(inner, inst)));
        Ok(())
    }

    /// Stops the guest (grace period, then the process is ended) and its supervisor.
    /// Idempotent.
    pub async fn stop(&self) -> Result<()> {
        self.inner.stop_tx.send_replace(true);
        let (inst, sup) = {
            let mut sh = self.inner.shared.lock().await;
            (sh.instance.clone(), sh.supervisor.take())
        };
        if let Some(i) = inst {
            i.shutdown(self.inner.opts.stop_grace)
                .await
                .context("stopping the guest")?;
        }
        if let Some(s) = sup {
            let _ = s.await;
        }
        let mut sh = self.inner.shared.lock().await;
        if !matches!(sh.state, VmState::PoweredOff | VmState::Created) {
            sh.state = VmState::Stopped;
        }
        Ok(())
    }

    async fn current(&self) -> Result<Arc<dyn Instance>> {
        match self.inner.shared.lock().await.instance.clone() {
            Some(i) => Ok(i),
            None => bail!("VM {} is not running", self.inner.cfg.name),
        }
    }

    /// Freezes the guest's vCPUs (QMP `stop`); memory and disks stay.
    pub async fn pause(&self) -> Result<()> {
        self.current().await?.pause().await?;
        self.inner.shared.lock().await.state = VmState::Paused;
        let _ = self.inner.events.send(VmEvent::Paused {
            vm: self.inner.cfg.name.clone(),
        });
        Ok(())
    }

    pub async fn resume(&self) -> Result<()> {
        self.current().await?.resume().await?;
        self.inner.shared.lock().await.state = VmState::Running;
        let _ = self.inner.events.send(VmEvent::Resumed {
            vm: self.inner.cfg.name.clone(),
        });
        Ok(())
    }

    /// The hypervisor's own view (QMP `query-status`).
    pub async fn run_state(&self) -> Result<RunState> {
        self.current().await?.run_state().await
    }

    /// Grows attached disk `id` to `new_bytes` in place. Refuses to shrink. When the VM is not
    /// running only the file grows; the guest sees the size at its next start. A running guest
    /// is told the size even when the file already has it (grown by someone else).
    pub async fn resize_disk(&self, id: &str, new_bytes: u64) -> Result<()> {
        let disk = self
            .inner
            .cfg
            .disk(id)
            .with_context(|| format!("no disk {id} attached"))?;
        let cur = std::fs::metadata(&disk.path)
            .with_context(|| format!("stat {}", disk.path.display()))?
            .len();
        if new_bytes < cur {
            bail!("disk {id} is {cur} bytes: shrinking to {new_bytes} would destroy data");
        }
        let inst = self.inner.shared.lock().await.instance.clone();
        match inst {
            Some(i) => i.resize_disk(id, new_bytes).await,
            None if new_bytes == cur => Ok(()),
            None => {
                let f = std::fs::OpenOptions::new().write(true).open(&disk.path)?;
                f.set_len(new_bytes)
                    .with_context(|| format!("growing {}", disk.path.display()))?;
                Ok(())
            }
        }
    }

    /// CPU time over all runs, current resident memory of the hypervisor and helper
    /// processes, and bytes allocated to the disks.
    pub async fn usage(&self) -> Result<VmUsage> {
        let mut sh = self.inner.shared.lock().await;
        let mut memory = 0;
        if let Some(i) = &sh.instance {
            let mut cpu = 0;
            for pid in std::iter::once(i.pid()).chain(i.helper_pids()) {
                if let Ok(u) = metering::process_usage(pid) {
                    cpu += u.cpu_time_ms;
                    memory += u.rss_bytes;
                }
            }
            sh.cpu_ms_current = sh.cpu_ms_current.max(cpu);
        }
        let mut disk = 0;
        for d in &self.inner.cfg.disks {
            disk += metering::allocated_bytes(&d.path).unwrap_or(0);
        }
        Ok(VmUsage {
            cpu_time_ms: sh.cpu_ms_done + sh.cpu_ms_current,
            memory_bytes: memory,
            disk_bytes: disk,
        })
    }

    /// Console text so far (rotated part included).
    pub fn console_text(&self) -> String {
        console::read_console(&self.console_log())
    }

    /// Waits until the console contains `needle`; returns the console text.
    pub async fn wait_console(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console_text();
            if text.contains(needle) {
                return Ok(text);
            }
            if Instant::now() > deadline {
                bail!(
                    "{needle:?} not on the console of {} within {timeout:?}; console:\n{text}",
                    self.name()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the VM and removes its directory (console logs, sockets). Disk files belong to
    /// the disk driver and are not touched.
    pub async fn delete(self) -> Result<()> {
        self.stop().await?;
        if let Some(root) = &self.inner.opts.cgroup_root {
            if self.inner.opts.charge_supervisor {
                cgroup::leave(root);
            }
            cgroup::remove(root, &self.inner.cgroup_name);
        }
        match tokio::fs::remove_dir_all(&self.inner.layout.dir).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => {
                Err(e).with_context(|| format!("removing {}", self.inner.layout.dir.display()))
            }
        }
    }
}

async fn launch(inner: &Inner, sh: &mut Shared) -> Result<Arc<dyn Instance>> {
    inner.hv.kill_stale(&inner.layout).await?;
    let inst: Arc<dyn Instance> = Arc::from(
        inner
            .hv
            .launch(&inner.cfg, &inner.layout, inner.opts.console_max_bytes)
            .await?,
    );
    if let Some(root) = &inner.opts.cgroup_root {
        let mut pids = vec![inst.pid()];
        pids.extend(inst.helper_pids());
        if inner.opts.charge_supervisor {
            pids.push(std::process::id());
        }
        let limits = cgroup::Limits {
            vcpus: inner.cfg.vcpus,
            memory_mib: inner.cfg.memory_mib,
            io: inner.opts.io_limit,
            io_devices: io_devices(&inner.cfg, &inner.layout),
        };
        let st = cgroup::apply(root, &inner.cgroup_name, &limits, &pids);
        if let CgroupStatus::Unavailable(reason) = &st {
            if cgroup::unavailable_reason(root).is_none() {
                // The host has cgroups, yet this VM got none: that needs attention.
                tracing::warn!(vm = %inner.cfg.name, %reason, "the VM runs without cgroup limits");
            } else {
                // Said once at the executor's start.
                tracing::debug!(vm = %inner.cfg.name, %reason, "no cgroup limits");
            }
        }
        sh.cgroup = Some(st);
    }
    sh.instance = Some(inst.clone());
    sh.cpu_ms_current = 0;
    Ok(inst)
}

/// The disks under the VM's files: its disk files, and its directory (image cache, volumes).
fn io_devices(cfg: &VmConfig, layout: &VmLayout) -> Vec<(u32, u32)> {
    let mut devices: Vec<(u32, u32)> = cfg
        .disks
        .iter()
        .map(|d| d.path.as_path())
        .chain(cfg.shares.iter().map(|s| s.dir.as_path()))
        .chain([layout.dir.as_path()])
        .filter_map(cgroup::disk_of)
        .collect();
    devices.sort_unstable();
    devices.dedup();
    devices
}

/// A VM's cgroup: its name plus a hash of its directory. VM names are unique on one node, but
/// several nodes (or test chains) may share a host, and two VMs in one cgroup would share its
/// memory limit - the kernel would kill one of them.
fn cgroup_name(vm: &str, dir: &Path) -> String {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let hash = blake3::hash(dir.as_os_str().as_encoded_bytes());
    format!("{vm}-{}", &hash.to_hex()[..10])
}

fn sample(inst: &dyn Instance) -> u64 {
    std::iter::once(inst.pid())
        .chain(inst.helper_pids())
        .filter_map(|p| metering::process_usage(p).ok())
        .map(|u| u.cpu_time_ms)
        .sum()
}

async fn supervise(inner: Arc<Inner>, mut inst: Arc<dyn Instance>) {
    let name = inner.cfg.name.clone();
    let policy = inner.opts.restart.clone();
    let mut stop_rx = inner.stop_tx.subscribe();
    let mut backoff = policy.initial_backoff;
    loop {
        let started = Instant::now();
        let exit: ExitInfo = loop {
            tokio::select! {
                e = inst.wait() => break e,
                _ = tokio::time::sleep(inner.opts.sample_every) => {
                    let cpu = sample(inst.as_ref());
                    let mut sh = inner.shared.lock().await;
                    sh.cpu_ms_current = sh.cpu_ms_current.max(cpu);
                }
            }
        };
        {
            let mut sh = inner.shared.lock().await;
            sh.cpu_ms_done += sh.cpu_ms_current;
            sh.cpu_ms_current = 0;
            sh.instance = None;
        }
        if *stop_rx.borrow() {
            inner.shared.lock().await.state = VmState::Stopped;
            let _ = inner.events.send(VmEvent::Stopped { vm: name.clone() });
            return;
        }
        if exit.kind == ExitKind::GuestPoweroff && !policy.restart_on_poweroff {
            inner.shared.lock().await.state = VmState::PoweredOff;
            tracing::info!(vm = %name, "guest powered off");
            let _ = inner.events.send(VmEvent::PoweredOff { vm: name.clone() });
            return;
        }
        if started.elapsed() >= policy.stable_after {
            backoff = policy.initial_backoff;
        }
        let reason = if exit.kind == ExitKind::GuestPoweroff {
            "guest powered off (restart policy: restart)".to_string()
        } else if exit.detail.trim().is_empty() {
            exit.kind.to_string()
        } else {
            format!("{}; hypervisor log: {}", exit.kind, exit.detail.trim())
        };
        let restarts = {
            let mut sh = inner.shared.lock().await;
            sh.restarts += 1;
            sh.state = VmState::Restarting {
                restarts: sh.restarts,
                last_error: reason.clone(),
            };
            sh.restarts
        };
        tracing::warn!(vm = %name, %reason, restarts, ?backoff, "guest crashed: restarting");
        let _ = inner.events.send(VmEvent::Crashed {
            vm: name.clone(),
            reason,
            restarts,
            restart_in: backoff,
        });
        // Back off, then launch; failed launches back off further. A stop ends the wait.
        loop {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop_rx.wait_for(|s| *s).map(|r| r.is_ok()) => {
                    inner.shared.lock().await.state = VmState::Stopped;
                    let _ = inner.events.send(VmEvent::Stopped { vm: name.clone() });
                    return;
                }
            }
            backoff = (backoff * 2).min(policy.max_backoff);
            let mut sh = inner.shared.lock().await;
            if *stop_rx.borrow() {
                sh.state = VmState::Stopped;
                let _ = inner.events.send(VmEvent::Stopped { vm: name.clone() });
                return;
            }
            match launch(&inner, &mut sh).await {
                Ok(i) => {
                    sh.state = VmState::Running;
                    let _ = inner.events.send(VmEvent::Started {
                        vm: name.clone(),
                        pid: i.pid(),
                        accel: i.accel(),
                        restarts: sh.restarts,
                    });
                    inst = i;
                    break;
                }
                Err(e) => {
                    let error = format!("{e:#}");
                    tracing::warn!(vm = %name, %error, "restart failed");
                    sh.state = VmState::Restarting {
                        restarts: sh.restarts,
                        last_error: error.clone(),
                    };
                    let _ = inner.events.send(VmEvent::RestartFailed {
                        vm: name.clone(),
                        error,
                        retry_in: backoff,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two nodes on one host may both run a `c1-web`: their cgroups (and memory limits) must
    /// not be one.
    #[test]
    fn vms_of_one_name_in_two_directories_get_two_cgroups() {
        let a = cgroup_name("c1-web", Path::new("/var/lib/node-a/contracts/1/vms/web"));
        let b = cgroup_name("c1-web", Path::new("/var/lib/node-b/contracts/1/vms/web"));
        assert_ne!(a, b);
        assert!(
            a.starts_with("c1-web-") && a.len() == "c1-web-".len() + 10,
            "{a}"
        );
        assert_eq!(
            a,
            cgroup_name("c1-web", Path::new("/var/lib/node-a/contracts/1/vms/web")),
            "stable, so a restarted shim finds (and removes) its cgroup"
        );
    }
}
