//! TCP throughput between two VM stand-ins on different nodes over the private network's
//! WireGuard path, against the same transfer between the two nodes' underlays without
//! WireGuard, measured in the same run (iperf3, 5 s each). Needs root, nftables, WireGuard and
//! iperf3; traffic stays in the namespaces it creates.
//!
//!     cargo run --profile ci -p zos-net --example wireguard_throughput

#[path = "../tests/support/mod.rs"]
mod support;

use std::{net::SocketAddr, process::Command, time::Duration};

use anyhow::{ensure, Context, Result};
use support::*;
use zos_net::Peer;

/// Receiver-side throughput of a 5 s iperf3 TCP run from `client_ns` to `server` in `server_ns`.
fn iperf(server_ns: &str, client_ns: &str, server: &str) -> Result<f64> {
    let mut srv = Command::new("ip")
        .args([
            "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", "5299",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("iperf3 server")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = in_ns(
        client_ns,
        &["iperf3", "-c", server, "-p", "5299", "-t", "5", "-J"],
    );
    let _ = srv.wait();
    ensure!(
        out.status.success(),
        "iperf3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 report without sum_received")
}

#[tokio::main]
async fn main() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "needs root");
    ensure!(have("iperf3") && have("nft"), "needs iperf3 and nftables");
    let dir = tempfile::tempdir()?;
    let (_cleanup, n1, n2) = two_nodes(dir.path()).await;
    let backend = n1.backend().context("no WireGuard on this host")?;
    let (k1, k2) = (random_key(), random_key());
    let endpoint = |s: &str| Some(s.parse::<SocketAddr>().expect("address"));
    let peer = |k: &zeroize::Zeroizing<[u8; 32]>, ep: &str, subnet: &str| Peer {
        public_key: zos_net::wireguard::public_key(k),
        endpoint: endpoint(ep),
        allowed_ips: vec![net(subnet)],
    };
    let cfg1 = node_network(
        "0000000c01",
        "10.77.1.0/24",
        51811,
        &k1,
        vec![peer(&k2, "198.51.100.2:51812", "10.77.2.0/24")],
    );
    let cfg2 = node_network(
        "0000000d01",
        "10.77.2.0/24",
        51812,
        &k2,
        vec![peer(&k1, "198.51.100.1:51811", "10.77.1.0/24")],
    );
    n1.apply(&cfg1).await?;
    n2.apply(&cfg2).await?;
    vm_stand_in(&n1, "znt-u1", &cfg1.id, "znt-vm1", "10.77.1.2/24").await;
    vm_stand_in(&n2, "znt-u2", &cfg2.id, "znt-vm2", "10.77.2.2/24").await;
    ensure!(
        eventually_pings("znt-vm1", "10.77.2.2", 20),
        "no path over WireGuard"
    );

    let underlay = iperf("znt-u2", "znt-u1", "198.51.100.2")?;
    let tunnel = iperf("znt-vm2", "znt-vm1", "10.77.2.2")?;
    println!(
        "underlay, node to node, no WireGuard: {:8.0} Mbit/s",
        underlay / 1e6
    );
    println!(
        "VM to VM across nodes over WireGuard ({}): {:8.0} Mbit/s",
        backend.as_str(),
        tunnel / 1e6
    );
    println!("ratio WireGuard / underlay: {:.3}", tunnel / underlay);
    n1.remove_all().await?;
    n2.remove_all().await?;
    Ok(())
}
