//! The private networks of one node: create, update in place, remove, and VM ports.

mod overlay;
pub use overlay::OVERLAY_GATEWAY;

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use zeroize::Zeroizing;

use crate::{
    firewall, link,
    names::{ifname, netns_id, netns_name, NetId, Prefix, Role},
    netns, outbound, public,
    wireguard::{self, WgBackend, WgPeer},
    NetError,
};

/// A remote end of the network: another node, or a deployer's laptop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub public_key: [u8; 32],
    /// `None` for a peer that only connects to us (behind NAT).
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Ipv4Net>,
}

/// One network as this node serves it.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub id: NetId,
    /// The whole network (all nodes), e.g. a /16.
    pub ip_range: Ipv4Net,
    /// This node's part of it; `.1` is the VMs' gateway.
    pub subnet: Ipv4Net,
    pub listen_port: u16,
    pub private_key: Zeroizing<[u8; 32]>,
    pub peers: Vec<Peer>,
    /// VMs may open connections to the internet through the node ([`crate::outbound`]).
    pub outbound_internet: bool,
}

impl NetworkConfig {
    /// The VMs' gateway: the first host address of the subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway_of(self.subnet)
    }

    fn check(&self) -> Result<(), NetError> {
        if self.subnet.prefix_len() != 24 || !self.ip_range.contains(&self.subnet) {
            return Err(NetError::SubnetOutsideRange(self.subnet, self.ip_range));
        }
        Ok(())
    }

    /// Destinations routed into the tunnel: the whole range, and peers' addresses outside it
    /// (e.g. a laptop's), never this node's own subnet.
    fn tunnel_routes(&self) -> Vec<Ipv4Net> {
        let mut routes = vec![self.ip_range.trunc()];
        for peer in &self.peers {
            for net in &peer.allowed_ips {
                let net = net.trunc();
                if !self.ip_range.contains(&net)
                    && !net.contains(&self.subnet)
                    && !routes.contains(&net)
                {
                    routes.push(net);
                }
            }
        }
        routes
    }
}

/// The first host address of a subnet.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1))
}

/// The networks of one node.
pub struct Networks {
    prefix: Prefix,
    backend: Option<WgBackend>,
    /// The node's own namespace; `None` for the one this process runs in.
    underlay: Option<PathBuf>,
    /// Pid and log files of userspace WireGuard.
    run_dir: PathBuf,
    /// One apply at a time: a listen port or an outbound address is checked free and then
    /// taken, and two applies must not both find the same one free.
    apply_lock: tokio::sync::Mutex<()>,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

impl Networks {
    /// Probes WireGuard and installs the underlay's isolation rules.
    pub async fn new(prefix: Prefix, underlay: Option<PathBuf>, run_dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let host = link::handle(underlay.as_deref()).await?;
        let backend = wireguard::probe(&host, &format!("{prefix}probe")).await?;
        let rules = firewall::underlay_rules(&prefix);
        let ns = underlay.clone();
        blocking(move || firewall::load(ns.as_deref(), &rules)).await?;
        Ok(Self {
            prefix,
            backend,
            underlay,
            run_dir,
            apply_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// How WireGuard runs here (`None`: it cannot; networks fail with [`NetError::NoWireGuard`]).
    pub fn backend(&self) -> Option<WgBackend> {
        self.backend
    }

    /// The node's own namespace, when it is not the one this process runs in.
    pub fn underlay(&self) -> Option<&Path> {
        self.underlay.as_deref()
    }

    pub fn prefix(&self) -> &Prefix {
        &self.prefix
    }

    pub fn bridge_name(&self, id: &NetId) -> String {
        ifname(&self.prefix, Role::Bridge, id)
    }

    pub fn tap_name(&self, tap: &NetId) -> String {
        ifname(&self.prefix, Role::Tap, tap)
    }

    /// The namespace of network `id`.
    pub fn netns_path(&self, id: &NetId) -> PathBuf {
        netns::path_of(&netns_name(&self.prefix, id))
    }

    fn pid_file(&self, id: &NetId) -> PathBuf {
        self.run_dir
            .join(format!("{}.pid", ifname(&self.prefix, Role::WireGuard, id)))
    }

    fn log_file(&self, id: &NetId) -> PathBuf {
        self.run_dir
            .join(format!("{}.log", ifname(&self.prefix, Role::WireGuard, id)))
    }

    async fn in_underlay<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let ns = self.underlay.clone();
        blocking(move || match ns {
            Some(ns) => netns::run_in(&ns, f),
            None => f(),
        })
        .await
    }

    /// Creates network `cfg.id` or brings it to `cfg` in place (peers, routes, key, port),
    /// without touching the VMs on it. Errors that are [`NetError`]s are permanent.
    pub async fn apply(&self, cfg: &NetworkConfig) -> Result<()> {
        cfg.check()?;
        let backend = self.backend.ok_or(NetError::NoWireGuard)?;
        let _one_at_a_time = self.apply_lock.lock().await;
        let id = &cfg.id;
        // A taken port fails the network before anything is made.
        let tunnel_exists = self.tunnel_exists(id).await?;
        if !tunnel_exists {
            let port = cfg.listen_port;
            let free = self
                .in_underlay(move || Ok(UdpSocket::bind(("0.0.0.0", port)).is_ok()))
                .await?;
            if !free {
                return Err(NetError::ListenPortTaken(port).into());
            }
        }
        let ns_name = netns_name(&self.prefix, id);
        let ns = blocking(move || netns::create(&ns_name)).await?;
        let host = link::handle(self.underlay.as_deref()).await?;
        let inner = link::handle(Some(&ns)).await?;
        let (bridge, veth, lan, wg) = (
            ifname(&self.prefix, Role::Bridge, id),
            ifname(&self.prefix, Role::VethUnderlay, id),
            ifname(&self.prefix, Role::VethLan, id),
            ifname(&self.prefix, Role::WireGuard, id),
        );

        // The namespace routes between LAN and tunnel, and has no IPv6 to leak through.
        if let Some(lo) = link::index(&inner, "lo").await? {
            link::set_up(&inner, lo).await?;
        }
        let nsp = ns.clone();
        blocking(move || {
            netns::sysctl(Some(&nsp), "net.ipv4.ip_forward", "1")?;
            netns::sysctl(Some(&nsp), "net.ipv6.conf.all.disable_ipv6", "1")?;
            netns::sysctl(Some(&nsp), "net.ipv6.conf.default.disable_ipv6", "1")
        })
        .await?;

        // The bridge VMs join, and the veth from it to the namespace's `.1`.
        let bridge_index = link::ensure_bridge(&host, &bridge).await?;
        self.no_ipv6(&bridge).await?;
        if link::index(&inner, &lan).await?.is_none() {
            // A half-made pair from an interrupted run is replaced.
            link::delete(&host, &veth).await?;
            link::ensure_veth(&host, &veth, &lan).await?;
            let lan_index = link::index(&host, &lan)
                .await?
                .context("veth peer missing after creation")?;
            link::move_to(&host, lan_index, &ns).await?;
        }
        let veth_index = link::index(&host, &veth)
            .await?
            .context("veth of the network vanished")?;
        link::set_master(&host, veth_index, bridge_index).await?;
        link::set_up(&host, veth_index).await?;
        self.no_ipv6(&veth).await?;
        let lan_index = link::index(&inner, &lan)
            .await?
            .context("LAN end of the network vanished")?;
        link::ensure_address(&inner, lan_index, cfg.gateway(), 24).await?;
        link::remove_addresses_except(&inner, lan_index, (cfg.gateway(), 24)).await?;
        link::set_up(&inner, lan_index).await?;

        // The tunnel: created in the underlay (its UDP socket stays there), then moved in.
        if !tunnel_exists {
            match backend {
                WgBackend::Kernel => {
                    link::delete(&host, &wg).await?;
                    host.link()
                        .add(rtnetlink::LinkWireguard::new(&wg).build())
                        .execute()
                        .await
                        .context("creating the WireGuard device")?;
                }
                WgBackend::Userspace => {
                    let (name, pid, log) = (wg.clone(), self.pid_file(id), self.log_file(id));
                    wireguard::stop_userspace(&name, &pid)?;
                    self.in_underlay(move || wireguard::start_userspace(&name, &pid, &log))
                        .await?;
                }
            }
            let wg_index = link::index(&host, &wg)
                .await?
                .context("WireGuard device missing after creation")?;
            link::move_to(&host, wg_index, &ns).await?;
        }
        let peers: Vec<WgPeer> = cfg
            .peers
            .iter()
            .map(|p| WgPeer {
                public_key: p.public_key,
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips.clone(),
            })
            .collect();
        let (name, key, port, nsp) = (
            wg.clone(),
            cfg.private_key.clone(),
            cfg.listen_port,
            ns.clone(),
        );
        blocking(move || wireguard::configure(backend, Some(&nsp), &name, &key, port, &peers))
            .await?;
        let wg_index = link::index(&inner, &wg)
            .await?
            .context("WireGuard device vanished")?;
        link::set_up(&inner, wg_index).await?;

        // Routes into the tunnel: exactly the wanted ones.
        let wanted = cfg.tunnel_routes();
        for dest in &wanted {
            link::replace_route(&inner, *dest, wg_index).await?;
        }
        for (dest, route) in link::routes_via(&inner, wg_index).await? {
            if !wanted.contains(&dest) {
                link::delete_route(&inner, route).await?;
            }
        }

        // The outbound link: made (or kept) when asked for, removed when no longer.
        let outside = ifname(&self.prefix, Role::OutboundUnderlay, id);
        if cfg.outbound_internet {
            let inside = ifname(&self.prefix, Role::OutboundInside, id);
            let address = outbound::ensure(&host, &inner, &ns, id, &outside, &inside).await?;
            self.no_ipv6(&outside).await?;
            let (under, arp) = (
                self.underlay.clone(),
                format!("net.ipv4.conf.{outside}.arp_ignore"),
            );
            blocking(move || {
                // Answer ARP on the link only for its own address, not every node address.
                netns::sysctl(under.as_deref(), &arp, "1")?;
                netns::sysctl(under.as_deref(), "net.ipv4.ip_forward", "1")
            })
            .await?;
            tracing::debug!(network = %id, %address, "outbound internet");
        } else {
            link::delete(&host, &outside).await?;
        }

        let rules = firewall::network_rules(&self.prefix, id, cfg.outbound_internet);
        blocking(move || firewall::load(Some(&ns), &rules)).await?;
        Ok(())
    }

    async fn no_ipv6(&self, link_name: &str) -> Result<()> {
        let key = format!("net.ipv6.conf.{link_name}.disable_ipv6");
        let ns = self.underlay.clone();
        blocking(move || netns::sysctl(ns.as_deref(), &key, "1")).await
    }

    async fn tunnel_exists(&self, id: &NetId) -> Result<bool> {
        let ns = self.netns_path(id);
        if !netns::is_mounted(&ns) {
            return Ok(false);
        }
        let inner = link::handle(Some(&ns)).await?;
        Ok(
            link::index(&inner, &ifname(&self.prefix, Role::WireGuard, id))
                .await?
                .is_some(),
        )
    }

    /// Reloads the underlay's isolation rules when they are gone (someone flushed the host's
    /// ruleset); returns whether they had to be.
    pub async fn heal_underlay_rules(&self) -> Result<bool> {
        let (ns, table) = (self.underlay.clone(), format!("zos_{}", self.prefix));
        let present = blocking(move || {
            Ok(firewall::table_exists(ns.as_deref(), "inet", &table)?
                && firewall::table_exists(ns.as_deref(), "arp", &table)?)
        })
        .await?;
        if present {
            return Ok(false);
        }
        tracing::warn!(prefix = %self.prefix, "the networks' isolation rules were gone: reloading them");
        let (rules, ns) = (
            firewall::underlay_rules(&self.prefix),
            self.underlay.clone(),
        );
        blocking(move || firewall::load(ns.as_deref(), &rules)).await?;
        Ok(true)
    }

    /// Whether network `id` is fully in place (namespace, bridge, tunnel).
    pub async fn is_up(&self, id: &NetId) -> Result<bool> {
        let ns = self.netns_path(id);
        if !netns::is_mounted(&ns) {
            return Ok(false);
        }
        let host = link::handle(self.underlay.as_deref()).await?;
        let inner = link::handle(Some(&ns)).await?;
        Ok(link::index(&host, &self.bridge_name(id)).await?.is_some()
            && link::index(&inner, &ifname(&self.prefix, Role::VethLan, id))
                .await?
                .is_some()
            && link::index(&inner, &ifname(&self.prefix, Role::WireGuard, id))
                .await?
                .is_some())
    }

    /// Removes network `id` entirely; succeeds when it is already gone. Taps on it stay
    /// (they belong to their VMs) but are cut off with the bridge.
    pub async fn remove(&self, id: &NetId) -> Result<()> {
        let ns = self.netns_path(id);
        let wg = ifname(&self.prefix, Role::WireGuard, id);
        if netns::is_mounted(&ns) {
            let inner = link::handle(Some(&ns)).await?;
            link::delete(&inner, &wg).await?;
            link::delete(&inner, &ifname(&self.prefix, Role::VethLan, id)).await?;
        }
        wireguard::stop_userspace(&wg, &self.pid_file(id))?;
        let host = link::handle(self.underlay.as_deref()).await?;
        // An interrupted install may have left the tunnel in the underlay.
        link::delete(&host, &wg).await?;
        link::delete(&host, &ifname(&self.prefix, Role::VethUnderlay, id)).await?;
        link::delete(&host, &ifname(&self.prefix, Role::OutboundUnderlay, id)).await?;
        link::delete(&host, &ifname(&self.prefix, Role::OutboundInside, id)).await?;
        link::delete(&host, &self.bridge_name(id)).await?;
        let name = netns_name(&self.prefix, id);
        blocking(move || netns::delete(&name)).await?;
        let _ = std::fs::remove_file(self.log_file(id));
        Ok(())
    }

    /// Puts an existing link of the underlay (a VM's tap, a test's veth) on network `id`.
    pub async fn attach_port(&self, id: &NetId, link_name: &str) -> Result<()> {
        let host = link::handle(self.underlay.as_deref()).await?;
        let bridge = link::index(&host, &self.bridge_name(id))
            .await?
            .ok_or_else(|| NetError::UnknownNetwork(id.to_string()))?;
        let port = link::index(&host, link_name)
            .await?
            .with_context(|| format!("link {link_name} does not exist"))?;
        self.no_ipv6(link_name).await?;
        link::set_master(&host, port, bridge).await?;
        link::set_up(&host, port).await
    }

    /// A VM's tap `tap` on network `id`, openable by `owner`; returns its name.
    pub async fn attach_tap(&self, id: &NetId, tap: &NetId, owner: Option<u32>) -> Result<String> {
        let name = self.tap_name(tap);
        let n = name.clone();
        self.in_underlay(move || link::create_tap(&n, owner))
            .await?;
        self.attach_port(id, &name).await?;
        Ok(name)
    }

    /// Puts an existing link of the underlay (a VM's tap, a test's veth) on the public bridge
    /// `bridge` as `card`: its rules are in place before the link joins the bridge.
    pub async fn attach_public_port(
        &self,
        bridge: &str,
        link_name: &str,
        card: &public::PublicCard,
    ) -> Result<()> {
        let host = link::handle(self.underlay.as_deref()).await?;
        let bridge_index = link::index(&host, bridge)
            .await?
            .ok_or_else(|| NetError::NoPublicBridge(bridge.to_string()))?;
        let port = link::index(&host, link_name)
            .await?
            .with_context(|| format!("link {link_name} does not exist"))?;
        let (ns, card_link, card) = (self.underlay.clone(), link_name.to_string(), card.clone());
        blocking(move || {
            // Carry the counters over a reload (a read and a load are not one transaction: the
            // few packets in between are not counted, never counted twice).
            let kept = card_counters(ns.as_deref(), &card_link)?.unwrap_or_default();
            firewall::load(ns.as_deref(), &public::card_rules(&card_link, &card, kept))
        })
        .await?;
        self.no_ipv6(link_name).await?;
        link::set_master(&host, port, bridge_index).await?;
        link::set_up(&host, port).await
    }

    /// A VM's tap `tap` on the public bridge as `card`, openable by `owner`; returns its name.
    pub async fn attach_public_tap(
        &self,
        bridge: &str,
        tap: &NetId,
        card: &public::PublicCard,
        owner: Option<u32>,
    ) -> Result<String> {
        let name = self.tap_name(tap);
        let n = name.clone();
        self.in_underlay(move || link::create_tap(&n, owner))
            .await?;
        self.attach_public_port(bridge, &name, card).await?;
        Ok(name)
    }

    /// Deletes a public card's link and rules; fine when gone.
    pub async fn detach_public(&self, link_name: &str) -> Result<()> {
        let host = link::handle(self.underlay.as_deref()).await?;
        link::delete(&host, link_name).await?;
        let (rules, ns) = (public::card_cleanup(link_name), self.underlay.clone());
        blocking(move || firewall::load(ns.as_deref(), &rules)).await
    }

    /// What went through the public card on `link_name` since its rules were first loaded.
    pub async fn public_traffic(&self, link_name: &str) -> Result<public::PublicTraffic> {
        self.public_traffic_if_present(link_name)
            .await?
            .with_context(|| format!("public card {link_name} has no rules"))
    }

    /// [`Self::public_traffic`], or `None` when the card has no rules (it does not exist).
    pub async fn public_traffic_if_present(
        &self,
        link_name: &str,
    ) -> Result<Option<public::PublicTraffic>> {
        let (ns, link_name) = (self.underlay.clone(), link_name.to_string());
        blocking(move || card_counters(ns.as_deref(), &link_name)).await
    }

    /// Deletes tap `tap`; fine when it is gone.
    pub async fn remove_tap(&self, tap: &NetId) -> Result<()> {
        let host = link::handle(self.underlay.as_deref()).await?;
        link::delete(&host, &self.tap_name(tap)).await
    }

    /// The ids of this node's networks present on the host (to find leftovers).
    pub fn list(&self) -> Result<Vec<NetId>> {
        Ok(netns::list()?
            .iter()
            .filter_map(|name| netns_id(&self.prefix, name))
            .collect())
    }

    /// Removes every network of this node and its underlay rules (tests, decommissioning).
    pub async fn remove_all(&self) -> Result<()> {
        for id in self.list()? {
            self.remove(&id).await?;
        }
        let host = link::handle(self.underlay.as_deref()).await?;
        for name in link::names_with_prefix(&host, self.prefix.as_str()).await? {
            if crate::names::parse_ifname(&self.prefix, &name).is_some() {
                link::delete(&host, &name).await?;
            }
        }
        let rules = firewall::underlay_cleanup(&self.prefix);
        let ns = self.underlay.clone();
        blocking(move || firewall::load(ns.as_deref(), &rules)).await
    }
}

/// Where the node keeps its network runtime files by default.
pub fn default_run_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("net")
}

/// The counters of the public card on `link_name` in the namespace at `ns`, `None` when the
/// card has no rules.
fn card_counters(ns: Option<&Path>, link_name: &str) -> Result<Option<public::PublicTraffic>> {
    let table = public::table_name(link_name);
    if !firewall::table_exists(ns, "bridge", &table)? {
        return Ok(None);
    }
    public::parse_traffic(&firewall::list_counters(ns, "bridge", &table)?).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn the_tunnel_routes_the_range_and_outside_peers_never_the_local_subnet() {
        let cfg = NetworkConfig {
            id: NetId::new("0000000001").unwrap(),
            ip_range: net("10.5.0.0/16"),
            subnet: net("10.5.1.0/24"),
            listen_port: 1,
            private_key: Zeroizing::new([1; 32]),
            peers: vec![
                Peer {
                    public_key: [2; 32],
                    endpoint: None,
                    allowed_ips: vec![net("10.5.2.0/24"), net("100.64.5.2/32")],
                },
                Peer {
                    public_key: [3; 32],
                    endpoint: None,
                    allowed_ips: vec![net("10.5.1.0/24"), net("100.64.5.2/32")],
                },
            ],
            outbound_internet: false,
        };
        assert_eq!(
            cfg.tunnel_routes(),
            vec![net("10.5.0.0/16"), net("100.64.5.2/32")]
        );
        assert_eq!(cfg.gateway(), Ipv4Addr::new(10, 5, 1, 1));
        let mut bad = cfg.clone();
        bad.subnet = net("10.6.1.0/24");
        assert!(matches!(bad.check(), Err(NetError::SubnetOutsideRange(..))));
    }
}
