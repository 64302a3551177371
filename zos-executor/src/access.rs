//! Deployers' access to their running workloads: `GET /v1/contracts/{id}/logs` returns (or,
//! with `follow=1`, streams) a VM's console - the guest's boot and, in container mode, its
//! entrypoint's output. Only a signer of the contract can read it: every request is signed
//! (see `zos_client::access`), its nonce used once, and the signer checked against the
//! contract at the finalized block. Each read is logged with its signer.
//!
//! Query: `workload=<name>` (may be left out when the contract has one VM here), `lines=<n>`
//! (the last n lines only), `follow=1`.

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
use tokio::{io::AsyncReadExt, sync::Semaphore};
use tracing::info;
use zos_client::{
    access::{self, AuthError, MAX_CLOCK_SKEW_SECS},
    chain::Chain,
};
use zos_primitives::{ContractId, NodeId};

/// Nonces remembered at once; a signer who sends more within the skew window waits.
const MAX_NONCES: usize = 65_536;
/// Follow streams open at once on this node.
const MAX_FOLLOWERS: usize = 32;
/// How long a contract's signers are trusted as read (a removed signer loses access after it).
const SIGNERS_TTL: Duration = Duration::from_secs(6);
/// How often a followed console is looked at for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(250);
/// Largest piece of a followed console sent at once.
const FOLLOW_CHUNK: usize = 64 * 1024;
/// Whole-console reads at once on this node (each holds a console in memory).
const MAX_READERS: usize = 8;
/// Most of one console file read (the log and its rotated half are each bounded far below).
const MAX_CONSOLE_FILE: u64 = 16 << 20;

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
    /// Nonce -> the request time it came with; dropped once outside the skew window.
    nonces: Mutex<HashMap<[u8; 16], u64>>,
    signers: Mutex<HashMap<ContractId, (Instant, Option<(NodeId, Vec<[u8; 32]>)>)>>,
    followers: Arc<Semaphore>,
    readers: Semaphore,
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
            readers: Semaphore::new(MAX_READERS),
        }
    }

    /// The router, for [`serve`] and tests.
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/v1/contracts/{contract}/logs", axum::routing::get(logs))
            .with_state(self)
    }

    /// Checks the signature, time and nonce; returns the signer's public key.
    fn authenticate(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<[u8; 32], Refused> {
        let unauthorized = |e: AuthError| refused(StatusCode::UNAUTHORIZED, e.to_string());
        let header = headers
            .get(header::AUTHORIZATION)
            .ok_or(AuthError::Missing)
            .map_err(unauthorized)?
            .to_str()
            .map_err(|_| unauthorized(AuthError::Malformed("not text")))?;
        let creds = access::parse(header).map_err(unauthorized)?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let now = unix_now();
        creds
            .verify(method.as_str(), path, now)
            .map_err(unauthorized)?;
        // Only after the signature: an unsigned flood cannot fill the table.
        let mut nonces = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        if nonces.len() >= MAX_NONCES {
            nonces.retain(|_, t| now.abs_diff(*t) <= MAX_CLOCK_SKEW_SECS);
        }
        if nonces.contains_key(&creds.nonce) {
            return Err(unauthorized(AuthError::Replayed));
        }
        if nonces.len() >= MAX_NONCES {
            return Err(refused(
                StatusCode::TOO_MANY_REQUESTS,
                "too many requests in the last minutes: try again later",
            ));
        }
        nonces.insert(creds.nonce, creds.time);
        Ok(creds.signer)
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
                let record = self
                    .directory
                    .node_and_signers(contract)
                    .await
                    .map_err(|e| {
                        refused(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("the node cannot read the chain right now: {e:#}"),
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
                    _ => return Err(refused(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "contract {contract} runs several VMs ({}): name one with workload=",
                            names.join(", ")
                        ),
                    )),
                }
            }
        };
        let dir = vms.join(&name);
        if !tokio::fs::try_exists(&dir).await.unwrap_or(false) {
            return Err(refused(
                StatusCode::NOT_FOUND,
                format!("contract {contract} runs no VM named {name:?} on this node"),
            ));
        }
        Ok((name, zos_vm::VmLayout::new(&dir).console_log()))
    }
}

fn is_workload_name(name: &str) -> bool {
    (1..=36).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
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

/// The last `lines` lines of `text` (all of it for `None`).
fn last_lines(text: &str, lines: Option<usize>) -> &str {
    let Some(n) = lines else { return text };
    let trimmed = text.strip_suffix('\n').unwrap_or(text);
    match trimmed.rmatch_indices('\n').nth(n.saturating_sub(1)) {
        Some((i, _)) if n > 0 => &text[i + 1..],
        _ if n == 0 => "",
        _ => text,
    }
}

async fn logs(
    State(access): State<Arc<Access>>,
    UrlPath(contract): UrlPath<ContractId>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, Refused> {
    let signer = access.authenticate(&method, &uri, &headers)?;
    let query = parse_query(uri.query())?;
    access.authorize(contract, &signer).await?;
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
    let busy = || {
        refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many consoles read on this node right now: try again",
        )
    };
    let (text, offset) = {
        let _reading = access.readers.try_acquire().map_err(|_| busy())?;
        let log = log.clone();
        tokio::task::spawn_blocking(move || read_console(&log))
            .await
            .map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    };
    let head = last_lines(&text, query.lines).to_string();
    let content_type = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if !query.follow {
        return Ok((content_type, head).into_response());
    }
    let permit = access.followers.clone().try_acquire_owned().map_err(|_| {
        refused(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many consoles followed on this node: try again later",
        )
    })?;
    let start = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) });
    let rest = futures::stream::unfold(
        (log, offset, permit),
        |(log, mut offset, permit)| async move {
            loop {
                // The VM's directory goes with the VM: the stream ends with it.
                let Ok(meta) = tokio::fs::symlink_metadata(&log).await else {
                    let dir = log.parent()?;
                    if !tokio::fs::try_exists(dir).await.unwrap_or(false) {
                        return None;
                    }
                    tokio::time::sleep(FOLLOW_POLL).await;
                    continue;
                };
                if meta.len() < offset {
                    offset = 0; // rotated: the new file from its start
                }
                if meta.len() == offset {
                    tokio::time::sleep(FOLLOW_POLL).await;
                    continue;
                }
                match read_from(&log, offset, FOLLOW_CHUNK).await {
                    Ok(bytes) if !bytes.is_empty() => {
                        offset = offset.saturating_add(bytes.len() as u64);
                        return Some((Ok(Bytes::from(bytes)), (log, offset, permit)));
                    }
                    _ => tokio::time::sleep(FOLLOW_POLL).await,
                }
            }
        },
    );
    use futures::StreamExt as _;
    Ok((content_type, Body::from_stream(start.chain(rest))).into_response())
}

/// Opens a console file for reading without following a symlink: the VM's directory is
/// shared with processes of the tenant's (the guest's hypervisor), whose link to a host file
/// must not be served.
fn open_console(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| {
            if f.metadata()?.is_file() {
                Ok(f)
            } else {
                Err(std::io::Error::other("not a regular file"))
            }
        })
}

/// The rotated and current console (oldest first, lossily as text) and the current file's
/// length, where following goes on.
fn read_console(log: &Path) -> (String, u64) {
    use std::io::Read as _;
    let mut out = Vec::new();
    let mut current_len = 0;
    for (path, is_current) in [
        (zos_vm::console::RotatingLog::rotated_path(log), false),
        (log.to_path_buf(), true),
    ] {
        let Ok(file) = open_console(&path) else {
            continue;
        };
        let before = out.len();
        if file.take(MAX_CONSOLE_FILE).read_to_end(&mut out).is_err() {
            out.truncate(before);
        }
        if is_current {
            current_len = (out.len() - before) as u64;
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), current_len)
}

async fn read_from(path: &Path, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncSeekExt as _;
    let mut file = tokio::fs::File::from_std(open_console(path)?);
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut buf = Vec::with_capacity(max.min(8192));
    file.take(max as u64).read_to_end(&mut buf).await?;
    Ok(buf)
}

/// Serves the access endpoint until the task is dropped.
pub async fn serve(addr: std::net::SocketAddr, access: Arc<Access>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the access endpoint on {addr}"))?;
    info!(%addr, "access endpoint listening (signed requests of contract signers)");
    axum::serve(listener, access.router())
        .await
        .context("access endpoint")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_unknown_parameters_are_refused() {
        assert_eq!(
            parse_query(Some("workload=web&lines=20&follow=1")).unwrap(),
            LogsQuery {
                workload: Some("web".into()),
                lines: Some(20),
                follow: true
            }
        );
        assert_eq!(parse_query(None).unwrap(), LogsQuery::default());
        assert!(parse_query(Some("lines=x")).is_err());
        assert!(parse_query(Some("path=../../etc")).is_err());
    }

    #[test]
    fn last_lines_keeps_the_end() {
        let text = "a\nb\nc\n";
        assert_eq!(last_lines(text, None), text);
        assert_eq!(last_lines(text, Some(2)), "b\nc\n");
        assert_eq!(last_lines(text, Some(3)), text);
        assert_eq!(last_lines(text, Some(9)), text);
        assert_eq!(last_lines(text, Some(0)), "");
        assert_eq!(last_lines("a\nb", Some(1)), "b");
    }

    struct Directory(HashMap<ContractId, (NodeId, Vec<[u8; 32]>)>);

    #[async_trait::async_trait]
    impl ContractDirectory for Directory {
        async fn node_and_signers(
            &self,
            contract: ContractId,
        ) -> Result<Option<(NodeId, Vec<[u8; 32]>)>> {
            Ok(self.0.get(&contract).cloned())
        }
    }

    /// An HTTP/1.1 GET over a fresh connection: status and body (read to the end, or for
    /// `read_for` only).
    async fn get(
        addr: std::net::SocketAddr,
        path: &str,
        auth: Option<&str>,
        read_for: Option<Duration>,
    ) -> (u16, String) {
        use tokio::io::AsyncWriteExt as _;
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let auth = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: node\r\n{auth}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        match read_for {
            None => {
                stream.read_to_end(&mut buf).await.unwrap();
            }
            Some(span) => {
                let _ = tokio::time::timeout(span, stream.read_to_end(&mut buf)).await;
            }
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text[9..12].parse().unwrap();
        let body = text
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string();
        (status, body)
    }

    fn signed(key: &subxt_signer::sr25519::Keypair, path: &str) -> String {
        access::authorization(key, "GET", path, unix_now())
    }

    #[tokio::test]
    async fn only_a_signer_of_a_contract_on_this_node_reads_its_console_once_per_signature() {
        use subxt_signer::sr25519::dev;
        let tmp = tempfile::tempdir().unwrap();
        let contracts = tmp.path().join("contracts");
        for (contract, vm) in [(1, "web"), (2, "a"), (2, "b")] {
            let dir = contracts.join(format!("{contract}/vms/{vm}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("console.log"), format!("boot of {vm}\nready\n")).unwrap();
        }
        // A console replaced by a link to a host file (by a tenant's process sharing the VM's
        // directory) is not followed.
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, "host secret").unwrap();
        std::fs::create_dir_all(contracts.join("5/vms/x")).unwrap();
        std::os::unix::fs::symlink(&secret, contracts.join("5/vms/x/console.log")).unwrap();
        let alice = dev::alice().public_key().0;
        let directory = Directory(HashMap::from([
            (5, (5, vec![alice])),
            (1, (5, vec![alice])),
            (2, (5, vec![alice])),
            (3, (6, vec![alice])),
        ]));
        let access = Arc::new(Access::new(Arc::new(directory), 5, contracts.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, access.router()).await });

        let path = "/v1/contracts/1/logs";
        let header = signed(&dev::alice(), path);
        assert_eq!(
            get(addr, path, Some(&header), None).await,
            (200, "boot of web\nready\n".into())
        );
        let (status, body) = get(addr, path, Some(&header), None).await;
        assert_eq!((status, body.contains("replayed")), (401, true), "{body}");
        let (status, body) = get(addr, path, None, None).await;
        assert_eq!(
            (status, body.contains("no Authorization")),
            (401, true),
            "{body}"
        );
        let (status, body) = get(addr, path, Some(&signed(&dev::bob(), path)), None).await;
        assert_eq!(
            (status, body.contains("not a signer")),
            (403, true),
            "{body}"
        );
        // Signed for another path: the signature does not carry over.
        let other = "/v1/contracts/1/logs?lines=1";
        let (status, body) = get(addr, other, Some(&header), None).await;
        assert_eq!((status, body.contains("signature")), (401, true), "{body}");
        assert_eq!(
            get(addr, other, Some(&signed(&dev::alice(), other)), None).await,
            (200, "ready\n".into())
        );
        let linked = "/v1/contracts/5/logs";
        assert_eq!(
            get(addr, linked, Some(&signed(&dev::alice(), linked)), None).await,
            (200, String::new())
        );
        for (path, want, says) in [
            ("/v1/contracts/3/logs", 404, "runs on node 6"),
            ("/v1/contracts/4/logs", 404, "does not exist"),
            ("/v1/contracts/2/logs", 400, "several VMs (a, b)"),
            ("/v1/contracts/2/logs?workload=c", 404, "no VM named \"c\""),
            ("/v1/contracts/2/logs?workload=..", 400, "workload names"),
        ] {
            let (status, body) = get(addr, path, Some(&signed(&dev::alice(), path)), None).await;
            assert_eq!(
                (status, body.contains(says)),
                (want, true),
                "{path}: {body}"
            );
        }

        // Following: what the guest prints later arrives on the open request.
        let follow = "/v1/contracts/2/logs?workload=b&follow=1";
        let header = signed(&dev::alice(), follow);
        let log = contracts.join("2/vms/b/console.log");
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(600)).await;
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new().append(true).open(log).unwrap();
            f.write_all(b"later line\n").unwrap();
        });
        let (status, body) = get(addr, follow, Some(&header), Some(Duration::from_secs(2))).await;
        writer.await.unwrap();
        assert_eq!(status, 200);
        assert!(
            body.contains("boot of b") && body.contains("later line"),
            "{body}"
        );
    }

    #[test]
    fn workload_names_cannot_leave_the_contract_directory() {
        assert!(is_workload_name("web-1_a"));
        for bad in ["", "..", "../x", "a/b", "Web", &"a".repeat(37)] {
            assert!(!is_workload_name(bad), "{bad}");
        }
    }
}
