//! Gateway driver: a `Gateway` workload becomes a route of this node's web gateway
//! (zos-gateway): its host (a name under the node's domain, or the deployer's FQDN, which must
//! resolve to this gateway) proxied to its backends, dialled from inside the contract's
//! private network when the workload names one. Routes live in memory: after a restart the
//! engine finds them missing and installs them again. A route's client-side bytes are the
//! contract's public traffic, billed like a public IP's.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use tokio::sync::Notify;
use zos_gateway::{DomainCheck, Route, Routes, TlsMode, Zone};
use zos_primitives::{
    spec::{gateway_full_host, GatewayHost, Workload, WorkloadKind},
    ContractId,
};

use super::{
    network::NodeNetworks, CardReading, Driver, DriverError, DriverResult, Observed, Usage,
    WorkloadCtx,
};

/// Client connections one route serves at once.
const MAX_CONNECTIONS_PER_ROUTE: u32 = 1024;

pub struct GatewayDriver {
    routes: Arc<Routes>,
    networks: Option<Arc<NodeNetworks>>,
    domains: DomainCheck,
    /// Where a deployer's FQDN may point besides the node's public addresses: the gateway's
    /// own listen addresses.
    listen_addresses: Vec<IpAddr>,
    /// Woken when a terminated route is added, so its certificate is ordered at once.
    certificates_due: Arc<Notify>,
    /// The gateway domain's name server, when the node answers for its domain: told the
    /// domain and addresses the chain has for the node.
    zone: Option<Arc<Zone>>,
    /// The host each installed workload serves (to remove it whatever the spec says now) and
    /// whether it is paused (grace period: no route, the name kept).
    installed: Mutex<HashMap<(ContractId, Vec<u8>), (String, bool)>>,
}

impl GatewayDriver {
    pub fn new(
        routes: Arc<Routes>,
        networks: Option<Arc<NodeNetworks>>,
        domains: DomainCheck,
        listen_addresses: Vec<IpAddr>,
        certificates_due: Arc<Notify>,
        zone: Option<Arc<Zone>>,
    ) -> Self {
        Self {
            routes,
            networks,
            domains,
            listen_addresses,
            certificates_due,
            zone,
            installed: Mutex::default(),
        }
    }

    /// The node's own addresses: the gateway's specific listen ones, then its public ones on
    /// chain.
    fn own_addresses(&self, ctx: &WorkloadCtx) -> Vec<IpAddr> {
        let mut ours = self.listen_addresses.clone();
        ours.extend(
            ctx.node_addresses
                .iter()
                .filter(|ip| !self.listen_addresses.contains(ip)),
        );
        ours
    }

    fn route(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<Route> {
        let WorkloadKind::Gateway(spec) = &w.kind else {
            return Err(DriverError::permanent("not a gateway workload"));
        };
        let host = gateway_full_host(&spec.host, ctx.node_domain.as_deref().map(str::as_bytes))
            .ok_or_else(|| DriverError::permanent("this node has no gateway domain"))?;
        let host = String::from_utf8(host)
            .map_err(|_| DriverError::permanent("the gateway host is not UTF-8"))?;
        let network = match &spec.network {
            Some(name) => {
                let networks = self
                    .networks
                    .as_ref()
                    .ok_or_else(|| DriverError::permanent("this node runs no private networks"))?;
                let id = networks.naming.network_id(ctx.contract, name.as_bytes());
                Some(networks.netns_path(&id))
            }
            None => None,
        };
        Ok(Route {
            host,
            backends: spec.backends.iter().map(|b| b.socket_addr()).collect(),
            network,
            tls: if spec.tls_passthrough {
                TlsMode::Passthrough
            } else {
                TlsMode::Terminate
            },
            max_connections: MAX_CONNECTIONS_PER_ROUTE,
            contract: ctx.contract,
        })
    }

    fn key(ctx: &WorkloadCtx, w: &Workload) -> (ContractId, Vec<u8>) {
        (ctx.contract, w.name.as_bytes().to_vec())
    }

    fn installed_host(&self, ctx: &WorkloadCtx, w: &Workload) -> Option<(String, bool)> {
        let installed = self.installed.lock().unwrap_or_else(|e| e.into_inner());
        installed.get(&Self::key(ctx, w)).cloned()
    }

    async fn serve(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        let route = self.route(ctx, w)?;
        if let WorkloadKind::Gateway(spec) = &w.kind {
            if matches!(spec.host, GatewayHost::Fqdn(_)) {
                self.domains
                    .points_at(&route.host, &self.own_addresses(ctx))
                    .await
                    .map_err(|e| match e {
                        zos_gateway::DomainError::Lookup { .. } => {
                            DriverError::Transient(anyhow::anyhow!(e))
                        }
                        e => DriverError::permanent(e.to_string()),
                    })?;
            }
        }
        if let Some((old, _)) = self
            .installed_host(ctx, w)
            .filter(|(h, _)| *h != route.host)
        {
            self.routes.remove(&old, ctx.contract);
        }
        if let (Some(zone), Some(domain)) = (&self.zone, &ctx.node_domain) {
            zone.set_domain(domain);
            zone.set_addresses(self.own_addresses(ctx));
        }
        let host = route.host.clone();
        let terminated = route.tls == TlsMode::Terminate;
        self.routes
            .upsert(route)
            .map_err(|e| DriverError::permanent(e.to_string()))?;
        self.installed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(Self::key(ctx, w), (host, false));
        if terminated {
            self.certificates_due.notify_one();
        }
        Ok(())
    }

    /// Stops serving the workload's host; `keep` remembers it as paused.
    fn unserve(&self, ctx: &WorkloadCtx, w: &Workload, keep: bool) {
        let mut installed = self.installed.lock().unwrap_or_else(|e| e.into_inner());
        let host = installed
            .remove(&Self::key(ctx, w))
            .map(|(host, _)| host)
            .or_else(|| self.route(ctx, w).ok().map(|r| r.host));
        if let Some(host) = host {
            self.routes.remove(&host, ctx.contract);
            if keep {
                installed.insert(Self::key(ctx, w), (host, true));
            }
        }
    }
}

#[async_trait]
impl Driver for GatewayDriver {
    fn kind(&self) -> &'static str {
        "gateway"
    }

    async fn install(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        self.serve(ctx, w).await
    }

    async fn update(&self, ctx: &WorkloadCtx, _old: &Workload, new: &Workload) -> DriverResult<()> {
        self.serve(ctx, new).await
    }

    async fn remove(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        self.unserve(ctx, w, false);
        Ok(())
    }

    async fn pause(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        self.unserve(ctx, w, true);
        Ok(())
    }

    async fn resume(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<()> {
        self.serve(ctx, w).await
    }

    async fn inspect(&self, ctx: &WorkloadCtx, w: &Workload) -> DriverResult<Observed> {
        let wanted = self.route(ctx, w)?;
        if let Some((host, true)) = self.installed_host(ctx, w) {
            if host == wanted.host {
                return Ok(Observed::Paused);
            }
        }
        let serving = self.routes.routes().into_iter().any(|r| r == wanted);
        Ok(if serving {
            Observed::Running
        } else {
            Observed::Missing
        })
    }

    async fn usage(&self, _ctx: &WorkloadCtx, _w: &Workload) -> DriverResult<Usage> {
        Ok(Usage::default())
    }

    async fn public_traffic(&self, ctx: &WorkloadCtx, w: &Workload) -> Vec<(Vec<u8>, CardReading)> {
        let card = [b"gateway:", w.name.as_bytes()].concat();
        let reading = self
            .installed_host(ctx, w)
            .and_then(|(host, _)| self.routes.traffic(&host))
            .map(|t| CardReading::Counted {
                bytes_in: t.received,
                bytes_out: t.sent,
            })
            .unwrap_or(CardReading::Absent);
        vec![(card, reading)]
    }
}

/// Starts this node's web gateway (its listeners and, with an ACME directory, its
/// certificate manager) and returns the driver that gives it its routes.
pub async fn start(
    config: &crate::config::GatewayConfig,
    data_dir: &std::path::Path,
    networks: Option<Arc<NodeNetworks>>,
) -> anyhow::Result<GatewayDriver> {
    use anyhow::Context;
    use zos_gateway::{
        AcmeSettings, CertManager, CertStore, Gateway, GatewayLimits, Http01Challenges,
    };

    // Before the listeners: the zone answers nothing until a gateway workload tells it the
    // node's domain.
    let zone = match config.zone_addr {
        Some(addr) => {
            let zone = Zone::new(Vec::new());
            let bound = zos_gateway::zone::serve(zone.clone(), addr)
                .await
                .with_context(|| format!("gateway domain name server address {addr}"))?;
            tracing::info!(%bound, "answering DNS for the gateway domain");
            Some(zone)
        }
        None => None,
    };

    let mut listen: Vec<IpAddr> = [config.https_addr.ip(), config.http_addr.ip()]
        .into_iter()
        .filter(|ip| !ip.is_unspecified())
        .collect();
    listen.dedup();
    let routes = Arc::new(Routes::new(listen.clone()));
    let dir = data_dir.join("gateway");
    let certs = Arc::new(CertStore::open(&dir.join("certs"))?);
    let challenges = Arc::new(Http01Challenges::default());
    let gateway = Gateway::new(
        routes.clone(),
        certs.clone(),
        challenges.clone(),
        GatewayLimits::default(),
        config.public_https_port,
    )?;
    let https = tokio::net::TcpListener::bind(config.https_addr)
        .await
        .with_context(|| format!("gateway HTTPS address {}", config.https_addr))?;
    let http = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("gateway HTTP address {}", config.http_addr))?;
    let serving = gateway.clone();
    tokio::spawn(async move {
        if let Err(e) = serving.serve_https(https).await {
            tracing::error!(error = %e, "gateway HTTPS listener stopped");
        }
    });
    tokio::spawn(async move {
        if let Err(e) = gateway.serve_http(http).await {
            tracing::error!(error = %e, "gateway HTTP listener stopped");
        }
    });
    let certificates_due = Arc::new(Notify::new());
    match &config.acme_directory {
        Some(directory) => {
            let mut settings = AcmeSettings::new(directory.clone());
            settings.server_root = config.acme_root.clone();
            settings.contact = config.acme_contact.iter().cloned().collect();
            let mut manager = CertManager::new(settings, &dir, certs, routes.clone(), challenges);
            if let Some(zone) = &zone {
                manager = manager.with_dns01(zone.clone());
            }
            let manager = Arc::new(manager);
            tokio::spawn(manager.run(
                std::time::Duration::from_secs(3600),
                certificates_due.clone(),
            ));
        }
        None => tracing::warn!(
            "no ACME directory: the gateway terminates TLS only for certificates placed in {}",
            dir.join("certs").display()
        ),
    }
    tracing::info!(https = %config.https_addr, http = %config.http_addr, "web gateway serving");
    Ok(GatewayDriver::new(
        routes,
        networks,
        DomainCheck::new(config.dns)?,
        listen,
        certificates_due,
        zone,
    ))
}
