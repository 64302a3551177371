//! The web gateway of a gateway node: workloads without a public address reached at
//! `https://<name>.<gateway domain>` or at their deployer's own domain.
//!
//! ```text
//!  client ──TLS──► :443 ─┬─ SNI → route ─┬─ terminate: certificate by SNI, HTTP/1.1 or h2,
//!                        │               │   proxied as HTTP/1.1 (pooled, WebSocket relayed)
//!                        │               └─ passthrough: the TLS bytes forwarded untouched
//!                        └─ no route / over the route's limit: closed
//!  client ──────► :80 ──── ACME HTTP-01 answers, else 308 to https
//!                                   backends dialled from the tenant network's namespace
//! ```
//!
//! A route's traffic is counted on the client's side (what the deployer is billed for). The
//! owner (the executor) sets the routes from chain state and reads the counters; this crate
//! knows nothing of the chain.

pub mod acme;
pub mod certs;
mod dial;
pub mod dns;
mod guard;
pub mod meter;
mod proxy;
pub mod routes;
mod server;
mod sni;
pub mod zone;

pub use acme::{AcmeSettings, CertManager, Http01Challenges, Renewal};
pub use certs::CertStore;
pub use dns::{DomainCheck, DomainError};
pub use meter::TrafficSnapshot;
pub use routes::{Route, RouteError, Routes, TlsMode};
pub use server::{Gateway, GatewayLimits};
pub use zone::Zone;
