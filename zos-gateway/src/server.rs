//! The gateway's listeners: HTTPS (a route chosen by SNI, then TLS terminated or passed
//! through) and plain HTTP (ACME HTTP-01 answers, else a redirect to HTTPS).

use std::{io, net::SocketAddr, sync::Arc, time::Duration};

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use rustls::ServerConfig;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tokio_rustls::StartHandshake;

use crate::{
    acme::Http01Challenges,
    certs::CertStore,
    dial::dial,
    guard::{guarded, Activity, ClientLimiter, ClientSlot},
    meter::Metered,
    proxy::{self, text_response, Connection, ProxyBody},
    routes::{normalize_host, Routes, TlsMode},
    sni::read_client_hello,
};

/// Limits that protect the gateway itself.
#[derive(Clone, Debug)]
pub struct GatewayLimits {
    /// Client connections at once over all routes (each route also has its own limit).
    pub max_connections: usize,
    /// Time a client has to complete its ClientHello and TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client has to send a request's headers.
    pub header_timeout: Duration,
    /// Connections at once from one client address (an IPv6 client: its /64), over both
    /// listeners, so one client cannot take the gateway's or a route's whole limit.
    pub max_connections_per_client: usize,
    /// A connection that moves no byte either way for this long is closed: before its first
    /// request, between requests, and passthrough and upgraded (WebSocket) streams.
    pub idle_timeout: Duration,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        Self {
            max_connections: 16_384,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            max_connections_per_client: 256,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// A connection's places under the gateway's limits, given back when it ends.
struct Admission {
    _gateway: tokio::sync::OwnedSemaphorePermit,
    _client: ClientSlot,
}

/// A gateway: its routes, certificates and pending ACME challenges.
pub struct Gateway {
    routes: Arc<Routes>,
    challenges: Arc<Http01Challenges>,
    tls: Arc<ServerConfig>,
    limits: GatewayLimits,
    slots: Arc<Semaphore>,
    clients: Arc<ClientLimiter>,
    /// The HTTPS port clients use, for redirects (omitted from URLs when 443).
    public_https_port: u16,
}

impl Gateway {
    pub fn new(
        routes: Arc<Routes>,
        certs: Arc<CertStore>,
        challenges: Arc<Http01Challenges>,
        limits: GatewayLimits,
        public_https_port: u16,
    ) -> anyhow::Result<Arc<Self>> {
        let mut tls =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_cert_resolver(certs);
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(Self {
            routes,
            challenges,
            tls: Arc::new(tls),
            slots: Arc::new(Semaphore::new(limits.max_connections)),
            clients: ClientLimiter::new(limits.max_connections_per_client),
            limits,
            public_https_port,
        }))
    }

    /// A place for a new client under the gateway's and its address's limits; `None` drops it.
    fn admit(&self, client: SocketAddr) -> Option<Admission> {
        let Ok(gateway) = self.slots.clone().try_acquire_owned() else {
            tracing::debug!(%client, "refused: the gateway is at its connection limit");
            return None;
        };
        let Some(slot) = self.clients.try_acquire(client.ip()) else {
            tracing::info!(
                target: "zos_gateway::access",
                %client,
                "refused: the client's connection limit is reached"
            );
            return None;
        };
        Some(Admission {
            _gateway: gateway,
            _client: slot,
        })
    }

    /// Accepts HTTPS clients, forever.
    pub async fn serve_https(self: Arc<Self>, listener: TcpListener) -> io::Result<()> {
        loop {
            let Some((stream, client)) = accept(&listener).await else {
                continue;
            };
            let Some(slot) = self.admit(client) else {
                continue;
            };
            let gateway = self.clone();
            tokio::spawn(async move { gateway.tls_connection(stream, client, slot).await });
        }
    }

    /// One HTTPS client; `slot` is its place under the gateway's connection limits.
    async fn tls_connection(&self, mut stream: TcpStream, client: SocketAddr, slot: Admission) {
        let _ = stream.set_nodelay(true);
        let hello = match tokio::time::timeout(
            self.limits.handshake_timeout,
            read_client_hello(&mut stream),
        )
        .await
        {
            Ok(Ok(hello)) => hello,
            Ok(Err(e)) => return tracing::debug!(%client, "no ClientHello: {e}"),
            Err(_) => return tracing::debug!(%client, "ClientHello timed out"),
        };
        let Some(host) = hello.server_name.as_deref().map(normalize_host) else {
            return tracing::debug!(%client, "ClientHello without a server name");
        };
        let Some(route) = self.routes.lookup(&host) else {
            return tracing::info!(target: "zos_gateway::access", %client, %host, "no route");
        };
        let Ok(permit) = route.connections.clone().try_acquire_owned() else {
            route.traffic.refusal();
            return tracing::info!(
                target: "zos_gateway::access",
                %client,
                %host,
                "refused: the route's connection limit is reached"
            );
        };
        route.traffic.connection();
        route.traffic.add_received(hello.bytes.len() as u64);
        let activity = Activity::new();
        let client_side = Metered::new(stream, Some(route.traffic.clone()), activity.clone());
        match route.route.tls {
            TlsMode::Passthrough => {
                let mut backend = match dial(&route).await {
                    Ok(backend) => backend,
                    Err(e) => return tracing::warn!(%host, "passthrough backend unreachable: {e}"),
                };
                tracing::info!(target: "zos_gateway::access", %client, %host, "passthrough");
                if backend.write_all(&hello.bytes).await.is_err() {
                    return;
                }
                let mut client_side = client_side;
                let relay = tokio::io::copy_bidirectional(&mut client_side, &mut backend);
                if let Err(cut) =
                    guarded(relay, &activity, self.limits.idle_timeout, route.retired()).await
                {
                    tracing::info!(target: "zos_gateway::access", %client, %host, "closed: {cut:?}");
                }
                drop((slot, permit));
            }
            TlsMode::Terminate => {
                let handshake = StartHandshake::from_parts(hello.accepted, client_side)
                    .into_stream(self.tls.clone());
                let tls = match tokio::time::timeout(self.limits.handshake_timeout, handshake).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return tracing::debug!(%client, %host, "TLS handshake: {e}"),
                    Err(_) => return tracing::debug!(%client, %host, "TLS handshake timed out"),
                };
                // Held as long as anything of the connection lives, an upgraded stream relayed
                // after hyper let go of it included.
                let connection = Connection {
                    route: route.clone(),
                    client,
                    activity: activity.clone(),
                    idle_timeout: self.limits.idle_timeout,
                    backend_share: Arc::new(Semaphore::new(proxy::BACKENDS_PER_CLIENT_CONNECTION)),
                    _limits: Arc::new((slot, permit)),
                };
                let service = hyper::service::service_fn(move |request| {
                    proxy::handle(request, connection.clone())
                });
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(self.limits.header_timeout);
                // No HTTP/2 keep-alive pings: their answers would keep a silent client active
                // for ever; the idle timeout closes dead and silent connections alike.
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(64)
                    .keep_alive_interval(None);
                let served = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                match guarded(served, &activity, self.limits.idle_timeout, route.retired()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(%client, %host, "connection ended: {e}"),
                    Err(cut) => tracing::info!(
                        target: "zos_gateway::access", %client, %host, "closed: {cut:?}"
                    ),
                }
            }
        }
    }

    /// Accepts plain HTTP clients, forever.
    pub async fn serve_http(self: Arc<Self>, listener: TcpListener) -> io::Result<()> {
        loop {
            let Some((stream, client)) = accept(&listener).await else {
                continue;
            };
            let Some(slot) = self.admit(client) else {
                continue;
            };
            let gateway = self.clone();
            tokio::spawn(async move {
                let activity = Activity::new();
                let stream = Metered::new(stream, None, activity.clone());
                let service = hyper::service::service_fn(|request| {
                    let gateway = gateway.clone();
                    async move { Ok::<_, std::convert::Infallible>(gateway.plain_http(request)) }
                });
                let served = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                let never_retired = std::future::pending();
                let idle = gateway.limits.idle_timeout;
                match guarded(served, &activity, idle, never_retired).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(%client, "plain HTTP connection ended: {e}"),
                    Err(cut) => tracing::debug!(%client, "plain HTTP connection closed: {cut:?}"),
                }
                drop(slot);
            });
        }
    }

    fn plain_http(&self, request: Request<Incoming>) -> Response<ProxyBody> {
        if let Some(token) = request
            .uri()
            .path()
            .strip_prefix("/.well-known/acme-challenge/")
        {
            return match self.challenges.key_authorization(token) {
                // Exactly the key authorization, no trailing newline (RFC 8555 section 8.3).
                Some(answer) => Response::new(
                    http_body_util::Full::new(bytes::Bytes::from(answer))
                        .map_err(|never| match never {})
                        .boxed(),
                ),
                None => text_response(StatusCode::NOT_FOUND, "no such challenge"),
            };
        }
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(normalize_host);
        let Some(host) = host.filter(|h| self.routes.lookup(h).is_some()) else {
            return text_response(StatusCode::NOT_FOUND, "no route for this host");
        };
        let port = match self.public_https_port {
            443 => String::new(),
            port => format!(":{port}"),
        };
        let path = request
            .uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let location = format!("https://{host}{port}{path}");
        let mut response = text_response(StatusCode::PERMANENT_REDIRECT, location.clone());
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        response
    }
}

/// The next client; `None` after an accept error (out of descriptors, a connection reset
/// before it was taken), which is logged and waited out instead of stopping the listener.
async fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok(accepted) => Some(accepted),
        Err(e) => {
            tracing::warn!("accepting a client failed: {e}");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}
