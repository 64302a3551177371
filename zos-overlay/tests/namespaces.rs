//! Real `zos-overlay` processes with real TUN devices, each in its own network namespace on
//! a LAN namespace's bridge (documentation addresses, nothing routed off the host): three nodes,
//! one of them a relay, a laptop (a DHT client), and a node behind a NAT router namespace that
//! only dials out. Ping and TCP between overlay addresses, peers found through the DHT, the NAT
//! node reached through the relay, the relay killed and restarted.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU16, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

const LAN: &str = "zov-lan";
/// Node namespaces and their LAN addresses; the last is the laptop.
const HOSTS: [(&str, &str); 5] = [
    ("zov-a", "198.51.100.1"),
    ("zov-b", "198.51.100.2"),
    ("zov-c", "198.51.100.3"),
    ("zov-l", "198.51.100.9"),
    ("zov-r", "198.51.100.5"),
];
/// The NAT router's namespace (on the LAN), and the node behind it with its private address.
const ROUTER: &str = "zov-r";
const NATTED: (&str, &str) = ("zov-n", "10.77.0.2");
const PORT: u16 = 9651;

fn run(cmd: &[&str]) -> std::process::Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &[&str]) {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Adds `cidr` to `dev` in namespace `ns`.
fn add_address(ns: &str, dev: &str, cidr: &str) {
    ok(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev]);
}

fn link_up(ns: &str, dev: &str) {
    ok(&["ip", "-n", ns, "link", "set", dev, "up"]);
}

fn cleanup() {
    for (ns, _) in HOSTS.iter().chain([&NATTED]) {
        let _ = run(&["ip", "netns", "del", ns]);
    }
    let _ = run(&["ip", "netns", "del", LAN]);
}

/// The LAN namespace with a bridge, and each host's namespace on it through a veth.
fn lan() {
    cleanup();
    ok(&["ip", "netns", "add", LAN]);
    ok(&["ip", "-n", LAN, "link", "add", "br0", "type", "bridge"]);
    link_up(LAN, "br0");
    for (i, (ns, addr)) in HOSTS.iter().enumerate() {
        let port = format!("p{i}");
        ok(&["ip", "netns", "add", ns]);
        ok(&[
            "ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", &port, "netns", LAN,
        ]);
        ok(&["ip", "-n", LAN, "link", "set", &port, "master", "br0", "up"]);
        add_address(ns, "eth0", &format!("{addr}/24"));
        link_up(ns, "eth0");
        link_up(ns, "lo");
    }
    // Behind the router: a private link, a default route, masquerading on the way out.
    let (natted, private) = NATTED;
    ok(&["ip", "netns", "add", natted]);
    ok(&[
        "ip", "link", "add", "eth0", "netns", natted, "type", "veth", "peer", "eth1", "netns",
        ROUTER,
    ]);
    add_address(ROUTER, "eth1", "10.77.0.1/24");
    link_up(ROUTER, "eth1");
    add_address(natted, "eth0", &format!("{private}/24"));
    link_up(natted, "eth0");
    link_up(natted, "lo");
    ok(&[
        "ip",
        "-n",
        natted,
        "route",
        "add",
        "default",
        "via",
        "10.77.0.1",
    ]);
    ok(&[
        "ip",
        "netns",
        "exec",
        ROUTER,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    ok(&[
        "ip", "netns", "exec", ROUTER, "nft",
        "add table ip nat; add chain ip nat post { type nat hook postrouting priority 100; }; add rule ip nat post oifname eth0 masquerade",
    ]);
}

fn listen_ip(ns: &str) -> &'static str {
    HOSTS
        .iter()
        .chain([&NATTED])
        .find(|(n, _)| *n == ns)
        .unwrap()
        .1
}

struct Participant {
    ns: &'static str,
    listen_ip: &'static str,
    key: PathBuf,
    peer: String,
    address: Ipv6Addr,
    child: Option<Child>,
    log: PathBuf,
}

impl Participant {
    fn new(dir: &Path, ns: &'static str) -> Self {
        Self::listening_on(dir, ns, listen_ip(ns))
    }

    fn listening_on(dir: &Path, ns: &'static str, listen_ip: &'static str) -> Self {
        let key = dir.join(format!("{ns}.key"));
        let out = run(&[
            env!("CARGO_BIN_EXE_zos-overlay"),
            "id",
            "--key",
            key.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {text}"))
                .trim()
                .to_string()
        };
        Self {
            ns,
            listen_ip,
            key,
            peer: field("peer "),
            address: field("address ").parse().unwrap(),
            child: None,
            log: dir.join(format!("{ns}.log")),
        }
    }

    fn multiaddr(&self) -> String {
        format!("/ip4/{}/tcp/{PORT}/p2p/{}", self.listen_ip, self.peer)
    }

    /// Starts the process and waits for its TUN to be up.
    fn start(&mut self, peers: &[String], extra: &[&str]) {
        let listen = format!("/ip4/{}/tcp/{PORT}", self.listen_ip);
        let mut args = vec![
            "netns".to_string(),
            "exec".into(),
            self.ns.into(),
            env!("CARGO_BIN_EXE_zos-overlay").into(),
            "up".into(),
            "--key".into(),
            self.key.to_str().unwrap().into(),
            "--listen".into(),
            listen,
            "--tun".into(),
            "zov0".into(),
        ];
        for p in peers {
            args.push("--peer".into());
            args.push(p.clone());
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new("ip")
            .args(&args)
            .env(
                "RUST_LOG",
                "info,zos_overlay=debug,libp2p=warn,netlink_packet_route=error",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with(&format!("up {}", self.address)),
            "{}: {line:?}\n{}",
            self.ns,
            self.logs()
        );
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pings(ns: &str, target: Ipv6Addr) -> bool {
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "busybox",
        "ping6",
        "-c",
        "1",
        "-W",
        "1",
        &target.to_string(),
    ])
    .status
    .success()
}

/// Pings `to` from `from` until it answers, within `secs`; the time to the first answer.
fn reach(from: &Participant, to: &Participant, secs: u64, all: &[&Participant]) -> Duration {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        if pings(from.ns, to.address) {
            return start.elapsed();
        }
    }
    let logs: String = all
        .iter()
        .map(|p| format!("--- {}\n{}\n", p.ns, p.logs()))
        .collect();
    panic!(
        "{} never reached {} within {secs} s\n{logs}",
        from.ns, to.ns
    );
}

/// A socket created inside namespace `ns` (it stays there when the thread returns).
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> T {
    zos_net::netns::run_in(&zos_net::netns::path_of(ns), move || Ok(f()?)).unwrap()
}

/// Sends `bytes` over TCP from `from` to `to`'s overlay address; the receiver's BLAKE3 of
/// what it read must match. Returns the transfer's throughput in Mbit/s.
fn tcp_transfer(from: &Participant, to: &Participant, bytes: usize) -> f64 {
    transfer_between(from.ns, to.ns, IpAddr::V6(to.address), bytes)
}

/// Sends `bytes` over TCP from namespace `from` to `target` in namespace `to`; the receiver's
/// BLAKE3 of what it read must match. Returns the throughput in Mbit/s.
fn transfer_between(from: &'static str, to: &'static str, target: IpAddr, bytes: usize) -> f64 {
    // A port per transfer: the last one's may still be in TIME_WAIT.
    static PORT: AtomicU16 = AtomicU16::new(7000);
    let target = SocketAddr::from((target, PORT.fetch_add(1, Ordering::Relaxed)));
    let listener = in_ns(to, move || TcpListener::bind(target));
    let receiver = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0;
        loop {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n;
        }
        (total, hasher.finalize())
    });
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 + i / 4096) as u8).collect();
    let expected = blake3::hash(&data);
    let mut conn = in_ns(from, move || {
        TcpStream::connect_timeout(&target, Duration::from_secs(10))
    });
    let start = Instant::now();
    conn.write_all(&data).unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let (total, hash) = receiver.join().unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(total, bytes);
    assert_eq!(hash, expected, "the bytes arrive intact");
    bytes as f64 * 8.0 / secs / 1e6
}

/// The tests here measure throughput: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn nodes_and_a_laptop_reach_each_other_by_key_derived_address() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    lan();
    let dir = tempfile::tempdir().unwrap();
    let mut a = Participant::new(dir.path(), "zov-a");
    let mut b = Participant::new(dir.path(), "zov-b");
    let mut c = Participant::new(dir.path(), "zov-c");
    let mut laptop = Participant::new(dir.path(), "zov-l");
    // Every address is in 400::/7 and distinct.
    for p in [&a, &b, &c, &laptop] {
        assert_eq!(p.address.octets()[0] & 0xfe, 0x04, "{}", p.address);
    }

    a.start(&[], &["--relay-server"]);
    let bootstrap = vec![a.multiaddr()];
    // B is given the relay too: reachable, it drops its reservation once AutoNAT says so.
    b.start(&bootstrap, &["--relay", &a.multiaddr()]);
    c.start(&bootstrap, &[]);
    laptop.start(&bootstrap, &["--client"]);

    // B and C only know A: each finds the other's /64 through the DHT.
    let all = [&a, &b, &c, &laptop];
    let first = reach(&b, &c, 60, &all);
    eprintln!("b -> c: first answer after {first:?}");
    reach(&c, &b, 30, &all);
    reach(&laptop, &c, 60, &all);
    reach(&c, &laptop, 30, &all);
    reach(&laptop, &a, 30, &all);

    let mbit = tcp_transfer(&laptop, &c, 16 << 20);
    eprintln!("laptop -> c: 16 MiB over TCP at {mbit:.0} Mbit/s");
    let mbit = tcp_transfer(&b, &c, 16 << 20);
    eprintln!("b -> c: 16 MiB over TCP at {mbit:.0} Mbit/s");

    // Behind NAT: the node dials out only, holds a reservation on A, and publishes its relayed
    // address. The laptop, which the NAT node never dials (a DHT client), reaches it through A.
    let mut natted = Participant::new(dir.path(), NATTED.0);
    natted.start(&bootstrap, &["--relay", &a.multiaddr()]);
    let all = [&a, &b, &c, &laptop, &natted];
    let took = reach(&laptop, &natted, 60, &all);
    eprintln!("laptop -> NAT node: first answer after {took:?}");
    let relayed = "p2p-circuit";
    assert!(
        laptop
            .logs()
            .lines()
            .any(|l| l.contains("connected") && l.contains(&natted.peer) && l.contains(relayed)),
        "the laptop's first connection to the NAT node is relayed\n{}",
        laptop.logs()
    );
    let mbit = tcp_transfer(&laptop, &natted, 4 << 20);
    eprintln!("laptop -> NAT node: 4 MiB over TCP at {mbit:.0} Mbit/s");
    reach(&natted, &laptop, 10, &all);
    reach(&b, &natted, 30, &all);

    // AutoNAT: peers could not dial the NAT node back, and could dial B.
    let nat_found = |p: &Participant, wanted: &[&str]| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !wanted.iter().all(|w| p.logs().contains(w)) {
            assert!(
                Instant::now() < deadline,
                "{} never logged {wanted:?}\n{}",
                p.ns,
                p.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    nat_found(&natted, &["NAT status: behind NAT"]);
    nat_found(
        &b,
        &[
            "NAT status: publicly reachable",
            "relay reservation dropped",
        ],
    );
    assert!(!natted.logs().contains("NAT status: publicly reachable"));
    for p in [&natted, &b] {
        for line in p
            .logs()
            .lines()
            .filter(|l| l.contains("NAT status") || l.contains("reservation"))
        {
            eprintln!("{}: {line}", p.ns);
        }
    }

    // The bootstrap node dies: the others keep talking, and find each other without it.
    a.stop();
    let all = [&a, &b, &c, &laptop, &natted];
    reach(&b, &c, 10, &all);
    reach(&laptop, &b, 60, &all);
    // It comes back (same key, joining through B) and is reachable again.
    a.start(&[b.multiaddr()], &["--relay-server"]);
    let all = [&a, &b, &c, &laptop, &natted];
    reach(&a, &laptop, 60, &all);
    reach(&laptop, &a, 30, &all);
    // The NAT node is reachable from both again, whatever became of its old connections.
    reach(&a, &natted, 60, &all);
    reach(&laptop, &natted, 60, &all);

    // Traffic from an address outside the sender's /64 never leaves it.
    let foreign = zos_overlay::NodeSubnet::of_key(&[9; 32]).host();
    ok(&[
        "ip",
        "-n",
        b.ns,
        "addr",
        "add",
        &format!("{foreign}/128"),
        "dev",
        "zov0",
    ]);
    let spoofed = run(&[
        "ip",
        "netns",
        "exec",
        b.ns,
        "busybox",
        "ping6",
        "-c",
        "2",
        "-W",
        "1",
        "-I",
        &foreign.to_string(),
        &c.address.to_string(),
    ]);
    assert!(
        !spoofed.status.success(),
        "a ping from a foreign source got an answer"
    );
    // ... because B's overlay refused it: its counter says so (logged every 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !b.logs().lines().any(|l| {
        l.split("foreign-source ")
            .nth(1)
            .and_then(|n| n.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|n| n >= 2)
    }) {
        assert!(
            Instant::now() < deadline,
            "B never counted the foreign-source pings\n{}",
            b.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    if std::env::var_os("ZOS_OVERLAY_TEST_LOGS").is_some() {
        for p in [&a, &b, &c, &laptop, &natted] {
            eprintln!("--- {}\n{}", p.ns, p.logs());
        }
    }
    drop((a, b, c, laptop, natted));
    cleanup();
}

/// The average round trip of 50 back-to-back pings from `ns` to `target`, in ms.
fn round_trip_ms(ns: &str, target: IpAddr) -> f64 {
    let ping = if target.is_ipv6() { "ping6" } else { "ping" };
    let out = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "busybox",
        ping,
        "-A",
        "-q",
        "-c",
        "50",
        &target.to_string(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    // "round-trip min/avg/max = 0.061/0.080/0.197 ms"
    text.lines()
        .find_map(|l| l.split(" = ").nth(1).filter(|_| l.contains("round-trip")))
        .and_then(|v| v.split('/').nth(1))
        .and_then(|avg| avg.parse().ok())
        .unwrap_or_else(|| panic!("no round trip from {ns} to {target}: {text}"))
}

fn yggdrasil_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("ZOS_YGGDRASIL_BIN") {
        return bin.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
    cache.join("zos-grid/tools/yggdrasil/usr/sbin/yggdrasil")
}

/// A yggdrasil node in `ns` (its config generated, multicast discovery off, no admin socket),
/// listening on `listen` and peering with `peer`. Returns the process and its address.
fn start_yggdrasil(dir: &Path, ns: &str, listen: &str, peer: Option<&str>) -> (Child, Ipv6Addr) {
    let bin = yggdrasil_binary();
    let generated = run(&[bin.to_str().unwrap(), "-genconf", "-json"]);
    assert!(
        generated.status.success(),
        "yggdrasil -genconf (run scripts/setup-toolchain.sh)"
    );
    let mut config: serde_json::Value = serde_json::from_slice(&generated.stdout).unwrap();
    config["Listen"] = serde_json::json!([format!("tcp://{listen}:9652")]);
    config["Peers"] = serde_json::json!(peer
        .map(|p| vec![format!("tcp://{p}:9652")])
        .unwrap_or_default());
    config["MulticastInterfaces"] = serde_json::json!([]);
    config["AdminListen"] = serde_json::json!("none");
    config["IfName"] = serde_json::json!("ygg0");
    let path = dir.join(format!("{ns}-yggdrasil.json"));
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
    let address = run(&[
        bin.to_str().unwrap(),
        "-useconffile",
        path.to_str().unwrap(),
        "-address",
    ]);
    let address = String::from_utf8_lossy(&address.stdout)
        .trim()
        .parse()
        .unwrap();
    let log = std::fs::File::create(dir.join(format!("{ns}-yggdrasil.log"))).unwrap();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            bin.to_str().unwrap(),
            "-useconffile",
            path.to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    (child, address)
}

/// wireguard-go (the userspace WireGuard the nodes use where the kernel module is missing) in
/// `ns` as `dev` with `addr`, peering with `peer_key` at `endpoint` for `peer_addr`.
fn start_wireguard(
    ns: &str,
    dev: &str,
    key: &Path,
    addr: &str,
    peer_key: &str,
    endpoint: &str,
    peer_addr: &str,
) -> Child {
    let child = Command::new("ip")
        .args(["netns", "exec", ns, "wireguard-go", "-f", dev])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !run(&["ip", "-n", ns, "link", "show", dev]).status.success() {
        assert!(
            Instant::now() < deadline,
            "wireguard-go made no {dev} in {ns}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(&[
        "ip",
        "netns",
        "exec",
        ns,
        "wg",
        "set",
        dev,
        "listen-port",
        "51820",
        "private-key",
        key.to_str().unwrap(),
        "peer",
        peer_key,
        "endpoint",
        &format!("{endpoint}:51820"),
        "allowed-ips",
        &format!("{peer_addr}/32"),
    ]);
    add_address(ns, dev, &format!("{addr}/24"));
    link_up(ns, dev);
    child
}

fn wg_keys(dir: &Path, name: &str) -> (PathBuf, String) {
    let private = run(&["wg", "genkey"]).stdout;
    let path = dir.join(format!("{name}.wg"));
    std::fs::write(&path, &private).unwrap();
    let public = Command::new("wg")
        .arg("pubkey")
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap()
        .stdout;
    (path, String::from_utf8(public).unwrap().trim().to_string())
}

/// The best of three transfers, in Mbit/s (the first warms up windows and caches).
fn best_transfer(from: &'static str, to: &'static str, target: IpAddr, bytes: usize) -> f64 {
    (0..3)
        .map(|_| transfer_between(from, to, target, bytes))
        .fold(0.0, f64::max)
}

#[test]
fn the_overlay_against_wireguard_and_yggdrasil_on_one_link() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root for network namespaces");
        return;
    }
    const ONE: &str = "zob-1";
    const TWO: &str = "zob-2";
    let (ip1, ip2) = ("198.51.100.101", "198.51.100.102");
    for ns in [ONE, TWO] {
        let _ = run(&["ip", "netns", "del", ns]);
        ok(&["ip", "netns", "add", ns]);
        link_up(ns, "lo");
    }
    ok(&[
        "ip", "link", "add", "eth0", "netns", ONE, "type", "veth", "peer", "eth0", "netns", TWO,
    ]);
    for (ns, ip) in [(ONE, ip1), (TWO, ip2)] {
        add_address(ns, "eth0", &format!("{ip}/24"));
        link_up(ns, "eth0");
    }
    let dir = tempfile::tempdir().unwrap();
    const BYTES: usize = 32 << 20;

    // The bare link: the baseline every path pays on top of.
    let underlay: IpAddr = ip2.parse().unwrap();
    let bare = (
        round_trip_ms(ONE, underlay),
        best_transfer(ONE, TWO, underlay, BYTES),
    );

    // The overlay.
    let mut o1 = Participant::listening_on(dir.path(), ONE, ip1);
    let mut o2 = Participant::listening_on(dir.path(), TWO, ip2);
    o1.start(&[], &[]);
    o2.start(&[o1.multiaddr()], &[]);
    reach(&o1, &o2, 30, &[&o1, &o2]);
    let target = IpAddr::V6(o2.address);
    let overlay = (
        round_trip_ms(ONE, target),
        best_transfer(ONE, TWO, target, BYTES),
    );
    o1.stop();
    o2.stop();

    // WireGuard (userspace, as on nodes without the kernel module); distinct device names,
    // since wireguard-go's control sockets share /var/run/wireguard.
    let (key1, pub1) = wg_keys(dir.path(), "one");
    let (key2, pub2) = wg_keys(dir.path(), "two");
    let mut wg1 = start_wireguard(ONE, "wgb1", &key1, "10.98.0.1", &pub2, ip2, "10.98.0.2");
    let mut wg2 = start_wireguard(TWO, "wgb2", &key2, "10.98.0.2", &pub1, ip1, "10.98.0.1");
    let target: IpAddr = "10.98.0.2".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run(&[
        "ip",
        "netns",
        "exec",
        ONE,
        "busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "1",
        "10.98.0.2",
    ])
    .status
    .success()
    {
        assert!(Instant::now() < deadline, "no WireGuard handshake");
    }
    let wireguard = (
        round_trip_ms(ONE, target),
        best_transfer(ONE, TWO, target, BYTES),
    );
    for child in [&mut wg1, &mut wg2] {
        let _ = child.kill();
        let _ = child.wait();
    }

    // yggdrasil, the mature key-addressed mesh overlay, as the peer anchor.
    let (mut y1, _) = start_yggdrasil(dir.path(), ONE, ip1, None);
    let (mut y2, y2_addr) = start_yggdrasil(dir.path(), TWO, ip2, Some(ip1));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pings(ONE, y2_addr) {
        assert!(
            Instant::now() < deadline,
            "yggdrasil never connected: {}",
            std::fs::read_to_string(dir.path().join(format!("{TWO}-yggdrasil.log")))
                .unwrap_or_default()
        );
    }
    let target = IpAddr::V6(y2_addr);
    let yggdrasil = (
        round_trip_ms(ONE, target),
        best_transfer(ONE, TWO, target, BYTES),
    );
    for child in [&mut y1, &mut y2] {
        let _ = child.kill();
        let _ = child.wait();
    }

    let rows = [
        ("bare link", bare),
        ("zos-overlay (libp2p TCP, noise, yamux)", overlay),
        ("WireGuard (wireguard-go)", wireguard),
        ("yggdrasil 0.4.7", yggdrasil),
    ];
    let mut table = String::from("path | round trip (ms) | TCP throughput (Mbit/s)\n");
    for (name, (rtt, mbit)) in rows {
        table += &format!("{name} | {rtt:.3} | {mbit:.0}\n");
    }
    table += &format!(
        "overlay/yggdrasil throughput {:.2}, overlay/WireGuard {:.2}; round trip overlay/yggdrasil {:.2}\n",
        overlay.1 / yggdrasil.1,
        overlay.1 / wireguard.1,
        overlay.0 / yggdrasil.0
    );
    eprintln!("{table}");
    if let Some(out) = std::env::var_os("ZOS_OVERLAY_COMPARE_OUT") {
        std::fs::write(out, &table).unwrap();
    }
    for ns in [ONE, TWO] {
        let _ = run(&["ip", "netns", "del", ns]);
    }
    // Every path carried the bytes intact (checked per transfer) and measured something.
    for (name, (rtt, mbit)) in rows {
        assert!(rtt > 0.0 && mbit > 0.0, "{name}: {rtt} ms, {mbit} Mbit/s");
    }
}
