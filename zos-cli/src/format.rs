//! Human-readable renderings of chain values.

use zos_primitives::{
    contracts::{CancelCause, ContractState},
    spec::{DeploymentSpec, GatewayHost, HealthProbe, OnUnhealthy, WorkloadKind},
    Ipv4Cidr, Ipv6Cidr, Resources,
};

pub fn zgt(planck: u128) -> String {
    const UNIT: u128 = 1_000_000_000_000;
    let frac = format!("{:012}", planck % UNIT);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{} ZGT", planck / UNIT)
    } else {
        format!("{}.{frac} ZGT", planck / UNIT)
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn cidr(c: &Ipv4Cidr) -> String {
    format!("{}/{}", std::net::Ipv4Addr::from(c.ip), c.prefix_len)
}

pub fn ip(octets: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(octets).to_string()
}

pub fn cidr6(c: &Ipv6Cidr) -> String {
    format!("{}/{}", std::net::Ipv6Addr::from(c.ip), c.prefix_len)
}

pub fn ipv6(octets: [u8; 16]) -> String {
    std::net::Ipv6Addr::from(octets).to_string()
}

pub fn bytes_human(bytes: u64) -> String {
    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;
    if bytes >= GIB && bytes % GIB == 0 || bytes >= 10 * GIB {
        format!("{} GiB", bytes / GIB)
    } else {
        format!("{} MiB", bytes / MIB)
    }
}

pub fn resources(r: &Resources) -> String {
    format!(
        "cpu {} · mem {} · ssd {} · hdd {}",
        r.cru,
        bytes_human(r.mru),
        bytes_human(r.sru),
        bytes_human(r.hru)
    )
}

pub fn state(s: &ContractState) -> String {
    match s {
        ContractState::PendingApproval => "PendingApproval".into(),
        ContractState::Active => "Active".into(),
        ContractState::Deployed => "Deployed".into(),
        ContractState::Failed(f) => format!(
            "Failed ({}: {})",
            text(f.workload.as_bytes()),
            text(&f.reason)
        ),
        ContractState::GracePeriod => "GracePeriod".into(),
        ContractState::Cancelled(c) => format!("Cancelled ({})", cause(c)),
    }
}

pub fn cause(c: &CancelCause) -> &'static str {
    match c {
        CancelCause::Signers => "by its signers",
        CancelCause::Withdrawn => "withdrawn by its owner",
        CancelCause::Rejected => "rejected",
        CancelCause::Expired => "creation proposal expired",
        CancelCause::OutOfFunds => "out of funds",
        CancelCause::NodeRemoved => "its node left the grid",
        CancelCause::PublicIpRemoved => "governance removed its public IP",
    }
}

/// One line per workload.
pub fn spec_lines(spec: &DeploymentSpec) -> Vec<String> {
    spec.workloads
        .iter()
        .map(|w| {
            let name = text(w.name.as_bytes());
            let what = match &w.kind {
                WorkloadKind::Vm(vm) => {
                    let mut s = format!(
                        "vm: {} vcpu, {} MiB memory, {} MiB rootfs, image {}… from {}",
                        vm.vcpus,
                        vm.memory_mib,
                        vm.rootfs_mib,
                        &hex::encode(vm.image.root_hash)[..12],
                        text(vm.image.source.as_bytes())
                    );
                    for m in vm.mounts.iter() {
                        s.push_str(&format!(
                            ", {} at {}",
                            text(m.workload.as_bytes()),
                            text(m.path.as_bytes())
                        ));
                    }
                    if !vm.entrypoint.is_empty() {
                        s.push_str(&format!(", runs `{}`", text(vm.entrypoint.as_bytes())));
                    }
                    s
                }
                WorkloadKind::Disk(d) => format!("disk: {} MiB", d.size_mib),
                WorkloadKind::Volume(v) => format!("volume: {} MiB", v.size_mib),
                WorkloadKind::Network(n) => format!(
                    "network: {} (this node {}), port {}, {} peer(s){}",
                    cidr(&n.ip_range),
                    cidr(&n.subnet),
                    n.listen_port,
                    n.peers.len(),
                    if n.outbound_internet {
                        ", outbound internet"
                    } else {
                        ""
                    }
                ),
                WorkloadKind::PublicIp(p) => format!(
                    "public ip:{}{}",
                    if p.v4 { " v4" } else { "" },
                    if p.v6 { " v6" } else { "" }
                ),
                WorkloadKind::Gateway(g) => {
                    let host = match &g.host {
                        GatewayHost::Name(n) => {
                            format!("{}.<node domain>", String::from_utf8_lossy(n.as_bytes()))
                        }
                        GatewayHost::Fqdn(f) => String::from_utf8_lossy(f.as_bytes()).into_owned(),
                    };
                    let backends: Vec<String> = g
                        .backends
                        .iter()
                        .map(|b| b.socket_addr().to_string())
                        .collect();
                    format!(
                        "gateway: https://{host} -> {}{}{}",
                        backends.join(", "),
                        g.network
                            .as_ref()
                            .map(|n| format!(" in {}", String::from_utf8_lossy(n.as_bytes())))
                            .unwrap_or_default(),
                        if g.tls_passthrough {
                            ", TLS passthrough"
                        } else {
                            ""
                        }
                    )
                }
                WorkloadKind::HealthCheck(h) => {
                    let probe = match &h.probe {
                        HealthProbe::Command(c) => format!("`{}`", text(c.as_bytes())),
                        HealthProbe::Tcp(port) => format!("tcp port {port}"),
                        HealthProbe::Http { port, path } => {
                            format!("http://localhost:{port}{}", text(path.as_bytes()))
                        }
                    };
                    format!(
                        "health check of {}: {probe} every {} s (timeout {} s), unhealthy after {} failures past a {} s start period, then {}",
                        text(h.vm.as_bytes()),
                        h.interval_secs,
                        h.timeout_secs,
                        h.retries,
                        h.start_period_secs,
                        match h.on_unhealthy {
                            OnUnhealthy::Restart => "restarts the VM",
                            OnUnhealthy::Report => "reports only",
                        }
                    )
                }
            };
            format!("{name} — {what}")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts() {
        assert_eq!(zgt(0), "0 ZGT");
        assert_eq!(zgt(1_500_000_000_000), "1.5 ZGT");
        assert_eq!(zgt(1), "0.000000000001 ZGT");
    }

    #[test]
    fn addresses() {
        let mut ip = [0u8; 16];
        ip[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        ip[15] = 2;
        assert_eq!(ipv6(ip), "2001:db8::2");
        assert_eq!(cidr6(&Ipv6Cidr { ip, prefix_len: 64 }), "2001:db8::2/64");
        assert_eq!(
            cidr(&Ipv4Cidr {
                ip: [198, 51, 100, 10],
                prefix_len: 24
            }),
            "198.51.100.10/24"
        );
    }
}
