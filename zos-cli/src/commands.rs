//! The commands. Each builds a JSON value (for `--json`) and a human rendering of it.

use std::{collections::BTreeSet, path::PathBuf, process::Command as Process, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value as Json};
use subxt::{dynamic::At, ext::scale_value::Value, utils::AccountId32};
use subxt_signer::sr25519::Keypair;
use zos_client::chain::{convert, runtime};
use zos_primitives::{
    billing::ContractBillingStatus,
    contracts::{ContractState, ContractSummary},
    spec::{DeploymentSpec, WorkloadKind, WorkloadName},
    ContractId, NodeStatus, PublicIpv4Config, PublicIpv6Config, Resources, MAX_IPV6_PREFIX_FOR_VMS,
};

use crate::{
    client::{arg, event_list, Chain, TxEvents},
    format,
    keys::{parse_account, parse_key},
    specfile::{
        load_spec, parse_amount, parse_cidr, parse_cidr6, parse_hash, parse_ipv4, parse_ipv6,
        SignerArg,
    },
    Cli, Command, ContractCmd, FarmCmd, FarmIpCmd, KeyCmd, NetworkCmd, NodeCmd,
};

use runtime::runtime_types::bounded_collections::bounded_vec::BoundedVec;

/// What a command prints.
pub(crate) struct Out {
    json: Json,
    human: String,
}

impl Out {
    pub(crate) fn new(json: Json, human: impl Into<String>) -> Self {
        Self {
            json,
            human: human.into(),
        }
    }
}

pub(crate) struct Ctx {
    url: String,
    key: Option<String>,
    pub(crate) json: bool,
    pub(crate) timeout: Duration,
}

impl Ctx {
    pub(crate) fn signer(&self) -> Result<Keypair> {
        let key = self.key.as_deref().ok_or_else(|| {
            anyhow!("this command signs a transaction: give --key (e.g. --key //Alice)")
        })?;
        parse_key(key).map_err(Into::into)
    }

    pub(crate) async fn chain(&self) -> Result<Chain> {
        Chain::connect(&self.url).await
    }
}

pub async fn run(cli: Cli) -> Result<i32> {
    let ctx = Ctx {
        url: cli.url,
        key: cli.key,
        json: cli.json,
        timeout: Duration::from_secs(cli.timeout.max(1)),
    };
    let out = match cli.command {
        Command::Image { args } => return image_passthrough(&args),
        Command::Events {
            contract,
            from,
            follow,
        } => return events(&ctx, contract, from, follow).await,
        Command::Farm(FarmCmd::Create { name }) => farm_create(&ctx, &name).await?,
        Command::Farm(FarmCmd::Ip(FarmIpCmd::Add {
            farm,
            cidr,
            gateway,
        })) => farm_ip_add(&ctx, farm, &cidr, &gateway).await?,
        Command::Farm(FarmCmd::List) => farm_list(&ctx).await?,
        Command::Node(NodeCmd::List { farm }) => node_list(&ctx, farm).await?,
        Command::Node(NodeCmd::Show { id }) => node_show(&ctx, id).await?,
        Command::Node(NodeCmd::PublicConfig {
            id,
            ipv4,
            gw4,
            ipv6,
            gw6,
            domain,
            clear,
        }) => {
            let config = NodePublic::from_args(
                ipv4.as_deref(),
                gw4.as_deref(),
                ipv6.as_deref(),
                gw6.as_deref(),
                domain.as_deref(),
                clear,
            )?;
            node_public_config(&ctx, id, config).await?
        }
        Command::Deploy {
            spec,
            node,
            signers,
            image,
        } => {
            let spec = load_spec(&spec, &image)?;
            deploy(&ctx, spec, node, &signers.signers, signers.threshold).await?
        }
        Command::Approve { contracts, hash } => match contracts.as_slice() {
            [contract] => vote(&ctx, *contract, hash.as_deref(), true).await?,
            _ if hash.is_some() => bail!(
                "--hash names one proposal: with several contracts each pending proposal's hash \
                 is read from the chain (and shown before approving)"
            ),
            _ => crate::multi_deploy::approve_all(&ctx, &contracts).await?,
        },
        Command::Reject { contract, hash } => vote(&ctx, contract, hash.as_deref(), false).await?,
        Command::Update {
            contract,
            spec,
            image,
        } => update(&ctx, contract, spec, &image).await?,
        Command::Cancel { contract } => cancel(&ctx, contract).await?,
        Command::Contract(ContractCmd::Show { id }) => contract_show(&ctx, id).await?,
        Command::Contract(ContractCmd::List { owner }) => {
            contract_list(&ctx, owner.as_deref()).await?
        }
        Command::Transfer { to, amount } => transfer(&ctx, &to, &amount).await?,
        Command::Key(KeyCmd::Show) => {
            let account = ctx.signer()?.public_key().to_account_id();
            Out::new(
                json!({ "account": account.to_string() }),
                account.to_string(),
            )
        }
        Command::Key(KeyCmd::New { path }) => {
            let id = zos_client::identity::NodeIdentity::load_or_create(&path)?;
            let account = id.account_id().to_string();
            Out::new(
                json!({ "account": account, "box_key": hex::encode(id.box_public), "path": path.display().to_string() }),
                format!(
                    "{}\naccount {account}\nbox key {}",
                    path.display(),
                    hex::encode(id.box_public)
                ),
            )
        }
        Command::Check { spec, image } => {
            let spec = load_spec(&spec, &image)?;
            let required = spec.required_resources();
            let mut human = format!(
                "ok: version {}, hash 0x{}\n",
                spec.version,
                hex::encode(spec.hash())
            );
            human.push_str(&format!(
                "needs {}, {} public IPv4\n",
                format::resources(&required.resources),
                required.public_ipv4
            ));
            for line in format::spec_lines(&spec) {
                human.push_str(&format!("  {line}\n"));
            }
            Out::new(
                json!({ "hash": hex0x(&spec.hash()), "required": required, "spec": spec }),
                human.trim_end(),
            )
        }
        Command::SealKey { node, wg_key } => seal_key(&ctx, node, wg_key.as_deref()).await?,
        Command::Network(NetworkCmd::Plan { file, out }) => {
            crate::network_cmd::plan(&ctx, &file, out.as_deref()).await?
        }
        Command::DeployMulti {
            file,
            signers,
            image,
            out,
        } => {
            crate::multi_deploy::deploy_multi(&ctx, &file, &signers, &image, out.as_deref()).await?
        }
    };
    if ctx.json {
        println!("{}", out.json);
    } else {
        println!("{}", out.human);
    }
    Ok(0)
}

fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// The zos-image binary: `ZOS_IMAGE_BIN`, else next to this executable, else on PATH.
fn image_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ZOS_IMAGE_BIN") {
        return path.into();
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let sibling = dir.join("zos-image");
            if sibling.is_file() {
                return sibling;
            }
        }
    }
    PathBuf::from("zos-image")
}

fn image_passthrough(args: &[String]) -> Result<i32> {
    let bin = image_binary();
    let status = Process::new(&bin).args(args).status().with_context(|| {
        format!(
            "running {} (build it with `cargo build -p zos-image` or set ZOS_IMAGE_BIN)",
            bin.display()
        )
    })?;
    Ok(status.code().unwrap_or(1))
}

fn bounded_bytes<T: codec::Decode>(bytes: &[u8]) -> Result<T> {
    // A bounded byte vector is SCALE-encoded exactly like a Vec<u8>.
    convert(&bytes.to_vec())
}

fn events_json(events: &TxEvents) -> Result<Json> {
    Ok(Json::Array(
        event_list(events)?
            .into_iter()
            .map(|(p, n, f)| json!({ "event": format!("{p}.{n}"), "fields": pretty_fields(&f) }))
            .collect(),
    ))
}

fn field_u128(v: &Value, name: &str) -> Option<u128> {
    v.at(name).and_then(|x| x.as_u128())
}

// ---- farms and nodes

async fn farm_create(ctx: &Ctx, name: &str) -> Result<Out> {
    let signer = ctx.signer()?;
    let chain = ctx.chain().await?;
    let call = runtime::tx()
        .grid()
        .create_farm(bounded_bytes(name.as_bytes())?);
    let events = chain.submit(&call, &signer, ctx.timeout).await?;
    let created = events
        .find_first::<runtime::grid::events::FarmCreated>()
        .ok_or_else(|| anyhow!("no FarmCreated event"))??;
    Ok(Out::new(
        json!({ "farm": created.farm_id, "name": name, "owner": created.owner.to_string() }),
        format!("farm {} created: {name}", created.farm_id),
    ))
}

async fn farm_ip_add(ctx: &Ctx, farm: u32, cidr: &str, gateway: &str) -> Result<Out> {
    let signer = ctx.signer()?;
    let config = PublicIpv4Config {
        ip: parse_cidr(cidr)?,
        gateway: parse_ipv4(gateway)?,
    };
    let chain = ctx.chain().await?;
    let call = runtime::tx().grid().add_farm_ip(farm, convert(&config)?);
    chain.submit(&call, &signer, ctx.timeout).await?;
    Ok(Out::new(
        json!({ "farm": farm, "ip": format::cidr(&config.ip), "gateway": format::ip(config.gateway) }),
        format!(
            "farm {farm}: added {} (gateway {})",
            format::cidr(&config.ip),
            format::ip(config.gateway)
        ),
    ))
}

async fn farm_list(ctx: &Ctx) -> Result<Out> {
    let chain = ctx.chain().await?;
    let at = chain.api.at_current_block().await?;
    let mut entries = at
        .storage()
        .iter(runtime::storage().grid().farms(), ())
        .await?;
    let mut farms = Vec::new();
    while let Some(kv) = entries.next().await {
        farms.push(kv?.value().decode()?);
    }
    farms.sort_by_key(|f| f.id);
    let mut rows = Vec::new();
    let mut human = vec![format!(
        "{:>5}  {:<24} {:<50} {:>4} {:>4}",
        "FARM", "NAME", "OWNER", "IPS", "FREE"
    )];
    for f in &farms {
        let name = format::text(&f.name.0);
        let free = f
            .public_ips
            .0
            .iter()
            .filter(|e| e.assigned.is_none())
            .count();
        let ips: Vec<Json> = f
            .public_ips
            .0
            .iter()
            .map(|e| {
                let c: PublicIpv4Config = convert(&e.config).unwrap_or(PublicIpv4Config {
                    ip: zos_primitives::Ipv4Cidr { ip: [0; 4], prefix_len: 0 },
                    gateway: [0; 4],
                });
                json!({ "ip": format::cidr(&c.ip), "gateway": format::ip(c.gateway), "assigned": e.assigned.is_some() })
            })
            .collect();
        human.push(format!(
            "{:>5}  {:<24} {:<50} {:>4} {:>4}",
            f.id,
            name,
            f.owner.to_string(),
            ips.len(),
            free
        ));
        rows.push(
            json!({ "farm": f.id, "name": name, "owner": f.owner.to_string(), "public_ips": ips }),
        );
    }
    if farms.is_empty() {
        human = vec!["no farms".into()];
    }
    Ok(Out::new(Json::Array(rows), human.join("\n")))
}

async fn node_status(chain: &Chain, node: u32) -> Result<&'static str> {
    let status: Option<NodeStatus> = chain
        .runtime_call("GridApi_node_status", &arg(&node))
        .await?;
    Ok(match status {
        Some(NodeStatus::Online) => "online",
        Some(NodeStatus::Offline) => "offline",
        None => "unknown",
    })
}

async fn node_list(ctx: &Ctx, farm: Option<u32>) -> Result<Out> {
    let chain = ctx.chain().await?;
    let at = chain.api.at_current_block().await?;
    let mut entries = at
        .storage()
        .iter(runtime::storage().grid().nodes(), ())
        .await?;
    let mut nodes = Vec::new();
    while let Some(kv) = entries.next().await {
        let node = kv?.value().decode()?;
        if farm.is_none_or(|f| f == node.farm_id) {
            nodes.push(node);
        }
    }
    nodes.sort_by_key(|n| n.id);
    let mut rows = Vec::new();
    let mut human = vec![format!(
        "{:>5} {:>5}  {:<8} {:>9}  {:<50} CAPACITY",
        "NODE", "FARM", "STATUS", "CONTRACTS", "ACCOUNT"
    )];
    for n in &nodes {
        let status = node_status(&chain, n.id).await?;
        let capacity: Resources = convert(&n.capacity)?;
        human.push(format!(
            "{:>5} {:>5}  {:<8} {:>9}  {:<50} {}",
            n.id,
            n.farm_id,
            status,
            n.active_contracts,
            n.account.to_string(),
            format::resources(&capacity)
        ));
        rows.push(json!({
            "node": n.id, "farm": n.farm_id, "status": status, "account": n.account.to_string(),
            "active_contracts": n.active_contracts, "capacity": capacity,
        }));
    }
    if nodes.is_empty() {
        human = vec!["no nodes".into()];
    }
    Ok(Out::new(Json::Array(rows), human.join("\n")))
}

async fn node_show(ctx: &Ctx, id: u32) -> Result<Out> {
    let chain = ctx.chain().await?;
    let at = chain.api.at_current_block().await?;
    let Some(n) = at
        .storage()
        .try_fetch(runtime::storage().grid().nodes(), (id,))
        .await?
    else {
        bail!("node {id} not found");
    };
    let n = n.decode()?;
    let status = node_status(&chain, id).await?;
    let capacity: Resources = convert(&n.capacity)?;
    let reserved: Resources = convert(&n.reserved)?;
    let free: Option<Resources> = chain
        .runtime_call("GridApi_free_capacity", &arg(&id))
        .await?;
    let version = format::text(&n.executor_version.0);
    let heartbeat = n.last_heartbeat.as_ref().map(|h| h.block);
    let public = n
        .public_config
        .as_ref()
        .map(NodePublic::from_chain)
        .transpose()?;
    let mut human = format!(
        "node {id} (farm {})\n  account    {}\n  status     {status}{}\n  executor   {version}\n  box key    {}\n  capacity   {}\n  reserved   {}\n  free       {}\n  contracts  {} (public IPs {})",
        n.farm_id,
        n.account,
        heartbeat.map(|b| format!(", last heartbeat at block {b}")).unwrap_or_default(),
        hex::encode(n.box_key),
        format::resources(&capacity),
        format::resources(&reserved),
        free.as_ref().map(format::resources).unwrap_or_else(|| "-".into()),
        n.active_contracts,
        n.assigned_ips,
    );
    match &public {
        Some(p) => {
            for line in p.lines() {
                human.push_str(&format!("\n  {line}"));
            }
        }
        None => human.push_str("\n  public     none declared (zos node public-config)"),
    }
    Ok(Out::new(
        json!({
            "node": id, "farm": n.farm_id, "account": n.account.to_string(), "status": status,
            "executor_version": version, "box_key": hex::encode(n.box_key), "capacity": capacity,
            "reserved": reserved, "free": free, "active_contracts": n.active_contracts,
            "assigned_ips": n.assigned_ips, "last_heartbeat_block": heartbeat,
            "public_config": public.as_ref().map(NodePublic::json),
        }),
        human,
    ))
}

/// The DNS limit on a name's length, which is also the chain's bound on a node's domain.
const MAX_DOMAIN_LEN: usize = 253;

/// A node's public config (pallet-grid's `PublicConfig`) in primitives types.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NodePublic {
    ipv4: Option<PublicIpv4Config>,
    ipv6: Option<PublicIpv6Config>,
    domain: Option<String>,
}

impl NodePublic {
    /// What `zos node public-config` declares; `None` with `--clear`. The addresses are only
    /// parsed here: the chain checks them (test networks accept documentation ranges) and its
    /// error names say what is wrong.
    fn from_args(
        ipv4: Option<&str>,
        gw4: Option<&str>,
        ipv6: Option<&str>,
        gw6: Option<&str>,
        domain: Option<&str>,
        clear: bool,
    ) -> Result<Option<Self>> {
        let given = [ipv4, gw4, ipv6, gw6, domain];
        if clear {
            if given.iter().any(Option::is_some) {
                bail!(
                    "--clear removes the node's whole public config: give it without --ipv4, \
                     --gw4, --ipv6, --gw6 and --domain"
                );
            }
            return Ok(None);
        }
        if given.iter().all(Option::is_none) {
            bail!(
                "nothing to declare: give --ipv4 with --gw4, --ipv6 with --gw6, --domain, or \
                 --clear"
            );
        }
        let ipv4 = match (ipv4, gw4) {
            (Some(ip), Some(gw)) => Some(PublicIpv4Config {
                ip: parse_cidr(ip).context("--ipv4")?,
                gateway: parse_ipv4(gw).context("--gw4")?,
            }),
            (None, None) => None,
            (Some(_), None) => bail!("--ipv4 needs its gateway: add --gw4"),
            (None, Some(_)) => bail!("--gw4 is the gateway of --ipv4: add --ipv4"),
        };
        let ipv6 = match (ipv6, gw6) {
            (Some(ip), Some(gw)) => Some(PublicIpv6Config {
                ip: parse_cidr6(ip).context("--ipv6")?,
                gateway: parse_ipv6(gw).context("--gw6")?,
            }),
            (None, None) => None,
            (Some(_), None) => bail!("--ipv6 needs its gateway: add --gw6 (e.g. fe80::1)"),
            (None, Some(_)) => bail!("--gw6 is the gateway of --ipv6: add --ipv6"),
        };
        if let Some(d) = domain {
            if d.len() > MAX_DOMAIN_LEN {
                bail!(
                    "--domain: a DNS name has at most {MAX_DOMAIN_LEN} bytes, {d:?} has {}",
                    d.len()
                );
            }
        }
        Ok(Some(Self {
            ipv4,
            ipv6,
            domain: domain.map(str::to_owned),
        }))
    }

    fn from_chain(
        config: &runtime::runtime_types::pallet_grid::types::PublicConfig,
    ) -> Result<Self> {
        Ok(Self {
            ipv4: config.ipv4.as_ref().map(convert).transpose()?,
            ipv6: config.ipv6.as_ref().map(convert).transpose()?,
            domain: config.domain.as_ref().map(|d| format::text(&d.0)),
        })
    }

    fn to_chain(&self) -> Result<runtime::runtime_types::pallet_grid::types::PublicConfig> {
        Ok(runtime::runtime_types::pallet_grid::types::PublicConfig {
            ipv4: self.ipv4.as_ref().map(convert).transpose()?,
            ipv6: self.ipv6.as_ref().map(convert).transpose()?,
            domain: self
                .domain
                .as_ref()
                .map(|d| BoundedVec(d.as_bytes().to_vec())),
        })
    }

    fn json(&self) -> Json {
        json!({
            "ipv4": self.ipv4.map(|c| json!({ "ip": format::cidr(&c.ip), "gateway": format::ip(c.gateway) })),
            "ipv6": self.ipv6.map(|c| json!({ "ip": format::cidr6(&c.ip), "gateway": format::ipv6(c.gateway) })),
            "domain": self.domain,
        })
    }

    /// One line each for IPv4, IPv6 and domain, "-" when not declared.
    fn lines(&self) -> Vec<String> {
        let ipv4 = self
            .ipv4
            .map(|c| format!("{}, gateway {}", format::cidr(&c.ip), format::ip(c.gateway)));
        let ipv6 = self.ipv6.map(|c| {
            format!(
                "{}, gateway {}{}",
                format::cidr6(&c.ip),
                format::ipv6(c.gateway),
                if c.ip.prefix_len > MAX_IPV6_PREFIX_FOR_VMS {
                    " (narrower than a /64: no addresses for VMs)"
                } else {
                    ""
                }
            )
        });
        [
            ("ipv4", ipv4),
            ("ipv6", ipv6),
            ("domain", self.domain.clone()),
        ]
        .into_iter()
        .map(|(label, value)| format!("{label:<11}{}", value.unwrap_or_else(|| "-".into())))
        .collect()
    }
}

async fn node_public_config(ctx: &Ctx, id: u32, config: Option<NodePublic>) -> Result<Out> {
    let signer = ctx.signer()?;
    let value = config.as_ref().map(NodePublic::to_chain).transpose()?;
    let chain = ctx.chain().await?;
    let call = runtime::tx().grid().set_node_public_config(id, value);
    chain.submit(&call, &signer, ctx.timeout).await?;
    let human = match &config {
        Some(c) => {
            let mut h = vec![format!("node {id}: public config set")];
            h.extend(c.lines().into_iter().map(|l| format!("  {l}")));
            h.join("\n")
        }
        None => format!("node {id}: public config cleared"),
    };
    Ok(Out::new(
        json!({ "node": id, "public_config": config.as_ref().map(NodePublic::json) }),
        human,
    ))
}

// ---- contracts

async fn deploy(
    ctx: &Ctx,
    spec: DeploymentSpec,
    node: u32,
    signers: &[String],
    threshold: Option<u32>,
) -> Result<Out> {
    let key = ctx.signer()?;
    let me = key.public_key().to_account_id();
    let (signer_values, threshold) = contract_signers(&me, signers, threshold)?;
    let hash = spec.hash();
    let chain = ctx.chain().await?;
    let call = runtime::tx().deployments().create(
        node,
        convert(&spec)?,
        BoundedVec(signer_values),
        threshold,
    );
    let events = chain.submit(&call, &key, ctx.timeout).await?;
    let created = events
        .find_first::<runtime::deployments::events::ContractCreated>()
        .ok_or_else(|| anyhow!("no ContractCreated event"))??;
    let activated = events
        .find_first::<runtime::deployments::events::ContractActivated>()
        .is_some();
    let human = format!(
        "contract {} created on node {node}, spec hash 0x{}, deposit {}\n{}",
        created.contract,
        hex::encode(hash),
        format::zgt(created.deposit),
        if activated {
            "activated: the node deploys it now".to_string()
        } else {
            format!(
                "waiting for approvals (threshold {threshold}): zos approve {} --key <signer>",
                created.contract
            )
        }
    );
    Ok(Out::new(
        json!({
            "contract": created.contract, "node": node, "spec_hash": hex0x(&hash),
            "deposit": created.deposit.to_string(), "threshold": threshold, "activated": activated,
            "events": events_json(&events)?,
        }),
        human,
    ))
}

/// A new contract's signers from `--signer` (default: `me` alone, required) and its threshold
/// (default: their total weight).
pub(crate) fn contract_signers(
    me: &AccountId32,
    signers: &[String],
    threshold: Option<u32>,
) -> Result<(
    Vec<runtime::runtime_types::pallet_deployments::types::Signer<AccountId32>>,
    u32,
)> {
    use runtime::runtime_types::pallet_deployments::types::Signer;
    let mut list: Vec<SignerArg> = signers.iter().map(|s| s.parse()).collect::<Result<_>>()?;
    if list.is_empty() {
        list.push(SignerArg {
            account: me.clone(),
            weight: 1,
            required: true,
        });
    }
    if !list.iter().any(|s| &s.account == me) {
        bail!("the account of --key ({me}) must be one of the --signer accounts: the creator approves by creating");
    }
    let total: u32 = list.iter().map(|s| s.weight).sum();
    let threshold = threshold.unwrap_or(total);
    let signer_values = list
        .iter()
        .map(|s| Signer {
            account: s.account.clone(),
            weight: s.weight,
            required: s.required,
        })
        .collect();
    Ok((signer_values, threshold))
}

async fn pending_hash(chain: &Chain, contract: ContractId) -> Result<[u8; 32]> {
    let at = chain.api.at_current_block().await?;
    if at
        .storage()
        .try_fetch(runtime::storage().deployments().contracts(), (contract,))
        .await?
        .is_none()
    {
        bail!("contract {contract} not found (cancelled contracts are removed)");
    }
    let Some(p) = at
        .storage()
        .try_fetch(runtime::storage().deployments().proposals(), (contract,))
        .await?
    else {
        bail!("contract {contract} has no pending proposal");
    };
    Ok(p.decode()?.hash)
}

async fn vote(ctx: &Ctx, contract: ContractId, hash: Option<&str>, approve: bool) -> Result<Out> {
    use runtime::deployments::events::{
        ContractActivated, ContractCancelled, ContractUpdated, ProposalApproved,
    };
    let key = ctx.signer()?;
    let chain = ctx.chain().await?;
    let hash = match hash {
        Some(h) => parse_hash(h)?,
        None => pending_hash(&chain, contract).await?,
    };
    let events = if approve {
        chain
            .submit(
                &runtime::tx().deployments().approve(contract, hash),
                &key,
                ctx.timeout,
            )
            .await?
    } else {
        chain
            .submit(
                &runtime::tx().deployments().reject(contract, hash),
                &key,
                ctx.timeout,
            )
            .await?
    };
    let mut outcome = if approve {
        "approved".to_string()
    } else {
        "rejected".to_string()
    };
    if let Some(Ok(a)) = events.find_first::<ProposalApproved>() {
        outcome = format!("approved (approving weight now {})", a.approved_weight);
    }
    if let Some(Ok(a)) = events.find_first::<ContractActivated>() {
        outcome.push_str(&format!(
            "; contract activated (version {}) on node {}",
            a.version, a.node
        ));
    }
    if let Some(Ok(u)) = events.find_first::<ContractUpdated>() {
        outcome.push_str(&format!("; contract updated to version {}", u.version));
    }
    if events.find_first::<ContractCancelled>().is_some() {
        outcome.push_str("; contract cancelled");
    }
    Ok(Out::new(
        json!({ "contract": contract, "hash": hex0x(&hash), "events": events_json(&events)? }),
        format!(
            "contract {contract}: proposal 0x{}… {outcome}",
            &hex::encode(hash)[..16]
        ),
    ))
}

async fn update(
    ctx: &Ctx,
    contract: ContractId,
    path: PathBuf,
    image: &crate::ImageOverride,
) -> Result<Out> {
    let key = ctx.signer()?;
    let chain = ctx.chain().await?;
    let at = chain.api.at_current_block().await?;
    let Some(c) = at
        .storage()
        .try_fetch(runtime::storage().deployments().contracts(), (contract,))
        .await?
    else {
        bail!("contract {contract} not found");
    };
    let active = c
        .decode()?
        .active
        .ok_or_else(|| anyhow!("contract {contract} was never activated: nothing to update"))?;
    // Parse first, then set the version: files are kept at any version.
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut spec = crate::specfile::parse_spec(&text, &path)?;
    crate::specfile::apply_image_override(&mut spec, image)?;
    spec.version = active
        .version
        .checked_add(1)
        .ok_or_else(|| anyhow!("version counter exhausted"))?;
    spec.validate()
        .map_err(|e| anyhow!("spec {} breaks a rule: {e:?}", path.display()))?;
    let hash = spec.hash();
    let events = chain
        .submit(
            &runtime::tx()
                .deployments()
                .propose_update(contract, convert(&spec)?),
            &key,
            ctx.timeout,
        )
        .await?;
    Ok(Out::new(
        json!({ "contract": contract, "version": spec.version, "hash": hex0x(&hash), "events": events_json(&events)? }),
        format!(
            "contract {contract}: update to version {} proposed, hash 0x{}\nsigners approve with: zos approve {contract} --key <signer>",
            spec.version,
            hex::encode(hash)
        ),
    ))
}

async fn cancel(ctx: &Ctx, contract: ContractId) -> Result<Out> {
    let key = ctx.signer()?;
    let chain = ctx.chain().await?;
    let events = chain
        .submit(
            &runtime::tx().deployments().propose_cancel(contract),
            &key,
            ctx.timeout,
        )
        .await?;
    let human = if events
        .find_first::<runtime::deployments::events::ContractCancelled>()
        .is_some()
    {
        format!("contract {contract} cancelled")
    } else if let Some(Ok(p)) = events.find_first::<runtime::deployments::events::ProposalCreated>()
    {
        format!(
            "contract {contract}: cancellation proposed (hash 0x{}); signers approve with: zos approve {contract}",
            hex::encode(p.hash)
        )
    } else {
        format!("contract {contract}: cancellation submitted")
    };
    Ok(Out::new(
        json!({ "contract": contract, "events": events_json(&events)? }),
        human,
    ))
}

async fn contract_show(ctx: &Ctx, id: ContractId) -> Result<Out> {
    let chain = ctx.chain().await?;
    let at = chain.api.at_current_block().await?;
    let storage = at.storage();
    let Some(c) = storage
        .try_fetch(runtime::storage().deployments().contracts(), (id,))
        .await?
    else {
        bail!("contract {id} not found (cancelled contracts are removed from the chain)");
    };
    let c = c.decode()?;
    let state: ContractState = convert(&c.state)?;
    let spec: Option<DeploymentSpec> = match storage
        .try_fetch(runtime::storage().deployments().active_specs(), (id,))
        .await?
    {
        Some(s) => Some(convert(&s.decode()?)?),
        None => None,
    };
    let proposal = match storage
        .try_fetch(runtime::storage().deployments().proposals(), (id,))
        .await?
    {
        Some(p) => Some(p.decode()?),
        None => None,
    };
    let report = match storage
        .try_fetch(runtime::storage().deployments().reports(), (id,))
        .await?
    {
        Some(r) => Some(r.decode()?),
        None => None,
    };
    let billing: Option<ContractBillingStatus<u128, u32>> = chain
        .runtime_call("BillingApi_contract_billing", &arg(&id))
        .await?;
    let assigned: Vec<(WorkloadName, PublicIpv4Config)> = convert(&c.public_ips)?;
    let public_ip_workloads: Vec<(&WorkloadName, bool, bool)> = spec
        .iter()
        .flat_map(|s| s.workloads.iter())
        .filter_map(|w| match &w.kind {
            WorkloadKind::PublicIp(p) => Some((&w.name, p.v4, p.v6)),
            _ => None,
        })
        .collect();
    // IPv6 addresses come from the node's subnet as its farmer declared it.
    let node_ipv6: Option<PublicIpv6Config> = if public_ip_workloads.iter().any(|w| w.2) {
        match storage
            .try_fetch(runtime::storage().grid().nodes(), (c.node,))
            .await?
        {
            Some(n) => n
                .decode()?
                .public_config
                .and_then(|p| p.ipv6)
                .map(|v6| convert(&v6))
                .transpose()?,
            None => None,
        }
    } else {
        None
    };

    let mut h = Vec::new();
    h.push(format!(
        "contract {id} on node {}: {}",
        c.node,
        format::state(&state)
    ));
    h.push(format!("  owner      {}", c.owner));
    h.push(format!("  deposit    {}", format::zgt(c.deposit)));
    h.push(format!(
        "  created at block {}{}",
        c.created_at,
        c.activated_at
            .map(|b| format!(", activated at block {b}"))
            .unwrap_or_default()
    ));
    h.push(format!("  signers (threshold {}):", c.threshold));
    let signers: Vec<Json> = c
        .signers
        .0
        .iter()
        .map(|s| {
            h.push(format!(
                "    {} weight {}{}",
                s.account,
                s.weight,
                if s.required { ", required" } else { "" }
            ));
            json!({ "account": s.account.to_string(), "weight": s.weight, "required": s.required })
        })
        .collect();
    if let Some(active) = &c.active {
        h.push(format!(
            "  active spec: version {}, hash 0x{}",
            active.version,
            hex::encode(active.hash)
        ));
    }
    if let Some(spec) = &spec {
        for line in format::spec_lines(spec) {
            h.push(format!("    {line}"));
        }
    }
    if !public_ip_workloads.is_empty() {
        h.push("  public IPs:".into());
    }
    let public_ips: Vec<Json> = public_ip_workloads
        .iter()
        .map(|&(name, v4, v6)| {
            let shown = format::text(name.as_bytes());
            let mut parts = Vec::new();
            let mut entry = json!({ "name": shown });
            if v4 {
                match assigned.iter().find(|(n, _)| n == name) {
                    Some((_, ip)) => {
                        parts.push(format!(
                            "IPv4 {}, gateway {}",
                            format::cidr(&ip.ip),
                            format::ip(ip.gateway)
                        ));
                        entry["ipv4"] = json!({ "ip": format::cidr(&ip.ip), "gateway": format::ip(ip.gateway) });
                    }
                    None => {
                        parts.push("IPv4 not assigned".into());
                        entry["ipv4"] = Json::Null;
                    }
                }
            }
            if v6 {
                let address = node_ipv6
                    .as_ref()
                    .map(|net| (net, net.vm_address(id, name.as_bytes())));
                match address {
                    Some((net, Some(addr))) => {
                        let ip = format!("{}/{}", format::ipv6(addr), net.ip.prefix_len);
                        parts.push(format!(
                            "IPv6 {ip}, gateway {}",
                            format::ipv6(net.gateway)
                        ));
                        entry["ipv6"] = json!({ "ip": ip, "gateway": format::ipv6(net.gateway) });
                    }
                    Some((net, None)) => {
                        let why = format!(
                            "the node's IPv6 subnet {} is narrower than a /{MAX_IPV6_PREFIX_FOR_VMS}",
                            format::cidr6(&net.ip)
                        );
                        parts.push(format!("no IPv6: {why}"));
                        entry["ipv6"] = Json::Null;
                        entry["ipv6_missing"] = json!(why);
                    }
                    None => {
                        let why = "no IPv6 subnet declared for the node";
                        parts.push(format!("no IPv6: {why}"));
                        entry["ipv6"] = Json::Null;
                        entry["ipv6_missing"] = json!(why);
                    }
                }
            }
            h.push(format!("    {shown}: {}", parts.join("; ")));
            entry
        })
        .collect();
    let proposal_json = proposal.as_ref().map(|p| {
        use runtime::runtime_types::pallet_deployments::types::ProposalAction;
        let kind = match &p.action {
            ProposalAction::Deploy(s) => format!("deploy version {}", s.version),
            ProposalAction::Cancel => "cancel".into(),
        };
        let approvals: Vec<String> = p.approvals.0.iter().map(|a| a.to_string()).collect();
        h.push(format!(
            "  pending proposal: {kind}, hash 0x{}, expires at block {}, approved by {}",
            hex::encode(p.hash),
            p.expires_at,
            if approvals.is_empty() { "nobody".to_string() } else { approvals.join(", ") }
        ));
        json!({ "kind": kind, "hash": hex0x(&p.hash), "expires_at": p.expires_at, "approvals": approvals })
    });
    let report_json = report.as_ref().map(|r| {
        use runtime::runtime_types::pallet_deployments::types::WorkloadResult;
        h.push(format!(
            "  last report: version {} at block {}",
            r.version, r.at
        ));
        let workloads: Vec<Json> = r
            .workloads
            .0
            .iter()
            .map(|w| {
                let name = format::text(&w.name.0 .0);
                let (ok, why) = match &w.result {
                    WorkloadResult::Ok => (true, None),
                    WorkloadResult::Error(e) => (false, Some(format::text(&e.0))),
                };
                h.push(format!(
                    "    {name}: {}",
                    why.clone()
                        .map(|w| format!("error: {w}"))
                        .unwrap_or_else(|| "ok".into())
                ));
                json!({ "name": name, "ok": ok, "error": why })
            })
            .collect();
        json!({ "version": r.version, "at": r.at, "workloads": workloads })
    });
    let billing_json = billing.as_ref().map(|b| {
        h.push(format!(
            "  billing: billed until {}, debt {}{}{}",
            b.billed_until.map(|t| format!("unix {t}")).unwrap_or_else(|| "- (no report yet)".into()),
            format::zgt(b.debt),
            b.grace_since.map(|g| format!(", in grace since block {g}")).unwrap_or_default(),
            if b.stale { ", STALE (no recent report)" } else { "" }
        ));
        json!({ "billed_until": b.billed_until, "debt": b.debt.to_string(), "grace_since": b.grace_since, "stale": b.stale })
    });
    Ok(Out::new(
        json!({
            "contract": id, "node": c.node, "owner": c.owner.to_string(), "state": format::state(&state),
            "threshold": c.threshold, "signers": signers, "deposit": c.deposit.to_string(),
            "created_at": c.created_at, "activated_at": c.activated_at,
            "active": c.active.as_ref().map(|a| json!({ "version": a.version, "hash": hex0x(&a.hash) })),
            "spec": spec, "public_ips": public_ips, "proposal": proposal_json, "report": report_json,
            "billing": billing_json,
        }),
        h.join("\n"),
    ))
}

async fn contract_list(ctx: &Ctx, owner: Option<&str>) -> Result<Out> {
    let owner = match (owner, ctx.key.as_deref()) {
        (Some(o), _) => Some(parse_account(o)?),
        (None, Some(k)) => Some(parse_key(k)?.public_key().to_account_id()),
        (None, None) => None,
    };
    let chain = ctx.chain().await?;
    let list: Vec<ContractSummary> = match &owner {
        Some(o) => {
            chain
                .runtime_call("DeploymentsApi_contracts_of_owner", &arg(&o.0))
                .await?
        }
        None => {
            let at = chain.api.at_current_block().await?;
            let mut ids = BTreeSet::new();
            let mut entries = at
                .storage()
                .iter(runtime::storage().deployments().contracts(), ())
                .await?;
            let mut owners = BTreeSet::new();
            while let Some(kv) = entries.next().await {
                let c = kv?.value().decode()?;
                owners.insert(c.owner.0);
            }
            let mut all = Vec::new();
            for o in owners {
                let mine: Vec<ContractSummary> = chain
                    .runtime_call("DeploymentsApi_contracts_of_owner", &arg(&o))
                    .await?;
                for s in mine {
                    if ids.insert(s.contract) {
                        all.push(s);
                    }
                }
            }
            all.sort_by_key(|s| s.contract);
            all
        }
    };
    let mut human = vec![format!(
        "{:>8} {:>5}  {:<28} {:>7}  PENDING",
        "CONTRACT", "NODE", "STATE", "VERSION"
    )];
    let rows: Vec<Json> = list
        .iter()
        .map(|s| {
            let version = s
                .active
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| "-".into());
            let pending = s
                .pending_proposal
                .map(|h| format!("0x{}…", &hex::encode(h)[..16]))
                .unwrap_or_else(|| "-".into());
            human.push(format!(
                "{:>8} {:>5}  {:<28} {:>7}  {pending}",
                s.contract,
                s.node,
                format::state(&s.state),
                version
            ));
            json!({
                "contract": s.contract, "node": s.node, "state": format::state(&s.state),
                "active": s.active.map(|(h, v)| json!({ "hash": hex0x(&h), "version": v })),
                "pending_proposal": s.pending_proposal.map(|h| hex0x(&h)),
            })
        })
        .collect();
    if list.is_empty() {
        human = vec!["no contracts".into()];
    }
    Ok(Out::new(Json::Array(rows), human.join("\n")))
}

// ---- accounts and keys

async fn transfer(ctx: &Ctx, to: &str, amount: &str) -> Result<Out> {
    let key = ctx.signer()?;
    let to = parse_account(to)?;
    let value = parse_amount(amount)?;
    let chain = ctx.chain().await?;
    let call = runtime::tx()
        .balances()
        .transfer_keep_alive(subxt::utils::MultiAddress::Id(to.clone()), value);
    chain.submit(&call, &key, ctx.timeout).await?;
    let balance = chain.free_balance(&to).await?;
    Ok(Out::new(
        json!({ "to": to.to_string(), "amount": value.to_string(), "balance": balance.to_string() }),
        format!(
            "sent {} to {to} (balance now {})",
            format::zgt(value),
            format::zgt(balance)
        ),
    ))
}

async fn seal_key(ctx: &Ctx, node: u32, wg_key: Option<&str>) -> Result<Out> {
    let (secret, generated) = match wg_key {
        Some(k) => (
            zeroize::Zeroizing::new(parse_hash(k).context("--wg-key")?),
            false,
        ),
        None => (crate::network_plan::random_key()?, true),
    };
    let chain = ctx.chain().await?;
    let box_key = crate::network_cmd::node_box_key(&chain, node).await?;
    let sealed = zos_primitives::sealing::seal_wireguard_key(&box_key, &secret)
        .map_err(|e| anyhow!("sealing failed: {e:?}"))?;
    let public = zos_primitives::sealing::box_public_key(&secret);
    let mut human = format!(
        "private_key = \"{}\"   # sealed to node {node}\npublic key  {}",
        hex::encode(&sealed.0),
        hex::encode(public)
    );
    if generated {
        human.push_str(&format!(
            "\nnew WireGuard private key (keep it secret) {}",
            hex::encode(*secret)
        ));
    }
    Ok(Out::new(
        json!({
            "node": node, "sealed": hex::encode(&sealed.0), "public_key": hex::encode(public),
            "private_key": generated.then(|| hex::encode(*secret)),
        }),
        human,
    ))
}

// ---- events

/// Pallets whose events concern deployers.
const EVENT_PALLETS: [&str; 3] = ["Deployments", "Billing", "Grid"];

async fn events(
    ctx: &Ctx,
    contract: Option<ContractId>,
    from: Option<u64>,
    follow: bool,
) -> Result<i32> {
    let chain = ctx.chain().await?;
    let head = chain.api.at_current_block().await?.block_number();
    let mut next = from.unwrap_or(head);
    let print_range = |chain: &Chain, start: u64, end: u64| {
        let api = chain.api.clone();
        async move {
            for n in start..=end {
                let at = api.at_block(n).await?;
                for ev in at.events().fetch().await?.iter() {
                    let ev = ev?;
                    if !EVENT_PALLETS.contains(&ev.pallet_name()) {
                        continue;
                    }
                    let fields = ev.decode_fields_unchecked_as::<Value>()?;
                    if let Some(c) = contract {
                        if field_u128(&fields, "contract") != Some(c as u128) {
                            continue;
                        }
                    }
                    print_event(ctx.json, n, ev.pallet_name(), ev.event_name(), &fields);
                }
            }
            anyhow::Ok(())
        }
    };
    if next <= head {
        print_range(&chain, next, head).await?;
        next = head + 1;
    }
    if !follow {
        return Ok(0);
    }
    let mut blocks = chain.api.stream_blocks().await?;
    while let Some(block) = blocks.next().await {
        let n = block?.number();
        if n >= next {
            print_range(&chain, next, n).await?;
            next = n + 1;
        }
    }
    bail!("the chain closed the finalized block stream")
}

fn print_event(json: bool, block: u64, pallet: &str, name: &str, fields: &Value) {
    if json {
        println!(
            "{}",
            json!({ "block": block, "event": format!("{pallet}.{name}"), "fields": pretty_fields(fields) })
        );
        return;
    }
    let detail = match (pallet, name) {
        ("Billing", "ReportSettled") => format!(
            "contract {} window {}..{} charged {} collected {} debt {}",
            field_u128(fields, "contract").unwrap_or_default(),
            field_u128(fields, "window_start").unwrap_or_default(),
            field_u128(fields, "window_end").unwrap_or_default(),
            format::zgt(field_u128(fields, "charged").unwrap_or_default()),
            format::zgt(field_u128(fields, "collected").unwrap_or_default()),
            format::zgt(field_u128(fields, "debt").unwrap_or_default()),
        ),
        _ => pretty_fields(fields),
    };
    println!("#{block} {pallet}.{name} {detail}");
}

/// Field names that hold accounts (shown as SS58); other 32-byte values are hashes (hex).
const ACCOUNT_FIELDS: [&str; 6] = [
    "owner",
    "signer",
    "proposer",
    "who",
    "account",
    "farm_owner",
];

/// `{ a: 1, owner: 5Grw…, hash: 0x12… }`: top-level fields, byte arrays made readable.
fn pretty_fields(fields: &Value) -> String {
    use subxt::ext::scale_value::{Composite, ValueDef};
    let ValueDef::Composite(Composite::Named(named)) = &fields.value else {
        return fields.to_string();
    };
    let parts: Vec<String> = named
        .iter()
        .map(|(name, v)| {
            let shown = match byte_array(v) {
                Some(bytes) if bytes.len() == 32 && ACCOUNT_FIELDS.contains(&name.as_str()) => {
                    AccountId32(bytes.try_into().unwrap_or([0; 32])).to_string()
                }
                Some(bytes) if bytes.len() == 32 => hex0x(&bytes),
                Some(bytes)
                    if bytes.len() > 1
                        && bytes.iter().all(|b| b.is_ascii_graphic() || *b == b' ') =>
                {
                    format!("{:?}", String::from_utf8_lossy(&bytes))
                }
                _ => v.to_string(),
            };
            format!("{name}: {shown}")
        })
        .collect();
    format!("{{ {} }}", parts.join(", "))
}

/// The bytes of a value that is (possibly nested in one-field wrappers) an array of u8.
fn byte_array(v: &Value) -> Option<Vec<u8>> {
    use subxt::ext::scale_value::{Composite, Primitive, ValueDef};
    let ValueDef::Composite(c) = &v.value else {
        return None;
    };
    let items: Vec<&Value> = match c {
        Composite::Unnamed(items) => items.iter().collect(),
        Composite::Named(items) => items.iter().map(|(_, v)| v).collect(),
    };
    if items.len() == 1 {
        if let Some(inner) = byte_array(items[0]) {
            return Some(inner);
        }
    }
    items
        .iter()
        .map(|x| match &x.value {
            ValueDef::Primitive(Primitive::U128(n)) => u8::try_from(*n).ok(),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(
        ipv4: Option<&str>,
        gw4: Option<&str>,
        ipv6: Option<&str>,
        gw6: Option<&str>,
        domain: Option<&str>,
        clear: bool,
    ) -> Result<Option<NodePublic>> {
        NodePublic::from_args(ipv4, gw4, ipv6, gw6, domain, clear)
    }

    fn error(result: Result<Option<NodePublic>>) -> String {
        format!("{:#}", result.expect_err("should be refused"))
    }

    #[test]
    fn public_config_options_are_checked_before_anything_is_sent() {
        let full = args(
            Some("198.51.100.20/24"),
            Some("198.51.100.1"),
            Some("2001:db8:1::2/64"),
            Some("fe80::1"),
            Some("gw.example.com"),
            false,
        )
        .unwrap()
        .expect("a config");
        assert_eq!(format::cidr(&full.ipv4.unwrap().ip), "198.51.100.20/24");
        assert_eq!(format::ip(full.ipv4.unwrap().gateway), "198.51.100.1");
        assert_eq!(format::cidr6(&full.ipv6.unwrap().ip), "2001:db8:1::2/64");
        assert_eq!(format::ipv6(full.ipv6.unwrap().gateway), "fe80::1");
        assert_eq!(full.domain.as_deref(), Some("gw.example.com"));

        let v6_only = args(
            None,
            None,
            Some("2001:db8:1::2/64"),
            Some("fe80::1"),
            None,
            false,
        )
        .unwrap()
        .expect("a config");
        assert!(v6_only.ipv4.is_none() && v6_only.domain.is_none());

        assert_eq!(args(None, None, None, None, None, true).unwrap(), None);

        assert!(error(args(None, None, None, None, None, false)).contains("nothing to declare"));
        assert!(error(args(
            Some("198.51.100.20/24"),
            None,
            None,
            None,
            None,
            false
        ))
        .contains("--gw4"));
        assert!(
            error(args(None, Some("198.51.100.1"), None, None, None, false)).contains("add --ipv4")
        );
        assert!(error(args(
            None,
            None,
            Some("2001:db8:1::2/64"),
            None,
            None,
            false
        ))
        .contains("--gw6"));
        assert!(error(args(None, None, None, Some("fe80::1"), None, false)).contains("add --ipv6"));
        assert!(error(args(None, None, None, None, Some("a.example"), true)).contains("--clear"));
        assert!(error(args(
            Some("198.51.100.20"),
            Some("198.51.100.1"),
            None,
            None,
            None,
            false
        ))
        .contains("--ipv4"));
        assert!(error(args(
            None,
            None,
            Some("2001:db8:1::2/64"),
            Some("198.51.100.1"),
            None,
            false
        ))
        .contains("--gw6"));
        let long = "a".repeat(MAX_DOMAIN_LEN + 1);
        assert!(error(args(None, None, None, None, Some(&long), false)).contains("--domain"));
    }

    #[test]
    fn public_config_renders_what_is_declared() {
        let config = args(
            None,
            None,
            Some("2001:db8:1::2/64"),
            Some("fe80::1"),
            None,
            false,
        )
        .unwrap()
        .expect("a config");
        assert_eq!(
            config.lines(),
            vec![
                "ipv4       -".to_string(),
                "ipv6       2001:db8:1::2/64, gateway fe80::1".to_string(),
                "domain     -".to_string(),
            ]
        );
        assert_eq!(
            config.json(),
            json!({
                "ipv4": null,
                "ipv6": { "ip": "2001:db8:1::2/64", "gateway": "fe80::1" },
                "domain": null
            })
        );
    }
}
