//! Connections to a route's backends, from the namespace of the tenant's network when the
//! route has one: the socket is created there (on a short thread) and connected from here, so
//! no process runs per route.

use std::{io, net::SocketAddr, path::Path, time::Duration};

use tokio::net::{TcpSocket, TcpStream};

use crate::routes::RouteState;

/// How long one backend may take to accept a connection.
pub(crate) const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to the route's backends in turn until one accepts.
pub(crate) async fn dial(route: &RouteState) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the route has no backends");
    for backend in route.backends_in_turn() {
        match tokio::time::timeout(
            DIAL_TIMEOUT,
            connect(route.route.network.as_deref(), backend),
        )
        .await
        {
            Ok(Ok(stream)) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Ok(Err(e)) => {
                tracing::debug!(%backend, "backend refused: {e}");
                last = e;
            }
            Err(_) => {
                tracing::debug!(%backend, "backend did not answer in time");
                last = io::Error::new(io::ErrorKind::TimedOut, format!("{backend} timed out"));
            }
        }
    }
    Err(last)
}

async fn connect(network: Option<&Path>, backend: SocketAddr) -> io::Result<TcpStream> {
    let socket = match network {
        None => new_socket(backend)?,
        Some(ns) => {
            let ns = ns.to_path_buf();
            tokio::task::spawn_blocking(move || {
                zos_net::netns::run_in(&ns, move || Ok(new_socket(backend)?))
            })
            .await
            .map_err(io::Error::other)?
            .map_err(|e| io::Error::other(format!("{e:#}")))?
        }
    };
    socket.connect(backend).await
}

fn new_socket(backend: SocketAddr) -> io::Result<TcpSocket> {
    if backend.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
}
