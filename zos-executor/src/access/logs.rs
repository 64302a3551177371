//! Console reads: `GET /v1/contracts/{id}/logs`, once or followed.

use super::*;

/// The query of a logs request.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct LogsQuery {
    pub(super) workload: Option<String>,
    pub(super) lines: Option<usize>,
    pub(super) follow: bool,
}

pub(super) fn parse_query(query: Option<&str>) -> Result<LogsQuery, Refused> {
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
pub(super) fn allow_any_origin(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::HeaderValue::from_static("*"),
    );
    response
}

/// The browser's CORS preflight for a signed GET.
pub(super) async fn preflight() -> Response {
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

pub(super) async fn logs(
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

pub(super) async fn serve_logs(
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
