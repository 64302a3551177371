//! The route table: which backends serve a host name, how TLS is handled, and what each route
//! may use. Replaced atomically; a route's traffic counters survive its updates.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex, RwLock,
    },
};

use hyper::client::conn::http1::SendRequest;
use tokio::sync::{watch, Notify, Semaphore};

use crate::meter::{Traffic, TrafficSnapshot};

/// At most this many backends per route.
pub const MAX_BACKENDS: usize = 8;
/// At most this many idle backend connections kept per route.
pub(crate) const MAX_IDLE_PER_ROUTE: usize = 32;

/// How the gateway treats a route's TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// The gateway holds the certificate, decrypts and proxies HTTP to the backends.
    Terminate,
    /// The gateway forwards the TLS stream, chosen by its SNI, without decrypting: the
    /// backend holds the certificate.
    Passthrough,
}

/// One host name's route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The fully qualified host name (lowercase, no trailing dot).
    pub host: String,
    /// The backends, tried in turn (round robin, next one when a dial fails).
    pub backends: Vec<SocketAddr>,
    /// The network namespace the backends are dialled from (a tenant's private network), or
    /// `None` for the node's own namespace (public or overlay addresses).
    pub network: Option<PathBuf>,
    pub tls: TlsMode,
    /// Client connections served at once; more are refused.
    pub max_connections: u32,
    /// Who the traffic is billed to (the workload contract), for the meter's readers.
    pub contract: u64,
}

/// Why a route is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("`{0}` is not a valid lowercase DNS name")]
    InvalidHost(String),
    #[error("a route needs 1 to {MAX_BACKENDS} backends")]
    BackendCount,
    #[error("backend {0} is a loopback, unspecified, multicast or link-local address, or port 0")]
    BackendNotRoutable(SocketAddr),
    #[error("backend {0} is one of this node's own addresses")]
    BackendIsNode(SocketAddr),
    #[error("max_connections must be at least 1")]
    NoConnections,
    #[error("another contract ({0}) serves this host")]
    HostHeldByAnotherContract(u64),
}

/// Whether `host` is a lowercase DNS name of at least two labels (letters, digits, hyphens;
/// labels of 1-63 bytes not starting or ending with a hyphen; at most 253 bytes).
pub fn is_valid_host(host: &str) -> bool {
    host.len() <= 253
        && host.contains('.')
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Whether a backend address may be dialled at all: never the gateway's own host.
fn is_routable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_link_local()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => {
            let mapped = v6.to_ipv4_mapped().map(|v4| !is_routable(IpAddr::V4(v4)));
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || mapped == Some(true))
        }
    }
}

/// Whether `ip` is an address of this namespace: one can bind to it.
fn is_local_address(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

impl Route {
    /// Checks the route against the rules every route obeys; `node_addresses` are the
    /// gateway's own addresses, which no backend may be.
    pub fn validate(&self, node_addresses: &[IpAddr]) -> Result<(), RouteError> {
        if !is_valid_host(&self.host) {
            return Err(RouteError::InvalidHost(self.host.clone()));
        }
        if self.backends.is_empty() || self.backends.len() > MAX_BACKENDS {
            return Err(RouteError::BackendCount);
        }
        for backend in &self.backends {
            if !is_routable(backend.ip()) || backend.port() == 0 {
                return Err(RouteError::BackendNotRoutable(*backend));
            }
            // Dialled from the node's own namespace, an address the node holds (on any
            // interface, whatever the configuration lists) would reach the node itself.
            if node_addresses.contains(&backend.ip())
                || (self.network.is_none() && is_local_address(backend.ip()))
            {
                return Err(RouteError::BackendIsNode(*backend));
            }
        }
        if self.max_connections == 0 {
            return Err(RouteError::NoConnections);
        }
        Ok(())
    }
}

/// A route with what the gateway keeps for it while it lives.
pub(crate) struct RouteState {
    pub route: Route,
    pub connections: Arc<Semaphore>,
    pub traffic: Arc<Traffic>,
    next_backend: AtomicUsize,
    /// Idle HTTP/1.1 connections to the backends, reused by later requests.
    pub idle: Mutex<Vec<SendRequest<crate::proxy::ProxyBody>>>,
    /// Connections to the backends at once (pooled, busy or upgraded): as many as the route
    /// serves clients, so HTTP/2's many streams per client cannot fan out without bound.
    pub backend_slots: Arc<Semaphore>,
    /// Woken when a backend connection goes back to the pool.
    pub returned: Notify,
    /// Set once the route is removed or replaced: its open connections end.
    retired: watch::Sender<bool>,
}

impl RouteState {
    fn new(route: Route, traffic: Arc<Traffic>) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(route.max_connections as usize)),
            backend_slots: Arc::new(Semaphore::new(route.max_connections as usize)),
            route,
            traffic,
            next_backend: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
            returned: Notify::new(),
            retired: watch::Sender::new(false),
        }
    }

    /// Completes once the route is no longer served as it was when the connection began.
    pub async fn retired(&self) {
        let mut retired = self.retired.subscribe();
        let _ = retired.wait_for(|r| *r).await;
    }

    fn retire(&self) {
        self.retired.send_replace(true);
        // Pooled backend connections close with their senders.
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// The backends in the order to try them this time (round robin).
    pub fn backends_in_turn(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let n = self.route.backends.len();
        let start = self.next_backend.fetch_add(1, Ordering::Relaxed) % n.max(1);
        (0..n).map(move |i| self.route.backends[(start + i) % n])
    }
}

/// The gateway's routes, shared by its listeners and updated by its owner.
pub struct Routes {
    table: RwLock<Arc<HashMap<String, Arc<RouteState>>>>,
    node_addresses: Vec<IpAddr>,
}

impl Routes {
    /// An empty table; `node_addresses` are the gateway's own addresses, refused as backends.
    pub fn new(node_addresses: Vec<IpAddr>) -> Self {
        Self {
            table: RwLock::new(Arc::new(HashMap::new())),
            node_addresses,
        }
    }

    /// Replaces the whole table with `routes`. Invalid routes are left out and returned with
    /// the reason; a host listed twice keeps its first route. Unchanged routes keep their
    /// state (connections, idle backend connections); changed ones keep their counters.
    pub fn replace(&self, routes: Vec<Route>) -> Vec<(String, RouteError)> {
        let mut refused = Vec::new();
        let old = self.snapshot();
        let mut table = HashMap::new();
        for route in routes {
            if let Err(e) = route.validate(&self.node_addresses) {
                refused.push((route.host.clone(), e));
                continue;
            }
            if table.contains_key(&route.host) {
                continue;
            }
            let state = match old.get(&route.host) {
                Some(existing) if existing.route == route => existing.clone(),
                Some(existing) => Arc::new(RouteState::new(route, existing.traffic.clone())),
                None => Arc::new(RouteState::new(route, Arc::default())),
            };
            table.insert(state.route.host.clone(), state);
        }
        let mut guard = self.table.write().unwrap_or_else(|e| e.into_inner());
        retire_dropped(&guard, &table);
        *guard = Arc::new(table);
        refused
    }

    /// Adds or replaces one route; a host another contract's route serves is refused.
    pub fn upsert(&self, route: Route) -> Result<(), RouteError> {
        route.validate(&self.node_addresses)?;
        let mut guard = self.table.write().unwrap_or_else(|e| e.into_inner());
        let mut table = (**guard).clone();
        let state = match table.get(&route.host) {
            Some(existing) if existing.route.contract != route.contract => {
                return Err(RouteError::HostHeldByAnotherContract(
                    existing.route.contract,
                ))
            }
            Some(existing) if existing.route == route => return Ok(()),
            Some(existing) => RouteState::new(route, existing.traffic.clone()),
            None => RouteState::new(route, Arc::default()),
        };
        table.insert(state.route.host.clone(), Arc::new(state));
        retire_dropped(&guard, &table);
        *guard = Arc::new(table);
        Ok(())
    }

    /// Removes a host's route if `contract`'s route serves it; its open connections end.
    pub fn remove(&self, host: &str, contract: u64) {
        let mut guard = self.table.write().unwrap_or_else(|e| e.into_inner());
        if guard
            .get(host)
            .is_some_and(|s| s.route.contract == contract)
        {
            let mut table = (**guard).clone();
            table.remove(host);
            retire_dropped(&guard, &table);
            *guard = Arc::new(table);
        }
    }

    pub(crate) fn lookup(&self, host: &str) -> Option<Arc<RouteState>> {
        self.snapshot().get(host).cloned()
    }

    fn snapshot(&self) -> Arc<HashMap<String, Arc<RouteState>>> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every route, sorted by host.
    pub fn routes(&self) -> Vec<Route> {
        let mut routes: Vec<Route> = self.snapshot().values().map(|s| s.route.clone()).collect();
        routes.sort_by(|a, b| a.host.cmp(&b.host));
        routes
    }

    /// The traffic counters of a host's route since it was first added.
    pub fn traffic(&self, host: &str) -> Option<TrafficSnapshot> {
        self.lookup(host).map(|s| s.traffic.snapshot())
    }

    /// The hosts whose TLS the gateway terminates: those it needs certificates for.
    pub fn terminated_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .snapshot()
            .values()
            .filter(|s| s.route.tls == TlsMode::Terminate)
            .map(|s| s.route.host.clone())
            .collect();
        hosts.sort();
        hosts
    }
}

/// Retires the routes of `old` that `new` no longer holds as they were, so that connections
/// opened under them end (a removed contract's clients, or a changed route's old backends).
fn retire_dropped(old: &HashMap<String, Arc<RouteState>>, new: &HashMap<String, Arc<RouteState>>) {
    for (host, state) in old {
        if !new.get(host).is_some_and(|kept| Arc::ptr_eq(kept, state)) {
            state.retire();
        }
    }
}

/// Lowercases a Host header or SNI value and strips a port and a trailing dot.
pub(crate) fn normalize_host(raw: &str) -> String {
    let without_port = match raw.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !host.contains(':') => {
            host
        }
        _ => raw,
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: &str, backend: &str) -> Route {
        Route {
            host: host.into(),
            backends: vec![backend.parse().unwrap()],
            network: None,
            tls: TlsMode::Terminate,
            max_connections: 4,
            contract: 1,
        }
    }

    #[test]
    fn refuses_loopback_node_and_odd_backends() {
        let node: IpAddr = "198.51.100.7".parse().unwrap();
        let ok = route("app.gw.example.com", "10.20.1.2:80");
        assert_eq!(ok.validate(&[node]), Ok(()));
        for bad in [
            "127.0.0.1:80",
            "[::1]:80",
            "0.0.0.0:80",
            "[::ffff:127.0.0.1]:80",
            "169.254.1.1:80",
            "[fe80::1]:80",
            "224.0.0.1:80",
            "10.20.1.2:0",
        ] {
            let r = route("app.gw.example.com", bad);
            assert!(
                matches!(r.validate(&[node]), Err(RouteError::BackendNotRoutable(_))),
                "{bad}"
            );
        }
        let r = route("app.gw.example.com", "198.51.100.7:443");
        assert!(matches!(
            r.validate(&[node]),
            Err(RouteError::BackendIsNode(_))
        ));
        for host in [
            "App.example.com",
            "example",
            "-a.example.com",
            "a..example.com",
            "",
        ] {
            assert!(matches!(
                route(host, "10.20.1.2:80").validate(&[]),
                Err(RouteError::InvalidHost(_))
            ));
        }
    }

    #[test]
    fn replacing_keeps_counters_and_reports_refusals() {
        let routes = Routes::new(vec![]);
        assert!(routes
            .replace(vec![route("a.example.com", "10.0.0.2:80")])
            .is_empty());
        let before = routes.lookup("a.example.com").unwrap();
        before.traffic.add_received(10);
        let refused = routes.replace(vec![
            route("a.example.com", "10.0.0.3:80"),
            route("b.example.com", "127.0.0.1:80"),
        ]);
        assert_eq!(refused.len(), 1);
        assert_eq!(routes.traffic("a.example.com").unwrap().received, 10);
        assert!(routes.lookup("b.example.com").is_none());
        // Another contract can neither take the host over nor remove it.
        let mut other = route("a.example.com", "10.0.0.9:80");
        other.contract = 2;
        assert_eq!(
            routes.upsert(other),
            Err(RouteError::HostHeldByAnotherContract(1))
        );
        routes.remove("a.example.com", 2);
        assert_eq!(routes.routes().len(), 1);
        routes.remove("a.example.com", 1);
        assert!(routes.routes().is_empty());
    }

    #[test]
    fn an_address_of_the_node_itself_is_no_backend_unless_dialled_in_a_tenant_network() {
        // A non-loopback address of this host: the source the kernel picks for a documentation
        // address (connecting a UDP socket sends nothing).
        let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        let Ok(()) = probe.connect("192.0.2.1:9") else {
            return eprintln!("skipped: no route off loopback on this host");
        };
        let own = probe.local_addr().unwrap().ip();
        let r = route("app.gw.example.com", &format!("{own}:22"));
        assert!(
            matches!(r.validate(&[]), Err(RouteError::BackendIsNode(_))),
            "{own}"
        );
        let mut in_network = r.clone();
        in_network.network = Some("/run/netns/tenant".into());
        assert_eq!(in_network.validate(&[]), Ok(()));
    }

    #[tokio::test]
    async fn removed_and_changed_routes_are_retired_unchanged_ones_kept() {
        let routes = Routes::new(vec![]);
        routes.replace(vec![
            route("a.example.com", "10.0.0.2:80"),
            route("b.example.com", "10.0.0.3:80"),
            route("c.example.com", "10.0.0.4:80"),
        ]);
        let [a, b, c] =
            ["a", "b", "c"].map(|h| routes.lookup(&format!("{h}.example.com")).unwrap());
        let is_retired = |s: &Arc<RouteState>| {
            let s = s.clone();
            async move {
                tokio::time::timeout(std::time::Duration::from_millis(50), s.retired())
                    .await
                    .is_ok()
            }
        };
        // a unchanged, b changed, c gone.
        routes.replace(vec![
            route("a.example.com", "10.0.0.2:80"),
            route("b.example.com", "10.0.0.9:80"),
        ]);
        assert!(!is_retired(&a).await);
        assert!(is_retired(&b).await);
        assert!(is_retired(&c).await);
        // Another contract's removal leaves it; its own contract's removal retires it.
        routes.remove("a.example.com", 99);
        assert!(!is_retired(&a).await);
        routes.remove("a.example.com", 1);
        assert!(is_retired(&a).await);
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("App.Example.com:8443"), "app.example.com");
        assert_eq!(normalize_host("app.example.com."), "app.example.com");
        assert_eq!(normalize_host("[2001:db8::1]:443"), "[2001:db8::1]:443");
    }
}
