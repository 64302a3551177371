//! The Zero-OS grid node executor: turns the chain's approved contracts for this node into
//! running workloads and the node's real consumption into signed reports.

pub mod chain;
pub mod config;
pub mod drivers;
pub mod engine;
pub mod follower;
pub mod identity;
pub mod meter;
pub mod metrics;
pub mod outbox;
pub mod service;
pub mod store;
