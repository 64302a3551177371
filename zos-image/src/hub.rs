//! The hub: an HTTP front for a directory store.
//!
//! `GET|HEAD /v1/chunks/<xx>/<hash>`, `/v1/images/<root>.idx`, `/v1/images/<root>.sig` are
//! public (content addressed: clients verify what they get). `PUT` on the same paths needs
//! `Authorization: Bearer <token>`, and the hub checks every upload against its name before
//! storing it, so even a token holder cannot plant content under a wrong hash.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::chunk::decode_object;
use crate::format::{Index, MAX_CHUNK_LEN};
use crate::hash::Hash;
use crate::sign;
use crate::store::{DirStore, Object, Store};

/// Largest accepted upload (an index for a very large tree).
const MAX_UPLOAD: usize = crate::store::MAX_INDEX_LEN as usize;

struct HubState {
    store: Arc<dyn Store>,
    token: String,
}

/// Constant-time comparison so the token cannot be guessed byte by byte from timings.
fn token_matches(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (a, b) = (given.as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn parse_object(kind: &str, name: &str) -> Option<Object> {
    match kind {
        "chunks" => name.parse().ok().map(Object::Chunk),
        "images" => {
            if let Some(root) = name.strip_suffix(".idx") {
                root.parse().ok().map(Object::Index)
            } else {
                name.strip_suffix(".sig")
                    .and_then(|r| r.parse().ok())
                    .map(Object::Signature)
            }
        }
        _ => None,
    }
}

/// Checks an object's bytes against its name (an upload, or an object from an untrusted
/// peer); returns why they are refused. A signature is checked for its own consistency only:
/// whether its key is trusted is for whoever opens the image.
pub fn validate_object(object: Object, body: &[u8]) -> Result<(), String> {
    match object {
        Object::Chunk(hash) => {
            if body.len() > MAX_CHUNK_LEN as usize + 1 {
                return Err("chunk object too large".into());
            }
            decode_object(&hash, body, None)
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Object::Index(root) => {
            let actual = Hash::of(body);
            if actual != root {
                return Err(format!("index hashes to {actual}, not {root}"));
            }
            Index::parse(body).map(|_| ()).map_err(|e| e.to_string())
        }
        Object::Signature(root) => sign::verify(&root, body)
            .map(|_| ())
            .map_err(|e| e.to_string()),
    }
}

async fn get_object(
    State(state): State<Arc<HubState>>,
    Path((kind, a, b)): Path<(String, String, Option<String>)>,
) -> Response {
    let object = match (kind.as_str(), b) {
        ("chunks", Some(name)) if name.starts_with(&a) => parse_object("chunks", &name),
        ("images", None) => parse_object("images", &a),
        _ => None,
    };
    let Some(object) = object else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let result = tokio::task::spawn_blocking(move || state.store.get(object)).await;
    match result {
        Ok(Ok(Some(bytes))) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
        }
        Ok(Ok(None)) => StatusCode::NOT_FOUND.into_response(),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "store read failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn put_object(
    State(state): State<Arc<HubState>>,
    Path((kind, a, b)): Path<(String, String, Option<String>)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !token_matches(&headers, &state.token) {
        return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response();
    }
    let object = match (kind.as_str(), b) {
        ("chunks", Some(name)) if name.starts_with(&a) && a.len() == 2 => {
            parse_object("chunks", &name)
        }
        ("images", None) => parse_object("images", &a),
        _ => None,
    };
    let Some(object) = object else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let result = tokio::task::spawn_blocking(move || {
        validate_object(object, &body)?;
        if state.store.has(object).unwrap_or(false) {
            return Ok(());
        }
        state
            .store
            .put(object, &body)
            .map_err(|e| format!("store: {e}"))
    })
    .await;
    match result {
        Ok(Ok(())) => StatusCode::CREATED.into_response(),
        Ok(Err(reason)) => {
            tracing::warn!(%reason, "upload refused");
            (StatusCode::UNPROCESSABLE_ENTITY, format!("{reason}\n")).into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn get2(state: State<Arc<HubState>>, Path((kind, a)): Path<(String, String)>) -> Response {
    get_object(state, Path((kind, a, None))).await
}

async fn get3(
    state: State<Arc<HubState>>,
    Path((kind, a, b)): Path<(String, String, String)>,
) -> Response {
    get_object(state, Path((kind, a, Some(b)))).await
}

async fn put2(
    state: State<Arc<HubState>>,
    Path((kind, a)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    put_object(state, Path((kind, a, None)), headers, body).await
}

async fn put3(
    state: State<Arc<HubState>>,
    Path((kind, a, b)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    put_object(state, Path((kind, a, Some(b))), headers, body).await
}

/// Read-only hub routes over `store` (no uploads): for serving a store beside other routes,
/// as the boot service does with the node OS image, or any [`Store`] in the hub's URL space.
pub fn read_only_router(store: Arc<dyn Store>) -> Router {
    // The token is never compared: no PUT route exists.
    let state = Arc::new(HubState {
        store,
        token: String::new(),
    });
    Router::new()
        .route("/v1/{kind}/{a}", get(get2))
        .route("/v1/{kind}/{a}/{b}", get(get3))
        .with_state(state)
}

/// Hub routes over `store`: GET for everyone, PUT with the bearer `token`.
pub fn router(store: DirStore, token: String) -> Router {
    let state = Arc::new(HubState {
        store: Arc::new(store),
        token,
    });
    Router::new()
        .route("/v1/{kind}/{a}", get(get2).put(put2))
        .route("/v1/{kind}/{a}/{b}", get(get3).put(put3))
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
        .with_state(state)
}

/// Bind and serve until the returned future is dropped or fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: DirStore,
    token: String,
) -> std::io::Result<()> {
    axum::serve(listener, router(store, token)).await
}

/// Start a hub on a background thread with its own runtime; returns the bound address.
/// Used by tests and benchmarks: bind to `127.0.0.1:0` for a free loopback port.
pub fn spawn_background(
    addr: SocketAddr,
    store: DirStore,
    token: String,
) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => return tracing::error!(error = %e, "hub runtime"),
        };
        rt.block_on(async move {
            match tokio::net::TcpListener::from_std(std_listener) {
                Ok(listener) => {
                    if let Err(e) = serve(listener, store, token).await {
                        tracing::error!(error = %e, "hub stopped");
                    }
                }
                Err(e) => tracing::error!(error = %e, "hub listener"),
            }
        });
    });
    Ok(local)
}
