//! What the gateway tests share: a test PKI, a backend namespace standing in for a tenant's
//! private network (its own address, reachable only from inside), backend servers in it, and
//! TLS clients. Traffic stays on loopback and in the namespaces the tests create.
#![allow(dead_code)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{client::TlsStream, TlsConnector};
use zos_gateway::{CertStore, Gateway, GatewayLimits, Http01Challenges, Route, Routes, TlsMode};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A certificate authority for tests.
pub struct TestCa {
    ca: rcgen::Certificate,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(vec![]);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        Self {
            ca: rcgen::Certificate::from_params(params).unwrap(),
        }
    }

    pub fn pem(&self) -> String {
        self.ca.serialize_pem().unwrap()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.ca.serialize_der().unwrap())
    }

    /// A leaf for `names` (DNS names or IP addresses): (chain PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
        let leaf = rcgen::Certificate::from_params(params).unwrap();
        (
            leaf.serialize_pem_with_signer(&self.ca).unwrap(),
            leaf.serialize_private_key_pem(),
        )
    }
}

/// A namespace standing in for a tenant network: `10.99.<n>.2` exists only inside it.
pub struct BackendNet {
    pub name: String,
    pub path: PathBuf,
    pub ip: std::net::IpAddr,
}

impl BackendNet {
    pub fn new(tag: &str, n: u8) -> Self {
        let name = format!("zgw{}-{tag}", std::process::id());
        let path = zos_net::netns::create(&name).unwrap();
        let ip = format!("10.99.{n}.2");
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", &format!("{ip}/32"), "dev", "lo"],
        ] {
            let status = Command::new("ip")
                .arg("-n")
                .arg(&name)
                .args(&args)
                .status()
                .unwrap();
            assert!(status.success(), "ip -n {name} {args:?}");
        }
        Self {
            name,
            path,
            ip: ip.parse().unwrap(),
        }
    }

    /// A listener inside the namespace.
    pub fn listen(&self, port: u16) -> TcpListener {
        let addr = SocketAddr::new(self.ip, port);
        let listener =
            zos_net::netns::run_in(&self.path, move || Ok(std::net::TcpListener::bind(addr)?))
                .unwrap();
        listener.set_nonblocking(true).unwrap();
        TcpListener::from_std(listener).unwrap()
    }
}

impl Drop for BackendNet {
    fn drop(&mut self) {
        let _ = zos_net::netns::delete(&self.name);
    }
}

/// An HTTP/1.1 backend: `/` describes the request, `/slow` too after 200 ms, `/big` sends
/// 10 MiB, an upgrade request
/// gets 101 and then its bytes echoed.
/// Returns the count of connections it accepted.
pub fn spawn_http_backend(
    listener: TcpListener,
    label: &'static str,
) -> Arc<std::sync::atomic::AtomicUsize> {
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| backend(request, label));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    accepted
}

async fn backend(
    mut request: Request<Incoming>,
    label: &'static str,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.headers().contains_key(http::header::UPGRADE) {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let mut io = TokioIo::new(upgrade.await.unwrap());
            let mut buf = [0u8; 1024];
            loop {
                match io.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if io.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        return Ok(Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "echo")
            .header("connection", "upgrade")
            .body(Full::default())
            .unwrap());
    }
    if request.uri().path() == "/slow" {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    if request.uri().path() == "/big" {
        return Ok(Response::new(Full::new(Bytes::from(vec![b'x'; 10 << 20]))));
    }
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let cookies: Vec<_> = request.headers().get_all("cookie").iter().collect();
    assert!(
        cookies.len() <= 1,
        "several cookie fields reached an HTTP/1.1 backend"
    );
    let body = format!(
        "{label} {} {} host={} xff={} proto={} cookie={}",
        request.method(),
        request.uri(),
        header("host"),
        header("x-forwarded-for"),
        header("x-forwarded-proto"),
        header("cookie"),
    );
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// A backend that accepts connections and never sends a byte (holds them until closed).
pub fn spawn_silent_backend(listener: TcpListener) {
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut sink = [0u8; 1024];
                while let Ok(n) = stream.read(&mut sink).await {
                    if n == 0 {
                        return;
                    }
                }
            });
        }
    });
}

/// A TLS backend (for passthrough) that answers every connection with `greeting`.
pub fn spawn_tls_backend(
    listener: TcpListener,
    chain_pem: &str,
    key_pem: &str,
    greeting: &'static str,
) {
    use rustls::pki_types::pem::PemObject;
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let _ = tls.write_all(greeting.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
}

/// A gateway on loopback: (gateway, HTTPS address, HTTP address).
pub struct TestGateway {
    pub routes: Arc<Routes>,
    pub certs: Arc<CertStore>,
    pub challenges: Arc<Http01Challenges>,
    pub https: SocketAddr,
    pub http: SocketAddr,
}

pub async fn start_gateway(cert_dir: &Path, node_addresses: Vec<std::net::IpAddr>) -> TestGateway {
    start_gateway_with(cert_dir, node_addresses, GatewayLimits::default()).await
}

pub async fn start_gateway_with(
    cert_dir: &Path,
    node_addresses: Vec<std::net::IpAddr>,
    limits: GatewayLimits,
) -> TestGateway {
    let routes = Arc::new(Routes::new(node_addresses));
    let certs = Arc::new(CertStore::open(cert_dir).unwrap());
    let challenges = Arc::new(Http01Challenges::default());
    let https_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let https = https_listener.local_addr().unwrap();
    let http = http_listener.local_addr().unwrap();
    let gateway = Gateway::new(
        routes.clone(),
        certs.clone(),
        challenges.clone(),
        limits,
        https.port(),
    )
    .unwrap();
    tokio::spawn(gateway.clone().serve_https(https_listener));
    tokio::spawn(gateway.serve_http(http_listener));
    TestGateway {
        routes,
        certs,
        challenges,
        https,
        http,
    }
}

pub fn route(host: &str, net: &BackendNet, port: u16, tls: TlsMode) -> Route {
    Route {
        host: host.into(),
        backends: vec![SocketAddr::new(net.ip, port)],
        network: Some(net.path.clone()),
        tls,
        max_connections: 64,
        contract: 7,
    }
}

/// A TLS connection to `addr` asking for `host`, trusting only `roots`, offering `alpn`.
pub async fn tls_connect(
    addr: SocketAddr,
    host: &str,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_connect_from(None, addr, host, roots, alpn).await
}

/// As `tls_connect`, from the source address `from` when given (another loopback address).
pub async fn tls_connect_from(
    from: Option<std::net::IpAddr>,
    addr: SocketAddr,
    host: &str,
    roots: &[CertificateDer<'static>],
    alpn: &[&[u8]],
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let stream = match from {
        None => TcpStream::connect(addr).await?,
        Some(source) => {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(source, 0))?;
            socket.connect(addr).await?
        }
    };
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(host.to_string()).unwrap(), stream)
        .await
}

/// GET `path` on `host` over a new HTTP/1.1 (or, with `h2`, HTTP/2) connection: (status, body).
pub async fn get(
    addr: SocketAddr,
    host: &str,
    header_host: &str,
    path: &str,
    roots: &[CertificateDer<'static>],
    h2: bool,
) -> (StatusCode, String) {
    let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
    let tls = tls_connect(addr, host, roots, alpn)
        .await
        .expect("TLS to the gateway");
    let io = TokioIo::new(tls);
    let response = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        let uri = format!("https://{header_host}{path}");
        sender
            .send_request(Request::get(uri).body(Full::<Bytes>::default()).unwrap())
            .await
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let request = Request::get(path)
            .header("host", header_host)
            .body(Full::<Bytes>::default());
        sender.send_request(request.unwrap()).await
    }
    .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
