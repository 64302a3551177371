//! The gateway against real backends in a namespace standing in for a tenant network: TLS
//! terminated by SNI over HTTP/1.1 and HTTP/2, passthrough to a backend holding its own
//! certificate, the HTTP redirect, WebSocket-style upgrades, the per-route connection limit,
//! fronting and unknown names refused, a dead backend reported. Needs root (namespaces).

use std::time::Duration;

use http::StatusCode;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use zos_gateway::TlsMode;

mod support;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_routes_by_name_into_a_tenant_network() {
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = BackendNet::new("px", 1);
    let backend_connections = spawn_http_backend(net.listen(8080), "web");
    let gateway_ca = TestCa::new("gateway test CA");
    let backend_ca = TestCa::new("tenant's own CA");
    let (tls_chain, tls_key) = backend_ca.leaf(&["secure.gw.example.com"]);
    spawn_tls_backend(
        net.listen(8443),
        &tls_chain,
        &tls_key,
        "hello from the tenant's TLS",
    );

    let gw = start_gateway(dir.path(), vec!["198.51.100.9".parse().unwrap()]).await;
    let (chain, key) = gateway_ca.leaf(&["app.gw.example.com"]);
    gw.certs
        .install("app.gw.example.com", chain.as_bytes(), key.as_bytes())
        .unwrap();
    let refused = gw.routes.replace(vec![
        route("app.gw.example.com", &net, 8080, TlsMode::Terminate),
        route("secure.gw.example.com", &net, 8443, TlsMode::Passthrough),
        route("dead.gw.example.com", &net, 9999, TlsMode::Terminate),
        // A backend on the node itself is refused with its reason.
        zos_gateway::Route {
            backends: vec!["198.51.100.9:22".parse().unwrap()],
            ..route("sneaky.gw.example.com", &net, 1, TlsMode::Terminate)
        },
    ]);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].1.to_string().contains("own addresses"),
        "{refused:?}"
    );
    let roots = [gateway_ca.der()];

    // Terminated, HTTP/1.1 and HTTP/2; the backend sees the client's host and address.
    for h2 in [false, true] {
        let (status, body) = get(
            gw.https,
            "app.gw.example.com",
            "app.gw.example.com",
            "/hi?x=1",
            &roots,
            h2,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body, "web GET /hi?x=1 host=app.gw.example.com xff=127.0.0.1 proto=https cookie=-",
            "h2={h2}"
        );
    }
    // Keep-alive: many requests on one client connection, backend connections pooled.
    {
        use http_body_util::{BodyExt, Full};
        let tls = tls_connect(gw.https, "app.gw.example.com", &roots, &[b"http/1.1"])
            .await
            .unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        for i in 0..20 {
            let request = http::Request::get(format!("/n{i}"))
                .header("host", "app.gw.example.com")
                .body(Full::<bytes::Bytes>::default())
                .unwrap();
            sender.ready().await.unwrap();
            let response = sender.send_request(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert!(String::from_utf8_lossy(&body).starts_with(&format!("web GET /n{i} ")));
        }
    }

    // 22 requests so far over at most a few backend connections: the pool reuses them.
    let used = backend_connections.load(std::sync::atomic::Ordering::Relaxed);
    assert!(used <= 3, "{used} backend connections for 22 requests");

    // What a client claims about earlier hops is not passed on; HTTP/2's split cookies are
    // joined for the HTTP/1.1 backend.
    {
        use http_body_util::{BodyExt, Full};
        let tls = tls_connect(gw.https, "app.gw.example.com", &roots, &[b"h2"])
            .await
            .unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let request = http::Request::get("https://app.gw.example.com/who")
            .header("x-forwarded-for", "203.0.113.66")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .body(Full::<bytes::Bytes>::default())
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("xff=127.0.0.1 "), "{body}");
        assert!(body.ends_with("cookie=a=1; b=2"), "{body}");
    }

    // A name the connection was not opened for is not served through it (no fronting).
    let (status, _) = get(
        gw.https,
        "app.gw.example.com",
        "other.gw.example.com",
        "/",
        &roots,
        false,
    )
    .await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);

    // Unknown names and clients without SNI get no TLS at all.
    assert!(tls_connect(gw.https, "nobody.gw.example.com", &roots, &[])
        .await
        .is_err());

    // Passthrough: the client verifies the tenant's certificate, so nothing was decrypted.
    let mut tls = tls_connect(gw.https, "secure.gw.example.com", &[backend_ca.der()], &[])
        .await
        .expect("TLS through to the tenant's backend");
    let mut greeting = String::new();
    tls.read_to_string(&mut greeting).await.unwrap();
    assert_eq!(greeting, "hello from the tenant's TLS");

    // Plain HTTP: a redirect for routed names, 404 for others.
    let redirect = http_get_plain(gw.http, "app.gw.example.com", "/a/b?c=d").await;
    assert!(redirect.starts_with("HTTP/1.1 308"), "{redirect}");
    let location = format!(
        "location: https://app.gw.example.com:{}/a/b?c=d",
        gw.https.port()
    );
    assert!(
        redirect.to_ascii_lowercase().contains(&location),
        "{redirect}"
    );
    assert!(http_get_plain(gw.http, "nobody.gw.example.com", "/")
        .await
        .starts_with("HTTP/1.1 404"));
    assert!(
        http_get_plain(gw.http, "x", "/.well-known/acme-challenge/none")
            .await
            .starts_with("HTTP/1.1 404")
    );

    // An upgrade (as WebSocket) is relayed both ways.
    let mut tls = tls_connect(gw.https, "app.gw.example.com", &roots, &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app.gw.example.com\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_until(&mut tls, b"\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(b"ping over the upgraded stream")
        .await
        .unwrap();
    let mut echoed = vec![0u8; 29];
    tokio::time::timeout(Duration::from_secs(10), tls.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"ping over the upgraded stream");
    drop(tls);

    // A dead backend is a 502, not a hang.
    let dead_ca = TestCa::new("dead");
    let (chain, key) = dead_ca.leaf(&["dead.gw.example.com"]);
    gw.certs
        .install("dead.gw.example.com", chain.as_bytes(), key.as_bytes())
        .unwrap();
    let (status, _) = get(
        gw.https,
        "dead.gw.example.com",
        "dead.gw.example.com",
        "/",
        &[dead_ca.der()],
        false,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);

    // The route's traffic was counted on the client's side.
    let traffic = gw.routes.traffic("app.gw.example.com").unwrap();
    assert!(traffic.connections >= 5, "{traffic:?}");
    assert!(
        traffic.received > 1000 && traffic.sent > 1000,
        "{traffic:?}"
    );
    let passthrough = gw.routes.traffic("secure.gw.example.com").unwrap();
    assert_eq!(passthrough.connections, 1);
    assert!(passthrough.sent > 0);

    // The route's connection limit: one held connection, the next is refused.
    let mut limited = route("app.gw.example.com", &net, 8080, TlsMode::Terminate);
    limited.max_connections = 1;
    gw.routes.upsert(limited).unwrap();
    let held = tls_connect(gw.https, "app.gw.example.com", &roots, &[])
        .await
        .unwrap();
    assert!(tls_connect(gw.https, "app.gw.example.com", &roots, &[])
        .await
        .is_err());
    assert_eq!(gw.routes.traffic("app.gw.example.com").unwrap().refused, 1);
    drop(held);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = get(
        gw.https,
        "app.gw.example.com",
        "app.gw.example.com",
        "/",
        &roots,
        false,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

async fn read_until(stream: &mut (impl AsyncReadExt + Unpin), end: &[u8]) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(end) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

async fn http_get_plain(addr: std::net::SocketAddr, host: &str, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// The limits that keep one client from holding the gateway: silent connections closed after
/// the idle timeout (terminated before the first request, passthrough, upgraded), a cap per
/// client address, a removed route's open connections ended, and HTTP/2 streams of one client
/// sharing the route's backend connections instead of opening one each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_limits_idle_clients_greedy_clients_and_removed_routes() {
    use std::time::Instant;
    if !is_root() {
        eprintln!("skipped: needs root (network namespaces)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let net = BackendNet::new("lim", 2);
    let backend_connections = spawn_http_backend(net.listen(8080), "web");
    spawn_silent_backend(net.listen(8443));
    let ca = TestCa::new("gateway test CA");
    let limits = zos_gateway::GatewayLimits {
        max_connections_per_client: 3,
        idle_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let gw = start_gateway_with(dir.path(), vec![], limits).await;
    for host in ["app.gw.example.com", "other.gw.example.com"] {
        let (chain, key) = ca.leaf(&[host]);
        gw.certs
            .install(host, chain.as_bytes(), key.as_bytes())
            .unwrap();
    }
    let mut app = route("app.gw.example.com", &net, 8080, TlsMode::Terminate);
    app.max_connections = 2;
    let refused = gw.routes.replace(vec![
        app.clone(),
        route("other.gw.example.com", &net, 8080, TlsMode::Terminate),
        route("silent.gw.example.com", &net, 8443, TlsMode::Passthrough),
    ]);
    assert!(refused.is_empty(), "{refused:?}");
    let roots = [ca.der()];

    // Silent after the TLS handshake (no first request): closed after about the idle timeout.
    let mut quiet = tls_connect(gw.https, "app.gw.example.com", &roots, &[b"http/1.1"])
        .await
        .unwrap();
    let started = Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(10), quiet.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1600),
        "closed after {waited:?}"
    );

    // Passthrough to a backend that never answers: the handshake is cut, not left hanging.
    let started = Instant::now();
    let through = tokio::time::timeout(
        Duration::from_secs(10),
        tls_connect(gw.https, "silent.gw.example.com", &roots, &[]),
    )
    .await
    .expect("a silent passthrough stream is closed");
    assert!(through.is_err());
    assert!(started.elapsed() >= Duration::from_millis(1600));

    // An upgraded (WebSocket) stream that goes silent is closed too; while it talks it stays.
    let mut ws = upgrade(gw.https, &roots).await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        ws.write_all(b"tick").await.unwrap();
        let mut echoed = [0u8; 4];
        ws.read_exact(&mut echoed).await.unwrap();
    }
    let read = tokio::time::timeout(Duration::from_secs(10), ws.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    drop(ws);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // One client address holds at most 3 connections; another address is still served.
    let limited = gw.routes.traffic("app.gw.example.com").unwrap().refused;
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            tls_connect(gw.https, "app.gw.example.com", &roots, &[])
                .await
                .unwrap(),
        );
    }
    // The third from 127.0.0.1 is within its cap but over the route's limit of 2.
    assert!(tls_connect(gw.https, "app.gw.example.com", &roots, &[])
        .await
        .is_err());
    assert_eq!(
        gw.routes.traffic("app.gw.example.com").unwrap().refused,
        limited + 1
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut raw = Vec::new();
    raw.push(TcpStream::connect(gw.https).await.unwrap());
    // Now 3 from 127.0.0.1: the fourth is dropped before any route is looked at.
    let mut over = TcpStream::connect(gw.https).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), over.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    assert!(tls_connect(gw.https, "other.gw.example.com", &roots, &[])
        .await
        .is_err());
    let other = tls_connect_from(
        Some("127.0.0.2".parse().unwrap()),
        gw.https,
        "other.gw.example.com",
        &roots,
        &[],
    );
    assert!(other.await.is_ok(), "another client address is served");
    drop((held, raw));
    tokio::time::sleep(Duration::from_millis(300)).await;

    // HTTP/2: 12 concurrent slow requests over one client connection use at most the route's
    // 2 backend connections, and all are answered.
    let before = backend_connections.load(std::sync::atomic::Ordering::Relaxed);
    let statuses = h2_concurrent(gw.https, "app.gw.example.com", &roots, 12).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let opened = backend_connections.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(
        opened <= 2,
        "{opened} backend connections for one HTTP/2 client"
    );
    // On a route with room for 64, one HTTP/2 client connection still uses at most 4.
    let before = backend_connections.load(std::sync::atomic::Ordering::Relaxed);
    let statuses = h2_concurrent(gw.https, "other.gw.example.com", &roots, 12).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let opened = backend_connections.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(
        opened <= 4,
        "{opened} backend connections for one HTTP/2 client connection"
    );
    // A silent HTTP/2 client is closed after the idle timeout too (no keep-alive pings keep
    // it active).
    let tls = tls_connect(gw.https, "other.gw.example.com", &roots, &[b"h2"])
        .await
        .unwrap();
    let (_sender, conn) =
        hyper::client::conn::http2::handshake::<_, _, http_body_util::Empty<bytes::Bytes>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
    assert!(ended.is_ok(), "a silent HTTP/2 connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(1600));

    // Removing the route ends its open connections: a keep-alive client and an upgraded one.
    let (mut sender, mut kept) = {
        let tls = tls_connect(gw.https, "app.gw.example.com", &roots, &[b"http/1.1"])
            .await
            .unwrap();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .unwrap();
        (sender, tokio::spawn(conn))
    };
    let request = http::Request::get("/")
        .header("host", "app.gw.example.com")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(
        sender.send_request(request).await.unwrap().status(),
        StatusCode::OK
    );
    let mut ws = upgrade(gw.https, &roots).await;
    gw.routes.remove("app.gw.example.com", app.contract);
    // Well within the 2 s idle timeout: closed by the removal.
    let ended = tokio::time::timeout(Duration::from_millis(500), &mut kept).await;
    assert!(
        ended.is_ok(),
        "the keep-alive connection outlived its route"
    );
    let read = tokio::time::timeout(Duration::from_millis(500), ws.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
}

/// `n` concurrent GETs of `/slow` over one HTTP/2 connection to `host`: their statuses.
async fn h2_concurrent(
    gateway: std::net::SocketAddr,
    host: &str,
    roots: &[rustls::pki_types::CertificateDer<'static>],
    n: usize,
) -> Vec<StatusCode> {
    use http_body_util::{BodyExt, Full};
    let tls = tls_connect(gateway, host, roots, &[b"h2"]).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let requests = (0..n).map(|i| {
        let mut sender = sender.clone();
        let uri = format!("https://{host}/slow?{i}");
        async move {
            let request = http::Request::get(uri)
                .body(Full::<bytes::Bytes>::default())
                .unwrap();
            let response = sender.send_request(request).await.unwrap();
            let status = response.status();
            response.into_body().collect().await.unwrap();
            status
        }
    });
    futures::future::join_all(requests).await
}

/// An upgraded stream through the gateway to the echo backend.
async fn upgrade(
    gateway: std::net::SocketAddr,
    roots: &[rustls::pki_types::CertificateDer<'static>],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tls = tls_connect(gateway, "app.gw.example.com", roots, &[b"http/1.1"])
        .await
        .unwrap();
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: app.gw.example.com\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_until(&mut tls, b"\r\n\r\n").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls
}
