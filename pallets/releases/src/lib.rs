//! # Releases pallet
//!
//! The software releases the grid runs, under governance. Today: the chain's own runtime. A
//! runtime upgrade is authorized by [`Config::ReleaseOrigin`] (the council, by two thirds, in
//! the runtime) with the hash of the new code; anyone then applies it with
//! `system.apply_authorized_upgrade(code)`, which checks the code against the hash and its
//! spec version against the running one. Without sudo (every preset but development) this is
//! the only way to upgrade the chain.
#![cfg_attr(not(feature = "std"), no_std)]

#[cfg(feature = "runtime-benchmarks")]
mod benchmarking;
#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;
pub mod weights;

pub use pallet::*;
pub use weights::WeightInfo;

#[frame_support::pallet]
pub mod pallet {
    use super::*;
    use frame_support::pallet_prelude::*;
    use frame_system::pallet_prelude::*;

    const STORAGE_VERSION: StorageVersion = StorageVersion::new(1);

    #[pallet::pallet]
    #[pallet::storage_version(STORAGE_VERSION)]
    pub struct Pallet<T>(_);

    #[pallet::config]
    pub trait Config: frame_system::Config {
        /// Authorizes releases: the council in the runtime.
        type ReleaseOrigin: EnsureOrigin<Self::RuntimeOrigin>;
        type WeightInfo: WeightInfo;
    }

    #[pallet::event]
    #[pallet::generate_deposit(pub(super) fn deposit_event)]
    pub enum Event<T: Config> {
        /// Governance authorized the runtime whose code hashes to `code_hash`; anyone may now
        /// apply it with `system.apply_authorized_upgrade`.
        RuntimeUpgradeAuthorized { code_hash: T::Hash },
    }

    #[pallet::call]
    impl<T: Config> Pallet<T> {
        /// Authorizes the runtime upgrade to the code hashing to `code_hash` (replacing any
        /// earlier authorization). The upgrade must raise the spec version.
        #[pallet::call_index(0)]
        #[pallet::weight(T::WeightInfo::authorize_runtime_upgrade())]
        pub fn authorize_runtime_upgrade(
            origin: OriginFor<T>,
            code_hash: T::Hash,
        ) -> DispatchResult {
            T::ReleaseOrigin::ensure_origin(origin)?;
            frame_system::Pallet::<T>::do_authorize_upgrade(code_hash, true);
            Self::deposit_event(Event::RuntimeUpgradeAuthorized { code_hash });
            Ok(())
        }
    }
}
