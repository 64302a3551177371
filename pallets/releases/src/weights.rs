//! Weights for `pallet_releases`.
//!
//! Not measured yet: estimated from the storage the call touches (the benchmark exists; the
//! next `scripts/benchmark-weights.sh` run replaces these numbers).

#![allow(unused_parens)]
#![allow(unused_imports)]

use core::marker::PhantomData;
use frame_support::{
    traits::Get,
    weights::{constants::RocksDbWeight, Weight},
};

/// Weight functions needed for `pallet_releases`.
pub trait WeightInfo {
    fn authorize_runtime_upgrade() -> Weight;
}

/// Weights for `pallet_releases` using the database weights of the runtime.
pub struct SubstrateWeight<T>(PhantomData<T>);
impl<T: frame_system::Config> WeightInfo for SubstrateWeight<T> {
    /// Storage: `System::AuthorizedUpgrade` (r:0 w:1)
    fn authorize_runtime_upgrade() -> Weight {
        Weight::from_parts(10_000_000, 0).saturating_add(T::DbWeight::get().writes(1_u64))
    }
}

// For backwards compatibility and tests.
impl WeightInfo for () {
    /// Storage: `System::AuthorizedUpgrade` (r:0 w:1)
    fn authorize_runtime_upgrade() -> Weight {
        Weight::from_parts(10_000_000, 0).saturating_add(RocksDbWeight::get().writes(1_u64))
    }
}
