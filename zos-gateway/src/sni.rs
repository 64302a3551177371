//! Reading a TLS ClientHello before deciding what to do with the connection: its server name
//! picks the route, and its bytes are kept so a passthrough route can replay them.

use std::io;

use rustls::server::{Accepted, Acceptor};
use tokio::{io::AsyncReadExt, net::TcpStream};

/// A ClientHello is at most a few records; more before it completes is refused.
const MAX_HELLO_BYTES: usize = 32 * 1024;

/// A connection's ClientHello.
pub(crate) struct Hello {
    pub accepted: Accepted,
    /// Every byte read from the client so far, for a passthrough backend.
    pub bytes: Vec<u8>,
    /// The requested host, lowercased; `None` when the client sent no SNI.
    pub server_name: Option<String>,
}

/// Reads from `stream` until a complete ClientHello has arrived.
pub(crate) async fn read_client_hello(stream: &mut TcpStream) -> io::Result<Hello> {
    let mut acceptor = Acceptor::default();
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.len() > MAX_HELLO_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ClientHello too large",
            ));
        }
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            if acceptor.read_tls(&mut fresh)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS buffer full",
                ));
            }
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let server_name = accepted
                    .client_hello()
                    .server_name()
                    .map(str::to_ascii_lowercase);
                return Ok(Hello {
                    accepted,
                    bytes,
                    server_name,
                });
            }
            Ok(None) => continue,
            Err((e, _alert)) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}
