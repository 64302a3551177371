//! VMs on the overlay network, with the real executor binaries, a real chain node, real
//! `zos-overlay` daemons and QEMU guests:
//!
//! ```text
//!              LAN bridge (namespace zoe-lan), documentation addresses 198.51.100.0/24
//!     ┌──────────────────────┬──────────────────────┬──────────────────┐
//!  node A .1 (zoe-a)      NAT router .5 (zoe-r)   laptop .9 (zoe-laptop)
//!  zos-overlay, relay;        │ masquerade        zos-overlay --client,
//!  TUN in zoe-a-ov;       node B 10.77.1.2        TUN in its own namespace
//!  executor               (zoe-b): zos-overlay
//!  └─ VM "web" (overlay)  with a reservation on A, TUN in zoe-b-ov; executor
//!                         └─ VM "web" (overlay)
//! ```
//!
//! Node B only dials out: the laptop reaches B's VM through A's relay (its first connection to
//! B is a relayed one), B fetches A's image over its own outbound connection, and B publishes
//! its relayed address on chain.
//!
//! Each node's executor gets the node's overlay key (`--overlay-key`) and the namespace of the
//! daemon's TUN (`--overlay-netns`), and publishes its overlay endpoint on chain. A VM with
//! `overlay = true` gets an address in its node's /64 derived from the contract and workload,
//! computed here from the key the chain publishes, as a deployer's tools compute it. The
//! laptop pings both VMs and downloads a file from each; VM A downloads the file from VM B
//! over the overlay and pings it, and the laptop checks what A got. Cancelling removes the
//! card and its route, and the address stops answering.
//!
//! Needs root, QEMU, /dev/fuse, busybox-static and nftables; the `zos-overlay` binary built
//! into the shared target directory.

mod common;

use std::{
    net::Ipv6Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use common::{
    busybox_rootfs, cancel, create_approved_contract, funded_identity, ok, registered_node, run,
    setup_farm, state_of, which, workspace_binary, Executor, ExecutorOptions, Polling, StopOnDrop,
};
use node_harness::{client, ChainNode, NodeOptions};
use zos_executor::chain::runtime;
use zos_image::store::DirStore;
use zos_overlay::{address::NodeSubnet, identity};
use zos_primitives::{contracts::ContractState, spec::DeploymentSpec, ContractId, NodeId};

const POLLING: Polling = Polling::every(Duration::from_millis(250));
const NAMESPACES: [&str; 7] = [
    "zoe-lan",
    "zoe-a",
    "zoe-b",
    "zoe-laptop",
    "zoe-a-ov",
    "zoe-b-ov",
    "zoe-r",
];
/// Node B's private address behind the NAT router, and the router's on that side.
const B_PRIVATE: &str = "10.77.1.2";
const ROUTER_PRIVATE: &str = "10.77.1.1";
/// Host <-> node links: (node namespace, host end, host address, node address). The host ends
/// names match no executor's interface prefix (the host's nftables drop what comes in on those).
const HOST_LINKS: [(&str, &str, &str, &str); 2] = [
    ("zoe-a", "hlink-a", "203.0.113.1", "203.0.113.2"),
    ("zoe-b", "hlink-b", "203.0.113.5", "203.0.113.6"),
];
/// Where each node's overlay daemon serves its local hub (on its host link).
const LOCAL_HUB_PORT: u16 = 7700;
/// Size of the file each guest serves.
const FILE_BYTES: usize = 4 << 20;

const EXECUTOR: ExecutorOptions = ExecutorOptions {
    log_filter: "info,zos_executor=debug,zos_net=debug,zos_vm=info",
    env: &[("ZOS_VM_ACCEL", "tcg")],
    stop_on_drop: StopOnDrop::Terminate,
    log_tail_lines: 60,
};

/// The LAN, the nodes' and the laptop's namespaces, and the nodes' overlay namespaces (made
/// here: a namespace the daemon made inside `ip netns exec` would be mounted only in its own
/// mount namespace, out of the executor's sight).
struct Topology;

impl Topology {
    fn clean() {
        for ns in NAMESPACES {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        // A namespace is freed lazily: its veth may outlive `netns del` for a while.
        for (_, host_end, _, _) in HOST_LINKS {
            let _ = run(&["ip", "link", "del", host_end]);
        }
    }

    fn build() -> Result<Self> {
        Self::clean();
        for ns in NAMESPACES {
            ok(&["ip", "netns", "add", ns])?;
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        ok(&[
            "ip", "-n", "zoe-lan", "link", "add", "lan0", "type", "bridge",
        ])?;
        ok(&["ip", "-n", "zoe-lan", "link", "set", "lan0", "up"])?;
        for (ns, port, ip) in [
            ("zoe-a", "pa", "198.51.100.1/24"),
            ("zoe-r", "pr", "198.51.100.5/24"),
            ("zoe-laptop", "pl", "198.51.100.9/24"),
        ] {
            ok(&[
                "ip", "link", "add", port, "netns", "zoe-lan", "type", "veth", "peer", "name",
                "eth0", "netns", ns,
            ])?;
            ok(&[
                "ip", "-n", "zoe-lan", "link", "set", port, "master", "lan0", "up",
            ])?;
            address_up(ns, "eth0", ip)?;
        }
        // Node B behind the router, which masquerades what B sends to the LAN: nothing on the
        // LAN can open a connection to B.
        ok(&[
            "ip", "link", "add", "eth1", "netns", "zoe-r", "type", "veth", "peer", "name", "eth0",
            "netns", "zoe-b",
        ])?;
        for (ns, dev, ip) in [
            ("zoe-r", "eth1", ROUTER_PRIVATE),
            ("zoe-b", "eth0", B_PRIVATE),
        ] {
            address_up(ns, dev, &format!("{ip}/24"))?;
        }
        let gw = ROUTER_PRIVATE;
        ok(&["ip", "-n", "zoe-b", "route", "add", "default", "via", gw])?;
        let nat = "add table ip nat; \
                   add chain ip nat post { type nat hook postrouting priority 100; }; \
                   add rule ip nat post oifname eth0 masquerade";
        for command in [
            &["sysctl", "-qw", "net.ipv4.ip_forward=1"][..],
            &["nft", nat],
        ] {
            ok(&[&["ip", "netns", "exec", "zoe-r"][..], command].concat())?;
        }
        // Each node's own link to the host, where its executor runs: the executor reads images
        // through the node's overlay daemon's local hub, listening on the node's side.
        for (ns, host_end, host_ip, node_ip) in HOST_LINKS {
            ok(&[
                "ip", "link", "add", host_end, "type", "veth", "peer", "name", "host0", "netns", ns,
            ])?;
            ok(&[
                "ip",
                "addr",
                "add",
                &format!("{host_ip}/30"),
                "dev",
                host_end,
            ])?;
            ok(&["ip", "link", "set", host_end, "up"])?;
            address_up(ns, "host0", &format!("{node_ip}/30"))?;
        }
        Ok(Self)
    }
}

/// Gives `dev` in namespace `ns` the address `cidr` and brings it up.
fn address_up(ns: &str, dev: &str, cidr: &str) -> Result<()> {
    ok(&["ip", "-n", ns, "addr", "add", cidr, "dev", dev])?;
    ok(&["ip", "-n", ns, "link", "set", dev, "up"])
}

impl Drop for Topology {
    fn drop(&mut self) {
        Self::clean();
    }
}

/// A `zos-overlay up` process in a namespace, killed when dropped.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(ns: &str, log: &Path, args: &[&str]) -> Result<Self> {
        let bin = workspace_binary("zos-overlay")?;
        let file = std::fs::File::create(log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin)
            .arg("up")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        Ok(Self {
            child,
            log: log.into(),
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The packets counted by the nftables rule in namespace `ns` whose line holds all of `parts`.
fn counted_packets(ns: &str, parts: &[String]) -> Result<u64> {
    let out = run(&["ip", "netns", "exec", ns, "nft", "list", "ruleset"]);
    ensure!(out.status.success(), "nft list ruleset in {ns}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| parts.iter().all(|p| l.contains(p.as_str())))
        .with_context(|| format!("no rule with {parts:?} in {ns}:\n{text}"))?;
    let packets = line
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .with_context(|| format!("no packet count in {line:?}"))?;
    Ok(packets.parse()?)
}

/// Files under `dir`, recursively (0 when it is missing).
fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => count_files(&e.path()),
                    Ok(_) => 1,
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn spec(root: &str, source: &str, env: &[(&str, Ipv6Addr)]) -> Result<DeploymentSpec> {
    let env: Vec<_> = env
        .iter()
        .map(|(key, value)| serde_json::json!({ "key": key, "value": value.to_string() }))
        .collect();
    let spec: DeploymentSpec = serde_json::from_value(serde_json::json!({
        "version": 0,
        "workloads": [
            { "name": "web", "kind": { "vm": {
                "image": { "root_hash": root, "source": source },
                "vcpus": 1, "memory_mib": 256, "rootfs_mib": 256,
                "entrypoint": "/bin/sh /bin/serve",
                "env": env,
                "overlay": true,
            } } },
        ],
    }))?;
    spec.validate()
        .map_err(|e| anyhow::anyhow!("test spec invalid: {e:?}"))?;
    Ok(spec)
}

async fn until_deployed(
    api: &client::Client,
    node: NodeId,
    contract: ContractId,
    executor: &Executor,
) -> Result<()> {
    POLLING
        .until(
            "the contract Deployed",
            Duration::from_secs(300),
            || async {
                match state_of(api, node, contract).await? {
                    Some(ContractState::Deployed) => Ok(Some(())),
                    Some(ContractState::Failed(f)) => anyhow::bail!(
                        "contract {contract} failed: {}",
                        String::from_utf8_lossy(&f.reason)
                    ),
                    _ => Ok(None),
                }
            },
        )
        .await
        .with_context(|| executor.log_tail())
}

/// What the laptop fetches from `http://[addr]/path`, if it answers within `timeout_s`.
fn fetch_from_laptop(addr: Ipv6Addr, path: &str, timeout_s: u32) -> Option<Vec<u8>> {
    let url = format!("http://[{addr}]/{path}");
    let timeout = timeout_s.to_string();
    let out = run(&[
        "ip",
        "netns",
        "exec",
        "zoe-laptop",
        "timeout",
        &timeout,
        "busybox",
        "wget",
        "-q",
        "-O",
        "-",
        &url,
    ]);
    out.status.success().then_some(out.stdout)
}

fn laptop_pings(addr: Ipv6Addr) -> bool {
    run(&[
        "ip",
        "netns",
        "exec",
        "zoe-laptop",
        "busybox",
        "ping",
        "-c",
        "2",
        "-W",
        "3",
        &addr.to_string(),
    ])
    .status
    .success()
}

/// The node's overlay key as the chain publishes it, and its first address.
async fn published_overlay(
    api: &client::Client,
    node: NodeId,
) -> Result<Option<([u8; 32], String)>> {
    let at = api.at_current_block().await?;
    let endpoint = at
        .storage()
        .try_fetch(runtime::storage().grid().node_overlays(), (node,))
        .await?;
    let Some(endpoint) = endpoint else {
        return Ok(None);
    };
    let endpoint = endpoint.decode()?;
    let first = endpoint
        .addresses
        .0
        .first()
        .map(|a| String::from_utf8_lossy(&a.0).into_owned())
        .unwrap_or_default();
    Ok(Some((endpoint.key, first)))
}

/// A test file that differs byte by byte (so a truncated or shifted copy cannot pass).
fn test_file() -> String {
    (0..FILE_BYTES)
        .map(|i| char::from(b'a' + (i % 23) as u8))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn vms_on_two_nodes_and_a_laptop_talk_over_the_overlay() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "needs root (namespaces, taps, nftables)"
    );
    for tool in ["qemu-system-x86_64", "busybox", "nft"] {
        ensure!(which(tool).is_some(), "{tool} is needed");
    }
    let tmp = tempfile::tempdir()?;
    let file = test_file();
    let rootfs = tmp.path().join("image-tree");
    // Serves its file; with a PEER, pings it and downloads its file over the overlay, again
    // and again, for the laptop to check. With a LAPTOP, pings it from its own address and
    // from SPOOF, another address of its node's /64 it takes for itself for that ping only
    // (else the guest would pick it as the source of other traffic too).
    let serve = "httpd -p 80 -h /www\n\
                                  while :; do\n\
                 \tif [ -n \"$PEER\" ]; then\n\
                 \t\tping -c 1 -W 3 \"$PEER\" >/dev/null 2>&1 && echo ok > /www/peer-ping\n\
                 \t\twget -q -O /tmp/peer \"http://[$PEER]/file\" && mv /tmp/peer /www/from-peer\n\
                 \tfi\n\
                 \tif [ -n \"$LAPTOP\" ]; then\n\
                 \t\tping -c 1 -W 1 \"$LAPTOP\" >/dev/null 2>&1\n\
                 \t\tif ip -6 addr add \"$SPOOF/128\" dev eth0; then\n\
                 \t\t\techo ok > /www/spoofing\n\
                 \t\t\tping -c 1 -W 1 -I \"$SPOOF\" \"$LAPTOP\" >/dev/null 2>&1\n\
                 \t\t\tip -6 addr del \"$SPOOF/128\" dev eth0\n\
                 \t\tfi\n\
                 \tfi\n\
                 \tsleep 2\n\
                 done\n";
    busybox_rootfs(
        &rootfs,
        &["httpd", "wget", "ping", "mv", "ip"],
        &[("www/file", &file), ("tmp/.keep", ""), ("bin/serve", serve)],
    )?;
    // Node A holds the image (its overlay daemon's store); node B has nothing, and the hub
    // the specs name is down (nothing listens there): B's VM starts from what A serves.
    let a_store = tmp.path().join("a-objects");
    let b_store = tmp.path().join("b-objects");
    let store = Arc::new(DirStore::open(&a_store)?);
    DirStore::open(&b_store)?;
    let packed = zos_image::pack::pack_dir(&rootfs, store, None, &Default::default())?;
    let hub_down = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let (root, source) = (packed.root.to_hex(), format!("http://{hub_down}"));

    let _topology = Topology::build()?;
    let keys = tmp.path().join("keys");
    let key = |name: &str| keys.join(format!("{name}.key"));
    let a_key = identity::load_or_create(&key("a"))?;
    let laptop_address =
        identity::subnet_of_key(&identity::load_or_create(&key("laptop"))?.public())
            .context("an ed25519 key")?
            .host();
    let a_peer = a_key.public().to_peer_id();
    let a_join = format!("/ip4/198.51.100.1/tcp/9651/p2p/{a_peer}");
    let b_peer = identity::load_or_create(&key("b"))?
        .public()
        .to_peer_id()
        .to_string();
    let b_listen = format!("/ip4/{B_PRIVATE}/tcp/9651");
    // What B publishes: the only way in is through A's relay.
    let b_relayed = format!("{a_join}/p2p-circuit");
    let arg = |p: &Path| p.to_string_lossy().into_owned();
    let (ka, kb, kl) = (arg(&key("a")), arg(&key("b")), arg(&key("laptop")));
    let (a_objects, b_objects) = (arg(&a_store), arg(&b_store));
    let local_hub = |i: usize| format!("{}:{LOCAL_HUB_PORT}", HOST_LINKS[i].3);
    let (a_hub, b_hub) = (local_hub(0), local_hub(1));
    let _daemon_a = Daemon::start(
        "zoe-a",
        &tmp.path().join("overlay-a.log"),
        &[
            "--key",
            &ka,
            "--listen",
            "/ip4/198.51.100.1/tcp/9651",
            "--tun",
            "zoa",
            "--tun-netns",
            "zoe-a-ov",
            "--hub-store",
            &a_objects,
            "--hub-listen",
            &a_hub,
            "--relay-server",
        ],
    )?;
    let daemon_b = Daemon::start(
        "zoe-b",
        &tmp.path().join("overlay-b.log"),
        &[
            "--key",
            &kb,
            "--listen",
            &b_listen,
            "--tun",
            "zob",
            "--tun-netns",
            "zoe-b-ov",
            "--hub-store",
            &b_objects,
            "--hub-listen",
            &b_hub,
            "--peer",
            &a_join,
            "--relay",
            &a_join,
        ],
    )?;
    let laptop = Daemon::start(
        "zoe-laptop",
        &tmp.path().join("overlay-laptop.log"),
        &[
            "--key",
            &kl,
            "--listen",
            "/ip4/198.51.100.9/tcp/9651",
            "--tun",
            "zol",
            "--client",
            "--peer",
            &a_join,
        ],
    )?;

    let chain = ChainNode::start(NodeOptions::default())?;
    let url = chain.ws_url();
    let grid = setup_farm(&chain, b"overlay-e2e-farm").await?;
    let api = &grid.api;
    let mut nodes = Vec::new();
    for (name, ns, prefix, listen, hub) in [
        ("a", "zoe-a", "oa", "/ip4/198.51.100.1/tcp/9651", &a_hub),
        ("b", "zoe-b", "ob", b_relayed.as_str(), &b_hub),
    ] {
        let data_dir = tmp.path().join(format!("node-{name}"));
        std::fs::create_dir_all(&data_dir)?;
        let account = funded_identity(api, grid.farm, &data_dir).await?;
        let executor = Executor::spawn_with_env(
            &data_dir,
            &url,
            grid.farm,
            EXECUTOR,
            vec![
                ("ZOS_UNDERLAY_NETNS".into(), format!("/run/netns/{ns}")),
                ("ZOS_NET_PREFIX".into(), prefix.into()),
                ("ZOS_OVERLAY_KEY".into(), arg(&key(name))),
                ("ZOS_OVERLAY_NETNS".into(), format!("{ns}-ov")),
                ("ZOS_OVERLAY_ADDRESSES".into(), listen.into()),
                ("ZOS_OVERLAY_HUB".into(), format!("http://{hub}")),
            ],
        )?;
        let node = registered_node(api, &account, POLLING).await?;
        nodes.push((node, executor, data_dir));
    }

    // The nodes publish their overlay keys; a VM's address follows from its node's key.
    let mut subnets = Vec::new();
    for (node, executor, _) in &nodes {
        let (published, address) = POLLING
            .until(
                "the node's overlay endpoint on chain",
                Duration::from_secs(120),
                || async { published_overlay(api, *node).await },
            )
            .await
            .with_context(|| executor.log_tail())?;
        ensure!(
            address.starts_with("/ip4/198.51.100."),
            "published address {address}"
        );
        subnets.push(NodeSubnet::of_key(&published));
    }
    let (node_a, node_b) = (nodes[0].0, nodes[1].0);
    ensure!(
        subnets[0] == identity::subnet_of_key(&a_key.public()).context("an ed25519 key")?,
        "node A published another key than its daemon's"
    );

    // B's VM first: A's VM is told B's VM's address, and the laptop's, and an address of
    // its node's /64 that is not its own (no contract has this id).
    let on_b = create_approved_contract(api, node_b, &spec(&root, &source, &[])?).await?;
    let vm_b = subnets[1].workload(on_b, "web");
    let spoofed = subnets[0].workload(u64::MAX, "web");
    let a_env = [
        ("PEER", vm_b),
        ("LAPTOP", laptop_address),
        ("SPOOF", spoofed),
    ];
    let on_a = create_approved_contract(api, node_a, &spec(&root, &source, &a_env)?).await?;
    let vm_a = subnets[0].workload(on_a, "web");
    // The laptop counts what reaches it from A's address and from the spoofed one.
    let counters = format!(
        "table ip6 zoe_seen {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority 0; policy accept;\n\
         \t\tip6 saddr {vm_a} counter\n\
         \t\tip6 saddr {spoofed} counter\n\
         \t}}\n\
         }}\n"
    );
    let counters_file = tmp.path().join("laptop-counters.nft");
    std::fs::write(&counters_file, counters)?;
    ok(&[
        "ip",
        "netns",
        "exec",
        "zoe-laptop",
        "nft",
        "-f",
        &arg(&counters_file),
    ])?;
    let activated = Instant::now();
    until_deployed(api, node_b, on_b, &nodes[1].1).await?;
    until_deployed(api, node_a, on_a, &nodes[0].1).await?;
    let console = |i: usize, contract: ContractId| {
        std::fs::read_to_string(
            nodes[i]
                .2
                .join(format!("contracts/{contract}/vms/web/console.log")),
        )
        .unwrap_or_default()
    };
    for (i, contract, vm) in [(0, on_a, vm_a), (1, on_b, vm_b)] {
        let body = POLLING
            .until(
                "the laptop fetching the VM's file over the overlay",
                Duration::from_secs(300),
                || async {
                    Ok(fetch_from_laptop(vm, "file", 30).filter(|b| b.len() == FILE_BYTES))
                },
            )
            .await
            .with_context(|| {
                format!(
                    "{}\nconsole:\n{}\nlaptop:\n{}",
                    nodes[i].1.log_tail(),
                    console(i, contract),
                    laptop.log()
                )
            })?;
        ensure!(body == file.as_bytes(), "the file from {vm} differs");
        ensure!(laptop_pings(vm), "the laptop cannot ping {vm}");
    }
    eprintln!(
        "activation -> both VMs answer the laptop over the overlay: {:?}",
        activated.elapsed()
    );
    // Node B is behind NAT: the laptop's first connection to it went through A's relay.
    let laptop_log = laptop.log();
    let relayed_to_b = laptop_log
        .lines()
        .any(|l| l.contains(" connected") && l.contains(&b_peer) && l.contains("/p2p-circuit"));
    ensure!(
        relayed_to_b,
        "the laptop did not reach node B through the relay:\n{laptop_log}"
    );
    // Each VM's card is an isolated port of its node's overlay bridge: VMs on one node reach
    // the overlay namespace only, never each other's links.
    for (ns, prefix) in [("zoe-a", "oa"), ("zoe-b", "ob")] {
        let bridge = format!("{prefix}-ovb");
        let ports = run(&[
            "ip", "-n", ns, "-d", "-o", "link", "show", "master", &bridge,
        ]);
        let text = String::from_utf8_lossy(&ports.stdout);
        let cards: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains(&format!("{prefix}-ovu")))
            .collect();
        ensure!(
            !cards.is_empty() && cards.iter().all(|l| l.contains("isolated on")),
            "{bridge} in {ns}: cards not isolated:\n{text}"
        );
    }
    // B's image came from A over the overlay: B's daemon keeps what it fetched.
    let fetched_by_b = count_files(&b_store.join("chunks"));
    ensure!(
        fetched_by_b > 0,
        "node B's overlay store holds no chunks: the image did not come from A\n{}",
        daemon_b.log()
    );
    eprintln!("chunks node B fetched from node A with the hub down: {fetched_by_b}");
    for (name, vm) in [("VM A", vm_a), ("VM B (node behind NAT)", vm_b)] {
        let started = Instant::now();
        let body = fetch_from_laptop(vm, "file", 60).context("timed download")?;
        ensure!(
            body == file.as_bytes(),
            "the timed download from {name} differs"
        );
        eprintln!(
            "laptop <- {name} over the overlay (QEMU TCG guest): {:.1} MiB/s",
            FILE_BYTES as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
        );
    }

    // VM to VM across the nodes: A pinged B and holds B's file.
    let copy = POLLING
        .until(
            "VM A reaching VM B over the overlay",
            Duration::from_secs(120),
            || async {
                let pinged = fetch_from_laptop(vm_a, "peer-ping", 10).is_some();
                let copied =
                    fetch_from_laptop(vm_a, "from-peer", 30).filter(|b| b.len() == FILE_BYTES);
                Ok(copied.filter(|_| pinged))
            },
        )
        .await
        .with_context(|| format!("console A:\n{}", console(0, on_a)))?;
    ensure!(copy == file.as_bytes(), "A's copy of B's file differs");

    // A's card carries only A's own address: its pings reach the laptop, the spoofed ones
    // (sent over the same card, just as often) never do.
    let (from_a, from_spoofed, dropped) = POLLING
        .until(
            "VM A's pings counted on the laptop",
            Duration::from_secs(60),
            || async {
                let seen = |source: Ipv6Addr| {
                    counted_packets("zoe-laptop", &[format!("ip6 saddr {source} counter")])
                };
                let (from_a, from_spoofed) = (seen(vm_a)?, seen(spoofed)?);
                // The card's anti-spoofing rule, in node A's namespace.
                let dropped = counted_packets(
                    "zoe-a",
                    &["ip6 saddr != {".into(), vm_a.to_string(), "drop".into()],
                )?;
                Ok((from_a >= 3 && dropped >= 3).then_some((from_a, from_spoofed, dropped)))
            },
        )
        .await
        .with_context(|| format!("console A:\n{}", console(0, on_a)))?;
    ensure!(
        fetch_from_laptop(vm_a, "spoofing", 10).is_some(),
        "VM A did not take the spoofed address:\n{}",
        console(0, on_a)
    );
    ensure!(
        from_spoofed == 0,
        "{from_spoofed} packets from the spoofed {spoofed} reached the laptop"
    );
    eprintln!(
        "laptop saw {from_a} packets from VM A, {from_spoofed} from the address it spoofed; \
         node A's card dropped {dropped}"
    );

    // Cancelling A's contract removes its card and route: the address goes silent.
    cancel(api, on_a, POLLING).await?;
    POLLING
        .until(
            "the overlay card removed",
            Duration::from_secs(120),
            || async {
                let routes = run(&[
                    "ip",
                    "-n",
                    "zoe-a-ov",
                    "-6",
                    "route",
                    "show",
                    &vm_a.to_string(),
                ]);
                Ok(routes.stdout.is_empty().then_some(()))
            },
        )
        .await
        .with_context(|| nodes[0].1.log_tail())?;
    ensure!(!laptop_pings(vm_a), "{vm_a} still answers after cancel");
    ensure!(laptop_pings(vm_b), "{vm_b} stopped answering");
    cancel(api, on_b, POLLING).await?;
    Ok(())
}
