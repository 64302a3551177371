//! Private networks across three nodes on one host, with the real executor binaries, a real
//! chain node, real guests and the `zos` CLI:
//!
//! ```text
//!            WAN bridge (namespace zmn-wan), documentation addresses 198.51.100.0/24
//!     ┌──────────────┬───────────────┬─────────────────────┬──────────────────┐
//!  node A .1      node B .2       NAT .3 ── 192.168.77.0/24 ── node C     laptop .9
//!  (access)        VM B          (masquerade)                (hidden)   (wg-quick)
//!   VM A                                                  namespace stand-in
//! ```
//!
//! Each executor keeps its networks in its own underlay namespace (`--underlay-netns`) under
//! its own name prefix. `zos deploy-multi` plans the network (keys sealed to each node, ports,
//! mesh between A and B, C and the laptop through A), creates the three contracts in one batch
//! and writes the laptop's wg-quick file; `zos approve` approves the three at once;
//! every pair of VM, stand-in and laptop pings and fetches a page across WireGuard. Guests
//! reach their gateway but not their node. Node B is killed mid-install by a fault point and
//! converges after a restart. A wrong sealed key and a taken listen port fail their own
//! contracts with the reason on chain; cancelling leaves no link, namespace or process.
//! The network has outbound internet: guests fetch a page of a web site on the WAN, through
//! their node (and C's NAT), yet never reach their node or the farmer's LAN.
//!
//! Needs root, QEMU, /dev/fuse, busybox-static, nftables, wireguard-tools and WireGuard
//! (kernel module or wireguard-go); the `zos` binary built into the shared target directory.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use common::{
    busybox_rootfs, cancel, contract_of, create_approved_contract, funded_identity,
    install_host_program, ok, registered_node, run, setup_farm, state_of, which, workspace_binary,
    Executor, ExecutorOptions, Polling, StopOnDrop,
};
use node_harness::{client::Client, ChainNode, NodeOptions};
use zos_executor::{drivers::network::NetNaming, identity::NodeIdentity};
use zos_image::store::DirStore;
use zos_primitives::{
    contracts::ContractState,
    spec::{DeploymentSpec, WorkloadKind},
    ContractId, NodeId,
};

const POLLING: Polling = Polling::every(Duration::from_millis(250));
const NAMESPACES: [&str; 8] = [
    "zmn-wan",
    "zmn-web",
    "zmn-a",
    "zmn-b",
    "zmn-c",
    "zmn-nat",
    "zmn-laptop",
    "zmn-cvm",
];
/// The laptop's WireGuard interface: wg-quick names it after the file.
const LAPTOP_IF: &str = "zmnlap";
const PAGE: &str = "page-of-the-private-network\n";
/// Served by a web site on the WAN (198.51.100.80), "the internet" of this test.
const WORLD_PAGE: &str = "page-of-the-internet\n";

const EXECUTOR: ExecutorOptions = ExecutorOptions {
    log_filter: "info,zos_executor=debug,zos_net=debug,zos_vm=info",
    env: &[("ZOS_VM_ACCEL", "tcg")],
    stop_on_drop: StopOnDrop::Terminate,
    log_tail_lines: 60,
};

fn in_ns(ns: &str, cmd: &[&str]) -> std::process::Output {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(cmd);
    run(&full)
}

fn pings(ns: &str, target: &str) -> bool {
    in_ns(ns, &["busybox", "ping", "-c", "1", "-W", "1", target])
        .status
        .success()
}

/// The body at `url` fetched from namespace `ns` (a few tries), or what went wrong.
fn fetch(ns: &str, url: &str) -> Result<String, String> {
    let mut last = String::new();
    for _ in 0..5 {
        // (busybox 1.35's `wget -T` crashes: the time limit comes from `timeout`.)
        let out = in_ns(
            ns,
            &["timeout", "5", "busybox", "wget", "-q", "-O", "-", url],
        );
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_secs(1));
    }
    Err(last)
}

/// The host's part of the test: namespaces for the WAN, three node underlays, a NAT in front
/// of node C, the laptop and C's VM stand-in. Deleted on drop (with whatever runs in them).
struct Topology;

impl Topology {
    fn clean() {
        for ns in NAMESPACES {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        // The nodes' own namespaces and WireGuard processes of an aborted earlier run.
        let spaces = run(&["ip", "netns", "list"]);
        for line in String::from_utf8_lossy(&spaces.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if ["ma-net-", "mb-net-", "mc-net-"]
                .iter()
                .any(|p| name.starts_with(p))
            {
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
        let _ = run(&["pkill", "-f", "wireguard-go -f m[abc]w"]);
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{LAPTOP_IF}.sock"));
    }

    fn build() -> Result<Self> {
        Self::clean();
        for ns in NAMESPACES {
            ok(&["ip", "netns", "add", ns])?;
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        ok(&[
            "ip", "-n", "zmn-wan", "link", "add", "wan0", "type", "bridge",
        ])?;
        ok(&["ip", "-n", "zmn-wan", "link", "set", "wan0", "up"])?;
        for (i, (ns, ifname, addr)) in [
            ("zmn-a", "eth0", "198.51.100.1/24"),
            ("zmn-b", "eth0", "198.51.100.2/24"),
            ("zmn-nat", "wan", "198.51.100.3/24"),
            ("zmn-laptop", "eth0", "198.51.100.9/24"),
            ("zmn-web", "eth0", "198.51.100.80/24"),
        ]
        .into_iter()
        .enumerate()
        {
            let port = format!("p{i}");
            ok(&[
                "ip", "link", "add", &port, "netns", "zmn-wan", "type", "veth", "peer", "name",
                ifname, "netns", ns,
            ])?;
            ok(&[
                "ip", "-n", "zmn-wan", "link", "set", &port, "master", "wan0", "up",
            ])?;
            ok(&["ip", "-n", ns, "addr", "add", addr, "dev", ifname])?;
            ok(&["ip", "-n", ns, "link", "set", ifname, "up"])?;
        }
        // Node C sits behind a masquerading NAT: it can dial out, nobody can dial it.
        ok(&[
            "ip", "link", "add", "lan", "netns", "zmn-nat", "type", "veth", "peer", "name", "eth0",
            "netns", "zmn-c",
        ])?;
        ok(&[
            "ip",
            "-n",
            "zmn-nat",
            "addr",
            "add",
            "192.168.77.1/24",
            "dev",
            "lan",
        ])?;
        ok(&["ip", "-n", "zmn-nat", "link", "set", "lan", "up"])?;
        ok(&[
            "ip",
            "-n",
            "zmn-c",
            "addr",
            "add",
            "192.168.77.2/24",
            "dev",
            "eth0",
        ])?;
        ok(&["ip", "-n", "zmn-c", "link", "set", "eth0", "up"])?;
        ok(&[
            "ip",
            "-n",
            "zmn-c",
            "route",
            "add",
            "default",
            "via",
            "192.168.77.1",
        ])?;
        ok(&[
            "ip",
            "netns",
            "exec",
            "zmn-nat",
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
        ])?;
        ok(&[
            "ip", "netns", "exec", "zmn-nat", "nft", "add", "table", "ip", "nat",
        ])?;
        ok(&[
            "ip",
            "netns",
            "exec",
            "zmn-nat",
            "nft",
            "add",
            "chain",
            "ip",
            "nat",
            "post",
            "{ type nat hook postrouting priority 100; }",
        ])?;
        ok(&[
            "ip",
            "netns",
            "exec",
            "zmn-nat",
            "nft",
            "add",
            "rule",
            "ip",
            "nat",
            "post",
            "oifname",
            "wan",
            "masquerade",
        ])?;
        Ok(Self)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        Self::clean();
    }
}

/// A helper process of the test, killed with it.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A grid node: its executor in its own underlay namespace with its own name prefix.
struct Node {
    /// Set by [`Node::registered`].
    id: NodeId,
    account: subxt::utils::AccountId32,
    executor: Executor,
    data_dir: PathBuf,
    underlay: &'static str,
    prefix: &'static str,
}

async fn start_node(
    api: &Client,
    url: &str,
    farm: u32,
    dir: &Path,
    underlay: &'static str,
    prefix: &'static str,
    extra_env: &[(&str, &str)],
) -> Result<Node> {
    let data_dir = dir.join(prefix);
    std::fs::create_dir_all(&data_dir)?;
    let account = funded_identity(api, farm, &data_dir).await?;
    let mut env = vec![
        (
            "ZOS_UNDERLAY_NETNS".to_string(),
            format!("/run/netns/{underlay}"),
        ),
        ("ZOS_NET_PREFIX".to_string(), prefix.to_string()),
    ];
    env.extend(
        extra_env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let executor = Executor::spawn_with_env(&data_dir, url, farm, EXECUTOR, env)?;
    Ok(Node {
        id: 0,
        account,
        executor,
        data_dir,
        underlay,
        prefix,
    })
}

impl Node {
    /// Waits until the executor registered its node on chain.
    async fn registered(mut self, api: &Client) -> Result<Self> {
        self.id = registered_node(api, &self.account, POLLING).await?;
        Ok(self)
    }

    fn console(&self, contract: ContractId) -> String {
        let path = self
            .data_dir
            .join("contracts")
            .join(contract.to_string())
            .join("vms/web/console.log");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// This node's links, namespaces and WireGuard processes still present.
    fn leftovers(&self) -> Vec<String> {
        let mut found = vec![];
        let links = in_ns(self.underlay, &["ip", "-o", "link"]);
        for line in String::from_utf8_lossy(&links.stdout).lines() {
            if let Some(name) = line.split(": ").nth(1) {
                if name.starts_with(self.prefix) {
                    found.push(name.to_string());
                }
            }
        }
        let spaces = run(&["ip", "netns", "list"]);
        for line in String::from_utf8_lossy(&spaces.stdout).lines() {
            if line.starts_with(&format!("{}-net-", self.prefix)) {
                found.push(line.to_string());
            }
        }
        let procs = run(&["pgrep", "-af", &format!("wireguard-go -f {}w", self.prefix)]);
        found.extend(
            String::from_utf8_lossy(&procs.stdout)
                .lines()
                .map(String::from),
        );
        found
    }
}

async fn until_deployed(api: &Client, node: &Node, contract: ContractId, secs: u64) -> Result<()> {
    POLLING
        .until(
            "the contract Deployed",
            Duration::from_secs(secs),
            || async {
                match state_of(api, node.id, contract).await? {
                    Some(ContractState::Deployed) => Ok(Some(())),
                    Some(ContractState::Failed(f)) => bail!(
                        "contract {contract} failed on node {}: {}\n{}",
                        node.id,
                        String::from_utf8_lossy(&f.reason),
                        node.executor.log_tail()
                    ),
                    _ => Ok(None),
                }
            },
        )
        .await
        .with_context(|| node.executor.log_tail())
}

async fn failure_reason(api: &Client, node: NodeId, contract: ContractId) -> Result<String> {
    POLLING
        .until("the contract Failed", Duration::from_secs(120), || async {
            Ok(match state_of(api, node, contract).await? {
                Some(ContractState::Failed(f)) => {
                    Some(String::from_utf8_lossy(&f.reason).into_owned())
                }
                Some(ContractState::Deployed) => Some("unexpectedly Deployed".into()),
                _ => None,
            })
        })
        .await
}

/// The process id of the hypervisor of VM `vm` of `contract` (its control socket is in the
/// VM's directory).
fn hypervisor_pid(node: &Node, contract: ContractId, vm: &str) -> Option<String> {
    // The node's own VM directory: another test's node on this host may run a contract 1 with
    // a VM of the same name.
    let dir =
        std::path::absolute(node.data_dir.join(format!("contracts/{contract}/vms/{vm}"))).ok()?;
    let out = run(&["pgrep", "-f", &format!("{}/control.sock", dir.display())]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(String::from)
}

/// Runs the `zos` CLI with `--json` and returns its output.
fn zos_cli(zos: &Path, url: &str, key: &str, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(zos)
        .args(["--url", url, "--key", key, "--json"])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "zos {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "zos {args:?} output: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A contract holding one network workload: range 10.92.0.0/16, `subnet`, `port`, the key
/// sealed as given, no peers.
fn network_spec(subnet: &str, port: u16, sealed_key: &[u8]) -> Result<DeploymentSpec> {
    let hex: String = sealed_key.iter().map(|b| format!("{b:02x}")).collect();
    let spec: DeploymentSpec = serde_json::from_value(serde_json::json!({
        "version": 0,
        "workloads": [ { "name": "net", "kind": { "network": {
            "ip_range": "10.92.0.0/16", "subnet": subnet, "listen_port": port, "private_key": hex,
        } } } ],
    }))?;
    spec.validate()
        .map_err(|e| anyhow::anyhow!("test spec invalid: {e:?}"))?;
    Ok(spec)
}

/// What each guest runs: serves a page, then every 2 s pings its peers, fetches a page and
/// tries its node, printing what worked (read from the console by the test).
const PROBE: &str = r#"#!/bin/sh
httpd -p 80 -h /www
while true; do
  for p in $PEERS; do ping -c1 -W1 "$p" >/dev/null && echo "REACH-$p"; done
  [ -n "$FETCH" ] && timeout 3 wget -q -O /tmp/f "http://$FETCH/index.html" && echo "GOT-$(cat /tmp/f)"
  [ -n "$WORLD" ] && timeout 3 wget -q -O /tmp/w "http://$WORLD/index.html" && echo "WORLD-$(cat /tmp/w)"
  if ping -c1 -W1 "$NODE" >/dev/null; then echo NODE-REACHABLE; else echo NODE-UNREACHABLE; fi
  sleep 2
done
"#;

#[tokio::test(flavor = "multi_thread")]
async fn three_nodes_a_hidden_one_and_a_laptop_share_a_private_network() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "needs root (namespaces, taps, nftables)"
    );
    for tool in ["qemu-system-x86_64", "busybox", "nft", "wg", "wg-quick"] {
        ensure!(which(tool).is_some(), "{tool} is needed");
    }
    let zos = workspace_binary("zos")?;
    let tmp = tempfile::tempdir()?;
    let rootfs = tmp.path().join("image-tree");
    busybox_rootfs(
        &rootfs,
        &["httpd", "ping", "wget", "timeout"],
        &[
            ("www/index.html", PAGE),
            ("bin/probe", PROBE),
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
        ],
    )?;
    // The image brings its SSH server (Debian's dropbear); the deployer's key is in VM A's spec.
    install_host_program(&rootfs, Path::new("/usr/sbin/dropbear"))?;
    let ssh_key = tmp.path().join("id_ed25519");
    let stranger_key = tmp.path().join("stranger_ed25519");
    for key in [&ssh_key, &stranger_key] {
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "deployer", "-f"])
            .arg(key)
            .status()?;
        ensure!(made.success(), "ssh-keygen failed");
    }
    let ssh_public = std::fs::read_to_string(ssh_key.with_extension("pub"))?;
    let store = Arc::new(DirStore::open(tmp.path().join("hub-store"))?);
    let packed = zos_image::pack::pack_dir(&rootfs, store, None, &Default::default())?;
    let hub = zos_image::hub::spawn_background(
        "127.0.0.1:0".parse()?,
        DirStore::open(tmp.path().join("hub-store"))?,
        "unused".into(),
    )?;
    let root = packed.root.to_hex();
    let source = format!("http://{hub}");

    let _topology = Topology::build()?;
    let world = tmp.path().join("world");
    std::fs::create_dir_all(&world)?;
    std::fs::write(world.join("index.html"), WORLD_PAGE)?;
    let _web_site = KillOnDrop(
        Command::new("nsenter")
            .args([
                "--net=/run/netns/zmn-web",
                "busybox",
                "httpd",
                "-f",
                "-p",
                "80",
                "-h",
            ])
            .arg(&world)
            .stdin(Stdio::null())
            .spawn()?,
    );
    let chain = ChainNode::start(NodeOptions::default())?;
    let url = chain.ws_url();
    let grid = setup_farm(&chain, b"network-e2e-farm").await?;
    let api = &grid.api;
    // The nodes are funded one after the other (one signer, one nonce sequence) and register
    // concurrently; B aborts in the middle of its first install, to be restarted.
    let a = start_node(api, &url, grid.farm, tmp.path(), "zmn-a", "ma", &[]).await?;
    let b = start_node(
        api,
        &url,
        grid.farm,
        tmp.path(),
        "zmn-b",
        "mb",
        &[("ZOS_FAILPOINT", "install-midway")],
    )
    .await?;
    let c = start_node(api, &url, grid.farm, tmp.path(), "zmn-c", "mc", &[]).await?;
    let (a, mut b, c) = (
        a.registered(api).await?,
        b.registered(api).await?,
        c.registered(api).await?,
    );

    // ---- the deployer describes VMs on A and B and the network over all three (C gets a
    // network-only contract), creates every contract in one batch and //Bob approves them all
    let vm = |ip: &str, peers: &str, fetch: &str, node: &str, ssh_keys: &str| {
        format!(
            "[[deployments.workloads]]\nname = \"web\"\n\
             [deployments.workloads.kind.vm]\nvcpus = 1\nmemory_mib = 256\nrootfs_mib = 256\n\
             entrypoint = \"/bin/sh /bin/probe\"\nssh_keys = [{ssh_keys}]\n\
             networks = [{{ network = \"net\", ip = \"{ip}\" }}]\n\
             env = [{{ key = \"PEERS\", value = \"{peers}\" }}, {{ key = \"FETCH\", value = \"{fetch}\" }}, \
             {{ key = \"NODE\", value = \"{node}\" }}, {{ key = \"WORLD\", value = \"198.51.100.80\" }}]\n\
             [deployments.workloads.kind.vm.image]\nroot_hash = \"{root}\"\nsource = \"{source}\"\n"
        )
    };
    let file = tmp.path().join("grid.toml");
    std::fs::write(
        &file,
        format!(
            "[network]\nname = \"net\"\nip_range = \"10.92.0.0/16\"\nlaptop = true\n\
             outbound_internet = true\n\
             [[network.nodes]]\nnode = {a}\nendpoint = \"198.51.100.1\"\n\
             [[network.nodes]]\nnode = {b}\nendpoint = \"198.51.100.2\"\n\
             [[network.nodes]]\nnode = {c}\n\
             [[deployments]]\nnode = {a}\n{vm_a}\
             [[deployments]]\nnode = {b}\n{vm_b}",
            a = a.id,
            b = b.id,
            c = c.id,
            vm_a = vm(
                "10.92.2.2",
                "10.92.3.2 10.92.4.2",
                "10.92.3.2",
                "198.51.100.1",
                &format!("{:?}", ssh_public.trim()),
            ),
            vm_b = vm("10.92.3.2", "10.92.2.2 10.92.4.2", "", "198.51.100.2", ""),
        ),
    )?;
    let out = tmp.path().join("plan");
    let deployed = zos_cli(
        &zos,
        &url,
        "//Alice",
        &[
            "deploy-multi",
            file.to_str().context("path")?,
            "--signer",
            "//Alice:1:required",
            "--signer",
            "//Bob:1:required",
            "--threshold",
            "2",
            "--out",
            out.to_str().context("path")?,
        ],
    )?;
    let contract_on = |node: NodeId| -> Result<ContractId> {
        deployed["contracts"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["node"] == node))
            .and_then(|r| r["contract"].as_u64())
            .with_context(|| format!("no contract for node {node} in {deployed}"))
    };
    let (contract_a, contract_b, contract_c) =
        (contract_on(a.id)?, contract_on(b.id)?, contract_on(c.id)?);
    let ids: Vec<String> = [contract_a, contract_b, contract_c]
        .iter()
        .map(|c| c.to_string())
        .collect();
    let mut approve = vec!["approve"];
    approve.extend(ids.iter().map(String::as_str));
    zos_cli(&zos, &url, "//Bob", &approve)?;
    let activated = Instant::now();

    // B dies half-way (its network made, its VM not), then converges after a restart.
    POLLING
        .until(
            "node B's executor aborting mid-install",
            Duration::from_secs(120),
            || {
                let running = b.executor.is_running();
                async move { Ok((!running).then_some(())) }
            },
        )
        .await?;
    b.executor.env.retain(|(k, _)| k != "ZOS_FAILPOINT");
    b.executor.start()?;

    until_deployed(api, &a, contract_a, 300).await?;
    until_deployed(api, &b, contract_b, 300).await?;
    until_deployed(api, &c, contract_c, 120).await?;
    eprintln!(
        "activation of A -> all three Deployed: {:?}",
        activated.elapsed()
    );

    // C's "VM": a namespace on C's network bridge.
    let c_secret = *NodeIdentity::load_or_create(&c.data_dir.join("identity.json"))?.box_secret();
    let bridge_c = format!(
        "mcb{}",
        NetNaming::new(&c_secret).network_id(contract_c, b"net")
    );
    ok(&[
        "ip", "link", "add", "cv0", "netns", "zmn-c", "type", "veth", "peer", "name", "eth0",
        "netns", "zmn-cvm",
    ])?;
    ok(&[
        "ip", "-n", "zmn-c", "link", "set", "cv0", "master", &bridge_c, "up",
    ])?;
    ok(&[
        "ip",
        "-n",
        "zmn-cvm",
        "addr",
        "add",
        "10.92.4.2/24",
        "dev",
        "eth0",
    ])?;
    ok(&["ip", "-n", "zmn-cvm", "link", "set", "eth0", "up"])?;
    ok(&[
        "ip",
        "-n",
        "zmn-cvm",
        "route",
        "add",
        "default",
        "via",
        "10.92.4.1",
    ])?;

    // ---- the laptop brings up the planned wg-quick file
    let conf = tmp.path().join(format!("{LAPTOP_IF}.conf"));
    std::fs::copy(out.join("laptop.conf"), &conf)?;
    let wg_log = std::fs::File::create(tmp.path().join("wg-quick.log"))?;
    // nsenter, not `ip netns exec`: the latter gives wireguard-go (a daemon) a private copy
    // of the host's mounts, which would keep the VMs' image mounts alive after teardown.
    let up = Command::new("nsenter")
        .args(["--net=/run/netns/zmn-laptop", "wg-quick", "up"])
        .arg(&conf)
        .env("WG_QUICK_USERSPACE_IMPLEMENTATION", "wireguard-go")
        .stdin(Stdio::null())
        .stdout(wg_log.try_clone()?)
        .stderr(wg_log)
        .status()?;
    ensure!(
        up.success(),
        "wg-quick up: {}",
        std::fs::read_to_string(tmp.path().join("wg-quick.log")).unwrap_or_default()
    );

    for (target, what) in [
        ("10.92.2.2", "VM A"),
        ("10.92.3.2", "VM B (relayed by A)"),
        ("10.92.4.2", "hidden C (relayed by A)"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(180);
        while !pings("zmn-laptop", target) {
            ensure!(Instant::now() < deadline, "the laptop never reached {what}");
        }
        eprintln!(
            "laptop reaches {what}: {:?} after A's activation",
            activated.elapsed()
        );
    }
    for (ns, url) in [
        ("zmn-laptop", "http://10.92.2.2/index.html"),
        ("zmn-laptop", "http://10.92.3.2/index.html"),
        ("zmn-cvm", "http://10.92.2.2/index.html"),
        ("zmn-cvm", "http://10.92.3.2/index.html"),
    ] {
        match fetch(ns, url) {
            Ok(body) if body == PAGE => {}
            other => bail!(
                "{ns} could not fetch {url}: {other:?}\nconsole of VM A:\n{}\nconsole of VM B:\n{}",
                a.console(contract_a),
                b.console(contract_b)
            ),
        }
    }
    ensure!(
        pings("zmn-cvm", "100.64.92.2"),
        "hidden C cannot reach the laptop"
    );
    // SSH from the laptop into VM A over the private network: the spec's key runs a command,
    // another key is refused.
    let ssh = |key: &Path, command: &str| {
        Command::new("nsenter")
            .args(["--net=/run/netns/zmn-laptop", "ssh", "-i"])
            .arg(key)
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "LogLevel=ERROR",
                "root@10.92.2.2",
                command,
            ])
            .stdin(Stdio::null())
            .output()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = ssh(&ssh_key, "echo SSH-OK; hostname")?;
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && said.contains("SSH-OK") && said.contains("web") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "ssh root@10.92.2.2 from the laptop: {:?} {said} {}\nconsole of VM A:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr),
            a.console(contract_a)
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let out = ssh(&stranger_key, "echo SSH-OK")?;
    ensure!(
        !out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("SSH-OK"),
        "a key outside the spec logged in over SSH"
    );
    eprintln!("ssh from the laptop into VM A with the spec's key: ok; another key refused");
    // Outbound internet from the hidden node, through its NAT; never to its node or its LAN.
    match fetch("zmn-cvm", "http://198.51.100.80/index.html") {
        Ok(body) if body == WORLD_PAGE => {}
        other => bail!(
            "C's VM could not fetch from the internet: {other:?}\n{}",
            c.executor.log_tail()
        ),
    }
    for (target, what) in [
        ("192.168.77.1", "the farmer's LAN"),
        ("192.168.77.2", "its node"),
    ] {
        ensure!(!pings("zmn-cvm", target), "C's VM reached {what}");
    }

    // The guests' own view: each other and C, but never their node.
    for (node, contract, wanted) in [
        (
            &a,
            contract_a,
            &[
                "REACH-10.92.3.2",
                "REACH-10.92.4.2",
                "GOT-page",
                "NODE-UNREACHABLE",
                "WORLD-page-of-the-internet",
            ][..],
        ),
        (
            &b,
            contract_b,
            &["REACH-10.92.2.2", "REACH-10.92.4.2", "NODE-UNREACHABLE"][..],
        ),
    ] {
        POLLING
            .until(
                "a guest reaching its peers",
                Duration::from_secs(120),
                || async {
                    let text = node.console(contract);
                    Ok(wanted.iter().all(|w| text.contains(w)).then_some(()))
                },
            )
            .await
            .with_context(|| node.console(contract))?;
        let text = node.console(contract);
        ensure!(
            !text.contains("NODE-REACHABLE"),
            "a VM reached its node:\n{text}"
        );
    }

    // ---- a VM joins A's network in place and leaves again; VM A keeps running throughout
    let vm_a = hypervisor_pid(&a, contract_a, "web").context("VM A's hypervisor")?;
    let a_secret = *NodeIdentity::load_or_create(&a.data_dir.join("identity.json"))?.box_secret();
    let web2_tap = format!(
        "mat{}",
        NetNaming::new(&a_secret)
            .card(contract_a, b"web2", b"net")
            .0
    );
    let base = contract_of(api, a.id, contract_a)
        .await?
        .context("A's contract")?
        .spec;
    let mut grown = base.clone();
    let mut web2 = base
        .workloads
        .iter()
        .find(|w| w.name.as_bytes() == b"web")
        .cloned()
        .context("VM A in its spec")?;
    web2.name = "web2".try_into().map_err(|_| anyhow::anyhow!("name"))?;
    if let WorkloadKind::Vm(vm) = &mut web2.kind {
        // The same probe (it serves the page) at the next address.
        vm.networks[0].ip = [10, 92, 2, 3];
    }
    grown
        .workloads
        .try_push(web2)
        .map_err(|_| anyhow::anyhow!("no room for a VM"))?;
    let update = |spec: DeploymentSpec, tag: &'static str| {
        let file = tmp.path().join(format!("{tag}.json"));
        let (zos, url) = (zos.clone(), url.clone());
        async move {
            std::fs::write(&file, serde_json::to_vec(&spec)?)?;
            let id = contract_a.to_string();
            zos_cli(
                &zos,
                &url,
                "//Alice",
                &["update", &id, file.to_str().context("path")?],
            )?;
            zos_cli(&zos, &url, "//Bob", &["approve", &id])?;
            anyhow::Ok(())
        }
    };
    update(grown, "grown").await?;
    let deadline = Instant::now() + Duration::from_secs(240);
    while fetch("zmn-laptop", "http://10.92.2.3/index.html").as_deref() != Ok(PAGE) {
        ensure!(
            Instant::now() < deadline,
            "the added VM never answered\n{}",
            a.executor.log_tail()
        );
    }
    ensure!(
        hypervisor_pid(&a, contract_a, "web").as_deref() == Some(vm_a.as_str()),
        "adding a VM restarted VM A (pid {vm_a}, now {:?})\n{}",
        hypervisor_pid(&a, contract_a, "web"),
        a.executor.log_tail()
    );
    update(base, "shrunk").await?;
    POLLING
        .until("the added VM gone", Duration::from_secs(120), || async {
            let gone = hypervisor_pid(&a, contract_a, "web2").is_none()
                && !in_ns("zmn-a", &["ip", "link", "show", &web2_tap])
                    .status
                    .success();
            Ok(gone.then_some(()))
        })
        .await
        .with_context(|| a.executor.log_tail())?;
    ensure!(
        !pings("zmn-laptop", "10.92.2.3"),
        "the removed VM still answers"
    );
    ensure!(
        hypervisor_pid(&a, contract_a, "web").as_deref() == Some(vm_a.as_str()),
        "removing a VM restarted VM A (pid {vm_a}, now {:?})\n{}",
        hypervisor_pid(&a, contract_a, "web"),
        a.executor.log_tail()
    );
    ensure!(pings("zmn-laptop", "10.92.2.2"), "VM A lost its network");

    // ---- a key sealed to another node and a taken port fail alone
    let port_a = deployed["network"]["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["node"] == a.id))
        .and_then(|n| n["listen_port"].as_u64())
        .context("node A's planned port")? as u16;
    let (_, stranger_box) = zos_primitives::sealing::generate_box_keypair();
    let seal = |to: &[u8; 32]| {
        zos_primitives::sealing::seal_wireguard_key(to, &[7; 32])
            .map_err(|e| anyhow::anyhow!("{e:?}"))
    };
    let wrong = network_spec("10.92.8.0/24", port_a + 1, &seal(&stranger_box)?.0)?;
    let wrong_key = create_approved_contract(api, a.id, &wrong).await?;
    let reason = failure_reason(api, a.id, wrong_key).await?;
    eprintln!("wrong sealed key: {reason}");
    ensure!(
        reason.contains("private key"),
        "unexpected reason: {reason}"
    );
    let a_box = NodeIdentity::load_or_create(&a.data_dir.join("identity.json"))?.box_public;
    let taken = create_approved_contract(
        api,
        a.id,
        &network_spec("10.92.9.0/24", port_a, &seal(&a_box)?.0)?,
    )
    .await?;
    let reason = failure_reason(api, a.id, taken).await?;
    eprintln!("taken port: {reason}");
    ensure!(reason.contains("is taken"), "unexpected reason: {reason}");
    ensure!(pings("zmn-laptop", "10.92.3.2"), "the network broke");

    // ---- cancel: nothing of the networks is left on any node
    for contract in [contract_a, contract_b, contract_c] {
        cancel(api, contract, POLLING).await?;
    }
    for node in [&a, &b, &c] {
        POLLING
            .until(
                "no link, namespace or process left",
                Duration::from_secs(120),
                || async { Ok(node.leftovers().is_empty().then_some(())) },
            )
            .await
            .with_context(|| {
                format!(
                    "left on node {}: {:?}\n{}",
                    node.id,
                    node.leftovers(),
                    node.executor.log_tail()
                )
            })?;
    }
    ensure!(
        !pings("zmn-laptop", "10.92.2.2"),
        "VM A still reachable after cancel"
    );
    Ok(())
}
