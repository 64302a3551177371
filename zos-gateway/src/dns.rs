//! Whether a deployer's own domain points at this gateway: its A/AAAA records must include one
//! of the gateway's addresses, or the gateway would ask a CA for a certificate it cannot get
//! (and hold a route nobody reaches).

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::{
    config::{NameServerConfigGroup, ResolverConfig, ResolverOpts},
    TokioAsyncResolver,
};

/// Resolves host names with the system's resolver, or with one name server (tests, or a
/// farmer who wants a specific one).
pub struct DomainCheck {
    resolver: TokioAsyncResolver,
}

/// Why a domain is not served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DomainError {
    #[error("{domain} has no address records")]
    NoRecords { domain: String },
    /// The lookup itself failed (timeout, unreachable name server): worth another try.
    #[error("looking up {domain} failed: {reason}")]
    Lookup { domain: String, reason: String },
    #[error("{domain} points at {found}, not at this gateway ({ours})")]
    PointsElsewhere {
        domain: String,
        found: String,
        ours: String,
    },
}

impl DomainCheck {
    pub fn new(name_server: Option<SocketAddr>) -> anyhow::Result<Self> {
        let mut options = ResolverOpts::default();
        // A record just changed by the deployer should be seen at the next try.
        options.cache_size = 0;
        let resolver = match name_server {
            Some(server) => TokioAsyncResolver::tokio(
                ResolverConfig::from_parts(
                    None,
                    vec![],
                    NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true),
                ),
                options,
            ),
            None => {
                let (config, mut system) = hickory_resolver::system_conf::read_system_conf()?;
                system.cache_size = 0;
                TokioAsyncResolver::tokio(config, system)
            }
        };
        Ok(Self { resolver })
    }

    /// `Ok` if `domain` resolves to at least one of `ours`.
    pub async fn points_at(&self, domain: &str, ours: &[IpAddr]) -> Result<(), DomainError> {
        // Absolute: no search domains appended.
        let lookup = self
            .resolver
            .lookup_ip(format!("{domain}."))
            .await
            .map_err(|e| match e.kind() {
                hickory_resolver::error::ResolveErrorKind::NoRecordsFound { .. } => {
                    DomainError::NoRecords {
                        domain: domain.to_string(),
                    }
                }
                _ => DomainError::Lookup {
                    domain: domain.to_string(),
                    reason: e.to_string(),
                },
            })?;
        let found: Vec<IpAddr> = lookup.iter().collect();
        if found.iter().any(|ip| ours.contains(ip)) {
            return Ok(());
        }
        let list = |ips: &[IpAddr]| {
            ips.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        Err(DomainError::PointsElsewhere {
            domain: domain.to_string(),
            found: list(&found),
            ours: list(ours),
        })
    }
}
