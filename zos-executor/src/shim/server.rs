//! The shim process: mount, start, supervise, serve, stop (see the module above).

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex as StdMutex},
    time::{Duration, Instant},
};

use anyhow::{anyhow, Context, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{watch, Mutex},
};
use tracing::{info, warn};
use zos_image::mount::MountHandle;
use zos_vm::{
    cgroup::IoLimit, AccelChoice, Hypervisor, Qemu, QemuOptions, RestartPolicy, RunAs, Vm, VmEvent,
    VmOptions, VmState,
};

use super::{config_path, pid_path, socket_path, Reply, Request, ShimConfig, Startup, Status};
use crate::drivers::{
    vm::image::{mount_image, unmount, ImageMissing},
    DriverError,
};

/// Longest request line a shim reads (requests are a few hundred bytes).
const MAX_REQUEST: usize = 64 * 1024;

/// Crashes in a row, each soon after its start, that make a guest crash-looping: reported as
/// failed instead of restarted for ever while counted healthy.
pub const CRASH_LOOP_LIMIT: u32 = 5;
/// A guest that ran this long before crashing starts a new count (zos-vm's `stable_after`).
pub const STABLE_RUN: Duration = Duration::from_secs(600);

/// Consecutive crashes of one guest, from its events.
#[derive(Debug, Default)]
pub struct CrashCount {
    started: Option<Instant>,
    pub in_a_row: u32,
    pub total: u32,
    last_reason: String,
}

impl CrashCount {
    pub fn started(&mut self, at: Instant) {
        self.started = Some(at);
    }

    pub fn crashed(&mut self, at: Instant, reason: &str) {
        let stable = self
            .started
            .is_some_and(|s| at.saturating_duration_since(s) >= STABLE_RUN);
        self.in_a_row = if stable { 1 } else { self.in_a_row + 1 };
        self.total = self.total.saturating_add(1);
        self.last_reason = reason.to_string();
    }

    /// Why the guest counts as crash-looping, if it does.
    pub fn looping(&self) -> Option<String> {
        (self.in_a_row >= CRASH_LOOP_LIMIT).then(|| {
            format!(
                "guest is crash-looping: {} crashes in a row, each within {} s of starting; last: {}",
                self.in_a_row,
                STABLE_RUN.as_secs(),
                self.last_reason
            )
        })
    }
}

/// How the executor's guests are supervised: a VM is a service, started again when it powers
/// itself off; a stop presses the power button and waits `stop_grace` for a clean shutdown.
pub fn vm_options(stop_grace: Duration, io_limit: Option<IoLimit>) -> VmOptions {
    VmOptions {
        io_limit,
        restart: RestartPolicy {
            restart_on_poweroff: true,
            ..Default::default()
        },
        stop_grace,
        // The shim serves the guest's image: that CPU and memory are the VM's.
        charge_supervisor: true,
        ..Default::default()
    }
}

/// The running guest and what the shim knows about it.
struct Guest {
    vm: Vm,
    mount: Option<MountHandle>,
    crashes: Arc<StdMutex<CrashCount>>,
    disks: StdMutex<Vec<(String, PathBuf, u64)>>,
}

struct Shim {
    label: String,
    dir: PathBuf,
    /// `None` once shut down.
    guest: Mutex<Option<Guest>>,
    done: watch::Sender<bool>,
}

/// Runs the shim of the VM in `dir` until it is told to stop.
pub async fn run(dir: PathBuf) -> Result<()> {
    std::fs::write(pid_path(&dir), format!("{}\n", std::process::id()))
        .with_context(|| format!("writing {}", pid_path(&dir).display()))?;
    let config: ShimConfig = serde_json::from_slice(
        &std::fs::read(config_path(&dir))
            .with_context(|| format!("reading {}", config_path(&dir).display()))?,
    )
    .context("parsing the shim configuration")?;
    // Taken before the start: a signal during the image fetch or the hypervisor's start is
    // handled once the guest runs (stopped cleanly), never by the default action.
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let guest = match start(&dir, &config).await {
        Ok(guest) => guest,
        Err(failure) => {
            announce(&failure);
            let _ = std::fs::remove_file(pid_path(&dir));
            return Err(anyhow!("the guest did not start: {failure:?}"));
        }
    };
    let socket = socket_path(&dir);
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .with_context(|| format!("listening on {}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    let (done, mut done_rx) = watch::channel(false);
    let shim = Arc::new(Shim {
        label: config.label,
        dir: dir.clone(),
        guest: Mutex::new(Some(guest)),
        done,
    });
    announce(&Startup::Ready);
    info!(dir = %dir.display(), "guest running; serving requests");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shim = shim.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve(&shim, stream).await {
                            warn!(error = %format!("{e:#}"), "a request failed");
                        }
                    });
                }
                Err(e) => warn!(error = %e, "accepting a connection failed"),
            },
            _ = done_rx.changed() => return Ok(()),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    info!("signalled: stopping the guest and unmounting its image (files kept)");
    if let Some(guest) = shim.guest.lock().await.take() {
        stop(guest, false, &dir).await?;
    }
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(pid_path(&dir));
    Ok(())
}

/// Prints the startup line for the executor that started us (ignored when it is gone).
fn announce(startup: &Startup) {
    let mut out = std::io::stdout().lock();
    if let Ok(line) = serde_json::to_string(startup) {
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

fn failed(e: DriverError) -> Startup {
    match e {
        DriverError::Permanent(reason) => Startup::Failed {
            permanent: true,
            image_missing: false,
            reason,
        },
        DriverError::Transient(e) => Startup::Failed {
            permanent: false,
            image_missing: e.is::<ImageMissing>(),
            reason: format!("{e:#}"),
        },
    }
}

async fn start(dir: &Path, config: &ShimConfig) -> Result<Guest, Startup> {
    let rootfs = config.vm.rootfs_dir().cloned().ok_or_else(|| {
        failed(DriverError::permanent(
            "the VM has no image root filesystem",
        ))
    })?;
    let root = config.image_root.parse::<zos_image::Hash>().map_err(|e| {
        failed(DriverError::permanent(format!(
            "image root {:?}: {e}",
            config.image_root
        )))
    })?;
    let started = Instant::now();
    if !config.assets.kernel_blake3.is_empty() {
        // The kernel the executor checked is the one this guest boots.
        let kernel_dir = config.assets.kernel.parent().map(Path::to_path_buf);
        let expected = config.assets.kernel_blake3.clone();
        tokio::task::spawn_blocking(move || match kernel_dir {
            Some(dir) => zos_vm::guest::check_kernel(&dir, Some(&expected)).map(drop),
            None => Err(anyhow!("the guest kernel has no directory")),
        })
        .await
        .map_err(|e| failed(DriverError::Transient(e.into())))?
        .map_err(|e| {
            failed(DriverError::Transient(
                e.context("checking the guest kernel"),
            ))
        })?;
    }
    let mount = {
        let (source, policy) = (config.image_source.clone(), config.image_policy.clone());
        let cache_dir = dir.join("image-cache");
        tokio::task::spawn_blocking(move || {
            mount_image(&source, root, &rootfs, &cache_dir, &policy)
        })
        .await
        .map_err(|e| failed(DriverError::Transient(e.into())))?
        .map_err(failed)?
    };
    let mounted = started.elapsed();
    let mut options = QemuOptions::new(config.assets.clone());
    options.accel = match config.accel {
        zos_vm::Accel::Kvm => AccelChoice::Kvm,
        zos_vm::Accel::Tcg => AccelChoice::Tcg,
    };
    if let Some(user) = config.vm_user {
        options.run_as = Some(RunAs::Ids(user));
    }
    let hv: Arc<dyn Hypervisor> = Arc::new(Qemu::new(options));
    let vm = match Vm::create(
        hv,
        dir,
        config.vm.clone(),
        vm_options(Duration::from_secs(config.stop_grace_secs), config.io_limit),
    )
    .await
    {
        Ok(vm) => vm,
        Err(e) => {
            let _ = unmount(mount).await;
            return Err(failed(DriverError::Transient(e.context("creating the VM"))));
        }
    };
    let crashes = Arc::new(StdMutex::new(CrashCount::default()));
    log_events(&vm, crashes.clone());
    if let Err(e) = vm.start().await {
        let _ = unmount(mount).await;
        return Err(failed(DriverError::Transient(
            e.context("starting the guest"),
        )));
    }
    info!(vm = %vm.name(), ?mounted, total = ?started.elapsed(), "guest started");
    let disks = vm
        .config()
        .disks
        .iter()
        .map(|d| {
            let bytes = std::fs::metadata(&d.path).map(|m| m.len()).unwrap_or(0);
            (d.id.clone(), d.path.clone(), bytes)
        })
        .collect();
    Ok(Guest {
        vm,
        mount: Some(mount),
        crashes,
        disks: StdMutex::new(disks),
    })
}

/// Logs the guest's events and counts its crashes.
fn log_events(vm: &Vm, crashes: Arc<StdMutex<CrashCount>>) {
    let mut rx = vm.events();
    let count = move |f: &dyn Fn(&mut CrashCount)| {
        f(&mut crashes.lock().unwrap_or_else(|e| e.into_inner()))
    };
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match rx.recv().await {
                Ok(VmEvent::Crashed {
                    reason,
                    restarts,
                    restart_in,
                    ..
                }) => {
                    count(&|c| c.crashed(Instant::now(), &reason));
                    warn!(%reason, restarts, ?restart_in, "guest crashed; restarting it");
                }
                Ok(VmEvent::RestartFailed {
                    error, retry_in, ..
                }) => warn!(%error, ?retry_in, "guest restart failed"),
                Ok(VmEvent::Started {
                    pid,
                    accel,
                    restarts,
                    ..
                }) => {
                    count(&|c| c.started(Instant::now()));
                    info!(pid, %accel, restarts, "guest started");
                }
                Ok(other) => info!(event = ?other, "vm event"),
                Err(RecvError::Lagged(n)) => warn!(missed = n, "vm events lagged"),
                Err(RecvError::Closed) => break,
            }
        }
    });
}

/// Stops the guest and unmounts its image; with `remove`, deletes the VM directory too.
async fn stop(guest: Guest, remove: bool, dir: &Path) -> Result<()> {
    guest.vm.stop().await.context("stopping the guest")?;
    if let Some(mount) = guest.mount {
        unmount(mount).await.map_err(|e| anyhow!("{e}"))?;
    }
    if remove {
        guest.vm.delete().await.context("deleting the VM")?;
        match tokio::fs::remove_dir_all(dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", dir.display())),
        }
    }
    Ok(())
}

async fn serve(shim: &Shim, stream: UnixStream) -> Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read.take(MAX_REQUEST as u64))
        .read_line(&mut line)
        .await
        .context("reading the request")?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => handle(shim, request).await,
        Err(e) => Reply::Failed(format!("malformed request: {e}")),
    };
    let mut text = serde_json::to_string(&reply)?;
    text.push('\n');
    write.write_all(text.as_bytes()).await?;
    write.shutdown().await?;
    if matches!(reply, Reply::Done) && shim.guest.lock().await.is_none() {
        let _ = shim.done.send(true);
    }
    Ok(())
}

async fn handle(shim: &Shim, request: Request) -> Reply {
    let mut slot = shim.guest.lock().await;
    if let Request::Shutdown = request {
        return match slot.take() {
            None => Reply::Done,
            Some(guest) => match stop(guest, true, &shim.dir).await {
                Ok(()) => {
                    info!("shut down on request: guest stopped, image unmounted, files removed");
                    Reply::Done
                }
                Err(e) => Reply::Failed(format!("{e:#}")),
            },
        };
    }
    let Some(guest) = slot.as_ref() else {
        return Reply::Failed("the shim is shutting down".into());
    };
    let result: Result<Reply> = async {
        Ok(match request {
            Request::Status => {
                let (total, looping) = {
                    let crashes = guest.crashes.lock().unwrap_or_else(|e| e.into_inner());
                    (crashes.total, crashes.looping())
                };
                Reply::Status(Status {
                    label: shim.label.clone(),
                    state: guest.vm.state().await,
                    hypervisor_pid: guest.vm.pid().await,
                    crashes: total,
                    looping,
                    disks: guest
                        .disks
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone(),
                })
            }
            Request::Usage => Reply::Usage(guest.vm.usage().await?),
            Request::Pause => {
                if guest.vm.state().await != VmState::Paused {
                    guest.vm.pause().await?;
                }
                Reply::Done
            }
            Request::Resume => {
                if guest.vm.state().await == VmState::Paused {
                    guest.vm.resume().await?;
                }
                Reply::Done
            }
            Request::ResizeDisk { id, bytes } => {
                guest.vm.resize_disk(&id, bytes).await?;
                let mut disks = guest.disks.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(d) = disks.iter_mut().find(|d| d.0 == id) {
                    d.2 = bytes;
                }
                Reply::Done
            }
            Request::Restart => {
                if guest.vm.state().await == VmState::Paused {
                    // Paused in a grace period: its memory is what is kept.
                    return Ok(Reply::Failed("the guest is paused".into()));
                }
                info!("restarting the guest on request");
                guest.vm.stop().await?;
                guest.vm.start().await?;
                Reply::Done
            }
            Request::Shutdown => Reply::Done,
        })
    }
    .await;
    result.unwrap_or_else(|e| Reply::Failed(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest that keeps crashing soon after it starts is crash-looping after five crashes in
    /// a row; one that ran for a stable while starts a new count.
    #[test]
    fn crash_loops_are_recognised() {
        let t0 = Instant::now();
        let mut c = CrashCount::default();
        for i in 0..CRASH_LOOP_LIMIT {
            assert!(c.looping().is_none(), "after {i} crashes");
            let start = t0 + Duration::from_secs(u64::from(i) * 10);
            c.started(start);
            c.crashed(start + Duration::from_secs(3), "entrypoint exited with 1");
        }
        let reason = c.looping().expect("crash-looping");
        assert!(
            reason.contains("5 crashes in a row") && reason.contains("exited with 1"),
            "{reason}"
        );
        // A long stable run resets the count.
        let later = t0 + Duration::from_secs(1_000);
        c.started(later);
        c.crashed(later + STABLE_RUN, "oom");
        assert_eq!(c.in_a_row, 1);
        assert_eq!(c.total, CRASH_LOOP_LIMIT + 1);
        assert!(c.looping().is_none());
    }
}
