//! Shared by the namespace tests and the throughput example: two nodes on one host, each in
//! its own underlay namespace joined by a veth with documentation addresses (198.51.100.1 and
//! .2), and namespaces standing in for VMs on the networks' bridges.

// The test and the example each use part of this module.
#![allow(dead_code)]

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ipnet::Ipv4Net;
use zeroize::Zeroizing;
use zos_net::{NetId, NetworkConfig, Networks, Peer, Prefix};

pub const NAMESPACES: [&str; 5] = ["znt-u1", "znt-u2", "znt-vm1", "znt-vm2", "znt-vm3"];

pub fn run(cmd: &[&str]) -> std::process::Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

pub fn ok(cmd: &[&str]) {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn in_ns(ns: &str, cmd: &[&str]) -> std::process::Output {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(cmd);
    run(&full)
}

pub fn pings(ns: &str, target: &str) -> bool {
    in_ns(ns, &["busybox", "ping", "-c", "1", "-W", "1", target])
        .status
        .success()
}

/// Pings until one answer, for up to `secs` (a WireGuard handshake takes a round trip).
pub fn eventually_pings(ns: &str, target: &str, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if pings(ns, target) {
            return true;
        }
    }
    false
}

/// What a failed connectivity check needs: every namespace's addresses, routes and tunnels.
pub fn diagnose() -> String {
    let mut text = String::new();
    let mut all: Vec<String> = NAMESPACES.iter().map(|s| s.to_string()).collect();
    let listed = run(&["ip", "netns", "list"]);
    all.extend(
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with("ta-") || n.starts_with("tb-"))
            .map(String::from),
    );
    for ns in all {
        for cmd in [
            &["ip", "-br", "addr"][..],
            &["ip", "route"],
            &["wg", "show"],
            &["ss", "-uln"],
        ] {
            let out = in_ns(&ns, cmd);
            text += &format!(
                "--- {ns}: {}\n{}{}",
                cmd.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    text
}

pub struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::env::var_os("ZOS_NET_TEST_KEEP").is_some() {
            return; // left for debugging
        }
        for ns in NAMESPACES {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

pub fn random_key() -> Zeroizing<[u8; 32]> {
    let mut key = Zeroizing::new([0u8; 32]);
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut key[..])
        .unwrap();
    key
}

pub fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

pub fn node_network(
    id: &str,
    subnet: &str,
    port: u16,
    key: &Zeroizing<[u8; 32]>,
    peers: Vec<Peer>,
) -> NetworkConfig {
    NetworkConfig {
        id: NetId::new(id).unwrap(),
        ip_range: net("10.77.0.0/16"),
        subnet: net(subnet),
        listen_port: port,
        private_key: key.clone(),
        peers,
        outbound_internet: false,
    }
}

/// A namespace standing in for a VM: a veth whose other end the node attaches to a network.
pub async fn vm_stand_in(node: &Networks, underlay: &str, network: &NetId, vm: &str, addr: &str) {
    let port = format!("{vm}p");
    let _ = run(&["ip", "netns", "add", vm]);
    ok(&[
        "ip", "link", "add", &port, "netns", underlay, "type", "veth", "peer", "eth0", "netns", vm,
    ]);
    node.attach_port(network, &port).await.unwrap();
    ok(&["ip", "-n", vm, "addr", "add", addr, "dev", "eth0"]);
    ok(&["ip", "-n", vm, "link", "set", "eth0", "up"]);
    ok(&["ip", "-n", vm, "link", "set", "lo", "up"]);
    let gw = format!("{}.1", addr.rsplit_once('.').unwrap().0);
    ok(&["ip", "-n", vm, "route", "add", "default", "via", &gw]);
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Builds the two underlays and a `Networks` in each (prefixes "ta" and "tb"), after removing
/// what an aborted earlier run left. The returned guard deletes every namespace.
pub async fn two_nodes(dir: &std::path::Path) -> (Cleanup, Networks, Networks) {
    drop(Cleanup); // namespaces of an aborted earlier run
    let cleanup = Cleanup;
    for ns in &NAMESPACES[..2] {
        ok(&["ip", "netns", "add", ns]);
        ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    ok(&[
        "ip", "link", "add", "eth0", "netns", "znt-u1", "type", "veth", "peer", "eth0", "netns",
        "znt-u2",
    ]);
    for (ns, addr) in [("znt-u1", "198.51.100.1/24"), ("znt-u2", "198.51.100.2/24")] {
        ok(&["ip", "-n", ns, "addr", "add", addr, "dev", "eth0"]);
        ok(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
    }
    let node = |prefix: &'static str, underlay: &'static str| {
        let run_dir = dir.join(prefix);
        async move {
            let prefix = Prefix::new(prefix).unwrap();
            let u = PathBuf::from(format!("/run/netns/{underlay}"));
            // Leftovers of an aborted earlier run go first.
            Networks::new(prefix.clone(), Some(u.clone()), run_dir.clone())
                .await
                .unwrap()
                .remove_all()
                .await
                .unwrap();
            Networks::new(prefix, Some(u), run_dir).await.unwrap()
        }
    };
    let n1 = node("ta", "znt-u1").await;
    let n2 = node("tb", "znt-u2").await;
    (cleanup, n1, n2)
}
