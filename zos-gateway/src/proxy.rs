//! The HTTP reverse proxy behind a terminated TLS connection: HTTP/1.1 or HTTP/2 from the
//! client, HTTP/1.1 to the backend over pooled connections, WebSocket (any HTTP/1.1 upgrade)
//! relayed byte for byte.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::{body::Incoming, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    dial::dial,
    guard::{guarded, Activity},
    routes::{normalize_host, RouteState, MAX_IDLE_PER_ROUTE},
};

pub(crate) type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// How long a backend may take to send its response headers (and a request may wait for a
/// backend connection).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Backend connections one client connection uses at once: HTTP/2 streams beyond it wait, so
/// one client cannot take a route's every backend connection.
pub(crate) const BACKENDS_PER_CLIENT_CONNECTION: usize = 4;

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// What a request on a terminated connection knows of its connection.
#[derive(Clone)]
pub(crate) struct Connection {
    pub route: Arc<RouteState>,
    pub client: SocketAddr,
    /// When the client's side last moved a byte, and how long it may stay silent (an
    /// upgraded stream relayed after hyper let go of it is still this connection).
    pub activity: Arc<Activity>,
    pub idle_timeout: Duration,
    /// The connection's share of backend connections ([`BACKENDS_PER_CLIENT_CONNECTION`]).
    pub backend_share: Arc<Semaphore>,
    /// The connection's places under the gateway's and the route's limits, released when the
    /// last request (or relayed upgrade) of the connection is done.
    pub _limits: Arc<dyn Send + Sync>,
}

pub(crate) fn text_response(status: StatusCode, text: impl Into<String>) -> Response<ProxyBody> {
    let mut response = Response::new(
        Full::new(Bytes::from(text.into() + "\n"))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Serves one request of a terminated connection.
pub(crate) async fn handle(
    request: Request<Incoming>,
    connection: Connection,
) -> Result<Response<ProxyBody>, Infallible> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let route = connection.route.clone();
    let response = forward(request, &connection).await;
    tracing::info!(
        target: "zos_gateway::access",
        client = %connection.client,
        host = %route.route.host,
        contract = route.route.contract,
        %method,
        %path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
    );
    Ok(response)
}

async fn forward(mut request: Request<Incoming>, connection: &Connection) -> Response<ProxyBody> {
    let route = &connection.route;
    // The host asked for must be the one the TLS connection was opened for (no fronting of
    // another tenant's name through this connection).
    let asked = request
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)?
                .to_str()
                .ok()
                .map(str::to_string)
        });
    match asked.map(|h| normalize_host(&h)) {
        Some(host) if host == route.route.host => {}
        _ => return text_response(StatusCode::MISDIRECTED_REQUEST, "host does not match SNI"),
    }
    let upgrade = is_upgrade(request.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let outgoing = match prepare(request, connection, upgrade) {
        Ok(outgoing) => outgoing,
        Err(response) => return response,
    };
    match client_upgrade {
        Some(client_upgrade) => relay_upgrade(outgoing, client_upgrade, connection).await,
        None => send_pooled(outgoing, connection).await,
    }
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|s| {
                    s.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                })
                .unwrap_or(false)
        })
}

/// Removes hop-by-hop headers (and those the Connection header names).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(named.iter()) {
        headers.remove(name);
    }
}

/// The request as the backend gets it: origin-form URI, HTTP/1.1, the client's host, the
/// forwarding headers, no hop-by-hop headers (an upgrade keeps its Upgrade/Connection).
fn prepare(
    request: Request<Incoming>,
    connection: &Connection,
    upgrade: bool,
) -> Result<Request<ProxyBody>, Response<ProxyBody>> {
    let (mut parts, body) = request.into_parts();
    let upgrade_to = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    if let (true, Some(protocol)) = (upgrade, upgrade_to) {
        parts.headers.insert(header::UPGRADE, protocol);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    parts.uri = Uri::try_from(path)
        .map_err(|_| text_response(StatusCode::BAD_REQUEST, "invalid request target"))?;
    parts.version = http::Version::HTTP_11;
    let host = &connection.route.route.host;
    let host_value = HeaderValue::from_str(host).expect("route hosts are valid header values");
    parts.headers.insert(header::HOST, host_value.clone());
    // HTTP/2 clients split cookies into several fields; HTTP/1.1 wants one (RFC 9113 8.2.3).
    let cookies: Vec<String> = parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_string))
        .collect();
    if cookies.len() > 1 {
        if let Ok(joined) = HeaderValue::from_str(&cookies.join("; ")) {
            parts.headers.insert(header::COOKIE, joined);
        }
    }
    // The gateway is the first proxy a backend can trust: what a client claims about earlier
    // hops is dropped, and the client's own address is the one given.
    for claimed in ["forwarded", "x-real-ip", "x-forwarded-for"] {
        parts.headers.remove(claimed);
    }
    if let Ok(value) = HeaderValue::from_str(&connection.client.ip().to_string()) {
        parts.headers.insert("x-forwarded-for", value.clone());
        parts.headers.insert("x-real-ip", value);
    }
    parts
        .headers
        .insert("x-forwarded-proto", HeaderValue::from_static("https"));
    parts.headers.insert("x-forwarded-host", host_value);
    Ok(Request::from_parts(parts, body.boxed()))
}

fn backend_failed(
    route: &RouteState,
    what: &str,
    e: impl std::fmt::Display,
) -> Response<ProxyBody> {
    tracing::warn!(host = %route.route.host, "backend {what}: {e}");
    text_response(StatusCode::BAD_GATEWAY, format!("the backend {what}"))
}

/// A pooled idle connection to a backend that is ready for a request.
async fn pooled_connection(route: &RouteState) -> Option<SendRequest<ProxyBody>> {
    loop {
        let mut sender = route.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
        if sender.is_closed() {
            continue;
        }
        // Given back at the end of a body, the connection turns ready once its task has run.
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(500), sender.ready()).await {
            return Some(sender);
        }
    }
}

/// A place under the route's backend connection limit, or a pooled connection given back
/// while waiting for one; a 503 when neither comes within the response timeout.
async fn backend_slot_or_pooled(
    route: &RouteState,
) -> Result<Result<OwnedSemaphorePermit, SendRequest<ProxyBody>>, Response<ProxyBody>> {
    let wait = async {
        loop {
            let returned = route.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(sender) = pooled_connection(route).await {
                return Err(sender);
            }
            tokio::select! {
                slot = route.backend_slots.clone().acquire_owned() => {
                    return Ok(slot.expect("the semaphore is never closed"));
                }
                _ = returned => {}
            }
        }
    };
    tokio::time::timeout(RESPONSE_TIMEOUT, wait)
        .await
        .map_err(|_| all_busy())
}

fn all_busy() -> Response<ProxyBody> {
    text_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "the route's backend connections are all busy",
    )
}

/// A new connection to a backend; it holds `slot` for as long as it lives.
async fn new_backend_connection(
    route: &RouteState,
    slot: OwnedSemaphorePermit,
) -> Result<SendRequest<ProxyBody>, Response<ProxyBody>> {
    let stream = dial(route)
        .await
        .map_err(|e| backend_failed(route, "is unreachable", e))?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| backend_failed(route, "refused HTTP", e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("backend connection ended: {e}");
        }
        drop(slot);
    });
    Ok(sender)
}

/// A connection to a backend: a pooled idle one when it is ready, else a new one once the
/// route's backend connection limit allows.
async fn backend_connection(
    route: &RouteState,
) -> Result<SendRequest<ProxyBody>, Response<ProxyBody>> {
    if let Some(sender) = pooled_connection(route).await {
        return Ok(sender);
    }
    match backend_slot_or_pooled(route).await? {
        Ok(slot) => new_backend_connection(route, slot).await,
        Err(pooled) => Ok(pooled),
    }
}

async fn send_pooled(request: Request<ProxyBody>, connection: &Connection) -> Response<ProxyBody> {
    let route = &connection.route;
    let share = connection.backend_share.clone().acquire_owned();
    let Ok(Ok(share)) = tokio::time::timeout(RESPONSE_TIMEOUT, share).await else {
        return all_busy();
    };
    let mut sender = match backend_connection(route).await {
        Ok(sender) => sender,
        Err(response) => return response,
    };
    let sent = tokio::time::timeout(RESPONSE_TIMEOUT, async {
        match sender.try_send_request(request).await {
            // A pooled connection the backend closed meanwhile: the request was not sent,
            // so it can go once more on a new connection.
            Err(mut failed) => match failed.take_message() {
                Some(request) => {
                    sender = backend_connection(route).await?;
                    sender
                        .send_request(request)
                        .await
                        .map_err(|e| backend_failed(route, "failed", e))
                }
                None => Err(backend_failed(route, "failed", failed.into_error())),
            },
            Ok(response) => Ok(response),
        }
    })
    .await;
    let response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(response)) => return response,
        Err(_) => return text_response(StatusCode::GATEWAY_TIMEOUT, "the backend did not answer"),
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = PoolReturningBody {
        body,
        sender: Some(sender),
        route: Arc::downgrade(route),
        _share: share,
    };
    Response::from_parts(parts, body.boxed())
}

/// A backend's response body that gives its connection back to the route's pool once the
/// body has been read to its end (a connection dropped midway is closed instead).
struct PoolReturningBody {
    body: Incoming,
    sender: Option<SendRequest<ProxyBody>>,
    route: Weak<RouteState>,
    /// The client connection's place among its backend connections, held while the body runs.
    _share: OwnedSemaphorePermit,
}

impl PoolReturningBody {
    fn give_back(&mut self) {
        if let (Some(sender), Some(route)) = (self.sender.take(), self.route.upgrade()) {
            let mut idle = route.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE_PER_ROUTE && !sender.is_closed() {
                idle.push(sender);
                route.returned.notify_one();
            }
        }
    }
}

impl Drop for PoolReturningBody {
    fn drop(&mut self) {
        // An empty body (HEAD, 204, 304) is complete without ever being polled.
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

impl Body for PoolReturningBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let poll = Pin::new(&mut self.body).poll_frame(cx);
        match &poll {
            Poll::Ready(None) => self.give_back(),
            // The server stops polling once the body says it is complete.
            Poll::Ready(Some(Ok(_))) if self.body.is_end_stream() => self.give_back(),
            Poll::Ready(Some(Err(_))) => self.sender = None,
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// An upgrade (WebSocket): a connection of its own to the backend, and once the backend
/// switches protocols, the two upgraded streams are joined.
async fn relay_upgrade(
    request: Request<ProxyBody>,
    client_upgrade: hyper::upgrade::OnUpgrade,
    connection: &Connection,
) -> Response<ProxyBody> {
    let route = &connection.route;
    // An upgrade needs a connection of its own. With none free, one idle pooled connection is
    // closed (its place comes back when its task ends); then it waits its turn, once.
    let slot = match route.backend_slots.clone().try_acquire_owned() {
        Ok(slot) => Ok(slot),
        Err(_) => {
            drop(route.idle.lock().unwrap_or_else(|e| e.into_inner()).pop());
            let slot = route.backend_slots.clone().acquire_owned();
            match tokio::time::timeout(RESPONSE_TIMEOUT, slot).await {
                Ok(Ok(slot)) => Ok(slot),
                _ => Err(all_busy()),
            }
        }
    };
    let backend_slot = match slot {
        Ok(slot) => Arc::new(slot),
        Err(response) => return response,
    };
    let stream = match dial(route).await {
        Ok(stream) => stream,
        Err(e) => return backend_failed(route, "is unreachable", e),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => return backend_failed(route, "refused HTTP", e),
    };
    // The place is held as long as either the backend connection or the relay lives.
    let held_by_connection = backend_slot.clone();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("backend upgrade connection ended: {e}");
        }
        drop(held_by_connection);
    });
    let mut response = match tokio::time::timeout(RESPONSE_TIMEOUT, sender.send_request(request))
        .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return backend_failed(route, "failed", e),
        Err(_) => return text_response(StatusCode::GATEWAY_TIMEOUT, "the backend did not answer"),
    };
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = response.into_parts();
        return Response::from_parts(parts, body.boxed());
    }
    let backend_upgrade = hyper::upgrade::on(&mut response);
    let connection = connection.clone();
    tokio::spawn(async move {
        let route = &connection.route;
        let host = &route.route.host;
        match futures::future::try_join(client_upgrade, backend_upgrade).await {
            Ok((client, backend)) => {
                let (mut client, mut backend) = (TokioIo::new(client), TokioIo::new(backend));
                let relay = tokio::io::copy_bidirectional(&mut client, &mut backend);
                let idle = connection.idle_timeout;
                match guarded(relay, &connection.activity, idle, route.retired()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::debug!(%host, "upgraded connection ended: {e}"),
                    Err(cut) => tracing::info!(
                        target: "zos_gateway::access",
                        client = %connection.client,
                        %host,
                        "upgraded connection closed: {cut:?}"
                    ),
                }
            }
            Err(e) => tracing::debug!(%host, "upgrade failed: {e}"),
        }
        drop((connection, backend_slot));
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Empty::new().map_err(|never| match never {}).boxed())
}
