//! core-0's DHCP client against a real server (busybox udhcpd) across a veth between two
//! namespaces: a lease is obtained and extended at half its time from the server that gave it,
//! by broadcast after 7/8 of it when that server cannot be reached directly; with the server gone it is lost when it ends, its address dropped, and a new one obtained
//! from the next server. Needs root and busybox.

use std::{
    net::Ipv4Addr,
    os::fd::AsRawFd,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use core_0::{dhcp, netconf};

const SERVER_NS: &str = "c0d-srv";
const CLIENT_NS: &str = "c0d-cli";
const SERVER_NIC: &str = "c0d-s";
const CLIENT_NIC: &str = "c0d-c";
const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// Short, so that the whole life of a lease fits in a test.
const LEASE_SECS: u32 = 6;

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
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Namespaces;

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [SERVER_NS, CLIENT_NS] {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }
}

/// udhcpd in the server namespace handing out `first`..`first + 10`, `LEASE_SECS` each.
struct Server(Child);

impl Server {
    fn start(dir: &Path, first: u8) -> Self {
        let leases = dir.join(format!("leases-{first}"));
        let _ = std::fs::remove_file(&leases);
        let conf = dir.join(format!("udhcpd-{first}.conf"));
        std::fs::write(
            &conf,
            format!(
                "start 192.0.2.{first}\nend 192.0.2.{}\ninterface {SERVER_NIC}\n\
                 lease_file {}\npidfile {}\nmin_lease 1\n\
                 option subnet 255.255.255.0\noption router {SERVER_ADDR}\n\
                 option dns 192.0.2.53\noption lease {LEASE_SECS}\n",
                first + 10,
                leases.display(),
                dir.join(format!("udhcpd-{first}.pid")).display(),
            ),
        )
        .unwrap();
        // -a: the ARP probe for a free address waits 100 ms, not the default 2 s.
        let child = Command::new("ip")
            .args([
                "netns", "exec", SERVER_NS, "busybox", "udhcpd", "-f", "-a", "100",
            ])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("busybox udhcpd");
        Server(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client_addresses() -> String {
    let out = run(&[
        "ip", "-n", CLIENT_NS, "-4", "-br", "addr", "show", "dev", CLIENT_NIC,
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A lease on the client NIC, asked for until a server answers (udhcpd takes a moment to
/// listen after it starts).
fn obtain(mac: [u8; 6], xid: u32) -> dhcp::Lease {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(lease) = dhcp::negotiate(CLIENT_NIC, mac, xid, Duration::from_secs(2)).unwrap()
        {
            netconf::configure(&lease).unwrap();
            return lease;
        }
        assert!(Instant::now() < deadline, "no lease from udhcpd");
    }
}

#[test]
fn a_lease_is_extended_at_half_time_and_lost_when_no_server_keeps_it() {
    // SAFETY: geteuid has no preconditions.
    let busybox = Command::new("busybox").arg("true").status();
    if unsafe { libc::geteuid() } != 0 || !busybox.is_ok_and(|s| s.success()) {
        eprintln!("skipped: needs root and busybox");
        return;
    }
    drop(Namespaces);
    let _namespaces = Namespaces;
    for ns in [SERVER_NS, CLIENT_NS] {
        ok(&["ip", "netns", "add", ns]);
        ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    ok(&[
        "ip", "-n", SERVER_NS, "link", "add", SERVER_NIC, "type", "veth", "peer", "name",
        CLIENT_NIC, "netns", CLIENT_NS,
    ]);
    ok(&[
        "ip",
        "-n",
        SERVER_NS,
        "addr",
        "add",
        "192.0.2.1/24",
        "dev",
        SERVER_NIC,
    ]);
    ok(&["ip", "-n", SERVER_NS, "link", "set", SERVER_NIC, "up"]);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().to_path_buf();

    // The client side runs on a thread of its own that enters the client namespace: its
    // sockets and ioctls act there, the host's stay untouched.
    let client = std::thread::spawn(move || {
        let ns = std::fs::File::open(Path::new("/run/netns").join(CLIENT_NS)).unwrap();
        // SAFETY: setns on a descriptor of a network namespace; it affects this thread only.
        assert_eq!(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            0
        );
        netconf::up(CLIENT_NIC).unwrap();
        let mac = netconf::mac(CLIENT_NIC).unwrap();

        // A lease, then its extension from the same server at half its time.
        let server = Server::start(&dir, 100);
        let lease = obtain(mac, 1);
        assert_eq!(lease.server, SERVER_ADDR);
        assert_eq!(lease.router, Some(SERVER_ADDR));
        assert_eq!(lease.dns, [Ipv4Addr::new(192, 0, 2, 53)]);
        assert_eq!(lease.lease_secs, Some(LEASE_SECS));
        assert!(
            (100..=110).contains(&lease.address.octets()[3]),
            "{lease:?}"
        );
        assert!(client_addresses().contains(&format!("{}/24", lease.address)));
        let mut keeper = dhcp::Keeper::new(lease.clone(), mac, 10).expect("a lease that ends");
        let obtained = Instant::now();
        assert_eq!(
            keeper.next().unwrap(),
            dhcp::Kept::Extended {
                server: SERVER_ADDR,
                secs: LEASE_SECS
            }
        );
        // Each deadline counts from the last extension, taken as soon as it returns.
        let extended = Instant::now();
        let extended_after = obtained.elapsed();
        assert!(
            extended_after
                >= Duration::from_secs(u64::from(LEASE_SECS) / 2) - Duration::from_millis(100),
            "extended after {extended_after:?}, before half the lease"
        );

        // Unicast to the server dropped on its way in: no answer before T2 (7/8), then the
        // broadcast REQUEST (rebinding) reaches it and extends the lease.
        for rule in [
            "add table ip c0d",
            "add chain ip c0d input { type filter hook input priority 0 ; }",
            "add rule ip c0d input ip daddr 192.0.2.1 udp dport 67 drop",
        ] {
            ok(&["ip", "netns", "exec", SERVER_NS, "nft", rule]);
        }
        let rebound = keeper.next().unwrap();
        let rebound_after = extended.elapsed();
        let extended = Instant::now();
        assert!(
            matches!(rebound, dhcp::Kept::Extended { .. }),
            "{rebound:?}"
        );
        assert!(
            rebound_after >= Duration::from_millis(u64::from(LEASE_SECS) * 1000 * 7 / 8 - 100),
            "extended after {rebound_after:?}: before T2, so not by the broadcast"
        );

        // The server gone: no extension from it (unicast) nor from anyone (broadcast); lost at
        // the lease's end, not before.
        drop(server);
        let dhcp::Kept::Lost(why) = keeper.next().unwrap() else {
            panic!("a lease no server keeps was extended");
        };
        let lost_after = extended.elapsed();
        assert!(why.contains("expired"), "{why}");
        assert!(
            lost_after >= Duration::from_secs(u64::from(LEASE_SECS)) - Duration::from_millis(200),
            "lost after {lost_after:?}, before the lease ended"
        );
        netconf::clear(CLIENT_NIC).unwrap();
        assert!(
            !client_addresses().contains(&lease.address.to_string()),
            "{}",
            client_addresses()
        );

        // A new server with another range: a new lease, which it extends too.
        let _server = Server::start(&dir, 120);
        let second = obtain(mac, 20);
        assert!(
            (120..=130).contains(&second.address.octets()[3]),
            "{second:?}"
        );
        let mut keeper = dhcp::Keeper::new(second, mac, 30).unwrap();
        assert!(matches!(
            keeper.next().unwrap(),
            dhcp::Kept::Extended { .. }
        ));
        eprintln!(
            "lease of {LEASE_SECS} s: extended after {:.1} s; by broadcast after {:.1} s; lost {:.1} s after its server went",
            extended_after.as_secs_f64(),
            rebound_after.as_secs_f64(),
            lost_after.as_secs_f64(),
        );
    });
    client.join().expect("client side");
}
