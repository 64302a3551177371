//! `zos exec`, `zos shell`, `zos ps`, `zos kill`: sessions with the agent inside a VM, through
//! its node's access endpoint. The request (command, terminal, target) is in the signed URL;
//! the connection is then upgraded to the agent's frame protocol.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
};

use zos_client::access;
use zos_guest_agent::{Exec, Frame, Kind, ProcessList, Request, Started, UPGRADE_TOKEN};

use super::{logs::node_base_url, *};

/// What a session command asks for.
pub(crate) struct SessionRequest<'a> {
    pub contract: ContractId,
    pub workload: Option<&'a str>,
    pub node_url: Option<&'a str>,
    pub request: Request,
}

/// Exit code when the session could not run the command (as ssh's 255).
const SESSION_FAILED: i32 = 255;

pub(super) async fn session(ctx: &Ctx, req: SessionRequest<'_>) -> Result<i32> {
    let key = ctx.key.as_deref().ok_or_else(|| {
        anyhow!("the node opens sessions for the contract's signers only: give --key (e.g. --key //Alice)")
    })?;
    let key = parse_key(key)?;
    if let Some(w) = req.workload {
        if !access::is_workload_name(w) {
            bail!("--workload {w:?}: workload names are 1-36 characters of a-z, 0-9, '_' and '-'");
        }
    }
    req.request
        .check()
        .map_err(|why| anyhow!("the request is refused before sending: {why}"))?;
    let base = node_base_url(ctx, req.contract, req.node_url).await?;
    let hostport = base
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("sessions need the node's http:// access endpoint, not {base}"))?
        .to_string();
    let mut path = format!(
        "/v1/contracts/{}/agent?request={}",
        req.contract,
        hex::encode(serde_json::to_vec(&req.request)?)
    );
    if let Some(w) = req.workload {
        path.push_str(&format!("&workload={w}"));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let authorization = access::authorization(&key, "GET", &path, now);
    let request = req.request;
    // Blocking sockets on their own threads: the terminal is copied both ways as it comes.
    tokio::task::spawn_blocking(move || run(&hostport, &path, &authorization, request)).await?
}

fn run(hostport: &str, path: &str, authorization: &str, request: Request) -> Result<i32> {
    let stream = TcpStream::connect(hostport)
        .with_context(|| format!("reaching the node at http://{hostport}"))?;
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    write!(
        writer,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nAuthorization: {authorization}\r\nConnection: Upgrade\r\nUpgrade: {UPGRADE_TOKEN}\r\n\r\n"
    )?;
    writer.flush()?;
    let mut reader = BufReader::new(stream);
    let (status, length) = read_head(&mut reader)?;
    if status != 101 {
        let mut body = Vec::new();
        let limit = length.unwrap_or(64 * 1024).min(64 * 1024) as u64;
        let _ = reader.by_ref().take(limit).read_to_end(&mut body);
        bail!(
            "the node refused ({status}): {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let tty = matches!(&request, Request::Exec(e) if e.tty);
    let interactive = matches!(&request, Request::Exec(e) if !e.detach);
    let _raw = if tty { RawTerminal::enter() } else { None };
    if interactive {
        // Standard input goes to the process until it ends (Ctrl-D reaches a terminal as a
        // byte in raw mode).
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 16 * 1024];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = Frame::new(0, Kind::StdinEof, vec![]).write_to(&mut writer);
                        return;
                    }
                    Ok(n) => {
                        if Frame::new(0, Kind::Stdin, buf[..n].to_vec())
                            .write_to(&mut writer)
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
    }
    let mut stdout = std::io::stdout().lock();
    loop {
        let Some(frame) = Frame::read_from(&mut reader).context("reading the session")? else {
            bail!("the node closed the session before the command ended");
        };
        match frame.kind {
            Kind::Stdout => {
                stdout.write_all(&frame.payload)?;
                stdout.flush()?;
            }
            Kind::Stderr => {
                let mut stderr = std::io::stderr().lock();
                stderr.write_all(&frame.payload)?;
                stderr.flush()?;
            }
            Kind::Reply => show_reply(&request, &frame.payload, &mut stdout)?,
            Kind::Exit => return Ok(frame.int().unwrap_or(SESSION_FAILED)),
            Kind::Error => {
                drop(_raw);
                eprintln!("zos: {}", String::from_utf8_lossy(&frame.payload));
                return Ok(SESSION_FAILED);
            }
            _ => {}
        }
    }
}

/// The status line's code and the Content-Length of an HTTP response head.
fn read_head(reader: &mut impl BufRead) -> Result<(u16, Option<usize>)> {
    let mut status = None;
    let mut length = None;
    let mut total = 0;
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .context("reading the node's answer")?;
        total += n;
        if n == 0 || total > 16 * 1024 {
            bail!("the node's answer is not HTTP");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        match status {
            None => {
                status = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse::<u16>().ok());
                if status.is_none() {
                    bail!("the node's answer is not HTTP: {line:?}");
                }
            }
            Some(_) => {
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        length = value.trim().parse().ok();
                    }
                }
            }
        }
    }
    Ok((status.unwrap_or_default(), length))
}

fn show_reply(request: &Request, payload: &[u8], out: &mut impl Write) -> Result<()> {
    match request {
        Request::Ps => {
            let list: ProcessList =
                serde_json::from_slice(payload).context("the agent's process list")?;
            writeln!(
                out,
                "{:>7} {:>7} {:>5} {:1} {:>8}  COMMAND",
                "PID", "PPID", "UID", "S", "RSS(KiB)"
            )?;
            for p in list.processes {
                writeln!(
                    out,
                    "{:>7} {:>7} {:>5} {:1} {:>8}  {}",
                    p.pid, p.ppid, p.uid, p.state, p.rss_kib, p.command
                )?;
            }
        }
        Request::Exec(Exec { detach: true, .. }) => {
            let started: Started = serde_json::from_slice(payload).context("the agent's answer")?;
            writeln!(out, "started pid {}", started.pid)?;
        }
        // A foreground command's acknowledgement: nothing to show.
        _ => {}
    }
    out.flush()?;
    Ok(())
}

/// The terminal's size (rows, columns), when standard input is a terminal.
pub(crate) fn terminal_size() -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we own.
    unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        (libc::ioctl(0, libc::TIOCGWINSZ, &mut ws) == 0 && ws.ws_row > 0)
            .then_some((ws.ws_row, ws.ws_col))
    }
}

/// The local terminal in raw mode for a remote shell, restored when dropped.
struct RawTerminal(libc::termios);

impl RawTerminal {
    /// `None` when standard input is not a terminal (a pipe: nothing to switch).
    fn enter() -> Option<Self> {
        // SAFETY: termios calls on fd 0 with structs we own.
        unsafe {
            if libc::isatty(0) != 1 {
                return None;
            }
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return None;
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            (libc::tcsetattr(0, libc::TCSANOW, &raw) == 0).then_some(Self(saved))
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in `enter`.
        unsafe {
            libc::tcsetattr(0, libc::TCSANOW, &self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_heads_are_read() {
        let mut ok =
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: zos-agent/1\r\n\r\nrest".as_bytes();
        assert_eq!(read_head(&mut ok).unwrap(), (101, None));
        assert_eq!(ok, b"rest");
        let mut refused = "HTTP/1.1 403 Forbidden\r\ncontent-length: 5\r\n\r\nnope\n".as_bytes();
        assert_eq!(read_head(&mut refused).unwrap(), (403, Some(5)));
        assert!(read_head(&mut "SSH-2.0-x\r\n\r\n".as_bytes()).is_err());
        assert!(read_head(&mut "".as_bytes()).is_err());
    }
}
