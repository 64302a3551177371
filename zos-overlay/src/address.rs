//! Overlay addresses. Each participant owns a /64 derived from its public key: the first 64
//! bits of `BLAKE3("zos-overlay subnet v1" || key)`, placed in [`OVERLAY_PREFIX`] (400::/7,
//! unassigned global space, as Mycelium uses, so no LAN's ULA range collides). The participant
//! itself is `<subnet>::1`; a node gives each VM that asks an address in its own /64, derived
//! from the contract and workload, so a VM keeps its address across redeploys on that node.

use std::net::Ipv6Addr;

/// The overlay's prefix, 400::/7.
pub const OVERLAY_PREFIX: Ipv6Addr = Ipv6Addr::new(0x0400, 0, 0, 0, 0, 0, 0, 0);
/// Its length.
pub const OVERLAY_PREFIX_LEN: u8 = 7;

const SUBNET_DOMAIN: &[u8] = b"zos-overlay subnet v1";
const WORKLOAD_DOMAIN: &[u8] = b"zos-overlay workload v1";

/// Whether `addr` is in the overlay prefix.
pub fn in_overlay(addr: &Ipv6Addr) -> bool {
    addr.octets()[0] & 0xfe == 0x04
}

/// A participant's /64 in the overlay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeSubnet([u8; 8]);

impl NodeSubnet {
    /// The /64 owned by the holder of `public_key` (32 bytes: the overlay identity key).
    pub fn of_key(public_key: &[u8; 32]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(SUBNET_DOMAIN);
        h.update(public_key);
        let digest = h.finalize();
        let mut bits = [0u8; 8];
        bits.copy_from_slice(&digest.as_bytes()[..8]);
        // The top 7 bits are the prefix; the 57 below come from the key.
        bits[0] = 0x04 | (bits[0] & 0x01);
        Self(bits)
    }

    /// The /64 an address is in, if it is an overlay address.
    pub fn of_address(addr: &Ipv6Addr) -> Option<Self> {
        if !in_overlay(addr) {
            return None;
        }
        let mut bits = [0u8; 8];
        bits.copy_from_slice(&addr.octets()[..8]);
        Some(Self(bits))
    }

    /// Whether `addr` is in this /64.
    pub fn contains(&self, addr: &Ipv6Addr) -> bool {
        addr.octets()[..8] == self.0
    }

    /// The address with interface identifier `iid` in this /64.
    pub fn address(&self, iid: u64) -> Ipv6Addr {
        let mut octets = [0u8; 16];
        octets[..8].copy_from_slice(&self.0);
        octets[8..].copy_from_slice(&iid.to_be_bytes());
        Ipv6Addr::from(octets)
    }

    /// The participant's own address: `<subnet>::1`.
    pub fn host(&self) -> Ipv6Addr {
        self.address(1)
    }

    /// The address of workload `workload` of `contract` on this node: never `::`, `::1` or
    /// any of the first 256 identifiers (kept for the node itself).
    pub fn workload(&self, contract: u64, workload: &str) -> Ipv6Addr {
        let mut h = blake3::Hasher::new();
        h.update(WORKLOAD_DOMAIN);
        h.update(&contract.to_le_bytes());
        h.update(workload.as_bytes());
        let digest = h.finalize();
        let mut iid = [0u8; 8];
        iid.copy_from_slice(&digest.as_bytes()[..8]);
        let iid = u64::from_be_bytes(iid);
        self.address(iid.max(0x100))
    }

    /// The subnet as `addr/64` text.
    pub fn cidr(&self) -> String {
        format!("{}/64", self.address(0))
    }
}

impl std::fmt::Display for NodeSubnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.cidr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_owns_one_stable_subnet_in_the_overlay_prefix() {
        let a = NodeSubnet::of_key(&[1; 32]);
        assert_eq!(a, NodeSubnet::of_key(&[1; 32]));
        assert_ne!(a, NodeSubnet::of_key(&[2; 32]));
        let host = a.host();
        assert!(in_overlay(&host), "{host}");
        assert!(a.contains(&host));
        assert_eq!(NodeSubnet::of_address(&host), Some(a));
        assert_eq!(host.segments()[7], 1);
        assert!(a.cidr().ends_with("::/64"), "{}", a.cidr());
        // Many keys, all in 400::/7.
        for i in 0..=255u8 {
            let s = NodeSubnet::of_key(&[i; 32]);
            assert!(in_overlay(&s.host()));
        }
    }

    #[test]
    fn addresses_outside_the_prefix_belong_to_no_subnet() {
        for text in ["2001:db8::1", "fd00::1", "::1", "600::1", "200::1"] {
            let addr: Ipv6Addr = text.parse().unwrap();
            assert_eq!(NodeSubnet::of_address(&addr), None, "{text}");
        }
        assert!(in_overlay(&"5ff:ffff::1".parse().unwrap()));
    }

    #[test]
    fn workload_addresses_are_stable_distinct_and_never_the_nodes() {
        let s = NodeSubnet::of_key(&[7; 32]);
        let vm = s.workload(42, "web");
        assert_eq!(vm, s.workload(42, "web"));
        assert_ne!(vm, s.workload(42, "db"));
        assert_ne!(vm, s.workload(43, "web"));
        assert!(s.contains(&vm));
        assert!(u64::from_be_bytes(vm.octets()[8..].try_into().unwrap()) >= 0x100);
        // Another node gives the same workload another address (in its own /64).
        let other = NodeSubnet::of_key(&[8; 32]);
        assert!(!s.contains(&other.workload(42, "web")));
    }
}
