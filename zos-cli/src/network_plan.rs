//! Plans a private WireGuard network across several nodes from a short description: one
//! `network` workload per node and a wg-quick config for the deployer's laptop.
//!
//! Pure: the chain inputs (each node's box key and the listen ports its networks already use)
//! and the key source are passed in, so a plan is reproducible in tests.
//!
//! Topology, the way tfgrid's client plans its networks:
//! - node `i` (file order, from 0) serves `a.b.(i+2).0/24` of the `a.b.0.0/16` range; `.1.0/24`
//!   stays unassigned, for a peer added by hand later;
//! - nodes with an endpoint (public nodes) peer with each other directly (full mesh);
//! - nodes without one (hidden, behind NAT) and the laptop peer only with the access node, the
//!   first public node, and dial it; it relays between them and the rest;
//! - the laptop's address is `100.64.b.2/32` (carrier-grade NAT space, unlikely to clash with
//!   the laptop's LAN; `b` is the range's second octet, so two planned networks differ).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;
use zos_primitives::{
    sealing::{box_public_key, seal_wireguard_key},
    spec::{
        DeploymentSpec, Metadata, NetworkSpec, PeerEndpoint, WireguardPeer, Workload, WorkloadKind,
        WorkloadName, MAX_ALLOWED_IPS, MAX_PEERS,
    },
    Ipv4Cidr, NodeId,
};

use crate::{format, specfile::parse_cidr};

/// The first listen port tried on a node (WireGuard's customary port).
pub const FIRST_LISTEN_PORT: u16 = 51820;
/// Third octet of the first node's subnet.
const FIRST_SUBNET_OCTET: u8 = 2;
/// Nodes one plan holds: subnets `.2.0/24` to `.254.0/24`.
pub const MAX_PLAN_NODES: usize = 253;
/// Keeps the laptop's NAT mapping open, so the access node can reach it between its packets.
const LAPTOP_KEEPALIVE_SECS: u16 = 25;

/// The plan file (TOML).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// Name of the network workload on every node.
    #[serde(default = "default_network_name")]
    pub name: String,
    /// A private /16, e.g. `"10.20.0.0/16"`.
    pub ip_range: String,
    /// Also plan a WireGuard peer for the deployer's laptop.
    #[serde(default = "default_true")]
    pub laptop: bool,
    /// Let the VMs open connections to the internet through their node (masqueraded).
    #[serde(default)]
    pub outbound_internet: bool,
    pub nodes: Vec<PlanNode>,
}

/// One node of the plan file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanNode {
    pub node: NodeId,
    /// Where the other nodes and the laptop reach this node; absent for a node behind NAT.
    #[serde(default)]
    pub endpoint: Option<IpAddr>,
    /// UDP port of the node's WireGuard device (default: the lowest free one from 51820).
    #[serde(default)]
    pub listen_port: Option<u16>,
}

fn default_network_name() -> String {
    "net".into()
}

fn default_true() -> bool {
    true
}

impl PlanFile {
    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| anyhow!("not a valid network plan: {e}"))
    }
}

/// What the chain says about one node.
#[derive(Clone, Debug, Default)]
pub struct NodeInputs {
    /// The node's x25519 box key: its WireGuard key is sealed to it.
    pub box_key: [u8; 32],
    /// Listen ports of the networks the node already runs.
    pub used_ports: Vec<u16>,
}

/// A planned network.
#[derive(Clone, Debug)]
pub struct NetworkPlan {
    pub name: String,
    pub ip_range: Ipv4Cidr,
    /// The node the hidden nodes and the laptop go through; `None` only for a single node
    /// without endpoint and without laptop.
    pub access_node: Option<NodeId>,
    /// In plan file order.
    pub nodes: Vec<PlannedNode>,
    pub laptop: Option<LaptopPlan>,
}

/// One node's part of the network.
#[derive(Clone, Debug)]
pub struct PlannedNode {
    pub node: NodeId,
    pub subnet: Ipv4Cidr,
    pub listen_port: u16,
    /// Where peers reach it; `None` for a hidden node.
    pub endpoint: Option<SocketAddr>,
    /// The node's WireGuard public key in this network.
    pub public_key: [u8; 32],
    /// The `network` workload to add to the node's deployment spec.
    pub workload: Workload,
}

/// The deployer's laptop as a peer of the access node.
#[derive(Clone)]
pub struct LaptopPlan {
    /// A /32.
    pub address: Ipv4Cidr,
    pub public_key: [u8; 32],
    /// wg-quick config; holds the laptop's private key.
    pub wg_quick: Zeroizing<String>,
}

/// Leaves the config out: it holds a private key.
impl std::fmt::Debug for LaptopPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaptopPlan")
            .field("address", &self.address)
            .field("public_key", &base64(&self.public_key))
            .finish_non_exhaustive()
    }
}

/// A fresh WireGuard private key from the OS random number generator.
pub fn random_key() -> Result<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut key[..]).map_err(|e| anyhow!("no randomness: {e}"))?;
    // Clamped as `wg genkey` does, so the key reads like any other WireGuard key (x25519
    // clamps on use anyway).
    key[0] &= 248;
    key[31] = (key[31] & 127) | 64;
    Ok(key)
}

/// A node while planning: what it is before its peers are known.
struct Member {
    node: NodeId,
    subnet: Ipv4Cidr,
    listen_port: u16,
    endpoint: Option<SocketAddr>,
    box_key: [u8; 32],
    secret: Zeroizing<[u8; 32]>,
    public_key: [u8; 32],
}

/// A peer before it is bounded into the spec's types.
struct PeerPlan {
    public_key: [u8; 32],
    endpoint: Option<SocketAddr>,
    allowed_ips: Vec<Ipv4Cidr>,
}

/// Plans the network of `file`. `inputs` holds every node of the file; `new_key` gives a fresh
/// WireGuard private key per call (one per node, then one for the laptop).
pub fn plan(
    file: &PlanFile,
    inputs: &BTreeMap<NodeId, NodeInputs>,
    mut new_key: impl FnMut() -> Result<Zeroizing<[u8; 32]>>,
) -> Result<NetworkPlan> {
    let name = network_name(&file.name)?;
    let ip_range = parse_ip_range(&file.ip_range)?;
    if file.nodes.is_empty() {
        bail!("the plan has no [[nodes]]");
    }
    if file.nodes.len() > MAX_PLAN_NODES {
        bail!(
            "the plan has {} nodes; a /16 gives at most {MAX_PLAN_NODES} their own /24",
            file.nodes.len()
        );
    }
    let mut seen = BTreeSet::new();
    for entry in &file.nodes {
        if !seen.insert(entry.node) {
            bail!("node {} is listed twice", entry.node);
        }
    }

    let mut members = Vec::with_capacity(file.nodes.len());
    for (index, entry) in file.nodes.iter().enumerate() {
        let input = inputs
            .get(&entry.node)
            .ok_or_else(|| anyhow!("node {}: its box key is missing", entry.node))?;
        if let Some(ip) = entry.endpoint {
            if ip.is_unspecified() || ip.is_multicast() {
                bail!("node {}: endpoint {ip} is not a node's address", entry.node);
            }
        }
        let listen_port = choose_listen_port(entry, &input.used_ports)?;
        let secret = new_key().with_context(|| format!("node {}: a WireGuard key", entry.node))?;
        let public_key = box_public_key(&secret);
        members.push(Member {
            node: entry.node,
            subnet: node_subnet(ip_range, index)?,
            listen_port,
            endpoint: entry.endpoint.map(|ip| SocketAddr::new(ip, listen_port)),
            box_key: input.box_key,
            secret,
            public_key,
        });
    }

    let access = members.iter().position(|m| m.endpoint.is_some());
    if access.is_none() && (members.len() > 1 || file.laptop) {
        bail!(
            "no node has an endpoint: hidden nodes{} reach the network through a node others can \
             dial; give at least one node `endpoint = \"<its public IP>\"`",
            if file.laptop { " and the laptop" } else { "" }
        );
    }
    let laptop_key = if file.laptop {
        let secret = new_key().context("the laptop's WireGuard key")?;
        let public_key = box_public_key(&secret);
        Some((laptop_address(ip_range), secret, public_key))
    } else {
        None
    };
    let laptop_peer = laptop_key
        .as_ref()
        .map(|(address, _, public_key)| (*address, *public_key));

    let mut nodes = Vec::with_capacity(members.len());
    for (index, me) in members.iter().enumerate() {
        let peers = peers_of(index, &members, access, ip_range, laptop_peer);
        let network = NetworkSpec {
            ip_range,
            subnet: me.subnet,
            listen_port: me.listen_port,
            peers: bounded(spec_peers(me.node, peers)?, |count| {
                anyhow!("node {}: {count} peers do not fit", me.node)
            })?,
            private_key: seal_wireguard_key(&me.box_key, &me.secret).with_context(|| {
                format!("node {}: sealing its WireGuard key to its box key", me.node)
            })?,
            outbound_internet: file.outbound_internet,
        };
        let workload = Workload {
            name: name.clone(),
            kind: WorkloadKind::Network(network),
        };
        check_as_the_chain_does(&workload).with_context(|| format!("node {}", me.node))?;
        nodes.push(PlannedNode {
            node: me.node,
            subnet: me.subnet,
            listen_port: me.listen_port,
            endpoint: me.endpoint,
            public_key: me.public_key,
            workload,
        });
    }

    let laptop = match (laptop_key, access) {
        (Some((address, secret, public_key)), Some(a)) => Some(LaptopPlan {
            address,
            public_key,
            wg_quick: laptop_config(&file.name, ip_range, address, &secret, &members[a])?,
        }),
        _ => None,
    };
    Ok(NetworkPlan {
        name: file.name.clone(),
        ip_range,
        access_node: access.map(|a| members[a].node),
        nodes,
        laptop,
    })
}

/// The peers of `members[index]`.
///
/// WireGuard sends a destination to the one peer whose allowed IPs hold it, so the access
/// node's peer entry on every other node carries everything reached through it: the hidden
/// nodes' subnets and the laptop.
fn peers_of(
    index: usize,
    members: &[Member],
    access: Option<usize>,
    ip_range: Ipv4Cidr,
    laptop: Option<(Ipv4Cidr, [u8; 32])>,
) -> Vec<PeerPlan> {
    let me = &members[index];
    let laptop_address = laptop.map(|(address, _)| address);
    let Some(access) = access else {
        return Vec::new();
    };
    if me.endpoint.is_none() {
        // Hidden: one peer, the access node, which it dials; the whole range lies behind it.
        let hub = &members[access];
        return vec![PeerPlan {
            public_key: hub.public_key,
            endpoint: hub.endpoint,
            allowed_ips: std::iter::once(ip_range).chain(laptop_address).collect(),
        }];
    }
    let hidden_subnets = || {
        members
            .iter()
            .filter(|m| m.endpoint.is_none())
            .map(|m| m.subnet)
    };
    let mut peers = Vec::new();
    for (j, other) in members.iter().enumerate() {
        if j == index {
            continue;
        }
        match other.endpoint {
            Some(endpoint) => {
                let mut allowed_ips = vec![other.subnet];
                if j == access {
                    allowed_ips.extend(hidden_subnets());
                    allowed_ips.extend(laptop_address);
                }
                peers.push(PeerPlan {
                    public_key: other.public_key,
                    endpoint: Some(endpoint),
                    allowed_ips,
                });
            }
            // A hidden node dials the access node only.
            None if index == access => peers.push(PeerPlan {
                public_key: other.public_key,
                endpoint: None,
                allowed_ips: vec![other.subnet],
            }),
            None => {}
        }
    }
    if index == access {
        if let Some((address, public_key)) = laptop {
            peers.push(PeerPlan {
                public_key,
                endpoint: None,
                allowed_ips: vec![address],
            });
        }
    }
    peers
}

/// The peers in the spec's bounded types, refusing clearly what does not fit.
fn spec_peers(node: NodeId, peers: Vec<PeerPlan>) -> Result<Vec<WireguardPeer>> {
    if peers.len() > MAX_PEERS as usize {
        bail!(
            "node {node}: it would have {} peers, at most {MAX_PEERS} fit",
            peers.len()
        );
    }
    peers
        .into_iter()
        .map(|p| -> Result<WireguardPeer> {
            Ok(WireguardPeer {
                public_key: p.public_key,
                endpoint: p.endpoint.map(peer_endpoint),
                allowed_ips: bounded(p.allowed_ips, |subnets| {
                    anyhow!(
                        "node {node}: a peer would route {subnets} subnets, at most \
                         {MAX_ALLOWED_IPS} fit; give more nodes an endpoint or plan fewer \
                         hidden nodes"
                    )
                })?,
            })
        })
        .collect()
}

/// `items` as one of the spec's bounded vectors; `too_many` explains a refusal by length.
fn bounded<T, B: TryFrom<Vec<T>>>(
    items: Vec<T>,
    too_many: impl FnOnce(usize) -> anyhow::Error,
) -> Result<B> {
    let len = items.len();
    B::try_from(items).map_err(|_| too_many(len))
}

/// Checks the workload with the chain's own rules, as a one-workload spec.
fn check_as_the_chain_does(workload: &Workload) -> Result<()> {
    let spec = DeploymentSpec {
        version: 0,
        workloads: bounded(vec![workload.clone()], |_| {
            anyhow!("one workload does not fit in a spec")
        })?,
        metadata: Metadata::default(),
    };
    spec.validate()
        .map_err(|e| anyhow!("the network workload breaks a chain rule: {e:?}"))
}

fn network_name(name: &str) -> Result<WorkloadName> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if !valid {
        bail!("network name {name:?} must be made of [a-z0-9_-]");
    }
    WorkloadName::try_from(name).map_err(|_| {
        anyhow!(
            "network name {name:?} is longer than {} bytes",
            WorkloadName::MAX_LEN
        )
    })
}

fn parse_ip_range(text: &str) -> Result<Ipv4Cidr> {
    let range = parse_cidr(text).context("ip_range")?;
    let private = matches!(range.ip, [10, ..] | [192, 168, ..])
        || matches!(range.ip, [172, b, ..] if (16..=31).contains(&b));
    if range.prefix_len != 16 || range.network() != range.ip || !private {
        bail!(
            "ip_range {text:?} must be a private /16 written as its network address, \
             e.g. \"10.20.0.0/16\""
        );
    }
    Ok(range)
}

fn choose_listen_port(entry: &PlanNode, used: &[u16]) -> Result<u16> {
    match entry.listen_port {
        Some(0) => bail!("node {}: listen_port 0 is not a port", entry.node),
        Some(port) if used.contains(&port) => bail!(
            "node {}: listen port {port} is already used by another network on that node; \
             pick another or leave listen_port out",
            entry.node
        ),
        Some(port) => Ok(port),
        None => (FIRST_LISTEN_PORT..=u16::MAX)
            .find(|port| !used.contains(port))
            .ok_or_else(|| {
                anyhow!(
                    "node {}: no free listen port from {FIRST_LISTEN_PORT} up",
                    entry.node
                )
            }),
    }
}

fn node_subnet(ip_range: Ipv4Cidr, index: usize) -> Result<Ipv4Cidr> {
    let third = index
        .checked_add(usize::from(FIRST_SUBNET_OCTET))
        .and_then(|octet| u8::try_from(octet).ok())
        .filter(|octet| *octet < 255)
        .ok_or_else(|| anyhow!("no /24 left for the node at position {}", index + 1))?;
    let [a, b, ..] = ip_range.ip;
    Ok(Ipv4Cidr {
        ip: [a, b, third, 0],
        prefix_len: 24,
    })
}

fn laptop_address(ip_range: Ipv4Cidr) -> Ipv4Cidr {
    Ipv4Cidr {
        ip: [100, 64, ip_range.ip[1], 2],
        prefix_len: 32,
    }
}

fn peer_endpoint(addr: SocketAddr) -> PeerEndpoint {
    match addr {
        SocketAddr::V4(a) => PeerEndpoint::V4 {
            ip: a.ip().octets(),
            port: a.port(),
        },
        SocketAddr::V6(a) => PeerEndpoint::V6 {
            ip: a.ip().octets(),
            port: a.port(),
        },
    }
}

fn laptop_config(
    name: &str,
    ip_range: Ipv4Cidr,
    address: Ipv4Cidr,
    secret: &[u8; 32],
    access: &Member,
) -> Result<Zeroizing<String>> {
    let endpoint = access
        .endpoint
        .ok_or_else(|| anyhow!("the access node has no endpoint"))?;
    let private_key = Zeroizing::new(base64(secret));
    Ok(Zeroizing::new(format!(
        "# Network {name:?} ({range}) through node {node}.\n\
         # Start it with `wg-quick up ./<file>.conf` (the file name becomes the interface name).\n\
         [Interface]\n\
         PrivateKey = {key}\n\
         Address = {address}\n\
         \n\
         [Peer]\n\
         PublicKey = {peer}\n\
         Endpoint = {endpoint}\n\
         AllowedIPs = {range}\n\
         PersistentKeepalive = {LAPTOP_KEEPALIVE_SECS}\n",
        range = format::cidr(&ip_range),
        node = access.node,
        key = private_key.as_str(),
        address = format::cidr(&address),
        peer = base64(&access.public_key),
    )))
}

/// The workload as a `[[workloads]]` TOML table, in the shape of a spec file.
#[derive(Serialize)]
struct WorkloadsTable<'a> {
    workloads: &'a [Workload],
}

impl PlannedNode {
    /// The node's workload as TOML to merge into its deployment spec, with a comment saying
    /// how VMs attach to it.
    pub fn toml_snippet(&self, plan: &NetworkPlan) -> Result<String> {
        let body = toml::to_string(&WorkloadsTable {
            workloads: std::slice::from_ref(&self.workload),
        })
        .context("writing the network workload as TOML")?;
        let reach = match (self.endpoint, plan.access_node) {
            (Some(endpoint), _) => format!("reached at {endpoint}"),
            (None, Some(access)) => format!("hidden, reached through node {access}"),
            (None, None) => "no peers".to_string(),
        };
        let [a, b, c, _] = self.subnet.ip;
        Ok(format!(
            "# Network {name:?} on node {node}: subnet {subnet}, UDP port {port}, {reach}.\n\
             # Add this workload to the node's deployment spec; attach VMs with an address of\n\
             # the subnet other than .0, .1 (the gateway) and .255, e.g.\n\
             #   networks = [{{ network = {name:?}, ip = \"{a}.{b}.{c}.2\" }}]\n\
             {body}",
            name = plan.name,
            node = self.node,
            subnet = format::cidr(&self.subnet),
            port = self.listen_port,
        ))
    }
}

/// Standard base64 with padding (RFC 4648), the text form WireGuard tools use for keys.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let group = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        for i in 0..4 {
            if i <= chunk.len() {
                let sextet = (group >> (18 - 6 * i)) & 0x3f;
                out.push(char::from(ALPHABET[sextet as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use zos_primitives::sealing::{generate_box_keypair, open_wireguard_key};

    const THREE_NODES: &str = r#"
        ip_range = "10.20.0.0/16"

        [[nodes]]
        node = 1
        endpoint = "198.51.100.3"

        [[nodes]]
        node = 2
        endpoint = "198.51.100.6"
        listen_port = 51900

        [[nodes]]
        node = 3
    "#;

    /// Distinct, predictable keys: `[1; 32]`, `[2; 32]`, ... in the order `plan` asks.
    fn counting_keys() -> impl FnMut() -> Result<Zeroizing<[u8; 32]>> {
        let mut next = 0u8;
        move || {
            next += 1;
            Ok(Zeroizing::new([next; 32]))
        }
    }

    fn cidr(text: &str) -> Ipv4Cidr {
        parse_cidr(text).unwrap()
    }

    fn network(node: &PlannedNode) -> &NetworkSpec {
        node.workload.as_network().expect("a network workload")
    }

    /// Box key pairs for nodes 1-3, and the inputs `plan` gets from the chain.
    fn chain_inputs(
        used_ports: [Vec<u16>; 3],
    ) -> (
        BTreeMap<NodeId, Zeroizing<[u8; 32]>>,
        BTreeMap<NodeId, NodeInputs>,
    ) {
        let mut secrets = BTreeMap::new();
        let mut inputs = BTreeMap::new();
        for (node, used_ports) in (1..=3).zip(used_ports) {
            let (secret, box_key) = generate_box_keypair();
            secrets.insert(node, secret);
            inputs.insert(
                node,
                NodeInputs {
                    box_key,
                    used_ports,
                },
            );
        }
        (secrets, inputs)
    }

    fn overlap(a: &Ipv4Cidr, b: &Ipv4Cidr) -> bool {
        a.contains(b.network()) || b.contains(a.network())
    }

    #[test]
    fn plans_a_mesh_of_public_nodes_with_a_hidden_node_and_a_laptop() {
        let file = PlanFile::parse(THREE_NODES).unwrap();
        assert_eq!(file.name, "net");
        assert!(file.laptop);
        let (secrets, inputs) = chain_inputs([vec![51820, 51821], vec![51820], vec![]]);
        let plan = plan(&file, &inputs, counting_keys()).unwrap();

        assert_eq!(plan.access_node, Some(1));
        let [n1, n2, n3] = &plan.nodes[..] else {
            panic!("three nodes planned")
        };
        assert_eq!([n1.node, n2.node, n3.node], [1, 2, 3], "file order");
        assert_eq!(n1.subnet, cidr("10.20.2.0/24"));
        assert_eq!(n2.subnet, cidr("10.20.3.0/24"));
        assert_eq!(n3.subnet, cidr("10.20.4.0/24"));
        // Lowest free port from 51820; an explicit free port is kept.
        assert_eq!(n1.listen_port, 51822);
        assert_eq!(n2.listen_port, 51900);
        assert_eq!(n3.listen_port, 51820);
        assert_eq!(n1.endpoint, Some("198.51.100.3:51822".parse().unwrap()));
        assert_eq!(n3.endpoint, None);

        let laptop = plan.laptop.as_ref().expect("a laptop");
        let laptop_ip = cidr("100.64.20.2/32");
        assert_eq!(laptop.address, laptop_ip);
        let n1_endpoint = Some(PeerEndpoint::V4 {
            ip: [198, 51, 100, 3],
            port: 51822,
        });
        let n2_endpoint = Some(PeerEndpoint::V4 {
            ip: [198, 51, 100, 6],
            port: 51900,
        });
        let peers = |n: &PlannedNode| -> Vec<([u8; 32], Option<PeerEndpoint>, Vec<Ipv4Cidr>)> {
            network(n)
                .peers
                .iter()
                .map(|p| (p.public_key, p.endpoint, p.allowed_ips.to_vec()))
                .collect()
        };
        // The access node: the other public node, the hidden node and the laptop dial in.
        assert_eq!(
            peers(n1),
            vec![
                (n2.public_key, n2_endpoint, vec![cidr("10.20.3.0/24")]),
                (n3.public_key, None, vec![cidr("10.20.4.0/24")]),
                (laptop.public_key, None, vec![laptop_ip]),
            ]
        );
        // Another public node reaches the hidden node and the laptop through the access node.
        assert_eq!(
            peers(n2),
            vec![(
                n1.public_key,
                n1_endpoint,
                vec![cidr("10.20.2.0/24"), cidr("10.20.4.0/24"), laptop_ip]
            )]
        );
        // The hidden node dials the access node for everything.
        assert_eq!(
            peers(n3),
            vec![(
                n1.public_key,
                n1_endpoint,
                vec![cidr("10.20.0.0/16"), laptop_ip]
            )]
        );

        for n in &plan.nodes {
            let net = network(n);
            assert_eq!(net.ip_range, cidr("10.20.0.0/16"));
            assert_eq!(net.subnet, n.subnet);
            assert_eq!(net.listen_port, n.listen_port);
            // No destination is claimed by two peers of one device.
            for (i, a) in net.peers.iter().enumerate() {
                for b in net.peers.iter().skip(i + 1) {
                    for x in a.allowed_ips.iter() {
                        for y in b.allowed_ips.iter() {
                            assert!(!overlap(x, y), "node {}: {x:?} and {y:?}", n.node);
                        }
                    }
                }
            }
            check_as_the_chain_does(&n.workload).unwrap();
            // Only the node opens its key, and it is the key behind the announced public key.
            let opened = open_wireguard_key(&secrets[&n.node], &net.private_key).unwrap();
            assert_eq!(box_public_key(&opened), n.public_key);
            let other = if n.node == 1 { 2 } else { 1 };
            assert!(open_wireguard_key(&secrets[&other], &net.private_key).is_err());
        }
        assert_eq!(n1.public_key, box_public_key(&[1; 32]));

        let config = laptop.wg_quick.as_str();
        assert!(
            config.contains("Endpoint = 198.51.100.3:51822\n"),
            "{config}"
        );
        assert!(config.contains("AllowedIPs = 10.20.0.0/16\n"), "{config}");
        assert!(config.contains("Address = 100.64.20.2/32\n"), "{config}");
        assert!(config.contains("PersistentKeepalive = 25\n"), "{config}");
        assert!(config.contains(&format!("PublicKey = {}\n", base64(&n1.public_key))));
        // Keys are asked per node in file order, then for the laptop.
        assert!(config.contains(&format!("PrivateKey = {}\n", base64(&[4; 32]))));
        assert_eq!(laptop.public_key, box_public_key(&[4; 32]));
    }

    #[test]
    fn node_snippets_read_back_as_spec_workloads() {
        let file = PlanFile::parse(THREE_NODES).unwrap();
        let (_, inputs) = chain_inputs([vec![], vec![], vec![]]);
        let plan = plan(&file, &inputs, counting_keys()).unwrap();
        for n in &plan.nodes {
            let snippet = n.toml_snippet(&plan).unwrap();
            assert!(snippet.contains("[[workloads]]"), "{snippet}");
            let spec: DeploymentSpec = toml::from_str(&format!("version = 0\n{snippet}"))
                .unwrap_or_else(|e| panic!("{e}\n{snippet}"));
            assert_eq!(spec.workloads.to_vec(), vec![n.workload.clone()]);
            spec.validate().unwrap();
        }
    }

    #[test]
    fn a_taken_listen_port_is_refused() {
        let file = PlanFile::parse(THREE_NODES).unwrap();
        let (_, inputs) = chain_inputs([vec![], vec![51900], vec![]]);
        let err = plan(&file, &inputs, counting_keys()).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("node 2") && text.contains("51900"), "{text}");
    }

    #[test]
    fn hidden_nodes_or_a_laptop_need_a_node_with_an_endpoint() {
        let (_, inputs) = chain_inputs([vec![], vec![], vec![]]);
        let laptop_only =
            PlanFile::parse("ip_range = \"10.20.0.0/16\"\n[[nodes]]\nnode = 1\n").unwrap();
        let err = format!(
            "{:#}",
            plan(&laptop_only, &inputs, counting_keys()).unwrap_err()
        );
        assert!(err.contains("no node has an endpoint"), "{err}");

        let two_hidden = PlanFile::parse(
            "ip_range = \"10.20.0.0/16\"\nlaptop = false\n[[nodes]]\nnode = 1\n[[nodes]]\nnode = 2\n",
        )
        .unwrap();
        let err = format!(
            "{:#}",
            plan(&two_hidden, &inputs, counting_keys()).unwrap_err()
        );
        assert!(err.contains("no node has an endpoint"), "{err}");

        // One node alone needs nobody: a network of its own VMs.
        let alone =
            PlanFile::parse("ip_range = \"10.20.0.0/16\"\nlaptop = false\n[[nodes]]\nnode = 1\n")
                .unwrap();
        let plan = plan(&alone, &inputs, counting_keys()).unwrap();
        assert!(network(&plan.nodes[0]).peers.is_empty());
        assert!(plan.laptop.is_none());
        assert_eq!(plan.access_node, None);
    }

    #[test]
    fn bad_plans_are_refused_with_the_reason() {
        let (_, inputs) = chain_inputs([vec![], vec![], vec![]]);
        let refuse = |text: &str, why: &str| {
            let err = match PlanFile::parse(text) {
                Ok(file) => format!("{:#}", plan(&file, &inputs, counting_keys()).unwrap_err()),
                Err(e) => format!("{e:#}"),
            };
            assert!(err.contains(why), "{text}: {err}");
        };
        let node = "[[nodes]]\nnode = 1\nendpoint = \"198.51.100.3\"\n";
        refuse(
            &format!("ip_range = \"10.20.1.0/16\"\n{node}"),
            "private /16",
        );
        refuse(&format!("ip_range = \"8.8.0.0/16\"\n{node}"), "private /16");
        refuse(&format!("ip_range = \"10.0.0.0/8\"\n{node}"), "private /16");
        refuse(&format!("ip_range = \"10.20.0.0\"\n{node}"), "ip_range");
        refuse(
            &format!("name = \"My Net\"\nip_range = \"10.20.0.0/16\"\n{node}"),
            "[a-z0-9_-]",
        );
        refuse("ip_range = \"10.20.0.0/16\"\nnodes = []\n", "no [[nodes]]");
        refuse(
            &format!("ip_range = \"10.20.0.0/16\"\n{node}{node}"),
            "listed twice",
        );
        refuse(
            &format!("ip_range = \"10.20.0.0/16\"\n{node}listen_port = 0\n"),
            "not a port",
        );
        refuse(
            "ip_range = \"10.20.0.0/16\"\n[[nodes]]\nnode = 9\nendpoint = \"198.51.100.3\"\n",
            "node 9",
        );
        refuse(
            &format!("ip_range = \"10.20.0.0/16\"\nsubnet = \"10.20.1.0/24\"\n{node}"),
            "unknown field",
        );
    }

    #[test]
    fn ipv6_endpoints_are_bracketed_for_wg_quick() {
        let file = PlanFile::parse(
            "ip_range = \"10.20.0.0/16\"\n[[nodes]]\nnode = 1\nendpoint = \"2001:db8::1\"\n",
        )
        .unwrap();
        let (_, inputs) = chain_inputs([vec![], vec![], vec![]]);
        let plan = plan(&file, &inputs, counting_keys()).unwrap();
        let config = plan.laptop.as_ref().unwrap().wg_quick.as_str();
        assert!(
            config.contains("Endpoint = [2001:db8::1]:51820\n"),
            "{config}"
        );
    }

    #[test]
    fn the_example_plan_plans() {
        let file = PlanFile::parse(include_str!("../../examples/network-plan.toml")).unwrap();
        let (_, inputs) = chain_inputs([vec![], vec![], vec![]]);
        let plan = plan(&file, &inputs, counting_keys()).unwrap();
        assert_eq!(plan.access_node, Some(1));
        assert_eq!(plan.nodes[1].listen_port, 51830);
        assert_eq!(plan.nodes[2].endpoint, None);
        assert!(plan.laptop.is_some());
    }

    #[test]
    fn base64_matches_the_standard() {
        // RFC 4648 test vectors.
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        // The all-zero WireGuard key, as `wg` prints it.
        assert_eq!(
            base64(&[0u8; 32]),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        );
        assert_eq!(
            base64(&[0xffu8; 32]),
            "//////////////////////////////////////////8="
        );
    }

    #[test]
    fn random_keys_are_clamped_and_differ() {
        let a = random_key().unwrap();
        let b = random_key().unwrap();
        assert_ne!(*a, *b);
        assert_eq!(a[0] & 7, 0);
        assert_eq!(a[31] & 0xc0, 0x40);
    }
}
