//! Network driver: a `Network` workload becomes a private network on this node (zos-net: a
//! namespace with the gateway `.1`, a bridge for the contract's VMs, a WireGuard tunnel to the
//! spec's peers). The VM driver puts a tap per `NetworkAttachment` on the bridge.
//!
//! Names are derived from (contract, workload), so a restarted executor finds what an earlier
//! process made: `install` converges it in place, `remove` deletes whatever exists. The
//! network's private key is opened with the node's box key at each apply and lives only in
//! memory (and in the WireGuard device).

use std::sync::Arc;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use zeroize::Zeroizing;
use zos_net::{NetError, NetId, NetworkConfig, Networks, Peer};
use zos_primitives::{
    spec::{NetworkSpec, PeerEndpoint, Workload, WorkloadKind},
    ContractId, Ipv4Cidr,
};

use super::{Driver, DriverError, DriverResult, Observed, Usage, WorkloadCtx};

/// The id of network workload `network` of `contract` on this node.
pub fn network_id(contract: ContractId, network: &[u8]) -> NetId {
    let mut input = b"zos network\0".to_vec();
    input.extend_from_slice(&contract.to_le_bytes());
    input.extend_from_slice(network);
    NetId::from_hash(&zos_image::Hash::of(&input).0)
}

/// A VM's card on a network: the tap's id and the card's MAC (locally administered, unicast).
pub fn card(contract: ContractId, vm: &[u8], network: &[u8]) -> (NetId, [u8; 6]) {
    let mut input = b"zos card\0".to_vec();
    input.extend_from_slice(&contract.to_le_bytes());
    input.extend_from_slice(&(vm.len() as u32).to_le_bytes());
    input.extend_from_slice(vm);
    input.extend_from_slice(network);
    let hash = zos_image::Hash::of(&input).0;
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&hash[5..11]);
    mac[0] = (mac[0] & 0xfe) | 0x02;
    (NetId::from_hash(&hash), mac)
}

fn cidr(c: &Ipv4Cidr) -> DriverResult<Ipv4Net> {
    Ipv4Net::new(c.ip.into(), c.prefix_len)
        .map_err(|_| DriverError::permanent(format!("invalid prefix length /{}", c.prefix_len)))
}

pub struct NetworkDriver {
    networks: Arc<Networks>,
    box_secret: Zeroizing<[u8; 32]>,
}

impl NetworkDriver {
    pub fn new(networks: Arc<Networks>, box_secret: [u8; 32]) -> Self {
        Self {
            networks,
            box_secret: Zeroizing::new(box_secret),
        }
    }

    fn config(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<NetworkConfig> {
        let WorkloadKind::Network(spec) = &w.kind else {
            return Err(DriverError::permanent("not a network workload"));
        };
        network_config(
            network_id(ctx.contract, w.name.as_bytes()),
            spec,
            &self.box_secret,
        )
    }

    fn id(ctx: &WorkloadCtx, w: &Workload) -> NetId {
        network_id(ctx.contract, w.name.as_bytes())
    }

    async fn apply(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        let cfg = self.config(ctx, w)?;
        self.networks
            .apply(&cfg)
            .await
            .map_err(|e| match e.downcast_ref::<NetError>() {
                Some(net) => DriverError::permanent(format!(
                    "network '{}': {net}",
                    String::from_utf8_lossy(w.name.as_bytes())
                )),
                None => DriverError::Transient(e),
            })
    }
}

/// The node-side configuration of a network spec; the key opens with `box_secret` or the
/// spec is refused.
pub fn network_config(
    id: NetId,
    spec: &NetworkSpec,
    box_secret: &[u8; 32],
) -> DriverResult<NetworkConfig> {
    let private_key = zos_primitives::sealing::open_wireguard_key(box_secret, &spec.private_key)
        .map_err(|e| {
            DriverError::permanent(format!("the network's private key does not open: {e:?}"))
        })?;
    let peers = spec
        .peers
        .iter()
        .map(|p| {
            Ok(Peer {
                public_key: p.public_key,
                endpoint: p.endpoint.as_ref().map(|e| match e {
                    PeerEndpoint::V4 { ip, port } => (std::net::Ipv4Addr::from(*ip), *port).into(),
                    PeerEndpoint::V6 { ip, port } => (std::net::Ipv6Addr::from(*ip), *port).into(),
                }),
                allowed_ips: p
                    .allowed_ips
                    .iter()
                    .map(cidr)
                    .collect::<DriverResult<_>>()?,
            })
        })
        .collect::<DriverResult<_>>()?;
    Ok(NetworkConfig {
        id,
        ip_range: cidr(&spec.ip_range)?,
        subnet: cidr(&spec.subnet)?,
        listen_port: spec.listen_port,
        private_key,
        peers,
    })
}

#[async_trait]
impl Driver for NetworkDriver {
    fn kind(&self) -> &'static str {
        "network"
    }

    async fn install(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        self.apply(ctx, w).await
    }

    /// Peers, routes, key and port change in place; the VMs on the bridge keep running.
    async fn update(&self, ctx: &WorkloadCtx, _old: &Workload, new: &Workload) -> DriverResult<()> {
        self.apply(ctx, new).await
    }

    async fn remove(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        self.networks
            .remove(&Self::id(ctx, w))
            .await
            .map_err(DriverError::Transient)
    }

    /// A paused contract's VMs stop; the network itself serves nothing on its own.
    async fn pause(&self, _ctx: &WorkloadCtx, _w: &Workload) -> DriverResult<()> {
        Ok(())
    }

    async fn resume(&self, _ctx: &WorkloadCtx, _w: &Workload) -> DriverResult<()> {
        Ok(())
    }

    async fn inspect(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<Observed> {
        let up = self
            .networks
            .is_up(&Self::id(ctx, w))
            .await
            .map_err(DriverError::Transient)?;
        Ok(if up {
            Observed::Running
        } else {
            Observed::Missing
        })
    }

    async fn usage(&self, _ctx: &WorkloadCtx, _w: &Workload) -> DriverResult<Usage> {
        Ok(Usage::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_macs_are_stable_distinct_and_valid() {
        let a = network_id(1, b"net");
        assert_eq!(a, network_id(1, b"net"));
        assert_ne!(a, network_id(2, b"net"));
        assert_ne!(a, network_id(1, b"net2"));
        let (tap, mac) = card(1, b"vm", b"net");
        assert_eq!((tap.clone(), mac), card(1, b"vm", b"net"));
        assert_ne!(tap, card(1, b"vm2", b"net").0);
        // "vm"+"net2" and "vmn"+"et2" are different cards.
        assert_ne!(card(1, b"vm", b"net2").0, card(1, b"vmn", b"et2").0);
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
    }
}
