//! QEMU backend: Debian's `qemu-system-x86_64`, machine `q35`, direct kernel boot, controlled
//! over QMP (the `qapi` crate) on a unix socket.
//!
//! Acceleration: KVM only when a probe guest actually boots with it (on nested hosts /dev/kvm
//! may exist while guests fail or hang), else TCG. The probe boots the project's kernel and
//! initramfs and waits for the `ZOS-GUEST-INIT` line.
//!
//! Least privilege: `-nodefaults -no-user-config`, no network device unless the config has a
//! NIC, `-sandbox on,obsolete=deny,spawn=deny,resourcecontrol=deny` (seccomp), and `-runas`
//! an unprivileged user when started as root (QEMU opens disks, taps and sockets first, then
//! drops privileges before the guest runs). `elevateprivileges=deny` is not used: it forbids
//! the setuid/setgid that `-runas` itself needs (QEMU 7.2 dies with SIGSYS).

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

#[derive(Clone, Debug)]
pub struct QemuOptions {
    pub qemu_binary: PathBuf,
    pub virtiofsd_binary: PathBuf,
    pub accel: AccelChoice,
    pub assets: GuestAssets,
    /// seccomp filter (`-sandbox on,...`).
    pub sandbox: bool,
    /// Drop to this user after start-up (`-runas`); used only when running as root and the
    /// user exists. `None` keeps QEMU's user.
    pub run_as: Option<String>,
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
            run_as: Some("nobody".into()),
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
            nics: vec![],
            netns: None,
            guest: GuestConfig {
                entrypoint: "true".into(),
                ..Default::default()
            },
        };
        let initrd = dir.join("initrd.img");
        write_initrd(&self.opts.assets.initramfs, &cfg, &initrd)?;
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

    fn run_as_user(&self) -> Option<String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let user = self.opts.run_as.clone()?;
        let cname = std::ffi::CString::new(user.clone()).ok()?;
        // SAFETY: valid NUL-terminated name; the result is only checked for NULL.
        let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
        (!pw.is_null()).then_some(user)
    }

    /// The QEMU command line for `cfg` (without the binary).
    pub fn args(&self, cfg: &VmConfig, layout: &VmLayout, accel: Accel) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut push = |s: &str| a.push(s.into());
        push("-name");
        push(&format!("{},debug-threads=on", cfg.name));
        for s in [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-S",
        ] {
            push(s);
        }
        let shared_mem = cfg.rootfs_dir().is_some();
        let machine = if shared_mem {
            "q35,memory-backend=mem"
        } else {
            "q35"
        };
        push("-machine");
        push(machine);
        push("-accel");
        push(&accel.to_string());
        if accel == Accel::Kvm {
            push("-cpu");
            push("host");
        }
        push("-smp");
        push(&cfg.vcpus.to_string());
        push("-m");
        push(&format!("{}M", cfg.memory_mib));
        if shared_mem {
            // vhost-user devices (virtio-fs) need guest RAM the daemon can map.
            push("-object");
            push(&format!(
                "memory-backend-memfd,id=mem,size={}M,share=on",
                cfg.memory_mib
            ));
        }
        if self.opts.sandbox {
            push("-sandbox");
            push("on,obsolete=deny,spawn=deny,resourcecontrol=deny");
        }
        if let Some(user) = self.run_as_user() {
            push("-runas");
            push(&user);
        }
        push("-append");
        let mut cmdline = String::from("console=ttyS0 panic=-1 quiet");
        if !self.opts.extra_cmdline.is_empty() {
            cmdline.push(' ');
            cmdline.push_str(&self.opts.extra_cmdline);
        }
        push(&cmdline);
        a.push("-kernel".into());
        a.push(self.opts.assets.kernel.clone().into());
        a.push("-initrd".into());
        a.push(layout.initrd().into());
        a.push("-chardev".into());
        a.push(chardev_socket("con0", &layout.console_socket(), true));
        a.push("-serial".into());
        a.push("chardev:con0".into());
        a.push("-chardev".into());
        a.push(chardev_socket("qmp0", &layout.control_socket(), true));
        a.push("-mon".into());
        a.push("chardev=qmp0,mode=control".into());
        a.push("-pidfile".into());
        a.push(layout.pid_file().into());
        for d in &cfg.disks {
            let mut file = OsString::from(format!("driver=file,node-name=file-{},filename=", d.id));
            file.push(escape_opt(d.path.as_os_str()));
            a.push("-blockdev".into());
            a.push(file);
            a.push("-blockdev".into());
            a.push(
                format!(
                    "driver=raw,node-name={id},file=file-{id},read-only={ro}",
                    id = d.id,
                    ro = if d.read_only { "on" } else { "off" }
                )
                .into(),
            );
            a.push("-device".into());
            a.push(
                format!(
                    "virtio-blk-pci,drive={id},id=blk-{id},serial={id}",
                    id = d.id
                )
                .into(),
            );
        }
        for (i, n) in cfg.nics.iter().enumerate() {
            a.push("-netdev".into());
            a.push(format!("tap,id=net{i},ifname={},script=no,downscript=no", n.tap).into());
            a.push("-device".into());
            a.push(format!("virtio-net-pci,netdev=net{i},mac={}", n.mac_string()).into());
        }
        if shared_mem {
            a.push("-chardev".into());
            a.push(chardev_socket("vfs0", &layout.virtiofs_socket(), false));
            a.push("-device".into());
            a.push(format!("vhost-user-fs-pci,chardev=vfs0,tag={ROOTFS_TAG}").into());
        }
        a.push("-device".into());
        a.push("virtio-rng-pci".into());
        a
    }

    async fn start_virtiofsd(&self, dir: &Path, layout: &VmLayout) -> Result<Child> {
        let sock = layout.virtiofs_socket();
        let _ = std::fs::remove_file(&sock);
        let log = std::fs::File::create(layout.virtiofs_log()).context("virtiofsd log")?;
        let mut source = OsString::from("source=");
        source.push(escape_opt(dir.as_os_str()));
        let mut sock_arg = OsString::from("--socket-path=");
        sock_arg.push(&sock);
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
                    tail(&layout.virtiofs_log())
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(child)
    }
}

fn chardev_socket(id: &str, path: &Path, server: bool) -> OsString {
    let mut s = OsString::from(format!("socket,id={id},path="));
    s.push(escape_opt(path.as_os_str()));
    if server {
        s.push(",server=on,wait=off");
    }
    s
}

/// QEMU option values escape `,` by doubling it.
fn escape_opt(v: &std::ffi::OsStr) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in v.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
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

/// Writes base initramfs + the config appendix for `cfg` to `out`, readable by its owner only:
/// the appendix carries the tenant's environment and keys.
pub fn write_initrd(base: &Path, cfg: &VmConfig, out: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut data = std::fs::read(base).with_context(|| format!("reading {}", base.display()))?;
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
        write_initrd(&self.opts.assets.initramfs, cfg, &layout.initrd())?;
        for s in [
            layout.control_socket(),
            layout.console_socket(),
            layout.pid_file(),
        ] {
            let _ = std::fs::remove_file(s);
        }
        let mut virtiofsd = match cfg.rootfs_dir() {
            Some(dir) => Some(self.start_virtiofsd(dir, layout).await?),
            None => None,
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(layout.process_log())
            .context("opening the hypervisor log")?;
        let args = self.args(cfg, layout, accel);
        tracing::debug!(vm = %cfg.name, ?args, "starting qemu");
        let mut command = Command::new(&self.opts.qemu_binary);
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
                if let Some(v) = virtiofsd.as_mut() {
                    let _ = v.kill().await;
                }
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
                if let Some(v) = virtiofsd.as_mut() {
                    let _ = v.kill().await;
                }
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
        let helper_pids: Vec<u32> = virtiofsd
            .as_ref()
            .and_then(|v| v.id())
            .into_iter()
            .collect();
        let reaper = {
            let reason = shutdown_reason.clone();
            let log_path = layout.process_log();
            tokio::spawn(async move {
                let status = child.wait().await;
                // Give the QMP stream a moment to deliver the SHUTDOWN event written before exit.
                let _ = tokio::time::timeout(Duration::from_millis(500), events_task).await;
                let _ = tokio::time::timeout(Duration::from_secs(2), pump).await;
                if let Some(mut v) = virtiofsd {
                    let _ = v.kill().await;
                }
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

fn qmp_err(e: qapi::ExecuteError) -> anyhow::Error {
    anyhow!("{e}")
}

pub struct QemuInstance {
    pid: u32,
    helper_pids: Vec<u32>,
    accel: Accel,
    qmp: QmpService,
    exit: watch::Receiver<Option<ExitInfo>>,
    _reaper: JoinHandle<()>,
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
