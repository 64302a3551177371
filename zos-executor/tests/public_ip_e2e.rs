//! A VM with a public IPv4 from the farm's pool, with the real executor, chain node and a QEMU
//! guest:
//!
//! ```text
//!  node namespace zpi-node                         router namespace zpi-router
//!  bridge pub0 (the farmer's public bridge) ─ veth ─ eth0 198.51.100.1/24 ("the internet")
//!    └─ the VM's public card 198.51.100.10/24, default via .1
//! ```
//!
//! The farm offers 198.51.100.10 (a test network counts documentation ranges as public); the
//! contract's `public_ip` workload gets it from the chain, the VM naming it gets a card on the
//! public bridge guarded by the anti-spoofing rules, and the router fetches the guest's page
//! by that address. Cancelling removes card and rules at once and frees the address; a second
//! contract then gets the same address and answers on it.
//!
//! Needs root, QEMU, /dev/fuse, busybox-static, nftables and WireGuard (kernel module or
//! wireguard-go: the node's networking layer probes it at start).

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use common::{
    busybox_rootfs, cancel, create_approved_contract, funded_identity, ok, registered_node, run,
    setup_farm, state_of, which, Executor, ExecutorOptions, Polling, StopOnDrop,
};
use node_harness::{client, ChainNode, NodeOptions};
use subxt_signer::sr25519::dev;
use zos_executor::chain::{convert, runtime};
use zos_image::store::DirStore;
use zos_primitives::{
    contracts::ContractState, spec::DeploymentSpec, ContractId, Ipv4Cidr, NodeId, PublicIpv4Config,
};

const POLLING: Polling = Polling::every(Duration::from_millis(250));
const NAMESPACES: [&str; 2] = ["zpi-node", "zpi-router"];
const PAGE: &str = "page-behind-a-public-ip\n";
const PUBLIC_IP: &str = "198.51.100.10";

const EXECUTOR: ExecutorOptions = ExecutorOptions {
    log_filter: "info,zos_executor=debug,zos_net=debug,zos_vm=info",
    env: &[("ZOS_VM_ACCEL", "tcg")],
    stop_on_drop: StopOnDrop::Terminate,
    log_tail_lines: 60,
};

/// The guest's page fetched by the router over the public address, if it answers.
fn fetch_from_router() -> Option<String> {
    let url = format!("http://{PUBLIC_IP}/index.html");
    let out = run(&[
        "ip",
        "netns",
        "exec",
        "zpi-router",
        "timeout",
        "5",
        "busybox",
        "wget",
        "-q",
        "-O",
        "-",
        &url,
    ]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The node's links on the public bridge and its nftables tables (what a public card leaves).
fn public_leftovers() -> String {
    let links = run(&[
        "ip", "-n", "zpi-node", "-o", "link", "show", "master", "pub0",
    ]);
    let tables = run(&["ip", "netns", "exec", "zpi-node", "nft", "list", "tables"]);
    let mut found = String::new();
    for line in String::from_utf8_lossy(&links.stdout).lines() {
        if let Some(name) = line.split(": ").nth(1) {
            if name.starts_with("pit") {
                found += &format!("link {name}\n");
            }
        }
    }
    for line in String::from_utf8_lossy(&tables.stdout).lines() {
        if line.contains("zos_pit") {
            found += &format!("{line}\n");
        }
    }
    found
}

struct Topology;

impl Topology {
    fn clean() {
        for ns in NAMESPACES {
            let _ = run(&["ip", "netns", "del", ns]);
        }
    }

    fn build() -> Result<Self> {
        Self::clean();
        for ns in NAMESPACES {
            ok(&["ip", "netns", "add", ns])?;
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        ok(&[
            "ip", "-n", "zpi-node", "link", "add", "pub0", "type", "bridge",
        ])?;
        ok(&["ip", "-n", "zpi-node", "link", "set", "pub0", "up"])?;
        ok(&[
            "ip",
            "link",
            "add",
            "rt",
            "netns",
            "zpi-node",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            "zpi-router",
        ])?;
        ok(&[
            "ip", "-n", "zpi-node", "link", "set", "rt", "master", "pub0", "up",
        ])?;
        ok(&[
            "ip",
            "-n",
            "zpi-router",
            "addr",
            "add",
            "198.51.100.1/24",
            "dev",
            "eth0",
        ])?;
        ok(&["ip", "-n", "zpi-router", "link", "set", "eth0", "up"])?;
        Ok(Self)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        Self::clean();
    }
}

fn spec(root: &str, source: &str) -> Result<DeploymentSpec> {
    let spec: DeploymentSpec = serde_json::from_value(serde_json::json!({
        "version": 0,
        "workloads": [
            { "name": "pip", "kind": { "public_ip": { "v4": true } } },
            { "name": "web", "kind": { "vm": {
                "image": { "root_hash": root, "source": source },
                "vcpus": 1, "memory_mib": 256, "rootfs_mib": 256,
                "entrypoint": "/bin/sh /bin/serve",
                "public_ip": "pip",
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

/// Waits until the router fetches the guest's page over the public address.
async fn until_answering(executor: &Executor, console: &std::path::Path) -> Result<()> {
    POLLING
        .until(
            "the public address answering",
            Duration::from_secs(240),
            || async { Ok(fetch_from_router().filter(|body| body == PAGE)) },
        )
        .await
        .map(|_| ())
        .with_context(|| {
            format!(
                "{}\nconsole:\n{}",
                executor.log_tail(),
                std::fs::read_to_string(console).unwrap_or_default()
            )
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_answers_on_its_farm_ip_and_gives_it_back_on_cancel() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "needs root (namespaces, taps, nftables)"
    );
    for tool in ["qemu-system-x86_64", "busybox", "nft"] {
        ensure!(which(tool).is_some(), "{tool} is needed");
    }
    let tmp = tempfile::tempdir()?;
    let rootfs = tmp.path().join("image-tree");
    busybox_rootfs(
        &rootfs,
        &["httpd"],
        &[
            ("www/index.html", PAGE),
            ("bin/serve", "exec httpd -f -p 80 -h /www\n"),
        ],
    )?;
    let store = Arc::new(DirStore::open(tmp.path().join("hub-store"))?);
    let packed = zos_image::pack::pack_dir(&rootfs, store, None, &Default::default())?;
    let hub = zos_image::hub::spawn_background(
        "127.0.0.1:0".parse()?,
        DirStore::open(tmp.path().join("hub-store"))?,
        "unused".into(),
    )?;
    let (root, source) = (packed.root.to_hex(), format!("http://{hub}"));

    let _topology = Topology::build()?;
    let chain = ChainNode::start(NodeOptions::default())?;
    let url = chain.ws_url();
    let grid = setup_farm(&chain, b"public-ip-e2e-farm").await?;
    let api = &grid.api;
    let farm_ip = PublicIpv4Config {
        ip: Ipv4Cidr {
            ip: [198, 51, 100, 10],
            prefix_len: 24,
        },
        gateway: [198, 51, 100, 1],
    };
    client::submit(
        api,
        &runtime::tx()
            .grid()
            .add_farm_ip(grid.farm, convert(&farm_ip)?),
        &dev::alice(),
    )
    .await?;

    let data_dir = tmp.path().join("node");
    std::fs::create_dir_all(&data_dir)?;
    let account = funded_identity(api, &data_dir).await?;
    let executor = Executor::spawn_with_env(
        &data_dir,
        &url,
        grid.farm,
        EXECUTOR,
        vec![
            ("ZOS_UNDERLAY_NETNS".into(), "/run/netns/zpi-node".into()),
            ("ZOS_NET_PREFIX".into(), "pi".into()),
            ("ZOS_PUBLIC_BRIDGE".into(), "pub0".into()),
        ],
    )?;
    let node = registered_node(api, &account, POLLING).await?;
    let console =
        |contract: ContractId| data_dir.join(format!("contracts/{contract}/vms/web/console.log"));

    let spec = spec(&root, &source)?;
    let first = create_approved_contract(api, node, &spec).await?;
    let activated = Instant::now();
    until_deployed(api, node, first, &executor).await?;
    until_answering(&executor, &console(first)).await?;
    eprintln!(
        "activation -> the public address answers: {:?}",
        activated.elapsed()
    );
    ensure!(
        !public_leftovers().is_empty(),
        "no public card on the bridge"
    );

    // Cancel: the card and its rules go at once, the address stops answering.
    cancel(api, first, POLLING).await?;
    POLLING
        .until(
            "the public card removed",
            Duration::from_secs(120),
            || async { Ok(public_leftovers().is_empty().then_some(())) },
        )
        .await
        .with_context(|| format!("left: {}\n{}", public_leftovers(), executor.log_tail()))?;
    ensure!(
        fetch_from_router().is_none(),
        "the address still answers after cancel"
    );

    // The chain freed the address: a second contract gets it and answers on it.
    let second = create_approved_contract(api, node, &spec).await?;
    until_deployed(api, node, second, &executor).await?;
    until_answering(&executor, &console(second)).await?;
    cancel(api, second, POLLING).await?;
    Ok(())
}
