//! Keeps the release's services running, like zinit: start in order, restart on exit with a
//! doubling backoff (reset once a service has run for a minute), every output line to the
//! console and into a ring buffer that `/run/zos/core-0.sock` serves.

use std::{
    collections::VecDeque,
    io::{BufRead, BufReader, Read, Write},
    os::unix::{
        net::UnixListener,
        process::{CommandExt, ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A service that ran this long before exiting starts again from the first backoff.
const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// Lines kept for `core-0.sock`.
pub const RING_LINES: usize = 2000;
/// A longer output line is cut: a service cannot make core-0 hold unbounded memory.
const MAX_LINE: usize = 4096;

/// The last [`RING_LINES`] lines of every service, oldest first.
#[derive(Debug, Default)]
pub struct Ring {
    lines: VecDeque<String>,
    cap: usize,
}

impl Ring {
    pub fn new(cap: usize) -> Self {
        Self {
            lines: VecDeque::with_capacity(cap.min(4096)),
            cap,
        }
    }
    pub fn push(&mut self, line: String) {
        if self.lines.len() == self.cap {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }
}

/// Shared between the supervisor, the output readers and the socket.
pub type SharedRing = Arc<Mutex<Ring>>;

/// Records a line: console and ring.
pub fn log_line(ring: &SharedRing, line: String) {
    eprintln!("{line}");
    if let Ok(mut r) = ring.lock() {
        r.push(line);
    }
}

/// Serves the ring on a unix socket: each connection gets every kept line, then EOF.
pub fn serve_ring(ring: SharedRing, socket: &Path) -> std::io::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let text: String = match ring.lock() {
                Ok(r) => r.lines().flat_map(|l| [l, "\n"]).collect(),
                Err(_) => continue,
            };
            // A reader that stops reading costs one thread for at most the timeout.
            let _ = conn.set_write_timeout(Some(std::time::Duration::from_secs(5)));
            std::thread::spawn(move || {
                let _ = conn.write_all(text.as_bytes());
            });
        }
    });
    Ok(())
}

struct Slot {
    name: String,
    argv: Vec<String>,
    pid: Option<u32>,
    started: Instant,
    backoff: Duration,
    due: Option<Instant>,
    restarts: u32,
    /// Stopped on purpose (a release switch): not restarted until started again.
    stopped: bool,
}

/// The services of one release.
pub struct Supervisor {
    slots: Vec<Slot>,
    ring: SharedRing,
    /// The root directory services run in (the mounted OS image); `None` runs them in
    /// core-0's own root.
    root: Option<PathBuf>,
}

/// The services' search path, inside their root.
pub const SERVICE_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// Makes `cmd` run with `root` as its root directory (and working directory).
pub fn in_root(cmd: &mut Command, root: &Path) {
    let root = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
        .unwrap_or_else(|_| c"/nonexistent".into());
    // SAFETY: between fork and exec only async-signal-safe calls (chroot, chdir) are made,
    // on a string allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// SIGTERM to `pid`, SIGKILL once `grace` has passed; waits for it (a bounded time after the
/// SIGKILL: a process stuck in the kernel is left to the PID-1 reaping) and says how it ended.
pub fn stop_process(pid: u32, grace: Duration) -> String {
    let pid = pid as libc::pid_t;
    // SAFETY: kill and waitpid on a child of this process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let term_deadline = Instant::now() + grace;
    let mut kill_deadline = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on one child, without blocking.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return describe(std::process::ExitStatus::from_raw(status));
        }
        if r < 0 {
            return format!("not waited for: {}", std::io::Error::last_os_error());
        }
        match kill_deadline {
            None if Instant::now() > term_deadline => {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                kill_deadline = Some(Instant::now() + Duration::from_secs(5));
            }
            Some(d) if Instant::now() > d => {
                return "killed, but still not gone after 5 s".into();
            }
            _ => {}
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How a process ended, in words.
pub fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with {c}"),
        (_, Some(s)) => format!("killed by signal {s}"),
        _ => "ended".into(),
    }
}

/// Copies `stream` line by line, each prefixed, into the ring (and so onto the console).
pub fn pump(stream: impl Read + Send + 'static, prefix: String, ring: SharedRing) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader
                .by_ref()
                .take(MAX_LINE as u64)
                .read_until(b'\n', &mut buf)
            {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&buf);
                    log_line(
                        &ring,
                        format!("{prefix}{}", text.trim_end_matches(['\n', '\r'])),
                    );
                }
            }
        }
    });
}

impl Supervisor {
    /// Services by name and command line, started in this order.
    pub fn new(services: Vec<(String, Vec<String>)>, ring: SharedRing) -> Self {
        let now = Instant::now();
        let slots = services
            .into_iter()
            .map(|(name, argv)| Slot {
                name,
                argv,
                pid: None,
                started: now,
                backoff: FIRST_BACKOFF,
                due: Some(now),
                restarts: 0,
                stopped: false,
            })
            .collect();
        Self {
            slots,
            ring,
            root: None,
        }
    }

    /// Runs the services with `root` as their root directory.
    pub fn in_root(mut self, root: PathBuf) -> Self {
        self.root = Some(root);
        self
    }

    /// Starts every service whose (re)start is due.
    pub fn start_due(&mut self, now: Instant) {
        for slot in &mut self.slots {
            if slot.pid.is_some() || slot.due.is_none_or(|d| d > now) {
                continue;
            }
            slot.due = None;
            // Every attempt counts: a program that cannot start never looks "healthy".
            slot.started = now;
            let mut cmd = Command::new(&slot.argv[0]);
            cmd.args(&slot.argv[1..])
                .env_clear()
                .env("PATH", SERVICE_PATH)
                .env("HOME", "/root")
                // Their output is a console and a ring buffer, not a terminal.
                .env("NO_COLOR", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            if let Some(root) = &self.root {
                in_root(&mut cmd, root);
            }
            match cmd.spawn() {
                Ok(mut child) => {
                    let prefix = format!("[{}] ", slot.name);
                    if let Some(out) = child.stdout.take() {
                        pump(out, prefix.clone(), self.ring.clone());
                    }
                    if let Some(err) = child.stderr.take() {
                        pump(err, prefix, self.ring.clone());
                    }
                    slot.pid = Some(child.id());
                    log_line(
                        &self.ring,
                        format!("core-0: service {} started (pid {})", slot.name, child.id()),
                    );
                    // Reaped by the PID-1 loop's waitpid(-1), not through `child`.
                }
                Err(e) => {
                    let wait = Self::schedule(slot, now);
                    log_line(
                        &self.ring,
                        format!(
                            "core-0: service {} did not start: {e}; retrying in {} s",
                            slot.name,
                            wait.as_secs()
                        ),
                    );
                }
            }
        }
    }

    fn schedule(slot: &mut Slot, now: Instant) -> Duration {
        if now.duration_since(slot.started) >= HEALTHY_RUN {
            slot.backoff = FIRST_BACKOFF;
        }
        let wait = slot.backoff;
        slot.backoff = (slot.backoff * 2).min(MAX_BACKOFF);
        slot.due = Some(now + wait);
        slot.restarts = slot.restarts.saturating_add(1);
        wait
    }

    /// A child ended: if it was a service, schedule its restart. Returns whether it was one.
    pub fn exited(&mut self, pid: u32, status: std::process::ExitStatus, now: Instant) -> bool {
        let Some(slot) = self.slots.iter_mut().find(|s| s.pid == Some(pid)) else {
            return false;
        };
        slot.pid = None;
        if slot.stopped {
            log_line(
                &self.ring,
                format!("core-0: service {} {}", slot.name, describe(status)),
            );
            return true;
        }
        let wait = Self::schedule(slot, now);
        let line = format!(
            "core-0: service {} {}; restart {} in {} s",
            slot.name,
            describe(status),
            slot.restarts,
            wait.as_secs()
        );
        log_line(&self.ring, line);
        true
    }

    /// Holds every service back until [`Supervisor::start`]: a release being switched to.
    pub fn paused(mut self) -> Self {
        for slot in &mut self.slots {
            slot.due = None;
            slot.stopped = true;
        }
        self
    }

    /// The services' names, in start order.
    pub fn names(&self) -> Vec<String> {
        self.slots.iter().map(|s| s.name.clone()).collect()
    }

    /// Whether `pid` is one of these services.
    pub fn owns(&self, pid: u32) -> bool {
        self.slots.iter().any(|s| s.pid == Some(pid))
    }

    /// The running process of service `name`.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.slots.iter().find(|s| s.name == name)?.pid
    }

    /// Starts service `name` now, and supervises it again if it was stopped.
    pub fn start(&mut self, name: &str, now: Instant) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.name == name) {
            slot.stopped = false;
            slot.backoff = FIRST_BACKOFF;
            if slot.pid.is_none() {
                slot.due = Some(now);
            }
        }
        self.start_due(now);
    }

    /// Stops service `name` (SIGTERM, SIGKILL after `grace`) and reaps it; it is not restarted
    /// until [`Supervisor::start`].
    pub fn stop(&mut self, name: &str, grace: Duration) {
        let Some(slot) = self.slots.iter_mut().find(|s| s.name == name) else {
            return;
        };
        slot.stopped = true;
        slot.due = None;
        let Some(pid) = slot.pid.take() else { return };
        let how = stop_process(pid, grace);
        log_line(
            &self.ring,
            format!("core-0: service {} stopped ({how})", slot.name),
        );
    }

    /// Stops every service.
    pub fn stop_all(&mut self, grace: Duration) {
        for name in self.names() {
            self.stop(&name, grace);
        }
    }

    /// The earliest pending restart.
    pub fn next_due(&self) -> Option<Instant> {
        self.slots.iter().filter_map(|s| s.due).min()
    }

    /// (name, pid, restarts) of each service.
    pub fn status(&self) -> Vec<(String, Option<u32>, u32)> {
        self.slots
            .iter()
            .map(|s| (s.name.clone(), s.pid, s.restarts))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Tests that reap children (waitpid) run one at a time: waitpid(-1) would take another
    /// test's child.
    pub(crate) static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn the_ring_keeps_the_newest_lines() {
        let mut r = Ring::new(3);
        for i in 0..5 {
            r.push(i.to_string());
        }
        assert_eq!(r.lines().collect::<Vec<_>>(), ["2", "3", "4"]);
    }

    fn wait_pid(pid: u32) -> std::process::ExitStatus {
        let mut status = 0;
        // SAFETY: waits for a child this test started.
        unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        std::process::ExitStatus::from_raw(status)
    }

    #[test]
    fn a_failing_service_is_restarted_with_a_growing_backoff_and_its_output_kept() {
        let _alone = SERIAL.lock().unwrap();
        let ring: SharedRing = Arc::new(Mutex::new(Ring::new(100)));
        let argv = vec![
            "/bin/sh".to_string(),
            "-c".into(),
            "echo out; echo err >&2; exit 3".into(),
        ];
        let mut sup = Supervisor::new(
            vec![
                ("flaky".into(), argv),
                ("missing".into(), vec!["/nonexistent/x".into()]),
            ],
            ring.clone(),
        );
        let t0 = Instant::now();
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..3 {
            sup.start_due(now);
            let pid = sup.status()[0].1.expect("started");
            let status = wait_pid(pid);
            assert!(sup.exited(pid, status, now));
            let due = sup.next_due().unwrap();
            waits.push(sup.slots[0].due.unwrap().duration_since(now).as_secs());
            now = due.max(sup.slots[0].due.unwrap());
        }
        assert_eq!(waits, [1, 2, 4]);
        assert!(
            !sup.exited(1, std::process::ExitStatus::from_raw(0), now),
            "not a service"
        );
        std::thread::sleep(Duration::from_millis(300));
        let lines: Vec<String> = ring.lock().unwrap().lines().map(String::from).collect();
        assert!(lines.iter().any(|l| l == "[flaky] out"), "{lines:?}");
        assert!(lines.iter().any(|l| l == "[flaky] err"), "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("service flaky exited with 3; restart 3 in 4 s")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("service missing did not start")),
            "{lines:?}"
        );
        assert_eq!(sup.status()[1].1, None);
    }
}
