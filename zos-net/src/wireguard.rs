//! WireGuard devices through `wireguard-control`: the kernel module where it exists, else
//! `wireguard-go` in userspace. Either way the device is created in the underlay (so its UDP
//! socket lives there) and then moved into the network's namespace.

use std::{
    fs, io,
    net::SocketAddr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use wireguard_control::{Backend, DeviceUpdate, InterfaceName, Key, PeerConfigBuilder};
use zeroize::Zeroizing;

use crate::netns;

/// How this node runs WireGuard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WgBackend {
    /// The kernel module (production hosts).
    Kernel,
    /// `wireguard-go`, one process per network, configured over its UAPI socket.
    Userspace,
}

impl WgBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            WgBackend::Kernel => "kernel",
            WgBackend::Userspace => "userspace (wireguard-go)",
        }
    }
}

/// Where wireguard-go puts its UAPI sockets (fixed by the protocol's tools).
const UAPI_DIR: &str = "/var/run/wireguard";

/// The peers' keepalive: keeps NAT mappings open so hidden nodes stay reachable.
const KEEPALIVE_SECS: u16 = 25;

/// Probes the kernel module by creating and deleting a device; falls back to wireguard-go.
pub async fn probe(h: &rtnetlink::Handle, probe_name: &str) -> Result<Option<WgBackend>> {
    let created = h
        .link()
        .add(rtnetlink::LinkWireguard::new(probe_name).build())
        .execute()
        .await;
    if created.is_ok() {
        crate::link::delete(h, probe_name).await?;
        return Ok(Some(WgBackend::Kernel));
    }
    let has_go = Command::new(userspace_binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    Ok(has_go.then_some(WgBackend::Userspace))
}

fn userspace_binary() -> String {
    std::env::var("WG_USERSPACE_IMPLEMENTATION").unwrap_or_else(|_| "wireguard-go".into())
}

fn iface(name: &str) -> Result<InterfaceName> {
    name.parse()
        .map_err(|e| anyhow::anyhow!("interface name {name:?}: {e:?}"))
}

fn uapi_socket(name: &str) -> PathBuf {
    Path::new(UAPI_DIR).join(format!("{name}.sock"))
}

fn userspace_running(name: &str) -> bool {
    std::os::unix::net::UnixStream::connect(uapi_socket(name)).is_ok()
}

/// Starts wireguard-go for `name` in the calling thread's namespace unless it runs. It runs in
/// its own session, so it (and the network) survives an executor restart; `pid_file` lets a
/// later executor stop it.
pub fn start_userspace(name: &str, pid_file: &Path, log_file: &Path) -> Result<()> {
    if userspace_running(name) {
        return Ok(());
    }
    fs::create_dir_all(UAPI_DIR).context("creating the WireGuard socket directory")?;
    // A socket nobody answers on was left by a killed process; wireguard-go refuses to start
    // while it exists ("unix socket in use").
    let _ = fs::remove_file(uapi_socket(name));
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_file)
        .with_context(|| format!("opening {}", log_file.display()))?;
    let mut cmd = Command::new(userspace_binary());
    cmd.arg("-f")
        .arg(name)
        .env("WG_PROCESS_FOREGROUND", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting wireguard-go")?;
    fs::write(pid_file, child.id().to_string()).context("writing the wireguard-go pid")?;
    // Reaped when it ends (stopped with its network), so no zombie stays behind.
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !userspace_running(name) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "wireguard-go did not open its socket for {name} within 10 s (see {})",
            log_file.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Stops the wireguard-go of `pid_file` (if it still runs it) and removes its socket.
pub fn stop_userspace(name: &str, pid_file: &Path) -> Result<()> {
    if let Ok(text) = fs::read_to_string(pid_file) {
        if let Ok(pid) = text.trim().parse::<i32>() {
            // Only signal a process that is still wireguard-go for this interface.
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let ours = cmdline.split(|b| *b == 0).any(|arg| arg == name.as_bytes());
            if ours {
                // SAFETY: plain kill of a checked pid.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let _ = fs::remove_file(pid_file);
    }
    let _ = fs::remove_file(uapi_socket(name));
    Ok(())
}

/// One peer as WireGuard needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WgPeer {
    pub public_key: [u8; 32],
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<Ipv4Net>,
}

/// Sets key, port and exactly these peers on device `name`. For the kernel backend, `ns` is
/// the namespace the device is in (configuration goes through that namespace's netlink).
pub fn configure(
    backend: WgBackend,
    ns: Option<&Path>,
    name: &str,
    private_key: &Zeroizing<[u8; 32]>,
    listen_port: u16,
    peers: &[WgPeer],
) -> Result<()> {
    let mut update = DeviceUpdate::new()
        .set_private_key(Key(**private_key))
        .set_listen_port(listen_port)
        .replace_peers();
    for peer in peers {
        let mut p = PeerConfigBuilder::new(&Key(peer.public_key)).replace_allowed_ips();
        if let Some(endpoint) = peer.endpoint {
            p = p
                .set_endpoint(endpoint)
                .set_persistent_keepalive_interval(KEEPALIVE_SECS);
        }
        for net in &peer.allowed_ips {
            p = p.add_allowed_ip(net.network().into(), net.prefix_len());
        }
        update = update.add_peer(p);
    }
    let name = iface(name)?;
    let apply = move || {
        let backend = match backend {
            WgBackend::Kernel => Backend::Kernel,
            WgBackend::Userspace => Backend::Userspace,
        };
        update
            .apply(&name, backend)
            .with_context(|| format!("configuring WireGuard device {name}"))
    };
    match (backend, ns) {
        (WgBackend::Kernel, Some(ns)) => netns::run_in(ns, apply),
        _ => apply(),
    }
}

/// The public key of a private key.
pub fn public_key(private_key: &[u8; 32]) -> [u8; 32] {
    Key(*private_key).get_public().0
}

/// A key as WireGuard's tools write it (base64), e.g. for a wg-quick file.
pub fn key_to_base64(key: &[u8; 32]) -> String {
    Key(*key).to_base64()
}
