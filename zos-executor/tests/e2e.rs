//! The real executor binary against a real chain node: registration, heartbeats, a 2-of-2
//! contract with a Disk workload deployed within a finalized block of activation, consumption
//! reports moving funds, cancellation removing the disk, and recovery from kill -9 of the
//! executor and from a chain node restart.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use codec::Encode;
use node_harness::{
    client::{self, runtime_call, Client},
    ChainNode, NodeOptions,
};
use subxt::{
    dynamic::{self, At, Value},
    utils::AccountId32,
};
use subxt_signer::sr25519::{dev, Keypair};
use zos_executor::{
    chain::{convert, runtime},
    identity::NodeIdentity,
};
use zos_primitives::{
    contracts::{ContractState, NodeContract},
    spec::DeploymentSpec,
    ContractId, NodeId,
};

/// Big enough to cost something per window (a sparse file: nothing is allocated).
const DISK_MIB: u64 = 10 * 1024;

struct Executor {
    child: Option<Child>,
    data_dir: PathBuf,
    log: PathBuf,
    url: String,
    farm: u32,
}

impl Executor {
    fn spawn(data_dir: &Path, url: &str, farm: u32) -> Result<Self> {
        let mut e = Self {
            child: None,
            data_dir: data_dir.into(),
            log: data_dir.join("executor.log"),
            url: url.into(),
            farm,
        };
        e.start()?;
        Ok(e)
    }

    fn start(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_zos-executor"))
            .args([
                "--chain-url",
                &self.url,
                "--farm-id",
                &self.farm.to_string(),
            ])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--report-interval",
                "6",
                "--heartbeat-interval",
                "20",
                "--metrics-addr",
                "off",
            ])
            .args(["--capacity", "cru=4,mru_mib=8192,sru_gib=50"])
            .env("RUST_LOG", "info,zos_executor=debug")
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("spawning zos-executor")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL: no chance to clean up, as in a power cut.
    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        self.kill9();
        // Test output is captured and shown only for failing tests.
        eprintln!("---- executor log ----\n{}\n----", self.log_tail());
    }
}

async fn until<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) if Instant::now() > deadline => {
                return Err(e.context(format!("waiting for {what}")))
            }
            Err(_) => {}
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn disk_spec(version: u32) -> DeploymentSpec {
    serde_json::from_str(&format!(
        r#"{{"version":{version},"workloads":[{{"name":"data","kind":{{"disk":{{"size_mib":{DISK_MIB}}}}}}}]}}"#
    ))
    .unwrap()
}

async fn contracts_of(api: &Client, node: NodeId) -> Result<Vec<(ContractId, NodeContract)>> {
    runtime_call(api, "DeploymentsApi_contracts_of_node", &node.encode()).await
}

async fn submit_static<C: subxt::transactions::Payload>(
    api: &Client,
    call: &C,
    signer: &Keypair,
) -> Result<client::Events> {
    client::submit(api, call, signer).await
}

struct Grid {
    api: Client,
    farm: u32,
}

async fn setup_farm(node: &ChainNode) -> Result<Grid> {
    let api = client::connect(&node.ws_url()).await?;
    client::wait_finalized(&api, 1, Duration::from_secs(60)).await?;
    let events = client::submit(
        &api,
        &dynamic::tx("Grid", "create_farm", vec![Value::from_bytes(b"e2e-farm")]),
        &dev::alice(),
    )
    .await?;
    let farm = client::find_event(&events, "Grid", "FarmCreated")?
        .at("farm_id")
        .and_then(|v| v.as_u128())
        .context("farm id")? as u32;
    Ok(Grid { api, farm })
}

/// Pre-creates the executor's identity (as a farmer would before booting it) and funds it.
async fn funded_identity(grid: &Grid, data_dir: &Path) -> Result<AccountId32> {
    let id = NodeIdentity::load_or_create(&data_dir.join("identity.json"))?;
    let account = id.account_id();
    client::fund(&grid.api, &dev::alice(), &account, 50_000_000_000_000).await?;
    Ok(account)
}

async fn registered_node(api: &Client, account: &AccountId32) -> Result<NodeId> {
    until(
        "node registration and first heartbeat",
        Duration::from_secs(120),
        || async {
            let Some(node) =
                runtime_call::<Option<NodeId>>(api, "GridApi_node_by_account", &account.0.encode())
                    .await?
            else {
                return Ok(None);
            };
            let status: Option<zos_primitives::NodeStatus> =
                runtime_call(api, "GridApi_node_status", &node.encode()).await?;
            Ok((status == Some(zos_primitives::NodeStatus::Online)).then_some(node))
        },
    )
    .await
}

/// Alice creates a 2-of-2 contract with Bob (both required); Bob approves. Returns the id.
async fn create_approved_contract(
    api: &Client,
    node: NodeId,
    spec: &DeploymentSpec,
) -> Result<ContractId> {
    use runtime::runtime_types::pallet_deployments::types::Signer;
    let signers = vec![
        Signer {
            account: dev::alice().public_key().to_account_id(),
            weight: 1,
            required: true,
        },
        Signer {
            account: dev::bob().public_key().to_account_id(),
            weight: 1,
            required: true,
        },
    ];
    let create = runtime::tx().deployments().create(
        node,
        convert(spec)?,
        runtime::runtime_types::bounded_collections::bounded_vec::BoundedVec(signers),
        2,
    );
    let events = submit_static(api, &create, &dev::alice()).await?;
    let contract = client::find_event(&events, "Deployments", "ContractCreated")?
        .at("contract")
        .and_then(|v| v.as_u128())
        .context("contract id")? as ContractId;
    let approve = runtime::tx().deployments().approve(contract, spec.hash());
    let events = submit_static(api, &approve, &dev::bob()).await?;
    client::find_event(&events, "Deployments", "ContractActivated")?;
    Ok(contract)
}

async fn cancel(api: &Client, contract: ContractId) -> Result<()> {
    submit_static(
        api,
        &runtime::tx().deployments().propose_cancel(contract),
        &dev::alice(),
    )
    .await?;
    let pending = until("cancel proposal", Duration::from_secs(30), || async {
        let c = contracts_of_owner_pending(api, contract).await?;
        Ok(c)
    })
    .await?;
    let events = submit_static(
        api,
        &runtime::tx().deployments().approve(contract, pending),
        &dev::bob(),
    )
    .await?;
    client::find_event(&events, "Deployments", "ContractCancelled")?;
    Ok(())
}

async fn contracts_of_owner_pending(
    api: &Client,
    contract: ContractId,
) -> Result<Option<[u8; 32]>> {
    let list: Vec<zos_primitives::contracts::ContractSummary> = runtime_call(
        api,
        "DeploymentsApi_contracts_of_owner",
        &dev::alice().public_key().to_account_id().0.encode(),
    )
    .await?;
    Ok(list
        .into_iter()
        .find(|c| c.contract == contract)
        .and_then(|c| c.pending_proposal))
}

fn disk_file(data_dir: &Path, contract: ContractId) -> PathBuf {
    data_dir
        .join("contracts")
        .join(contract.to_string())
        .join("disks/data.raw")
}

async fn state_of(
    api: &Client,
    node: NodeId,
    contract: ContractId,
) -> Result<Option<ContractState>> {
    Ok(contracts_of(api, node)
        .await?
        .into_iter()
        .find(|(id, _)| *id == contract)
        .map(|(_, c)| c.state))
}

async fn settled_reports(api: &Client, from_block: u64) -> Result<Vec<(u64, u64, u64)>> {
    // (contract, window_start, window_end) of every accepted report since `from_block`.
    let head = api.at_current_block().await?.block_number();
    let mut out = Vec::new();
    for n in from_block..=head {
        let at = api.at_block(n).await?;
        for ev in at.events().fetch().await?.iter() {
            let ev = ev?;
            if ev.pallet_name() == "Billing" && ev.event_name() == "ReportRejected" {
                bail!(
                    "a consumption report was rejected at block {n}: {}",
                    ev.decode_fields_unchecked_as::<Value>()?
                );
            }
            if let Some(Ok(s)) = ev.decode_fields_as::<runtime::billing::events::ReportSettled>() {
                out.push((s.contract, s.window_start, s.window_end));
            }
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn executor_deploys_reports_and_cancels_a_disk_contract() -> Result<()> {
    let chain = ChainNode::start(NodeOptions::default())?;
    let grid = setup_farm(&chain).await?;
    let dir = tempfile::tempdir()?;
    let account = funded_identity(&grid, dir.path()).await?;
    let _executor = Executor::spawn(dir.path(), &chain.ws_url(), grid.farm)?;
    let node = registered_node(&grid.api, &account).await?;

    let owner = dev::alice().public_key().to_account_id();
    let spec = disk_spec(0);
    let contract = create_approved_contract(&grid.api, node, &spec).await?;
    let activated_at = Instant::now();
    let start_block = grid.api.at_current_block().await?.block_number();

    let disk = disk_file(dir.path(), contract);
    until("the disk file", Duration::from_secs(60), || async {
        Ok(disk.exists().then_some(()))
    })
    .await?;
    ensure!(
        std::fs::metadata(&disk)?.len() == DISK_MIB << 20,
        "disk has the spec's size"
    );
    until("Deployed on chain", Duration::from_secs(90), || async {
        Ok(matches!(
            state_of(&grid.api, node, contract).await?,
            Some(ContractState::Deployed)
        )
        .then_some(()))
    })
    .await?;
    eprintln!(
        "activation -> Deployed on chain: {:?}",
        activated_at.elapsed()
    );

    // Consumption reports settle: the owner pays, windows are contiguous, none rejected.
    let owner_before = client::free_balance(&grid.api, &owner).await?;
    let seen = settled_reports(&grid.api, start_block).await?.len();
    let reports = until(
        "two more settled consumption reports",
        Duration::from_secs(120),
        || async {
            let r = settled_reports(&grid.api, start_block).await?;
            Ok((r.len() >= seen + 2).then_some(r))
        },
    )
    .await?;
    ensure!(
        reports.windows(2).all(|w| w[0].2 == w[1].1),
        "windows not contiguous: {reports:?}"
    );
    ensure!(
        client::free_balance(&grid.api, &owner).await? < owner_before,
        "the owner paid nothing"
    );

    cancel(&grid.api, contract).await?;
    until("the disk removed", Duration::from_secs(60), || async {
        Ok((!disk.exists()).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn executor_survives_kill9_and_chain_restarts() -> Result<()> {
    let mut chain = ChainNode::start(NodeOptions::default())?;
    let grid = setup_farm(&chain).await?;
    let dir = tempfile::tempdir()?;
    let account = funded_identity(&grid, dir.path()).await?;
    let mut executor = Executor::spawn(dir.path(), &chain.ws_url(), grid.farm)?;
    let node = registered_node(&grid.api, &account).await?;
    let start_block = grid.api.at_current_block().await?.block_number();

    // Killed right after the contract is approved: on restart it converges and reports once.
    let first = create_approved_contract(&grid.api, node, &disk_spec(0)).await?;
    executor.kill9();
    executor.start()?;
    until(
        "first contract Deployed after kill -9",
        Duration::from_secs(120),
        || async {
            Ok(matches!(
                state_of(&grid.api, node, first).await?,
                Some(ContractState::Deployed)
            )
            .then_some(()))
        },
    )
    .await?;

    // Killed in the middle of metering: no window lost or billed twice.
    until("a settled report", Duration::from_secs(90), || async {
        Ok((!settled_reports(&grid.api, start_block).await?.is_empty()).then_some(()))
    })
    .await?;
    executor.kill9();
    tokio::time::sleep(Duration::from_secs(3)).await;
    executor.start()?;

    // The chain node restarts while the executor runs; a contract created after the restart
    // is still picked up (the follower backfills, the reconciler reads state).
    chain.restart()?;
    let api = client::connect(&chain.ws_url()).await?;
    let second = create_approved_contract(&api, node, &disk_spec(0)).await?;
    until(
        "second contract's disk",
        Duration::from_secs(120),
        || async { Ok(disk_file(dir.path(), second).exists().then_some(())) },
    )
    .await?;
    until(
        "second contract Deployed",
        Duration::from_secs(120),
        || async {
            Ok(matches!(
                state_of(&api, node, second).await?,
                Some(ContractState::Deployed)
            )
            .then_some(()))
        },
    )
    .await?;
    let reports = until(
        "reports of both contracts after the restarts",
        Duration::from_secs(120),
        || async {
            let r = settled_reports(&api, start_block).await?;
            let both =
                r.iter().any(|x| x.0 == first) && r.iter().filter(|x| x.0 == second).count() >= 1;
            Ok(both.then_some(r))
        },
    )
    .await?;
    for c in [first, second] {
        let mine: Vec<_> = reports.iter().filter(|r| r.0 == c).collect();
        ensure!(
            mine.windows(2).all(|w| w[0].2 == w[1].1),
            "contract {c}: windows overlap or gap: {mine:?}"
        );
    }
    Ok(())
}
