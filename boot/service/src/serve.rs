//! The boot service: what a node's firmware and core-0 fetch over HTTP.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use axum::{
    body::HttpBody,
    extract::{Path, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use zos_release::{BootParams, Runmode, Version};

/// What the boot service tells nodes.
#[derive(Clone, Debug)]
pub struct BootConfig {
    /// Holds `kernel`, `initramfs` and `release/<runmode>/manifest.{json,sig}`.
    pub dir: PathBuf,
    /// This service's address as the nodes reach it (put into their command line as `boot=`).
    pub public_url: String,
    /// The chain RPC endpoint each runmode's nodes use.
    pub chain: String,
    /// The image hub the nodes use.
    pub hub: String,
    /// Extra kernel arguments (the console, for example).
    pub kernel_args: String,
    /// Bytes of OS image objects served under `/hub` so far (what nodes fetched lazily).
    pub hub_bytes_served: Arc<AtomicU64>,
}

/// The directory store under a boot directory that holds the OS payload images (written by
/// boot/build.sh, served read-only under `/hub`).
pub const OS_STORE: &str = "os-store";
/// The file under a boot directory naming the OS payload image boot/build.sh packed last.
pub const OS_ROOT_FILE: &str = "os-root";

/// The iPXE script that boots a node of `farm` in `runmode`: kernel, initramfs, and the
/// command line core-0 reads.
pub fn ipxe_script(cfg: &BootConfig, runmode: Runmode, farm: u32) -> String {
    let params = BootParams {
        farm,
        runmode,
        chain: cfg.chain.clone(),
        hub: cfg.hub.clone(),
        boot: cfg.public_url.trim_end_matches('/').to_string(),
    };
    let base = &params.boot;
    let extra = if cfg.kernel_args.is_empty() {
        String::new()
    } else {
        format!(" {}", cfg.kernel_args)
    };
    format!(
        "#!ipxe\necho Zero-OS node: farm {farm}, runmode {runmode}\nkernel {base}/kernel initrd=initramfs {}{extra}\ninitrd --name initramfs {base}/initramfs\nboot\n",
        params.to_cmdline()
    )
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn file(cfg: &BootConfig, rel: &str) -> Response {
    match tokio::fs::read(cfg.dir.join(rel)).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            text(StatusCode::NOT_FOUND, format!("{rel} is not published\n"))
        }
        Err(e) => {
            tracing::warn!(error = %e, file = rel, "boot file unreadable");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("{rel} cannot be read\n"),
            )
        }
    }
}

async fn ipxe(
    State(cfg): State<Arc<BootConfig>>,
    Path((runmode, farm)): Path<(String, String)>,
) -> Response {
    let runmode: Runmode = match runmode.parse() {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let Some(farm) = farm
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| farm.parse::<u32>().ok())
        .flatten()
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "the farm is a decimal farm id\n".into(),
        );
    };
    text(StatusCode::OK, ipxe_script(&cfg, runmode, farm))
}

async fn kernel(State(cfg): State<Arc<BootConfig>>) -> Response {
    file(&cfg, "kernel").await
}

async fn initramfs(State(cfg): State<Arc<BootConfig>>) -> Response {
    file(&cfg, "initramfs").await
}

/// A published manifest file: the runmode's current one, or a version's. Only these two
/// names, under a parsed runmode and version: never a path from the request.
async fn manifest_file(
    cfg: &BootConfig,
    runmode: &str,
    version: Option<&str>,
    name: &str,
) -> Response {
    let runmode: Runmode = match runmode.parse() {
        Ok(r) => r,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    let version: Option<Version> = match version.map(str::parse).transpose() {
        Ok(v) => v,
        Err(e) => return text(StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    if name != "manifest.json" && name != "manifest.sig" {
        return text(
            StatusCode::NOT_FOUND,
            "only manifest.json and manifest.sig are published\n".into(),
        );
    }
    match version {
        Some(v) => file(cfg, &format!("release/{runmode}/{v}/{name}")).await,
        None => file(cfg, &format!("release/{runmode}/{name}")).await,
    }
}

async fn release(
    State(cfg): State<Arc<BootConfig>>,
    Path((runmode, name)): Path<(String, String)>,
) -> Response {
    manifest_file(&cfg, &runmode, None, &name).await
}

async fn versioned_release(
    State(cfg): State<Arc<BootConfig>>,
    Path((runmode, version, name)): Path<(String, String, String)>,
) -> Response {
    manifest_file(&cfg, &runmode, Some(&version), &name).await
}

/// The boot service's routes. A boot directory with an OS store also serves it read-only
/// under `/hub` (the zos-image hub protocol), so one service is all a farm needs to boot.
pub fn router(cfg: BootConfig) -> Router {
    let store = cfg.dir.join(OS_STORE);
    let hub = if store.join("images").is_dir() {
        match zos_image::store::DirStore::open(&store) {
            Ok(store) => {
                let served = cfg.hub_bytes_served.clone();
                Some(
                    zos_image::hub::read_only_router(std::sync::Arc::new(store)).layer(
                        axum::middleware::map_response(move |response: Response| {
                            let served = served.clone();
                            async move {
                                if let Some(n) = response.body().size_hint().exact() {
                                    served.fetch_add(n, Ordering::Relaxed);
                                }
                                response
                            }
                        }),
                    ),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "the OS store is unreadable; /hub is not served");
                None
            }
        }
    } else {
        None
    };
    let routes = Router::new()
        .route("/ipxe/{runmode}/{farm}", get(ipxe))
        .route("/kernel", get(kernel))
        .route("/initramfs", get(initramfs))
        .route("/release/{runmode}/{name}", get(release))
        .route(
            "/release/{runmode}/{version}/{name}",
            get(versioned_release),
        )
        .with_state(Arc::new(cfg));
    match hub {
        Some(hub) => routes.nest("/hub", hub),
        None => routes,
    }
}

/// Serves `cfg` on `addr` from a thread with its own runtime; returns the bound address (bind
/// `127.0.0.1:0` for a free loopback port). For tests and embedding.
pub fn spawn_background(addr: SocketAddr, cfg: BootConfig) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    if let Err(e) = axum::serve(listener, router(cfg)).await {
                        tracing::error!(error = %e, "boot service stopped");
                    }
                }
                Err(e) => tracing::error!(error = %e, "boot service listener"),
            }
        })
    });
    Ok(local)
}
