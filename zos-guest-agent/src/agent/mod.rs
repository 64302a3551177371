//! Sessions: the frames from the host, the processes they start and the frames sent back.

mod env;
mod exec;
mod probe;
mod procs;

use std::{
    collections::HashMap,
    ffi::CString,
    fs::File,
    io::{self, Write},
    os::unix::{ffi::OsStrExt, io::AsRawFd},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc::{SyncSender, TrySendError},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

pub use env::Env;
use zos_guest_agent::{Exec, Frame, Kind, Request, Started, MAX_PAYLOAD};

/// Sessions running at once in one guest.
const MAX_SESSIONS: usize = 64;
/// How long the host's reader may wait for a process that does not read its input before that
/// input is dropped (every session shares the reader).
const STDIN_STALL: Duration = Duration::from_secs(2);

/// Input for a session's process, in order.
pub enum Input {
    Data(Vec<u8>),
    Eof,
}

/// A session whose process runs.
pub struct Live {
    /// The process, leader of its own process group.
    pub pid: i32,
    pub input: SyncSender<Input>,
    /// The terminal's master side, for a session with a tty.
    pub master: Option<Arc<File>>,
    /// Not logged on the console (see [`Exec::quiet`]).
    pub quiet: bool,
    /// Set once the session's last frame went out (or the host left): nothing more is sent.
    pub ended: Arc<AtomicBool>,
}

/// The one writer of frames to the host: each frame goes out whole.
pub struct Host {
    out: Mutex<Box<dyn Write + Send>>,
}

impl Host {
    fn lock(&self) -> MutexGuard<'_, Box<dyn Write + Send>> {
        self.out.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write errors are ignored: the host is gone and its sessions are reset when the reader
    /// notices.
    pub fn send(&self, frame: &Frame) {
        let _ = frame.write_to(&mut *self.lock());
    }

    /// Sends a session's frame unless the session already ended: output never follows `Exit`,
    /// and a reset session's output never reaches the next host.
    pub fn send_live(&self, ended: &AtomicBool, frame: &Frame) {
        let mut out = self.lock();
        if !ended.load(Ordering::SeqCst) {
            let _ = frame.write_to(&mut *out);
        }
    }

    /// Sends a session's last frame, once; false when it had ended already.
    pub fn finish(&self, ended: &AtomicBool, frame: &Frame) -> bool {
        let mut out = self.lock();
        if ended.swap(true, Ordering::SeqCst) {
            return false;
        }
        let _ = frame.write_to(&mut *out);
        true
    }
}

/// What the session threads share.
pub struct Shared {
    pub host: Host,
    sessions: Mutex<HashMap<u32, Arc<Live>>>,
}

impl Shared {
    fn sessions(&self) -> MutexGuard<'_, HashMap<u32, Arc<Live>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn live(&self, id: u32) -> Option<Arc<Live>> {
        self.sessions().get(&id).cloned()
    }

    /// Takes a session out of the table (unless a reset already did, maybe before a new
    /// session under the same id came in).
    fn remove(&self, id: u32, live: &Arc<Live>) {
        let mut sessions = self.sessions();
        if sessions.get(&id).is_some_and(|l| Arc::ptr_eq(l, live)) {
            sessions.remove(&id);
        }
    }

    /// Ends a session whose process exited: it leaves the table, then `Exit` goes out.
    pub fn end(&self, id: u32, live: &Arc<Live>, code: i32) {
        self.remove(id, live);
        if self.host.finish(&live.ended, &Frame::exit(id, code)) && !live.quiet {
            log!("session {id}: exit {code}");
        }
    }

    /// Drops a session that could not be set up, silently: its `Error` follows.
    pub fn forget(&self, id: u32, live: &Arc<Live>) {
        self.remove(id, live);
        live.ended.store(true, Ordering::SeqCst);
    }
}

pub struct Agent {
    /// The tenant's root; `None` when it is `/` (nothing to chroot into).
    root_c: Option<CString>,
    root: PathBuf,
    env: Env,
    shared: Arc<Shared>,
}

impl Agent {
    pub fn new(root: PathBuf, env: Env, out: Box<dyn Write + Send>) -> Self {
        let root_c = (root != Path::new("/"))
            .then(|| CString::new(root.as_os_str().as_bytes()).ok())
            .flatten();
        Self {
            root_c,
            root,
            env,
            shared: Arc::new(Shared {
                host: Host {
                    out: Mutex::new(out),
                },
                sessions: Mutex::default(),
            }),
        }
    }

    /// Acts on one frame from the host.
    pub fn handle(&self, frame: Frame) {
        let id = frame.session;
        match frame.kind {
            Kind::Open => self.open(id, &frame.payload),
            Kind::Stdin if !frame.payload.is_empty() => self.stdin(id, Input::Data(frame.payload)),
            Kind::StdinEof => self.stdin(id, Input::Eof),
            Kind::Resize => self.resize(id, frame.size()),
            Kind::Signal => self.signal(id, frame.int()),
            // Empty input, and the kinds only the agent sends.
            _ => {}
        }
    }

    /// Ends every session (the host that opened them is gone): their process groups are
    /// killed and nothing more of theirs is sent. Returns how many there were.
    pub fn reset(&self) -> usize {
        let ended: Vec<Arc<Live>> = self.shared.sessions().drain().map(|(_, l)| l).collect();
        for live in &ended {
            // Not through the writer's lock: a write may be stuck until the host returns.
            live.ended.store(true, Ordering::SeqCst);
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(-live.pid, libc::SIGKILL) };
        }
        ended.len()
    }

    fn refuse(&self, id: u32, why: impl std::fmt::Display) {
        let mut why = why.to_string();
        if why.len() > MAX_PAYLOAD {
            let mut cut = MAX_PAYLOAD;
            while !why.is_char_boundary(cut) {
                cut -= 1;
            }
            why.truncate(cut);
        }
        log!("session {id}: refused: {why}");
        self.shared.host.send(&Frame::error(id, why));
    }

    fn open(&self, id: u32, payload: &[u8]) {
        let request: Request = match serde_json::from_slice(payload) {
            Ok(r) => r,
            Err(e) => return self.refuse(id, format!("the agent cannot read the request: {e}")),
        };
        if let Err(why) = request.check() {
            return self.refuse(id, why);
        }
        {
            let sessions = self.shared.sessions();
            if sessions.contains_key(&id) {
                return self.refuse(id, format!("session {id} is already running"));
            }
            if sessions.len() >= MAX_SESSIONS {
                return self.refuse(id, "too many sessions in this guest");
            }
        }
        match request {
            Request::Exec(exec) => self.exec(id, exec),
            Request::Ps => {
                log!("session {id}: ps");
                let list = procs::encode_bounded(procs::list());
                self.shared.host.send(&Frame::new(id, Kind::Reply, list));
                self.shared.host.send(&Frame::exit(id, 0));
            }
            Request::Probe(p) => self.probe(id, p),
            Request::Kill { pid, signal } => {
                log!("session {id}: kill {pid} with signal {signal}");
                match procs::kill(pid, signal) {
                    Ok(()) => self.shared.host.send(&Frame::exit(id, 0)),
                    Err(e) => self.refuse(
                        id,
                        format!("cannot signal process {pid}: {}", errno_text(&e)),
                    ),
                }
            }
        }
    }

    /// Runs a health probe on a thread of its own; its answer ends the session.
    fn probe(&self, id: u32, request: zos_guest_agent::Probe) {
        let Some(slot) = probe::slot() else {
            return self.refuse(id, "too many probes running in this guest");
        };
        // Acknowledged at once, like every session; the verdict follows.
        self.shared
            .host
            .send(&Frame::new(id, Kind::Reply, b"{}".to_vec()));
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("probe".into())
            .spawn(move || {
                let _slot = slot;
                match probe::run(&request) {
                    Ok(()) => shared.host.send(&Frame::exit(id, 0)),
                    Err(why) => {
                        log!("session {id}: probe of port {} failed: {why}", request.port);
                        shared
                            .host
                            .send(&Frame::new(id, Kind::Stdout, why.into_bytes()));
                        shared.host.send(&Frame::exit(id, 1));
                    }
                }
            });
        if let Err(e) = spawned {
            self.refuse(id, format!("cannot start the probe: {e}"));
        }
    }

    fn exec(&self, id: u32, exec: Exec) {
        if !exec.quiet {
            log!(
                "session {id}: exec {:?} tty={} detach={}",
                exec.argv,
                exec.tty,
                exec.detach
            );
        }
        let Some(name) = exec.argv.first() else {
            return self.refuse(id, "no command given");
        };
        let Some(program) = env::find_program(&self.root, &self.env, name) else {
            return self.refuse(id, format!("command not found: {name}"));
        };
        let cannot_run = |e: io::Error| format!("cannot run {name}: {}", errno_text(&e));
        let host = &self.shared.host;
        if exec.detach {
            match exec::spawn_detached(self, &program, &exec.argv) {
                Ok(pid) => {
                    let started = serde_json::to_vec(&Started { pid }).unwrap_or_default();
                    host.send(&Frame::new(id, Kind::Reply, started));
                    host.send(&Frame::exit(id, 0));
                    log!("session {id}: started pid {pid}; exit 0");
                }
                Err(e) => self.refuse(id, cannot_run(e)),
            }
            return;
        }
        let spawned = if exec.tty {
            exec::spawn_tty(self, id, &program, &exec)
        } else {
            exec::spawn_piped(self, id, &program, &exec.argv, exec.quiet)
        };
        if let Err(e) = spawned {
            self.refuse(id, cannot_run(e));
        }
    }

    /// Registers a started session and acknowledges it with its pid (the host waits for a
    /// first frame).
    fn register(&self, id: u32, live: &Arc<Live>) {
        self.shared.sessions().insert(id, live.clone());
        let started = serde_json::to_vec(&Started { pid: live.pid }).unwrap_or_default();
        self.shared
            .host
            .send_live(&live.ended, &Frame::new(id, Kind::Reply, started));
    }

    fn stdin(&self, id: u32, input: Input) {
        let Some(live) = self.shared.live(id) else {
            return;
        };
        // Wait a little for a slow reader rather than losing its input; a process that does not
        // read at all must not stall every other session.
        let deadline = Instant::now() + STDIN_STALL;
        let mut input = input;
        loop {
            match live.input.try_send(input) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(back)) if Instant::now() < deadline => {
                    input = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(TrySendError::Full(_)) => {
                    log!("session {id}: input dropped: the process does not read it");
                    return;
                }
            }
        }
    }

    fn resize(&self, id: u32, size: Option<(u16, u16)>) {
        let (Some(live), Some((rows, cols))) = (self.shared.live(id), size) else {
            return;
        };
        if let Some(master) = &live.master {
            let ws = libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads the winsize we own; the fd is open (held by `live`).
            unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        }
    }

    fn signal(&self, id: u32, signal: Option<i32>) {
        let (Some(live), Some(signal)) = (self.shared.live(id), signal) else {
            return;
        };
        if (1..=64).contains(&signal) && !live.ended.load(Ordering::SeqCst) {
            // SAFETY: kill has no memory effects; the group is the session's (setsid).
            unsafe { libc::kill(-live.pid, signal) };
        }
    }
}

/// An OS error as a sentence's end: "no such process".
pub fn errno_text(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(cut) => &text[..cut],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_read_as_sentences() {
        assert_eq!(
            errno_text(&io::Error::from_raw_os_error(libc::ESRCH)),
            "no such process"
        );
        assert_eq!(errno_text(&io::Error::other("Odd")), "odd");
    }
}
