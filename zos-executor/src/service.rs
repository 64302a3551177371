//! Wires the executor together: identity, store, chain connection, registration, heartbeats,
//! the follower, the reconcile loop, metering and the report outbox.

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use codec::{Decode, Encode};
use tokio::sync::Notify;
use tracing::{error, info, warn};
use zos_primitives::{contracts::NodeContract, NodeId};

use crate::{
    chain::{calls, Chain, ConsumptionReport, TxError},
    config::{measure_host, Config},
    drivers::{
        disk::DiskDriver,
        vm::{host_support as vm_host_support, VmDriver, VmDriverConfig},
        Driver,
    },
    engine::{DeploymentResult, Engine},
    follower::{self, unix_ms},
    identity::NodeIdentity,
    meter::Meter,
    metrics::{self, Metrics, StateLabel},
    store::{Store, WorkloadOutcome},
};

const TX_TIMEOUT: Duration = Duration::from_secs(90);
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Reports per `report_consumption` extrinsic (the runtime accepts up to 256).
const REPORT_BATCH: usize = 128;

pub struct Executor {
    pub config: Config,
    pub identity: NodeIdentity,
    pub store: Arc<Store>,
    pub chain: Arc<Chain>,
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    pub node: NodeId,
    wake: Arc<Notify>,
}

/// Connects, retrying until the chain answers: a node may boot before its chain endpoint.
async fn connect(url: &str) -> Arc<Chain> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match Chain::connect(url).await {
            Ok(chain) => return Arc::new(chain),
            Err(e) => warn!(%url, error = %format!("{e:#}"), "chain not reachable yet"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// Retries `f` on transient errors with backoff; returns the dispatch error as is.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T, TxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, TxError>>,
{
    let mut backoff = Duration::from_secs(1);
    for attempt in 1.. {
        match f().await {
            Err(TxError::Transient(e)) if attempt < 8 => {
                warn!(%what, attempt, error = %format!("{e:#}"), "retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}

impl Executor {
    pub async fn start(config: Config, extra_drivers: Vec<Arc<dyn Driver>>) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let identity = NodeIdentity::load_or_create(&config.key_file)?;
        let store = Arc::new(Store::open(&config.data_dir.join("state.redb"))?);
        let metrics = Metrics::new();
        if let Some(addr) = config.metrics_addr {
            let m = metrics.clone();
            tokio::spawn(async move {
                if let Err(e) = metrics::serve(addr, m).await {
                    error!(error = %format!("{e:#}"), "metrics endpoint stopped");
                }
            });
        }
        info!(account = %identity.account_id(), url = %config.chain_url, "starting executor");
        let chain = connect(&config.chain_url).await;
        let node = register(&chain, &identity, &config).await?;
        info!(node, "node registered");
        let mut drivers: Vec<Arc<dyn Driver>> = vec![Arc::new(DiskDriver)];
        if !config.vm_enabled {
            info!("VM workloads disabled by configuration: they will fail with \"this node has no driver for vm workloads\"");
        } else {
            match vm_host_support() {
                Ok(()) => {
                    let vm_config = VmDriverConfig {
                        guest_cache: config.guest_cache.clone(),
                    };
                    drivers.push(Arc::new(VmDriver::new(vm_config, metrics.clone())));
                    info!("VM driver enabled");
                }
                Err(reason) => warn!(
                    %reason,
                    "this host cannot run VMs: vm workloads will fail with \"this node has no driver for vm workloads\""
                ),
            }
        }
        drivers.extend(extra_drivers);
        let engine = Arc::new(
            Engine::new(store.clone(), config.data_dir.join("contracts"), drivers)
                .with_box_secret(*identity.box_secret()),
        );
        Ok(Self {
            config,
            identity,
            store,
            chain,
            engine,
            metrics,
            node,
            wake: Arc::new(Notify::new()),
        })
    }

    /// Runs until the process is stopped.
    pub async fn run(self: Arc<Self>) -> Result<()> {
        let follower = tokio::spawn(follower::run(
            self.chain.clone(),
            self.store.clone(),
            self.wake.clone(),
            self.metrics.clone(),
        ));
        let heartbeats = tokio::spawn(self.clone().heartbeat_loop());
        let metering = tokio::spawn(self.clone().metering_loop());
        let reconcile = tokio::spawn(self.clone().reconcile_loop());
        tokio::select! {
            r = follower => r.context("follower task")?,
            r = heartbeats => r.context("heartbeat task")?,
            r = metering => r.context("metering task")?,
            r = reconcile => r.context("reconcile task")?,
        }
        bail!("a core task stopped")
    }

    async fn heartbeat_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.heartbeat_interval);
        let call = calls::heartbeat();
        loop {
            tick.tick().await;
            match retry("heartbeat", || {
                self.chain.submit(&call, &self.identity.account, TX_TIMEOUT)
            })
            .await
            {
                Ok(_) => {}
                // Too soon after the last one (e.g. right after a restart): the next tick sends.
                Err(TxError::Dispatch(e)) if e.contains("HeartbeatTooSoon") => {}
                Err(e) => warn!(error = %e, "heartbeat failed"),
            }
        }
    }

    async fn reconcile_loop(self: Arc<Self>) {
        let resync = Duration::from_secs(30);
        loop {
            if let Err(e) = self.reconcile_once().await {
                warn!(error = %format!("{e:#}"), "reconcile pass failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            // Level-triggered: a periodic pass repairs drift even without any chain event.
            let _ = tokio::time::timeout(resync, self.wake.notified()).await;
        }
    }

    pub async fn reconcile_once(&self) -> Result<()> {
        let started = std::time::Instant::now();
        let desired: Vec<NodeContract> = self.chain.contracts_of_node(self.node).await?;
        let summary = self.engine.reconcile(desired.clone()).await?;
        self.metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
        self.update_state_gauges(&desired);
        for result in summary.to_report {
            let spec = desired
                .iter()
                .find(|c| c.contract == result.contract)
                .map(|c| &c.spec);
            if let Some(spec) = spec {
                self.report_deployment(spec, &result).await;
            }
        }
        if !summary.pending.is_empty() {
            // Transient errors: come back soon rather than at the next resync.
            let wake = self.wake.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                wake.notify_one();
            });
        }
        Ok(())
    }

    fn update_state_gauges(&self, desired: &[NodeContract]) {
        use zos_primitives::contracts::ContractState::*;
        self.metrics.deployments.clear();
        for c in desired {
            let state = match &c.state {
                PendingApproval => "pending",
                Active => "active",
                Deployed => "deployed",
                Failed(_) => "failed",
                GracePeriod => "grace",
                Cancelled(_) => "cancelled",
            };
            self.metrics
                .deployments
                .get_or_create(&StateLabel {
                    state: state.into(),
                })
                .inc();
        }
    }

    /// report_deployment, once per distinct result (remembered in the store).
    async fn report_deployment(
        &self,
        spec: &zos_primitives::spec::DeploymentSpec,
        result: &DeploymentResult,
    ) {
        let key = (result.version, &result.outcomes).encode();
        if self
            .store
            .deploy_report(result.contract)
            .ok()
            .flatten()
            .as_deref()
            == Some(key.as_slice())
        {
            return;
        }
        // The pallet wants one entry per workload in spec order.
        let outcomes: Vec<(Vec<u8>, Option<String>)> = spec
            .workloads
            .iter()
            .map(|w| {
                let name = w.name.as_bytes().to_vec();
                let error = match result
                    .outcomes
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, o)| o)
                {
                    Some(WorkloadOutcome::Ok) => None,
                    Some(WorkloadOutcome::Failed(reason)) => Some(reason.clone()),
                    None => Some("not deployed".into()),
                };
                (name, error)
            })
            .collect();
        let call = match calls::report_deployment(result.contract, result.version, &outcomes) {
            Ok(call) => call,
            Err(e) => {
                return error!(contract = result.contract, error = %format!("{e:#}"), "cannot build report")
            }
        };
        match retry("report_deployment", || {
            self.chain.submit(&call, &self.identity.account, TX_TIMEOUT)
        })
        .await
        {
            Ok(_) => {
                info!(
                    contract = result.contract,
                    version = result.version,
                    ok = result.all_ok(),
                    "deployment reported"
                );
                self.metrics.sent("deployment");
                let _ = self.store.put_deploy_report(result.contract, &key);
            }
            Err(e) => {
                self.metrics.failed("deployment");
                warn!(contract = result.contract, error = %e, "report_deployment failed; the next pass retries");
            }
        }
    }

    fn meter(&self) -> Meter {
        let interval = self.config.report_interval.as_secs().clamp(1, 3600);
        Meter {
            interval,
            max_gap: (interval / 2).max(15),
        }
    }

    async fn metering_loop(self: Arc<Self>) {
        let sample_every = Duration::from_secs((self.meter().interval / 6).clamp(1, 10));
        let mut tick = tokio::time::interval(sample_every);
        loop {
            tick.tick().await;
            if let Err(e) = self.sample_all().await {
                warn!(error = %format!("{e:#}"), "metering failed");
            }
            if let Err(e) = self.flush_outbox().await {
                warn!(error = %format!("{e:#}"), "sending consumption reports failed; kept for retry");
            }
        }
    }

    async fn sample_all(&self) -> Result<()> {
        let meter = self.meter();
        let now = unix_ms() / 1000;
        for local in self.store.contracts()? {
            let up = local.serving && self.engine.is_up(&local).await;
            let state = match self.store.meter(local.contract)? {
                Some(state) => state,
                None if up => meter.start(now),
                None => continue,
            };
            let (next, reports) = meter.sample(local.contract, state, now, up);
            let encoded: Vec<(u64, Vec<u8>)> = reports
                .iter()
                .map(|r| (r.window_start, r.encode()))
                .collect();
            if encoded.is_empty() {
                self.store.put_meter(local.contract, &next)?;
            } else {
                self.store.close_windows(local.contract, &encoded, &next)?;
            }
        }
        Ok(())
    }

    /// Sends the outbox, oldest windows first, in batches; a batch leaves the outbox only once
    /// it is in a finalized block. Resending is safe: an identical report is a no-op on chain.
    pub async fn flush_outbox(&self) -> Result<()> {
        let entries = self.store.outbox()?;
        for chunk in entries.chunks(REPORT_BATCH) {
            let reports: Vec<ConsumptionReport> = chunk
                .iter()
                .map(|(_, bytes)| ConsumptionReport::decode(&mut &bytes[..]))
                .collect::<Result<_, _>>()?;
            let call = calls::report_consumption(&reports)?;
            match self
                .chain
                .submit(&call, &self.identity.account, TX_TIMEOUT)
                .await
            {
                Ok(events) => {
                    self.metrics.sent("consumption");
                    for rejected in
                        events.find::<crate::chain::runtime::billing::events::ReportRejected>()
                    {
                        let rejected = rejected?;
                        warn!(contract = rejected.contract, reason = ?rejected.reason, "consumption report rejected; resynchronising the window");
                        self.resync_meter(rejected.contract).await?;
                    }
                    let keys: Vec<_> = chunk.iter().map(|(k, _)| *k).collect();
                    self.store.remove_from_outbox(&keys)?;
                }
                Err(TxError::Dispatch(e)) => {
                    self.metrics.failed("consumption");
                    bail!("report_consumption refused: {e}");
                }
                Err(TxError::Transient(e)) => {
                    self.metrics.failed("consumption");
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// After a rejected window, continue from where the chain says billing stands.
    async fn resync_meter(&self, contract: zos_primitives::ContractId) -> Result<()> {
        let now = unix_ms() / 1000;
        let start = self.chain.billed_until(contract).await?.unwrap_or(now);
        if let Some(mut st) = self.store.meter(contract)? {
            st.window_start = start.min(now);
            st.up_seconds = 0;
            self.store.put_meter(contract, &st)?;
        }
        Ok(())
    }
}

/// Registers this node in the configured farm unless the chain already knows it, and keeps
/// its capacity up to date.
async fn register(chain: &Chain, identity: &NodeIdentity, config: &Config) -> Result<NodeId> {
    let account = identity.account_id();
    let capacity = match config.capacity {
        Some(c) => c,
        None => measure_host(&config.data_dir)?,
    };
    let mut warned = false;
    loop {
        if let Some(node) = chain.node_of(&account).await? {
            let record = crate::chain::node_record(chain, node).await?;
            let on_chain: zos_primitives::Resources = crate::chain::convert(&record.capacity)?;
            if on_chain != capacity || record.box_key != identity.box_public {
                let call = calls::update_capacity(capacity, identity.box_public, VERSION, &record)?;
                match retry("update_node", || {
                    chain.submit(&call, &identity.account, TX_TIMEOUT)
                })
                .await
                {
                    Ok(_) => info!(node, "node description updated"),
                    Err(e) => warn!(node, error = %e, "could not update the node's capacity"),
                }
            }
            return Ok(node);
        }
        let Some(farm) = config.farm_id else {
            bail!("account {account} is not a registered node and no farm id is configured (--farm-id)");
        };
        if chain.free_balance(&account).await? == 0 {
            if !warned {
                warn!(%account, "the node account has no funds to register: waiting for the farmer to fund it");
                warned = true;
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            continue;
        }
        let call = calls::register_node(farm, capacity, identity.box_public, VERSION)?;
        match retry("register_node", || {
            chain.submit(&call, &identity.account, TX_TIMEOUT)
        })
        .await
        {
            Ok(_) => {}
            Err(TxError::Dispatch(e)) if e.contains("AccountAlreadyHasNode") => {}
            Err(TxError::Dispatch(e)) => bail!("registering the node failed: {e}"),
            Err(e) => return Err(e.into()),
        }
    }
}
