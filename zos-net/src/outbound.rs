//! Outbound internet for a network (off unless asked for): a second veth pair joins the
//! network namespace to the underlay. The namespace masquerades its VMs behind its own address
//! of [`OUTBOUND_RANGE`]; the underlay forwards that address's new connections to anything but
//! private and special ranges and masquerades them behind the node's uplink. Nothing can open
//! a connection inward, and the node itself stays unreachable (its input drops the link).
//!
//! ```text
//!  network ns                          underlay
//!  <p>i<id> 100.127.x.y/32  ─ veth ─  <p>o<id> 100.127.0.1/32, route 100.127.x.y/32
//!  default via 100.127.0.1 (onlink)    masquerade out of the uplink
//! ```
//!
//! Each namespace's address is unique in the underlay (the next hop back to it), chosen from
//! the network's id and moved on when another network of the host holds it. The kernel's
//! route table is the registry: a namespace that has its address keeps it across restarts.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use rtnetlink::Handle;

use crate::{link, names::NetId, NetError};

/// Addresses of network namespaces on the underlay side (in the shared address space of
/// RFC 6598, which no VM range may use: they are RFC 1918).
pub const OUTBOUND_RANGE: Ipv4Net = match Ipv4Net::new(Ipv4Addr::new(100, 127, 0, 0), 16) {
    Ok(net) => net,
    Err(_) => panic!("a /16 is a valid prefix"),
};
/// The underlay's end of every outbound link: the namespaces' default gateway.
pub const NODE_SIDE: Ipv4Addr = Ipv4Addr::new(100, 127, 0, 1);

/// Destinations a VM never reaches through the node, internet or not: the farmer's LAN
/// (private ranges), loopback, link-local, shared and special-purpose space, multicast.
pub const BLOCKED_DESTINATIONS: &[&str] = &[
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
];

/// The namespace address for network `id`: derived from the id, moving on past addresses in
/// `taken`; `None` when the range is full.
pub fn choose_address(id: &NetId, taken: &[Ipv4Addr]) -> Option<Ipv4Addr> {
    // Host numbers 2..=65534 of the range (not its network, not NODE_SIDE, not broadcast).
    const FIRST: u32 = 2;
    const COUNT: u32 = 65533;
    let seed = u32::from_str_radix(&id.as_str()[..8], 16).unwrap_or(0) % COUNT;
    let base = u32::from(OUTBOUND_RANGE.network());
    let taken: std::collections::HashSet<&Ipv4Addr> = taken.iter().collect();
    (0..COUNT)
        .map(|step| Ipv4Addr::from(base + FIRST + (seed + step) % COUNT))
        .find(|candidate| !taken.contains(candidate))
}

/// Makes (or keeps) the outbound link of the network whose namespace is `inner`: `outside`
/// and `inside` name its two ends. Returns the namespace's address.
pub async fn ensure(
    host: &Handle,
    inner: &Handle,
    ns: &std::path::Path,
    id: &NetId,
    outside: &str,
    inside: &str,
) -> Result<Ipv4Addr> {
    if link::index(inner, inside).await?.is_none() {
        // A half-made pair of an interrupted run is replaced.
        link::delete(host, outside).await?;
        link::delete(host, inside).await?;
        link::ensure_veth(host, outside, inside).await?;
        let inside_index = link::index(host, inside)
            .await?
            .context("outbound veth peer missing after creation")?;
        link::move_to(host, inside_index, ns).await?;
    }
    let outside_index = link::index(host, outside)
        .await?
        .context("outbound link of the network vanished")?;
    let inside_index = link::index(inner, inside)
        .await?
        .context("inside end of the outbound link vanished")?;

    let held = link::ipv4_addresses(inner, inside_index)
        .await?
        .into_iter()
        .map(|(ip, _)| ip)
        .find(|ip| OUTBOUND_RANGE.contains(ip) && *ip != NODE_SIDE);
    let address = match held {
        Some(ip) => ip,
        None => {
            let taken: Vec<Ipv4Addr> = link::routes(host)
                .await?
                .into_iter()
                .filter(|(net, _, _)| net.prefix_len() == 32 && OUTBOUND_RANGE.contains(net))
                .map(|(net, _, _)| net.addr())
                .collect();
            choose_address(id, &taken).ok_or(NetError::OutboundRangeFull)?
        }
    };
    link::ensure_address(inner, inside_index, address, 32).await?;
    link::set_up(inner, inside_index).await?;
    link::replace_default_route(inner, NODE_SIDE, inside_index).await?;

    link::ensure_address(host, outside_index, NODE_SIDE, 32).await?;
    link::set_up(host, outside_index).await?;
    link::replace_route(
        host,
        Ipv4Net::new(address, 32).context("a /32")?,
        outside_index,
    )
    .await?;
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_id_skip_taken_ones_and_stay_in_range() {
        let id = NetId::new("00000000ff").unwrap();
        let first = choose_address(&id, &[]).unwrap();
        assert!(OUTBOUND_RANGE.contains(&first));
        assert_ne!(first, NODE_SIDE);
        assert_eq!(choose_address(&id, &[]), Some(first), "stable");
        let second = choose_address(&id, &[first]).unwrap();
        assert_ne!(second, first);
        assert!(OUTBOUND_RANGE.contains(&second));
        // The top of the range wraps to its bottom, never onto the reserved addresses.
        let top = NetId::new("ffffffffff").unwrap();
        let all_but_one: Vec<Ipv4Addr> = (2..=65534u32)
            .filter(|n| *n != 7)
            .map(|n| Ipv4Addr::from(u32::from(OUTBOUND_RANGE.network()) + n))
            .collect();
        assert_eq!(
            choose_address(&top, &all_but_one),
            Some(Ipv4Addr::new(100, 127, 0, 7))
        );
        let mut full = all_but_one;
        full.push(Ipv4Addr::new(100, 127, 0, 7));
        assert_eq!(choose_address(&top, &full), None);
    }
}
