//! The agent binary against a unix socket standing in for the host side of its port.

use std::{
    io::Write,
    os::unix::{
        fs::symlink,
        net::{UnixListener, UnixStream},
    },
    path::Path,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use zos_guest_agent::{Exec, Frame, Kind, ProcessList, Request, Started, MAX_PAYLOAD};

const TIMEOUT: Duration = Duration::from_secs(10);

struct Agent {
    child: Child,
    stream: UnixStream,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start() -> Self {
        Self::start_with(Path::new("/"), &[])
    }

    fn start_with(root: &Path, vars: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        listener.set_nonblocking(true).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_zos-guest-agent"))
            .arg("--root")
            .arg(root)
            .arg("--connect")
            .arg(&socket)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + TIMEOUT;
        let stream = loop {
            match listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "the agent never connected");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        stream.set_nonblocking(false).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        Self {
            child,
            stream,
            _dir: dir,
        }
    }

    fn send(&mut self, frame: Frame) {
        frame.write_to(&mut self.stream).unwrap();
    }

    fn recv(&mut self) -> Frame {
        Frame::read_from(&mut self.stream)
            .expect("a frame within the timeout")
            .expect("the agent closed the connection")
    }

    fn open(&mut self, session: u32, request: &Request) {
        let json = serde_json::to_vec(request).unwrap();
        self.send(Frame::new(session, Kind::Open, json));
    }

    /// Frames of `session` up to its `Exit` or `Error` (included); others are skipped.
    fn until_end(&mut self, session: u32) -> Vec<Frame> {
        let mut frames = Vec::new();
        loop {
            let frame = self.recv();
            if frame.session != session {
                continue;
            }
            let last = matches!(frame.kind, Kind::Exit | Kind::Error);
            frames.push(frame);
            if last {
                return frames;
            }
        }
    }

    /// The next frame of `session`, which must be the `Reply` acknowledging its start.
    fn started(&mut self, session: u32) -> i32 {
        let frame = self.recv();
        assert_eq!(
            (frame.session, frame.kind),
            (session, Kind::Reply),
            "{frame:?}"
        );
        serde_json::from_slice::<Started>(&frame.payload)
            .unwrap()
            .pid
    }

    fn ps(&mut self, session: u32) -> ProcessList {
        self.open(session, &Request::Ps);
        let frames = self.until_end(session);
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[1], Frame::exit(session, 0));
        serde_json::from_slice(&frames[0].payload).unwrap()
    }

    /// Closes the connection; the agent's exit status.
    fn close(mut self) -> ExitStatus {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        wait_exit(&mut self.child)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the agent did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exec(argv: &[&str], tty: bool) -> Request {
    Request::Exec(Exec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        tty,
        rows: 0,
        cols: 0,
        detach: false,
        quiet: false,
    })
}

/// (stdout, stderr, the last frame) of a session's frames.
fn outputs(frames: &[Frame]) -> (String, String, Frame) {
    let text = |kind| {
        let bytes: Vec<u8> = frames
            .iter()
            .filter(|f| f.kind == kind)
            .flat_map(|f| f.payload.clone())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (
        text(Kind::Stdout),
        text(Kind::Stderr),
        frames.last().unwrap().clone(),
    )
}

#[test]
fn commands_run_with_their_output_apart_and_their_exit_code() {
    let mut agent = Agent::start();
    agent.open(
        1,
        &exec(&["sh", "-c", "echo out; echo err >&2; exit 3"], false),
    );
    agent.started(1);
    let (out, err, last) = outputs(&agent.until_end(1));
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    assert_eq!(last, Frame::exit(1, 3));

    // Standard input, then its end.
    agent.open(2, &exec(&["cat"], false));
    agent.started(2);
    agent.send(Frame::new(2, Kind::Stdin, b"hello".to_vec()));
    agent.send(Frame::new(2, Kind::StdinEof, vec![]));
    let (out, _, last) = outputs(&agent.until_end(2));
    assert_eq!(out, "hello");
    assert_eq!(last, Frame::exit(2, 0));

    assert!(agent.close().success());
}

#[test]
fn commands_get_a_clean_environment() {
    let mut agent = Agent::start_with(Path::new("/"), &[("ZOS_AGENT_TEST_LEAK", "1")]);
    agent.open(1, &exec(&["env"], false));
    agent.started(1);
    let (out, _, last) = outputs(&agent.until_end(1));
    assert_eq!(last, Frame::exit(1, 0));
    assert!(!out.contains("ZOS_AGENT_TEST_LEAK"), "{out}");
    assert!(
        out.contains("HOME=/root\n") && out.contains("TERM=dumb\n"),
        "{out}"
    );
    assert!(
        out.contains("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"),
        "{out}"
    );
}

#[test]
fn terminals() {
    let mut agent = Agent::start();
    agent.open(1, &exec(&["tty"], true));
    agent.started(1);
    let (out, _, last) = outputs(&agent.until_end(1));
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    assert_eq!(last, Frame::exit(1, 0));

    agent.open(2, &exec(&["sh"], true));
    agent.started(2);
    agent.send(Frame::new(
        2,
        Kind::Stdin,
        b"echo $((6*7)); exit 5\n".to_vec(),
    ));
    let (out, _, last) = outputs(&agent.until_end(2));
    assert!(out.contains("42"), "{out:?}");
    assert_eq!(last, Frame::exit(2, 5));

    // The size set before the command reads it.
    agent.open(3, &exec(&["sh"], true));
    agent.started(3);
    agent.send(Frame::resize(3, 40, 100));
    agent.send(Frame::new(3, Kind::Stdin, b"stty size; exit\n".to_vec()));
    let (out, _, last) = outputs(&agent.until_end(3));
    assert!(out.contains("40 100"), "{out:?}");
    assert_eq!(last, Frame::exit(3, 0));

    assert!(agent.close().success());
}

#[test]
fn refusals() {
    let mut agent = Agent::start();
    agent.open(1, &exec(&["no-such-command-zos"], false));
    let frame = agent.recv();
    assert_eq!((frame.session, frame.kind), (1, Kind::Error));
    let why = String::from_utf8_lossy(&frame.payload);
    assert!(
        why.contains("command not found: no-such-command-zos"),
        "{why}"
    );

    agent.send(Frame::new(2, Kind::Open, b"{not json".to_vec()));
    assert_eq!(agent.recv().kind, Kind::Error);
    agent.open(3, &exec(&[], false));
    assert_eq!(agent.recv().kind, Kind::Error);
    agent.open(4, &Request::Kill { pid: 1, signal: 9 });
    assert_eq!(agent.recv().kind, Kind::Error);

    // A second Open of a running session.
    agent.open(5, &exec(&["sleep", "30"], false));
    agent.started(5);
    agent.open(5, &Request::Ps);
    let frame = agent.recv();
    assert_eq!((frame.session, frame.kind), (5, Kind::Error), "{frame:?}");

    // Frames of unknown sessions and of the agent's own kinds are ignored.
    agent.send(Frame::new(99, Kind::Stdin, b"x".to_vec()));
    agent.send(Frame::signal(99, 9));
    agent.send(Frame::exit(5, 0));
    agent.send(Frame::signal(5, 9));
    assert_eq!(agent.until_end(5).last().unwrap(), &Frame::exit(5, 128 + 9));
    assert!(agent.close().success());
}

#[test]
fn signals_reach_the_session_process() {
    let mut agent = Agent::start();
    agent.open(1, &exec(&["sleep", "30"], false));
    agent.started(1);
    agent.send(Frame::signal(1, 15));
    let frames = agent.until_end(1);
    assert_eq!(frames.last().unwrap(), &Frame::exit(1, 143));
    assert!(agent.close().success());
}

#[test]
fn background_processes_are_listed_and_killed() {
    let mut agent = Agent::start();
    agent.open(
        1,
        &Request::Exec(Exec {
            argv: vec!["sleep".into(), "300".into()],
            tty: false,
            rows: 0,
            cols: 0,
            detach: true,
            quiet: false,
        }),
    );
    let pid = agent.started(1);
    assert_eq!(agent.recv(), Frame::exit(1, 0));

    let list = agent.ps(2);
    let sleeper = list.processes.iter().find(|p| p.pid == pid);
    let sleeper = sleeper.unwrap_or_else(|| panic!("pid {pid} missing from {list:?}"));
    assert!(sleeper.command.contains("sleep"), "{sleeper:?}");
    let agent_pid = agent.child.id() as i32;
    assert_eq!(sleeper.ppid, agent_pid);

    agent.open(3, &Request::Kill { pid, signal: 15 });
    assert_eq!(agent.recv(), Frame::exit(3, 0));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut session = 4;
    while agent.ps(session).processes.iter().any(|p| p.pid == pid) {
        assert!(Instant::now() < deadline, "pid {pid} is still listed");
        std::thread::sleep(Duration::from_millis(100));
        session += 1;
    }

    // Gone now: the signal fails with the reason.
    agent.open(session + 1, &Request::Kill { pid, signal: 15 });
    let frame = agent.recv();
    assert_eq!(frame.kind, Kind::Error);
    assert!(
        String::from_utf8_lossy(&frame.payload).contains("no such process"),
        "{frame:?}"
    );
    assert!(agent.close().success());
}

#[test]
fn a_broken_stream_ends_the_connection_cleanly() {
    for bad in [
        {
            let mut h = Frame::new(1, Kind::Stdin, vec![]).encode();
            h[5..9].copy_from_slice(&((MAX_PAYLOAD as u32) + 1).to_be_bytes());
            h
        },
        {
            let mut h = Frame::new(1, Kind::Stdin, vec![]).encode();
            h[4] = 99;
            h
        },
    ] {
        let mut agent = Agent::start();
        // A running session goes with the connection.
        agent.open(1, &exec(&["sleep", "30"], false));
        let pid = agent.started(1);
        agent.stream.write_all(&bad).unwrap();
        let status = wait_exit(&mut agent.child);
        assert_eq!(status.code(), Some(0), "{status:?}");
        let deadline = Instant::now() + TIMEOUT;
        // SAFETY: signal 0 only checks the pid.
        while unsafe { libc::kill(pid, 0) } == 0 && !is_zombie(pid) {
            assert!(Instant::now() < deadline, "pid {pid} survived the reset");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Commands run chrooted, found through links that resolve only inside the root. Needs root
/// (chroot) and a static busybox; skipped without them.
#[test]
fn commands_run_inside_the_root() {
    let busybox = Path::new("/bin/busybox");
    let is_static = std::fs::read(busybox).is_ok_and(|elf| is_static_elf64(&elf));
    // SAFETY: geteuid has no memory effects.
    if unsafe { libc::geteuid() } != 0 || !is_static {
        eprintln!("skipped: needs root and a static /bin/busybox");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("zos-test-bb")).unwrap();
    std::fs::create_dir_all(r.join("usr/bin")).unwrap();
    std::fs::copy(busybox, r.join("zos-test-bb/busybox")).unwrap();
    symlink("usr/bin", r.join("bin")).unwrap();
    symlink("/zos-test-bb/busybox", r.join("usr/bin/sh")).unwrap();
    let mut agent = Agent::start_with(r, &[]);
    agent.open(1, &exec(&["sh", "-c", "pwd; echo /*"], false));
    agent.started(1);
    let (out, err, last) = outputs(&agent.until_end(1));
    assert_eq!(out, "/\n/bin /usr /zos-test-bb\n", "{err}");
    assert_eq!(last, Frame::exit(1, 0));

    agent.open(2, &exec(&["/bin/sh", "-c", "echo $0"], true));
    agent.started(2);
    let (out, _, last) = outputs(&agent.until_end(2));
    assert_eq!(out.trim(), "/bin/sh");
    assert_eq!(last, Frame::exit(2, 0));
    assert!(agent.close().success());
}

/// A little-endian ELF64 file without an interpreter (PT_INTERP) program header.
fn is_static_elf64(elf: &[u8]) -> bool {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        elf.get(at..at + 4).is_some_and(|t| t != 3u32.to_le_bytes())
    })
}

#[test]
fn probes_answer_healthy_or_why_not_without_holding_up_other_sessions() {
    use std::io::Read;
    let mut agent = Agent::start();
    let probe = |port, http_path: Option<&str>, timeout_ms| {
        Request::Probe(zos_guest_agent::Probe {
            port,
            http_path: http_path.map(str::to_string),
            timeout_ms,
        })
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    agent.open(1, &probe(open, None, 2000));
    // Acknowledged at once, then the verdict.
    assert_eq!(
        agent.until_end(1),
        vec![
            Frame::new(1, Kind::Reply, b"{}".to_vec()),
            Frame::exit(1, 0)
        ]
    );

    // An HTTP server that answers 500: unhealthy, with the status line as the reason.
    drop(listener);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 512];
        let _ = conn.read(&mut buf);
        conn.write_all(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
            .unwrap();
    });
    agent.open(2, &probe(open, Some("/healthz"), 2000));
    let (out, _, last) = outputs(&agent.until_end(2));
    assert_eq!(last, Frame::exit(2, 1));
    assert!(out.contains("status 500"), "{out}");
    server.join().unwrap();

    // A port that does not answer HTTP within the timeout: a command started after the probe
    // ends first.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    agent.open(3, &probe(port, Some("/"), 3000));
    agent.open(4, &exec(&["echo", "meanwhile"], false));
    let mut ended = Vec::new();
    while ended.len() < 2 {
        let frame = agent.recv();
        if matches!(frame.kind, Kind::Exit | Kind::Error) {
            ended.push((frame.session, frame.int()));
        }
    }
    assert_eq!(ended, vec![(4, Some(0)), (3, Some(1))]);
    drop(silent);

    // Bad requests are refused with a reason.
    agent.open(5, &probe(0, None, 1000));
    assert_eq!(agent.until_end(5).last().unwrap().kind, Kind::Error);
    assert!(agent.close().success());
}
