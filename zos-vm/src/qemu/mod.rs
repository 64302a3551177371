//! QEMU backend: Debian's `qemu-system-x86_64`, machine `q35`, direct kernel boot, controlled
//! over QMP (the `qapi` crate) on a unix socket.
//!
//! Acceleration: KVM only when a probe guest actually boots with it (on nested hosts /dev/kvm
//! may exist while guests fail or hang), else TCG. The probe boots the project's kernel and
//! initramfs and waits for the `ZOS-GUEST-INIT` line.
//!
//! Least privilege: `-nodefaults -no-user-config`, no network device unless the config has a
//! NIC, `-sandbox on,obsolete=deny,spawn=deny,resourcecontrol=deny` (seccomp), and `-runas`
//! an unprivileged user when started as root: the VM's own uid/gid from the
//! [`crate::UserRegistry`], else `nobody` (QEMU opens disks, taps and sockets first, then
//! drops privileges before the guest runs). `elevateprivileges=deny` is not used: it forbids
//! the setuid/setgid that `-runas` itself needs (QEMU 7.2 dies with SIGSYS).
//!
//! Here: options, the backend and its `launch`; `args` builds the command line, `probe` the KVM
//! probe, `instance` controls a running guest.

use std::{
    ffi::OsString,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};
use async_trait::async_trait;
use futures::StreamExt;
use qapi::{futures::QapiService, qmp};
use tokio::{
    io::{AsyncBufReadExt, BufReader, WriteHalf},
    net::UnixStream,
    process::{Child, Command},
    sync::{watch, OnceCell},
    task::JoinHandle,
};

mod args;
mod instance;
pub mod jail;
mod probe;

pub use args::AGENT_PORT_NAME;
pub use instance::QemuInstance;

use args::escape_opt;
use instance::qmp_err;

use crate::{
    config::{BootMode, GuestConfig, VmConfig, ROOTFS_TAG},
    console,
    guest::GuestAssets,
    hypervisor::{Accel, ExitInfo, ExitKind, Hypervisor, Instance, RunState, VmLayout},
};

/// How to choose the accelerator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelChoice {
    /// KVM when a probe guest boots with it, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl AccelChoice {
    /// From `ZOS_VM_ACCEL` (`auto`, `kvm`, `tcg`); `Auto` when unset.
    pub fn from_env() -> Result<Self> {
        match std::env::var("ZOS_VM_ACCEL").as_deref() {
            Err(_) | Ok("") | Ok("auto") => Ok(Self::Auto),
            Ok("kvm") => Ok(Self::Kvm),
            Ok("tcg") => Ok(Self::Tcg),
            Ok(other) => bail!("ZOS_VM_ACCEL={other:?}: expected auto, kvm or tcg"),
        }
    }
}

/// Whom QEMU runs as once it has opened its files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunAs {
    /// An account of the host (`nobody` by default).
    User(String),
    /// The VM's own ids from the [`crate::UserRegistry`]: no other guest's hypervisor shares
    /// them.
    Ids(crate::VmUser),
}

#[derive(Clone, Debug)]
pub struct QemuOptions {
    pub qemu_binary: PathBuf,
    pub virtiofsd_binary: PathBuf,
    pub accel: AccelChoice,
    pub assets: GuestAssets,
    /// seccomp filter (`-sandbox on,...`).
    pub sandbox: bool,
    /// Drop to this user after start-up (`-runas`); used only when running as root (and, for
    /// a name, when the user exists). `None` keeps QEMU's user.
    pub run_as: Option<RunAs>,
    /// Run each guest's QEMU in its own jail ([`jail`]); only when started as root.
    pub jail: bool,
    /// Appended to the kernel command line.
    pub extra_cmdline: String,
    /// How long the KVM probe guest may take to reach /init.
    pub probe_timeout: Duration,
}

impl QemuOptions {
    pub fn new(assets: GuestAssets) -> Self {
        Self {
            qemu_binary: PathBuf::from(
                std::env::var_os("ZOS_QEMU")
                    .unwrap_or_else(|| OsString::from("qemu-system-x86_64")),
            ),
            // Debian's qemu-system-common ships the C virtiofsd here.
            virtiofsd_binary: PathBuf::from(
                std::env::var_os("ZOS_VIRTIOFSD")
                    .unwrap_or_else(|| OsString::from("/usr/lib/qemu/virtiofsd")),
            ),
            accel: AccelChoice::Auto,
            assets,
            sandbox: true,
            run_as: Some(RunAs::User("nobody".into())),
            // `ZOS_VM_JAIL=off` for a host the jail cannot work on (a kernel before 5.8, which
            // lacks per-mount `hidepid`, or a root filesystem that is the initramfs itself,
            // where `pivot_root` is refused).
            jail: std::env::var_os("ZOS_VM_JAIL").is_none_or(|v| v != "off"),
            extra_cmdline: String::new(),
            probe_timeout: Duration::from_secs(15),
        }
    }
}

pub struct Qemu {
    opts: QemuOptions,
    accel: OnceCell<Accel>,
}

type QmpService = QapiService<qapi::futures::QmpStreamTokio<WriteHalf<UnixStream>>>;

impl Qemu {
    pub fn new(opts: QemuOptions) -> Self {
        Self {
            opts,
            accel: OnceCell::new(),
        }
    }

    pub fn options(&self) -> &QemuOptions {
        &self.opts
    }
    /// The `-runas` argument, `uid:gid` (a jailed QEMU has no user database to look a name
    /// up in): the VM's own user, else the named account's ids when it exists.
    fn run_as_user(&self) -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        match self.opts.run_as.clone()? {
            RunAs::Ids(user) => Some(format!("{}:{}", user.uid, user.gid)),
            RunAs::User(name) => {
                let cname = std::ffi::CString::new(name).ok()?;
                // SAFETY: valid NUL-terminated name; the entry is read at once, before any
                // other call that could overwrite it.
                let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
                if pw.is_null() {
                    return None;
                }
                // SAFETY: non-null entry from getpwnam.
                let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
                Some(format!("{uid}:{gid}"))
            }
        }
    }

    /// The jail of the guest `cfg` in `layout`, when QEMU is to be jailed.
    /// Also returns the QEMU binary as found on the host, which the jail exposes at that path.
    fn plan_jail(
        &self,
        cfg: &VmConfig,
        layout: &VmLayout,
    ) -> Result<Option<(jail::Jail, PathBuf)>> {
        // SAFETY: geteuid has no preconditions.
        if !self.opts.jail || unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let mut paths = jail::system_paths();
        paths.push(jail::Exposed::writable(&layout.dir));
        paths.push(jail::Exposed::read_only(&self.opts.assets.kernel));
        for d in &cfg.disks {
            paths.push(if d.read_only {
                jail::Exposed::read_only(&d.path)
            } else {
                jail::Exposed::writable(&d.path)
            });
        }
        let binary = resolve_binary(&self.opts.qemu_binary)?;
        paths.push(jail::Exposed::read_only(&binary));
        let root = layout.dir.join("jail");
        std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
        Ok(Some((jail::Jail::plan(&root, &paths)?, binary)))
    }

    /// One virtiofsd serving `dir` on `sock`, its output in `log`.
    async fn start_virtiofsd(&self, dir: &Path, sock: &Path, log_path: &Path) -> Result<Child> {
        let _ = std::fs::remove_file(sock);
        let log = std::fs::File::create(log_path).context("virtiofsd log")?;
        let mut source = OsString::from("source=");
        source.push(escape_opt(dir.as_os_str()));
        let mut sock_arg = OsString::from("--socket-path=");
        sock_arg.push(sock);
        let child = Command::new(&self.opts.virtiofsd_binary)
            .arg(sock_arg)
            .arg("-o")
            .arg(source)
            .args([
                "-o",
                "cache=auto",
                "-o",
                "sandbox=namespace",
                "-o",
                "log_level=warn",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.opts.virtiofsd_binary.display()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "virtiofsd did not create {}: {}",
                    sock.display(),
                    tail(log_path)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(child)
    }

    /// The virtiofsd daemons of `cfg`: the container root's, then one per shared directory.
    async fn start_file_servers(&self, cfg: &VmConfig, layout: &VmLayout) -> Result<Vec<Child>> {
        let mut wanted = Vec::new();
        if let Some(dir) = cfg.rootfs_dir() {
            wanted.push((dir.clone(), layout.virtiofs_socket(), layout.virtiofs_log()));
        }
        for s in &cfg.shares {
            wanted.push((
                s.dir.clone(),
                layout.share_socket(&s.tag),
                layout.share_log(&s.tag),
            ));
        }
        let mut started = Vec::new();
        for (dir, sock, log) in wanted {
            match self.start_virtiofsd(&dir, &sock, &log).await {
                Ok(child) => started.push(child),
                Err(e) => {
                    stop_all(&mut started).await;
                    return Err(e);
                }
            }
        }
        Ok(started)
    }
}

async fn stop_all(children: &mut [Child]) {
    for c in children {
        let _ = c.kill().await;
    }
}

/// Writes base initramfs + the config appendix for `cfg` to `out`, readable by its owner only:
/// the appendix carries the tenant's environment and keys.
/// `assets`' initramfs must still have the hash recorded when it was built (when one was).
pub fn write_initrd(assets: &GuestAssets, cfg: &VmConfig, out: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let base = &assets.initramfs;
    let mut data = std::fs::read(base).with_context(|| format!("reading {}", base.display()))?;
    if !assets.initramfs_blake3.is_empty() {
        let found = blake3::hash(&data).to_hex();
        if found.as_str() != assets.initramfs_blake3 {
            bail!(
                "the guest initramfs {} changed since it was built (BLAKE3 {} then, {found} now)",
                base.display(),
                assets.initramfs_blake3
            );
        }
    }
    // The kernel looks for the next archive on a 4-byte boundary.
    while data.len() % 4 != 0 {
        data.push(0);
    }
    data.extend(cfg.config_appendix()?);
    let tmp = out.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&data))
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(())
}

/// `binary` as an absolute path (searched on PATH when it is a bare name), so that the jail
/// can expose it.
fn resolve_binary(binary: &Path) -> Result<PathBuf> {
    if binary.components().count() > 1 {
        return std::path::absolute(binary)
            .with_context(|| format!("resolving {}", binary.display()));
    }
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(binary))
                .find(|c| c.is_file())
        })
        .with_context(|| format!("{} is not on PATH", binary.display()))
}

/// Last lines of a log file, for error messages.
pub(crate) fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(8)..].join("\n")
}

#[async_trait]
impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    async fn accel(&self) -> Result<Accel> {
        let a = self
            .accel
            .get_or_try_init(|| async {
                Ok::<_, anyhow::Error>(match self.opts.accel {
                    AccelChoice::Kvm => Accel::Kvm,
                    AccelChoice::Tcg => Accel::Tcg,
                    AccelChoice::Auto => match self.probe_kvm().await {
                        Ok(()) => {
                            tracing::info!("KVM probe guest booted: using KVM");
                            Accel::Kvm
                        }
                        Err(e) => {
                            tracing::warn!(reason = %format!("{e:#}"), "KVM unusable: falling back to TCG");
                            Accel::Tcg
                        }
                    },
                })
            })
            .await?;
        Ok(*a)
    }

    async fn kill_stale(&self, layout: &VmLayout) -> Result<bool> {
        let Ok(text) = std::fs::read_to_string(layout.pid_file()) else {
            return Ok(false);
        };
        let Ok(pid) = text.trim().parse::<i32>() else {
            return Ok(false);
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let pidfile = layout.pid_file();
        let needle = pidfile.as_os_str().as_encoded_bytes();
        if cmdline.is_empty() || !cmdline.windows(needle.len()).any(|w| w == needle) {
            return Ok(false);
        }
        tracing::warn!(pid, dir = %layout.dir.display(), "killing a stale hypervisor process");
        // SAFETY: plain syscall on a pid we verified runs for this VM.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        for _ in 0..500 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(true)
    }

    async fn launch(
        &self,
        cfg: &VmConfig,
        layout: &VmLayout,
        console_max_bytes: u64,
    ) -> Result<Box<dyn Instance>> {
        cfg.validate()?;
        cfg.check_disk_files()?;
        let accel = self.accel().await?;
        write_initrd(&self.opts.assets, cfg, &layout.initrd())?;
        for s in [
            layout.control_socket(),
            layout.console_socket(),
            layout.agent_socket(),
            layout.pid_file(),
        ] {
            let _ = std::fs::remove_file(s);
        }
        let mut virtiofsd = self.start_file_servers(cfg, layout).await?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(layout.process_log())
            .context("opening the hypervisor log")?;
        let args = self.args(cfg, layout, accel);
        tracing::debug!(vm = %cfg.name, ?args, "starting qemu");
        let jail = match self.plan_jail(cfg, layout) {
            Ok(j) => j,
            Err(e) => {
                stop_all(&mut virtiofsd).await;
                return Err(e.context("planning QEMU's jail"));
            }
        };
        let mut command = Command::new(
            jail.as_ref()
                .map_or(self.opts.qemu_binary.as_path(), |(_, binary)| {
                    binary.as_path()
                }),
        );
        // Opened before the fork; the child enters it between fork and exec.
        let netns = cfg
            .netns
            .as_ref()
            .map(|p| std::fs::File::open(p).with_context(|| format!("opening {}", p.display())))
            .transpose()?;
        if let Some(ns) = &netns {
            use std::os::fd::AsRawFd;
            let fd = ns.as_raw_fd();
            // SAFETY: setns is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some((jail, _)) = jail {
            // SAFETY: `enter` only makes syscalls on data prepared before the fork; it runs
            // after the network namespace is joined.
            unsafe {
                command.pre_exec(move || jail.enter());
            }
        }
        let spawned = command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Own process group: a signal to the executor's group does not reach guests.
            .process_group(0)
            // Dropping the reaper (runtime shut down, e.g. a test that panicked) ends QEMU
            // rather than leaving an unsupervised guest on the VM's disks.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.opts.qemu_binary.display()));
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                stop_all(&mut virtiofsd).await;
                return Err(e);
            }
        };
        let pid = child.id().context("qemu has no pid")?;
        let setup = async {
            let stream =
                console::connect_retry(&layout.control_socket(), Duration::from_secs(15)).await?;
            let (r, w) = tokio::io::split(stream);
            let negotiation = qapi::futures::QmpStreamTokio::open_split(r, w)
                .await
                .context("QMP greeting")?;
            let stream = negotiation.negotiate().await.context("QMP capabilities")?;
            let (service, events) = stream.into_parts();
            let pump = console::start_pump(
                &layout.console_socket(),
                &layout.console_log(),
                console_max_bytes,
            )
            .await?;
            Ok::<_, anyhow::Error>((service, events, pump))
        };
        let setup = tokio::select! {
            r = setup => r,
            status = child.wait() => Err(anyhow!("qemu exited during start-up ({:?})", status)),
        };
        let (service, events, pump) = match setup {
            Ok(x) => x,
            Err(e) => {
                let _ = child.kill().await;
                stop_all(&mut virtiofsd).await;
                return Err(e.context(format!(
                    "QEMU start-up failed: {}",
                    tail(&layout.process_log())
                )));
            }
        };
        let shutdown_reason = Arc::new(Mutex::new(None::<String>));
        let events_task = {
            let reason = shutdown_reason.clone();
            let name = cfg.name.clone();
            tokio::spawn(async move {
                let mut events = events;
                while let Some(ev) = events.next().await {
                    match ev {
                        Ok(qmp::Event::SHUTDOWN { data, .. }) => {
                            let r = serde_json::to_value(data.reason)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_string))
                                .unwrap_or_else(|| "unknown".into());
                            tracing::info!(vm = %name, reason = %r, guest = data.guest, "guest shutdown");
                            *reason.lock().unwrap() = Some(r);
                        }
                        Ok(other) => tracing::debug!(vm = %name, event = ?other, "qmp event"),
                        Err(e) => {
                            tracing::debug!(vm = %name, error = %e, "qmp stream ended");
                            break;
                        }
                    }
                }
            })
        };
        let (exit_tx, exit_rx) = watch::channel(None::<ExitInfo>);
        let helper_pids: Vec<u32> = virtiofsd.iter().filter_map(Child::id).collect();
        let reaper = {
            let reason = shutdown_reason.clone();
            let log_path = layout.process_log();
            tokio::spawn(async move {
                let status = child.wait().await;
                // Give the QMP stream a moment to deliver the SHUTDOWN event written before exit.
                let _ = tokio::time::timeout(Duration::from_millis(500), events_task).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
                stop_all(&mut virtiofsd).await;
                let reason = reason.lock().unwrap().clone();
                let kind = match (reason.as_deref(), status) {
                    (Some("guest-shutdown"), _) => ExitKind::GuestPoweroff,
                    (Some(r), _) if r.starts_with("host") => ExitKind::HostRequested,
                    (Some(r), _) => ExitKind::GuestFailure(r.to_string()),
                    (None, Ok(s)) => match (s.signal(), s.code()) {
                        (Some(sig), _) => ExitKind::Killed(sig),
                        (_, Some(0)) => ExitKind::HostRequested,
                        (_, Some(c)) => ExitKind::Failed(c),
                        _ => ExitKind::Failed(-1),
                    },
                    (None, Err(e)) => ExitKind::GuestFailure(format!("wait failed: {e}")),
                };
                let _ = exit_tx.send(Some(ExitInfo {
                    kind,
                    detail: tail(&log_path),
                }));
            })
        };
        let inst = QemuInstance {
            pid,
            helper_pids,
            accel,
            qmp: service,
            exit: exit_rx,
            _reaper: reaper,
        };
        inst.qmp
            .execute(qmp::cont {})
            .await
            .map_err(qmp_err)
            .context("QMP cont")?;
        Ok(Box::new(inst))
    }
}
