//! One overlay participant: a libp2p swarm (TCP or QUIC; noise, yamux; identify, ping,
//! Kademlia; relay v2 and DCUtR) that carries IPv6 packets between participants on one stream
//! per peer, and finds the peer owning a /64 through a Kademlia record: the owner's public key
//! (checked against the subnet it claims, so a forged record routes nothing) and the addresses
//! to dial it at, its relayed ones included, so a participant behind NAT is reachable through
//! a relay and then, when hole punching succeeds, directly.
//!
//! The participant is a pair of channels: packets written to [`Overlay::to_overlay`] leave
//! (they must come from this participant's /64), and checked packets for this participant
//! arrive on [`Overlay::from_overlay`]. The TUN device is a thin edge on top ([`crate::tun`]).

use std::{
    collections::HashMap,
    net::Ipv6Addr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::{
    autonat::{self, NatStatus},
    core::{transport::ListenerId, upgrade::Version},
    identify,
    identity::Keypair,
    kad::{
        self, store::MemoryStore, GetProvidersOk, GetRecordOk, Mode, QueryId, QueryResult, Quorum,
        Record,
    },
    multiaddr::Protocol,
    noise, ping,
    swarm::{behaviour::toggle::Toggle, dial_opts::DialOpts, NetworkBehaviour, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm, Transport,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    address::NodeSubnet,
    identity::{public_key_of_peer, subnet_of_key, subnet_of_peer},
    objects::{
        provider_key, serve_objects, stored_objects, ObjectClient, ObjectCommand,
        MAX_ANNOUNCED_AT_START, MAX_PROVIDERS_ASKED, OBJECT_PROTOCOL,
    },
    packet::{self, FrameDecoder, PacketError},
};

/// The stream protocol carrying framed packets.
pub const PACKET_PROTOCOL: StreamProtocol = StreamProtocol::new("/zos-overlay/packets/1");
/// The overlay's own Kademlia network (apart from the chain's).
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/zos-overlay/kad/1");
const IDENTIFY_PROTOCOL: &str = "/zos-overlay/1";
const RECORD_PREFIX: &[u8] = b"/zos-overlay/subnet/";
/// How often a participant publishes its record again and refreshes its routing table.
const REPUBLISH: Duration = Duration::from_secs(60);
/// A destination that could not be found is looked up again after this long at the earliest.
const LOOKUP_THROTTLE: Duration = Duration::from_secs(2);
/// Packets queued per peer link before new ones are dropped (a router drops, never blocks).
const LINK_QUEUE: usize = 1024;
/// Destinations looked up recently, at most (bounds the memory a flood of new ones takes).
const MAX_LOOKUPS_REMEMBERED: usize = 4096;
/// How long an object request waits for its peer to be found.
const PARKED_FOR: Duration = Duration::from_secs(10);
/// AutoNAT: the first reachability probe after start, probes while the answer is unsure,
/// and probes once it is sure.
const NAT_PROBE_FIRST: Duration = Duration::from_secs(2);
const NAT_PROBE_RETRY: Duration = Duration::from_secs(10);
const NAT_PROBE_REFRESH: Duration = Duration::from_secs(300);
/// How often a lost relay reservation is asked for again.
const RESERVE_RETRY: Duration = Duration::from_secs(5);
/// Addresses a record carries at most, and the longest one.
const MAX_RECORD_ADDRESSES: usize = 8;
const MAX_ADDRESS_LEN: usize = 255;

/// What a participant is configured with.
pub struct Config {
    pub keypair: Keypair,
    /// Addresses to listen on (`/ip4/0.0.0.0/tcp/9651`, ...).
    pub listen: Vec<Multiaddr>,
    /// Peers to join through, each ending in `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// A client (a laptop) asks the DHT but does not answer for it.
    pub client: bool,
    /// Relays (`.../p2p/<peer id>`) to hold a reservation on, so that peers reach this
    /// participant through them when it is behind NAT.
    pub relays: Vec<Multiaddr>,
    /// Relay circuits for other participants (a node with a public address).
    pub relay_server: bool,
    /// The image objects this participant serves to peers and announces (see
    /// [`crate::objects`]).
    pub objects: Option<Arc<zos_image::store::DirStore>>,
}

/// Counters of what passed and what was dropped, and why.
#[derive(Debug, Default)]
pub struct Stats {
    /// Packets handed to a peer link.
    pub sent: AtomicU64,
    /// Packets from peers delivered to this participant.
    pub received: AtomicU64,
    /// From a peer, with a source outside that peer's /64.
    pub dropped_spoofed: AtomicU64,
    /// From a peer, malformed (not IPv6, bad length, an empty frame).
    pub dropped_malformed: AtomicU64,
    /// From a peer, for an address that is not this participant's.
    pub dropped_not_ours: AtomicU64,
    /// Leaving, with a source outside this participant's /64.
    pub dropped_foreign_source: AtomicU64,
    /// Leaving, for a /64 whose owner is not (yet) connected, or outside the overlay.
    pub dropped_no_route: AtomicU64,
    /// Leaving, with the peer link's queue full.
    pub dropped_queue_full: AtomicU64,
}

impl Stats {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A one-line summary for logs.
    pub fn summary(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "sent {} received {} dropped: spoofed {} malformed {} not-ours {} foreign-source {} no-route {} queue-full {}",
            g(&self.sent),
            g(&self.received),
            g(&self.dropped_spoofed),
            g(&self.dropped_malformed),
            g(&self.dropped_not_ours),
            g(&self.dropped_foreign_source),
            g(&self.dropped_no_route),
            g(&self.dropped_queue_full),
        )
    }
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<MemoryStore>,
    relay_client: libp2p_relay::client::Behaviour,
    relay: Toggle<libp2p_relay::Behaviour>,
    dcutr: libp2p_dcutr::Behaviour,
    stream: libp2p_stream::Behaviour,
    autonat: autonat::Behaviour,
}

/// A running participant.
pub struct Overlay {
    pub peer_id: PeerId,
    pub subnet: NodeSubnet,
    pub stats: Arc<Stats>,
    /// Packets leaving this participant.
    pub to_overlay: mpsc::Sender<Vec<u8>>,
    /// Checked packets for this participant.
    pub from_overlay: mpsc::Receiver<Vec<u8>>,
    /// The addresses the swarm listens on, as they become known.
    pub listening: watch::Receiver<Vec<Multiaddr>>,
    /// The peers with an open connection.
    pub connected: watch::Receiver<Vec<PeerId>>,
    objects: ObjectClient,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Overlay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Peer links by the /64 their peer owns.
type Routes = Arc<Mutex<HashMap<NodeSubnet, mpsc::Sender<Vec<u8>>>>>;

enum Command {
    /// Find and connect the owner of a /64.
    Find(NodeSubnet),
}

impl Overlay {
    /// Starts the participant on the current tokio runtime.
    pub async fn start(config: Config) -> Result<Self> {
        let peer_id = config.keypair.public().to_peer_id();
        let subnet = subnet_of_key(&config.keypair.public())
            .context("the overlay key must be an ed25519 key")?;
        let mut swarm = build_swarm(config.keypair.clone(), config.client, config.relay_server)?;
        for relay in &config.relays {
            anyhow::ensure!(
                matches!(relay.iter().last(), Some(Protocol::P2p(_))),
                "relay address {relay} does not end in /p2p/<peer id>"
            );
        }
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .with_context(|| format!("listening on {addr}"))?;
        }
        for addr in &config.bootstrap {
            let Some(Protocol::P2p(peer)) = addr.iter().last() else {
                anyhow::bail!("bootstrap address {addr} does not end in /p2p/<peer id>");
            };
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            swarm
                .dial(addr.clone())
                .with_context(|| format!("dialing {addr}"))?;
        }

        let stats = Arc::new(Stats::default());
        let routes: Routes = Arc::default();
        let (to_overlay, outbound) = mpsc::channel(LINK_QUEUE);
        let (deliver, from_overlay) = mpsc::channel(LINK_QUEUE);
        let (commands, command_rx) = mpsc::channel(64);
        let (object_commands, object_rx) = mpsc::channel(256);
        let (listening_tx, listening) = watch::channel(Vec::new());
        let (connected_tx, connected) = watch::channel(Vec::new());

        let mut control = swarm.behaviour().stream.new_control();
        let incoming = control
            .accept(PACKET_PROTOCOL)
            .context("registering the packet protocol")?;
        let object_client = ObjectClient {
            commands: object_commands.clone(),
            control: control.clone(),
            connected: connected.clone(),
        };
        let mut tasks = Vec::new();
        if let Some(store) = config.objects.clone() {
            // A participant without a store does not take object streams at all: askers see
            // the protocol refused and go on.
            let requests = control
                .accept(OBJECT_PROTOCOL)
                .context("registering the object protocol")?;
            tasks.push(tokio::spawn(serve_objects(requests, store)));
        }
        tasks.push(tokio::spawn(
            SwarmLoop {
                swarm,
                subnet,
                keypair: config.keypair,
                routes: routes.clone(),
                control,
                listening: listening_tx,
                connected: connected_tx,
                wanted: HashMap::new(),
                relays: config.relays,
                reservations: HashMap::new(),
                nat: NatStatus::Unknown,
                client: config.client,
                advertised: Vec::new(),
                store: config.objects,
                object_commands: object_commands.clone(),
                provider_queries: HashMap::new(),
                announced: false,
                parked: Vec::new(),
            }
            .run(command_rx, object_rx),
        ));
        tasks.push(tokio::spawn(route_outbound(
            outbound,
            subnet,
            routes,
            commands,
            stats.clone(),
        )));
        tasks.push(tokio::spawn(accept_inbound(
            incoming,
            subnet,
            deliver,
            stats.clone(),
        )));
        Ok(Self {
            peer_id,
            subnet,
            stats,
            to_overlay,
            from_overlay,
            listening,
            connected,
            objects: object_client,
            tasks,
        })
    }

    /// This participant's own overlay address (`<subnet>::1`).
    pub fn address(&self) -> Ipv6Addr {
        self.subnet.host()
    }

    /// The object exchange (the distributed hub), for a [`crate::objects::PeerStore`].
    pub fn objects(&self) -> ObjectClient {
        self.objects.clone()
    }
}

/// A relay serves whole overlay links, not just a hole-punching handshake: no byte limit, and
/// circuits last an hour (then the peers reconnect).
fn relay_config() -> libp2p_relay::Config {
    libp2p_relay::Config {
        max_circuits: 64,
        max_circuits_per_peer: 8,
        max_circuit_duration: Duration::from_secs(3600),
        max_circuit_bytes: 0,
        ..Default::default()
    }
}

/// Every participant asks its peers to dial it back (and dials back for them), to learn
/// whether it is reachable or behind NAT. Private addresses count: farms run on private LANs
/// too, and a server only dials back the IP address a request came from.
fn nat_probe_config() -> autonat::Config {
    autonat::Config {
        timeout: Duration::from_secs(10),
        boot_delay: NAT_PROBE_FIRST,
        retry_interval: NAT_PROBE_RETRY,
        refresh_interval: NAT_PROBE_REFRESH,
        throttle_server_period: NAT_PROBE_RETRY,
        only_global_ips: false,
        ..Default::default()
    }
}

fn build_swarm(keypair: Keypair, client: bool, relay_server: bool) -> Result<Swarm<Behaviour>> {
    let (relay_transport, relay_client) = libp2p_relay::client::new(keypair.public().to_peer_id());
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .context("building the TCP transport")?
        .with_other_transport(|key| {
            libp2p_quic::tokio::Transport::new(libp2p_quic::Config::new(key))
        })
        .context("building the QUIC transport")?
        .with_other_transport(
            |key| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
                Ok(relay_transport
                    .upgrade(Version::V1Lazy)
                    .authenticate(noise::Config::new(key)?)
                    .multiplex(yamux::Config::default()))
            },
        )
        .context("building the relayed transport")?
        .with_dns()
        .context("building the DNS resolver")?
        .with_behaviour(|key| {
            let peer = key.public().to_peer_id();
            let mut kad_config = kad::Config::new(KAD_PROTOCOL);
            kad_config.set_query_timeout(Duration::from_secs(30));
            kad_config.set_provider_publication_interval(Some(Duration::from_secs(600)));
            // Room to announce a large store's objects, and others' records within bounds.
            let store = MemoryStore::with_config(
                peer,
                kad::store::MemoryStoreConfig {
                    max_records: 4096,
                    max_value_bytes: 4096,
                    max_providers_per_key: kad::K_VALUE.get(),
                    max_provided_keys: 2 * crate::objects::MAX_ANNOUNCED_AT_START,
                },
            );
            let mut kad = kad::Behaviour::with_config(peer, store, kad_config);
            // Nodes answer DHT queries and laptops only ask; a node AutoNAT finds behind NAT
            // becomes a client too (see `on_nat_status`).
            kad.set_mode(Some(if client { Mode::Client } else { Mode::Server }));
            Behaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_PROTOCOL.into(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
                kad,
                relay_client,
                relay: Toggle::from(
                    relay_server.then(|| libp2p_relay::Behaviour::new(peer, relay_config())),
                ),
                dcutr: libp2p_dcutr::Behaviour::new(peer),
                stream: libp2p_stream::Behaviour::new(),
                autonat: autonat::Behaviour::new(peer, nat_probe_config()),
            }
        })
        .context("building the overlay behaviour")?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    Ok(swarm)
}

fn record_key(subnet: &NodeSubnet) -> kad::RecordKey {
    let mut key = RECORD_PREFIX.to_vec();
    key.extend_from_slice(&subnet.host().octets()[..8]);
    kad::RecordKey::new(&key)
}

/// The /64 a record key names.
fn subnet_of_record_key(key: &kad::RecordKey) -> Option<NodeSubnet> {
    let bits = key.as_ref().strip_prefix(RECORD_PREFIX)?;
    let bits: [u8; 8] = bits.try_into().ok()?;
    let mut octets = [0u8; 16];
    octets[..8].copy_from_slice(&bits);
    NodeSubnet::of_address(&Ipv6Addr::from(octets))
}

struct SwarmLoop {
    swarm: Swarm<Behaviour>,
    subnet: NodeSubnet,
    keypair: Keypair,
    routes: Routes,
    control: libp2p_stream::Control,
    listening: watch::Sender<Vec<Multiaddr>>,
    connected: watch::Sender<Vec<PeerId>>,
    /// Peers found by a lookup that are still to be dialed once their addresses are known.
    wanted: HashMap<PeerId, Instant>,
    /// Relays to hold a reservation on.
    relays: Vec<Multiaddr>,
    /// The relay circuits this participant listens on.
    reservations: HashMap<ListenerId, Multiaddr>,
    /// Whether peers can dial this participant, as AutoNAT last found.
    nat: NatStatus,
    /// Configured as a DHT client (a laptop): never answers DHT queries.
    client: bool,
    /// The addresses this participant's record gives out.
    advertised: Vec<Multiaddr>,
    /// The image objects served to peers.
    store: Option<Arc<zos_image::store::DirStore>>,
    /// For announcements of the store's objects, listed off the event loop.
    object_commands: mpsc::Sender<ObjectCommand>,
    provider_queries: HashMap<QueryId, (oneshot::Sender<Vec<PeerId>>, Vec<PeerId>)>,
    /// Whether the store's objects were announced (once there are peers to tell).
    announced: bool,
    /// Object requests waiting for their peer to be found and connected.
    parked: Vec<(PeerId, oneshot::Sender<()>, Instant)>,
}

impl SwarmLoop {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut object_commands: mpsc::Receiver<ObjectCommand>,
    ) {
        let mut republish = tokio::time::interval(REPUBLISH);
        let mut reserve = tokio::time::interval(RESERVE_RETRY);
        loop {
            tokio::select! {
                _ = reserve.tick() => {
                    self.reserve();
                    // Requests whose peer was not found in time get no answer.
                    self.parked.retain(|(_, _, since)| since.elapsed() < PARKED_FOR);
                }
                Some(command) = object_commands.recv() => self.on_object_command(command),
                event = self.swarm.select_next_some() => self.on_event(event),
                Some(command) = commands.recv() => match command {
                    Command::Find(subnet) => {
                        self.swarm.behaviour_mut().kad.get_record(record_key(&subnet));
                    }
                },
                _ = republish.tick() => self.publish(),
            }
        }
    }

    /// Publishes "this /64 belongs to this key" and refreshes the routing table.
    fn publish(&mut self) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let Ok(public) = self.keypair.public().try_into_ed25519() else {
            return;
        };
        let value = encode_record(&public.to_bytes(), &self.advertised);
        let record = Record::new(record_key(&self.subnet), value);
        if let Err(e) = kad.put_record(record, Quorum::One) {
            tracing::warn!("storing the overlay record: {e}");
        }
        let _ = kad.bootstrap();
    }

    fn on_object_command(&mut self, command: ObjectCommand) {
        match command {
            ObjectCommand::Providers(object, reply) => {
                let query = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(provider_key(object));
                self.provider_queries.insert(query, (reply, Vec::new()));
            }
            ObjectCommand::Reach(peer, reply) => {
                if self.swarm.is_connected(&peer) || self.swarm.dial(peer).is_ok() {
                    let _ = reply.send(());
                } else {
                    // A provider whose addresses are unknown here: find it, then ask.
                    self.parked.push((peer, reply, Instant::now()));
                    self.wanted.insert(peer, Instant::now());
                    self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                }
            }
            // Only what is served is announced: a participant without a store would send
            // askers to a peer that refuses them.
            ObjectCommand::Announce(_) if self.store.is_none() => {}
            ObjectCommand::Announce(object) => {
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(provider_key(object))
                {
                    tracing::debug!("announcing {}: {e}", object.rel_path());
                }
            }
        }
    }

    /// Lets the object requests that waited for `peer` go on.
    fn send_parked(&mut self, peer: PeerId) {
        let (ready, waiting) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(p, ..)| *p == peer);
        self.parked = waiting;
        for (_, reply, _) in ready {
            let _ = reply.send(());
        }
    }

    /// Announces every object of the store (bounded), once peers are there to hear it.
    fn announce_store(&mut self) {
        let Some(store) = self.store.clone() else {
            return;
        };
        self.announced = true;
        let commands = self.object_commands.clone();
        tokio::spawn(async move {
            let objects = tokio::task::spawn_blocking(move || stored_objects(&store))
                .await
                .unwrap_or_default();
            for object in objects.into_iter().take(MAX_ANNOUNCED_AT_START) {
                if commands
                    .send(ObjectCommand::Announce(object))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    /// Asks each configured relay for a reservation this participant does not hold.
    fn reserve(&mut self) {
        if self.nat.is_public() {
            // Dialed directly: a relay would only add a hop.
            return;
        }
        for relay in self.relays.clone() {
            if self.reservations.values().any(|r| *r == relay) {
                continue;
            }
            match self
                .swarm
                .listen_on(relay.clone().with(Protocol::P2pCircuit))
            {
                Ok(id) => {
                    self.reservations.insert(id, relay);
                }
                Err(e) => tracing::warn!(%relay, "asking for a relay reservation: {e}"),
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                if advertisable(&address) && !self.advertised.contains(&address) {
                    if self.swarm.behaviour().relay.is_enabled() && !is_relayed(&address) {
                        // A relay tells its clients where it is reached: its own addresses,
                        // which a relay (configured on a public address) vouches for.
                        self.swarm.add_external_address(address.clone());
                    }
                    // A relayed address is the one that works behind NAT: it goes first.
                    if is_relayed(&address) {
                        self.advertised.insert(0, address.clone());
                    } else {
                        self.advertised.push(address.clone());
                    }
                    self.advertised.truncate(MAX_RECORD_ADDRESSES);
                    self.publish();
                }
                self.listening.send_modify(|l| l.push(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                if self.advertised.contains(&address) {
                    self.advertised.retain(|a| *a != address);
                    self.publish();
                }
                self.listening.send_modify(|l| l.retain(|a| *a != address));
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(relay) = self.reservations.remove(&listener_id) {
                    if self.nat.is_public() {
                        tracing::info!(%relay, "relay reservation dropped: reachable directly");
                    } else {
                        tracing::info!(%relay, ?reason, "relay reservation lost");
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::RelayClient(
                libp2p_relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => tracing::info!(relay = %relay_peer_id, "relay reservation accepted"),
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(libp2p_dcutr::Event {
                remote_peer_id,
                result,
            })) => match result {
                Ok(_) => tracing::info!(peer = %remote_peer_id, "hole punched: direct connection"),
                Err(e) => tracing::info!(peer = %remote_peer_id, "hole punching failed: {e}"),
            },
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                endpoint,
                ..
            } => {
                // A link whose task ended is replaced (add_link keeps a live one).
                self.add_link(peer_id);
                if num_established.get() == 1 {
                    tracing::info!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connected");
                    let is_relay = |r: &Multiaddr| r.iter().last() == Some(Protocol::P2p(peer_id));
                    if self.relays.iter().any(is_relay) {
                        // Reachable again through it at once, not at the next retry.
                        self.reserve();
                    }
                    self.publish_connected();
                    if self.wanted.is_empty() && self.swarm.connected_peers().count() == 1 {
                        // The first peer: join the DHT and announce ourselves.
                        self.publish();
                    }
                    if !self.announced {
                        self.announce_store();
                    }
                    self.send_parked(peer_id);
                }
                self.wanted.remove(&peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                cause,
                ..
            } => {
                tracing::info!(peer = %peer_id, ?cause, "disconnected");
                if let Some(subnet) = subnet_of_peer(&peer_id) {
                    self.routes.lock().unwrap().remove(&subnet);
                }
                self.publish_connected();
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                tracing::debug!(?peer_id, "dial failed: {error}");
                if let Some(peer) = peer_id.filter(|p| self.wanted.contains_key(p)) {
                    // No usable address yet: ask the DHT where the peer is.
                    self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => self.on_nat_status(new),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if info.protocols.contains(&KAD_PROTOCOL) {
                    for addr in info.listen_addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result,
                ..
            })) => self.on_query(id, result),
            _ => {}
        }
    }

    /// Reachable: relay reservations are dropped and the DHT is served. Behind NAT: peers
    /// could not dial the addresses a node would give out for the DHT, so it only asks, and it
    /// is reached through its relays.
    fn on_nat_status(&mut self, status: NatStatus) {
        match &status {
            NatStatus::Public(address) => {
                tracing::info!(%address, "NAT status: publicly reachable");
                for listener in self.reservations.keys().copied().collect::<Vec<_>>() {
                    self.swarm.remove_listener(listener);
                }
            }
            NatStatus::Private => tracing::info!("NAT status: behind NAT, reached through relays"),
            NatStatus::Unknown => tracing::info!("NAT status: unknown"),
        }
        let serve_dht = !self.client && !matches!(status, NatStatus::Private);
        self.swarm.behaviour_mut().kad.set_mode(Some(if serve_dht {
            Mode::Server
        } else {
            Mode::Client
        }));
        self.nat = status;
        self.reserve();
    }

    fn on_query(&mut self, id: QueryId, result: QueryResult) {
        match result {
            QueryResult::GetProviders(result) => {
                let me = *self.swarm.local_peer_id();
                let Some((_, found)) = self.provider_queries.get_mut(&id) else {
                    return;
                };
                let done = match result {
                    Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                        for p in providers {
                            if p != me && !found.contains(&p) {
                                found.push(p);
                            }
                        }
                        found.len() >= MAX_PROVIDERS_ASKED
                    }
                    // Finished with no more providers, or failed.
                    _ => true,
                };
                // Enough to choose from, or all there is: a fetch asks them one by one.
                if done {
                    if let Some((reply, found)) = self.provider_queries.remove(&id) {
                        let _ = reply.send(found);
                    }
                    if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                        query.finish();
                    }
                }
            }
            QueryResult::GetRecord(Ok(GetRecordOk::FoundRecord(found))) => {
                let record = found.record;
                let Some(subnet) = subnet_of_record_key(&record.key) else {
                    return;
                };
                // Only the key that owns the /64 is believed; its addresses are hints (the
                // connection authenticates the key).
                let Some((peer, addresses)) = decode_record(&subnet, &record.value) else {
                    tracing::warn!(%subnet, "a record names a key that does not own the subnet");
                    return;
                };
                if peer == *self.swarm.local_peer_id() || self.swarm.is_connected(&peer) {
                    return;
                }
                tracing::info!(%subnet, %peer, ?addresses, "found the owner of a subnet");
                self.wanted.insert(peer, Instant::now());
                let opts = DialOpts::peer_id(peer)
                    .addresses(addresses)
                    .extend_addresses_through_behaviour()
                    .build();
                if self.swarm.dial(opts).is_err() {
                    self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                }
            }
            QueryResult::GetClosestPeers(Ok(ok)) => {
                for info in ok.peers {
                    if self.wanted.contains_key(&info.peer_id) && !info.addrs.is_empty() {
                        let opts = DialOpts::peer_id(info.peer_id)
                            .addresses(info.addrs)
                            .build();
                        if let Err(e) = self.swarm.dial(opts) {
                            tracing::debug!(peer = %info.peer_id, "dial: {e}");
                        }
                    }
                }
                self.wanted
                    .retain(|_, since| since.elapsed() < Duration::from_secs(60));
            }
            QueryResult::PutRecord(Err(e)) => tracing::debug!("publishing the record: {e}"),
            _ => {}
        }
    }

    fn publish_connected(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        self.connected.send_replace(peers);
    }

    /// A link to a newly connected peer: a queue and a task writing it to one stream.
    fn add_link(&mut self, peer: PeerId) {
        let Some(subnet) = subnet_of_peer(&peer) else {
            tracing::debug!(%peer, "not an ed25519 peer: no overlay subnet");
            return;
        };
        let mut routes = self.routes.lock().unwrap();
        if routes.get(&subnet).is_some_and(|tx| !tx.is_closed()) {
            return;
        }
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        routes.insert(subnet, tx);
        tokio::spawn(peer_link(peer, self.control.clone(), rx));
    }
}

fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// Whether others could dial `addr`: not loopback, not unspecified.
fn advertisable(addr: &Multiaddr) -> bool {
    !addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback() || ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_loopback() || ip.is_unspecified(),
        _ => false,
    })
}

/// A subnet record's value: the 32-byte public key, then each address as a length byte and
/// its bytes.
fn encode_record(public_key: &[u8; 32], addresses: &[Multiaddr]) -> Vec<u8> {
    let mut value = public_key.to_vec();
    for addr in addresses.iter().take(MAX_RECORD_ADDRESSES) {
        let bytes = addr.to_vec();
        if bytes.len() <= MAX_ADDRESS_LEN {
            value.push(bytes.len() as u8);
            value.extend_from_slice(&bytes);
        }
    }
    value
}

/// The peer owning `subnet` and where to dial it, if `value` starts with a public key that
/// owns the subnet. Unreadable addresses are skipped, and at most [`MAX_RECORD_ADDRESSES`]
/// are read.
fn decode_record(subnet: &NodeSubnet, value: &[u8]) -> Option<(PeerId, Vec<Multiaddr>)> {
    let key: [u8; 32] = value.get(..32)?.try_into().ok()?;
    if NodeSubnet::of_key(&key) != *subnet {
        return None;
    }
    let public = libp2p::identity::ed25519::PublicKey::try_from_bytes(&key).ok()?;
    let public = libp2p::identity::PublicKey::from(public);
    let peer = public.to_peer_id();
    debug_assert_eq!(public_key_of_peer(&peer), Some(public));
    let mut rest = &value[32..];
    let mut addresses = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let Some(bytes) = tail.get(..len as usize) else {
            break;
        };
        if let Ok(addr) = Multiaddr::try_from(bytes.to_vec()) {
            addresses.push(addr);
        }
        rest = &tail[len as usize..];
        if addresses.len() == MAX_RECORD_ADDRESSES {
            break;
        }
    }
    Some((peer, addresses))
}

/// Writes the queued packets to one stream to `peer`, opening it again when it breaks. Ends
/// when the route is removed (the queue's sender dropped) or the peer cannot be reached.
async fn peer_link(
    peer: PeerId,
    mut control: libp2p_stream::Control,
    mut queue: mpsc::Receiver<Vec<u8>>,
) {
    let mut failures = 0u32;
    'streams: loop {
        // The route is removed (the queue's sender dropped) when the peer disconnects; until
        // then a stream that cannot be opened is tried again, never given up.
        if queue.is_closed() {
            return;
        }
        let mut stream = match control.open_stream(peer, PACKET_PROTOCOL).await {
            Ok(stream) => stream,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::debug!(%peer, "opening a packet stream: {e}");
                tokio::time::sleep(Duration::from_millis(100 << failures.min(5))).await;
                continue;
            }
        };
        failures = 0;
        let mut batch = Vec::with_capacity(64 * 1024);
        loop {
            let Some(packet) = queue.recv().await else {
                return;
            };
            batch.clear();
            batch.extend_from_slice(&packet::frame(&packet));
            // Whatever else is already queued goes in the same write.
            while batch.len() < 60 * 1024 {
                match queue.try_recv() {
                    Ok(packet) => batch.extend_from_slice(&packet::frame(&packet)),
                    Err(_) => break,
                }
            }
            if let Err(e) = async {
                stream.write_all(&batch).await?;
                stream.flush().await
            }
            .await
            {
                tracing::debug!(%peer, "packet stream broke: {e}");
                continue 'streams;
            }
        }
    }
}

/// Sends each packet leaving this participant to the peer owning its destination.
async fn route_outbound(
    mut outbound: mpsc::Receiver<Vec<u8>>,
    subnet: NodeSubnet,
    routes: Routes,
    commands: mpsc::Sender<Command>,
    stats: Arc<Stats>,
) {
    let mut looked_up: HashMap<NodeSubnet, Instant> = HashMap::new();
    while let Some(packet) = outbound.recv().await {
        let Ok((source, destination)) = packet::addresses(&packet) else {
            Stats::bump(&stats.dropped_malformed);
            continue;
        };
        if packet.len() > packet::MAX_PACKET {
            Stats::bump(&stats.dropped_malformed);
            continue;
        }
        let Some(target) = NodeSubnet::of_address(&destination) else {
            // Not for the overlay (the kernel's own link-local and multicast traffic).
            Stats::bump(&stats.dropped_no_route);
            continue;
        };
        if !subnet.contains(&source) {
            Stats::bump(&stats.dropped_foreign_source);
            continue;
        }
        if target == subnet {
            // Our own /64 but no local address or route for it: handing it back to the kernel
            // would loop it (through forwarding) until its hop limit runs out.
            Stats::bump(&stats.dropped_no_route);
            continue;
        }
        let link = routes.lock().unwrap().get(&target).cloned();
        match link.map(|tx| tx.try_send(packet)) {
            Some(Ok(())) => Stats::bump(&stats.sent),
            Some(Err(mpsc::error::TrySendError::Full(_))) => Stats::bump(&stats.dropped_queue_full),
            Some(Err(mpsc::error::TrySendError::Closed(_))) | None => {
                Stats::bump(&stats.dropped_no_route);
                let due = looked_up
                    .get(&target)
                    .is_none_or(|at| at.elapsed() >= LOOKUP_THROTTLE);
                if due {
                    if looked_up.len() >= MAX_LOOKUPS_REMEMBERED {
                        looked_up.retain(|_, at| at.elapsed() < LOOKUP_THROTTLE);
                    }
                    // Past the bound (a flood of new destinations), no more lookups for now;
                    // the channel to the swarm bounds the lookups in flight.
                    if looked_up.len() < MAX_LOOKUPS_REMEMBERED {
                        looked_up.insert(target, Instant::now());
                        let _ = commands.try_send(Command::Find(target));
                    }
                }
            }
        }
    }
}

/// Reads every peer's packet streams, delivering what passes the checks.
async fn accept_inbound(
    mut incoming: libp2p_stream::IncomingStreams,
    subnet: NodeSubnet,
    deliver: mpsc::Sender<Vec<u8>>,
    stats: Arc<Stats>,
) {
    // One reader per peer: a peer opens a new stream when its last one broke, so the newest
    // replaces the old one, and no peer holds more than one stream's buffers.
    let mut readers: HashMap<PeerId, tokio::task::JoinHandle<()>> = HashMap::new();
    while let Some((peer, stream)) = incoming.next().await {
        let Some(peer_subnet) = subnet_of_peer(&peer) else {
            continue;
        };
        readers.retain(|_, reader| !reader.is_finished());
        let reader = tokio::spawn(read_stream(
            stream,
            peer_subnet,
            subnet,
            deliver.clone(),
            stats.clone(),
        ));
        if let Some(old) = readers.insert(peer, reader) {
            old.abort();
        }
    }
}

/// Why a packet from a peer is not delivered, if it is not.
pub fn check_inbound(packet: &[u8], peer: NodeSubnet, ours: NodeSubnet) -> Result<(), PacketError> {
    let destination = packet::check_from_peer(packet, peer)?;
    if !ours.contains(&destination) {
        return Err(PacketError::NotOurs(destination));
    }
    Ok(())
}

async fn read_stream(
    mut stream: libp2p::Stream,
    peer: NodeSubnet,
    ours: NodeSubnet,
    deliver: mpsc::Sender<Vec<u8>>,
    stats: Arc<Stats>,
) {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        decoder.push(&buf[..n]);
        loop {
            match decoder.next_packet() {
                Ok(Some(packet)) => match check_inbound(&packet, peer, ours) {
                    Ok(()) => {
                        Stats::bump(&stats.received);
                        if deliver.send(packet).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%peer, "dropped: {e}");
                        Stats::bump(match e {
                            PacketError::Spoofed { .. } => &stats.dropped_spoofed,
                            PacketError::NotOurs(_) | PacketError::NotOverlay(_) => {
                                &stats.dropped_not_ours
                            }
                            _ => &stats.dropped_malformed,
                        });
                    }
                },
                Ok(None) => break,
                Err(_) => {
                    // A peer that breaks the framing loses the stream.
                    Stats::bump(&stats.dropped_malformed);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_key_names_its_subnet_and_nothing_else() {
        let s = NodeSubnet::of_key(&[3; 32]);
        assert_eq!(subnet_of_record_key(&record_key(&s)), Some(s));
        assert_eq!(
            subnet_of_record_key(&kad::RecordKey::new(&b"/other/12345678")),
            None
        );
        let mut short = RECORD_PREFIX.to_vec();
        short.extend_from_slice(&[4; 7]);
        assert_eq!(subnet_of_record_key(&kad::RecordKey::new(&short)), None);
    }

    #[test]
    fn only_the_key_that_owns_a_subnet_is_believed_with_its_addresses() {
        let owner = Keypair::generate_ed25519();
        let other = Keypair::generate_ed25519();
        let subnet = subnet_of_key(&owner.public()).unwrap();
        let key = |k: &Keypair| k.public().try_into_ed25519().unwrap().to_bytes();
        let addrs: Vec<Multiaddr> = vec![
            "/ip4/198.51.100.1/tcp/9651".parse().unwrap(),
            "/ip4/198.51.100.1/tcp/9651/p2p/12D3KooWKvQHDTKCK5YYNJNcFpDD3oNiTqwP1FRq6mG7LgYKi367/p2p-circuit"
                .parse()
                .unwrap(),
        ];
        let value = encode_record(&key(&owner), &addrs);
        assert_eq!(
            decode_record(&subnet, &value),
            Some((owner.public().to_peer_id(), addrs.clone()))
        );
        assert_eq!(
            decode_record(&subnet, &encode_record(&key(&other), &addrs)),
            None
        );
        assert_eq!(decode_record(&subnet, b"short"), None);
        // A key alone, garbage addresses, a truncated address: the key still counts.
        assert_eq!(
            decode_record(&subnet, &key(&owner)),
            Some((owner.public().to_peer_id(), vec![]))
        );
        let mut garbage = key(&owner).to_vec();
        garbage.extend_from_slice(&[3, 0xff, 0xff, 0xff, 200, 1, 2]);
        assert_eq!(
            decode_record(&subnet, &garbage),
            Some((owner.public().to_peer_id(), vec![]))
        );
        // At most eight addresses are read, and loopback ones are never given out.
        let many: Vec<Multiaddr> = (0..20)
            .map(|i| format!("/ip4/198.51.100.{i}/tcp/1").parse().unwrap())
            .collect();
        let (_, read) = decode_record(&subnet, &encode_record(&key(&owner), &many)).unwrap();
        assert_eq!(read.len(), MAX_RECORD_ADDRESSES);
        assert!(!advertisable(&"/ip4/127.0.0.1/tcp/1".parse().unwrap()));
        assert!(!advertisable(&"/ip4/0.0.0.0/tcp/1".parse().unwrap()));
        assert!(advertisable(&addrs[1]));
    }
}
