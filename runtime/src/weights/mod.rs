//! Weights of the grid pallets measured on this runtime by `scripts/benchmark-weights.sh`
//! (FRAME benchmarks v2 run through `zos-chain-node benchmark pallet`).

pub mod pallet_billing;
pub mod pallet_deployments;
pub mod pallet_grid;
pub mod pallet_releases;
