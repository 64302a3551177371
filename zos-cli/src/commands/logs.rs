//! `zos logs`: a workload's console, read from its node's access endpoint with a request
//! signed by --key (one of the contract's signers).

use std::io::{Read, Write};

use zos_client::access::{self, DEFAULT_PORT};

use super::*;

/// What `zos logs` asks for.
pub(crate) struct LogsRequest<'a> {
    pub contract: ContractId,
    pub workload: Option<&'a str>,
    pub lines: Option<usize>,
    pub follow: bool,
    /// The node's access endpoint; default: from its public config on chain.
    pub node_url: Option<&'a str>,
}

pub(super) async fn logs(ctx: &Ctx, req: LogsRequest<'_>) -> Result<i32> {
    let key = ctx.key.as_deref().ok_or_else(|| {
        anyhow!(
            "the node serves logs to the contract's signers only: give --key (e.g. --key //Alice)"
        )
    })?;
    let key = parse_key(key)?;
    if let Some(w) = req.workload {
        if !access::is_workload_name(w) {
            bail!("--workload {w:?}: workload names are 1-36 characters of a-z, 0-9, '_' and '-'");
        }
    }
    let base = node_base_url(ctx, req.contract, req.node_url).await?;
    let mut path = format!("/v1/contracts/{}/logs", req.contract);
    let mut query = Vec::new();
    if let Some(w) = req.workload {
        query.push(format!("workload={w}"));
    }
    if let Some(n) = req.lines {
        query.push(format!("lines={n}"));
    }
    if req.follow {
        query.push("follow=1".into());
    }
    if !query.is_empty() {
        path = format!("{path}?{}", query.join("&"));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let authorization = access::authorization(&key, "GET", &path, now);
    let url = format!("{base}{path}");
    // Blocking HTTP on its own thread: the console is copied to stdout as it arrives.
    tokio::task::spawn_blocking(move || fetch(&url, &authorization)).await??;
    Ok(0)
}

/// The node's access endpoint: `--node-url` when given (checked), else from the chain.
pub(super) async fn node_base_url(
    ctx: &Ctx,
    contract: ContractId,
    node_url: Option<&str>,
) -> Result<String> {
    match node_url {
        Some(url) => {
            let base = url.trim_end_matches('/');
            let after_scheme = base.split_once("://").map_or(base, |(_, rest)| rest);
            if !(base.starts_with("http://") || base.starts_with("https://"))
                || after_scheme.contains('/')
            {
                bail!("--node-url {url:?}: give the node's address as http://HOST:PORT, without a path");
            }
            Ok(base.to_string())
        }
        None => node_access_url(ctx, contract).await,
    }
}

fn fetch(url: &str, authorization: &str) -> Result<()> {
    // No overall timeout: a followed console stays open until interrupted.
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(10))
        .build();
    let response = agent.get(url).set("Authorization", authorization).call();
    let response = match response {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let why = r.into_string().unwrap_or_default();
            bail!("the node refused ({code}): {}", why.trim());
        }
        Err(e) => bail!("reaching the node at {url}: {e}"),
    };
    let mut reader = response.into_reader();
    let mut stdout = std::io::stdout().lock();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut buf).context("reading the console")?;
        if n == 0 {
            return Ok(());
        }
        stdout.write_all(&buf[..n])?;
        stdout.flush()?;
    }
}

/// `http://<host>:9102` of the node running `contract`, from the node's public config.
async fn node_access_url(ctx: &Ctx, contract: ContractId) -> Result<String> {
    let chain = ctx.chain().await?;
    let at = chain.api.at_current_block().await?;
    let node = at
        .storage()
        .try_fetch(runtime::storage().deployments().contracts(), (contract,))
        .await?
        .ok_or_else(|| anyhow!("contract {contract} not found (ended contracts are removed)"))?
        .decode()?
        .node;
    let record = at
        .storage()
        .try_fetch(runtime::storage().grid().nodes(), (node,))
        .await?
        .ok_or_else(|| anyhow!("node {node} of contract {contract} not found"))?
        .decode()?;
    let host = record.public_config.as_ref().and_then(|c| {
        let domain = c.domain.as_ref().map(|d| format::text(&d.0));
        let v4 = c.ipv4.as_ref().map(|v| format::ip(v.ip.ip));
        let v6 = c
            .ipv6
            .as_ref()
            .map(|v| format!("[{}]", format::ipv6(v.ip.ip)));
        domain.or(v4).or(v6)
    });
    let host = host.ok_or_else(|| {
        anyhow!("node {node} declares no public address: give its access endpoint with --node-url (http://<address>:{DEFAULT_PORT})")
    })?;
    Ok(format!("http://{host}:{DEFAULT_PORT}"))
}
