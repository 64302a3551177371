//! The executor's side of a shim: starting one, talking to one, ending one that no longer
//! answers.

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
    process::Command,
};

use super::{log_path, pid_path, socket_path, Reply, Request, Startup, Status, SHIM_ARG};

/// How long a shim may take to answer an ordinary request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a shim may take to stop its guest and unmount its image, beyond the guest's grace.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest reply read (a status is well below a kilobyte).
const MAX_REPLY: u64 = 1 << 20;

/// A connection point to the shim of the VM in `dir`.
#[derive(Clone, Debug)]
pub struct ShimClient {
    dir: PathBuf,
}

impl ShimClient {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    async fn call(&self, request: &Request, timeout: Duration) -> Result<Reply> {
        let socket = socket_path(&self.dir);
        let exchange = async {
            let mut stream = UnixStream::connect(&socket)
                .await
                .with_context(|| format!("connecting to {}", socket.display()))?;
            let mut line = serde_json::to_string(request)?;
            line.push('\n');
            stream.write_all(line.as_bytes()).await?;
            let mut reply = String::new();
            BufReader::new(stream.take(MAX_REPLY))
                .read_line(&mut reply)
                .await
                .context("reading the shim's reply")?;
            serde_json::from_str::<Reply>(&reply)
                .with_context(|| format!("the shim's reply {reply:?}"))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .with_context(|| format!("the shim at {} did not answer", self.dir.display()))?
    }

    async fn done(&self, request: Request, timeout: Duration) -> Result<()> {
        match self.call(&request, timeout).await? {
            Reply::Done => Ok(()),
            Reply::Failed(reason) => bail!("{reason}"),
            other => bail!("unexpected reply {other:?} to {request:?}"),
        }
    }

    pub async fn status(&self) -> Result<Status> {
        match self.call(&Request::Status, REQUEST_TIMEOUT).await? {
            Reply::Status(status) => Ok(status),
            Reply::Failed(reason) => bail!("{reason}"),
            other => bail!("unexpected reply {other:?} to a status request"),
        }
    }

    pub async fn usage(&self) -> Result<zos_vm::VmUsage> {
        match self.call(&Request::Usage, REQUEST_TIMEOUT).await? {
            Reply::Usage(usage) => Ok(usage),
            Reply::Failed(reason) => bail!("{reason}"),
            other => bail!("unexpected reply {other:?} to a usage request"),
        }
    }

    pub async fn pause(&self) -> Result<()> {
        self.done(Request::Pause, REQUEST_TIMEOUT).await
    }

    pub async fn resume(&self) -> Result<()> {
        self.done(Request::Resume, REQUEST_TIMEOUT).await
    }

    pub async fn resize_disk(&self, id: &str, bytes: u64) -> Result<()> {
        let id = id.to_string();
        self.done(Request::ResizeDisk { id, bytes }, REQUEST_TIMEOUT)
            .await
    }

    /// Stops the guest (waiting up to `grace` for a clean shutdown) and starts it again.
    pub async fn restart(&self, grace: Duration) -> Result<()> {
        self.done(Request::Restart, grace + SHUTDOWN_TIMEOUT).await
    }

    /// Stops the guest (waiting up to `grace` for a clean shutdown), unmounts the image and
    /// removes the VM directory; the shim exits.
    pub async fn shutdown(&self, grace: Duration) -> Result<()> {
        self.done(Request::Shutdown, grace + SHUTDOWN_TIMEOUT).await
    }

    /// Ends a shim that does not answer (SIGKILL, only when its pid file names a shim of this
    /// directory). Returns whether one was running.
    pub async fn kill_unresponsive(&self) -> bool {
        let Some(pid) = self.running_pid() else {
            return false;
        };
        tracing::warn!(pid, dir = %self.dir.display(), "killing a shim that does not answer");
        // SAFETY: plain kill(2) on a pid whose command line we just checked.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        for _ in 0..500 {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_file(pid_path(&self.dir));
        true
    }

    /// The pid in `shim.pid` when that process is this directory's shim.
    pub fn running_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(pid_path(&self.dir))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let dir = self.dir.as_os_str().as_encoded_bytes();
        let ours = args
            .windows(2)
            .any(|w| w[0] == SHIM_ARG.as_bytes() && w[1] == dir);
        ours.then_some(pid)
    }
}

/// How a shim's start went, as the driver needs it.
#[derive(Debug)]
pub enum SpawnError {
    /// The shim said why the guest did not start.
    Refused {
        permanent: bool,
        image_missing: bool,
        reason: String,
    },
    /// The shim did not get that far.
    Other(anyhow::Error),
}

/// Starts `binary vm-shim <dir>` in a session of its own and waits (at most `timeout`) for its
/// startup line. The shim's configuration must be in place. The process is not waited for: it
/// outlives this executor.
pub async fn spawn(binary: &Path, dir: &Path, timeout: Duration) -> Result<(), SpawnError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir))
        .with_context(|| format!("opening {}", log_path(dir).display()))
        .map_err(SpawnError::Other)?;
    let mut command = std::process::Command::new(binary);
    command
        .arg(SHIM_ARG)
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe and touches only the child. A session of its own:
    // signals to the executor's process group or terminal never reach the shim.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut command = Command::from(command);
    let mut child = command
        .kill_on_drop(false)
        .spawn()
        .with_context(|| format!("starting {} {SHIM_ARG}", binary.display()))
        .map_err(SpawnError::Other)?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    let mut stdout = BufReader::new(stdout.take(MAX_REPLY));
    let outcome = tokio::time::timeout(timeout, stdout.read_line(&mut line)).await;
    // Dropped, not waited for: tokio reaps it in the background once it exits.
    drop(child);
    let tail = || {
        let text = std::fs::read_to_string(log_path(dir)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    };
    match outcome {
        Err(_) => Err(SpawnError::Other(anyhow::anyhow!(
            "the VM shim did not report its start within {} s; its log ends:\n{}",
            timeout.as_secs(),
            tail()
        ))),
        Ok(Err(e)) => Err(SpawnError::Other(
            anyhow::Error::new(e).context("reading the VM shim's startup line"),
        )),
        Ok(Ok(0)) => Err(SpawnError::Other(anyhow::anyhow!(
            "the VM shim exited before reporting its start; its log ends:\n{}",
            tail()
        ))),
        Ok(Ok(_)) => match serde_json::from_str::<Startup>(&line) {
            Ok(Startup::Ready) => Ok(()),
            Ok(Startup::Failed {
                permanent,
                image_missing,
                reason,
            }) => Err(SpawnError::Refused {
                permanent,
                image_missing,
                reason,
            }),
            Err(e) => Err(SpawnError::Other(anyhow::anyhow!(
                "the VM shim's startup line {line:?}: {e}"
            ))),
        },
    }
}
