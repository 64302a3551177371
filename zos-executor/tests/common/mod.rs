//! Shared by the executor's end-to-end tests: the real executor binary as a child process,
//! polling, and the chain steps every scenario needs (a farm, a funded node identity, a 2-of-2
//! contract between Alice and Bob, its cancellation).
//!
//! Executor-specific rather than part of `node-harness`: it runs this crate's binary and signs
//! with the executor's statically generated runtime calls.

// Each test binary compiles its own copy of this module and uses only part of it.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use codec::Encode;
use node_harness::{
    client::{self, runtime_call, Client},
    ChainNode,
};
use subxt::{
    dynamic::{self, At, Value},
    utils::AccountId32,
};
use subxt_signer::sr25519::dev;
use zos_executor::{
    chain::{convert, runtime},
    identity::NodeIdentity,
};
use zos_primitives::{
    contracts::{ContractState, ContractSummary, NodeContract},
    spec::DeploymentSpec,
    ContractId, NodeId, NodeStatus,
};

/// How the executor process is stopped when its [`Executor`] is dropped.
#[derive(Clone, Copy, Debug)]
pub enum StopOnDrop {
    /// SIGKILL: nothing the executor started is cleaned up.
    Kill,
    /// SIGTERM, which the executor handles like SIGINT (SIGKILL after a grace period). Either
    /// way the executor's guests outlive it in their shims: dropping an [`Executor`] stops them
    /// too ([`stop_shims`]).
    Terminate,
}

/// What differs between the scenarios' executors.
#[derive(Clone, Copy, Debug)]
pub struct ExecutorOptions {
    /// `RUST_LOG` of the executor.
    pub log_filter: &'static str,
    /// Further environment variables.
    pub env: &'static [(&'static str, &'static str)],
    pub stop_on_drop: StopOnDrop,
    /// How many of the last log lines [`Executor::log_tail`] returns.
    pub log_tail_lines: usize,
}

/// The `zos-executor` binary running against a chain node, its output in `executor.log` under
/// its data directory. Stopped when dropped, and its log's tail printed (test output is shown
/// only for failing tests).
pub struct Executor {
    child: Option<Child>,
    data_dir: PathBuf,
    log: PathBuf,
    url: String,
    farm: u32,
    options: ExecutorOptions,
    /// This executor's own environment variables, applied at every start.
    pub env: Vec<(String, String)>,
}

impl Executor {
    pub fn spawn(data_dir: &Path, url: &str, farm: u32, options: ExecutorOptions) -> Result<Self> {
        Self::spawn_with_env(data_dir, url, farm, options, vec![])
    }

    /// [`Self::spawn`] with further environment variables for this executor alone (kept for
    /// restarts; change them through [`Self::env`]).
    pub fn spawn_with_env(
        data_dir: &Path,
        url: &str,
        farm: u32,
        options: ExecutorOptions,
        env: Vec<(String, String)>,
    ) -> Result<Self> {
        let mut executor = Self {
            env,
            child: None,
            data_dir: data_dir.into(),
            log: data_dir.join("executor.log"),
            url: url.into(),
            farm,
            options,
        };
        executor.start()?;
        Ok(executor)
    }

    /// Starts the process (again, after [`Self::kill9`]) with the same data directory; the log
    /// is appended to.
    pub fn start(&mut self) -> Result<()> {
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
            // Off unless a scenario serves logs (several executors may share a namespace).
            .env("ZOS_ACCESS_ADDR", "off")
            .envs(self.options.env.iter().copied())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("RUST_LOG", self.options.log_filter)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("spawning zos-executor")?;
        self.child = Some(child);
        Ok(())
    }

    /// Points the next [`Self::start`] at another chain endpoint.
    pub fn set_url(&mut self, url: &str) {
        self.url = url.into();
    }

    /// Whether the process is still running (it may have exited on its own).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL: no chance to clean up, as in a power cut.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL if the executor has not exited within 15 s. Returns how it
    /// exited (None when it was not running).
    pub fn terminate(&mut self) -> Result<Option<std::process::ExitStatus>> {
        let Some(mut c) = self.child.take() else {
            return Ok(None);
        };
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = c.try_wait()? {
                return Ok(Some(status));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
        bail!("the executor did not exit within 15 s of SIGTERM")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(self.options.log_tail_lines)..].join("\n")
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        match self.options.stop_on_drop {
            StopOnDrop::Kill => self.kill9(),
            StopOnDrop::Terminate => {
                if let Err(e) = self.terminate() {
                    eprintln!("{e:#}");
                }
            }
        }
        eprintln!("---- executor log ----\n{}\n----", self.log_tail());
        // Guests outlive the executor by design; a test's guests end with its executor.
        stop_shims(&self.data_dir);
    }
}

/// The VM shims running for VMs under `data_dir` (pid, VM directory).
pub fn running_shims(data_dir: &Path) -> Vec<(i32, PathBuf)> {
    let mut found = Vec::new();
    let Ok(contracts) = std::fs::read_dir(data_dir.join("contracts")) else {
        return found;
    };
    for contract in contracts.flatten() {
        let Ok(vms) = std::fs::read_dir(contract.path().join("vms")) else {
            continue;
        };
        for vm in vms.flatten() {
            let dir = vm.path();
            let client = zos_executor::shim::client::ShimClient::new(&dir);
            if let Some(pid) = client.running_pid() {
                found.push((pid, dir));
            }
        }
    }
    found
}

/// Stops every VM shim under `data_dir` as a service manager would (SIGTERM: guest stopped,
/// image unmounted), SIGKILL for one that takes over 20 s, and kills a hypervisor left behind.
pub fn stop_shims(data_dir: &Path) {
    let shims = running_shims(data_dir);
    for (pid, _) in &shims {
        // SAFETY: plain kill(2) on a pid whose command line names a shim of this test.
        unsafe { libc::kill(*pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for (pid, dir) in &shims {
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if Path::new(&format!("/proc/{pid}")).exists() {
            // SAFETY: as above.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let hypervisor = std::fs::read_to_string(dir.join("hypervisor.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        if let Some(qemu) = hypervisor {
            let cmdline = std::fs::read(format!("/proc/{qemu}/cmdline")).unwrap_or_default();
            let pidfile = dir.join("hypervisor.pid");
            let needle = pidfile.as_os_str().as_encoded_bytes();
            if cmdline.windows(needle.len()).any(|w| w == needle) {
                // SAFETY: as above, for the hypervisor named by the VM's pid file.
                unsafe { libc::kill(qemu, libc::SIGKILL) };
            }
        }
    }
}

/// How often a test re-checks a condition it waits for.
#[derive(Clone, Copy, Debug)]
pub struct Polling {
    interval: Duration,
}

impl Polling {
    pub const fn every(interval: Duration) -> Self {
        Self { interval }
    }

    /// Calls `check` until it returns `Some(value)`. Errors count as "not yet" (the chain or the
    /// executor may be restarting); after `timeout` the last error, or a timeout, is returned.
    pub async fn until<T, F, Fut>(self, what: &str, timeout: Duration, mut check: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            match check().await {
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
            tokio::time::sleep(self.interval).await;
        }
    }
}

/// A client of the chain and the farm the executor joins.
pub struct Grid {
    pub api: Client,
    pub farm: u32,
}

/// Connects to `node`, waits for the first finalized block and lets Alice create a farm.
pub async fn setup_farm(node: &ChainNode, farm_name: &[u8]) -> Result<Grid> {
    let api = client::connect(&node.ws_url()).await?;
    client::wait_finalized(&api, 1, Duration::from_secs(60)).await?;
    let events = client::submit(
        &api,
        &dynamic::tx("Grid", "create_farm", vec![Value::from_bytes(farm_name)]),
        &dev::alice(),
    )
    .await?;
    let farm = client::find_event(&events, "Grid", "FarmCreated")?
        .at("farm_id")
        .and_then(|v| v.as_u128())
        .context("farm id")? as u32;
    Ok(Grid { api, farm })
}

/// Pre-creates the executor's identity (as a farmer would before booting it), funds it and
/// authorizes it to join Alice's `farm`.
pub async fn funded_identity(api: &Client, farm: u32, data_dir: &Path) -> Result<AccountId32> {
    let id = NodeIdentity::load_or_create(&data_dir.join("identity.json"))?;
    let account = id.account_id();
    client::fund(api, &dev::alice(), &account, 50_000_000_000_000).await?;
    client::authorize_node(api, &dev::alice(), farm, &account).await?;
    Ok(account)
}

async fn node_by_account(api: &Client, account: &AccountId32) -> Result<Option<NodeId>> {
    runtime_call(api, "GridApi_node_by_account", &account.0.encode()).await
}

/// Waits until the executor has registered its node.
pub async fn registered_node(
    api: &Client,
    account: &AccountId32,
    polling: Polling,
) -> Result<NodeId> {
    polling
        .until("node registration", Duration::from_secs(120), || {
            node_by_account(api, account)
        })
        .await
}

/// Waits until the executor has registered its node and the chain has its first heartbeat.
pub async fn online_node(api: &Client, account: &AccountId32, polling: Polling) -> Result<NodeId> {
    polling
        .until(
            "node registration and first heartbeat",
            Duration::from_secs(120),
            || async {
                let Some(node) = node_by_account(api, account).await? else {
                    return Ok(None);
                };
                let status: Option<NodeStatus> =
                    runtime_call(api, "GridApi_node_status", &node.encode()).await?;
                Ok((status == Some(NodeStatus::Online)).then_some(node))
            },
        )
        .await
}

/// Alice creates a 2-of-2 contract with Bob (both required); Bob approves (finalized). Returns
/// the id.
pub async fn create_approved_contract(
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
    let events = client::submit(api, &create, &dev::alice()).await?;
    let contract = client::find_event(&events, "Deployments", "ContractCreated")?
        .at("contract")
        .and_then(|v| v.as_u128())
        .context("contract id")? as ContractId;
    let approve = runtime::tx().deployments().approve(contract, spec.hash());
    let events = client::submit(api, &approve, &dev::bob()).await?;
    client::find_event(&events, "Deployments", "ContractActivated")?;
    Ok(contract)
}

/// Alice proposes the cancellation of a contract made by [`create_approved_contract`]; Bob
/// approves it.
pub async fn cancel(api: &Client, contract: ContractId, polling: Polling) -> Result<()> {
    client::submit(
        api,
        &runtime::tx().deployments().propose_cancel(contract),
        &dev::alice(),
    )
    .await?;
    let pending = polling
        .until("cancel proposal", Duration::from_secs(30), || {
            pending_proposal(api, contract)
        })
        .await?;
    let events = client::submit(
        api,
        &runtime::tx().deployments().approve(contract, pending),
        &dev::bob(),
    )
    .await?;
    client::find_event(&events, "Deployments", "ContractCancelled")?;
    Ok(())
}

/// The hash of the proposal awaiting approval on one of Alice's contracts.
async fn pending_proposal(api: &Client, contract: ContractId) -> Result<Option<[u8; 32]>> {
    let owner = dev::alice().public_key().to_account_id();
    let list: Vec<ContractSummary> =
        runtime_call(api, "DeploymentsApi_contracts_of_owner", &owner.0.encode()).await?;
    Ok(list
        .into_iter()
        .find(|c| c.contract == contract)
        .and_then(|c| c.pending_proposal))
}

/// The contract as the chain tells `node` about it.
pub async fn contract_of(
    api: &Client,
    node: NodeId,
    contract: ContractId,
) -> Result<Option<NodeContract>> {
    let contracts: Vec<(ContractId, NodeContract)> =
        runtime_call(api, "DeploymentsApi_contracts_of_node", &node.encode()).await?;
    Ok(contracts
        .into_iter()
        .find(|(id, _)| *id == contract)
        .map(|(_, c)| c))
}

pub async fn state_of(
    api: &Client,
    node: NodeId,
    contract: ContractId,
) -> Result<Option<ContractState>> {
    Ok(contract_of(api, node, contract).await?.map(|c| c.state))
}

pub fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// A minimal container image: busybox-static with a few applets (and `extra_applets`), plus
/// `files` (relative path, content).
pub fn busybox_rootfs(dir: &Path, extra_applets: &[&str], files: &[(&str, &str)]) -> Result<()> {
    let bb = which("busybox").context("busybox (busybox-static) on PATH")?;
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::create_dir_all(dir.join("etc"))?;
    std::fs::copy(&bb, dir.join("bin/busybox"))?;
    let base = ["sh", "echo", "cat", "sleep", "hostname", "ls", "mount"];
    for applet in base.iter().chain(extra_applets) {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet))?;
    }
    for (path, content) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().context("file path")?)?;
        std::fs::write(path, content)?;
    }
    Ok(())
}

/// Copies a host program into an image tree with the shared libraries it links (as `ldd`
/// lists them), at the same paths.
pub fn install_host_program(rootfs: &Path, program: &Path) -> Result<()> {
    let out = Command::new("ldd")
        .arg(program)
        .output()
        .context("running ldd")?;
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    let libs = listed
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from);
    for file in std::iter::once(program.to_path_buf()).chain(libs) {
        let to = rootfs.join(file.strip_prefix("/")?);
        std::fs::create_dir_all(to.parent().context("a file in a directory")?)?;
        std::fs::copy(&file, &to).with_context(|| format!("copying {}", file.display()))?;
    }
    Ok(())
}

/// A binary of this workspace built into the shared target directory (e.g. the `zos` CLI;
/// `cargo build --workspace --bins` makes them).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let profile = std::env::var("CARGO_PROFILE").unwrap_or_else(|_| "ci".into());
    let path = Path::new(&target).join(profile).join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} not found: build the workspace's binaries first (cargo build --profile ci --workspace --bins)",
        path.display()
    );
    Ok(path)
}

/// Runs a command (e.g. `ip`, `nft`) with no input and returns its output; panics when it
/// cannot be started.
pub fn run(cmd: &[&str]) -> std::process::Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// [`run`], failing with its stderr unless it succeeds.
pub fn ok(cmd: &[&str]) -> Result<()> {
    let out = run(cmd);
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// One accepted consumption report of a contract and the price the chain charged for it.
#[derive(Clone, Debug)]
pub struct SettledReport {
    pub window_start: u64,
    pub window_end: u64,
    pub uptime_seconds: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub charged: u128,
}

/// What the node last reported for workload `workload` of `contract`: `Ok(None)` when it is
/// fine, `Ok(Some(reason))` when unhealthy, an error when it failed or nothing is reported.
pub async fn reported_health(
    api: &Client,
    contract: ContractId,
    workload: &str,
) -> Result<Option<Option<String>>> {
    use runtime::runtime_types::pallet_deployments::types::WorkloadResult;
    let at = api.at_current_block().await?;
    let Some(report) = at
        .storage()
        .try_fetch(runtime::storage().deployments().reports(), (contract,))
        .await?
    else {
        return Ok(None);
    };
    let report = report.decode()?;
    let Some(entry) = report
        .workloads
        .0
        .iter()
        .find(|w| w.name.0 .0 == workload.as_bytes())
    else {
        anyhow::bail!("no {workload} in the report");
    };
    Ok(Some(match &entry.result {
        WorkloadResult::Ok => None,
        WorkloadResult::Unhealthy(reason) => Some(String::from_utf8_lossy(&reason.0).into_owned()),
        WorkloadResult::Error(reason) => {
            anyhow::bail!("{workload} failed: {}", String::from_utf8_lossy(&reason.0))
        }
    }))
}

/// Every report of `contract` settled in the blocks since `from_block`: the
/// `report_consumption` extrinsics' contents matched with their `ReportSettled` events.
pub async fn settled_reports(
    api: &Client,
    from_block: u64,
    contract: ContractId,
) -> Result<Vec<SettledReport>> {
    use runtime::billing::{calls::ReportConsumption, events::ReportSettled};
    let head = api.at_current_block().await?.block_number();
    let mut out = Vec::new();
    for n in from_block..=head {
        let at = api.at_block(n).await?;
        let mut reports = std::collections::HashMap::new();
        for call in at.extrinsics().fetch().await?.find::<ReportConsumption>() {
            for r in call?.reports.0 {
                if r.contract == contract {
                    reports.insert(r.window_start, r);
                }
            }
        }
        if reports.is_empty() {
            continue;
        }
        for settled in at.events().fetch().await?.find::<ReportSettled>() {
            let settled = settled?;
            if settled.contract != contract {
                continue;
            }
            if let Some(r) = reports.get(&settled.window_start) {
                out.push(SettledReport {
                    window_start: r.window_start,
                    window_end: r.window_end,
                    uptime_seconds: r.uptime_seconds,
                    bytes_in: r.public_bytes_in,
                    bytes_out: r.public_bytes_out,
                    charged: settled.charged,
                });
            }
        }
    }
    Ok(out)
}
