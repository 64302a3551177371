//! The real executor binary against a real chain node: registration, heartbeats, a 2-of-2
//! contract with a Disk workload deployed within a finalized block of activation, consumption
//! reports moving funds, cancellation removing the disk, and recovery from kill -9 of the
//! executor and from a chain node restart.

mod common;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Result};
use common::{
    cancel, create_approved_contract, funded_identity, online_node, setup_farm, state_of, Executor,
    ExecutorOptions, Polling, StopOnDrop,
};
use node_harness::{
    client::{self, Client},
    ChainNode, NodeOptions,
};
use subxt::dynamic::Value;
use subxt_signer::sr25519::dev;
use zos_executor::chain::runtime;
use zos_primitives::{contracts::ContractState, spec::DeploymentSpec, ContractId};

/// Big enough to cost something per window (a sparse file: nothing is allocated).
const DISK_MIB: u64 = 10 * 1024;

const POLLING: Polling = Polling::every(Duration::from_millis(500));

/// Disk workloads only: nothing the executor runs needs a clean shutdown when a test ends.
const EXECUTOR: ExecutorOptions = ExecutorOptions {
    log_filter: "info,zos_executor=debug",
    env: &[],
    stop_on_drop: StopOnDrop::Kill,
    log_tail_lines: 60,
};

fn disk_spec(version: u32) -> DeploymentSpec {
    serde_json::from_str(&format!(
        r#"{{"version":{version},"workloads":[{{"name":"data","kind":{{"disk":{{"size_mib":{DISK_MIB}}}}}}}]}}"#
    ))
    .unwrap()
}

fn disk_file(data_dir: &Path, contract: ContractId) -> PathBuf {
    data_dir
        .join("contracts")
        .join(contract.to_string())
        .join("disks/data.raw")
}

/// (contract, window_start, window_end) of every accepted report since `from_block`; fails on
/// any rejected report.
async fn settled_reports(api: &Client, from_block: u64) -> Result<Vec<(u64, u64, u64)>> {
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
    let grid = setup_farm(&chain, b"e2e-farm").await?;
    let dir = tempfile::tempdir()?;
    let account = funded_identity(&grid.api, dir.path()).await?;
    let _executor = Executor::spawn(dir.path(), &chain.ws_url(), grid.farm, EXECUTOR)?;
    let node = online_node(&grid.api, &account, POLLING).await?;

    let owner = dev::alice().public_key().to_account_id();
    let spec = disk_spec(0);
    let contract = create_approved_contract(&grid.api, node, &spec).await?;
    let activated_at = Instant::now();
    let start_block = grid.api.at_current_block().await?.block_number();

    let disk = disk_file(dir.path(), contract);
    POLLING
        .until("the disk file", Duration::from_secs(60), || async {
            Ok(disk.exists().then_some(()))
        })
        .await?;
    ensure!(
        std::fs::metadata(&disk)?.len() == DISK_MIB << 20,
        "disk has the spec's size"
    );
    POLLING
        .until("Deployed on chain", Duration::from_secs(90), || async {
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
    let reports = POLLING
        .until(
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

    cancel(&grid.api, contract, POLLING).await?;
    POLLING
        .until("the disk removed", Duration::from_secs(60), || async {
            Ok((!disk.exists()).then_some(()))
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn executor_survives_kill9_and_chain_restarts() -> Result<()> {
    let mut chain = ChainNode::start(NodeOptions::default())?;
    let grid = setup_farm(&chain, b"e2e-farm").await?;
    let dir = tempfile::tempdir()?;
    let account = funded_identity(&grid.api, dir.path()).await?;
    let mut executor = Executor::spawn(dir.path(), &chain.ws_url(), grid.farm, EXECUTOR)?;
    let node = online_node(&grid.api, &account, POLLING).await?;
    let start_block = grid.api.at_current_block().await?.block_number();

    // Killed right after the contract is approved: on restart it converges and reports once.
    let first = create_approved_contract(&grid.api, node, &disk_spec(0)).await?;
    executor.kill9();
    executor.start()?;
    POLLING
        .until(
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
    POLLING
        .until("a settled report", Duration::from_secs(90), || async {
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
    POLLING
        .until(
            "second contract's disk",
            Duration::from_secs(120),
            || async { Ok(disk_file(dir.path(), second).exists().then_some(())) },
        )
        .await?;
    POLLING
        .until(
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
    let reports = POLLING
        .until(
            "reports of both contracts after the restarts",
            Duration::from_secs(120),
            || async {
                let r = settled_reports(&api, start_block).await?;
                let both = r.iter().any(|x| x.0 == first)
                    && r.iter().filter(|x| x.0 == second).count() >= 1;
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
