//! The Zero-OS grid node executor: turns the chain's approved contracts for this node into
//! running workloads and the node's real consumption into signed reports.

pub mod access;
pub mod config;
pub mod drivers;
pub mod engine;
pub mod follower;
pub mod meter;
pub mod metrics;
pub mod outbox;
pub mod service;
pub mod shim;
pub mod store;

// The chain client and identity live in `zos-client`, shared with the CLI and the tests.
pub use zos_client::{chain, identity};
