//! Two nodes on one host, each in its own underlay namespace joined by a link with
//! documentation addresses; namespaces stand in for VMs on the networks' bridges. Needs root,
//! nftables and WireGuard (kernel module or wireguard-go); traffic stays in these namespaces.

use std::{
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use zeroize::Zeroizing;
use zos_net::{NetError, Peer};

mod support;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_a_private_network_and_nothing_else() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !have("nft") {
        eprintln!("skipped: needs root and nftables");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_cleanup, n1, n2) = two_nodes(dir.path()).await;
    let Some(backend) = n1.backend() else {
        panic!("no WireGuard on this host: install wireguard-go (scripts/setup-toolchain.sh)");
    };
    eprintln!("WireGuard backend: {}", backend.as_str());

    let (k1, k2) = (random_key(), random_key());
    let pub_of = |k: &Zeroizing<[u8; 32]>| zos_net::wireguard::public_key(k);
    let endpoint = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
    let mut cfg1 = node_network(
        "0000000a01",
        "10.77.1.0/24",
        51801,
        &k1,
        vec![Peer {
            public_key: pub_of(&k2),
            endpoint: endpoint("198.51.100.2:51802"),
            allowed_ips: vec![net("10.77.2.0/24")],
        }],
    );
    let cfg2 = node_network(
        "0000000b01",
        "10.77.2.0/24",
        51802,
        &k2,
        vec![Peer {
            public_key: pub_of(&k1),
            endpoint: endpoint("198.51.100.1:51801"),
            allowed_ips: vec![net("10.77.1.0/24")],
        }],
    );
    let started = Instant::now();
    n1.apply(&cfg1).await.unwrap();
    n2.apply(&cfg2).await.unwrap();
    eprintln!("both networks up in {:?}", started.elapsed());
    // Applying again changes nothing and fails nothing.
    n1.apply(&cfg1).await.unwrap();
    assert!(n1.is_up(&cfg1.id).await.unwrap());

    vm_stand_in(&n1, "znt-u1", &cfg1.id, "znt-vm1", "10.77.1.2/24").await;
    vm_stand_in(&n2, "znt-u2", &cfg2.id, "znt-vm2", "10.77.2.2/24").await;
    let t = Instant::now();
    assert!(
        eventually_pings("znt-vm1", "10.77.2.2", 20),
        "VM to VM across WireGuard\n{}",
        diagnose()
    );
    eprintln!("first ping across nodes after {:?}", t.elapsed());
    assert!(pings("znt-vm2", "10.77.1.2"));

    // A file moves across the tunnel unchanged.
    let site = tempfile::tempdir().unwrap();
    let blob: Vec<u8> = (0..1_048_576u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(site.path().join("blob"), &blob).unwrap();
    let mut httpd = Command::new("ip")
        .args([
            "netns", "exec", "znt-vm2", "busybox", "httpd", "-f", "-p", "8080", "-h",
        ])
        .arg(site.path())
        .spawn()
        .unwrap();
    let mut fetched = vec![];
    for _ in 0..50 {
        let out = in_ns(
            "znt-vm1",
            &[
                "busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://10.77.2.2:8080/blob",
            ],
        );
        if out.status.success() {
            fetched = out.stdout;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = httpd.kill();
    let _ = httpd.wait();
    assert!(
        fetched == blob,
        "the file arrived changed ({} bytes)",
        fetched.len()
    );

    // A VM reaches neither its node nor the underlay, routed or directly on the bridge.
    assert!(
        !pings("znt-vm1", "198.51.100.1"),
        "VM reached its node's underlay address"
    );
    assert!(
        !pings("znt-vm1", "198.51.100.2"),
        "VM reached another node's underlay"
    );
    ok(&[
        "ip",
        "-n",
        "znt-vm1",
        "addr",
        "add",
        "198.51.100.9/24",
        "dev",
        "eth0",
    ]);
    assert!(
        !pings("znt-vm1", "198.51.100.1"),
        "VM reached its node directly over the bridge (ARP)"
    );
    // Even knowing the bridge's MAC without ARP, nothing the VM sends reaches the node.
    let bridge = in_ns(
        "znt-u1",
        &[
            "cat",
            &format!("/sys/class/net/{}/address", n1.bridge_name(&cfg1.id)),
        ],
    );
    let mac = String::from_utf8_lossy(&bridge.stdout).trim().to_string();
    ok(&[
        "ip",
        "-n",
        "znt-vm1",
        "neigh",
        "replace",
        "198.51.100.1",
        "lladdr",
        &mac,
        "dev",
        "eth0",
    ]);
    let node_socket = zos_net::netns::run_in(Path::new("/run/netns/znt-u1"), || {
        Ok(UdpSocket::bind("0.0.0.0:9999")?)
    })
    .unwrap();
    node_socket
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    zos_net::netns::run_in(Path::new("/run/netns/znt-vm1"), || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        for _ in 0..3 {
            s.send_to(b"hello node", "198.51.100.1:9999")?;
        }
        Ok(())
    })
    .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        node_socket.recv_from(&mut buf).is_err(),
        "a VM's packet reached a service of its node over the bridge"
    );
    ok(&[
        "ip",
        "-n",
        "znt-vm1",
        "addr",
        "del",
        "198.51.100.9/24",
        "dev",
        "eth0",
    ]);

    // A second tenant on node 1, even with the same addresses, is a separate world.
    let k3 = random_key();
    let cfg3 = node_network("0000000a02", "10.77.1.0/24", 51803, &k3, vec![]);
    n1.apply(&cfg3).await.unwrap();
    vm_stand_in(&n1, "znt-u1", &cfg3.id, "znt-vm3", "10.77.1.3/24").await;
    assert!(
        eventually_pings("znt-vm3", "10.77.1.1", 5),
        "the second tenant's VM works"
    );
    assert!(
        !pings("znt-vm1", "10.77.1.3"),
        "tenant 1 reached tenant 2 on the same node"
    );
    assert!(
        !pings("znt-vm3", "10.77.1.2"),
        "tenant 2 reached tenant 1 on the same node"
    );
    assert!(
        !pings("znt-vm3", "10.77.2.2"),
        "tenant 2 reached tenant 1's other node"
    );

    // A taken listen port fails that network alone, before anything is made.
    let k4 = random_key();
    let taken = node_network("0000000a03", "10.77.3.0/24", 51801, &k4, vec![]);
    let err = n1.apply(&taken).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<NetError>(),
        Some(&NetError::ListenPortTaken(51801))
    );
    assert!(!n1.list().unwrap().contains(&taken.id));
    assert!(pings("znt-vm1", "10.77.2.2"));

    // Peers change in place: a laptop joins, the VMs keep talking.
    let laptop = random_key();
    cfg1.peers.push(Peer {
        public_key: pub_of(&laptop),
        endpoint: None,
        allowed_ips: vec![net("100.64.77.2/32")],
    });
    n1.apply(&cfg1).await.unwrap();
    let routes = in_ns(&format!("ta-net-{}", cfg1.id), &["ip", "route"]);
    let routes = String::from_utf8_lossy(&routes.stdout).to_string();
    assert!(routes.contains("100.64.77.2 dev taw0000000a01"), "{routes}");
    assert!(pings("znt-vm1", "10.77.2.2"));
    cfg1.peers.pop();
    n1.apply(&cfg1).await.unwrap();
    let routes = in_ns(&format!("ta-net-{}", cfg1.id), &["ip", "route"]);
    assert!(!String::from_utf8_lossy(&routes.stdout).contains("100.64.77.2"));

    // Outbound internet: node 2's side stands in for the world (203.0.113.80) and for the
    // farmer's LAN (192.168.50.1), both routed by node 1 through node 2.
    ok(&[
        "ip",
        "-n",
        "znt-u2",
        "addr",
        "add",
        "203.0.113.80/32",
        "dev",
        "lo",
    ]);
    ok(&[
        "ip",
        "-n",
        "znt-u2",
        "addr",
        "add",
        "192.168.50.1/32",
        "dev",
        "lo",
    ]);
    for dest in ["203.0.113.0/24", "192.168.50.0/24"] {
        ok(&[
            "ip",
            "-n",
            "znt-u1",
            "route",
            "add",
            dest,
            "via",
            "198.51.100.2",
        ]);
    }
    assert!(pings("znt-u1", "192.168.50.1"), "the node reaches its LAN");
    assert!(
        !pings("znt-vm1", "203.0.113.80"),
        "internet before it was asked for"
    );
    cfg1.outbound_internet = true;
    n1.apply(&cfg1).await.unwrap();
    n1.apply(&cfg1).await.unwrap();
    assert!(
        eventually_pings("znt-vm1", "203.0.113.80", 5),
        "a VM of a network with outbound internet reaches the world\n{}",
        diagnose()
    );
    let world = Command::new("ip")
        .args([
            "netns",
            "exec",
            "znt-u2",
            "busybox",
            "httpd",
            "-f",
            "-p",
            "203.0.113.80:8080",
            "-h",
        ])
        .arg(site.path())
        .spawn();
    let mut world = world.unwrap();
    let mut got = vec![];
    for _ in 0..50 {
        let out = in_ns(
            "znt-vm1",
            &[
                "busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://203.0.113.80:8080/blob",
            ],
        );
        if out.status.success() {
            got = out.stdout;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = world.kill();
    let _ = world.wait();
    assert!(
        got == blob,
        "a file from the world arrived changed ({} bytes)",
        got.len()
    );
    assert!(
        !pings("znt-vm1", "192.168.50.1"),
        "a VM reached the farmer's LAN"
    );
    assert!(!pings("znt-vm1", "198.51.100.1"), "a VM reached its node");
    assert!(pings("znt-vm1", "10.77.2.2"), "the private network broke");
    assert!(
        !pings("znt-vm3", "203.0.113.80"),
        "another tenant got internet"
    );
    // Nothing dials in, neither from the world (given a route) nor from the node itself.
    let ns_routes = in_ns(
        "znt-u1",
        &["ip", "-o", "route", "show", "root", "100.127.0.0/16"],
    );
    let ns_routes = String::from_utf8_lossy(&ns_routes.stdout).to_string();
    let inner_address = ns_routes
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(inner_address.starts_with("100.127."), "{ns_routes}");
    ok(&[
        "ip",
        "-n",
        "znt-u2",
        "route",
        "add",
        "100.127.0.0/16",
        "via",
        "198.51.100.1",
    ]);
    assert!(
        !pings("znt-u2", &inner_address),
        "the world reached a network namespace"
    );
    assert!(
        !pings("znt-u1", &inner_address),
        "the node reached a network namespace"
    );
    // Turned off in place: the link goes, the network stays.
    cfg1.outbound_internet = false;
    n1.apply(&cfg1).await.unwrap();
    assert!(
        !pings("znt-vm1", "203.0.113.80"),
        "internet after it was turned off"
    );
    assert!(pings("znt-vm1", "10.77.2.2"));
    let links = in_ns("znt-u1", &["ip", "-o", "link"]);
    assert!(!String::from_utf8_lossy(&links.stdout).contains("tao0000000a01"));

    // A network moved to another subnet keeps only the new gateway.
    let mut moved = cfg3.clone();
    moved.subnet = net("10.77.5.0/24");
    n1.apply(&moved).await.unwrap();
    let lan = format!("tal{}", cfg3.id);
    let addrs = in_ns(
        &format!("ta-net-{}", cfg3.id),
        &["ip", "-br", "addr", "show", &lan],
    );
    let addrs = String::from_utf8_lossy(&addrs.stdout).to_string();
    assert!(
        addrs.contains("10.77.5.1/24") && !addrs.contains("10.77.1.1"),
        "{addrs}"
    );

    // Isolation rules flushed by someone else come back at the next check.
    assert!(!n1.heal_underlay_rules().await.unwrap(), "nothing to heal");
    ok(&["ip", "netns", "exec", "znt-u1", "nft", "flush", "ruleset"]);
    assert!(n1.heal_underlay_rules().await.unwrap(), "healed");
    assert!(!n1.heal_underlay_rules().await.unwrap());
    assert!(
        !pings("znt-vm1", "198.51.100.1"),
        "a VM reached its node after the heal"
    );

    // Removing a network leaves nothing of it.
    n1.remove(&cfg3.id).await.unwrap();
    n1.remove(&cfg3.id).await.unwrap();
    let links = in_ns("znt-u1", &["ip", "-o", "link"]);
    let links = String::from_utf8_lossy(&links.stdout).to_string();
    assert!(!links.contains("0000000a02"), "{links}");
    assert!(!n1.list().unwrap().contains(&cfg3.id));
    let procs = run(&["pgrep", "-f", "taw0000000a02"]);
    assert!(
        !procs.status.success(),
        "wireguard-go of a removed network still runs"
    );
    assert!(pings("znt-vm1", "10.77.2.2"));

    n1.remove_all().await.unwrap();
    n2.remove_all().await.unwrap();
    assert!(n1.list().unwrap().is_empty());
    let links = in_ns("znt-u1", &["ip", "-o", "link"]);
    let links = String::from_utf8_lossy(&links.stdout).to_string();
    assert!(!links.contains(": ta"), "{links}");
}
