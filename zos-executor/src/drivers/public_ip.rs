//! Public IP driver: a `public_ip` workload is the farm IPv4 the chain assigned to the contract
//! (in the contract's `public_ips`). The VM that names it gets a card on the farmer's public
//! bridge with that address, and/or the IPv6 derived from the node's public subnet (the VM
//! driver makes the card, guarded by zos-net's anti-spoofing rules); this driver checks the
//! node can serve it.

use std::sync::Arc;

use async_trait::async_trait;
use zos_primitives::spec::{Workload, WorkloadKind};

use super::{
    network::NodeNetworks, Driver, DriverError, DriverResult, Observed, Usage, WorkloadCtx,
};

pub struct PublicIpDriver {
    networks: Arc<NodeNetworks>,
}

impl PublicIpDriver {
    pub fn new(networks: Arc<NodeNetworks>) -> Self {
        Self { networks }
    }

    /// What makes `w` unservable here, if anything.
    fn check(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        let WorkloadKind::PublicIp(spec) = &w.kind else {
            return Err(DriverError::permanent("not a public IP workload"));
        };
        let name = String::from_utf8_lossy(w.name.as_bytes());
        if self.networks.public_bridge.is_none() {
            return Err(DriverError::permanent(
                "this node has no public bridge configured: it serves no public IPs",
            ));
        }
        if spec.v6 && ctx.public_ipv6(&w.name).is_none() {
            return Err(DriverError::permanent(format!(
                "public IP '{name}': this node's farmer declared no public IPv6 subnet (/64 or wider) to give addresses from"
            )));
        }
        if spec.v4 && ctx.public_ipv4(&w.name).is_none() {
            return Err(DriverError::permanent(format!(
                "public IP '{name}': the chain assigned it no farm IPv4"
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl Driver for PublicIpDriver {
    fn kind(&self) -> &'static str {
        "public_ip"
    }

    async fn install(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        self.check(ctx, w)
    }

    async fn update(&self, ctx: &WorkloadCtx, _old: &Workload, new: &Workload) -> DriverResult<()> {
        self.check(ctx, new)
    }

    /// The card belongs to its VM and goes with it.
    async fn remove(&self, _ctx: &WorkloadCtx, _w: &Workload) -> DriverResult<()> {
        Ok(())
    }

    async fn pause(&self, _ctx: &WorkloadCtx, _w: &Workload) -> DriverResult<()> {
        Ok(())
    }

    async fn resume(&self, _ctx: &WorkloadCtx, _w: &Workload) -> DriverResult<()> {
        Ok(())
    }

    async fn inspect(&self, _ctx: &WorkloadCtx, _w: &Workload) -> DriverResult<Observed> {
        Ok(if self.networks.public_bridge.is_some() {
            Observed::Running
        } else {
            Observed::Missing
        })
    }

    /// Traffic is counted on the card of the VM naming it (the VM driver's usage).
    async fn usage(&self, _ctx: &WorkloadCtx, _w: &Workload) -> DriverResult<Usage> {
        Ok(Usage::default())
    }
}
