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
mod logs;
mod session;

use agent::{AgentLinks, AgentSession};

use console::{last_lines, next_output, read_console, Next};
use listener::CappedListener;
use logs::{logs, preflight};
use session::agent;

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
