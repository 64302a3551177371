//! A gateway node serving a deployer's private web app over HTTPS, by a name under the node's
//! domain and by the deployer's own domain, with the real executor and chain node, Debian's
//! `pebble` as the certificate authority and `pebble-challtestsrv` as DNS:
//!
//! ```text
//!  executor (this namespace): web gateway on 127.0.0.1, ACME orders to pebble on 127.0.0.1
//!    └─ dials the backend from inside the contract's network namespace
//!  node underlay zgw-node: the contract's network bridge ── veth ── zgw-app (the "VM"):
//!                                                          busybox httpd 10.66.5.2:8080
//! ```
//!
//! The farmer gives the node the domain gw.example.com; the deployer's 2-of-2 contract holds
//! a network and two gateways (`myapp.gw.example.com` and `shop.example.org`) to the app. curl
//! fetches the page by both names over HTTPS, trusting only pebble's root; plain HTTP
//! redirects. A name someone else holds and a loopback backend are refused by the chain, a
//! domain whose DNS points elsewhere fails its contract with the reason on chain and is freed
//! on that node for another deployer. The bytes
//! through the gateway are billed as the contract's public traffic; cancelling frees the name.
//!
//! Needs root, busybox, nftables, WireGuard (kernel module or wireguard-go), curl and pebble.

mod common;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use common::{
    cancel, create_approved_contract, funded_identity, ok, online_node, run, settled_reports,
    setup_farm, state_of, which, Executor, ExecutorOptions, Polling, StopOnDrop,
};
use node_harness::{client, free_port, ChainNode, NodeOptions};
use subxt::dynamic::At;
use subxt_signer::sr25519::dev;
use zos_executor::{
    chain::{convert, runtime},
    drivers::network::NetNaming,
    identity::NodeIdentity,
};
use zos_primitives::{contracts::ContractState, spec::DeploymentSpec, ContractId, NodeId};

const POLLING: Polling = Polling::every(Duration::from_millis(250));
const NAMESPACES: [&str; 2] = ["zgw-node", "zgw-app"];
const PAGE: &str = "page-behind-the-gateway\n";
const BIG_FILE_BYTES: usize = 4 << 20;

const EXECUTOR: ExecutorOptions = ExecutorOptions {
    log_filter: "info,zos_executor=debug,zos_gateway=debug,zos_net=info",
    env: &[("ZOS_NO_VM", "true")],
    stop_on_drop: StopOnDrop::Terminate,
    log_tail_lines: 80,
};

struct Topology;

impl Topology {
    fn clean() {
        for ns in NAMESPACES {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let spaces = run(&["ip", "netns", "list"]);
        for line in String::from_utf8_lossy(&spaces.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or_default();
            if name.starts_with("gw-net-") {
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
        let _ = run(&["pkill", "-f", "wireguard-go -f gww"]);
    }

    fn build() -> Result<Self> {
        Self::clean();
        for ns in NAMESPACES {
            ok(&["ip", "netns", "add", ns])?;
            ok(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(Self)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        Self::clean();
    }
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_port(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// curl with `args`: (exit success, stdout, stderr).
fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "20"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// pebble's HTTPS certificate, from a test CA written to `dir`.
fn pebble_server_cert(dir: &Path) -> Result<()> {
    let mut ca = rcgen::CertificateParams::new(vec![]);
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "pebble server CA");
    let ca = rcgen::Certificate::from_params(ca)?;
    let leaf = rcgen::Certificate::from_params(rcgen::CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ]))?;
    std::fs::write(dir.join("server-ca.pem"), ca.serialize_pem()?)?;
    std::fs::write(
        dir.join("pebble-cert.pem"),
        leaf.serialize_pem_with_signer(&ca)?,
    )?;
    std::fs::write(dir.join("pebble-key.pem"), leaf.serialize_private_key_pem())?;
    Ok(())
}

/// The CA's DNS and the CA: (DNS port, pebble's ACME port, pebble's management port).
fn start_ca(dir: &Path, gateway_http_port: u16) -> Result<(Vec<Killed>, u16, u16, u16)> {
    let (dns, dns_admin, acme, acme_admin) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let dns_server = Killed(
        Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_admin}")])
            .stdout(Stdio::null())
            .spawn()
            .context("pebble-challtestsrv")?,
    );
    wait_for_port(dns_admin)?;
    // The deployer's other domain points somewhere else.
    let (added, _, err) = curl(&[
        "-X",
        "POST",
        &format!("http://127.0.0.1:{dns_admin}/add-a"),
        "-d",
        r#"{"host":"elsewhere.example.org.","addresses":["203.0.113.9"]}"#,
    ]);
    ensure!(added, "adding a DNS record: {err}");
    pebble_server_cert(dir)?;
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{acme}"),
        "managementListenAddress": format!("127.0.0.1:{acme_admin}"),
        "certificate": dir.join("pebble-cert.pem"),
        "privateKey": dir.join("pebble-key.pem"),
        "httpPort": gateway_http_port,
        "tlsPort": free_port()?,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": false,
    }});
    std::fs::write(dir.join("pebble.json"), config.to_string())?;
    let ca = Killed(
        Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("127.0.0.1:{dns}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("pebble")?,
    );
    wait_for_port(acme)?;
    wait_for_port(acme_admin)?;
    Ok((vec![dns_server, ca], dns, acme, acme_admin))
}

fn spec(sealed_key: &[u8], port: u16, gateways: serde_json::Value) -> Result<DeploymentSpec> {
    let hex: String = sealed_key.iter().map(|b| format!("{b:02x}")).collect();
    let mut workloads = vec![serde_json::json!({ "name": "net", "kind": { "network": {
        "ip_range": "10.66.0.0/16", "subnet": "10.66.5.0/24", "listen_port": port,
        "private_key": hex,
    } } })];
    workloads.extend(gateways.as_array().cloned().unwrap_or_default());
    let spec: DeploymentSpec =
        serde_json::from_value(serde_json::json!({ "version": 0, "workloads": workloads }))?;
    spec.validate()
        .map_err(|e| anyhow::anyhow!("test spec invalid: {e:?}"))?;
    Ok(spec)
}

/// A spec with one gateway and no network (its backend must then be public).
fn gateway_only(gateway: serde_json::Value) -> Result<DeploymentSpec> {
    Ok(serde_json::from_value(serde_json::json!({
        "version": 0,
        "workloads": [{ "name": "gw", "kind": { "gateway": gateway } }],
    }))?)
}

async fn until_state(
    api: &client::Client,
    node: NodeId,
    contract: ContractId,
    executor: &Executor,
    done: impl Fn(&ContractState) -> bool,
) -> Result<ContractState> {
    POLLING
        .until("the contract's state", Duration::from_secs(180), || async {
            Ok(state_of(api, node, contract).await?.filter(|s| done(s)))
        })
        .await
        .with_context(|| executor.log_tail())
}

/// `who` alone signs (and so activates at once) a contract of `spec` on `node`.
async fn single_signer_contract(
    api: &client::Client,
    node: NodeId,
    spec: &DeploymentSpec,
    who: &subxt_signer::sr25519::Keypair,
) -> Result<ContractId> {
    use runtime::runtime_types::pallet_deployments::types::Signer;
    let signers = vec![Signer {
        account: who.public_key().to_account_id(),
        weight: 1,
        required: false,
    }];
    let create = runtime::tx().deployments().create(
        node,
        convert(spec)?,
        runtime::runtime_types::bounded_collections::bounded_vec::BoundedVec(signers),
        1,
    );
    let events = client::submit(api, &create, who).await?;
    client::find_event(&events, "Deployments", "ContractActivated")?;
    Ok(
        client::find_event(&events, "Deployments", "ContractCreated")?
            .at("contract")
            .and_then(|v| v.as_u128())
            .context("contract id")? as ContractId,
    )
}

/// The error the chain refuses a contract with, as text (it must refuse it).
async fn refused(
    api: &client::Client,
    spec: &DeploymentSpec,
    node: NodeId,
    who: &subxt_signer::sr25519::Keypair,
) -> Result<String> {
    match single_signer_contract(api, node, spec, who).await {
        Ok(_) => anyhow::bail!("the chain accepted a contract it must refuse"),
        Err(e) => Ok(format!("{e:#}")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_serves_a_private_app_by_name_and_by_domain_with_acme_certificates() -> Result<()>
{
    // SAFETY: geteuid has no preconditions.
    ensure!(
        unsafe { libc::geteuid() } == 0,
        "needs root (namespaces, nftables)"
    );
    for tool in ["busybox", "nft", "curl", "pebble", "pebble-challtestsrv"] {
        ensure!(
            which(tool).is_some(),
            "{tool} is needed (scripts/setup-toolchain.sh)"
        );
    }
    let tmp = tempfile::tempdir()?;
    let _topology = Topology::build()?;
    let (https_port, http_port) = (free_port()?, free_port()?);
    let (_ca, dns_port, acme_port, acme_admin) = start_ca(tmp.path(), http_port)?;

    let chain = ChainNode::start(NodeOptions::default())?;
    let grid = setup_farm(&chain, b"gateway-e2e-farm").await?;
    let api = &grid.api;
    let data_dir = tmp.path().join("node");
    std::fs::create_dir_all(&data_dir)?;
    let account = funded_identity(api, grid.farm, &data_dir).await?;
    let ca_pem = tmp.path().join("server-ca.pem");
    let executor = Executor::spawn_with_env(
        &data_dir,
        &chain.ws_url(),
        grid.farm,
        EXECUTOR,
        vec![
            ("ZOS_UNDERLAY_NETNS".into(), "/run/netns/zgw-node".into()),
            ("ZOS_NET_PREFIX".into(), "gw".into()),
            (
                "ZOS_GATEWAY_HTTPS_ADDR".into(),
                format!("127.0.0.1:{https_port}"),
            ),
            (
                "ZOS_GATEWAY_HTTP_ADDR".into(),
                format!("127.0.0.1:{http_port}"),
            ),
            (
                "ZOS_ACME_DIRECTORY".into(),
                format!("https://127.0.0.1:{acme_port}/dir"),
            ),
            (
                "ZOS_ACME_ROOT".into(),
                ca_pem.to_string_lossy().into_owned(),
            ),
            ("ZOS_GATEWAY_DNS".into(), format!("127.0.0.1:{dns_port}")),
        ],
    )?;
    let node = online_node(api, &account, POLLING)
        .await
        .with_context(|| executor.log_tail())?;
    client::submit(
        api,
        &runtime::tx().grid().set_node_public_config(
            node,
            Some(runtime::runtime_types::pallet_grid::types::PublicConfig {
                ipv4: None,
                ipv6: None,
                domain: Some(
                    runtime::runtime_types::bounded_collections::bounded_vec::BoundedVec(
                        b"gw.example.com".to_vec(),
                    ),
                ),
            }),
        ),
        &dev::alice(),
    )
    .await?;

    // ---- the deployer's app behind two names
    let identity = NodeIdentity::load_or_create(&data_dir.join("identity.json"))?;
    let sealed = zos_primitives::sealing::seal_wireguard_key(&identity.box_public, &[9; 32])
        .map_err(|e| anyhow::anyhow!("sealing: {e:?}"))?;
    let backend = |network: bool| {
        let mut g = serde_json::json!({ "backends": ["10.66.5.2:8080"] });
        if network {
            g["network"] = "net".into();
        }
        g
    };
    let mut site = backend(true);
    site["host"] = serde_json::json!({ "name": "myapp" });
    let mut shop = backend(true);
    shop["host"] = serde_json::json!({ "fqdn": "shop.example.org" });
    let app_spec = spec(
        &sealed.0,
        free_port()?,
        serde_json::json!([
            { "name": "site", "kind": { "gateway": site } },
            { "name": "shop", "kind": { "gateway": shop } },
        ]),
    )?;
    // Another deployer's domain points elsewhere (created meanwhile, by another account).
    let mut elsewhere = backend(false);
    elsewhere["host"] = serde_json::json!({ "fqdn": "elsewhere.example.org" });
    elsewhere["backends"] = serde_json::json!(["198.51.100.20:80"]);
    let elsewhere = gateway_only(elsewhere)?;
    let from_block = api.at_current_block().await?.block_number();
    let ferdie = dev::ferdie();
    let (contract, wrong_dns) = tokio::try_join!(
        create_approved_contract(api, node, &app_spec),
        single_signer_contract(api, node, &elsewhere, &ferdie),
    )?;
    let activated = Instant::now();

    // The app: a namespace on the contract's network bridge, once the network exists.
    let bridge = format!(
        "gwb{}",
        NetNaming::new(identity.box_secret()).network_id(contract, b"net")
    );
    POLLING
        .until("the network's bridge", Duration::from_secs(120), || async {
            let links = run(&["ip", "-n", "zgw-node", "-o", "link", "show", &bridge]);
            Ok(links.status.success().then_some(()))
        })
        .await
        .with_context(|| executor.log_tail())?;
    ok(&[
        "ip", "link", "add", "app0", "netns", "zgw-node", "type", "veth", "peer", "name", "eth0",
        "netns", "zgw-app",
    ])?;
    ok(&[
        "ip", "-n", "zgw-node", "link", "set", "app0", "master", &bridge, "up",
    ])?;
    ok(&[
        "ip",
        "-n",
        "zgw-app",
        "addr",
        "add",
        "10.66.5.2/24",
        "dev",
        "eth0",
    ])?;
    ok(&["ip", "-n", "zgw-app", "link", "set", "eth0", "up"])?;
    ok(&[
        "ip",
        "-n",
        "zgw-app",
        "route",
        "add",
        "default",
        "via",
        "10.66.5.1",
    ])?;
    let site_dir = tmp.path().join("www");
    std::fs::create_dir_all(&site_dir)?;
    std::fs::write(site_dir.join("index.html"), PAGE)?;
    std::fs::write(site_dir.join("big"), vec![b'x'; BIG_FILE_BYTES])?;
    let _httpd = Killed(
        Command::new("ip")
            .args([
                "netns", "exec", "zgw-app", "busybox", "httpd", "-f", "-p", "8080", "-h",
            ])
            .arg(&site_dir)
            .spawn()?,
    );
    until_state(api, node, contract, &executor, |s| {
        *s == ContractState::Deployed
    })
    .await?;

    // ---- HTTPS by name and by domain, trusting only pebble's root
    let (got_root, root, err) = curl(&[
        "--cacert",
        &ca_pem.to_string_lossy(),
        &format!("https://127.0.0.1:{acme_admin}/roots/0"),
    ]);
    ensure!(got_root, "pebble's root: {err}");
    let root_pem = tmp.path().join("issuer-root.pem");
    std::fs::write(&root_pem, root)?;
    let https = |host: &str, path: &str| {
        curl(&[
            "--cacert",
            &root_pem.to_string_lossy(),
            "--resolve",
            &format!("{host}:{https_port}:127.0.0.1"),
            &format!("https://{host}:{https_port}/{path}"),
        ])
    };
    for host in ["myapp.gw.example.com", "shop.example.org"] {
        POLLING
            .until(
                &format!("{host} over HTTPS"),
                Duration::from_secs(120),
                || async {
                    let (fetched, body, _) = https(host, "index.html");
                    Ok((fetched && body == PAGE).then_some(()))
                },
            )
            .await
            .with_context(|| format!("{}\n{:?}", executor.log_tail(), https(host, "index.html")))?;
        eprintln!(
            "activation -> {host} over HTTPS with its certificate: {:?}",
            activated.elapsed()
        );
    }
    let (_, head, _) = curl(&[
        "--include",
        "--resolve",
        &format!("myapp.gw.example.com:{http_port}:127.0.0.1"),
        &format!("http://myapp.gw.example.com:{http_port}/a?b=c"),
    ]);
    ensure!(head.starts_with("HTTP/1.1 308"), "plain HTTP: {head}");
    ensure!(
        head.to_ascii_lowercase().contains(&format!(
            "location: https://myapp.gw.example.com:{https_port}/a?b=c"
        )),
        "plain HTTP: {head}"
    );

    // ---- refused: a name someone else holds, a loopback backend, a domain pointing elsewhere
    let mut taken = backend(false);
    taken["host"] = serde_json::json!({ "name": "myapp" });
    taken["backends"] = serde_json::json!(["198.51.100.20:80"]);
    let taken = gateway_only(taken)?;
    let mut loopback = backend(false);
    loopback["host"] = serde_json::json!({ "fqdn": "mine.example.org" });
    loopback["backends"] = serde_json::json!(["127.0.0.1:80"]);
    // The chain's error carries the spec rule (InvalidSpec(GatewayBackendNotAllowed)); the
    // same rule, shared with the chain, names it here.
    let loopback = gateway_only(loopback)?;
    ensure!(
        loopback.validate() == Err(zos_primitives::spec::SpecError::GatewayBackendNotAllowed),
        "{:?}",
        loopback.validate()
    );
    let (charlie, dave) = (dev::charlie(), dev::dave());
    let (name_taken, loopback_refused) = tokio::try_join!(
        refused(api, &taken, node, &charlie),
        refused(api, &loopback, node, &dave),
    )?;
    ensure!(name_taken.contains("GatewayHostTaken"), "{name_taken}");
    ensure!(
        loopback_refused.contains("InvalidSpec"),
        "{loopback_refused}"
    );
    let failed = until_state(api, node, wrong_dns, &executor, |s| {
        matches!(s, ContractState::Failed(_))
    })
    .await?;
    let ContractState::Failed(failure) = failed else {
        unreachable!()
    };
    let reason = String::from_utf8_lossy(&failure.reason).into_owned();
    eprintln!("a domain pointing elsewhere: {reason}");
    ensure!(reason.contains("203.0.113.9"), "{reason}");

    // ---- the bytes through the gateway are the contract's public traffic
    let (fetched, big, err) = https("myapp.gw.example.com", "big");
    ensure!(
        fetched && big.len() == BIG_FILE_BYTES,
        "big file: {} bytes, {err}",
        big.len()
    );
    let billed = POLLING
        .until("the traffic billed", Duration::from_secs(120), || async {
            let reports = settled_reports(api, from_block, contract).await?;
            let bytes: u64 = reports.iter().map(|r| r.bytes_in + r.bytes_out).sum();
            Ok((bytes > BIG_FILE_BYTES as u64).then_some(bytes))
        })
        .await
        .with_context(|| executor.log_tail())?;
    eprintln!("public traffic billed for the contract: {billed} bytes");

    // ---- cancelling ends the route and frees the name
    cancel(api, contract, POLLING).await?;
    POLLING
        .until("the route gone", Duration::from_secs(60), || async {
            Ok((!https("myapp.gw.example.com", "index.html").0).then_some(()))
        })
        .await
        .with_context(|| executor.log_tail())?;
    let mut again = backend(false);
    again["host"] = serde_json::json!({ "name": "myapp" });
    again["backends"] = serde_json::json!(["198.51.100.20:80"]);
    // The domain that failed its check on this node was freed on chain: its real owner (here
    // another account) claims it on the same node.
    let (again, eve, bob) = (gateway_only(again)?, dev::eve(), dev::bob());
    tokio::try_join!(
        single_signer_contract(api, node, &again, &eve),
        single_signer_contract(api, node, &elsewhere, &bob),
    )?;
    Ok(())
}
