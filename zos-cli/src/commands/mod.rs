//! The commands. Each builds a JSON value (for `--json`) and a human rendering of it.

use std::{collections::BTreeSet, path::PathBuf, process::Command as Process, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value as Json};
use subxt::{dynamic::At, ext::scale_value::Value, utils::AccountId32};
use subxt_signer::sr25519::Keypair;
use zos_client::chain::{convert, event_list, runtime, Chain, Events as TxEvents};
use zos_primitives::{
    billing::ContractBillingStatus,
    contracts::{ContractState, ContractSummary},
    spec::{DeploymentSpec, WorkloadKind, WorkloadName},
    ContractId, NodeStatus, PublicIpv4Config, PublicIpv6Config, Resources, MAX_IPV6_PREFIX_FOR_VMS,
};

mod account;
mod contract;
mod events;
mod farm;
mod logs;
mod node;
mod session;

use account::*;
pub(crate) use contract::contract_signers;
use contract::*;
use events::*;
use farm::*;
use logs::*;
use node::*;
use session::*;

use crate::{
    format,
    keys::{parse_account, parse_key},
    specfile::{
        load_spec, parse_amount, parse_cidr, parse_cidr6, parse_hash, parse_ipv4, parse_ipv6,
        SignerArg,
    },
    Cli, Command, ContractCmd, FarmCmd, FarmIpCmd, KeyCmd, NetworkCmd, NodeCmd, SessionTarget,
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
        Chain::connect_once(&self.url).await.with_context(|| {
            format!(
                "no chain at {} (is it running? `make chain` starts one)",
                self.url
            )
        })
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
        Command::Image { args } => return passthrough("zos-image", "ZOS_IMAGE_BIN", &args),
        Command::Overlay { args } => return passthrough("zos-overlay", "ZOS_OVERLAY_BIN", &args),
        Command::Events {
            contract,
            from,
            follow,
        } => return events(&ctx, contract, from, follow).await,
        Command::Logs {
            contract,
            workload,
            lines,
            follow,
            node_url,
        } => {
            let request = LogsRequest {
                contract,
                workload: workload.as_deref(),
                lines,
                follow,
                node_url: node_url.as_deref(),
            };
            return logs(&ctx, request).await;
        }
        Command::Exec {
            contract,
            target,
            tty,
            detach,
            command,
        } => {
            let (rows, cols) = if tty {
                terminal_size().unwrap_or((24, 80))
            } else {
                (0, 0)
            };
            let request = zos_guest_agent::Request::Exec(zos_guest_agent::Exec {
                argv: command,
                tty,
                rows,
                cols,
                detach,
                quiet: false,
            });
            return session(&ctx, session_request(contract, &target, request)).await;
        }
        Command::Shell {
            contract,
            target,
            shell,
        } => {
            let (rows, cols) = terminal_size().unwrap_or((24, 80));
            let request = zos_guest_agent::Request::Exec(zos_guest_agent::Exec {
                argv: vec![shell],
                tty: true,
                rows,
                cols,
                detach: false,
                quiet: false,
            });
            return session(&ctx, session_request(contract, &target, request)).await;
        }
        Command::Ps { contract, target } => {
            let request = zos_guest_agent::Request::Ps;
            return session(&ctx, session_request(contract, &target, request)).await;
        }
        Command::Kill {
            contract,
            pid,
            signal,
            target,
        } => {
            let signal = zos_guest_agent::signal_number(&signal).ok_or_else(|| {
                anyhow!(
                    "--signal {signal:?}: give a name (TERM, KILL, HUP, INT, ...) or a number 1-64"
                )
            })?;
            let request = zos_guest_agent::Request::Kill { pid, signal };
            return session(&ctx, session_request(contract, &target, request)).await;
        }
        Command::Farm(FarmCmd::Create { name }) => farm_create(&ctx, &name).await?,
        Command::Farm(FarmCmd::Ip(FarmIpCmd::Add {
            farm,
            cidr,
            gateway,
        })) => farm_ip_add(&ctx, farm, &cidr, &gateway).await?,
        Command::Farm(FarmCmd::List) => farm_list(&ctx).await?,
        Command::Farm(FarmCmd::AuthorizeNode { farm, account }) => {
            farm_authorize_node(&ctx, farm, &account, true).await?
        }
        Command::Farm(FarmCmd::RevokeNode { farm, account }) => {
            farm_authorize_node(&ctx, farm, &account, false).await?
        }
        Command::Node(NodeCmd::List { farm }) => node_list(&ctx, farm).await?,
        Command::Node(NodeCmd::Show { id }) => node_show(&ctx, id).await?,
        Command::Node(NodeCmd::Remove { id }) => node_remove(&ctx, id).await?,
        Command::Node(NodeCmd::Keep { id }) => node_keep(&ctx, id).await?,
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
        Command::SealEnv { node, owner, name } => {
            let mut secret = zeroize::Zeroizing::new(Vec::new());
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut secret)
                .context("reading the secret from standard input")?;
            // `echo secret | zos seal-env` seals the secret, not its newline.
            if secret.last() == Some(&b'\n') {
                secret.pop();
            }
            seal_env(&ctx, node, owner.as_deref(), &name, &secret).await?
        }
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
/// A companion tool: `$<env>` when set, else the binary beside this one, else from `PATH`.
fn tool_binary(name: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return path.into();
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let sibling = dir.join(name);
            if sibling.is_file() {
                return sibling;
            }
        }
    }
    PathBuf::from(name)
}

/// Runs a companion tool (its package is named like it) with `args`; its exit code is ours.
fn passthrough(name: &str, env: &str, args: &[String]) -> Result<i32> {
    let bin = tool_binary(name, env);
    let status = Process::new(&bin).args(args).status().with_context(|| {
        format!(
            "running {} (build it with `cargo build -p {name}` or set {env})",
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

fn session_request(
    contract: ContractId,
    target: &SessionTarget,
    request: zos_guest_agent::Request,
) -> SessionRequest<'_> {
    SessionRequest {
        contract,
        workload: target.workload.as_deref(),
        node_url: target.node_url.as_deref(),
        request,
    }
}
