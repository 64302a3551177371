//! Gateway workloads: a host name on a gateway node proxied to the deployer's backends, and
//! the host-name rules the chain, the node and the CLI share.
//!
//! A gateway workload is deployed on a gateway node (a node whose public config has a
//! domain). Its host is either a *name* under that domain (`myapp` becomes
//! `myapp.<domain>`, unique per domain, claimed on chain when the spec passes) or the
//! deployer's own *FQDN*, whose DNS must point at the node (checked by the node, unique per
//! node on chain). Backends are addresses in one of the spec's private networks (the node
//! joins that network) or public addresses; never the node's own.

use super::*;
use crate::{classify_ipv4, classify_ipv6, NodeId, SpecialRange};

/// Backends of one gateway workload.
pub const MAX_GATEWAY_BACKENDS: u32 = 8;
/// Bytes of a gateway name (one DNS label).
pub const MAX_GATEWAY_NAME_LEN: u32 = 63;
/// Bytes of a fully qualified domain name.
pub const MAX_FQDN_LEN: u32 = 253;

bounded_text!(
    /// A name under a gateway node's domain: one DNS label of `[a-z0-9-]`.
    GatewayName,
    MAX_GATEWAY_NAME_LEN
);
bounded_text!(
    /// A deployer's own fully qualified domain name, lowercase.
    Fqdn,
    MAX_FQDN_LEN
);

/// Where clients reach a gateway workload.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(rename_all = "snake_case"))]
pub enum GatewayHost {
    /// `<name>.<the node's domain>`.
    Name(GatewayName),
    /// The deployer's own domain; its DNS must point at the node.
    Fqdn(Fqdn),
}

/// A backend a gateway forwards to: an address and a TCP port. Written `"10.20.1.2:80"` or
/// `"[2001:db8::1]:443"` in spec files.
pub type GatewayBackend = SocketAddress;

/// A host name on a gateway node, proxied to backends.
#[derive(
    Clone, PartialEq, Eq, Encode, Decode, DecodeWithMemTracking, MaxEncodedLen, TypeInfo, Debug,
)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(deny_unknown_fields))]
pub struct GatewaySpec {
    pub host: GatewayHost,
    /// The spec's network workload the backends are in (the node joins it and dials them
    /// from inside); `None`: the backends are public addresses.
    #[cfg_attr(feature = "std", serde(default))]
    pub network: Option<WorkloadName>,
    pub backends: BoundedVec<GatewayBackend, ConstU32<MAX_GATEWAY_BACKENDS>>,
    /// Forward clients' TLS untouched, chosen by SNI (the backend holds the certificate);
    /// otherwise the node terminates TLS with a certificate it obtains for the host.
    #[cfg_attr(feature = "std", serde(default))]
    pub tls_passthrough: bool,
}

/// Whether `label` is one DNS label: 1-63 bytes of `[a-z0-9-]`, not starting or ending with
/// a hyphen. Lowercase only, so one name has one spelling.
pub fn is_valid_dns_label(label: &[u8]) -> bool {
    !label.is_empty()
        && label.len() <= MAX_GATEWAY_NAME_LEN as usize
        && label
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && label.first() != Some(&b'-')
        && label.last() != Some(&b'-')
}

/// Whether `domain` is a lowercase DNS name of at least two valid labels, at most 253 bytes.
pub fn is_valid_fqdn(domain: &[u8]) -> bool {
    domain.len() <= MAX_FQDN_LEN as usize
        && domain.contains(&b'.')
        && domain.split(|c| *c == b'.').all(is_valid_dns_label)
}

/// The full host name clients use: `<name>.<node domain>` or the FQDN. `None` for a name on a
/// node without a domain.
pub fn gateway_full_host(host: &GatewayHost, node_domain: Option<&[u8]>) -> Option<Vec<u8>> {
    match host {
        GatewayHost::Name(name) => {
            let domain = node_domain?;
            let mut full = Vec::with_capacity(name.len() + 1 + domain.len());
            full.extend_from_slice(name.as_bytes());
            full.push(b'.');
            full.extend_from_slice(&domain.to_ascii_lowercase());
            Some(full)
        }
        GatewayHost::Fqdn(fqdn) => Some(fqdn.as_bytes().to_vec()),
    }
}

/// Whether the chain holds `host` as a name under the node's gateway domain: a name, or an
/// FQDN at or under that domain (which spells a name).
pub fn gateway_host_is_name(host: &GatewayHost, node_domain: Option<&[u8]>) -> bool {
    let GatewayHost::Fqdn(fqdn) = host else {
        return true;
    };
    let full = fqdn.as_bytes();
    node_domain.is_some_and(|domain| {
        let domain = domain.to_ascii_lowercase();
        full == domain.as_slice()
            || (full.len() > domain.len()
                && full.ends_with(&domain)
                && full[full.len() - domain.len() - 1] == b'.')
    })
}

/// The chain's key for a claimed host: a name is unique per domain (whichever node serves the
/// domain), an FQDN per node (its DNS decides which node gets the traffic). An FQDN at or under
/// the node's own gateway domain is keyed as the name it spells, so it can never take over a
/// name someone holds. `None` for a name on a node without a domain, or a full host longer
/// than a DNS name may be.
pub fn gateway_host_key(
    node: NodeId,
    host: &GatewayHost,
    node_domain: Option<&[u8]>,
) -> Option<[u8; 32]> {
    let full = gateway_full_host(host, node_domain)?;
    if full.len() > MAX_FQDN_LEN as usize {
        return None;
    }
    let mut preimage = Vec::with_capacity(full.len() + 16);
    if gateway_host_is_name(host, node_domain) {
        preimage.extend_from_slice(b"zos/gw-name/");
    } else {
        preimage.extend_from_slice(b"zos/gw-fqdn/");
        preimage.extend_from_slice(&node.to_le_bytes());
    }
    preimage.extend_from_slice(&full);
    Some(sp_crypto_hashing::blake2_256(&preimage))
}

/// Whether a backend without a network may be dialled: a global unicast address (or a
/// documentation one, which routes nowhere), never loopback, private, link-local and the like.
fn is_public_backend(backend: &GatewayBackend) -> bool {
    let class = match backend {
        GatewayBackend::V4 { ip, .. } => classify_ipv4(*ip),
        GatewayBackend::V6 { ip, .. } => classify_ipv6(*ip),
    };
    matches!(class, None | Some(SpecialRange::Documentation))
}

impl GatewaySpec {
    /// The gateway rules that need only this workload and the spec's networks.
    pub(super) fn check(&self, spec: &DeploymentSpec) -> Result<(), SpecError> {
        use SpecError::*;
        match &self.host {
            GatewayHost::Name(name) => {
                ensure(is_valid_dns_label(name.as_bytes()), InvalidGatewayName)?
            }
            GatewayHost::Fqdn(fqdn) => ensure(is_valid_fqdn(fqdn.as_bytes()), InvalidGatewayFqdn)?,
        }
        ensure(!self.backends.is_empty(), NoGatewayBackends)?;
        let range = match &self.network {
            Some(name) => {
                let net = spec.workload(name).ok_or(UnknownNetwork)?;
                Some(net.as_network().ok_or(NotANetwork)?.ip_range)
            }
            None => None,
        };
        for backend in self.backends.iter() {
            ensure(backend.port() != 0, GatewayBackendNotAllowed)?;
            match (&range, backend) {
                (Some(range), GatewayBackend::V4 { ip, .. }) => {
                    ensure(range.contains(*ip), GatewayBackendOutsideNetwork)?
                }
                (Some(_), GatewayBackend::V6 { .. }) => Err(GatewayBackendOutsideNetwork)?,
                (None, backend) => ensure(is_public_backend(backend), GatewayBackendNotAllowed)?,
            }
        }
        Ok(())
    }
}
