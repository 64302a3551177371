//! The agent inside a Zero-OS guest: serves the host's sessions (commands with or without a
//! terminal, background processes, the process list and signals) over a virtio-serial port,
//! speaking the frame protocol of `zos_guest_agent`.
//!
//! `zos-guest-agent [--root DIR] [--connect UNIX_SOCKET_PATH]`: commands run chrooted into
//! DIR (default `/`); `--connect` serves one unix-socket connection instead of the port (tests).

/// Writes one line to the guest console (stderr) in a single write: other programs write there
/// too.
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!("zos-agent: {}\n", format_args!($($arg)*));
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }};
}

mod agent;

use std::{
    ffi::OsString,
    fs::{File, OpenOptions},
    io::{self, Read},
    os::unix::{fs::OpenOptionsExt, net::UnixStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use agent::{Agent, Env};
use zos_guest_agent::{Frame, PORT_NAME};

/// The tenant's environment: one file per variable.
const ENV_DIR: &str = "/zos/config/env";
const PORTS_DIR: &str = "/sys/class/virtio-ports";
/// How long the port may take to appear (its driver may load after the agent starts).
const PORT_WAIT: Duration = Duration::from_secs(10);
const PORT_POLL: Duration = Duration::from_millis(100);
/// Pause after the host side went away before reading again (reads return 0 until it is back).
const RECONNECT_PAUSE: Duration = Duration::from_millis(200);

const USAGE: &str = "usage: zos-guest-agent [--root DIR] [--connect UNIX_SOCKET_PATH]";

#[derive(Debug, PartialEq)]
struct Args {
    root: PathBuf,
    connect: Option<PathBuf>,
}

fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    let mut parsed = Args {
        root: PathBuf::from("/"),
        connect: None,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let slot = match arg.to_str() {
            Some("--root") => &mut parsed.root,
            Some("--connect") => parsed.connect.insert(PathBuf::new()),
            Some("-h" | "--help") => return Err(USAGE.into()),
            _ => return Err(format!("unknown argument {arg:?}\n{USAGE}")),
        };
        let value = args
            .next()
            .ok_or_else(|| format!("{} needs a value\n{USAGE}", arg.to_string_lossy()))?;
        *slot = PathBuf::from(value);
    }
    Ok(parsed)
}

fn main() {
    let args = match parse_args(std::env::args_os().skip(1)) {
        Ok(args) => args,
        Err(why) => {
            log!("{why}");
            std::process::exit(2);
        }
    };
    if !args.root.is_dir() {
        // Keep serving: each command then fails with a sentence the deployer sees.
        log!(
            "root {} is not a directory: commands will fail",
            args.root.display()
        );
    }
    let env = Env::load(Path::new(ENV_DIR));
    match args.connect {
        Some(path) => serve_socket(&path, args.root, env),
        None => serve_port(args.root, env),
    }
}

/// Serves one connection to a unix socket; returns (exit 0) when it ends.
fn serve_socket(path: &Path, root: PathBuf, env: Env) {
    let (reader, writer) = match UnixStream::connect(path).and_then(|s| Ok((s.try_clone()?, s))) {
        Ok(pair) => pair,
        Err(e) => {
            log!("connecting to {}: {e}", path.display());
            std::process::exit(1);
        }
    };
    let agent = Agent::new(root, env, Box::new(writer));
    let mut reader = reader;
    let end = serve_until_break(&agent, &mut reader);
    let ended = agent.reset();
    log!("{end}: {ended} sessions ended");
}

/// Serves the virtio port forever, across the host's disconnections.
fn serve_port(root: PathBuf, env: Env) {
    let Some(device) = wait_for_port() else {
        log!("no agent port: exiting");
        return;
    };
    let open = || -> io::Result<(File, File)> {
        let port = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&device)?;
        Ok((port.try_clone()?, port))
    };
    let (mut reader, writer) = match open() {
        Ok(pair) => pair,
        Err(e) => {
            log!("opening {}: {e}: exiting", device.display());
            return;
        }
    };
    log!("serving on {}", device.display());
    let agent = Agent::new(root, env, Box::new(writer));
    loop {
        let end = serve_until_break(&agent, &mut reader);
        // The host (node executor) restarted or spoke garbage: its sessions are gone with it.
        let ended = agent.reset();
        // Reads return 0 every pause while the host is away: log only what matters.
        if ended > 0 || matches!(end, End::Broken(_)) {
            log!("{end}: {ended} sessions ended");
        }
        std::thread::sleep(RECONNECT_PAUSE);
    }
}

/// Why serving a stream stopped.
enum End {
    /// The host is not connected (or closed the socket).
    Closed,
    /// A read failed or the stream is not this protocol.
    Broken(io::Error),
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Closed => write!(f, "the host disconnected"),
            End::Broken(e) => write!(f, "host link broken: {e}"),
        }
    }
}

/// Handles frames until the stream ends or breaks.
fn serve_until_break(agent: &Agent, reader: &mut impl Read) -> End {
    loop {
        match Frame::read_from(reader) {
            Ok(Some(frame)) => agent.handle(frame),
            Ok(None) => return End::Closed,
            Err(e) => return End::Broken(e),
        }
    }
}

/// `/dev/<port>` of the virtio port named [`PORT_NAME`], waiting for it to appear.
fn wait_for_port() -> Option<PathBuf> {
    let deadline = Instant::now() + PORT_WAIT;
    loop {
        if let Some(device) = find_port(Path::new(PORTS_DIR)) {
            return Some(device);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(PORT_POLL);
    }
}

fn find_port(ports: &Path) -> Option<PathBuf> {
    std::fs::read_dir(ports).ok()?.flatten().find_map(|entry| {
        let name = std::fs::read_to_string(entry.path().join("name")).ok()?;
        (name.trim() == PORT_NAME).then(|| Path::new("/dev").join(entry.file_name()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Result<Args, String> {
        parse_args(words.iter().map(OsString::from))
    }

    #[test]
    fn command_lines_are_parsed() {
        assert_eq!(
            args(&[]).unwrap(),
            Args {
                root: "/".into(),
                connect: None
            }
        );
        assert_eq!(
            args(&["--root", "/newroot", "--connect", "/tmp/s"]).unwrap(),
            Args {
                root: "/newroot".into(),
                connect: Some("/tmp/s".into())
            }
        );
        assert!(args(&["--root"]).is_err());
        assert!(args(&["--bogus"]).is_err());
    }

    #[test]
    fn the_port_is_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (port, name) in [
            ("vport1p1", "org.qemu.guest_agent.0"),
            ("vport1p2", PORT_NAME),
        ] {
            std::fs::create_dir(dir.path().join(port)).unwrap();
            std::fs::write(dir.path().join(port).join("name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(find_port(dir.path()), Some(PathBuf::from("/dev/vport1p2")));
        assert_eq!(find_port(&dir.path().join("missing")), None);
    }
}
