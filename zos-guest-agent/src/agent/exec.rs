//! Starting commands in the tenant's root: with pipes, on a terminal, or in the background.

use std::{
    ffi::CStr,
    fs::{File, OpenOptions},
    io::{self, Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{
            fs::OpenOptionsExt,
            process::{CommandExt, ExitStatusExt},
        },
    },
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use zos_guest_agent::{Exec, Frame, Kind, MAX_OUTPUT_CHUNK};

use super::{Agent, Input, Live, Shared};

/// Input frames queued per session before the host's reader waits.
const STDIN_QUEUE: usize = 16;
/// How long a terminal's output may keep coming after its process exited (a background
/// process may hold the terminal open for ever).
const TTY_DRAIN: Duration = Duration::from_secs(2);
/// How often a terminal reader checks whether its session ended.
const TTY_POLL_MS: i32 = 250;
/// Helper threads only copy bytes: small stacks keep 64 sessions cheap.
const THREAD_STACK: usize = 256 * 1024;

/// Runs in the child between fork and exec: only async-signal-safe calls.
fn enter_root(root: Option<&CStr>) -> io::Result<()> {
    // SAFETY: plain syscalls on a NUL-terminated path prepared before the fork.
    unsafe {
        if let Some(root) = root {
            if libc::chroot(root.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if libc::chdir(c"/".as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs in the child: signals /init's shell ignored for its background agent (SIGINT,
/// SIGQUIT) get their defaults back, so Ctrl-C works in sessions.
fn default_signals() {
    for signal in 1..32 {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: signal() is async-signal-safe.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
}

fn new_session() -> io::Result<()> {
    // SAFETY: setsid has no memory effects.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The child gets default signals, the tenant's root and a session of its own (so a signal
/// to the session reaches its whole process group).
fn in_own_session_in_root(cmd: &mut Command, agent: &Agent) {
    let root = agent.root_c.clone();
    // SAFETY: the closure makes only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || {
            default_signals();
            enter_root(root.as_deref())?;
            new_session()
        });
    }
}

impl Agent {
    fn command(&self, program: &Path, argv: &[String], tty: bool) -> Command {
        let mut cmd = Command::new(program);
        if let Some((arg0, args)) = argv.split_first() {
            cmd.arg0(arg0).args(args);
        }
        self.env.apply(&mut cmd, tty);
        cmd
    }
}

fn spawn_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(THREAD_STACK)
        .spawn(f)
}

fn exit_code(status: io::Result<ExitStatus>) -> i32 {
    match status {
        Ok(s) => s
            .code()
            .unwrap_or_else(|| 128 + s.signal().unwrap_or_default()),
        // Cannot happen for our own child; report it as a failure.
        Err(_) => 255,
    }
}

/// Kills a child whose session could not be set up, and reaps it.
fn abandon(mut child: Child) {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}

/// Copies a pipe's bytes into frames of `kind` until it closes.
fn pump(mut from: impl Read, shared: &Shared, id: u32, kind: Kind, ended: &AtomicBool) {
    let mut buf = vec![0u8; MAX_OUTPUT_CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => shared
                .host
                .send_live(ended, &Frame::new(id, kind, &buf[..n])),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Copies a terminal's output into `Stdout` frames until its last user closes it (EIO) or
/// the session ends.
fn pump_tty(master: &File, shared: &Shared, id: u32, ended: &AtomicBool) {
    let mut buf = vec![0u8; MAX_OUTPUT_CHUNK];
    while !ended.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        match unsafe { libc::poll(&mut pfd, 1, TTY_POLL_MS) } {
            0 => continue,
            n if n < 0 => {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            _ => {}
        }
        match (&*master).read(&mut buf) {
            Ok(0) => return,
            Ok(n) => shared
                .host
                .send_live(ended, &Frame::new(id, Kind::Stdout, &buf[..n])),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn feed_pipe(mut stdin: impl Write, input: Receiver<Input>) {
    for item in input {
        match item {
            Input::Data(bytes) => {
                if stdin.write_all(&bytes).is_err() {
                    return;
                }
            }
            Input::Eof => return,
        }
    }
}

fn feed_tty(master: &File, input: Receiver<Input>) {
    for item in input {
        let bytes = match item {
            Input::Data(bytes) => bytes,
            // Ctrl-D: the end of input for a terminal in canonical mode.
            Input::Eof => vec![0x04],
        };
        if (&*master).write_all(&bytes).is_err() {
            return;
        }
    }
}

/// Starts a command with its standard streams piped to the session.
pub fn spawn_piped(
    agent: &Agent,
    id: u32,
    program: &Path,
    argv: &[String],
    quiet: bool,
) -> io::Result<()> {
    let mut cmd = agent.command(program, argv, false);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    in_own_session_in_root(&mut cmd, agent);
    let mut child = cmd.spawn()?;
    let (Some(stdin), Some(stdout), Some(stderr)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        abandon(child);
        return Err(io::Error::other("the command's pipes are missing"));
    };
    let (input, input_rx) = mpsc::sync_channel(STDIN_QUEUE);
    let ended = Arc::new(AtomicBool::new(false));
    let live = Arc::new(Live {
        pid: child.id() as i32,
        input,
        master: None,
        quiet,
        ended: ended.clone(),
    });
    agent.register(id, &live);
    let copy = |from: Box<dyn Read + Send>, kind: Kind| {
        let (shared, ended) = (agent.shared.clone(), ended.clone());
        spawn_thread("output", move || pump(from, &shared, id, kind, &ended))
    };
    let threads = (|| {
        let out = copy(Box::new(stdout), Kind::Stdout)?;
        let err = copy(Box::new(stderr), Kind::Stderr)?;
        spawn_thread("input", move || feed_pipe(stdin, input_rx))?;
        Ok::<_, io::Error>((out, err))
    })();
    let (out, err) = match threads {
        Ok(threads) => threads,
        Err(e) => {
            abandon(child);
            agent.shared.forget(id, &live);
            return Err(e);
        }
    };
    let shared = agent.shared.clone();
    let waiter = spawn_thread("wait", move || {
        let code = exit_code(child.wait());
        // All output is sent before `Exit`.
        let _ = out.join();
        let _ = err.join();
        shared.end(id, &live, code);
    });
    if let Err(e) = waiter {
        log!("session {id}: cannot wait for the process: {e}");
    }
    Ok(())
}

/// A new terminal (master, slave), both close-on-exec (other sessions' children must not
/// hold them).
fn open_pty(rows: u16, cols: u16) -> io::Result<(OwnedFd, OwnedFd)> {
    let (mut master, mut slave) = (-1, -1);
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let size_ptr: *const libc::winsize = if rows > 0 && cols > 0 {
        &size
    } else {
        std::ptr::null()
    };
    // SAFETY: openpty writes two fds we then own; the winsize outlives the call.
    let (master, slave) = unsafe {
        if libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            size_ptr,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave))
    };
    for fd in [&master, &slave] {
        // SAFETY: fcntl on an fd we own.
        if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((master, slave))
}

/// Starts a command on a new terminal, its controlling one.
pub fn spawn_tty(agent: &Agent, id: u32, program: &Path, exec: &Exec) -> io::Result<()> {
    let (master, slave) = open_pty(exec.rows, exec.cols)?;
    let mut cmd = agent.command(program, &exec.argv, true);
    cmd.stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave));
    let root = agent.root_c.clone();
    // SAFETY: the closure makes only async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || {
            default_signals();
            new_session()?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            enter_root(root.as_deref())
        });
    }
    let spawned = cmd.spawn();
    // The agent's copies of the slave: the terminal must hang up when the session's last
    // process closes it.
    drop(cmd);
    let mut child = spawned?;
    let master = Arc::new(File::from(master));
    let (input, input_rx) = mpsc::sync_channel(STDIN_QUEUE);
    let ended = Arc::new(AtomicBool::new(false));
    let live = Arc::new(Live {
        pid: child.id() as i32,
        input,
        master: Some(master.clone()),
        quiet: false,
        ended: ended.clone(),
    });
    agent.register(id, &live);
    let (drained, drained_rx) = mpsc::channel::<()>();
    let threads = (|| {
        let (shared, output, ended) = (agent.shared.clone(), master.clone(), ended.clone());
        spawn_thread("output", move || {
            pump_tty(&output, &shared, id, &ended);
            drop(drained);
        })?;
        let input = master.clone();
        spawn_thread("input", move || feed_tty(&input, input_rx))
    })();
    if let Err(e) = threads {
        abandon(child);
        agent.shared.forget(id, &live);
        return Err(e);
    }
    let shared = agent.shared.clone();
    let waiter = spawn_thread("wait", move || {
        let code = exit_code(child.wait());
        // The output's end, or give up on a terminal a background process keeps open.
        let _ = drained_rx.recv_timeout(TTY_DRAIN);
        shared.end(id, &live, code);
    });
    if let Err(e) = waiter {
        log!("session {id}: cannot wait for the process: {e}");
    }
    Ok(())
}

/// Starts a command in the background, its output on the guest console; returns its pid.
pub fn spawn_detached(agent: &Agent, program: &Path, argv: &[String]) -> io::Result<i32> {
    let console = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/console")
        .and_then(|c| Ok((c.try_clone()?, c)));
    let (stdout, stderr) = match console {
        Ok((out, err)) => (Stdio::from(out), Stdio::from(err)),
        Err(_) => (Stdio::null(), Stdio::null()),
    };
    let mut cmd = agent.command(program, argv, false);
    cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    in_own_session_in_root(&mut cmd, agent);
    let mut child = cmd.spawn()?;
    let pid = child.id() as i32;
    // Reaped when it ends, so it leaves the process list.
    if let Err(e) = spawn_thread("reap", move || child.wait()) {
        log!("pid {pid}: cannot wait for it: {e}");
    }
    Ok(pid)
}
