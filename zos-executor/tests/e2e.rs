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
    let account = funded_identity(&grid.api, grid.farm, dir.path()).await?;
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

    let cancel_block = grid.api.at_current_block().await?.block_number();
    let cancelled_at = Instant::now();
    cancel(&grid.api, contract, POLLING).await?;
    POLLING
        .until("the disk removed", Duration::from_secs(60), || async {
            Ok((!disk.exists()).then_some(()))
        })
        .await?;

    // Every second is billed: the node reports the final window up to the end time (shorter
    // than its interval), and billing closes the contract without estimating anything.
    let (ended_at, last_end) = POLLING
        .until(
            "the final window settled and billing closed",
            Duration::from_secs(90),
            || final_window(&grid.api, cancel_block, contract),
        )
        .await?;
    ensure!(
        last_end == ended_at,
        "the last settled window ends at {last_end}, the contract at {ended_at}"
    );
    eprintln!(
        "cancel -> final window settled and billing closed: {:?}",
        cancelled_at.elapsed()
    );
    let reports = settled_reports(&grid.api, start_block).await?;
    ensure!(
        reports.windows(2).all(|w| w[0].2 == w[1].1),
        "windows not contiguous up to the end: {reports:?}"
    );
    Ok(())
}

/// `(ended_at, end of the last settled window)` once billing closed `contract` after it
/// ended (searching from `from_block`); fails if billing had to estimate the final window.
async fn final_window(
    api: &Client,
    from_block: u64,
    contract: ContractId,
) -> Result<Option<(u64, u64)>> {
    use runtime::billing::events::{AwaitingFinalReport, BillingClosed, FinalWindowEstimated};
    let head = api.at_current_block().await?.block_number();
    let (mut ended_at, mut last_end, mut closed) = (None, None, false);
    for n in from_block..=head {
        let at = api.at_block(n).await?;
        for ev in at.events().fetch().await?.iter() {
            let ev = ev?;
            if let Some(Ok(e)) = ev.decode_fields_as::<AwaitingFinalReport>() {
                if e.contract == contract {
                    ended_at = Some(e.ended_at);
                }
            }
            if let Some(Ok(e)) = ev.decode_fields_as::<runtime::billing::events::ReportSettled>() {
                if e.contract == contract {
                    last_end = Some(e.window_end);
                }
            }
            if let Some(Ok(e)) = ev.decode_fields_as::<FinalWindowEstimated>() {
                ensure!(
                    e.contract != contract,
                    "the node did not report the final window: billing estimated it"
                );
            }
            if let Some(Ok(e)) = ev.decode_fields_as::<BillingClosed>() {
                closed |= e.contract == contract;
            }
        }
    }
    Ok(match (ended_at, last_end, closed) {
        (Some(ended_at), Some(last_end), true) => Some((ended_at, last_end)),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn executor_survives_kill9_and_chain_restarts() -> Result<()> {
    let mut chain = ChainNode::start(NodeOptions::default())?;
    let grid = setup_farm(&chain, b"e2e-farm").await?;
    let dir = tempfile::tempdir()?;
    let account = funded_identity(&grid.api, grid.farm, dir.path()).await?;
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

/// Copies a directory tree (a stopped node's database).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// A second RPC node far behind the chain (here: a copy of the database from before the
/// contract existed, with no peers, so it never catches up) must not make the executor delete
/// a tenant's disk: in its view the contract does not exist. The executor refuses a view older
/// than the finalized block it already acted on, and carries on once pointed back.
#[tokio::test(flavor = "multi_thread")]
async fn a_lagging_rpc_node_never_makes_the_executor_delete_data() -> Result<()> {
    let mut chain = ChainNode::start(NodeOptions::default())?;
    let grid = setup_farm(&chain, b"lag-farm").await?;
    let dir = tempfile::tempdir()?;
    let account = funded_identity(&grid.api, grid.farm, dir.path()).await?;
    let mut executor = Executor::spawn(dir.path(), &chain.ws_url(), grid.farm, EXECUTOR)?;
    let node = online_node(&grid.api, &account, POLLING).await?;

    // The old state: the node registered, no contract yet.
    chain.kill();
    let snapshot = tempfile::tempdir()?;
    copy_tree(&chain.base_path, snapshot.path())?;
    chain.restart()?;
    let api = client::connect(&chain.ws_url()).await?;

    let contract = create_approved_contract(&api, node, &disk_spec(0)).await?;
    POLLING
        .until("Deployed on chain", Duration::from_secs(120), || async {
            Ok(matches!(
                state_of(&api, node, contract).await?,
                Some(ContractState::Deployed)
            )
            .then_some(()))
        })
        .await?;
    let disk = disk_file(dir.path(), contract);
    ensure!(disk.exists(), "the disk was deployed");

    // The lagging node: the same chain, no authoring key, no peers.
    let lagging = ChainNode::start(NodeOptions {
        chain: Some("dev".into()),
        base_path: Some(snapshot.path().to_path_buf()),
        ..Default::default()
    })?;
    executor.kill9();
    executor.set_url(&lagging.ws_url());
    executor.start()?;
    let log = dir.path().join("executor.log");
    POLLING
        .until(
            "the executor refusing the stale view",
            Duration::from_secs(90),
            || async {
                let text = std::fs::read_to_string(&log)?;
                Ok(text.contains("reconcile pass refused").then_some(()))
            },
        )
        .await?;
    // Several more passes (one every 5 s while refused): the disk stays.
    tokio::time::sleep(Duration::from_secs(12)).await;
    ensure!(executor.is_running(), "the executor died on the stale view");
    ensure!(
        disk.exists(),
        "the disk was deleted on a lagging node's view"
    );

    // Back on the real chain: still deployed, reporting, and a cancel still removes the disk.
    executor.kill9();
    executor.set_url(&chain.ws_url());
    executor.start()?;
    let since = api.at_current_block().await?.block_number();
    POLLING
        .until(
            "a settled report after the switch back",
            Duration::from_secs(120),
            || async { Ok((!settled_reports(&api, since).await?.is_empty()).then_some(())) },
        )
        .await?;
    ensure!(disk.exists());
    cancel(&api, contract, POLLING).await?;
    POLLING
        .until(
            "the disk removed after the cancel",
            Duration::from_secs(90),
            || async { Ok((!disk.exists()).then_some(())) },
        )
        .await?;
    Ok(())
}

/// Operator chaos: the executor is SIGKILLed every few seconds while contracts are created and
/// cancelled and reports flow. The chain must see every window exactly once: no report rejected
/// (each would cost the node a fee), windows contiguous, the uptime billed equal to the time
/// covered minus at most one window, and reports flowing again soon after the last restart.
#[tokio::test(flavor = "multi_thread")]
async fn reports_stay_exactly_once_under_repeated_kill9() -> Result<()> {
    use std::sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    };
    let chain = ChainNode::start(NodeOptions::default())?;
    let grid = setup_farm(&chain, b"chaos-farm").await?;
    let dir = tempfile::tempdir()?;
    let account = funded_identity(&grid.api, grid.farm, dir.path()).await?;
    let mut executor = Executor::spawn(dir.path(), &chain.ws_url(), grid.farm, EXECUTOR)?;
    let node = online_node(&grid.api, &account, POLLING).await?;
    let start_block = grid.api.at_current_block().await?.block_number();

    let stop = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicU32::new(0));
    let killer = {
        let (stop, kills) = (stop.clone(), kills.clone());
        std::thread::spawn(move || {
            // Intervals of 2.5-6.5 s, varied so kills land in every phase of a pass.
            let mut seed = 0x9e37_79b9_u64;
            while !stop.load(Ordering::SeqCst) {
                seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                std::thread::sleep(Duration::from_millis(2_500 + (seed >> 33) % 4_000));
                executor.kill9();
                if let Err(e) = executor.start() {
                    eprintln!("restarting the executor: {e:#}");
                }
                kills.fetch_add(1, Ordering::SeqCst);
            }
            executor
        })
    };
    let chaos_started = Instant::now();
    let first = create_approved_contract(&grid.api, node, &disk_spec(0)).await?;
    let second = create_approved_contract(&grid.api, node, &disk_spec(0)).await?;
    let third = create_approved_contract(&grid.api, node, &disk_spec(0)).await?;
    POLLING
        .until(
            "the second contract Deployed",
            Duration::from_secs(120),
            || async {
                Ok(matches!(
                    state_of(&grid.api, node, second).await?,
                    Some(ContractState::Deployed)
                )
                .then_some(()))
            },
        )
        .await?;
    cancel(&grid.api, second, POLLING).await?;
    while chaos_started.elapsed() < Duration::from_secs(100) {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let _executor = killer.join().expect("the killer thread");
    let last_restart = follower_now();
    let last_restart_at = Instant::now();
    let kills = kills.load(Ordering::SeqCst);
    ensure!(kills >= 15, "only {kills} kills");

    // Reports flow again: a window starting after the last restart settles for both contracts.
    let reports = POLLING
        .until(
            "windows after the last restart settled",
            Duration::from_secs(90),
            || async {
                let r = settled_reports(&grid.api, start_block).await?;
                let fresh = [first, third].iter().all(|c| {
                    r.iter()
                        .any(|(id, start, _)| id == c && *start >= last_restart)
                });
                Ok(fresh.then_some(r))
            },
        )
        .await?;
    let flowing_after = last_restart_at.elapsed();
    // settled_reports fails on any ReportRejected since the start: none happened.
    let uptimes = reported_uptimes(&grid.api, start_block).await?;
    for c in [first, third] {
        let mine: Vec<_> = reports.iter().filter(|r| r.0 == c).collect();
        ensure!(
            mine.windows(2).all(|w| w[0].2 == w[1].1),
            "contract {c}: windows overlap or gap: {mine:?}"
        );
        let covered = mine.last().unwrap().2 - mine[0].1;
        let up: u64 = mine
            .iter()
            .map(|w| uptimes.get(*w).copied().unwrap_or(0))
            .sum();
        eprintln!(
            "contract {c}: {} windows, {covered} s covered, {up} s uptime billed",
            mine.len()
        );
        ensure!(
            up + 6 >= covered,
            "contract {c}: {up} s billed of {covered} s deployed"
        );
    }
    eprintln!(
        "{kills} kills in {:?}; reports flowing again {:?} after the last restart",
        chaos_started.elapsed(),
        flowing_after
    );
    Ok(())
}

fn follower_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Uptime of every reported window, by (contract, window start, window end), read from the
/// `report_consumption` extrinsics of the blocks since `from_block`.
async fn reported_uptimes(
    api: &Client,
    from_block: u64,
) -> Result<std::collections::HashMap<(u64, u64, u64), u64>> {
    use runtime::billing::calls::ReportConsumption;
    let head = api.at_current_block().await?.block_number();
    let mut out = std::collections::HashMap::new();
    for n in from_block..=head {
        let at = api.at_block(n).await?;
        for call in at.extrinsics().fetch().await?.find::<ReportConsumption>() {
            for r in call?.reports.0 {
                out.insert((r.contract, r.window_start, r.window_end), r.uptime_seconds);
            }
        }
    }
    Ok(out)
}

/// An executor down for longer than its node keeps state (`--state-pruning`) cannot backfill
/// the events it missed: it skips to the finalized head (the reconciler reads the current
/// state in full anyway) instead of failing forever, and goes on deploying.
#[tokio::test(flavor = "multi_thread")]
async fn the_follower_skips_blocks_whose_state_was_pruned() -> Result<()> {
    let chain = ChainNode::start(NodeOptions {
        extra_args: vec!["--state-pruning".into(), "4".into()],
        ..Default::default()
    })?;
    let grid = setup_farm(&chain, b"pruned-farm").await?;
    let dir = tempfile::tempdir()?;
    let account = funded_identity(&grid.api, grid.farm, dir.path()).await?;
    let mut executor = Executor::spawn(dir.path(), &chain.ws_url(), grid.farm, EXECUTOR)?;
    let node = online_node(&grid.api, &account, POLLING).await?;
    executor.kill9();
    let down_at = grid.api.at_current_block().await?.block_number();
    POLLING
        .until(
            "ten finalized blocks beyond the pruning window",
            Duration::from_secs(150),
            || async {
                let head = grid.api.at_current_block().await?.block_number();
                Ok((head >= down_at + 10).then_some(()))
            },
        )
        .await?;
    executor.start()?;
    let log = dir.path().join("executor.log");
    POLLING
        .until(
            "the follower skipping to the head",
            Duration::from_secs(60),
            || async {
                let text = std::fs::read_to_string(&log)?;
                Ok(text.contains("skipped to the finalized head").then_some(()))
            },
        )
        .await?;
    let contract = create_approved_contract(&grid.api, node, &disk_spec(0)).await?;
    POLLING
        .until(
            "Deployed after the skip",
            Duration::from_secs(120),
            || async {
                Ok(matches!(
                    state_of(&grid.api, node, contract).await?,
                    Some(ContractState::Deployed)
                )
                .then_some(()))
            },
        )
        .await?;
    ensure!(executor.is_running());
    Ok(())
}

/// kill -9 in the middle of an install and in the middle of a removal (the process aborts at
/// a fault-injection point right after one of two disks was made, and right after one of them
/// was removed): each restart converges, and nothing of the contract is left at the end.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_mid_install_or_mid_remove_leaves_nothing_behind() -> Result<()> {
    const CRASH_MID_INSTALL: ExecutorOptions = ExecutorOptions {
        env: &[("ZOS_FAILPOINT", "install-midway")],
        ..EXECUTOR
    };
    const CRASH_MID_REMOVE: ExecutorOptions = ExecutorOptions {
        env: &[("ZOS_FAILPOINT", "remove-midway")],
        ..EXECUTOR
    };
    let chain = ChainNode::start(NodeOptions::default())?;
    let grid = setup_farm(&chain, b"crash-farm").await?;
    let dir = tempfile::tempdir()?;
    let account = funded_identity(&grid.api, grid.farm, dir.path()).await?;
    let mut executor = Executor::spawn(dir.path(), &chain.ws_url(), grid.farm, CRASH_MID_INSTALL)?;
    let node = online_node(&grid.api, &account, POLLING).await?;

    let spec: DeploymentSpec = serde_json::from_str(
        r#"{"version":0,"workloads":[
            {"name":"a","kind":{"disk":{"size_mib":64}}},
            {"name":"b","kind":{"disk":{"size_mib":64}}}]}"#,
    )?;
    let contract = create_approved_contract(&grid.api, node, &spec).await?;
    let contract_dir = dir.path().join("contracts").join(contract.to_string());
    let disk = |name: &str| contract_dir.join(format!("disks/{name}.raw"));
    POLLING
        .until("the crash mid-install", Duration::from_secs(90), || {
            let running = executor.is_running();
            async move { Ok((!running).then_some(())) }
        })
        .await?;
    ensure!(
        disk("a").exists() && !disk("b").exists(),
        "not stopped between the two disks"
    );
    drop(executor);

    // Restart: the install completes; then a crash in the middle of removing it.
    let mut executor = Executor::spawn(dir.path(), &chain.ws_url(), grid.farm, CRASH_MID_REMOVE)?;
    POLLING
        .until(
            "Deployed after the crash",
            Duration::from_secs(120),
            || async {
                Ok(matches!(
                    state_of(&grid.api, node, contract).await?,
                    Some(ContractState::Deployed)
                )
                .then_some(()))
            },
        )
        .await?;
    ensure!(disk("a").exists() && disk("b").exists());
    cancel(&grid.api, contract, POLLING).await?;
    POLLING
        .until("the crash mid-remove", Duration::from_secs(90), || {
            let running = executor.is_running();
            async move { Ok((!running).then_some(())) }
        })
        .await?;
    ensure!(
        disk("a").exists() && !disk("b").exists(),
        "not stopped between the two removals"
    );
    drop(executor);

    // Restart without faults: the removal completes, nothing of the contract is left.
    let _executor = Executor::spawn(dir.path(), &chain.ws_url(), grid.farm, EXECUTOR)?;
    POLLING
        .until(
            "the contract directory removed",
            Duration::from_secs(90),
            || async { Ok((!contract_dir.exists()).then_some(())) },
        )
        .await?;
    let left: Vec<_> = std::fs::read_dir(dir.path().join("contracts"))?.collect();
    ensure!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}
