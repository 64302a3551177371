//! Requests per second and latency through the gateway (HTTPS, terminated, to a backend in a
//! tenant's namespace) against the same requests sent directly to the backend (plain HTTP
//! from inside the namespace), in one run: small responses over keep-alive connections, then a
//! 10 MiB download. Needs root (a network namespace). Run:
//!
//! `cargo run --profile ci -p zos-gateway --example gateway_bench [seconds] [connections]`

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use zos_gateway::{CertStore, Gateway, GatewayLimits, Http01Challenges, Route, Routes, TlsMode};

const HOST: &str = "bench.gw.example.com";
const SMALL: &[u8] = b"hello from the backend\n";
const BIG_BYTES: usize = 10 << 20;

struct Namespace(String, std::path::PathBuf);

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = zos_net::netns::delete(&self.0);
    }
}

fn backend_namespace() -> anyhow::Result<Namespace> {
    let name = format!("zgwbench{}", std::process::id());
    let path = zos_net::netns::create(&name)?;
    for args in [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "add", "10.98.0.2/32", "dev", "lo"],
    ] {
        let status = std::process::Command::new("ip")
            .arg("-n")
            .arg(&name)
            .args(&args)
            .status()?;
        anyhow::ensure!(status.success(), "ip {args:?}");
    }
    Ok(Namespace(name, path))
}

async fn serve_backend(listener: TcpListener) {
    let big = Bytes::from(vec![b'x'; BIG_BYTES]);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let big = big.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let body = if request.uri().path() == "/big" {
                        big.clone()
                    } else {
                        Bytes::from_static(SMALL)
                    };
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// How a benchmark client reaches the backend.
#[derive(Clone)]
enum Path {
    Direct {
        ns: std::path::PathBuf,
        backend: SocketAddr,
    },
    Gateway {
        addr: SocketAddr,
        tls: tokio_rustls::TlsConnector,
    },
}

impl Path {
    async fn sender(
        &self,
    ) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> {
        Ok(match self {
            Path::Direct { ns, backend } => {
                let backend = *backend;
                let ns = ns.clone();
                let socket = tokio::task::spawn_blocking(move || {
                    zos_net::netns::run_in(&ns, move || Ok(TcpSocket::new_v4()?))
                })
                .await??;
                let stream = socket.connect(backend).await?;
                stream.set_nodelay(true)?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                sender
            }
            Path::Gateway { addr, tls } => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let stream = tls.connect(ServerName::try_from(HOST)?, stream).await?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                sender
            }
        })
    }
}

/// `connections` keep-alive clients asking `path` for `seconds`: (requests/s, p50, p99).
async fn small_requests(
    path: &Path,
    seconds: u64,
    connections: usize,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = path.sender().await?;
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                sender.ready().await?;
                let started = Instant::now();
                let request = Request::get("/").header("host", HOST).body(Empty::new())?;
                let response = sender.send_request(request).await?;
                let body = response.into_body().collect().await?.to_bytes();
                anyhow::ensure!(body.as_ref() == SMALL, "unexpected body");
                latencies.push(started.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Ok((all.len() as f64 / seconds as f64, at(0.5), at(0.99)))
}

/// One 10 MiB download: MiB/s.
async fn download(path: &Path) -> anyhow::Result<f64> {
    let mut sender = path.sender().await?;
    let started = Instant::now();
    let request = Request::get("/big")
        .header("host", HOST)
        .body(Empty::new())?;
    let body = sender
        .send_request(request)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    anyhow::ensure!(body.len() == BIG_BYTES, "short download");
    Ok((BIG_BYTES >> 20) as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let connections: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8);
    let ns = backend_namespace()?;
    let backend: SocketAddr = "10.98.0.2:8080".parse()?;
    let listener =
        zos_net::netns::run_in(&ns.1, move || Ok(std::net::TcpListener::bind(backend)?))?;
    listener.set_nonblocking(true)?;
    tokio::spawn(serve_backend(TcpListener::from_std(listener)?));

    // A gateway on loopback with a certificate from a throwaway CA.
    let dir = tempfile::tempdir()?;
    let mut ca_params = rcgen::CertificateParams::new(vec![]);
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::Certificate::from_params(ca_params)?;
    let leaf =
        rcgen::Certificate::from_params(rcgen::CertificateParams::new(vec![HOST.to_string()]))?;
    let certs = Arc::new(CertStore::open(dir.path())?);
    certs.install(
        HOST,
        leaf.serialize_pem_with_signer(&ca)?.as_bytes(),
        leaf.serialize_private_key_pem().as_bytes(),
    )?;
    let routes = Arc::new(Routes::new(vec![]));
    routes.upsert(Route {
        host: HOST.into(),
        backends: vec![backend],
        network: Some(ns.1.clone()),
        tls: TlsMode::Terminate,
        max_connections: 1024,
        contract: 1,
    })?;
    let https = TcpListener::bind("127.0.0.1:0").await?;
    let addr = https.local_addr()?;
    let gateway = Gateway::new(
        routes,
        certs,
        Arc::new(Http01Challenges::default()),
        GatewayLimits::default(),
        addr.port(),
    )?;
    tokio::spawn(gateway.serve_https(https));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(
        ca.serialize_pem()?.as_bytes(),
    )?)?;
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let through = Path::Gateway {
        addr,
        tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
    };
    let direct = Path::Direct {
        ns: ns.1.clone(),
        backend,
    };

    // Warm up both paths (connections, pools, caches).
    small_requests(&direct, 1, connections).await?;
    small_requests(&through, 1, connections).await?;
    let (direct_rps, direct_p50, direct_p99) =
        small_requests(&direct, seconds, connections).await?;
    let (gateway_rps, gateway_p50, gateway_p99) =
        small_requests(&through, seconds, connections).await?;
    let direct_mibs = download(&direct).await?;
    let gateway_mibs = download(&through).await?;
    println!("{connections} keep-alive connections, {seconds} s each, small responses:");
    println!("  direct (HTTP in the namespace): {direct_rps:.0} req/s, p50 {direct_p50:?}, p99 {direct_p99:?}");
    println!("  gateway (HTTPS, proxied):       {gateway_rps:.0} req/s, p50 {gateway_p50:?}, p99 {gateway_p99:?}");
    println!(
        "  ratio {:.2} of direct requests/s; p99 overhead {:?}",
        gateway_rps / direct_rps,
        gateway_p99.saturating_sub(direct_p99)
    );
    println!(
        "10 MiB download: direct {direct_mibs:.0} MiB/s, gateway {gateway_mibs:.0} MiB/s (ratio {:.2})",
        gateway_mibs / direct_mibs
    );
    Ok(())
}
