//! Sessions with a VM's guest agent (`zos exec`, `shell`, `ps`, `kill`): the signed request
//! upgraded to the agent's frame protocol and relayed both ways.

use super::*;

/// The query of an agent session request.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct AgentQuery {
    workload: Option<String>,
    /// Hex of the JSON `zos_guest_agent::Request`: inside the signed path, so the signature
    /// covers what is run.
    request: Vec<u8>,
}

pub(super) fn parse_agent_query(query: Option<&str>) -> Result<AgentQuery, Refused> {
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

pub(super) async fn agent(
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
pub(super) async fn serve_agent(
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
pub(super) async fn to_deployer(
    w: &mut (impl tokio::io::AsyncWrite + Unpin),
    frame: zos_guest_agent::Frame,
) -> std::io::Result<()> {
    tokio::time::timeout(DEPLOYER_WRITE_TIMEOUT, agent::write_frame(w, &frame))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Copies a session both ways until it ends; returns how it ended. The deployer may send
/// input, terminal sizes and signals; the node forwards the agent's frames as they come.
pub(super) async fn relay(
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
