//! Workload drivers: one per workload kind, behind one trait so the engine can be tested with
//! doubles and each backend (disk files, QEMU, networks) stays at the edge.

pub mod disk;
pub mod gateway;
pub mod health;
pub mod network;
pub mod public_ip;
pub mod vm;
pub mod volume;

use std::{path::PathBuf, sync::Arc};

use async_trait::async_trait;
use zos_primitives::{
    spec::{DeploymentSpec, Workload, WorkloadName},
    ContractId, PublicIpv4Config, PublicIpv6Config,
};

/// Where a workload lives: its contract and a private directory for its files.
#[derive(Clone, Debug)]
pub struct WorkloadCtx {
    pub contract: ContractId,
    /// `<data>/contracts/<contract>`; drivers keep their files beneath it.
    pub dir: PathBuf,
    /// The contract's directories on the node's capacity disks
    /// (`<capacity disk>/contracts/<contract>`), where big files (disks) may be placed
    /// instead; created on first use, removed with the contract.
    pub capacity_dirs: Vec<PathBuf>,
    /// The spec the workload belongs to (its networks, public IPs, other VMs).
    pub spec: Arc<DeploymentSpec>,
    /// The farm IPv4 the chain assigned to each public IP workload of `spec` (empty when the
    /// contract is gone).
    pub public_ips: Vec<(WorkloadName, PublicIpv4Config)>,
    /// The node's public IPv6 subnet as its farmer declared it on chain, if any: public IP
    /// workloads asking for IPv6 get an address derived from it.
    pub node_ipv6: Option<PublicIpv6Config>,
    /// The domain under which the node serves gateway names, as its farmer declared it on
    /// chain, if any.
    pub node_domain: Option<String>,
    /// The node's public IPv4 and IPv6 addresses from its on-chain public config.
    pub node_addresses: Vec<std::net::IpAddr>,
    /// The contract's owner, when known: sealed environment values are bound to it.
    pub owner: Option<[u8; 32]>,
}

impl WorkloadCtx {
    /// The farm IPv4 assigned to public IP workload `name`.
    pub fn public_ipv4(&self, name: &WorkloadName) -> Option<&PublicIpv4Config> {
        self.public_ips
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, config)| config)
    }

    /// The IPv6 address (with the subnet's prefix length) and gateway of public IP workload
    /// `name`: derived from the contract and the workload's name in the node's subnet.
    pub fn public_ipv6(
        &self,
        name: &WorkloadName,
    ) -> Option<(std::net::Ipv6Addr, u8, std::net::Ipv6Addr)> {
        let node = self.node_ipv6.as_ref()?;
        let address = node.vm_address(self.contract, name.as_bytes())?;
        Some((address.into(), node.ip.prefix_len, node.gateway.into()))
    }
}

/// What a driver reports about an installed workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    /// Installed and serving.
    Running,
    /// Installed, intentionally not serving (grace period).
    Paused,
    /// Not installed (never, or lost, e.g. deleted behind the executor's back).
    Missing,
    /// Installed but broken; the engine repairs it (reinstall) and reports the reason.
    Broken(String),
    /// Installed and running, but failing its health check: reported, not repaired by the
    /// engine (the check restarts its VM if it says so).
    Unhealthy(String),
}

/// Resource use measured from the real backend since install.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_time_ms: u64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
}

/// One public card's traffic counters as the node read them (cumulative since the card was
/// made).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CardReading {
    Counted {
        bytes_in: u64,
        bytes_out: u64,
    },
    /// The card does not exist (not made yet, or removed).
    Absent,
    /// The card exists but its counters could not be read this time.
    Unreadable,
}

/// Why a driver call failed. Only `Permanent` fails a deployment: everything else is retried
/// with backoff, because a node must not turn a passing problem into a lost workload.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The spec cannot be satisfied on this node (e.g. shrinking a disk); reported on chain.
    #[error("{0}")]
    Permanent(String),
    /// Retry later (I/O error, backend busy, image source down).
    #[error(transparent)]
    Transient(#[from] anyhow::Error),
}

impl DriverError {
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self::Permanent(reason.into())
    }
}

pub type DriverResult<T> = Result<T, DriverError>;

/// Data workloads (disks, volumes) grow in place and never shrink: the cut-off data would be
/// lost.
pub(crate) fn refuse_shrink(what: &str, old_bytes: u64, new_bytes: u64) -> DriverResult<()> {
    if new_bytes < old_bytes {
        return Err(DriverError::permanent(format!(
            "a {what} cannot shrink: its data would be cut off"
        )));
    }
    Ok(())
}

/// The kind names the engine dispatches on (`WorkloadKind` variant names).
pub fn kind_name(w: &Workload) -> &'static str {
    use zos_primitives::spec::WorkloadKind::*;
    match &w.kind {
        Vm(_) => "vm",
        Disk(_) => "disk",
        Volume(_) => "volume",
        Network(_) => "network",
        PublicIp(_) => "public_ip",
        Gateway(_) => "gateway",
        HealthCheck(_) => "health_check",
    }
}

/// A backend for one workload kind. Every call must be idempotent: the engine re-runs calls
/// after crashes and retries, and level-triggered reconciliation repeats `install` when state
/// diverges.
#[async_trait]
pub trait Driver: Send + Sync {
    /// The `kind_name` this driver serves.
    fn kind(&self) -> &'static str;
    /// Creates the workload; succeeds without change when it already exists as specified.
    async fn install(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()>;
    /// Before `install` of a workload this process does not know: the verdict an earlier run
    /// reported for it (`unhealthy`), so a restart of the executor changes nothing on chain.
    async fn recall(&self, _ctx: &WorkloadCtx, _workload: &Workload, _unhealthy: &str) {}
    /// Moves an installed workload from `old` to `new` (same name and kind).
    async fn update(&self, ctx: &WorkloadCtx, old: &Workload, new: &Workload) -> DriverResult<()>;
    /// Removes the workload and its data; succeeds when it is already gone.
    async fn remove(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()>;
    /// Stops serving, keeps data (grace period).
    async fn pause(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()>;
    /// Serves again after `pause`.
    async fn resume(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<()>;
    async fn inspect(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<Observed>;
    async fn usage(&self, ctx: &WorkloadCtx, workload: &Workload) -> DriverResult<Usage>;
    /// The counters of the workload's public cards, by card: what billing meters. Read from
    /// the host whether or not this process installed the workload.
    async fn public_traffic(
        &self,
        _ctx: &WorkloadCtx,
        _workload: &Workload,
    ) -> Vec<(Vec<u8>, CardReading)> {
        Vec::new()
    }
}
