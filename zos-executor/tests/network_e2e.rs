//! Private networks with the real executor binary, a real chain node and a real guest: a
//! contract with a `Network` (its WireGuard key sealed to the node) and a VM on it; a "laptop"
//! namespace joined to the host by a veth with documentation addresses runs WireGuard with the
//! network's laptop peer and reaches the VM (ping, HTTP). The guest itself shows that it
//! reaches its gateway but not the node. A wrong sealed key and a taken listen port fail their
//! own contracts with the reason on chain and disturb nothing; cancelling removes every link,
//! namespace and WireGuard process of the network.
//!
//! Needs root, QEMU, /dev/fuse, busybox-static, nftables and WireGuard (kernel or wireguard-go).

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use common::{
    busybox_rootfs, cancel, create_approved_contract, funded_identity, registered_node,
    setup_farm, state_of, which, Executor, ExecutorOptions, Polling, StopOnDrop,
};
use node_harness::{ChainNode, NodeOptions};
use zos_executor::identity::NodeIdentity;
use zos_image::store::DirStore;
use zos_primitives::{contracts::ContractState, spec::DeploymentSpec};

const POLLING: Polling = Polling::every(Duration::from_millis(250));
const PREFIX: &str = "ne";
const LAPTOP: &str = "zne-laptop";
const PORT: u16 = 51891;
/// The laptop's userspace WireGuard control socket.
const LAPTOP_SOCKET: &str = "/var/run/wireguard/zlw0.sock";
const PAGE: &str = "served from a VM on a private network\n";

const EXECUTOR: ExecutorOptions = ExecutorOptions {
    log_filter: "info,zos_executor=debug,zos_net=debug,zos_vm=info",
    env: &[("ZOS_VM_ACCEL", "tcg"), ("ZOS_NET_PREFIX", PREFIX)],
    stop_on_drop: StopOnDrop::Terminate,
    log_tail_lines: 80,
};

fn run(cmd: &[&str]) -> std::process::Output {
    Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn ok(cmd: &[&str]) -> Result<()> {
    let out = run(cmd);
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn in_laptop(cmd: &[&str]) -> std::process::Output {
    let mut full = vec!["ip", "netns", "exec", LAPTOP];
    full.extend_from_slice(cmd);
    run(&full)
}

/// The deployer's laptop: a namespace behind a veth (203.0.113.2 <-> the host's 203.0.113.1)
/// running WireGuard as a wg-quick file would set it up.
struct Laptop {
    wireguard: Option<Child>,
    dir: tempfile::TempDir,
}

impl Laptop {
    fn clean() {
        let _ = run(&["ip", "netns", "del", LAPTOP]);
        let _ = run(&["ip", "link", "del", "zne-h"]);
        let _ = std::fs::remove_file(LAPTOP_SOCKET);
    }

    fn start(key: &[u8; 32], node_public: &[u8; 32]) -> Result<Self> {
        Self::clean();
        ok(&["ip", "netns", "add", LAPTOP])?;
        ok(&["ip", "link", "add", "zne-h", "type", "veth", "peer", "name", "eth0", "netns", LAPTOP])?;
        ok(&["ip", "addr", "add", "203.0.113.1/30", "dev", "zne-h"])?;
        ok(&["ip", "link", "set", "zne-h", "up"])?;
        for cmd in [
            &["ip", "addr", "add", "203.0.113.2/30", "dev", "eth0"][..],
            &["ip", "link", "set", "eth0", "up"],
            &["ip", "link", "set", "lo", "up"],
        ] {
            let mut full = vec!["ip", "-n", LAPTOP];
            full.extend_from_slice(&cmd[1..]);
            ok(&full)?;
        }
        let dir = tempfile::tempdir()?;
        let wireguard = if Path::new("/sys/module/wireguard").exists() {
            ok(&["ip", "-n", LAPTOP, "link", "add", "zlw0", "type", "wireguard"])?;
            None
        } else {
            let child = Command::new("ip")
                .args(["netns", "exec", LAPTOP, "wireguard-go", "-f", "zlw0"])
                .env("WG_PROCESS_FOREGROUND", "1")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::os::unix::net::UnixStream::connect(LAPTOP_SOCKET).is_err() {
                ensure!(Instant::now() < deadline, "laptop wireguard-go did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
            Some(child)
        };
        let key_file = dir.path().join("laptop.key");
        std::fs::write(&key_file, zos_net::wireguard::key_to_base64(key))?;
        let endpoint = format!("203.0.113.1:{PORT}");
        let peer = zos_net::wireguard::key_to_base64(node_public);
        ok(&[
            "ip", "netns", "exec", LAPTOP, "wg", "set", "zlw0", "private-key",
            key_file.to_str().context("path")?, "peer", &peer, "endpoint", &endpoint,
            "allowed-ips", "10.91.0.0/16", "persistent-keepalive", "5",
        ])?;
        ok(&["ip", "-n", LAPTOP, "addr", "add", "100.64.91.2/32", "dev", "zlw0"])?;
        ok(&["ip", "-n", LAPTOP, "link", "set", "zlw0", "up"])?;
        ok(&["ip", "-n", LAPTOP, "route", "add", "10.91.0.0/16", "dev", "zlw0"])?;
        Ok(Self { wireguard, dir })
    }

    fn pings(&self, target: &str) -> bool {
        in_laptop(&["busybox", "ping", "-c", "1", "-W", "1", target])
            .status
            .success()
    }
}

impl Drop for Laptop {
    fn drop(&mut self) {
        if let Some(mut child) = self.wireguard.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Self::clean();
        let _ = &self.dir;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn network_json(subnet: &str, port: u16, sealed_key: &[u8], laptop_public: &[u8; 32]) -> serde_json::Value {
    serde_json::json!({ "name": "net", "kind": { "network": {
        "ip_range": "10.91.0.0/16",
        "subnet": subnet,
        "listen_port": port,
        "private_key": hex(sealed_key),
        "peers": [ {
            "public_key": format!("0x{}", hex(laptop_public)),
            "allowed_ips": ["100.64.91.2/32"],
        } ],
    } } })
}

fn spec_of(workloads: Vec<serde_json::Value>) -> Result<DeploymentSpec> {
    let spec: DeploymentSpec =
        serde_json::from_value(serde_json::json!({ "version": 0, "workloads": workloads }))?;
    spec.validate()
        .map_err(|e| anyhow::anyhow!("test spec invalid: {e:?}"))?;
    Ok(spec)
}

async fn failure_reason(api: &node_harness::client::Client, node: u32, contract: u64) -> Result<String> {
    POLLING
        .until("the contract Failed", Duration::from_secs(120), || async {
            Ok(match state_of(api, node, contract).await? {
                Some(ContractState::Failed(f)) => Some(String::from_utf8_lossy(&f.reason).into_owned()),
                Some(ContractState::Deployed) => Some("unexpectedly Deployed".into()),
                _ => None,
            })
        })
        .await
}

/// This node's links and namespaces (by prefix).
fn leftovers() -> Vec<String> {
    let mut found = vec![];
    let links = run(&["ip", "-o", "link"]);
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        if let Some(name) = line.split(": ").nth(1) {
            if name.starts_with(PREFIX) {
                found.push(name.to_string());
            }
        }
    }
    let spaces = run(&["ip", "netns", "list"]);
    for line in String::from_utf8_lossy(&spaces.stdout).lines() {
        if line.starts_with(&format!("{PREFIX}-net-")) {
            found.push(line.to_string());
        }
    }
    let procs = run(&["pgrep", "-af", &format!("wireguard-go -f {PREFIX}w")]);
    found.extend(String::from_utf8_lossy(&procs.stdout).lines().map(String::from));
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_laptop_reaches_a_vm_on_its_private_network_and_the_vm_reaches_nothing_else() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "needs root (namespaces, taps, nftables)");
    for tool in ["qemu-system-x86_64", "busybox", "nft", "wg"] {
        ensure!(which(tool).is_some(), "{tool} is needed");
    }
    let tmp = tempfile::tempdir()?;
    let rootfs = tmp.path().join("image-tree");
    busybox_rootfs(&rootfs, &["httpd", "ping"], &[("www/index.html", PAGE)])?;
    let store = Arc::new(DirStore::open(tmp.path().join("hub-store"))?);
    let packed = zos_image::pack::pack_dir(&rootfs, store, None, &Default::default())?;
    let hub = zos_image::hub::spawn_background(
        "127.0.0.1:0".parse()?,
        DirStore::open(tmp.path().join("hub-store"))?,
        "unused".into(),
    )?;

    let chain = ChainNode::start(NodeOptions::default())?;
    let grid = setup_farm(&chain, b"network-e2e-farm").await?;
    let data_dir = tmp.path().join("executor");
    std::fs::create_dir_all(&data_dir)?;
    let account = funded_identity(&grid.api, &data_dir).await?;
    let box_public = NodeIdentity::load_or_create(&data_dir.join("identity.json"))?.box_public;
    let mut executor = Executor::spawn(&data_dir, &chain.ws_url(), grid.farm, EXECUTOR)?;
    let node = registered_node(&grid.api, &account, POLLING).await?;

    let (node_key, _) = zos_primitives::sealing::generate_box_keypair();
    let node_public = zos_net::wireguard::public_key(&node_key);
    let (laptop_key, _) = zos_primitives::sealing::generate_box_keypair();
    let laptop_public = zos_net::wireguard::public_key(&laptop_key);
    let sealed = zos_primitives::sealing::seal_wireguard_key(&box_public, &node_key)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let laptop = Laptop::start(&laptop_key, &node_public)?;

    // The guest serves a page and says, every 2 s, what it can reach.
    let entrypoint = "/bin/sh -c 'httpd -p 80 -h /www; while true; do \
        ping -c1 -W1 10.91.1.1 >/dev/null && echo GW-OK; \
        if ping -c1 -W1 203.0.113.1 >/dev/null; then echo NODE-REACHABLE; else echo NODE-UNREACHABLE; fi; \
        sleep 2; done'";
    let spec = spec_of(vec![
        network_json("10.91.1.0/24", PORT, &sealed.0, &laptop_public),
        serde_json::json!({ "name": "web", "kind": { "vm": {
            "image": { "root_hash": packed.root.to_hex(), "source": format!("http://{hub}") },
            "vcpus": 1,
            "memory_mib": 256,
            "rootfs_mib": 256,
            "networks": [ { "network": "net", "ip": "10.91.1.2" } ],
            "entrypoint": entrypoint,
        } } }),
    ])?;
    let contract = create_approved_contract(&grid.api, node, &spec).await?;
    let activated = Instant::now();
    POLLING
        .until("the contract Deployed", Duration::from_secs(300), || async {
            match state_of(&grid.api, node, contract).await? {
                Some(ContractState::Deployed) => Ok(Some(())),
                Some(ContractState::Failed(f)) => bail!(
                    "contract failed: {}\n{}",
                    String::from_utf8_lossy(&f.reason),
                    executor.log_tail()
                ),
                _ => Ok(None),
            }
        })
        .await?;
    let deployed = activated.elapsed();
    let deadline = Instant::now() + Duration::from_secs(240);
    while !laptop.pings("10.91.1.2") {
        ensure!(
            Instant::now() < deadline,
            "the laptop never reached the VM\n{}",
            executor.log_tail()
        );
    }
    let first_ping = activated.elapsed();
    eprintln!("activation -> Deployed {deployed:?}; -> first ping from the laptop {first_ping:?}");
    let page = in_laptop(&["busybox", "wget", "-q", "-O", "-", "http://10.91.1.2/index.html"]);
    ensure!(
        String::from_utf8_lossy(&page.stdout) == PAGE,
        "the page over WireGuard: {:?} {}",
        String::from_utf8_lossy(&page.stdout),
        String::from_utf8_lossy(&page.stderr)
    );

    let console = data_dir
        .join("contracts")
        .join(contract.to_string())
        .join("vms/web/console.log");
    POLLING
        .until("the guest's reachability report", Duration::from_secs(60), || async {
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            Ok((text.contains("GW-OK") && text.contains("NODE-UNREACHABLE")).then_some(()))
        })
        .await?;
    let text = std::fs::read_to_string(&console)?;
    ensure!(!text.contains("NODE-REACHABLE"), "the VM reached its node:\n{text}");

    // A key sealed to another node, and a listen port already taken: those contracts fail
    // with the reason; the first keeps working.
    let (_, stranger_box) = zos_primitives::sealing::generate_box_keypair();
    let wrong = zos_primitives::sealing::seal_wireguard_key(&stranger_box, &node_key)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let wrong_key = create_approved_contract(
        &grid.api,
        node,
        &spec_of(vec![network_json("10.91.2.0/24", PORT + 1, &wrong.0, &laptop_public)])?,
    )
    .await?;
    let reason = failure_reason(&grid.api, node, wrong_key).await?;
    eprintln!("wrong sealed key: {reason}");
    ensure!(reason.contains("private key"), "unexpected reason: {reason}");
    let taken = create_approved_contract(
        &grid.api,
        node,
        &spec_of(vec![network_json("10.91.3.0/24", PORT, &sealed.0, &laptop_public)])?,
    )
    .await?;
    let reason = failure_reason(&grid.api, node, taken).await?;
    eprintln!("taken port: {reason}");
    ensure!(
        reason.contains(&format!("listen port {PORT} is taken")),
        "unexpected reason: {reason}"
    );
    ensure!(laptop.pings("10.91.1.2"), "the first network broke");

    // Cancelling removes the VM's tap, the network's links, namespace and WireGuard.
    cancel(&grid.api, contract, POLLING).await?;
    POLLING
        .until("no link, namespace or process of the node left", Duration::from_secs(120), || async {
            Ok(leftovers().is_empty().then_some(()))
        })
        .await
        .with_context(|| format!("left: {:?}\n{}", leftovers(), executor.log_tail()))?;
    ensure!(!laptop.pings("10.91.1.2"), "the VM is still reachable after cancel");
    drop(laptop);
    executor.terminate()?;
    let _ = run(&["nft", "delete", "table", "inet", &format!("zos_{PREFIX}")]);
    let _ = run(&["nft", "delete", "table", "arp", &format!("zos_{PREFIX}")]);
    Ok(())
}
