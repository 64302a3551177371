//! `zos-overlay`: joins the overlay with a key file and routes the overlay prefix through a
//! TUN device, so any program reaches any participant's key-derived address.

use std::{path::PathBuf, time::Duration};

use anyhow::Result;
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use zos_image::store::{open_store, DirStore};
use zos_overlay::{identity, objects::PeerStore, tun, Config, Overlay};

#[derive(Parser)]
#[command(name = "zos-overlay", about = "The key-addressed overlay network")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Prints the peer id and overlay address of the key (created when absent).
    Id {
        #[arg(long, env = "ZOS_OVERLAY_KEY")]
        key: PathBuf,
    },
    /// Joins the overlay and routes 400::/7 through a TUN device until stopped.
    #[command(alias = "run")]
    Up {
        /// The identity key file (created, 0600, when absent).
        #[arg(long, env = "ZOS_OVERLAY_KEY")]
        key: PathBuf,
        /// Where to accept peers; repeat for more.
        #[arg(
            long,
            default_values = ["/ip4/0.0.0.0/tcp/9651", "/ip4/0.0.0.0/udp/9651/quic-v1"]
        )]
        listen: Vec<Multiaddr>,
        /// A peer to join through (`.../p2p/<peer id>`); repeat for more.
        #[arg(long)]
        peer: Vec<Multiaddr>,
        /// The TUN device's name.
        #[arg(long, default_value = "zos-overlay")]
        tun: String,
        /// A network namespace (under /run/netns, created when missing) to move the TUN
        /// device into: a grid node routes its VMs' overlay addresses there (the executor's
        /// `--overlay-netns`), so IPv6 forwarding stays off in the node's own namespace.
        #[arg(long)]
        tun_netns: Option<String>,
        /// Ask the DHT without answering for it (a laptop).
        #[arg(long)]
        client: bool,
        /// A relay to hold a reservation on (`.../p2p/<peer id>`) unless peers can dial this
        /// participant (AutoNAT finds it reachable); repeat for more.
        #[arg(long)]
        relay: Vec<Multiaddr>,
        /// Relay circuits for participants behind NAT (a node with a public address).
        #[arg(long)]
        relay_server: bool,
        /// The TUN device's MTU.
        #[arg(long, default_value_t = tun::MTU)]
        mtu: u32,
        /// The distributed hub: a directory store whose image objects are served to peers and
        /// announced, and where objects fetched through `--hub-listen` are kept.
        #[arg(long)]
        hub_store: Option<PathBuf>,
        /// Serve a read-only hub here (for `zos-image --store http://ADDR`) that answers from
        /// the hub store, then overlay peers, then the `--upstream` hubs. Needs --hub-store.
        #[arg(long, requires = "hub_store")]
        hub_listen: Option<std::net::SocketAddr>,
        /// A hub asked when no peer has an object; repeat for more.
        #[arg(long)]
        upstream: Vec<String>,
        /// A key (file or hex, as zos-image takes it) whose image signatures are taken from
        /// peers; without one, signatures come from the hubs only. Repeat for more.
        #[arg(long)]
        trust: Vec<String>,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p=warn,netlink_packet_route=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Id { key } => {
            let key = identity::load_or_create(&key)?;
            let subnet = identity::subnet_of_key(&key.public())
                .expect("load_or_create only returns ed25519 keys");
            println!("peer {}", key.public().to_peer_id());
            println!("address {}", subnet.host());
            println!("subnet {subnet}");
            Ok(())
        }
        Command::Up {
            key,
            listen,
            peer,
            tun,
            tun_netns,
            client,
            relay,
            relay_server,
            mtu,
            hub_store,
            hub_listen,
            upstream,
            trust,
        } => {
            let keypair = identity::load_or_create(&key)?;
            let store = hub_store
                .map(|dir| {
                    std::fs::create_dir_all(&dir)?;
                    anyhow::Ok(std::sync::Arc::new(DirStore::open(&dir)?))
                })
                .transpose()?;
            let mut overlay = Overlay::start(Config {
                keypair,
                listen,
                bootstrap: peer,
                client,
                relays: relay,
                relay_server,
                objects: store.clone(),
            })
            .await?;
            let device = tun::Tun::create(&tun, overlay.subnet, mtu, tun_netns.as_deref()).await?;
            println!(
                "up {} peer {} tun {tun}",
                overlay.address(),
                overlay.peer_id
            );
            if let (Some(addr), Some(store)) = (hub_listen, store) {
                let upstream = upstream
                    .iter()
                    .map(|u| open_store(u, None))
                    .collect::<Result<Vec<_>, _>>()?;
                let trusted = trust
                    .iter()
                    .map(|k| zos_image::sign::load_verifying_key(k))
                    .collect::<Result<Vec<_>, _>>()?;
                let peers = PeerStore::new(
                    (*store).clone(),
                    overlay.objects(),
                    upstream,
                    trusted,
                    tokio::runtime::Handle::current(),
                );
                let listener = tokio::net::TcpListener::bind(addr).await?;
                println!("hub http://{}", listener.local_addr()?);
                let router = zos_image::hub::read_only_router(std::sync::Arc::new(peers));
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, router).await {
                        tracing::error!("the local hub stopped: {e}");
                    }
                });
            }
            let from_overlay =
                std::mem::replace(&mut overlay.from_overlay, tokio::sync::mpsc::channel(1).1);
            let pump = tun::pump(device, overlay.to_overlay.clone(), from_overlay);
            let stats = overlay.stats.clone();
            let report = async {
                let mut last = String::new();
                loop {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let now = stats.summary();
                    if now != last {
                        tracing::info!("{now}");
                        last = now;
                    }
                }
            };
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                result = pump => result?,
                () = report => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping: {}", overlay.stats.summary());
            Ok(())
        }
    }
}
