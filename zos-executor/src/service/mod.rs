//! Wires the executor together: identity, store, chain connection, heartbeats, the follower
//! and the reconcile loop; `registration` puts the node on chain, `reports` sends deployment
//! results and meters consumption for the outbox.

mod registration;
mod reports;

use registration::register;

use std::{sync::Arc, time::Duration};

use anyhow::{bail, Context, Result};
use codec::Encode;
use tokio::sync::Notify;
use tracing::{error, info, warn};
use zos_primitives::{contracts::NodeContract, NodeId, PublicIpv6Config};

use crate::{
    access::{self, agent::AgentLinks, Access},
    chain::{calls, Chain, ReportedOutcome, TxError},
    config::{offered_capacity, Config, OverlayConfig},
    drivers::{
        disk::DiskDriver,
        health::HealthDriver,
        network::{NetNaming, NetworkDriver, NetworkPolicy, NodeNetworks, NodeOverlay},
        public_ip::PublicIpDriver,
        vm::{
            host_support as vm_host_support, probes::AgentProbes, ImageSourcePolicy, VmDriver,
            VmDriverConfig,
        },
        volume::VolumeDriver,
        Driver,
    },
    engine::{DeploymentResult, Engine, StaleChainView},
    follower::{self, unix_ms},
    identity::NodeIdentity,
    meter::Meter,
    metrics::{self, Metrics, StateLabel},
    outbox::OutboxState,
    store::{MeterSample, Store, WorkloadOutcome},
};

pub(crate) const TX_TIMEOUT: Duration = Duration::from_secs(90);

pub struct Executor {
    pub config: Config,
    pub identity: NodeIdentity,
    pub store: Arc<Store>,
    pub chain: Arc<Chain>,
    pub engine: Arc<Engine>,
    pub metrics: Arc<Metrics>,
    pub node: NodeId,
    wake: Arc<Notify>,
    /// Connections to the guests' agents (deployers' sessions and health probes).
    agents: Arc<AgentLinks>,
    pub(crate) outbox: OutboxState,
    /// Contracts whose deployment result is being reported.
    reports_in_flight: std::sync::Mutex<std::collections::HashSet<zos_primitives::ContractId>>,
    /// Deployment reports waiting for finality at once.
    report_slots: tokio::sync::Semaphore,
    /// Whether this node's on-chain public config was read once since start.
    node_config_read: std::sync::atomic::AtomicBool,
    /// Held while meter states are read and written (sampling, and a resync after a rejected
    /// report), which run in different tasks.
    pub(crate) meter_states: tokio::sync::Mutex<()>,
}

/// The chain node behind the RPC says it is still syncing: its state may be far behind.
#[derive(Debug, thiserror::Error)]
#[error(
    "the chain node is still syncing (its state may be old): nothing is changed until it is done"
)]
pub struct NodeSyncing;

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
        let outbox = OutboxState::default();
        let node = register(&chain, &identity, &config).await?;
        info!(node, "node registered");
        let mut drivers: Vec<Arc<dyn Driver>> = vec![Arc::new(DiskDriver), Arc::new(VolumeDriver)];
        // A health check's change of verdict wakes a reconcile pass, which reports it.
        let wake = Arc::new(Notify::new());
        let agents = Arc::new(AgentLinks::default());
        let overlay = match &config.overlay {
            Some(overlay) => Some(node_overlay(overlay).await?),
            None => None,
        };
        if let (Some((overlay, key)), Some(settings)) = (&overlay, &config.overlay) {
            publish_overlay(&chain, &identity, node, overlay, key, &settings.addresses).await?;
        }
        let overlay = overlay.map(|(overlay, _)| overlay);
        let networks = start_networks(&config).await.map(|networks| {
            Arc::new(
                NodeNetworks::new(
                    networks,
                    NetNaming::new(identity.box_secret()),
                    config.public_bridge.clone(),
                )
                .with_overlay(overlay.clone()),
            )
        });
        if let Some(networks) = &networks {
            drivers.push(Arc::new(NetworkDriver::new(
                networks.clone(),
                *identity.box_secret(),
                NetworkPolicy {
                    outbound_internet: config.allow_outbound_internet,
                },
            )));
            drivers.push(Arc::new(PublicIpDriver::new(networks.clone())));
        }
        if let Some(gateway) = &config.gateway {
            let driver =
                crate::drivers::gateway::start(gateway, &config.data_dir, networks.clone())
                    .await
                    .context("starting the web gateway")?;
            drivers.push(Arc::new(driver));
        }
        if !config.vm_enabled {
            info!("VM workloads disabled by configuration: they will fail with \"this node has no driver for vm workloads\"");
        } else {
            match vm_host_support() {
                Ok(()) => {
                    let vm_config = VmDriverConfig {
                        guest_cache: config.guest_cache.clone(),
                        kernel_pin: config.guest_kernel_blake3.clone(),
                        stop_grace: config.vm_stop_grace,
                        vm_users: config.vm_users.clone(),
                        io_limit: config.vm_io_limit,
                        image_sources: ImageSourcePolicy {
                            allowed: config.allowed_image_sources.clone(),
                            overlay_hub: config.overlay_hub.clone(),
                        },
                    };
                    let mut vm_driver = VmDriver::new(vm_config, metrics.clone())
                        .with_box_secret(*identity.box_secret());
                    if let Some(networks) = &networks {
                        vm_driver = vm_driver.with_networks(networks.clone());
                    }
                    let vm_driver = Arc::new(vm_driver);
                    drivers.push(vm_driver.clone());
                    drivers.push(Arc::new(HealthDriver::start(
                        Arc::new(AgentProbes::new(agents.clone(), vm_driver)),
                        wake.clone(),
                    )));
                    info!("VM and health-check drivers enabled");
                    if let Some(reason) = zos_vm::cgroup::unavailable_reason(std::path::Path::new(
                        zos_vm::cgroup::DEFAULT_ROOT,
                    )) {
                        warn!(%reason, "VMs will run without cgroup limits: their vCPUs and memory are bounded by QEMU's arguments only, their host threads and disk bandwidth not at all");
                    }
                    if config.vm_users.is_none() {
                        warn!("--vm-users off: every VM's QEMU runs as nobody, so a guest escaping into its QEMU could signal the others'");
                    }
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
                .with_capacity_roots(crate::config::capacity_roots(&config.data_dir))
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
            wake,
            agents,
            outbox,
            reports_in_flight: Default::default(),
            report_slots: tokio::sync::Semaphore::new(8),
            node_config_read: Default::default(),
            meter_states: Default::default(),
        })
    }

    /// Runs until the process is stopped.
    pub async fn run(self: Arc<Self>) -> Result<()> {
        // Before this process sends anything: what did the previous one leave pending?
        if let Err(e) = self.note_earlier_transactions().await {
            warn!(error = %format!("{e:#}"), "could not check for pending transactions of an earlier run");
        }
        let wanted = self.config.report_interval.as_secs();
        if self.meter().interval != wanted {
            warn!(
                wanted,
                using = self.meter().interval,
                min_window = self.chain.min_window_secs(),
                "the report interval must be a multiple of the chain's minimum window (and at most its longest one)"
            );
        }
        if let Some(addr) = self.config.access_addr {
            let access = Arc::new(
                Access::new(
                    self.chain.clone(),
                    self.node,
                    self.config.data_dir.join("contracts"),
                )
                .with_agents(self.agents.clone()),
            );
            tokio::spawn(async move {
                if let Err(e) = access::serve(addr, access).await {
                    error!(error = %format!("{e:#}"), "access endpoint stopped: deployers cannot read logs");
                }
            });
        }
        let follower = tokio::spawn(follower::run(
            self.chain.clone(),
            self.store.clone(),
            self.wake.clone(),
            self.metrics.clone(),
        ));
        let heartbeats = tokio::spawn(self.clone().heartbeat_loop());
        let metering = tokio::spawn(self.clone().metering_loop());
        let reporting = tokio::spawn(self.clone().reporting_loop());
        let reconcile = tokio::spawn(self.clone().reconcile_loop());
        tokio::select! {
            r = follower => r.context("follower task")?,
            r = heartbeats => r.context("heartbeat task")?,
            r = metering => r.context("metering task")?,
            r = reporting => r.context("reporting task")?,
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
                Err(TxError::Dispatch(e)) if e.is("Grid", "HeartbeatTooSoon") => {}
                // Removed from the grid (evicted, found dead, or by governance): every further
                // heartbeat would pay a fee for nothing. Stopping a core task ends the process;
                // started again, it waits for a new authorization without paying fees.
                Err(TxError::Dispatch(e)) if e.is("Grid", "NotANode") => {
                    warn!("this node is no longer registered on the grid; stopping");
                    return;
                }
                Err(e) => warn!(error = %e, "heartbeat failed"),
            }
        }
    }

    async fn reconcile_loop(self: Arc<Self>) {
        let resync = Duration::from_secs(30);
        loop {
            if let Err(e) = self.reconcile_once().await {
                if e.is::<StaleChainView>() || e.is::<NodeSyncing>() {
                    // Nothing to retry quickly: the endpoint has to catch up first.
                    self.metrics.stale_views.inc();
                    warn!(reason = %e, "reconcile pass refused");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
                warn!(error = %format!("{e:#}"), "reconcile pass failed; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            // Level-triggered: a periodic pass repairs drift even without any chain event.
            let _ = tokio::time::timeout(resync, self.wake.notified()).await;
        }
    }

    pub async fn reconcile_once(self: &Arc<Self>) -> Result<()> {
        let started = std::time::Instant::now();
        if self.chain.is_syncing().await? {
            return Err(NodeSyncing.into());
        }
        self.refresh_node_ipv6().await?;
        let (at, desired): (u64, Vec<NodeContract>) =
            self.chain.contracts_of_node(self.node).await?;
        self.learn_owners(&desired).await;
        let summary = self.engine.reconcile(desired.clone(), at).await?;
        self.metrics
            .reconcile_seconds
            .observe(started.elapsed().as_secs_f64());
        self.update_state_gauges(&desired);
        for result in summary.to_report {
            let spec = desired
                .iter()
                .find(|c| c.contract == result.contract)
                .map(|c| c.spec.clone());
            if let Some(spec) = spec {
                self.queue_deployment_report(spec, result);
            }
        }
        if !summary.pending.is_empty() || !summary.tombstoned.is_empty() {
            // Transient errors: come back soon rather than at the next resync.
            let wake = self.wake.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                wake.notify_one();
            });
        }
        Ok(())
    }

    /// Reads the owners of contracts with sealed environment values (they are bound to it)
    /// that the engine does not know yet. A failed read leaves the VM waiting for the next pass.
    async fn learn_owners(&self, desired: &[NodeContract]) {
        for c in desired {
            let sealed = c.spec.workloads.iter().filter_map(|w| w.as_vm()).any(|vm| {
                vm.env
                    .iter()
                    .any(|e| zos_primitives::spec::is_sealed_env_value(e.value.as_bytes()))
            });
            if !sealed || self.engine.knows_owner(c.contract) {
                continue;
            }
            match self.chain.contract_owner(c.contract).await {
                Ok(Some(owner)) => self.engine.set_owner(c.contract, owner),
                Ok(None) => {}
                Err(e) => {
                    warn!(contract = c.contract, error = %format!("{e:#}"), "reading the contract's owner")
                }
            }
        }
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

    /// The public IPv6 subnet the farmer declared for this node (pallet-grid's node public
    /// config). Until one read succeeded, the pass waits (a VM asking for IPv6 would fail for
    /// good on an unknown subnet); later failures keep the last one known.
    async fn refresh_node_ipv6(&self) -> Result<()> {
        let read = async {
            let record = crate::chain::node_record(&self.chain, self.node).await?;
            let config = record.public_config;
            let subnet = config
                .as_ref()
                .and_then(|c| c.ipv6.as_ref())
                .map(|v6| crate::chain::convert::<_, PublicIpv6Config>(v6))
                .transpose()?;
            let ipv4 = config
                .as_ref()
                .and_then(|c| c.ipv4.as_ref())
                .map(|v4| crate::chain::convert::<_, zos_primitives::PublicIpv4Config>(v4))
                .transpose()?;
            let domain = config
                .and_then(|c| c.domain)
                .map(|d| String::from_utf8_lossy(&d.0).to_ascii_lowercase());
            let mut addresses: Vec<std::net::IpAddr> = Vec::new();
            addresses.extend(ipv4.map(|v4| std::net::IpAddr::from(v4.ip.ip)));
            addresses.extend(subnet.map(|v6| std::net::IpAddr::from(v6.ip.ip)));
            anyhow::Ok((subnet, domain, addresses))
        };
        match read.await {
            Ok((subnet, domain, addresses)) => {
                self.engine.set_node_ipv6(subnet);
                self.engine.set_node_domain(domain, addresses);
                self.node_config_read
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(e)
                if self
                    .node_config_read
                    .load(std::sync::atomic::Ordering::Relaxed) =>
            {
                warn!(error = %format!("{e:#}"), "reading this node's public config failed; keeping the last one");
                Ok(())
            }
            Err(e) => Err(e.context("reading this node's public config")),
        }
    }
}

/// The node's overlay /64, from the overlay key, and the key (it proves the node holds it when
/// publishing). The key is created when missing, so the executor may start before the overlay
/// daemon; the daemon starting at the same moment may be half-way through writing it, so one
/// failed read is tried again.
async fn node_overlay(
    config: &OverlayConfig,
) -> Result<(NodeOverlay, zos_overlay::identity::Keypair)> {
    let path = config.key_file.clone();
    let key = tokio::task::spawn_blocking(move || {
        zos_overlay::identity::load_or_create(&path).or_else(|_| {
            std::thread::sleep(Duration::from_millis(500));
            zos_overlay::identity::load_or_create(&path)
        })
    })
    .await
    .context("reading the overlay key")??;
    let public = key
        .public()
        .try_into_ed25519()
        .context("the overlay key is not an ed25519 key")?
        .to_bytes();
    let subnet = zos_overlay::address::NodeSubnet::of_key(&public);
    info!(%subnet, netns = %config.netns.display(), "overlay: VMs that ask get addresses in this node's /64");
    Ok((
        NodeOverlay {
            key: public,
            subnet,
            netns: config.netns.clone(),
        },
        key,
    ))
}

/// Publishes the node's overlay endpoint (its key and the daemon's listen addresses) unless
/// the chain has exactly that already, so deployers can compute its VMs' overlay addresses
/// and join the overlay through it. Addresses the chain would refuse are a configuration
/// error; a failed submission is only warned about (VMs on the overlay work without it).
async fn publish_overlay(
    chain: &Chain,
    identity: &NodeIdentity,
    node: NodeId,
    overlay: &NodeOverlay,
    key: &zos_overlay::identity::Keypair,
    addresses: &[String],
) -> Result<()> {
    let listed = addresses
        .iter()
        .map(|a| {
            a.as_bytes().to_vec().try_into().map_err(|_| {
                anyhow::anyhow!(
                    "overlay address {a:?} is longer than {} bytes",
                    zos_primitives::MAX_OVERLAY_ADDRESS_LEN
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let wanted = zos_primitives::OverlayEndpoint {
        key: overlay.key,
        addresses: listed.try_into().map_err(|_| {
            anyhow::anyhow!(
                "more than {} overlay addresses",
                zos_primitives::MAX_OVERLAY_ADDRESSES
            )
        })?,
    };
    if let Err(e) = wanted.validate() {
        bail!("overlay addresses {addresses:?}: {e:?}");
    }
    if crate::chain::node_overlay(chain, node).await?.as_ref() == Some(&wanted) {
        return Ok(());
    }
    // The chain takes the key only with its signature over this node's account.
    let message = zos_primitives::overlay_key_proof_message(&identity.account.public_key().0);
    let proof: zos_primitives::OverlayKeyProof = key
        .sign(&message)
        .context("signing the overlay key's proof")?
        .try_into()
        .map_err(|_| anyhow::anyhow!("the overlay key's signature is not 64 bytes"))?;
    let call = calls::set_node_overlay(Some((&wanted, proof)))?;
    match retry("set_node_overlay", || {
        chain.submit(&call, &identity.account, TX_TIMEOUT)
    })
    .await
    {
        Ok(_) => info!(node, "overlay endpoint published"),
        Err(e) => warn!(node, error = %e, "could not publish the node's overlay endpoint"),
    }
    Ok(())
}

/// The node's private networks, when enabled and the host can serve them (root, nftables,
/// WireGuard); otherwise network workloads fail with "no driver for network workloads".
async fn start_networks(config: &Config) -> Option<Arc<zos_net::Networks>> {
    if !config.network_enabled {
        info!("private networks disabled by configuration");
        return None;
    }
    let run_dir = config.data_dir.join("net");
    match zos_net::Networks::new(
        config.net_prefix.clone(),
        config.underlay_netns.clone(),
        run_dir,
    )
    .await
    {
        Ok(networks) => {
            match networks.backend() {
                Some(backend) => info!(
                    backend = backend.as_str(),
                    prefix = %config.net_prefix,
                    outbound_internet = if config.allow_outbound_internet { "allowed" } else { "forbidden" },
                    "private networks enabled"
                ),
                None => warn!("no WireGuard on this host (kernel module or wireguard-go): network workloads will fail"),
            }
            Some(Arc::new(networks))
        }
        Err(e) => {
            warn!(error = %format!("{e:#}"), "this host cannot serve private networks: network workloads will fail with \"no driver for network workloads\"");
            None
        }
    }
}
