//! Node networking for private networks (the zos "network resource"), chain-agnostic.
//!
//! Per network, on a node whose own namespace is the *underlay*:
//!
//! ```text
//!  underlay ns                          network ns  <prefix>-<id>
//!  ┌──────────────────────────┐         ┌────────────────────────────────┐
//!  │ bridge <p>b<id> (no IP)  │  veth   │ <p>l<id>  <subnet>.1/24        │
//!  │   ├─ <p>v<id> ───────────┼─────────┼─►                              │
//!  │   ├─ tap <p>t<vm> (VM)   │         │ <p>w<id>  WireGuard tunnel     │
//!  │   └─ tap ...             │         │   routes: ip_range, peers' IPs │
//!  │ WireGuard UDP socket ◄───┼─────────┼── (socket stays in underlay)   │
//!  └──────────────────────────┘         └────────────────────────────────┘
//! ```
//!
//! VMs sit on the bridge with addresses of the node's /24 and route through `.1`, the network
//! namespace, which forwards only between its LAN and its WireGuard tunnel: a VM reaches its
//! own network's peers and nothing else. The bridge carries no address and nftables drops
//! whatever arrives from it for the underlay itself (IPv4, ARP, IPv6 and forwarding), so a VM
//! never reaches the node or the farmer's LAN. A network may also reach the internet through
//! the node ([`outbound`]). Every name carries the node's prefix, so two nodes (executors) can
//! share one host.

pub mod firewall;
pub mod link;
pub mod names;
pub mod netns;
pub mod network;
pub mod outbound;
pub mod public;
pub mod wireguard;

pub use names::{NetId, Prefix};
pub use network::{NetworkConfig, Networks, Peer};
pub use wireguard::WgBackend;

/// A problem with the requested network itself: the same request will never succeed on this
/// node. Everything else (netlink, processes) is a plain `anyhow` error and worth retrying.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetError {
    #[error("listen port {0} is taken on this node")]
    ListenPortTaken(u16),
    #[error("the subnet {0} is not a /24 inside the network's range {1}")]
    SubnetOutsideRange(ipnet::Ipv4Net, ipnet::Ipv4Net),
    #[error("address {0} is not a host address of the subnet {1}")]
    AddressOutsideSubnet(std::net::Ipv4Addr, ipnet::Ipv4Net),
    #[error("this node has no WireGuard: neither the kernel module nor wireguard-go")]
    NoWireGuard,
    #[error("network {0} does not exist on this node")]
    UnknownNetwork(String),
    #[error("every outbound address of this node is in use")]
    OutboundRangeFull,
    #[error("this node has no public bridge {0}: public IPs are not served here")]
    NoPublicBridge(String),
}
