//! nftables rules, written as whole tables and loaded atomically with `nft -f -`.

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context, Result};

use crate::{
    names::{ifname, NetId, Prefix, Role},
    netns,
};

/// The underlay's rules for all of this node's networks: nothing that arrives from a network
/// bridge reaches the node itself or is routed by it (IPv4, IPv6 and ARP). VMs' own traffic
/// is bridged at layer 2 and leaves only through their network's namespace. Where
/// br_netfilter is loaded, bridged frames pass the forward hook too, in and out of a bridge:
/// only traffic entering or leaving the bridges at layer 3 (the node routing) is dropped. The
/// node never routes to a bridge (they carry no address), so bridge to bridge stays bridged.
pub fn underlay_rules(prefix: &Prefix) -> String {
    let table = format!("zos_{prefix}");
    let bridges = format!("{prefix}b*");
    // Taps and veth ends are bridge ports, whose traffic the host sees as the bridge's; one
    // that is off its bridge (its network just removed, a crash half-way) must not become a
    // plain interface of the node.
    let ports = [format!("{prefix}t*"), format!("{prefix}v*")];
    let port_drops = |dir: &str| -> String {
        ports
            .iter()
            .map(|p| format!("\t\t{dir}name \"{p}\" counter drop\n"))
            .collect()
    };
    format!(
        "table inet {table}\n\
         delete table inet {table}\n\
         table inet {table} {{\n\
         \tchain input {{ type filter hook input priority -10; policy accept;\n\
         \t\tiifname \"{bridges}\" counter drop\n{in_ports}\t}}\n\
         \tchain forward {{ type filter hook forward priority -10; policy accept;\n\
         \t\tiifname \"{bridges}\" oifname != \"{bridges}\" counter drop\n\
         \t\toifname \"{bridges}\" iifname != \"{bridges}\" counter drop\n{in_ports}{out_ports}\t}}\n\
         }}\n\
         table arp {table}\n\
         delete table arp {table}\n\
         table arp {table} {{\n\
         \tchain input {{ type filter hook input priority -10; policy accept;\n\
         \t\tiifname \"{bridges}\" counter drop\n{in_ports}\t}}\n\
         }}\n",
        in_ports = port_drops("iif"),
        out_ports = port_drops("oif"),
    )
}

/// A network namespace's rules: it forwards only between its LAN and its tunnel, and from
/// tunnel to tunnel (an access node relays between hidden nodes, laptops and other nodes).
pub fn network_rules(prefix: &Prefix, id: &NetId) -> String {
    let lan = ifname(prefix, Role::VethLan, id);
    let wg = ifname(prefix, Role::WireGuard, id);
    format!(
        "table inet zos\n\
         delete table inet zos\n\
         table inet zos {{\n\
         \tchain forward {{ type filter hook forward priority 0; policy drop;\n\
         \t\tiifname \"{lan}\" oifname \"{wg}\" accept\n\
         \t\tiifname \"{wg}\" oifname \"{lan}\" accept\n\
         \t\tiifname \"{wg}\" oifname \"{wg}\" accept\n\
         \t\tcounter\n\t}}\n\
         }}\n"
    )
}

/// Removes the underlay table of `prefix` (fine when absent).
pub fn underlay_cleanup(prefix: &Prefix) -> String {
    let table = format!("zos_{prefix}");
    format!(
        "table inet {table}\ndelete table inet {table}\ntable arp {table}\ndelete table arp {table}\n"
    )
}

/// Loads `rules` into the namespace at `ns` (or ours).
pub fn load(ns: Option<&Path>, rules: &str) -> Result<()> {
    let rules = rules.to_string();
    let run = move || -> Result<()> {
        let mut child = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("running nft (is nftables installed?)")?;
        child
            .stdin
            .take()
            .context("nft stdin")?
            .write_all(rules.as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(
            out.status.success(),
            "nft refused the rules: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    };
    match ns {
        Some(ns) => netns::run_in(ns, run),
        None => run(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_only_this_nodes_interfaces() {
        let p = Prefix::new("q1").unwrap();
        let id = NetId::new("0123456789").unwrap();
        let under = underlay_rules(&p);
        assert!(under.contains("iifname \"q1b*\" counter drop"));
        assert!(under.contains("table arp zos_q1"));
        assert!(under.contains("iifname \"q1t*\" counter drop"));
        assert!(under.contains("oifname \"q1v*\" counter drop"));
        let net = network_rules(&p, &id);
        assert!(net.contains("iifname \"q1l0123456789\" oifname \"q1w0123456789\" accept"));
        assert!(net.contains("policy drop"));
    }
}
