//! Network driver: a `Network` workload becomes a private network on this node (zos-net: a
//! namespace with the gateway `.1`, a bridge for the contract's VMs, a WireGuard tunnel to the
//! spec's peers). The VM driver puts a tap per `NetworkAttachment` on the bridge.
//!
//! Names are derived from (contract, workload), so a restarted executor finds what an earlier
//! process made: `install` converges it in place, `remove` deletes whatever exists. The
//! derivation is keyed with a secret of the node: ids are 40 bits (to fit interface names),
//! and a deployer who could compute them could grind a workload name onto another tenant's
//! network. The network's private key is opened with the node's box key at each apply and
//! lives only in memory (and in the WireGuard device).

use std::{ops::Deref, sync::Arc};

use async_trait::async_trait;
use ipnet::Ipv4Net;
use zeroize::Zeroizing;
use zos_net::{NetError, NetId, NetworkConfig, Networks, Peer};
use zos_primitives::{
    spec::{NetworkSpec, Workload, WorkloadKind},
    ContractId, Ipv4Cidr,
};

use super::{Driver, DriverError, DriverResult, Observed, Usage, WorkloadCtx};

/// This node's private networks, with the node's naming of networks and cards, and the
/// farmer's public bridge when the node serves public IPs.
pub struct NodeNetworks {
    networks: Arc<Networks>,
    pub naming: NetNaming,
    /// The bridge (in the underlay) to the farm's public network.
    pub public_bridge: Option<String>,
    /// The node's overlay; `None`: VMs asking for an overlay address are refused.
    pub overlay: Option<NodeOverlay>,
}

/// The node's place on the overlay: its /64 and the namespace of the overlay daemon's TUN.
#[derive(Clone, Debug)]
pub struct NodeOverlay {
    /// The node's overlay public key (ed25519), which decides the subnet.
    pub key: [u8; 32],
    pub subnet: zos_overlay::address::NodeSubnet,
    pub netns: std::path::PathBuf,
}

impl NodeNetworks {
    pub fn new(networks: Arc<Networks>, naming: NetNaming, public_bridge: Option<String>) -> Self {
        Self {
            networks,
            naming,
            public_bridge,
            overlay: None,
        }
    }

    /// Gives VMs overlay cards on `overlay`.
    pub fn with_overlay(mut self, overlay: Option<NodeOverlay>) -> Self {
        self.overlay = overlay;
        self
    }

    /// The overlay card of VM `vm`: its tap's id and MAC.
    pub fn overlay_card(&self, contract: ContractId, vm: &[u8]) -> (NetId, [u8; 6]) {
        self.naming.card(contract, vm, b"\0overlay")
    }

    /// The public card of VM `vm`: its tap's id and MAC. (A NUL never appears in a workload
    /// name, so this never equals a card on a private network.)
    pub fn public_card(&self, contract: ContractId, vm: &[u8]) -> (NetId, [u8; 6]) {
        self.naming.card(contract, vm, b"\0public")
    }
}

/// Names of networks and cards, keyed by a secret of the node.
pub struct NetNaming {
    key: Zeroizing<[u8; 32]>,
}

impl NetNaming {
    /// `node_secret` (the node's box secret) keys the names; it never leaves the node.
    pub fn new(node_secret: &[u8; 32]) -> Self {
        Self {
            key: Zeroizing::new(blake3::derive_key(
                "zos-grid executor 2026 network and card names",
                node_secret,
            )),
        }
    }

    fn hash(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.key);
        for part in parts {
            // Length-prefixed, so ("vm", "net2") and ("vmn", "et2") differ.
            hasher.update(&(part.len() as u32).to_le_bytes());
            hasher.update(part);
        }
        *hasher.finalize().as_bytes()
    }

    /// The id of network workload `network` of `contract` on this node.
    pub fn network_id(&self, contract: ContractId, network: &[u8]) -> NetId {
        NetId::from_hash(&self.hash(&[b"network", &contract.to_le_bytes(), network]))
    }

    /// A VM's card on a network: the tap's id and the card's MAC (locally administered,
    /// unicast).
    pub fn card(&self, contract: ContractId, vm: &[u8], network: &[u8]) -> (NetId, [u8; 6]) {
        let hash = self.hash(&[b"card", &contract.to_le_bytes(), vm, network]);
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&hash[5..11]);
        mac[0] = (mac[0] & 0xfe) | 0x02;
        (NetId::from_hash(&hash), mac)
    }
}

impl Deref for NodeNetworks {
    type Target = Networks;

    fn deref(&self) -> &Networks {
        &self.networks
    }
}

fn cidr(c: &Ipv4Cidr) -> DriverResult<Ipv4Net> {
    Ipv4Net::new(c.ip.into(), c.prefix_len)
        .map_err(|_| DriverError::permanent(format!("invalid prefix length /{}", c.prefix_len)))
}

pub struct NetworkDriver {
    networks: Arc<NodeNetworks>,
    box_secret: Zeroizing<[u8; 32]>,
    policy: NetworkPolicy,
}

/// What the farmer allows networks on this node to do.
#[derive(Clone, Copy, Debug)]
pub struct NetworkPolicy {
    /// Networks may ask for outbound internet.
    pub outbound_internet: bool,
}

impl NetworkDriver {
    pub fn new(networks: Arc<NodeNetworks>, box_secret: [u8; 32], policy: NetworkPolicy) -> Self {
        Self {
            networks,
            box_secret: Zeroizing::new(box_secret),
            policy,
        }
    }

    fn config(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<NetworkConfig> {
        let WorkloadKind::Network(spec) = &w.kind else {
            return Err(DriverError::permanent("not a network workload"));
        };
        network_config(self.id(ctx, w), spec, &self.box_secret, self.policy)
    }

    fn id(&self, ctx: &WorkloadCtx, w: &Workload) -> NetId {
        self.networks
            .naming
            .network_id(ctx.contract, w.name.as_bytes())
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

/// The node-side configuration of a network spec; the key opens with `box_secret` and the
/// spec asks only for what `policy` allows, or the spec is refused.
pub fn network_config(
    id: NetId,
    spec: &NetworkSpec,
    box_secret: &[u8; 32],
    policy: NetworkPolicy,
) -> DriverResult<NetworkConfig> {
    if spec.outbound_internet && !policy.outbound_internet {
        return Err(DriverError::permanent(
            "this node's farmer does not allow outbound internet for networks",
        ));
    }
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
                endpoint: p.endpoint.as_ref().map(|e| e.socket_addr()),
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
        outbound_internet: spec.outbound_internet,
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
            .remove(&self.id(ctx, w))
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
        self.networks
            .heal_underlay_rules()
            .await
            .map_err(DriverError::Transient)?;
        let up = self
            .networks
            .is_up(&self.id(ctx, w))
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
    use zos_primitives::{
        sealing::{generate_box_keypair, seal_wireguard_key},
        spec::SealedSecret,
    };

    #[test]
    fn ids_and_macs_are_stable_distinct_valid_and_keyed_by_the_node() {
        let naming = NetNaming::new(&[1; 32]);
        let a = naming.network_id(1, b"net");
        assert_eq!(a, naming.network_id(1, b"net"));
        assert_ne!(a, naming.network_id(2, b"net"));
        assert_ne!(a, naming.network_id(1, b"net2"));
        assert_ne!(
            a,
            NetNaming::new(&[2; 32]).network_id(1, b"net"),
            "keyed by the node"
        );
        let (tap, mac) = naming.card(1, b"vm", b"net");
        assert_eq!((tap.clone(), mac), naming.card(1, b"vm", b"net"));
        assert_ne!(tap, naming.card(1, b"vm2", b"net").0);
        // "vm"+"net2" and "vmn"+"et2" are different cards.
        assert_ne!(
            naming.card(1, b"vm", b"net2").0,
            naming.card(1, b"vmn", b"et2").0
        );
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
    }

    fn spec(outbound_internet: bool, sealed: SealedSecret) -> NetworkSpec {
        NetworkSpec {
            ip_range: Ipv4Cidr {
                ip: [10, 9, 0, 0],
                prefix_len: 16,
            },
            subnet: Ipv4Cidr {
                ip: [10, 9, 2, 0],
                prefix_len: 24,
            },
            listen_port: 51820,
            peers: Default::default(),
            private_key: sealed,
            outbound_internet,
        }
    }

    #[test]
    fn outbound_internet_follows_the_farmers_policy_and_keys_must_open() {
        let (secret, public) = generate_box_keypair();
        let sealed = seal_wireguard_key(&public, &[7; 32]).unwrap();
        let id = NetId::new("0000000001").unwrap();
        let allow = NetworkPolicy {
            outbound_internet: true,
        };
        let forbid = NetworkPolicy {
            outbound_internet: false,
        };
        let cfg = network_config(id.clone(), &spec(true, sealed.clone()), &secret, allow).unwrap();
        assert!(cfg.outbound_internet);
        assert_eq!(*cfg.private_key, [7; 32]);
        let err = network_config(id.clone(), &spec(true, sealed.clone()), &secret, forbid)
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains("does not allow outbound internet"),
            "{err}"
        );
        assert!(network_config(id.clone(), &spec(false, sealed.clone()), &secret, forbid).is_ok());
        let (stranger, _) = generate_box_keypair();
        let err = network_config(id, &spec(false, sealed), &stranger, allow)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("private key"), "{err}");
    }
}
