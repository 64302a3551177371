//! Health probes of the guest's own ports (TCP accept, HTTP status), each on a thread of its
//! own so a slow service never holds up the frames of other sessions.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use zos_guest_agent::Probe;

/// Probes running at once; more are refused (a check runs one at a time per VM).
pub const MAX_PROBES: usize = 8;
/// Bytes of an HTTP answer read to find its status line.
const STATUS_LINE_MAX: usize = 1024;

pub static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// Runs one probe: `Ok(())` when healthy, else why not.
pub fn run(probe: &Probe) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_millis(u64::from(probe.timeout_ms));
    let mut stream = connect(probe.port, deadline)?;
    let Some(path) = &probe.http_path else {
        return Ok(());
    };
    let left = |what: &str| {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer to {what} within {} ms", probe.timeout_ms))
    };
    stream
        .set_write_timeout(Some(left("the request")?))
        .map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: localhost:{}\r\nUser-Agent: zos-health\r\nConnection: close\r\n\r\n",
        probe.port
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending GET {path}: {e}"))?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 256];
    while !answer.contains(&b'\n') && answer.len() < STATUS_LINE_MAX {
        stream
            .set_read_timeout(Some(left(&format!("GET {path}"))?))
            .map_err(|e| e.to_string())?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // A read timeout shows as EAGAIN on Linux.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!(
                    "no answer to GET {path} within {} ms",
                    probe.timeout_ms
                ))
            }
            Err(e) => return Err(format!("reading the answer to GET {path}: {e}")),
        }
    }
    let line = answer.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line).trim().to_string();
    match status_of(&line) {
        Some(code) if (200..400).contains(&code) => Ok(()),
        // Only the status: the rest is the service's own text, and the reason is public.
        Some(code) => Err(format!("GET {path} answered status {code}")),
        None if line.is_empty() => Err(format!(
            "GET {path}: the connection closed without an answer"
        )),
        None => Err(format!("GET {path}: not an HTTP answer")),
    }
}

/// The status code of an HTTP status line (`HTTP/1.1 200 OK`).
fn status_of(line: &str) -> Option<u16> {
    let mut words = line.split_ascii_whitespace();
    words.next().filter(|v| v.starts_with("HTTP/"))?;
    words
        .next()?
        .parse()
        .ok()
        .filter(|c| (100..600).contains(c))
}

/// Connects to the port on IPv4 loopback, then IPv6 loopback (a service may listen on
/// either).
fn connect(port: u16, deadline: Instant) -> Result<TcpStream, String> {
    let mut why = Vec::new();
    for ip in [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()] {
        let Some(left) = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
        else {
            why.push("timed out".to_string());
            break;
        };
        let addr = SocketAddr::new(ip, port);
        match TcpStream::connect_timeout(&addr, left) {
            Ok(stream) => return Ok(stream),
            Err(e) => why.push(format!("{addr}: {e}")),
        }
    }
    Err(format!(
        "nothing accepts connections on port {port} ({})",
        why.join("; ")
    ))
}

/// Takes a slot of the probes running at once; `None` when all are taken.
pub fn slot() -> Option<Slot> {
    let taken = RUNNING.fetch_add(1, Ordering::SeqCst);
    if taken >= MAX_PROBES {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
        return None;
    }
    Some(Slot)
}

/// A running probe's slot, given back on drop.
pub struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn probe(port: u16, http_path: Option<&str>) -> Probe {
        Probe {
            port,
            http_path: http_path.map(str::to_string),
            timeout_ms: 2000,
        }
    }

    /// Serves one connection with `answer` after reading the request.
    fn serve_once(answer: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(answer.as_bytes());
        });
        port
    }

    #[test]
    fn tcp_and_http_probes_tell_healthy_from_not() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().port();
        assert_eq!(run(&probe(open, None)), Ok(()));
        drop(listener);
        let closed = run(&probe(open, None)).unwrap_err();
        assert!(closed.contains("nothing accepts connections"), "{closed}");

        let ok = serve_once("HTTP/1.1 204 No Content\r\n\r\n");
        assert_eq!(run(&probe(ok, Some("/healthz"))), Ok(()));
        let redirect = serve_once("HTTP/1.0 302 Found\r\nLocation: /\r\n\r\n");
        assert_eq!(run(&probe(redirect, Some("/"))), Ok(()));
        let failing = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let why = run(&probe(failing, Some("/healthz"))).unwrap_err();
        assert!(why.contains("status 503"), "{why}");
        let garbage = serve_once("SSH-2.0-dropbear\r\n");
        let why = run(&probe(garbage, Some("/"))).unwrap_err();
        assert!(why.contains("not an HTTP answer"), "{why}");
    }

    #[test]
    fn a_silent_service_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut p = probe(port, Some("/"));
        p.timeout_ms = 300;
        let started = Instant::now();
        let why = run(&p).unwrap_err();
        assert!(
            why.contains("within 300 ms") || why.contains("timed out"),
            "{why}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(listener);
    }
}
