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
    settled_reports, setup_farm, state_of, which, Executor, ExecutorOptions, Polling,
    SettledReport, StopOnDrop,
};
use node_harness::{client, ChainNode, NodeOptions};
use subxt_signer::sr25519::dev;
use zos_executor::chain::{convert, runtime};
use zos_image::store::DirStore;
use zos_primitives::{
    contracts::ContractState, spec::DeploymentSpec, units::traffic_price, ContractId, Ipv4Cidr,
    Ipv6Cidr, NodeId, PublicIpv4Config, PublicIpv6Config,
};

const POLLING: Polling = Polling::every(Duration::from_millis(250));
const NAMESPACES: [&str; 2] = ["zpi-node", "zpi-router"];
const PAGE: &str = "page-behind-a-public-ip\n";
const PUBLIC_IP: &str = "198.51.100.10";
/// The node's public IPv6 subnet as the farmer declares it, and the router's address in it.
const NODE_IPV6: u128 = 0x2001_0db8_0001_0000_0000_0000_0000_0002;
const ROUTER_IPV6: u128 = 0x2001_0db8_0001_0000_0000_0000_0000_0001;
/// Size of the file the router downloads to move the contract's traffic charge.
const BIG_FILE_BYTES: usize = 16 << 20;

const EXECUTOR: ExecutorOptions = ExecutorOptions {
    log_filter: "info,zos_executor=debug,zos_net=debug,zos_vm=info",
    env: &[("ZOS_VM_ACCEL", "tcg")],
    stop_on_drop: StopOnDrop::Terminate,
    log_tail_lines: 60,
};

/// What the router fetches from the guest at `http://<host>/<path>` (an IPv6 host in
/// brackets), if it answers within `timeout_s`.
fn fetch_from_router(host: &str, path: &str, timeout_s: u32) -> Option<Vec<u8>> {
    let url = format!("http://{host}/{path}");
    let timeout = timeout_s.to_string();
    let out = run(&[
        "ip",
        "netns",
        "exec",
        "zpi-router",
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

/// The guest's page over its public IPv4, if it answers.
fn page_over_ipv4() -> Option<String> {
    fetch_from_router(PUBLIC_IP, "index.html", 5).map(|b| String::from_utf8_lossy(&b).into_owned())
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
        let router6 = format!("{}/64", std::net::Ipv6Addr::from(ROUTER_IPV6));
        ok(&[
            "ip",
            "-n",
            "zpi-router",
            "addr",
            "add",
            &router6,
            "dev",
            "eth0",
            "nodad",
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
            { "name": "pip", "kind": { "public_ip": { "v4": true, "v6": true } } },
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
            || async { Ok(page_over_ipv4().filter(|body| body == PAGE)) },
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

/// Average round trip of 20 pings from the router to `target`, milliseconds.
fn rtt_ms(target: &str) -> Result<f64> {
    let out = run(&[
        "ip",
        "netns",
        "exec",
        "zpi-router",
        "busybox",
        "ping",
        "-c",
        "20",
        "-i",
        "0.05",
        "-q",
        target,
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    // "round-trip min/avg/max = 0.066/0.086/0.119 ms"
    text.lines()
        .find_map(|l| l.split(" = ").nth(1))
        .and_then(|v| v.split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no round trip to {target}: {text}"))
}

/// The public path (router -> bridge -> the VM's guarded card -> guest) against the bare
/// namespace path (router -> bridge -> the node namespace's own address) in the same run:
/// round trip and download throughput of the same file.
fn public_path_against_bare(tmp: &std::path::Path) -> Result<()> {
    ok(&[
        "ip",
        "-n",
        "zpi-node",
        "addr",
        "add",
        "198.51.100.2/24",
        "dev",
        "pub0",
    ])?;
    let site = tmp.join("bare-site");
    std::fs::create_dir_all(&site)?;
    std::fs::write(site.join("big"), vec![0u8; BIG_FILE_BYTES])?;
    let site_arg = site.to_string_lossy().into_owned();
    let mut httpd = std::process::Command::new("ip")
        .args([
            "netns", "exec", "zpi-node", "busybox", "httpd", "-f", "-p", "8080", "-h", &site_arg,
        ])
        .spawn()?;
    let measured = (|| -> Result<_> {
        let mut bare = None;
        for _ in 0..50 {
            let started = Instant::now();
            if let Some(body) = fetch_from_router("198.51.100.2:8080", "big", 60) {
                ensure!(
                    body.len() == BIG_FILE_BYTES,
                    "bare path: {} bytes",
                    body.len()
                );
                bare = Some(started.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let bare = bare.context("the node's own httpd never answered")?;
        let started = Instant::now();
        let body = fetch_from_router(PUBLIC_IP, "big", 180).context("public path download")?;
        ensure!(
            body.len() == BIG_FILE_BYTES,
            "public path: {} bytes",
            body.len()
        );
        Ok((bare, started.elapsed()))
    })();
    let _ = httpd.kill();
    let _ = httpd.wait();
    let (bare, public) = measured?;
    let (rtt_bare, rtt_public) = (rtt_ms("198.51.100.2")?, rtt_ms(PUBLIC_IP)?);
    let mib = (BIG_FILE_BYTES >> 20) as f64;
    eprintln!(
        "round trip: public path {rtt_public:.3} ms, bare namespace path {rtt_bare:.3} ms (x{:.1}); \
         download of {mib} MiB: public {:.1} MiB/s, bare {:.1} MiB/s (x{:.2}); the guest runs under QEMU TCG",
        rtt_public / rtt_bare,
        mib / public.as_secs_f64(),
        mib / bare.as_secs_f64(),
        bare.as_secs_f64() / public.as_secs_f64(),
    );
    Ok(())
}

/// The router downloads a large file from the guest over the public IPv4; the node's reports
/// carry those bytes and the chain charges them by the pricing policy's per-GiB price: in
/// every group of windows with equal uptime, the charge minus the traffic price is the same.
async fn traffic_is_charged(
    api: &client::Client,
    from_block: u64,
    contract: ContractId,
    executor: &Executor,
) -> Result<()> {
    let started = Instant::now();
    let body = fetch_from_router(PUBLIC_IP, "big", 180).context("downloading the big file")?;
    let took = started.elapsed();
    ensure!(body.len() == BIG_FILE_BYTES, "got {} bytes", body.len());
    eprintln!(
        "public path throughput (QEMU TCG guest): {:.1} MiB/s ({} MiB in {took:?})",
        BIG_FILE_BYTES as f64 / (1 << 20) as f64 / took.as_secs_f64(),
        BIG_FILE_BYTES >> 20
    );
    let done = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let reports: Vec<SettledReport> = POLLING
        .until(
            "the windows after the download settled",
            Duration::from_secs(120),
            || async {
                let reports = settled_reports(api, from_block, contract).await?;
                Ok(reports
                    .iter()
                    .any(|r| r.window_start > done)
                    .then_some(reports))
            },
        )
        .await
        .with_context(|| executor.log_tail())?;
    let policy = api
        .at_current_block()
        .await?
        .storage()
        .try_fetch(runtime::storage().billing().pricing_policies(), (0,))
        .await?
        .context("no pricing policy 0")?
        .decode()?;
    let price = |r: &SettledReport| {
        traffic_price(
            u128::from(r.bytes_in) + u128::from(r.bytes_out),
            policy.traffic_gib,
        )
    };
    let sent: u64 = reports.iter().map(|r| r.bytes_out).sum();
    ensure!(
        sent >= BIG_FILE_BYTES as u64 && sent < 2 * BIG_FILE_BYTES as u64,
        "reported {sent} bytes out for a {BIG_FILE_BYTES}-byte download"
    );
    let mut base_by_uptime = std::collections::HashMap::new();
    for r in &reports {
        let base = r
            .charged
            .checked_sub(price(r))
            .with_context(|| format!("window {r:?} charged less than its traffic alone"))?;
        let first = *base_by_uptime.entry(r.uptime_seconds).or_insert(base);
        ensure!(
            first == base,
            "window {r:?}: {base} besides traffic, other windows of equal uptime {first}"
        );
    }
    let busiest = reports
        .iter()
        .max_by_key(|r| r.bytes_out)
        .context("no reports")?;
    ensure!(
        reports
            .iter()
            .any(|r| r.uptime_seconds == busiest.uptime_seconds && r.bytes_out < 1 << 20),
        "no quiet window to compare the download's window {busiest:?} with"
    );
    let traffic_charge: u128 = reports.iter().map(price).sum();
    eprintln!(
        "{} windows settled; {sent} bytes out; traffic charged {traffic_charge} of {} in total",
        reports.len(),
        reports.iter().map(|r| r.charged).sum::<u128>()
    );
    Ok(())
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
            ("www/big", &"\0".repeat(BIG_FILE_BYTES)),
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
    let account = funded_identity(api, grid.farm, &data_dir).await?;
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
    // The farmer declares the node's public IPv6 subnet; VMs get addresses in it.
    let node_ipv6 = PublicIpv6Config {
        ip: Ipv6Cidr {
            ip: NODE_IPV6.to_be_bytes(),
            prefix_len: 64,
        },
        gateway: ROUTER_IPV6.to_be_bytes(),
    };
    client::submit(
        api,
        &runtime::tx().grid().set_node_public_config(
            node,
            Some(runtime::runtime_types::pallet_grid::types::PublicConfig {
                ipv4: None,
                ipv6: Some(convert(&node_ipv6)?),
                domain: None,
            }),
        ),
        &dev::alice(),
    )
    .await?;
    let console =
        |contract: ContractId| data_dir.join(format!("contracts/{contract}/vms/web/console.log"));

    let spec = spec(&root, &source)?;
    let from_block = api.at_current_block().await?.block_number();
    let first = create_approved_contract(api, node, &spec).await?;
    let activated = Instant::now();
    until_deployed(api, node, first, &executor).await?;
    until_answering(&executor, &console(first)).await?;
    eprintln!(
        "activation -> the public address answers: {:?}",
        activated.elapsed()
    );
    // The same page over the IPv6 the node derived from its subnet (as the CLI derives it).
    let vm_ipv6 = std::net::Ipv6Addr::from(
        node_ipv6
            .vm_address(first, b"pip")
            .context("no IPv6 for the VM")?,
    );
    let page6 = fetch_from_router(&format!("[{vm_ipv6}]"), "index.html", 10);
    ensure!(
        page6.as_deref() == Some(PAGE.as_bytes()),
        "no page over the public IPv6 {vm_ipv6}: {page6:?}\n{}",
        executor.log_tail()
    );
    traffic_is_charged(api, from_block, first, &executor).await?;
    public_path_against_bare(tmp.path())?;
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
        page_over_ipv4().is_none(),
        "the address still answers after cancel"
    );

    // The chain freed the address: a second contract gets it and answers on it.
    let second = create_approved_contract(api, node, &spec).await?;
    until_deployed(api, node, second, &executor).await?;
    until_answering(&executor, &console(second)).await?;
    cancel(api, second, POLLING).await?;
    Ok(())
}
