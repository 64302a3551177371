//! Public IP addresses of farms and nodes, and the rules that make an address usable.
//!
//! The reference chain accepted private addresses, gateways equal to the address, and similar
//! mistakes; a workload then got an address nobody could reach. Every rule below rejects an
//! address that cannot work as a routed public address behind the given gateway.

use codec::{Decode, DecodeWithMemTracking, Encode, MaxEncodedLen};
use frame_support::PalletError;
use scale_info::TypeInfo;

/// Shortest IPv4 prefix accepted. Anything wider than a /8 is not a subnet a farm is given.
pub const MIN_IPV4_PREFIX: u8 = 8;
/// Longest IPv4 prefix accepted. /31 (RFC 3021 point-to-point) and /32 are rejected: the pool
/// model needs a gateway inside the subnet that differs from the address, plus distinct network
/// and broadcast addresses to exclude, which only exist from /30 down.
pub const MAX_IPV4_PREFIX: u8 = 30;
/// Shortest IPv6 prefix accepted.
pub const MIN_IPV6_PREFIX: u8 = 16;
/// Longest IPv6 prefix accepted. A /128 is fine for IPv6 because the gateway is usually a
/// link-local address, which need not lie in the subnet.
pub const MAX_IPV6_PREFIX: u8 = 128;

/// An IPv4 address with the prefix length of its subnet, e.g. `185.69.166.10/24`.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub struct Ipv4Cidr {
    /// Address octets in network order.
    pub ip: [u8; 4],
    /// Number of leading network bits.
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    fn mask(&self) -> u32 {
        // `checked_shl(32)` is `None`, which is exactly the /0 mask.
        u32::MAX
            .checked_shl(32u32.saturating_sub(u32::from(self.prefix_len)))
            .unwrap_or(0)
    }

    /// The first address of the subnet.
    pub fn network(&self) -> [u8; 4] {
        (u32::from_be_bytes(self.ip) & self.mask()).to_be_bytes()
    }

    /// The last address of the subnet.
    pub fn broadcast(&self) -> [u8; 4] {
        (u32::from_be_bytes(self.ip) | !self.mask()).to_be_bytes()
    }

    /// True if `addr` lies in this subnet.
    pub fn contains(&self, addr: [u8; 4]) -> bool {
        u32::from_be_bytes(addr) & self.mask() == u32::from_be_bytes(self.ip) & self.mask()
    }

    /// True if the two subnets share an address (then one holds the other's first address).
    pub fn overlaps(&self, other: &Ipv4Cidr) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }
}

/// A public IPv4 address as a farmer offers it: the address in its subnet plus the gateway.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub struct PublicIpv4Config {
    pub ip: Ipv4Cidr,
    pub gateway: [u8; 4],
}

/// An IPv6 address with the prefix length of its subnet.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub struct Ipv6Cidr {
    pub ip: [u8; 16],
    pub prefix_len: u8,
}

impl Ipv6Cidr {
    fn mask(&self) -> u128 {
        u128::MAX
            .checked_shl(128u32.saturating_sub(u32::from(self.prefix_len)))
            .unwrap_or(0)
    }

    /// The first address of the subnet (the subnet-router anycast address).
    pub fn network(&self) -> [u8; 16] {
        (u128::from_be_bytes(self.ip) & self.mask()).to_be_bytes()
    }

    pub fn contains(&self, addr: [u8; 16]) -> bool {
        u128::from_be_bytes(addr) & self.mask() == u128::from_be_bytes(self.ip) & self.mask()
    }
}

/// A node's public IPv6 address and its gateway.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub struct PublicIpv6Config {
    pub ip: Ipv6Cidr,
    pub gateway: [u8; 16],
}

/// Prefix lengths a node's IPv6 subnet may have and still give its VMs addresses: the host
/// part must be wide enough that addresses derived from a hash do not collide.
pub const MAX_IPV6_PREFIX_FOR_VMS: u8 = 64;

impl PublicIpv6Config {
    /// The address a VM's public IP workload `workload` of contract `contract` gets in this
    /// node's subnet: deterministic (the deployer, the CLI and the node compute the same one),
    /// never the subnet-router anycast address, the node's own address or the gateway. `None`
    /// when the subnet is narrower than a /64.
    pub fn vm_address(&self, contract: crate::ContractId, workload: &[u8]) -> Option<[u8; 16]> {
        if self.ip.prefix_len > MAX_IPV6_PREFIX_FOR_VMS {
            return None;
        }
        let host_mask = !self.ip.mask();
        let network = u128::from_be_bytes(self.ip.network());
        let taken = [
            network,
            u128::from_be_bytes(self.ip.ip),
            u128::from_be_bytes(self.gateway),
        ];
        let mut input = b"zos public ipv6".to_vec();
        input.extend_from_slice(&contract.to_le_bytes());
        input.extend_from_slice(workload);
        // A few rounds of rehashing get past the (vanishingly rare) taken addresses.
        for _ in 0..4 {
            let digest = sp_crypto_hashing::blake2_128(&input);
            let addr = network | (u128::from_le_bytes(digest) & host_mask);
            if !taken.contains(&addr) {
                return Some(addr.to_be_bytes());
            }
            input = digest.to_vec();
        }
        None
    }
}

/// Address blocks that are not globally routable unicast (IANA special-purpose registries).
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    PalletError,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub enum SpecialRange {
    /// 0.0.0.0 or ::.
    Unspecified,
    /// 0.0.0.0/8 other than 0.0.0.0.
    ThisNetwork,
    /// 10/8, 172.16/12, 192.168/16; IPv6 unique local fc00::/7.
    Private,
    /// 100.64/10, carrier-grade NAT.
    SharedCgnat,
    /// 127/8 or ::1.
    Loopback,
    /// 169.254/16 or fe80::/10.
    LinkLocal,
    /// 192.0.0/24 or 2001::/23 (IETF protocol assignments).
    ProtocolAssignment,
    /// 192.0.2/24, 198.51.100/24, 203.0.113/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 192.88.99/24 (deprecated 6to4 relay anycast) or 2002::/16.
    Relay6to4,
    /// 198.18/15 or 2001:2::/48.
    Benchmarking,
    /// 224/4 or ff00::/8.
    Multicast,
    /// 240/4 other than the limited broadcast address.
    Reserved,
    /// 255.255.255.255.
    Broadcast,
    /// 2001::/32.
    Teredo,
    /// IPv6 outside 2000::/3 not covered above (mapped, translated, discard-only...).
    NotGlobalUnicast,
}

/// Why a public IP configuration was rejected.
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    Encode,
    Decode,
    DecodeWithMemTracking,
    MaxEncodedLen,
    TypeInfo,
    PalletError,
    Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub enum IpError {
    /// The prefix length is outside the accepted range (IPv4 8..=30, IPv6 16..=128).
    PrefixOutOfRange,
    /// The address is in a special-purpose block.
    IpNotPublic(SpecialRange),
    /// The gateway is in a special-purpose block (IPv6 link-local gateways are allowed).
    GatewayNotPublic(SpecialRange),
    /// The gateway is the address itself.
    GatewayEqualsIp,
    /// The gateway lies outside the address's subnet.
    GatewayNotInSubnet,
    /// The address is the subnet's network address.
    IpIsNetworkAddress,
    /// The address is the subnet's broadcast address.
    IpIsBroadcastAddress,
    /// The gateway is the subnet's network address.
    GatewayIsNetworkAddress,
    /// The gateway is the subnet's broadcast address.
    GatewayIsBroadcastAddress,
}

fn in_v4(addr: u32, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX
        .checked_shl(32u32.saturating_sub(prefix))
        .unwrap_or(0);
    addr & mask == u32::from_be_bytes(net) & mask
}

/// The special-purpose block `ip` belongs to, or `None` for a globally routable unicast address.
pub fn classify_ipv4(ip: [u8; 4]) -> Option<SpecialRange> {
    use SpecialRange::*;
    // Most specific blocks first: 0.0.0.0 inside 0/8, 255.255.255.255 inside 240/4.
    const TABLE: &[([u8; 4], u32, SpecialRange)] = &[
        ([0, 0, 0, 0], 32, Unspecified),
        ([255, 255, 255, 255], 32, Broadcast),
        ([0, 0, 0, 0], 8, ThisNetwork),
        ([10, 0, 0, 0], 8, Private),
        ([100, 64, 0, 0], 10, SharedCgnat),
        ([127, 0, 0, 0], 8, Loopback),
        ([169, 254, 0, 0], 16, LinkLocal),
        ([172, 16, 0, 0], 12, Private),
        ([192, 0, 0, 0], 24, ProtocolAssignment),
        ([192, 0, 2, 0], 24, Documentation),
        ([192, 88, 99, 0], 24, Relay6to4),
        ([192, 168, 0, 0], 16, Private),
        ([198, 18, 0, 0], 15, Benchmarking),
        ([198, 51, 100, 0], 24, Documentation),
        ([203, 0, 113, 0], 24, Documentation),
        ([224, 0, 0, 0], 4, Multicast),
        ([240, 0, 0, 0], 4, Reserved),
    ];
    let a = u32::from_be_bytes(ip);
    TABLE
        .iter()
        .find(|(net, len, _)| in_v4(a, *net, *len))
        .map(|(_, _, class)| *class)
}

/// Checks that `config` is a usable public IPv4 address: see [`IpError`] for each rule.
pub fn validate_public_ipv4(config: &PublicIpv4Config) -> Result<(), IpError> {
    validate_public_ipv4_in(config, false)
}

/// [`validate_public_ipv4`], where a test network may count the documentation ranges
/// (RFC 5737) as public, so tests never use real addresses.
pub fn validate_public_ipv4_in(
    config: &PublicIpv4Config,
    documentation_is_public: bool,
) -> Result<(), IpError> {
    let cidr = &config.ip;
    let gw = config.gateway;
    let special = |ip| {
        classify_ipv4(ip)
            .filter(|class| !(documentation_is_public && *class == SpecialRange::Documentation))
    };
    if !(MIN_IPV4_PREFIX..=MAX_IPV4_PREFIX).contains(&cidr.prefix_len) {
        return Err(IpError::PrefixOutOfRange);
    }
    if let Some(class) = special(cidr.ip) {
        return Err(IpError::IpNotPublic(class));
    }
    if let Some(class) = special(gw) {
        return Err(IpError::GatewayNotPublic(class));
    }
    if gw == cidr.ip {
        return Err(IpError::GatewayEqualsIp);
    }
    if !cidr.contains(gw) {
        return Err(IpError::GatewayNotInSubnet);
    }
    if cidr.ip == cidr.network() {
        return Err(IpError::IpIsNetworkAddress);
    }
    if cidr.ip == cidr.broadcast() {
        return Err(IpError::IpIsBroadcastAddress);
    }
    if gw == cidr.network() {
        return Err(IpError::GatewayIsNetworkAddress);
    }
    if gw == cidr.broadcast() {
        return Err(IpError::GatewayIsBroadcastAddress);
    }
    Ok(())
}

fn in_v6(addr: u128, net: u128, prefix: u32) -> bool {
    let mask = u128::MAX
        .checked_shl(128u32.saturating_sub(prefix))
        .unwrap_or(0);
    addr & mask == net & mask
}

/// The special-purpose block `ip` belongs to, or `None` for a globally routable unicast address.
///
/// All of 2001::/23 is treated as non-public even though IANA marks a few small blocks in it
/// globally reachable (anycast services): none of them is something a node would be given.
pub fn classify_ipv6(ip: [u8; 16]) -> Option<SpecialRange> {
    use SpecialRange::*;
    // Most specific blocks first: Teredo and benchmarking inside 2001::/23.
    const TABLE: &[(u128, u32, SpecialRange)] = &[
        (0, 128, Unspecified),
        (1, 128, Loopback),
        (0xff00 << 112, 8, Multicast),
        (0xfe80 << 112, 10, LinkLocal),
        (0xfc00 << 112, 7, Private),
        (0x2001_0db8 << 96, 32, Documentation),
        (0x3fff << 112, 20, Documentation),
        (0x2001_0002 << 96, 48, Benchmarking),
        (0x2001_0000 << 96, 32, Teredo),
        (0x2001_0000 << 96, 23, ProtocolAssignment),
        (0x2002 << 112, 16, Relay6to4),
    ];
    let a = u128::from_be_bytes(ip);
    if let Some((_, _, class)) = TABLE.iter().find(|(net, len, _)| in_v6(a, *net, *len)) {
        return Some(*class);
    }
    if !in_v6(a, 0x2000 << 112, 3) {
        return Some(NotGlobalUnicast);
    }
    None
}

/// Checks that `config` is a usable public IPv6 address. The gateway is either a link-local
/// address (the common router setup) or a public address inside the subnet.
pub fn validate_public_ipv6(config: &PublicIpv6Config) -> Result<(), IpError> {
    validate_public_ipv6_in(config, false)
}

/// [`validate_public_ipv6`], where a test network may count the documentation ranges
/// (RFC 3849, RFC 9637) as public, so tests never use real addresses.
pub fn validate_public_ipv6_in(
    config: &PublicIpv6Config,
    documentation_is_public: bool,
) -> Result<(), IpError> {
    let cidr = &config.ip;
    let gw = config.gateway;
    let special = |ip| {
        classify_ipv6(ip)
            .filter(|class| !(documentation_is_public && *class == SpecialRange::Documentation))
    };
    if !(MIN_IPV6_PREFIX..=MAX_IPV6_PREFIX).contains(&cidr.prefix_len) {
        return Err(IpError::PrefixOutOfRange);
    }
    if let Some(class) = special(cidr.ip) {
        return Err(IpError::IpNotPublic(class));
    }
    let gw_class = special(gw);
    match gw_class {
        Some(SpecialRange::LinkLocal) => {}
        Some(class) => return Err(IpError::GatewayNotPublic(class)),
        None => {
            if gw == cidr.ip {
                return Err(IpError::GatewayEqualsIp);
            }
            if !cidr.contains(gw) {
                return Err(IpError::GatewayNotInSubnet);
            }
        }
    }
    // The all-zero host is the subnet-router anycast address; only a /128 has no other host.
    if cidr.prefix_len < 128 {
        if cidr.ip == cidr.network() {
            return Err(IpError::IpIsNetworkAddress);
        }
        if gw_class.is_none() && gw == cidr.network() {
            return Err(IpError::GatewayIsNetworkAddress);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
