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
    outbound::{BLOCKED_DESTINATIONS, OUTBOUND_RANGE},
};

/// The underlay's rules for all of this node's networks: nothing that arrives from a network
/// bridge reaches the node itself or is routed by it (IPv4, IPv6 and ARP). VMs' own traffic
/// is bridged at layer 2 and leaves only through their network's namespace. Where
/// br_netfilter is loaded, bridged frames pass the forward hook too, in and out of a bridge:
/// only traffic entering or leaving the bridges at layer 3 (the node routing) is dropped. The
/// node never routes to a bridge (they carry no address), so bridge to bridge stays bridged.
///
/// A network with outbound internet sends from its namespace's own address over its outbound
/// link: forwarded (never delivered to the node) to anything outside [`BLOCKED_DESTINATIONS`]
/// and masqueraded; only replies come back in.
pub fn underlay_rules(prefix: &Prefix) -> String {
    let table = format!("zos_{prefix}");
    let bridges = format!("{prefix}b*");
    let outbound = format!("{prefix}o*");
    // Taps and veth ends are bridge ports, whose traffic the host sees as the bridge's; one
    // that is off its bridge (its network just removed, a crash half-way) must not become a
    // plain interface of the node. Nor must an outbound link's inside end left in the underlay.
    let ports = [
        format!("{prefix}t*"),
        format!("{prefix}v*"),
        format!("{prefix}i*"),
    ];
    let port_drops = |dir: &str| -> String {
        ports
            .iter()
            .map(|p| format!("\t\t{dir}name \"{p}\" counter drop\n"))
            .collect()
    };
    let (in_ports, out_ports) = (port_drops("iif"), port_drops("oif"));
    let blocked = BLOCKED_DESTINATIONS.join(", ");
    let mut rules = format!("table inet {table}\ndelete table inet {table}\n");
    rules += &format!("table inet {table} {{\n");
    rules += "\tchain input { type filter hook input priority -10; policy accept;\n";
    rules += &format!("\t\tiifname \"{bridges}\" counter drop\n{in_ports}");
    rules += &format!("\t\tiifname \"{outbound}\" counter drop\n\t}}\n");
    rules += "\tchain forward { type filter hook forward priority -10; policy accept;\n";
    rules += &format!("\t\tiifname \"{bridges}\" oifname != \"{bridges}\" counter drop\n");
    rules += &format!("\t\toifname \"{bridges}\" iifname != \"{bridges}\" counter drop\n");
    rules += &format!("{in_ports}{out_ports}");
    rules += &format!("\t\tiifname \"{outbound}\" meta nfproto != ipv4 counter drop\n");
    rules += &format!("\t\tiifname \"{outbound}\" ip saddr != {OUTBOUND_RANGE} counter drop\n");
    rules += &format!("\t\tiifname \"{outbound}\" ip daddr {{ {blocked} }} counter drop\n");
    rules += &format!("\t\tiifname \"{outbound}\" oifname \"{outbound}\" counter drop\n");
    rules += &format!("\t\toifname \"{outbound}\" ct state established,related accept\n");
    rules += &format!("\t\toifname \"{outbound}\" counter drop\n\t}}\n");
    rules += "\tchain postrouting { type nat hook postrouting priority srcnat; policy accept;\n";
    rules += &format!("\t\tiifname \"{outbound}\" counter masquerade\n\t}}\n}}\n");
    rules += &format!("table arp {table}\ndelete table arp {table}\n");
    rules += &format!("table arp {table} {{\n");
    rules += "\tchain input { type filter hook input priority -10; policy accept;\n";
    rules += &format!("\t\tiifname \"{bridges}\" counter drop\n{in_ports}\t}}\n}}\n");
    rules
}

/// Connections a network's VMs may hold open to the internet at once.
pub const MAX_OUTBOUND_CONNECTIONS: u32 = 4096;
/// New connections per second a network's VMs may open to the internet (and as many at once).
pub const MAX_NEW_OUTBOUND_PER_SECOND: u32 = 200;

/// A network namespace's rules: it forwards only between its LAN and its tunnel, and from
/// tunnel to tunnel (an access node relays between hidden nodes, laptops and other nodes).
/// With `outbound_internet`, also its LAN's connections out of the outbound link, masqueraded
/// behind the namespace's address, and their replies; nothing enters from that link.
pub fn network_rules(prefix: &Prefix, id: &NetId, outbound_internet: bool) -> String {
    let lan = ifname(prefix, Role::VethLan, id);
    let wg = ifname(prefix, Role::WireGuard, id);
    let inside = ifname(prefix, Role::OutboundInside, id);
    let mut rules = String::from("table inet zos\ndelete table inet zos\ntable inet zos {\n");
    rules += "\tchain forward { type filter hook forward priority 0; policy drop;\n";
    rules += &format!("\t\tiifname \"{lan}\" oifname \"{wg}\" accept\n");
    rules += &format!("\t\tiifname \"{wg}\" oifname \"{lan}\" accept\n");
    rules += &format!("\t\tiifname \"{wg}\" oifname \"{wg}\" accept\n");
    if outbound_internet {
        // Abuse limits on what the VMs open towards the internet: no direct mail (spam), and
        // a bound on concurrent and new connections (conntrack is per namespace: per network).
        let out = format!("iifname \"{lan}\" oifname \"{inside}\"");
        rules += &format!("\t\t{out} tcp dport {{ 25, 465 }} counter drop\n");
        rules += &format!(
            "\t\t{out} ct state new ct count over {MAX_OUTBOUND_CONNECTIONS} counter drop\n"
        );
        rules += &format!(
            "\t\t{out} ct state new limit rate over {MAX_NEW_OUTBOUND_PER_SECOND}/second burst {MAX_NEW_OUTBOUND_PER_SECOND} packets counter drop\n"
        );
        rules += &format!("\t\t{out} accept\n");
        rules += &format!(
            "\t\tiifname \"{inside}\" oifname \"{lan}\" ct state established,related accept\n"
        );
    }
    rules += "\t\tcounter\n\t}\n";
    if outbound_internet {
        rules +=
            "\tchain postrouting { type nat hook postrouting priority srcnat; policy accept;\n";
        rules += &format!("\t\toifname \"{inside}\" masquerade\n\t}}\n");
        rules += "\tchain input { type filter hook input priority 0; policy accept;\n";
        rules += &format!("\t\tiifname \"{inside}\" ct state established,related accept\n");
        rules += &format!("\t\tiifname \"{inside}\" counter drop\n\t}}\n");
    }
    rules += "}\n";
    rules
}

/// Removes the underlay table of `prefix` (fine when absent).
pub fn underlay_cleanup(prefix: &Prefix) -> String {
    let table = format!("zos_{prefix}");
    format!(
        "table inet {table}\ndelete table inet {table}\ntable arp {table}\ndelete table arp {table}\n"
    )
}

/// Whether table `family name` exists in the namespace at `ns` (or ours).
pub fn table_exists(ns: Option<&Path>, family: &str, name: &str) -> Result<bool> {
    let (family, name) = (family.to_string(), name.to_string());
    let run = move || -> Result<bool> {
        let status = Command::new("nft")
            .args(["list", "table", &family, &name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running nft (is nftables installed?)")?;
        Ok(status.success())
    };
    match ns {
        Some(ns) => netns::run_in(ns, run),
        None => run(),
    }
}

/// `nft -j list counters table <family> <name>` in the namespace at `ns` (or ours).
pub fn list_counters(ns: Option<&Path>, family: &str, name: &str) -> Result<String> {
    let (family, name) = (family.to_string(), name.to_string());
    let run = move || -> Result<String> {
        let out = Command::new("nft")
            .args(["-j", "list", "counters", "table", &family, &name])
            .stdin(Stdio::null())
            .output()
            .context("running nft (is nftables installed?)")?;
        anyhow::ensure!(
            out.status.success(),
            "nft could not list the counters of {family} {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    match ns {
        Some(ns) => netns::run_in(ns, run),
        None => run(),
    }
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
        assert!(under.contains("iifname \"q1o*\" ip daddr { 0.0.0.0/8, 10.0.0.0/8,"));
        assert!(under.contains("iifname \"q1o*\" counter masquerade"));
        assert!(under.contains("iifname \"q1i*\" counter drop"));
        let net = network_rules(&p, &id, false);
        assert!(net.contains("iifname \"q1l0123456789\" oifname \"q1w0123456789\" accept"));
        assert!(net.contains("policy drop"));
        assert!(!net.contains("q1i0123456789"));
        let open = network_rules(&p, &id, true);
        assert!(open.contains("iifname \"q1l0123456789\" oifname \"q1i0123456789\" accept"));
        assert!(open.contains("oifname \"q1i0123456789\" masquerade"));
        assert!(open.contains("tcp dport { 25, 465 } counter drop"));
        assert!(open.contains("ct count over 4096 counter drop"));
    }
}
