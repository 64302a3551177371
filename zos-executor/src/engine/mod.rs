//! The reconciler: level-triggered. Each pass compares the desired state (this node's contracts
//! with their approved specs, read from finalized chain state) with the local state, and drives
//! the drivers until they agree. Chain events only make a pass start early; a pass never depends
//! on having seen an event, so nothing is lost when events are missed.
//!
//! Rules:
//! - contracts are reconciled concurrently, workloads of one contract in dependency order
//!   (disks and volumes, networks, public IPs, VMs) and in reverse for removal;
//! - transient driver errors are retried with backoff and never become a terminal state;
//! - a spec that fails validation, or a sealed secret this node cannot open, fails that contract
//!   only, with the reason, which is reported on chain;
//! - grace period pauses the workloads and keeps their data; Active again resumes them;
//! - deletion needs proof: every pass names the finalized block its desired state was read at,
//!   and a pass at an older block than one already acted on is refused (a lagging or resyncing
//!   RPC backend never makes tenants' data disappear); a contract missing from the desired state
//!   is only tombstoned, and removed with its data once a later finalized block confirms it.
//!
//! Here the pass and the engine's state; `contract` brings one contract to its spec or removes
//! it.

mod contract;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};
use tokio::{sync::Semaphore, task::JoinSet};
use tracing::{debug, info, warn, Instrument};
use zos_primitives::{
    contracts::{ContractState, NodeContract},
    spec::{DeploymentSpec, Workload, WorkloadKind, WorkloadName},
    ContractId, PublicIpv4Config, PublicIpv6Config,
};

use crate::{
    drivers::{kind_name, CardReading, Driver, DriverError, Observed, WorkloadCtx},
    store::{LocalContract, Store, WorkloadOutcome},
};

/// How long an uptime check waits for a workload's driver (a VM's slot is held for the whole
/// of an install or a stop).
const UP_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Install order of a workload kind: what others depend on comes first.
fn install_rank(w: &Workload) -> u8 {
    match &w.kind {
        WorkloadKind::Disk(_) | WorkloadKind::Volume(_) => 0,
        WorkloadKind::Network(_) => 1,
        WorkloadKind::PublicIp(_) => 2,
        WorkloadKind::Vm(_) => 3,
        // Routes to the VMs once they are up (and after the networks they are reached in).
        WorkloadKind::Gateway(_) => 4,
        // Probes the VMs once they run.
        WorkloadKind::HealthCheck(_) => 5,
    }
}

fn ordered(spec: &DeploymentSpec) -> Vec<&Workload> {
    let mut list: Vec<&Workload> = spec.workloads.iter().collect();
    list.sort_by_key(|w| install_rank(w));
    list
}

/// The result of deploying one version of a contract, to report on chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeploymentResult {
    pub contract: ContractId,
    pub version: u32,
    pub outcomes: Vec<(Vec<u8>, WorkloadOutcome)>,
}

impl DeploymentResult {
    /// No workload failed (an unhealthy check is not a failure: the contract runs).
    pub fn all_ok(&self) -> bool {
        !self
            .outcomes
            .iter()
            .any(|(_, o)| matches!(o, WorkloadOutcome::Failed(_)))
    }

    /// The unhealthy checks and why, in order.
    pub fn unhealthy(&self) -> Vec<(Vec<u8>, String)> {
        unhealthy_of(&self.outcomes)
    }
}

fn unhealthy_of(outcomes: &[(Vec<u8>, WorkloadOutcome)]) -> Vec<(Vec<u8>, String)> {
    outcomes
        .iter()
        .filter_map(|(name, o)| match o {
            WorkloadOutcome::Unhealthy(reason) => Some((name.clone(), reason.clone())),
            _ => None,
        })
        .collect()
}

/// A desired state read at an older finalized block than one this node already acted on.
#[derive(Debug, thiserror::Error)]
#[error(
    "the chain view is at finalized block {seen}, behind block {acted_on} this node already \
     acted on (a lagging or resyncing RPC node?): nothing is changed until it catches up"
)]
pub struct StaleChainView {
    pub seen: u64,
    pub acted_on: u64,
}

/// Summary of one pass.
#[derive(Debug, Default)]
pub struct PassSummary {
    /// Results that differ from what was last reported: to be sent with report_deployment.
    pub to_report: Vec<DeploymentResult>,
    pub removed: Vec<ContractId>,
    /// Contracts that vanished from the desired state for the first time: kept until a later
    /// finalized block confirms it.
    pub tombstoned: Vec<ContractId>,
    /// Contracts left with transient errors (retried next pass).
    pub pending: Vec<ContractId>,
}

#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            first_backoff: Duration::from_millis(200),
        }
    }
}

pub struct Engine {
    store: Arc<Store>,
    drivers: HashMap<&'static str, Arc<dyn Driver>>,
    contracts_dir: PathBuf,
    /// Mounted capacity disks; each holds `contracts/<contract>` directories.
    capacity_roots: Vec<PathBuf>,
    /// Contracts reconciled at the same time.
    parallelism: usize,
    retry: RetryPolicy,
    /// Opens secrets sealed to this node (wiped from memory on drop); `None` in tests without
    /// networks.
    box_secret: Option<zeroize::Zeroizing<[u8; 32]>>,
    /// The node's public IPv6 subnet from its on-chain record (refreshed every pass).
    node_ipv6: std::sync::RwLock<Option<PublicIpv6Config>>,
    /// The node's gateway domain and public addresses from its on-chain record (refreshed
    /// every pass).
    node_domain: std::sync::RwLock<(Option<String>, Vec<std::net::IpAddr>)>,
    /// Per contract, the version and the health verdicts the chain last accepted from this
    /// process (unknown after a restart: reported again once).
    reported_health: std::sync::Mutex<HashMap<ContractId, (u32, Vec<(Vec<u8>, String)>)>>,
    /// Contract owners read from the chain (for sealed environment values; an owner never
    /// changes).
    owners: std::sync::RwLock<HashMap<ContractId, [u8; 32]>>,
}

/// What one contract task ended with.
enum ContractOutcome {
    Reconciled(Option<DeploymentResult>),
    Removed,
    Pending,
}

impl Engine {
    pub fn new(store: Arc<Store>, contracts_dir: PathBuf, drivers: Vec<Arc<dyn Driver>>) -> Self {
        let drivers = drivers.into_iter().map(|d| (d.kind(), d)).collect();
        Self {
            store,
            drivers,
            contracts_dir,
            capacity_roots: Vec::new(),
            parallelism: 8,
            retry: RetryPolicy::default(),
            box_secret: None,
            node_ipv6: std::sync::RwLock::new(None),
            node_domain: std::sync::RwLock::new((None, Vec::new())),
            reported_health: Default::default(),
            owners: Default::default(),
        }
    }

    /// Drops what is remembered about a removed contract.
    fn forget_contract(&self, contract: ContractId) {
        self.reported_health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&contract);
        self.owners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&contract);
    }

    /// Whether the owner of `contract` is known.
    pub fn knows_owner(&self, contract: ContractId) -> bool {
        self.owners
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&contract)
    }

    /// Records the owner of `contract` as the chain says it.
    pub fn set_owner(&self, contract: ContractId, owner: [u8; 32]) {
        self.owners
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(contract, owner);
    }

    /// The chain accepted `result`: its health verdicts need no report until they change.
    pub fn note_reported(&self, result: &DeploymentResult) {
        self.reported_health
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(result.contract, (result.version, result.unhealthy()));
    }

    /// The node's public IPv6 subnet as the chain declares it now; later passes use it.
    pub fn set_node_ipv6(&self, subnet: Option<PublicIpv6Config>) {
        *self.node_ipv6.write().unwrap_or_else(|p| p.into_inner()) = subnet;
    }

    /// The node's gateway domain and public addresses as the chain declares them now; later
    /// passes use them.
    pub fn set_node_domain(&self, domain: Option<String>, addresses: Vec<std::net::IpAddr>) {
        *self.node_domain.write().unwrap_or_else(|p| p.into_inner()) = (domain, addresses);
    }

    /// The node's capacity disks (mounted filesystems) where workload disks may be placed.
    pub fn with_capacity_roots(mut self, roots: Vec<PathBuf>) -> Self {
        self.capacity_roots = roots;
        self
    }

    pub fn with_parallelism(mut self, n: usize) -> Self {
        self.parallelism = n.max(1);
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    pub fn with_box_secret(mut self, secret: [u8; 32]) -> Self {
        self.box_secret = Some(zeroize::Zeroizing::new(secret));
        self
    }

    fn ctx(
        &self,
        contract: ContractId,
        spec: &DeploymentSpec,
        public_ips: &[(WorkloadName, PublicIpv4Config)],
    ) -> WorkloadCtx {
        WorkloadCtx {
            contract,
            dir: self.contracts_dir.join(contract.to_string()),
            capacity_dirs: self
                .capacity_roots
                .iter()
                .map(|root| root.join("contracts").join(contract.to_string()))
                .collect(),
            spec: Arc::new(spec.clone()),
            public_ips: public_ips.to_vec(),
            node_ipv6: *self.node_ipv6.read().unwrap_or_else(|p| p.into_inner()),
            node_domain: self
                .node_domain
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone(),
            node_addresses: self
                .node_domain
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .1
                .clone(),
            owner: self
                .owners
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&contract)
                .copied(),
        }
    }

    /// One reconcile pass over every contract, desired or local. `desired` is this node's
    /// contracts as of finalized block `at`.
    pub async fn reconcile(
        self: &Arc<Self>,
        desired: Vec<NodeContract>,
        at: u64,
    ) -> Result<PassSummary> {
        // Intent first: once this pass acts on block `at`, nothing older is ever acted on.
        let had_high_water = self.store.high_water()?;
        if let Some(acted_on) = had_high_water {
            if at < acted_on {
                return Err(StaleChainView { seen: at, acted_on }.into());
            }
        }
        self.store.set_high_water(at)?;
        let local: HashMap<ContractId, LocalContract> = self
            .store
            .contracts()?
            .into_iter()
            .map(|c| (c.contract, c))
            .collect();
        let desired_ids: std::collections::HashSet<ContractId> =
            desired.iter().map(|c| c.contract).collect();
        // Whatever this node may hold for a contract: a finished install, one a crash cut
        // short (its intent), or a bare directory from either.
        let mut local = local;
        for (id, spec) in self.store.intents()? {
            let entry = local.entry(id).or_insert_with(|| nothing_deployed(id));
            // Removal must undo the unfinished install's workloads too.
            for w in spec.workloads.iter() {
                if entry.spec.workload(&w.name).is_none() {
                    let _ = entry.spec.workloads.try_push(w.clone());
                }
            }
        }
        // Bare directories only once this node has acted on some view before (a lost state
        // database plus a syncing RPC node must not look like a list of orphans).
        let dirs = if had_high_water.is_some() {
            self.contract_dirs().await?
        } else {
            Vec::new()
        };
        for id in dirs {
            local.entry(id).or_insert_with(|| nothing_deployed(id));
        }
        let tombstones = self.store.tombstones()?;
        let revived: Vec<ContractId> = tombstones
            .keys()
            .copied()
            .filter(|id| desired_ids.contains(id))
            .collect();
        self.store.clear_tombstones(&revived)?;
        let mut summary = PassSummary::default();

        let permits = Arc::new(Semaphore::new(self.parallelism));
        let mut tasks = JoinSet::new();
        for want in desired {
            let engine = self.clone();
            let permits = permits.clone();
            let span =
                tracing::info_span!("contract", id = want.contract, version = want.spec.version);
            tasks.spawn(
                async move {
                    let _permit = permits.acquire_owned().await;
                    let id = want.contract;
                    (id, engine.reconcile_contract(&want).await)
                }
                .instrument(span),
            );
        }
        for (id, gone) in local
            .into_iter()
            .filter(|(id, _)| !desired_ids.contains(id))
        {
            match tombstones.get(&id) {
                // Missing at an earlier finalized block and still missing now: really gone.
                Some(first_missing) if *first_missing < at => {}
                Some(_) => {
                    summary.tombstoned.push(id);
                    continue;
                }
                None => {
                    info!(
                        contract = id,
                        block = at,
                        "contract no longer on this node in the chain's view: kept until a later finalized block confirms"
                    );
                    self.store.put_tombstone(id, at)?;
                    summary.tombstoned.push(id);
                    continue;
                }
            }
            let engine = self.clone();
            let permits = permits.clone();
            tasks.spawn(
                async move {
                    let _permit = permits.acquire_owned().await;
                    (id, engine.remove_contract(&gone).await)
                }
                .instrument(tracing::info_span!("contract", id)),
            );
        }

        while let Some(joined) = tasks.join_next().await {
            let (id, outcome) = joined?;
            match outcome {
                Ok(ContractOutcome::Reconciled(Some(result))) => summary.to_report.push(result),
                Ok(ContractOutcome::Reconciled(None)) => {}
                Ok(ContractOutcome::Removed) => {
                    self.forget_contract(id);
                    summary.removed.push(id)
                }
                Ok(ContractOutcome::Pending) => summary.pending.push(id),
                Err(e) => {
                    warn!(contract = id, error = %format!("{e:#}"), "reconcile failed; retried next pass");
                    summary.pending.push(id);
                }
            }
        }
        summary.to_report.sort_by_key(|r| r.contract);
        Ok(summary)
    }

    /// Runs a driver call with retries; `Err(Permanent)` or the last transient error.
    async fn with_retries<F, Fut, T>(&self, what: &str, mut call: F) -> Result<T, DriverError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, DriverError>>,
    {
        let mut backoff = self.retry.first_backoff;
        let mut attempt = 1;
        loop {
            match call().await {
                Ok(v) => return Ok(v),
                Err(DriverError::Permanent(reason)) => return Err(DriverError::Permanent(reason)),
                Err(DriverError::Transient(e)) if attempt >= self.retry.attempts => {
                    return Err(DriverError::Transient(e));
                }
                Err(DriverError::Transient(e)) => {
                    warn!(%what, attempt, error = %format!("{e:#}"), "transient error, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                    attempt += 1;
                }
            }
        }
    }

    fn driver(&self, w: &Workload) -> Result<&Arc<dyn Driver>, DriverError> {
        self.drivers.get(kind_name(w)).ok_or_else(|| {
            DriverError::permanent(format!(
                "this node has no driver for {} workloads",
                kind_name(w)
            ))
        })
    }

    /// Checks what the chain cannot: secrets sealed to this node must open with its key.
    fn check_secrets(&self, spec: &DeploymentSpec) -> Result<(), String> {
        for w in spec.workloads.iter() {
            if let WorkloadKind::Network(net) = &w.kind {
                let secret = self
                    .box_secret
                    .as_ref()
                    .ok_or("this node has no box key to open sealed secrets")?;
                zos_primitives::sealing::open(secret, &net.private_key.0).map_err(|e| {
                    format!(
                        "cannot open the sealed private key of network '{}': {e}",
                        String::from_utf8_lossy(w.name.as_bytes())
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Whether the chain has the health verdicts of `result` (trivially when the spec has no
    /// health check).
    fn health_known(&self, want: &NodeContract, result: &DeploymentResult) -> bool {
        let has_checks = want
            .spec
            .workloads
            .iter()
            .any(|w| w.as_health_check().is_some());
        !has_checks
            || self
                .reported_health
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&want.contract)
                == Some(&(result.version, result.unhealthy()))
    }

    /// Whether every workload of a deployed contract is up right now (what uptime counts).
    pub async fn is_up(&self, local: &LocalContract) -> bool {
        if local.outcomes.is_empty()
            || local
                .outcomes
                .iter()
                .any(|(_, o)| matches!(o, WorkloadOutcome::Failed(_)))
        {
            return false;
        }
        let ctx = self.ctx(local.contract, &local.spec, &[]);
        // A health check holds nothing (its VM counts); it is unknown to a restarted executor
        // until the next pass, which must not count as down time.
        for w in local
            .spec
            .workloads
            .iter()
            .filter(|w| w.as_health_check().is_none())
        {
            let Ok(driver) = self.driver(w) else {
                return false;
            };
            // A workload busy with a long install or stop is not up, and must not hold up the
            // samples of every other contract behind it.
            let observed = tokio::time::timeout(UP_CHECK_TIMEOUT, driver.inspect(&ctx, w))
                .await
                .unwrap_or_else(|_| {
                    Err(DriverError::Transient(anyhow::anyhow!(
                        "busy for over {UP_CHECK_TIMEOUT:?}"
                    )))
                });
            match observed {
                // A failing health check is the tenant's service, not the node's uptime.
                Ok(Observed::Running | Observed::Unhealthy(_)) => {}
                other => {
                    tracing::debug!(contract = local.contract, workload = %String::from_utf8_lossy(w.name.as_bytes()), observed = ?other.map_err(|e| e.to_string()), "not up");
                    return false;
                }
            }
        }
        true
    }

    /// The counters of every public card of a contract's workloads, by card.
    pub async fn public_traffic(&self, local: &LocalContract) -> Vec<(Vec<u8>, CardReading)> {
        let ctx = self.ctx(local.contract, &local.spec, &[]);
        let mut cards = Vec::new();
        for w in local.spec.workloads.iter() {
            if let Ok(driver) = self.driver(w) {
                cards.extend(driver.public_traffic(&ctx, w).await);
            }
        }
        cards
    }

    /// Contracts with a directory under the contracts directory or on a capacity disk.
    async fn contract_dirs(&self) -> Result<Vec<ContractId>> {
        let mut ids = Vec::new();
        let capacity = self.capacity_roots.iter().map(|r| r.join("contracts"));
        for (i, dir) in std::iter::once(self.contracts_dir.clone())
            .chain(capacity)
            .enumerate()
        {
            if let Err(e) = read_contract_ids(&dir, &mut ids).await {
                if i == 0 {
                    return Err(e);
                }
                // A failing capacity disk must not stop every contract's reconciling.
                warn!(dir = %dir.display(), error = %format!("{e:#}"), "capacity disk unreadable: its orphans wait");
            }
        }
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}

/// Adds the contract ids named by `dir`'s entries to `ids` (none when `dir` does not exist).
async fn read_contract_ids(dir: &std::path::Path, ids: &mut Vec<ContractId>) -> Result<()> {
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    while let Some(entry) = entries.next_entry().await? {
        if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
            ids.push(id);
        }
    }
    Ok(())
}

/// Fault injection for the crash tests: the process aborts (as under kill -9: no cleanup) at
/// the named point when `ZOS_FAILPOINT` names it. Never set outside tests.
fn failpoint(name: &str) {
    if std::env::var_os("ZOS_FAILPOINT").is_some_and(|v| v == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Workloads that hold a tenant's data rather than run.
fn is_data(w: &Workload) -> bool {
    matches!(w.kind, WorkloadKind::Disk(_) | WorkloadKind::Volume(_))
}

/// A contract this node holds nothing finished for (only an intent or a directory).
fn nothing_deployed(contract: ContractId) -> LocalContract {
    LocalContract {
        contract,
        spec: DeploymentSpec {
            version: 0,
            metadata: Default::default(),
            workloads: Default::default(),
        },
        spec_hash: [0; 32],
        outcomes: Vec::new(),
        serving: false,
    }
}

/// Creates `dir` (and missing parents) readable by the node only: a contract's directory holds
/// a tenant's disks, image mount and config channel.
pub async fn create_private_dir(dir: &std::path::Path) -> Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || create_private_dir_now(&dir))
        .await?
        .map_err(|e: anyhow::Error| e.context("creating the contract directory"))
}

/// [`create_private_dir`] on the calling thread (for code already off the async runtime).
pub fn create_private_dir_now(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    // An older directory (or one made before this rule) is tightened too, with its parent.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if let Some(parent) = dir.parent() {
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
