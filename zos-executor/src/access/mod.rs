//! Deployers' access to their running workloads: `GET /v1/contracts/{id}/logs` returns (or,
//! with `follow=1`, streams) a VM's console - the guest's boot and, in container mode, its
//! entrypoint's output. Only a signer of the contract can read it: every request is signed
//! (see `zos_client::access`), its nonce used once, and the signer checked against the
//! contract at the finalized block. Each read is logged with its signer.
//!
//! Query: `workload=<name>` (may be left out when the contract has one VM here), `lines=<n>`
//! (the last n lines only), `follow=1`.
//!
//! `GET /v1/contracts/{id}/agent?request=<hex of a JSON zos_guest_agent::Request>` with
//! `Upgrade: zos-agent/1` opens a session with the agent inside the VM (a command, a shell on a
//! terminal, the process list, a signal), authorized the same way; see [`agent`].

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use axum::{
    body::{Body, Bytes},
    extract::{Path as UrlPath, State},
    http::{header, HeaderMap, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
};
use tokio::{io::AsyncWriteExt as _, sync::Semaphore};
use tracing::{info, warn};
use zos_client::{
    access::{self, is_workload_name, AuthError, MAX_CLOCK_SKEW_SECS},
    chain::Chain,
};
use zos_primitives::{ContractId, NodeId};

pub mod agent;
mod console;
mod listener;

use agent::{AgentLinks, AgentSession};

use console::{last_lines, next_output, read_console, Next};
use listener::CappedListener;

/// Nonces one signer may use within the skew window (about 3 requests a second); more wait.
const MAX_NONCES_PER_SIGNER: usize = 1024;
/// Follow streams open at once on this node, and of one signer.
const MAX_FOLLOWERS: usize = 32;
const MAX_FOLLOWERS_PER_SIGNER: usize = 4;
/// A followed console is closed after this long (the deployer follows again).
const MAX_FOLLOW: Duration = Duration::from_secs(3600);
/// Connections open at once (each holds a file descriptor of the executor's).
const MAX_CONNECTIONS: usize = 256;
/// How long a contract's signers are trusted as read (a removed signer loses access after it).
const SIGNERS_TTL: Duration = Duration::from_secs(6);
/// How often a followed console is looked at for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// Chain reads of a contract's signers at once; further requests wait.
const MAX_LOOKUPS: usize = 4;
/// Whole-console reads at once on this node (each holds a console in memory).
const MAX_READERS: usize = 8;
/// Agent sessions open at once on this node, and of one signer.
const MAX_SESSIONS: usize = 32;
const MAX_SESSIONS_PER_SIGNER: usize = 4;
/// An agent session in which nothing moved for this long is closed.
const SESSION_IDLE: Duration = Duration::from_secs(30 * 60);
/// A deployer who does not take a frame for this long loses the session.
const DEPLOYER_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where contracts' signers come from: the chain, or a fixed table in tests.
#[async_trait::async_trait]
pub trait ContractDirectory: Send + Sync + 'static {
    /// The node of `contract` and its signers' public keys; `None` when it does not exist.
    async fn node_and_signers(
        &self,
        contract: ContractId,
    ) -> Result<Option<(NodeId, Vec<[u8; 32]>)>>;
}

#[async_trait::async_trait]
impl ContractDirectory for Chain {
    async fn node_and_signers(
        &self,
        contract: ContractId,
    ) -> Result<Option<(NodeId, Vec<[u8; 32]>)>> {
        self.contract_node_and_signers(contract).await
    }
}

/// What the access endpoint serves from.
pub struct Access {
    directory: Arc<dyn ContractDirectory>,
    node: NodeId,
    contracts_dir: PathBuf,
    /// Per signer (of a contract here), nonce -> the request time it came with; dropped once
    /// outside the skew window. Only authorized signers get entries, so a stranger's requests
    /// cannot crowd out a deployer's.
    nonces: Mutex<HashMap<[u8; 32], HashMap<[u8; 16], u64>>>,
    signers: Mutex<HashMap<ContractId, (Instant, Option<(NodeId, Vec<[u8; 32]>)>)>>,
    followers: Arc<Semaphore>,
    /// Open follow streams per signer.
    following: Arc<Mutex<HashMap<[u8; 32], usize>>>,
    /// Connections to the guests' agents.
    agents: Arc<AgentLinks>,
    sessions: Arc<Semaphore>,
    /// Open agent sessions per signer.
    signer_sessions: Arc<Mutex<HashMap<[u8; 32], usize>>>,
    readers: Arc<Semaphore>,
    /// Chain reads of contracts' signers at once (each is an RPC call).
    lookups: Semaphore,
    /// When this endpoint started (unix s): the nonces seen before are forgotten, so a request
    /// signed earlier is refused rather than replayable.
    started: u64,
}

/// A refusal: a status and a sentence for the deployer.
#[derive(Debug)]
pub struct Refused(pub StatusCode, pub String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (
            self.0,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("{}\n", self.1),
        )
            .into_response()
    }
}

fn refused(status: StatusCode, why: impl Into<String>) -> Refused {
    Refused(status, why.into())
}

fn unauthorized(e: AuthError) -> Refused {
    refused(StatusCode::UNAUTHORIZED, e.to_string())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Access {
    pub fn new(
        directory: Arc<dyn ContractDirectory>,
        node: NodeId,
        contracts_dir: PathBuf,
    ) -> Self {
        Self {
            directory,
            node,
            contracts_dir,
            nonces: Mutex::default(),
            signers: Mutex::default(),
            followers: Arc::new(Semaphore::new(MAX_FOLLOWERS)),
            following: Arc::default(),
            agents: Arc::default(),
            sessions: Arc::new(Semaphore::new(MAX_SESSIONS)),
            signer_sessions: Arc::default(),
            readers: Arc::new(Semaphore::new(MAX_READERS)),
            lookups: Semaphore::new(MAX_LOOKUPS),
            started: unix_now(),
        }
    }

    /// Shares the connections to the guests' agents (the health checks use them too: a guest's
    /// agent port takes one connection).
    pub fn with_agents(mut self, agents: Arc<AgentLinks>) -> Self {
        self.agents = agents;
        self
    }

    /// The router, for [`serve`] and tests.
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route(
                "/v1/contracts/{contract}/logs",
                axum::routing::get(logs).options(preflight),
            )
            .route("/v1/contracts/{contract}/agent", axum::routing::get(agent))
            .with_state(self)
    }

    /// Checks the signature and time; returns the credentials (the nonce is used by
    /// [`Self::use_nonce`] once the signer is known to sign the contract).
    fn authenticate(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<access::Credentials, Refused> {
        let header = headers
            .get(header::AUTHORIZATION)
            .ok_or(AuthError::Missing)
            .map_err(unauthorized)?
            .to_str()
            .map_err(|_| unauthorized(AuthError::Malformed("not text")))?;
        let creds = access::parse(header).map_err(unauthorized)?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        creds
            .verify(method.as_str(), path, unix_now())
            .map_err(unauthorized)?;
        if creds.time < self.started {
            return Err(refused(
                StatusCode::UNAUTHORIZED,
                "the request was signed before the node's endpoint (re)started: sign it again",
            ));
        }
        Ok(creds)
    }

    /// Marks the request's nonce used; refuses a replay.
    fn use_nonce(&self, creds: &access::Credentials) -> Result<(), Refused> {
        let now = unix_now();
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        let mine = nonces.entry(creds.signer).or_default();
        if mine.len() >= MAX_NONCES_PER_SIGNER {
            mine.retain(|_, t| now.abs_diff(*t) <= MAX_CLOCK_SKEW_SECS);
        }
        if mine.contains_key(&creds.nonce) {
            return Err(unauthorized(AuthError::Replayed));
        }
        if mine.len() >= MAX_NONCES_PER_SIGNER {
            return Err(refused(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests with this key in the last minutes: try again later",
            ));
        }
        mine.insert(creds.nonce, creds.time);
        Ok(())
    }

    /// Whether `signer` signs `contract`, which runs on this node.
    async fn authorize(&self, contract: ContractId, signer: &[u8; 32]) -> Result<(), Refused> {
        let cached = self
            .signers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&contract)
            .filter(|(at, _)| at.elapsed() < SIGNERS_TTL)
            .map(|(_, v)| v.clone());
        let record = match cached {
            Some(record) => record,
            None => {
                let _lookup = self.lookups.acquire().await.map_err(|_| {
                    refused(StatusCode::SERVICE_UNAVAILABLE, "the node is shutting down")
                })?;
                let record = self
                    .directory
                    .node_and_signers(contract)
                    .await
                    .map_err(|e| {
                        warn!(contract, error = %format!("{e:#}"), "reading a contract's signers for the access endpoint");
                        refused(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the node cannot read the chain right now: try again",
                        )
                    })?;
                let mut cache = self.signers.lock().unwrap_or_else(|p| p.into_inner());
                cache.retain(|_, (at, _)| at.elapsed() < SIGNERS_TTL);
                cache.insert(contract, (Instant::now(), record.clone()));
                record
            }
        };
        let Some((node, signers)) = record else {
            return Err(refused(
                StatusCode::NOT_FOUND,
                format!("contract {contract} does not exist (an ended contract is removed)"),
            ));
        };
        if node != self.node {
            return Err(refused(
                StatusCode::NOT_FOUND,
                format!(
                    "contract {contract} runs on node {node}, not on this node ({})",
                    self.node
                ),
            ));
        }
        if !signers.contains(signer) {
            return Err(refused(
                StatusCode::FORBIDDEN,
                format!("the signing key is not a signer of contract {contract}"),
            ));
        }
        Ok(())
    }

    /// The console log of the named VM, or of the contract's only VM here.
    async fn console_of(
        &self,
        contract: ContractId,
        workload: Option<&str>,
    ) -> Result<(String, PathBuf), Refused> {
        let (name, dir) = self.vm_dir_of(contract, workload).await?;
        Ok((name, zos_vm::VmLayout::new(&dir).console_log()))
    }

    /// The directory of the named VM, or of the contract's only VM here.
    async fn vm_dir_of(
        &self,
        contract: ContractId,
        workload: Option<&str>,
    ) -> Result<(String, PathBuf), Refused> {
        let vms = self.contracts_dir.join(contract.to_string()).join("vms");
        let name = match workload {
            Some(name) => {
                if !is_workload_name(name) {
                    return Err(refused(
                        StatusCode::BAD_REQUEST,
                        "workload names are 1-36 characters of a-z, 0-9, '_' and '-'",
                    ));
                }
                name.to_string()
            }
            None => {
                let mut names = list_dirs(&vms).await;
                names.sort();
                match names.len() {
                    1 => names.remove(0),
                    0 => {
                        return Err(refused(
                            StatusCode::NOT_FOUND,
                            format!("contract {contract} runs no VM on this node (yet)"),
                        ))
                    }
                    _ => {
                        return Err(refused(
                            StatusCode::BAD_REQUEST,
                            format!(
                            "contract {contract} runs several VMs ({}): name one with workload=",
                            names.join(", ")
                        ),
                        ))
                    }
                }
            }
        };
        let dir = vms.join(&name);
        // A real directory, not a link planted by a tenant's process.
        let is_dir = tokio::fs::symlink_metadata(&dir)
            .await
            .is_ok_and(|m| m.is_dir());
        if !is_dir {
            return Err(refused(
                StatusCode::NOT_FOUND,
                format!("contract {contract} runs no VM named {name:?} on this node"),
            ));
        }
        Ok((name, dir))
    }
}

async fn list_dirs(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return out;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        if entry.file_type().await.is_ok_and(|t| t.is_dir()) {
            if let Ok(name) = entry.file_name().into_string() {
                out.push(name);
            }
        }
    }
    out
}

/// The query of a logs request.
#[derive(Debug, Default, PartialEq, Eq)]
struct LogsQuery {
    workload: Option<String>,
    lines: Option<usize>,
    follow: bool,
}

fn parse_query(query: Option<&str>) -> Result<LogsQuery, Refused> {
    let mut out = LogsQuery::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "workload" => out.workload = Some(value.to_string()),
            "lines" => {
                out.lines = Some(value.parse().map_err(|_| {
                    refused(StatusCode::BAD_REQUEST, "lines= takes a number of lines")
                })?)
            }
            "follow" => out.follow = matches!(value, "" | "1" | "true"),
            _ => {
                return Err(refused(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {key:?} (workload, lines, follow)"),
                ))
            }
        }
    }
    Ok(out)
}

/// Any web page may ask (the explorer, served from anywhere): requests are authorized by their
/// signature, never by cookies or the caller's address.
fn allow_any_origin(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    response
}

/// The browser's CORS preflight for a signed GET.
async fn preflight() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::ACCESS_CONTROL_ALLOW_METHODS, "GET"),
        (header::ACCESS_CONTROL_ALLOW_HEADERS, "authorization"),
        (header::ACCESS_CONTROL_MAX_AGE, "600"),
    ] {
        headers.insert(name, header::HeaderValue::from_static(value));
    }
    headers.insert(
        "access-control-allow-private-network",
        header::HeaderValue::from_static("true"),
    );
    allow_any_origin(response)
}

async fn logs(
    state: State<Arc<Access>>,
    contract: UrlPath<ContractId>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    allow_any_origin(
        match serve_logs(state, contract, method, uri, headers).await {
            Ok(response) => response,
            Err(refusal) => refusal.into_response(),
        },
    )
}

async fn serve_logs(
    State(access): State<Arc<Access>>,
    UrlPath(contract): UrlPath<ContractId>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let creds = access.authenticate(&method, &uri, &headers)?;
    let query = parse_query(uri.query())?;
    access.authorize(contract, &creds.signer).await?;
    access.use_nonce(&creds)?;
    let signer = creds.signer;
    let (workload, log) = access
        .console_of(contract, query.workload.as_deref())
        .await?;
    info!(
        contract,
        %workload,
        signer = %hex::encode(signer),
        follow = query.follow,
        "console read by a signer of the contract"
    );
    let busy = |what: &str| {
        refused(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("too many consoles {what} on this node right now: try again later"),
        )
    };
    // Held until the response is sent: a slow client keeps its console in memory that long.
    let reading = access
        .readers
        .clone()
        .try_acquire_owned()
        .map_err(|_| busy("read"))?;
    let follow = if query.follow {
        let all = access
            .followers
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy("followed"))?;
        Some((
            all,
            SignerSlot::take(&access.following, signer, MAX_FOLLOWERS_PER_SIGNER).ok_or_else(
                || {
                    refused(
                        StatusCode::TOO_MANY_REQUESTS,
                        format!("this key follows {MAX_FOLLOWERS_PER_SIGNER} consoles already"),
                    )
                },
            )?,
        ))
    } else {
        None
    };
    let (head, position) = {
        let log = log.clone();
        let lines = query.lines;
        tokio::task::spawn_blocking(move || {
            let (text, position) = read_console(&log);
            (Bytes::from(last_lines(&text, lines).to_string()), position)
        })
        .await
        .map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    };
    let content_type = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    let start = futures::stream::once(async move {
        let _reading = reading;
        Ok::<_, std::io::Error>(head)
    });
    let Some(slots) = follow else {
        return Ok((content_type, Body::from_stream(start)).into_response());
    };
    let until = Instant::now() + MAX_FOLLOW;
    let rest = futures::stream::unfold(
        (log, position, slots),
        move |(log, mut at, slots)| async move {
            loop {
                if Instant::now() >= until {
                    return None;
                }
                match next_output(&log, &mut at).await {
                    Next::Bytes(bytes) => return Some((Ok(Bytes::from(bytes)), (log, at, slots))),
                    Next::Gone => return None,
                    Next::Nothing => tokio::time::sleep(FOLLOW_POLL).await,
                }
            }
        },
    );
    use futures::StreamExt as _;
    Ok((content_type, Body::from_stream(start.chain(rest))).into_response())
}

/// One of a signer's follow streams or sessions; given back when dropped.
struct SignerSlot {
    following: Arc<Mutex<HashMap<[u8; 32], usize>>>,
    signer: [u8; 32],
}

impl SignerSlot {
    fn take(
        following: &Arc<Mutex<HashMap<[u8; 32], usize>>>,
        signer: [u8; 32],
        max: usize,
    ) -> Option<Self> {
        let mut map = following.lock().unwrap_or_else(|p| p.into_inner());
        let open = map.entry(signer).or_default();
        if *open >= max {
            return None;
        }
        *open += 1;
        Some(Self {
            following: following.clone(),
            signer,
        })
    }
}

impl Drop for SignerSlot {
    fn drop(&mut self) {
        let mut map = self.following.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(open) = map.get_mut(&self.signer) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                map.remove(&self.signer);
            }
        }
    }
}

/// The query of an agent session request.
#[derive(Debug, Default, PartialEq, Eq)]
struct AgentQuery {
    workload: Option<String>,
    /// Hex of the JSON `zos_guest_agent::Request`: inside the signed path, so the signature
    /// covers what is run.
    request: Vec<u8>,
}

fn parse_agent_query(query: Option<&str>) -> Result<AgentQuery, Refused> {
    let mut out = AgentQuery::default();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "workload" => out.workload = Some(value.to_string()),
            "request" => {
                out.request = hex::decode(value).map_err(|_| {
                    refused(
                        StatusCode::BAD_REQUEST,
                        "request= takes the hex of a JSON request",
                    )
                })?
            }
            _ => {
                return Err(refused(
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter {key:?} (workload, request)"),
                ))
            }
        }
    }
    Ok(out)
}

async fn agent(
    state: State<Arc<Access>>,
    contract: UrlPath<ContractId>,
    request: axum::extract::Request,
) -> Response {
    match serve_agent(state, contract, request).await {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    }
}

/// A session with the agent in a VM: authorized like a console read, then the connection is
/// upgraded to the agent's frame protocol and relayed.
async fn serve_agent(
    State(access): State<Arc<Access>>,
    UrlPath(contract): UrlPath<ContractId>,
    mut request: axum::extract::Request,
) -> Result<Response, Refused> {
    let creds = access.authenticate(request.method(), request.uri(), request.headers())?;
    let query = parse_agent_query(request.uri().query())?;
    let upgrade = request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok());
    if upgrade != Some(zos_guest_agent::UPGRADE_TOKEN) {
        return Err(refused(
            StatusCode::UPGRADE_REQUIRED,
            format!(
                "agent sessions upgrade the connection (Upgrade: {}); use zos exec, shell, ps or kill",
                zos_guest_agent::UPGRADE_TOKEN
            ),
        ));
    }
    let wanted: zos_guest_agent::Request = serde_json::from_slice(&query.request).map_err(|e| {
        refused(
            StatusCode::BAD_REQUEST,
            format!("the request is not understood: {e}"),
        )
    })?;
    wanted.check().map_err(|why| {
        refused(
            StatusCode::BAD_REQUEST,
            format!("the request is refused: {why}"),
        )
    })?;
    access.authorize(contract, &creds.signer).await?;
    access.use_nonce(&creds)?;
    let signer = creds.signer;
    let (workload, dir) = access
        .vm_dir_of(contract, query.workload.as_deref())
        .await?;
    let all = access.sessions.clone().try_acquire_owned().map_err(|_| {
        refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many sessions on this node right now: try again later",
        )
    })?;
    let mine = SignerSlot::take(&access.signer_sessions, signer, MAX_SESSIONS_PER_SIGNER)
        .ok_or_else(|| {
            refused(
                StatusCode::TOO_MANY_REQUESTS,
                format!("this key has {MAX_SESSIONS_PER_SIGNER} sessions open already"),
            )
        })?;
    let socket = zos_vm::VmLayout::new(&dir).agent_socket();
    let (session, first) = access
        .agents
        .open(&socket, &query.request)
        .await
        .map_err(|e| {
            refused(
                StatusCode::BAD_GATEWAY,
                format!("the VM {workload:?} cannot take a session: {e:#}"),
            )
        })?;
    info!(
        contract,
        %workload,
        signer = %hex::encode(signer),
        request = ?wanted,
        "agent session opened by a signer of the contract"
    );
    let upgraded = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let _slots = (all, mine);
        let started = Instant::now();
        let outcome = match upgraded.await {
            Ok(io) => relay(hyper_util::rt::TokioIo::new(io), session, first).await,
            Err(e) => format!("the upgrade failed: {e}"),
        };
        info!(
            contract,
            %workload,
            signer = %hex::encode(signer),
            seconds = started.elapsed().as_secs(),
            %outcome,
            "agent session ended"
        );
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    headers.insert(
        header::UPGRADE,
        header::HeaderValue::from_static(zos_guest_agent::UPGRADE_TOKEN),
    );
    Ok(response)
}

/// A write to the deployer, bounded: one who stops reading loses the session instead of
/// holding it (and its slot) open.
async fn to_deployer(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    frame: zos_guest_agent::Frame,
) -> std::io::Result<()> {
    tokio::time::timeout(DEPLOYER_WRITE_TIMEOUT, agent::write_frame(w, &frame))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Copies a session both ways until it ends; returns how it ended. The deployer may send
/// input, terminal sizes and signals; the node forwards the agent's frames as they come.
async fn relay(
    client: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    mut session: AgentSession,
    first: zos_guest_agent::Frame,
) -> String {
    use zos_guest_agent::{Frame, Kind};
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let to_client = |f: Frame| Frame { session: 0, ..f };
    let ends = |f: &Frame| matches!(f.kind, Kind::Exit | Kind::Error);
    let describe = |f: &Frame| match f.kind {
        Kind::Exit => format!("exit {}", f.int().unwrap_or(-1)),
        _ => format!("error: {}", String::from_utf8_lossy(&f.payload)),
    };
    if ends(&first) {
        session.ended();
        let how = describe(&first);
        let _ = to_deployer(&mut client_w, to_client(first)).await;
        return how;
    }
    if to_deployer(&mut client_w, to_client(first)).await.is_err() {
        return "the deployer went away".into();
    }
    // The deployer's frames through a channel: reading them is not cancel-safe.
    let (input_tx, mut input) = tokio::sync::mpsc::channel::<Frame>(16);
    let reader = tokio::spawn(async move {
        while let Ok(Some(frame)) = agent::read_frame(&mut client_r).await {
            if input_tx.send(frame).await.is_err() {
                break;
            }
        }
    });
    let outcome = loop {
        tokio::select! {
            from_client = input.recv() => match from_client {
                Some(f) if matches!(f.kind, Kind::Stdin | Kind::StdinEof | Kind::Resize | Kind::Signal) => {
                    if let Err(e) = session.send(f.kind, f.payload).await {
                        break format!("the agent link failed: {e:#}");
                    }
                }
                Some(_) => break "the deployer sent a frame it may not send".into(),
                None => break "the deployer went away".into(),
            },
            from_agent = session.frames.recv() => match from_agent {
                Some(f) => {
                    let end = ends(&f).then(|| describe(&f));
                    if end.is_some() {
                        session.ended();
                    }
                    let sent = to_deployer(&mut client_w, to_client(f)).await;
                    if let Some(how) = end {
                        break how;
                    }
                    if sent.is_err() {
                        break "the deployer went away or stopped reading".into();
                    }
                }
                None => {
                    // Not marked ended: the process is killed if the guest still runs it.
                    let _ = to_deployer(&mut client_w, Frame::error(0, "the session ended: the guest's agent went away (the VM stopped or restarted) or its output was not read fast enough")).await;
                    break "the agent link closed or the deployer did not keep up".into();
                }
            },
            _ = tokio::time::sleep(SESSION_IDLE) => {
                let _ = to_deployer(&mut client_w, Frame::error(0, format!("nothing moved for {} minutes: the session is closed", SESSION_IDLE.as_secs() / 60))).await;
                break "idle".into();
            }
        }
    };
    reader.abort();
    let _ = client_w.shutdown().await;
    outcome
}

/// Serves the access endpoint until the task is dropped.
pub async fn serve(addr: std::net::SocketAddr, access: Arc<Access>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the access endpoint on {addr}"))?;
    info!(%addr, "access endpoint listening (signed requests of contract signers)");
    let listener = CappedListener {
        inner: listener,
        slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    };
    axum::serve(listener, access.router())
        .await
        .context("access endpoint")
}

#[cfg(test)]
mod tests;
