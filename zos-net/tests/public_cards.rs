//! Public cards against spoofing, with namespaces: a node's underlay with the farmer's public
//! bridge, a farm router on it (198.51.100.1, 2001:db8:100::1), two VM stand-ins with public
//! addresses. Each spoof a hostile VM tries is dropped before the router sees it; honest
//! traffic passes and is counted. Needs root and nftables; traffic stays in these namespaces.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use zos_net::{public::PublicCard, Networks, Prefix};

mod support;
use support::{have, in_ns, ok, pings, run};

const SPACES: [&str; 4] = ["zpc-u", "zpc-router", "zpc-vm1", "zpc-vm2"];
const VM1_MAC: &str = "02:00:00:00:01:0a";
const VM2_MAC: &str = "02:00:00:00:01:0b";

struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        for ns in SPACES {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

fn mac(text: &str) -> [u8; 6] {
    let mut out = [0u8; 6];
    for (o, part) in out.iter_mut().zip(text.split(':')) {
        *o = u8::from_str_radix(part, 16).unwrap();
    }
    out
}

/// Packets the router counted for `rule` (a counter rule added by [`router_counts`]).
fn router_count(name: &str) -> u64 {
    let out = in_ns(
        "zpc-router",
        &["nft", "-j", "list", "counter", "inet", "seen", name],
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    json["nftables"]
        .as_array()
        .and_then(|items| items.iter().find_map(|i| i.get("counter")))
        .and_then(|c| c["packets"].as_u64())
        .unwrap_or(0)
}

/// Runs a short python3 program in VM 1's namespace (raw packets busybox cannot send).
fn python_in_vm1(program: &str) {
    let out = in_ns("zpc-vm1", &["python3", "-c", program]);
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_card_speaks_only_as_itself_and_is_counted() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !have("nft") || !have("python3") {
        eprintln!("skipped: needs root, nftables and python3");
        return;
    }
    drop(Cleanup);
    let _cleanup = Cleanup;
    for ns in SPACES {
        ok(&["ip", "netns", "add", ns]);
        ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    // The farmer's public bridge in the node's underlay, and the farm router on it.
    ok(&[
        "ip", "-n", "zpc-u", "link", "add", "pubbr", "type", "bridge",
    ]);
    ok(&["ip", "-n", "zpc-u", "link", "set", "pubbr", "up"]);
    ok(&[
        "ip",
        "link",
        "add",
        "rtr",
        "netns",
        "zpc-u",
        "type",
        "veth",
        "peer",
        "eth0",
        "netns",
        "zpc-router",
    ]);
    ok(&[
        "ip", "-n", "zpc-u", "link", "set", "rtr", "master", "pubbr", "up",
    ]);
    for (addr, family) in [("198.51.100.1/24", "-4"), ("2001:db8:100::1/64", "-6")] {
        ok(&[
            "ip",
            family,
            "-n",
            "zpc-router",
            "addr",
            "add",
            addr,
            "dev",
            "eth0",
            "nodad",
        ]);
    }
    ok(&["ip", "-n", "zpc-router", "link", "set", "eth0", "up"]);
    // What reaches the router is counted there.
    let seen = "table inet seen {\n\
        counter spoofed_source { }\n counter router_adverts { }\n counter dhcp_offers { }\n\
        chain input { type filter hook prerouting priority -300; policy accept;\n\
        ip saddr 198.51.100.99 counter name spoofed_source\n\
        icmpv6 type nd-router-advert counter name router_adverts\n\
        udp dport 68 counter name dhcp_offers\n }\n}\n";
    let mut nft = Command::new("ip")
        .args(["netns", "exec", "zpc-router", "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    nft.stdin
        .take()
        .unwrap()
        .write_all(seen.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success());

    let dir = tempfile::tempdir().unwrap();
    let node = Networks::new(
        Prefix::new("tp").unwrap(),
        Some("/run/netns/zpc-u".into()),
        dir.path().to_path_buf(),
    )
    .await
    .unwrap();

    // Two VM stand-ins with public addresses.
    let vms = [
        (
            "zpc-vm1",
            "tpvm1",
            VM1_MAC,
            "198.51.100.10",
            "2001:db8:100::10",
        ),
        (
            "zpc-vm2",
            "tpvm2",
            VM2_MAC,
            "198.51.100.11",
            "2001:db8:100::11",
        ),
    ];
    for (ns, port, mac_text, v4, v6) in vms {
        ok(&[
            "ip", "link", "add", port, "netns", "zpc-u", "type", "veth", "peer", "eth0", "netns",
            ns,
        ]);
        ok(&["ip", "-n", ns, "link", "set", "eth0", "address", mac_text]);
        let card = PublicCard {
            mac: mac(mac_text),
            ipv4: Some(v4.parse().unwrap()),
            ipv6: Some(v6.parse().unwrap()),
        };
        node.attach_public_port("pubbr", port, &card).await.unwrap();
        ok(&[
            "ip",
            "-4",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{v4}/24"),
            "dev",
            "eth0",
        ]);
        ok(&[
            "ip",
            "-6",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ok(&["ip", "-n", ns, "link", "set", "eth0", "up"]);
    }
    let missing = node
        .attach_public_port(
            "nobridge",
            "tpvm1",
            &PublicCard {
                mac: mac(VM1_MAC),
                ipv4: None,
                ipv6: None,
            },
        )
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("no public bridge"),
        "{missing}"
    );

    // Honest traffic passes, both families.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pings("zpc-vm1", "198.51.100.1") {
        assert!(Instant::now() < deadline, "VM 1 never reached the router");
    }
    assert!(pings("zpc-vm2", "198.51.100.1"));
    let ping6 = in_ns(
        "zpc-vm1",
        &[
            "busybox",
            "ping",
            "-6",
            "-c",
            "1",
            "-W",
            "2",
            "2001:db8:100::1",
        ],
    );
    assert!(ping6.status.success(), "IPv6 to the router");

    // A foreign source address never reaches the router.
    ok(&[
        "ip",
        "-n",
        "zpc-vm1",
        "addr",
        "add",
        "198.51.100.99/32",
        "dev",
        "eth0",
    ]);
    ok(&[
        "ip",
        "-n",
        "zpc-router",
        "neigh",
        "replace",
        "198.51.100.99",
        "lladdr",
        VM1_MAC,
        "dev",
        "eth0",
    ]);
    let _ = in_ns(
        "zpc-vm1",
        &[
            "busybox",
            "ping",
            "-c",
            "2",
            "-W",
            "1",
            "-I",
            "198.51.100.99",
            "198.51.100.1",
        ],
    );
    assert_eq!(
        router_count("spoofed_source"),
        0,
        "a spoofed source reached the router"
    );

    // ARP for another VM's address does not poison the router.
    ok(&[
        "ip",
        "-n",
        "zpc-vm1",
        "addr",
        "add",
        "198.51.100.11/32",
        "dev",
        "eth0",
    ]);
    let _ = in_ns(
        "zpc-vm1",
        &[
            "busybox",
            "arping",
            "-U",
            "-c",
            "2",
            "-I",
            "eth0",
            "-s",
            "198.51.100.11",
            "198.51.100.1",
        ],
    );
    let neigh = in_ns("zpc-router", &["ip", "neigh", "show", "198.51.100.11"]);
    assert!(
        !String::from_utf8_lossy(&neigh.stdout).contains(VM1_MAC),
        "VM 1 took VM 2's address in the router's ARP cache"
    );
    assert!(
        pings("zpc-router", "198.51.100.11"),
        "VM 2 lost its address"
    );

    // A router advertisement and a DHCP offer never leave the VM.
    python_in_vm1(
        "import socket\n\
         s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)\n\
         s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)\n\
         s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, socket.if_nametoindex('eth0'))\n\
         ra = bytes([134, 0, 0, 0, 64, 0, 0x07, 0x08]) + bytes(8)\n\
         for _ in range(3): s.sendto(ra, ('ff02::1', 0, 0, socket.if_nametoindex('eth0')))\n",
    );
    python_in_vm1(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'eth0')\n\
         s.bind(('198.51.100.10', 67))\n\
         for _ in range(3): s.sendto(b'\\x02' + bytes(240), ('255.255.255.255', 68))\n\
         t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         t.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n\
         t.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b'eth0')\n\
         t.bind(('198.51.100.10', 6767))\n\
         for _ in range(3): t.sendto(b'\\x02' + bytes(240), ('255.255.255.255', 68))\n",
    );
    assert_eq!(
        router_count("router_adverts"),
        0,
        "a router advertisement got out"
    );
    assert_eq!(router_count("dhcp_offers"), 0, "a DHCP offer got out");

    // Another MAC: nothing passes.
    ok(&[
        "ip",
        "-n",
        "zpc-vm1",
        "addr",
        "del",
        "198.51.100.99/32",
        "dev",
        "eth0",
    ]);
    ok(&[
        "ip",
        "-n",
        "zpc-vm1",
        "addr",
        "del",
        "198.51.100.11/32",
        "dev",
        "eth0",
    ]);
    ok(&[
        "ip",
        "-n",
        "zpc-vm1",
        "link",
        "set",
        "eth0",
        "address",
        "02:00:00:00:01:99",
    ]);
    ok(&["ip", "-n", "zpc-router", "neigh", "flush", "dev", "eth0"]);
    assert!(
        !pings("zpc-vm1", "198.51.100.1"),
        "a foreign MAC got through"
    );
    ok(&[
        "ip", "-n", "zpc-vm1", "link", "set", "eth0", "address", VM1_MAC,
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pings("zpc-vm1", "198.51.100.1") {
        assert!(
            Instant::now() < deadline,
            "VM 1 did not recover with its own MAC"
        );
    }

    // Traffic is counted per card: 1 MiB served by VM 1 to the router.
    let before = node.public_traffic("tpvm1").await.unwrap();
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("blob"), vec![7u8; 1 << 20]).unwrap();
    let mut httpd = Command::new("ip")
        .args([
            "netns", "exec", "zpc-vm1", "busybox", "httpd", "-f", "-p", "8080", "-h",
        ])
        .arg(site.path())
        .spawn()
        .unwrap();
    let mut fetched = 0;
    for _ in 0..50 {
        let out = in_ns(
            "zpc-router",
            &[
                "busybox",
                "wget",
                "-q",
                "-O",
                "-",
                "http://198.51.100.10:8080/blob",
            ],
        );
        if out.status.success() {
            fetched = out.stdout.len();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = httpd.kill();
    let _ = httpd.wait();
    assert_eq!(fetched, 1 << 20);
    let after = node.public_traffic("tpvm1").await.unwrap();
    let sent = after.bytes_out - before.bytes_out;
    assert!(
        (1 << 20..(1 << 20) + (1 << 17)).contains(&sent),
        "VM 1 sent {sent} bytes for a 1 MiB file"
    );
    assert!(
        after.bytes_in > before.bytes_in,
        "requests and acknowledgements counted in"
    );
    let other = node.public_traffic("tpvm2").await.unwrap();
    assert!(other.bytes_out < 1 << 16, "VM 2 was charged VM 1's traffic");

    // Reloading a card's rules (a re-attach) keeps what it had counted.
    let card1 = PublicCard {
        mac: mac(VM1_MAC),
        ipv4: Some("198.51.100.10".parse().unwrap()),
        ipv6: Some("2001:db8:100::10".parse().unwrap()),
    };
    node.attach_public_port("pubbr", "tpvm1", &card1)
        .await
        .unwrap();
    let reloaded = node.public_traffic("tpvm1").await.unwrap();
    assert!(
        reloaded.bytes_out >= after.bytes_out && reloaded.bytes_in >= after.bytes_in,
        "counters lost on reload: {reloaded:?} after {after:?}"
    );

    // The node's own address on the public bridge: the router reaches it, no VM does.
    ok(&[
        "ip",
        "-n",
        "zpc-u",
        "addr",
        "add",
        "198.51.100.2/24",
        "dev",
        "pubbr",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pings("zpc-router", "198.51.100.2") {
        assert!(
            Instant::now() < deadline,
            "the router never reached the node"
        );
    }
    assert!(
        !pings("zpc-vm2", "198.51.100.2"),
        "a VM reached the node over its public card"
    );

    // Detached: link and rules gone, twice is fine.
    node.detach_public("tpvm1").await.unwrap();
    node.detach_public("tpvm1").await.unwrap();
    let tables = in_ns("zpc-u", &["nft", "list", "tables"]);
    let tables = String::from_utf8_lossy(&tables.stdout).to_string();
    assert!(
        !tables.contains("zos_tpvm1") && tables.contains("zos_tpvm2"),
        "{tables}"
    );
    node.remove_all().await.unwrap();
}
