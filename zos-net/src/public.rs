//! Public cards: a VM's port on the node's public bridge (the farmer's bridge to the farm's
//! public network), allowed to speak only as itself, with its traffic counted.
//!
//! Per card, one nftables `bridge` table `zos_<port>` in the underlay:
//! - from the VM: its own MAC only; ARP only for its own IPv4 and MAC; IPv4 only from its own
//!   address; IPv6 only from its own address, link-local or unspecified (duplicate address
//!   detection); no router advertisements or redirects, no neighbour advertisements for
//!   another global address, no DHCP or DHCPv6 server replies, nothing but IPv4, IPv6 and ARP
//!   (no VLAN tags). Without an IPv4 (or IPv6) address, that family is dropped entirely.
//! - nothing from the VM is delivered to the node itself (bridge input hook).
//! - named counters `from_vm` (forwarded from the VM) and `to_vm` (delivered to the VM's MAC:
//!   not broadcasts and floods) in bytes and packets, that the node reads for billing; they
//!   live in the kernel, so an executor restart keeps them, and a reload of the rules starts
//!   them from what they had counted.

use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Context, Result};

/// What a public card may be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicCard {
    pub mac: [u8; 6],
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

/// Bytes and packets through a public card, as the node counted them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PublicTraffic {
    /// Sent by the VM (to the internet).
    pub bytes_out: u64,
    /// Received by the VM.
    pub bytes_in: u64,
    pub packets_out: u64,
    pub packets_in: u64,
}

/// The nftables table of the card on port `port`.
pub fn table_name(port: &str) -> String {
    format!("zos_{port}")
}

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The card's rules (replacing any earlier version of them atomically). The counters start
/// from `kept` (what the earlier version had counted), so reloading never loses billed traffic.
pub fn card_rules(port: &str, card: &PublicCard, kept: PublicTraffic) -> String {
    let table = table_name(port);
    let mac = mac_text(&card.mac);
    let mut check = format!("\t\tether saddr != {mac} counter drop\n");
    check += "\t\tether type != { ip, ip6, arp } counter drop\n";
    check += &format!("\t\tether type arp arp saddr ether != {mac} counter drop\n");
    match card.ipv4 {
        Some(ip) => {
            check += &format!("\t\tether type arp arp saddr ip != {ip} counter drop\n");
            check += &format!("\t\tether type ip ip saddr != {ip} counter drop\n");
            // DHCP clients take replies by destination port, whatever the source port.
            check += "\t\tether type ip udp sport 67 counter drop\n";
            check += "\t\tether type ip udp dport 68 counter drop\n";
        }
        None => check += "\t\tether type { ip, arp } counter drop\n",
    }
    match card.ipv6 {
        Some(ip) => {
            check += &format!(
                "\t\tether type ip6 ip6 saddr != {{ {ip}, fe80::/10, :: }} counter drop\n"
            );
            check +=
                "\t\tether type ip6 icmpv6 type { nd-router-advert, nd-redirect } counter drop\n";
            // The target of a neighbour advertisement is the 128 bits after the first 64 of the
            // ICMPv6 header; link-local targets (fe80::/10, first 10 bits 0x3fa) stay allowed.
            check += &format!(
                "\t\tether type ip6 icmpv6 type nd-neighbor-advert @th,64,128 != 0x{:032x} @th,64,10 != 0x3fa counter drop\n",
                u128::from(ip)
            );
            check += "\t\tether type ip6 udp sport 547 counter drop\n";
            check += "\t\tether type ip6 udp dport 546 counter drop\n";
        }
        None => check += "\t\tether type ip6 counter drop\n",
    }

    let mut rules = format!("table bridge {table}\ndelete table bridge {table}\n");
    rules += &format!("table bridge {table} {{\n");
    rules += &format!(
        "\tcounter from_vm {{ packets {} bytes {} }}\n\tcounter to_vm {{ packets {} bytes {} }}\n",
        kept.packets_out, kept.bytes_out, kept.packets_in, kept.bytes_in
    );
    rules += "\tchain prerouting { type filter hook prerouting priority -200; policy accept;\n";
    rules += &format!("\t\tiifname \"{port}\" jump from_vm_check\n\t}}\n");
    rules += &format!("\tchain from_vm_check {{\n{check}\t}}\n");
    // The node itself is not the VM's business: whatever the VM sends to the bridge's own
    // addresses (the node's, when the farmer gave the bridge one) is dropped. The VM reaches
    // the node like any internet host does, through the farm's router.
    rules += "\tchain input { type filter hook input priority -200; policy accept;\n";
    rules += &format!("\t\tiifname \"{port}\" counter drop\n\t}}\n");
    // Billed traffic: what the VM sent through the bridge (never what the node dropped), and
    // what the bridge delivered to the VM's own MAC (not floods of other hosts' frames).
    rules += "\tchain forward { type filter hook forward priority 200; policy accept;\n";
    rules += &format!("\t\tiifname \"{port}\" counter name from_vm\n\t}}\n");
    rules += "\tchain postrouting { type filter hook postrouting priority 200; policy accept;\n";
    rules += &format!("\t\toifname \"{port}\" ether daddr {mac} counter name to_vm\n\t}}\n}}\n");
    rules
}

/// Removes the card's table (fine when absent).
pub fn card_cleanup(port: &str) -> String {
    let table = table_name(port);
    format!("table bridge {table}\ndelete table bridge {table}\n")
}

/// Reads the counters of the card on `port` from `nft -j list counters` output.
pub fn parse_traffic(json: &str) -> Result<PublicTraffic> {
    let doc: serde_json::Value = serde_json::from_str(json).context("nft's JSON")?;
    let mut traffic = PublicTraffic::default();
    let items = doc["nftables"].as_array().context("no nftables array")?;
    for item in items {
        let Some(counter) = item.get("counter") else {
            continue;
        };
        let bytes = counter["bytes"].as_u64().unwrap_or(0);
        let packets = counter["packets"].as_u64().unwrap_or(0);
        match counter["name"].as_str() {
            Some("from_vm") => (traffic.bytes_out, traffic.packets_out) = (bytes, packets),
            Some("to_vm") => (traffic.bytes_in, traffic.packets_in) = (bytes, packets),
            _ => {}
        }
    }
    Ok(traffic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_pin_the_cards_addresses_and_drop_what_it_has_not() {
        let card = PublicCard {
            mac: [2, 0, 0, 0, 0, 0x0a],
            ipv4: Some(Ipv4Addr::new(198, 51, 100, 10)),
            ipv6: Some("2001:db8::a".parse().unwrap()),
        };
        let rules = card_rules("zt0123456789", &card, PublicTraffic::default());
        assert!(rules.contains("iifname \"zt0123456789\" jump from_vm_check"));
        assert!(rules.contains(
            "hook input priority -200; policy accept;\n\t\tiifname \"zt0123456789\" counter drop"
        ));
        assert!(rules.contains("ether saddr != 02:00:00:00:00:0a counter drop"));
        assert!(rules.contains("arp saddr ip != 198.51.100.10 counter drop"));
        assert!(rules.contains("ip saddr != 198.51.100.10 counter drop"));
        assert!(rules.contains("@th,64,128 != 0x20010db800000000000000000000000a"));
        let v4_only = card_rules(
            "zt0123456789",
            &PublicCard {
                ipv6: None,
                ..card.clone()
            },
            PublicTraffic::default(),
        );
        assert!(v4_only.contains("ether type ip6 counter drop"));
        let kept = PublicTraffic {
            bytes_out: 5,
            bytes_in: 7,
            packets_out: 1,
            packets_in: 2,
        };
        let v6_only = card_rules("zt0123456789", &PublicCard { ipv4: None, ..card }, kept);
        assert!(v6_only.contains("counter from_vm { packets 1 bytes 5 }"));
        assert!(v6_only.contains("counter to_vm { packets 2 bytes 7 }"));
        assert!(v6_only.contains("ether type { ip, arp } counter drop"));
    }

    #[test]
    fn counters_are_read_by_name() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}},
            {"counter": {"family": "bridge", "name": "from_vm", "table": "t", "handle": 4, "packets": 3, "bytes": 300}},
            {"counter": {"family": "bridge", "name": "to_vm", "table": "t", "handle": 5, "packets": 2, "bytes": 120}}]}"#;
        assert_eq!(
            parse_traffic(json).unwrap(),
            PublicTraffic {
                bytes_out: 300,
                bytes_in: 120,
                packets_out: 3,
                packets_in: 2
            }
        );
    }
}
