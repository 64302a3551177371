//! The guest agent's wire protocol, shared by the agent in the guest, the executor that relays
//! deployers' sessions to it and the `zos` CLI.
//!
//! One byte stream (a virtio-serial port between the guest and its node; an upgraded HTTP
//! connection between the CLI and the node) carries frames:
//! `session: u32 BE | kind: u8 | length: u32 BE | payload`, the payload at most
//! [`MAX_PAYLOAD`] bytes. A session starts with an [`Kind::Open`] frame carrying a JSON
//! [`Request`] and ends with an [`Kind::Exit`] or [`Kind::Error`] frame from the agent; the
//! CLI's connection carries one session (its id is ignored and the node assigns its own).

use std::io::{self, Read, Write};

/// Largest payload of one frame: output is cut into frames of at most this size.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// Output is sent in frames of at most this size: a virtio port takes a write of this size
/// whole, so a host that reconnects while output flows never starts in the middle of a frame.
pub const MAX_OUTPUT_CHUNK: usize = 16 * 1024;
/// Longest command line (all words together) a request may carry.
pub const MAX_ARGV_BYTES: usize = 16 * 1024;
/// Most words in a command line.
pub const MAX_ARGV_WORDS: usize = 256;
/// The virtio-serial port's name: the agent finds its device by it.
pub const PORT_NAME: &str = "org.zos.agent";
/// The HTTP `Upgrade` token of a session with the node.
pub const UPGRADE_TOKEN: &str = "zos-agent/1";

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Host to guest: starts a session; payload: a JSON [`Request`].
    Open = 1,
    /// Host to guest: bytes for the process's standard input (its terminal with a tty).
    Stdin = 2,
    /// Host to guest: the standard input ended.
    StdinEof = 3,
    /// Host to guest: the terminal's size: rows then columns, u16 BE each.
    Resize = 4,
    /// Host to guest: a signal for the session's process: i32 BE.
    Signal = 5,
    /// Guest to host: standard output (or the terminal's output).
    Stdout = 16,
    /// Guest to host: standard error (without a tty).
    Stderr = 17,
    /// Guest to host: the session ended; i32 BE: the exit code, or 128 + the signal that
    /// ended the process.
    Exit = 18,
    /// Guest to host (or node to CLI): the session failed; payload: a sentence.
    Error = 19,
    /// Guest to host: the answer to a request that has one (JSON: [`ProcessList`],
    /// [`Started`]).
    Reply = 20,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::Open,
            2 => Self::Stdin,
            3 => Self::StdinEof,
            4 => Self::Resize,
            5 => Self::Signal,
            16 => Self::Stdout,
            17 => Self::Stderr,
            18 => Self::Exit,
            19 => Self::Error,
            20 => Self::Reply,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub session: u32,
    pub kind: Kind,
    pub payload: Vec<u8>,
}

/// Bytes of a frame's header.
pub const HEADER_LEN: usize = 9;

impl Frame {
    pub fn new(session: u32, kind: Kind, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            session,
            kind,
            payload: payload.into(),
        }
    }

    /// The frame on the wire. Payloads over [`MAX_PAYLOAD`] are the caller's bug: cut first.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + self.payload.len());
        out.extend_from_slice(&self.session.to_be_bytes());
        out.push(self.kind as u8);
        out.extend_from_slice(&(self.payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    /// Parses a header: (session, kind, payload length); refuses an unknown kind or an
    /// oversized payload (the stream is then unusable: the peer is not speaking this protocol).
    pub fn parse_header(h: &[u8; HEADER_LEN]) -> Result<(u32, Kind, usize), ProtocolError> {
        let session = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
        let kind = Kind::from_u8(h[4]).ok_or(ProtocolError::UnknownKind(h[4]))?;
        let len = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(ProtocolError::TooLarge(len));
        }
        Ok((session, kind, len))
    }

    /// Reads one frame; `Ok(None)` at a clean end of the stream (between frames).
    pub fn read_from(r: &mut impl Read) -> io::Result<Option<Self>> {
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            match r.read(&mut header[got..]) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let (session, kind, len) = Self::parse_header(&header)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload)?;
        Ok(Some(Self {
            session,
            kind,
            payload,
        }))
    }

    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(&self.encode())?;
        w.flush()
    }

    /// The i32 of an [`Kind::Exit`] or [`Kind::Signal`] frame.
    pub fn int(&self) -> Option<i32> {
        <[u8; 4]>::try_from(self.payload.as_slice())
            .ok()
            .map(i32::from_be_bytes)
    }

    /// The (rows, columns) of a [`Kind::Resize`] frame.
    pub fn size(&self) -> Option<(u16, u16)> {
        match self.payload.as_slice() {
            [a, b, c, d] => Some((u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d]))),
            _ => None,
        }
    }

    pub fn exit(session: u32, code: i32) -> Self {
        Self::new(session, Kind::Exit, code.to_be_bytes())
    }

    pub fn signal(session: u32, signal: i32) -> Self {
        Self::new(session, Kind::Signal, signal.to_be_bytes())
    }

    pub fn resize(session: u32, rows: u16, cols: u16) -> Self {
        let mut p = rows.to_be_bytes().to_vec();
        p.extend_from_slice(&cols.to_be_bytes());
        Self::new(session, Kind::Resize, p)
    }

    pub fn error(session: u32, why: impl std::fmt::Display) -> Self {
        Self::new(session, Kind::Error, why.to_string().into_bytes())
    }
}

/// A stream that is not this protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("a frame of {0} bytes (at most {MAX_PAYLOAD})")]
    TooLarge(usize),
}

/// What a session asks of the agent.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Runs a command in the workload's root filesystem with the VM's environment.
    Exec(Exec),
    /// Lists the guest's processes.
    Ps,
    /// Sends a signal to a process of the guest.
    Kill { pid: i32, signal: i32 },
    /// Probes a port on the guest's loopback for a health check. The session ends with exit
    /// status 0 when healthy; otherwise a [`Kind::Stdout`] frame says why and the status is 1.
    Probe(Probe),
}

/// Longest HTTP path a probe may ask for.
pub const MAX_PROBE_PATH: usize = 128;
/// Longest time a probe may take.
pub const MAX_PROBE_TIMEOUT_MS: u32 = 60_000;

/// A TCP or HTTP health probe run inside the guest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub port: u16,
    /// `GET` this path and want a 2xx or 3xx status; without, a TCP connection is enough.
    #[serde(default)]
    pub http_path: Option<String>,
    pub timeout_ms: u32,
}

/// A command to run.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exec {
    /// The command and its arguments; the command is looked up in the workload's `PATH`.
    pub argv: Vec<String>,
    /// Runs on a new terminal (a shell); without, stdout and stderr are kept apart.
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub rows: u16,
    #[serde(default)]
    pub cols: u16,
    /// Starts the process in the background (output to the guest console) and ends the
    /// session with its pid in a [`Started`] reply.
    #[serde(default)]
    pub detach: bool,
    /// Not logged on the guest's console (health probes run every few seconds). Left out of
    /// the JSON when false, so agents of before it take the request.
    #[serde(default, skip_serializing_if = "is_false")]
    pub quiet: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Request {
    /// Checks the bounds a node and an agent enforce before acting.
    pub fn check(&self) -> Result<(), String> {
        match self {
            Request::Exec(e) => {
                if e.argv.is_empty() || e.argv[0].is_empty() {
                    return Err("no command given".into());
                }
                if e.argv.len() > MAX_ARGV_WORDS {
                    return Err(format!("more than {MAX_ARGV_WORDS} words"));
                }
                let bytes: usize = e.argv.iter().map(String::len).sum();
                if bytes > MAX_ARGV_BYTES {
                    return Err(format!("a command line over {MAX_ARGV_BYTES} bytes"));
                }
                if e.argv.iter().any(|w| w.contains('\0')) {
                    return Err("a command word contains NUL".into());
                }
                if e.tty && e.detach {
                    return Err("a detached process has no terminal".into());
                }
                Ok(())
            }
            Request::Ps => Ok(()),
            Request::Probe(p) => {
                if p.port == 0 {
                    return Err("probe port 0".into());
                }
                if !(1..=MAX_PROBE_TIMEOUT_MS).contains(&p.timeout_ms) {
                    return Err(format!(
                        "a probe timeout of {} ms (1 to {MAX_PROBE_TIMEOUT_MS})",
                        p.timeout_ms
                    ));
                }
                if let Some(path) = &p.http_path {
                    if !path.starts_with('/')
                        || path.len() > MAX_PROBE_PATH
                        || !path.bytes().all(|b| b.is_ascii_graphic())
                    {
                        return Err(format!(
                            "an HTTP probe path must be printable ASCII starting with '/', at most {MAX_PROBE_PATH} bytes"
                        ));
                    }
                }
                Ok(())
            }
            Request::Kill { pid, signal } => {
                if *pid <= 1 {
                    return Err(
                        "pid 1 (the guest's init) and pids below cannot be signalled".into(),
                    );
                }
                if !(1..=64).contains(signal) {
                    return Err(format!("signal {signal} is not 1-64"));
                }
                Ok(())
            }
        }
    }
}

/// The reply to [`Request::Ps`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessList {
    pub processes: Vec<Process>,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Process {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    /// `R`, `S`, `D`, `Z`, ... as /proc shows it.
    pub state: String,
    /// Resident memory in KiB.
    pub rss_kib: u64,
    /// The command line (the process name in brackets for kernel threads).
    pub command: String,
}

/// The reply to a detached [`Exec`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Started {
    pub pid: i32,
}

/// Signal numbers by name (`TERM`, `SIGKILL`, `9`).
pub fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = name.trim_start_matches("SIG").to_ascii_uppercase();
    Some(match name.as_str() {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "TERM" => 15,
        "CONT" => 18,
        "STOP" => 19,
        "TSTP" => 20,
        "WINCH" => 28,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_bad_streams_are_refused() {
        let frames = [
            Frame::new(7, Kind::Stdout, b"hello".to_vec()),
            Frame::exit(7, 130),
            Frame::resize(1, 40, 120),
            Frame::new(u32::MAX, Kind::Stdin, vec![]),
        ];
        let mut wire = Vec::new();
        for f in &frames {
            f.write_to(&mut wire).unwrap();
        }
        let mut r = wire.as_slice();
        for f in &frames {
            assert_eq!(Frame::read_from(&mut r).unwrap().as_ref(), Some(f));
        }
        assert_eq!(Frame::read_from(&mut r).unwrap(), None);
        assert_eq!(frames[1].int(), Some(130));
        assert_eq!(frames[2].size(), Some((40, 120)));

        let mut huge = Frame::new(1, Kind::Stdout, vec![]).encode();
        huge[5..9].copy_from_slice(&((MAX_PAYLOAD as u32) + 1).to_be_bytes());
        assert!(Frame::read_from(&mut huge.as_slice()).is_err());
        let mut unknown = Frame::new(1, Kind::Stdout, vec![]).encode();
        unknown[4] = 99;
        assert!(Frame::read_from(&mut unknown.as_slice()).is_err());
        let cut = &Frame::new(1, Kind::Stdout, b"abc".to_vec()).encode()[..10];
        assert!(Frame::read_from(&mut &cut[..]).is_err());
    }

    #[test]
    fn requests_are_bounded() {
        let exec = |argv: Vec<&str>, tty, detach| {
            Request::Exec(Exec {
                argv: argv.into_iter().map(String::from).collect(),
                tty,
                rows: 0,
                cols: 0,
                detach,
                quiet: false,
            })
        };
        assert!(exec(vec!["ls", "-l"], false, false).check().is_ok());
        assert!(exec(vec![], false, false).check().is_err());
        assert!(exec(vec!["a\0b"], false, false).check().is_err());
        assert!(exec(vec!["sh"], true, true).check().is_err());
        let long = "x".repeat(MAX_ARGV_BYTES + 1);
        assert!(exec(vec![long.as_str()], false, false).check().is_err());
        assert!(Request::Kill { pid: 1, signal: 9 }.check().is_err());
        assert!(Request::Kill { pid: 5, signal: 0 }.check().is_err());
        assert!(Request::Kill { pid: 5, signal: 15 }.check().is_ok());
        let probe = |port, http_path: Option<&str>, timeout_ms| {
            Request::Probe(Probe {
                port,
                http_path: http_path.map(str::to_string),
                timeout_ms,
            })
            .check()
        };
        assert!(probe(80, Some("/healthz"), 2000).is_ok());
        assert!(probe(22, None, 1).is_ok());
        assert!(probe(0, None, 1000).is_err());
        assert!(probe(80, None, 0).is_err());
        assert!(probe(80, None, MAX_PROBE_TIMEOUT_MS + 1).is_err());
        assert!(probe(80, Some("healthz"), 1000).is_err());
        assert!(probe(80, Some("/a b"), 1000).is_err());
        assert!(probe(80, Some(&format!("/{}", "a".repeat(MAX_PROBE_PATH))), 1000).is_err());
        let json = serde_json::to_string(&exec(vec!["ls"], true, false)).unwrap();
        assert_eq!(
            serde_json::from_str::<Request>(&json).unwrap(),
            exec(vec!["ls"], true, false)
        );
        assert_eq!(serde_json::to_string(&Request::Ps).unwrap(), "\"ps\"");
        assert_eq!(signal_number("SIGTERM"), Some(15));
        assert_eq!(signal_number("kill"), Some(9));
        assert_eq!(signal_number("65"), None);
    }
}
